//! `snapferry envelope`: envelope encryption of files with KMS data keys, in the AWS
//! Encryption SDK message format, with KMS used as the SDKs' AWS KMS keyring uses it.
//! One KMS call to encrypt (GenerateDataKey with the encryption context, or Decrypt of
//! a key prepared with `datakey`) and one to decrypt (Decrypt with the message's context
//! and the key named in it, restricted to the keys the user allows); the bulk work is
//! local in `crate::envelope`, run on a blocking thread so the async runtime stays free.
//!
//! One rule decrypts every format: `--key` or `--discovery` says which KMS keys may
//! unwrap a data key, the key a file names is checked against it before KMS is asked,
//! and is the KeyId of the Decrypt call, and the key KMS answered for is checked again.
//! A signal (SIGINT, SIGTERM, SIGHUP) ends a command with exit 130 after removing the
//! output it had not finished; prepared keys and random bytes are written owner-only.

use std::path::Path;

use serde_json::json;
use zeroize::Zeroizing;

use crate::cloud::{Cloud, DecryptReq, KeyManager, Loc, Side};
use crate::envelope::{
    self, DEFAULT_FRAME_LENGTH, EncryptMaterials, EncryptedDataKey, EncryptionContext, EnvelopeFile, KEY_LEN,
    MAX_FRAME_LENGTH, MessageHeader, PUBLIC_KEY_CONTEXT_KEY, Signer, Suite,
};
use crate::ids::{AccountId, KeyArn, KeyRef, Region};

use super::args::{Common, EnvelopeAction, EnvelopeArgs, Format};
use super::cloud::{Connected, Reach, connect, session_name};
use super::{Failure, exit};
use crate::private_fs;

/// The file `envelope datakey` writes: a prepared data key, encrypted under a KMS key,
/// with the encryption context it is bound to. Version 1 files carry no context.
const DATAKEY_MAGIC: &[u8] = b"SNAPFDK2";
const DATAKEY_MAGIC_V1: &[u8] = b"SNAPFDK1";

fn usage(m: impl Into<String>) -> Failure {
    Failure::new(exit::USAGE, m)
}

fn failed(m: impl Into<String>) -> Failure {
    Failure::new(exit::FAILED, m)
}

/// The region: `--region`, else the key ARN's, else AWS_REGION / AWS_DEFAULT_REGION.
fn region(flag: Option<&str>, key: Option<&str>) -> Result<Region, Failure> {
    let from_key = key.and_then(|k| KeyRef::parse(k).ok()).and_then(|k| k.arn_region()).map(|r| r.to_string());
    let name = flag
        .map(str::to_owned)
        .or(from_key)
        .or_else(|| std::env::var("AWS_REGION").ok())
        .or_else(|| std::env::var("AWS_DEFAULT_REGION").ok())
        .ok_or_else(|| usage("no region: pass --region, use a key ARN, or set AWS_REGION"))?;
    Region::parse(&name).map_err(|e| usage(format!("region {name}: {e}")))
}

async fn reach(common: &Common, region: Region) -> Result<Connected, Failure> {
    connect(Reach {
        common,
        plan_name: "envelope",
        source_region: region,
        source_profile: None,
        targets: vec![],
        session_name: session_name("envelope"),
        seed: None,
    })
    .await
}

/// Under `--simulate`, a key named by alias is made to exist so a file can be
/// envelope-encrypted in a rehearsal.
fn ensure_sim_key(c: &Connected, region: &Region, key: &KeyRef) {
    if let Some((sim, _)) = &c.sim {
        let account = crate::ids::AccountId::parse(crate::cloud::sim::DEFAULT_SOURCE_ACCOUNT).expect("valid");
        sim.with_world(|w| {
            let exists = w.keys.iter().any(|k| {
                k.arn.as_str() == key.as_str()
                    || (&k.region == region
                        && key.as_str().strip_prefix("alias/").is_some_and(|a| k.aliases.iter().any(|x| x == a)))
            });
            if !exists && key.as_str().starts_with("alias/") {
                w.add_key(&account, region, Some(key.as_str()), KeyManager::Customer);
            }
        });
    }
}

/// The plaintext data key: on the heap in one place, wiped when dropped, and only
/// borrowed from there. Moving it (into a blocking task) moves the pointer, so no
/// unwiped copy of the bytes is left behind.
struct DataKey(Box<Zeroizing<[u8; KEY_LEN]>>);

impl DataKey {
    fn from_kms(plain: &[u8]) -> Result<Self, Failure> {
        if plain.len() != KEY_LEN {
            return Err(failed(format!("KMS returned a {}-byte data key; AES-256 needs {KEY_LEN}", plain.len())));
        }
        let mut key = DataKey(Box::new(Zeroizing::new([0u8; KEY_LEN])));
        key.0.copy_from_slice(plain);
        Ok(key)
    }

    fn bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }
}

fn print(format: Format, doc: serde_json::Value, text: String) {
    match format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default()),
        Format::Text => super::say(&text),
    }
}

/// Runs an envelope command; a SIGINT, SIGTERM or SIGHUP ends it with exit 130 after
/// removing the output it had not finished (a decrypted file whose message was not yet
/// verified, or a part of an encrypted one).
pub async fn envelope(args: EnvelopeArgs) -> Result<u8, Failure> {
    // Installed before any file is opened: from here a signal no longer ends the
    // process where it stands.
    let signal = interrupts()?;
    tokio::select! {
        result = action(args) => result,
        name = signal => {
            let removed = envelope::discard_unfinished_outputs();
            let what = if removed > 0 { "; the unfinished output was removed" } else { "" };
            Err(Failure::new(exit::INTERRUPTED, format!("interrupted by {name}{what}; run the command again")))
        }
    }
}

/// The first of SIGINT, SIGTERM and SIGHUP, handled from the moment this returns.
#[cfg(unix)]
fn interrupts() -> Result<impl std::future::Future<Output = &'static str>, Failure> {
    use tokio::signal::unix::{SignalKind, signal};
    let handle = |kind: SignalKind, name: &'static str| {
        signal(kind).map_err(|e| failed(format!("cannot handle {name}: {e}"))).map(|s| (s, name))
    };
    let (mut int, mut term, mut hup) = (
        handle(SignalKind::interrupt(), "SIGINT")?,
        handle(SignalKind::terminate(), "SIGTERM")?,
        handle(SignalKind::hangup(), "SIGHUP")?,
    );
    Ok(async move {
        tokio::select! {
            _ = int.0.recv() => int.1,
            _ = term.0.recv() => term.1,
            _ = hup.0.recv() => hup.1,
        }
    })
}

#[cfg(not(unix))]
fn interrupts() -> Result<impl std::future::Future<Output = &'static str>, Failure> {
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
        "Ctrl-C"
    })
}

async fn action(args: EnvelopeArgs) -> Result<u8, Failure> {
    match args.action {
        EnvelopeAction::Encrypt {
            key,
            region: r,
            context,
            algorithm,
            frame_length,
            data_key,
            input,
            output,
            common,
        } => {
            let common = common.common();
            let frame_length = frame_length.unwrap_or(DEFAULT_FRAME_LENGTH);
            if !(1..=MAX_FRAME_LENGTH).contains(&frame_length) {
                return Err(usage(format!("--frame-length {frame_length}: must be 1 to {MAX_FRAME_LENGTH}")));
            }
            let suite = match algorithm.as_deref() {
                None if data_key.is_some() => Suite::CommitKey,
                None => Suite::CommitKeyEcdsaP384,
                Some(name) => Suite::from_name(name).ok_or_else(|| {
                    usage(format!(
                        "--algorithm {name}: use {} or {}",
                        Suite::CommitKeyEcdsaP384.name(),
                        Suite::CommitKey.name()
                    ))
                })?,
            };
            let user_context = parse_pairs(&context)?;
            envelope::check_user_context(&user_context).map_err(|e| usage(format!("--context: {e}")))?;
            let (plain, wrapped, key_arn, full_context, signer, region_used, c) = match (&key, &data_key) {
                (Some(key), _) => {
                    let key = KeyRef::parse(key).map_err(|e| usage(format!("--key {key}: {e}")))?;
                    let region = region(r.as_deref(), Some(key.as_str()))?;
                    // The signing key is made first: its public key is part of the context
                    // KMS binds the data key to.
                    let signer = if suite.is_signed() {
                        Some(Signer::generate().map_err(|e| failed(e.to_string()))?)
                    } else {
                        None
                    };
                    let mut full = user_context.clone();
                    if let Some(s) = &signer {
                        full.insert(PUBLIC_KEY_CONTEXT_KEY.to_owned(), s.public_key_base64());
                    }
                    let c = reach(&common, region.clone()).await?;
                    ensure_sim_key(&c, &region, &key);
                    let dk = c
                        .cloud
                        .generate_data_key(&Loc::new(Side::Source, &region), &key, &full)
                        .await
                        .map_err(|e| failed(format!("GenerateDataKey with {key} in {region}: {e}")))?;
                    (DataKey::from_kms(&dk.plaintext)?, dk.ciphertext, dk.key_arn.to_string(), full, signer, region, c)
                }
                (None, Some(file)) => {
                    if suite.is_signed() {
                        return Err(usage(format!(
                            "--data-key works with --algorithm {} only: a signed message needs a signing key made \
                             with its data key",
                            Suite::CommitKey.name()
                        )));
                    }
                    let (arn, wrapped, context) = read_datakey(file)?;
                    let region = region(r.as_deref(), Some(arn.as_str()))?;
                    let c = reach(&common, region.clone()).await?;
                    let req = DecryptReq { ciphertext: &wrapped, key: Some(&arn), context: &context };
                    let (plain, arn) = decrypt_key(c.cloud.as_ref(), &region, &req).await?;
                    (DataKey::from_kms(&plain)?, wrapped, arn, context, None, region, c)
                }
                (None, None) => return Err(usage("pass --key KEY or --data-key FILE")),
            };
            let data_keys = vec![EncryptedDataKey::kms(&key_arn, wrapped)];
            let (inp, out) = (input.clone(), output.clone());
            let (header, stats) = tokio::task::spawn_blocking(move || {
                let materials = EncryptMaterials {
                    suite,
                    context: &full_context,
                    data_keys: &data_keys,
                    data_key: plain.bytes(),
                    signer: signer.as_ref(),
                    frame_length,
                };
                envelope::encrypt_message_file(&inp, &out, &materials)
            })
            .await
            .map_err(|e| failed(format!("encryption task: {e}")))?
            .map_err(|e| failed(e.to_string()))?;
            c.save()?;
            print(
                common.format,
                json!({"status": "encrypted", "input": input, "output": output, "key_arn": key_arn,
                       "region": region_used.as_str(), "algorithm": suite.name(), "frame_length": frame_length,
                       "context": user_pairs(header.context()), "bytes": stats.plaintext_bytes, "frames": stats.chunks}),
                format!(
                    "encrypted {} ({} bytes) to {} under {key_arn} ({})",
                    input.display(),
                    stats.plaintext_bytes,
                    output.display(),
                    suite.name()
                ),
            );
            Ok(exit::OK)
        }
        EnvelopeAction::Decrypt {
            keys,
            discovery,
            discovery_accounts,
            discovery_partition,
            context,
            max_encrypted_data_keys,
            region,
            input,
            output,
            common,
        } => {
            let required = parse_pairs(&context)?;
            // Which keys may unwrap the data key is said before the file is even read,
            // whatever its format.
            let allowed = if discovery {
                let accounts = discovery_accounts
                    .iter()
                    .map(|a| AccountId::parse(a).map_err(|e| usage(format!("--discovery-account {a}: {e}"))))
                    .collect::<Result<Vec<_>, _>>()?;
                Allowed::Discovery { partition: discovery_partition, accounts }
            } else if keys.is_empty() {
                return Err(usage(
                    "envelope decrypt needs --key KEY (the KMS keys allowed to decrypt the file) or --discovery",
                ));
            } else {
                Allowed::Keys(keys)
            };
            let file = envelope::read_envelope_file(&input, max_encrypted_data_keys)
                .map_err(|e| failed(format!("{}: {e}", input.display())))?;
            let job = DecryptJob { allowed, region, input, output, common: common.common() };
            match file {
                EnvelopeFile::Legacy(header) => {
                    if !required.is_empty() {
                        return Err(usage(format!(
                            "{}: a file in snapferry's older envelope format carries no encryption context, so \
                             --context cannot be checked; decrypt it without --context (its KMS key is still held \
                             to --key or --discovery)",
                            job.input.display()
                        )));
                    }
                    decrypt_legacy(header, job).await
                }
                EnvelopeFile::Message(header) => decrypt_esdk(header, &required, job).await,
            }
        }
        EnvelopeAction::Datakey { key, region: r, context, output, common } => {
            let common = common.common();
            let context = parse_pairs(&context)?;
            envelope::check_user_context(&context).map_err(|e| usage(format!("--context: {e}")))?;
            let key = KeyRef::parse(&key).map_err(|e| usage(format!("--key {key}: {e}")))?;
            let region = region(r.as_deref(), Some(key.as_str()))?;
            let c = reach(&common, region.clone()).await?;
            ensure_sim_key(&c, &region, &key);
            let w = c
                .cloud
                .generate_data_key_without_plaintext(&Loc::new(Side::Source, &region), &key, &context)
                .await
                .map_err(|e| failed(format!("GenerateDataKeyWithoutPlaintext with {key} in {region}: {e}")))?;
            write_datakey(&output, w.key_arn.as_str(), &w.ciphertext, &context)?;
            c.save()?;
            print(
                common.format,
                json!({"status": "prepared", "output": output, "key_arn": w.key_arn.as_str(), "context": context}),
                format!("wrote a data key encrypted under {} to {}", w.key_arn, output.display()),
            );
            Ok(exit::OK)
        }
        EnvelopeAction::Random { bytes, region: r, output, common } => {
            let common = common.common();
            if !(1..=1024).contains(&bytes) {
                return Err(usage("--bytes must be 1 to 1024 (the GenerateRandom limit)"));
            }
            let region = region(r.as_deref(), None)?;
            let c = reach(&common, region.clone()).await?;
            let random = c
                .cloud
                .generate_random(&Loc::new(Side::Source, &region), bytes)
                .await
                .map_err(|e| failed(format!("GenerateRandom in {region}: {e}")))?;
            // Random bytes from KMS are usually a secret: owner-only, like a key.
            let random = Zeroizing::new(random);
            private_fs::write_atomic(&output, &random)
                .map_err(|e| failed(format!("cannot write {}: {e}", output.display())))?;
            print(
                common.format,
                json!({"status": "written", "output": output, "bytes": random.len()}),
                format!("wrote {} random bytes from KMS to {}", random.len(), output.display()),
            );
            Ok(exit::OK)
        }
    }
}

/// What `envelope decrypt` was asked, once its options are checked.
struct DecryptJob {
    allowed: Allowed,
    /// `--region`.
    region: Option<String>,
    input: std::path::PathBuf,
    output: std::path::PathBuf,
    common: Common,
}

/// An AWS Encryption SDK message: the first of its data keys under an allowed key that
/// KMS decrypts, with the context required.
async fn decrypt_esdk(header: MessageHeader, required: &EncryptionContext, job: DecryptJob) -> Result<u8, Failure> {
    let DecryptJob { allowed, region: r, input, output, common } = job;
    for (k, v) in required {
        if header.context().get(k) != Some(v) {
            return Err(failed(format!(
                "{}: its encryption context has no {k}={v} (it has {}); check the file and the --context given",
                input.display(),
                pairs_text(&user_pairs(header.context()))
            )));
        }
    }
    let first_region = header
        .data_keys()
        .iter()
        .find_map(|k| k.kms_key_arn().and_then(|a| KeyArn::parse(a).ok()).and_then(|a| a.region()));
    let region = match first_region {
        Some(found) if r.is_none() => found,
        _ => region(r.as_deref(), None)?,
    };
    let c = reach(&common, region.clone()).await?;
    let allowed = allowed.resolve(c.cloud.as_ref(), &region).await?;
    let (plain, arn) = unwrap_data_key(c.cloud.as_ref(), &header, &allowed).await?;
    let key = DataKey::from_kms(&plain)?;
    drop(plain);
    let suite = header.suite();
    let pairs = user_pairs(header.context());
    let (inp, out) = (input.clone(), output.clone());
    let stats = tokio::task::spawn_blocking(move || envelope::decrypt_message_file(&inp, &out, &header, key.bytes()))
        .await
        .map_err(|e| failed(format!("decryption task: {e}")))?
        .map_err(|e| failed(format!("{}: {e}; nothing was written to {}", input.display(), output.display())))?;
    print(
        common.format,
        json!({"status": "decrypted", "input": input, "output": output, "key_arn": arn,
               "algorithm": suite.name(), "context": pairs,
               "bytes": stats.plaintext_bytes, "frames": stats.chunks}),
        format!("decrypted {} to {} ({} bytes)", input.display(), output.display(), stats.plaintext_bytes),
    );
    Ok(exit::OK)
}

/// A file in snapferry's own envelope format, from before it wrote AWS Encryption SDK
/// messages: its header names the key, and its data key has no encryption context. It
/// obeys the rule of messages: the key it names must be allowed, is the KeyId of the
/// one Decrypt (in the key's own region), and must be the key KMS answers for.
async fn decrypt_legacy(header: envelope::Header, job: DecryptJob) -> Result<u8, Failure> {
    let DecryptJob { allowed, region: r, input, output, common } = job;
    let arn = KeyArn::parse(header.key_arn()).map_err(|_| {
        failed(format!(
            "{}: its header names {:?} as its KMS key, which is not a key ARN; the file is damaged",
            input.display(),
            header.key_arn()
        ))
    })?;
    let key_region = arn
        .region()
        .ok_or_else(|| failed(format!("{}: key arn {arn} names no region; the file is damaged", input.display())))?;
    let region = match r.as_deref() {
        Some(_) => region(r.as_deref(), None)?,
        None => key_region.clone(),
    };
    let c = reach(&common, region.clone()).await?;
    let allowed = allowed.resolve(c.cloud.as_ref(), &region).await?;
    if !allowed.allows(&arn) {
        return Err(failed(format!(
            "{}: its data key is under {arn}, which is not an allowed KMS key; pass that key with --key, or \
             --discovery (with --discovery-account for its account); nothing was written",
            input.display()
        )));
    }
    let empty = EncryptionContext::new();
    let req = DecryptReq { ciphertext: header.encrypted_key(), key: Some(&arn), context: &empty };
    let (plain, by) = decrypt_key(c.cloud.as_ref(), &key_region, &req).await?;
    if by != arn.as_str() {
        return Err(failed(format!(
            "{}: KMS decrypted its data key with {by}, not {arn}, the key the file names; nothing was written",
            input.display()
        )));
    }
    let key = DataKey::from_kms(&plain)?;
    drop(plain);
    let (inp, out) = (input.clone(), output.clone());
    let stats = tokio::task::spawn_blocking(move || envelope::decrypt_file(&inp, &out, key.bytes(), &header))
        .await
        .map_err(|e| failed(format!("decryption task: {e}")))?
        .map_err(|e| failed(format!("{}: {e}; nothing was written to {}", input.display(), output.display())))?;
    print(
        common.format,
        json!({"status": "decrypted", "input": input, "output": output, "key_arn": arn.as_str(),
               "algorithm": "snapferry-envelope-v1", "bytes": stats.plaintext_bytes, "frames": stats.chunks}),
        format!("decrypted {} to {} ({} bytes)", input.display(), output.display(), stats.plaintext_bytes),
    );
    Ok(exit::OK)
}

/// Which KMS keys may unwrap a message's data key, as the SDKs' KMS keyrings put it.
enum Allowed {
    /// `--key`, as given.
    Keys(Vec<String>),
    /// `--discovery`: any key ARN, or only those of the accounts given.
    Discovery { partition: String, accounts: Vec<AccountId> },
}

/// [`Allowed`] with every key resolved to its ARN.
enum AllowedArns {
    Keys(Vec<KeyArn>),
    Discovery { partition: String, accounts: Vec<AccountId> },
}

impl Allowed {
    /// Resolves `--key` values that are not key ARNs (aliases, key ids) with DescribeKey,
    /// since an encrypted data key names its KMS key by ARN.
    async fn resolve(self, cloud: &dyn Cloud, region: &Region) -> Result<AllowedArns, Failure> {
        match self {
            Allowed::Discovery { partition, accounts } => Ok(AllowedArns::Discovery { partition, accounts }),
            Allowed::Keys(keys) => {
                let mut arns = Vec::new();
                for key in keys {
                    if let Ok(arn) = KeyArn::parse(&key) {
                        arns.push(arn);
                        continue;
                    }
                    let key_ref = KeyRef::parse(&key).map_err(|e| usage(format!("--key {key}: {e}")))?;
                    let at = key_ref.arn_region().unwrap_or_else(|| region.clone());
                    let info = cloud
                        .describe_key(&Loc::new(Side::Source, &at), &key_ref)
                        .await
                        .map_err(|e| failed(format!("--key {key}: DescribeKey in {at}: {e}")))?;
                    arns.push(info.arn);
                }
                Ok(AllowedArns::Keys(arns))
            }
        }
    }
}

impl AllowedArns {
    fn allows(&self, arn: &KeyArn) -> bool {
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
async fn unwrap_data_key(
    cloud: &dyn Cloud,
    header: &MessageHeader,
    allowed: &AllowedArns,
) -> Result<(Zeroizing<Vec<u8>>, String), Failure> {
    let mut named = Vec::new();
    let mut errors = Vec::new();
    for edk in header.data_keys() {
        let Some(info) = edk.kms_key_arn() else { continue };
        let arn = KeyArn::parse(info)
            .map_err(|_| failed(format!("the message names {info:?} as its KMS key, which is not a key ARN")))?;
        named.push(arn.to_string());
        if !allowed.allows(&arn) {
            continue;
        }
        // The key's own region, as the SDKs' keyrings call KMS.
        let region = arn.region().ok_or_else(|| failed(format!("key arn {arn} names no region")))?;
        let req = DecryptReq { ciphertext: &edk.ciphertext, key: Some(&arn), context: header.context() };
        match cloud.decrypt(&Loc::new(Side::Source, &region), &req).await {
            Ok((plain, by)) if by == arn && plain.len() == KEY_LEN => return Ok((plain, arn.to_string())),
            Ok((_, by)) => errors.push(format!("{arn}: KMS answered for {by} or with a key of the wrong size")),
            Err(e) => errors.push(format!("{arn}: {e}")),
        }
    }
    if errors.is_empty() {
        Err(failed(format!(
            "no data key of the message is under an allowed KMS key (it names {}); pass one of them with --key, \
             or --discovery",
            if named.is_empty() { "no KMS key".to_owned() } else { named.join(", ") }
        )))
    } else {
        Err(failed(format!(
            "KMS Decrypt of the data key failed: {}; the caller needs kms:Decrypt on the key, and the message \
             must be unaltered",
            errors.join("; ")
        )))
    }
}

/// `KEY=VALUE` arguments as a context; a key given twice is refused.
fn parse_pairs(pairs: &[String]) -> Result<EncryptionContext, Failure> {
    let mut context = EncryptionContext::new();
    for pair in pairs {
        let (k, v) = pair.split_once('=').ok_or_else(|| usage(format!("--context {pair}: write it KEY=VALUE")))?;
        if k.is_empty() {
            return Err(usage(format!("--context {pair}: the key is empty")));
        }
        if context.insert(k.to_owned(), v.to_owned()).is_some() {
            return Err(usage(format!("--context {k}: given twice")));
        }
    }
    Ok(context)
}

/// The context a user set: without the keys the format reserves.
fn user_pairs(context: &EncryptionContext) -> EncryptionContext {
    context
        .iter()
        .filter(|(k, _)| !k.starts_with(envelope::RESERVED_CONTEXT_PREFIX))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

fn pairs_text(context: &EncryptionContext) -> String {
    if context.is_empty() {
        return "no pairs".to_owned();
    }
    context.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(", ")
}

async fn decrypt_key(
    cloud: &dyn Cloud,
    region: &Region,
    req: &DecryptReq<'_>,
) -> Result<(Zeroizing<Vec<u8>>, String), Failure> {
    let (plain, arn) = cloud.decrypt(&Loc::new(Side::Source, region), req).await.map_err(|e| {
        failed(format!(
            "KMS Decrypt of the data key in {region}: {e}; the caller needs kms:Decrypt on the key that wrapped it"
        ))
    })?;
    Ok((plain, arn.to_string()))
}

fn write_datakey(path: &Path, arn: &str, wrapped: &[u8], context: &EncryptionContext) -> Result<(), Failure> {
    let context = envelope::serialize_context(context).map_err(|e| usage(e.to_string()))?;
    let mut b = DATAKEY_MAGIC.to_vec();
    for part in [arn.as_bytes(), wrapped, &context] {
        b.extend_from_slice(&(part.len() as u16).to_be_bytes());
        b.extend_from_slice(part);
    }
    private_fs::write_atomic(path, &b).map_err(|e| failed(format!("cannot write {}: {e}", path.display())))
}

/// A prepared data key: its KMS key, the encrypted key, and the context it is bound to.
fn read_datakey(path: &Path) -> Result<(KeyArn, Vec<u8>, EncryptionContext), Failure> {
    let bad = || failed(format!("{} is not a data key file written by snapferry envelope datakey", path.display()));
    let b = std::fs::read(path).map_err(|e| failed(format!("cannot read {}: {e}", path.display())))?;
    let (mut rest, parts) = if let Some(rest) = b.strip_prefix(DATAKEY_MAGIC) {
        (rest, 3)
    } else {
        (b.strip_prefix(DATAKEY_MAGIC_V1).ok_or_else(bad)?, 2)
    };
    let mut fields = Vec::new();
    for _ in 0..parts {
        let n = u16::from_be_bytes([*rest.first().ok_or_else(bad)?, *rest.get(1).ok_or_else(bad)?]) as usize;
        fields.push(rest.get(2..2 + n).ok_or_else(bad)?.to_vec());
        rest = &rest[2 + n..];
    }
    if !rest.is_empty() {
        return Err(bad());
    }
    let arn = String::from_utf8(fields[0].clone()).ok().and_then(|a| KeyArn::parse(&a).ok()).ok_or_else(bad)?;
    let context = match fields.get(2) {
        Some(bytes) => envelope::parse_context_bytes(bytes).map_err(|_| bad())?,
        None => EncryptionContext::new(),
    };
    Ok((arn, fields[1].clone(), context))
}
