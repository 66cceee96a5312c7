//! Bad input on a node's TCP port (S19): the connection is dropped with a
//! warning, the node and the job carry on.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use taskgraph_core::testkit::tree_sum::{Results, TreeSumBuilder};
use taskgraph_core::{wire, NodeConfig, NodeId, SessionId, TreeTopology, PROTOCOL_VERSION};
use taskgraph_runtime::auth::{self, Challenge, JobSecret, Side};
use taskgraph_runtime::transport::Hello;
use taskgraph_runtime::{spawn_node, MemStoreServer, NodeExit, NodeHandle, NodeOptions, Store};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn job(results: &Results) -> Vec<NodeHandle> {
    job_with_secret(results, None).await
}

async fn job_with_secret(results: &Results, secret: Option<JobSecret>) -> Vec<NodeHandle> {
    let store: Arc<dyn Store> = Arc::new(MemStoreServer::new());
    let mut nodes = Vec::new();
    for id in 1..=3 {
        let cfg = NodeConfig::new(NodeId(id), "transport", "", 3, 0);
        let mut opts = NodeOptions::new(cfg, "127.0.0.1:0".parse().expect("addr"));
        opts.secret = secret.clone();
        let topo = Arc::new(TreeTopology::new(2, 3).expect("tree"));
        let builder =
            TreeSumBuilder::new(3, 8, results.clone()).with_pace(Duration::from_millis(100));
        nodes.push(
            spawn_node(opts, store.clone(), topo, Box::new(builder), None)
                .await
                .expect("starts"),
        );
    }
    nodes
}

/// Waits for every node of [`job`] to see the job complete, with every
/// epoch's answer right.
async fn assert_job_completed(nodes: Vec<NodeHandle>, results: &Results) {
    for n in nodes {
        let exit = tokio::time::timeout(Duration::from_secs(30), n.join)
            .await
            .expect("in time");
        assert!(
            matches!(exit, Ok(Ok(NodeExit::JobEnded(ref r))) if r.is_completed()),
            "{exit:?}"
        );
    }
    let all = results.all();
    assert!(
        (1..=8).all(|e| all.iter().any(|r| r.epoch.0 == e && r.total == r.expected)),
        "{all:?}"
    );
}

/// Node 1 of a 3-task job alone (the job never gets going), with `secret`,
/// and its events.
async fn lone_node(secret: Option<JobSecret>) -> (NodeHandle, Events) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let store: Arc<dyn Store> = Arc::new(MemStoreServer::new());
    let cfg = NodeConfig::new(NodeId(1), "transport", "", 3, 0);
    let mut opts = NodeOptions::new(cfg, "127.0.0.1:0".parse().expect("addr"));
    opts.secret = secret;
    let topo = Arc::new(TreeTopology::new(2, 3).expect("tree"));
    let builder =
        TreeSumBuilder::new(3, 1_000, Results::default()).with_pace(Duration::from_secs(60));
    let node = spawn_node(opts, store, topo, Box::new(builder), Some(tx))
        .await
        .expect("starts");
    (node, rx)
}

/// A lone node's events.
type Events = tokio::sync::mpsc::UnboundedReceiver<(NodeId, taskgraph_core::Event)>;

/// The session a lone node started, read from its events.
async fn started_session(rx: &mut Events) -> SessionId {
    loop {
        match tokio::time::timeout(Duration::from_secs(5), rx.recv()).await {
            Ok(Some((_, taskgraph_core::Event::SessionStarted { session }))) => return session,
            Ok(Some(_)) => {}
            other => panic!("the node never started a session: {other:?}"),
        }
    }
}

/// Waits until a message from `sender` reaches a lone node's core (which
/// drops it: the node holds no role); a message from any other sender
/// first fails the test. `what` names the message in the failure.
async fn first_message_is_from(rx: &mut Events, sender: NodeId, what: &str) {
    use taskgraph_core::Event;
    loop {
        match tokio::time::timeout(Duration::from_secs(5), rx.recv()).await {
            Ok(Some((_, Event::MessageDropped { from, .. }))) if from == sender => return,
            Ok(Some((_, Event::MessageDropped { from, reason }))) => {
                panic!("a message from {from} reached the core ({reason:?})")
            }
            Ok(Some(_)) => {}
            other => panic!("{what} never arrived: {other:?}"),
        }
    }
}

/// Whether the node closes `s` within 3 s (heartbeats are skipped).
async fn closed_by_peer(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 64];
    loop {
        match tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

/// Sends `bytes` to `addr` and tells whether the node closed the connection.
async fn closed_after(addr: SocketAddr, bytes: &[u8]) -> bool {
    let mut s = TcpStream::connect(addr).await.expect("connects");
    s.write_all(bytes).await.expect("writes");
    let mut buf = [0u8; 64];
    loop {
        match tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue, // a handshake or heartbeat: keep reading
            Err(_) => return false,
        }
    }
}

fn frame(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut f = ((body.len() + 1) as u32).to_be_bytes().to_vec();
    f.push(kind);
    f.extend_from_slice(body);
    f
}

fn hello(job: &str, version: u32) -> Vec<u8> {
    hello_from(job, version, NodeId(99), SessionId(1))
}

/// A handshake (nonce 5) from node `me` in session `session`.
fn hello_from(job: &str, version: u32, me: NodeId, session: SessionId) -> Vec<u8> {
    let h = Hello {
        magic: 0x5447_5246,
        version,
        job: wire::job_tag(job),
        node: me,
        session,
        nonce: 5,
    };
    frame(1, &postcard::to_allocvec(&h).expect("encodes"))
}

/// Reads one frame: (kind, body).
async fn read_frame(s: &mut TcpStream) -> (u8, Vec<u8>) {
    let mut len = [0u8; 4];
    s.read_exact(&mut len).await.expect("a frame length");
    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
    s.read_exact(&mut body).await.expect("a frame body");
    let kind = body.remove(0);
    (kind, body)
}

/// Connects to the node at `addr` (node id `node`) as node 99 of job
/// "transport" and completes the handshake, proving with `secret`. The node
/// sends no answer to the proof: only its events tell whether it took it.
async fn handshake(addr: SocketAddr, node: NodeId, secret: Option<&JobSecret>) -> TcpStream {
    handshake_as(addr, node, NodeId(99), SessionId(1), secret).await
}

/// Like [`handshake`], as node `me` in session `session`.
async fn handshake_as(
    addr: SocketAddr,
    node: NodeId,
    me: NodeId,
    session: SessionId,
    secret: Option<&JobSecret>,
) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.expect("connects");
    s.write_all(&hello_from("transport", PROTOCOL_VERSION, me, session))
        .await
        .expect("hello");
    let (kind, body) = read_frame(&mut s).await;
    assert_eq!(kind, 1, "the node answers with its handshake");
    let theirs: Hello = postcard::from_bytes(&body).expect("a handshake");
    let (kind, _their_proof) = read_frame(&mut s).await;
    assert_eq!(kind, 4, "then its proof");
    let challenge = Challenge {
        job: wire::job_tag("transport"),
        connector: (me, 5),
        acceptor: (node, theirs.nonce),
    };
    let proof = auth::proof(secret, Side::Connector, &challenge);
    s.write_all(&frame(4, &proof)).await.expect("proof");
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s19_garbage_oversized_frames_and_foreign_peers_are_refused_and_the_job_carries_on() {
    let results = Results::default();
    let nodes = job(&results).await;
    let addr = nodes[0].addr;
    assert!(
        closed_after(addr, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await,
        "garbage"
    );
    assert!(
        closed_after(addr, &u32::MAX.to_be_bytes()).await,
        "a frame over the size limit"
    );
    assert!(
        closed_after(addr, &hello("another-job", PROTOCOL_VERSION)).await,
        "a peer of another job"
    );
    assert!(
        closed_after(addr, &hello("transport", PROTOCOL_VERSION + 1)).await,
        "another protocol version"
    );
    let mut s = handshake(addr, nodes[0].id, None).await;
    s.write_all(&frame(2, b"\xff\xff\xff not a message"))
        .await
        .expect("writes");
    assert!(
        closed_by_peer(&mut s).await,
        "an undecodable message after a good handshake"
    );
    assert_job_completed(nodes, &results).await;
}

fn meta_frame(seq: u64) -> Vec<u8> {
    use taskgraph_core::wire::{Body, Direction, Envelope};
    use taskgraph_core::{Epoch, Incarnation, TaskId};
    let msg = Envelope {
        version: PROTOCOL_VERSION,
        job: wire::job_tag("transport"),
        from_node: NodeId(99),
        from_session: SessionId(1),
        seq,
        from_task: TaskId(0),
        incarnation: Incarnation(1),
        epoch: Epoch(0),
        to_task: TaskId(1),
        to_incarnation: Incarnation(1),
        body: Body::Meta {
            direction: Direction::ToChildren,
            flag: 0,
            meta: bytes::Bytes::from_static(b"m"),
        },
    };
    frame(2, &wire::encode(&msg))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_split_across_heartbeats_arrive_whole_and_silent_peers_are_dropped() {
    let (node, mut rx) = lone_node(None).await;
    // The node runs with the default options.
    let heartbeat =
        NodeOptions::new(NodeConfig::new(NodeId(1), "x", "", 1, 0), node.addr).heartbeat;
    let mut s = handshake(node.addr, NodeId(1), None).await;
    // One frame in two halves, more than a heartbeat apart, then another.
    let f = meta_frame(1);
    s.write_all(&f[..7]).await.expect("first half");
    tokio::time::sleep(heartbeat + Duration::from_millis(200)).await;
    s.write_all(&f[7..]).await.expect("second half");
    s.write_all(&meta_frame(2)).await.expect("next frame");
    let mut seen = 0;
    while seen < 2 {
        match tokio::time::timeout(Duration::from_secs(3), rx.recv()).await {
            Ok(Some((
                _,
                taskgraph_core::Event::MessageDropped {
                    from: NodeId(99), ..
                },
            ))) => seen += 1,
            Ok(Some(_)) => {}
            other => panic!("only {seen} of 2 frames reached the node: {other:?}"),
        }
    }
    // Now fall silent: the node closes the connection within three heartbeats.
    let started = tokio::time::Instant::now();
    let mut buf = [0u8; 64];
    loop {
        match tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(_)) => continue, // its heartbeats
            Err(_) => panic!("a silent peer was never dropped"),
        }
    }
    let took = started.elapsed();
    assert!(
        took <= heartbeat * 3 + Duration::from_millis(500),
        "dropped after {took:?}"
    );
    node.shutdown.stop();
}

/// An outbound connection's queue over `frames` (its byte counts start at 0).
fn queue_of(
    frames: tokio::sync::mpsc::UnboundedReceiver<bytes::Bytes>,
) -> taskgraph_runtime::transport::Queue {
    taskgraph_runtime::transport::Queue {
        frames,
        bytes: Default::default(),
        written: Default::default(),
    }
}

/// Opens one outbound connection to `addr` expecting `expected` and returns
/// how it ended, as the transport reports it to the node.
async fn outbound_end(
    addr: SocketAddr,
    peer: NodeId,
    expected: SessionId,
    secret: Option<JobSecret>,
) -> taskgraph_core::Disconnect {
    use taskgraph_runtime::transport::{
        run_outbound, OutboundTarget, TransportConfig, TransportEvent,
    };
    let cfg = TransportConfig {
        node: NodeId(50),
        job: wire::job_tag("transport"),
        heartbeat: Duration::from_millis(200),
        connect_timeout: Duration::from_millis(500),
        secret,
    };
    let (_queue_tx, frames) = tokio::sync::mpsc::unbounded_channel();
    let queue = queue_of(frames);
    let (events, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let target = OutboundTarget {
        peer,
        addr: addr.to_string(),
        session: expected,
    };
    tokio::spawn(run_outbound(cfg, SessionId(7), target, 1, queue, events));
    match tokio::time::timeout(Duration::from_secs(5), rx.recv()).await {
        Ok(Some(TransportEvent::Disconnected(p, 1, how))) if p == peer => how,
        other => panic!("expected a disconnect from {peer}, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_tells_a_dead_process_from_an_unreachable_one() {
    use taskgraph_core::Disconnect;
    // Nothing listens: the host refuses, so the process is gone.
    let free = std::net::TcpListener::bind("127.0.0.1:0").expect("binds");
    let closed = free.local_addr().expect("addr");
    drop(free);
    assert_eq!(
        outbound_end(closed, NodeId(1), SessionId(1), None).await,
        Disconnect::Refused
    );

    // A live node answers with its own session: another one than expected
    // means the expected session is over.
    let (node, mut rx) = lone_node(None).await;
    let session = started_session(&mut rx).await;
    let stale = SessionId(session.0 + 1000);
    assert_eq!(
        outbound_end(node.addr, NodeId(1), stale, None).await,
        Disconnect::OtherSession(session)
    );
    node.shutdown.stop();

    // A host that accepts but never answers (a frozen process, or a
    // listener behind a one-way loss): no evidence, only a timeout.
    let mute = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binds");
    let mute_addr = mute.local_addr().expect("addr");
    let _held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((s, _)) = mute.accept().await {
            open.push(s);
        }
    });
    assert_eq!(
        outbound_end(mute_addr, NodeId(1), SessionId(1), None).await,
        Disconnect::Broken
    );
}

/// A peer that shakes hands with the job's secret, then reads nothing more
/// and keeps the connection open (a frozen process: its kernel still
/// acknowledges, with a closed window). The connector's writes stall once
/// the socket buffers are full; the write bound of three heartbeats must end
/// the connection as broken (no evidence about the peer's process), and the
/// queue's counts must say exactly which frames were written.
#[tokio::test(flavor = "current_thread")]
async fn a_peer_that_stops_reading_is_dropped_as_broken_within_three_heartbeats() {
    use bytes::Bytes;
    use std::sync::atomic::Ordering;
    use taskgraph_core::wire::{Body, Direction, Envelope};
    use taskgraph_core::{Disconnect, Epoch, Incarnation, TaskId};
    use taskgraph_runtime::transport::{
        message_frame, run_outbound, OutboundTarget, TransportConfig, TransportEvent,
    };
    // 48 MiB: more than the socket buffers of both ends can hold (Linux
    // grows them to at most tcp_wmem's 4 MiB and tcp_rmem's 6 MiB by
    // default, 32 MiB where tuned up).
    const FRAMES: u32 = 48;
    const PAYLOAD: usize = 1 << 20;
    const GENERATION: u64 = 4;
    let logs = Logs::capture();
    let secret = JobSecret::new("read what you are sent").expect("secret");
    let heartbeat = Duration::from_millis(100);
    let silence = heartbeat * 3;
    let (peer, peer_session, me) = (NodeId(1), SessionId(3), NodeId(50));
    let job = wire::job_tag("transport");

    // The peer: answers the handshake as the real acceptor does, checks the
    // connector's proof, then hands its end over to be left unread.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binds");
    let addr = listener.local_addr().expect("addr");
    let (shook_hands, stalled) = tokio::sync::oneshot::channel::<TcpStream>();
    let peer_secret = secret.clone();
    let _peer = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.expect("accepts");
        let (kind, body) = read_frame(&mut s).await;
        assert_eq!(kind, 1, "the connector starts with its handshake");
        let theirs: Hello = postcard::from_bytes(&body).expect("a handshake");
        assert_eq!((theirs.node, theirs.session), (me, SessionId(7)));
        let ours = Hello {
            magic: 0x5447_5246,
            version: PROTOCOL_VERSION,
            job,
            node: peer,
            session: peer_session,
            nonce: auth::nonce(),
        };
        let challenge = Challenge {
            job,
            connector: (theirs.node, theirs.nonce),
            acceptor: (peer, ours.nonce),
        };
        let mut answer = frame(1, &postcard::to_allocvec(&ours).expect("encodes"));
        answer.extend(frame(
            4,
            &auth::proof(Some(&peer_secret), Side::Acceptor, &challenge),
        ));
        s.write_all(&answer).await.expect("answers");
        let (kind, proof) = read_frame(&mut s).await;
        assert_eq!(kind, 4, "then the connector's proof");
        assert_eq!(
            auth::verify(Some(&peer_secret), Side::Connector, &challenge, &proof),
            Ok(()),
            "the connector proves it knows the secret"
        );
        let _ = shook_hands.send(s);
    });

    // Valid message frames of a little over 1 MiB each, built beforehand.
    let sent: Vec<Bytes> = (1..=FRAMES)
        .map(|seq| {
            message_frame(&Envelope {
                version: PROTOCOL_VERSION,
                job,
                from_node: me,
                from_session: SessionId(7),
                seq: u64::from(seq),
                from_task: TaskId(0),
                incarnation: Incarnation(1),
                epoch: Epoch(0),
                to_task: TaskId(1),
                to_incarnation: Incarnation(1),
                body: Body::Meta {
                    direction: Direction::ToChildren,
                    flag: seq,
                    meta: Bytes::from(vec![seq as u8; PAYLOAD]),
                },
            })
        })
        .collect();
    let total: usize = sent.iter().map(Bytes::len).sum();

    // A real outbound connection, with the job's secret.
    let cfg = TransportConfig {
        node: me,
        job,
        heartbeat,
        connect_timeout: Duration::from_secs(1),
        secret: Some(secret),
    };
    let (queue_tx, frames_rx) = tokio::sync::mpsc::unbounded_channel();
    let queue = queue_of(frames_rx);
    let (queued, written) = (queue.bytes.clone(), queue.written.clone());
    let (events, mut outcome) = tokio::sync::mpsc::unbounded_channel();
    let target = OutboundTarget {
        peer,
        addr: addr.to_string(),
        session: peer_session,
    };
    let connector = tokio::spawn(run_outbound(
        cfg,
        SessionId(7),
        target,
        GENERATION,
        queue,
        events,
    ));
    let mut unread = tokio::time::timeout(Duration::from_secs(5), stalled)
        .await
        .expect("the handshake took over 5 s")
        .expect("the peer's handshake failed");

    // The queue filled as the node fills it (count first, then the frame).
    // This thread runs the connector only once the test awaits, so every
    // write starts after `filled`.
    for f in &sent {
        queued.fetch_add(f.len(), Ordering::Relaxed);
        queue_tx.send(f.clone()).expect("queued");
    }
    let filled = tokio::time::Instant::now();
    let ended = tokio::time::timeout(Duration::from_secs(10), outcome.recv())
        .await
        .unwrap_or_else(|_| {
            panic!(
                "no disconnect 10 s after the queue filled: the write to a peer that \
                 stopped reading never gave up ({} of {total} bytes written)",
                written.load(Ordering::Relaxed)
            )
        });
    let took = filled.elapsed();
    match ended {
        Some(TransportEvent::Disconnected(p, GENERATION, Disconnect::Broken)) if p == peer => {}
        other => panic!("expected Disconnected({peer}, {GENERATION}, Broken), got {other:?}"),
    }
    assert!(
        took >= silence && took < silence + Duration::from_secs(2),
        "reported broken {took:?} after the queue filled (the write bound is {silence:?})"
    );
    let timed_out = logs.lines_with(&[
        "DEBUG",
        "connection to peer failed",
        &format!("peer silent for {silence:?}"),
    ]);
    assert_eq!(
        timed_out.len(),
        1,
        "the write bound ended it: {timed_out:?}"
    );
    tokio::time::timeout(Duration::from_secs(1), connector)
        .await
        .expect("the connection's task ended with its report")
        .expect("no panic");

    // Only whole frames count as written, and what is not written is still
    // counted as queued.
    let written = usize::try_from(written.load(Ordering::Relaxed)).expect("fits");
    assert!(
        written < total,
        "all {total} bytes were written: the socket buffers never filled"
    );
    let whole = sent
        .iter()
        .scan(0, |sum, f| {
            *sum += f.len();
            Some(*sum)
        })
        .position(|sum| sum > written)
        .expect("a frame was left unwritten");
    let written_frames: usize = sent[..whole].iter().map(Bytes::len).sum();
    assert_eq!(
        written, written_frames,
        "written counts {whole} whole frames and part of the next"
    );
    assert_eq!(
        queued.load(Ordering::Relaxed),
        total - written,
        "bytes still queued"
    );

    // The connector closed its end: the peer, reading at last, gets exactly
    // the frames counted as written, then part of the one whose write timed
    // out, then the end of the stream.
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), unread.read_to_end(&mut got))
        .await
        .expect("the connector closed the connection")
        .expect("reads to the end");
    let parsed = frames(&got);
    let consumed: usize = parsed.iter().map(|f| f.2.len()).sum();
    let messages: Vec<&[u8]> = parsed.iter().filter(|f| f.0 == 2).map(|f| f.2).collect();
    // (The peer read the handshake and proof before it stopped.)
    let sequence = kinds(&got);
    assert!(
        sequence.iter().all(|k| *k == 2 || *k == 3),
        "only messages and heartbeats: {sequence:?}"
    );
    assert_eq!(
        messages.len(),
        whole,
        "the peer got whole messages: {sequence:?}"
    );
    assert!(
        messages
            .iter()
            .zip(&sent)
            .all(|(got, sent)| *got == &sent[..]),
        "the peer got the first {whole} messages, in order"
    );
    assert!(
        got.len() - consumed < sent[whole].len(),
        "then part of message {}: {} bytes",
        whole + 1,
        got.len() - consumed
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_without_the_job_secret_are_refused_before_any_frame_reaches_the_core() {
    let secret = JobSecret::new("correct horse battery staple").expect("secret");
    let (node, mut rx) = lone_node(Some(secret.clone())).await;
    // Whatever reached the core from node 99 (a dropped message is still
    // one that reached it).
    let mut reached = move |within: Duration| {
        let deadline = std::time::Instant::now() + within;
        let mut n = 0;
        while std::time::Instant::now() < deadline {
            match rx.try_recv() {
                Ok((
                    _,
                    taskgraph_core::Event::MessageDropped {
                        from: NodeId(99), ..
                    },
                )) => n += 1,
                Ok(_) => {}
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
        n
    };
    let wrong = JobSecret::new("wrong").expect("secret");
    for (who, proof_with) in [("no secret", None), ("a wrong secret", Some(&wrong))] {
        let mut s = handshake(node.addr, NodeId(1), proof_with).await;
        // A message right behind the proof: it must never reach the core.
        let _ = s.write_all(&meta_frame(1)).await;
        assert!(
            closed_by_peer(&mut s).await,
            "a peer with {who} was not dropped"
        );
        assert_eq!(
            reached(Duration::from_millis(300)),
            0,
            "a frame from a peer with {who} reached the core"
        );
    }
    // A connector that sends messages without proving anything.
    let mut s = TcpStream::connect(node.addr).await.expect("connects");
    let mut unproven = hello("transport", PROTOCOL_VERSION);
    unproven.extend(meta_frame(1));
    s.write_all(&unproven).await.expect("writes");
    assert!(
        closed_by_peer(&mut s).await,
        "a peer that skipped its proof was not dropped"
    );
    assert_eq!(reached(Duration::from_millis(300)), 0);
    // The right secret gets its message through.
    let mut s = handshake(node.addr, NodeId(1), Some(&secret)).await;
    s.write_all(&meta_frame(1)).await.expect("writes");
    assert_eq!(
        reached(Duration::from_secs(2)),
        1,
        "the authenticated peer's message reached the core"
    );
    // A node reached with the wrong secret is no evidence of anything.
    assert_eq!(
        outbound_end(node.addr, NodeId(1), SessionId(12345), Some(wrong)).await,
        taskgraph_core::Disconnect::Broken,
        "an unproven answer is evidence"
    );
    node.shutdown.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_whose_nodes_share_a_secret_runs_to_the_end() {
    let results = Results::default();
    let secret = JobSecret::new("s3cret").expect("secret");
    let nodes = job_with_secret(&results, Some(secret)).await;
    assert_job_completed(nodes, &results).await;
}

// Replayed frames and stale processes (S3, S19): a recorded connection
// replayed byte for byte fails the handshake, and a process that knows the
// secret but speaks for an older incarnation is fenced by the core.

/// Log lines written on the current thread while it is held.
struct Logs {
    text: Arc<std::sync::Mutex<Vec<u8>>>,
    _guard: tracing::subscriber::DefaultGuard,
}

#[derive(Clone)]
struct LogWriter(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    /// Captures this thread's log lines (a `current_thread` test runs its
    /// nodes on it).
    fn capture() -> Logs {
        let text = Arc::new(std::sync::Mutex::new(Vec::new()));
        let writer = LogWriter(text.clone());
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::DEBUG)
            .finish();
        Logs {
            text,
            _guard: tracing::subscriber::set_default(subscriber),
        }
    }

    /// The lines captured so far that contain every one of `parts`.
    fn lines_with(&self, parts: &[&str]) -> Vec<String> {
        let text = String::from_utf8_lossy(&self.text.lock().expect("log")).into_owned();
        text.lines()
            .filter(|l| parts.iter().all(|p| l.contains(p)))
            .map(str::to_owned)
            .collect()
    }
}

/// The bytes of one connection through a [`Proxy`], each way.
#[derive(Clone, Debug, Default)]
struct Recorded {
    /// From the connector.
    up: Vec<u8>,
    /// From the node.
    down: Vec<u8>,
}

/// A TCP proxy in front of a node's port that records every connection.
/// Stopping it closes its port and every connection through it, as the
/// death of the process behind it would.
struct Proxy {
    addr: SocketAddr,
    listener: Option<tokio::net::TcpListener>,
    conns: Arc<std::sync::Mutex<Vec<Arc<std::sync::Mutex<Recorded>>>>>,
    tasks: Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl Proxy {
    async fn bind() -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binds");
        Proxy {
            addr: listener.local_addr().expect("addr"),
            listener: Some(listener),
            conns: Arc::default(),
            tasks: Arc::default(),
        }
    }

    /// Starts forwarding every connection to `target`.
    fn forward_to(&mut self, target: SocketAddr) {
        let listener = self.listener.take().expect("forwarding once");
        let (conns, tasks) = (self.conns.clone(), self.tasks.clone());
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(target).await else {
                    continue; // the node is gone: so is the connection
                };
                let rec = Arc::new(std::sync::Mutex::new(Recorded::default()));
                conns.lock().expect("conns").push(rec.clone());
                let (crd, cwr) = client.into_split();
                let (srd, swr) = server.into_split();
                let mut t = tasks.lock().expect("tasks");
                t.push(tokio::spawn(pump(crd, swr, rec.clone(), true)));
                t.push(tokio::spawn(pump(srd, cwr, rec, false)));
            }
        });
        self.tasks.lock().expect("tasks").push(accept);
    }

    /// What every connection so far carried.
    fn recordings(&self) -> Vec<Recorded> {
        let conns = self.conns.lock().expect("conns");
        conns
            .iter()
            .map(|r| r.lock().expect("recording").clone())
            .collect()
    }

    fn stop(&self) {
        for t in self.tasks.lock().expect("tasks").iter() {
            t.abort();
        }
    }
}

/// Copies `from` to `to`, recording the bytes as `up` (from the connector)
/// or down.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    rec: Arc<std::sync::Mutex<Recorded>>,
    up: bool,
) {
    let mut buf = [0u8; 8192];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        {
            let mut r = rec.lock().expect("recording");
            let side = if up { &mut r.up } else { &mut r.down };
            side.extend_from_slice(&buf[..n]);
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

/// The complete frames in `bytes`: (kind, body, the whole frame).
fn frames(bytes: &[u8]) -> Vec<(u8, &[u8], &[u8])> {
    let mut out = Vec::new();
    let mut rest = bytes;
    while rest.len() >= 5 {
        let len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        if len == 0 || rest.len() < 4 + len {
            break;
        }
        let (f, r) = rest.split_at(4 + len);
        out.push((f[4], &f[5..], f));
        rest = r;
    }
    out
}

fn kinds(bytes: &[u8]) -> Vec<u8> {
    frames(bytes).iter().map(|f| f.0).collect()
}

/// The handshake at the start of `bytes`.
fn first_hello(bytes: &[u8]) -> Hello {
    let f = frames(bytes);
    assert_eq!(f.first().map(|f| f.0), Some(1), "starts with a handshake");
    postcard::from_bytes(f[0].1).expect("a handshake")
}

/// Everything the node sends on `s` until it closes it; fails if it keeps
/// it open for 3 s.
async fn read_until_closed(s: &mut TcpStream) -> Vec<u8> {
    let mut all = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return all,
            Ok(Ok(n)) => all.extend_from_slice(&buf[..n]),
            Err(_) => panic!("the node kept the connection open; it sent {all:?}"),
        }
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_recorded_connection_replayed_byte_for_byte_is_refused_at_the_handshake() {
    use taskgraph_core::Disconnect;
    use taskgraph_runtime::transport::{
        message_frame, run_outbound, OutboundTarget, TransportConfig, TransportEvent,
    };
    let logs = Logs::capture();
    let secret = JobSecret::new("replay me if you can").expect("secret");
    let (node, mut rx) = lone_node(Some(secret.clone())).await;
    let session = started_session(&mut rx).await;
    let mut proxy = Proxy::bind().await;
    proxy.forward_to(node.addr);

    // A real transport, node 50, sends one message through the proxy.
    let cfg = TransportConfig {
        node: NodeId(50),
        job: wire::job_tag("transport"),
        heartbeat: Duration::from_millis(200),
        connect_timeout: Duration::from_secs(1),
        secret: Some(secret.clone()),
    };
    let mut msg = wire::decode(&meta_frame(1)[5..]).expect("a message");
    msg.from_node = NodeId(50);
    let (queue_tx, queue) = tokio::sync::mpsc::unbounded_channel();
    let (events, mut outcome) = tokio::sync::mpsc::unbounded_channel();
    queue_tx.send(message_frame(&msg)).expect("queued");
    let target = OutboundTarget {
        peer: NodeId(1),
        addr: proxy.addr.to_string(),
        session,
    };
    let connector = tokio::spawn(run_outbound(
        cfg,
        SessionId(7),
        target,
        1,
        queue_of(queue),
        events,
    ));
    // It reaches the core (which drops it: node 1 holds no role it is for).
    first_message_is_from(&mut rx, NodeId(50), "the recorded connection's message").await;
    // The connector closes its connection cleanly once its queue closes.
    drop(queue_tx);
    tokio::time::timeout(Duration::from_secs(5), connector)
        .await
        .expect("the connector ends")
        .expect("no panic");
    let ended: Option<(NodeId, u64, Disconnect)> = match outcome.try_recv() {
        Ok(TransportEvent::Disconnected(p, g, how)) => Some((p, g, how)),
        Ok(other) => panic!("{other:?}"),
        Err(_) => None,
    };
    assert_eq!(ended, None, "the recorded connection ended cleanly");

    let recorded = proxy.recordings();
    assert_eq!(recorded.len(), 1, "one connection went through the proxy");
    let original = &recorded[0];
    let up = kinds(&original.up);
    assert_eq!(up[..3], [1, 4, 2], "handshake, proof, message: {up:?}");
    assert!(up[3..].iter().all(|k| *k == 3), "then heartbeats: {up:?}");
    assert_eq!(
        kinds(&original.down)[..2],
        [1, 4],
        "the node's handshake and proof"
    );
    let (theirs_then, ours) = (first_hello(&original.down), first_hello(&original.up));
    let proof = frames(&original.up)[1].1.to_vec();
    let then = Challenge {
        job: wire::job_tag("transport"),
        connector: (NodeId(50), ours.nonce),
        acceptor: (NodeId(1), theirs_then.nonce),
    };
    assert_eq!(
        auth::verify(Some(&secret), Side::Connector, &then, &proof),
        Ok(()),
        "the recorded proof answered the recorded challenge"
    );

    // The same bytes, on a new connection straight to the node's port.
    let mut replay = TcpStream::connect(node.addr).await.expect("connects");
    replay.write_all(&original.up).await.expect("replays");
    let answer = read_until_closed(&mut replay).await;
    assert_eq!(
        kinds(&answer),
        [1, 4],
        "the node answers with a handshake and its proof, then closes"
    );
    let theirs_now = first_hello(&answer);
    assert_eq!(theirs_now.node, NodeId(1));
    assert_ne!(theirs_now.nonce, theirs_then.nonce, "a fresh challenge");
    let now = Challenge {
        acceptor: (NodeId(1), theirs_now.nonce),
        ..then
    };
    assert_eq!(
        auth::verify(Some(&secret), Side::Connector, &now, &proof),
        Err(auth::AuthError::BadProof),
        "the recorded proof does not answer it"
    );

    // A genuine peer gets through afterwards. The replayed connection was
    // closed before it connected, so had anything of the replay reached the
    // core, it would have come first.
    let mut genuine = handshake_as(
        node.addr,
        NodeId(1),
        NodeId(99),
        SessionId(1),
        Some(&secret),
    )
    .await;
    genuine.write_all(&meta_frame(1)).await.expect("writes");
    first_message_is_from(&mut rx, NodeId(99), "the genuine peer's message").await;
    let refused = logs.lines_with(&[
        "WARN",
        "inbound connection refused",
        "authentication failed",
    ]);
    assert_eq!(refused.len(), 1, "one refusal, logged: {refused:?}");
    proxy.stop();
    node.shutdown.stop();
}

/// Every event of a job, kept as it is awaited.
struct Seen {
    rx: tokio::sync::mpsc::UnboundedReceiver<(NodeId, taskgraph_core::Event)>,
    all: Vec<(NodeId, taskgraph_core::Event)>,
}

impl Seen {
    /// Waits (at most 20 s) for the next event that `f` accepts.
    async fn until(
        &mut self,
        what: &str,
        f: impl Fn(NodeId, &taskgraph_core::Event) -> bool,
    ) -> taskgraph_core::Event {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some((n, e))) => {
                    self.all.push((n, e.clone()));
                    if f(n, &e) {
                        return e;
                    }
                }
                other => panic!("no {what} within 20 s: {other:?}"),
            }
        }
    }

    /// The rest of the events, once every node has stopped.
    async fn rest(&mut self) {
        while let Some(e) = self.rx.recv().await {
            self.all.push(e);
        }
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_stale_primary_that_knows_the_secret_is_fenced_and_the_job_finishes() {
    use bytes::Bytes;
    use taskgraph_core::wire::{Body, Direction, Envelope, Reply, RequestId};
    use taskgraph_core::{DropReason, Epoch, Event, TaskId};
    const LAST_EPOCH: u64 = 30;
    let logs = Logs::capture();
    let secret = JobSecret::new("stale but still knows it").expect("secret");
    let store: Arc<dyn Store> = Arc::new(MemStoreServer::new());
    let results = Results::default();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    // Three tasks with a standby each; every node's registered address is a
    // recording proxy in front of its port.
    let mut nodes = Vec::new();
    for id in 1..=6 {
        let mut proxy = Proxy::bind().await;
        let cfg = NodeConfig::new(NodeId(id), "transport", proxy.addr.to_string(), 3, 1);
        let mut opts = NodeOptions::new(cfg, "127.0.0.1:0".parse().expect("addr"));
        opts.secret = Some(secret.clone());
        let topo = Arc::new(TreeTopology::new(2, 3).expect("tree"));
        let builder = TreeSumBuilder::new(3, LAST_EPOCH, results.clone())
            .with_pace(Duration::from_millis(100));
        let node = spawn_node(
            opts,
            store.clone(),
            topo,
            Box::new(builder),
            Some(tx.clone()),
        )
        .await
        .expect("starts");
        proxy.forward_to(node.addr);
        nodes.push((node, proxy));
    }
    drop(tx);
    let mut seen = Seen {
        rx,
        all: Vec::new(),
    };
    let (t0, t1) = (TaskId(0), TaskId(1));
    let primary_of = |seen: &Seen, t: TaskId| {
        seen.all.iter().find_map(|(n, e)| match e {
            Event::BecamePrimary {
                task, incarnation, ..
            } if *task == t => Some((*n, *incarnation)),
            _ => None,
        })
    };
    while primary_of(&seen, t0).is_none() || primary_of(&seen, t1).is_none() {
        seen.until("primaries of t0 and t1", |_, e| {
            matches!(e, Event::BecamePrimary { .. })
        })
        .await;
    }
    // A: t0's primary, soon stale. B: t1's primary, its child.
    let (a, old) = primary_of(&seen, t0).expect("t0");
    let (b, b_inc) = primary_of(&seen, t1).expect("t1");
    let a_session = seen
        .all
        .iter()
        .rev()
        .find_map(|(n, e)| match e {
            Event::SessionStarted { session } if *n == a => Some(*session),
            _ => None,
        })
        .expect("A's session started before it became primary");
    // A's meta flag, then its answer to B's request, reach B over A's
    // connection through B's proxy.
    seen.until("a meta flag from A at B", |n, e| {
        n == b
            && matches!(e, Event::MetaDelivered { from, from_incarnation, .. }
                if *from == t0 && *from_incarnation == old)
    })
    .await;
    seen.until("data from A at B", |n, e| {
        n == b
            && matches!(e, Event::DataDelivered { from, from_incarnation, .. }
                if *from == t0 && *from_incarnation == old)
    })
    .await;

    // A's process dies: nothing is cleaned up, its port closes.
    let pos = nodes.iter().position(|(n, _)| n.id == a).expect("A");
    let (a_node, a_proxy) = nodes.remove(pos);
    a_node.kill.kill();
    a_proxy.stop();
    seen.until("t0's death at B", |n, e| {
        n == b
            && matches!(e, Event::NeighbourDied { neighbour, incarnation, .. }
                if *neighbour == t0 && *incarnation == old)
    })
    .await;
    let fenced_from = seen.all.len() - 1;
    let new = match seen
        .until("t0's restart at B", |n, e| {
            n == b && matches!(e, Event::NeighbourRestarted { neighbour, .. } if *neighbour == t0)
        })
        .await
    {
        Event::NeighbourRestarted { incarnation, .. } => incarnation,
        other => unreachable!("{other:?}"),
    };
    assert!(new > old, "t0's incarnation rose from {old} to {new}");
    // The job moves on under the new primary: A's frames are of an older
    // epoch too by now.
    let b_epoch = match seen
        .until("B in epoch 2", |n, e| {
            n == b && matches!(e, Event::EpochChanged { epoch, .. } if epoch.0 >= 2)
        })
        .await
    {
        Event::EpochChanged { epoch, .. } => epoch,
        other => unreachable!("{other:?}"),
    };
    let b_addr = nodes
        .iter()
        .find(|(n, _)| n.id == b)
        .map(|(n, _)| n.addr)
        .expect("B");

    // What A sent B, as recorded by B's proxy.
    let from_a: Vec<Recorded> = nodes
        .iter()
        .find(|(n, _)| n.id == b)
        .map(|(_, p)| p.recordings())
        .expect("B's proxy")
        .into_iter()
        .filter(|r| !r.up.is_empty() && first_hello(&r.up).node == a)
        .collect();
    let first = from_a.first().expect("A connected to B through the proxy");
    assert_eq!(first_hello(&first.up).session, a_session);
    let recorded: Vec<(Vec<u8>, Envelope)> = from_a
        .iter()
        .flat_map(|r| frames(&r.up).into_iter().filter(|f| f.0 == 2))
        .map(|(_, body, whole)| (whole.to_vec(), wire::decode(body).expect("a message")))
        .collect();
    assert!(
        recorded.iter().all(|(_, m)| m.from_node == a
            && m.from_session == a_session
            && m.from_task == t0
            && m.incarnation == old),
        "{recorded:?}"
    );
    assert!(
        recorded
            .iter()
            .any(|(_, m)| matches!(m.body, Body::Meta { .. }))
            && recorded
                .iter()
                .any(|(_, m)| matches!(m.body, Body::Response { .. })),
        "a recorded meta flag and answer: {recorded:?}"
    );
    let last_seq = recorded.iter().map(|(_, m)| m.seq).max().expect("frames");

    // 1. A's recorded connection, replayed byte for byte to B's port, fails
    //    the handshake.
    let mut replay = TcpStream::connect(b_addr).await.expect("connects");
    replay.write_all(&first.up).await.expect("replays");
    assert_eq!(
        kinds(&read_until_closed(&mut replay).await),
        [1, 4],
        "B answers with a handshake and its proof, then closes"
    );

    // 2. A stale process of A that knows the secret connects as A in its
    //    old session, and sends its recorded frames again, then new ones of
    //    its old incarnation (its counter moved on), then one naming
    //    another sender (which B drops as an impostor: the end marker).
    let mut stale = handshake_as(b_addr, b, a, a_session, Some(&secret)).await;
    let mut bytes: Vec<u8> = recorded.iter().flat_map(|(f, _)| f.clone()).collect();
    let envelope = |seq: u64, epoch: Epoch, body: Body| Envelope {
        version: PROTOCOL_VERSION,
        job: wire::job_tag("transport"),
        from_node: a,
        from_session: a_session,
        seq,
        from_task: t0,
        incarnation: old,
        epoch,
        to_task: t1,
        to_incarnation: b_inc,
        body,
    };
    // A bogus answer to t1's first request (answered long ago).
    let poison = Bytes::from_static(&[0xff; 8]);
    let forged = [
        envelope(
            last_seq + 1,
            b_epoch,
            Body::Meta {
                direction: Direction::ToChildren,
                flag: 1000,
                meta: Bytes::from_static(b"param"),
            },
        ),
        // An older epoch as well as an older incarnation.
        envelope(
            last_seq + 2,
            Epoch(0),
            Body::Meta {
                direction: Direction::ToChildren,
                flag: 0,
                meta: Bytes::from_static(b"param"),
            },
        ),
        envelope(
            last_seq + 3,
            b_epoch,
            Body::Request {
                id: RequestId(1_000_000),
                req: Bytes::from_static(b"grad"),
            },
        ),
        envelope(
            last_seq + 4,
            b_epoch,
            Body::Response {
                id: RequestId(0),
                result: Reply::Data(poison),
            },
        ),
    ];
    for m in &forged {
        bytes.extend_from_slice(&frame(2, &wire::encode(m)));
    }
    let mut marker = envelope(last_seq + 5, b_epoch, forged[0].body.clone());
    marker.from_node = NodeId(77);
    bytes.extend_from_slice(&frame(2, &wire::encode(&marker)));
    stale.write_all(&bytes).await.expect("writes");
    seen.until("the end marker dropped at B", |n, e| {
        n == b
            && *e
                == Event::MessageDropped {
                    from: a,
                    reason: DropReason::Impostor,
                }
    })
    .await;
    // Everything sent to B in A's name since B saw A die was dropped: the
    // replayed frames as duplicates, the new ones as fenced; the replayed
    // connection reached nothing (its frames would show up as more
    // duplicates).
    let drops: Vec<DropReason> = seen.all[fenced_from..]
        .iter()
        .filter_map(|(n, e)| match e {
            Event::MessageDropped { from, reason } if *n == b && *from == a => Some(*reason),
            _ => None,
        })
        .collect();
    let mut expected = vec![DropReason::OutOfOrder; recorded.len()];
    expected.extend([DropReason::Fenced; 4]);
    expected.push(DropReason::Impostor);
    assert_eq!(drops, expected);

    // The job carries on and ends with every epoch's answer right.
    for (n, proxy) in nodes {
        let exit = tokio::time::timeout(Duration::from_secs(60), n.join)
            .await
            .expect("in time");
        assert!(
            matches!(exit, Ok(Ok(NodeExit::JobEnded(ref r))) if r.is_completed()),
            "{exit:?}"
        );
        proxy.stop();
    }
    let exit = a_node.join.await.expect("no panic").expect("ran");
    assert_eq!(exit, NodeExit::Killed);
    let all = results.all();
    assert!(
        (1..=LAST_EPOCH).all(|e| all.iter().any(|r| r.epoch.0 == e))
            && all.iter().all(|r| r.total == r.expected),
        "{all:?}"
    );
    seen.rest().await;

    // B's application heard nothing from A's incarnation after its death,
    // and no node's application heard anything twice.
    let from_old = seen.all[fenced_from..].iter().find(|(n, e)| {
        *n == b
            && match e {
                Event::MetaDelivered {
                    from,
                    from_incarnation,
                    ..
                }
                | Event::Served {
                    from,
                    from_incarnation,
                    ..
                }
                | Event::DataDelivered {
                    from,
                    from_incarnation,
                    ..
                } => *from == t0 && *from_incarnation == old,
                _ => false,
            }
    });
    assert_eq!(from_old, None, "delivered from the fenced incarnation");
    let mut metas = std::collections::BTreeSet::new();
    let mut served = std::collections::BTreeSet::new();
    let mut data = std::collections::BTreeSet::new();
    for (n, e) in &seen.all {
        let fresh = match e {
            Event::MetaDelivered {
                task,
                incarnation,
                from,
                from_incarnation,
                epoch,
                flag,
                direction,
                ..
            } => metas.insert((
                *n,
                *task,
                *incarnation,
                *from,
                *from_incarnation,
                *epoch,
                *flag,
                *direction,
            )),
            Event::Served {
                task,
                incarnation,
                from,
                from_incarnation,
                id,
                ..
            } => served.insert((*n, *task, *incarnation, *from, *from_incarnation, *id)),
            Event::DataDelivered {
                task,
                incarnation,
                id,
                ..
            } => data.insert((*n, *task, *incarnation, *id)),
            _ => true,
        };
        assert!(fresh, "delivered twice: {e:?} on {n}");
    }
    // Each drop of a fenced frame was logged as a warning, and so was the
    // refused replay. (Duplicates are routine after a reconnect and are
    // logged at debug level.)
    let fenced = seen
        .all
        .iter()
        .filter(|(n, e)| {
            *n == b
                && *e
                    == Event::MessageDropped {
                        from: a,
                        reason: DropReason::Fenced,
                    }
        })
        .count();
    let warned = logs.lines_with(&[
        "WARN",
        "message dropped",
        &format!("node={b}"),
        &format!("from={a}"),
        "reason=Fenced",
    ]);
    assert_eq!(warned.len(), fenced, "{warned:?}");
    let refused = logs.lines_with(&[
        "WARN",
        &format!("node={b}"),
        "inbound connection refused",
        "authentication failed",
    ]);
    assert_eq!(refused.len(), 1, "{refused:?}");
}
