//! What an application writes: a [`Task`] per task id, made by a
//! [`TaskBuilder`], acting through a [`Context`].

use crate::wire::RequestId;
use crate::{Epoch, NodeId, TaskId};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// How the requester of a data request is related to the server's task in
/// the current epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Link {
    /// The requester is a parent of the server's task.
    Parent,
    /// The requester is a child of the server's task.
    Child,
    /// The requester is neither (requests may go to any task).
    Other,
}

/// Names one request being served, for [`Context::respond`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServeId(pub(crate) u64);

/// Why a job ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum ExitReason {
    /// A task called [`Context::exit_job`] with this reason.
    Completed(String),
    /// A task called [`Context::fail_job`] with this reason.
    Failed(String),
    /// A task failed more than `max_failures` times within the failure window (S7).
    TooManyFailures {
        /// The task.
        task: TaskId,
        /// Failures counted within the window.
        failures: u32,
        /// The window, in milliseconds.
        window_ms: u64,
    },
}

impl ExitReason {
    /// Whether the job ended because the application said so (not by error).
    pub fn is_completed(&self) -> bool {
        matches!(self, ExitReason::Completed(_))
    }
}

impl fmt::Display for ExitReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExitReason::Completed(r) => write!(f, "completed: {r}"),
            ExitReason::Failed(r) => write!(f, "failed: {r}"),
            ExitReason::TooManyFailures { task, failures, window_ms } => write!(
                f,
                "task {task} failed {failures} times within {window_ms} ms, more than the restart limit allows"
            ),
        }
    }
}

/// The application's side of one task. The node calls these methods, never
/// two at once (S16), always with a [`Context`] to act through. Every method
/// but [`Task::serve`] defaults to doing nothing.
///
/// A task is built on a node when the node becomes its primary or one of its
/// standbys. Events about neighbours, epochs, meta and data go to the
/// primary only; a standby gets [`Task::became_standby`] and
/// [`Task::replica_update`] until it is promoted.
pub trait Task: Send {
    /// The task was built on this node, as primary or as standby
    /// (`ctx.is_primary()` tells which). A primary then gets
    /// [`Task::epoch_changed`] with the current epoch.
    fn init(&mut self, ctx: &mut Context) {
        let _ = ctx;
    }
    /// The job moved to `epoch` (S10). Delivered once per epoch in increasing
    /// order; meta and data of older epochs are no longer delivered (S11).
    fn epoch_changed(&mut self, ctx: &mut Context, epoch: Epoch) {
        let _ = (ctx, epoch);
    }
    /// The primary of parent task `parent` died (S4). Not emitted for a death
    /// that happened before this node became primary.
    fn parent_died(&mut self, ctx: &mut Context, parent: TaskId) {
        let _ = (ctx, parent);
    }
    /// The primary of child task `child` died (S4).
    fn child_died(&mut self, ctx: &mut Context, child: TaskId) {
        let _ = (ctx, child);
    }
    /// Parent task `parent` has a new primary (S5); always after the matching
    /// [`Task::parent_died`]. Not emitted for a parent whose death this node
    /// did not see.
    fn parent_restarted(&mut self, ctx: &mut Context, parent: TaskId) {
        let _ = (ctx, parent);
    }
    /// Child task `child` has a new primary (S5); always after the matching
    /// [`Task::child_died`].
    fn child_restarted(&mut self, ctx: &mut Context, child: TaskId) {
        let _ = (ctx, child);
    }
    /// A parent flagged meta to its children in the current epoch (S12).
    fn parent_meta_ready(&mut self, ctx: &mut Context, parent: TaskId, meta: Bytes) {
        let _ = (ctx, parent, meta);
    }
    /// A child flagged meta to its parents in the current epoch (S12).
    fn child_meta_ready(&mut self, ctx: &mut Context, child: TaskId, meta: Bytes) {
        let _ = (ctx, child, meta);
    }
    /// Task `from` asked this task for data (S13). Answer with
    /// [`Context::respond`], now or later in the same epoch. The default
    /// answers every request with an empty payload.
    fn serve(&mut self, ctx: &mut Context, from: TaskId, link: Link, id: ServeId, req: Bytes) {
        let _ = (from, link, req);
        // An empty answer is within every limit, and serve is only called
        // on a primary: this cannot fail.
        let _ = ctx.respond(id, Bytes::new());
    }
    /// The answer to [`Context::request_data`] `id` sent to `from` (S13),
    /// delivered once.
    fn data_ready(
        &mut self,
        ctx: &mut Context,
        from: TaskId,
        id: RequestId,
        req: Bytes,
        resp: Bytes,
    ) {
        let _ = (ctx, from, id, req, resp);
    }
    /// This standby was promoted to primary (S5, S17). [`Task::epoch_changed`]
    /// with the current epoch follows.
    fn became_primary(&mut self, ctx: &mut Context) {
        let _ = ctx;
    }
    /// This node holds the task as a standby (S17), after [`Task::init`].
    fn became_standby(&mut self, ctx: &mut Context) {
        let _ = ctx;
    }
    /// The primary replicated `update` (S17); delivered in order.
    fn replica_update(&mut self, ctx: &mut Context, update: Bytes) {
        let _ = (ctx, update);
    }
    /// A timer set with [`Context::set_timer`] fired. Timers of a primary
    /// are dropped when it stops being primary.
    fn timer(&mut self, ctx: &mut Context, token: u64) {
        let _ = (ctx, token);
    }
    /// [`Context::advance_epoch`] from `epoch` did nothing: the job had
    /// already moved on (S9).
    fn advance_epoch_rejected(&mut self, ctx: &mut Context, epoch: Epoch) {
        let _ = (ctx, epoch);
    }
    /// The job ended (S18): the last call, to save work. Commands issued here
    /// are ignored.
    fn exit(&mut self, ctx: &mut Context, reason: &ExitReason) {
        let _ = (ctx, reason);
    }
}

/// Makes the [`Task`] for a task id; called once per node each time the node
/// takes a task.
pub trait TaskBuilder: Send {
    /// The task object for `task`.
    fn build(&mut self, task: TaskId) -> Box<dyn Task>;
}

impl<F> TaskBuilder for F
where
    F: FnMut(TaskId) -> Box<dyn Task> + Send,
{
    fn build(&mut self, task: TaskId) -> Box<dyn Task> {
        self(task)
    }
}

/// A command recorded by a [`Context`], carried out by the node after the
/// callback returns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Command {
    FlagMeta(crate::wire::Direction, Bytes),
    Request(TaskId, RequestId, Bytes),
    Respond(ServeId, Bytes),
    AdvanceEpoch(Epoch),
    ExitJob(ExitReason),
    Replicate(Bytes),
    SetTimer(std::time::Duration, u64),
}

/// The longest exit reason stored, in bytes; [`Context::exit_job`] and
/// [`Context::fail_job`] cut a longer one at a character boundary and end it
/// with `…`. The reason is written to the store, whose requests are bounded.
pub const MAX_EXIT_REASON_LEN: usize = 4096;

/// Why a [`Context`] refused a command. Nothing was recorded: the task may
/// try again (a smaller payload, or after an answer frees a request slot).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CommandError {
    /// The payload is longer than [`NodeConfig::max_payload`](crate::NodeConfig::max_payload).
    #[error("payload of {len} bytes is over the limit of {limit} bytes")]
    PayloadTooLarge {
        /// The payload's length.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// This task already waits for [`NodeConfig::max_pending_requests`](crate::NodeConfig::max_pending_requests)
    /// answers from `to` in this epoch. Each [`Task::data_ready`] (or the
    /// next epoch) frees a slot.
    #[error("{pending} requests to task {to} are waiting for an answer, the most allowed")]
    TooManyPendingRequests {
        /// The target task.
        to: TaskId,
        /// Requests waiting for an answer from it.
        pending: usize,
    },
    /// The target is not a task of this job, or is this task itself.
    #[error("task {0} is not another task of this job")]
    NoSuchTask(TaskId),
    /// Only a primary sends meta, data and replica updates; this node holds
    /// the task as a standby.
    #[error("this node is a standby of the task; only the primary sends")]
    NotPrimary,
}

/// A task's handle on the framework. It only records commands; the node
/// carries them out when the callback returns, in the order given.
///
/// Commands that carry a payload check it first and return a
/// [`CommandError`] instead of recording a command the node could not carry
/// out: a payload over [`NodeConfig::max_payload`](crate::NodeConfig::max_payload),
/// a request over [`NodeConfig::max_pending_requests`](crate::NodeConfig::max_pending_requests)
/// to one task (back-pressure: wait for an answer), a request to a task that
/// does not exist, or a send from a standby.
#[derive(Debug)]
pub struct Context {
    pub(crate) node: NodeId,
    pub(crate) task: TaskId,
    pub(crate) epoch: Epoch,
    pub(crate) primary: bool,
    pub(crate) parents: Vec<TaskId>,
    pub(crate) children: Vec<TaskId>,
    pub(crate) next_request: u64,
    pub(crate) commands: Vec<Command>,
    pub(crate) limits: Limits,
    /// Requests recorded or sent and not yet answered or abandoned, per
    /// target. The node lowers a count when it removes a pending request.
    pub(crate) in_flight: BTreeMap<TaskId, usize>,
}

/// The bounds a [`Context`] checks, copied from the node's configuration.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    pub(crate) num_tasks: u32,
    pub(crate) max_payload: usize,
    pub(crate) max_pending_requests: usize,
}

impl Context {
    pub(crate) fn new(node: NodeId, task: TaskId, limits: Limits) -> Self {
        Context {
            node,
            task,
            epoch: Epoch(0),
            primary: false,
            parents: Vec::new(),
            children: Vec::new(),
            next_request: 0,
            commands: Vec::new(),
            limits,
            in_flight: BTreeMap::new(),
        }
    }

    /// A payload-carrying command may be recorded: this is the primary and
    /// the payload is within the limit.
    fn check_send(&self, payload: &Bytes) -> Result<(), CommandError> {
        if !self.primary {
            return Err(CommandError::NotPrimary);
        }
        if payload.len() > self.limits.max_payload {
            return Err(CommandError::PayloadTooLarge {
                len: payload.len(),
                limit: self.limits.max_payload,
            });
        }
        Ok(())
    }

    /// A request to `to` has been answered or abandoned.
    pub(crate) fn request_done(&mut self, to: TaskId) {
        if let Some(n) = self.in_flight.get_mut(&to) {
            *n -= 1;
            if *n == 0 {
                self.in_flight.remove(&to);
            }
        }
    }

    /// This task's id.
    pub fn task(&self) -> TaskId {
        self.task
    }
    /// The node running this task.
    pub fn node(&self) -> NodeId {
        self.node
    }
    /// The epoch this task is in.
    pub fn epoch(&self) -> Epoch {
        self.epoch
    }
    /// Whether this node is the task's primary (else a standby).
    pub fn is_primary(&self) -> bool {
        self.primary
    }
    /// Parents of this task in the current epoch.
    pub fn parents(&self) -> &[TaskId] {
        &self.parents
    }
    /// Children of this task in the current epoch.
    pub fn children(&self) -> &[TaskId] {
        &self.children
    }

    /// Delivers `meta` to every parent's primary as `child_meta_ready`, once
    /// per receiver incarnation, in this epoch (S12).
    ///
    /// # Errors
    /// [`CommandError::PayloadTooLarge`] or [`CommandError::NotPrimary`];
    /// nothing is sent.
    pub fn flag_meta_to_parents(&mut self, meta: impl Into<Bytes>) -> Result<(), CommandError> {
        self.flag_meta(crate::wire::Direction::ToParents, meta.into())
    }
    /// Delivers `meta` to every child's primary as `parent_meta_ready` (S12).
    ///
    /// # Errors
    /// As [`Context::flag_meta_to_parents`].
    pub fn flag_meta_to_children(&mut self, meta: impl Into<Bytes>) -> Result<(), CommandError> {
        self.flag_meta(crate::wire::Direction::ToChildren, meta.into())
    }
    fn flag_meta(
        &mut self,
        direction: crate::wire::Direction,
        meta: Bytes,
    ) -> Result<(), CommandError> {
        self.check_send(&meta)?;
        self.commands.push(Command::FlagMeta(direction, meta));
        Ok(())
    }
    /// Asks task `to` for data (S13); the answer arrives once as
    /// [`Task::data_ready`] with the returned id, unless the epoch changes
    /// first (S11).
    ///
    /// # Errors
    /// [`CommandError::TooManyPendingRequests`] when `to` already owes this
    /// task [`NodeConfig::max_pending_requests`](crate::NodeConfig::max_pending_requests)
    /// answers, [`CommandError::NoSuchTask`], [`CommandError::PayloadTooLarge`]
    /// or [`CommandError::NotPrimary`]. Nothing is sent.
    pub fn request_data(
        &mut self,
        to: TaskId,
        req: impl Into<Bytes>,
    ) -> Result<RequestId, CommandError> {
        let req = req.into();
        if to.0 >= self.limits.num_tasks || to == self.task {
            return Err(CommandError::NoSuchTask(to));
        }
        self.check_send(&req)?;
        let pending = self.in_flight.get(&to).copied().unwrap_or(0);
        if pending >= self.limits.max_pending_requests {
            return Err(CommandError::TooManyPendingRequests { to, pending });
        }
        self.in_flight.insert(to, pending + 1);
        let id = RequestId(self.next_request);
        self.next_request += 1;
        self.commands.push(Command::Request(to, id, req));
        Ok(id)
    }
    /// Answers the request `id` given to [`Task::serve`]. A second answer to
    /// the same request is ignored.
    ///
    /// # Errors
    /// [`CommandError::PayloadTooLarge`] (the request stays unanswered: answer
    /// it again with less) or [`CommandError::NotPrimary`].
    pub fn respond(&mut self, id: ServeId, resp: impl Into<Bytes>) -> Result<(), CommandError> {
        let resp = resp.into();
        self.check_send(&resp)?;
        self.commands.push(Command::Respond(id, resp));
        Ok(())
    }
    /// Moves the job from the current epoch E to E+1 if it is still at E (S9);
    /// otherwise [`Task::advance_epoch_rejected`] is called.
    pub fn advance_epoch(&mut self) {
        self.commands.push(Command::AdvanceEpoch(self.epoch));
    }
    /// Ends the whole job (S18). A reason longer than
    /// [`MAX_EXIT_REASON_LEN`] bytes is cut.
    pub fn exit_job(&mut self, reason: impl Into<String>) {
        self.commands
            .push(Command::ExitJob(ExitReason::Completed(bounded_reason(
                reason.into(),
            ))));
    }
    /// Calls [`Task::timer`] with `token` once `after` has passed (on the
    /// driver's clock; virtual time in the harness). Only a primary's
    /// timers fire.
    pub fn set_timer(&mut self, after: std::time::Duration, token: u64) {
        self.commands.push(Command::SetTimer(after, token));
    }
    /// Ends the whole job as failed (S18): like [`Context::exit_job`], but
    /// every node's `run` reports [`ExitReason::Failed`].
    pub fn fail_job(&mut self, reason: impl Into<String>) {
        self.commands
            .push(Command::ExitJob(ExitReason::Failed(bounded_reason(
                reason.into(),
            ))));
    }
    /// Sends `update` to every standby of this task, in order (S17).
    ///
    /// # Errors
    /// [`CommandError::PayloadTooLarge`] or [`CommandError::NotPrimary`];
    /// nothing is sent.
    pub fn replicate(&mut self, update: impl Into<Bytes>) -> Result<(), CommandError> {
        let update = update.into();
        self.check_send(&update)?;
        self.commands.push(Command::Replicate(update));
        Ok(())
    }
}

/// `reason` cut to at most [`MAX_EXIT_REASON_LEN`] bytes, at a character
/// boundary, ending in `…` when cut.
fn bounded_reason(mut reason: String) -> String {
    if reason.len() <= MAX_EXIT_REASON_LEN {
        return reason;
    }
    let mut end = MAX_EXIT_REASON_LEN - '…'.len_utf8();
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    reason.truncate(end);
    reason.push('…');
    reason
}
