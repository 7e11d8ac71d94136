//! Reading a plan file: the one place a plan is read from disk (the `plan` module itself
//! is pure and parses text), and the failure a command gives for a plan it cannot use.

use std::io::Read;
use std::path::{Path, PathBuf};

use serde_json::json;

use crate::plan::{self, InvalidPlan, MAX_PLAN_BYTES, Plan};

use super::args::Format;
use super::failure::Failure;
use super::render;

/// Why [`read_plan`] gave no plan.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum LoadError {
    #[error("cannot read plan {}: {source}", path.display())]
    #[diagnostic(code(snapferry::plan::io))]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    #[diagnostic(transparent)]
    Invalid(#[from] InvalidPlan),
}

/// Reads and parses a plan file. The path, as given, names the plan in every issue.
pub fn read_plan(path: &Path) -> Result<Plan, LoadError> {
    let io = |source| LoadError::Io { path: path.to_owned(), source };
    let file = std::fs::File::open(path).map_err(io)?;
    // Read one byte past the limit so an oversized file is refused without reading it
    // whole.
    let mut bytes = Vec::new();
    file.take(MAX_PLAN_BYTES as u64 + 1).read_to_end(&mut bytes).map_err(io)?;
    let text = String::from_utf8(bytes)
        .map_err(|e| io(std::io::Error::new(std::io::ErrorKind::InvalidData, format!("expected UTF-8 text: {e}"))))?;
    Ok(plan::parse(&path.display().to_string(), &text)?)
}

/// Loads a plan, or fails naming every problem once, each with file:line:column (shown
/// by `render::invalid_plan`) and, for CI, the JSON document of them.
pub fn load_plan(path: &Path, format: Format) -> Result<Plan, Failure> {
    read_plan(path).map_err(|e| match e {
        LoadError::Invalid(invalid) => {
            let file = invalid.file.clone();
            let errors = invalid
                .issues
                .iter()
                .map(|i| json!({"line": i.line, "column": i.column, "field": i.field, "message": i.message}))
                .collect();
            Failure::InvalidPlan { message: render::invalid_plan(format, path, invalid), file, errors }
        }
        other => Failure::UnreadablePlan(other.to_string()),
    })
}
