//! DATA and BDAT: the framing of message content (RFC 5321 §4.1.1.4, RFC 3030
//! chunks) and the replies that refuse content. Imports only its parent and the
//! reply types (the content decoder itself is fed in `next_event`).

use crate::reply::Reply;

use super::{Event, Pending, Phase, Session, Transaction, r};

impl Session {
    pub(super) fn data(&mut self) -> Option<Event> {
        if !self.tx.mail {
            return self.error(r(503, (5, 5, 1), "Need mail command"));
        }
        if self.tx.bdat_started {
            return self.error(r(503, (5, 5, 1), "DATA not allowed after BDAT"));
        }
        if self.tx.recipients == 0 {
            return self.error(r(503, (5, 5, 2), "Need rcpt command"));
        }
        self.pending = Some(Pending::DataStart { bdat: false });
        Some(Event::DataStart)
    }

    pub(super) fn bdat(&mut self, size: u64, last: bool) -> Option<Event> {
        // RFC 3030 §2: the chunk follows the command whatever the answer, so it is read
        // (and discarded) even when refused.
        let refuse = if !self.config.chunking {
            Some(r(502, (5, 5, 1), "BDAT is not supported"))
        } else if !self.tx.mail {
            Some(r(503, (5, 5, 1), "Need mail command"))
        } else if self.tx.recipients == 0 && !self.tx.bdat_started {
            Some(r(503, (5, 5, 2), "Need rcpt command"))
        } else {
            None
        };
        if let Some(reply) = refuse {
            self.tx.bdat_refused = Some(reply);
            self.tx.bdat_started = true;
            self.phase = Phase::Bdat {
                left: size,
                last,
                accept: false,
            };
            return self.bdat_step();
        }
        let first = !self.tx.bdat_started;
        let accept = self.tx.bdat_refused.is_none();
        self.phase = Phase::Bdat {
            left: size,
            last,
            accept,
        };
        if first {
            self.pending = Some(Pending::DataStart { bdat: true });
            return Some(Event::DataStart);
        }
        self.bdat_step()
    }

    pub(super) fn bdat_step(&mut self) -> Option<Event> {
        let Phase::Bdat { left, last, accept } = &mut self.phase else {
            return None;
        };
        let take = (*left).min(self.input.len() as u64) as usize;
        let chunk: Vec<u8> = self.input.drain(..take).collect();
        *left -= take as u64;
        let (done, last, accept) = (*left == 0, *last, *accept);
        self.tx.bdat_size += take as u64;
        let too_big = self.tx.bdat_size > self.config.max_message_size;
        if accept && !chunk.is_empty() && !too_big {
            self.tx.bdat_newlines.feed(&chunk);
            return Some(Event::Data(chunk));
        }
        if !done {
            return None;
        }
        self.phase = Phase::Command;
        if let Some(reply) = self.tx.bdat_refused.clone() {
            self.send(reply.clone());
            if last {
                self.tx = Transaction::default();
            }
            return self.count_error_if_sequence(reply);
        }
        let bare = last && self.tx.bdat_newlines.finish();
        let nul = last && self.tx.bdat_newlines.has_nul();
        if too_big || bare || nul {
            let reply = if too_big {
                size_exceeded()
            } else if bare {
                bare_newline_reply()
            } else {
                nul_reply()
            };
            // Later chunks of this transaction are discarded with the same answer.
            self.tx.bdat_refused = Some(reply.clone());
            self.send(reply.clone());
            if last {
                self.tx = Transaction::default();
            }
            return Some(Event::DataRejected(reply));
        }
        if last {
            self.pending = Some(Pending::DataEnd);
            return Some(Event::DataEnd);
        }
        let n = self.tx.bdat_size;
        self.send(r(250, (2, 0, 0), &format!("{n} bytes received")));
        None
    }

    pub(super) fn count_error_if_sequence(&mut self, reply: Reply) -> Option<Event> {
        if reply.code == 503 || reply.code == 502 {
            self.errors += 1;
            if self.errors >= self.config.max_errors {
                self.close_with(r(
                    421,
                    (4, 7, 0),
                    "Too many errors on this connection, closing transmission channel",
                ));
                return Some(Event::Close);
            }
        }
        Some(Event::DataRejected(reply))
    }
}

/// Reference §11.2: 5.3.4 for any size limit.
pub fn size_exceeded() -> Reply {
    r(
        552,
        (5, 3, 4),
        "Message size exceeds fixed maximum message size",
    )
}

/// A NUL byte in content (RFC 5321 §2.3.8 forbids it in text, and BINARYMIME is not
/// offered): stored, it would cut C strings short in whatever reads the message later.
pub fn nul_reply() -> Reply {
    r(
        550,
        (5, 6, 0),
        "NUL characters are not allowed in message content",
    )
}

/// Bare CR or LF in content: refused so no two hops can disagree about the message's
/// end or its lines (RFC 5321 §2.3.8, SMTP smuggling).
pub fn bare_newline_reply() -> Reply {
    r(
        550,
        (5, 6, 11),
        "Bare CR or LF characters are not allowed; lines must end with CRLF",
    )
}
