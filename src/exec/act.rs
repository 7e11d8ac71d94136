//! Performs one volume action against the cloud and turns the answer into an
//! [`Outcome`] for the step machine. Polls are not here: they are batched across
//! volumes by the runner.

use std::collections::BTreeMap;

use crate::cloud::{
    Cloud, CloudError, CloudResult, CopySnapshotReq, CreateSnapshotReq, CreateVolumeReq, ErrorKind, Loc, Side,
    Snapshot, SnapshotState, Tags, Volume, VolumeState,
};
use crate::engine::{Action, Outcome, VolumeRun, Which};
use crate::ids::{AccountId, AvailabilityZone, KeyArn, Region, SnapshotId};
use crate::lock::CopyLock;
use crate::lock::LockSpec;
use crate::plan::TargetVolume;
use crate::tags::{
    StepTag, TAG_CHAIN_STARTED, TAG_PLAN, TAG_RUN, TAG_SOURCE_VOLUME, TAG_STEP, TAG_VERIFY, chain_started_tag,
};

/// What the actions of one target's copies need to know.
#[derive(Debug, Clone)]
pub struct TargetCtx {
    pub region: Region,
    /// The account its copies land in.
    pub account: AccountId,
    pub key: KeyArn,
    pub availability_zone: AvailabilityZone,
    /// The lock of its copies, if any.
    pub lock: Option<LockSpec>,
}

/// What every action of a run needs to know.
#[derive(Debug, Clone)]
pub struct ActCtx {
    pub plan: String,
    pub run_id: String,
    pub source_region: Region,
    pub source_key: KeyArn,
    /// The accounts the shared snapshot is shared with: every cross-account target's.
    pub share_with: Vec<AccountId>,
    /// The plan's targets, in its order; a volume run's `target` indexes it.
    pub targets: Vec<TargetCtx>,
    /// `options.tags` of the plan.
    pub extra_tags: Tags,
    /// `options.copy_within`, for the copy into the target account.
    pub copy_within_minutes: Option<u32>,
    /// `options.verify`, and the pacing of the EBS direct API requests of every copy
    /// verified at once (`None`: unpaced, on the simulated AWS's virtual time).
    pub verify: Option<crate::verify::Level>,
    pub pacer: Option<std::sync::Arc<crate::exec::verify::Pacer>>,
}

impl ActCtx {
    pub fn src(&self) -> Loc {
        Loc::new(Side::Source, &self.source_region)
    }

    /// Where target `t`'s calls go.
    pub fn dst(&self, t: u8) -> Loc {
        Loc::new(Side::Target(t), &self.target(t).region)
    }

    /// Target `t`; the first one for an index past the plan's (a damaged checkpoint).
    pub fn target(&self, t: u8) -> &TargetCtx {
        self.targets.get(usize::from(t)).or(self.targets.first()).expect("a plan has at least one target")
    }

    pub fn loc(&self, which: Which, t: u8) -> Loc {
        match which {
            Which::Source | Which::Reencrypted => self.src(),
            Which::Target => self.dst(t),
        }
    }

    /// The tags that identify what one step of one volume created in this run.
    pub fn identity_tags(&self, v: &VolumeRun, step: StepTag) -> Tags {
        BTreeMap::from([
            (TAG_PLAN.to_owned(), self.plan.clone()),
            (TAG_RUN.to_owned(), v.chain_run(&self.run_id).to_owned()),
            (TAG_SOURCE_VOLUME.to_owned(), v.source_volume.to_string()),
            (TAG_STEP.to_owned(), step.as_str().to_owned()),
        ])
    }

    /// Everything put on a created resource: `options.tags`, then the identity tags
    /// (which win, so a plan cannot break resume by overriding them), and on the target
    /// side when the chain began.
    pub fn tags(&self, v: &VolumeRun, step: StepTag, own: Option<&Tags>) -> Tags {
        let mut t = self.extra_tags.clone();
        if let Some(own) = own {
            t.extend(own.clone());
        }
        t.extend(self.identity_tags(v, step));
        if step.on_target()
            && let Some(at) = v.started_ms.and_then(chain_started_tag)
        {
            t.insert(TAG_CHAIN_STARTED.to_owned(), at);
        } else {
            t.remove(TAG_CHAIN_STARTED);
        }
        t
    }

    fn description(&self, v: &VolumeRun, step: StepTag) -> String {
        format!("snapferry {} run {}: {} of {}", self.plan, v.chain_run(&self.run_id), step.noun(), v.source_volume)
    }
}

/// The outcome a snapshot's description stands for.
pub fn snapshot_outcome(s: &Snapshot) -> Outcome {
    match s.state {
        SnapshotState::Completed => Outcome::SnapshotCompleted { kms_key: s.kms_key_id.clone() },
        SnapshotState::Error => {
            Outcome::SnapshotError { message: s.state_message.clone().unwrap_or_else(|| "no state message".to_owned()) }
        }
        SnapshotState::Pending | SnapshotState::Other => Outcome::SnapshotPending { progress: s.progress },
    }
}

/// The outcome a volume's description stands for.
pub fn volume_outcome(v: &Volume) -> Outcome {
    match v.state {
        VolumeState::Available | VolumeState::InUse => Outcome::VolumeAvailable,
        VolumeState::Error | VolumeState::Deleting | VolumeState::Deleted => Outcome::VolumeError,
        VolumeState::Creating | VolumeState::Other => Outcome::VolumePending,
    }
}

/// Picks what a lookup found: the oldest match not in error, else the oldest.
/// Returns it and any later duplicates (which the caller deletes).
fn pick_snapshot(mut found: Vec<Snapshot>) -> Option<(Snapshot, Vec<Snapshot>)> {
    found.sort_by_key(|s| (s.state == SnapshotState::Error, s.start_time_ms.unwrap_or(0), s.id.clone()));
    let mut it = found.into_iter();
    let first = it.next()?;
    Some((first, it.collect()))
}

/// Performs `action` for volume `v` (whose source volume is `source`).
pub async fn perform(
    cloud: &dyn Cloud,
    ctx: &ActCtx,
    v: &VolumeRun,
    target: &TargetVolume,
    source: Option<&Volume>,
    action: &Action,
) -> CloudResult<Outcome> {
    match action {
        Action::CreateSnapshot => {
            let req = CreateSnapshotReq {
                volume: v.source_volume.clone(),
                description: ctx.description(v, StepTag::Snapshot),
                tags: ctx.tags(v, StepTag::Snapshot, None),
            };
            let s = cloud.create_snapshot(&ctx.src(), &req).await?;
            Ok(Outcome::SnapshotCreated(s.id))
        }
        Action::Reencrypt { from } => {
            let req = CopySnapshotReq {
                source_region: ctx.source_region.clone(),
                source_snapshot: from.clone(),
                kms_key: ctx.source_key.clone(),
                description: ctx.description(v, StepTag::Reencrypt),
                tags: ctx.tags(v, StepTag::Reencrypt, None),
                completion_minutes: None,
            };
            match cloud.copy_snapshot(&ctx.src(), &req).await {
                Err(e) if e.kind == ErrorKind::NotFound => source_gone_or(cloud, ctx, from, e).await,
                other => Ok(Outcome::SnapshotCreated(other?)),
            }
        }
        Action::Share { snapshot } => {
            if ctx.share_with.is_empty() {
                return Err(CloudError::new(
                    ErrorKind::Invalid,
                    "NoTargetAccount",
                    "the plan has no target account to share with",
                ));
            }
            match cloud.share_snapshot(&ctx.src(), snapshot, &ctx.share_with).await {
                Err(e) if e.kind == ErrorKind::NotFound => source_gone_or(cloud, ctx, snapshot, e).await,
                other => other.map(|()| Outcome::Shared),
            }
        }
        Action::Copy { from } => {
            let req = CopySnapshotReq {
                source_region: ctx.source_region.clone(),
                source_snapshot: from.clone(),
                kms_key: ctx.target(v.target).key.clone(),
                description: ctx.description(v, StepTag::Copy),
                tags: ctx.tags(v, StepTag::Copy, None),
                completion_minutes: ctx.copy_within_minutes,
            };
            match cloud.copy_snapshot(&ctx.dst(v.target), &req).await {
                Err(e) if e.kind == ErrorKind::NotFound => source_gone_or(cloud, ctx, from, e).await,
                other => Ok(Outcome::SnapshotCreated(other?)),
            }
        }
        Action::CreateVolume { snapshot, client_token } => {
            let req = volume_request(ctx, v, target, source, snapshot, client_token);
            Ok(Outcome::VolumeCreated(cloud.create_volume(&ctx.dst(v.target), &req).await?))
        }
        Action::LookUpSnapshot { which } => look_up_snapshot(cloud, ctx, v, *which).await,
        Action::Lock { snapshot } => {
            // A plan that no longer locks this target lets the copy go on unlocked.
            let Some(spec) = ctx.target(v.target).lock else { return Ok(Outcome::NotLocked) };
            let l = cloud.lock_snapshot(&ctx.dst(v.target), snapshot, &spec).await?;
            let mode = l.state.mode().unwrap_or(spec.mode);
            Ok(Outcome::Locked(CopyLock { mode, state: l.state, expires_ms: l.expires_ms }))
        }
        Action::LookUpLock { snapshot } => {
            let found = cloud.describe_locked_snapshots(&ctx.dst(v.target), std::slice::from_ref(snapshot)).await?;
            Ok(found
                .into_iter()
                .find(|l| &l.id == snapshot)
                .and_then(|l| l.state.mode().map(|mode| CopyLock { mode, state: l.state, expires_ms: l.expires_ms }))
                .map_or(Outcome::NotLocked, Outcome::Locked))
        }
        Action::LookUpVolume => {
            let mut found = cloud.find_volumes(&ctx.dst(v.target), &ctx.identity_tags(v, StepTag::Volume)).await?;
            found.retain(|x| !matches!(x.state, VolumeState::Deleting | VolumeState::Deleted));
            found.sort_by_key(|x| (x.create_time_ms.unwrap_or(0), x.id.clone()));
            match found.first() {
                None => Ok(Outcome::NotFound),
                Some(x) => Ok(Outcome::VolumeCreated(x.id.clone())),
            }
        }
        Action::Cleanup { delete, keep } => clean_up(cloud, ctx, delete, keep.as_ref()).await,
        Action::Verify { source, copy } => verify(cloud, ctx, v, source, copy).await,
        Action::PollSnapshot { .. } | Action::PollVolume { .. } | Action::AwaitSource | Action::Nothing => {
            Err(CloudError::new(ErrorKind::Other, "NotAnAction", format!("{action:?} is not performed one at a time")))
        }
    }
}

/// The CreateVolume request of volume run `v` from its copy `snapshot`: the plan's
/// target volume settings, else the source volume's (IOPS and throughput only for the
/// types that take them).
fn volume_request(
    ctx: &ActCtx,
    v: &VolumeRun,
    target: &TargetVolume,
    source: Option<&Volume>,
    snapshot: &SnapshotId,
    client_token: &str,
) -> CreateVolumeReq {
    CreateVolumeReq {
        snapshot: snapshot.clone(),
        availability_zone: ctx.target(v.target).availability_zone.clone(),
        volume_type: target.volume_type.clone().or_else(|| source.and_then(|s| s.volume_type.clone())),
        iops: target.iops.or_else(|| {
            // Only types with provisioned IOPS take the source's figure.
            let ty = target.volume_type.as_deref().or(source.and_then(|s| s.volume_type.as_deref()));
            matches!(ty, Some("gp3" | "io1" | "io2")).then(|| source.and_then(|s| s.iops)).flatten().map(|x| x as u32)
        }),
        throughput: target.throughput.or_else(|| {
            let ty = target.volume_type.as_deref().or(source.and_then(|s| s.volume_type.as_deref()));
            (ty == Some("gp3")).then(|| source.and_then(|s| s.throughput)).flatten().map(|x| x as u32)
        }),
        kms_key: ctx.target(v.target).key.clone(),
        tags: ctx.tags(v, StepTag::Volume, Some(&target.tags)),
        client_token: client_token.to_owned(),
    }
}

/// Looks up by its tags the snapshot one step of `v` made: the oldest match (never a
/// copy that failed verification), later duplicates deleted.
async fn look_up_snapshot(cloud: &dyn Cloud, ctx: &ActCtx, v: &VolumeRun, which: Which) -> CloudResult<Outcome> {
    let loc = ctx.loc(which, v.target);
    let mut found = cloud.find_snapshots(&loc, &ctx.identity_tags(v, which.tag())).await?;
    // A copy that failed verification stays, but is never this run's copy.
    found.retain(|s| !crate::verify::failed_tag(&s.tags));
    match pick_snapshot(found) {
        None => Ok(Outcome::NotFound),
        Some((keep, extra)) => {
            for dup in extra {
                tracing::warn!(volume = %v.source_volume, snapshot = %dup.id, "deleting a duplicate snapshot left by an interrupted run");
                delete_snapshot_quietly(cloud, &loc, &dup.id).await?;
            }
            Ok(Outcome::SnapshotCreated(keep.id))
        }
    }
}

/// Deletes the intermediate source-side snapshots; the one kept for `keep_source` is
/// no longer shared.
async fn clean_up(
    cloud: &dyn Cloud,
    ctx: &ActCtx,
    delete: &[SnapshotId],
    keep: Option<&SnapshotId>,
) -> CloudResult<Outcome> {
    for id in delete {
        delete_snapshot_quietly(cloud, &ctx.src(), id).await?;
    }
    if let (Some(id), false) = (keep, ctx.share_with.is_empty()) {
        match cloud.unshare_snapshot(&ctx.src(), id, &ctx.share_with).await {
            Err(e) if e.kind == ErrorKind::NotFound => {}
            other => other?,
        }
    }
    Ok(Outcome::CleanedUp)
}

/// Compares the completed copy with its source at the plan's level and tags the copy
/// with the result.
async fn verify(
    cloud: &dyn Cloud,
    ctx: &ActCtx,
    v: &VolumeRun,
    source: &SnapshotId,
    copy: &SnapshotId,
) -> CloudResult<Outcome> {
    let level = ctx.verify.unwrap_or(crate::verify::Level::Map);
    let seed = crate::verify::seed_for(&[v.chain_run(&ctx.run_id), v.source_volume.as_str(), copy.as_str()]);
    let (src, dst) = (ctx.src(), ctx.dst(v.target));
    let pair = crate::exec::verify::Pair { source: (&src, source), copy: (&dst, copy) };
    let record =
        crate::exec::verify::verify_copy(cloud, ctx.pacer.as_deref(), pair, level, crate::verify::DEFAULT_SAMPLE, seed)
            .await?;
    let tag = BTreeMap::from([(TAG_VERIFY.to_owned(), record.tag())]);
    cloud.tag_snapshot(&dst, copy, &tag).await?;
    Ok(Outcome::Verified(Box::new(record)))
}

/// After a copy or share was refused because its snapshot was not found: asks the
/// source account, which owns `snapshot`, whether it still exists. Gone there, it is
/// [`Outcome::SourceGone`]; still there (a share that has not reached the target
/// account yet), the refusal `e` stands and is retried as before.
async fn source_gone_or(cloud: &dyn Cloud, ctx: &ActCtx, snapshot: &SnapshotId, e: CloudError) -> CloudResult<Outcome> {
    let found = cloud.describe_snapshots(&ctx.src(), std::slice::from_ref(snapshot)).await?;
    let exists = found.iter().any(|s| &s.id == snapshot && s.state != SnapshotState::Error);
    if exists {
        Err(e)
    } else {
        tracing::warn!(snapshot = %snapshot, error = %e, "the snapshot to copy from is gone from the source account; making the source side again");
        Ok(Outcome::SourceGone { snapshot: snapshot.clone() })
    }
}

/// Deletes a snapshot; one that is already gone counts as deleted.
pub async fn delete_snapshot_quietly(cloud: &dyn Cloud, loc: &Loc, id: &SnapshotId) -> CloudResult<()> {
    match cloud.delete_snapshot(loc, id).await {
        Err(e) if e.kind == ErrorKind::NotFound => Ok(()),
        other => other,
    }
}
