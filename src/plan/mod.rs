//! The plan: YAML text -> raw structs -> a validated [`Plan`] of newtypes.
//!
//! Layout:
//! - `raw`: serde structs mirroring the file, every value with its position; the JSON
//!   Schema comes from them.
//! - `validate`: raw -> [`Plan`], collecting every problem.
//! - `yaml`: parser settings and budget, positions, and parser errors as issues.
//! - `error`: [`InvalidPlan`] and its plain and graphical forms.
//! - `duration`: `6h`, `1h30m` and friends.
//! - `model`: the validated plan.
//!
//! Only [`load`] touches the filesystem; everything else is pure.

pub mod duration;
mod error;
pub mod model;
mod raw;
mod validate;
mod yaml;

use std::io::Read;
use std::path::{Path, PathBuf};

use serde_saphyr::{DuplicateKeyPolicy, Location, Spanned};

pub use error::{InvalidPlan, PlanIssue};
pub use model::*;
pub use validate::{MAX_CONCURRENT_COPIES, PLAN_VERSION, VOLUME_TYPES};
pub use yaml::MAX_PLAN_BYTES;

/// Why [`load`] gave no plan.
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

/// Parses and validates plan text. `file` names the plan in every issue.
pub fn parse(file: &str, text: &str) -> Result<Plan, InvalidPlan> {
    let src = yaml::SourceText::new(text);
    let invalid = |issues| InvalidPlan::new(file, text, issues);
    if text.len() > MAX_PLAN_BYTES {
        let issue = src.issue(
            &Location::UNKNOWN,
            "",
            format!("expected a plan of at most {MAX_PLAN_BYTES} bytes, found {} bytes", text.len()),
        );
        return Err(invalid(vec![issue]));
    }
    let tree = yaml::read_tree(&src).map_err(|issue| invalid(vec![issue]))?;
    let raw: Spanned<raw::RawPlan> =
        serde_saphyr::from_str_with_options(text, yaml::options(DuplicateKeyPolicy::Error))
            .map_err(|e| invalid(vec![yaml::issue_from_error(&src, Some(&tree), &e)]))?;
    validate::validate(&raw, &src).map_err(invalid)
}

/// Reads and parses a plan file. The path, as given, names the plan in every issue.
pub fn load(path: &Path) -> Result<Plan, LoadError> {
    let io = |source| LoadError::Io { path: path.to_owned(), source };
    let file = std::fs::File::open(path).map_err(io)?;
    // Read one byte past the limit so an oversized file is refused without reading it
    // whole.
    let mut bytes = Vec::new();
    file.take(MAX_PLAN_BYTES as u64 + 1).read_to_end(&mut bytes).map_err(io)?;
    let text = String::from_utf8(bytes)
        .map_err(|e| io(std::io::Error::new(std::io::ErrorKind::InvalidData, format!("expected UTF-8 text: {e}"))))?;
    Ok(parse(&path.display().to_string(), &text)?)
}

/// The JSON Schema of a plan file, as printed by `snapferry schema`.
pub fn json_schema() -> serde_json::Value {
    schemars::schema_for!(raw::RawPlan).to_value()
}
