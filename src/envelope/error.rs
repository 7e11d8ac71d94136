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
