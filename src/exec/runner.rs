//! The run itself: lock, resume or start, preflight, grant, then the tick loop that
//! drives every volume's step machine (see the module doc of `exec`).

use std::collections::{BTreeMap, HashMap};

use std::collections::VecDeque;
use std::sync::Arc;

use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use tokio::sync::watch;

use crate::checkpoint::{FORMAT_VERSION, GrantRecord, Journal, RunMeta, RunRecord, RunStatus};
use crate::cloud::{CloudError, ErrorKind, Loc, Side, Volume};
use crate::engine::{self, Action, Ctx, Outcome, Step, TimeoutsMs, VolumeRun, Which};
use crate::ids::{RunId, SnapshotId, VolumeId};
use crate::plan::{Plan, TargetVolume};
use crate::policy;

use super::act::{self, ActCtx};
use super::preflight::{Resolved, SourceVolume, preflight};
use super::retry::{retrying, volume_backoff_ms};
use super::{Env, RunError, RunReport};

/// The first poll of a new wait, and the floor of later ones, for small runs.
const MIN_POLL_MS: i64 = 5_000;
/// The floor when many volumes wait at once: one DescribeSnapshots answers for all of
/// them, so polling less often costs little latency and saves many calls.
const FLEET_POLL_MS: i64 = 30_000;
/// Waiting volumes beyond which the fleet floor applies.
const FLEET_SIZE: usize = 20;
/// The ceiling of the poll interval: AWS's own waiters use 15 to 120 s.
const MAX_POLL_MS: i64 = 120_000;
/// DescribeSnapshots takes at most 1,000 snapshot ids per call.
const DESCRIBE_BATCH: usize = 1_000;
/// Calls in flight at once within one tick, to stay clear of API rate limits.
const CALLS_IN_FLIGHT: usize = 16;
/// Retries of one volume's action after throttling or a lost connection.
const MAX_RETRIES: u32 = 30;
/// How long a copy refused for the account's copy quota waits before asking again.
const QUOTA_WAIT_MS: i64 = 60_000;
/// Retries of a copy whose shared source snapshot is not visible yet (about 30 s).
const SHARE_LAG_RETRIES: u32 = 5;
/// How long a snapshot or volume may stay invisible before it counts as gone.
const MISSING_GRACE_MS: i64 = 10 * 60_000;

/// What to run.
#[derive(Clone)]
pub struct RunConfig {
    pub plan: Plan,
    /// The plan file as the user named it, for the checkpoint and messages.
    pub plan_file: String,
    /// `--run-id`: resume that run if it exists, else start one with that id.
    pub run_id: Option<RunId>,
    pub simulated: bool,
    /// Try the calls that change EC2 with DryRun in preflight. Off against emulators,
    /// which model no IAM and may not honour DryRun.
    pub probe_permissions: bool,
    /// Told how far the run is after every tick (a progress bar on a terminal).
    pub progress: Option<std::sync::Arc<dyn Progress>>,
}

/// Where a run stands, for a progress display.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tally {
    pub total: usize,
    pub done: usize,
    pub failed: usize,
    /// Volumes in a copy (queued, issued or waiting).
    pub copying: usize,
}

/// A progress display. Called from the runner; must not block.
pub trait Progress: Send + Sync {
    fn update(&self, tally: &Tally);
    fn finish(&self);
}

/// Runtime scheduling of one volume; not checkpointed.
#[derive(Debug, Clone, Default)]
struct Sched {
    not_before_ms: i64,
    next_poll_ms: i64,
    retries: u32,
    missing_since_ms: Option<i64>,
    /// Since when copies of this volume have been refused for the copy quota; the
    /// wait is bounded by the copy timeout.
    quota_since_ms: Option<i64>,
}

/// Runs (or resumes) the plan until every volume ends or `shutdown` turns true.
/// Volumes that fail do not make this an `Err`: the report says which failed.
pub async fn run(cfg: RunConfig, env: Env, shutdown: watch::Receiver<bool>) -> Result<RunReport, RunError> {
    let plan = &cfg.plan;
    let _lock = env.store.lock_plan(plan.name.as_str()).await?;
    let clock = env.clock.clone();
    let cloud = env.cloud.clone();

    // Resume the plan's unfinished run, or the one named by --run-id.
    let previous = match &cfg.run_id {
        Some(id) => match env.store.load(id.as_str()).await {
            Ok(r) => Some(r),
            Err(crate::checkpoint::StoreError::NoSuchRun(_)) => None,
            Err(e) => return Err(e.into()),
        },
        None => env
            .store
            .latest_of_plan(plan.name.as_str())
            .await?
            .filter(|r| r.meta.status != RunStatus::Succeeded && !r.meta.cleaned_up),
    };
    if let Some(p) = &previous {
        if p.meta.plan != plan.name.as_str() {
            return Err(RunError::Other(format!(
                "run {} belongs to plan {}, not {}; name another --run-id",
                p.meta.run_id, p.meta.plan, plan.name
            )));
        }
        if p.meta.status == RunStatus::Succeeded {
            tracing::info!(run = %p.meta.run_id, "run already succeeded; nothing to do");
            return Ok(RunReport::from_record(p));
        }
    }

    let resolved =
        preflight(plan, cloud.as_ref(), clock.as_ref(), cfg.probe_permissions).await.map_err(RunError::Preflight)?;
    let now = clock.now_ms();

    let mut record = match previous {
        Some(mut r) => {
            tracing::info!(run = %r.meta.run_id, "resuming run");
            r.meta.status = RunStatus::Running;
            r.meta.updated_ms = now;
            r.meta.finished_ms = None;
            r
        }
        None => {
            let run_id = match &cfg.run_id {
                Some(id) => id.to_string(),
                None => new_run_id(plan.name.as_str(), now),
            };
            tracing::info!(run = %run_id, volumes = resolved.volumes.len(), "starting run");
            RunRecord {
                meta: RunMeta {
                    format_version: FORMAT_VERSION,
                    run_id,
                    plan: plan.name.to_string(),
                    plan_file: cfg.plan_file.clone(),
                    status: RunStatus::Running,
                    created_ms: now,
                    updated_ms: now,
                    finished_ms: None,
                    source_account: None,
                    target_account: None,
                    source_region: plan.source.region.to_string(),
                    target_region: plan.target.region.to_string(),
                    cross_account: false,
                    source_key_arn: None,
                    target_key_arn: None,
                    grant: None,
                    simulated: cfg.simulated,
                    cleaned_up: false,
                },
                volumes: vec![],
            }
        }
    };
    let target_account = resolved.target_identity.as_ref().map(|i| i.account.clone()).or(plan.target.account.clone());
    record.meta.source_account = Some(resolved.source_identity.account.to_string());
    record.meta.target_account = target_account.as_ref().map(|a| a.to_string());
    record.meta.cross_account = resolved.cross_account;
    record.meta.source_key_arn = Some(resolved.source_key.arn.to_string());
    record.meta.target_key_arn = Some(resolved.target_key.arn.to_string());
    // Volumes the plan picks now and the run does not have yet join it.
    for sv in &resolved.volumes {
        if !record.volumes.iter().any(|v| v.source_volume == sv.volume.id) {
            record.volumes.push(VolumeRun::new(sv.volume.id.clone()));
        }
    }
    let mut journal = env.store.create_or_reopen(&record).await?;

    let actx = ActCtx {
        plan: plan.name.to_string(),
        run_id: record.meta.run_id.clone(),
        source_region: plan.source.region.clone(),
        target_region: plan.target.region.clone(),
        target_account: if resolved.cross_account { target_account.clone() } else { None },
        source_key: resolved.source_key.arn.clone(),
        target_key: resolved.target_key.arn.clone(),
        availability_zone: plan.target.availability_zone.clone(),
        extra_tags: plan.options.tags.clone(),
    };

    // Failed volumes go back to the step that failed; what that step left in AWS
    // in state `error` is deleted first so the retry does not orphan it.
    for i in 0..record.volumes.len() {
        if record.volumes[i].step == Step::Failed {
            discard_failed(cloud.as_ref(), &actx, &record.volumes[i]).await;
            record.volumes[i].revive();
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

    let record_len = record.volumes.len();
    let mut r = Runner {
        env: env.clone(),
        ctx: Ctx {
            cross_account: resolved.cross_account,
            source_key: resolved.source_key.arn.clone(),
            create_volume: plan.options.create_volume,
            cleanup: plan.options.cleanup,
            timeouts_ms: TimeoutsMs {
                snapshot: plan.options.timeouts.snapshot.as_millis() as i64,
                copy: plan.options.timeouts.copy.as_millis() as i64,
                volume: plan.options.timeouts.volume.as_millis() as i64,
            },
        },
        actx: Arc::new(actx),
        sched: vec![Sched::default(); record.volumes.len()],
        sources: resolved.volumes.iter().map(|s| (s.volume.id.clone(), s.clone())).collect(),
        copy_limit: plan.options.max_concurrent_copies as usize,
        rng: seed(&record.meta.run_id),
        poll_floor_ms: MIN_POLL_MS,
        progress: cfg.progress.clone(),
        busy: vec![false; record_len],
        slot_caps: BTreeMap::new(),
        record,
        journal,
    };
    let interrupted = r.drive(shutdown).await;
    if let Some(p) = &r.progress {
        p.finish();
    }
    let interrupted = interrupted?;

    let now = clock.now_ms();
    let all_done = r.record.volumes.iter().all(|v| v.step == Step::Done);
    r.record.meta.status = if interrupted {
        RunStatus::Interrupted
    } else if all_done {
        RunStatus::Succeeded
    } else {
        RunStatus::Failed
    };
    r.record.meta.updated_ms = now;
    if !interrupted {
        r.record.meta.finished_ms = Some(now);
    }
    r.journal.meta(&r.record.meta)?;
    r.journal.compact(&r.record).await?;
    tracing::info!(run = %r.record.meta.run_id, status = r.record.meta.status.as_str(), "run ended");
    let mut report = RunReport::from_record(&r.record);
    if let (true, Some(keep)) = (all_done && !interrupted, plan.options.keep) {
        let dst = Loc::new(Side::Target, &plan.target.region);
        match super::retention::prune(cloud.as_ref(), clock.as_ref(), &dst, plan.name.as_str(), keep, &r.record.volumes)
            .await
        {
            Ok(p) => report.retention = Some(p),
            Err(e) => {
                tracing::warn!(error = %e, "retention failed; the copies of this run are complete, older ones were not pruned");
                report.retention_error = Some(format!("retention in {}: {e}", plan.target.region));
            }
        }
    }
    Ok(report)
}

fn seed(run_id: &str) -> u64 {
    run_id.bytes().fold(0x9e37_79b9_7f4a_7c15u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)) | 1
}

/// `<plan>-<UTC yyyymmddThhmmssZ>-<4 hex>`: sortable, readable, unique.
pub fn new_run_id(plan: &str, now_ms: i64) -> String {
    let ts = jiff::Timestamp::from_millisecond(now_ms).unwrap_or(jiff::Timestamp::UNIX_EPOCH);
    let mut r = [0u8; 2];
    let _ = aws_lc_rs::rand::fill(&mut r);
    format!("{plan}-{}-{:02x}{:02x}", ts.strftime("%Y%m%dT%H%M%SZ"), r[0], r[1])
}

async fn discard_failed(cloud: &dyn crate::cloud::Cloud, actx: &ActCtx, v: &VolumeRun) {
    let Some(f) = &v.failure else { return };
    let result = match f.step {
        Step::WaitCopy => match &v.target_snapshot {
            Some(s) => act::delete_snapshot_quietly(cloud, &actx.dst(), s).await,
            None => Ok(()),
        },
        Step::WaitReencrypt => match &v.reencrypted_snapshot {
            Some(s) => act::delete_snapshot_quietly(cloud, &actx.src(), s).await,
            None => Ok(()),
        },
        Step::WaitSnapshot => match &v.source_snapshot {
            Some(s) => act::delete_snapshot_quietly(cloud, &actx.src(), s).await,
            None => Ok(()),
        },
        Step::WaitVolume => match &v.target_volume {
            Some(id) => match cloud.delete_volume(&actx.dst(), id).await {
                Err(e) if e.kind == ErrorKind::NotFound => Ok(()),
                other => other,
            },
            None => Ok(()),
        },
        _ => Ok(()),
    };
    if let Err(e) = result {
        tracing::warn!(volume = %v.source_volume, error = %e, "could not delete what the failed step left; delete it by hand");
    }
}

/// Adds the target account's statement to the source key policy, once per run.
async fn ensure_grant(env: &Env, plan: &Plan, resolved: &Resolved, meta: &mut RunMeta) -> Result<(), RunError> {
    let clock = env.clock.as_ref();
    let cloud = env.cloud.as_ref();
    let loc = Loc::new(Side::Source, &plan.source.region);
    let key = &resolved.source_key.arn;
    let Some(target) = resolved.target_identity.as_ref().map(|i| i.account.clone()).or(plan.target.account.clone())
    else {
        return Ok(());
    };
    let grant = policy::Grant {
        plan: plan.name.clone(),
        target_account: target.clone(),
        partition: plan.source.region.partition(),
    };
    let cloud_err = |what: &str, e: CloudError| {
        let hint = if e.kind == ErrorKind::AccessDenied {
            "; the caller needs kms:GetKeyPolicy and kms:PutKeyPolicy on the source key (snapferry run PLAN --dry-run prints the statement to add by hand instead)"
        } else {
            ""
        };
        RunError::Cloud { what: format!("{what} of source key {key}{hint}"), source: e }
    };
    // Another plan may edit the same policy at the same time: re-read, merge and
    // verify, a few times, so neither loses its statement.
    for attempt in 0..5 {
        let current =
            retrying(clock, || cloud.get_key_policy(&loc, key)).await.map_err(|e| cloud_err("GetKeyPolicy", e))?;
        let change = policy::ensure_grant(&current, &grant)
            .map_err(|e| RunError::Other(format!("cannot grant account {target} use of source key {key}: {e}")))?;
        if !change.changed {
            if meta.grant.is_none() {
                meta.grant =
                    Some(GrantRecord { key_arn: key.to_string(), sid: grant.sid(), added: false, revoked: false });
            }
            tracing::info!(key = %key, account = %target, "key policy already grants the target account");
            return Ok(());
        }
        retrying(clock, || cloud.put_key_policy(&loc, key, &change.new_policy))
            .await
            .map_err(|e| cloud_err("PutKeyPolicy", e))?;
        let back =
            retrying(clock, || cloud.get_key_policy(&loc, key)).await.map_err(|e| cloud_err("GetKeyPolicy", e))?;
        if !policy::ensure_grant(&back, &grant).map(|c| c.changed).unwrap_or(true) {
            meta.grant = Some(GrantRecord { key_arn: key.to_string(), sid: grant.sid(), added: true, revoked: false });
            tracing::info!(key = %key, account = %target, "granted the target account use of the source key");
            return Ok(());
        }
        tracing::warn!(key = %key, attempt, "key policy changed under us; merging again");
        clock.sleep_until(clock.now_ms() + 1_000 * (attempt + 1)).await;
    }
    Err(RunError::Other(format!(
        "the policy of source key {key} keeps changing while snapferry adds its statement; run again when other edits are done"
    )))
}

struct Runner {
    env: Env,
    ctx: Ctx,
    actx: Arc<ActCtx>,
    record: RunRecord,
    journal: Journal,
    sched: Vec<Sched>,
    sources: HashMap<VolumeId, SourceVolume>,
    copy_limit: usize,
    rng: u64,
    /// The shortest poll interval now, by how many volumes wait.
    poll_floor_ms: i64,
    progress: Option<std::sync::Arc<dyn Progress>>,
    /// Volumes with a job under way; they are left out of planning until it ends.
    busy: Vec<bool>,
    /// Lowered copy limits per destination, after ResourceLimitExceeded.
    slot_caps: BTreeMap<(Side, String), usize>,
}

/// A unit of work in one tick.
/// Each job owns what it needs, so the runner can go on with other volumes while it
/// is under way.
enum Job {
    One { index: usize, action: Action, volume: Box<VolumeRun>, source: Option<Box<SourceVolume>> },
    PollSnapshots { loc: Loc, members: Vec<(usize, SnapshotId, Which)> },
    PollVolumes { loc: Loc, members: Vec<(usize, VolumeId)> },
}

impl Job {
    fn members(&self) -> Vec<usize> {
        match self {
            Job::One { index, .. } => vec![*index],
            Job::PollSnapshots { members, .. } => members.iter().map(|m| m.0).collect(),
            Job::PollVolumes { members, .. } => members.iter().map(|m| m.0).collect(),
        }
    }
}

/// What came back from a job: per volume, an outcome or an error.
type Results = Vec<(usize, Action, Result<Outcome, CloudError>)>;

impl Runner {
    fn jitter(&mut self) -> f64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        (self.rng >> 11) as f64 / (1u64 << 53) as f64
    }

    fn set(&mut self, index: usize, next: VolumeRun) -> Result<(), RunError> {
        if next != self.record.volumes[index] {
            let before = self.record.volumes[index].step;
            if before != next.step {
                log_step(&next, before);
            }
            self.journal.volume(index, &next)?;
            self.record.volumes[index] = next;
        }
        Ok(())
    }

    /// Copies in flight per (account side, destination region), for the copy limit.
    fn copy_slot(&self, step: Step) -> Option<(Side, String)> {
        let src_side = Side::Source;
        let dst_side = if self.ctx.cross_account { Side::Target } else { Side::Source };
        match step {
            Step::Reencrypt | Step::WaitReencrypt => Some((src_side, self.actx.source_region.to_string())),
            Step::Copy | Step::WaitCopy => Some((dst_side, self.actx.target_region.to_string())),
            _ => None,
        }
    }

    fn slots_in_use(&self) -> BTreeMap<(Side, String), usize> {
        let mut m = BTreeMap::new();
        for v in &self.record.volumes {
            let busy = matches!(v.step, Step::WaitReencrypt | Step::WaitCopy)
                || (matches!(v.step, Step::Reencrypt | Step::Copy) && v.in_flight);
            if let Some(k) = self.copy_slot(v.step).filter(|_| busy) {
                *m.entry(k).or_default() += 1;
            }
        }
        m
    }

    /// Drives all volumes to a terminal step; returns true when interrupted.
    ///
    /// Jobs run concurrently and each volume moves on as soon as its own job ends: a
    /// slow or throttled call holds up only its own volumes. On the simulated AWS's
    /// virtual clock time only moves while no job is under way, so a rehearsal is
    /// deterministic.
    async fn drive(&mut self, shutdown: watch::Receiver<bool>) -> Result<bool, RunError> {
        let clock = self.env.clock.clone();
        let virtual_time = clock.is_virtual();
        let mut shutdown = shutdown;
        let mut inflight: FuturesUnordered<BoxFuture<'static, Results>> = FuturesUnordered::new();
        let mut queue: VecDeque<Job> = VecDeque::new();
        let mut stopping = false;
        // Once the sender is gone no shutdown can come; stop listening for one.
        let mut listening = true;
        loop {
            stopping |= *shutdown.borrow();
            let now = clock.now_ms();
            if !stopping {
                // Waits past their timeout fail their volume.
                for i in 0..self.record.volumes.len() {
                    let v = &self.record.volumes[i];
                    if !self.busy[i] && engine::wait_expired(v, &self.ctx, now) {
                        let next = engine::apply(v, &Outcome::TimedOut, &self.ctx, now)
                            .map_err(|e| RunError::Other(e.to_string()))?;
                        self.set(i, next)?;
                    }
                }
                let jobs = self.plan_tick(now)?;
                if !jobs.is_empty() {
                    // The intents of these changes are durable before any is issued.
                    self.journal.sync().await?;
                    queue.extend(jobs);
                }
            }
            while inflight.len() < CALLS_IN_FLIGHT {
                let Some(job) = queue.pop_front() else { break };
                inflight.push(Box::pin(perform_job(self.env.cloud.clone(), self.actx.clone(), job)));
            }
            if inflight.is_empty() {
                self.journal.sync().await?;
                if stopping {
                    // Queued jobs were never issued; their intents are reconciled on resume.
                    return Ok(true);
                }
                if self.record.volumes.iter().all(|v| v.step.is_terminal()) {
                    return Ok(false);
                }
                let wake = self.next_wake(now);
                tokio::select! {
                    _ = clock.sleep_until(wake) => {}
                    r = shutdown.changed(), if listening => listening = r.is_ok(),
                }
                continue;
            }
            let first = if virtual_time || stopping {
                inflight.next().await
            } else {
                let wake = self.next_wake(now);
                tokio::select! {
                    r = inflight.next() => r,
                    _ = clock.sleep_until(wake) => None,
                    r = shutdown.changed(), if listening => {
                        listening = r.is_ok();
                        None
                    }
                }
            };
            let mut done: Vec<Results> = first.into_iter().collect();
            while let Some(Some(r)) = inflight.next().now_or_never() {
                done.push(r);
            }
            if done.is_empty() {
                continue;
            }
            let now = clock.now_ms();
            for (index, action, result) in done.into_iter().flatten() {
                self.busy[index] = false;
                self.absorb(index, &action, result, now)?;
            }
            self.journal.sync().await?;
            if let Some(p) = &self.progress {
                p.update(&self.tally());
            }
            if self.journal.wants_compaction() {
                self.record.meta.updated_ms = now;
                self.journal.compact(&self.record).await?;
            }
        }
    }

    fn tally(&self) -> Tally {
        let mut t = Tally { total: self.record.volumes.len(), ..Tally::default() };
        for v in &self.record.volumes {
            match v.step {
                Step::Done => t.done += 1,
                Step::Failed => t.failed += 1,
                Step::Copy | Step::WaitCopy => t.copying += 1,
                _ => {}
            }
        }
        t
    }

    fn next_wake(&self, now: i64) -> i64 {
        let mut wake = now + MAX_POLL_MS;
        for ((v, s), busy) in self.record.volumes.iter().zip(&self.sched).zip(&self.busy) {
            if v.step.is_terminal() || *busy {
                continue;
            }
            // A volume queued for a copy slot wakes when a copy ends, which a poll
            // of that copy notices; it needs no wake-up of its own.
            if matches!(v.step, Step::Copy | Step::Reencrypt) && !v.in_flight && s.not_before_ms <= now {
                continue;
            }
            let t = if matches!(v.step, Step::WaitSnapshot | Step::WaitReencrypt | Step::WaitCopy | Step::WaitVolume) {
                s.next_poll_ms.max(s.not_before_ms)
            } else {
                s.not_before_ms
            };
            wake = wake.min(t.max(now + 1));
            // A wait's timeout is a wake-up too.
            if let (Some(start), Some(limit)) = (v.wait_started_ms, engine::wait_limit_ms(v.step, &self.ctx)) {
                wake = wake.min((start + limit + 1).max(now + 1));
            }
        }
        wake
    }

    /// Chooses this tick's jobs and records the intents of the changing ones.
    fn plan_tick(&mut self, now: i64) -> Result<Vec<Job>, RunError> {
        let mut jobs = vec![];
        let mut slots = self.slots_in_use();
        let mut snap_polls: BTreeMap<Loc, Vec<(usize, SnapshotId, Which, bool)>> = BTreeMap::new();
        let mut vol_polls: BTreeMap<Loc, Vec<(usize, VolumeId, bool)>> = BTreeMap::new();
        for i in 0..self.record.volumes.len() {
            let v = &self.record.volumes[i];
            if v.step.is_terminal() || self.busy[i] || self.sched[i].not_before_ms > now {
                continue;
            }
            // Volumes queued for a full copy slot cost nothing per tick, however many.
            if matches!(v.step, Step::Copy | Step::Reencrypt)
                && !v.in_flight
                && self.copy_slot(v.step).is_some_and(|k| slots.get(&k).is_some_and(|n| *n >= self.slot_cap(&k)))
            {
                continue;
            }
            let action = engine::next_action(v, &self.actx.run_id);
            let due = self.sched[i].next_poll_ms <= now;
            match action {
                Action::Nothing => {
                    let next = engine::apply(
                        v,
                        &Outcome::Fatal {
                            message: format!(
                                "the checkpoint of this volume is inconsistent at step {}",
                                v.step.as_str()
                            ),
                            hint: Some("run snapferry cleanup for this run and start a new one".to_owned()),
                        },
                        &self.ctx,
                        now,
                    )
                    .map_err(|e| RunError::Other(e.to_string()))?;
                    self.set(i, next)?;
                }
                Action::PollSnapshot { which, id } => {
                    snap_polls.entry(self.actx.loc(which)).or_default().push((i, id, which, due));
                }
                Action::PollVolume { id } => {
                    vol_polls.entry(self.actx.dst()).or_default().push((i, id, due));
                }
                a if a.is_mutating() => {
                    if matches!(a, Action::Reencrypt { .. } | Action::Copy { .. }) {
                        let key = self.copy_slot(v.step).expect("copy steps have a slot");
                        let cap = self.slot_cap(&key);
                        let used = slots.entry(key).or_default();
                        if *used >= cap {
                            continue;
                        }
                        *used += 1;
                    }
                    let next = engine::begin(v, now);
                    self.set(i, next)?;
                    jobs.push(self.one(i, a));
                }
                a => jobs.push(self.one(i, a)),
            }
        }
        // When any member of a group is due, the whole group is asked about in one
        // call: a poll costs the same for one id as for a thousand.
        let waiting: usize =
            snap_polls.values().map(Vec::len).sum::<usize>() + vol_polls.values().map(Vec::len).sum::<usize>();
        self.poll_floor_ms = if waiting > FLEET_SIZE { FLEET_POLL_MS } else { MIN_POLL_MS };
        for (loc, members) in snap_polls {
            if members.iter().any(|m| m.3) {
                let picked: Vec<(usize, SnapshotId, Which)> =
                    members.into_iter().map(|(i, id, w, _)| (i, id, w)).collect();
                for chunk in picked.chunks(DESCRIBE_BATCH) {
                    jobs.push(Job::PollSnapshots { loc: loc.clone(), members: chunk.to_vec() });
                }
            }
        }
        for (loc, members) in vol_polls {
            if members.iter().any(|m| m.2) {
                let picked: Vec<(usize, VolumeId)> = members.into_iter().map(|(i, id, _)| (i, id)).collect();
                for chunk in picked.chunks(DESCRIBE_BATCH / 2) {
                    jobs.push(Job::PollVolumes { loc: loc.clone(), members: chunk.to_vec() });
                }
            }
        }
        for job in &jobs {
            for i in job.members() {
                self.busy[i] = true;
            }
        }
        Ok(jobs)
    }

    /// Copies allowed at once into a destination: the plan's limit, or less once AWS
    /// said ResourceLimitExceeded there (other copies in the account hold slots).
    fn slot_cap(&self, key: &(Side, String)) -> usize {
        self.slot_caps.get(key).copied().unwrap_or(self.copy_limit)
    }

    fn one(&self, index: usize, action: Action) -> Job {
        let volume = Box::new(self.record.volumes[index].clone());
        let source = self.sources.get(&volume.source_volume).cloned().map(Box::new);
        Job::One { index, action, volume, source }
    }

    /// Applies one result to its volume: the machine's next state, or a retry or
    /// failure for an error.
    fn absorb(
        &mut self,
        i: usize,
        action: &Action,
        result: Result<Outcome, CloudError>,
        now: i64,
    ) -> Result<(), RunError> {
        let v = self.record.volumes[i].clone();
        let polled = matches!(action, Action::PollSnapshot { .. } | Action::PollVolume { .. });
        match result {
            Ok(outcome) => {
                self.sched[i].retries = 0;
                self.sched[i].quota_since_ms = None;
                let outcome = if outcome == Outcome::Missing {
                    let since = *self.sched[i].missing_since_ms.get_or_insert(now);
                    if now - since > MISSING_GRACE_MS {
                        Outcome::Fatal {
                            message: format!("the resource waited on at step {} disappeared", v.step.as_str()),
                            hint: Some(
                                "someone deleted it outside snapferry; run the same command again to redo the step"
                                    .into(),
                            ),
                        }
                    } else {
                        Outcome::Missing
                    }
                } else {
                    self.sched[i].missing_since_ms = None;
                    outcome
                };
                if matches!(outcome, Outcome::NotFound) {
                    // Give an eventually consistent listing time to show the resource.
                    self.sched[i].not_before_ms = now + MIN_POLL_MS * (1 << v.lookups_missed.min(4));
                }
                let next = engine::apply(&v, &outcome, &self.ctx, now).map_err(|e| RunError::Other(e.to_string()))?;
                if polled || next.step != v.step {
                    self.schedule_poll(i, &next, now);
                }
                self.set(i, next)
            }
            Err(e) => {
                let mut next = v.clone();
                if e.outcome_known() && action.is_mutating() {
                    // AWS answered with an error: the call did not take effect.
                    next.in_flight = false;
                }
                // The account's copy quota is taken by copies outside this run: queue
                // behind the copies this run has in flight rather than retry-storm.
                let quota = matches!(action, Action::Copy { .. } | Action::Reencrypt { .. })
                    && e.kind == ErrorKind::LimitExceeded;
                let quota_since = if quota { *self.sched[i].quota_since_ms.get_or_insert(now) } else { now };
                if quota && now - quota_since <= self.ctx.timeouts_ms.copy {
                    if let Some(key) = self.copy_slot(v.step) {
                        let in_use = self.slots_in_use().get(&key).copied().unwrap_or(0).saturating_sub(1);
                        let cap = in_use.max(1);
                        tracing::warn!(volume = %v.source_volume, region = key.1, cap, "copy quota reached; queueing copies");
                        self.slot_caps.insert(key, cap);
                    }
                    let j = self.jitter();
                    self.sched[i].not_before_ms = now + QUOTA_WAIT_MS / 2 + (QUOTA_WAIT_MS as f64 / 2.0 * j) as i64;
                    return self.set(i, next);
                }
                // A snapshot just shared can be invisible to the target account for a
                // few seconds (the share propagates): a copy that cannot find it yet is
                // asked again a few times before the volume fails.
                let share_lag = matches!(action, Action::Copy { .. })
                    && e.kind == ErrorKind::NotFound
                    && self.sched[i].retries < SHARE_LAG_RETRIES;
                if (e.is_retryable() || share_lag) && self.sched[i].retries < MAX_RETRIES {
                    self.sched[i].retries += 1;
                    let j = self.jitter();
                    let delay = volume_backoff_ms(self.sched[i].retries, j);
                    self.sched[i].not_before_ms = now + delay;
                    tracing::debug!(volume = %v.source_volume, step = v.step.as_str(), error = %e, delay_ms = delay, "retrying");
                    return self.set(i, next);
                }
                let (message, hint) = explain(&v, action, &e, &self.actx);
                let next = engine::apply(&next, &Outcome::Fatal { message, hint }, &self.ctx, now)
                    .map_err(|e| RunError::Other(e.to_string()))?;
                self.set(i, next)
            }
        }
    }

    /// Spaces the next poll from the progress reported: a wait that is 10% done after
    /// ten minutes will not be done in five seconds.
    fn schedule_poll(&mut self, i: usize, v: &VolumeRun, now: i64) {
        let s = &mut self.sched[i];
        let elapsed = v.wait_started_ms.map(|t| now - t).unwrap_or(0).max(0);
        let interval = match v.progress {
            Some(p) if p > 0 && p < 100 => elapsed * i64::from(100 - p) / i64::from(p) / 2,
            _ => elapsed / 4,
        };
        s.next_poll_ms = now + interval.clamp(self.poll_floor_ms, MAX_POLL_MS);
    }
}

fn log_step(v: &VolumeRun, before: Step) {
    match v.step {
        Step::Failed => {
            let f = v.failure.as_ref();
            tracing::error!(
                volume = %v.source_volume,
                step = f.map(|f| f.step.as_str()).unwrap_or("?"),
                error = f.map(|f| f.message.as_str()).unwrap_or(""),
                hint = f.and_then(|f| f.hint.as_deref()).unwrap_or(""),
                "volume failed"
            );
        }
        Step::Done => tracing::info!(
            volume = %v.source_volume,
            target_snapshot = v.target_snapshot.as_ref().map(|s| s.as_str()).unwrap_or(""),
            target_volume = v.target_volume.as_ref().map(|s| s.as_str()).unwrap_or(""),
            "volume done"
        ),
        step => tracing::info!(volume = %v.source_volume, from = before.as_str(), step = step.as_str(), "step"),
    }
}

/// A failure message naming the resource, and what to do.
fn explain(v: &VolumeRun, action: &Action, e: &CloudError, actx: &ActCtx) -> (String, Option<String>) {
    let what = match action {
        Action::CreateSnapshot => format!("CreateSnapshot of volume {} in {}", v.source_volume, actx.source_region),
        Action::Reencrypt { from } => {
            format!("CopySnapshot of {from} under source key {} in {}", actx.source_key, actx.source_region)
        }
        Action::Share { snapshot } => format!("sharing snapshot {snapshot} with the target account"),
        Action::Copy { from } => {
            format!("CopySnapshot of {from} into {} under target key {}", actx.target_region, actx.target_key)
        }
        Action::CreateVolume { snapshot, .. } => format!("CreateVolume from {snapshot} in {}", actx.availability_zone),
        Action::Cleanup { delete } => format!("deleting intermediate snapshots {delete:?}"),
        other => format!("{other:?}"),
    };
    let hint = match e.kind {
        ErrorKind::AccessDenied => {
            Some("grant the missing permission (snapferry run PLAN --dry-run prints the IAM and key policies), then run the same command again".to_owned())
        }
        ErrorKind::Throttled | ErrorKind::Transport | ErrorKind::LimitExceeded => {
            Some("AWS kept refusing or not answering; run the same command again later to resume".to_owned())
        }
        _ => Some("fix the cause, then run the same command again to resume".to_owned()),
    };
    (format!("{what} failed: {e}"), hint)
}

async fn perform_job(cloud: Arc<dyn crate::cloud::Cloud>, actx: Arc<ActCtx>, job: Job) -> Results {
    let cloud = cloud.as_ref();
    match job {
        Job::One { index, action, volume, source } => {
            let default_target = TargetVolume::default();
            let target = source.as_ref().map(|s| &s.target).unwrap_or(&default_target);
            let src: Option<&Volume> = source.as_ref().map(|s| &s.volume);
            let r = act::perform(cloud, &actx, &volume, target, src, &action).await;
            vec![(index, action, r)]
        }
        Job::PollSnapshots { loc, members } => {
            let ids: Vec<SnapshotId> = members.iter().map(|m| m.1.clone()).collect();
            match cloud.describe_snapshots(&loc, &ids).await {
                Ok(found) => members
                    .into_iter()
                    .map(|(i, id, which)| {
                        let outcome =
                            found.iter().find(|s| s.id == id).map(act::snapshot_outcome).unwrap_or(Outcome::Missing);
                        (i, Action::PollSnapshot { which, id }, Ok(outcome))
                    })
                    .collect(),
                Err(e) => members
                    .into_iter()
                    .map(|(i, id, which)| (i, Action::PollSnapshot { which, id }, Err(e.clone())))
                    .collect(),
            }
        }
        Job::PollVolumes { loc, members } => {
            let ids: Vec<VolumeId> = members.iter().map(|m| m.1.clone()).collect();
            match cloud.describe_volumes(&loc, &ids).await {
                Ok(found) => members
                    .into_iter()
                    .map(|(i, id)| {
                        let outcome =
                            found.iter().find(|x| x.id == id).map(act::volume_outcome).unwrap_or(Outcome::Missing);
                        (i, Action::PollVolume { id }, Ok(outcome))
                    })
                    .collect(),
                Err(e) => members.into_iter().map(|(i, id)| (i, Action::PollVolume { id }, Err(e.clone()))).collect(),
            }
        }
    }
}
