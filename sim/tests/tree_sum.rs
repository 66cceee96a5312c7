//! tree_sum in madsim's deterministic world: the production runtime over the
//! simulated network, the store on its own machine (run with `--cfg madsim`;
//! `cargo xtask test` does).
#![cfg(madsim)]

use std::time::Duration;
use taskgraph_sim::world::{run_tree_sum, Outcome, Scenario};

fn scenario() -> Scenario {
    Scenario {
        tasks: 7,
        standbys: 1,
        spares: 1,
        epochs: 10,
        pace: Duration::from_millis(200),
    }
}

fn check(out: &Outcome) {
    assert!(
        (1..=10).all(|e| out.results.iter().any(|r| r.epoch.0 == e)),
        "every epoch verified: {:?} {:?}",
        out.results,
        out.exits
    );
    assert!(
        out.results.iter().all(|r| r.total == r.expected),
        "{:?}",
        out.results
    );
    let ended = out
        .exits
        .iter()
        .filter(|(_, e)| e.as_deref().is_some_and(|e| e.contains("JobEnded")))
        .count();
    assert_eq!(
        ended,
        out.exits.len(),
        "every node (the crashed one restarted) saw the job end: {:?}",
        out.exits
    );
}

#[madsim::test]
async fn tree_sum_finishes_with_right_answers_after_task_0s_primary_crashes() {
    // Node 1 is task 0's first primary.
    let out = run_tree_sum(&scenario(), Some((1, Duration::from_millis(700)))).await;
    check(&out);
    let promoted = out
        .events
        .iter()
        .any(|e| e.contains("BecamePrimary { task: TaskId(0)") && e.contains("promoted: true"));
    assert!(promoted, "task 0's standby took over");
}

#[test]
fn the_same_seed_replays_the_same_run() {
    let run = |seed: u64| {
        let rt = madsim::runtime::Runtime::with_seed_and_config(seed, madsim::Config::default());
        rt.block_on(async {
            run_tree_sum(&scenario(), Some((3, Duration::from_millis(900)))).await
        })
    };
    let (a, b, c) = (run(7), run(7), run(8));
    check(&a);
    assert_eq!(
        a.events, b.events,
        "seed 7 twice: the same events at the same simulated times"
    );
    assert_ne!(a.events, c.events, "another seed, another run");
}

#[test]
fn tree_sum_survives_random_crashes_partitions_and_store_outages() {
    use std::collections::BTreeMap;
    use taskgraph_sim::world::{check_log, random_faults, run_with_faults};
    let mut kinds: BTreeMap<&'static str, usize> = BTreeMap::new();
    let mut failed = Vec::new();
    let mut checked = 0;
    for seed in 0..200u64 {
        let faults = random_faults(seed, 15, 4, Duration::from_secs(3));
        for f in &faults {
            *kinds.entry(f.kind()).or_default() += 1;
        }
        let rt = madsim::runtime::Runtime::with_seed_and_config(seed, madsim::Config::default());
        let out = rt.block_on(async { run_with_faults(&scenario(), &faults).await });
        let verified = (1..=10).all(|e| out.results.iter().any(|r| r.epoch.0 == e));
        let right = out.results.iter().all(|r| r.total == r.expected);
        let ended = out
            .exits
            .iter()
            .all(|(_, e)| e.as_deref().is_some_and(|e| e.contains("JobEnded")));
        let violations = check_log(7, &out.log);
        checked += out.log.len();
        if !(verified && right && ended && violations.is_empty()) {
            failed.push(format!(
                "seed {seed}: verified {verified}, right {right}, ended {ended}; violations {violations:?}; faults {faults:?}; exits {:?}",
                out.exits
            ));
        }
    }
    println!("fault kinds over 200 seeds: {kinds:?}; {checked} events checked");
    assert!(checked > 0, "the checker saw events");
    assert!(
        failed.is_empty(),
        "{} of 200 seeds failed:\n{}",
        failed.len(),
        failed.join("\n")
    );
    for kind in ["crash", "partition", "one_way", "store_outage"] {
        assert!(
            kinds.get(kind).is_some_and(|n| *n > 0),
            "fault kind {kind} never drawn"
        );
    }
}

#[test]
fn the_log_checker_catches_a_delivery_made_twice_and_an_epoch_out_of_order() {
    use taskgraph_core::Event;
    use taskgraph_sim::world::check_log;
    let rt = madsim::runtime::Runtime::with_seed_and_config(3, madsim::Config::default());
    let out = rt.block_on(async { run_tree_sum(&scenario(), None).await });
    assert!(check_log(7, &out.log).is_empty(), "the real log is clean");
    let mut doubled = out.log.clone();
    let i = doubled
        .iter()
        .position(|(_, _, e)| matches!(e, Event::MetaDelivered { .. }))
        .expect("a meta delivery");
    doubled.insert(i + 1, doubled[i].clone());
    let v = check_log(7, &doubled);
    assert!(v.iter().any(|v| v.what.starts_with("S12")), "{v:?}");
    let mut reordered = out.log.clone();
    let j = reordered
        .iter()
        .position(|(_, _, e)| matches!(e, Event::EpochChanged { epoch, .. } if epoch.0 == 2))
        .expect("epoch 2");
    reordered.insert(j + 1, reordered[j].clone());
    let v = check_log(7, &reordered);
    assert!(v.iter().any(|v| v.what.starts_with("S10")), "{v:?}");
}
