//! [`Failure`]: a command's failure, worded for the user, with its exit code and the
//! JSON document CI reads; and the conversions from the library's typed errors.

use serde_json::{Value, json};

use crate::checkpoint::StoreError;
use crate::exec::RunError;

use super::exit;

/// A command's failure, already worded for the user, with its exit code.
#[derive(Debug)]
pub struct Failure {
    pub code: u8,
    pub message: String,
    /// A JSON document to print on stdout with `--format json`, if any.
    pub json: Option<Value>,
}

impl Failure {
    pub fn new(code: u8, message: impl Into<String>) -> Self {
        Failure { code, message: message.into(), json: None }
    }

    /// The document printed on stdout with `--format json`.
    pub fn document(&self) -> Value {
        self.json.clone().unwrap_or_else(|| json!({"status": "error", "exit_code": self.code, "error": self.message}))
    }
}

impl From<&StoreError> for Failure {
    fn from(e: &StoreError) -> Self {
        Failure::new(exit::of_store_error(e), e.to_string())
    }
}

impl From<&RunError> for Failure {
    fn from(e: &RunError) -> Self {
        let code = exit::of_run_error(e);
        let mut doc = json!({"status": "error", "exit_code": code, "error": e.to_string()});
        if let RunError::Preflight(problems) = e {
            doc["problems"] = problems
                .iter()
                .map(|p| json!({"resource": p.resource, "message": p.message}))
                .collect::<Vec<_>>()
                .into();
        }
        Failure { code, message: e.to_string(), json: Some(doc) }
    }
}
