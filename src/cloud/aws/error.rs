//! Turns SDK errors into [`CloudError`]s: an [`ErrorKind`] the runner decides on, the
//! AWS error code, a message naming the IAM action that was called, and the request id
//! AWS support asks for.
//!
//! Messages are built from what AWS answered and from error descriptions of the SDK;
//! neither carries credentials, and none are added here.

use std::error::Error as StdError;

use aws_credential_types::provider::error::CredentialsError;
use aws_sdk_ec2::operation::RequestId;
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_runtime_api::client::result::SdkError;
use aws_smithy_types::error::display::DisplayErrorContext;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;

use crate::cloud::{CloudError, ErrorKind};

/// The kind of failure an AWS error code stands for. `message` is consulted only for
/// the authorization wording services use under other codes.
pub(crate) fn kind_for_code(code: &str, message: &str) -> ErrorKind {
    // KMS and STS say "... is not authorized to perform: kms:Decrypt ..." and some
    // services do so under codes that do not say AccessDenied.
    if message.contains("is not authorized to perform") {
        return ErrorKind::AccessDenied;
    }
    match code {
        "RequestLimitExceeded"
        | "TooManyRequestsException"
        | "EC2ThrottledException"
        | "PriorRequestNotComplete"
        | "SlowDown" => ErrorKind::Throttled,
        c if c.starts_with("Throttling") || c.starts_with("RequestThrottled") => ErrorKind::Throttled,

        "NotFoundException" | "NoSuchEntity" | "ResourceNotFoundException" => ErrorKind::NotFound,
        c if c.ends_with(".NotFound") => ErrorKind::NotFound,

        // The credentials themselves were refused: expired (a session that outlived its
        // hour), revoked or wrong. Nothing about the resource.
        "AuthFailure"
        | "InvalidClientTokenId"
        | "UnrecognizedClientException"
        | "SignatureDoesNotMatch"
        | "ExpiredToken"
        | "ExpiredTokenException"
        | "RequestExpired"
        | "InvalidToken" => ErrorKind::Credentials,

        "UnauthorizedOperation" | "OptInRequired" | "Blocked" | "RegionDisabledException" => ErrorKind::AccessDenied,
        c if c.starts_with("AccessDenied") => ErrorKind::AccessDenied,

        "ResourceLimitExceeded"
        | "SnapshotCreationPerVolumeRateExceeded"
        | "LimitExceededException"
        | "InsufficientVolumeCapacity" => ErrorKind::LimitExceeded,
        // VolumeLimitExceeded, SnapshotLimitExceeded, MaxIOPSLimitExceeded, ...
        c if c.ends_with("LimitExceeded") => ErrorKind::LimitExceeded,

        "DisabledException"
        | "KMSInvalidStateException"
        | "InvalidStateException"
        | "IncorrectState"
        | "IncorrectInstanceState"
        | "VolumeInUse"
        | "PendingVerification"
        | "SnapshotLocked" => ErrorKind::InvalidState,
        c if c.ends_with(".InUse") || c.ends_with(".InvalidState") => ErrorKind::InvalidState,

        // The server failed or timed out on its side: whether the call took effect is
        // as unknown as after a dropped connection.
        "InternalError"
        | "InternalFailure"
        | "InternalFailureException"
        | "KMSInternalException"
        | "DependencyTimeoutException"
        | "ServiceUnavailable"
        | "ServiceUnavailableException"
        | "Unavailable"
        | "RequestTimeout"
        | "RequestTimeoutException" => ErrorKind::Transport,

        "ValidationException"
        | "ValidationError"
        | "MalformedPolicyDocumentException"
        | "MissingParameter"
        | "UnknownParameter"
        | "UnsupportedOperation"
        | "IncorrectKeyException"
        | "DryRunOperation" => ErrorKind::Invalid,
        // InvalidParameterValue, InvalidParameterCombination, InvalidSnapshotID.Malformed,
        // InvalidCiphertextException, InvalidKeyUsageException, ...
        c if c.starts_with("Invalid") || c.ends_with(".Malformed") => ErrorKind::Invalid,

        _ => ErrorKind::Other,
    }
}

/// A [`CloudError`] for an error AWS answered with `code`, from the call `action`
/// (its IAM action name, such as `ec2:CreateSnapshot`).
pub(crate) fn service_error(action: &str, code: &str, message: &str, request_id: Option<&str>) -> CloudError {
    let kind = kind_for_code(code, message);
    let message = if message.is_empty() { code } else { message };
    let message = if kind == ErrorKind::AccessDenied {
        // Names the action, so the user knows which permission to grant.
        format!("access denied to {action}: {message}")
    } else {
        format!("{action}: {message}")
    };
    CloudError { kind, code: Some(code.to_owned()), message, request_id: request_id.map(str::to_owned) }
}

/// Maps any SDK error of the call `action` (`ec2:DescribeSnapshots`, ...).
pub(crate) fn from_sdk<E>(action: &str, err: SdkError<E, HttpResponse>) -> CloudError
where
    E: ProvideErrorMetadata + RequestId + StdError + Send + Sync + 'static,
{
    match &err {
        SdkError::ServiceError(ctx) => {
            let e = ctx.err();
            let code = e.code().unwrap_or("Unknown");
            let request_id = e.request_id().or_else(|| err.request_id());
            service_error(action, code, e.message().unwrap_or_default(), request_id)
        }
        SdkError::TimeoutError(_) => CloudError {
            kind: ErrorKind::Transport,
            code: None,
            message: format!("{action}: no answer from AWS in time; the call may or may not have taken effect"),
            request_id: None,
        },
        SdkError::DispatchFailure(d) => {
            // Credentials are resolved just before sending, and their failure arrives
            // here too: it is not a network problem and must not be retried as one.
            if let Some(cred) = find_in_chain::<CredentialsError>(&err) {
                return credentials_error(action, cred);
            }
            let kind = if d.is_user() { ErrorKind::Invalid } else { ErrorKind::Transport };
            CloudError {
                kind,
                code: None,
                message: format!("{action}: could not reach AWS: {}", DisplayErrorContext(&err)),
                request_id: None,
            }
        }
        // An answer that could not be read: the request may have been carried out.
        SdkError::ResponseError(_) => CloudError {
            kind: ErrorKind::Transport,
            code: None,
            message: format!("{action}: unreadable answer from AWS: {}", DisplayErrorContext(&err)),
            request_id: err.request_id().map(str::to_owned),
        },
        SdkError::ConstructionFailure(_) => CloudError {
            kind: ErrorKind::Invalid,
            code: None,
            message: format!("{action}: the request could not be built: {}", DisplayErrorContext(&err)),
            request_id: None,
        },
        _ => CloudError {
            kind: ErrorKind::Other,
            code: None,
            message: format!("{action}: {}", DisplayErrorContext(&err)),
            request_id: None,
        },
    }
}

/// Credentials could not be had: for the target side this is usually AssumeRole
/// being refused, which is reported as that action's own error.
fn credentials_error(action: &str, err: &CredentialsError) -> CloudError {
    type AssumeRoleSdkError = SdkError<aws_sdk_sts::operation::assume_role::AssumeRoleError, HttpResponse>;
    if let Some(sts) = find_in_chain::<AssumeRoleSdkError>(err) {
        let mut e = match sts {
            SdkError::ServiceError(ctx) => {
                let e = ctx.err();
                service_error(
                    "sts:AssumeRole",
                    e.code().unwrap_or("Unknown"),
                    e.message().unwrap_or_default(),
                    e.request_id().or_else(|| sts.request_id()),
                )
            }
            SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => CloudError {
                kind: ErrorKind::Transport,
                code: None,
                message: format!("sts:AssumeRole: could not reach AWS: {}", DisplayErrorContext(sts)),
                request_id: None,
            },
            _ => CloudError {
                kind: ErrorKind::Other,
                code: None,
                message: format!("sts:AssumeRole: {}", DisplayErrorContext(sts)),
                request_id: None,
            },
        };
        e.message = format!("{} (needed for {action})", e.message);
        return e;
    }
    // The chain's own words (each provider's answer, HTTP responses included) are for
    // `-v`; the message says in one sentence what was tried and what to set.
    tracing::debug!(action, chain = %DisplayErrorContext(err), "credential chain failed");
    let (kind, why) = match err {
        CredentialsError::ProviderTimedOut(_) => {
            (ErrorKind::Transport, "the credential provider did not answer in time".to_owned())
        }
        CredentialsError::CredentialsNotLoaded(_) => (ErrorKind::Credentials, NO_CREDENTIALS.to_owned()),
        _ => {
            let text = DisplayErrorContext(err).to_string();
            let kind = if text.contains("AccessDenied") || text.contains("is not authorized to perform") {
                ErrorKind::AccessDenied
            } else {
                ErrorKind::Other
            };
            (kind, readable_cause(err).unwrap_or_else(|| NO_CREDENTIALS.to_owned()))
        }
    };
    CloudError {
        kind,
        code: None,
        message: format!("no usable AWS credentials for {action}: {why}; {CREDENTIALS_HINT}"),
        request_id: None,
    }
}

/// What the standard chain tries, for a failure that names no single source.
const NO_CREDENTIALS: &str = "none of the standard sources had any (environment variables, the shared config \
     and credentials files, SSO, web identity, container and instance metadata)";

/// What to set, for every credentials failure.
const CREDENTIALS_HINT: &str = "set AWS_PROFILE (or `profile:` in the plan) to a configured profile, \
     run `aws sso login` for an SSO profile, or in CI set AWS_ROLE_ARN and AWS_WEB_IDENTITY_TOKEN_FILE (OIDC); \
     `-v` shows what each source answered";

/// The deepest cause in the chain that reads as a sentence: not a Debug dump of a
/// provider error or an HTTP response.
fn readable_cause(err: &(dyn StdError + 'static)) -> Option<String> {
    let mut best = None;
    let mut cur = Some(err);
    while let Some(e) = cur {
        let text = e.to_string();
        if !text.is_empty() && !text.contains('{') && text.len() <= 300 {
            best = Some(text);
        }
        cur = e.source();
    }
    best
}

/// The first error of type `T` in `err` or its chain of sources.
fn find_in_chain<'a, T: StdError + 'static>(err: &'a (dyn StdError + 'static)) -> Option<&'a T> {
    let mut cur = Some(err);
    while let Some(e) = cur {
        if let Some(t) = e.downcast_ref::<T>() {
            return Some(t);
        }
        cur = e.source();
    }
    None
}

/// An answer from AWS that lacks a field snapferry relies on, or holds a malformed
/// one: reported rather than guessed around.
pub(crate) fn bad_answer(action: &str, what: &str) -> CloudError {
    CloudError {
        kind: ErrorKind::Other,
        code: None,
        message: format!("{action}: unexpected answer from AWS: {what}"),
        request_id: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_map_to_kinds() {
        let table = [
            ("RequestLimitExceeded", ErrorKind::Throttled),
            ("Throttling", ErrorKind::Throttled),
            ("ThrottlingException", ErrorKind::Throttled),
            ("InvalidSnapshot.NotFound", ErrorKind::NotFound),
            ("InvalidVolume.NotFound", ErrorKind::NotFound),
            ("NotFoundException", ErrorKind::NotFound),
            ("UnauthorizedOperation", ErrorKind::AccessDenied),
            ("AccessDenied", ErrorKind::AccessDenied),
            ("AccessDeniedException", ErrorKind::AccessDenied),
            ("ExpiredToken", ErrorKind::Credentials),
            ("ExpiredTokenException", ErrorKind::Credentials),
            ("RequestExpired", ErrorKind::Credentials),
            ("AuthFailure", ErrorKind::Credentials),
            ("InvalidClientTokenId", ErrorKind::Credentials),
            ("ResourceLimitExceeded", ErrorKind::LimitExceeded),
            ("SnapshotCreationPerVolumeRateExceeded", ErrorKind::LimitExceeded),
            ("LimitExceededException", ErrorKind::LimitExceeded),
            ("VolumeLimitExceeded", ErrorKind::LimitExceeded),
            ("DisabledException", ErrorKind::InvalidState),
            ("KMSInvalidStateException", ErrorKind::InvalidState),
            ("IncorrectState", ErrorKind::InvalidState),
            ("InvalidSnapshot.InUse", ErrorKind::InvalidState),
            ("InvalidParameterValue", ErrorKind::Invalid),
            ("InvalidParameterCombination", ErrorKind::Invalid),
            ("InvalidSnapshotID.Malformed", ErrorKind::Invalid),
            ("ValidationException", ErrorKind::Invalid),
            ("MalformedPolicyDocumentException", ErrorKind::Invalid),
            ("InternalError", ErrorKind::Transport),
            ("KMSInternalException", ErrorKind::Transport),
            ("SomethingNew", ErrorKind::Other),
        ];
        for (code, kind) in table {
            assert_eq!(kind_for_code(code, "boom"), kind, "{code}");
        }
    }

    #[test]
    fn throttling_is_not_mistaken_for_a_quota() {
        // RequestLimitExceeded ends in LimitExceeded but is a rate, not a quota.
        assert_eq!(kind_for_code("RequestLimitExceeded", ""), ErrorKind::Throttled);
    }

    #[test]
    fn kms_not_authorized_wording_is_access_denied() {
        let msg = "User: arn:aws:sts::222222222222:assumed-role/dr/x is not authorized to perform: \
                   kms:CreateGrant on resource: arn:aws:kms:us-east-1:111111111111:key/k";
        assert_eq!(kind_for_code("KMSSomething", msg), ErrorKind::AccessDenied);
    }

    #[test]
    fn access_denied_names_the_action() {
        let e = service_error("kms:PutKeyPolicy", "AccessDeniedException", "no", Some("req-1"));
        assert_eq!(e.kind, ErrorKind::AccessDenied);
        assert_eq!(e.code.as_deref(), Some("AccessDeniedException"));
        assert_eq!(e.request_id.as_deref(), Some("req-1"));
        assert!(e.message.contains("kms:PutKeyPolicy"), "{}", e.message);
        let shown = e.to_string();
        assert!(shown.contains("req-1") && shown.contains("AccessDeniedException"), "{shown}");
    }

    #[test]
    fn other_errors_keep_the_aws_message() {
        let e = service_error(
            "ec2:DescribeSnapshots",
            "InvalidSnapshot.NotFound",
            "The snapshot 'snap-1' does not exist.",
            None,
        );
        assert_eq!(e.kind, ErrorKind::NotFound);
        assert!(e.message.ends_with("The snapshot 'snap-1' does not exist."), "{}", e.message);
        assert!(!e.is_retryable());
        let t = service_error("ec2:CreateSnapshot", "RequestLimitExceeded", "", None);
        assert!(t.is_retryable() && t.outcome_known());
        assert!(t.message.contains("RequestLimitExceeded"));
    }
}
