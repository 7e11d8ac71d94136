//! The driving loop of a run: every volume's step machine moved on as its calls end,
//! polls batched, copies under their limit, the state journalled before and after
//! every call that changes AWS (see the module doc of `exec`). What happens after an
//! error or a long wait is decided in `sched`; the run's lifecycle around this loop
//! is in `lifecycle`.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap, VecDeque};
use std::sync::Arc;

use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use tokio::sync::watch;

use crate::checkpoint::{Journal, RunRecord};
use crate::cloud::{CloudError, ErrorKind, Loc, Volume};
use crate::engine::{self, Action, Ctx, Join, Outcome, Step, VolumeRun, Which};
use crate::ids::{RunId, SnapshotId, VolumeId};
use crate::plan::{Plan, TargetVolume};

use super::act::{self, ActCtx};
use super::preflight::SourceVolume;
use super::sched::{Decision, VolumeSched};
use super::scope::RunScope;
use super::{Env, RunError};

/// Outcomes of polls and of ended calls held unsynced at most, when no call that
/// changes AWS comes to sync them: lost in a crash, they are looked up again.
const UNSYNCED_LINES: usize = 512;
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
    sched: Vec<VolumeSched>,
    /// Set when the credentials were refused: nothing more is issued.
    halt: Option<CloudError>,
    sources: HashMap<VolumeId, Arc<SourceVolume>>,
    copy_limit: usize,
    rng: u64,
    /// The shortest poll interval now, by how many volumes wait.
    poll_floor_ms: i64,
    progress: Option<std::sync::Arc<dyn Progress>>,
    /// Volumes with a job under way; they are left out of planning until it ends.
    busy: Vec<bool>,
    /// Lowered copy limits per destination, after ResourceLimitExceeded.
    slot_caps: BTreeMap<Slot, usize>,
    /// Per follower, the index of its lead (the run of the same volume that takes the
    /// source side); per lead, its followers.
    lead_of: Vec<Option<usize>>,
    followers: Vec<Vec<usize>>,
    /// The caller's account: the slot of re-encryption copies.
    source_account: String,
    /// The agenda. A planning pass looks only at the volume runs in `ready` (their
    /// state, schedule or a neighbour's changed, or a timer of theirs fired), so its
    /// cost follows the events, not the fleet. Ordered, so a pass is deterministic.
    ready: BTreeSet<usize>,
    /// Wake-ups (time, volume run): a retry's delay, a poll, a wait's timeout. An entry
    /// made stale by a later change only costs one look when it fires.
    timers: BinaryHeap<Reverse<(i64, usize)>>,
    /// Per volume run, the time of its pending wake-up (`i64::MAX`: none).
    wake_at: Vec<i64>,
    /// Copies in flight per destination, kept as states change.
    slots: BTreeMap<Slot, usize>,
    /// Volume runs waiting for a slot, per destination, in arrival order; a copy that
    /// ends wakes as many as slots are free.
    slot_queue: BTreeMap<Slot, VecDeque<usize>>,
    queued: Vec<bool>,
    /// Volume runs in a wait, per poll group (one Describe call answers a group).
    groups: BTreeMap<PollGroup, BTreeSet<usize>>,
    waiting: usize,
    /// Volume runs not yet at Done or Failed.
    open: BTreeSet<usize>,
    tally: Tally,
}

/// A destination of copies: (account, region). The copy limit counts per slot.
type Slot = (String, String);

/// Waits answered by one call: snapshots (`true`) or volumes, in one place.
type PollGroup = (bool, Loc);

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
        record: RunRecord,
        journal: Journal,
    ) -> Self {
        let plan: &Plan = &cfg.plan;
        let n = record.volumes.len();
        let (lead_of, followers) = kin(&record.volumes);
        let mut r = Runner {
            env,
            ctx: scope.engine.clone(),
            actx,
            sched: vec![VolumeSched::default(); n],
            halt: None,
            sources: scope.resolved.volumes.iter().map(|s| (s.volume.id.clone(), s.clone())).collect(),
            copy_limit: plan.options.max_concurrent_copies as usize,
            rng: seed(&record.meta.run_id),
            poll_floor_ms: MIN_POLL_MS,
            progress: cfg.progress.clone(),
            busy: vec![false; n],
            slot_caps: BTreeMap::new(),
            lead_of,
            followers,
            source_account: scope.source_account().to_string(),
            ready: (0..n).collect(),
            timers: BinaryHeap::new(),
            wake_at: vec![i64::MAX; n],
            slots: BTreeMap::new(),
            slot_queue: BTreeMap::new(),
            queued: vec![false; n],
            groups: BTreeMap::new(),
            waiting: 0,
            open: BTreeSet::new(),
            tally: Tally { total: n, ..Tally::default() },
            record,
            journal,
        };
        for i in 0..n {
            // A copy waiting unlocked on a locked target is locked first.
            if let Some(relocked) = engine::relock(&r.record.volumes[i], &r.ctx) {
                r.record.volumes[i] = relocked;
            }
            let v = r.record.volumes[i].clone();
            r.count(i, &v, true);
        }
        r
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

    /// Adds (`add`) or takes away what volume run `i` in state `v` counts for: its
    /// copy slot, its poll group, the open set and the tally.
    fn count(&mut self, i: usize, v: &VolumeRun, add: bool) {
        if let Some(slot) = self.occupied_slot(v) {
            let n = self.slots.entry(slot).or_default();
            *n = if add { *n + 1 } else { n.saturating_sub(1) };
        }
        if let Some(g) = self.poll_group(v) {
            let members = self.groups.entry(g).or_default();
            let changed = if add { members.insert(i) } else { members.remove(&i) };
            if changed {
                self.waiting = if add { self.waiting + 1 } else { self.waiting.saturating_sub(1) };
            }
        }
        if !v.step.is_terminal() {
            if add {
                self.open.insert(i);
            } else {
                self.open.remove(&i);
            }
        }
        let t = &mut self.tally;
        let bump = |x: &mut usize| *x = if add { *x + 1 } else { x.saturating_sub(1) };
        match v.step {
            Step::Done => bump(&mut t.done),
            Step::Failed => bump(&mut t.failed),
            Step::Copy | Step::Lock | Step::WaitCopy => bump(&mut t.copying),
            _ => {}
        }
    }

    fn set(&mut self, index: usize, mut next: VolumeRun) -> Result<(), RunError> {
        if next.step == Step::Done {
            next.failing_since_ms = None;
        }
        if next != self.record.volumes[index] {
            let before = self.record.volumes[index].clone();
            if before.step != next.step {
                log_step(&next, before.step);
            }
            self.journal.volume(index, &next)?;
            self.count(index, &before, false);
            self.count(index, &next, true);
            let freed = self.occupied_slot(&before).filter(|s| self.occupied_slot(&next).as_ref() != Some(s));
            self.record.volumes[index] = next;
            if let Some(slot) = freed {
                self.wake_slot(&slot);
            }
            // The volume, and those that wait on it: a lead's followers wait for its
            // snapshot, a lead's cleanup for its followers' copies.
            self.ready.insert(index);
            if let Some(l) = self.lead_of[index] {
                self.ready.insert(l);
            }
            for f in 0..self.followers[index].len() {
                let f = self.followers[index][f];
                self.ready.insert(f);
            }
        }
        Ok(())
    }

    /// The destination whose copy limit a volume run's copy step counts against:
    /// re-encryption in the source account and region, the copy in its target's.
    fn copy_slot(&self, v: &VolumeRun) -> Option<Slot> {
        match v.step {
            Step::Reencrypt | Step::WaitReencrypt => {
                Some((self.source_account.clone(), self.actx.source_region.to_string()))
            }
            Step::Copy | Step::Lock | Step::WaitCopy => {
                let t = self.actx.target(v.target);
                Some((t.account.to_string(), t.region.to_string()))
            }
            _ => None,
        }
    }

    /// The slot `v` holds: a copy issued or under way.
    fn occupied_slot(&self, v: &VolumeRun) -> Option<Slot> {
        let holds = matches!(v.step, Step::WaitReencrypt | Step::Lock | Step::WaitCopy)
            || (matches!(v.step, Step::Reencrypt | Step::Copy) && v.in_flight);
        if holds { self.copy_slot(v) } else { None }
    }

    /// The poll group of a volume run in a wait.
    fn poll_group(&self, v: &VolumeRun) -> Option<PollGroup> {
        match v.step {
            Step::WaitSnapshot | Step::WaitReencrypt => Some((true, self.actx.src())),
            Step::WaitCopy => Some((true, self.actx.dst(v.target))),
            Step::WaitVolume => Some((false, self.actx.dst(v.target))),
            _ => None,
        }
    }

    fn in_use(&self, slot: &Slot) -> usize {
        self.slots.get(slot).copied().unwrap_or(0)
    }

    /// A copy into `slot` ended: as many queued volume runs as slots are free get a look.
    fn wake_slot(&mut self, slot: &Slot) {
        let free = self.slot_cap(slot).saturating_sub(self.in_use(slot)).max(1);
        if let Some(q) = self.slot_queue.get_mut(slot) {
            for _ in 0..free {
                let Some(i) = q.pop_front() else { break };
                self.queued[i] = false;
                self.ready.insert(i);
            }
        }
    }

    /// Wakes volume run `i` at `at`, unless it is woken earlier already: each keeps one
    /// wake-up, its earliest, and the next is set when that one fires.
    fn timer(&mut self, at: i64, i: usize) {
        if at < self.wake_at[i] {
            self.wake_at[i] = at;
            self.timers.push(Reverse((at, i)));
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
            while let Some(Reverse((t, i))) = self.timers.peek().copied() {
                if t > now {
                    break;
                }
                self.timers.pop();
                // An entry overtaken by an earlier wake-up of the same run is stale.
                if t == self.wake_at[i] {
                    self.wake_at[i] = i64::MAX;
                    self.ready.insert(i);
                }
            }
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
                if self.ready.is_empty() && self.all_settled() {
                    return Ok(Ended::Finished);
                }
                if !self.ready.is_empty() {
                    continue;
                }
                if self.timers.is_empty() {
                    // Nothing is due and nothing will wake anyone: look at every open
                    // volume run again after a while rather than stall.
                    let open: Vec<usize> = self.open.iter().copied().collect();
                    self.ready.extend(open);
                }
                let wake = self.next_wake(now);
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
                self.ready.insert(index);
            }
            if let Some(p) = &self.progress {
                p.update(&self.tally);
            }
            if self.journal.wants_compaction() {
                self.record.meta.updated_ms = now;
                self.journal.compact(&self.record).await?;
            }
        }
    }

    /// True when every volume run has ended or waits on a follower that failed. Looks
    /// only at the open ones, and stops at the first that can still move.
    fn all_settled(&self) -> bool {
        self.open.iter().all(|&i| self.settled(i))
    }

    /// When the loop next has something to do: the earliest timer, at most
    /// `MAX_POLL_MS` away.
    fn next_wake(&self, now: i64) -> i64 {
        if !self.ready.is_empty() {
            return now;
        }
        let cap = now + MAX_POLL_MS;
        self.timers.peek().map(|Reverse((t, _))| (*t).clamp(now + 1, cap)).unwrap_or(cap)
    }

    /// Chooses this tick's jobs, from the volume runs on the agenda, and records the
    /// intents of the changing ones.
    fn plan_tick(&mut self, now: i64) -> Result<Vec<Job>, RunError> {
        let mut jobs = vec![];
        let mut due_groups: BTreeSet<PollGroup> = BTreeSet::new();
        let agenda = std::mem::take(&mut self.ready);
        for i in agenda {
            let v = &self.record.volumes[i];
            if v.step.is_terminal() || self.busy[i] {
                continue;
            }
            // A wait past its timeout is given up for this invocation, once polled by
            // it; the resource stays in AWS and is waited on next time.
            if self.sched[i].wait_given_up(v, &self.ctx, now) {
                let next =
                    engine::apply(v, &Outcome::TimedOut, &self.ctx, now).map_err(|e| RunError::Other(e.to_string()))?;
                self.set(i, next)?;
                continue;
            }
            if self.sched[i].not_before_ms > now {
                let t = self.sched[i].not_before_ms;
                self.timer(t, i);
                continue;
            }
            let action = engine::next_action_in(v, &self.actx.run_id, &self.ctx);
            if matches!(action, Action::Cleanup { .. }) && !self.may_clean_up(i) {
                // The intermediates are still needed by another target's copy; that
                // copy's progress puts this volume run back on the agenda.
                continue;
            }
            match action {
                Action::AwaitSource => {
                    let joined = match self.lead_of[i] {
                        Some(l) => engine::join(v, &self.record.volumes[l], now),
                        None => Join::Failed(
                            engine::apply(
                                v,
                                &Outcome::Fatal {
                                    message: format!(
                                        "the checkpoint has no run of {} that takes its source side",
                                        v.source_volume
                                    ),
                                    hint: Some("run snapferry cleanup for this run and start a new one".to_owned()),
                                },
                                &self.ctx,
                                now,
                            )
                            .map_err(|e| RunError::Other(e.to_string()))?,
                        ),
                    };
                    match joined {
                        // The lead's progress puts this follower back on the agenda.
                        Join::Wait => {}
                        Join::Joined(next) | Join::Failed(next) => {
                            self.sched[i].step_changed();
                            self.set(i, next)?;
                        }
                    }
                }
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
                Action::PollSnapshot { .. } | Action::PollVolume { .. } => {
                    let group = self.poll_group(v);
                    // The wait's timeout is a wake-up too.
                    if let (Some(start), Some(limit)) = (v.wait_started_ms, engine::wait_limit_ms(v.step, &self.ctx)) {
                        self.timer(start + limit + 1, i);
                    }
                    let next_poll = self.sched[i].next_poll_ms;
                    match group {
                        Some(g) if next_poll <= now => {
                            due_groups.insert(g);
                        }
                        _ => self.timer(next_poll, i),
                    }
                }
                a if a.is_mutating() => {
                    if matches!(a, Action::Reencrypt { .. } | Action::Copy { .. }) {
                        let key = self.copy_slot(v).expect("copy steps have a slot");
                        if self.in_use(&key) >= self.slot_cap(&key) {
                            // Queued: a copy into this destination that ends wakes it.
                            if !self.queued[i] {
                                self.queued[i] = true;
                                self.slot_queue.entry(key).or_default().push_back(i);
                            }
                            continue;
                        }
                    }
                    let next = engine::begin(v, now);
                    self.set(i, next)?;
                    // `set` put it back on the agenda; its job takes it off.
                    self.ready.remove(&i);
                    jobs.push(self.one(i, a));
                }
                a => jobs.push(self.one(i, a)),
            }
        }
        // When any member of a group is due, the whole group is asked about in one
        // call: a poll costs the same for one id as for a thousand.
        self.poll_floor_ms = if self.waiting > FLEET_SIZE { FLEET_POLL_MS } else { MIN_POLL_MS };
        for g in due_groups {
            let members: Vec<usize> = self.groups.get(&g).map(|m| m.iter().copied().collect()).unwrap_or_default();
            let members = members.into_iter().filter(|i| !self.busy[*i] && self.sched[*i].not_before_ms <= now);
            let (snapshots, loc) = g;
            if snapshots {
                let picked: Vec<(usize, SnapshotId, Which)> = members
                    .filter_map(|i| {
                        match engine::next_action_in(&self.record.volumes[i], &self.actx.run_id, &self.ctx) {
                            Action::PollSnapshot { which, id } => Some((i, id, which)),
                            _ => None,
                        }
                    })
                    .collect();
                for chunk in picked.chunks(DESCRIBE_BATCH) {
                    jobs.push(Job::PollSnapshots { loc: loc.clone(), members: chunk.to_vec() });
                }
            } else {
                let picked: Vec<(usize, VolumeId)> = members
                    .filter_map(|i| {
                        match engine::next_action_in(&self.record.volumes[i], &self.actx.run_id, &self.ctx) {
                            Action::PollVolume { id } => Some((i, id)),
                            _ => None,
                        }
                    })
                    .collect();
                for chunk in picked.chunks(DESCRIBE_BATCH / 2) {
                    jobs.push(Job::PollVolumes { loc: loc.clone(), members: chunk.to_vec() });
                }
            }
        }
        for job in &jobs {
            for i in job.members() {
                self.busy[i] = true;
                self.ready.remove(&i);
            }
        }
        // A slot left free (a woken volume run went elsewhere) goes to the next in line.
        let free: Vec<Slot> = self
            .slot_queue
            .iter()
            .filter(|(slot, q)| !q.is_empty() && self.in_use(slot) < self.slot_cap(slot))
            .map(|(slot, _)| slot.clone())
            .collect();
        for slot in free {
            self.wake_slot(&slot);
        }
        Ok(jobs)
    }

    /// True when volume run `i` has nothing more to do in this invocation: it ended, or
    /// it is a lead whose cleanup waits for a follower that failed before its copy was
    /// complete (the intermediates stay for the rerun that makes that copy).
    fn settled(&self, i: usize) -> bool {
        let v = &self.record.volumes[i];
        v.step.is_terminal()
            || (v.step == Step::Cleanup
                && self.followers[i].iter().any(|f| {
                    let f = &self.record.volumes[*f];
                    f.step == Step::Failed && !f.copy_complete()
                }))
    }

    /// True when lead `i` may delete its intermediates: every follower's copy is complete.
    fn may_clean_up(&self, i: usize) -> bool {
        engine::may_clean_up(self.followers[i].iter().map(|f| &self.record.volumes[*f]))
    }

    /// Copies allowed at once into a destination: the plan's limit, or less once AWS
    /// said ResourceLimitExceeded there (other copies in the account hold slots).
    fn slot_cap(&self, key: &Slot) -> usize {
        self.slot_caps.get(key).copied().unwrap_or(self.copy_limit)
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
        match result {
            Ok(outcome) => {
                let outcome = self.sched[i].on_outcome(&v, outcome, polled, now);
                let next = engine::apply(&v, &outcome, &self.ctx, now).map_err(|e| RunError::Other(e.to_string()))?;
                if next.step != v.step {
                    self.sched[i].step_changed();
                }
                if polled || next.step != v.step {
                    self.schedule_poll(i, &next, now);
                }
                self.set(i, next)
            }
            Err(e) => {
                // AWS answered with an error: the call did not take effect.
                let next = if e.outcome_known() && action.is_mutating() { engine::refused(&v) } else { v.clone() };
                let jitter = self.jitter();
                let decision =
                    self.sched[i].on_error(action, &e, &self.ctx, now, jitter, || explain(&v, action, &e, &self.actx));
                match decision {
                    Decision::Halt => {
                        tracing::error!(volume = %v.source_volume, step = v.step.as_str(), error = %e, "credentials refused; stopping");
                        self.halt.get_or_insert(e);
                        self.set(i, next)
                    }
                    Decision::QueueForQuota { .. } => {
                        // The account's copy quota is taken by copies outside this run:
                        // queue behind the copies this run has in flight.
                        if let Some(key) = self.copy_slot(&v) {
                            let in_use = self.in_use(&key).saturating_sub(1);
                            let cap = in_use.max(1);
                            tracing::warn!(volume = %v.source_volume, region = key.1, cap, "copy quota reached; queueing copies");
                            self.slot_caps.insert(key, cap);
                        }
                        self.set(i, next)
                    }
                    Decision::Retry { delay_ms } => {
                        tracing::debug!(volume = %v.source_volume, step = v.step.as_str(), error = %e, delay_ms, "retrying");
                        self.set(i, next)
                    }
                    Decision::Fail(outcome) => {
                        let next = engine::apply(&next, &outcome, &self.ctx, now)
                            .map_err(|e| RunError::Other(e.to_string()))?;
                        self.set(i, next)
                    }
                }
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

/// Who leads whom: per volume run, the index of its lead when it is a follower, and
/// per lead, its followers. A follower's lead is the run of the same source volume
/// and chain that is not a follower and not left fresh.
pub(crate) fn kin(volumes: &[VolumeRun]) -> (Vec<Option<usize>>, Vec<Vec<usize>>) {
    let mut leads: HashMap<(&VolumeId, Option<&str>), usize> = HashMap::new();
    for (i, v) in volumes.iter().enumerate() {
        if !v.follower && !v.fresh {
            leads.entry((&v.source_volume, v.chain.as_deref())).or_insert(i);
        }
    }
    let mut lead_of = vec![None; volumes.len()];
    let mut followers = vec![vec![]; volumes.len()];
    for (i, v) in volumes.iter().enumerate() {
        if v.follower
            && !v.fresh
            && let Some(&l) = leads.get(&(&v.source_volume, v.chain.as_deref()))
        {
            lead_of[i] = Some(l);
            followers[l].push(i);
        }
    }
    (lead_of, followers)
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
