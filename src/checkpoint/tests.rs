//! The state stores' own tests: journals replayed across growth and torn lines, both
//! stores against one behaviour, locks, removal and compaction.

use std::fs::{self, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::sync::Arc;
use std::time::Duration;

use super::error::*;
use super::memory::MemoryObjects;
use super::*;
use crate::cloud::object::ObjectStore;
use std::borrow::Cow;
use std::path::Path;

use super::codec::parse_checkpoint;
use super::journal::Entry;
use crate::ids::{AccountId, Region, VolumeId};

/// A run of `n` volumes just begun, for the store tests here and in `faults`.
pub(super) fn record(run_id: &str, n: usize) -> RunRecord {
    let target = TargetMeta {
        account: None,
        region: Region::parse("eu-west-1").unwrap(),
        key_arn: None,
        cross_account: true,
        role_arn: None,
        external_id: None,
        lock: None,
    };
    let mut meta = RunMeta::new(run_id.into(), "p".into(), Region::parse("us-east-1").unwrap(), vec![target], 1);
    meta.plan_file = "p.yaml".into();
    meta.simulated = true;
    RunRecord {
        meta,
        volumes: (0..n).map(|i| VolumeRun::new(VolumeId::parse(&format!("vol-{i:017x}")).unwrap())).collect(),
    }
}

/// The two stores the same tests run against: a directory, and the S3 layout over
/// objects in memory.
fn stores() -> Vec<(Store, tempfile::TempDir, Arc<MemoryObjects>)> {
    let dir = tempfile::tempdir().unwrap();
    let objects = Arc::new(MemoryObjects::new());
    vec![
        (Store::new(dir.path()), dir, objects.clone()),
        (Store::remote(objects.clone(), LeaseOptions::default()), tempfile::tempdir().unwrap(), objects),
    ]
}

fn short_lease() -> LeaseOptions {
    LeaseOptions { duration: Duration::from_millis(400) }
}

#[tokio::test]
async fn journal_replays_over_checkpoint() {
    for (store, _dir, _) in stores() {
        let mut r = record("r1", 2);
        let mut j = store.create_or_reopen(&r).await.unwrap();
        r.volumes[1] = crate::engine::begin(&r.volumes[1], 5);
        j.volume(1, &r.volumes[1]).unwrap();
        r.meta.status = RunStatus::Failed;
        j.meta(&r.meta).unwrap();
        j.sync().await.unwrap();
        assert_eq!(store.load("r1").await.unwrap(), r, "{}", store.location());
    }
}

#[tokio::test]
async fn a_torn_last_line_is_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::new(dir.path());
    let mut r = record("r1", 2);
    let mut j = store.create_or_reopen(&r).await.unwrap();
    r.volumes[1] = crate::engine::begin(&r.volumes[1], 5);
    j.volume(1, &r.volumes[1]).unwrap();
    j.sync().await.unwrap();
    // A crash mid-write leaves part of a line where the zeros ahead of the records
    // began.
    let path = dir.path().join("runs/r1/journal.jsonl");
    let end = fs::read(&path).unwrap().iter().position(|b| *b == 0).expect("zeros ahead of the records");
    let mut f = OpenOptions::new().write(true).open(&path).unwrap();
    f.seek(SeekFrom::Start(end as u64)).unwrap();
    f.write_all(b"{\"volume\":{\"index\":0,\"sta").unwrap();
    assert_eq!(store.load("r1").await.unwrap(), r);
}

#[tokio::test]
async fn records_across_the_journals_growth_all_replay() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::new(dir.path());
    let mut r = record("r1", 3);
    let mut j = store.create_or_reopen(&r).await.unwrap();
    // Past two steps of growth, in batches of different sizes.
    let mut written = 0;
    for round in 0..12_000 {
        let i = round % 3;
        r.volumes[i].progress = Some((round % 100) as u8);
        r.volumes[i].lookups_missed = (round % 7) as u8;
        j.volume(i, &r.volumes[i]).unwrap();
        if round % 7 == 0 {
            j.sync().await.unwrap();
        }
        written += 1;
    }
    j.sync().await.unwrap();
    let len = fs::metadata(dir.path().join("runs/r1/journal.jsonl")).unwrap().len();
    assert!(len > 2 << 20, "the journal grew twice ({len} bytes, {written} records)");
    assert_eq!(store.load("r1").await.unwrap(), r);
}

#[tokio::test]
async fn unsynced_records_are_not_durable() {
    for (store, _dir, _) in stores() {
        let mut r = record("r1", 1);
        let mut j = store.create_or_reopen(&r).await.unwrap();
        let before = r.clone();
        r.volumes[0] = crate::engine::begin(&r.volumes[0], 5);
        j.volume(0, &r.volumes[0]).unwrap();
        assert_eq!(store.load("r1").await.unwrap(), before, "{}", store.location());
    }
}

#[tokio::test]
async fn compaction_keeps_the_same_run() {
    for (store, dir, objects) in stores() {
        let mut r = record("r2", 3);
        let mut j = store.create_or_reopen(&r).await.unwrap();
        for i in 0..3 {
            r.volumes[i] = crate::engine::begin(&r.volumes[i], 5);
            j.volume(i, &r.volumes[i]).unwrap();
            j.sync().await.unwrap();
        }
        j.compact(&r).await.unwrap();
        if store.location().starts_with("memory") {
            // Only the newest checkpoint is left.
            assert_eq!(objects.keys(), vec!["runs/r2/000000000005.json".to_owned()]);
        } else {
            assert_eq!(fs::metadata(dir.path().join("runs/r2/journal.jsonl")).unwrap().len(), 0);
        }
        r.volumes[2].progress = Some(50);
        j.volume(2, &r.volumes[2]).unwrap();
        j.sync().await.unwrap();
        assert_eq!(store.load("r2").await.unwrap(), r);
    }
}

/// A run's meta as checkpoints and journals hold it, with every optional field set:
/// its regions, accounts and ARNs read back into their typed ids and written out as
/// the same bytes.
const META_TEXT: &str = concat!(
    r#"{"format_version":1,"run_id":"p-20260101T000000Z-ab12","plan":"p","plan_file":"p.yaml","#,
    r#""status":"interrupted","created_ms":1,"updated_ms":2,"finished_ms":3,"#,
    r#""source_account":"111111111111","target_account":"222222222222","#,
    r#""source_region":"us-east-1","target_region":"eu-west-1","cross_account":true,"#,
    r#""source_key_arn":"arn:aws:kms:us-east-1:111111111111:key/11111111-2222-3333-4444-555555555555","#,
    r#""target_key_arn":"arn:aws:kms:eu-west-1:222222222222:key/66666666-7777-8888-9999-000000000000","#,
    r#""target_role_arn":"arn:aws:iam::222222222222:role/snapferry-target","target_external_id":"ext-1","#,
    r#""every_ms":86400000,"targets":["#,
    r#"{"account":"222222222222","region":"eu-west-1","#,
    r#""key_arn":"arn:aws:kms:eu-west-1:222222222222:key/66666666-7777-8888-9999-000000000000","#,
    r#""cross_account":true,"role_arn":"arn:aws:iam::222222222222:role/snapferry-target","#,
    r#""external_id":"ext-1","lock":"governance"},"#,
    r#"{"account":"111111111111","region":"us-west-2","key_arn":null,"cross_account":false,"#,
    r#""role_arn":null,"external_id":null}],"#,
    r#""grant":{"key_arn":"arn:aws:kms:us-east-1:111111111111:key/11111111-2222-3333-4444-555555555555","#,
    r#""sid":"snapferry-p-222222222222","added":true,"revoked":false},"#,
    r#""more_grants":[{"key_arn":"arn:aws:kms:us-east-1:111111111111:key/11111111-2222-3333-4444-555555555555","#,
    r#""sid":"snapferry-p-333333333333","added":false,"revoked":true}],"#,
    r#""simulated":false,"cleaned_up":true,"carries":["p-20251231T000000Z-cd34"],"volumes":[]}"#
);

#[test]
fn a_checkpoints_meta_reads_into_typed_ids_and_writes_the_same_bytes() {
    let record: RunRecord = serde_json::from_str(META_TEXT).unwrap();
    assert_eq!(record.meta.source_region.as_str(), "us-east-1");
    assert_eq!(record.meta.targets()[1].account.as_ref().map(|a| a.as_str()), Some("111111111111"));
    assert_eq!(serde_json::to_string(&record).unwrap(), META_TEXT);
    // As a journal line too.
    let line = serde_json::to_string(&Entry::Meta(Cow::Borrowed(&record.meta))).unwrap();
    let Entry::Meta(back) = serde_json::from_str::<Entry>(&line).unwrap() else { panic!("{line}") };
    assert_eq!(*back, record.meta);
    // A checkpoint whose ids are not well formed is damaged, not half read.
    let bad = META_TEXT.replace("\"source_region\":\"us-east-1\"", "\"source_region\":\"nowhere\"");
    let e = parse_checkpoint(bad.as_bytes(), Path::new("runs/x/checkpoint.json")).unwrap_err();
    assert!(matches!(e, StoreError::Corrupt { .. }), "{e}");
}

#[test]
fn a_new_runs_meta_keeps_one_target_in_the_flat_fields() {
    let t = |region: &str| TargetMeta {
        account: Some(AccountId::parse("222222222222").unwrap()),
        region: Region::parse(region).unwrap(),
        key_arn: None,
        cross_account: true,
        role_arn: None,
        external_id: None,
        lock: None,
    };
    let one = RunMeta::new("r".into(), "p".into(), Region::parse("us-east-1").unwrap(), vec![t("eu-west-1")], 5);
    assert_eq!((one.target_region.as_str(), one.cross_account, one.target_list.len()), ("eu-west-1", true, 0));
    assert_eq!((one.status, one.created_ms, one.updated_ms), (RunStatus::Running, 5, 5));
    let two = RunMeta::new(
        "r".into(),
        "p".into(),
        Region::parse("us-east-1").unwrap(),
        vec![t("eu-west-1"), t("eu-west-2")],
        5,
    );
    assert_eq!(two.targets(), vec![t("eu-west-1"), t("eu-west-2")]);
    assert_eq!(two.target_account.as_ref().map(|a| a.as_str()), Some("222222222222"));
}

#[tokio::test]
async fn newer_format_is_refused() {
    for (store, _dir, _) in stores() {
        let mut r = record("r3", 1);
        r.meta.format_version = FORMAT_VERSION + 1;
        store.create_or_reopen(&r).await.unwrap();
        assert!(matches!(store.load("r3").await, Err(StoreError::NewerFormat { .. })));
    }
}

#[tokio::test]
async fn second_lock_on_a_plan_is_refused_until_the_first_is_dropped() {
    for (store, _dir, _) in stores() {
        let first = store.lock_plan("p").await.unwrap();
        let err = store.lock_plan("p").await.unwrap_err();
        assert!(err.is_lock_conflict(), "{err}");
        assert!(store.lock_plan("other").await.is_ok());
        drop(first);
        assert!(store.lock_plan("p").await.is_ok());
    }
}

#[tokio::test]
async fn latest_of_plan_and_missing_runs() {
    for (store, _dir, _) in stores() {
        let mut a = record("a", 0);
        a.meta.created_ms = 5;
        let mut b = record("b", 0);
        b.meta.created_ms = 9;
        store.create_or_reopen(&b).await.unwrap();
        store.create_or_reopen(&a).await.unwrap();
        assert_eq!(store.latest_of_plan("p").await.unwrap().unwrap().meta.run_id, "b");
        assert!(store.latest_of_plan("q").await.unwrap().is_none());
        assert!(matches!(store.load("zzz").await, Err(StoreError::NoSuchRun(_))));
    }
}

#[tokio::test]
async fn metas_are_read_without_volumes_and_agree_with_whole_runs() {
    for (store, _dir, _) in stores() {
        let mut old = record("old", 3);
        old.meta.created_ms = 5;
        let mut new = record("new", 4);
        new.meta.created_ms = 9;
        let mut other = record("other", 2);
        other.meta.created_ms = 12;
        other.meta.plan = "q".into();
        for r in [&old, &other] {
            store.create_or_reopen(r).await.unwrap();
        }
        // The newest run's meta and a volume change only in its journal.
        let mut j = store.create_or_reopen(&new).await.unwrap();
        new.volumes[2] = crate::engine::begin(&new.volumes[2], 5);
        j.volume(2, &new.volumes[2]).unwrap();
        new.meta.status = RunStatus::Failed;
        new.meta.updated_ms = 77;
        j.meta(&new.meta).unwrap();
        j.sync().await.unwrap();
        let metas = store.list_meta().await.unwrap();
        let whole: Vec<RunMeta> = store.list().await.unwrap().into_iter().map(|r| r.meta).collect();
        assert_eq!(metas, whole, "{}", store.location());
        assert_eq!(metas.iter().map(|m| m.run_id.as_str()).collect::<Vec<_>>(), ["old", "new", "other"]);
        assert_eq!(store.latest_of_plan("p").await.unwrap(), Some(new.clone()), "{}", store.location());
    }
}

#[tokio::test]
async fn a_removed_run_is_gone_and_the_plan_counts_it() {
    for (store, _dir, objects) in stores() {
        let mut a = record("a", 2);
        a.meta.created_ms = 5;
        let b = record("b", 1);
        let mut j = store.create_or_reopen(&a).await.unwrap();
        a.volumes[0] = crate::engine::begin(&a.volumes[0], 5);
        j.volume(0, &a.volumes[0]).unwrap();
        j.sync().await.unwrap();
        store.create_or_reopen(&b).await.unwrap();
        store.remove("a").await.unwrap();
        assert!(matches!(store.load("a").await, Err(StoreError::NoSuchRun(_))), "{}", store.location());
        assert_eq!(store.list_meta().await.unwrap().iter().map(|m| m.run_id.as_str()).collect::<Vec<_>>(), ["b"]);
        // Removing what is gone already is no error.
        store.remove("a").await.unwrap();
        assert!(store.removed_counts().await.unwrap().is_empty());
        assert_eq!(store.count_removed("p", 1).await.unwrap(), 1);
        assert_eq!(store.count_removed("p", 2).await.unwrap(), 3);
        assert_eq!(store.removed_counts().await.unwrap(), [("p".to_owned(), 3)].into());
        if store.location().starts_with("memory") {
            assert!(!objects.keys().iter().any(|k| k.starts_with("runs/a/")), "{:?}", objects.keys());
        }
    }
}

#[tokio::test]
async fn a_removal_cut_short_leaves_no_run_never_an_older_one() {
    let objects = Arc::new(MemoryObjects::new());
    let store = Store::remote(objects.clone(), LeaseOptions::default());
    let mut r = record("r", 1);
    let mut j = store.create_or_reopen(&r).await.unwrap();
    r.meta.status = RunStatus::Succeeded;
    j.meta(&r.meta).unwrap();
    j.sync().await.unwrap();
    // Removed oldest first: cut short after the checkpoint went.
    objects.delete("runs/r/000000000001.json", None).await.unwrap();
    assert!(matches!(store.load("r").await, Err(StoreError::NoSuchRun(_))));
    assert!(store.list_meta().await.unwrap().is_empty());
    store.remove("r").await.unwrap();
    assert!(objects.keys().is_empty(), "{:?}", objects.keys());
}

#[tokio::test]
async fn a_listing_reads_again_only_the_runs_written_since() {
    let objects = Arc::new(MemoryObjects::new());
    let store = Store::remote(objects.clone(), LeaseOptions::default());
    let (mut a, b) = (record("a", 3), record("b", 3));
    let mut ja = store.create_or_reopen(&a).await.unwrap();
    store.create_or_reopen(&b).await.unwrap();
    let reader = Store::remote(objects.clone(), LeaseOptions::default());
    assert_eq!(reader.list_meta().await.unwrap().len(), 2);
    let gets = objects.stats().gets;
    assert_eq!(reader.list_meta().await.unwrap().len(), 2);
    assert_eq!(objects.stats().gets, gets, "nothing written since: nothing read");
    a.meta.status = RunStatus::Failed;
    ja.meta(&a.meta).unwrap();
    ja.sync().await.unwrap();
    let metas = reader.list_meta().await.unwrap();
    assert_eq!(metas.iter().find(|m| m.run_id == "a").unwrap().status, RunStatus::Failed);
    assert_eq!(objects.stats().gets, gets + 2, "run a's checkpoint and its new batch");
    // The writer's own compaction leaves it nothing to read.
    ja.compact(&a).await.unwrap();
    let gets = objects.stats().gets;
    store.list_meta().await.unwrap();
    store.list_meta().await.unwrap();
    assert!(objects.stats().gets <= gets + 1, "run b at most, once");
}

#[tokio::test]
async fn many_journal_batches_are_read_back_in_order() {
    let objects = Arc::new(MemoryObjects::new());
    let store = Store::remote(objects.clone(), LeaseOptions::default());
    let mut r = record("r", 2);
    let mut j = store.create_or_reopen(&r).await.unwrap();
    for n in 0..100u8 {
        r.volumes[usize::from(n % 2)].progress = Some(n);
        j.volume(usize::from(n % 2), &r.volumes[usize::from(n % 2)]).unwrap();
        j.sync().await.unwrap();
    }
    assert_eq!(objects.keys().len(), 101);
    let before = objects.stats();
    assert_eq!(Store::remote(objects.clone(), LeaseOptions::default()).load("r").await.unwrap(), r);
    assert_eq!(objects.stats().gets - before.gets, 101);
}

#[tokio::test]
async fn a_lease_names_its_holder_and_is_released_on_drop() {
    let objects = Arc::new(MemoryObjects::new());
    let one = Store::remote(objects.clone(), LeaseOptions::default());
    let other = Store::remote(objects.clone(), LeaseOptions::default());
    let lock = one.lock_plan("p").await.unwrap();
    let _journal = one.create_or_reopen(&record("p-run", 0)).await.unwrap();
    let err = other.lock_plan("p").await.unwrap_err();
    let text = err.to_string();
    assert!(err.is_lock_conflict(), "{text}");
    assert!(text.contains(&format!("pid {}", std::process::id())) && text.contains("run p-run"), "{text}");
    assert!(text.contains("lease ends at"), "{text}");
    let before = objects.stats();
    assert!(other.lock_plan("p").await.is_err());
    assert_eq!(objects.stats().puts, before.puts, "a refused lock writes nothing");
    drop(lock);
    one.close().await;
    assert!(!objects.keys().iter().any(|k| k.starts_with("locks/")), "{:?}", objects.keys());
    assert!(other.lock_plan("p").await.is_ok());
}

#[tokio::test]
async fn a_dead_holders_lease_is_taken_over_once_it_ends_and_the_holder_is_fenced() {
    let objects = Arc::new(MemoryObjects::new());
    let backend = Arc::new(RemoteStore::new(objects.clone(), short_lease()));
    let first = Store::from_backend(backend.clone());
    let lock = first.lock_plan("p").await.unwrap();
    let mut r = record("run", 2);
    let mut stale = first.create_or_reopen(&r).await.unwrap();
    r.volumes[0] = crate::engine::begin(&r.volumes[0], 5);
    stale.volume(0, &r.volumes[0]).unwrap();
    stale.sync().await.unwrap();
    // The holder stops renewing (a suspended laptop) but its journal lives on.
    backend.abandon("p");
    drop(lock);
    let second = Store::remote(objects.clone(), short_lease());
    assert!(second.lock_plan("p").await.unwrap_err().is_lock_conflict());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let _lock = second.lock_plan("p").await.unwrap();
    let loaded = second.load("run").await.unwrap();
    assert_eq!(loaded, r);
    let mut fresh = second.create_or_reopen(&loaded).await.unwrap();
    // The first holder wakes up: its next write fails, and writes nothing.
    let keys = objects.keys();
    stale.volume(1, &r.volumes[1]).unwrap();
    let err = stale.sync().await.unwrap_err();
    assert!(err.is_lock_conflict(), "{err}");
    assert_eq!(objects.keys(), keys);
    fresh.meta(&loaded.meta).unwrap();
    fresh.sync().await.unwrap();
    assert_eq!(second.load("run").await.unwrap(), loaded);
}

#[tokio::test]
async fn a_writer_without_a_lease_check_is_still_fenced_by_the_sequence() {
    let objects = Arc::new(MemoryObjects::new());
    let a = Store::remote(objects.clone(), LeaseOptions::default());
    let b = Store::remote(objects.clone(), LeaseOptions::default());
    let r = record("run", 1);
    let mut ja = a.create_or_reopen(&r).await.unwrap();
    let loaded = b.load("run").await.unwrap();
    let _jb = b.create_or_reopen(&loaded).await.unwrap();
    ja.meta(&r.meta).unwrap();
    assert!(matches!(ja.sync().await, Err(StoreError::Fenced { .. })));
    assert!(matches!(ja.compact(&r).await, Err(StoreError::Fenced { .. })));
    // A reopen from a stale read is refused too.
    assert!(matches!(a.create_or_reopen(&r).await, Err(StoreError::Fenced { .. })));
}

#[tokio::test]
async fn a_lease_that_cannot_be_renewed_stops_writes_before_it_ends() {
    let objects = Arc::new(MemoryObjects::new());
    let store = Store::remote(objects.clone(), short_lease());
    let lock = store.lock_plan("p").await.unwrap();
    let mut j = store.create_or_reopen(&record("run", 1)).await.unwrap();
    // Someone deletes the lease by hand: the next renewal finds it gone.
    objects.delete("locks/p.json", None).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    j.meta(&record("run", 1).meta).unwrap();
    let err = j.sync().await.unwrap_err();
    assert!(matches!(err, StoreError::LeaseLost { .. }), "{err}");
    drop(lock);
}
