//! A task that records every callback, and lets a test react to them: the
//! building block of the semantic tests (one per S-number).

use crate::task::{Context, ExitReason, Link, ServeId, Task, TaskBuilder};
use crate::wire::RequestId;
use crate::{Epoch, NodeId, TaskId};
use bytes::Bytes;
use std::sync::{Arc, Mutex};

/// One callback the node made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Call {
    /// `init`, with `ctx.is_primary()`.
    Init {
        /// Whether the node was primary.
        primary: bool,
    },
    /// `epoch_changed`.
    EpochChanged(Epoch),
    /// `parent_died`.
    ParentDied(TaskId),
    /// `child_died`.
    ChildDied(TaskId),
    /// `parent_restarted`.
    ParentRestarted(TaskId),
    /// `child_restarted`.
    ChildRestarted(TaskId),
    /// `parent_meta_ready`.
    ParentMeta(TaskId, Bytes),
    /// `child_meta_ready`.
    ChildMeta(TaskId, Bytes),
    /// `serve`.
    Serve {
        /// Requesting task.
        from: TaskId,
        /// Its link.
        link: Link,
        /// The request's handle.
        id: ServeId,
        /// The request.
        req: Bytes,
    },
    /// `data_ready`.
    DataReady {
        /// Serving task.
        from: TaskId,
        /// Request id.
        id: RequestId,
        /// The request.
        req: Bytes,
        /// The response.
        resp: Bytes,
    },
    /// `became_primary`.
    BecamePrimary,
    /// `became_standby`.
    BecameStandby,
    /// `replica_update`.
    Replica(Bytes),
    /// `advance_epoch_rejected`.
    AdvanceRejected(Epoch),
    /// `exit`.
    Exit(ExitReason),
}

/// One logged callback: which node, which task, what.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Logged {
    /// The node.
    pub node: NodeId,
    /// The task.
    pub task: TaskId,
    /// The callback.
    pub call: Call,
}

/// How a test reacts to a callback: gets the call and the context to act.
pub type React = Arc<dyn Fn(NodeId, &Call, &mut Context) + Send + Sync>;

/// The shared log of every callback of every recorder.
#[derive(Clone, Default)]
pub struct Log(Arc<Mutex<Vec<Logged>>>);

impl std::fmt::Debug for Log {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Log({} calls)", self.all().len())
    }
}

impl Log {
    /// Every call so far.
    pub fn all(&self) -> Vec<Logged> {
        self.0.lock().map(|v| v.clone()).unwrap_or_default()
    }
    /// Calls made on `node`.
    pub fn of_node(&self, node: NodeId) -> Vec<Call> {
        self.all()
            .into_iter()
            .filter(|l| l.node == node)
            .map(|l| l.call)
            .collect()
    }
    /// Calls made to any node's copy of `task`.
    pub fn of_task(&self, task: TaskId) -> Vec<(NodeId, Call)> {
        self.all()
            .into_iter()
            .filter(|l| l.task == task)
            .map(|l| (l.node, l.call))
            .collect()
    }
    fn push(&self, l: Logged) {
        if let Ok(mut v) = self.0.lock() {
            v.push(l);
        }
    }
}

/// Builds [`Recorder`] tasks for one node.
#[derive(Clone)]
pub struct RecorderBuilder {
    /// The node the tasks run on.
    pub node: NodeId,
    /// Where calls go.
    pub log: Log,
    /// The test's reaction to each call.
    pub react: React,
}

impl TaskBuilder for RecorderBuilder {
    fn build(&mut self, task: TaskId) -> Box<dyn Task> {
        Box::new(Recorder {
            node: self.node,
            task,
            log: self.log.clone(),
            react: self.react.clone(),
        })
    }
}

/// A task that logs every callback, then lets the test react.
pub struct Recorder {
    node: NodeId,
    task: TaskId,
    log: Log,
    react: React,
}

impl Recorder {
    fn on(&mut self, ctx: &mut Context, call: Call) {
        self.log.push(Logged {
            node: self.node,
            task: self.task,
            call: call.clone(),
        });
        (self.react)(self.node, &call, ctx);
    }
}

impl Task for Recorder {
    fn init(&mut self, ctx: &mut Context) {
        let primary = ctx.is_primary();
        self.on(ctx, Call::Init { primary });
    }
    fn epoch_changed(&mut self, ctx: &mut Context, epoch: Epoch) {
        self.on(ctx, Call::EpochChanged(epoch));
    }
    fn parent_died(&mut self, ctx: &mut Context, parent: TaskId) {
        self.on(ctx, Call::ParentDied(parent));
    }
    fn child_died(&mut self, ctx: &mut Context, child: TaskId) {
        self.on(ctx, Call::ChildDied(child));
    }
    fn parent_restarted(&mut self, ctx: &mut Context, parent: TaskId) {
        self.on(ctx, Call::ParentRestarted(parent));
    }
    fn child_restarted(&mut self, ctx: &mut Context, child: TaskId) {
        self.on(ctx, Call::ChildRestarted(child));
    }
    fn parent_meta_ready(&mut self, ctx: &mut Context, parent: TaskId, meta: Bytes) {
        self.on(ctx, Call::ParentMeta(parent, meta));
    }
    fn child_meta_ready(&mut self, ctx: &mut Context, child: TaskId, meta: Bytes) {
        self.on(ctx, Call::ChildMeta(child, meta));
    }
    fn serve(&mut self, ctx: &mut Context, from: TaskId, link: Link, id: ServeId, req: Bytes) {
        self.on(
            ctx,
            Call::Serve {
                from,
                link,
                id,
                req,
            },
        );
    }
    fn data_ready(
        &mut self,
        ctx: &mut Context,
        from: TaskId,
        id: RequestId,
        req: Bytes,
        resp: Bytes,
    ) {
        self.on(
            ctx,
            Call::DataReady {
                from,
                id,
                req,
                resp,
            },
        );
    }
    fn became_primary(&mut self, ctx: &mut Context) {
        self.on(ctx, Call::BecamePrimary);
    }
    fn became_standby(&mut self, ctx: &mut Context) {
        self.on(ctx, Call::BecameStandby);
    }
    fn replica_update(&mut self, ctx: &mut Context, update: Bytes) {
        self.on(ctx, Call::Replica(update));
    }
    fn advance_epoch_rejected(&mut self, ctx: &mut Context, epoch: Epoch) {
        self.on(ctx, Call::AdvanceRejected(epoch));
    }
    fn exit(&mut self, ctx: &mut Context, reason: &ExitReason) {
        self.on(ctx, Call::Exit(reason.clone()));
    }
}

/// A cluster of [`Recorder`] tasks over `topology`, with `react` as every
/// task's behaviour; returns the cluster and the shared log.
pub fn recorded_cluster(
    cfg: super::ClusterConfig,
    topology: Arc<dyn crate::Topology>,
    react: React,
) -> (super::Cluster, Log) {
    let log = Log::default();
    let l = log.clone();
    let cluster = super::Cluster::new(
        cfg,
        topology,
        Box::new(move |node| {
            Box::new(RecorderBuilder {
                node,
                log: l.clone(),
                react: react.clone(),
            })
        }),
    );
    (cluster, log)
}
