//! taskgraph-core: the sans-IO state machine of taskgraph.
#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod id;
pub mod store;
pub mod time;
pub mod topology;

pub use id::{Epoch, Incarnation, NodeId, SessionId, TaskId};
pub use time::Instant;

pub mod action;
pub mod config;
pub mod keys;
mod node;
pub mod task;
pub mod testkit;
pub mod wire;

pub use action::{Action, DropReason, Event, OpId, StepDownReason};
pub use config::{ConfigError, JobSpec, NodeConfig, PROTOCOL_VERSION};
pub use node::{Node, NodeError, NodeStats, Role};
pub use task::{Context, ExitReason, Link, ServeId, Task, TaskBuilder};
pub use topology::{FullTopology, Topology, TopologyError, TreeTopology};
pub use wire::{Body, Direction, Envelope, Reply, RequestId};
