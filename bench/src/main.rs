//! `taskgraph-bench`: taskgraph measured against a baseline in the same run,
//! each benchmark printing a table (run through `cargo xtask bench …`, in
//! release mode).
//!
//! - `epochs`: epochs per second of a tree aggregation (every task flags
//!   its parent with a meta payload once its children have; the root then
//!   advances the epoch), on loopback with the embedded store, against a
//!   plain tokio TCP tree doing the same rounds with no fault tolerance;
//!   and the store writes per epoch.
//! - `data`: `request_data` throughput of large payloads between two nodes,
//!   against raw tokio TCP moving the same bytes.

mod cluster;
mod data;
mod epochs;
mod failover;

use std::process::ExitCode;

const USAGE: &str = "\
Usage: taskgraph-bench <BENCH> [OPTIONS]   (through `cargo xtask bench <BENCH> …`)

Benchmarks:
  epochs   Tree aggregation, epochs per second, vs a raw TCP tree
             --tasks N (15)  --fanout N (2)  --standbys N (1)  --epochs N (3000)
             --meta BYTES (1024)  --runs N (3)
             --store embedded|etcd (embedded; etcd: a real etcd started here)
             --ttl SECS (2)
  data     request_data of large payloads between two nodes, vs raw TCP
             --mib N (4)  --rounds N (50)  --runs N (3)
  failover SIGKILL / SIGTERM / SIGSTOP of a primary process on a real etcd
           (TTL 2 s), vs etcd's own lock handing over after a SIGKILL of
           its holder
             --kills N (30)  --stops N (10)  --freezes N (10)  --locks N (30)
             --tree-sum PATH (the tree_sum example built with --features etcd;
             default: examples/tree_sum next to this binary)
  scale    The aggregation with 15, 255 and 1,023 tasks in one process:
           epoch time, store writes, memory per task
             --epochs N (100)  --standbys N (1)  --ttl SECS (2)
             --tasks LIST (15,255,1023)  --limit SECS (300, per size)
  all      Every benchmark but scale, with its defaults";

/// `--name value` options.
pub struct Args(Vec<(String, String)>);

impl Args {
    fn parse(raw: &[String]) -> Result<Args, String> {
        let mut v = Vec::new();
        let mut it = raw.iter();
        while let Some(f) = it.next() {
            let name = f
                .strip_prefix("--")
                .ok_or_else(|| format!("unexpected argument {f:?}"))?;
            let value = it.next().ok_or_else(|| format!("--{name} needs a value"))?;
            v.push((name.to_string(), value.clone()));
        }
        Ok(Args(v))
    }

    /// The number given for `--name`, or `default`; fails on anything but a
    /// number and on any option not in `known`.
    pub fn num(&self, name: &str, default: u64) -> Result<u64, String> {
        match self.0.iter().rev().find(|(n, _)| n == name) {
            None => Ok(default),
            Some((_, v)) => v
                .parse()
                .map_err(|_| format!("--{name} {v:?}: not a number")),
        }
    }

    /// The text given for `--name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Fails on any option not in `known`.
    pub fn only(&self, known: &[&str]) -> Result<(), String> {
        match self.0.iter().find(|(n, _)| !known.contains(&n.as_str())) {
            Some((n, _)) => Err(format!("unknown option --{n}")),
            None => Ok(()),
        }
    }
}

fn main() -> ExitCode {
    let raw: Vec<String> = std::env::args().skip(1).collect();
    let Some(cmd) = raw.first() else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    if matches!(cmd.as_str(), "help" | "--help" | "-h") {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    let args = match Args::parse(&raw[1..]) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("taskgraph-bench: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    if cmd == "failover" {
        return finish(failover::run(&args));
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("taskgraph-bench: no tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        match cmd.as_str() {
            "epochs" => epochs::run(&args).await,
            "data" => data::run(&args).await,
            "scale" => epochs::scale(&args).await,
            "all" => match epochs::run(&Args(Vec::new())).await {
                Ok(()) => data::run(&Args(Vec::new())).await,
                e => e,
            },
            other => Err(Failure::Usage(format!("unknown benchmark {other:?}"))),
        }
    });
    let result = match (result, cmd.as_str()) {
        (Ok(()), "all") => failover::run(&Args(Vec::new())),
        (r, _) => r,
    };
    finish(result)
}

fn finish(result: Result<(), Failure>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(e)) => {
            eprintln!("taskgraph-bench: {e}\n\n{USAGE}");
            ExitCode::from(2)
        }
        Err(Failure::Run(e)) => {
            eprintln!("taskgraph-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Why a benchmark did not produce its table.
#[derive(Debug)]
pub enum Failure {
    /// Bad arguments (exit status 2).
    Usage(String),
    /// The run failed (exit status 1).
    Run(String),
}

impl From<String> for Failure {
    fn from(s: String) -> Self {
        Failure::Usage(s)
    }
}

/// The median of `v` (sorted in place); zero for an empty slice.
pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}
