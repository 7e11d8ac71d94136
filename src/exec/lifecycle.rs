//! The life of one invocation of a run, as named phases: take the plan's lock (or
//! hold the caller's), read what the state has, preflight and build the run's scope
//! (refusing a plan that moved a run's resources), carry on what there is (the state's
//! unfinished run, or one adopted from AWS's tags), open the run (new volumes join,
//! failed ones go back where they stood), grant the target account use of the source
//! key, drive every volume (the loop is in `runner`), finish (status, checkpoint), and
//! report, with retention and history.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use tokio::sync::watch;

use crate::checkpoint::{GrantRecord, Journal, PlanLock, RunMeta, RunRecord, RunStatus, StoreError};
use crate::cloud::{CloudError, ErrorKind, Loc};
use crate::engine::{self, FailureKind, Step, VolumeRun};
use crate::ids::{KeyArn, VolumeId};
use crate::plan::Plan;
use crate::policy;

use super::act::{self, ActCtx};
use super::adopt;
use super::key_policy::{self, EditError};
use super::preflight::{SourceVolume, preflight};
use super::recurring::{self, Recur};
use super::retry::retrying;
use super::runner::{Ended, RunConfig, Runner};
use super::sched::LOOKUP_SPACING_MS;
use super::scope::RunScope;
use super::{Env, RunError, RunReport};

/// Listings of the plan's tags when adopting a run whose resources are recent: a
/// resource made just before the state was lost can be missing from the first one
/// (eventual consistency), as a lookup after a crash must miss this often.
const ADOPT_LISTINGS: u32 = crate::engine::RECONCILE_LOOKUPS as u32;
/// Resources younger than this make adoption list again before it trusts a miss.
const RECENT_MS: i64 = 10 * 60_000;

/// Runs (or resumes) the plan until every volume ends or `shutdown` turns true, under
/// the plan's lock, taken here. Volumes that fail do not make this an `Err`: the
/// report says which failed.
pub async fn run(cfg: RunConfig, env: Env, shutdown: watch::Receiver<bool>) -> Result<RunReport, RunError> {
    let lock = env.store.lock_plan(cfg.plan.name.as_str()).await?;
    run_locked(cfg, env, lock, shutdown).await
}

/// [`run`] under the plan's lock the caller took (the command line takes it before
/// any call to AWS, so a second process is refused first); released at the end.
///
/// The phases: what the state has; preflight and the run's scope (a moved plan
/// refused); resume or adopt; open the run (new volumes join, failed ones revived);
/// grant; drive; finish (status, checkpoint); report, retention and history.
pub async fn run_locked(
    cfg: RunConfig,
    env: Env,
    lock: PlanLock,
    shutdown: watch::Receiver<bool>,
) -> Result<RunReport, RunError> {
    let _lock = lock;
    // A recurring plan (`every`, no --run-id) decides per volume what is due.
    let recurring = cfg.plan.options.every.is_some() && cfg.run_id.is_none();
    let previous = previous_run(&cfg, &env, recurring).await?;
    if let Some(p) = &previous
        && p.meta.status == RunStatus::Succeeded
        && !recurring
    {
        tracing::info!(run = %p.meta.run_id, "run already succeeded; nothing to do");
        prune_history(&env, &cfg.plan, &p.meta.run_id).await;
        return Ok(RunReport::from_record(p));
    }
    let scope = resolve(&cfg, &env, previous.as_ref()).await?;
    let now = env.clock.now_ms();
    let record = carry_on(&cfg, &env, &scope, previous, recurring, now).await?;
    let actx = Arc::new(scope.act(&record.meta.run_id));
    let (mut record, mut journal) = open(&env, &scope, &actx, record, now).await?;
    if scope.resolved.cross_account {
        grant(&env, &scope, &mut record, &mut journal).await?;
    }
    let (record, journal, ended) = drive(&cfg, &env, &scope, &actx, record, journal, shutdown).await?;
    let (record, ended) = finish(&env, &scope, record, journal, ended).await?;
    let report = report(&env, &scope, &record, &ended).await;
    prune_history(&env, scope.plan, &record.meta.run_id).await;
    Ok(report)
}

/// Preflight, and the scope of this invocation built from what it resolved. A
/// half-done run whose plan now moves its resources is refused: only such a run has
/// resources the moved plan would leave behind.
async fn resolve<'a>(cfg: &'a RunConfig, env: &Env, previous: Option<&RunRecord>) -> Result<RunScope<'a>, RunError> {
    let (cloud, clock) = (env.cloud.as_ref(), env.clock.as_ref());
    let resolved = preflight(&cfg.plan, cloud, clock, cfg.probe_permissions).await.map_err(RunError::Preflight)?;
    let scope = RunScope::new(&cfg.plan, resolved, !clock.is_virtual());
    if let Some(p) = previous.filter(|p| p.volumes.iter().any(|v| v.step != Step::Done)) {
        let moved = moved_fields(&p.meta, &scope);
        if !moved.is_empty() {
            return Err(RunError::PlanChanged { run_id: p.meta.run_id.clone(), fields: moved });
        }
    }
    Ok(scope)
}

/// The run this invocation carries on: the state's (for a recurring plan, a new round
/// when something is due), else one adopted from the plan's tags, else a new one.
/// Its meta records what preflight resolved; the volumes the plan picks now and the
/// run does not have yet join it.
async fn carry_on(
    cfg: &RunConfig,
    env: &Env,
    scope: &RunScope<'_>,
    previous: Option<RunRecord>,
    recurring: bool,
    now: i64,
) -> Result<RunRecord, RunError> {
    let plan = scope.plan;
    let new_meta =
        |run_id: String, created_ms: i64| scope.meta(run_id, cfg.plan_file.clone(), cfg.simulated, created_ms);
    let previous = match recurring {
        true => recur(env, scope, previous, now).await?,
        false => previous.map(|r| Carry::Resume(Box::new(r))),
    };
    let mut record = match previous {
        Some(Carry::Start(volumes)) => {
            let run_id = new_run_id(plan.name.as_str(), now);
            tracing::info!(run = %run_id, due = volumes.iter().filter(|v| v.chain.is_none()).count(), "starting a round of the recurring plan");
            RunRecord { meta: new_meta(run_id, now), volumes }
        }
        Some(Carry::Resume(r)) => {
            let mut r = *r;
            tracing::info!(run = %r.meta.run_id, "resuming run");
            r.meta.status = RunStatus::Running;
            r.meta.updated_ms = now;
            r.meta.finished_ms = None;
            scope.stamp(&mut r.meta);
            r
        }
        None => {
            let adopted = adopt_from_tags(cfg, env, scope).await?;
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
                    tracing::info!(run = %run_id, volumes = scope.resolved.volumes.len(), "starting run");
                    (run_id, now, vec![])
                }
            };
            RunRecord { meta: new_meta(run_id, created_ms.min(now)), volumes }
        }
    };
    record.meta.carries = Some(record.carried_runs());
    join_new_volumes(scope, &mut record);
    Ok(record)
}

/// Volumes the plan picks now and the run does not have yet join it, one volume run
/// per target: the first leads, the others follow.
fn join_new_volumes(scope: &RunScope<'_>, record: &mut RunRecord) {
    let targets = scope.plan.targets.len() as u8;
    let known: HashSet<&VolumeId> = record.volumes.iter().map(|v| &v.source_volume).collect();
    let new: Vec<VolumeId> = scope.volume_ids().filter(|id| !known.contains(id)).cloned().collect();
    record.volumes.reserve_exact(new.len() * usize::from(targets));
    for id in new {
        for t in 0..targets {
            record.volumes.push(VolumeRun::for_target(id.clone(), t, t > 0));
        }
    }
}

/// Opens the run's journal and puts its volumes where this invocation starts them:
/// failed volumes back where they stood, and a recurring plan's listed volume that is
/// gone failed alone, with nothing made. Synced before anything else happens.
async fn open(
    env: &Env,
    scope: &RunScope<'_>,
    actx: &ActCtx,
    mut record: RunRecord,
    now: i64,
) -> Result<(RunRecord, Journal), RunError> {
    let mut journal = env.store.create_or_reopen(&record).await?;
    // Only what AWS reported in `error` is replaced (and deleted first, so the retry
    // leaves no orphan); anything else is kept and waited on again.
    for i in 0..record.volumes.len() {
        if record.volumes[i].step == Step::Failed {
            discard_errored(env.cloud.as_ref(), env.clock.as_ref(), actx, &record.volumes[i]).await;
            record.volumes[i].revive();
            journal.volume(i, &record.volumes[i])?;
        }
    }
    for id in &scope.resolved.missing {
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
                format!("source volume {id} no longer exists in {}", scope.plan.source.region),
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
    Ok((record, journal))
}

/// Cross-account: the grant on the source key, recorded in the run's meta. A grant
/// that cannot be made fails the run before any volume moves.
async fn grant(env: &Env, scope: &RunScope<'_>, record: &mut RunRecord, journal: &mut Journal) -> Result<(), RunError> {
    let granted = ensure_grant(env, scope, &mut record.meta).await;
    if granted.is_err() {
        record.meta.status = RunStatus::Failed;
        record.meta.finished_ms = Some(env.clock.now_ms());
    }
    journal.meta(&record.meta)?;
    journal.sync().await?;
    granted
}

/// The driving loop over every volume (`runner`); for a cross-account run whose copies
/// lost access to the source key, once more after the grant is put back.
async fn drive(
    cfg: &RunConfig,
    env: &Env,
    scope: &RunScope<'_>,
    actx: &Arc<ActCtx>,
    record: RunRecord,
    journal: Journal,
    shutdown: watch::Receiver<bool>,
) -> Result<(RunRecord, Journal, Ended), RunError> {
    let mut r = Runner::new(cfg, env.clone(), scope, actx.clone(), record, journal);
    let ended = r.drive(shutdown.clone()).await;
    let ended = match ended {
        Ok(Ended::Finished) if scope.resolved.cross_account => {
            let (record, journal) = r.into_parts();
            retry_after_lost_grant(cfg, env, scope, actx, record, journal, shutdown).await
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
    ended
}

/// The end of the invocation: the copies' locks read, the run's status set and
/// checkpointed. Credentials refused mid-run are the invocation's error.
async fn finish(
    env: &Env,
    scope: &RunScope<'_>,
    mut record: RunRecord,
    mut journal: Journal,
    ended: Ended,
) -> Result<(RunRecord, Ended), RunError> {
    let plan = scope.plan;
    // The locks as they are now, for the report, `status` and the metrics.
    let locks: Vec<_> = plan.targets.iter().map(|t| t.lock).collect();
    if plan.locks()
        && let Err(e) =
            super::locks::refresh(env.cloud.as_ref(), env.clock.as_ref(), &scope.dsts, &locks, &mut record).await
    {
        tracing::warn!(error = %e, "could not read the locks of the copies; the report shows them as last recorded");
    }

    let now = env.clock.now_ms();
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
    Ok((record, ended))
}

/// The report of the run, with each volume's next copy, and retention once the
/// invocation ended with its volumes settled: per volume whose copy finished (a
/// failing volume keeps all its copies), never after a round that made nothing.
async fn report(env: &Env, scope: &RunScope<'_>, record: &RunRecord, ended: &Ended) -> RunReport {
    let plan = scope.plan;
    let mut report = RunReport::from_record(record);
    let source_key = scope.resolved.source_key.arn.as_str();
    let by_id: HashMap<&str, &SourceVolume> =
        scope.resolved.volumes.iter().map(|sv| (sv.volume.id.as_str(), sv.as_ref())).collect();
    for v in &mut report.volumes {
        if let Some(sv) = by_id.get(v.source_volume.as_str()) {
            v.next_copy = Some(super::report::copy_kind(&sv.volume, source_key));
        }
    }
    let made_something = record.volumes.iter().any(|v| !v.fresh);
    // With locks, every finished invocation prunes: a copy kept for its lock goes on
    // the first one after the lock expired, even when that round made nothing.
    if let (true, Ended::Finished) = (made_something || plan.locks(), ended) {
        if let Some(keep) = plan.options.keep {
            retain_targets(env, scope, record, keep, &mut report).await;
        }
        if made_something && plan.options.cleanup && plan.options.keep_source > 0 {
            retain_source(env, scope, record, &mut report).await;
        }
    }
    report
}

/// `keep` per target: its copies and volumes, in its account and region. A failure
/// is a warning in the report.
async fn retain_targets(env: &Env, scope: &RunScope<'_>, record: &RunRecord, keep: u32, report: &mut RunReport) {
    let plan = scope.plan;
    for (t, dst) in scope.dsts.iter().enumerate() {
        let of_target: Vec<VolumeRun> = record.volumes.iter().filter(|v| usize::from(v.target) == t).cloned().collect();
        let locked = plan.targets.get(t).is_some_and(|x| x.lock.is_some());
        let pruned = super::retention::prune(
            env.cloud.as_ref(),
            env.clock.as_ref(),
            dst,
            plan.name.as_str(),
            keep,
            locked,
            &of_target,
        )
        .await;
        match pruned {
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

/// `keep_source`: the newest source snapshots kept, older ones of the plan deleted.
async fn retain_source(env: &Env, scope: &RunScope<'_>, record: &RunRecord, report: &mut RunReport) {
    let plan = scope.plan;
    let kept = plan.options.keep_source;
    let pruned = super::retention::prune_source(
        env.cloud.as_ref(),
        env.clock.as_ref(),
        &scope.src,
        plan.name.as_str(),
        kept,
        &record.volumes,
    )
    .await;
    match pruned {
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
    scope: &RunScope<'_>,
    actx: &Arc<ActCtx>,
    mut record: RunRecord,
    mut journal: crate::checkpoint::Journal,
    shutdown: watch::Receiver<bool>,
) -> Result<(RunRecord, crate::checkpoint::Journal, Ended), RunError> {
    let lost: Vec<usize> = (0..record.volumes.len()).filter(|i| lost_key_access(&record.volumes[*i])).collect();
    let accounts: HashSet<String> =
        lost.iter().map(|i| actx.target(record.volumes[*i].target).account.to_string()).collect();
    let grants: Vec<policy::Grant> =
        plan_grants(scope).into_iter().filter(|g| accounts.contains(g.target_account.as_str())).collect();
    if grants.is_empty() {
        return Ok((record, journal, Ended::Finished));
    }
    let key = &scope.resolved.source_key.arn;
    let restored = match put_grants(env, &scope.src, key, &grants).await {
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
    let mut r = Runner::new(cfg, env.clone(), scope, actx.clone(), record, journal);
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
    env: &Env,
    scope: &RunScope<'_>,
    previous: Option<RunRecord>,
    now: i64,
) -> Result<Option<Carry>, RunError> {
    let plan = scope.plan;
    let mut wanted: Vec<VolumeId> = scope.volume_ids().cloned().collect();
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
            let (src, dsts) = (&scope.src, &scope.dsts);
            let survey = adopt::survey(env.cloud.as_ref(), env.clock.as_ref(), plan.name.as_str(), src, dsts)
                .await
                .map_err(|e| RunError::Cloud {
                    what: format!("listing the resources tagged snapferry:plan={} to learn what is fresh", plan.name),
                    source: e,
                })?;
            (adopt::newest_chains(&survey, scope.shape, now), None)
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

/// With no unfinished run in the state: the plan's newest run in AWS, when its tagged
/// resources show it unfinished and the state does not know it as succeeded or
/// cleaned up.
async fn adopt_from_tags(cfg: &RunConfig, env: &Env, scope: &RunScope<'_>) -> Result<Option<adopt::Found>, RunError> {
    let plan = scope.plan;
    let clock = env.clock.as_ref();
    let cloud = env.cloud.as_ref();
    let (src, dsts) = (&scope.src, &scope.dsts);
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
    let Some(found) = adopt::infer(&survey, scope.shape, clock.now_ms()) else { return Ok(None) };
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
fn moved_fields(meta: &RunMeta, scope: &RunScope<'_>) -> Vec<String> {
    let mut moved = vec![];
    let mut check = |field: &str, was: Option<&str>, now: Option<&str>| {
        if let Some(was) = was
            && Some(was) != now
        {
            moved.push(format!("{field} (was {was}, now {})", now.unwrap_or("none")));
        }
    };
    let resolved = &scope.resolved;
    check("source.region", Some(meta.source_region.as_str()), Some(scope.plan.source.region.as_str()));
    check(
        "source.account",
        meta.source_account.as_ref().map(|a| a.as_str()),
        Some(resolved.source_identity.account.as_str()),
    );
    check("source.kms_key", meta.source_key_arn.as_ref().map(|k| k.as_str()), Some(resolved.source_key.arn.as_str()));
    let was = meta.targets();
    let now = &scope.targets;
    if was.len() != now.len() {
        moved.push(format!("targets (was {}, now {})", was.len(), now.len()));
        return moved;
    }
    for (i, (w, n)) in was.iter().zip(now).enumerate() {
        let name = if scope.plan.fan_out { format!("targets[{i}]") } else { "target".to_owned() };
        check(&format!("{name}.region"), Some(w.region.as_str()), Some(n.region.as_str()));
        check(
            &format!("{name}.account"),
            w.account.as_ref().map(|a| a.as_str()),
            n.account.as_ref().map(|a| a.as_str()),
        );
        check(
            &format!("{name}.kms_key"),
            w.key_arn.as_ref().map(|k| k.as_str()),
            n.key_arn.as_ref().map(|k| k.as_str()),
        );
        check(
            &format!("{name}.role_arn"),
            w.role_arn.as_ref().map(|r| r.as_str()),
            n.role_arn.as_ref().map(|r| r.as_str()),
        );
    }
    moved
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

/// A new run id for `plan` (`RunId::mint`), with a random suffix.
pub fn new_run_id(plan: &str, now_ms: i64) -> String {
    let mut r = [0u8; 2];
    let _ = aws_lc_rs::rand::fill(&mut r);
    crate::ids::RunId::mint(plan, now_ms, r)
}

/// Adds each cross-account target's statement to the source key policy, once per
/// run, all in one PutKeyPolicy (read, merge, write, read back: `key_policy::edit`).
async fn ensure_grant(env: &Env, scope: &RunScope<'_>, meta: &mut RunMeta) -> Result<(), RunError> {
    let key = &scope.resolved.source_key.arn;
    let grants = plan_grants(scope);
    if grants.is_empty() {
        return Ok(());
    }
    let named = grants.iter().map(|g| g.target_account.as_str()).collect::<Vec<_>>().join(", ");
    let added = put_grants(env, &scope.src, key, &grants).await?;
    let mut records = grants.iter().map(|g| GrantRecord { key_arn: key.clone(), sid: g.sid(), added, revoked: false });
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
fn plan_grants(scope: &RunScope<'_>) -> Vec<policy::Grant> {
    scope
        .share_with
        .iter()
        .map(|a| policy::Grant {
            plan: scope.plan.name.clone(),
            target_account: a.clone(),
            partition: scope.plan.source.region.partition(),
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
