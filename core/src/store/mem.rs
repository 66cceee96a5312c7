//! In-memory model of the etcd v3 features taskgraph uses.
//!
//! [`MemStore`] is a sans-IO state machine: every call that depends on time
//! takes `now`, nothing reads a clock, nothing is random, and every collection
//! whose order can reach an output is ordered (`BTreeMap`, `BTreeSet`,
//! `VecDeque`). The same sequence of calls always produces the same results.
//!
//! The semantics follow a real etcd 3.4 server; see the comments on
//! [`MemStore`] for the points where the model has to choose.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::ops::Bound;
use std::time::Duration;

use bytes::Bytes;

use super::{
    Compare, CompareOp, CompareTarget, KeyValue, LeaseId, Revision, StoreError, StoreOp,
    StoreResponse, TxnOp, TxnOpResponse, WatchEvent, WatchEventKind, WatchId, WatchResponse,
};
use crate::time::Instant;

/// Most compares, or operations per branch, etcd accepts in one transaction
/// (the default of its `--max-txn-ops` flag).
pub(crate) const MAX_TXN_OPS: usize = 128;

/// Largest lease TTL etcd accepts, in seconds (`lease.MaxLeaseTTL`).
pub(crate) const MAX_LEASE_TTL_SECS: i64 = 9_000_000_000;

/// Most distinct revisions etcd puts in one watch response when it replays
/// history (`watchBatchMaxRevs`).
const WATCH_BATCH_MAX_REVS: usize = 1000;

/// A granted lease.
#[derive(Clone, Debug)]
struct Lease {
    /// The TTL it was granted with.
    ttl_secs: i64,
    /// When it expires unless kept alive.
    deadline: Instant,
    /// Keys currently attached to it.
    keys: BTreeSet<String>,
}

/// A live watch.
#[derive(Clone, Debug)]
struct Watcher {
    /// Key prefix watched.
    prefix: String,
    /// Events at revisions below this one are not reported.
    start_revision: Revision,
}

/// The writes of one revision in progress.
#[derive(Debug)]
struct Write {
    /// The revision the writes happen at (current + 1).
    revision: Revision,
    /// The events, in the order the writes were applied.
    events: Vec<WatchEvent>,
}

/// In-memory model of an etcd v3 (3.4) server: keys with revisions and
/// versions, transactions, leases, prefix watches from a revision, and
/// compaction.
///
/// Besides the rules documented on the types in [`crate::store`]:
///
/// - Validation mirrors etcd's: an empty key (outside a prefix read or
///   delete, or in a compare) is an [`StoreError::InvalidRequest`], as is a
///   transaction with more than 128 compares or operations in a branch, or
///   with a key written twice (two puts, or a put and a delete covering it) in
///   either branch, whether or not that branch runs.
/// - A put inside a transaction with an unknown lease fails the whole
///   transaction with [`StoreError::LeaseNotFound`], but only if it is in the
///   branch that runs.
/// - A lease TTL must be between 1 and 9 000 000 000 seconds. (A real etcd
///   silently raises a TTL below its minimum, 2 s by default, instead of
///   rejecting it; the model keeps the TTL asked for.)
/// - Lease ids and watch ids are counters starting at 1; they are never
///   reused.
/// - A watch's history replay is queued at once, in batches of at most 1000
///   revisions; afterwards each write queues one response per matching watch.
/// - Compaction at revision `r` drops the history below `r` and the delete
///   events at `r` itself (etcd keeps, for each key, only its latest
///   revision not above `r`, and drops it if it is a deletion).
#[derive(Clone, Debug)]
pub struct MemStore {
    /// Current revision.
    revision: Revision,
    /// Revision of the last compaction (0: never compacted).
    compact_revision: Revision,
    /// Live keys.
    kvs: BTreeMap<String, KeyValue>,
    /// Live leases.
    leases: BTreeMap<LeaseId, Lease>,
    /// Lease deadlines, earliest first.
    deadlines: BTreeSet<(Instant, LeaseId)>,
    /// Last lease id handed out.
    last_lease: LeaseId,
    /// Every event not compacted away, in revision order.
    history: Vec<WatchEvent>,
    /// Live watches.
    watchers: BTreeMap<WatchId, Watcher>,
    /// Last watch id handed out.
    last_watch: WatchId,
    /// Watch responses not yet drained.
    pending: VecDeque<WatchResponse>,
}

impl Default for MemStore {
    fn default() -> Self {
        Self::new()
    }
}

fn invalid(msg: impl Into<String>) -> StoreError {
    StoreError::InvalidRequest(msg.into())
}

/// Whether `key` is `target`, or starts with it if `prefix`.
fn covers(target: &str, prefix: bool, key: &str) -> bool {
    if prefix {
        key.starts_with(target)
    } else {
        key == target
    }
}

/// etcd's answer to a write over its request limit.
fn check_size(bytes: usize) -> Result<(), StoreError> {
    if bytes > super::MAX_REQUEST_BYTES {
        Err(invalid(format!(
            "request is too large: {bytes} bytes of keys and values, at most {}",
            super::MAX_REQUEST_BYTES
        )))
    } else {
        Ok(())
    }
}

/// Bytes of keys and values in a transaction.
fn txn_size(compares: &[Compare], success: &[TxnOp], failure: &[TxnOp]) -> usize {
    let compares = compares.iter().map(|c| {
        c.key.len()
            + match &c.target {
                super::CompareTarget::Value(v) => v.len(),
                _ => 0,
            }
    });
    let ops = success.iter().chain(failure).map(|op| match op {
        TxnOp::Get { key, .. } | TxnOp::Delete { key, .. } => key.len(),
        TxnOp::Put { key, value, .. } => key.len() + value.len(),
    });
    compares.chain(ops).fold(0usize, usize::saturating_add)
}

/// etcd rejects an empty key unless it stands for "every key" (a prefix).
fn check_key(key: &str, prefix: bool) -> Result<(), StoreError> {
    if key.is_empty() && !prefix {
        Err(invalid("key is not provided"))
    } else {
        Ok(())
    }
}

fn check_txn_op(op: &TxnOp) -> Result<(), StoreError> {
    match op {
        TxnOp::Get { key, prefix } | TxnOp::Delete { key, prefix } => check_key(key, *prefix),
        TxnOp::Put { key, .. } => check_key(key, false),
    }
}

/// etcd's `checkIntervals`: within one branch a key may be put at most once
/// and must not be covered by a delete of the same branch. Deletes may
/// overlap each other, and reads are unrestricted.
fn check_duplicates(ops: &[TxnOp]) -> Result<(), StoreError> {
    let mut puts = BTreeSet::new();
    for op in ops {
        if let TxnOp::Put { key, .. } = op {
            if !puts.insert(key.as_str()) {
                return Err(invalid(format!(
                    "duplicate key given in txn request: {key}"
                )));
            }
        }
    }
    for op in ops {
        if let TxnOp::Delete { key, prefix } = op {
            if let Some(put) = puts.iter().find(|put| covers(key, *prefix, put)) {
                return Err(invalid(format!(
                    "duplicate key given in txn request: {put}"
                )));
            }
        }
    }
    Ok(())
}

fn watch_response(watch: WatchId, events: Vec<WatchEvent>) -> WatchResponse {
    WatchResponse {
        watch,
        events,
        compact_revision: None,
        canceled: false,
    }
}

impl MemStore {
    /// An empty store at revision 1, without leases or watches.
    pub fn new() -> Self {
        MemStore {
            revision: 1,
            compact_revision: 0,
            kvs: BTreeMap::new(),
            leases: BTreeMap::new(),
            deadlines: BTreeSet::new(),
            last_lease: 0,
            history: Vec::new(),
            watchers: BTreeMap::new(),
            last_watch: 0,
            pending: VecDeque::new(),
        }
    }

    /// Apply one op at `now`. Expires due leases first (as
    /// [`expire_leases(now)`](Self::expire_leases)).
    ///
    /// Watch events the op causes are queued for
    /// [`poll_watch_response`](Self::poll_watch_response). A failed op changes
    /// nothing (apart from the lease expiry that precedes it).
    pub fn apply(&mut self, now: Instant, op: StoreOp) -> Result<StoreResponse, StoreError> {
        self.expire_leases(now);
        match op {
            StoreOp::Get { key, prefix } => {
                check_key(&key, prefix)?;
                Ok(StoreResponse::Get {
                    kvs: self.read(&key, prefix),
                    revision: self.revision,
                })
            }
            StoreOp::Put { key, value, lease } => {
                check_key(&key, false)?;
                check_size(key.len().saturating_add(value.len()))?;
                self.check_lease(lease)?;
                let mut write = self.begin();
                self.put_key(&mut write, key, value, lease);
                self.commit(write);
                Ok(StoreResponse::Put {
                    revision: self.revision,
                })
            }
            StoreOp::Delete { key, prefix } => {
                check_key(&key, prefix)?;
                let mut write = self.begin();
                let deleted = self.delete_range(&mut write, &key, prefix);
                self.commit(write);
                Ok(StoreResponse::Delete {
                    deleted,
                    revision: self.revision,
                })
            }
            StoreOp::Txn {
                compares,
                success,
                failure,
            } => self.txn(compares, success, failure),
            StoreOp::LeaseGrant { ttl_secs } => self.lease_grant(now, ttl_secs),
            StoreOp::LeaseKeepAlive { lease } => self.lease_keep_alive(now, lease),
            StoreOp::LeaseRevoke { lease } => {
                let granted = self
                    .leases
                    .remove(&lease)
                    .ok_or(StoreError::LeaseNotFound(lease))?;
                self.revoke(lease, granted);
                Ok(StoreResponse::LeaseRevoked {
                    revision: self.revision,
                })
            }
            StoreOp::Watch {
                prefix,
                start_revision,
            } => self.watch(prefix, start_revision),
            StoreOp::CancelWatch { watch } => {
                if self.watchers.remove(&watch).is_some() {
                    Ok(StoreResponse::WatchCanceled { watch })
                } else {
                    Err(invalid(format!("watch {watch} does not exist")))
                }
            }
        }
    }

    /// Expire every lease whose deadline is at or before `now`: delete its
    /// keys (all deletions of one lease at one new revision, like etcd's lease
    /// revoke; none if it has no keys) and queue the watch events. Leases
    /// expire in deadline order, ties in lease id order.
    pub fn expire_leases(&mut self, now: Instant) {
        while let Some(&(deadline, id)) = self.deadlines.first() {
            if deadline > now {
                break;
            }
            self.deadlines.remove(&(deadline, id));
            if let Some(lease) = self.leases.remove(&id) {
                self.revoke(id, lease);
            }
        }
    }

    /// Earliest lease deadline, if any lease exists.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.first().map(|&(deadline, _)| deadline)
    }

    /// Drain watch responses produced by earlier calls, in order.
    pub fn poll_watch_response(&mut self) -> Option<WatchResponse> {
        self.pending.pop_front()
    }

    /// Current revision (1 on an empty store).
    pub fn revision(&self) -> Revision {
        self.revision
    }

    /// Compact history up to `rev` (like etcd's compaction): a watch that
    /// later asks to start before `rev` gets a compacted response instead of
    /// events. Watches already running are not affected.
    ///
    /// Fails with [`StoreError::InvalidRequest`] if `rev` is above the current
    /// revision, and with [`StoreError::Compacted`] if it is not above the
    /// last compaction.
    pub fn compact(&mut self, rev: Revision) -> Result<(), StoreError> {
        if rev > self.revision {
            return Err(invalid(format!(
                "required revision {rev} is a future revision (current {})",
                self.revision
            )));
        }
        if rev <= self.compact_revision {
            return Err(StoreError::Compacted {
                compact_revision: self.compact_revision,
            });
        }
        self.compact_revision = rev;
        self.history.retain(|event| {
            event.kv.mod_revision > rev
                || (event.kv.mod_revision == rev && event.kind == WatchEventKind::Put)
        });
        Ok(())
    }

    /// Read one key without going through [`apply`](Self::apply) (inspection
    /// for tests and checkers).
    pub fn get(&self, key: &str) -> Option<&KeyValue> {
        self.kvs.get(key)
    }

    /// Drop `watch` silently (e.g. its client crashed): it gets no further
    /// responses, and responses of it still queued are discarded. Unknown ids
    /// are ignored.
    pub fn cancel_watch(&mut self, watch: WatchId) {
        self.watchers.remove(&watch);
        self.pending.retain(|response| response.watch != watch);
    }

    /// Whether a lease exists (granted, not revoked or expired as of the last
    /// call).
    pub fn lease_exists(&self, lease: LeaseId) -> bool {
        self.leases.contains_key(&lease)
    }

    // --- reads -----------------------------------------------------------

    /// The keys `key` designates, sorted.
    fn read(&self, key: &str, prefix: bool) -> Vec<KeyValue> {
        if prefix {
            self.kvs
                .range::<str, _>((Bound::Included(key), Bound::Unbounded))
                .take_while(|(k, _)| k.starts_with(key))
                .map(|(_, kv)| kv.clone())
                .collect()
        } else {
            self.kvs.get(key).cloned().into_iter().collect()
        }
    }

    fn compare(&self, compare: &Compare) -> bool {
        let kv = self.kvs.get(&compare.key);
        let ordering = match (&compare.target, kv) {
            // etcd: comparing the value of a missing key always fails.
            (CompareTarget::Value(_), None) => return false,
            (CompareTarget::Value(value), Some(kv)) => kv.value.as_ref().cmp(value.as_ref()),
            (CompareTarget::CreateRevision(rev), kv) => {
                kv.map_or(0, |kv| kv.create_revision).cmp(rev)
            }
            (CompareTarget::ModRevision(rev), kv) => kv.map_or(0, |kv| kv.mod_revision).cmp(rev),
            (CompareTarget::Version(version), kv) => kv.map_or(0, |kv| kv.version).cmp(version),
        };
        match compare.op {
            CompareOp::Equal => ordering.is_eq(),
            CompareOp::NotEqual => ordering.is_ne(),
            CompareOp::Greater => ordering.is_gt(),
            CompareOp::Less => ordering.is_lt(),
        }
    }

    fn check_lease(&self, lease: LeaseId) -> Result<(), StoreError> {
        if lease == 0 || self.leases.contains_key(&lease) {
            Ok(())
        } else {
            Err(StoreError::LeaseNotFound(lease))
        }
    }

    // --- writes ----------------------------------------------------------

    fn begin(&self) -> Write {
        Write {
            revision: self.revision + 1,
            events: Vec::new(),
        }
    }

    fn put_key(&mut self, write: &mut Write, key: String, value: Bytes, lease: LeaseId) {
        let (create_revision, version, old_lease) = match self.kvs.get(&key) {
            Some(old) => (old.create_revision, old.version + 1, old.lease),
            None => (write.revision, 1, 0),
        };
        if old_lease != lease {
            self.detach(old_lease, &key);
            if let Some(granted) = self.leases.get_mut(&lease) {
                granted.keys.insert(key.clone());
            }
        }
        let kv = KeyValue {
            key: key.clone(),
            value,
            create_revision,
            mod_revision: write.revision,
            version,
            lease,
        };
        write.events.push(WatchEvent {
            kind: WatchEventKind::Put,
            kv: kv.clone(),
        });
        self.kvs.insert(key, kv);
    }

    fn delete_range(&mut self, write: &mut Write, key: &str, prefix: bool) -> i64 {
        let keys: Vec<String> = self
            .read(key, prefix)
            .into_iter()
            .map(|kv| kv.key)
            .collect();
        let mut deleted = 0;
        for key in keys {
            if self.delete_key(write, &key) {
                deleted += 1;
            }
        }
        deleted
    }

    fn delete_key(&mut self, write: &mut Write, key: &str) -> bool {
        let Some(old) = self.kvs.remove(key) else {
            return false;
        };
        self.detach(old.lease, key);
        write.events.push(WatchEvent {
            kind: WatchEventKind::Delete,
            kv: KeyValue {
                key: old.key,
                value: Bytes::new(),
                create_revision: 0,
                mod_revision: write.revision,
                version: 0,
                lease: 0,
            },
        });
        true
    }

    fn detach(&mut self, lease: LeaseId, key: &str) {
        if let Some(granted) = self.leases.get_mut(&lease) {
            granted.keys.remove(key);
        }
    }

    /// Make `write` the new revision if it changed anything, record its
    /// events and queue them for the matching watches.
    fn commit(&mut self, write: Write) {
        if write.events.is_empty() {
            return;
        }
        self.revision = write.revision;
        for (&id, watcher) in &self.watchers {
            if write.revision < watcher.start_revision {
                continue;
            }
            let events: Vec<WatchEvent> = write
                .events
                .iter()
                .filter(|event| event.kv.key.starts_with(&watcher.prefix))
                .cloned()
                .collect();
            if !events.is_empty() {
                self.pending.push_back(watch_response(id, events));
            }
        }
        self.history.extend(write.events);
    }

    fn txn(
        &mut self,
        compares: Vec<Compare>,
        success: Vec<TxnOp>,
        failure: Vec<TxnOp>,
    ) -> Result<StoreResponse, StoreError> {
        if compares.len() > MAX_TXN_OPS
            || success.len() > MAX_TXN_OPS
            || failure.len() > MAX_TXN_OPS
        {
            return Err(invalid(format!(
                "too many operations in txn request (at most {MAX_TXN_OPS})"
            )));
        }
        check_size(txn_size(&compares, &success, &failure))?;
        if compares.iter().any(|compare| compare.key.is_empty()) {
            return Err(invalid("key is not provided"));
        }
        for op in success.iter().chain(&failure) {
            check_txn_op(op)?;
        }
        check_duplicates(&success)?;
        check_duplicates(&failure)?;

        let succeeded = compares.iter().all(|compare| self.compare(compare));
        let ops = if succeeded { success } else { failure };
        for op in &ops {
            if let TxnOp::Put { lease, .. } = op {
                self.check_lease(*lease)?;
            }
        }

        let mut write = self.begin();
        let mut responses = Vec::with_capacity(ops.len());
        for op in ops {
            let response = match op {
                TxnOp::Get { key, prefix } => TxnOpResponse::Get(self.read(&key, prefix)),
                TxnOp::Put { key, value, lease } => {
                    self.put_key(&mut write, key, value, lease);
                    TxnOpResponse::Put
                }
                TxnOp::Delete { key, prefix } => {
                    TxnOpResponse::Delete(self.delete_range(&mut write, &key, prefix))
                }
            };
            responses.push(response);
        }
        self.commit(write);
        Ok(StoreResponse::Txn {
            succeeded,
            responses,
            revision: self.revision,
        })
    }

    // --- leases ----------------------------------------------------------

    fn lease_grant(&mut self, now: Instant, ttl_secs: i64) -> Result<StoreResponse, StoreError> {
        if ttl_secs < 1 {
            return Err(invalid(format!(
                "lease TTL must be at least 1 second, got {ttl_secs}"
            )));
        }
        if ttl_secs > MAX_LEASE_TTL_SECS {
            return Err(invalid(format!(
                "lease TTL {ttl_secs} is larger than {MAX_LEASE_TTL_SECS} seconds"
            )));
        }
        self.last_lease += 1;
        let id = self.last_lease;
        let deadline = now + Duration::from_secs(ttl_secs.unsigned_abs());
        self.leases.insert(
            id,
            Lease {
                ttl_secs,
                deadline,
                keys: BTreeSet::new(),
            },
        );
        self.deadlines.insert((deadline, id));
        Ok(StoreResponse::LeaseGranted {
            lease: id,
            ttl_secs,
        })
    }

    fn lease_keep_alive(
        &mut self,
        now: Instant,
        lease: LeaseId,
    ) -> Result<StoreResponse, StoreError> {
        let granted = self
            .leases
            .get_mut(&lease)
            .ok_or(StoreError::LeaseNotFound(lease))?;
        self.deadlines.remove(&(granted.deadline, lease));
        granted.deadline = now + Duration::from_secs(granted.ttl_secs.unsigned_abs());
        self.deadlines.insert((granted.deadline, lease));
        Ok(StoreResponse::LeaseKeptAlive {
            lease,
            ttl_secs: granted.ttl_secs,
        })
    }

    /// Delete the keys of a lease already removed from `leases`, in key order,
    /// at one revision.
    fn revoke(&mut self, id: LeaseId, lease: Lease) {
        self.deadlines.remove(&(lease.deadline, id));
        let mut write = self.begin();
        for key in &lease.keys {
            self.delete_key(&mut write, key);
        }
        self.commit(write);
    }

    // --- watches ---------------------------------------------------------

    fn watch(
        &mut self,
        prefix: String,
        start_revision: Revision,
    ) -> Result<StoreResponse, StoreError> {
        if start_revision < 0 {
            return Err(invalid(format!(
                "watch start revision must not be negative, got {start_revision}"
            )));
        }
        self.last_watch += 1;
        let id = self.last_watch;
        if start_revision > 0 && start_revision < self.compact_revision {
            self.pending.push_back(WatchResponse {
                watch: id,
                events: Vec::new(),
                compact_revision: Some(self.compact_revision),
                canceled: true,
            });
            return Ok(StoreResponse::WatchCreated { watch: id });
        }
        let start = if start_revision == 0 {
            self.revision + 1
        } else {
            start_revision
        };
        if start <= self.revision {
            self.replay(id, &prefix, start);
        }
        self.watchers.insert(
            id,
            Watcher {
                prefix,
                start_revision: start,
            },
        );
        Ok(StoreResponse::WatchCreated { watch: id })
    }

    /// Queue the recorded events from `start` on that match `prefix`.
    fn replay(&mut self, watch: WatchId, prefix: &str, start: Revision) {
        let from = self
            .history
            .partition_point(|event| event.kv.mod_revision < start);
        let mut batch: Vec<WatchEvent> = Vec::new();
        let mut revisions = 0;
        for event in self.history.iter().skip(from) {
            if !event.kv.key.starts_with(prefix) {
                continue;
            }
            let new_revision = batch
                .last()
                .map_or(true, |last| last.kv.mod_revision != event.kv.mod_revision);
            if new_revision {
                if revisions == WATCH_BATCH_MAX_REVS {
                    self.pending
                        .push_back(watch_response(watch, std::mem::take(&mut batch)));
                    revisions = 0;
                }
                revisions += 1;
            }
            batch.push(event.clone());
        }
        if !batch.is_empty() {
            self.pending.push_back(watch_response(watch, batch));
        }
    }
}
