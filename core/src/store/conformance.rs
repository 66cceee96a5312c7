//! A conformance suite that any store implementation can run: the
//! [`MemStore`] (through [`MemConformance`]) and a real etcd server must both
//! pass it, which keeps the model honest.
//!
//! Each check is a function taking a [`ConformanceStore`]; it panics, with a
//! message starting with `[check_name]`, when the store diverges from etcd
//! 3.4. [`all_checks`] lists them by name.
//!
//! The checks are written for a shared, real etcd as well:
//!
//! - every key is under [`ConformanceStore::prefix`] followed by the check's
//!   name, so that concurrent checks and other users do not interfere;
//! - revisions are only compared relative to revisions read from responses.
//!   Where a check asserts by how much an operation moves the global revision,
//!   it retries a few times, since a concurrent writer can only make the
//!   revision move more, never less;
//! - lease expiry is only checked coarsely: a key must still exist well
//!   before its deadline and be gone 2.5 s after it.
//!
//! [`compaction_cancels_old_watch`] compacts the whole store; on a shared
//! store run it apart from checks that watch from a past revision.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use bytes::Bytes;

use super::mem::{MAX_LEASE_TTL_SECS, MAX_TXN_OPS};
use super::{
    Compare, CompareOp, CompareTarget, KeyValue, LeaseId, MemStore, Revision, StoreError, StoreOp,
    StoreResponse, TxnOp, TxnOpResponse, WatchEvent, WatchEventKind, WatchId, WatchResponse,
};
use crate::time::Instant;

/// A store under test, driven synchronously.
pub trait ConformanceStore {
    /// Apply one operation and wait for its result.
    fn apply(&mut self, op: StoreOp) -> Result<StoreResponse, StoreError>;

    /// Let `d` pass: a real store sleeps; [`MemConformance`] advances its
    /// virtual clock (expiring due leases).
    fn advance(&mut self, d: Duration);

    /// The next watch response of `watch`, waiting up to `timeout` (`None` if
    /// none came).
    fn next_watch_response(&mut self, watch: WatchId, timeout: Duration) -> Option<WatchResponse>;

    /// A key prefix unique to this test run (a real etcd is shared), e.g.
    /// `"/conformance/<unique>/"`.
    fn prefix(&self) -> String;

    /// Compact the store's history up to `rev` (etcd's `Compact`). On a
    /// shared store this may fail with [`StoreError::Compacted`] when someone
    /// else already compacted further. (etcd's compaction error does not
    /// carry the compaction revision, so the checks do not look at it.)
    fn compact(&mut self, rev: Revision) -> Result<(), StoreError>;
}

/// A conformance check.
pub type Check = fn(&mut dyn ConformanceStore);

/// Every check, by name (the name of its function in this module).
///
/// [`compaction_cancels_old_watch`] comes last: it compacts the whole store.
pub fn all_checks() -> Vec<(&'static str, Check)> {
    vec![
        ("put_bumps_revision", put_bumps_revision as Check),
        ("delete_bumps_revision", delete_bumps_revision),
        ("noop_delete_keeps_revision", noop_delete_keeps_revision),
        (
            "txn_writes_share_one_revision",
            txn_writes_share_one_revision,
        ),
        (
            "txn_without_writes_keeps_revision",
            txn_without_writes_keeps_revision,
        ),
        ("key_metadata_lifecycle", key_metadata_lifecycle),
        ("get_prefix_sorted", get_prefix_sorted),
        ("empty_key_rejected", empty_key_rejected),
        ("txn_compare_value", txn_compare_value),
        ("txn_compare_create_revision", txn_compare_create_revision),
        ("txn_compare_mod_revision", txn_compare_mod_revision),
        ("txn_compare_version", txn_compare_version),
        ("txn_compare_absent_key", txn_compare_absent_key),
        ("txn_branches", txn_branches),
        ("txn_reads_own_writes", txn_reads_own_writes),
        ("txn_duplicate_keys_rejected", txn_duplicate_keys_rejected),
        ("txn_op_limit", txn_op_limit),
        ("request_size_limit", request_size_limit),
        ("lease_grant_keepalive_revoke", lease_grant_keepalive_revoke),
        (
            "lease_ttl_out_of_range_rejected",
            lease_ttl_out_of_range_rejected,
        ),
        (
            "put_with_unknown_lease_rejected",
            put_with_unknown_lease_rejected,
        ),
        ("lease_revoke_deletes_keys", lease_revoke_deletes_keys),
        ("lease_expiry_deletes_keys", lease_expiry_deletes_keys),
        ("lease_keepalive_extends_life", lease_keepalive_extends_life),
        ("lease_follows_last_put", lease_follows_last_put),
        ("watch_from_now", watch_from_now),
        ("watch_replays_history", watch_replays_history),
        ("watch_sees_lease_expiry", watch_sees_lease_expiry),
        ("watch_ordering_many_writes", watch_ordering_many_writes),
        ("watch_cancel", watch_cancel),
        ("compaction_cancels_old_watch", compaction_cancels_old_watch),
    ]
}

/// [`MemStore`] under [`ConformanceStore`], with a virtual clock.
#[derive(Clone, Debug, Default)]
pub struct MemConformance {
    store: MemStore,
    now: Instant,
    responses: BTreeMap<WatchId, VecDeque<WatchResponse>>,
}

impl MemConformance {
    /// An empty store at virtual time zero.
    pub fn new() -> Self {
        Self::default()
    }

    /// The store under test.
    pub fn store(&self) -> &MemStore {
        &self.store
    }

    /// The virtual time.
    pub fn now(&self) -> Instant {
        self.now
    }

    /// Move the store's watch responses to the per-watch queues.
    fn drain(&mut self) {
        while let Some(response) = self.store.poll_watch_response() {
            self.responses
                .entry(response.watch)
                .or_default()
                .push_back(response);
        }
    }
}

impl ConformanceStore for MemConformance {
    fn apply(&mut self, op: StoreOp) -> Result<StoreResponse, StoreError> {
        let result = self.store.apply(self.now, op);
        self.drain();
        result
    }

    fn advance(&mut self, d: Duration) {
        self.now = self.now + d;
        self.store.expire_leases(self.now);
        self.drain();
    }

    fn next_watch_response(&mut self, watch: WatchId, _timeout: Duration) -> Option<WatchResponse> {
        self.drain();
        self.responses.get_mut(&watch)?.pop_front()
    }

    fn prefix(&self) -> String {
        "/conformance/mem/".to_owned()
    }

    fn compact(&mut self, rev: Revision) -> Result<(), StoreError> {
        let result = self.store.compact(rev);
        self.drain();
        result
    }
}

// --- helpers ---------------------------------------------------------------

/// How long to wait for a watch response that must come.
const WATCH_TIMEOUT: Duration = Duration::from_secs(10);
/// How long to wait to conclude that no watch response comes.
const QUIET: Duration = Duration::from_millis(500);
/// How often a revision-delta measurement is retried under contention.
const DELTA_ATTEMPTS: usize = 10;
/// The lease TTL of the expiry checks (etcd's default minimum).
const SHORT_TTL: i64 = 2;
/// A lease TTL no check outlives.
const LONG_TTL: i64 = 60;
/// How long after its deadline a lease must be gone.
const EXPIRY_SLACK: Duration = Duration::from_millis(2500);

/// Assert with the check's name in the message.
macro_rules! ensure {
    ($c:expr, $cond:expr, $($arg:tt)+) => {
        assert!($cond, "[{}] {}", $c.check, format_args!($($arg)+))
    };
}

/// Assert equality with the check's name in the message.
macro_rules! ensure_eq {
    ($c:expr, $left:expr, $right:expr, $($arg:tt)+) => {
        assert_eq!($left, $right, "[{}] {}", $c.check, format_args!($($arg)+))
    };
}

fn bytes(value: &str) -> Bytes {
    Bytes::copy_from_slice(value.as_bytes())
}

/// One check's view of the store: names are relative to the check's own
/// directory, `<prefix><check>/`.
struct Ctx<'a> {
    s: &'a mut dyn ConformanceStore,
    check: &'static str,
    dir: String,
}

impl<'a> Ctx<'a> {
    fn new(s: &'a mut dyn ConformanceStore, check: &'static str) -> Self {
        let dir = format!("{}{check}/", s.prefix());
        Ctx { s, check, dir }
    }

    fn key(&self, name: &str) -> String {
        format!("{}{name}", self.dir)
    }

    fn apply(&mut self, op: StoreOp) -> Result<StoreResponse, StoreError> {
        self.s.apply(op)
    }

    fn put_op(&self, name: &str, value: &str, lease: LeaseId) -> TxnOp {
        TxnOp::Put {
            key: self.key(name),
            value: bytes(value),
            lease,
        }
    }

    fn get_op(&self, name: &str, prefix: bool) -> TxnOp {
        TxnOp::Get {
            key: self.key(name),
            prefix,
        }
    }

    fn delete_op(&self, name: &str, prefix: bool) -> TxnOp {
        TxnOp::Delete {
            key: self.key(name),
            prefix,
        }
    }

    fn try_put(&mut self, name: &str, value: &str, lease: LeaseId) -> Result<Revision, StoreError> {
        let key = self.key(name);
        match self.apply(StoreOp::Put {
            key: key.clone(),
            value: bytes(value),
            lease,
        })? {
            StoreResponse::Put { revision } => Ok(revision),
            other => panic!("[{}] put {key}: unexpected response {other:?}", self.check),
        }
    }

    fn put(&mut self, name: &str, value: &str, lease: LeaseId) -> Revision {
        let result = self.try_put(name, value, lease);
        result.unwrap_or_else(|e| panic!("[{}] put {name} failed: {e}", self.check))
    }

    fn read(&mut self, name: &str, prefix: bool) -> (Vec<KeyValue>, Revision) {
        let key = self.key(name);
        match self.apply(StoreOp::Get {
            key: key.clone(),
            prefix,
        }) {
            Ok(StoreResponse::Get { kvs, revision }) => (kvs, revision),
            other => panic!("[{}] get {key}: unexpected result {other:?}", self.check),
        }
    }

    /// The key `name`, if it exists.
    fn get(&mut self, name: &str) -> Option<KeyValue> {
        let (kvs, _) = self.read(name, false);
        ensure!(
            self,
            kvs.len() <= 1,
            "get {name} returned {} keys",
            kvs.len()
        );
        kvs.into_iter().next()
    }

    /// The key `name`, which must exist.
    fn must_get(&mut self, name: &str) -> KeyValue {
        let kv = self.get(name);
        kv.unwrap_or_else(|| panic!("[{}] key {name} is missing", self.check))
    }

    /// The store's current revision, read with a get.
    fn revision(&mut self) -> Revision {
        self.read("revision-probe", false).1
    }

    fn delete(&mut self, name: &str, prefix: bool) -> (i64, Revision) {
        let key = self.key(name);
        match self.apply(StoreOp::Delete {
            key: key.clone(),
            prefix,
        }) {
            Ok(StoreResponse::Delete { deleted, revision }) => (deleted, revision),
            other => panic!("[{}] delete {key}: unexpected result {other:?}", self.check),
        }
    }

    fn try_txn(
        &mut self,
        compares: Vec<Compare>,
        success: Vec<TxnOp>,
        failure: Vec<TxnOp>,
    ) -> Result<(bool, Vec<TxnOpResponse>, Revision), StoreError> {
        match self.apply(StoreOp::Txn {
            compares,
            success,
            failure,
        })? {
            StoreResponse::Txn {
                succeeded,
                responses,
                revision,
            } => Ok((succeeded, responses, revision)),
            other => panic!("[{}] txn: unexpected response {other:?}", self.check),
        }
    }

    fn txn(
        &mut self,
        compares: Vec<Compare>,
        success: Vec<TxnOp>,
        failure: Vec<TxnOp>,
    ) -> (bool, Vec<TxnOpResponse>, Revision) {
        let result = self.try_txn(compares, success, failure);
        result.unwrap_or_else(|e| panic!("[{}] txn failed: {e}", self.check))
    }

    /// Whether `compare` holds, asked through an empty transaction.
    fn holds(&mut self, compare: Compare) -> bool {
        let what = format!("{compare:?}");
        let (succeeded, responses, _) = self.txn(vec![compare], vec![], vec![]);
        ensure!(
            self,
            responses.is_empty(),
            "empty txn answered {responses:?} ({what})"
        );
        succeeded
    }

    fn compare(&self, name: &str, op: CompareOp, target: CompareTarget) -> Compare {
        Compare {
            key: self.key(name),
            op,
            target,
        }
    }

    fn grant(&mut self, ttl_secs: i64) -> LeaseId {
        match self.apply(StoreOp::LeaseGrant { ttl_secs }) {
            Ok(StoreResponse::LeaseGranted {
                lease,
                ttl_secs: granted,
            }) => {
                ensure!(self, lease > 0, "granted lease id {lease} is not positive");
                ensure_eq!(
                    self,
                    granted,
                    ttl_secs,
                    "granted TTL differs from the one asked"
                );
                lease
            }
            other => panic!("[{}] lease grant: unexpected result {other:?}", self.check),
        }
    }

    fn keep_alive(&mut self, lease: LeaseId) -> Result<i64, StoreError> {
        match self.apply(StoreOp::LeaseKeepAlive { lease })? {
            StoreResponse::LeaseKeptAlive {
                lease: renewed,
                ttl_secs,
            } => {
                ensure_eq!(self, renewed, lease, "keepalive answered for another lease");
                Ok(ttl_secs)
            }
            other => panic!("[{}] keepalive: unexpected response {other:?}", self.check),
        }
    }

    fn revoke(&mut self, lease: LeaseId) -> Result<Revision, StoreError> {
        match self.apply(StoreOp::LeaseRevoke { lease })? {
            StoreResponse::LeaseRevoked { revision } => Ok(revision),
            other => panic!("[{}] revoke: unexpected response {other:?}", self.check),
        }
    }

    /// Watch every key under `name` from `start_revision`.
    fn watch(&mut self, name: &str, start_revision: Revision) -> WatchId {
        let prefix = self.key(name);
        match self.apply(StoreOp::Watch {
            prefix,
            start_revision,
        }) {
            Ok(StoreResponse::WatchCreated { watch }) => watch,
            other => panic!("[{}] watch: unexpected result {other:?}", self.check),
        }
    }

    fn cancel(&mut self, watch: WatchId) -> Result<(), StoreError> {
        match self.apply(StoreOp::CancelWatch { watch })? {
            StoreResponse::WatchCanceled { watch: canceled } => {
                ensure_eq!(self, canceled, watch, "cancel answered for another watch");
                Ok(())
            }
            other => panic!(
                "[{}] cancel watch: unexpected response {other:?}",
                self.check
            ),
        }
    }

    /// Exactly the next `n` events of `watch`. Checks that they come in
    /// revision order and that no revision is split over two responses.
    fn events(&mut self, watch: WatchId, n: usize) -> Vec<WatchEvent> {
        let mut events: Vec<WatchEvent> = Vec::new();
        while events.len() < n {
            let Some(response) = self.s.next_watch_response(watch, WATCH_TIMEOUT) else {
                panic!(
                    "[{}] watch {watch}: only {} of {n} events arrived: {events:?}",
                    self.check,
                    events.len()
                );
            };
            ensure_eq!(self, response.watch, watch, "response of another watch");
            ensure!(
                self,
                !response.canceled && response.compact_revision.is_none(),
                "watch {watch} ended unexpectedly: {response:?}"
            );
            let previous = events.last().map_or(0, |e| e.kv.mod_revision);
            if let Some(first) = response.events.first() {
                ensure!(
                    self,
                    first.kv.mod_revision > previous,
                    "a response starts at revision {} after one that ended at {previous}: \
                     events out of order or one revision split over two responses",
                    first.kv.mod_revision
                );
            }
            for pair in response.events.windows(2) {
                if let [a, b] = pair {
                    ensure!(
                        self,
                        a.kv.mod_revision <= b.kv.mod_revision,
                        "events out of revision order in one response: {a:?} then {b:?}"
                    );
                }
            }
            events.extend(response.events);
        }
        ensure_eq!(
            self,
            events.len(),
            n,
            "more events than expected: {events:?}"
        );
        events
    }

    /// No response comes for `watch` for a while.
    fn quiet(&mut self, watch: WatchId) {
        let response = self.s.next_watch_response(watch, QUIET);
        ensure!(
            self,
            response.is_none(),
            "watch {watch}: unexpected response {response:?}"
        );
    }

    /// Run `attempt` (which returns the revision before and after the
    /// operation it measures) until the revision moved by exactly `expected`.
    /// A concurrent writer on a shared store can only add revisions, so a
    /// smaller move fails at once and a larger one is retried.
    fn expect_delta(
        &mut self,
        what: &str,
        expected: i64,
        mut attempt: impl FnMut(&mut Self, usize) -> (Revision, Revision),
    ) {
        let mut seen = Vec::new();
        for i in 0..DELTA_ATTEMPTS {
            let (before, after) = attempt(self, i);
            let delta = after - before;
            ensure!(
                self,
                delta >= expected,
                "{what}: revision moved by {delta} ({before} -> {after}), expected {expected}"
            );
            if delta == expected {
                return;
            }
            seen.push(delta);
        }
        panic!(
            "[{}] {what}: revision never moved by exactly {expected} in {DELTA_ATTEMPTS} \
             attempts (moves: {seen:?})",
            self.check
        );
    }
}

fn event_at(events: &[WatchEvent], i: usize) -> &WatchEvent {
    events
        .get(i)
        .unwrap_or_else(|| panic!("no event #{i} in {events:?}"))
}

fn is_delete_of(event: &WatchEvent, key: &str, revision: Revision) -> bool {
    event.kind == WatchEventKind::Delete
        && event.kv
            == KeyValue {
                key: key.to_owned(),
                value: Bytes::new(),
                create_revision: 0,
                mod_revision: revision,
                version: 0,
                lease: 0,
            }
}

// --- revisions ---------------------------------------------------------------

/// A put bumps the revision by exactly one, whether it creates a key,
/// overwrites it, or writes the same value again; the put's revision is the
/// key's mod revision.
pub fn put_bumps_revision(s: &mut dyn ConformanceStore) {
    let mut c = Ctx::new(s, "put_bumps_revision");
    c.expect_delta("put of a new key", 1, |c, i| {
        let before = c.revision();
        (before, c.put(&format!("new{i}"), "v", 0))
    });
    c.expect_delta("put overwriting a key", 1, |c, i| {
        let before = c.revision();
        (before, c.put("k", &format!("v{i}"), 0))
    });
    c.expect_delta("put of the value the key already has", 1, |c, _| {
        let before = c.revision();
        (before, c.put("k", "same", 0))
    });
    let rev = c.put("k", "last", 0);
    let kv = c.must_get("k");
    ensure_eq!(
        c,
        kv.mod_revision,
        rev,
        "put revision is not the key's mod revision"
    );
    let (_, read_rev) = c.read("k", false);
    ensure!(
        c,
        read_rev >= rev,
        "get reports revision {read_rev} below the put's {rev}"
    );
}

/// A delete that deletes something bumps the revision by exactly one, also
/// when a prefix delete removes several keys.
pub fn delete_bumps_revision(s: &mut dyn ConformanceStore) {
    let mut c = Ctx::new(s, "delete_bumps_revision");
    c.expect_delta("delete of one key", 1, |c, i| {
        let name = format!("one{i}");
        c.put(&name, "v", 0);
        let before = c.revision();
        let (deleted, after) = c.delete(&name, false);
        ensure_eq!(c, deleted, 1, "delete of an existing key");
        (before, after)
    });
    ensure!(c, c.get("one0").is_none(), "deleted key still readable");
    c.expect_delta("delete of a prefix with three keys", 1, |c, i| {
        let dir = format!("many{i}/");
        for name in ["a", "b", "c"] {
            c.put(&format!("{dir}{name}"), "v", 0);
        }
        let before = c.revision();
        let (deleted, after) = c.delete(&dir, true);
        ensure_eq!(c, deleted, 3, "prefix delete count");
        (before, after)
    });
    let (left, _) = c.read("many0/", true);
    ensure!(c, left.is_empty(), "prefix delete left {left:?}");
}

/// A delete that deletes nothing leaves the revision alone.
pub fn noop_delete_keeps_revision(s: &mut dyn ConformanceStore) {
    let mut c = Ctx::new(s, "noop_delete_keeps_revision");
    c.put("other", "v", 0);
    c.expect_delta("delete of an absent key", 0, |c, _| {
        let before = c.revision();
        let (deleted, after) = c.delete("absent", false);
        ensure_eq!(c, deleted, 0, "delete of an absent key");
        (before, after)
    });
    c.expect_delta("delete of an empty prefix", 0, |c, _| {
        let before = c.revision();
        let (deleted, after) = c.delete("nothing/", true);
        ensure_eq!(c, deleted, 0, "delete of an empty prefix");
        (before, after)
    });
    c.expect_delta("second delete of a key", 0, |c, i| {
        let name = format!("twice{i}");
        c.put(&name, "v", 0);
        c.delete(&name, false);
        let before = c.revision();
        let (deleted, after) = c.delete(&name, false);
        ensure_eq!(c, deleted, 0, "second delete of a key");
        (before, after)
    });
}

/// Every write of a transaction happens at one revision, one above the
/// previous one; the transaction reports it.
pub fn txn_writes_share_one_revision(s: &mut dyn ConformanceStore) {
    let mut c = Ctx::new(s, "txn_writes_share_one_revision");
    let mut last = (0, 0);
    c.expect_delta("txn with two puts and a delete", 1, |c, i| {
        let (a, b, d) = (format!("a{i}"), format!("b{i}"), format!("d{i}"));
        c.put(&d, "doomed", 0);
        let before = c.revision();
        let ops = vec![
            c.put_op(&a, "1", 0),
            c.put_op(&b, "2", 0),
            c.delete_op(&d, false),
        ];
        let (succeeded, responses, after) = c.txn(vec![], ops, vec![]);
        ensure!(c, succeeded, "txn without compares must succeed");
        ensure_eq!(
            c,
            responses,
            vec![
                TxnOpResponse::Put,
                TxnOpResponse::Put,
                TxnOpResponse::Delete(1)
            ],
            "txn op responses"
        );
        last = (i, after);
        (before, after)
    });
    let (i, rev) = last;
    for name in [format!("a{i}"), format!("b{i}")] {
        let kv = c.must_get(&name);
        ensure_eq!(
            c,
            kv.mod_revision,
            rev,
            "mod revision of {name} written by the txn"
        );
        ensure_eq!(
            c,
            kv.create_revision,
            rev,
            "create revision of {name} created by the txn"
        );
    }
    ensure!(
        c,
        c.get(&format!("d{i}")).is_none(),
        "key deleted by the txn still exists"
    );
}

/// A transaction that writes nothing (reads only, a failed compare whose
/// writes were in the success branch, or deletes of absent keys) leaves the
/// revision alone.
pub fn txn_without_writes_keeps_revision(s: &mut dyn ConformanceStore) {
    let mut c = Ctx::new(s, "txn_without_writes_keeps_revision");
    c.put("k", "v", 0);
    c.expect_delta("read-only txn", 0, |c, _| {
        let before = c.revision();
        let ops = vec![c.get_op("k", false), c.get_op("", true)];
        let (succeeded, _, after) = c.txn(vec![], ops, vec![]);
        ensure!(c, succeeded, "txn without compares must succeed");
        (before, after)
    });
    c.expect_delta("txn whose compare fails, writes in success", 0, |c, _| {
        let before = c.revision();
        let compare = c.compare("k", CompareOp::Equal, CompareTarget::Value(bytes("nope")));
        let put = c.put_op("never", "v", 0);
        let (succeeded, responses, after) = c.txn(vec![compare], vec![put], vec![]);
        ensure!(c, !succeeded, "compare on a wrong value must fail");
        ensure!(
            c,
            responses.is_empty(),
            "empty failure branch answered {responses:?}"
        );
        (before, after)
    });
    ensure!(
        c,
        c.get("never").is_none(),
        "put of the branch not taken was applied"
    );
    c.expect_delta("txn deleting only absent keys", 0, |c, _| {
        let before = c.revision();
        let ops = vec![c.delete_op("absent", false), c.delete_op("none/", true)];
        let (_, responses, after) = c.txn(vec![], ops, vec![]);
        ensure_eq!(
            c,
            responses,
            vec![TxnOpResponse::Delete(0), TxnOpResponse::Delete(0)],
            "deletes of absent keys"
        );
        (before, after)
    });
}

// --- keys ------------------------------------------------------------------

/// create_revision, mod_revision, version and lease through put, put, delete
/// and put again: the version counts puts since creation, a delete resets it.
pub fn key_metadata_lifecycle(s: &mut dyn ConformanceStore) {
    let mut c = Ctx::new(s, "key_metadata_lifecycle");
    let r1 = c.put("k", "one", 0);
    let kv = c.must_get("k");
    let expected = KeyValue {
        key: c.key("k"),
        value: bytes("one"),
        create_revision: r1,
        mod_revision: r1,
        version: 1,
        lease: 0,
    };
    ensure_eq!(c, kv, expected, "key after its first put");

    let r2 = c.put("k", "two", 0);
    ensure!(c, r2 > r1, "second put at revision {r2}, not after {r1}");
    let kv = c.must_get("k");
    let expected = KeyValue {
        value: bytes("two"),
        mod_revision: r2,
        version: 2,
        ..expected
    };
    ensure_eq!(c, kv, expected, "key after its second put");

    let put = c.put_op("k", "three", 0);
    let (_, responses, r3) = c.txn(vec![], vec![put], vec![]);
    ensure_eq!(c, responses, vec![TxnOpResponse::Put], "txn put response");
    let kv = c.must_get("k");
    let expected = KeyValue {
        value: bytes("three"),
        mod_revision: r3,
        version: 3,
        ..expected
    };
    ensure_eq!(c, kv, expected, "key after a put in a txn");

    let (deleted, r4) = c.delete("k", false);
    ensure_eq!(c, deleted, 1, "delete count");
    ensure!(c, r4 > r3, "delete at revision {r4}, not after {r3}");
    ensure!(c, c.get("k").is_none(), "deleted key still readable");

    let r5 = c.put("k", "again", 0);
    let kv = c.must_get("k");
    let expected = KeyValue {
        key: c.key("k"),
        value: bytes("again"),
        create_revision: r5,
        mod_revision: r5,
        version: 1,
        lease: 0,
    };
    ensure_eq!(c, kv, expected, "key recreated after a delete");
}

/// A prefix get returns exactly the keys starting with the prefix, sorted by
/// key whatever the order of writes; a plain get returns only its key.
pub fn get_prefix_sorted(s: &mut dyn ConformanceStore) {
    let mut c = Ctx::new(s, "get_prefix_sorted");
    for name in ["p/c", "p/a", "p/b/x", "p", "p/b", "pz", "o", "p/"] {
        c.put(name, name, 0);
    }
    let expected: Vec<String> = ["p/", "p/a", "p/b", "p/b/x", "p/c"]
        .iter()
        .map(|name| c.key(name))
        .collect();
    let (kvs, _) = c.read("p/", true);
    let keys: Vec<String> = kvs.iter().map(|kv| kv.key.clone()).collect();
    ensure_eq!(c, keys, expected, "keys of a prefix get");
    for kv in &kvs {
        let name = kv.key.strip_prefix(&c.dir).unwrap_or_default();
        ensure_eq!(c, kv.value, bytes(name), "value of {}", kv.key);
    }

    let get = c.get_op("p/", true);
    let (_, responses, _) = c.txn(vec![], vec![get], vec![]);
    ensure_eq!(
        c,
        responses,
        vec![TxnOpResponse::Get(kvs)],
        "prefix get in a txn differs from a plain prefix get"
    );

    let (kvs, _) = c.read("p/b", false);
    let keys: Vec<String> = kvs.iter().map(|kv| kv.key.clone()).collect();
    ensure_eq!(c, keys, vec![c.key("p/b")], "keys of a plain get");
    let (kvs, _) = c.read("p/zzz", false);
    ensure!(c, kvs.is_empty(), "get of an absent key returned {kvs:?}");
    let (kvs, _) = c.read("q/", true);
    ensure!(c, kvs.is_empty(), "get of an empty prefix returned {kvs:?}");
}

/// An empty key is rejected by put, plain get and plain delete, and inside a
/// transaction (etcd: "key is not provided").
pub fn empty_key_rejected(s: &mut dyn ConformanceStore) {
    let c = Ctx::new(s, "empty_key_rejected");
    let ops = [
        StoreOp::Put {
            key: String::new(),
            value: bytes("v"),
            lease: 0,
        },
        StoreOp::Get {
            key: String::new(),
            prefix: false,
        },
        StoreOp::Delete {
            key: String::new(),
            prefix: false,
        },
        StoreOp::Txn {
            compares: vec![],
            success: vec![TxnOp::Put {
                key: String::new(),
                value: bytes("v"),
                lease: 0,
            }],
            failure: vec![],
        },
    ];
    for op in ops {
        let what = format!("{op:?}");
        let result = c.s.apply(op);
        ensure!(
            c,
            matches!(result, Err(StoreError::InvalidRequest(_))),
            "{what} answered {result:?}, expected InvalidRequest"
        );
    }
}

// --- transactions ----------------------------------------------------------

/// Value compares are byte-wise: equal, not equal, greater, less.
pub fn txn_compare_value(s: &mut dyn ConformanceStore) {
    let mut c = Ctx::new(s, "txn_compare_value");
    c.put("k", "v1", 0);
    let cases = [
        (CompareOp::Equal, "v1", true),
        (CompareOp::Equal, "v2", false),
        (CompareOp::NotEqual, "v2", true),
        (CompareOp::NotEqual, "v1", false),
        (CompareOp::Greater, "v0", true),
        (CompareOp::Greater, "v", true),
        (CompareOp::Greater, "v1", false),
        (CompareOp::Greater, "w", false),
        (CompareOp::Less, "v2", true),
        (CompareOp::Less, "v10", true),
        (CompareOp::Less, "v1", false),
        (CompareOp::Less, "", false),
    ];
    for (op, value, expected) in cases {
        let compare = c.compare("k", op, CompareTarget::Value(bytes(value)));
        let held = c.holds(compare);
        ensure_eq!(c, held, expected, "value \"v1\" {op:?} {value:?}");
    }
    ensure!(
        c,
        c.holds(Compare::value_eq(c.key("k"), "v1")),
        "Compare::value_eq"
    );
}

/// Create revision compares; a put keeps the create revision, a delete and
/// re-put changes it.
pub fn txn_compare_create_revision(s: &mut dyn ConformanceStore) {
    let mut c = Ctx::new(s, "txn_compare_create_revision");
    let r = c.put("k", "v", 0);
    c.put("k", "v2", 0);
    let cases = [
        (CompareOp::Equal, r, true),
        (CompareOp::Equal, r + 1, false),
        (CompareOp::NotEqual, r, false),
        (CompareOp::Greater, r - 1, true),
        (CompareOp::Greater, r, false),
        (CompareOp::Less, r + 1, true),
        (CompareOp::Less, r, false),
    ];
    for (op, target, expected) in cases {
        let compare = c.compare("k", op, CompareTarget::CreateRevision(target));
        let held = c.holds(compare);
        ensure_eq!(c, held, expected, "create revision {r} {op:?} {target}");
    }
    ensure!(
        c,
        c.holds(Compare::create_revision_eq(c.key("k"), r)),
        "Compare::create_revision_eq"
    );
    c.delete("k", false);
    let r2 = c.put("k", "v3", 0);
    ensure!(
        c,
        !c.holds(Compare::create_revision_eq(c.key("k"), r)),
        "old create revision after re-creation"
    );
    ensure!(
        c,
        c.holds(Compare::create_revision_eq(c.key("k"), r2)),
        "new create revision after re-creation"
    );
}

/// Mod revision compares follow every write of the key.
pub fn txn_compare_mod_revision(s: &mut dyn ConformanceStore) {
    let mut c = Ctx::new(s, "txn_compare_mod_revision");
    let r1 = c.put("k", "v", 0);
    ensure!(
        c,
        c.holds(Compare::mod_revision_eq(c.key("k"), r1)),
        "mod revision after the first put"
    );
    let r2 = c.put("k", "v", 0);
    let cases = [
        (CompareOp::Equal, r1, false),
        (CompareOp::Equal, r2, true),
        (CompareOp::NotEqual, r1, true),
        (CompareOp::Greater, r1, true),
        (CompareOp::Greater, r2, false),
        (CompareOp::Less, r2 + 1, true),
        (CompareOp::Less, r2, false),
    ];
    for (op, target, expected) in cases {
        let compare = c.compare("k", op, CompareTarget::ModRevision(target));
        let held = c.holds(compare);
        ensure_eq!(c, held, expected, "mod revision {r2} {op:?} {target}");
    }
}

/// Version compares count the puts since creation.
pub fn txn_compare_version(s: &mut dyn ConformanceStore) {
    let mut c = Ctx::new(s, "txn_compare_version");
    c.put("k", "a", 0);
    c.put("k", "b", 0);
    let cases = [
        (CompareOp::Equal, 2, true),
        (CompareOp::Equal, 1, false),
        (CompareOp::NotEqual, 2, false),
        (CompareOp::NotEqual, 3, true),
        (CompareOp::Greater, 1, true),
        (CompareOp::Greater, 2, false),
        (CompareOp::Less, 3, true),
        (CompareOp::Less, 2, false),
    ];
    for (op, target, expected) in cases {
        let compare = c.compare("k", op, CompareTarget::Version(target));
        let held = c.holds(compare);
        ensure_eq!(c, held, expected, "version 2 {op:?} {target}");
    }
}

/// On an absent key (never written, or deleted) every value compare fails,
/// even "not equal", and create revision, mod revision and version compare
/// as 0.
pub fn txn_compare_absent_key(s: &mut dyn ConformanceStore) {
    let mut c = Ctx::new(s, "txn_compare_absent_key");
    c.put("deleted", "v", 0);
    c.delete("deleted", false);
    for name in ["never", "deleted"] {
        let value_cases = [
            (CompareOp::Equal, ""),
            (CompareOp::NotEqual, ""),
            (CompareOp::NotEqual, "x"),
            (CompareOp::Greater, ""),
            (CompareOp::Less, "zzz"),
        ];
        for (op, value) in value_cases {
            let compare = c.compare(name, op, CompareTarget::Value(bytes(value)));
            let held = c.holds(compare);
            ensure!(
                c,
                !held,
                "value compare {op:?} {value:?} on absent key {name} held"
            );
        }
        let zero_cases = [
            (CompareOp::Equal, 0, true),
            (CompareOp::NotEqual, 0, false),
            (CompareOp::Greater, 0, false),
            (CompareOp::Less, 1, true),
            (CompareOp::Greater, -1, true),
        ];
        for (op, target, expected) in zero_cases {
            for compare in [
                c.compare(name, op, CompareTarget::CreateRevision(target)),
                c.compare(name, op, CompareTarget::ModRevision(target)),
                c.compare(name, op, CompareTarget::Version(target)),
            ] {
                let what = format!("{compare:?}");
                let held = c.holds(compare);
                ensure_eq!(c, held, expected, "on absent key {name}: {what}");
            }
        }
        ensure!(
            c,
            c.holds(Compare::absent(c.key(name))),
            "Compare::absent on absent key {name}"
        );
    }
    c.put("present", "v", 0);
    ensure!(
        c,
        !c.holds(Compare::absent(c.key("present"))),
        "Compare::absent on a present key"
    );
}

/// All compares must hold for the success branch; otherwise the failure
/// branch runs. Compares see the state before the transaction.
pub fn txn_branches(s: &mut dyn ConformanceStore) {
    let mut c = Ctx::new(s, "txn_branches");
    let r = c.put("k", "v", 0);
    let good = Compare::value_eq(c.key("k"), "v");
    let bad = Compare::mod_revision_eq(c.key("k"), r + 1_000_000);

    let success = vec![c.put_op("s", "success", 0)];
    let failure = vec![c.get_op("k", false), c.put_op("f", "failure", 0)];
    let (succeeded, responses, _) = c.txn(
        vec![good.clone(), bad.clone()],
        success.clone(),
        failure.clone(),
    );
    ensure!(c, !succeeded, "txn with one failing compare succeeded");
    let kv = c.must_get("k");
    ensure_eq!(
        c,
        responses,
        vec![TxnOpResponse::Get(vec![kv]), TxnOpResponse::Put],
        "failure branch responses"
    );
    ensure!(
        c,
        c.get("s").is_none(),
        "success branch ran although a compare failed"
    );
    ensure_eq!(
        c,
        c.must_get("f").value,
        bytes("failure"),
        "failure branch write"
    );

    // The compare sees the state before the txn, not the txn's own write.
    let guard = Compare::absent(c.key("s"));
    let (succeeded, responses, _) = c.txn(vec![guard.clone(), good], success, failure);
    ensure!(c, succeeded, "txn with holding compares failed");
    ensure_eq!(
        c,
        responses,
        vec![TxnOpResponse::Put],
        "success branch responses"
    );
    ensure_eq!(
        c,
        c.must_get("s").value,
        bytes("success"),
        "success branch write"
    );
    let (succeeded, _, _) = c.txn(vec![guard], vec![], vec![]);
    ensure!(
        c,
        !succeeded,
        "key written by the success branch still looks absent"
    );
}

/// A get inside a transaction sees the writes of earlier operations of the
/// same transaction, at the transaction's revision.
pub fn txn_reads_own_writes(s: &mut dyn ConformanceStore) {
    let mut c = Ctx::new(s, "txn_reads_own_writes");
    c.put("gone", "v", 0);
    let ops = vec![
        c.put_op("k", "v", 0),
        c.get_op("k", false),
        c.delete_op("gone", false),
        c.get_op("gone", false),
    ];
    let (_, responses, rev) = c.txn(vec![], ops, vec![]);
    let kv = KeyValue {
        key: c.key("k"),
        value: bytes("v"),
        create_revision: rev,
        mod_revision: rev,
        version: 1,
        lease: 0,
    };
    ensure_eq!(
        c,
        responses,
        vec![
            TxnOpResponse::Put,
            TxnOpResponse::Get(vec![kv]),
            TxnOpResponse::Delete(1),
            TxnOpResponse::Get(vec![]),
        ],
        "responses of a txn reading its own writes"
    );
}

/// A transaction that writes a key twice in one branch (two puts, or a put
/// and a delete covering the key) is rejected as invalid, whichever branch
/// runs, and changes nothing. Overlapping deletes and reads are allowed.
pub fn txn_duplicate_keys_rejected(s: &mut dyn ConformanceStore) {
    let mut c = Ctx::new(s, "txn_duplicate_keys_rejected");
    c.put("existing", "v", 0);
    let branches = [
        (
            "two puts",
            vec![c.put_op("k", "1", 0), c.put_op("k", "2", 0)],
        ),
        (
            "put then delete",
            vec![c.put_op("k", "1", 0), c.delete_op("k", false)],
        ),
        (
            "delete then put",
            vec![c.delete_op("k", false), c.put_op("k", "1", 0)],
        ),
        (
            "put and prefix delete covering it",
            vec![c.put_op("d/k", "1", 0), c.delete_op("d/", true)],
        ),
        (
            "put of an existing key twice",
            vec![c.put_op("existing", "1", 0), c.put_op("existing", "2", 0)],
        ),
    ];
    for (what, ops) in branches {
        let ok = c.put_op("ok", "v", 0);
        let cases = [
            ("in the success branch", vec![], ops.clone(), vec![]),
            (
                "in the failure branch, which runs",
                vec![Compare::absent(c.key("existing"))],
                vec![ok.clone()],
                ops.clone(),
            ),
            (
                "in the failure branch, which does not run",
                vec![],
                vec![ok],
                ops.clone(),
            ),
        ];
        for (branch, compares, success, failure) in cases {
            let result = c.try_txn(compares, success, failure);
            ensure!(
                c,
                matches!(result, Err(StoreError::InvalidRequest(_))),
                "{what} {branch}: answered {result:?}, expected InvalidRequest"
            );
        }
    }
    for name in ["k", "d/k", "ok"] {
        ensure!(c, c.get(name).is_none(), "rejected txn wrote {name}");
    }
    ensure_eq!(
        c,
        c.must_get("existing").version,
        1,
        "rejected txn wrote existing"
    );

    let allowed = [
        (
            "puts of distinct keys",
            vec![c.put_op("a", "1", 0), c.put_op("b", "2", 0)],
        ),
        (
            "two deletes of one key",
            vec![c.delete_op("a", false), c.delete_op("a", false)],
        ),
        (
            "overlapping deletes",
            vec![c.delete_op("", true), c.delete_op("b", false)],
        ),
        (
            "put and get of one key",
            vec![c.put_op("c", "1", 0), c.get_op("c", false)],
        ),
    ];
    for (what, ops) in allowed {
        let result = c.try_txn(vec![], ops, vec![]);
        ensure!(c, result.is_ok(), "{what}: rejected with {result:?}");
    }
}

/// etcd's default `--max-txn-ops`: at most 128 compares and 128 operations
/// per branch.
pub fn txn_op_limit(s: &mut dyn ConformanceStore) {
    let mut c = Ctx::new(s, "txn_op_limit");
    let gets = |c: &Ctx<'_>, n: usize| -> Vec<TxnOp> {
        (0..n).map(|i| c.get_op(&format!("k{i}"), false)).collect()
    };
    let compares = |c: &Ctx<'_>, n: usize| -> Vec<Compare> {
        (0..n)
            .map(|i| Compare::absent(c.key(&format!("k{i}"))))
            .collect()
    };
    let max = MAX_TXN_OPS;
    let accepted = [
        ("128 ops in success", vec![], gets(&c, max), vec![]),
        ("128 ops in failure", vec![], vec![], gets(&c, max)),
        ("128 compares", compares(&c, max), vec![], vec![]),
    ];
    for (what, cmp, success, failure) in accepted {
        let result = c.try_txn(cmp, success, failure);
        ensure!(c, result.is_ok(), "{what}: rejected with {result:?}");
    }
    let rejected = [
        ("129 ops in success", vec![], gets(&c, max + 1), vec![]),
        ("129 ops in failure", vec![], vec![], gets(&c, max + 1)),
        ("129 compares", compares(&c, max + 1), vec![], vec![]),
    ];
    for (what, cmp, success, failure) in rejected {
        let result = c.try_txn(cmp, success, failure);
        ensure!(
            c,
            matches!(result, Err(StoreError::InvalidRequest(_))),
            "{what}: answered {result:?}, expected InvalidRequest"
        );
    }
}

/// etcd's default `--max-request-bytes` ([`super::MAX_REQUEST_BYTES`],
/// 1.5 MiB): a put or transaction of 1 MiB is written; one of 1.75 MiB or
/// 3 MiB is refused with InvalidRequest and writes nothing.
pub fn request_size_limit(s: &mut dyn ConformanceStore) {
    let mut c = Ctx::new(s, "request_size_limit");
    let mib = |n: f64| Bytes::from(vec![b'x'; (n * 1024.0 * 1024.0) as usize]);
    let at = c.revision();
    let key = c.key("big");
    let put = StoreOp::Put {
        key: key.clone(),
        value: mib(1.0),
        lease: 0,
    };
    let result = c.apply(put);
    ensure!(c, result.is_ok(), "a put of 1 MiB answered {result:?}");
    ensure_eq!(c, c.revision(), at + 1, "the 1 MiB put is written");
    for n in [1.75, 3.0] {
        let at = c.revision();
        let put = StoreOp::Put {
            key: key.clone(),
            value: mib(n),
            lease: 0,
        };
        let result = c.apply(put);
        ensure!(
            c,
            matches!(&result, Err(StoreError::InvalidRequest(_))),
            "a put of {n} MiB answered {result:?}, expected InvalidRequest"
        );
        let txn = c.try_txn(
            vec![],
            vec![TxnOp::Put {
                key: key.clone(),
                value: mib(n),
                lease: 0,
            }],
            vec![],
        );
        ensure!(
            c,
            matches!(&txn, Err(StoreError::InvalidRequest(_))),
            "a txn putting {n} MiB answered {txn:?}, expected InvalidRequest"
        );
        ensure_eq!(
            c,
            c.revision(),
            at,
            "a refused write of {n} MiB wrote nothing"
        );
        let value = c.must_get("big").value;
        ensure_eq!(c, value.len(), 1024 * 1024, "the key keeps its 1 MiB value");
    }
}

// --- leases ----------------------------------------------------------------

/// Grant answers a fresh positive id and the TTL; keepalive answers the TTL;
/// revoke ends the lease, after which keepalive and revoke fail with
/// LeaseNotFound. Granting and revoking a lease without keys leaves the
/// revision alone.
pub fn lease_grant_keepalive_revoke(s: &mut dyn ConformanceStore) {
    let mut c = Ctx::new(s, "lease_grant_keepalive_revoke");
    let a = c.grant(LONG_TTL);
    let b = c.grant(SHORT_TTL + 1);
    ensure!(c, a != b, "two grants returned the same lease {a}");
    for (lease, ttl) in [(a, LONG_TTL), (b, SHORT_TTL + 1)] {
        let renewed = c.keep_alive(lease);
        ensure_eq!(c, renewed, Ok(ttl), "keepalive of lease {lease:x}");
    }
    for lease in [a, b] {
        let result = c.revoke(lease);
        ensure!(c, result.is_ok(), "revoke of lease {lease:x}: {result:?}");
        let renewed = c.keep_alive(lease);
        ensure_eq!(
            c,
            renewed,
            Err(StoreError::LeaseNotFound(lease)),
            "keepalive after revoke"
        );
        let revoked = c.revoke(lease);
        ensure_eq!(
            c,
            revoked,
            Err(StoreError::LeaseNotFound(lease)),
            "second revoke"
        );
    }
    c.expect_delta("grant and revoke of a lease without keys", 0, |c, _| {
        let before = c.revision();
        let lease = c.grant(LONG_TTL);
        let after = c.revoke(lease);
        let after = after.unwrap_or_else(|e| panic!("[{}] revoke failed: {e}", c.check));
        (before, after)
    });
}

/// A TTL below one second, or above etcd's maximum (9e9 s), is rejected.
/// (A real etcd raises a TTL below its minimum instead; a client in front of
/// it must reject it first.)
pub fn lease_ttl_out_of_range_rejected(s: &mut dyn ConformanceStore) {
    let c = Ctx::new(s, "lease_ttl_out_of_range_rejected");
    for ttl_secs in [0, -1, i64::MIN, MAX_LEASE_TTL_SECS + 1, i64::MAX] {
        let result = c.s.apply(StoreOp::LeaseGrant { ttl_secs });
        ensure!(
            c,
            matches!(result, Err(StoreError::InvalidRequest(_))),
            "grant with TTL {ttl_secs}: answered {result:?}, expected InvalidRequest"
        );
    }
}

/// A put with a lease that does not exist (here: a revoked one) fails with
/// LeaseNotFound and writes nothing, also inside a transaction, but only if
/// it is in the branch that runs.
pub fn put_with_unknown_lease_rejected(s: &mut dyn ConformanceStore) {
    let mut c = Ctx::new(s, "put_with_unknown_lease_rejected");
    let lease = c.grant(LONG_TTL);
    c.revoke(lease)
        .unwrap_or_else(|e| panic!("[{}] revoke failed: {e}", c.check));
    let result = c.try_put("k", "v", lease);
    ensure_eq!(
        c,
        result,
        Err(StoreError::LeaseNotFound(lease)),
        "put with a revoked lease"
    );
    ensure!(
        c,
        c.get("k").is_none(),
        "put with a revoked lease wrote the key"
    );

    let ops = vec![c.put_op("a", "v", 0), c.put_op("k", "v", lease)];
    let result = c.try_txn(vec![], ops.clone(), vec![]);
    ensure_eq!(
        c,
        result.map(|_| ()),
        Err(StoreError::LeaseNotFound(lease)),
        "txn putting with a revoked lease"
    );
    ensure!(c, c.get("a").is_none(), "failed txn wrote another key");

    let (succeeded, _, _) = c.txn(vec![], vec![c.put_op("b", "v", 0)], ops);
    ensure!(
        c,
        succeeded,
        "txn with the revoked lease only in the branch not taken"
    );
    ensure!(
        c,
        c.get("b").is_some(),
        "txn with the revoked lease in the other branch did not write"
    );
}

/// Revoking a lease deletes exactly its keys, all at one new revision, which
/// the revoke reports; keys of other leases and without lease stay.
pub fn lease_revoke_deletes_keys(s: &mut dyn ConformanceStore) {
    let mut c = Ctx::new(s, "lease_revoke_deletes_keys");
    let other = c.grant(LONG_TTL);
    c.put("w/free", "v", 0);
    c.put("w/other", "v", other);
    let lease = c.grant(LONG_TTL);
    for name in ["w/c", "w/a", "w/b"] {
        c.put(name, "v", lease);
    }
    let kv = c.must_get("w/a");
    ensure_eq!(c, kv.lease, lease, "lease of a key put with it");
    let watch = c.watch("w/", 0);
    let revision = c.revoke(lease);
    let revision = revision.unwrap_or_else(|e| panic!("[{}] revoke failed: {e}", c.check));
    for name in ["w/a", "w/b", "w/c"] {
        ensure!(
            c,
            c.get(name).is_none(),
            "key {name} of the revoked lease still exists"
        );
    }
    for name in ["w/free", "w/other"] {
        ensure!(
            c,
            c.get(name).is_some(),
            "key {name} not of the revoked lease was deleted"
        );
    }
    let events = c.events(watch, 3);
    for (i, name) in ["w/a", "w/b", "w/c"].iter().enumerate() {
        let event = event_at(&events, i);
        ensure!(
            c,
            is_delete_of(event, &c.key(name), revision),
            "event {i} of the revoke: {event:?}, expected the delete of {name} at {revision}"
        );
    }
    c.cancel(watch)
        .unwrap_or_else(|e| panic!("[{}] cancel failed: {e}", c.check));

    c.expect_delta("revoke of a lease with two keys", 1, |c, i| {
        let lease = c.grant(LONG_TTL);
        c.put(&format!("d{i}/a"), "v", lease);
        c.put(&format!("d{i}/b"), "v", lease);
        let before = c.revision();
        let after = c.revoke(lease);
        let after = after.unwrap_or_else(|e| panic!("[{}] revoke failed: {e}", c.check));
        (before, after)
    });
    c.revoke(other)
        .unwrap_or_else(|e| panic!("[{}] revoke failed: {e}", c.check));
}

/// A lease not kept alive expires: its keys exist well before the TTL and
/// are gone after it; the lease is gone too.
pub fn lease_expiry_deletes_keys(s: &mut dyn ConformanceStore) {
    let mut c = Ctx::new(s, "lease_expiry_deletes_keys");
    let lease = c.grant(SHORT_TTL);
    c.put("a", "v", lease);
    c.put("b", "v", lease);
    c.put("free", "v", 0);
    c.s.advance(Duration::from_millis(500));
    for name in ["a", "b"] {
        ensure!(
            c,
            c.get(name).is_some(),
            "key {name} gone at 0.5 s of a {SHORT_TTL} s lease"
        );
    }
    c.s.advance(
        Duration::from_secs(SHORT_TTL.unsigned_abs()) + EXPIRY_SLACK - Duration::from_millis(500),
    );
    for name in ["a", "b"] {
        ensure!(
            c,
            c.get(name).is_none(),
            "key {name} of an expired lease still exists"
        );
    }
    ensure!(
        c,
        c.get("free").is_some(),
        "key without lease deleted by the expiry"
    );
    ensure_eq!(
        c,
        c.keep_alive(lease),
        Err(StoreError::LeaseNotFound(lease)),
        "keepalive of an expired lease"
    );
    ensure_eq!(
        c,
        c.revoke(lease),
        Err(StoreError::LeaseNotFound(lease)),
        "revoke of an expired lease"
    );
    ensure_eq!(
        c,
        c.try_put("c", "v", lease),
        Err(StoreError::LeaseNotFound(lease)),
        "put with an expired lease"
    );
}

/// Keepalives renew a lease to its full TTL: kept alive every second, its
/// key outlives the original deadline by far.
pub fn lease_keepalive_extends_life(s: &mut dyn ConformanceStore) {
    let mut c = Ctx::new(s, "lease_keepalive_extends_life");
    let lease = c.grant(SHORT_TTL);
    c.put("k", "v", lease);
    for second in 1..=5 {
        c.s.advance(Duration::from_secs(1));
        ensure!(
            c,
            c.get("k").is_some(),
            "key gone at {second} s although kept alive every second"
        );
        let renewed = c.keep_alive(lease);
        ensure_eq!(c, renewed, Ok(SHORT_TTL), "keepalive at {second} s");
    }
    let result = c.revoke(lease);
    ensure!(
        c,
        result.is_ok(),
        "revoke of the kept-alive lease: {result:?}"
    );
    ensure!(c, c.get("k").is_none(), "key survived the revoke");
}

/// A key belongs to the lease of its last put: re-put without a lease it
/// leaves its lease, re-put with another lease it moves, and once deleted and
/// re-created without lease it is no longer the old lease's.
pub fn lease_follows_last_put(s: &mut dyn ConformanceStore) {
    let mut c = Ctx::new(s, "lease_follows_last_put");
    let a = c.grant(LONG_TTL);
    let b = c.grant(LONG_TTL);
    c.put("detached", "v", a);
    c.put("detached", "v", 0);
    ensure_eq!(
        c,
        c.must_get("detached").lease,
        0,
        "lease of a key re-put without lease"
    );
    c.put("moved", "v", a);
    c.put("moved", "v", b);
    ensure_eq!(
        c,
        c.must_get("moved").lease,
        b,
        "lease of a key re-put with another lease"
    );
    c.put("recreated", "v", a);
    c.delete("recreated", false);
    c.put("recreated", "v", 0);
    c.put("kept", "v", a);
    c.put("kept", "v2", a);

    c.revoke(a)
        .unwrap_or_else(|e| panic!("[{}] revoke failed: {e}", c.check));
    for name in ["detached", "moved", "recreated"] {
        ensure!(
            c,
            c.get(name).is_some(),
            "key {name} deleted with a lease it had left"
        );
    }
    ensure!(
        c,
        c.get("kept").is_none(),
        "key re-put with the same lease survived its revoke"
    );
    c.revoke(b)
        .unwrap_or_else(|e| panic!("[{}] revoke failed: {e}", c.check));
    ensure!(
        c,
        c.get("moved").is_none(),
        "key moved to a lease survived its revoke"
    );
    ensure!(
        c,
        c.get("detached").is_some(),
        "key without lease deleted by a revoke"
    );
}

// --- watches ---------------------------------------------------------------

/// A watch from now reports the later writes under its prefix, and only
/// those: puts with the key as a get returns it, deletes with an empty value,
/// the delete's revision and zero create revision, version and lease.
pub fn watch_from_now(s: &mut dyn ConformanceStore) {
    let mut c = Ctx::new(s, "watch_from_now");
    c.put("w/before", "v", 0);
    let watch = c.watch("w/", 0);
    let lease = c.grant(LONG_TTL);
    let r1 = c.put("w/a", "1", lease);
    c.put("w-sibling", "v", 0);
    c.put("x/other", "v", 0);
    let kv = c.must_get("w/a");
    let (deleted, r2) = c.delete("w/a", false);
    ensure_eq!(c, deleted, 1, "delete count");
    c.delete("w/absent", false);
    let r3 = c.put("w/before", "v2", 0);

    let events = c.events(watch, 3);
    let first = event_at(&events, 0);
    ensure_eq!(
        c,
        first.kind,
        WatchEventKind::Put,
        "kind of the first event"
    );
    ensure_eq!(
        c,
        first.kv,
        kv,
        "first event: the put of w/a as get returns it"
    );
    ensure_eq!(c, kv.mod_revision, r1, "put revision");
    let second = event_at(&events, 1);
    ensure!(
        c,
        is_delete_of(second, &c.key("w/a"), r2),
        "second event {second:?}: the delete of w/a at {r2}"
    );
    let third = event_at(&events, 2);
    ensure_eq!(
        c,
        (third.kind, third.kv.mod_revision, third.kv.version),
        (WatchEventKind::Put, r3, 2),
        "third event: the second put of w/before"
    );
    c.quiet(watch);
    c.cancel(watch)
        .unwrap_or_else(|e| panic!("[{}] cancel failed: {e}", c.check));
    c.revoke(lease)
        .unwrap_or_else(|e| panic!("[{}] revoke failed: {e}", c.check));
}

/// A watch from a past revision first replays the events from that revision
/// on (and none before), then reports new writes.
pub fn watch_replays_history(s: &mut dyn ConformanceStore) {
    let mut c = Ctx::new(s, "watch_replays_history");
    c.put("w/zero", "0", 0);
    let r1 = c.put("w/a", "1", 0);
    let r2 = c.put("w/b", "2", 0);
    c.put("outside", "v", 0);
    let r3 = c.put("w/a", "3", 0);
    let (_, r4) = c.delete("w/b", false);
    let ops = vec![c.put_op("w/c", "5", 0), c.put_op("w/d", "5", 0)];
    let (_, _, r5) = c.txn(vec![], ops, vec![]);

    let from_r1 = c.watch("w/", r1);
    let events = c.events(from_r1, 6);
    let expected = [
        (WatchEventKind::Put, "w/a", r1, r1, 1, "1"),
        (WatchEventKind::Put, "w/b", r2, r2, 1, "2"),
        (WatchEventKind::Put, "w/a", r1, r3, 2, "3"),
        (WatchEventKind::Delete, "w/b", 0, r4, 0, ""),
        (WatchEventKind::Put, "w/c", r5, r5, 1, "5"),
        (WatchEventKind::Put, "w/d", r5, r5, 1, "5"),
    ];
    for (i, (kind, name, create, rev, version, value)) in expected.into_iter().enumerate() {
        let event = event_at(&events, i);
        let kv = KeyValue {
            key: c.key(name),
            value: bytes(value),
            create_revision: create,
            mod_revision: rev,
            version,
            lease: 0,
        };
        ensure_eq!(
            c,
            (event.kind, &event.kv),
            (kind, &kv),
            "replayed event {i}"
        );
    }

    let from_r3 = c.watch("w/", r3);
    let events = c.events(from_r3, 4);
    let revisions: Vec<Revision> = events.iter().map(|e| e.kv.mod_revision).collect();
    ensure_eq!(
        c,
        revisions,
        vec![r3, r4, r5, r5],
        "revisions replayed from {r3}"
    );

    let r6 = c.put("w/e", "6", 0);
    for watch in [from_r1, from_r3] {
        let events = c.events(watch, 1);
        let event = event_at(&events, 0);
        ensure_eq!(c, event.kv.mod_revision, r6, "live event after the replay");
        c.cancel(watch)
            .unwrap_or_else(|e| panic!("[{}] cancel failed: {e}", c.check));
    }
}

/// Keys deleted by a lease expiry are reported as deletes, all at one
/// revision, in key order.
pub fn watch_sees_lease_expiry(s: &mut dyn ConformanceStore) {
    let mut c = Ctx::new(s, "watch_sees_lease_expiry");
    let watch = c.watch("w/", 0);
    let lease = c.grant(SHORT_TTL);
    let rb = c.put("w/b", "v", lease);
    let ra = c.put("w/a", "v", lease);
    let events = c.events(watch, 2);
    let revisions: Vec<Revision> = events.iter().map(|e| e.kv.mod_revision).collect();
    ensure_eq!(c, revisions, vec![rb, ra], "put events");
    c.s.advance(Duration::from_secs(SHORT_TTL.unsigned_abs()) + EXPIRY_SLACK);
    let events = c.events(watch, 2);
    let first = event_at(&events, 0);
    let revision = first.kv.mod_revision;
    ensure!(
        c,
        revision > ra,
        "expiry at revision {revision}, not after the puts ({ra})"
    );
    for (i, name) in ["w/a", "w/b"].iter().enumerate() {
        let event = event_at(&events, i);
        ensure!(
            c,
            is_delete_of(event, &c.key(name), revision),
            "expiry event {i}: {event:?}, expected the delete of {name} at {revision}"
        );
    }
    c.cancel(watch)
        .unwrap_or_else(|e| panic!("[{}] cancel failed: {e}", c.check));
}

/// Many writes arrive in revision order, each with its revision; the events
/// of one revision (a transaction, a prefix delete) arrive together, in the
/// order they were applied.
pub fn watch_ordering_many_writes(s: &mut dyn ConformanceStore) {
    let mut c = Ctx::new(s, "watch_ordering_many_writes");
    let watch = c.watch("w/", 0);
    let mut expected: Vec<(WatchEventKind, String, Revision)> = Vec::new();
    for i in (0..20).rev() {
        let name = format!("w/k{i:02}");
        let rev = c.put(&name, &i.to_string(), 0);
        expected.push((WatchEventKind::Put, c.key(&name), rev));
    }
    let ops = vec![
        c.put_op("w/z", "t", 0),
        c.put_op("w/x", "t", 0),
        c.put_op("w/y", "t", 0),
    ];
    let (_, _, rev) = c.txn(vec![], ops, vec![]);
    for name in ["w/z", "w/x", "w/y"] {
        expected.push((WatchEventKind::Put, c.key(name), rev));
    }
    let (deleted, rev) = c.delete("w/k1", true);
    ensure_eq!(c, deleted, 10, "prefix delete count");
    for i in 10..20 {
        expected.push((WatchEventKind::Delete, c.key(&format!("w/k{i:02}")), rev));
    }
    for i in 0..5 {
        let rev = c.put("w/k00", &format!("again{i}"), 0);
        expected.push((WatchEventKind::Put, c.key("w/k00"), rev));
    }

    let events = c.events(watch, expected.len());
    let got: Vec<(WatchEventKind, String, Revision)> = events
        .into_iter()
        .map(|e| (e.kind, e.kv.key, e.kv.mod_revision))
        .collect();
    ensure_eq!(c, got, expected, "events of many writes");
    c.cancel(watch)
        .unwrap_or_else(|e| panic!("[{}] cancel failed: {e}", c.check));
}

/// A canceled watch reports nothing more (a final canceled response without
/// events is allowed); other watches go on; canceling it again is invalid.
pub fn watch_cancel(s: &mut dyn ConformanceStore) {
    let mut c = Ctx::new(s, "watch_cancel");
    let canceled = c.watch("w/", 0);
    let kept = c.watch("w/", 0);
    let r1 = c.put("w/a", "v", 0);
    for watch in [canceled, kept] {
        let events = c.events(watch, 1);
        ensure_eq!(
            c,
            event_at(&events, 0).kv.mod_revision,
            r1,
            "event before the cancel"
        );
    }
    c.cancel(canceled)
        .unwrap_or_else(|e| panic!("[{}] cancel failed: {e}", c.check));
    let r2 = c.put("w/b", "v", 0);
    let events = c.events(kept, 1);
    ensure_eq!(
        c,
        event_at(&events, 0).kv.mod_revision,
        r2,
        "event of the watch not canceled"
    );
    if let Some(response) = c.s.next_watch_response(canceled, QUIET) {
        ensure!(
            c,
            response.canceled && response.events.is_empty(),
            "canceled watch reported {response:?}"
        );
        c.quiet(canceled);
    }
    let again = c.cancel(canceled);
    ensure!(
        c,
        matches!(again, Err(StoreError::InvalidRequest(_))),
        "second cancel answered {again:?}, expected InvalidRequest"
    );
    c.cancel(kept)
        .unwrap_or_else(|e| panic!("[{}] cancel failed: {e}", c.check));
}

/// After a compaction at revision r, a watch from before r is created and
/// then ends at once with a canceled response naming the compaction revision;
/// a compaction not above the last one, or in the future, fails; watches from
/// now still work.
///
/// This compacts the whole store: on a shared store, run it apart from the
/// checks that watch from a past revision.
pub fn compaction_cancels_old_watch(s: &mut dyn ConformanceStore) {
    let mut c = Ctx::new(s, "compaction_cancels_old_watch");
    let r1 = c.put("w/k", "1", 0);
    let r2 = c.put("w/k", "2", 0);
    match c.s.compact(r2) {
        Ok(()) => {}
        // Someone else compacted further (etcd's error does not say how far).
        Err(StoreError::Compacted { .. }) => {}
        Err(e) => panic!("[{}] compact at {r2} failed: {e:?}", c.check),
    }
    let old = c.watch("w/", r1);
    let response = c.s.next_watch_response(old, WATCH_TIMEOUT);
    let response = response.unwrap_or_else(|| {
        panic!(
            "[{}] no response for a watch from a compacted revision",
            c.check
        )
    });
    ensure_eq!(c, response.watch, old, "watch id of the compacted response");
    ensure!(
        c,
        response.canceled && response.events.is_empty(),
        "response for a watch from a compacted revision: {response:?}"
    );
    ensure!(
        c,
        response.compact_revision.is_some_and(|rev| rev >= r2),
        "compact revision of the response {:?}, expected at least {r2}",
        response.compact_revision
    );
    c.quiet(old);

    let again = c.s.compact(r1);
    ensure!(
        c,
        matches!(again, Err(StoreError::Compacted { .. })),
        "compaction below the last one answered {again:?}"
    );
    let future = c.s.compact(r2 + 1_000_000_000);
    ensure!(
        c,
        future.is_err(),
        "compaction at a future revision succeeded"
    );

    let live = c.watch("w/", 0);
    let r3 = c.put("w/k", "3", 0);
    let events = c.events(live, 1);
    let event = event_at(&events, 0);
    ensure_eq!(
        c,
        (event.kv.mod_revision, event.kv.version),
        (r3, 3),
        "event of a watch created after the compaction"
    );
    c.cancel(live)
        .unwrap_or_else(|e| panic!("[{}] cancel failed: {e}", c.check));
}
