//! Benchmarks of the core.
//!
//! - `node_inputs`: messages one [`Node`] accepts per second in steady state,
//!   as primary of an inner task of a tree: meta flags and data requests from
//!   the current primary of one of its children, each followed by draining
//!   every action (the driver's contract).
//! - `harness`: virtual events per second of the whole in-memory cluster
//!   harness running the tree aggregation under a random fault schedule.
//!
//! Run with `cargo bench -p taskgraph-core`.

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, SamplingMode, Throughput};
use std::collections::{BTreeMap, VecDeque};
use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;
use taskgraph_core::keys::{Key, Keys};
use taskgraph_core::store::{MemStore, StoreOp, StoreResponse, WatchId};
use taskgraph_core::testkit::{run_schedule, Schedule, ScheduleConfig};
use taskgraph_core::wire::{self, Envelope};
use taskgraph_core::{
    Action, Body, Direction, Epoch, Event, Incarnation, Instant, Node, NodeConfig, NodeId,
    RequestId, Task, TaskId, TreeTopology, PROTOCOL_VERSION,
};

/// Messages fed to the node per measured iteration.
const BATCH: u64 = 1024;

const JOB: &str = "bench";

/// A task that does nothing but answer every data request at once (the
/// default `serve`).
struct Answering;

impl Task for Answering {}

/// An input waiting to be handed to one of the rig's nodes.
enum Input {
    StoreResult {
        node: usize,
        id: taskgraph_core::OpId,
        result: Result<StoreResponse, taskgraph_core::store::StoreError>,
    },
    Watch {
        node: usize,
        resp: taskgraph_core::store::WatchResponse,
    },
    Message {
        from: NodeId,
        to: usize,
        msg: Envelope,
    },
}

/// A few nodes and a `MemStore` driven by hand, synchronously: every store
/// op is applied at once and every message is delivered at once, in order.
struct Rig {
    now: Instant,
    store: MemStore,
    /// Node `i` has id `i + 1`.
    nodes: Vec<Node>,
    watches: BTreeMap<WatchId, usize>,
    inputs: VecDeque<Input>,
    keys: Keys,
}

impl Rig {
    /// `num_tasks` nodes for a tree of `num_tasks` tasks (fanout 2), all
    /// started at time zero and run for `warmup` of virtual time.
    fn new(num_tasks: u32, warmup: Duration) -> Rig {
        let topology = Arc::new(TreeTopology::new(2, num_tasks).expect("valid tree"));
        let mut rig = Rig {
            now: Instant::ZERO,
            store: MemStore::new(),
            nodes: Vec::new(),
            watches: BTreeMap::new(),
            inputs: VecDeque::new(),
            keys: Keys::new("taskgraph", JOB),
        };
        for i in 0..num_tasks {
            let id = NodeId(u64::from(i) + 1);
            let cfg = NodeConfig::new(id, JOB, format!("bench-{}", id.0), num_tasks, 0);
            let builder = Box::new(|_: TaskId| Box::new(Answering) as Box<dyn Task>);
            let node = Node::new(rig.now, cfg, topology.clone(), builder).expect("valid node");
            rig.nodes.push(node);
            rig.drain(rig.nodes.len() - 1);
            rig.settle();
        }
        rig.run_for(warmup);
        rig
    }

    fn index(&self, id: NodeId) -> Option<usize> {
        let i = usize::try_from(id.0.checked_sub(1)?).ok()?;
        (i < self.nodes.len()).then_some(i)
    }

    /// Carries out every action of node `i`: store ops are applied now,
    /// messages queued for delivery, events ignored.
    fn drain(&mut self, i: usize) {
        let from = self.nodes[i].id();
        while let Some(action) = self.nodes[i].poll_action() {
            match action {
                Action::Store { id, op } => {
                    let watch = matches!(op, StoreOp::Watch { .. });
                    let result = self.store.apply(self.now, op);
                    if let (true, Ok(StoreResponse::WatchCreated { watch })) = (watch, &result) {
                        self.watches.insert(*watch, i);
                    }
                    self.inputs.push_back(Input::StoreResult {
                        node: i,
                        id,
                        result,
                    });
                    self.route_watches();
                }
                Action::Send { to, msg } => {
                    if let Some(to) = self.index(to) {
                        self.inputs.push_back(Input::Message { from, to, msg });
                    }
                }
                Action::Connect { .. } | Action::Close { .. } | Action::Event(_) => {}
            }
        }
    }

    fn route_watches(&mut self) {
        while let Some(resp) = self.store.poll_watch_response() {
            if let Some(node) = self.watches.get(&resp.watch).copied() {
                self.inputs.push_back(Input::Watch { node, resp });
            }
        }
    }

    /// Hands over queued inputs (draining after each) until none is left.
    fn settle(&mut self) {
        let now = self.now;
        while let Some(input) = self.inputs.pop_front() {
            let i = match input {
                Input::StoreResult { node, id, result } => {
                    self.nodes[node].handle_store_result(now, id, result);
                    node
                }
                Input::Watch { node, resp } => {
                    self.nodes[node].handle_store_event(now, resp);
                    node
                }
                Input::Message { from, to, msg } => {
                    self.nodes[to].handle_message(now, from, msg);
                    to
                }
            };
            self.drain(i);
        }
    }

    /// Fires timers and lease expiries up to `now + d`.
    fn run_for(&mut self, d: Duration) {
        let end = self.now + d;
        loop {
            self.settle();
            let next = self
                .nodes
                .iter()
                .filter_map(Node::poll_timeout)
                .chain(self.store.next_deadline())
                .min();
            match next {
                Some(t) if t <= end => {
                    self.now = self.now.max(t);
                    self.store.expire_leases(self.now);
                    self.route_watches();
                    for i in 0..self.nodes.len() {
                        if self.nodes[i].poll_timeout().is_some_and(|x| x <= self.now) {
                            self.nodes[i].handle_timeout(self.now);
                            self.drain(i);
                        }
                    }
                }
                _ => break,
            }
        }
        self.now = end;
    }

    /// Moves the job to the next epoch (as another node's compare-and-swap
    /// would) and lets every node take it in. Clears each primary's
    /// per-epoch state, so every measured batch starts alike.
    fn next_epoch(&mut self) -> Epoch {
        let key = self.keys.key(Key::Epoch);
        let next = self.nodes[0].epoch().next();
        let value = taskgraph_core::keys::encode_epoch(next);
        self.store
            .apply(
                self.now,
                StoreOp::Put {
                    key,
                    value,
                    lease: 0,
                },
            )
            .expect("epoch put");
        self.route_watches();
        self.settle();
        next
    }

    fn primary_of(&self, task: TaskId) -> (usize, Incarnation) {
        self.nodes
            .iter()
            .enumerate()
            .find_map(|(i, n)| match n.primary_of() {
                Some((t, inc)) if t == task => Some((i, inc)),
                _ => None,
            })
            .expect("every task has a primary")
    }
}

/// What the benchmark sends.
#[derive(Clone, Copy)]
enum Kind {
    Meta,
    Request,
}

/// The server (primary of task 0, the root, whose children are 1 and 2)
/// and the client (primary of task 1), as the store and the nodes see them.
struct Route {
    server: usize,
    server_incarnation: Incarnation,
    client: NodeId,
    client_session: taskgraph_core::SessionId,
    client_incarnation: Incarnation,
    /// Next sequence number on the client -> server connection.
    seq: u64,
    /// Epoch of the last batch.
    epoch: Epoch,
    /// Next meta flag number and request id within `epoch` (the server
    /// forgets both when the epoch changes).
    next: u64,
}

impl Route {
    fn new(rig: &Rig) -> Route {
        let (server, server_incarnation) = rig.primary_of(TaskId(0));
        let (client, client_incarnation) = rig.primary_of(TaskId(1));
        // Incarnations are the create revisions of the primary keys (S3).
        for (task, inc) in [(0, server_incarnation), (1, client_incarnation)] {
            let kv = rig
                .store
                .get(&rig.keys.key(Key::Primary(TaskId(task))))
                .expect("primary key");
            assert_eq!(kv.create_revision, inc.0, "incarnation of task {task}");
        }
        Route {
            server,
            server_incarnation,
            client: rig.nodes[client].id(),
            client_session: rig.nodes[client].session(),
            client_incarnation,
            // The client has sent the server nothing (its task never flags
            // or requests), so its sequence numbers start at 1.
            seq: 1,
            epoch: rig.nodes[server].epoch(),
            next: 0,
        }
    }

    /// `n` messages of `kind` from the client's primary of task 1 to the
    /// server's primary of task 0, in `epoch`.
    fn batch(&mut self, kind: Kind, epoch: Epoch, n: u64) -> Vec<Envelope> {
        if epoch != self.epoch {
            self.epoch = epoch;
            self.next = 0;
        }
        (0..n)
            .map(|_| {
                let body = match kind {
                    Kind::Meta => Body::Meta {
                        direction: Direction::ToParents,
                        flag: u32::try_from(self.next).expect("flag fits"),
                        meta: Bytes::from_static(b"grad"),
                    },
                    Kind::Request => Body::Request {
                        id: RequestId(self.next),
                        req: Bytes::from_static(b"param"),
                    },
                };
                let msg = Envelope {
                    version: PROTOCOL_VERSION,
                    job: wire::job_tag(JOB),
                    from_node: self.client,
                    from_session: self.client_session,
                    seq: self.seq,
                    from_task: TaskId(1),
                    incarnation: self.client_incarnation,
                    epoch,
                    to_task: TaskId(0),
                    to_incarnation: self.server_incarnation,
                    body,
                };
                self.seq += 1;
                self.next += 1;
                msg
            })
            .collect()
    }
}

/// Feeds `msgs` to the server, draining every action after each; returns
/// how many were accepted (delivered as meta or served).
fn feed(rig: &mut Rig, route: &Route, msgs: Vec<Envelope>) -> u64 {
    let (now, from) = (rig.now, route.client);
    let node = &mut rig.nodes[route.server];
    let mut accepted = 0;
    for msg in msgs {
        node.handle_message(now, from, msg);
        while let Some(action) = node.poll_action() {
            if let Action::Event(Event::MetaDelivered { .. } | Event::Served { .. }) = &action {
                accepted += 1;
            }
            black_box(action);
        }
    }
    accepted
}

/// A rig in steady state and the route to measure, checked to accept both
/// kinds of message.
fn steady_rig() -> (Rig, Route) {
    let mut rig = Rig::new(3, Duration::from_secs(1));
    let mut route = Route::new(&rig);
    let epoch = rig.next_epoch();
    let server = &rig.nodes[route.server];
    assert_eq!(server.epoch(), epoch);
    assert!(!server.is_stopped());
    for kind in [Kind::Meta, Kind::Request] {
        let msg = route.batch(kind, epoch, 1).remove(0);
        let now = rig.now;
        let node = &mut rig.nodes[route.server];
        let dropped = node.stats().messages_dropped;
        node.handle_message(now, route.client, msg);
        let mut events = Vec::new();
        let mut sends = 0;
        while let Some(action) = node.poll_action() {
            match action {
                Action::Event(e) => events.push(e),
                Action::Send { .. } => sends += 1,
                _ => {}
            }
        }
        assert_eq!(node.stats().messages_dropped, dropped);
        match kind {
            Kind::Meta => assert!(
                matches!(
                    events.as_slice(),
                    [Event::MetaDelivered {
                        from: TaskId(1),
                        ..
                    }]
                ),
                "meta flag not delivered: {events:?}"
            ),
            Kind::Request => {
                assert!(
                    matches!(
                        events.as_slice(),
                        [Event::Served {
                            from: TaskId(1),
                            ..
                        }]
                    ),
                    "request not served: {events:?}"
                );
                assert_eq!(sends, 1, "the answer is sent back");
            }
        }
    }
    (rig, route)
}

// A benchmark times itself with the wall clock, which the core's clippy
// configuration bans for the core's own code.
#[allow(clippy::disallowed_methods)]
fn node_inputs(c: &mut Criterion) {
    let mut group = c.benchmark_group("node_inputs");
    group.sample_size(20);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(3));
    group.throughput(Throughput::Elements(BATCH));
    for (name, kind) in [("meta_flag", Kind::Meta), ("data_request", Kind::Request)] {
        let (mut rig, mut route) = steady_rig();
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    // Untimed: a fresh epoch and the messages to feed.
                    let epoch = rig.next_epoch();
                    let msgs = route.batch(kind, epoch, BATCH);
                    let dropped = rig.nodes[route.server].stats().messages_dropped;
                    let start = std::time::Instant::now();
                    let accepted = feed(&mut rig, &route, msgs);
                    total += start.elapsed();
                    assert_eq!(accepted, BATCH, "every message accepted");
                    assert_eq!(rig.nodes[route.server].stats().messages_dropped, dropped);
                }
                total
            });
        });
    }
    group.finish();
}

fn harness(c: &mut Criterion) {
    let cfg = ScheduleConfig::tree15();
    let mut group = c.benchmark_group("harness");
    group.sample_size(10);
    group.sampling_mode(SamplingMode::Flat);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(5));
    for seed in [1u64, 2, 3] {
        let schedule = Schedule::random(seed, &cfg);
        // Runs are deterministic: every run of a seed takes as many steps.
        let steps = run_schedule(&cfg, &schedule).steps;
        group.throughput(Throughput::Elements(steps));
        group.bench_function(format!("tree15_seed{seed}"), |b| {
            b.iter(|| {
                let out = run_schedule(&cfg, black_box(&schedule));
                assert_eq!(out.steps, steps);
                out
            });
        });
    }
    group.finish();
}

criterion_group!(benches, node_inputs, harness);
criterion_main!(benches);
