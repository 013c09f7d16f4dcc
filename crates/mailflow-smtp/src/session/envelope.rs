//! MAIL and RCPT: the envelope of a transaction, checked for sequence and limits
//! before the driver decides on it. Imports only its parent and the command types.

use crate::command::{Address, MailParams, RcptParams};

use super::{Event, Pending, Session, r, size_exceeded};

impl Session {
    pub(super) fn mail(&mut self, from: Option<Address>, params: MailParams) -> Option<Event> {
        if self.helo.is_none() {
            return self.error(r(503, (5, 5, 2), "Send hello first"));
        }
        if self.tx.mail {
            return self.error(r(503, (5, 5, 2), "Sender already specified"));
        }
        if params.smtputf8 && !self.config.smtputf8 {
            return self.error(r(555, (5, 5, 4), "SMTPUTF8 is not supported"));
        }
        if params
            .size
            .is_some_and(|s| s > self.config.max_message_size)
        {
            // RFC 1870 §6.1: refuse early when the declared size is over the limit.
            self.send(size_exceeded());
            return None;
        }
        self.tx.smtputf8 = params.smtputf8;
        self.tx.declared_size = params.size;
        self.pending = Some(Pending::Mail);
        Some(Event::Mail { from, params })
    }

    pub(super) fn rcpt(&mut self, to: Address, params: RcptParams) -> Option<Event> {
        if !self.tx.mail {
            return self.error(r(503, (5, 5, 1), "Need mail command"));
        }
        if self.tx.bdat_started {
            return self.error(r(503, (5, 5, 1), "Bad sequence of commands"));
        }
        let ascii = to.local.is_ascii() && to.domain.is_ascii();
        if !self.tx.smtputf8 && !ascii {
            self.send(r(553, (5, 6, 7), "Non-ASCII address requires SMTPUTF8"));
            return None;
        }
        // RFC 6533 §3: an ORCPT in raw UTF-8 (utf-8-addr-unitext) needs SMTPUTF8.
        if !self.tx.smtputf8 && params.orcpt.as_deref().is_some_and(|o| !o.is_ascii()) {
            return self.error(crate::command::invalid_orcpt());
        }
        if self.tx.recipients >= self.config.max_recipients {
            // RFC 5321 §4.5.3.1.10: 452 so the client sends the rest later.
            self.send(r(452, (4, 5, 3), "Too many recipients"));
            return None;
        }
        self.pending = Some(Pending::Rcpt);
        Some(Event::Rcpt { to, params })
    }
}
