//! The KMS calls: key lookup and key policies for sharing, and the data-key calls of
//! envelope encryption.
//!
//! Plaintext key material arrives in the SDK's `Blob`, a `Vec<u8>` it decoded from the
//! response; that vector is moved, not copied, into [`Zeroizing`] so it is wiped when
//! dropped. The response body the SDK decoded it from is the SDK's and is freed, not
//! wiped; nothing here keeps or logs it.

use aws_sdk_kms::Client;
use aws_sdk_kms::types::{DataKeySpec, KeyManagerType};
use aws_smithy_types::Blob;
use zeroize::Zeroizing;

use super::error::{bad_answer, from_sdk};
use crate::cloud::{
    CloudError, CloudResult, DataKey, DecryptReq, EncryptionContext, ErrorKind, KeyInfo, KeyManager, WrappedKey,
};
use crate::ids::{AccountId, KeyArn, KeyRef};

/// The only key policy name KMS supports.
const POLICY_NAME: &str = "default";

/// GenerateRandom returns 1 to 1,024 bytes (KMS API reference, NumberOfBytes).
const MAX_RANDOM_BYTES: u32 = 1024;

pub(crate) async fn describe_key(client: &Client, key: &KeyRef) -> CloudResult<KeyInfo> {
    const ACTION: &str = "kms:DescribeKey";
    let out = client.describe_key().key_id(key.as_str()).send().await.map_err(|e| from_sdk(ACTION, e))?;
    let meta = out.key_metadata.ok_or_else(|| bad_answer(ACTION, "no key metadata"))?;
    let arn = meta.arn.unwrap_or_default();
    let arn = KeyArn::parse(&arn).map_err(|_| bad_answer(ACTION, &format!("key arn {arn:?}")))?;
    let account = meta.aws_account_id.unwrap_or_default();
    let account = AccountId::parse(&account).map_err(|_| bad_answer(ACTION, &format!("account id {account:?}")))?;
    // EBS needs SYMMETRIC_DEFAULT; an answer without a spec is not taken for one.
    let spec = meta.key_spec.map(|s| s.as_str().to_owned()).unwrap_or_default();
    let manager = match meta.key_manager {
        Some(KeyManagerType::Customer) => KeyManager::Customer,
        // An unknown manager is treated as AWS managed: the preflight then refuses
        // to share the key rather than editing a policy it may not own.
        _ => KeyManager::Aws,
    };
    Ok(KeyInfo { arn, account, enabled: meta.enabled, spec, manager })
}

pub(crate) async fn get_key_policy(client: &Client, key: &KeyArn) -> CloudResult<String> {
    const ACTION: &str = "kms:GetKeyPolicy";
    let out = client
        .get_key_policy()
        .key_id(key.as_str())
        .policy_name(POLICY_NAME)
        .send()
        .await
        .map_err(|e| from_sdk(ACTION, e))?;
    out.policy.ok_or_else(|| bad_answer(ACTION, "no policy"))
}

pub(crate) async fn put_key_policy(client: &Client, key: &KeyArn, policy: &str) -> CloudResult<()> {
    client
        .put_key_policy()
        .key_id(key.as_str())
        .policy_name(POLICY_NAME)
        .policy(policy)
        // Never bypass: the check stops a policy that would lock the caller out of
        // its own key.
        .bypass_policy_lockout_safety_check(false)
        .send()
        .await
        .map_err(|e| from_sdk("kms:PutKeyPolicy", e))?;
    Ok(())
}

fn key_arn(action: &str, key_id: Option<String>) -> CloudResult<KeyArn> {
    let id = key_id.unwrap_or_default();
    KeyArn::parse(&id).map_err(|_| bad_answer(action, &format!("key arn {id:?}")))
}

/// The context as the SDK takes it: none at all when empty, as KMS treats both alike.
fn sdk_context(context: &EncryptionContext) -> Option<std::collections::HashMap<String, String>> {
    (!context.is_empty()).then(|| context.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
}

pub(crate) async fn generate_data_key(
    client: &Client,
    key: &KeyRef,
    context: &EncryptionContext,
) -> CloudResult<DataKey> {
    const ACTION: &str = "kms:GenerateDataKey";
    let mut out = client
        .generate_data_key()
        .key_id(key.as_str())
        .key_spec(DataKeySpec::Aes256)
        .set_encryption_context(sdk_context(context))
        .send()
        .await
        .map_err(|e| from_sdk(ACTION, e))?;
    let plaintext =
        Zeroizing::new(out.plaintext.take().map(Blob::into_inner).ok_or_else(|| bad_answer(ACTION, "no plaintext"))?);
    let ciphertext =
        out.ciphertext_blob.take().map(Blob::into_inner).ok_or_else(|| bad_answer(ACTION, "no ciphertext"))?;
    let key_arn = key_arn(ACTION, out.key_id.take())?;
    Ok(DataKey { plaintext, ciphertext, key_arn })
}

pub(crate) async fn generate_data_key_without_plaintext(
    client: &Client,
    key: &KeyRef,
    context: &EncryptionContext,
) -> CloudResult<WrappedKey> {
    const ACTION: &str = "kms:GenerateDataKeyWithoutPlaintext";
    let out = client
        .generate_data_key_without_plaintext()
        .key_id(key.as_str())
        .key_spec(DataKeySpec::Aes256)
        .set_encryption_context(sdk_context(context))
        .send()
        .await
        .map_err(|e| from_sdk(ACTION, e))?;
    let ciphertext = out.ciphertext_blob.map(Blob::into_inner).ok_or_else(|| bad_answer(ACTION, "no ciphertext"))?;
    Ok(WrappedKey { ciphertext, key_arn: key_arn(ACTION, out.key_id)? })
}

pub(crate) async fn decrypt(client: &Client, req: &DecryptReq<'_>) -> CloudResult<(Zeroizing<Vec<u8>>, KeyArn)> {
    const ACTION: &str = "kms:Decrypt";
    let mut out = client
        .decrypt()
        .ciphertext_blob(Blob::new(req.ciphertext.to_vec()))
        .set_key_id(req.key.map(|k| k.as_str().to_owned()))
        .set_encryption_context(sdk_context(req.context))
        .send()
        .await
        .map_err(|e| from_sdk(ACTION, e))?;
    let plaintext =
        Zeroizing::new(out.plaintext.take().map(Blob::into_inner).ok_or_else(|| bad_answer(ACTION, "no plaintext"))?);
    Ok((plaintext, key_arn(ACTION, out.key_id.take())?))
}

pub(crate) async fn generate_random(client: &Client, bytes: u32) -> CloudResult<Vec<u8>> {
    const ACTION: &str = "kms:GenerateRandom";
    if !(1..=MAX_RANDOM_BYTES).contains(&bytes) {
        return Err(CloudError::new(
            ErrorKind::Invalid,
            "ValidationException",
            format!("{ACTION}: {bytes} bytes asked, KMS returns 1 to {MAX_RANDOM_BYTES}"),
        ));
    }
    let out = client.generate_random().number_of_bytes(bytes as i32).send().await.map_err(|e| from_sdk(ACTION, e))?;
    out.plaintext.map(Blob::into_inner).ok_or_else(|| bad_answer(ACTION, "no random bytes"))
}
