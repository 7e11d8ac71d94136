//! `snapferry envelope`: envelope encryption of files with KMS data keys. One KMS
//! call to encrypt (GenerateDataKey, or Decrypt of a key prepared with `datakey`) and
//! one to decrypt (Decrypt); the bulk work is local AES-256-GCM in `crate::envelope`,
//! run on a blocking thread so the async runtime stays free.

use std::path::Path;

use serde_json::json;
use zeroize::Zeroizing;

use crate::cloud::{Cloud, KeyManager, Loc, Side};
use crate::envelope::{self, DEFAULT_CHUNK_SIZE, Header, KEY_LEN};
use crate::ids::{KeyRef, Region};

use super::args::{Common, EnvelopeAction, EnvelopeArgs, Format};
use super::cloud::{Connected, Reach, connect, session_name};
use super::{Failure, exit};

/// The file `envelope datakey` writes: a prepared data key, encrypted under a KMS key.
const DATAKEY_MAGIC: &[u8] = b"SNAPFDK1";

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
        target_role: None,
        external_id: None,
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

fn key32(plain: &[u8]) -> Result<Zeroizing<[u8; KEY_LEN]>, Failure> {
    let mut k = Zeroizing::new([0u8; KEY_LEN]);
    if plain.len() != KEY_LEN {
        return Err(failed(format!("KMS returned a {}-byte data key; AES-256 needs {KEY_LEN}", plain.len())));
    }
    k.copy_from_slice(plain);
    Ok(k)
}

fn print(format: Format, doc: serde_json::Value, text: String) {
    match format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default()),
        Format::Text => eprintln!("{text}"),
    }
}

pub async fn envelope(args: EnvelopeArgs) -> Result<u8, Failure> {
    match args.action {
        EnvelopeAction::Encrypt { key, region: r, data_key, chunk_size, input, output, common } => {
            let chunk = chunk_size.unwrap_or(DEFAULT_CHUNK_SIZE);
            let (plain, wrapped, key_arn, region_used, c) = match (&key, &data_key) {
                (Some(key), _) => {
                    let key = KeyRef::parse(key).map_err(|e| usage(format!("--key {key}: {e}")))?;
                    let region = region(r.as_deref(), Some(key.as_str()))?;
                    let c = reach(&common, region.clone()).await?;
                    ensure_sim_key(&c, &region, &key);
                    let dk = c
                        .cloud
                        .generate_data_key(&Loc::new(Side::Source, &region), &key)
                        .await
                        .map_err(|e| failed(format!("GenerateDataKey with {key} in {region}: {e}")))?;
                    (key32(&dk.plaintext)?, dk.ciphertext, dk.key_arn.to_string(), region, c)
                }
                (None, Some(file)) => {
                    let (arn, wrapped) = read_datakey(file)?;
                    let region = region(r.as_deref(), Some(&arn))?;
                    let c = reach(&common, region.clone()).await?;
                    let (plain, arn) = decrypt_key(c.cloud.as_ref(), &region, &wrapped).await?;
                    (key32(&plain)?, wrapped, arn, region, c)
                }
                (None, None) => return Err(usage("pass --key KEY or --data-key FILE")),
            };
            let header = Header::new(key_arn.clone(), wrapped, chunk).map_err(|e| usage(e.to_string()))?;
            let (inp, out) = (input.clone(), output.clone());
            let stats = tokio::task::spawn_blocking(move || envelope::encrypt_file(&inp, &out, &plain, &header))
                .await
                .map_err(|e| failed(format!("encryption task: {e}")))?
                .map_err(|e| failed(e.to_string()))?;
            c.save()?;
            print(
                common.format,
                json!({"status": "encrypted", "input": input, "output": output, "key_arn": key_arn,
                       "region": region_used.as_str(), "bytes": stats.plaintext_bytes, "chunks": stats.chunks}),
                format!(
                    "encrypted {} ({} bytes) to {} under {key_arn}",
                    input.display(),
                    stats.plaintext_bytes,
                    output.display()
                ),
            );
            Ok(exit::OK)
        }
        EnvelopeAction::Decrypt { region: r, input, output, common } => {
            let header = envelope::read_header_file(&input).map_err(|e| failed(e.to_string()))?;
            let region = region(r.as_deref(), Some(header.key_arn()))?;
            let c = reach(&common, region.clone()).await?;
            let (plain, arn) = decrypt_key(c.cloud.as_ref(), &region, header.encrypted_key()).await?;
            let key = key32(&plain)?;
            let (inp, out) = (input.clone(), output.clone());
            let stats = tokio::task::spawn_blocking(move || envelope::decrypt_file(&inp, &out, &key, &header))
                .await
                .map_err(|e| failed(format!("decryption task: {e}")))?
                .map_err(|e| failed(e.to_string()))?;
            print(
                common.format,
                json!({"status": "decrypted", "input": input, "output": output, "key_arn": arn,
                       "bytes": stats.plaintext_bytes, "chunks": stats.chunks}),
                format!("decrypted {} to {} ({} bytes)", input.display(), output.display(), stats.plaintext_bytes),
            );
            Ok(exit::OK)
        }
        EnvelopeAction::Datakey { key, region: r, output, common } => {
            let key = KeyRef::parse(&key).map_err(|e| usage(format!("--key {key}: {e}")))?;
            let region = region(r.as_deref(), Some(key.as_str()))?;
            let c = reach(&common, region.clone()).await?;
            ensure_sim_key(&c, &region, &key);
            let w = c
                .cloud
                .generate_data_key_without_plaintext(&Loc::new(Side::Source, &region), &key)
                .await
                .map_err(|e| failed(format!("GenerateDataKeyWithoutPlaintext with {key} in {region}: {e}")))?;
            write_datakey(&output, w.key_arn.as_str(), &w.ciphertext)?;
            c.save()?;
            print(
                common.format,
                json!({"status": "prepared", "output": output, "key_arn": w.key_arn.as_str()}),
                format!("wrote a data key encrypted under {} to {}", w.key_arn, output.display()),
            );
            Ok(exit::OK)
        }
        EnvelopeAction::Random { bytes, region: r, output, common } => {
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
            std::fs::write(&output, &random).map_err(|e| failed(format!("cannot write {}: {e}", output.display())))?;
            print(
                common.format,
                json!({"status": "written", "output": output, "bytes": random.len()}),
                format!("wrote {} random bytes from KMS to {}", random.len(), output.display()),
            );
            Ok(exit::OK)
        }
    }
}

async fn decrypt_key(
    cloud: &dyn Cloud,
    region: &Region,
    wrapped: &[u8],
) -> Result<(Zeroizing<Vec<u8>>, String), Failure> {
    let (plain, arn) = cloud.decrypt(&Loc::new(Side::Source, region), wrapped).await.map_err(|e| {
        failed(format!(
            "KMS Decrypt of the data key in {region}: {e}; the caller needs kms:Decrypt on the key that wrapped it"
        ))
    })?;
    Ok((plain, arn.to_string()))
}

fn write_datakey(path: &Path, arn: &str, wrapped: &[u8]) -> Result<(), Failure> {
    let mut b = DATAKEY_MAGIC.to_vec();
    b.extend_from_slice(&(arn.len() as u16).to_be_bytes());
    b.extend_from_slice(arn.as_bytes());
    b.extend_from_slice(&(wrapped.len() as u16).to_be_bytes());
    b.extend_from_slice(wrapped);
    std::fs::write(path, b).map_err(|e| failed(format!("cannot write {}: {e}", path.display())))
}

fn read_datakey(path: &Path) -> Result<(String, Vec<u8>), Failure> {
    let bad = || failed(format!("{} is not a data key file written by snapferry envelope datakey", path.display()));
    let b = std::fs::read(path).map_err(|e| failed(format!("cannot read {}: {e}", path.display())))?;
    let rest = b.strip_prefix(DATAKEY_MAGIC).ok_or_else(bad)?;
    let take = |r: &[u8]| -> Option<(Vec<u8>, usize)> {
        let n = u16::from_be_bytes([*r.first()?, *r.get(1)?]) as usize;
        Some((r.get(2..2 + n)?.to_vec(), 2 + n))
    };
    let (arn, used) = take(rest).ok_or_else(bad)?;
    let (wrapped, used2) = take(&rest[used..]).ok_or_else(bad)?;
    if used + used2 != rest.len() {
        return Err(bad());
    }
    Ok((String::from_utf8(arn).map_err(|_| bad())?, wrapped))
}
