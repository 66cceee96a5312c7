//! A whole job in this process: every node a tokio task with its own TCP
//! listener on loopback, all sharing one embedded store whose operations are
//! counted.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use taskgraph_core::store::{Revision, StoreError, StoreOp, StoreResponse, TxnOp};
use taskgraph_core::{NodeConfig, NodeId, TaskBuilder, TreeTopology};
use taskgraph_runtime::{
    spawn_node, MemStoreServer, NodeExit, NodeHandle, NodeOptions, Store, StoreFuture, WatchStream,
};

/// Counts of the operations a store served.
#[derive(Debug, Default)]
pub struct OpCounts {
    /// Operations that write: puts, deletes, transactions with a write in
    /// the branch taken or not (counted once each), lease grants/revokes.
    pub writes: AtomicU64,
    /// Lease keep-alives.
    pub keepalives: AtomicU64,
    /// Reads.
    pub reads: AtomicU64,
}

impl OpCounts {
    /// (writes, keep-alives, reads) so far.
    pub fn snapshot(&self) -> (u64, u64, u64) {
        (
            self.writes.load(Ordering::Relaxed),
            self.keepalives.load(Ordering::Relaxed),
            self.reads.load(Ordering::Relaxed),
        )
    }
}

/// A store that counts what passes through it.
pub struct Counting {
    inner: Arc<dyn Store>,
    counts: Arc<OpCounts>,
}

impl Store for Counting {
    fn execute(&self, op: StoreOp) -> StoreFuture<'_, Result<StoreResponse, StoreError>> {
        let c = match &op {
            StoreOp::Get { .. } => &self.counts.reads,
            StoreOp::LeaseKeepAlive { .. } => &self.counts.keepalives,
            StoreOp::Txn {
                success, failure, ..
            } => {
                let writes = |ops: &[TxnOp]| ops.iter().any(|o| !matches!(o, TxnOp::Get { .. }));
                if writes(success) || writes(failure) {
                    &self.counts.writes
                } else {
                    &self.counts.reads
                }
            }
            _ => &self.counts.writes,
        };
        c.fetch_add(1, Ordering::Relaxed);
        self.inner.execute(op)
    }

    fn watch(
        &self,
        prefix: String,
        start_revision: Revision,
    ) -> StoreFuture<'_, Result<WatchStream, StoreError>> {
        self.inner.watch(prefix, start_revision)
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }
}

/// A running job.
pub struct Job {
    /// Every node.
    pub nodes: Vec<NodeHandle>,
    /// What the store served.
    pub counts: Arc<OpCounts>,
}

impl Job {
    /// Waits for every node to stop; fails unless every one saw the job end.
    pub async fn join(self, limit: Duration) -> Result<(), String> {
        for h in self.nodes {
            let id = h.id;
            match tokio::time::timeout(limit, h.join).await {
                Ok(Ok(Ok(NodeExit::JobEnded(_)))) => {}
                other => return Err(format!("node {id} ended with {other:?}")),
            }
        }
        Ok(())
    }
}

/// The shape and timing of a job started by [`start`].
#[derive(Clone, Debug)]
pub struct Layout {
    /// Tasks, in a tree of `fanout`.
    pub tasks: u32,
    /// Children per task.
    pub fanout: u32,
    /// Standbys per task.
    pub standbys: u32,
    /// Lease TTL of every node.
    pub ttl: Duration,
    /// Counts the sessions nodes lost (their lease could not be renewed in
    /// time), if given.
    pub sessions_lost: Option<Arc<AtomicU64>>,
}

impl Layout {
    /// `tasks` tasks in a tree of `fanout`, `standbys` standbys each, the
    /// default TTL, session losses not counted.
    pub fn new(tasks: u32, fanout: u32, standbys: u32) -> Layout {
        Layout {
            tasks,
            fanout,
            standbys,
            ttl: NodeConfig::new(NodeId(1), "x", "", 1, 0).ttl,
            sessions_lost: None,
        }
    }
}

/// Starts a job `name` shaped as `layout`, on loopback, with `backend`
/// (default: an embedded store) whose operations go to `counts`; `builder`
/// makes every node's tasks.
pub async fn start(
    name: &str,
    layout: &Layout,
    counts: Arc<OpCounts>,
    backend: Option<Arc<dyn Store>>,
    builder: impl Fn() -> Box<dyn TaskBuilder>,
) -> Result<Job, String> {
    let (tasks, fanout, standbys) = (layout.tasks, layout.fanout, layout.standbys);
    let events = layout.sessions_lost.clone().map(|lost| {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some((_, ev)) = rx.recv().await {
                if matches!(ev, taskgraph_core::Event::SessionLost { .. }) {
                    lost.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        tx
    });
    let store: Arc<dyn Store> = Arc::new(Counting {
        inner: backend.unwrap_or_else(|| Arc::new(MemStoreServer::new())),
        counts: counts.clone(),
    });
    let topo = Arc::new(TreeTopology::new(fanout, tasks).map_err(|e| e.to_string())?);
    let n = u64::from(tasks) * u64::from(1 + standbys);
    let mut nodes = Vec::new();
    for id in 1..=n {
        let mut cfg = NodeConfig::new(NodeId(id), name, "", tasks, standbys);
        // The data benchmark sends payloads up to 60 MiB.
        cfg.max_payload = taskgraph_core::MAX_PAYLOAD_LEN;
        if cfg.ttl != layout.ttl {
            // Renewals and the step-down margin keep their share of the TTL.
            let scale = layout.ttl.as_secs_f64() / cfg.ttl.as_secs_f64();
            cfg.renew_interval = cfg.renew_interval.mul_f64(scale);
            cfg.step_down_margin = cfg.step_down_margin.mul_f64(scale);
            cfg.ttl = layout.ttl;
        }
        let opts = NodeOptions::new(cfg, SocketAddr::from((Ipv4Addr::LOCALHOST, 0)));
        let h = spawn_node(opts, store.clone(), topo.clone(), builder(), events.clone())
            .await
            .map_err(|e| format!("node {id}: {e}"))?;
        nodes.push(h);
    }
    Ok(Job { nodes, counts })
}
