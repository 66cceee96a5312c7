//! [`Node`]: one member of a job, as a deterministic state machine.
//!
//! # Driving a node
//!
//! A driver feeds inputs with the `handle_*` methods (each takes `now`) and,
//! **after every input, drains every output** before the next input:
//! [`Node::poll_action`] until it returns `None`, then arms one timer for
//! [`Node::poll_timeout`] and calls [`Node::handle_timeout`] when it fires.
//! The node never reads a clock, never draws a random number and never
//! lets hash-map order reach an output, so the same inputs always give the
//! same outputs.
//!
//! The application's [`Task`](crate::Task) is called from inside the
//! inputs, with a [`Context`](crate::Context) that only records commands, so
//! the node and its application form one state machine.

mod app;
mod messaging;
mod roles;
mod session;
pub(crate) mod view;

use crate::action::{Action, Disconnect, Event, OpId, StepDownReason};
use crate::config::{ConfigError, JobSpec, NodeConfig, PROTOCOL_VERSION};
use crate::keys::Keys;
use crate::store::{LeaseId, Revision, StoreError, StoreResponse, WatchId, WatchResponse};
use crate::task::{Context, ExitReason, Task, TaskBuilder};
use crate::topology::Topology;
use crate::wire::{Envelope, RequestId};
use crate::{Epoch, Incarnation, Instant, NodeId, SessionId, TaskId};
use bytes::Bytes;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;
use view::View;

/// The role a node holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Holds no task; waits to fill a slot (S1, S8).
    Spare,
    /// Standby of `task` in standby slot `slot`.
    Standby {
        /// The task.
        task: TaskId,
        /// The slot.
        slot: u32,
        /// Create revision of the standby key (its place in succession order).
        since: Revision,
    },
    /// Primary of `task`.
    Primary {
        /// The task.
        task: TaskId,
        /// Its incarnation.
        incarnation: Incarnation,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Waiting for a lease.
    Granting,
    /// Creating the job config (if absent) and registering the node.
    Joining,
    /// Reading the whole job state.
    Listing,
    /// Watching the store and acting.
    Running,
    /// Done; no more outputs.
    Stopped,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum OpKind {
    Grant,
    Join,
    List,
    Watch,
    KeepAlive {
        sent: Instant,
        lease: LeaseId,
    },
    ClaimPrimary {
        task: TaskId,
        promoted: bool,
    },
    ClaimStandby {
        task: TaskId,
        slot: u32,
    },
    Advance {
        from: Epoch,
        retried: bool,
    },
    /// The application's exit_job / fail_job.
    Exit,
    /// Ending the job because a task failed too often (S7).
    FailureLimit,
    /// Results nobody waits for (revoking an old lease, canceling a watch).
    Ignored,
}

#[derive(Clone, Debug)]
struct Session {
    lease: LeaseId,
    /// Send time of the latest renewal (or the grant) that succeeded.
    renewed_sent: Instant,
    next_renew: Instant,
}

#[derive(Clone, Debug)]
struct PendingRequest {
    to: TaskId,
    req: Bytes,
    /// Where it was last sent (node, target incarnation).
    sent: Option<(NodeId, Incarnation)>,
    /// How many times it was handed to a connection.
    attempts: u32,
}

#[derive(Clone, Debug)]
struct Serving {
    from: TaskId,
    from_incarnation: Incarnation,
    id: RequestId,
    reply_to: NodeId,
}

/// State of a primary for its current incarnation and epoch.
#[derive(Debug, Default)]
struct PrimaryState {
    /// The epoch delivered to the task.
    epoch: Option<Epoch>,
    parents: Vec<TaskId>,
    children: Vec<TaskId>,
    /// Meta flags of the current epoch: (direction, number, payload).
    flags: Vec<(crate::wire::Direction, u32, Bytes)>,
    pending: BTreeMap<RequestId, PendingRequest>,
    serving: BTreeMap<u64, Serving>,
    serving_index: BTreeMap<(TaskId, Incarnation, RequestId), u64>,
    /// Answers given this epoch, and the node each went to (resent when the
    /// connection to that node is reopened: a reply may have been lost).
    reply_cache: BTreeMap<(TaskId, Incarnation, RequestId), (Bytes, NodeId)>,
    next_serve: u64,
    delivered_meta: BTreeSet<(TaskId, Incarnation, u32)>,
    /// Neighbours whose death was delivered, waiting for a restart.
    dead: BTreeMap<TaskId, Incarnation>,
    /// This incarnation's replication log.
    replica_log: Vec<Bytes>,
    /// The application's timers: (deadline, order) -> token.
    timers: BTreeMap<(Instant, u64), u64>,
}

/// State of a standby.
#[derive(Debug, Default)]
struct StandbyState {
    /// Incarnation of the primary whose log is being applied, and how much of it.
    applied: (Incarnation, u64),
}

#[derive(Debug)]
struct Peer {
    session: SessionId,
    /// A connection was opened and no failure reported since.
    open: bool,
    retry_at: Option<Instant>,
    backoff: Duration,
    /// When the current connection was asked for.
    opened: Instant,
    /// This node already revoked the peer session's lease.
    revoked: bool,
}

/// Counters of what a node did, for benchmarks and tests.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeStats {
    /// Inputs handled.
    pub inputs: u64,
    /// Store operations issued.
    pub store_ops: u64,
    /// Store writes issued (put, txn, delete).
    pub store_writes: u64,
    /// Messages sent.
    pub messages_sent: u64,
    /// Messages dropped.
    pub messages_dropped: u64,
    /// Peer sessions whose lease this node revoked on evidence of their
    /// process's death.
    pub peers_revoked: u64,
}

/// One member of a job, as a sans-IO state machine. Feed it inputs with the
/// `handle_*` methods and, **after every input, drain every action**
/// ([`Node::poll_action`] until `None`), then arm one timer for
/// [`Node::poll_timeout`].
pub struct Node {
    cfg: NodeConfig,
    keys: Keys,
    spec: JobSpec,
    job_tag: u64,
    topology: Arc<dyn Topology>,
    builder: Box<dyn TaskBuilder>,

    actions: VecDeque<Action>,
    next_op: u64,
    ops: BTreeMap<OpId, OpKind>,
    phase: Phase,
    session: Option<Session>,
    session_id: SessionId,
    view: View,
    watch: Option<WatchId>,
    retry_at: Option<Instant>,
    backoff: Duration,
    /// When the current lease grant was requested: the lease's TTL is
    /// counted from here until the first renewal succeeds (S2).
    grant_sent: Instant,
    /// The watch lost history (compaction): list again before watching.
    relist_needed: bool,
    /// An epoch advance or job exit that must be retried after a store failure.
    retry_advance: Option<Epoch>,
    retry_exit: Option<ExitReason>,

    role: Role,
    task: Option<Box<dyn Task>>,
    ctx: Context,
    primary: PrimaryState,
    standby: StandbyState,

    peers: BTreeMap<NodeId, Peer>,
    inbound_seq: BTreeMap<(NodeId, SessionId), u64>,
    /// Sequence number of the last message sent (S16).
    out_seq: u64,
    /// Orders application timers with the same deadline.
    timer_seq: u64,
    highest: Vec<Incarnation>,
    /// Per task, the highest incarnation seen to die: its messages are fenced.
    dead_upto: Vec<Incarnation>,
    /// Messages waiting for a role, epoch or revision: (arrival, peer, message).
    held: VecDeque<(Instant, NodeId, Envelope)>,

    exit: Option<ExitReason>,
    stats: NodeStats,
    /// The `now` of the input being handled.
    now: Instant,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("node", &self.cfg.node)
            .field("session", &self.session_id)
            .field("phase", &self.phase)
            .field("role", &self.role)
            .field("epoch", &self.view.epoch)
            .finish_non_exhaustive()
    }
}

/// Why a node could not be created.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// The configuration breaks a relation.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The topology is invalid at epoch 0.
    #[error(transparent)]
    Topology(#[from] crate::topology::TopologyError),
    /// The topology's task count differs from the configuration's.
    #[error("topology has {topology} tasks but the configuration says {config}")]
    TaskCount {
        /// Tasks in the topology.
        topology: u32,
        /// Tasks in the configuration.
        config: u32,
    },
}

impl Node {
    /// A node that will join the job described by `cfg`, running tasks made
    /// by `builder` over `topology`. Its first action is a lease grant.
    pub fn new(
        now: Instant,
        cfg: NodeConfig,
        topology: Arc<dyn Topology>,
        builder: Box<dyn TaskBuilder>,
    ) -> Result<Node, NodeError> {
        cfg.validate()?;
        if topology.num_tasks() != cfg.num_tasks {
            return Err(NodeError::TaskCount {
                topology: topology.num_tasks(),
                config: cfg.num_tasks,
            });
        }
        topology.validate(Epoch(0))?;
        let spec = JobSpec {
            num_tasks: cfg.num_tasks,
            standbys_per_task: cfg.standbys_per_task,
            protocol_version: PROTOCOL_VERSION,
            topology: topology.fingerprint(),
        };
        let mut node = Node {
            keys: Keys::new(&cfg.root, &cfg.job),
            job_tag: crate::wire::job_tag(&cfg.job),
            spec,
            topology,
            builder,
            actions: VecDeque::new(),
            next_op: 0,
            ops: BTreeMap::new(),
            phase: Phase::Granting,
            session: None,
            session_id: SessionId(0),
            view: View::new(cfg.num_tasks),
            watch: None,
            retry_at: None,
            backoff: cfg.backoff,
            grant_sent: now,
            relist_needed: false,
            retry_advance: None,
            retry_exit: None,
            role: Role::Spare,
            task: None,
            ctx: Context::new(cfg.node, TaskId(0), cfg.limits()),
            primary: PrimaryState::default(),
            standby: StandbyState::default(),
            peers: BTreeMap::new(),
            inbound_seq: BTreeMap::new(),
            out_seq: 0,
            timer_seq: 0,
            highest: vec![Incarnation(0); cfg.num_tasks as usize],
            dead_upto: vec![Incarnation(0); cfg.num_tasks as usize],
            held: VecDeque::new(),
            exit: None,
            stats: NodeStats::default(),
            now,
            cfg,
        };
        node.start_session(now);
        Ok(node)
    }

    // ---- getters ----

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.cfg.node
    }
    /// The configuration.
    pub fn config(&self) -> &NodeConfig {
        &self.cfg
    }
    /// The current session (0 before the first lease is granted).
    pub fn session(&self) -> SessionId {
        self.session_id
    }
    /// The role this node holds.
    pub fn role(&self) -> Role {
        self.role
    }
    /// `(task, incarnation)` if this node believes it is a primary.
    pub fn primary_of(&self) -> Option<(TaskId, Incarnation)> {
        match self.role {
            Role::Primary { task, incarnation } if self.phase != Phase::Stopped => {
                Some((task, incarnation))
            }
            _ => None,
        }
    }
    /// The latest epoch this node has seen in the store.
    pub fn epoch(&self) -> Epoch {
        self.view.epoch
    }
    /// Whether the node has stopped (the job ended, it was shut down, or it was refused).
    pub fn is_stopped(&self) -> bool {
        self.phase == Phase::Stopped
    }
    /// The job's exit reason, once this node has seen it.
    pub fn exit_reason(&self) -> Option<&ExitReason> {
        self.exit.as_ref()
    }
    /// Counters.
    pub fn stats(&self) -> &NodeStats {
        &self.stats
    }

    // ---- outputs ----

    /// The next output, or `None` when all are drained.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// The earliest instant at which [`Node::handle_timeout`] must be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.phase == Phase::Stopped {
            return None;
        }
        let mut t: Option<Instant> = self.retry_at;
        let mut min = |x: Instant| t = Some(t.map_or(x, |y| y.min(x)));
        if let Some(s) = &self.session {
            min(s.next_renew);
            min(self.step_down_deadline(s));
        }
        for p in self.peers.values() {
            if let Some(r) = p.retry_at {
                min(r);
            }
        }
        if let Some((arrived, _, _)) = self.held.front() {
            min(*arrived + self.cfg.ttl * 2);
        }
        if let Some(((at, _), _)) = self.primary.timers.iter().next() {
            min(*at);
        }
        t
    }

    // ---- inputs ----

    /// A timer set from [`Node::poll_timeout`] fired (early or late calls are harmless).
    pub fn handle_timeout(&mut self, now: Instant) {
        if !self.input(now) {
            return;
        }
        if let Some(s) = &self.session {
            if now >= s.next_renew {
                let lease = s.lease;
                let next = now + self.cfg.renew_interval;
                if let Some(s) = self.session.as_mut() {
                    s.next_renew = next;
                }
                self.store_op(
                    OpKind::KeepAlive { sent: now, lease },
                    crate::store::StoreOp::LeaseKeepAlive { lease },
                );
            }
        }
        if self.retry_at.is_some_and(|r| now >= r) {
            self.retry_at = None;
            self.retry(now);
        }
        self.retry_peers(now);
        self.fire_timers(now);
        let expired = self
            .held
            .front()
            .is_some_and(|(arrived, _, _)| now >= *arrived + self.cfg.ttl * 2);
        if expired && self.phase == Phase::Running {
            self.release_held(now);
        }
    }

    /// The result of the store operation `id`.
    pub fn handle_store_result(
        &mut self,
        now: Instant,
        id: OpId,
        result: Result<StoreResponse, StoreError>,
    ) {
        let Some(kind) = self.ops.remove(&id) else {
            tracing::debug!(node = %self.cfg.node, ?id, "result of an unknown store op");
            return;
        };
        if let OpKind::KeepAlive { sent, lease } = &kind {
            // A renewal counts even if the node has since stopped acting; the
            // deadline is checked below from the updated state.
            self.on_keepalive(now, *sent, *lease, &result);
            self.input(now);
            return;
        }
        if !self.input(now) {
            return;
        }
        match result {
            Ok(resp) => {
                self.backoff = self.cfg.backoff;
                self.on_store_ok(now, kind, resp);
            }
            Err(err) => self.on_store_err(now, kind, err),
        }
    }

    /// Events of the node's watch.
    pub fn handle_store_event(&mut self, now: Instant, resp: WatchResponse) {
        if !self.input(now) {
            return;
        }
        self.on_watch(now, resp);
    }

    /// A message from `from` (as identified by the connection it came on).
    pub fn handle_message(&mut self, now: Instant, from: NodeId, msg: Envelope) {
        if !self.input(now) {
            return;
        }
        self.on_message(now, from, msg);
    }

    /// The connection to `node` failed or broke; messages sent on it may be
    /// lost. `how` says what the failure shows about the peer's process: on
    /// evidence that it is gone ([`Disconnect::Refused`],
    /// [`Disconnect::OtherSession`]) this node revokes the peer session's
    /// lease, so failover starts at once instead of after the TTL.
    pub fn handle_disconnect(&mut self, now: Instant, node: NodeId, how: Disconnect) {
        if !self.input(now) {
            return;
        }
        self.on_disconnect(now, node, how);
    }

    /// Stops this node only (S6, S18): it steps down, revokes its lease so
    /// that failover starts at once, and emits [`Event::Stopped`].
    pub fn shutdown(&mut self, now: Instant) {
        if !self.input(now) {
            return;
        }
        self.stop(None);
    }

    /// Common start of every input: count it, and step down first if the
    /// lease deadline has passed (S2). Returns false if the node is stopped.
    fn input(&mut self, now: Instant) -> bool {
        #[cfg(debug_assertions)]
        self.check_request_counts();
        self.stats.inputs += 1;
        self.now = self.now.max(now);
        if self.phase == Phase::Stopped {
            return false;
        }
        if let Some(s) = &self.session {
            if now >= self.step_down_deadline(s) {
                self.lose_session(now, StepDownReason::LeaseDeadline);
            }
        }
        true
    }

    /// The task's count of requests waiting per target (its back-pressure,
    /// [`NodeConfig::max_pending_requests`]) matches the requests pending:
    /// a drift would refuse requests forever or let them grow unbounded.
    #[cfg(debug_assertions)]
    fn check_request_counts(&self) {
        let mut pending: BTreeMap<TaskId, usize> = BTreeMap::new();
        for p in self.primary.pending.values() {
            *pending.entry(p.to).or_default() += 1;
        }
        debug_assert_eq!(
            pending, self.ctx.in_flight,
            "node {}: requests pending per target differ from the context's counts",
            self.cfg.node
        );
    }

    fn step_down_deadline(&self, s: &Session) -> Instant {
        if self.canary(crate::Canary::SkipStepDown) {
            // Broken on purpose: a deadline that never comes.
            return s.renewed_sent + Duration::from_secs(86_400 * 365);
        }
        s.renewed_sent + (self.cfg.ttl - self.cfg.step_down_margin)
    }

    /// Whether the deliberately broken behaviour `c` is switched on (only
    /// possible in `--cfg madsim` builds).
    #[allow(clippy::unused_self)]
    fn canary(&self, c: crate::Canary) -> bool {
        #[cfg(madsim)]
        {
            self.cfg.canary == Some(c)
        }
        #[cfg(not(madsim))]
        {
            let _ = c;
            false
        }
    }

    fn emit(&mut self, ev: Event) {
        self.actions.push_back(Action::Event(ev));
    }

    fn store_op(&mut self, kind: OpKind, op: crate::store::StoreOp) -> OpId {
        let id = OpId(self.next_op);
        self.next_op += 1;
        self.stats.store_ops += 1;
        if matches!(
            op,
            crate::store::StoreOp::Put { .. }
                | crate::store::StoreOp::Txn { .. }
                | crate::store::StoreOp::Delete { .. }
        ) {
            self.stats.store_writes += 1;
        }
        self.ops.insert(id, kind);
        self.actions.push_back(Action::Store { id, op });
        id
    }

    fn op_in_flight(&self, pred: impl Fn(&OpKind) -> bool) -> bool {
        self.ops.values().any(pred)
    }

    /// Schedules [`Node::retry`] after the current backoff, doubling it.
    fn schedule_retry(&mut self, now: Instant) {
        let at = now + self.backoff;
        self.backoff = (self.backoff * 2).min(self.cfg.max_backoff);
        self.retry_at = Some(self.retry_at.map_or(at, |r| r.min(at)));
    }
}
