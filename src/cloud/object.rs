//! An object store in the shape of S3, in domain types: whole objects by key, with
//! S3's conditional writes (create only if absent, replace or delete only the version
//! read). The state store builds its lease and its journal on this; `aws::s3` is the
//! S3 implementation and `checkpoint::memory` an in-memory one with the same rules.
//!
//! A write refused by its condition is a [`CloudError`] whose code is
//! `PreconditionFailed` (HTTP 412) or `ConditionalRequestConflict` (HTTP 409, a
//! concurrent conflicting write): see [`refused`].

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;

use super::{CloudError, CloudResult, ErrorKind};

/// An object and the entity tag of the version read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Object {
    pub bytes: Vec<u8>,
    pub etag: String,
}

/// The condition of a write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Condition {
    /// Create only: `If-None-Match: *`.
    Absent,
    /// Replace only this version: `If-Match: <etag>`.
    Matches(String),
}

/// S3's answer to a write whose condition does not hold (HTTP 412).
pub const PRECONDITION_FAILED: &str = "PreconditionFailed";
/// S3's answer when a conflicting conditional write was under way (HTTP 409): read
/// again and decide again.
pub const CONDITIONAL_CONFLICT: &str = "ConditionalRequestConflict";

/// True when a conditional write was refused because someone else wrote first.
pub fn refused(e: &CloudError) -> bool {
    matches!(e.code.as_deref(), Some(PRECONDITION_FAILED | CONDITIONAL_CONFLICT))
}

/// The refusal of a conditional write, as [`refused`] recognises it.
pub fn precondition_failed(action: &str, key: &str) -> CloudError {
    CloudError::new(ErrorKind::InvalidState, PRECONDITION_FAILED, format!("{action} of {key}: precondition failed"))
}

/// Requests made and bytes moved, to keep the cost of the state visible.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct ObjectStats {
    pub puts: u64,
    pub gets: u64,
    pub lists: u64,
    pub deletes: u64,
    pub bytes_written: u64,
    pub bytes_read: u64,
}

impl fmt::Display for ObjectStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} PUTs, {} GETs, {} LISTs, {} DELETEs, {} bytes written, {} bytes read",
            self.puts, self.gets, self.lists, self.deletes, self.bytes_written, self.bytes_read
        )
    }
}

/// Counters behind [`ObjectStats`], shared by the implementations.
#[derive(Debug, Default)]
pub struct Counters {
    puts: AtomicU64,
    gets: AtomicU64,
    lists: AtomicU64,
    deletes: AtomicU64,
    bytes_written: AtomicU64,
    bytes_read: AtomicU64,
}

impl Counters {
    pub fn put(&self, bytes: usize) {
        self.puts.fetch_add(1, Ordering::Relaxed);
        self.bytes_written.fetch_add(bytes as u64, Ordering::Relaxed);
    }
    pub fn get(&self, bytes: usize) {
        self.gets.fetch_add(1, Ordering::Relaxed);
        self.bytes_read.fetch_add(bytes as u64, Ordering::Relaxed);
    }
    pub fn list(&self) {
        self.lists.fetch_add(1, Ordering::Relaxed);
    }
    pub fn delete(&self) {
        self.deletes.fetch_add(1, Ordering::Relaxed);
    }
    pub fn snapshot(&self) -> ObjectStats {
        ObjectStats {
            puts: self.puts.load(Ordering::Relaxed),
            gets: self.gets.load(Ordering::Relaxed),
            lists: self.lists.load(Ordering::Relaxed),
            deletes: self.deletes.load(Ordering::Relaxed),
            bytes_written: self.bytes_written.load(Ordering::Relaxed),
            bytes_read: self.bytes_read.load(Ordering::Relaxed),
        }
    }
}

/// Objects under one prefix of one bucket; keys are relative to that prefix.
#[async_trait]
pub trait ObjectStore: Send + Sync + fmt::Debug {
    /// Where the objects live, for messages: `s3://BUCKET/PREFIX`.
    fn location(&self) -> String;
    /// The object, or `None` when there is none.
    async fn get(&self, key: &str) -> CloudResult<Option<Object>>;
    /// Writes an object if `condition` holds; returns the new entity tag. Replacing an
    /// object that is gone is refused like replacing one that changed.
    async fn put(&self, key: &str, bytes: Vec<u8>, condition: Condition) -> CloudResult<String>;
    /// Deletes an object (only that version, with `if_match`). Deleting what is not
    /// there succeeds.
    async fn delete(&self, key: &str, if_match: Option<&str>) -> CloudResult<()>;
    /// Every key that starts with `prefix`, in lexicographic order.
    async fn list(&self, prefix: &str) -> CloudResult<Vec<String>>;
    /// What this store has done so far.
    fn stats(&self) -> ObjectStats;
}
