//! The state bucket: [`ObjectStore`] over S3 (GetObject, PutObject with
//! `If-None-Match` / `If-Match`, DeleteObject with `If-Match`, ListObjectsV2).
//!
//! Credentials are the source side's chain (the plan's profile, when given). The
//! bucket's region is asked of S3 (HeadBucket's `x-amz-bucket-region`), never assumed,
//! so a bucket in another region than the plan's works. Against an emulator
//! (`--endpoint-url`) requests use path-style addressing: the bucket cannot be a
//! host name there.

use std::time::SystemTime;

use async_trait::async_trait;
use aws_config::BehaviorVersion;
use aws_sdk_s3::error::SdkError;
use aws_sdk_s3::primitives::ByteStream;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;

use super::config::{SERVICE_ENDPOINT_VARS, check_endpoint_from, retry_config, timeout_config};
use super::error::from_sdk;
use crate::cloud::object::{Condition, Counters, Object, ObjectStats, ObjectStore, precondition_failed};
use crate::cloud::{CloudError, CloudResult, ErrorKind};
use crate::ids::Region;

/// ListObjectsV2 answers at most 1,000 keys per page (S3 API reference); a state
/// prefix holds a few objects per run, so this bounds a listing at a million keys.
const MAX_LIST_PAGES: usize = 1_000;

/// The region used to ask S3 where the bucket is when the chain names none.
const FALLBACK_REGION: &str = "us-east-1";

/// What [`S3Objects::connect`] needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Config {
    pub bucket: String,
    /// Without leading or trailing slash; may be empty.
    pub prefix: String,
    /// The plan's source profile, when known.
    pub profile: Option<String>,
    /// Where to ask first (the plan's source region, when known).
    pub region: Option<Region>,
    /// `--endpoint-url`, already checked.
    pub endpoint_url: Option<String>,
}

/// Objects under `s3://bucket/prefix/`.
pub struct S3Objects {
    client: aws_sdk_s3::Client,
    bucket: String,
    /// The bucket's region, as S3 said.
    region: String,
    prefix: String,
    counters: Counters,
    /// How long the credentials in use last.
    life: CredentialLife,
}

impl std::fmt::Debug for S3Objects {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Objects").field("bucket", &self.bucket).field("prefix", &self.prefix).finish_non_exhaustive()
    }
}

impl S3Objects {
    /// Loads the credential chain and finds the bucket's region (one HeadBucket).
    pub async fn connect(cfg: S3Config) -> Result<S3Objects, CloudError> {
        for var in SERVICE_ENDPOINT_VARS {
            if let Ok(url) = std::env::var(var) {
                check_endpoint_from(&url, var)?;
            }
        }
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .retry_config(retry_config())
            .timeout_config(timeout_config());
        if let Some(r) = &cfg.region {
            loader = loader.region(aws_config::Region::new(r.as_str().to_owned()));
        }
        if let Some(profile) = &cfg.profile {
            loader = loader.profile_name(profile);
        }
        if let Some(url) = &cfg.endpoint_url {
            loader = loader.endpoint_url(url);
        }
        let sdk = loader.load().await;
        if let Some(url) = sdk.endpoint_url() {
            check_endpoint_from(url, "AWS_ENDPOINT_URL or the profile's endpoint_url")?;
        }
        let path_style = sdk.endpoint_url().is_some();
        let first = sdk.region().map(|r| r.to_string()).unwrap_or_else(|| FALLBACK_REGION.to_owned());
        let build = |region: &str| {
            aws_sdk_s3::Client::from_conf(
                aws_sdk_s3::config::Builder::from(&sdk)
                    .region(aws_config::Region::new(region.to_owned()))
                    .force_path_style(path_style)
                    .build(),
            )
        };
        let client = build(&first);
        let bucket = cfg.bucket.clone();
        let region = match client.head_bucket().bucket(&bucket).send().await {
            Ok(out) => out.bucket_region().map(str::to_owned).unwrap_or_else(|| first.clone()),
            Err(e) => {
                let raw = e.raw_response();
                let header = raw.and_then(|r| r.headers().get("x-amz-bucket-region")).map(str::to_owned);
                let status = raw.map(|r| r.status().as_u16());
                match (header, status) {
                    (Some(r), _) => r,
                    (None, Some(404)) => {
                        return Err(CloudError::new(
                            ErrorKind::NotFound,
                            "NoSuchBucket",
                            format!("state bucket {bucket} does not exist; create it (docs/operations.md says how)"),
                        ));
                    }
                    (None, Some(403)) => {
                        return Err(CloudError::new(
                            ErrorKind::AccessDenied,
                            "AccessDenied",
                            format!(
                                "access denied to s3:ListBucket on state bucket {bucket}; grant s3:ListBucket, s3:GetObject, s3:PutObject and s3:DeleteObject on it"
                            ),
                        ));
                    }
                    _ => return Err(from_sdk("s3:ListBucket", e)),
                }
            }
        };
        tracing::debug!(bucket, region, "state bucket");
        let client = if region == first { client } else { build(&region) };
        Ok(S3Objects {
            client,
            bucket: cfg.bucket,
            region,
            prefix: cfg.prefix,
            counters: Counters::default(),
            life: credential_life(&sdk).await,
        })
    }

    /// The bucket's region.
    pub fn region(&self) -> &str {
        &self.region
    }

    /// How long the credentials in use last.
    pub fn credential_life(&self) -> CredentialLife {
        self.life
    }

    fn key(&self, key: &str) -> String {
        if self.prefix.is_empty() { key.to_owned() } else { format!("{}/{key}", self.prefix) }
    }

    /// Names the object in an error, so the message says which bucket.
    fn named(&self, key: &str, e: CloudError) -> CloudError {
        CloudError { message: format!("{} (s3://{}/{})", e.message, self.bucket, self.key(key)), ..e }
    }
}

/// How long credentials last, as far as can be told without a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialLife {
    /// Long-lived keys, or a source the SDK refreshes (a role, web identity, SSO).
    Refreshed,
    /// Fixed credentials that end at this time and are not refreshed.
    Ends(SystemTime),
    /// Temporary credentials from environment variables (a session token, as CI's
    /// OIDC step exports): they end, at a time the environment does not say, and
    /// nothing refreshes them.
    TemporaryFromEnvironment,
}

async fn credential_life(sdk: &aws_config::SdkConfig) -> CredentialLife {
    use aws_credential_types::provider::ProvideCredentials;
    let Some(provider) = sdk.credentials_provider() else { return CredentialLife::Refreshed };
    let Ok(creds) = provider.provide_credentials().await else { return CredentialLife::Refreshed };
    // The provider's name shows only in Debug (which redacts the secrets).
    let from_env = format!("{creds:?}").contains("EnvironmentVariable");
    match (from_env, creds.expiry(), creds.session_token().is_some()) {
        (true, Some(t), _) => CredentialLife::Ends(t),
        (true, None, true) => CredentialLife::TemporaryFromEnvironment,
        _ => CredentialLife::Refreshed,
    }
}

fn missing<E: ProvideErrorMetadata>(
    e: &SdkError<E, aws_smithy_runtime_api::client::orchestrator::HttpResponse>,
) -> bool {
    match e {
        SdkError::ServiceError(ctx) => {
            ctx.raw().status().as_u16() == 404 || matches!(ctx.err().code(), Some("NoSuchKey" | "NotFound"))
        }
        _ => false,
    }
}

#[async_trait]
impl ObjectStore for S3Objects {
    fn location(&self) -> String {
        if self.prefix.is_empty() {
            format!("s3://{}", self.bucket)
        } else {
            format!("s3://{}/{}", self.bucket, self.prefix)
        }
    }

    async fn get(&self, key: &str) -> CloudResult<Option<Object>> {
        const ACTION: &str = "s3:GetObject";
        let out = match self.client.get_object().bucket(&self.bucket).key(self.key(key)).send().await {
            Ok(o) => o,
            Err(e) if missing(&e) => {
                self.counters.get(0);
                return Ok(None);
            }
            Err(e) => return Err(self.named(key, from_sdk(ACTION, e))),
        };
        let etag = out.e_tag().unwrap_or_default().to_owned();
        let bytes = out
            .body
            .collect()
            .await
            .map_err(|e| {
                CloudError::new(
                    ErrorKind::Transport,
                    "ReadBody",
                    format!("{ACTION}: reading s3://{}/{key}: {e}", self.bucket),
                )
            })?
            .into_bytes()
            .to_vec();
        self.counters.get(bytes.len());
        Ok(Some(Object { bytes, etag }))
    }

    async fn put(&self, key: &str, bytes: Vec<u8>, condition: Condition) -> CloudResult<String> {
        const ACTION: &str = "s3:PutObject";
        self.counters.put(bytes.len());
        let mut req = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(self.key(key))
            .content_type(if key.ends_with(".jsonl") { "application/x-ndjson" } else { "application/json" })
            .body(ByteStream::from(bytes));
        req = match condition {
            Condition::Absent => req.if_none_match("*"),
            Condition::Matches(etag) => req.if_match(etag),
        };
        match req.send().await {
            Ok(out) => Ok(out.e_tag().unwrap_or_default().to_owned()),
            // `If-Match` on an object that is gone: the version read no longer exists,
            // which is the same refusal as a changed one.
            Err(e) if missing(&e) => Err(precondition_failed(ACTION, &self.key(key))),
            Err(e) => Err(self.named(key, from_sdk(ACTION, e))),
        }
    }

    async fn delete(&self, key: &str, if_match: Option<&str>) -> CloudResult<()> {
        const ACTION: &str = "s3:DeleteObject";
        self.counters.delete();
        let mut req = self.client.delete_object().bucket(&self.bucket).key(self.key(key));
        if let Some(etag) = if_match {
            req = req.if_match(etag);
        }
        match req.send().await {
            Ok(_) => Ok(()),
            Err(e) if missing(&e) => Ok(()),
            Err(e) => Err(self.named(key, from_sdk(ACTION, e))),
        }
    }

    async fn list(&self, prefix: &str) -> CloudResult<Vec<String>> {
        const ACTION: &str = "s3:ListBucket";
        let full = self.key(prefix);
        let strip = if self.prefix.is_empty() { 0 } else { self.prefix.len() + 1 };
        let mut keys = vec![];
        let mut token: Option<String> = None;
        for _ in 0..MAX_LIST_PAGES {
            self.counters.list();
            let out = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(&full)
                .set_continuation_token(token.take())
                .send()
                .await
                .map_err(|e| self.named(prefix, from_sdk(ACTION, e)))?;
            keys.extend(
                out.contents().iter().filter_map(|o| o.key()).filter_map(|k| k.get(strip..)).map(str::to_owned),
            );
            match out.next_continuation_token() {
                Some(t) if out.is_truncated() == Some(true) => token = Some(t.to_owned()),
                _ => break,
            }
        }
        keys.sort();
        Ok(keys)
    }

    fn stats(&self) -> ObjectStats {
        self.counters.snapshot()
    }
}
