//! The dry-run against what a run really does: the step order it prints is the one
//! the engine takes, and the IAM policies it prints allow every call the runner makes
//! on each side, deletes and failure paths included (replayed from runs on the
//! simulated AWS through a recording `Cloud`).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use serde_json::Value;
use snapferry::checkpoint::{RunStatus, Store};
use snapferry::cli::DryRun;
use snapferry::cloud::sim::{SimCloud, seed_from_plan};
use snapferry::cloud::{
    Cloud, CloudResult, CopySnapshotReq, CreateSnapshotReq, CreateVolumeReq, DataKey, DecryptReq, EncryptionContext,
    Identity, KeyInfo, Loc, LockedSnapshot, Probe, Side, Snapshot, Tags, Volume, WrappedKey,
};
use snapferry::engine::{self, Action, Ctx, Outcome, Route, Step, TimeoutsMs, VolumeRun, Which};
use snapferry::exec::{Env, RunConfig, preflight, run};
use snapferry::ids::{AccountId, KeyArn, KeyRef, RoleArn, SnapshotId, VolumeId};
use snapferry::lock::{CopyLock, LockMode, LockSpec, LockState};
use snapferry::plan::{Plan, parse};
use snapferry::policy::{IamRequest, identity_allows};
use tokio::sync::watch;
use zeroize::Zeroizing;

use crate::support::plans::{self, DR, SOURCE_ACCOUNT, Target};
use crate::support::rig::sim_env;

/// Walks the engine through a volume's happy path and names the steps it acts at.
fn walk(route: Route) -> Vec<Step> {
    let source_key =
        KeyArn::parse("arn:aws:kms:us-east-1:111111111111:key/1234abcd-12ab-34cd-56ef-1234567890ab").unwrap();
    let ctx = Ctx {
        cross_account: route.cross_account,
        source_key: source_key.clone(),
        create_volume: route.create_volume,
        cleanup: route.cleanup,
        keep_source: false,
        timeouts_ms: TimeoutsMs { snapshot: 1, copy: 1, volume: 1 },
        locks: vec![route.lock.then_some(LockSpec {
            mode: LockMode::Governance,
            duration_days: 2,
            cool_off_hours: None,
        })],
        verify: route.verify.then_some(snapferry::verify::Level::Map),
    };
    let first_key = if route.reencrypt { None } else { Some(source_key.to_string()) };
    let mut v = VolumeRun::new(VolumeId::parse("vol-00000000000000001").unwrap());
    let mut acted = vec![];
    let mut n = 0u32;
    while v.step != Step::Done {
        assert!(v.step != Step::Failed && acted.len() < 20, "{v:?}");
        let action = engine::next_action(&v, "run");
        n += 1;
        let snap = SnapshotId::parse(&format!("snap-{n:017x}")).unwrap();
        let outcome = match &action {
            Action::CreateSnapshot | Action::Reencrypt { .. } | Action::Copy { .. } => Outcome::SnapshotCreated(snap),
            Action::Share { .. } => Outcome::Shared,
            Action::Lock { .. } => {
                Outcome::Locked(CopyLock { mode: LockMode::Governance, state: LockState::Governance, expires_ms: None })
            }
            Action::CreateVolume { .. } => Outcome::VolumeCreated(VolumeId::parse(&format!("vol-{n:017x}")).unwrap()),
            Action::Cleanup { .. } => Outcome::CleanedUp,
            Action::Verify { source, copy } => Outcome::Verified(Box::new(snapferry::verify::Record {
                level: snapferry::verify::Level::Map,
                result: "matched".to_owned(),
                source_snapshot: source.to_string(),
                copy_snapshot: copy.to_string(),
                sample_seed: None,
                sample_size: None,
                blocks_compared: 1,
                first_mismatch: None,
                duration_ms: 0,
                source_requests: 1,
                copy_requests: 1,
                source_digest: None,
                copy_digest: None,
            })),
            Action::PollSnapshot { which: Which::Source, .. } => {
                Outcome::SnapshotCompleted { kms_key: first_key.clone() }
            }
            Action::PollSnapshot { .. } => Outcome::SnapshotCompleted { kms_key: Some(source_key.to_string()) },
            Action::PollVolume { .. } => Outcome::VolumeAvailable,
            other => panic!("unexpected action {other:?} at {:?}", v.step),
        };
        if action.is_mutating() {
            acted.push(v.step);
            v = engine::begin(&v, 0);
        }
        v = engine::apply(&v, &outcome, &ctx, 0).unwrap();
    }
    acted
}

#[test]
fn planned_steps_are_the_steps_the_engine_takes() {
    for bits in 0..64u8 {
        let route = Route {
            reencrypt: bits & 1 != 0,
            cross_account: bits & 2 != 0,
            create_volume: bits & 4 != 0,
            cleanup: bits & 8 != 0,
            lock: bits & 16 != 0,
            verify: bits & 32 != 0,
        };
        assert_eq!(engine::planned_steps(route), walk(route), "{route:?}");
    }
}

/// One IAM request a cloud call makes, on one side.
#[derive(Debug, Clone)]
struct Call {
    side: Side,
    request: IamRequest,
}

/// A `Cloud` that performs every call on the simulated AWS and writes down the IAM
/// requests each one makes: the API action itself on each resource it authorizes,
/// the tags on create, and the KMS calls EBS makes on the caller's behalf.
struct Recorder {
    inner: SimCloud,
    source_account: AccountId,
    /// Per target of the plan: its account and the role its side assumes.
    target_accounts: Vec<AccountId>,
    roles: Vec<Option<RoleArn>>,
    calls: Mutex<Vec<Call>>,
}

const PLAN_TAG: &str = "snapferry:plan";

impl Recorder {
    fn account(&self, side: Side) -> &AccountId {
        match side {
            Side::Source => &self.source_account,
            Side::Target(i) => &self.target_accounts[usize::from(i)],
        }
    }

    fn note(&self, side: Side, action: &str, resource: &str, context: &[(&str, &str)]) {
        let context = context.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let request = IamRequest { action: action.to_owned(), resource: resource.to_owned(), context };
        self.calls.lock().unwrap().push(Call { side, request });
    }

    /// The KMS calls EBS makes with the caller's permissions when it encrypts or
    /// decrypts under `key` (AWS KMS developer guide, "How Amazon EBS uses AWS KMS").
    fn ebs_uses_key(&self, side: Side, key: &str) {
        for action in ["kms:DescribeKey", "kms:GenerateDataKeyWithoutPlaintext", "kms:Decrypt", "kms:ReEncryptFrom"] {
            self.note(side, action, key, &[]);
        }
        self.note(side, "kms:ReEncryptTo", key, &[]);
        self.note(side, "kms:CreateGrant", key, &[("kms:GrantIsForAWSResource", "true")]);
    }

    fn snapshot_arn(loc: &Loc, id: &str) -> String {
        format!("arn:aws:ec2:{}::snapshot/{id}", loc.region)
    }

    fn volume_arn(&self, loc: &Loc, id: &str) -> String {
        format!("arn:aws:ec2:{}:{}:volume/{id}", loc.region, self.account(loc.side))
    }

    async fn snapshot(&self, loc: &Loc, id: &SnapshotId) -> Option<Snapshot> {
        self.inner.describe_snapshots(loc, std::slice::from_ref(id)).await.ok()?.into_iter().next()
    }

    fn plan_tag(tags: &Tags) -> Vec<(&str, &str)> {
        tags.get(PLAN_TAG).map(|p| vec![("aws:ResourceTag/snapferry:plan", p.as_str())]).unwrap_or_default()
    }
}

#[async_trait]
impl Cloud for Recorder {
    async fn caller_identity(&self, side: Side) -> CloudResult<Identity> {
        let role = match side {
            Side::Target(i) => self.roles[usize::from(i)].as_ref(),
            Side::Source => None,
        };
        match (side, role) {
            // The target side's credentials come from AssumeRole with the caller's.
            (Side::Target(_), Some(role)) => self.note(Side::Source, "sts:AssumeRole", role.as_str(), &[]),
            // GetCallerIdentity needs no permission; the source policy allows it anyway.
            _ => self.note(Side::Source, "sts:GetCallerIdentity", "*", &[]),
        }
        self.inner.caller_identity(side).await
    }
    async fn describe_key(&self, loc: &Loc, key: &KeyRef) -> CloudResult<KeyInfo> {
        let info = self.inner.describe_key(loc, key).await?;
        self.note(loc.side, "kms:DescribeKey", info.arn.as_str(), &[]);
        Ok(info)
    }
    async fn get_key_policy(&self, loc: &Loc, key: &KeyArn) -> CloudResult<String> {
        self.note(loc.side, "kms:GetKeyPolicy", key.as_str(), &[]);
        self.inner.get_key_policy(loc, key).await
    }
    async fn put_key_policy(&self, loc: &Loc, key: &KeyArn, policy: &str) -> CloudResult<()> {
        self.note(loc.side, "kms:PutKeyPolicy", key.as_str(), &[]);
        self.inner.put_key_policy(loc, key, policy).await
    }
    async fn describe_volumes(&self, loc: &Loc, ids: &[VolumeId]) -> CloudResult<Vec<Volume>> {
        self.note(loc.side, "ec2:DescribeVolumes", "*", &[]);
        self.inner.describe_volumes(loc, ids).await
    }
    async fn find_volumes(&self, loc: &Loc, tags: &Tags) -> CloudResult<Vec<Volume>> {
        self.note(loc.side, "ec2:DescribeVolumes", "*", &[]);
        self.inner.find_volumes(loc, tags).await
    }
    async fn create_volume(&self, loc: &Loc, req: &CreateVolumeReq) -> CloudResult<VolumeId> {
        let volume = self.volume_arn(loc, "*");
        self.note(loc.side, "ec2:CreateVolume", &volume, &[]);
        self.note(loc.side, "ec2:CreateVolume", &Self::snapshot_arn(loc, req.snapshot.as_str()), &[]);
        self.note(loc.side, "ec2:CreateTags", &volume, &[("ec2:CreateAction", "CreateVolume")]);
        self.ebs_uses_key(loc.side, req.kms_key.as_str());
        self.inner.create_volume(loc, req).await
    }
    async fn delete_volume(&self, loc: &Loc, id: &VolumeId) -> CloudResult<()> {
        let found = self.inner.describe_volumes(loc, std::slice::from_ref(id)).await?;
        if let Some(v) = found.first() {
            self.note(loc.side, "ec2:DeleteVolume", &self.volume_arn(loc, id.as_str()), &Self::plan_tag(&v.tags));
        }
        self.inner.delete_volume(loc, id).await
    }
    async fn create_snapshot(&self, loc: &Loc, req: &CreateSnapshotReq) -> CloudResult<Snapshot> {
        let snapshots = Self::snapshot_arn(loc, "*");
        self.note(loc.side, "ec2:CreateSnapshot", &self.volume_arn(loc, req.volume.as_str()), &[]);
        self.note(loc.side, "ec2:CreateSnapshot", &snapshots, &[]);
        self.note(loc.side, "ec2:CreateTags", &snapshots, &[("ec2:CreateAction", "CreateSnapshot")]);
        self.inner.create_snapshot(loc, req).await
    }
    async fn copy_snapshot(&self, loc: &Loc, req: &CopySnapshotReq) -> CloudResult<SnapshotId> {
        let from = Loc::new(Side::Source, &req.source_region);
        let new = Self::snapshot_arn(loc, "*");
        self.note(loc.side, "ec2:CopySnapshot", &Self::snapshot_arn(&from, req.source_snapshot.as_str()), &[]);
        self.note(loc.side, "ec2:CopySnapshot", &new, &[]);
        self.note(loc.side, "ec2:CreateTags", &new, &[("ec2:CreateAction", "CopySnapshot")]);
        // EBS decrypts under the key the snapshot is under and encrypts under the new one.
        if let Some(key) = self.snapshot(&from, &req.source_snapshot).await.and_then(|s| s.kms_key_id) {
            self.ebs_uses_key(loc.side, &key);
        }
        self.ebs_uses_key(loc.side, req.kms_key.as_str());
        self.inner.copy_snapshot(loc, req).await
    }
    async fn describe_snapshots(&self, loc: &Loc, ids: &[SnapshotId]) -> CloudResult<Vec<Snapshot>> {
        self.note(loc.side, "ec2:DescribeSnapshots", "*", &[]);
        self.inner.describe_snapshots(loc, ids).await
    }
    async fn find_snapshots(&self, loc: &Loc, tags: &Tags) -> CloudResult<Vec<Snapshot>> {
        self.note(loc.side, "ec2:DescribeSnapshots", "*", &[]);
        self.inner.find_snapshots(loc, tags).await
    }
    async fn delete_snapshot(&self, loc: &Loc, id: &SnapshotId) -> CloudResult<()> {
        if let Some(s) = self.snapshot(loc, id).await {
            self.note(loc.side, "ec2:DeleteSnapshot", &Self::snapshot_arn(loc, id.as_str()), &Self::plan_tag(&s.tags));
        }
        self.inner.delete_snapshot(loc, id).await
    }
    async fn lock_snapshot(&self, loc: &Loc, id: &SnapshotId, spec: &LockSpec) -> CloudResult<LockedSnapshot> {
        let days = spec.duration_days.to_string();
        self.note(
            loc.side,
            "ec2:LockSnapshot",
            &Self::snapshot_arn(loc, id.as_str()),
            &[("ec2:SnapshotLockDuration", days.as_str())],
        );
        self.inner.lock_snapshot(loc, id, spec).await
    }
    async fn describe_locked_snapshots(&self, loc: &Loc, ids: &[SnapshotId]) -> CloudResult<Vec<LockedSnapshot>> {
        self.note(loc.side, "ec2:DescribeLockedSnapshots", "*", &[]);
        self.inner.describe_locked_snapshots(loc, ids).await
    }
    async fn share_snapshot(&self, loc: &Loc, id: &SnapshotId, with: &[AccountId]) -> CloudResult<()> {
        let tags = self.snapshot(loc, id).await.map(|s| s.tags).unwrap_or_default();
        self.note(
            loc.side,
            "ec2:ModifySnapshotAttribute",
            &Self::snapshot_arn(loc, id.as_str()),
            &Self::plan_tag(&tags),
        );
        self.inner.share_snapshot(loc, id, with).await
    }
    async fn unshare_snapshot(&self, loc: &Loc, id: &SnapshotId, with: &[AccountId]) -> CloudResult<()> {
        let tags = self.snapshot(loc, id).await.map(|s| s.tags).unwrap_or_default();
        self.note(
            loc.side,
            "ec2:ModifySnapshotAttribute",
            &Self::snapshot_arn(loc, id.as_str()),
            &Self::plan_tag(&tags),
        );
        self.inner.unshare_snapshot(loc, id, with).await
    }
    async fn snapshot_shared_with(&self, loc: &Loc, id: &SnapshotId) -> CloudResult<Vec<AccountId>> {
        self.note(loc.side, "ec2:DescribeSnapshotAttribute", &Self::snapshot_arn(loc, id.as_str()), &[]);
        self.inner.snapshot_shared_with(loc, id).await
    }
    async fn dry_run(&self, loc: &Loc, probe: &Probe) -> CloudResult<()> {
        let resource = match probe {
            Probe::CreateSnapshot { volume } => self.volume_arn(loc, volume.as_str()),
            Probe::CreateVolume { .. } => self.volume_arn(loc, "*"),
        };
        self.note(loc.side, probe.action(), &resource, &[]);
        self.inner.dry_run(loc, probe).await
    }
    async fn generate_data_key(&self, loc: &Loc, key: &KeyRef, context: &EncryptionContext) -> CloudResult<DataKey> {
        self.note(loc.side, "kms:GenerateDataKey", key.as_str(), &[]);
        self.inner.generate_data_key(loc, key, context).await
    }
    async fn generate_data_key_without_plaintext(
        &self,
        loc: &Loc,
        key: &KeyRef,
        context: &EncryptionContext,
    ) -> CloudResult<WrappedKey> {
        self.note(loc.side, "kms:GenerateDataKeyWithoutPlaintext", key.as_str(), &[]);
        self.inner.generate_data_key_without_plaintext(loc, key, context).await
    }
    async fn decrypt(&self, loc: &Loc, req: &DecryptReq<'_>) -> CloudResult<(Zeroizing<Vec<u8>>, KeyArn)> {
        let (plain, key) = self.inner.decrypt(loc, req).await?;
        self.note(loc.side, "kms:Decrypt", key.as_str(), &[]);
        Ok((plain, key))
    }
    async fn generate_random(&self, loc: &Loc, bytes: u32) -> CloudResult<Vec<u8>> {
        self.note(loc.side, "kms:GenerateRandom", "*", &[]);
        self.inner.generate_random(loc, bytes).await
    }
    async fn tag_snapshot(&self, loc: &Loc, id: &SnapshotId, tags: &Tags) -> CloudResult<()> {
        let own = self.snapshot(loc, id).await.map(|s| s.tags).unwrap_or_default();
        self.note(loc.side, "ec2:CreateTags", &Self::snapshot_arn(loc, id.as_str()), &Self::plan_tag(&own));
        self.inner.tag_snapshot(loc, id, tags).await
    }
    async fn list_snapshot_blocks(
        &self,
        loc: &Loc,
        id: &SnapshotId,
        start: Option<u64>,
        next_token: Option<&str>,
        max_results: u32,
    ) -> CloudResult<snapferry::cloud::BlockPage> {
        self.note(loc.side, "ebs:ListSnapshotBlocks", &Self::snapshot_arn(loc, id.as_str()), &[]);
        self.inner.list_snapshot_blocks(loc, id, start, next_token, max_results).await
    }
    async fn get_snapshot_block(
        &self,
        loc: &Loc,
        id: &SnapshotId,
        index: u64,
        token: &str,
    ) -> CloudResult<snapferry::cloud::BlockChecksum> {
        self.note(loc.side, "ebs:GetSnapshotBlock", &Self::snapshot_arn(loc, id.as_str()), &[]);
        self.inner.get_snapshot_block(loc, id, index, token).await
    }
}

/// The recovery account through its role with an external id.
const DR_X: Target = Target { external_id: Some("x-1"), ..DR };

pub(super) fn cross() -> String {
    plans::plan_text("iam-check", &[DR_X], 3, "  keep: 1\n  cleanup: true\n")
}

/// Runs `plan` on one simulated world until retention prunes older copies; with
/// `key_failure`, the middle run's copies of one volume fail on their key, so the
/// last run deletes the copy in error before it copies again. Returns what the
/// dry-run prints for the plan and every request the runs made.
async fn replay(plan: &Plan, key_failure: bool) -> (DryRun, Vec<Call>) {
    let (world, sides) = seed_from_plan(plan, 1_800_000_000_000);
    let sim = SimCloud::new(world, sides.clone());
    let source_account = sides.source_account.clone();
    let target_accounts =
        plan.targets.iter().map(|t| t.account.clone().unwrap_or_else(|| source_account.clone())).collect();
    let recorder = Arc::new(Recorder {
        inner: sim.clone(),
        source_account,
        target_accounts,
        roles: sides.targets.iter().map(|t| t.role.clone()).collect(),
        calls: Mutex::new(vec![]),
    });
    let dir = tempfile::tempdir().unwrap();
    let env = Env { cloud: recorder.clone(), ..sim_env(&sim, Store::new(dir.path())) };
    let cfg = RunConfig {
        plan: plan.clone(),
        plan_file: "plan.yaml".into(),
        run_id: None,
        simulated: true,
        probe_permissions: true,
        progress: None,
    };

    // What the dry-run prints, from the same world before anything changed.
    let resolved = preflight(plan, &sim, &sim, false).await.unwrap();
    let loc = Loc::new(Side::Source, &plan.source.region);
    let policy = sim.get_key_policy(&loc, &resolved.source_key.arn).await.unwrap();
    let printed = DryRun::new(plan, Some(&resolved), &[], Some(&policy), false);

    let (_tx, rx) = watch::channel(false);
    let first = run(cfg.clone(), env.clone(), rx.clone()).await.unwrap();
    assert_eq!(first.status, RunStatus::Succeeded, "{first:#?}");
    // Locked copies outlive retention until their locks expire: let them.
    let wait_out_locks = || {
        if plan.locks() {
            sim.with_world(|w| w.now_ms += 2 * 86_400_000);
        }
    };
    wait_out_locks();
    if key_failure {
        let snapferry::plan::Pick::Id(failing) = plan.volumes[1].pick.clone() else { unreachable!() };
        sim.with_world(|w| w.faults.key_inaccessible_for = Some(failing));
        let second = run(cfg.clone(), env.clone(), rx.clone()).await.unwrap();
        assert_eq!(second.status, RunStatus::Failed, "{second:#?}");
        sim.with_world(|w| w.faults.key_inaccessible_for = None);
        wait_out_locks();
    }
    let third = run(cfg, env, rx).await.unwrap();
    assert_eq!(third.status, RunStatus::Succeeded, "{third:#?}");
    if plan.options.keep.is_some() {
        assert!(third.retention.is_some_and(|p| !p.snapshots.is_empty()), "retention pruned older copies");
    }
    let calls = recorder.calls.lock().unwrap().clone();
    (printed, calls)
}

/// Every request the policy of its side does not allow.
fn refused(printed: &DryRun, calls: &[Call], cross_account: bool) -> Vec<String> {
    let allowed = |doc: &Value, r: &IamRequest| identity_allows(doc, r);
    let mut out: Vec<String> = calls
        .iter()
        .filter(|c| {
            // A fan-out plan prints one document per target; a single target's is `iam`.
            let (target_doc, cross) = match c.side {
                Side::Target(i) if !printed.targets.is_empty() => {
                    let t = &printed.targets[usize::from(i)];
                    (&t.iam_policy, t.cross_account)
                }
                _ => (&printed.iam.target_role, cross_account),
            };
            match (c.side, cross) {
                (Side::Source, _) => !allowed(&printed.iam.source_caller, &c.request),
                (Side::Target(_), true) => !allowed(target_doc, &c.request),
                // One account: the caller holds both documents.
                (Side::Target(_), false) => {
                    !allowed(&printed.iam.source_caller, &c.request) && !allowed(target_doc, &c.request)
                }
            }
        })
        .map(|c| format!("{} {} on {} {:?}", c.side, c.request.action, c.request.resource, c.request.context))
        .collect();
    out.sort();
    out.dedup();
    out
}

fn actions_on(calls: &[Call], side: Side) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for c in calls.iter().filter(|c| c.side == side) {
        *m.entry(c.request.action.clone()).or_default() += 1;
    }
    m
}

#[tokio::test]
async fn printed_policies_allow_every_call_of_a_cross_account_run() {
    let plan = parse("plan.yaml", &cross()).unwrap();
    let (printed, calls) = replay(&plan, true).await;
    let target = actions_on(&calls, Side::TARGET);
    // The replay reaches the deletes on the target side, not only the happy path.
    for action in ["ec2:CopySnapshot", "ec2:CreateVolume", "ec2:DeleteSnapshot", "ec2:DeleteVolume", "kms:CreateGrant"]
    {
        assert!(target.contains_key(action), "{action} on the target side: {target:?}");
    }
    let source = actions_on(&calls, Side::Source);
    for action in ["ec2:CreateSnapshot", "ec2:CopySnapshot", "ec2:ModifySnapshotAttribute", "kms:PutKeyPolicy"] {
        assert!(source.contains_key(action), "{action} on the source side: {source:?}");
    }
    let refused = refused(&printed, &calls, true);
    assert!(refused.is_empty(), "calls the printed policies do not allow:\n{}", refused.join("\n"));
    // And the documents are not simply `*`: a delete of something another plan made
    // is refused.
    let foreign = IamRequest {
        action: "ec2:DeleteSnapshot".into(),
        resource: "arn:aws:ec2:eu-west-1::snapshot/snap-0123456789abcdef0".into(),
        context: [("aws:ResourceTag/snapferry:plan".to_owned(), "another-plan".to_owned())].into(),
    };
    assert!(!identity_allows(&printed.iam.target_role, &foreign));
}

/// A locked plan: the lock calls (LockSnapshot under the target role, bounded by the
/// plan's duration; DescribeLockedSnapshots; the target key's policy read in
/// preflight) are all allowed by what the dry-run prints, a copy in error (whose lock
/// AWS cancelled) is deleted, and a longer lock than the plan's is refused. The dry-run
/// also prints the key statement, the DR account's SCP and, for compliance, in words
/// that nobody can delete the copies before they expire.
#[tokio::test]
async fn printed_policies_allow_every_lock_call_of_a_locked_run() {
    let text = cross()
        .replace("  keep: 1\n", "  keep: 1\n  every: 24h\n  lock: {mode: compliance, duration: 1d, cool_off: 1h}\n");
    let plan = parse("plan.yaml", &text).unwrap();
    let (printed, calls) = replay(&plan, true).await;
    let target = actions_on(&calls, Side::TARGET);
    for action in ["ec2:LockSnapshot", "ec2:DescribeLockedSnapshots", "kms:GetKeyPolicy", "ec2:DeleteSnapshot"] {
        assert!(target.contains_key(action), "{action} on the target side: {target:?}");
    }
    assert!(!actions_on(&calls, Side::Source).contains_key("ec2:LockSnapshot"), "locks are made with the target role");
    let refused = refused(&printed, &calls, true);
    assert!(refused.is_empty(), "calls the printed policies do not allow:\n{}", refused.join("\n"));
    let longer = IamRequest {
        action: "ec2:LockSnapshot".into(),
        resource: "arn:aws:ec2:eu-west-1::snapshot/snap-0123456789abcdef0".into(),
        context: [("ec2:SnapshotLockDuration".to_owned(), "36500".to_owned())].into(),
    };
    assert!(!identity_allows(&printed.iam.target_role, &longer), "a lock longer than the plan's is refused");

    let json = serde_json::to_value(&printed).unwrap();
    let lock = &json["locks"][0];
    assert_eq!((lock["mode"].as_str(), lock["duration_days"].as_u64()), (Some("compliance"), Some(1)));
    let deny = &lock["key_policy_statement"];
    assert_eq!(deny["Effect"], "Deny");
    assert!(snapferry::policy::denies_key_removal(&serde_json::json!({"Statement": [deny]}).to_string()));
    let scp = json["dr_account_scp"]["Statement"][0]["Action"].to_string();
    assert!(scp.contains("ec2:UnlockSnapshot") && scp.contains("kms:ScheduleKeyDeletion"), "{scp}");
    let text = printed.text();
    assert!(
        text.contains("copies are protected for 1d of the 1d they are kept") || text.contains("all of the 1d"),
        "{text}"
    );
    assert!(text.contains("nobody can delete these copies before their locks expire"), "{text}");
    let week = cross().replace("  keep: 1\n", "  keep: 7\n  every: 24h\n  lock: {mode: governance, duration: 2d}\n");
    let offline = DryRun::new(&parse("plan.yaml", &week).unwrap(), None, &[], None, true).text();
    assert!(offline.contains("copies are protected for 2d of the 7d they are kept"), "{offline}");
    assert!(!offline.contains("nobody can delete"), "governance is not compliance: {offline}");
    // The seeded target key has only the default policy: preflight warns, naming it.
    assert!(
        printed.warnings.iter().any(|w| w.contains("target key arn:aws:kms:eu-west-1:222222222222")),
        "{:?}",
        printed.warnings
    );
}

/// A verified plan: each side's EBS direct API reads (the source snapshot with the
/// source credentials, the copy with the target role) and the tag on the copy are
/// allowed by what the dry-run prints, which also says the requests per copy.
#[tokio::test]
async fn printed_policies_allow_every_verify_call_of_a_verified_run() {
    let text = cross().replace("  keep: 1\n", "  keep: 1\n  verify: full\n");
    let plan = parse("plan.yaml", &text).unwrap();
    let (printed, calls) = replay(&plan, true).await;
    for side in [Side::Source, Side::TARGET] {
        let acts = actions_on(&calls, side);
        for action in ["ebs:ListSnapshotBlocks", "ebs:GetSnapshotBlock"] {
            assert!(acts.contains_key(action), "{action} on the {side} side: {acts:?}");
        }
    }
    assert!(actions_on(&calls, Side::TARGET).contains_key("ec2:CreateTags"));
    let refused = refused(&printed, &calls, true);
    assert!(refused.is_empty(), "calls the printed policies do not allow:\n{}", refused.join("\n"));
    let text = printed.text();
    assert!(text.contains("verify full") && text.contains("GetSnapshotBlock"), "{text}");
    assert!(printed.schedule.iter().any(|n| n.contains("ListSnapshotBlocks and up to")), "{:?}", printed.schedule);
}

#[tokio::test]
async fn without_retention_the_target_role_may_still_delete_a_copy_in_error() {
    let plan = parse("plan.yaml", &cross().replace("  keep: 1\n", "")).unwrap();
    assert!(plan.options.keep.is_none());
    let (printed, calls) = replay(&plan, true).await;
    assert!(actions_on(&calls, Side::TARGET).contains_key("ec2:DeleteSnapshot"), "the copy in error is deleted");
    let refused = refused(&printed, &calls, true);
    assert!(refused.is_empty(), "calls the printed policies do not allow:\n{}", refused.join("\n"));
}

#[tokio::test]
async fn printed_policies_allow_every_call_of_a_same_account_run() {
    let text = cross()
        .replace("  account: \"222222222222\"\n  role_arn: arn:aws:iam::222222222222:role/dr\n  external_id: x-1\n", "")
        .replace("name: iam-check", "name: iam-check-same");
    let plan = parse("plan.yaml", &text).unwrap();
    let (printed, calls) = replay(&plan, false).await;
    assert!(actions_on(&calls, Side::TARGET).contains_key("ec2:DeleteSnapshot"));
    let refused = refused(&printed, &calls, false);
    assert!(refused.is_empty(), "calls the printed policies do not allow:\n{}", refused.join("\n"));
}

/// Two targets: one in another account, reached by its role, and one in the caller's
/// own account in a third region.
pub(super) fn fan_out() -> String {
    let local = Target {
        region: "us-west-2",
        account: SOURCE_ACCOUNT,
        role: None,
        external_id: None,
        kms_key: "alias/local-dr",
        availability_zone: "us-west-2c",
        more: &[],
    };
    plans::plan_text("iam-fan", &[Target { availability_zone: "eu-west-1a", ..DR_X }, local], 3, "  keep: 1\n")
}

#[tokio::test]
async fn printed_policies_allow_every_call_of_a_fan_out_run_per_target() {
    let plan = parse("plan.yaml", &fan_out()).unwrap();
    let (printed, calls) = replay(&plan, true).await;
    assert_eq!(printed.targets.len(), 2);
    assert!(printed.targets[0].cross_account && !printed.targets[1].cross_account);
    assert!(printed.targets[0].trust_policy.is_some(), "the role's trust policy is printed");
    for side in [Side::Target(0), Side::Target(1)] {
        let on = actions_on(&calls, side);
        for action in ["ec2:CopySnapshot", "ec2:CreateVolume", "ec2:DeleteSnapshot"] {
            assert!(on.contains_key(action), "{action} on {side}: {on:?}");
        }
    }
    let refused = refused(&printed, &calls, true);
    assert!(refused.is_empty(), "requests the printed policies do not allow:\n{}", refused.join("\n"));
}
