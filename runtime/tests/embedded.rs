//! The runtime on the embedded store: real TCP on loopback, real timers.

use std::sync::Arc;
use std::time::Duration;
use taskgraph_core::testkit::tree_sum::{Results, TreeSumBuilder};
use taskgraph_core::{Event, ExitReason, NodeConfig, NodeId, TreeTopology};
use taskgraph_runtime::{spawn_node, MemStoreServer, NodeExit, NodeHandle, NodeOptions, Store};
use tokio::sync::mpsc;

fn options(id: u64, job: &str, tasks: u32, standbys: u32) -> NodeOptions {
    let mut cfg = NodeConfig::new(NodeId(id), job, "", tasks, standbys);
    cfg.ttl = Duration::from_secs(2);
    NodeOptions::new(cfg, "127.0.0.1:0".parse().expect("address"))
}

/// A job's name, task count, standbys per task and pause between epochs.
type Shape<'a> = (&'a str, u32, u32, Duration);

async fn start(
    store: &Arc<dyn Store>,
    id: u64,
    (job, tasks, standbys, pace): Shape<'_>,
    results: &Results,
    events: &mpsc::UnboundedSender<(NodeId, Event)>,
) -> NodeHandle {
    let topo = Arc::new(TreeTopology::new(2, tasks).expect("tree"));
    let builder = TreeSumBuilder::new(tasks, 10, results.clone()).with_pace(pace);
    spawn_node(
        options(id, job, tasks, standbys),
        store.clone(),
        topo,
        Box::new(builder),
        Some(events.clone()),
    )
    .await
    .expect("node starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tree_sum_on_loopback_with_the_embedded_store() {
    let store: Arc<dyn Store> = Arc::new(MemStoreServer::new());
    let results = Results::default();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut nodes = Vec::new();
    for id in 1..=32 {
        nodes.push(
            start(
                &store,
                id,
                ("embedded", 15, 1, Duration::ZERO),
                &results,
                &tx,
            )
            .await,
        );
    }
    let mut exits = Vec::new();
    for n in nodes {
        let r = tokio::time::timeout(Duration::from_secs(60), n.join).await;
        exits.push(
            r.expect("finished in time")
                .expect("no panic")
                .expect("ran"),
        );
    }
    let reason = ExitReason::Completed("tree_sum verified 10 epochs".into());
    assert!(
        exits
            .iter()
            .all(|e| *e == NodeExit::JobEnded(reason.clone())),
        "{exits:?}"
    );
    let all = results.all();
    assert!(
        (1..=10).all(|e| all.iter().any(|r| r.epoch.0 == e)),
        "every epoch verified: {all:?}"
    );
    assert!(all.iter().all(|r| r.total == r.expected));
    drop(tx);
    let mut primaries = 0;
    while let Some((_, ev)) = rx.recv().await {
        if matches!(ev, Event::BecamePrimary { .. }) {
            primaries += 1;
        }
    }
    assert_eq!(primaries, 15, "one primary per task, no failover");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_primary_fails_over_and_the_job_finishes() {
    let store: Arc<dyn Store> = Arc::new(MemStoreServer::new());
    let results = Results::default();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut nodes = Vec::new();
    for id in 1..=7 {
        nodes.push(
            start(
                &store,
                id,
                ("kill", 3, 1, Duration::from_millis(150)),
                &results,
                &tx,
            )
            .await,
        );
    }
    // Wait for task 1's primary, then kill it (no lease revocation).
    let victim = loop {
        match rx.recv().await {
            Some((node, Event::BecamePrimary { task, .. })) if task.0 == 1 => break node,
            Some(_) => {}
            None => panic!("events ended"),
        }
    };
    let pos = nodes
        .iter()
        .position(|n| n.id == victim)
        .expect("victim is a node");
    let v = nodes.remove(pos);
    v.kill.kill();
    let killed = tokio::time::Instant::now();
    let mut died = false;
    let restarted = loop {
        match tokio::time::timeout(Duration::from_secs(20), rx.recv()).await {
            Ok(Some((_, Event::NeighbourDied { neighbour, .. }))) if neighbour.0 == 1 => {
                died = true
            }
            Ok(Some((_, Event::NeighbourRestarted { neighbour, .. }))) if neighbour.0 == 1 => {
                break killed.elapsed()
            }
            Ok(Some(_)) => {}
            other => panic!("no restart of task 1: {other:?}"),
        }
    };
    assert!(died, "died before restarted");
    assert!(
        restarted < Duration::from_secs(4),
        "failover took {restarted:?}"
    );
    for n in nodes {
        let exit = tokio::time::timeout(Duration::from_secs(60), n.join)
            .await
            .expect("in time");
        assert!(matches!(exit, Ok(Ok(NodeExit::JobEnded(_)))), "{exit:?}");
    }
    assert!(results.all().iter().all(|r| r.total == r.expected));
}

/// A task that panics when it is primary of task 1 on node 2.
struct Fragile(NodeId);

impl taskgraph_core::Task for Fragile {
    fn epoch_changed(&mut self, ctx: &mut taskgraph_core::Context, _epoch: taskgraph_core::Epoch) {
        if self.0 == NodeId(2) && ctx.task().0 == 1 {
            panic!("application bug");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s6_a_panicking_task_revokes_its_lease_so_failover_is_immediate() {
    let store: Arc<dyn Store> = Arc::new(MemStoreServer::new());
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut nodes = Vec::new();
    for id in 1..=4 {
        let topo = Arc::new(TreeTopology::new(2, 2).expect("tree"));
        let builder = move |_t| Box::new(Fragile(NodeId(id))) as Box<dyn taskgraph_core::Task>;
        let h = spawn_node(
            options(id, "panic", 2, 1),
            store.clone(),
            topo,
            Box::new(builder),
            Some(tx.clone()),
        )
        .await
        .expect("starts");
        nodes.push(h);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let fragile = nodes.remove(1);
    let r = tokio::time::timeout(Duration::from_secs(5), fragile.join)
        .await
        .expect("ends");
    let panicked_at = tokio::time::Instant::now();
    assert!(
        matches!(&r, Ok(Err(taskgraph_runtime::RuntimeError::TaskPanicked(m))) if m.contains("application bug")),
        "{r:?}"
    );
    // Its standby (node 4) takes task 1 well before a TTL would expire.
    loop {
        match tokio::time::timeout(Duration::from_secs(5), rx.recv()).await {
            Ok(Some((
                NodeId(4),
                Event::BecamePrimary {
                    task,
                    promoted: true,
                    ..
                },
            ))) if task.0 == 1 => break,
            Ok(Some(_)) => {}
            other => panic!("no promotion: {other:?}"),
        }
    }
    let took = panicked_at.elapsed();
    assert!(
        took < Duration::from_millis(1000),
        "promotion {took:?} after the panic, not a TTL"
    );
    for n in nodes {
        n.shutdown.stop();
    }
}

#[tokio::test]
async fn s19_options_that_break_a_timing_relation_are_a_clear_error_before_anything_starts() {
    let opts = || {
        let cfg = NodeConfig::new(NodeId(1), "options", "", 1, 0);
        NodeOptions::new(cfg, "127.0.0.1:0".parse().expect("addr"))
    };
    let start = |o: NodeOptions| async move {
        let store: Arc<dyn Store> = Arc::new(MemStoreServer::new());
        let topo = Arc::new(TreeTopology::new(2, 1).expect("tree"));
        let builder = TreeSumBuilder::new(1, 1, Results::default());
        spawn_node(o, store, topo, Box::new(builder), None)
            .await
            .map(|h| h.shutdown.stop())
    };
    assert!(opts().validate().is_ok(), "the defaults hold");
    let mut slow_beats = opts();
    slow_beats.heartbeat = Duration::from_millis(700);
    let mut long_calls = opts();
    long_calls.op_timeout = Duration::from_secs(5);
    let mut no_beats = opts();
    no_beats.heartbeat = Duration::ZERO;
    let mut bad_core = opts();
    bad_core.config.renew_interval = bad_core.config.ttl;
    for (o, says) in [
        (slow_beats, "three heartbeats"),
        (long_calls, "op_timeout"),
        (no_beats, "must all be > 0"),
        (bad_core, "renew_interval"),
    ] {
        let err = start(o).await.expect_err("refused").to_string();
        assert!(err.contains(says), "{err:?} does not say {says:?}");
    }
}
