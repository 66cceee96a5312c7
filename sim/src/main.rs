//! `taskgraph-sim`: seeded fault sweeps, one-seed replays and exhaustive
//! small-scope exploration. Run it as `cargo xtask sim …`, which builds it
//! with `--cfg madsim` in its own target directory (`sweep` and `replay`
//! need that; `exhaustive` runs on the core's harness in either build).

use std::process::ExitCode;
use std::time::Instant;
use taskgraph_sim::exhaustive::{self, Bounds};

const USAGE: &str = "\
Usage: taskgraph-sim <COMMAND> [OPTIONS]   (through `cargo xtask sim <COMMAND> …`)

Commands:
  sweep       Run many seeds of a scenario under random faults; summarize;
              print the replay command of every failing seed (exit 1 if any)
                --seeds N (500)  --from S (0)  --check-replay K (50: replay
                every K-th seed and compare its trace hash; 0: never)
  replay      Run one seed again; print its trace hash and failures
                --seed S  --trace FILE (write the trace as JSON lines)
  exhaustive  Every placement of up to --crashes C (2) crashes and
              --partitions P (1) node partitions at --boundaries B (8) step
              boundaries --stride K steps apart (default: spread over the
              fault-free run), on the core harness;
              tree of --tasks (3) with --standbys (1), --spares (1), --epochs (3);
              --canary NAME as below
  help        Print this message

Scenario options (sweep, replay):
  --scenario NAME   tree15 (default: tree_sum, 15 tasks, 1 standby each,
                    2 spares, 60 s, every fault kind), small (tree_sum, 7
                    tasks, 10 epochs) or regression (the regression example,
                    7 tasks, 25 steps; weights checked bit for bit)
  --tasks N  --fanout N  --standbys N  --spares N  --epochs N
  --pace-ms MS      pause between epochs
  --faults N        faults per seed
  --window-secs S   faults start within the first S seconds
  --kinds LIST      comma-separated: crash,process-death,partition,one-way,
                    store-cut,store-outage,pause,delay
  --canary NAME     a deliberately broken behaviour: skip-step-down,
                    neighbour-died-twice, accept-fenced, no-restart-notice";

/// Command-line arguments: `--name value` pairs after the command.
struct Args {
    pairs: Vec<(String, String)>,
}

impl Args {
    fn parse(raw: &[String]) -> Result<Args, String> {
        let mut pairs = Vec::new();
        let mut it = raw.iter();
        while let Some(flag) = it.next() {
            let Some(name) = flag.strip_prefix("--") else {
                return Err(format!("unexpected argument {flag:?}"));
            };
            let value = it.next().ok_or_else(|| format!("--{name} needs a value"))?;
            pairs.push((name.to_string(), value.clone()));
        }
        Ok(Args { pairs })
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn num<T: std::str::FromStr>(&self, name: &str, default: T) -> Result<T, String> {
        match self.get(name) {
            None => Ok(default),
            Some(v) => v
                .parse()
                .map_err(|_| format!("--{name} {v:?}: not a number")),
        }
    }

    /// Fails on any flag not in `known`.
    fn only(&self, known: &[&str]) -> Result<(), String> {
        match self
            .pairs
            .iter()
            .find(|(n, _)| !known.contains(&n.as_str()))
        {
            Some((n, _)) => Err(format!("unknown option --{n}")),
            None => Ok(()),
        }
    }

    /// The pairs named in `names`, as they would be typed again.
    #[cfg_attr(not(madsim), allow(dead_code))]
    fn echo(&self, names: &[&str]) -> String {
        self.pairs
            .iter()
            .filter(|(n, _)| names.contains(&n.as_str()))
            .map(|(n, v)| format!(" --{n} {v}"))
            .collect()
    }
}

#[cfg_attr(not(madsim), allow(dead_code))]
const SCENARIO_FLAGS: &[&str] = &[
    "scenario",
    "tasks",
    "fanout",
    "standbys",
    "spares",
    "epochs",
    "pace-ms",
    "faults",
    "window-secs",
    "kinds",
    "canary",
];

fn main() -> ExitCode {
    let raw: Vec<String> = std::env::args().skip(1).collect();
    let Some(cmd) = raw.first() else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    let args = match Args::parse(&raw[1..]) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("taskgraph-sim: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let result = match cmd.as_str() {
        "sweep" => sim::sweep(&args),
        "replay" => sim::replay(&args),
        "exhaustive" => exhaustive_cmd(&args),
        "help" | "--help" | "-h" => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        other => Err(Usage(format!("unknown command {other:?}"))),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(Usage(e)) => {
            eprintln!("taskgraph-sim: {e}\n\n{USAGE}");
            ExitCode::from(2)
        }
    }
}

/// A usage error (exit status 2).
struct Usage(String);

impl From<String> for Usage {
    fn from(s: String) -> Self {
        Usage(s)
    }
}

fn progress_bar(total: u64) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(total);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{elapsed_precise} [{bar:40}] {pos}/{len} {msg} (eta {eta})",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

fn exhaustive_cmd(args: &Args) -> Result<bool, Usage> {
    args.only(&[
        "tasks",
        "standbys",
        "spares",
        "epochs",
        "boundaries",
        "stride",
        "crashes",
        "partitions",
        "seed",
        "canary",
    ])?;
    let d = Bounds::default();
    let b = Bounds {
        tasks: args.num("tasks", d.tasks)?,
        standbys: args.num("standbys", d.standbys)?,
        spares: args.num("spares", d.spares)?,
        epochs: args.num("epochs", d.epochs)?,
        boundaries: args.num("boundaries", d.boundaries)?,
        stride: args.num("stride", d.stride)?,
        max_crashes: args.num("crashes", d.max_crashes)?,
        max_partitions: args.num("partitions", d.max_partitions)?,
        ..d
    };
    #[cfg(madsim)]
    let b = Bounds {
        canary: match args.get("canary") {
            None => None,
            Some(c) => Some(
                taskgraph_core::Canary::from_name(c)
                    .ok_or_else(|| Usage(format!("unknown canary {c:?}")))?,
            ),
        },
        ..b
    };
    #[cfg(not(madsim))]
    if args.get("canary").is_some() {
        return Err(Usage(
            "canaries exist only in --cfg madsim builds (`cargo xtask sim exhaustive …`)".into(),
        ));
    }
    if b.tasks == 0 || b.epochs == 0 {
        return Err(Usage("--tasks and --epochs must be at least 1".into()));
    }
    let seed = args.num("seed", 0u64)?;
    let b = exhaustive::with_stride(&b, seed);
    let total = exhaustive::placements(&b).len() as u64;
    println!(
        "exhaustive: {} tasks, {} standby each, {} spare; up to {} crashes and {} partitions at {} boundaries {} steps apart: {total} placements",
        b.tasks, b.standbys, b.spares, b.max_crashes, b.max_partitions, b.boundaries, b.stride
    );
    let bar = progress_bar(total);
    let wall = Instant::now();
    let e = exhaustive::explore(&b, seed, |done, _| bar.set_position(done));
    bar.finish_and_clear();
    let secs = wall.elapsed().as_secs_f64();
    println!(
        "explored {} placements ({} with every fault fired), {} states (harness steps), {} distinct runs, in {secs:.1} s ({:.0} states/s); {} failed",
        e.placements,
        e.all_fired,
        e.steps,
        e.distinct,
        e.steps as f64 / secs.max(1e-9),
        e.failures.len()
    );
    for (p, v) in e.failures.iter().take(20) {
        println!("  FAILED placement {p:?}: {v}");
    }
    Ok(e.failures.is_empty())
}

#[cfg(not(madsim))]
mod sim {
    use super::{Args, Usage};

    fn needs_madsim() -> Result<bool, Usage> {
        Err(Usage(
            "sweep and replay run the runtime in madsim's simulated world: build with \
             RUSTFLAGS=\"--cfg madsim\" (`cargo xtask sim …` does)"
                .into(),
        ))
    }
    pub fn sweep(_: &Args) -> Result<bool, Usage> {
        needs_madsim()
    }
    pub fn replay(_: &Args) -> Result<bool, Usage> {
        needs_madsim()
    }
}

#[cfg(madsim)]
mod sim {
    use super::{progress_bar, Args, Usage, SCENARIO_FLAGS};
    use std::collections::BTreeMap;
    use std::io::Write;
    use std::time::{Duration, Instant};
    use taskgraph_core::Canary;
    use taskgraph_sim::world::{run_seed, FaultKind, Outcome, Scenario};

    fn scenario(args: &Args) -> Result<Scenario, Usage> {
        let name = args.get("scenario").unwrap_or("tree15");
        let d = Scenario::named(name).ok_or_else(|| {
            Usage(format!(
                "unknown scenario {name:?} (tree15, small, regression)"
            ))
        })?;
        let kinds = match args.get("kinds") {
            None => d.kinds.clone(),
            Some(list) => list
                .split(',')
                .filter(|k| !k.is_empty())
                .map(|k| {
                    FaultKind::from_name(k)
                        .ok_or_else(|| Usage(format!("unknown fault kind {k:?}")))
                })
                .collect::<Result<Vec<_>, _>>()?,
        };
        let canary = match args.get("canary") {
            None => None,
            Some(c) => {
                Some(Canary::from_name(c).ok_or_else(|| Usage(format!("unknown canary {c:?}")))?)
            }
        };
        let pace_ms = args.num("pace-ms", u64::try_from(d.pace.as_millis()).unwrap_or(0))?;
        let s = Scenario {
            tasks: args.num("tasks", d.tasks)?,
            fanout: args.num("fanout", d.fanout)?,
            standbys: args.num("standbys", d.standbys)?,
            spares: args.num("spares", d.spares)?,
            epochs: args.num("epochs", d.epochs)?,
            pace: Duration::from_millis(pace_ms),
            faults: args.num("faults", d.faults)?,
            window: Duration::from_secs(args.num("window-secs", d.window.as_secs())?),
            kinds,
            canary,
            ..d
        };
        s.validate().map_err(Usage)?;
        Ok(s)
    }

    /// Runs one seed; a panic in the run becomes that seed's failure.
    fn run_caught(seed: u64, s: &Scenario) -> Result<Outcome, String> {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run_seed(seed, s))).map_err(|p| {
            p.downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|m| m.to_string()))
                .unwrap_or_else(|| "a panic without a message".to_string())
        })
    }

    fn replay_command(seed: u64, args: &Args) -> String {
        format!(
            "cargo xtask sim replay --seed {seed}{}",
            args.echo(SCENARIO_FLAGS)
        )
    }

    pub fn sweep(args: &Args) -> Result<bool, Usage> {
        let mut known = SCENARIO_FLAGS.to_vec();
        known.extend(["seeds", "from", "check-replay"]);
        args.only(&known)?;
        let s = scenario(args)?;
        let seeds: u64 = args.num("seeds", 500)?;
        let from: u64 = args.num("from", 0)?;
        let check_every: u64 = args.num("check-replay", 50)?;
        let end = from
            .checked_add(seeds)
            .ok_or_else(|| Usage(format!("--from {from} --seeds {seeds}: past the last seed")))?;
        println!(
            "sweep: seeds {from}..{end}, {} tasks (fanout {}), {} standby each, {} spares, {} epochs, {} faults per seed within {:?} from {:?}{}",
            s.tasks,
            s.fanout,
            s.standbys,
            s.spares,
            s.epochs,
            s.faults,
            s.window,
            s.kinds.iter().map(|k| k.name()).collect::<Vec<_>>(),
            s.canary.map(|c| format!(", canary {c}")).unwrap_or_default()
        );
        let bar = progress_bar(seeds);
        let wall = Instant::now();
        let mut fired: BTreeMap<FaultKind, u64> = BTreeMap::new();
        let mut simulated = Duration::ZERO;
        let mut events = 0usize;
        let mut failed: Vec<(u64, Vec<String>)> = Vec::new();
        let mut replays = 0u64;
        let mut recoveries: Vec<Duration> = Vec::new();
        let mut lost_model = 0u64;
        let mut vacancies: Vec<Duration> = Vec::new();
        let mut takeovers: BTreeMap<FaultKind, Vec<Duration>> = BTreeMap::new();
        let mut revoked = 0u64;
        for seed in from..end {
            let out = match run_caught(seed, &s) {
                Ok(out) => out,
                Err(panic) => {
                    let line = format!(
                        "seed {seed} FAILED: panicked: {panic}\n  replay: {}",
                        replay_command(seed, args)
                    );
                    println!("{line}");
                    failed.push((seed, vec![format!("panicked: {panic}")]));
                    bar.inc(1);
                    continue;
                }
            };
            lost_model += u64::from(out.lost_model);
            vacancies.extend(&out.vacancies);
            for (k, v) in &out.takeovers {
                takeovers.entry(*k).or_default().extend(v);
            }
            revoked += out.revoked;
            simulated += out.elapsed;
            events += out.log.len();
            for (k, n) in &out.fired {
                *fired.entry(*k).or_default() += n;
            }
            recoveries.extend(out.recovery);
            let mut f = out.failures(&s);
            if check_every > 0 && (seed - from) % check_every == 0 {
                replays += 1;
                let again = run_caught(seed, &s).map(|o| o.trace_hash);
                if again.as_ref() != Ok(&out.trace_hash) {
                    f.push(format!(
                        "determinism: the replay gave {again:x?}, the first run {:032x}",
                        out.trace_hash
                    ));
                }
            }
            if !f.is_empty() {
                let line = format!(
                    "seed {seed} FAILED: {}\n  replay: {}",
                    f[0],
                    replay_command(seed, args)
                );
                if bar.is_hidden() {
                    println!("{line}");
                } else {
                    bar.println(line);
                }
                failed.push((seed, f));
            }
            bar.set_message(format!("{} failed", failed.len()));
            bar.inc(1);
            if bar.is_hidden() && (seed - from + 1) % 50 == 0 {
                // No terminal (CI): a line every 50 seeds instead of the bar.
                println!(
                    "  {} of {seeds} seeds, {} failed, {:.0} s",
                    seed - from + 1,
                    failed.len(),
                    wall.elapsed().as_secs_f64()
                );
            }
        }
        bar.finish_and_clear();
        let secs = wall.elapsed().as_secs_f64().max(1e-9);
        println!("seeds run: {seeds}; failed: {}", failed.len());
        let counts: Vec<String> = fired
            .iter()
            .map(|(k, n)| format!("{} {n}", k.name()))
            .collect();
        println!("faults fired: {}", counts.join(", "));
        let never: Vec<&str> = s
            .kinds
            .iter()
            .filter(|k| !fired.contains_key(k))
            .map(|k| k.name())
            .collect();
        if !never.is_empty() {
            println!(
                "fault kinds that never fired in this sweep: {}",
                never.join(", ")
            );
        }
        vacancies.sort();
        if let Some(max) = vacancies.last() {
            let at = |q: f64| vacancies[((vacancies.len() - 1) as f64 * q) as usize];
            println!(
                "primary vacancies (key deleted until re-created): {}, median {:?}, p99 {:?}, max {:?}",
                vacancies.len(),
                at(0.5),
                at(0.99),
                max
            );
        }
        for (kind, v) in &mut takeovers {
            v.sort();
            let at = |q: f64| v[((v.len() - 1) as f64 * q) as usize];
            println!(
                "takeover after a {} of a primary (kill to another node's became_primary): {}, median {:?}, p99 {:?}, max {:?}",
                kind.name(),
                v.len(),
                at(0.5),
                at(0.99),
                at(1.0)
            );
        }
        println!("peer sessions revoked on evidence of death: {revoked}");
        recoveries.sort();
        if let (Some(max), false) = (recoveries.last(), recoveries.is_empty()) {
            let median = recoveries[recoveries.len() / 2];
            println!(
                "recovery after the last heal: median {median:?}, max {max:?} (bound {:?})",
                s.liveness_bound()
            );
        }
        println!("events checked: {events}; replays checked for the same trace hash: {replays}");
        if lost_model > 0 {
            println!(
                "runs whose regression lost its model (task 0's new primary had no copy of \
                 it; the application then fails the job): {lost_model}"
            );
        }
        println!(
            "simulated {:.0} s in {secs:.1} s wall: {:.1} simulated s per wall s, {:.0} seeds per minute",
            simulated.as_secs_f64(),
            simulated.as_secs_f64() / secs,
            seeds as f64 * 60.0 / secs
        );
        for (seed, f) in &failed {
            println!("FAILED seed {seed}: {}", f.join("; "));
            println!("  replay: {}", replay_command(*seed, args));
        }
        Ok(failed.is_empty())
    }

    pub fn replay(args: &Args) -> Result<bool, Usage> {
        let mut known = SCENARIO_FLAGS.to_vec();
        known.extend(["seed", "trace"]);
        args.only(&known)?;
        let s = scenario(args)?;
        let seed: u64 = args
            .get("seed")
            .ok_or_else(|| Usage("replay needs --seed".into()))?
            .parse()
            .map_err(|_| Usage("--seed: not a number".into()))?;
        let out = run_seed(seed, &s);
        if let Some(path) = args.get("trace") {
            let write = || -> std::io::Result<()> {
                let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
                for line in &out.trace {
                    writeln!(f, "{}", line.to_json())?;
                }
                f.flush()
            };
            match write() {
                Ok(()) => println!("trace: {} lines written to {path}", out.trace.len()),
                Err(e) => {
                    eprintln!("taskgraph-sim: could not write the trace to {path}: {e}");
                    return Ok(false);
                }
            }
        }
        let fired: Vec<String> = out
            .fired
            .iter()
            .map(|(k, n)| format!("{} {n}", k.name()))
            .collect();
        println!(
            "seed {seed}: {} events, faults fired: {}; simulated {:?}",
            out.log.len(),
            if fired.is_empty() {
                "none".to_string()
            } else {
                fired.join(", ")
            },
            out.elapsed
        );
        if out.lost_model {
            println!("the regression lost its model: task 0's new primary had no copy of it, and the job failed");
        }
        println!("trace hash: {:032x}", out.trace_hash);
        let f = out.failures(&s);
        if f.is_empty() {
            println!("passed");
        } else {
            for x in &f {
                println!("FAILED: {x}");
            }
        }
        Ok(f.is_empty())
    }
}
