//! `snapferry run PLAN --dry-run`: every change a run needs, and nothing changed.
//!
//! Online, it resolves what it can with read-only calls (caller identities, the role,
//! keys, the source key's policy, volumes and their keys) and reports any problem
//! preflight would stop on. With `--offline` it makes no call at all and puts
//! placeholders where a value needs AWS. It never takes the plan lock and never
//! writes to the state dir.

use serde_json::{Value, json};

use crate::cloud::{Loc, Side};
use crate::exec::{PreflightError, Resolved, preflight};
use crate::ids::AccountId;
use crate::plan::{Pick, Plan};
use crate::policy::{self, Grant, IamContext};

use super::args::{Format, RunArgs};
use super::cloud::{Reach, connect, session_name};
use super::commands::load_plan;
use super::{Failure, exit};

/// Stand-ins for account ids the offline dry-run cannot know, swapped for readable
/// placeholders in the output.
const SOURCE_ACCOUNT_STANDIN: &str = "000000000001";
const TARGET_ACCOUNT_STANDIN: &str = "000000000002";

fn placeholders(v: Value) -> Value {
    match v {
        Value::String(s) => Value::String(
            s.replace(SOURCE_ACCOUNT_STANDIN, "<source-account>").replace(TARGET_ACCOUNT_STANDIN, "<target-account>"),
        ),
        Value::Array(a) => Value::Array(a.into_iter().map(placeholders).collect()),
        Value::Object(o) => Value::Object(o.into_iter().map(|(k, v)| (k, placeholders(v))).collect()),
        other => other,
    }
}

fn key_placeholder(key: &str, side: &str) -> String {
    if key.starts_with("arn:") && key.contains(":key/") { key.to_owned() } else { format!("<{side} key ARN of {key}>") }
}

pub async fn dry_run(args: &RunArgs) -> Result<u8, Failure> {
    let format = args.common.format;
    let plan = load_plan(&args.plan, format)?;
    let (resolved, problems, current_policy) = if args.offline {
        (None, vec![], None)
    } else {
        let session = session_name(&format!("{}-dry-run", plan.name));
        let connected = connect(Reach::for_plan(&args.common, &plan, session)).await?;
        // No DryRun probes here: a dry-run sends nothing that even looks like a change.
        match preflight(&plan, connected.cloud.as_ref(), connected.clock.as_ref(), false).await {
            Ok(r) => {
                let loc = Loc::new(Side::Source, &plan.source.region);
                let policy = if r.cross_account {
                    match connected.cloud.get_key_policy(&loc, &r.source_key.arn).await {
                        Ok(p) => Some(p),
                        Err(e) => {
                            return Err(Failure::new(
                                exit::FAILED,
                                format!("cannot read the policy of source key {}: {e}", r.source_key.arn),
                            ));
                        }
                    }
                } else {
                    None
                };
                (Some(r), vec![], policy)
            }
            Err(problems) => (None, problems, None),
        }
    };
    let mut doc = document(&plan, resolved.as_ref(), &problems, current_policy.as_deref(), args.offline);
    // A state in S3 needs the bucket's actions too.
    if let (Ok(super::state::StateLocation::S3 { bucket, prefix }), true) = (
        super::state::StateLocation::parse(&args.common.state_dir),
        doc.get("iam").and_then(|i| i.get("source_caller")).is_some(),
    ) {
        let caller = doc["iam"]["source_caller"].take();
        doc["iam"]["source_caller"] =
            policy::with_state_bucket(caller, plan.source.region.partition(), &bucket, &prefix);
    }
    // With problems, the failure path prints the JSON document, so stdout carries one.
    match format {
        Format::Json if problems.is_empty() => println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default()),
        Format::Json => {}
        Format::Text => print!("{}", text(&doc)),
    }
    if problems.is_empty() {
        Ok(exit::OK)
    } else {
        Err(Failure {
            code: exit::USAGE,
            message: format!("the run would stop in preflight: {} problem(s) listed above", problems.len()),
            json: Some(doc),
        })
    }
}

/// The dry-run document of the contract: plan, steps, key_policy, iam (+ problems).
pub fn document(
    plan: &Plan,
    resolved: Option<&Resolved>,
    problems: &[PreflightError],
    current_policy: Option<&str>,
    offline: bool,
) -> Value {
    let source_account = resolved
        .map(|r| r.source_identity.account.clone())
        .or(plan.source.account.clone())
        .unwrap_or_else(|| AccountId::parse(SOURCE_ACCOUNT_STANDIN).expect("valid"));
    let target_account = resolved
        .and_then(|r| r.target_identity.as_ref().map(|i| i.account.clone()))
        .or(plan.target.account.clone())
        .or(plan.target.role_arn.as_ref().map(|r| r.account()))
        .unwrap_or_else(|| source_account.clone());
    let cross = resolved.map(|r| r.cross_account).unwrap_or(target_account != source_account);
    let source_key = resolved
        .map(|r| r.source_key.arn.to_string())
        .unwrap_or_else(|| key_placeholder(plan.source.kms_key.as_str(), "source"));
    let target_key = resolved
        .map(|r| r.target_key.arn.to_string())
        .unwrap_or_else(|| key_placeholder(plan.target.kms_key.as_str(), "target"));

    let mut reencrypt_keys = vec![];
    let steps: Vec<Value> = match resolved {
        Some(r) => r
            .volumes
            .iter()
            .map(|sv| {
                let under_source = sv.volume.kms_key_id.as_deref() == Some(source_key.as_str());
                if let Some(k) = sv.volume.kms_key_id.as_ref().filter(|k| !under_source && !reencrypt_keys.contains(*k))
                {
                    reencrypt_keys.push(k.clone());
                }
                json!({
                    "source_volume": sv.volume.id.as_str(),
                    "size_gib": sv.volume.size_gib,
                    "current_key": sv.volume.kms_key_id,
                    "steps": volume_steps(plan, cross, Some(!under_source)),
                })
            })
            .collect(),
        None => plan
            .volumes
            .iter()
            .map(|spec| {
                let name = match &spec.pick {
                    Pick::Id(id) => json!({"source_volume": id.as_str()}),
                    Pick::Selector(tags) => json!({"selector": tags}),
                };
                let mut v = name;
                v["steps"] = json!(volume_steps(plan, cross, None));
                v
            })
            .collect(),
    };

    let key_policy = if cross {
        let grant = Grant::new(plan.name.clone(), target_account.clone(), &plan.source.region);
        let statement = policy::grant_statement(&grant);
        match current_policy.map(|p| policy::ensure_grant(p, &grant)) {
            Some(Ok(change)) => json!({
                "key_arn": source_key,
                "add_statement": change.statement,
                "already_present": !change.changed,
                "diff": policy::diff(current_policy.unwrap_or("{}"), &change.new_policy),
            }),
            Some(Err(e)) => json!({
                "key_arn": source_key, "add_statement": statement, "already_present": false,
                "error": e.to_string(),
            }),
            None => json!({"key_arn": source_key, "add_statement": statement, "already_present": Value::Null}),
        }
    } else {
        // Same account: nothing is shared, so the key policy needs no statement.
        json!({"key_arn": source_key, "add_statement": Value::Null, "already_present": false, "needed": false})
    };

    let ctx = IamContext {
        partition: plan.source.region.partition(),
        plan: plan.name.clone(),
        source_account: source_account.clone(),
        source_region: plan.source.region.clone(),
        target_account: target_account.clone(),
        target_region: plan.target.region.clone(),
        source_key: source_key.clone(),
        target_key: target_key.clone(),
        role_arn: plan.target.role_arn.clone(),
        external_id: plan.target.external_id.clone(),
        caller_arn: resolved.map(|r| r.source_identity.arn.clone()),
        reencrypt_keys,
        cross_account: cross,
        create_volume: plan.options.create_volume,
        keep: plan.options.keep.is_some(),
    };
    let docs = policy::documents(&ctx);
    placeholders(json!({
        "plan": plan.name.as_str(),
        "dry_run": true,
        "offline": offline,
        "source": {"account": source_account.as_str(), "region": plan.source.region.as_str(), "kms_key": source_key},
        "target": {"account": target_account.as_str(), "region": plan.target.region.as_str(), "kms_key": target_key,
                   "role_arn": plan.target.role_arn.as_ref().map(|r| r.as_str())},
        "cross_account": cross,
        "steps": steps,
        "key_policy": key_policy,
        "iam": {
            "source_caller": docs.source_caller,
            "target_role": docs.target_role,
            "target_role_trust": docs.target_role_trust,
        },
        "problems": problems.iter().map(|p| json!({"resource": p.resource, "message": p.message})).collect::<Vec<_>>(),
    }))
}

fn volume_steps(plan: &Plan, cross: bool, reencrypt: Option<bool>) -> Vec<&'static str> {
    let mut s = vec!["snapshot"];
    match reencrypt {
        Some(true) => s.push("reencrypt"),
        None => s.push("reencrypt-if-not-under-source-key"),
        Some(false) => {}
    }
    if cross {
        s.extend(["grant-key", "share"]);
    }
    s.push("copy");
    if plan.options.create_volume {
        s.push("create-volume");
    }
    if plan.options.cleanup {
        s.push("cleanup");
    }
    if plan.options.keep.is_some() {
        s.push("retention");
    }
    s
}

fn text(doc: &Value) -> String {
    let st = |v: &Value| v.as_str().unwrap_or("").to_owned();
    use std::fmt::Write as _;
    let pretty = |v: &Value| serde_json::to_string_pretty(v).unwrap_or_default();
    let mut s = String::new();
    let _ = writeln!(
        s,
        "dry run of plan {}{}: nothing was changed",
        doc["plan"].as_str().unwrap_or(""),
        if doc["offline"] == json!(true) { " (offline: placeholders in <angle brackets>)" } else { "" }
    );
    let _ = writeln!(
        s,
        "\nsource: account {} region {} key {}",
        st(&doc["source"]["account"]),
        st(&doc["source"]["region"]),
        st(&doc["source"]["kms_key"])
    );
    let _ = writeln!(
        s,
        "target: account {} region {} key {}",
        st(&doc["target"]["account"]),
        st(&doc["target"]["region"]),
        st(&doc["target"]["kms_key"])
    );
    let _ = writeln!(s, "\n== steps per volume");
    for v in doc["steps"].as_array().into_iter().flatten() {
        let who = v
            .get("source_volume")
            .and_then(|x| x.as_str())
            .map(str::to_owned)
            .unwrap_or_else(|| format!("selector {}", v["selector"]));
        let steps: Vec<&str> = v["steps"].as_array().into_iter().flatten().filter_map(|x| x.as_str()).collect();
        let _ = writeln!(s, "  {who}: {}", steps.join(" -> "));
    }
    let kp = &doc["key_policy"];
    if kp["needed"] == json!(false) {
        let _ = writeln!(s, "\n== key policy: no change (same-account copy, nothing is shared)");
    } else {
        let _ = writeln!(s, "\n== key policy of {}", kp["key_arn"].as_str().unwrap_or(""));
        match kp["already_present"].as_bool() {
            Some(true) => {
                let _ = writeln!(s, "an equivalent statement is already present: no change");
            }
            Some(false) => {
                let _ = writeln!(s, "statement to add:\n{}", pretty(&kp["add_statement"]));
                if let Some(d) = kp["diff"].as_str() {
                    let _ = writeln!(s, "\ndiff of the policy:\n{d}");
                }
            }
            None => {
                let _ = writeln!(
                    s,
                    "statement to add unless an equivalent one is present:\n{}",
                    pretty(&kp["add_statement"])
                );
            }
        }
    }
    let _ = writeln!(
        s,
        "\n== IAM policy for the identity running snapferry (source account)\n{}",
        pretty(&doc["iam"]["source_caller"])
    );
    let _ = writeln!(s, "\n== IAM policy for the target role\n{}", pretty(&doc["iam"]["target_role"]));
    if !doc["iam"]["target_role_trust"].is_null() {
        let _ = writeln!(s, "\n== trust policy of the target role\n{}", pretty(&doc["iam"]["target_role_trust"]));
    }
    let problems = doc["problems"].as_array().cloned().unwrap_or_default();
    if !problems.is_empty() {
        let _ = writeln!(s, "\n== problems the run would stop on");
        for p in problems {
            let _ =
                writeln!(s, "  - {}: {}", p["resource"].as_str().unwrap_or(""), p["message"].as_str().unwrap_or(""));
        }
    }
    s
}
