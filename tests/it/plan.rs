//! The plan parser from the outside: the example plans parse, every invalid fixture
//! fails with its expected message at its expected place, and validation reports every
//! problem at once.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use snapferry::cli::{LoadError, read_plan};
use snapferry::ids::AccountId;
use snapferry::plan::{self, InvalidPlan, Pick, Plan};

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn load_example(name: &str) -> Plan {
    let path = manifest_dir().join("plans").join(name);
    match read_plan(&path) {
        Ok(plan) => plan,
        Err(e) => panic!("{name} should be valid:\n{e}"),
    }
}

fn invalid(text: &str) -> InvalidPlan {
    match plan::parse("plan.yaml", text) {
        Ok(plan) => panic!("expected the plan to be refused, got {plan:?}"),
        Err(e) => e,
    }
}

/// A valid cross-account plan to derive invalid ones from.
const BASE: &str = r#"version: 1
name: fixture
source:
  region: us-east-1
  account: "111111111111"
  kms_key: alias/src-share
target:
  region: eu-west-1
  account: "222222222222"
  role_arn: arn:aws:iam::222222222222:role/snapferry
  kms_key: alias/dst
  availability_zone: eu-west-1a
volumes:
  - id: vol-0123456789abcdef0
"#;

fn edited(old: &str, new: &str) -> String {
    assert!(BASE.contains(old), "{old:?} is not in the base plan");
    BASE.replacen(old, new, 1)
}

/// The headers a fixture starts with: `# expect: TEXT`, then optionally
/// `# expect-line: N`, `# expect-column: N` and `# expect-count: N`.
#[derive(Default)]
struct Expectation {
    message: String,
    line: Option<usize>,
    column: Option<usize>,
    count: Option<usize>,
}

fn expectation(path: &Path, text: &str) -> Expectation {
    let mut lines = text.lines();
    let first = lines.next().unwrap_or_default();
    let Some(message) = first.strip_prefix("# expect: ") else {
        panic!("{}: the first line must be `# expect: <message>`", path.display());
    };
    let mut e = Expectation { message: message.to_owned(), ..Expectation::default() };
    for line in lines.take_while(|l| l.starts_with("# expect-")) {
        let (key, value) = line
            .strip_prefix("# expect-")
            .and_then(|rest| rest.split_once(": "))
            .unwrap_or_else(|| panic!("{}: malformed header {line:?}", path.display()));
        let n = value.parse().unwrap_or_else(|_| panic!("{}: {line:?}", path.display()));
        match key {
            "line" => e.line = Some(n),
            "column" => e.column = Some(n),
            "count" => e.count = Some(n),
            other => panic!("{}: unknown header expect-{other}", path.display()),
        }
    }
    e
}

#[test]
fn every_invalid_fixture_fails_where_and_how_it_says() {
    let dir = manifest_dir().join("tests/fixtures/plans/invalid");
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("fixture directory")
        .map(|entry| entry.expect("fixture entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    paths.sort();
    assert!(paths.len() >= 24, "only {} fixtures", paths.len());

    let mut failures = Vec::new();
    for path in &paths {
        let text = std::fs::read_to_string(path).expect("fixture text");
        let expect = expectation(path, &text);
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let err = match plan::parse(&name, &text) {
            Ok(_) => {
                failures.push(format!("{name}: parsed, expected `{}`", expect.message));
                continue;
            }
            Err(e) => e,
        };
        let rendered = err.to_string();
        let Some(issue) = err.issues.iter().find(|i| i.to_string().contains(&expect.message)) else {
            failures.push(format!("{name}: no issue contains `{}`; got:\n{rendered}", expect.message));
            continue;
        };
        let prefix = format!("{name}:{}:{}: ", issue.line, issue.column);
        if !rendered.lines().any(|l| l.starts_with(&prefix) && l.contains(&expect.message)) {
            failures.push(format!("{name}: no line starts with `{prefix}`; got:\n{rendered}"));
        }
        if expect.line.is_some_and(|l| l != issue.line) {
            failures.push(format!("{name}: at line {}, expected {:?}", issue.line, expect.line));
        }
        if expect.column.is_some_and(|c| c != issue.column) {
            failures.push(format!("{name}: at column {}, expected {:?}", issue.column, expect.column));
        }
        let count = expect.count.unwrap_or(1);
        if err.issues.len() != count {
            failures.push(format!("{name}: {} issues, expected {count}:\n{rendered}", err.issues.len()));
        }
        for issue in &err.issues {
            let m = &issue.message;
            if m.ends_with('.') || m.starts_with(|c: char| c.is_uppercase()) {
                failures.push(format!("{name}: message not lowercase without a period: {m}"));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn example_plan_is_cross_account_and_cross_region() {
    let plan = load_example("example.yaml");
    assert_eq!(plan.name.as_str(), "prod-db-dr");
    assert_ne!(plan.source.region, plan.targets[0].region);
    let source_account = plan.source.account.clone().expect("source account");
    assert!(plan.cross_account(&source_account));
    assert!(plan.targets[0].role_arn.is_some());
    assert_eq!(plan.volumes.len(), 3);
    assert!(plan.volumes.iter().all(|v| matches!(v.pick, Pick::Id(_))));
    assert_eq!(plan.volumes[0].target.iops, Some(6000));
    assert_eq!(plan.volumes[0].target.volume_type.as_deref(), Some("gp3"));
    assert_eq!(plan.options.tags.get("Owner").map(String::as_str), Some("sre"));
    assert_eq!(plan.options.timeouts.copy, Duration::from_secs(86_400));
}

#[test]
fn same_account_plan_needs_no_role() {
    let plan = load_example("same-account.yaml");
    assert_eq!(plan.source.account, plan.targets[0].account);
    assert!(plan.targets[0].role_arn.is_none());
    assert!(!plan.cross_account(plan.source.account.as_ref().unwrap()));
    assert_ne!(plan.source.region, plan.targets[0].region);
    assert_eq!(plan.source.profile.as_deref(), Some("platform"));
}

#[test]
fn fleet_plan_mixes_a_selector_and_an_id() {
    let plan = load_example("fleet.yaml");
    assert!(
        matches!(&plan.volumes[0].pick, Pick::Selector(tags) if tags.get("Backup").map(String::as_str) == Some("dr"))
    );
    assert!(matches!(plan.volumes[1].pick, Pick::Id(_)));
    assert_eq!(plan.options.keep, Some(7));
    assert!(!plan.options.create_volume);
    assert!(plan.cross_account(&AccountId::parse("111111111111").unwrap()));
}

#[test]
fn omitted_options_take_their_defaults() {
    let plan = plan::parse("plan.yaml", BASE).expect("base plan");
    assert_eq!(plan.options, plan::Options::default());
    assert_eq!(plan.options.max_concurrent_copies, 20);
    assert!(plan.options.cleanup && plan.options.create_volume);
    assert_eq!(plan.volumes[0].target, plan::TargetVolume::default());
}

#[test]
fn every_problem_is_reported_at_once() {
    let text = edited("name: fixture", "name: Not_Valid")
        .replace("region: us-east-1", "region: nowhere")
        .replace("alias/dst", "alias/aws/ebs")
        + "    iops: 0\n    throughput: 9000\n  - id: vol-0123456789abcdef0\n  - {}\n"
        + "options:\n  keep: 0\n  max_concurrent_copies: 21\n  timeouts: {copy: 1x, volume: 0s}\n";
    let err = invalid(&text);
    let fields: Vec<&str> = err.issues.iter().map(|i| i.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "name",
            "source.region",
            "target.kms_key",
            "volumes[0].iops",
            "volumes[0].throughput",
            "volumes[1].id",
            "volumes[2]",
            "options.keep",
            "options.max_concurrent_copies",
            "options.timeouts.copy",
            "options.timeouts.volume",
        ],
        "{err}"
    );
    assert_eq!(err.to_string().lines().count(), err.issues.len());
}

#[test]
fn issues_read_top_to_bottom_in_the_plain_form() {
    let err = invalid(&edited("eu-west-1a", "eu-west-1").replace("version: 1", "version: 3"));
    assert_eq!(
        err.to_string(),
        "plan.yaml:1:10: version: expected 1, found 3: this snapferry reads version 1 plans only\n\
         plan.yaml:12:22: target.availability_zone: expected an availability zone name like eu-west-1a, found `eu-west-1`"
    );
}

#[test]
fn missing_keys_are_all_reported_at_their_parent() {
    let err = invalid("version: 1\nname: x\nsource:\n  profile: prod\ntarget:\n  region: eu-west-1\n");
    let found: Vec<(usize, &str)> = err.issues.iter().map(|i| (i.line, i.field.as_str())).collect();
    assert_eq!(
        found,
        [
            (1, "volumes"),
            (4, "source.region"),
            (4, "source.kms_key"),
            (6, "target.kms_key"),
            (6, "target.availability_zone"),
        ],
        "{err}"
    );
}

#[test]
fn target_account_defaults_to_the_roles_account() {
    let plan = plan::parse("plan.yaml", &edited("  account: \"222222222222\"\n", "")).unwrap();
    assert_eq!(plan.targets[0].account.as_ref().map(AccountId::as_str), Some("222222222222"));
    assert!(plan.cross_account(&AccountId::parse("111111111111").unwrap()));
}

#[test]
fn same_account_copy_needs_no_role() {
    let text =
        edited("role_arn: arn:aws:iam::222222222222:role/snapferry\n  ", "").replace("222222222222", "111111111111");
    let plan = plan::parse("plan.yaml", &text).unwrap();
    assert!(plan.targets[0].role_arn.is_none());
}

#[test]
fn role_rule_is_judged_even_when_another_source_field_is_wrong() {
    let text =
        edited("  role_arn: arn:aws:iam::222222222222:role/snapferry\n", "").replace("alias/src-share", "not-a-key");
    let err = invalid(&text);
    let fields: Vec<&str> = err.issues.iter().map(|i| i.field.as_str()).collect();
    assert_eq!(fields, ["source.kms_key", "target.role_arn"], "{err}");
}

#[test]
fn target_may_not_use_the_aws_managed_key_either() {
    let err = invalid(&edited("alias/dst", "arn:aws:kms:eu-west-1:222222222222:alias/aws/ebs"));
    assert_eq!(err.issues.len(), 1);
    assert!(err.issues[0].message.contains("customer managed"), "{err}");
}

#[test]
fn both_unquoted_accounts_are_reported() {
    let err = invalid(&BASE.replace("\"111111111111\"", "111111111111").replace("\"222222222222\"", "222222222222"));
    assert_eq!(err.issues.len(), 2, "{err}");
    assert!(err.issues.iter().all(|i| i.message.contains("in quotes")), "{err}");
}

#[test]
fn an_account_with_leading_zeros_is_kept_when_quoted() {
    let text = BASE.replace("111111111111", "011111111111");
    let plan = plan::parse("plan.yaml", &text).unwrap();
    assert_eq!(plan.source.account.unwrap().as_str(), "011111111111");
}

#[test]
fn tags_and_overrides_reach_the_model() {
    let text = BASE.to_owned()
        + "    volume_type: io2\n    iops: 64000\n    tags: {Name: db, Tier: \"1\"}\n"
        + "options:\n  tags: {Owner: sre}\n  timeouts: {snapshot: 1h30m}\n";
    let plan = plan::parse("plan.yaml", &text).unwrap();
    let target = &plan.volumes[0].target;
    assert_eq!(target.iops, Some(64_000));
    let expected: BTreeMap<String, String> =
        [("Name", "db"), ("Tier", "1")].map(|(k, v)| (k.to_owned(), v.to_owned())).into();
    assert_eq!(target.tags, expected);
    assert_eq!(plan.options.timeouts.snapshot, Duration::from_secs(5400));
    assert_eq!(plan.options.timeouts.copy, plan::Timeouts::default().copy);
}

#[test]
fn selectors_may_match_aws_tags() {
    let text = edited(
        "  - id: vol-0123456789abcdef0\n",
        "  - selector:\n      tags: {\"aws:cloudformation:stack-name\": db}\n",
    );
    let plan = plan::parse("plan.yaml", &text).unwrap();
    assert!(matches!(&plan.volumes[0].pick, Pick::Selector(t) if t.len() == 1));
}

#[test]
fn too_many_tags_for_one_resource_are_refused() {
    let options: String = (0..30).map(|i| format!("    O{i}: v\n")).collect();
    let volume: String = (0..20).map(|i| format!("      V{i}: v\n")).collect();
    let text = format!("{BASE}    tags:\n{volume}options:\n  tags:\n{options}");
    let err = invalid(&text);
    assert_eq!(err.issues.len(), 1, "{err}");
    assert_eq!(err.issues[0].field, "volumes[0].tags");
    assert!(err.issues[0].message.contains("found 50"), "{err}");
}

#[test]
fn an_oversized_plan_is_refused_before_parsing() {
    let text = format!("{BASE}# {}\n", "x".repeat(plan::MAX_PLAN_BYTES));
    let err = invalid(&text);
    assert_eq!(err.issues.len(), 1);
    assert!(err.issues[0].message.contains("bytes"), "{err}");
}

#[test]
fn an_alias_bomb_hits_the_budget() {
    let mut text = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
    for i in 1..12 {
        let p = i - 1;
        text.push_str(&format!("a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"));
    }
    let err = invalid(&text);
    assert_eq!(err.issues.len(), 1, "{err}");
    assert!(err.issues[0].message.contains("ordinary size"), "{err}");
}

#[test]
fn load_reports_a_missing_file_as_io() {
    let missing = manifest_dir().join("plans/does-not-exist.yaml");
    match read_plan(&missing) {
        Err(LoadError::Io { path, .. }) => assert_eq!(path, missing),
        other => panic!("expected an I/O error, got {other:?}"),
    }
}

#[test]
fn load_names_the_file_as_given() {
    let path = manifest_dir().join("tests/fixtures/plans/invalid/06-version.yaml");
    match read_plan(&path) {
        Err(LoadError::Invalid(e)) => {
            assert_eq!(e.file, path.display().to_string());
            assert!(e.to_string().starts_with(&format!("{}:4:10: version:", path.display())), "{e}");
        }
        other => panic!("expected an invalid plan, got {other:?}"),
    }
}

#[test]
fn the_graphical_form_has_the_source_and_a_span_per_issue() {
    use miette::Diagnostic;

    let err = invalid(&edited("eu-west-1a", "us-east-1a").replace("version: 1", "version: 2"));
    assert!(err.source_code().is_some());
    assert_eq!(err.related().map(Iterator::count), Some(err.issues.len()));
    for issue in &err.issues {
        assert_eq!(issue.labels().map(Iterator::count), Some(1));
    }
    let report = format!("{:?}", err.into_report());
    assert!(report.contains("2 problems"), "{report}");
}

#[test]
fn json_schema_describes_the_plan_file() {
    let schema = plan::json_schema();
    assert_eq!(schema["title"], "snapferry plan");
    assert_eq!(schema["additionalProperties"], false);
    let required: Vec<&str> = schema["required"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert_eq!(required, ["version", "name", "source", "volumes"]);
    // Exactly one of `target` and `targets`, each branch declaring what it requires
    // (Ajv's strictRequired), and an `$id` for catalogues and editors.
    assert_eq!(
        schema["oneOf"],
        serde_json::json!([
            {"required": ["target"], "properties": {"target": true}},
            {"required": ["targets"], "properties": {"targets": true}},
        ])
    );
    assert_eq!(schema["$id"], "urn:snapferry:plan:v1");
    // No `format: uint32` and the like: no such format exists, and strict validators
    // refuse unknown ones.
    let text = schema.to_string();
    assert!(!text.contains("\"format\":\"uint") && !text.contains("\"format\":\"int"), "{text}");
    let defs = schema["$defs"].as_object().unwrap();
    for name in ["Source", "Target", "Volume", "Selector", "Options", "Timeouts"] {
        assert_eq!(defs[name]["additionalProperties"], false, "{name}");
    }
    assert_eq!(defs["AccountId"]["type"], "string");
    assert_eq!(defs["Volume"]["properties"]["iops"]["maximum"], 256_000);
}

/// Tag values written as numbers or true/false (`CostCenter: 1234`) are taken as their
/// text, by snapferry and by the schema alike; a quoted number where a number is due
/// is refused.
#[test]
fn tag_values_may_be_numbers_or_booleans() {
    let text = edited(
        "  - id: vol-0123456789abcdef0\n",
        "  - id: vol-0123456789abcdef0\n    tags: {CostCenter: 1234, Backup: true}\n",
    );
    let p = plan::parse("tags.yaml", &text).unwrap_or_else(|e| panic!("{e}"));
    let tags = &p.volumes[0].target.tags;
    assert_eq!(tags.get("CostCenter").map(String::as_str), Some("1234"));
    assert_eq!(tags.get("Backup").map(String::as_str), Some("true"));
}

/// `options.lock` applies to every target that does not name its own; a target's
/// `lock:` replaces it, and `lock: none` leaves that target unlocked.
#[test]
fn lock_comes_from_options_unless_a_target_names_its_own() {
    use snapferry::lock::{LockMode, LockSpec};
    let text = r#"version: 1
name: fixture
source: {region: us-east-1, account: "111111111111", kms_key: alias/src-share}
targets:
  - {region: eu-west-1, account: "222222222222", role_arn: "arn:aws:iam::222222222222:role/dr", kms_key: alias/dst, availability_zone: eu-west-1a}
  - {region: us-west-2, account: "333333333333", role_arn: "arn:aws:iam::333333333333:role/vault", kms_key: alias/dst, availability_zone: us-west-2a, lock: {mode: compliance, duration: 36500d, cool_off: 72h}}
  - {region: us-east-2, account: "444444444444", role_arn: "arn:aws:iam::444444444444:role/warm", kms_key: alias/dst, availability_zone: us-east-2a, lock: none}
volumes:
  - id: vol-0123456789abcdef0
options:
  lock: {mode: governance, duration: 1d}
"#;
    let plan = plan::parse("plan.yaml", text).unwrap_or_else(|e| panic!("{e}"));
    let locks: Vec<Option<LockSpec>> = plan.targets.iter().map(|t| t.lock).collect();
    assert_eq!(
        locks,
        vec![
            Some(LockSpec { mode: LockMode::Governance, duration_days: 1, cool_off_hours: None }),
            Some(LockSpec { mode: LockMode::Compliance, duration_days: 36_500, cool_off_hours: Some(72) }),
            None,
        ]
    );
    assert!(plan.locks());
    assert!(!plan::parse("plan.yaml", BASE).unwrap().locks(), "no lock unless asked for");
}
