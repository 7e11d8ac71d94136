//! The key policy statement that shares the source key with the target account: what it
//! says, how it is added only when the policy does not already grant as much, how it is
//! removed again, and the KMS size quota a changed policy must fit.
//!
//! Every other statement is left as it was, in its place, with the same fields in the
//! same order: the policy is edited as a `serde_json::Value` with insertion order kept,
//! never through typed structs that would drop fields they do not know. Only the
//! whitespace of the document may change, as it is printed again.

use serde_json::{Value, json};

use crate::ids::{AccountId, PlanName, Region};

use super::PolicyError;
use super::eval::{
    GRANT_IS_FOR_AWS_RESOURCE, Tri, action_matches, aws_principals, eval_condition, statements, str_list,
};

/// KMS quota "Key policy document size": 32 KB (32,768 bytes), counted on the document
/// as sent, whitespace included (KMS developer guide, "Quotas", resource quotas).
pub const MAX_KEY_POLICY_BYTES: usize = 32 * 1024;

/// What the target account needs on the source key to copy a snapshot encrypted under
/// it (EBS user guide, "Share a KMS key"): read the key, decrypt the snapshot's data
/// key, re-encrypt it under the target key, and let EBS create grants for the copy.
pub const GRANT_ACTIONS: [&str; 5] =
    ["kms:DescribeKey", "kms:Decrypt", "kms:ReEncrypt*", "kms:GenerateDataKey*", "kms:CreateGrant"];

/// The concrete KMS actions `GRANT_ACTIONS` stand for once their wildcards are
/// expanded, each with the value of `kms:GrantIsForAWSResource` in the requests our
/// statement allows (present only on the grant operations). Another policy grants as
/// much as ours when it allows every one of these in that context.
const GRANTED_REQUESTS: [(&str, Option<bool>); 9] = [
    ("kms:DescribeKey", None),
    ("kms:Decrypt", None),
    ("kms:ReEncryptFrom", None),
    ("kms:ReEncryptTo", None),
    ("kms:GenerateDataKey", None),
    ("kms:GenerateDataKeyWithoutPlaintext", None),
    ("kms:GenerateDataKeyPair", None),
    ("kms:GenerateDataKeyPairWithoutPlaintext", None),
    ("kms:CreateGrant", Some(true)),
];

/// What every share statement's Sid starts with, whichever plan added it.
const SID_PREFIX: &str = "SnapferryShare-";

/// The target account may use the source key for a cross-account EBS snapshot copy,
/// on behalf of one plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub plan: PlanName,
    pub target_account: AccountId,
    /// The ARN partition of the source key (`aws`, `aws-cn`, `aws-us-gov`).
    pub partition: &'static str,
}

impl Grant {
    /// A grant for the key in `source_region`, whose partition the principal ARN uses.
    pub fn new(plan: PlanName, target_account: AccountId, source_region: &Region) -> Self {
        Self { plan, target_account, partition: source_region.partition() }
    }

    /// `SnapferryShare-<plan>-<account>`: one statement per plan and target account, so
    /// two plans sharing one key can each add and remove their own.
    pub fn sid(&self) -> String {
        format!("{SID_PREFIX}{}-{}", self.plan, self.target_account)
    }

    /// The root ARN of the target account: the key policy delegates to the account's
    /// IAM, where the target role's own policy must allow the key too.
    pub fn principal_arn(&self) -> String {
        format!("arn:{}:iam::{}:root", self.partition, self.target_account)
    }
}

/// The outcome of `ensure_grant`.
#[derive(Debug, Clone, PartialEq)]
pub struct GrantChange {
    /// The policy to put: pretty-printed JSON when that fits the quota, compact JSON
    /// otherwise. Equal in content to the input when `changed` is false.
    pub new_policy: String,
    /// Whether the policy must be put (PutKeyPolicy) for the grant to hold.
    pub changed: bool,
    /// The statement this grant stands for, as added (or as it would be added).
    pub statement: Value,
    /// Whether the input policy already granted the target account everything the
    /// statement grants, through our statement or through others.
    pub already_present: bool,
}

/// The one statement that shares the source key with the target account.
pub fn grant_statement(g: &Grant) -> Value {
    json!({
        "Sid": g.sid(),
        "Effect": "Allow",
        "Principal": { "AWS": g.principal_arn() },
        "Action": GRANT_ACTIONS,
        "Resource": "*",
        // kms:GrantIsForAWSResource is only in the request context of the grant
        // operations (CreateGrant, ListGrants, RevokeGrant). With BoolIfExists the one
        // statement limits CreateGrant to grants EBS makes for the copy, while
        // Decrypt, ReEncrypt*, GenerateDataKey* and DescribeKey, whose requests never
        // carry the key, pass the condition and stay allowed. A plain Bool would deny
        // those, and two statements would be two things to add and remove.
        "Condition": { "BoolIfExists": { (GRANT_IS_FOR_AWS_RESOURCE): "true" } },
    })
}

/// Adds the share statement to a key policy unless the policy already grants the target
/// account as much, whatever the Sids of the statements that do.
///
/// A statement with our Sid but other content is replaced in place by ours (and a
/// repeated one dropped); every other statement is kept as it was, in order. A policy
/// whose `Statement` is a single object becomes a list only if ours must be added.
pub fn ensure_grant(policy_json: &str, g: &Grant) -> Result<GrantChange, PolicyError> {
    let mut policy: Value = serde_json::from_str(policy_json).map_err(PolicyError::InvalidJson)?;
    let ours = grant_statement(g);
    let sid = g.sid();
    let already_present = grant_covered(&statements(&policy)?, g);

    let mut changed = false;
    let slot = policy.get_mut("Statement").ok_or(PolicyError::NoStatement)?;
    match slot {
        Value::Array(items) => {
            match items.iter().position(|s| has_sid(s, &sid)) {
                Some(first) => {
                    if items[first] != ours {
                        items[first] = ours.clone();
                        changed = true;
                    }
                    // KMS wants Sids unique; a second copy of ours can only be stale.
                    let before = items.len();
                    let mut index = 0;
                    items.retain(|s| {
                        let keep = index <= first || !has_sid(s, &sid);
                        index += 1;
                        keep
                    });
                    changed |= items.len() != before;
                }
                None if !already_present => {
                    items.push(ours.clone());
                    changed = true;
                }
                None => {}
            }
        }
        single => {
            if has_sid(single, &sid) {
                if *single != ours {
                    *single = ours.clone();
                    changed = true;
                }
            } else if !already_present {
                *single = Value::Array(vec![single.take(), ours.clone()]);
                changed = true;
            }
        }
    }

    let new_policy = render(&policy);
    if changed && new_policy.len() > MAX_KEY_POLICY_BYTES {
        return Err(PolicyError::TooLarge { sid, bytes: new_policy.len(), limit: MAX_KEY_POLICY_BYTES });
    }
    Ok(GrantChange { new_policy, changed, statement: ours, already_present })
}

/// Removes the statement with our Sid, and only that one. Returns the policy and
/// whether it changed. Coverage given by other statements is not ours to take away.
pub fn revoke_grant(policy_json: &str, g: &Grant) -> Result<(String, bool), PolicyError> {
    let mut policy: Value = serde_json::from_str(policy_json).map_err(PolicyError::InvalidJson)?;
    statements(&policy)?;
    let sid = g.sid();
    let slot = policy.get_mut("Statement").ok_or(PolicyError::NoStatement)?;
    let changed = match slot {
        Value::Array(items) => {
            let before = items.len();
            items.retain(|s| !has_sid(s, &sid));
            if items.is_empty() && before > 0 {
                return Err(PolicyError::WouldBeEmpty { sid });
            }
            items.len() != before
        }
        single if has_sid(single, &sid) => return Err(PolicyError::WouldBeEmpty { sid }),
        _ => false,
    };
    Ok((render(&policy), changed))
}

fn has_sid(stmt: &Value, sid: &str) -> bool {
    stmt.get("Sid").and_then(Value::as_str) == Some(sid)
}

/// Pretty JSON for people reading the key policy in the console, unless the extra
/// whitespace alone would push it over the quota: then compact JSON, same content.
fn render(policy: &Value) -> String {
    let pretty = format!("{policy:#}");
    if pretty.len() <= MAX_KEY_POLICY_BYTES { pretty } else { policy.to_string() }
}

/// Whether the statements, together, allow the target account every request our
/// statement allows. Coverage may be spread over statements, as the console does it:
/// one statement for use of the key, one for CreateGrant with `Bool`
/// `kms:GrantIsForAWSResource`.
///
/// Statements another plan added (`SnapferryShare-` with another plan or account) do
/// not count: that plan's cleanup removes them, and our grant must outlive it.
fn grant_covered(stmts: &[&Value], g: &Grant) -> bool {
    let sid = g.sid();
    let counted: Vec<&Value> = stmts
        .iter()
        .copied()
        .filter(|s| s.get("Sid").and_then(Value::as_str).is_none_or(|s| s == sid || !s.starts_with(SID_PREFIX)))
        .collect();
    GRANTED_REQUESTS.iter().all(|&(action, context)| counted.iter().any(|s| statement_grants(s, g, action, context)))
}

/// Whether one statement allows the target account one request, in a form we can vouch
/// for. Anything else counts as not granting, which at worst adds our statement next to
/// an equivalent one: harmless, where a wrong "already granted" would fail the copy.
///
/// - Effect Allow, and no NotPrincipal, NotAction or NotResource.
/// - The principal is the account's root ARN or its bare id (delegation to the whole
///   account), or `*` on a statement without any Condition. A role of the target
///   account does not count: the run's role may be another one.
/// - An Action pattern matches the action (wildcards, any case).
/// - Resource is `*`, which in a key policy means the key itself.
/// - Condition is absent or, in the request's context, surely holds; only `Bool` and
///   `BoolIfExists` on `kms:GrantIsForAWSResource` are understood.
fn statement_grants(stmt: &Value, g: &Grant, action: &str, context: Option<bool>) -> bool {
    if stmt.get("Effect").and_then(Value::as_str) != Some("Allow") {
        return false;
    }
    if ["NotPrincipal", "NotAction", "NotResource"].iter().any(|k| stmt.get(k).is_some()) {
        return false;
    }
    let root = g.principal_arn();
    let condition = stmt.get("Condition");
    let principal_ok = stmt.get("Principal").is_some_and(|p| {
        aws_principals(p)
            .iter()
            .any(|p| *p == root || *p == g.target_account.as_str() || (*p == "*" && condition.is_none()))
    });
    let action_ok = stmt.get("Action").is_some_and(|a| str_list(a).iter().any(|p| action_matches(p, action)));
    let resource_ok = stmt.get("Resource").is_some_and(|r| str_list(r).contains(&"*"));
    principal_ok && action_ok && resource_ok && eval_condition(condition, context) == Tri::Yes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant() -> Grant {
        Grant::new(
            PlanName::parse("prod-db-dr").unwrap(),
            AccountId::parse("222222222222").unwrap(),
            &Region::parse("cn-north-1").unwrap(),
        )
    }

    #[test]
    fn partition_follows_the_source_region() {
        assert_eq!(grant().principal_arn(), "arn:aws-cn:iam::222222222222:root");
    }

    #[test]
    fn our_statement_covers_itself() {
        let g = grant();
        let s = grant_statement(&g);
        assert!(grant_covered(&[&s], &g));
    }

    #[test]
    fn render_falls_back_to_compact_over_quota() {
        let big = "x".repeat(MAX_KEY_POLICY_BYTES - 200);
        let v = json!({"Statement": [{"Sid": big, "A": (0..60).collect::<Vec<u32>>()}]});
        let pretty = format!("{v:#}");
        assert!(pretty.len() > MAX_KEY_POLICY_BYTES);
        assert_eq!(render(&v), v.to_string());
    }
}
