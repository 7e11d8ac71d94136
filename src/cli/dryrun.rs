//! `snapferry run PLAN --dry-run`: every change a run needs, and nothing changed.
//!
//! Online, it resolves what it can with read-only calls (caller identities, the role,
//! keys, the source key's policy, volumes and their keys) and reports any problem
//! preflight would stop on. With `--offline` it makes no call at all and puts
//! placeholders where a value needs AWS. It never takes the plan lock and never
//! writes to the state dir.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;
use serde_json::{Value, json};

use crate::cloud::{Loc, Side};
use crate::engine::{self, Route, Step};
use crate::exec::{CopyKind, PreflightError, Resolved, preflight};
use crate::ids::AccountId;
use crate::plan::{Pick, Plan};
use crate::policy::{self, Grant, IamContext};

use super::args::RunArgs;
use super::cloud::{Reach, connect, session_name};
use super::exit::Done;
use super::failure::Failure;
use super::plan_file::load_plan;
use super::render::{emit, emit_before_failure};

/// Stand-ins for account ids the offline dry-run cannot know, swapped for readable
/// placeholders in the output.
const SOURCE_ACCOUNT_STANDIN: &str = "000000000001";
const TARGET_ACCOUNT_STANDIN: &str = "000000000002";

/// A string with the offline stand-ins swapped for placeholders.
fn placeholder(s: &str) -> String {
    s.replace(SOURCE_ACCOUNT_STANDIN, "<source-account>").replace(TARGET_ACCOUNT_STANDIN, "<target-account>")
}

/// A document with the offline stand-ins swapped for placeholders in every string.
fn placeholders(v: Value) -> Value {
    match v {
        Value::String(s) => Value::String(placeholder(&s)),
        Value::Array(a) => Value::Array(a.into_iter().map(placeholders).collect()),
        Value::Object(o) => Value::Object(o.into_iter().map(|(k, v)| (k, placeholders(v))).collect()),
        other => other,
    }
}

fn key_placeholder(key: &str, side: &str) -> String {
    if key.starts_with("arn:") && key.contains(":key/") { key.to_owned() } else { format!("<{side} key ARN of {key}>") }
}

pub async fn dry_run(args: &RunArgs) -> Result<Done, Failure> {
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
                            return Err(Failure::Aws(format!(
                                "cannot read the policy of source key {}: {e}",
                                r.source_key.arn
                            )));
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
    let mut report = DryRun::new(&plan, resolved.as_ref(), &problems, current_policy.as_deref(), args.offline);
    // A state in S3 needs the bucket's actions too.
    if let Ok(super::state::StateLocation::S3 { bucket, prefix }) =
        super::state::StateLocation::parse(&args.common.state_dir)
    {
        let caller = std::mem::take(&mut report.iam.source_caller);
        report.iam.source_caller = policy::with_state_bucket(caller, plan.source.region.partition(), &bucket, &prefix);
    }
    if problems.is_empty() {
        emit(format, &report, DryRun::text);
        return Ok(Done::Ok);
    }
    // With problems, the failure path prints the JSON document, so stdout carries one.
    emit_before_failure(format, &report, DryRun::text);
    Err(Failure::WouldStop { problems: problems.len(), report: serde_json::to_value(&report).unwrap_or(Value::Null) })
}

/// The dry-run report of the contract: plan, steps, key_policy, iam (+ problems). Text
/// and JSON are both rendered from it. Offline stand-ins are already placeholders here.
#[derive(Debug, Clone, Serialize)]
pub struct DryRun {
    pub plan: String,
    /// Always true: tells a dry-run document from a run report.
    pub dry_run: bool,
    pub offline: bool,
    pub source: SourceSide,
    /// The first (or only) target.
    pub target: TargetSide,
    /// With `targets:`, every target with its own IAM documents.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub targets: Vec<TargetReport>,
    pub cross_account: bool,
    pub steps: Vec<VolumeSteps>,
    pub key_policy: KeyPolicyChange,
    pub iam: IamPolicies,
    pub problems: Vec<Problem>,
    /// Per resolved volume: whether the next copy is expected full or incremental, and why.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub copy_kinds: Vec<CopyKind>,
    /// What the plan's schedule options imply (recurring, time-based copies, kept sources).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub schedule: Vec<String>,
    /// Per locked target: the lock, what it means, and the key statement that keeps
    /// the copies readable.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub locks: Vec<LockAdvice>,
    /// With any lock: a service control policy for each DR account.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dr_account_scp: Option<Value>,
    /// What preflight found that does not stop the run but weakens it.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// One locked target in the dry-run.
#[derive(Debug, Clone, Serialize)]
pub struct LockAdvice {
    pub account: String,
    pub region: String,
    pub kms_key: String,
    pub mode: &'static str,
    pub duration_days: u32,
    pub cool_off_hours: Option<u32>,
    /// What the lock means for these copies, in words.
    pub notes: Vec<String>,
    /// The statement to add to the target key's policy (snapferry never changes it).
    pub key_policy_statement: Value,
}

/// `2d`, `36h`: a span in the largest whole unit.
fn span(ms: i64) -> String {
    const HOUR: i64 = 3_600_000;
    if ms % (24 * HOUR) == 0 { format!("{}d", ms / (24 * HOUR)) } else { format!("{}h", ms / HOUR) }
}

/// What each target's lock means, with the key statement and the SCP.
fn lock_advice(plan: &Plan, targets: &[(AccountId, String, bool)]) -> (Vec<LockAdvice>, Option<Value>) {
    let partition = plan.source.region.partition();
    let mut out = vec![];
    for (t, (account, key, _)) in plan.targets.iter().zip(targets) {
        let Some(lock) = t.lock else { continue };
        let mut notes = vec![];
        let d = lock.duration_ms();
        if let (Some(every), Some(keep)) = (plan.options.every, plan.options.keep) {
            let w = every.as_millis() as i64 * i64::from(keep);
            if d < w {
                notes.push(format!("copies are protected for {} of the {} they are kept", span(d), span(w)));
            } else if d > w {
                let step = every.as_millis() as i64;
                let extra = (d - w + step - 1) / step;
                notes.push(format!(
                    "copies are locked for {}, longer than the {} they are kept: retention keeps each one until its lock expires, about {extra} more copies per volume stored for {} more",
                    span(d),
                    span(w),
                    span(d - w)
                ));
            } else {
                notes.push(format!("copies are protected for all of the {} they are kept", span(w)));
            }
        } else {
            notes.push(format!("each copy is locked for {} from its completion", span(d)));
        }
        match lock.mode {
            crate::lock::LockMode::Compliance => notes.push(format!(
                "compliance mode: once the {}h cool-off after each lock has passed, nobody can delete these copies before their locks expire, {} after each completes: not an administrator, not the account's root user; the only way to remove one early is to close the account",
                lock.cool_off_hours.unwrap_or(0),
                span(d)
            )),
            crate::lock::LockMode::Governance => notes.push(
                "governance mode: anyone allowed ec2:UnlockSnapshot in the target account can unlock or shorten a lock; the service control policy below denies it to all but the break-glass role".to_owned(),
            ),
        }
        notes.push(format!(
            "a locked copy is only as safe as its key: AWS lets the key of a locked snapshot be scheduled for deletion; add the statement below to the policy of {} (snapferry never changes it), and keep kms:PutKeyPolicy on it to the break-glass role, or the statement can be taken out again",
            placeholder(key)
        ));
        let break_glass = policy::break_glass_placeholder(partition, &placeholder(account.as_str()));
        out.push(LockAdvice {
            account: placeholder(account.as_str()),
            region: t.region.to_string(),
            kms_key: placeholder(key),
            mode: lock.mode.as_str(),
            duration_days: lock.duration_days,
            cool_off_hours: lock.cool_off_hours,
            notes,
            key_policy_statement: policy::key_deny_statement(&break_glass),
        });
    }
    let scp = out.first().map(|a| policy::dr_account_scp(&policy::break_glass_placeholder(partition, &a.account)));
    // The SCP names the break-glass role by its path in each DR account.
    let scp = scp.map(|mut v| {
        v["Statement"][0]["Condition"]["ArnNotLike"]["aws:PrincipalArn"] =
            json!(format!("arn:{partition}:iam::*:role/<break-glass role>"));
        v
    });
    (out, scp)
}

#[derive(Debug, Clone, Serialize)]
pub struct SourceSide {
    pub account: String,
    pub region: String,
    pub kms_key: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct TargetSide {
    pub account: String,
    pub region: String,
    pub kms_key: String,
    pub role_arn: Option<String>,
}

/// One target of a `targets:` plan: where its copies go and what its role needs.
#[derive(Debug, Clone, Serialize)]
pub struct TargetReport {
    #[serde(flatten)]
    pub side: TargetSide,
    pub cross_account: bool,
    /// The IAM policy of this target's role (for a same-account target: what the caller
    /// needs in that region).
    pub iam_policy: Value,
    pub trust_policy: Option<Value>,
}

/// The steps of one volume entry of the plan.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum VolumeSteps {
    /// A volume preflight found, with what it learnt of it.
    Resolved { source_volume: String, size_gib: i32, current_key: Option<String>, steps: Vec<&'static str> },
    /// A volume named by id, offline.
    Named { source_volume: String, steps: Vec<&'static str> },
    /// A selector, offline: the volumes it picks are only known online.
    Selector { selector: BTreeMap<String, String>, steps: Vec<&'static str> },
}

impl VolumeSteps {
    fn who(&self) -> String {
        match self {
            VolumeSteps::Resolved { source_volume, .. } | VolumeSteps::Named { source_volume, .. } => {
                source_volume.clone()
            }
            VolumeSteps::Selector { selector, .. } => {
                format!("selector {}", serde_json::to_string(selector).unwrap_or_default())
            }
        }
    }

    fn steps(&self) -> &[&'static str] {
        match self {
            VolumeSteps::Resolved { steps, .. }
            | VolumeSteps::Named { steps, .. }
            | VolumeSteps::Selector { steps, .. } => steps,
        }
    }
}

/// The change to the source key's policy.
#[derive(Debug, Clone, Serialize)]
pub struct KeyPolicyChange {
    pub key_arn: String,
    /// The statement to add; `None` when nothing is shared (same account). With several
    /// target accounts, the first one's; all are in `add_statements`.
    pub add_statement: Option<Value>,
    /// With several target accounts: one statement per account, all put at once.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub add_statements: Vec<Value>,
    /// Whether an equivalent statement is there already; `None` when the policy could
    /// not be read (offline).
    pub already_present: Option<bool>,
    /// The line diff of the policy, when it was read and would change.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub diff: Option<String>,
    /// Why the statement cannot be merged into the current policy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// False for a same-account copy: the key policy needs no statement.
    #[serde(skip_serializing_if = "is_true")]
    pub needed: bool,
}

fn is_true(b: &bool) -> bool {
    *b
}

#[derive(Debug, Clone, Serialize)]
pub struct IamPolicies {
    pub source_caller: Value,
    pub target_role: Value,
    /// `None` when the accounts are one and no role is assumed.
    pub target_role_trust: Option<Value>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    pub resource: String,
    pub message: String,
}

/// The expected kind of each resolved volume's next copy into the target.
fn copy_kinds(r: &Resolved, source_key: &str) -> Vec<CopyKind> {
    r.volumes.iter().map(|sv| crate::exec::copy_kind(&sv.volume, source_key)).collect()
}

/// What `every`, `copy_within` and `keep_source` mean for this plan.
fn schedule_notes(plan: &Plan) -> Vec<String> {
    let o = &plan.options;
    let mut notes = vec![];
    if let Some(every) = o.every {
        notes.push(format!(
            "every {}s: each invocation copies a volume again when its newest successful copy began at least {}s ago (90%), and reports the others fresh",
            every.as_secs(),
            every.as_secs() * 9 / 10
        ));
    }
    if let Some(c) = o.copy_within {
        notes.push(format!(
            "copy_within {} minutes: time-based copies (CopySnapshot CompletionDurationMinutes); AWS bills them per GiB copied at a rate set by the duration chosen (shorter costs more), on top of snapshot storage; each copy runs at up to 500 MiB/s and concurrent time-based copies share 2,000 MiB/s per source-destination region pair (EBS User Guide, time-based copies)",
            c.minutes()
        ));
    }
    if o.keep_source > 0 {
        notes.push(format!(
            "keep_source {}: the newest {} source-side snapshots per volume are kept (unshared) after cleanup; whether AWS needs them for incremental copies is not documented",
            o.keep_source, o.keep_source
        ));
    }
    notes
}

/// What `options.verify` costs: the EBS direct API statements each side needs (in the
/// IAM documents) and the requests expected per copy and side.
fn verify_notes(plan: &Plan, resolved: Option<&Resolved>) -> Vec<String> {
    use crate::exec::verify::{GETS_PER_SECOND, LISTS_PER_SECOND, PAGE};
    let Some(level) = plan.options.verify else { return vec![] };
    let per_copy = |blocks: u64| {
        let lists = blocks.div_ceil(u64::from(PAGE)).max(1);
        match level {
            crate::verify::Level::Map => {
                format!("{lists} ListSnapshotBlocks (and one GetSnapshotBlock per block listed on one side only)")
            }
            crate::verify::Level::Sample => format!(
                "{} ListSnapshotBlocks and at most {} GetSnapshotBlock",
                2 * lists,
                blocks.min(u64::from(crate::verify::DEFAULT_SAMPLE))
            ),
            crate::verify::Level::Full => format!("{lists} ListSnapshotBlocks and up to {blocks} GetSnapshotBlock"),
        }
    };
    let mut notes = vec![format!(
        "verify {level}: each copy is compared with its source snapshot through the EBS direct APIs, the source \
         snapshot with the source credentials and the copy with its target's (ebs:ListSnapshotBlocks and \
         ebs:GetSnapshotBlock on each side's snapshots, ec2:CreateTags for the snapferry:verify tag on the copy); \
         requests are paced below {GETS_PER_SECOND} GetSnapshotBlock and {LISTS_PER_SECOND} ListSnapshotBlocks per \
         second per account; AWS bills $0.003 per 1,000 blocks read and $0.0006 per 1,000 list requests; per TiB \
         written, each side: {}",
        per_copy(1024 * 2048)
    )];
    if let Some(r) = resolved {
        for sv in &r.volumes {
            let blocks = u64::try_from(sv.volume.size_gib.max(0)).unwrap_or(0) * 2048;
            notes.push(format!(
                "verify {level} of {} ({} GiB): per copy and side, at most {}",
                sv.volume.id,
                sv.volume.size_gib,
                per_copy(blocks)
            ));
        }
    }
    notes
}

/// The accounts and keys of a dry-run: resolved online, from the plan or stand-ins
/// offline.
struct Sides {
    source_account: AccountId,
    /// Per target: its account, key and whether it crosses accounts.
    targets: Vec<(AccountId, String, bool)>,
    /// Whether any target crosses accounts.
    cross: bool,
    source_key: String,
    /// The target accounts the snapshot is shared with, each once.
    shared_with: Vec<AccountId>,
}

impl Sides {
    fn of(plan: &Plan, resolved: Option<&Resolved>) -> Self {
        let source_account = resolved
            .map(|r| r.source_identity.account.clone())
            .or(plan.source.account.clone())
            .unwrap_or_else(|| AccountId::parse(SOURCE_ACCOUNT_STANDIN).expect("valid"));
        let targets: Vec<(AccountId, String, bool)> = plan
            .targets
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let r = resolved.and_then(|r| r.targets.get(i));
                let account = r
                    .map(|r| r.account.clone())
                    .or(t.account.clone())
                    .or(t.role_arn.as_ref().map(|r| r.account()))
                    .unwrap_or_else(|| source_account.clone());
                let key =
                    r.map(|r| r.key.arn.to_string()).unwrap_or_else(|| key_placeholder(t.kms_key.as_str(), "target"));
                let cross = r.map(|r| r.cross_account).unwrap_or(account != source_account);
                (account, key, cross)
            })
            .collect();
        let cross = resolved.map(|r| r.cross_account).unwrap_or(targets.iter().any(|t| t.2));
        let source_key = resolved
            .map(|r| r.source_key.arn.to_string())
            .unwrap_or_else(|| key_placeholder(plan.source.kms_key.as_str(), "source"));
        let mut shared_with: Vec<AccountId> = vec![];
        for (a, _, c) in &targets {
            if *c && !shared_with.contains(a) {
                shared_with.push(a.clone());
            }
        }
        Sides { source_account, targets, cross, source_key, shared_with }
    }

    /// Target `i` as the report shows it.
    fn target(&self, plan: &Plan, i: usize) -> TargetSide {
        TargetSide {
            account: placeholder(self.targets[i].0.as_str()),
            region: plan.targets[i].region.to_string(),
            kms_key: placeholder(&self.targets[i].1),
            role_arn: plan.targets[i].role_arn.as_ref().map(|r| r.to_string()),
        }
    }
}

/// The steps of each volume entry, and the keys (other than the source key) that
/// resolved volumes are re-encrypted from.
fn steps_of(plan: &Plan, resolved: Option<&Resolved>, sides: &Sides) -> (Vec<VolumeSteps>, Vec<String>) {
    let cross = sides.cross;
    let mut reencrypt_keys = vec![];
    let steps = match resolved {
        Some(r) => r
            .volumes
            .iter()
            .map(|sv| {
                let under_source = sv.volume.kms_key_id.as_deref() == Some(sides.source_key.as_str());
                if let Some(k) = sv.volume.kms_key_id.as_ref().filter(|k| !under_source && !reencrypt_keys.contains(*k))
                {
                    reencrypt_keys.push(k.clone());
                }
                VolumeSteps::Resolved {
                    source_volume: sv.volume.id.to_string(),
                    size_gib: sv.volume.size_gib,
                    current_key: sv.volume.kms_key_id.clone(),
                    steps: volume_steps(plan, cross, Some(!under_source)),
                }
            })
            .collect(),
        None => plan
            .volumes
            .iter()
            .map(|spec| match &spec.pick {
                Pick::Id(id) => {
                    VolumeSteps::Named { source_volume: id.to_string(), steps: volume_steps(plan, cross, None) }
                }
                Pick::Selector(tags) => {
                    VolumeSteps::Selector { selector: tags.clone(), steps: volume_steps(plan, cross, None) }
                }
            })
            .collect(),
    };
    (steps, reencrypt_keys)
}

/// The change to the source key's policy: one statement per target account it is
/// shared with, merged into the current policy when it could be read.
fn key_policy_change(plan: &Plan, sides: &Sides, current_policy: Option<&str>) -> KeyPolicyChange {
    if sides.shared_with.is_empty() {
        return KeyPolicyChange {
            key_arn: placeholder(&sides.source_key),
            add_statement: None,
            add_statements: vec![],
            already_present: Some(false),
            diff: None,
            error: None,
            needed: false,
        };
    }
    let grants: Vec<Grant> =
        sides.shared_with.iter().map(|a| Grant::new(plan.name.clone(), a.clone(), &plan.source.region)).collect();
    let statements: Vec<Value> = grants.iter().map(|g| placeholders(policy::grant_statement(g))).collect();
    let mut change = KeyPolicyChange {
        key_arn: placeholder(&sides.source_key),
        add_statement: statements.first().cloned(),
        add_statements: if statements.len() > 1 { statements } else { vec![] },
        already_present: None,
        diff: None,
        error: None,
        needed: true,
    };
    if let Some(current) = current_policy {
        // Every statement merged into one policy, as the run puts it.
        let mut text = current.to_owned();
        let mut changed = false;
        let mut error = None;
        for g in &grants {
            match policy::ensure_grant(&text, g) {
                Ok(c) => {
                    changed |= c.changed;
                    text = c.new_policy;
                }
                Err(e) => error = Some(e.to_string()),
            }
        }
        match error {
            None => {
                change.already_present = Some(!changed);
                change.diff = Some(placeholder(&policy::diff(current, &text)));
            }
            Some(e) => {
                change.already_present = Some(false);
                change.error = Some(e);
            }
        }
    }
    change
}

/// The IAM documents per target; the caller's is the union of what each target needs.
fn iam_documents(
    plan: &Plan,
    resolved: Option<&Resolved>,
    sides: &Sides,
    reencrypt_keys: &[String],
) -> Vec<policy::IamDocuments> {
    plan.targets
        .iter()
        .zip(&sides.targets)
        .map(|(t, (account, key, cross))| {
            policy::documents(&IamContext {
                partition: plan.source.region.partition(),
                plan: plan.name.clone(),
                source_account: sides.source_account.clone(),
                source_region: plan.source.region.clone(),
                target_account: account.clone(),
                target_region: t.region.clone(),
                source_key: sides.source_key.clone(),
                target_key: key.clone(),
                role_arn: t.role_arn.clone(),
                external_id: t.external_id.clone(),
                caller_arn: resolved.map(|r| r.source_identity.arn.clone()),
                reencrypt_keys: reencrypt_keys.to_vec(),
                cross_account: *cross,
                create_volume: plan.options.create_volume,
                keep: plan.options.keep.is_some(),
                lock: t.lock,
                verify: plan.options.verify.is_some(),
            })
        })
        .collect()
}

impl DryRun {
    pub fn new(
        plan: &Plan,
        resolved: Option<&Resolved>,
        problems: &[PreflightError],
        current_policy: Option<&str>,
        offline: bool,
    ) -> Self {
        let sides = Sides::of(plan, resolved);
        let (steps, reencrypt_keys) = steps_of(plan, resolved, &sides);
        let key_policy = key_policy_change(plan, &sides, current_policy);
        let docs = iam_documents(plan, resolved, &sides, &reencrypt_keys);
        let source_caller = policy::merge_documents(docs.iter().map(|d| &d.source_caller));
        let target_reports: Vec<TargetReport> = if plan.fan_out {
            (0..plan.targets.len())
                .map(|i| TargetReport {
                    side: sides.target(plan, i),
                    cross_account: sides.targets[i].2,
                    iam_policy: placeholders(docs[i].target_role.clone()),
                    trust_policy: docs[i].target_role_trust.clone().map(placeholders),
                })
                .collect()
        } else {
            vec![]
        };
        let first = docs.into_iter().next().expect("a plan has at least one target");
        let (locks, dr_account_scp) = lock_advice(plan, &sides.targets);
        DryRun {
            plan: plan.name.to_string(),
            dry_run: true,
            offline,
            source: SourceSide {
                account: placeholder(sides.source_account.as_str()),
                region: plan.source.region.to_string(),
                kms_key: placeholder(&sides.source_key),
            },
            target: sides.target(plan, 0),
            targets: target_reports,
            cross_account: sides.cross,
            steps,
            key_policy,
            iam: IamPolicies {
                source_caller: placeholders(source_caller),
                target_role: placeholders(first.target_role),
                target_role_trust: first.target_role_trust.map(placeholders),
            },
            problems: problems
                .iter()
                .map(|p| Problem { resource: p.resource.clone(), message: p.message.clone() })
                .collect(),
            copy_kinds: resolved.map(|r| copy_kinds(r, &sides.source_key)).unwrap_or_default(),
            schedule: schedule_notes(plan).into_iter().chain(verify_notes(plan, resolved)).collect(),
            locks,
            dr_account_scp,
            warnings: resolved.map(|r| r.warnings.clone()).unwrap_or_default(),
        }
    }

    /// The report for people.
    pub fn text(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "dry run of plan {}{}: nothing was changed",
            self.plan,
            if self.offline { " (offline: placeholders in <angle brackets>)" } else { "" }
        );
        self.sides_text(&mut s);
        let _ = writeln!(s, "\n== steps per volume");
        for v in &self.steps {
            let _ = writeln!(s, "  {}: {}", v.who(), v.steps().join(" -> "));
        }
        self.key_policy_text(&mut s);
        self.iam_text(&mut s);
        self.locks_text(&mut s);
        self.notes_text(&mut s);
        s
    }

    /// Where the copies come from and go.
    fn sides_text(&self, s: &mut String) {
        let (src, dst) = (&self.source, &self.target);
        let _ = writeln!(s, "\nsource: account {} region {} key {}", src.account, src.region, src.kms_key);
        if self.targets.is_empty() {
            let _ = writeln!(s, "target: account {} region {} key {}", dst.account, dst.region, dst.kms_key);
        }
        for (i, t) in self.targets.iter().enumerate() {
            let t = &t.side;
            let _ = writeln!(s, "targets[{i}]: account {} region {} key {}", t.account, t.region, t.kms_key);
        }
    }

    /// The change to the source key's policy.
    fn key_policy_text(&self, s: &mut String) {
        let kp = &self.key_policy;
        if !kp.needed {
            let _ = writeln!(s, "\n== key policy: no change (same-account copy, nothing is shared)");
            return;
        }
        let _ = writeln!(s, "\n== key policy of {}", kp.key_arn);
        let statement = if kp.add_statements.is_empty() {
            kp.add_statement.as_ref().map(pretty).unwrap_or_default()
        } else {
            kp.add_statements.iter().map(pretty).collect::<Vec<_>>().join("\n")
        };
        match kp.already_present {
            Some(true) => {
                let _ = writeln!(s, "an equivalent statement is already present: no change");
            }
            Some(false) => {
                let _ = writeln!(s, "statement to add:\n{statement}");
                if let Some(d) = &kp.diff {
                    let _ = writeln!(s, "\ndiff of the policy:\n{d}");
                }
                if let Some(e) = &kp.error {
                    let _ = writeln!(s, "\nthe statement cannot be added: {e}");
                }
            }
            None => {
                let _ = writeln!(s, "statement to add unless an equivalent one is present:\n{statement}");
            }
        }
    }

    /// The IAM documents of the caller and of each target's role.
    fn iam_text(&self, s: &mut String) {
        let _ = writeln!(
            s,
            "\n== IAM policy for the identity running snapferry (source account)\n{}",
            pretty(&self.iam.source_caller)
        );
        if self.targets.is_empty() {
            let _ = writeln!(s, "\n== IAM policy for the target role\n{}", pretty(&self.iam.target_role));
            if let Some(trust) = &self.iam.target_role_trust {
                let _ = writeln!(s, "\n== trust policy of the target role\n{}", pretty(trust));
            }
        }
        for (i, t) in self.targets.iter().enumerate() {
            let who = match &t.side.role_arn {
                Some(role) if t.cross_account => format!("the role {role}"),
                _ => "the identity running snapferry, in that region".to_owned(),
            };
            let _ = writeln!(
                s,
                "\n== IAM policy for targets[{i}] (account {} region {}): {who}\n{}",
                t.side.account,
                t.side.region,
                pretty(&t.iam_policy)
            );
            if let Some(trust) = &t.trust_policy {
                let _ = writeln!(s, "\n== trust policy of targets[{i}]'s role\n{}", pretty(trust));
            }
        }
    }

    /// The next copy per volume, and the immutable copies with their statements.
    fn locks_text(&self, s: &mut String) {
        if !self.copy_kinds.is_empty() {
            let _ = writeln!(s, "\n== next copy per volume");
            for c in &self.copy_kinds {
                let _ = writeln!(s, "  {} ({} GiB): {}: {}", c.source_volume, c.size_gib, c.expected, c.why);
            }
        }
        if self.locks.is_empty() {
            return;
        }
        let _ = writeln!(s, "\n== immutable copies");
        for l in &self.locks {
            let cool = l.cool_off_hours.map(|h| format!(", cool-off {h}h")).unwrap_or_default();
            let _ = writeln!(
                s,
                "  copies in {} ({}): {} lock for {} days{cool}",
                l.account, l.region, l.mode, l.duration_days
            );
            for n in &l.notes {
                let _ = writeln!(s, "    - {n}");
            }
            let _ = writeln!(s, "    statement for the policy of {}:\n{}", l.kms_key, pretty(&l.key_policy_statement));
        }
        if let Some(scp) = &self.dr_account_scp {
            let _ = writeln!(s, "  service control policy for the DR account(s):\n{}", pretty(scp));
        }
    }

    /// The schedule, the warnings and the problems the run would stop on.
    fn notes_text(&self, s: &mut String) {
        if !self.schedule.is_empty() {
            let _ = writeln!(s, "\n== schedule");
            for n in &self.schedule {
                let _ = writeln!(s, "  {n}");
            }
        }
        if !self.warnings.is_empty() {
            let _ = writeln!(s, "\n== warnings");
            for w in &self.warnings {
                let _ = writeln!(s, "  - {w}");
            }
        }
        if !self.problems.is_empty() {
            let _ = writeln!(s, "\n== problems the run would stop on");
            for p in &self.problems {
                let _ = writeln!(s, "  - {}: {}", p.resource, p.message);
            }
        }
    }
}

/// A JSON document as the text report shows it.
fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default()
}

/// The steps of one volume, as the engine takes them, plus the run-wide steps around
/// them: the key grant before the share, retention at the end. `reencrypt` is `None`
/// offline, when the volume's key is not known.
fn volume_steps(plan: &Plan, cross: bool, reencrypt: Option<bool>) -> Vec<&'static str> {
    let route = Route {
        reencrypt: reencrypt.unwrap_or(true),
        cross_account: cross,
        create_volume: plan.options.create_volume,
        cleanup: plan.options.cleanup,
        lock: plan.locks(),
        verify: plan.options.verify.is_some(),
    };
    let mut s = vec![];
    for step in engine::planned_steps(route) {
        match step {
            Step::Reencrypt if reencrypt.is_none() => s.push("reencrypt-if-not-under-source-key"),
            Step::Share => s.extend(["grant-key", "share"]),
            other => s.push(other.as_str()),
        }
    }
    if plan.options.keep.is_some() {
        s.push("retention");
    }
    s
}
