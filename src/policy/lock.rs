//! What keeps a locked copy readable: a locked snapshot cannot be deleted, but its KMS
//! key can be scheduled for deletion or disabled (EBS user guide, "Snapshot lock
//! considerations"), which leaves the copy unreadable. This module writes the key
//! policy statement and the service control policy that close that hole, and judges
//! whether a key policy already denies those actions to all but a break-glass
//! principal.

use serde_json::{Value, json};

use super::eval::action_matches;

/// The key actions that take a locked copy's data away.
pub const KEY_REMOVAL_ACTIONS: [&str; 2] = ["kms:ScheduleKeyDeletion", "kms:DisableKey"];

/// Condition operators that exempt principals by ARN (the break-glass role).
const EXEMPTING_OPERATORS: [&str; 4] = ["ArnNotLike", "ArnNotEquals", "StringNotLike", "StringNotEquals"];

/// The ARN written for the break-glass role the operator names.
pub fn break_glass_placeholder(partition: &str, account: &str) -> String {
    format!("arn:{partition}:iam::{account}:role/<break-glass role>")
}

/// The statement to add to a target key's policy: nobody but the break-glass role
/// may schedule the key's deletion or disable it.
pub fn key_deny_statement(break_glass: &str) -> Value {
    json!({
        "Sid": "SnapferryProtectLockedCopies",
        "Effect": "Deny",
        "Principal": {"AWS": "*"},
        "Action": KEY_REMOVAL_ACTIONS,
        "Resource": "*",
        "Condition": {"ArnNotLike": {"aws:PrincipalArn": break_glass}},
    })
}

/// A service control policy for the DR account: nobody but the break-glass role may
/// unlock a snapshot or take its key away.
pub fn dr_account_scp(break_glass: &str) -> Value {
    json!({
        "Version": "2012-10-17",
        "Statement": [{
            "Sid": "SnapferryProtectLockedCopies",
            "Effect": "Deny",
            "Action": ["ec2:UnlockSnapshot", KEY_REMOVAL_ACTIONS[0], KEY_REMOVAL_ACTIONS[1]],
            "Resource": "*",
            "Condition": {"ArnNotLike": {"aws:PrincipalArn": break_glass}},
        }],
    })
}

fn strings(v: &Value) -> Vec<&str> {
    match v {
        Value::String(s) => vec![s.as_str()],
        Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
        _ => vec![],
    }
}

/// True when the principal of a statement is everyone.
fn everyone(stmt: &Value) -> bool {
    match stmt.get("Principal") {
        Some(Value::String(s)) => s == "*",
        Some(Value::Object(o)) => o.get("AWS").is_some_and(|a| strings(a).contains(&"*")),
        _ => false,
    }
}

/// True when a Deny statement's condition only exempts some principals by ARN (or
/// there is no condition at all): it denies everyone else.
fn exempts_only_principals(stmt: &Value) -> bool {
    let Some(cond) = stmt.get("Condition") else { return true };
    let Some(ops) = cond.as_object() else { return false };
    ops.iter().all(|(op, block)| {
        EXEMPTING_OPERATORS.contains(&op.as_str())
            && block.as_object().is_some_and(|keys| {
                keys.keys().all(|k| k.eq_ignore_ascii_case("aws:PrincipalArn") || k.eq_ignore_ascii_case("aws:userid"))
            })
    })
}

/// True when `policy` (a key policy's JSON text) denies both key removal actions to
/// every principal but those its condition exempts by ARN.
pub fn denies_key_removal(policy: &str) -> bool {
    let Ok(doc) = serde_json::from_str::<Value>(policy) else { return false };
    let stmts: Vec<&Value> = match doc.get("Statement") {
        Some(Value::Array(a)) => a.iter().collect(),
        Some(o @ Value::Object(_)) => vec![o],
        _ => return false,
    };
    KEY_REMOVAL_ACTIONS.iter().all(|action| {
        stmts.iter().any(|s| {
            s.get("Effect").and_then(Value::as_str) == Some("Deny")
                && everyone(s)
                && s.get("Action").is_some_and(|a| strings(a).iter().any(|p| action_matches(p, action)))
                && s.get("Resource").is_some_and(|r| strings(r).contains(&"*"))
                && exempts_only_principals(s)
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_statement_it_prints_is_the_one_it_accepts() {
        let bg = break_glass_placeholder("aws", "222222222222");
        let with = json!({"Version": "2012-10-17", "Statement": [
            {"Sid": "root", "Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::222222222222:root"}, "Action": "kms:*", "Resource": "*"},
            key_deny_statement(&bg)]});
        assert!(denies_key_removal(&with.to_string()));
        let without = json!({"Statement": [
            {"Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::222222222222:root"}, "Action": "kms:*", "Resource": "*"}]});
        assert!(!denies_key_removal(&without.to_string()));
        // Only one of the two actions, or a deny limited by something else, is not enough.
        let one =
            json!({"Statement": [{"Effect": "Deny", "Principal": "*", "Action": "kms:DisableKey", "Resource": "*"}]});
        assert!(!denies_key_removal(&one.to_string()));
        let scoped = json!({"Statement": [{"Effect": "Deny", "Principal": "*", "Action": "kms:*", "Resource": "*",
            "Condition": {"StringEquals": {"aws:RequestedRegion": "eu-west-1"}}}]});
        assert!(!denies_key_removal(&scoped.to_string()));
        let all =
            json!({"Statement": {"Effect": "Deny", "Principal": {"AWS": ["*"]}, "Action": "kms:*", "Resource": "*"}});
        assert!(denies_key_removal(&all.to_string()));
    }
}
