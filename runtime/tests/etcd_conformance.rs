//! The store conformance suite (`taskgraph_core::store::conformance`) run
//! against a real etcd through [`EtcdStore`], one `#[test]` per check, plus
//! the store's own behaviour (unreachable and silent endpoints, watch ids and
//! cancellation, non-UTF-8 keys, keep-alive across a server restart, a
//! 3-member cluster losing a member).
//!
//! Needs the `etcd` binary (Debian: etcd-server); without it the tests fail,
//! never skip. This binary starts its own servers on free loopback ports: one
//! shared by most checks (each under its own prefix, in parallel), one for
//! the checks that measure revision deltas (run one at a time), and one per
//! test that compacts, kills or restarts etcd.
#![cfg(feature = "etcd")]

mod common;

use common::EtcdServer;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use taskgraph_core::store::conformance::{self, ConformanceStore};
use taskgraph_core::store::{Revision, StoreError, StoreOp, StoreResponse, WatchId, WatchResponse};
use taskgraph_runtime::store::etcd::{EtcdOptions, EtcdStore};
use taskgraph_runtime::{Store, WatchStream};

/// The etcd server shared by the checks of this test binary (each check
/// works under its own prefix). Killed by its watchdog when the process ends.
fn shared_server() -> &'static EtcdServer {
    static SERVER: OnceLock<EtcdServer> = OnceLock::new();
    SERVER.get_or_init(EtcdServer::start)
}

/// Options of the adapter: a generous op timeout, since the checks run in
/// parallel on small machines.
fn test_options() -> EtcdOptions {
    EtcdOptions {
        op_timeout: Duration::from_secs(5),
        ..EtcdOptions::default()
    }
}

/// A prefix no other run or adapter uses.
fn unique_prefix() -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!(
        "/conformance/etcd-{}-{nanos}-{}/",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("cannot build a tokio runtime: {e}"))
}

/// [`EtcdStore`] under the synchronous [`ConformanceStore`]: every call is
/// run to completion on the adapter's own current-thread runtime.
struct EtcdConformance {
    rt: tokio::runtime::Runtime,
    store: EtcdStore,
    /// Streams of the watches opened through `apply(Watch)`.
    watches: BTreeMap<WatchId, WatchStream>,
    prefix: String,
}

impl EtcdConformance {
    fn new(endpoint: &str) -> Self {
        let rt = runtime();
        let endpoints = [endpoint.to_owned()];
        let store = rt
            .block_on(EtcdStore::connect(&endpoints, test_options()))
            .unwrap_or_else(|e| panic!("cannot connect to the test etcd at {endpoint}: {e}"));
        EtcdConformance {
            rt,
            store,
            watches: BTreeMap::new(),
            prefix: unique_prefix(),
        }
    }
}

impl ConformanceStore for EtcdConformance {
    fn apply(&mut self, op: StoreOp) -> Result<StoreResponse, StoreError> {
        match op {
            StoreOp::Watch {
                prefix,
                start_revision,
            } => {
                let stream = self.rt.block_on(self.store.watch(prefix, start_revision))?;
                let watch = stream.id;
                assert!(
                    self.watches.insert(watch, stream).is_none(),
                    "EtcdStore handed out watch id {watch} twice"
                );
                Ok(StoreResponse::WatchCreated { watch })
            }
            StoreOp::CancelWatch { watch } => match self.watches.remove(&watch) {
                Some(stream) => {
                    drop(stream);
                    Ok(StoreResponse::WatchCanceled { watch })
                }
                None => Err(StoreError::InvalidRequest(format!("no watch {watch}"))),
            },
            op => self.rt.block_on(self.store.execute(op)),
        }
    }

    fn advance(&mut self, d: Duration) {
        // A real sleep, during which the client's background tasks run.
        self.rt.block_on(async { tokio::time::sleep(d).await });
    }

    fn next_watch_response(&mut self, watch: WatchId, timeout: Duration) -> Option<WatchResponse> {
        let stream = self.watches.get_mut(&watch)?;
        let next = self
            .rt
            .block_on(async { tokio::time::timeout(timeout, stream.responses.recv()).await });
        next.ok().flatten()
    }

    fn prefix(&self) -> String {
        self.prefix.clone()
    }

    fn compact(&mut self, rev: Revision) -> Result<(), StoreError> {
        self.rt.block_on(self.store.compact(rev, true))
    }
}

/// Runs one conformance check on a fresh adapter (own connection, own
/// prefix) against `server`, and reports how long it took.
fn run_check(name: &str, check: conformance::Check, server: &EtcdServer) {
    let started = Instant::now();
    let mut store = EtcdConformance::new(&server.endpoint);
    check(&mut store);
    eprintln!("[{name}] passed against etcd in {:?}", started.elapsed());
}

/// One `#[test]` per check on the shared server, and the list of their names.
macro_rules! checks_on_shared_server {
    ($($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                run_check(stringify!($name), conformance::$name, shared_server());
            }
        )*
        const SHARED_CHECKS: &[&str] = &[$(stringify!($name)),*];
    };
}

/// One `#[test]` per check that measures by how much an operation moves the
/// global revision, and the list of their names. They run one at a time on
/// a server of their own: the checks retry when a concurrent writer moved
/// the revision too, but with many test threads writing to one server they
/// could run out of attempts.
macro_rules! checks_run_alone {
    ($($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                let _alone = lock_quiet_server();
                run_check(stringify!($name), conformance::$name, quiet_server());
            }
        )*
        const ALONE_CHECKS: &[&str] = &[$(stringify!($name)),*];
    };
}

/// The server of the checks that run alone.
fn quiet_server() -> &'static EtcdServer {
    static SERVER: OnceLock<EtcdServer> = OnceLock::new();
    SERVER.get_or_init(EtcdServer::start)
}

/// Held while a check runs on [`quiet_server`].
fn lock_quiet_server() -> MutexGuard<'static, ()> {
    static ALONE: Mutex<()> = Mutex::new(());
    // A failed check (a panic) does not make the server unusable.
    ALONE.lock().unwrap_or_else(|e| e.into_inner())
}

checks_run_alone!(
    put_bumps_revision,
    delete_bumps_revision,
    noop_delete_keeps_revision,
    txn_writes_share_one_revision,
    txn_without_writes_keeps_revision,
    lease_grant_keepalive_revoke,
    lease_revoke_deletes_keys,
);

checks_on_shared_server!(
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
    lease_ttl_out_of_range_rejected,
    put_with_unknown_lease_rejected,
    lease_expiry_deletes_keys,
    lease_keepalive_extends_life,
    lease_follows_last_put,
    watch_from_now,
    watch_replays_history,
    watch_sees_lease_expiry,
    watch_ordering_many_writes,
    watch_cancel,
);

/// Compaction is global: this check gets an etcd of its own, so that it
/// cannot break the checks that watch from past revisions.
#[test]
fn compaction_cancels_old_watch() {
    let server = EtcdServer::start();
    run_check(
        "compaction_cancels_old_watch",
        conformance::compaction_cancels_old_watch,
        &server,
    );
}

/// No check of the suite is left out here.
#[test]
fn every_check_has_a_test() {
    let mut covered: Vec<&str> = SHARED_CHECKS.to_vec();
    covered.extend_from_slice(ALONE_CHECKS);
    covered.push("compaction_cancels_old_watch");
    let missing: Vec<&str> = conformance::all_checks()
        .into_iter()
        .map(|(name, _)| name)
        .filter(|name| !covered.contains(name))
        .collect();
    assert!(
        missing.is_empty(),
        "conformance checks without an etcd test: {missing:?}"
    );
}

/// Connecting to a port where nothing listens fails quickly with an error
/// naming the endpoint.
#[test]
fn unreachable_etcd_is_a_clear_error() {
    let port = common::free_ports(1)[0];
    let endpoint = format!("127.0.0.1:{port}");
    let rt = runtime();
    let started = Instant::now();
    let result = rt.block_on(EtcdStore::connect(
        std::slice::from_ref(&endpoint),
        EtcdOptions::default(),
    ));
    let elapsed = started.elapsed();
    match result {
        Err(StoreError::Unavailable(message)) => {
            eprintln!("connect to a closed port: {message} (after {elapsed:?})");
            assert!(
                message.contains(&endpoint),
                "error does not name the endpoint {endpoint}: {message}"
            );
        }
        other => panic!("connect to a closed port answered {other:?}"),
    }
    assert!(
        elapsed < Duration::from_secs(5),
        "connect to a closed port took {elapsed:?}"
    );
}

/// Watches of one store get distinct ids (etcd's own are per gRPC stream);
/// dropping a stream cancels its etcd watch while the others go on.
#[test]
fn watch_ids_unique_and_drop_cancels() {
    let server = shared_server();
    let rt = runtime();
    rt.block_on(async {
        let endpoints = [server.endpoint.clone()];
        let store = EtcdStore::connect(&endpoints, test_options())
            .await
            .unwrap_or_else(|e| panic!("connect: {e}"));
        let prefix = unique_prefix();
        let a = store.watch(prefix.clone(), 0).await.expect("watch a");
        let mut b = store.watch(prefix.clone(), 0).await.expect("watch b");
        assert_ne!(a.id, b.id, "two watches share an id");
        drop(a);
        let put = StoreOp::Put {
            key: format!("{prefix}k"),
            value: bytes::Bytes::from_static(b"v"),
            lease: 0,
        };
        store.execute(put).await.expect("put");
        let response = tokio::time::timeout(Duration::from_secs(10), b.responses.recv())
            .await
            .expect("no event for the watch kept")
            .expect("watch kept ended");
        assert_eq!(response.watch, b.id);
        assert_eq!(response.events.len(), 1);
        assert_eq!(store.describe(), server.endpoint);
    });
}

/// A lease's cached keep-alive stream survives the etcd server's restart:
/// the next keepalive re-opens it.
#[test]
fn keepalive_survives_server_restart() {
    let mut server = EtcdServer::start();
    let rt = runtime();
    let endpoints = [server.endpoint.clone()];
    let store = rt
        .block_on(EtcdStore::connect(&endpoints, test_options()))
        .unwrap_or_else(|e| panic!("connect: {e}"));
    let lease = match rt.block_on(store.execute(StoreOp::LeaseGrant { ttl_secs: 30 })) {
        Ok(StoreResponse::LeaseGranted { lease, .. }) => lease,
        other => panic!("grant: {other:?}"),
    };
    let keep_alive = |rt: &tokio::runtime::Runtime| {
        rt.block_on(store.execute(StoreOp::LeaseKeepAlive { lease }))
    };
    assert!(matches!(
        keep_alive(&rt),
        Ok(StoreResponse::LeaseKeptAlive { ttl_secs: 30, .. })
    ));
    server.kill_member(0);
    let down = keep_alive(&rt);
    assert!(
        matches!(down, Err(StoreError::Unavailable(_))),
        "keepalive with etcd down: {down:?}"
    );
    server.restart_member(0);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match keep_alive(&rt) {
            Ok(StoreResponse::LeaseKeptAlive { ttl_secs: 30, .. }) => break,
            other if Instant::now() > deadline => {
                panic!(
                    "keepalive after the restart: {other:?}\n{}",
                    server.log_tail(0)
                )
            }
            _ => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// The 3-member cluster of the test launcher works, and a store connected to
/// every member keeps working when one member is killed; a watch served by
/// the killed member ends (its channel closes).
#[test]
fn three_member_cluster_survives_a_member_kill() {
    let mut cluster = EtcdServer::start_cluster(3);
    assert_eq!(cluster.len(), 3);
    let rt = runtime();
    let all = rt
        .block_on(EtcdStore::connect(&cluster.endpoints, test_options()))
        .unwrap_or_else(|e| panic!("connect to the cluster: {e}"));
    let first_only = rt
        .block_on(EtcdStore::connect(
            &[cluster.member_endpoint(0).to_owned()],
            test_options(),
        ))
        .unwrap_or_else(|e| panic!("connect to member 0: {e}"));
    let prefix = unique_prefix();
    let put = |store: &EtcdStore, value: &'static str| {
        let op = StoreOp::Put {
            key: format!("{prefix}k"),
            value: bytes::Bytes::from_static(value.as_bytes()),
            lease: 0,
        };
        rt.block_on(store.execute(op))
    };
    assert!(put(&all, "before").is_ok());
    let mut watch = rt
        .block_on(first_only.watch(prefix.clone(), 0))
        .unwrap_or_else(|e| panic!("watch on member 0: {e}"));

    cluster.kill_member(0);
    assert!(!cluster.is_running(0));
    let started = Instant::now();
    let mut failures = 0;
    loop {
        match put(&all, "after") {
            Ok(_) => break,
            Err(StoreError::Unavailable(e)) if started.elapsed() < Duration::from_secs(20) => {
                failures += 1;
                eprintln!("put with member 0 dead: {e}");
            }
            other => panic!("put with member 0 dead: {other:?}"),
        }
    }
    eprintln!(
        "cluster write after a member kill: {:?}, {failures} failed attempts",
        started.elapsed()
    );
    let ended = rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(20), async {
            while watch.responses.recv().await.is_some() {}
        })
        .await
    });
    assert!(ended.is_ok(), "watch on the killed member did not end");

    cluster.restart_member(0);
    assert!(cluster.is_running(0));
    let back = rt
        .block_on(EtcdStore::connect(
            &[cluster.member_endpoint(0).to_owned()],
            test_options(),
        ))
        .unwrap_or_else(|e| panic!("connect to the restarted member: {e}"));
    let get = StoreOp::Get {
        key: format!("{prefix}k"),
        prefix: false,
    };
    match rt.block_on(back.execute(get)) {
        Ok(StoreResponse::Get { kvs, .. }) => {
            assert_eq!(kvs.len(), 1);
            assert_eq!(&kvs[0].value[..], b"after");
        }
        other => panic!("get from the restarted member: {other:?}"),
    }
}

/// Keys that are not UTF-8 (written by another etcd client) are skipped by
/// gets and watches, which go on with the other keys.
#[test]
fn non_utf8_keys_are_skipped() {
    let server = shared_server();
    let rt = runtime();
    let prefix = unique_prefix();
    rt.block_on(async {
        let endpoints = [server.endpoint.clone()];
        let store = EtcdStore::connect(&endpoints, test_options())
            .await
            .unwrap_or_else(|e| panic!("connect: {e}"));
        let mut raw = etcd_client::Client::connect(&endpoints, None)
            .await
            .unwrap_or_else(|e| panic!("raw client: {e}"));
        let mut watch = store.watch(prefix.clone(), 0).await.expect("watch");
        let mut bad = prefix.clone().into_bytes();
        bad.extend_from_slice(b"\xff\xfe");
        raw.put(bad, "v", None)
            .await
            .expect("put of a non-UTF-8 key");
        let good = format!("{prefix}good");
        raw.put(good.as_bytes(), "v", None)
            .await
            .expect("put of a UTF-8 key");
        let get = StoreOp::Get {
            key: prefix.clone(),
            prefix: true,
        };
        match store.execute(get).await {
            Ok(StoreResponse::Get { kvs, .. }) => {
                let keys: Vec<&str> = kvs.iter().map(|kv| kv.key.as_str()).collect();
                assert_eq!(keys, vec![good.as_str()]);
            }
            other => panic!("get: {other:?}"),
        }
        let response = tokio::time::timeout(Duration::from_secs(10), watch.responses.recv())
            .await
            .expect("no watch response")
            .expect("watch ended");
        let keys: Vec<&str> = response.events.iter().map(|e| e.kv.key.as_str()).collect();
        assert_eq!(keys, vec![good.as_str()]);
    });
}

/// A server that accepts connections but never answers (not etcd, or a hung
/// etcd) makes connect fail within its bounds instead of hanging.
#[test]
fn silent_endpoint_times_out() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let endpoint = format!("127.0.0.1:{}", listener.local_addr().expect("addr").port());
    let options = EtcdOptions {
        op_timeout: Duration::from_millis(500),
        connect_timeout: Duration::from_millis(500),
        ..EtcdOptions::default()
    };
    let rt = runtime();
    let started = Instant::now();
    let result = rt.block_on(EtcdStore::connect(std::slice::from_ref(&endpoint), options));
    let elapsed = started.elapsed();
    match result {
        Err(StoreError::Unavailable(message)) => {
            eprintln!("connect to a silent endpoint: {message} (after {elapsed:?})");
            assert!(
                message.contains(&endpoint),
                "error does not name {endpoint}: {message}"
            );
        }
        other => panic!("connect to a silent endpoint answered {other:?}"),
    }
    assert!(
        elapsed < Duration::from_secs(3),
        "connect to a silent endpoint took {elapsed:?}"
    );
    drop(listener);
}

/// An etcd with authentication enabled: the right user and password work,
/// a wrong password or none is a clear error, and the password never shows
/// in the options' `Debug`.
#[test]
fn etcd_with_authentication_needs_the_right_credentials() {
    use taskgraph_runtime::EtcdCredentials;
    let server = EtcdServer::start();
    let endpoint = server.endpoints[0].clone();
    let etcdctl = |args: &[&str]| {
        let out = std::process::Command::new("etcdctl")
            .args(["--endpoints", &endpoint])
            .args(args)
            .output()
            .expect("etcdctl runs (Debian package etcd-client; `cargo xtask test` installs it)");
        assert!(
            out.status.success(),
            "etcdctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    etcdctl(&["role", "add", "root"]);
    etcdctl(&["user", "add", "root:open-sesame"]);
    etcdctl(&["user", "grant-role", "root", "root"]);
    etcdctl(&["auth", "enable"]);
    let with = |password: Option<&str>| EtcdOptions {
        credentials: password.map(|p| EtcdCredentials {
            user: "root".into(),
            password: p.into(),
        }),
        ..test_options()
    };
    let good = with(Some("open-sesame"));
    assert!(
        !format!("{good:?}").contains("open-sesame"),
        "the password shows in {good:?}"
    );
    let rt = runtime();
    let store = rt
        .block_on(EtcdStore::connect(std::slice::from_ref(&endpoint), good))
        .expect("the right credentials connect");
    let put = StoreOp::Put {
        key: "auth-check".into(),
        value: bytes::Bytes::from_static(b"v"),
        lease: 0,
    };
    assert!(
        rt.block_on(store.execute(put)).is_ok(),
        "an authenticated write works"
    );
    for (what, options) in [
        ("a wrong password", with(Some("guess"))),
        ("no credentials", with(None)),
    ] {
        match rt.block_on(EtcdStore::connect(std::slice::from_ref(&endpoint), options)) {
            Err(StoreError::Unavailable(m)) => {
                eprintln!("{what}: {m}");
                assert!(!m.contains("open-sesame"));
            }
            other => panic!("{what} answered {other:?}"),
        }
    }
}
