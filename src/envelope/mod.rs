//! Envelope encryption of files of any size under a KMS data key, in the AWS Encryption
//! SDK message format.
//!
//! `snapferry envelope encrypt` asks KMS for a data key (`GenerateDataKey`, bound to the
//! encryption context), encrypts the file locally and writes an AWS Encryption SDK
//! message, version 2, framed, under one of the two committing algorithm suites: any
//! AWS Encryption SDK (Python, Java, C, JavaScript, .NET, Go, Rust) or
//! `aws-encryption-cli` decrypts it, and snapferry decrypts what they write.
//! `snapferry envelope decrypt` reads the header, has KMS decrypt the data key, and
//! decrypts the body. This module owns those KMS calls, made through the `Cloud` trait
//! as the SDKs' AWS KMS keyring makes them (`keyring.rs`: which keys may decrypt, one
//! Decrypt per allowed data key, the plaintext key in one wiped place), the file of a
//! prepared data key (`datakey.rs`), and everything between: the message format
//! (`message.rs`: suites, encryption context, header, key derivation, key commitment)
//! and the streaming body and footer (`frames.rs`), all on `aws-lc-rs` (AES-256-GCM,
//! HKDF-SHA512, ECDSA P-384, SHA-384). Apart from the keyring it makes no KMS call; it
//! holds no key beyond one call, and reads and writes through `std::io` one frame at a
//! time, so memory stays constant whatever the file size. Files written by earlier snapferry
//! versions in its own format (version 1, below) still decrypt; nothing writes them any
//! more but tests and benchmarks.
//!
//! # Using it
//!
//! Encrypt: for the signed suite make a [`Signer`] and put its
//! [`Signer::public_key_base64`] in the context under [`PUBLIC_KEY_CONTEXT_KEY`]; have
//! KMS generate a data key with that context; then [`encrypt_message`] or
//! [`encrypt_message_file`] with [`EncryptMaterials`].
//!
//! Decrypt: [`read_envelope_file`] (or [`read_message_header`]), pick an encrypted data
//! key from [`MessageHeader::data_keys`] and have KMS decrypt it with
//! [`MessageHeader::context`]; then [`decrypt_message`] with the reader left just after
//! the header, or [`decrypt_message_file`] with the paths: the key commitment, the header
//! tag, every frame, and for the signed suite the signature are checked, and the file
//! variant writes nothing unless all of them pass.
//!
//! # The message format
//!
//! As the public specification (aws-encryption-sdk-specification, `data-format/` and
//! `framework/algorithm-suites.md`) defines it; all integers big-endian:
//!
//! - header body: version `0x02`, suite id (2: `0x0578` signed, `0x0478` unsigned),
//!   message id (32, random), encryption context (2-byte length, then pair count and
//!   pairs sorted by key), encrypted data keys (count, then provider id `aws-kms`,
//!   provider info = key ARN, `CiphertextBlob`, each with a 2-byte length), content type
//!   `0x02` (framed), frame length (4), commit key (32);
//! - header tag (16): AES-256-GCM over nothing, IV zero, AAD the header body;
//! - regular frames: sequence number (4, from 1), IV (12: the sequence number padded),
//!   ciphertext (frame length), tag (16);
//! - final frame: `FF FF FF FF`, sequence number, IV, content length (4, below the frame
//!   length), ciphertext, tag;
//! - frame AAD: message id ‖ "AWSKMSEncryptionClient Frame" or "… Final Frame" ‖
//!   sequence number (4) ‖ plaintext length (8);
//! - signed suite only, the footer: signature length (2) and the DER ECDSA P-384
//!   signature over the SHA-384 of header and body; the public key is in the context
//!   under `aws-crypto-public-key` (base64 of the compressed point).
//!
//! Keys: HKDF-SHA512 of the data key with the message id as salt; the AES key takes info
//! suite id ‖ "DERIVEKEY", the commit key "COMMITKEY". The commit key in the header is
//! compared in constant time before anything else, so a message decrypts to one
//! plaintext only, whatever data key is offered.
//!
//! # The older snapferry envelope format, version 1
//!
//! Read (never written) by `envelope decrypt`, recognised by its magic bytes.
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

pub mod datakey;
mod error;
mod file;
mod format;
mod frames;
pub mod keyring;
mod message;
mod stream;

pub use error::EnvelopeError;
pub use file::{
    EnvelopeFile, decrypt_file, decrypt_message_file, discard_unfinished_outputs, encrypt_file, encrypt_message_file,
    read_envelope_file, read_header_file,
};
pub use format::{
    DEFAULT_CHUNK_SIZE, FORMAT_VERSION, Header, KEY_LEN, MAGIC, MAX_CHUNK_SIZE, MAX_ENCRYPTED_KEY_LEN, MAX_KEY_ARN_LEN,
    MIN_CHUNK_SIZE, NONCE_PREFIX_LEN, TAG_LEN, read_header,
};
pub use frames::{EncryptMaterials, decrypt_message, encrypt_message};
pub use keyring::{Allowed, DataKey, KeyringError};
pub use message::{
    COMMIT_KEY_LEN, DEFAULT_FRAME_LENGTH, DEFAULT_MAX_ENCRYPTED_DATA_KEYS, EncryptedDataKey, EncryptionContext,
    KMS_PROVIDER_ID, MAX_FRAME_LENGTH, MESSAGE_ID_LEN, MESSAGE_VERSION, MessageHeader, PUBLIC_KEY_CONTEXT_KEY,
    RESERVED_CONTEXT_PREFIX, Signer, Suite, check_user_context, parse_context_bytes, read_message_header,
    serialize_context,
};
pub use stream::{Stats, decrypt, encrypt};
