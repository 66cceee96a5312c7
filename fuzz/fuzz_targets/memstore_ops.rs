//! MemStore fed arbitrary sequences of operations over a few keys and
//! leases, against a plain model of what etcd keeps: never panics, every
//! read matches the model, revisions never go back.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use std::collections::BTreeMap;
use taskgraph_core::store::{Compare, MemStore, StoreError, StoreOp, StoreResponse, TxnOp};
use taskgraph_core::Instant;

const KEYS: [&str; 4] = ["a", "ab", "b", "c/d"];

/// What the store should hold: key -> (value, lease); lease -> (ttl, deadline ms).
#[derive(Default)]
struct Model {
    kvs: BTreeMap<String, (Bytes, i64)>,
    leases: BTreeMap<i64, (i64, u64)>,
}

impl Model {
    fn expire(&mut self, now_ms: u64) {
        let due: Vec<i64> = self
            .leases
            .iter()
            .filter(|(_, (_, deadline))| *deadline <= now_ms)
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            self.revoke(id);
        }
    }

    fn revoke(&mut self, id: i64) -> bool {
        let known = self.leases.remove(&id).is_some();
        if known {
            self.kvs.retain(|_, (_, l)| *l != id);
        }
        known
    }
}

fuzz_target!(|data: &[u8]| {
    let mut store = MemStore::new();
    let mut model = Model::default();
    let mut now_ms: u64 = 0;
    let mut granted: Vec<i64> = Vec::new();
    let mut last_revision = store.revision();
    for chunk in data.chunks(3) {
        let [op, x, y] = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let key = KEYS[usize::from(x) % KEYS.len()].to_string();
        let lease = match y % 4 {
            0 => 0,
            i => granted.get(usize::from(i) - 1).copied().unwrap_or(999),
        };
        let now = Instant::from_millis(now_ms);
        // The store expires due leases before any operation.
        model.expire(now_ms);
        match op % 8 {
            0 | 6 => {
                let value = Bytes::from(vec![y; usize::from(x % 3)]);
                let put = if op % 8 == 0 {
                    StoreOp::Put { key: key.clone(), value: value.clone(), lease }
                } else {
                    StoreOp::Txn {
                        compares: vec![Compare::absent(key.clone())],
                        success: vec![TxnOp::Put { key: key.clone(), value: value.clone(), lease }],
                        failure: vec![],
                    }
                };
                let absent = !model.kvs.contains_key(&key);
                let lease_ok = lease == 0 || model.leases.contains_key(&lease);
                match store.apply(now, put) {
                    Ok(StoreResponse::Txn { succeeded, .. }) => {
                        assert_eq!(succeeded, absent, "txn on {key}");
                        if succeeded {
                            assert!(lease_ok, "a txn put with an unknown lease succeeded");
                            model.kvs.insert(key, (value, lease));
                        }
                    }
                    Ok(_) => {
                        assert!(lease_ok, "a put with an unknown lease succeeded");
                        model.kvs.insert(key, (value, lease));
                    }
                    // Only a put that runs can fail for its lease.
                    Err(StoreError::LeaseNotFound(_)) => {
                        assert!(!lease_ok && (op % 8 == 0 || absent), "LeaseNotFound for a put that did not run or had a live lease");
                    }
                    Err(e) => panic!("put failed: {e:?}"),
                }
            }
            1 => {
                let r = store.apply(now, StoreOp::Delete { key: key.clone(), prefix: false });
                assert!(r.is_ok(), "{r:?}");
                model.kvs.remove(&key);
            }
            2 => {
                let ttl = i64::from(x % 3) + 1;
                match store.apply(now, StoreOp::LeaseGrant { ttl_secs: ttl }) {
                    Ok(StoreResponse::LeaseGranted { lease, ttl_secs }) => {
                        assert_eq!(ttl_secs, ttl);
                        assert!(!model.leases.contains_key(&lease), "lease id {lease} reused");
                        model.leases.insert(lease, (ttl, now_ms + ttl as u64 * 1000));
                        granted.push(lease);
                    }
                    other => panic!("grant answered {other:?}"),
                }
            }
            3 => {
                let r = store.apply(now, StoreOp::LeaseRevoke { lease });
                let known = model.revoke(lease);
                assert_eq!(r.is_ok(), known, "revoke {lease}: {r:?}");
            }
            4 => {
                let r = store.apply(now, StoreOp::LeaseKeepAlive { lease });
                match model.leases.get_mut(&lease) {
                    Some((ttl, deadline)) => {
                        assert!(r.is_ok(), "keep-alive of a live lease: {r:?}");
                        *deadline = now_ms + *ttl as u64 * 1000;
                    }
                    None => assert!(r.is_err(), "keep-alive of lease {lease} that is gone: {r:?}"),
                }
            }
            5 => {
                now_ms += u64::from(x) * 20;
                store.expire_leases(Instant::from_millis(now_ms));
                model.expire(now_ms);
            }
            _ => {
                let r = store.apply(now, StoreOp::Get { key: key.clone(), prefix: true });
                let Ok(StoreResponse::Get { kvs, .. }) = r else {
                    panic!("get answered {r:?}");
                };
                let want: Vec<(&String, &Bytes)> = model
                    .kvs
                    .range(key.clone()..)
                    .take_while(|(k, _)| k.starts_with(&key))
                    .map(|(k, (v, _))| (k, v))
                    .collect();
                let got: Vec<(&String, &Bytes)> = kvs.iter().map(|kv| (&kv.key, &kv.value)).collect();
                assert_eq!(got, want, "prefix get {key}");
            }
        }
        for k in KEYS {
            let got = store.get(k).map(|kv| (kv.value.clone(), kv.lease));
            assert_eq!(got.as_ref(), model.kvs.get(k), "key {k} after op {op}");
        }
        assert!(store.revision() >= last_revision, "the revision went back");
        last_revision = store.revision();
    }
});
