//! [`Failure`]: what stopped a command, worded for the user. It says what went wrong,
//! never an exit code: `exit::of_failure` is the one mapping onto the table, and
//! `render` makes the JSON document CI reads of it.

use serde_json::Value;

use crate::checkpoint::StoreError;
use crate::cloud::CloudError;
use crate::envelope::KeyringError;
use crate::envelope::datakey::DataKeyError;
use crate::exec::RunError;

/// What stopped a command. Each kind carries its message, already worded for the user
/// (or the library's typed error, worded by its `Display`).
#[derive(Debug)]
pub enum Failure {
    /// An argument, option or environment setting the command cannot use.
    Usage(String),
    /// The plan file cannot be read.
    UnreadablePlan(String),
    /// The plan file is not a valid plan: its file and each problem, for the JSON
    /// document (`message` closes the report on stderr).
    InvalidPlan { message: String, file: String, errors: Vec<Value> },
    /// The state holds no such run.
    NoSuchRun(String),
    /// The run holds nothing the command could act on.
    NothingToVerify(String),
    /// The dry-run found problems preflight would stop on; `report` is its document.
    WouldStop { problems: usize, report: Value },
    /// The clients for AWS (or the state bucket) could not be set up.
    Setup { what: String, source: CloudError },
    /// A call to AWS failed, or AWS answered with what cannot be used.
    Aws(String),
    /// A local file could not be read or written, or is damaged.
    File(String),
    /// An envelope file cannot be encrypted or decrypted as asked (damaged, altered, or
    /// under a key or context not allowed).
    Envelope(String),
    /// The state's record of a run holds what cannot be used.
    DamagedState(String),
    /// snapferry itself could not go on (the async runtime, a worker task).
    Internal(String),
    /// A signal ended the command.
    Interrupted(String),
    /// The state dir or bucket refused.
    Store(StoreError),
    /// A run could not be carried out at all.
    Run(RunError),
}

impl Failure {
    /// The message of the closing `error:` line.
    pub fn message(&self) -> String {
        match self {
            Failure::Usage(m)
            | Failure::UnreadablePlan(m)
            | Failure::InvalidPlan { message: m, .. }
            | Failure::NoSuchRun(m)
            | Failure::NothingToVerify(m)
            | Failure::Aws(m)
            | Failure::File(m)
            | Failure::Envelope(m)
            | Failure::DamagedState(m)
            | Failure::Internal(m)
            | Failure::Interrupted(m) => m.clone(),
            Failure::WouldStop { problems, .. } => {
                format!("the run would stop in preflight: {problems} problem(s) listed above")
            }
            Failure::Setup { what, source } => format!("{what}: {source}"),
            Failure::Store(e) => e.to_string(),
            Failure::Run(e) => e.to_string(),
        }
    }
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Self {
        Failure::Store(e)
    }
}

impl From<RunError> for Failure {
    fn from(e: RunError) -> Self {
        Failure::Run(e)
    }
}

impl From<KeyringError> for Failure {
    fn from(e: KeyringError) -> Self {
        match e {
            KeyringError::BadKey(m) => Failure::Usage(m),
            KeyringError::Kms(m) => Failure::Aws(m),
            KeyringError::NotAllowed(m) | KeyringError::Damaged(m) => Failure::Envelope(m),
        }
    }
}

impl From<DataKeyError> for Failure {
    fn from(e: DataKeyError) -> Self {
        match e {
            DataKeyError::Context(e) => Failure::Usage(e.to_string()),
            e @ (DataKeyError::Write { .. } | DataKeyError::Read { .. } | DataKeyError::NotDataKey { .. }) => {
                Failure::File(e.to_string())
            }
        }
    }
}
