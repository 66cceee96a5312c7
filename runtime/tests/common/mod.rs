//! Test helpers shared by the runtime's integration tests: a real etcd
//! server (or cluster) on loopback ports, started from the `etcd` binary on
//! `PATH` and killed with SIGKILL when dropped.
//!
//! Each member also gets a small watchdog shell process that SIGKILLs it once
//! the test process is gone, so that a server kept in a `static` (never
//! dropped) or a test that aborts does not leave etcd running.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long a member may take to answer its health check.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Servers started by this process, for unique names.
static STARTED: AtomicUsize = AtomicUsize::new(0);

/// A running etcd server or cluster, killed (SIGKILL) with its data removed
/// when dropped.
#[derive(Debug)]
pub struct EtcdServer {
    /// Client URL of the first member, e.g. `http://127.0.0.1:41234`
    /// (`https://…` for [`EtcdServer::start_tls`]).
    pub endpoint: String,
    /// Client URLs of every member, in member order.
    pub endpoints: Vec<String>,
    members: Vec<Member>,
}

/// The files an etcd serving clients over TLS reads (PEM).
#[derive(Clone, Debug)]
pub struct ServerTls {
    /// The server's certificate (`--cert-file`).
    pub cert: PathBuf,
    /// Its private key (`--key-file`).
    pub key: PathBuf,
    /// The CA that client certificates must chain to (`--trusted-ca-file`);
    /// clients must present one (`--client-cert-auth`).
    pub trusted_ca: PathBuf,
}

#[derive(Debug)]
struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    /// Where `/health` is served over plain HTTP: the client port, or with
    /// TLS a separate `--listen-metrics-urls` port.
    health_port: u16,
    tls: Option<ServerTls>,
    /// Holds `data/` and `etcd.log`.
    dir: PathBuf,
    /// `--initial-cluster` of the whole cluster.
    initial_cluster: String,
    cluster_token: String,
    process: Option<Child>,
    watchdog: Option<Child>,
}

impl EtcdServer {
    /// A single-member etcd, ready to answer.
    ///
    /// Panics (never skips) if the `etcd` binary is missing.
    pub fn start() -> EtcdServer {
        Self::start_cluster(1)
    }

    /// An `n`-member cluster on 127.0.0.1, every member with its own client
    /// and peer port, ready to answer (every member healthy).
    pub fn start_cluster(n: usize) -> EtcdServer {
        Self::start_members(n, None)
    }

    /// A single-member etcd that serves clients only over TLS with `tls`'s
    /// certificate and requires client certificates signed by its trusted
    /// CA, ready to answer.
    pub fn start_tls(tls: ServerTls) -> EtcdServer {
        Self::start_members(1, Some(tls))
    }

    fn start_members(n: usize, tls: Option<ServerTls>) -> EtcdServer {
        assert!(n >= 1, "a cluster needs at least one member");
        let binary = etcd_binary();
        let serial = STARTED.fetch_add(1, Ordering::Relaxed);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let tag = format!("{}-{serial}-{nanos}", std::process::id());
        let ports = free_ports(3 * n);
        let names: Vec<String> = (0..n).map(|i| format!("m{i}")).collect();
        let initial_cluster = names
            .iter()
            .enumerate()
            .map(|(i, name)| format!("{name}=http://127.0.0.1:{}", ports[3 * i + 1]))
            .collect::<Vec<_>>()
            .join(",");
        let root = scratch_root();
        let mut members: Vec<Member> = names
            .into_iter()
            .enumerate()
            .map(|(i, name)| Member {
                dir: root.join(format!("taskgraph-etcd-{tag}-{name}")),
                name,
                client_port: ports[3 * i],
                peer_port: ports[3 * i + 1],
                health_port: if tls.is_some() {
                    ports[3 * i + 2]
                } else {
                    ports[3 * i]
                },
                tls: tls.clone(),
                initial_cluster: initial_cluster.clone(),
                cluster_token: format!("taskgraph-test-{tag}"),
                process: None,
                watchdog: None,
            })
            .collect();
        for member in &mut members {
            if let Err(e) = std::fs::create_dir_all(member.dir.join("data")) {
                panic!("cannot create {}: {e}", member.dir.display());
            }
            member.spawn(&binary);
        }
        let server = EtcdServer {
            endpoint: members[0].endpoint(),
            endpoints: members.iter().map(Member::endpoint).collect(),
            members,
        };
        for i in 0..n {
            server.wait_healthy(i);
        }
        server
    }

    /// Number of members.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Client URL of member `i`.
    pub fn member_endpoint(&self, i: usize) -> &str {
        &self.endpoints[i]
    }

    /// Whether member `i` is running (not killed).
    pub fn is_running(&mut self, i: usize) -> bool {
        match self.members[i].process.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Kills member `i` with SIGKILL (a crash), keeping its data.
    pub fn kill_member(&mut self, i: usize) {
        self.members[i].kill();
    }

    /// Restarts member `i` from its data after [`EtcdServer::kill_member`],
    /// and waits until it is healthy.
    pub fn restart_member(&mut self, i: usize) {
        assert!(
            !self.is_running(i),
            "member {i} is still running: kill it first"
        );
        let binary = etcd_binary();
        self.members[i].spawn(&binary);
        self.wait_healthy(i);
    }

    /// The end of member `i`'s log, for failure messages.
    pub fn log_tail(&self, i: usize) -> String {
        self.members[i].log_tail()
    }

    /// Waits until member `i` reports itself healthy (it has a leader).
    fn wait_healthy(&self, i: usize) {
        let member = &self.members[i];
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if health(member.health_port) {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "etcd member {} (client port {}) not healthy after {START_TIMEOUT:?}; log:\n{}",
                    member.name,
                    member.client_port,
                    member.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        for member in &mut self.members {
            member.kill();
            let _ = std::fs::remove_dir_all(&member.dir);
        }
    }
}

impl Member {
    fn endpoint(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.client_port)
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("etcd.log")
    }

    /// Starts etcd (initial state "new": on a restart etcd reads its
    /// membership from the data dir and ignores the initial flags).
    fn spawn(&mut self, binary: &Path) {
        let client = self.endpoint();
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap_or_else(|e| panic!("cannot open {}: {e}", self.log_path().display()));
        let log_err = log
            .try_clone()
            .unwrap_or_else(|e| panic!("cannot clone the log file handle: {e}"));
        let mut command = Command::new(binary);
        if let Some(tls) = &self.tls {
            command
                .arg("--cert-file")
                .arg(&tls.cert)
                .arg("--key-file")
                .arg(&tls.key)
                .arg("--trusted-ca-file")
                .arg(&tls.trusted_ca)
                .arg("--client-cert-auth")
                .arg("--listen-metrics-urls")
                .arg(format!("http://127.0.0.1:{}", self.health_port));
        }
        let child = command
            .arg("--name")
            .arg(&self.name)
            .arg("--data-dir")
            .arg(self.dir.join("data"))
            .arg("--listen-client-urls")
            .arg(&client)
            .arg("--advertise-client-urls")
            .arg(&client)
            .arg("--listen-peer-urls")
            .arg(&peer)
            .arg("--initial-advertise-peer-urls")
            .arg(&peer)
            .arg("--initial-cluster")
            .arg(&self.initial_cluster)
            .arg("--initial-cluster-state")
            .arg("new")
            .arg("--initial-cluster-token")
            .arg(&self.cluster_token)
            .arg("--logger=zap")
            .arg("--log-outputs=stderr")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
        // Kill etcd (and remove its data) once this test process is gone.
        let watchdog = Command::new("/bin/sh")
            .arg("-c")
            .arg(
                "while kill -0 \"$1\" 2>/dev/null; do sleep 0.5; done; \
                 kill -9 \"$2\" 2>/dev/null; rm -rf \"$3\"",
            )
            .arg("etcd-watchdog")
            .arg(std::process::id().to_string())
            .arg(child.id().to_string())
            .arg(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        self.process = Some(child);
        match watchdog {
            Ok(watchdog) => self.watchdog = Some(watchdog),
            Err(e) => eprintln!("warning: no watchdog for etcd member {}: {e}", self.name),
        }
    }

    /// SIGKILLs etcd and its watchdog, and reaps both.
    fn kill(&mut self) {
        for child in [self.process.take(), self.watchdog.take()]
            .into_iter()
            .flatten()
        {
            let mut child = child;
            // `Child::kill` sends SIGKILL; it fails only if already reaped.
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

/// The `etcd` binary on `PATH`. Panics with what to do if there is none:
/// tests that need etcd must fail, never skip.
pub fn etcd_binary() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        let candidate = dir.join("etcd");
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!(
        "the `etcd` binary is not on PATH: these tests need a real etcd server. \
         Install Debian's etcd-server package (`apt-get install etcd-server`) \
         or run `cargo xtask test`, which installs it"
    );
}

/// `n` distinct loopback ports that were free a moment ago.
pub fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| {
            TcpListener::bind("127.0.0.1:0")
                .unwrap_or_else(|e| panic!("cannot bind a loopback port: {e}"))
        })
        .collect();
    listeners
        .iter()
        .map(|l| {
            l.local_addr()
                .unwrap_or_else(|e| panic!("no local address: {e}"))
                .port()
        })
        .collect()
}

/// Where data dirs go: tmpfs if there is one (etcd fsyncs a lot).
fn scratch_root() -> PathBuf {
    let shm = Path::new("/dev/shm");
    let probe = shm.join(format!(".taskgraph-probe-{}", std::process::id()));
    if std::fs::create_dir_all(&probe).is_ok() {
        let _ = std::fs::remove_dir(&probe);
        return shm.to_path_buf();
    }
    std::env::temp_dir()
}

/// Whether the member on `port` answers `GET /health` with health true.
fn health(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(2)));
    let request = format!("GET /health HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response.contains("\"health\":\"true\"")
}
