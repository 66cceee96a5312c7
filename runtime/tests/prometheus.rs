//! The Prometheus endpoint serves the node metrics of a running job.
#![cfg(feature = "prometheus")]

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;
use taskgraph_core::testkit::tree_sum::{Results, TreeSumBuilder};
use taskgraph_core::{NodeConfig, NodeId, TreeTopology};
use taskgraph_runtime::telemetry::install_prometheus;
use taskgraph_runtime::{spawn_node, MemStoreServer, NodeExit, NodeOptions, Store};

fn scrape(addr: SocketAddr) -> String {
    let mut s = TcpStream::connect(addr).expect("the exporter listens");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .expect("request");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jobs_metrics_are_served_for_prometheus() {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    install_prometheus(addr).expect("exporter installed");

    let store: Arc<dyn Store> = Arc::new(MemStoreServer::new());
    let topo = Arc::new(TreeTopology::new(2, 3).expect("tree"));
    let results = Results::default();
    let mut handles = Vec::new();
    for id in 1..=6 {
        let cfg = NodeConfig::new(NodeId(id), "metrics", "", 3, 1);
        let opts = NodeOptions::new(cfg, SocketAddr::from((Ipv4Addr::LOCALHOST, 0)));
        let builder = TreeSumBuilder::new(3, 5, results.clone());
        handles.push(
            spawn_node(opts, store.clone(), topo.clone(), Box::new(builder), None)
                .await
                .expect("node starts"),
        );
    }
    for h in handles {
        let exit = tokio::time::timeout(Duration::from_secs(30), h.join)
            .await
            .expect("in time")
            .expect("joined")
            .expect("ran");
        assert!(matches!(exit, NodeExit::JobEnded(_)), "{exit:?}");
    }
    let text = tokio::task::spawn_blocking(move || scrape(addr))
        .await
        .expect("scraped");
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    // Which node takes which role is up to the race for the keys: three
    // became primary, once each, not promoted.
    let primaries = text
        .lines()
        .filter(|l| {
            l.starts_with("taskgraph_became_primary_total{") && l.contains("promoted=\"false\"} 1")
        })
        .count();
    assert_eq!(primaries, 3, "{text}");
    for needle in [
        // Every node joins with a transaction and takes a lease.
        "taskgraph_store_ops_total{node=\"n1\",op=\"txn\"}",
        "taskgraph_store_op_seconds{node=\"n1\",op=\"lease_grant\",quantile=\"0.5\"}",
        "taskgraph_messages_sent_total{node=\"n",
        "taskgraph_bytes_received_total{node=\"n",
        "taskgraph_epoch_seconds{node=\"n",
    ] {
        assert!(text.contains(needle), "{needle} missing from:\n{text}");
    }
}
