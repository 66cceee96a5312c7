//! The `taskgraph-sim` command line: a sweep's summary and exit status, the
//! replay command it prints for a failing seed, and a replay's trace file
//! and hash.
#![cfg(madsim)]

use std::process::{Command, Output};

fn sim(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_taskgraph-sim"))
        .args(args)
        .output()
        .expect("the simulator runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn hash_of(out: &str) -> String {
    out.lines()
        .find_map(|l| l.strip_prefix("trace hash: "))
        .expect("a trace hash line")
        .to_string()
}

#[test]
fn a_passing_sweep_summarizes_and_exits_zero() {
    let o = sim(&[
        "sweep",
        "--scenario",
        "small",
        "--seeds",
        "4",
        "--check-replay",
        "2",
    ]);
    let out = stdout(&o);
    assert!(o.status.success(), "{out}");
    assert!(out.contains("seeds run: 4; failed: 0"), "{out}");
    assert!(out.contains("faults fired: "), "{out}");
    assert!(
        out.contains("replays checked for the same trace hash: 2"),
        "{out}"
    );
    assert!(out.contains("simulated s per wall s"), "{out}");
}

#[test]
fn a_failing_sweep_prints_the_replay_command_and_exits_one() {
    let o = sim(&[
        "sweep",
        "--scenario",
        "small",
        "--canary",
        "neighbour-died-twice",
        "--seeds",
        "2",
    ]);
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(
        out.contains(
            "replay: cargo xtask sim replay --seed 0 --scenario small --canary neighbour-died-twice"
        ),
        "{out}"
    );
    // The printed command reproduces the failure, with the same hash.
    let r = sim(&[
        "replay",
        "--seed",
        "0",
        "--scenario",
        "small",
        "--canary",
        "neighbour-died-twice",
    ]);
    let rout = stdout(&r);
    assert_eq!(r.status.code(), Some(1), "{rout}");
    assert!(rout.contains("FAILED: "), "{rout}");
}

#[test]
fn a_replay_writes_its_trace_and_prints_the_same_hash_twice() {
    let path = std::env::temp_dir().join(format!("taskgraph-sim-{}.jsonl", std::process::id()));
    let p = path.to_str().expect("a UTF-8 temp path");
    let args = ["replay", "--seed", "5", "--scenario", "small", "--trace", p];
    let (a, b) = (sim(&args), sim(&args));
    let (aout, bout) = (stdout(&a), stdout(&b));
    assert!(a.status.success(), "{aout}");
    let h = hash_of(&aout);
    assert_eq!(h.len(), 32, "{h}");
    assert_eq!(
        h,
        hash_of(&bout),
        "same seed, same hash, in another process"
    );
    let trace = std::fs::read_to_string(&path).expect("the trace file");
    let _ = std::fs::remove_file(&path);
    let lines: Vec<&str> = trace.lines().collect();
    assert!(lines.len() > 100, "{} lines", lines.len());
    assert!(lines
        .iter()
        .all(|l| l.starts_with("{\"at_us\":") && l.ends_with("\"}")));
    assert!(
        lines.iter().any(|l| l.contains("\"node\":null")),
        "faults are in the trace"
    );
}

#[test]
fn bad_arguments_are_usage_errors() {
    for args in [
        &["sweep", "--scenario", "nope"][..],
        &["sweep", "--kinds", "crash,meteor"],
        &["replay"],
        &["sweep", "--seeds"],
        &["frobnicate"],
    ] {
        let o = sim(args);
        assert_eq!(o.status.code(), Some(2), "{args:?}");
        assert!(!o.stderr.is_empty(), "{args:?} says why");
    }
}
