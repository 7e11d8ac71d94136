//! [`StoreError`]: why the state of runs could not be read or written, each naming
//! the file or object and what to do.

use std::path::{Path, PathBuf};

use crate::cloud::CloudError;

use super::FORMAT_VERSION;

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
