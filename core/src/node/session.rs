//! Lease, registration, the store watch, and the node's life cycle (S2, S6).

use super::view::{Change, View};
use super::{Node, OpKind, Phase, Role, Session};
use crate::action::{Event, StepDownReason};
use crate::keys::{self, Key, NodeRecord};
use crate::store::{
    Compare, KeyValue, StoreError, StoreOp, StoreResponse, TxnOp, WatchEvent, WatchEventKind,
    WatchResponse,
};
use crate::task::ExitReason;
use crate::{Epoch, Instant, SessionId};

impl Node {
    /// Begins a new session: ask for a lease.
    pub(super) fn start_session(&mut self, now: Instant) {
        self.phase = Phase::Granting;
        self.grant_sent = now;
        self.store_op(
            OpKind::Grant,
            StoreOp::LeaseGrant {
                ttl_secs: self.cfg.ttl_secs(),
            },
        );
    }

    pub(super) fn on_keepalive(
        &mut self,
        now: Instant,
        sent: Instant,
        lease: i64,
        result: &Result<StoreResponse, StoreError>,
    ) {
        let current = self.session.as_ref().is_some_and(|s| s.lease == lease);
        if !current || self.phase == Phase::Stopped {
            return;
        }
        match result {
            Ok(_) => {
                if let Some(s) = self.session.as_mut() {
                    if sent > s.renewed_sent {
                        s.renewed_sent = sent;
                    }
                }
            }
            Err(StoreError::LeaseNotFound(_)) => {
                if self.input_deadline_passed(now) {
                    return;
                }
                self.lose_session(now, StepDownReason::LeaseLost);
            }
            Err(_) => {}
        }
    }

    fn input_deadline_passed(&self, now: Instant) -> bool {
        self.session
            .as_ref()
            .is_some_and(|s| now >= self.step_down_deadline(s))
    }

    /// The lease is gone or may be: stop acting in any role, drop the task,
    /// forget the store state and start over with a new lease.
    pub(super) fn lose_session(&mut self, now: Instant, reason: StepDownReason) {
        let Some(s) = self.session.take() else { return };
        self.drop_role(reason);
        self.emit(Event::SessionLost {
            session: self.session_id,
        });
        // Best effort: if the lease still exists, revoking it lets failover start now.
        self.store_op(OpKind::Ignored, StoreOp::LeaseRevoke { lease: s.lease });
        if let Some(w) = self.watch.take() {
            self.store_op(OpKind::Ignored, StoreOp::CancelWatch { watch: w });
        }
        self.forget_store_state();
        self.start_session(now);
    }

    /// Clears everything learnt from the store and every pending store op.
    fn forget_store_state(&mut self) {
        // Results of older ops are no longer wanted.
        for kind in self.ops.values_mut() {
            *kind = OpKind::Ignored;
        }
        self.view = View::new(self.cfg.num_tasks);
        self.retry_at = None;
        self.retry_advance = None;
        // A pending exit_job outlives the session: the job must still end.
        self.held.clear();
    }

    /// Stops acting in the current role; the task object is dropped.
    pub(super) fn drop_role(&mut self, reason: StepDownReason) {
        if let Role::Primary { task, incarnation } = self.role {
            self.emit(Event::SteppedDown {
                task,
                incarnation,
                reason,
            });
        }
        self.role = Role::Spare;
        self.task = None;
        self.primary = Default::default();
        self.ctx.in_flight.clear();
        self.standby = Default::default();
    }

    /// Stops the node: steps down, revokes the lease, emits `Stopped`.
    pub(super) fn stop(&mut self, reason: Option<ExitReason>) {
        self.drop_role(StepDownReason::Stopped);
        if let Some(s) = self.session.take() {
            self.store_op(OpKind::Ignored, StoreOp::LeaseRevoke { lease: s.lease });
        }
        for node in std::mem::take(&mut self.peers).into_keys() {
            self.actions.push_back(crate::Action::Close { node });
        }
        self.phase = Phase::Stopped;
        self.retry_at = None;
        self.emit(Event::Stopped { reason });
    }

    pub(super) fn on_store_ok(&mut self, now: Instant, kind: OpKind, resp: StoreResponse) {
        match (kind, resp) {
            (OpKind::Grant, StoreResponse::LeaseGranted { lease, .. })
                if self.phase == Phase::Granting =>
            {
                // The store started the TTL no earlier than the request was
                // sent, so counting from the send time is safe (S2).
                self.session_id = SessionId(lease);
                self.session = Some(Session {
                    lease,
                    renewed_sent: self.grant_sent,
                    next_renew: now + self.cfg.renew_interval,
                });
                self.emit(Event::SessionStarted {
                    session: self.session_id,
                });
                self.phase = Phase::Joining;
                self.join();
            }
            (OpKind::Join, StoreResponse::Txn { responses, .. })
                if self.phase == Phase::Joining =>
            {
                self.end_predecessor(&responses);
                self.phase = Phase::Listing;
                self.list();
            }
            (OpKind::List, StoreResponse::Get { kvs, revision })
                if self.phase == Phase::Listing =>
            {
                self.on_listed(now, kvs, revision);
            }
            (OpKind::List, StoreResponse::Get { kvs, revision })
                if self.phase == Phase::Running =>
            {
                self.on_relisted(now, kvs, revision);
            }
            (OpKind::Watch, StoreResponse::WatchCreated { watch })
                if self.phase == Phase::Running =>
            {
                self.watch = Some(watch);
            }
            (
                OpKind::ClaimPrimary { task, promoted },
                StoreResponse::Txn {
                    succeeded,
                    revision,
                    ..
                },
            ) => {
                self.on_claim_primary(now, task, promoted, succeeded, revision);
            }
            (
                OpKind::ClaimStandby { task, slot },
                StoreResponse::Txn {
                    succeeded,
                    revision,
                    ..
                },
            ) => {
                self.on_claim_standby(now, task, slot, succeeded, revision);
            }
            (OpKind::Advance { from, retried }, StoreResponse::Txn { succeeded, .. }) => {
                self.on_advance_result(now, from, retried, succeeded);
            }
            (OpKind::Exit, StoreResponse::Txn { .. }) => {
                self.retry_exit = None;
            }
            (OpKind::Watch, StoreResponse::WatchCreated { watch }) => {
                // A watch from an abandoned phase.
                self.store_op(OpKind::Ignored, StoreOp::CancelWatch { watch });
            }
            _ => {}
        }
    }

    pub(super) fn on_store_err(&mut self, now: Instant, kind: OpKind, err: StoreError) {
        tracing::debug!(node = %self.cfg.node, ?kind, %err, "store op failed");
        match (&kind, &err) {
            (
                OpKind::Join | OpKind::ClaimPrimary { .. } | OpKind::ClaimStandby { .. },
                StoreError::LeaseNotFound(_),
            ) => {
                self.lose_session(now, StepDownReason::LeaseLost);
                return;
            }
            (OpKind::List | OpKind::Watch, StoreError::Compacted { .. }) => {
                // The history is gone: list again, then watch from there.
                self.watch = None;
                self.relist_needed = true;
            }
            _ => {}
        }
        match kind {
            OpKind::Ignored => {}
            OpKind::Advance { from, .. } => {
                self.retry_advance = Some(from);
                self.schedule_retry(now);
            }
            _ => self.schedule_retry(now),
        }
    }

    /// Re-issues whatever the node is missing after a failure.
    pub(super) fn retry(&mut self, now: Instant) {
        match self.phase {
            Phase::Granting if !self.op_in_flight(|k| *k == OpKind::Grant) => {
                self.grant_sent = now;
                self.store_op(
                    OpKind::Grant,
                    StoreOp::LeaseGrant {
                        ttl_secs: self.cfg.ttl_secs(),
                    },
                );
            }
            Phase::Joining if !self.op_in_flight(|k| *k == OpKind::Join) => self.join(),
            Phase::Listing if !self.op_in_flight(|k| *k == OpKind::List) => self.list(),
            Phase::Running => {
                if self.watch.is_none()
                    && !self.op_in_flight(|k| matches!(k, OpKind::Watch | OpKind::List))
                {
                    if self.relist_needed {
                        self.list();
                    } else {
                        self.watch_from(self.view.revision + 1);
                    }
                }
                if let Some(from) = self.retry_advance.take() {
                    if self.view.epoch == from && self.primary_of().is_some() {
                        self.send_advance(from, true);
                    }
                }
                if let Some(reason) = self.retry_exit.clone() {
                    if self.view.exit.is_none() {
                        self.send_exit(reason);
                    } else {
                        self.retry_exit = None;
                    }
                }
                self.evaluate(now);
            }
            _ => {}
        }
    }

    /// Creates the job config if absent (with epoch 0) and registers the node.
    fn join(&mut self) {
        let lease = self.session.as_ref().map_or(0, |s| s.lease);
        let node_put = TxnOp::Put {
            key: self.keys.key(Key::Node(self.cfg.node)),
            value: keys::encode(&NodeRecord {
                addr: self.cfg.addr.clone(),
                session: self.session_id,
            }),
            lease,
        };
        // The record this registration replaces: a predecessor's, if this
        // node restarted before its old lease expired.
        let node_get = TxnOp::Get {
            key: self.keys.key(Key::Node(self.cfg.node)),
            prefix: false,
        };
        let op = StoreOp::Txn {
            compares: vec![Compare::absent(self.keys.key(Key::Config))],
            success: vec![
                TxnOp::Put {
                    key: self.keys.key(Key::Config),
                    value: keys::encode(&self.spec),
                    lease: 0,
                },
                TxnOp::Put {
                    key: self.keys.key(Key::Epoch),
                    value: keys::encode_epoch(Epoch(0)),
                    lease: 0,
                },
                node_get.clone(),
                node_put.clone(),
            ],
            failure: vec![node_get, node_put],
        };
        self.store_op(OpKind::Join, op);
    }

    /// This node replaced a record of its own id left by another session at
    /// the same address. This process now holds that address, so the
    /// process of that session is gone: revoke its lease, so that its roles
    /// fail over now instead of after the TTL (the fast path after a
    /// process restart).
    fn end_predecessor(&mut self, responses: &[crate::store::TxnOpResponse]) {
        let Some(prev) = responses.iter().find_map(|r| match r {
            crate::store::TxnOpResponse::Get(kvs) => kvs.first(),
            _ => None,
        }) else {
            return;
        };
        let Ok(rec) = keys::decode::<NodeRecord>(&prev.key, &prev.value) else {
            return;
        };
        if rec.session == self.session_id || rec.addr != self.cfg.addr || rec.session.0 <= 0 {
            return;
        }
        self.stats.peers_revoked += 1;
        self.emit(Event::PeerGone {
            node: self.cfg.node,
            session: rec.session,
            evidence: crate::Disconnect::OtherSession(self.session_id),
        });
        self.store_op(
            OpKind::Ignored,
            StoreOp::LeaseRevoke {
                lease: rec.session.0,
            },
        );
    }

    fn list(&mut self) {
        self.store_op(
            OpKind::List,
            StoreOp::Get {
                key: self.keys.prefix().to_string(),
                prefix: true,
            },
        );
    }

    fn watch_from(&mut self, start_revision: i64) {
        self.store_op(
            OpKind::Watch,
            StoreOp::Watch {
                prefix: self.keys.prefix().to_string(),
                start_revision,
            },
        );
    }

    fn on_listed(&mut self, now: Instant, kvs: Vec<KeyValue>, revision: i64) {
        self.view = View::new(self.cfg.num_tasks);
        let mut changes = Vec::new();
        for kv in kvs {
            let ev = WatchEvent {
                kind: WatchEventKind::Put,
                kv,
            };
            changes.push(self.view.apply(&self.keys, &ev));
        }
        self.view.revision = revision;
        self.relist_needed = false;
        match &self.view.config {
            Some(spec) if *spec != self.spec => {
                let detail = format!(
                    "job {} has spec {:?}, this node has {:?}",
                    self.cfg.job, spec, self.spec
                );
                tracing::warn!(node = %self.cfg.node, %detail, "refusing to join");
                self.emit(Event::Refused { detail });
                self.stop(None);
                return;
            }
            _ => {}
        }
        for c in &changes {
            if let Change::BadValue(key) = c {
                self.bad_value(key);
            }
        }
        self.phase = Phase::Running;
        self.watch_from(revision + 1);
        if let (Some(reason), None) = (self.retry_exit.clone(), &self.view.exit) {
            // An exit_job asked for in an earlier session still ends the job.
            self.send_exit(reason);
        }
        if let Some(reason) = self.view.exit.clone() {
            // The job is over: return at once without init (S18).
            self.on_exit(reason);
            return;
        }
        for (node, _) in self.view.nodes.clone() {
            self.on_change(now, Change::NodeUp(node));
        }
        self.evaluate(now);
    }

    /// A listing after the watch lost history: turn the difference between
    /// the old view and the listing into events.
    fn on_relisted(&mut self, now: Instant, kvs: Vec<KeyValue>, revision: i64) {
        self.relist_needed = false;
        let mut events = Vec::new();
        let listed: std::collections::BTreeMap<String, i64> = kvs
            .iter()
            .map(|kv| (kv.key.clone(), kv.create_revision))
            .collect();
        let delete = |key: &str| WatchEvent {
            kind: WatchEventKind::Delete,
            kv: KeyValue {
                key: key.to_string(),
                value: Default::default(),
                create_revision: 0,
                mod_revision: revision,
                version: 0,
                lease: 0,
            },
        };
        for (key, (_, created)) in &self.view.mod_revisions {
            // Gone, or deleted and created again while the watch was down:
            // either way the old key died (S4).
            if listed.get(key) != Some(created) {
                events.push(delete(key));
            }
        }
        let mut puts: Vec<KeyValue> = kvs
            .into_iter()
            .filter(|kv| self.view.mod_revisions.get(&kv.key).map(|r| r.0) != Some(kv.mod_revision))
            .collect();
        puts.sort_by_key(|kv| kv.mod_revision);
        events.extend(puts.into_iter().map(|kv| WatchEvent {
            kind: WatchEventKind::Put,
            kv,
        }));
        self.apply_events(now, events);
        self.view.revision = self.view.revision.max(revision);
        self.watch_from(revision + 1);
        self.evaluate(now);
    }

    pub(super) fn on_watch(&mut self, now: Instant, resp: WatchResponse) {
        if self.phase != Phase::Running || Some(resp.watch) != self.watch {
            return;
        }
        // Events at or below the view's revision were seen already (a watch
        // re-created from an older revision); one revision is never split
        // across responses.
        let base = self.view.revision;
        let events = resp
            .events
            .into_iter()
            .filter(|e| e.kv.mod_revision > base)
            .collect();
        self.apply_events(now, events);
        if !self.held.is_empty() && self.view.revision > base && self.phase == Phase::Running {
            // Messages held for a revision the view has now reached.
            self.release_held(now);
        }
        if resp.canceled {
            self.watch = None;
            if resp.compact_revision.is_some() {
                self.relist_needed = true;
            }
            self.schedule_retry(now);
            return;
        }
        if self.phase == Phase::Running {
            self.evaluate(now);
        }
    }

    fn apply_events(&mut self, now: Instant, events: Vec<WatchEvent>) {
        for ev in events {
            if self.phase != Phase::Running {
                return;
            }
            let change = self.view.apply(&self.keys, &ev);
            self.on_change(now, change);
        }
    }

    pub(super) fn bad_value(&mut self, key: &str) {
        tracing::warn!(node = %self.cfg.node, key, "store value does not decode; ignored");
        self.emit(Event::BadStoreValue {
            key: key.to_string(),
        });
    }

    /// The job ended: let the task save its work, then stop (S18).
    pub(super) fn on_exit(&mut self, reason: ExitReason) {
        if self.exit.is_some() {
            return;
        }
        self.exit = Some(reason.clone());
        if let Some(task) = self.task.as_mut() {
            task.exit(&mut self.ctx, &reason);
            self.ctx.commands.clear();
        }
        self.emit(Event::JobExited {
            reason: reason.clone(),
        });
        self.stop(Some(reason));
    }
}
