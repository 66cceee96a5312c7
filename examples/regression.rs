//! Distributed gradient descent for linear regression: a real workload with
//! real data flowing along a tree of tasks, on the real runtime (every node
//! a tokio task with its own TCP listener on loopback, coordinated by the
//! embedded store), while a chaos loop kills primaries, task 0's included.
//!
//! Every task owns a slice of a synthetic data set (`y = w_true·x + noise`,
//! `x ∈ R^4`), generated deterministically from the seed and the task id.
//! One step of gradient descent per epoch:
//!
//! 1. task 0 (the root) holds the model `w` and flags meta `"w"` to its
//!    children;
//! 2. every task fetches `w` from its parent (`request_data`), flags its own
//!    children, computes `Σ (w·x − y)·x`, `Σ (w·x − y)²` and the count over
//!    its own points, adds its children's sums (fetched after their `"g"`
//!    flag, added in task-id order) and flags its parent;
//! 3. the root updates `w ← w − lr·g/count`, replicates the new model to its
//!    hot standby, waits a little (the pace) and advances the epoch.
//!
//! After the last step one more pass evaluates the loss of the final model
//! and the root ends the job. The sums are made in a fixed order and every
//! partial sum is tagged with the step whose weights it was computed at, so
//! the final weights are bit-identical whatever the failures.
//!
//! ```text
//! cargo run --release --example regression
//! cargo run --release --example regression -- --tasks 15 --epochs 50 --kill-every 1500
//! ```
//!
//! The same file is included by `tests/regression.rs`, which runs the job
//! with and without failures and compares the results bit for bit.

// In the test that includes this file, `main` and its helpers are unused.
#![cfg_attr(test, allow(dead_code))]

use std::process::ExitCode;
use std::time::Duration;

/// The application: the regression problem and its [`Task`](taskgraph::Task).
pub mod app {
    use bytes::Bytes;
    use std::collections::{BTreeMap, BTreeSet};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;
    use taskgraph::testkit::Rng;
    use taskgraph::{
        CommandError, Context, Epoch, Link, RequestId, ServeId, Task, TaskBuilder, TaskId,
    };

    /// This application sends small payloads and one request per neighbour
    /// and epoch, so the context should never refuse a command. If it does,
    /// the job fails with the reason rather than wait for an answer that
    /// will not come.
    fn or_fail<T>(ctx: &mut Context, sent: Result<T, CommandError>) {
        if let Err(e) = sent {
            ctx.fail_job(format!("a command was refused: {e}"));
        }
    }

    /// Dimension of the inputs.
    pub const DIM: usize = 4;
    /// A point of `R^DIM` (an input, a weight vector, a gradient).
    pub type Vector = [f64; DIM];

    /// Meta flag of a parent whose weights can be fetched, and the request.
    const W: &[u8] = b"w";
    /// Meta flag of a child whose partial sums can be fetched, and the request.
    const G: &[u8] = b"g";
    /// The step tag of a partial sum whose parts were computed at different
    /// weights (after a failover that lost an update): unusable.
    const MIXED: u64 = u64::MAX;

    /// The data set and the optimiser's settings; all of it derives from
    /// `seed`, so every node builds the same data.
    #[derive(Clone, Debug)]
    pub struct Problem {
        /// Seed of the true weights and of every task's points.
        pub seed: u64,
        /// Points owned by each task.
        pub points_per_task: usize,
        /// Noise amplitude: `y = w_true·x + u`, `u` uniform in `[-noise, noise]`.
        pub noise: f64,
        /// Learning rate.
        pub lr: f64,
        /// Steps of gradient descent; one more pass evaluates the result.
        pub steps: u64,
    }

    fn uniform(rng: &mut Rng, lo: f64, hi: f64) -> f64 {
        let unit = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        lo + (hi - lo) * unit
    }

    fn dot(a: &Vector, b: &Vector) -> f64 {
        a.iter().zip(b).map(|(x, y)| x * y).sum()
    }

    impl Problem {
        /// The weights the data were generated with.
        pub fn w_true(&self) -> Vector {
            let mut rng = Rng::new(self.seed);
            std::array::from_fn(|_| uniform(&mut rng, -2.0, 2.0))
        }

        /// The points owned by `task`: `x` uniform in `[-1, 1]^DIM`.
        pub fn points(&self, task: TaskId) -> Vec<(Vector, f64)> {
            let w = self.w_true();
            let mut rng = Rng::new(self.seed ^ ((u64::from(task.0) + 1) << 32));
            (0..self.points_per_task)
                .map(|_| {
                    let x: Vector = std::array::from_fn(|_| uniform(&mut rng, -1.0, 1.0));
                    let y = dot(&w, &x) + uniform(&mut rng, -self.noise, self.noise);
                    (x, y)
                })
                .collect()
        }

        /// The mean squared error of `w` over the points of tasks
        /// `0..tasks`, computed here in one place (a check of the
        /// distributed evaluation; the summation order differs).
        pub fn loss(&self, tasks: u32, w: &Vector) -> f64 {
            let (mut sse, mut n) = (0.0, 0usize);
            for t in 0..tasks {
                for (x, y) in self.points(TaskId(t)) {
                    let r = dot(w, &x) - y;
                    sse += r * r;
                    n += 1;
                }
            }
            sse / n.max(1) as f64
        }
    }

    /// One pass over the data as task 0 saw it.
    #[derive(Clone, Debug, PartialEq)]
    pub struct Pass {
        /// The epoch of the pass.
        pub epoch: u64,
        /// The step: the pass evaluated `w_step` (the weights after `step` updates).
        pub step: u64,
        /// The weights the pass evaluated.
        pub w: Vector,
        /// The mean squared error at `w`; `None` if the pass was discarded
        /// because some of its sums were computed at other weights.
        pub loss: Option<f64>,
    }

    /// How a new primary of task 0 found the model it took over.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Resume {
        /// The model is the input of the current epoch: the pass is re-run.
        Rerun,
        /// The model was already updated in the current epoch but the epoch
        /// was not advanced: only the advance is made.
        AdvanceOnly,
        /// The model is older than the current epoch (an update was lost
        /// with the old primary): the pass runs, and is discarded if its
        /// sums were computed at newer weights.
        Behind,
    }

    #[derive(Debug, Default)]
    struct Log {
        passes: Vec<Pass>,
        resumes: Vec<(u64, Resume)>,
        lost_state: bool,
    }

    /// What every incarnation of task 0 reported, shared by all nodes of a
    /// cluster running in one process (the driver's window into the job).
    #[derive(Clone, Debug, Default)]
    pub struct Report(Arc<Mutex<Log>>);

    impl Report {
        /// Every pass recorded, in order.
        pub fn passes(&self) -> Vec<Pass> {
            self.0.lock().map(|l| l.passes.clone()).unwrap_or_default()
        }
        /// Every takeover of task 0 by a node that held the model: the epoch
        /// and what the new primary found.
        pub fn resumes(&self) -> Vec<(u64, Resume)> {
            self.0.lock().map(|l| l.resumes.clone()).unwrap_or_default()
        }
        /// Whether a task 0 found itself without the model and ended the job.
        pub fn lost_state(&self) -> bool {
            self.0.lock().map(|l| l.lost_state).unwrap_or(false)
        }
        /// The loss at the initial weights (step 0).
        pub fn initial_loss(&self) -> Option<f64> {
            self.passes()
                .iter()
                .find(|p| p.step == 0 && p.loss.is_some())
                .and_then(|p| p.loss)
        }
        /// The final weights and their loss, once the evaluation pass after
        /// `steps` updates is done.
        pub fn final_result(&self, steps: u64) -> Option<(Vector, f64)> {
            self.passes()
                .iter()
                .rev()
                .find(|p| p.step == steps && p.loss.is_some())
                .and_then(|p| p.loss.map(|l| (p.w, l)))
        }
        /// The first step at which two passes over the same weights
        /// disagreed (they must be bit-identical), if any.
        pub fn inconsistency(&self) -> Option<u64> {
            let mut seen: BTreeMap<u64, (Vector, f64)> = BTreeMap::new();
            for p in self.passes() {
                let Some(loss) = p.loss else { continue };
                if let Some((w, l)) = seen.get(&p.step) {
                    let same = w.iter().zip(&p.w).all(|(a, b)| a.to_bits() == b.to_bits())
                        && l.to_bits() == loss.to_bits();
                    if !same {
                        return Some(p.step);
                    }
                } else {
                    seen.insert(p.step, (p.w, loss));
                }
            }
            None
        }
        fn push(&self, p: Pass) {
            if let Ok(mut l) = self.0.lock() {
                l.passes.push(p);
            }
        }
        fn resumed(&self, epoch: u64, how: Resume) {
            if let Ok(mut l) = self.0.lock() {
                l.resumes.push((epoch, how));
            }
        }
        fn set_lost(&self) {
            if let Ok(mut l) = self.0.lock() {
                l.lost_state = true;
            }
        }
    }

    /// Little-endian encoding of the payloads.
    fn put_u64(buf: &mut Vec<u8>, v: u64) {
        buf.extend_from_slice(&v.to_le_bytes());
    }
    fn put_vector(buf: &mut Vec<u8>, v: &Vector) {
        for x in v {
            put_u64(buf, x.to_bits());
        }
    }

    struct Reader<'a>(&'a [u8]);

    impl Reader<'_> {
        fn u64(&mut self) -> Option<u64> {
            let (head, tail) = self.0.split_first_chunk::<8>()?;
            self.0 = tail;
            Some(u64::from_le_bytes(*head))
        }
        fn f64(&mut self) -> Option<f64> {
            self.u64().map(f64::from_bits)
        }
        fn vector(&mut self) -> Option<Vector> {
            let mut v = [0.0; DIM];
            for x in &mut v {
                *x = self.f64()?;
            }
            Some(v)
        }
        fn end(&self) -> Option<()> {
            self.0.is_empty().then_some(())
        }
    }

    /// The weights after `step` updates (what a parent serves).
    #[derive(Clone, Copy, Debug, PartialEq)]
    struct Weights {
        step: u64,
        w: Vector,
    }

    impl Weights {
        fn encode(&self) -> Bytes {
            let mut b = Vec::with_capacity(8 * (1 + DIM));
            put_u64(&mut b, self.step);
            put_vector(&mut b, &self.w);
            b.into()
        }
        fn decode(b: &[u8]) -> Option<Self> {
            let mut r = Reader(b);
            let w = Weights {
                step: r.u64()?,
                w: r.vector()?,
            };
            r.end().map(|()| w)
        }
    }

    /// Sums over the points of a subtree, at the weights of `step`.
    #[derive(Clone, Copy, Debug, PartialEq)]
    struct Partial {
        step: u64,
        count: u64,
        sse: f64,
        grad: Vector,
    }

    impl Partial {
        fn compute(at: &Weights, points: &[(Vector, f64)]) -> Self {
            let mut p = Partial {
                step: at.step,
                count: points.len() as u64,
                sse: 0.0,
                grad: [0.0; DIM],
            };
            for (x, y) in points {
                let r = dot(&at.w, x) - y;
                p.sse += r * r;
                for (g, xi) in p.grad.iter_mut().zip(x) {
                    *g += r * xi;
                }
            }
            p
        }
        fn add(&mut self, o: &Partial) {
            if self.step != o.step {
                self.step = MIXED;
            }
            self.count += o.count;
            self.sse += o.sse;
            for (g, h) in self.grad.iter_mut().zip(&o.grad) {
                *g += h;
            }
        }
        fn encode(&self) -> Bytes {
            let mut b = Vec::with_capacity(8 * (3 + DIM));
            put_u64(&mut b, self.step);
            put_u64(&mut b, self.count);
            put_u64(&mut b, self.sse.to_bits());
            put_vector(&mut b, &self.grad);
            b.into()
        }
        fn decode(b: &[u8]) -> Option<Self> {
            let mut r = Reader(b);
            let p = Partial {
                step: r.u64()?,
                count: r.u64()?,
                sse: r.f64()?,
                grad: r.vector()?,
            };
            r.end().map(|()| p)
        }
    }

    /// Task 0's state across epochs, replicated to its standbys: the
    /// weights `w` after `step` updates, which are the input of epoch
    /// `ready_epoch`.
    #[derive(Clone, Copy, Debug, PartialEq)]
    struct Model {
        ready_epoch: u64,
        step: u64,
        w: Vector,
    }

    impl Model {
        fn encode(&self) -> Bytes {
            let mut b = Vec::with_capacity(8 * (2 + DIM));
            put_u64(&mut b, self.ready_epoch);
            put_u64(&mut b, self.step);
            put_vector(&mut b, &self.w);
            b.into()
        }
        fn decode(b: &[u8]) -> Option<Self> {
            let mut r = Reader(b);
            let m = Model {
                ready_epoch: r.u64()?,
                step: r.u64()?,
                w: r.vector()?,
            };
            r.end().map(|()| m)
        }
    }

    /// Builds [`Regression`] tasks.
    #[derive(Clone, Debug)]
    pub struct RegressionBuilder {
        /// The problem.
        pub problem: Problem,
        /// Where task 0 records its passes.
        pub report: Report,
        /// Task 0 waits this long (a timer) after an update before
        /// advancing the epoch; zero advances at once.
        pub pace: Duration,
    }

    impl TaskBuilder for RegressionBuilder {
        fn build(&mut self, task: TaskId) -> Box<dyn Task> {
            Box::new(Regression {
                id: task,
                points: self.problem.points(task),
                problem: self.problem.clone(),
                report: self.report.clone(),
                pace: self.pace,
                model: None,
                announced: false,
                epoch: Epoch(0),
                running: false,
                input: None,
                asked: BTreeSet::new(),
                own: None,
                children: BTreeMap::new(),
                done: false,
                waiting: Vec::new(),
            })
        }
    }

    /// One task of the regression.
    #[derive(Debug)]
    pub struct Regression {
        id: TaskId,
        points: Vec<(Vector, f64)>,
        problem: Problem,
        report: Report,
        pace: Duration,
        // Task 0 only, kept across epochs and replicated.
        model: Option<Model>,
        /// The model was replicated since this node became primary.
        announced: bool,
        // Per epoch.
        epoch: Epoch,
        /// Task 0 runs a pass in this epoch.
        running: bool,
        /// The weights of this epoch's pass.
        input: Option<Weights>,
        /// Tasks asked for data in this epoch (parent for `w`, children for `g`).
        asked: BTreeSet<TaskId>,
        /// Sums over this task's own points.
        own: Option<Partial>,
        /// Children's subtree sums, in task-id order.
        children: BTreeMap<TaskId, Partial>,
        /// Flagged the parent (task 0: finished the pass).
        done: bool,
        /// Requests waiting for this epoch's weights or sums.
        waiting: Vec<(ServeId, Bytes)>,
    }

    impl Regression {
        fn is_root(&self) -> bool {
            self.id.0 == 0
        }

        /// The subtree's sums, once this task's own and every child's are in:
        /// own first, then the children in task-id order, so that the result
        /// does not depend on the order of arrival.
        fn total(&self, ctx: &Context) -> Option<Partial> {
            let mut total = self.own?;
            for c in ctx.children() {
                total.add(self.children.get(c)?);
            }
            Some(total)
        }

        fn answer(&self, ctx: &Context, req: &[u8]) -> Option<Bytes> {
            match req {
                W => self.input.map(|w| w.encode()),
                G => self.total(ctx).map(|p| p.encode()),
                _ => Some(Bytes::new()),
            }
        }

        /// Starts this epoch's pass at `input`.
        fn start(&mut self, ctx: &mut Context, input: Weights) {
            self.input = Some(input);
            self.own = Some(Partial::compute(&input, &self.points));
            let sent = ctx.flag_meta_to_children(W);
            or_fail(ctx, sent);
        }

        fn progress(&mut self, ctx: &mut Context) {
            for (sid, req) in std::mem::take(&mut self.waiting) {
                match self.answer(ctx, &req) {
                    Some(resp) => {
                        let sent = ctx.respond(sid, resp);
                        or_fail(ctx, sent);
                    }
                    None => self.waiting.push((sid, req)),
                }
            }
            if self.done {
                return;
            }
            let Some(total) = self.total(ctx) else { return };
            self.done = true;
            if self.is_root() {
                if self.running {
                    self.finish_pass(ctx, total);
                }
            } else {
                let sent = ctx.flag_meta_to_parents(G);
                or_fail(ctx, sent);
            }
        }

        /// Task 0, with every sum of the epoch in: update, or end the job.
        fn finish_pass(&mut self, ctx: &mut Context, total: Partial) {
            let Some(m) = self.model else { return };
            let e = self.epoch.0;
            if total.step != m.step {
                // Some sums were computed at other weights (a failover lost
                // an update): discard the pass, run it again next epoch.
                self.report.push(Pass {
                    epoch: e,
                    step: m.step,
                    w: m.w,
                    loss: None,
                });
                self.commit(
                    ctx,
                    Model {
                        ready_epoch: e + 1,
                        ..m
                    },
                );
                return;
            }
            let count = total.count.max(1) as f64;
            let loss = total.sse / count;
            self.report.push(Pass {
                epoch: e,
                step: m.step,
                w: m.w,
                loss: Some(loss),
            });
            if m.step >= self.problem.steps {
                ctx.exit_job(format!(
                    "regression: {} steps, loss {loss:.6e}",
                    self.problem.steps
                ));
                return;
            }
            let mut w = m.w;
            for (wi, gi) in w.iter_mut().zip(&total.grad) {
                *wi -= self.problem.lr * (gi / count);
            }
            self.commit(
                ctx,
                Model {
                    ready_epoch: e + 1,
                    step: m.step + 1,
                    w,
                },
            );
        }

        /// Task 0: keep and replicate the model of the next epoch, then
        /// advance (after the pace).
        fn commit(&mut self, ctx: &mut Context, m: Model) {
            self.model = Some(m);
            let sent = ctx.replicate(m.encode());
            or_fail(ctx, sent);
            if self.pace.is_zero() {
                ctx.advance_epoch();
            } else {
                ctx.set_timer(self.pace, self.epoch.0);
            }
        }

        fn root_epoch(&mut self, ctx: &mut Context, epoch: Epoch) {
            let m = match self.model {
                Some(m) if !self.announced => {
                    let how = match m.ready_epoch.cmp(&epoch.0) {
                        std::cmp::Ordering::Equal => Resume::Rerun,
                        std::cmp::Ordering::Greater => Resume::AdvanceOnly,
                        std::cmp::Ordering::Less => Resume::Behind,
                    };
                    self.report.resumed(epoch.0, how);
                    m
                }
                Some(m) => m,
                None if epoch.0 == 0 => Model {
                    ready_epoch: 0,
                    step: 0,
                    w: [0.0; DIM],
                },
                None => {
                    // A spare took the task with no standby left: starting
                    // from zero would silently give another answer.
                    self.report.set_lost();
                    ctx.fail_job("lost the model state");
                    return;
                }
            };
            self.model = Some(m);
            if !self.announced {
                // New standbys get this incarnation's log: start it.
                self.announced = true;
                let sent = ctx.replicate(m.encode());
                or_fail(ctx, sent);
            }
            if m.ready_epoch > epoch.0 {
                // The update of this epoch was made; the advance was lost.
                ctx.advance_epoch();
                return;
            }
            self.running = true;
            self.start(
                ctx,
                Weights {
                    step: m.step,
                    w: m.w,
                },
            );
            self.progress(ctx);
        }
    }

    impl Task for Regression {
        fn became_primary(&mut self, _ctx: &mut Context) {
            self.announced = false;
        }

        fn replica_update(&mut self, _ctx: &mut Context, update: Bytes) {
            match Model::decode(&update) {
                Some(m) => self.model = Some(m),
                None => tracing::warn!(task = %self.id, "undecodable replica update ignored"),
            }
        }

        fn epoch_changed(&mut self, ctx: &mut Context, epoch: Epoch) {
            self.epoch = epoch;
            self.running = false;
            self.input = None;
            self.asked.clear();
            self.own = None;
            self.children.clear();
            self.done = false;
            self.waiting.clear();
            if self.is_root() {
                self.root_epoch(ctx, epoch);
            }
        }

        fn timer(&mut self, ctx: &mut Context, token: u64) {
            let pending = self.model.is_some_and(|m| m.ready_epoch > self.epoch.0);
            if token == self.epoch.0 && pending {
                ctx.advance_epoch();
            }
        }

        fn parent_meta_ready(&mut self, ctx: &mut Context, parent: TaskId, meta: Bytes) {
            // A new primary of the parent flags again; the pending request
            // follows it by itself.
            if meta.as_ref() == W && self.input.is_none() && self.asked.insert(parent) {
                let sent = ctx.request_data(parent, W);
                or_fail(ctx, sent);
            }
        }

        fn child_meta_ready(&mut self, ctx: &mut Context, child: TaskId, meta: Bytes) {
            if meta.as_ref() == G && !self.children.contains_key(&child) && self.asked.insert(child)
            {
                let sent = ctx.request_data(child, G);
                or_fail(ctx, sent);
            }
        }

        fn serve(
            &mut self,
            ctx: &mut Context,
            _from: TaskId,
            _link: Link,
            id: ServeId,
            req: Bytes,
        ) {
            match self.answer(ctx, &req) {
                Some(resp) => {
                    let sent = ctx.respond(id, resp);
                    or_fail(ctx, sent);
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
            match req.as_ref() {
                W if self.input.is_none() && !self.is_root() => match Weights::decode(&resp) {
                    Some(w) => self.start(ctx, w),
                    None => tracing::warn!(task = %self.id, %from, "bad weights payload"),
                },
                G if ctx.children().contains(&from) => match Partial::decode(&resp) {
                    Some(p) => {
                        self.children.entry(from).or_insert(p);
                    }
                    None => tracing::warn!(task = %self.id, %from, "bad gradient payload"),
                },
                _ => {}
            }
            self.progress(ctx);
        }
    }
}

/// Runs a whole job in this process: the nodes, the embedded store, and a
/// chaos loop that kills nodes (never two of the same task within the
/// guard, never a primary without a standby that can take over).
pub mod harness {
    use super::app::{Problem, RegressionBuilder, Report};
    use std::collections::{BTreeMap, BTreeSet, VecDeque};
    use std::sync::Arc;
    use std::time::{Duration, Instant};
    use taskgraph::runtime::{
        spawn_node, MemStoreServer, NodeExit, NodeHandle, NodeOptions, RuntimeError, Store,
    };
    use taskgraph::testkit::Rng;
    use taskgraph::{Event, NodeConfig, NodeId, TaskId, Topology, TreeTopology};
    use tokio::sync::mpsc;
    use tokio::task::JoinHandle;

    /// Which node a scripted kill aims at.
    #[derive(Clone, Copy, Debug)]
    pub enum Target {
        /// The primary of this task.
        PrimaryOf(TaskId),
        /// The primary of a random task other than task 0.
        OtherPrimary,
        /// A standby of this task.
        StandbyOf(TaskId),
    }

    /// The failures injected.
    #[derive(Clone, Debug)]
    pub enum Chaos {
        /// None.
        None,
        /// Every `every`, kill a node: task 0's primary with probability
        /// `root_share`, else any node that may be killed.
        Random {
            /// Interval between kills.
            every: Duration,
            /// Seed of the choices.
            seed: u64,
            /// Share of the kills aimed at task 0's primary.
            root_share: f64,
        },
        /// Kill these targets, each at the given time after task 0 reached
        /// epoch 1, or as soon after as it may be killed.
        Script {
            /// `(time, target)`, in time order.
            kills: Vec<(Duration, Target)>,
            /// Seed of the choices of [`Target::OtherPrimary`].
            seed: u64,
        },
    }

    /// A job and how to run it.
    #[derive(Clone, Debug)]
    pub struct JobSpec {
        /// Job name (store key prefix).
        pub job: String,
        /// Number of tasks.
        pub tasks: u32,
        /// Fanout of the tree.
        pub fanout: u32,
        /// Standbys per task.
        pub standbys: u32,
        /// Spare nodes started with the job.
        pub spares: u32,
        /// The problem.
        pub problem: Problem,
        /// Pause of task 0 between epochs.
        pub pace: Duration,
        /// Lease TTL (whole seconds).
        pub ttl: Duration,
        /// The failures injected.
        pub chaos: Chaos,
        /// Never kill two nodes of the same task within this time.
        pub kill_guard: Duration,
        /// A killed node is replaced by a fresh node (a new spare) after this.
        pub replace_after: Duration,
        /// Give up (kill everything) after this.
        pub timeout: Duration,
        /// Print progress.
        pub verbose: bool,
    }

    /// A node killed by the chaos loop.
    #[derive(Clone, Debug)]
    pub struct Kill {
        /// When, since the start.
        pub at: Duration,
        /// The node.
        pub node: NodeId,
        /// The task it held, and whether as primary.
        pub role: Option<(TaskId, bool)>,
    }

    /// How a job went.
    #[derive(Debug)]
    pub struct Outcome {
        /// What task 0 reported.
        pub report: Report,
        /// How every node that was not killed ended.
        pub exits: Vec<(NodeId, Result<NodeExit, String>)>,
        /// Every node ended with a completed job and the final pass is in.
        pub completed: bool,
        /// The kills.
        pub kills: Vec<Kill>,
        /// Promotions of a standby to primary.
        pub promotions: u64,
        /// Promotions for task 0.
        pub root_promotions: u64,
        /// Tasks restarted on a spare (no standby was left).
        pub spare_takeovers: u64,
        /// Last epoch task 0 reached.
        pub epochs: u64,
        /// Wall time from the start of the nodes to the end of the job.
        pub wall: Duration,
    }

    fn options(spec: &JobSpec, id: NodeId) -> Result<NodeOptions, String> {
        let mut cfg = NodeConfig::new(id, spec.job.clone(), "", spec.tasks, spec.standbys);
        cfg.ttl = spec.ttl;
        cfg.step_down_margin = Duration::from_millis(300);
        cfg.renew_interval = (cfg.ttl.saturating_sub(cfg.step_down_margin)) / 3;
        cfg.validate().map_err(|e| e.to_string())?;
        let listen = "127.0.0.1:0".parse().map_err(|e| format!("{e}"))?;
        Ok(NodeOptions::new(cfg, listen))
    }

    struct Cluster<'a> {
        spec: &'a JobSpec,
        store: Arc<dyn Store>,
        topology: Arc<dyn Topology>,
        report: Report,
        events: mpsc::UnboundedSender<(NodeId, Event)>,
        nodes: BTreeMap<NodeId, NodeHandle>,
        killed: Vec<JoinHandle<Result<NodeExit, RuntimeError>>>,
        next_id: u64,
        /// Task held by each live node, and whether as primary.
        roles: BTreeMap<NodeId, (TaskId, bool)>,
        /// Standbys of task 0 that applied a replica of the model.
        ready: BTreeSet<NodeId>,
        last_kill: BTreeMap<TaskId, Instant>,
    }

    impl Cluster<'_> {
        async fn start_node(&mut self) -> Result<(), String> {
            let id = NodeId(self.next_id);
            self.next_id += 1;
            let builder = RegressionBuilder {
                problem: self.spec.problem.clone(),
                report: self.report.clone(),
                pace: self.spec.pace,
            };
            let h = spawn_node(
                options(self.spec, id)?,
                self.store.clone(),
                self.topology.clone(),
                Box::new(builder),
                Some(self.events.clone()),
            )
            .await
            .map_err(|e| e.to_string())?;
            self.nodes.insert(id, h);
            Ok(())
        }

        fn primary_of(&self, task: TaskId) -> Option<NodeId> {
            self.roles
                .iter()
                .find(|(_, r)| **r == (task, true))
                .map(|(n, _)| *n)
        }

        /// Whether `n` may be killed now without risking the job's state:
        /// no other node of its task was killed within the guard, and a
        /// primary has a standby that can take over (for task 0, one that
        /// holds the model).
        fn may_kill(&self, n: NodeId, now: Instant) -> bool {
            if !self.nodes.get(&n).is_some_and(|h| !h.join.is_finished()) {
                return false;
            }
            let Some(&(task, primary)) = self.roles.get(&n) else {
                return true; // a spare
            };
            if self
                .last_kill
                .get(&task)
                .is_some_and(|t| now.duration_since(*t) < self.spec.kill_guard)
            {
                return false;
            }
            !primary
                || self.roles.iter().any(|(s, r)| {
                    *r == (task, false) && *s != n && (task.0 != 0 || self.ready.contains(s))
                })
        }

        fn kill(&mut self, n: NodeId, now: Instant, since: Instant) -> Option<Kill> {
            let h = self.nodes.remove(&n)?;
            h.kill.kill();
            self.killed.push(h.join);
            let role = self.roles.remove(&n);
            self.ready.remove(&n);
            if let Some((task, _)) = role {
                self.last_kill.insert(task, now);
            }
            let k = Kill {
                at: now.duration_since(since),
                node: n,
                role,
            };
            if self.spec.verbose {
                let what = match role {
                    Some((t, true)) => format!("primary of task {}", t.0),
                    Some((t, false)) => format!("standby of task {}", t.0),
                    None => "a spare".into(),
                };
                println!("{:>7.2} s  kill node {} ({what})", k.at.as_secs_f64(), n.0);
            }
            Some(k)
        }
    }

    /// Runs the job to its end (or `spec.timeout`).
    pub async fn run(spec: &JobSpec) -> Result<Outcome, String> {
        let topology = TreeTopology::new(spec.fanout, spec.tasks).map_err(|e| e.to_string())?;
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut c = Cluster {
            spec,
            store: Arc::new(MemStoreServer::new()),
            topology: Arc::new(topology),
            report: Report::default(),
            events: tx,
            nodes: BTreeMap::new(),
            killed: Vec::new(),
            next_id: 1,
            roles: BTreeMap::new(),
            ready: BTreeSet::new(),
            last_kill: BTreeMap::new(),
        };
        let started = Instant::now();
        for _ in 0..spec.tasks * (1 + spec.standbys) + spec.spares {
            c.start_node().await?;
        }
        let (mut rng, mut script) = match &spec.chaos {
            Chaos::Script { kills, seed } => (Rng::new(*seed), kills.iter().copied().collect()),
            Chaos::Random { seed, .. } => (Rng::new(*seed), VecDeque::new()),
            Chaos::None => (Rng::new(0), VecDeque::new()),
        };
        let mut kills = Vec::new();
        let mut replacements: Vec<Instant> = Vec::new();
        let (mut promotions, mut root_promotions, mut spare_takeovers) = (0, 0, 0);
        let mut had_primary: BTreeSet<TaskId> = BTreeSet::new();
        let mut epoch = (0u64, Instant::now());
        let mut running_since: Option<Instant> = None;
        let mut next_random = None;
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        let mut timed_out = false;
        loop {
            tokio::select! {
                Some((node, ev)) = rx.recv() => {
                    if !c.nodes.contains_key(&node) {
                        continue; // queued before the node was killed
                    }
                    match ev {
                        Event::BecamePrimary { task, promoted, .. } => {
                            c.roles.insert(node, (task, true));
                            c.ready.remove(&node);
                            let again = !had_primary.insert(task);
                            if promoted {
                                promotions += 1;
                                root_promotions += u64::from(task.0 == 0);
                            } else if again {
                                spare_takeovers += 1;
                            }
                            if spec.verbose && (promoted || again) {
                                println!(
                                    "{:>7.2} s  task {} {} on node {}",
                                    started.elapsed().as_secs_f64(),
                                    task.0,
                                    if promoted { "failed over to its standby" } else { "restarted on a spare" },
                                    node.0
                                );
                            }
                        }
                        Event::BecameStandby { task } => {
                            c.roles.insert(node, (task, false));
                        }
                        Event::ReplicaApplied { task, .. } if task.0 == 0 => {
                            c.ready.insert(node);
                        }
                        Event::SteppedDown { task, .. }
                            if c.roles.get(&node) == Some(&(task, true)) =>
                        {
                            c.roles.remove(&node);
                        }
                        Event::Stopped { .. } => {
                            c.roles.remove(&node);
                            c.ready.remove(&node);
                        }
                        Event::EpochChanged { task, epoch: e } if task.0 == 0 && e.0 > epoch.0 => {
                            if spec.verbose {
                                println!(
                                    "{:>7.2} s  epoch {:>3} ({:>5.0} ms)",
                                    started.elapsed().as_secs_f64(),
                                    e.0,
                                    epoch.1.elapsed().as_secs_f64() * 1000.0
                                );
                            }
                            epoch = (e.0, Instant::now());
                            if running_since.is_none() {
                                running_since = Some(Instant::now());
                            }
                        }
                        _ => {}
                    }
                }
                _ = tick.tick() => {
                    let now = Instant::now();
                    if let Some(since) = running_since {
                        let victim = match &spec.chaos {
                            Chaos::None => None,
                            Chaos::Random { every, root_share, .. } => {
                                let due = next_random.get_or_insert(now + *every);
                                if now < *due {
                                    None
                                } else {
                                    *due = now + *every;
                                    let root = c.primary_of(TaskId(0)).filter(|n| c.may_kill(*n, now));
                                    match root {
                                        Some(r) if rng.chance(*root_share) => Some(r),
                                        _ => {
                                            let ok: Vec<NodeId> = c.nodes.keys().copied().filter(|n| c.may_kill(*n, now)).collect();
                                            rng.pick(&ok).copied()
                                        }
                                    }
                                }
                            }
                            Chaos::Script { .. } => match script.front() {
                                Some((at, target)) if now.duration_since(since) >= *at => {
                                    let candidates: Vec<NodeId> = match target {
                                        Target::PrimaryOf(t) => c.primary_of(*t).into_iter().collect(),
                                        Target::StandbyOf(t) => c
                                            .roles
                                            .iter()
                                            .filter(|(_, r)| **r == (*t, false))
                                            .map(|(n, _)| *n)
                                            .collect(),
                                        Target::OtherPrimary => c.roles.iter()
                                            .filter(|(_, (t, p))| *p && t.0 != 0)
                                            .map(|(n, _)| *n)
                                            .collect(),
                                    };
                                    let ok: Vec<NodeId> = candidates.into_iter().filter(|n| c.may_kill(*n, now)).collect();
                                    let v = rng.pick(&ok).copied();
                                    if v.is_some() {
                                        script.pop_front();
                                    }
                                    v
                                }
                                _ => None,
                            },
                        };
                        if let Some(k) = victim.and_then(|v| c.kill(v, now, started)) {
                            kills.push(k);
                            replacements.push(now + spec.replace_after);
                        }
                    }
                    let due = replacements.iter().filter(|t| **t <= now).count();
                    replacements.retain(|t| *t > now);
                    for _ in 0..due {
                        c.start_node().await?;
                    }
                    if c.nodes.values().all(|h| h.join.is_finished()) {
                        break;
                    }
                    if now.duration_since(started) > spec.timeout {
                        timed_out = true;
                        break;
                    }
                }
            }
        }
        let wall = started.elapsed();
        if timed_out {
            let ids: Vec<NodeId> = c.nodes.keys().copied().collect();
            for n in ids {
                c.kill(n, Instant::now(), started);
            }
        }
        let mut exits = Vec::new();
        for (id, h) in std::mem::take(&mut c.nodes) {
            let r = match h.join.await {
                Ok(Ok(e)) => Ok(e),
                Ok(Err(e)) => Err(e.to_string()),
                Err(e) => Err(format!("node task failed: {e}")),
            };
            exits.push((id, r));
        }
        for h in std::mem::take(&mut c.killed) {
            let _ = h.await;
        }
        let completed = !timed_out
            && !c.report.lost_state()
            && c.report.final_result(spec.problem.steps).is_some()
            && exits
                .iter()
                .all(|(_, e)| matches!(e, Ok(NodeExit::JobEnded(r)) if r.is_completed()));
        Ok(Outcome {
            report: c.report.clone(),
            exits,
            completed,
            kills,
            promotions,
            root_promotions,
            spare_takeovers,
            epochs: epoch.0,
            wall,
        })
    }
}

#[derive(Clone, Debug)]
struct Args {
    tasks: u32,
    fanout: u32,
    epochs: u64,
    kill_every: u64,
    seed: u64,
    points: usize,
    pace_ms: u64,
    lr: f64,
}

const USAGE: &str =
    "usage: regression [--tasks N] [--fanout F] [--epochs E (steps of gradient descent)]
                  [--kill-every MS (0: no chaos)] [--seed S] [--points P (per task)]
                  [--pace-ms MS (pause between epochs)] [--lr RATE]";

fn parse() -> Result<Args, String> {
    let mut a = Args {
        tasks: 15,
        fanout: 2,
        epochs: 50,
        kill_every: 0,
        seed: 1,
        points: 200,
        pace_ms: 50,
        lr: 1.5,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--help" || flag == "-h" {
            return Err(USAGE.into());
        }
        let value = it
            .next()
            .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
        let num = |v: &str| {
            v.parse::<u64>()
                .map_err(|_| format!("{flag}: not a number: {v}"))
        };
        match flag.as_str() {
            "--tasks" => a.tasks = num(&value)?.try_into().map_err(|_| "--tasks: too large")?,
            "--fanout" => a.fanout = num(&value)?.try_into().map_err(|_| "--fanout: too large")?,
            "--epochs" => a.epochs = num(&value)?,
            "--kill-every" => a.kill_every = num(&value)?,
            "--seed" => a.seed = num(&value)?,
            "--points" => a.points = num(&value)?.try_into().map_err(|_| "--points: too large")?,
            "--pace-ms" => a.pace_ms = num(&value)?,
            "--lr" => {
                a.lr = value
                    .parse()
                    .map_err(|_| format!("--lr: not a number: {value}"))?
            }
            _ => return Err(format!("unknown flag {flag}\n{USAGE}")),
        }
    }
    if a.tasks == 0 || a.fanout == 0 {
        return Err(format!("--tasks and --fanout must be at least 1\n{USAGE}"));
    }
    Ok(a)
}

fn fmt_vector(v: &app::Vector) -> String {
    let parts: Vec<String> = v.iter().map(|x| format!("{x:+.6}")).collect();
    format!("[{}]", parts.join(", "))
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let spec = harness::JobSpec {
        job: "regression".into(),
        tasks: args.tasks,
        fanout: args.fanout,
        standbys: 1,
        spares: 2,
        problem: app::Problem {
            seed: args.seed,
            points_per_task: args.points,
            noise: 0.05,
            lr: args.lr,
            steps: args.epochs,
        },
        pace: Duration::from_millis(args.pace_ms),
        ttl: Duration::from_secs(2),
        chaos: if args.kill_every == 0 {
            harness::Chaos::None
        } else {
            harness::Chaos::Random {
                every: Duration::from_millis(args.kill_every),
                seed: args.seed,
                root_share: 0.33,
            }
        },
        kill_guard: Duration::from_secs(3),
        replace_after: Duration::from_secs(1),
        timeout: Duration::from_secs(30 + args.epochs * (args.pace_ms + 200) / 1000 * 2),
        verbose: true,
    };
    println!(
        "regression: {} tasks (fanout {}), 1 standby each, 2 spares: {} nodes on loopback, embedded store; \
         {} steps of gradient descent over {} points per task (d = {}){}",
        spec.tasks,
        spec.fanout,
        spec.tasks * 2 + 2,
        args.epochs,
        args.points,
        app::DIM,
        if args.kill_every > 0 {
            format!(", a node killed every {} ms", args.kill_every)
        } else {
            String::new()
        }
    );
    let out = match harness::run(&spec).await {
        Ok(o) => o,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let p = &spec.problem;
    let w_true = p.w_true();
    println!("true w    = {}", fmt_vector(&w_true));
    match out.report.final_result(p.steps) {
        Some((w, loss)) => {
            let initial = out.report.initial_loss().unwrap_or(f64::NAN);
            println!("final w   = {}", fmt_vector(&w));
            println!(
                "loss (mean squared error): {initial:.6e} at w = 0 -> {loss:.6e} after {} steps ({:.0}x lower); \
                 recomputed in one place: {:.6e}",
                p.steps,
                initial / loss,
                p.loss(spec.tasks, &w)
            );
        }
        None => println!("no final weights: the job did not finish its last pass"),
    }
    let discarded = out
        .report
        .passes()
        .iter()
        .filter(|x| x.loss.is_none())
        .count();
    println!(
        "{} steps in {} epochs ({discarded} pass(es) discarded), {:.1} s: {} kills, {} promotions ({} of task 0), {} spare takeovers",
        p.steps,
        out.epochs + 1,
        out.wall.as_secs_f64(),
        out.kills.len(),
        out.promotions,
        out.root_promotions,
        out.spare_takeovers
    );
    let resumes = out.report.resumes();
    if !resumes.is_empty() {
        println!("task 0 taken over with the model (epoch, how): {resumes:?}");
    }
    if let Some(step) = out.report.inconsistency() {
        println!("INCONSISTENT: two passes over step {step} disagree");
        return ExitCode::FAILURE;
    }
    if out.completed {
        ExitCode::SUCCESS
    } else {
        for (id, e) in &out.exits {
            println!("node {}: {e:?}", id.0);
        }
        println!("the job did NOT complete");
        ExitCode::FAILURE
    }
}
