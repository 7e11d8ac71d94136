//! The AWS Encryption SDK message format, version 2: the two committing algorithm suites,
//! the encryption context and its serialization, encrypted data keys, and the message
//! header (its bytes, the key derivation, the key commitment and the header
//! authentication tag).
//!
//! Everything here follows the public specification (aws-encryption-sdk-specification:
//! `data-format/message-header.md`, `framework/algorithm-suites.md`,
//! `framework/transitive-requirements.md`, `framework/structures.md`). The cryptography is
//! `aws-lc-rs`: HKDF-SHA512, AES-256-GCM, ECDSA P-384 with SHA-384.
//!
//! A [`MessageHeader`] keeps the exact bytes it was read from or written as, so the
//! signature and the header check never depend on re-encoding it.

use std::collections::BTreeMap;
use std::io::{self, Read};

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use aws_lc_rs::hkdf;
use aws_lc_rs::signature::{self, EcdsaKeyPair, KeyPair};
use base64::Engine;
use zeroize::Zeroizing;

use super::EnvelopeError;
use super::format::{KEY_LEN, TAG_LEN};

/// Key-value pairs bound to the message and to the KMS data key; sorted by key, as the
/// format serializes them.
pub type EncryptionContext = BTreeMap<String, String>;

/// The message format version this module writes and reads.
pub const MESSAGE_VERSION: u8 = 0x02;

/// Length of a version 2 message id (message-header.md, "Header Body Version 2.0").
pub const MESSAGE_ID_LEN: usize = 32;

/// Length of the commit key stored as the suite data of both committing suites
/// (algorithm-suites.md, "Algorithm Suite Data Length").
pub const COMMIT_KEY_LEN: usize = 32;

/// AES-GCM IV length of every suite (algorithm-suites.md, "IV Length").
pub const IV_LEN: usize = 12;

/// Content type of framed data (message-header.md, "Supported Content Types").
pub const CONTENT_TYPE_FRAMED: u8 = 0x02;

/// Key provider id of data keys wrapped by AWS KMS (aws-kms-keyring.md, OnEncrypt).
pub const KMS_PROVIDER_ID: &str = "aws-kms";

/// Encryption context key holding the signing public key of a signed message
/// (structures.md, "Encryption Context"; default-cmm.md).
pub const PUBLIC_KEY_CONTEXT_KEY: &str = "aws-crypto-public-key";

/// Keys under this prefix are reserved for the SDKs; a user's context may not use them.
pub const RESERVED_CONTEXT_PREFIX: &str = "aws-crypto-";

/// Plaintext bytes per frame unless `--frame-length` says otherwise. Chosen with
/// `SNAPFERRY_BENCH_FRAMES=4096,65536,1048576,4194304 cargo bench --bench envelope`
/// (unsigned, 1 GiB, release, 2 cores): encrypt to a file 2.1, 2.4, 2.9, 1.8 GB/s;
/// decrypt 4.1, 4.7, 6.2, 6.6 GB/s. 1 MiB is fastest to encrypt and near the best to
/// decrypt at a quarter of the memory of 4 MiB (a stream holds about two frames), and is
/// a multiple of 128 bytes, which the Python SDK and CLI ask of a frame length when they
/// encrypt.
pub const DEFAULT_FRAME_LENGTH: u32 = 1 << 20;

/// Largest frame length read or written. The format allows up to 2^32 - 1, but a reader
/// holds two frames in memory: this caps what a hostile header can make it allocate at
/// about 128 MiB.
pub const MAX_FRAME_LENGTH: u32 = 64 << 20;

/// Encrypted data keys accepted in one message unless `--max-encrypted-data-keys` says
/// otherwise (client.md, "Maximum Number Of Encrypted Data Keys": the SDKs let the
/// caller bound it, to keep a hostile message from causing many KMS calls).
pub const DEFAULT_MAX_ENCRYPTED_DATA_KEYS: u16 = 10;

/// Longest DER ECDSA P-384 signature: SEQUENCE of two INTEGERs of up to 49 bytes.
const MAX_SIGNATURE_LEN: usize = 2 + 2 * (2 + 49) + 2;

const DERIVE_KEY_INFO: &[u8] = b"DERIVEKEY";
const COMMIT_KEY_INFO: &[u8] = b"COMMITKEY";

/// The two algorithm suites written and read: both commit to the data key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Suite {
    /// `AES_256_GCM_HKDF_SHA512_COMMIT_KEY` (0x0478): no signature.
    CommitKey,
    /// `AES_256_GCM_HKDF_SHA512_COMMIT_KEY_ECDSA_P384` (0x0578): the SDKs' default,
    /// signed with an ECDSA P-384 key made for the message.
    CommitKeyEcdsaP384,
}

impl Suite {
    /// Both suites, the default first.
    pub const ALL: [Suite; 2] = [Suite::CommitKeyEcdsaP384, Suite::CommitKey];

    /// The 2-byte algorithm suite id (algorithm-suites.md, "Supported Algorithm Suites").
    pub fn id(self) -> u16 {
        match self {
            Suite::CommitKey => 0x0478,
            Suite::CommitKeyEcdsaP384 => 0x0578,
        }
    }

    /// The suite's name as the SDKs and `aws-encryption-cli --algorithm` spell it.
    pub fn name(self) -> &'static str {
        match self {
            Suite::CommitKey => "AES_256_GCM_HKDF_SHA512_COMMIT_KEY",
            Suite::CommitKeyEcdsaP384 => "AES_256_GCM_HKDF_SHA512_COMMIT_KEY_ECDSA_P384",
        }
    }

    pub fn from_id(id: u16) -> Option<Suite> {
        Suite::ALL.into_iter().find(|s| s.id() == id)
    }

    /// A suite by name, ignoring case and an `ALG_` prefix.
    pub fn from_name(name: &str) -> Option<Suite> {
        let upper = name.to_ascii_uppercase();
        let bare = upper.strip_prefix("ALG_").unwrap_or(&upper);
        Suite::ALL.into_iter().find(|s| s.name() == bare)
    }

    /// Whether messages of this suite end with an ECDSA signature.
    pub fn is_signed(self) -> bool {
        self == Suite::CommitKeyEcdsaP384
    }
}

/// An encrypted data key as the header stores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncryptedDataKey {
    /// Who can unwrap it: `aws-kms` for KMS.
    pub provider_id: String,
    /// For KMS, the key ARN, as UTF-8 bytes.
    pub provider_info: Vec<u8>,
    /// For KMS, the `CiphertextBlob`.
    pub ciphertext: Vec<u8>,
}

impl EncryptedDataKey {
    /// A data key wrapped by the KMS key `key_arn`.
    pub fn kms(key_arn: &str, ciphertext: Vec<u8>) -> Self {
        Self { provider_id: KMS_PROVIDER_ID.to_owned(), provider_info: key_arn.as_bytes().to_vec(), ciphertext }
    }

    /// The KMS key ARN of a data key from KMS, if it is one.
    pub fn kms_key_arn(&self) -> Option<&str> {
        if self.provider_id != KMS_PROVIDER_ID {
            return None;
        }
        std::str::from_utf8(&self.provider_info).ok()
    }
}

/// The ECDSA P-384 key that signs one message; made for that message and dropped after.
pub struct Signer {
    pair: EcdsaKeyPair,
}

impl Signer {
    /// A fresh key pair.
    ///
    /// # Errors
    /// [`EnvelopeError::Random`] when the key cannot be generated.
    pub fn generate() -> Result<Self, EnvelopeError> {
        let pair =
            EcdsaKeyPair::generate(&signature::ECDSA_P384_SHA384_ASN1_SIGNING).map_err(|_| EnvelopeError::Random)?;
        Ok(Self { pair })
    }

    /// The public key as the encryption context carries it: base64 of the compressed
    /// point (structures.md, "aws-crypto-public-key").
    pub fn public_key_base64(&self) -> String {
        use aws_lc_rs::encoding::{AsBigEndian, EcPublicKeyCompressedBin};
        let point: EcPublicKeyCompressedBin<'_> =
            self.pair.public_key().as_be_bytes().expect("a generated p-384 key has a compressed form");
        base64::engine::general_purpose::STANDARD.encode(point.as_ref())
    }

    pub(super) fn sign(&self, digest: &aws_lc_rs::digest::Digest) -> Result<Vec<u8>, EnvelopeError> {
        let sig = self.pair.sign_digest(digest).map_err(|_| EnvelopeError::Sign)?;
        Ok(sig.as_ref().to_vec())
    }
}

/// The public key a signed message names in its encryption context.
pub(super) struct Verifier {
    key: signature::UnparsedPublicKey<Vec<u8>>,
}

impl Verifier {
    pub(super) fn verify(&self, digest: &aws_lc_rs::digest::Digest, sig: &[u8]) -> Result<(), EnvelopeError> {
        self.key.verify_digest(digest, sig).map_err(|_| EnvelopeError::SignatureInvalid)
    }
}

pub(super) const fn max_signature_len() -> usize {
    MAX_SIGNATURE_LEN
}

/// Checks a user's encryption context: no reserved key, and every key and value within
/// what the header can hold.
///
/// # Errors
/// [`EnvelopeError::Context`] naming the offending key.
pub fn check_user_context(context: &EncryptionContext) -> Result<(), EnvelopeError> {
    if let Some(key) = context.keys().find(|k| k.starts_with(RESERVED_CONTEXT_PREFIX)) {
        return Err(EnvelopeError::Context(format!(
            "key {key:?} starts with {RESERVED_CONTEXT_PREFIX:?}, which the format reserves; choose another key"
        )));
    }
    serialize_context(context).map(|_| ())
}

/// The encryption context serialized as the format does (structures.md,
/// "Serialization"): empty for an empty context, else the pair count and the pairs
/// sorted by key.
///
/// # Errors
/// [`EnvelopeError::Context`] when a key or value is empty or over 65,535 bytes, or the
/// whole is over 65,535 bytes (its length is a 2-byte field of the header).
pub fn serialize_context(context: &EncryptionContext) -> Result<Vec<u8>, EnvelopeError> {
    let mut out = Vec::new();
    if context.is_empty() {
        return Ok(out);
    }
    let count = u16::try_from(context.len())
        .map_err(|_| EnvelopeError::Context(format!("{} pairs; at most 65535 fit", context.len())))?;
    out.extend_from_slice(&count.to_be_bytes());
    for (k, v) in context {
        if k.is_empty() {
            return Err(EnvelopeError::Context("an empty key; give every pair a key".into()));
        }
        for part in [k, v] {
            let len = u16::try_from(part.len())
                .map_err(|_| EnvelopeError::Context(format!("the entry for key {k:?} is over 65535 bytes")))?;
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(part.as_bytes());
        }
    }
    if out.len() > usize::from(u16::MAX) {
        return Err(EnvelopeError::Context(format!("{} bytes serialized; at most 65535 fit", out.len())));
    }
    Ok(out)
}

/// The header of a version 2 message with framed content: what is needed to find the
/// data key and then to check and decrypt the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageHeader {
    suite: Suite,
    message_id: [u8; MESSAGE_ID_LEN],
    context: EncryptionContext,
    data_keys: Vec<EncryptedDataKey>,
    frame_length: u32,
    commit_key: [u8; COMMIT_KEY_LEN],
    /// Header body followed by the 16-byte authentication tag, exactly as in the file.
    raw: Vec<u8>,
}

/// Everything [`MessageHeader::seal`] needs for a new message.
pub struct NewHeader<'a> {
    pub suite: Suite,
    /// The full encryption context, `aws-crypto-public-key` included for a signed suite.
    pub context: &'a EncryptionContext,
    pub data_keys: &'a [EncryptedDataKey],
    pub frame_length: u32,
}

impl MessageHeader {
    /// Builds the header of a new message under `data_key`: a random message id, the
    /// commit key and the header authentication tag. Returns it with the derived key
    /// the body is encrypted under.
    ///
    /// # Errors
    /// [`EnvelopeError::FieldOutOfRange`] for a frame length of 0 or over
    /// [`MAX_FRAME_LENGTH`], or no or too many data keys; [`EnvelopeError::Context`] for
    /// a context that does not fit or does not match the suite;
    /// [`EnvelopeError::Random`].
    pub fn seal(new: &NewHeader<'_>, data_key: &[u8; KEY_LEN]) -> Result<(Self, FrameKey), EnvelopeError> {
        check_frame_length(new.frame_length)?;
        range("encrypted data key count", new.data_keys.len() as u64, 1, u64::from(u16::MAX))?;
        match (new.suite.is_signed(), new.context.contains_key(PUBLIC_KEY_CONTEXT_KEY)) {
            (true, false) => {
                return Err(EnvelopeError::Context(format!("a signed suite needs {PUBLIC_KEY_CONTEXT_KEY}")));
            }
            (false, true) => {
                return Err(EnvelopeError::Context(format!(
                    "an unsigned suite must not carry {PUBLIC_KEY_CONTEXT_KEY}"
                )));
            }
            _ => {}
        }
        let mut message_id = [0u8; MESSAGE_ID_LEN];
        aws_lc_rs::rand::fill(&mut message_id).map_err(|_| EnvelopeError::Random)?;
        let (key, commit_key) = derive(new.suite, &message_id, data_key);

        let context = serialize_context(new.context)?;
        let mut raw = Vec::new();
        raw.push(MESSAGE_VERSION);
        raw.extend_from_slice(&new.suite.id().to_be_bytes());
        raw.extend_from_slice(&message_id);
        raw.extend_from_slice(&(context.len() as u16).to_be_bytes());
        raw.extend_from_slice(&context);
        raw.extend_from_slice(&(new.data_keys.len() as u16).to_be_bytes());
        for edk in new.data_keys {
            for (field, bytes) in [
                ("key provider id length", edk.provider_id.as_bytes()),
                ("key provider information length", &edk.provider_info[..]),
                ("encrypted data key length", &edk.ciphertext[..]),
            ] {
                range(field, bytes.len() as u64, 0, u64::from(u16::MAX))?;
                raw.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
                raw.extend_from_slice(bytes);
            }
        }
        raw.push(CONTENT_TYPE_FRAMED);
        raw.extend_from_slice(&new.frame_length.to_be_bytes());
        raw.extend_from_slice(&*commit_key);
        let tag = key.header_tag(&raw)?;
        raw.extend_from_slice(&tag);

        let header = Self {
            suite: new.suite,
            message_id,
            context: new.context.clone(),
            data_keys: new.data_keys.to_vec(),
            frame_length: new.frame_length,
            commit_key: *commit_key,
            raw,
        };
        Ok((header, key))
    }

    /// Checks this header against `data_key`: the key commitment first (constant time),
    /// then the header authentication tag. Returns the key the body is decrypted under.
    ///
    /// # Errors
    /// [`EnvelopeError::Commitment`] when the data key is not the one the message was
    /// made with; [`EnvelopeError::HeaderAuthentication`] when the header was changed.
    pub fn open(&self, data_key: &[u8; KEY_LEN]) -> Result<FrameKey, EnvelopeError> {
        let (key, commit_key) = derive(self.suite, &self.message_id, data_key);
        aws_lc_rs::constant_time::verify_slices_are_equal(&*commit_key, &self.commit_key)
            .map_err(|_| EnvelopeError::Commitment)?;
        let (body, tag) = self.raw.split_at(self.raw.len() - TAG_LEN);
        key.check_header_tag(body, tag)?;
        Ok(key)
    }

    pub fn suite(&self) -> Suite {
        self.suite
    }

    pub fn message_id(&self) -> &[u8; MESSAGE_ID_LEN] {
        &self.message_id
    }

    /// The encryption context, `aws-crypto-public-key` included in a signed message.
    pub fn context(&self) -> &EncryptionContext {
        &self.context
    }

    pub fn data_keys(&self) -> &[EncryptedDataKey] {
        &self.data_keys
    }

    pub fn frame_length(&self) -> u32 {
        self.frame_length
    }

    /// The header's bytes, authentication tag included, as in the file.
    pub fn as_bytes(&self) -> &[u8] {
        &self.raw
    }

    /// The public key that must have signed a signed message.
    pub(super) fn verifier(&self) -> Result<Option<Verifier>, EnvelopeError> {
        if !self.suite.is_signed() {
            return Ok(None);
        }
        let encoded = self.context.get(PUBLIC_KEY_CONTEXT_KEY).ok_or(EnvelopeError::MissingPublicKey)?;
        let point = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .map_err(|_| EnvelopeError::InvalidHeader(format!("{PUBLIC_KEY_CONTEXT_KEY} is not base64")))?;
        Ok(Some(Verifier { key: signature::UnparsedPublicKey::new(&signature::ECDSA_P384_SHA384_ASN1, point) }))
    }
}

/// Reads and checks the structure of a version 2 message header at the start of
/// `input`, leaving `input` just after it. It proves nothing yet: [`MessageHeader::open`]
/// with the data key authenticates it.
///
/// At most `max_data_keys` encrypted data keys are accepted, and no allocation exceeds
/// the 2-byte lengths of the format.
///
/// # Errors
/// [`EnvelopeError::UnsupportedMessageVersion`], [`EnvelopeError::UnsupportedSuite`],
/// [`EnvelopeError::HeaderTruncated`], [`EnvelopeError::InvalidHeader`],
/// [`EnvelopeError::TooManyDataKeys`], [`EnvelopeError::FieldOutOfRange`],
/// [`EnvelopeError::Read`].
pub fn read_message_header<R: Read + ?Sized>(
    input: &mut R,
    max_data_keys: u16,
) -> Result<MessageHeader, EnvelopeError> {
    let mut rec = Recorder { input, raw: Vec::new() };
    let version = rec.u8()?;
    if version != MESSAGE_VERSION {
        return Err(EnvelopeError::UnsupportedMessageVersion(version));
    }
    let suite_id = rec.u16()?;
    let suite = Suite::from_id(suite_id).ok_or(EnvelopeError::UnsupportedSuite(suite_id))?;
    let mut message_id = [0u8; MESSAGE_ID_LEN];
    rec.exact(&mut message_id)?;

    let context_len = usize::from(rec.u16()?);
    let context_bytes = rec.bytes(context_len)?;
    let context = parse_context(&context_bytes)?;
    match (suite.is_signed(), context.contains_key(PUBLIC_KEY_CONTEXT_KEY)) {
        (true, false) => return Err(EnvelopeError::MissingPublicKey),
        (false, true) => {
            return Err(EnvelopeError::InvalidHeader(format!(
                "an unsigned message carries {PUBLIC_KEY_CONTEXT_KEY}: it was altered"
            )));
        }
        _ => {}
    }

    let count = rec.u16()?;
    if count == 0 {
        return Err(EnvelopeError::InvalidHeader("no encrypted data key".into()));
    }
    if count > max_data_keys {
        return Err(EnvelopeError::TooManyDataKeys { found: count, max: max_data_keys });
    }
    let mut data_keys = Vec::with_capacity(usize::from(count));
    for _ in 0..count {
        let len = usize::from(rec.u16()?);
        let provider_id = String::from_utf8(rec.bytes(len)?)
            .map_err(|_| EnvelopeError::InvalidHeader("a key provider id is not utf-8".into()))?;
        let len = usize::from(rec.u16()?);
        let provider_info = rec.bytes(len)?;
        let len = usize::from(rec.u16()?);
        let ciphertext = rec.bytes(len)?;
        data_keys.push(EncryptedDataKey { provider_id, provider_info, ciphertext });
    }

    let content_type = rec.u8()?;
    if content_type != CONTENT_TYPE_FRAMED {
        return Err(EnvelopeError::InvalidHeader(format!(
            "content type {content_type:#04x}: only framed content (0x02) is read; re-encrypt with a frame length"
        )));
    }
    let frame_length = u32::from_be_bytes(rec.array()?);
    check_frame_length(frame_length)?;
    let mut commit_key = [0u8; COMMIT_KEY_LEN];
    rec.exact(&mut commit_key)?;
    let mut tag = [0u8; TAG_LEN];
    rec.exact(&mut tag)?;
    Ok(MessageHeader { suite, message_id, context, data_keys, frame_length, commit_key, raw: rec.raw })
}

/// Parses a context serialized by [`serialize_context`].
///
/// # Errors
/// [`EnvelopeError::InvalidHeader`] for bytes that are not a serialized context.
pub fn parse_context_bytes(bytes: &[u8]) -> Result<EncryptionContext, EnvelopeError> {
    parse_context(bytes)
}

fn parse_context(bytes: &[u8]) -> Result<EncryptionContext, EnvelopeError> {
    let mut context = EncryptionContext::new();
    if bytes.is_empty() {
        return Ok(context);
    }
    let bad = |what: &str| EnvelopeError::InvalidHeader(format!("encryption context: {what}"));
    let mut pos = 0usize;
    let mut take = |n: usize| -> Result<&[u8], EnvelopeError> {
        let part = bytes.get(pos..pos + n).ok_or_else(|| bad("a length runs past its end"))?;
        pos += n;
        Ok(part)
    };
    let count = u16::from_be_bytes(take(2)?.try_into().expect("2 bytes"));
    if count == 0 {
        return Err(bad("a pair count of 0 with a non-empty context"));
    }
    for _ in 0..count {
        let mut text = || -> Result<String, EnvelopeError> {
            let len = usize::from(u16::from_be_bytes(take(2)?.try_into().expect("2 bytes")));
            String::from_utf8(take(len)?.to_vec()).map_err(|_| bad("an entry is not utf-8"))
        };
        let key = text()?;
        let value = text()?;
        if context.insert(key.clone(), value).is_some() {
            return Err(bad(&format!("key {key:?} appears twice")));
        }
    }
    if pos != bytes.len() {
        return Err(bad("bytes after the last pair"));
    }
    Ok(context)
}

fn check_frame_length(frame_length: u32) -> Result<(), EnvelopeError> {
    range("frame length", u64::from(frame_length), 1, u64::from(MAX_FRAME_LENGTH))
}

fn range(field: &'static str, value: u64, min: u64, max: u64) -> Result<(), EnvelopeError> {
    if (min..=max).contains(&value) { Ok(()) } else { Err(EnvelopeError::FieldOutOfRange { field, value, min, max }) }
}

/// Reads header fields while keeping every byte read.
struct Recorder<'a, R: Read + ?Sized> {
    input: &'a mut R,
    raw: Vec<u8>,
}

impl<R: Read + ?Sized> Recorder<'_, R> {
    fn exact(&mut self, buf: &mut [u8]) -> Result<(), EnvelopeError> {
        self.input.read_exact(buf).map_err(|e| match e.kind() {
            io::ErrorKind::UnexpectedEof => EnvelopeError::HeaderTruncated,
            _ => EnvelopeError::Read(e),
        })?;
        self.raw.extend_from_slice(buf);
        Ok(())
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], EnvelopeError> {
        let mut b = [0u8; N];
        self.exact(&mut b)?;
        Ok(b)
    }

    fn u8(&mut self) -> Result<u8, EnvelopeError> {
        Ok(self.array::<1>()?[0])
    }

    fn u16(&mut self) -> Result<u16, EnvelopeError> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    /// `len` bytes; `len` is at most 65,535 (a 2-byte length), so the allocation is bounded.
    fn bytes(&mut self, len: usize) -> Result<Vec<u8>, EnvelopeError> {
        let mut b = vec![0u8; len];
        self.exact(&mut b)?;
        Ok(b)
    }
}

/// Output length of both HKDF expansions: 32 bytes.
struct Len32;

impl hkdf::KeyType for Len32 {
    fn len(&self) -> usize {
        32
    }
}

/// HKDF-SHA512 with the message id as salt, extracted once, expanded twice
/// (transitive-requirements.md, "HKDF Encryption Key" and "HKDF Commit Key"): the
/// AES-256-GCM key (info: suite id ‖ "DERIVEKEY") and the commit key (info: "COMMITKEY").
fn derive(
    suite: Suite,
    message_id: &[u8; MESSAGE_ID_LEN],
    data_key: &[u8; KEY_LEN],
) -> (FrameKey, Zeroizing<[u8; 32]>) {
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA512, message_id).extract(data_key);
    let mut enc = Zeroizing::new([0u8; 32]);
    let mut commit = Zeroizing::new([0u8; 32]);
    let suite_id = suite.id().to_be_bytes();
    // Expanding 32 bytes from SHA-512 cannot exceed HKDF's 255 * 64 byte limit.
    prk.expand(&[&suite_id, DERIVE_KEY_INFO], Len32).and_then(|okm| okm.fill(&mut *enc)).expect("hkdf expand");
    prk.expand(&[COMMIT_KEY_INFO], Len32).and_then(|okm| okm.fill(&mut *commit)).expect("hkdf expand");
    let key = UnboundKey::new(&AES_256_GCM, &*enc).expect("32-byte aes-256 key");
    (FrameKey { key: LessSafeKey::new(key), message_id: *message_id }, commit)
}

/// Body AAD content strings (message-body-aad.md, "Body AAD Content").
const FRAME_AAD: &[u8] = b"AWSKMSEncryptionClient Frame";
const FINAL_FRAME_AAD: &[u8] = b"AWSKMSEncryptionClient Final Frame";

/// The derived AES-256-GCM key of one message, with what every frame's AAD shares.
pub struct FrameKey {
    key: LessSafeKey,
    message_id: [u8; MESSAGE_ID_LEN],
}

impl FrameKey {
    /// The header tag: AES-GCM over an empty plaintext, IV zero, AAD the header body
    /// followed by the serialized context to only authenticate, which is empty here
    /// (encrypt.md, "Construct the header").
    fn header_tag(&self, body: &[u8]) -> Result<[u8; TAG_LEN], EnvelopeError> {
        let tag = self
            .key
            .seal_in_place_separate_tag(Nonce::assume_unique_for_key([0; IV_LEN]), Aad::from(body), &mut [])
            .map_err(|_| EnvelopeError::Seal { index: 0 })?;
        let mut out = [0u8; TAG_LEN];
        out.copy_from_slice(tag.as_ref());
        Ok(out)
    }

    fn check_header_tag(&self, body: &[u8], tag: &[u8]) -> Result<(), EnvelopeError> {
        self.key
            .open_separate_gather(Nonce::assume_unique_for_key([0; IV_LEN]), Aad::from(body), &[], tag, &mut [])
            .map_err(|_| EnvelopeError::HeaderAuthentication)
    }

    /// Message id ‖ content string ‖ sequence number (4) ‖ plaintext length (8).
    fn aad(&self, seq: u32, last: bool, len: usize) -> Vec<u8> {
        let content = if last { FINAL_FRAME_AAD } else { FRAME_AAD };
        let mut aad = Vec::with_capacity(MESSAGE_ID_LEN + content.len() + 12);
        aad.extend_from_slice(&self.message_id);
        aad.extend_from_slice(content);
        aad.extend_from_slice(&seq.to_be_bytes());
        aad.extend_from_slice(&(len as u64).to_be_bytes());
        aad
    }

    pub(super) fn seal(&self, seq: u32, last: bool, in_out: &mut [u8]) -> Result<[u8; TAG_LEN], EnvelopeError> {
        let aad = self.aad(seq, last, in_out.len());
        let tag = self
            .key
            .seal_in_place_separate_tag(Nonce::assume_unique_for_key(frame_iv(seq)), Aad::from(&aad[..]), in_out)
            .map_err(|_| EnvelopeError::Seal { index: u64::from(seq) })?;
        let mut out = [0u8; TAG_LEN];
        out.copy_from_slice(tag.as_ref());
        Ok(out)
    }

    pub(super) fn open(
        &self,
        seq: u32,
        last: bool,
        ciphertext: &[u8],
        tag: &[u8],
        out: &mut [u8],
    ) -> Result<(), EnvelopeError> {
        let aad = self.aad(seq, last, ciphertext.len());
        self.key
            .open_separate_gather(
                Nonce::assume_unique_for_key(frame_iv(seq)),
                Aad::from(&aad[..]),
                ciphertext,
                tag,
                out,
            )
            .map_err(|_| EnvelopeError::FrameAuthentication { seq })
    }
}

/// A frame's IV: its sequence number, big-endian, left-padded with zeros to 12 bytes
/// (encrypt.md, "Construct a frame").
pub(super) fn frame_iv(seq: u32) -> [u8; IV_LEN] {
    let mut iv = [0u8; IV_LEN];
    iv[8..].copy_from_slice(&seq.to_be_bytes());
    iv
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(pairs: &[(&str, &str)]) -> EncryptionContext {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn context_serializes_sorted_by_utf8_bytes() {
        let c = ctx(&[("b", "2"), ("a", "1"), ("B", "3")]);
        let s = serialize_context(&c).unwrap();
        assert_eq!(&s[..2], &[0, 3]);
        assert_eq!(&s[2..7], &[0, 1, b'B', 0, 1]);
        assert_eq!(parse_context(&s).unwrap(), c);
        assert!(serialize_context(&EncryptionContext::new()).unwrap().is_empty());
    }

    #[test]
    fn reserved_and_oversized_contexts_are_refused() {
        assert!(check_user_context(&ctx(&[("aws-crypto-public-key", "x")])).is_err());
        assert!(check_user_context(&ctx(&[("k", &"v".repeat(70_000))])).is_err());
        assert!(check_user_context(&ctx(&[("", "v")])).is_err());
        assert!(check_user_context(&ctx(&[("purpose", "backup")])).is_ok());
    }

    #[test]
    fn header_round_trips_and_opens_only_with_its_key() {
        let c = ctx(&[("purpose", "backup")]);
        let keys = [EncryptedDataKey::kms("arn:aws:kms:us-east-1:111111111111:key/k", vec![9; 184])];
        let new = NewHeader { suite: Suite::CommitKey, context: &c, data_keys: &keys, frame_length: 4096 };
        let (header, _) = MessageHeader::seal(&new, &[7; 32]).unwrap();
        let bytes = header.as_bytes().to_vec();
        let mut input = &bytes[..];
        let read = read_message_header(&mut input, 1).unwrap();
        assert!(input.is_empty());
        assert_eq!(read, header);
        assert!(read.open(&[7; 32]).is_ok());
        assert!(matches!(read.open(&[8; 32]), Err(EnvelopeError::Commitment)));
        assert!(matches!(
            read_message_header(&mut &bytes[..], 0),
            Err(EnvelopeError::TooManyDataKeys { found: 1, max: 0 })
        ));
    }

    #[test]
    fn suites_by_name_and_id() {
        assert_eq!(Suite::from_name("aes_256_gcm_hkdf_sha512_commit_key"), Some(Suite::CommitKey));
        assert_eq!(
            Suite::from_name("ALG_AES_256_GCM_HKDF_SHA512_COMMIT_KEY_ECDSA_P384"),
            Some(Suite::CommitKeyEcdsaP384)
        );
        assert_eq!(Suite::from_id(0x0578), Some(Suite::CommitKeyEcdsaP384));
        assert_eq!(Suite::from_id(0x0178), None);
    }

    #[test]
    fn public_key_is_a_base64_compressed_point() {
        let s = Signer::generate().unwrap();
        let b = s.public_key_base64();
        assert_eq!(b.len(), 68);
        let raw = base64::engine::general_purpose::STANDARD.decode(&b).unwrap();
        assert_eq!(raw.len(), 49);
        assert!(raw[0] == 2 || raw[0] == 3);
    }
}
