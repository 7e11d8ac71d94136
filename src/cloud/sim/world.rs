//! The simulated world's state and the AWS rules it keeps. Every method is one
//! request's effect, run under the world's lock; time is the virtual `now_ms`.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::blocks::BlockMap;
use crate::cloud::{
    BlockChecksum, BlockPage, CloudError, CloudResult, CopySnapshotReq, CreateSnapshotReq, CreateVolumeReq, ErrorKind,
    KeyInfo, KeyManager, LockedSnapshot, Snapshot, SnapshotState, Tags, Volume, VolumeState,
};
use crate::ids::{AccountId, KeyArn, KeyRef, Region, RoleArn, SnapshotId, VolumeId};
use crate::lock::{LockMode, LockSpec, LockState};

/// The error code DeleteSnapshot answers for a locked snapshot.
pub const SNAPSHOT_LOCKED: &str = "SnapshotLocked";

/// EBS quota "Concurrent snapshot copies per destination Region" (default 20).
pub const MAX_CONCURRENT_COPIES: usize = 20;

/// Faults a test or rehearsal can switch on.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Faults {
    /// Fraction (0..1) of calls answered with a throttling error, deterministically.
    pub throttle_rate: f64,
    /// A new snapshot is invisible to Describe calls for this long after creation.
    pub invisible_ms: i64,
    /// Copies of this source volume's snapshots behave as if the key grant were
    /// missing (a concurrent policy edit, an SCP, a Deny the run cannot see).
    pub key_inaccessible_for: Option<VolumeId>,
    /// Copies into this account, of any volume, fail as if the source key's policy did
    /// not reach it: "Given key ID is not accessible".
    #[serde(default)]
    pub key_inaccessible_to: Option<AccountId>,
    /// After this many calls in total, the next call takes effect and its caller
    /// hangs forever: a crash between the call and the checkpoint of its outcome.
    pub halt_after_calls: Option<u64>,
    /// Actions (`ec2:CreateVolume`, ...) the caller lacks permission for: they, and
    /// their DryRun probes, are answered UnauthorizedOperation.
    #[serde(default)]
    pub denied: BTreeSet<String>,
    /// The account's copy quota per destination, when lower than AWS's default 20
    /// (copies made by others hold the rest).
    #[serde(default)]
    pub copy_quota: Option<usize>,
    /// A share reaches the other account only this long after ModifySnapshotAttribute.
    #[serde(default)]
    pub share_lag_ms: i64,
    /// After this many calls in total, every call is refused with ExpiredToken, as
    /// when a session's credentials outlive their hour.
    #[serde(default)]
    pub credentials_expire_after_calls: Option<u64>,
    /// Actions that take effect but whose answer is lost (a timeout on the way back):
    /// the caller gets a transport error and cannot know the outcome.
    #[serde(default)]
    pub lose_answers_of: BTreeSet<String>,
    /// Lookups by tag (DescribeSnapshots and DescribeVolumes with tag filters) are
    /// refused, while describes by id still answer.
    #[serde(default)]
    pub lookups_fail: bool,
    /// As the first copy from another account starts, another writer of the source
    /// key's policy puts back a document it read before snapferry's statements were
    /// added (KMS has no conditional PutKeyPolicy): they are gone. Happens once.
    #[serde(default)]
    pub key_policy_reverted_on_copy: bool,
    /// LockSnapshot is refused with this AWS error code (a quota), as a limit would.
    #[serde(default)]
    pub lock_refused_with: Option<String>,
    /// Copies of this volume's snapshots into a target (another account or region)
    /// get the `.1`-th listed block (0-based) with other content.
    #[serde(default)]
    pub corrupt_block_of: Option<(VolumeId, u64)>,
    /// Copies of this volume's snapshots into a target leave the `.1`-th listed block
    /// out.
    #[serde(default)]
    pub drop_block_of: Option<(VolumeId, u64)>,
    /// Copies of this volume's snapshots into a target leave its listed blocks of zeros
    /// out (EBS may list a block of zeros on one side only).
    #[serde(default)]
    pub unlist_zeros_of: Option<VolumeId>,
}

/// How long things take, as functions of size (milliseconds).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Timing {
    pub snapshot_base_ms: i64,
    pub snapshot_per_gib_ms: i64,
    pub copy_base_ms: i64,
    pub copy_per_gib_ms: i64,
    pub volume_base_ms: i64,
    /// Added to copies within one region (re-encryption), to tell them apart in tests.
    #[serde(default)]
    pub reencrypt_extra_ms: i64,
}

impl Default for Timing {
    fn default() -> Self {
        // Rough figures of real EBS: a first snapshot of 100 GiB takes minutes, a
        // cross-region copy about twice that, a volume from a snapshot under a minute.
        Timing {
            snapshot_base_ms: 30_000,
            snapshot_per_gib_ms: 3_000,
            copy_base_ms: 60_000,
            copy_per_gib_ms: 6_000,
            volume_base_ms: 20_000,
            reencrypt_extra_ms: 0,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SimKey {
    pub arn: KeyArn,
    pub account: AccountId,
    pub region: Region,
    pub aliases: Vec<String>,
    pub manager: KeyManager,
    pub enabled: bool,
    pub spec: String,
    pub policy: String,
    /// Wraps data keys in this simulation; not real cryptography.
    pub secret: [u8; 32],
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SimSnapshot {
    pub id: SnapshotId,
    pub owner: AccountId,
    pub region: Region,
    pub volume_id: Option<String>,
    pub size_gib: i32,
    pub kms_key: Option<KeyArn>,
    pub tags: Tags,
    pub created_ms: i64,
    pub ready_ms: i64,
    /// Set when the snapshot will end in `error`, with its StateMessage.
    pub fails_with: Option<String>,
    pub shared_with: BTreeSet<AccountId>,
    /// When the snapshot was last shared (for the share-lag fault).
    #[serde(default)]
    pub shared_at_ms: i64,
    /// For copies: the destination's copy slot is held until ready.
    pub is_copy: bool,
    /// The source volume a snapshot descends from (to apply per-volume faults).
    pub origin_volume: Option<String>,
    /// Its EBS snapshot lock, if any.
    #[serde(default)]
    pub lock: Option<SimLock>,
    /// Its blocks, as the EBS direct APIs list them.
    #[serde(default)]
    pub blocks: Option<BlockMap>,
}

/// A snapshot lock as EBS keeps it: the duration starts when the snapshot completes
/// (or when it is locked, if later); a compliance lock's cool-off when it is locked.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SimLock {
    pub mode: LockMode,
    pub duration_days: u32,
    pub cool_off_hours: Option<u32>,
    pub created_ms: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SimVolume {
    pub id: VolumeId,
    pub owner: AccountId,
    pub region: Region,
    pub availability_zone: String,
    pub size_gib: i32,
    pub kms_key: Option<KeyArn>,
    pub volume_type: String,
    pub iops: Option<i32>,
    pub throughput: Option<i32>,
    pub snapshot_id: Option<String>,
    pub tags: Tags,
    pub created_ms: i64,
    pub ready_ms: i64,
    pub attachments: usize,
    pub client_token: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SimRole {
    pub arn: RoleArn,
    /// Accounts allowed to assume it (its trust policy).
    pub trusted: Vec<AccountId>,
    pub external_id: Option<String>,
}

/// The whole simulated AWS.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct World {
    pub now_ms: i64,
    pub keys: Vec<SimKey>,
    pub snapshots: BTreeMap<String, SimSnapshot>,
    pub volumes: BTreeMap<String, SimVolume>,
    pub roles: Vec<SimRole>,
    pub faults: Faults,
    pub timing: Timing,
    /// Calls by `service:Action`.
    pub calls: BTreeMap<String, u64>,
    /// Of those, the listings by tag (DescribeSnapshots/DescribeVolumes with tag filters).
    #[serde(default)]
    pub listings: u64,
    pub total_calls: u64,
    #[serde(default)]
    pub halted: bool,
    /// The most copies ever in flight at once, per `account/region` destination.
    #[serde(default)]
    pub peak_copies: BTreeMap<String, usize>,
    /// DeleteSnapshot calls refused because the snapshot was locked.
    #[serde(default)]
    pub refused_deletes: u64,
    next_id: u64,
    rng: u64,
    /// Lookups kept beside the maps so that a call costs the same in a world of ten
    /// thousand volumes as in one of ten; rebuilt from the maps when a world is read.
    #[serde(skip)]
    index: Option<Index>,
}

/// What the world looks up by something other than an id.
#[derive(Debug, Clone, Default)]
struct Index {
    /// Copies that may still be pending, per (owner, region).
    pending_copies: BTreeMap<(String, String), BTreeSet<String>>,
    /// Volumes by (owner, region, ClientToken).
    tokens: BTreeMap<(String, String, String), String>,
}

fn err(kind: ErrorKind, code: &str, message: impl Into<String>) -> CloudError {
    CloudError { kind, code: Some(code.to_owned()), message: message.into(), request_id: None }
}

pub fn has_tags(have: &Tags, want: &Tags) -> bool {
    want.iter().all(|(k, v)| have.get(k) == Some(v))
}

/// The default key policy KMS gives a key: its own account's root may do anything.
pub fn default_key_policy(account: &AccountId, partition: &str) -> String {
    serde_json::to_string_pretty(&serde_json::json!({
        "Version": "2012-10-17",
        "Id": "key-default-1",
        "Statement": [{
            "Sid": "Enable IAM User Permissions",
            "Effect": "Allow",
            "Principal": {"AWS": format!("arn:{partition}:iam::{account}:root")},
            "Action": "kms:*",
            "Resource": "*"
        }]
    }))
    .unwrap_or_default()
}

impl World {
    pub fn new(now_ms: i64) -> Self {
        World {
            now_ms,
            keys: vec![],
            snapshots: BTreeMap::new(),
            volumes: BTreeMap::new(),
            roles: vec![],
            faults: Faults::default(),
            timing: Timing::default(),
            calls: BTreeMap::new(),
            listings: 0,
            total_calls: 0,
            halted: false,
            peak_copies: BTreeMap::new(),
            refused_deletes: 0,
            next_id: 1,
            rng: 0x9e37_79b9_7f4a_7c15,
            index: None,
        }
    }

    /// The lookups, built from the maps the first time they are needed.
    fn index(&mut self) -> &mut Index {
        if self.index.is_none() {
            let mut ix = Index::default();
            for s in self.snapshots.values().filter(|s| s.is_copy && self.now_ms < s.ready_ms) {
                ix.pending_copies
                    .entry((s.owner.to_string(), s.region.to_string()))
                    .or_default()
                    .insert(s.id.to_string());
            }
            for v in self.volumes.values() {
                if let Some(t) = &v.client_token {
                    ix.tokens.insert((v.owner.to_string(), v.region.to_string(), t.clone()), v.id.to_string());
                }
            }
            self.index = Some(ix);
        }
        self.index.as_mut().expect("just built")
    }

    pub fn count(&mut self, action: &str) {
        *self.calls.entry(action.to_owned()).or_default() += 1;
        self.total_calls += 1;
    }

    fn next_rand(&mut self) -> u64 {
        // xorshift64*: deterministic, so a failing test replays the same faults.
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// The permission fault for `action`, if it is denied.
    pub fn deny(&self, action: &str) -> Option<CloudError> {
        if self.faults.credentials_expire_after_calls.is_some_and(|n| self.total_calls > n) {
            return Some(err(
                ErrorKind::Credentials,
                "ExpiredToken",
                "The security token included in the request is expired",
            ));
        }
        self.faults.denied.contains(action).then(|| {
            err(
                ErrorKind::AccessDenied,
                "UnauthorizedOperation",
                format!("You are not authorized to perform this operation. ({action})"),
            )
        })
    }

    /// The `lookups_fail` fault, for listings by tag.
    pub fn lookup_fault(&mut self) -> CloudResult<()> {
        self.listings += 1;
        if self.faults.lookups_fail {
            return Err(err(ErrorKind::AccessDenied, "UnauthorizedOperation", "lookups by tag are refused (fault)"));
        }
        Ok(())
    }

    pub fn throttle(&mut self, action: &str) -> Option<CloudError> {
        if self.faults.throttle_rate <= 0.0 {
            return None;
        }
        let r = (self.next_rand() >> 11) as f64 / (1u64 << 53) as f64;
        if r >= self.faults.throttle_rate {
            return None;
        }
        Some(if action.starts_with("kms:") {
            err(ErrorKind::Throttled, "ThrottlingException", "Rate exceeded")
        } else {
            err(ErrorKind::Throttled, "RequestLimitExceeded", "Request limit exceeded.")
        })
    }

    fn new_hex(&mut self) -> String {
        // 17 hex digits like AWS's ids; drawn from the world's generator so a seeded
        // world makes the same ids every time.
        self.next_id += 1;
        format!("0{:016x}", self.next_rand())
    }

    pub fn new_volume_id(&mut self) -> VolumeId {
        loop {
            let id = VolumeId::parse(&format!("vol-{}", self.new_hex())).expect("valid id");
            if !self.volumes.contains_key(id.as_str()) {
                return id;
            }
        }
    }

    fn new_snapshot_id(&mut self) -> SnapshotId {
        loop {
            let id = SnapshotId::parse(&format!("snap-{}", self.new_hex())).expect("valid id");
            if !self.snapshots.contains_key(id.as_str()) {
                return id;
            }
        }
    }

    /// Adds a key and returns its ARN.
    pub fn add_key(
        &mut self,
        account: &AccountId,
        region: &Region,
        alias: Option<&str>,
        manager: KeyManager,
    ) -> KeyArn {
        let mut b = [0u8; 16];
        for c in b.chunks_mut(8) {
            c.copy_from_slice(&self.next_rand().to_be_bytes());
        }
        let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
        let id = format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32]);
        let arn =
            KeyArn::parse(&format!("arn:{}:kms:{region}:{account}:key/{id}", region.partition())).expect("valid arn");
        let mut secret = [0u8; 32];
        for c in secret.chunks_mut(8) {
            c.copy_from_slice(&self.next_rand().to_be_bytes());
        }
        self.keys.push(SimKey {
            arn: arn.clone(),
            account: account.clone(),
            region: region.clone(),
            aliases: alias.map(|a| vec![a.trim_start_matches("alias/").to_owned()]).unwrap_or_default(),
            manager,
            enabled: true,
            spec: "SYMMETRIC_DEFAULT".into(),
            policy: default_key_policy(account, region.partition()),
            secret,
        });
        arn
    }

    /// The AWS managed EBS key of an account and region, created on first use as AWS does.
    pub fn aws_ebs_key(&mut self, account: &AccountId, region: &Region) -> KeyArn {
        if let Some(k) = self
            .keys
            .iter()
            .find(|k| &k.account == account && &k.region == region && k.aliases.iter().any(|a| a == "aws/ebs"))
        {
            return k.arn.clone();
        }
        self.add_key(account, region, Some("alias/aws/ebs"), KeyManager::Aws)
    }

    fn find_key(&self, account: &AccountId, region: &Region, key: &KeyRef) -> Option<&SimKey> {
        let s = key.as_str();
        if let Some(alias) = s.strip_prefix("alias/") {
            return self
                .keys
                .iter()
                .find(|k| &k.account == account && &k.region == region && k.aliases.iter().any(|a| a == alias));
        }
        if s.starts_with("arn:") {
            if let Some((_, alias)) = s.split_once(":alias/") {
                let (acct, reg) = (key.arn_account()?, key.arn_region()?);
                return self
                    .keys
                    .iter()
                    .find(|k| k.account == acct && k.region == reg && k.aliases.iter().any(|a| a == alias));
            }
            return self.keys.iter().find(|k| k.arn.as_str() == s);
        }
        self.keys
            .iter()
            .find(|k| &k.account == account && &k.region == region && k.arn.as_str().ends_with(&format!("/{s}")))
    }

    fn key_missing(key: &str) -> CloudError {
        err(ErrorKind::NotFound, "NotFoundException", format!("Key '{key}' does not exist"))
    }

    pub fn describe_key(&mut self, account: &AccountId, region: &Region, key: &KeyRef) -> CloudResult<KeyInfo> {
        if key.as_str() == "alias/aws/ebs" {
            self.aws_ebs_key(account, region);
        }
        let k = self.find_key(account, region, key).ok_or_else(|| Self::key_missing(key.as_str()))?;
        if &k.account != account && !crate::policy::allows(&k.policy, account, "kms:DescribeKey", None) {
            return Err(err(
                ErrorKind::AccessDenied,
                "AccessDeniedException",
                format!(
                    "User in account {account} is not authorized to perform: kms:DescribeKey on resource: {}",
                    k.arn
                ),
            ));
        }
        Ok(KeyInfo {
            arn: k.arn.clone(),
            account: k.account.clone(),
            enabled: k.enabled,
            spec: k.spec.clone(),
            manager: k.manager,
        })
    }

    /// A key the caller owns (GetKeyPolicy and PutKeyPolicy only work in the key's account).
    pub fn key_own(&self, account: &AccountId, key: &KeyArn) -> CloudResult<&SimKey> {
        let k = self.keys.iter().find(|k| &k.arn == key).ok_or_else(|| Self::key_missing(key.as_str()))?;
        if &k.account != account {
            return Err(err(
                ErrorKind::AccessDenied,
                "AccessDeniedException",
                format!("key policies can only be read and written from the key's own account ({})", k.account),
            ));
        }
        Ok(k)
    }

    pub fn put_key_policy(&mut self, account: &AccountId, key: &KeyArn, policy: &str) -> CloudResult<()> {
        self.key_own(account, key)?;
        if policy.len() > 32 * 1024 {
            return Err(err(ErrorKind::LimitExceeded, "LimitExceededException", "policy is larger than 32 KB"));
        }
        if serde_json::from_str::<serde_json::Value>(policy).is_err() {
            return Err(err(ErrorKind::Invalid, "MalformedPolicyDocumentException", "the policy is not valid JSON"));
        }
        if let Some(k) = self.keys.iter_mut().find(|k| &k.arn == key) {
            k.policy = policy.to_owned();
        }
        Ok(())
    }

    pub fn assume(&self, role: &RoleArn, caller: &AccountId, external_id: Option<&str>) -> CloudResult<AccountId> {
        let denied = || {
            err(
                ErrorKind::AccessDenied,
                "AccessDenied",
                format!(
                    "User: arn:aws:iam::{caller}:user/snapferry is not authorized to perform: sts:AssumeRole on resource: {role}"
                ),
            )
        };
        let r = self.roles.iter().find(|r| &r.arn == role).ok_or_else(denied)?;
        if !r.trusted.contains(caller) || r.external_id.as_deref().is_some_and(|e| Some(e) != external_id) {
            return Err(denied());
        }
        Ok(role.account())
    }

    fn volume_view(&self, v: &SimVolume) -> Volume {
        let state = if self.now_ms >= v.ready_ms {
            if v.attachments > 0 { VolumeState::InUse } else { VolumeState::Available }
        } else {
            VolumeState::Creating
        };
        Volume {
            id: v.id.clone(),
            state,
            availability_zone: v.availability_zone.clone(),
            size_gib: v.size_gib,
            encrypted: v.kms_key.is_some(),
            kms_key_id: v.kms_key.as_ref().map(|k| k.to_string()),
            volume_type: Some(v.volume_type.clone()),
            iops: v.iops,
            throughput: v.throughput,
            snapshot_id: v.snapshot_id.clone(),
            tags: v.tags.clone(),
            attachments: v.attachments,
            create_time_ms: Some(v.created_ms),
        }
    }

    pub fn describe_volumes(
        &self,
        account: &AccountId,
        region: &Region,
        pick: impl Fn(&SimVolume) -> bool,
    ) -> Vec<Volume> {
        self.volumes
            .values()
            .filter(|v| &v.owner == account && &v.region == region && pick(v))
            .map(|v| self.volume_view(v))
            .collect()
    }

    fn snapshot_view(&self, s: &SimSnapshot) -> Snapshot {
        let (state, progress, message) = if self.now_ms >= s.ready_ms {
            match &s.fails_with {
                Some(m) => (SnapshotState::Error, None, Some(m.clone())),
                None => (SnapshotState::Completed, Some(100), None),
            }
        } else {
            let total = (s.ready_ms - s.created_ms).max(1);
            let done = ((self.now_ms - s.created_ms) * 100 / total).clamp(0, 99) as u8;
            (SnapshotState::Pending, Some(done), None)
        };
        Snapshot {
            id: s.id.clone(),
            volume_id: s.volume_id.clone(),
            owner: Some(s.owner.clone()),
            state,
            progress,
            state_message: message,
            encrypted: s.kms_key.is_some(),
            kms_key_id: s.kms_key.as_ref().map(|k| k.to_string()),
            size_gib: Some(s.size_gib),
            tags: s.tags.clone(),
            start_time_ms: Some(s.created_ms),
        }
    }

    fn visible(&self, s: &SimSnapshot) -> bool {
        self.now_ms >= s.created_ms + self.faults.invisible_ms
    }

    /// Snapshots the caller owns that `pick` selects (listings by tag).
    pub fn describe_snapshots(
        &self,
        account: &AccountId,
        region: &Region,
        pick: impl Fn(&SimSnapshot) -> bool,
    ) -> Vec<Snapshot> {
        self.snapshots
            .values()
            .filter(|s| &s.region == region && &s.owner == account && self.visible(s) && pick(s))
            .map(|s| self.snapshot_view(s))
            .collect()
    }

    /// DescribeSnapshots by id: looked up one by one, so polling thousands of ids
    /// stays cheap however many snapshots the world holds.
    pub fn snapshots_by_ids(&self, account: &AccountId, region: &Region, ids: &[SnapshotId]) -> Vec<Snapshot> {
        ids.iter()
            .filter_map(|id| self.snapshots.get(id.as_str()))
            .filter(|s| {
                &s.region == region && (&s.owner == account || s.shared_with.contains(account)) && self.visible(s)
            })
            .map(|s| self.snapshot_view(s))
            .collect()
    }

    /// DescribeVolumes by id, likewise.
    pub fn volumes_by_ids(&self, account: &AccountId, region: &Region, ids: &[VolumeId]) -> Vec<Volume> {
        ids.iter()
            .filter_map(|id| self.volumes.get(id.as_str()))
            .filter(|v| &v.owner == account && &v.region == region)
            .map(|v| self.volume_view(v))
            .collect()
    }

    fn snapshot_missing(id: &str) -> CloudError {
        err(ErrorKind::NotFound, "InvalidSnapshot.NotFound", format!("The snapshot '{id}' does not exist."))
    }

    pub fn create_snapshot(
        &mut self,
        account: &AccountId,
        region: &Region,
        req: &CreateSnapshotReq,
    ) -> CloudResult<Snapshot> {
        let v = self
            .volumes
            .get(req.volume.as_str())
            .filter(|v| &v.owner == account && &v.region == region)
            .ok_or_else(|| {
                err(
                    ErrorKind::NotFound,
                    "InvalidVolume.NotFound",
                    format!("The volume '{}' does not exist.", req.volume),
                )
            })?
            .clone();
        let id = self.new_snapshot_id();
        let duration = self.timing.snapshot_base_ms + self.timing.snapshot_per_gib_ms * i64::from(v.size_gib);
        let s = SimSnapshot {
            id: id.clone(),
            owner: account.clone(),
            region: region.clone(),
            volume_id: Some(v.id.to_string()),
            size_gib: v.size_gib,
            kms_key: v.kms_key.clone(),
            tags: req.tags.clone(),
            created_ms: self.now_ms,
            ready_ms: self.now_ms + duration,
            fails_with: None,
            shared_with: BTreeSet::new(),
            shared_at_ms: 0,
            is_copy: false,
            origin_volume: Some(v.id.to_string()),
            lock: None,
            blocks: Some(BlockMap::for_volume(v.id.as_str(), v.size_gib)),
        };
        let view = self.snapshot_view(&s);
        self.snapshots.insert(id.to_string(), s);
        Ok(view)
    }

    /// Copies pending into (account, region). Each copy is looked at until it is ready
    /// or gone, then dropped from the index.
    fn copies_in_flight(&mut self, account: &AccountId, region: &Region) -> usize {
        let now = self.now_ms;
        let key = (account.to_string(), region.to_string());
        let mut pending = self.index().pending_copies.remove(&key).unwrap_or_default();
        pending.retain(|id| self.snapshots.get(id).is_some_and(|s| now < s.ready_ms));
        let n = pending.len();
        self.index().pending_copies.insert(key, pending);
        n
    }

    pub fn copy_snapshot(
        &mut self,
        account: &AccountId,
        region: &Region,
        req: &CopySnapshotReq,
    ) -> CloudResult<SnapshotId> {
        let src = self
            .snapshots
            .get(req.source_snapshot.as_str())
            .filter(|s| {
                s.region == req.source_region
                    && (&s.owner == account
                        || (s.shared_with.contains(account)
                            && self.now_ms >= s.shared_at_ms + self.faults.share_lag_ms))
            })
            .ok_or_else(|| Self::snapshot_missing(req.source_snapshot.as_str()))?
            .clone();
        if self.now_ms < src.ready_ms || src.fails_with.is_some() {
            return Err(err(
                ErrorKind::InvalidState,
                "IncorrectState",
                format!("Snapshot '{}' is not in a completed state.", src.id),
            ));
        }
        let quota = self.faults.copy_quota.unwrap_or(MAX_CONCURRENT_COPIES);
        if self.copies_in_flight(account, region) >= quota {
            return Err(err(
                ErrorKind::LimitExceeded,
                "ResourceLimitExceeded",
                format!("You have reached the limit of {quota} concurrent snapshot copies in {region}."),
            ));
        }
        // Key checks happen later, in the background, as in AWS: the copy is accepted
        // and ends in `error`.
        let inaccessible = "Given key ID is not accessible".to_owned();
        if self.faults.key_policy_reverted_on_copy && &src.owner != account {
            self.faults.key_policy_reverted_on_copy = false;
            if let Some(key) = self.keys.iter_mut().find(|x| Some(&x.arn) == src.kms_key.as_ref()) {
                key.policy = without_snapferry_statements(&key.policy);
            }
        }
        let mut fails_with = None;
        if let Some(k) = &src.kms_key {
            let key = self.keys.iter().find(|x| &x.arn == k);
            let usable = match key {
                None => false,
                Some(key) if &key.account == account => key.enabled,
                Some(key) => {
                    key.enabled
                        && key.manager == KeyManager::Customer
                        && ["kms:Decrypt", "kms:ReEncryptFrom", "kms:DescribeKey"]
                            .iter()
                            .all(|a| crate::policy::allows(&key.policy, account, a, None))
                        && crate::policy::allows(&key.policy, account, "kms:CreateGrant", Some(true))
                }
            };
            let blocked_by_fault = src.origin_volume.is_some()
                && self.faults.key_inaccessible_for.as_ref().map(|v| v.to_string()) == src.origin_volume;
            let blocked_for_account = self.faults.key_inaccessible_to.as_ref() == Some(account);
            if !usable || ((blocked_by_fault || blocked_for_account) && &src.owner != account) {
                fails_with = Some(inaccessible.clone());
            }
        }
        let dest_key = self
            .keys
            .iter()
            .find(|k| k.arn == req.kms_key && &k.account == account && &k.region == region && k.enabled)
            .map(|k| k.arn.clone());
        if dest_key.is_none() {
            fails_with = Some(inaccessible);
        }
        let id = self.new_snapshot_id();
        let cross_region = src.region != *region;
        let per_gib = if cross_region { self.timing.copy_per_gib_ms } else { self.timing.snapshot_per_gib_ms };
        let base = if cross_region {
            self.timing.copy_base_ms
        } else {
            self.timing.snapshot_base_ms + self.timing.reencrypt_extra_ms
        };
        let s = SimSnapshot {
            id: id.clone(),
            owner: account.clone(),
            region: region.clone(),
            // AWS reports a fixed placeholder volume id on copies.
            volume_id: Some("vol-ffffffff".into()),
            size_gib: src.size_gib,
            kms_key: Some(req.kms_key.clone()),
            tags: req.tags.clone(),
            created_ms: self.now_ms,
            ready_ms: self.now_ms + base + per_gib * i64::from(src.size_gib),
            fails_with,
            shared_with: BTreeSet::new(),
            shared_at_ms: 0,
            is_copy: true,
            origin_volume: src.origin_volume.clone(),
            lock: None,
            blocks: self.copied_blocks(&src, account, region),
        };
        self.snapshots.insert(id.to_string(), s);
        self.index()
            .pending_copies
            .entry((account.to_string(), region.to_string()))
            .or_default()
            .insert(id.to_string());
        let now = self.copies_in_flight(account, region);
        let peak = self.peak_copies.entry(format!("{account}/{region}")).or_default();
        *peak = (*peak).max(now);
        Ok(id)
    }

    /// The blocks of a copy of `src` into (account, region): its source's, with the
    /// block faults applied to copies into a target.
    fn copied_blocks(&self, src: &SimSnapshot, account: &AccountId, region: &Region) -> Option<BlockMap> {
        let mut blocks = src.blocks.clone()?;
        if &src.owner == account && &src.region == region {
            return Some(blocks);
        }
        let of = |v: &VolumeId| src.origin_volume.as_deref() == Some(v.as_str());
        if let Some((_, rank)) = self.faults.corrupt_block_of.as_ref().filter(|(v, _)| of(v))
            && let Some(i) = blocks.nth(*rank)
        {
            blocks.corrupt(i);
        }
        if let Some((_, rank)) = self.faults.drop_block_of.as_ref().filter(|(v, _)| of(v))
            && let Some(i) = blocks.nth(*rank)
        {
            blocks.drop_block(i);
        }
        if self.faults.unlist_zeros_of.as_ref().is_some_and(of) {
            blocks.unlist_zeros();
        }
        Some(blocks)
    }

    /// A completed snapshot the account owns in the region, for the EBS direct APIs.
    fn readable_snapshot(&self, account: &AccountId, region: &Region, id: &SnapshotId) -> CloudResult<&SimSnapshot> {
        let s = self
            .snapshots
            .get(id.as_str())
            .filter(|s| &s.owner == account && &s.region == region && self.visible(s))
            .ok_or_else(|| {
                err(ErrorKind::NotFound, "ResourceNotFoundException", format!("The snapshot '{id}' does not exist."))
            })?;
        if self.now_ms < s.ready_ms || s.fails_with.is_some() {
            return Err(err(
                ErrorKind::InvalidState,
                "ValidationException",
                format!("The snapshot '{id}' is not in a completed state."),
            ));
        }
        Ok(s)
    }

    /// ListSnapshotBlocks: the page token is the next block index.
    pub fn list_snapshot_blocks(
        &self,
        account: &AccountId,
        region: &Region,
        id: &SnapshotId,
        start: Option<u64>,
        next_token: Option<&str>,
        max_results: u32,
    ) -> CloudResult<BlockPage> {
        let s = self.readable_snapshot(account, region, id)?;
        let from = match next_token {
            Some(t) => t.strip_prefix("page-").and_then(|n| n.parse::<u64>().ok()).ok_or_else(|| {
                err(ErrorKind::Invalid, "ValidationException", "INVALID_PAGE_TOKEN: the page token is not valid")
            })?,
            None => start.unwrap_or(0),
        };
        let max = max_results.clamp(100, 10_000) as usize;
        let (blocks, more) = match &s.blocks {
            Some(b) => b.page(from, max),
            None => (vec![], None),
        };
        Ok(BlockPage {
            blocks: blocks.into_iter().map(|(i, g)| (i, format!("bt-{id}-{i}-{g}"))).collect(),
            next_token: more.map(|n| format!("page-{n}")),
            volume_size_gib: i64::from(s.size_gib),
            block_size: crate::verify::BLOCK_SIZE,
        })
    }

    /// GetSnapshotBlock: the checksum of a listed block, given its token.
    pub fn get_snapshot_block(
        &self,
        account: &AccountId,
        region: &Region,
        id: &SnapshotId,
        index: u64,
        token: &str,
    ) -> CloudResult<BlockChecksum> {
        let s = self.readable_snapshot(account, region, id)?;
        let invalid = || {
            err(
                ErrorKind::Invalid,
                "ValidationException",
                format!("INVALID_BLOCK_TOKEN: no block {index} with that token"),
            )
        };
        let blocks = s.blocks.as_ref().ok_or_else(invalid)?;
        let g = blocks.get(index).ok_or_else(invalid)?;
        if token != format!("bt-{id}-{index}-{g}") {
            return Err(invalid());
        }
        Ok(BlockChecksum { checksum: blocks.checksum(index, g), data_length: crate::verify::BLOCK_SIZE })
    }

    /// CreateTags on a snapshot the account owns.
    pub fn tag_snapshot(
        &mut self,
        account: &AccountId,
        region: &Region,
        id: &SnapshotId,
        tags: &Tags,
    ) -> CloudResult<()> {
        let s = self
            .snapshots
            .get_mut(id.as_str())
            .filter(|s| &s.owner == account && &s.region == region)
            .ok_or_else(|| Self::snapshot_missing(id.as_str()))?;
        s.tags.extend(tags.clone());
        Ok(())
    }

    /// What a snapshot's lock looks like now: `None` without one, or when the snapshot
    /// failed (AWS cancels the lock of a copy that fails).
    pub fn lock_view(&self, s: &SimSnapshot) -> Option<LockedSnapshot> {
        let l = s.lock.as_ref()?;
        let completed = self.now_ms >= s.ready_ms;
        if completed && s.fails_with.is_some() {
            return None;
        }
        const HOUR_MS: i64 = 3_600_000;
        const DAY_MS: i64 = 86_400_000;
        let start = completed.then(|| s.ready_ms.max(l.created_ms));
        let expires_ms = start.map(|t| t + i64::from(l.duration_days) * DAY_MS);
        let state = if expires_ms.is_some_and(|e| self.now_ms >= e) {
            LockState::Expired
        } else {
            match (l.mode, l.cool_off_hours) {
                (LockMode::Governance, _) => LockState::Governance,
                (LockMode::Compliance, Some(h)) if self.now_ms < l.created_ms + i64::from(h) * HOUR_MS => {
                    LockState::ComplianceCooloff
                }
                (LockMode::Compliance, _) => LockState::Compliance,
            }
        };
        Some(LockedSnapshot { id: s.id.clone(), state, expires_ms })
    }

    pub fn lock_snapshot(
        &mut self,
        account: &AccountId,
        region: &Region,
        id: &SnapshotId,
        spec: &LockSpec,
    ) -> CloudResult<LockedSnapshot> {
        if let Some(code) = &self.faults.lock_refused_with {
            return Err(err(ErrorKind::LimitExceeded, code, "You have reached the limit of locked snapshots (fault)"));
        }
        let s = match self.snapshots.get(id.as_str()) {
            Some(s) if &s.owner == account && &s.region == region && self.visible(s) => s,
            _ => return Err(Self::snapshot_missing(id.as_str())),
        };
        if self.now_ms >= s.ready_ms && s.fails_with.is_some() {
            return Err(err(
                ErrorKind::InvalidState,
                "IncorrectState",
                format!("Snapshot '{id}' is in state error and cannot be locked."),
            ));
        }
        let current = self.lock_view(s);
        let now = self.now_ms;
        let lock = SimLock {
            mode: spec.mode,
            duration_days: spec.duration_days,
            cool_off_hours: spec.cool_off_hours,
            created_ms: now,
        };
        let same = s.lock.as_ref().is_some_and(|l| {
            l.mode == spec.mode && l.duration_days == spec.duration_days && l.cool_off_hours == spec.cool_off_hours
        });
        let new = match (current.as_ref().map(|c| c.state), s.lock.as_ref()) {
            // The same lock again: nothing changes (its cool-off keeps its start).
            (Some(state), Some(_)) if same && state.protects() => None,
            // Past its cool-off a compliance lock can only be extended.
            (Some(LockState::Compliance), Some(old)) => {
                if spec.mode != LockMode::Compliance || spec.duration_days < old.duration_days {
                    return Err(err(
                        ErrorKind::InvalidState,
                        "InvalidParameterValue",
                        format!("Snapshot '{id}' is locked in compliance mode: its lock can only be extended."),
                    ));
                }
                Some(SimLock { cool_off_hours: None, created_ms: old.created_ms, ..lock })
            }
            _ => Some(lock),
        };
        let s = self.snapshots.get_mut(id.as_str()).expect("looked up above");
        if let Some(new) = new {
            s.lock = Some(new);
        }
        let s = s.clone();
        Ok(self.lock_view(&s).expect("just locked"))
    }

    pub fn locked_snapshots(&self, account: &AccountId, region: &Region, ids: &[SnapshotId]) -> Vec<LockedSnapshot> {
        ids.iter()
            .filter_map(|id| self.snapshots.get(id.as_str()))
            .filter(|s| &s.owner == account && &s.region == region)
            .filter_map(|s| self.lock_view(s))
            .collect()
    }

    pub fn delete_snapshot(&mut self, account: &AccountId, region: &Region, id: &SnapshotId) -> CloudResult<()> {
        let locked =
            self.snapshots.get(id.as_str()).and_then(|s| self.lock_view(s)).is_some_and(|l| l.state.protects());
        if locked {
            self.refused_deletes += 1;
            return Err(err(
                ErrorKind::InvalidState,
                SNAPSHOT_LOCKED,
                format!("The snapshot '{id}' is locked and cannot be deleted until its lock expires."),
            ));
        }
        match self.snapshots.get(id.as_str()) {
            Some(s) if &s.owner == account && &s.region == region => {
                self.snapshots.remove(id.as_str());
                Ok(())
            }
            _ => Err(Self::snapshot_missing(id.as_str())),
        }
    }

    pub fn set_share(
        &mut self,
        account: &AccountId,
        region: &Region,
        id: &SnapshotId,
        with: &AccountId,
        add: bool,
    ) -> CloudResult<()> {
        let aws_managed: BTreeSet<KeyArn> =
            self.keys.iter().filter(|k| k.manager == KeyManager::Aws).map(|k| k.arn.clone()).collect();
        let s = self
            .snapshots
            .get_mut(id.as_str())
            .filter(|s| &s.owner == account && &s.region == region)
            .ok_or_else(|| Self::snapshot_missing(id.as_str()))?;
        if add {
            if s.kms_key.as_ref().is_some_and(|k| aws_managed.contains(k)) {
                return Err(err(
                    ErrorKind::Invalid,
                    "InvalidParameter",
                    "Snapshots encrypted with the AWS Managed CMK can't be shared. Specify another snapshot.",
                ));
            }
            s.shared_with.insert(with.clone());
            s.shared_at_ms = self.now_ms;
        } else {
            s.shared_with.remove(with);
        }
        Ok(())
    }

    pub fn shared_with(&self, account: &AccountId, region: &Region, id: &SnapshotId) -> CloudResult<Vec<AccountId>> {
        self.snapshots
            .get(id.as_str())
            .filter(|s| &s.owner == account && &s.region == region)
            .map(|s| s.shared_with.iter().cloned().collect())
            .ok_or_else(|| Self::snapshot_missing(id.as_str()))
    }

    pub fn create_volume(
        &mut self,
        account: &AccountId,
        region: &Region,
        req: &CreateVolumeReq,
    ) -> CloudResult<crate::ids::VolumeId> {
        let token = (account.to_string(), region.to_string(), req.client_token.clone());
        if let Some(id) = self.index().tokens.get(&token).cloned() {
            match self.volumes.get(&id) {
                Some(v) => return Ok(v.id.clone()),
                None => {
                    self.index().tokens.remove(&token);
                }
            }
        }
        if req.availability_zone.region() != *region {
            return Err(err(
                ErrorKind::Invalid,
                "InvalidParameterValue",
                format!("Invalid availability zone: [{}]", req.availability_zone),
            ));
        }
        let snap = self
            .snapshots
            .get(req.snapshot.as_str())
            .filter(|s| &s.region == region && (&s.owner == account || s.shared_with.contains(account)))
            .filter(|s| self.visible(s))
            .ok_or_else(|| Self::snapshot_missing(req.snapshot.as_str()))?
            .clone();
        if self.now_ms < snap.ready_ms || snap.fails_with.is_some() {
            return Err(err(
                ErrorKind::InvalidState,
                "IncorrectState",
                format!("Snapshot '{}' is not in a completed state.", snap.id),
            ));
        }
        if !self.keys.iter().any(|k| k.arn == req.kms_key && &k.account == account && k.enabled) {
            return Err(err(
                ErrorKind::InvalidState,
                "InvalidKMSKey.NotFound",
                format!("The KMS key {} does not exist or is not usable", req.kms_key),
            ));
        }
        let id = self.new_volume_id();
        let v = SimVolume {
            id: id.clone(),
            owner: account.clone(),
            region: region.clone(),
            availability_zone: req.availability_zone.to_string(),
            size_gib: snap.size_gib,
            kms_key: Some(req.kms_key.clone()),
            volume_type: req.volume_type.clone().unwrap_or_else(|| "gp3".into()),
            iops: req.iops.map(|x| x as i32),
            throughput: req.throughput.map(|x| x as i32),
            snapshot_id: Some(snap.id.to_string()),
            tags: req.tags.clone(),
            created_ms: self.now_ms,
            ready_ms: self.now_ms + self.timing.volume_base_ms,
            attachments: 0,
            client_token: Some(req.client_token.clone()),
        };
        self.volumes.insert(id.to_string(), v);
        self.index().tokens.insert(token, id.to_string());
        Ok(id)
    }

    pub fn delete_volume(&mut self, account: &AccountId, region: &Region, id: &VolumeId) -> CloudResult<()> {
        match self.volumes.get(id.as_str()) {
            Some(v) if &v.owner == account && &v.region == region => {
                if v.attachments > 0 {
                    return Err(err(
                        ErrorKind::InvalidState,
                        "VolumeInUse",
                        format!("Volume {id} is currently attached"),
                    ));
                }
                self.volumes.remove(id.as_str());
                Ok(())
            }
            _ => Err(err(ErrorKind::NotFound, "InvalidVolume.NotFound", format!("The volume '{id}' does not exist."))),
        }
    }

    /// Adds a source volume (seeding and tests).
    #[allow(clippy::too_many_arguments)]
    pub fn add_volume(
        &mut self,
        id: Option<VolumeId>,
        account: &AccountId,
        az: &crate::ids::AvailabilityZone,
        size_gib: i32,
        kms_key: Option<KeyArn>,
        tags: Tags,
    ) -> VolumeId {
        let id = id.unwrap_or_else(|| self.new_volume_id());
        self.volumes.insert(
            id.to_string(),
            SimVolume {
                id: id.clone(),
                owner: account.clone(),
                region: az.region(),
                availability_zone: az.to_string(),
                size_gib,
                kms_key,
                volume_type: "gp3".into(),
                iops: Some(3000),
                throughput: Some(125),
                snapshot_id: None,
                tags,
                created_ms: self.now_ms,
                ready_ms: self.now_ms,
                attachments: 1,
                client_token: None,
            },
        );
        id
    }

    pub fn generate_data_key(
        &mut self,
        account: &AccountId,
        region: &Region,
        key: &KeyRef,
        context: &crate::cloud::EncryptionContext,
    ) -> CloudResult<(Zeroizing<Vec<u8>>, Vec<u8>, KeyArn)> {
        let k = self.find_key(account, region, key).ok_or_else(|| Self::key_missing(key.as_str()))?.clone();
        if !k.enabled {
            return Err(err(ErrorKind::InvalidState, "DisabledException", format!("{} is disabled.", k.arn)));
        }
        let mut plain = Zeroizing::new(vec![0u8; 32]);
        aws_lc_rs::rand::fill(&mut plain).map_err(|_| err(ErrorKind::Other, "InternalError", "no randomness"))?;
        Ok((plain.clone(), wrap(&k, &plain, context), k.arn.clone()))
    }

    pub fn decrypt(
        &self,
        account: &AccountId,
        _region: &Region,
        req: &crate::cloud::DecryptReq<'_>,
    ) -> CloudResult<(Zeroizing<Vec<u8>>, KeyArn)> {
        let blob = req.ciphertext;
        let invalid = || err(ErrorKind::Invalid, "InvalidCiphertextException", "the ciphertext is not valid");
        let rest = blob.strip_prefix(WRAP_MAGIC).ok_or_else(invalid)?;
        let (&len, rest) = rest.split_first().ok_or_else(invalid)?;
        let arn = rest.get(..len as usize).and_then(|b| std::str::from_utf8(b).ok()).ok_or_else(invalid)?;
        let k = self.keys.iter().find(|k| k.arn.as_str() == arn).ok_or_else(invalid)?;
        if &k.account != account && !crate::policy::allows(&k.policy, account, "kms:Decrypt", None) {
            return Err(err(
                ErrorKind::AccessDenied,
                "AccessDeniedException",
                format!("User in account {account} is not authorized to perform: kms:Decrypt on resource: {arn}"),
            ));
        }
        if let Some(expected) = req.key
            && expected != &k.arn
        {
            return Err(err(
                ErrorKind::Invalid,
                "IncorrectKeyException",
                format!("the ciphertext was not encrypted under {expected}"),
            ));
        }
        // The context is bound like KMS binds it: any other context fails the check.
        if wrap(k, &unwrap_raw(k, rest.get(len as usize..).ok_or_else(invalid)?), req.context) != blob {
            return Err(invalid());
        }
        Ok((Zeroizing::new(unwrap_raw(k, &rest[len as usize..])), k.arn.clone()))
    }
}

const WRAP_MAGIC: &[u8] = b"SIMKMS1";

// The simulated KMS wraps a data key by XOR with the key's secret plus a checksum that
// also covers the encryption context: enough to tell keys, contexts and tampering apart
// in a rehearsal, not real cryptography.
fn wrap(k: &SimKey, plain: &[u8], context: &crate::cloud::EncryptionContext) -> Vec<u8> {
    let mut out = WRAP_MAGIC.to_vec();
    out.push(k.arn.as_str().len() as u8);
    out.extend_from_slice(k.arn.as_str().as_bytes());
    let body: Vec<u8> = plain.iter().zip(k.secret.iter().cycle()).map(|(p, s)| p ^ s).collect();
    let sum = body.iter().fold(0u32, |a, b| a.rotate_left(5) ^ u32::from(*b))
        ^ u32::from_be_bytes([k.secret[0], k.secret[1], k.secret[2], k.secret[3]])
        ^ context_sum(context);
    out.extend_from_slice(&body);
    out.extend_from_slice(&sum.to_be_bytes());
    out
}

/// FNV-1a over the context's pairs, 0 for an empty context.
fn context_sum(context: &crate::cloud::EncryptionContext) -> u32 {
    context.iter().fold(0, |h, (key, value)| {
        [key.as_bytes(), b"\0", value.as_bytes(), b"\0"]
            .concat()
            .iter()
            .fold(h ^ 0x811c_9dc5, |h, b| (h ^ u32::from(*b)).wrapping_mul(0x0100_0193))
    })
}

fn unwrap_raw(k: &SimKey, body_and_sum: &[u8]) -> Vec<u8> {
    let body = &body_and_sum[..body_and_sum.len().saturating_sub(4)];
    body.iter().zip(k.secret.iter().cycle()).map(|(p, s)| p ^ s).collect()
}

/// `policy` less every statement snapferry added (Sid `SnapferryShare...`).
fn without_snapferry_statements(policy: &str) -> String {
    let Ok(mut doc) = serde_json::from_str::<serde_json::Value>(policy) else { return policy.to_owned() };
    if let Some(serde_json::Value::Array(items)) = doc.get_mut("Statement") {
        items.retain(|st| !st.get("Sid").and_then(|s| s.as_str()).is_some_and(|s| s.starts_with("SnapferryShare")));
    }
    serde_json::to_string_pretty(&doc).unwrap_or_else(|_| policy.to_owned())
}
