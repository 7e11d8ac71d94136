//! The validated plan: what a run is allowed to rely on. Built only by
//! [`crate::plan::parse`], so every value here has passed every check.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::ids::{AccountId, AvailabilityZone, KeyRef, PlanName, Region, RoleArn, VolumeId};
use crate::lock::LockSpec;

/// A checked plan.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub name: PlanName,
    pub source: Source,
    /// Where the copies go: one entry for `target:`, one per entry of `targets:`. Never
    /// empty; at most one per (account, region).
    pub targets: Vec<Target>,
    /// The plan was written with `targets:`: the report lists `copies` per volume.
    pub fan_out: bool,
    pub volumes: Vec<VolumeSpec>,
    pub options: Options,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Source {
    pub region: Region,
    /// When given, checked against the caller identity in preflight.
    pub account: Option<AccountId>,
    /// A named profile from the shared AWS config files.
    pub profile: Option<String>,
    /// Customer managed symmetric key the shared snapshot is under.
    pub kms_key: KeyRef,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    pub region: Region,
    /// `None` or equal to the source account: a same-account copy, no share, no role.
    pub account: Option<AccountId>,
    /// Required when the accounts differ; lives in the target account.
    pub role_arn: Option<RoleArn>,
    pub external_id: Option<String>,
    pub kms_key: KeyRef,
    /// Always inside `region`.
    pub availability_zone: AvailabilityZone,
    /// The lock of this target's copies: its own `lock`, else `options.lock`; `None`
    /// for `lock: none` or no lock anywhere.
    pub lock: Option<LockSpec>,
}

/// One entry of `volumes:`: which source volumes it picks, and how their target
/// volumes should look.
#[derive(Debug, Clone, PartialEq)]
pub struct VolumeSpec {
    pub pick: Pick,
    pub target: TargetVolume,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Pick {
    /// One volume by id.
    Id(VolumeId),
    /// Every volume in the source region carrying all these tags (at least one).
    Selector(BTreeMap<String, String>),
}

/// Overrides for the target volume; `None` means "same as the source volume".
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TargetVolume {
    pub volume_type: Option<String>,
    pub iops: Option<u32>,
    pub throughput: Option<u32>,
    /// Tags on the target volume, besides the run's tags.
    pub tags: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Options {
    /// Tags put on every resource a run creates.
    pub tags: BTreeMap<String, String>,
    /// Copies in flight per destination region. AWS allows 20 (EBS quota "Concurrent
    /// snapshot copies per destination Region").
    pub max_concurrent_copies: u32,
    /// After success: unshare and delete the intermediate source-side snapshots.
    pub cleanup: bool,
    /// False: stop at the target snapshot (scheduled replication without volumes).
    pub create_volume: bool,
    /// Retention: per source volume, keep the newest N target snapshots and volumes
    /// this plan made.
    pub keep: Option<u32>,
    pub timeouts: Timeouts,
    /// Recurring replication: a volume whose newest successful copy began at least
    /// 90% of this long ago is copied again; others are left alone (`fresh`).
    pub every: Option<Duration>,
    /// Time-based copy: CopySnapshot `CompletionDurationMinutes`.
    pub copy_within: Option<CopyWithin>,
    /// Source-side snapshots kept per volume even with `cleanup: true`.
    pub keep_source: u32,
    /// `options.lock`: the lock of every target that does not name its own.
    pub lock: Option<LockSpec>,
    /// Finished runs of the plan kept in the state (besides unfinished ones and those
    /// whose chains a later run carries).
    pub history: u32,
    /// `options.verify`: how each copy is compared with its source; `None` for `none`.
    pub verify: Option<crate::verify::Level>,
}

/// `options.history` when the plan leaves it out: a month of daily rounds.
pub const DEFAULT_HISTORY: u32 = 30;

/// A time-based copy's completion duration, in minutes: 15 to 2,880 in steps of 15
/// (EBS User Guide, "Time-based copies").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CopyWithin(u32);

impl CopyWithin {
    pub const MIN_MINUTES: u32 = 15;
    pub const MAX_MINUTES: u32 = 2_880;
    pub const STEP_MINUTES: u32 = 15;

    /// `None` unless `minutes` is one AWS accepts.
    pub fn from_minutes(minutes: u32) -> Option<Self> {
        ((Self::MIN_MINUTES..=Self::MAX_MINUTES).contains(&minutes) && minutes.is_multiple_of(Self::STEP_MINUTES))
            .then_some(CopyWithin(minutes))
    }

    pub fn minutes(self) -> u32 {
        self.0
    }
}

impl Options {
    /// A volume whose newest good copy began at `last_ms` is due again at `now_ms`:
    /// 90% of `every` has passed, so a schedule slightly early still copies.
    pub fn due(&self, last_ms: Option<i64>, now_ms: i64) -> bool {
        match (self.every, last_ms) {
            (Some(every), Some(last)) => now_ms - last >= every.as_millis() as i64 * 9 / 10,
            _ => true,
        }
    }
}

/// The longest each kind of wait may take before its volume fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    pub snapshot: Duration,
    pub copy: Duration,
    pub volume: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        // Snapshots of large volumes take hours and cross-region copies longer still; the
        // 10-minute defaults of other tools are what broke long copies.
        Timeouts {
            snapshot: Duration::from_secs(6 * 3600),
            copy: Duration::from_secs(24 * 3600),
            volume: Duration::from_secs(30 * 60),
        }
    }
}

impl Default for Options {
    fn default() -> Self {
        Options {
            tags: BTreeMap::new(),
            max_concurrent_copies: 20,
            cleanup: true,
            create_volume: true,
            keep: None,
            timeouts: Timeouts::default(),
            every: None,
            copy_within: None,
            keep_source: 0,
            lock: None,
            history: DEFAULT_HISTORY,
            verify: None,
        }
    }
}

impl Plan {
    /// True when any target's copies are locked.
    pub fn locks(&self) -> bool {
        self.targets.iter().any(|t| t.lock.is_some())
    }

    /// True when any copy crosses accounts, given the source account the caller
    /// identity resolved: the snapshot is shared, the key policy gets a grant and the
    /// target side works through the role.
    pub fn cross_account(&self, source_account: &AccountId) -> bool {
        self.targets.iter().any(|t| t.crosses(source_account))
    }
}

impl Target {
    /// True when this target is in another account than `source_account`.
    pub fn crosses(&self, source_account: &AccountId) -> bool {
        self.account.as_ref().is_some_and(|t| t != source_account)
    }
}
