//! The benchmark binary runs and prints its tables (tiny sizes; the figures
//! themselves come from `cargo xtask bench`, in release mode).

use std::process::Command;

fn bench(args: &[&str]) -> (bool, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_taskgraph-bench"))
        .args(args)
        .output()
        .expect("the benchmark binary runs");
    (
        o.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
    )
}

#[test]
fn epochs_prints_both_systems_and_one_store_write_per_epoch() {
    let (ok, out) = bench(&["epochs", "--epochs", "200", "--runs", "1", "--tasks", "7"]);
    assert!(ok, "{out}");
    assert!(out.contains("| raw tokio TCP tree"), "{out}");
    // One compare-and-swap of the epoch key per epoch; at most a late claim
    // of the setup besides.
    let row = out
        .lines()
        .find(|l| l.starts_with("| taskgraph ("))
        .unwrap_or_else(|| panic!("no taskgraph row: {out}"));
    let writes: f64 = row
        .split('|')
        .nth(3)
        .and_then(|c| c.trim().parse().ok())
        .unwrap_or_else(|| panic!("no writes column: {row}"));
    assert!((1.0..1.1).contains(&writes), "{row}");
    assert!(out.contains("ratio taskgraph / raw TCP: "), "{out}");
}

#[test]
fn data_prints_both_systems() {
    let (ok, out) = bench(&["data", "--mib", "1", "--rounds", "3", "--runs", "1"]);
    assert!(ok, "{out}");
    assert!(out.contains("| taskgraph request_data |"), "{out}");
    assert!(out.contains("| raw tokio TCP, same exchange |"), "{out}");
}

#[test]
fn bad_arguments_are_usage_errors() {
    for args in [
        &["epochs", "--tasks", "x"][..],
        &["data", "--mib", "0"],
        &["nope"],
    ] {
        let o = Command::new(env!("CARGO_BIN_EXE_taskgraph-bench"))
            .args(args)
            .output()
            .expect("runs");
        assert_eq!(o.status.code(), Some(2), "{args:?}");
    }
}
