//! The node's event loop: feeds the core every input, carries out every
//! action it drains, arms its one timer (the core's contract).

use crate::clock;
use crate::store::Store;
use crate::transport::{self, TransportConfig, TransportEvent};
use bytes::Bytes;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use taskgraph_core::action::OpId;
use taskgraph_core::store::{StoreError, StoreOp, StoreResponse, WatchResponse};
use taskgraph_core::{
    wire, Action, Disconnect, Event, ExitReason, Node, NodeConfig, NodeError, NodeId, SessionId,
    StepDownReason, TaskBuilder, Topology,
};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tracing::Instrument;

/// How one node runs: the core's configuration plus the runtime's.
#[derive(Clone, Debug)]
pub struct NodeOptions {
    /// The core's configuration. Its `addr` is what peers connect to; if it
    /// is empty, the listener's local address is used.
    pub config: NodeConfig,
    /// Where to listen for peers (port 0: any free port).
    pub listen: SocketAddr,
    /// Heartbeat interval on every connection.
    pub heartbeat: Duration,
    /// Time allowed to connect to a peer.
    pub connect_timeout: Duration,
    /// Upper bound of any store call (the backends have their own too).
    pub op_timeout: Duration,
    /// The job's shared secret: peers that do not prove they know it are
    /// refused before any of their frames reaches the core
    /// ([`crate::auth`]). Every node of a job needs the same one (or none).
    pub secret: Option<crate::auth::JobSecret>,
    /// Bytes of frames queued for one peer and not yet written to its
    /// socket, at most. A frame that would go past this closes the
    /// connection instead of queueing (a peer that does not keep up, or no
    /// longer reads): the core sees a broken connection, reconnects with
    /// backoff and sends again what the peer should have (flags, pending
    /// requests, answers, the replica log), so nothing is lost and memory
    /// stays bounded. One frame is always accepted into an empty queue, and
    /// what the core sends in the step that opens a connection (its
    /// catch-up: this epoch's flags, pending requests and answers, the
    /// replication log, all of which it holds anyway) is allowed on top of
    /// the limit until written.
    pub max_queued_bytes: usize,
}

/// The default [`NodeOptions::max_queued_bytes`]: 128 MiB.
pub const DEFAULT_MAX_QUEUED_BYTES: usize = 128 * 1024 * 1024;

impl NodeOptions {
    /// Options with the runtime's defaults around a core configuration
    /// (set its `ttl` first: the store-call bound is 3 s or the TTL,
    /// whichever is shorter).
    pub fn new(config: NodeConfig, listen: SocketAddr) -> Self {
        let op_timeout = config.ttl.min(Duration::from_secs(3));
        NodeOptions {
            config,
            listen,
            heartbeat: Duration::from_millis(300),
            connect_timeout: Duration::from_secs(1),
            op_timeout,
            secret: None,
            max_queued_bytes: DEFAULT_MAX_QUEUED_BYTES,
        }
    }

    /// Checks the timing relations between these options and the core's
    /// (whose own relations [`NodeConfig::validate`] checks):
    /// - heartbeat, connect timeout and store-call bound are not zero;
    /// - three heartbeats (the silence after which a connection is dropped)
    ///   fit in the TTL, so a dead connection is noticed before the lease of
    ///   the node behind it runs out;
    /// - the store-call bound and the connect timeout fit in the TTL, so a
    ///   hung call is given up while the lease can still be renewed.
    pub fn validate(&self) -> Result<(), RuntimeError> {
        self.config.validate().map_err(NodeError::from)?;
        let ttl = self.config.ttl;
        let bad = |what: String| Err(RuntimeError::Options(what));
        if self.heartbeat.is_zero() || self.connect_timeout.is_zero() || self.op_timeout.is_zero() {
            return bad(format!(
                "heartbeat {:?}, connect_timeout {:?} and op_timeout {:?} must all be > 0",
                self.heartbeat, self.connect_timeout, self.op_timeout
            ));
        }
        if self.max_queued_bytes == 0 {
            return bad("max_queued_bytes must be at least 1".into());
        }
        if self.heartbeat * 3 >= ttl {
            return bad(format!(
                "three heartbeats ({:?}) must be shorter than the ttl {ttl:?}",
                self.heartbeat * 3
            ));
        }
        if self.op_timeout > ttl || self.connect_timeout > ttl {
            return bad(format!(
                "op_timeout {:?} and connect_timeout {:?} must not exceed the ttl {ttl:?}",
                self.op_timeout, self.connect_timeout
            ));
        }
        Ok(())
    }
}

/// How a node's run ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodeExit {
    /// The job ended (S18); every node returns this.
    JobEnded(ExitReason),
    /// Only this node was stopped (its [`Shutdown`] handle).
    Shutdown,
    /// The node was killed (its [`Kill`] handle): nothing was cleaned up.
    Killed,
}

/// Why a node could not run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RuntimeError {
    /// The configuration or topology is invalid.
    #[error(transparent)]
    Node(#[from] NodeError),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The error.
        source: std::io::Error,
    },
    /// The runtime's options break a timing relation.
    #[error("invalid node options: {0}")]
    Options(String),
    /// The job's stored spec differs from this node's (or another refusal).
    #[error("refused to join: {0}")]
    Refused(String),
    /// The application's task panicked; the node revoked its lease (S6).
    #[error("task panicked: {0}")]
    TaskPanicked(String),
}

/// Stops one node cleanly (S6): it steps down and revokes its lease.
#[derive(Debug)]
pub struct Shutdown(Option<oneshot::Sender<()>>);

/// Kills one node as a crash would: it stops at once, revokes nothing, and
/// its connections drop (for chaos testing in one process).
#[derive(Debug)]
pub struct Kill(Option<oneshot::Sender<()>>);

impl Kill {
    /// Kills the node.
    pub fn kill(mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(());
        }
    }
}

impl Shutdown {
    /// Asks the node to stop.
    pub fn stop(mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(());
        }
    }
}

/// A node started with [`spawn_node`].
#[derive(Debug)]
pub struct NodeHandle {
    /// The node's id.
    pub id: NodeId,
    /// The address peers reach it at.
    pub addr: SocketAddr,
    /// Stops it.
    pub shutdown: Shutdown,
    /// Kills it.
    pub kill: Kill,
    /// Its run; resolves when it stops.
    pub join: JoinHandle<Result<NodeExit, RuntimeError>>,
}

/// Every event of every node, for logs, tests and examples.
pub type EventSink = mpsc::UnboundedSender<(NodeId, Event)>;

enum Input {
    StoreResult(OpId, Result<StoreResponse, StoreError>),
    Watch(WatchResponse),
    Transport(TransportEvent),
}

/// Binds the listener and starts the node on the current tokio runtime.
pub async fn spawn_node(
    opts: NodeOptions,
    store: Arc<dyn Store>,
    topology: Arc<dyn Topology>,
    builder: Box<dyn TaskBuilder>,
    events: Option<EventSink>,
) -> Result<NodeHandle, RuntimeError> {
    opts.validate()?;
    let listener = TcpListener::bind(opts.listen)
        .await
        .map_err(|source| RuntimeError::Listen {
            addr: opts.listen,
            source,
        })?;
    let addr = listener
        .local_addr()
        .map_err(|source| RuntimeError::Listen {
            addr: opts.listen,
            source,
        })?;
    let (tx, rx) = oneshot::channel();
    let (ktx, krx) = oneshot::channel();
    let id = opts.config.node;
    let controls = Controls {
        shutdown: rx,
        kill: krx,
    };
    // Every log line of the node's loop carries the node, and once known its
    // task, incarnation and epoch. (`instrument`, not `enter`: a span
    // entered inside an async fn stays entered across its awaits, on
    // whatever else the worker thread then runs.)
    let span = tracing::info_span!(
        "node",
        node = %id,
        task = tracing::field::Empty,
        incarnation = tracing::field::Empty,
        epoch = tracing::field::Empty
    );
    let join = tokio::spawn(
        run_on(listener, opts, store, topology, builder, events, controls).instrument(span),
    );
    Ok(NodeHandle {
        id,
        addr,
        shutdown: Shutdown(Some(tx)),
        kill: Kill(Some(ktx)),
        join,
    })
}

/// Runs one node until the job ends or `shutdown` fires.
pub async fn run_node(
    opts: NodeOptions,
    store: Arc<dyn Store>,
    topology: Arc<dyn Topology>,
    builder: Box<dyn TaskBuilder>,
    events: Option<EventSink>,
) -> Result<NodeExit, RuntimeError> {
    let h = spawn_node(opts, store, topology, builder, events).await?;
    // Keep the handles alive: dropping them is not a stop request.
    let _keep = (h.shutdown, h.kill);
    h.join
        .await
        .unwrap_or_else(|e| Err(RuntimeError::TaskPanicked(e.to_string())))
}

/// The receiving ends of a node's [`Shutdown`] and [`Kill`] handles.
struct Controls {
    shutdown: oneshot::Receiver<()>,
    kill: oneshot::Receiver<()>,
}

struct Outbound {
    generation: u64,
    queue: mpsc::UnboundedSender<Bytes>,
    /// Bytes in `queue`; the connection's task takes off what it wrote.
    queued: Arc<AtomicUsize>,
    /// Bytes the connection's task wrote.
    written: Arc<AtomicU64>,
    /// The step (call of `drain`) that opened the connection.
    opened_in: u64,
    /// Bytes queued in that step: the catch-up the core sends with a new
    /// connection (bounded by the core's own state), allowed on top of the
    /// limit until written.
    catch_up: u64,
    /// Closed for a queue over the limit; frames are dropped until the node
    /// hears of it.
    overflowed: bool,
    task: JoinHandle<()>,
}

struct Loop {
    node: Node,
    store: Arc<dyn Store>,
    opts: NodeOptions,
    tcfg: TransportConfig,
    inputs: mpsc::UnboundedSender<Input>,
    transport: mpsc::UnboundedSender<TransportEvent>,
    session: watch::Sender<SessionId>,
    outbound: BTreeMap<NodeId, Outbound>,
    generation: u64,
    /// Calls of `drain` so far.
    step: u64,
    watches: BTreeMap<i64, JoinHandle<()>>,
    /// Store operations in flight (JoinSet is not available under madsim).
    ops: Vec<JoinHandle<()>>,
    events: Option<EventSink>,
    exit: Option<Option<ExitReason>>,
    refused: Option<String>,
    /// When this node last saw an epoch begin (for the epoch-time metric).
    last_epoch: Option<tokio::time::Instant>,
}

fn panic_message(p: Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

async fn run_on(
    listener: TcpListener,
    mut opts: NodeOptions,
    store: Arc<dyn Store>,
    topology: Arc<dyn Topology>,
    builder: Box<dyn TaskBuilder>,
    events: Option<EventSink>,
    controls: Controls,
) -> Result<NodeExit, RuntimeError> {
    let Controls {
        mut shutdown,
        mut kill,
    } = controls;
    if opts.config.addr.is_empty() {
        if let Ok(a) = listener.local_addr() {
            opts.config.addr = a.to_string();
        }
    }
    let node = Node::new(clock::now(), opts.config.clone(), topology, builder)?;
    let tcfg = TransportConfig {
        node: opts.config.node,
        job: wire::job_tag(&opts.config.job),
        heartbeat: opts.heartbeat,
        connect_timeout: opts.connect_timeout,
        secret: opts.secret.clone(),
    };
    let (in_tx, mut in_rx) = mpsc::unbounded_channel::<Input>();
    let (tr_tx, mut tr_rx) = mpsc::unbounded_channel::<TransportEvent>();
    let (session_tx, session_rx) = watch::channel(SessionId(0));
    let acceptor = tokio::spawn(transport::accept_loop(
        listener,
        tcfg.clone(),
        session_rx,
        tr_tx.clone(),
    ));
    let mut l = Loop {
        node,
        store,
        opts,
        tcfg,
        inputs: in_tx,
        transport: tr_tx,
        session: session_tx,
        outbound: BTreeMap::new(),
        generation: 0,
        step: 0,
        watches: BTreeMap::new(),
        ops: Vec::new(),
        events,
        exit: None,
        refused: None,
        last_epoch: None,
    };
    let (mut stop_requested, mut kill_armed, mut killed) = (false, true, false);
    let result = loop {
        if let Err(p) = l.drain() {
            break Err(p);
        }
        if let Some(exit) = l.exit.clone() {
            break Ok(exit);
        }
        let timeout = l.node.poll_timeout();
        let sleep = async {
            match timeout {
                Some(t) => tokio::time::sleep_until(clock::to_tokio(t)).await,
                None => std::future::pending().await,
            }
        };
        let step = tokio::select! {
            biased;
            r = &mut kill, if kill_armed => {
                kill_armed = false;
                if r.is_ok() {
                    killed = true;
                    break Ok(None);
                }
                Ok(())
            }
            r = &mut shutdown, if !stop_requested => {
                // A dropped handle disarms; only an explicit stop stops.
                stop_requested = true;
                match r {
                    Ok(()) => l.guard(|n| n.shutdown(clock::now())),
                    Err(_) => Ok(()),
                }
            }
            Some(input) = in_rx.recv() => match input {
                // Watch responses that queued up while the node was busy
                // are handed over as one: the node then weighs the roles
                // once for the lot instead of once per revision.
                Input::Watch(first) => {
                    let (merged, next) = merge_watch(first, &mut in_rx);
                    let r = l.input(Input::Watch(merged));
                    match next {
                        Some(next) if r.is_ok() => l.drain().and_then(|()| l.input(next)),
                        _ => r,
                    }
                }
                other => l.input(other),
            },
            Some(ev) = tr_rx.recv() => l.input(Input::Transport(ev)),
            _ = sleep => l.guard(|n| n.handle_timeout(clock::now())),
        };
        if let Err(p) = step {
            break Err(p);
        }
        // A steady stream of inputs must not starve the timer (lease
        // renewals go out from it): fire it whenever it is due.
        if l.node.poll_timeout().is_some_and(|t| t <= clock::now()) {
            if let Err(p) = l.guard(|n| n.handle_timeout(clock::now())) {
                break Err(p);
            }
        }
    };
    acceptor.abort();
    for (_, o) in std::mem::take(&mut l.outbound) {
        o.task.abort();
    }
    for (_, w) in std::mem::take(&mut l.watches) {
        w.abort();
    }
    if killed {
        for op in &l.ops {
            op.abort();
        }
        return Ok(NodeExit::Killed);
    }
    if let Err(panic) = &result {
        // S6: a node whose task panicked revokes its lease first, so that
        // failover starts at once.
        let lease = l.node.session().0;
        tracing::error!(%panic, "task panicked; revoking the lease");
        let revoke = l.store.execute(StoreOp::LeaseRevoke { lease });
        let _ = tokio::time::timeout(l.opts.op_timeout, revoke).await;
    }
    // Let the last store operations (the lease revocation) finish.
    let _ = tokio::time::timeout(l.opts.op_timeout, async {
        for op in std::mem::take(&mut l.ops) {
            let _ = op.await;
        }
    })
    .await;
    match result {
        Ok(Some(reason)) => Ok(NodeExit::JobEnded(reason)),
        Ok(None) => match l.refused {
            Some(detail) => Err(RuntimeError::Refused(detail)),
            None => Ok(NodeExit::Shutdown),
        },
        Err(panic) => Err(RuntimeError::TaskPanicked(panic)),
    }
}

/// At most this many watch events are handed to the node in one input.
const WATCH_BATCH: usize = 4096;

/// Appends to `first` the responses of the same watch already queued behind
/// it, in order, up to [`WATCH_BATCH`] events and never past the response
/// that ends the watch. Returns the merged response and the first other
/// input taken from the queue, which must be handled next.
fn merge_watch(
    mut first: WatchResponse,
    rx: &mut mpsc::UnboundedReceiver<Input>,
) -> (WatchResponse, Option<Input>) {
    while !first.canceled && first.events.len() < WATCH_BATCH {
        match rx.try_recv() {
            Ok(Input::Watch(next)) if next.watch == first.watch => {
                first.events.extend(next.events);
                first.compact_revision = next.compact_revision;
                first.canceled = next.canceled;
            }
            Ok(other) => return (first, Some(other)),
            Err(_) => break,
        }
    }
    (first, None)
}

impl Loop {
    /// Runs one core input, catching a panic of the application's task.
    fn guard(&mut self, f: impl FnOnce(&mut Node)) -> Result<(), String> {
        catch_unwind(AssertUnwindSafe(|| f(&mut self.node))).map_err(panic_message)
    }

    fn input(&mut self, input: Input) -> Result<(), String> {
        match input {
            Input::StoreResult(id, r) => self.guard(|n| n.handle_store_result(clock::now(), id, r)),
            Input::Watch(resp) => self.guard(|n| n.handle_store_event(clock::now(), resp)),
            Input::Transport(TransportEvent::Message(from, msg)) => {
                self.guard(|n| n.handle_message(clock::now(), from, msg))
            }
            Input::Transport(TransportEvent::Disconnected(peer, generation, how)) => {
                if self
                    .outbound
                    .get(&peer)
                    .is_some_and(|o| o.generation == generation)
                {
                    self.outbound.remove(&peer);
                    self.guard(|n| n.handle_disconnect(clock::now(), peer, how))
                } else {
                    Ok(())
                }
            }
        }
    }

    /// Carries out every action the core has (the contract).
    fn drain(&mut self) -> Result<(), String> {
        self.step += 1;
        while let Some(action) = self.node.poll_action() {
            match action {
                Action::Store { id, op } => self.store_op(id, op),
                Action::Connect {
                    node,
                    addr,
                    session,
                } => self.connect(transport::OutboundTarget {
                    peer: node,
                    addr,
                    session,
                }),
                Action::Send { to, msg } => {
                    let frame = transport::message_frame(&msg);
                    if frame.len() > wire::MAX_FRAME_LEN {
                        // The peer would refuse it, and a resend would loop.
                        tracing::error!(%to, len = frame.len(), "message over the frame limit dropped");
                        continue;
                    }
                    let len = frame.len() as u64;
                    if self.overflows(to, frame.len()) {
                        continue;
                    }
                    let step = self.step;
                    let delivered = self.outbound.get_mut(&to).is_some_and(|o| {
                        if o.opened_in == step {
                            o.catch_up += len;
                        }
                        o.queued.fetch_add(frame.len(), Ordering::Relaxed);
                        o.queue.send(frame).is_ok()
                    });
                    if delivered {
                        let node = self.opts.config.node.to_string();
                        ::metrics::counter!("taskgraph_messages_sent_total", "node" => node.clone())
                            .increment(1);
                        ::metrics::counter!("taskgraph_bytes_sent_total", "node" => node)
                            .increment(len);
                    }
                    if !delivered {
                        let generation = self.outbound.get(&to).map_or(0, |o| o.generation);
                        let _ = self.transport.send(TransportEvent::Disconnected(
                            to,
                            generation,
                            Disconnect::Broken,
                        ));
                    }
                }
                Action::Close { node } => {
                    if let Some(o) = self.outbound.remove(&node) {
                        o.task.abort();
                    }
                }
                Action::Event(ev) => self.event(ev),
            }
        }
        Ok(())
    }

    fn event(&mut self, ev: Event) {
        let node = self.opts.config.node.to_string();
        match &ev {
            Event::BecamePrimary { promoted, .. } => {
                let promoted = if *promoted { "true" } else { "false" };
                ::metrics::counter!("taskgraph_became_primary_total", "node" => node, "promoted" => promoted)
                    .increment(1);
            }
            Event::NeighbourDied { .. } => {
                ::metrics::counter!("taskgraph_neighbour_died_total", "node" => node).increment(1);
            }
            Event::EpochChanged { .. } => {
                let now = tokio::time::Instant::now();
                if let Some(last) = self.last_epoch.replace(now) {
                    ::metrics::histogram!("taskgraph_epoch_seconds", "node" => node)
                        .record(now.duration_since(last).as_secs_f64());
                }
            }
            Event::RequestResent { .. } => {
                ::metrics::counter!("taskgraph_request_retries_total", "node" => node).increment(1);
            }
            Event::PeerGone { .. } => {
                ::metrics::counter!("taskgraph_peers_revoked_total", "node" => node).increment(1);
            }
            Event::MessageDropped { reason, .. } => {
                ::metrics::counter!("taskgraph_messages_dropped_total", "node" => node, "reason" => format!("{reason:?}"))
                    .increment(1);
            }
            _ => {}
        }
        match &ev {
            Event::SessionStarted { session } => {
                let _ = self.session.send(*session);
                tracing::info!(%session, "session started");
            }
            Event::BecamePrimary {
                task,
                incarnation,
                promoted,
            } => {
                let span = tracing::Span::current();
                span.record("task", tracing::field::display(task));
                span.record("incarnation", tracing::field::display(incarnation));
                tracing::info!(%task, %incarnation, promoted, "became primary")
            }
            Event::BecameStandby { task } => {
                tracing::Span::current().record("task", tracing::field::display(task));
                tracing::info!(%task, "became standby")
            }
            Event::SteppedDown {
                task,
                reason: StepDownReason::Stopped,
                ..
            } => tracing::info!(%task, "stepped down: stopping"),
            Event::SteppedDown { task, reason, .. } => {
                tracing::warn!(%task, ?reason, "stepped down")
            }
            Event::SessionLost { session } => tracing::warn!(%session, "session lost"),
            Event::NeighbourDied {
                task, neighbour, ..
            } => tracing::info!(%task, %neighbour, "neighbour died"),
            Event::NeighbourRestarted {
                task, neighbour, ..
            } => {
                tracing::info!(%task, %neighbour, "neighbour restarted")
            }
            Event::EpochChanged { task, epoch } => {
                tracing::Span::current().record("epoch", tracing::field::display(epoch));
                tracing::debug!(%task, %epoch, "epoch changed")
            }
            Event::PeerGone {
                node,
                session,
                evidence,
            } => {
                tracing::info!(peer = %node, %session, ?evidence, "peer process gone: revoked its lease")
            }
            Event::RequestResent { to, id } => tracing::debug!(%to, ?id, "request sent again"),
            Event::Refused { detail } => {
                tracing::error!(%detail, "refused to join");
                self.refused = Some(detail.clone());
            }
            Event::Stopped { reason } => {
                tracing::info!(?reason, "stopped");
                self.exit = Some(reason.clone());
            }
            _ => tracing::trace!(?ev),
        }
        if let Some(sink) = &self.events {
            let _ = sink.send((self.opts.config.node, ev));
        }
    }

    fn store_op(&mut self, id: OpId, op: StoreOp) {
        let (store, inputs, limit) = (
            self.store.clone(),
            self.inputs.clone(),
            self.opts.op_timeout,
        );
        match op {
            StoreOp::Watch {
                prefix,
                start_revision,
            } => {
                let task = tokio::spawn(async move {
                    let created =
                        tokio::time::timeout(limit, store.watch(prefix, start_revision)).await;
                    let mut stream = match created {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            let _ = inputs.send(Input::StoreResult(id, Err(e)));
                            return;
                        }
                        Err(_) => {
                            let e = StoreError::Unavailable(format!(
                                "watch not created within {limit:?}"
                            ));
                            let _ = inputs.send(Input::StoreResult(id, Err(e)));
                            return;
                        }
                    };
                    let watch = stream.id;
                    // The creation goes first, on the same channel as the events.
                    let _ = inputs.send(Input::StoreResult(
                        id,
                        Ok(StoreResponse::WatchCreated { watch }),
                    ));
                    let mut ended = false;
                    while let Some(resp) = stream.responses.recv().await {
                        ended = resp.canceled;
                        if inputs.send(Input::Watch(resp)).is_err() {
                            return;
                        }
                    }
                    if !ended {
                        // The stream broke without saying so: tell the core.
                        let resp = WatchResponse {
                            watch,
                            events: Vec::new(),
                            compact_revision: None,
                            canceled: true,
                        };
                        let _ = inputs.send(Input::Watch(resp));
                    }
                });
                self.watches.retain(|_, t| !t.is_finished());
                self.watches.insert(id.0 as i64, task);
            }
            StoreOp::CancelWatch { watch } => {
                // The core watches through one watch at a time and cancels it
                // only before starting over: stop every forwarding task, which
                // drops its stream and so cancels the watch at the store.
                for (_, t) in std::mem::take(&mut self.watches) {
                    t.abort();
                }
                let _ = inputs.send(Input::StoreResult(
                    id,
                    Ok(StoreResponse::WatchCanceled { watch }),
                ));
            }
            op => {
                self.ops.retain(|op| !op.is_finished());
                let label = op.kind();
                let node = self.opts.config.node.to_string();
                self.ops.push(tokio::spawn(async move {
                    let started = tokio::time::Instant::now();
                    let r = match tokio::time::timeout(limit, store.execute(op)).await {
                        Ok(r) => r,
                        Err(_) => Err(StoreError::Unavailable(format!(
                            "no answer within {limit:?}"
                        ))),
                    };
                    ::metrics::counter!("taskgraph_store_ops_total", "node" => node.clone(), "op" => label)
                        .increment(1);
                    ::metrics::histogram!("taskgraph_store_op_seconds", "node" => node.clone(), "op" => label)
                        .record(started.elapsed().as_secs_f64());
                    if r.is_err() {
                        ::metrics::counter!("taskgraph_store_op_errors_total", "node" => node, "op" => label)
                            .increment(1);
                    }
                    let _ = inputs.send(Input::StoreResult(id, r));
                }));
            }
        }
    }

    /// Whether a frame of `len` bytes would take the queue to `to` past
    /// [`NodeOptions::max_queued_bytes`] (plus what is left of the catch-up
    /// sent with the connection). If so the connection is closed and
    /// reported broken: the core reconnects and resends (nothing is lost),
    /// and the frame is dropped with everything queued before it.
    fn overflows(&mut self, to: NodeId, len: usize) -> bool {
        let Some(o) = self.outbound.get_mut(&to) else {
            return false;
        };
        if o.overflowed {
            return true;
        }
        if o.opened_in == self.step {
            return false;
        }
        let queued = o.queued.load(Ordering::Relaxed);
        let catch_up = o.catch_up.saturating_sub(o.written.load(Ordering::Relaxed));
        let limit = self
            .opts
            .max_queued_bytes
            .saturating_add(usize::try_from(catch_up).unwrap_or(usize::MAX));
        if queued == 0 || queued.saturating_add(len) <= limit {
            return false;
        }
        tracing::warn!(
            node = %self.opts.config.node,
            peer = %to,
            queued,
            limit = self.opts.max_queued_bytes,
            "peer does not keep up: queue over the limit, connection closed (it is reopened and resent)"
        );
        ::metrics::counter!("taskgraph_queue_overflows_total", "node" => self.opts.config.node.to_string())
            .increment(1);
        o.overflowed = true;
        o.task.abort();
        let _ = self.transport.send(TransportEvent::Disconnected(
            to,
            o.generation,
            Disconnect::Broken,
        ));
        true
    }

    fn connect(&mut self, target: transport::OutboundTarget) {
        let peer = target.peer;
        if let Some(o) = self.outbound.remove(&peer) {
            o.task.abort();
        }
        self.generation += 1;
        let (qtx, qrx) = mpsc::unbounded_channel();
        let queued = Arc::new(AtomicUsize::new(0));
        let written = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn(transport::run_outbound(
            self.tcfg.clone(),
            self.node.session(),
            target,
            self.generation,
            transport::Queue {
                frames: qrx,
                bytes: queued.clone(),
                written: written.clone(),
            },
            self.transport.clone(),
        ));
        self.outbound.insert(
            peer,
            Outbound {
                generation: self.generation,
                queue: qtx,
                queued,
                written,
                opened_in: self.step,
                catch_up: 0,
                overflowed: false,
                task,
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::{merge_watch, Input, WATCH_BATCH};
    use taskgraph_core::store::{KeyValue, WatchEvent, WatchEventKind, WatchResponse};
    use tokio::sync::mpsc;

    fn resp(watch: i64, revisions: &[i64], canceled: bool) -> WatchResponse {
        WatchResponse {
            watch,
            events: revisions
                .iter()
                .map(|r| WatchEvent {
                    kind: WatchEventKind::Put,
                    kv: KeyValue {
                        key: format!("k{r}"),
                        value: bytes::Bytes::new(),
                        create_revision: *r,
                        mod_revision: *r,
                        version: 1,
                        lease: 0,
                    },
                })
                .collect(),
            compact_revision: None,
            canceled,
        }
    }

    fn revisions(r: &WatchResponse) -> Vec<i64> {
        r.events.iter().map(|e| e.kv.mod_revision).collect()
    }

    #[test]
    fn queued_responses_of_one_watch_merge_in_order_up_to_the_end_of_the_watch() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        for r in [
            resp(1, &[2, 3], false),
            resp(1, &[4], true),
            resp(1, &[9], false),
        ] {
            tx.send(Input::Watch(r)).expect("queued");
        }
        let (merged, next) = merge_watch(resp(1, &[1], false), &mut rx);
        assert_eq!(revisions(&merged), vec![1, 2, 3, 4]);
        assert!(merged.canceled, "the end of the watch is kept");
        assert!(next.is_none());
        // Nothing after the end was taken.
        let Ok(Input::Watch(rest)) = rx.try_recv() else {
            panic!("the response after the end stays queued");
        };
        assert_eq!(revisions(&rest), vec![9]);
    }

    #[test]
    fn another_input_or_another_watch_stops_the_merge_and_is_handed_back() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        tx.send(Input::Watch(resp(1, &[2], false))).expect("queued");
        tx.send(Input::Watch(resp(7, &[3], false))).expect("queued");
        tx.send(Input::Watch(resp(1, &[4], false))).expect("queued");
        let (merged, next) = merge_watch(resp(1, &[1], false), &mut rx);
        assert_eq!(revisions(&merged), vec![1, 2]);
        match next {
            Some(Input::Watch(other)) => assert_eq!((other.watch, revisions(&other)), (7, vec![3])),
            _ => panic!("the other watch's response is handed back"),
        }
        let Ok(Input::Watch(rest)) = rx.try_recv() else {
            panic!("still queued");
        };
        assert_eq!(revisions(&rest), vec![4]);
    }

    #[test]
    fn a_merge_stops_at_the_batch_limit() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let big: Vec<i64> = (1..=WATCH_BATCH as i64).collect();
        tx.send(Input::Watch(resp(1, &[0], false))).expect("queued");
        let (merged, next) = merge_watch(resp(1, &big, false), &mut rx);
        assert_eq!(merged.events.len(), WATCH_BATCH);
        assert!(next.is_none());
        assert!(rx.try_recv().is_ok(), "the rest waits for the next input");
    }
}
