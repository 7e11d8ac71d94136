//! Reading key policy statements: wildcard action matching, principals, the one
//! condition key a share depends on, and `allows`, a small evaluator of a key policy for
//! one account and one action.
//!
//! The evaluator is deliberately narrow. It understands what a snapshot share needs and
//! nothing more; where it cannot tell, it fails closed: an Allow it cannot evaluate does
//! not apply, a Deny it cannot evaluate does.

use serde_json::Value;

use crate::ids::AccountId;

use super::PolicyError;

/// The condition key KMS sets on CreateGrant, ListGrants and RevokeGrant requests: true
/// when the grant is made by an AWS service (EBS) on behalf of the caller.
pub(crate) const GRANT_IS_FOR_AWS_RESOURCE: &str = "kms:GrantIsForAWSResource";

/// A three-valued answer: whether a part of a statement matches a request, or whether
/// the evaluator cannot tell (an operator or element it does not understand).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tri {
    Yes,
    No,
    Unknown,
}

impl Tri {
    fn from_bool(b: bool) -> Self {
        if b { Tri::Yes } else { Tri::No }
    }

    /// Both must hold. A definite No wins over Unknown: a statement whose principal does
    /// not match does not apply, whatever its conditions say.
    pub(crate) fn and(self, other: Tri) -> Tri {
        match (self, other) {
            (Tri::No, _) | (_, Tri::No) => Tri::No,
            (Tri::Unknown, _) | (_, Tri::Unknown) => Tri::Unknown,
            _ => Tri::Yes,
        }
    }
}

/// Whether an IAM action pattern matches an action: case-insensitive, `*` matches any
/// run of characters and `?` any one character, as in IAM.
pub fn action_matches(pattern: &str, action: &str) -> bool {
    glob_match(&pattern.to_ascii_lowercase().into_bytes(), &action.to_ascii_lowercase().into_bytes())
}

/// Iterative glob matching with backtracking to the last `*`: linear in practice and
/// never recursive, so a pattern of many stars cannot blow the stack.
fn glob_match(p: &[u8], t: &[u8]) -> bool {
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == b'?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

/// The strings of an element that may be a string or a list of strings. Anything else
/// (a number, an object) contributes nothing.
pub(crate) fn str_list(v: &Value) -> Vec<&str> {
    match v {
        Value::String(s) => vec![s.as_str()],
        Value::Array(items) => items.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    }
}

/// The statements of a parsed policy, whether `Statement` is a list or a single object.
pub(crate) fn statements(policy: &Value) -> Result<Vec<&Value>, PolicyError> {
    let obj = policy.as_object().ok_or(PolicyError::NotAnObject)?;
    match obj.get("Statement") {
        None => Err(PolicyError::NoStatement),
        Some(Value::Array(items)) => {
            if items.iter().all(Value::is_object) {
                Ok(items.iter().collect())
            } else {
                Err(PolicyError::BadStatement)
            }
        }
        Some(one @ Value::Object(_)) => Ok(vec![one]),
        Some(_) => Err(PolicyError::BadStatement),
    }
}

/// The AWS principals a `Principal` (or `NotPrincipal`) element names. `"*"` alone means
/// everyone; service and federated principals never name an account.
pub(crate) fn aws_principals(p: &Value) -> Vec<&str> {
    match p {
        Value::String(s) if s == "*" => vec!["*"],
        Value::Object(m) => m.get("AWS").map(str_list).unwrap_or_default(),
        _ => Vec::new(),
    }
}

/// The account an ARN names in its fifth field (`arn:P:iam::ACCOUNT:...`), if any.
fn arn_account(arn: &str) -> Option<&str> {
    let rest = arn.strip_prefix("arn:")?;
    rest.split(':').nth(3).filter(|a| !a.is_empty())
}

/// Whether a principal string stands for the account or something in it: `*`, the bare
/// account id, its root ARN, or any ARN of that account (a role, an assumed role).
fn principal_in_account(p: &str, account: &AccountId) -> bool {
    p == "*" || p == account.as_str() || arn_account(p) == Some(account.as_str())
}

/// Evaluates a `Condition` block in a request context that has at most one key,
/// `kms:GrantIsForAWSResource` (`None` when the request does not carry it).
///
/// Supported: `Bool` and `BoolIfExists` on that key, with `"true"`/`"false"` as strings
/// or JSON booleans, alone or in a list (any value may match). Every other operator or
/// key gives `Unknown`. Blocks are ANDed, so a definite No anywhere decides.
pub(crate) fn eval_condition(cond: Option<&Value>, grant_is_for_aws_resource: Option<bool>) -> Tri {
    let Some(cond) = cond else { return Tri::Yes };
    let Some(ops) = cond.as_object() else {
        return Tri::Unknown;
    };
    let mut result = Tri::Yes;
    for (op, block) in ops {
        let if_exists = match op.as_str() {
            "Bool" => false,
            "BoolIfExists" => true,
            _ => {
                result = result.and(Tri::Unknown);
                continue;
            }
        };
        let Some(keys) = block.as_object() else {
            result = result.and(Tri::Unknown);
            continue;
        };
        for (key, expected) in keys {
            if !key.eq_ignore_ascii_case(GRANT_IS_FOR_AWS_RESOURCE) {
                result = result.and(Tri::Unknown);
                continue;
            }
            let outcome = match grant_is_for_aws_resource {
                // IfExists: a key absent from the request satisfies the condition; plain
                // Bool on an absent key does not.
                None => if_exists,
                Some(actual) => bool_values(expected).contains(&actual),
            };
            result = result.and(Tri::from_bool(outcome));
        }
    }
    result
}

/// The boolean values a condition lists; strings other than true/false are dropped.
fn bool_values(v: &Value) -> Vec<bool> {
    let one = |v: &Value| match v {
        Value::Bool(b) => Some(*b),
        Value::String(s) if s.eq_ignore_ascii_case("true") => Some(true),
        Value::String(s) if s.eq_ignore_ascii_case("false") => Some(false),
        _ => None,
    };
    match v {
        Value::Array(items) => items.iter().filter_map(one).collect(),
        other => one(other).into_iter().collect(),
    }
}

/// Whether one statement applies to a request by `account` for `action`.
fn statement_applies(stmt: &Value, account: &AccountId, action: &str, grant_is_for_aws_resource: Option<bool>) -> Tri {
    let principal = match (stmt.get("Principal"), stmt.get("NotPrincipal")) {
        (Some(p), None) => Tri::from_bool(aws_principals(p).iter().any(|p| principal_in_account(p, account))),
        (None, Some(np)) => Tri::from_bool(!aws_principals(np).iter().any(|p| principal_in_account(p, account))),
        // A key policy statement without a principal is malformed, and one with both
        // is ambiguous: neither grants nor denies anything we can vouch for.
        (None, None) | (Some(_), Some(_)) => Tri::Unknown,
    };
    let action = match (stmt.get("Action"), stmt.get("NotAction")) {
        (Some(a), None) => Tri::from_bool(str_list(a).iter().any(|p| action_matches(p, action))),
        (None, Some(na)) => Tri::from_bool(!str_list(na).iter().any(|p| action_matches(p, action))),
        (None, None) | (Some(_), Some(_)) => Tri::Unknown,
    };
    // In a key policy, Resource names the key the policy is attached to ("*" by
    // convention), so any Resource matches. NotResource has no sensible meaning there.
    let resource = if stmt.get("NotResource").is_some() { Tri::Unknown } else { Tri::Yes };
    let condition = eval_condition(stmt.get("Condition"), grant_is_for_aws_resource);
    principal.and(action).and(resource).and(condition)
}

/// Whether a key policy lets `account` (its root, or any principal of it) perform
/// `action` on the key, given the value of `kms:GrantIsForAWSResource` in the request
/// (`None` when absent, as for every action except the grant operations).
///
/// An explicit Deny wins over any Allow; without an Allow the answer is no. Principals
/// match as `*`, the account id, its root ARN or any ARN in the account, so a Deny that
/// names one role of the account answers "denied" for the account. Conditions:
/// only `Bool` and `BoolIfExists` on `kms:GrantIsForAWSResource` are understood; a
/// statement with any other condition operator or key does not apply when it allows
/// and does apply when it denies, so the answer errs towards "denied". A policy that
/// is not valid JSON allows nothing.
pub fn allows(policy_json: &str, account: &AccountId, action: &str, grant_is_for_aws_resource: Option<bool>) -> bool {
    let Ok(policy) = serde_json::from_str::<Value>(policy_json) else {
        return false;
    };
    let Ok(stmts) = statements(&policy) else {
        return false;
    };
    let mut allowed = false;
    for stmt in stmts {
        let applies = statement_applies(stmt, account, action, grant_is_for_aws_resource);
        match stmt.get("Effect").and_then(Value::as_str) {
            Some("Deny") if applies != Tri::No => return false,
            Some("Allow") if applies == Tri::Yes => allowed = true,
            _ => {}
        }
    }
    allowed
}

/// One request to an identity-based IAM policy: the action, the resource ARN and the
/// condition keys the request carries (`aws:ResourceTag/...`, `ec2:CreateAction`,
/// `kms:GrantIsForAWSResource`), for [`identity_allows`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IamRequest {
    pub action: String,
    pub resource: String,
    pub context: std::collections::BTreeMap<String, String>,
}

/// Whether an identity-based policy (the documents of `iam.rs`) allows a request.
///
/// Understood: `Action`/`NotAction` with IAM wildcards, `Resource`/`NotResource` with
/// `*` and `?` (case-sensitive, as ARNs are), and the condition operators
/// `StringEquals`, `StringLike` and `Bool` (keys case-insensitive, missing keys never
/// match). Anything else fails closed: such an Allow does not apply, such a Deny does.
pub fn identity_allows(policy: &Value, req: &IamRequest) -> bool {
    let Ok(stmts) = statements(policy) else {
        return false;
    };
    let mut allowed = false;
    for stmt in stmts {
        let action = match (stmt.get("Action"), stmt.get("NotAction")) {
            (Some(a), None) => Tri::from_bool(str_list(a).iter().any(|p| action_matches(p, &req.action))),
            (None, Some(na)) => Tri::from_bool(!str_list(na).iter().any(|p| action_matches(p, &req.action))),
            _ => Tri::Unknown,
        };
        let arn = |p: &&str| glob_match(p.as_bytes(), req.resource.as_bytes());
        let resource = match (stmt.get("Resource"), stmt.get("NotResource")) {
            (Some(r), None) => Tri::from_bool(str_list(r).iter().any(arn)),
            (None, Some(nr)) => Tri::from_bool(!str_list(nr).iter().any(arn)),
            _ => Tri::Unknown,
        };
        let applies = action.and(resource).and(identity_condition(stmt.get("Condition"), &req.context));
        match stmt.get("Effect").and_then(Value::as_str) {
            Some("Deny") if applies != Tri::No => return false,
            Some("Allow") if applies == Tri::Yes => allowed = true,
            _ => {}
        }
    }
    allowed
}

fn identity_condition(cond: Option<&Value>, context: &std::collections::BTreeMap<String, String>) -> Tri {
    let Some(cond) = cond else { return Tri::Yes };
    let Some(ops) = cond.as_object() else { return Tri::Unknown };
    let mut result = Tri::Yes;
    for (op, block) in ops {
        let Some(keys) = block.as_object() else { return Tri::Unknown };
        for (key, expected) in keys {
            let actual = context.iter().find(|(k, _)| k.eq_ignore_ascii_case(key)).map(|(_, v)| v.as_str());
            let expected = match expected {
                Value::Bool(b) => vec![if *b { "true" } else { "false" }],
                other => str_list(other),
            };
            let holds = match (op.as_str(), actual) {
                ("StringEquals" | "StringLike" | "Bool", None) => Tri::No,
                ("StringEquals", Some(a)) => Tri::from_bool(expected.contains(&a)),
                ("StringLike", Some(a)) => {
                    Tri::from_bool(expected.iter().any(|e| glob_match(e.as_bytes(), a.as_bytes())))
                }
                ("Bool", Some(a)) => Tri::from_bool(expected.iter().any(|e| e.eq_ignore_ascii_case(a))),
                ("NumericLessThanEquals" | "NumericEquals", None) => Tri::No,
                ("NumericLessThanEquals", Some(a)) => {
                    match (a.parse::<f64>(), expected.first().map(|e| e.parse::<f64>())) {
                        (Ok(a), Some(Ok(e))) => Tri::from_bool(a <= e),
                        _ => Tri::No,
                    }
                }
                ("NumericEquals", Some(a)) => Tri::from_bool(
                    expected
                        .iter()
                        .any(|e| e.parse::<f64>().ok().zip(a.parse::<f64>().ok()).is_some_and(|(e, a)| e == a)),
                ),
                _ => Tri::Unknown,
            };
            result = result.and(holds);
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn glob_matches_like_iam() {
        assert!(action_matches("kms:*", "kms:Decrypt"));
        assert!(action_matches("*", "kms:Decrypt"));
        assert!(action_matches("KMS:decrypt", "kms:Decrypt"));
        assert!(action_matches("kms:ReEncrypt*", "kms:ReEncryptFrom"));
        assert!(action_matches("kms:ReEncrypt*", "kms:ReEncrypt"));
        assert!(action_matches("kms:Re?ncrypt*", "kms:ReEncryptTo"));
        assert!(action_matches("kms:*Key*", "kms:GenerateDataKeyPair"));
        assert!(!action_matches("kms:Encrypt", "kms:ReEncryptFrom"));
        assert!(!action_matches("kms:GenerateDataKey", "kms:GenerateDataKeyPair"));
        assert!(!action_matches("ec2:*", "kms:Decrypt"));
    }

    #[test]
    fn conditions_on_grant_key() {
        let bool_true = json!({"Bool": {"kms:GrantIsForAWSResource": "true"}});
        let if_exists = json!({"BoolIfExists": {"kms:grantisforawsresource": true}});
        assert_eq!(eval_condition(Some(&bool_true), Some(true)), Tri::Yes);
        assert_eq!(eval_condition(Some(&bool_true), Some(false)), Tri::No);
        assert_eq!(eval_condition(Some(&bool_true), None), Tri::No);
        assert_eq!(eval_condition(Some(&if_exists), None), Tri::Yes);
        assert_eq!(eval_condition(Some(&if_exists), Some(false)), Tri::No);
        let other = json!({"StringEquals": {"kms:ViaService": "ec2.us-east-1.amazonaws.com"}});
        assert_eq!(eval_condition(Some(&other), Some(true)), Tri::Unknown);
        let mixed = json!({"StringEquals": {"kms:CallerAccount": "1"}, "Bool": {"kms:GrantIsForAWSResource": "true"}});
        assert_eq!(eval_condition(Some(&mixed), None), Tri::No);
    }
}
