//! `snapferry cleanup RUN_ID`: undo what a run left on the source side. Deletes the
//! intermediate snapshots (which also ends their sharing) and revokes the run's
//! key-policy statement when no other unfinished run on that key still needs it.
//! The target side (copies and volumes) is what the run was for and stays.

use serde::Serialize;

use crate::checkpoint::{RunStatus, Store};
use crate::clock::Clock;
use crate::cloud::{Cloud, ErrorKind, Loc, Side};
use crate::ids::{AccountId, KeyArn, PlanName, Region};
use crate::policy;

use super::RunError;
use super::act::delete_snapshot_quietly;
use super::retry::retrying;

/// What cleanup did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CleanupSummary {
    pub run_id: String,
    pub deleted_snapshots: Vec<String>,
    pub unshared_snapshots: Vec<String>,
    /// `revoked`, `kept (needed by RUN...)`, `not added by this run` or `none`.
    pub grant: String,
    pub errors: Vec<String>,
}

pub async fn cleanup(
    store: &Store,
    cloud: &dyn Cloud,
    clock: &dyn Clock,
    run_id: &str,
) -> Result<CleanupSummary, RunError> {
    let mut record = store.load(run_id).await?;
    let mut journal = store.reopen(&record).await?;
    let mut summary = CleanupSummary { run_id: run_id.to_owned(), grant: "none".into(), ..Default::default() };
    let region = Region::parse(&record.meta.source_region)
        .map_err(|e| RunError::Other(format!("checkpoint of {run_id}: source region: {e}")))?;
    let loc = Loc::new(Side::Source, &region);
    let target: Option<AccountId> = record.meta.target_account.as_deref().and_then(|a| AccountId::parse(a).ok());

    for i in 0..record.volumes.len() {
        let v = record.volumes[i].clone();
        for id in v.intermediates() {
            match retrying(clock, || delete_snapshot_quietly(cloud, &loc, &id)).await {
                Ok(()) => summary.deleted_snapshots.push(id.to_string()),
                Err(e) => {
                    // A snapshot that cannot be deleted (in use by an AMI, say) is at
                    // least no longer shared.
                    if let (true, Some(t)) = (v.shared, &target)
                        && retrying(clock, || cloud.unshare_snapshot(&loc, &id, t)).await.is_ok()
                    {
                        summary.unshared_snapshots.push(id.to_string());
                    }
                    summary.errors.push(format!("snapshot {id}: {e}; delete it by hand"));
                }
            }
        }
        let mut n = v.clone();
        if !n.step.is_terminal() {
            n.step = crate::engine::Step::Failed;
            n.failure = Some(crate::engine::Failure {
                step: v.step,
                message: "stopped by snapferry cleanup".into(),
                hint: Some("start a new run of the plan".into()),
            });
        }
        n.source_snapshot = None;
        n.reencrypted_snapshot = None;
        n.shared = false;
        if n != v {
            record.volumes[i] = n;
            journal.volume(i, &record.volumes[i])?;
        }
    }

    if let Some(grant) = record.meta.grant.clone() {
        if !grant.added || grant.revoked {
            summary.grant = "not added by this run".into();
        } else {
            // Any other unfinished run on the same key and target account still needs it.
            let others: Vec<String> = store
                .list()
                .await?
                .into_iter()
                .filter(|r| {
                    r.meta.run_id != run_id
                        && !r.meta.cleaned_up
                        && r.meta.status != RunStatus::Succeeded
                        && r.meta.source_key_arn.as_deref() == Some(grant.key_arn.as_str())
                        && r.meta.target_account == record.meta.target_account
                })
                .map(|r| r.meta.run_id)
                .collect();
            if !others.is_empty() {
                summary.grant = format!("kept (needed by {})", others.join(", "));
            } else if let (Ok(key), Ok(plan), Some(t)) =
                (KeyArn::parse(&grant.key_arn), PlanName::parse(&record.meta.plan), target.clone())
            {
                let g = policy::Grant::new(plan, t, &region);
                match revoke(cloud, clock, &loc, &key, &g).await {
                    Ok(changed) => {
                        summary.grant = if changed { "revoked".into() } else { "already gone".into() };
                        if let Some(gr) = record.meta.grant.as_mut() {
                            gr.revoked = true;
                        }
                    }
                    Err(e) => summary.errors.push(format!("key policy of {key}: {e}")),
                }
            }
        }
    }
    record.meta.cleaned_up = true;
    record.meta.updated_ms = clock.now_ms();
    if record.meta.status == RunStatus::Running {
        record.meta.status = RunStatus::Interrupted;
    }
    journal.meta(&record.meta)?;
    journal.compact(&record).await?;
    Ok(summary)
}

async fn revoke(
    cloud: &dyn Cloud,
    clock: &dyn Clock,
    loc: &Loc,
    key: &KeyArn,
    g: &policy::Grant,
) -> Result<bool, String> {
    let current = retrying(clock, || cloud.get_key_policy(loc, key)).await.map_err(|e| e.to_string())?;
    let (next, changed) = match policy::revoke_grant(&current, g) {
        Ok(r) => r,
        Err(e) => return Err(e.to_string()),
    };
    if changed {
        retrying(clock, || cloud.put_key_policy(loc, key, &next)).await.map_err(|e| match e.kind {
            ErrorKind::AccessDenied => format!("{e}; the caller needs kms:PutKeyPolicy on the key"),
            _ => e.to_string(),
        })?;
    }
    Ok(changed)
}
