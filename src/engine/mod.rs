//! The per-volume step machine. Pure: no I/O, no clock, no AWS types; the time is
//! passed in as milliseconds since the Unix epoch.
//!
//! Each source volume has a [`VolumeRun`]: the step it is at, the resources made so
//! far and whether a call that changes AWS was issued without its outcome being
//! recorded (`in_flight`). [`next_action`] says what to do next; [`apply`] takes the
//! outcome of that action and returns the next state, or refuses an outcome that does
//! not belong to the current step. The runner in `exec` performs the actions and
//! checkpoints every state this module returns.
//!
//! The steps of one volume:
//!
//! ```text
//! Snapshot -> WaitSnapshot -> [Reencrypt -> WaitReencrypt] -> [Share] -> Copy -> [Lock]
//!   -> WaitCopy -> [Verify] -> [CreateVolume -> WaitVolume] -> [Cleanup] -> Done
//!   (any step -> Failed)
//! ```
//!
//! Verify runs with `options.verify`: the completed copy is compared with the shared
//! snapshot, block by block. A copy that differs fails its volume
//! ([`FailureKind::Differs`]): it is kept (tagged) but forgotten, so the next
//! invocation copies again; one that could not be verified fails as a call does and
//! is verified again.
//!
//! Reencrypt runs when the snapshot is not under the source key; Share when the copy
//! crosses accounts; Lock when the copy's target is locked (`lock`), right after
//! CopySnapshot returned, while the copy is pending; CreateVolume unless
//! `create_volume: false`; Cleanup with `cleanup: true`.
//!
//! A plan with several targets has one `VolumeRun` per (volume, target). One of a
//! volume's runs, the lead, takes the source side (snapshot, re-encryption, one share
//! with every target account) and its own target's copy; the others are followers:
//! they wait ([`Action::AwaitSource`]) until the lead's shared snapshot is ready,
//! [`join`] it, and make only their own copy and volume. The lead's Cleanup waits
//! until every follower's copy is complete (the runner holds it back), so the
//! intermediates outlive every copy made from them.

use serde::{Deserialize, Serialize};

use crate::ids::{KeyArn, SnapshotId, VolumeId};
use crate::lock::{CopyLock, LockSpec};
use crate::tags::StepTag;

/// How many times a lookup after an unknown outcome may miss before the call is
/// issued again. A just-created snapshot can be invisible for a moment (eventual
/// consistency), so one miss does not prove the call never took effect.
pub const RECONCILE_LOOKUPS: u8 = 3;

/// Where a volume is in its copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    Snapshot,
    WaitSnapshot,
    Reencrypt,
    WaitReencrypt,
    Share,
    Copy,
    /// LockSnapshot of the copy just made (it may be pending).
    Lock,
    WaitCopy,
    /// The completed copy is compared with its source snapshot (`options.verify`).
    Verify,
    CreateVolume,
    WaitVolume,
    Cleanup,
    Done,
    Failed,
}

impl Step {
    pub fn is_terminal(self) -> bool {
        matches!(self, Step::Done | Step::Failed)
    }

    /// The `snapferry:step` tag of what this step creates, if it creates one.
    pub fn tag(self) -> Option<StepTag> {
        match self {
            Step::Snapshot => Some(StepTag::Snapshot),
            Step::Reencrypt => Some(StepTag::Reencrypt),
            Step::Copy => Some(StepTag::Copy),
            Step::CreateVolume => Some(StepTag::Volume),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Step::Snapshot => "snapshot",
            Step::WaitSnapshot => "wait-snapshot",
            Step::Reencrypt => "reencrypt",
            Step::WaitReencrypt => "wait-reencrypt",
            Step::Share => "share",
            Step::Copy => "copy",
            Step::Lock => "lock",
            Step::WaitCopy => "wait-copy",
            Step::Verify => "verify",
            Step::CreateVolume => "create-volume",
            Step::WaitVolume => "wait-volume",
            Step::Cleanup => "cleanup",
            Step::Done => "done",
            Step::Failed => "failed",
        }
    }
}

/// What a failure says about the resource of its step, which decides what a resumed
/// run does with it (see [`VolumeRun::revive`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// A call failed, or a wait was given up for another reason than the resource:
    /// the resource, if any, is kept and the step carries on where it stood.
    #[default]
    Call,
    /// The invocation stopped waiting (the step's timeout): AWS goes on working on the
    /// resource, which is kept and waited on again.
    StoppedWaiting,
    /// AWS reported the resource in state `error`: it is replaced.
    ResourceError,
    /// The resource is gone (deleted outside snapferry): it is made again.
    Gone,
    /// The copy differs from its source: it is kept (tagged `snapferry:verify=failed`)
    /// and forgotten, and the copy is made again.
    Differs,
}

/// Why a volume failed: the step, what AWS said, and what to do about it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    pub step: Step,
    #[serde(default)]
    pub kind: FailureKind,
    pub message: String,
    pub hint: Option<String>,
}

/// The checkpointed state of one source volume in one run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeRun {
    pub source_volume: VolumeId,
    pub step: Step,
    /// A call that changes AWS was issued for `step` and its outcome is not recorded:
    /// look the resource up before issuing it again.
    #[serde(default)]
    pub in_flight: bool,
    /// Lookups that found nothing since the call went in flight.
    #[serde(default)]
    pub lookups_missed: u8,
    pub source_snapshot: Option<SnapshotId>,
    pub reencrypted_snapshot: Option<SnapshotId>,
    #[serde(default)]
    pub shared: bool,
    pub target_snapshot: Option<SnapshotId>,
    pub target_volume: Option<VolumeId>,
    /// Bumped when a failed target volume is given up, so a retry uses a new token.
    #[serde(default)]
    pub volume_attempt: u32,
    /// When the current wait began (ms since epoch), for the step's timeout.
    pub wait_started_ms: Option<i64>,
    /// The last Progress AWS reported for the snapshot being waited on.
    pub progress: Option<u8>,
    pub started_ms: Option<i64>,
    pub finished_ms: Option<i64>,
    pub failure: Option<Failure>,
    /// The run id this volume's resources are tagged with, when it is not the run's own:
    /// a recurring plan carries an unfinished copy, or a fresh one, into a later run.
    #[serde(default)]
    pub chain: Option<String>,
    /// A recurring plan left this volume alone: its newest copy (`started_ms`) is recent.
    #[serde(default)]
    pub fresh: bool,
    /// Since when this volume has failed, across revives and invocations; cleared when
    /// it succeeds.
    #[serde(default)]
    pub failing_since_ms: Option<i64>,
    /// Which of the plan's targets this copy goes to (its index in `targets:`).
    #[serde(default)]
    pub target: u8,
    /// The source side is another run's of the same volume (the lead's): this one waits
    /// for its shared snapshot, then copies it.
    #[serde(default)]
    pub follower: bool,
    /// A follower found the lead's shared snapshot gone: it waits for the lead's next
    /// one rather than join this one again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gone_source: Option<SnapshotId>,
    /// When this run's own copy was delivered: the copy completed and, with
    /// `create_volume`, its volume available. A lead's cleanup may come long after
    /// (held for a follower's copy); freshness and status count from this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivered_ms: Option<i64>,
    /// The copy's lock, as AWS last reported it; `None` until it is locked.
    #[serde(default)]
    pub lock: Option<CopyLock>,
    /// What the verification of the copy found (`options.verify`).
    #[serde(default)]
    pub verify: Option<crate::verify::Record>,
}

impl VolumeRun {
    pub fn new(source_volume: VolumeId) -> Self {
        VolumeRun {
            source_volume,
            step: Step::Snapshot,
            in_flight: false,
            lookups_missed: 0,
            source_snapshot: None,
            reencrypted_snapshot: None,
            shared: false,
            target_snapshot: None,
            target_volume: None,
            volume_attempt: 0,
            wait_started_ms: None,
            progress: None,
            started_ms: None,
            finished_ms: None,
            failure: None,
            chain: None,
            fresh: false,
            failing_since_ms: None,
            target: 0,
            follower: false,
            gone_source: None,
            delivered_ms: None,
            lock: None,
            verify: None,
        }
    }

    /// The copy of `source_volume` to target `target`; a follower when another run of
    /// the volume takes the source side.
    pub fn for_target(source_volume: VolumeId, target: u8, follower: bool) -> Self {
        VolumeRun { target, follower, ..VolumeRun::new(source_volume) }
    }

    /// True once this run's own copy is complete: its step is past the copy.
    pub fn copy_complete(&self) -> bool {
        matches!(self.step, Step::CreateVolume | Step::WaitVolume | Step::Cleanup | Step::Done)
            || self
                .failure
                .as_ref()
                .is_some_and(|f| matches!(f.step, Step::CreateVolume | Step::WaitVolume | Step::Cleanup))
    }

    /// When this run's copy was delivered, if it was: done, or at (or failed at) the
    /// cleanup that follows delivery. Runs checkpointed before `delivered_ms` existed
    /// count a done run's end.
    pub fn delivered_at(&self) -> Option<i64> {
        let at_cleanup = self.step == Step::Cleanup
            || (self.step == Step::Failed && self.failure.as_ref().is_some_and(|f| f.step == Step::Cleanup));
        match self.step {
            Step::Done => self.delivered_ms.or(self.finished_ms),
            _ if at_cleanup => self.delivered_ms,
            _ => None,
        }
    }

    /// True for a lead whose own copy is delivered and whose cleanup is all that is
    /// left: it holds the intermediates for followers' copies still to be made.
    pub fn held_for_followers(&self) -> bool {
        !self.follower && !self.fresh && self.step == Step::Cleanup
    }

    /// True when this run's copy exists and has no lock on record: on a locked
    /// target, a copy that should be locked and is not (its lock failed, was never
    /// asked for, or was taken off).
    pub fn copy_unlocked(&self) -> bool {
        let at = match (&self.step, &self.failure) {
            (Step::Failed, Some(f)) => f.step,
            (step, _) => *step,
        };
        self.target_snapshot.is_some()
            && self.lock.is_none()
            && matches!(
                at,
                Step::Lock
                    | Step::WaitCopy
                    | Step::Verify
                    | Step::CreateVolume
                    | Step::WaitVolume
                    | Step::Cleanup
                    | Step::Done
            )
    }

    /// True while a follower still waits for the lead's shared snapshot.
    pub fn awaits_source(&self) -> bool {
        self.follower
            && matches!(
                self.step,
                Step::Snapshot | Step::WaitSnapshot | Step::Reencrypt | Step::WaitReencrypt | Step::Share
            )
    }

    /// The run id this volume's resources carry: its chain's, else the run's.
    pub fn chain_run<'a>(&'a self, run_id: &'a str) -> &'a str {
        self.chain.as_deref().unwrap_or(run_id)
    }

    /// The snapshot that is (or will be) shared and copied: the re-encrypted one when
    /// there is one, else the source snapshot.
    pub fn shared_snapshot(&self) -> Option<&SnapshotId> {
        self.reencrypted_snapshot.as_ref().or(self.source_snapshot.as_ref())
    }

    /// Source-side snapshots this run made that are no longer needed once the target
    /// snapshot exists.
    pub fn intermediates(&self) -> Vec<SnapshotId> {
        self.source_snapshot.iter().chain(self.reencrypted_snapshot.iter()).cloned().collect()
    }

    /// Puts a failed volume back where it failed, for a resumed run. Only a resource
    /// AWS reported in `error`, or one that is gone, is forgotten so its step makes it
    /// again (the runner deletes one in `error` first); anything else is kept and
    /// waited on, and a call whose outcome is unknown stays unknown (`in_flight`), so
    /// it is looked up before it is issued again.
    pub fn revive(&mut self) {
        if self.step != Step::Failed {
            return;
        }
        let (at, kind) = self.failure.as_ref().map(|f| (f.step, f.kind)).unwrap_or((Step::Snapshot, FailureKind::Call));
        let replace = matches!(kind, FailureKind::ResourceError | FailureKind::Gone | FailureKind::Differs);
        self.step = match at {
            Step::WaitSnapshot if replace => {
                self.source_snapshot = None;
                Step::Snapshot
            }
            Step::WaitReencrypt if replace => {
                self.reencrypted_snapshot = None;
                Step::Reencrypt
            }
            Step::WaitCopy if replace => {
                // AWS cancels the lock of a copy that fails; the replacement is locked
                // once it exists.
                self.target_snapshot = None;
                self.lock = None;
                Step::Copy
            }
            Step::Verify if kind == FailureKind::Differs => {
                // The differing copy stays in AWS, tagged; this run no longer counts it.
                self.target_snapshot = None;
                self.lock = None;
                self.verify = None;
                Step::Copy
            }
            Step::WaitVolume if replace => {
                if self.target_volume.take().is_some() {
                    self.volume_attempt += 1;
                }
                Step::CreateVolume
            }
            other => other,
        };
        if replace {
            self.in_flight = false;
            self.lookups_missed = 0;
            self.wait_started_ms = None;
        }
        self.failure = None;
        self.finished_ms = None;
        self.progress = None;
    }

    /// The resource the current wait step is about, if any.
    pub fn waited_on(&self) -> Option<&str> {
        match self.step {
            Step::WaitSnapshot => self.source_snapshot.as_ref().map(|s| s.as_str()),
            Step::WaitReencrypt => self.reencrypted_snapshot.as_ref().map(|s| s.as_str()),
            Step::WaitCopy => self.target_snapshot.as_ref().map(|s| s.as_str()),
            Step::WaitVolume => self.target_volume.as_ref().map(|s| s.as_str()),
            _ => None,
        }
    }
}

/// What the machine needs to know about the run to choose a volume's next step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ctx {
    pub cross_account: bool,
    /// The key the shared snapshot must be under.
    pub source_key: KeyArn,
    pub create_volume: bool,
    pub cleanup: bool,
    /// `options.keep_source > 0`: cleanup keeps the shared snapshot.
    pub keep_source: bool,
    pub timeouts_ms: TimeoutsMs,
    /// Per target (the plan's order): the lock of its copies, if any.
    pub locks: Vec<Option<LockSpec>>,
    /// `options.verify`: each completed copy is compared with its source at this level.
    pub verify: Option<crate::verify::Level>,
}

impl Ctx {
    /// The lock target `t`'s copies get.
    pub fn lock_of(&self, t: u8) -> Option<&LockSpec> {
        self.locks.get(usize::from(t)).and_then(Option::as_ref)
    }
}

/// Per-wait timeouts in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeoutsMs {
    pub snapshot: i64,
    pub copy: i64,
    pub volume: i64,
}

/// Which snapshot a wait or lookup is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Which {
    /// The source snapshot, source account and region.
    Source,
    /// The re-encrypted snapshot, source account and region.
    Reencrypted,
    /// The copy, target account and region.
    Target,
}

impl Which {
    /// The `snapferry:step` tag of the snapshot.
    pub fn tag(self) -> StepTag {
        match self {
            Which::Source => StepTag::Snapshot,
            Which::Reencrypted => StepTag::Reencrypt,
            Which::Target => StepTag::Copy,
        }
    }
}

/// The next thing to do for a volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// CreateSnapshot of the source volume.
    CreateSnapshot,
    /// CopySnapshot in the source account and region under the source key.
    Reencrypt {
        from: SnapshotId,
    },
    /// Share the snapshot with the target account.
    Share {
        snapshot: SnapshotId,
    },
    /// CopySnapshot into the target account and region under the target key.
    Copy {
        from: SnapshotId,
    },
    /// LockSnapshot of the copy, in the target's lock mode and duration.
    Lock {
        snapshot: SnapshotId,
    },
    /// DescribeLockedSnapshots of the copy: did an in-flight LockSnapshot take effect?
    LookUpLock {
        snapshot: SnapshotId,
    },
    /// CreateVolume from the copy, with an idempotency token.
    CreateVolume {
        snapshot: SnapshotId,
        client_token: String,
    },
    /// Compare the completed copy with the snapshot it was made from (`options.verify`),
    /// then tag it with the result.
    Verify {
        source: SnapshotId,
        copy: SnapshotId,
    },
    /// A follower waits for the lead's shared snapshot (see [`join`]).
    AwaitSource,
    /// Look up, by tags, what an in-flight call of this step may have created.
    LookUpSnapshot {
        which: Which,
    },
    LookUpVolume,
    /// DescribeSnapshots / DescribeVolumes until the resource is ready.
    PollSnapshot {
        which: Which,
        id: SnapshotId,
    },
    PollVolume {
        id: VolumeId,
    },
    /// Delete the intermediate source-side snapshots (deleting also ends the share).
    /// With `keep_source`, the shared snapshot is kept, no longer shared.
    Cleanup {
        delete: Vec<SnapshotId>,
        keep: Option<SnapshotId>,
    },
    /// Terminal: nothing to do.
    Nothing,
}

impl Action {
    /// True for calls that change AWS: an intent is recorded before they are issued.
    pub fn is_mutating(&self) -> bool {
        matches!(
            self,
            Action::CreateSnapshot
                | Action::Reencrypt { .. }
                | Action::Share { .. }
                | Action::Copy { .. }
                | Action::Lock { .. }
                | Action::Verify { .. }
                | Action::CreateVolume { .. }
                | Action::Cleanup { .. }
        )
    }
}

/// What came of an action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A create or copy returned the new snapshot's id (or a lookup found it).
    SnapshotCreated(SnapshotId),
    VolumeCreated(VolumeId),
    /// A lookup after an unknown outcome found nothing.
    NotFound,
    SnapshotPending {
        progress: Option<u8>,
    },
    /// The snapshot is complete; `kms_key` is the key ARN it is under.
    SnapshotCompleted {
        kms_key: Option<String>,
    },
    /// The snapshot went to `error`; the message is AWS's StateMessage.
    SnapshotError {
        message: String,
    },
    /// A poll did not see the resource (it may not be visible yet).
    Missing,
    Shared,
    /// The copy is locked (LockSnapshot answered, or a lookup found the lock).
    Locked(CopyLock),
    /// A lookup found no lock in the mode asked for.
    NotLocked,
    VolumePending,
    VolumeAvailable,
    VolumeError,
    /// The resource waited on stayed invisible past the grace period: it is gone.
    Vanished,
    /// The snapshot a copy, re-encryption or share reads from no longer exists in the
    /// source account (deleted outside snapferry): the source side is made again.
    SourceGone {
        snapshot: SnapshotId,
    },
    CleanedUp,
    /// The call failed for good; the volume fails with this message and hint.
    Fatal {
        message: String,
        hint: Option<String>,
    },
    /// The wait for this step exceeded its timeout.
    TimedOut,
    /// The verification ran: the copy matched, or differs (the record says where).
    Verified(Box<crate::verify::Record>),
}

/// An outcome that does not belong to the volume's current step.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("volume {volume}: outcome {outcome} is not valid at step {step}")]
pub struct IllegalTransition {
    pub volume: VolumeId,
    pub step: &'static str,
    pub outcome: String,
}

/// The deterministic CreateVolume ClientToken for a volume in a run: the same after
/// any resume, so CreateVolume returns the first volume instead of a second one.
/// AWS allows at most 64 ASCII characters.
pub fn client_token(run_id: &str, volume: &VolumeId, attempt: u32) -> String {
    client_token_for(run_id, volume, 0, attempt)
}

/// [`client_token`] of the copy to target `target`: the first target's tokens are the
/// single-target ones, so a plan that gains `targets:` keeps its resumable runs.
pub fn client_token_for(run_id: &str, volume: &VolumeId, target: u8, attempt: u32) -> String {
    // FNV-1a over the parts, twice with different offsets, gives 32 hex digits: short,
    // stable across platforms and releases, and unique enough for one run's volumes.
    fn fnv(seed: u64, parts: &[&[u8]]) -> u64 {
        let mut h = seed;
        for p in parts {
            for b in p.iter().chain(b"\x1f") {
                h ^= u64::from(*b);
                h = h.wrapping_mul(0x0000_0100_0000_01b3);
            }
        }
        h
    }
    let attempt = if target == 0 { attempt.to_string() } else { format!("{attempt}@{target}") };
    let parts: [&[u8]; 3] = [run_id.as_bytes(), volume.as_str().as_bytes(), attempt.as_bytes()];
    let a = fnv(0xcbf2_9ce4_8422_2325, &parts);
    let b = fnv(0x8422_2325_cbf2_9ce4, &parts);
    format!("snapferry-{}-{a:016x}{b:016x}", volume.as_str())
}

/// What to do next for `v`. `run_id` feeds the CreateVolume token. A state that lacks
/// the id its step needs cannot come from [`apply`], only from a damaged checkpoint:
/// it yields [`Action::Nothing`] and the runner reports it.
pub fn next_action(v: &VolumeRun, run_id: &str) -> Action {
    if v.awaits_source() {
        return Action::AwaitSource;
    }
    match v.step {
        Step::Snapshot if v.in_flight => Action::LookUpSnapshot { which: Which::Source },
        Step::Snapshot => Action::CreateSnapshot,
        Step::WaitSnapshot => poll(v.source_snapshot.as_ref(), Which::Source),
        Step::Reencrypt if v.in_flight => Action::LookUpSnapshot { which: Which::Reencrypted },
        Step::Reencrypt => match &v.source_snapshot {
            Some(s) => Action::Reencrypt { from: s.clone() },
            None => Action::Nothing,
        },
        Step::WaitReencrypt => poll(v.reencrypted_snapshot.as_ref(), Which::Reencrypted),
        Step::Share => match v.shared_snapshot() {
            Some(s) => Action::Share { snapshot: s.clone() },
            None => Action::Nothing,
        },
        Step::Copy if v.in_flight => Action::LookUpSnapshot { which: Which::Target },
        Step::Copy => match v.shared_snapshot() {
            Some(s) => Action::Copy { from: s.clone() },
            None => Action::Nothing,
        },
        Step::Lock => match &v.target_snapshot {
            Some(s) if v.in_flight => Action::LookUpLock { snapshot: s.clone() },
            Some(s) => Action::Lock { snapshot: s.clone() },
            None => Action::Nothing,
        },
        Step::WaitCopy => poll(v.target_snapshot.as_ref(), Which::Target),
        Step::Verify => match (v.shared_snapshot(), &v.target_snapshot) {
            (Some(s), Some(c)) => Action::Verify { source: s.clone(), copy: c.clone() },
            _ => Action::Nothing,
        },
        Step::CreateVolume if v.in_flight => Action::LookUpVolume,
        Step::CreateVolume => match &v.target_snapshot {
            Some(s) => Action::CreateVolume {
                snapshot: s.clone(),
                client_token: client_token_for(v.chain_run(run_id), &v.source_volume, v.target, v.volume_attempt),
            },
            None => Action::Nothing,
        },
        Step::WaitVolume => match &v.target_volume {
            Some(id) => Action::PollVolume { id: id.clone() },
            None => Action::Nothing,
        },
        Step::Cleanup => Action::Cleanup { delete: v.intermediates(), keep: None },
        Step::Done | Step::Failed => Action::Nothing,
    }
}

/// [`next_action`] under the run's options: with `keep_source`, cleanup keeps the
/// shared snapshot (the one the copy was made from) and deletes only the others.
pub fn next_action_in(v: &VolumeRun, run_id: &str, ctx: &Ctx) -> Action {
    match next_action(v, run_id) {
        Action::Cleanup { delete, .. } if ctx.keep_source => {
            let keep = v.shared_snapshot().cloned();
            let delete = delete.into_iter().filter(|s| Some(s) != keep.as_ref()).collect();
            Action::Cleanup { delete, keep }
        }
        a => a,
    }
}

fn poll(id: Option<&SnapshotId>, which: Which) -> Action {
    match id {
        Some(id) => Action::PollSnapshot { which, id: id.clone() },
        None => Action::Nothing,
    }
}

/// Marks the start of a call that changes AWS. The runner checkpoints the result
/// before it issues the call.
pub fn begin(v: &VolumeRun, now_ms: i64) -> VolumeRun {
    let mut n = v.clone();
    if matches!(n.step, Step::Snapshot | Step::Reencrypt | Step::Copy | Step::Lock | Step::CreateVolume) {
        n.in_flight = true;
        n.lookups_missed = 0;
    }
    if n.started_ms.is_none() {
        n.started_ms = Some(now_ms);
    }
    n
}

/// The step after the shared snapshot is ready.
fn after_shared_ready(ctx: &Ctx) -> Step {
    if ctx.cross_account { Step::Share } else { Step::Copy }
}

fn after_copy(v: &VolumeRun, ctx: &Ctx) -> Step {
    if ctx.create_volume {
        Step::CreateVolume
    } else if ctx.cleanup && !v.follower {
        Step::Cleanup
    } else {
        Step::Done
    }
}

fn hint_for_snapshot_error(step: Step, message: &str) -> Option<String> {
    let m = message.to_ascii_lowercase();
    if step == Step::WaitCopy && (m.contains("key") || m.contains("kms")) {
        Some(
            "the target account cannot use the source key or the target key: check the source key \
             policy grants the target account (run with --dry-run to see the statement), that the \
             target role's IAM policy allows kms actions on both keys, and that target.kms_key exists \
             in the target region; then run the same command again"
                .to_owned(),
        )
    } else {
        Some("the snapshot failed in AWS; run the same command again to replace it".to_owned())
    }
}

/// Applies the outcome of the current step's action. Each family of outcomes has its
/// transitions in one function: a step that ends without its resource
/// (`ended_badly`), the answer of a call (`answered`), a wait's poll (`polled`) and a
/// verification (`verified`).
pub fn apply(v: &VolumeRun, outcome: &Outcome, ctx: &Ctx, now_ms: i64) -> Result<VolumeRun, IllegalTransition> {
    if v.step.is_terminal() {
        // Terminal states absorb late or duplicate outcomes unchanged.
        return Ok(v.clone());
    }
    let next = match outcome {
        Outcome::Fatal { .. } | Outcome::TimedOut | Outcome::Vanished | Outcome::SourceGone { .. } => {
            ended_badly(v, outcome, ctx, now_ms)
        }
        Outcome::SnapshotCreated(_)
        | Outcome::VolumeCreated(_)
        | Outcome::NotFound
        | Outcome::Locked(_)
        | Outcome::NotLocked
        | Outcome::Shared
        | Outcome::CleanedUp => answered(v, outcome, ctx, now_ms),
        Outcome::SnapshotPending { .. }
        | Outcome::Missing
        | Outcome::SnapshotCompleted { .. }
        | Outcome::SnapshotError { .. }
        | Outcome::VolumePending
        | Outcome::VolumeAvailable
        | Outcome::VolumeError => polled(v, outcome, ctx, now_ms),
        Outcome::Verified(record) => verified(v, record, ctx, now_ms),
    };
    next.ok_or_else(|| IllegalTransition {
        volume: v.source_volume.clone(),
        step: v.step.as_str(),
        outcome: format!("{outcome:?}"),
    })
}

/// `n` starts waiting at `step` for what its call made.
fn start_wait(mut n: VolumeRun, step: Step, now_ms: i64) -> VolumeRun {
    n.step = step;
    n.in_flight = false;
    n.lookups_missed = 0;
    n.wait_started_ms = Some(now_ms);
    n.progress = None;
    n
}

/// The `options.timeouts` field that bounds a wait step.
fn timeout_field(step: Step) -> Option<&'static str> {
    match step {
        Step::WaitSnapshot | Step::WaitReencrypt => Some("snapshot"),
        Step::WaitCopy => Some("copy"),
        Step::WaitVolume => Some("volume"),
        _ => None,
    }
}

/// The transitions of [`apply`] for a step that ends without its resource: a call
/// that failed for good, a wait given up or whose resource vanished, a source
/// snapshot found gone. `None`: the outcome does not belong to the step.
fn ended_badly(v: &VolumeRun, outcome: &Outcome, ctx: &Ctx, now_ms: i64) -> Option<VolumeRun> {
    match (v.step, outcome) {
        (_, Outcome::Fatal { message, hint }) => {
            Some(fail(v, FailureKind::Call, message.clone(), hint.clone(), now_ms))
        }
        (Step::WaitSnapshot | Step::WaitReencrypt | Step::WaitCopy | Step::WaitVolume, Outcome::TimedOut) => {
            let limit = wait_limit_ms(v.step, ctx).unwrap_or(0) / 1000;
            let what = v.waited_on().unwrap_or("the resource");
            let progress = v.progress.map(|p| format!(" at {p}%")).unwrap_or_default();
            let message = format!(
                "stopped waiting for {what}{progress} after {limit}s at step {}; it is left to finish in AWS",
                v.step.as_str()
            );
            let field = timeout_field(v.step).unwrap_or_default();
            Some(fail(
                v,
                FailureKind::StoppedWaiting,
                message,
                Some(format!(
                    "run the same command again to keep waiting for it (nothing is made again); raise options.timeouts.{field} if waits this long are expected"
                )),
                now_ms,
            ))
        }
        (Step::WaitSnapshot | Step::WaitReencrypt | Step::WaitCopy | Step::WaitVolume, Outcome::Vanished) => {
            let what = v.waited_on().unwrap_or("the resource");
            Some(fail(
                v,
                FailureKind::Gone,
                format!("{what}, waited on at step {}, is gone", v.step.as_str()),
                Some("it was deleted outside snapferry; run the same command again to make it again".into()),
                now_ms,
            ))
        }
        (Step::Reencrypt | Step::Share | Step::Copy, Outcome::SourceGone { snapshot }) => {
            Some(forget_source(v.clone(), snapshot))
        }
        _ => None,
    }
}

/// The transitions of [`apply`] for the answer of a call (or of the lookup that
/// stands for it after an unknown outcome): what it made is recorded and waited on.
/// `None`: the outcome does not belong to the step.
fn answered(v: &VolumeRun, outcome: &Outcome, ctx: &Ctx, now_ms: i64) -> Option<VolumeRun> {
    let mut n = v.clone();
    match (v.step, outcome) {
        (Step::Snapshot, Outcome::SnapshotCreated(id)) => {
            n.source_snapshot = Some(id.clone());
            Some(start_wait(n, Step::WaitSnapshot, now_ms))
        }
        (Step::Reencrypt, Outcome::SnapshotCreated(id)) => {
            n.reencrypted_snapshot = Some(id.clone());
            Some(start_wait(n, Step::WaitReencrypt, now_ms))
        }
        (Step::Copy, Outcome::SnapshotCreated(id)) => {
            n.target_snapshot = Some(id.clone());
            // The copy's timeout runs from here, through its lock.
            let next = if ctx.lock_of(v.target).is_some() { Step::Lock } else { Step::WaitCopy };
            Some(start_wait(n, next, now_ms))
        }
        (Step::Lock, Outcome::Locked(lock)) => {
            n.lock = Some(lock.clone());
            n.in_flight = false;
            n.lookups_missed = 0;
            n.step = Step::WaitCopy;
            Some(n)
        }
        (Step::Lock, Outcome::NotLocked) if ctx.lock_of(v.target).is_none() => {
            // The plan no longer locks this target: the copy goes on unlocked.
            n.in_flight = false;
            n.step = Step::WaitCopy;
            Some(n)
        }
        (Step::Lock, Outcome::NotLocked) if v.in_flight => {
            // Locking again is harmless (the same lock changes nothing): no need to
            // wait out an eventually consistent listing.
            n.in_flight = false;
            n.lookups_missed = 0;
            Some(n)
        }
        (Step::CreateVolume, Outcome::VolumeCreated(id)) => {
            n.target_volume = Some(id.clone());
            Some(start_wait(n, Step::WaitVolume, now_ms))
        }
        (Step::Snapshot | Step::Reencrypt | Step::Copy | Step::CreateVolume, Outcome::NotFound) if v.in_flight => {
            n.lookups_missed = n.lookups_missed.saturating_add(1);
            if n.lookups_missed >= RECONCILE_LOOKUPS {
                // The call never took effect: issue it again.
                n.in_flight = false;
                n.lookups_missed = 0;
            }
            Some(n)
        }
        (Step::Share, Outcome::Shared) => {
            n.shared = true;
            n.step = Step::Copy;
            Some(n)
        }
        (Step::Cleanup, Outcome::CleanedUp) => {
            n.step = Step::Done;
            n.finished_ms = Some(now_ms);
            Some(n)
        }
        _ => None,
    }
}

/// The transitions of [`apply`] for a poll of a wait: still pending, not visible
/// yet, ready (the next step), or in `error`. `None`: the outcome does not belong to
/// the step.
fn polled(v: &VolumeRun, outcome: &Outcome, ctx: &Ctx, now_ms: i64) -> Option<VolumeRun> {
    let mut n = v.clone();
    match (v.step, outcome) {
        (Step::WaitSnapshot | Step::WaitReencrypt | Step::WaitCopy, Outcome::SnapshotPending { progress }) => {
            n.progress = *progress;
            Some(n)
        }
        (Step::WaitSnapshot | Step::WaitReencrypt | Step::WaitCopy | Step::WaitVolume, Outcome::Missing) => {
            // Not visible yet right after creation; the runner bounds how long this may last.
            Some(n)
        }
        (Step::WaitSnapshot, Outcome::SnapshotCompleted { kms_key }) => {
            n.progress = Some(100);
            n.wait_started_ms = None;
            let under_source_key = kms_key.as_deref().is_some_and(|k| k == ctx.source_key.as_str());
            n.step = if under_source_key { after_shared_ready(ctx) } else { Step::Reencrypt };
            Some(n)
        }
        (Step::WaitReencrypt, Outcome::SnapshotCompleted { .. }) => {
            n.progress = Some(100);
            n.wait_started_ms = None;
            n.step = after_shared_ready(ctx);
            Some(n)
        }
        (Step::WaitCopy, Outcome::SnapshotCompleted { .. }) => {
            n.progress = Some(100);
            n.wait_started_ms = None;
            n.step = if ctx.verify.is_some() { Step::Verify } else { after_copy(v, ctx) };
            if n.step == Step::Done {
                n.finished_ms = Some(now_ms);
            }
            Some(n)
        }
        (Step::WaitSnapshot | Step::WaitReencrypt | Step::WaitCopy, Outcome::SnapshotError { message }) => {
            let hint = hint_for_snapshot_error(v.step, message);
            let which = match v.step {
                Step::WaitSnapshot => v.source_snapshot.as_ref(),
                Step::WaitReencrypt => v.reencrypted_snapshot.as_ref(),
                _ => v.target_snapshot.as_ref(),
            };
            let id = which.map(|s| s.as_str()).unwrap_or("?");
            Some(fail(
                &n,
                FailureKind::ResourceError,
                format!("snapshot {id} went to state error: {message}"),
                hint,
                now_ms,
            ))
        }
        (Step::WaitVolume, Outcome::VolumePending) => Some(n),
        (Step::WaitVolume, Outcome::VolumeAvailable) => {
            n.wait_started_ms = None;
            n.delivered_ms = Some(now_ms);
            n.step = if ctx.cleanup && !v.follower { Step::Cleanup } else { Step::Done };
            if n.step == Step::Done {
                n.finished_ms = Some(now_ms);
            }
            Some(n)
        }
        (Step::WaitVolume, Outcome::VolumeError) => {
            let id = v.target_volume.as_ref().map(|s| s.as_str()).unwrap_or("?");
            Some(fail(
                &n,
                FailureKind::ResourceError,
                format!("volume {id} went to state error"),
                Some(
                    "check the target key is enabled and usable by the target role, then run the same command again"
                        .to_owned(),
                ),
                now_ms,
            ))
        }
        _ => None,
    }
}

/// The transition of [`apply`] for a verification: a copy that matched moves on, one
/// that differs fails its volume ([`FailureKind::Differs`]). `None` at another step.
fn verified(v: &VolumeRun, record: &crate::verify::Record, ctx: &Ctx, now_ms: i64) -> Option<VolumeRun> {
    if v.step != Step::Verify {
        return None;
    }
    let mut n = v.clone();
    n.verify = Some(record.clone());
    if record.matched() {
        n.step = after_copy(v, ctx);
        if n.step != Step::CreateVolume {
            n.delivered_ms = Some(now_ms);
        }
        if n.step == Step::Done {
            n.finished_ms = Some(now_ms);
        }
        return Some(n);
    }
    let copy = v.target_snapshot.as_ref().map(|s| s.as_str()).unwrap_or("?");
    let at = record.first_mismatch.as_ref().map(|m| m.to_string()).unwrap_or_else(|| "unknown".to_owned());
    let message = format!(
        "copy {copy} differs from its source snapshot {} at {at} (verify: {})",
        record.source_snapshot, record.level
    );
    Some(fail(
        &n,
        FailureKind::Differs,
        message,
        Some(
            "the copy is kept, tagged snapferry:verify=failed, for investigation; run the same command again \
             to copy the volume again"
                .to_owned(),
        ),
        now_ms,
    ))
}

/// The state after the snapshot `gone` that this run's next step reads from turned
/// out deleted: the source side is forgotten. A lead (or a run of one target) goes back
/// to its snapshot and takes the source side again; a follower goes back to waiting
/// for its lead's next shared snapshot, and will not join `gone` again. What the run
/// made on the target side is kept; `started_ms` stays, so freshness stays
/// conservative.
fn forget_source(mut n: VolumeRun, gone: &SnapshotId) -> VolumeRun {
    n.source_snapshot = None;
    n.reencrypted_snapshot = None;
    n.shared = false;
    n.step = Step::Snapshot;
    n.in_flight = false;
    n.lookups_missed = 0;
    n.wait_started_ms = None;
    n.progress = None;
    n.gone_source = n.follower.then(|| gone.clone());
    n
}

/// `v` failed at its current step. A failure keeps `in_flight`: a call whose outcome
/// is unknown stays unknown until a lookup settles it, whatever happens to the volume
/// meanwhile. The one way a volume run becomes `Failed`.
pub fn fail(v: &VolumeRun, kind: FailureKind, message: String, hint: Option<String>, now_ms: i64) -> VolumeRun {
    let mut n = v.clone();
    n.failure = Some(Failure { step: n.step, kind, message, hint });
    n.step = Step::Failed;
    n.finished_ms = Some(now_ms);
    n.failing_since_ms.get_or_insert(now_ms);
    n
}

/// AWS answered the call of `v`'s step with an error: the call is known not to have
/// taken effect, so nothing is left to look up before it is issued again.
pub fn refused(v: &VolumeRun) -> VolumeRun {
    let mut n = v.clone();
    n.in_flight = false;
    n.lookups_missed = 0;
    n
}

/// `snapferry cleanup` stopped `v`: an unfinished volume run ends failed, and since
/// cleanup listed and deleted what its calls made, nothing is left in flight; of its
/// source-side snapshots it names only those in `kept`.
pub fn stopped_by_cleanup(v: &VolumeRun, kept: &[SnapshotId], now_ms: i64) -> VolumeRun {
    let mut n = if v.step.is_terminal() {
        v.clone()
    } else {
        let mut n = fail(
            v,
            FailureKind::Call,
            "stopped by snapferry cleanup".into(),
            Some("start a new run of the plan".into()),
            now_ms,
        );
        n.in_flight = false;
        n
    };
    // Only what cleanup kept is left to name; a run with no source side left shares
    // nothing.
    n.source_snapshot = v.source_snapshot.clone().filter(|s| kept.contains(s));
    n.reencrypted_snapshot = v.reencrypted_snapshot.clone().filter(|s| kept.contains(s));
    if n.source_snapshot.is_none() && n.reencrypted_snapshot.is_none() {
        n.shared = false;
    }
    n
}

/// A chain rebuilt from its resources' tags (adoption) resumes at `step`: a wait
/// starts now, a chain found finished ends now.
pub fn found_at(v: &VolumeRun, step: Step, now_ms: i64) -> VolumeRun {
    let mut n = v.clone();
    n.step = step;
    match step {
        Step::WaitSnapshot | Step::WaitReencrypt | Step::WaitCopy | Step::WaitVolume => {
            n.wait_started_ms = Some(now_ms)
        }
        Step::Done => n.finished_ms = Some(now_ms),
        _ => {}
    }
    n
}

/// A copy that waits unlocked on a locked target (adopted from tags, carried by a
/// recurring plan, or resumed after the plan gained a lock) goes back to its lock
/// step, as an unknown outcome: the lock is looked up (DescribeLockedSnapshots)
/// before it is asked for, so a lock that took effect is never asked for twice.
pub fn relock(v: &VolumeRun, ctx: &Ctx) -> Option<VolumeRun> {
    if v.step != Step::WaitCopy || v.lock.is_some() || ctx.lock_of(v.target).is_none() || v.target_snapshot.is_none() {
        return None;
    }
    let mut n = v.clone();
    n.step = Step::Lock;
    n.in_flight = true;
    n.lookups_missed = 0;
    Some(n)
}

/// What AWS now says of a copy's lock (`None`: no lock, e.g. it was unlocked), for a
/// copy that has one on record. The mode stays the one it was locked in when AWS
/// reports the lock expired.
pub fn observe_lock(v: &VolumeRun, seen: Option<crate::lock::LockState>, expires_ms: Option<i64>) -> VolumeRun {
    let mut n = v.clone();
    n.lock = match (seen, &v.lock) {
        (None, _) => None,
        (Some(state), old) => {
            let mode = state.mode().or(old.as_ref().map(|l| l.mode));
            mode.map(|mode| CopyLock {
                mode,
                state,
                expires_ms: expires_ms.or(old.as_ref().and_then(|l| l.expires_ms)),
            })
        }
    };
    n
}

/// What a follower does about its lead, the run of the same volume that takes the
/// source side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Join {
    /// The lead's shared snapshot is not ready yet.
    Wait,
    /// The follower's next state: at Copy, with the lead's source-side resources.
    Joined(VolumeRun),
    /// The lead failed before its snapshot was ready: the follower fails with it and is
    /// revived with it.
    Failed(VolumeRun),
}

/// Joins follower `f` to `lead` once the lead's shared snapshot is complete (and
/// shared): the lead is at its own copy or past it, or failed there.
pub fn join(f: &VolumeRun, lead: &VolumeRun, now_ms: i64) -> Join {
    if !f.awaits_source() {
        return Join::Wait;
    }
    let at = match (&lead.step, &lead.failure) {
        (Step::Failed, Some(failure)) => failure.step,
        (step, _) => *step,
    };
    let ready =
        matches!(at, Step::Copy | Step::WaitCopy | Step::CreateVolume | Step::WaitVolume | Step::Cleanup | Step::Done);
    if ready && f.gone_source.is_some() && lead.shared_snapshot() == f.gone_source.as_ref() {
        // The lead still names the snapshot this follower found gone.
        if lead.copy_complete() {
            // The lead is past its own copy and will not make another source side:
            // this run takes the source side itself (and cleans it up after).
            let mut n = f.clone();
            n.follower = false;
            n.gone_source = None;
            n.chain = lead.chain.clone();
            n.started_ms.get_or_insert(now_ms);
            return Join::Joined(n);
        }
        if lead.step == Step::Failed {
            // A rerun revives both: the lead finds the snapshot gone too and makes a
            // new one, which this run then joins.
            let gone = f.gone_source.as_ref().map(|s| s.as_str()).unwrap_or("?");
            let mut n = fail(
                f,
                FailureKind::Call,
                format!("the shared snapshot {gone} of {} is gone", f.source_volume),
                Some("run the same command again: the source side is made again".to_owned()),
                now_ms,
            );
            n.started_ms.get_or_insert(now_ms);
            return Join::Failed(n);
        }
        // The lead is at its own copy: it finds the snapshot gone too, or its copy
        // completes; either puts this follower back on the agenda.
        return Join::Wait;
    }
    if ready {
        let mut n = f.clone();
        n.source_snapshot = lead.source_snapshot.clone();
        n.reencrypted_snapshot = lead.reencrypted_snapshot.clone();
        n.shared = lead.shared;
        n.chain = lead.chain.clone();
        n.gone_source = None;
        n.step = Step::Copy;
        n.in_flight = false;
        n.lookups_missed = 0;
        // The copy holds the data of the lead's snapshot: its chain began with it.
        if n.started_ms.is_none() {
            n.started_ms = lead.started_ms.or(Some(now_ms));
        }
        return Join::Joined(n);
    }
    if lead.step == Step::Failed {
        let (message, hint) = match &lead.failure {
            Some(l) => (
                format!("the source side of {} failed at step {}: {}", f.source_volume, l.step.as_str(), l.message),
                l.hint.clone(),
            ),
            None => (format!("the source side of {} failed", f.source_volume), None),
        };
        let mut n = fail(f, FailureKind::Call, message, hint, now_ms);
        n.started_ms.get_or_insert(now_ms);
        return Join::Failed(n);
    }
    Join::Wait
}

/// True when a lead may delete its intermediates: every other copy of the volume made
/// from them (`siblings`) is complete.
pub fn may_clean_up<'a>(mut siblings: impl Iterator<Item = &'a VolumeRun>) -> bool {
    siblings.all(VolumeRun::copy_complete)
}

/// How long a wait step may last; `None` for steps that are not waits.
pub fn wait_limit_ms(step: Step, ctx: &Ctx) -> Option<i64> {
    match step {
        Step::WaitSnapshot | Step::WaitReencrypt => Some(ctx.timeouts_ms.snapshot),
        Step::WaitCopy => Some(ctx.timeouts_ms.copy),
        Step::WaitVolume => Some(ctx.timeouts_ms.volume),
        _ => None,
    }
}

/// True when a wait that began at `started_ms` has run past the step's timeout.
pub fn wait_expired(v: &VolumeRun, ctx: &Ctx, now_ms: i64) -> bool {
    match (wait_limit_ms(v.step, ctx), v.wait_started_ms) {
        (Some(limit), Some(start)) => now_ms - start > limit,
        _ => false,
    }
}

#[cfg(test)]
mod tests;

/// What decides a volume's route through the steps, for [`planned_steps`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    /// The snapshot is not under the source key, so it is re-encrypted first.
    pub reencrypt: bool,
    pub cross_account: bool,
    pub create_volume: bool,
    pub cleanup: bool,
    /// The copy's target is locked.
    pub lock: bool,
    /// The copy is verified (`options.verify`).
    pub verify: bool,
}

/// The steps that act (waits left out) on a volume's way from `Snapshot` to `Done`,
/// in the order [`apply`] takes them; the dry-run prints them.
pub fn planned_steps(route: Route) -> Vec<Step> {
    let mut steps = vec![Step::Snapshot];
    if route.reencrypt {
        steps.push(Step::Reencrypt);
    }
    if route.cross_account {
        steps.push(Step::Share);
    }
    steps.push(Step::Copy);
    if route.lock {
        steps.push(Step::Lock);
    }
    if route.verify {
        steps.push(Step::Verify);
    }
    if route.create_volume {
        steps.push(Step::CreateVolume);
    }
    if route.cleanup {
        steps.push(Step::Cleanup);
    }
    steps
}
