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
use std::path::{Path, PathBuf};
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
const CODE_CANCELLED: i32 = 1;
const CODE_UNKNOWN: i32 = 2;
const CODE_INVALID_ARGUMENT: i32 = 3;
const CODE_NOT_FOUND: i32 = 5;
const CODE_ALREADY_EXISTS: i32 = 6;
const CODE_PERMISSION_DENIED: i32 = 7;
const CODE_RESOURCE_EXHAUSTED: i32 = 8;
const CODE_FAILED_PRECONDITION: i32 = 9;
const CODE_OUT_OF_RANGE: i32 = 11;
const CODE_UNIMPLEMENTED: i32 = 12;
const CODE_UNAVAILABLE: i32 = 14;
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
    /// TLS to etcd: the CA that signed etcd's certificate and, for an etcd
    /// started with `--client-cert-auth`, a client certificate. With it,
    /// endpoints must be `https://host:port` (or `host:port`); without it,
    /// `http://host:port` (or `host:port`).
    pub tls: Option<EtcdTls>,
}

impl Default for EtcdOptions {
    fn default() -> Self {
        EtcdOptions {
            op_timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(2),
            credentials: None,
            tls: None,
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

/// TLS settings for the connection to etcd (see [`EtcdOptions::tls`]).
///
/// Its `Debug` shows the sizes of the certificates and never the client's
/// private key.
///
/// ```no_run
/// use taskgraph_runtime::{EtcdOptions, EtcdTls};
///
/// # fn main() -> Result<(), taskgraph_runtime::EtcdTlsFileError> {
/// let tls = EtcdTls::from_pem_file("/etc/etcd/ca.pem")?
///     .with_client_identity_files("/etc/etcd/client.pem", "/etc/etcd/client-key.pem")?;
/// let options = EtcdOptions {
///     tls: Some(tls),
///     ..EtcdOptions::default()
/// };
/// // EtcdStore::connect(&["https://10.0.0.1:2379".to_string()], options)
/// # let _ = options;
/// # Ok(())
/// # }
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct EtcdTls {
    /// PEM of the certificate authority (one or more `CERTIFICATE` blocks)
    /// that etcd's server certificate must chain to. Only these are trusted:
    /// the system's roots are not used.
    pub ca_certificate_pem: Vec<u8>,
    /// The certificate and key presented to etcd, for an etcd started with
    /// `--client-cert-auth`.
    pub client_identity: Option<EtcdClientIdentity>,
    /// The name etcd's certificate must be valid for, instead of the host of
    /// the endpoint (e.g. when the endpoints are IP addresses and the
    /// certificate names only a DNS name).
    pub domain_name: Option<String>,
}

/// A client certificate and its private key, both PEM (see
/// [`EtcdTls::client_identity`]). Its `Debug` never shows the key.
#[derive(Clone, PartialEq, Eq)]
pub struct EtcdClientIdentity {
    /// PEM of the client certificate (and any intermediate certificates).
    pub certificate_pem: Vec<u8>,
    /// PEM of the certificate's private key (PKCS#8, PKCS#1 or SEC1).
    pub key_pem: Vec<u8>,
}

/// A PEM file for [`EtcdTls`] that could not be read.
#[derive(Debug, thiserror::Error)]
#[error("cannot read the etcd TLS {what} {}: {source}", path.display())]
pub struct EtcdTlsFileError {
    what: &'static str,
    path: PathBuf,
    source: std::io::Error,
}

impl EtcdTlsFileError {
    /// The file that could not be read.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Why it could not be read.
    pub fn io_error(&self) -> &std::io::Error {
        &self.source
    }
}

/// Reads a PEM file; `what` names it in the error.
fn read_pem(what: &'static str, path: &Path) -> Result<Vec<u8>, EtcdTlsFileError> {
    std::fs::read(path).map_err(|source| EtcdTlsFileError {
        what,
        path: path.to_path_buf(),
        source,
    })
}

impl EtcdTls {
    /// Trusts the CA certificate(s) in `ca_certificate_pem`, with no client
    /// certificate and no domain name override.
    pub fn from_pem(ca_certificate_pem: impl Into<Vec<u8>>) -> EtcdTls {
        EtcdTls {
            ca_certificate_pem: ca_certificate_pem.into(),
            client_identity: None,
            domain_name: None,
        }
    }

    /// Trusts the CA certificate(s) in the PEM file at `ca_path`. Fails,
    /// naming the path, if the file cannot be read (its content is checked
    /// by [`EtcdStore::connect`]).
    pub fn from_pem_file(ca_path: impl AsRef<Path>) -> Result<EtcdTls, EtcdTlsFileError> {
        let pem = read_pem("CA certificate", ca_path.as_ref())?;
        Ok(EtcdTls::from_pem(pem))
    }

    /// Presents the client certificate `certificate_pem` with its private key
    /// `key_pem` to etcd.
    pub fn with_client_identity(
        mut self,
        certificate_pem: impl Into<Vec<u8>>,
        key_pem: impl Into<Vec<u8>>,
    ) -> EtcdTls {
        self.client_identity = Some(EtcdClientIdentity {
            certificate_pem: certificate_pem.into(),
            key_pem: key_pem.into(),
        });
        self
    }

    /// Presents the client certificate in the PEM file `certificate_path`
    /// with the private key in the PEM file `key_path`. Fails, naming the
    /// path, if either file cannot be read.
    pub fn with_client_identity_files(
        self,
        certificate_path: impl AsRef<Path>,
        key_path: impl AsRef<Path>,
    ) -> Result<EtcdTls, EtcdTlsFileError> {
        let certificate = read_pem("client certificate", certificate_path.as_ref())?;
        let key = read_pem("client key", key_path.as_ref())?;
        Ok(self.with_client_identity(certificate, key))
    }

    /// Checks etcd's certificate against `domain_name` instead of the
    /// endpoint's host.
    pub fn with_domain_name(mut self, domain_name: impl Into<String>) -> EtcdTls {
        self.domain_name = Some(domain_name.into());
        self
    }

    /// Parses the PEM fields into the configuration of the diagnostic
    /// handshake of a failed connect: a clear error now rather than a
    /// failed handshake later.
    fn parse(&self) -> Result<Arc<tokio_rustls::rustls::ClientConfig>, StoreError> {
        use tokio_rustls::rustls::pki_types::pem::PemObject;
        use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let invalid = |what: &str, why: String| {
            StoreError::InvalidRequest(format!("EtcdOptions::tls: the {what} {why}"))
        };
        let certificates = |what: &str, pem: &[u8]| {
            let chain = CertificateDer::pem_slice_iter(pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| invalid(what, format!("is not valid PEM: {e}")))?;
            if chain.is_empty() {
                return Err(invalid(what, "holds no PEM CERTIFICATE block".into()));
            }
            Ok(chain)
        };
        let mut roots = tokio_rustls::rustls::RootCertStore::empty();
        for certificate in certificates("CA certificate", &self.ca_certificate_pem)? {
            roots
                .add(certificate)
                .map_err(|e| invalid("CA certificate", format!("is not usable: {e}")))?;
        }
        let builder = client_config_builder()
            .map_err(|e| invalid("settings", format!("cannot be used: {e}")))?
            .with_root_certificates(roots);
        let mut config = match &self.client_identity {
            Some(identity) => {
                let chain = certificates("client certificate", &identity.certificate_pem)?;
                let key = PrivateKeyDer::from_pem_slice(&identity.key_pem).map_err(|e| {
                    invalid(
                        "client key",
                        format!("holds no usable PEM PRIVATE KEY: {e}"),
                    )
                })?;
                builder.with_client_auth_cert(chain, key).map_err(|e| {
                    invalid(
                        "client key",
                        format!("cannot be used with the client certificate: {e}"),
                    )
                })?
            }
            None => builder.with_no_client_auth(),
        };
        // As the gRPC client does.
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Arc::new(config))
    }

    /// The client's TLS options.
    fn to_client(&self) -> etcd_client::TlsOptions {
        let mut tls = etcd_client::TlsOptions::new()
            .ca_certificate(etcd_client::Certificate::from_pem(&self.ca_certificate_pem));
        if let Some(identity) = &self.client_identity {
            tls = tls.identity(etcd_client::Identity::from_pem(
                &identity.certificate_pem,
                &identity.key_pem,
            ));
        }
        if let Some(domain_name) = &self.domain_name {
            tls = tls.domain_name(domain_name.clone());
        }
        tls
    }
}

/// A rustls configuration builder with the provider tonic uses too: the
/// process default, else ring (the diagnostic handshake needs no
/// post-quantum key exchange, hence the allow).
fn client_config_builder() -> Result<
    tokio_rustls::rustls::ConfigBuilder<
        tokio_rustls::rustls::ClientConfig,
        tokio_rustls::rustls::WantsVerifier,
    >,
    tokio_rustls::rustls::Error,
> {
    use tokio_rustls::rustls;
    let provider = match rustls::crypto::CryptoProvider::get_default() {
        Some(provider) => provider.clone(),
        #[allow(deprecated)]
        None => Arc::new(rustls::crypto::ring::default_provider()),
    };
    rustls::ClientConfig::builder_with_provider(provider).with_safe_default_protocol_versions()
}

impl std::fmt::Debug for EtcdTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdTls")
            .field(
                "ca_certificate_pem",
                &format_args!("<{} bytes>", self.ca_certificate_pem.len()),
            )
            .field("client_identity", &self.client_identity)
            .field("domain_name", &self.domain_name)
            .finish()
    }
}

impl std::fmt::Debug for EtcdClientIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdClientIdentity")
            .field(
                "certificate_pem",
                &format_args!("<{} bytes>", self.certificate_pem.len()),
            )
            .field("key_pem", &"<redacted>")
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
    /// Connects to the etcd cluster at `endpoints` and checks that it
    /// answers a read. Endpoints are `http://host:port`, or
    /// `https://host:port` with [`EtcdOptions::tls`] set, or `host:port`
    /// (TLS if and only if [`EtcdOptions::tls`] is set).
    ///
    /// Fails with [`StoreError::InvalidRequest`] when an endpoint's scheme
    /// does not match [`EtcdOptions::tls`] or the TLS settings hold no PEM
    /// certificate (or key). Fails with [`StoreError::Unavailable`] naming
    /// the endpoints when no endpoint can be reached, a TLS handshake fails
    /// (the reason says why, e.g. an unknown issuer) or the cluster does not
    /// answer within `connect_timeout + op_timeout`. Never retries: that is
    /// the caller's job.
    pub async fn connect(
        endpoints: &[String],
        options: EtcdOptions,
    ) -> Result<EtcdStore, StoreError> {
        if endpoints.is_empty() {
            return Err(StoreError::InvalidRequest("no etcd endpoints given".into()));
        }
        check_schemes(endpoints, options.tls.is_some())?;
        let parsed_tls = options.tls.as_ref().map(EtcdTls::parse).transpose()?;
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
        let connect_options = match &options.tls {
            Some(tls) => connect_options.with_tls(tls.to_client()),
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
        let deadline = tokio::time::Instant::now() + bound;
        let client = match tokio::time::timeout_at(deadline, setup).await {
            Ok(Ok(client)) => client,
            Ok(Err(e)) => {
                let mut message = format!("cannot use etcd at {described}: {e}");
                if is_transport_failure(&e) {
                    // The client's error may have lost the TLS reason (a
                    // rejected client certificate closes the connection
                    // under the first request): ask the endpoints directly,
                    // within what is left of the bound.
                    let diagnosis = diagnose_tls(
                        endpoints,
                        options.tls.as_ref().zip(parsed_tls.as_ref()),
                        options.connect_timeout,
                    );
                    if let Ok(Some(why)) = tokio::time::timeout_at(deadline, diagnosis).await {
                        message.push_str("; ");
                        message.push_str(&why);
                    }
                }
                return Err(StoreError::Unavailable(message));
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

/// Checks that every endpoint's scheme agrees with whether TLS is set: the
/// client would otherwise wait in vain for a connection that speaks the
/// other protocol.
fn check_schemes(endpoints: &[String], tls: bool) -> Result<(), StoreError> {
    for endpoint in endpoints {
        if tls && endpoint.starts_with("http://") {
            return Err(StoreError::InvalidRequest(format!(
                "etcd endpoint {endpoint} is plaintext http:// but EtcdOptions::tls is set: \
                 use https://"
            )));
        }
        if !tls && endpoint.starts_with("https://") {
            return Err(StoreError::InvalidRequest(format!(
                "etcd endpoint {endpoint} is https:// but EtcdOptions::tls is not set: \
                 set it (the CA that signed etcd's certificate) or use http://"
            )));
        }
    }
    Ok(())
}

/// Whether `error` is the connection failing rather than etcd answering.
fn is_transport_failure(error: &etcd_client::Error) -> bool {
    use etcd_client::Error as E;
    match error {
        E::TransportError(_) | E::IoError(_) => true,
        E::GRpcStatus(status) => {
            matches!(
                i32::from(status.code()),
                CODE_CANCELLED | CODE_UNKNOWN | CODE_UNAVAILABLE
            )
        }
        _ => false,
    }
}

/// How long the diagnostic handshake waits for an alert after the
/// handshake (with TLS 1.3, a rejected client certificate is only reported
/// then).
const ALERT_WAIT: Duration = Duration::from_secs(1);

/// Why TLS with `endpoints` fails, found by a handshake of our own with
/// each, each within `timeout`. Without `tls` (a plaintext connect that
/// broke): whether an endpoint answers TLS (it sends a certificate). With
/// `tls`: the first endpoint whose handshake with these settings fails, or
/// whose server ends the connection right after it, and why. `None` when
/// nothing was found.
async fn diagnose_tls(
    endpoints: &[String],
    tls: Option<(&EtcdTls, &Arc<tokio_rustls::rustls::ClientConfig>)>,
    timeout: Duration,
) -> Option<String> {
    use tokio::io::AsyncReadExt;
    use tokio_rustls::rustls;
    let config = match tls {
        None => {
            let mut config = client_config_builder()
                .ok()?
                // Trusts nothing: only whether the server sends a certificate counts.
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth();
            config.alpn_protocols = vec![b"h2".to_vec()];
            Arc::new(config)
        }
        Some((_, config)) => config.clone(),
    };
    let connector = tokio_rustls::TlsConnector::from(config);
    for endpoint in endpoints {
        let address = host_port(endpoint);
        let host = match tls.and_then(|(settings, _)| settings.domain_name.as_deref()) {
            Some(domain_name) => domain_name,
            None => {
                let host = address.rsplit_once(':').map_or(address, |(host, _)| host);
                host.trim_start_matches('[').trim_end_matches(']')
            }
        };
        let Ok(name) = rustls::pki_types::ServerName::try_from(host.to_owned()) else {
            continue;
        };
        let attempt = async {
            let tcp = tokio::net::TcpStream::connect(address).await?;
            let mut stream = connector.connect(name, tcp).await.map_err(|e| {
                if rustls_error(&e).is_some() {
                    e
                } else {
                    std::io::Error::new(
                        e.kind(),
                        format!(
                            "the server closed the connection during the TLS handshake \
                             ({e}): does it serve TLS?"
                        ),
                    )
                }
            })?;
            // A server that accepted us now waits for the client to speak.
            let mut byte = [0u8; 1];
            match tokio::time::timeout(ALERT_WAIT, stream.read(&mut byte)).await {
                Ok(Ok(0)) => Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the server closed the connection right after the TLS handshake",
                )),
                Ok(Err(e)) => Err(e),
                Ok(Ok(_)) | Err(_) => Ok(()),
            }
        };
        let outcome = match tokio::time::timeout(timeout, attempt).await {
            Ok(outcome) => outcome,
            Err(_) => continue,
        };
        match (tls, outcome) {
            (None, Err(e)) if is_certificate_error(&e) => {
                return Some(format!(
                    "{endpoint} answers TLS: set EtcdOptions::tls (the CA that signed \
                     etcd's certificate) and use https://"
                ));
            }
            (Some(_), Err(e)) => return Some(format!("TLS with {endpoint} failed: {e}")),
            _ => {}
        }
    }
    None
}

/// The TLS error inside `error`, if it is one.
fn rustls_error(error: &std::io::Error) -> Option<&tokio_rustls::rustls::Error> {
    error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<tokio_rustls::rustls::Error>())
}

/// Whether `error` is rustls refusing the server's certificate.
fn is_certificate_error(error: &std::io::Error) -> bool {
    rustls_error(error)
        .is_some_and(|e| matches!(e, tokio_rustls::rustls::Error::InvalidCertificate(_)))
}

/// `endpoint` without its scheme and path: `host:port`.
fn host_port(endpoint: &str) -> &str {
    let address = endpoint
        .strip_prefix("http://")
        .or_else(|| endpoint.strip_prefix("https://"))
        .unwrap_or(endpoint);
    address.split('/').next().unwrap_or(address)
}

/// Opens (and closes) a TCP connection to `endpoint`.
async fn tcp_check(endpoint: &str, timeout: Duration) -> Result<(), String> {
    let address = host_port(endpoint);
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

#[cfg(test)]
mod tests {
    use super::*;

    const FAKE_CERT: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
    const FAKE_KEY: &str =
        "-----BEGIN PRIVATE KEY-----\nsecret-key-body\n-----END PRIVATE KEY-----\n";

    fn scratch_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "taskgraph-etcd-tls-unit-{}-{name}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).expect("scratch dir");
        dir
    }

    #[test]
    fn tls_files_that_cannot_be_read_are_named() {
        let dir = scratch_dir("files");
        let missing_ca = dir.join("no-such-ca.pem");
        let e = EtcdTls::from_pem_file(&missing_ca).expect_err("a missing CA file");
        assert_eq!(e.path(), missing_ca);
        assert_eq!(e.io_error().kind(), std::io::ErrorKind::NotFound);
        let shown = e.to_string();
        assert!(
            shown.starts_with(&format!(
                "cannot read the etcd TLS CA certificate {}: ",
                missing_ca.display()
            )),
            "{shown}"
        );

        let ca = dir.join("ca.pem");
        let cert = dir.join("client.pem");
        std::fs::write(&ca, FAKE_CERT).expect("write");
        std::fs::write(&cert, FAKE_CERT).expect("write");
        let tls = EtcdTls::from_pem_file(&ca).expect("the CA file reads");
        assert_eq!(tls, EtcdTls::from_pem(FAKE_CERT));
        let missing_key = dir.join("no-such-key.pem");
        let e = tls
            .clone()
            .with_client_identity_files(&cert, &missing_key)
            .expect_err("a missing key file");
        assert_eq!(e.path(), missing_key);
        assert!(
            e.to_string().starts_with(&format!(
                "cannot read the etcd TLS client key {}: ",
                missing_key.display()
            )),
            "{e}"
        );
        let missing_cert = dir.join("no-such-client.pem");
        let e = tls
            .with_client_identity_files(&missing_cert, &ca)
            .expect_err("a missing client certificate file");
        assert!(
            e.to_string().starts_with(&format!(
                "cannot read the etcd TLS client certificate {}: ",
                missing_cert.display()
            )),
            "{e}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn tls_debug_never_shows_the_client_key() {
        let options = EtcdOptions {
            tls: Some(
                EtcdTls::from_pem(FAKE_CERT)
                    .with_client_identity(FAKE_CERT, FAKE_KEY)
                    .with_domain_name("etcd.example"),
            ),
            ..EtcdOptions::default()
        };
        let shown = format!("{options:?}");
        assert!(!shown.contains("secret-key-body"), "{shown}");
        assert!(shown.contains("key_pem: \"<redacted>\""), "{shown}");
        assert!(shown.contains("etcd.example"), "{shown}");
    }

    #[test]
    fn tls_settings_without_pem_are_refused_before_connecting() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        // Port 1 on loopback: nothing is contacted if the settings are refused.
        let endpoints = ["https://127.0.0.1:1".to_owned()];
        let key = rcgen::KeyPair::generate().expect("key");
        let real = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
            .expect("params")
            .self_signed(&key)
            .expect("certificate")
            .pem();
        let other_key = rcgen::KeyPair::generate().expect("key").serialize_pem();
        let cases = [
            (
                EtcdTls::from_pem("not pem"),
                "the CA certificate holds no PEM CERTIFICATE block",
            ),
            (
                EtcdTls::from_pem(FAKE_CERT),
                "the CA certificate is not usable",
            ),
            (
                EtcdTls::from_pem(real.clone()).with_client_identity("not pem", FAKE_KEY),
                "the client certificate holds no PEM CERTIFICATE block",
            ),
            (
                EtcdTls::from_pem(real.clone()).with_client_identity(real.clone(), real.clone()),
                "the client key holds no usable PEM PRIVATE KEY",
            ),
            (
                EtcdTls::from_pem(real.clone()).with_client_identity(real.clone(), other_key),
                "the client key cannot be used with the client certificate",
            ),
        ];
        for (tls, expected) in cases {
            let options = EtcdOptions {
                tls: Some(tls),
                ..EtcdOptions::default()
            };
            match rt.block_on(EtcdStore::connect(&endpoints, options)) {
                Err(StoreError::InvalidRequest(m)) => assert!(m.contains(expected), "{m}"),
                other => panic!("expected {expected:?}, got {other:?}"),
            }
        }
    }
}
