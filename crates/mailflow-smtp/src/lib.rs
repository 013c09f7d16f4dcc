//! Sans-I/O SMTP for mailflow: the command parser, replies, the server session state
//! machine and the DATA/BDAT readers. No sockets, no clocks, no files: every listener
//! drives the same [`Session`], and tests drive it byte by byte.

pub mod client;
pub mod command;
pub mod data;
pub mod replies;
pub mod reply;
pub mod session;
pub mod xtext;

pub use command::{Address, Body, Command, MailParams, RcptParams, Ret};
pub use reply::{Enhanced, Reply, parse_reply};
pub use session::{Event, Session, SessionConfig};
