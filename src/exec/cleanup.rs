//! `snapferry cleanup RUN_ID`: undo what a run left on the source side, and stop what
//! it left unfinished. Deletes the intermediate snapshots (which also ends their
//! sharing) and revokes the plan's key-policy statement when no unfinished run on that
//! key still needs it. Completed copies and volumes on the target side are what the
//! run was for and stay.
//!
//! Step-aware: a copy still pending in the target account reads from the shared
//! snapshot, so that copy is stopped first (deleted with the target role, an undo),
//! and the snapshot it reads from is deleted only once the copy is gone. What cannot
//! be deleted is kept in the state with the reason, and the run is marked cleaned up
//! only when nothing it owns is left: running cleanup again finishes the job.
//!
//! Works from the state, or from the run's tags alone when the state is gone
//! (`cleanup --plan PLAN RUN_ID`): the same listings adoption uses find every
//! resource of the run, including those whose creating call's answer was lost.

use std::collections::BTreeSet;

use serde::Serialize;

use crate::checkpoint::{Journal, PlanLock, RunMeta, RunRecord, RunStatus, Store, StoreError, TargetMeta};
use crate::clock::Clock;
use crate::cloud::{Cloud, ErrorKind, Loc, Side, Snapshot, SnapshotState};
use crate::engine::{self, Step, VolumeRun};
use crate::ids::{AccountId, KeyArn, PlanName, Region, RunId, SnapshotId, VolumeId};
use crate::plan::Plan;
use crate::policy;
use crate::tags::{StepTag, TAG_RUN, TAG_SOURCE_VOLUME};

use super::RunError;
use super::act::delete_snapshot_quietly;
use super::adopt::{self, Survey};
use super::key_policy::{self, EditError};
use super::retry::retrying;

/// What cleanup did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CleanupSummary {
    pub run_id: String,
    pub deleted_snapshots: Vec<String>,
    /// Pending target copies deleted to stop them.
    pub stopped_copies: Vec<String>,
    pub unshared_snapshots: Vec<String>,
    /// `revoked`, `already gone`, `kept (needed by RUN...)` or `none`.
    pub grant: String,
    /// Source volumes whose chain of this run a later run carries on unfinished (a
    /// recurring plan's failing volume): left alone, with the run that carries it.
    pub carried: Vec<CarriedChain>,
    pub errors: Vec<String>,
}

/// A chain of the run being cleaned up that a later run still carries.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct CarriedChain {
    pub source_volume: String,
    pub carried_by: String,
}

/// Cleans up `run_id`, read from the state under its plan's lock (`lock_and_read`).
/// `plan`, when given, supplies regions, accounts and the role for a run the state does
/// not know (it is then found by its tags).
pub async fn cleanup(
    store: &Store,
    cloud: &dyn Cloud,
    clock: &dyn Clock,
    run_id: &str,
    plan: Option<&Plan>,
) -> Result<CleanupSummary, RunError> {
    let held = match lock_and_read(store, run_id, plan.map(|p| &p.name)).await {
        Ok(held) => held,
        // No run to lock for: cleanup says so, naming what to do.
        Err(StoreError::NoSuchRun(_)) if plan.is_none() => {
            return cleanup_loaded(store, cloud, clock, run_id, None, plan).await;
        }
        Err(e) => return Err(e.into()),
    };
    let result = cleanup_loaded(store, cloud, clock, run_id, held.record, plan).await;
    drop(held.lock);
    result
}

/// The plan's lock, then the run's record under it, so cleanup works on the record as
/// the lock keeps it. The plan is the one a minted run id names, else `plan` (the
/// `--plan` of a run the state may have lost); a run id chosen with `--run-id` names
/// none, so its record is read once to learn its plan and again under that plan's
/// lock. The record is `None` when the state lost the run and `plan` is given;
/// without `plan` that is `StoreError::NoSuchRun`.
pub async fn lock_and_read(store: &Store, run_id: &str, plan: Option<&PlanName>) -> Result<Held, StoreError> {
    let named = RunId::minted_plan(run_id).or_else(|| plan.cloned());
    let early = match &named {
        Some(name) => Some(store.lock_plan(name.as_str()).await?),
        None => None,
    };
    let read = || async {
        match store.load(run_id).await {
            Ok(r) => Ok(Some(r)),
            Err(StoreError::NoSuchRun(_)) if plan.is_some() => Ok(None),
            Err(e) => Err(e),
        }
    };
    let record = read().await?;
    let owner = record.as_ref().map(|r| r.meta.plan.clone()).or_else(|| plan.map(|p| p.to_string()));
    let owner = owner.unwrap_or_default();
    if let Some(lock) = early.filter(|_| named.as_ref().map(|n| n.as_str()) == Some(owner.as_str())) {
        return Ok(Held { lock, record, plan: owner });
    }
    // The lock taken was another plan's (a chosen run id shaped like a minted one), or
    // none (it was dropped just above): read the run again under its own.
    let lock = store.lock_plan(&owner).await?;
    Ok(Held { lock, record: read().await?, plan: owner })
}

/// A run as `lock_and_read` found it: the lock of its plan, held while cleanup works,
/// its record (none when the state lost it and the plan was named) and that plan.
pub struct Held {
    pub lock: PlanLock,
    pub record: Option<RunRecord>,
    pub plan: String,
}

/// Cleans up `run_id` as the caller loaded it from the state (`known`; `None`: the
/// state does not know it, and `plan` is needed to find it by its tags). The phases:
/// open the run, list what AWS holds of it, per source volume stop its pending copies
/// and delete its intermediates, revoke the grants, record the end.
pub async fn cleanup_loaded(
    store: &Store,
    cloud: &dyn Cloud,
    clock: &dyn Clock,
    run_id: &str,
    known: Option<RunRecord>,
    plan: Option<&Plan>,
) -> Result<CleanupSummary, RunError> {
    let io = Io { store, cloud, clock };
    let (mut record, mut journal) = open_run(io, run_id, known, plan).await?;
    let mut summary = CleanupSummary { run_id: run_id.to_owned(), grant: "none".into(), ..Default::default() };
    let sweep = Sweep::new(io, run_id, &record.meta, &mut summary).await?;

    // Chains of this run that a later run carries on unfinished are that run's now:
    // its pending copy reads their snapshots. They are left alone.
    let carriers = carriers_of(store, run_id).await?;
    let mut sources: Vec<VolumeId> = vec![];
    for v in &record.volumes {
        if !sources.contains(&v.source_volume) {
            sources.push(v.source_volume.clone());
        }
    }
    for source_id in sources {
        if let Some(by) = carriers.get(source_id.as_str()) {
            tracing::warn!(volume = %source_id, run = %by, "left alone: a later run carries this chain on");
            summary.carried.push(CarriedChain { source_volume: source_id.to_string(), carried_by: by.clone() });
            continue;
        }
        sweep.volume(&mut record, &mut journal, &source_id, &mut summary).await?;
    }

    sweep.revoke_grants(&mut record.meta, plan, &mut summary).await?;
    record_end(&mut record, journal, clock, &summary).await?;
    Ok(summary)
}

/// Records how the cleanup ended: the run is cleaned up only when nothing it owns is
/// left (an error says what is), so running cleanup again finishes the job.
async fn record_end(
    record: &mut RunRecord,
    mut journal: Journal,
    clock: &dyn Clock,
    summary: &CleanupSummary,
) -> Result<(), RunError> {
    record.meta.cleaned_up = summary.errors.is_empty();
    record.meta.updated_ms = clock.now_ms();
    if record.meta.status == RunStatus::Running {
        record.meta.status = RunStatus::Interrupted;
    }
    journal.meta(&record.meta)?;
    journal.compact(record).await?;
    Ok(())
}

/// Where cleanup reads and writes: the state, AWS, the clock.
#[derive(Clone, Copy)]
struct Io<'a> {
    store: &'a Store,
    cloud: &'a dyn Cloud,
    clock: &'a dyn Clock,
}

/// The run and its journal: as the state holds it, or (with `plan`) rebuilt from its
/// tags. Refused when it is another plan's, or was made in another account than the
/// caller's.
async fn open_run(
    io: Io<'_>,
    run_id: &str,
    known: Option<RunRecord>,
    plan: Option<&Plan>,
) -> Result<(RunRecord, Journal), RunError> {
    let identity = retrying(io.clock, || io.cloud.caller_identity(Side::Source))
        .await
        .map_err(|e| RunError::Cloud { what: "reading the caller identity".into(), source: e })?;
    let (record, journal) = match known {
        Some(r) => {
            let j = io.store.reopen(&r).await?;
            (r, j)
        }
        None => {
            let Some(plan) = plan else {
                return Err(RunError::Usage(format!(
                    "no run {run_id} in the state dir; to clean it up from its tags in AWS, name its plan: snapferry cleanup --plan PLAN {run_id}"
                )));
            };
            let r = from_tags(io.cloud, io.clock, plan, run_id, &identity.account).await?;
            let j = io.store.create_or_reopen(&r).await?;
            (r, j)
        }
    };
    if let Some(p) = plan
        && p.name.as_str() != record.meta.plan
    {
        return Err(RunError::Usage(format!(
            "run {run_id} belongs to plan {}, not {}; name its own plan",
            record.meta.plan, p.name
        )));
    }
    if let Some(acct) = &record.meta.source_account
        && acct != &identity.account
    {
        return Err(RunError::Usage(format!(
            "run {run_id} was made in account {acct}, but the credentials are of account {} ({}); use credentials of account {acct}",
            identity.account, identity.arn
        )));
    }
    Ok((record, journal))
}

/// One cleanup's view of its run: where its calls go, and what AWS holds of it.
struct Sweep<'a> {
    io: Io<'a>,
    run_id: &'a str,
    source_region: Region,
    src: Loc,
    /// Per target of the run, where its calls go.
    dsts: Vec<Loc>,
    /// The accounts the run's snapshots were shared with.
    share_with: Vec<AccountId>,
    /// What AWS holds under the plan's tag, including what a lost answer left
    /// unrecorded; empty when the listing failed.
    survey: Survey,
    /// The listing answered. Without it only the snapshots the state names are
    /// cleaned up, and none a pending copy may still read from.
    listed: bool,
}

impl<'a> Sweep<'a> {
    /// The run's places, from its checkpoint, and the listing of its resources (a
    /// listing that fails is an error of the summary, not of the cleanup).
    async fn new(
        io: Io<'a>,
        run_id: &'a str,
        meta: &RunMeta,
        summary: &mut CleanupSummary,
    ) -> Result<Sweep<'a>, RunError> {
        let source_region = meta.source_region.clone();
        let src = Loc::new(Side::Source, &source_region);
        let targets = meta.targets();
        let mut dsts = vec![];
        for (i, t) in targets.iter().enumerate() {
            dsts.push(Loc::new(Side::Target(i as u8), &t.region));
        }
        let mut share_with: Vec<AccountId> = vec![];
        for t in targets.iter().filter(|t| t.cross_account) {
            if let Some(a) = t.account.clone()
                && !share_with.contains(&a)
            {
                share_with.push(a);
            }
        }
        let mut survey = Survey::default();
        match adopt::survey(io.cloud, io.clock, &meta.plan, &src, &dsts).await {
            Ok(s) => survey = s,
            Err(e) => summary.errors.push(format!(
                "listing the run's resources: {e}; only the snapshots the state names are cleaned up, and none a pending copy may still read from"
            )),
        }
        let listed = summary.errors.is_empty();
        Ok(Sweep { io, run_id, source_region, src, dsts, share_with, survey, listed })
    }

    /// True for a snapshot this run made for `source` at `step`.
    fn made(&self, s: &Snapshot, source: &str, step: StepTag) -> bool {
        s.tags.get(TAG_RUN).map(String::as_str) == Some(self.run_id)
            && StepTag::of(&s.tags) == Some(step)
            && s.tags.get(TAG_SOURCE_VOLUME).map(String::as_str) == Some(source)
    }

    /// One source volume's chain: its copies (one per target) stopped while pending,
    /// then the intermediates they read deleted, then its volume runs recorded with
    /// what is kept.
    async fn volume(
        &self,
        record: &mut RunRecord,
        journal: &mut Journal,
        source_id: &VolumeId,
        summary: &mut CleanupSummary,
    ) -> Result<(), RunError> {
        let units: Vec<usize> =
            (0..record.volumes.len()).filter(|i| record.volumes[*i].source_volume == *source_id).collect();
        // The unit holding the source side: the lead, else the first.
        let lead = units.iter().copied().find(|i| !record.volumes[*i].follower).unwrap_or(units[0]);
        let v = record.volumes[lead].clone();
        let source = v.source_volume.as_str();

        let mut copy_blocks = self.stop_copies(source, summary).await;
        // Without a listing of the target side, a copy the state says is under way
        // may still read from the shared snapshot.
        let copy_may_run = units.iter().any(|i| {
            let u = &record.volumes[*i];
            matches!(u.step, Step::Lock | Step::WaitCopy) || (u.step == Step::Copy && u.in_flight) || failed_at_copy(u)
        });
        if !self.listed && copy_may_run {
            copy_blocks = true;
        }

        let kept = self.delete_intermediates(&v, copy_blocks, summary).await;
        if copy_blocks && !kept.is_empty() && !summary.errors.iter().any(|e| e.contains("is still pending")) {
            summary.errors.push(format!(
                "volume {source}: the snapshots {} are kept while a copy may still read from them; run cleanup again once the copy ended",
                kept.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
            ));
        }

        for i in units {
            let v = record.volumes[i].clone();
            let n = engine::stopped_by_cleanup(&v, &kept, self.io.clock.now_ms());
            if n != v {
                record.volumes[i] = n;
                journal.volume(i, &record.volumes[i])?;
            }
        }
        Ok(())
    }

    /// Stops `source`'s copies still pending (or failed) in each target account, by
    /// deleting them with the target role: they read from the shared snapshot. True
    /// when one could not be stopped, so the snapshots it reads must stay.
    async fn stop_copies(&self, source: &str, summary: &mut CleanupSummary) -> bool {
        let (cloud, clock) = (self.io.cloud, self.io.clock);
        let mut copy_blocks = false;
        for (t, held) in self.survey.targets.iter().enumerate() {
            let mut copies: Vec<&Snapshot> =
                held.snapshots.iter().filter(|s| self.made(s, source, StepTag::Copy)).collect();
            copies.retain(|s| s.state != SnapshotState::Completed);
            for c in copies {
                match retrying(clock, || delete_snapshot_quietly(cloud, &self.dsts[t], &c.id)).await {
                    Ok(()) => summary.stopped_copies.push(c.id.to_string()),
                    Err(e) => {
                        copy_blocks = true;
                        summary.errors.push(format!(
                            "copy {} is still pending and could not be stopped: {e}; its source snapshot is kept until it ends",
                            c.id
                        ));
                    }
                }
            }
        }
        copy_blocks
    }

    /// Deletes the intermediates of lead `v`: the re-encrypted one first (it may still
    /// be reading from the source snapshot, and deleting it stops it), then the source
    /// one; with `copy_blocks`, not the shared one a copy may still read from. The
    /// snapshots kept.
    async fn delete_intermediates(
        &self,
        v: &VolumeRun,
        copy_blocks: bool,
        summary: &mut CleanupSummary,
    ) -> Vec<SnapshotId> {
        let (cloud, clock, src) = (self.io.cloud, self.io.clock, &self.src);
        let source = v.source_volume.as_str();
        let listed = &self.survey.source_snapshots;
        let mut reenc: BTreeSet<SnapshotId> = v.reencrypted_snapshot.iter().cloned().collect();
        reenc.extend(listed.iter().filter(|s| self.made(s, source, StepTag::Reencrypt)).map(|s| s.id.clone()));
        let mut snaps: BTreeSet<SnapshotId> = v.source_snapshot.iter().cloned().collect();
        snaps.extend(listed.iter().filter(|s| self.made(s, source, StepTag::Snapshot)).map(|s| s.id.clone()));
        let mut kept: Vec<SnapshotId> = vec![];
        let mut reenc_left = false;
        for (group, ids) in [(StepTag::Reencrypt, reenc), (StepTag::Snapshot, snaps)] {
            for id in ids {
                // The shared snapshot of a copy still under way must outlive it.
                let shared = group == StepTag::Reencrypt || v.reencrypted_snapshot.is_none();
                if copy_blocks && shared {
                    kept.push(id);
                    continue;
                }
                if group == StepTag::Snapshot && reenc_left {
                    summary.errors.push(format!(
                        "snapshot {id} is kept: the re-encryption copy made from it could not be deleted"
                    ));
                    kept.push(id);
                    continue;
                }
                match retrying(clock, || delete_snapshot_quietly(cloud, src, &id)).await {
                    Ok(()) => summary.deleted_snapshots.push(id.to_string()),
                    Err(e) => {
                        // A snapshot that cannot be deleted (in use by an AMI, say) is at
                        // least no longer shared.
                        if !self.share_with.is_empty()
                            && retrying(clock, || cloud.unshare_snapshot(src, &id, &self.share_with)).await.is_ok()
                        {
                            summary.unshared_snapshots.push(id.to_string());
                        }
                        summary.errors.push(format!("snapshot {id}: {e}; delete it by hand or run cleanup again"));
                        if group == StepTag::Reencrypt {
                            reenc_left = true;
                        }
                        kept.push(id);
                    }
                }
            }
        }
        kept
    }

    /// Per target account, its statement: revoked unless another unfinished run on the
    /// same key for the same account, of whichever plan, may still rely on it.
    async fn revoke_grants(
        &self,
        meta: &mut RunMeta,
        plan: Option<&Plan>,
        summary: &mut CleanupSummary,
    ) -> Result<(), RunError> {
        let (store, cloud, clock) = (self.io.store, self.io.cloud, self.io.clock);
        let mut outcomes = vec![];
        for account in &self.share_with {
            let Some((key, g)) = grant_of(meta, plan, account, &self.source_region) else { continue };
            let others: Vec<String> = store
                .list()
                .await?
                .into_iter()
                .filter(|r| {
                    r.meta.run_id != self.run_id
                        && !r.meta.cleaned_up
                        && r.meta.status != RunStatus::Succeeded
                        && r.meta.source_key_arn.as_ref() == Some(&key)
                        && r.meta.targets().iter().any(|t| t.account.as_ref() == Some(&g.target_account))
                })
                .map(|r| r.meta.run_id)
                .collect();
            let label = if self.share_with.len() > 1 { format!("{account}: ") } else { String::new() };
            if !others.is_empty() {
                outcomes.push(format!("{label}kept (needed by {})", others.join(", ")));
                continue;
            }
            match revoke(cloud, clock, &self.src, &key, &g).await {
                Ok(changed) => {
                    outcomes.push(format!("{label}{}", if changed { "revoked" } else { "already gone" }));
                    let sid = g.sid();
                    for gr in meta.grant.iter_mut().chain(meta.more_grants.iter_mut()) {
                        if gr.sid == sid {
                            gr.revoked = true;
                        }
                    }
                }
                Err(e) => summary.errors.push(format!("key policy of {key}: {e}")),
            }
        }
        if !outcomes.is_empty() {
            summary.grant = outcomes.join("; ");
        }
        Ok(())
    }
}

/// Per source volume, the newest other run in the state that carries a chain of
/// `run_id` unfinished (`VolumeRun::chain` naming it, not done, the run not cleaned up).
async fn carriers_of(store: &Store, run_id: &str) -> Result<std::collections::HashMap<String, String>, RunError> {
    let mut carriers: std::collections::HashMap<String, (i64, String)> = std::collections::HashMap::new();
    for r in store.list().await? {
        if r.meta.run_id == run_id || r.meta.cleaned_up {
            continue;
        }
        for v in &r.volumes {
            if v.chain.as_deref() == Some(run_id) && v.step != Step::Done {
                let e = carriers.entry(v.source_volume.to_string()).or_insert((i64::MIN, String::new()));
                if r.meta.created_ms >= e.0 {
                    *e = (r.meta.created_ms, r.meta.run_id.clone());
                }
            }
        }
    }
    Ok(carriers.into_iter().map(|(k, (_, run))| (k, run)).collect())
}

fn failed_at_copy(v: &VolumeRun) -> bool {
    v.step == Step::Failed
        && v.failure
            .as_ref()
            .is_some_and(|f| matches!(f.step, Step::Lock | Step::WaitCopy) || (f.step == Step::Copy && v.in_flight))
}

/// The key and statement this run's plan grants, if it is a cross-account run.
fn grant_of(
    meta: &RunMeta,
    plan: Option<&Plan>,
    target: &AccountId,
    region: &Region,
) -> Option<(KeyArn, policy::Grant)> {
    let target = target.clone();
    let key = meta.grant.as_ref().map(|g| g.key_arn.clone()).or_else(|| meta.source_key_arn.clone())?;
    let name = PlanName::parse(&meta.plan).ok().or_else(|| plan.map(|p| p.name.clone()))?;
    Some((key, policy::Grant::new(name, target, region)))
}

/// A run the state does not know, rebuilt from its tagged resources.
async fn from_tags(
    cloud: &dyn Cloud,
    clock: &dyn Clock,
    plan: &Plan,
    run_id: &str,
    caller: &AccountId,
) -> Result<RunRecord, RunError> {
    let src = Loc::new(Side::Source, &plan.source.region);
    let dsts = super::scope::target_locs(plan);
    let survey = adopt::survey(cloud, clock, plan.name.as_str(), &src, &dsts)
        .await
        .map_err(|e| RunError::Cloud { what: format!("listing the resources of run {run_id}"), source: e })?;
    let found = adopt::rebuild_run(&survey, run_id, super::scope::shape(plan), clock.now_ms());
    if found.volumes.is_empty() {
        return Err(RunError::Usage(format!(
            "no resource tagged snapferry:run={run_id} of plan {} in {} or its targets' regions; check the run id",
            plan.name, plan.source.region
        )));
    }
    let source_key = match retrying(clock, || cloud.describe_key(&src, &plan.source.kms_key)).await {
        Ok(k) => Some(k.arn),
        Err(e) if e.kind == ErrorKind::NotFound => None,
        Err(e) => return Err(RunError::Cloud { what: format!("DescribeKey of {}", plan.source.kms_key), source: e }),
    };
    let now = clock.now_ms();
    let targets: Vec<TargetMeta> = plan
        .targets
        .iter()
        .map(|t| {
            let account = t.account.clone().unwrap_or_else(|| caller.clone());
            let cross = t.crosses(caller);
            TargetMeta {
                account: Some(account),
                region: t.region.clone(),
                key_arn: None,
                cross_account: cross,
                role_arn: t.role_arn.clone().filter(|_| cross),
                external_id: t.external_id.clone().filter(|_| cross),
                lock: t.lock.map(|l| l.mode.to_string()),
            }
        })
        .collect();
    let mut meta = RunMeta::new(run_id.to_owned(), plan.name.to_string(), plan.source.region.clone(), targets, now);
    meta.status = RunStatus::Interrupted;
    meta.created_ms = found.created_ms.min(now);
    meta.source_account = Some(caller.clone());
    meta.source_key_arn = source_key;
    meta.every_ms = plan.options.every.map(|d| d.as_millis() as i64);
    let record = RunRecord { meta, volumes: found.volumes };
    Ok(record)
}

/// Removes the statement of `g` from the policy of `key`; true when it was there.
/// Read back like a grant (`key_policy::edit`): a concurrent writer's copy of the
/// older policy would bring the statement back.
async fn revoke(
    cloud: &dyn Cloud,
    clock: &dyn Clock,
    loc: &Loc,
    key: &KeyArn,
    g: &policy::Grant,
) -> Result<bool, String> {
    let merge = |current: &str| policy::revoke_grant(current, g).map_err(|e| e.to_string());
    key_policy::edit(cloud, clock, loc, key, &merge).await.map_err(|e| match e {
        EditError::Cloud { call, source } if source.kind == ErrorKind::AccessDenied => {
            format!("{call}: {source}; the caller needs kms:GetKeyPolicy and kms:PutKeyPolicy on the key")
        }
        EditError::Cloud { call, source } => format!("{call}: {source}"),
        EditError::Merge(m) => m,
        EditError::KeepsChanging => {
            "the key policy keeps changing while snapferry removes its statement; run cleanup again when other edits are done"
                .to_owned()
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A store holding one run of plan `prod` named `run_id`.
    async fn store_with(dir: &std::path::Path, run_id: &str) -> Store {
        let store = Store::new(dir);
        let meta = RunMeta::new(run_id.into(), "prod".into(), Region::parse("us-east-1").unwrap(), vec![], 1);
        let record = RunRecord { meta, volumes: vec![] };
        drop(store.create_or_reopen(&record).await.unwrap());
        store
    }

    #[tokio::test]
    async fn the_run_is_read_under_its_own_plans_lock() {
        for run_id in ["prod-20261201T000000Z-0a9f", "nightly", "nightly-20261201T000000Z-beef"] {
            let dir = tempfile::tempdir().unwrap();
            let store = store_with(dir.path(), run_id).await;
            let Held { lock, record, plan } = lock_and_read(&store, run_id, None).await.unwrap();
            assert_eq!(record.unwrap().meta.run_id, run_id);
            assert_eq!(plan, "prod");
            // The run's plan is held; the plan a chosen id merely looks like is not.
            assert!(store.lock_plan("prod").await.is_err(), "{run_id}: prod not locked");
            assert!(store.lock_plan("nightly").await.is_ok(), "{run_id}: another plan's lock kept");
            drop(lock);
            assert!(store.lock_plan("prod").await.is_ok());
        }
    }

    #[tokio::test]
    async fn a_minted_run_id_waits_for_its_plans_lock_before_the_state_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        let held = store.lock_plan("prod").await.unwrap();
        // No record exists: the held lock is what refuses, not the missing run.
        let Err(e) = lock_and_read(&store, "prod-20261201T000000Z-0a9f", None).await else { panic!("read unlocked") };
        assert!(matches!(e, StoreError::Locked { .. }), "{e}");
        drop(held);
        let Err(e) = lock_and_read(&store, "prod-20261201T000000Z-0a9f", None).await else { panic!("read unlocked") };
        assert!(matches!(e, StoreError::NoSuchRun(_)), "{e}");
        // With --plan, a run the state lost is found by its tags, under that plan's lock.
        let name = PlanName::parse("prod").unwrap();
        let held = lock_and_read(&store, "chosen", Some(&name)).await.unwrap();
        assert!(held.record.is_none() && held.plan == "prod");
        assert!(store.lock_plan("prod").await.is_err());
    }
}
