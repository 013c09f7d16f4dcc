//! The DATA phase: dot-unstuffing on receive, dot-stuffing on send (RFC 5321 §4.5.2).
//!
//! Only `<CRLF>.<CRLF>` ends a message. A bare LF or bare CR never ends a line for the
//! purpose of finding the end of data; it is recorded so the session can refuse the
//! message. This is what closes SMTP smuggling: two servers can never disagree about
//! where a message ends, because we accept no message whose end could be read two ways.

/// Streaming decoder for DATA content.
#[derive(Debug)]
pub struct DataDecoder {
    /// True when the next byte starts a line (after CRLF, or at the start of data).
    line_start: bool,
    /// Set when a bare CR or LF was seen anywhere in the content.
    pub bare_newline: bool,
    /// Set when a NUL byte was seen anywhere in the content.
    pub nul: bool,
    /// Decoded bytes so far (counted even when discarded for size).
    pub size: u64,
}

/// Result of feeding bytes to the decoder.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    /// Consumed `n` input bytes; need more.
    More(usize),
    /// Found the end of data after consuming `n` input bytes (the terminator included).
    End(usize),
}

/// Lines longer than this are passed on in pieces, so a missing CRLF cannot make the
/// decoder buffer without limit.
const MAX_PENDING: usize = 8192;

impl Default for DataDecoder {
    fn default() -> Self {
        DataDecoder {
            line_start: true,
            bare_newline: false,
            nul: false,
            size: 0,
        }
    }
}

impl DataDecoder {
    /// Decodes as much of `input` as possible, appending message bytes to `out`.
    pub fn decode(&mut self, input: &[u8], out: &mut Vec<u8>) -> Decoded {
        let mut pos = 0;
        loop {
            let rest = &input[pos..];
            if rest.is_empty() {
                return Decoded::More(pos);
            }
            // Find the next CRLF: the only line end we recognise.
            let crlf = find_crlf(rest);
            let Some(end) = crlf else {
                // No complete line. Pass a long partial line on, keeping a trailing CR
                // (it may start a CRLF) and enough to decide a leading dot.
                if rest.len() < MAX_PENDING {
                    return Decoded::More(pos);
                }
                let mut take = rest.len() - 1;
                if rest[take - 1] == b'\r' {
                    take -= 1;
                }
                let mut chunk = &rest[..take];
                if self.line_start && chunk.first() == Some(&b'.') {
                    chunk = &chunk[1..];
                }
                self.emit(chunk, out);
                self.line_start = false;
                pos += take;
                continue;
            };
            let line = &rest[..end + 2];
            if self.line_start && line == b".\r\n" {
                return Decoded::End(pos + 3);
            }
            let body = if self.line_start && line.first() == Some(&b'.') {
                &line[1..]
            } else {
                line
            };
            self.emit(body, out);
            self.line_start = true;
            pos += end + 2;
        }
    }

    fn emit(&mut self, bytes: &[u8], out: &mut Vec<u8>) {
        // Any CR or LF that is not part of the CRLF ending this piece is bare.
        let inner = bytes.strip_suffix(b"\r\n").unwrap_or(bytes);
        if memchr::memchr2(b'\r', b'\n', inner).is_some() {
            self.bare_newline = true;
        }
        if memchr::memchr(0, bytes).is_some() {
            self.nul = true;
        }
        self.size += bytes.len() as u64;
        out.extend_from_slice(bytes);
    }
}

fn find_crlf(buf: &[u8]) -> Option<usize> {
    memchr::memchr_iter(b'\n', buf)
        .find(|&lf| lf > 0 && buf[lf - 1] == b'\r')
        .map(|lf| lf - 1)
}

/// Finds bare CR or LF in content that arrives in pieces (BDAT chunks are counted, not
/// dot-terminated, so a CR may end one chunk and its LF start the next).
#[derive(Debug, Default, Clone, Copy)]
pub struct BareNewlineCheck {
    prev_cr: bool,
    bare: bool,
    nul: bool,
}

impl BareNewlineCheck {
    pub fn feed(&mut self, content: &[u8]) {
        if memchr::memchr(0, content).is_some() {
            self.nul = true;
        }
        for &b in content {
            match (self.prev_cr, b) {
                (true, b'\n') => self.prev_cr = false,
                (true, b'\r') => self.bare = true,
                (true, _) => {
                    self.bare = true;
                    self.prev_cr = false;
                }
                (false, b'\r') => self.prev_cr = true,
                (false, b'\n') => self.bare = true,
                _ => {}
            }
        }
    }

    /// True when the content seen so far had a NUL byte.
    pub fn has_nul(&self) -> bool {
        self.nul
    }

    /// True when the content seen so far had a bare CR or LF (a trailing CR counts).
    pub fn finish(&self) -> bool {
        self.bare || self.prev_cr
    }
}

/// True when `content` has a CR or LF that is not part of a CRLF pair.
pub fn has_bare_newline(content: &[u8]) -> bool {
    let mut check = BareNewlineCheck::default();
    check.feed(content);
    check.finish()
}

/// Streaming dot-stuffer for sending DATA (RFC 5321 §4.5.2): a `.` at the start of a
/// line is doubled. Feed content in pieces; call [`DotStuffer::finish`] for the
/// terminator.
#[derive(Debug)]
pub struct DotStuffer {
    line_start: bool,
    ends_with_crlf: bool,
    prev_cr: bool,
}

impl Default for DotStuffer {
    fn default() -> Self {
        DotStuffer {
            line_start: true,
            ends_with_crlf: true,
            prev_cr: false,
        }
    }
}

impl DotStuffer {
    pub fn stuff(&mut self, input: &[u8], out: &mut Vec<u8>) {
        let Some(&last) = input.last() else {
            return;
        };
        out.reserve(input.len() + 16);
        // A line start carried over from the previous piece.
        if self.line_start && input[0] == b'.' {
            out.push(b'.');
        }
        // Copy runs between the line starts that need a dot: only a LF that ends a
        // CRLF starts a line, the same rule as the decoder's.
        let ends_crlf = |lf: usize| {
            if lf == 0 {
                self.prev_cr
            } else {
                input[lf - 1] == b'\r'
            }
        };
        let mut copied = 0;
        for lf in memchr::memchr_iter(b'\n', input) {
            if input.get(lf + 1) == Some(&b'.') && ends_crlf(lf) {
                out.extend_from_slice(&input[copied..=lf]);
                out.push(b'.');
                copied = lf + 1;
            }
        }
        out.extend_from_slice(&input[copied..]);
        self.line_start = last == b'\n' && ends_crlf(input.len() - 1);
        self.prev_cr = last == b'\r';
        self.ends_with_crlf = self.line_start;
    }

    /// The end-of-data sequence, adding a CRLF first if the content lacked one.
    pub fn finish(&self, out: &mut Vec<u8>) {
        if !self.ends_with_crlf {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b".\r\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(input: &[u8], piece: usize) -> (Vec<u8>, Option<usize>, bool) {
        let mut d = DataDecoder::default();
        let mut out = Vec::new();
        let mut buf: Vec<u8> = Vec::new();
        let mut consumed_total = 0;
        for chunk in input.chunks(piece) {
            buf.extend_from_slice(chunk);
            match d.decode(&buf, &mut out) {
                Decoded::More(n) => {
                    consumed_total += n;
                    buf.drain(..n);
                }
                Decoded::End(n) => return (out, Some(consumed_total + n), d.bare_newline),
            }
        }
        (out, None, d.bare_newline)
    }

    #[test]
    fn unstuffs_and_finds_end_byte_by_byte() {
        let input = b"Subject: x\r\n\r\n..leading dot\r\n.\r\nMAIL FROM:<a@b>\r\n";
        for piece in [1, 2, 3, 7, 100] {
            let (out, end, bare) = decode_all(input, piece);
            assert_eq!(out, b"Subject: x\r\n\r\n.leading dot\r\n");
            assert_eq!(end, Some(input.len() - b"MAIL FROM:<a@b>\r\n".len()));
            assert!(!bare);
        }
    }

    #[test]
    fn bare_lf_never_ends_data_and_is_flagged() {
        // The smuggling payloads: <LF>.<LF>, <LF>.<CRLF>, <CR>.<CR>, <CRLF>.<LF>.
        for smuggle in [&b"\n.\n"[..], b"\n.\r\n", b"\r.\r", b"\r\n.\n"] {
            let mut input = b"Subject: x\r\n\r\nbody".to_vec();
            input.extend_from_slice(smuggle);
            input.extend_from_slice(b"MAIL FROM:<evil@x>\r\n");
            let (_, end, bare) = decode_all(&input, 1);
            assert_eq!(end, None, "{smuggle:?} must not end data");
            input.extend_from_slice(b"\r\n.\r\n");
            let (_, end, bare2) = decode_all(&input, 5);
            assert!(end.is_some());
            assert!(bare || bare2, "{smuggle:?} must be flagged");
        }
    }

    #[test]
    fn long_lines_are_streamed() {
        let mut input = vec![b'a'; 20000];
        input.extend_from_slice(b"\r\n.\r\n");
        let (out, end, _) = decode_all(&input, 4096);
        assert_eq!(out.len(), 20002);
        assert_eq!(end, Some(input.len()));
    }

    #[test]
    fn stuffer_round_trips() {
        let content = b".a\r\nb\r\n.\r\n..c\r\nno newline";
        let mut s = DotStuffer::default();
        let mut wire = Vec::new();
        for c in content.chunks(3) {
            s.stuff(c, &mut wire);
        }
        s.finish(&mut wire);
        let (out, end, _) = decode_all(&wire, 1);
        assert_eq!(end, Some(wire.len()));
        assert_eq!(out, b".a\r\nb\r\n.\r\n..c\r\nno newline\r\n");
    }

    /// The stuffer's output does not depend on how the content is split, and doubles
    /// exactly the dots that start a CRLF line (not those after a bare CR or LF).
    #[test]
    fn stuffer_output_is_independent_of_piece_boundaries() {
        fn reference(content: &[u8]) -> Vec<u8> {
            let mut out = Vec::new();
            for (i, &b) in content.iter().enumerate() {
                let line_start = i == 0 || (i >= 2 && &content[i - 2..i] == b"\r\n");
                if line_start && b == b'.' {
                    out.push(b'.');
                }
                out.push(b);
            }
            out
        }
        let content = b".a\r\n.\r\n\n.b\r.c\r\n\r\n..d\r\r\n.e\n\r\n.";
        for piece in 1..=content.len() {
            let mut s = DotStuffer::default();
            let mut wire = Vec::new();
            for c in content.chunks(piece) {
                s.stuff(c, &mut wire);
            }
            assert_eq!(wire, reference(content), "pieces of {piece}");
        }
    }

    #[test]
    fn bare_newline_in_bdat_content() {
        assert!(!has_bare_newline(b"a\r\nb\r\n"));
        assert!(has_bare_newline(b"a\nb"));
        assert!(has_bare_newline(b"a\rb"));
        assert!(has_bare_newline(b"a\r"));
    }
}
