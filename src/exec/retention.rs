//! Retention (`options.keep: N`): after a successful run, per source volume, delete
//! the target snapshots and volumes this plan made beyond the newest N.
//!
//! Only resources carrying this plan's `snapferry:plan` tag are considered, found with
//! one listing per kind for the whole plan. The copy and volume the current run made
//! are never deleted, whatever their age; volumes in use are left with a warning.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::clock::Clock;
use crate::cloud::{Cloud, CloudError, ErrorKind, Loc, Tags, VolumeState};
use crate::engine::VolumeRun;

use super::act::{TAG_PLAN, TAG_SOURCE_VOLUME, TAG_STEP, delete_snapshot_quietly};
use super::retry::retrying;

/// What retention did.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Pruned {
    pub snapshots: Vec<String>,
    pub volumes: Vec<String>,
    /// Volumes over the limit that are attached, left alone.
    pub in_use: Vec<String>,
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

/// Applies `keep` for `plan` in the target account and region.
pub async fn prune(
    cloud: &dyn Cloud,
    clock: &dyn Clock,
    dst: &Loc,
    plan: &str,
    keep: u32,
    this_run: &[VolumeRun],
) -> Result<Pruned, CloudError> {
    let keep = keep.max(1) as usize;
    let mut out = Pruned::default();
    let protected_snaps: Vec<String> =
        this_run.iter().filter_map(|v| v.target_snapshot.as_ref().map(|s| s.to_string())).collect();
    let protected_vols: Vec<String> =
        this_run.iter().filter_map(|v| v.target_volume.as_ref().map(|s| s.to_string())).collect();

    let tags =
        |step: &str| Tags::from([(TAG_PLAN.to_owned(), plan.to_owned()), (TAG_STEP.to_owned(), step.to_owned())]);
    let copy_tags = tags("copy");
    let snaps = retrying(clock, || cloud.find_snapshots(dst, &copy_tags)).await?;
    for (_, mut list) in by_source(snaps, |s| &s.tags) {
        // Newest first; the ones past `keep` go.
        list.sort_by_key(|s| std::cmp::Reverse((s.start_time_ms.unwrap_or(0), s.id.clone())));
        for s in list.into_iter().skip(keep) {
            if protected_snaps.contains(&s.id.to_string()) {
                continue;
            }
            retrying(clock, || delete_snapshot_quietly(cloud, dst, &s.id)).await?;
            out.snapshots.push(s.id.to_string());
        }
    }

    let volume_tags = tags("volume");
    let vols = retrying(clock, || cloud.find_volumes(dst, &volume_tags)).await?;
    for (_, mut list) in by_source(vols, |v| &v.tags) {
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
