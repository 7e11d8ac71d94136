//! The state in a local directory (the default `.snapferry`).
//!
//! ```text
//! runs/<run-id>/checkpoint.json   the whole run, replaced atomically (temp, fsync, rename)
//! runs/<run-id>/journal.jsonl     records written since that file was, fdatasynced
//! locks/<plan>.lock               held (flock) by the one process running that plan
//! plans/<plan>.json               the plan's index: runs removed by `options.history`
//! ```
//!
//! Only its owner can read it: directories are created 0700 and files 0600, and no
//! file is opened through a symlink ([`crate::private_fs`]).
//! A run is removed by renaming its directory to a dot name first (one atomic step,
//! names starting with a dot are no runs), then deleting that.
//!
//! Writing a batch of lines and syncing it is cheap however many volumes a run has.
//! The journal grows in zero-filled steps ahead of its records, so a sync flushes the
//! new records alone, not the file's size as well: one write to the disk, not two.
//! Reading stops at the first line that does not parse: the zeros past the last
//! record, or a torn last line (a crash mid-write), whose calls were never issued,
//! because calls are issued only after the write is synced.

use std::fs::{self, File};
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use async_trait::async_trait;

use crate::private_fs;

use super::backend::{PlanLock, StateStore};
use super::codec::{parse_checkpoint, parse_index, sync_dir, write_atomic};
use super::error::{StoreError, io};
use super::journal::{Journal, JournalSink, meta_of, replay};
use super::{FORMAT_VERSION, PlanIndex, RunMeta, RunRecord};

/// Times a plan's lock is asked for again before it counts as held, and the pause
/// between: a lock just released can stay held for the moment a forked child takes
/// to exec.
const LOCK_TRIES: u32 = 10;
const LOCK_RETRY_MS: u64 = 50;

/// The state dir.
#[derive(Debug, Clone)]
pub struct LocalStore {
    root: PathBuf,
}

impl LocalStore {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        LocalStore { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn run_dir(&self, run_id: &str) -> PathBuf {
        self.root.join("runs").join(run_id)
    }

    /// The names under `runs/`: the runs' ids.
    fn run_names(&self) -> Result<Vec<String>, StoreError> {
        let dir = self.root.join("runs");
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
            Err(e) => return Err(io(&dir)(e)),
        };
        let mut names = vec![];
        for e in entries {
            if let Some(name) = e.map_err(io(&dir))?.file_name().to_str()
                && !name.starts_with('.')
            {
                names.push(name.to_owned());
            }
        }
        Ok(names)
    }

    /// Creates a run on disk and returns the journal to record it with.
    fn create(&self, record: &RunRecord) -> Result<Journal, StoreError> {
        let dir = self.run_dir(&record.meta.run_id);
        private_fs::create_dir_all(&dir).map_err(io(&dir))?;
        write_atomic(&dir.join("checkpoint.json"), record)?;
        let journal_path = dir.join("journal.jsonl");
        let _ = fs::remove_file(&journal_path);
        LocalJournal::open(dir, record.volumes.len())
    }

    /// Opens a loaded run for appending; folds its journal into a fresh checkpoint.
    fn reopen(&self, record: &RunRecord) -> Result<Journal, StoreError> {
        let dir = self.run_dir(&record.meta.run_id);
        write_atomic(&dir.join("checkpoint.json"), record)?;
        let jpath = dir.join("journal.jsonl");
        match fs::remove_file(&jpath) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(&jpath)(e)),
        }
        LocalJournal::open(dir, record.volumes.len())
    }
}

#[async_trait]
impl StateStore for LocalStore {
    fn location(&self) -> String {
        self.root.display().to_string()
    }

    async fn lock_plan(&self, plan: &str) -> Result<PlanLock, StoreError> {
        let dir = self.root.join("locks");
        private_fs::create_dir_all(&dir).map_err(io(&dir))?;
        let path = dir.join(format!("{plan}.lock"));
        let file = private_fs::open_in_place(&path, false).map_err(io(&path))?;
        let mut tries = 0;
        loop {
            match file.try_lock() {
                // The kernel drops the lock with the file, or with the process.
                Ok(()) => return Ok(PlanLock::new(file)),
                // A lock released a moment ago can still be held by a child that a
                // fork in another thread gave a copy of the descriptor, until it execs:
                // ask again a few times before saying another process holds it.
                Err(fs::TryLockError::WouldBlock) if tries < LOCK_TRIES => {
                    tries += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(LOCK_RETRY_MS)).await;
                }
                Err(fs::TryLockError::WouldBlock) => return Err(StoreError::Locked { plan: plan.to_owned(), path }),
                Err(fs::TryLockError::Error(e)) => return Err(io(&path)(e)),
            }
        }
    }

    async fn load(&self, run_id: &str) -> Result<RunRecord, StoreError> {
        let dir = self.run_dir(run_id);
        let path = dir.join("checkpoint.json");
        let text = match fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(StoreError::NoSuchRun(run_id.to_owned())),
            Err(e) => return Err(io(&path)(e)),
        };
        let mut record = parse_checkpoint(&text, &path)?;
        if let Ok(lines) = fs::read(dir.join("journal.jsonl")) {
            replay(&mut record, &lines);
        }
        Ok(record)
    }

    async fn list(&self) -> Result<Vec<RunRecord>, StoreError> {
        let mut runs = vec![];
        for name in self.run_names()? {
            runs.extend(self.load_listed(&name).await?);
        }
        runs.sort_by(|a, b| (a.meta.created_ms, &a.meta.run_id).cmp(&(b.meta.created_ms, &b.meta.run_id)));
        Ok(runs)
    }

    async fn list_meta(&self) -> Result<Vec<RunMeta>, StoreError> {
        let mut metas = vec![];
        for name in self.run_names()? {
            let dir = self.run_dir(&name);
            let path = dir.join("checkpoint.json");
            let checkpoint = match fs::read(&path) {
                Ok(t) => t,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io(&path)(e)),
            };
            let journal = fs::read(dir.join("journal.jsonl")).unwrap_or_default();
            metas.push(meta_of(&checkpoint, &journal, &path)?);
        }
        metas.sort_by(|a, b| (a.created_ms, &a.run_id).cmp(&(b.created_ms, &b.run_id)));
        Ok(metas)
    }

    async fn create_or_reopen(&self, record: &RunRecord) -> Result<Journal, StoreError> {
        if self.run_dir(&record.meta.run_id).join("checkpoint.json").exists() {
            self.reopen(record)
        } else {
            self.create(record)
        }
    }

    async fn remove(&self, run_id: &str) -> Result<(), StoreError> {
        let dir = self.run_dir(run_id);
        let runs = self.root.join("runs");
        let gone = runs.join(format!(".removed-{run_id}"));
        // What an earlier removal cut short left.
        let _ = fs::remove_dir_all(&gone);
        match fs::rename(&dir, &gone) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io(&dir)(e)),
        }
        sync_dir(&runs)?;
        fs::remove_dir_all(&gone).map_err(io(&gone))
    }

    async fn plan_indexes(&self) -> Result<Vec<PlanIndex>, StoreError> {
        let dir = self.root.join("plans");
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
            Err(e) => return Err(io(&dir)(e)),
        };
        let mut out = vec![];
        for e in entries {
            let path = e.map_err(io(&dir))?.path();
            if path.extension().is_some_and(|x| x == "json") {
                let bytes = fs::read(&path).map_err(io(&path))?;
                out.push(parse_index(&bytes, &path)?);
            }
        }
        out.sort_by(|a, b| a.plan.cmp(&b.plan));
        Ok(out)
    }

    async fn count_removed(&self, plan: &str, runs: u64) -> Result<u64, StoreError> {
        let dir = self.root.join("plans");
        fs::create_dir_all(&dir).map_err(io(&dir))?;
        let path = dir.join(format!("{plan}.json"));
        let mut index = match fs::read(&path) {
            Ok(bytes) => parse_index(&bytes, &path)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                PlanIndex { format_version: FORMAT_VERSION, plan: plan.to_owned(), removed: 0 }
            }
            Err(e) => return Err(io(&path)(e)),
        };
        index.removed += runs;
        write_atomic(&path, &index)?;
        Ok(index.removed)
    }
}

/// The journal file of one run.
#[derive(Debug)]
struct LocalJournal {
    dir: PathBuf,
    file: File,
    /// Where the next record goes: the end of the last one.
    end: u64,
    /// How far the file is filled with zeros ahead of `end`.
    allocated: u64,
    lines: usize,
    /// Fold into checkpoint.json past this many lines.
    compact_at: usize,
}

/// The journal grows by at least this much at a time.
const GROWTH: u64 = 1 << 20;

impl LocalJournal {
    fn open(dir: PathBuf, volumes: usize) -> Result<Journal, StoreError> {
        let path = dir.join("journal.jsonl");
        let file = private_fs::open_in_place(&path, true).map_err(io(&path))?;
        sync_dir(&dir)?;
        Ok(Journal::new(LocalJournal {
            dir,
            file,
            end: 0,
            allocated: 0,
            lines: 0,
            compact_at: (volumes * 8).max(2048),
        }))
    }

    /// Fills the file with zeros up to at least `need` bytes, durably (the size is
    /// metadata, synced with it).
    fn grow(&mut self, need: u64, path: &Path) -> Result<(), StoreError> {
        let to = need.max(self.allocated + GROWTH);
        let zeros = vec![0u8; (to - self.allocated) as usize];
        self.file.seek(SeekFrom::Start(self.allocated)).map_err(io(path))?;
        self.file.write_all(&zeros).map_err(io(path))?;
        self.file.sync_all().map_err(io(path))?;
        self.allocated = to;
        Ok(())
    }
}

#[async_trait]
impl JournalSink for LocalJournal {
    async fn append(&mut self, batch: &[u8], lines: usize) -> Result<(), StoreError> {
        let path = self.dir.join("journal.jsonl");
        let need = self.end + batch.len() as u64;
        if need > self.allocated {
            self.grow(need, &path)?;
        }
        self.file.seek(SeekFrom::Start(self.end)).map_err(io(&path))?;
        self.file.write_all(batch).map_err(io(&path))?;
        self.file.sync_data().map_err(io(&path))?;
        self.end = need;
        self.lines += lines;
        Ok(())
    }

    async fn compact(&mut self, record: &RunRecord) -> Result<(), StoreError> {
        write_atomic(&self.dir.join("checkpoint.json"), record)?;
        let path = self.dir.join("journal.jsonl");
        // Truncate only after the checkpoint that contains every line is durable: no
        // record of the old journal may be read over the new checkpoint.
        self.file.set_len(0).map_err(io(&path))?;
        self.file.sync_all().map_err(io(&path))?;
        self.end = 0;
        self.allocated = 0;
        self.lines = 0;
        Ok(())
    }

    fn wants_compaction(&self) -> bool {
        self.lines >= self.compact_at
    }
}
