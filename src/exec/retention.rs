//! Retention (`options.keep: N`): after a successful run, per source volume, delete
//! the target snapshots and volumes this plan made beyond the newest N.
//!
//! Only resources carrying this plan's `snapferry:plan` tag are considered, found with
//! one listing per kind for the whole plan. The copy and volume the current run made
//! (or found fresh) are never deleted, whatever their age, and a volume whose copy in
//! this run did not finish is not pruned at all: its newest copy is kept until a
//! successor completed (the next copy is incremental only while it exists). Volumes in
//! use are left with a warning.
//!
//! With `lock`, a copy past the limit whose lock still holds is kept (reported with
//! the time it is locked until) and deleted by the first invocation after its lock
//! expired: the locks of the copies past the limit are read (DescribeLockedSnapshots)
//! before any is deleted, so no DeleteSnapshot is sent that AWS must refuse.
//!
//! `options.keep_source: N` does the same on the source side: per source volume, the
//! newest N snapshots the cleanup step kept, older ones deleted.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::clock::Clock;
use crate::cloud::{Cloud, CloudError, ErrorKind, Loc, Tags, VolumeState};
use crate::engine::{Step, VolumeRun};
use crate::ids::SnapshotId;
use crate::tags::{StepTag, TAG_PLAN, TAG_SOURCE_VOLUME, TAG_STEP};

use super::act::delete_snapshot_quietly;
use super::retry::retrying;

/// What retention did.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Pruned {
    pub snapshots: Vec<String>,
    pub volumes: Vec<String>,
    /// Volumes over the limit that are attached, left alone.
    pub in_use: Vec<String>,
    /// Source-side snapshots past `keep_source`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub source_snapshots: Vec<String>,
    /// Copies past the limit kept because their lock still holds.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub locked: Vec<KeptLocked>,
}

/// A copy retention would delete but its lock forbids: kept until `until`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct KeptLocked {
    pub snapshot: String,
    /// The lock's expiry (RFC 3339, UTC); `null` while the copy is pending.
    pub until: Option<String>,
    #[serde(skip)]
    pub until_ms: Option<i64>,
}

fn rfc3339(ms: i64) -> Option<String> {
    jiff::Timestamp::from_millisecond(ms).ok().map(|t| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
}

fn by_source<T>(items: Vec<T>, tags: impl Fn(&T) -> &Tags) -> BTreeMap<String, Vec<T>> {
    let mut m: BTreeMap<String, Vec<T>> = BTreeMap::new();
    for it in items {
        if let Some(src) = tags(&it).get(TAG_SOURCE_VOLUME).cloned() {
            m.entry(src).or_default().push(it);
        }
    }
    m
}

/// Applies `keep` for `plan` in the target account and region. `locked`: the target's
/// copies are locked, so their locks are read before any is deleted.
pub async fn prune(
    cloud: &dyn Cloud,
    clock: &dyn Clock,
    dst: &Loc,
    plan: &str,
    keep: u32,
    locked: bool,
    this_run: &[VolumeRun],
) -> Result<Pruned, CloudError> {
    let keep = keep.max(1) as usize;
    let mut out = Pruned::default();
    let unfinished: Vec<String> =
        this_run.iter().filter(|v| v.step != Step::Done).map(|v| v.source_volume.to_string()).collect();
    let protected_snaps: Vec<String> =
        this_run.iter().filter_map(|v| v.target_snapshot.as_ref().map(|s| s.to_string())).collect();
    let protected_vols: Vec<String> =
        this_run.iter().filter_map(|v| v.target_volume.as_ref().map(|s| s.to_string())).collect();

    let tags = |step: StepTag| {
        Tags::from([(TAG_PLAN.to_owned(), plan.to_owned()), (TAG_STEP.to_owned(), step.as_str().to_owned())])
    };
    let copy_tags = tags(StepTag::Copy);
    let mut snaps = retrying(clock, || cloud.find_snapshots(dst, &copy_tags)).await?;
    // A copy that failed verification is kept for investigation and never counted.
    snaps.retain(|s| !crate::verify::failed_tag(&s.tags));
    let mut doomed = vec![];
    for (source, mut list) in by_source(snaps, |s| &s.tags) {
        if unfinished.contains(&source) {
            continue;
        }
        // Newest first; the ones past `keep` go.
        list.sort_by_key(|s| std::cmp::Reverse((s.start_time_ms.unwrap_or(0), s.id.clone())));
        doomed.extend(list.into_iter().skip(keep).filter(|s| !protected_snaps.contains(&s.id.to_string())));
    }
    let ids: Vec<SnapshotId> = doomed.iter().map(|s| s.id.clone()).collect();
    let locks = if locked { super::locks::read(cloud, clock, dst, &ids).await? } else { Default::default() };
    let now = clock.now_ms();
    for s in doomed {
        let lock = locks.get(s.id.as_str()).filter(|l| l.state.protects() && l.expires_ms.is_none_or(|e| now < e));
        if let Some(l) = lock {
            out.locked.push(KeptLocked {
                snapshot: s.id.to_string(),
                until: l.expires_ms.and_then(rfc3339),
                until_ms: l.expires_ms,
            });
            continue;
        }
        match retrying(clock, || delete_snapshot_quietly(cloud, dst, &s.id)).await {
            Ok(()) => out.snapshots.push(s.id.to_string()),
            // Locked since it was read: kept, as a lock asks.
            Err(e) if locked && e.kind == ErrorKind::InvalidState => {
                tracing::warn!(snapshot = %s.id, error = %e, "retention: copy is locked; kept");
                out.locked.push(KeptLocked { snapshot: s.id.to_string(), until: None, until_ms: None });
            }
            Err(e) => return Err(e),
        }
    }
    if !out.locked.is_empty() {
        tracing::info!(copies = out.locked.len(), "retention kept locked copies past keep until their locks expire");
    }

    let volume_tags = tags(StepTag::Volume);
    let vols = retrying(clock, || cloud.find_volumes(dst, &volume_tags)).await?;
    for (source, mut list) in by_source(vols, |v| &v.tags) {
        if unfinished.contains(&source) {
            continue;
        }
        list.sort_by_key(|v| std::cmp::Reverse((v.create_time_ms.unwrap_or(0), v.id.clone())));
        for v in list.into_iter().skip(keep) {
            if protected_vols.contains(&v.id.to_string()) {
                continue;
            }
            if v.state == VolumeState::InUse || v.attachments > 0 {
                tracing::warn!(volume = %v.id, "retention: volume is attached; left in place");
                out.in_use.push(v.id.to_string());
                continue;
            }
            match retrying(clock, || cloud.delete_volume(dst, &v.id)).await {
                Ok(()) => out.volumes.push(v.id.to_string()),
                Err(e) if e.kind == ErrorKind::NotFound => {}
                Err(e) if e.kind == ErrorKind::InvalidState => {
                    tracing::warn!(volume = %v.id, error = %e, "retention: volume cannot be deleted now; left in place");
                    out.in_use.push(v.id.to_string());
                }
                Err(e) => return Err(e),
            }
        }
    }
    if !out.snapshots.is_empty() || !out.volumes.is_empty() {
        tracing::info!(
            snapshots = out.snapshots.len(),
            volumes = out.volumes.len(),
            keep,
            "retention pruned older copies"
        );
    }
    Ok(out)
}

/// `options.keep_source`: per source volume whose copy finished in this run, keeps the
/// newest `keep` source-side snapshots of this plan and deletes older ones. Snapshots
/// this run still needs are never touched.
pub async fn prune_source(
    cloud: &dyn Cloud,
    clock: &dyn Clock,
    src: &Loc,
    plan: &str,
    keep: u32,
    this_run: &[VolumeRun],
) -> Result<Vec<String>, CloudError> {
    let keep = keep.max(1) as usize;
    let done: Vec<String> =
        this_run.iter().filter(|v| v.step == Step::Done).map(|v| v.source_volume.to_string()).collect();
    let needed: Vec<String> = this_run
        .iter()
        .filter(|v| v.step != Step::Done)
        .flat_map(|v| v.intermediates())
        .map(|s| s.to_string())
        .collect();
    let tags = Tags::from([(TAG_PLAN.to_owned(), plan.to_owned())]);
    let snaps = retrying(clock, || cloud.find_snapshots(src, &tags)).await?;
    let snaps: Vec<_> = snaps
        .into_iter()
        .filter(|s| matches!(StepTag::of(&s.tags), Some(StepTag::Snapshot | StepTag::Reencrypt)))
        .collect();
    let mut deleted = vec![];
    for (source, mut list) in by_source(snaps, |s| &s.tags) {
        if !done.contains(&source) {
            continue;
        }
        list.sort_by_key(|s| std::cmp::Reverse((s.start_time_ms.unwrap_or(0), s.id.clone())));
        for s in list.into_iter().skip(keep) {
            if needed.contains(&s.id.to_string()) {
                continue;
            }
            retrying(clock, || delete_snapshot_quietly(cloud, src, &s.id)).await?;
            deleted.push(s.id.to_string());
        }
    }
    Ok(deleted)
}
