//! What a [`Node`](crate::Node) asks its driver to do, and what it reports.

use crate::store::StoreOp;
use crate::task::ExitReason;
use crate::wire::{Direction, Envelope, RequestId};
use crate::{Epoch, Incarnation, NodeId, SessionId, TaskId};
use serde::{Deserialize, Serialize};

/// Names one store operation, so its result can be handed back with
/// [`Node::handle_store_result`](crate::Node::handle_store_result).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct OpId(pub u64);

/// An output of a [`Node`](crate::Node), drained with
/// [`Node::poll_action`](crate::Node::poll_action).
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Run `op` against the store and hand its result back with
    /// [`Node::handle_store_result`](crate::Node::handle_store_result)(`id`, …).
    /// A `Watch` op's events are handed in with
    /// [`Node::handle_store_event`](crate::Node::handle_store_event).
    Store {
        /// Names the operation.
        id: OpId,
        /// The operation.
        op: StoreOp,
    },
    /// Open a connection to `node` at `addr`, replacing any previous one.
    /// Report a failure, or a later break, with
    /// [`Node::handle_disconnect`](crate::Node::handle_disconnect).
    Connect {
        /// The peer.
        node: NodeId,
        /// Its address.
        addr: String,
        /// The peer's session as registered in the store. If the address
        /// answers as `node` with another session, report
        /// [`Disconnect::OtherSession`].
        session: SessionId,
    },
    /// Send `msg` on the connection to `to` (opened by the latest `Connect`).
    /// Messages on one connection must arrive in order or not at all.
    Send {
        /// The peer.
        to: NodeId,
        /// The message.
        msg: Envelope,
    },
    /// The node no longer needs its connection to `node`.
    Close {
        /// The peer.
        node: NodeId,
    },
    /// Something happened that a log, a metric or a checker may want to see.
    Event(Event),
}

/// Why a node stopped being primary.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum StepDownReason {
    /// The lease could not be renewed in time (S2).
    LeaseDeadline,
    /// The store reported the lease gone.
    LeaseLost,
    /// The node or the job stopped.
    Stopped,
}

/// Something that happened inside a node: every membership change, every
/// callback of the application, every message dropped. Reported as
/// [`Action::Event`] in the order it happened.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Event {
    /// A new session (lease) began; the node registered under `nodes/`.
    SessionStarted {
        /// The session.
        session: SessionId,
    },
    /// The session ended: its lease expired or could not be renewed in time.
    SessionLost {
        /// The session.
        session: SessionId,
    },
    /// The node became primary of `task` (after `init` or `became_primary`).
    BecamePrimary {
        /// The task.
        task: TaskId,
        /// Its new incarnation.
        incarnation: Incarnation,
        /// Whether it was promoted from standby.
        promoted: bool,
    },
    /// The node became a standby of `task`.
    BecameStandby {
        /// The task.
        task: TaskId,
    },
    /// The node stopped being primary of `task`.
    SteppedDown {
        /// The task.
        task: TaskId,
        /// The incarnation it held.
        incarnation: Incarnation,
        /// Why.
        reason: StepDownReason,
    },
    /// `Task::epoch_changed(epoch)` was called.
    EpochChanged {
        /// The task.
        task: TaskId,
        /// The epoch.
        epoch: Epoch,
    },
    /// `Task::parent_died` or `Task::child_died` was called.
    NeighbourDied {
        /// The receiving task.
        task: TaskId,
        /// The neighbour.
        neighbour: TaskId,
        /// The incarnation that died.
        incarnation: Incarnation,
        /// Whether the neighbour is a parent (else a child).
        parent: bool,
    },
    /// `Task::parent_restarted` or `Task::child_restarted` was called.
    NeighbourRestarted {
        /// The receiving task.
        task: TaskId,
        /// The neighbour.
        neighbour: TaskId,
        /// Its new incarnation.
        incarnation: Incarnation,
        /// Whether the neighbour is a parent (else a child).
        parent: bool,
    },
    /// `Task::parent_meta_ready` / `child_meta_ready` was called.
    MetaDelivered {
        /// The receiving task.
        task: TaskId,
        /// The receiver's incarnation.
        incarnation: Incarnation,
        /// Sending task.
        from: TaskId,
        /// Its incarnation.
        from_incarnation: Incarnation,
        /// Epoch of the flag.
        epoch: Epoch,
        /// Flag number within the sender's epoch.
        flag: u32,
        /// Direction of the flag.
        direction: Direction,
        /// Sending node and session, and the message's sequence number.
        sender: (NodeId, SessionId, u64),
    },
    /// `Task::serve` was called.
    Served {
        /// The serving task.
        task: TaskId,
        /// Its incarnation.
        incarnation: Incarnation,
        /// Requesting task.
        from: TaskId,
        /// Its incarnation.
        from_incarnation: Incarnation,
        /// The request.
        id: RequestId,
        /// Epoch of the request.
        epoch: Epoch,
    },
    /// `Task::data_ready` was called.
    DataDelivered {
        /// The requesting task.
        task: TaskId,
        /// Its incarnation.
        incarnation: Incarnation,
        /// The serving task.
        from: TaskId,
        /// The server's incarnation.
        from_incarnation: Incarnation,
        /// The request.
        id: RequestId,
        /// Epoch of the request.
        epoch: Epoch,
    },
    /// `Task::replica_update` was called.
    ReplicaApplied {
        /// The task.
        task: TaskId,
        /// The primary incarnation that sent it.
        from_incarnation: Incarnation,
        /// Position in that incarnation's log.
        seq: u64,
    },
    /// `Task::advance_epoch_rejected` was called.
    AdvanceRejected {
        /// The task.
        task: TaskId,
        /// The epoch it tried to advance from.
        epoch: Epoch,
    },
    /// A message was dropped.
    MessageDropped {
        /// Sending node.
        from: NodeId,
        /// Why.
        reason: DropReason,
    },
    /// A store value did not decode and was ignored (S19).
    BadStoreValue {
        /// The key.
        key: String,
    },
    /// The job ended; `Task::exit` was called if the node held a task.
    JobExited {
        /// Why the job ended.
        reason: ExitReason,
    },
    /// The node stopped (its lease revocation was emitted just before); no
    /// more actions follow.
    Stopped {
        /// The job's exit reason, or `None` if only this node was stopped.
        reason: Option<ExitReason>,
    },
    /// The node cannot join the job (for example its spec differs from the
    /// job's); it stops.
    Refused {
        /// What is wrong.
        detail: String,
    },
    /// A data request was sent again (S14): the target's primary changed or
    /// the connection to it broke before the reply.
    RequestResent {
        /// The target task.
        to: TaskId,
        /// The request.
        id: RequestId,
    },
    /// A connection to `node` gave evidence that the process holding
    /// `session` is gone, so this node revoked that session's lease instead of
    /// waiting for it to expire (the fast path after a process death).
    PeerGone {
        /// The peer.
        node: NodeId,
        /// Its session whose lease was revoked.
        session: SessionId,
        /// The evidence.
        evidence: Disconnect,
    },
}

/// How a connection to a peer failed or broke, and what that says about the
/// peer's process. Reported with
/// [`Node::handle_disconnect`](crate::Node::handle_disconnect).
///
/// Only the driver can tell these apart, and it must not guess: a timeout, a
/// reset or a closed connection is [`Disconnect::Broken`]. A node revokes the
/// lease of a peer session on [`Disconnect::Refused`] or
/// [`Disconnect::OtherSession`], so a false report of either would let a
/// standby take over from a primary that still acts (S3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Disconnect {
    /// No evidence about the peer's process: a timeout, a reset, a closed or
    /// silent connection, a handshake that failed. The peer may be alive
    /// behind a partition; failover waits for its lease to expire.
    Broken,
    /// The peer's host answered that nothing listens at the registered
    /// address (`ECONNREFUSED`): the process that registered it is gone.
    Refused,
    /// The address answered as the same node with another session: the
    /// session that was connected to has ended.
    OtherSession(SessionId),
}

/// Why a message was dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum DropReason {
    /// Another job, or another protocol version.
    ForeignJob,
    /// A sequence number not above the last one from that sender session.
    OutOfOrder,
    /// The sender's incarnation is older than one already seen (S3).
    Fenced,
    /// Tagged with an epoch older than the receiver's (S11).
    StaleEpoch,
    /// Addressed to a task or incarnation this node does not hold.
    NotForMe,
    /// Too many messages held for a later epoch or role; the oldest went.
    HoldFull,
    /// Held for a later epoch or role longer than twice the TTL.
    HoldExpired,
    /// The message names a sender other than the connection's peer.
    Impostor,
    /// Not consistent with the topology (for example a meta flag from a task
    /// that is not a neighbour).
    NotNeighbour,
}
