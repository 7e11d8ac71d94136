//! Key policies and IAM documents as values: add or remove the statement that lets the
//! target account use the source key, decide whether a policy already grants it,
//! evaluate a key policy for one account and action, diff two policies for the dry-run,
//! and write the IAM policies a run needs.
//!
//! Pure: no I/O, no clock, no AWS types. Policies travel as JSON text in and out and are
//! held as `serde_json::Value` in between, so statements and fields this module does not
//! understand survive an edit untouched and in order.
//!
//! Layout:
//! - `key_policy`: the share statement, `ensure_grant`, `revoke_grant`, the size quota
//! - `eval`: wildcard action matching, principal and condition checks, `allows`
//! - `diff`: a line diff of two pretty-printed documents
//! - `iam`: the caller policy, the target role policy and its trust policy
//! - `lock`: the key statement and SCP that keep a locked copy's key, and the check

mod diff;
mod eval;
mod iam;
mod key_policy;
mod lock;

pub use diff::diff;
pub use eval::{IamRequest, action_matches, allows, identity_allows};
pub use iam::{
    IamContext, IamDocuments, documents, merge_documents, source_caller_policy, target_role_policy, target_role_trust,
    trust_principal, with_state_bucket,
};
pub use key_policy::{
    GRANT_ACTIONS, Grant, GrantChange, MAX_KEY_POLICY_BYTES, ensure_grant, grant_statement, revoke_grant,
};
pub use lock::{KEY_REMOVAL_ACTIONS, break_glass_placeholder, denies_key_removal, dr_account_scp, key_deny_statement};

/// Why a key policy could not be read or edited.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("key policy is not valid JSON: {0}")]
    InvalidJson(#[source] serde_json::Error),

    #[error("key policy is not a JSON object")]
    NotAnObject,

    #[error("key policy has no Statement; read it with `aws kms get-key-policy` and check it")]
    NoStatement,

    #[error("key policy Statement must be an object or a list of objects")]
    BadStatement,

    #[error(
        "key policy would be {bytes} bytes with the statement {sid}, over the KMS limit of {limit} bytes; \
         remove unused statements from the key policy or grant the target account by hand"
    )]
    TooLarge { sid: String, bytes: usize, limit: usize },

    #[error(
        "removing the statement {sid} would leave the key policy with no statement, which KMS refuses; \
         edit the key policy by hand"
    )]
    WouldBeEmpty { sid: String },
}
