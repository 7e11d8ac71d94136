//! `snapferry envelope`: the envelope commands' arguments. Each command checks its
//! options, reaches KMS, and hands over to `crate::envelope`: the keyring (one KMS call
//! to encrypt, GenerateDataKey with the encryption context or Decrypt of a key prepared
//! with `datakey`; one to decrypt, restricted to the keys the user allows), the
//! data-key file, and the bulk work, run on a blocking thread so the async runtime
//! stays free. The result goes through `render` (JSON on stdout, text on stderr).
//!
//! One rule decrypts every format: `--key` or `--discovery` says which KMS keys may
//! unwrap a data key, the key a file names is checked against it before KMS is asked,
//! and is the KeyId of the Decrypt call, and the key KMS answered for is checked again.
//! A signal (SIGINT, SIGTERM, SIGHUP) ends a command with exit 130 after removing the
//! output it had not finished; prepared keys and random bytes are written owner-only.

use std::path::PathBuf;

use serde_json::json;
use zeroize::Zeroizing;

use crate::cloud::{DecryptReq, KeyManager, Loc, Side};
use crate::envelope::keyring::{self, AllowedArns, DataKey, Generated};
use crate::envelope::{
    self, Allowed, DEFAULT_FRAME_LENGTH, EncryptMaterials, EncryptedDataKey, EncryptionContext, EnvelopeFile,
    MAX_FRAME_LENGTH, MessageHeader, PUBLIC_KEY_CONTEXT_KEY, Signer, Suite, datakey,
};
use crate::ids::{AccountId, KeyArn, KeyRef, Region};
use crate::private_fs;

use super::args::{Common, EnvelopeAction, EnvelopeArgs, Format};
use super::cloud::{Connected, Reach, connect, session_name};
use super::exit::Done;
use super::failure::Failure;
use super::render::{self, TextTo};

fn usage(m: impl Into<String>) -> Failure {
    Failure::Usage(m.into())
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

/// Prints an envelope command's result: the JSON document on stdout, the text for
/// people on stderr.
fn print(format: Format, doc: serde_json::Value, text: String) {
    render::emit_to(TextTo::Stderr, format, &doc, |_| text);
}

/// Runs an envelope command; a SIGINT, SIGTERM or SIGHUP ends it with exit 130 after
/// removing the output it had not finished (a decrypted file whose message was not yet
/// verified, or a part of an encrypted one).
pub async fn envelope(args: EnvelopeArgs) -> Result<Done, Failure> {
    // Installed before any file is opened: from here a signal no longer ends the
    // process where it stands.
    let signal = interrupts()?;
    tokio::select! {
        result = action(args) => result,
        name = signal => {
            let removed = envelope::discard_unfinished_outputs();
            let what = if removed > 0 { "; the unfinished output was removed" } else { "" };
            Err(Failure::Interrupted(format!("interrupted by {name}{what}; run the command again")))
        }
    }
}

/// The first of SIGINT, SIGTERM and SIGHUP, handled from the moment this returns.
#[cfg(unix)]
fn interrupts() -> Result<impl std::future::Future<Output = &'static str>, Failure> {
    use tokio::signal::unix::{SignalKind, signal};
    let handle = |kind: SignalKind, name: &'static str| {
        signal(kind).map_err(|e| Failure::Internal(format!("cannot handle {name}: {e}"))).map(|s| (s, name))
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

async fn action(args: EnvelopeArgs) -> Result<Done, Failure> {
    match args.action {
        EnvelopeAction::Encrypt { key, region, context, algorithm, frame_length, data_key, input, output, common } => {
            let job = EncryptJob { key, region, context, algorithm, frame_length, data_key, input, output };
            encrypt(job, common.common()).await
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
            let allowed = allowed(keys, discovery, &discovery_accounts, discovery_partition)?;
            let file = envelope::read_envelope_file(&input, max_encrypted_data_keys)
                .map_err(|e| Failure::Envelope(format!("{}: {e}", input.display())))?;
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
        EnvelopeAction::Datakey { key, region, context, output, common } => {
            prepare(&key, region.as_deref(), &context, &output, &common.common()).await
        }
        EnvelopeAction::Random { bytes, region, output, common } => {
            random(bytes, region.as_deref(), &output, &common.common()).await
        }
    }
}

/// What `envelope encrypt` was asked.
struct EncryptJob {
    key: Option<String>,
    region: Option<String>,
    context: Vec<String>,
    algorithm: Option<String>,
    frame_length: Option<u32>,
    data_key: Option<PathBuf>,
    input: PathBuf,
    output: PathBuf,
}

/// The data key a message is encrypted under, and what goes with it.
struct Keyed {
    generated: Generated,
    /// The whole encryption context: the user's pairs, and the signing key's.
    context: EncryptionContext,
    signer: Option<Signer>,
    region: Region,
    connected: Connected,
}

/// `envelope encrypt`: a fresh data key from `--key` (or the one prepared in
/// `--data-key`), then the message written all or nothing.
async fn encrypt(job: EncryptJob, common: Common) -> Result<Done, Failure> {
    let frame_length = job.frame_length.unwrap_or(DEFAULT_FRAME_LENGTH);
    if !(1..=MAX_FRAME_LENGTH).contains(&frame_length) {
        return Err(usage(format!("--frame-length {frame_length}: must be 1 to {MAX_FRAME_LENGTH}")));
    }
    let suite = suite(job.algorithm.as_deref(), job.data_key.is_some())?;
    let user_context = parse_pairs(&job.context)?;
    envelope::check_user_context(&user_context).map_err(|e| usage(format!("--context: {e}")))?;
    let keyed = match (&job.key, &job.data_key) {
        (Some(key), _) => fresh_key(key, job.region.as_deref(), suite, user_context, &common).await?,
        (None, Some(file)) => prepared_key(file, job.region.as_deref(), suite, &common).await?,
        (None, None) => return Err(usage("pass --key KEY or --data-key FILE")),
    };
    let Keyed { generated, context, signer, region, connected } = keyed;
    let Generated { key: plain, wrapped, key_arn } = generated;
    let data_keys = vec![EncryptedDataKey::kms(&key_arn, wrapped)];
    let (inp, out) = (job.input.clone(), job.output.clone());
    let (header, stats) = tokio::task::spawn_blocking(move || {
        let materials = EncryptMaterials {
            suite,
            context: &context,
            data_keys: &data_keys,
            data_key: plain.bytes(),
            signer: signer.as_ref(),
            frame_length,
        };
        envelope::encrypt_message_file(&inp, &out, &materials)
    })
    .await
    .map_err(|e| Failure::Internal(format!("encryption task: {e}")))?
    .map_err(|e| Failure::Envelope(e.to_string()))?;
    connected.save()?;
    let (input, output) = (job.input, job.output);
    print(
        common.format,
        json!({"status": "encrypted", "input": input, "output": output, "key_arn": key_arn,
               "region": region.as_str(), "algorithm": suite.name(), "frame_length": frame_length,
               "context": user_pairs(header.context()), "bytes": stats.plaintext_bytes, "frames": stats.chunks}),
        format!(
            "encrypted {} ({} bytes) to {} under {key_arn} ({})",
            input.display(),
            stats.plaintext_bytes,
            output.display(),
            suite.name()
        ),
    );
    Ok(Done::Ok)
}

/// `--algorithm`, or the default: signed, but unsigned with a prepared data key.
fn suite(algorithm: Option<&str>, prepared: bool) -> Result<Suite, Failure> {
    match algorithm {
        None if prepared => Ok(Suite::CommitKey),
        None => Ok(Suite::CommitKeyEcdsaP384),
        Some(name) => Suite::from_name(name).ok_or_else(|| {
            usage(format!(
                "--algorithm {name}: use {} or {}",
                Suite::CommitKeyEcdsaP384.name(),
                Suite::CommitKey.name()
            ))
        }),
    }
}

/// A new data key from `--key`, bound to the user's context and, for the signed suite,
/// to the public key of a signing key made first.
async fn fresh_key(
    key: &str,
    region_flag: Option<&str>,
    suite: Suite,
    user_context: EncryptionContext,
    common: &Common,
) -> Result<Keyed, Failure> {
    let key = KeyRef::parse(key).map_err(|e| usage(format!("--key {key}: {e}")))?;
    let region = region(region_flag, Some(key.as_str()))?;
    // The signing key is made first: its public key is part of the context KMS binds
    // the data key to.
    let signer =
        if suite.is_signed() { Some(Signer::generate().map_err(|e| Failure::Internal(e.to_string()))?) } else { None };
    let mut context = user_context;
    if let Some(s) = &signer {
        context.insert(PUBLIC_KEY_CONTEXT_KEY.to_owned(), s.public_key_base64());
    }
    let connected = reach(common, region.clone()).await?;
    ensure_sim_key(&connected, &region, &key);
    let generated = keyring::generate(connected.cloud.as_ref(), &region, &key, &context).await?;
    Ok(Keyed { generated, context, signer, region, connected })
}

/// The data key prepared in `file` (`envelope datakey`), decrypted by KMS with the
/// context it was prepared with.
async fn prepared_key(
    file: &std::path::Path,
    region_flag: Option<&str>,
    suite: Suite,
    common: &Common,
) -> Result<Keyed, Failure> {
    if suite.is_signed() {
        return Err(usage(format!(
            "--data-key works with --algorithm {} only: a signed message needs a signing key made \
             with its data key",
            Suite::CommitKey.name()
        )));
    }
    let datakey::DataKeyFile { key_arn, wrapped, context } = datakey::read(file)?;
    let region = region(region_flag, Some(key_arn.as_str()))?;
    let connected = reach(common, region.clone()).await?;
    let req = DecryptReq { ciphertext: &wrapped, key: Some(&key_arn), context: &context };
    let (plain, arn) = keyring::decrypt_key(connected.cloud.as_ref(), &region, &req).await?;
    let generated = Generated { key: DataKey::from_kms(&plain)?, wrapped, key_arn: arn };
    Ok(Keyed { generated, context, signer: None, region, connected })
}

/// Which keys may unwrap the data key, said before the file is even read, whatever
/// its format.
fn allowed(
    keys: Vec<String>,
    discovery: bool,
    discovery_accounts: &[String],
    partition: String,
) -> Result<Allowed, Failure> {
    if discovery {
        let accounts = discovery_accounts
            .iter()
            .map(|a| AccountId::parse(a).map_err(|e| usage(format!("--discovery-account {a}: {e}"))))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Allowed::Discovery { partition, accounts })
    } else if keys.is_empty() {
        Err(usage("envelope decrypt needs --key KEY (the KMS keys allowed to decrypt the file) or --discovery"))
    } else {
        Ok(Allowed::Keys(keys))
    }
}

/// `envelope datakey`: a data key prepared now (GenerateDataKeyWithoutPlaintext),
/// written owner-only for a later `encrypt --data-key`.
async fn prepare(
    key: &str,
    region_flag: Option<&str>,
    context: &[String],
    output: &std::path::Path,
    common: &Common,
) -> Result<Done, Failure> {
    let context = parse_pairs(context)?;
    envelope::check_user_context(&context).map_err(|e| usage(format!("--context: {e}")))?;
    let key = KeyRef::parse(key).map_err(|e| usage(format!("--key {key}: {e}")))?;
    let region = region(region_flag, Some(key.as_str()))?;
    let c = reach(common, region.clone()).await?;
    ensure_sim_key(&c, &region, &key);
    let (key_arn, wrapped) = keyring::prepare(c.cloud.as_ref(), &region, &key, &context).await?;
    datakey::write(output, key_arn.as_str(), &wrapped, &context)?;
    c.save()?;
    print(
        common.format,
        json!({"status": "prepared", "output": output, "key_arn": key_arn.as_str(), "context": context}),
        format!("wrote a data key encrypted under {} to {}", key_arn, output.display()),
    );
    Ok(Done::Ok)
}

/// `envelope random`: bytes from KMS GenerateRandom, written owner-only.
async fn random(
    bytes: u32,
    region_flag: Option<&str>,
    output: &std::path::Path,
    common: &Common,
) -> Result<Done, Failure> {
    if !(1..=1024).contains(&bytes) {
        return Err(usage("--bytes must be 1 to 1024 (the GenerateRandom limit)"));
    }
    let region = region(region_flag, None)?;
    let c = reach(common, region.clone()).await?;
    let random = c
        .cloud
        .generate_random(&Loc::new(Side::Source, &region), bytes)
        .await
        .map_err(|e| Failure::Aws(format!("GenerateRandom in {region}: {e}")))?;
    // Random bytes from KMS are usually a secret: owner-only, like a key.
    let random = Zeroizing::new(random);
    private_fs::write_atomic(output, &random)
        .map_err(|e| Failure::File(format!("cannot write {}: {e}", output.display())))?;
    print(
        common.format,
        json!({"status": "written", "output": output, "bytes": random.len()}),
        format!("wrote {} random bytes from KMS to {}", random.len(), output.display()),
    );
    Ok(Done::Ok)
}

/// What `envelope decrypt` was asked, once its options are checked.
struct DecryptJob {
    allowed: Allowed,
    /// `--region`.
    region: Option<String>,
    input: PathBuf,
    output: PathBuf,
    common: Common,
}

/// An AWS Encryption SDK message: the first of its data keys under an allowed key that
/// KMS decrypts, with the context required.
async fn decrypt_esdk(header: MessageHeader, required: &EncryptionContext, job: DecryptJob) -> Result<Done, Failure> {
    let DecryptJob { allowed, region: r, input, output, common } = job;
    for (k, v) in required {
        if header.context().get(k) != Some(v) {
            return Err(Failure::Envelope(format!(
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
    let allowed: AllowedArns = allowed.resolve(c.cloud.as_ref(), &region).await?;
    let (plain, arn) = keyring::unwrap_data_key(c.cloud.as_ref(), &header, &allowed).await?;
    let key = DataKey::from_kms(&plain)?;
    drop(plain);
    let suite = header.suite();
    let pairs = user_pairs(header.context());
    let (inp, out) = (input.clone(), output.clone());
    let stats = tokio::task::spawn_blocking(move || envelope::decrypt_message_file(&inp, &out, &header, key.bytes()))
        .await
        .map_err(|e| Failure::Internal(format!("decryption task: {e}")))?
        .map_err(|e| {
            Failure::Envelope(format!("{}: {e}; nothing was written to {}", input.display(), output.display()))
        })?;
    print(
        common.format,
        json!({"status": "decrypted", "input": input, "output": output, "key_arn": arn,
               "algorithm": suite.name(), "context": pairs,
               "bytes": stats.plaintext_bytes, "frames": stats.chunks}),
        format!("decrypted {} to {} ({} bytes)", input.display(), output.display(), stats.plaintext_bytes),
    );
    Ok(Done::Ok)
}

/// A file in snapferry's own envelope format, from before it wrote AWS Encryption SDK
/// messages: its header names the key, and its data key has no encryption context. It
/// obeys the rule of messages: the key it names must be allowed, is the KeyId of the
/// one Decrypt (in the key's own region), and must be the key KMS answers for.
async fn decrypt_legacy(header: envelope::Header, job: DecryptJob) -> Result<Done, Failure> {
    let DecryptJob { allowed, region: r, input, output, common } = job;
    let arn = KeyArn::parse(header.key_arn()).map_err(|_| {
        Failure::Envelope(format!(
            "{}: its header names {:?} as its KMS key, which is not a key ARN; the file is damaged",
            input.display(),
            header.key_arn()
        ))
    })?;
    let key_region = arn.region().ok_or_else(|| {
        Failure::Envelope(format!("{}: key arn {arn} names no region; the file is damaged", input.display()))
    })?;
    let region = match r.as_deref() {
        Some(_) => region(r.as_deref(), None)?,
        None => key_region.clone(),
    };
    let c = reach(&common, region.clone()).await?;
    let allowed = allowed.resolve(c.cloud.as_ref(), &region).await?;
    let key =
        keyring::unwrap_named(c.cloud.as_ref(), &input, &arn, &key_region, header.encrypted_key(), &allowed).await?;
    let (inp, out) = (input.clone(), output.clone());
    let stats = tokio::task::spawn_blocking(move || envelope::decrypt_file(&inp, &out, key.bytes(), &header))
        .await
        .map_err(|e| Failure::Internal(format!("decryption task: {e}")))?
        .map_err(|e| {
            Failure::Envelope(format!("{}: {e}; nothing was written to {}", input.display(), output.display()))
        })?;
    print(
        common.format,
        json!({"status": "decrypted", "input": input, "output": output, "key_arn": arn.as_str(),
               "algorithm": "snapferry-envelope-v1", "bytes": stats.plaintext_bytes, "frames": stats.chunks}),
        format!("decrypted {} to {} ({} bytes)", input.display(), output.display(), stats.plaintext_bytes),
    );
    Ok(Done::Ok)
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
