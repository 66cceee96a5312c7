//! One `Node` driven by arbitrary inputs decoded from the fuzz bytes: store
//! results (from a real MemStore, or failures), foreign watch events, time
//! jumps, disconnects with any evidence, and messages from any sender. It
//! must never panic, and within its own view must keep S3: one role at a
//! time, and a task's incarnations it becomes primary of only ever rise.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use taskgraph_core::keys::Keys;
use taskgraph_core::store::{KeyValue, MemStore, StoreError, StoreOp, WatchEvent, WatchEventKind, WatchResponse};
use taskgraph_core::testkit::tree_sum::{Results, TreeSumBuilder};
use taskgraph_core::wire;
use taskgraph_core::{Action, Disconnect, Event, Incarnation, Instant, Node, NodeConfig, NodeId, SessionId, TaskId, TreeTopology};

const TASKS: u32 = 3;

fuzz_target!(|data: &[u8]| {
    let cfg = NodeConfig::new(NodeId(1), "fuzz", "127.0.0.1:7000", TASKS, 1);
    let topo = Arc::new(TreeTopology::new(2, TASKS).expect("tree"));
    let builder = Box::new(TreeSumBuilder::new(TASKS, 5, Results::default()));
    let mut now_ms = 0u64;
    let Ok(mut node) = Node::new(Instant::from_millis(now_ms), cfg, topo, builder) else {
        return;
    };
    let keys = Keys::new("taskgraph", "fuzz");
    let mut store = MemStore::new();
    // Store operations not answered yet, and the node's watches.
    let mut pending: VecDeque<(taskgraph_core::OpId, StoreOp)> = VecDeque::new();
    let mut watches: BTreeMap<i64, ()> = BTreeMap::new();
    // S3 within this node: its current role, and the highest incarnation it
    // became primary of, per task.
    let mut acting: Option<(TaskId, Incarnation)> = None;
    let mut highest: BTreeMap<TaskId, Incarnation> = BTreeMap::new();
    let mut drain = |node: &mut Node,
                     pending: &mut VecDeque<(taskgraph_core::OpId, StoreOp)>,
                     acting: &mut Option<(TaskId, Incarnation)>| {
        while let Some(a) = node.poll_action() {
            match a {
                Action::Store { id, op } => pending.push_back((id, op)),
                Action::Event(Event::BecamePrimary { task, incarnation, .. }) => {
                    assert!(acting.is_none(), "became primary of {task} while acting as {acting:?}");
                    let h = highest.entry(task).or_insert(Incarnation(0));
                    assert!(incarnation > *h, "incarnation {incarnation:?} of {task} not above {h:?}");
                    *h = incarnation;
                    *acting = Some((task, incarnation));
                }
                Action::Event(Event::SteppedDown { .. } | Event::SessionLost { .. } | Event::Stopped { .. }) => {
                    *acting = None;
                }
                _ => {}
            }
        }
        if let (Some((t, i)), Some(p)) = (*acting, node.primary_of()) {
            assert_eq!((t, i), p, "the node's own view of its role");
        }
    };
    drain(&mut node, &mut pending, &mut acting);
    let mut bytes = data;
    while let Some((&op, rest)) = bytes.split_first() {
        bytes = rest;
        let arg = bytes.first().copied().unwrap_or(0);
        let now = Instant::from_millis(now_ms);
        match op % 8 {
            // Answer the oldest store op from the store (most of the time).
            0..=2 => {
                if let Some((id, sop)) = pending.pop_front() {
                    let watch = matches!(sop, StoreOp::Watch { .. });
                    let r = store.apply(now, sop);
                    if let (true, Ok(taskgraph_core::store::StoreResponse::WatchCreated { watch })) = (watch, &r) {
                        watches.insert(*watch, ());
                    }
                    node.handle_store_result(now, id, r);
                }
            }
            // Fail the oldest store op.
            3 => {
                if let Some((id, _)) = pending.pop_front() {
                    let e = if arg % 2 == 0 {
                        StoreError::Unavailable("fuzz".into())
                    } else {
                        StoreError::LeaseNotFound(i64::from(arg))
                    };
                    node.handle_store_result(now, id, Err(e));
                }
            }
            // Deliver what the store's watches have.
            4 => {
                while let Some(resp) = store.poll_watch_response() {
                    node.handle_store_event(now, resp);
                }
            }
            // Time passes (up to 5 s).
            5 => {
                now_ms += u64::from(arg) * 20;
                store.expire_leases(Instant::from_millis(now_ms));
                node.handle_timeout(Instant::from_millis(now_ms));
            }
            // A foreign watch event: a key of the job with arbitrary bytes.
            6 => {
                let n = usize::from(arg % 16).min(bytes.len());
                let (value, rest) = bytes.split_at(n);
                bytes = rest;
                let key = match arg % 5 {
                    0 => keys.key(taskgraph_core::keys::Key::Primary(TaskId(u32::from(arg) % TASKS))),
                    1 => keys.key(taskgraph_core::keys::Key::Node(NodeId(u64::from(arg % 4)))),
                    2 => keys.key(taskgraph_core::keys::Key::Epoch),
                    3 => keys.key(taskgraph_core::keys::Key::Exit),
                    _ => keys.key(taskgraph_core::keys::Key::Standby(TaskId(u32::from(arg) % TASKS), 0)),
                };
                if let Some(&watch) = watches.keys().next_back() {
                    let rev = store.revision() + 1 + i64::from(arg);
                    let kv = KeyValue { key, value: Bytes::copy_from_slice(value), create_revision: rev, mod_revision: rev, version: 1, lease: 0 };
                    let kind = if arg % 7 == 0 { WatchEventKind::Delete } else { WatchEventKind::Put };
                    node.handle_store_event(now, WatchResponse { watch, events: vec![WatchEvent { kind, kv }], compact_revision: None, canceled: arg % 31 == 0 });
                }
            }
            // A message (whatever decodes) or a disconnect with any evidence.
            _ => {
                let from = NodeId(u64::from(arg % 4));
                if arg % 3 == 0 {
                    let how = match arg % 9 {
                        0 => Disconnect::Refused,
                        3 => Disconnect::OtherSession(SessionId(i64::from(arg))),
                        _ => Disconnect::Broken,
                    };
                    node.handle_disconnect(now, from, how);
                } else {
                    let n = usize::from(arg).min(bytes.len());
                    let (frame, rest) = bytes.split_at(n);
                    bytes = rest;
                    if let Ok(msg) = wire::decode(frame) {
                        node.handle_message(now, from, msg);
                    }
                }
            }
        }
        bytes = bytes.get(1..).unwrap_or(&[]);
        drain(&mut node, &mut pending, &mut acting);
    }
});
