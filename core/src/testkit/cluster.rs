//! The simulated world: nodes, store, links and a virtual clock.

use super::checker::{Checker, Violation};
use super::rng::Rng;
use crate::action::{Action, Disconnect, OpId};
use crate::config::NodeConfig;
use crate::store::{MemStore, StoreError, StoreOp, StoreResponse, WatchId, WatchResponse};
use crate::task::TaskBuilder;
use crate::topology::Topology;
use crate::wire::Envelope;
use crate::{Instant, Node, NodeId};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

/// Shape and timing of a simulated cluster.
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    /// Seed of every random choice.
    pub seed: u64,
    /// Job name.
    pub job: String,
    /// Tasks of the job.
    pub num_tasks: u32,
    /// Standbys per task.
    pub standbys: u32,
    /// Nodes beyond `num_tasks × (1 + standbys)`.
    pub spares: u32,
    /// Lease TTL.
    pub ttl: Duration,
    /// Message delay range (min, max).
    pub msg_delay: (Duration, Duration),
    /// Store request and reply delay range (min, max), each way.
    pub store_delay: (Duration, Duration),
    /// After this, a store request that got no answer fails as unavailable.
    pub op_timeout: Duration,
    /// Time for a node to notice a broken connection.
    pub detect_delay: Duration,
    /// Restart limit per task (S7).
    pub max_failures: u32,
    /// Keep a readable trace of every step (slow; for replays).
    pub record_trace: bool,
    /// Nodes start this far apart, in id order.
    pub start_gap: Duration,
    /// Every node's [`NodeConfig::max_payload`].
    pub max_payload: usize,
    /// Every node's [`NodeConfig::max_pending_requests`].
    pub max_pending_requests: usize,
    /// A deliberately broken behaviour switched on in every node (only in
    /// `--cfg madsim` builds).
    #[cfg(madsim)]
    pub canary: Option<crate::Canary>,
}

impl ClusterConfig {
    /// A cluster of `num_tasks` tasks with `standbys` standbys each and `spares` spare nodes.
    pub fn new(seed: u64, num_tasks: u32, standbys: u32, spares: u32) -> Self {
        ClusterConfig {
            seed,
            job: "sim".into(),
            num_tasks,
            standbys,
            spares,
            ttl: Duration::from_secs(2),
            msg_delay: (Duration::from_micros(200), Duration::from_millis(5)),
            store_delay: (Duration::from_micros(300), Duration::from_millis(3)),
            op_timeout: Duration::from_millis(500),
            detect_delay: Duration::from_millis(300),
            max_failures: 1000,
            record_trace: false,
            start_gap: Duration::from_millis(1),
            max_payload: crate::DEFAULT_MAX_PAYLOAD,
            max_pending_requests: 1024,
            #[cfg(madsim)]
            canary: None,
        }
    }

    /// Number of nodes.
    pub fn num_nodes(&self) -> u32 {
        self.num_tasks * (1 + self.standbys) + self.spares
    }

    /// The node configuration used for node `id`.
    pub fn node_config(&self, id: NodeId) -> NodeConfig {
        let mut c = NodeConfig::new(
            id,
            self.job.clone(),
            format!("sim-{}", id.0),
            self.num_tasks,
            self.standbys,
        );
        c.ttl = self.ttl;
        c.max_failures = self.max_failures;
        c.max_payload = self.max_payload;
        c.max_pending_requests = self.max_pending_requests;
        #[cfg(madsim)]
        {
            c.canary = self.canary;
        }
        c
    }
}

/// How many faults of each kind were injected.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FaultCounts {
    /// Nodes crashed (state lost).
    pub crashes: u64,
    /// Nodes restarted after a crash or stop.
    pub restarts: u64,
    /// Nodes stopped cleanly (lease revoked).
    pub shutdowns: u64,
    /// Nodes cut from all peers (both ways).
    pub node_partitions: u64,
    /// Single links cut in one direction.
    pub one_way_partitions: u64,
    /// Single links cut in both directions.
    pub link_partitions: u64,
    /// Nodes cut from the store only.
    pub store_cuts: u64,
    /// Whole-store outages.
    pub store_outages: u64,
    /// Nodes paused longer than the TTL.
    pub pauses: u64,
    /// Links slowed down.
    pub delays: u64,
}

impl FaultCounts {
    /// Adds `other` into `self`.
    pub fn add(&mut self, o: &FaultCounts) {
        self.crashes += o.crashes;
        self.restarts += o.restarts;
        self.shutdowns += o.shutdowns;
        self.node_partitions += o.node_partitions;
        self.one_way_partitions += o.one_way_partitions;
        self.link_partitions += o.link_partitions;
        self.store_cuts += o.store_cuts;
        self.store_outages += o.store_outages;
        self.pauses += o.pauses;
        self.delays += o.delays;
    }

    /// `(kind, count)` for every kind.
    pub fn kinds(&self) -> [(&'static str, u64); 10] {
        [
            ("crash", self.crashes),
            ("restart", self.restarts),
            ("shutdown", self.shutdowns),
            ("node_partition", self.node_partitions),
            ("one_way_partition", self.one_way_partitions),
            ("link_partition", self.link_partitions),
            ("store_cut", self.store_cuts),
            ("store_outage", self.store_outages),
            ("pause", self.pauses),
            ("delay", self.delays),
        ]
    }
}

/// One line of a recorded trace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceEntry {
    /// Virtual time.
    pub at: Instant,
    /// The node concerned (`None`: the store or the harness).
    pub node: Option<NodeId>,
    /// What happened.
    pub what: String,
}

#[derive(Debug)]
enum Ev {
    StoreArrive {
        node: NodeId,
        life: u64,
        id: OpId,
        op: StoreOp,
    },
    StoreReply {
        node: NodeId,
        life: u64,
        id: OpId,
        result: Result<StoreResponse, StoreError>,
    },
    Watch {
        node: NodeId,
        life: u64,
        resp: WatchResponse,
    },
    Msg {
        from: NodeId,
        to: NodeId,
        gen: u64,
        msg: Envelope,
    },
    Disconnect {
        node: NodeId,
        life: u64,
        peer: NodeId,
        how: Disconnect,
    },
}

#[derive(Debug)]
struct Queued {
    at: Instant,
    seq: u64,
    ev: Ev,
}

impl PartialEq for Queued {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Queued {}
impl PartialOrd for Queued {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Queued {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(o.at, o.seq))
    }
}

/// A FIFO channel: deliveries on it never overtake each other.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Chan {
    ToStore(NodeId),
    Reply(NodeId),
    Watch(NodeId),
    Link(NodeId, NodeId),
}

#[derive(Debug)]
struct Slot {
    node: Option<Node>,
    life: u64,
    paused_until: Option<Instant>,
    inbox: Vec<Ev>,
}

#[derive(Clone, Copy, Debug)]
struct Conn {
    gen: u64,
    broken: bool,
}

/// A whole simulated cluster. See the [module docs](super).
pub struct Cluster {
    cfg: ClusterConfig,
    now: Instant,
    rng: Rng,
    store: MemStore,
    topology: Arc<dyn Topology>,
    make_builder: Box<dyn FnMut(NodeId) -> Box<dyn TaskBuilder>>,
    nodes: BTreeMap<NodeId, Slot>,
    queue: BinaryHeap<Reverse<Queued>>,
    next_seq: u64,
    tails: BTreeMap<Chan, Instant>,
    blocked: BTreeSet<(NodeId, NodeId)>,
    slow: BTreeMap<(NodeId, NodeId), Duration>,
    store_cut: BTreeSet<NodeId>,
    outage: bool,
    conns: BTreeMap<(NodeId, NodeId), Conn>,
    watches: BTreeMap<WatchId, (NodeId, u64)>,
    harness_watch: WatchId,
    hash: super::TraceHash,
    checker: Checker,
    faults: FaultCounts,
    trace: Option<Vec<TraceEntry>>,
    events: Vec<(Instant, NodeId, crate::Event)>,
    steps: u64,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("now", &self.now)
            .field("steps", &self.steps)
            .finish_non_exhaustive()
    }
}

impl Cluster {
    /// A cluster whose nodes build tasks with `make_builder(node)`. Nodes
    /// start one millisecond apart, in id order, so that the first
    /// `num_tasks` become primaries (S1).
    pub fn new(
        cfg: ClusterConfig,
        topology: Arc<dyn Topology>,
        make_builder: Box<dyn FnMut(NodeId) -> Box<dyn TaskBuilder>>,
    ) -> Cluster {
        let mut store = MemStore::new();
        let prefix = crate::keys::Keys::new("taskgraph", &cfg.job)
            .prefix()
            .to_string();
        let harness_watch = match store.apply(
            Instant::ZERO,
            StoreOp::Watch {
                prefix,
                start_revision: 0,
            },
        ) {
            Ok(StoreResponse::WatchCreated { watch }) => watch,
            _ => -1,
        };
        let checker = Checker::new(&cfg.job, cfg.num_tasks, topology.clone());
        let mut c = Cluster {
            rng: Rng::new(cfg.seed),
            now: Instant::ZERO,
            store,
            topology,
            make_builder,
            nodes: BTreeMap::new(),
            queue: BinaryHeap::new(),
            next_seq: 0,
            tails: BTreeMap::new(),
            blocked: BTreeSet::new(),
            slow: BTreeMap::new(),
            store_cut: BTreeSet::new(),
            outage: false,
            conns: BTreeMap::new(),
            watches: BTreeMap::new(),
            harness_watch,
            hash: super::TraceHash::new(),
            checker,
            faults: FaultCounts::default(),
            trace: if cfg.record_trace {
                Some(Vec::new())
            } else {
                None
            },
            events: Vec::new(),
            steps: 0,
            cfg,
        };
        for i in 0..c.cfg.num_nodes() {
            let id = NodeId(u64::from(i) + 1);
            c.nodes.insert(
                id,
                Slot {
                    node: None,
                    life: 0,
                    paused_until: None,
                    inbox: Vec::new(),
                },
            );
            c.start_node(id);
            let gap = c.cfg.start_gap;
            c.run_until(c.now + gap);
        }
        c
    }

    /// Adds a node with a new id and starts it (S8: nodes may join at any time).
    pub fn add_node(&mut self) -> NodeId {
        let id = NodeId(self.nodes.keys().next_back().map_or(1, |n| n.0 + 1));
        self.nodes.insert(
            id,
            Slot {
                node: None,
                life: 0,
                paused_until: None,
                inbox: Vec::new(),
            },
        );
        self.start_node(id);
        id
    }

    /// Every event nodes reported, with time and node.
    pub fn events(&self) -> &[(Instant, NodeId, crate::Event)] {
        &self.events
    }

    /// Delivers `msg` to node `to` as if it came from `from` over a live
    /// connection (for tests of bad or stale input).
    pub fn inject_message(&mut self, from: NodeId, to: NodeId, msg: Envelope) {
        let now = self.now;
        self.note(
            Some(to),
            format_args!("injected message from {from:?}: {msg:?}"),
        );
        if let Some(n) = self.node_mut(to) {
            n.handle_message(now, from, msg);
        }
        self.drain(to);
    }

    /// Delivers a watch response to node `to` as if the store sent it on
    /// its current watch (for tests of bad store values).
    pub fn inject_watch(&mut self, to: NodeId, events: Vec<crate::store::WatchEvent>) {
        let Some(watch) = self
            .watches
            .iter()
            .find(|(_, (n, _))| *n == to)
            .map(|(w, _)| *w)
        else {
            return;
        };
        let now = self.now;
        let resp = WatchResponse {
            watch,
            events,
            compact_revision: None,
            canceled: false,
        };
        if let Some(n) = self.node_mut(to) {
            n.handle_store_event(now, resp);
        }
        self.drain(to);
    }

    /// Applies `op` to the store directly (as an operator would).
    pub fn store_apply(&mut self, op: StoreOp) -> Result<StoreResponse, StoreError> {
        let r = self.store.apply(self.now, op);
        self.route_watch_responses();
        r
    }

    // ---- getters ----

    /// Virtual time.
    pub fn now(&self) -> Instant {
        self.now
    }
    /// The configuration.
    pub fn config(&self) -> &ClusterConfig {
        &self.cfg
    }
    /// Node ids, in order.
    pub fn node_ids(&self) -> Vec<NodeId> {
        self.nodes.keys().copied().collect()
    }
    /// A live node (not crashed).
    pub fn node(&self, id: NodeId) -> Option<&Node> {
        self.nodes.get(&id).and_then(|s| s.node.as_ref())
    }
    /// Whether the node is running (not crashed, not stopped).
    pub fn is_up(&self, id: NodeId) -> bool {
        self.node(id).is_some_and(|n| !n.is_stopped())
    }
    /// The store.
    pub fn store(&self) -> &MemStore {
        &self.store
    }
    /// The checker (violations found so far, delivered events).
    pub fn checker(&self) -> &Checker {
        &self.checker
    }
    /// Faults injected so far.
    pub fn faults(&self) -> &FaultCounts {
        &self.faults
    }
    /// Steps taken (inputs delivered).
    pub fn steps(&self) -> u64 {
        self.steps
    }
    /// The trace hash: FNV-1a (128 bit) over every input and output so far.
    pub fn trace_hash(&self) -> u128 {
        self.hash.value()
    }
    /// The recorded trace (if `record_trace`).
    pub fn trace(&self) -> &[TraceEntry] {
        self.trace.as_deref().unwrap_or(&[])
    }
    /// The node believed primary of task `t` by a running, unpaused node.
    pub fn primary_of(&self, t: crate::TaskId) -> Option<NodeId> {
        self.nodes
            .iter()
            .filter(|(_, s)| s.paused_until.is_none())
            .find(|(_, s)| {
                s.node
                    .as_ref()
                    .and_then(|n| n.primary_of())
                    .is_some_and(|(task, _)| task == t)
            })
            .map(|(id, _)| *id)
    }
    /// Random draws for fault schedules (shares the run's seed).
    pub fn rng(&mut self) -> &mut Rng {
        &mut self.rng
    }

    // ---- trace ----

    fn note(&mut self, node: Option<NodeId>, what: std::fmt::Arguments<'_>) {
        let mut s = String::new();
        let _ = write!(
            s,
            "{} {:?} {}",
            self.now.since_origin().as_nanos(),
            node.map(|n| n.0),
            what
        );
        self.hash.update(s.as_bytes());
        if let Some(t) = self.trace.as_mut() {
            t.push(TraceEntry {
                at: self.now,
                node,
                what: what.to_string(),
            });
        }
    }

    // ---- scheduling ----

    fn push(&mut self, at: Instant, ev: Ev) {
        self.next_seq += 1;
        self.queue.push(Reverse(Queued {
            at,
            seq: self.next_seq,
            ev,
        }));
    }

    /// Schedules `ev` on FIFO channel `chan` after a random delay in `range`.
    fn push_fifo(&mut self, chan: Chan, range: (Duration, Duration), ev: Ev) {
        let lo = range.0.as_nanos() as u64;
        let hi = range.1.as_nanos() as u64;
        let mut at = self.now + Duration::from_nanos(self.rng.range(lo, hi.max(lo + 1)));
        if let Chan::Link(a, b) = chan {
            if let Some(extra) = self.slow.get(&(a, b)) {
                at = at + *extra;
            }
        }
        let tail = self.tails.get(&chan).copied().unwrap_or(Instant::ZERO);
        if at < tail {
            at = tail;
        }
        self.tails.insert(chan, at);
        self.push(at, ev);
    }

    fn life(&self, n: NodeId) -> u64 {
        self.nodes.get(&n).map_or(0, |s| s.life)
    }

    fn cut_from_store(&self, n: NodeId) -> bool {
        self.outage || self.store_cut.contains(&n)
    }

    // ---- running ----

    /// The time of the next thing that will happen, if anything will.
    pub fn next_time(&self) -> Option<Instant> {
        let mut t = self.queue.peek().map(|q| q.0.at);
        let mut min = |x: Instant| t = Some(t.map_or(x, |y: Instant| y.min(x)));
        if let Some(d) = self.store.next_deadline() {
            min(d);
        }
        for s in self.nodes.values() {
            match (s.paused_until, &s.node) {
                (Some(p), Some(_)) => min(p),
                (None, Some(n)) => {
                    if let Some(x) = n.poll_timeout() {
                        min(x);
                    }
                }
                _ => {}
            }
        }
        t
    }

    /// Takes one step: the earliest event, timer, lease expiry or resume.
    /// Returns false if nothing is left to happen.
    pub fn step(&mut self) -> bool {
        let Some(t) = self.next_time() else {
            return false;
        };
        if t > self.now {
            self.now = t;
        }
        self.steps += 1;
        // Store lease expiry first: the store acts on its own clock.
        if self.store.next_deadline().is_some_and(|d| d <= self.now) {
            self.store.expire_leases(self.now);
            self.note(None, format_args!("store expired leases"));
            self.route_watch_responses();
            return true;
        }
        // Resumes, then node timers, in node order.
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        for id in &ids {
            let resume = self
                .nodes
                .get(id)
                .is_some_and(|s| s.paused_until.is_some_and(|p| p <= self.now));
            if resume {
                self.resume(*id);
                return true;
            }
        }
        for id in &ids {
            let due = self
                .node(*id)
                .and_then(|n| n.poll_timeout())
                .is_some_and(|x| x <= self.now)
                && self.nodes.get(id).is_some_and(|s| s.paused_until.is_none());
            if due {
                self.note(Some(*id), format_args!("timeout"));
                let now = self.now;
                if let Some(n) = self.node_mut(*id) {
                    n.handle_timeout(now);
                }
                self.drain(*id);
                if self
                    .node(*id)
                    .and_then(|n| n.poll_timeout())
                    .is_some_and(|x| x <= now)
                {
                    // A timer that does not move after firing would spin
                    // forever at this instant.
                    self.checker.violation(
                        now,
                        format!("liveness: {id} keeps asking for a timeout at {now}"),
                    );
                    self.crash(*id);
                }
                return true;
            }
        }
        if self.queue.peek().is_some_and(|q| q.0.at <= self.now) {
            if let Some(Reverse(q)) = self.queue.pop() {
                self.deliver(q.ev);
            }
            return true;
        }
        true
    }

    /// Steps until virtual time `until` (or nothing is left).
    pub fn run_until(&mut self, until: Instant) {
        while self.next_time().is_some_and(|t| t <= until) {
            self.step();
        }
        if self.now < until {
            self.now = until;
        }
    }

    /// Steps until `done(self)` holds or virtual time passes `deadline`;
    /// returns whether `done` held.
    pub fn run_until_pred(
        &mut self,
        deadline: Instant,
        mut done: impl FnMut(&Cluster) -> bool,
    ) -> bool {
        loop {
            if done(self) {
                return true;
            }
            match self.next_time() {
                Some(t) if t <= deadline => {
                    self.step();
                }
                _ => {
                    self.now = self.now.max(deadline);
                    return done(self);
                }
            }
        }
    }

    fn node_mut(&mut self, id: NodeId) -> Option<&mut Node> {
        self.nodes.get_mut(&id).and_then(|s| s.node.as_mut())
    }

    fn deliver(&mut self, ev: Ev) {
        let Some(ev) = self.admit(ev) else { return };
        match ev {
            Ev::StoreArrive { node, life, id, op } => {
                if self.cut_from_store(node) {
                    self.note(Some(node), format_args!("store request {id:?} lost"));
                    let at = self.now + self.cfg.op_timeout;
                    let result = Err(StoreError::Unavailable("request lost".into()));
                    self.push(
                        at,
                        Ev::StoreReply {
                            node,
                            life,
                            id,
                            result,
                        },
                    );
                    return;
                }
                let watch = matches!(op, StoreOp::Watch { .. });
                let cancel = if let StoreOp::CancelWatch { watch } = op {
                    Some(watch)
                } else {
                    None
                };
                let result = self.store.apply(self.now, op);
                self.note(
                    None,
                    format_args!("store applied {id:?} for {node:?}: {result:?}"),
                );
                if let (true, Ok(StoreResponse::WatchCreated { watch })) = (watch, &result) {
                    self.watches.insert(*watch, (node, life));
                }
                if let Some(w) = cancel {
                    self.watches.remove(&w);
                }
                // A watch's creation is answered on its own stream, ahead of
                // its events (as etcd's watch stream does).
                let chan = if watch {
                    Chan::Watch(node)
                } else {
                    Chan::Reply(node)
                };
                let range = self.cfg.store_delay;
                self.push_fifo(
                    chan,
                    range,
                    Ev::StoreReply {
                        node,
                        life,
                        id,
                        result,
                    },
                );
                self.route_watch_responses();
            }
            Ev::StoreReply {
                node,
                life: _,
                id,
                result,
            } => {
                let result = if self.cut_from_store(node) && result.is_ok() {
                    Err(StoreError::Unavailable("reply lost".into()))
                } else {
                    result
                };
                self.note(Some(node), format_args!("store result {id:?}: {result:?}"));
                let now = self.now;
                if let Some(n) = self.node_mut(node) {
                    n.handle_store_result(now, id, result);
                }
                self.drain(node);
            }
            Ev::Watch { node, resp, .. } => {
                self.note(Some(node), format_args!("watch {resp:?}"));
                let now = self.now;
                if let Some(n) = self.node_mut(node) {
                    n.handle_store_event(now, resp);
                }
                self.drain(node);
            }
            Ev::Msg { from, to, msg, .. } => {
                self.note(Some(to), format_args!("message from {from:?}: {msg:?}"));
                let now = self.now;
                if let Some(n) = self.node_mut(to) {
                    n.handle_message(now, from, msg);
                }
                self.drain(to);
            }
            Ev::Disconnect {
                node, peer, how, ..
            } => {
                self.note(
                    Some(node),
                    format_args!("disconnected from {peer:?}: {how:?}"),
                );
                let now = self.now;
                if let Some(n) = self.node_mut(node) {
                    n.handle_disconnect(now, peer, how);
                }
                self.drain(node);
            }
        }
    }

    /// Whether `ev`, bound for a node, should be dropped (an earlier life of
    /// the node, a connection that is gone) or held (the node is paused);
    /// returns the event back if it is to be delivered now.
    fn admit(&mut self, ev: Ev) -> Option<Ev> {
        let target = match &ev {
            Ev::StoreArrive { .. } => return Some(ev),
            Ev::StoreReply { node, life, .. }
            | Ev::Watch { node, life, .. }
            | Ev::Disconnect { node, life, .. } => {
                if *life != self.life(*node) {
                    return None;
                }
                *node
            }
            Ev::Msg { from, to, gen, .. } => {
                let (from, to) = (*from, *to);
                let live = self
                    .conns
                    .get(&(from, to))
                    .is_some_and(|c| c.gen == *gen && !c.broken);
                if !live {
                    return None;
                }
                if self.blocked.contains(&(from, to)) || !self.is_up(to) {
                    self.break_conn(from, to);
                    return None;
                }
                to
            }
        };
        match self.nodes.get_mut(&target) {
            Some(s) if s.paused_until.is_some() => {
                s.inbox.push(ev);
                None
            }
            _ => Some(ev),
        }
    }

    fn route_watch_responses(&mut self) {
        while let Some(resp) = self.store.poll_watch_response() {
            if resp.watch == self.harness_watch {
                let now = self.now;
                self.checker.on_store_events(now, &resp.events);
                continue;
            }
            let Some((node, life)) = self.watches.get(&resp.watch).copied() else {
                continue;
            };
            let range = self.cfg.store_delay;
            self.push_fifo(Chan::Watch(node), range, Ev::Watch { node, life, resp });
        }
    }

    /// Breaks the connection from `a` to `b` without evidence about `b`,
    /// noticed after `detect_delay` (a heartbeat timeout).
    fn break_conn(&mut self, a: NodeId, b: NodeId) {
        self.break_conn_as(a, b, Disconnect::Broken, self.cfg.detect_delay);
    }

    /// A round trip at the longest message delay: how long a refused
    /// connect, a handshake or a reset takes to be noticed.
    fn round_trip(&self) -> Duration {
        self.cfg.msg_delay.1 * 2
    }

    /// Breaks the connection from `a` to `b`, reported as `how` after `delay`.
    fn break_conn_as(&mut self, a: NodeId, b: NodeId, how: Disconnect, delay: Duration) {
        let life = self.life(a);
        if let Some(c) = self.conns.get_mut(&(a, b)) {
            if !c.broken {
                c.broken = true;
                let at = self.now + delay;
                self.push(
                    at,
                    Ev::Disconnect {
                        node: a,
                        life,
                        peer: b,
                        how,
                    },
                );
            }
        }
    }

    /// Carries out every action of node `id` (the driver's half of the contract).
    fn drain(&mut self, id: NodeId) {
        loop {
            let Some(action) = self.node_mut(id).and_then(|n| n.poll_action()) else {
                break;
            };
            self.note(Some(id), format_args!("{action:?}"));
            match action {
                Action::Store { id: op_id, op } => {
                    let life = self.life(id);
                    if self.cut_from_store(id) {
                        let at = self.now + self.cfg.op_timeout;
                        let result = Err(StoreError::Unavailable("store unreachable".into()));
                        self.push(
                            at,
                            Ev::StoreReply {
                                node: id,
                                life,
                                id: op_id,
                                result,
                            },
                        );
                    } else {
                        let range = self.cfg.store_delay;
                        self.push_fifo(
                            Chan::ToStore(id),
                            range,
                            Ev::StoreArrive {
                                node: id,
                                life,
                                id: op_id,
                                op,
                            },
                        );
                    }
                }
                Action::Connect { node, session, .. } => {
                    let gen = self.conns.get(&(id, node)).map_or(0, |c| c.gen) + 1;
                    self.conns.insert((id, node), Conn { gen, broken: false });
                    // What a real connect would show: nothing through a
                    // partition; a refusal from the host of a process that
                    // is gone; the handshake of a newer session.
                    let answered = self
                        .node(node)
                        .filter(|n| !n.is_stopped())
                        .map(Node::session);
                    let rtt = self.round_trip();
                    if self.blocked.contains(&(id, node)) {
                        self.break_conn(id, node);
                    } else if let Some(now_session) = answered {
                        if now_session != session {
                            let how = Disconnect::OtherSession(now_session);
                            self.break_conn_as(id, node, how, rtt);
                        }
                    } else {
                        self.break_conn_as(id, node, Disconnect::Refused, rtt);
                    }
                }
                Action::Send { to, msg } => {
                    let session = self.node(id).map(|n| n.session());
                    self.checker
                        .on_send(self.now, id, session, &msg, &self.store);
                    let Some(c) = self.conns.get(&(id, to)).copied() else {
                        continue;
                    };
                    if c.broken {
                        continue;
                    }
                    if self.blocked.contains(&(id, to)) {
                        self.break_conn(id, to);
                        continue;
                    }
                    let range = self.cfg.msg_delay;
                    self.push_fifo(
                        Chan::Link(id, to),
                        range,
                        Ev::Msg {
                            from: id,
                            to,
                            gen: c.gen,
                            msg,
                        },
                    );
                }
                Action::Close { node } => {
                    self.conns.remove(&(id, node));
                }
                Action::Event(ev) => {
                    let session = self.node(id).map(|n| n.session()).unwrap_or_default();
                    self.checker
                        .on_event(self.now, id, session, &ev, Some(&self.store));
                    self.events.push((self.now, id, ev));
                }
            }
        }
        self.check_primaries();
    }

    fn check_primaries(&mut self) {
        let mut holders: BTreeMap<crate::TaskId, Vec<NodeId>> = BTreeMap::new();
        for (id, s) in &self.nodes {
            if s.paused_until.is_some() {
                continue;
            }
            if let Some((t, _)) = s.node.as_ref().and_then(|n| n.primary_of()) {
                holders.entry(t).or_default().push(*id);
            }
        }
        let now = self.now;
        for (t, ns) in holders {
            if ns.len() > 1 {
                self.checker.violation(
                    now,
                    format!("S3: task {t} has {} primaries: {ns:?}", ns.len()),
                );
            }
        }
    }

    // ---- nodes ----

    fn start_node(&mut self, id: NodeId) {
        let cfg = self.cfg.node_config(id);
        let builder = (self.make_builder)(id);
        let now = self.now;
        match Node::new(now, cfg, self.topology.clone(), builder) {
            Ok(node) => {
                if let Some(s) = self.nodes.get_mut(&id) {
                    s.node = Some(node);
                    s.life += 1;
                    s.paused_until = None;
                    s.inbox.clear();
                }
                self.note(Some(id), format_args!("started"));
                self.drain(id);
            }
            Err(e) => {
                self.checker
                    .violation(now, format!("node {id} could not be created: {e}"));
            }
        }
    }

    /// Crashes node `id`: its state is lost; peers see connections reset.
    pub fn crash(&mut self, id: NodeId) {
        let Some(s) = self.nodes.get_mut(&id) else {
            return;
        };
        if s.node.is_none() {
            return;
        }
        s.node = None;
        s.life += 1;
        s.paused_until = None;
        s.inbox.clear();
        self.faults.crashes += 1;
        self.checker.on_crash(self.now, id);
        self.note(Some(id), format_args!("crashed"));
        let owned: Vec<WatchId> = self
            .watches
            .iter()
            .filter(|(_, (n, _))| *n == id)
            .map(|(w, _)| *w)
            .collect();
        for w in owned {
            self.store.cancel_watch(w);
            self.watches.remove(&w);
        }
        let peers: Vec<NodeId> = self
            .conns
            .keys()
            .filter(|(_, b)| *b == id)
            .map(|(a, _)| *a)
            .collect();
        // The dead process's host resets its connections at once, unless a
        // partition stands between them.
        let rtt = self.round_trip();
        for a in peers {
            if self.blocked.contains(&(id, a)) {
                self.break_conn(a, id);
            } else {
                self.break_conn_as(a, id, Disconnect::Broken, rtt);
            }
        }
        self.conns.retain(|(a, _), _| *a != id);
        self.check_primaries();
    }

    /// Restarts a crashed or stopped node as a new session.
    pub fn restart(&mut self, id: NodeId) {
        if self.is_up(id) {
            return;
        }
        if self.node(id).is_some() {
            // Stopped cleanly: drop the old state first.
            if let Some(s) = self.nodes.get_mut(&id) {
                s.node = None;
                s.life += 1;
            }
            self.conns.retain(|(a, _), _| *a != id);
        }
        self.faults.restarts += 1;
        self.start_node(id);
    }

    /// Stops node `id` cleanly: it revokes its lease (S6).
    pub fn shutdown(&mut self, id: NodeId) {
        if !self.is_up(id)
            || self
                .nodes
                .get(&id)
                .is_some_and(|s| s.paused_until.is_some())
        {
            return;
        }
        self.faults.shutdowns += 1;
        self.note(Some(id), format_args!("shutdown"));
        let now = self.now;
        if let Some(n) = self.node_mut(id) {
            n.shutdown(now);
        }
        self.drain(id);
    }

    /// Pauses node `id` for `d`: it handles nothing, its timers do not fire,
    /// messages to it wait (a stopped process, or a long GC pause).
    pub fn pause(&mut self, id: NodeId, d: Duration) {
        let until = self.now + d;
        let Some(s) = self.nodes.get_mut(&id) else {
            return;
        };
        if s.node.is_none() || s.paused_until.is_some() {
            return;
        }
        s.paused_until = Some(until);
        self.faults.pauses += 1;
        self.note(Some(id), format_args!("paused until {until}"));
    }

    fn resume(&mut self, id: NodeId) {
        let inbox = match self.nodes.get_mut(&id) {
            Some(s) => {
                s.paused_until = None;
                std::mem::take(&mut s.inbox)
            }
            None => return,
        };
        self.note(Some(id), format_args!("resumed"));
        let now = self.now;
        if let Some(n) = self.node_mut(id) {
            n.handle_timeout(now);
        }
        self.drain(id);
        for ev in inbox {
            self.deliver(ev);
        }
    }

    /// Cuts node `id` from every peer, both ways.
    pub fn partition_node(&mut self, id: NodeId) {
        self.faults.node_partitions += 1;
        for other in self.node_ids() {
            if other != id {
                self.block(id, other);
                self.block(other, id);
            }
        }
    }

    /// Cuts the link `a -> b` (and `b -> a` unless `one_way`).
    pub fn partition_link(&mut self, a: NodeId, b: NodeId, one_way: bool) {
        if one_way {
            self.faults.one_way_partitions += 1;
        } else {
            self.faults.link_partitions += 1;
            self.block(b, a);
        }
        self.block(a, b);
    }

    fn block(&mut self, a: NodeId, b: NodeId) {
        self.blocked.insert((a, b));
        self.break_conn(a, b);
    }

    /// Cuts node `id` from the store (its requests fail, its watch breaks).
    pub fn cut_store(&mut self, id: NodeId) {
        self.faults.store_cuts += 1;
        self.store_cut.insert(id);
        self.break_watches(|n| n == id);
    }

    /// Makes the store unreachable for every node, keeping its data.
    pub fn store_outage(&mut self) {
        self.faults.store_outages += 1;
        self.outage = true;
        self.break_watches(|_| true);
    }

    fn break_watches(&mut self, which: impl Fn(NodeId) -> bool) {
        let owned: Vec<(WatchId, NodeId, u64)> = self
            .watches
            .iter()
            .filter(|(_, (n, _))| which(*n))
            .map(|(w, (n, l))| (*w, *n, *l))
            .collect();
        for (w, node, life) in owned {
            self.store.cancel_watch(w);
            self.watches.remove(&w);
            let resp = WatchResponse {
                watch: w,
                events: Vec::new(),
                compact_revision: None,
                canceled: true,
            };
            let at = self.now + self.cfg.detect_delay;
            self.push(at, Ev::Watch { node, life, resp });
        }
    }

    /// Messages `from` has in flight.
    pub fn in_flight_from(&self, from: NodeId) -> usize {
        self.queue
            .iter()
            .filter(|q| matches!(&q.0.ev, Ev::Msg { from: f, .. } if *f == from))
            .count()
    }

    /// Holds every message `from` has in flight for `extra` longer (each
    /// link stays in order): what a sender's buffered packets do while it
    /// is paused.
    pub fn delay_in_flight(&mut self, from: NodeId, extra: Duration) {
        let queued = std::mem::take(&mut self.queue).into_vec();
        for Reverse(mut q) in queued {
            if let Ev::Msg { from: f, to, .. } = &q.ev {
                if *f == from {
                    q.at = q.at + extra;
                    let tail = self.tails.entry(Chan::Link(from, *to)).or_insert(q.at);
                    if *tail < q.at {
                        *tail = q.at;
                    }
                }
            }
            self.queue.push(Reverse(q));
        }
        self.note(
            Some(from),
            format_args!("in-flight messages held {extra:?}"),
        );
    }

    /// Adds `extra` delay to every later message on `a -> b`.
    pub fn slow_link(&mut self, a: NodeId, b: NodeId, extra: Duration) {
        self.faults.delays += 1;
        self.slow.insert((a, b), extra);
    }

    /// Ends every partition, store cut, outage and slow link.
    pub fn heal(&mut self) {
        self.note(None, format_args!("heal"));
        self.blocked.clear();
        self.store_cut.clear();
        self.outage = false;
        self.slow.clear();
    }

    /// Heals one node's store cut.
    pub fn heal_store(&mut self, id: NodeId) {
        self.store_cut.remove(&id);
    }

    /// Ends a store outage.
    pub fn end_outage(&mut self) {
        self.outage = false;
    }

    /// Ends the partitions of node `id`.
    pub fn heal_node(&mut self, id: NodeId) {
        self.blocked.retain(|(a, b)| *a != id && *b != id);
    }

    /// Runs the end-of-run checks and returns every violation found.
    pub fn finish(&mut self) -> Vec<Violation> {
        let now = self.now;
        self.checker.finish(now);
        self.checker.violations().to_vec()
    }
}
