//! The one error type of the envelope module.
//!
//! Messages name what failed and, where a user can act, what it means. An I/O cause is
//! part of the message itself ("cannot open in.img: No such file or directory"), not a
//! separate `source()`, so a one-line rendering is complete and a chain renderer does
//! not print the cause twice.

use std::io;
use std::path::PathBuf;

/// Why encrypting, decrypting or reading an envelope failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EnvelopeError {
    /// The input does not start with the envelope magic bytes.
    #[error("not a snapferry envelope file")]
    NotEnvelope,

    /// The header carries a format version this build cannot read.
    #[error("unsupported envelope version {0}: this snapferry reads version 1; use a newer snapferry")]
    UnsupportedVersion(u8),

    /// The input ends inside the header.
    #[error("file ends inside the envelope header: truncated")]
    HeaderTruncated,

    /// A header field is outside what the format allows (a corrupt or hostile file, or
    /// a bad argument to [`Header::new`](super::Header::new)).
    #[error("envelope header field `{field}` is {value}, outside the allowed {min} to {max}")]
    FieldOutOfRange {
        /// The header field, as named in the format description.
        field: &'static str,
        /// The value found.
        value: u64,
        /// The smallest value allowed.
        min: u64,
        /// The largest value allowed.
        max: u64,
    },

    /// The key ARN in the header is not UTF-8.
    #[error("envelope header key arn is not valid utf-8")]
    KeyArnNotUtf8,

    /// A chunk's tag did not verify: the chunk was changed or moved, the header was
    /// changed, or the key is not the one the file was encrypted with.
    #[error("chunk {index} failed authentication: the file was modified, truncated or is not for this key")]
    ChunkAuthentication {
        /// Zero-based index of the chunk.
        index: u64,
    },

    /// The file ends where a chunk that is not the final one ends (or inside a chunk too
    /// short to be one): chunks are missing from its end.
    #[error("file ends before its final chunk: truncated after {chunks} chunks")]
    Truncated {
        /// How many complete chunks the file still has.
        chunks: u64,
    },

    /// The final chunk authenticated, but more bytes follow it.
    #[error("data after the final chunk (chunk {index}): the file was appended to")]
    TrailingData {
        /// Zero-based index of the authentic final chunk.
        index: u64,
    },

    /// The input needs more chunks than a nonce can count (2^32).
    #[error("input too large for one envelope: more than 2^32 chunks of {chunk_size} bytes; use a larger chunk size")]
    TooManyChunks {
        /// The chunk size in use.
        chunk_size: u32,
    },

    /// [`decrypt_file`](super::decrypt_file) found a different header in the file than
    /// the one it was given.
    #[error("the envelope header of {path} differs from the one read before: the file changed")]
    HeaderMismatch {
        /// The envelope file.
        path: PathBuf,
    },

    /// The system random number generator failed.
    #[error("cannot draw random bytes for the envelope nonce prefix")]
    Random,

    /// AES-256-GCM refused to seal a chunk (not expected with chunk sizes this format
    /// allows).
    #[error("aes-256-gcm failed to encrypt chunk {index}")]
    Seal {
        /// Zero-based index of the chunk.
        index: u64,
    },

    /// The input is neither a snapferry envelope nor a version 2 AWS Encryption SDK
    /// message.
    #[error(
        "unsupported message version {0:#04x}: this snapferry reads AWS Encryption SDK messages of version 2 \
         (committing suites) and its own envelopes; decrypt it with an AWS Encryption SDK"
    )]
    UnsupportedMessageVersion(u8),

    /// The message names an algorithm suite other than the two committing ones.
    #[error(
        "unsupported algorithm suite {0:#06x}: this snapferry reads AES_256_GCM_HKDF_SHA512_COMMIT_KEY (0x0478) \
         and AES_256_GCM_HKDF_SHA512_COMMIT_KEY_ECDSA_P384 (0x0578)"
    )]
    UnsupportedSuite(u16),

    /// A message header field breaks the format.
    #[error("invalid message header: {0}")]
    InvalidHeader(String),

    /// An encryption context that cannot be used.
    #[error("encryption context: {0}")]
    Context(String),

    /// The message carries more encrypted data keys than allowed.
    #[error(
        "the message has {found} encrypted data keys, more than the {max} allowed; \
         raise --max-encrypted-data-keys if it is trusted"
    )]
    TooManyDataKeys {
        /// Encrypted data keys in the header.
        found: u16,
        /// The limit.
        max: u16,
    },

    /// The data key does not match the key commitment in the header.
    #[error(
        "key commitment mismatch: the data key is not the one this message was encrypted with, or the header was altered"
    )]
    Commitment,

    /// The header authentication tag did not verify.
    #[error("message header failed authentication: the header was modified")]
    HeaderAuthentication,

    /// A frame's tag did not verify.
    #[error("frame {seq} failed authentication: the message was modified")]
    FrameAuthentication {
        /// The frame's sequence number (from 1).
        seq: u32,
    },

    /// Frames are out of order, missing or repeated.
    #[error("frame {found} found where frame {expected} belongs: frames were dropped, moved or repeated")]
    FrameOrder {
        /// The sequence number due.
        expected: u32,
        /// The sequence number found.
        found: u32,
    },

    /// The message ends before its final frame or footer.
    #[error("message ends before its final frame or signature: truncated")]
    MessageTruncated,

    /// Bytes follow the end of the message.
    #[error("data after the end of the message: the file was appended to")]
    MessageTrailingData,

    /// A signed message lacks its public key.
    #[error("signed message without aws-crypto-public-key in its encryption context: the header was altered")]
    MissingPublicKey,

    /// The footer signature did not verify.
    #[error("message signature failed verification: the message was modified")]
    SignatureInvalid,

    /// ECDSA signing failed.
    #[error("cannot sign the message with its ecdsa p-384 key")]
    Sign,

    /// Reading the input stream failed.
    #[error("cannot read the input: {0}")]
    Read(io::Error),

    /// Writing the output stream failed.
    #[error("cannot write the output: {0}")]
    Write(io::Error),

    /// A file operation failed.
    #[error("cannot {action} {}: {error}", path.display())]
    File {
        /// What was being done: "open", "read", "write", "create a temporary file in", ...
        action: &'static str,
        /// The file or directory it was done to.
        path: PathBuf,
        /// The cause.
        error: io::Error,
    },
}
