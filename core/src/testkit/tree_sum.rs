//! The tree aggregation application (the original's regression task).
//!
//! Task 0 sets `param = epoch` and flags its children; every task fetches
//! the param from its parent, flags its own children, computes
//! `param × id + Σ children's gradients` once all children's gradients are
//! in, and flags its parent. Task 0 checks that epoch `e` yields
//! `e × Σ ids` (105 × e for 15 tasks), advances the epoch, and exits the job
//! after the last epoch. Every failover is survived by re-fetching: meta
//! flags are re-sent to new incarnations and requests follow new primaries.

use crate::task::{Context, Link, ServeId, Task, TaskBuilder};
use crate::wire::RequestId;
use crate::{Epoch, TaskId};
use bytes::Bytes;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// What task 0 found in one epoch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EpochResult {
    /// The epoch.
    pub epoch: Epoch,
    /// The aggregate task 0 computed.
    pub total: u64,
    /// The aggregate expected: `epoch × Σ ids`.
    pub expected: u64,
}

/// Results reported by every incarnation of task 0, shared by all nodes of a
/// cluster (a test's window into the application).
#[derive(Clone, Debug, Default)]
pub struct Results(Arc<Mutex<Vec<EpochResult>>>);

impl Results {
    /// Every result recorded so far.
    pub fn all(&self) -> Vec<EpochResult> {
        self.0.lock().map(|v| v.clone()).unwrap_or_default()
    }
    fn push(&self, r: EpochResult) {
        if let Ok(mut v) = self.0.lock() {
            v.push(r);
        }
    }
}

/// Builds [`TreeSum`] tasks.
#[derive(Clone, Debug)]
pub struct TreeSumBuilder {
    /// Number of tasks.
    pub num_tasks: u32,
    /// Task 0 exits the job after verifying this epoch.
    pub last_epoch: u64,
    /// Where task 0 records its results.
    pub results: Results,
    /// Task 0 waits this long (a timer) between verifying an epoch and
    /// advancing; zero advances at once.
    pub pace: std::time::Duration,
}

impl TreeSumBuilder {
    /// Tasks that run `last_epoch` epochs and record results in `results`.
    pub fn new(num_tasks: u32, last_epoch: u64, results: Results) -> Self {
        TreeSumBuilder {
            num_tasks,
            last_epoch,
            results,
            pace: std::time::Duration::ZERO,
        }
    }

    /// Task 0 waits `pace` between epochs.
    pub fn with_pace(mut self, pace: std::time::Duration) -> Self {
        self.pace = pace;
        self
    }
}

impl TaskBuilder for TreeSumBuilder {
    fn build(&mut self, task: TaskId) -> Box<dyn Task> {
        Box::new(TreeSum {
            id: task,
            num_tasks: self.num_tasks,
            last_epoch: self.last_epoch,
            results: self.results.clone(),
            pace: self.pace,
            epoch: Epoch(0),
            param: None,
            grads: BTreeMap::new(),
            sent_grad: false,
            waiting: Vec::new(),
        })
    }
}

const PARAM: &[u8] = b"param";
const GRAD: &[u8] = b"grad";

/// One task of the tree aggregation.
#[derive(Debug)]
pub struct TreeSum {
    id: TaskId,
    num_tasks: u32,
    last_epoch: u64,
    results: Results,
    pace: std::time::Duration,
    epoch: Epoch,
    param: Option<u64>,
    grads: BTreeMap<TaskId, u64>,
    sent_grad: bool,
    /// Requests waiting for this task's param or gradient.
    waiting: Vec<(ServeId, Bytes)>,
}

fn enc(v: u64) -> Bytes {
    Bytes::copy_from_slice(&v.to_le_bytes())
}

fn dec(b: &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(b.try_into().ok()?))
}

impl TreeSum {
    fn gradient(&self, ctx: &Context) -> Option<u64> {
        let param = self.param?;
        if ctx.children().iter().any(|c| !self.grads.contains_key(c)) {
            return None;
        }
        let own = param.wrapping_mul(u64::from(self.id.0));
        Some(self.grads.values().fold(own, |a, g| a.wrapping_add(*g)))
    }

    fn answer(&self, ctx: &Context, req: &[u8]) -> Option<Bytes> {
        match req {
            PARAM => self.param.map(enc),
            GRAD => self.gradient(ctx).map(enc),
            _ => Some(Bytes::new()),
        }
    }

    fn progress(&mut self, ctx: &mut Context) {
        let waiting = std::mem::take(&mut self.waiting);
        for (sid, req) in waiting {
            match self.answer(ctx, &req) {
                Some(resp) => {
                    let sent = ctx.respond(sid, resp);
                    refused_fails_job(ctx, sent);
                }
                None => self.waiting.push((sid, req)),
            }
        }
        let Some(total) = self.gradient(ctx) else {
            return;
        };
        if self.id.0 == 0 {
            if self.sent_grad {
                return;
            }
            self.sent_grad = true;
            let e = self.epoch.0;
            let ids: u64 = (0..u64::from(self.num_tasks)).sum();
            self.results.push(EpochResult {
                epoch: self.epoch,
                total,
                expected: e.wrapping_mul(ids),
            });
            if self.pace.is_zero() {
                self.finish_epoch(ctx);
            } else {
                ctx.set_timer(self.pace, e);
            }
        } else if !self.sent_grad {
            self.sent_grad = true;
            let sent = ctx.flag_meta_to_parents(GRAD).map(drop);
            refused_fails_job(ctx, sent);
        }
    }
}

impl TreeSum {
    /// Task 0, after verifying the current epoch: next epoch, or the end.
    fn finish_epoch(&mut self, ctx: &mut Context) {
        let e = self.epoch.0;
        if e >= self.last_epoch {
            ctx.exit_job(format!("tree_sum verified {e} epochs"));
        } else {
            ctx.advance_epoch();
        }
    }
}

impl Task for TreeSum {
    fn timer(&mut self, ctx: &mut Context, token: u64) {
        if token == self.epoch.0 {
            self.finish_epoch(ctx);
        }
    }

    fn epoch_changed(&mut self, ctx: &mut Context, epoch: Epoch) {
        self.epoch = epoch;
        self.param = None;
        self.grads.clear();
        self.sent_grad = false;
        self.waiting.clear();
        if self.id.0 == 0 {
            self.param = Some(epoch.0);
            let sent = ctx.flag_meta_to_children(PARAM).map(drop);
            refused_fails_job(ctx, sent);
            self.progress(ctx);
        }
    }

    fn parent_meta_ready(&mut self, ctx: &mut Context, parent: TaskId, meta: Bytes) {
        if meta.as_ref() == PARAM {
            let sent = ctx.request_data(parent, PARAM).map(drop);
            refused_fails_job(ctx, sent);
        }
    }

    fn child_meta_ready(&mut self, ctx: &mut Context, child: TaskId, meta: Bytes) {
        if meta.as_ref() == GRAD {
            let sent = ctx.request_data(child, GRAD).map(drop);
            refused_fails_job(ctx, sent);
        }
    }

    fn serve(&mut self, ctx: &mut Context, _from: TaskId, _link: Link, id: ServeId, req: Bytes) {
        match self.answer(ctx, &req) {
            Some(resp) => {
                let sent = ctx.respond(id, resp);
                refused_fails_job(ctx, sent);
            }
            None => self.waiting.push((id, req)),
        }
    }

    fn data_ready(
        &mut self,
        ctx: &mut Context,
        from: TaskId,
        _id: RequestId,
        req: Bytes,
        resp: Bytes,
    ) {
        let Some(v) = dec(&resp) else { return };
        match req.as_ref() {
            PARAM if self.param.is_none() => {
                self.param = Some(v);
                let sent = ctx.flag_meta_to_children(PARAM).map(drop);
                refused_fails_job(ctx, sent);
            }
            GRAD => {
                self.grads.insert(from, v);
            }
            _ => {}
        }
        self.progress(ctx);
    }
}

/// The application never sends anything a [`Context`] should refuse; if it
/// is refused all the same, the job fails with the reason, for the checks
/// to see.
fn refused_fails_job(ctx: &mut Context, sent: Result<(), crate::CommandError>) {
    if let Err(e) = sent {
        ctx.fail_job(format!("tree_sum: a command was refused: {e}"));
    }
}
