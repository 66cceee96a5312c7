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

/// Starts a job `name` of `tasks` tasks in a tree of `fanout`, `standbys`
/// standbys per task, on loopback, with `backend` (default: an embedded
/// store) whose operations go to `counts`; `builder` makes every node's
/// tasks.
pub async fn start(
    name: &str,
    tasks: u32,
    fanout: u32,
    standbys: u32,
    counts: Arc<OpCounts>,
    backend: Option<Arc<dyn Store>>,
    builder: impl Fn() -> Box<dyn TaskBuilder>,
) -> Result<Job, String> {
    let store: Arc<dyn Store> = Arc::new(Counting {
        inner: backend.unwrap_or_else(|| Arc::new(MemStoreServer::new())),
        counts: counts.clone(),
    });
    let topo = Arc::new(TreeTopology::new(fanout, tasks).map_err(|e| e.to_string())?);
    let n = u64::from(tasks) * u64::from(1 + standbys);
    let mut nodes = Vec::new();
    for id in 1..=n {
        let cfg = NodeConfig::new(NodeId(id), name, "", tasks, standbys);
        let opts = NodeOptions::new(cfg, SocketAddr::from((Ipv4Addr::LOCALHOST, 0)));
        let h = spawn_node(opts, store.clone(), topo.clone(), builder(), None)
            .await
            .map_err(|e| format!("node {id}: {e}"))?;
        nodes.push(h);
    }
    Ok(Job { nodes, counts })
}
