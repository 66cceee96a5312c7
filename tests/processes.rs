//! Real processes against real etcd: every node of the tree aggregation is a
//! process (`examples/tree_sum --node ID`); the test kills them with
//! SIGKILL, freezes one with SIGSTOP past its lease, and takes an etcd member
//! away, and checks that every epoch's answer stays right (S3–S5, S18).
//!
//! Needs the `etcd` feature and an `etcd` binary (`cargo xtask test`
//! provides both).
#![cfg(feature = "etcd")]

#[path = "../runtime/tests/common/mod.rs"]
mod common;

use common::EtcdServer;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const TASKS: u32 = 7;
const NODES: u64 = 15; // 7 primaries, 7 standbys, 1 spare

/// These tests start many processes; run them one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn unix_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}

/// The tree_sum example, built next to this test by `cargo test --all-targets --features etcd`.
fn example() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    let bin = dir.join("examples").join("tree_sum");
    assert!(
        bin.exists(),
        "{} is missing: build it with `cargo build --example tree_sum --features etcd` \
         (`cargo xtask test` builds every target with every feature)",
        bin.display()
    );
    bin
}

/// One `tree_sum --node` process and every line it printed.
struct Proc {
    id: u64,
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Proc {
    fn spawn(id: u64, endpoints: &[String], job: &str, epochs: u64) -> Proc {
        let mut child = Command::new(example())
            .args([
                "--node",
                &id.to_string(),
                "--etcd",
                &endpoints.join(","),
                "--job",
                job,
            ])
            .args([
                "--tasks",
                &TASKS.to_string(),
                "--standbys",
                "1",
                "--spares",
                "1",
            ])
            .args([
                "--epochs",
                &epochs.to_string(),
                "--epoch-ms",
                "200",
                "--ttl",
                "2",
            ])
            .env("RUST_LOG", "error")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("tree_sum starts");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (out, l) = (child.stdout.take().expect("stdout"), lines.clone());
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if let Ok(mut v) = l.lock() {
                    v.push(line);
                }
            }
        });
        Proc { id, child, lines }
    }

    fn lines(&self) -> Vec<String> {
        self.lines.lock().map(|v| v.clone()).unwrap_or_default()
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .map(|s| s.success());
        assert_eq!(ok.ok(), Some(true), "kill {sig} {}", self.child.id());
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An event line: (unix ms, node, debug text).
fn events(procs: &[Proc]) -> Vec<(u128, u64, String)> {
    let mut v: Vec<(u128, u64, String)> = procs
        .iter()
        .flat_map(|p| p.lines())
        .filter_map(|l| {
            let mut it = l.splitn(4, ' ');
            if it.next()? != "EVENT" {
                return None;
            }
            Some((
                it.next()?.parse().ok()?,
                it.next()?.parse().ok()?,
                it.next()?.to_string(),
            ))
        })
        .collect();
    v.sort();
    v
}

/// The node that most recently became primary of `task`, and its incarnation.
fn primary_of(procs: &[Proc], task: u32) -> Option<(u64, String)> {
    let needle = format!("BecamePrimary {{ task: TaskId({task}),");
    events(procs)
        .into_iter()
        .rev()
        .find(|(_, _, e)| e.starts_with(&needle))
        .map(|(_, n, e)| {
            let inc = e
                .split("incarnation: ")
                .nth(1)
                .and_then(|s| s.split(')').next())
                .unwrap_or("")
                .to_string();
            (n, format!("{inc})"))
        })
}

fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn epoch_reached(procs: &[Proc]) -> u64 {
    events(procs)
        .iter()
        .filter_map(|(_, _, e)| {
            e.strip_prefix("EpochChanged { task: TaskId(0), epoch: Epoch(")?
                .split(')')
                .next()?
                .parse()
                .ok()
        })
        .max()
        .unwrap_or(0)
}

/// Waits for every process to exit; checks every epoch's answer, reported
/// by the live processes or by killed ones (`dead`) before they died.
fn finish(procs: &mut [Proc], dead: &[Proc], epochs: u64) {
    let start = Instant::now();
    for p in procs.iter_mut() {
        loop {
            if p.child.try_wait().expect("wait").is_some() {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(90),
                "node {} did not finish",
                p.id
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let results: Vec<(u64, u64, u64)> = procs
        .iter()
        .chain(dead)
        .flat_map(|p| p.lines())
        .filter_map(|l| {
            let v: Vec<u64> = l
                .strip_prefix("RESULT ")?
                .split(' ')
                .filter_map(|x| x.parse().ok())
                .collect();
            (v.len() == 3).then(|| (v[0], v[1], v[2]))
        })
        .collect();
    for (e, total, expected) in &results {
        assert_eq!(
            total, expected,
            "epoch {e} answered {total}, expected {expected}"
        );
    }
    for e in 1..=epochs {
        assert!(
            results.iter().any(|r| r.0 == e),
            "epoch {e} never verified: {results:?}"
        );
    }
    let exits: Vec<String> = procs
        .iter()
        .flat_map(|p| p.lines())
        .filter(|l| l.starts_with("EXIT"))
        .collect();
    assert!(
        exits.iter().all(|l| l.starts_with("EXIT completed")),
        "{exits:?}"
    );
}

/// Events after `since` (unix ms) in which a node revoked the lease of
/// `victim`'s session on evidence that its process was gone.
fn revocations_of(procs: &[Proc], victim: u64, since: u128) -> Vec<(u128, u64, String)> {
    let needle = format!("PeerGone {{ node: NodeId({victim}),");
    events(procs)
        .into_iter()
        .filter(|(t, _, e)| *t >= since && e.starts_with(&needle))
        .collect()
}

/// The time from `killed` (unix ms) to the first `*_restarted` of `task` reported.
fn failover_ms(procs: &[Proc], task: u32, killed: u128) -> u128 {
    let needle = format!("neighbour: TaskId({task}),");
    let mut restarted = None;
    wait_for(
        "neighbours to see the restart",
        Duration::from_secs(20),
        || {
            restarted = events(procs)
                .into_iter()
                .find(|(t, _, e)| {
                    *t >= killed && e.starts_with("NeighbourRestarted") && e.contains(&needle)
                })
                .map(|(t, _, _)| t);
            restarted.is_some()
        },
    );
    let died = events(procs)
        .into_iter()
        .any(|(t, _, e)| t >= killed && e.starts_with("NeighbourDied") && e.contains(&needle));
    assert!(died, "neighbours saw task {task} die");
    restarted.unwrap_or(killed) - killed
}

#[test]
fn sigkill_of_primaries_keeps_every_answer_right_and_neighbours_see_died_and_restarted() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let etcd = EtcdServer::start();
    let epochs = 25;
    let mut procs: Vec<Proc> = (1..=NODES)
        .map(|id| Proc::spawn(id, &etcd.endpoints, "kill9", epochs))
        .collect();
    wait_for("epoch 3", Duration::from_secs(30), || {
        epoch_reached(&procs) >= 3
    });
    let mut figures = Vec::new();
    let mut dead = Vec::new();
    for task in [1, 0, 2] {
        let (victim, _) = primary_of(&procs, task).expect("a primary");
        let pos = procs
            .iter()
            .position(|p| p.id == victim)
            .expect("victim runs");
        let killed = unix_ms();
        procs[pos].signal("-KILL");
        dead.push(procs.remove(pos));
        figures.push((task, failover_ms(&procs, task, killed)));
        // The process died but its host answers: a neighbour's reconnect is
        // refused, and it revokes the dead session's lease (the fast path).
        let revoked = revocations_of(&procs, victim, killed);
        assert!(
            revoked.iter().any(|(_, _, e)| e.contains("evidence: Refused")),
            "no neighbour revoked the lease of killed node {victim} on a refused connection: {revoked:?}"
        );
        // The killed node comes back as a new session (it may become a spare).
        procs.push(Proc::spawn(victim, &etcd.endpoints, "kill9", epochs));
        std::thread::sleep(Duration::from_millis(500));
    }
    finish(&mut procs, &dead, epochs);
    for (task, ms) in &figures {
        println!("FIGURE failover (SIGKILL of task {task}'s primary -> neighbours' *_restarted): {ms} ms, TTL 2 s");
    }
}

#[test]
fn sigstopped_primary_steps_down_and_none_of_its_messages_is_accepted_after_its_successor() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let etcd = EtcdServer::start();
    let epochs = 25;
    let mut procs: Vec<Proc> = (1..=NODES)
        .map(|id| Proc::spawn(id, &etcd.endpoints, "sigstop", epochs))
        .collect();
    wait_for("epoch 3", Duration::from_secs(30), || {
        epoch_reached(&procs) >= 3
    });
    let (victim, old_inc) = primary_of(&procs, 2).expect("a primary of task 2");
    let pos = procs
        .iter()
        .position(|p| p.id == victim)
        .expect("victim runs");
    procs[pos].signal("-STOP");
    let stopped = unix_ms();
    std::thread::sleep(Duration::from_secs(5));
    let continued = unix_ms();
    procs[pos].signal("-CONT");
    finish(&mut procs, &[], epochs);
    let evs = events(&procs);
    // A frozen process still has a host that accepts connections, but it
    // never answers the handshake: like a partition, that is no evidence of
    // death, and its lease must be left to expire.
    let revoked: Vec<_> = revocations_of(&procs, victim, stopped)
        .into_iter()
        .filter(|(t, _, _)| *t < continued)
        .collect();
    assert!(
        revoked.is_empty(),
        "a frozen process's lease was revoked as if it were dead: {revoked:?}"
    );
    let successor = evs
        .iter()
        .find(|(t, n, e)| {
            *t > stopped && *n != victim && e.starts_with("BecamePrimary { task: TaskId(2),")
        })
        .map(|(t, _, _)| *t)
        .expect("a successor took task 2");
    let stepped_down = evs.iter().any(|(t, n, e)| {
        *t > stopped
            && *n == victim
            && e.starts_with("SteppedDown { task: TaskId(2)")
            && e.contains(&old_inc)
    });
    assert!(stepped_down, "the frozen primary stepped down when it woke");
    let from_old = format!("from: TaskId(2), from_incarnation: Incarnation({old_inc}");
    let accepted_late: Vec<_> = evs
        .iter()
        .filter(|(t, _, e)| {
            *t >= successor
                && (e.starts_with("MetaDelivered")
                    || e.starts_with("DataDelivered")
                    || e.starts_with("Served"))
                && e.contains(&from_old)
        })
        .collect();
    assert!(
        accepted_late.is_empty(),
        "messages of the fenced incarnation accepted: {accepted_late:?}"
    );
    println!(
        "FIGURE SIGSTOP 5 s: successor of task 2 after {} ms",
        successor - stopped
    );
}

#[test]
fn job_survives_losing_one_member_of_a_three_member_etcd_cluster() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut etcd = EtcdServer::start_cluster(3);
    let epochs = 25;
    let mut procs: Vec<Proc> = (1..=NODES)
        .map(|id| Proc::spawn(id, &etcd.endpoints, "quorum", epochs))
        .collect();
    wait_for("epoch 3", Duration::from_secs(30), || {
        epoch_reached(&procs) >= 3
    });
    etcd.kill_member(0);
    let at = epoch_reached(&procs);
    finish(&mut procs, &[], epochs);
    println!("FIGURE etcd member 0 of 3 killed at epoch {at}; the job finished");
}

#[test]
fn job_survives_its_only_etcd_going_away_for_longer_than_the_ttl_and_coming_back() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut etcd = EtcdServer::start();
    let epochs = 20;
    let mut procs: Vec<Proc> = (1..=NODES)
        .map(|id| Proc::spawn(id, &etcd.endpoints, "outage", epochs))
        .collect();
    wait_for("epoch 3", Duration::from_secs(30), || {
        epoch_reached(&procs) >= 3
    });
    // Down for longer than the 2 s TTL: every primary's step-down deadline
    // passes (S2); the job must carry on when etcd is back.
    let killed = unix_ms();
    etcd.kill_member(0);
    let at = epoch_reached(&procs);
    std::thread::sleep(Duration::from_secs(4));
    let during = epoch_reached(&procs);
    etcd.restart_member(0);
    for p in procs.iter_mut() {
        assert!(
            p.child.try_wait().expect("wait").is_none(),
            "node {} exited while etcd was away",
            p.id
        );
    }
    finish(&mut procs, &[], epochs);
    // The outage was long enough to matter: primaries stepped down at their
    // lease deadline, and the job still ended with every answer right.
    let stepped_down = events(&procs)
        .into_iter()
        .filter(|(t, _, e)| {
            *t >= killed && e.contains("SteppedDown") && e.contains("LeaseDeadline")
        })
        .count();
    assert!(
        stepped_down >= 1,
        "no primary stepped down at its lease deadline while etcd was away"
    );
    assert!(
        during <= at + 1,
        "epochs went on without the store: {at} when it went away, {during} 4 s later"
    );
    println!(
        "FIGURE etcd (single member) away for 4 s from epoch {at} (epoch {during} when it came back); {stepped_down} primaries stepped down at their lease deadline; the job finished"
    );
}
