//! Envelope encryption of files of any size under a KMS data key.
//!
//! `snapferry envelope encrypt` asks KMS for a data key (`GenerateDataKey`, AES_256),
//! encrypts the file locally with the plaintext key and keeps only the *encrypted* data
//! key, in the header of the output. `snapferry envelope decrypt` reads that header,
//! has KMS decrypt the data key, and decrypts the body. This module owns everything
//! between those KMS calls: the file format and the streaming AES-256-GCM (from
//! `aws-lc-rs`). It makes no KMS call, holds no key beyond one call, and reads and writes
//! through `std::io` in fixed-size chunks, so memory stays constant whatever the file size.
//!
//! # Using it
//!
//! Encrypt: build a [`Header`] with [`Header::new`] from the key ARN and encrypted data
//! key that `GenerateDataKey` returned (it draws a fresh random nonce prefix), then call
//! [`encrypt`] or [`encrypt_file`] with the plaintext data key.
//!
//! Decrypt: [`read_header`] (or [`read_header_file`]), have KMS decrypt
//! [`Header::encrypted_key`], then [`decrypt`] with the reader left just after the header,
//! or [`decrypt_file`] with the paths.
//!
//! The plaintext data key is borrowed as `&[u8; 32]` and only handed to `aws-lc-rs`; the
//! caller keeps it in a `zeroize::Zeroizing` so it is wiped when dropped. Plaintext
//! buffers here are wiped on drop too.
//!
//! # Format, version 1
//!
//! All integers are big-endian. The header:
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | magic: ASCII `SNAPFENV` |
//! | 8 | 1 | format version: `0x01` |
//! | 9 | 4 | chunk size `C`: plaintext bytes per chunk, 1 KiB to 16 MiB |
//! | 13 | 7 | nonce prefix: random per file |
//! | 20 | 2 | `A`: length of the key ARN, 1 to 2048 |
//! | 22 | `A` | key ARN, UTF-8: the KMS key the data key is encrypted under |
//! | 22+`A` | 2 | `E`: length of the encrypted data key, 1 to 6144 |
//! | 24+`A` | `E` | encrypted data key: KMS `CiphertextBlob`, opaque |
//!
//! Then chunks `0, 1, …, n-1`, `n >= 1`, back to back up to the end of the file. Each
//! chunk is the AES-256-GCM ciphertext of its plaintext (exactly as long) followed by the
//! 16-byte tag. Every chunk but the last holds exactly `C` plaintext bytes; the last one
//! holds 0 to `C` bytes. It is empty only when the whole input is empty: an input that
//! is a multiple of `C` long ends with a full chunk.
//!
//! Chunk `i` (with `i < 2^32`) is sealed with:
//!
//! - nonce (12 bytes) = nonce prefix (7) ‖ `i` as u32 (4) ‖ last flag (1: `0x01` on the
//!   final chunk, `0x00` otherwise);
//! - associated data (37 bytes) = SHA-256 of the header bytes above (32) ‖ `i` as u32 (4)
//!   ‖ last flag (1).
//!
//! This is the STREAM construction (Hoang, Reyhanitabar, Rogaway and Vizár, "Online
//! authenticated-encryption and its nonce-reuse misuse-resistance", 2015), with the
//! nonce layout of Tink's AES-GCM streaming AEAD. What it buys:
//!
//! - reordering, dropping or duplicating a chunk changes the index it is opened under:
//!   its tag fails;
//! - cutting the file anywhere, even exactly between two chunks, leaves a last chunk
//!   that was sealed with flag `0x00`: opened as final, its tag fails;
//! - bytes appended after the final chunk make it be opened as not final: its tag fails;
//! - every header byte is in every chunk's associated data, so a changed header (another
//!   key ARN, chunk size or nonce prefix) fails the first chunk;
//! - a random nonce prefix keeps nonces unique even if a data key were ever reused for a
//!   second file. KMS gives every file its own data key, so this is a second line.
//!
//! A reader must reject a version it does not know; any change to the layout above takes
//! a new version number.

mod error;
mod file;
mod format;
mod frames;
mod message;
mod stream;

pub use error::EnvelopeError;
pub use file::{
    EnvelopeFile, decrypt_file, decrypt_message_file, encrypt_file, encrypt_message_file, read_envelope_file,
    read_header_file,
};
pub use format::{
    DEFAULT_CHUNK_SIZE, FORMAT_VERSION, Header, KEY_LEN, MAGIC, MAX_CHUNK_SIZE, MAX_ENCRYPTED_KEY_LEN, MAX_KEY_ARN_LEN,
    MIN_CHUNK_SIZE, NONCE_PREFIX_LEN, TAG_LEN, read_header,
};
pub use frames::{EncryptMaterials, decrypt_message, encrypt_message};
pub use message::{
    COMMIT_KEY_LEN, DEFAULT_FRAME_LENGTH, DEFAULT_MAX_ENCRYPTED_DATA_KEYS, EncryptedDataKey, EncryptionContext,
    KMS_PROVIDER_ID, MAX_FRAME_LENGTH, MESSAGE_ID_LEN, MESSAGE_VERSION, MessageHeader, PUBLIC_KEY_CONTEXT_KEY,
    RESERVED_CONTEXT_PREFIX, Signer, Suite, check_user_context, parse_context_bytes, read_message_header,
    serialize_context,
};
pub use stream::{Stats, decrypt, encrypt};
