//! The file `envelope datakey` writes and `envelope encrypt --data-key` reads: a
//! prepared data key, encrypted under a KMS key, with the encryption context it is
//! bound to. Written owner-only.
//!
//! Layout: the magic `SNAPFDK2`, then three fields, each a 2-byte big-endian length
//! and its bytes: the key ARN (UTF-8), the encrypted key (KMS `CiphertextBlob`) and
//! the encryption context (serialized as in a message header). Version 1 files
//! (`SNAPFDK1`) have the first two fields only, and no context.

use std::path::{Path, PathBuf};

use crate::ids::KeyArn;
use crate::private_fs;

use super::error::EnvelopeError;
use super::message::{EncryptionContext, parse_context_bytes, serialize_context};

const MAGIC: &[u8] = b"SNAPFDK2";
const MAGIC_V1: &[u8] = b"SNAPFDK1";

/// A prepared data key: its KMS key, the encrypted key, and the context it is bound to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataKeyFile {
    pub key_arn: KeyArn,
    pub wrapped: Vec<u8>,
    pub context: EncryptionContext,
}

/// Why a data-key file could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum DataKeyError {
    /// The context cannot be serialized (too long).
    #[error("{0}")]
    Context(EnvelopeError),
    #[error("cannot write {}: {source}", path.display())]
    Write { path: PathBuf, source: std::io::Error },
    #[error("cannot read {}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{} is not a data key file written by snapferry envelope datakey", path.display())]
    NotDataKey { path: PathBuf },
}

/// Writes a data-key file, owner-only and all or nothing.
pub fn write(path: &Path, arn: &str, wrapped: &[u8], context: &EncryptionContext) -> Result<(), DataKeyError> {
    let context = serialize_context(context).map_err(DataKeyError::Context)?;
    let mut b = MAGIC.to_vec();
    for part in [arn.as_bytes(), wrapped, &context] {
        b.extend_from_slice(&(part.len() as u16).to_be_bytes());
        b.extend_from_slice(part);
    }
    private_fs::write_atomic(path, &b).map_err(|source| DataKeyError::Write { path: path.to_owned(), source })
}

/// Reads a data-key file of either version.
pub fn read(path: &Path) -> Result<DataKeyFile, DataKeyError> {
    let b = std::fs::read(path).map_err(|source| DataKeyError::Read { path: path.to_owned(), source })?;
    decode(&b).ok_or_else(|| DataKeyError::NotDataKey { path: path.to_owned() })
}

/// The fields of a data-key file's bytes, or `None` when they are not one.
fn decode(b: &[u8]) -> Option<DataKeyFile> {
    let (mut rest, parts) = match b.strip_prefix(MAGIC) {
        Some(rest) => (rest, 3),
        None => (b.strip_prefix(MAGIC_V1)?, 2),
    };
    let mut fields = Vec::new();
    for _ in 0..parts {
        let n = u16::from_be_bytes([*rest.first()?, *rest.get(1)?]) as usize;
        fields.push(rest.get(2..2 + n)?.to_vec());
        rest = &rest[2 + n..];
    }
    if !rest.is_empty() {
        return None;
    }
    let key_arn = String::from_utf8(fields[0].clone()).ok().and_then(|a| KeyArn::parse(&a).ok())?;
    let context = match fields.get(2) {
        Some(bytes) => parse_context_bytes(bytes).ok()?,
        None => EncryptionContext::new(),
    };
    Some(DataKeyFile { key_arn, wrapped: fields[1].clone(), context })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arn() -> KeyArn {
        KeyArn::parse("arn:aws:kms:eu-west-1:111111111111:key/00000000-0000-0000-0000-000000000001").unwrap()
    }

    #[test]
    fn a_data_key_file_reads_back_and_a_damaged_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dk");
        let context: EncryptionContext = [("purpose".to_owned(), "backup".to_owned())].into();
        write(&path, arn().as_str(), b"wrapped", &context).unwrap();
        let back = read(&path).unwrap();
        assert_eq!(back, DataKeyFile { key_arn: arn(), wrapped: b"wrapped".to_vec(), context });
        let bytes = std::fs::read(&path).unwrap();
        assert!(decode(&bytes[..bytes.len() - 1]).is_none(), "a cut file is no data key");
        let mut v1 = MAGIC_V1.to_vec();
        for part in [arn().as_str().as_bytes(), b"w"] {
            v1.extend_from_slice(&(part.len() as u16).to_be_bytes());
            v1.extend_from_slice(part);
        }
        assert_eq!(decode(&v1).unwrap().context, EncryptionContext::new(), "version 1 has no context");
        std::fs::write(&path, b"SNAPFENV").unwrap();
        let e = read(&path).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("{} is not a data key file written by snapferry envelope datakey", path.display())
        );
    }
}
