//! Key policy editing, evaluation, diff and IAM documents, against fixtures shaped like
//! the policies KMS and its console write, and against generated policies.

use proptest::prelude::*;
use serde_json::{Value, json};
use snapferry::ids::{AccountId, PlanName, Region, RoleArn};
use snapferry::policy::{
    GRANT_ACTIONS, Grant, IamContext, MAX_KEY_POLICY_BYTES, PolicyError, allows, diff, documents, ensure_grant,
    grant_statement, revoke_grant, trust_principal,
};

const KMS_DEFAULT: &str = include_str!("../fixtures/policies/kms-default.json");
const CONSOLE_DEFAULT: &str = include_str!("../fixtures/policies/console-default.json");
const CONSOLE_SHARED: &str = include_str!("../fixtures/policies/console-shared.json");
const SINGLE_STATEMENT: &str = include_str!("../fixtures/policies/single-statement.json");
const STRING_PRINCIPALS: &str = include_str!("../fixtures/policies/string-principals.json");
const WITH_CONDITIONS: &str = include_str!("../fixtures/policies/with-conditions.json");
const WITH_DENY: &str = include_str!("../fixtures/policies/with-deny.json");
const OURS_SAME: &str = include_str!("../fixtures/policies/ours-same.json");
const OURS_DIFFERENT: &str = include_str!("../fixtures/policies/ours-different.json");

const SID: &str = "SnapferryShare-prod-db-dr-222222222222";

fn grant() -> Grant {
    Grant::new(PlanName::parse("prod-db-dr").unwrap(), target(), &Region::parse("us-east-1").unwrap())
}

fn source() -> AccountId {
    AccountId::parse("111111111111").unwrap()
}

fn target() -> AccountId {
    AccountId::parse("222222222222").unwrap()
}

fn parse(s: &str) -> Value {
    serde_json::from_str(s).unwrap()
}

/// The statements of a policy as a list, whether written as a list or a single object.
fn stmts(policy: &Value) -> Vec<Value> {
    match &policy["Statement"] {
        Value::Array(items) => items.clone(),
        one => vec![one.clone()],
    }
}

fn without_ours(policy: &Value) -> Vec<Value> {
    stmts(policy).into_iter().filter(|s| s["Sid"] != SID).collect()
}

/// Every policy field but Statement, to check they survive an edit.
fn other_fields(policy: &Value) -> Vec<(String, Value)> {
    policy.as_object().unwrap().iter().filter(|(k, _)| *k != "Statement").map(|(k, v)| (k.clone(), v.clone())).collect()
}

#[test]
fn grant_statement_is_exactly_the_share() {
    assert_eq!(
        grant_statement(&grant()),
        json!({
            "Sid": SID,
            "Effect": "Allow",
            "Principal": {"AWS": "arn:aws:iam::222222222222:root"},
            "Action": ["kms:DescribeKey", "kms:Decrypt", "kms:ReEncrypt*", "kms:GenerateDataKey*", "kms:CreateGrant"],
            "Resource": "*",
            "Condition": {"BoolIfExists": {"kms:GrantIsForAWSResource": "true"}},
        })
    );
    assert_eq!(GRANT_ACTIONS.len(), 5);
    // The statement text keeps its field order, as people read it in the console.
    let text = serde_json::to_string(&grant_statement(&grant())).unwrap();
    assert!(text.starts_with(r#"{"Sid":"#), "{text}");
}

#[test]
fn partition_comes_from_the_source_region() {
    let g = Grant::new(PlanName::parse("gov").unwrap(), target(), &Region::parse("us-gov-west-1").unwrap());
    assert_eq!(grant_statement(&g)["Principal"]["AWS"], "arn:aws-us-gov:iam::222222222222:root");
}

#[test]
fn adds_to_the_kms_default_policy_and_keeps_the_rest() {
    let change = ensure_grant(KMS_DEFAULT, &grant()).unwrap();
    assert!(change.changed);
    assert!(!change.already_present);
    assert_eq!(change.statement, grant_statement(&grant()));
    let old = parse(KMS_DEFAULT);
    let new = parse(&change.new_policy);
    assert_eq!(other_fields(&new), other_fields(&old));
    assert_eq!(without_ours(&new), stmts(&old));
    assert_eq!(stmts(&new).last(), Some(&grant_statement(&grant())));
    // Top-level key order survives: Version, Id, Statement.
    let keys: Vec<&String> = new.as_object().unwrap().keys().collect();
    assert_eq!(keys, ["Version", "Id", "Statement"]);
    // Pretty-printed for the console.
    assert!(change.new_policy.contains("\n  \"Statement\": ["));
}

#[test]
fn console_default_key_users_do_not_cover_another_account() {
    let change = ensure_grant(CONSOLE_DEFAULT, &grant()).unwrap();
    assert!(change.changed);
    assert!(!change.already_present);
    let new = parse(&change.new_policy);
    assert_eq!(without_ours(&new), stmts(&parse(CONSOLE_DEFAULT)));
    assert_eq!(stmts(&new).len(), 5);
}

#[test]
fn console_pair_of_statements_counts_as_the_grant() {
    let change = ensure_grant(CONSOLE_SHARED, &grant()).unwrap();
    assert!(change.already_present);
    assert!(!change.changed);
    assert_eq!(parse(&change.new_policy), parse(CONSOLE_SHARED));
}

#[test]
fn bare_account_ids_lists_and_json_booleans_count_as_the_grant() {
    let change = ensure_grant(STRING_PRINCIPALS, &grant()).unwrap();
    assert!(change.already_present);
    assert!(!change.changed);
}

#[test]
fn an_equal_statement_under_another_sid_counts_as_the_grant() {
    let change = ensure_grant(WITH_DENY, &grant()).unwrap();
    assert!(change.already_present);
    assert!(!change.changed);
    assert_eq!(parse(&change.new_policy), parse(WITH_DENY));
}

#[test]
fn conditions_we_cannot_reason_about_do_not_count() {
    let change = ensure_grant(WITH_CONDITIONS, &grant()).unwrap();
    assert!(!change.already_present);
    assert!(change.changed);
    assert_eq!(without_ours(&parse(&change.new_policy)), stmts(&parse(WITH_CONDITIONS)));
}

#[test]
fn a_single_statement_object_becomes_a_list_only_when_we_add() {
    let change = ensure_grant(SINGLE_STATEMENT, &grant()).unwrap();
    assert!(change.changed);
    let new = parse(&change.new_policy);
    assert_eq!(new["Statement"], json!([parse(SINGLE_STATEMENT)["Statement"], grant_statement(&grant())]));

    let ours_alone = json!({"Version": "2012-10-17", "Statement": grant_statement(&grant())});
    let change = ensure_grant(&ours_alone.to_string(), &grant()).unwrap();
    assert!(!change.changed && change.already_present);
    assert!(parse(&change.new_policy)["Statement"].is_object());
}

#[test]
fn our_statement_already_there_changes_nothing() {
    let change = ensure_grant(OURS_SAME, &grant()).unwrap();
    assert!(change.already_present);
    assert!(!change.changed);
    assert_eq!(parse(&change.new_policy), parse(OURS_SAME));
}

#[test]
fn our_sid_with_other_content_is_replaced_in_place() {
    let old = parse(OURS_DIFFERENT);
    let change = ensure_grant(OURS_DIFFERENT, &grant()).unwrap();
    assert!(change.changed);
    assert!(!change.already_present);
    let new = parse(&change.new_policy);
    let (old_stmts, new_stmts) = (stmts(&old), stmts(&new));
    assert_eq!(new_stmts.len(), old_stmts.len());
    assert_eq!(old_stmts[1]["Sid"], SID);
    assert_eq!(new_stmts[1], grant_statement(&grant()));
    for i in [0, 2, 3, 4] {
        assert_eq!(new_stmts[i], old_stmts[i]);
    }
}

#[test]
fn a_repeated_sid_of_ours_is_dropped() {
    let mut policy = parse(OURS_SAME);
    let ours = grant_statement(&grant());
    policy["Statement"].as_array_mut().unwrap().push(ours);
    let change = ensure_grant(&policy.to_string(), &grant()).unwrap();
    assert!(change.changed);
    assert_eq!(parse(&change.new_policy), parse(OURS_SAME));
}

#[test]
fn revoke_removes_only_our_statement() {
    let (text, changed) = revoke_grant(OURS_SAME, &grant()).unwrap();
    assert!(changed);
    assert_eq!(parse(&text), parse(CONSOLE_DEFAULT));

    // The console's grant is not ours to take away.
    let (text, changed) = revoke_grant(CONSOLE_SHARED, &grant()).unwrap();
    assert!(!changed);
    assert_eq!(parse(&text), parse(CONSOLE_SHARED));

    let (text, changed) = revoke_grant(SINGLE_STATEMENT, &grant()).unwrap();
    assert!(!changed);
    assert_eq!(parse(&text), parse(SINGLE_STATEMENT));
}

#[test]
fn plans_sharing_one_key_each_keep_their_own_statement() {
    let other = Grant::new(PlanName::parse("other").unwrap(), target(), &Region::parse("us-east-1").unwrap());
    // Our statement does not count as the other plan's grant: our cleanup may remove it.
    let change = ensure_grant(OURS_SAME, &other).unwrap();
    assert!(change.changed && !change.already_present);
    let (text, changed) = revoke_grant(&change.new_policy, &grant()).unwrap();
    assert!(changed);
    let left = parse(&text);
    assert_eq!(stmts(&left).len(), 5);
    assert_eq!(stmts(&left).last().unwrap()["Sid"], "SnapferryShare-other-222222222222");
    assert!(allows(&text, &target(), "kms:Decrypt", None));
}

#[test]
fn revoke_refuses_to_empty_the_policy() {
    let ours_alone = json!({"Statement": [grant_statement(&grant())]}).to_string();
    let err = revoke_grant(&ours_alone, &grant()).unwrap_err();
    assert!(matches!(err, PolicyError::WouldBeEmpty { .. }));
    assert!(err.to_string().contains(SID));
}

/// A policy of filler statements whose compact JSON is at most `bytes` long, and
/// within one statement of it.
fn policy_of_size(bytes: usize) -> Value {
    let filler = |i: usize| {
        json!({
            "Sid": format!("Filler{i:04}"),
            "Effect": "Allow",
            "Principal": {"AWS": "arn:aws:iam::111111111111:role/filler"},
            "Action": "kms:DescribeKey",
            "Resource": "*",
        })
    };
    let mut policy = json!({"Version": "2012-10-17", "Statement": [filler(0)]});
    for i in 1.. {
        policy["Statement"].as_array_mut().unwrap().push(filler(i));
        if policy.to_string().len() > bytes {
            policy["Statement"].as_array_mut().unwrap().pop();
            break;
        }
    }
    policy
}

#[test]
fn refuses_a_policy_over_the_kms_quota() {
    let policy = policy_of_size(MAX_KEY_POLICY_BYTES - 100);
    assert!(policy.to_string().len() <= MAX_KEY_POLICY_BYTES);
    let err = ensure_grant(&policy.to_string(), &grant()).unwrap_err();
    let PolicyError::TooLarge { bytes, limit, .. } = &err else { panic!("{err:?}") };
    assert!(*bytes > MAX_KEY_POLICY_BYTES);
    assert_eq!(*limit, 32_768);
    let msg = err.to_string();
    assert!(msg.contains("32768") && msg.contains(SID), "{msg}");
    assert!(!msg.ends_with('.') && msg.starts_with(char::is_lowercase));
}

#[test]
fn falls_back_to_compact_json_when_only_whitespace_is_over_the_quota() {
    let policy = policy_of_size(MAX_KEY_POLICY_BYTES - 2_000);
    let change = ensure_grant(&policy.to_string(), &grant()).unwrap();
    assert!(change.changed);
    assert!(change.new_policy.len() <= MAX_KEY_POLICY_BYTES);
    assert!(!change.new_policy.contains('\n'));
    assert_eq!(without_ours(&parse(&change.new_policy)), stmts(&policy));
}

#[test]
fn malformed_policies_are_errors() {
    assert!(matches!(ensure_grant("{", &grant()), Err(PolicyError::InvalidJson(_))));
    assert!(matches!(ensure_grant("[]", &grant()), Err(PolicyError::NotAnObject)));
    assert!(matches!(ensure_grant(r#"{"Version":"2012-10-17"}"#, &grant()), Err(PolicyError::NoStatement)));
    assert!(matches!(ensure_grant(r#"{"Statement":"x"}"#, &grant()), Err(PolicyError::BadStatement)));
    assert!(matches!(ensure_grant(r#"{"Statement":[1]}"#, &grant()), Err(PolicyError::BadStatement)));
    assert!(matches!(revoke_grant("{", &grant()), Err(PolicyError::InvalidJson(_))));
    assert!(matches!(revoke_grant("{}", &grant()), Err(PolicyError::NoStatement)));
    for err in [ensure_grant("{", &grant()).unwrap_err(), ensure_grant("{}", &grant()).unwrap_err()] {
        let msg = err.to_string();
        assert!(!msg.ends_with('.') && msg.starts_with(char::is_lowercase), "{msg}");
    }
}

#[test]
fn allows_follows_principals_actions_and_the_grant_condition() {
    let (src, tgt) = (source(), target());
    assert!(allows(KMS_DEFAULT, &src, "kms:Decrypt", None));
    assert!(!allows(KMS_DEFAULT, &tgt, "kms:Decrypt", None));

    let shared = ensure_grant(KMS_DEFAULT, &grant()).unwrap().new_policy;
    for action in [
        "kms:DescribeKey",
        "kms:Decrypt",
        "kms:ReEncryptFrom",
        "kms:ReEncryptTo",
        "kms:GenerateDataKeyWithoutPlaintext",
    ] {
        assert!(allows(&shared, &tgt, action, None), "{action}");
    }
    assert!(allows(&shared, &tgt, "kms:CreateGrant", Some(true)));
    assert!(!allows(&shared, &tgt, "kms:CreateGrant", Some(false)));
    assert!(!allows(&shared, &tgt, "kms:Encrypt", None));
    assert!(!allows(&shared, &tgt, "kms:PutKeyPolicy", None));

    // The console's pair: Bool (not IfExists) on the grant statement.
    assert!(allows(CONSOLE_SHARED, &tgt, "kms:Encrypt", None));
    assert!(allows(CONSOLE_SHARED, &tgt, "kms:CreateGrant", Some(true)));
    assert!(!allows(CONSOLE_SHARED, &tgt, "kms:CreateGrant", Some(false)));
    assert!(!allows(CONSOLE_SHARED, &tgt, "kms:CreateGrant", None));
    // A role of the source account counts as the source account.
    assert!(allows(CONSOLE_DEFAULT, &src, "kms:CreateGrant", Some(true)));

    // Action names match case-insensitively; a bare account id is the account.
    assert!(allows(STRING_PRINCIPALS, &tgt, "kms:decrypt", None));
    assert!(allows(STRING_PRINCIPALS, &src, "kms:ScheduleKeyDeletion", None));
}

#[test]
fn allows_lets_an_explicit_deny_win_and_fails_closed() {
    let (src, tgt) = (source(), target());
    // kms:* for the root, denied by name to everyone.
    assert!(!allows(WITH_DENY, &src, "kms:ScheduleKeyDeletion", None));
    assert!(!allows(WITH_DENY, &src, "kms:DisableKey", None));
    assert!(allows(WITH_DENY, &src, "kms:Decrypt", None));
    // A Deny naming a role of the target account denies the account.
    assert!(!allows(WITH_DENY, &tgt, "kms:GenerateDataKey", None));
    assert!(allows(WITH_DENY, &tgt, "kms:GenerateDataKeyWithoutPlaintext", None));
    // A Deny whose condition cannot be evaluated applies.
    assert!(!allows(WITH_DENY, &src, "kms:Encrypt", None));
    // An Allow whose condition cannot be evaluated does not.
    assert!(!allows(WITH_CONDITIONS, &tgt, "kms:Decrypt", None));
    assert!(!allows("not json", &src, "kms:Decrypt", None));
}

#[test]
fn diff_shows_the_added_statement() {
    let change = ensure_grant(KMS_DEFAULT, &grant()).unwrap();
    let d = diff(KMS_DEFAULT, &change.new_policy);
    let removed: Vec<&str> = d.lines().filter(|l| l.starts_with("- ")).collect();
    let added: Vec<&str> = d.lines().filter(|l| l.starts_with("+ ")).collect();
    // Appending a statement removes nothing: the old lines are all kept, in order.
    assert!(removed.is_empty(), "{d}");
    assert_eq!(added.first(), Some(&"+     },"));
    assert!(added.contains(&format!("+       \"Sid\": \"{SID}\",").as_str()), "{d}");
    assert!(d.lines().all(|l| ["+ ", "- ", "  "].iter().any(|p| l.starts_with(p))));
    let kept: Vec<&str> = d.lines().filter_map(|l| l.strip_prefix("  ")).collect();
    let old_pretty = format!("{:#}", parse(KMS_DEFAULT));
    assert_eq!(kept, old_pretty.lines().collect::<Vec<_>>());

    // Replacing our stale statement shows what it loses and gains.
    let change = ensure_grant(OURS_DIFFERENT, &grant()).unwrap();
    let d = diff(OURS_DIFFERENT, &change.new_policy);
    assert!(d.contains("+       \"Condition\": {\n"), "{d}");
    assert!(d.contains("+         \"kms:CreateGrant\"\n"), "{d}");
    // The Sid line is kept: the statement is replaced in place.
    assert!(d.lines().filter(|l| l.starts_with("- ")).all(|l| !l.contains("\"Sid\"")), "{d}");

    assert_eq!(diff(r#"{"a":1,"b":2}"#, r#"{"a":1,"b":3}"#), "  {\n    \"a\": 1,\n-   \"b\": 2\n+   \"b\": 3\n  }\n");
    assert!(diff(OURS_SAME, OURS_SAME).lines().all(|l| l.starts_with("  ")));
}

fn context(cross_account: bool) -> IamContext {
    IamContext {
        verify: false,
        partition: "aws",
        plan: PlanName::parse("prod-db-dr").unwrap(),
        source_account: source(),
        source_region: Region::parse("us-east-1").unwrap(),
        target_account: if cross_account { target() } else { source() },
        target_region: Region::parse("eu-west-1").unwrap(),
        source_key: "arn:aws:kms:us-east-1:111111111111:key/1234abcd-12ab-34cd-56ef-1234567890ab".into(),
        target_key: "<target key ARN>".into(),
        role_arn: cross_account.then(|| RoleArn::parse("arn:aws:iam::222222222222:role/snapferry-dr").unwrap()),
        external_id: cross_account.then(|| "dr-2026".to_owned()),
        caller_arn: None,
        reencrypt_keys: vec!["arn:aws:kms:us-east-1:111111111111:key/0000abcd-12ab-34cd-56ef-1234567890ab".into()],
        cross_account,
        create_volume: true,
        keep: true,
        lock: None,
    }
}

fn statement<'a>(policy: &'a Value, sid: &str) -> Option<&'a Value> {
    policy["Statement"].as_array().unwrap().iter().find(|s| s["Sid"] == sid)
}

#[test]
fn iam_documents_for_a_cross_account_plan() {
    let docs = documents(&context(true));
    let src = &docs.source_caller;
    assert_eq!(src["Version"], "2012-10-17");
    let sids: Vec<&str> = src["Statement"].as_array().unwrap().iter().map(|s| s["Sid"].as_str().unwrap()).collect();
    let mut unique = sids.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), sids.len(), "duplicate Sid in {sids:?}");
    assert_eq!(
        statement(src, "SnapferryCreateSnapshot").unwrap()["Resource"],
        json!(["arn:aws:ec2:us-east-1:111111111111:volume/*", "arn:aws:ec2:us-east-1::snapshot/*"])
    );
    assert_eq!(
        statement(src, "SnapferryTagOnCreate").unwrap()["Condition"],
        json!({"StringEquals": {"ec2:CreateAction": ["CreateSnapshot", "CopySnapshot"]}})
    );
    assert_eq!(
        statement(src, "SnapferryDeleteIntermediateSnapshots").unwrap()["Condition"],
        json!({"StringEquals": {"aws:ResourceTag/snapferry:plan": "prod-db-dr"}})
    );
    assert_eq!(
        statement(src, "SnapferryEditSourceKeyPolicy").unwrap()["Action"],
        json!(["kms:DescribeKey", "kms:GetKeyPolicy", "kms:PutKeyPolicy"])
    );
    let use_keys = statement(src, "SnapferryUseKeys").unwrap();
    assert_eq!(use_keys["Resource"].as_array().unwrap().len(), 2);
    assert_eq!(
        statement(src, "SnapferryGrantKeysToEbs").unwrap()["Condition"],
        json!({"Bool": {"kms:GrantIsForAWSResource": "true"}})
    );
    assert_eq!(
        statement(src, "SnapferryAssumeTargetRole").unwrap()["Resource"],
        "arn:aws:iam::222222222222:role/snapferry-dr"
    );
    assert!(statement(src, "SnapferryShareSnapshot").is_some());
    assert!(statement(src, "SnapferryCallerIdentity").is_some());

    let tgt = &docs.target_role;
    assert_eq!(
        statement(tgt, "SnapferryCopySnapshot").unwrap()["Resource"],
        json!(["arn:aws:ec2:eu-west-1::snapshot/*", "arn:aws:ec2:us-east-1::snapshot/*"])
    );
    assert_eq!(
        statement(tgt, "SnapferryCreateVolume").unwrap()["Resource"],
        json!(["arn:aws:ec2:eu-west-1:222222222222:volume/*", "arn:aws:ec2:eu-west-1::snapshot/*"])
    );
    assert_eq!(
        statement(tgt, "SnapferryDeleteOwnResources").unwrap()["Action"],
        json!(["ec2:DeleteSnapshot", "ec2:DeleteVolume"])
    );
    assert_eq!(
        statement(tgt, "SnapferryDeleteOwnResources").unwrap()["Condition"],
        json!({"StringEquals": {"aws:ResourceTag/snapferry:plan": "prod-db-dr"}})
    );
    assert_eq!(
        statement(tgt, "SnapferryUseKeys").unwrap()["Resource"],
        json!([context(true).source_key, "<target key ARN>"])
    );

    assert_eq!(
        docs.target_role_trust.unwrap(),
        json!({
            "Version": "2012-10-17",
            "Statement": [{
                "Sid": "SnapferryAssumeFromSource",
                "Effect": "Allow",
                "Principal": {"AWS": "arn:aws:iam::111111111111:root"},
                "Action": "sts:AssumeRole",
                "Condition": {"StringEquals": {"sts:ExternalId": "dr-2026"}},
            }],
        })
    );
}

#[test]
fn iam_documents_for_one_account_skip_the_share() {
    let mut ctx = context(false);
    ctx.keep = false;
    ctx.create_volume = false;
    let docs = documents(&ctx);
    for sid in ["SnapferryShareSnapshot", "SnapferryEditSourceKeyPolicy", "SnapferryAssumeTargetRole"] {
        assert!(statement(&docs.source_caller, sid).is_none(), "{sid}");
    }
    assert!(statement(&docs.target_role, "SnapferryCreateVolume").is_none());
    // Failed or duplicate copies are deleted even without retention; no volume, no
    // DeleteVolume.
    assert_eq!(
        statement(&docs.target_role, "SnapferryDeleteOwnResources").unwrap()["Action"],
        json!(["ec2:DeleteSnapshot"])
    );
    assert_eq!(
        statement(&docs.target_role, "SnapferryTagOnCreate").unwrap()["Condition"],
        json!({"StringEquals": {"ec2:CreateAction": ["CopySnapshot"]}})
    );
    assert!(docs.target_role_trust.is_none());
}

#[test]
fn trust_names_the_caller_when_known() {
    let mut ctx = context(true);
    ctx.external_id = None;
    ctx.caller_arn = Some("arn:aws:iam::111111111111:role/ci".into());
    let trust = documents(&ctx).target_role_trust.unwrap();
    let stmt = &trust["Statement"][0];
    assert_eq!(stmt["Principal"]["AWS"], "arn:aws:iam::111111111111:role/ci");
    assert!(stmt.get("Condition").is_none());
}

#[test]
fn trust_names_the_role_behind_an_assumed_role_session() {
    let mut ctx = context(true);
    ctx.caller_arn = Some("arn:aws:sts::111111111111:assumed-role/ci-deployer/gha-run-4711".into());
    let trust = documents(&ctx).target_role_trust.unwrap();
    // The role, not the one session: the next CI run has another session name.
    assert_eq!(trust["Statement"][0]["Principal"]["AWS"], "arn:aws:iam::111111111111:role/ci-deployer");
    assert_eq!(
        trust_principal("arn:aws-us-gov:sts::111111111111:assumed-role/r/s"),
        "arn:aws-us-gov:iam::111111111111:role/r"
    );
    for kept in ["arn:aws:iam::111111111111:user/alice", "arn:aws:iam::111111111111:root", "not an arn"] {
        assert_eq!(trust_principal(kept), kept);
    }
}

// Generated policies: statements with random Sids, principals, actions, conditions and
// an unknown field, never with our Sid (which contains '-', absent from the Sid set).

fn one_or_many(items: Vec<&'static str>, as_list: bool) -> Value {
    if as_list || items.len() != 1 { json!(items) } else { json!(items[0]) }
}

fn arb_statement() -> impl Strategy<Value = Value> {
    let principals = prop::sample::subsequence(
        vec![
            "arn:aws:iam::222222222222:root",
            "222222222222",
            "arn:aws:iam::111111111111:root",
            "arn:aws:iam::222222222222:role/x",
            "*",
        ],
        1..=3,
    );
    let actions = prop::sample::subsequence(
        vec![
            "kms:*",
            "*",
            "kms:Decrypt",
            "kms:ReEncrypt*",
            "kms:GenerateDataKey*",
            "kms:CreateGrant",
            "kms:DescribeKey",
            "kms:Encrypt",
            "KMS:reencryptfrom",
            "kms:ReEncryptTo",
            "kms:GenerateDataKey",
            "ec2:*",
        ],
        1..=5,
    );
    let principal_form = 0..4u8;
    let condition = prop_oneof![
        Just(None),
        Just(Some(json!({"Bool": {"kms:GrantIsForAWSResource": "true"}}))),
        Just(Some(json!({"BoolIfExists": {"kms:GrantIsForAWSResource": true}}))),
        Just(Some(json!({"StringEquals": {"kms:ViaService": "ec2.us-east-1.amazonaws.com"}}))),
    ];
    let resource = prop_oneof![
        Just(json!("*")),
        Just(json!(["*"])),
        Just(json!("arn:aws:kms:us-east-1:111111111111:key/1234abcd-12ab-34cd-56ef-1234567890ab")),
    ];
    (
        "[A-Za-z0-9 ]{0,12}",
        prop::bool::weighted(0.8),
        principals,
        principal_form,
        actions,
        any::<bool>(),
        resource,
        condition,
        prop::option::of(any::<i32>()),
    )
        .prop_map(|(sid, allow, principals, form, actions, list, resource, condition, extra)| {
            let mut s = serde_json::Map::new();
            if !sid.is_empty() {
                s.insert("Sid".into(), json!(sid));
            }
            s.insert("Effect".into(), json!(if allow { "Allow" } else { "Deny" }));
            let principal = match form {
                0 => json!("*"),
                1 => json!({"Service": "ec2.amazonaws.com"}),
                _ => json!({"AWS": one_or_many(principals, form == 3)}),
            };
            s.insert("Principal".into(), principal);
            s.insert("Action".into(), one_or_many(actions, list));
            s.insert("Resource".into(), resource);
            if let Some(c) = condition {
                s.insert("Condition".into(), c);
            }
            if let Some(x) = extra {
                s.insert("X-Unknown".into(), json!(x));
            }
            Value::Object(s)
        })
}

fn arb_policy() -> impl Strategy<Value = Value> {
    (prop::collection::vec(arb_statement(), 1..8), any::<bool>()).prop_map(|(stmts, single)| {
        let statement = if single { stmts[0].clone() } else { json!(stmts) };
        json!({"Version": "2012-10-17", "Id": "generated", "Statement": statement})
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn ensure_keeps_every_statement_in_order(policy in arb_policy()) {
        let change = ensure_grant(&policy.to_string(), &grant()).unwrap();
        let new = parse(&change.new_policy);
        prop_assert_eq!(without_ours(&new), stmts(&policy));
        prop_assert_eq!(other_fields(&new), other_fields(&policy));
        prop_assert_eq!(change.changed, !change.already_present);
        if change.changed {
            prop_assert_eq!(stmts(&new).last().cloned(), Some(grant_statement(&grant())));
        } else {
            prop_assert_eq!(&new, &policy);
        }
    }

    #[test]
    fn ensure_is_idempotent(policy in arb_policy()) {
        let once = ensure_grant(&policy.to_string(), &grant()).unwrap();
        let twice = ensure_grant(&once.new_policy, &grant()).unwrap();
        prop_assert!(!twice.changed);
        prop_assert!(twice.already_present);
        prop_assert_eq!(twice.new_policy, once.new_policy);
    }

    #[test]
    fn revoke_undoes_ensure(policy in arb_policy()) {
        let added = ensure_grant(&policy.to_string(), &grant()).unwrap();
        let (text, changed) = revoke_grant(&added.new_policy, &grant()).unwrap();
        prop_assert_eq!(changed, added.changed);
        let back = parse(&text);
        prop_assert_eq!(stmts(&back), stmts(&policy));
        prop_assert_eq!(other_fields(&back), other_fields(&policy));
    }

    #[test]
    fn a_grant_found_present_is_allowed_by_the_evaluator(policy in arb_policy()) {
        let change = ensure_grant(&policy.to_string(), &grant()).unwrap();
        let has_deny = stmts(&policy).iter().any(|s| s["Effect"] == "Deny");
        if change.already_present && !has_deny {
            let text = policy.to_string();
            for action in ["kms:DescribeKey", "kms:Decrypt", "kms:ReEncryptFrom", "kms:ReEncryptTo", "kms:GenerateDataKey", "kms:GenerateDataKeyWithoutPlaintext"] {
                prop_assert!(allows(&text, &target(), action, None), "{}", action);
            }
            prop_assert!(allows(&text, &target(), "kms:CreateGrant", Some(true)));
        }
    }
}

#[test]
fn a_state_in_s3_adds_the_bucket_statements_to_the_source_caller_policy() {
    let base = json!({"Version": "2012-10-17", "Statement": [{"Sid": "X", "Effect": "Allow", "Action": "ec2:DescribeVolumes", "Resource": "*"}]});
    let p = snapferry::policy::with_state_bucket(base, "aws", "my-state", "ci/prod");
    let stmts = p["Statement"].as_array().unwrap();
    assert_eq!(stmts.len(), 3);
    assert_eq!(stmts[0]["Sid"], "X", "what was there stays first");
    let list = stmts.iter().find(|s| s["Sid"] == "SnapferryStateList").unwrap();
    assert_eq!(list["Action"], "s3:ListBucket");
    assert_eq!(list["Resource"], "arn:aws:s3:::my-state");
    assert_eq!(list["Condition"]["StringLike"]["s3:prefix"], json!(["", "ci/prod/*"]));
    let objects = stmts.iter().find(|s| s["Sid"] == "SnapferryStateObjects").unwrap();
    assert_eq!(objects["Resource"], "arn:aws:s3:::my-state/ci/prod/*");
    assert_eq!(objects["Action"], json!(["s3:GetObject", "s3:PutObject", "s3:DeleteObject"]));
    let whole = snapferry::policy::with_state_bucket(json!({"Statement": []}), "aws-cn", "b-1", "");
    assert_eq!(whole["Statement"][1]["Resource"], "arn:aws-cn:s3:::b-1/*");
    assert!(whole["Statement"][0].get("Condition").is_none());
}
