//! One simulated world: a store machine serving the embedded store over the
//! simulated network, one machine per taskgraph node running the production
//! runtime, a fault injector, and a monitor that checks every event against
//! the store as it is at that instant.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use taskgraph_core::keys::{Key, Keys};
use taskgraph_core::testkit::tree_sum::{EpochResult, Results, TreeSumBuilder};
use taskgraph_core::testkit::{Checker, Rng, TraceHash, Violation};
use taskgraph_core::{Canary, Event, Instant, NodeConfig, NodeId, SessionId, TaskId, TreeTopology};
use taskgraph_runtime::{
    serve_store, spawn_node, MemStoreServer, NodeExit, NodeOptions, RemoteStore, Store,
};

/// The job's name in every simulated run.
pub const JOB: &str = "sim";

/// The application a scenario runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum App {
    /// tree_sum: every epoch, the tree sums the task ids; task 0 checks the
    /// total.
    TreeSum,
    /// The regression example: gradient descent along the tree, one step
    /// per epoch; the final weights must be bit-identical to a run without
    /// faults.
    Regression,
}

/// Shape, timing and fault load of a simulated run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scenario {
    /// The application.
    pub app: App,
    /// Tasks.
    pub tasks: u32,
    /// Children per task of the tree.
    pub fanout: u32,
    /// Standbys per task.
    pub standbys: u32,
    /// Spare nodes.
    pub spares: u32,
    /// Epochs to run.
    pub epochs: u64,
    /// Pause between epochs (task 0's timer).
    pub pace: Duration,
    /// Lease TTL (whole seconds).
    pub ttl: Duration,
    /// Faults drawn per run.
    pub faults: usize,
    /// Faults start within this time from the start of the run.
    pub window: Duration,
    /// The kinds faults are drawn from.
    pub kinds: Vec<FaultKind>,
    /// A deliberately broken behaviour switched on in every node.
    pub canary: Option<Canary>,
}

impl Scenario {
    /// The default scenario: a tree of 15 tasks (fanout 2), one standby
    /// each, 2 spares, 60 epochs one second apart (60 simulated seconds
    /// without faults), 8 faults of every kind within the first 60 s.
    pub fn tree15() -> Self {
        Scenario {
            app: App::TreeSum,
            tasks: 15,
            fanout: 2,
            standbys: 1,
            spares: 2,
            epochs: 60,
            pace: Duration::from_secs(1),
            ttl: Duration::from_secs(2),
            faults: 8,
            window: Duration::from_secs(60),
            kinds: FaultKind::ALL.to_vec(),
            canary: None,
        }
    }

    /// A small scenario for tests: 7 tasks, one standby each, one spare,
    /// 10 epochs 200 ms apart, 4 faults within the first 3 s.
    pub fn small() -> Self {
        Scenario {
            tasks: 7,
            spares: 1,
            epochs: 10,
            pace: Duration::from_millis(200),
            faults: 4,
            window: Duration::from_secs(3),
            ..Scenario::tree15()
        }
    }

    /// The regression example: 7 tasks, one standby each, 2 spares, 25
    /// gradient steps 120 ms apart, 4 faults within the first 3 s.
    pub fn regression() -> Self {
        Scenario {
            app: App::Regression,
            spares: 2,
            epochs: 25,
            pace: Duration::from_millis(120),
            ..Scenario::small()
        }
    }

    /// The scenario called `name` (`tree15`, `small` or `regression`).
    pub fn named(name: &str) -> Option<Self> {
        match name {
            "tree15" | "default" => Some(Scenario::tree15()),
            "small" => Some(Scenario::small()),
            "regression" => Some(Scenario::regression()),
            _ => None,
        }
    }

    /// The regression problem of this scenario (its data set is fixed: every
    /// seed solves the same problem, so every run must reach the same
    /// weights).
    pub fn problem(&self) -> crate::regression::Problem {
        crate::regression::Problem {
            seed: 7,
            points_per_task: 100,
            noise: 0.05,
            lr: 1.5,
            steps: self.epochs,
        }
    }

    /// Nodes in the run.
    pub fn nodes(&self) -> u64 {
        u64::from(self.tasks) * u64::from(1 + self.standbys) + u64::from(self.spares)
    }

    /// After the last fault heals, every task must have a primary (or the
    /// job must have ended) within this bound: the dead primary's lease
    /// runs out (one TTL), a standby's claim lands, and a node cut off from
    /// the store gets a new lease after its retries (one more TTL), plus
    /// one TTL of slack for retries backing off and watches catching up.
    pub fn liveness_bound(&self) -> Duration {
        self.ttl * 3
    }

    /// What is wrong with the scenario, if anything.
    pub fn validate(&self) -> Result<(), String> {
        if self.tasks == 0 || self.fanout == 0 {
            return Err("tasks and fanout must be at least 1".into());
        }
        if self.epochs == 0 {
            return Err("epochs must be at least 1".into());
        }
        if self.nodes() + 1 >= MAX_MACHINES {
            return Err(format!(
                "{} nodes: the simulated network has addresses for {}",
                self.nodes(),
                MAX_MACHINES - 1
            ));
        }
        if self.ttl < Duration::from_secs(1) || self.ttl.subsec_nanos() != 0 {
            return Err("the TTL must be a whole number of seconds, at least 1".into());
        }
        if self.faults > 0 && self.kinds.is_empty() {
            return Err("faults requested but no fault kind allowed".into());
        }
        TreeTopology::new(self.fanout, self.tasks).map_err(|e| e.to_string())?;
        Ok(())
    }
}

/// The kinds of fault the simulator injects.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FaultKind {
    /// A machine crashes: its process dies and its host stops answering (a
    /// connect times out, no evidence of death), until it restarts later as
    /// a new incarnation.
    Crash,
    /// A node's process dies but its host stays up: a connect to it is
    /// refused, evidence on which peers revoke its lease at once. It
    /// restarts later, at the same address, as a new incarnation.
    ProcessDeath,
    /// A node is cut from everyone, peers and store.
    Partition,
    /// One direction of one link between two nodes is cut.
    OneWay,
    /// A node is cut from the store only.
    StoreCut,
    /// The store is unreachable for everyone (its data survives).
    StoreOutage,
    /// A task's primary is cut off for longer than the TTL, then healed: the
    /// zombie-primary case.
    Pause,
    /// Every message takes much longer for a while.
    Delay,
}

impl FaultKind {
    /// Every kind.
    pub const ALL: [FaultKind; 8] = [
        FaultKind::Crash,
        FaultKind::ProcessDeath,
        FaultKind::Partition,
        FaultKind::OneWay,
        FaultKind::StoreCut,
        FaultKind::StoreOutage,
        FaultKind::Pause,
        FaultKind::Delay,
    ];

    /// The kind's name (`crash`, `partition`, `one-way`, …).
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::Crash => "crash",
            FaultKind::ProcessDeath => "process-death",
            FaultKind::Partition => "partition",
            FaultKind::OneWay => "one-way",
            FaultKind::StoreCut => "store-cut",
            FaultKind::StoreOutage => "store-outage",
            FaultKind::Pause => "pause",
            FaultKind::Delay => "delay",
        }
    }

    /// The kind named `name`.
    pub fn from_name(name: &str) -> Option<FaultKind> {
        FaultKind::ALL.into_iter().find(|k| k.name() == name)
    }
}

/// Who a node fault hits: a fixed node, or whoever is the store's primary of
/// a task when the fault fires (a spare node is a dull target).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// This node.
    Node(u64),
    /// The primary of this task at that moment (nothing if it has none).
    PrimaryOf(u32),
}

/// One fault of a simulated run, at a time from the start of the run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SimFault {
    /// Kill the target's machine at `at` and cut it off (its host is down);
    /// restart it `down` later.
    Crash {
        /// The node.
        target: Target,
        /// When.
        at: Duration,
        /// How long it stays down.
        down: Duration,
    },
    /// Kill the target's process at `at`, its host still answering; restart
    /// it `down` later.
    ProcessDeath {
        /// The node.
        target: Target,
        /// When.
        at: Duration,
        /// How long it stays down.
        down: Duration,
    },
    /// Cut the target from everyone (peers and store) for `dur`.
    Partition {
        /// The node.
        target: Target,
        /// When.
        at: Duration,
        /// How long.
        dur: Duration,
    },
    /// Cut the link `from -> to` only, for `dur`.
    OneWay {
        /// Sender.
        from: Target,
        /// Receiver.
        to: u64,
        /// When.
        at: Duration,
        /// How long.
        dur: Duration,
    },
    /// Cut the target from the store only (both ways), for `dur`.
    StoreCut {
        /// The node.
        target: Target,
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
    /// Cut the primary of `task` from everyone for `dur` (longer than the TTL).
    Pause {
        /// The task whose primary is paused.
        task: u32,
        /// When.
        at: Duration,
        /// How long.
        dur: Duration,
    },
    /// Every message sent during `dur` takes up to `latency` to arrive.
    Delay {
        /// When.
        at: Duration,
        /// How long.
        dur: Duration,
        /// Upper bound of the latency.
        latency: Duration,
    },
}

impl SimFault {
    /// When the fault fires.
    pub fn at(&self) -> Duration {
        match self {
            SimFault::Crash { at, .. }
            | SimFault::ProcessDeath { at, .. }
            | SimFault::Partition { at, .. }
            | SimFault::OneWay { at, .. }
            | SimFault::StoreCut { at, .. }
            | SimFault::StoreOutage { at, .. }
            | SimFault::Pause { at, .. }
            | SimFault::Delay { at, .. } => *at,
        }
    }

    /// The fault's kind.
    pub fn kind(&self) -> FaultKind {
        match self {
            SimFault::Crash { .. } => FaultKind::Crash,
            SimFault::ProcessDeath { .. } => FaultKind::ProcessDeath,
            SimFault::Partition { .. } => FaultKind::Partition,
            SimFault::OneWay { .. } => FaultKind::OneWay,
            SimFault::StoreCut { .. } => FaultKind::StoreCut,
            SimFault::StoreOutage { .. } => FaultKind::StoreOutage,
            SimFault::Pause { .. } => FaultKind::Pause,
            SimFault::Delay { .. } => FaultKind::Delay,
        }
    }
}

/// The faults of seed `seed` for scenario `s`: a pure function of both, so
/// a seed names its fault schedule.
pub fn random_faults(seed: u64, s: &Scenario) -> Vec<SimFault> {
    let mut rng = Rng::new(seed ^ 0x51e1_fa17);
    let window_ms = u64::try_from(s.window.as_millis())
        .unwrap_or(u64::MAX)
        .max(101);
    let ttl_ms = u64::try_from(s.ttl.as_millis()).unwrap_or(2_000);
    let nodes = s.nodes();
    let mut v = Vec::new();
    if s.kinds.is_empty() {
        return v;
    }
    for _ in 0..s.faults {
        let at = Duration::from_millis(rng.range(100, window_ms));
        let node = rng.range(1, nodes + 1);
        let task = u32::try_from(rng.range(0, u64::from(s.tasks))).unwrap_or(0);
        // Half the node faults hit a task's primary.
        let target = if rng.chance(0.5) {
            Target::PrimaryOf(task)
        } else {
            Target::Node(node)
        };
        let dur = Duration::from_millis(rng.range(200, 2 * ttl_ms));
        let i = usize::try_from(rng.range(0, s.kinds.len() as u64)).unwrap_or(0);
        v.push(match s.kinds[i] {
            FaultKind::Crash => SimFault::Crash {
                target,
                at,
                down: dur,
            },
            FaultKind::ProcessDeath => SimFault::ProcessDeath {
                target,
                at,
                down: dur,
            },
            FaultKind::Partition => SimFault::Partition { target, at, dur },
            FaultKind::OneWay => SimFault::OneWay {
                from: target,
                to: rng.range(1, nodes + 1),
                at,
                dur,
            },
            FaultKind::StoreCut => SimFault::StoreCut { target, at, dur },
            FaultKind::StoreOutage => SimFault::StoreOutage { at, dur: dur / 2 },
            FaultKind::Pause => SimFault::Pause {
                task,
                at,
                dur: s.ttl + Duration::from_millis(rng.range(100, ttl_ms)),
            },
            FaultKind::Delay => SimFault::Delay {
                at,
                dur,
                latency: Duration::from_millis(rng.range(50, 500)),
            },
        });
    }
    v.sort_by_key(SimFault::at);
    v
}

/// One line of a run's trace: an event a node reported, or what the fault
/// injector did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceLine {
    /// Simulated time since the start of the run.
    pub at: Duration,
    /// The node that reported it (`None`: the fault injector).
    pub node: Option<u64>,
    /// What happened.
    pub what: String,
}

impl TraceLine {
    /// The line as one JSON object: `{"at_ms":…,"node":…,"what":"…"}`.
    pub fn to_json(&self) -> String {
        let node = self.node.map_or("null".to_string(), |n| n.to_string());
        format!(
            "{{\"at_us\":{},\"node\":{node},\"what\":\"{}\"}}",
            self.at.as_micros(),
            json_escape(&self.what)
        )
    }
}

fn json_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

/// What a run produced.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    /// Task 0's results.
    pub results: Vec<EpochResult>,
    /// How each node's last run ended (`None`: it never reported).
    pub exits: Vec<(u64, Option<String>)>,
    /// Simulated time at the end.
    pub elapsed: Duration,
    /// Every event every node reported: (time since the start, node, event).
    pub log: Vec<(Duration, NodeId, Event)>,
    /// Events and injected faults, in order.
    pub trace: Vec<TraceLine>,
    /// The 128-bit hash of the trace.
    pub trace_hash: u128,
    /// Faults that fired, per kind (a crash of a machine already down, a
    /// pause of a task without a primary, a link from a node to itself do
    /// not fire).
    pub fired: BTreeMap<FaultKind, u64>,
    /// Every violation the checker found, on every event and at the end.
    pub violations: Vec<Violation>,
    /// How long after the last heal every task had a primary again (`None`:
    /// not within [`Scenario::liveness_bound`]).
    pub recovery: Option<Duration>,
    /// Every time a task's primary key was deleted and later re-created:
    /// how long the task had no primary (failover time as the store saw
    /// it, including waits for a machine that was down or cut off).
    pub vacancies: Vec<Duration>,
    /// Per kind of kill (`crash`, `process-death`) of a node acting as a
    /// primary: the time from the kill to another node's `became_primary`.
    pub takeovers: BTreeMap<FaultKind, Vec<Duration>>,
    /// Peer sessions whose lease a node revoked on evidence that their
    /// process was gone (the fast path).
    pub revoked: u64,
    /// The regression's final weights (as bits), if it got there.
    pub weights: Option<Vec<u64>>,
    /// What the application found wrong with its own results.
    pub app_failures: Vec<String>,
    /// The regression lost its model (task 0 and every standby of it
    /// failed together) and ended the job as failed: an honest outcome
    /// under that many faults, not a violation.
    pub lost_model: bool,
}

impl Outcome {
    /// What failed in this run (empty: it passed): checker violations, the
    /// liveness bound, unverified or wrong epochs, nodes that did not see
    /// the job complete.
    pub fn failures(&self, s: &Scenario) -> Vec<String> {
        let mut f: Vec<String> = self.violations.iter().map(|v| v.to_string()).collect();
        if self.recovery.is_none() {
            f.push(format!(
                "liveness: some task had no primary {:?} after the last heal",
                s.liveness_bound()
            ));
        }
        f.extend(self.app_failures.iter().cloned());
        if s.app == App::TreeSum {
            let missing: Vec<u64> = (1..=s.epochs)
                .filter(|e| !self.results.iter().any(|r| r.epoch.0 == *e))
                .collect();
            if !missing.is_empty() {
                f.push(format!("epochs never verified: {missing:?}"));
            }
            for r in self.results.iter().filter(|r| r.total != r.expected) {
                f.push(format!("wrong answer: {r:?}"));
            }
        }
        let expected = if self.lost_model {
            "JobEnded(Failed"
        } else {
            "JobEnded(Completed"
        };
        for (id, exit) in &self.exits {
            if !exit.as_deref().is_some_and(|e| e.contains(expected)) {
                f.push(format!("node {id} did not see {expected}: {exit:?}"));
            }
        }
        f
    }
}

/// The shared monitor: every node's events and every fault land here, in
/// order; each event is checked against the store at that instant.
struct Monitor {
    origin: madsim::time::Instant,
    checker: Checker,
    sessions: BTreeMap<NodeId, SessionId>,
    store: Option<MemStoreServer>,
    log: Vec<(Duration, NodeId, Event)>,
    trace: Vec<TraceLine>,
    hash: TraceHash,
    /// The task and incarnation each node last said it acts as primary of.
    acting: BTreeMap<NodeId, (TaskId, taskgraph_core::Incarnation)>,
    /// Tasks whose primary key is gone, since when.
    vacant: BTreeMap<TaskId, Duration>,
    /// How long each task went without a primary key, per vacancy.
    vacancies: Vec<Duration>,
    /// Tasks whose primary was killed, when and by which kind of fault,
    /// until another node becomes their primary.
    killed: BTreeMap<TaskId, (Duration, FaultKind)>,
    /// Time from the kill of a primary to another node's `became_primary`,
    /// per kind of kill.
    takeovers: BTreeMap<FaultKind, Vec<Duration>>,
    /// Peer sessions revoked on evidence of death (`PeerGone`).
    revoked: u64,
}

impl Monitor {
    fn since(&self) -> Duration {
        madsim::time::Instant::now().duration_since(self.origin)
    }

    fn line(&mut self, at: Duration, node: Option<u64>, what: String) {
        self.hash.update(&at.as_nanos().to_le_bytes());
        self.hash.update(&node.unwrap_or(0).to_le_bytes());
        self.hash.update(what.as_bytes());
        self.trace.push(TraceLine { at, node, what });
    }

    fn event(&mut self, node: NodeId, ev: Event) {
        let at = self.since();
        match &ev {
            Event::SessionStarted { session } => {
                self.sessions.insert(node, *session);
            }
            Event::BecamePrimary {
                task, incarnation, ..
            } => {
                self.acting.insert(node, (*task, *incarnation));
                if let Some((killed, kind)) = self.killed.remove(task) {
                    self.takeovers
                        .entry(kind)
                        .or_default()
                        .push(at.saturating_sub(killed));
                }
            }
            Event::PeerGone { .. } => self.revoked += 1,
            Event::SteppedDown { .. } | Event::SessionLost { .. } | Event::Stopped { .. } => {
                self.acting.remove(&node);
            }
            _ => {}
        }
        let session = self.sessions.get(&node).copied().unwrap_or_default();
        let now = Instant::from_duration(at);
        let Monitor { checker, store, .. } = self;
        match store {
            Some(st) => st.with(|s| checker.on_event(now, node, session, &ev, Some(s))),
            None => checker.on_event(now, node, session, &ev, None),
        }
        self.line(at, Some(node.0), format!("{ev:?}"));
        self.log.push((at, node, ev));
    }

    fn fault(&mut self, what: String) {
        let at = self.since();
        self.line(at, None, what);
    }

    /// Follows the primary keys: a delete opens a vacancy, the next put
    /// of the same task's key closes it.
    fn primary_changes(
        &mut self,
        keys: &Keys,
        at: Duration,
        events: &[taskgraph_core::store::WatchEvent],
    ) {
        use taskgraph_core::store::WatchEventKind;
        for ev in events {
            let Some(Key::Primary(t)) = keys.parse(&ev.kv.key) else {
                continue;
            };
            match ev.kind {
                WatchEventKind::Delete => {
                    self.vacant.entry(t).or_insert(at);
                }
                WatchEventKind::Put => {
                    if let Some(since) = self.vacant.remove(&t) {
                        self.vacancies.push(at.saturating_sub(since));
                    }
                }
            }
        }
    }

    /// The node the store names primary of `task`, and its incarnation.
    fn primary_of(&self, keys: &Keys, task: u32) -> Option<(u64, taskgraph_core::Incarnation)> {
        let st = self.store.as_ref()?;
        st.with(|s| {
            let kv = s.get(&keys.key(Key::Primary(TaskId(task))))?;
            let rec: taskgraph_core::keys::RoleRecord =
                taskgraph_core::keys::decode(&kv.key, &kv.value).ok()?;
            Some((rec.node.0, taskgraph_core::Incarnation(kv.create_revision)))
        })
    }

    /// Whether the job has ended, or every task has a primary: the node the
    /// store names, acting as that incarnation (a key left behind by a node
    /// that crashed or stepped down does not count).
    fn live(&self, keys: &Keys, tasks: u32) -> bool {
        let Some(st) = self.store.as_ref() else {
            return false;
        };
        if st.with(|s| s.get(&keys.key(Key::Exit)).is_some()) {
            return true;
        }
        (0..tasks).all(|t| {
            self.primary_of(keys, t).is_some_and(|(node, inc)| {
                self.acting.get(&NodeId(node)) == Some(&(TaskId(t), inc))
            })
        })
    }
}

fn lock(m: &Mutex<Monitor>) -> std::sync::MutexGuard<'_, Monitor> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Machines the simulated network has addresses for.
const MAX_MACHINES: u64 = 65_000;

fn ip(i: u64) -> IpAddr {
    // Simulated addresses (madsim opens no real socket), in the range
    // reserved for benchmarks (198.18.0.0/15).
    let i = i.min(MAX_MACHINES);
    IpAddr::V4(Ipv4Addr::new(
        198,
        18,
        u8::try_from((i >> 8) & 0xff).unwrap_or(0),
        u8::try_from(i & 0xff).unwrap_or(0),
    ))
}

/// The store machine's number among the simulated machines (nodes are
/// numbered from 1).
const STORE: u64 = 0;

/// A cut of the simulated network: a machine from everyone, or one
/// direction of one link.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Cut {
    Node(u64),
    Link(u64, u64),
}

/// How a fault is undone.
#[derive(Debug)]
enum Undo {
    /// Lift the cuts (the host is back), then restart the node.
    Restart(u64, Vec<Cut>),
    Uncut(Vec<Cut>),
    Undelay(Duration),
}

/// Applies faults to the simulated world. madsim's clogs are sets, so two
/// overlapping faults on one machine or link would both end at the first
/// heal; here each cut is counted and lifted only when the last fault over
/// it heals, and the latency is the largest of the delays in force.
struct Injector {
    net: Arc<madsim::net::NetSim>,
    handle: madsim::runtime::Handle,
    ids: BTreeMap<u64, madsim::task::NodeId>,
    /// Shared with the transport (see [`Injector::install_path_cuts`]).
    cuts: Arc<Mutex<BTreeMap<Cut, u32>>>,
    delays: Vec<Duration>,
}

impl Injector {
    /// Tells the runtime's transport which paths are cut, so that a
    /// connection refused on a cut path looks like a real network's
    /// timeout, not like evidence that the peer's process is gone.
    fn install_path_cuts(&self) {
        let cuts = self.cuts.clone();
        taskgraph_runtime::transport::sim_paths::set(move |from, to| {
            let c = cuts.lock().unwrap_or_else(|e| e.into_inner());
            let (a, b) = (from.0, to.0);
            [Cut::Node(a), Cut::Node(b), Cut::Link(a, b), Cut::Link(b, a)]
                .iter()
                .any(|x| c.contains_key(x))
        });
    }

    fn kill(&self, node: u64) {
        if let Some(id) = self.ids.get(&node) {
            self.handle.kill(*id);
        }
    }

    fn cut(&mut self, cuts: &[Cut]) {
        for c in cuts {
            let first = {
                let mut all = self.cuts.lock().unwrap_or_else(|e| e.into_inner());
                let n = all.entry(*c).or_default();
                *n += 1;
                *n == 1
            };
            if first {
                self.clog(*c, true);
            }
        }
    }

    fn clog(&self, c: Cut, on: bool) {
        match c {
            Cut::Node(n) => {
                if let Some(id) = self.ids.get(&n) {
                    if on {
                        self.net.clog_node(*id);
                    } else {
                        self.net.unclog_node(*id);
                    }
                }
            }
            Cut::Link(a, b) => {
                if let (Some(a), Some(b)) = (self.ids.get(&a), self.ids.get(&b)) {
                    if on {
                        self.net.clog_link(*a, *b);
                    } else {
                        self.net.unclog_link(*a, *b);
                    }
                }
            }
        }
    }

    fn uncut(&mut self, cuts: Vec<Cut>) {
        for c in cuts {
            let last = {
                let mut all = self.cuts.lock().unwrap_or_else(|e| e.into_inner());
                let left = all.get_mut(&c).map(|n| {
                    *n -= 1;
                    *n
                });
                if left == Some(0) {
                    all.remove(&c);
                }
                left == Some(0)
            };
            if last {
                self.clog(c, false);
            }
        }
    }

    fn delay(&mut self, latency: Duration) {
        self.delays.push(latency);
        self.set_latency();
    }

    fn set_latency(&self) {
        let lo = Duration::from_millis(1);
        match self.delays.iter().max() {
            Some(l) => self
                .net
                .update_config(|c| c.send_latency = lo..(*l).max(lo * 2)),
            None => self
                .net
                .update_config(|c| *c = madsim::net::Config::default()),
        }
    }

    fn undo(&mut self, undo: Undo) {
        match undo {
            Undo::Restart(node, cuts) => {
                self.uncut(cuts);
                if let Some(id) = self.ids.get(&node) {
                    self.handle.restart(*id);
                }
            }
            Undo::Uncut(cuts) => self.uncut(cuts),
            Undo::Undelay(latency) => {
                if let Some(i) = self.delays.iter().position(|l| *l == latency) {
                    self.delays.remove(i);
                }
                self.set_latency();
            }
        }
    }
}

const STORE_PORT: u16 = 2379;
const NODE_PORT: u16 = 7000;

/// Runs seed `seed` of scenario `s` in a fresh madsim runtime: its faults
/// are [`random_faults`]`(seed, s)`, and madsim's own randomness (network
/// latencies, task order) comes from the same seed.
pub fn run_seed(seed: u64, s: &Scenario) -> Outcome {
    let faults = random_faults(seed, s);
    run_seed_with(seed, s, &faults)
}

/// Runs scenario `s` under `faults` in a fresh madsim runtime seeded `seed`,
/// on a thread of its own: std's `HashMap` keys are drawn once per thread,
/// and madsim can seed them from the run's seed only on a thread that has
/// not drawn them yet (otherwise a replay in the same process could differ).
pub fn run_seed_with(seed: u64, s: &Scenario, faults: &[SimFault]) -> Outcome {
    let reference = match s.app {
        App::TreeSum => None,
        App::Regression => regression_reference(s),
    };
    run_on_own_thread(seed, s, faults, reference)
}

fn run_on_own_thread(
    seed: u64,
    s: &Scenario,
    faults: &[SimFault],
    reference: Option<Vec<u64>>,
) -> Outcome {
    let (s, faults) = (s.clone(), faults.to_vec());
    let run = std::thread::spawn(move || {
        let rt = madsim::runtime::Runtime::with_seed_and_config(seed, madsim::Config::default());
        rt.block_on(run_app(&s, &faults, reference.as_deref()))
    });
    run.join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

/// The final weights of the regression of `s` without faults (seed 0),
/// computed once per process and shape.
fn regression_reference(s: &Scenario) -> Option<Vec<u64>> {
    type Cache = BTreeMap<String, Option<Vec<u64>>>;
    static CACHE: Mutex<Cache> = Mutex::new(BTreeMap::new());
    let calm = Scenario {
        faults: 0,
        canary: None,
        ..s.clone()
    };
    let key = format!("{calm:?}");
    if let Some(w) = CACHE.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
        return w.clone();
    }
    let w = run_on_own_thread(0, &calm, &[], None).weights;
    CACHE
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(key, w.clone());
    w
}

/// Runs tree_sum scenario `s` in the current madsim runtime under `faults`,
/// heals everything, checks liveness, then waits for every node to see the
/// job end. (For the regression, use [`run_seed_with`].)
pub async fn run_with_faults(s: &Scenario, faults: &[SimFault]) -> Outcome {
    let s = Scenario {
        app: App::TreeSum,
        ..s.clone()
    };
    run_app(&s, faults, None).await
}

/// Runs `s` under `faults`; a regression's final weights are compared with
/// `reference` when given.
async fn run_app(s: &Scenario, faults: &[SimFault], reference: Option<&[u64]>) -> Outcome {
    let handle = madsim::runtime::Handle::current();
    let keys = Keys::new("taskgraph", JOB);
    let topo = Arc::new(TreeTopology::new(s.fanout, s.tasks).expect("a valid scenario"));
    let monitor = Arc::new(Mutex::new(Monitor {
        origin: madsim::time::Instant::now(),
        checker: Checker::new(JOB, s.tasks, topo.clone()).with_exclusive_primaries(),
        sessions: BTreeMap::new(),
        store: None,
        log: Vec::new(),
        trace: Vec::new(),
        hash: TraceHash::new(),
        acting: BTreeMap::new(),
        vacant: BTreeMap::new(),
        vacancies: Vec::new(),
        killed: BTreeMap::new(),
        takeovers: BTreeMap::new(),
        revoked: 0,
    }));
    let store_addr = SocketAddr::new(ip(1), STORE_PORT);
    let store_monitor = monitor.clone();
    let store_keys = keys.clone();
    let store_machine = handle
        .create_node()
        .name("store")
        .ip(ip(1))
        .init(move || {
            let (monitor, keys) = (store_monitor.clone(), store_keys.clone());
            async move {
                let listener = tokio::net::TcpListener::bind(store_addr)
                    .await
                    .expect("store binds");
                let server = MemStoreServer::new();
                lock(&monitor).store = Some(server.clone());
                // The monitor's own watch: which primaries the store had
                // and when (for the end-of-run S4/S5 completeness checks).
                if let Ok(w) = server.watch(keys.prefix().to_string(), 0).await {
                    let m = monitor.clone();
                    tokio::spawn(async move {
                        // The whole stream, not just its receiver: dropping
                        // the stream cancels the watch.
                        let mut w = w;
                        while let Some(resp) = w.responses.recv().await {
                            let mut g = lock(&m);
                            let at = g.since();
                            g.checker
                                .on_store_events(Instant::from_duration(at), &resp.events);
                            g.primary_changes(&keys, at, &resp.events);
                        }
                    });
                }
                let _ = serve_store(listener, Arc::new(server)).await;
            }
        })
        .build();
    let results = Results::default();
    let report = crate::regression::Report::default();
    let n = s.nodes();
    let n_nodes = n;
    let mut joins = Vec::new();
    let mut machines = Vec::new();
    for id in 1..=n {
        let (sc, r, m, topo) = (s.clone(), results.clone(), monitor.clone(), topo.clone());
        let rep = report.clone();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Result<NodeExit, String>>();
        let machine = handle
            .create_node()
            .name(format!("node-{id}"))
            .ip(ip(id + 1))
            .init(move || {
                let (sc, r, tx, m, topo) =
                    (sc.clone(), r.clone(), tx.clone(), m.clone(), topo.clone());
                let rep = rep.clone();
                async move {
                    let (etx, mut erx) = tokio::sync::mpsc::unbounded_channel();
                    tokio::spawn(async move {
                        while let Some((node, ev)) = erx.recv().await {
                            lock(&m).event(node, ev);
                        }
                    });
                    let store: Arc<dyn Store> = Arc::new(RemoteStore::new(
                        store_addr.to_string(),
                        Duration::from_secs(1),
                    ));
                    let mut cfg = NodeConfig::new(
                        NodeId(id),
                        JOB,
                        SocketAddr::new(ip(id + 1), NODE_PORT).to_string(),
                        sc.tasks,
                        sc.standbys,
                    );
                    cfg.ttl = sc.ttl;
                    cfg.canary = sc.canary;
                    let opts = NodeOptions::new(cfg, SocketAddr::new(ip(id + 1), NODE_PORT));
                    let builder: Box<dyn taskgraph_core::TaskBuilder> = match sc.app {
                        App::TreeSum => {
                            Box::new(TreeSumBuilder::new(sc.tasks, sc.epochs, r).with_pace(sc.pace))
                        }
                        App::Regression => Box::new(crate::regression::RegressionBuilder {
                            problem: sc.problem(),
                            report: rep,
                            pace: sc.pace,
                        }),
                    };
                    let h = match spawn_node(opts, store, topo, builder, Some(etx)).await {
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
    let mut ids: BTreeMap<u64, madsim::task::NodeId> = BTreeMap::new();
    ids.insert(STORE, store_machine.id());
    for (i, m) in machines.iter().enumerate() {
        ids.insert(i as u64 + 1, m.id());
    }
    let mut inj = Injector {
        net: madsim::net::NetSim::current(),
        handle: handle.clone(),
        ids,
        cuts: Arc::new(Mutex::new(BTreeMap::new())),
        delays: Vec::new(),
    };
    inj.install_path_cuts();
    let resolve = |t: Target| -> Option<u64> {
        match t {
            Target::Node(n) => Some(n),
            Target::PrimaryOf(task) => lock(&monitor).primary_of(&keys, task).map(|p| p.0),
        }
    };
    let mut fired: BTreeMap<FaultKind, u64> = BTreeMap::new();
    let mut undos: Vec<(Duration, String, Undo)> = Vec::new();
    // A machine is killed once before it is restarted: a fault of a node
    // that is down (a crash included) does not fire.
    let mut down_until: BTreeMap<u64, Duration> = BTreeMap::new();
    let mut last_heal = Duration::ZERO;
    for f in faults {
        undos.sort_by_key(|(t, _, _)| *t);
        while undos.first().is_some_and(|(t, _, _)| *t <= f.at()) {
            let (t, what, undo) = undos.remove(0);
            madsim::time::sleep_until(start + t).await;
            inj.undo(undo);
            lock(&monitor).fault(what);
            last_heal = last_heal.max(t);
        }
        madsim::time::sleep_until(start + f.at()).await;
        let at = f.at();
        let up = |n: u64| n >= 1 && n <= n_nodes && down_until.get(&n).map_or(true, |u| at > *u);
        let done: Option<(String, Duration, Undo)> = match f.clone() {
            SimFault::Crash { target, down, .. } | SimFault::ProcessDeath { target, down, .. } => {
                let host_down = matches!(f, SimFault::Crash { .. });
                resolve(target).filter(|n| up(*n)).map(|node| {
                    let cut = if host_down {
                        vec![Cut::Node(node)]
                    } else {
                        vec![]
                    };
                    inj.cut(&cut);
                    inj.kill(node);
                    down_until.insert(node, at + down);
                    let m = &mut *lock(&monitor);
                    let now = Instant::from_duration(m.since());
                    m.checker.on_crash(now, NodeId(node));
                    if let Some((task, _)) = m.acting.remove(&NodeId(node)) {
                        m.killed.insert(task, (m.since(), f.kind()));
                    }
                    let what = if host_down {
                        format!("crash node {node} (host down)")
                    } else {
                        format!("kill the process of node {node} (host up)")
                    };
                    (what, down, Undo::Restart(node, cut))
                })
            }
            SimFault::Partition { target, dur, .. } => {
                resolve(target).filter(|n| up(*n)).map(|node| {
                    let cut = vec![Cut::Node(node)];
                    inj.cut(&cut);
                    (format!("partition node {node}"), dur, Undo::Uncut(cut))
                })
            }
            SimFault::Pause { task, dur, .. } => resolve(Target::PrimaryOf(task))
                .filter(|n| up(*n))
                .map(|node| {
                    let cut = vec![Cut::Node(node)];
                    inj.cut(&cut);
                    (
                        format!("pause node {node} (primary of task {task})"),
                        dur,
                        Undo::Uncut(cut),
                    )
                }),
            SimFault::OneWay { from, to, dur, .. } => resolve(from)
                .filter(|a| up(*a) && up(to) && *a != to)
                .map(|a| {
                    let cut = vec![Cut::Link(a, to)];
                    inj.cut(&cut);
                    (format!("cut link {a} -> {to}"), dur, Undo::Uncut(cut))
                }),
            SimFault::StoreCut { target, dur, .. } => {
                resolve(target).filter(|n| up(*n)).map(|node| {
                    let cut = vec![Cut::Link(node, STORE), Cut::Link(STORE, node)];
                    inj.cut(&cut);
                    (
                        format!("cut node {node} from the store"),
                        dur,
                        Undo::Uncut(cut),
                    )
                })
            }
            SimFault::StoreOutage { dur, .. } => {
                let cut = vec![Cut::Node(STORE)];
                inj.cut(&cut);
                Some(("store outage".to_string(), dur, Undo::Uncut(cut)))
            }
            SimFault::Delay { dur, latency, .. } => {
                inj.delay(latency);
                Some((
                    format!("messages delayed up to {latency:?}"),
                    dur,
                    Undo::Undelay(latency),
                ))
            }
        };
        if let Some((what, dur, undo)) = done {
            *fired.entry(f.kind()).or_default() += 1;
            lock(&monitor).fault(format!("{what} for {dur:?}"));
            undos.push((at + dur, format!("heal: {what}"), undo));
        }
    }
    undos.sort_by_key(|(t, _, _)| *t);
    for (t, what, undo) in undos {
        madsim::time::sleep_until(start + t).await;
        inj.undo(undo);
        lock(&monitor).fault(what);
        last_heal = last_heal.max(t);
    }
    // Liveness: every task has a primary again within the bound.
    madsim::time::sleep_until(start + last_heal).await;
    let mut recovery = None;
    let step = Duration::from_millis(50);
    let mut waited = Duration::ZERO;
    while waited <= s.liveness_bound() {
        if lock(&monitor).live(&keys, s.tasks) {
            recovery = Some(waited);
            break;
        }
        madsim::time::sleep(step).await;
        waited += step;
    }
    let deadline = madsim::time::Instant::now() + Duration::from_secs(120);
    let mut exits = Vec::new();
    for (id, mut rx) in joins {
        // A crashed machine's first run never reports; its restart does.
        let left = deadline.saturating_duration_since(madsim::time::Instant::now());
        let exit = madsim::time::timeout(left, rx.recv()).await;
        exits.push((id, exit.ok().flatten().map(|e| format!("{e:?}"))));
    }
    let elapsed = start.elapsed();
    let mut app_failures = Vec::new();
    let mut weights = None;
    let lost_model = s.app == App::Regression && report.lost_state();
    if s.app == App::Regression {
        if let Some(step) = report.inconsistency() {
            app_failures.push(format!(
                "regression: two passes over the weights of step {step} disagree"
            ));
        }
        weights = report
            .final_result(s.epochs)
            .map(|(w, _)| w.iter().map(|x| x.to_bits()).collect::<Vec<u64>>());
        match (&weights, reference) {
            (None, _) if !lost_model => {
                app_failures.push("regression: no final weights".to_string());
            }
            (Some(w), Some(r)) if w.as_slice() != r => app_failures.push(format!(
                "regression: final weights {w:x?} differ from the fault-free run's {r:x?}"
            )),
            (Some(_), None) if s.faults > 0 => app_failures
                .push("regression: the fault-free run gave no weights to compare with".to_string()),
            _ => {}
        }
    }
    let mut m = lock(&monitor);
    let end = Instant::from_duration(m.since());
    m.checker.finish(end);
    Outcome {
        results: results.all(),
        exits,
        elapsed,
        log: std::mem::take(&mut m.log),
        trace: std::mem::take(&mut m.trace),
        trace_hash: m.hash.value(),
        fired,
        violations: m.checker.violations().to_vec(),
        recovery,
        vacancies: std::mem::take(&mut m.vacancies),
        takeovers: std::mem::take(&mut m.takeovers),
        revoked: m.revoked,
        weights,
        app_failures,
        lost_model,
    }
}

/// Runs the core's checker over a run's event log after the fact, in order
/// (the checks that need only events: incarnations rise, died/restarted
/// alternate, epochs once and in order, meta/data/serve at most once and
/// within their epoch, no delivery from a fenced incarnation, replica
/// order). Returns every violation.
pub fn check_log(s: &Scenario, log: &[(Duration, NodeId, Event)]) -> Vec<Violation> {
    let tasks = s.tasks;
    let topo = Arc::new(TreeTopology::new(s.fanout, tasks).expect("a valid scenario"));
    let mut checker = Checker::new(JOB, tasks, topo);
    let mut sessions: BTreeMap<NodeId, SessionId> = BTreeMap::new();
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
