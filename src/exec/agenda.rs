//! The runner's agenda: which volume runs to look at next and what each may do now.
//! It holds what is ready, the timers (retries, polls, a wait's timeout), the copy
//! slots per destination and their queues, the poll groups, who leads whom, and each
//! volume run's schedule (`sched::VolumeSched`); and it keeps the counts (copies in
//! flight, waits, open runs, the tally) as states change, never recounting the fleet.
//!
//! Pure: no tokio, no cloud calls, no clock. Time arrives as an argument, the volume
//! runs' states as a slice the runner owns; the runner makes the calls, journals the
//! states and tells the agenda what moved (`moved`), what started and what ended.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap, VecDeque};

use crate::cloud::Side;
use crate::engine::{self, Action, Ctx, IllegalTransition, Join, Outcome, Step, VolumeRun, Which};
use crate::ids::{SnapshotId, VolumeId};

use super::sched::VolumeSched;

/// The first poll of a new wait, and the floor of later ones, for small runs.
const MIN_POLL_MS: i64 = 5_000;
/// The floor when many volumes wait at once: one DescribeSnapshots answers for all of
/// them, so polling less often costs little latency and saves many calls.
const FLEET_POLL_MS: i64 = 30_000;
/// Waiting volumes beyond which the fleet floor applies.
const FLEET_SIZE: usize = 20;
/// The ceiling of the poll interval: AWS's own waiters use 15 to 120 s.
pub const MAX_POLL_MS: i64 = 120_000;

/// A destination of copies: (account, region). The copy limit counts per slot.
pub type Slot = (String, String);

/// Waits answered by one call: snapshots (`true`) or volumes, on one side (one region:
/// the source's, or a target's).
pub type PollGroup = (bool, Side);

/// Where a run's copies count against the copy limit: re-encryption in the source
/// account and region, each target's copy in that target's.
#[derive(Debug, Clone)]
pub struct Places {
    pub source: Slot,
    /// Per target, in the plan's order.
    pub targets: Vec<Slot>,
}

impl Places {
    /// Target `t`'s slot; the first target's for an index past the plan's (a damaged
    /// checkpoint), as `ActCtx::target`.
    fn target(&self, t: u8) -> &Slot {
        self.targets.get(usize::from(t)).or(self.targets.first()).expect("a plan has at least one target")
    }
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

/// What a volume run on the agenda does now.
#[derive(Debug, Clone, PartialEq)]
pub enum Pick {
    /// Nothing now: it ended or has a call under way, or it waits for a timer, a copy
    /// slot, its lead or its followers (each of which puts it back on the agenda).
    Idle,
    /// A new state reached without a call: a wait given up, a follower joined (or
    /// failed with its lead), an inconsistent checkpoint failed.
    Move(VolumeRun),
    /// A member of this poll group is due: the whole group is asked about in one call.
    Poll(PollGroup),
    /// A call to make now. `begin`: for a call that changes AWS, the state with its
    /// intent, to journal before the call is issued.
    Call { action: Action, begin: Option<VolumeRun> },
}

/// The members of a due poll group to ask about, with the ids to describe.
#[derive(Debug, Clone, PartialEq)]
pub enum Polls {
    Snapshots(Vec<(usize, SnapshotId, Which)>),
    Volumes(Vec<(usize, VolumeId)>),
}

pub struct Agenda {
    places: Places,
    /// The plan's copy limit per destination.
    copy_limit: usize,
    sched: Vec<VolumeSched>,
    /// Volume runs with a job under way; they are left out of planning until it ends.
    busy: Vec<bool>,
    /// Per follower, the index of its lead (the run of the same volume that takes the
    /// source side); per lead, its followers.
    lead_of: Vec<Option<usize>>,
    followers: Vec<Vec<usize>>,
    /// The volume runs to look at in the next pass (their state, schedule or a
    /// neighbour's changed, or a timer of theirs fired), so a pass's cost follows the
    /// events, not the fleet. Ordered, so a pass is deterministic.
    ready: BTreeSet<usize>,
    /// Wake-ups (time, volume run): a retry's delay, a poll, a wait's timeout. An entry
    /// made stale by a later change only costs one look when it fires.
    timers: BinaryHeap<Reverse<(i64, usize)>>,
    /// Per volume run, the time of its pending wake-up (`i64::MAX`: none).
    wake_at: Vec<i64>,
    /// Lowered copy limits per destination, after ResourceLimitExceeded.
    slot_caps: BTreeMap<Slot, usize>,
    /// Copies in flight per destination.
    slots: BTreeMap<Slot, usize>,
    /// Volume runs waiting for a slot, per destination, in arrival order; a copy that
    /// ends wakes as many as slots are free.
    slot_queue: BTreeMap<Slot, VecDeque<usize>>,
    queued: Vec<bool>,
    /// Volume runs in a wait, per poll group.
    groups: BTreeMap<PollGroup, BTreeSet<usize>>,
    waiting: usize,
    /// The shortest poll interval now, by how many volumes wait.
    poll_floor_ms: i64,
    /// Volume runs not yet at Done or Failed.
    open: BTreeSet<usize>,
    tally: Tally,
}

impl Agenda {
    /// The agenda of `volumes` as they stand, every one of them ready for a first look.
    pub fn new(volumes: &[VolumeRun], places: Places, copy_limit: usize) -> Self {
        let n = volumes.len();
        let (lead_of, followers) = kin(volumes);
        let mut a = Agenda {
            places,
            copy_limit,
            sched: vec![VolumeSched::default(); n],
            busy: vec![false; n],
            lead_of,
            followers,
            ready: (0..n).collect(),
            timers: BinaryHeap::new(),
            wake_at: vec![i64::MAX; n],
            slot_caps: BTreeMap::new(),
            slots: BTreeMap::new(),
            slot_queue: BTreeMap::new(),
            queued: vec![false; n],
            groups: BTreeMap::new(),
            waiting: 0,
            poll_floor_ms: MIN_POLL_MS,
            open: BTreeSet::new(),
            tally: Tally { total: n, ..Tally::default() },
        };
        for (i, v) in volumes.iter().enumerate() {
            a.count(i, v, true);
        }
        a
    }

    pub fn tally(&self) -> &Tally {
        &self.tally
    }

    /// True when some volume run waits for a look.
    pub fn has_ready(&self) -> bool {
        !self.ready.is_empty()
    }

    /// The volume runs to look at in this pass; the agenda starts over empty.
    pub fn take_ready(&mut self) -> BTreeSet<usize> {
        std::mem::take(&mut self.ready)
    }

    /// Puts every volume run whose wake-up is due at `now` on the agenda.
    pub fn fire_timers(&mut self, now: i64) {
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
    }

    /// With nothing due and no timer to wake anyone, every open volume run gets another
    /// look rather than the loop stalling.
    pub fn wake_open_if_stalled(&mut self) {
        if self.timers.is_empty() {
            self.ready.extend(self.open.iter().copied());
        }
    }

    /// When the loop next has something to do: now with anything ready, else the
    /// earliest timer, at most `MAX_POLL_MS` away.
    pub fn next_wake(&self, now: i64) -> i64 {
        if !self.ready.is_empty() {
            return now;
        }
        let cap = now + MAX_POLL_MS;
        self.timers.peek().map(|Reverse((t, _))| (*t).clamp(now + 1, cap)).unwrap_or(cap)
    }

    /// True when every volume run has ended or waits on a follower that failed. Looks
    /// only at the open ones, and stops at the first that can still move.
    pub fn all_settled(&self, volumes: &[VolumeRun]) -> bool {
        self.open.iter().all(|&i| self.settled(i, volumes))
    }

    /// True when volume run `i` has nothing more to do in this invocation: it ended, or
    /// it is a lead whose cleanup waits for a follower that failed before its copy was
    /// complete (the intermediates stay for the rerun that makes that copy).
    fn settled(&self, i: usize, volumes: &[VolumeRun]) -> bool {
        let v = &volumes[i];
        v.step.is_terminal()
            || (v.step == Step::Cleanup
                && self.followers[i].iter().any(|f| {
                    let f = &volumes[*f];
                    f.step == Step::Failed && !f.copy_complete()
                }))
    }

    /// What volume run `i` does now, at `now`. A wake-up it needs is set here; a copy
    /// with no free slot joins its destination's queue.
    pub fn pick(
        &mut self,
        i: usize,
        volumes: &[VolumeRun],
        ctx: &Ctx,
        run_id: &str,
        now: i64,
    ) -> Result<Pick, IllegalTransition> {
        let v = &volumes[i];
        if v.step.is_terminal() || self.busy[i] {
            return Ok(Pick::Idle);
        }
        // A wait past its timeout is given up for this invocation, once polled by it;
        // the resource stays in AWS and is waited on next time.
        if self.sched[i].wait_given_up(v, ctx, now) {
            return Ok(Pick::Move(engine::apply(v, &Outcome::TimedOut, ctx, now)?));
        }
        let not_before = self.sched[i].not_before_ms;
        if not_before > now {
            self.timer(not_before, i);
            return Ok(Pick::Idle);
        }
        let action = engine::next_action_in(v, run_id, ctx);
        if matches!(action, Action::Cleanup { .. }) && !self.may_clean_up(i, volumes) {
            // The intermediates are still needed by another target's copy; that
            // copy's progress puts this volume run back on the agenda.
            return Ok(Pick::Idle);
        }
        match action {
            Action::AwaitSource => {
                let joined = match self.lead_of[i] {
                    Some(l) => engine::join(v, &volumes[l], now),
                    None => Join::Failed(engine::apply(
                        v,
                        &Outcome::Fatal {
                            message: format!(
                                "the checkpoint has no run of {} that takes its source side",
                                v.source_volume
                            ),
                            hint: Some("run snapferry cleanup for this run and start a new one".to_owned()),
                        },
                        ctx,
                        now,
                    )?),
                };
                match joined {
                    // The lead's progress puts this follower back on the agenda.
                    Join::Wait => Ok(Pick::Idle),
                    Join::Joined(next) | Join::Failed(next) => {
                        self.sched[i].step_changed();
                        Ok(Pick::Move(next))
                    }
                }
            }
            Action::Nothing => {
                let fatal = Outcome::Fatal {
                    message: format!("the checkpoint of this volume is inconsistent at step {}", v.step.as_str()),
                    hint: Some("run snapferry cleanup for this run and start a new one".to_owned()),
                };
                Ok(Pick::Move(engine::apply(v, &fatal, ctx, now)?))
            }
            Action::PollSnapshot { .. } | Action::PollVolume { .. } => {
                // The wait's timeout is a wake-up too.
                if let (Some(start), Some(limit)) = (v.wait_started_ms, engine::wait_limit_ms(v.step, ctx)) {
                    self.timer(start + limit + 1, i);
                }
                let next_poll = self.sched[i].next_poll_ms;
                match self.poll_group(v) {
                    Some(g) if next_poll <= now => Ok(Pick::Poll(g)),
                    _ => {
                        self.timer(next_poll, i);
                        Ok(Pick::Idle)
                    }
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
                        return Ok(Pick::Idle);
                    }
                }
                Ok(Pick::Call { begin: Some(engine::begin(v, now)), action: a })
            }
            a => Ok(Pick::Call { action: a, begin: None }),
        }
    }

    /// Sets the poll floor for the polls scheduled from now on, by how many volume runs
    /// wait: many waits share one Describe call, so they are polled less often.
    pub fn settle_poll_floor(&mut self) {
        self.poll_floor_ms = if self.waiting > FLEET_SIZE { FLEET_POLL_MS } else { MIN_POLL_MS };
    }

    /// The members of poll group `g` to ask about at `now`: every one in the group with
    /// no call under way and not held back by a retry, not only those on the agenda (a
    /// poll costs the same for one id as for a thousand).
    pub fn due_polls(&self, g: &PollGroup, volumes: &[VolumeRun], ctx: &Ctx, run_id: &str, now: i64) -> Polls {
        let members = self.groups.get(g).into_iter().flatten().copied();
        let members = members.filter(|i| !self.busy[*i] && self.sched[*i].not_before_ms <= now);
        if g.0 {
            Polls::Snapshots(
                members
                    .filter_map(|i| match engine::next_action_in(&volumes[i], run_id, ctx) {
                        Action::PollSnapshot { which, id } => Some((i, id, which)),
                        _ => None,
                    })
                    .collect(),
            )
        } else {
            Polls::Volumes(
                members
                    .filter_map(|i| match engine::next_action_in(&volumes[i], run_id, ctx) {
                        Action::PollVolume { id } => Some((i, id)),
                        _ => None,
                    })
                    .collect(),
            )
        }
    }

    /// A job for volume run `i` is under way: it is left out of planning until it ends.
    pub fn started(&mut self, i: usize) {
        self.busy[i] = true;
        self.ready.remove(&i);
    }

    /// The job of volume run `i` ended: it gets a look in the next pass.
    pub fn ended(&mut self, i: usize) {
        self.busy[i] = false;
        self.ready.insert(i);
    }

    /// A slot left free at the end of a pass (a woken volume run went elsewhere) goes to
    /// the next in line.
    pub fn pass_free_slots(&mut self) {
        let free: Vec<Slot> = self
            .slot_queue
            .iter()
            .filter(|(slot, q)| !q.is_empty() && self.in_use(slot) < self.slot_cap(slot))
            .map(|(slot, _)| slot.clone())
            .collect();
        for slot in free {
            self.wake_slot(&slot);
        }
    }

    /// Volume run `i` went from `before` to `after`: the counts follow, a copy slot it
    /// freed goes to the next in line, and it and those that wait on it get a look (a
    /// lead's followers wait for its snapshot, a lead's cleanup for its followers'
    /// copies).
    pub fn moved(&mut self, i: usize, before: &VolumeRun, after: &VolumeRun) {
        self.count(i, before, false);
        self.count(i, after, true);
        let freed = self.occupied_slot(before).filter(|s| self.occupied_slot(after).as_ref() != Some(s));
        if let Some(slot) = freed {
            self.wake_slot(&slot);
        }
        self.ready.insert(i);
        if let Some(l) = self.lead_of[i] {
            self.ready.insert(l);
        }
        for f in 0..self.followers[i].len() {
            let f = self.followers[i][f];
            self.ready.insert(f);
        }
    }

    /// AWS answered volume run `i` (in state `v`) with `outcome`: its next state, with
    /// the next poll spaced from the progress reported.
    pub fn outcome(
        &mut self,
        i: usize,
        v: &VolumeRun,
        outcome: Outcome,
        polled: bool,
        ctx: &Ctx,
        now: i64,
    ) -> Result<VolumeRun, IllegalTransition> {
        let outcome = self.sched[i].on_outcome(v, outcome, polled, now);
        let next = engine::apply(v, &outcome, ctx, now)?;
        if next.step != v.step {
            self.sched[i].step_changed();
        }
        if polled || next.step != v.step {
            self.schedule_poll(i, &next, now);
        }
        Ok(next)
    }

    /// Volume run `i`'s schedule, which decides what follows a failed call (`sched`).
    pub fn schedule(&mut self, i: usize) -> &mut VolumeSched {
        &mut self.sched[i]
    }

    /// The account's copy quota is taken by copies outside this run: the limit of
    /// `v`'s destination drops to what the run has in flight there (at least one), so
    /// its copies queue behind those. The destination and its new limit.
    pub fn lower_copy_limit(&mut self, v: &VolumeRun) -> Option<(Slot, usize)> {
        let key = self.copy_slot(v)?;
        let cap = self.in_use(&key).saturating_sub(1).max(1);
        self.slot_caps.insert(key.clone(), cap);
        Some((key, cap))
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

    /// The destination whose copy limit a volume run's copy step counts against.
    fn copy_slot(&self, v: &VolumeRun) -> Option<Slot> {
        match v.step {
            Step::Reencrypt | Step::WaitReencrypt => Some(self.places.source.clone()),
            Step::Copy | Step::Lock | Step::WaitCopy => Some(self.places.target(v.target).clone()),
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
            Step::WaitSnapshot | Step::WaitReencrypt => Some((true, Side::Source)),
            Step::WaitCopy => Some((true, Side::Target(v.target))),
            Step::WaitVolume => Some((false, Side::Target(v.target))),
            _ => None,
        }
    }

    fn in_use(&self, slot: &Slot) -> usize {
        self.slots.get(slot).copied().unwrap_or(0)
    }

    /// Copies allowed at once into a destination: the plan's limit, or less once AWS
    /// said ResourceLimitExceeded there (other copies in the account hold slots).
    fn slot_cap(&self, key: &Slot) -> usize {
        self.slot_caps.get(key).copied().unwrap_or(self.copy_limit)
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

    /// True when lead `i` may delete its intermediates: every follower's copy is complete.
    fn may_clean_up(&self, i: usize, volumes: &[VolumeRun]) -> bool {
        engine::may_clean_up(self.followers[i].iter().map(|f| &volumes[*f]))
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
fn kin(volumes: &[VolumeRun]) -> (Vec<Option<usize>>, Vec<Vec<usize>>) {
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

#[cfg(test)]
mod tests {
    use super::super::sched::Decision;
    use super::*;
    use crate::cloud::{CloudError, ErrorKind};
    use crate::engine::TimeoutsMs;
    use crate::ids::KeyArn;

    const SOURCE_KEY: &str = "arn:aws:kms:us-east-1:111111111111:key/1234abcd-12ab-34cd-56ef-1234567890ab";
    const TARGET_KEY: &str = "arn:aws:kms:eu-west-1:222222222222:key/1234abcd-12ab-34cd-56ef-1234567890ab";
    const HOUR: i64 = 3_600_000;

    fn vol(n: u8) -> VolumeId {
        VolumeId::parse(&format!("vol-{n:017x}")).unwrap()
    }

    fn snap(n: u8) -> SnapshotId {
        SnapshotId::parse(&format!("snap-{n:017x}")).unwrap()
    }

    fn ctx() -> Ctx {
        Ctx {
            cross_account: true,
            source_key: KeyArn::parse(SOURCE_KEY).unwrap(),
            create_volume: true,
            cleanup: true,
            keep_source: false,
            timeouts_ms: TimeoutsMs { snapshot: HOUR, copy: 2 * HOUR, volume: HOUR },
            locks: vec![],
            verify: None,
        }
    }

    fn places() -> Places {
        Places {
            source: ("111111111111".into(), "us-east-1".into()),
            targets: vec![("222222222222".into(), "eu-west-1".into()), ("333333333333".into(), "eu-west-1".into())],
        }
    }

    fn completed(key: &str) -> Outcome {
        Outcome::SnapshotCompleted { kms_key: Some(key.to_owned()) }
    }

    /// `v` moved on through the engine by `outcomes`, each call begun first.
    fn through(mut v: VolumeRun, outcomes: &[Outcome]) -> VolumeRun {
        for o in outcomes {
            if engine::next_action_in(&v, "run", &ctx()).is_mutating() {
                v = engine::begin(&v, 0);
            }
            v = engine::apply(&v, o, &ctx(), 0).unwrap_or_else(|e| panic!("{e}"));
        }
        v
    }

    /// A volume run at its Copy step, its shared snapshot `n` ready.
    fn at_copy(n: u8, target: u8) -> VolumeRun {
        let v = through(
            VolumeRun::for_target(vol(n), target, false),
            &[Outcome::SnapshotCreated(snap(n)), completed(SOURCE_KEY), Outcome::Shared],
        );
        assert_eq!(v.step, Step::Copy);
        v
    }

    /// The runner's side, without the calls: the states, and the agenda told of every
    /// change.
    struct Loop {
        volumes: Vec<VolumeRun>,
        agenda: Agenda,
    }

    impl Loop {
        fn new(volumes: Vec<VolumeRun>, copy_limit: usize) -> Self {
            Loop { agenda: Agenda::new(&volumes, places(), copy_limit), volumes }
        }

        fn set(&mut self, i: usize, next: VolumeRun) {
            let before = std::mem::replace(&mut self.volumes[i], next);
            self.agenda.moved(i, &before, &self.volumes[i]);
        }

        /// One planning pass: every volume run on the agenda picked, moves and intents
        /// applied, calls started. What each one picked.
        fn pass(&mut self, now: i64) -> BTreeMap<usize, Pick> {
            let mut picked = BTreeMap::new();
            for i in self.agenda.take_ready() {
                let pick = self.agenda.pick(i, &self.volumes, &ctx(), "run", now).unwrap();
                match &pick {
                    Pick::Move(next) => self.set(i, next.clone()),
                    Pick::Call { begin, .. } => {
                        if let Some(next) = begin {
                            self.set(i, next.clone());
                        }
                        self.agenda.started(i);
                    }
                    Pick::Idle | Pick::Poll(_) => {}
                }
                picked.insert(i, pick);
            }
            self.agenda.settle_poll_floor();
            self.agenda.pass_free_slots();
            picked
        }

        /// The call of volume run `i` ended with `outcome`.
        fn answer(&mut self, i: usize, outcome: Outcome, polled: bool, now: i64) {
            self.agenda.ended(i);
            let v = self.volumes[i].clone();
            let next = self.agenda.outcome(i, &v, outcome, polled, &ctx(), now).unwrap();
            self.set(i, next);
        }
    }

    fn is_call(p: Option<&Pick>) -> bool {
        matches!(p, Some(Pick::Call { .. }))
    }

    #[test]
    fn copies_past_the_limit_wait_in_line_and_a_copy_that_ends_wakes_the_next() {
        let mut l = Loop::new(vec![at_copy(1, 0), at_copy(2, 0), at_copy(3, 0), at_copy(4, 1)], 2);
        let picked = l.pass(0);
        assert!(is_call(picked.get(&0)) && is_call(picked.get(&1)), "{picked:?}");
        assert_eq!(picked.get(&2), Some(&Pick::Idle), "the third copy into target 0 waits for a slot");
        assert!(is_call(picked.get(&3)), "another destination has its own slots");
        assert!(l.volumes[0].in_flight && !l.volumes[2].in_flight);
        assert_eq!(l.agenda.tally().copying, 4);
        // Issued, waiting: the slot is still held, and nothing wakes the queued one.
        l.answer(0, Outcome::SnapshotCreated(snap(10)), false, 1_000);
        assert_eq!(l.volumes[0].step, Step::WaitCopy);
        assert_eq!(l.pass(1_000).get(&2), None, "the queued copy gets no look while no slot is free");
        // The copy completes: its slot goes to the first in line.
        l.answer(0, completed(TARGET_KEY), true, 2_000);
        assert_eq!(l.volumes[0].step, Step::CreateVolume);
        let picked = l.pass(2_000);
        assert!(is_call(picked.get(&2)), "{picked:?}");
        assert!(l.volumes[2].in_flight);
    }

    #[test]
    fn the_copy_quota_lowers_the_limit_to_the_copies_in_flight() {
        let mut l = Loop::new((1..=4).map(|n| at_copy(n, 0)).collect(), 10);
        for i in 0..3 {
            l.agenda.take_ready();
            assert!(is_call(Some(&l.agenda.pick(i, &l.volumes, &ctx(), "run", 0).unwrap())));
            let begun = engine::begin(&l.volumes[i], 0);
            l.set(i, begun);
        }
        // The third copy is refused for the account's quota: the two others hold it.
        let (slot, cap) = l.agenda.lower_copy_limit(&l.volumes[2]).unwrap();
        assert_eq!((slot, cap), (places().targets[0].clone(), 2));
        l.agenda.take_ready();
        assert_eq!(l.agenda.pick(3, &l.volumes, &ctx(), "run", 0).unwrap(), Pick::Idle);
    }

    #[test]
    fn a_retry_waits_for_its_timer_and_the_loop_sleeps_until_then() {
        let mut l = Loop::new(vec![VolumeRun::new(vol(1))], 20);
        let throttled = CloudError::new(ErrorKind::Throttled, "RequestLimitExceeded", "slow down");
        let d = l.agenda.schedule(0).on_error(&Action::CreateSnapshot, &throttled, &ctx(), 0, 0.5, || unreachable!());
        let Decision::Retry { delay_ms } = d else { panic!("{d:?}") };
        assert_eq!(l.pass(0).get(&0), Some(&Pick::Idle));
        assert!(!l.agenda.has_ready());
        assert_eq!(l.agenda.next_wake(0), delay_ms);
        l.agenda.fire_timers(delay_ms - 1);
        assert!(!l.agenda.has_ready());
        l.agenda.fire_timers(delay_ms);
        let picked = l.pass(delay_ms);
        assert!(matches!(picked.get(&0), Some(Pick::Call { action: Action::CreateSnapshot, begin: Some(_) })));
        // With nothing due the loop wakes at most MAX_POLL_MS later.
        assert_eq!(l.agenda.next_wake(delay_ms), delay_ms + MAX_POLL_MS);
    }

    #[test]
    fn a_due_poll_asks_about_every_waiting_member_of_its_group() {
        let waits: Vec<VolumeRun> =
            (1..=3).map(|n| through(VolumeRun::new(vol(n)), &[Outcome::SnapshotCreated(snap(n))])).collect();
        let mut l = Loop::new(waits, 20);
        let group = (true, Side::Source);
        // Only the first is on the agenda; the others are asked about with it.
        l.agenda.take_ready();
        assert_eq!(l.agenda.pick(0, &l.volumes, &ctx(), "run", 0).unwrap(), Pick::Poll(group));
        l.agenda.started(1);
        let Polls::Snapshots(asked) = l.agenda.due_polls(&group, &l.volumes, &ctx(), "run", 0) else { panic!() };
        let ids: Vec<(usize, SnapshotId)> = asked.into_iter().map(|(i, id, _)| (i, id)).collect();
        assert_eq!(ids, vec![(0, snap(1)), (2, snap(3))], "one under way is left out");
        // Polled and still pending: the next poll is spaced, and is a timer.
        l.agenda.ended(1);
        l.answer(0, Outcome::SnapshotPending { progress: Some(50) }, true, 0);
        assert_eq!(l.pass(0).get(&0), Some(&Pick::Idle));
        assert_eq!(l.agenda.next_wake(0), MIN_POLL_MS);
    }

    #[test]
    fn a_wait_past_its_timeout_is_given_up_only_once_this_invocation_polled_it() {
        let wait = through(VolumeRun::new(vol(1)), &[Outcome::SnapshotCreated(snap(1))]);
        let mut l = Loop::new(vec![wait], 20);
        let late = 2 * HOUR;
        assert_eq!(l.pass(late).get(&0), Some(&Pick::Poll((true, Side::Source))), "polled first");
        l.answer(0, Outcome::SnapshotPending { progress: Some(10) }, true, late);
        let picked = l.pass(late);
        let Some(Pick::Move(next)) = picked.get(&0) else { panic!("{picked:?}") };
        assert_eq!(next.step, Step::Failed);
        assert!(next.source_snapshot.is_some(), "the snapshot is kept for the next invocation");
        assert!(l.agenda.all_settled(&l.volumes));
    }

    #[test]
    fn a_follower_joins_its_lead_and_the_lead_cleans_up_after_the_followers_copy() {
        let lead = VolumeRun::for_target(vol(1), 0, false);
        let follower = VolumeRun::for_target(vol(1), 1, true);
        let mut l = Loop::new(vec![lead, follower], 20);
        assert_eq!(l.pass(0).get(&1), Some(&Pick::Idle), "the follower waits for the lead's snapshot");
        // The lead's calls, answered outside the agenda's passes.
        l.agenda.ended(0);
        let lead = through(l.volumes[0].clone(), &[Outcome::SnapshotCreated(snap(1)), completed(SOURCE_KEY)]);
        l.set(0, lead);
        let shared = through(l.volumes[0].clone(), &[Outcome::Shared]);
        l.set(0, shared);
        // The lead's move put its follower back on the agenda: it joins at its copy.
        let picked = l.pass(0);
        let Some(Pick::Move(joined)) = picked.get(&1) else { panic!("{picked:?}") };
        assert_eq!((joined.step, joined.source_snapshot.clone()), (Step::Copy, Some(snap(1))));
        // The lead's copy is done before the follower's.
        l.agenda.ended(0);
        let lead = through(
            l.volumes[0].clone(),
            &[
                Outcome::SnapshotCreated(snap(2)),
                completed(TARGET_KEY),
                Outcome::VolumeCreated(vol(20)),
                Outcome::VolumeAvailable,
            ],
        );
        assert_eq!(lead.step, Step::Cleanup);
        l.set(0, lead);
        let picked = l.pass(0);
        assert_eq!(picked.get(&0), Some(&Pick::Idle), "the intermediates wait for the follower's copy");
        assert!(!l.agenda.all_settled(&l.volumes));
        l.answer(1, Outcome::SnapshotCreated(snap(3)), false, 0);
        l.answer(1, completed(TARGET_KEY), true, 0);
        assert!(l.volumes[1].copy_complete());
        let picked = l.pass(0);
        assert!(matches!(picked.get(&0), Some(Pick::Call { action: Action::Cleanup { .. }, .. })), "{picked:?}");
    }

    #[test]
    fn a_lead_waiting_on_a_follower_that_failed_before_its_copy_is_settled() {
        let lead = through(
            at_copy(1, 0),
            &[
                Outcome::SnapshotCreated(snap(2)),
                completed(TARGET_KEY),
                Outcome::VolumeCreated(vol(20)),
                Outcome::VolumeAvailable,
            ],
        );
        let follower = VolumeRun::for_target(vol(1), 1, true);
        let Join::Joined(follower) = engine::join(&follower, &lead, 0) else { panic!() };
        let follower = through(follower, &[Outcome::Fatal { message: "denied".into(), hint: None }]);
        let mut l = Loop::new(vec![lead, follower], 20);
        assert_eq!(l.pass(0).get(&0), Some(&Pick::Idle));
        assert!(l.agenda.all_settled(&l.volumes), "the intermediates stay for the rerun");
        assert_eq!(l.agenda.tally(), &Tally { total: 2, done: 0, failed: 1, copying: 0 });
    }

    #[test]
    fn a_follower_with_no_lead_fails_naming_its_volume() {
        let mut l = Loop::new(vec![VolumeRun::for_target(vol(7), 1, true)], 20);
        let picked = l.pass(0);
        let Some(Pick::Move(failed)) = picked.get(&0) else { panic!("{picked:?}") };
        assert_eq!(failed.step, Step::Failed);
        let message = &failed.failure.as_ref().unwrap().message;
        assert!(message.contains(&format!("no run of {} that takes its source side", vol(7))), "{message}");
        assert_eq!(l.agenda.tally().failed, 1);
        assert!(l.agenda.all_settled(&l.volumes));
    }

    #[test]
    fn with_no_timer_set_every_open_run_gets_another_look() {
        let mut l = Loop::new(vec![VolumeRun::for_target(vol(1), 0, false), at_copy(2, 0)], 20);
        l.agenda.take_ready();
        assert!(!l.agenda.has_ready());
        l.agenda.wake_open_if_stalled();
        assert_eq!(l.agenda.take_ready(), BTreeSet::from([0, 1]));
    }

    #[test]
    fn followers_are_paired_with_the_lead_of_their_own_chain() {
        let mut older_lead = VolumeRun::for_target(vol(1), 0, false);
        older_lead.chain = Some("run-old".into());
        let mut older_follower = VolumeRun::for_target(vol(1), 1, true);
        older_follower.chain = Some("run-old".into());
        let lead = VolumeRun::for_target(vol(1), 0, false);
        let follower = VolumeRun::for_target(vol(1), 1, true);
        let mut fresh = VolumeRun::for_target(vol(1), 1, true);
        fresh.fresh = true;
        let other = VolumeRun::for_target(vol(2), 1, true);
        let (lead_of, followers) = kin(&[older_lead, older_follower, lead, follower, fresh, other]);
        assert_eq!(lead_of, vec![None, Some(0), None, Some(2), None, None]);
        assert_eq!(followers, vec![vec![1], vec![], vec![3], vec![], vec![], vec![]]);
    }
}
