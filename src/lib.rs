//! taskgraph: fault-tolerant distributed task graphs.
//!
//! An application is a network of tasks connected by a per-epoch topology of
//! parents and children. Each task has a primary node and hot standbys; the
//! framework detects node failure through store leases, promotes standbys
//! or restarts tasks on spare nodes, fences stale primaries, and delivers
//! parent/child died/restarted, epoch, meta, data and exit events to the
//! application.
//!
//! This facade re-exports the sans-IO core ([`taskgraph_core`], at the crate
//! root) and the runtime that drives it with real IO ([`runtime`]).
#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub use taskgraph_core::*;

/// The runtime: tokio event loop, TCP transport, embedded store and (with
/// the `etcd` feature) the etcd backend.
pub mod runtime {
    pub use taskgraph_runtime::*;
}
