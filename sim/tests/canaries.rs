//! The checkers can fail: each deliberately broken behaviour (a canary,
//! switched on through the sim-only `NodeConfig::canary`) is caught within
//! a fixed budget of seeds, and the test prints the command that replays
//! the seed that caught it.
#![cfg(madsim)]

use taskgraph_core::testkit::{run_schedule, Schedule, ScheduleConfig};
use taskgraph_core::Canary;
use taskgraph_sim::world::{run_seed, Scenario};

/// Seeds a canary may take to be caught in the simulated world.
const BUDGET: u64 = 40;

/// Seeds of the core harness's schedules the fencing canary may take (a
/// stale message must land in the same epoch, after its receiver learned
/// of the newer incarnation: rarer).
const HARNESS_BUDGET: u64 = 200;

/// The first seed of the small scenario with `canary` on that fails with a
/// violation of one of `tags` (another failure does not count), and that
/// violation.
fn caught_in_the_world(canary: Canary, tags: &[&str]) -> Option<(u64, String)> {
    let s = Scenario {
        canary: Some(canary),
        ..Scenario::small()
    };
    (0..BUDGET).find_map(|seed| {
        let f = run_seed(seed, &s).failures(&s);
        f.into_iter()
            .find(|x| tags.iter().any(|t| x.contains(&format!(": {t}:"))))
            .map(|first| (seed, first))
    })
}

#[test]
fn the_world_catches_three_canaries_within_the_budget() {
    let mut missed = Vec::new();
    for (canary, tags) in [
        (Canary::SkipStepDown, &["S3"][..]),
        (Canary::NeighbourDiedTwice, &["S4"][..]),
        // A missing restart shows as the next death reported without one
        // (S4) or, if none follows, as the missing restart (S5).
        (Canary::NoRestartNotice, &["S4", "S5"][..]),
    ] {
        match caught_in_the_world(canary, tags) {
            Some((seed, first)) => println!(
                "canary {canary}: caught at seed {seed} ({} of {BUDGET} seeds): {first}\n  replay: cargo xtask sim replay --seed {seed} --scenario small --canary {canary}",
                seed + 1
            ),
            None => missed.push(canary),
        }
    }
    assert!(
        missed.is_empty(),
        "not caught within {BUDGET} seeds: {missed:?}"
    );
}

#[test]
fn the_harness_catches_a_fenced_incarnation_accepted() {
    // In the simulated world a cut-off primary's frames die with its
    // connections (the receiver's heartbeat timeout closes them before the
    // heal), so a stale message rarely arrives there; the harness pauses a
    // primary while it has messages in flight and holds them until around
    // the time its successor takes over, on purpose. Most such messages are
    // also of an older epoch and dropped for that (S11) even with the fence
    // off; the budget is for one that is not.
    let mut cfg = ScheduleConfig::tree15();
    cfg.cluster.canary = Some(Canary::AcceptFenced);
    let caught = (0..HARNESS_BUDGET).find_map(|seed| {
        let out = run_schedule(&cfg, &Schedule::random(seed, &cfg));
        out.violations
            .into_iter()
            .next()
            .map(|v| (seed, v.to_string()))
    });
    let (seed, first) = caught.expect("accept-fenced caught within the harness budget");
    println!(
        "canary accept-fenced: caught on the harness at seed {seed} ({} of {HARNESS_BUDGET} seeds): {first}\n  replay: run_schedule on ScheduleConfig::tree15() with cluster.canary = Some(Canary::AcceptFenced) and Schedule::random({seed}, …), under --cfg madsim",
        seed + 1
    );
    assert!(first.contains("S3"), "{first}");
}

#[test]
fn the_exhaustive_mode_catches_two_canaries() {
    use taskgraph_sim::exhaustive::{explore, Bounds};
    // Runs of 3 tasks and 3 epochs end about 80 ms after a failover: too
    // soon for a missing restart to show (S5 allows 10 s), and too soon for
    // a stale message; a skipped step-down and a doubled death do show.
    for (canary, tag) in [
        (Canary::SkipStepDown, "S3"),
        (Canary::NeighbourDiedTwice, "S4"),
    ] {
        let b = Bounds {
            boundaries: 4,
            max_crashes: 1,
            max_partitions: 1,
            canary: Some(canary),
            ..Bounds::default()
        };
        let e = explore(&b, 0, |_, _| {});
        let caught = e
            .failures
            .iter()
            .filter(|(_, v)| v.what.starts_with(tag))
            .count();
        println!(
            "exhaustive, canary {canary}: {caught} of {} placements fail with {tag}",
            e.placements
        );
        assert!(caught > 0, "{canary} not caught: {:?}", e.failures.first());
    }
}
