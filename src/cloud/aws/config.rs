//! How snapferry talks to AWS: what the user configures ([`AwsConfig`]), the checks
//! on it (TLS-only endpoints, role session names), and the retry and timeout policy
//! every SDK client is built with.

use std::net::IpAddr;
use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;

use crate::cloud::{CloudError, ErrorKind, TargetAccess};
use crate::ids::Region;

/// What [`super::AwsCloud::connect`] needs to reach AWS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwsConfig {
    /// The plan's `source.region`: where source-side calls and STS calls go.
    pub source_region: Region,
    /// The plan's `source.profile`, a named profile of the shared AWS config files.
    pub source_profile: Option<String>,
    /// `--endpoint-url`: send every call there (an emulator). `AWS_ENDPOINT_URL` is
    /// honoured by the SDK itself and checked the same way.
    pub endpoint_url: Option<String>,
    /// How each target of the plan is reached, in its order: the role to assume and
    /// the external id to pass; without a role that target's side uses the source
    /// credentials (a same-account target).
    pub targets: Vec<TargetAccess>,
    /// The role session name, such as `snapferry-<run id>`: it shows in the target
    /// account's CloudTrail, so an operator can tell which run did what.
    pub session_name: String,
}

/// Attempts per call, the first included. The SDK's adaptive mode retries throttling
/// and transient failures with jittered back-off and slows the client down when AWS
/// throttles it (one token bucket per client, shared by every concurrent copy polled
/// in that region). Five attempts ride out a blip; a longer storm surfaces as
/// `Throttled` to the runner, which waits longer and keeps its checkpoint current
/// instead of hiding minutes inside one call.
pub(crate) const MAX_ATTEMPTS: u32 = 5;

/// A TCP/TLS connection that is not up in 10 s will not be: fail the attempt and let
/// the retry policy try another connection.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// No EC2, KMS or STS call snapferry makes takes more than seconds on the AWS side;
/// an attempt without an answer after a minute is a stuck connection.
pub(crate) const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(60);

/// Bounds one call with all its retries, so a step can never hang the run: five
/// attempts of at most a minute plus back-off fit in it.
pub(crate) const OPERATION_TIMEOUT: Duration = Duration::from_secs(360);

/// Role session names: 2 to 64 characters of `[\w+=,.@-]` (STS AssumeRole,
/// RoleSessionName).
const SESSION_NAME_MAX: usize = 64;

/// The retry policy of every client, see [`MAX_ATTEMPTS`].
pub(crate) fn retry_config() -> RetryConfig {
    RetryConfig::adaptive().with_max_attempts(MAX_ATTEMPTS)
}

/// The timeouts of every client, see [`CONNECT_TIMEOUT`] and [`ATTEMPT_TIMEOUT`].
pub(crate) fn timeout_config() -> TimeoutConfig {
    TimeoutConfig::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .operation_attempt_timeout(ATTEMPT_TIMEOUT)
        .operation_timeout(OPERATION_TIMEOUT)
        .build()
}

/// Accepts an endpoint URL only if data and credentials stay off the wire in clear
/// text: `https://` anywhere, `http://` only to a loopback address (127.0.0.0/8,
/// ::1, localhost), as used by a local emulator.
pub fn check_endpoint(url: &str) -> Result<(), String> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| format!("endpoint url {url:?} has no scheme: use https://HOST or http://127.0.0.1:PORT"))?;
    let scheme = scheme.to_ascii_lowercase();
    // The authority ends at the first of / ? #; user info (if any) precedes an @.
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = if let Some(v6) = host_port.strip_prefix('[') {
        v6.split_once(']').map(|(h, _)| h).unwrap_or_default()
    } else {
        host_port.split(':').next().unwrap_or_default()
    };
    if host.is_empty() {
        return Err(format!("endpoint url {url:?} names no host"));
    }
    match scheme.as_str() {
        "https" => Ok(()),
        "http" if is_loopback(host) => Ok(()),
        "http" => Err(format!(
            "endpoint url {url:?} is plain http to a host that is not loopback: data and credentials must travel over TLS, use https:// (plain http is allowed only for 127.0.0.0/8, ::1 and localhost)"
        )),
        _ => Err(format!("endpoint url {url:?} must start with https:// (or http:// to a loopback address)")),
    }
}

fn is_loopback(host: &str) -> bool {
    let host = host.trim_end_matches('.');
    host.eq_ignore_ascii_case("localhost") || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Checks a role session name against the STS rules, so a bad run id fails before
/// any call rather than at the first target-side call, hours into a run.
pub(crate) fn check_session_name(name: &str) -> Result<(), CloudError> {
    let ok = (2..=SESSION_NAME_MAX).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"_+=,.@-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(CloudError::new(
            ErrorKind::Invalid,
            "InvalidSessionName",
            format!("role session name {name:?} must be 2 to 64 characters of A-Z, a-z, 0-9 and _+=,.@-"),
        ))
    }
}

/// Endpoint variables the SDK reads per service, beside the global one it folds into
/// its loaded configuration: all must pass [`check_endpoint`].
pub(crate) const SERVICE_ENDPOINT_VARS: [&str; 5] = [
    "AWS_ENDPOINT_URL_EC2",
    "AWS_ENDPOINT_URL_EBS",
    "AWS_ENDPOINT_URL_KMS",
    "AWS_ENDPOINT_URL_STS",
    "AWS_ENDPOINT_URL_S3",
];

/// [`check_endpoint`] as a [`CloudError`] of kind `Invalid`, naming where the URL
/// came from.
pub(crate) fn check_endpoint_from(url: &str, origin: &str) -> Result<(), CloudError> {
    check_endpoint(url)
        .map_err(|msg| CloudError::new(ErrorKind::Invalid, "InsecureEndpoint", format!("{msg} (from {origin})")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_over_tls_or_to_loopback_pass() {
        for ok in [
            "https://ec2.us-east-1.amazonaws.com",
            "https://example.com:8443/path",
            "HTTPS://EXAMPLE.COM",
            "http://127.0.0.1:5000",
            "http://127.8.9.10",
            "http://localhost:4566/",
            "http://LOCALHOST",
            "http://[::1]:5000",
            "http://user@127.0.0.1:80",
        ] {
            assert_eq!(check_endpoint(ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn clear_text_to_other_hosts_is_refused() {
        for bad in [
            "http://10.0.0.5:4566",
            "http://example.com",
            "http://localhost.example.com",
            "http://127.0.0.1.nip.io",
            "http://[::2]:80",
            "http://127.0.0.1@evil.example",
            "ftp://127.0.0.1",
            "127.0.0.1:5000",
            "http://",
        ] {
            assert!(check_endpoint(bad).is_err(), "{bad}");
        }
        let msg = check_endpoint("http://10.0.0.5").unwrap_err();
        assert!(msg.contains("TLS"), "{msg}");
    }

    #[test]
    fn session_names_follow_sts_rules() {
        assert!(check_session_name("snapferry-prod-db-dr-20260101T000000Z-ab12").is_ok());
        assert!(check_session_name("a").is_err());
        assert!(check_session_name(&"a".repeat(65)).is_err());
        assert!(check_session_name("has space").is_err());
        assert_eq!(check_session_name("x/y").unwrap_err().kind, ErrorKind::Invalid);
    }
}
