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
use taskgraph_runtime::store::etcd::{EtcdOptions, EtcdStore, EtcdTls};
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

/// A scratch directory with the PEM files of one TLS test, removed when
/// dropped.
struct Pki {
    dir: std::path::PathBuf,
}

/// A certificate authority made at test time: its certificate (PEM) and
/// what it needs to sign others.
struct TestCa {
    pem: String,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl TestCa {
    fn new(name: &str) -> TestCa {
        let key = rcgen::KeyPair::generate().expect("CA key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let pem = params.self_signed(&key).expect("CA certificate").pem();
        TestCa {
            pem,
            issuer: rcgen::Issuer::new(params, key),
        }
    }

    /// A certificate for `names` (IP addresses or DNS names) signed by this
    /// CA, for `usage`: its PEM and its key's PEM.
    fn sign(
        &self,
        common_name: &str,
        names: &[&str],
        usage: rcgen::ExtendedKeyUsagePurpose,
    ) -> (String, String) {
        let key = rcgen::KeyPair::generate().expect("leaf key");
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let mut params = rcgen::CertificateParams::new(names).expect("leaf params");
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, common_name);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::DigitalSignature,
            rcgen::KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![usage];
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("leaf certificate");
        (cert.pem(), key.serialize_pem())
    }
}

impl Pki {
    /// Makes a CA, a server certificate for 127.0.0.1 and localhost and a
    /// client certificate, all signed by it, and a second CA that signed
    /// nothing; writes them to a fresh directory: `ca.pem`, `server.pem`,
    /// `server-key.pem`, `client.pem`, `client-key.pem`, `other-ca.pem`.
    fn generate() -> Pki {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "taskgraph-etcd-tls-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        let pki = Pki { dir };
        let ca = TestCa::new("taskgraph test CA");
        let (server, server_key) = ca.sign(
            "etcd",
            &["127.0.0.1", "localhost"],
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        );
        let (client, client_key) =
            ca.sign("taskgraph", &[], rcgen::ExtendedKeyUsagePurpose::ClientAuth);
        let other = TestCa::new("a CA that signed nothing here");
        for (name, pem) in [
            ("ca.pem", &ca.pem),
            ("server.pem", &server),
            ("server-key.pem", &server_key),
            ("client.pem", &client),
            ("client-key.pem", &client_key),
            ("other-ca.pem", &other.pem),
        ] {
            let path = pki.path(name);
            std::fs::write(&path, pem)
                .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
        }
        pki
    }

    fn path(&self, name: &str) -> std::path::PathBuf {
        self.dir.join(name)
    }

    /// A single-member etcd serving clients over TLS with this PKI's server
    /// certificate and requiring client certificates signed by its CA.
    fn start_etcd(&self) -> EtcdServer {
        EtcdServer::start_tls(common::ServerTls {
            cert: self.path("server.pem"),
            key: self.path("server-key.pem"),
            trusted_ca: self.path("ca.pem"),
        })
    }

    /// Options that trust `ca` (a file name in this PKI) and present the
    /// client certificate if `client_certificate`, with short bounds.
    fn options(&self, ca: &str, client_certificate: bool) -> EtcdOptions {
        let mut tls = EtcdTls::from_pem_file(self.path(ca)).expect("the CA file reads");
        if client_certificate {
            tls = tls
                .with_client_identity_files(self.path("client.pem"), self.path("client-key.pem"))
                .expect("the client certificate files read");
        }
        EtcdOptions {
            tls: Some(tls),
            ..tls_test_options()
        }
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Bounds of the TLS tests' failing connects.
fn tls_test_options() -> EtcdOptions {
    EtcdOptions {
        op_timeout: Duration::from_secs(2),
        connect_timeout: Duration::from_secs(2),
        ..EtcdOptions::default()
    }
}

/// Connecting with `options` to `endpoint` must fail with
/// [`StoreError::Unavailable`], before the connect bound (plus a margin) has
/// passed: the message.
fn failed_connect(endpoint: &str, options: EtcdOptions) -> String {
    let bound = options.connect_timeout + options.op_timeout;
    let rt = runtime();
    let started = Instant::now();
    let result = rt.block_on(EtcdStore::connect(&[endpoint.to_owned()], options));
    let elapsed = started.elapsed();
    let message = match result {
        Err(StoreError::Unavailable(message)) => message,
        other => panic!("connect to {endpoint} answered {other:?}"),
    };
    eprintln!("connect to {endpoint} failed after {elapsed:?}: {message}");
    assert!(
        elapsed < bound + Duration::from_secs(1),
        "connect took {elapsed:?}, its bound is {bound:?}"
    );
    assert!(
        message.contains(endpoint),
        "the error does not name {endpoint}: {message}"
    );
    message
}

/// (a) etcd over TLS with `--client-cert-auth`: the CA that signed its
/// certificate and a client certificate it trusts make a working store, and
/// the client key never shows in the options' `Debug`.
#[test]
fn etcd_over_tls_with_the_right_ca_and_client_certificate_works() {
    let pki = Pki::generate();
    let server = pki.start_etcd();
    assert!(
        server.endpoint.starts_with("https://"),
        "{}",
        server.endpoint
    );
    let options = pki.options("ca.pem", true);
    let key = std::fs::read_to_string(pki.path("client-key.pem")).expect("client key");
    let key_body = key.lines().nth(1).expect("a PEM body line");
    assert!(
        !format!("{options:?}").contains(key_body),
        "the client key shows in {options:?}"
    );
    let rt = runtime();
    let store = rt
        .block_on(EtcdStore::connect(
            std::slice::from_ref(&server.endpoint),
            options,
        ))
        .unwrap_or_else(|e| panic!("connect over TLS: {e}\n{}", server.log_tail(0)));
    let put = StoreOp::Put {
        key: "tls-check".into(),
        value: bytes::Bytes::from_static(b"over tls"),
        lease: 0,
    };
    rt.block_on(store.execute(put)).expect("a put over TLS");
    let get = StoreOp::Get {
        key: "tls-check".into(),
        prefix: false,
    };
    match rt.block_on(store.execute(get)) {
        Ok(StoreResponse::Get { kvs, .. }) => {
            assert_eq!(kvs.len(), 1, "{kvs:?}");
            assert_eq!(kvs[0].value, bytes::Bytes::from_static(b"over tls"));
        }
        other => panic!("a get over TLS answered {other:?}"),
    }
}

/// (b) The right CA but no client certificate, against an etcd that requires
/// one: connect fails within its bound, saying TLS failed and that it is a
/// certificate problem (etcd's alert).
#[test]
fn etcd_over_tls_without_a_client_certificate_fails() {
    let pki = Pki::generate();
    let server = pki.start_etcd();
    let message = failed_connect(&server.endpoint, pki.options("ca.pem", false));
    let diagnosis = format!("TLS with {} failed: ", server.endpoint);
    let Some((_, why)) = message.split_once(&diagnosis) else {
        panic!("the error does not say TLS failed: {message}");
    };
    assert!(
        why.to_lowercase().contains("certificate"),
        "the error does not say it is a certificate problem: {message}"
    );
}

/// (c) A CA that did not sign etcd's certificate: connect fails within its
/// bound, saying TLS failed because etcd's certificate has an unknown issuer.
#[test]
fn etcd_over_tls_with_the_wrong_ca_fails() {
    let pki = Pki::generate();
    let server = pki.start_etcd();
    let message = failed_connect(&server.endpoint, pki.options("other-ca.pem", true));
    assert!(
        message.contains(&format!(
            "TLS with {} failed: invalid peer certificate: UnknownIssuer",
            server.endpoint
        )),
        "the error does not say etcd's certificate has an unknown issuer: {message}"
    );
}

/// (d) Plaintext options against etcd's TLS port fail within the bound with
/// an error that says the endpoint answers TLS and what to set, whether the
/// endpoint says `http://` or nothing; TLS options against a plaintext etcd
/// fail saying the server closed the connection during the TLS handshake;
/// and a scheme that
/// contradicts the options is refused at once.
#[test]
fn etcd_over_tls_refuses_plaintext() {
    let pki = Pki::generate();
    let server = pki.start_etcd();
    let address = server
        .endpoint
        .strip_prefix("https://")
        .expect("an https endpoint")
        .to_owned();
    for endpoint in [format!("http://{address}"), address.clone()] {
        let message = failed_connect(&endpoint, tls_test_options());
        assert!(
            message.contains(&format!(
                "{endpoint} answers TLS: set EtcdOptions::tls (the CA that signed etcd's \
                 certificate) and use https://"
            )),
            "the error does not say that {endpoint} answers TLS: {message}"
        );
    }
    let plaintext_etcd = shared_server().endpoint.replace("http://", "https://");
    let message = failed_connect(&plaintext_etcd, pki.options("ca.pem", true));
    assert!(
        message.contains(&format!(
            "TLS with {plaintext_etcd} failed: the server closed the connection during the \
             TLS handshake"
        )) && message.ends_with("does it serve TLS?"),
        "the error does not say the TLS handshake failed: {message}"
    );
    let rt = runtime();
    let started = Instant::now();
    let https_without_tls = rt.block_on(EtcdStore::connect(
        std::slice::from_ref(&server.endpoint),
        tls_test_options(),
    ));
    match https_without_tls {
        Err(StoreError::InvalidRequest(m)) => assert!(
            m.contains(&format!(
                "etcd endpoint {} is https:// but EtcdOptions::tls is not set",
                server.endpoint
            )),
            "{m}"
        ),
        other => panic!("https:// without TLS options answered {other:?}"),
    }
    let http = format!("http://{address}");
    let http_with_tls = rt.block_on(EtcdStore::connect(
        std::slice::from_ref(&http),
        pki.options("ca.pem", true),
    ));
    match http_with_tls {
        Err(StoreError::InvalidRequest(m)) => assert!(
            m.contains(&format!(
                "etcd endpoint {http} is plaintext http:// but EtcdOptions::tls is set"
            )),
            "{m}"
        ),
        other => panic!("http:// with TLS options answered {other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "refusing a contradicting scheme took {:?}",
        started.elapsed()
    );
}
