//! Connections, sending, and receiving messages: meta flags, data requests,
//! replication (S3, S11–S17).

use super::{Node, Peer, PendingRequest, Phase, Role, Serving};
use crate::action::{Action, Disconnect, DropReason, Event};
use crate::config::PROTOCOL_VERSION;
use crate::task::{Link, ServeId};
use crate::wire::{Body, Direction, Envelope, Reply, RequestId};
use crate::{Incarnation, Instant, NodeId, TaskId};
use bytes::Bytes;

impl Node {
    /// `nodes/{n}` appeared or changed: forget a connection to an older session.
    pub(super) fn peer_up(&mut self, n: NodeId) {
        let Some(entry) = self.view.nodes.get(&n) else {
            return;
        };
        let session = entry.record.session;
        if self.peers.get(&n).is_some_and(|p| p.session != session) {
            self.peers.remove(&n);
            self.actions.push_back(Action::Close { node: n });
        }
    }

    /// `nodes/{n}` is gone: close the connection.
    pub(super) fn peer_down(&mut self, n: NodeId) {
        if self.peers.remove(&n).is_some() {
            self.actions.push_back(Action::Close { node: n });
        }
    }

    /// Whether a message to `n` can be sent now, opening a connection if needed.
    fn sendable(&mut self, n: NodeId) -> bool {
        if n == self.cfg.node {
            return false;
        }
        let Some(entry) = self.view.nodes.get(&n) else {
            return false;
        };
        let (session, addr) = (entry.record.session, entry.record.addr.clone());
        match self.peers.get(&n) {
            Some(p) if p.session == session => p.open,
            _ => {
                self.peers.insert(
                    n,
                    Peer {
                        session,
                        open: true,
                        retry_at: None,
                        backoff: self.cfg.backoff,
                        opened: self.now,
                        revoked: false,
                    },
                );
                self.actions.push_back(Action::Connect {
                    node: n,
                    addr,
                    session,
                });
                true
            }
        }
    }

    /// Sends `body` from this node's primary task to `to_task` on node `to`.
    fn send(
        &mut self,
        to: NodeId,
        to_task: TaskId,
        to_incarnation: Incarnation,
        body: Body,
    ) -> bool {
        let Some((task, incarnation)) = self.primary_of() else {
            return false;
        };
        if !self.sendable(to) {
            return false;
        }
        // One counter for every message this node sends, never reset: the
        // messages to any one receiver form an increasing sequence, even
        // across sessions of either side.
        self.out_seq += 1;
        let seq = self.out_seq;
        let msg = Envelope {
            version: PROTOCOL_VERSION,
            job: self.job_tag,
            from_node: self.cfg.node,
            from_session: self.session_id,
            seq,
            from_task: task,
            incarnation,
            epoch: self.primary.epoch.unwrap_or(self.view.epoch),
            to_task,
            to_incarnation,
            body,
        };
        self.stats.messages_sent += 1;
        self.actions.push_back(Action::Send { to, msg });
        true
    }

    /// The connection to `n` broke: retry after a backoff, then resend. On
    /// evidence that the peer's process is gone, revoke its session's lease.
    pub(super) fn on_disconnect(&mut self, now: Instant, n: NodeId, how: Disconnect) {
        let (base, max) = (self.cfg.backoff, self.cfg.max_backoff);
        let registered = self.view.nodes.get(&n).map(|e| e.record.session);
        let Some(p) = self.peers.get_mut(&n) else {
            return;
        };
        if p.open {
            // A connection that lived longer than the longest backoff was
            // healthy: the next retry starts from the shortest one.
            if now.saturating_duration_since(p.opened) > max {
                p.backoff = base;
            }
            p.open = false;
            p.retry_at = Some(now + p.backoff);
            p.backoff = (p.backoff * 2).min(max);
        }
        let evidence = match how {
            Disconnect::Broken => false,
            Disconnect::Refused => true,
            Disconnect::OtherSession(s) => s != p.session,
        };
        // Only the session that was connected to, and only while the store
        // still names it: a newer registration is a live process.
        if evidence && !p.revoked && registered == Some(p.session) {
            p.revoked = true;
            let session = p.session;
            self.stats.peers_revoked += 1;
            self.emit(Event::PeerGone {
                node: n,
                session,
                evidence: how,
            });
            self.store_op(
                super::OpKind::Ignored,
                crate::store::StoreOp::LeaseRevoke { lease: session.0 },
            );
        }
    }

    /// Reopens connections whose backoff has passed and resends what the
    /// peer should have (S12, S14, S17).
    pub(super) fn retry_peers(&mut self, now: Instant) {
        let due: Vec<NodeId> = self
            .peers
            .iter()
            .filter(|(_, p)| p.retry_at.is_some_and(|r| now >= r))
            .map(|(n, _)| *n)
            .collect();
        for n in due {
            let current = self
                .view
                .nodes
                .get(&n)
                .map(|e| (e.record.session, e.record.addr.clone()));
            match (current, self.peers.get_mut(&n)) {
                (Some((session, addr)), Some(p)) if p.session == session => {
                    p.retry_at = None;
                    p.open = true;
                    p.opened = now;
                    self.actions.push_back(Action::Connect {
                        node: n,
                        addr,
                        session,
                    });
                    self.resync_node(n);
                }
                _ => {
                    self.peers.remove(&n);
                }
            }
        }
    }

    /// Resends everything node `n` should have from this node.
    fn resync_node(&mut self, n: NodeId) {
        let Some((task, _)) = self.primary_of() else {
            return;
        };
        let on_n: Vec<TaskId> = self
            .view
            .primaries
            .iter()
            .enumerate()
            .filter_map(|(i, e)| e.filter(|e| e.record.node == n).map(|_| TaskId(i as u32)))
            .collect();
        for t in on_n {
            self.resync_task(t);
        }
        let replies: Vec<_> = self
            .primary
            .reply_cache
            .iter()
            .filter(|(_, (_, to))| *to == n)
            .map(|((t, inc, id), (resp, _))| (*t, *inc, *id, resp.clone()))
            .collect();
        for (t, inc, id, resp) in replies {
            self.send(
                n,
                t,
                inc,
                Body::Response {
                    id,
                    result: Reply::Data(resp),
                },
            );
        }
        let standby_there = self.view.standbys[task.index()]
            .values()
            .find(|e| e.record.node == n)
            .map(|e| e.create_revision);
        if let Some(since) = standby_there {
            self.send_replica_log(n, since);
        }
    }

    /// Sends task `t`'s current primary this epoch's flags and every pending
    /// request to it.
    pub(super) fn resync_task(&mut self, t: TaskId) {
        let Some(e) = self.view.primaries.get(t.index()).copied().flatten() else {
            return;
        };
        let (node, inc) = (e.record.node, e.incarnation());
        let dirs = [
            (self.is_parent(t), Direction::ToParents),
            (self.is_child(t), Direction::ToChildren),
        ];
        let flags = self.primary.flags.clone();
        for (dir, flag, meta) in flags {
            if dirs.iter().any(|(yes, d)| *yes && *d == dir) {
                self.send(
                    node,
                    t,
                    inc,
                    Body::Meta {
                        direction: dir,
                        flag,
                        meta,
                    },
                );
            }
        }
        let ids: Vec<RequestId> = self
            .primary
            .pending
            .iter()
            .filter(|(_, p)| p.to == t)
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            self.send_request(id);
        }
    }

    /// Sends the whole replication log of this incarnation to the standby on
    /// `n` that took its slot at revision `since`; the standby skips what it
    /// already applied.
    pub(super) fn send_replica_log(&mut self, n: NodeId, since: i64) {
        let Some((task, _)) = self.primary_of() else {
            return;
        };
        let log = self.primary.replica_log.clone();
        for (i, data) in log.into_iter().enumerate() {
            if !self.send(
                n,
                task,
                Incarnation(since),
                Body::Replica {
                    seq: i as u64 + 1,
                    data,
                },
            ) {
                return;
            }
        }
    }

    pub(super) fn flag_meta(&mut self, direction: Direction, meta: Bytes) {
        let flag = u32::try_from(self.primary.flags.len()).unwrap_or(u32::MAX);
        self.primary.flags.push((direction, flag, meta.clone()));
        let targets = match direction {
            Direction::ToParents => self.primary.parents.clone(),
            Direction::ToChildren => self.primary.children.clone(),
        };
        for t in targets {
            if let Some(e) = self.view.primaries.get(t.index()).copied().flatten() {
                self.send(
                    e.record.node,
                    t,
                    e.incarnation(),
                    Body::Meta {
                        direction,
                        flag,
                        meta: meta.clone(),
                    },
                );
            }
        }
    }

    pub(super) fn start_request(&mut self, to: TaskId, id: RequestId, req: Bytes) {
        let mine = self.primary_of().map(|(t, _)| t);
        if to.0 >= self.cfg.num_tasks || Some(to) == mine {
            // The Context refuses these; kept so that no command can leave a
            // request counted that will never be answered.
            tracing::warn!(node = %self.cfg.node, %to, "request_data to an invalid task; dropped");
            self.ctx.request_done(to);
            return;
        }
        self.primary.pending.insert(
            id,
            PendingRequest {
                to,
                req,
                sent: None,
                attempts: 0,
            },
        );
        self.send_request(id);
    }

    /// Sends pending request `id` to the current primary of its target (S14).
    fn send_request(&mut self, id: RequestId) {
        let Some(p) = self.primary.pending.get(&id) else {
            return;
        };
        let (to, req) = (p.to, p.req.clone());
        let Some(e) = self.view.primaries.get(to.index()).copied().flatten() else {
            return;
        };
        let sent = self.send(
            e.record.node,
            to,
            e.incarnation(),
            Body::Request { id, req },
        );
        let mut resent = false;
        if let Some(p) = self.primary.pending.get_mut(&id) {
            p.sent = sent.then_some((e.record.node, e.incarnation()));
            if sent {
                resent = p.attempts > 0;
                p.attempts += 1;
            }
        }
        if resent {
            self.emit(Event::RequestResent { to, id });
        }
    }

    pub(super) fn respond(&mut self, sid: ServeId, resp: Bytes) {
        let Some(s) = self.primary.serving.remove(&sid.0) else {
            return;
        };
        let key = (s.from, s.from_incarnation, s.id);
        self.primary.serving_index.remove(&key);
        self.primary
            .reply_cache
            .insert(key, (resp.clone(), s.reply_to));
        self.send(
            s.reply_to,
            s.from,
            s.from_incarnation,
            Body::Response {
                id: s.id,
                result: Reply::Data(resp),
            },
        );
    }

    pub(super) fn replicate(&mut self, data: Bytes) {
        let Some((task, _)) = self.primary_of() else {
            return;
        };
        self.primary.replica_log.push(data.clone());
        let seq = self.primary.replica_log.len() as u64;
        let standbys: Vec<(NodeId, i64)> = self.view.standbys[task.index()]
            .values()
            .map(|e| (e.record.node, e.create_revision))
            .collect();
        for (n, since) in standbys {
            self.send(
                n,
                task,
                Incarnation(since),
                Body::Replica {
                    seq,
                    data: data.clone(),
                },
            );
        }
    }

    /// Drops a message: counted, reported as an event, and logged (S19).
    /// Drops that a healthy job sees routinely around failovers (a message
    /// for a role that moved on, a duplicate) are logged at debug level.
    fn drop_msg(&mut self, from: NodeId, reason: DropReason) {
        self.stats.messages_dropped += 1;
        match reason {
            DropReason::NotForMe | DropReason::OutOfOrder => {
                tracing::debug!(node = %self.cfg.node, %from, ?reason, "message dropped")
            }
            _ => tracing::warn!(node = %self.cfg.node, %from, ?reason, "message dropped"),
        }
        self.emit(Event::MessageDropped { from, reason });
    }

    /// A message arrived: check its job, order and fencing, then dispatch.
    pub(super) fn on_message(&mut self, now: Instant, from: NodeId, msg: Envelope) {
        if self.phase != Phase::Running {
            return self.drop_msg(from, DropReason::NotForMe);
        }
        if msg.version != PROTOCOL_VERSION || msg.job != self.job_tag {
            return self.drop_msg(from, DropReason::ForeignJob);
        }
        if msg.from_node != from {
            // The connection's peer (authenticated by the driver) must be
            // the sender the message names.
            return self.drop_msg(from, DropReason::Impostor);
        }
        if msg.from_task.0 >= self.cfg.num_tasks || msg.to_task.0 >= self.cfg.num_tasks {
            tracing::warn!(node = %self.cfg.node, %from, "message names a task out of range; dropped");
            return self.drop_msg(from, DropReason::NotForMe);
        }
        let last = self
            .inbound_seq
            .entry((msg.from_node, msg.from_session))
            .or_insert(0);
        if msg.seq <= *last {
            return self.drop_msg(from, DropReason::OutOfOrder);
        }
        *last = msg.seq;
        self.dispatch(now, now, from, msg);
    }

    /// Routes an accepted message to the role it is for; holds it if this
    /// node is about to hold that role or reach that epoch.
    fn dispatch(&mut self, now: Instant, arrived: Instant, from: NodeId, msg: Envelope) {
        let fenced = (msg.incarnation < self.highest[msg.from_task.index()]
            || msg.incarnation <= self.dead_upto[msg.from_task.index()])
            && !self.canary(crate::Canary::AcceptFenced);
        if fenced {
            return self.drop_msg(from, DropReason::Fenced);
        }
        let to = msg.to_task;
        // `to_incarnation` is the store revision at which the receiver took
        // the role the sender addresses. If this node's view has not reached
        // it yet, the role may be ours and we do not know it: hold.
        let ahead = msg.to_incarnation.0 > self.view.revision;
        if let Body::Replica { seq, data } = msg.body {
            return match self.role {
                Role::Standby { task, since, .. }
                    if task == to && msg.from_task == to && since == msg.to_incarnation.0 =>
                {
                    self.accepted(msg.from_task, msg.incarnation);
                    self.apply_replica(now, from, msg.incarnation, seq, data)
                }
                _ if ahead => {
                    let body = Body::Replica { seq, data };
                    self.hold(arrived, from, Envelope { body, ..msg })
                }
                _ => self.drop_msg(from, DropReason::NotForMe),
            };
        }
        let (task, inc) = match self.role {
            Role::Primary { task, incarnation }
                if task == to && incarnation == msg.to_incarnation =>
            {
                (task, incarnation)
            }
            // Meant for a role this node may be about to learn it holds.
            _ if ahead => return self.hold(arrived, from, msg),
            // Meant for an earlier primary of the task, or for another node;
            // the sender resends when it learns the current primary.
            _ => return self.drop_msg(from, DropReason::NotForMe),
        };
        let epoch = self.primary.epoch.unwrap_or(self.view.epoch);
        if msg.epoch >= epoch {
            // Addressed to this node's role and not stale: from now on,
            // older incarnations of the sender's task are fenced (S3).
            self.accepted(msg.from_task, msg.incarnation);
        }
        if msg.epoch > epoch {
            return self.hold(arrived, from, msg);
        }
        if msg.epoch < epoch {
            if let Body::Request { id, .. } = msg.body {
                // S15: a server ahead answers EpochMismatch.
                self.send(
                    from,
                    msg.from_task,
                    msg.incarnation,
                    Body::Response {
                        id,
                        result: Reply::EpochMismatch {
                            server_epoch: epoch,
                        },
                    },
                );
            }
            return self.drop_msg(from, DropReason::StaleEpoch);
        }
        match msg.body {
            Body::Meta {
                direction,
                flag,
                meta,
            } => {
                let ok = match direction {
                    Direction::ToParents => self.is_child(msg.from_task),
                    Direction::ToChildren => self.is_parent(msg.from_task),
                };
                if !ok {
                    return self.drop_msg(from, DropReason::NotNeighbour);
                }
                if !self
                    .primary
                    .delivered_meta
                    .insert((msg.from_task, msg.incarnation, flag))
                {
                    return;
                }
                self.emit(Event::MetaDelivered {
                    task,
                    incarnation: inc,
                    from: msg.from_task,
                    from_incarnation: msg.incarnation,
                    epoch,
                    flag,
                    direction,
                    sender: (msg.from_node, msg.from_session, msg.seq),
                });
                let f = msg.from_task;
                match direction {
                    Direction::ToParents => {
                        self.call(now, |t, ctx| t.child_meta_ready(ctx, f, meta))
                    }
                    Direction::ToChildren => {
                        self.call(now, |t, ctx| t.parent_meta_ready(ctx, f, meta))
                    }
                }
            }
            Body::Request { id, req } => {
                let key = (msg.from_task, msg.incarnation, id);
                if let Some((resp, _)) = self.primary.reply_cache.get(&key).cloned() {
                    if let Some(entry) = self.primary.reply_cache.get_mut(&key) {
                        entry.1 = from;
                    }
                    self.send(
                        from,
                        msg.from_task,
                        msg.incarnation,
                        Body::Response {
                            id,
                            result: Reply::Data(resp),
                        },
                    );
                    return;
                }
                if self.primary.serving_index.contains_key(&key) {
                    // Being served; the answer goes to the latest sender node.
                    if let Some(sid) = self.primary.serving_index.get(&key).copied() {
                        if let Some(s) = self.primary.serving.get_mut(&sid) {
                            s.reply_to = from;
                        }
                    }
                    return;
                }
                let sid = self.primary.next_serve;
                self.primary.next_serve += 1;
                self.primary.serving_index.insert(key, sid);
                self.primary.serving.insert(
                    sid,
                    Serving {
                        from: msg.from_task,
                        from_incarnation: msg.incarnation,
                        id,
                        reply_to: from,
                    },
                );
                let link = if self.is_parent(msg.from_task) {
                    Link::Parent
                } else if self.is_child(msg.from_task) {
                    Link::Child
                } else {
                    Link::Other
                };
                self.emit(Event::Served {
                    task,
                    incarnation: inc,
                    from: msg.from_task,
                    from_incarnation: msg.incarnation,
                    id,
                    epoch,
                });
                let f = msg.from_task;
                self.call(now, |t, ctx| t.serve(ctx, f, link, ServeId(sid), req));
            }
            Body::Response { id, result } => {
                let matches = self
                    .primary
                    .pending
                    .get(&id)
                    .is_some_and(|p| p.to == msg.from_task);
                if !matches {
                    return; // answered already, or abandoned
                }
                let Some(p) = self.primary.pending.remove(&id) else {
                    return;
                };
                self.ctx.request_done(p.to);
                match result {
                    Reply::Data(resp) => {
                        self.emit(Event::DataDelivered {
                            task,
                            incarnation: inc,
                            from: msg.from_task,
                            from_incarnation: msg.incarnation,
                            id,
                            epoch,
                        });
                        let f = msg.from_task;
                        self.call(now, |t, ctx| t.data_ready(ctx, f, id, p.req, resp));
                    }
                    Reply::EpochMismatch { .. } => {}
                }
            }
            Body::Replica { .. } => {}
        }
    }

    /// Records that a message of `task`'s incarnation `inc` was accepted.
    fn accepted(&mut self, task: TaskId, inc: Incarnation) {
        if let Some(h) = self.highest.get_mut(task.index()) {
            if inc > *h {
                *h = inc;
            }
        }
    }

    fn apply_replica(
        &mut self,
        now: Instant,
        from: NodeId,
        from_incarnation: Incarnation,
        seq: u64,
        data: Bytes,
    ) {
        let (inc, applied) = self.standby.applied;
        if from_incarnation > inc {
            self.standby.applied = (from_incarnation, 0);
        } else if from_incarnation < inc {
            return self.drop_msg(from, DropReason::Fenced);
        }
        let applied = if from_incarnation > inc { 0 } else { applied };
        if seq != applied + 1 {
            return;
        }
        self.standby.applied.1 = seq;
        let Role::Standby { task, .. } = self.role else {
            return;
        };
        self.emit(Event::ReplicaApplied {
            task,
            from_incarnation,
            seq,
        });
        self.call(now, |t, ctx| t.replica_update(ctx, data));
    }

    fn hold(&mut self, arrived: Instant, from: NodeId, msg: Envelope) {
        if self.held.len() >= self.cfg.max_held_messages {
            // The oldest goes: a newer message is likelier to be wanted.
            if let Some((_, old_from, _)) = self.held.pop_front() {
                self.drop_msg(old_from, DropReason::HoldFull);
            }
        }
        self.held.push_back((arrived, from, msg));
    }

    /// Re-dispatches held messages after a change of role, epoch or view.
    /// A message held for longer than twice the TTL is dropped: whatever it
    /// waited for (a role, an epoch) would have come by then.
    pub(super) fn release_held(&mut self, now: Instant) {
        let held = std::mem::take(&mut self.held);
        let limit = self.cfg.ttl * 2;
        for (since, from, msg) in held {
            if self.phase != Phase::Running {
                return;
            }
            if now.saturating_duration_since(since) >= limit {
                self.drop_msg(from, DropReason::HoldExpired);
                continue;
            }
            self.dispatch(now, since, from, msg);
        }
    }
}
