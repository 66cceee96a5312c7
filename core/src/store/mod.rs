//! The coordination store: the operations the core asks for, their results,
//! and an in-memory model of etcd v3 ([`MemStore`]).
//!
//! The types mirror the subset of the etcd v3 API that taskgraph needs: a
//! global revision, put/get/delete over keys and prefixes, transactions with
//! compares on value, create revision, mod revision and version, leases with a
//! TTL in whole seconds, and prefix watches that start at a revision.
//! [`conformance`] holds a test suite that any implementation (the
//! [`MemStore`], a real etcd server) must pass.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

pub mod conformance;
mod mem;

pub use mem::MemStore;

/// The largest write a store accepts, counted as the bytes of the keys and
/// values of one put or transaction: etcd's default `--max-request-bytes`
/// (1.5 MiB). [`MemStore`] refuses a larger one as etcd does, with
/// [`StoreError::InvalidRequest`], so a job tried on the embedded store
/// meets the same bound it will meet on etcd. What the core itself writes
/// is far below it: names and addresses are bounded by
/// [`NodeConfig::validate`](crate::NodeConfig::validate) and exit reasons
/// by [`MAX_EXIT_REASON_LEN`](crate::MAX_EXIT_REASON_LEN).
pub const MAX_REQUEST_BYTES: usize = 3 * 512 * 1024;

/// A store revision. Starts at 1 on an empty store; every write bumps it by one.
pub type Revision = i64;

/// A lease id as granted by the store. `0` means "no lease".
pub type LeaseId = i64;

/// A watch id as assigned by the store.
pub type WatchId = i64;

/// One key with its value and metadata, as etcd returns it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyValue {
    /// The key.
    pub key: String,
    /// The value (empty in a delete event).
    pub value: Bytes,
    /// Revision of the key's creation (since its last deletion).
    pub create_revision: Revision,
    /// Revision of the key's last modification (of its deletion, in a delete event).
    pub mod_revision: Revision,
    /// Number of modifications since creation; 0 once deleted.
    pub version: i64,
    /// Lease the key is attached to, or 0.
    pub lease: LeaseId,
}

/// What a [`Compare`] looks at.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompareTarget {
    /// The value. A compare on the value of an absent key is false.
    Value(Bytes),
    /// The create revision (0 for an absent key).
    CreateRevision(Revision),
    /// The mod revision (0 for an absent key).
    ModRevision(Revision),
    /// The version (0 for an absent key).
    Version(i64),
}

/// How a [`Compare`] compares the key's field with its target.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompareOp {
    /// field == target
    Equal,
    /// field != target
    NotEqual,
    /// field > target
    Greater,
    /// field < target
    Less,
}

/// One guard of a transaction.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compare {
    /// The key compared.
    pub key: String,
    /// The comparison.
    pub op: CompareOp,
    /// The field and the value it is compared with.
    pub target: CompareTarget,
}

impl Compare {
    /// The key does not exist (its create revision is 0).
    pub fn absent(key: impl Into<String>) -> Self {
        Compare {
            key: key.into(),
            op: CompareOp::Equal,
            target: CompareTarget::CreateRevision(0),
        }
    }

    /// The key's value equals `value`.
    pub fn value_eq(key: impl Into<String>, value: impl Into<Bytes>) -> Self {
        Compare {
            key: key.into(),
            op: CompareOp::Equal,
            target: CompareTarget::Value(value.into()),
        }
    }

    /// The key's mod revision equals `rev` (0: the key is absent).
    pub fn mod_revision_eq(key: impl Into<String>, rev: Revision) -> Self {
        Compare {
            key: key.into(),
            op: CompareOp::Equal,
            target: CompareTarget::ModRevision(rev),
        }
    }

    /// The key's create revision equals `rev` (0: the key is absent).
    pub fn create_revision_eq(key: impl Into<String>, rev: Revision) -> Self {
        Compare {
            key: key.into(),
            op: CompareOp::Equal,
            target: CompareTarget::CreateRevision(rev),
        }
    }
}

/// One operation inside a transaction branch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TxnOp {
    /// Read a key, or every key starting with `key` if `prefix`.
    Get {
        /// Key or prefix.
        key: String,
        /// Treat `key` as a prefix.
        prefix: bool,
    },
    /// Write a key, attached to `lease` (0: no lease).
    Put {
        /// Key.
        key: String,
        /// Value.
        value: Bytes,
        /// Lease to attach the key to, or 0.
        lease: LeaseId,
    },
    /// Delete a key, or every key starting with `key` if `prefix`.
    Delete {
        /// Key or prefix.
        key: String,
        /// Treat `key` as a prefix.
        prefix: bool,
    },
}

/// The result of one [`TxnOp`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TxnOpResponse {
    /// Keys read, sorted by key.
    Get(Vec<KeyValue>),
    /// The put was applied.
    Put,
    /// Number of keys deleted.
    Delete(i64),
}

/// A request to the store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum StoreOp {
    /// Read a key or a prefix; answered with [`StoreResponse::Get`].
    Get {
        /// Key or prefix.
        key: String,
        /// Treat `key` as a prefix.
        prefix: bool,
    },
    /// Write a key; answered with [`StoreResponse::Put`].
    Put {
        /// Key.
        key: String,
        /// Value.
        value: Bytes,
        /// Lease to attach the key to, or 0.
        lease: LeaseId,
    },
    /// Delete a key or prefix; answered with [`StoreResponse::Delete`].
    Delete {
        /// Key or prefix.
        key: String,
        /// Treat `key` as a prefix.
        prefix: bool,
    },
    /// If every compare holds run `success`, else `failure`, atomically at one
    /// revision; answered with [`StoreResponse::Txn`].
    Txn {
        /// Guards, all of which must hold.
        compares: Vec<Compare>,
        /// Run if every compare holds.
        success: Vec<TxnOp>,
        /// Run otherwise.
        failure: Vec<TxnOp>,
    },
    /// Grant a lease of `ttl_secs` seconds; answered with [`StoreResponse::LeaseGranted`].
    LeaseGrant {
        /// Time to live in whole seconds (at least 1).
        ttl_secs: i64,
    },
    /// Renew a lease to its full TTL; answered with [`StoreResponse::LeaseKeptAlive`].
    LeaseKeepAlive {
        /// The lease.
        lease: LeaseId,
    },
    /// Revoke a lease and delete its keys; answered with [`StoreResponse::LeaseRevoked`].
    LeaseRevoke {
        /// The lease.
        lease: LeaseId,
    },
    /// Watch every key starting with `prefix`, from `start_revision` (0: from
    /// now); answered with [`StoreResponse::WatchCreated`], then events arrive
    /// as [`WatchResponse`]s.
    Watch {
        /// Key prefix.
        prefix: String,
        /// First revision to report; 0 means the next one.
        start_revision: Revision,
    },
    /// Stop a watch; answered with [`StoreResponse::WatchCanceled`].
    CancelWatch {
        /// The watch.
        watch: WatchId,
    },
}

impl StoreOp {
    /// A short name of the operation kind, for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            StoreOp::Get { .. } => "get",
            StoreOp::Put { .. } => "put",
            StoreOp::Delete { .. } => "delete",
            StoreOp::Txn { .. } => "txn",
            StoreOp::LeaseGrant { .. } => "lease_grant",
            StoreOp::LeaseKeepAlive { .. } => "lease_keepalive",
            StoreOp::LeaseRevoke { .. } => "lease_revoke",
            StoreOp::Watch { .. } => "watch",
            StoreOp::CancelWatch { .. } => "cancel_watch",
        }
    }
}

/// The successful result of a [`StoreOp`]. `revision` is the store's revision
/// after the operation (etcd's response header revision).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum StoreResponse {
    /// Keys read, sorted by key.
    Get {
        /// The keys.
        kvs: Vec<KeyValue>,
        /// Store revision of the read.
        revision: Revision,
    },
    /// The put was applied.
    Put {
        /// Store revision after the put.
        revision: Revision,
    },
    /// Keys deleted.
    Delete {
        /// Number of keys deleted.
        deleted: i64,
        /// Store revision after the delete.
        revision: Revision,
    },
    /// A transaction ran.
    Txn {
        /// Whether every compare held (the success branch ran).
        succeeded: bool,
        /// One response per op of the branch that ran.
        responses: Vec<TxnOpResponse>,
        /// Store revision after the transaction.
        revision: Revision,
    },
    /// A lease was granted.
    LeaseGranted {
        /// The lease id.
        lease: LeaseId,
        /// Its TTL in seconds.
        ttl_secs: i64,
    },
    /// A lease was renewed.
    LeaseKeptAlive {
        /// The lease id.
        lease: LeaseId,
        /// Its TTL in seconds.
        ttl_secs: i64,
    },
    /// A lease was revoked (its keys are deleted).
    LeaseRevoked {
        /// Store revision after the revocation.
        revision: Revision,
    },
    /// A watch was created; its events follow as [`WatchResponse`]s.
    WatchCreated {
        /// The watch id.
        watch: WatchId,
    },
    /// A watch was canceled.
    WatchCanceled {
        /// The watch id.
        watch: WatchId,
    },
}

/// Why a store operation failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[non_exhaustive]
pub enum StoreError {
    /// The store could not be reached, or did not answer in time. The
    /// operation may or may not have been applied.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The lease does not exist (never granted, revoked or expired).
    #[error("lease {0:x} not found")]
    LeaseNotFound(LeaseId),
    /// The requested revision has been compacted away.
    #[error("revision compacted (compact revision {compact_revision})")]
    Compacted {
        /// Oldest revision still available.
        compact_revision: Revision,
    },
    /// The request is invalid (for example a duplicate key in one transaction,
    /// or a TTL below one second).
    #[error("invalid store request: {0}")]
    InvalidRequest(String),
}

/// What happened to a key, in a [`WatchEvent`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WatchEventKind {
    /// The key was created or modified.
    Put,
    /// The key was deleted (explicitly, or with its lease).
    Delete,
}

/// One change reported by a watch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchEvent {
    /// Put or delete.
    pub kind: WatchEventKind,
    /// The key after the change. For a delete: the key, an empty value, the
    /// deletion's revision as `mod_revision`, create revision and version 0.
    pub kv: KeyValue,
}

/// A batch of events of one watch, all at revisions not seen before, in
/// revision order; or the end of the watch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchResponse {
    /// The watch.
    pub watch: WatchId,
    /// The events, ordered by revision (events of one revision in the order
    /// the store applied them).
    pub events: Vec<WatchEvent>,
    /// Set when the watch ended because its start revision was compacted;
    /// the watcher must re-read and watch again from a later revision.
    pub compact_revision: Option<Revision>,
    /// The watch has ended (canceled, compacted, or its stream broke); no more
    /// responses follow for it.
    pub canceled: bool,
}
