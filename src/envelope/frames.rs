//! Streaming the body and footer of a version 2 message: [`encrypt_message`] and
//! [`decrypt_message`] between any `Read` and `Write`, frame by frame.
//!
//! Each direction allocates its frame buffers once and reuses them, so memory does not
//! grow with the input. Encryption writes every full frame as a regular frame and ends
//! with a final frame of what is left, 0 to frame length - 1 bytes: an input that is a
//! multiple of the frame length ends with an empty final frame. The specification allows
//! that (message-body.md, "Final Frame": the final frame "SHOULD be equal to the frame
//! length but MAY be 0"), and it is the only form the Python SDK and its CLI read: they
//! refuse a final frame as long as the frame length. Decryption accepts both.
//!
//! For a signed suite every byte of header and body goes through SHA-384 as it is
//! written or read, on a second thread so that hashing overlaps AES-GCM and I/O, and the
//! footer's ECDSA signature is made or checked over that digest at the end: nothing is
//! held back in memory beyond a few hashing buffers.

use std::io::{self, Read, Write};
use std::sync::mpsc;

use aws_lc_rs::digest;
use zeroize::Zeroizing;

use super::EnvelopeError;
use super::format::{KEY_LEN, TAG_LEN};
use super::message::{
    EncryptedDataKey, EncryptionContext, IV_LEN, MessageHeader, NewHeader, Signer, Suite, frame_iv, max_signature_len,
};
use super::stream::{Stats, read_full};

/// Marks the final frame (message-body.md, "Sequence Number End").
const FINAL_FRAME_MARKER: [u8; 4] = [0xFF; 4];

/// What a new message is made of, besides its plaintext.
pub struct EncryptMaterials<'a> {
    pub suite: Suite,
    /// The full encryption context: for a signed suite it must hold
    /// `aws-crypto-public-key` with [`Signer::public_key_base64`] of `signer`.
    pub context: &'a EncryptionContext,
    pub data_keys: &'a [EncryptedDataKey],
    /// The plaintext data key the encrypted data keys wrap.
    pub data_key: &'a [u8; KEY_LEN],
    /// The signing key, for a signed suite only.
    pub signer: Option<&'a Signer>,
    pub frame_length: u32,
}

/// Writes a whole message (header, frames, and for a signed suite the footer) with the
/// plaintext read from `input`, and flushes `output`. Returns the header written.
///
/// # Errors
/// As [`MessageHeader::seal`]; [`EnvelopeError::Context`] when the suite and signer do
/// not agree; [`EnvelopeError::TooManyChunks`] past 2^32 - 1 frames;
/// [`EnvelopeError::Read`] and [`EnvelopeError::Write`]. On error `output` holds an
/// incomplete message that must be discarded
/// ([`encrypt_message_file`](super::encrypt_message_file) does that).
pub fn encrypt_message<R: Read, W: Write>(
    input: R,
    output: W,
    m: &EncryptMaterials<'_>,
) -> Result<(MessageHeader, Stats), EnvelopeError> {
    let signer = match (m.suite.is_signed(), m.signer) {
        (true, Some(s)) => {
            let named = m.context.get(super::message::PUBLIC_KEY_CONTEXT_KEY);
            if named.map(String::as_str) != Some(s.public_key_base64().as_str()) {
                return Err(EnvelopeError::Context("the context's public key is not the signer's".into()));
            }
            Some(s)
        }
        (false, None) => None,
        (true, None) => return Err(EnvelopeError::Context("a signed suite needs a signer".into())),
        (false, Some(_)) => return Err(EnvelopeError::Context("an unsigned suite takes no signer".into())),
    };
    let new = NewHeader { suite: m.suite, context: m.context, data_keys: m.data_keys, frame_length: m.frame_length };
    let (header, key) = MessageHeader::seal(&new, m.data_key)?;
    let stats = std::thread::scope(|scope| encrypt_body(input, output, m, signer, &header, &key, scope))?;
    Ok((header, stats))
}

/// The body and footer of [`encrypt_message`], with the signature's hash on a thread of
/// `scope`.
fn encrypt_body<'scope, R: Read, W: Write>(
    mut input: R,
    output: W,
    m: &EncryptMaterials<'_>,
    signer: Option<&Signer>,
    header: &MessageHeader,
    key: &super::message::FrameKey,
    scope: &'scope std::thread::Scope<'scope, '_>,
) -> Result<Stats, EnvelopeError> {
    let mut sink = Sink { out: output, hash: signer.map(|_| Hasher::spawn(scope)), written: 0 };
    sink.put(header.as_bytes())?;

    let frame = m.frame_length as usize;
    // One plaintext frame, sealed in place. Wiped when dropped.
    let mut buf = Zeroizing::new(vec![0u8; frame]);
    let mut stats = Stats::default();
    let mut seq: u32 = 1;
    loop {
        let len = read_full(&mut input, &mut buf[..])?;
        let last = len < frame;
        let tag = key.seal(seq, last, &mut buf[..len])?;
        if last {
            sink.put(&FINAL_FRAME_MARKER)?;
        }
        sink.put(&seq.to_be_bytes())?;
        sink.put(&frame_iv(seq))?;
        if last {
            // len <= frame <= MAX_FRAME_LENGTH, so it fits a u32.
            sink.put(&(len as u32).to_be_bytes())?;
        }
        sink.put(&buf[..len])?;
        sink.put(&tag)?;
        stats.plaintext_bytes += len as u64;
        stats.chunks += 1;
        if last {
            break;
        }
        // A regular frame's number must not read as the final-frame marker.
        seq = seq
            .checked_add(1)
            .filter(|s| *s < u32::MAX)
            .ok_or(EnvelopeError::TooManyChunks { chunk_size: m.frame_length })?;
    }
    if let (Some(signer), Some(hash)) = (signer, sink.hash.take()) {
        let sig = signer.sign(&hash.finish().ok_or(EnvelopeError::Sign)?)?;
        sink.put(&(sig.len() as u16).to_be_bytes())?;
        sink.put(&sig)?;
    }
    sink.out.flush().map_err(EnvelopeError::Write)?;
    stats.envelope_bytes = sink.written;
    Ok(stats)
}

/// Decrypts the body that follows `header` in `input` (positioned just after it, as
/// [`read_message_header`](super::read_message_header) leaves it) with `data_key`,
/// writing the plaintext to `output`, then checks the footer's signature for a signed
/// suite and that nothing follows the message.
///
/// The key commitment and header tag are checked first. Every frame is authenticated
/// before its plaintext is written, but a stream cannot be taken back: when a later
/// frame or the signature fails, `output` holds the earlier frames and must be
/// discarded. [`decrypt_message_file`](super::decrypt_message_file) does that.
///
/// # Errors
/// [`EnvelopeError::Commitment`], [`EnvelopeError::HeaderAuthentication`],
/// [`EnvelopeError::FrameAuthentication`], [`EnvelopeError::FrameOrder`],
/// [`EnvelopeError::MessageTruncated`], [`EnvelopeError::SignatureInvalid`],
/// [`EnvelopeError::MessageTrailingData`], [`EnvelopeError::FieldOutOfRange`],
/// [`EnvelopeError::Read`], [`EnvelopeError::Write`].
pub fn decrypt_message<R: Read, W: Write>(
    mut input: R,
    mut output: W,
    header: &MessageHeader,
    data_key: &[u8; KEY_LEN],
) -> Result<Stats, EnvelopeError> {
    let key = header.open(data_key)?;
    let verifier = header.verifier()?;
    std::thread::scope(|scope| decrypt_body(&mut input, &mut output, header, &key, verifier, scope))
}

/// The body and footer of [`decrypt_message`], with the signature's hash on a thread of
/// `scope`.
fn decrypt_body<'scope, R: Read, W: Write>(
    mut input: R,
    mut output: W,
    header: &MessageHeader,
    key: &super::message::FrameKey,
    verifier: Option<super::message::Verifier>,
    scope: &'scope std::thread::Scope<'scope, '_>,
) -> Result<Stats, EnvelopeError> {
    let mut src = Source { input: &mut input, hash: verifier.as_ref().map(|_| Hasher::spawn(scope)) };
    if let Some(h) = src.hash.as_mut() {
        h.update(header.as_bytes());
    }
    let mut stats = Stats { envelope_bytes: header.as_bytes().len() as u64, ..Stats::default() };

    let frame = header.frame_length() as usize;
    let mut sealed = vec![0u8; frame];
    let mut plain = Zeroizing::new(vec![0u8; frame]);
    let mut expected: u32 = 1;
    loop {
        let first: [u8; 4] = src.array()?;
        let last = first == FINAL_FRAME_MARKER;
        let seq = if last { u32::from_be_bytes(src.array()?) } else { u32::from_be_bytes(first) };
        if seq != expected {
            return Err(EnvelopeError::FrameOrder { expected, found: seq });
        }
        let iv: [u8; IV_LEN] = src.array()?;
        if iv != frame_iv(seq) {
            return Err(EnvelopeError::FrameAuthentication { seq });
        }
        let len = if last {
            let len = u32::from_be_bytes(src.array()?);
            if len > header.frame_length() {
                return Err(EnvelopeError::FieldOutOfRange {
                    field: "final frame content length",
                    value: u64::from(len),
                    min: 0,
                    max: u64::from(header.frame_length()),
                });
            }
            len as usize
        } else {
            frame
        };
        src.exact(&mut sealed[..len])?;
        let tag: [u8; TAG_LEN] = src.array()?;
        key.open(seq, last, &sealed[..len], &tag, &mut plain[..len])?;
        output.write_all(&plain[..len]).map_err(EnvelopeError::Write)?;
        stats.plaintext_bytes += len as u64;
        stats.envelope_bytes += (if last { 4 + 4 + IV_LEN + 4 } else { 4 + IV_LEN } + len + TAG_LEN) as u64;
        stats.chunks += 1;
        if last {
            break;
        }
        expected = expected.checked_add(1).ok_or(EnvelopeError::FrameOrder { expected, found: u32::MAX })?;
    }
    if let Some(verifier) = verifier {
        let hash = src.hash.take().ok_or(EnvelopeError::SignatureInvalid)?;
        let len = usize::from(u16::from_be_bytes(src.array()?));
        if len == 0 || len > max_signature_len() {
            return Err(EnvelopeError::SignatureInvalid);
        }
        let mut sig = vec![0u8; len];
        src.exact(&mut sig)?;
        verifier.verify(&hash.finish().ok_or(EnvelopeError::SignatureInvalid)?, &sig)?;
        stats.envelope_bytes += 2 + len as u64;
    }
    let mut extra = [0u8; 1];
    loop {
        match src.input.read(&mut extra) {
            Ok(0) => break,
            Ok(_) => return Err(EnvelopeError::MessageTrailingData),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(EnvelopeError::Read(e)),
        }
    }
    output.flush().map_err(EnvelopeError::Write)?;
    Ok(stats)
}

/// Bytes handed to the hashing thread at a time: large enough to make the hand-over
/// cheap, small enough to keep its buffers near 1 MiB whatever the frame length.
const HASH_BATCH: usize = 256 * 1024;

/// Buffers circulating between the stream and the hashing thread; bounds its memory.
const HASH_BUFFERS: usize = 4;

/// SHA-384 of a signed message computed on a second thread, so that hashing, the
/// largest cost of a signed message, overlaps AES-GCM and I/O instead of adding to
/// them. Bytes are batched into buffers that go to the thread in order and come back
/// for reuse.
struct Hasher<'scope> {
    pending: Vec<u8>,
    to_thread: Option<mpsc::SyncSender<Vec<u8>>>,
    returned: mpsc::Receiver<Vec<u8>>,
    made: usize,
    thread: std::thread::ScopedJoinHandle<'scope, digest::Digest>,
}

impl<'scope> Hasher<'scope> {
    fn spawn(scope: &'scope std::thread::Scope<'scope, '_>) -> Self {
        let (to_thread, work) = mpsc::sync_channel::<Vec<u8>>(HASH_BUFFERS);
        let (give_back, returned) = mpsc::channel();
        let thread = scope.spawn(move || {
            let mut ctx = digest::Context::new(&digest::SHA384);
            for buf in work {
                ctx.update(&buf);
                // The stream may have ended with an error; a buffer nobody takes back is
                // simply dropped.
                let _ = give_back.send(buf);
            }
            ctx.finish()
        });
        Self { pending: Vec::with_capacity(HASH_BATCH), to_thread: Some(to_thread), returned, made: 1, thread }
    }

    fn update(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let n = bytes.len().min(HASH_BATCH - self.pending.len());
            self.pending.extend_from_slice(&bytes[..n]);
            bytes = &bytes[n..];
            if self.pending.len() == HASH_BATCH {
                self.hand_over();
            }
        }
    }

    fn hand_over(&mut self) {
        let next = if self.made < HASH_BUFFERS {
            self.made += 1;
            Vec::with_capacity(HASH_BATCH)
        } else {
            // Every buffer is out: wait for the thread to finish one. If it is gone, a
            // fresh buffer keeps the stream going and finish() reports the failure.
            self.returned.recv().unwrap_or_else(|_| Vec::with_capacity(HASH_BATCH))
        };
        let full = std::mem::replace(&mut self.pending, next);
        self.pending.clear();
        if let Some(tx) = &self.to_thread
            && tx.send(full).is_err()
        {
            self.to_thread = None;
        }
    }

    /// The digest of everything passed to `update`, or `None` if the thread failed.
    fn finish(mut self) -> Option<digest::Digest> {
        let last = std::mem::take(&mut self.pending);
        let tx = self.to_thread.take()?;
        tx.send(last).ok()?;
        drop(tx);
        self.thread.join().ok()
    }
}

/// The output, with the running digest of a signed message.
struct Sink<'scope, W: Write> {
    out: W,
    hash: Option<Hasher<'scope>>,
    written: u64,
}

impl<W: Write> Sink<'_, W> {
    fn put(&mut self, bytes: &[u8]) -> Result<(), EnvelopeError> {
        if let Some(h) = self.hash.as_mut() {
            h.update(bytes);
        }
        self.out.write_all(bytes).map_err(EnvelopeError::Write)?;
        self.written += bytes.len() as u64;
        Ok(())
    }
}

/// The input, with the running digest of a signed message.
struct Source<'a, 'scope, R: Read> {
    input: &'a mut R,
    hash: Option<Hasher<'scope>>,
}

impl<R: Read> Source<'_, '_, R> {
    fn exact(&mut self, buf: &mut [u8]) -> Result<(), EnvelopeError> {
        self.input.read_exact(buf).map_err(|e| match e.kind() {
            io::ErrorKind::UnexpectedEof => EnvelopeError::MessageTruncated,
            _ => EnvelopeError::Read(e),
        })?;
        if let Some(h) = self.hash.as_mut() {
            h.update(buf);
        }
        Ok(())
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], EnvelopeError> {
        let mut b = [0u8; N];
        self.exact(&mut b)?;
        Ok(b)
    }
}
