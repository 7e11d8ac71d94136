//! Plans with several targets (`targets:`) against the simulated AWS, in process:
//! one snapshot and at most one re-encryption per volume whatever the number of
//! targets, one share and one key-policy write for every target account, a target
//! that fails alone and is finished by a rerun without touching the others, and
//! crash safety at every call of a fan-out run.

use std::sync::Arc;

use snapferry::checkpoint::{RunStatus, Store};
use snapferry::cloud::sim::{SimCloud, World, seed_from_plan};
use snapferry::exec::{Env, RunConfig, RunReport, run};
use snapferry::ids::AccountId;
use snapferry::plan::{Plan, parse};
use tokio::sync::watch;

/// Two targets in two accounts and regions; the seed puts volume 1 under the source
/// key, volume 2 under aws/ebs and volume 3 unencrypted.
const FANOUT: &str = r#"
version: 1
name: fan-test
source:
  region: us-east-1
  account: "111111111111"
  kms_key: alias/share
targets:
  - region: eu-west-1
    account: "222222222222"
    role_arn: arn:aws:iam::222222222222:role/dr
    kms_key: alias/dr
    availability_zone: eu-west-1b
  - region: us-west-2
    account: "333333333333"
    role_arn: arn:aws:iam::333333333333:role/vault
    kms_key: alias/vault
    availability_zone: us-west-2a
volumes:
  - id: vol-00000000000000001
  - id: vol-00000000000000002
  - id: vol-00000000000000003
"#;

fn plan(text: &str) -> Plan {
    parse("fan.yaml", text).unwrap_or_else(|e| panic!("{e}"))
}

struct Rig {
    plan: Plan,
    sim: SimCloud,
    _dir: tempfile::TempDir,
    store: Store,
}

impl Rig {
    fn with(plan: Plan, tweak: impl FnOnce(&mut World)) -> Self {
        let (mut world, sides) = seed_from_plan(&plan, 1_800_000_000_000);
        tweak(&mut world);
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        Rig { plan, sim: SimCloud::new(world, sides), _dir: dir, store }
    }

    fn cfg(&self) -> RunConfig {
        RunConfig {
            plan: self.plan.clone(),
            plan_file: "fan.yaml".into(),
            run_id: None,
            simulated: true,
            probe_permissions: true,
            progress: None,
        }
    }

    fn env(&self, sim: &SimCloud) -> Env {
        Env { cloud: Arc::new(sim.clone()), clock: Arc::new(sim.clone()), store: self.store.clone() }
    }

    async fn run(&self) -> RunReport {
        let (_tx, rx) = watch::channel(false);
        run(self.cfg(), self.env(&self.sim), rx).await.unwrap_or_else(|e| panic!("{e}"))
    }

    fn calls(&self, action: &str) -> u64 {
        self.sim.with_world(|w| w.calls.get(action).copied().unwrap_or(0))
    }

    /// Snapshots (or volumes, for `volume`) this plan made with `step`, in `account`.
    fn made_in(&self, account: &str, step: &str) -> Vec<String> {
        self.sim.with_world(|w| {
            let tagged = |t: &std::collections::BTreeMap<String, String>| {
                t.get("snapferry:step").map(String::as_str) == Some(step)
            };
            let mut out: Vec<String> = w
                .snapshots
                .values()
                .filter(|s| s.owner.as_str() == account && tagged(&s.tags))
                .map(|s| s.id.to_string())
                .collect();
            out.extend(
                w.volumes.values().filter(|v| v.owner.as_str() == account && tagged(&v.tags)).map(|v| v.id.to_string()),
            );
            out.sort();
            out
        })
    }
}

const SOURCE: &str = "111111111111";
const DR: &str = "222222222222";
const VAULT: &str = "333333333333";

#[tokio::test]
async fn two_targets_get_a_copy_each_from_one_snapshot_and_at_most_one_reencryption_per_volume() {
    let rig = Rig::with(plan(FANOUT), |_| {});
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
        assert_eq!(rig.made_in(account, "copy").len(), 3, "copies in {account}");
        assert_eq!(rig.made_in(account, "volume").len(), 3, "volumes in {account}");
    }
    assert!(rig.made_in(SOURCE, "snapshot").is_empty() && rig.made_in(SOURCE, "reencrypt").is_empty());
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
    let rig = Rig::with(plan(FANOUT), |w| w.faults.key_inaccessible_to = Some(vault.clone()));
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
    assert!(!rig.made_in(SOURCE, "snapshot").is_empty());
    let dr_before = (rig.made_in(DR, "copy"), rig.made_in(DR, "volume"));
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
    assert_eq!((rig.made_in(DR, "copy"), rig.made_in(DR, "volume")), dr_before, "the recovery account is untouched");
    assert_eq!(rig.made_in(VAULT, "copy").len(), 3, "the errored copies were deleted, then made anew");
    assert_eq!(rig.made_in(VAULT, "volume").len(), 3);
    assert!(rig.made_in(SOURCE, "snapshot").is_empty() && rig.made_in(SOURCE, "reencrypt").is_empty());
}

/// Halts the run right after call `k` took effect, then resumes it to the end.
async fn crash_after(text: &str, k: u64) -> (Rig, RunReport, bool) {
    let rig = Rig::with(plan(text), |w| w.faults.halt_after_calls = Some(k));
    let (_tx, rx) = watch::channel(false);
    tokio::select! {
        r = run(rig.cfg(), rig.env(&rig.sim), rx) => {
            let r = r.unwrap();
            return (rig, r, false);
        }
        _ = rig.sim.halted() => {}
    }
    let resumed = rig.sim.resume_after_halt();
    let (_tx, rx) = watch::channel(false);
    let r = run(rig.cfg(), rig.env(&resumed), rx).await.unwrap_or_else(|e| panic!("resume after {k} calls: {e}"));
    (rig, r, true)
}

#[tokio::test]
async fn crash_at_every_call_of_a_fan_out_run_then_resume_leaves_one_copy_per_volume_and_target() {
    let clean = Rig::with(plan(FANOUT), |_| {});
    assert_eq!(clean.run().await.status, RunStatus::Succeeded);
    let total = clean.sim.with_world(|w| w.total_calls);
    let mut crashed = 0;
    for k in 1..=total {
        let (rig, r, halted) = crash_after(FANOUT, k).await;
        crashed += u64::from(halted);
        assert_eq!(r.status, RunStatus::Succeeded, "after a crash at call {k}: {r:#?}");
        assert!(r.volumes.iter().all(|v| v.copies.iter().all(|c| c.status == "succeeded")), "call {k}: {r:#?}");
        for account in [DR, VAULT] {
            assert_eq!(rig.made_in(account, "copy").len(), 3, "copies in {account} after a crash at call {k}");
            assert_eq!(rig.made_in(account, "volume").len(), 3, "volumes in {account} after a crash at call {k}");
        }
        assert!(
            rig.made_in(SOURCE, "snapshot").is_empty() && rig.made_in(SOURCE, "reencrypt").is_empty(),
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
    let clean = Rig::with(plan(FANOUT), |_| {});
    assert_eq!(clean.run().await.status, RunStatus::Succeeded);
    let total = clean.sim.with_world(|w| w.total_calls);
    for k in 1..total {
        let rig = Rig::with(plan(FANOUT), |w| w.faults.halt_after_calls = Some(k));
        let (_tx, rx) = watch::channel(false);
        tokio::select! {
            _ = run(rig.cfg(), rig.env(&rig.sim), rx) => panic!("the run ended before call {k} of {total}"),
            _ = rig.sim.halted() => {}
        }
        // The state is lost with the crash, as on an ephemeral CI runner.
        let fresh_dir = tempfile::tempdir().unwrap();
        let rig = Rig { store: Store::new(fresh_dir.path()), _dir: fresh_dir, ..rig };
        let resumed = rig.sim.resume_after_halt();
        let (_tx, rx) = watch::channel(false);
        let r = run(rig.cfg(), rig.env(&resumed), rx).await.unwrap_or_else(|e| panic!("rerun after {k} calls: {e}"));
        assert_eq!(r.status, RunStatus::Succeeded, "after a crash at call {k}: {r:#?}");
        for account in [DR, VAULT] {
            assert_eq!(rig.made_in(account, "copy").len(), 3, "copies in {account} after call {k}");
            assert_eq!(rig.made_in(account, "volume").len(), 3, "volumes in {account} after call {k}");
        }
        assert!(
            rig.made_in(SOURCE, "snapshot").is_empty() && rig.made_in(SOURCE, "reencrypt").is_empty(),
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
    let text = format!("{FANOUT}{RECURRING}");
    let vault = AccountId::parse(VAULT).unwrap();
    let rig = Rig::with(plan(&text), |_| {});
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
    assert_eq!(rig.made_in(DR, "copy").len(), 6, "a second round of copies in the recovery account");

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
    assert_eq!(rig.made_in(DR, "copy").len(), 6);
    assert_eq!(rig.made_in(VAULT, "copy").len(), 6, "keep: 2 per volume in the vault too");
    assert!(rig.made_in(SOURCE, "snapshot").is_empty() && rig.made_in(SOURCE, "reencrypt").is_empty());
}

#[tokio::test]
async fn cleanup_of_a_fan_out_run_stops_pending_copies_in_every_target_and_revokes_both_statements() {
    let text = format!("{FANOUT}options:\n  timeouts: {{copy: 30m}}\n");
    let rig = Rig::with(plan(&text), |w| w.timing.copy_base_ms = 7_200_000);
    let first = rig.run().await;
    assert_eq!(first.status, RunStatus::Failed);
    assert_eq!(rig.made_in(DR, "copy").len() + rig.made_in(VAULT, "copy").len(), 6);
    let env = rig.env(&rig.sim);
    let summary = snapferry::exec::cleanup(&env.store, env.cloud.as_ref(), env.clock.as_ref(), &first.run_id, None)
        .await
        .unwrap();
    assert!(summary.errors.is_empty(), "{summary:#?}");
    assert_eq!(summary.stopped_copies.len(), 6, "{summary:#?}");
    assert_eq!(summary.grant, format!("{DR}: revoked; {VAULT}: revoked"));
    for account in [DR, VAULT, SOURCE] {
        assert!(rig.made_in(account, "copy").is_empty(), "copies left in {account}");
    }
    assert!(rig.made_in(SOURCE, "snapshot").is_empty() && rig.made_in(SOURCE, "reencrypt").is_empty());
    rig.sim.with_world(|w| {
        for k in w.keys.iter().filter(|k| k.account.as_str() == SOURCE) {
            assert!(!k.policy.contains("SnapferryShare-fan-test"), "{}", k.policy);
        }
    });
    assert!(env.store.load(&first.run_id).await.unwrap().meta.cleaned_up);
}
