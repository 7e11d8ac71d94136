//! The envelope format end to end: round trips at every chunk edge, and every kind of
//! damage a stored or transferred file can suffer (changed bits, moved, dropped or added
//! chunks, truncation, a hostile header, the wrong key) being caught and named.

use std::fs;
use std::io::{self, Read};
use std::path::Path;

use proptest::prelude::*;
use snapferry::envelope::{
    DEFAULT_CHUNK_SIZE, EnvelopeError, Header, MIN_CHUNK_SIZE, Stats, TAG_LEN, decrypt, decrypt_file, encrypt,
    encrypt_file, read_header, read_header_file,
};
use zeroize::Zeroizing;

use crate::support::bytes::data;

/// Small chunks keep the multi-chunk cases fast; the format allows any size per header.
const CHUNK: u32 = 64 * 1024;
const C: usize = CHUNK as usize;
const RECORD: usize = C + TAG_LEN;
const ARN: &str = "arn:aws:kms:eu-west-1:222222222222:key/1234abcd-12ab-34cd-56ef-1234567890ab";

fn key() -> Zeroizing<[u8; 32]> {
    Zeroizing::new([0x42; 32])
}

fn other_key() -> Zeroizing<[u8; 32]> {
    let mut k = key();
    k[31] ^= 1;
    k
}

fn header(chunk_size: u32) -> Header {
    // 184 bytes: the size of a real CiphertextBlob for an AES_256 data key.
    Header::new(ARN, vec![0xA5; 184], chunk_size).expect("valid header")
}

fn seal_with(plain: &[u8], header: &Header) -> Vec<u8> {
    let mut out = Vec::new();
    encrypt(plain, &mut out, &key(), header).expect("encrypt");
    out
}

fn seal(plain: &[u8]) -> (Vec<u8>, usize) {
    let header = header(CHUNK);
    (seal_with(plain, &header), header.encoded_len())
}

fn open_with(envelope: &[u8], key: &[u8; 32]) -> Result<Vec<u8>, EnvelopeError> {
    let mut input = envelope;
    let header = read_header(&mut input)?;
    let mut out = Vec::new();
    decrypt(input, &mut out, key, &header)?;
    Ok(out)
}

fn open(envelope: &[u8]) -> Result<Vec<u8>, EnvelopeError> {
    open_with(envelope, &key())
}

/// Byte range of chunk `i` (ciphertext and tag) in an envelope whose header is `h` long.
fn chunk_range(h: usize, i: usize, total: usize) -> std::ops::Range<usize> {
    let start = h + i * RECORD;
    start..(start + RECORD).min(total)
}

#[test]
fn round_trips_at_every_chunk_edge() {
    for (len, chunks) in [(0, 1), (1, 1), (C - 1, 1), (C, 1), (C + 1, 2), (3 * C, 3), (3 * C + 1, 4)] {
        let plain = data(len);
        let header = header(CHUNK);
        let mut envelope = Vec::new();
        let sealed = encrypt(&plain[..], &mut envelope, &key(), &header).unwrap();
        let expected_len = header.encoded_len() + len + chunks * TAG_LEN;
        assert_eq!(
            sealed,
            Stats { plaintext_bytes: len as u64, envelope_bytes: expected_len as u64, chunks: chunks as u64 },
            "{len} bytes"
        );
        assert_eq!(envelope.len(), expected_len, "{len} bytes");

        let mut input = &envelope[..];
        let read = read_header(&mut input).unwrap();
        assert_eq!(read, header);
        let mut out = Vec::new();
        let opened = decrypt(input, &mut out, &key(), &read).unwrap();
        assert_eq!(opened, sealed, "{len} bytes");
        assert!(out == plain, "{len} bytes round trip");
    }
}

#[test]
fn default_chunk_size_round_trips() {
    let plain = data(DEFAULT_CHUNK_SIZE as usize + 5);
    let envelope = seal_with(&plain, &header(DEFAULT_CHUNK_SIZE));
    assert!(open(&envelope).unwrap() == plain);
}

/// A reader that hands out at most a few bytes per call, as pipes and sockets may.
struct Trickle<'a> {
    data: &'a [u8],
    step: usize,
}

impl Read for Trickle<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.step = self.step % 7 + 1;
        let n = self.step.min(buf.len()).min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

#[test]
fn short_reads_change_nothing() {
    let plain = data(2 * MIN_CHUNK_SIZE as usize + 3);
    let header = header(MIN_CHUNK_SIZE);
    let mut trickled = Vec::new();
    let input = Trickle { data: &plain, step: 0 };
    encrypt(input, &mut trickled, &key(), &header).unwrap();
    assert_eq!(trickled, seal_with(&plain, &header), "same chunking");

    let mut input = Trickle { data: &trickled, step: 3 };
    let read = read_header(&mut input).unwrap();
    let mut out = Vec::new();
    decrypt(input, &mut out, &key(), &read).unwrap();
    assert_eq!(out, plain);
}

#[test]
fn same_input_and_key_give_different_files() {
    let plain = data(100);
    let (a, _) = seal(&plain);
    let (b, _) = seal(&plain);
    assert_ne!(a, b, "fresh nonce prefix per header");
}

#[test]
fn every_header_bit_is_authenticated() {
    let (envelope, h) = seal(&data(300));
    for byte in 0..h {
        for bit in 0..8 {
            let mut damaged = envelope.clone();
            damaged[byte] ^= 1 << bit;
            assert!(open(&damaged).is_err(), "flipping bit {bit} of header byte {byte} went unnoticed");
        }
    }
}

#[test]
fn flipped_bit_in_a_chunk_body_fails_that_chunk() {
    let (mut envelope, h) = seal(&data(3 * C + 1));
    let at = chunk_range(h, 1, envelope.len()).start + 1000;
    envelope[at] ^= 0x08;
    let err = open(&envelope).unwrap_err();
    assert!(matches!(err, EnvelopeError::ChunkAuthentication { index: 1 }), "{err:?}");
    assert_eq!(
        err.to_string(),
        "chunk 1 failed authentication: the file was modified, truncated or is not for this key"
    );
}

#[test]
fn flipped_bit_in_a_tag_fails_that_chunk() {
    for chunk in [0, 3] {
        let (mut envelope, h) = seal(&data(3 * C + 1));
        let end = chunk_range(h, chunk, envelope.len()).end;
        envelope[end - 5] ^= 0x80;
        let err = open(&envelope).unwrap_err();
        assert!(
            matches!(err, EnvelopeError::ChunkAuthentication { index } if index == chunk as u64),
            "tag of chunk {chunk}: {err:?}"
        );
    }
}

#[test]
fn dropped_chunk_is_detected() {
    let (envelope, h) = seal(&data(3 * C + 1));
    let mut damaged = envelope.clone();
    damaged.drain(chunk_range(h, 1, envelope.len()));
    let err = open(&damaged).unwrap_err();
    assert!(matches!(err, EnvelopeError::ChunkAuthentication { index: 1 }), "{err:?}");
}

#[test]
fn duplicated_chunk_is_detected() {
    let (envelope, h) = seal(&data(3 * C + 1));
    let first = chunk_range(h, 0, envelope.len());
    let mut damaged = envelope[..first.end].to_vec();
    damaged.extend_from_slice(&envelope[first.clone()]);
    damaged.extend_from_slice(&envelope[first.end..]);
    let err = open(&damaged).unwrap_err();
    assert!(matches!(err, EnvelopeError::ChunkAuthentication { index: 1 }), "{err:?}");
}

#[test]
fn swapped_chunks_are_detected() {
    let (envelope, h) = seal(&data(3 * C + 1));
    let (first, second) = (chunk_range(h, 0, envelope.len()), chunk_range(h, 1, envelope.len()));
    let mut damaged = envelope[..h].to_vec();
    damaged.extend_from_slice(&envelope[second.clone()]);
    damaged.extend_from_slice(&envelope[first]);
    damaged.extend_from_slice(&envelope[second.end..]);
    assert_eq!(damaged.len(), envelope.len());
    let err = open(&damaged).unwrap_err();
    assert!(matches!(err, EnvelopeError::ChunkAuthentication { index: 0 }), "{err:?}");
}

#[test]
fn cut_at_a_chunk_boundary_is_named_truncation() {
    let (envelope, h) = seal(&data(3 * C + 1));
    for kept in 1..=3 {
        let err = open(&envelope[..h + kept * RECORD]).unwrap_err();
        assert!(
            matches!(err, EnvelopeError::Truncated { chunks } if chunks == kept as u64),
            "{kept} chunks kept: {err:?}"
        );
    }
    let err = open(&envelope[..h + RECORD]).unwrap_err();
    assert_eq!(err.to_string(), "file ends before its final chunk: truncated after 1 chunks");
}

#[test]
fn cut_anywhere_else_is_detected() {
    let (envelope, h) = seal(&data(2 * C + 10));
    for cut in [h, h + 1, h + TAG_LEN - 1, h + 100, h + RECORD + 7, envelope.len() - 1] {
        let err = open(&envelope[..cut]).unwrap_err();
        assert!(
            matches!(err, EnvelopeError::Truncated { .. } | EnvelopeError::ChunkAuthentication { .. }),
            "cut at {cut}: {err:?}"
        );
    }
    assert!(matches!(open(&envelope[..h]).unwrap_err(), EnvelopeError::Truncated { chunks: 0 }));
}

#[test]
fn chunk_appended_after_the_final_one_is_detected() {
    // Final chunk full: the appended chunk is read on its own, and the final chunk,
    // opened as not final, is recognized as the authentic end.
    let (envelope, h) = seal(&data(2 * C));
    let mut damaged = envelope.clone();
    damaged.extend_from_slice(&envelope[chunk_range(h, 0, envelope.len())]);
    let err = open(&damaged).unwrap_err();
    assert!(matches!(err, EnvelopeError::TrailingData { index: 1 }), "{err:?}");
    assert_eq!(err.to_string(), "data after the final chunk (chunk 1): the file was appended to");

    let mut damaged = envelope.clone();
    damaged.push(0);
    assert!(matches!(open(&damaged).unwrap_err(), EnvelopeError::TrailingData { index: 1 }));

    // Final chunk short: the appended bytes run into it, so its tag fails.
    let (envelope, h) = seal(&data(3 * C + 1));
    let mut damaged = envelope.clone();
    damaged.extend_from_slice(&envelope[chunk_range(h, 0, envelope.len())]);
    let err = open(&damaged).unwrap_err();
    assert!(matches!(err, EnvelopeError::ChunkAuthentication { index: 3 }), "{err:?}");
}

#[test]
fn chunk_from_another_file_under_the_same_key_is_rejected() {
    let plain = data(2 * C + 1);
    let (a, h) = seal(&plain);
    let (b, _) = seal(&plain);
    let mut mixed = a.clone();
    let range = chunk_range(h, 1, a.len());
    mixed[range.clone()].copy_from_slice(&b[range]);
    assert!(matches!(open(&mixed).unwrap_err(), EnvelopeError::ChunkAuthentication { index: 1 }));
}

#[test]
fn wrong_key_fails_the_first_chunk() {
    for len in [0, 10, 2 * C] {
        let (envelope, _) = seal(&data(len));
        let err = open_with(&envelope, &other_key()).unwrap_err();
        assert!(matches!(err, EnvelopeError::ChunkAuthentication { index: 0 }), "{len} bytes: {err:?}");
    }
}

#[test]
fn header_claiming_huge_lengths_is_refused_before_allocating() {
    let (envelope, _) = seal(&data(10));
    let arn_len_at = 20;

    let mut huge_chunk = envelope.clone();
    huge_chunk[9..13].copy_from_slice(&u32::MAX.to_be_bytes());
    let err = open(&huge_chunk).unwrap_err();
    assert!(
        matches!(err, EnvelopeError::FieldOutOfRange { field: "chunk size", value, .. } if value == u64::from(u32::MAX)),
        "{err:?}"
    );

    let mut tiny_chunk = envelope.clone();
    tiny_chunk[9..13].copy_from_slice(&0u32.to_be_bytes());
    assert!(matches!(open(&tiny_chunk).unwrap_err(), EnvelopeError::FieldOutOfRange { field: "chunk size", .. }));

    let mut huge_arn = envelope.clone();
    huge_arn[arn_len_at..arn_len_at + 2].copy_from_slice(&u16::MAX.to_be_bytes());
    let err = open(&huge_arn).unwrap_err();
    assert!(matches!(err, EnvelopeError::FieldOutOfRange { field: "key arn length", value: 65535, .. }), "{err:?}");
    assert_eq!(err.to_string(), "envelope header field `key arn length` is 65535, outside the allowed 1 to 2048");

    let key_len_at = arn_len_at + 2 + ARN.len();
    let mut huge_key = envelope.clone();
    huge_key[key_len_at..key_len_at + 2].copy_from_slice(&u16::MAX.to_be_bytes());
    assert!(matches!(
        open(&huge_key).unwrap_err(),
        EnvelopeError::FieldOutOfRange { field: "encrypted data key length", value: 65535, .. }
    ));
}

#[test]
fn foreign_and_damaged_headers_are_named() {
    let (envelope, h) = seal(&data(10));
    assert!(matches!(open(b"").unwrap_err(), EnvelopeError::NotEnvelope));
    assert!(matches!(open(b"SNAP").unwrap_err(), EnvelopeError::NotEnvelope));
    let err = open(b"%PDF-1.7 not an envelope at all").unwrap_err();
    assert_eq!(err.to_string(), "not a snapferry envelope file");

    let mut future = envelope.clone();
    future[8] = 2;
    let err = open(&future).unwrap_err();
    assert!(matches!(err, EnvelopeError::UnsupportedVersion(2)), "{err:?}");
    assert!(err.to_string().starts_with("unsupported envelope version 2"));

    for cut in [9, 15, 21, 30, h - 1] {
        assert!(matches!(open(&envelope[..cut]).unwrap_err(), EnvelopeError::HeaderTruncated), "cut at {cut}");
    }

    let mut not_utf8 = envelope.clone();
    not_utf8[22] = 0xFF;
    assert!(matches!(open(&not_utf8).unwrap_err(), EnvelopeError::KeyArnNotUtf8));
}

#[test]
fn read_header_stops_exactly_at_the_first_chunk() {
    let (envelope, h) = seal(&data(5));
    let mut input = &envelope[..];
    let header = read_header(&mut input).unwrap();
    assert_eq!(input.len(), envelope.len() - h);
    assert_eq!(header.key_arn(), ARN);
    assert_eq!(header.encrypted_key(), &[0xA5; 184][..]);
    assert_eq!(header.chunk_size(), CHUNK);
    assert_eq!(header.version(), 1);
}

/// Names of the entries of `dir`, sorted.
fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> =
        fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    names
}

#[test]
fn files_round_trip_through_kms_style_calls() {
    let dir = tempfile::tempdir().unwrap();
    let (plain_path, enc_path, out_path) =
        (dir.path().join("disk.img"), dir.path().join("disk.img.env"), dir.path().join("disk.out"));
    let plain = data(2 * C + 77);
    fs::write(&plain_path, &plain).unwrap();

    let header = header(CHUNK);
    let sealed = encrypt_file(&plain_path, &enc_path, &key(), &header).unwrap();
    assert_eq!(sealed.chunks, 3);

    let read = read_header_file(&enc_path).unwrap();
    assert_eq!(read, header);
    let opened = decrypt_file(&enc_path, &out_path, &key(), &read).unwrap();
    assert_eq!(opened, sealed);
    assert!(fs::read(&out_path).unwrap() == plain);
    assert_eq!(listing(dir.path()), ["disk.img", "disk.img.env", "disk.out"]);

    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(&out_path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}

#[test]
fn decrypt_file_leaves_no_output_on_failure() {
    let dir = tempfile::tempdir().unwrap();
    let enc_path = dir.path().join("in.env");
    let out_path = dir.path().join("out");
    let (mut envelope, h) = seal(&data(3 * C + 1));
    // Damage the last chunk, so three chunks were already written when it fails.
    let last = chunk_range(h, 3, envelope.len()).start;
    envelope[last] ^= 1;
    fs::write(&enc_path, &envelope).unwrap();

    let header = read_header_file(&enc_path).unwrap();
    let err = decrypt_file(&enc_path, &out_path, &key(), &header).unwrap_err();
    assert!(matches!(err, EnvelopeError::ChunkAuthentication { index: 3 }), "{err:?}");
    assert_eq!(listing(dir.path()), ["in.env"], "no output, no temporary file");

    // An output that already exists is left as it was.
    fs::write(&out_path, b"previous contents").unwrap();
    assert!(decrypt_file(&enc_path, &out_path, &other_key(), &header).is_err());
    assert_eq!(fs::read(&out_path).unwrap(), b"previous contents");
    assert_eq!(listing(dir.path()), ["in.env", "out"]);
}

#[test]
fn decrypt_file_refuses_a_header_other_than_the_one_given() {
    let dir = tempfile::tempdir().unwrap();
    let enc_path = dir.path().join("in.env");
    fs::write(&enc_path, seal(&data(10)).0).unwrap();
    let err = decrypt_file(&enc_path, dir.path().join("out"), &key(), &header(CHUNK)).unwrap_err();
    assert!(matches!(err, EnvelopeError::HeaderMismatch { .. }), "{err:?}");
    assert_eq!(listing(dir.path()), ["in.env"]);
}

#[test]
fn file_errors_name_the_path_and_leave_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing");
    let err = encrypt_file(&missing, dir.path().join("out"), &key(), &header(CHUNK)).unwrap_err();
    assert!(matches!(&err, EnvelopeError::File { action: "open", path, .. } if path == &missing), "{err:?}");
    let message = err.to_string();
    assert!(message.starts_with("cannot open ") && message.contains("missing: "), "{message}");

    let not_envelope = dir.path().join("plain.txt");
    fs::write(&not_envelope, b"hello").unwrap();
    assert!(matches!(read_header_file(&not_envelope).unwrap_err(), EnvelopeError::NotEnvelope));

    let err =
        encrypt_file(&not_envelope, dir.path().join("no-such-dir").join("out"), &key(), &header(CHUNK)).unwrap_err();
    assert!(matches!(err, EnvelopeError::File { action: "create a temporary file in", .. }), "{err:?}");
    assert_eq!(listing(dir.path()), ["plain.txt"]);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn any_input_round_trips(plain in proptest::collection::vec(any::<u8>(), 0..5000)) {
        let header = header(MIN_CHUNK_SIZE);
        let envelope = seal_with(&plain, &header);
        prop_assert_eq!(open(&envelope).unwrap(), plain);
    }

    #[test]
    fn any_changed_byte_is_caught(
        len in 0usize..4000,
        position in any::<proptest::sample::Index>(),
        flip in 1u8..=255,
    ) {
        let header = header(MIN_CHUNK_SIZE);
        let mut envelope = seal_with(&data(len), &header);
        let at = position.index(envelope.len());
        envelope[at] ^= flip;
        prop_assert!(open(&envelope).is_err());
    }
}
