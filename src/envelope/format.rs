//! The envelope header: its constants, the validated [`Header`] value, and its exact
//! byte encoding (described field by field in the module doc of `envelope`).
//!
//! A `Header` can only be made by [`Header::new`] or [`read_header`], both of which
//! check every field, so the streaming code never sees an out-of-range chunk size. The
//! encoding is canonical: [`Header::to_bytes`] of a header read from a file gives back
//! exactly the bytes read, which is what lets the decryptor authenticate the header
//! without keeping the raw bytes around.

use std::io::{self, Read};

use aws_lc_rs::digest;

use super::EnvelopeError;

/// First bytes of every envelope file ("snapferry envelope").
pub const MAGIC: [u8; 8] = *b"SNAPFENV";

/// The format version this build writes and the only one it reads.
pub const FORMAT_VERSION: u8 = 1;

/// Length of an AES-256 data key, as `GenerateDataKey` with `KeySpec=AES_256` returns it.
pub const KEY_LEN: usize = 32;

/// Length of an AES-GCM authentication tag, appended to every chunk.
pub const TAG_LEN: usize = 16;

/// Random bytes at the start of every chunk nonce; the other 5 of the 12 are the chunk
/// index (4) and the last-chunk flag (1), as in Tink's streaming AEAD.
pub const NONCE_PREFIX_LEN: usize = 7;

/// Default plaintext bytes per chunk. 1 MiB makes the 16-byte tag 0.0015% overhead,
/// spreads the per-chunk costs (two system calls, one nonce setup) over enough data to
/// stay at AES-GCM speed, keeps a stream's buffers near 2 MiB, and with 2^32 chunks
/// allows files up to 4 PiB.
pub const DEFAULT_CHUNK_SIZE: u32 = 1 << 20;

/// Smallest chunk size accepted: below 1 KiB the tag and per-chunk work dominate.
pub const MIN_CHUNK_SIZE: u32 = 1 << 10;

/// Largest chunk size accepted. A reader allocates about two chunks, so this caps what a
/// hostile header can make it allocate at about 32 MiB.
pub const MAX_CHUNK_SIZE: u32 = 16 << 20;

/// Longest key ARN accepted: the KMS API's limit on a `KeyId` (KMS API reference,
/// `GenerateDataKey`: "Maximum length of 2048").
pub const MAX_KEY_ARN_LEN: usize = 2048;

/// Longest encrypted data key accepted: the KMS API's limit on a `CiphertextBlob` (KMS
/// API reference, `Decrypt`: "Maximum length of 6144").
pub const MAX_ENCRYPTED_KEY_LEN: usize = 6144;

/// Bytes before the key ARN: magic, version, chunk size, nonce prefix, ARN length.
const FIXED_LEN: usize = MAGIC.len() + 1 + 4 + NONCE_PREFIX_LEN + 2;

/// The header of an envelope file: which KMS key and encrypted data key unlock it, and
/// how its body is chunked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    key_arn: String,
    encrypted_key: Vec<u8>,
    chunk_size: u32,
    nonce_prefix: [u8; NONCE_PREFIX_LEN],
}

impl Header {
    /// A header for a new file, with a fresh random nonce prefix.
    ///
    /// `key_arn` and `encrypted_key` are the `KeyId` and `CiphertextBlob` that
    /// `GenerateDataKey` returned; `chunk_size` is usually [`DEFAULT_CHUNK_SIZE`].
    ///
    /// # Errors
    /// [`EnvelopeError::FieldOutOfRange`] when a field is empty or too long or the chunk
    /// size is outside [`MIN_CHUNK_SIZE`] to [`MAX_CHUNK_SIZE`];
    /// [`EnvelopeError::Random`] when the system random generator fails.
    pub fn new(
        key_arn: impl Into<String>,
        encrypted_key: impl Into<Vec<u8>>,
        chunk_size: u32,
    ) -> Result<Self, EnvelopeError> {
        let key_arn = key_arn.into();
        let encrypted_key = encrypted_key.into();
        check_chunk_size(chunk_size)?;
        check_len("key arn length", key_arn.len(), MAX_KEY_ARN_LEN)?;
        check_len("encrypted data key length", encrypted_key.len(), MAX_ENCRYPTED_KEY_LEN)?;
        let mut nonce_prefix = [0u8; NONCE_PREFIX_LEN];
        aws_lc_rs::rand::fill(&mut nonce_prefix).map_err(|_| EnvelopeError::Random)?;
        Ok(Self { key_arn, encrypted_key, chunk_size, nonce_prefix })
    }

    /// ARN (or other `KeyId`) of the KMS key the data key is encrypted under.
    pub fn key_arn(&self) -> &str {
        &self.key_arn
    }

    /// The data key encrypted under the KMS key: what to pass to KMS `Decrypt`.
    pub fn encrypted_key(&self) -> &[u8] {
        &self.encrypted_key
    }

    /// Plaintext bytes per chunk.
    pub fn chunk_size(&self) -> u32 {
        self.chunk_size
    }

    /// The format version of this header (always [`FORMAT_VERSION`]).
    pub fn version(&self) -> u8 {
        FORMAT_VERSION
    }

    pub(super) fn nonce_prefix(&self) -> &[u8; NONCE_PREFIX_LEN] {
        &self.nonce_prefix
    }

    /// Length of the encoded header in bytes.
    pub fn encoded_len(&self) -> usize {
        FIXED_LEN + self.key_arn.len() + 2 + self.encrypted_key.len()
    }

    /// The header as it is written at the start of the file.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len());
        out.extend_from_slice(&MAGIC);
        out.push(FORMAT_VERSION);
        out.extend_from_slice(&self.chunk_size.to_be_bytes());
        out.extend_from_slice(&self.nonce_prefix);
        // Lengths were bounded by the constructors, so they fit in a u16.
        out.extend_from_slice(&(self.key_arn.len() as u16).to_be_bytes());
        out.extend_from_slice(self.key_arn.as_bytes());
        out.extend_from_slice(&(self.encrypted_key.len() as u16).to_be_bytes());
        out.extend_from_slice(&self.encrypted_key);
        out
    }

    /// SHA-256 of the encoded header: the part of every chunk's associated data that
    /// binds the chunk to this header. A digest keeps the associated data 37 bytes long
    /// whatever the header's size.
    pub(super) fn digest(&self) -> [u8; 32] {
        let mut out = [0u8; 32];
        out.copy_from_slice(digest::digest(&digest::SHA256, &self.to_bytes()).as_ref());
        out
    }
}

/// Reads and checks the header at the start of `input`, leaving `input` just after it
/// (it reads no byte past the header, so no buffering is needed around it).
///
/// No allocation exceeds the format's limits, whatever the lengths the input claims.
///
/// # Errors
/// [`EnvelopeError::NotEnvelope`] when the magic bytes are missing,
/// [`EnvelopeError::UnsupportedVersion`], [`EnvelopeError::HeaderTruncated`],
/// [`EnvelopeError::FieldOutOfRange`], [`EnvelopeError::KeyArnNotUtf8`], or
/// [`EnvelopeError::Read`].
pub fn read_header<R: Read + ?Sized>(input: &mut R) -> Result<Header, EnvelopeError> {
    let mut magic = [0u8; MAGIC.len()];
    read_exact_or(input, &mut magic, EnvelopeError::NotEnvelope)?;
    if magic != MAGIC {
        return Err(EnvelopeError::NotEnvelope);
    }

    let mut version = [0u8; 1];
    read_exact_or(input, &mut version, EnvelopeError::HeaderTruncated)?;
    if version[0] != FORMAT_VERSION {
        return Err(EnvelopeError::UnsupportedVersion(version[0]));
    }

    let mut fixed = [0u8; 4 + NONCE_PREFIX_LEN + 2];
    read_exact_or(input, &mut fixed, EnvelopeError::HeaderTruncated)?;
    let (chunk_size, rest) = fixed.split_at(4);
    let (prefix, arn_len) = rest.split_at(NONCE_PREFIX_LEN);
    let chunk_size = u32::from_be_bytes(chunk_size.try_into().expect("4 bytes"));
    check_chunk_size(chunk_size)?;
    let nonce_prefix: [u8; NONCE_PREFIX_LEN] = prefix.try_into().expect("prefix length");

    let arn_len = usize::from(u16::from_be_bytes(arn_len.try_into().expect("2 bytes")));
    check_len("key arn length", arn_len, MAX_KEY_ARN_LEN)?;
    let mut arn = vec![0u8; arn_len];
    read_exact_or(input, &mut arn, EnvelopeError::HeaderTruncated)?;
    let key_arn = String::from_utf8(arn).map_err(|_| EnvelopeError::KeyArnNotUtf8)?;

    let mut key_len = [0u8; 2];
    read_exact_or(input, &mut key_len, EnvelopeError::HeaderTruncated)?;
    let key_len = usize::from(u16::from_be_bytes(key_len));
    check_len("encrypted data key length", key_len, MAX_ENCRYPTED_KEY_LEN)?;
    let mut encrypted_key = vec![0u8; key_len];
    read_exact_or(input, &mut encrypted_key, EnvelopeError::HeaderTruncated)?;

    Ok(Header { key_arn, encrypted_key, chunk_size, nonce_prefix })
}

/// `read_exact`, with an early end of input turned into `at_eof`.
fn read_exact_or<R: Read + ?Sized>(input: &mut R, buf: &mut [u8], at_eof: EnvelopeError) -> Result<(), EnvelopeError> {
    input.read_exact(buf).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => at_eof,
        _ => EnvelopeError::Read(e),
    })
}

fn check_chunk_size(chunk_size: u32) -> Result<(), EnvelopeError> {
    if (MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&chunk_size) {
        Ok(())
    } else {
        Err(EnvelopeError::FieldOutOfRange {
            field: "chunk size",
            value: u64::from(chunk_size),
            min: u64::from(MIN_CHUNK_SIZE),
            max: u64::from(MAX_CHUNK_SIZE),
        })
    }
}

fn check_len(field: &'static str, len: usize, max: usize) -> Result<(), EnvelopeError> {
    if (1..=max).contains(&len) {
        Ok(())
    } else {
        Err(EnvelopeError::FieldOutOfRange { field, value: len as u64, min: 1, max: max as u64 })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding_round_trips_byte_for_byte() {
        let header = Header::new("arn:aws:kms:us-east-1:111111111111:key/k", vec![7; 184], 4096).unwrap();
        let bytes = header.to_bytes();
        assert_eq!(bytes.len(), header.encoded_len());
        let mut input = &bytes[..];
        let read = read_header(&mut input).unwrap();
        assert!(input.is_empty(), "reads exactly the header");
        assert_eq!(read, header);
        assert_eq!(read.to_bytes(), bytes);
    }

    #[test]
    fn layout_matches_the_documented_offsets() {
        let header = Header::new("ab", vec![0xEE, 0xFF], 0x0001_0000).unwrap();
        let bytes = header.to_bytes();
        assert_eq!(&bytes[0..8], b"SNAPFENV");
        assert_eq!(bytes[8], 1);
        assert_eq!(&bytes[9..13], &[0, 1, 0, 0]);
        assert_eq!(&bytes[13..20], header.nonce_prefix());
        assert_eq!(&bytes[20..22], &[0, 2]);
        assert_eq!(&bytes[22..24], b"ab");
        assert_eq!(&bytes[24..26], &[0, 2]);
        assert_eq!(&bytes[26..28], &[0xEE, 0xFF]);
        assert_eq!(bytes.len(), 28);
    }

    #[test]
    fn new_rejects_out_of_range_fields() {
        assert!(Header::new("", vec![1], DEFAULT_CHUNK_SIZE).is_err());
        assert!(Header::new("a", Vec::new(), DEFAULT_CHUNK_SIZE).is_err());
        assert!(Header::new("a", vec![1], MIN_CHUNK_SIZE - 1).is_err());
        assert!(Header::new("a", vec![1], MAX_CHUNK_SIZE + 1).is_err());
        assert!(Header::new("a".repeat(MAX_KEY_ARN_LEN + 1), vec![1], DEFAULT_CHUNK_SIZE).is_err());
        assert!(Header::new("a", vec![1; MAX_ENCRYPTED_KEY_LEN + 1], DEFAULT_CHUNK_SIZE).is_err());
        assert!(Header::new("a".repeat(MAX_KEY_ARN_LEN), vec![1; MAX_ENCRYPTED_KEY_LEN], MAX_CHUNK_SIZE).is_ok());
    }

    #[test]
    fn every_file_gets_its_own_nonce_prefix() {
        let a = Header::new("a", vec![1], DEFAULT_CHUNK_SIZE).unwrap();
        let b = Header::new("a", vec![1], DEFAULT_CHUNK_SIZE).unwrap();
        assert_ne!(a.nonce_prefix(), b.nonce_prefix());
    }
}
