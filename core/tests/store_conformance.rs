//! The store conformance suite against [`MemStore`], one test per check, plus
//! MemStore-only tests of what the suite cannot express (virtual time,
//! deadlines, ids, silent cancellation, determinism).

use std::time::Duration;

use bytes::Bytes;
use proptest::prelude::*;
use taskgraph_core::store::conformance::{self, all_checks, MemConformance};
use taskgraph_core::store::{
    Compare, KeyValue, LeaseId, MemStore, Revision, StoreError, StoreOp, StoreResponse, TxnOp,
    WatchEventKind, WatchId, WatchResponse,
};
use taskgraph_core::Instant;

macro_rules! conformance_tests {
    ($($check:ident),* $(,)?) => {
        $(
            #[test]
            fn $check() {
                conformance::$check(&mut MemConformance::new());
            }
        )*

        /// The names of the checks that have a test above.
        const TESTED: &[&str] = &[$(stringify!($check)),*];
    };
}

conformance_tests!(
    put_bumps_revision,
    delete_bumps_revision,
    noop_delete_keeps_revision,
    txn_writes_share_one_revision,
    txn_without_writes_keeps_revision,
    key_metadata_lifecycle,
    get_prefix_sorted,
    empty_key_rejected,
    txn_compare_value,
    txn_compare_create_revision,
    txn_compare_mod_revision,
    txn_compare_version,
    txn_compare_absent_key,
    txn_branches,
    txn_reads_own_writes,
    txn_duplicate_keys_rejected,
    txn_op_limit,
    request_size_limit,
    lease_grant_keepalive_revoke,
    lease_ttl_out_of_range_rejected,
    put_with_unknown_lease_rejected,
    lease_revoke_deletes_keys,
    lease_expiry_deletes_keys,
    lease_keepalive_extends_life,
    lease_follows_last_put,
    watch_from_now,
    watch_replays_history,
    watch_sees_lease_expiry,
    watch_ordering_many_writes,
    watch_cancel,
    compaction_cancels_old_watch,
);

#[test]
fn every_check_has_a_test() {
    let names: Vec<&str> = all_checks().iter().map(|(name, _)| *name).collect();
    assert_eq!(names, TESTED, "all_checks() and the tests above differ");
}

#[test]
fn all_checks_pass_in_sequence_on_one_store() {
    // Checks must not depend on a fresh store: run them all on one.
    let mut store = MemConformance::new();
    for (_, check) in all_checks() {
        check(&mut store);
    }
}

// --- MemStore-only tests ------------------------------------------------------

fn at(ms: u64) -> Instant {
    Instant::from_millis(ms)
}

fn put(store: &mut MemStore, now: Instant, key: &str, lease: LeaseId) -> Revision {
    match store.apply(
        now,
        StoreOp::Put {
            key: key.to_owned(),
            value: Bytes::from_static(b"v"),
            lease,
        },
    ) {
        Ok(StoreResponse::Put { revision }) => revision,
        other => panic!("put {key}: {other:?}"),
    }
}

fn grant(store: &mut MemStore, now: Instant, ttl_secs: i64) -> LeaseId {
    match store.apply(now, StoreOp::LeaseGrant { ttl_secs }) {
        Ok(StoreResponse::LeaseGranted { lease, .. }) => lease,
        other => panic!("grant: {other:?}"),
    }
}

fn watch(store: &mut MemStore, now: Instant, prefix: &str, start_revision: Revision) -> WatchId {
    match store.apply(
        now,
        StoreOp::Watch {
            prefix: prefix.to_owned(),
            start_revision,
        },
    ) {
        Ok(StoreResponse::WatchCreated { watch }) => watch,
        other => panic!("watch: {other:?}"),
    }
}

fn drain(store: &mut MemStore) -> Vec<WatchResponse> {
    std::iter::from_fn(|| store.poll_watch_response()).collect()
}

#[test]
fn empty_store() {
    let mut store = MemStore::new();
    assert_eq!(store.revision(), 1);
    assert_eq!(store.next_deadline(), None);
    assert_eq!(store.get("a"), None);
    assert!(!store.lease_exists(1));
    assert_eq!(store.poll_watch_response(), None);
    assert_eq!(
        store.apply(
            at(0),
            StoreOp::Get {
                key: String::new(),
                prefix: true
            }
        ),
        Ok(StoreResponse::Get {
            kvs: vec![],
            revision: 1
        })
    );
}

#[test]
fn next_deadline_is_the_earliest_lease_deadline() {
    let mut store = MemStore::new();
    let a = grant(&mut store, at(0), 10);
    let b = grant(&mut store, at(1000), 3);
    assert_eq!(store.next_deadline(), Some(at(4000)));
    store
        .apply(at(2000), StoreOp::LeaseKeepAlive { lease: b })
        .expect("keepalive");
    assert_eq!(store.next_deadline(), Some(at(5000)));
    store
        .apply(at(2000), StoreOp::LeaseRevoke { lease: b })
        .expect("revoke");
    assert_eq!(store.next_deadline(), Some(at(10_000)));
    store.expire_leases(at(10_000));
    assert!(!store.lease_exists(a));
    assert_eq!(store.next_deadline(), None);
}

#[test]
fn lease_expires_exactly_at_its_deadline() {
    let mut store = MemStore::new();
    let lease = grant(&mut store, at(0), 2);
    put(&mut store, at(0), "a", lease);
    put(&mut store, at(0), "b", lease);
    let w = watch(&mut store, at(0), "", 0);
    let before = store.revision();

    store.expire_leases(at(1999));
    assert!(store.lease_exists(lease));
    assert!(store.get("a").is_some());
    assert_eq!(store.revision(), before);

    store.expire_leases(at(2000));
    assert!(!store.lease_exists(lease));
    assert_eq!(store.get("a"), None);
    assert_eq!(store.get("b"), None);
    assert_eq!(
        store.revision(),
        before + 1,
        "one revision for the lease's keys"
    );
    let responses = drain(&mut store);
    assert_eq!(responses.len(), 1);
    let keys: Vec<(&str, WatchEventKind, Revision)> = responses[0]
        .events
        .iter()
        .map(|e| (e.kv.key.as_str(), e.kind, e.kv.mod_revision))
        .collect();
    assert_eq!(
        keys,
        vec![
            ("a", WatchEventKind::Delete, before + 1),
            ("b", WatchEventKind::Delete, before + 1)
        ]
    );
    assert_eq!(responses[0].watch, w);
}

#[test]
fn apply_expires_due_leases_first() {
    let mut store = MemStore::new();
    let lease = grant(&mut store, at(0), 1);
    put(&mut store, at(0), "a", lease);
    assert_eq!(
        store.apply(at(1000), StoreOp::LeaseKeepAlive { lease }),
        Err(StoreError::LeaseNotFound(lease))
    );
    assert_eq!(store.get("a"), None);

    let lease = grant(&mut store, at(0), 1);
    assert_eq!(
        store.apply(
            at(1000),
            StoreOp::Put {
                key: "b".into(),
                value: Bytes::new(),
                lease
            }
        ),
        Err(StoreError::LeaseNotFound(lease))
    );
}

#[test]
fn keepalive_resets_the_deadline_from_now() {
    let mut store = MemStore::new();
    let lease = grant(&mut store, at(0), 2);
    assert_eq!(
        store.apply(at(1500), StoreOp::LeaseKeepAlive { lease }),
        Ok(StoreResponse::LeaseKeptAlive { lease, ttl_secs: 2 })
    );
    store.expire_leases(at(3499));
    assert!(store.lease_exists(lease));
    store.expire_leases(at(3500));
    assert!(!store.lease_exists(lease));
}

#[test]
fn leases_expiring_together_take_one_revision_each_in_id_order() {
    let mut store = MemStore::new();
    let a = grant(&mut store, at(0), 5);
    let b = grant(&mut store, at(0), 5);
    let empty = grant(&mut store, at(0), 5);
    put(&mut store, at(0), "from-b", b);
    put(&mut store, at(0), "from-a", a);
    let w = watch(&mut store, at(0), "", 0);
    let before = store.revision();
    store.expire_leases(at(60_000));
    assert!(!store.lease_exists(empty));
    assert_eq!(
        store.revision(),
        before + 2,
        "a lease without keys takes none"
    );
    let events: Vec<(String, Revision)> = drain(&mut store)
        .into_iter()
        .inspect(|r| assert_eq!(r.watch, w))
        .flat_map(|r| r.events)
        .map(|e| (e.kv.key, e.kv.mod_revision))
        .collect();
    assert_eq!(
        events,
        vec![("from-a".into(), before + 1), ("from-b".into(), before + 2)]
    );
}

#[test]
fn lease_ids_are_positive_unique_and_never_reused() {
    let mut store = MemStore::new();
    let mut seen = std::collections::BTreeSet::new();
    for i in 0..50 {
        let lease = grant(&mut store, at(i), 1 + (i as i64 % 3));
        assert!(lease > 0);
        assert!(seen.insert(lease), "lease id {lease} reused");
        if i % 2 == 0 {
            store
                .apply(at(i), StoreOp::LeaseRevoke { lease })
                .expect("revoke");
        }
        store.expire_leases(at(i * 1000));
    }
}

#[test]
fn watch_ids_are_unique() {
    let mut store = MemStore::new();
    let a = watch(&mut store, at(0), "a", 0);
    store
        .apply(at(0), StoreOp::CancelWatch { watch: a })
        .expect("cancel");
    let b = watch(&mut store, at(0), "a", 0);
    store.cancel_watch(b);
    let c = watch(&mut store, at(0), "a", 0);
    assert!(a != b && b != c && a != c);
}

#[test]
fn cancel_watch_is_silent_and_drops_queued_responses() {
    let mut store = MemStore::new();
    let gone = watch(&mut store, at(0), "k", 0);
    let kept = watch(&mut store, at(0), "k", 0);
    put(&mut store, at(0), "k1", 0);
    store.cancel_watch(gone);
    store.cancel_watch(gone);
    store.cancel_watch(12345);
    put(&mut store, at(0), "k2", 0);
    let watches: Vec<WatchId> = drain(&mut store).iter().map(|r| r.watch).collect();
    assert_eq!(watches, vec![kept, kept]);
    assert!(matches!(
        store.apply(at(0), StoreOp::CancelWatch { watch: gone }),
        Err(StoreError::InvalidRequest(_))
    ));
}

#[test]
fn watch_from_a_future_revision_skips_earlier_writes() {
    let mut store = MemStore::new();
    let start = store.revision() + 3;
    let w = watch(&mut store, at(0), "", start);
    for key in ["a", "b", "c", "d"] {
        put(&mut store, at(0), key, 0);
    }
    let events: Vec<(String, Revision)> = drain(&mut store)
        .into_iter()
        .inspect(|r| assert_eq!(r.watch, w))
        .flat_map(|r| r.events)
        .map(|e| (e.kv.key, e.kv.mod_revision))
        .collect();
    assert_eq!(events, vec![("c".into(), start), ("d".into(), start + 1)]);
}

#[test]
fn history_replay_comes_in_one_response_per_thousand_revisions() {
    let mut store = MemStore::new();
    let first = put(&mut store, at(0), "k", 0);
    for _ in 0..1500 {
        put(&mut store, at(0), "k", 0);
    }
    let w = watch(&mut store, at(0), "k", first);
    let sizes: Vec<usize> = drain(&mut store)
        .iter()
        .inspect(|r| assert_eq!(r.watch, w))
        .map(|r| r.events.len())
        .collect();
    assert_eq!(sizes, vec![1000, 501]);
}

#[test]
fn negative_watch_start_is_invalid() {
    let mut store = MemStore::new();
    assert!(matches!(
        store.apply(
            at(0),
            StoreOp::Watch {
                prefix: String::new(),
                start_revision: -1
            }
        ),
        Err(StoreError::InvalidRequest(_))
    ));
}

#[test]
fn compaction_bounds_and_watch_at_the_compaction_revision() {
    let mut store = MemStore::new();
    assert!(matches!(
        store.compact(2),
        Err(StoreError::InvalidRequest(_))
    ));
    let r1 = put(&mut store, at(0), "a", 0);
    let txn = StoreOp::Txn {
        compares: vec![],
        success: vec![
            TxnOp::Put {
                key: "b".into(),
                value: Bytes::new(),
                lease: 0,
            },
            TxnOp::Delete {
                key: "a".into(),
                prefix: false,
            },
        ],
        failure: vec![],
    };
    store.apply(at(0), txn).expect("txn");
    let r2 = store.revision();
    store.compact(r2).expect("compact");
    assert_eq!(
        store.compact(r2),
        Err(StoreError::Compacted {
            compact_revision: r2
        })
    );
    assert_eq!(
        store.compact(r1),
        Err(StoreError::Compacted {
            compact_revision: r2
        })
    );

    let old = watch(&mut store, at(0), "", r1);
    assert_eq!(
        drain(&mut store),
        vec![WatchResponse {
            watch: old,
            events: vec![],
            compact_revision: Some(r2),
            canceled: true,
        }]
    );
    // The compacted watch is over.
    assert!(matches!(
        store.apply(at(0), StoreOp::CancelWatch { watch: old }),
        Err(StoreError::InvalidRequest(_))
    ));

    // From the compaction revision itself: etcd keeps each key's latest
    // revision up to it, but not deletions, so only the put of b remains.
    let at_rev = watch(&mut store, at(0), "", r2);
    let responses = drain(&mut store);
    assert_eq!(responses.len(), 1);
    let events: Vec<(&str, WatchEventKind)> = responses[0]
        .events
        .iter()
        .map(|e| (e.kv.key.as_str(), e.kind))
        .collect();
    assert_eq!(events, vec![("b", WatchEventKind::Put)]);
    assert_eq!(responses[0].watch, at_rev);
}

#[test]
fn txn_puts_with_unknown_lease_only_matter_in_the_branch_taken() {
    let mut store = MemStore::new();
    let txn = |compares: Vec<Compare>| StoreOp::Txn {
        compares,
        success: vec![TxnOp::Put {
            key: "s".into(),
            value: Bytes::new(),
            lease: 42,
        }],
        failure: vec![TxnOp::Put {
            key: "f".into(),
            value: Bytes::new(),
            lease: 0,
        }],
    };
    assert_eq!(
        store.apply(at(0), txn(vec![])),
        Err(StoreError::LeaseNotFound(42))
    );
    let failing = vec![Compare::value_eq("nothing", "x")];
    assert!(matches!(
        store.apply(at(0), txn(failing)),
        Ok(StoreResponse::Txn {
            succeeded: false,
            ..
        })
    ));
    assert!(store.get("f").is_some());
}

#[test]
fn kv_lifecycle_fields() {
    let mut store = MemStore::new();
    let lease = grant(&mut store, at(0), 30);
    let r1 = put(&mut store, at(0), "k", lease);
    let r2 = put(&mut store, at(0), "k", 0);
    assert_eq!(
        store.get("k"),
        Some(&KeyValue {
            key: "k".into(),
            value: Bytes::from_static(b"v"),
            create_revision: r1,
            mod_revision: r2,
            version: 2,
            lease: 0,
        })
    );
    assert_eq!(r2, r1 + 1);
    assert_eq!(
        store.apply(at(0), StoreOp::LeaseRevoke { lease }),
        Ok(StoreResponse::LeaseRevoked { revision: r2 })
    );
    assert!(store.get("k").is_some());
}

// --- robustness ---------------------------------------------------------------

fn arb_key() -> impl Strategy<Value = String> {
    prop::sample::select(vec!["", "a", "a/", "a/b", "a/c", "b", "ab"]).prop_map(str::to_owned)
}

fn arb_txn_op() -> impl Strategy<Value = TxnOp> {
    prop_oneof![
        (arb_key(), any::<bool>()).prop_map(|(key, prefix)| TxnOp::Get { key, prefix }),
        (arb_key(), 0i64..4).prop_map(|(key, lease)| TxnOp::Put {
            key,
            value: Bytes::from_static(b"x"),
            lease
        }),
        (arb_key(), any::<bool>()).prop_map(|(key, prefix)| TxnOp::Delete { key, prefix }),
    ]
}

fn arb_op() -> impl Strategy<Value = StoreOp> {
    prop_oneof![
        (arb_key(), any::<bool>()).prop_map(|(key, prefix)| StoreOp::Get { key, prefix }),
        (arb_key(), 0i64..4).prop_map(|(key, lease)| StoreOp::Put {
            key,
            value: Bytes::from_static(b"v"),
            lease
        }),
        (arb_key(), any::<bool>()).prop_map(|(key, prefix)| StoreOp::Delete { key, prefix }),
        (
            prop::collection::vec(
                (arb_key(), -2i64..20).prop_map(|(key, rev)| Compare::mod_revision_eq(key, rev)),
                0..3
            ),
            prop::collection::vec(arb_txn_op(), 0..4),
            prop::collection::vec(arb_txn_op(), 0..4),
        )
            .prop_map(|(compares, success, failure)| StoreOp::Txn {
                compares,
                success,
                failure
            }),
        (-2i64..4).prop_map(|ttl_secs| StoreOp::LeaseGrant { ttl_secs }),
        (-1i64..4).prop_map(|lease| StoreOp::LeaseKeepAlive { lease }),
        (-1i64..4).prop_map(|lease| StoreOp::LeaseRevoke { lease }),
        (arb_key(), -1i64..20).prop_map(|(prefix, start_revision)| StoreOp::Watch {
            prefix,
            start_revision
        }),
        (-1i64..4).prop_map(|watch| StoreOp::CancelWatch { watch }),
    ]
}

#[derive(Clone, Debug)]
enum Step {
    Apply(u64, StoreOp),
    Compact(Revision),
    Expire(u64),
}

fn arb_step() -> impl Strategy<Value = Step> {
    prop_oneof![
        8 => (0u64..500, arb_op()).prop_map(|(dt, op)| Step::Apply(dt, op)),
        1 => (-1i64..20).prop_map(Step::Compact),
        1 => (0u64..3000).prop_map(Step::Expire),
    ]
}

/// Run `steps`, checking invariants; returns a transcript of every output.
fn run_steps(steps: &[Step]) -> String {
    let mut store = MemStore::new();
    let mut now = Instant::ZERO;
    let mut transcript = String::new();
    let mut last_rev = store.revision();
    for step in steps {
        let outcome = match step {
            Step::Apply(dt, op) => {
                now = now + Duration::from_millis(*dt);
                format!("{:?}", store.apply(now, op.clone()))
            }
            Step::Compact(rev) => format!("{:?}", store.compact(*rev)),
            Step::Expire(dt) => {
                now = now + Duration::from_millis(*dt);
                store.expire_leases(now);
                String::new()
            }
        };
        let rev = store.revision();
        assert!(rev >= last_rev, "revision went back");
        if let Some(deadline) = store.next_deadline() {
            assert!(deadline > now, "a due lease survived");
        }
        last_rev = rev;
        while let Some(response) = store.poll_watch_response() {
            for pair in response.events.windows(2) {
                assert!(pair[0].kv.mod_revision <= pair[1].kv.mod_revision);
            }
            transcript.push_str(&format!("{response:?}\n"));
        }
        transcript.push_str(&outcome);
        transcript.push('\n');
    }
    transcript
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn never_panics_and_is_deterministic(steps in prop::collection::vec(arb_step(), 0..60)) {
        let first = run_steps(&steps);
        let second = run_steps(&steps);
        prop_assert_eq!(first, second);
    }
}
