//! A TCP stream that may have been upgraded to TLS (STARTTLS) or started in TLS.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

pub enum Stream {
    Plain(TcpStream),
    ServerTls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    ClientTls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
    /// The socket was handed to a TLS handshake that failed; all I/O fails.
    Closed,
}

impl Stream {
    /// Negotiated protocol and cipher, for `Received:` headers and logs.
    pub fn tls_description(&self) -> Option<String> {
        let (proto, suite) = match self {
            Stream::Plain(_) | Stream::Closed => return None,
            Stream::ServerTls(s) => (
                s.get_ref().1.protocol_version(),
                s.get_ref().1.negotiated_cipher_suite(),
            ),
            Stream::ClientTls(s) => (
                s.get_ref().1.protocol_version(),
                s.get_ref().1.negotiated_cipher_suite(),
            ),
        };
        let proto = proto
            .map(|p| format!("{p:?}").replace("TLSv1_", "TLS1_"))
            .unwrap_or_default();
        let suite = suite
            .map(|s| format!("{:?}", s.suite()))
            .unwrap_or_default();
        Some(format!("version={proto}, cipher={suite}"))
    }
}

impl Stream {
    /// The negotiated TLS version; `None` on a plain stream.
    pub fn tls_version(&self) -> Option<rustls::ProtocolVersion> {
        match self {
            Stream::Plain(_) | Stream::Closed => None,
            Stream::ServerTls(s) => s.get_ref().1.protocol_version(),
            Stream::ClientTls(s) => s.get_ref().1.protocol_version(),
        }
    }

    /// 32 bytes of keying material exported from the TLS session under `label` with no
    /// context (RFC 5705 / RFC 8446 §7.5): both ends of one session get the same bytes,
    /// no other session does, so a MAC over them binds an authentication to this
    /// connection (the channel binding of `X-MAILFLOW-SERVER`). `None` on a plain
    /// stream or before the handshake completed.
    pub fn tls_exporter(&self, label: &[u8]) -> Option<[u8; 32]> {
        let out = [0u8; 32];
        match self {
            Stream::Plain(_) | Stream::Closed => None,
            Stream::ServerTls(s) => s.get_ref().1.export_keying_material(out, label, None).ok(),
            Stream::ClientTls(s) => s.get_ref().1.export_keying_material(out, label, None).ok(),
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::ServerTls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Stream::ClientTls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Stream::Closed => Poll::Ready(Err(closed())),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::ServerTls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Stream::ClientTls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Stream::Closed => Poll::Ready(Err(closed())),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::ServerTls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Stream::ClientTls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Stream::Closed => Poll::Ready(Ok(())),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::ServerTls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Stream::ClientTls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Stream::Closed => Poll::Ready(Ok(())),
        }
    }
}

fn closed() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "stream closed")
}
