//! The tree aggregation under random fault schedules (DESIGN §5 on the core harness).

use taskgraph_core::testkit::{run_schedule, Schedule, ScheduleConfig};

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
    for v in &out.violations {
        eprintln!("{v}");
    }
    eprintln!(
        "finished at {} after {} steps: {:?}",
        out.finished_at, out.steps, out.delivered
    );
    assert!(out.passed(), "violations: {:?}", out.violations);
    assert_eq!(
        out.results.len(),
        11,
        "epochs 0..=10 each verified once: {:?}",
        out.results
    );
}

fn sweep(from: u64, count: u64) -> (Vec<String>, taskgraph_core::testkit::FaultCounts, u64) {
    let cfg = ScheduleConfig::tree15();
    let mut failures = Vec::new();
    let mut faults = taskgraph_core::testkit::FaultCounts::default();
    let mut steps = 0;
    for seed in from..from + count {
        let sched = Schedule::random(seed, &cfg);
        let out = run_schedule(&cfg, &sched);
        faults.add(&out.faults);
        steps += out.steps;
        if std::env::var("SWEEP_VERBOSE").is_ok() {
            eprintln!(
                "seed {seed}: {:?} exit {:?} at {}",
                out.delivered, out.exit, out.finished_at
            );
        }
        if !out.passed() {
            failures.push(format!(
                "seed {seed}: {}",
                out.violations
                    .iter()
                    .map(|v| v.to_string())
                    .collect::<Vec<_>>()
                    .join("; ")
            ));
        }
    }
    (failures, faults, steps)
}

#[test]
fn sweep_probe() {
    let n: u64 = std::env::var("SWEEP")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(50);
    let (failures, faults, steps) = sweep(0, n);
    eprintln!(
        "{} failures of {n}; faults {:?}; steps {steps}",
        failures.len(),
        faults
    );
    for f in failures.iter().take(15) {
        eprintln!("{}", &f[..f.len().min(600)]);
    }
    assert!(failures.is_empty());
}
