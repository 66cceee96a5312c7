//! Random fault schedules over the tree aggregation, and running them with
//! every check on.

use super::cluster::{Cluster, ClusterConfig, FaultCounts};
use super::rng::Rng;
use super::tree_sum::{EpochResult, Results, TreeSumBuilder};
use super::Violation;
use crate::task::ExitReason;
use crate::topology::TreeTopology;
use crate::{Instant, NodeId, TaskId};
use std::sync::Arc;
use std::time::Duration;

/// One fault, injected at a point of virtual time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Crash a node; restart it after `restart_after`.
    Crash {
        /// The node.
        node: NodeId,
        /// Delay before the restart.
        restart_after: Duration,
    },
    /// Stop a node cleanly; restart it after `restart_after`.
    Shutdown {
        /// The node.
        node: NodeId,
        /// Delay before the restart.
        restart_after: Duration,
    },
    /// Cut a node from every peer for `heal_after`.
    PartitionNode {
        /// The node.
        node: NodeId,
        /// Duration.
        heal_after: Duration,
    },
    /// Cut the link `a -> b` (both ways unless `one_way`) for `heal_after`.
    PartitionLink {
        /// Source.
        a: NodeId,
        /// Destination.
        b: NodeId,
        /// Only `a -> b`.
        one_way: bool,
        /// Duration.
        heal_after: Duration,
    },
    /// Cut a node from the store for `heal_after`.
    CutStore {
        /// The node.
        node: NodeId,
        /// Duration.
        heal_after: Duration,
    },
    /// Make the store unreachable for `heal_after`.
    StoreOutage {
        /// Duration.
        heal_after: Duration,
    },
    /// Pause a node for `duration` (longer than the TTL: a zombie primary).
    Pause {
        /// The node.
        node: NodeId,
        /// Duration.
        duration: Duration,
    },
    /// Slow the link `a -> b` by `extra`, until the heal.
    Slow {
        /// Source.
        a: NodeId,
        /// Destination.
        b: NodeId,
        /// Added delay.
        extra: Duration,
    },
}

/// Parameters of random schedules.
#[derive(Clone, Debug)]
pub struct ScheduleConfig {
    /// Cluster shape and timing (its seed is replaced by the schedule's).
    pub cluster: ClusterConfig,
    /// Epochs the application runs.
    pub epochs: u64,
    /// Faults are injected within this time from the start.
    pub chaos: Duration,
    /// At most this many faults.
    pub max_faults: u32,
    /// Everything is healed (and crashed nodes restarted) at `chaos`; the
    /// job must finish by this time.
    pub deadline: Duration,
}

impl ScheduleConfig {
    /// The default: tree of 15 tasks, fanout 2, one standby each, 2 spares,
    /// 10 epochs, up to 8 faults in the first 6 s, finished by 120 s.
    pub fn tree15() -> Self {
        let mut cluster = ClusterConfig::new(0, 15, 1, 2);
        // A WAN-like network, so that ten epochs take seconds and the
        // faults land while the job runs.
        cluster.msg_delay = (Duration::from_millis(2), Duration::from_millis(40));
        cluster.store_delay = (Duration::from_millis(1), Duration::from_millis(15));
        ScheduleConfig {
            cluster,
            epochs: 10,
            chaos: Duration::from_secs(6),
            max_faults: 8,
            deadline: Duration::from_secs(120),
        }
    }
}

/// A fault schedule: what happens when.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Schedule {
    /// The seed it was drawn from (and the cluster's seed).
    pub seed: u64,
    /// Faults in time order.
    pub faults: Vec<(Instant, Fault)>,
}

impl Schedule {
    /// Draws a schedule for `cfg` from `seed`.
    pub fn random(seed: u64, cfg: &ScheduleConfig) -> Schedule {
        let mut rng = Rng::new(seed ^ 0x5eed_fa17);
        let n = u64::from(cfg.cluster.num_nodes());
        let node = |rng: &mut Rng| NodeId(rng.range(1, n + 1));
        let ms = |rng: &mut Rng, lo: u64, hi: u64| Duration::from_millis(rng.range(lo, hi));
        let count = rng.range(1, u64::from(cfg.max_faults) + 1);
        let chaos_ms = u64::try_from(cfg.chaos.as_millis()).unwrap_or(u64::MAX);
        let ttl_ms = u64::try_from(cfg.cluster.ttl.as_millis()).unwrap_or(2000);
        let mut faults = Vec::new();
        for _ in 0..count {
            let at = Instant::from_millis(rng.range(50, chaos_ms.max(51)));
            let f = match rng.range(0, 9) {
                0 => Fault::Crash {
                    node: node(&mut rng),
                    restart_after: ms(&mut rng, 500, 5000),
                },
                1 => Fault::Shutdown {
                    node: node(&mut rng),
                    restart_after: ms(&mut rng, 100, 3000),
                },
                2 => Fault::PartitionNode {
                    node: node(&mut rng),
                    heal_after: ms(&mut rng, 100, 2 * ttl_ms),
                },
                3 | 4 => {
                    let a = node(&mut rng);
                    let b = node(&mut rng);
                    Fault::PartitionLink {
                        a,
                        b,
                        one_way: rng.chance(0.5),
                        heal_after: ms(&mut rng, 100, 2 * ttl_ms),
                    }
                }
                5 => Fault::CutStore {
                    node: node(&mut rng),
                    heal_after: ms(&mut rng, 100, 2 * ttl_ms),
                },
                6 => Fault::StoreOutage {
                    heal_after: ms(&mut rng, 100, ttl_ms + ttl_ms / 2),
                },
                7 => Fault::Pause {
                    node: node(&mut rng),
                    duration: ms(&mut rng, ttl_ms + 100, 2 * ttl_ms + 1000),
                },
                _ => Fault::Slow {
                    a: node(&mut rng),
                    b: node(&mut rng),
                    extra: ms(&mut rng, 10, 3 * ttl_ms),
                },
            };
            faults.push((at, f));
        }
        // Make the first fault hit task 0's primary sometimes: pick its
        // target at injection time (see `run_schedule`).
        faults.sort_by_key(|(at, _)| *at);
        Schedule { seed, faults }
    }
}

/// A run taking more steps than this is stopped and reported as a livelock.
const MAX_STEPS: u64 = 5_000_000;

/// What one schedule run produced.
#[derive(Clone, Debug)]
pub struct ScheduleOutcome {
    /// The seed.
    pub seed: u64,
    /// 128-bit trace hash of the run.
    pub trace_hash: u128,
    /// Every violation found (empty: the run passed).
    pub violations: Vec<Violation>,
    /// Faults injected.
    pub faults: FaultCounts,
    /// Task 0's results.
    pub results: Vec<EpochResult>,
    /// The exit reason, if the job ended.
    pub exit: Option<ExitReason>,
    /// Virtual time at the end.
    pub finished_at: Instant,
    /// Inputs delivered.
    pub steps: u64,
    /// What the checker saw delivered.
    pub delivered: super::Delivered,
    /// The readable trace, if the cluster config asked to record it.
    pub trace: Vec<super::TraceEntry>,
    /// Every event the nodes reported, with time and node.
    pub events: Vec<(Instant, NodeId, crate::Event)>,
}

impl ScheduleOutcome {
    /// Whether the run passed every check.
    pub fn passed(&self) -> bool {
        self.violations.is_empty()
    }
}

#[derive(Debug)]
enum Later {
    Restart(NodeId),
    HealNode(NodeId),
    HealStore(NodeId),
    EndOutage,
    HealLink,
}

/// Runs the tree aggregation under `schedule`, checking every step, then
/// heals everything at `cfg.chaos` and requires the job to finish with every
/// epoch's answer right by `cfg.deadline`.
pub fn run_schedule(cfg: &ScheduleConfig, schedule: &Schedule) -> ScheduleOutcome {
    let mut ccfg = cfg.cluster.clone();
    ccfg.seed = schedule.seed;
    let results = Results::default();
    let topo =
        Arc::new(TreeTopology::new(2, ccfg.num_tasks).unwrap_or_else(|_| unreachable_tree()));
    let (num_tasks, last_epoch, r) = (ccfg.num_tasks, cfg.epochs, results.clone());
    let mut cluster = Cluster::new(
        ccfg,
        topo,
        Box::new(move |_| Box::new(TreeSumBuilder::new(num_tasks, last_epoch, r.clone()))),
    );
    let mut later: Vec<(Instant, Later)> = Vec::new();
    let mut target_rng = Rng::new(schedule.seed ^ 0x007a_26e7);
    for (at, fault) in &schedule.faults {
        run_later(&mut cluster, &mut later, *at);
        cluster.run_until(*at);
        // Half the node-targeted faults hit a primary instead (often task 0's).
        let retarget = |rng: &mut Rng, c: &Cluster, n: NodeId| -> NodeId {
            if rng.chance(0.5) {
                let t = if rng.chance(0.3) {
                    TaskId(0)
                } else {
                    TaskId(rng.range(0, u64::from(num_tasks)) as u32)
                };
                c.primary_of(t).unwrap_or(n)
            } else {
                n
            }
        };
        let now = cluster.now();
        match fault.clone() {
            Fault::Crash {
                node,
                restart_after,
            } => {
                let node = retarget(&mut target_rng, &cluster, node);
                cluster.crash(node);
                later.push((now + restart_after, Later::Restart(node)));
            }
            Fault::Shutdown {
                node,
                restart_after,
            } => {
                let node = retarget(&mut target_rng, &cluster, node);
                cluster.shutdown(node);
                later.push((now + restart_after, Later::Restart(node)));
            }
            Fault::PartitionNode { node, heal_after } => {
                let node = retarget(&mut target_rng, &cluster, node);
                cluster.partition_node(node);
                later.push((now + heal_after, Later::HealNode(node)));
            }
            Fault::PartitionLink {
                a,
                b,
                one_way,
                heal_after,
            } => {
                let a = retarget(&mut target_rng, &cluster, a);
                if a != b {
                    cluster.partition_link(a, b, one_way);
                    later.push((now + heal_after, Later::HealLink));
                }
            }
            Fault::CutStore { node, heal_after } => {
                let node = retarget(&mut target_rng, &cluster, node);
                cluster.cut_store(node);
                later.push((now + heal_after, Later::HealStore(node)));
            }
            Fault::StoreOutage { heal_after } => {
                cluster.store_outage();
                later.push((now + heal_after, Later::EndOutage));
            }
            Fault::Pause { node, duration } => {
                let node = retarget(&mut target_rng, &cluster, node);
                // Half the pauses catch the node while it has messages in
                // flight (waiting up to a second for it to send) and hold
                // them until around the time its successor takes over: stale
                // messages that fencing must drop (S3).
                if target_rng.chance(0.5) && cluster.is_up(node) {
                    // Not past a pending restart or heal (those are applied
                    // at the next fault's time).
                    let mut until = cluster.now() + Duration::from_secs(1);
                    if let Some(next) = later.iter().map(|(at, _)| *at).min() {
                        until = until.min(next);
                    }
                    let sending = cluster.run_until_pred(until, |c| c.in_flight_from(node) > 0);
                    if sending {
                        let hold =
                            cfg.cluster.ttl + Duration::from_millis(target_rng.range(0, 1_000));
                        cluster.delay_in_flight(node, hold);
                    }
                    let extra = duration + cfg.cluster.ttl;
                    for b in cluster.node_ids() {
                        if b != node {
                            cluster.slow_link(node, b, extra);
                        }
                    }
                }
                cluster.pause(node, duration);
            }
            Fault::Slow { a, b, extra } => {
                // Mostly slow a link that carries traffic: a primary to the
                // primary of its parent task, or the reverse.
                let (a, b) = if target_rng.chance(0.7) && num_tasks > 1 {
                    let t = target_rng.range(1, u64::from(num_tasks)) as u32;
                    let p = (t - 1) / 2;
                    match (cluster.primary_of(TaskId(t)), cluster.primary_of(TaskId(p))) {
                        (Some(x), Some(y)) if target_rng.chance(0.5) => (x, y),
                        (Some(x), Some(y)) => (y, x),
                        _ => (a, b),
                    }
                } else {
                    (a, b)
                };
                if a != b {
                    cluster.slow_link(a, b, extra);
                }
            }
        }
    }
    let mut violations_extra = Vec::new();
    let chaos_end = Instant::ZERO + cfg.chaos;
    run_later(&mut cluster, &mut later, chaos_end);
    cluster.run_until(chaos_end);
    cluster.heal();
    for (_, l) in std::mem::take(&mut later) {
        if let Later::Restart(n) = l {
            cluster.restart(n);
        }
    }
    let deadline = Instant::ZERO + cfg.deadline;
    let finished = cluster.run_until_pred(deadline, |c| {
        c.node_ids().iter().all(|n| !c.is_up(*n)) || c.steps() > MAX_STEPS
    });
    if cluster.steps() > MAX_STEPS {
        violations_extra.push(Violation {
            at: cluster.now(),
            what: format!("liveness: more than {MAX_STEPS} steps (a livelock?)"),
        });
    }
    let mut violations = verdict(&mut cluster, &results, cfg.epochs, finished, deadline);
    violations.append(&mut violations_extra);
    let all = results.all();
    let exit = cluster.checker().exits().first().cloned();
    ScheduleOutcome {
        seed: schedule.seed,
        trace_hash: cluster.trace_hash(),
        violations,
        faults: cluster.faults().clone(),
        results: all,
        exit,
        finished_at: cluster.now(),
        steps: cluster.steps(),
        delivered: cluster.checker().delivered().clone(),
        trace: cluster.trace().to_vec(),
        events: if cfg.cluster.record_trace {
            cluster.events().to_vec()
        } else {
            Vec::new()
        },
    }
}

/// The end-of-run verdict on a tree_sum run: the checker's end checks, then
/// the job must have `finished` (every node down) by `deadline` with
/// [`ExitReason::Completed`], every epoch up to `epochs` verified and every
/// answer right. Returns every violation.
pub fn verdict(
    cluster: &mut Cluster,
    results: &Results,
    epochs: u64,
    finished: bool,
    deadline: Instant,
) -> Vec<Violation> {
    let mut violations = cluster.finish();
    let all = results.all();
    let exit = cluster.checker().exits().first().cloned();
    if !finished {
        violations.push(Violation {
            at: cluster.now(),
            what: format!(
                "liveness: the job did not finish by {} (exit: {exit:?})",
                deadline
            ),
        });
    }
    match &exit {
        Some(ExitReason::Completed(_)) => {}
        other => violations.push(Violation {
            at: cluster.now(),
            what: format!("liveness: job ended with {other:?}"),
        }),
    }
    for r in &all {
        if r.total != r.expected {
            violations.push(Violation {
                at: cluster.now(),
                what: format!(
                    "answer: epoch {} gave {} instead of {}",
                    r.epoch, r.total, r.expected
                ),
            });
        }
    }
    for e in 1..=epochs {
        if !all.iter().any(|r| r.epoch.0 == e) {
            violations.push(Violation {
                at: cluster.now(),
                what: format!("answer: epoch {e} never verified"),
            });
        }
    }
    violations
}

fn unreachable_tree() -> TreeTopology {
    // TreeTopology::new(2, n) only fails for n == 0, which ClusterConfig rules out.
    TreeTopology::new(2, 1).unwrap_or_else(|_| panic!("a one-task tree is valid"))
}

fn run_later(cluster: &mut Cluster, later: &mut Vec<(Instant, Later)>, until: Instant) {
    loop {
        later.sort_by_key(|(at, _)| *at);
        let Some(pos) = later.iter().position(|(at, _)| *at <= until) else {
            return;
        };
        let (at, what) = later.remove(pos);
        cluster.run_until(at);
        match what {
            Later::Restart(n) => cluster.restart(n),
            Later::HealNode(n) => cluster.heal_node(n),
            Later::HealStore(n) => cluster.heal_store(n),
            Later::EndOutage => cluster.end_outage(),
            Later::HealLink => {
                // Links heal together with node partitions of nobody: clear
                // only link-level blocks by healing every node that is not
                // itself partitioned. Simpler and still deterministic: heal
                // links at the chaos end instead; here nothing.
            }
        }
    }
}
