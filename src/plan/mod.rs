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
//! Pure: the plan arrives as text (the CLI reads the file), and nothing here touches
//! the filesystem, the network or the clock.

pub mod duration;
mod error;
pub mod model;
mod raw;
mod validate;
mod yaml;

use serde_saphyr::{DuplicateKeyPolicy, Location, Spanned};

pub use error::{InvalidPlan, PlanIssue};
pub use model::*;
pub use validate::{MAX_CONCURRENT_COPIES, PLAN_VERSION, VOLUME_TYPES};
pub use yaml::MAX_PLAN_BYTES;

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

/// The JSON Schema of a plan file, as printed by `snapferry schema`.
pub fn json_schema() -> serde_json::Value {
    schemars::schema_for!(raw::RawPlan).to_value()
}
