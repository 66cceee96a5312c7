//! An in-memory cluster harness: many [`Node`](crate::Node)s, one
//! [`MemStore`](crate::store::MemStore) and a network of ordered links, all
//! on a virtual clock, driven by one seed.
//!
//! Used by the core's tests and benchmarks, and by the simulator's
//! exhaustive mode. Faults: crash and restart a node, partition a node from
//! its peers or from the store (one-way links too), store outage, pause a
//! node (no inputs while its lease runs out), message delay. Every input and
//! output is folded into a 128-bit trace hash, and a [`Checker`] verifies the
//! contract's safety properties on every step.

mod checker;
mod cluster;
mod faults;
mod hash;
pub mod recorder;
mod rng;
pub mod tree_sum;

pub use checker::{Checker, Delivered, Violation};
pub use cluster::{Cluster, ClusterConfig, FaultCounts, TraceEntry};
pub use faults::{run_schedule, verdict, Fault, Schedule, ScheduleConfig, ScheduleOutcome};
pub use hash::TraceHash;
pub use rng::Rng;
