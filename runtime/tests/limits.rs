//! Limits at the runtime's boundaries (S19): the largest payload a task may
//! hand over goes through real TCP intact and one byte more is refused where
//! the task hands it over; a peer queue over `max_queued_bytes` closes the
//! connection and nothing is lost.

use bytes::Bytes;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use taskgraph_core::{
    CommandError, Context, Epoch, ExitReason, Link, NodeConfig, NodeId, RequestId, ServeId, Task,
    TaskBuilder, TaskId, TreeTopology, MAX_PAYLOAD_LEN,
};
use taskgraph_runtime::{spawn_node, MemStoreServer, NodeExit, NodeHandle, NodeOptions, Store};

/// Counts `taskgraph_queue_overflows_total` increments of every node in
/// this test binary; other metrics are dropped.
struct OverflowCounter(Arc<AtomicU64>);

impl metrics::Recorder for OverflowCounter {
    fn describe_counter(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn describe_gauge(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn describe_histogram(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn register_counter(&self, key: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Counter {
        if key.name() == "taskgraph_queue_overflows_total" {
            metrics::Counter::from_arc(self.0.clone())
        } else {
            metrics::Counter::noop()
        }
    }
    fn register_gauge(&self, _: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Gauge {
        metrics::Gauge::noop()
    }
    fn register_histogram(
        &self,
        _: &metrics::Key,
        _: &metrics::Metadata<'_>,
    ) -> metrics::Histogram {
        metrics::Histogram::noop()
    }
}

/// The overflow count of this process, installing the counter once.
fn overflows() -> Arc<AtomicU64> {
    static COUNT: OnceLock<Arc<AtomicU64>> = OnceLock::new();
    COUNT
        .get_or_init(|| {
            let count = Arc::new(AtomicU64::new(0));
            metrics::set_global_recorder(OverflowCounter(count.clone()))
                .expect("no other recorder in this test binary");
            count
        })
        .clone()
}

async fn spawn(
    store: &Arc<dyn Store>,
    opts: NodeOptions,
    tasks: u32,
    builder: Box<dyn TaskBuilder>,
) -> NodeHandle {
    let topo = Arc::new(TreeTopology::new(2, tasks).expect("tree"));
    spawn_node(opts, store.clone(), topo, builder, None)
        .await
        .expect("node starts")
}

fn options(id: u64, job: &str, tasks: u32, standbys: u32) -> NodeOptions {
    let cfg = NodeConfig::new(NodeId(id), job, "", tasks, standbys);
    NodeOptions::new(cfg, "127.0.0.1:0".parse().expect("address"))
}

/// Every node's run ends with the job completed with `reason`.
async fn all_complete(handles: Vec<NodeHandle>, reason: &str) {
    for h in handles {
        let id = h.id;
        let exit = tokio::time::timeout(Duration::from_secs(60), h.join)
            .await
            .unwrap_or_else(|_| panic!("node {id} did not end"))
            .expect("the node's task ran")
            .expect("the node ran");
        assert_eq!(
            exit,
            NodeExit::JobEnded(ExitReason::Completed(reason.into())),
            "node {id}"
        );
    }
}

/// What the tasks of the payload test saw: the context's answers and the
/// answer that arrived.
#[derive(Default)]
struct Seen {
    refused: Vec<(&'static str, CommandError)>,
    accepted: Vec<&'static str>,
    answer: Option<Bytes>,
}

/// Task 1 asks its parent, task 0, once; task 0 answers with the largest
/// payload there is. Both first try one byte more.
struct Big(Arc<Mutex<Seen>>);

impl Big {
    fn note(&self, what: &'static str, r: Result<(), CommandError>) {
        if let Ok(mut s) = self.0.lock() {
            match r {
                Ok(()) => s.accepted.push(what),
                Err(e) => s.refused.push((what, e)),
            }
        }
    }
}

fn pattern(len: usize) -> Bytes {
    Bytes::from((0..len).map(|i| (i % 251) as u8).collect::<Vec<u8>>())
}

impl Task for Big {
    fn epoch_changed(&mut self, ctx: &mut Context, _: Epoch) {
        if ctx.task() == TaskId(1) {
            let r = ctx.request_data(TaskId(0), pattern(MAX_PAYLOAD_LEN + 1));
            self.note("request over", r.map(drop));
            let r = ctx.request_data(TaskId(0), "give");
            self.note("request", r.map(drop));
        }
    }

    fn serve(&mut self, ctx: &mut Context, _: TaskId, _: Link, id: ServeId, _: Bytes) {
        let r = ctx.respond(id, pattern(MAX_PAYLOAD_LEN + 1));
        self.note("answer over", r);
        let r = ctx.respond(id, pattern(MAX_PAYLOAD_LEN));
        self.note("answer", r);
    }

    fn data_ready(&mut self, ctx: &mut Context, _: TaskId, _: RequestId, _: Bytes, resp: Bytes) {
        if let Ok(mut s) = self.0.lock() {
            s.answer = Some(resp);
        }
        ctx.exit_job("done");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s19_the_largest_payload_crosses_tcp_intact_and_one_byte_more_is_refused_at_the_context() {
    let store: Arc<dyn Store> = Arc::new(MemStoreServer::new());
    let seen = Arc::new(Mutex::new(Seen::default()));
    let mut handles = Vec::new();
    for id in 1..=2 {
        let mut opts = options(id, "payload", 2, 0);
        opts.config.max_payload = MAX_PAYLOAD_LEN;
        let s = seen.clone();
        let builder = move |_| -> Box<dyn Task> { Box::new(Big(s.clone())) };
        handles.push(spawn(&store, opts, 2, Box::new(builder)).await);
    }
    all_complete(handles, "done").await;

    let s = seen.lock().expect("not poisoned");
    let over = CommandError::PayloadTooLarge {
        len: MAX_PAYLOAD_LEN + 1,
        limit: MAX_PAYLOAD_LEN,
    };
    assert_eq!(
        s.refused,
        vec![("request over", over.clone()), ("answer over", over)]
    );
    assert_eq!(s.accepted, vec!["request", "answer"]);
    let answer = s.answer.as_ref().expect("the answer arrived");
    assert_eq!(answer.len(), MAX_PAYLOAD_LEN);
    assert!(
        *answer == pattern(MAX_PAYLOAD_LEN),
        "the answer arrived unchanged"
    );
}

/// The indices of the updates the standby of the burst test applied, in order.
type Applied = Arc<Mutex<Vec<u32>>>;

/// The primary of task 0 replicates update 0 at once (which opens the
/// connection to the standby), then after a pause `BURST` more in one
/// callback; the standby records each update's index.
struct Burst {
    applied: Applied,
}

const BURST: u32 = 200;
const UPDATE_LEN: usize = 8 * 1024;

fn update(i: u32) -> Bytes {
    let mut v = vec![(i % 256) as u8; UPDATE_LEN];
    v[..4].copy_from_slice(&i.to_be_bytes());
    Bytes::from(v)
}

impl Task for Burst {
    fn epoch_changed(&mut self, ctx: &mut Context, _: Epoch) {
        if let Err(e) = ctx.replicate(update(0)) {
            ctx.fail_job(format!("update 0 refused: {e}"));
        }
        ctx.set_timer(Duration::from_millis(300), 1);
    }

    fn timer(&mut self, ctx: &mut Context, _: u64) {
        for i in 1..=BURST {
            if let Err(e) = ctx.replicate(update(i)) {
                ctx.fail_job(format!("update {i} refused: {e}"));
                return;
            }
        }
    }

    fn replica_update(&mut self, ctx: &mut Context, u: Bytes) {
        let mut index = [0u8; 4];
        index.copy_from_slice(&u[..4]);
        let i = u32::from_be_bytes(index);
        if u != update(i) {
            ctx.fail_job(format!("update {i} arrived changed"));
        }
        if let Ok(mut a) = self.applied.lock() {
            a.push(i);
        }
    }
}

// One thread: the connection's writer cannot drain the queue while the
// burst is being queued, so the burst goes over the limit for sure.
#[tokio::test(flavor = "current_thread")]
async fn a_queue_over_max_queued_bytes_closes_the_connection_and_the_standby_still_gets_every_update_in_order(
) {
    let overflows = overflows();
    let before = overflows.load(Ordering::Relaxed);
    let store: Arc<dyn Store> = Arc::new(MemStoreServer::new());
    let applied: Applied = Arc::default();
    let mut handles = Vec::new();
    for id in 1..=2 {
        let mut opts = options(id, "burst", 1, 1);
        // A 16th of the burst.
        opts.max_queued_bytes = 100 * 1024;
        let a = applied.clone();
        let builder = move |_| -> Box<dyn Task> { Box::new(Burst { applied: a.clone() }) };
        handles.push(spawn(&store, opts, 1, Box::new(builder)).await);
    }
    let expected: Vec<u32> = (0..=BURST).collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let got = applied.lock().map(|a| a.clone()).unwrap_or_default();
        if got.len() >= expected.len() {
            assert_eq!(got, expected, "every update once, in order");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the standby applied {} of {} updates in 30 s",
            got.len(),
            expected.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let closed = overflows.load(Ordering::Relaxed) - before;
    assert!(
        closed >= 1,
        "the burst of {} KiB never went over the 100 KiB limit",
        BURST as usize * UPDATE_LEN / 1024
    );
    // Nothing more arrives later (no duplicate from a resend).
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(applied.lock().map(|a| a.len()).unwrap_or(0), expected.len());
    for h in handles {
        let id = h.id;
        h.shutdown.stop();
        let exit = tokio::time::timeout(Duration::from_secs(10), h.join).await;
        assert!(
            matches!(exit, Ok(Ok(Ok(NodeExit::Shutdown)))),
            "node {id} stops cleanly: {exit:?}"
        );
    }
}
