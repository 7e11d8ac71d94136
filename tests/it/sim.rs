//! The engine and runner end to end against the simulated AWS, in process: the
//! example plans, injected faults, failures that name their cause, resume after a
//! fix, the copy limit, and crash safety at every step boundary.

use snapferry::checkpoint::{LeaseOptions, RunStatus, Store};
use snapferry::cloud::sim::World;
use snapferry::exec::{RunReport, run};
use snapferry::plan::{Plan, parse};
use tokio::sync::watch;

use crate::support::plans;
use crate::support::rig::{
    Backend, Rig, assert_all_succeeded, calls_of_a_clean_run, crash_and_lose_state_after, crash_and_resume, plan,
};

/// One target in another account and region, three volumes: the plan most tests run.
pub(super) fn cross() -> String {
    plans::cross("crash-test")
}

fn plan_file(path: &str) -> Plan {
    let text = std::fs::read_to_string(format!("{}/{path}", env!("CARGO_MANIFEST_DIR"))).unwrap();
    parse(path, &text).unwrap_or_else(|e| panic!("{e}"))
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
    let r = rig.run().await;
    assert_all_succeeded(&r);
    let n = r.volumes.len();
    assert_eq!(rig.count("copy"), n);
    assert_eq!(rig.count("volume"), n);
    // cleanup: true leaves no intermediate snapshot on the source side.
    assert_eq!(rig.count("snapshot"), 0);
    assert_eq!(rig.count("reencrypt"), 0);
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
    let rig = Rig::on(Backend::from_env(), plan_file("plans/same-account.yaml"), |_| {});
    let r = rig.run().await;
    assert_all_succeeded(&r);
    rig.sim.with_world(|w| {
        assert_eq!(w.calls.get("ec2:ModifySnapshotAttribute"), None);
        assert_eq!(w.calls.get("kms:PutKeyPolicy"), None);
        assert!(w.snapshots.values().all(|s| s.shared_with.is_empty()));
    });
}

#[tokio::test]
async fn fleet_plan_with_selector_stops_at_target_snapshots() {
    let rig = Rig::on(Backend::from_env(), plan_file("plans/fleet.yaml"), |_| {});
    let r = rig.run().await;
    assert_all_succeeded(&r);
    assert!(r.volumes.len() >= 4, "selector volumes and the id: {}", r.volumes.len());
    assert!(r.volumes.iter().all(|v| v.target_volume.is_none()));
    assert_eq!(rig.count("volume"), 0);
    assert_eq!(rig.count("copy"), r.volumes.len());
}

#[tokio::test]
async fn a_quarter_of_calls_throttled_still_succeeds() {
    let rig = Rig::with(&cross(), |w| w.faults.throttle_rate = 0.25);
    let r = rig.run().await;
    assert_all_succeeded(&r);
    assert_eq!(rig.count("copy"), 3);
    assert_eq!(rig.count("volume"), 3);
}

#[tokio::test]
async fn snapshots_invisible_right_after_creation_still_succeed() {
    let rig = Rig::with(&cross(), |w| w.faults.invisible_ms = 40_000);
    let r = rig.run().await;
    assert_all_succeeded(&r);
    assert_eq!(rig.count("copy"), 3);
}

#[tokio::test]
async fn ungranted_key_fails_that_volume_with_the_state_message_and_others_finish() {
    let rig = Rig::with(&cross(), |w| {
        w.faults.key_inaccessible_for = Some("vol-00000000000000002".parse().unwrap());
    });
    let r = rig.run().await;
    assert_eq!(r.status, RunStatus::Failed);
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
    let again = rig.run().await;
    assert_all_succeeded(&again);
    assert_eq!(again.run_id, r.run_id, "the failed run is resumed, not restarted");
    assert_eq!(rig.count("copy"), 3, "the copy in error was deleted");
    assert_eq!(rig.count("volume"), 3);
}

#[tokio::test]
async fn missing_volume_and_key_stop_in_preflight_and_change_nothing() {
    let rig = Rig::with(&cross(), |w| {
        w.keys.retain(|k| !k.aliases.iter().any(|a| a == "dr"));
        w.volumes.remove("vol-00000000000000003");
    });
    let err = rig.try_run().await.unwrap_err();
    assert_eq!(snapferry::cli::exit::of_run_error(&err), 2);
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
        let rig = Rig::on(backend, plan(&cross()), |_| {});
        // Another process: its own store over the same state.
        let other = match backend {
            Backend::Local => Store::new(rig.dir.path()),
            Backend::Remote => Store::remote(rig.objects.clone(), LeaseOptions::default()),
        };
        let _held = other.lock_plan("crash-test").await.unwrap();
        let keys = rig.objects.keys();
        let err = rig.try_run().await.unwrap_err();
        assert_eq!(snapferry::cli::exit::of_run_error(&err), 3, "{err}");
        assert_eq!(rig.objects.keys(), keys, "a refused run writes nothing");
        rig.sim.with_world(|w| assert!(w.snapshots.is_empty()));
    }
}

#[tokio::test]
async fn copies_stay_under_the_per_region_limit() {
    let mut text = String::from(cross().split("volumes:").next().unwrap());
    text.push_str("volumes:\n");
    for i in 1..=9 {
        text.push_str(&format!("  - id: vol-0000000000000010{i}\n"));
    }
    text.push_str("options:\n  max_concurrent_copies: 2\n");
    let rig = Rig::new(&text);
    let r = rig.run().await;
    assert_all_succeeded(&r);
    rig.sim.with_world(|w| {
        for (dest, peak) in &w.peak_copies {
            assert!(*peak <= 2, "{dest}: {peak} copies at once");
        }
        assert!(w.peak_copies.values().any(|p| *p == 2), "{:?}", w.peak_copies);
    });
}

/// For every wait step: a wait past its timeout ends the invocation's wait, not the
/// resource. A rerun while AWS is still working polls, stops waiting again, and makes
/// and deletes nothing; a rerun after AWS finished carries on to success, with exactly
/// the calls of a run that never timed out.
#[tokio::test]
async fn a_wait_past_its_timeout_keeps_the_resource_and_a_rerun_carries_on() {
    const HOUR: i64 = 3_600_000;
    type Slow = fn(&mut World);
    let cases: [(&str, &str, Slow); 4] = [
        ("wait-snapshot", "snapshot: 30m", |w| w.timing.snapshot_base_ms = 2 * HOUR),
        // The seeded volumes are large: their snapshots take over two hours.
        ("wait-reencrypt", "snapshot: 3h", |w| w.timing.reencrypt_extra_ms = 6 * HOUR),
        ("wait-copy", "copy: 30m", |w| w.timing.copy_base_ms = 2 * HOUR),
        ("wait-volume", "volume: 30m", |w| w.timing.volume_base_ms = 2 * HOUR),
    ];
    let clean = Rig::new(&cross());
    assert_all_succeeded(&clean.run().await);
    let clean_calls = clean.mutating();
    for (step, timeout, slow) in cases {
        let text = format!("{}  timeouts: {{{timeout}}}\n", cross());
        let rig = Rig::with(&text, slow);
        let first = rig.run().await;
        assert_eq!(first.status, RunStatus::Failed, "{step}");
        let stopped: Vec<_> = first.volumes.iter().filter(|v| v.status == "failed").collect();
        assert!(!stopped.is_empty(), "{step}: {first:#?}");
        for v in &stopped {
            assert_eq!(v.step, step);
            let e = v.error.as_deref().unwrap();
            assert!(e.contains("stopped waiting") && e.contains("left to finish in AWS"), "{e}");
            assert!(v.hint.as_deref().unwrap().contains("run the same command again to keep waiting"));
        }
        let after_first = rig.mutating();

        // AWS has not finished: the rerun looks, stops waiting again, changes nothing.
        let again = rig.run().await;
        assert_eq!(again.status, RunStatus::Failed, "{step}");
        assert_eq!(again.run_id, first.run_id);
        assert_eq!(rig.mutating(), after_first, "{step}: a rerun while AWS works made or deleted something");

        // AWS finished meanwhile: the rerun carries on from the same resources.
        // Later steps take their usual time.
        rig.sim.with_world(|w| {
            w.now_ms += 12 * HOUR;
            w.timing = Default::default();
        });
        let done = rig.run().await;
        assert_all_succeeded(&done);
        assert_eq!(done.run_id, first.run_id);
        assert_eq!(rig.mutating(), clean_calls, "{step}: the calls differ from a run that never timed out");
        assert_eq!(rig.calls("ec2:DeleteVolume"), 0);
        assert_eq!(rig.count("copy"), 3);
        assert_eq!(rig.count("volume"), 3);
    }
}

/// A call whose answer was lost stays unknown across the volume's failure and the
/// next invocation: it is looked up, found, and never issued a second time.
#[tokio::test]
async fn a_failed_volume_with_an_unknown_outcome_is_looked_up_before_any_reissue() {
    let clean = Rig::new(&cross());
    assert_all_succeeded(&clean.run().await);
    for action in ["ec2:CreateSnapshot", "ec2:CopySnapshot"] {
        let rig = Rig::new(&cross());
        // An invocation stopped at once leaves the run in the state, every volume at
        // its first step.
        let (_tx, stop_now) = watch::channel(true);
        let stopped = run(rig.cfg(), rig.env(), stop_now).await.unwrap();
        assert_eq!(stopped.status, RunStatus::Interrupted);
        // Answers of `action` are lost and lookups refused: the volumes fail with the
        // outcome unknown.
        rig.sim.with_world(|w| {
            w.faults.lose_answers_of.insert(action.to_owned());
            w.faults.lookups_fail = true;
        });
        let r = rig.try_run().await;
        let first = match r {
            Ok(r) => r,
            Err(e) => panic!("{action}: {e}"),
        };
        assert_eq!(first.status, RunStatus::Failed, "{action}");
        let issued = rig.calls(action);
        rig.sim.with_world(|w| {
            w.faults.lose_answers_of.clear();
            w.faults.lookups_fail = false;
        });
        let done = rig.run().await;
        assert_all_succeeded(&done);
        assert!(issued > 0, "{action} was never issued");
        // Exactly the calls of a run whose answers all arrived.
        assert_eq!(rig.calls(action), clean.calls(action), "{action} was issued again without looking");
        assert_eq!(rig.count("copy"), 3, "{action}");
        assert_eq!(rig.count("snapshot") + rig.count("reencrypt"), 0, "{action}: orphans");
    }
}

/// Expired credentials stop the invocation and fail no volume; the next invocation,
/// with fresh credentials, carries on with nothing made twice.
#[tokio::test]
async fn expired_credentials_stop_the_run_without_failing_any_volume() {
    let total = calls_of_a_clean_run(&cross()).await;
    for k in [total / 4, total / 2, total * 3 / 4] {
        let rig = Rig::with(&cross(), |w| w.faults.credentials_expire_after_calls = Some(k));
        let e = rig.try_run().await.unwrap_err();
        assert_eq!(snapferry::cli::exit::of_run_error(&e), 1);
        let text = e.to_string();
        assert!(text.contains("refused the credentials") && text.contains("run the same command again"), "{text}");
        let record = rig.store.latest_of_plan("crash-test").await.unwrap().unwrap();
        assert_eq!(record.meta.status.as_str(), "interrupted");
        assert!(record.volumes.iter().all(|v| v.failure.is_none()), "after {k} calls: {:#?}", record.volumes);
        rig.sim.with_world(|w| w.faults.credentials_expire_after_calls = None);
        let done = rig.run().await;
        assert_all_succeeded(&done);
        assert_eq!(done.run_id, record.meta.run_id);
        assert_eq!(rig.count("copy"), 3, "after {k} calls");
        assert_eq!(rig.count("volume"), 3);
        assert_eq!(rig.count("snapshot") + rig.count("reencrypt"), 0);
    }
}

/// A half-done run whose plan now moves its resources is refused (exit 2) and
/// changes nothing; a harmless edit applies.
#[tokio::test]
async fn a_resumed_run_whose_plan_moved_its_resources_is_refused() {
    let text = format!("{}  timeouts: {{copy: 30m}}\n", cross());
    let rig = Rig::with(&text, |w| w.timing.copy_base_ms = 7_200_000);
    let first = rig.run().await;
    assert_eq!(first.status, RunStatus::Failed);
    let before = rig.mutating();
    for (from, to, field) in [
        ("region: eu-west-1\n", "region: eu-central-1\n", "target.region"),
        ("kms_key: alias/dr\n", "kms_key: alias/other\n", "target.kms_key"),
    ] {
        let moved = text.replace(from, to).replace(
            "availability_zone: eu-west-1b",
            if field == "target.region" { "availability_zone: eu-central-1b" } else { "availability_zone: eu-west-1b" },
        );
        let mut cfg = rig.cfg();
        cfg.plan = plan(&moved);
        rig.sim.with_world(|w| {
            // The moved plan's key exists, so only the run's own record refuses it.
            let mut extra = w.keys.iter().find(|k| k.aliases.iter().any(|a| a == "dr")).unwrap().clone();
            if field == "target.region" {
                extra.region = snapferry::ids::Region::parse("eu-central-1").unwrap();
                extra.arn =
                    snapferry::ids::KeyArn::parse(&extra.arn.as_str().replace("eu-west-1", "eu-central-1")).unwrap();
            } else {
                extra.aliases = vec!["other".into()];
                let mut arn = extra.arn.as_str().to_owned();
                let last = if arn.ends_with('0') { '1' } else { '0' };
                arn.pop();
                arn.push(last);
                extra.arn = snapferry::ids::KeyArn::parse(&arn).unwrap();
            }
            w.keys.push(extra);
        });
        let (_tx, rx) = watch::channel(false);
        let e = run(cfg, rig.env(), rx).await.unwrap_err();
        assert_eq!(snapferry::cli::exit::of_run_error(&e), 2, "{e}");
        let msg = e.to_string();
        assert!(msg.contains(field) && msg.contains("snapferry cleanup"), "{msg}");
    }
    assert_eq!(rig.mutating(), before);
    // Timeouts are harmless: the run carries on.
    let longer = text.replace("copy: 30m", "copy: 6h");
    let mut cfg = rig.cfg();
    cfg.plan = plan(&longer);
    let (_tx, rx) = watch::channel(false);
    assert_all_succeeded(&run(cfg, rig.env(), rx).await.unwrap());
    assert_eq!(rig.count("copy"), 3);
}

/// `cleanup` during pending copies stops them first (deleting the pending copy with
/// the target role), then deletes the snapshots they read from, and revokes the
/// statement.
#[tokio::test]
async fn cleanup_during_a_pending_copy_stops_it_before_deleting_its_source() {
    let text = format!("{}  timeouts: {{copy: 30m}}\n", cross());
    let rig = Rig::with(&text, |w| w.timing.copy_base_ms = 7_200_000);
    let first = rig.run().await;
    assert_eq!(first.status, RunStatus::Failed);
    assert_eq!(rig.count("copy"), 3);
    let env = rig.env();
    let summary = snapferry::exec::cleanup(&env.store, env.cloud.as_ref(), env.clock.as_ref(), &first.run_id, None)
        .await
        .unwrap();
    assert!(summary.errors.is_empty(), "{summary:#?}");
    assert_eq!(summary.stopped_copies.len(), 3);
    assert_eq!(summary.grant, "revoked");
    assert_eq!(rig.count("copy"), 0);
    assert_eq!(rig.count("snapshot") + rig.count("reencrypt"), 0);
    rig.sim.with_world(|w| {
        let k = w.keys.iter().find(|k| k.aliases.iter().any(|a| a == "share")).unwrap();
        assert!(!k.policy.contains("SnapferryShare-crash-test"), "{}", k.policy);
    });
    let record = env.store.load(&first.run_id).await.unwrap();
    assert!(record.meta.cleaned_up);
}

/// Cleanup from tags alone: the state is gone, the plan names where to look.
#[tokio::test]
async fn cleanup_from_tags_when_the_state_is_gone() {
    let text = format!("{}  timeouts: {{copy: 30m}}\n", cross());
    let rig = Rig::with(&text, |w| w.timing.copy_base_ms = 7_200_000);
    let first = rig.run().await;
    rig.lose_state();
    let env = rig.env();
    let summary =
        snapferry::exec::cleanup(&env.store, env.cloud.as_ref(), env.clock.as_ref(), &first.run_id, Some(&rig.plan))
            .await
            .unwrap();
    assert!(summary.errors.is_empty(), "{summary:#?}");
    assert_eq!(summary.stopped_copies.len(), 3);
    assert_eq!(rig.count("copy") + rig.count("snapshot") + rig.count("reencrypt"), 0);
    assert_eq!(summary.grant, "revoked");
}

async fn crash_at_every_call(text: &str, volumes: usize, create_volume: bool) {
    crash_at_every_call_on(Backend::Local, text, volumes, create_volume).await;
    crash_at_every_call_on(Backend::Remote, text, volumes, create_volume).await;
}

async fn crash_at_every_call_on(backend: Backend, text: &str, volumes: usize, create_volume: bool) {
    let total = calls_of_a_clean_run(text).await;
    assert!(total > 10);
    for k in 1..=total {
        let (rig, r, _) = crash_and_resume(backend, text, k).await;
        assert_all_succeeded(&r);
        assert_eq!(r.volumes.len(), volumes);
        assert_eq!(rig.count("copy"), volumes, "copies after a crash at call {k}");
        assert_eq!(rig.count("volume"), if create_volume { volumes } else { 0 }, "volumes after a crash at call {k}");
        assert_eq!(rig.count("snapshot") + rig.count("reencrypt"), 0, "orphans on the source side after call {k}");
        rig.sim.with_world(|w| {
            let target_volumes = w.volumes.values().filter(|v| v.owner.as_str() != "111111111111").count();
            assert_eq!(target_volumes, if create_volume { volumes } else { 0 }, "untagged volumes after call {k}");
            let untagged = w.snapshots.values().filter(|s| !s.tags.contains_key("snapferry:step")).count();
            assert_eq!(untagged, 0, "untagged snapshots after call {k}");
        });
    }
}

#[tokio::test]
async fn crash_at_every_call_with_the_state_dir_lost_adopts_the_run_from_its_tags() {
    let total = calls_of_a_clean_run(&cross()).await;
    let mut adopted = 0;
    for k in 1..total {
        let Some((rig, r, lost)) = crash_and_lose_state_after(&cross(), k).await else {
            panic!("the run ended before call {k} of {total}");
        };
        assert_all_succeeded(&r);
        assert_eq!(rig.count("copy"), 3, "copies after a crash at call {k} and a lost state");
        assert_eq!(rig.count("volume"), 3, "volumes after a crash at call {k} and a lost state");
        assert_eq!(rig.count("snapshot") + rig.count("reencrypt"), 0, "orphans after call {k}");
        rig.sim.with_world(|w| {
            let untagged = w.snapshots.values().filter(|s| !s.tags.contains_key("snapferry:step")).count();
            assert_eq!(untagged, 0, "untagged snapshots after call {k}");
            let runs: std::collections::BTreeSet<&String> =
                w.volumes.values().filter_map(|v| v.tags.get("snapferry:run")).collect();
            assert_eq!(runs.len(), 1, "one run's volumes after call {k}: {runs:?}");
        });
        if rig.sim.with_world(|w| w.snapshots.values().any(|s| s.tags.get("snapferry:run") == Some(&lost))) {
            assert_eq!(r.run_id, lost, "the lost run is carried on under its own id");
            adopted += 1;
        }
    }
    assert!(adopted > total / 2, "adopted {adopted} of {total}");
}

#[tokio::test]
async fn crash_at_every_call_cross_account_then_resume_leaves_one_of_each() {
    crash_at_every_call(&cross(), 3, true).await;
}

#[tokio::test]
async fn crash_at_every_call_with_invisible_snapshots_and_throttling() {
    // The hardest case for resume: a lookup right after the crash may not see the
    // snapshot the lost call created.
    let text = cross().replace("  - id: vol-00000000000000003\n", "");
    let total = calls_of_a_clean_run(&text).await;
    for (k, backend) in (1..=total).flat_map(|k| [(k, Backend::Local), (k, Backend::Remote)]) {
        let mut rig = Rig::on(backend, plan(&text), |w| {
            w.faults.invisible_ms = 8_000;
            w.faults.throttle_rate = 0.1;
        });
        if let Some(r) = rig.run_until_call(k).await {
            assert_all_succeeded(&r);
            continue;
        }
        let r = rig.run().await;
        assert_all_succeeded(&r);
        assert_eq!(rig.count("copy"), 2, "copies after a crash at call {k}");
        assert_eq!(rig.count("volume"), 2, "volumes after a crash at call {k}");
        assert_eq!(rig.count("snapshot") + rig.count("reencrypt"), 0, "orphans after call {k}");
    }
}

#[tokio::test]
async fn crash_at_every_call_same_account_without_volumes() {
    let text = cross()
        .replace("  account: \"222222222222\"\n  role_arn: arn:aws:iam::222222222222:role/dr\n", "")
        .replace("options:\n", "options:\n  create_volume: false\n");
    crash_at_every_call(&text, 3, false).await;
}

#[tokio::test]
async fn status_of_runs_is_kept_in_the_state_dir() {
    for backend in [Backend::Local, Backend::Remote] {
        let rig = Rig::on(backend, plan(&cross()), |_| {});
        let r = rig.run().await;
        let store = rig.store.clone();
        let rec = store.load(&r.run_id).await.unwrap();
        assert_eq!(rec.meta.status.as_str(), "succeeded");
        assert!(rec.meta.grant.as_ref().unwrap().added);
        // A new run of a finished plan starts a new run id.
        let r2 = rig.run().await;
        assert_ne!(r2.run_id, r.run_id);
        assert_eq!(store.list().await.unwrap().len(), 2);
        // Its grant was already there.
        assert!(!store.load(&r2.run_id).await.unwrap().meta.grant.unwrap().added);
    }
}

#[tokio::test]
async fn retention_keeps_the_newest_copies_per_volume_and_only_this_plans() {
    let text = format!("{}  keep: 2\n", cross());
    let rig = Rig::new(&text);
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
        let r = rig.run().await;
        assert_all_succeeded(&r);
        runs.push(r);
    }
    // Newest two copies and volumes per source volume; the other plan's volume stays.
    assert_eq!(rig.count("copy"), 3 * 2);
    assert_eq!(rig.count("volume"), 3 * 2 + 1);
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
    let rig = Rig::with(&cross(), |w| {
        w.faults.denied = ["ec2:CreateSnapshot".to_owned(), "ec2:CreateVolume".to_owned()].into();
    });
    let err = rig.try_run().await.unwrap_err();
    assert_eq!(snapferry::cli::exit::of_run_error(&err), 2);
    let text = err.to_string();
    assert!(text.contains("ec2:CreateSnapshot") && text.contains("ec2:CreateVolume"), "{text}");
    assert!(
        text.contains("the target role arn:aws:iam::222222222222:role/dr may not call ec2:CreateVolume in eu-west-1"),
        "{text}"
    );
    rig.sim.with_world(|w| {
        assert!(w.snapshots.is_empty());
        assert!(!w.calls.contains_key("ec2:CreateSnapshot"));
    });
}

#[tokio::test]
async fn a_copy_that_cannot_see_the_share_yet_is_retried() {
    let rig = Rig::with(&cross(), |w| w.faults.share_lag_ms = 12_000);
    let r = rig.run().await;
    assert_all_succeeded(&r);
    assert_eq!(rig.count("copy"), 3);
    rig.sim.with_world(|w| assert!(w.calls["ec2:CopySnapshot"] > 3 + 2, "{:?}", w.calls));
}

#[tokio::test]
async fn copies_queue_when_the_account_copy_quota_is_taken_by_others() {
    let mut text = String::from(cross().split("volumes:").next().unwrap());
    text.push_str("volumes:\n");
    for i in 1..=8 {
        text.push_str(&format!("  - id: vol-0000000000000020{i}\n"));
    }
    // The plan allows 20, but only 2 slots are free in the account.
    let rig = Rig::with(&text, |w| w.faults.copy_quota = Some(2));
    let r = rig.run().await;
    assert_all_succeeded(&r);
    assert_eq!(rig.count("copy"), 8);
    rig.sim.with_world(|w| {
        assert!(w.peak_copies.values().all(|p| *p <= 2), "{:?}", w.peak_copies);
        // Queued, not hammered: a few refusals, not one per second of waiting.
        let copies = w.calls["ec2:CopySnapshot"];
        assert!(copies < 8 + 6 + 20, "{copies} CopySnapshot calls");
    });
}

fn recurring_plan() -> String {
    format!("{}  every: 24h\n", cross())
}

fn volume_statuses(r: &RunReport) -> Vec<(String, String)> {
    r.volumes.iter().map(|v| (v.source_volume.clone(), v.status.clone())).collect()
}

/// `every`: a second invocation within the interval makes no change and reports every
/// volume fresh, with the ids of its newest copy; once due, each volume is copied again.
#[tokio::test]
async fn a_recurring_plan_copies_what_is_due_and_leaves_what_is_fresh() {
    let rig = Rig::new(&recurring_plan());
    let first = rig.run().await;
    assert_all_succeeded(&first);
    let after_first = rig.mutating();

    rig.sim.with_world(|w| w.now_ms += 3_600_000);
    let second = rig.run().await;
    assert_eq!(second.status, RunStatus::Succeeded);
    assert_eq!(rig.mutating(), after_first, "a fresh invocation changed something");
    for (v, f) in second.volumes.iter().zip(&first.volumes) {
        assert_eq!(v.status, "fresh", "{v:#?}");
        assert_eq!((&v.target_snapshot, &v.target_volume), (&f.target_snapshot, &f.target_volume));
    }

    // 22 hours after the first copies began: past 90% of a day, all due.
    rig.sim.with_world(|w| w.now_ms += 21 * 3_600_000);
    let third = rig.run().await;
    assert_all_succeeded(&third);
    assert_ne!(third.run_id, first.run_id);
    assert_eq!(rig.count("copy"), 6);
    assert!(third.volumes.iter().all(|v| v.status == "succeeded"));
}

/// A decommissioned volume fails alone, every invocation, while the others get new
/// copies whenever they are due.
#[tokio::test]
async fn a_decommissioned_volume_fails_alone_in_a_recurring_plan() {
    let rig = Rig::new(&recurring_plan());
    assert_all_succeeded(&rig.run().await);
    rig.sim.with_world(|w| {
        w.volumes.remove("vol-00000000000000002");
    });
    for round in 1..=2 {
        rig.sim.with_world(|w| w.now_ms += 24 * 3_600_000);
        let r = rig.try_run().await.unwrap_or_else(|e| panic!("round {round}: {e}"));
        assert_eq!(r.status, RunStatus::Failed, "round {round}");
        let statuses = volume_statuses(&r);
        assert_eq!(
            statuses,
            vec![
                ("vol-00000000000000001".to_owned(), "succeeded".to_owned()),
                ("vol-00000000000000002".to_owned(), "failed".to_owned()),
                ("vol-00000000000000003".to_owned(), "succeeded".to_owned()),
            ],
            "round {round}"
        );
        let gone = &r.volumes[1];
        assert!(gone.error.as_deref().unwrap().contains("no longer exists"), "{gone:#?}");
        assert_eq!(rig.count("copy"), 3 + 2 * round, "round {round}");
    }
}

/// With the state dir gone, freshness comes from the copies' tags: a new machine
/// does not copy everything again.
#[tokio::test]
async fn freshness_comes_from_tags_when_the_state_dir_is_gone() {
    let rig = Rig::new(&recurring_plan());
    let first = rig.run().await;
    assert_all_succeeded(&first);
    let after_first = rig.mutating();
    rig.lose_state();
    rig.sim.with_world(|w| w.now_ms += 3_600_000);
    let second = rig.run().await;
    assert_eq!(second.status, RunStatus::Succeeded);
    assert_eq!(rig.mutating(), after_first, "a fresh invocation on a new machine changed something");
    for (v, f) in second.volumes.iter().zip(&first.volumes) {
        assert_eq!(v.status, "fresh", "{v:#?}");
        assert_eq!(v.target_volume, f.target_volume);
    }
    rig.lose_state();
    rig.sim.with_world(|w| w.now_ms += 22 * 3_600_000);
    assert_all_succeeded(&rig.run().await);
    assert_eq!(rig.count("copy"), 6);
}

/// A recurring plan crashed at every call and resumed: one copy per volume.
#[tokio::test]
async fn crash_at_every_call_of_a_recurring_plan() {
    crash_at_every_call(&recurring_plan(), 3, true).await;
}

/// `keep_source: 1` with `cleanup: true`: per volume the newest shared snapshot stays
/// (no longer shared), older ones go; `keep: 2` keeps two copies per volume. A round
/// with a failing volume prunes only the others.
#[tokio::test]
async fn keep_source_and_keep_prune_per_volume_across_rounds() {
    let text = format!("{}  every: 24h\n  keep: 2\n  keep_source: 1\n", cross());
    let rig = Rig::new(&text);
    for round in 1..=3 {
        let r = rig.run().await;
        assert_all_succeeded(&r);
        let kept = rig.count("snapshot") + rig.count("reencrypt");
        assert_eq!(kept, 3, "round {round}: one source snapshot per volume");
        assert_eq!(rig.count("copy"), 3 * round.min(2), "round {round}");
        rig.sim.with_world(|w| {
            let shared = w.snapshots.values().filter(|s| !s.shared_with.is_empty()).count();
            assert_eq!(shared, 0, "round {round}: kept snapshots stay private");
            w.now_ms += 24 * 3_600_000;
        });
    }
}

/// The report says per volume whether its next copy will be full or incremental: a
/// volume under the source key copies incrementally; one re-encrypted every time is
/// full, with its size.
#[tokio::test]
async fn the_report_says_which_next_copies_are_full() {
    let rig = Rig::new(&cross());
    let r = rig.run().await;
    assert_all_succeeded(&r);
    let source_key_volumes = rig.sim.with_world(|w| {
        let share = w.keys.iter().find(|k| k.aliases.iter().any(|a| a == "share")).unwrap().arn.clone();
        w.volumes.values().filter(|v| v.kms_key.as_ref() == Some(&share)).map(|v| v.id.to_string()).collect::<Vec<_>>()
    });
    let mut kinds = vec![];
    for v in &r.volumes {
        let k = v.next_copy.as_ref().expect("every volume of a finished run has its next copy's kind");
        let want = if source_key_volumes.contains(&v.source_volume) { "incremental" } else { "full" };
        assert_eq!(k.expected, want, "{k:#?}");
        if want == "full" {
            assert!(k.why.contains(&format!("{} GiB", k.size_gib)), "{k:#?}");
        }
        kinds.push(k.expected);
    }
    assert!(kinds.contains(&"full") && kinds.contains(&"incremental"), "{kinds:?}");
}

#[path = "sim_history.rs"]
mod history;
