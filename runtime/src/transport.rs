//! TCP between nodes: length-prefixed frames, a handshake naming job,
//! protocol version and sender, heartbeats both ways, a frame size limit.
//!
//! ```text
//! frame := len: u32 (big endian, of kind + body) | kind: u8 | body
//! kind 1 HELLO  body = postcard(Hello)          first frame each way
//! kind 4 AUTH   body = HMAC proof (32 bytes)    second frame each way
//! kind 2 MSG    body = wire::encode(Envelope)   connector -> acceptor only
//! kind 3 BEAT   body = empty                    both ways, every heartbeat
//! ```
//!
//! The connector sends HELLO; the acceptor answers HELLO and its AUTH; the
//! connector checks that proof, then sends its own AUTH, which the acceptor
//! checks before it passes any message on (see [`crate::auth`]). A peer that
//! fails is dropped with a warning, and its failure is never taken as
//! evidence about the process it claimed to be.
//!
//! Each node opens one connection per peer it sends to; messages flow from
//! connector to acceptor, heartbeats both ways. Either side closes a
//! connection on which no frame started for three heartbeats; the connector
//! then reports the peer disconnected to the core, which reconnects with
//! backoff and resends.

use crate::auth::{self, Challenge, JobSecret, Side};
use bytes::{BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use taskgraph_core::wire::{self, Envelope, MAX_FRAME_LEN};
use taskgraph_core::{Disconnect, NodeId, SessionId, PROTOCOL_VERSION};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

const HELLO: u8 = 1;
const MSG: u8 = 2;
const BEAT: u8 = 3;
const AUTH: u8 = 4;
const MAGIC: u32 = 0x5447_5246; // "TGRF"

/// The first frame each side sends.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Always `0x5447_5246` ("TGRF"): not taskgraph otherwise.
    pub magic: u32,
    /// The sender's protocol version.
    pub version: u32,
    /// `wire::job_tag` of the sender's job.
    pub job: u64,
    /// The sending node.
    pub node: NodeId,
    /// Its session.
    pub session: SessionId,
    /// A fresh nonce: the challenge the other side's proof must answer.
    pub nonce: u128,
}

/// Timing and identity of one node's transport.
#[derive(Clone, Debug)]
pub struct TransportConfig {
    /// This node.
    pub node: NodeId,
    /// `wire::job_tag` of the job.
    pub job: u64,
    /// Interval of heartbeats; three missed close the connection.
    pub heartbeat: Duration,
    /// Time allowed to open a connection and shake hands.
    pub connect_timeout: Duration,
    /// The job's shared secret (`None`: the job has none, and peers prove
    /// with an empty key).
    pub secret: Option<JobSecret>,
}

/// What the transport tells the node's event loop.
#[derive(Debug)]
pub enum TransportEvent {
    /// A message arrived from `from` (the peer named in its handshake).
    Message(NodeId, Envelope),
    /// The outbound connection `generation` to `peer` failed or broke, and
    /// what that shows about the peer's process.
    Disconnected(NodeId, u64, Disconnect),
}

/// Why a frame or handshake was refused.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The socket failed.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// A frame longer than the limit.
    #[error("frame of {0} bytes exceeds the limit of {MAX_FRAME_LEN}")]
    TooLarge(usize),
    /// The peer spoke something else.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The peer stayed silent for three heartbeats.
    #[error("peer silent for {0:?}")]
    Silent(Duration),
    /// The peer's host refused the connection: nothing listens at the address.
    #[error("connection refused: {0}")]
    Refused(std::io::Error),
    /// The peer did not prove it knows the job's secret.
    #[error("authentication failed: {0}")]
    Auth(#[from] crate::auth::AuthError),
    /// The address answered as the expected node, but with another session.
    #[error("the peer answered with session {found}, not {expected}")]
    OtherSession {
        /// The session the store names.
        expected: SessionId,
        /// The session that answered.
        found: SessionId,
    },
}

impl FrameError {
    /// What this failure shows about the peer's process (see [`Disconnect`]).
    pub fn evidence(&self) -> Disconnect {
        match self {
            FrameError::Refused(_) => Disconnect::Refused,
            FrameError::OtherSession { found, .. } => Disconnect::OtherSession(*found),
            _ => Disconnect::Broken,
        }
    }
}

fn frame(kind: u8, body: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(5 + body.len());
    b.put_u32(u32::try_from(body.len() + 1).unwrap_or(u32::MAX));
    b.put_u8(kind);
    b.put_slice(body);
    b.freeze()
}

/// Encodes a message frame, copying the payload once.
pub fn message_frame(msg: &Envelope) -> Bytes {
    let mut f = wire::encode_after(vec![0, 0, 0, 0, MSG], msg);
    let len = u32::try_from(f.len() - 4).unwrap_or(u32::MAX);
    f[..4].copy_from_slice(&len.to_be_bytes());
    Bytes::from(f)
}

fn hello_frame(h: &Hello) -> Bytes {
    frame(HELLO, &postcard::to_allocvec(h).unwrap_or_default())
}

async fn read_frame<R: AsyncReadExt + Unpin>(r: &mut R) -> Result<(u8, Vec<u8>), FrameError> {
    let len = r.read_u32().await? as usize;
    read_body(r, len).await
}

/// Reads the kind and body of a frame whose length prefix was `len`.
async fn read_body<R: AsyncReadExt + Unpin>(
    r: &mut R,
    len: usize,
) -> Result<(u8, Vec<u8>), FrameError> {
    if len == 0 {
        return Err(FrameError::Protocol("empty frame".into()));
    }
    if len > MAX_FRAME_LEN + 1 {
        return Err(FrameError::TooLarge(len));
    }
    let kind = r.read_u8().await?;
    let mut body = vec![0u8; len - 1];
    r.read_exact(&mut body).await?;
    Ok((kind, body))
}

fn check_hello(cfg: &TransportConfig, kind: u8, body: &[u8]) -> Result<Hello, FrameError> {
    if kind != HELLO {
        return Err(FrameError::Protocol(format!(
            "expected a handshake, got frame kind {kind}"
        )));
    }
    let h: Hello = postcard::from_bytes(body)
        .map_err(|e| FrameError::Protocol(format!("bad handshake: {e}")))?;
    if h.magic != MAGIC {
        return Err(FrameError::Protocol("not a taskgraph peer".into()));
    }
    if h.version != PROTOCOL_VERSION {
        return Err(FrameError::Protocol(format!(
            "protocol version {} (ours is {PROTOCOL_VERSION})",
            h.version
        )));
    }
    if h.job != cfg.job {
        return Err(FrameError::Protocol("peer belongs to another job".into()));
    }
    Ok(h)
}

/// Accepts connections on `listener` for as long as `events` is open.
pub async fn accept_loop(
    listener: TcpListener,
    cfg: TransportConfig,
    session: tokio::sync::watch::Receiver<SessionId>,
    events: mpsc::UnboundedSender<TransportEvent>,
) {
    // Connection tasks end with this loop (when the node stops or is killed).
    let mut children = AbortOnDrop(Vec::new());
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(node = %cfg.node, %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if events.is_closed() {
            return;
        }
        let (cfg, events, session) = (cfg.clone(), events.clone(), session.clone());
        children.0.retain(|t| !t.is_finished());
        children.0.push(tokio::spawn(async move {
            match serve_inbound(stream, &cfg, session, &events).await {
                Ok(()) => {}
                // A peer that goes away or falls silent is routine.
                Err(e @ (FrameError::Io(_) | FrameError::Silent(_))) => {
                    tracing::debug!(node = %cfg.node, %peer, %e, "inbound connection closed")
                }
                Err(e) => tracing::warn!(node = %cfg.node, %peer, %e, "inbound connection refused"),
            }
        }));
    }
}

async fn serve_inbound(
    stream: TcpStream,
    cfg: &TransportConfig,
    session: tokio::sync::watch::Receiver<SessionId>,
    events: &mpsc::UnboundedSender<TransportEvent>,
) -> Result<(), FrameError> {
    let _ = stream.set_nodelay(true);
    let (mut rd, mut wr) = tokio::io::split(stream);
    let (kind, body) = tokio::time::timeout(cfg.connect_timeout, read_frame(&mut rd))
        .await
        .map_err(|_| FrameError::Silent(cfg.connect_timeout))??;
    let hello = check_hello(cfg, kind, &body)?;
    let me = Hello {
        magic: MAGIC,
        version: PROTOCOL_VERSION,
        job: cfg.job,
        node: cfg.node,
        session: *session.borrow(),
        nonce: auth::nonce(),
    };
    let challenge = Challenge {
        job: cfg.job,
        connector: (hello.node, hello.nonce),
        acceptor: (cfg.node, me.nonce),
    };
    wr.write_all(&hello_frame(&me)).await?;
    let mine = auth::proof(cfg.secret.as_ref(), Side::Acceptor, &challenge);
    wr.write_all(&frame(AUTH, &mine)).await?;
    wr.flush().await?;
    // Nothing from the peer reaches the core before its proof checks out.
    let (kind, body) = tokio::time::timeout(cfg.connect_timeout, read_frame(&mut rd))
        .await
        .map_err(|_| FrameError::Silent(cfg.connect_timeout))??;
    if kind != AUTH {
        return Err(FrameError::Auth(auth::AuthError::BadProof));
    }
    auth::verify(cfg.secret.as_ref(), Side::Connector, &challenge, &body)?;
    // Heartbeats go out from their own task, so that reading is never
    // interrupted halfway through a frame (read_frame is not cancel-safe).
    let beat_every = cfg.heartbeat;
    let beats = AbortOnDrop(vec![tokio::spawn(async move {
        let mut beat = tokio::time::interval(beat_every);
        loop {
            beat.tick().await;
            if wr.write_all(&frame(BEAT, &[])).await.is_err() || wr.flush().await.is_err() {
                return;
            }
        }
    })]);
    let silence = cfg.heartbeat * 3;
    loop {
        // The next frame must start within three heartbeats; once started,
        // it may take longer to arrive in full (large payloads).
        let len = tokio::time::timeout(silence, rd.read_u32())
            .await
            .map_err(|_| FrameError::Silent(silence))??;
        let (kind, body) =
            tokio::time::timeout(FRAME_BODY_TIMEOUT, read_body(&mut rd, len as usize))
                .await
                .map_err(|_| FrameError::Silent(FRAME_BODY_TIMEOUT))??;
        match kind {
            MSG => match wire::decode(&body) {
                Ok(msg) => {
                    let node = cfg.node.to_string();
                    ::metrics::counter!("taskgraph_messages_received_total", "node" => node.clone())
                        .increment(1);
                    ::metrics::counter!("taskgraph_bytes_received_total", "node" => node)
                        .increment(u64::from(len) + 4);
                    if events
                        .send(TransportEvent::Message(hello.node, msg))
                        .is_err()
                    {
                        drop(beats);
                        return Ok(());
                    }
                }
                Err(e) => {
                    return Err(FrameError::Protocol(format!("undecodable message: {e}")));
                }
            },
            BEAT => {}
            k => return Err(FrameError::Protocol(format!("unexpected frame kind {k}"))),
        }
    }
}

/// Time allowed for the rest of a frame once its length has arrived.
const FRAME_BODY_TIMEOUT: Duration = Duration::from_secs(30);

/// Aborts the tasks it holds when dropped.
struct AbortOnDrop(Vec<tokio::task::JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

/// One outbound connection to open: to whom, where, and which of its
/// sessions the store names.
#[derive(Clone, Debug)]
pub struct OutboundTarget {
    /// The peer.
    pub peer: NodeId,
    /// Its registered address.
    pub addr: String,
    /// Its registered session.
    pub session: SessionId,
}

/// The frames queued for one outbound connection, and their total length
/// (which the connection lowers as it writes them).
#[derive(Debug)]
pub struct Queue {
    /// The frames, in order.
    pub frames: mpsc::UnboundedReceiver<Bytes>,
    /// Bytes queued and not yet written; the sender adds, the connection
    /// takes off.
    pub bytes: Arc<AtomicUsize>,
    /// Bytes written so far; the connection adds.
    pub written: Arc<AtomicU64>,
}

/// Runs one outbound connection: connect, shake hands, then send queued
/// frames and heartbeats until the queue closes (the node dropped it) or the
/// connection fails. Reports a failure as `Disconnected(peer, generation,
/// evidence)`.
pub async fn run_outbound(
    cfg: TransportConfig,
    session: SessionId,
    target: OutboundTarget,
    generation: u64,
    mut queue: Queue,
    events: mpsc::UnboundedSender<TransportEvent>,
) {
    let result = outbound(&cfg, session, &target, &mut queue).await;
    match result {
        Ok(()) => {}
        Err(e) => {
            let (peer, addr) = (target.peer, &target.addr);
            let evidence = e.evidence();
            if evidence == Disconnect::Broken {
                tracing::debug!(node = %cfg.node, %peer, %addr, %e, "connection to peer failed");
            } else {
                tracing::info!(node = %cfg.node, %peer, %addr, %e, "peer process is gone");
            }
            let _ = events.send(TransportEvent::Disconnected(peer, generation, evidence));
        }
    }
}

/// Connects to `addr`, telling a refusal (evidence that no process listens
/// there) from every other failure.
async fn connect(
    cfg: &TransportConfig,
    peer: NodeId,
    addr: SocketAddr,
) -> Result<TcpStream, FrameError> {
    match tokio::time::timeout(cfg.connect_timeout, TcpStream::connect(addr)).await {
        Err(_) => Err(FrameError::Silent(cfg.connect_timeout)),
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            #[cfg(madsim)]
            if sim_paths::is_cut(cfg.node, peer) {
                // The simulator refuses a connection through a cut link at
                // once; a real network drops the SYN and the connect times
                // out, which is no evidence about the peer.
                tokio::time::sleep(cfg.connect_timeout).await;
                return Err(FrameError::Silent(cfg.connect_timeout));
            }
            let _ = peer;
            Err(FrameError::Refused(e))
        }
        Ok(Err(e)) => Err(e.into()),
    }
}

async fn outbound(
    cfg: &TransportConfig,
    session: SessionId,
    target: &OutboundTarget,
    queue: &mut Queue,
) -> Result<(), FrameError> {
    let (peer, addr) = (target.peer, target.addr.as_str());
    // An `ip:port` needs no resolver (and the simulator has none).
    let addr: SocketAddr = match addr.parse() {
        Ok(a) => a,
        Err(_) => tokio::net::lookup_host(addr)
            .await?
            .next()
            .ok_or_else(|| FrameError::Protocol(format!("no address for {addr}")))?,
    };
    let stream = connect(cfg, peer, addr).await?;
    let _ = stream.set_nodelay(true);
    let (mut rd, mut wr) = tokio::io::split(stream);
    let me = Hello {
        magic: MAGIC,
        version: PROTOCOL_VERSION,
        job: cfg.job,
        node: cfg.node,
        session,
        nonce: auth::nonce(),
    };
    wr.write_all(&hello_frame(&me)).await?;
    wr.flush().await?;
    let handshake = async {
        let (kind, body) = read_frame(&mut rd).await?;
        let theirs = check_hello(cfg, kind, &body)?;
        let (kind, proof) = read_frame(&mut rd).await?;
        Ok::<_, FrameError>((theirs, kind, proof))
    };
    let (theirs, kind, proof) = tokio::time::timeout(cfg.connect_timeout, handshake)
        .await
        .map_err(|_| FrameError::Silent(cfg.connect_timeout))??;
    if theirs.node != peer {
        return Err(FrameError::Protocol(format!(
            "expected node {peer}, reached {}",
            theirs.node
        )));
    }
    // Only an authenticated peer's answer counts as evidence about the
    // session below.
    let challenge = Challenge {
        job: cfg.job,
        connector: (cfg.node, me.nonce),
        acceptor: (peer, theirs.nonce),
    };
    if kind != AUTH {
        return Err(FrameError::Auth(auth::AuthError::BadProof));
    }
    auth::verify(cfg.secret.as_ref(), Side::Acceptor, &challenge, &proof)?;
    let mine = auth::proof(cfg.secret.as_ref(), Side::Connector, &challenge);
    wr.write_all(&frame(AUTH, &mine)).await?;
    wr.flush().await?;
    if theirs.session != target.session {
        return Err(FrameError::OtherSession {
            expected: target.session,
            found: theirs.session,
        });
    }
    let silence = cfg.heartbeat * 3;
    let mut beat = tokio::time::interval(cfg.heartbeat);
    let mut last_heard = tokio::time::Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        tokio::select! {
            biased;
            f = queue.frames.recv() => match f {
                Some(f) => {
                    // A peer that stops reading fills the socket's buffer;
                    // a write that cannot finish within the silence bound
                    // is a broken connection like a silent one.
                    let write = async {
                        wr.write_all(&f).await?;
                        wr.flush().await
                    };
                    tokio::time::timeout(silence, write)
                        .await
                        .map_err(|_| FrameError::Silent(silence))??;
                    queue.bytes.fetch_sub(f.len(), Ordering::Relaxed);
                    queue.written.fetch_add(f.len() as u64, Ordering::Relaxed);
                }
                None => return Ok(()),
            },
            n = rd.read(&mut buf) => {
                // Only heartbeats come back; any bytes mean the peer is alive.
                if n? == 0 {
                    return Err(FrameError::Protocol("peer closed the connection".into()));
                }
                last_heard = tokio::time::Instant::now();
            }
            _ = beat.tick() => {
                if last_heard.elapsed() > silence {
                    return Err(FrameError::Silent(silence));
                }
                // Bounded like any write: a peer that still sends but no
                // longer reads must not hold this connection forever.
                let write = async {
                    wr.write_all(&frame(BEAT, &[])).await?;
                    wr.flush().await
                };
                tokio::time::timeout(silence, write)
                    .await
                    .map_err(|_| FrameError::Silent(silence))??;
            }
        }
    }
}

/// Which paths between nodes a simulation has cut (`--cfg madsim` only).
///
/// madsim refuses a connection through a clogged link at once, where a real
/// network would drop the SYN and let the connect time out. Since a refusal
/// is evidence that the peer's process is gone ([`Disconnect::Refused`]),
/// the simulator tells the transport which paths it has cut, and a refusal
/// on a cut path is turned into the timeout a real network would give.
#[cfg(madsim)]
pub mod sim_paths {
    use std::cell::RefCell;
    use std::rc::Rc;
    use taskgraph_core::NodeId;

    type PathCut = Rc<dyn Fn(NodeId, NodeId) -> bool>;

    thread_local! {
        // madsim runs a whole simulated world on one thread.
        static PATH_CUT: RefCell<Option<PathCut>> = const { RefCell::new(None) };
    }

    /// Installs `cut(from, to)`, true while the path from `from` to `to` is
    /// cut, for the simulation running on this thread.
    pub fn set(cut: impl Fn(NodeId, NodeId) -> bool + 'static) {
        PATH_CUT.with(|p| *p.borrow_mut() = Some(Rc::new(cut)));
    }

    /// Removes the function installed by [`set`].
    pub fn clear() {
        PATH_CUT.with(|p| *p.borrow_mut() = None);
    }

    /// Whether the path from `from` to `to` is cut.
    pub(crate) fn is_cut(from: NodeId, to: NodeId) -> bool {
        let f = PATH_CUT.with(|p| p.borrow().clone());
        f.is_some_and(|f| f(from, to))
    }
}
