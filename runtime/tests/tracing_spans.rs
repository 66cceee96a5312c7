//! Every log line of a node's loop carries its node, task, incarnation and
//! epoch (once known), and only that node's lines do.

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use taskgraph_core::testkit::tree_sum::{Results, TreeSumBuilder};
use taskgraph_core::{NodeConfig, NodeId, TreeTopology};
use taskgraph_runtime::{spawn_node, MemStoreServer, NodeExit, NodeOptions, Store};

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut v) = self.0.lock() {
            v.extend_from_slice(buf);
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

// One thread: the subscriber set below is this thread's, and so are the
// nodes' tasks.
#[tokio::test(flavor = "current_thread")]
async fn a_nodes_log_lines_name_its_node_task_incarnation_and_epoch() {
    let capture = Capture::default();
    let writer = capture.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::DEBUG)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let store: Arc<dyn Store> = Arc::new(MemStoreServer::new());
    let topo = Arc::new(TreeTopology::new(2, 3).expect("tree"));
    let results = Results::default();
    let mut handles = Vec::new();
    for id in 1..=3 {
        let cfg = NodeConfig::new(NodeId(id), "spans", "", 3, 0);
        let opts = NodeOptions::new(cfg, SocketAddr::from((Ipv4Addr::LOCALHOST, 0)));
        let builder = TreeSumBuilder::new(3, 3, results.clone());
        let h = spawn_node(opts, store.clone(), topo.clone(), Box::new(builder), None)
            .await
            .expect("node starts");
        handles.push(h);
    }
    for h in handles {
        let exit = tokio::time::timeout(Duration::from_secs(30), h.join)
            .await
            .expect("in time")
            .expect("joined")
            .expect("ran");
        assert!(matches!(exit, NodeExit::JobEnded(_)), "{exit:?}");
    }
    let text = String::from_utf8(capture.0.lock().expect("log").clone()).expect("utf-8");
    let became: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("became primary"))
        .collect();
    assert_eq!(became.len(), 3, "{text}");
    for line in &became {
        assert!(
            line.contains("node{node=n")
                && line.contains(" task=t")
                && line.contains(" incarnation=i"),
            "{line}"
        );
    }
    // After its first epoch, a node's lines carry the epoch too, and each
    // line names exactly one node.
    let epoch_lines: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("epoch changed"))
        .collect();
    assert!(!epoch_lines.is_empty(), "{text}");
    for line in &epoch_lines {
        assert!(line.contains(" epoch=e"), "{line}");
        assert_eq!(line.matches("node{").count(), 1, "{line}");
    }
}
