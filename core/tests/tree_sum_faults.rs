//! The tree aggregation (15 tasks, fanout 2, one standby each, two spares,
//! ten epochs) under 1,000 random fault schedules on the core harness. The
//! checker verifies S3–S5, S10–S14, S16 and S17 on every step; each run must
//! then finish with every epoch's answer right, and every fault kind must
//! have fired in each quarter of the sweep.

use taskgraph_core::testkit::{run_schedule, FaultCounts, Schedule, ScheduleConfig};

fn sweep(from: u64, count: u64) {
    let cfg = ScheduleConfig::tree15();
    let mut failures = Vec::new();
    let mut faults = FaultCounts::default();
    let (mut steps, mut died, mut promotions) = (0, 0, 0);
    for seed in from..from + count {
        let out = run_schedule(&cfg, &Schedule::random(seed, &cfg));
        faults.add(&out.faults);
        steps += out.steps;
        died += out.delivered.died;
        promotions += out.delivered.promotions;
        if !out.passed() {
            let v: Vec<String> = out
                .violations
                .iter()
                .take(5)
                .map(|v| v.to_string())
                .collect();
            failures.push(format!("seed {seed}: {}", v.join("; ")));
        }
    }
    eprintln!(
        "seeds {from}..{}: {} failed; {steps} steps; {died} deaths reported; {promotions} promotions; faults {faults:?}",
        from + count,
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "{} of {count} schedules failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    for (kind, n) in faults.kinds() {
        assert!(
            n > 0,
            "fault kind {kind} never fired in seeds {from}..{}",
            from + count
        );
    }
    assert!(died > 0 && promotions > 0, "faults reached the application");
}

#[test]
fn tree_sum_completes_without_faults() {
    let cfg = ScheduleConfig::tree15();
    let out = run_schedule(
        &cfg,
        &Schedule {
            seed: 1,
            faults: vec![],
        },
    );
    assert!(out.passed(), "violations: {:?}", out.violations);
    let epochs: Vec<u64> = out.results.iter().map(|r| r.epoch.0).collect();
    assert_eq!(
        epochs,
        (0..=10).collect::<Vec<_>>(),
        "each epoch verified once"
    );
    assert!(out
        .results
        .iter()
        .all(|r| r.total == r.expected && r.expected == 105 * r.epoch.0));
}

#[test]
fn sweep_seeds_0_to_250() {
    sweep(0, 250);
}

#[test]
fn sweep_seeds_250_to_500() {
    sweep(250, 250);
}

#[test]
fn sweep_seeds_500_to_750() {
    sweep(500, 250);
}

#[test]
fn sweep_seeds_750_to_1000() {
    sweep(750, 250);
}

#[test]
fn same_seed_same_trace_hash() {
    let cfg = ScheduleConfig::tree15();
    for seed in [3, 42, 977] {
        let a = run_schedule(&cfg, &Schedule::random(seed, &cfg));
        let b = run_schedule(&cfg, &Schedule::random(seed, &cfg));
        assert_eq!(
            a.trace_hash, b.trace_hash,
            "seed {seed} replays identically"
        );
        assert_eq!(a.steps, b.steps);
    }
    let a = run_schedule(&cfg, &Schedule::random(1, &cfg));
    let b = run_schedule(&cfg, &Schedule::random(2, &cfg));
    assert_ne!(
        a.trace_hash, b.trace_hash,
        "different seeds, different runs"
    );
}
