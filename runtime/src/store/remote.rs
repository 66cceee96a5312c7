//! The embedded store served over TCP ([`serve_store`]) and its client
//! ([`RemoteStore`]): coordination for nodes in several processes (or
//! simulated machines) without etcd.
//!
//! One connection per client, multiplexed by request id:
//!
//! ```text
//! frame := len: u32 (big endian) | postcard(ClientFrame or ServerFrame)
//! client -> server: Op { id, op } | Watch { id, prefix, start } | Cancel { id }
//! server -> client: Result { id, result } | Created { id, result } | Event { id, resp } | Ended { id }
//! ```
//!
//! A broken connection fails every pending operation with
//! `StoreError::Unavailable` and ends every watch stream; the next operation
//! reconnects. The core retries and re-watches on its own.

use super::{Store, StoreFuture, WatchStream};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use taskgraph_core::store::{Revision, StoreError, StoreOp, StoreResponse, WatchId, WatchResponse};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

/// Largest frame of the store protocol.
const MAX_STORE_FRAME: usize = 64 * 1024 * 1024;

#[derive(Debug, Serialize, Deserialize)]
enum ClientFrame {
    Op {
        id: u64,
        op: StoreOp,
    },
    Watch {
        id: u64,
        prefix: String,
        start: Revision,
    },
    Cancel {
        id: u64,
    },
}

#[derive(Debug, Serialize, Deserialize)]
enum ServerFrame {
    Result {
        id: u64,
        result: Result<StoreResponse, StoreError>,
    },
    Created {
        id: u64,
        result: Result<WatchId, StoreError>,
    },
    Event {
        id: u64,
        resp: WatchResponse,
    },
    Ended {
        id: u64,
    },
}

async fn write_frame<W: AsyncWriteExt + Unpin, T: Serialize>(
    w: &mut W,
    value: &T,
) -> std::io::Result<()> {
    let body = postcard::to_allocvec(value).map_err(|e| std::io::Error::other(e.to_string()))?;
    let len = u32::try_from(body.len()).map_err(|_| std::io::Error::other("frame too large"))?;
    w.write_all(&len.to_be_bytes()).await?;
    w.write_all(&body).await?;
    // Some streams (the simulator's) hold written bytes until flushed.
    w.flush().await
}

async fn read_frame<R: AsyncReadExt + Unpin, T: for<'de> Deserialize<'de>>(
    r: &mut R,
) -> std::io::Result<T> {
    let len = r.read_u32().await? as usize;
    if len > MAX_STORE_FRAME {
        return Err(std::io::Error::other(format!(
            "store frame of {len} bytes over the limit"
        )));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await?;
    postcard::from_bytes(&body).map_err(|e| std::io::Error::other(format!("bad store frame: {e}")))
}

/// Tasks aborted together when dropped.
struct Tasks(Vec<JoinHandle<()>>);

impl Drop for Tasks {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

/// Serves `store` to every client that connects to `listener`, until the
/// returned task is aborted (which also ends every connection).
pub fn serve_store(listener: TcpListener, store: Arc<dyn Store>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut conns = Tasks(Vec::new());
        loop {
            let Ok((stream, peer)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let store = store.clone();
            conns.0.retain(|c| !c.is_finished());
            conns.0.push(tokio::spawn(async move {
                if let Err(e) = serve_client(stream, store).await {
                    tracing::debug!(%peer, %e, "store client gone");
                }
            }));
        }
    })
}

async fn serve_client(stream: TcpStream, store: Arc<dyn Store>) -> std::io::Result<()> {
    let _ = stream.set_nodelay(true);
    let (mut rd, mut wr) = tokio::io::split(stream);
    let (tx, mut rx) = mpsc::unbounded_channel::<ServerFrame>();
    let writer = tokio::spawn(async move {
        while let Some(f) = rx.recv().await {
            if write_frame(&mut wr, &f).await.is_err() {
                return;
            }
        }
    });
    let mut tasks: BTreeMap<u64, JoinHandle<()>> = BTreeMap::new();
    let result = loop {
        let frame: ClientFrame = match read_frame(&mut rd).await {
            Ok(f) => f,
            Err(e) => break Err(e),
        };
        tasks.retain(|_, t| !t.is_finished());
        match frame {
            ClientFrame::Op { id, op } => {
                let (store, tx) = (store.clone(), tx.clone());
                tasks.insert(
                    id,
                    tokio::spawn(async move {
                        let result = store.execute(op).await;
                        let _ = tx.send(ServerFrame::Result { id, result });
                    }),
                );
            }
            ClientFrame::Watch { id, prefix, start } => {
                let (store, tx) = (store.clone(), tx.clone());
                tasks.insert(
                    id,
                    tokio::spawn(async move {
                        match store.watch(prefix, start).await {
                            Ok(mut stream) => {
                                let _ = tx.send(ServerFrame::Created {
                                    id,
                                    result: Ok(stream.id),
                                });
                                while let Some(resp) = stream.responses.recv().await {
                                    if tx.send(ServerFrame::Event { id, resp }).is_err() {
                                        return;
                                    }
                                }
                                let _ = tx.send(ServerFrame::Ended { id });
                            }
                            Err(e) => {
                                let _ = tx.send(ServerFrame::Created { id, result: Err(e) });
                            }
                        }
                    }),
                );
            }
            ClientFrame::Cancel { id } => {
                if let Some(t) = tasks.remove(&id) {
                    t.abort();
                }
            }
        }
    };
    for (_, t) in tasks {
        t.abort();
    }
    writer.abort();
    result
}

type Pending = BTreeMap<u64, oneshot::Sender<ServerFrame>>;
type Watches = BTreeMap<u64, mpsc::UnboundedSender<WatchResponse>>;

/// One live connection to the store server.
struct Conn {
    tx: mpsc::UnboundedSender<ClientFrame>,
    alive: Arc<std::sync::atomic::AtomicBool>,
    _tasks: Tasks,
}

/// A [`Store`] reached over TCP at a [`serve_store`] server.
pub struct RemoteStore {
    addr: String,
    op_timeout: Duration,
    next_id: std::sync::atomic::AtomicU64,
    conn: tokio::sync::Mutex<Option<Conn>>,
    pending: Arc<Mutex<Pending>>,
    watches: Arc<Mutex<Watches>>,
}

impl std::fmt::Debug for RemoteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RemoteStore({})", self.addr)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl RemoteStore {
    /// A client of the store server at `addr` (`host:port`). Connects on
    /// first use, and again after a failure; every call gives up after
    /// `op_timeout` with `StoreError::Unavailable`.
    pub fn new(addr: impl Into<String>, op_timeout: Duration) -> Self {
        RemoteStore {
            addr: addr.into(),
            op_timeout,
            next_id: std::sync::atomic::AtomicU64::new(1),
            conn: tokio::sync::Mutex::new(None),
            pending: Arc::new(Mutex::new(BTreeMap::new())),
            watches: Arc::new(Mutex::new(BTreeMap::new())),
        }
    }

    fn unavailable(&self, what: impl std::fmt::Display) -> StoreError {
        StoreError::Unavailable(format!("store at {}: {what}", self.addr))
    }

    /// Sends `frame`, connecting first if needed.
    async fn send(&self, frame: ClientFrame) -> Result<(), StoreError> {
        let mut guard = self.conn.lock().await;
        if guard
            .as_ref()
            .is_some_and(|c| !c.alive.load(std::sync::atomic::Ordering::SeqCst))
        {
            *guard = None;
        }
        if guard.is_none() {
            *guard = Some(self.connect().await?);
        }
        let ok = guard.as_ref().is_some_and(|c| c.tx.send(frame).is_ok());
        if ok {
            Ok(())
        } else {
            *guard = None;
            Err(self.unavailable("connection lost"))
        }
    }

    async fn connect(&self) -> Result<Conn, StoreError> {
        let stream = tokio::time::timeout(self.op_timeout, TcpStream::connect(self.addr.as_str()))
            .await
            .map_err(|_| self.unavailable(format!("no connection within {:?}", self.op_timeout)))?
            .map_err(|e| self.unavailable(e))?;
        let _ = stream.set_nodelay(true);
        let (mut rd, mut wr) = tokio::io::split(stream);
        let (tx, mut rx) = mpsc::unbounded_channel::<ClientFrame>();
        let alive = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let a = alive.clone();
        let writer = tokio::spawn(async move {
            while let Some(f) = rx.recv().await {
                if write_frame(&mut wr, &f).await.is_err() {
                    break;
                }
            }
            a.store(false, std::sync::atomic::Ordering::SeqCst);
        });
        let (pending, watches, a) = (self.pending.clone(), self.watches.clone(), alive.clone());
        let reader = tokio::spawn(async move {
            while let Ok(frame) = read_frame::<_, ServerFrame>(&mut rd).await {
                match frame {
                    ServerFrame::Event { id, resp } => {
                        if let Some(w) = lock(&watches).get(&id) {
                            let _ = w.send(resp);
                        }
                    }
                    ServerFrame::Ended { id } => {
                        lock(&watches).remove(&id);
                    }
                    f @ (ServerFrame::Result { id, .. } | ServerFrame::Created { id, .. }) => {
                        if let Some(p) = lock(&pending).remove(&id) {
                            let _ = p.send(f);
                        }
                    }
                }
            }
            // The connection is gone: fail what waits on it, end its watches.
            a.store(false, std::sync::atomic::Ordering::SeqCst);
            lock(&pending).clear();
            lock(&watches).clear();
        });
        Ok(Conn {
            tx,
            alive,
            _tasks: Tasks(vec![writer, reader]),
        })
    }

    /// Sends `frame` (built with a fresh id) and waits for its answer.
    async fn call(
        &self,
        frame: impl FnOnce(u64) -> ClientFrame,
    ) -> Result<(u64, ServerFrame), StoreError> {
        let id = self
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let (tx, rx) = oneshot::channel();
        lock(&self.pending).insert(id, tx);
        let sent = self.send(frame(id)).await;
        if let Err(e) = sent {
            lock(&self.pending).remove(&id);
            return Err(e);
        }
        match tokio::time::timeout(self.op_timeout, rx).await {
            Ok(Ok(f)) => Ok((id, f)),
            Ok(Err(_)) => Err(self.unavailable("connection lost")),
            Err(_) => {
                lock(&self.pending).remove(&id);
                Err(self.unavailable(format!("no answer within {:?}", self.op_timeout)))
            }
        }
    }
}

impl Store for RemoteStore {
    fn execute(&self, op: StoreOp) -> StoreFuture<'_, Result<StoreResponse, StoreError>> {
        Box::pin(async move {
            match self.call(|id| ClientFrame::Op { id, op }).await? {
                (_, ServerFrame::Result { result, .. }) => result,
                (_, other) => Err(self.unavailable(format!("unexpected answer {other:?}"))),
            }
        })
    }

    fn watch(
        &self,
        prefix: String,
        start_revision: Revision,
    ) -> StoreFuture<'_, Result<WatchStream, StoreError>> {
        Box::pin(async move {
            let id = self
                .next_id
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let (events_tx, events_rx) = mpsc::unbounded_channel();
            lock(&self.watches).insert(id, events_tx);
            let (tx, rx) = oneshot::channel();
            lock(&self.pending).insert(id, tx);
            let fail = |e: StoreError| {
                lock(&self.watches).remove(&id);
                lock(&self.pending).remove(&id);
                Err(e)
            };
            if let Err(e) = self
                .send(ClientFrame::Watch {
                    id,
                    prefix,
                    start: start_revision,
                })
                .await
            {
                return fail(e);
            }
            let watch = match tokio::time::timeout(self.op_timeout, rx).await {
                Ok(Ok(ServerFrame::Created { result: Ok(w), .. })) => w,
                Ok(Ok(ServerFrame::Created { result: Err(e), .. })) => return fail(e),
                Ok(_) => return fail(self.unavailable("connection lost")),
                Err(_) => {
                    return fail(
                        self.unavailable(format!("watch not created within {:?}", self.op_timeout)),
                    )
                }
            };
            // Dropping the stream cancels the watch at the server.
            let (cancel_tx, cancel_rx) = oneshot::channel::<()>();
            let (watches, conn_tx) = (
                self.watches.clone(),
                self.conn.lock().await.as_ref().map(|c| c.tx.clone()),
            );
            tokio::spawn(async move {
                let _ = cancel_rx.await;
                lock(&watches).remove(&id);
                if let Some(tx) = conn_tx {
                    let _ = tx.send(ClientFrame::Cancel { id });
                }
            });
            Ok(WatchStream::new(watch, events_rx, Some(cancel_tx)))
        })
    }

    fn describe(&self) -> String {
        format!("store server at {}", self.addr)
    }
}
