//! taskgraph-sim: the production runtime, compiled with `--cfg madsim`, run
//! in madsim's deterministic world, plus an exhaustive small-scope explorer
//! on the core's in-memory harness.
//!
//! - `world` (only with `--cfg madsim`): one simulated machine per node
//!   and one for the store; seeded faults (crashes, partitions, one-way
//!   cuts, store cuts and outages, pauses, message delay); every event
//!   checked against the store at that instant; a 128-bit trace hash per run.
//! - [`exhaustive`]: every placement of a few crashes and partitions at
//!   bounded step boundaries of a small graph.
//!
//! The `taskgraph-sim` binary drives both (`cargo xtask sim --help`).
#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod exhaustive;
#[cfg(madsim)]
pub mod regression;
#[cfg(madsim)]
pub mod world;
