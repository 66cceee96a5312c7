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
    /// The same events: (simulated time since the run started, node, event).
    pub log: Vec<(Duration, NodeId, taskgraph_core::Event)>,
}

/// Runs the core's checker over a run's event log, in order (the checks that
/// need only events: incarnations rise, died/restarted alternate, epochs
/// once and in order, meta/data/serve at most once and within their epoch,
/// no delivery from a fenced incarnation, replica order). Returns every
/// violation.
pub fn check_log(
    tasks: u32,
    log: &[(Duration, NodeId, taskgraph_core::Event)],
) -> Vec<taskgraph_core::testkit::Violation> {
    use taskgraph_core::{Event, Instant, SessionId};
    let topo = Arc::new(TreeTopology::new(2, tasks).expect("tree"));
    let mut checker = taskgraph_core::testkit::Checker::new("sim", tasks, topo);
    let mut sessions: std::collections::BTreeMap<NodeId, SessionId> = Default::default();
    let mut last = Instant::ZERO;
    for (at, node, ev) in log {
        if let Event::SessionStarted { session } = ev {
            sessions.insert(*node, *session);
        }
        let session = sessions.get(node).copied().unwrap_or_default();
        last = Instant::from_duration(*at);
        checker.on_event(last, *node, session, ev, None);
    }
    checker.finish(last);
    checker.violations().to_vec()
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
    let faults: Vec<SimFault> = crash
        .map(|(node, at)| SimFault::Crash {
            node,
            at,
            down: Duration::from_secs(1),
        })
        .into_iter()
        .collect();
    run_with_faults(s, &faults).await
}

/// One fault of a simulated run, at a time from the start of the run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SimFault {
    /// Kill node `node`'s machine at `at`; restart it `down` later.
    Crash {
        /// The node.
        node: u64,
        /// When.
        at: Duration,
        /// How long it stays down.
        down: Duration,
    },
    /// Cut node `node` from everyone (peers and store) for `dur`.
    Partition {
        /// The node.
        node: u64,
        /// When.
        at: Duration,
        /// How long.
        dur: Duration,
    },
    /// Cut the link `from -> to` only, for `dur`.
    OneWay {
        /// Sender.
        from: u64,
        /// Receiver.
        to: u64,
        /// When.
        at: Duration,
        /// How long.
        dur: Duration,
    },
    /// Cut the store's machine from everyone for `dur`.
    StoreOutage {
        /// When.
        at: Duration,
        /// How long.
        dur: Duration,
    },
}

impl SimFault {
    fn at(&self) -> Duration {
        match self {
            SimFault::Crash { at, .. }
            | SimFault::Partition { at, .. }
            | SimFault::OneWay { at, .. }
            | SimFault::StoreOutage { at, .. } => *at,
        }
    }

    /// The fault's kind, for counting.
    pub fn kind(&self) -> &'static str {
        match self {
            SimFault::Crash { .. } => "crash",
            SimFault::Partition { .. } => "partition",
            SimFault::OneWay { .. } => "one_way",
            SimFault::StoreOutage { .. } => "store_outage",
        }
    }
}

/// `count` random faults within `window` for a scenario of `nodes` nodes,
/// drawn from `seed`.
pub fn random_faults(seed: u64, nodes: u64, count: usize, window: Duration) -> Vec<SimFault> {
    let mut rng = taskgraph_core::testkit::Rng::new(seed);
    let window_ms = u64::try_from(window.as_millis()).unwrap_or(u64::MAX).max(1);
    let mut v = Vec::new();
    for _ in 0..count {
        let at = Duration::from_millis(rng.range(100, window_ms));
        let node = rng.range(1, nodes + 1);
        let dur = Duration::from_millis(rng.range(200, 3_500));
        v.push(match rng.range(0, 4) {
            0 => SimFault::Crash {
                node,
                at,
                down: dur,
            },
            1 => SimFault::Partition { node, at, dur },
            2 => SimFault::OneWay {
                from: node,
                to: rng.range(1, nodes + 1),
                at,
                dur,
            },
            _ => SimFault::StoreOutage { at, dur: dur / 2 },
        });
    }
    v.sort_by_key(SimFault::at);
    v
}

/// Runs `s` in the current madsim runtime under `faults`, then waits for
/// every node to see the job end.
pub async fn run_with_faults(s: &Scenario, faults: &[SimFault]) -> Outcome {
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
    let results = Results::default();
    let events = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let log = Arc::new(std::sync::Mutex::new(Vec::new()));
    let origin = madsim::time::Instant::now();
    let n = u64::from(s.tasks * (1 + s.standbys) + s.spares);
    let mut joins = Vec::new();
    let mut machines = Vec::new();
    for id in 1..=n {
        let (sc, r, evs, lg) = (s.clone(), results.clone(), events.clone(), log.clone());
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Result<NodeExit, String>>();
        let machine = handle
            .create_node()
            .name(format!("node-{id}"))
            .ip(ip(id + 1))
            .init(move || {
                let (sc, r, tx, evs, lg) =
                    (sc.clone(), r.clone(), tx.clone(), evs.clone(), lg.clone());
                async move {
                    let (etx, mut erx) = tokio::sync::mpsc::unbounded_channel();
                    tokio::spawn(async move {
                        while let Some((node, ev)) = erx.recv().await {
                            let now = madsim::time::Instant::now();
                            if let Ok(mut v) = evs.lock() {
                                v.push(format!("{now:?} {node} {ev:?}"));
                            }
                            if let Ok(mut v) = lg.lock() {
                                v.push((now.duration_since(origin), node, ev));
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
    let net = madsim::net::NetSim::current();
    let machine = |n: u64| {
        machines
            .get(usize::try_from(n.saturating_sub(1)).unwrap_or(usize::MAX))
            .map(|m| m.id())
    };
    let mut heals: Vec<(Duration, Box<dyn FnOnce() + Send>)> = Vec::new();
    // A machine must be killed before it is restarted, once: a crash of a
    // machine that is already down is skipped.
    let mut down_until: std::collections::BTreeMap<u64, Duration> = Default::default();
    let faults: Vec<&SimFault> = faults
        .iter()
        .filter(|f| match f {
            SimFault::Crash { node, at, down } => {
                let free = down_until.get(node).map_or(true, |until| *at > *until);
                if free {
                    down_until.insert(*node, *at + *down);
                }
                free
            }
            _ => true,
        })
        .collect();
    for f in faults {
        // Heal whatever is due before this fault.
        heals.sort_by_key(|(t, _)| *t);
        while heals.first().is_some_and(|(t, _)| *t <= f.at()) {
            let (t, heal) = heals.remove(0);
            madsim::time::sleep_until(start + t).await;
            heal();
        }
        madsim::time::sleep_until(start + f.at()).await;
        match f.clone() {
            SimFault::Crash { node, at, down } => {
                if let Some(id) = machine(node) {
                    handle.kill(id);
                    let h = handle.clone();
                    heals.push((at + down, Box::new(move || h.restart(id))));
                }
            }
            SimFault::Partition { node, at, dur } => {
                if let Some(id) = machine(node) {
                    net.clog_node(id);
                    let n2 = net.clone();
                    heals.push((at + dur, Box::new(move || n2.unclog_node(id))));
                }
            }
            SimFault::OneWay { from, to, at, dur } => {
                if let (Some(a), Some(b)) = (machine(from), machine(to)) {
                    if a != b {
                        net.clog_link(a, b);
                        let n2 = net.clone();
                        heals.push((at + dur, Box::new(move || n2.unclog_link(a, b))));
                    }
                }
            }
            SimFault::StoreOutage { at, dur } => {
                let id = store_machine.id();
                net.clog_node(id);
                let n2 = net.clone();
                heals.push((at + dur, Box::new(move || n2.unclog_node(id))));
            }
        }
    }
    heals.sort_by_key(|(t, _)| *t);
    for (t, heal) in heals {
        madsim::time::sleep_until(start + t).await;
        heal();
    }
    let mut exits = Vec::new();
    for (id, mut rx) in joins {
        // A crashed machine's first run never reports; its restart does.
        let exit = madsim::time::timeout(Duration::from_secs(120), rx.recv()).await;
        exits.push((id, exit.ok().flatten().map(|e| format!("{e:?}"))));
    }
    let log = log.lock().map(|v| v.clone()).unwrap_or_default();
    let events = events.lock().map(|v| v.clone()).unwrap_or_default();
    Outcome {
        results: results.all(),
        exits,
        elapsed: start.elapsed(),
        events,
        log,
    }
}
