//! The plan: YAML text -> raw structs -> a validated [`Plan`] of newtypes.
//!
//! Layout:
//! - `raw`: serde structs mirroring the file, every value with its position; the JSON
//!   Schema comes from them.
//! - `validate`: raw -> [`Plan`], collecting every problem.
//! - `yaml`: parser settings and budget, positions, and parser errors as issues.
//! - `error`: [`InvalidPlan`] and its plain and graphical forms.
//! - `schema`: the JSON Schema for tools, and the check that scalars have the types it
//!   declares, so the schema and snapferry accept the same plans.
//! - `duration`: `6h`, `1h30m` and friends.
//! - `model`: the validated plan.
//!
//! Pure: the plan arrives as text (the CLI reads the file), and nothing here touches
//! the filesystem, the network or the clock.

pub mod duration;
mod error;
pub mod model;
mod raw;
mod schema;
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
    // A scalar of the wrong YAML type that serde converted (`keep: "7"`) is refused as
    // the schema refuses it; a problem the checks below also see is named once.
    let typed = schema::scalar_types(&tree, &json_schema(), &src);
    let mut issues = match validate::validate(&raw, &src) {
        Ok(plan) if typed.is_empty() => return Ok(plan),
        Ok(_) => Vec::new(),
        Err(issues) => issues,
    };
    for t in typed {
        if !issues.iter().any(|i| (i.line, i.column) == (t.line, t.column)) {
            issues.push(t);
        }
    }
    Err(invalid(issues))
}

/// The JSON Schema of a plan file, as printed by `snapferry schema`.
pub fn json_schema() -> serde_json::Value {
    schema::generate(schemars::schema_for!(raw::RawPlan).to_value())
}
