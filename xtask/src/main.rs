//! Project automation, run as `cargo xtask <command>` (see `.cargo/config.toml`).
//!
//! Uses only the standard library so that it builds before anything else.

use std::env;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

const USAGE: &str = "\
Usage: cargo xtask <COMMAND>

Commands:
  test    Install what the tests need when missing (Debian: etcd-server,
          etcd-client, protobuf-compiler; as root), then run every check CI
          runs, in order, stopping at the first failure: formatting, clippy,
          the examples, all tests (real etcd and real processes included), doc tests,
          the simulation tests (the runtime under madsim), a 500-seed
          simulation sweep of the default scenario, and every fuzz target
          for 10 s from its committed corpus
  sim     Build the simulator with --cfg madsim (release, own target
          directory target/madsim-release) and run it: `cargo xtask sim
          sweep --seeds 1000`, `cargo xtask sim replay --seed 7 --trace
          t.jsonl`, `cargo xtask sim exhaustive` (`cargo xtask sim help`)
  bench   Build the benchmarks (release) and run them, each printing a table
          against its baseline: `cargo xtask bench all`, `cargo xtask bench
          epochs --tasks 63` (`cargo xtask bench help`); results and commands
          are kept in BENCHMARKS.md
  fuzz    Run every fuzz target (fuzz/, cargo-fuzz on stable: `-s none`;
          cargo-fuzz is installed when missing) for --secs N seconds each
          (default 60), or only the targets named: `cargo xtask fuzz --secs
          600 wire_decode`. New inputs go to fuzz/target/corpus/, the seeds
          in fuzz/corpus/ stay as committed; a crash fails with its input in
          fuzz/artifacts/
  help    Print this message";

/// One step of a command: a program and its arguments, run from the
/// workspace root.
struct Step {
    /// What the step checks, for messages.
    name: &'static str,
    /// The program; `"cargo"` means the cargo that runs xtask.
    program: &'static str,
    /// Its arguments.
    args: &'static [&'static str],
    /// Extra environment variables.
    env: &'static [(&'static str, &'static str)],
}

/// The steps of `cargo xtask test`, in order. Add new checks here.
///
/// Every step builds with all features, so the etcd backend (which needs
/// `protoc`) and its tests against a real etcd server are included; the
/// packages in [`REQUIRED_PACKAGES`] are installed first when missing.
const TEST_STEPS: &[Step] = &[
    Step {
        name: "formatting",
        program: "cargo",
        args: &["fmt", "--all", "--", "--check"],
        env: &[],
    },
    Step {
        name: "clippy",
        program: "cargo",
        args: &[
            "clippy",
            "--workspace",
            "--all-targets",
            "--all-features",
            "--",
            "-D",
            "warnings",
        ],
        env: &[],
    },
    Step {
        // The process tests run the tree_sum example as a program; build it
        // (with the etcd backend) under its plain name first.
        name: "examples",
        program: "cargo",
        args: &["build", "--workspace", "--examples", "--all-features"],
        env: &[],
    },
    Step {
        name: "tests",
        program: "cargo",
        args: &["test", "--workspace", "--all-targets", "--all-features"],
        env: &[],
    },
    Step {
        name: "doc tests",
        program: "cargo",
        args: &["test", "--workspace", "--doc", "--all-features"],
        env: &[],
    },
    Step {
        // The simulator's own code exists only under --cfg madsim.
        name: "simulation clippy",
        program: "cargo",
        args: &[
            "clippy",
            "-p",
            "taskgraph-sim",
            "--all-targets",
            "--target-dir",
            "target/madsim",
            "--",
            "-D",
            "warnings",
        ],
        env: &[("RUSTFLAGS", "--cfg madsim")],
    },
    Step {
        // The runtime must compile unchanged under the madsim simulator and
        // run there (its own target directory: other RUSTFLAGS invalidate
        // the cache).
        name: "simulation",
        program: "cargo",
        args: &[
            "test",
            "-p",
            "taskgraph-sim",
            "--target-dir",
            "target/madsim",
        ],
        env: &[("RUSTFLAGS", "--cfg madsim")],
    },
    Step {
        // The default scenario's sweep: 500 seeds of tree15 (15 tasks, one
        // standby each, 2 spares, 60 simulated seconds, every fault kind),
        // every event checked, every 25th seed replayed for the same trace
        // hash. Built with the test profile, in the simulation tests' target
        // directory, so it reuses their build.
        name: "simulation sweep",
        program: "cargo",
        args: &[
            "run",
            "--profile",
            "test",
            "-p",
            "taskgraph-sim",
            "--bin",
            "taskgraph-sim",
            "--target-dir",
            "target/madsim",
            "--",
            "sweep",
            "--seeds",
            "500",
            "--check-replay",
            "25",
        ],
        env: &[("RUSTFLAGS", "--cfg madsim")],
    },
    Step {
        // Every fuzz target for a short while from its committed corpus
        // (which holds the inputs of every bug a target found).
        name: "fuzz smoke",
        program: "cargo",
        args: &["xtask", "fuzz", "--secs", "10"],
        env: &[],
    },
];

/// The fuzz targets in `fuzz/fuzz_targets/`, each with its seed corpus in
/// `fuzz/corpus/NAME/`.
const FUZZ_TARGETS: &[&str] = &[
    "wire_decode",
    "store_values",
    "key_parse",
    "memstore_ops",
    "node_inputs",
];

/// Debian packages the tests need: etcd (server and etcdctl) for the
/// real-etcd and real-process tests, protoc to build the etcd client.
const REQUIRED_PACKAGES: &[&str] = &["etcd-server", "etcd-client", "protobuf-compiler"];

/// Binaries that tell whether a Debian package is installed, for packages
/// whose binary is not named like the package.
const PACKAGE_BINARIES: &[(&str, &str)] = &[
    ("etcd-server", "etcd"),
    ("etcd-client", "etcdctl"),
    ("protobuf-compiler", "protoc"),
];

/// A failure that ends xtask with a message and an exit code.
struct Failure {
    message: String,
    code: u8,
}

impl Failure {
    fn new(message: impl Into<String>) -> Self {
        Failure {
            message: message.into(),
            code: 1,
        }
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("test") if args.len() == 1 => {
            ensure_debian_packages(REQUIRED_PACKAGES).and_then(|()| run_steps(TEST_STEPS))
        }
        Some("sim") => run_sim(&args[1..]),
        Some("bench") => run_bench(&args[1..]),
        Some("fuzz") => run_fuzz(&args[1..]),
        Some("help" | "--help" | "-h") => {
            println!("{USAGE}");
            Ok(())
        }
        Some("test") => Err(Failure {
            message: format!("`test` takes no arguments, got {:?}\n\n{USAGE}", &args[1..]),
            code: 2,
        }),
        Some(other) => Err(Failure {
            message: format!("unknown command `{other}`\n\n{USAGE}"),
            code: 2,
        }),
        None => Err(Failure {
            message: format!("no command given\n\n{USAGE}"),
            code: 2,
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("xtask: error: {}", failure.message);
            ExitCode::from(failure.code)
        }
    }
}

/// `cargo xtask sim ARGS`: runs the `taskgraph-sim` binary built with
/// `--cfg madsim` in release mode, in its own target directory.
fn run_sim(args: &[String]) -> Result<(), Failure> {
    cargo_run(
        "the simulator",
        &[
            "-p",
            "taskgraph-sim",
            "--bin",
            "taskgraph-sim",
            "--target-dir",
            "target/madsim-release",
        ],
        &[("RUSTFLAGS", "--cfg madsim")],
        args,
    )
}

/// `cargo xtask bench ARGS`: runs the `taskgraph-bench` binary in release
/// mode.
fn run_bench(args: &[String]) -> Result<(), Failure> {
    // The benchmarks start real etcd servers (failover, `epochs --store
    // etcd`) and are built with the etcd backend, which needs protoc.
    ensure_debian_packages(REQUIRED_PACKAGES)?;
    if matches!(args.first().map(String::as_str), Some("failover" | "all")) {
        // The failover benchmark runs tree_sum processes against etcd.
        let status = Command::new(cargo())
            .args([
                "build",
                "--release",
                "--quiet",
                "--features",
                "etcd",
                "--example",
                "tree_sum",
            ])
            .current_dir(workspace_root())
            .status()
            .map_err(|err| Failure::new(format!("could not build tree_sum: {err}")))?;
        if !status.success() {
            return Err(Failure::new(format!("building tree_sum failed: {status}")));
        }
    }
    cargo_run(
        "the benchmarks",
        &["-p", "taskgraph-bench", "--features", "etcd"],
        &[],
        args,
    )
}

/// `cargo xtask fuzz [--secs N] [TARGET ...]`.
fn run_fuzz(args: &[String]) -> Result<(), Failure> {
    let usage = |m: String| Failure {
        message: format!("{m}\n\n{USAGE}"),
        code: 2,
    };
    let mut secs: u64 = 60;
    let mut targets: Vec<&str> = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "--secs" {
            secs = it
                .next()
                .and_then(|v| v.parse().ok())
                .filter(|n| *n > 0)
                .ok_or_else(|| usage("--secs needs a number of seconds above 0".into()))?;
        } else if let Some(t) = FUZZ_TARGETS.iter().find(|t| **t == a.as_str()) {
            targets.push(t);
        } else {
            return Err(usage(format!(
                "unknown fuzz target or option `{a}` (targets: {})",
                FUZZ_TARGETS.join(", ")
            )));
        }
    }
    if targets.is_empty() {
        targets = FUZZ_TARGETS.to_vec();
    }
    ensure_cargo_fuzz()?;
    let dir = workspace_root().join("fuzz");
    for t in targets {
        // libFuzzer adds what it finds to the first corpus directory: a
        // scratch one, so that the committed seeds stay as they are.
        let scratch = dir.join("target").join("corpus").join(t);
        std::fs::create_dir_all(&scratch)
            .map_err(|e| Failure::new(format!("cannot create {}: {e}", scratch.display())))?;
        let seeds = dir.join("corpus").join(t);
        let shown = format!("cargo fuzz run -s none {t} (for {secs} s)");
        println!("\n==> {shown}");
        let status = Command::new(cargo())
            .args(["fuzz", "run", "-s", "none", t])
            .arg(&scratch)
            .arg(&seeds)
            .arg("--")
            .arg(format!("-max_total_time={secs}"))
            .current_dir(&dir)
            .status()
            .map_err(|err| Failure::new(format!("could not run `{shown}`: {err}")))?;
        if !status.success() {
            return Err(Failure::new(format!(
                "fuzz target {t} failed with {status}; the input is in fuzz/artifacts/{t}/"
            )));
        }
    }
    Ok(())
}

/// Installs cargo-fuzz with `cargo install --locked` when `cargo fuzz` is
/// missing.
fn ensure_cargo_fuzz() -> Result<(), Failure> {
    let present = Command::new(cargo())
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if present {
        return Ok(());
    }
    println!("\n==> cargo install cargo-fuzz --locked");
    let status = Command::new(cargo())
        .args(["install", "cargo-fuzz", "--locked"])
        .status()
        .map_err(|err| Failure::new(format!("could not run cargo install: {err}")))?;
    if status.success() {
        Ok(())
    } else {
        Err(Failure::new(format!(
            "installing cargo-fuzz failed with {status}"
        )))
    }
}

/// `cargo run --release --quiet SELECT -- ARGS` from the workspace root with
/// `env`; the program's exit code becomes xtask's.
fn cargo_run(
    what: &str,
    select: &[&str],
    env: &[(&str, &str)],
    args: &[String],
) -> Result<(), Failure> {
    let status = Command::new(cargo())
        .args(["run", "--release", "--quiet"])
        .args(select)
        .arg("--")
        .args(args)
        .envs(env.iter().copied())
        .current_dir(workspace_root())
        .status()
        .map_err(|err| Failure::new(format!("could not run {what}: {err}")))?;
    match status.code() {
        Some(0) => Ok(()),
        code => Err(Failure {
            message: format!("{what} exited with {status}"),
            code: code.and_then(|c| u8::try_from(c).ok()).unwrap_or(1),
        }),
    }
}

/// The workspace root: the parent of this package's directory.
fn workspace_root() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir.parent().unwrap_or(manifest_dir).to_path_buf()
}

/// The cargo to run: the one that runs xtask if known, else `cargo` on PATH.
fn cargo() -> OsString {
    env::var_os("CARGO").unwrap_or_else(|| "cargo".into())
}

/// Runs `steps` in order from the workspace root, stopping at the first one
/// that fails.
fn run_steps(steps: &[Step]) -> Result<(), Failure> {
    let root = workspace_root();
    for (number, step) in steps.iter().enumerate() {
        let env: String = step
            .env
            .iter()
            .map(|(k, v)| format!("{k}=\"{v}\" "))
            .collect();
        let shown = format!("{env}{} {}", step.program, step.args.join(" "));
        println!(
            "\n==> [{}/{}] {}: {shown}",
            number + 1,
            steps.len(),
            step.name
        );
        let program = if step.program == "cargo" {
            cargo()
        } else {
            step.program.into()
        };
        let status = Command::new(&program)
            .args(step.args)
            .envs(step.env.iter().copied())
            .current_dir(&root)
            .status()
            .map_err(|err| Failure::new(format!("could not run `{shown}`: {err}")))?;
        if !status.success() {
            return Err(Failure::new(format!(
                "step {} of {} ({}) failed with {status}: `{shown}`",
                number + 1,
                steps.len(),
                step.name
            )));
        }
    }
    println!("\nxtask: all {} steps passed", steps.len());
    Ok(())
}

/// Makes sure the Debian `packages` are installed, judging by the binary each
/// one provides ([`PACKAGE_BINARIES`], or the package's own name).
///
/// For each package whose binary is not on PATH: when running as root, runs
/// `apt-get update` (once) and `apt-get install -y PACKAGE`; otherwise fails
/// with a message naming the package to install.
fn ensure_debian_packages(packages: &[&str]) -> Result<(), Failure> {
    let mut updated = false;
    for &package in packages {
        let binary = PACKAGE_BINARIES
            .iter()
            .find(|(name, _)| *name == package)
            .map_or(package, |&(_, binary)| binary);
        if find_on_path(binary).is_some() {
            continue;
        }
        if !running_as_root() {
            return Err(Failure::new(format!(
                "`{binary}` not found on PATH: install the Debian package `{package}` \
                 (e.g. `sudo apt-get install -y {package}`) and run again"
            )));
        }
        if !updated {
            run_apt(&["update"])?;
            updated = true;
        }
        run_apt(&["install", "-y", package])?;
        if find_on_path(binary).is_none() {
            return Err(Failure::new(format!(
                "installed the Debian package `{package}`, but `{binary}` is still not on PATH"
            )));
        }
    }
    Ok(())
}

/// Runs `apt-get ARGS` non-interactively, printing the command first.
fn run_apt(args: &[&str]) -> Result<(), Failure> {
    let shown = format!("apt-get {}", args.join(" "));
    println!("\n==> {shown}");
    let status = Command::new("apt-get")
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .map_err(|err| Failure::new(format!("could not run `{shown}`: {err}")))?;
    if status.success() {
        Ok(())
    } else {
        Err(Failure::new(format!("`{shown}` failed with {status}")))
    }
}

/// The path of the executable `binary` in a directory of PATH, if any.
fn find_on_path(binary: &str) -> Option<PathBuf> {
    let path = env::var_os("PATH")?;
    env::split_paths(&path)
        .map(|dir| dir.join(binary))
        .find(|candidate| is_executable(candidate))
}

#[cfg(unix)]
fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .map(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

#[cfg(not(unix))]
fn is_executable(path: &Path) -> bool {
    path.is_file()
}

/// Whether this process runs as root (effective user id 0), asked of `id -u`.
fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .ok()
        .filter(|output| output.status.success())
        .is_some_and(|output| String::from_utf8_lossy(&output.stdout).trim() == "0")
}
