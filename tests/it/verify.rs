//! Verified copies (`verify`) against the simulated AWS, in process: a matched copy at
//! each level (tagged, reported, digests equal at `full`), a corrupted block caught at
//! `full` and at `sample` when sampled, a dropped block caught at `map`, a block of
//! zeros listed on one side only that is no mismatch, crash safety at every call of a
//! verified plan, a fan-out plan whose lead keeps its snapshot for a copy that
//! differs, and the figures (blocks compared per second, requests per level, the
//! size of a 1 TiB volume's block map).

use snapferry::checkpoint::RunStatus;
use snapferry::cloud::sim::blocks::BlockMap;
use snapferry::cloud::{Loc, Side};
use snapferry::exec::verify::{Pair, verify_copy};
use snapferry::ids::{Region, SnapshotId};
use snapferry::verify::{Level, sample_ranks};

use super::sim::cross;
use crate::support::plans;
use crate::support::rig::{
    Backend, Rig, assert_all_succeeded, calls_of_a_clean_run, crash_and_lose_state_after, crash_and_resume,
};

const V1: &str = "vol-00000000000000001";

fn verified(text: &str, level: &str) -> String {
    format!("{text}  verify: {level}\n")
}

/// The `snapferry:verify` tag of every copy in the target account, by copy id.
fn verify_tags(rig: &Rig) -> Vec<(String, Option<String>, Option<String>)> {
    rig.sim.with_world(|w| {
        w.snapshots
            .values()
            .filter(|s| s.tags.get("snapferry:step").map(String::as_str) == Some("copy"))
            .map(|s| {
                (
                    s.id.to_string(),
                    s.tags.get("snapferry:source-volume").cloned(),
                    s.tags.get("snapferry:verify").cloned(),
                )
            })
            .collect()
    })
}

#[tokio::test]
async fn a_matched_copy_at_each_level_is_tagged_and_reported() {
    for level in ["map", "sample", "full"] {
        let rig = Rig::new(&verified(&cross(), level));
        let r = rig.run().await;
        assert_all_succeeded(&r);
        let tags = verify_tags(&rig);
        assert_eq!(tags.len(), 3);
        for (id, _, tag) in &tags {
            assert_eq!(tag.as_deref(), Some(format!("matched:{level}").as_str()), "copy {id}");
        }
        for v in &r.volumes {
            let rec = v.verify.as_ref().unwrap_or_else(|| panic!("no verify in {v:#?}"));
            assert_eq!(rec.level.as_str(), level);
            assert_eq!(rec.result, "matched");
            assert!(rec.first_mismatch.is_none());
            assert!(rec.blocks_compared > 0);
            assert_eq!(Some(&rec.copy_snapshot), v.target_snapshot.as_ref());
            assert_eq!(Some(&rec.source_snapshot), v.shared_snapshot.as_ref());
            match level {
                "full" => {
                    assert!(rec.source_digest.is_some());
                    assert_eq!(rec.source_digest, rec.copy_digest);
                }
                "sample" => assert_eq!(rec.sample_size, Some(256)),
                _ => assert!(rec.sample_seed.is_none()),
            }
        }
        let gets = rig.calls("ebs:GetSnapshotBlock");
        let compared: u64 = r.volumes.iter().map(|v| v.verify.as_ref().unwrap().blocks_compared).sum();
        match level {
            // Every block is listed on both sides: map reads none.
            "map" => assert_eq!(gets, 0),
            "sample" => assert!(gets > 0 && gets <= 2 * 256 * 3, "{gets}"),
            _ => assert_eq!(gets, 2 * compared),
        }
        // The source side was cleaned up after the verification.
        assert_eq!(rig.count("snapshot") + rig.count("reencrypt"), 0);
    }
}

#[tokio::test]
async fn a_corrupted_block_is_caught_at_full_the_copy_is_kept_and_the_next_run_copies_again() {
    let rig = Rig::with(&verified(&cross(), "full"), |w| {
        w.faults.corrupt_block_of = Some((V1.parse().unwrap(), 5));
    });
    let r = rig.run().await;
    assert_eq!(r.status, RunStatus::Failed);
    let bad = r.volumes.iter().find(|v| v.source_volume == V1).unwrap();
    assert_eq!(bad.status, "failed");
    assert_eq!(bad.step, "verify");
    let msg = bad.error.as_deref().unwrap();
    let rec = bad.verify.as_ref().unwrap();
    let block = rec.first_mismatch.as_ref().unwrap().block.unwrap();
    assert!(msg.contains(&format!("block {block}")), "{msg}");
    assert!(bad.hint.as_deref().unwrap().contains("snapferry:verify=failed"));
    for v in r.volumes.iter().filter(|v| v.source_volume != V1) {
        assert_eq!(v.status, "succeeded");
    }
    let failed_copy = bad.target_snapshot.clone().unwrap();
    let tags = verify_tags(&rig);
    let tag_of = |id: &str| tags.iter().find(|t| t.0 == id).and_then(|t| t.2.clone());
    assert_eq!(tag_of(&failed_copy).as_deref(), Some("failed"));
    // The intermediates stay for the next copy.
    assert!(rig.count("snapshot") + rig.count("reencrypt") > 0);

    // The cause gone, the next invocation copies again and keeps the failed copy.
    rig.sim.with_world(|w| w.faults.corrupt_block_of = None);
    let r = rig.run().await;
    assert_all_succeeded(&r);
    let again = r.volumes.iter().find(|v| v.source_volume == V1).unwrap();
    assert_ne!(again.target_snapshot.as_deref(), Some(failed_copy.as_str()));
    assert_eq!(rig.count("copy"), 4, "three good copies and the failed one, kept");
    let tags = verify_tags(&rig);
    assert_eq!(tags.iter().filter(|t| t.2.as_deref() == Some("failed")).count(), 1);
    assert_eq!(tags.iter().filter(|t| t.2.as_deref() == Some("matched:full")).count(), 3);
    assert_eq!(rig.count("snapshot") + rig.count("reencrypt"), 0);
}

#[tokio::test]
async fn a_dropped_block_is_caught_at_map() {
    let rig = Rig::with(&verified(&cross(), "map"), |w| {
        w.faults.drop_block_of = Some((V1.parse().unwrap(), 2));
    });
    let r = rig.run().await;
    let bad = r.volumes.iter().find(|v| v.source_volume == V1).unwrap();
    assert_eq!(bad.status, "failed", "{bad:#?}");
    let m = bad.verify.as_ref().unwrap().first_mismatch.clone().unwrap();
    assert!(m.reason.contains("missing from the copy"), "{m:?}");
    assert!(bad.error.as_deref().unwrap().contains(&format!("block {}", m.block.unwrap())));
}

#[tokio::test]
async fn a_zero_block_listed_on_one_side_only_is_no_mismatch() {
    let rig = Rig::with(&verified(&cross(), "full"), |w| {
        w.faults.unlist_zeros_of = Some(V1.parse().unwrap());
    });
    let r = rig.run().await;
    assert_all_succeeded(&r);
    let v = r.volumes.iter().find(|v| v.source_volume == V1).unwrap();
    let rec = v.verify.as_ref().unwrap();
    assert_eq!(rec.source_digest, rec.copy_digest);
    // The zero block was read on the source side only.
    let copies_listed: u64 = rig.sim.with_world(|w| {
        let c = w.snapshots.get(v.target_snapshot.as_deref().unwrap()).unwrap();
        c.blocks.as_ref().unwrap().listed()
    });
    assert_eq!(rec.blocks_compared, copies_listed + 1);
}

/// A `map` verification leaves a corrupted block unseen; a sample that holds it sees
/// it, one that does not, does not: the seed decides, and is recorded.
#[tokio::test]
async fn a_corrupted_block_is_caught_at_sample_when_sampled() {
    let text = verified(&cross().replace("options:\n", "options:\n  cleanup: false\n"), "map");
    let rank = 7;
    let rig = Rig::with(&text, |w| w.faults.corrupt_block_of = Some((V1.parse().unwrap(), rank)));
    let r = rig.run().await;
    assert_all_succeeded(&r);
    let v = r.volumes.iter().find(|v| v.source_volume == V1).unwrap();
    let source = SnapshotId::parse(v.shared_snapshot.as_deref().unwrap()).unwrap();
    let copy = SnapshotId::parse(v.target_snapshot.as_deref().unwrap()).unwrap();
    let written = rig.sim.with_world(|w| w.snapshots[source.as_str()].blocks.as_ref().unwrap().listed());
    assert!(written > 16, "{written}");
    let n = 4;
    let holds = (0..).find(|s| sample_ranks(*s, n, written).contains(&rank)).unwrap();
    let misses = (0..).find(|s| !sample_ranks(*s, n, written).contains(&rank)).unwrap();
    let src = Loc::new(Side::Source, &Region::parse("us-east-1").unwrap());
    let dst = Loc::new(Side::Target(0), &Region::parse("eu-west-1").unwrap());
    let pair = || Pair { source: (&src, &source), copy: (&dst, &copy) };
    let caught = verify_copy(&rig.sim, None, pair(), Level::Sample, n, holds).await.unwrap();
    assert_eq!(caught.result, "failed");
    assert_eq!(caught.sample_seed, Some(holds));
    let missed = verify_copy(&rig.sim, None, pair(), Level::Sample, n, misses).await.unwrap();
    assert_eq!(missed.result, "matched");
    let full = verify_copy(&rig.sim, None, pair(), Level::Full, n, 0).await.unwrap();
    assert_eq!(full.result, "failed");
    assert_eq!(full.first_mismatch, caught.first_mismatch);
}

#[tokio::test]
async fn a_verification_that_could_not_run_is_its_own_error_and_resumes() {
    let rig = Rig::with(&verified(&cross(), "map"), |w| {
        w.faults.denied.insert("ebs:ListSnapshotBlocks".to_owned());
    });
    let r = rig.run().await;
    assert_eq!(r.status, RunStatus::Failed);
    for v in &r.volumes {
        assert_eq!(v.step, "verify");
        assert!(v.error.as_deref().unwrap().contains("could not verify"), "{v:#?}");
        assert!(v.verify.is_none());
    }
    assert!(verify_tags(&rig).iter().all(|t| t.2.is_none()), "nothing tagged when it could not verify");
    rig.sim.with_world(|w| w.faults.denied.clear());
    let r = rig.run().await;
    assert_all_succeeded(&r);
    assert_eq!(rig.count("copy"), 3, "no copy made again");
}

#[tokio::test]
async fn a_crash_at_every_call_of_a_verified_plan_still_ends_verified_without_duplicates() {
    let text = verified(&cross(), "map");
    let total = calls_of_a_clean_run(&text).await;
    for k in 1..=total {
        let (rig, r, _) = crash_and_resume(Backend::Local, &text, k).await;
        assert_all_succeeded(&r);
        assert_eq!(rig.count("copy"), 3, "copies after a crash at call {k}");
        assert_eq!(rig.count("snapshot") + rig.count("reencrypt"), 0, "orphans after a crash at call {k}");
        let tags = verify_tags(&rig);
        assert!(tags.iter().all(|t| t.2.as_deref() == Some("matched:map")), "after a crash at call {k}: {tags:?}");
        assert!(r.volumes.iter().all(|v| v.verify.is_some()));
    }
}

/// With the state lost as well (adoption from tags), a completed copy that was not yet
/// verified is verified before the run ends, never skipped: every copy ends tagged.
#[tokio::test]
async fn a_crash_with_the_state_lost_still_verifies_every_copy() {
    let text = verified(&cross().replace("options:\n", "options:\n  create_volume: false\n"), "map");
    let total = calls_of_a_clean_run(&text).await;
    // The last calls end the run in AWS: a plan without `every` then starts anew.
    for k in 1..total - 1 {
        let Some((rig, r, _)) = crash_and_lose_state_after(&text, k).await else {
            panic!("the run ended before call {k} of {total}")
        };
        assert_all_succeeded(&r);
        let tags = verify_tags(&rig);
        assert!(
            tags.iter().all(|t| t.2.as_deref() == Some("matched:map")),
            "after a crash at call {k} and a lost state: {tags:?}"
        );
    }
}

fn fan_out() -> String {
    plans::fan_out("fan-verify", 2, "  verify: full\n")
}

/// Each target's copy is verified against the one shared snapshot, with its own
/// account's credentials; the lead cleans up only after both matched.
#[tokio::test]
async fn fan_out_verifies_each_targets_copy_against_the_one_snapshot() {
    let rig = Rig::new(&fan_out());
    let r = rig.run().await;
    assert_all_succeeded(&r);
    for v in &r.volumes {
        assert_eq!(v.copies.len(), 2);
        let shared = v.shared_snapshot.clone().unwrap();
        for c in &v.copies {
            let rec = c.verify.as_ref().unwrap();
            assert_eq!(rec.result, "matched");
            assert_eq!(rec.source_snapshot, shared);
            assert_eq!(Some(&rec.copy_snapshot), c.target_snapshot.as_ref());
        }
    }
    let tags = verify_tags(&rig);
    assert_eq!(tags.len(), 4);
    assert!(tags.iter().all(|t| t.2.as_deref() == Some("matched:full")));
    assert_eq!(rig.count("snapshot") + rig.count("reencrypt"), 0);
}

/// A copy that comes out differently into one target (its block dropped) fails that
/// copy alone; the lead keeps the shared snapshot for the next copy.
#[tokio::test]
async fn fan_out_a_copy_that_differs_keeps_the_shared_snapshot() {
    let rig = Rig::with(&fan_out(), |w| w.faults.drop_block_of = Some((V1.parse().unwrap(), 0)));
    let r = rig.run().await;
    let v = r.volumes.iter().find(|v| v.source_volume == V1).unwrap();
    assert_eq!(v.status, "failed");
    assert!(v.copies.iter().all(|c| c.verify.as_ref().is_some_and(|r| r.result == "failed")));
    assert!(rig.count("snapshot") + rig.count("reencrypt") > 0, "the shared snapshot is kept");
    rig.sim.with_world(|w| w.faults.drop_block_of = None);
    let r = rig.run().await;
    assert_all_succeeded(&r);
    assert_eq!(rig.count("snapshot") + rig.count("reencrypt"), 0);
}

/// The figures: blocks compared per second per copy on the simulated AWS, requests
/// per copy at each level, and the block map of a 1 TiB volume.
#[tokio::test]
async fn figures() {
    for level in ["map", "sample", "full"] {
        let rig = Rig::new(&verified(&cross(), level));
        let r = rig.run().await;
        assert_all_succeeded(&r);
        for v in &r.volumes {
            let rec = v.verify.as_ref().unwrap();
            let per_s = rec.blocks_compared as f64 * 1000.0 / (rec.duration_ms.max(1) as f64);
            println!(
                "figure level={level} blocks={} ms={} blocks/s={per_s:.0} requests source={} copy={}",
                rec.blocks_compared, rec.duration_ms, rec.source_requests, rec.copy_requests
            );
            assert!(rec.source_requests >= 1 && rec.copy_requests >= 1);
        }
    }
    let map = BlockMap::for_volume("vol-0123456789abcdef0", 1024);
    let bytes = serde_json::to_vec(&map).unwrap().len();
    println!(
        "figure 1TiB map: {} ranges, {} edits, {} blocks listed, {bytes} bytes as JSON",
        map.ranges.len(),
        map.edits.len(),
        map.listed()
    );
    assert!(bytes < 4096);
}

/// `snapferry verify RUN_ID` on the binary, simulated: a run whose source snapshots are
/// kept verifies at `full` (exit 0, the evidence file as the contract lists it, the
/// copies tagged), then a copy whose block is changed behind its back differs (exit 1,
/// the first differing block in the evidence, the copy tagged failed); usage errors
/// exit 2.
#[test]
fn the_verify_command_checks_a_finished_run_writes_evidence_and_exits_by_the_result() {
    use crate::support::bin::{code, json, root, run};
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(root("plans/example.yaml"))
        .unwrap()
        .replace("  cleanup: true\n", "  cleanup: true\n  keep_source: 1\n  verify: map\n");
    let plan = dir.path().join("plan.yaml");
    std::fs::write(&plan, text).unwrap();
    let o = run(&["run", plan.to_str().unwrap(), "--simulate", "--format", "json"], dir.path());
    assert_eq!(code(&o), 0, "{}", String::from_utf8_lossy(&o.stderr));
    let doc = json(&o);
    let run_id = doc["run_id"].as_str().unwrap().to_owned();
    for v in doc["volumes"].as_array().unwrap() {
        assert_eq!(v["verify"]["result"], "matched", "{v}");
        assert_eq!(v["verify"]["level"], "map");
    }
    let evidence = dir.path().join("evidence.json");
    let args = ["verify", &run_id, "--level", "full", "--simulate", "--format", "json", "--evidence"];
    let o = run(&[&args[..], &[evidence.to_str().unwrap()]].concat(), dir.path());
    assert_eq!(code(&o), 0, "{}", String::from_utf8_lossy(&o.stderr));
    let ev: serde_json::Value = serde_json::from_slice(&std::fs::read(&evidence).unwrap()).unwrap();
    assert_eq!(ev, json(&o), "the evidence file is the JSON document");
    let copies = ev["copies"].as_array().unwrap();
    assert_eq!(copies.len(), 3);
    for c in copies {
        assert_eq!(c["source"]["region"], "us-east-1");
        assert_eq!(c["source"]["account"], "111111111111");
        assert_eq!(c["copy"]["region"], "eu-west-1");
        assert_eq!(c["copy"]["account"], "222222222222");
        let r = &c["verify"];
        assert_eq!(r["level"], "full");
        assert_eq!(r["result"], "matched");
        assert!(r["first_mismatch"].is_null());
        assert!(r["blocks_compared"].as_u64().unwrap() > 0);
        assert!(r["source_requests"].as_u64().unwrap() > 0 && r["copy_requests"].as_u64().unwrap() > 0);
        assert!(r["duration_ms"].is_u64());
        assert!(r["source_digest"].as_str().is_some_and(|d| d.len() == 64));
        assert_eq!(r["source_digest"], r["copy_digest"]);
    }
    let world_file = dir.path().join(".snapferry/simulated-aws/prod-db-dr.json");
    let read_world = || -> serde_json::Value { serde_json::from_slice(&std::fs::read(&world_file).unwrap()).unwrap() };
    let copy_id = copies[0]["copy"]["snapshot"].as_str().unwrap().to_owned();
    assert_eq!(read_world()["snapshots"][&copy_id]["tags"]["snapferry:verify"], "matched:full");

    // Change one block of the first copy.
    let mut world = read_world();
    let blocks = &mut world["snapshots"][&copy_id]["blocks"];
    let first = blocks["ranges"][0][0].as_u64().unwrap() + 1;
    blocks["edits"][first.to_string()] = serde_json::json!(4242);
    std::fs::write(&world_file, serde_json::to_vec(&world).unwrap()).unwrap();
    let o = run(&[&args[..], &[evidence.to_str().unwrap()]].concat(), dir.path());
    assert_eq!(code(&o), 1, "{}", String::from_utf8_lossy(&o.stderr));
    let ev: serde_json::Value = serde_json::from_slice(&std::fs::read(&evidence).unwrap()).unwrap();
    let bad = ev["copies"].as_array().unwrap().iter().find(|c| c["copy"]["snapshot"] == copy_id.as_str()).unwrap();
    assert_eq!(bad["verify"]["result"], "failed");
    assert_eq!(bad["verify"]["first_mismatch"]["block"], first);
    assert!(bad["verify"]["source_digest"].is_null());
    assert_eq!(read_world()["snapshots"][&copy_id]["tags"]["snapferry:verify"], "failed");
    // The default level is sample: a sample as large as the volume reads every block.
    let o = run(&["verify", &run_id, "--sample", "100000", "--simulate"], dir.path());
    assert_eq!(code(&o), 1);
    assert!(String::from_utf8_lossy(&o.stdout).contains("DIFFERS"), "{}", String::from_utf8_lossy(&o.stdout));

    for bad_args in [
        vec!["verify", run_id.as_str(), "--level", "most", "--simulate"],
        vec!["verify", run_id.as_str(), "--sample", "0", "--simulate"],
        vec!["verify", "no-such-run", "--simulate"],
    ] {
        assert_eq!(code(&run(&bad_args, dir.path())), 2, "{bad_args:?}");
    }
}
