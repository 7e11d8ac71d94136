//! Streaming AES-256-GCM over chunks: [`encrypt`] and [`decrypt`] between any
//! `Read` and `Write`.
//!
//! Each direction allocates its buffers once (about one chunk for encryption, two for
//! decryption) and reuses them for every chunk, so memory does not grow with the input.
//! Both read one byte past a chunk before sealing or opening it: that byte is how they
//! know whether the chunk is the last one, which the nonce must say.

use std::io::{self, Read, Write};

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, Tag, UnboundKey};
use zeroize::Zeroizing;

use super::EnvelopeError;
use super::format::{Header, KEY_LEN, NONCE_PREFIX_LEN, TAG_LEN};

/// What one call moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Stats {
    /// Plaintext bytes read (encrypt) or written (decrypt).
    pub plaintext_bytes: u64,
    /// Envelope bytes written (encrypt) or read (decrypt), header included.
    pub envelope_bytes: u64,
    /// Chunks sealed or opened.
    pub chunks: u64,
}

/// Writes `header`, then `input` encrypted under `key` in chunks of
/// `header.chunk_size()`, to `output`, and flushes it.
///
/// `key` is the plaintext data key from `GenerateDataKey`; it is only borrowed and
/// handed to `aws-lc-rs`. `header` must be fresh for this file (from [`Header::new`]):
/// its nonce prefix must not be used twice with one key.
///
/// # Errors
/// [`EnvelopeError::Read`] and [`EnvelopeError::Write`] for I/O, and
/// [`EnvelopeError::TooManyChunks`] when the input needs more than 2^32 chunks. On
/// error, `output` holds an incomplete envelope that must be discarded
/// ([`encrypt_file`](super::encrypt_file) does that).
pub fn encrypt<R: Read, W: Write>(
    mut input: R,
    mut output: W,
    key: &[u8; KEY_LEN],
    header: &Header,
) -> Result<Stats, EnvelopeError> {
    let cipher = ChunkCipher::new(key, header);
    let header_bytes = header.to_bytes();
    output.write_all(&header_bytes).map_err(EnvelopeError::Write)?;
    let mut stats = Stats { envelope_bytes: header_bytes.len() as u64, ..Stats::default() };

    let chunk = header.chunk_size() as usize;
    // One buffer: the plaintext chunk plus one lookahead byte on read, then the sealed
    // chunk and its tag in the same place on write. It holds plaintext, so it is wiped
    // when dropped.
    let mut buf = Zeroizing::new(vec![0u8; chunk + TAG_LEN]);
    let mut filled = read_full(&mut input, &mut buf[..=chunk])?;
    let mut index: u32 = 0;
    loop {
        let last = filled <= chunk;
        let len = filled.min(chunk);
        // The lookahead byte is the first of the next chunk; keep it before the tag
        // overwrites it.
        let next_first = buf[chunk];
        let tag = cipher.seal(index, last, &mut buf[..len])?;
        buf[len..len + TAG_LEN].copy_from_slice(tag.as_ref());
        output.write_all(&buf[..len + TAG_LEN]).map_err(EnvelopeError::Write)?;
        stats.plaintext_bytes += len as u64;
        stats.envelope_bytes += (len + TAG_LEN) as u64;
        stats.chunks += 1;
        if last {
            break;
        }
        index = index.checked_add(1).ok_or(EnvelopeError::TooManyChunks { chunk_size: header.chunk_size() })?;
        buf[0] = next_first;
        filled = 1 + read_full(&mut input, &mut buf[1..=chunk])?;
    }
    output.flush().map_err(EnvelopeError::Write)?;
    Ok(stats)
}

/// Decrypts the chunks that follow `header` in `input` (positioned just after the
/// header, as [`read_header`](super::read_header) leaves it) under `key`, writes the
/// plaintext to `output`, and flushes it.
///
/// Every chunk is authenticated before its plaintext is written, but a stream cannot be
/// taken back: when a later chunk fails, `output` already holds the earlier ones and
/// must be discarded. [`decrypt_file`](super::decrypt_file) does that.
///
/// # Errors
/// [`EnvelopeError::ChunkAuthentication`] for a changed, moved or foreign chunk, a changed
/// header or the wrong key; [`EnvelopeError::Truncated`] when the file ends before its
/// final chunk; [`EnvelopeError::TrailingData`] when bytes follow the final chunk;
/// [`EnvelopeError::TooManyChunks`]; [`EnvelopeError::Read`] and
/// [`EnvelopeError::Write`] for I/O.
pub fn decrypt<R: Read, W: Write>(
    mut input: R,
    mut output: W,
    key: &[u8; KEY_LEN],
    header: &Header,
) -> Result<Stats, EnvelopeError> {
    let cipher = ChunkCipher::new(key, header);
    let mut stats = Stats { envelope_bytes: header.encoded_len() as u64, ..Stats::default() };

    let chunk = header.chunk_size() as usize;
    let record = chunk + TAG_LEN;
    // Ciphertext is read into one buffer and opened into another, so that a chunk that
    // fails can be tried again with the other last-chunk flag to tell truncation and
    // appended data apart from tampering. Only the plaintext buffer needs wiping.
    let mut sealed = vec![0u8; record + 1];
    let mut plain = Zeroizing::new(vec![0u8; chunk]);
    let mut filled = read_full(&mut input, &mut sealed[..=record])?;
    let mut index: u32 = 0;
    loop {
        let last = filled <= record;
        let len = filled.min(record);
        if len < TAG_LEN {
            // Not even a tag left: the file was cut inside a chunk or right after the
            // header.
            return Err(EnvelopeError::Truncated { chunks: u64::from(index) });
        }
        let (ciphertext, tag) = sealed[..len].split_at(len - TAG_LEN);
        let out = &mut plain[..ciphertext.len()];
        if cipher.open(index, last, ciphertext, tag, out).is_err() {
            return Err(diagnose(&cipher, index, last, ciphertext, tag, out));
        }
        output.write_all(out).map_err(EnvelopeError::Write)?;
        stats.plaintext_bytes += out.len() as u64;
        stats.envelope_bytes += len as u64;
        stats.chunks += 1;
        if last {
            break;
        }
        index = index.checked_add(1).ok_or(EnvelopeError::TooManyChunks { chunk_size: header.chunk_size() })?;
        sealed[0] = sealed[record];
        filled = 1 + read_full(&mut input, &mut sealed[1..=record])?;
    }
    output.flush().map_err(EnvelopeError::Write)?;
    Ok(stats)
}

/// Names the failure of chunk `index`, which did not open with the flag its position
/// implied. If it opens with the other flag, the chunk itself is authentic and its place
/// in the file is what is wrong: a non-final chunk at the end of the file means the
/// rest was cut off; a final chunk with bytes after it means something was appended.
/// Otherwise the chunk, the header or the key is wrong.
fn diagnose(
    cipher: &ChunkCipher,
    index: u32,
    last: bool,
    ciphertext: &[u8],
    tag: &[u8],
    scratch: &mut [u8],
) -> EnvelopeError {
    let authentic_elsewhere = cipher.open(index, !last, ciphertext, tag, scratch).is_ok();
    // The scratch buffer may now hold plaintext that is never written; wipe it now rather
    // than when the stream ends.
    zeroize::Zeroize::zeroize(scratch);
    match (authentic_elsewhere, last) {
        (true, true) => EnvelopeError::Truncated { chunks: u64::from(index) + 1 },
        (true, false) => EnvelopeError::TrailingData { index: u64::from(index) },
        (false, _) => EnvelopeError::ChunkAuthentication { index: u64::from(index) },
    }
}

/// The AES-256-GCM key with what every chunk's nonce and associated data share.
struct ChunkCipher {
    key: LessSafeKey,
    nonce_prefix: [u8; NONCE_PREFIX_LEN],
    header_digest: [u8; 32],
}

impl ChunkCipher {
    fn new(key: &[u8; KEY_LEN], header: &Header) -> Self {
        // A 32-byte slice is always a valid AES-256 key, so this cannot fail.
        let key = UnboundKey::new(&AES_256_GCM, key).expect("32-byte aes-256 key");
        Self { key: LessSafeKey::new(key), nonce_prefix: *header.nonce_prefix(), header_digest: header.digest() }
    }

    /// Nonce prefix (7) ‖ index (4, big-endian) ‖ last flag (1).
    fn nonce(&self, index: u32, last: bool) -> Nonce {
        let mut nonce = [0u8; 12];
        nonce[..NONCE_PREFIX_LEN].copy_from_slice(&self.nonce_prefix);
        nonce[NONCE_PREFIX_LEN..11].copy_from_slice(&index.to_be_bytes());
        nonce[11] = u8::from(last);
        Nonce::assume_unique_for_key(nonce)
    }

    /// Header digest (32) ‖ index (4, big-endian) ‖ last flag (1).
    fn aad(&self, index: u32, last: bool) -> Aad<[u8; 37]> {
        let mut aad = [0u8; 37];
        aad[..32].copy_from_slice(&self.header_digest);
        aad[32..36].copy_from_slice(&index.to_be_bytes());
        aad[36] = u8::from(last);
        Aad::from(aad)
    }

    /// Encrypts `in_out` in place and returns its tag.
    fn seal(&self, index: u32, last: bool, in_out: &mut [u8]) -> Result<Tag, EnvelopeError> {
        self.key
            .seal_in_place_separate_tag(self.nonce(index, last), self.aad(index, last), in_out)
            .map_err(|_| EnvelopeError::Seal { index: u64::from(index) })
    }

    fn open(
        &self,
        index: u32,
        last: bool,
        ciphertext: &[u8],
        tag: &[u8],
        out: &mut [u8],
    ) -> Result<(), aws_lc_rs::error::Unspecified> {
        self.key.open_separate_gather(self.nonce(index, last), self.aad(index, last), ciphertext, tag, out)
    }
}

/// Reads until `buf` is full or the input ends; returns how many bytes were read.
/// (`Read::read` may return short counts anywhere, and a chunk boundary must not depend
/// on how the input happens to be split.)
pub(super) fn read_full<R: Read>(input: &mut R, buf: &mut [u8]) -> Result<usize, EnvelopeError> {
    let mut filled = 0;
    while filled < buf.len() {
        match input.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(EnvelopeError::Read(e)),
        }
    }
    Ok(filled)
}
