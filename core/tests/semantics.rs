//! One test per semantic of the design contract (S1–S19), on the in-memory
//! cluster harness. Each asserts the exact callbacks the application saw.

use bytes::Bytes;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use taskgraph_core::testkit::recorder::{recorded_cluster, Call, Log, React};
use taskgraph_core::testkit::{Cluster, ClusterConfig};
use taskgraph_core::wire::{job_tag, Body, Direction, Envelope, RequestId};
use taskgraph_core::*;

const T0: TaskId = TaskId(0);
const T1: TaskId = TaskId(1);
const T2: TaskId = TaskId(2);

fn n(i: u64) -> NodeId {
    NodeId(i)
}

fn at(ms: u64) -> Instant {
    Instant::from_millis(ms)
}

/// A cluster over a binary tree of `tasks` tasks whose nodes start 50 ms
/// apart, so node i+1 joins after node i has claimed its slot.
fn cluster(tasks: u32, standbys: u32, spares: u32, react: React) -> (Cluster, Log) {
    let mut cfg = ClusterConfig::new(7, tasks, standbys, spares);
    cfg.start_gap = Duration::from_millis(50);
    cluster_with(cfg, react)
}

fn cluster_with(cfg: ClusterConfig, react: React) -> (Cluster, Log) {
    let tasks = cfg.num_tasks;
    recorded_cluster(
        cfg,
        Arc::new(TreeTopology::new(2, tasks).expect("valid tree")),
        react,
    )
}

fn quiet() -> React {
    Arc::new(|_, _, _| {})
}

fn primary(c: &Cluster, t: TaskId) -> NodeId {
    c.primary_of(t)
        .unwrap_or_else(|| panic!("{t} has no primary"))
}

fn incarnation(c: &Cluster, t: TaskId) -> Incarnation {
    let p = primary(c, t);
    c.node(p)
        .and_then(|x| x.primary_of())
        .map(|x| x.1)
        .expect("primary has an incarnation")
}

fn no_violations(c: &mut Cluster) {
    let v = c.finish();
    assert!(v.is_empty(), "checker found: {v:?}");
}

/// Calls of `node` other than its start (init, standby, first epoch).
fn after_start(log: &Log, node: NodeId) -> Vec<Call> {
    log.of_node(node)
        .into_iter()
        .filter(|c| {
            !matches!(
                c,
                Call::Init { .. } | Call::BecameStandby | Call::EpochChanged(Epoch(0))
            )
        })
        .collect()
}

/// Moves the job to `epoch` as an operator would (a put of the epoch key).
fn set_epoch(c: &mut Cluster, epoch: u64) {
    let op = store::StoreOp::Put {
        key: "/taskgraph/sim/epoch".into(),
        value: Bytes::from(epoch.to_string()),
        lease: 0,
    };
    c.store_apply(op).expect("store accepts the put");
}

fn meta(s: &'static str) -> Bytes {
    Bytes::from_static(s.as_bytes())
}

#[test]
fn s1_first_nodes_become_primaries_then_standbys_then_spares() {
    let (mut c, log) = cluster(3, 1, 2, quiet());
    c.run_until(at(2000));
    for (node, task) in [(1, T0), (2, T1), (3, T2)] {
        assert_eq!(
            c.primary_of(task),
            Some(n(node)),
            "node {node} claims the primary slot of {task}"
        );
        assert_eq!(
            log.of_node(n(node)),
            vec![Call::Init { primary: true }, Call::EpochChanged(Epoch(0))]
        );
    }
    for (node, task) in [(4, T0), (5, T1), (6, T2)] {
        assert!(
            matches!(c.node(n(node)).map(|x| x.role()), Some(Role::Standby { task: t, .. }) if t == task),
            "node {node} is the standby of {task}"
        );
        assert_eq!(
            log.of_node(n(node)),
            vec![Call::Init { primary: false }, Call::BecameStandby]
        );
    }
    for node in [7, 8] {
        assert_eq!(c.node(n(node)).map(|x| x.role()), Some(Role::Spare));
        assert!(
            log.of_node(n(node)).is_empty(),
            "spare {node} waits without init"
        );
    }
    no_violations(&mut c);
}

#[test]
fn s2_primary_cut_from_store_steps_down_before_its_lease_can_expire() {
    let (mut c, _log) = cluster(3, 1, 0, quiet());
    c.run_until(at(1000));
    let old = primary(&c, T1);
    c.cut_store(old);
    c.run_until(at(6000));
    let stepped = c
        .events()
        .iter()
        .find(|(_, node, e)| {
            *node == old && matches!(e, Event::SteppedDown { task, .. } if *task == T1)
        })
        .map(|(t, _, e)| (*t, e.clone()))
        .expect("the cut primary stepped down");
    assert!(
        matches!(
            stepped.1,
            Event::SteppedDown {
                reason: StepDownReason::LeaseDeadline,
                ..
            }
        ),
        "it stepped down at its own deadline: {stepped:?}"
    );
    let cfg = c.node(old).map(|x| x.config().clone()).expect("node is up");
    assert!(
        stepped.0 <= at(1000) + (cfg.ttl - cfg.step_down_margin),
        "step-down at {} is within ttl - margin of the cut",
        stepped.0
    );
    let promoted = c
        .events()
        .iter()
        .find(|(_, node, e)| {
            *node != old && matches!(e, Event::BecamePrimary { task, .. } if *task == T1)
        })
        .map(|(t, _, _)| *t)
        .expect("a standby took over");
    assert!(
        stepped.0 < promoted,
        "old primary stepped down ({}) before the new one took over ({promoted})",
        stepped.0
    );
    no_violations(&mut c);
}

#[test]
fn s3_incarnations_increase_and_messages_from_a_fenced_incarnation_are_dropped() {
    let (mut c, log) = cluster(3, 1, 0, quiet());
    c.run_until(at(1000));
    let old_inc = incarnation(&c, T0);
    let old = primary(&c, T0);
    c.crash(old);
    c.run_until(at(6000));
    let new_inc = incarnation(&c, T0);
    assert!(
        new_inc > old_inc,
        "incarnation rose from {old_inc} to {new_inc}"
    );
    let incs: Vec<Incarnation> = c
        .events()
        .iter()
        .filter_map(|(_, _, e)| match e {
            Event::BecamePrimary {
                task, incarnation, ..
            } if *task == T0 => Some(*incarnation),
            _ => None,
        })
        .collect();
    assert_eq!(incs, vec![old_inc, new_inc]);

    let child = primary(&c, T1);
    let child_inc = incarnation(&c, T1);
    let forged = |inc: Incarnation, seq: u64| Envelope {
        version: PROTOCOL_VERSION,
        job: job_tag("sim"),
        from_node: old,
        from_session: SessionId(999_999),
        seq,
        from_task: T0,
        incarnation: inc,
        epoch: Epoch(0),
        to_task: T1,
        to_incarnation: child_inc,
        body: Body::Meta {
            direction: Direction::ToChildren,
            flag: 7,
            meta: meta("stale"),
        },
    };
    let before = log.of_node(child).len();
    let msg = forged(old_inc, 1);
    c.inject_message(old, child, msg);
    let last = c.events().last().map(|(_, _, e)| e.clone());
    assert_eq!(
        last,
        Some(Event::MessageDropped {
            from: old,
            reason: DropReason::Fenced
        })
    );
    assert_eq!(
        log.of_node(child).len(),
        before,
        "nothing delivered from the fenced incarnation"
    );
    let msg = forged(new_inc, 2);
    c.inject_message(old, child, msg);
    assert_eq!(
        log.of_node(child)[before..],
        [Call::ParentMeta(T0, meta("stale"))],
        "the current incarnation is accepted"
    );
}

#[test]
fn s4_child_died_and_restarted_delivered_once_in_order() {
    let (mut c, log) = cluster(3, 1, 0, quiet());
    c.run_until(at(1000));
    let (p0, p2) = (primary(&c, T0), primary(&c, T2));
    c.crash(primary(&c, T1));
    c.run_until(at(8000));
    assert_eq!(
        after_start(&log, p0),
        vec![Call::ChildDied(T1), Call::ChildRestarted(T1)]
    );
    // Latency in virtual time: the death is noticed when the lease expires
    // (TTL after the last renewal), the restart one promotion later.
    let restarted = c
        .events()
        .iter()
        .find(|(_, node, e)| *node == p0 && matches!(e, Event::NeighbourRestarted { .. }))
        .map(|(t, _, _)| *t)
        .expect("restart reported");
    let ttl = c.config().ttl;
    let took = restarted.saturating_duration_since(at(1000));
    assert!(
        took > ttl - Duration::from_millis(600) && took < ttl + Duration::from_millis(300),
        "crash to restarted: {took:?}"
    );
    assert!(
        after_start(&log, p2).is_empty(),
        "t2 is not a neighbour of t1"
    );
    no_violations(&mut c);
}

#[test]
fn s4_parent_died_delivered_once_to_every_child() {
    let (mut c, log) = cluster(3, 1, 0, quiet());
    c.run_until(at(1000));
    let (p1, p2) = (primary(&c, T1), primary(&c, T2));
    c.crash(primary(&c, T0));
    c.run_until(at(8000));
    for p in [p1, p2] {
        assert_eq!(
            after_start(&log, p),
            vec![Call::ParentDied(T0), Call::ParentRestarted(T0)]
        );
    }
    no_violations(&mut c);
}

#[test]
fn s5_first_standby_in_succession_is_promoted() {
    // Two tasks, two standbys each: nodes 3 and 5 are t0's standbys, in that order.
    let (mut c, log) = cluster(2, 2, 0, quiet());
    c.run_until(at(1000));
    assert_eq!(c.primary_of(T0), Some(n(1)));
    c.crash(n(1));
    c.run_until(at(8000));
    assert_eq!(c.primary_of(T0), Some(n(3)), "the first standby took over");
    assert_eq!(
        log.of_node(n(3)),
        vec![
            Call::Init { primary: false },
            Call::BecameStandby,
            Call::BecamePrimary,
            Call::EpochChanged(Epoch(0))
        ]
    );
    assert_eq!(
        log.of_node(n(5)),
        vec![Call::Init { primary: false }, Call::BecameStandby],
        "the second waits"
    );
    assert_eq!(
        after_start(&log, n(2)),
        vec![Call::ParentDied(T0), Call::ParentRestarted(T0)]
    );
    no_violations(&mut c);
}

#[test]
fn s5_spare_takes_a_task_without_standby() {
    let (mut c, log) = cluster(2, 0, 1, quiet());
    c.run_until(at(1000));
    assert!(log.of_node(n(3)).is_empty());
    c.crash(n(2));
    c.run_until(at(8000));
    assert_eq!(c.primary_of(T1), Some(n(3)));
    assert_eq!(
        log.of_node(n(3)),
        vec![Call::Init { primary: true }, Call::EpochChanged(Epoch(0))]
    );
    no_violations(&mut c);
}

#[test]
fn s6_clean_stop_revokes_the_lease_and_fails_over_at_once() {
    let (mut c, _log) = cluster(2, 1, 0, quiet());
    c.run_until(at(1000));
    let old = primary(&c, T1);
    c.shutdown(old);
    let stopped_at = c.now();
    let done = c.run_until_pred(at(3000), |c| c.primary_of(T1).is_some_and(|p| p != old));
    assert!(done, "a standby took over");
    let took = c.now().saturating_duration_since(stopped_at);
    assert!(
        took < Duration::from_millis(200),
        "failover after a clean stop took {took:?}, not a TTL"
    );
    assert!(c.node(old).is_some_and(|x| x.is_stopped()));
    no_violations(&mut c);
}

/// A job in which t1 flags meta to its parent t0 at epoch 0, so t1's
/// primary holds a connection to t0's primary.
fn child_talks_to_parent() -> (Cluster, Log) {
    let react: React = Arc::new(|_, call, ctx| {
        if *call == Call::EpochChanged(Epoch(0)) && ctx.task() == T1 {
            ctx.flag_meta_to_parents(meta("up"))
                .expect("the context refused a command");
        }
    });
    cluster(2, 1, 0, react)
}

/// When `task` got a primary other than `old`, after `since`.
fn promoted_after(c: &Cluster, task: TaskId, old: NodeId, since: Instant) -> Option<Instant> {
    c.events()
        .iter()
        .find(|(t, node, e)| {
            *t >= since
                && *node != old
                && matches!(e, Event::BecamePrimary { task: x, .. } if *x == task)
        })
        .map(|(t, _, _)| *t)
}

fn peers_gone(c: &Cluster) -> Vec<(NodeId, NodeId, Disconnect)> {
    c.events()
        .iter()
        .filter_map(|(_, by, e)| match e {
            Event::PeerGone { node, evidence, .. } => Some((*by, *node, *evidence)),
            _ => None,
        })
        .collect()
}

#[test]
fn s6_process_death_seen_as_a_refused_connection_fails_over_without_waiting_for_the_ttl() {
    let (mut c, log) = child_talks_to_parent();
    c.run_until(at(1000));
    let old = primary(&c, T0);
    let child = primary(&c, T1);
    c.crash(old);
    let crashed = c.now();
    c.run_until(at(5000));
    let promoted = promoted_after(&c, T0, old, crashed).expect("a standby took over");
    let took = promoted.saturating_duration_since(crashed);
    assert!(
        took < Duration::from_millis(200),
        "failover after a process death took {took:?}; the TTL is 2 s"
    );
    assert_eq!(
        peers_gone(&c),
        vec![(child, old, Disconnect::Refused)],
        "the child revoked the dead primary's lease, once"
    );
    assert_eq!(
        after_start(&log, child)
            .into_iter()
            .filter(|x| matches!(x, Call::ParentDied(_) | Call::ParentRestarted(_)))
            .collect::<Vec<_>>(),
        vec![Call::ParentDied(T0), Call::ParentRestarted(T0)]
    );
    no_violations(&mut c);
}

#[test]
fn s6_partitioned_primary_is_not_revoked_and_failover_waits_for_its_lease() {
    let (mut c, _log) = child_talks_to_parent();
    c.run_until(at(1000));
    let old = primary(&c, T0);
    c.partition_node(old);
    c.cut_store(old);
    let cut = c.now();
    c.run_until(at(6000));
    assert_eq!(
        peers_gone(&c),
        vec![],
        "a partition is no evidence of death"
    );
    let promoted = promoted_after(&c, T0, old, cut).expect("a standby took over");
    let took = promoted.saturating_duration_since(cut);
    // Its lease was renewed at most one renew interval before the cut, and
    // lasts a TTL from there.
    let cfg = c.node(old).map(|x| x.config().clone()).expect("node is up");
    assert!(
        took >= cfg.ttl - cfg.renew_interval,
        "a partitioned primary was replaced after {took:?}, before its lease could expire"
    );
    no_violations(&mut c);
}

#[test]
fn s6_a_restarted_process_answering_with_a_new_session_ends_the_old_one() {
    let (mut c, _log) = child_talks_to_parent();
    c.run_until(at(1000));
    let old = primary(&c, T0);
    let old_session = c.node(old).map(Node::session).expect("up");
    // The process dies and is back at once, before anyone saw a refusal.
    c.crash(old);
    c.restart(old);
    let crashed = c.now();
    c.run_until(at(5000));
    // The new process finds its predecessor's record at its own address
    // when it registers, and ends that session itself.
    let gone = peers_gone(&c);
    assert_eq!(gone.len(), 1, "one revocation: {gone:?}");
    assert_eq!((gone[0].0, gone[0].1), (old, old));
    assert!(
        matches!(gone[0].2, Disconnect::OtherSession(s) if s != old_session),
        "the evidence is the new session: {gone:?}"
    );
    let promoted = promoted_after(&c, T0, old, crashed).expect("a standby took over");
    assert!(
        promoted.saturating_duration_since(crashed) < Duration::from_millis(200),
        "failover took {:?}",
        promoted.saturating_duration_since(crashed)
    );
    no_violations(&mut c);
}

#[test]
fn s7_too_many_failures_end_the_job_naming_the_task() {
    let mut cfg = ClusterConfig::new(3, 2, 0, 3);
    cfg.start_gap = Duration::from_millis(50);
    cfg.max_failures = 2;
    let (mut c, log) = cluster_with(cfg, quiet());
    c.run_until(at(1000));
    for round in 0..4u64 {
        if let Some(p) = c.primary_of(T1) {
            c.crash(p);
        }
        c.run_until(at(1000 + (round + 1) * 4000));
    }
    let expected = ExitReason::TooManyFailures {
        task: T1,
        failures: 3,
        window_ms: 60_000,
    };
    assert!(
        expected.to_string().contains("task t1 failed 3 times"),
        "{expected}"
    );
    let exits: Vec<Call> = log
        .all()
        .into_iter()
        .filter(|l| matches!(l.call, Call::Exit(_)))
        .map(|l| l.call)
        .collect();
    assert!(!exits.is_empty());
    assert!(
        exits.iter().all(|e| *e == Call::Exit(expected.clone())),
        "{exits:?}"
    );
    assert!(
        c.node_ids().iter().all(|x| !c.is_up(*x)),
        "every node stopped"
    );
    assert_eq!(c.checker().exits().first(), Some(&expected));
}

#[test]
fn s8_spares_fill_standby_slots_and_may_join_any_time() {
    let (mut c, log) = cluster(2, 1, 1, quiet());
    c.run_until(at(1000));
    let late = c.add_node();
    c.run_until(at(1500));
    assert!(
        log.of_node(n(5)).is_empty() && log.of_node(late).is_empty(),
        "both wait as spares"
    );
    // t0's standby (node 3) is promoted; its slot is free again.
    c.crash(n(1));
    c.run_until(at(8000));
    assert_eq!(c.primary_of(T0), Some(n(3)));
    assert_eq!(
        log.of_node(n(5)),
        vec![Call::Init { primary: false }, Call::BecameStandby],
        "first spare fills it"
    );
    assert!(
        log.of_node(late).is_empty(),
        "the later spare keeps waiting"
    );
    no_violations(&mut c);
}

#[test]
fn s9_advance_epoch_is_compare_and_swap() {
    // Both children advance from epoch 0 at about the same time: one wins.
    let react: React = Arc::new(|_, call, ctx| {
        if *call == Call::ParentMeta(T0, meta("go")) {
            ctx.advance_epoch();
        }
        if *call == Call::EpochChanged(Epoch(0)) && ctx.task() == T0 {
            ctx.flag_meta_to_children(meta("go"))
                .expect("the context refused a command");
        }
    });
    let mut cfg = ClusterConfig::new(9, 3, 0, 0);
    cfg.msg_delay = (Duration::from_millis(5), Duration::from_millis(5));
    cfg.store_delay = (Duration::from_millis(10), Duration::from_millis(10));
    let (mut c, log) = cluster_with(cfg, react);
    c.run_until(at(3000));
    let rejected: Vec<_> = log
        .all()
        .into_iter()
        .filter(|l| matches!(l.call, Call::AdvanceRejected(_)))
        .collect();
    assert_eq!(
        rejected.len(),
        1,
        "exactly one advance from 0 lost: {rejected:?}"
    );
    assert_eq!(rejected[0].call, Call::AdvanceRejected(Epoch(0)));
    for t in [T0, T1, T2] {
        assert_eq!(
            c.node(primary(&c, t)).map(|x| x.epoch()),
            Some(Epoch(1)),
            "the job is at epoch 1, not 2"
        );
    }
    no_violations(&mut c);
}

#[test]
fn s10_epochs_once_in_order_and_promoted_node_starts_at_current() {
    let react: React = Arc::new(|_, call, ctx| {
        if let Call::EpochChanged(e) = call {
            if ctx.task() == T0 && (1..5).contains(&e.0) {
                ctx.advance_epoch();
            }
        }
    });
    let (mut c, log) = cluster(3, 1, 0, react);
    c.run_until(at(1000));
    set_epoch(&mut c, 1);
    c.run_until(at(2000));
    let epochs = |node: NodeId| -> Vec<u64> {
        log.of_node(node)
            .into_iter()
            .filter_map(|c| {
                if let Call::EpochChanged(e) = c {
                    Some(e.0)
                } else {
                    None
                }
            })
            .collect()
    };
    for t in [T0, T1, T2] {
        assert_eq!(epochs(primary(&c, t)), vec![0, 1, 2, 3, 4, 5], "{t}");
    }
    let old = primary(&c, T1);
    c.crash(old);
    c.run_until(at(8000));
    let new = primary(&c, T1);
    assert_eq!(
        log.of_node(new),
        vec![
            Call::Init { primary: false },
            Call::BecameStandby,
            Call::BecamePrimary,
            Call::EpochChanged(Epoch(5))
        ]
    );
    no_violations(&mut c);
}

#[test]
fn s11_after_an_epoch_change_old_meta_and_requests_are_dropped() {
    // t1 asks t0 for data in epoch 0; t0 holds the request and advances
    // instead; its late answer must not reach t1.
    let held: Arc<Mutex<Vec<ServeId>>> = Arc::default();
    let h = held.clone();
    let react: React = Arc::new(move |_, call, ctx| match call {
        Call::EpochChanged(Epoch(0)) if ctx.task() == T1 => {
            ctx.request_data(T0, meta("q"))
                .expect("the context refused a command");
        }
        Call::Serve { id, .. } => {
            if let Ok(mut v) = h.lock() {
                v.push(*id);
            }
            ctx.advance_epoch();
        }
        Call::EpochChanged(Epoch(1)) if ctx.task() == T0 => {
            for id in h.lock().map(|v| v.clone()).unwrap_or_default() {
                ctx.respond(id, meta("late"))
                    .expect("the context refused a command");
            }
        }
        _ => {}
    });
    let (mut c, log) = cluster(3, 0, 0, react);
    c.run_until(at(2000));
    assert_eq!(held.lock().map(|v| v.len()).unwrap_or(0), 1, "served once");
    let p1 = primary(&c, T1);
    assert!(
        !log.of_node(p1)
            .iter()
            .any(|c| matches!(c, Call::DataReady { .. })),
        "no answer from epoch 0"
    );
    assert_eq!(c.node(p1).map(|x| x.epoch()), Some(Epoch(1)));
    // A meta flag tagged epoch 0 arriving now is dropped.
    let (p0, before) = (primary(&c, T0), log.of_node(p1).len());
    let stale = Envelope {
        version: PROTOCOL_VERSION,
        job: job_tag("sim"),
        from_node: p0,
        from_session: SessionId(999_999),
        seq: 1,
        from_task: T0,
        incarnation: incarnation(&c, T0),
        epoch: Epoch(0),
        to_task: T1,
        to_incarnation: incarnation(&c, T1),
        body: Body::Meta {
            direction: Direction::ToChildren,
            flag: 0,
            meta: meta("old"),
        },
    };
    c.inject_message(p0, p1, stale);
    assert_eq!(log.of_node(p1).len(), before);
    assert_eq!(
        c.events().last().map(|e| e.2.clone()),
        Some(Event::MessageDropped {
            from: p0,
            reason: DropReason::StaleEpoch
        })
    );
    no_violations(&mut c);
}

#[test]
fn s12_meta_reaches_every_receiver_incarnation_once() {
    let react: React = Arc::new(|_, call, ctx| {
        if *call == Call::EpochChanged(Epoch(0)) && ctx.task() == T0 {
            ctx.flag_meta_to_children(meta("m"))
                .expect("the context refused a command");
        }
    });
    let (mut c, log) = cluster(2, 1, 0, react);
    c.run_until(at(1000));
    let old = primary(&c, T1);
    c.crash(old);
    c.run_until(at(8000));
    let new = primary(&c, T1);
    assert_ne!(old, new);
    let metas = |node| {
        log.of_node(node)
            .into_iter()
            .filter(|c| matches!(c, Call::ParentMeta(..)))
            .collect::<Vec<_>>()
    };
    assert_eq!(metas(old), vec![Call::ParentMeta(T0, meta("m"))]);
    assert_eq!(
        metas(new),
        vec![Call::ParentMeta(T0, meta("m"))],
        "re-sent to the promoted standby"
    );
    no_violations(&mut c);
}

#[test]
fn s13_data_request_round_trip_with_payload_unchanged() {
    let payload = Bytes::from(
        (0..200_000u32)
            .map(|i| (i % 251) as u8)
            .collect::<Vec<u8>>(),
    );
    let p = payload.clone();
    let react: React = Arc::new(move |_, call, ctx| match call {
        Call::EpochChanged(Epoch(0)) if ctx.task() == T1 => {
            ctx.request_data(T0, meta("q"))
                .expect("the context refused a command");
        }
        Call::Serve {
            id,
            req,
            from,
            link,
        } => {
            assert_eq!((*from, *link, req.clone()), (T1, Link::Child, meta("q")));
            ctx.respond(*id, p.clone())
                .expect("the context refused a command");
        }
        _ => {}
    });
    let (mut c, log) = cluster(2, 0, 0, react);
    c.run_until(at(1000));
    let got: Vec<Call> = log
        .of_node(primary(&c, T1))
        .into_iter()
        .filter(|c| matches!(c, Call::DataReady { .. }))
        .collect();
    assert_eq!(
        got,
        vec![Call::DataReady {
            from: T0,
            id: RequestId(0),
            req: meta("q"),
            resp: payload
        }]
    );
    no_violations(&mut c);
}

#[test]
fn s14_request_follows_failover_and_is_answered_once() {
    // t0's first primary (node 1) never answers; after it crashes the
    // request is re-sent with the same id to the promoted standby.
    let react: React = Arc::new(|node, call, ctx| match call {
        Call::EpochChanged(Epoch(0)) if ctx.task() == T1 => {
            ctx.request_data(T0, meta("q"))
                .expect("the context refused a command");
        }
        Call::Serve { id, .. } if node != NodeId(1) => ctx
            .respond(*id, meta("a"))
            .expect("the context refused a command"),
        _ => {}
    });
    let (mut c, log) = cluster(2, 1, 0, react);
    c.run_until(at(1000));
    c.crash(n(1));
    c.run_until(at(8000));
    let requester = primary(&c, T1);
    let data: Vec<Call> = log
        .of_node(requester)
        .into_iter()
        .filter(|c| matches!(c, Call::DataReady { .. }))
        .collect();
    assert_eq!(
        data,
        vec![Call::DataReady {
            from: T0,
            id: RequestId(0),
            req: meta("q"),
            resp: meta("a")
        }]
    );
    let serves = |node| {
        log.of_node(node)
            .into_iter()
            .filter(|c| matches!(c, Call::Serve { .. }))
            .count()
    };
    assert_eq!(
        (serves(n(1)), serves(n(3))),
        (1, 1),
        "served once per server incarnation"
    );
    let resent: Vec<&Event> = c
        .events()
        .iter()
        .filter(|(_, node, e)| *node == requester && matches!(e, Event::RequestResent { .. }))
        .map(|(_, _, e)| e)
        .collect();
    assert!(
        !resent.is_empty()
            && resent.iter().all(|e| matches!(
                e,
                Event::RequestResent {
                    to: T0,
                    id: RequestId(0)
                }
            )),
        "the resend is reported for the metrics: {resent:?}"
    );
    no_violations(&mut c);
}

#[test]
fn s14_lost_reply_is_resent_from_the_cache_not_served_again() {
    let react: React = Arc::new(|_, call, ctx| match call {
        Call::EpochChanged(Epoch(1)) if ctx.task() == T1 => {
            ctx.request_data(T0, meta("q"))
                .expect("the context refused a command");
        }
        Call::Serve { id, .. } => ctx
            .respond(*id, meta("a"))
            .expect("the context refused a command"),
        _ => {}
    });
    let (mut c, log) = cluster(2, 0, 0, react);
    c.run_until(at(1000));
    // Cut t0 -> t1, then start the epoch in which t1 asks: the reply cannot get through.
    c.partition_link(n(1), n(2), true);
    set_epoch(&mut c, 1);
    c.run_until(at(2000));
    let p1 = primary(&c, T1);
    assert!(
        !log.of_node(p1)
            .iter()
            .any(|c| matches!(c, Call::DataReady { .. })),
        "reply lost"
    );
    c.heal();
    c.run_until(at(4000));
    let data = log
        .of_node(p1)
        .into_iter()
        .filter(|c| matches!(c, Call::DataReady { .. }))
        .count();
    let serves = log
        .of_node(n(1))
        .into_iter()
        .filter(|c| matches!(c, Call::Serve { .. }))
        .count();
    assert_eq!((data, serves), (1, 1), "answered once, served once");
    no_violations(&mut c);
}

#[test]
fn s15_server_behind_holds_the_request_until_it_catches_up() {
    let (mut c, log) = cluster(
        2,
        0,
        0,
        Arc::new(|_, call, ctx| {
            if let Call::Serve { id, .. } = call {
                ctx.respond(*id, meta("a"))
                    .expect("the context refused a command");
            }
        }),
    );
    c.run_until(at(1000));
    let (p0, p1) = (primary(&c, T0), primary(&c, T1));
    let request = |epoch: u64, seq: u64, inc: Incarnation, to_inc: Incarnation| Envelope {
        version: PROTOCOL_VERSION,
        job: job_tag("sim"),
        from_node: p1,
        from_session: SessionId(999_999),
        seq,
        from_task: T1,
        incarnation: inc,
        epoch: Epoch(epoch),
        to_task: T0,
        to_incarnation: to_inc,
        body: Body::Request {
            id: RequestId(77),
            req: meta("ahead"),
        },
    };
    let (i0, i1) = (incarnation(&c, T0), incarnation(&c, T1));
    c.inject_message(p1, p0, request(1, 1, i1, i0));
    assert!(
        !log.of_node(p0)
            .iter()
            .any(|c| matches!(c, Call::Serve { .. })),
        "held while behind"
    );
    // An operator moves the job to epoch 1.
    set_epoch(&mut c, 1);
    c.run_until(at(2000));
    let calls = log.of_node(p0);
    let epoch1 = calls
        .iter()
        .position(|c| *c == Call::EpochChanged(Epoch(1)))
        .expect("epoch 1 delivered");
    let served = calls
        .iter()
        .position(|c| matches!(c, Call::Serve { req, .. } if *req == meta("ahead")));
    assert_eq!(served, Some(epoch1 + 1), "served right after catching up");
    // A server ahead answers EpochMismatch (the requester drops it).
    c.inject_message(p1, p0, request(0, 2, i1, i0));
    assert_eq!(
        c.events().last().map(|e| e.2.clone()),
        Some(Event::MessageDropped {
            from: p1,
            reason: DropReason::StaleEpoch
        })
    );
    assert_eq!(
        log.of_node(p0)
            .iter()
            .filter(|c| matches!(c, Call::Serve { .. }))
            .count(),
        1
    );
}

#[test]
fn s16_events_from_one_sender_arrive_in_order() {
    let react: React = Arc::new(|_, call, ctx| {
        if *call == Call::EpochChanged(Epoch(0)) && ctx.task() == T0 {
            for m in ["a", "b", "c", "d"] {
                ctx.flag_meta_to_children(meta(m))
                    .expect("the context refused a command");
            }
        }
    });
    let (mut c, log) = cluster(3, 0, 0, react);
    c.run_until(at(1000));
    for t in [T1, T2] {
        let metas: Vec<Call> = log
            .of_node(primary(&c, t))
            .into_iter()
            .filter(|c| matches!(c, Call::ParentMeta(..)))
            .collect();
        assert_eq!(
            metas,
            ["a", "b", "c", "d"]
                .map(|m| Call::ParentMeta(T0, meta(m)))
                .to_vec()
        );
    }
    no_violations(&mut c);
}

#[test]
fn s17_standby_applies_updates_in_order_and_continues_after_promotion() {
    let react: React = Arc::new(|_, call, ctx| {
        if *call == Call::EpochChanged(Epoch(0)) && ctx.task() == T0 && ctx.is_primary() {
            for u in ["1", "2", "3"] {
                ctx.replicate(meta(u))
                    .expect("the context refused a command");
            }
        }
    });
    let (mut c, log) = cluster(2, 1, 0, react);
    c.run_until(at(1000));
    c.crash(n(1));
    c.run_until(at(8000));
    assert_eq!(c.primary_of(T0), Some(n(3)));
    assert_eq!(
        log.of_node(n(3)),
        vec![
            Call::Init { primary: false },
            Call::BecameStandby,
            Call::Replica(meta("1")),
            Call::Replica(meta("2")),
            Call::Replica(meta("3")),
            Call::BecamePrimary,
            Call::EpochChanged(Epoch(0)),
        ]
    );
    no_violations(&mut c);
}

#[test]
fn s18_exit_job_stops_every_node_and_a_late_node_returns_at_once() {
    let react: React = Arc::new(|_, call, ctx| {
        if *call == Call::EpochChanged(Epoch(1)) && ctx.task() == T1 {
            ctx.exit_job("done");
        }
    });
    let (mut c, log) = cluster(3, 1, 1, react);
    c.run_until(at(1000));
    set_epoch(&mut c, 1);
    c.run_until(at(2000));
    let reason = ExitReason::Completed("done".into());
    for id in c.node_ids() {
        assert!(!c.is_up(id), "{id} stopped");
        assert_eq!(c.node(id).and_then(|x| x.exit_reason()), Some(&reason));
        let exits = log
            .of_node(id)
            .into_iter()
            .filter(|c| matches!(c, Call::Exit(_)))
            .count();
        let expected = usize::from(id.0 <= 6);
        assert_eq!(
            exits, expected,
            "{id}: exit called once on nodes holding a task, never on spares"
        );
    }
    let late = c.add_node();
    c.run_until(at(3000));
    assert!(
        c.node(late).is_some_and(|x| x.is_stopped()),
        "a node started after the exit stops"
    );
    assert!(log.of_node(late).is_empty(), "without init");
    assert_eq!(c.node(late).and_then(|x| x.exit_reason()), Some(&reason));
}

#[test]
fn s19_bad_config_and_topology_are_typed_errors() {
    let topo = Arc::new(TreeTopology::new(2, 3).expect("valid"));
    let mut cfg = NodeConfig::new(n(1), "job", "addr", 3, 1);
    cfg.ttl = Duration::from_millis(1500);
    let err = Node::new(
        Instant::ZERO,
        cfg,
        topo.clone(),
        Box::new(|_| -> Box<dyn Task> { unreachable!() }),
    );
    assert!(
        matches!(&err, Err(NodeError::Config(e)) if e.to_string().contains("ttl")),
        "{err:?}"
    );
    let cfg = NodeConfig::new(n(1), "job", "addr", 4, 1);
    let err = Node::new(
        Instant::ZERO,
        cfg,
        topo,
        Box::new(|_| -> Box<dyn Task> { unreachable!() }),
    );
    assert!(
        matches!(
            err,
            Err(NodeError::TaskCount {
                topology: 3,
                config: 4
            })
        ),
        "{err:?}"
    );
    let asym = topology::ExplicitTopology::new(2, vec![vec![], vec![T0]], vec![vec![], vec![]]);
    let cfg = NodeConfig::new(n(1), "job", "addr", 2, 0);
    let err = Node::new(
        Instant::ZERO,
        cfg,
        Arc::new(asym),
        Box::new(|_| -> Box<dyn Task> { unreachable!() }),
    );
    assert!(
        matches!(
            err,
            Err(NodeError::Topology(TopologyError::Asymmetric { .. }))
        ),
        "{err:?}"
    );
}

#[test]
fn s19_foreign_job_and_undecodable_store_values_are_dropped_with_a_warning() {
    let (mut c, log) = cluster(2, 0, 0, quiet());
    c.run_until(at(1000));
    let (p0, p1) = (primary(&c, T0), primary(&c, T1));
    let before = log.of_node(p1).len();
    let foreign = Envelope {
        version: PROTOCOL_VERSION,
        job: job_tag("another-job"),
        from_node: p0,
        from_session: SessionId(5),
        seq: 1,
        from_task: T0,
        incarnation: incarnation(&c, T0),
        epoch: Epoch(0),
        to_task: T1,
        to_incarnation: incarnation(&c, T1),
        body: Body::Meta {
            direction: Direction::ToChildren,
            flag: 0,
            meta: meta("x"),
        },
    };
    c.inject_message(p0, p1, foreign.clone());
    assert_eq!(
        c.events().last().map(|e| e.2.clone()),
        Some(Event::MessageDropped {
            from: p0,
            reason: DropReason::ForeignJob
        })
    );
    let newer = Envelope {
        version: PROTOCOL_VERSION + 1,
        job: job_tag("sim"),
        ..foreign
    };
    c.inject_message(p0, p1, newer);
    assert_eq!(
        c.events().last().map(|e| e.2.clone()),
        Some(Event::MessageDropped {
            from: p0,
            reason: DropReason::ForeignJob
        })
    );
    assert_eq!(log.of_node(p1).len(), before);
    // Garbage written to the store under the job's keys.
    c.store_apply(store::StoreOp::Put {
        key: "/taskgraph/sim/tasks/1/standby/0".into(),
        value: Bytes::from_static(b"\xff{"),
        lease: 0,
    })
    .expect("store accepts the put");
    c.store_apply(store::StoreOp::Put {
        key: "/taskgraph/sim/epoch".into(),
        value: Bytes::from_static(b"seven"),
        lease: 0,
    })
    .expect("store accepts the put");
    c.run_until(at(2000));
    let bad: Vec<String> = c
        .events()
        .iter()
        .filter_map(|(_, node, e)| match e {
            Event::BadStoreValue { key } if *node == p1 => Some(key.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(
        bad,
        vec![
            "/taskgraph/sim/tasks/1/standby/0".to_string(),
            "/taskgraph/sim/epoch".to_string()
        ]
    );
    assert_eq!(c.primary_of(T1), Some(p1), "the node keeps running");
    assert_eq!(c.node(p1).map(|x| x.epoch()), Some(Epoch(0)));
}

#[test]
fn s19_node_with_another_job_spec_refuses_to_join() {
    let (mut c, log) = cluster(2, 0, 0, quiet());
    c.run_until(at(1000));
    let spec = JobSpec {
        num_tasks: 2,
        standbys_per_task: 3,
        protocol_version: PROTOCOL_VERSION,
        topology: "tree(fanout=2,tasks=2)".into(),
    };
    c.store_apply(store::StoreOp::Put {
        key: "/taskgraph/sim/config".into(),
        value: Bytes::from(serde_json::to_vec(&spec).expect("spec encodes")),
        lease: 0,
    })
    .expect("store accepts the put");
    let late = c.add_node();
    c.run_until(at(2000));
    assert!(c.node(late).is_some_and(|x| x.is_stopped()));
    assert!(log.of_node(late).is_empty());
    let refused = c.events().iter().any(|(_, node, e)| {
        *node == late
            && matches!(e, Event::Refused { detail } if detail.contains("standbys_per_task: 3"))
    });
    assert!(refused, "refused with a message naming the spec");
}

/// A well-formed message for t1's primary from t0's primary, as node `from` sends it.
fn meta_to_t1(
    c: &Cluster,
    from: NodeId,
    session: SessionId,
    seq: u64,
    inc: Incarnation,
    to_inc: Incarnation,
) -> Envelope {
    let _ = c;
    Envelope {
        version: PROTOCOL_VERSION,
        job: job_tag("sim"),
        from_node: from,
        from_session: session,
        seq,
        from_task: T0,
        incarnation: inc,
        epoch: Epoch(0),
        to_task: T1,
        to_incarnation: to_inc,
        body: Body::Meta {
            direction: Direction::ToChildren,
            flag: 9,
            meta: meta("m"),
        },
    }
}

#[test]
fn s19_forged_high_incarnation_does_not_fence_the_real_sender() {
    let (mut c, log) = cluster(2, 0, 0, quiet());
    c.run_until(at(1000));
    let (p0, p1) = (primary(&c, T0), primary(&c, T1));
    let (i0, i1) = (incarnation(&c, T0), incarnation(&c, T1));
    // Claims t0 at an absurd incarnation, addressed to a role nobody holds.
    let forged = meta_to_t1(
        &c,
        p0,
        SessionId(900),
        1,
        Incarnation(i64::MAX),
        Incarnation(1),
    );
    c.inject_message(p0, p1, forged);
    assert_eq!(
        c.events().last().map(|e| e.2.clone()),
        Some(Event::MessageDropped {
            from: p0,
            reason: DropReason::NotForMe
        })
    );
    let genuine = meta_to_t1(&c, p0, SessionId(901), 1, i0, i1);
    c.inject_message(p0, p1, genuine);
    assert_eq!(
        log.of_node(p1).last(),
        Some(&Call::ParentMeta(T0, meta("m"))),
        "the real sender still gets through"
    );
}

#[test]
fn s19_message_naming_another_sender_than_its_connection_is_dropped() {
    let (mut c, log) = cluster(2, 0, 0, quiet());
    c.run_until(at(1000));
    let (p0, p1) = (primary(&c, T0), primary(&c, T1));
    let before = log.of_node(p1).len();
    let msg = meta_to_t1(
        &c,
        p0,
        SessionId(900),
        1,
        incarnation(&c, T0),
        incarnation(&c, T1),
    );
    c.inject_message(NodeId(77), p1, msg);
    assert_eq!(
        c.events().last().map(|e| e.2.clone()),
        Some(Event::MessageDropped {
            from: NodeId(77),
            reason: DropReason::Impostor
        })
    );
    assert_eq!(log.of_node(p1).len(), before);
}

#[test]
fn s19_messages_held_for_a_role_that_never_comes_expire() {
    let (mut c, _log) = cluster(2, 0, 0, quiet());
    c.run_until(at(1000));
    let (p0, p1) = (primary(&c, T0), primary(&c, T1));
    // Addressed to an incarnation far beyond the store's revision: held.
    let msg = meta_to_t1(
        &c,
        p0,
        SessionId(900),
        1,
        incarnation(&c, T0),
        Incarnation(1_000_000),
    );
    c.inject_message(p0, p1, msg);
    let held_at = c.now();
    assert!(!c
        .events()
        .iter()
        .any(|(t, _, e)| *t >= held_at && matches!(e, Event::MessageDropped { .. })));
    c.run_until(at(7000));
    let expired = c
        .events()
        .iter()
        .find(|(_, node, e)| {
            *node == p1
                && *e
                    == Event::MessageDropped {
                        from: p0,
                        reason: DropReason::HoldExpired,
                    }
        })
        .map(|(t, _, _)| *t)
        .expect("the held message expired");
    let ttl = c.config().ttl;
    assert!(
        expired >= held_at + ttl * 2 && expired <= held_at + ttl * 2 + Duration::from_millis(600),
        "expired at {expired}"
    );
}

/// What a task's context answered, in the order asked: (node, what, answer).
type Answers = Arc<Mutex<Vec<(NodeId, &'static str, Result<(), CommandError>)>>>;

fn answer(log: &Answers, node: NodeId, what: &'static str, r: Result<(), CommandError>) {
    if let Ok(mut v) = log.lock() {
        v.push((node, what, r));
    }
}

fn answers(log: &Answers, what: &str) -> Vec<Result<(), CommandError>> {
    log.lock()
        .map(|v| {
            v.iter()
                .filter(|a| a.1 == what)
                .map(|a| a.2.clone())
                .collect()
        })
        .unwrap_or_default()
}

fn bytes(len: usize) -> Bytes {
    Bytes::from(vec![7u8; len])
}

#[test]
fn s19_a_payload_over_max_payload_is_refused_where_the_task_hands_it_over() {
    // max_payload 1 KiB. Every payload-carrying command is tried one byte
    // over the limit (refused, nothing sent) and then at the limit (sent).
    const LIMIT: usize = 1024;
    let log: Answers = Arc::default();
    let l = log.clone();
    let react: React = Arc::new(move |node, call, ctx| match call {
        Call::EpochChanged(Epoch(0)) if ctx.task() == T0 => {
            let r = ctx.flag_meta_to_children(bytes(LIMIT + 1));
            answer(&l, node, "meta over", r);
            let r = ctx.replicate(bytes(LIMIT + 1));
            answer(&l, node, "replicate over", r);
            let r = ctx.replicate(bytes(LIMIT));
            answer(&l, node, "replicate at", r);
            let r = ctx.flag_meta_to_children(bytes(LIMIT));
            answer(&l, node, "meta at", r);
        }
        Call::ParentMeta(T0, m) if ctx.task() == T1 => {
            assert_eq!(m.len(), LIMIT, "only the meta within the limit is sent");
            let r = ctx.request_data(T0, bytes(LIMIT + 1)).map(drop);
            answer(&l, node, "request over", r);
            let r = ctx.request_data(T0, bytes(LIMIT)).map(drop);
            answer(&l, node, "request at", r);
        }
        Call::Serve { id, req, .. } => {
            assert_eq!(
                req.len(),
                LIMIT,
                "only the request within the limit is sent"
            );
            let r = ctx.respond(*id, bytes(LIMIT + 1));
            answer(&l, node, "respond over", r);
            let r = ctx.respond(*id, bytes(LIMIT));
            answer(&l, node, "respond at", r);
        }
        _ => {}
    });
    let mut cfg = ClusterConfig::new(7, 3, 1, 0);
    cfg.start_gap = Duration::from_millis(50);
    cfg.max_payload = LIMIT;
    let (mut c, calls) = cluster_with(cfg, react);
    c.run_until(at(3000));

    let too_large = Err(CommandError::PayloadTooLarge {
        len: LIMIT + 1,
        limit: LIMIT,
    });
    for what in [
        "meta over",
        "replicate over",
        "request over",
        "respond over",
    ] {
        assert_eq!(answers(&log, what), vec![too_large.clone()], "{what}");
    }
    for what in ["meta at", "replicate at", "request at", "respond at"] {
        assert_eq!(answers(&log, what), vec![Ok(())], "{what}");
    }
    // t1 got exactly the answer within the limit, once; t0's standby got
    // exactly the update within the limit.
    let p1 = primary(&c, T1);
    let data: Vec<usize> = calls
        .of_node(p1)
        .iter()
        .filter_map(|c| match c {
            Call::DataReady { resp, .. } => Some(resp.len()),
            _ => None,
        })
        .collect();
    assert_eq!(data, vec![LIMIT]);
    let replicas: Vec<usize> = (1..=6)
        .map(n)
        .filter(|&x| x != primary(&c, T0))
        .flat_map(|x| calls.of_node(x))
        .filter_map(|c| match c {
            Call::Replica(u) => Some(u.len()),
            _ => None,
        })
        .collect();
    assert_eq!(replicas, vec![LIMIT]);
    no_violations(&mut c);
}

#[test]
fn s19_a_task_waiting_for_max_pending_requests_from_one_task_is_refused_until_an_answer_frees_a_slot(
) {
    // At most 2 requests from one task to one other task wait for an
    // answer. t1 asks t0 three times in one callback (the third is refused)
    // and t2 once (another target, its own count); the first answer frees a
    // slot for one more request. Requests to no task or to itself are
    // refused, and so is a standby's send.
    let log: Answers = Arc::default();
    let l = log.clone();
    let react: React = Arc::new(move |node, call, ctx| match call {
        Call::EpochChanged(Epoch(0)) if ctx.task() == T1 => {
            for _ in 0..3 {
                let r = ctx.request_data(T0, meta("q")).map(drop);
                answer(&l, node, "to t0", r);
            }
            let r = ctx.request_data(T2, meta("q")).map(drop);
            answer(&l, node, "to t2", r);
            let r = ctx.request_data(TaskId(3), meta("q")).map(drop);
            answer(&l, node, "to no task", r);
            let r = ctx.request_data(T1, meta("q")).map(drop);
            answer(&l, node, "to itself", r);
        }
        Call::DataReady { from: T0, .. } if ctx.task() == T1 => {
            let again = answers(&l, "after an answer").is_empty();
            if again {
                let r = ctx.request_data(T0, meta("q")).map(drop);
                answer(&l, node, "after an answer", r);
            }
        }
        Call::BecameStandby => {
            let r = ctx.replicate(meta("u"));
            answer(&l, node, "standby replicates", r);
        }
        Call::Serve { id, .. } => {
            ctx.respond(*id, meta("a"))
                .expect("the context refused a command");
        }
        _ => {}
    });
    let mut cfg = ClusterConfig::new(7, 3, 1, 0);
    cfg.start_gap = Duration::from_millis(50);
    cfg.max_pending_requests = 2;
    let (mut c, calls) = cluster_with(cfg, react);
    c.run_until(at(3000));

    assert_eq!(
        answers(&log, "to t0"),
        vec![
            Ok(()),
            Ok(()),
            Err(CommandError::TooManyPendingRequests { to: T0, pending: 2 })
        ]
    );
    assert_eq!(answers(&log, "to t2"), vec![Ok(())]);
    assert_eq!(
        answers(&log, "to no task"),
        vec![Err(CommandError::NoSuchTask(TaskId(3)))]
    );
    assert_eq!(
        answers(&log, "to itself"),
        vec![Err(CommandError::NoSuchTask(T1))]
    );
    assert_eq!(answers(&log, "after an answer"), vec![Ok(())]);
    let standbys = answers(&log, "standby replicates");
    assert_eq!(standbys.len(), 3, "one standby per task");
    assert!(standbys.iter().all(|r| *r == Err(CommandError::NotPrimary)));
    // Every accepted request was answered exactly once: 3 from t0, 1 from t2.
    let p1 = primary(&c, T1);
    let from: Vec<TaskId> = calls
        .of_node(p1)
        .iter()
        .filter_map(|c| match c {
            Call::DataReady { from, .. } => Some(*from),
            _ => None,
        })
        .collect();
    assert_eq!(from.iter().filter(|&&t| t == T0).count(), 3, "{from:?}");
    assert_eq!(from.iter().filter(|&&t| t == T2).count(), 1, "{from:?}");
    no_violations(&mut c);
}

#[test]
fn s19_an_exit_reason_longer_than_the_limit_is_cut_at_a_character_boundary() {
    // 'é' is two bytes: a cut in the middle of one must move back.
    let long = "é".repeat(MAX_EXIT_REASON_LEN);
    let l = long.clone();
    let react: React = Arc::new(move |_, call, ctx| {
        if matches!(call, Call::EpochChanged(Epoch(0))) && ctx.task() == T0 {
            ctx.exit_job(l.clone());
        }
    });
    let (mut c, _) = cluster(3, 0, 0, react);
    c.run_until(at(3000));
    let reasons: Vec<ExitReason> = c
        .events()
        .iter()
        .filter_map(|e| match &e.2 {
            Event::JobExited { reason } => Some(reason.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(reasons.len(), 3, "every node exits: {reasons:?}");
    for r in reasons {
        let ExitReason::Completed(text) = r else {
            panic!("{r:?}")
        };
        assert!(text.len() <= MAX_EXIT_REASON_LEN, "{}", text.len());
        assert!(text.len() > MAX_EXIT_REASON_LEN - 8, "{}", text.len());
        assert!(text.ends_with('…'));
        assert!(long.starts_with(text.trim_end_matches('…')));
    }
    no_violations(&mut c);
}

#[test]
fn s19_requests_abandoned_by_an_epoch_change_free_their_slots() {
    // One request may wait. t0 never answers in epoch 0 and advances: the
    // request is abandoned (S11), so t1 may ask again in epoch 1.
    let log: Answers = Arc::default();
    let l = log.clone();
    let react: React = Arc::new(move |node, call, ctx| match call {
        Call::EpochChanged(e) if ctx.task() == T1 => {
            let r = ctx.request_data(T0, meta("q")).map(drop);
            answer(&l, node, if e.0 == 0 { "epoch 0" } else { "epoch 1" }, r);
            let r = ctx.request_data(T0, meta("q")).map(drop);
            answer(&l, node, "second", r);
        }
        Call::Serve { id, .. } if ctx.epoch() == Epoch(0) => {
            let _ = id;
            if answers(&l, "advanced").is_empty() {
                answer(&l, node, "advanced", Ok(()));
                ctx.advance_epoch();
            }
        }
        Call::Serve { id, .. } => {
            ctx.respond(*id, meta("a"))
                .expect("the context refused a command");
        }
        _ => {}
    });
    let mut cfg = ClusterConfig::new(7, 3, 0, 0);
    cfg.start_gap = Duration::from_millis(50);
    cfg.max_pending_requests = 1;
    let (mut c, calls) = cluster_with(cfg, react);
    c.run_until(at(3000));
    assert_eq!(answers(&log, "epoch 0"), vec![Ok(())]);
    assert_eq!(answers(&log, "epoch 1"), vec![Ok(())]);
    let busy = Err(CommandError::TooManyPendingRequests { to: T0, pending: 1 });
    assert_eq!(answers(&log, "second"), vec![busy.clone(), busy]);
    let p1 = primary(&c, T1);
    let answered = calls
        .of_node(p1)
        .iter()
        .filter(|c| matches!(c, Call::DataReady { .. }))
        .count();
    assert_eq!(answered, 1, "only epoch 1's request is answered");
    no_violations(&mut c);
}
