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

async fn start(
    store: &Arc<dyn Store>,
    id: u64,
    job: &str,
    tasks: u32,
    standbys: u32,
    results: &Results,
    events: &mpsc::UnboundedSender<(NodeId, Event)>,
) -> NodeHandle {
    let topo = Arc::new(TreeTopology::new(2, tasks).expect("tree"));
    let builder = TreeSumBuilder::new(tasks, 10, results.clone());
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
        nodes.push(start(&store, id, "embedded", 15, 1, &results, &tx).await);
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
        nodes.push(start(&store, id, "kill", 3, 1, &results, &tx).await);
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
