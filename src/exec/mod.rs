//! The async runner: takes actions from the step machines, performs them against a
//! [`Cloud`], and checkpoints every state the machines return.
//!
//! One run goes: lock the plan, find the run to resume, preflight (read-only checks
//! of identities, keys and volumes) and build the run's scope from it, resume, adopt
//! or start the run, grant the target account use of the source key, then drive every
//! volume's machine to `Done` or `Failed`.
//!
//! The driving loop asks every volume without a call under way for its next action;
//! records the intent of every call that changes AWS and syncs the journal once;
//! starts the calls (polls batched per account and region); and applies each outcome
//! as its call ends. The outcomes and the intents planned from them are synced in one
//! write, before any call that changes AWS starts and before the loop waits on AWS or
//! a timer; a poll needs no intent. Copies wait for a slot under the per-destination
//! limit. When nothing is due, it sleeps until the next poll or retry is due, on the
//! [`Clock`] (virtual under simulation).
//!
//! Architecture Invariant: every call that changes AWS is preceded by a durable intent
//! (`in_flight`) and followed by a durable outcome; an intent without an outcome is
//! reconciled by looking the resource up by its tags before it is issued again.

mod act;
pub mod adopt;
mod agenda;
pub mod cleanup;
mod history;
mod key_policy;
mod lifecycle;
mod locks;
pub mod preflight;
pub mod recurring;
mod report;
pub mod retention;
mod retry;
mod runner;
pub mod sched;
mod scope;
pub mod verify;

use std::sync::Arc;

pub use agenda::Tally;
pub use cleanup::{cleanup, cleanup_loaded};
pub use lifecycle::{run, run_locked};
pub use preflight::preflight;
pub use preflight::{PreflightError, Resolved, SourceVolume};
pub use report::{CopyKind, RunReport, VolumeReport, copy_kind};
pub use runner::{Progress, RunConfig};

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
    /// A resumed run whose plan now names other regions, accounts, keys or role.
    #[error(
        "run {run_id} was started with another plan: {} changed, which would leave its resources behind; either put the plan back and run it to finish, or run `snapferry cleanup {run_id}` and then start the changed plan",
        fields.join(", ")
    )]
    PlanChanged { run_id: String, fields: Vec<String> },
    /// The credentials of a side were refused mid-run: nothing failed, the run stops.
    #[error(
        "run {run_id} stopped: AWS refused the credentials ({source}); nothing failed and every volume is kept where it stood: refresh the credentials (aws sso login, a new OIDC token, a role session that lasts longer) and run the same command again to carry on"
    )]
    Credentials { run_id: String, source: CloudError },
    /// A usage error found once the state was read (a run of another plan).
    #[error("{0}")]
    Usage(String),
    /// An outcome the step machine refused at the volume's step: a damaged checkpoint.
    #[error(transparent)]
    Engine(#[from] crate::engine::IllegalTransition),
    #[error("{0}")]
    Other(String),
}

#[cfg(test)]
mod tests {
    use super::RunError;
    use crate::engine::{self, Ctx, Outcome, TimeoutsMs, VolumeRun};
    use crate::ids::{KeyArn, VolumeId};

    #[test]
    fn an_outcome_the_machine_refuses_is_an_engine_error_worded_as_the_engine_words_it() {
        let ctx = Ctx {
            cross_account: false,
            source_key: KeyArn::parse("arn:aws:kms:us-east-1:111111111111:key/1234abcd-12ab-34cd-56ef-1234567890ab")
                .unwrap(),
            create_volume: true,
            cleanup: false,
            keep_source: false,
            timeouts_ms: TimeoutsMs { snapshot: 1_000, copy: 1_000, volume: 1_000 },
            locks: vec![],
            verify: None,
        };
        let v = VolumeRun::new(VolumeId::parse("vol-00000000000000001").unwrap());
        let refused = engine::apply(&v, &Outcome::VolumeAvailable, &ctx, 0).unwrap_err();
        let e: RunError = refused.clone().into();
        assert!(matches!(&e, RunError::Engine(t) if *t == refused), "{e:?}");
        assert_eq!(e.to_string(), refused.to_string());
        assert!(e.to_string().contains("vol-00000000000000001"), "{e}");
    }
}
