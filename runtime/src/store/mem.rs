//! The embedded store: the core's [`MemStore`] behind a mutex, its leases
//! expiring on the runtime's clock, its watches fanned out to channels.

use super::{Store, StoreFuture, WatchStream};
use crate::clock;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use taskgraph_core::store::{
    MemStore, Revision, StoreError, StoreOp, StoreResponse, WatchId, WatchResponse,
};
use tokio::sync::{mpsc, oneshot, Notify};

struct State {
    store: MemStore,
    watchers: BTreeMap<WatchId, mpsc::UnboundedSender<WatchResponse>>,
}

impl State {
    /// Delivers queued watch responses; forgets watchers that went away.
    fn fan_out(&mut self) {
        while let Some(resp) = self.store.poll_watch_response() {
            let (watch, canceled) = (resp.watch, resp.canceled);
            let gone = match self.watchers.get(&watch) {
                Some(tx) => tx.send(resp).is_err(),
                None => false,
            };
            if gone || canceled {
                self.watchers.remove(&watch);
                if gone {
                    self.store.cancel_watch(watch);
                }
            }
        }
    }
}

/// The embedded coordination store: every node of one process shares one.
/// Cloning gives another handle on the same store. Lease expiry runs on a
/// background tokio task, started by [`MemStoreServer::new`] (call it inside
/// a tokio runtime).
#[derive(Clone)]
pub struct MemStoreServer {
    state: Arc<Mutex<State>>,
    changed: Arc<Notify>,
}

impl std::fmt::Debug for MemStoreServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MemStoreServer")
    }
}

impl MemStoreServer {
    /// An empty store, with its lease-expiry task spawned.
    pub fn new() -> Self {
        let s = MemStoreServer {
            state: Arc::new(Mutex::new(State {
                store: MemStore::new(),
                watchers: BTreeMap::new(),
            })),
            changed: Arc::new(Notify::new()),
        };
        let (state, changed) = (Arc::downgrade(&s.state), s.changed.clone());
        tokio::spawn(async move {
            loop {
                let deadline = match state.upgrade() {
                    Some(st) => lock(&st).store.next_deadline(),
                    None => return,
                };
                match deadline {
                    Some(d) => {
                        // Biased: an unbiased select draws from tokio's
                        // process-wide random seed, so runs in the simulator
                        // would depend on the runs before them.
                        tokio::select! {
                            biased;
                            _ = tokio::time::sleep_until(clock::to_tokio(d)) => {}
                            _ = changed.notified() => {}
                        }
                    }
                    None => changed.notified().await,
                }
                let Some(st) = state.upgrade() else { return };
                let mut g = lock(&st);
                g.store.expire_leases(clock::now());
                g.fan_out();
            }
        });
        s
    }

    /// Runs `f` on the store (for tests and tools: inspect or inject).
    pub fn with<R>(&self, f: impl FnOnce(&mut MemStore) -> R) -> R {
        let mut g = lock(&self.state);
        let r = f(&mut g.store);
        g.fan_out();
        drop(g);
        self.changed.notify_one();
        r
    }
}

impl Default for MemStoreServer {
    fn default() -> Self {
        Self::new()
    }
}

fn lock(m: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    // A panic while holding the lock cannot leave the model half-updated
    // in a way later calls rely on; keep serving.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Store for MemStoreServer {
    fn execute(&self, op: StoreOp) -> StoreFuture<'_, Result<StoreResponse, StoreError>> {
        Box::pin(async move {
            if matches!(op, StoreOp::Watch { .. } | StoreOp::CancelWatch { .. }) {
                return Err(StoreError::InvalidRequest(
                    "use Store::watch for watches".into(),
                ));
            }
            let r = {
                let mut g = lock(&self.state);
                let r = g.store.apply(clock::now(), op);
                g.fan_out();
                r
            };
            self.changed.notify_one();
            r
        })
    }

    fn watch(
        &self,
        prefix: String,
        start_revision: Revision,
    ) -> StoreFuture<'_, Result<WatchStream, StoreError>> {
        Box::pin(async move {
            let (tx, rx) = mpsc::unbounded_channel();
            let (cancel_tx, cancel_rx) = oneshot::channel::<()>();
            let id = {
                let mut g = lock(&self.state);
                let id = match g.store.apply(
                    clock::now(),
                    StoreOp::Watch {
                        prefix,
                        start_revision,
                    },
                )? {
                    StoreResponse::WatchCreated { watch } => watch,
                    other => {
                        return Err(StoreError::InvalidRequest(format!("unexpected {other:?}")))
                    }
                };
                g.watchers.insert(id, tx);
                g.fan_out();
                id
            };
            // Cancel the watch in the model when the stream is dropped.
            let state = Arc::downgrade(&self.state);
            tokio::spawn(async move {
                let _ = cancel_rx.await;
                if let Some(st) = state.upgrade() {
                    let mut g = lock(&st);
                    g.watchers.remove(&id);
                    g.store.cancel_watch(id);
                }
            });
            Ok(WatchStream::new(id, rx, Some(cancel_tx)))
        })
    }

    fn describe(&self) -> String {
        "embedded store".into()
    }
}
