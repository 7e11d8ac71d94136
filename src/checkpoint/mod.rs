//! The state of runs: versioned, crash-safe, locked, and kept either in a local
//! directory or in an object store (S3), behind one [`StateStore`] so the runner does
//! not know which it has.
//!
//! A run is a compacted checkpoint plus a journal of the records written since,
//! replayed in order. Recording a volume's new state only buffers it;
//! [`Journal::sync`] makes everything buffered durable in one write (an fsynced
//! append locally, one new object in S3), so the runner records the intents of a
//! whole tick and syncs once before issuing any call. The journal is folded back into
//! the checkpoint when it has grown enough, so writes stay proportional to what
//! changed, not to the size of the run.
//!
//! Layout: this file holds the records ([`RunRecord`], [`RunMeta`], [`PlanIndex`]) and
//! declares the rest; `backend` the [`StateStore`] trait and [`PlanLock`]; `store`
//! [`Store`], the handle that builds either store;
//! `journal` the [`Journal`] and its replay; `error` [`StoreError`]; `codec` versioned
//! parsing and atomic writes; `local` (a directory, flock) and `remote` (an object
//! store: a lease object for the lock, numbered checkpoint and journal objects, every
//! write conditional), each built on those, never on this file's children through it.
//! `memory` is an in-memory object store with S3's conditional semantics, for tests and
//! for counting what a run writes. Beside the runs, each plan has an index
//! ([`PlanIndex`]: how many runs `options.history` removed); a run is removed whole
//! with [`StateStore::remove`].
//!
//! Architecture Invariant: nothing here ever holds a credential; records are plan
//! data, resource ids and AWS messages only.

mod backend;
mod codec;
mod error;
#[cfg(test)]
mod faults;
mod journal;
mod local;
pub mod memory;
pub mod remote;
mod store;
#[cfg(test)]
mod tests;

use serde::{Deserialize, Serialize};

use crate::engine::VolumeRun;
use crate::ids::{AccountId, KeyArn, Region, RoleArn};

pub use backend::{PlanLock, StateStore};
pub use codec::write_atomic;
pub use error::StoreError;
pub use journal::Journal;
pub use local::LocalStore;
pub use remote::{LEASE_ENV, LeaseOptions, RemoteStore};
pub use store::Store;

/// Bumped on any incompatible change of [`RunRecord`]; older tools refuse newer files.
pub const FORMAT_VERSION: u32 = 1;

/// How a run ended, or that it has not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    Running,
    Succeeded,
    Failed,
    Interrupted,
    /// Stopped at `--max-duration` with work still under way in AWS. Only reports carry
    /// it; the checkpoint records such a run as `interrupted`.
    Stopped,
}

impl RunStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Running => "running",
            RunStatus::Succeeded => "succeeded",
            RunStatus::Failed => "failed",
            RunStatus::Interrupted => "interrupted",
            RunStatus::Stopped => "stopped",
        }
    }
}

/// The key-policy statement a run added (or found already there).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantRecord {
    pub key_arn: KeyArn,
    pub sid: String,
    /// True when this run wrote the statement; false when an equivalent one was there.
    pub added: bool,
    #[serde(default)]
    pub revoked: bool,
}

/// Everything known about a run except its volumes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunMeta {
    pub format_version: u32,
    pub run_id: String,
    pub plan: String,
    pub plan_file: String,
    pub status: RunStatus,
    pub created_ms: i64,
    pub updated_ms: i64,
    pub finished_ms: Option<i64>,
    pub source_account: Option<AccountId>,
    pub target_account: Option<AccountId>,
    pub source_region: Region,
    pub target_region: Region,
    #[serde(default)]
    pub cross_account: bool,
    pub source_key_arn: Option<KeyArn>,
    pub target_key_arn: Option<KeyArn>,
    /// The role assumed in the target account, for a cross-account run.
    #[serde(default)]
    pub target_role_arn: Option<RoleArn>,
    /// The external id passed when assuming it (an identifier, not a secret, in AWS's
    /// words), so `cleanup` can assume the role without the plan.
    #[serde(default)]
    pub target_external_id: Option<String>,
    /// `options.every` of a recurring plan (ms), so `status` can tell stale copies.
    #[serde(default)]
    pub every_ms: Option<i64>,
    /// Every target of the run, in the plan's order (the flat `target_*` fields are the
    /// first one's). Empty in checkpoints written before plans had several targets:
    /// see [`RunMeta::targets`].
    #[serde(default, rename = "targets", skip_serializing_if = "Vec::is_empty")]
    pub target_list: Vec<TargetMeta>,
    pub grant: Option<GrantRecord>,
    /// The statements of every target account after the first (whose is `grant`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub more_grants: Vec<GrantRecord>,
    /// True once the run has been simulated rather than run against AWS.
    #[serde(default)]
    pub simulated: bool,
    /// Set by `snapferry cleanup`.
    #[serde(default)]
    pub cleaned_up: bool,
    /// The earlier runs whose chains this run carries on (the `VolumeRun::chain` of
    /// its volumes), so that removing old runs keeps them; `None` in checkpoints
    /// written before it was recorded (the run's volumes then say).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub carries: Option<Vec<String>>,
}

/// One target of a run: where its copies went and how it was reached.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetMeta {
    pub account: Option<AccountId>,
    pub region: Region,
    pub key_arn: Option<KeyArn>,
    #[serde(default)]
    pub cross_account: bool,
    /// The role assumed in its account, for a cross-account target.
    #[serde(default)]
    pub role_arn: Option<RoleArn>,
    #[serde(default)]
    pub external_id: Option<String>,
    /// The lock mode of its copies (`governance`, `compliance`), when they are locked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lock: Option<String>,
}

impl RunMeta {
    /// A new run's meta, the one place one is made: running since `created_ms`, its
    /// targets recorded (see [`RunMeta::set_targets`]), nothing else known yet.
    pub fn new(run_id: String, plan: String, source_region: Region, targets: Vec<TargetMeta>, created_ms: i64) -> Self {
        // A plan has at least one target; without one, the flat fields name the source.
        let target_region = targets.first().map_or_else(|| source_region.clone(), |t| t.region.clone());
        let mut meta = RunMeta {
            format_version: FORMAT_VERSION,
            run_id,
            plan,
            plan_file: String::new(),
            status: RunStatus::Running,
            created_ms,
            updated_ms: created_ms,
            finished_ms: None,
            source_account: None,
            target_account: None,
            source_region,
            target_region,
            cross_account: false,
            source_key_arn: None,
            target_key_arn: None,
            target_role_arn: None,
            target_external_id: None,
            every_ms: None,
            target_list: vec![],
            grant: None,
            more_grants: vec![],
            simulated: false,
            cleaned_up: false,
            carries: None,
        };
        meta.set_targets(targets);
        meta
    }

    /// The run's targets: the recorded list, or for an older checkpoint its one target.
    pub fn targets(&self) -> Vec<TargetMeta> {
        if !self.target_list.is_empty() {
            return self.target_list.clone();
        }
        vec![TargetMeta {
            account: self.target_account.clone(),
            region: self.target_region.clone(),
            key_arn: self.target_key_arn.clone(),
            cross_account: self.cross_account,
            role_arn: self.target_role_arn.clone(),
            external_id: self.target_external_id.clone(),
            lock: None,
        }]
    }

    /// Records the targets, the first one in the flat fields too.
    pub fn set_targets(&mut self, targets: Vec<TargetMeta>) {
        if let Some(first) = targets.first() {
            self.target_account = first.account.clone();
            self.target_region = first.region.clone();
            self.target_key_arn = first.key_arn.clone();
            self.target_role_arn = first.role_arn.clone();
            self.target_external_id = first.external_id.clone();
        }
        self.cross_account = targets.iter().any(|t| t.cross_account);
        // One target is kept in the flat fields alone, unless it has what they lack.
        self.target_list = if targets.len() > 1 || targets.iter().any(|t| t.lock.is_some()) { targets } else { vec![] };
    }

    /// Every key-policy statement the run added or found.
    pub fn grants(&self) -> impl Iterator<Item = &GrantRecord> {
        self.grant.iter().chain(&self.more_grants)
    }
}

/// A whole run: what `checkpoint.json` holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunRecord {
    #[serde(flatten)]
    pub meta: RunMeta,
    pub volumes: Vec<VolumeRun>,
}

impl RunRecord {
    /// The other runs whose chains this run's volumes carry on, each once, sorted.
    pub fn carried_runs(&self) -> Vec<String> {
        let own = self.meta.run_id.as_str();
        let set: std::collections::BTreeSet<&str> =
            self.volumes.iter().filter_map(|v| v.chain.as_deref()).filter(|c| *c != own).collect();
        set.into_iter().map(str::to_owned).collect()
    }
}

/// What the state keeps per plan besides its runs: how many runs `options.history`
/// removed from it so far.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanIndex {
    pub format_version: u32,
    pub plan: String,
    /// Runs of the plan removed from the state, over its whole life.
    pub removed: u64,
}
