//! The exit-code table of the contract, and the one mapping onto it: from how a command
//! ended ([`Done`]) or what stopped it ([`Failure`], which carries the library's typed
//! errors: a run error, a state-dir error). Nothing else in snapferry picks an exit
//! code (the tidy test holds the constants and numeric codes to this file).
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
use crate::cloud::ErrorKind;
use crate::exec::RunError;

use super::failure::Failure;

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

/// How a command that ran to its end ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Done {
    /// It did what was asked (validate, schema, status, envelope, a clean dry-run).
    Ok,
    /// A run ended with a report of this status.
    Run(RunStatus),
    /// `verify` compared the copies: whether every one matched.
    Verified { all_matched: bool },
    /// `cleanup` went through the run: whether nothing was left that it could not delete.
    CleanedUp { complete: bool },
}

/// The exit code of a command that ran to its end.
pub fn of_done(done: Done) -> u8 {
    match done {
        Done::Ok => OK,
        Done::Run(status) => of_status(status),
        Done::Verified { all_matched } => of_verify(all_matched),
        Done::CleanedUp { complete: true } => OK,
        Done::CleanedUp { complete: false } => FAILED,
    }
}

/// The exit code of a command's result.
pub fn of_result(result: &Result<Done, Failure>) -> u8 {
    match result {
        Ok(done) => of_done(*done),
        Err(f) => of_failure(f),
    }
}

/// The exit code of a command line clap refused (`refused`), or of `--help` and
/// `--version`, which clap answers itself.
pub fn of_parse_error(refused: bool) -> u8 {
    if refused { USAGE } else { OK }
}

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

/// The exit code of a command's failure.
pub fn of_failure(f: &Failure) -> u8 {
    match f {
        Failure::Usage(_)
        | Failure::UnreadablePlan(_)
        | Failure::InvalidPlan { .. }
        | Failure::NoSuchRun(_)
        | Failure::NothingToVerify(_)
        | Failure::WouldStop { .. } => USAGE,
        // What the SDK refuses before sending anything (a clear-text endpoint from an
        // endpoint variable, a bad session name) is usage; anything else is AWS's answer.
        Failure::Setup { source, .. } if source.kind == ErrorKind::Invalid => USAGE,
        Failure::Setup { .. }
        | Failure::Aws(_)
        | Failure::File(_)
        | Failure::Envelope(_)
        | Failure::DamagedState(_)
        | Failure::Internal(_) => FAILED,
        Failure::Interrupted(_) => INTERRUPTED,
        Failure::Store(e) => of_store_error(e),
        Failure::Run(e) => of_run_error(e),
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cloud::CloudError;

    #[test]
    fn each_failure_has_the_code_of_the_contract() {
        let text = || "x".to_owned();
        assert_eq!(of_failure(&Failure::Usage(text())), 2);
        assert_eq!(of_failure(&Failure::NoSuchRun(text())), 2);
        assert_eq!(of_failure(&Failure::Aws(text())), 1);
        assert_eq!(of_failure(&Failure::File(text())), 1);
        assert_eq!(of_failure(&Failure::Interrupted(text())), 130);
        let invalid = CloudError::new(ErrorKind::Invalid, "InvalidEndpoint", "clear text");
        assert_eq!(of_failure(&Failure::Setup { what: text(), source: invalid }), 2);
        let other = CloudError::new(ErrorKind::Throttled, "Throttling", "slow down");
        assert_eq!(of_failure(&Failure::Setup { what: text(), source: other }), 1);
        let held = StoreError::Locked { plan: "p".into(), path: "l".into() };
        assert_eq!(of_failure(&Failure::Store(held)), 3);
        assert_eq!(of_done(Done::Run(RunStatus::Stopped)), 4);
        assert_eq!(of_done(Done::CleanedUp { complete: false }), 1);
        assert_eq!(of_done(Done::Verified { all_matched: true }), 0);
        assert_eq!((of_parse_error(true), of_parse_error(false)), (2, 0));
    }
}
