//! The seam between snapferry and AWS: the [`Cloud`] trait, spoken in domain types
//! only, and its two implementations, [`aws`] (the SDK, the only place `aws_sdk_*`
//! appears) and [`sim`] (an in-memory AWS for rehearsals and tests).
//!
//! Architecture Invariant: no SDK type crosses this module's boundary; errors are
//! [`CloudError`] values with a [`ErrorKind`] plus the AWS code, message and request id.

pub mod aws;
pub mod object;
pub mod sim;

use std::collections::BTreeMap;
use std::fmt;

use async_trait::async_trait;
use zeroize::Zeroizing;

use crate::ids::{AccountId, AvailabilityZone, KeyArn, KeyRef, Region, SnapshotId, VolumeId};

/// Which credentials a call is made with: the caller's own (source account) or those
/// of target `i` of the plan (the role assumed in its account, or the caller's own for
/// a same-account target). Same-account plans use `Source` throughout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Side {
    Source,
    Target(u8),
}

impl Side {
    /// The side of the plan's first (or only) target.
    pub const TARGET: Side = Side::Target(0);
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Side::Source => f.write_str("source"),
            Side::Target(0) => f.write_str("target"),
            Side::Target(i) => write!(f, "target {}", u16::from(*i) + 1),
        }
    }
}

/// How one target's calls are made: with `role` assumed in its account (passing
/// `external_id`), or, with no role, with the caller's own credentials (a target in
/// the caller's account).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TargetAccess {
    pub role: Option<crate::ids::RoleArn>,
    pub external_id: Option<String>,
}

/// Where a call goes: whose credentials, which region.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Loc {
    pub side: Side,
    pub region: Region,
}

impl Loc {
    pub fn new(side: Side, region: &Region) -> Self {
        Loc { side, region: region.clone() }
    }
}

impl fmt::Display for Loc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} account in {}", self.side, self.region)
    }
}

/// Tags as AWS stores them: key to value.
pub type Tags = BTreeMap<String, String>;

/// What kind of failure a cloud call met; the runner decides retry or fail on this.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// RequestLimitExceeded, ThrottlingException: retry with back-off.
    Throttled,
    /// The resource does not exist (or is not visible yet).
    NotFound,
    /// Missing permission in IAM or a key policy.
    AccessDenied,
    /// The credentials are expired, invalid or cannot be had: nothing is wrong with
    /// the resource; the invocation stops and a later one carries on.
    Credentials,
    /// A quota: ResourceLimitExceeded, SnapshotCreationPerVolumeRateExceeded.
    LimitExceeded,
    /// The resource is in a state that does not allow the call (key disabled, ...).
    InvalidState,
    /// The request was refused as malformed or invalid: a plan or code problem.
    Invalid,
    /// No answer: a timeout or a broken connection. The call may or may not have
    /// taken effect.
    Transport,
    Other,
}

/// A failed cloud call, carrying what AWS said.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
#[error("{message}{}{}", code.as_deref().map(|c| format!(" ({c})")).unwrap_or_default(), request_id.as_deref().map(|r| format!(" [request id {r}]")).unwrap_or_default())]
pub struct CloudError {
    pub kind: ErrorKind,
    pub code: Option<String>,
    pub message: String,
    pub request_id: Option<String>,
}

impl CloudError {
    pub fn new(kind: ErrorKind, code: impl Into<String>, message: impl Into<String>) -> Self {
        CloudError { kind, code: Some(code.into()), message: message.into(), request_id: None }
    }

    /// True when the request certainly did not take effect and may be sent again as is.
    pub fn is_retryable(&self) -> bool {
        matches!(self.kind, ErrorKind::Throttled | ErrorKind::LimitExceeded | ErrorKind::Transport)
    }

    /// True when AWS answered, so the call is known not to have taken effect.
    /// A transport failure leaves the outcome unknown.
    pub fn outcome_known(&self) -> bool {
        self.kind != ErrorKind::Transport
    }
}

pub type CloudResult<T> = Result<T, CloudError>;

/// The caller behind a set of credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub account: AccountId,
    pub arn: String,
}

/// Who manages a KMS key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyManager {
    Customer,
    Aws,
}

/// What DescribeKey tells about a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyInfo {
    pub arn: KeyArn,
    pub account: AccountId,
    pub enabled: bool,
    /// `SYMMETRIC_DEFAULT` for keys EBS can use.
    pub spec: String,
    pub manager: KeyManager,
}

impl KeyInfo {
    pub fn is_symmetric(&self) -> bool {
        self.spec == "SYMMETRIC_DEFAULT"
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SnapshotState {
    Pending,
    Completed,
    Error,
    /// Recoverable / recovering / anything newer than this code.
    Other,
}

/// One snapshot as DescribeSnapshots shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub id: SnapshotId,
    pub volume_id: Option<String>,
    pub owner: Option<AccountId>,
    pub state: SnapshotState,
    /// 0..=100 while pending, when reported.
    pub progress: Option<u8>,
    pub state_message: Option<String>,
    pub encrypted: bool,
    pub kms_key_id: Option<String>,
    pub size_gib: Option<i32>,
    pub tags: Tags,
    /// Milliseconds since the Unix epoch.
    pub start_time_ms: Option<i64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum VolumeState {
    Creating,
    Available,
    InUse,
    Deleting,
    Deleted,
    Error,
    Other,
}

/// One volume as DescribeVolumes shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Volume {
    pub id: VolumeId,
    pub state: VolumeState,
    pub availability_zone: String,
    pub size_gib: i32,
    pub encrypted: bool,
    pub kms_key_id: Option<String>,
    pub volume_type: Option<String>,
    pub iops: Option<i32>,
    pub throughput: Option<i32>,
    pub snapshot_id: Option<String>,
    pub tags: Tags,
    pub attachments: usize,
    /// Milliseconds since the Unix epoch.
    pub create_time_ms: Option<i64>,
}

/// CreateSnapshot in the source account and region.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateSnapshotReq {
    pub volume: VolumeId,
    pub description: String,
    pub tags: Tags,
}

/// CopySnapshot, sent to the destination `Loc`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopySnapshotReq {
    pub source_region: Region,
    pub source_snapshot: SnapshotId,
    /// Re-encrypt under this key (always set by snapferry: `Encrypted=true`).
    pub kms_key: KeyArn,
    pub description: String,
    pub tags: Tags,
    /// A time-based copy: CompletionDurationMinutes (15 to 2,880, steps of 15).
    pub completion_minutes: Option<u32>,
}

/// CreateVolume from a snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateVolumeReq {
    pub snapshot: SnapshotId,
    pub availability_zone: AvailabilityZone,
    pub volume_type: Option<String>,
    pub iops: Option<u32>,
    pub throughput: Option<u32>,
    pub kms_key: KeyArn,
    pub tags: Tags,
    /// Idempotency token, at most 64 ASCII characters.
    pub client_token: String,
}

/// One snapshot's lock, as LockSnapshot or DescribeLockedSnapshots report it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockedSnapshot {
    pub id: SnapshotId,
    pub state: crate::lock::LockState,
    /// `LockExpiresOn` (ms since the Unix epoch); absent while the snapshot is pending.
    pub expires_ms: Option<i64>,
}

/// A data key from GenerateDataKey: the plaintext (zeroized on drop) and the same key
/// encrypted under the KMS key.
pub struct DataKey {
    pub plaintext: Zeroizing<Vec<u8>>,
    pub ciphertext: Vec<u8>,
    pub key_arn: KeyArn,
}

/// One page of ListSnapshotBlocks: the written blocks (index and block token) in
/// index order, the token of the next page, and the volume's size.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BlockPage {
    pub blocks: Vec<(u64, String)>,
    pub next_token: Option<String>,
    pub volume_size_gib: i64,
    pub block_size: u32,
}

/// What GetSnapshotBlock says of one block: `x-amz-Checksum` (Base64 SHA-256 of its
/// plaintext) and `x-amz-Data-Length`. The data itself is dropped as it arrives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockChecksum {
    pub checksum: String,
    pub data_length: u32,
}

/// A KMS encryption context: pairs a data key is bound to. KMS needs the same pairs to
/// decrypt it (KMS developer guide, "Encryption context").
pub type EncryptionContext = std::collections::BTreeMap<String, String>;

/// A KMS Decrypt of a data key.
pub struct DecryptReq<'a> {
    pub ciphertext: &'a [u8],
    /// The key expected to have wrapped it; KMS refuses a ciphertext of another key.
    pub key: Option<&'a KeyArn>,
    /// The encryption context it was made with.
    pub context: &'a EncryptionContext,
}

/// A data key encrypted under a KMS key, for a party that will encrypt later.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrappedKey {
    pub ciphertext: Vec<u8>,
    pub key_arn: KeyArn,
}

/// A call to try with EC2's `DryRun=true`: AWS checks the caller's permissions and
/// answers without doing anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    CreateSnapshot { volume: VolumeId },
    CreateVolume { availability_zone: AvailabilityZone, kms_key: KeyArn },
}

impl Probe {
    /// The IAM action the probe checks.
    pub fn action(&self) -> &'static str {
        match self {
            Probe::CreateSnapshot { .. } => "ec2:CreateSnapshot",
            Probe::CreateVolume { .. } => "ec2:CreateVolume",
        }
    }
}

/// Everything snapferry asks of AWS. Implementations: [`aws::AwsCloud`] and
/// [`sim::SimCloud`]. Every method is one AWS request (or one paginated listing)
/// from the runner's point of view; retries of throttled calls are the runner's.
#[async_trait]
pub trait Cloud: Send + Sync {
    /// STS GetCallerIdentity with the side's credentials (for the target side this
    /// proves the role can be assumed).
    async fn caller_identity(&self, side: Side) -> CloudResult<Identity>;

    /// KMS DescribeKey: resolves aliases to the key ARN.
    async fn describe_key(&self, loc: &Loc, key: &KeyRef) -> CloudResult<KeyInfo>;
    /// KMS GetKeyPolicy (policy name `default`), by key ARN.
    async fn get_key_policy(&self, loc: &Loc, key: &KeyArn) -> CloudResult<String>;
    /// KMS PutKeyPolicy, never with BypassPolicyLockoutSafetyCheck.
    async fn put_key_policy(&self, loc: &Loc, key: &KeyArn, policy: &str) -> CloudResult<()>;

    /// DescribeVolumes by id; ids that do not exist are left out of the answer.
    async fn describe_volumes(&self, loc: &Loc, ids: &[VolumeId]) -> CloudResult<Vec<Volume>>;
    /// DescribeVolumes filtered by tags (all must match), every page.
    async fn find_volumes(&self, loc: &Loc, tags: &Tags) -> CloudResult<Vec<Volume>>;
    async fn create_volume(&self, loc: &Loc, req: &CreateVolumeReq) -> CloudResult<VolumeId>;
    async fn delete_volume(&self, loc: &Loc, id: &VolumeId) -> CloudResult<()>;

    async fn create_snapshot(&self, loc: &Loc, req: &CreateSnapshotReq) -> CloudResult<Snapshot>;
    async fn copy_snapshot(&self, loc: &Loc, req: &CopySnapshotReq) -> CloudResult<SnapshotId>;
    /// DescribeSnapshots by id (callers pass at most 1,000); missing ids are left out.
    async fn describe_snapshots(&self, loc: &Loc, ids: &[SnapshotId]) -> CloudResult<Vec<Snapshot>>;
    /// DescribeSnapshots owned by the caller with all these tags, every page.
    async fn find_snapshots(&self, loc: &Loc, tags: &Tags) -> CloudResult<Vec<Snapshot>>;
    async fn delete_snapshot(&self, loc: &Loc, id: &SnapshotId) -> CloudResult<()>;
    /// LockSnapshot with the spec's mode, `LockDuration` and (compliance) `CoolOffPeriod`.
    /// Locking a snapshot already locked that way again changes nothing.
    async fn lock_snapshot(
        &self,
        loc: &Loc,
        id: &SnapshotId,
        spec: &crate::lock::LockSpec,
    ) -> CloudResult<LockedSnapshot>;
    /// DescribeLockedSnapshots of these ids, every page; ids without a lock are left out.
    async fn describe_locked_snapshots(&self, loc: &Loc, ids: &[SnapshotId]) -> CloudResult<Vec<LockedSnapshot>>;
    /// ModifySnapshotAttribute createVolumePermission add for these accounts, in one call.
    async fn share_snapshot(&self, loc: &Loc, id: &SnapshotId, with: &[AccountId]) -> CloudResult<()>;
    /// ModifySnapshotAttribute createVolumePermission remove for these accounts, in one call.
    async fn unshare_snapshot(&self, loc: &Loc, id: &SnapshotId, with: &[AccountId]) -> CloudResult<()>;
    /// DescribeSnapshotAttribute createVolumePermission: the accounts it is shared with.
    async fn snapshot_shared_with(&self, loc: &Loc, id: &SnapshotId) -> CloudResult<Vec<AccountId>>;

    /// The call with `DryRun=true`: `Ok` when AWS says it would have succeeded
    /// (DryRunOperation), an AccessDenied error when a permission is missing; any other
    /// error leaves the question open.
    async fn dry_run(&self, loc: &Loc, probe: &Probe) -> CloudResult<()>;

    /// KMS GenerateDataKey (AES_256) bound to `context`.
    async fn generate_data_key(&self, loc: &Loc, key: &KeyRef, context: &EncryptionContext) -> CloudResult<DataKey>;
    /// KMS GenerateDataKeyWithoutPlaintext (AES_256) bound to `context`.
    async fn generate_data_key_without_plaintext(
        &self,
        loc: &Loc,
        key: &KeyRef,
        context: &EncryptionContext,
    ) -> CloudResult<WrappedKey>;
    /// KMS Decrypt of a data key; returns the plaintext and the key that wrapped it.
    async fn decrypt(&self, loc: &Loc, req: &DecryptReq<'_>) -> CloudResult<(Zeroizing<Vec<u8>>, KeyArn)>;
    /// KMS GenerateRandom.
    async fn generate_random(&self, loc: &Loc, bytes: u32) -> CloudResult<Vec<u8>>;

    /// EC2 CreateTags on a snapshot (adds or overwrites these tags).
    async fn tag_snapshot(&self, loc: &Loc, id: &SnapshotId, tags: &Tags) -> CloudResult<()>;
    /// EBS ListSnapshotBlocks: one page of a completed snapshot's written blocks, from
    /// `start` (a block index) or `next_token`, at most `max_results` (100 to 10,000).
    async fn list_snapshot_blocks(
        &self,
        loc: &Loc,
        id: &SnapshotId,
        start: Option<u64>,
        next_token: Option<&str>,
        max_results: u32,
    ) -> CloudResult<BlockPage>;
    /// EBS GetSnapshotBlock: one block's checksum and data length.
    async fn get_snapshot_block(
        &self,
        loc: &Loc,
        id: &SnapshotId,
        index: u64,
        token: &str,
    ) -> CloudResult<BlockChecksum>;
}
