//! EBS snapshot lock as every layer speaks of it: the mode and settings a plan asks
//! for ([`LockSpec`]), the state AWS reports ([`LockState`]) and what is known of one
//! copy's lock ([`CopyLock`]). Pure: no I/O, no clock; times are milliseconds since
//! the Unix epoch.

use std::fmt;

use serde::{Deserialize, Serialize};

/// LockSnapshot `LockDuration`, in days: 1 to 36,500 (EC2 API LockSnapshot).
pub const DURATION_DAYS: std::ops::RangeInclusive<u32> = 1..=36_500;
/// LockSnapshot `CoolOffPeriod`, in hours: 1 to 72 (EC2 API LockSnapshot).
pub const COOL_OFF_HOURS: std::ops::RangeInclusive<u32> = 1..=72;

const DAY_MS: i64 = 86_400_000;

/// `governance`: principals with `ec2:UnlockSnapshot` may unlock it. `compliance`:
/// after the cool-off nobody can unlock or shorten it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LockMode {
    Governance,
    Compliance,
}

impl LockMode {
    pub fn as_str(self) -> &'static str {
        match self {
            LockMode::Governance => "governance",
            LockMode::Compliance => "compliance",
        }
    }
}

impl fmt::Display for LockMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The lock a plan asks for on a target's copies: checked by the plan's validation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LockSpec {
    pub mode: LockMode,
    /// Days from the copy's completion (AWS starts the clock then).
    pub duration_days: u32,
    /// Compliance only: hours during which the lock can still be undone.
    pub cool_off_hours: Option<u32>,
}

impl LockSpec {
    pub fn duration_ms(&self) -> i64 {
        i64::from(self.duration_days) * DAY_MS
    }
}

/// DescribeLockedSnapshots `LockState`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LockState {
    ComplianceCooloff,
    Governance,
    Compliance,
    Expired,
}

impl LockState {
    pub fn as_str(self) -> &'static str {
        match self {
            LockState::ComplianceCooloff => "compliance-cooloff",
            LockState::Governance => "governance",
            LockState::Compliance => "compliance",
            LockState::Expired => "expired",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "compliance-cooloff" => LockState::ComplianceCooloff,
            "governance" => LockState::Governance,
            "compliance" => LockState::Compliance,
            "expired" => LockState::Expired,
            _ => return None,
        })
    }

    /// The mode a live lock is in; `None` once expired.
    pub fn mode(self) -> Option<LockMode> {
        match self {
            LockState::Governance => Some(LockMode::Governance),
            LockState::Compliance | LockState::ComplianceCooloff => Some(LockMode::Compliance),
            LockState::Expired => None,
        }
    }

    /// True while DeleteSnapshot is refused.
    pub fn protects(self) -> bool {
        self != LockState::Expired
    }
}

/// One snapshot's lock as LockSnapshot or DescribeLockedSnapshots report it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopyLock {
    pub mode: LockMode,
    pub state: LockState,
    /// `LockExpiresOn`; unknown while the snapshot is pending (the duration starts at
    /// completion).
    #[serde(default)]
    pub expires_ms: Option<i64>,
}

impl CopyLock {
    /// True when the lock still refuses DeleteSnapshot at `now_ms`.
    pub fn protects_at(&self, now_ms: i64) -> bool {
        self.state.protects() && self.expires_ms.is_none_or(|e| now_ms < e)
    }

    /// True when this lock is the one `spec` asks for (same mode, not expired): a
    /// lock found after an unknown outcome settles the intent.
    pub fn satisfies(&self, spec: &LockSpec) -> bool {
        self.mode == spec.mode && self.state.protects()
    }
}
