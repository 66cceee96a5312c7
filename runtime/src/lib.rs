//! taskgraph-runtime: drives the sans-IO core with real IO.
#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod clock;
pub mod store;

pub use store::{MemStoreServer, Store, StoreFuture, WatchStream};
