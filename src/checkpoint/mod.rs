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
//! Layout: `local` (a directory, flock) and `remote` (an object store: a lease object
//! for the lock, numbered checkpoint and journal objects, every write conditional).
//! `memory` is an in-memory object store with S3's conditional semantics, for tests and
//! for counting what a run writes. Beside the runs, each plan has an index
//! ([`PlanIndex`]: how many runs `options.history` removed); a run is removed whole
//! with [`StateStore::remove`].
//!
//! Architecture Invariant: nothing here ever holds a credential; records are plan
//! data, resource ids and AWS messages only.

#[cfg(test)]
mod faults;
mod local;
pub mod memory;
pub mod remote;

use std::borrow::Cow;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::cloud::CloudError;
use crate::engine::VolumeRun;
use crate::ids::{AccountId, KeyArn, Region, RoleArn};

pub use local::LocalStore;
pub use remote::{LEASE_ENV, LeaseOptions, RemoteStore};

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

/// One journal line: borrowed when written, owned when read back.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Entry<'a> {
    Meta(Cow<'a, RunMeta>),
    Volume { index: usize, state: Cow<'a, VolumeRun> },
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state dir {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("checkpoint {path} is damaged: {message}; move it aside to start the run afresh")]
    Corrupt { path: PathBuf, message: String },
    #[error(
        "checkpoint {path} has format version {found}, newer than this snapferry understands ({FORMAT_VERSION}); use a newer snapferry"
    )]
    NewerFormat { path: PathBuf, found: u32 },
    #[error("no run {0} in the state dir")]
    NoSuchRun(String),
    #[error("another snapferry holds the lock on plan {plan} ({path}); wait for it to finish")]
    Locked { plan: String, path: PathBuf },
    #[error(
        "another snapferry holds the lock on plan {plan} in {location}: {holder}, whose lease ends at {until} unless renewed; wait for it to finish (a dead holder's lease is taken over once it ends)"
    )]
    Leased { plan: String, location: String, holder: String, until: String },
    #[error(
        "lost the lease on plan {plan} in {location}: {reason}; stopped before writing the state, so as not to overwrite another snapferry's; AWS goes on with what was started, and the same command carries on later"
    )]
    LeaseLost { plan: String, location: String, reason: String },
    #[error(
        "the state of run {run_id} in {location} was written by another snapferry since this one read it; stopped without writing; run the same command again"
    )]
    Fenced { run_id: String, location: String },
    #[error("state in {location}: {source}{hint}")]
    Remote { location: String, source: CloudError, hint: &'static str },
}

impl StoreError {
    /// True when another snapferry holds (or took over) the plan: exit 3.
    pub fn is_lock_conflict(&self) -> bool {
        matches!(
            self,
            StoreError::Locked { .. }
                | StoreError::Leased { .. }
                | StoreError::LeaseLost { .. }
                | StoreError::Fenced { .. }
        )
    }
}

pub(crate) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io { path: path.to_owned(), source }
}

/// What a state store does; the runner, `status` and `cleanup` only use this.
#[async_trait]
pub trait StateStore: Send + Sync + fmt::Debug {
    /// Where the state lives, for messages: a directory or `s3://BUCKET/PREFIX`.
    fn location(&self) -> String;
    /// Takes the plan's lock without waiting; [`StoreError::is_lock_conflict`] when
    /// another snapferry holds it.
    async fn lock_plan(&self, plan: &str) -> Result<PlanLock, StoreError>;
    /// Reads a run: the checkpoint with its journal replayed.
    async fn load(&self, run_id: &str) -> Result<RunRecord, StoreError>;
    /// Every run, oldest first by creation time.
    async fn list(&self) -> Result<Vec<RunRecord>, StoreError>;
    /// Reads a run listed a moment ago: `None` when it is gone since (another
    /// process's cleanup), which a listing passes over.
    async fn load_listed(&self, run_id: &str) -> Result<Option<RunRecord>, StoreError> {
        match self.load(run_id).await {
            Ok(r) => Ok(Some(r)),
            Err(StoreError::NoSuchRun(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }
    /// Every run's meta, in the order of [`StateStore::list`]; a store that can read a
    /// run's meta without its volumes does so.
    async fn list_meta(&self) -> Result<Vec<RunMeta>, StoreError> {
        Ok(self.list().await?.into_iter().map(|r| r.meta).collect())
    }
    /// Opens a run for appending: creates it if it is new, else folds its journal into
    /// a fresh checkpoint of `record`.
    async fn create_or_reopen(&self, record: &RunRecord) -> Result<Journal, StoreError>;
    /// Removes a run from the state, every file or object of it. A removal cut short
    /// leaves a run that no longer loads (it is passed over), never an older state of it.
    async fn remove(&self, run_id: &str) -> Result<(), StoreError>;
    /// Every plan's index, by plan name.
    async fn plan_indexes(&self) -> Result<Vec<PlanIndex>, StoreError>;
    /// Adds `runs` to the count of runs removed from `plan`; returns the new count.
    async fn count_removed(&self, plan: &str, runs: u64) -> Result<u64, StoreError>;
    /// Waits (bounded) for background work of the store to end, such as the release
    /// of a lock just dropped. Call before the process exits.
    async fn close(&self) {}
    /// Request and byte counts of the store's backend, when it counts them.
    fn stats(&self) -> Option<crate::cloud::object::ObjectStats> {
        None
    }
}

/// A state store: a local directory or an object store. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Store(Arc<dyn StateStore>);

impl Store {
    /// The local state dir at `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Store(Arc::new(LocalStore::new(root)))
    }

    /// Any store.
    pub fn from_backend(backend: Arc<dyn StateStore>) -> Self {
        Store(backend)
    }

    /// The state in an object store (S3, or the in-memory one of tests).
    pub fn remote(objects: Arc<dyn crate::cloud::object::ObjectStore>, lease: LeaseOptions) -> Self {
        Store(Arc::new(RemoteStore::new(objects, lease)))
    }

    pub fn location(&self) -> String {
        self.0.location()
    }

    pub async fn lock_plan(&self, plan: &str) -> Result<PlanLock, StoreError> {
        self.0.lock_plan(plan).await
    }

    pub async fn load(&self, run_id: &str) -> Result<RunRecord, StoreError> {
        self.0.load(run_id).await
    }

    pub async fn list(&self) -> Result<Vec<RunRecord>, StoreError> {
        self.0.list().await
    }

    pub async fn create_or_reopen(&self, record: &RunRecord) -> Result<Journal, StoreError> {
        self.0.create_or_reopen(record).await
    }

    /// Opens a run that exists (a loaded one) for appending.
    pub async fn reopen(&self, record: &RunRecord) -> Result<Journal, StoreError> {
        self.0.create_or_reopen(record).await
    }

    /// Every run's meta, oldest first, without reading the runs' volumes where the
    /// store can.
    pub async fn list_meta(&self) -> Result<Vec<RunMeta>, StoreError> {
        self.0.list_meta().await
    }

    /// Reads a run listed a moment ago; `None` when it is gone since.
    pub async fn load_listed(&self, run_id: &str) -> Result<Option<RunRecord>, StoreError> {
        self.0.load_listed(run_id).await
    }

    /// The plan's newest run, whole. Only that one is read whole: a recurring plan
    /// leaves a run per round behind, and a fleet's run is large.
    pub async fn latest_of_plan(&self, plan: &str) -> Result<Option<RunRecord>, StoreError> {
        let Some(meta) = self.0.list_meta().await?.into_iter().rfind(|m| m.plan == plan) else {
            return Ok(None);
        };
        match self.0.load_listed(&meta.run_id).await? {
            Some(r) => Ok(Some(r)),
            // Gone since the listing: the newest that is left.
            None => Ok(self.0.list().await?.into_iter().rfind(|r| r.meta.plan == plan)),
        }
    }

    pub async fn close(&self) {
        self.0.close().await
    }

    /// Removes a run from the state.
    pub async fn remove(&self, run_id: &str) -> Result<(), StoreError> {
        self.0.remove(run_id).await
    }

    /// Per plan, how many runs were removed from the state.
    pub async fn removed_counts(&self) -> Result<std::collections::BTreeMap<String, u64>, StoreError> {
        Ok(self.0.plan_indexes().await?.into_iter().map(|i| (i.plan, i.removed)).collect())
    }

    /// Adds `runs` to the count of runs removed from `plan`.
    pub async fn count_removed(&self, plan: &str, runs: u64) -> Result<u64, StoreError> {
        self.0.count_removed(plan, runs).await
    }

    pub fn stats(&self) -> Option<crate::cloud::object::ObjectStats> {
        self.0.stats()
    }
}

/// An exclusive hold on one plan; released when dropped. A local lock is released by
/// the kernel when the process dies; a lease in S3 ends at most one lease duration
/// after its holder stopped renewing it.
pub struct PlanLock {
    _guard: Box<dyn Send + Sync>,
}

impl PlanLock {
    pub(crate) fn new(guard: impl Send + Sync + 'static) -> Self {
        PlanLock { _guard: Box::new(guard) }
    }
}

impl fmt::Debug for PlanLock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PlanLock")
    }
}

/// Where a journal's records go when synced: one backend per kind of store.
#[async_trait]
pub(crate) trait JournalSink: Send + Sync + fmt::Debug {
    /// Makes `batch` (whole JSON lines, `lines` of them) durable after what came before.
    async fn append(&mut self, batch: &[u8], lines: usize) -> Result<(), StoreError>;
    /// Writes the whole run as the new checkpoint and starts an empty journal.
    async fn compact(&mut self, record: &RunRecord) -> Result<(), StoreError>;
    fn wants_compaction(&self) -> bool;
}

/// The append side of one run's checkpoint.
#[derive(Debug)]
pub struct Journal {
    sink: Box<dyn JournalSink>,
    /// Records not synced yet, as JSON lines.
    pending: Vec<u8>,
    pending_lines: usize,
}

impl Journal {
    pub(crate) fn new(sink: impl JournalSink + 'static) -> Self {
        Journal { sink: Box::new(sink), pending: vec![], pending_lines: 0 }
    }

    fn write_entry(&mut self, entry: &Entry) -> Result<(), StoreError> {
        let line = serde_json::to_vec(entry)
            .map_err(|e| StoreError::Corrupt { path: PathBuf::from("journal"), message: e.to_string() })?;
        self.pending.extend_from_slice(&line);
        self.pending.push(b'\n');
        self.pending_lines += 1;
        Ok(())
    }

    /// Records a volume's new state (durable after the next [`Journal::sync`]).
    pub fn volume(&mut self, index: usize, state: &VolumeRun) -> Result<(), StoreError> {
        self.write_entry(&Entry::Volume { index, state: Cow::Borrowed(state) })
    }

    /// Records the run's new meta (durable after the next [`Journal::sync`]).
    pub fn meta(&mut self, meta: &RunMeta) -> Result<(), StoreError> {
        self.write_entry(&Entry::Meta(Cow::Borrowed(meta)))
    }

    /// Makes everything recorded so far durable, in one write. Fails, writing
    /// nothing, when the store no longer belongs to this process (a lost lease).
    pub async fn sync(&mut self) -> Result<(), StoreError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        self.sink.append(&self.pending, self.pending_lines).await?;
        self.pending.clear();
        // A run's first batch holds every volume's intent; keep no such buffer for the
        // rest of the run.
        self.pending.shrink_to(1 << 16);
        self.pending_lines = 0;
        Ok(())
    }

    /// Records written since the last sync.
    pub fn pending_lines(&self) -> usize {
        self.pending_lines
    }

    /// True when the journal has grown enough to be folded into the checkpoint.
    pub fn wants_compaction(&self) -> bool {
        self.sink.wants_compaction()
    }

    /// Writes the whole run as the new checkpoint and starts an empty journal.
    pub async fn compact(&mut self, record: &RunRecord) -> Result<(), StoreError> {
        self.sync().await?;
        self.sink.compact(record).await
    }
}

/// Replays journal lines over a checkpoint; stops at a line that does not parse,
/// which can only be a torn last one.
pub(crate) fn replay(record: &mut RunRecord, lines: &[u8]) {
    for line in lines.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        let Ok(entry) = serde_json::from_slice::<Entry>(line) else { break };
        match entry {
            Entry::Meta(m) => record.meta = m.into_owned(),
            Entry::Volume { index, state } => {
                let state = state.into_owned();
                if index < record.volumes.len() {
                    record.volumes[index] = state;
                } else if index == record.volumes.len() {
                    record.volumes.push(state);
                }
            }
        }
    }
}

/// A run's meta from its checkpoint and journal, skipping its volumes unparsed.
pub(crate) fn meta_of(checkpoint: &[u8], journal: &[u8], path: &Path) -> Result<RunMeta, StoreError> {
    // RunMeta's fields are the checkpoint's top-level ones; `volumes` is skipped.
    let mut meta: RunMeta = parse_versioned(checkpoint, path)?;
    for line in journal.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        if line.starts_with(b"{\"volume\"") {
            continue;
        }
        match serde_json::from_slice::<Entry>(line) {
            Ok(Entry::Meta(m)) => meta = m.into_owned(),
            Ok(Entry::Volume { .. }) => {}
            Err(_) => break,
        }
    }
    Ok(meta)
}

/// Parses a plan's index, refusing a newer format. `path` names it in errors.
pub(crate) fn parse_index(bytes: &[u8], path: &Path) -> Result<PlanIndex, StoreError> {
    parse_versioned(bytes, path)
}

/// Parses a checkpoint, refusing a newer format. `path` names it in errors.
pub(crate) fn parse_checkpoint(bytes: &[u8], path: &Path) -> Result<RunRecord, StoreError> {
    parse_versioned(bytes, path)
}

/// Parses `T` out of a checkpoint after reading its format version alone (the rest
/// skipped, no tree of the whole run built), so a newer format is named as such rather
/// than as damage.
fn parse_versioned<T: serde::de::DeserializeOwned>(bytes: &[u8], path: &Path) -> Result<T, StoreError> {
    #[derive(Deserialize)]
    struct Version {
        #[serde(default)]
        format_version: u64,
    }
    let corrupt = |e: serde_json::Error| StoreError::Corrupt { path: path.to_owned(), message: e.to_string() };
    let found = serde_json::from_slice::<Version>(bytes).map_err(corrupt)?.format_version as u32;
    if found > FORMAT_VERSION {
        return Err(StoreError::NewerFormat { path: path.to_owned(), found });
    }
    serde_json::from_slice(bytes).map_err(corrupt)
}

/// Writes `value` as JSON to `path` so that a crash leaves either the old file or the
/// new one: an owner-only temporary file in the same dir, fsync, rename, fsync the dir
/// ([`crate::private_fs::AtomicFile`]).
pub fn write_atomic<T: Serialize>(path: &Path, value: &T) -> Result<(), StoreError> {
    let mut file = crate::private_fs::AtomicFile::create(path).map_err(io(path))?;
    let tmp = file.temp_path().to_path_buf();
    // Streamed: a large run (or simulated world) is never held as one buffer.
    let mut out = std::io::BufWriter::with_capacity(1 << 16, file.file());
    serde_json::to_writer_pretty(&mut out, value).map_err(|e| {
        if e.is_io() {
            io(&tmp)(e.into())
        } else {
            StoreError::Corrupt { path: path.to_owned(), message: e.to_string() }
        }
    })?;
    std::io::Write::flush(&mut out).map_err(io(&tmp))?;
    drop(out);
    file.commit().map_err(io(path))
}

pub(crate) fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    crate::private_fs::sync_dir(dir).map_err(io(dir))
}

#[cfg(test)]
mod tests {
    use std::fs::{self, OpenOptions};
    use std::io::{Seek, SeekFrom, Write};
    use std::time::Duration;

    use super::memory::MemoryObjects;
    use super::*;
    use crate::cloud::object::ObjectStore;
    use crate::ids::VolumeId;

    /// A run of `n` volumes just begun, for the store tests here and in `faults`.
    pub(super) fn record(run_id: &str, n: usize) -> RunRecord {
        let target = TargetMeta {
            account: None,
            region: Region::parse("eu-west-1").unwrap(),
            key_arn: None,
            cross_account: true,
            role_arn: None,
            external_id: None,
            lock: None,
        };
        let mut meta = RunMeta::new(run_id.into(), "p".into(), Region::parse("us-east-1").unwrap(), vec![target], 1);
        meta.plan_file = "p.yaml".into();
        meta.simulated = true;
        RunRecord {
            meta,
            volumes: (0..n).map(|i| VolumeRun::new(VolumeId::parse(&format!("vol-{i:017x}")).unwrap())).collect(),
        }
    }

    /// The two stores the same tests run against: a directory, and the S3 layout over
    /// objects in memory.
    fn stores() -> Vec<(Store, tempfile::TempDir, Arc<MemoryObjects>)> {
        let dir = tempfile::tempdir().unwrap();
        let objects = Arc::new(MemoryObjects::new());
        vec![
            (Store::new(dir.path()), dir, objects.clone()),
            (Store::remote(objects.clone(), LeaseOptions::default()), tempfile::tempdir().unwrap(), objects),
        ]
    }

    fn short_lease() -> LeaseOptions {
        LeaseOptions { duration: Duration::from_millis(400) }
    }

    #[tokio::test]
    async fn journal_replays_over_checkpoint() {
        for (store, _dir, _) in stores() {
            let mut r = record("r1", 2);
            let mut j = store.create_or_reopen(&r).await.unwrap();
            r.volumes[1].step = crate::engine::Step::WaitSnapshot;
            j.volume(1, &r.volumes[1]).unwrap();
            r.meta.status = RunStatus::Failed;
            j.meta(&r.meta).unwrap();
            j.sync().await.unwrap();
            assert_eq!(store.load("r1").await.unwrap(), r, "{}", store.location());
        }
    }

    #[tokio::test]
    async fn a_torn_last_line_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        let mut r = record("r1", 2);
        let mut j = store.create_or_reopen(&r).await.unwrap();
        r.volumes[1].step = crate::engine::Step::WaitSnapshot;
        j.volume(1, &r.volumes[1]).unwrap();
        j.sync().await.unwrap();
        // A crash mid-write leaves part of a line where the zeros ahead of the records
        // began.
        let path = dir.path().join("runs/r1/journal.jsonl");
        let end = fs::read(&path).unwrap().iter().position(|b| *b == 0).expect("zeros ahead of the records");
        let mut f = OpenOptions::new().write(true).open(&path).unwrap();
        f.seek(SeekFrom::Start(end as u64)).unwrap();
        f.write_all(b"{\"volume\":{\"index\":0,\"sta").unwrap();
        assert_eq!(store.load("r1").await.unwrap(), r);
    }

    #[tokio::test]
    async fn records_across_the_journals_growth_all_replay() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        let mut r = record("r1", 3);
        let mut j = store.create_or_reopen(&r).await.unwrap();
        // Past two steps of growth, in batches of different sizes.
        let mut written = 0;
        for round in 0..12_000 {
            let i = round % 3;
            r.volumes[i].progress = Some((round % 100) as u8);
            r.volumes[i].lookups_missed = (round % 7) as u8;
            j.volume(i, &r.volumes[i]).unwrap();
            if round % 7 == 0 {
                j.sync().await.unwrap();
            }
            written += 1;
        }
        j.sync().await.unwrap();
        let len = fs::metadata(dir.path().join("runs/r1/journal.jsonl")).unwrap().len();
        assert!(len > 2 << 20, "the journal grew twice ({len} bytes, {written} records)");
        assert_eq!(store.load("r1").await.unwrap(), r);
    }

    #[tokio::test]
    async fn unsynced_records_are_not_durable() {
        for (store, _dir, _) in stores() {
            let mut r = record("r1", 1);
            let mut j = store.create_or_reopen(&r).await.unwrap();
            let before = r.clone();
            r.volumes[0].in_flight = true;
            j.volume(0, &r.volumes[0]).unwrap();
            assert_eq!(store.load("r1").await.unwrap(), before, "{}", store.location());
        }
    }

    #[tokio::test]
    async fn compaction_keeps_the_same_run() {
        for (store, dir, objects) in stores() {
            let mut r = record("r2", 3);
            let mut j = store.create_or_reopen(&r).await.unwrap();
            for i in 0..3 {
                r.volumes[i].in_flight = true;
                j.volume(i, &r.volumes[i]).unwrap();
                j.sync().await.unwrap();
            }
            j.compact(&r).await.unwrap();
            if store.location().starts_with("memory") {
                // Only the newest checkpoint is left.
                assert_eq!(objects.keys(), vec!["runs/r2/000000000005.json".to_owned()]);
            } else {
                assert_eq!(fs::metadata(dir.path().join("runs/r2/journal.jsonl")).unwrap().len(), 0);
            }
            r.volumes[2].in_flight = false;
            j.volume(2, &r.volumes[2]).unwrap();
            j.sync().await.unwrap();
            assert_eq!(store.load("r2").await.unwrap(), r);
        }
    }

    /// A run's meta as checkpoints and journals hold it, with every optional field set:
    /// its regions, accounts and ARNs read back into their typed ids and written out as
    /// the same bytes.
    const META_TEXT: &str = concat!(
        r#"{"format_version":1,"run_id":"p-20260101T000000Z-ab12","plan":"p","plan_file":"p.yaml","#,
        r#""status":"interrupted","created_ms":1,"updated_ms":2,"finished_ms":3,"#,
        r#""source_account":"111111111111","target_account":"222222222222","#,
        r#""source_region":"us-east-1","target_region":"eu-west-1","cross_account":true,"#,
        r#""source_key_arn":"arn:aws:kms:us-east-1:111111111111:key/11111111-2222-3333-4444-555555555555","#,
        r#""target_key_arn":"arn:aws:kms:eu-west-1:222222222222:key/66666666-7777-8888-9999-000000000000","#,
        r#""target_role_arn":"arn:aws:iam::222222222222:role/snapferry-target","target_external_id":"ext-1","#,
        r#""every_ms":86400000,"targets":["#,
        r#"{"account":"222222222222","region":"eu-west-1","#,
        r#""key_arn":"arn:aws:kms:eu-west-1:222222222222:key/66666666-7777-8888-9999-000000000000","#,
        r#""cross_account":true,"role_arn":"arn:aws:iam::222222222222:role/snapferry-target","#,
        r#""external_id":"ext-1","lock":"governance"},"#,
        r#"{"account":"111111111111","region":"us-west-2","key_arn":null,"cross_account":false,"#,
        r#""role_arn":null,"external_id":null}],"#,
        r#""grant":{"key_arn":"arn:aws:kms:us-east-1:111111111111:key/11111111-2222-3333-4444-555555555555","#,
        r#""sid":"snapferry-p-222222222222","added":true,"revoked":false},"#,
        r#""more_grants":[{"key_arn":"arn:aws:kms:us-east-1:111111111111:key/11111111-2222-3333-4444-555555555555","#,
        r#""sid":"snapferry-p-333333333333","added":false,"revoked":true}],"#,
        r#""simulated":false,"cleaned_up":true,"carries":["p-20251231T000000Z-cd34"],"volumes":[]}"#
    );

    #[test]
    fn a_checkpoints_meta_reads_into_typed_ids_and_writes_the_same_bytes() {
        let record: RunRecord = serde_json::from_str(META_TEXT).unwrap();
        assert_eq!(record.meta.source_region.as_str(), "us-east-1");
        assert_eq!(record.meta.targets()[1].account.as_ref().map(|a| a.as_str()), Some("111111111111"));
        assert_eq!(serde_json::to_string(&record).unwrap(), META_TEXT);
        // As a journal line too.
        let line = serde_json::to_string(&Entry::Meta(Cow::Borrowed(&record.meta))).unwrap();
        let Entry::Meta(back) = serde_json::from_str::<Entry>(&line).unwrap() else { panic!("{line}") };
        assert_eq!(*back, record.meta);
        // A checkpoint whose ids are not well formed is damaged, not half read.
        let bad = META_TEXT.replace("\"source_region\":\"us-east-1\"", "\"source_region\":\"nowhere\"");
        let e = parse_checkpoint(bad.as_bytes(), Path::new("runs/x/checkpoint.json")).unwrap_err();
        assert!(matches!(e, StoreError::Corrupt { .. }), "{e}");
    }

    #[test]
    fn a_new_runs_meta_keeps_one_target_in_the_flat_fields() {
        let t = |region: &str| TargetMeta {
            account: Some(AccountId::parse("222222222222").unwrap()),
            region: Region::parse(region).unwrap(),
            key_arn: None,
            cross_account: true,
            role_arn: None,
            external_id: None,
            lock: None,
        };
        let one = RunMeta::new("r".into(), "p".into(), Region::parse("us-east-1").unwrap(), vec![t("eu-west-1")], 5);
        assert_eq!((one.target_region.as_str(), one.cross_account, one.target_list.len()), ("eu-west-1", true, 0));
        assert_eq!((one.status, one.created_ms, one.updated_ms), (RunStatus::Running, 5, 5));
        let two = RunMeta::new(
            "r".into(),
            "p".into(),
            Region::parse("us-east-1").unwrap(),
            vec![t("eu-west-1"), t("eu-west-2")],
            5,
        );
        assert_eq!(two.targets(), vec![t("eu-west-1"), t("eu-west-2")]);
        assert_eq!(two.target_account.as_ref().map(|a| a.as_str()), Some("222222222222"));
    }

    #[tokio::test]
    async fn newer_format_is_refused() {
        for (store, _dir, _) in stores() {
            let mut r = record("r3", 1);
            r.meta.format_version = FORMAT_VERSION + 1;
            store.create_or_reopen(&r).await.unwrap();
            assert!(matches!(store.load("r3").await, Err(StoreError::NewerFormat { .. })));
        }
    }

    #[tokio::test]
    async fn second_lock_on_a_plan_is_refused_until_the_first_is_dropped() {
        for (store, _dir, _) in stores() {
            let first = store.lock_plan("p").await.unwrap();
            let err = store.lock_plan("p").await.unwrap_err();
            assert!(err.is_lock_conflict(), "{err}");
            assert!(store.lock_plan("other").await.is_ok());
            drop(first);
            assert!(store.lock_plan("p").await.is_ok());
        }
    }

    #[tokio::test]
    async fn latest_of_plan_and_missing_runs() {
        for (store, _dir, _) in stores() {
            let mut a = record("a", 0);
            a.meta.created_ms = 5;
            let mut b = record("b", 0);
            b.meta.created_ms = 9;
            store.create_or_reopen(&b).await.unwrap();
            store.create_or_reopen(&a).await.unwrap();
            assert_eq!(store.latest_of_plan("p").await.unwrap().unwrap().meta.run_id, "b");
            assert!(store.latest_of_plan("q").await.unwrap().is_none());
            assert!(matches!(store.load("zzz").await, Err(StoreError::NoSuchRun(_))));
        }
    }

    #[tokio::test]
    async fn metas_are_read_without_volumes_and_agree_with_whole_runs() {
        for (store, _dir, _) in stores() {
            let mut old = record("old", 3);
            old.meta.created_ms = 5;
            let mut new = record("new", 4);
            new.meta.created_ms = 9;
            let mut other = record("other", 2);
            other.meta.created_ms = 12;
            other.meta.plan = "q".into();
            for r in [&old, &other] {
                store.create_or_reopen(r).await.unwrap();
            }
            // The newest run's meta and a volume change only in its journal.
            let mut j = store.create_or_reopen(&new).await.unwrap();
            new.volumes[2].step = crate::engine::Step::WaitCopy;
            j.volume(2, &new.volumes[2]).unwrap();
            new.meta.status = RunStatus::Failed;
            new.meta.updated_ms = 77;
            j.meta(&new.meta).unwrap();
            j.sync().await.unwrap();
            let metas = store.0.list_meta().await.unwrap();
            let whole: Vec<RunMeta> = store.list().await.unwrap().into_iter().map(|r| r.meta).collect();
            assert_eq!(metas, whole, "{}", store.location());
            assert_eq!(metas.iter().map(|m| m.run_id.as_str()).collect::<Vec<_>>(), ["old", "new", "other"]);
            assert_eq!(store.latest_of_plan("p").await.unwrap(), Some(new.clone()), "{}", store.location());
        }
    }

    #[tokio::test]
    async fn a_removed_run_is_gone_and_the_plan_counts_it() {
        for (store, _dir, objects) in stores() {
            let mut a = record("a", 2);
            a.meta.created_ms = 5;
            let b = record("b", 1);
            let mut j = store.create_or_reopen(&a).await.unwrap();
            a.volumes[0].in_flight = true;
            j.volume(0, &a.volumes[0]).unwrap();
            j.sync().await.unwrap();
            store.create_or_reopen(&b).await.unwrap();
            store.remove("a").await.unwrap();
            assert!(matches!(store.load("a").await, Err(StoreError::NoSuchRun(_))), "{}", store.location());
            assert_eq!(store.list_meta().await.unwrap().iter().map(|m| m.run_id.as_str()).collect::<Vec<_>>(), ["b"]);
            // Removing what is gone already is no error.
            store.remove("a").await.unwrap();
            assert!(store.removed_counts().await.unwrap().is_empty());
            assert_eq!(store.count_removed("p", 1).await.unwrap(), 1);
            assert_eq!(store.count_removed("p", 2).await.unwrap(), 3);
            assert_eq!(store.removed_counts().await.unwrap(), [("p".to_owned(), 3)].into());
            if store.location().starts_with("memory") {
                assert!(!objects.keys().iter().any(|k| k.starts_with("runs/a/")), "{:?}", objects.keys());
            }
        }
    }

    #[tokio::test]
    async fn a_removal_cut_short_leaves_no_run_never_an_older_one() {
        let objects = Arc::new(MemoryObjects::new());
        let store = Store::remote(objects.clone(), LeaseOptions::default());
        let mut r = record("r", 1);
        let mut j = store.create_or_reopen(&r).await.unwrap();
        r.meta.status = RunStatus::Succeeded;
        j.meta(&r.meta).unwrap();
        j.sync().await.unwrap();
        // Removed oldest first: cut short after the checkpoint went.
        objects.delete("runs/r/000000000001.json", None).await.unwrap();
        assert!(matches!(store.load("r").await, Err(StoreError::NoSuchRun(_))));
        assert!(store.list_meta().await.unwrap().is_empty());
        store.remove("r").await.unwrap();
        assert!(objects.keys().is_empty(), "{:?}", objects.keys());
    }

    #[tokio::test]
    async fn a_listing_reads_again_only_the_runs_written_since() {
        let objects = Arc::new(MemoryObjects::new());
        let store = Store::remote(objects.clone(), LeaseOptions::default());
        let (mut a, b) = (record("a", 3), record("b", 3));
        let mut ja = store.create_or_reopen(&a).await.unwrap();
        store.create_or_reopen(&b).await.unwrap();
        let reader = Store::remote(objects.clone(), LeaseOptions::default());
        assert_eq!(reader.list_meta().await.unwrap().len(), 2);
        let gets = objects.stats().gets;
        assert_eq!(reader.list_meta().await.unwrap().len(), 2);
        assert_eq!(objects.stats().gets, gets, "nothing written since: nothing read");
        a.meta.status = RunStatus::Failed;
        ja.meta(&a.meta).unwrap();
        ja.sync().await.unwrap();
        let metas = reader.list_meta().await.unwrap();
        assert_eq!(metas.iter().find(|m| m.run_id == "a").unwrap().status, RunStatus::Failed);
        assert_eq!(objects.stats().gets, gets + 2, "run a's checkpoint and its new batch");
        // The writer's own compaction leaves it nothing to read.
        ja.compact(&a).await.unwrap();
        let gets = objects.stats().gets;
        store.list_meta().await.unwrap();
        store.list_meta().await.unwrap();
        assert!(objects.stats().gets <= gets + 1, "run b at most, once");
    }

    #[tokio::test]
    async fn many_journal_batches_are_read_back_in_order() {
        let objects = Arc::new(MemoryObjects::new());
        let store = Store::remote(objects.clone(), LeaseOptions::default());
        let mut r = record("r", 2);
        let mut j = store.create_or_reopen(&r).await.unwrap();
        for n in 0..100u8 {
            r.volumes[usize::from(n % 2)].progress = Some(n);
            j.volume(usize::from(n % 2), &r.volumes[usize::from(n % 2)]).unwrap();
            j.sync().await.unwrap();
        }
        assert_eq!(objects.keys().len(), 101);
        let before = objects.stats();
        assert_eq!(Store::remote(objects.clone(), LeaseOptions::default()).load("r").await.unwrap(), r);
        assert_eq!(objects.stats().gets - before.gets, 101);
    }

    #[tokio::test]
    async fn a_lease_names_its_holder_and_is_released_on_drop() {
        let objects = Arc::new(MemoryObjects::new());
        let one = Store::remote(objects.clone(), LeaseOptions::default());
        let other = Store::remote(objects.clone(), LeaseOptions::default());
        let lock = one.lock_plan("p").await.unwrap();
        let _journal = one.create_or_reopen(&record("p-run", 0)).await.unwrap();
        let err = other.lock_plan("p").await.unwrap_err();
        let text = err.to_string();
        assert!(err.is_lock_conflict(), "{text}");
        assert!(text.contains(&format!("pid {}", std::process::id())) && text.contains("run p-run"), "{text}");
        assert!(text.contains("lease ends at"), "{text}");
        let before = objects.stats();
        assert!(other.lock_plan("p").await.is_err());
        assert_eq!(objects.stats().puts, before.puts, "a refused lock writes nothing");
        drop(lock);
        one.close().await;
        assert!(!objects.keys().iter().any(|k| k.starts_with("locks/")), "{:?}", objects.keys());
        assert!(other.lock_plan("p").await.is_ok());
    }

    #[tokio::test]
    async fn a_dead_holders_lease_is_taken_over_once_it_ends_and_the_holder_is_fenced() {
        let objects = Arc::new(MemoryObjects::new());
        let backend = Arc::new(RemoteStore::new(objects.clone(), short_lease()));
        let first = Store::from_backend(backend.clone());
        let lock = first.lock_plan("p").await.unwrap();
        let mut r = record("run", 2);
        let mut stale = first.create_or_reopen(&r).await.unwrap();
        r.volumes[0].in_flight = true;
        stale.volume(0, &r.volumes[0]).unwrap();
        stale.sync().await.unwrap();
        // The holder stops renewing (a suspended laptop) but its journal lives on.
        backend.abandon("p");
        drop(lock);
        let second = Store::remote(objects.clone(), short_lease());
        assert!(second.lock_plan("p").await.unwrap_err().is_lock_conflict());
        tokio::time::sleep(Duration::from_millis(500)).await;
        let _lock = second.lock_plan("p").await.unwrap();
        let loaded = second.load("run").await.unwrap();
        assert_eq!(loaded, r);
        let mut fresh = second.create_or_reopen(&loaded).await.unwrap();
        // The first holder wakes up: its next write fails, and writes nothing.
        let keys = objects.keys();
        stale.volume(1, &r.volumes[1]).unwrap();
        let err = stale.sync().await.unwrap_err();
        assert!(err.is_lock_conflict(), "{err}");
        assert_eq!(objects.keys(), keys);
        fresh.meta(&loaded.meta).unwrap();
        fresh.sync().await.unwrap();
        assert_eq!(second.load("run").await.unwrap(), loaded);
    }

    #[tokio::test]
    async fn a_writer_without_a_lease_check_is_still_fenced_by_the_sequence() {
        let objects = Arc::new(MemoryObjects::new());
        let a = Store::remote(objects.clone(), LeaseOptions::default());
        let b = Store::remote(objects.clone(), LeaseOptions::default());
        let r = record("run", 1);
        let mut ja = a.create_or_reopen(&r).await.unwrap();
        let loaded = b.load("run").await.unwrap();
        let _jb = b.create_or_reopen(&loaded).await.unwrap();
        ja.meta(&r.meta).unwrap();
        assert!(matches!(ja.sync().await, Err(StoreError::Fenced { .. })));
        assert!(matches!(ja.compact(&r).await, Err(StoreError::Fenced { .. })));
        // A reopen from a stale read is refused too.
        assert!(matches!(a.create_or_reopen(&r).await, Err(StoreError::Fenced { .. })));
    }

    #[tokio::test]
    async fn a_lease_that_cannot_be_renewed_stops_writes_before_it_ends() {
        let objects = Arc::new(MemoryObjects::new());
        let store = Store::remote(objects.clone(), short_lease());
        let lock = store.lock_plan("p").await.unwrap();
        let mut j = store.create_or_reopen(&record("run", 1)).await.unwrap();
        // Someone deletes the lease by hand: the next renewal finds it gone.
        objects.delete("locks/p.json", None).await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        j.meta(&record("run", 1).meta).unwrap();
        let err = j.sync().await.unwrap_err();
        assert!(matches!(err, StoreError::LeaseLost { .. }), "{err}");
        drop(lock);
    }
}
