//! The transition table of the step machine, checked row by row, plus the rules
//! around it: illegal outcomes are refused, terminal states absorb duplicates, and an
//! in-flight call is looked up before it is issued again.

use super::*;
use crate::lock::{CopyLock, LockSpec};

fn snap(n: u8) -> SnapshotId {
    SnapshotId::parse(&format!("snap-{:017x}", n)).unwrap()
}

fn vol(n: u8) -> VolumeId {
    VolumeId::parse(&format!("vol-{:017x}", n)).unwrap()
}

const SOURCE_KEY: &str = "arn:aws:kms:us-east-1:111111111111:key/1234abcd-12ab-34cd-56ef-1234567890ab";

fn ctx(cross: bool, create_volume: bool, cleanup: bool) -> Ctx {
    Ctx {
        cross_account: cross,
        source_key: KeyArn::parse(SOURCE_KEY).unwrap(),
        create_volume,
        cleanup,
        keep_source: false,
        timeouts_ms: TimeoutsMs { snapshot: 1000, copy: 2000, volume: 500 },
        locks: vec![],
        verify: None,
    }
}

#[test]
fn keep_source_keeps_the_shared_snapshot_and_deletes_the_rest() {
    let mut c = ctx(true, true, true);
    let mut v = VolumeRun::new(vol(1));
    v.step = Step::Cleanup;
    v.source_snapshot = Some(snap(1));
    v.reencrypted_snapshot = Some(snap(2));
    assert_eq!(next_action_in(&v, "r", &c), Action::Cleanup { delete: vec![snap(1), snap(2)], keep: None });
    c.keep_source = true;
    assert_eq!(next_action_in(&v, "r", &c), Action::Cleanup { delete: vec![snap(1)], keep: Some(snap(2)) });
    v.reencrypted_snapshot = None;
    assert_eq!(next_action_in(&v, "r", &c), Action::Cleanup { delete: vec![], keep: Some(snap(1)) });
}

/// Drives a volume with the given outcomes, returning every step it passed through.
fn drive(c: &Ctx, outcomes: &[Outcome]) -> (VolumeRun, Vec<Step>) {
    let mut v = VolumeRun::new(vol(1));
    let mut steps = vec![v.step];
    for o in outcomes {
        if next_action(&v, "run").is_mutating() {
            v = begin(&v, 0);
        }
        v = apply(&v, o, c, 10).unwrap_or_else(|e| panic!("{e}"));
        steps.push(v.step);
    }
    (v, steps)
}

fn completed(key: &str) -> Outcome {
    Outcome::SnapshotCompleted { kms_key: Some(key.to_owned()) }
}

#[test]
fn cross_account_under_source_key_with_volume_and_cleanup() {
    let c = ctx(true, true, true);
    let (v, steps) = drive(
        &c,
        &[
            Outcome::SnapshotCreated(snap(1)),
            Outcome::SnapshotPending { progress: Some(40) },
            completed(SOURCE_KEY),
            Outcome::Shared,
            Outcome::SnapshotCreated(snap(2)),
            completed("arn:aws:kms:eu-west-1:222222222222:key/x"),
            Outcome::VolumeCreated(vol(9)),
            Outcome::VolumePending,
            Outcome::VolumeAvailable,
            Outcome::CleanedUp,
        ],
    );
    use Step::*;
    assert_eq!(
        steps,
        vec![
            Snapshot,
            WaitSnapshot,
            WaitSnapshot,
            Share,
            Copy,
            WaitCopy,
            CreateVolume,
            WaitVolume,
            WaitVolume,
            Cleanup,
            Done
        ]
    );
    assert_eq!(v.source_snapshot, Some(snap(1)));
    assert_eq!(v.target_snapshot, Some(snap(2)));
    assert_eq!(v.target_volume, Some(vol(9)));
    assert!(v.shared);
    assert_eq!(v.finished_ms, Some(10));
}

#[test]
fn snapshot_under_another_key_is_reencrypted_first() {
    let c = ctx(true, true, false);
    let (v, steps) = drive(
        &c,
        &[
            Outcome::SnapshotCreated(snap(1)),
            completed("arn:aws:kms:us-east-1:111111111111:key/aws-ebs"),
            Outcome::SnapshotCreated(snap(3)),
            completed(SOURCE_KEY),
            Outcome::Shared,
        ],
    );
    use Step::*;
    assert_eq!(steps, vec![Snapshot, WaitSnapshot, Reencrypt, WaitReencrypt, Share, Copy]);
    assert_eq!(v.shared_snapshot(), Some(&snap(3)));
    assert_eq!(next_action(&v, "r"), Action::Copy { from: snap(3) });
    assert_eq!(v.intermediates(), vec![snap(1), snap(3)]);
}

#[test]
fn unencrypted_snapshot_has_no_key_and_is_reencrypted() {
    let c = ctx(false, true, true);
    let (_, steps) = drive(&c, &[Outcome::SnapshotCreated(snap(1)), Outcome::SnapshotCompleted { kms_key: None }]);
    assert_eq!(*steps.last().unwrap(), Step::Reencrypt);
}

#[test]
fn same_account_skips_share() {
    let c = ctx(false, true, true);
    let (_, steps) = drive(&c, &[Outcome::SnapshotCreated(snap(1)), completed(SOURCE_KEY)]);
    assert_eq!(*steps.last().unwrap(), Step::Copy);
}

#[test]
fn without_create_volume_stops_at_target_snapshot() {
    let c = ctx(false, false, false);
    let (v, _) = drive(
        &c,
        &[Outcome::SnapshotCreated(snap(1)), completed(SOURCE_KEY), Outcome::SnapshotCreated(snap(2)), completed("k")],
    );
    assert_eq!(v.step, Step::Done);
    assert_eq!(v.target_volume, None);
    let c = ctx(false, false, true);
    let (v, _) = drive(
        &c,
        &[Outcome::SnapshotCreated(snap(1)), completed(SOURCE_KEY), Outcome::SnapshotCreated(snap(2)), completed("k")],
    );
    assert_eq!(v.step, Step::Cleanup);
}

#[test]
fn next_action_per_step() {
    let mut v = VolumeRun::new(vol(1));
    assert_eq!(next_action(&v, "r"), Action::CreateSnapshot);
    v.in_flight = true;
    assert_eq!(next_action(&v, "r"), Action::LookUpSnapshot { which: Which::Source });
    v.in_flight = false;
    v.step = Step::WaitSnapshot;
    v.source_snapshot = Some(snap(1));
    assert_eq!(next_action(&v, "r"), Action::PollSnapshot { which: Which::Source, id: snap(1) });
    v.step = Step::Share;
    assert_eq!(next_action(&v, "r"), Action::Share { snapshot: snap(1) });
    v.step = Step::Copy;
    v.in_flight = true;
    assert_eq!(next_action(&v, "r"), Action::LookUpSnapshot { which: Which::Target });
    v.in_flight = false;
    v.target_snapshot = Some(snap(2));
    v.step = Step::CreateVolume;
    let a = next_action(&v, "r");
    let Action::CreateVolume { snapshot, client_token } = a else { panic!("{a:?}") };
    assert_eq!(snapshot, snap(2));
    assert!(client_token.len() <= 64 && client_token.is_ascii());
    v.in_flight = true;
    assert_eq!(next_action(&v, "r"), Action::LookUpVolume);
    v.step = Step::Done;
    assert_eq!(next_action(&v, "r"), Action::Nothing);
}

#[test]
fn client_token_is_stable_and_changes_with_run_volume_and_attempt() {
    let t = client_token("run-a", &vol(1), 0);
    assert_eq!(t, client_token("run-a", &vol(1), 0));
    assert_ne!(t, client_token("run-b", &vol(1), 0));
    assert_ne!(t, client_token("run-a", &vol(2), 0));
    assert_ne!(t, client_token("run-a", &vol(1), 1));
    assert!(t.len() <= 64, "{} chars", t.len());
}

#[test]
fn lookups_must_miss_several_times_before_reissuing() {
    let c = ctx(true, true, true);
    let mut v = begin(&VolumeRun::new(vol(1)), 0);
    for i in 1..RECONCILE_LOOKUPS {
        v = apply(&v, &Outcome::NotFound, &c, 0).unwrap();
        assert!(v.in_flight, "still in flight after {i} misses");
    }
    v = apply(&v, &Outcome::NotFound, &c, 0).unwrap();
    assert!(!v.in_flight);
    assert_eq!(next_action(&v, "r"), Action::CreateSnapshot);
}

#[test]
fn lookup_that_finds_the_resource_resumes_the_wait() {
    let c = ctx(true, true, true);
    let v = begin(&VolumeRun::new(vol(1)), 0);
    let v = apply(&v, &Outcome::SnapshotCreated(snap(5)), &c, 0).unwrap();
    assert_eq!(v.step, Step::WaitSnapshot);
    assert_eq!(v.source_snapshot, Some(snap(5)));
    assert!(!v.in_flight);
}

#[test]
fn illegal_transitions_are_refused() {
    let c = ctx(true, true, true);
    let v = VolumeRun::new(vol(1));
    for o in [
        Outcome::Shared,
        Outcome::VolumeAvailable,
        Outcome::SnapshotCompleted { kms_key: None },
        Outcome::CleanedUp,
        Outcome::VolumeCreated(vol(2)),
        Outcome::TimedOut,
        // A miss without an in-flight call is no lookup answer.
        Outcome::NotFound,
    ] {
        let e = apply(&v, &o, &c, 0).unwrap_err();
        assert_eq!(e.step, "snapshot");
    }
    let mut w = v.clone();
    w.step = Step::Share;
    w.source_snapshot = Some(snap(1));
    assert!(apply(&w, &Outcome::SnapshotCreated(snap(2)), &c, 0).is_err());
    w.step = Step::WaitCopy;
    assert!(apply(&w, &Outcome::VolumeAvailable, &c, 0).is_err());
}

#[test]
fn terminal_states_absorb_duplicates() {
    let c = ctx(true, true, true);
    for step in [Step::Done, Step::Failed] {
        let mut v = VolumeRun::new(vol(1));
        v.step = step;
        for o in [Outcome::Shared, Outcome::SnapshotCreated(snap(1)), Outcome::CleanedUp, Outcome::TimedOut] {
            assert_eq!(apply(&v, &o, &c, 5).unwrap(), v);
        }
    }
}

#[test]
fn snapshot_error_fails_the_volume_with_state_message_and_hint() {
    let c = ctx(true, true, true);
    let (v, _) = drive(
        &c,
        &[
            Outcome::SnapshotCreated(snap(1)),
            completed(SOURCE_KEY),
            Outcome::Shared,
            Outcome::SnapshotCreated(snap(2)),
            Outcome::SnapshotError { message: "Given key ID is not accessible".into() },
        ],
    );
    assert_eq!(v.step, Step::Failed);
    let f = v.failure.clone().unwrap();
    assert_eq!(f.step, Step::WaitCopy);
    assert!(f.message.contains("Given key ID is not accessible"), "{}", f.message);
    assert!(f.message.contains(snap(2).as_str()));
    assert!(f.hint.unwrap().contains("key policy"));
}

#[test]
fn fatal_fails_from_any_live_step_and_timeouts_only_from_waits() {
    let c = ctx(true, true, true);
    let v = VolumeRun::new(vol(1));
    let f = apply(&v, &Outcome::Fatal { message: "denied".into(), hint: None }, &c, 3).unwrap();
    assert_eq!(f.step, Step::Failed);
    assert_eq!(f.failure.unwrap().step, Step::Snapshot);
    let mut w = v.clone();
    w.step = Step::WaitVolume;
    w.target_volume = Some(vol(2));
    let t = apply(&w, &Outcome::TimedOut, &c, 3).unwrap();
    assert_eq!(t.step, Step::Failed);
    assert_eq!(t.failure.unwrap().kind, FailureKind::StoppedWaiting);
}

#[test]
fn waits_expire_after_their_step_timeout() {
    let c = ctx(true, true, true);
    let mut v = VolumeRun::new(vol(1));
    v.step = Step::WaitCopy;
    v.wait_started_ms = Some(0);
    assert!(!wait_expired(&v, &c, 2000));
    assert!(wait_expired(&v, &c, 2001));
    v.step = Step::WaitVolume;
    assert!(wait_expired(&v, &c, 501));
    v.step = Step::Share;
    assert!(!wait_expired(&v, &c, 1_000_000));
}

#[test]
fn revive_returns_a_failed_volume_to_its_failed_step() {
    let c = ctx(true, true, true);
    let (mut v, _) = drive(
        &c,
        &[
            Outcome::SnapshotCreated(snap(1)),
            completed(SOURCE_KEY),
            Outcome::Shared,
            Outcome::SnapshotCreated(snap(2)),
            Outcome::SnapshotError { message: "Given key ID is not accessible".into() },
        ],
    );
    v.revive();
    assert_eq!(v.step, Step::Copy);
    assert_eq!(v.target_snapshot, None);
    assert_eq!(v.source_snapshot, Some(snap(1)));
    assert!(v.failure.is_none());
    assert_eq!(next_action(&v, "r"), Action::Copy { from: snap(1) });

    let mut w = VolumeRun::new(vol(1));
    w.step = Step::Failed;
    w.target_volume = Some(vol(3));
    w.failure =
        Some(Failure { step: Step::WaitVolume, kind: FailureKind::ResourceError, message: "x".into(), hint: None });
    w.revive();
    assert_eq!(w.step, Step::CreateVolume);
    assert_eq!(w.volume_attempt, 1);
}

#[test]
fn a_wait_that_timed_out_is_revived_to_the_same_wait_with_its_resource() {
    let c = ctx(true, true, true);
    for (step, which) in [
        (Step::WaitSnapshot, Which::Source),
        (Step::WaitReencrypt, Which::Reencrypted),
        (Step::WaitCopy, Which::Target),
    ] {
        let mut v = VolumeRun::new(vol(1));
        v.source_snapshot = Some(snap(1));
        v.reencrypted_snapshot = Some(snap(2));
        v.target_snapshot = Some(snap(3));
        v.step = step;
        v.wait_started_ms = Some(0);
        v.progress = Some(40);
        let failed = apply(&v, &Outcome::TimedOut, &c, 5_000).unwrap();
        let f = failed.failure.clone().unwrap();
        assert_eq!(f.kind, FailureKind::StoppedWaiting);
        assert!(f.message.contains("stopped waiting") && f.message.contains("40%"), "{}", f.message);
        assert!(f.hint.unwrap().contains("run the same command again to keep waiting"));
        let mut r = failed.clone();
        r.revive();
        assert_eq!(r.step, step);
        assert_eq!(r.wait_started_ms, Some(0), "the timeout still counts from the first wait");
        assert_eq!(
            (r.source_snapshot.clone(), r.reencrypted_snapshot.clone(), r.target_snapshot.clone()),
            (Some(snap(1)), Some(snap(2)), Some(snap(3)))
        );
        assert!(matches!(next_action(&r, "r"), Action::PollSnapshot { which: w, .. } if w == which));
    }
    let mut v = VolumeRun::new(vol(1));
    v.step = Step::WaitVolume;
    v.target_snapshot = Some(snap(3));
    v.target_volume = Some(vol(9));
    v.wait_started_ms = Some(0);
    let mut r = apply(&v, &Outcome::TimedOut, &c, 5_000).unwrap();
    r.revive();
    assert_eq!((r.step, r.target_volume.clone(), r.volume_attempt), (Step::WaitVolume, Some(vol(9)), 0));
}

#[test]
fn an_unknown_outcome_survives_failure_and_revive() {
    let c = ctx(true, true, true);
    for step in [Step::Snapshot, Step::Reencrypt, Step::Copy, Step::CreateVolume] {
        let mut v = VolumeRun::new(vol(1));
        v.source_snapshot = Some(snap(1));
        v.target_snapshot = Some(snap(3));
        v.step = step;
        let v = begin(&v, 0);
        assert!(v.in_flight);
        let mut f = apply(&v, &Outcome::Fatal { message: "no answer".into(), hint: None }, &c, 1).unwrap();
        assert!(f.in_flight, "a failure must not forget the call at {step:?}");
        f.revive();
        assert_eq!(f.step, step);
        assert!(f.in_flight);
        assert!(matches!(next_action(&f, "r"), Action::LookUpSnapshot { .. } | Action::LookUpVolume), "{step:?}");
    }
}

#[test]
fn a_vanished_resource_is_made_again() {
    let c = ctx(true, true, true);
    let mut v = VolumeRun::new(vol(1));
    v.source_snapshot = Some(snap(1));
    v.target_snapshot = Some(snap(3));
    v.step = Step::WaitCopy;
    let mut f = apply(&v, &Outcome::Vanished, &c, 1).unwrap();
    assert_eq!(f.failure.as_ref().unwrap().kind, FailureKind::Gone);
    f.revive();
    assert_eq!((f.step, f.target_snapshot.clone()), (Step::Copy, None));
}

#[test]
fn only_calls_that_change_aws_are_mutating() {
    assert!(Action::CreateSnapshot.is_mutating());
    assert!(Action::Copy { from: snap(1) }.is_mutating());
    assert!(Action::Cleanup { delete: vec![], keep: None }.is_mutating());
    assert!(!Action::LookUpVolume.is_mutating());
    assert!(!Action::PollSnapshot { which: Which::Source, id: snap(1) }.is_mutating());
    assert!(!Action::Nothing.is_mutating());
}

#[test]
fn a_gone_source_is_made_again_by_the_lead_and_awaited_by_a_follower() {
    let c = ctx(true, true, true);
    let mut lead = VolumeRun::new(vol(1));
    lead.source_snapshot = Some(snap(1));
    lead.reencrypted_snapshot = Some(snap(2));
    lead.shared = true;
    lead.step = Step::Copy;
    lead.started_ms = Some(5);
    let gone = Outcome::SourceGone { snapshot: snap(2) };
    let l = apply(&begin(&lead, 0), &gone, &c, 9).unwrap();
    assert_eq!((l.step, l.in_flight, l.shared), (Step::Snapshot, false, false));
    assert_eq!((l.source_snapshot.clone(), l.reencrypted_snapshot.clone(), l.gone_source.clone()), (None, None, None));
    assert_eq!(l.started_ms, Some(5), "the chain's start stays");
    assert_eq!(next_action(&l, "r"), Action::CreateSnapshot);

    // A follower that found the lead's snapshot gone waits for the next one.
    let mut f = VolumeRun::for_target(vol(1), 1, true);
    f.source_snapshot = Some(snap(1));
    f.reencrypted_snapshot = Some(snap(2));
    f.step = Step::Copy;
    let f = apply(&f, &gone, &c, 9).unwrap();
    assert_eq!((f.step, f.gone_source.clone()), (Step::Snapshot, Some(snap(2))));
    assert_eq!(next_action(&f, "r"), Action::AwaitSource);
    // The lead still at its own copy of the gone snapshot: no join.
    assert_eq!(join(&f, &lead, 10), Join::Wait);
    // The lead made a new one: joined, with its ids.
    let mut renewed = lead.clone();
    renewed.reencrypted_snapshot = Some(snap(7));
    match join(&f, &renewed, 11) {
        Join::Joined(n) => {
            assert_eq!(
                (n.step, n.reencrypted_snapshot.clone(), n.gone_source.clone()),
                (Step::Copy, Some(snap(7)), None)
            )
        }
        other => panic!("{other:?}"),
    }
    // The lead is done with the gone snapshot: the follower takes the source side.
    let mut done = lead.clone();
    done.step = Step::Done;
    match join(&f, &done, 12) {
        Join::Joined(n) => {
            assert!(!n.follower);
            assert_eq!(next_action(&n, "r"), Action::CreateSnapshot);
        }
        other => panic!("{other:?}"),
    }
    // The lead failed still naming it: the follower fails with it, and waits again once revived.
    let mut failed = lead.clone();
    failed.step = Step::Failed;
    failed.failure =
        Some(Failure { step: Step::WaitCopy, kind: FailureKind::ResourceError, message: "x".into(), hint: None });
    match join(&f, &failed, 13) {
        Join::Failed(mut n) => {
            n.revive();
            assert_eq!(next_action(&n, "r"), Action::AwaitSource);
        }
        other => panic!("{other:?}"),
    }
}

fn locked_ctx() -> Ctx {
    let mut c = ctx(true, false, false);
    c.locks = vec![Some(LockSpec { mode: crate::lock::LockMode::Governance, duration_days: 2, cool_off_hours: None })];
    c
}

fn governance() -> CopyLock {
    CopyLock { mode: crate::lock::LockMode::Governance, state: crate::lock::LockState::Governance, expires_ms: None }
}

/// A locked target: the copy goes Copy -> Lock -> WaitCopy, the lock is an intent like
/// any call that changes AWS, and its timeout runs from the copy's creation.
#[test]
fn a_locked_target_locks_the_copy_right_after_copysnapshot() {
    let c = locked_ctx();
    let mut v = VolumeRun::new(vol(1));
    v.step = Step::Copy;
    v.source_snapshot = Some(snap(1));
    let v = apply(&begin(&v, 0), &Outcome::SnapshotCreated(snap(2)), &c, 5).unwrap();
    assert_eq!((v.step, v.in_flight, v.wait_started_ms), (Step::Lock, false, Some(5)));
    assert_eq!(next_action(&v, "r"), Action::Lock { snapshot: snap(2) });
    assert!(Action::Lock { snapshot: snap(2) }.is_mutating());
    let sent = begin(&v, 6);
    assert!(sent.in_flight, "the intent is durable before LockSnapshot");
    // An unknown outcome is looked up, not asked again; a miss re-issues at once.
    assert_eq!(next_action(&sent, "r"), Action::LookUpLock { snapshot: snap(2) });
    let missed = apply(&sent, &Outcome::NotLocked, &c, 7).unwrap();
    assert_eq!((missed.step, missed.in_flight), (Step::Lock, false));
    let found = apply(&sent, &Outcome::Locked(governance()), &c, 7).unwrap();
    assert_eq!((found.step, found.in_flight, found.wait_started_ms), (Step::WaitCopy, false, Some(5)));
    assert_eq!(found.lock, Some(governance()));
    // Without a lock the copy is waited on at once.
    let mut w = VolumeRun::new(vol(1));
    w.step = Step::Copy;
    w.source_snapshot = Some(snap(1));
    let w = apply(&begin(&w, 0), &Outcome::SnapshotCreated(snap(2)), &ctx(true, false, false), 5).unwrap();
    assert_eq!(w.step, Step::WaitCopy);
}

/// A lock that fails fails at Lock and is revived there with the copy kept; a copy
/// that ends in error forgets its (cancelled) lock and is replaced, then locked anew.
#[test]
fn failed_locks_and_failed_copies_are_revived_without_a_second_copy() {
    let c = locked_ctx();
    let mut v = VolumeRun::new(vol(1));
    v.step = Step::Lock;
    v.target_snapshot = Some(snap(2));
    let failed = apply(&v, &Outcome::Fatal { message: "denied".into(), hint: None }, &c, 1).unwrap();
    assert_eq!((failed.step, failed.failure.as_ref().map(|f| f.step)), (Step::Failed, Some(Step::Lock)));
    assert!(failed.copy_unlocked());
    let mut revived = failed.clone();
    revived.revive();
    assert_eq!((revived.step, revived.target_snapshot.clone()), (Step::Lock, Some(snap(2))));

    let mut w = v.clone();
    w.step = Step::WaitCopy;
    w.lock = Some(governance());
    let errored =
        apply(&w, &Outcome::SnapshotError { message: "Given key ID is not accessible".into() }, &c, 2).unwrap();
    let mut again = errored.clone();
    again.revive();
    assert_eq!((again.step, again.target_snapshot.clone(), again.lock.clone()), (Step::Copy, None, None));
}

/// A copy waiting unlocked on a locked target (adopted, carried, or a plan that gained
/// a lock) goes back to Lock as an unknown outcome; a locked one, or one on an
/// unlocked target, is left alone.
#[test]
fn relock_sends_an_unlocked_waiting_copy_back_to_its_lock() {
    let c = locked_ctx();
    let mut v = VolumeRun::new(vol(1));
    v.step = Step::WaitCopy;
    v.target_snapshot = Some(snap(2));
    let r = relock(&v, &c).expect("relocked");
    assert_eq!((r.step, r.in_flight), (Step::Lock, true));
    assert_eq!(next_action(&r, "x"), Action::LookUpLock { snapshot: snap(2) });
    assert!(relock(&v, &ctx(true, false, false)).is_none());
    v.lock = Some(governance());
    assert!(relock(&v, &c).is_none());
    let seen = observe_lock(&v, None, None);
    assert!(seen.lock.is_none(), "a lock taken off is no lock");
    let expired = observe_lock(&v, Some(crate::lock::LockState::Expired), Some(9));
    assert_eq!(expired.lock.map(|l| (l.mode, l.expires_ms)), Some((crate::lock::LockMode::Governance, Some(9))));
}
