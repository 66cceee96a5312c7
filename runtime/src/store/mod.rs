//! Coordination backends behind one [`Store`] trait: the embedded
//! [`MemStoreServer`] (every node of one process shares it) and, with the
//! `etcd` feature, `etcd::EtcdStore`.

use std::future::Future;
use std::pin::Pin;
use taskgraph_core::store::{Revision, StoreError, StoreOp, StoreResponse, WatchId, WatchResponse};
use tokio::sync::mpsc;

#[cfg(feature = "etcd")]
pub mod etcd;
mod mem;
pub mod remote;

pub use mem::MemStoreServer;
pub use remote::{serve_store, RemoteStore};

/// A boxed future, as [`Store`] methods return.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A coordination store with etcd v3 semantics (see
/// `taskgraph_core::store::conformance`).
pub trait Store: Send + Sync + 'static {
    /// Runs one operation. `Watch` and `CancelWatch` are not accepted here
    /// (use [`Store::watch`] and drop the stream). Every call ends, with
    /// [`StoreError::Unavailable`] if the store does not answer in time.
    fn execute(&self, op: StoreOp) -> StoreFuture<'_, Result<StoreResponse, StoreError>>;

    /// Watches every key under `prefix` from `start_revision` (0: from now).
    /// Responses arrive in order on the stream; the stream ends when the
    /// watch breaks (the last response may say why, e.g. compaction).
    /// Dropping the stream cancels the watch.
    fn watch(
        &self,
        prefix: String,
        start_revision: Revision,
    ) -> StoreFuture<'_, Result<WatchStream, StoreError>>;

    /// Where the store is (endpoints), for error messages.
    fn describe(&self) -> String;
}

/// The responses of one watch. Dropping it cancels the watch.
#[derive(Debug)]
pub struct WatchStream {
    /// The watch's id.
    pub id: WatchId,
    /// Responses, in order; `None` once the watch has ended.
    pub responses: mpsc::UnboundedReceiver<WatchResponse>,
    /// Dropped with the stream, which tells the store to cancel the watch.
    _cancel: Option<tokio::sync::oneshot::Sender<()>>,
}

impl WatchStream {
    /// A stream over `responses`; `cancel` is dropped (closing its channel)
    /// when the stream is dropped, which the store takes as a cancel.
    pub fn new(
        id: WatchId,
        responses: mpsc::UnboundedReceiver<WatchResponse>,
        cancel: Option<tokio::sync::oneshot::Sender<()>>,
    ) -> Self {
        WatchStream {
            id,
            responses,
            _cancel: cancel,
        }
    }
}
