//! The exit-code table of the contract, and the one mapping from typed results (a run's
//! status, a run error, a state-dir error) onto it. Nothing else in snapferry picks an
//! exit code.
//!
//! | code | meaning |
//! |---|---|
//! | 0 | success (dry-run: nothing wrong found) |
//! | 1 | the run failed (an AWS error, a snapshot in `error`, a timeout); resumable |
//! | 2 | invalid plan or usage, or a preflight problem; nothing was changed in AWS |
//! | 3 | another run of this plan holds the lock |
//! | 4 | stopped at `--max-duration` with copies still under way in AWS; run again to carry on |
//! | 130 | interrupted (SIGINT/SIGTERM); checkpoint saved, resumable |

use crate::checkpoint::{RunStatus, StoreError};
use crate::exec::RunError;

/// Success (dry-run: nothing wrong found).
pub const OK: u8 = 0;
/// The run failed (an AWS error, a snapshot in `error`, a timeout); resumable.
pub const FAILED: u8 = 1;
/// Invalid plan or usage, or a preflight problem; nothing was changed in AWS.
pub const USAGE: u8 = 2;
/// Another run of this plan holds the lock.
pub const LOCKED: u8 = 3;
/// Stopped at `--max-duration` with copies still under way in AWS; run again to carry on.
pub const STOPPED: u8 = 4;
/// Interrupted by SIGINT or SIGTERM; the checkpoint is saved and the run resumes.
pub const INTERRUPTED: u8 = 130;

/// The exit code of a run that ended with a report.
pub fn of_status(status: RunStatus) -> u8 {
    match status {
        RunStatus::Succeeded => OK,
        RunStatus::Interrupted => INTERRUPTED,
        RunStatus::Stopped => STOPPED,
        RunStatus::Failed | RunStatus::Running => FAILED,
    }
}

/// The exit code of `verify`: 0 when every copy matched, 1 when any differs or could
/// not be verified.
pub fn of_verify(all_matched: bool) -> u8 {
    if all_matched { OK } else { FAILED }
}

/// The exit code of a run that could not be carried out at all.
pub fn of_run_error(e: &RunError) -> u8 {
    match e {
        RunError::Store(s) => of_store_error(s),
        RunError::Preflight(_) | RunError::Usage(_) | RunError::PlanChanged { .. } => USAGE,
        RunError::Cloud { .. } | RunError::Credentials { .. } | RunError::Engine(_) | RunError::Other(_) => FAILED,
    }
}

/// The exit code of a state-dir error.
pub fn of_store_error(e: &StoreError) -> u8 {
    match e {
        e if e.is_lock_conflict() => LOCKED,
        StoreError::NoSuchRun(_) => USAGE,
        StoreError::Io { .. }
        | StoreError::Corrupt { .. }
        | StoreError::NewerFormat { .. }
        | StoreError::Locked { .. }
        | StoreError::Leased { .. }
        | StoreError::LeaseLost { .. }
        | StoreError::Fenced { .. }
        | StoreError::Remote { .. } => FAILED,
    }
}
