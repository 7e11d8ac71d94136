//! Plans with several targets (`targets:`) against the simulated AWS, in process:
//! one snapshot and at most one re-encryption per volume whatever the number of
//! targets, one share and one key-policy write for every target account, a target
//! that fails alone and is finished by a rerun without touching the others, and
//! crash safety at every call of a fan-out run.

use snapferry::checkpoint::RunStatus;
use snapferry::ids::AccountId;

use crate::support::plans::{self, DR_ACCOUNT as DR, SOURCE_ACCOUNT as SOURCE, VAULT_ACCOUNT as VAULT};
use crate::support::rig::{Backend, Rig, crash_and_lose_state_after, crash_and_resume};

/// Two targets in two accounts and regions; the seed puts volume 1 under the source
/// key, volume 2 under aws/ebs and volume 3 unencrypted.
fn fan_out() -> String {
    plans::fan_out("fan-test", 3, "")
}

#[tokio::test]
async fn two_targets_get_a_copy_each_from_one_snapshot_and_at_most_one_reencryption_per_volume() {
    let rig = Rig::with(&fan_out(), |_| {});
    let r = rig.run().await;
    assert_eq!(r.status, RunStatus::Succeeded, "{r:#?}");
    assert_eq!(r.volumes.len(), 3);
    for v in &r.volumes {
        assert_eq!(v.status, "succeeded", "{v:#?}");
        assert_eq!(v.copies.len(), 2, "{v:#?}");
        let accounts: Vec<_> = v.copies.iter().map(|c| (c.account.as_deref(), c.region.as_str())).collect();
        assert_eq!(accounts, vec![(Some(DR), "eu-west-1"), (Some(VAULT), "us-west-2")]);
        assert!(v.copies.iter().all(|c| c.status == "succeeded" && c.target_volume.is_some()), "{v:#?}");
    }
    // One snapshot per volume; volumes 2 (aws/ebs) and 3 (unencrypted) re-encrypted
    // once each; one copy per (volume, target); one share per volume for both accounts.
    assert_eq!(rig.calls("ec2:CreateSnapshot"), 3);
    assert_eq!(rig.calls("ec2:CopySnapshot"), 2 + 6);
    assert_eq!(rig.calls("ec2:ModifySnapshotAttribute"), 3);
    assert_eq!(rig.calls("kms:PutKeyPolicy"), 1, "one write for both accounts' statements");
    assert_eq!(rig.calls("ec2:CreateVolume"), 6);
    for account in [DR, VAULT] {
        assert_eq!(rig.made("copy", Some(account)).len(), 3, "copies in {account}");
        assert_eq!(rig.made("volume", Some(account)).len(), 3, "volumes in {account}");
    }
    assert!(rig.made("snapshot", Some(SOURCE)).is_empty() && rig.made("reencrypt", Some(SOURCE)).is_empty());
    // Each target's copies are under its own key, and the source key grants both.
    rig.sim.with_world(|w| {
        for s in w.snapshots.values().filter(|s| s.tags.get("snapferry:step").map(String::as_str) == Some("copy")) {
            let key = s.kms_key.as_ref().unwrap().to_string();
            assert!(key.contains(&format!(":{}:", s.owner)), "copy {} under {key}", s.id);
        }
        let source_key = w
            .keys
            .iter()
            .find(|k| {
                k.account.as_str() == SOURCE && k.region.as_str() == "us-east-1" && k.policy.contains("SnapferryShare")
            })
            .unwrap();
        for account in [DR, VAULT] {
            assert!(source_key.policy.contains(&format!("SnapferryShare-fan-test-{account}")), "{}", source_key.policy);
        }
    });
}

#[tokio::test]
async fn a_target_whose_copies_fail_fails_alone_and_a_fixed_rerun_finishes_it_without_touching_the_other() {
    let vault = AccountId::parse(VAULT).unwrap();
    let rig = Rig::with(&fan_out(), |w| w.faults.key_inaccessible_to = Some(vault.clone()));
    let r = rig.run().await;
    assert_eq!(r.status, RunStatus::Failed, "{r:#?}");
    for v in &r.volumes {
        assert_eq!(v.status, "failed", "{v:#?}");
        assert_eq!(v.copies[0].status, "succeeded", "{v:#?}");
        assert!(v.copies[0].target_volume.is_some());
        assert_eq!(v.copies[1].status, "failed", "{v:#?}");
        let e = v.copies[1].error.as_deref().unwrap();
        assert!(e.contains("Given key ID is not accessible"), "{e}");
        assert!(v.error.as_deref().unwrap().contains(VAULT), "the volume's error names the target: {v:#?}");
    }
    // The intermediates stay for the copies still to be made.
    assert!(!rig.made("snapshot", Some(SOURCE)).is_empty());
    let dr_before = (rig.made("copy", Some(DR)), rig.made("volume", Some(DR)));
    assert_eq!(dr_before.0.len(), 3);

    rig.sim.with_world(|w| w.faults.key_inaccessible_to = None);
    let copies_before = rig.calls("ec2:CopySnapshot");
    let volumes_before = rig.calls("ec2:CreateVolume");
    let snapshots_before = rig.calls("ec2:CreateSnapshot");
    let again = rig.run().await;
    assert_eq!(again.status, RunStatus::Succeeded, "{again:#?}");
    assert_eq!(again.run_id, r.run_id, "the failed run is resumed");
    assert_eq!(rig.calls("ec2:CopySnapshot") - copies_before, 3, "only the vault's copies are made again");
    assert_eq!(rig.calls("ec2:CreateVolume") - volumes_before, 3);
    assert_eq!(rig.calls("ec2:CreateSnapshot"), snapshots_before, "no new snapshot");
    assert_eq!(
        (rig.made("copy", Some(DR)), rig.made("volume", Some(DR))),
        dr_before,
        "the recovery account is untouched"
    );
    assert_eq!(rig.made("copy", Some(VAULT)).len(), 3, "the errored copies were deleted, then made anew");
    assert_eq!(rig.made("volume", Some(VAULT)).len(), 3);
    assert!(rig.made("snapshot", Some(SOURCE)).is_empty() && rig.made("reencrypt", Some(SOURCE)).is_empty());
}

#[tokio::test]
async fn crash_at_every_call_of_a_fan_out_run_then_resume_leaves_one_copy_per_volume_and_target() {
    let clean = Rig::with(&fan_out(), |_| {});
    assert_eq!(clean.run().await.status, RunStatus::Succeeded);
    let total = clean.sim.with_world(|w| w.total_calls);
    let mut crashed = 0;
    for k in 1..=total {
        let (rig, r, halted) = crash_and_resume(Backend::Local, &fan_out(), k).await;
        crashed += u64::from(halted);
        assert_eq!(r.status, RunStatus::Succeeded, "after a crash at call {k}: {r:#?}");
        assert!(r.volumes.iter().all(|v| v.copies.iter().all(|c| c.status == "succeeded")), "call {k}: {r:#?}");
        for account in [DR, VAULT] {
            assert_eq!(rig.made("copy", Some(account)).len(), 3, "copies in {account} after a crash at call {k}");
            assert_eq!(rig.made("volume", Some(account)).len(), 3, "volumes in {account} after a crash at call {k}");
        }
        assert!(
            rig.made("snapshot", Some(SOURCE)).is_empty() && rig.made("reencrypt", Some(SOURCE)).is_empty(),
            "orphans on the source side after call {k}"
        );
        rig.sim.with_world(|w| {
            let untagged = w.snapshots.values().filter(|s| !s.tags.contains_key("snapferry:step")).count();
            assert_eq!(untagged, 0, "untagged snapshots after call {k}");
            let foreign = w
                .volumes
                .values()
                .filter(|v| v.owner.as_str() != SOURCE && !v.tags.contains_key("snapferry:step"))
                .count();
            assert_eq!(foreign, 0, "untagged target volumes after call {k}");
        });
    }
    assert!(crashed >= total - 1, "the crashes landed mid-run: {crashed} of {total}");
}

#[tokio::test]
async fn crash_at_every_call_with_the_state_lost_adopts_every_targets_copies() {
    let clean = Rig::with(&fan_out(), |_| {});
    assert_eq!(clean.run().await.status, RunStatus::Succeeded);
    let total = clean.sim.with_world(|w| w.total_calls);
    for k in 1..total {
        // The state is lost with the crash, as on an ephemeral CI runner.
        let Some((rig, r, _)) = crash_and_lose_state_after(&fan_out(), k).await else {
            panic!("the run ended before call {k} of {total}");
        };
        assert_eq!(r.status, RunStatus::Succeeded, "after a crash at call {k}: {r:#?}");
        for account in [DR, VAULT] {
            assert_eq!(rig.made("copy", Some(account)).len(), 3, "copies in {account} after call {k}");
            assert_eq!(rig.made("volume", Some(account)).len(), 3, "volumes in {account} after call {k}");
        }
        assert!(
            rig.made("snapshot", Some(SOURCE)).is_empty() && rig.made("reencrypt", Some(SOURCE)).is_empty(),
            "orphans on the source side after call {k}"
        );
        rig.sim.with_world(|w| {
            let runs: std::collections::BTreeSet<&String> =
                w.volumes.values().filter_map(|v| v.tags.get("snapferry:run")).collect();
            assert_eq!(runs.len(), 1, "one run's volumes after call {k}: {runs:?}");
        });
    }
}

const RECURRING: &str = "options:\n  every: 24h\n  create_volume: false\n  keep: 2\n";

#[tokio::test]
async fn a_recurring_fan_out_plan_stays_fresh_per_target_and_a_failing_target_holds_back_no_other() {
    let text = format!("{}{RECURRING}", fan_out());
    let vault = AccountId::parse(VAULT).unwrap();
    let rig = Rig::with(&text, |_| {});
    let first = rig.run().await;
    assert_eq!(first.status, RunStatus::Succeeded, "{first:#?}");

    // Within `every`: nothing changes and every copy is fresh.
    let mutating = |rig: &Rig| {
        ["ec2:CreateSnapshot", "ec2:CopySnapshot", "ec2:CreateVolume", "ec2:DeleteSnapshot", "kms:PutKeyPolicy"]
            .iter()
            .map(|a| rig.calls(a))
            .sum::<u64>()
    };
    let before = mutating(&rig);
    let second = rig.run().await;
    assert_eq!(mutating(&rig), before, "a fresh invocation changes nothing");
    assert!(second.volumes.iter().all(|v| v.status == "fresh" && v.copies.iter().all(|c| c.status == "fresh")));

    // A day later the vault's copies fail; the recovery account still gets its own.
    rig.sim.with_world(|w| {
        w.now_ms += 25 * 3_600_000;
        w.faults.key_inaccessible_to = Some(vault.clone());
    });
    let third = rig.run().await;
    assert_eq!(third.status, RunStatus::Failed);
    assert!(third.volumes.iter().all(|v| v.copies[0].status == "succeeded" && v.copies[1].status == "failed"));
    assert_eq!(rig.made("copy", Some(DR)).len(), 6, "a second round of copies in the recovery account");

    // Fixed an hour later: only the vault's copies are made; the recovery account's
    // are fresh and left alone.
    rig.sim.with_world(|w| {
        w.now_ms += 3_600_000;
        w.faults.key_inaccessible_to = None;
    });
    let copies_before = rig.calls("ec2:CopySnapshot");
    let fourth = rig.run().await;
    assert_eq!(fourth.status, RunStatus::Succeeded, "{fourth:#?}");
    assert_eq!(rig.calls("ec2:CopySnapshot") - copies_before, 3, "only the vault's copies");
    assert_eq!(rig.made("copy", Some(DR)).len(), 6);
    assert_eq!(rig.made("copy", Some(VAULT)).len(), 6, "keep: 2 per volume in the vault too");
    assert!(rig.made("snapshot", Some(SOURCE)).is_empty() && rig.made("reencrypt", Some(SOURCE)).is_empty());
}

#[tokio::test]
async fn cleanup_of_a_fan_out_run_stops_pending_copies_in_every_target_and_revokes_both_statements() {
    let text = format!("{}options:\n  timeouts: {{copy: 30m}}\n", fan_out());
    let rig = Rig::with(&text, |w| w.timing.copy_base_ms = 7_200_000);
    let first = rig.run().await;
    assert_eq!(first.status, RunStatus::Failed);
    assert_eq!(rig.made("copy", Some(DR)).len() + rig.made("copy", Some(VAULT)).len(), 6);
    let env = rig.env();
    let summary = snapferry::exec::cleanup(&env.store, env.cloud.as_ref(), env.clock.as_ref(), &first.run_id, None)
        .await
        .unwrap();
    assert!(summary.errors.is_empty(), "{summary:#?}");
    assert_eq!(summary.stopped_copies.len(), 6, "{summary:#?}");
    assert_eq!(summary.grant, format!("{DR}: revoked; {VAULT}: revoked"));
    for account in [DR, VAULT, SOURCE] {
        assert!(rig.made("copy", Some(account)).is_empty(), "copies left in {account}");
    }
    assert!(rig.made("snapshot", Some(SOURCE)).is_empty() && rig.made("reencrypt", Some(SOURCE)).is_empty());
    rig.sim.with_world(|w| {
        for k in w.keys.iter().filter(|k| k.account.as_str() == SOURCE) {
            assert!(!k.policy.contains("SnapferryShare-fan-test"), "{}", k.policy);
        }
    });
    assert!(env.store.load(&first.run_id).await.unwrap().meta.cleaned_up);
}
