//! Exhaustive small-scope exploration on the core's in-memory harness: for a
//! small graph, every placement of up to `max_crashes` crashes and up to
//! `max_partitions` node partitions at a bounded set of step boundaries is
//! run, with every check of the core's `Checker` on every step and the
//! tree_sum verdict at the end.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;
use taskgraph_core::testkit::tree_sum::{Results, TreeSumBuilder};
use taskgraph_core::testkit::{verdict, Cluster, ClusterConfig, Violation};
use taskgraph_core::{Instant, NodeId, TreeTopology};

/// The bounds of an exhaustive exploration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bounds {
    /// Tasks of the tree (fanout 2).
    pub tasks: u32,
    /// Standbys per task.
    pub standbys: u32,
    /// Spare nodes.
    pub spares: u32,
    /// Epochs tree_sum runs.
    pub epochs: u64,
    /// Faults are placed at the step boundaries `0, stride, 2·stride, …`,
    /// `boundaries` of them.
    pub boundaries: u64,
    /// Harness steps between two boundaries (0: the fault-free run's length
    /// divided by `boundaries`, see [`with_stride`]).
    pub stride: u64,
    /// At most this many crashes per placement.
    pub max_crashes: usize,
    /// At most this many node partitions per placement.
    pub max_partitions: usize,
    /// A crashed node restarts this long after its crash.
    pub restart_after: Duration,
    /// A partition heals this long after it starts (longer than the TTL).
    pub partition_for: Duration,
    /// The job must have finished by this time.
    pub deadline: Duration,
    /// A deliberately broken behaviour switched on in every node (only in
    /// `--cfg madsim` builds).
    #[cfg(madsim)]
    pub canary: Option<taskgraph_core::Canary>,
}

impl Default for Bounds {
    /// 3 tasks, one standby each, one spare (7 nodes), 3 epochs; up to 2
    /// crashes and 1 partition at 8 boundaries spread over the fault-free
    /// run.
    fn default() -> Self {
        Bounds {
            tasks: 3,
            standbys: 1,
            spares: 1,
            epochs: 3,
            boundaries: 8,
            stride: 0,
            max_crashes: 2,
            max_partitions: 1,
            restart_after: Duration::from_secs(1),
            partition_for: Duration::from_secs(3),
            deadline: Duration::from_secs(120),
            #[cfg(madsim)]
            canary: None,
        }
    }
}

impl Bounds {
    fn nodes(&self) -> u64 {
        u64::from(self.tasks) * u64::from(1 + self.standbys) + u64::from(self.spares)
    }
}

/// One fault of a placement.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Placed {
    /// Crash this node (restarted after [`Bounds::restart_after`]).
    Crash(NodeId),
    /// Cut this node from peers and store (healed after
    /// [`Bounds::partition_for`]).
    Partition(NodeId),
}

/// A placement: faults at step boundaries, in boundary order.
pub type Placement = Vec<(u64, Placed)>;

/// Every placement within `b`: each set of at most `max_crashes` crashes
/// (one per (boundary, node) slot), combined with each set of at most
/// `max_partitions` partitions.
pub fn placements(b: &Bounds) -> Vec<Placement> {
    let slots: Vec<(u64, NodeId)> = (0..b.boundaries)
        .flat_map(|i| (1..=b.nodes()).map(move |n| (i, NodeId(n))))
        .collect();
    let crashes = subsets(&slots, b.max_crashes);
    let partitions = subsets(&slots, b.max_partitions);
    let mut out = Vec::new();
    for c in &crashes {
        for p in &partitions {
            let mut v: Placement = c
                .iter()
                .map(|(i, n)| (*i, Placed::Crash(*n)))
                .chain(p.iter().map(|(i, n)| (*i, Placed::Partition(*n))))
                .collect();
            v.sort();
            out.push(v);
        }
    }
    out
}

/// Every subset of `items` with at most `k` elements, in order.
fn subsets<T: Clone>(items: &[T], k: usize) -> Vec<Vec<T>> {
    let mut out = vec![Vec::new()];
    let mut frontier: Vec<(usize, Vec<T>)> = vec![(0, Vec::new())];
    for _ in 0..k {
        let mut next = Vec::new();
        for (from, set) in &frontier {
            for (i, item) in items.iter().enumerate().skip(*from) {
                let mut s = set.clone();
                s.push(item.clone());
                out.push(s.clone());
                next.push((i + 1, s));
            }
        }
        frontier = next;
    }
    out
}

/// What one placement's run gave.
#[derive(Clone, Debug)]
pub struct PlacementRun {
    /// Harness steps executed.
    pub steps: u64,
    /// The run's trace hash.
    pub trace_hash: u128,
    /// Every violation.
    pub violations: Vec<Violation>,
    /// Whether every fault of the placement fired (a crash of a node that
    /// is down, or a fault at a boundary after the job ended, does not).
    pub all_fired: bool,
}

/// Runs tree_sum under one placement, seeded `seed`.
pub fn run_placement(b: &Bounds, placement: &Placement, seed: u64) -> PlacementRun {
    #[cfg_attr(not(madsim), allow(unused_mut))]
    let mut cfg = ClusterConfig::new(seed, b.tasks, b.standbys, b.spares);
    #[cfg(madsim)]
    {
        cfg.canary = b.canary;
    }
    run_placement_with(b, cfg, placement)
}

/// Runs tree_sum under one placement on a cluster configured by `cfg`.
pub fn run_placement_with(b: &Bounds, cfg: ClusterConfig, placement: &Placement) -> PlacementRun {
    let results = Results::default();
    let (tasks, epochs, r) = (b.tasks, b.epochs, results.clone());
    let topo = Arc::new(TreeTopology::new(2, tasks).expect("a tree of at least one task"));
    let mut c = Cluster::new(
        cfg,
        topo,
        Box::new(move |_| Box::new(TreeSumBuilder::new(tasks, epochs, r.clone()))),
    );
    let deadline = Instant::ZERO + b.deadline;
    let stride = b.stride.max(1);
    let mut next = 0;
    let mut heals: Vec<(Instant, Placed)> = Vec::new();
    let mut fired = 0;
    let mut finished = false;
    loop {
        while let Some((i, f)) = placement.get(next) {
            if i * stride > c.steps() {
                break;
            }
            let now = c.now();
            match f {
                Placed::Crash(n) if c.is_up(*n) => {
                    c.crash(*n);
                    heals.push((now + b.restart_after, *f));
                    fired += 1;
                }
                Placed::Crash(_) => {}
                Placed::Partition(n) => {
                    // From everyone: peers and store.
                    c.partition_node(*n);
                    c.cut_store(*n);
                    heals.push((now + b.partition_for, *f));
                    fired += 1;
                }
            }
            next += 1;
        }
        heals.sort();
        let due = heals.first().map(|h| h.0);
        if let Some(h) = due.filter(|h| *h <= c.now()) {
            let (_, f) = heals.remove(0);
            let _ = h;
            match f {
                Placed::Crash(n) => c.restart(n),
                Placed::Partition(n) => {
                    c.heal_node(n);
                    c.heal_store(n);
                }
            }
            continue;
        }
        // The job ended (every node stopped) with nothing left to heal; a
        // fault placed at a boundary the run never reached does not happen.
        if heals.is_empty() && c.node_ids().iter().all(|n| !c.is_up(*n)) {
            finished = true;
            break;
        }
        match c.next_time() {
            Some(t) if t <= deadline && due.map_or(true, |h| t <= h) => {
                c.step();
            }
            _ => match due {
                Some(h) if h <= deadline => c.run_until(h),
                _ => break,
            },
        }
    }
    let violations = verdict(&mut c, &results, b.epochs, finished, deadline);
    PlacementRun {
        steps: c.steps(),
        trace_hash: c.trace_hash(),
        violations,
        all_fired: fired == placement.len(),
    }
}

/// The totals of an exploration.
#[derive(Clone, Debug, Default)]
pub struct Explored {
    /// Placements run.
    pub placements: u64,
    /// Harness steps executed over all placements (states visited).
    pub steps: u64,
    /// Distinct runs (distinct trace hashes).
    pub distinct: u64,
    /// Placements all of whose faults fired.
    pub all_fired: u64,
    /// The stride used (steps between boundaries).
    pub stride: u64,
    /// Failing placements with their first violation.
    pub failures: Vec<(Placement, Violation)>,
}

/// Runs every placement within `b` (seed `seed` for the harness's own
/// delays), calling `progress` after each.
pub fn explore(b: &Bounds, seed: u64, mut progress: impl FnMut(u64, u64)) -> Explored {
    let b = &with_stride(b, seed);
    let all = placements(b);
    let total = all.len() as u64;
    let mut e = Explored {
        stride: b.stride,
        ..Explored::default()
    };
    let mut hashes = BTreeSet::new();
    for p in &all {
        let run = run_placement(b, p, seed);
        e.placements += 1;
        e.steps += run.steps;
        e.all_fired += u64::from(run.all_fired);
        hashes.insert(run.trace_hash);
        if let Some(v) = run.violations.first() {
            e.failures.push((p.clone(), v.clone()));
        }
        progress(e.placements, total);
    }
    e.distinct = hashes.len() as u64;
    e
}

/// `b` with a stride: its own, or (stride 0) the fault-free run's length
/// spread evenly over the boundaries, so that they span the whole run.
pub fn with_stride(b: &Bounds, seed: u64) -> Bounds {
    let mut b = b.clone();
    if b.stride == 0 {
        let calm = run_placement(
            &Bounds {
                stride: 1,
                ..b.clone()
            },
            &Vec::new(),
            seed,
        );
        b.stride = (calm.steps / b.boundaries.max(1)).max(1);
    }
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subsets_count_is_binomial() {
        let items = [1, 2, 3, 4];
        // 1 + 4 + 6
        assert_eq!(subsets(&items, 2).len(), 11);
        assert_eq!(subsets(&items, 0), vec![Vec::<i32>::new()]);
    }

    #[test]
    fn placements_cover_every_slot() {
        let b = Bounds {
            boundaries: 2,
            ..Bounds::default()
        };
        // 14 slots: crash sets 1 + 14 + 91 = 106, partition sets 1 + 14 = 15.
        assert_eq!(placements(&b).len(), 106 * 15);
    }

    #[test]
    fn a_fault_placed_after_the_job_ended_is_not_a_failure() {
        let b = Bounds {
            boundaries: 100,
            stride: 40,
            max_crashes: 0,
            ..Bounds::default()
        };
        // Step 3,960: far past the end of a 3-epoch run (about 200 steps).
        let late = vec![(99, Placed::Partition(NodeId(1)))];
        let run = run_placement(&b, &late, 1);
        assert!(run.violations.is_empty(), "{:?}", run.violations);
        assert!(!run.all_fired);
        assert_eq!(
            run.trace_hash,
            run_placement(&b, &Vec::new(), 1).trace_hash,
            "the same run as without the fault"
        );
    }

    #[test]
    fn a_small_exploration_passes_and_a_crash_changes_the_run() {
        let b = Bounds {
            boundaries: 2,
            max_crashes: 1,
            max_partitions: 0,
            ..Bounds::default()
        };
        let e = explore(&b, 1, |_, _| {});
        assert_eq!(e.placements, 1 + 14);
        assert!(e.failures.is_empty(), "{:?}", e.failures);
        assert!(e.distinct > 1, "crashes change the runs");
    }
}
