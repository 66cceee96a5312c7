//! taskgraph-runtime: drives the sans-IO core with real IO.
#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod auth;
pub mod clock;
mod driver;
pub mod store;
pub mod telemetry;
pub mod transport;

pub use driver::{
    run_node, spawn_node, EventSink, Kill, NodeExit, NodeHandle, NodeOptions, RuntimeError,
    Shutdown,
};
#[cfg(feature = "etcd")]
pub use store::etcd::{
    EtcdClientIdentity, EtcdCredentials, EtcdOptions, EtcdStore, EtcdTls, EtcdTlsFileError,
};
pub use store::{serve_store, MemStoreServer, RemoteStore, Store, StoreFuture, WatchStream};
