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
async fn lone_node(
    secret: Option<JobSecret>,
) -> (
    NodeHandle,
    tokio::sync::mpsc::UnboundedReceiver<(NodeId, taskgraph_core::Event)>,
) {
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
    let h = Hello {
        magic: 0x5447_5246,
        version,
        job: wire::job_tag(job),
        node: NodeId(99),
        session: SessionId(1),
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
/// "transport" and completes the handshake, proving with `secret`.
async fn handshake(addr: SocketAddr, node: NodeId, secret: Option<&JobSecret>) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.expect("connects");
    s.write_all(&hello("transport", PROTOCOL_VERSION))
        .await
        .expect("hello");
    let (kind, body) = read_frame(&mut s).await;
    assert_eq!(kind, 1, "the node answers with its handshake");
    let theirs: Hello = postcard::from_bytes(&body).expect("a handshake");
    let (kind, _their_proof) = read_frame(&mut s).await;
    assert_eq!(kind, 4, "then its proof");
    let challenge = Challenge {
        job: wire::job_tag("transport"),
        connector: (NodeId(99), 5),
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

/// Opens one outbound connection to `addr` expecting `expected` and returns
/// how it ended, as the transport reports it to the node.
async fn outbound_end(
    addr: SocketAddr,
    peer: NodeId,
    expected: SessionId,
    secret: Option<JobSecret>,
) -> taskgraph_core::Disconnect {
    use taskgraph_runtime::transport::{
        run_outbound, OutboundTarget, Queue, TransportConfig, TransportEvent,
    };
    let cfg = TransportConfig {
        node: NodeId(50),
        job: wire::job_tag("transport"),
        heartbeat: Duration::from_millis(200),
        connect_timeout: Duration::from_millis(500),
        secret,
    };
    let (_queue_tx, frames) = tokio::sync::mpsc::unbounded_channel();
    let queue = Queue {
        frames,
        bytes: Default::default(),
        written: Default::default(),
    };
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
    let session = loop {
        match tokio::time::timeout(Duration::from_secs(5), rx.recv()).await {
            Ok(Some((_, taskgraph_core::Event::SessionStarted { session }))) => break session,
            Ok(Some(_)) => {}
            other => panic!("the node never started a session: {other:?}"),
        }
    };
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
