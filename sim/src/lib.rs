//! taskgraph-sim: the production runtime, compiled with `--cfg madsim`, run
//! in madsim's deterministic world.
//!
//! Work in progress (issue 4): so far one scenario, the tree aggregation
//! with the store served over the simulated network, a crash and a
//! restart, checked for completion, right answers and replay determinism.
#![deny(missing_docs)]
#![forbid(unsafe_code)]

#[cfg(madsim)]
pub mod world;
