//! The tree aggregation (the original taskgraph's regression application)
//! on the real runtime: every node a tokio task with its own TCP listener on
//! loopback, coordinated by the embedded store (or etcd), while a chaos loop
//! kills and restarts random nodes, task 0's primary included.
//!
//! Task 0 sets `param = epoch`; every task fetches the param from its
//! parent, adds `param × id` to its children's gradients and hands the sum
//! to its parent; task 0 checks that epoch `e` gives `e × Σ ids`, then moves
//! to the next epoch.
//!
//! ```text
//! cargo run --release --example tree_sum
//! cargo run --release --example tree_sum -- --tasks 31 --kill-every 500 --epochs 20
//! cargo run --release --features etcd --example tree_sum -- --etcd http://127.0.0.1:2379
//! # one node per process (run several, same --etcd and --job); SIGTERM
//! # stops a node cleanly (it revokes its lease, so a successor takes over
//! # at once):
//! cargo run --release --features etcd --example tree_sum -- --node 3 --etcd http://127.0.0.1:2379
//! # with TASKGRAPH_JOB_SECRET set (the same in every process), peers that
//! # do not know the secret are refused:
//! TASKGRAPH_JOB_SECRET=… cargo run --release --example tree_sum
//! ```

// A driver reads the wall clock for its own reports; the core never does.
#![allow(clippy::disallowed_methods)]

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant as WallClock, SystemTime, UNIX_EPOCH};
use taskgraph::runtime::{spawn_node, MemStoreServer, NodeExit, NodeHandle, NodeOptions, Store};
use taskgraph::testkit::tree_sum::{Results, TreeSumBuilder};
use taskgraph::testkit::Rng;
use taskgraph::{Event, NodeConfig, NodeId, TaskId, TreeTopology};
use tokio::sync::mpsc;

#[derive(Clone, Debug)]
struct Args {
    tasks: u32,
    fanout: u32,
    standbys: u32,
    spares: u32,
    epochs: u64,
    kill_every: u64,
    etcd: Option<Vec<String>>,
    node: Option<u64>,
    listen: String,
    job: String,
    seed: u64,
    ttl: u64,
    epoch_ms: u64,
    metrics_addr: Option<String>,
}

const USAGE: &str =
    "usage: tree_sum [--tasks N] [--fanout F] [--standbys R] [--spares S] [--epochs E]
                [--kill-every MS (0: no chaos)] [--etcd URL[,URL...]] [--node ID [--listen ADDR]]
                [--job NAME] [--seed S] [--ttl SECS] [--epoch-ms MS (pause between epochs)]
                [--metrics-addr ADDR (serve Prometheus metrics; needs --features prometheus)]";

fn parse() -> Result<Args, String> {
    let mut a = Args {
        tasks: 15,
        fanout: 2,
        standbys: 1,
        spares: 2,
        epochs: 10,
        kill_every: 1000,
        etcd: None,
        node: None,
        listen: "127.0.0.1:0".into(),
        job: "tree_sum".into(),
        seed: 1,
        ttl: 2,
        epoch_ms: 300,
        metrics_addr: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--help" || flag == "-h" {
            return Err(USAGE.into());
        }
        let value = it
            .next()
            .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
        let num = |v: &str| {
            v.parse::<u64>()
                .map_err(|_| format!("{flag}: not a number: {v}"))
        };
        match flag.as_str() {
            "--tasks" => a.tasks = num(&value)? as u32,
            "--fanout" => a.fanout = num(&value)? as u32,
            "--standbys" => a.standbys = num(&value)? as u32,
            "--spares" => a.spares = num(&value)? as u32,
            "--epochs" => a.epochs = num(&value)?,
            "--kill-every" => a.kill_every = num(&value)?,
            "--etcd" => a.etcd = Some(value.split(',').map(str::to_string).collect()),
            "--node" => a.node = Some(num(&value)?),
            "--listen" => a.listen = value,
            "--job" => a.job = value,
            "--seed" => a.seed = num(&value)?,
            "--ttl" => a.ttl = num(&value)?,
            "--epoch-ms" => a.epoch_ms = num(&value)?,
            "--metrics-addr" => a.metrics_addr = Some(value),
            _ => return Err(format!("unknown flag {flag}\n{USAGE}")),
        }
    }
    Ok(a)
}

fn unix_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}

async fn connect_store(args: &Args) -> Result<Arc<dyn Store>, String> {
    match &args.etcd {
        None => Ok(Arc::new(MemStoreServer::new())),
        #[cfg(feature = "etcd")]
        Some(endpoints) => {
            let store =
                taskgraph::runtime::store::etcd::EtcdStore::connect(endpoints, Default::default())
                    .await
                    .map_err(|e| format!("cannot reach etcd at {}: {e}", endpoints.join(",")))?;
            Ok(Arc::new(store))
        }
        #[cfg(not(feature = "etcd"))]
        Some(_) => Err(
            "--etcd needs the etcd backend: cargo run --release --features etcd --example tree_sum"
                .into(),
        ),
    }
}

fn options(args: &Args, id: u64) -> Result<NodeOptions, String> {
    let mut cfg = NodeConfig::new(NodeId(id), args.job.clone(), "", args.tasks, args.standbys);
    cfg.ttl = Duration::from_secs(args.ttl);
    cfg.step_down_margin = Duration::from_millis(300);
    cfg.renew_interval = (cfg.ttl - cfg.step_down_margin) / 3;
    cfg.validate().map_err(|e| e.to_string())?;
    let listen = args
        .listen
        .parse()
        .map_err(|e| format!("--listen {}: {e}", args.listen))?;
    let mut opts = NodeOptions::new(cfg, listen);
    // Nodes of one job that share a secret refuse peers that do not know it.
    use taskgraph::runtime::auth::JobSecret;
    opts.secret =
        JobSecret::from_env(JobSecret::ENV).map_err(|e| format!("{}: {e}", JobSecret::ENV))?;
    Ok(opts)
}

async fn start(
    args: &Args,
    id: u64,
    store: &Arc<dyn Store>,
    results: &Results,
    events: &mpsc::UnboundedSender<(NodeId, Event)>,
) -> Result<NodeHandle, String> {
    let topo = TreeTopology::new(args.fanout, args.tasks).map_err(|e| e.to_string())?;
    let builder = TreeSumBuilder::new(args.tasks, args.epochs, results.clone())
        .with_pace(Duration::from_millis(args.epoch_ms));
    spawn_node(
        options(args, id)?,
        store.clone(),
        Arc::new(topo),
        Box::new(builder),
        Some(events.clone()),
    )
    .await
    .map_err(|e| e.to_string())
}

fn report(results: &Results, epochs: u64) -> bool {
    let all = results.all();
    let mut ok = true;
    for e in 1..=epochs {
        let got: Vec<_> = all.iter().filter(|r| r.epoch.0 == e).collect();
        let right = !got.is_empty() && got.iter().all(|r| r.total == r.expected);
        ok &= right;
        if got.is_empty() {
            println!("epoch {e:>3}: never verified");
        }
    }
    if all.iter().any(|r| r.total != r.expected) {
        ok = false;
        for r in all.iter().filter(|r| r.total != r.expected) {
            println!(
                "epoch {:>3}: WRONG total {} (expected {})",
                r.epoch.0, r.total, r.expected
            );
        }
    }
    ok
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    if let Some(addr) = &args.metrics_addr {
        if let Err(e) = serve_metrics(addr) {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    }
    let store = match connect_store(&args).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    match args.node {
        Some(id) => single_node(&args, id, store).await,
        None => all_in_one(&args, store).await,
    }
}

/// Serves this process's metrics for Prometheus at `http://ADDR/metrics`.
#[cfg(feature = "prometheus")]
fn serve_metrics(addr: &str) -> Result<(), String> {
    let addr = addr
        .parse()
        .map_err(|e| format!("--metrics-addr {addr}: {e}"))?;
    taskgraph::runtime::telemetry::install_prometheus(addr)
}

#[cfg(not(feature = "prometheus"))]
fn serve_metrics(_addr: &str) -> Result<(), String> {
    Err("--metrics-addr needs the Prometheus exporter: \
         cargo run --release --features prometheus --example tree_sum"
        .into())
}

/// One node of a multi-process job: prints what a test harness needs.
async fn single_node(args: &Args, id: u64, store: Arc<dyn Store>) -> ExitCode {
    let results = Results::default();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let handle = match start(args, id, &store, &results, &tx).await {
        Ok(h) => h,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("LISTEN {} {}", id, handle.addr);
    let mut join = handle.join;
    // SIGTERM stops this node cleanly: it gives up its roles and revokes its
    // lease (S6), so a successor takes over at once.
    let mut stop = Some(handle.shutdown);
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: cannot watch for SIGTERM: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut printed = 0;
    let exit = loop {
        tokio::select! {
            r = &mut join => break r,
            Some(()) = term.recv(), if stop.is_some() => {
                if let Some(s) = stop.take() {
                    s.stop();
                }
            }
            Some((node, ev)) = rx.recv() => {
                // Every event, for the harness that runs this process.
                println!("EVENT {} {} {:?}", unix_ms(), node.0, ev);
                let all = results.all();
                for r in &all[printed..] {
                    println!("RESULT {} {} {}", r.epoch.0, r.total, r.expected);
                }
                printed = all.len();
            }
        }
    };
    for r in &results.all()[printed..] {
        println!("RESULT {} {} {}", r.epoch.0, r.total, r.expected);
    }
    match exit {
        Ok(Ok(NodeExit::JobEnded(reason))) => {
            println!("EXIT {reason}");
            if reason.is_completed() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        other => {
            println!("EXIT {other:?}");
            ExitCode::FAILURE
        }
    }
}

/// Every node in this process, with a chaos loop.
async fn all_in_one(args: &Args, store: Arc<dyn Store>) -> ExitCode {
    let n = args.tasks * (1 + args.standbys) + args.spares;
    println!(
        "tree_sum: {} tasks (fanout {}), {} standby(s) each, {} spare(s): {n} nodes on loopback, {} store; {} epochs{}",
        args.tasks,
        args.fanout,
        args.standbys,
        args.spares,
        if args.etcd.is_some() { "etcd" } else { "embedded" },
        args.epochs,
        if args.kill_every > 0 { format!(", a node killed every {} ms", args.kill_every) } else { String::new() }
    );
    let results = Results::default();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut nodes: BTreeMap<u64, NodeHandle> = BTreeMap::new();
    for id in 1..=u64::from(n) {
        match start(args, id, &store, &results, &tx).await {
            Ok(h) => {
                nodes.insert(id, h);
            }
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    let mut rng = Rng::new(args.seed);
    let started = WallClock::now();
    let mut chaos = tokio::time::interval(Duration::from_millis(args.kill_every.max(1)));
    chaos.tick().await;
    let mut restarts: Vec<(tokio::time::Instant, u64)> = Vec::new();
    let (mut kills, mut failovers, mut died_seen, mut restarted_seen) = (0u64, 0u64, 0u64, 0u64);
    let mut primary_of: BTreeMap<TaskId, NodeId> = BTreeMap::new();
    let mut last_epoch = (0u64, WallClock::now());
    let mut ended = 0usize;
    loop {
        tokio::select! {
            Some((node, ev)) = rx.recv() => match ev {
                Event::BecamePrimary { task, promoted, .. } => {
                    let replaced = primary_of.insert(task, node).is_some();
                    failovers += u64::from(replaced || promoted);
                }
                Event::NeighbourDied { .. } => died_seen += 1,
                Event::NeighbourRestarted { .. } => restarted_seen += 1,
                Event::EpochChanged { task, epoch } if task.0 == 0 && epoch.0 > last_epoch.0 => {
                    println!(
                        "epoch {:>3} after {:>6.0} ms | kills {kills:>3}, failovers {failovers:>3}, deaths seen {died_seen:>3}, restarts seen {restarted_seen:>3}",
                        epoch.0,
                        last_epoch.1.elapsed().as_secs_f64() * 1000.0,
                    );
                    last_epoch = (epoch.0, WallClock::now());
                }
                Event::Stopped { reason: Some(_) } => {
                    ended += 1;
                    if ended == nodes.len() {
                        break;
                    }
                }
                _ => {}
            },
            _ = chaos.tick(), if args.kill_every > 0 => {
                // Kill task 0's primary a third of the time, else any node.
                let victim = if rng.chance(0.33) {
                    primary_of.get(&TaskId(0)).map(|n| n.0)
                } else {
                    Some(rng.range(1, u64::from(n) + 1))
                };
                if let Some(v) = victim.filter(|v| nodes.contains_key(v)) {
                    if let Some(h) = nodes.remove(&v) {
                        h.kill.kill();
                        kills += 1;
                        restarts.push((tokio::time::Instant::now() + Duration::from_secs(1), v));
                    }
                }
                let now = tokio::time::Instant::now();
                let due: Vec<u64> = restarts.iter().filter(|(t, _)| *t <= now).map(|(_, v)| *v).collect();
                restarts.retain(|(t, _)| *t > now);
                for v in due {
                    match start(args, v, &store, &results, &tx).await {
                        Ok(h) => {
                            nodes.insert(v, h);
                        }
                        Err(e) => eprintln!("restart of node {v} failed: {e}"),
                    }
                }
            }
        }
        if nodes.values().all(|h| h.join.is_finished()) {
            break;
        }
    }
    let wall = started.elapsed();
    let ok = report(&results, args.epochs);
    println!(
        "{} epochs in {:.1} s: {kills} kills, {failovers} failovers, {died_seen} deaths and {restarted_seen} restarts seen by neighbours",
        args.epochs,
        wall.as_secs_f64()
    );
    if ok {
        println!("every epoch's answer verified (epoch × Σ ids)");
        ExitCode::SUCCESS
    } else {
        println!("NOT every epoch's answer was verified");
        ExitCode::FAILURE
    }
}
