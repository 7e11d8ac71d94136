//! Immutable copies (`lock`) against the simulated AWS, in process: every copy locked
//! while pending under its target's role, retention that keeps locked copies and
//! deletes them on the first invocation after their locks expired (never a refused
//! DeleteSnapshot), crash safety at every call of a locked plan (with the state kept
//! and with it lost), a fan-out plan with one target unlocked, a failed lock resumed
//! without a second copy, and the simulated AWS's lock rules themselves.

use snapferry::checkpoint::RunStatus;
use snapferry::cloud::sim::World;
use snapferry::cloud::{ErrorKind, LockedSnapshot};
use snapferry::ids::{AccountId, Region, SnapshotId};
use snapferry::lock::{LockMode, LockSpec, LockState};

use super::sim::cross;
use crate::support::plans::{self, DR, Target, VAULT_ACCOUNT};
use crate::support::rig::{
    Backend, Rig, assert_all_succeeded, calls_of_a_clean_run, crash_and_lose_state_after, crash_and_resume,
};

const DAY_MS: i64 = 86_400_000;

/// Two targets, the second one's copies unlocked (`lock: none`).
pub(super) fn fan_out_one_unlocked() -> String {
    let standby = Target {
        region: "us-west-2",
        account: VAULT_ACCOUNT,
        role: Some("standby"),
        external_id: None,
        kms_key: "alias/standby",
        availability_zone: "us-west-2a",
        more: &["lock: none"],
    };
    plans::plan_text("crash-test", &[DR, standby], 2, "  lock: {mode: compliance, duration: 30d, cool_off: 24h}\n")
}

fn locked(text: &str, lock: &str) -> String {
    format!("{text}  lock: {lock}\n")
}

fn governance_2d() -> String {
    locked(&cross(), "{mode: governance, duration: 2d}")
}

/// The copies in the target account and what the world says of their locks now.
fn copy_locks(rig: &Rig) -> Vec<(String, Option<LockedSnapshot>, i64)> {
    rig.sim.with_world(|w| {
        w.snapshots
            .values()
            .filter(|s| s.tags.get("snapferry:step").map(String::as_str) == Some("copy"))
            .map(|s| (s.id.to_string(), w.lock_view(s), s.ready_ms))
            .collect()
    })
}

fn rig_total(rig: &Rig) -> u64 {
    rig.sim.with_world(|w| w.total_calls)
}

fn refused_deletes(rig: &Rig) -> u64 {
    rig.sim.with_world(|w| w.refused_deletes)
}

/// Every copy is locked in the plan's mode, under the target role, while it was still
/// pending; its lock expires two days after it completed; the report says so.
#[tokio::test]
async fn every_copy_is_locked_while_pending_and_the_report_shows_its_lock() {
    let rig = Rig::new(&governance_2d());
    let r = rig.run().await;
    assert_all_succeeded(&r);
    assert_eq!(rig.calls("ec2:LockSnapshot"), 3, "one LockSnapshot per copy");
    assert_eq!(rig.calls("ec2:CopySnapshot"), 3 + 2, "three copies and two re-encryptions");
    let copies = copy_locks(&rig);
    assert_eq!(copies.len(), 3);
    rig.sim.with_world(|w| {
        for s in w.snapshots.values().filter(|s| s.tags.get("snapferry:step").map(String::as_str) == Some("copy")) {
            assert_eq!(s.owner.as_str(), "222222222222", "copies live in the target account");
            let l = s.lock.as_ref().expect("locked");
            assert!(l.created_ms < s.ready_ms, "{}: locked while pending", s.id);
            assert_eq!((l.mode, l.duration_days, l.cool_off_hours), (LockMode::Governance, 2, None));
        }
    });
    for (id, lock, ready) in copies {
        let lock = lock.unwrap_or_else(|| panic!("{id} has no lock"));
        assert_eq!(lock.state, LockState::Governance);
        assert_eq!(lock.expires_ms, Some(ready + 2 * DAY_MS), "{id}: the duration starts at completion");
    }
    for v in &r.volumes {
        let l = v.lock.as_ref().unwrap_or_else(|| panic!("no lock in the report: {v:#?}"));
        assert_eq!((l.mode, l.state), ("governance", "governance"));
        assert!(l.expires.as_deref().is_some_and(|e| e.ends_with('Z')), "{l:?}");
    }
    let json = serde_json::to_value(&r).unwrap();
    assert_eq!(json["volumes"][0]["lock"]["mode"], "governance");
    // A locked single target lists its copy in `copies` too, with the same lock.
    assert_eq!(json["volumes"][0]["copies"][0]["lock"], json["volumes"][0]["lock"], "{json:#}");

    // Without `lock`, the report says `null` and no lock call is made.
    let plain = Rig::new(&cross());
    let r = plain.run().await;
    assert_eq!(plain.calls("ec2:LockSnapshot") + plain.calls("ec2:DescribeLockedSnapshots"), 0);
    assert!(serde_json::to_value(&r).unwrap()["volumes"][0]["lock"].is_null());

    // The cost of `lock`: one LockSnapshot per copy, plus per locked target and
    // invocation one DescribeLockedSnapshots (the report's lock states) and one
    // GetKeyPolicy of its key (preflight).
    let total = |r: &Rig| rig_total(r);
    let (with, without) = (total(&rig), total(&plain));
    eprintln!(
        "calls for 3 copies: {without} without lock ({:.2} per copy), {with} with ({:.2} per copy)",
        without as f64 / 3.0,
        with as f64 / 3.0
    );
    assert_eq!(with - without, 3 + 1 + 1);
    assert_eq!(rig.calls("ec2:DescribeLockedSnapshots"), 1);
    assert_eq!(rig.calls("kms:GetKeyPolicy") - plain.calls("kms:GetKeyPolicy"), 1);
}

/// `keep: 1`, `every: 24h` and a 2-day lock over six rounds: each round leaves the
/// newest copy per volume plus those whose lock still holds (reported kept, with the
/// time they are locked until); a copy whose lock expired is gone after the next
/// round; no DeleteSnapshot is ever refused.
#[tokio::test]
async fn retention_keeps_locked_copies_and_deletes_them_after_their_locks_expire() {
    let text = format!("{}  every: 24h\n  keep: 1\n", governance_2d());
    let rig = Rig::new(&text);
    let mut kept_locked_seen = false;
    let mut deleted = 0;
    for round in 1..=6 {
        let r = rig.run().await;
        assert_all_succeeded(&r);
        assert_eq!(refused_deletes(&rig), 0, "round {round}: a DeleteSnapshot AWS had to refuse");
        if let Some(p) = &r.retention {
            deleted += p.snapshots.len();
            for k in &p.locked {
                kept_locked_seen = true;
                assert!(k.until.is_some(), "round {round}: {k:?}");
            }
        }
        // Per volume: past its newest copy, only copies whose lock still holds.
        rig.sim.with_world(|w| {
            let mut per_volume: std::collections::BTreeMap<String, Vec<(i64, bool)>> = Default::default();
            for s in w.snapshots.values().filter(|s| s.tags.get("snapferry:step").map(String::as_str) == Some("copy")) {
                let holds = w.lock_view(s).is_some_and(|l| l.state.protects());
                let vol = s.tags.get("snapferry:source-volume").cloned().unwrap_or_default();
                per_volume.entry(vol).or_default().push((s.created_ms, holds));
            }
            assert_eq!(per_volume.len(), 3);
            for (vol, mut list) in per_volume {
                list.sort();
                list.pop();
                assert!(list.iter().all(|(_, holds)| *holds), "round {round}: {vol} keeps an expired copy: {list:?}");
                assert!(list.len() <= 2, "round {round}: {vol}: {list:?}");
            }
        });
        rig.sim.with_world(|w| w.now_ms += DAY_MS);
    }
    assert!(kept_locked_seen, "some copy past keep was kept for its lock");
    assert!(deleted >= 6, "copies whose locks expired were deleted: {deleted}");
    // Every deletion attempt read the locks first.
    assert!(rig.calls("ec2:DescribeLockedSnapshots") > 0);
}

/// A round that makes nothing (every volume fresh) still deletes the copies whose
/// locks have expired since: `every: 72h` with a 4-day lock, the first copies are
/// kept by the second round and deleted by the fresh third one.
#[tokio::test]
async fn a_fresh_round_deletes_copies_whose_locks_expired() {
    let text = format!("{}  every: 72h\n  keep: 1\n", locked(&cross(), "{mode: governance, duration: 4d}"));
    let rig = Rig::new(&text);
    assert_all_succeeded(&rig.run().await);
    rig.sim.with_world(|w| w.now_ms += 3 * DAY_MS);
    let r = rig.run().await;
    assert_all_succeeded(&r);
    let kept = r.retention.as_ref().map(|p| p.locked.len()).unwrap_or(0);
    assert_eq!((copy_locks(&rig).len(), kept), (6, 3), "{:?}", r.retention);
    rig.sim.with_world(|w| w.now_ms += 3 * DAY_MS / 2);
    let r = rig.run().await;
    assert!(r.volumes.iter().all(|v| v.status == "fresh"), "{r:#?}");
    assert_eq!(r.retention.as_ref().map(|p| p.snapshots.len()), Some(3), "{:?}", r.retention);
    assert_eq!(copy_locks(&rig).len(), 3);
    assert_eq!(refused_deletes(&rig), 0);
}

/// A locked plan crashed right after each of its calls, then resumed: one copy per
/// volume, every copy locked, exactly one LockSnapshot per copy (a lock whose answer
/// was lost is found by DescribeLockedSnapshots, not asked for again).
#[tokio::test]
async fn crash_at_every_call_of_a_locked_plan_locks_each_copy_once() {
    let text = governance_2d();
    let total = calls_of_a_clean_run(&text).await;
    for k in 1..=total {
        let (rig, r, _) = crash_and_resume(Backend::Local, &text, k).await;
        assert_all_succeeded(&r);
        assert_eq!(rig.count("copy"), 3, "copies after a crash at call {k}");
        assert_eq!(rig.calls("ec2:LockSnapshot"), 3, "LockSnapshot calls after a crash at call {k}");
        for (id, lock, _) in copy_locks(&rig) {
            assert!(lock.is_some(), "{id} unlocked after a crash at call {k}");
        }
        assert!(r.volumes.iter().all(|v| v.lock.is_some()), "call {k}: {r:#?}");
    }
}

/// The same with the state dir lost in the crash: the rerun adopts the run from its
/// tags, finds each copy's lock, and locks the one whose lock was never asked for.
#[tokio::test]
async fn crash_at_every_call_with_the_state_lost_adopts_and_locks_every_copy() {
    let text = governance_2d();
    let total = calls_of_a_clean_run(&text).await;
    // The last two calls are the last cleanup and the final read of the locks: a run
    // lost after them is finished in AWS, and a plan without `every` then starts anew.
    for k in 1..total - 1 {
        let Some((rig, r, _)) = crash_and_lose_state_after(&text, k).await else {
            panic!("the run ended before call {k} of {total}")
        };
        assert_all_succeeded(&r);
        assert_eq!(rig.count("copy"), 3, "copies after a crash at call {k}");
        for (id, lock, _) in copy_locks(&rig) {
            assert!(lock.is_some(), "{id} unlocked after a crash at call {k} and a lost state");
        }
        assert!(rig.calls("ec2:LockSnapshot") <= 3 + 1, "call {k}");
    }
}

/// A fan-out plan whose second target says `lock: none`: only the first target's
/// copies are locked, and the report says so per copy.
#[tokio::test]
async fn fan_out_with_one_target_unlocked() {
    let text = &fan_out_one_unlocked();
    let rig = Rig::new(text);
    let r = rig.run().await;
    assert_all_succeeded(&r);
    assert_eq!(rig.calls("ec2:LockSnapshot"), 2);
    rig.sim.with_world(|w| {
        for s in w.snapshots.values().filter(|s| s.tags.get("snapferry:step").map(String::as_str) == Some("copy")) {
            let view = w.lock_view(s);
            match s.owner.as_str() {
                "222222222222" => assert_eq!(view.map(|l| l.state), Some(LockState::ComplianceCooloff)),
                _ => assert!(view.is_none(), "{} in the standby account is locked", s.id),
            }
        }
    });
    for v in &r.volumes {
        assert_eq!(v.copies.len(), 2, "{v:#?}");
        let l = v.copies[0].lock.as_ref().expect("first target locked");
        assert_eq!((l.mode, l.state), ("compliance", "compliance-cooloff"));
        assert!(v.copies[1].lock.is_none());
    }
}

/// A lock the target role may not make fails that copy's volume, named, and the
/// others with it stop there too; the rerun after the fix locks the existing copies
/// and never copies again. `status` shows the copies that should be locked and are
/// not.
#[tokio::test]
async fn a_failed_lock_fails_the_volume_and_the_rerun_locks_the_existing_copy() {
    let rig = Rig::with(&governance_2d(), |w| {
        w.faults.denied.insert("ec2:LockSnapshot".into());
    });
    let r = rig.run().await;
    assert_eq!(r.status, RunStatus::Failed);
    for v in &r.volumes {
        assert_eq!((v.status.as_str(), v.step.as_str()), ("failed", "lock"), "{v:#?}");
        let e = v.error.as_deref().unwrap_or_default();
        assert!(e.contains("LockSnapshot of copy snap-") && e.contains("222222222222"), "{e}");
        assert!(v.hint.as_deref().unwrap_or_default().contains("permission"), "{v:#?}");
    }
    assert_eq!(rig.count("copy"), 3);
    let record = rig.store.latest_of_plan("crash-test").await.unwrap().unwrap();
    let mut runs = snapferry::cli::Runs::default();
    runs.add(&record);
    assert_eq!(runs.unlocked().as_array().map(Vec::len), Some(3), "{}", runs.unlocked());
    let mut metrics = snapferry::cli::Metrics::default();
    metrics.add(&rig.plan, &record);
    let prom = tempfile::tempdir().unwrap();
    let file = prom.path().join("snapferry.prom");
    snapferry::cli::write_metrics(&file, &rig.plan, &metrics).unwrap();
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.contains("snapferry_unlocked_copies{plan=\"crash-test\"} 3"), "{text}");

    rig.sim.with_world(|w| w.faults.denied.clear());
    let r = rig.run().await;
    assert_all_succeeded(&r);
    assert_eq!(rig.calls("ec2:CopySnapshot"), 3 + 2, "no second copy");
    assert_eq!(rig.count("copy"), 3);
    assert!(copy_locks(&rig).iter().all(|(_, l, _)| l.is_some()));
    let record = rig.store.latest_of_plan("crash-test").await.unwrap().unwrap();
    let mut runs = snapferry::cli::Runs::default();
    runs.add(&record);
    assert_eq!(runs.unlocked(), serde_json::json!([]));
}

/// A lock quota fails the volume after bounded retries, resumable the same way.
#[tokio::test]
async fn a_lock_quota_fails_the_volume_resumably() {
    let rig = Rig::with(&governance_2d(), |w| w.faults.lock_refused_with = Some("SnapshotLockLimitExceeded".into()));
    let r = rig.run().await;
    assert_eq!(r.status, RunStatus::Failed);
    assert!(r.volumes.iter().all(|v| v.step == "lock"), "{r:#?}");
    rig.sim.with_world(|w| w.faults.lock_refused_with = None);
    assert_all_succeeded(&rig.run().await);
    assert_eq!(rig.count("copy"), 3);
    assert!(copy_locks(&rig).iter().all(|(_, l, _)| l.is_some()));
}

fn world_with_copy(ready_in_ms: i64, fails: bool) -> (World, AccountId, Region, SnapshotId) {
    let mut w = World::new(0);
    let account = AccountId::parse("222222222222").unwrap();
    let region = Region::parse("eu-west-1").unwrap();
    let id = SnapshotId::parse("snap-00000000000000042").unwrap();
    let s = snapferry::cloud::sim::SimSnapshot {
        id: id.clone(),
        owner: account.clone(),
        region: region.clone(),
        volume_id: None,
        size_gib: 1,
        kms_key: None,
        tags: Default::default(),
        created_ms: 0,
        ready_ms: ready_in_ms,
        fails_with: fails.then(|| "Given key ID is not accessible".to_owned()),
        shared_with: Default::default(),
        shared_at_ms: 0,
        is_copy: true,
        origin_volume: None,
        lock: None,
        blocks: None,
    };
    w.snapshots.insert(id.to_string(), s);
    (w, account, region, id)
}

/// The simulated AWS keeps EBS's rules: the duration starts at completion; governance
/// refuses DeleteSnapshot until expiry; compliance is in cool-off first and then can
/// only be extended; a copy that fails loses its lock; locking the same way twice
/// changes nothing.
#[test]
fn the_simulated_aws_keeps_the_lock_rules() {
    let gov = LockSpec { mode: LockMode::Governance, duration_days: 1, cool_off_hours: None };
    let (mut w, a, r, id) = world_with_copy(1_000, false);
    let l = w.lock_snapshot(&a, &r, &id, &gov).unwrap();
    assert_eq!((l.state, l.expires_ms), (LockState::Governance, None), "pending: no expiry yet");
    w.now_ms = 2_000;
    assert_eq!(w.locked_snapshots(&a, &r, std::slice::from_ref(&id))[0].expires_ms, Some(1_000 + DAY_MS));
    let e = w.delete_snapshot(&a, &r, &id).unwrap_err();
    assert_eq!((e.kind, e.code.as_deref()), (ErrorKind::InvalidState, Some("SnapshotLocked")));
    assert_eq!(w.refused_deletes, 1);
    let again = w.lock_snapshot(&a, &r, &id, &gov).unwrap();
    assert_eq!(again.expires_ms, Some(1_000 + DAY_MS), "the same lock again changes nothing");
    w.now_ms = 1_000 + DAY_MS;
    assert_eq!(w.locked_snapshots(&a, &r, std::slice::from_ref(&id))[0].state, LockState::Expired);
    w.delete_snapshot(&a, &r, &id).unwrap();

    let comp = LockSpec { mode: LockMode::Compliance, duration_days: 3, cool_off_hours: Some(1) };
    let (mut w, a, r, id) = world_with_copy(0, false);
    assert_eq!(w.lock_snapshot(&a, &r, &id, &comp).unwrap().state, LockState::ComplianceCooloff);
    w.now_ms = 3_600_000;
    assert_eq!(w.locked_snapshots(&a, &r, std::slice::from_ref(&id))[0].state, LockState::Compliance);
    assert!(w.lock_snapshot(&a, &r, &id, &gov).is_err(), "compliance past cool-off cannot become governance");
    let longer = LockSpec { duration_days: 5, ..comp };
    assert_eq!(w.lock_snapshot(&a, &r, &id, &longer).unwrap().expires_ms, Some(5 * DAY_MS), "only extended");

    let (mut w, a, r, id) = world_with_copy(1_000, true);
    w.lock_snapshot(&a, &r, &id, &gov).unwrap();
    w.now_ms = 1_000;
    assert!(w.locked_snapshots(&a, &r, std::slice::from_ref(&id)).is_empty(), "a failed copy's lock is cancelled");
    w.delete_snapshot(&a, &r, &id).unwrap();
}
