//! AUTH (RFC 4954): the PLAIN and LOGIN exchanges, decoded here and handed to the
//! driver as credentials to check. Imports only its parent and the reply types.

use base64::Engine;

use crate::reply::Reply;

use super::{Event, Pending, Phase, Session, r};

impl Session {
    pub(super) fn auth(&mut self, mechanism: String, initial: Option<String>) -> Option<Event> {
        if self.config.auth_mechanisms.is_empty() {
            return self.error(r(502, (5, 5, 1), "AUTH is not available"));
        }
        if self.authenticated {
            return self.error(r(503, (5, 5, 1), "Already authenticated"));
        }
        if self.tx.mail {
            return self.error(r(
                503,
                (5, 5, 1),
                "AUTH not allowed during a mail transaction",
            ));
        }
        if self.config.auth_requires_tls && !self.tls {
            return self.error(r(
                538,
                (5, 7, 11),
                "Encryption required for requested authentication mechanism",
            ));
        }
        if !self.config.auth_mechanisms.contains(&mechanism) {
            return self.error(r(504, (5, 7, 4), "Unrecognized authentication type"));
        }
        match (mechanism.as_str(), initial) {
            ("PLAIN", Some(initial)) => self.auth_plain(initial.as_bytes()),
            ("PLAIN", None) => {
                self.send(Reply::plain(334, ""));
                self.phase = Phase::AuthPlain;
                None
            }
            ("LOGIN", Some(user)) => self.auth_login_step(None, user.as_bytes()),
            ("LOGIN", None) => {
                self.send(Reply::plain(334, "VXNlcm5hbWU6"));
                self.phase = Phase::AuthLogin(None);
                None
            }
            (_, initial) => {
                // RFC 4954 §4: `=` is an empty initial response.
                let initial = match initial.as_deref() {
                    None => None,
                    Some("=") => Some(Vec::new()),
                    Some(text) => match decode_b64(text.as_bytes()) {
                        Some(bytes) => Some(bytes),
                        None => return self.error(r(501, (5, 5, 2), "Invalid base64 data")),
                    },
                };
                self.pending = Some(Pending::AuthStep(mechanism.clone()));
                Some(Event::AuthStart { mechanism, initial })
            }
        }
    }

    /// The client's line after a driver's challenge.
    pub(super) fn auth_response(&mut self, mechanism: String, line: &[u8]) -> Option<Event> {
        if let Some(ev) = self.auth_cancelled(line) {
            return ev;
        }
        let response = if line == b"=" {
            Vec::new()
        } else {
            match decode_b64(line) {
                Some(bytes) => bytes,
                None => return self.error(r(501, (5, 5, 2), "Invalid base64 data")),
            }
        };
        self.pending = Some(Pending::AuthStep(mechanism.clone()));
        Some(Event::AuthResponse {
            mechanism,
            response,
        })
    }

    pub(super) fn auth_cancelled(&mut self, line: &[u8]) -> Option<Option<Event>> {
        (line == b"*").then(|| self.error(r(501, (5, 0, 0), "Authentication cancelled")))
    }

    pub(super) fn auth_plain(&mut self, line: &[u8]) -> Option<Event> {
        if let Some(ev) = self.auth_cancelled(line) {
            return ev;
        }
        let Some(decoded) = decode_b64(line) else {
            return self.error(r(501, (5, 5, 2), "Invalid base64 data"));
        };
        // RFC 4616: authzid NUL authcid NUL passwd
        let parts: Vec<&[u8]> = decoded.split(|&b| b == 0).collect();
        if parts.len() != 3 {
            return self.error(r(501, (5, 5, 2), "Invalid AUTH PLAIN response"));
        }
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        self.pending = Some(Pending::Auth);
        Some(Event::Auth {
            mechanism: "PLAIN".into(),
            authzid: text(parts[0]),
            username: text(parts[1]),
            password: text(parts[2]),
        })
    }

    pub(super) fn auth_login_step(&mut self, user: Option<String>, line: &[u8]) -> Option<Event> {
        if let Some(ev) = self.auth_cancelled(line) {
            return ev;
        }
        let Some(decoded) = decode_b64(line) else {
            return self.error(r(501, (5, 5, 2), "Invalid base64 data"));
        };
        let value = String::from_utf8_lossy(&decoded).into_owned();
        match user {
            None => {
                self.send(Reply::plain(334, "UGFzc3dvcmQ6"));
                self.phase = Phase::AuthLogin(Some(value));
                None
            }
            Some(username) => {
                self.pending = Some(Pending::Auth);
                Some(Event::Auth {
                    mechanism: "LOGIN".into(),
                    authzid: String::new(),
                    username,
                    password: value,
                })
            }
        }
    }
}

fn decode_b64(line: &[u8]) -> Option<Vec<u8>> {
    base64::engine::general_purpose::STANDARD
        .decode(line.trim_ascii())
        .ok()
}
