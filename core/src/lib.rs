//! taskgraph-core: the sans-IO state machine of taskgraph.
#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod id;
pub mod store;
pub mod time;
pub mod topology;

pub use id::{Epoch, Incarnation, NodeId, SessionId, TaskId};
pub use time::Instant;
