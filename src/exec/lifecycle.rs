//! The life of one invocation of a run: take the plan's lock, find what to carry on
//! (the state's unfinished run, or one adopted from AWS's tags), refuse a plan that
//! moved a run's resources, preflight, put failed volumes back where they stood,
//! grant the target account use of the source key, drive every volume (the loop is in
//! `runner`), and end: status, report, retention.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use tokio::sync::watch;

use crate::checkpoint::{FORMAT_VERSION, GrantRecord, RunMeta, RunRecord, RunStatus, StoreError, TargetMeta};
use crate::cloud::{CloudError, ErrorKind, Loc, Side};
use crate::engine::{self, FailureKind, Step, VolumeRun};
use crate::ids::{KeyArn, VolumeId};
use crate::plan::Plan;
use crate::policy;

use super::act::{self, ActCtx, TargetCtx};
use super::adopt::{self, Shape};
use super::key_policy::{self, EditError};
use super::preflight::{Resolved, SourceVolume, preflight};
use super::recurring::{self, Recur};
use super::retry::retrying;
use super::runner::{Ended, RunConfig, Runner};
use super::sched::LOOKUP_SPACING_MS;
use super::{Env, RunError, RunReport};

/// Listings of the plan's tags when adopting a run whose resources are recent: a
/// resource made just before the state was lost can be missing from the first one
/// (eventual consistency), as a lookup after a crash must miss this often.
const ADOPT_LISTINGS: u32 = crate::engine::RECONCILE_LOOKUPS as u32;
/// Resources younger than this make adoption list again before it trusts a miss.
const RECENT_MS: i64 = 10 * 60_000;

/// Runs (or resumes) the plan until every volume ends or `shutdown` turns true.
/// Volumes that fail do not make this an `Err`: the report says which failed.
pub async fn run(cfg: RunConfig, env: Env, shutdown: watch::Receiver<bool>) -> Result<RunReport, RunError> {
    let plan = &cfg.plan;
    let _lock = env.store.lock_plan(plan.name.as_str()).await?;
    let clock = env.clock.clone();
    let cloud = env.cloud.clone();

    // A recurring plan (`every`, no --run-id) decides per volume what is due.
    let recurring = plan.options.every.is_some() && cfg.run_id.is_none();
    let previous = previous_run(&cfg, &env, recurring).await?;
    if let Some(p) = &previous
        && p.meta.status == RunStatus::Succeeded
        && !recurring
    {
        tracing::info!(run = %p.meta.run_id, "run already succeeded; nothing to do");
        prune_history(&env, plan, &p.meta.run_id).await;
        return Ok(RunReport::from_record(p));
    }

    let resolved =
        preflight(plan, cloud.as_ref(), clock.as_ref(), cfg.probe_permissions).await.map_err(RunError::Preflight)?;
    // Only a half-done run has resources a moved plan would leave behind.
    if let Some(p) = previous.as_ref().filter(|p| p.volumes.iter().any(|v| v.step != Step::Done)) {
        let moved = moved_fields(&p.meta, plan, &resolved);
        if !moved.is_empty() {
            return Err(RunError::PlanChanged { run_id: p.meta.run_id.clone(), fields: moved });
        }
    }
    let now = clock.now_ms();
    let src = Loc::new(Side::Source, &plan.source.region);
    let dsts = target_locs(plan);

    let previous = match recurring {
        true => recur(&cfg, &env, &resolved, previous, &src, &dsts, now).await?,
        false => previous.map(|r| Carry::Resume(Box::new(r))),
    };
    let mut record = match previous {
        Some(Carry::Start(volumes)) => {
            let run_id = new_run_id(plan.name.as_str(), now);
            tracing::info!(run = %run_id, due = volumes.iter().filter(|v| v.chain.is_none()).count(), "starting a round of the recurring plan");
            new_record(&cfg, run_id, now, volumes)
        }
        Some(Carry::Resume(r)) => {
            let mut r = *r;
            tracing::info!(run = %r.meta.run_id, "resuming run");
            r.meta.status = RunStatus::Running;
            r.meta.updated_ms = now;
            r.meta.finished_ms = None;
            r
        }
        None => {
            let adopted = adopt_from_tags(&cfg, &env, &src, &dsts).await?;
            let (run_id, created_ms, volumes) = match adopted {
                Some(found) => {
                    tracing::warn!(
                        run = %found.run_id,
                        volumes = found.volumes.len(),
                        "the state has no record of this plan's unfinished run; carrying it on from its tagged resources"
                    );
                    (found.run_id, found.created_ms, found.volumes)
                }
                None => {
                    let run_id = match &cfg.run_id {
                        Some(id) => id.to_string(),
                        None => new_run_id(plan.name.as_str(), now),
                    };
                    tracing::info!(run = %run_id, volumes = resolved.volumes.len(), "starting run");
                    (run_id, now, vec![])
                }
            };
            new_record(&cfg, run_id, created_ms.min(now), volumes)
        }
    };
    record.meta.source_account = Some(resolved.source_identity.account.to_string());
    record.meta.source_key_arn = Some(resolved.source_key.arn.to_string());
    record.meta.set_targets(target_metas(plan, &resolved));
    record.meta.every_ms = plan.options.every.map(|d| d.as_millis() as i64);
    record.meta.carries = Some(record.carried_runs());
    // Volumes the plan picks now and the run does not have yet join it, one volume run
    // per target: the first leads, the others follow.
    let targets = plan.targets.len() as u8;
    let known: HashSet<&VolumeId> = record.volumes.iter().map(|v| &v.source_volume).collect();
    let new: Vec<&VolumeId> = resolved
        .volumes
        .iter()
        .map(|sv| &sv.volume.id)
        .chain(&resolved.missing)
        .filter(|id| !known.contains(id))
        .collect();
    record.volumes.reserve_exact(new.len() * usize::from(targets));
    for id in new {
        for t in 0..targets {
            record.volumes.push(VolumeRun::for_target(id.clone(), t, t > 0));
        }
    }
    let mut journal = env.store.create_or_reopen(&record).await?;

    let actx = ActCtx {
        plan: plan.name.to_string(),
        run_id: record.meta.run_id.clone(),
        source_region: plan.source.region.clone(),
        source_key: resolved.source_key.arn.clone(),
        share_with: resolved.share_with(),
        targets: plan
            .targets
            .iter()
            .zip(&resolved.targets)
            .map(|(t, r)| TargetCtx {
                region: t.region.clone(),
                account: r.account.clone(),
                key: r.key.arn.clone(),
                availability_zone: t.availability_zone.clone(),
                lock: t.lock,
            })
            .collect(),
        extra_tags: plan.options.tags.clone(),
        copy_within_minutes: plan.options.copy_within.map(|c| c.minutes()),
        verify: plan.options.verify,
        pacer: (!clock.is_virtual()).then(|| std::sync::Arc::new(crate::exec::verify::Pacer::default())),
    };

    // Failed volumes go back where they stood. Only what AWS reported in `error` is
    // replaced (and deleted first, so the retry leaves no orphan); anything else is
    // kept and waited on again.
    for i in 0..record.volumes.len() {
        if record.volumes[i].step == Step::Failed {
            discard_errored(cloud.as_ref(), clock.as_ref(), &actx, &record.volumes[i]).await;
            record.volumes[i].revive();
            journal.volume(i, &record.volumes[i])?;
        }
    }
    // A recurring plan's listed volume that is gone fails alone, with nothing made.
    for id in &resolved.missing {
        let gone: Vec<usize> = (0..record.volumes.len())
            .filter(|i| {
                let v = &record.volumes[*i];
                &v.source_volume == id && v.step == Step::Snapshot && !v.in_flight && !v.fresh
            })
            .collect();
        for i in gone {
            record.volumes[i] = engine::fail(
                &record.volumes[i],
                FailureKind::Gone,
                format!("source volume {id} no longer exists in {}", plan.source.region),
                Some("restore the volume, or remove it from the plan; the other volumes go on".into()),
                now,
            );
            let v = &record.volumes[i];
            tracing::error!(
                volume = %v.source_volume,
                target = v.target,
                step = Step::Snapshot.as_str(),
                error = v.failure.as_ref().map(|f| f.message.as_str()).unwrap_or(""),
                hint = v.failure.as_ref().and_then(|f| f.hint.as_deref()).unwrap_or(""),
                "volume failed"
            );
            journal.volume(i, &record.volumes[i])?;
        }
    }
    journal.meta(&record.meta)?;
    journal.sync().await?;

    if resolved.cross_account {
        let grant = ensure_grant(&env, plan, &resolved, &mut record.meta).await;
        if let Err(e) = grant {
            record.meta.status = RunStatus::Failed;
            record.meta.finished_ms = Some(clock.now_ms());
            journal.meta(&record.meta)?;
            journal.sync().await?;
            return Err(e);
        }
        journal.meta(&record.meta)?;
        journal.sync().await?;
    }

    let actx = Arc::new(actx);
    let mut r = Runner::new(&cfg, env.clone(), &resolved, actx.clone(), record, journal);
    let ended = r.drive(shutdown.clone()).await;
    let ended = match ended {
        Ok(Ended::Finished) if resolved.cross_account => {
            let (record, journal) = r.into_parts();
            retry_after_lost_grant(&cfg, &env, &resolved, &actx, record, journal, shutdown).await
        }
        Ok(ended) => {
            let (record, journal) = r.into_parts();
            Ok((record, journal, ended))
        }
        Err(e) => Err(e),
    };
    if let Some(p) = &cfg.progress {
        p.finish();
    }
    let (mut record, mut journal, ended) = ended?;
    // The locks as they are now, for the report, `status` and the metrics.
    let locks: Vec<_> = plan.targets.iter().map(|t| t.lock).collect();
    if plan.locks()
        && let Err(e) =
            super::locks::refresh(cloud.as_ref(), clock.as_ref(), &target_locs(plan), &locks, &mut record).await
    {
        tracing::warn!(error = %e, "could not read the locks of the copies; the report shows them as last recorded");
    }

    let now = clock.now_ms();
    let all_done = record.volumes.iter().all(|v| v.step == Step::Done);
    record.meta.status = match &ended {
        Ended::Finished if all_done => RunStatus::Succeeded,
        Ended::Finished => RunStatus::Failed,
        Ended::Interrupted | Ended::Halted(_) => RunStatus::Interrupted,
    };
    record.meta.updated_ms = now;
    if matches!(ended, Ended::Finished) {
        record.meta.finished_ms = Some(now);
    }
    record.meta.carries = Some(record.carried_runs());
    journal.meta(&record.meta)?;
    journal.compact(&record).await?;
    // A failed run is an ERROR, so an alert on the log level sees it.
    if record.meta.status == RunStatus::Failed {
        tracing::error!(run = %record.meta.run_id, status = record.meta.status.as_str(), "run ended");
    } else {
        tracing::info!(run = %record.meta.run_id, status = record.meta.status.as_str(), "run ended");
    }
    if let Ended::Halted(e) = ended {
        return Err(RunError::Credentials { run_id: record.meta.run_id.clone(), source: e });
    }
    let mut report = RunReport::from_record(&record);
    let source_key = resolved.source_key.arn.as_str();
    let dsts = target_locs(plan);
    let by_id: HashMap<&str, &SourceVolume> =
        resolved.volumes.iter().map(|sv| (sv.volume.id.as_str(), sv.as_ref())).collect();
    for v in &mut report.volumes {
        if let Some(sv) = by_id.get(v.source_volume.as_str()) {
            v.next_copy = Some(super::report::copy_kind(&sv.volume, source_key));
        }
    }
    // Retention once the invocation ended with its volumes settled: per volume whose
    // copy finished (a failing volume keeps all its copies), never after a round that
    // made nothing.
    let made_something = record.volumes.iter().any(|v| !v.fresh);
    // With locks, every finished invocation prunes: a copy kept for its lock goes on
    // the first one after the lock expired, even when that round made nothing.
    if let (true, Ended::Finished) = (made_something || plan.locks(), &ended) {
        if let Some(keep) = plan.options.keep {
            // Per target: its copies and volumes, in its account and region.
            for (t, dst) in dsts.iter().enumerate() {
                let of_target: Vec<VolumeRun> =
                    record.volumes.iter().filter(|v| usize::from(v.target) == t).cloned().collect();
                let locked = plan.targets.get(t).is_some_and(|x| x.lock.is_some());
                match super::retention::prune(
                    cloud.as_ref(),
                    clock.as_ref(),
                    dst,
                    plan.name.as_str(),
                    keep,
                    locked,
                    &of_target,
                )
                .await
                {
                    Ok(p) => {
                        let r = report.retention.get_or_insert_with(Default::default);
                        r.snapshots.extend(p.snapshots);
                        r.volumes.extend(p.volumes);
                        r.in_use.extend(p.in_use);
                        r.locked.extend(p.locked);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, region = %dst.region, "retention failed; the copies of this run are complete, older ones were not pruned");
                        let msg = format!("retention in {} ({}): {e}", dst.region, dst.side);
                        report.retention_error = Some(match report.retention_error.take() {
                            Some(before) => format!("{before}; {msg}"),
                            None => msg,
                        });
                    }
                }
            }
        }
        if made_something && plan.options.cleanup && plan.options.keep_source > 0 {
            let kept = plan.options.keep_source;
            match super::retention::prune_source(
                cloud.as_ref(),
                clock.as_ref(),
                &src,
                plan.name.as_str(),
                kept,
                &record.volumes,
            )
            .await
            {
                Ok(deleted) => {
                    if !deleted.is_empty() {
                        report.retention.get_or_insert_with(Default::default).source_snapshots = deleted;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "source retention failed; older source snapshots were not pruned");
                    report.retention_error = Some(format!("source retention in {}: {e}", plan.source.region));
                }
            }
        }
    }
    prune_history(&env, plan, &record.meta.run_id).await;
    Ok(report)
}

/// True for a copy that AWS ended in `error` because the target account could not
/// use the source key: the statement our grant added may have been lost since.
fn lost_key_access(v: &VolumeRun) -> bool {
    v.step == Step::Failed
        && v.failure.as_ref().is_some_and(|f| {
            f.kind == FailureKind::ResourceError
                && f.step == Step::WaitCopy
                && f.message.to_ascii_lowercase().contains("given key id is not accessible")
        })
}

/// Copies that failed with "Given key ID is not accessible" first make the run read
/// the source key policy: where the statement for their target account is missing
/// (lost to a concurrent writer of the policy, which KMS cannot prevent), it is put
/// back, with a warning naming the key, and those copies are made once more in this
/// invocation. A policy that still holds the statement leaves the failures as they
/// are: the cause is elsewhere (the target role's IAM policy, the target key).
async fn retry_after_lost_grant(
    cfg: &RunConfig,
    env: &Env,
    resolved: &Resolved,
    actx: &Arc<ActCtx>,
    mut record: RunRecord,
    mut journal: crate::checkpoint::Journal,
    shutdown: watch::Receiver<bool>,
) -> Result<(RunRecord, crate::checkpoint::Journal, Ended), RunError> {
    let lost: Vec<usize> = (0..record.volumes.len()).filter(|i| lost_key_access(&record.volumes[*i])).collect();
    let accounts: HashSet<String> =
        lost.iter().map(|i| actx.target(record.volumes[*i].target).account.to_string()).collect();
    let grants: Vec<policy::Grant> =
        plan_grants(&cfg.plan, resolved).into_iter().filter(|g| accounts.contains(g.target_account.as_str())).collect();
    if grants.is_empty() {
        return Ok((record, journal, Ended::Finished));
    }
    let key = &resolved.source_key.arn;
    let restored = match put_grants(env, &actx.src(), key, &grants).await {
        Ok(restored) => restored,
        Err(e) => {
            tracing::warn!(key = %key, error = %e, "could not check the source key policy after copies lost access to the key");
            false
        }
    };
    if !restored {
        return Ok((record, journal, Ended::Finished));
    }
    let named = grants.iter().map(|g| g.target_account.as_str()).collect::<Vec<_>>().join(", ");
    tracing::warn!(
        key = %key,
        accounts = %named,
        copies = lost.len(),
        "the policy of the source key had lost snapferry's statement for the target account (another writer replaced it); it is put back and those copies are made once more"
    );
    let (cloud, clock) = (env.cloud.as_ref(), env.clock.as_ref());
    for i in lost {
        discard_errored(cloud, clock, actx, &record.volumes[i]).await;
        record.volumes[i].revive();
        journal.volume(i, &record.volumes[i])?;
    }
    journal.sync().await?;
    let mut r = Runner::new(cfg, env.clone(), resolved, actx.clone(), record, journal);
    let ended = r.drive(shutdown).await?;
    let (record, journal) = r.into_parts();
    Ok((record, journal, ended))
}

/// Removes the plan's finished runs beyond `options.history` from the state. The run's
/// result stands whatever happens here: what is left is removed next time.
async fn prune_history(env: &Env, plan: &Plan, current: &str) {
    if let Err(e) = super::history::prune(&env.store, plan.name.as_str(), plan.options.history, current).await {
        tracing::warn!(error = %e, plan = %plan.name, "could not remove the plan's oldest runs from the state; the next invocation tries again");
    }
}

/// What a recurring plan carries on.
enum Carry {
    /// The run goes on as it is.
    Resume(Box<RunRecord>),
    /// A new run with these volumes (due, carried and fresh).
    Start(Vec<VolumeRun>),
}

/// The run this invocation carries on, from the state: the one `--run-id` names, or
/// the plan's newest run when it did not succeed and was not cleaned up (for a
/// recurring plan, whatever its status: freshness is read from it).
async fn previous_run(cfg: &RunConfig, env: &Env, recurring: bool) -> Result<Option<RunRecord>, RunError> {
    let plan = cfg.plan.name.as_str();
    let previous = match &cfg.run_id {
        Some(id) => match env.store.load(id.as_str()).await {
            Ok(r) => Some(r),
            Err(StoreError::NoSuchRun(_)) => None,
            Err(e) => return Err(e.into()),
        },
        None => env
            .store
            .latest_of_plan(plan)
            .await?
            .filter(|r| (recurring || r.meta.status != RunStatus::Succeeded) && !r.meta.cleaned_up),
    };
    if let Some(p) = &previous
        && p.meta.plan != plan
    {
        return Err(RunError::Usage(format!(
            "run {} belongs to plan {}, not {plan}; name a run of this plan with --run-id, or none",
            p.meta.run_id, p.meta.plan
        )));
    }
    Ok(previous)
}

/// A recurring plan's work this invocation: per volume, carry on, copy anew or leave
/// fresh. Without any run in the state, the chains are found by their tags.
async fn recur(
    cfg: &RunConfig,
    env: &Env,
    resolved: &Resolved,
    previous: Option<RunRecord>,
    src: &Loc,
    dsts: &[Loc],
    now: i64,
) -> Result<Option<Carry>, RunError> {
    let plan = &cfg.plan;
    let mut wanted: Vec<_> =
        resolved.volumes.iter().map(|v| v.volume.id.clone()).chain(resolved.missing.clone()).collect();
    // In the plan's order, selected volumes after the listed ones.
    let mut listed: HashMap<&VolumeId, usize> = HashMap::new();
    for (i, id) in plan
        .volumes
        .iter()
        .filter_map(|s| match &s.pick {
            crate::plan::Pick::Id(id) => Some(id),
            crate::plan::Pick::Selector(_) => None,
        })
        .enumerate()
    {
        listed.entry(id).or_insert(i);
    }
    wanted.sort_by_key(|id| listed.get(id).copied().unwrap_or(usize::MAX));
    let (volumes, run_id) = match &previous {
        Some(r) => (r.volumes.clone(), Some(r.meta.run_id.clone())),
        None => {
            let shape = Shape {
                create_volume: plan.options.create_volume,
                cleanup: plan.options.cleanup,
                verify: plan.options.verify.is_some(),
            };
            let survey = adopt::survey(env.cloud.as_ref(), env.clock.as_ref(), plan.name.as_str(), src, dsts)
                .await
                .map_err(|e| RunError::Cloud {
                    what: format!("listing the resources tagged snapferry:plan={} to learn what is fresh", plan.name),
                    source: e,
                })?;
            (adopt::newest_chains(&survey, shape, now), None)
        }
    };
    let targets = plan.targets.len() as u8;
    Ok(Some(match recurring::plan(&volumes, run_id.as_deref(), &wanted, targets, &plan.options, now) {
        Recur::Resume => {
            let mut r = previous.expect("resume needs a previous run");
            for v in r.volumes.iter_mut().filter(|v| v.step == Step::Done) {
                v.fresh = true;
            }
            Carry::Resume(Box::new(r))
        }
        Recur::Start(volumes) => Carry::Start(volumes),
    }))
}

fn new_record(cfg: &RunConfig, run_id: String, created_ms: i64, volumes: Vec<VolumeRun>) -> RunRecord {
    let plan = &cfg.plan;
    RunRecord {
        meta: RunMeta {
            format_version: FORMAT_VERSION,
            run_id,
            plan: plan.name.to_string(),
            plan_file: cfg.plan_file.clone(),
            status: RunStatus::Running,
            created_ms,
            updated_ms: created_ms,
            finished_ms: None,
            source_account: None,
            target_account: None,
            source_region: plan.source.region.to_string(),
            target_region: plan.targets[0].region.to_string(),
            cross_account: false,
            source_key_arn: None,
            target_key_arn: None,
            target_role_arn: None,
            target_external_id: None,
            every_ms: None,
            target_list: vec![],
            more_grants: vec![],
            grant: None,
            simulated: cfg.simulated,
            cleaned_up: false,
            carries: None,
        },
        volumes,
    }
}

/// With no unfinished run in the state: the plan's newest run in AWS, when its tagged
/// resources show it unfinished and the state does not know it as succeeded or
/// cleaned up.
async fn adopt_from_tags(
    cfg: &RunConfig,
    env: &Env,
    src: &Loc,
    dsts: &[Loc],
) -> Result<Option<adopt::Found>, RunError> {
    let plan = &cfg.plan;
    let clock = env.clock.as_ref();
    let cloud = env.cloud.as_ref();
    let shape = Shape {
        create_volume: plan.options.create_volume,
        cleanup: plan.options.cleanup,
        verify: plan.options.verify.is_some(),
    };
    let listing_err = |e: CloudError| RunError::Cloud {
        what: format!("listing the resources tagged snapferry:plan={} to carry on a run the state has lost", plan.name),
        source: e,
    };
    let mut survey = adopt::survey(cloud, clock, plan.name.as_str(), src, dsts).await.map_err(listing_err)?;
    let recent = survey.newest_ms().is_some_and(|t| clock.now_ms() - t < RECENT_MS);
    if recent {
        // Something was made moments ago: what was made just after it may not be
        // listed yet. Ask again, spaced, before trusting a miss.
        for n in 1..ADOPT_LISTINGS {
            clock.sleep_until(clock.now_ms() + LOOKUP_SPACING_MS * (1 << (n - 1))).await;
            survey.merge(adopt::survey(cloud, clock, plan.name.as_str(), src, dsts).await.map_err(listing_err)?);
        }
    }
    let Some(found) = adopt::infer(&survey, shape, clock.now_ms()) else { return Ok(None) };
    if !found.unfinished {
        return Ok(None);
    }
    if let Some(id) = &cfg.run_id
        && id.as_str() != found.run_id
    {
        return Ok(None);
    }
    match env.store.load(&found.run_id).await {
        Ok(known) if known.meta.status == RunStatus::Succeeded || known.meta.cleaned_up => return Ok(None),
        Ok(_) | Err(StoreError::NoSuchRun(_)) => {}
        Err(e) => return Err(e.into()),
    }
    Ok(Some(found))
}

/// The fields whose change would move a half-done run's resources: its regions,
/// accounts, keys and roles, and its targets' number. Anything else (timeouts, tags,
/// limits) may change.
fn moved_fields(meta: &RunMeta, plan: &Plan, resolved: &Resolved) -> Vec<String> {
    let mut moved = vec![];
    let mut check = |field: &str, was: Option<&str>, now: Option<&str>| {
        if let Some(was) = was
            && Some(was) != now
        {
            moved.push(format!("{field} (was {was}, now {})", now.unwrap_or("none")));
        }
    };
    check("source.region", Some(&meta.source_region), Some(plan.source.region.as_str()));
    check("source.account", meta.source_account.as_deref(), Some(resolved.source_identity.account.as_str()));
    check("source.kms_key", meta.source_key_arn.as_deref(), Some(resolved.source_key.arn.as_str()));
    let was = meta.targets();
    let now = target_metas(plan, resolved);
    if was.len() != now.len() {
        moved.push(format!("targets (was {}, now {})", was.len(), now.len()));
        return moved;
    }
    for (i, (w, n)) in was.iter().zip(&now).enumerate() {
        let name = if plan.fan_out { format!("targets[{i}]") } else { "target".to_owned() };
        check(&format!("{name}.region"), Some(&w.region), Some(&n.region));
        check(&format!("{name}.account"), w.account.as_deref(), n.account.as_deref());
        check(&format!("{name}.kms_key"), w.key_arn.as_deref(), n.key_arn.as_deref());
        check(&format!("{name}.role_arn"), w.role_arn.as_deref(), n.role_arn.as_deref());
    }
    moved
}

/// Where each target's calls go, in the plan's order.
pub(crate) fn target_locs(plan: &Plan) -> Vec<Loc> {
    plan.targets.iter().enumerate().map(|(i, t)| Loc::new(Side::Target(i as u8), &t.region)).collect()
}

/// What the checkpoint keeps of each target.
fn target_metas(plan: &Plan, resolved: &Resolved) -> Vec<TargetMeta> {
    plan.targets
        .iter()
        .zip(&resolved.targets)
        .map(|(t, r)| TargetMeta {
            account: Some(r.account.to_string()),
            region: t.region.to_string(),
            key_arn: Some(r.key.arn.to_string()),
            cross_account: r.cross_account,
            role_arn: t.role_arn.as_ref().filter(|_| r.cross_account).map(|r| r.to_string()),
            external_id: t.external_id.clone().filter(|_| r.cross_account),
            lock: t.lock.map(|l| l.mode.to_string()),
        })
        .collect()
}

/// Deletes what a failed step left in state `error` (or no longer needs: a volume
/// that errored), so that replacing it leaves no orphan. Nothing else is deleted:
/// a resource that was only waited on too long is kept and waited on again.
async fn discard_errored(
    cloud: &dyn crate::cloud::Cloud,
    clock: &dyn crate::clock::Clock,
    actx: &ActCtx,
    v: &VolumeRun,
) {
    let Some(f) = &v.failure else { return };
    if f.kind != FailureKind::ResourceError {
        return;
    }
    let (src, dst) = (actx.src(), actx.dst(v.target));
    let result = match f.step {
        Step::WaitCopy => match &v.target_snapshot {
            Some(s) => retrying(clock, || act::delete_snapshot_quietly(cloud, &dst, s)).await,
            None => Ok(()),
        },
        Step::WaitReencrypt => match &v.reencrypted_snapshot {
            Some(s) => retrying(clock, || act::delete_snapshot_quietly(cloud, &src, s)).await,
            None => Ok(()),
        },
        Step::WaitSnapshot => match &v.source_snapshot {
            Some(s) => retrying(clock, || act::delete_snapshot_quietly(cloud, &src, s)).await,
            None => Ok(()),
        },
        Step::WaitVolume => match &v.target_volume {
            Some(id) => {
                retrying(clock, || async {
                    match cloud.delete_volume(&dst, id).await {
                        Err(e) if e.kind == ErrorKind::NotFound => Ok(()),
                        other => other,
                    }
                })
                .await
            }
            None => Ok(()),
        },
        _ => Ok(()),
    };
    if let Err(e) = result {
        tracing::warn!(volume = %v.source_volume, error = %e, "could not delete what AWS reported in state error; delete it by hand");
    }
}

/// `<plan>-<UTC yyyymmddThhmmssZ>-<4 hex>`: sortable, readable, unique.
pub fn new_run_id(plan: &str, now_ms: i64) -> String {
    let ts = jiff::Timestamp::from_millisecond(now_ms).unwrap_or(jiff::Timestamp::UNIX_EPOCH);
    let mut r = [0u8; 2];
    let _ = aws_lc_rs::rand::fill(&mut r);
    format!("{plan}-{}-{:02x}{:02x}", ts.strftime("%Y%m%dT%H%M%SZ"), r[0], r[1])
}

/// Adds each cross-account target's statement to the source key policy, once per
/// run, all in one PutKeyPolicy (read, merge, write, read back: `key_policy::edit`).
async fn ensure_grant(env: &Env, plan: &Plan, resolved: &Resolved, meta: &mut RunMeta) -> Result<(), RunError> {
    let loc = Loc::new(Side::Source, &plan.source.region);
    let key = &resolved.source_key.arn;
    let grants = plan_grants(plan, resolved);
    if grants.is_empty() {
        return Ok(());
    }
    let named = grants.iter().map(|g| g.target_account.as_str()).collect::<Vec<_>>().join(", ");
    let added = put_grants(env, &loc, key, &grants).await?;
    let mut records =
        grants.iter().map(|g| GrantRecord { key_arn: key.to_string(), sid: g.sid(), added, revoked: false });
    if meta.grant.is_none() || added {
        meta.grant = records.next();
        meta.more_grants = records.collect();
    }
    if added {
        tracing::info!(key = %key, accounts = %named, "granted the target accounts use of the source key");
    } else {
        tracing::info!(key = %key, accounts = %named, "key policy already grants the target accounts");
    }
    Ok(())
}

/// The statements the plan needs on the source key: one per cross-account target
/// account.
fn plan_grants(plan: &Plan, resolved: &Resolved) -> Vec<policy::Grant> {
    resolved
        .share_with()
        .iter()
        .map(|a| policy::Grant {
            plan: plan.name.clone(),
            target_account: a.clone(),
            partition: plan.source.region.partition(),
        })
        .collect()
}

/// Puts `grants` into the policy of `key` unless it holds them already; true when it
/// wrote the policy.
async fn put_grants(env: &Env, loc: &Loc, key: &KeyArn, grants: &[policy::Grant]) -> Result<bool, RunError> {
    // Every statement applied to one policy text: (new text, whether anything changed).
    let merge = |current: &str| -> Result<(String, bool), String> {
        let mut text = current.to_owned();
        let mut changed = false;
        for g in grants {
            let change = policy::ensure_grant(&text, g)
                .map_err(|e| format!("cannot grant account {} use of source key {key}: {e}", g.target_account))?;
            if change.changed {
                text = change.new_policy;
                changed = true;
            }
        }
        Ok((text, changed))
    };
    key_policy::edit(env.cloud.as_ref(), env.clock.as_ref(), loc, key, &merge).await.map_err(|e| match e {
        EditError::Cloud { call, source } => {
            let hint = if source.kind == ErrorKind::AccessDenied {
                "; the caller needs kms:GetKeyPolicy and kms:PutKeyPolicy on the source key (snapferry run PLAN --dry-run prints the statement to add by hand instead)"
            } else {
                ""
            };
            RunError::Cloud { what: format!("{call} of source key {key}{hint}"), source }
        }
        EditError::Merge(m) => RunError::Other(m),
        EditError::KeepsChanging => RunError::Other(format!(
            "the policy of source key {key} keeps changing while snapferry adds its statement; run again when other edits are done"
        )),
    })
}
