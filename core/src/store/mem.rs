//! In-memory model of the etcd v3 features taskgraph uses.

/// In-memory etcd v3 model (to be written).
#[derive(Debug, Default)]
pub struct MemStore {}
