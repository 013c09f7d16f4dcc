//! `X-MAILFLOW-SERVER` as docs/security.md specifies it, written again here from the
//! specification (not from the server's code), so the tests check the server against
//! the document. Include with `#[path = "common/server_auth.rs"] mod server_auth;`
//! next to `mod common;`.
// Every integration test binary compiles this module and uses only some of it.
#![allow(dead_code)]

use base64::Engine;
use hmac::{Hmac, Mac};
use std::path::Path;

pub const MECHANISM: &str = "X-MAILFLOW-SERVER";
pub const EXPORTER_LABEL: &[u8] = b"EXPORTER-mailflow-server-auth";

/// The organisation secret as the servers use it: the secret file's text, trimmed.
pub fn secret(dir: &Path) -> Vec<u8> {
    std::fs::read_to_string(dir.join("secret.key"))
        .unwrap()
        .trim()
        .as_bytes()
        .to_vec()
}

pub fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

pub fn unb64(text: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .unwrap_or_else(|e| panic!("not base64 ({e}): {text:?}"))
}

/// `AUTH X-MAILFLOW-SERVER base64(service NUL server)`.
pub fn auth_line(service: &str, server: &str) -> String {
    format!(
        "AUTH {MECHANISM} {}",
        b64(format!("{service}\0{server}").as_bytes())
    )
}

/// The challenge in a `334 <base64>` reply (32 bytes).
pub fn challenge(reply: &str) -> Vec<u8> {
    let text = reply
        .trim_end()
        .strip_prefix("334 ")
        .unwrap_or_else(|| panic!("expected a 334 challenge, got {reply:?}"));
    let challenge = unb64(text);
    assert_eq!(challenge.len(), 32, "{reply}");
    challenge
}

/// HMAC-SHA256(HMAC-SHA256(secret, "mailflow X-MAILFLOW-SERVER key v1"), transcript),
/// the transcript being the label `mailflow X-MAILFLOW-SERVER v1` then, each as a
/// 4-byte big-endian length and the bytes: the challenge, the authenticating server
/// (lowercase), the service, the receiving server's EHLO name (lowercase), and the
/// binding (`tls-exporter:` + exporter, or `no TLS`).
pub fn response(
    secret: &[u8],
    challenge: &[u8],
    server: &str,
    service: &str,
    receiver: &str,
    exporter: Option<&[u8]>,
) -> Vec<u8> {
    let mut kdf = Hmac::<sha2::Sha256>::new_from_slice(secret).unwrap();
    kdf.update(b"mailflow X-MAILFLOW-SERVER key v1");
    let key = kdf.finalize().into_bytes();
    let binding = match exporter {
        Some(e) => [&b"tls-exporter:"[..], e].concat(),
        None => b"no TLS".to_vec(),
    };
    let mut transcript = b"mailflow X-MAILFLOW-SERVER v1".to_vec();
    for field in [
        challenge,
        server.to_lowercase().as_bytes(),
        service.as_bytes(),
        receiver.to_lowercase().as_bytes(),
        &binding,
    ] {
        transcript.extend_from_slice(&(field.len() as u32).to_be_bytes());
        transcript.extend_from_slice(field);
    }
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
    mac.update(&transcript);
    mac.finalize().into_bytes().to_vec()
}

/// The whole exchange on a plain (loopback) session with `receiver` (the server's EHLO
/// name): the final reply (`235 …`, or the refusal, at AUTH or after the response).
pub fn authenticate_plain(
    c: &mut crate::common::Smtp,
    secret: &[u8],
    service: &str,
    server: &str,
    receiver: &str,
) -> String {
    let r = c.cmd(&auth_line(service, server));
    if !r.starts_with("334 ") {
        return r;
    }
    let challenge = challenge(&r);
    c.cmd(&b64(&response(
        secret, &challenge, server, service, receiver, None,
    )))
}
