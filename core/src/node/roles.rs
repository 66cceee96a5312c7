//! Claiming slots, promotion, neighbour deaths and restarts, epochs and exit
//! (S1, S4, S5, S7, S8, S9, S10, S18).

use super::view::{Change, RoleEntry};
use super::{Node, OpKind, Phase, PrimaryState, Role};
use crate::action::{Event, StepDownReason};
use crate::keys::{self, Key, RoleRecord};
use crate::store::{Compare, StoreOp, TxnOp};
use crate::task::{Context, ExitReason};
use crate::{Epoch, Incarnation, Instant, TaskId};

/// A slot a spare may claim.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Target {
    Primary(TaskId),
    Standby(TaskId, u32),
}

impl Node {
    fn is_me(&self, e: &RoleEntry) -> bool {
        e.record.node == self.cfg.node && e.record.session == self.session_id
    }

    fn claim_in_flight(&self) -> bool {
        self.op_in_flight(|k| {
            matches!(k, OpKind::ClaimPrimary { .. } | OpKind::ClaimStandby { .. })
        })
    }

    /// Reacts to one change of the store view.
    pub(super) fn on_change(&mut self, now: Instant, change: Change) {
        match change {
            Change::Nothing | Change::Config | Change::Failures(_) => {}
            Change::BadValue(key) => self.bad_value(&key),
            Change::NodeUp(n) => self.peer_up(n),
            Change::NodeDown(n) => self.peer_down(n),
            Change::PrimaryUp(t, e) => {
                if e.incarnation() > self.highest[t.index()] {
                    self.highest[t.index()] = e.incarnation();
                }
                if self.is_me(&e) {
                    if self.primary_of().map(|(task, _)| task) != Some(t) {
                        // Our claim succeeded but its result was lost.
                        self.take_primary(now, t, e.incarnation());
                    }
                } else if self.primary_of().is_some() {
                    self.neighbour_up(now, t, e.incarnation());
                }
            }
            Change::PrimaryDown(t, e) => {
                if e.incarnation() > self.dead_upto[t.index()] {
                    self.dead_upto[t.index()] = e.incarnation();
                }
                if self.is_me(&e) && self.primary_of() == Some((t, e.incarnation())) {
                    // Only the lease's end deletes the key of a primary in
                    // office (a released second role is not in office).
                    self.lose_session(now, StepDownReason::LeaseLost);
                } else if self.primary_of().is_some() {
                    self.neighbour_down(now, t, e.incarnation());
                }
            }
            Change::StandbyUp(t, slot, e) => {
                if self.is_me(&e) {
                    self.take_standby(now, t, slot, e.create_revision);
                } else if self.primary_of().map(|(task, _)| task) == Some(t) {
                    self.send_replica_log(e.record.node, e.create_revision);
                }
            }
            Change::StandbyDown(t, slot, e) => {
                let mine = matches!(self.role, Role::Standby { task, slot: s, .. } if task == t && s == slot);
                if self.is_me(&e) && mine {
                    self.lose_session(now, StepDownReason::LeaseLost);
                }
            }
            Change::Epoch(e) => {
                if self.primary_of().is_some() {
                    self.deliver_epoch(now, e);
                }
            }
            Change::Exit(r) => self.on_exit(r),
        }
    }

    /// Claims a slot if this node should (S1, S5, S8).
    pub(super) fn evaluate(&mut self, now: Instant) {
        if self.phase != Phase::Running
            || self.exit.is_some()
            || self.view.exit.is_some()
            || self.claim_in_flight()
        {
            return;
        }
        match self.role {
            Role::Primary { .. } => {}
            Role::Standby { task, slot, .. } => {
                let first = self.view.succession(task).first().map(|(s, _)| *s);
                if self.view.primaries[task.index()].is_none() && first == Some(slot) {
                    self.claim_primary(now, task, true);
                }
            }
            Role::Spare => {
                let open = self.open_slots();
                let Some(rank) = self.view.spare_rank(self.cfg.node, open) else {
                    return;
                };
                match self.target(rank) {
                    Some(Target::Primary(t)) => self.claim_primary(now, t, false),
                    Some(Target::Standby(t, s)) => self.claim_standby(t, s),
                    None => {}
                }
            }
        }
    }

    /// Whether `t` has neither a primary nor a standby: a spare must take it.
    fn orphaned(&self, t: TaskId) -> bool {
        self.view.primaries[t.index()].is_none() && self.view.standbys[t.index()].is_empty()
    }

    /// Open slots in claiming order: orphaned tasks first, then standby
    /// slots of the other tasks, slot by slot, spread over the tasks.
    fn open_targets(&self) -> impl Iterator<Item = Target> + '_ {
        let tasks = || (0..self.cfg.num_tasks).map(TaskId);
        let orphans = tasks().filter(|t| self.orphaned(*t)).map(Target::Primary);
        let standbys = (0..self.cfg.standbys_per_task).flat_map(move |slot| {
            tasks()
                .filter(move |t| {
                    !self.orphaned(*t) && !self.view.standbys[t.index()].contains_key(&slot)
                })
                .map(move |t| Target::Standby(t, slot))
        });
        orphans.chain(standbys)
    }

    /// How many slots are open.
    fn open_slots(&self) -> usize {
        self.open_targets().count()
    }

    /// The `rank`-th open slot: the one the spare of that rank claims.
    fn target(&self, rank: usize) -> Option<Target> {
        self.open_targets().nth(rank)
    }

    fn lease(&self) -> i64 {
        self.session.as_ref().map_or(0, |s| s.lease)
    }

    fn role_value(&self) -> bytes::Bytes {
        keys::encode(&RoleRecord {
            node: self.cfg.node,
            session: self.session_id,
        })
    }

    /// Takes the primary slot of `task`, recording the failure if the task
    /// had a primary before; ends the job instead if the task failed too
    /// often (S7).
    fn claim_primary(&mut self, now: Instant, task: TaskId, promoted: bool) {
        let (record, mod_rev) = self.view.failures[task.index()].clone();
        let mut record = record;
        let restart = mod_rev != 0;
        if restart {
            let window = u64::try_from(self.cfg.failure_window.as_millis()).unwrap_or(u64::MAX);
            let now_ms = now.as_millis();
            record.total += 1;
            record.recent_ms.push(now_ms);
            record
                .recent_ms
                .retain(|t| now_ms.saturating_sub(*t) <= window);
        }
        let fkey = self.keys.key(Key::Failures(task));
        let mut compares = vec![
            Compare::absent(self.keys.key(Key::Primary(task))),
            Compare::absent(self.keys.key(Key::Exit)),
            Compare::mod_revision_eq(fkey.clone(), mod_rev),
        ];
        if let (true, Role::Standby { slot, since, .. }) = (promoted, self.role) {
            compares.push(Compare::create_revision_eq(
                self.keys.key(Key::Standby(task, slot)),
                since,
            ));
        }
        let failures = u32::try_from(record.recent_ms.len()).unwrap_or(u32::MAX);
        if restart && failures > self.cfg.max_failures {
            let reason = ExitReason::TooManyFailures {
                task,
                failures,
                window_ms: u64::try_from(self.cfg.failure_window.as_millis()).unwrap_or(u64::MAX),
            };
            tracing::warn!(node = %self.cfg.node, %reason, "restart limit reached; ending the job");
            let op = StoreOp::Txn {
                compares,
                success: vec![TxnOp::Put {
                    key: self.keys.key(Key::Exit),
                    value: keys::encode(&reason),
                    lease: 0,
                }],
                failure: vec![],
            };
            self.store_op(OpKind::FailureLimit, op);
            return;
        }
        let mut success = vec![
            TxnOp::Put {
                key: self.keys.key(Key::Primary(task)),
                value: self.role_value(),
                lease: self.lease(),
            },
            TxnOp::Put {
                key: fkey,
                value: keys::encode(&record),
                lease: 0,
            },
        ];
        if let (true, Role::Standby { slot, .. }) = (promoted, self.role) {
            success.push(TxnOp::Delete {
                key: self.keys.key(Key::Standby(task, slot)),
                prefix: false,
            });
        }
        self.store_op(
            OpKind::ClaimPrimary { task, promoted },
            StoreOp::Txn {
                compares,
                success,
                failure: vec![],
            },
        );
    }

    fn claim_standby(&mut self, task: TaskId, slot: u32) {
        let op = StoreOp::Txn {
            compares: vec![
                Compare::absent(self.keys.key(Key::Standby(task, slot))),
                Compare::absent(self.keys.key(Key::Exit)),
            ],
            success: vec![TxnOp::Put {
                key: self.keys.key(Key::Standby(task, slot)),
                value: self.role_value(),
                lease: self.lease(),
            }],
            failure: vec![],
        };
        self.store_op(OpKind::ClaimStandby { task, slot }, op);
    }

    pub(super) fn on_claim_primary(
        &mut self,
        now: Instant,
        task: TaskId,
        promoted: bool,
        ok: bool,
        revision: i64,
    ) {
        if !ok || self.phase != Phase::Running {
            return;
        }
        if self.primary_of().map(|(t, _)| t) == Some(task) {
            return; // already adopted from the watch
        }
        let _ = promoted;
        self.take_primary(now, task, Incarnation(revision));
    }

    /// This node's session holds the primary key of `task`: take the role,
    /// unless the node already holds another one (a claim whose reply was
    /// lost, then a second claim): then give the key back, so that the
    /// task fails over instead of being held by nobody.
    fn take_primary(&mut self, now: Instant, task: TaskId, incarnation: Incarnation) {
        match self.role {
            Role::Spare => self.become_primary(now, task, incarnation, false),
            Role::Standby { task: t, .. } if t == task => {
                self.become_primary(now, task, incarnation, true)
            }
            _ => self.release(Key::Primary(task), incarnation.0),
        }
    }

    /// This node's session holds standby slot `slot` of `task`: as
    /// [`Node::take_primary`].
    fn take_standby(&mut self, now: Instant, task: TaskId, slot: u32, since: i64) {
        match self.role {
            Role::Spare => self.become_standby(now, task, slot, since),
            Role::Standby {
                task: t, slot: s, ..
            } if t == task && s == slot => {}
            _ => self.release(Key::Standby(task, slot), since),
        }
    }

    /// Deletes a role key this session holds but must not (if unchanged).
    fn release(&mut self, key: Key, create_revision: i64) {
        let key = self.keys.key(key);
        tracing::warn!(node = %self.cfg.node, %key, "holding a second role; giving it back");
        let op = StoreOp::Txn {
            compares: vec![Compare::create_revision_eq(key.clone(), create_revision)],
            success: vec![TxnOp::Delete { key, prefix: false }],
            failure: vec![],
        };
        self.store_op(OpKind::Ignored, op);
    }

    pub(super) fn on_claim_standby(
        &mut self,
        now: Instant,
        task: TaskId,
        slot: u32,
        ok: bool,
        revision: i64,
    ) {
        if !ok || self.phase != Phase::Running {
            return;
        }
        self.take_standby(now, task, slot, revision);
    }

    fn build(&mut self, task: TaskId) {
        self.task = Some(self.builder.build(task));
        self.ctx = Context::new(self.cfg.node, task, self.cfg.limits());
    }

    fn become_primary(
        &mut self,
        now: Instant,
        task: TaskId,
        incarnation: Incarnation,
        promoted: bool,
    ) {
        let promoted = promoted
            && matches!(self.role, Role::Standby { task: t, .. } if t == task)
            && self.task.is_some();
        self.role = Role::Primary { task, incarnation };
        if incarnation > self.highest[task.index()] {
            self.highest[task.index()] = incarnation;
        }
        self.primary = PrimaryState::default();
        self.standby = Default::default();
        if !promoted {
            self.build(task);
        }
        self.ctx.primary = true;
        self.ctx.epoch = self.view.epoch;
        self.set_neighbours(self.view.epoch);
        self.emit(Event::BecamePrimary {
            task,
            incarnation,
            promoted,
        });
        if promoted {
            self.call(now, |t, ctx| t.became_primary(ctx));
        } else {
            self.call(now, |t, ctx| t.init(ctx));
        }
        if self.primary_of().is_none() {
            return;
        }
        self.deliver_epoch(now, self.view.epoch);
        self.release_held(now);
    }

    fn become_standby(&mut self, now: Instant, task: TaskId, slot: u32, since: i64) {
        self.role = Role::Standby { task, slot, since };
        self.standby = Default::default();
        self.build(task);
        self.ctx.primary = false;
        self.ctx.epoch = self.view.epoch;
        self.emit(Event::BecameStandby { task });
        self.call(now, |t, ctx| t.init(ctx));
        self.call(now, |t, ctx| t.became_standby(ctx));
        self.release_held(now);
    }

    fn set_neighbours(&mut self, epoch: Epoch) {
        let Some((task, _)) = self.primary_of() else {
            return;
        };
        // Sorted and deduplicated whatever the topology returns: lookups
        // below use binary search (the topology is validated at epoch 0
        // only; a per-epoch topology may be sloppy later).
        let clean = |mut v: Vec<TaskId>| {
            v.sort_unstable();
            v.dedup();
            v.retain(|t| t.0 < self.cfg.num_tasks && *t != task);
            v
        };
        self.primary.parents = clean(self.topology.parents(task, epoch));
        self.primary.children = clean(self.topology.children(task, epoch));
        self.ctx.parents = self.primary.parents.clone();
        self.ctx.children = self.primary.children.clone();
    }

    pub(super) fn is_parent(&self, t: TaskId) -> bool {
        self.primary.parents.binary_search(&t).is_ok()
    }

    pub(super) fn is_child(&self, t: TaskId) -> bool {
        self.primary.children.binary_search(&t).is_ok()
    }

    /// Delivers `epoch` to the primary's task if it is newer (S10, S11).
    pub(super) fn deliver_epoch(&mut self, now: Instant, epoch: Epoch) {
        let Some((task, _)) = self.primary_of() else {
            return;
        };
        if let Some(prev) = self.primary.epoch {
            if epoch <= prev {
                return;
            }
            // Requests, flags and replies of the old epoch are abandoned (S11).
            let p = &mut self.primary;
            p.flags.clear();
            p.pending.clear();
            p.serving.clear();
            p.serving_index.clear();
            p.reply_cache.clear();
            p.delivered_meta.clear();
            self.ctx.in_flight.clear();
        }
        self.primary.epoch = Some(epoch);
        self.ctx.epoch = epoch;
        self.set_neighbours(epoch);
        let (parents, children) = (self.primary.parents.clone(), self.primary.children.clone());
        self.primary
            .dead
            .retain(|t, _| parents.contains(t) || children.contains(t));
        self.emit(Event::EpochChanged { task, epoch });
        self.call(now, |t, ctx| t.epoch_changed(ctx, epoch));
        self.release_held(now);
    }

    fn neighbour_down(&mut self, now: Instant, t: TaskId, incarnation: Incarnation) {
        let Some((task, _)) = self.primary_of() else {
            return;
        };
        for p in self.primary.pending.values_mut() {
            if p.to == t {
                p.sent = None;
            }
        }
        let parent = self.is_parent(t);
        if !parent && !self.is_child(t) {
            return;
        }
        if self.primary.dead.get(&t) == Some(&incarnation) {
            return;
        }
        self.primary.dead.insert(t, incarnation);
        self.emit(Event::NeighbourDied {
            task,
            neighbour: t,
            incarnation,
            parent,
        });
        if self.canary(crate::Canary::NeighbourDiedTwice) {
            self.emit(Event::NeighbourDied {
                task,
                neighbour: t,
                incarnation,
                parent,
            });
        }
        if parent {
            self.call(now, |x, ctx| x.parent_died(ctx, t));
        } else {
            self.call(now, |x, ctx| x.child_died(ctx, t));
        }
    }

    fn neighbour_up(&mut self, now: Instant, t: TaskId, incarnation: Incarnation) {
        let Some((task, _)) = self.primary_of() else {
            return;
        };
        let parent = self.is_parent(t);
        if self.primary.dead.remove(&t).is_some()
            && (parent || self.is_child(t))
            && !self.canary(crate::Canary::NoRestartNotice)
        {
            self.emit(Event::NeighbourRestarted {
                task,
                neighbour: t,
                incarnation,
                parent,
            });
            if parent {
                self.call(now, |x, ctx| x.parent_restarted(ctx, t));
            } else {
                self.call(now, |x, ctx| x.child_restarted(ctx, t));
            }
        }
        if self.primary_of().is_some() {
            self.resync_task(t);
        }
    }

    pub(super) fn send_advance(&mut self, from: Epoch, retried: bool) {
        if self.op_in_flight(|k| matches!(k, OpKind::Advance { from: f, .. } if *f == from)) {
            return;
        }
        let key = self.keys.key(Key::Epoch);
        let op = StoreOp::Txn {
            compares: vec![Compare::value_eq(key.clone(), keys::encode_epoch(from))],
            success: vec![TxnOp::Put {
                key,
                value: keys::encode_epoch(from.next()),
                lease: 0,
            }],
            failure: vec![],
        };
        self.store_op(OpKind::Advance { from, retried }, op);
    }

    pub(super) fn on_advance_result(&mut self, now: Instant, from: Epoch, retried: bool, ok: bool) {
        if ok || retried {
            // A retry that fails its compare may be our own first attempt
            // having succeeded; either way the job moved past `from`.
            return;
        }
        if let Some((task, _)) = self.primary_of() {
            self.emit(Event::AdvanceRejected { task, epoch: from });
            self.call(now, |t, ctx| t.advance_epoch_rejected(ctx, from));
        }
    }

    pub(super) fn send_exit(&mut self, reason: ExitReason) {
        if self.op_in_flight(|k| *k == OpKind::Exit) {
            return;
        }
        let op = StoreOp::Txn {
            compares: vec![Compare::absent(self.keys.key(Key::Exit))],
            success: vec![TxnOp::Put {
                key: self.keys.key(Key::Exit),
                value: keys::encode(&reason),
                lease: 0,
            }],
            failure: vec![],
        };
        self.store_op(OpKind::Exit, op);
    }
}
