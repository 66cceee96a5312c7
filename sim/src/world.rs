//! One simulated world: a store machine serving the embedded store over the
//! simulated network, and one machine per taskgraph node.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use taskgraph_core::testkit::tree_sum::{EpochResult, Results, TreeSumBuilder};
use taskgraph_core::{NodeConfig, NodeId, TreeTopology};
use taskgraph_runtime::{
    serve_store, spawn_node, MemStoreServer, NodeExit, NodeOptions, RemoteStore, Store,
};

/// Shape of a tree_sum scenario.
#[derive(Clone, Debug)]
pub struct Scenario {
    /// Tasks (fanout 2).
    pub tasks: u32,
    /// Standbys per task.
    pub standbys: u32,
    /// Spare nodes.
    pub spares: u32,
    /// Epochs to run.
    pub epochs: u64,
    /// Pause between epochs (root's timer).
    pub pace: Duration,
}

/// What a run produced.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    /// Task 0's results.
    pub results: Vec<EpochResult>,
    /// How each node's last run ended (`None`: still running at the end).
    pub exits: Vec<(u64, Option<String>)>,
    /// Simulated time at the end.
    pub elapsed: Duration,
    /// Every event every node reported, in order, as text.
    pub events: Vec<String>,
}

fn ip(i: u64) -> IpAddr {
    // Simulated addresses (madsim opens no real socket): TEST-NET-2.
    IpAddr::V4(Ipv4Addr::new(
        198,
        51,
        100,
        u8::try_from(i).unwrap_or(u8::MAX),
    ))
}

const STORE_PORT: u16 = 2379;
const NODE_PORT: u16 = 7000;

/// Runs `s` in the current madsim runtime: crashes the machine of node
/// `crash` at `crash_at` (if any) and restarts it a second later.
pub async fn run_tree_sum(s: &Scenario, crash: Option<(u64, Duration)>) -> Outcome {
    let handle = madsim::runtime::Handle::current();
    let store_addr = SocketAddr::new(ip(1), STORE_PORT);
    let store_machine = handle
        .create_node()
        .name("store")
        .ip(ip(1))
        .init(move || async move {
            let listener = tokio::net::TcpListener::bind(store_addr)
                .await
                .expect("store binds");
            let server = MemStoreServer::new();
            let _ = serve_store(listener, Arc::new(server)).await;
        })
        .build();
    let _ = store_machine;
    let results = Results::default();
    let events = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let n = u64::from(s.tasks * (1 + s.standbys) + s.spares);
    let mut joins = Vec::new();
    let mut machines = Vec::new();
    for id in 1..=n {
        let (sc, r, evs) = (s.clone(), results.clone(), events.clone());
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Result<NodeExit, String>>();
        let machine = handle
            .create_node()
            .name(format!("node-{id}"))
            .ip(ip(id + 1))
            .init(move || {
                let (sc, r, tx, evs) = (sc.clone(), r.clone(), tx.clone(), evs.clone());
                async move {
                    let (etx, mut erx) = tokio::sync::mpsc::unbounded_channel();
                    tokio::spawn(async move {
                        while let Some((node, ev)) = erx.recv().await {
                            if let Ok(mut v) = evs.lock() {
                                v.push(format!("{:?} {node} {ev:?}", madsim::time::Instant::now()));
                            }
                        }
                    });
                    let store: Arc<dyn Store> = Arc::new(RemoteStore::new(
                        store_addr.to_string(),
                        Duration::from_secs(1),
                    ));
                    let mut cfg = NodeConfig::new(
                        NodeId(id),
                        "sim",
                        SocketAddr::new(ip(id + 1), NODE_PORT).to_string(),
                        sc.tasks,
                        sc.standbys,
                    );
                    cfg.ttl = Duration::from_secs(2);
                    let opts = NodeOptions::new(cfg, SocketAddr::new(ip(id + 1), NODE_PORT));
                    let topo = Arc::new(TreeTopology::new(2, sc.tasks).expect("tree"));
                    let builder = TreeSumBuilder::new(sc.tasks, sc.epochs, r).with_pace(sc.pace);
                    let h = match spawn_node(opts, store, topo, Box::new(builder), Some(etx)).await
                    {
                        Ok(h) => h,
                        Err(e) => {
                            let _ = tx.send(Err(e.to_string()));
                            return;
                        }
                    };
                    let _keep = (h.shutdown, h.kill);
                    let exit = h.join.await;
                    let _ = tx.send(match exit {
                        Ok(Ok(x)) => Ok(x),
                        Ok(Err(e)) => Err(e.to_string()),
                        Err(e) => Err(e.to_string()),
                    });
                }
            })
            .build();
        machines.push(machine);
        joins.push((id, rx));
        madsim::time::sleep(Duration::from_millis(20)).await;
    }
    let start = madsim::time::Instant::now();
    if let Some((victim, at)) = crash {
        madsim::time::sleep(at).await;
        if let Some(m) = machines.get((victim - 1) as usize) {
            handle.kill(m.id());
            madsim::time::sleep(Duration::from_secs(1)).await;
            handle.restart(m.id());
        }
    }
    let mut exits = Vec::new();
    for (id, mut rx) in joins {
        // A crashed machine's first run never reports; its restart does.
        let exit = madsim::time::timeout(Duration::from_secs(120), rx.recv()).await;
        exits.push((id, exit.ok().flatten().map(|e| format!("{e:?}"))));
    }
    let events = events.lock().map(|v| v.clone()).unwrap_or_default();
    Outcome {
        results: results.all(),
        exits,
        elapsed: start.elapsed(),
        events,
    }
}
