//! Mailbox Transport (DESIGN §1, reference §5): Mailbox Transport Delivery receives from
//! Transport services on :475 and commits into the mailbox databases whose active copy
//! is on this server, through the store driver. No queue: 250 only after the commit.
//! Must not import transport, frontend or cli (scripts/check-arrows).

pub mod active_manager;
pub mod context;
pub mod delivery;
pub mod store;
pub mod submission;
