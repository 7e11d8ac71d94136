//! The on-disk state of runs: versioned, crash-safe and locked.
//!
//! Layout under the state dir:
//!
//! ```text
//! runs/<run-id>/checkpoint.json   the whole run, replaced atomically (temp, fsync, rename)
//! runs/<run-id>/journal.jsonl     records appended since that file was written, fsynced
//! locks/<plan>.lock               held (flock) by the one process running that plan
//! ```
//!
//! A run is the compacted checkpoint plus its journal replayed in order. Appending
//! a line and fsyncing it is cheap however many volumes a run has, so the runner can
//! record an intent before every call that changes AWS; the journal is folded back
//! into the checkpoint when it grows. A torn last line (a crash mid-append) is
//! ignored: the call it announced was never issued, because calls are issued only
//! after the append is synced.
//!
//! Architecture Invariant: nothing here ever holds a credential; records are plan
//! data, resource ids and AWS messages only.

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::engine::VolumeRun;

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
}

impl RunStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Running => "running",
            RunStatus::Succeeded => "succeeded",
            RunStatus::Failed => "failed",
            RunStatus::Interrupted => "interrupted",
        }
    }
}

/// The key-policy statement a run added (or found already there).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantRecord {
    pub key_arn: String,
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
    pub source_account: Option<String>,
    pub target_account: Option<String>,
    pub source_region: String,
    pub target_region: String,
    #[serde(default)]
    pub cross_account: bool,
    pub source_key_arn: Option<String>,
    pub target_key_arn: Option<String>,
    /// The role assumed in the target account, for a cross-account run.
    #[serde(default)]
    pub target_role_arn: Option<String>,
    /// The external id passed when assuming it (an identifier, not a secret, in AWS's
    /// words), so `cleanup` can assume the role without the plan.
    #[serde(default)]
    pub target_external_id: Option<String>,
    pub grant: Option<GrantRecord>,
    /// True once the run has been simulated rather than run against AWS.
    #[serde(default)]
    pub simulated: bool,
    /// Set by `snapferry cleanup`.
    #[serde(default)]
    pub cleaned_up: bool,
}

/// A whole run: what `checkpoint.json` holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunRecord {
    #[serde(flatten)]
    pub meta: RunMeta,
    pub volumes: Vec<VolumeRun>,
}

/// One journal line.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Entry {
    Meta(RunMeta),
    Volume { index: usize, state: VolumeRun },
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
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io { path: path.to_owned(), source }
}

/// The state dir.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

/// An exclusive hold on one plan; released when dropped (and by the kernel when the
/// process dies, so a kill -9 never leaves a stale lock).
#[derive(Debug)]
pub struct PlanLock {
    _file: File,
}

impl Store {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Store { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn run_dir(&self, run_id: &str) -> PathBuf {
        self.root.join("runs").join(run_id)
    }

    /// Takes the plan's lock without waiting.
    pub fn lock_plan(&self, plan: &str) -> Result<PlanLock, StoreError> {
        let dir = self.root.join("locks");
        fs::create_dir_all(&dir).map_err(io(&dir))?;
        let path = dir.join(format!("{plan}.lock"));
        let file = OpenOptions::new().create(true).truncate(false).write(true).open(&path).map_err(io(&path))?;
        match file.try_lock() {
            Ok(()) => Ok(PlanLock { _file: file }),
            Err(fs::TryLockError::WouldBlock) => Err(StoreError::Locked { plan: plan.to_owned(), path }),
            Err(fs::TryLockError::Error(e)) => Err(io(&path)(e)),
        }
    }

    /// Creates a run on disk and returns the journal to record it with.
    pub fn create(&self, record: &RunRecord) -> Result<Journal, StoreError> {
        let dir = self.run_dir(&record.meta.run_id);
        fs::create_dir_all(&dir).map_err(io(&dir))?;
        write_atomic(&dir.join("checkpoint.json"), record)?;
        let journal_path = dir.join("journal.jsonl");
        let _ = fs::remove_file(&journal_path);
        Journal::open(dir, record.volumes.len())
    }

    /// Reads a run: the checkpoint with its journal replayed.
    pub fn load(&self, run_id: &str) -> Result<RunRecord, StoreError> {
        let dir = self.run_dir(run_id);
        let path = dir.join("checkpoint.json");
        let text = match fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(StoreError::NoSuchRun(run_id.to_owned())),
            Err(e) => return Err(io(&path)(e)),
        };
        let value: serde_json::Value = serde_json::from_slice(&text)
            .map_err(|e| StoreError::Corrupt { path: path.clone(), message: e.to_string() })?;
        let found = value.get("format_version").and_then(|v| v.as_u64()).unwrap_or(0) as u32;
        if found > FORMAT_VERSION {
            return Err(StoreError::NewerFormat { path, found });
        }
        let mut record: RunRecord = serde_json::from_value(value)
            .map_err(|e| StoreError::Corrupt { path: path.clone(), message: e.to_string() })?;
        let jpath = dir.join("journal.jsonl");
        if let Ok(f) = File::open(&jpath) {
            for line in BufReader::new(f).lines() {
                let Ok(line) = line else { break };
                // A line that does not parse can only be the torn last one.
                let Ok(entry) = serde_json::from_str::<Entry>(&line) else { break };
                match entry {
                    Entry::Meta(m) => record.meta = m,
                    Entry::Volume { index, state } => {
                        if index < record.volumes.len() {
                            record.volumes[index] = state;
                        } else if index == record.volumes.len() {
                            record.volumes.push(state);
                        }
                    }
                }
            }
        }
        Ok(record)
    }

    /// Opens a loaded run for appending; folds its journal into a fresh checkpoint.
    pub fn reopen(&self, record: &RunRecord) -> Result<Journal, StoreError> {
        let dir = self.run_dir(&record.meta.run_id);
        write_atomic(&dir.join("checkpoint.json"), record)?;
        let jpath = dir.join("journal.jsonl");
        match fs::remove_file(&jpath) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(&jpath)(e)),
        }
        Journal::open(dir, record.volumes.len())
    }

    /// Opens a run for appending: creates it on disk if it is new, else folds its
    /// journal into a fresh checkpoint.
    pub fn create_or_reopen(&self, record: &RunRecord) -> Result<Journal, StoreError> {
        if self.run_dir(&record.meta.run_id).join("checkpoint.json").exists() {
            self.reopen(record)
        } else {
            self.create(record)
        }
    }

    /// Every run id in the state dir, oldest first by creation time.
    pub fn list(&self) -> Result<Vec<RunRecord>, StoreError> {
        let dir = self.root.join("runs");
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
            Err(e) => return Err(io(&dir)(e)),
        };
        let mut runs = vec![];
        for e in entries {
            let e = e.map_err(io(&dir))?;
            if let Some(name) = e.file_name().to_str() {
                match self.load(name) {
                    Ok(r) => runs.push(r),
                    Err(StoreError::NoSuchRun(_)) => {}
                    Err(err) => return Err(err),
                }
            }
        }
        runs.sort_by(|a, b| (a.meta.created_ms, &a.meta.run_id).cmp(&(b.meta.created_ms, &b.meta.run_id)));
        Ok(runs)
    }

    /// The newest run of a plan, if any.
    pub fn latest_of_plan(&self, plan: &str) -> Result<Option<RunRecord>, StoreError> {
        Ok(self.list()?.into_iter().rfind(|r| r.meta.plan == plan))
    }
}

/// The append side of one run's checkpoint.
#[derive(Debug)]
pub struct Journal {
    dir: PathBuf,
    file: File,
    lines: usize,
    /// Fold into checkpoint.json past this many lines.
    compact_at: usize,
    dirty: bool,
}

impl Journal {
    fn open(dir: PathBuf, volumes: usize) -> Result<Self, StoreError> {
        let path = dir.join("journal.jsonl");
        let file = OpenOptions::new().create(true).append(true).open(&path).map_err(io(&path))?;
        sync_dir(&dir)?;
        Ok(Journal { dir, file, lines: 0, compact_at: (volumes * 8).max(2048), dirty: false })
    }

    fn write_entry(&mut self, entry: &Entry) -> Result<(), StoreError> {
        let mut line = serde_json::to_vec(entry)
            .map_err(|e| StoreError::Corrupt { path: self.dir.clone(), message: e.to_string() })?;
        line.push(b'\n');
        let path = self.dir.join("journal.jsonl");
        self.file.write_all(&line).map_err(io(&path))?;
        self.lines += 1;
        self.dirty = true;
        Ok(())
    }

    /// Records a volume's new state (durable after the next [`Journal::sync`]).
    pub fn volume(&mut self, index: usize, state: &VolumeRun) -> Result<(), StoreError> {
        self.write_entry(&Entry::Volume { index, state: state.clone() })
    }

    /// Records the run's new meta (durable after the next [`Journal::sync`]).
    pub fn meta(&mut self, meta: &RunMeta) -> Result<(), StoreError> {
        self.write_entry(&Entry::Meta(meta.clone()))
    }

    /// Makes everything recorded so far durable.
    pub fn sync(&mut self) -> Result<(), StoreError> {
        if self.dirty {
            let path = self.dir.join("journal.jsonl");
            self.file.sync_data().map_err(io(&path))?;
            self.dirty = false;
        }
        Ok(())
    }

    /// True when the journal has grown enough to be folded into the checkpoint.
    pub fn wants_compaction(&self) -> bool {
        self.lines >= self.compact_at
    }

    /// Writes the whole run as the new checkpoint and starts an empty journal.
    pub fn compact(&mut self, record: &RunRecord) -> Result<(), StoreError> {
        self.sync()?;
        write_atomic(&self.dir.join("checkpoint.json"), record)?;
        let path = self.dir.join("journal.jsonl");
        // Truncate only after the checkpoint that contains every line is durable.
        self.file = OpenOptions::new().create(true).write(true).truncate(true).open(&path).map_err(io(&path))?;
        self.file.sync_all().map_err(io(&path))?;
        self.file = OpenOptions::new().append(true).open(&path).map_err(io(&path))?;
        self.lines = 0;
        Ok(())
    }
}

/// Writes `value` as JSON to `path` so that a crash leaves either the old file or the
/// new one: temp file in the same dir, fsync, rename, fsync the dir.
pub fn write_atomic<T: Serialize>(path: &Path, value: &T) -> Result<(), StoreError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(".{}.tmp", path.file_name().and_then(|n| n.to_str()).unwrap_or("checkpoint")));
    let bytes = serde_json::to_vec_pretty(value)
        .map_err(|e| StoreError::Corrupt { path: path.to_owned(), message: e.to_string() })?;
    let mut f = File::create(&tmp).map_err(io(&tmp))?;
    f.write_all(&bytes).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    drop(f);
    fs::rename(&tmp, path).map_err(io(path))?;
    sync_dir(dir)
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::VolumeId;

    fn record(run_id: &str, n: usize) -> RunRecord {
        RunRecord {
            meta: RunMeta {
                format_version: FORMAT_VERSION,
                run_id: run_id.into(),
                plan: "p".into(),
                plan_file: "p.yaml".into(),
                status: RunStatus::Running,
                created_ms: 1,
                updated_ms: 1,
                finished_ms: None,
                source_account: None,
                target_account: None,
                source_region: "us-east-1".into(),
                target_region: "eu-west-1".into(),
                cross_account: true,
                source_key_arn: None,
                target_key_arn: None,
                target_role_arn: None,
                target_external_id: None,
                grant: None,
                simulated: true,
                cleaned_up: false,
            },
            volumes: (0..n).map(|i| VolumeRun::new(VolumeId::parse(&format!("vol-{i:017x}")).unwrap())).collect(),
        }
    }

    #[test]
    fn journal_replays_over_checkpoint_and_ignores_a_torn_line() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        let mut r = record("r1", 2);
        let mut j = store.create(&r).unwrap();
        r.volumes[1].step = crate::engine::Step::WaitSnapshot;
        j.volume(1, &r.volumes[1]).unwrap();
        r.meta.status = RunStatus::Failed;
        j.meta(&r.meta).unwrap();
        j.sync().unwrap();
        let mut f = OpenOptions::new().append(true).open(dir.path().join("runs/r1/journal.jsonl")).unwrap();
        f.write_all(b"{\"volume\":{\"index\":0,\"sta").unwrap();
        let back = store.load("r1").unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn compaction_keeps_the_same_run() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        let mut r = record("r2", 3);
        let mut j = store.create(&r).unwrap();
        for i in 0..3 {
            r.volumes[i].in_flight = true;
            j.volume(i, &r.volumes[i]).unwrap();
        }
        j.compact(&r).unwrap();
        assert_eq!(fs::metadata(dir.path().join("runs/r2/journal.jsonl")).unwrap().len(), 0);
        r.volumes[2].in_flight = false;
        j.volume(2, &r.volumes[2]).unwrap();
        j.sync().unwrap();
        assert_eq!(store.load("r2").unwrap(), r);
    }

    #[test]
    fn newer_format_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        let mut r = record("r3", 1);
        r.meta.format_version = FORMAT_VERSION + 1;
        store.create(&r).unwrap();
        assert!(matches!(store.load("r3"), Err(StoreError::NewerFormat { .. })));
    }

    #[test]
    fn second_lock_on_a_plan_is_refused_until_the_first_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        let first = store.lock_plan("p").unwrap();
        assert!(matches!(store.lock_plan("p"), Err(StoreError::Locked { .. })));
        assert!(store.lock_plan("other").is_ok());
        drop(first);
        assert!(store.lock_plan("p").is_ok());
    }

    #[test]
    fn latest_of_plan_and_missing_runs() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        let mut a = record("a", 0);
        a.meta.created_ms = 5;
        let mut b = record("b", 0);
        b.meta.created_ms = 9;
        store.create(&a).unwrap();
        store.create(&b).unwrap();
        assert_eq!(store.latest_of_plan("p").unwrap().unwrap().meta.run_id, "b");
        assert!(store.latest_of_plan("q").unwrap().is_none());
        assert!(matches!(store.load("zzz"), Err(StoreError::NoSuchRun(_))));
    }
}
