//! The etcd backend: [`EtcdStore`] runs the core's store operations on a
//! real etcd v3 cluster through the `etcd-client` crate.
//!
//! Every call is bounded by [`EtcdOptions::op_timeout`]; a call that does not
//! finish in time fails with [`StoreError::Unavailable`] (it may or may not
//! have been applied), and the caller retries. Watches run on their own gRPC
//! stream, forwarded by a background task into the [`WatchStream`]'s channel.

use super::{Store, StoreFuture, WatchStream};
use bytes::Bytes;
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use taskgraph_core::store::{
    Compare, CompareOp, CompareTarget, KeyValue, LeaseId, Revision, StoreError, StoreOp,
    StoreResponse, TxnOp, TxnOpResponse, WatchEvent, WatchEventKind, WatchId, WatchResponse,
};
use tokio::sync::{mpsc, oneshot};

/// Largest gRPC message the client accepts (a prefix get of many keys can
/// exceed tonic's default of 4 MiB).
const MAX_MESSAGE_BYTES: usize = 256 * 1024 * 1024;

/// HTTP/2 ping interval on idle connections. etcd's default
/// `--grpc-keepalive-min-time` is 5 s; pinging more often gets the
/// connection closed by the server.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);

/// Key read (count only) to check that the cluster answers at connect time.
const PROBE_KEY: &str = "/";

// gRPC status codes (tonic's `Code` as i32).
const CODE_INVALID_ARGUMENT: i32 = 3;
const CODE_NOT_FOUND: i32 = 5;
const CODE_ALREADY_EXISTS: i32 = 6;
const CODE_PERMISSION_DENIED: i32 = 7;
const CODE_RESOURCE_EXHAUSTED: i32 = 8;
const CODE_FAILED_PRECONDITION: i32 = 9;
const CODE_OUT_OF_RANGE: i32 = 11;
const CODE_UNIMPLEMENTED: i32 = 12;
const CODE_UNAUTHENTICATED: i32 = 16;

/// How an [`EtcdStore`] talks to etcd.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EtcdOptions {
    /// Bound on every operation (and on creating a watch).
    pub op_timeout: Duration,
    /// Bound on opening a TCP connection to an endpoint.
    pub connect_timeout: Duration,
    /// User and password, for an etcd with authentication enabled.
    pub credentials: Option<EtcdCredentials>,
}

impl Default for EtcdOptions {
    fn default() -> Self {
        EtcdOptions {
            op_timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(2),
            credentials: None,
        }
    }
}

/// An etcd user and its password. Its `Debug` never shows the password.
#[derive(Clone, PartialEq, Eq)]
pub struct EtcdCredentials {
    /// The etcd user.
    pub user: String,
    /// Its password.
    pub password: String,
}

impl std::fmt::Debug for EtcdCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdCredentials")
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// One lease's open keep-alive stream.
struct KeepAlive {
    keeper: etcd_client::LeaseKeeper,
    stream: etcd_client::LeaseKeepAliveStream,
}

impl KeepAlive {
    /// One renewal: the TTL etcd answered (0 or less: the lease is gone).
    async fn renew(&mut self) -> Result<i64, etcd_client::Error> {
        self.keeper.keep_alive().await?;
        match self.stream.message().await? {
            Some(resp) => Ok(resp.ttl()),
            None => Err(etcd_client::Error::LeaseKeepAliveError(
                "keep-alive stream closed by etcd".into(),
            )),
        }
    }
}

/// A lease's keep-alive slot: `None` while nobody holds an idle stream (never
/// opened, broken, or abandoned in the middle of a renewal by a timeout).
type KeepAliveSlot = Arc<tokio::sync::Mutex<Option<KeepAlive>>>;

/// A [`Store`] on a real etcd v3 cluster.
///
/// Create it with [`EtcdStore::connect`] inside a tokio runtime; the client's
/// background tasks and the watch forwarders run on that runtime.
pub struct EtcdStore {
    kv: etcd_client::KvClient,
    lease: etcd_client::LeaseClient,
    watch: etcd_client::WatchClient,
    endpoints: Vec<String>,
    options: EtcdOptions,
    /// One cached keep-alive stream per lease.
    keepalives: Mutex<BTreeMap<LeaseId, KeepAliveSlot>>,
    /// Watch ids handed out (etcd's own ids are per gRPC stream, so all of
    /// ours, one stream each, would be 0).
    next_watch: AtomicI64,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore")
            .field("endpoints", &self.endpoints)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl EtcdStore {
    /// Connects to the etcd cluster at `endpoints` (`host:port` or
    /// `http://host:port`) and checks that it answers a read. Fails with
    /// [`StoreError::Unavailable`] naming the endpoints when no endpoint can
    /// be reached or the cluster does not answer within
    /// `connect_timeout + op_timeout`. Never retries: that is the caller's
    /// job.
    pub async fn connect(
        endpoints: &[String],
        options: EtcdOptions,
    ) -> Result<EtcdStore, StoreError> {
        if endpoints.is_empty() {
            return Err(StoreError::InvalidRequest("no etcd endpoints given".into()));
        }
        let described = endpoints.join(",");

        // Fail fast, with the reason, when no endpoint accepts a connection:
        // the client itself would wait for one to become ready.
        let mut refusals = Vec::new();
        for endpoint in endpoints {
            match tcp_check(endpoint, options.connect_timeout).await {
                Ok(()) => {
                    refusals.clear();
                    break;
                }
                Err(why) => refusals.push(format!("{endpoint}: {why}")),
            }
        }
        if !refusals.is_empty() {
            return Err(StoreError::Unavailable(format!(
                "cannot reach etcd at {described}: {}",
                refusals.join("; ")
            )));
        }

        let connect_options = etcd_client::ConnectOptions::new()
            .with_connect_timeout(options.connect_timeout)
            .with_keep_alive(
                KEEPALIVE_INTERVAL,
                options.op_timeout.max(Duration::from_secs(1)),
            )
            .with_keep_alive_while_idle(true)
            .with_require_leader(true);
        let connect_options = match &options.credentials {
            Some(c) => connect_options.with_user(c.user.clone(), c.password.clone()),
            None => connect_options,
        };
        let setup = async {
            let client = etcd_client::Client::connect(endpoints, Some(connect_options)).await?;
            let mut kv = client
                .kv_client()
                .max_decoding_message_size(MAX_MESSAGE_BYTES);
            let probe = etcd_client::GetOptions::new().with_count_only();
            kv.get(PROBE_KEY, Some(probe)).await?;
            Ok::<_, etcd_client::Error>(client)
        };
        let bound = options.connect_timeout + options.op_timeout;
        let client = match tokio::time::timeout(bound, setup).await {
            Ok(Ok(client)) => client,
            Ok(Err(e)) => {
                return Err(StoreError::Unavailable(format!(
                    "cannot use etcd at {described}: {e}"
                )))
            }
            Err(_) => {
                return Err(StoreError::Unavailable(format!(
                    "etcd at {described} did not answer within {bound:?}"
                )))
            }
        };
        Ok(EtcdStore {
            kv: client
                .kv_client()
                .max_decoding_message_size(MAX_MESSAGE_BYTES),
            lease: client.lease_client(),
            watch: client
                .watch_client()
                .max_decoding_message_size(MAX_MESSAGE_BYTES),
            endpoints: endpoints.to_vec(),
            options,
            keepalives: Mutex::new(BTreeMap::new()),
            next_watch: AtomicI64::new(1),
        })
    }

    /// The endpoints, as given to [`EtcdStore::connect`].
    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    /// The options in force.
    pub fn options(&self) -> &EtcdOptions {
        &self.options
    }

    /// Compacts etcd's history up to `revision` (for the whole cluster, not
    /// only taskgraph's keys). With `physical`, waits until the compaction
    /// is applied to the backend. A revision not above the last compaction
    /// fails with [`StoreError::Compacted`], a future one with
    /// [`StoreError::InvalidRequest`].
    pub async fn compact(&self, revision: Revision, physical: bool) -> Result<(), StoreError> {
        let mut options = etcd_client::CompactionOptions::new();
        if physical {
            options = options.with_physical();
        }
        let mut kv = self.kv.clone();
        let call = async {
            kv.compact(revision, Some(options))
                .await
                .map(drop)
                .map_err(|e| self.map_error(e, None))
        };
        self.bounded("compact", call).await
    }

    /// Runs `call` within the op timeout.
    async fn bounded<T>(
        &self,
        what: &str,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(self.options.op_timeout, call).await {
            Ok(result) => result,
            Err(_) => Err(StoreError::Unavailable(format!(
                "etcd {what} at {} timed out after {:?}",
                self.describe(),
                self.options.op_timeout
            ))),
        }
    }

    /// Maps a client error; `lease` is the lease a "lease not found" refers to.
    fn map_error(&self, error: etcd_client::Error, lease: Option<LeaseId>) -> StoreError {
        use etcd_client::Error as E;
        match error {
            E::GRpcStatus(status) => {
                let code = i32::from(status.code());
                let message = status.message();
                if code == CODE_NOT_FOUND && message.contains("lease not found") {
                    return StoreError::LeaseNotFound(lease.unwrap_or(0));
                }
                if code == CODE_RESOURCE_EXHAUSTED && message.contains("larger than max") {
                    // gRPC's own message size bound (etcd's request limit
                    // plus 512 KiB): too large whenever it is tried.
                    return StoreError::InvalidRequest(format!(
                        "etcd rejected the request: {message}"
                    ));
                }
                if code == CODE_OUT_OF_RANGE && message.contains("compacted") {
                    // etcd's error does not say up to where.
                    return StoreError::Compacted {
                        compact_revision: 0,
                    };
                }
                match code {
                    CODE_INVALID_ARGUMENT
                    | CODE_NOT_FOUND
                    | CODE_ALREADY_EXISTS
                    | CODE_PERMISSION_DENIED
                    | CODE_FAILED_PRECONDITION
                    | CODE_OUT_OF_RANGE
                    | CODE_UNIMPLEMENTED
                    | CODE_UNAUTHENTICATED => {
                        StoreError::InvalidRequest(format!("etcd rejected the request: {message}"))
                    }
                    _ => StoreError::Unavailable(format!(
                        "etcd at {}: {}: {message}",
                        self.describe(),
                        status.code().description()
                    )),
                }
            }
            E::LeaseKeepAliveError(message) if message.contains("lease not found") => {
                StoreError::LeaseNotFound(lease.unwrap_or(0))
            }
            E::InvalidArgs(message) => StoreError::InvalidRequest(message),
            other => StoreError::Unavailable(format!("etcd at {}: {other}", self.describe())),
        }
    }

    async fn run(&self, op: StoreOp) -> Result<StoreResponse, StoreError> {
        match op {
            StoreOp::Get { key, prefix } => {
                let options = prefix.then(|| etcd_client::GetOptions::new().with_prefix());
                let resp = self.kv.clone().get(key, options).await;
                let resp = resp.map_err(|e| self.map_error(e, None))?;
                Ok(StoreResponse::Get {
                    kvs: convert_kvs(resp.kvs()),
                    revision: resp.header().map_or(0, |h| h.revision()),
                })
            }
            StoreOp::Put { key, value, lease } => {
                let options =
                    (lease != 0).then(|| etcd_client::PutOptions::new().with_lease(lease));
                let resp = self.kv.clone().put(key, value.to_vec(), options).await;
                let resp = resp.map_err(|e| self.map_error(e, Some(lease)))?;
                Ok(StoreResponse::Put {
                    revision: resp.header().map_or(0, |h| h.revision()),
                })
            }
            StoreOp::Delete { key, prefix } => {
                let options = prefix.then(|| etcd_client::DeleteOptions::new().with_prefix());
                let resp = self.kv.clone().delete(key, options).await;
                let resp = resp.map_err(|e| self.map_error(e, None))?;
                Ok(StoreResponse::Delete {
                    deleted: resp.deleted(),
                    revision: resp.header().map_or(0, |h| h.revision()),
                })
            }
            StoreOp::Txn {
                compares,
                success,
                failure,
            } => self.txn(compares, success, failure).await,
            StoreOp::LeaseGrant { ttl_secs } => {
                if ttl_secs < 1 {
                    // etcd would silently raise it to its minimum.
                    return Err(StoreError::InvalidRequest(format!(
                        "lease TTL {ttl_secs} is below one second"
                    )));
                }
                let resp = self.lease.clone().grant(ttl_secs, None).await;
                let resp = resp.map_err(|e| self.map_error(e, None))?;
                if !resp.error().is_empty() {
                    return Err(StoreError::InvalidRequest(format!(
                        "etcd refused the lease: {}",
                        resp.error()
                    )));
                }
                Ok(StoreResponse::LeaseGranted {
                    lease: resp.id(),
                    ttl_secs: resp.ttl(),
                })
            }
            StoreOp::LeaseKeepAlive { lease } => self.keep_alive(lease).await,
            StoreOp::LeaseRevoke { lease } => {
                let slot = lock_map(&self.keepalives).remove(&lease);
                drop(slot);
                let resp = self.lease.clone().revoke(lease).await;
                let resp = resp.map_err(|e| self.map_error(e, Some(lease)))?;
                Ok(StoreResponse::LeaseRevoked {
                    revision: resp.header().map_or(0, |h| h.revision()),
                })
            }
            StoreOp::Watch { .. } | StoreOp::CancelWatch { .. } => Err(StoreError::InvalidRequest(
                "use Store::watch for watches".into(),
            )),
        }
    }

    async fn txn(
        &self,
        compares: Vec<Compare>,
        success: Vec<TxnOp>,
        failure: Vec<TxnOp>,
    ) -> Result<StoreResponse, StoreError> {
        // The leases a "lease not found" can refer to.
        let mut leases: Vec<LeaseId> = Vec::new();
        for op in success.iter().chain(&failure) {
            if let TxnOp::Put { lease, .. } = op {
                if *lease != 0 && !leases.contains(lease) {
                    leases.push(*lease);
                }
            }
        }
        let txn = etcd_client::Txn::new()
            .when(
                compares
                    .into_iter()
                    .map(convert_compare)
                    .collect::<Vec<_>>(),
            )
            .and_then(success.into_iter().map(convert_txn_op).collect::<Vec<_>>())
            .or_else(failure.into_iter().map(convert_txn_op).collect::<Vec<_>>());
        let resp = match self.kv.clone().txn(txn).await {
            Ok(resp) => resp,
            Err(e) => {
                let lease = self.missing_lease(&leases).await;
                return Err(self.map_error(e, lease));
            }
        };
        let mut responses = Vec::new();
        for op in resp.op_responses() {
            responses.push(match op {
                etcd_client::TxnOpResponse::Put(_) => TxnOpResponse::Put,
                etcd_client::TxnOpResponse::Get(get) => TxnOpResponse::Get(convert_kvs(get.kvs())),
                etcd_client::TxnOpResponse::Delete(delete) => {
                    TxnOpResponse::Delete(delete.deleted())
                }
                etcd_client::TxnOpResponse::Txn(_) => {
                    return Err(StoreError::InvalidRequest(
                        "etcd answered a nested transaction that was not asked for".into(),
                    ))
                }
            });
        }
        Ok(StoreResponse::Txn {
            succeeded: resp.succeeded(),
            responses,
            revision: resp.header().map_or(0, |h| h.revision()),
        })
    }

    /// Which of `leases` a failed transaction's "lease not found" is about:
    /// the only one, or the first that etcd no longer knows.
    async fn missing_lease(&self, leases: &[LeaseId]) -> Option<LeaseId> {
        if leases.len() <= 1 {
            return leases.first().copied();
        }
        for &lease in leases {
            if let Ok(resp) = self.lease.clone().time_to_live(lease, None).await {
                if resp.ttl() < 0 {
                    return Some(lease);
                }
            }
        }
        leases.first().copied()
    }

    /// Renews `lease` on its cached keep-alive stream, opening (or
    /// re-opening, once, if it broke) the stream as needed.
    async fn keep_alive(&self, lease: LeaseId) -> Result<StoreResponse, StoreError> {
        let slot = lock_map(&self.keepalives).entry(lease).or_default().clone();
        let mut held = slot.lock().await;
        // Taken out while in use: if this call is abandoned mid-renewal (a
        // timeout), the slot stays empty and the next call opens a fresh
        // stream instead of reading this renewal's late answer.
        let mut renewed = None;
        if let Some(mut ka) = held.take() {
            match ka.renew().await {
                Ok(ttl) => renewed = Some((ka, ttl)),
                Err(e) => {
                    tracing::debug!(lease, error = %e, "etcd keep-alive stream broke; re-opening")
                }
            }
        }
        let result = match renewed {
            Some(done) => Ok(done),
            None => self.open_keep_alive(lease).await,
        };
        match result {
            Ok((ka, ttl)) if ttl > 0 => {
                *held = Some(ka);
                Ok(StoreResponse::LeaseKeptAlive {
                    lease,
                    ttl_secs: ttl,
                })
            }
            Ok(_) | Err(StoreError::LeaseNotFound(_)) => {
                // The lease is gone: forget its slot.
                drop(held);
                lock_map(&self.keepalives).remove(&lease);
                Err(StoreError::LeaseNotFound(lease))
            }
            Err(e) => Err(e),
        }
    }

    /// Opens a keep-alive stream for `lease` and renews once on it: the
    /// stream and the TTL etcd answered.
    async fn open_keep_alive(&self, lease: LeaseId) -> Result<(KeepAlive, i64), StoreError> {
        let opened = self.lease.clone().keep_alive(lease).await;
        let (keeper, stream) = opened.map_err(|e| self.map_error(e, Some(lease)))?;
        let mut ka = KeepAlive { keeper, stream };
        // Opening renewed the lease once but does not tell the TTL.
        let ttl = ka
            .renew()
            .await
            .map_err(|e| self.map_error(e, Some(lease)))?;
        Ok((ka, ttl))
    }

    async fn open_watch(
        &self,
        prefix: String,
        start_revision: Revision,
    ) -> Result<WatchStream, StoreError> {
        if start_revision < 0 {
            return Err(StoreError::InvalidRequest(format!(
                "watch start revision must not be negative, got {start_revision}"
            )));
        }
        let mut options = etcd_client::WatchOptions::new().with_prefix();
        if start_revision > 0 {
            options = options.with_start_revision(start_revision);
        }
        let mut client = self.watch.clone();
        let (mut stream, first) = self
            .bounded("watch", async {
                let mut stream = client
                    .watch(prefix.as_bytes(), Some(options))
                    .await
                    .map_err(|e| self.map_error(e, None))?;
                let first = stream
                    .message()
                    .await
                    .map_err(|e| self.map_error(e, None))?;
                Ok((stream, first))
            })
            .await?;
        let Some(first) = first else {
            return Err(StoreError::Unavailable(format!(
                "etcd at {} closed the watch stream before creating the watch",
                self.describe()
            )));
        };
        if !first.created() {
            return Err(StoreError::Unavailable(format!(
                "etcd at {} answered a watch creation with {first:?}",
                self.describe()
            )));
        }
        let id = self.next_watch.fetch_add(1, Ordering::Relaxed);
        let etcd_watch = first.watch_id();
        let (tx, rx) = mpsc::unbounded_channel();
        let (cancel_tx, mut cancel_rx) = oneshot::channel::<()>();
        if let Some(response) = convert_watch_response(id, &first) {
            // Created and ended at once (e.g. its start revision is compacted).
            let ended = response.canceled;
            let _ = tx.send(response);
            if ended {
                return Ok(WatchStream::new(id, rx, Some(cancel_tx)));
            }
        }
        let cancel_timeout = self.options.op_timeout;
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    biased;
                    _ = &mut cancel_rx => break,
                    message = stream.message() => match message {
                        Ok(Some(resp)) => {
                            let Some(response) = convert_watch_response(id, &resp) else { continue };
                            let ended = response.canceled;
                            if tx.send(response).is_err() {
                                break;
                            }
                            if ended {
                                return;
                            }
                        }
                        Ok(None) => {
                            tracing::debug!(watch = id, "etcd ended the watch stream");
                            return;
                        }
                        Err(e) => {
                            tracing::debug!(watch = id, error = %e, "etcd watch stream failed");
                            return;
                        }
                    },
                }
            }
            // The stream was dropped: cancel the etcd watch, then close the
            // gRPC stream (dropping it).
            let _ = tokio::time::timeout(cancel_timeout, stream.cancel(etcd_watch)).await;
        });
        Ok(WatchStream::new(id, rx, Some(cancel_tx)))
    }
}

impl Store for EtcdStore {
    fn execute(&self, op: StoreOp) -> StoreFuture<'_, Result<StoreResponse, StoreError>> {
        Box::pin(async move {
            let kind = op.kind();
            self.bounded(kind, self.run(op)).await
        })
    }

    fn watch(
        &self,
        prefix: String,
        start_revision: Revision,
    ) -> StoreFuture<'_, Result<WatchStream, StoreError>> {
        Box::pin(self.open_watch(prefix, start_revision))
    }

    fn describe(&self) -> String {
        self.endpoints.join(",")
    }
}

fn lock_map<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The map stays consistent whatever panicked while holding it.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Opens (and closes) a TCP connection to `endpoint`.
async fn tcp_check(endpoint: &str, timeout: Duration) -> Result<(), String> {
    let address = endpoint
        .strip_prefix("http://")
        .or_else(|| endpoint.strip_prefix("https://"))
        .unwrap_or(endpoint);
    let address = address.split('/').next().unwrap_or(address);
    match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(address)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no connection within {timeout:?}")),
    }
}

fn convert_compare(compare: Compare) -> etcd_client::Compare {
    let op = match compare.op {
        CompareOp::Equal => etcd_client::CompareOp::Equal,
        CompareOp::NotEqual => etcd_client::CompareOp::NotEqual,
        CompareOp::Greater => etcd_client::CompareOp::Greater,
        CompareOp::Less => etcd_client::CompareOp::Less,
    };
    let key = compare.key.into_bytes();
    match compare.target {
        CompareTarget::Value(value) => etcd_client::Compare::value(key, op, value.to_vec()),
        CompareTarget::CreateRevision(rev) => etcd_client::Compare::create_revision(key, op, rev),
        CompareTarget::ModRevision(rev) => etcd_client::Compare::mod_revision(key, op, rev),
        CompareTarget::Version(version) => etcd_client::Compare::version(key, op, version),
    }
}

fn convert_txn_op(op: TxnOp) -> etcd_client::TxnOp {
    match op {
        TxnOp::Get { key, prefix } => etcd_client::TxnOp::get(
            key,
            prefix.then(|| etcd_client::GetOptions::new().with_prefix()),
        ),
        TxnOp::Put { key, value, lease } => etcd_client::TxnOp::put(
            key,
            value.to_vec(),
            (lease != 0).then(|| etcd_client::PutOptions::new().with_lease(lease)),
        ),
        TxnOp::Delete { key, prefix } => etcd_client::TxnOp::delete(
            key,
            prefix.then(|| etcd_client::DeleteOptions::new().with_prefix()),
        ),
    }
}

/// The key as a string, or `None` (with a warning) if it is not UTF-8.
fn utf8_key(kv: &etcd_client::KeyValue) -> Option<String> {
    match std::str::from_utf8(kv.key()) {
        Ok(key) => Some(key.to_owned()),
        Err(_) => {
            tracing::warn!(key = ?Bytes::copy_from_slice(kv.key()), "skipping an etcd key that is not UTF-8");
            None
        }
    }
}

fn convert_kv(kv: &etcd_client::KeyValue) -> Option<KeyValue> {
    Some(KeyValue {
        key: utf8_key(kv)?,
        value: Bytes::copy_from_slice(kv.value()),
        create_revision: kv.create_revision(),
        mod_revision: kv.mod_revision(),
        version: kv.version(),
        lease: kv.lease(),
    })
}

fn convert_kvs(kvs: &[etcd_client::KeyValue]) -> Vec<KeyValue> {
    kvs.iter().filter_map(convert_kv).collect()
}

/// The response to forward, or `None` for one that says nothing (the
/// creation, a progress notification, only events on non-UTF-8 keys).
fn convert_watch_response(
    watch: WatchId,
    resp: &etcd_client::WatchResponse,
) -> Option<WatchResponse> {
    let mut events = Vec::with_capacity(resp.events().len());
    for event in resp.events() {
        let Some(kv) = event.kv() else { continue };
        let converted = match event.event_type() {
            etcd_client::EventType::Put => match convert_kv(kv) {
                Some(kv) => WatchEvent {
                    kind: WatchEventKind::Put,
                    kv,
                },
                None => continue,
            },
            etcd_client::EventType::Delete => match utf8_key(kv) {
                Some(key) => WatchEvent {
                    kind: WatchEventKind::Delete,
                    kv: KeyValue {
                        key,
                        value: Bytes::new(),
                        create_revision: 0,
                        mod_revision: kv.mod_revision(),
                        version: 0,
                        lease: 0,
                    },
                },
                None => continue,
            },
        };
        events.push(converted);
    }
    let compact_revision = (resp.compact_revision() != 0).then(|| resp.compact_revision());
    let canceled = resp.canceled() || compact_revision.is_some();
    if events.is_empty() && !canceled {
        return None;
    }
    Some(WatchResponse {
        watch,
        events,
        compact_revision,
        canceled,
    })
}
