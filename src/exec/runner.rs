//! The driving loop of a run: every volume's step machine moved on as its calls end,
//! polls batched, the state journalled before and after every call that changes AWS
//! (see the module doc of `exec`). The loop does the I/O: it asks the `agenda` which
//! volume runs act now and what each does (ready, timers, copy slots, poll groups,
//! leads and followers), makes the calls, journals the states and tells the agenda
//! what moved. What happens after an error or a long wait is decided in `sched`; the
//! run's lifecycle around this loop is in `lifecycle`.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;

use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use tokio::sync::watch;

use crate::checkpoint::{Journal, RunRecord};
use crate::cloud::{CloudError, ErrorKind, Loc, Side, Volume};
use crate::engine::{self, Action, Ctx, Outcome, Step, VolumeRun, Which};
use crate::ids::{RunId, SnapshotId, VolumeId};
use crate::plan::{Plan, TargetVolume};

use super::act::{self, ActCtx};
use super::agenda::{Agenda, Pick, Places, PollGroup, Polls, Tally};
use super::preflight::SourceVolume;
use super::sched::Decision;
use super::scope::RunScope;
use super::{Env, RunError};

/// Outcomes of polls and of ended calls held unsynced at most, when no call that
/// changes AWS comes to sync them: lost in a crash, they are looked up again.
const UNSYNCED_LINES: usize = 512;
/// DescribeSnapshots takes at most 1,000 snapshot ids per call.
const DESCRIBE_BATCH: usize = 1_000;
/// Calls in flight at once within one tick, to stay clear of API rate limits.
const CALLS_IN_FLIGHT: usize = 16;

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

/// A progress display. Called from the runner; must not block.
pub trait Progress: Send + Sync {
    fn update(&self, tally: &Tally);
    fn finish(&self);
}

fn seed(run_id: &str) -> u64 {
    run_id.bytes().fold(0x9e37_79b9_7f4a_7c15u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)) | 1
}

/// How the driving loop ended.
#[derive(Debug)]
pub enum Ended {
    /// Every volume reached `Done` or `Failed`.
    Finished,
    /// Shutdown was asked for; volumes stay where they are.
    Interrupted,
    /// The credentials were refused (expired, invalid): the invocation stopped and no
    /// volume failed for it.
    Halted(CloudError),
}

pub struct Runner {
    env: Env,
    ctx: Ctx,
    actx: Arc<ActCtx>,
    record: RunRecord,
    journal: Journal,
    /// What is ready, the timers, the copy slots and poll groups of the run.
    agenda: Agenda,
    /// Set when the credentials were refused: nothing more is issued.
    halt: Option<CloudError>,
    sources: HashMap<VolumeId, Arc<SourceVolume>>,
    rng: u64,
    progress: Option<std::sync::Arc<dyn Progress>>,
}

/// A unit of work in one tick.
/// Each job owns what it needs, so the runner can go on with other volumes while it
/// is under way.
enum Job {
    One { index: usize, action: Action, volume: Box<VolumeRun>, source: Option<Arc<SourceVolume>> },
    PollSnapshots { loc: Loc, members: Vec<(usize, SnapshotId, Which)> },
    PollVolumes { loc: Loc, members: Vec<(usize, VolumeId)> },
}

impl Job {
    /// True for a call whose intent must be durable before it is issued.
    fn changes_aws(&self) -> bool {
        matches!(self, Job::One { action, .. } if action.is_mutating())
    }

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
    pub fn new(
        cfg: &RunConfig,
        env: Env,
        scope: &RunScope<'_>,
        actx: Arc<ActCtx>,
        mut record: RunRecord,
        journal: Journal,
    ) -> Self {
        let plan: &Plan = &cfg.plan;
        let ctx = scope.engine.clone();
        for v in record.volumes.iter_mut() {
            // A copy waiting unlocked on a locked target is locked first.
            if let Some(relocked) = engine::relock(v, &ctx) {
                *v = relocked;
            }
        }
        let places = Places {
            source: (scope.source_account().to_string(), actx.source_region.to_string()),
            targets: actx.targets.iter().map(|t| (t.account.to_string(), t.region.to_string())).collect(),
        };
        Runner {
            env,
            agenda: Agenda::new(&record.volumes, places, plan.options.max_concurrent_copies as usize),
            ctx,
            actx,
            halt: None,
            sources: scope.resolved.volumes.iter().map(|s| (s.volume.id.clone(), s.clone())).collect(),
            rng: seed(&record.meta.run_id),
            progress: cfg.progress.clone(),
            record,
            journal,
        }
    }

    /// The run's state and journal, once the loop has ended.
    pub fn into_parts(self) -> (RunRecord, Journal) {
        (self.record, self.journal)
    }

    fn jitter(&mut self) -> f64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        (self.rng >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Journals volume run `index`'s new state and tells the agenda.
    fn set(&mut self, index: usize, mut next: VolumeRun) -> Result<(), RunError> {
        if next.step == Step::Done {
            next.failing_since_ms = None;
        }
        if next != self.record.volumes[index] {
            let before_step = self.record.volumes[index].step;
            if before_step != next.step {
                log_step(&next, before_step);
            }
            self.journal.volume(index, &next)?;
            let before = std::mem::replace(&mut self.record.volumes[index], next);
            self.agenda.moved(index, &before, &self.record.volumes[index]);
        }
        Ok(())
    }

    /// Where the calls of a poll group go.
    fn loc_of(&self, side: Side) -> Loc {
        match side {
            Side::Source => self.actx.src(),
            Side::Target(t) => self.actx.dst(t),
        }
    }

    /// Drives all volumes to a terminal step, or until shutdown or a credentials
    /// failure stops the invocation.
    ///
    /// Jobs run concurrently and each volume moves on as soon as its own job ends: a
    /// slow or throttled call holds up only its own volumes. On the simulated AWS's
    /// virtual clock time only moves while no job is under way, so a rehearsal is
    /// deterministic.
    pub async fn drive(&mut self, shutdown: watch::Receiver<bool>) -> Result<Ended, RunError> {
        let clock = self.env.clock.clone();
        let virtual_time = clock.is_virtual();
        let mut shutdown = shutdown;
        let mut inflight: FuturesUnordered<BoxFuture<'static, Results>> = FuturesUnordered::new();
        let mut queue: VecDeque<Job> = VecDeque::new();
        let mut stopping = false;
        // Once the sender is gone no shutdown can come; stop listening for one.
        let mut listening = true;
        loop {
            stopping |= *shutdown.borrow() || self.halt.is_some();
            let now = clock.now_ms();
            self.agenda.fire_timers(now);
            if !stopping {
                let jobs = self.plan_tick(now)?;
                // The intents of the calls that change AWS are durable before any is
                // issued, in one write with the outcomes absorbed since the last one.
                // Polls need no intent: their outcomes wait for that write, for the
                // loop to fall idle, or for a bounded backlog.
                if jobs.iter().any(Job::changes_aws) || self.journal.pending_lines() >= UNSYNCED_LINES {
                    self.journal.sync().await?;
                }
                queue.extend(jobs);
            }
            while !stopping && inflight.len() < CALLS_IN_FLIGHT {
                let Some(job) = queue.pop_front() else { break };
                inflight.push(Box::pin(perform_job(self.env.cloud.clone(), self.actx.clone(), job)));
            }
            if queue.is_empty() {
                // The first tick queues a job per volume; keep no room for that after.
                queue.shrink_to(CALLS_IN_FLIGHT * 4);
            }
            if inflight.is_empty() {
                self.journal.sync().await?;
                if stopping {
                    // Queued jobs were never issued; their intents are reconciled on resume.
                    return Ok(match self.halt.take() {
                        Some(e) => Ended::Halted(e),
                        None => Ended::Interrupted,
                    });
                }
                if !self.agenda.has_ready() && self.agenda.all_settled(&self.record.volumes) {
                    return Ok(Ended::Finished);
                }
                if self.agenda.has_ready() {
                    continue;
                }
                self.agenda.wake_open_if_stalled();
                let wake = self.agenda.next_wake(now);
                tokio::select! {
                    _ = clock.sleep_until(wake) => {}
                    r = shutdown.changed(), if listening => listening = r.is_ok(),
                }
                continue;
            }
            if !virtual_time {
                // Against AWS the loop now waits on calls and timers: whatever it has
                // recorded becomes durable first. On the virtual clock calls end at
                // once, and the backlog rule above bounds what a crash can lose.
                self.journal.sync().await?;
            }
            let first = if virtual_time || stopping {
                inflight.next().await
            } else {
                let wake = self.agenda.next_wake(now);
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
            if !done.is_empty() {
                self.absorb_all(done, clock.now_ms()).await?;
            }
        }
    }

    /// Applies the results of the jobs that ended, tells the progress display, and
    /// folds the journal into a checkpoint when it has grown enough.
    async fn absorb_all(&mut self, done: Vec<Results>, now: i64) -> Result<(), RunError> {
        for (index, action, result) in done.into_iter().flatten() {
            self.agenda.ended(index);
            self.absorb(index, &action, result, now)?;
        }
        if let Some(p) = &self.progress {
            p.update(self.agenda.tally());
        }
        if self.journal.wants_compaction() {
            self.record.meta.updated_ms = now;
            self.journal.compact(&self.record).await?;
        }
        Ok(())
    }

    /// Chooses this tick's jobs, from the volume runs on the agenda, and records the
    /// intents of the changing ones.
    fn plan_tick(&mut self, now: i64) -> Result<Vec<Job>, RunError> {
        let mut jobs = vec![];
        let mut due_groups: BTreeSet<PollGroup> = BTreeSet::new();
        for i in self.agenda.take_ready() {
            match self.agenda.pick(i, &self.record.volumes, &self.ctx, &self.actx.run_id, now)? {
                Pick::Idle => {}
                Pick::Move(next) => self.set(i, next)?,
                Pick::Poll(g) => {
                    due_groups.insert(g);
                }
                Pick::Call { action, begin } => {
                    if let Some(next) = begin {
                        self.set(i, next)?;
                    }
                    jobs.push(self.one(i, action));
                }
            }
        }
        // When any member of a group is due, the whole group is asked about in one
        // call: a poll costs the same for one id as for a thousand.
        self.agenda.settle_poll_floor();
        for g in due_groups {
            let loc = self.loc_of(g.1);
            match self.agenda.due_polls(&g, &self.record.volumes, &self.ctx, &self.actx.run_id, now) {
                Polls::Snapshots(picked) => {
                    for chunk in picked.chunks(DESCRIBE_BATCH) {
                        jobs.push(Job::PollSnapshots { loc: loc.clone(), members: chunk.to_vec() });
                    }
                }
                Polls::Volumes(picked) => {
                    for chunk in picked.chunks(DESCRIBE_BATCH / 2) {
                        jobs.push(Job::PollVolumes { loc: loc.clone(), members: chunk.to_vec() });
                    }
                }
            }
        }
        for job in &jobs {
            for i in job.members() {
                self.agenda.started(i);
            }
        }
        self.agenda.pass_free_slots();
        Ok(jobs)
    }

    fn one(&self, index: usize, action: Action) -> Job {
        let volume = Box::new(self.record.volumes[index].clone());
        let source = self.sources.get(&volume.source_volume).cloned();
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
        let e = match result {
            Ok(outcome) => {
                let next = self.agenda.outcome(i, &v, outcome, polled, &self.ctx, now)?;
                return self.set(i, next);
            }
            Err(e) => e,
        };
        // AWS answered with an error: the call did not take effect.
        let next = if e.outcome_known() && action.is_mutating() { engine::refused(&v) } else { v.clone() };
        let jitter = self.jitter();
        let decision = self
            .agenda
            .schedule(i)
            .on_error(action, &e, &self.ctx, now, jitter, || explain(&v, action, &e, &self.actx));
        match decision {
            Decision::Halt => {
                tracing::error!(volume = %v.source_volume, step = v.step.as_str(), error = %e, "credentials refused; stopping");
                self.halt.get_or_insert(e);
                self.set(i, next)
            }
            Decision::QueueForQuota { .. } => {
                // The account's copy quota is taken by copies outside this run:
                // queue behind the copies this run has in flight.
                if let Some((key, cap)) = self.agenda.lower_copy_limit(&v) {
                    tracing::warn!(volume = %v.source_volume, region = key.1, cap, "copy quota reached; queueing copies");
                }
                self.set(i, next)
            }
            Decision::Retry { delay_ms } => {
                tracing::debug!(volume = %v.source_volume, step = v.step.as_str(), error = %e, delay_ms, "retrying");
                self.set(i, next)
            }
            Decision::Fail(outcome) => {
                let next = engine::apply(&next, &outcome, &self.ctx, now)?;
                self.set(i, next)
            }
        }
    }
}

fn log_step(v: &VolumeRun, before: Step) {
    match v.step {
        Step::Failed => {
            let f = v.failure.as_ref();
            tracing::error!(
                volume = %v.source_volume,
                target = v.target,
                step = f.map(|f| f.step.as_str()).unwrap_or("?"),
                error = f.map(|f| f.message.as_str()).unwrap_or(""),
                hint = f.and_then(|f| f.hint.as_deref()).unwrap_or(""),
                "volume failed"
            );
        }
        Step::Done => tracing::info!(
            volume = %v.source_volume,
            target = v.target,
            target_snapshot = v.target_snapshot.as_ref().map(|s| s.as_str()).unwrap_or(""),
            target_volume = v.target_volume.as_ref().map(|s| s.as_str()).unwrap_or(""),
            "volume done"
        ),
        step => {
            tracing::info!(volume = %v.source_volume, target = v.target, from = before.as_str(), step = step.as_str(), "step")
        }
    }
}

/// A failure message naming the resource, and what to do.
fn explain(v: &VolumeRun, action: &Action, e: &CloudError, actx: &ActCtx) -> (String, Option<String>) {
    let what = match action {
        Action::CreateSnapshot => format!("CreateSnapshot of volume {} in {}", v.source_volume, actx.source_region),
        Action::Reencrypt { from } => {
            format!("CopySnapshot of {from} under source key {} in {}", actx.source_key, actx.source_region)
        }
        Action::Share { snapshot } => {
            let with: Vec<&str> = actx.share_with.iter().map(|a| a.as_str()).collect();
            format!("sharing snapshot {snapshot} with account(s) {}", with.join(", "))
        }
        Action::Copy { from } => {
            let t = actx.target(v.target);
            format!("CopySnapshot of {from} into account {} in {} under target key {}", t.account, t.region, t.key)
        }
        Action::CreateVolume { snapshot, .. } => {
            format!("CreateVolume from {snapshot} in {}", actx.target(v.target).availability_zone)
        }
        Action::Cleanup { delete, .. } => format!("deleting intermediate snapshots {delete:?}"),
        Action::Lock { snapshot } | Action::LookUpLock { snapshot } => {
            let t = actx.target(v.target);
            let how = t.lock.map(|l| format!(" ({}, {} days)", l.mode, l.duration_days)).unwrap_or_default();
            format!("LockSnapshot of copy {snapshot}{how} in account {} in {}", t.account, t.region)
        }
        Action::Verify { source, copy } => {
            let t = actx.target(v.target);
            format!(
                "could not verify copy {copy} (account {}, {}) against {source}: the EBS direct API call",
                t.account, t.region
            )
        }
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
                Ok(found) => {
                    let found: HashMap<&SnapshotId, &crate::cloud::Snapshot> =
                        found.iter().map(|s| (&s.id, s)).collect();
                    members
                        .into_iter()
                        .map(|(i, id, which)| {
                            let outcome = found.get(&id).map(|s| act::snapshot_outcome(s)).unwrap_or(Outcome::Missing);
                            (i, Action::PollSnapshot { which, id }, Ok(outcome))
                        })
                        .collect()
                }
                Err(e) => members
                    .into_iter()
                    .map(|(i, id, which)| (i, Action::PollSnapshot { which, id }, Err(e.clone())))
                    .collect(),
            }
        }
        Job::PollVolumes { loc, members } => {
            let ids: Vec<VolumeId> = members.iter().map(|m| m.1.clone()).collect();
            match cloud.describe_volumes(&loc, &ids).await {
                Ok(found) => {
                    let found: HashMap<&VolumeId, &Volume> = found.iter().map(|x| (&x.id, x)).collect();
                    members
                        .into_iter()
                        .map(|(i, id)| {
                            let outcome = found.get(&id).map(|x| act::volume_outcome(x)).unwrap_or(Outcome::Missing);
                            (i, Action::PollVolume { id }, Ok(outcome))
                        })
                        .collect()
                }
                Err(e) => members.into_iter().map(|(i, id)| (i, Action::PollVolume { id }, Err(e.clone()))).collect(),
            }
        }
    }
}
