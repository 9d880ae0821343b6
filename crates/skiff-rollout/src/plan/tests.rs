//! Rollouts on a simulated clock: every look is [`decide`] then [`apply`], as the
//! reconciler does, with the time moved by hand.

use std::time::Duration;

use jiff::Timestamp;
use skiff_api::rollout::{Analysis, Figures, RolloutPolicy, RolloutStatus};

use super::*;
use crate::analysis::SloTargets;

fn policy(steps: &[u32], step_secs: u64) -> RolloutPolicy {
    RolloutPolicy {
        steps: steps.to_vec(),
        step_millis: step_secs * 1000,
        analysis: Analysis::DEFAULT,
        min_requests: 20,
        source: "annotation".into(),
    }
}

fn rev(name: &str, generation: i64) -> Rev {
    Rev {
        name: name.into(),
        generation,
        health: Health::Ready,
    }
}

fn t0() -> Timestamp {
    "2026-12-05T10:00:00Z".parse().expect("valid")
}

fn at(secs: f64) -> Timestamp {
    t0() + Duration::from_secs_f64(secs)
}

fn figures(requests: u64, errors: u64, p95_ms: f64) -> Figures {
    Figures {
        requests,
        errors,
        p95_ms: Some(p95_ms),
        slow: None,
    }
}

fn look(
    status: &mut RolloutStatus,
    now: Timestamp,
    windows: Option<(Figures, Figures)>,
) -> Decision {
    let p = status.current.as_ref().expect("a rollout");
    let d = decide(
        p,
        &Observation {
            now,
            canary: Health::Ready,
            stable: Health::Ready,
            windows,
            slo: SloTargets::default(),
        },
    );
    apply(status, d.clone(), now);
    d
}

fn started(steps: &[u32], step_secs: u64) -> RolloutStatus {
    let mut s = RolloutStatus::default();
    start(
        &mut s,
        "hello-00002",
        "hello-00001",
        policy(steps, step_secs),
        t0(),
    );
    s
}

/// A new ready revision rolls out from the stable one under a policy, and not without one,
/// nor when it is held, older, or the stable revision is not ready.
#[test]
fn when_a_rollout_starts() {
    let revs = [rev("hello-00001", 1), rev("hello-00002", 2)];
    let p = policy(&[5, 50, 100], 2);
    let s = RolloutStatus::default();
    let latest = &revs[1];
    assert!(wants_rollout(
        &s,
        Some("hello-00001"),
        latest,
        &revs,
        Some(&p)
    ));
    assert!(!wants_rollout(&s, Some("hello-00001"), latest, &revs, None));
    assert!(!wants_rollout(&s, None, latest, &revs, Some(&p)));
    assert!(!wants_rollout(
        &s,
        Some("hello-00002"),
        latest,
        &revs,
        Some(&p)
    ));
    let held = RolloutStatus {
        held_revision: Some("hello-00002".into()),
        ..Default::default()
    };
    assert!(!wants_rollout(
        &held,
        Some("hello-00001"),
        latest,
        &revs,
        Some(&p)
    ));
    // Rolled back to an older revision: the newer stable one is not "new".
    assert!(!wants_rollout(
        &s,
        Some("hello-00002"),
        &revs[0],
        &revs,
        Some(&p)
    ));
    let failed_stable = [
        Rev {
            health: Health::Failed("CrashLoopBackOff".into()),
            ..rev("hello-00001", 1)
        },
        rev("hello-00002", 2),
    ];
    assert!(!wants_rollout(
        &s,
        Some("hello-00001"),
        latest,
        &failed_stable,
        Some(&p)
    ));
    // While it waits to start, the traffic stays on the stable revision.
    assert_eq!(
        latest_split(&s, Some("hello-00001"), latest, &revs, Some(&p)),
        vec![("hello-00001".to_owned(), 100)]
    );
    assert_eq!(
        latest_split(&s, Some("hello-00001"), latest, &revs, None),
        vec![("hello-00002".to_owned(), 100)]
    );
}

/// A good revision under 5,50,100 with 2 s steps: the split follows the steps, every step
/// passes at its end, and the revision becomes the stable one.
#[test]
fn a_good_revision_rolls_out_step_by_step() {
    let revs = [rev("hello-00001", 1), rev("hello-00002", 2)];
    let mut s = started(&[5, 50, 100], 2);
    let split = |s: &RolloutStatus| latest_split(s, Some("hello-00001"), &revs[1], &revs, None);
    assert_eq!(
        split(&s),
        vec![
            ("hello-00001".to_owned(), 95),
            ("hello-00002".to_owned(), 5)
        ]
    );
    let good = Some((figures(30, 0, 10.0), figures(570, 0, 10.0)));
    assert_eq!(look(&mut s, at(1.0), good), Decision::Wait(TICK));
    assert!(matches!(look(&mut s, at(2.0), good), Decision::Advance(_)));
    assert_eq!(
        split(&s),
        vec![
            ("hello-00001".to_owned(), 50),
            ("hello-00002".to_owned(), 50)
        ]
    );
    assert!(matches!(look(&mut s, at(4.1), good), Decision::Advance(_)));
    assert_eq!(split(&s), vec![("hello-00002".to_owned(), 100)]);
    // At 100% the stable revision gets no requests: the new one is compared with what the
    // stable one did in the step before, and the step does not wait for stable requests.
    let alone = Some((figures(600, 0, 10.0), figures(2, 0, 1.0)));
    assert!(matches!(
        look(&mut s, at(6.2), alone),
        Decision::Complete { .. }
    ));
    assert!(s.current.is_none());
    assert_eq!(s.stable_revision.as_deref(), Some("hello-00002"));
    let r = &s.history[0];
    assert_eq!(r.outcome, "succeeded");
    let verdicts: Vec<(u32, &str)> = r
        .steps
        .iter()
        .map(|x| (x.percent, x.verdict.as_str()))
        .collect();
    assert_eq!(
        verdicts,
        vec![(5, "passed"), (50, "passed"), (100, "passed")]
    );
    assert_eq!(r.steps[0].canary.requests, 30);
}

/// A revision failing a third of its requests is rolled back at its first step as soon as
/// the evidence is in, before the step's time is up; it is held, and a newer one rolls out.
#[test]
fn a_bad_revision_is_rolled_back_and_held() {
    let revs = [
        rev("hello-00001", 1),
        rev("hello-00002", 2),
        rev("hello-00003", 3),
    ];
    let mut s = started(&[5, 50, 100], 30);
    let early = Some((figures(6, 2, 10.0), figures(120, 0, 10.0)));
    assert_eq!(look(&mut s, at(0.5), early), Decision::Wait(TICK));
    let bad = Some((figures(12, 4, 10.0), figures(228, 0, 10.0)));
    let Decision::RollBack { message, .. } = look(&mut s, at(1.0), bad) else {
        panic!("rolled back")
    };
    assert!(
        message
            .contains("at 5% (step 1 of 3): errors: 5xx 33.3% (4 of 12) vs stable 0.0% (0 of 228)"),
        "{message}"
    );
    assert!(s.current.is_none());
    assert_eq!(s.held_revision.as_deref(), Some("hello-00002"));
    assert_eq!(s.history[0].outcome, "rolled_back");
    assert_eq!(s.history[0].steps[0].verdict, "failed");
    let p = policy(&[5, 50, 100], 30);
    assert_eq!(
        latest_split(&s, Some("hello-00001"), &revs[1], &revs, Some(&p)),
        vec![("hello-00001".to_owned(), 100)]
    );
    assert!(!wants_rollout(
        &s,
        Some("hello-00001"),
        &revs[1],
        &revs,
        Some(&p)
    ));
    assert!(wants_rollout(
        &s,
        Some("hello-00001"),
        &revs[2],
        &revs,
        Some(&p)
    ));
}

/// At 100%, a regression shows against the stable revision's figures of the step before.
#[test]
fn the_last_step_compares_with_the_step_before() {
    let mut s = started(&[50, 100], 2);
    let good = Some((figures(300, 0, 10.0), figures(300, 0, 10.0)));
    assert!(matches!(look(&mut s, at(2.0), good), Decision::Advance(_)));
    let slow = Some((figures(600, 0, 40.0), figures(0, 0, 0.0)));
    let Decision::RollBack { message, .. } = look(&mut s, at(4.0), slow) else {
        panic!("rolled back")
    };
    assert!(message.contains("vs stable 10.0 ms"), "{message}");
}

#[test]
fn a_slow_revision_is_rolled_back_at_the_steps_end() {
    let mut s = started(&[5, 50, 100], 2);
    let slow = Some((figures(40, 0, 61.0), figures(760, 0, 20.0)));
    assert_eq!(look(&mut s, at(1.0), slow), Decision::Wait(TICK));
    let Decision::RollBack { message, .. } = look(&mut s, at(2.0), slow) else {
        panic!("rolled back")
    };
    assert!(
        message.contains("latency: p95 61.0 ms vs stable 20.0 ms"),
        "{message}"
    );
}

/// After a daemon restart the step's requests are unknown: the step starts again, at the
/// same step.
#[test]
fn a_restart_starts_the_step_again() {
    let mut s = started(&[5, 50, 100], 2);
    let good = Some((figures(30, 0, 10.0), figures(570, 0, 10.0)));
    look(&mut s, at(2.0), good);
    assert_eq!(look(&mut s, at(3.0), None), Decision::RestartStep);
    let p = s.current.as_ref().expect("running");
    assert_eq!((p.step, p.percent()), (1, 50));
    assert_eq!(p.step_started_at, stamp(at(3.0)));
    assert_eq!(look(&mut s, at(4.5), good), Decision::Wait(TICK));
    assert!(matches!(look(&mut s, at(5.0), good), Decision::Advance(_)));
}

/// Paused, a rollout stays at its step but is still rolled back when its checks fail;
/// resumed, its step starts again.
#[test]
fn pause_resume_promote_abort() {
    let revs = [rev("hello-00001", 1), rev("hello-00002", 2)];
    let mut s = started(&[5, 50, 100], 2);
    pause(&mut s).expect("running");
    let good = Some((figures(30, 0, 10.0), figures(570, 0, 10.0)));
    assert_eq!(look(&mut s, at(10.0), good), Decision::Wait(TICK));
    assert_eq!(s.current.as_ref().map(|p| p.step), Some(0));
    assert_eq!(resume(&mut s, at(11.0)), Ok(()));
    assert_eq!(resume(&mut s, at(11.0)), Err(CommandError::NothingToResume));
    assert_eq!(look(&mut s, at(12.0), good), Decision::Wait(TICK));
    assert!(matches!(look(&mut s, at(13.0), good), Decision::Advance(_)));
    // Paused and failing: rolled back all the same.
    pause(&mut s).expect("running");
    let bad = Some((figures(30, 10, 10.0), figures(570, 0, 10.0)));
    assert!(matches!(
        look(&mut s, at(13.5), bad),
        Decision::RollBack { .. }
    ));
    assert_eq!(pause(&mut s), Err(CommandError::NoRollout));
    // Resume lets the held revision go: it rolls out again.
    assert_eq!(resume(&mut s, at(14.0)), Ok(()));
    assert_eq!(s.held_revision, None);
    let p = policy(&[5, 50, 100], 2);
    assert!(wants_rollout(
        &s,
        Some("hello-00001"),
        &revs[1],
        &revs,
        Some(&p)
    ));

    let mut s = started(&[5, 50, 100], 2);
    promote(&mut s, good, at(1.0)).expect("running");
    assert_eq!(s.stable_revision.as_deref(), Some("hello-00002"));
    assert_eq!(s.history[0].outcome, "promoted");
    assert_eq!(promote(&mut s, None, at(1.0)), Err(CommandError::NoRollout));

    let mut s = started(&[5, 50, 100], 2);
    abort(&mut s, good, at(1.0)).expect("running");
    assert_eq!(s.stable_revision.as_deref(), Some("hello-00001"));
    assert_eq!(s.held_revision.as_deref(), Some("hello-00002"));
    assert_eq!(s.history[0].outcome, "aborted");
    assert_eq!(s.history[0].steps[0].verdict, "aborted");
}

#[test]
fn too_few_requests_wait_then_go_on_inconclusive() {
    let mut s = started(&[50, 100], 2);
    let few = Some((figures(3, 0, 10.0), figures(3, 0, 10.0)));
    assert_eq!(look(&mut s, at(2.0), few), Decision::Wait(TICK));
    assert_eq!(look(&mut s, at(19.0), few), Decision::Wait(TICK));
    let Decision::Advance(step) = look(&mut s, at(20.0), few) else {
        panic!("advanced")
    };
    assert_eq!(step.verdict, "inconclusive");
    // A timed ramp (no analysis) never waits for requests.
    let mut s = started(&[50, 100], 2);
    if let Some(p) = s.current.as_mut() {
        p.policy.analysis = Analysis::default();
    }
    assert!(matches!(look(&mut s, at(2.0), few), Decision::Advance(_)));
}

#[test]
fn a_failing_new_revision_or_a_gone_stable_one_end_the_rollout() {
    let s = started(&[5, 50, 100], 2);
    let p = s.current.as_ref().expect("running");
    let o = |canary, stable| Observation {
        now: at(1.0),
        canary,
        stable,
        windows: None,
        slo: SloTargets::default(),
    };
    assert!(matches!(
        decide(p, &o(Health::Failed("CrashLoopBackOff".into()), Health::Ready)),
        Decision::RollBack { message, .. } if message.contains("CrashLoopBackOff")
    ));
    assert!(matches!(
        decide(p, &o(Health::Ready, Health::Missing)),
        Decision::Complete { step: None, .. }
    ));
}

/// A newer revision supersedes a rollout in progress.
#[test]
fn a_newer_revision_supersedes_the_rollout() {
    let mut s = started(&[5, 50, 100], 2);
    start(
        &mut s,
        "hello-00003",
        "hello-00001",
        policy(&[5, 100], 2),
        at(1.0),
    );
    assert_eq!(s.history[0].outcome, "superseded");
    assert_eq!(
        s.current.as_ref().map(|p| p.revision.as_str()),
        Some("hello-00003")
    );
}

#[test]
fn rollback_by_hand() {
    let revs = [
        rev("hello-00001", 1),
        rev("hello-00002", 2),
        rev("hello-00003", 3),
    ];
    // Outside a rollout: to the newest older ready revision, the latest held.
    let mut s = RolloutStatus::default();
    let to = rollback(
        &mut s,
        None,
        "hello-00003",
        "hello-00003",
        &revs,
        None,
        t0(),
    );
    assert_eq!(to.as_deref(), Ok("hello-00002"));
    assert_eq!(s.held_revision.as_deref(), Some("hello-00003"));
    assert_eq!(
        latest_split(
            &s,
            s.stable_revision.clone().as_deref(),
            &revs[2],
            &revs,
            None
        ),
        vec![("hello-00002".to_owned(), 100)]
    );
    // Again: further back; the latest stays held.
    let to = rollback(
        &mut s,
        None,
        "hello-00002",
        "hello-00003",
        &revs,
        None,
        t0(),
    );
    assert_eq!(to.as_deref(), Ok("hello-00001"));
    assert_eq!(s.held_revision.as_deref(), Some("hello-00003"));
    assert_eq!(
        rollback(
            &mut s,
            None,
            "hello-00001",
            "hello-00003",
            &revs,
            None,
            t0()
        ),
        Err(CommandError::NoPrevious)
    );
    assert_eq!(
        rollback(
            &mut s,
            Some("hello-00001"),
            "hello-00001",
            "hello-00003",
            &revs,
            None,
            t0()
        ),
        Err(CommandError::AlreadyServing("hello-00001".into()))
    );
    assert_eq!(
        rollback(
            &mut s,
            Some("nope"),
            "hello-00001",
            "hello-00003",
            &revs,
            None,
            t0()
        ),
        Err(CommandError::UnknownRevision("nope".into()))
    );
    // During a rollout: to its stable revision.
    let mut s = started(&[5, 50, 100], 2);
    let to = rollback(
        &mut s,
        None,
        "hello-00001",
        "hello-00002",
        &revs[..2],
        None,
        t0(),
    );
    assert_eq!(to.as_deref(), Ok("hello-00001"));
    assert!(s.current.is_none());
    assert_eq!(s.history[0].outcome, "rolled_back");
    assert_eq!(s.held_revision.as_deref(), Some("hello-00002"));
}
