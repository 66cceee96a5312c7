//! Safety and completeness checks over everything a cluster's nodes report
//! (S3, S4, S5, S10–S14, S16, S17), applied on every event.

use crate::action::Event;
use crate::keys::{self, Key, Keys, RoleRecord};
use crate::store::{MemStore, WatchEvent, WatchEventKind};
use crate::topology::Topology;
use crate::wire::{Envelope, RequestId};
use crate::{Epoch, Incarnation, Instant, NodeId, SessionId, TaskId};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

/// A broken property, with the virtual time it was seen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// When.
    pub at: Instant,
    /// What, naming the semantic (S-number) it breaks.
    pub what: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "at {}: {}", self.at, self.what)
    }
}

/// How long a node that stays primary has to report a neighbour's death or
/// restart before the checker calls it missing.
const GRACE: Duration = Duration::from_secs(10);

#[derive(Debug, Default)]
struct SessionState {
    epoch: BTreeMap<TaskId, Epoch>,
    /// (observer task, neighbour) -> incarnation reported dead, awaiting restart.
    dead: BTreeMap<(TaskId, TaskId), Incarnation>,
    last_restarted: BTreeMap<(TaskId, TaskId), Incarnation>,
    /// Highest incarnation of each sender task this session accepted or saw die.
    floor: BTreeMap<TaskId, (Incarnation, bool)>,
    meta: BTreeSet<(Incarnation, TaskId, Incarnation, Epoch, u32)>,
    meta_last: BTreeMap<(Incarnation, TaskId, Incarnation, Epoch), u32>,
    data: BTreeSet<(Incarnation, RequestId)>,
    served: BTreeSet<(Incarnation, TaskId, Incarnation, RequestId)>,
    replica: BTreeMap<TaskId, (Incarnation, u64)>,
}

#[derive(Debug)]
struct Tenure {
    node: NodeId,
    task: TaskId,
    from: Instant,
    to: Option<Instant>,
    died: Vec<(TaskId, Incarnation, Instant)>,
    restarted: Vec<(TaskId, Incarnation, Instant)>,
}

#[derive(Debug)]
struct StorePrimary {
    incarnation: Incarnation,
    created: Instant,
    deleted: Option<Instant>,
}

/// Counts of what the checker saw delivered.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Delivered {
    /// `epoch_changed` calls.
    pub epochs: u64,
    /// Meta flags delivered.
    pub meta: u64,
    /// Requests served.
    pub served: u64,
    /// Replies delivered.
    pub data: u64,
    /// `*_died` calls.
    pub died: u64,
    /// `*_restarted` calls.
    pub restarted: u64,
    /// Promotions of a standby.
    pub promotions: u64,
    /// Primaries that started without a standby's state.
    pub fresh_primaries: u64,
    /// Replication updates applied.
    pub replica: u64,
    /// Messages dropped by receivers.
    pub dropped: u64,
}

/// Checks the contract over a cluster's events, each against the store as
/// it is at that instant.
#[derive(Debug)]
pub struct Checker {
    keys: Keys,
    topology: Arc<dyn Topology>,
    violations: Vec<Violation>,
    last_incarnation: Vec<Incarnation>,
    sessions: BTreeMap<(NodeId, SessionId), SessionState>,
    tenures: Vec<Tenure>,
    open: BTreeMap<NodeId, usize>,
    store_primaries: Vec<Vec<StorePrimary>>,
    delivered: Delivered,
    exits: Vec<crate::ExitReason>,
    exclusive: bool,
}

impl Checker {
    /// A checker for a job of `num_tasks` tasks named `job` over `topology`.
    pub fn new(job: &str, num_tasks: u32, topology: Arc<dyn Topology>) -> Self {
        let n = num_tasks as usize;
        Checker {
            keys: Keys::new("taskgraph", job),
            topology,
            violations: Vec::new(),
            last_incarnation: vec![Incarnation(0); n],
            sessions: BTreeMap::new(),
            tenures: Vec::new(),
            open: BTreeMap::new(),
            store_primaries: (0..n).map(|_| Vec::new()).collect(),
            delivered: Delivered::default(),
            exits: Vec::new(),
            exclusive: false,
        }
    }

    /// Also checks, from the events alone, that a task never has two
    /// primaries at once (S3): a `became_primary` while another node's
    /// tenure of the same task is open (not ended by a step-down, a session
    /// loss, a stop or [`Checker::on_crash`]) is a violation. For drivers
    /// whose nodes keep running while cut off (the simulator); the in-memory
    /// harness freezes paused nodes and checks their beliefs directly.
    pub fn with_exclusive_primaries(mut self) -> Self {
        self.exclusive = true;
        self
    }

    /// Violations found so far.
    pub fn violations(&self) -> &[Violation] {
        &self.violations
    }
    /// What was delivered.
    pub fn delivered(&self) -> &Delivered {
        &self.delivered
    }
    /// Exit reasons nodes reported.
    pub fn exits(&self) -> &[crate::ExitReason] {
        &self.exits
    }

    /// Records a violation.
    pub fn violation(&mut self, at: Instant, what: String) {
        push_violation(&mut self.violations, at, what);
    }

    fn store_primary(&self, store: &MemStore, t: TaskId) -> Option<(Incarnation, NodeId)> {
        let kv = store.get(&self.keys.key(Key::Primary(t)))?;
        let rec: RoleRecord = keys::decode(&kv.key, &kv.value).ok()?;
        Some((Incarnation(kv.create_revision), rec.node))
    }

    /// S3: a message may only be sent by the store's current primary of its task.
    pub fn on_send(
        &mut self,
        now: Instant,
        node: NodeId,
        _session: Option<SessionId>,
        msg: &Envelope,
        store: &MemStore,
    ) {
        let actual = self.store_primary(store, msg.from_task);
        if actual != Some((msg.incarnation, node)) {
            self.violation(
                now,
                format!(
                    "S3: {node} sent as primary of {} incarnation {} but the store's primary is {actual:?}",
                    msg.from_task, msg.incarnation
                ),
            );
        }
    }

    /// The harness's own watch on the job's keys.
    pub fn on_store_events(&mut self, now: Instant, events: &[WatchEvent]) {
        for ev in events {
            let Some(Key::Primary(t)) = self.keys.parse(&ev.kv.key) else {
                continue;
            };
            let Some(list) = self.store_primaries.get_mut(t.index()) else {
                continue;
            };
            match ev.kind {
                WatchEventKind::Put => list.push(StorePrimary {
                    incarnation: Incarnation(ev.kv.create_revision),
                    created: now,
                    deleted: None,
                }),
                WatchEventKind::Delete => {
                    if let Some(last) = list.last_mut() {
                        last.deleted = Some(now);
                    }
                }
            }
        }
    }

    /// A node crashed: its tenure as primary ends.
    pub fn on_crash(&mut self, now: Instant, node: NodeId) {
        self.close_tenure(now, node);
    }

    fn close_tenure(&mut self, now: Instant, node: NodeId) {
        if let Some(i) = self.open.remove(&node) {
            if let Some(t) = self.tenures.get_mut(i) {
                t.to = Some(now);
            }
        }
    }

    fn fence(
        &mut self,
        now: Instant,
        key: (NodeId, SessionId),
        what: &str,
        from: TaskId,
        inc: Incarnation,
    ) {
        let s = self.sessions.entry(key).or_default();
        match s.floor.get(&from).copied() {
            Some((f, dead)) if inc < f || (dead && inc == f) => {
                let msg = format!(
                    "S3: {} (session {}) accepted {what} from {from} incarnation {inc} after seeing incarnation {f}{}",
                    key.0,
                    key.1,
                    if dead { " die" } else { "" }
                );
                self.violation(now, msg);
            }
            Some((f, _)) if inc == f => {}
            _ => {
                s.floor.insert(from, (inc, false));
            }
        }
    }

    /// Checks a delivery to `task` in `epoch` of something `from` sent:
    /// not from a fenced incarnation (S3), within the receiver's current
    /// epoch (S11). `what` names the delivery in the violation.
    fn accepted(
        &mut self,
        now: Instant,
        key: (NodeId, SessionId),
        (task, epoch): (TaskId, Epoch),
        (from, from_incarnation): (TaskId, Incarnation),
        what: &str,
    ) {
        self.fence(now, key, what, from, from_incarnation);
        if self.current_epoch(key, task) != Some(epoch) {
            let node = key.0;
            self.violation(now, format!("S11: {node} {what} of {epoch} outside it"));
        }
    }

    fn current_epoch(&mut self, key: (NodeId, SessionId), task: TaskId) -> Option<Epoch> {
        self.sessions
            .entry(key)
            .or_default()
            .epoch
            .get(&task)
            .copied()
    }

    /// Checks one event reported by `node` in session `session`. With the
    /// `store` as it is at that instant, also checks the event against it
    /// (a new primary holds its key; a neighbour reported dead is not
    /// primary); without it (a log read after the fact), only the events.
    pub fn on_event(
        &mut self,
        now: Instant,
        node: NodeId,
        session: SessionId,
        ev: &Event,
        store: Option<&MemStore>,
    ) {
        let key = (node, session);
        match ev {
            Event::BecamePrimary {
                task,
                incarnation,
                promoted,
            } => {
                let last = self
                    .last_incarnation
                    .get(task.index())
                    .copied()
                    .unwrap_or_default();
                if *incarnation <= last {
                    self.violation(
                        now,
                        format!("S3: {task} incarnation {incarnation} not above {last}"),
                    );
                }
                if let Some(l) = self.last_incarnation.get_mut(task.index()) {
                    *l = *incarnation;
                }
                if store
                    .is_some_and(|st| self.store_primary(st, *task) != Some((*incarnation, node)))
                {
                    self.violation(now, format!("S3: {node} became primary of {task} ({incarnation}) without holding the key"));
                }
                if self.exclusive {
                    let others: Vec<NodeId> = self
                        .open
                        .iter()
                        .filter(|(n, i)| {
                            **n != node && self.tenures.get(**i).is_some_and(|t| t.task == *task)
                        })
                        .map(|(n, _)| *n)
                        .collect();
                    for other in others {
                        self.violation(
                            now,
                            format!("S3: {node} became primary of {task} ({incarnation}) while {other} still acts as its primary"),
                        );
                    }
                }
                if *promoted {
                    self.delivered.promotions += 1;
                } else {
                    self.delivered.fresh_primaries += 1;
                }
                self.close_tenure(now, node);
                self.open.insert(node, self.tenures.len());
                self.tenures.push(Tenure {
                    node,
                    task: *task,
                    from: now,
                    to: None,
                    died: Vec::new(),
                    restarted: Vec::new(),
                });
            }
            Event::SteppedDown { .. } | Event::SessionLost { .. } | Event::Stopped { .. } => {
                self.close_tenure(now, node);
            }
            Event::EpochChanged { task, epoch } => {
                self.delivered.epochs += 1;
                let s = self.sessions.entry(key).or_default();
                if let Some(prev) = s.epoch.get(task) {
                    if epoch <= prev {
                        let m =
                            format!("S10: {node} delivered epoch {epoch} to {task} after {prev}");
                        push_violation(&mut self.violations, now, m);
                    }
                }
                s.epoch.insert(*task, *epoch);
            }
            Event::NeighbourDied {
                task,
                neighbour,
                incarnation,
                parent,
            } => {
                self.delivered.died += 1;
                self.check_link(now, *task, *neighbour, *parent);
                if store.is_some_and(|st| {
                    self.store_primary(st, *neighbour).map(|p| p.0) == Some(*incarnation)
                }) {
                    self.violation(
                        now,
                        format!(
                            "S4: {node} told {neighbour} ({incarnation}) died but it is primary"
                        ),
                    );
                }
                let s = self.sessions.entry(key).or_default();
                if let Some(d) = s.dead.insert((*task, *neighbour), *incarnation) {
                    let m = format!("S4: {node} reported {neighbour} dead twice ({d}, then {incarnation}) without a restart");
                    push_violation(&mut self.violations, now, m);
                }
                let f = s.floor.entry(*neighbour).or_insert((*incarnation, true));
                if *incarnation >= f.0 {
                    *f = (*incarnation, true);
                }
                if let Some(&i) = self.open.get(&node) {
                    if let Some(t) = self.tenures.get_mut(i) {
                        t.died.push((*neighbour, *incarnation, now));
                    }
                }
            }
            Event::NeighbourRestarted {
                task,
                neighbour,
                incarnation,
                parent,
            } => {
                self.delivered.restarted += 1;
                self.check_link(now, *task, *neighbour, *parent);
                let s = self.sessions.entry(key).or_default();
                match s.dead.remove(&(*task, *neighbour)) {
                    Some(d) if d < *incarnation => {}
                    other => {
                        let m = format!("S5: {node} reported {neighbour} restarted ({incarnation}) after death {other:?}");
                        push_violation(&mut self.violations, now, m);
                    }
                }
                s.last_restarted.insert((*task, *neighbour), *incarnation);
                if let Some(&i) = self.open.get(&node) {
                    if let Some(t) = self.tenures.get_mut(i) {
                        t.restarted.push((*neighbour, *incarnation, now));
                    }
                }
            }
            Event::MetaDelivered {
                task,
                incarnation,
                from,
                from_incarnation,
                epoch,
                flag,
                ..
            } => {
                self.delivered.meta += 1;
                self.accepted(
                    now,
                    key,
                    (*task, *epoch),
                    (*from, *from_incarnation),
                    "delivered meta",
                );
                let s = self.sessions.entry(key).or_default();
                if !s
                    .meta
                    .insert((*incarnation, *from, *from_incarnation, *epoch, *flag))
                {
                    let m = format!("S12: {node} delivered meta flag {flag} of {from} ({from_incarnation}) twice");
                    push_violation(&mut self.violations, now, m);
                }
                let last = s
                    .meta_last
                    .insert((*incarnation, *from, *from_incarnation, *epoch), *flag);
                if last.is_some_and(|l| l >= *flag) {
                    self.violation(
                        now,
                        format!("S16: {node} delivered flag {flag} of {from} after flag {last:?}"),
                    );
                }
            }
            Event::Served {
                task,
                incarnation,
                from,
                from_incarnation,
                id,
                epoch,
            } => {
                self.delivered.served += 1;
                self.accepted(
                    now,
                    key,
                    (*task, *epoch),
                    (*from, *from_incarnation),
                    "served a request",
                );
                let s = self.sessions.entry(key).or_default();
                if !s
                    .served
                    .insert((*incarnation, *from, *from_incarnation, *id))
                {
                    self.violation(
                        now,
                        format!("S14: {node} served request {id:?} of {from} twice"),
                    );
                }
            }
            Event::DataDelivered {
                task,
                incarnation,
                from,
                from_incarnation,
                id,
                epoch,
            } => {
                self.delivered.data += 1;
                self.accepted(
                    now,
                    key,
                    (*task, *epoch),
                    (*from, *from_incarnation),
                    "delivered data",
                );
                let s = self.sessions.entry(key).or_default();
                if !s.data.insert((*incarnation, *id)) {
                    self.violation(
                        now,
                        format!("S13: {node} delivered the reply to {id:?} twice"),
                    );
                }
            }
            Event::ReplicaApplied {
                task,
                from_incarnation,
                seq,
            } => {
                self.delivered.replica += 1;
                let s = self.sessions.entry(key).or_default();
                let (inc, last) = s.replica.get(task).copied().unwrap_or_default();
                let ok = (*from_incarnation == inc && *seq == last + 1)
                    || (*from_incarnation > inc && *seq == 1);
                if !ok {
                    let m = format!("S17: {node} applied update {seq} of {from_incarnation} after {last} of {inc}");
                    push_violation(&mut self.violations, now, m);
                }
                s.replica.insert(*task, (*from_incarnation, *seq));
            }
            Event::MessageDropped { .. } => self.delivered.dropped += 1,
            Event::JobExited { reason } => self.exits.push(reason.clone()),
            _ => {}
        }
    }

    fn check_link(&mut self, now: Instant, task: TaskId, neighbour: TaskId, parent: bool) {
        let ok = if parent {
            self.topology.parents(task, Epoch(0)).contains(&neighbour)
        } else {
            self.topology.children(task, Epoch(0)).contains(&neighbour)
        };
        if !ok {
            self.violation(
                now,
                format!("S4: {task} told about {neighbour}, not a neighbour of that kind"),
            );
        }
    }

    /// End-of-run completeness: every primary that stayed primary for
    /// `GRACE` after a neighbour's death reported it (S4), and after the
    /// neighbour's new primary appeared, its restart (S5).
    pub fn finish(&mut self, now: Instant) {
        let mut missing = Vec::new();
        for ten in &self.tenures {
            let end = ten.to.unwrap_or(now);
            let mut neighbours = self.topology.parents(ten.task, Epoch(0));
            neighbours.extend(self.topology.children(ten.task, Epoch(0)));
            for nb in neighbours {
                let Some(list) = self.store_primaries.get(nb.index()) else {
                    continue;
                };
                for p in list {
                    let Some(d) = p.deleted else { continue };
                    if ten.from < d
                        && end > d + GRACE
                        && !ten.died.iter().any(|x| x.0 == nb && x.1 == p.incarnation)
                    {
                        missing.push(format!(
                            "S4: {} (primary of {}) never reported {nb} ({}) dead",
                            ten.node, ten.task, p.incarnation
                        ));
                    }
                }
                for (t, inc, at) in ten.died.iter().filter(|x| x.0 == nb) {
                    let next = list.iter().find(|p| p.incarnation > *inc);
                    if let Some(p) = next {
                        let due = p.created.max(*at) + GRACE;
                        if end > due
                            && !ten
                                .restarted
                                .iter()
                                .any(|r| r.0 == *t && r.1 >= p.incarnation && r.2 >= *at)
                        {
                            missing.push(format!(
                                "S5: {} (primary of {}) never reported {nb} restarted ({})",
                                ten.node, ten.task, p.incarnation
                            ));
                        }
                    }
                }
            }
        }
        for m in missing {
            push_violation(&mut self.violations, now, m);
        }
    }
}

fn push_violation(v: &mut Vec<Violation>, at: Instant, what: String) {
    if v.len() < 100 {
        v.push(Violation { at, what });
    }
}
