//! The KMS side of envelope files, as the AWS Encryption SDKs' AWS KMS keyring does it:
//! GenerateDataKey (or GenerateDataKeyWithoutPlaintext) bound to the encryption
//! context to encrypt, and to decrypt one Decrypt per data key under an allowed key,
//! naming that key as KeyId, with the message's context, kept only if KMS answered for
//! that same key with a 32-byte key.
//!
//! [`Allowed`] is the user's rule (strict: the keys given; discovery: any key, or only
//! those of some accounts), checked against the key a file names before KMS is asked.
//! The plaintext data key lives in one wiped place ([`DataKey`]).

use std::path::Path;

use zeroize::Zeroizing;

use crate::cloud::{Cloud, DecryptReq, Loc, Side};
use crate::ids::{AccountId, KeyArn, KeyRef, Region};

use super::format::KEY_LEN;
use super::message::{EncryptionContext, MessageHeader};

/// Why the keyring gave no data key.
#[derive(Debug, thiserror::Error)]
pub enum KeyringError {
    /// A key named by the user that is no KMS key reference.
    #[error("{0}")]
    BadKey(String),
    /// KMS refused or failed, or answered with what cannot be a data key.
    #[error("{0}")]
    Kms(String),
    /// No data key is under an allowed KMS key, or KMS answered for another key.
    #[error("{0}")]
    NotAllowed(String),
    /// The file names its KMS key as no key is named: it is damaged.
    #[error("{0}")]
    Damaged(String),
}

/// The plaintext data key: on the heap in one place, wiped when dropped, and only
/// borrowed from there. Moving it (into a blocking task) moves the pointer, so no
/// unwiped copy of the bytes is left behind.
pub struct DataKey(Box<Zeroizing<[u8; KEY_LEN]>>);

impl DataKey {
    /// The key KMS returned, refused unless it is an AES-256 key.
    pub fn from_kms(plain: &[u8]) -> Result<Self, KeyringError> {
        if plain.len() != KEY_LEN {
            return Err(KeyringError::Kms(format!(
                "KMS returned a {}-byte data key; AES-256 needs {KEY_LEN}",
                plain.len()
            )));
        }
        let mut key = DataKey(Box::new(Zeroizing::new([0u8; KEY_LEN])));
        key.0.copy_from_slice(plain);
        Ok(key)
    }

    pub fn bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }
}

/// A new data key: its plaintext, the same key encrypted under the KMS key, and that
/// key's ARN.
pub struct Generated {
    pub key: DataKey,
    pub wrapped: Vec<u8>,
    pub key_arn: String,
}

/// GenerateDataKey with `key`, bound to `context`.
pub async fn generate(
    cloud: &dyn Cloud,
    region: &Region,
    key: &KeyRef,
    context: &EncryptionContext,
) -> Result<Generated, KeyringError> {
    let dk = cloud
        .generate_data_key(&Loc::new(Side::Source, region), key, context)
        .await
        .map_err(|e| KeyringError::Kms(format!("GenerateDataKey with {key} in {region}: {e}")))?;
    Ok(Generated { key: DataKey::from_kms(&dk.plaintext)?, wrapped: dk.ciphertext, key_arn: dk.key_arn.to_string() })
}

/// GenerateDataKeyWithoutPlaintext with `key`, bound to `context`: the encrypted key
/// and the ARN of the key it is under.
pub async fn prepare(
    cloud: &dyn Cloud,
    region: &Region,
    key: &KeyRef,
    context: &EncryptionContext,
) -> Result<(KeyArn, Vec<u8>), KeyringError> {
    let w = cloud
        .generate_data_key_without_plaintext(&Loc::new(Side::Source, region), key, context)
        .await
        .map_err(|e| KeyringError::Kms(format!("GenerateDataKeyWithoutPlaintext with {key} in {region}: {e}")))?;
    Ok((w.key_arn, w.ciphertext))
}

/// One Decrypt of a data key in `region`: the plaintext and the key KMS answered for.
pub async fn decrypt_key(
    cloud: &dyn Cloud,
    region: &Region,
    req: &DecryptReq<'_>,
) -> Result<(Zeroizing<Vec<u8>>, String), KeyringError> {
    let (plain, arn) = cloud.decrypt(&Loc::new(Side::Source, region), req).await.map_err(|e| {
        KeyringError::Kms(format!(
            "KMS Decrypt of the data key in {region}: {e}; the caller needs kms:Decrypt on the key that wrapped it"
        ))
    })?;
    Ok((plain, arn.to_string()))
}

/// Which KMS keys may unwrap a message's data key, as the SDKs' KMS keyrings put it.
pub enum Allowed {
    /// `--key`, as given.
    Keys(Vec<String>),
    /// `--discovery`: any key ARN, or only those of the accounts given.
    Discovery { partition: String, accounts: Vec<AccountId> },
}

/// [`Allowed`] with every key resolved to its ARN.
pub enum AllowedArns {
    Keys(Vec<KeyArn>),
    Discovery { partition: String, accounts: Vec<AccountId> },
}

impl Allowed {
    /// Resolves `--key` values that are not key ARNs (aliases, key ids) with DescribeKey,
    /// since an encrypted data key names its KMS key by ARN.
    pub async fn resolve(self, cloud: &dyn Cloud, region: &Region) -> Result<AllowedArns, KeyringError> {
        match self {
            Allowed::Discovery { partition, accounts } => Ok(AllowedArns::Discovery { partition, accounts }),
            Allowed::Keys(keys) => {
                let mut arns = Vec::new();
                for key in keys {
                    if let Ok(arn) = KeyArn::parse(&key) {
                        arns.push(arn);
                        continue;
                    }
                    let key_ref = KeyRef::parse(&key).map_err(|e| KeyringError::BadKey(format!("--key {key}: {e}")))?;
                    let at = key_ref.arn_region().unwrap_or_else(|| region.clone());
                    let info = cloud
                        .describe_key(&Loc::new(Side::Source, &at), &key_ref)
                        .await
                        .map_err(|e| KeyringError::Kms(format!("--key {key}: DescribeKey in {at}: {e}")))?;
                    arns.push(info.arn);
                }
                Ok(AllowedArns::Keys(arns))
            }
        }
    }
}

impl AllowedArns {
    pub fn allows(&self, arn: &KeyArn) -> bool {
        match self {
            AllowedArns::Keys(keys) => keys.contains(arn),
            AllowedArns::Discovery { partition, accounts } => {
                accounts.is_empty()
                    || (arn.as_str().split(':').nth(1) == Some(partition.as_str())
                        && arn.account().is_some_and(|a| accounts.contains(&a)))
            }
        }
    }
}

/// The KMS keyring's OnDecrypt: the message's data keys from KMS whose key is allowed,
/// tried in order, each with one Decrypt naming that key and the message's context,
/// until one answers with a 32-byte key from that same key.
pub async fn unwrap_data_key(
    cloud: &dyn Cloud,
    header: &MessageHeader,
    allowed: &AllowedArns,
) -> Result<(Zeroizing<Vec<u8>>, String), KeyringError> {
    let mut named = Vec::new();
    let mut errors = Vec::new();
    for edk in header.data_keys() {
        let Some(info) = edk.kms_key_arn() else { continue };
        let arn = KeyArn::parse(info).map_err(|_| {
            KeyringError::Damaged(format!("the message names {info:?} as its KMS key, which is not a key ARN"))
        })?;
        named.push(arn.to_string());
        if !allowed.allows(&arn) {
            continue;
        }
        // The key's own region, as the SDKs' keyrings call KMS.
        let region = arn.region().ok_or_else(|| KeyringError::Damaged(format!("key arn {arn} names no region")))?;
        let req = DecryptReq { ciphertext: &edk.ciphertext, key: Some(&arn), context: header.context() };
        match cloud.decrypt(&Loc::new(Side::Source, &region), &req).await {
            Ok((plain, by)) if by == arn && plain.len() == KEY_LEN => return Ok((plain, arn.to_string())),
            Ok((_, by)) => errors.push(format!("{arn}: KMS answered for {by} or with a key of the wrong size")),
            Err(e) => errors.push(format!("{arn}: {e}")),
        }
    }
    if errors.is_empty() {
        Err(KeyringError::NotAllowed(format!(
            "no data key of the message is under an allowed KMS key (it names {}); pass one of them with --key, \
             or --discovery",
            if named.is_empty() { "no KMS key".to_owned() } else { named.join(", ") }
        )))
    } else {
        Err(KeyringError::Kms(format!(
            "KMS Decrypt of the data key failed: {}; the caller needs kms:Decrypt on the key, and the message \
             must be unaltered",
            errors.join("; ")
        )))
    }
}

/// The data key of a file in snapferry's older format, whose header names its key
/// (`arn`, in `key_region`) and holds one data key with no context: that key must be
/// allowed, is the KeyId of the one Decrypt, and must be the key KMS answers for.
/// `file` names the file in the errors.
pub async fn unwrap_named(
    cloud: &dyn Cloud,
    file: &Path,
    arn: &KeyArn,
    key_region: &Region,
    encrypted_key: &[u8],
    allowed: &AllowedArns,
) -> Result<DataKey, KeyringError> {
    if !allowed.allows(arn) {
        return Err(KeyringError::NotAllowed(format!(
            "{}: its data key is under {arn}, which is not an allowed KMS key; pass that key with --key, or \
             --discovery (with --discovery-account for its account); nothing was written",
            file.display()
        )));
    }
    let empty = EncryptionContext::new();
    let req = DecryptReq { ciphertext: encrypted_key, key: Some(arn), context: &empty };
    let (plain, by) = decrypt_key(cloud, key_region, &req).await?;
    if by != arn.as_str() {
        return Err(KeyringError::NotAllowed(format!(
            "{}: KMS decrypted its data key with {by}, not {arn}, the key the file names; nothing was written",
            file.display()
        )));
    }
    DataKey::from_kms(&plain)
}
