//! A run's journal: the records written since its checkpoint, one JSON line each
//! ([`Entry`]), buffered by [`Journal`] and made durable in one write per
//! [`Journal::sync`] through the store's [`JournalSink`]; [`replay`] folds them over
//! the checkpoint when a run is read, [`meta_of`] reads a run's meta alone.

use std::borrow::Cow;
use std::fmt;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::engine::VolumeRun;

use super::codec::parse_versioned;
use super::error::StoreError;
use super::{RunMeta, RunRecord};

/// One journal line: borrowed when written, owned when read back.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Entry<'a> {
    Meta(Cow<'a, RunMeta>),
    Volume { index: usize, state: Cow<'a, VolumeRun> },
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
