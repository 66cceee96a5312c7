//! Epoch rate: a tree aggregation on taskgraph against the same rounds over
//! plain TCP.

use crate::{cluster, median, Args, Failure};
use bytes::Bytes;
use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use taskgraph_core::{Context, Epoch, Task, TaskBuilder, TaskId, Topology, TreeTopology};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Shape of one measurement.
#[derive(Clone, Debug)]
struct Shape {
    tasks: u32,
    fanout: u32,
    standbys: u32,
    epochs: u64,
    meta: usize,
    /// etcd endpoint to coordinate through (default: the embedded store).
    etcd: Option<String>,
    /// Lease TTL of every node.
    ttl: Duration,
    /// Counts the sessions nodes lost, if given.
    sessions_lost: Option<Arc<std::sync::atomic::AtomicU64>>,
    /// A run not finished by then fails.
    limit: Duration,
}

/// Every task flags its parent with `meta` once all its children have
/// flagged it in this epoch (leaves at once); the root then advances the
/// epoch, and ends the job after `last`.
struct Agg {
    meta: Bytes,
    last: u64,
    pending: BTreeSet<TaskId>,
    /// When the root saw each epoch begin, and the store's counts then.
    marks: Marks,
    counts: Arc<cluster::OpCounts>,
}

type Marks = Arc<Mutex<Vec<(Instant, (u64, u64, u64))>>>;

impl Agg {
    fn up(&mut self, ctx: &mut Context) {
        if ctx.task() == TaskId(0) {
            ctx.advance_epoch();
        } else {
            if let Err(e) = ctx.flag_meta_to_parents(self.meta.clone()) {
                ctx.fail_job(format!("flag_meta_to_parents was refused: {e}"));
            }
        }
    }
}

impl Task for Agg {
    fn epoch_changed(&mut self, ctx: &mut Context, epoch: Epoch) {
        if !ctx.is_primary() {
            return;
        }
        if ctx.task() == TaskId(0) {
            if let Ok(mut m) = self.marks.lock() {
                m.push((Instant::now(), self.counts.snapshot()));
            }
            if epoch.0 >= self.last {
                ctx.exit_job("done");
                return;
            }
        }
        self.pending = ctx.children().iter().copied().collect();
        if self.pending.is_empty() {
            self.up(ctx);
        }
    }

    fn child_meta_ready(&mut self, ctx: &mut Context, child: TaskId, _meta: Bytes) {
        if self.pending.remove(&child) && self.pending.is_empty() {
            self.up(ctx);
        }
    }
}

struct AggBuilder {
    meta: Bytes,
    last: u64,
    marks: Marks,
    counts: Arc<cluster::OpCounts>,
}

impl TaskBuilder for AggBuilder {
    fn build(&mut self, _task: TaskId) -> Box<dyn Task> {
        Box::new(Agg {
            meta: self.meta.clone(),
            last: self.last,
            pending: BTreeSet::new(),
            marks: self.marks.clone(),
            counts: self.counts.clone(),
        })
    }
}

/// One taskgraph run: epochs per second and store writes per epoch over
/// the epochs after the first tenth (the tail of the setup, standbys still
/// claiming, is not steady state), and lease keep-alives per second over
/// the whole run.
async fn taskgraph_run(s: &Shape, run: u64) -> Result<(f64, f64, f64), Failure> {
    let marks: Marks = Arc::new(Mutex::new(Vec::new()));
    let counts = Arc::new(cluster::OpCounts::default());
    let meta = Bytes::from(vec![7u8; s.meta]);
    let (m, c) = (marks.clone(), counts.clone());
    let backend = backend(s).await?;
    let last = s.epochs;
    let began = Instant::now();
    let layout = cluster::Layout {
        ttl: s.ttl,
        sessions_lost: s.sessions_lost.clone(),
        ..cluster::Layout::new(s.tasks, s.fanout, s.standbys)
    };
    let job = cluster::start(
        &format!("epochs-{run}-{}", std::process::id()),
        &layout,
        counts,
        backend,
        move || {
            Box::new(AggBuilder {
                meta: meta.clone(),
                last,
                marks: m.clone(),
                counts: c.clone(),
            })
        },
    )
    .await
    .map_err(Failure::Run)?;
    let counts = job.counts.clone();
    job.join(s.limit).await.map_err(Failure::Run)?;
    // Keep-alives go by time, not by epoch: over the whole run.
    let keepalives = counts.snapshot().1 as f64 / began.elapsed().as_secs_f64().max(1e-9);
    let m = marks.lock().map(|m| m.clone()).unwrap_or_default();
    let skip = m.len() / 10;
    let (Some(first), Some(last)) = (m.get(skip), m.last()) else {
        return Err(Failure::Run("no epochs seen".into()));
    };
    let n = (m.len() - 1 - skip) as f64;
    if n < 1.0 {
        return Err(Failure::Run("too few epochs to measure".into()));
    }
    let secs = last.0.duration_since(first.0).as_secs_f64().max(1e-9);
    Ok((
        n / secs,
        last.1 .0.saturating_sub(first.1 .0) as f64 / n,
        keepalives,
    ))
}

/// The store the job coordinates through: etcd if asked, else the embedded
/// one (`None`).
#[cfg(feature = "etcd")]
async fn backend(s: &Shape) -> Result<Option<Arc<dyn taskgraph_runtime::Store>>, Failure> {
    match &s.etcd {
        None => Ok(None),
        Some(endpoint) => {
            let store = taskgraph_runtime::EtcdStore::connect(
                std::slice::from_ref(endpoint),
                taskgraph_runtime::EtcdOptions::default(),
            )
            .await
            .map_err(|e| Failure::Run(format!("etcd at {endpoint}: {e}")))?;
            Ok(Some(Arc::new(store)))
        }
    }
}

#[cfg(not(feature = "etcd"))]
async fn backend(s: &Shape) -> Result<Option<Arc<dyn taskgraph_runtime::Store>>, Failure> {
    match &s.etcd {
        None => Ok(None),
        Some(_) => Err(Failure::Usage(
            "--store etcd needs the etcd feature (`cargo xtask bench` builds with it)".into(),
        )),
    }
}

/// The bound a store puts on the epoch rate: `n` compare-and-swaps of one
/// key in a row, each waiting for the one before, as the root's epoch
/// advance does. Compare-and-swaps per second.
async fn cas_run(store: &dyn taskgraph_runtime::Store, n: u64) -> Result<f64, Failure> {
    use taskgraph_core::store::{Compare, StoreOp, StoreResponse, TxnOp};
    let key = format!("bench-cas-{}", std::process::id());
    let put = |v: u64| TxnOp::Put {
        key: key.clone(),
        value: Bytes::from(v.to_be_bytes().to_vec()),
        lease: 0,
    };
    let fail = |e| Failure::Run(format!("compare-and-swap: {e}"));
    let first = store
        .execute(StoreOp::Txn {
            compares: vec![],
            success: vec![put(0)],
            failure: vec![],
        })
        .await
        .map_err(fail)?;
    let StoreResponse::Txn { mut revision, .. } = first else {
        return Err(Failure::Run(format!("unexpected answer {first:?}")));
    };
    let began = Instant::now();
    for i in 1..=n {
        let r = store
            .execute(StoreOp::Txn {
                compares: vec![Compare::mod_revision_eq(key.clone(), revision)],
                success: vec![put(i)],
                failure: vec![],
            })
            .await
            .map_err(fail)?;
        match r {
            StoreResponse::Txn {
                succeeded: true,
                revision: next,
                ..
            } => revision = next,
            other => {
                return Err(Failure::Run(format!(
                    "compare-and-swap {i} failed: {other:?}"
                )))
            }
        }
    }
    Ok(n as f64 / began.elapsed().as_secs_f64().max(1e-9))
}

/// The same rounds over plain TCP: the root sends "go" down the tree, every
/// task sends `meta` bytes up once its children have; no store, no
/// failover. Epochs per second.
async fn raw_run(s: &Shape) -> Result<f64, Failure> {
    let topo = TreeTopology::new(s.fanout, s.tasks).map_err(|e| Failure::Run(e.to_string()))?;
    let io = |e: std::io::Error| Failure::Run(format!("raw TCP: {e}"));
    let mut listeners = Vec::new();
    let mut addrs = Vec::new();
    for _ in 0..s.tasks {
        let l = TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
            .await
            .map_err(io)?;
        addrs.push(l.local_addr().map_err(io)?);
        listeners.push(l);
    }
    let mut tasks = Vec::new();
    for (i, listener) in listeners.into_iter().enumerate() {
        let t = TaskId(i as u32);
        let children = topo.children(t, Epoch(0));
        let parent = topo.parents(t, Epoch(0)).first().copied();
        let parent_addr = parent.map(|p| addrs[p.index()]);
        let (epochs, meta) = (s.epochs, s.meta);
        tasks.push(tokio::spawn(async move {
            raw_task(listener, children.len(), parent_addr, epochs, meta).await
        }));
    }
    let started = Instant::now();
    let mut elapsed = None;
    for (i, t) in tasks.into_iter().enumerate() {
        let r = t
            .await
            .map_err(|e| Failure::Run(e.to_string()))?
            .map_err(io)?;
        if i == 0 {
            elapsed = r;
        }
    }
    let d = elapsed.unwrap_or_else(|| started.elapsed());
    Ok(s.epochs as f64 / d.as_secs_f64().max(1e-9))
}

/// One task of the raw tree. The root returns the time its rounds took.
async fn raw_task(
    listener: TcpListener,
    n_children: usize,
    parent: Option<SocketAddr>,
    epochs: u64,
    meta: usize,
) -> std::io::Result<Option<Duration>> {
    let mut up = match parent {
        Some(a) => {
            let s = TcpStream::connect(a).await?;
            s.set_nodelay(true)?;
            Some(s)
        }
        None => None,
    };
    let mut children = Vec::new();
    for _ in 0..n_children {
        let (s, _) = listener.accept().await?;
        s.set_nodelay(true)?;
        children.push(s);
    }
    let payload = vec![7u8; meta];
    let mut buf = vec![0u8; meta];
    let started = Instant::now();
    for e in 1..=epochs {
        // Down: the root starts the round; others wait for it.
        let mut go = e.to_le_bytes();
        if let Some(p) = up.as_mut() {
            p.read_exact(&mut go).await?;
        }
        for c in children.iter_mut() {
            c.write_all(&go).await?;
        }
        // Up: every child's payload, then ours.
        for c in children.iter_mut() {
            c.read_exact(&mut buf).await?;
        }
        if let Some(p) = up.as_mut() {
            p.write_all(&payload).await?;
        }
    }
    Ok(parent.is_none().then(|| started.elapsed()))
}

/// `taskgraph-bench epochs`.
pub async fn run(args: &Args) -> Result<(), Failure> {
    args.only(&[
        "tasks", "fanout", "standbys", "epochs", "meta", "runs", "store", "ttl",
    ])?;
    let store = args.get("store").unwrap_or("embedded");
    // A real etcd for the job to coordinate through, started here.
    let etcd = match store {
        "embedded" => None,
        "etcd" => Some(tokio::task::block_in_place(crate::failover::Etcd::start)?),
        other => {
            return Err(Failure::Usage(format!(
                "--store {other:?}: embedded or etcd"
            )))
        }
    };
    let s = Shape {
        tasks: u32::try_from(args.num("tasks", 15)?).map_err(|e| e.to_string())?,
        fanout: u32::try_from(args.num("fanout", 2)?).map_err(|e| e.to_string())?,
        standbys: u32::try_from(args.num("standbys", 1)?).map_err(|e| e.to_string())?,
        epochs: args.num("epochs", 3000)?,
        meta: usize::try_from(args.num("meta", 1024)?).map_err(|e| e.to_string())?,
        etcd: etcd.as_ref().map(|e| e.endpoint.clone()),
        ttl: Duration::from_secs(args.num("ttl", 2)?.max(1)),
        sessions_lost: None,
        limit: Duration::from_secs(300),
    };
    let runs = args.num("runs", 3)?.max(1);
    if s.tasks == 0 || s.fanout == 0 || s.epochs < 2 {
        return Err(Failure::Usage(
            "--tasks and --fanout must be at least 1, --epochs at least 2".into(),
        ));
    }
    println!(
        "epochs: tree of {} tasks (fanout {}), {} standby each, {} B meta, {} epochs, {runs} runs (median), loopback, {} store",
        s.tasks,
        s.fanout,
        s.standbys,
        s.meta,
        s.epochs,
        if s.etcd.is_some() { "real etcd" } else { "embedded" }
    );
    let (mut tg, mut raw, mut writes, mut keepalives) = (vec![], vec![], vec![], vec![]);
    for run in 0..runs {
        // Alternate, so that drift in the machine's load hits both alike.
        let (rate, w, k) = taskgraph_run(&s, run).await?;
        tg.push(rate);
        writes.push(w);
        keepalives.push(k);
        raw.push(raw_run(&s).await?);
    }
    let (tg, raw) = (median(&mut tg), median(&mut raw));
    // With etcd, the store's own compare-and-swap rate: an epoch needs one.
    let cas = match backend(&s).await? {
        Some(store) if s.etcd.is_some() => Some(cas_run(store.as_ref(), s.epochs).await?),
        _ => None,
    };
    println!("| system | epochs/s | store writes/epoch | lease keep-alives/s |");
    println!("|---|---|---|---|");
    println!(
        "| taskgraph ({}) | {tg:.0} | {:.2} | {:.1} |",
        if s.etcd.is_some() {
            "etcd"
        } else {
            "embedded store"
        },
        median(&mut writes),
        median(&mut keepalives)
    );
    println!("| raw tokio TCP tree (no store, no failover) | {raw:.0} | 0 | 0 |");
    if let Some(cas) = cas {
        println!(
            "| etcd alone: compare-and-swaps of one key in a row, per s | {cas:.0} | 1.00 | 0 |"
        );
    }
    println!("ratio taskgraph / raw TCP: {:.2}", tg / raw.max(1e-9));
    if let Some(cas) = cas {
        println!(
            "ratio taskgraph / etcd's compare-and-swap rate (the bound of one CAS per epoch): {:.2}",
            tg / cas.max(1e-9)
        );
    }
    drop(etcd);
    Ok(())
}

/// This process's resident set size in bytes (Linux), if known.
fn rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// `taskgraph-bench scale`: the aggregation with many tasks in one process
/// (every node its own TCP listener, one embedded store): epoch time and
/// memory per task.
pub async fn scale(args: &Args) -> Result<(), Failure> {
    args.only(&["epochs", "standbys", "ttl", "tasks", "limit"])?;
    let limit = Duration::from_secs(args.num("limit", 300)?.max(1));
    let epochs = args.num("epochs", 100)?.max(20);
    let standbys = u32::try_from(args.num("standbys", 1)?).map_err(|e| e.to_string())?;
    let ttl = Duration::from_secs(args.num("ttl", 2)?.max(1));
    let sizes: Vec<u32> = match args.get("tasks") {
        Some(list) => list
            .split(',')
            .map(|t| {
                t.trim()
                    .parse::<u32>()
                    .map_err(|e| format!("--tasks {list}: {e}"))
            })
            .collect::<Result<_, _>>()?,
        None => vec![15, 255, 1023],
    };
    println!(
        "scale: tree aggregation (fanout 2, {standbys} standby each, 1 KiB meta), {epochs} epochs, one process, loopback, embedded store"
    );
    println!("| tasks | nodes | TTL | epochs/s | ms per epoch | store writes/epoch | peak RSS growth per task | sessions lost |");
    println!("|---|---|---|---|---|---|---|---|");
    for tasks in sizes {
        let lost = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let before = rss().unwrap_or(0);
        let peak = Arc::new(std::sync::atomic::AtomicU64::new(before));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (p, st) = (peak.clone(), stop.clone());
        let sampler = tokio::spawn(async move {
            while !st.load(std::sync::atomic::Ordering::Relaxed) {
                if let Some(r) = rss() {
                    p.fetch_max(r, std::sync::atomic::Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        let s = Shape {
            tasks,
            fanout: 2,
            standbys,
            epochs,
            meta: 1024,
            etcd: None,
            ttl,
            sessions_lost: Some(lost.clone()),
            limit,
        };
        let r = taskgraph_run(&s, u64::from(tasks) + 1000).await;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = sampler.await;
        let (rate, writes, _) = match r {
            Ok(x) => x,
            Err(Failure::Run(e)) => {
                println!(
                    "| {tasks} | {} | {ttl:?} | did not finish: {e} | | | | {} |",
                    u64::from(tasks) * u64::from(1 + standbys),
                    lost.load(std::sync::atomic::Ordering::Relaxed)
                );
                continue;
            }
            Err(e) => return Err(e),
        };
        let growth = peak
            .load(std::sync::atomic::Ordering::Relaxed)
            .saturating_sub(before);
        println!(
            "| {tasks} | {} | {ttl:?} | {rate:.0} | {:.2} | {writes:.2} | {:.0} KiB | {} |",
            u64::from(tasks) * u64::from(1 + standbys),
            1000.0 / rate.max(1e-9),
            growth as f64 / 1024.0 / f64::from(tasks),
            lost.load(std::sync::atomic::Ordering::Relaxed)
        );
    }
    Ok(())
}
