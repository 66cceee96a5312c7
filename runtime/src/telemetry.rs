//! What a running node reports through the `metrics` facade. Without a
//! recorder these calls cost next to nothing; with the `prometheus` feature,
//! `install_prometheus` serves them on an HTTP port for Prometheus to
//! scrape (`GET /metrics`).
//!
//! Every metric has a `node` label.
//!
//! | name | kind | what |
//! |---|---|---|
//! | `taskgraph_became_primary_total` | counter | roles taken as primary; label `promoted` (`true`: a standby took over) |
//! | `taskgraph_neighbour_died_total` | counter | deaths of neighbours reported to the application |
//! | `taskgraph_epoch_seconds` | histogram | time between two epochs at this node |
//! | `taskgraph_store_ops_total` | counter | store operations; label `op` (`StoreOp::kind`) |
//! | `taskgraph_store_op_seconds` | histogram | their latency, including failures; label `op` (`lease_keepalive`: lease renewals) |
//! | `taskgraph_store_op_errors_total` | counter | store operations that failed; label `op` |
//! | `taskgraph_messages_sent_total` / `taskgraph_bytes_sent_total` | counter | messages handed to peers' connections, and their frame bytes |
//! | `taskgraph_messages_received_total` / `taskgraph_bytes_received_total` | counter | messages read from peers, and their frame bytes |
//! | `taskgraph_messages_dropped_total` | counter | messages the node dropped; label `reason` |
//! | `taskgraph_request_retries_total` | counter | data requests sent again after a failover or a broken connection (S14) |
//! | `taskgraph_peers_revoked_total` | counter | peer sessions whose lease this node revoked on evidence that their process is gone |

/// Serves every metric of this process at `http://ADDR/metrics` in
/// Prometheus's text format. Call it once, inside a tokio runtime, before
/// starting nodes.
#[cfg(feature = "prometheus")]
pub fn install_prometheus(addr: std::net::SocketAddr) -> Result<(), String> {
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .with_http_listener(addr)
        .install()
        .map_err(|e| format!("cannot serve metrics on {addr}: {e}"))
}
