//! Failover latency on a real etcd (TTL 2 s): SIGKILL of a primary process
//! until its neighbours hear of the death, its standby becomes primary, and
//! the neighbours hear of the restart; SIGTERM (a clean stop, S6) until the
//! standby becomes primary; SIGSTOP (a frozen process, which like a
//! partitioned node gives no evidence of death) until the standby becomes
//! primary. Baseline in the same run: etcd's own lock, a
//! holder `etcdctl lock --ttl 2` killed with SIGKILL while a second one
//! waits, until the waiter runs its command.

use crate::{Args, Failure};
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

fn unix_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}

fn free_port() -> Result<u16, Failure> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| Failure::Run(format!("no free port: {e}")))
}

/// A child process whose stdout lines are collected, killed when dropped.
struct Proc {
    child: Child,
    lines: Arc<Mutex<Vec<(u128, String)>>>,
}

impl Proc {
    fn spawn(cmd: &mut Command) -> Result<Proc, Failure> {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .stdin(Stdio::null())
            .spawn()
            .map_err(|e| Failure::Run(format!("cannot start {cmd:?}: {e}")))?;
        let lines = Arc::new(Mutex::new(Vec::new()));
        if let Some(out) = child.stdout.take() {
            let l = lines.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    if let Ok(mut v) = l.lock() {
                        v.push((unix_ms(), line));
                    }
                }
            });
        }
        Ok(Proc { child, lines })
    }

    fn lines(&self) -> Vec<(u128, String)> {
        self.lines.lock().map(|v| v.clone()).unwrap_or_default()
    }

    /// Sends `sig` (e.g. "-KILL") to the process, or with `group` to its
    /// whole process group.
    fn signal(&self, sig: &str, group: bool) {
        let target = if group {
            format!("-{}", self.child.id())
        } else {
            self.child.id().to_string()
        };
        let _ = Command::new("kill")
            .args([sig, "--", &target])
            .stderr(Stdio::null())
            .status();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A single-member etcd on loopback with its data in a scratch directory,
/// killed when dropped.
pub struct Etcd {
    /// Its client URL.
    pub endpoint: String,
    dir: PathBuf,
    _proc: Proc,
}

impl Etcd {
    /// Starts one and waits until it is healthy.
    pub fn start() -> Result<Etcd, Failure> {
        let (client, peer) = (free_port()?, free_port()?);
        let dir = std::env::temp_dir().join(format!("taskgraph-bench-etcd-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let endpoint = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let proc = Proc::spawn(
            Command::new("etcd")
                .arg("--data-dir")
                .arg(dir.join("data"))
                .args(["--listen-client-urls", &endpoint])
                .args(["--advertise-client-urls", &endpoint])
                .args(["--listen-peer-urls", &peer_url])
                .args(["--initial-advertise-peer-urls", &peer_url])
                .args(["--initial-cluster", &format!("default={peer_url}")])
                .args(["--logger=zap", "--log-outputs=stderr"]),
        )
        .map_err(|e| match e {
            Failure::Run(m) => Failure::Run(format!(
                "{m} (the failover benchmark needs etcd: Debian etcd-server; `cargo xtask bench` installs it)"
            )),
            other => other,
        })?;
        let etcd = Etcd {
            endpoint,
            dir,
            _proc: proc,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            let ok = Command::new("etcdctl")
                .args(["--endpoints", &etcd.endpoint, "endpoint", "health"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if ok {
                return Ok(etcd);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(Failure::Run("etcd did not become healthy in 30 s".into()))
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Quantile `q` of `v` (sorted in place), in ms.
fn quantile(v: &mut [u128], q: f64) -> u128 {
    v.sort_unstable();
    if v.is_empty() {
        return 0;
    }
    let i = ((v.len() - 1) as f64 * q).round() as usize;
    v[i.min(v.len() - 1)]
}

const TASKS: u32 = 7;

/// The taskgraph side: one `tree_sum --node` process per node.
struct Job {
    exe: PathBuf,
    endpoint: String,
    job: String,
    procs: Vec<Option<Proc>>,
}

impl Job {
    fn spawn_node(&self, id: u64) -> Result<Proc, Failure> {
        Proc::spawn(
            Command::new(&self.exe)
                .args(["--node", &id.to_string(), "--etcd", &self.endpoint])
                .args(["--job", &self.job, "--tasks", &TASKS.to_string()])
                .args(["--standbys", "1", "--spares", "2", "--ttl", "2"])
                .args(["--epochs", "1000000", "--epoch-ms", "100"])
                .env("RUST_LOG", "error"),
        )
    }

    /// Every EVENT line of every process: (unix ms, node, event).
    fn events(&self) -> Vec<(u128, u64, String)> {
        let mut v: Vec<(u128, u64, String)> = self
            .procs
            .iter()
            .flatten()
            .flat_map(|p| p.lines())
            .filter_map(|(_, l)| {
                let mut it = l.splitn(4, ' ');
                (it.next()? == "EVENT").then_some(())?;
                Some((
                    it.next()?.parse().ok()?,
                    it.next()?.parse().ok()?,
                    it.next()?.to_string(),
                ))
            })
            .collect();
        v.sort();
        v
    }

    /// The node the events name last as primary of `task`.
    fn primary_of(&self, task: u32) -> Option<u64> {
        let needle = format!("BecamePrimary {{ task: TaskId({task}),");
        let mut acting: Option<u64> = None;
        for (_, n, e) in self.events() {
            if e.starts_with(&needle) {
                acting = Some(n);
            }
        }
        acting
    }

    /// Waits until `f` finds something in the events, up to `limit`.
    fn wait<T>(
        &self,
        limit: Duration,
        f: impl Fn(&[(u128, u64, String)]) -> Option<T>,
    ) -> Option<T> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(x) = f(&self.events()) {
                return Some(x);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        None
    }
}

/// One failover: (died, became primary, restarted) in ms after the signal;
/// `None` where it was not seen within 15 s.
type Sample = (Option<u128>, Option<u128>, Option<u128>);

/// Failovers slower than this are listed one by one after the table.
const SLOW_MS: u128 = 500;

fn failover(job: &mut Job, task: u32, sig: &str) -> Result<Sample, Failure> {
    let victim = job
        .wait(Duration::from_secs(15), |_| job.primary_of(task))
        .ok_or_else(|| Failure::Run(format!("task {task} has no primary")))?;
    let neighbour = format!("neighbour: TaskId({task}),");
    let primary = format!("BecamePrimary {{ task: TaskId({task}),");
    let slot = usize::try_from(victim - 1).unwrap_or(usize::MAX);
    let t0 = unix_ms();
    if let Some(Some(p)) = job.procs.get(slot) {
        p.signal(sig, false);
    }
    let after = |e: &[(u128, u64, String)], pred: &dyn Fn(&str) -> bool| {
        e.iter()
            .find(|(t, n, x)| *t >= t0 && *n != victim && pred(x))
            .map(|(t, _, _)| t - t0)
    };
    let limit = Duration::from_secs(15);
    let restarted = job.wait(limit, |e| {
        after(e, &|x| {
            x.starts_with("NeighbourRestarted") && x.contains(&neighbour)
        })
    });
    // Each process's output is read by its own thread: the standby's line
    // may arrive a little after the neighbours'.
    let became = job.wait(Duration::from_secs(2), |e| {
        after(e, &|x| x.starts_with(&primary))
    });
    let events = job.events();
    let died = after(&events, &|x| {
        x.starts_with("NeighbourDied") && x.contains(&neighbour)
    });
    if sig == "-KILL" && restarted.map_or(true, |r| r > SLOW_MS) {
        // Which way the death was found: a revocation on evidence names the
        // victim; without one the lease had to expire.
        let gone = format!("PeerGone {{ node: NodeId({victim}),");
        let evidence: Vec<String> = events
            .iter()
            .filter(|(t, _, x)| *t >= t0 && x.starts_with(&gone))
            .map(|(t, n, x)| format!("+{} ms node {n}: {x}", t - t0))
            .collect();
        println!(
            "slow: {sig} of node {victim} (primary of task {task}): died {died:?}, became primary {became:?}, restarted {restarted:?} ms; evidence: {evidence:?}"
        );
    }
    // Bring the node back as a new process (it rejoins as a spare).
    if let Some(p) = job.procs.get_mut(slot) {
        drop(p.take());
    }
    let fresh = job.spawn_node(victim)?;
    if let Some(p) = job.procs.get_mut(slot) {
        *p = Some(fresh);
    }
    Ok((died, became, restarted))
}

/// etcd's own lock: ms from the SIGKILL of the holder to the waiter running
/// its command.
fn lock_handover(endpoint: &str, name: &str) -> Result<Option<u128>, Failure> {
    let holder = Proc::spawn(
        Command::new("etcdctl")
            .args(["--endpoints", endpoint, "lock", "--ttl", "2", name, "--"])
            .args(["sh", "-c", "echo HELD; exec sleep 600"])
            .process_group(0),
    )?;
    let deadline = Instant::now() + Duration::from_secs(15);
    while !holder.lines().iter().any(|(_, l)| l == "HELD") {
        if Instant::now() > deadline {
            return Err(Failure::Run("etcdctl lock never held the lock".into()));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let waiter = Proc::spawn(
        Command::new("etcdctl")
            .args(["--endpoints", endpoint, "lock", "--ttl", "2", name, "--"])
            .args(["sh", "-c", "echo RAN"])
            .process_group(0),
    )?;
    // Let the waiter queue up behind the holder.
    std::thread::sleep(Duration::from_millis(500));
    let t0 = unix_ms();
    holder.signal("-KILL", true);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some((t, _)) = waiter.lines().into_iter().find(|(_, l)| l == "RAN") {
            return Ok(Some(t.saturating_sub(t0)));
        }
        if Instant::now() > deadline {
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn row(name: &str, v: &mut [u128], total: usize) -> String {
    let seen = v.len();
    format!(
        "| {name} | {} | {} | {} | {seen}/{total} |",
        quantile(v, 0.5),
        quantile(v, 0.99),
        v.iter().max().copied().unwrap_or(0)
    )
}

/// `taskgraph-bench failover`.
pub fn run(args: &Args) -> Result<(), Failure> {
    args.only(&["kills", "stops", "freezes", "locks", "tree-sum"])?;
    let kills = args.num("kills", 30)? as usize;
    let stops = args.num("stops", 10)? as usize;
    let freezes = args.num("freezes", 10)? as usize;
    let locks = args.num("locks", 30)? as usize;
    let exe = match args.get("tree-sum") {
        Some(p) => PathBuf::from(p),
        None => {
            let me = std::env::current_exe().map_err(|e| Failure::Run(e.to_string()))?;
            me.parent()
                .map(|d| d.join("examples").join("tree_sum"))
                .unwrap_or_default()
        }
    };
    if !exe.exists() {
        return Err(Failure::Run(format!(
            "{} is missing: build it with `cargo build --release --features etcd --example tree_sum` (`cargo xtask bench` does)",
            exe.display()
        )));
    }
    let etcd = Etcd::start()?;
    println!(
        "failover: real etcd 3 on loopback, TTL 2 s; tree of {TASKS} tasks, 1 standby each, 2 spares, one process per node; {kills} SIGKILLs, {stops} SIGTERMs, {freezes} SIGSTOPs of a primary; {locks} etcdctl lock handovers"
    );
    // Baseline first, on a quiet etcd.
    let mut lock_ms = Vec::new();
    for i in 0..locks {
        if let Some(ms) = lock_handover(&etcd.endpoint, &format!("bench-lock-{i}"))? {
            lock_ms.push(ms);
        }
    }
    let mut job = Job {
        exe,
        endpoint: etcd.endpoint.clone(),
        job: format!("failover-{}", std::process::id()),
        procs: Vec::new(),
    };
    let nodes = u64::from(TASKS) * 2 + 2;
    for id in 1..=nodes {
        let p = job.spawn_node(id)?;
        job.procs.push(Some(p));
    }
    let all_primaries = |job: &Job| (0..TASKS).all(|t| job.primary_of(t).is_some());
    if job
        .wait(Duration::from_secs(30), |_| {
            all_primaries(&job).then_some(())
        })
        .is_none()
    {
        return Err(Failure::Run("the job never had every primary".into()));
    }
    let (mut died, mut became, mut restarted) = (Vec::new(), Vec::new(), Vec::new());
    for k in 0..kills {
        // Every task in turn (each has neighbours), the root included.
        let task = (k as u32) % TASKS;
        let (d, b, r) = failover(&mut job, task, "-KILL")?;
        died.extend(d);
        became.extend(b);
        restarted.extend(r);
        // Let the restarted node rejoin and every task get its standby back.
        std::thread::sleep(Duration::from_millis(1500));
    }
    let mut stopped = Vec::new();
    for k in 0..stops {
        let task = (k as u32) % TASKS;
        let (_, b, _) = failover(&mut job, task, "-TERM")?;
        stopped.extend(b);
        std::thread::sleep(Duration::from_millis(1500));
    }
    // A frozen process: its host still accepts connections but it answers
    // nothing, like a node behind a partition. No evidence of death: the
    // standby must wait for the lease.
    let mut frozen = Vec::new();
    for k in 0..freezes {
        let task = (k as u32) % TASKS;
        let (_, b, _) = failover(&mut job, task, "-STOP")?;
        frozen.extend(b);
        std::thread::sleep(Duration::from_millis(1500));
    }
    println!("| from the signal to | p50 ms | p99 ms | max ms | seen |");
    println!("|---|---|---|---|---|");
    println!("{}", row("SIGKILL: neighbours' *_died", &mut died, kills));
    println!(
        "{}",
        row("SIGKILL: standby's became_primary", &mut became, kills)
    );
    println!(
        "{}",
        row("SIGKILL: neighbours' *_restarted", &mut restarted, kills)
    );
    println!(
        "{}",
        row("SIGTERM (clean stop): became_primary", &mut stopped, stops)
    );
    println!(
        "{}",
        row(
            "SIGSTOP (frozen, no evidence): became_primary",
            &mut frozen,
            freezes
        )
    );
    println!(
        "{}",
        row(
            "etcd lock: SIGKILL of the holder to the waiter's command",
            &mut lock_ms,
            locks
        )
    );
    Ok(())
}
