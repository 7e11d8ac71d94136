//! The async runner: takes actions from the step machines, performs them against a
//! [`Cloud`], and checkpoints every state the machines return.
//!
//! One run goes: lock the plan, find the run to resume or start one, preflight
//! (read-only checks of identities, keys and volumes), grant the target account use
//! of the source key, then drive every volume's machine to `Done` or `Failed`.
//!
//! The driving loop asks every volume without a call under way for its next action;
//! records the intent of every call that changes AWS and syncs the journal once;
//! starts the calls (polls batched per account and region); and applies each outcome
//! as its call ends, syncing again. Copies wait for a slot under the per-destination
//! limit. When nothing is due, it sleeps until the next poll or retry is due, on the
//! [`Clock`] (virtual under simulation).
//!
//! Architecture Invariant: every call that changes AWS is preceded by a durable intent
//! (`in_flight`) and followed by a durable outcome; an intent without an outcome is
//! reconciled by looking the resource up by its tags before it is issued again.

mod act;
pub mod cleanup;
pub mod preflight;
mod report;
pub mod retention;
mod retry;
mod runner;

use std::sync::Arc;

pub use cleanup::cleanup;
pub use preflight::preflight;
pub use preflight::{PreflightError, Resolved, SourceVolume};
pub use report::{RunReport, VolumeReport};
pub use runner::{Progress, RunConfig, Tally, run};

use crate::checkpoint::StoreError;
use crate::clock::Clock;
use crate::cloud::{Cloud, CloudError};

/// What a run needs from the outside world.
#[derive(Clone)]
pub struct Env {
    pub cloud: Arc<dyn Cloud>,
    pub clock: Arc<dyn Clock>,
    pub store: crate::checkpoint::Store,
}

/// Why a run could not be carried out at all (as opposed to volumes failing).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("preflight found {} problem(s); nothing was changed:\n{}", .0.len(), .0.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
    Preflight(Vec<PreflightError>),
    #[error("{what}: {source}")]
    Cloud { what: String, source: CloudError },
    #[error("{0}")]
    Other(String),
}

impl RunError {
    /// The process exit code of the contract for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            RunError::Store(e) if e.is_lock_conflict() => 3,
            RunError::Preflight(_) => 2,
            _ => 1,
        }
    }
}
