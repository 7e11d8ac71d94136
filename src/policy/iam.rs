//! The IAM policies a run needs, written out for the dry-run so an operator can create
//! them before the first real run: the policy of the identity running snapferry in the
//! source account, the policy of the role it assumes in the target account (or, when
//! both accounts are one, the caller's additions for the target region), and that
//! role's trust policy.
//!
//! Least privilege where EC2 and KMS allow it: resources are scoped by region, account
//! and key; tagging is only allowed as part of creating; deletion and sharing only touch
//! resources tagged with the plan. Describe calls support no resource scoping and get
//! `*`.
//!
//! The documents cover every call the runner can make on each side, failure paths
//! included (deleting a failed or duplicate copy); `tests/it/dryrun.rs` replays a run's
//! calls against them.

use serde_json::{Value, json};

use crate::ids::{AccountId, PlanName, Region, RoleArn};
use crate::tags::TAG_PLAN;

/// IAM policy language version; the older 2008 one lacks policy variables and more.
const POLICY_VERSION: &str = "2012-10-17";

/// What the IAM documents depend on. Key fields hold ARNs, or a placeholder (such as
/// `<source key ARN>`) when the dry-run could not resolve an alias.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IamContext {
    /// The ARN partition of both regions (`aws`, `aws-cn`, `aws-us-gov`).
    pub partition: &'static str,
    pub plan: PlanName,
    pub source_account: AccountId,
    pub source_region: Region,
    pub target_account: AccountId,
    pub target_region: Region,
    /// The key the shared snapshot is under, `source.kms_key` resolved to an ARN.
    pub source_key: String,
    /// The key of the target copies, `target.kms_key` resolved to an ARN.
    pub target_key: String,
    /// The role assumed in the target account; `None` when the accounts are one.
    pub role_arn: Option<RoleArn>,
    /// The external id the trust policy requires, when the plan sets one.
    pub external_id: Option<String>,
    /// The ARN of the identity that assumes the role (GetCallerIdentity's answer), to
    /// trust it alone; `None` trusts the source account, whose IAM then decides who may
    /// assume. An assumed-role session ARN is trusted as its role, see
    /// [`trust_principal`].
    pub caller_arn: Option<String>,
    /// The current keys of source volumes whose snapshots must be re-encrypted under
    /// the source key first (other customer managed keys, `aws/ebs`); unencrypted
    /// volumes need no key and add nothing here.
    pub reencrypt_keys: Vec<String>,
    /// Whether the target account differs from the source account: a key policy grant,
    /// a snapshot share and an assumed role are needed only then.
    pub cross_account: bool,
    /// Whether the run creates volumes from the target snapshots.
    pub create_volume: bool,
    /// Whether retention (`options.keep`) deletes older target snapshots and volumes.
    /// Deletes are allowed either way (failed and duplicate copies are deleted), so the
    /// documents do not depend on it; it stays for what the dry-run says about a plan.
    pub keep: bool,
    /// The lock of the target's copies, if any.
    pub lock: Option<crate::lock::LockSpec>,
    /// Whether copies are verified (`options.verify`): each side reads its snapshot's
    /// blocks through the EBS direct APIs.
    pub verify: bool,
}

/// The three documents the dry-run prints.
#[derive(Debug, Clone, PartialEq)]
pub struct IamDocuments {
    pub source_caller: Value,
    pub target_role: Value,
    /// `None` when the accounts are one and no role is assumed.
    pub target_role_trust: Option<Value>,
}

/// All documents for one context.
pub fn documents(ctx: &IamContext) -> IamDocuments {
    IamDocuments {
        source_caller: source_caller_policy(ctx),
        target_role: target_role_policy(ctx),
        target_role_trust: target_role_trust(ctx),
    }
}

/// What the identity running snapferry needs in the source account and region: take
/// snapshots, re-encrypt them under the source key, share them, edit the source key's
/// policy, clean up, and assume the target role.
pub fn source_caller_policy(ctx: &IamContext) -> Value {
    let p = ctx.partition;
    let region = &ctx.source_region;
    let snapshots = format!("arn:{p}:ec2:{region}::snapshot/*");
    let volumes = format!("arn:{p}:ec2:{region}:{}:volume/*", ctx.source_account);
    let mut keys = vec![ctx.source_key.clone()];
    for k in &ctx.reencrypt_keys {
        if !keys.contains(k) {
            keys.push(k.clone());
        }
    }

    let mut stmts = vec![
        json!({
            "Sid": "SnapferryDescribe",
            "Effect": "Allow",
            // Describe calls do not support resource-level permissions.
            "Action": ["ec2:DescribeVolumes", "ec2:DescribeSnapshots", "ec2:DescribeSnapshotAttribute"],
            "Resource": "*",
        }),
        json!({
            "Sid": "SnapferryCreateSnapshot",
            "Effect": "Allow",
            // CreateSnapshot authorizes both the volume and the new snapshot.
            "Action": "ec2:CreateSnapshot",
            "Resource": [volumes, snapshots],
        }),
        json!({
            "Sid": "SnapferryReencryptSnapshot",
            "Effect": "Allow",
            // A copy in the source region re-encrypts a snapshot under the source key;
            // it authorizes the snapshot copied from and the one created.
            "Action": "ec2:CopySnapshot",
            "Resource": snapshots,
        }),
        tag_on_create("SnapferryTagOnCreate", &[&snapshots], &["CreateSnapshot", "CopySnapshot"]),
    ];
    if ctx.cross_account {
        stmts.push(json!({
            "Sid": "SnapferryShareSnapshot",
            "Effect": "Allow",
            // Only the run's own snapshots are shared with, and unshared from, the target.
            "Action": "ec2:ModifySnapshotAttribute",
            "Resource": snapshots,
            "Condition": plan_tag_condition(&ctx.plan),
        }));
    }
    if ctx.verify {
        stmts.push(ebs_read("SnapferryVerifyReadSourceBlocks", &snapshots));
    }
    stmts.push(json!({
        "Sid": "SnapferryDeleteIntermediateSnapshots",
        "Effect": "Allow",
        "Action": "ec2:DeleteSnapshot",
        "Resource": snapshots,
        "Condition": plan_tag_condition(&ctx.plan),
    }));
    if ctx.cross_account {
        stmts.push(json!({
            "Sid": "SnapferryEditSourceKeyPolicy",
            "Effect": "Allow",
            // Adds and removes the statement that shares the key with the target
            // account; PutKeyPolicy only works from the key's own account.
            "Action": ["kms:DescribeKey", "kms:GetKeyPolicy", "kms:PutKeyPolicy"],
            "Resource": ctx.source_key,
        }));
    }
    stmts.push(json!({
        "Sid": "SnapferryUseKeys",
        "Effect": "Allow",
        "Action": ["kms:DescribeKey", "kms:Decrypt", "kms:ReEncrypt*", "kms:GenerateDataKeyWithoutPlaintext"],
        "Resource": keys,
    }));
    stmts.push(create_grant_for_ebs("SnapferryGrantKeysToEbs", &keys));
    if let (true, Some(role)) = (ctx.cross_account, &ctx.role_arn) {
        stmts.push(json!({
            "Sid": "SnapferryAssumeTargetRole",
            "Effect": "Allow",
            "Action": "sts:AssumeRole",
            "Resource": role.as_str(),
        }));
    }
    stmts.push(json!({
        "Sid": "SnapferryCallerIdentity",
        "Effect": "Allow",
        // Checks source.account against the credentials before anything changes.
        "Action": "sts:GetCallerIdentity",
        "Resource": "*",
    }));
    document(stmts)
}

/// What the target role needs in the target region (or, when the accounts are one,
/// what the caller needs there on top of `source_caller_policy`): copy the shared
/// snapshot under the target key, create the volume, tag both, and delete what the
/// plan made there (failed or duplicate copies and volumes, and with retention the
/// plan's older copies).
pub fn target_role_policy(ctx: &IamContext) -> Value {
    let p = ctx.partition;
    let region = &ctx.target_region;
    let target_snapshots = format!("arn:{p}:ec2:{region}::snapshot/*");
    let source_snapshots = format!("arn:{p}:ec2:{}::snapshot/*", ctx.source_region);
    let volumes = format!("arn:{p}:ec2:{region}:{}:volume/*", ctx.target_account);
    let keys = if ctx.target_key == ctx.source_key {
        vec![ctx.source_key.clone()]
    } else {
        vec![ctx.source_key.clone(), ctx.target_key.clone()]
    };

    let mut describe = vec!["ec2:DescribeSnapshots", "ec2:DescribeVolumes"];
    if ctx.lock.is_some() {
        describe.push("ec2:DescribeLockedSnapshots");
    }
    let mut stmts = vec![
        json!({
            "Sid": "SnapferryDescribe",
            "Effect": "Allow",
            "Action": describe,
            "Resource": "*",
        }),
        json!({
            "Sid": "SnapferryCopySnapshot",
            "Effect": "Allow",
            // Since 2025 CopySnapshot authorizes the source snapshot's ARN, in the
            // source region, as well as the copy's.
            "Action": "ec2:CopySnapshot",
            "Resource": [target_snapshots, source_snapshots],
        }),
    ];
    let mut tagged = vec![target_snapshots.as_str()];
    let mut create_actions = vec!["CopySnapshot"];
    if ctx.create_volume {
        stmts.push(json!({
            "Sid": "SnapferryCreateVolume",
            "Effect": "Allow",
            // CreateVolume authorizes the new volume and the snapshot it comes from.
            "Action": "ec2:CreateVolume",
            "Resource": [volumes, target_snapshots],
        }));
        tagged.push(&volumes);
        create_actions.push("CreateVolume");
    }
    if let Some(lock) = &ctx.lock {
        stmts.push(json!({
            "Sid": "SnapferryLockCopies",
            "Effect": "Allow",
            // Bounded to the plan's duration: these credentials cannot lock copies
            // (or anything else) for longer, which in compliance mode would be storage
            // nobody could ever delete.
            "Action": "ec2:LockSnapshot",
            "Resource": target_snapshots,
            "Condition": {"NumericLessThanEquals": {"ec2:SnapshotLockDuration": lock.duration_days.to_string()}},
        }));
        // Preflight reads the target key's policy to check it protects the key.
        stmts.push(json!({
            "Sid": "SnapferryReadTargetKeyPolicy",
            "Effect": "Allow",
            "Action": "kms:GetKeyPolicy",
            "Resource": ctx.target_key,
        }));
    }
    stmts.push(tag_on_create("SnapferryTagOnCreate", &tagged, &create_actions));
    if ctx.verify {
        stmts.push(ebs_read("SnapferryVerifyReadCopyBlocks", &target_snapshots));
        // The result goes on the copy as the snapferry:verify tag.
        stmts.push(json!({
            "Sid": "SnapferryTagVerifiedCopies",
            "Effect": "Allow",
            "Action": "ec2:CreateTags",
            "Resource": target_snapshots,
            "Condition": plan_tag_condition(&ctx.plan),
        }));
    }
    // Deletes happen on every run, not only with retention: a copy or volume that ended
    // in `error` is deleted before it is made again, a duplicate copy found after an
    // unknown outcome is deleted, and `keep` prunes older copies. Only what this plan
    // made (its tag) may be deleted.
    let mut deletes = vec!["ec2:DeleteSnapshot"];
    if ctx.create_volume {
        deletes.push("ec2:DeleteVolume");
    }
    stmts.push(json!({
        "Sid": "SnapferryDeleteOwnResources",
        "Effect": "Allow",
        "Action": deletes,
        "Resource": tagged,
        "Condition": plan_tag_condition(&ctx.plan),
    }));
    stmts.push(json!({
        "Sid": "SnapferryUseKeys",
        "Effect": "Allow",
        // The source key's policy grants the target account; this policy must allow
        // the role too (KMS developer guide, "Allowing users in other accounts to use
        // a KMS key"). The target key re-encrypts the copy and the volume.
        "Action": ["kms:DescribeKey", "kms:Decrypt", "kms:ReEncrypt*", "kms:GenerateDataKey*"],
        "Resource": keys,
    }));
    stmts.push(create_grant_for_ebs("SnapferryGrantKeysToEbs", &keys));
    document(stmts)
}

/// The trust policy of the target role: the source account (or the one caller ARN)
/// may assume it, with the external id when the plan sets one. `None` when the
/// accounts are one and no role is assumed.
pub fn target_role_trust(ctx: &IamContext) -> Option<Value> {
    if !ctx.cross_account {
        return None;
    }
    let principal = match &ctx.caller_arn {
        Some(arn) => trust_principal(arn),
        None => format!("arn:{}:iam::{}:root", ctx.partition, ctx.source_account),
    };
    let mut stmt = json!({
        "Sid": "SnapferryAssumeFromSource",
        "Effect": "Allow",
        "Principal": { "AWS": principal },
        "Action": "sts:AssumeRole",
    });
    if let (Some(id), Some(obj)) = (&ctx.external_id, stmt.as_object_mut()) {
        obj.insert("Condition".to_owned(), json!({ "StringEquals": { "sts:ExternalId": id } }));
    }
    Some(document(vec![stmt]))
}

/// The principal a trust policy names for a caller ARN. A session of an assumed role
/// (`arn:P:sts::ACCOUNT:assumed-role/ROLE/SESSION`) is trusted as its role
/// (`arn:P:iam::ACCOUNT:role/ROLE`): a session ARN would tie the trust to one session
/// name. The STS ARN does not carry the role's path, so a role with a path
/// (`role/ci/ROLE`) must be written with it by hand (`aws iam get-role` shows it).
/// Users and roots are trusted as they are.
pub fn trust_principal(caller_arn: &str) -> String {
    let mut parts = caller_arn.splitn(6, ':');
    if let (Some("arn"), Some(partition), Some("sts"), Some(""), Some(account), Some(resource)) =
        (parts.next(), parts.next(), parts.next(), parts.next(), parts.next(), parts.next())
        && let Some(rest) = resource.strip_prefix("assumed-role/")
        && let Some((role, _session)) = rest.split_once('/')
    {
        return format!("arn:{partition}:iam::{account}:role/{role}");
    }
    caller_arn.to_owned()
}

/// One document holding every statement of `docs`: a statement found in several is
/// kept once; two different statements under one Sid keep both, the later one's Sid
/// numbered (a policy's Sids must be unique).
pub fn merge_documents<'a>(docs: impl Iterator<Item = &'a Value>) -> Value {
    let mut out: Vec<Value> = vec![];
    for d in docs {
        for st in d.get("Statement").and_then(Value::as_array).into_iter().flatten() {
            if out.contains(st) {
                continue;
            }
            let mut st = st.clone();
            let sid = st.get("Sid").and_then(Value::as_str).unwrap_or_default().to_owned();
            let taken =
                |sid: &str, out: &[Value]| out.iter().any(|o| o.get("Sid").and_then(Value::as_str) == Some(sid));
            if taken(&sid, &out) {
                let mut n = 2;
                while taken(&format!("{sid}{n}"), &out) {
                    n += 1;
                }
                st["Sid"] = Value::String(format!("{sid}{n}"));
            }
            out.push(st);
        }
    }
    document(out)
}

fn document(statements: Vec<Value>) -> Value {
    json!({ "Version": POLICY_VERSION, "Statement": statements })
}

/// CreateTags only as part of creating (the `TagSpecifications` of the call), never on
/// existing resources: tags are what cleanup and retention trust.
/// The EBS direct API reads of a verification (the block checksums, not the data).
fn ebs_read(sid: &str, snapshots: &str) -> Value {
    json!({
        "Sid": sid,
        "Effect": "Allow",
        "Action": ["ebs:ListSnapshotBlocks", "ebs:GetSnapshotBlock"],
        "Resource": snapshots,
    })
}

fn tag_on_create(sid: &str, resources: &[&str], create_actions: &[&str]) -> Value {
    json!({
        "Sid": sid,
        "Effect": "Allow",
        "Action": "ec2:CreateTags",
        "Resource": resources,
        "Condition": { "StringEquals": { "ec2:CreateAction": create_actions } },
    })
}

/// EBS creates KMS grants for the snapshots and volumes it encrypts; the caller may let
/// it, and only it.
fn create_grant_for_ebs(sid: &str, keys: &[String]) -> Value {
    json!({
        "Sid": sid,
        "Effect": "Allow",
        "Action": "kms:CreateGrant",
        "Resource": keys,
        "Condition": { "Bool": { "kms:GrantIsForAWSResource": "true" } },
    })
}

fn plan_tag_condition(plan: &PlanName) -> Value {
    json!({ "StringEquals": { format!("aws:ResourceTag/{TAG_PLAN}"): plan.as_str() } })
}

/// Adds to a source caller policy what a state in S3 (`--state-dir s3://BUCKET/PREFIX`)
/// needs: find the bucket's region and list the state (HeadBucket and ListObjectsV2
/// are `s3:ListBucket`, limited to the prefix), and read, write and delete its objects
/// (the lease, checkpoints and journal batches).
pub fn with_state_bucket(mut policy: Value, partition: &str, bucket: &str, prefix: &str) -> Value {
    let objects = if prefix.is_empty() {
        format!("arn:{partition}:s3:::{bucket}/*")
    } else {
        format!("arn:{partition}:s3:::{bucket}/{prefix}/*")
    };
    let mut list = json!({
        "Sid": "SnapferryStateList",
        "Effect": "Allow",
        "Action": "s3:ListBucket",
        "Resource": format!("arn:{partition}:s3:::{bucket}"),
    });
    if !prefix.is_empty() {
        // HeadBucket carries no prefix; ListObjectsV2 of the state does.
        list["Condition"] = json!({ "StringLike": { "s3:prefix": ["", format!("{prefix}/*")] } });
    }
    let write = json!({
        "Sid": "SnapferryStateObjects",
        "Effect": "Allow",
        "Action": ["s3:GetObject", "s3:PutObject", "s3:DeleteObject"],
        "Resource": objects,
    });
    if let Some(statements) = policy["Statement"].as_array_mut() {
        statements.push(list);
        statements.push(write);
    }
    policy
}
