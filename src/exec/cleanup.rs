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

use crate::checkpoint::{RunMeta, RunRecord, RunStatus, Store, StoreError, TargetMeta};
use crate::clock::Clock;
use crate::cloud::{Cloud, ErrorKind, Loc, Side, Snapshot, SnapshotState};
use crate::engine::{self, Step};
use crate::ids::{AccountId, KeyArn, PlanName, Region, SnapshotId};
use crate::plan::Plan;
use crate::policy;

use super::RunError;
use super::act::{TAG_RUN, TAG_SOURCE_VOLUME, TAG_STEP, delete_snapshot_quietly};
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

/// Cleans up `run_id`. `plan`, when given, supplies regions, accounts and the role
/// for a run the state does not know (it is then found by its tags).
pub async fn cleanup(
    store: &Store,
    cloud: &dyn Cloud,
    clock: &dyn Clock,
    run_id: &str,
    plan: Option<&Plan>,
) -> Result<CleanupSummary, RunError> {
    let identity = retrying(clock, || cloud.caller_identity(Side::Source))
        .await
        .map_err(|e| RunError::Cloud { what: "reading the caller identity".into(), source: e })?;
    let (mut record, mut journal) = match store.load(run_id).await {
        Ok(r) => {
            let j = store.reopen(&r).await?;
            (r, j)
        }
        Err(StoreError::NoSuchRun(_)) => {
            let Some(plan) = plan else {
                return Err(RunError::Usage(format!(
                    "no run {run_id} in the state dir; to clean it up from its tags in AWS, name its plan: snapferry cleanup --plan PLAN {run_id}"
                )));
            };
            let r = from_tags(cloud, clock, plan, run_id, &identity.account).await?;
            let j = store.create_or_reopen(&r).await?;
            (r, j)
        }
        Err(e) => return Err(e.into()),
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

    let mut summary = CleanupSummary { run_id: run_id.to_owned(), grant: "none".into(), ..Default::default() };
    let source_region = record.meta.source_region.clone();
    let src = Loc::new(Side::Source, &source_region);
    let targets = record.meta.targets();
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

    // What AWS holds of this run, including what a lost answer left unrecorded.
    let mut survey = Survey::default();
    match adopt::survey(cloud, clock, &record.meta.plan, &src, &dsts).await {
        Ok(s) => survey = s,
        Err(e) => summary.errors.push(format!(
            "listing the run's resources: {e}; only the snapshots the state names are cleaned up, and none a pending copy may still read from"
        )),
    }
    let listed = summary.errors.is_empty();
    let of_run = |s: &&Snapshot, step: &str| {
        s.tags.get(TAG_RUN).map(String::as_str) == Some(run_id)
            && s.tags.get(TAG_STEP).map(String::as_str) == Some(step)
    };

    // Chains of this run that a later run carries on unfinished are that run's now:
    // its pending copy reads their snapshots. They are left alone.
    let carriers = carriers_of(store, run_id).await?;
    // Per source volume: its copies (one per target) and the intermediates they read.
    let mut sources: Vec<crate::ids::VolumeId> = vec![];
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
        let units: Vec<usize> =
            (0..record.volumes.len()).filter(|i| record.volumes[*i].source_volume == source_id).collect();
        // The unit holding the source side: the lead, else the first.
        let lead = units.iter().copied().find(|i| !record.volumes[*i].follower).unwrap_or(units[0]);
        let v = record.volumes[lead].clone();
        let source = v.source_volume.as_str();
        let mine = |s: &&Snapshot| s.tags.get(TAG_SOURCE_VOLUME).map(String::as_str) == Some(source);

        // 1. Stop this volume's copies that are still pending (or failed) in each
        // target account: they read from the shared snapshot.
        let mut copy_blocks = false;
        for (t, held) in survey.targets.iter().enumerate() {
            let mut copies: Vec<&Snapshot> = held.snapshots.iter().filter(|s| of_run(s, "copy") && mine(s)).collect();
            copies.retain(|s| s.state != SnapshotState::Completed);
            for c in copies {
                match retrying(clock, || delete_snapshot_quietly(cloud, &dsts[t], &c.id)).await {
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
        // Without a listing of the target side, a copy the state says is under way
        // may still read from the shared snapshot.
        let copy_may_run = units.iter().any(|i| {
            let u = &record.volumes[*i];
            matches!(u.step, Step::Lock | Step::WaitCopy) || (u.step == Step::Copy && u.in_flight) || failed_at_copy(u)
        });
        if !listed && copy_may_run {
            copy_blocks = true;
        }

        // 2. The intermediates: the re-encrypted one first (it may still be reading
        // from the source snapshot, and deleting it stops it), then the source one.
        let mut reenc: BTreeSet<SnapshotId> = v.reencrypted_snapshot.iter().cloned().collect();
        reenc
            .extend(survey.source_snapshots.iter().filter(|s| of_run(s, "reencrypt") && mine(s)).map(|s| s.id.clone()));
        let mut snaps: BTreeSet<SnapshotId> = v.source_snapshot.iter().cloned().collect();
        snaps.extend(survey.source_snapshots.iter().filter(|s| of_run(s, "snapshot") && mine(s)).map(|s| s.id.clone()));
        let mut kept: Vec<SnapshotId> = vec![];
        let mut reenc_left = false;
        for (group, ids) in [("reencrypt", reenc), ("snapshot", snaps)] {
            for id in ids {
                // The shared snapshot of a copy still under way must outlive it.
                let shared = group == "reencrypt" || v.reencrypted_snapshot.is_none();
                if copy_blocks && shared {
                    kept.push(id);
                    continue;
                }
                if group == "snapshot" && reenc_left {
                    summary.errors.push(format!(
                        "snapshot {id} is kept: the re-encryption copy made from it could not be deleted"
                    ));
                    kept.push(id);
                    continue;
                }
                match retrying(clock, || delete_snapshot_quietly(cloud, &src, &id)).await {
                    Ok(()) => summary.deleted_snapshots.push(id.to_string()),
                    Err(e) => {
                        // A snapshot that cannot be deleted (in use by an AMI, say) is at
                        // least no longer shared.
                        if !share_with.is_empty()
                            && retrying(clock, || cloud.unshare_snapshot(&src, &id, &share_with)).await.is_ok()
                        {
                            summary.unshared_snapshots.push(id.to_string());
                        }
                        summary.errors.push(format!("snapshot {id}: {e}; delete it by hand or run cleanup again"));
                        if group == "reencrypt" {
                            reenc_left = true;
                        }
                        kept.push(id);
                    }
                }
            }
        }
        if copy_blocks && !kept.is_empty() && !summary.errors.iter().any(|e| e.contains("is still pending")) {
            summary.errors.push(format!(
                "volume {source}: the snapshots {} are kept while a copy may still read from them; run cleanup again once the copy ended",
                kept.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
            ));
        }

        for i in units {
            let v = record.volumes[i].clone();
            let mut n = engine::stopped_by_cleanup(&v, clock.now_ms());
            n.source_snapshot = v.source_snapshot.clone().filter(|s| kept.contains(s));
            n.reencrypted_snapshot = v.reencrypted_snapshot.clone().filter(|s| kept.contains(s));
            if n.source_snapshot.is_none() && n.reencrypted_snapshot.is_none() {
                n.shared = false;
            }
            if n != v {
                record.volumes[i] = n;
                journal.volume(i, &record.volumes[i])?;
            }
        }
    }

    // Per target account, its statement: revoked unless another unfinished run on the
    // same key for the same account, of whichever plan, may still rely on it.
    let mut outcomes = vec![];
    for account in &share_with {
        let Some((key, g)) = grant_of(&record.meta, plan, account, &source_region) else { continue };
        let others: Vec<String> = store
            .list()
            .await?
            .into_iter()
            .filter(|r| {
                r.meta.run_id != run_id
                    && !r.meta.cleaned_up
                    && r.meta.status != RunStatus::Succeeded
                    && r.meta.source_key_arn.as_ref() == Some(&key)
                    && r.meta.targets().iter().any(|t| t.account.as_ref() == Some(&g.target_account))
            })
            .map(|r| r.meta.run_id)
            .collect();
        let label = if share_with.len() > 1 { format!("{account}: ") } else { String::new() };
        if !others.is_empty() {
            outcomes.push(format!("{label}kept (needed by {})", others.join(", ")));
        } else {
            match revoke(cloud, clock, &src, &key, &g).await {
                Ok(changed) => {
                    outcomes.push(format!("{label}{}", if changed { "revoked" } else { "already gone" }));
                    let sid = g.sid();
                    for gr in record.meta.grant.iter_mut().chain(record.meta.more_grants.iter_mut()) {
                        if gr.sid == sid {
                            gr.revoked = true;
                        }
                    }
                }
                Err(e) => summary.errors.push(format!("key policy of {key}: {e}")),
            }
        }
    }
    if !outcomes.is_empty() {
        summary.grant = outcomes.join("; ");
    }
    record.meta.cleaned_up = summary.errors.is_empty();
    record.meta.updated_ms = clock.now_ms();
    if record.meta.status == RunStatus::Running {
        record.meta.status = RunStatus::Interrupted;
    }
    journal.meta(&record.meta)?;
    journal.compact(&record).await?;
    Ok(summary)
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

fn failed_at_copy(v: &crate::engine::VolumeRun) -> bool {
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
    let dsts = super::lifecycle::target_locs(plan);
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
