use std::sync::Arc;
use taskgraph_core::testkit::{tree_sum::*, Cluster, ClusterConfig};
use taskgraph_core::*;
#[test]
fn debug_trace() {
    let mut cfg = ClusterConfig::new(1, 15, 1, 2);
    cfg.record_trace = true;
    let results = Results::default();
    let r = results.clone();
    let mut c = Cluster::new(
        cfg,
        Arc::new(TreeTopology::new(2, 15).unwrap()),
        Box::new(move |_| {
            Box::new(TreeSumBuilder {
                num_tasks: 15,
                last_epoch: 10,
                results: r.clone(),
            })
        }),
    );
    c.run_until(Instant::from_millis(3000));
    for t in c.trace() {
        if t.node == Some(NodeId(9)) && t.at < Instant::from_millis(100) {
            println!("{} {:?} {}", t.at, t.node, t.what);
        }
    }
    println!("{:?}", results.all());
}
