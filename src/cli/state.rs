//! Where the state lives (`--state-dir DIR` or `s3://BUCKET/PREFIX`) and opening it;
//! `--max-duration` and the warning about credentials that end before the work does.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use tokio::sync::watch;

use crate::checkpoint::{LeaseOptions, Store};
use crate::cloud::aws::{CredentialLife, S3Config, S3Objects};
use crate::ids::Region;

use super::args::Common;
use super::failure::Failure;

/// S3 bucket names: 3 to 63 characters of a-z, 0-9, `.` and `-` (S3 user guide,
/// "Bucket naming rules").
const BUCKET_NAME_MAX: usize = 63;

/// The state's place, parsed from `--state-dir`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StateLocation {
    Local(PathBuf),
    S3 { bucket: String, prefix: String },
}

impl StateLocation {
    pub fn parse(dir: &Path) -> Result<Self, String> {
        let Some(text) = dir.to_str().and_then(|t| t.strip_prefix("s3://")) else {
            return Ok(StateLocation::Local(dir.to_owned()));
        };
        let (bucket, prefix) = text.split_once('/').unwrap_or((text, ""));
        let ok = (3..=BUCKET_NAME_MAX).contains(&bucket.len())
            && bucket.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-');
        if !ok {
            return Err(format!(
                "--state-dir s3://{text}: {bucket:?} is not an S3 bucket name (3 to 63 characters of a-z, 0-9, . and -); use s3://BUCKET/PREFIX"
            ));
        }
        Ok(StateLocation::S3 { bucket: bucket.to_owned(), prefix: prefix.trim_matches('/').to_owned() })
    }
}

/// What opening an S3 state needs to know of the plan, when there is one.
#[derive(Debug, Default, Clone)]
pub struct StateReach {
    pub profile: Option<String>,
    pub region: Option<Region>,
}

/// An open state, and how long the credentials that reach it last.
pub struct OpenState {
    pub store: Store,
    pub life: CredentialLife,
}

/// Opens the local state dir or the state bucket (one HeadBucket to find its region).
pub async fn open(common: &Common, reach: StateReach) -> Result<OpenState, Failure> {
    let location = StateLocation::parse(&common.state_dir).map_err(Failure::Usage)?;
    match location {
        StateLocation::Local(dir) => Ok(OpenState { store: Store::new(dir), life: CredentialLife::Refreshed }),
        StateLocation::S3 { bucket, prefix } => {
            let lease = LeaseOptions::from_env().map_err(Failure::Usage)?;
            let objects = S3Objects::connect(S3Config {
                bucket: bucket.clone(),
                prefix,
                profile: reach.profile,
                region: reach.region,
                endpoint_url: super::cloud::endpoint(common)?,
            })
            .await
            .map_err(|source| Failure::Setup { what: format!("cannot reach state bucket {bucket}"), source })?;
            let life = objects.credential_life();
            Ok(OpenState { store: Store::remote(Arc::new(objects), lease), life })
        }
    }
}

/// Logs what the state cost, and waits for the lease to be released.
pub async fn close(store: &Store) {
    store.close().await;
    if let Some(stats) = store.stats() {
        tracing::info!(state = %store.location(), "state requests: {stats}");
    }
}

/// Parses `--max-duration`.
pub fn max_duration(text: Option<&str>) -> Result<Option<Duration>, Failure> {
    let Some(text) = text else { return Ok(None) };
    match crate::plan::duration::parse(text) {
        Ok(d) if !d.is_zero() => Ok(Some(d)),
        Ok(_) => Err(Failure::Usage("--max-duration must be longer than zero, like 90m or 5h30m".to_owned())),
        Err(e) => {
            Err(Failure::Usage(format!("--max-duration {text}: {e}; expected {}", crate::plan::duration::EXPECTED)))
        }
    }
}

/// Turns `shutdown` true after `limit`, and says so through the returned flag.
pub fn stop_after(limit: Option<Duration>, shutdown: Arc<watch::Sender<bool>>) -> Arc<AtomicBool> {
    let fired = Arc::new(AtomicBool::new(false));
    if let Some(limit) = limit {
        let flag = fired.clone();
        tokio::spawn(async move {
            tokio::time::sleep(limit).await;
            if !*shutdown.borrow() {
                tracing::warn!(
                    "--max-duration reached: finishing the calls under way and saving the checkpoint; AWS goes on copying, run the same command to carry on"
                );
                flag.store(true, Ordering::SeqCst);
                let _ = shutdown.send(true);
            }
        });
    }
    fired
}

/// Warns when the credentials will end before the run is stopped by
/// `--max-duration` (or, without it, may end before the copies do).
pub fn warn_credentials(life: CredentialLife, limit: Option<Duration>) {
    match life {
        CredentialLife::Refreshed => {}
        CredentialLife::Ends(at) => {
            let left = at.duration_since(SystemTime::now()).unwrap_or_default();
            if limit.is_none_or(|l| l > left) {
                tracing::warn!(
                    left_minutes = left.as_secs() / 60,
                    "the credentials end in {} minutes and nothing refreshes them; the run fails at its first call after that (resumable): set --max-duration below that, or use a role or web identity the SDK renews",
                    left.as_secs() / 60
                );
            }
        }
        CredentialLife::TemporaryFromEnvironment => {
            if limit.is_none_or(|l| l > Duration::from_secs(3_600)) {
                tracing::warn!(
                    "temporary credentials from environment variables are never refreshed (CI's OIDC step gives 1 hour by default); a run that outlives them fails at its next call: set --max-duration below their lifetime"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_dirs_parse_as_local_or_s3() {
        assert_eq!(
            StateLocation::parse(Path::new(".snapferry")).unwrap(),
            StateLocation::Local(PathBuf::from(".snapferry"))
        );
        assert_eq!(
            StateLocation::parse(Path::new("s3://my-state/ci/prod/")).unwrap(),
            StateLocation::S3 { bucket: "my-state".into(), prefix: "ci/prod".into() }
        );
        assert_eq!(
            StateLocation::parse(Path::new("s3://my-state")).unwrap(),
            StateLocation::S3 { bucket: "my-state".into(), prefix: String::new() }
        );
        assert!(StateLocation::parse(Path::new("s3://My_Bucket/x")).is_err());
        assert!(StateLocation::parse(Path::new("s3:///x")).is_err());
    }

    #[test]
    fn max_duration_takes_plan_durations() {
        assert_eq!(max_duration(Some("5h30m")).unwrap(), Some(Duration::from_secs(19_800)));
        assert_eq!(max_duration(None).unwrap(), None);
        assert!(matches!(max_duration(Some("0s")), Err(Failure::Usage(_))));
        assert!(matches!(max_duration(Some("soon")), Err(Failure::Usage(_))));
    }
}
