//! Transport's queues (reference §3.3–3.5): the Submission queue (messages not yet
//! categorized), one delivery queue per next hop, and the Unreachable queue. The queue
//! database ([`store::QueueDb`]) is the durable truth; the rest is the in-memory view
//! that schedules delivery: the queued message and its next hop (`message.rs`), one
//! delivery queue (`delivery_queue.rs`), all of them (`queues.rs`) and the retry and
//! expiry rules (`retry.rs`). queue/ must not import send/, routing or the categorizer.

mod delivery_queue;
mod message;
mod queues;
mod retry;
pub mod store;

pub use delivery_queue::{DeliveryQueue, MessageInfo, QueueInfo};
pub use message::{DeliveryType, Item, NextHop, QueuedMessage};
pub use queues::{NewQueues, Queues};
pub use retry::{Expiry, RetryPolicy};
