//! The bad day, played out on the simulated AWS: cleanup of an older round beside a
//! later round that carries one of its chains, a copy whose source snapshot was
//! deleted, one failing target beside healthy ones in a recurring plan, a state lost
//! mid-round of a fan-out plan, freshness rebuilt from tags, and key-policy writes
//! whose answer is lost or whose statement another writer drops. Each asserts what
//! AWS holds and was asked afterwards: nothing the run did is repeated or destroyed.

use snapferry::checkpoint::RunStatus;

use crate::support::plans::{self, DR_ACCOUNT as DR, VAULT_ACCOUNT as VAULT};
use crate::support::rig::{HOUR_MS, Rig};

fn cross() -> String {
    plans::cross("bad-day")
}

/// Two targets in two accounts and regions.
fn fan_out() -> String {
    plans::fan_out("bad-fan", 3, plans::OWNER_TAG)
}

fn with_options(base: &str, options: &str) -> String {
    format!("{base}{options}")
}

fn statuses(r: &snapferry::exec::RunReport) -> Vec<String> {
    r.volumes.iter().map(|v| v.status.clone()).collect()
}

/// Deletes, as someone outside snapferry would, every source-side snapshot the plan
/// made (the snapshots and their re-encryptions).
fn delete_source_side(rig: &Rig) {
    rig.sim.with_world(|w| {
        w.snapshots
            .retain(|_, s| !matches!(s.tags.get("snapferry:step").map(String::as_str), Some("snapshot" | "reencrypt")))
    });
}

/// 1. A recurring plan carries a volume's unfinished chain into the next round, so
/// its resources keep the older run's tag; cleanup of that older run leaves the chain
/// alone (its copy still pending, its snapshots still there), names the run that
/// carries it, and the later run then finishes it.
#[tokio::test]
async fn cleanup_of_an_older_round_leaves_the_chain_a_later_round_carries() {
    let text = with_options(&cross(), "  every: 24h\n");
    let rig = Rig::with(&text, |w| {
        w.faults.key_inaccessible_for = Some(snapferry::ids::VolumeId::parse("vol-00000000000000002").unwrap())
    });
    let first = rig.run().await;
    assert_eq!(statuses(&first), ["succeeded", "failed", "succeeded"]);
    // A day later the fault is fixed, but copies now take 30 hours: the second round
    // carries volume 2's chain of the first run, and stops waiting for its copy after
    // the plan's copy timeout (24 hours).
    rig.sim.with_world(|w| {
        w.faults.key_inaccessible_for = None;
        w.timing.copy_base_ms = 30 * HOUR_MS;
        w.now_ms += 24 * HOUR_MS;
    });
    let second = rig.run().await;
    assert_ne!(second.run_id, first.run_id);
    assert_eq!(second.status, RunStatus::Failed, "copies still under way");
    let pending = rig.sim.with_world(|w| {
        w.snapshots
            .values()
            .filter(|s| {
                s.tags.get("snapferry:run") == Some(&first.run_id)
                    && s.tags.get("snapferry:source-volume").map(String::as_str) == Some("vol-00000000000000002")
                    && s.tags.get("snapferry:step").map(String::as_str) == Some("copy")
            })
            .map(|s| s.id.to_string())
            .collect::<Vec<_>>()
    });
    assert_eq!(pending.len(), 1, "the carried chain's copy, tagged with the first run");
    let source_side_before = rig.made("snapshot", None).len() + rig.made("reencrypt", None).len();

    let summary = rig.cleanup(&first.run_id, false).await;
    assert!(summary.errors.is_empty(), "{summary:#?}");
    assert_eq!(summary.carried.len(), 1, "{summary:#?}");
    assert_eq!(summary.carried[0].source_volume, "vol-00000000000000002");
    assert_eq!(summary.carried[0].carried_by, second.run_id);
    assert!(summary.stopped_copies.is_empty(), "the live round's copy was stopped: {summary:#?}");
    assert!(rig.sim.with_world(|w| w.snapshots.contains_key(&pending[0])), "the carried copy is gone");
    assert_eq!(
        rig.made("snapshot", None).len() + rig.made("reencrypt", None).len(),
        source_side_before,
        "cleanup deleted snapshots the carried chain reads"
    );
    assert!(summary.grant.starts_with("kept"), "the later run still needs the statement: {}", summary.grant);

    // The later run finishes the chain it carries.
    rig.advance(7 * HOUR_MS);
    let third = rig.run().await;
    assert_eq!(third.status, RunStatus::Succeeded, "{third:#?}");
    let v2 = third.volumes.iter().find(|v| v.source_volume == "vol-00000000000000002").unwrap();
    assert_eq!(v2.target_snapshot.as_deref(), Some(pending[0].as_str()), "the carried copy, not a new one");
}

/// 2. A copy whose shared snapshot was deleted outside snapferry: the volume is
/// snapshotted again and copied, in the same invocation, instead of failing at Copy
/// on every run.
#[tokio::test]
async fn a_copy_whose_source_snapshot_is_gone_snapshots_the_volume_again() {
    let rig =
        Rig::with(&cross(), |w| w.faults.key_inaccessible_to = Some(snapferry::ids::AccountId::parse(DR).unwrap()));
    let first = rig.run().await;
    assert_eq!(first.status, RunStatus::Failed);
    assert_eq!(rig.calls("ec2:CreateSnapshot"), 3);
    delete_source_side(&rig);
    rig.sim.with_world(|w| w.faults.key_inaccessible_to = None);

    let second = rig.run().await;
    assert_eq!(second.status, RunStatus::Succeeded, "{second:#?}");
    assert_eq!(second.run_id, first.run_id);
    assert_eq!(rig.calls("ec2:CreateSnapshot"), 6, "each volume snapshotted once more");
    assert_eq!(rig.made("copy", Some(DR)).len(), 3, "one copy per volume, the errored ones deleted");
    assert_eq!(rig.made("volume", Some(DR)).len(), 3);
    assert!(rig.made("snapshot", None).is_empty() && rig.made("reencrypt", None).is_empty(), "cleaned up");
}

/// 2, with two targets: the healthy target's copy is done and its lead holds the
/// intermediates for the failing one; they are deleted by hand. The follower takes
/// the source side itself: one new snapshot per volume, the healthy copies untouched.
#[tokio::test]
async fn a_follower_whose_source_snapshot_is_gone_takes_the_source_side_once() {
    let rig = Rig::with(&fan_out(), |w| {
        w.faults.key_inaccessible_to = Some(snapferry::ids::AccountId::parse(VAULT).unwrap())
    });
    let first = rig.run().await;
    assert_eq!(first.status, RunStatus::Failed);
    let dr_before = (rig.made("copy", Some(DR)), rig.made("volume", Some(DR)));
    assert_eq!(dr_before.0.len(), 3);
    delete_source_side(&rig);
    rig.sim.with_world(|w| w.faults.key_inaccessible_to = None);

    let second = rig.run().await;
    assert_eq!(second.status, RunStatus::Succeeded, "{second:#?}");
    assert_eq!(rig.calls("ec2:CreateSnapshot"), 6, "one new snapshot per volume");
    assert_eq!((rig.made("copy", Some(DR)), rig.made("volume", Some(DR))), dr_before, "the healthy target untouched");
    assert_eq!(rig.made("copy", Some(VAULT)).len(), 3);
    assert_eq!(rig.made("volume", Some(VAULT)).len(), 3);
    assert!(rig.made("snapshot", None).is_empty() && rig.made("reencrypt", None).is_empty(), "cleaned up");
}

/// 8. Another writer of the source key's policy drops snapferry's statement after it
/// was granted and verified: the copies end in "Given key ID is not accessible". The
/// run reads the policy, puts the statement back and makes those copies once more,
/// in the same invocation.
#[tokio::test]
async fn a_statement_lost_to_another_writer_is_put_back_and_the_copies_made_again() {
    let rig = Rig::with(&cross(), |w| w.faults.key_policy_reverted_on_copy = true);
    let r = rig.run().await;
    assert_eq!(r.status, RunStatus::Succeeded, "{r:#?}");
    assert_eq!(rig.calls("kms:PutKeyPolicy"), 2, "granted, then put back once");
    assert_eq!(rig.calls("ec2:CreateSnapshot"), 3, "nothing snapshotted again");
    assert_eq!(rig.made("copy", Some(DR)).len(), 3, "the errored copies were deleted");
    rig.sim.with_world(|w| {
        let k = w.keys.iter().find(|k| k.aliases.iter().any(|a| a == "share")).unwrap();
        assert!(k.policy.contains("SnapferryShare-bad-day-222222222222"), "{}", k.policy);
    });
}

/// 8. A PutKeyPolicy whose answer is lost is not sent again with the same document:
/// the policy is read again, and since the write took effect, nothing more is put.
#[tokio::test]
async fn a_key_policy_write_whose_answer_is_lost_is_read_again_not_resent() {
    let rig = Rig::with(&cross(), |w| {
        w.faults.lose_answers_of.insert("kms:PutKeyPolicy".into());
    });
    let r = rig.run().await;
    assert_eq!(r.status, RunStatus::Succeeded, "{r:#?}");
    assert_eq!(rig.calls("kms:PutKeyPolicy"), 1, "the document was sent again");
    // Revoking reads the policy back as well, and a lost answer is read, not resent.
    let summary = rig.cleanup(&r.run_id, false).await;
    assert_eq!(summary.grant, "revoked", "{summary:#?}");
    assert_eq!(rig.calls("kms:PutKeyPolicy"), 2);
    rig.sim.with_world(|w| {
        let k = w.keys.iter().find(|k| k.aliases.iter().any(|a| a == "share")).unwrap();
        assert!(!k.policy.contains("SnapferryShare-bad-day"), "{}", k.policy);
    });
}

/// 3. With `targets:` and `every`, a failing target never freezes its healthy
/// sibling: the lead whose own copy is done counts as its target's copy, so when it is
/// due its target gets a new round, while the failing target keeps the old chain's
/// intermediates until its copy is made; then they are cleaned up.
#[tokio::test]
async fn one_failing_target_never_freezes_its_healthy_sibling() {
    let text = with_options(&fan_out(), "  every: 24h\n");
    let rig =
        Rig::with(&text, |w| w.faults.key_inaccessible_to = Some(snapferry::ids::AccountId::parse(VAULT).unwrap()));
    let first = rig.run().await;
    assert_eq!(first.status, RunStatus::Failed);
    for v in &first.volumes {
        let got: Vec<&str> = v.copies.iter().map(|c| c.status.as_str()).collect();
        assert_eq!(got, ["succeeded", "failed"], "{v:#?}");
    }
    assert_eq!(rig.made("copy", Some(DR)).len(), 3);

    // A day later the vault still fails; the recovery account gets its new round.
    rig.advance(24 * HOUR_MS);
    let second = rig.run().await;
    assert_ne!(second.run_id, first.run_id);
    assert_eq!(rig.made("copy", Some(DR)).len(), 6, "the healthy target was frozen by the failing one");
    assert_eq!(rig.calls("ec2:CreateSnapshot"), 6, "one new snapshot per volume for the new round");
    for v in &second.volumes {
        let got: Vec<&str> = v.copies.iter().map(|c| c.status.as_str()).collect();
        assert_eq!(got, ["succeeded", "failed"], "{v:#?}");
        assert_ne!(
            v.copies[0].target_snapshot,
            first.volumes.iter().find(|f| f.source_volume == v.source_volume).unwrap().copies[0].target_snapshot,
            "a new copy, not the old one reported again"
        );
    }
    // The old chain's intermediates are still there for the vault's copy.
    assert!(!rig.made("snapshot", None).is_empty() || !rig.made("reencrypt", None).is_empty());
    // `status` agrees with the report: the recovery account's newest copies are this
    // round's, and the vault's copies are failing.
    let mut runs = snapferry::cli::Runs::default();
    for r in rig.store.list().await.unwrap() {
        runs.add(&r);
    }
    let status = snapferry::cli::runs_json(&runs);
    for v in &second.volumes {
        let newest: Vec<&serde_json::Value> = status["last_success"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["source_volume"] == v.source_volume.as_str() && e["target"] == "222222222222/eu-west-1")
            .collect();
        assert_eq!(newest.len(), 1, "{status:#}");
        assert_eq!(newest[0]["target_snapshot"].as_str(), v.copies[0].target_snapshot.as_deref(), "{status:#}");
        assert_eq!(newest[0]["run_id"], second.run_id.as_str());
    }
    let failing = status["failing"].as_array().unwrap();
    assert_eq!(failing.len(), 3, "{status:#}");
    assert!(failing.iter().all(|f| f["target"] == "333333333333/us-west-2"), "{status:#}");

    // Fixed: the vault's copy is made from the old chain, whose intermediates then go.
    rig.sim.with_world(|w| w.faults.key_inaccessible_to = None);
    rig.advance(HOUR_MS);
    let third = rig.run().await;
    assert_eq!(third.status, RunStatus::Succeeded, "{third:#?}");
    assert_eq!(rig.calls("ec2:CreateSnapshot"), 6, "nothing snapshotted for the vault's copy");
    assert_eq!(rig.made("copy", Some(DR)).len(), 6, "the recovery account is fresh");
    let vault_ok = rig.sim.with_world(|w| {
        w.snapshots
            .values()
            .filter(|s| s.owner.as_str() == VAULT && s.fails_with.is_none())
            .filter(|s| s.tags.get("snapferry:step").map(String::as_str) == Some("copy"))
            .count()
    });
    assert_eq!(vault_ok, 3);
    assert!(rig.made("snapshot", None).is_empty() && rig.made("reencrypt", None).is_empty(), "intermediates left");
}

/// 6. A state lost in the middle of a recurring fan-out round (crashed at every call
/// of the round, the state then lost): the follower with nothing in its target yet is
/// adopted as a follower, never as a second lead. One CreateSnapshot per volume per
/// round, state or no state.
#[tokio::test]
async fn a_lost_state_mid_round_of_a_recurring_fan_out_plan_adopts_followers_as_followers() {
    // Two volumes, one under the source key and one re-encrypted, keep the crash at
    // every call of a round short.
    let text = with_options(&fan_out().replace("  - id: vol-00000000000000003\n", ""), "  every: 24h\n");
    let clean = Rig::new(&text);
    assert_eq!(clean.run().await.status, RunStatus::Succeeded);
    clean.advance(24 * HOUR_MS);
    let before = clean.total_calls();
    assert_eq!(clean.run().await.status, RunStatus::Succeeded);
    let round = clean.total_calls() - before;
    assert!(round > 20, "{round}");
    let mut landed = 0;
    for k in 1..round {
        let mut rig = Rig::new(&text);
        assert_eq!(rig.run().await.status, RunStatus::Succeeded);
        rig.advance(24 * HOUR_MS);
        if !rig.crash_after(k).await {
            panic!("round 2 ended before call {k} of {round}");
        }
        landed += 1;
        rig.lose_state();
        let r = rig.run().await;
        assert_eq!(r.status, RunStatus::Succeeded, "after a crash at call {k}: {r:#?}");
        assert_eq!(rig.calls("ec2:CreateSnapshot"), 4, "snapshots after a crash at call {k} of round 2");
        // Per round: a copy per volume and target, and one re-encryption of volume 2.
        assert_eq!(rig.calls("ec2:CopySnapshot"), 2 * (4 + 1), "copies after a crash at call {k} of round 2");
        for account in [DR, VAULT] {
            assert_eq!(rig.made("copy", Some(account)).len(), 4, "copies in {account} after call {k}");
            assert_eq!(rig.made("volume", Some(account)).len(), 4, "volumes in {account} after call {k}");
        }
        assert!(
            rig.made("snapshot", None).is_empty() && rig.made("reencrypt", None).is_empty(),
            "orphans on the source side after call {k}"
        );
    }
    assert_eq!(landed, round - 1, "every crash landed mid-round");
}

/// 7. With `cleanup: true` the source snapshots are gone once the copies exist, so
/// freshness rebuilt from tags (a fresh CI runner) reads when the chain began from the
/// copy's `snapferry:chain-started` tag: a slow snapshot and re-encryption do not make
/// a due volume look fresh. The same invocation decides the same with or without the
/// state.
#[tokio::test]
async fn freshness_rebuilt_from_tags_dates_from_the_chains_start() {
    let text = with_options(&cross(), "  every: 24h\n");
    let slow = |w: &mut snapferry::cloud::sim::World| w.timing.snapshot_base_ms = 4 * HOUR_MS;
    let kept = Rig::with(&text, slow);
    let lost = Rig::with(&text, slow);
    for rig in [&kept, &lost] {
        let r = rig.run().await;
        assert_eq!(r.status, RunStatus::Succeeded, "{r:#?}");
        assert!(rig.made("snapshot", None).is_empty(), "cleanup: true leaves no source snapshot");
        // 22 hours after the chains began, at most 18 after any copy began: due.
        rig.sim.with_world(|w| w.now_ms = crate::support::rig::EPOCH_MS + 22 * HOUR_MS);
    }
    lost.lose_state();
    let with_state = kept.run().await;
    let without = lost.run().await;
    assert_eq!(statuses(&with_state), ["succeeded", "succeeded", "succeeded"], "{with_state:#?}");
    assert_eq!(statuses(&without), statuses(&with_state), "a lost state changed what is due");
    assert_eq!(lost.made("copy", Some(DR)).len(), 6);
    // The first round's copies date their chains from its first snapshot.
    let first_round: Vec<String> = kept
        .made("copy", Some(DR))
        .into_iter()
        .filter(|c| kept.tags_of(c).get("snapferry:run").map(String::as_str) != Some(with_state.run_id.as_str()))
        .collect();
    assert_eq!(first_round.len(), 3);
    for copy in first_round {
        let started = kept.tags_of(&copy).get("snapferry:chain-started").cloned();
        assert!(started.is_some_and(|s| s.starts_with("2027-01-15T08:00")), "{copy}: {:?}", kept.tags_of(&copy));
    }
}
