//! The tree aggregation on the in-memory cluster harness: 15 tasks (fanout
//! 2), one standby per task, two spare nodes, ten epochs, under a random
//! fault schedule; every step checked against the contract.
//!
//! ```text
//! cargo run --release -p taskgraph-core --example tree_sum_harness              # one run, seed 1
//! cargo run --release -p taskgraph-core --example tree_sum_harness -- --seed 7  # another schedule
//! cargo run --release -p taskgraph-core --example tree_sum_harness -- --sweep 2000 --from 0
//! cargo run --release -p taskgraph-core --example tree_sum_harness -- --seed 7 --trace  # every step
//! ```
//!
//! The production runtime (etcd + TCP) replaces this harness as the main
//! example once it exists.

// This driver measures wall time for its report; the core itself never reads a clock.
#![allow(clippy::disallowed_methods)]

use std::process::ExitCode;
use std::time::Instant as WallClock;
use taskgraph_core::testkit::{run_schedule, FaultCounts, Schedule, ScheduleConfig};
use taskgraph_core::Event;

fn arg(args: &[String], name: &str) -> Option<u64> {
    let i = args.iter().position(|a| a == name)?;
    args.get(i + 1).and_then(|v| v.parse().ok())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!("usage: tree_sum_harness [--seed S [--trace]] | [--sweep N [--from S]]");
        return ExitCode::SUCCESS;
    }
    let cfg = ScheduleConfig::tree15();
    if let Some(n) = arg(&args, "--sweep") {
        return sweep(&cfg, arg(&args, "--from").unwrap_or(0), n);
    }
    let seed = arg(&args, "--seed").unwrap_or(1);
    let mut rec = cfg.clone();
    rec.cluster.record_trace = true;
    let schedule = Schedule::random(seed, &rec);
    println!("seed {seed}: {} faults", schedule.faults.len());
    for (at, f) in &schedule.faults {
        println!("  at {at}: {f:?}");
    }
    let started = WallClock::now();
    let out = run_schedule(&rec, &schedule);
    let wall = started.elapsed();
    if args.iter().any(|a| a == "--trace") {
        for t in &out.trace {
            println!(
                "{} {} {}",
                t.at,
                t.node.map_or("store".to_string(), |n| n.to_string()),
                t.what
            );
        }
    }
    let mut failovers = 0;
    for (at, node, ev) in &out.events {
        match ev {
            Event::BecamePrimary {
                task,
                incarnation,
                promoted: true,
            } => {
                failovers += 1;
                println!("{at} {node} promoted to primary of {task} ({incarnation})");
            }
            Event::EpochChanged { task, epoch } if task.0 == 0 => {
                println!(
                    "{at} epoch {} begins (failovers so far: {failovers})",
                    epoch.0
                )
            }
            _ => {}
        }
    }
    for r in &out.results {
        let ok = if r.total == r.expected { "ok" } else { "WRONG" };
        println!(
            "epoch {:>2}: total {:>5}, expected {:>5} {ok}",
            r.epoch.0, r.total, r.expected
        );
    }
    println!(
        "{} steps, {:.1} s simulated in {:.3} s wall; trace hash {:032x}",
        out.steps,
        out.finished_at.since_origin().as_secs_f64(),
        wall.as_secs_f64(),
        out.trace_hash
    );
    for v in &out.violations {
        println!("VIOLATION {v}");
    }
    if out.passed() {
        println!("every epoch's answer verified; no violation");
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn sweep(cfg: &ScheduleConfig, from: u64, n: u64) -> ExitCode {
    let started = WallClock::now();
    let mut faults = FaultCounts::default();
    let (mut failed, mut steps, mut simulated) = (0u64, 0u64, 0f64);
    for seed in from..from + n {
        let out = run_schedule(cfg, &Schedule::random(seed, cfg));
        faults.add(&out.faults);
        steps += out.steps;
        simulated += out.finished_at.since_origin().as_secs_f64();
        if !out.passed() {
            failed += 1;
            println!(
                "FAILED seed {seed}: {}",
                out.violations
                    .first()
                    .map(|v| v.to_string())
                    .unwrap_or_default()
            );
            println!("  replay: cargo run --release -p taskgraph-core --example tree_sum_harness -- --seed {seed}");
        }
    }
    let wall = started.elapsed().as_secs_f64();
    println!("{n} seeds from {from}: {failed} failed");
    println!("{steps} steps in {wall:.1} s wall: {:.0} steps/s, {:.0} simulated s per wall s, {:.0} seeds/min", steps as f64 / wall, simulated / wall, n as f64 * 60.0 / wall);
    for (kind, count) in faults.kinds() {
        println!("  {kind:>18}: {count}");
    }
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
