//! The engine and runner end to end against the simulated AWS, in process: the
//! example plans, injected faults, failures that name their cause, resume after a
//! fix, the copy limit, and crash safety at every step boundary.

use std::sync::Arc;

use snapferry::checkpoint::memory::MemoryObjects;
use snapferry::checkpoint::{LeaseOptions, Store};
use snapferry::cloud::sim::{SimCloud, World, seed_from_plan};
use snapferry::exec::{Env, RunConfig, RunError, RunReport, run};
use snapferry::plan::{Plan, parse};
use tokio::sync::watch;

const CROSS: &str = r#"
version: 1
name: crash-test
source:
  region: us-east-1
  account: "111111111111"
  kms_key: alias/share
target:
  region: eu-west-1
  account: "222222222222"
  role_arn: arn:aws:iam::222222222222:role/dr
  kms_key: alias/dr
  availability_zone: eu-west-1b
volumes:
  - id: vol-00000000000000001
  - id: vol-00000000000000002
  - id: vol-00000000000000003
options:
  tags: {Owner: sre}
"#;

fn plan(text: &str) -> Plan {
    parse("test.yaml", text).unwrap_or_else(|e| panic!("{e}"))
}

fn plan_file(path: &str) -> Plan {
    let text = std::fs::read_to_string(format!("{}/{path}", env!("CARGO_MANIFEST_DIR"))).unwrap();
    parse(path, &text).unwrap_or_else(|e| panic!("{e}"))
}

/// Where a rig keeps its state: a local dir, or the S3 layout (lease, conditional
/// writes) over objects in memory with S3's conditional semantics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    Local,
    Remote,
}

struct Rig {
    plan: Plan,
    sim: SimCloud,
    dir: tempfile::TempDir,
    store: Store,
    objects: Arc<MemoryObjects>,
}

impl Rig {
    fn new(plan: Plan) -> Self {
        Self::with(plan, |_| {})
    }

    /// On the local state dir, or with `SNAPFERRY_TEST_STATE=s3` on the S3 layout
    /// (scripts/test runs this module both ways).
    fn with(plan: Plan, tweak: impl FnOnce(&mut World)) -> Self {
        let backend = match std::env::var("SNAPFERRY_TEST_STATE").as_deref() {
            Ok("s3") => Backend::Remote,
            _ => Backend::Local,
        };
        Self::on(backend, plan, tweak)
    }

    fn on(backend: Backend, plan: Plan, tweak: impl FnOnce(&mut World)) -> Self {
        let (mut world, sides) = seed_from_plan(&plan, 1_800_000_000_000);
        tweak(&mut world);
        let dir = tempfile::tempdir().unwrap();
        let objects = Arc::new(MemoryObjects::new());
        let store = match backend {
            Backend::Local => Store::new(dir.path()),
            Backend::Remote => Store::remote(objects.clone(), LeaseOptions::default()),
        };
        Rig { plan, sim: SimCloud::new(world, sides), dir, store, objects }
    }

    fn env(&self, sim: &SimCloud) -> Env {
        Env { cloud: Arc::new(sim.clone()), clock: Arc::new(sim.clone()), store: self.store.clone() }
    }

    fn cfg(&self) -> RunConfig {
        RunConfig {
            plan: self.plan.clone(),
            plan_file: "test.yaml".into(),
            run_id: None,
            simulated: true,
            probe_permissions: true,
            progress: None,
        }
    }

    async fn run(&self) -> Result<RunReport, RunError> {
        let (_tx, rx) = watch::channel(false);
        run(self.cfg(), self.env(&self.sim), rx).await
    }

    /// Snapshots and volumes in the world that this plan's runs made, by step tag.
    fn made(&self, step: &str) -> usize {
        self.sim.with_world(|w| {
            let snaps =
                w.snapshots.values().filter(|s| s.tags.get("snapferry:step").map(String::as_str) == Some(step)).count();
            let vols =
                w.volumes.values().filter(|v| v.tags.get("snapferry:step").map(String::as_str) == Some(step)).count();
            snaps + vols
        })
    }
}

fn assert_all_succeeded(r: &RunReport) {
    assert_eq!(r.status, "succeeded", "{r:#?}");
    for v in &r.volumes {
        assert_eq!(v.status, "succeeded", "{v:#?}");
        assert!(v.target_snapshot.is_some());
    }
}

#[tokio::test]
async fn cross_account_example_plan_copies_every_volume_once() {
    example_plan_copies_every_volume_once(Backend::Local).await;
}

#[tokio::test]
async fn cross_account_example_plan_copies_every_volume_once_with_the_state_in_s3() {
    example_plan_copies_every_volume_once(Backend::Remote).await;
}

async fn example_plan_copies_every_volume_once(backend: Backend) {
    let rig = Rig::on(backend, plan_file("plans/example.yaml"), |_| {});
    let r = rig.run().await.unwrap();
    assert_all_succeeded(&r);
    let n = r.volumes.len();
    assert_eq!(rig.made("copy"), n);
    assert_eq!(rig.made("volume"), n);
    // cleanup: true leaves no intermediate snapshot on the source side.
    assert_eq!(rig.made("snapshot"), 0);
    assert_eq!(rig.made("reencrypt"), 0);
    rig.sim.with_world(|w| {
        for v in w.volumes.values().filter(|v| v.tags.contains_key("snapferry:step")) {
            assert_eq!(v.owner.as_str(), "222222222222");
            assert_eq!(v.region.as_str(), "eu-west-1");
            assert_eq!(v.tags["snapferry:plan"], "prod-db-dr");
            assert_eq!(v.tags["snapferry:run"], r.run_id);
            assert_eq!(v.tags["Owner"], "sre");
            assert!(v.tags.contains_key("Name"), "the volume's own tags: {:?}", v.tags);
            let key = v.kms_key.as_ref().unwrap();
            assert!(w.keys.iter().any(|k| &k.arn == key && k.aliases.iter().any(|a| a == "dr-ebs")));
        }
        // The grant statement is in the source key's policy, once.
        let k = w.keys.iter().find(|k| k.aliases.iter().any(|a| a == "prod-ebs-share")).unwrap();
        assert_eq!(k.policy.matches("SnapferryShare-prod-db-dr-222222222222").count(), 1, "{}", k.policy);
    });
}

#[tokio::test]
async fn same_account_plan_shares_nothing_and_grants_nothing() {
    let rig = Rig::new(plan_file("plans/same-account.yaml"));
    let r = rig.run().await.unwrap();
    assert_all_succeeded(&r);
    rig.sim.with_world(|w| {
        assert_eq!(w.calls.get("ec2:ModifySnapshotAttribute"), None);
        assert_eq!(w.calls.get("kms:PutKeyPolicy"), None);
        assert!(w.snapshots.values().all(|s| s.shared_with.is_empty()));
    });
}

#[tokio::test]
async fn fleet_plan_with_selector_stops_at_target_snapshots() {
    let rig = Rig::new(plan_file("plans/fleet.yaml"));
    let r = rig.run().await.unwrap();
    assert_all_succeeded(&r);
    assert!(r.volumes.len() >= 4, "selector volumes and the id: {}", r.volumes.len());
    assert!(r.volumes.iter().all(|v| v.target_volume.is_none()));
    assert_eq!(rig.made("volume"), 0);
    assert_eq!(rig.made("copy"), r.volumes.len());
}

#[tokio::test]
async fn a_quarter_of_calls_throttled_still_succeeds() {
    let rig = Rig::with(plan(CROSS), |w| w.faults.throttle_rate = 0.25);
    let r = rig.run().await.unwrap();
    assert_all_succeeded(&r);
    assert_eq!(rig.made("copy"), 3);
    assert_eq!(rig.made("volume"), 3);
}

#[tokio::test]
async fn snapshots_invisible_right_after_creation_still_succeed() {
    let rig = Rig::with(plan(CROSS), |w| w.faults.invisible_ms = 40_000);
    let r = rig.run().await.unwrap();
    assert_all_succeeded(&r);
    assert_eq!(rig.made("copy"), 3);
}

#[tokio::test]
async fn ungranted_key_fails_that_volume_with_the_state_message_and_others_finish() {
    let rig = Rig::with(plan(CROSS), |w| {
        w.faults.key_inaccessible_for = Some("vol-00000000000000002".parse().unwrap());
    });
    let r = rig.run().await.unwrap();
    assert_eq!(r.status, "failed");
    let bad = r.volumes.iter().find(|v| v.source_volume == "vol-00000000000000002").unwrap();
    assert_eq!(bad.status, "failed");
    let msg = bad.error.as_deref().unwrap();
    assert!(msg.contains("Given key ID is not accessible"), "{msg}");
    assert!(bad.hint.as_deref().unwrap().contains("key policy"));
    for v in r.volumes.iter().filter(|v| v.source_volume != "vol-00000000000000002") {
        assert_eq!(v.status, "succeeded", "{v:#?}");
    }

    // Once the cause is gone, the same command finishes the job without duplicates.
    rig.sim.with_world(|w| w.faults.key_inaccessible_for = None);
    let again = rig.run().await.unwrap();
    assert_all_succeeded(&again);
    assert_eq!(again.run_id, r.run_id, "the failed run is resumed, not restarted");
    assert_eq!(rig.made("copy"), 3, "the copy in error was deleted");
    assert_eq!(rig.made("volume"), 3);
}

#[tokio::test]
async fn missing_volume_and_key_stop_in_preflight_and_change_nothing() {
    let rig = Rig::with(plan(CROSS), |w| {
        w.keys.retain(|k| !k.aliases.iter().any(|a| a == "dr"));
        w.volumes.remove("vol-00000000000000003");
    });
    let err = rig.run().await.unwrap_err();
    assert_eq!(err.exit_code(), 2);
    let text = err.to_string();
    assert!(text.contains("vol-00000000000000003"), "{text}");
    assert!(text.contains("target key alias/dr: does not exist"), "{text}");
    rig.sim.with_world(|w| {
        let mutating: Vec<_> = w
            .calls
            .keys()
            .filter(|k| ["Create", "Copy", "Put", "Modify", "Delete"].iter().any(|m| k.contains(m)))
            .collect();
        assert!(mutating.is_empty(), "{mutating:?}");
    });
}

#[tokio::test]
async fn a_second_run_of_the_plan_is_refused_while_the_first_holds_the_lock() {
    for backend in [Backend::Local, Backend::Remote] {
        let rig = Rig::on(backend, plan(CROSS), |_| {});
        // Another process: its own store over the same state.
        let other = match backend {
            Backend::Local => Store::new(rig.dir.path()),
            Backend::Remote => Store::remote(rig.objects.clone(), LeaseOptions::default()),
        };
        let _held = other.lock_plan("crash-test").await.unwrap();
        let keys = rig.objects.keys();
        let err = rig.run().await.unwrap_err();
        assert_eq!(err.exit_code(), 3, "{err}");
        assert_eq!(rig.objects.keys(), keys, "a refused run writes nothing");
        rig.sim.with_world(|w| assert!(w.snapshots.is_empty()));
    }
}

#[tokio::test]
async fn copies_stay_under_the_per_region_limit() {
    let mut text = String::from(CROSS.split("volumes:").next().unwrap());
    text.push_str("volumes:\n");
    for i in 1..=9 {
        text.push_str(&format!("  - id: vol-0000000000000010{i}\n"));
    }
    text.push_str("options:\n  max_concurrent_copies: 2\n");
    let rig = Rig::new(plan(&text));
    let r = rig.run().await.unwrap();
    assert_all_succeeded(&r);
    rig.sim.with_world(|w| {
        for (dest, peak) in &w.peak_copies {
            assert!(*peak <= 2, "{dest}: {peak} copies at once");
        }
        assert!(w.peak_copies.values().any(|p| *p == 2), "{:?}", w.peak_copies);
    });
}

#[tokio::test]
async fn a_wait_past_its_timeout_fails_the_volume() {
    let text = format!("{CROSS}  timeouts: {{volume: 10s}}\n");
    let rig = Rig::with(plan(&text), |w| w.timing.volume_base_ms = 3_600_000);
    let r = rig.run().await.unwrap();
    assert_eq!(r.status, "failed");
    for v in &r.volumes {
        assert_eq!(v.step, "wait-volume");
        assert!(v.error.as_deref().unwrap().contains("gave up after waiting 10s"), "{v:#?}");
    }
}

/// Runs the plan, halting (as a crash would) right after the k-th call took effect
/// and before its outcome was recorded; then resumes to the end.
async fn crash_after(backend: Backend, text: &str, k: u64) -> (Rig, RunReport) {
    let rig = Rig::on(backend, plan(text), |w| w.faults.halt_after_calls = Some(k));
    let (_tx, rx) = watch::channel(false);
    let first = run(rig.cfg(), rig.env(&rig.sim), rx);
    tokio::select! {
        r = first => {
            // Fewer calls than k: the run simply finished.
            let r = r.unwrap();
            return (rig, r);
        }
        _ = rig.sim.halted() => {}
    }
    let resumed = rig.sim.resume_after_halt();
    let (_tx, rx) = watch::channel(false);
    let r = run(rig.cfg(), rig.env(&resumed), rx).await.unwrap_or_else(|e| panic!("resume after {k} calls: {e}"));
    (rig, r)
}

async fn calls_of_a_clean_run(text: &str) -> u64 {
    let rig = Rig::new(plan(text));
    assert_all_succeeded(&rig.run().await.unwrap());
    rig.sim.with_world(|w| w.total_calls)
}

async fn crash_at_every_call(text: &str, volumes: usize, create_volume: bool) {
    crash_at_every_call_on(Backend::Local, text, volumes, create_volume).await;
    crash_at_every_call_on(Backend::Remote, text, volumes, create_volume).await;
}

async fn crash_at_every_call_on(backend: Backend, text: &str, volumes: usize, create_volume: bool) {
    let total = calls_of_a_clean_run(text).await;
    assert!(total > 10);
    for k in 1..=total {
        let (rig, r) = crash_after(backend, text, k).await;
        assert_all_succeeded(&r);
        assert_eq!(r.volumes.len(), volumes);
        assert_eq!(rig.made("copy"), volumes, "copies after a crash at call {k}");
        assert_eq!(rig.made("volume"), if create_volume { volumes } else { 0 }, "volumes after a crash at call {k}");
        assert_eq!(rig.made("snapshot") + rig.made("reencrypt"), 0, "orphans on the source side after call {k}");
        rig.sim.with_world(|w| {
            let target_volumes = w.volumes.values().filter(|v| v.owner.as_str() != "111111111111").count();
            assert_eq!(target_volumes, if create_volume { volumes } else { 0 }, "untagged volumes after call {k}");
            let untagged = w.snapshots.values().filter(|s| !s.tags.contains_key("snapferry:step")).count();
            assert_eq!(untagged, 0, "untagged snapshots after call {k}");
        });
    }
}

#[tokio::test]
async fn crash_at_every_call_cross_account_then_resume_leaves_one_of_each() {
    crash_at_every_call(CROSS, 3, true).await;
}

#[tokio::test]
async fn crash_at_every_call_with_invisible_snapshots_and_throttling() {
    // The hardest case for resume: a lookup right after the crash may not see the
    // snapshot the lost call created.
    let text = CROSS.replace("  - id: vol-00000000000000003\n", "");
    let total = calls_of_a_clean_run(&text).await;
    for (k, backend) in (1..=total).flat_map(|k| [(k, Backend::Local), (k, Backend::Remote)]) {
        let rig = Rig::on(backend, plan(&text), |w| {
            w.faults.halt_after_calls = Some(k);
            w.faults.invisible_ms = 8_000;
            w.faults.throttle_rate = 0.1;
        });
        let (_tx, rx) = watch::channel(false);
        tokio::select! {
            r = run(rig.cfg(), rig.env(&rig.sim), rx) => { assert_all_succeeded(&r.unwrap()); continue; }
            _ = rig.sim.halted() => {}
        }
        let resumed = rig.sim.resume_after_halt();
        let (_tx, rx) = watch::channel(false);
        let r = run(rig.cfg(), rig.env(&resumed), rx).await.unwrap();
        assert_all_succeeded(&r);
        assert_eq!(rig.made("copy"), 2, "copies after a crash at call {k}");
        assert_eq!(rig.made("volume"), 2, "volumes after a crash at call {k}");
        assert_eq!(rig.made("snapshot") + rig.made("reencrypt"), 0, "orphans after call {k}");
    }
}

#[tokio::test]
async fn crash_at_every_call_same_account_without_volumes() {
    let text = CROSS
        .replace("  account: \"222222222222\"\n  role_arn: arn:aws:iam::222222222222:role/dr\n", "")
        .replace("options:\n", "options:\n  create_volume: false\n");
    crash_at_every_call(&text, 3, false).await;
}

#[tokio::test]
async fn status_of_runs_is_kept_in_the_state_dir() {
    for backend in [Backend::Local, Backend::Remote] {
        let rig = Rig::on(backend, plan(CROSS), |_| {});
        let r = rig.run().await.unwrap();
        let store = rig.store.clone();
        let rec = store.load(&r.run_id).await.unwrap();
        assert_eq!(rec.meta.status.as_str(), "succeeded");
        assert!(rec.meta.grant.as_ref().unwrap().added);
        // A new run of a finished plan starts a new run id.
        let r2 = rig.run().await.unwrap();
        assert_ne!(r2.run_id, r.run_id);
        assert_eq!(store.list().await.unwrap().len(), 2);
        // Its grant was already there.
        assert!(!store.load(&r2.run_id).await.unwrap().meta.grant.unwrap().added);
    }
}

#[tokio::test]
async fn retention_keeps_the_newest_copies_per_volume_and_only_this_plans() {
    let text = format!("{CROSS}  keep: 2\n");
    let rig = Rig::new(plan(&text));
    // Something of another plan in the target region, tagged alike but for the plan.
    rig.sim.with_world(|w| {
        let az = "eu-west-1b".parse().unwrap();
        let tags = std::collections::BTreeMap::from([
            ("snapferry:plan".to_owned(), "other-plan".to_owned()),
            ("snapferry:step".to_owned(), "volume".to_owned()),
            ("snapferry:source-volume".to_owned(), "vol-00000000000000001".to_owned()),
        ]);
        let id = w.add_volume(None, &"222222222222".parse().unwrap(), &az, 8, None, tags);
        w.volumes.get_mut(id.as_str()).unwrap().attachments = 0;
    });
    let mut runs = vec![];
    for _ in 0..4 {
        let r = rig.run().await.unwrap();
        assert_all_succeeded(&r);
        runs.push(r);
    }
    // Newest two copies and volumes per source volume; the other plan's volume stays.
    assert_eq!(rig.made("copy"), 3 * 2);
    assert_eq!(rig.made("volume"), 3 * 2 + 1);
    let last = runs.last().unwrap();
    let pruned = last.retention.as_ref().unwrap();
    assert_eq!(pruned.snapshots.len(), 3);
    rig.sim.with_world(|w| {
        for v in &last.volumes {
            assert!(w.snapshots.contains_key(v.target_snapshot.as_deref().unwrap()));
            assert!(w.volumes.contains_key(v.target_volume.as_deref().unwrap()));
        }
        for v in &runs[0].volumes {
            assert!(!w.snapshots.contains_key(v.target_snapshot.as_deref().unwrap()), "oldest copies pruned");
        }
    });
}

#[tokio::test]
async fn missing_permissions_are_all_reported_by_dry_run_probes_before_any_change() {
    let rig = Rig::with(plan(CROSS), |w| {
        w.faults.denied = ["ec2:CreateSnapshot".to_owned(), "ec2:CreateVolume".to_owned()].into();
    });
    let err = rig.run().await.unwrap_err();
    assert_eq!(err.exit_code(), 2);
    let text = err.to_string();
    assert!(text.contains("ec2:CreateSnapshot") && text.contains("ec2:CreateVolume"), "{text}");
    assert!(text.contains("the target role may not call ec2:CreateVolume in eu-west-1"), "{text}");
    rig.sim.with_world(|w| {
        assert!(w.snapshots.is_empty());
        assert!(!w.calls.contains_key("ec2:CreateSnapshot"));
    });
}

#[tokio::test]
async fn a_copy_that_cannot_see_the_share_yet_is_retried() {
    let rig = Rig::with(plan(CROSS), |w| w.faults.share_lag_ms = 12_000);
    let r = rig.run().await.unwrap();
    assert_all_succeeded(&r);
    assert_eq!(rig.made("copy"), 3);
    rig.sim.with_world(|w| assert!(w.calls["ec2:CopySnapshot"] > 3 + 2, "{:?}", w.calls));
}

#[tokio::test]
async fn copies_queue_when_the_account_copy_quota_is_taken_by_others() {
    let mut text = String::from(CROSS.split("volumes:").next().unwrap());
    text.push_str("volumes:\n");
    for i in 1..=8 {
        text.push_str(&format!("  - id: vol-0000000000000020{i}\n"));
    }
    // The plan allows 20, but only 2 slots are free in the account.
    let rig = Rig::with(plan(&text), |w| w.faults.copy_quota = Some(2));
    let r = rig.run().await.unwrap();
    assert_all_succeeded(&r);
    assert_eq!(rig.made("copy"), 8);
    rig.sim.with_world(|w| {
        assert!(w.peak_copies.values().all(|p| *p <= 2), "{:?}", w.peak_copies);
        // Queued, not hammered: a few refusals, not one per second of waiting.
        let copies = w.calls["ec2:CopySnapshot"];
        assert!(copies < 8 + 6 + 20, "{copies} CopySnapshot calls");
    });
}
