//! taskgraph: fault-tolerant distributed task graphs.
#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub use taskgraph_core::*;
