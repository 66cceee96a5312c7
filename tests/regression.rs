//! The regression example as a test: the same job (same seed, same data)
//! run once without failures and once with primaries killed, task 0's
//! included; the final weights must be bit-identical.

#[path = "../examples/regression.rs"]
mod regression;

use regression::app::{Problem, Vector};
use regression::harness::{run, Chaos, JobSpec, Outcome, Target};
use std::time::Duration;
use taskgraph::TaskId;

const STEPS: u64 = 25;

fn spec(job: &str, chaos: Chaos) -> JobSpec {
    JobSpec {
        job: job.into(),
        tasks: 7,
        fanout: 2,
        standbys: 1,
        spares: 2,
        problem: Problem {
            seed: 7,
            points_per_task: 100,
            noise: 0.05,
            lr: 1.5,
            steps: STEPS,
        },
        // Long enough epochs for the kills to land while the job runs.
        pace: Duration::from_millis(120),
        ttl: Duration::from_secs(2),
        chaos,
        kill_guard: Duration::from_secs(3),
        replace_after: Duration::from_secs(1),
        timeout: Duration::from_secs(30),
        verbose: std::env::var_os("REGRESSION_VERBOSE").is_some(),
    }
}

fn bits(w: &Vector) -> Vec<u64> {
    w.iter().map(|x| x.to_bits()).collect()
}

fn summary(name: &str, o: &Outcome) -> (Vector, f64) {
    let (w, loss) = o
        .report
        .final_result(STEPS)
        .unwrap_or_else(|| panic!("{name}: no final result: {:?}", o.exits));
    let initial = o.report.initial_loss().expect("initial loss");
    println!(
        "{name}: {:.1} s, {} epochs, {} kills, {} promotions ({} of task 0, resumed: {:?}), \
         {} spare takeovers; loss {initial:.4e} -> {loss:.4e}; w = {w:?}",
        o.wall.as_secs_f64(),
        o.epochs + 1,
        o.kills.len(),
        o.promotions,
        o.root_promotions,
        o.report.resumes(),
        o.spare_takeovers,
    );
    assert!(o.completed, "{name}: job did not complete: {:?}", o.exits);
    assert_eq!(o.report.inconsistency(), None, "{name}: passes disagree");
    (w, loss)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_do_not_change_a_single_bit_of_the_model() {
    let calm = run(&spec("regression-calm", Chaos::None))
        .await
        .expect("calm run starts");
    let (w_calm, loss_calm) = summary("without failures", &calm);
    assert!(calm.kills.is_empty());

    let kills = vec![
        (Duration::from_millis(300), Target::PrimaryOf(TaskId(0))),
        (Duration::from_millis(2800), Target::OtherPrimary),
        (Duration::from_millis(3800), Target::PrimaryOf(TaskId(0))),
    ];
    let chaos = run(&spec("regression-chaos", Chaos::Script { kills, seed: 3 }))
        .await
        .expect("chaos run starts");
    let (w_chaos, loss_chaos) = summary("with failures", &chaos);

    // Same data, same steps: the same model, bit for bit.
    assert_eq!(bits(&w_calm), bits(&w_chaos), "{w_calm:?} vs {w_chaos:?}");
    assert_eq!(loss_calm.to_bits(), loss_chaos.to_bits());
    // Every pass over the same step agrees across the two runs too.
    for p in chaos.report.passes().iter().filter(|p| p.loss.is_some()) {
        let q = calm
            .report
            .passes()
            .into_iter()
            .find(|q| q.step == p.step)
            .expect("the calm run made every step");
        assert_eq!(bits(&p.w), bits(&q.w), "step {}", p.step);
        assert_eq!(p.loss.map(f64::to_bits), q.loss.map(f64::to_bits));
    }

    // The model learned something.
    let initial = calm.report.initial_loss().expect("initial loss");
    assert!(
        initial / loss_calm >= 100.0,
        "loss {initial} -> {loss_calm}: not 100x lower"
    );
    let problem = &spec("check", Chaos::None).problem;
    let direct = problem.loss(7, &w_calm);
    assert!(
        (direct - loss_calm).abs() <= 1e-9 * direct.abs(),
        "distributed loss {loss_calm} vs direct {direct}"
    );
    let w_true = problem.w_true();
    assert!(
        w_calm
            .iter()
            .zip(&w_true)
            .all(|(a, b)| (a - b).abs() < 0.05),
        "{w_calm:?} far from {w_true:?}"
    );

    // The failures happened while the job ran, task 0 failed over.
    assert!(chaos.kills.len() >= 2, "kills: {:?}", chaos.kills);
    assert!(
        chaos
            .kills
            .iter()
            .any(|k| matches!(k.role, Some((TaskId(0), true)))),
        "task 0's primary was killed: {:?}",
        chaos.kills
    );
    assert!(
        chaos.root_promotions >= 1,
        "task 0 failed over to its standby"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_the_model_with_every_copy_ends_the_job_visibly() {
    // Task 0's primary and its standby die together: a spare takes the
    // task without the model, and must not restart from zero silently.
    let kills = vec![
        (Duration::from_millis(200), Target::PrimaryOf(TaskId(0))),
        (Duration::from_millis(200), Target::StandbyOf(TaskId(0))),
    ];
    let mut s = spec("regression-lost", Chaos::Script { kills, seed: 1 });
    s.kill_guard = Duration::ZERO;
    s.replace_after = Duration::from_secs(60);
    let out = run(&s).await.expect("run starts");
    assert_eq!(out.kills.len(), 2, "{:?}", out.kills);
    assert!(out.report.lost_state(), "the spare noticed the loss");
    assert!(!out.completed);
    assert!(out.report.final_result(STEPS).is_none());
    assert!(
        out.exits.iter().all(|(_, e)| matches!(
            e,
            Ok(taskgraph::runtime::NodeExit::JobEnded(taskgraph::ExitReason::Failed(m))) if m == "lost the model state"
        )),
        "{:?}",
        out.exits
    );
}
