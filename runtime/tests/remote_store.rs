//! The embedded store served over TCP: the whole store conformance suite
//! through `RemoteStore`, and a tree_sum job whose nodes reach the store
//! over the network (as separate processes or simulated machines would).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use taskgraph_core::store::conformance::{all_checks, ConformanceStore};
use taskgraph_core::store::{Revision, StoreError, StoreOp, StoreResponse, WatchId, WatchResponse};
use taskgraph_core::testkit::tree_sum::{Results, TreeSumBuilder};
use taskgraph_core::{NodeConfig, NodeId, TreeTopology};
use taskgraph_runtime::{
    serve_store, spawn_node, MemStoreServer, NodeExit, NodeOptions, RemoteStore, Store, WatchStream,
};

struct Remote {
    rt: tokio::runtime::Runtime,
    server: MemStoreServer,
    client: RemoteStore,
    streams: BTreeMap<WatchId, WatchStream>,
    prefix: String,
}

impl Remote {
    fn new(prefix: &str) -> Remote {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let (server, addr) = rt.block_on(async {
            let server = MemStoreServer::new();
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            let addr = listener.local_addr().expect("addr");
            serve_store(listener, Arc::new(server.clone()));
            (server, addr)
        });
        let client = RemoteStore::new(addr.to_string(), Duration::from_secs(2));
        Remote {
            rt,
            server,
            client,
            streams: BTreeMap::new(),
            prefix: prefix.into(),
        }
    }
}

impl ConformanceStore for Remote {
    fn apply(&mut self, op: StoreOp) -> Result<StoreResponse, StoreError> {
        match op {
            StoreOp::Watch {
                prefix,
                start_revision,
            } => {
                let stream = self
                    .rt
                    .block_on(self.client.watch(prefix, start_revision))?;
                let watch = stream.id;
                self.streams.insert(watch, stream);
                Ok(StoreResponse::WatchCreated { watch })
            }
            StoreOp::CancelWatch { watch } => match self.streams.remove(&watch) {
                Some(_) => Ok(StoreResponse::WatchCanceled { watch }),
                None => Err(StoreError::InvalidRequest(format!("unknown watch {watch}"))),
            },
            op => self.rt.block_on(self.client.execute(op)),
        }
    }
    fn advance(&mut self, d: Duration) {
        self.rt.block_on(async move { tokio::time::sleep(d).await });
    }
    fn next_watch_response(&mut self, watch: WatchId, timeout: Duration) -> Option<WatchResponse> {
        let stream = self.streams.get_mut(&watch)?;
        self.rt.block_on(async {
            tokio::time::timeout(timeout, stream.responses.recv())
                .await
                .ok()
                .flatten()
        })
    }
    fn prefix(&self) -> String {
        self.prefix.clone()
    }
    fn compact(&mut self, rev: Revision) -> Result<(), StoreError> {
        self.server.with(|s| s.compact(rev))
    }
}

#[test]
fn every_conformance_check_passes_over_tcp() {
    for (name, check) in all_checks() {
        let mut store = Remote::new(&format!("/remote/{name}/"));
        check(&mut store);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tree_sum_with_the_store_reached_over_tcp_survives_a_kill() {
    let server = MemStoreServer::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let serving = serve_store(listener, Arc::new(server));
    let results = Results::default();
    let mut nodes = Vec::new();
    for id in 1..=7 {
        // Every node has its own client and connection, as a process would.
        let store: Arc<dyn Store> =
            Arc::new(RemoteStore::new(addr.clone(), Duration::from_secs(2)));
        let cfg = NodeConfig::new(NodeId(id), "remote", "", 3, 1);
        let opts = NodeOptions::new(cfg, "127.0.0.1:0".parse().expect("addr"));
        let topo = Arc::new(TreeTopology::new(2, 3).expect("tree"));
        let builder =
            TreeSumBuilder::new(3, 12, results.clone()).with_pace(Duration::from_millis(100));
        nodes.push(
            spawn_node(opts, store, topo, Box::new(builder), None)
                .await
                .expect("starts"),
        );
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    // Node 1 holds task 0: kill it; its standby takes over after the TTL.
    let first = nodes.remove(0);
    first.kill.kill();
    for n in nodes {
        let exit = tokio::time::timeout(Duration::from_secs(40), n.join)
            .await
            .expect("in time");
        assert!(
            matches!(exit, Ok(Ok(NodeExit::JobEnded(ref r))) if r.is_completed()),
            "{exit:?}"
        );
    }
    let all = results.all();
    assert!(
        (1..=12).all(|e| all.iter().any(|r| r.epoch.0 == e)),
        "{all:?}"
    );
    assert!(all.iter().all(|r| r.total == r.expected));
    serving.abort();
}
