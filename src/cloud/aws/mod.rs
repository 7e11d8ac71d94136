//! The [`Cloud`] trait over the AWS SDK: the only module that names `aws_sdk_*`,
//! `aws_config`, `aws_smithy_*` or `aws_credential_types`. Nothing of the SDK leaves
//! it; callers see domain types and [`CloudError`]s.
//!
//! Layout:
//! - `config`: [`AwsConfig`], [`check_endpoint`], the retry and timeout policy
//! - `error`: SDK errors to [`CloudError`] (kind, code, message, request id)
//! - `convert`: SDK shapes to domain types, progress and "does not exist" parsing
//! - `ec2`, `kms`: one function per call
//! - `s3`: the state bucket as an [`crate::cloud::object::ObjectStore`]
//!
//! Credentials come from the standard chain (environment, profiles, SSO, web
//! identity, IMDS). The target side assumes `target_role` with those credentials,
//! through a provider that refreshes them: a role assumed from an assumed role lasts
//! at most an hour, and copies run for many.

mod config;
mod convert;
mod ebs;
mod ec2;
mod error;
mod kms;
mod s3;

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use aws_config::sts::AssumeRoleProvider;
use aws_config::{BehaviorVersion, SdkConfig};
use aws_credential_types::provider::SharedCredentialsProvider;
use tokio::sync::OnceCell;
use zeroize::Zeroizing;

pub use config::{AwsConfig, check_endpoint};
pub use s3::{CredentialLife, S3Config, S3Objects};

use self::config::{SERVICE_ENDPOINT_VARS, check_endpoint_from, check_session_name, retry_config, timeout_config};
use self::error::{bad_answer, from_sdk};
use crate::cloud::{
    Cloud, CloudError, CloudResult, CopySnapshotReq, CreateSnapshotReq, CreateVolumeReq, DataKey, Identity, KeyInfo,
    Loc, Side, Snapshot, Tags, Volume, WrappedKey,
};
use crate::ids::{AccountId, KeyArn, KeyRef, Region, RoleArn, SnapshotId, VolumeId};

/// The SDK clients for one side and region. Cloning one is cheap (an `Arc` inside).
struct Clients {
    ebs: aws_sdk_ebs::Client,
    ec2: aws_sdk_ec2::Client,
    kms: aws_sdk_kms::Client,
    sts: aws_sdk_sts::Client,
}

/// What is needed to assume the target role, kept until the first target-side call.
struct TargetRole {
    arn: RoleArn,
    external_id: Option<String>,
    session_name: String,
}

/// AWS itself, through the SDK.
pub struct AwsCloud {
    source_region: Region,
    /// Source credentials, retry and timeout policy, endpoint.
    source: SdkConfig,
    /// Per target of the plan, the role its side assumes (none: the source credentials).
    target_roles: Vec<Option<TargetRole>>,
    /// Per target, `source` with the assumed-role credentials, made at its side's first
    /// call so that runs and dry runs that never reach a target do not assume its role.
    targets: Vec<OnceCell<SdkConfig>>,
    /// One set of clients per side and region, made when first needed: every call in
    /// a region then shares one connection pool and one adaptive-retry rate limiter.
    clients: Mutex<HashMap<(Side, Region), Arc<Clients>>>,
}

impl fmt::Debug for AwsCloud {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AwsCloud")
            .field("source_region", &self.source_region)
            .field(
                "target_roles",
                &self.target_roles.iter().map(|r| r.as_ref().map(|r| r.arn.as_str())).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl AwsCloud {
    /// Loads the credential and region chain and checks the configuration. No call
    /// is sent to AWS yet; a missing credential shows at the first call.
    pub async fn connect(cfg: AwsConfig) -> Result<AwsCloud, CloudError> {
        if let Some(url) = &cfg.endpoint_url {
            check_endpoint_from(url, "--endpoint-url")?;
        }
        for var in SERVICE_ENDPOINT_VARS {
            if let Ok(url) = std::env::var(var) {
                check_endpoint_from(&url, var)?;
            }
        }
        if cfg.targets.iter().any(|t| t.role.is_some()) {
            check_session_name(&cfg.session_name)?;
        }

        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .region(aws_config::Region::new(cfg.source_region.as_str().to_owned()))
            .retry_config(retry_config())
            .timeout_config(timeout_config());
        if let Some(profile) = &cfg.source_profile {
            loader = loader.profile_name(profile);
        }
        if let Some(url) = &cfg.endpoint_url {
            loader = loader.endpoint_url(url);
        }
        let source = loader.load().await;
        // The loaded endpoint also reflects AWS_ENDPOINT_URL and a profile's
        // endpoint_url; those must keep to TLS as well.
        if let Some(url) = source.endpoint_url() {
            check_endpoint_from(url, "AWS_ENDPOINT_URL or the profile's endpoint_url")?;
        }

        let target_roles: Vec<Option<TargetRole>> = cfg
            .targets
            .into_iter()
            .map(|t| {
                t.role.map(|arn| TargetRole { arn, external_id: t.external_id, session_name: cfg.session_name.clone() })
            })
            .collect();
        Ok(AwsCloud {
            source_region: cfg.source_region,
            source,
            targets: target_roles.iter().map(|_| OnceCell::new()).collect(),
            target_roles,
            clients: Mutex::new(HashMap::new()),
        })
    }

    /// The configuration a side's calls are made with.
    async fn sdk_config(&self, side: Side) -> &SdkConfig {
        let target = match side {
            Side::Source => None,
            Side::Target(i) => {
                let i = usize::from(i);
                self.target_roles.get(i).and_then(Option::as_ref).zip(self.targets.get(i))
            }
        };
        match target {
            None => &self.source,
            Some((role, cell)) => {
                cell.get_or_init(|| async {
                    let mut provider = AssumeRoleProvider::builder(role.arn.as_str())
                        .session_name(&role.session_name)
                        // STS in the source region: the regional endpoint the
                        // source credentials are known to reach.
                        .region(aws_config::Region::new(self.source_region.as_str().to_owned()))
                        .configure(&self.source);
                    if let Some(id) = &role.external_id {
                        provider = provider.external_id(id);
                    }
                    let provider = provider.build().await;
                    // The clients' identity cache (from `source`) keeps the assumed
                    // credentials and renews them before they expire.
                    self.source.to_builder().credentials_provider(SharedCredentialsProvider::new(provider)).build()
                })
                .await
            }
        }
    }

    async fn clients(&self, side: Side, region: &Region) -> Arc<Clients> {
        let key = (side, region.clone());
        if let Some(c) = self.lock_clients().get(&key) {
            return Arc::clone(c);
        }
        let conf = self.sdk_config(side).await;
        let sdk_region = aws_config::Region::new(region.as_str().to_owned());
        let made = Arc::new(Clients {
            ebs: aws_sdk_ebs::Client::from_conf(
                aws_sdk_ebs::config::Builder::from(conf).region(sdk_region.clone()).build(),
            ),
            ec2: aws_sdk_ec2::Client::from_conf(
                aws_sdk_ec2::config::Builder::from(conf).region(sdk_region.clone()).build(),
            ),
            kms: aws_sdk_kms::Client::from_conf(
                aws_sdk_kms::config::Builder::from(conf).region(sdk_region.clone()).build(),
            ),
            sts: aws_sdk_sts::Client::from_conf(aws_sdk_sts::config::Builder::from(conf).region(sdk_region).build()),
        });
        // Two first calls may race to build; the first one stored wins, so every
        // later call shares one set of clients.
        Arc::clone(self.lock_clients().entry(key).or_insert(made))
    }

    fn lock_clients(&self) -> std::sync::MutexGuard<'_, HashMap<(Side, Region), Arc<Clients>>> {
        // The map is only ever inserted into; a panic elsewhere cannot leave it torn.
        self.clients.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    async fn at(&self, loc: &Loc) -> Arc<Clients> {
        self.clients(loc.side, &loc.region).await
    }
}

#[async_trait]
impl Cloud for AwsCloud {
    async fn caller_identity(&self, side: Side) -> CloudResult<Identity> {
        const ACTION: &str = "sts:GetCallerIdentity";
        let c = self.clients(side, &self.source_region).await;
        let out = c.sts.get_caller_identity().send().await.map_err(|e| from_sdk(ACTION, e))?;
        let account = out.account.unwrap_or_default();
        let account = AccountId::parse(&account).map_err(|_| bad_answer(ACTION, &format!("account id {account:?}")))?;
        Ok(Identity { account, arn: out.arn.unwrap_or_default() })
    }

    async fn describe_key(&self, loc: &Loc, key: &KeyRef) -> CloudResult<KeyInfo> {
        kms::describe_key(&self.at(loc).await.kms, key).await
    }

    async fn get_key_policy(&self, loc: &Loc, key: &KeyArn) -> CloudResult<String> {
        kms::get_key_policy(&self.at(loc).await.kms, key).await
    }

    async fn put_key_policy(&self, loc: &Loc, key: &KeyArn, policy: &str) -> CloudResult<()> {
        kms::put_key_policy(&self.at(loc).await.kms, key, policy).await
    }

    async fn describe_volumes(&self, loc: &Loc, ids: &[VolumeId]) -> CloudResult<Vec<Volume>> {
        ec2::describe_volumes(&self.at(loc).await.ec2, ids).await
    }

    async fn find_volumes(&self, loc: &Loc, tags: &Tags) -> CloudResult<Vec<Volume>> {
        ec2::find_volumes(&self.at(loc).await.ec2, tags).await
    }

    async fn create_volume(&self, loc: &Loc, req: &CreateVolumeReq) -> CloudResult<VolumeId> {
        ec2::create_volume(&self.at(loc).await.ec2, req).await
    }

    async fn delete_volume(&self, loc: &Loc, id: &VolumeId) -> CloudResult<()> {
        ec2::delete_volume(&self.at(loc).await.ec2, id).await
    }

    async fn create_snapshot(&self, loc: &Loc, req: &CreateSnapshotReq) -> CloudResult<Snapshot> {
        ec2::create_snapshot(&self.at(loc).await.ec2, req).await
    }

    async fn copy_snapshot(&self, loc: &Loc, req: &CopySnapshotReq) -> CloudResult<SnapshotId> {
        // Sent to the destination: `loc` is where the copy is made.
        ec2::copy_snapshot(&self.at(loc).await.ec2, req).await
    }

    async fn describe_snapshots(&self, loc: &Loc, ids: &[SnapshotId]) -> CloudResult<Vec<Snapshot>> {
        ec2::describe_snapshots(&self.at(loc).await.ec2, ids).await
    }

    async fn find_snapshots(&self, loc: &Loc, tags: &Tags) -> CloudResult<Vec<Snapshot>> {
        ec2::find_snapshots(&self.at(loc).await.ec2, tags).await
    }

    async fn delete_snapshot(&self, loc: &Loc, id: &SnapshotId) -> CloudResult<()> {
        ec2::delete_snapshot(&self.at(loc).await.ec2, id).await
    }

    async fn tag_snapshot(&self, loc: &Loc, id: &SnapshotId, tags: &Tags) -> CloudResult<()> {
        ec2::tag_snapshot(&self.at(loc).await.ec2, id, tags).await
    }

    async fn list_snapshot_blocks(
        &self,
        loc: &Loc,
        id: &SnapshotId,
        start: Option<u64>,
        next_token: Option<&str>,
        max_results: u32,
    ) -> CloudResult<crate::cloud::BlockPage> {
        ebs::list_snapshot_blocks(&self.at(loc).await.ebs, id, start, next_token, max_results).await
    }

    async fn get_snapshot_block(
        &self,
        loc: &Loc,
        id: &SnapshotId,
        index: u64,
        token: &str,
    ) -> CloudResult<crate::cloud::BlockChecksum> {
        ebs::get_snapshot_block(&self.at(loc).await.ebs, id, index, token).await
    }

    async fn lock_snapshot(
        &self,
        loc: &Loc,
        id: &SnapshotId,
        spec: &crate::lock::LockSpec,
    ) -> CloudResult<crate::cloud::LockedSnapshot> {
        ec2::lock_snapshot(&self.at(loc).await.ec2, id, spec).await
    }

    async fn describe_locked_snapshots(
        &self,
        loc: &Loc,
        ids: &[SnapshotId],
    ) -> CloudResult<Vec<crate::cloud::LockedSnapshot>> {
        ec2::describe_locked_snapshots(&self.at(loc).await.ec2, ids).await
    }

    async fn share_snapshot(&self, loc: &Loc, id: &SnapshotId, with: &[AccountId]) -> CloudResult<()> {
        ec2::set_shared(&self.at(loc).await.ec2, id, with, true).await
    }

    async fn unshare_snapshot(&self, loc: &Loc, id: &SnapshotId, with: &[AccountId]) -> CloudResult<()> {
        ec2::set_shared(&self.at(loc).await.ec2, id, with, false).await
    }

    async fn dry_run(&self, loc: &Loc, probe: &crate::cloud::Probe) -> CloudResult<()> {
        ec2::dry_run(&self.at(loc).await.ec2, probe).await
    }

    async fn snapshot_shared_with(&self, loc: &Loc, id: &SnapshotId) -> CloudResult<Vec<AccountId>> {
        ec2::shared_with(&self.at(loc).await.ec2, id).await
    }

    async fn generate_data_key(
        &self,
        loc: &Loc,
        key: &KeyRef,
        context: &crate::cloud::EncryptionContext,
    ) -> CloudResult<DataKey> {
        kms::generate_data_key(&self.at(loc).await.kms, key, context).await
    }

    async fn generate_data_key_without_plaintext(
        &self,
        loc: &Loc,
        key: &KeyRef,
        context: &crate::cloud::EncryptionContext,
    ) -> CloudResult<WrappedKey> {
        kms::generate_data_key_without_plaintext(&self.at(loc).await.kms, key, context).await
    }

    async fn decrypt(
        &self,
        loc: &Loc,
        req: &crate::cloud::DecryptReq<'_>,
    ) -> CloudResult<(Zeroizing<Vec<u8>>, KeyArn)> {
        kms::decrypt(&self.at(loc).await.kms, req).await
    }

    async fn generate_random(&self, loc: &Loc, bytes: u32) -> CloudResult<Vec<u8>> {
        kms::generate_random(&self.at(loc).await.kms, bytes).await
    }
}
