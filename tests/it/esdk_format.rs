//! The AWS Encryption SDK message format without KMS: round trips of both suites at
//! every frame edge, the layout the specification fixes, and every kind of damage (a
//! changed byte anywhere, dropped or moved frames, truncation, appended bytes, the wrong
//! key) refused, with property tests over inputs and frame lengths.

use std::fs;

use proptest::prelude::*;
use snapferry::envelope::{
    EncryptMaterials, EncryptedDataKey, EncryptionContext, EnvelopeError, EnvelopeFile, MessageHeader,
    PUBLIC_KEY_CONTEXT_KEY, Signer, Suite, decrypt_message, decrypt_message_file, encrypt_message,
    encrypt_message_file, read_envelope_file, read_message_header,
};

use crate::support::bytes::data;

const ARN: &str = "arn:aws:kms:eu-west-1:222222222222:key/1234abcd-12ab-34cd-56ef-1234567890ab";
const KEY: [u8; 32] = [0x42; 32];

/// Encrypts `plain` as one message; returns the message bytes and its header.
fn seal(suite: Suite, frame_length: u32, pairs: &[(&str, &str)], plain: &[u8]) -> (Vec<u8>, MessageHeader) {
    let signer = suite.is_signed().then(|| Signer::generate().unwrap());
    let mut context: EncryptionContext = pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    if let Some(s) = &signer {
        context.insert(PUBLIC_KEY_CONTEXT_KEY.to_owned(), s.public_key_base64());
    }
    let data_keys = [EncryptedDataKey::kms(ARN, vec![0xA5; 184])];
    let m = EncryptMaterials {
        suite,
        context: &context,
        data_keys: &data_keys,
        data_key: &KEY,
        signer: signer.as_ref(),
        frame_length,
    };
    let mut out = Vec::new();
    let (header, stats) = encrypt_message(plain, &mut out, &m).unwrap();
    assert_eq!(stats.envelope_bytes, out.len() as u64);
    assert_eq!(stats.plaintext_bytes, plain.len() as u64);
    (out, header)
}

fn open_with(message: &[u8], key: &[u8; 32]) -> Result<Vec<u8>, EnvelopeError> {
    let mut input = message;
    let header = read_message_header(&mut input, 10)?;
    let mut out = Vec::new();
    decrypt_message(input, &mut out, &header, key)?;
    Ok(out)
}

fn open(message: &[u8]) -> Result<Vec<u8>, EnvelopeError> {
    open_with(message, &KEY)
}

/// Frames a message of `len` plaintext bytes has: every full frame is a regular one, and
/// the final frame holds what is left (nothing at exact multiples, as the Python SDK
/// requires).
fn frames(len: usize, frame: usize) -> usize {
    len / frame + 1
}

#[test]
fn both_suites_round_trip_at_every_frame_edge() {
    for suite in Suite::ALL {
        for frame in [1usize, 2, 16, 128, 4096] {
            for len in [0, 1, frame - 1, frame, frame + 1, 3 * frame, 3 * frame + 1] {
                let plain = data(len);
                let (message, header) = seal(suite, frame as u32, &[("purpose", "test")], &plain);
                assert_eq!(open(&message).unwrap(), plain, "{suite:?} frame {frame} len {len}");
                // Layout: regular frames of 4 + 12 + frame + 16, a final frame of
                // 4 + 4 + 12 + 4 + rest + 16, and for the signed suite a footer.
                let n = frames(len, frame);
                let last = len % frame;
                let body = (n - 1) * (32 + frame) + 40 + last;
                let footer = message.len() - header.as_bytes().len() - body;
                if suite.is_signed() {
                    assert!((2 + 8..=2 + 104).contains(&footer), "signature footer of {footer} bytes");
                } else {
                    assert_eq!(footer, 0);
                }
            }
        }
    }
}

#[test]
fn header_layout_follows_the_specification() {
    let (message, header) = seal(Suite::CommitKey, 4096, &[("b", "2"), ("a", "1")], b"hello");
    assert_eq!(message[0], 0x02, "version 2");
    assert_eq!(&message[1..3], &[0x04, 0x78], "suite id");
    assert_eq!(&message[3..35], header.message_id());
    // AAD: length, pair count, pairs sorted by key.
    assert_eq!(&message[35..37], &[0, 14]);
    assert_eq!(&message[37..51], &[0, 2, 0, 1, b'a', 0, 1, b'1', 0, 1, b'b', 0, 1, b'2']);
    let edks = 35 + 2 + 14;
    assert_eq!(&message[edks..edks + 2], &[0, 1], "one encrypted data key");
    assert_eq!(&message[edks + 2..edks + 4], &[0, 7]);
    assert_eq!(&message[edks + 4..edks + 11], b"aws-kms");
    let info = edks + 11;
    assert_eq!(usize::from(u16::from_be_bytes([message[info], message[info + 1]])), ARN.len());
    assert_eq!(&message[info + 2..info + 2 + ARN.len()], ARN.as_bytes());
    let blob = info + 2 + ARN.len();
    assert_eq!(&message[blob..blob + 2], &[0, 184]);
    let content_type = blob + 2 + 184;
    assert_eq!(message[content_type], 0x02, "framed");
    assert_eq!(&message[content_type + 1..content_type + 5], &4096u32.to_be_bytes());
    // Commit key (32) and header tag (16) end the header.
    assert_eq!(header.as_bytes().len(), content_type + 5 + 32 + 16);
    // The one frame is final: marker, sequence number 1, IV = 1 padded, length 5.
    let body = header.as_bytes().len();
    assert_eq!(&message[body..body + 4], &[0xFF; 4]);
    assert_eq!(&message[body + 4..body + 8], &[0, 0, 0, 1]);
    assert_eq!(&message[body + 8..body + 20], &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
    assert_eq!(&message[body + 20..body + 24], &[0, 0, 0, 5]);
    assert_eq!(message.len(), body + 24 + 5 + 16);
}

#[test]
fn every_message_gets_its_own_id_and_key() {
    let (a, ha) = seal(Suite::CommitKey, 64, &[], b"same input");
    let (b, hb) = seal(Suite::CommitKey, 64, &[], b"same input");
    assert_ne!(ha.message_id(), hb.message_id());
    assert_ne!(a, b);
}

#[test]
fn wrong_data_key_fails_the_commitment() {
    let (message, _) = seal(Suite::CommitKeyEcdsaP384, 64, &[], &data(300));
    let mut other = KEY;
    other[0] ^= 1;
    assert!(matches!(open_with(&message, &other), Err(EnvelopeError::Commitment)));
}

#[test]
fn every_header_byte_is_checked() {
    for suite in Suite::ALL {
        let (message, header) = seal(suite, 32, &[("purpose", "backup")], &data(100));
        for i in 0..header.as_bytes().len() {
            let mut bad = message.clone();
            bad[i] ^= 0x01;
            assert!(open(&bad).is_err(), "{suite:?}: header byte {i} changed and accepted");
        }
    }
}

#[test]
fn moved_dropped_or_repeated_frames_are_refused() {
    let frame = 64usize;
    let (message, header) = seal(Suite::CommitKey, frame as u32, &[], &data(5 * frame + 10));
    let h = header.as_bytes().len();
    let record = 4 + 12 + frame + 16;
    let frame_at = |i: usize| h + i * record..h + (i + 1) * record;
    // Swap frames 1 and 2.
    let mut swapped = message.clone();
    let (a, b) = (message[frame_at(1)].to_vec(), message[frame_at(2)].to_vec());
    swapped[frame_at(1)].copy_from_slice(&b);
    swapped[frame_at(2)].copy_from_slice(&a);
    assert!(matches!(open(&swapped), Err(EnvelopeError::FrameOrder { expected: 2, found: 3 })));
    // Drop frame 1.
    let mut dropped = message.clone();
    dropped.drain(frame_at(1));
    assert!(matches!(open(&dropped), Err(EnvelopeError::FrameOrder { expected: 2, found: 3 })));
    // Repeat frame 0.
    assert_eq!(message.len(), h + 5 * record + 4 + 4 + 12 + 4 + 10 + 16, "5 regular frames and a final one");
    let mut repeated = message[..h + record].to_vec();
    repeated.extend_from_slice(&message[h..]);
    assert!(matches!(open(&repeated), Err(EnvelopeError::FrameOrder { expected: 2, found: 1 })));
}

#[test]
fn truncation_and_appended_bytes_are_refused() {
    for suite in Suite::ALL {
        let (message, header) = seal(suite, 64, &[], &data(200));
        for cut in header.as_bytes().len()..message.len() {
            assert!(open(&message[..cut]).is_err(), "{suite:?}: cut at {cut} accepted");
        }
        let mut longer = message.clone();
        longer.push(0);
        assert!(matches!(open(&longer), Err(EnvelopeError::MessageTrailingData)), "{suite:?}");
    }
}

#[test]
fn a_signed_message_with_its_signature_removed_or_swapped_is_refused() {
    let (message, header) = seal(Suite::CommitKeyEcdsaP384, 64, &[], &data(100));
    // Without the footer: truncated.
    let body_end = header.as_bytes().len() + 4 + 12 + 64 + 16 + 4 + 4 + 12 + 4 + 36 + 16;
    assert!(matches!(open(&message[..body_end]), Err(EnvelopeError::MessageTruncated)));
    // Another message's valid signature: refused.
    let (other, _) = seal(Suite::CommitKeyEcdsaP384, 64, &[], &data(100));
    let mut spliced = message[..body_end].to_vec();
    spliced.extend_from_slice(&other[body_end..]);
    assert!(matches!(open(&spliced), Err(EnvelopeError::SignatureInvalid)));
}

#[test]
fn more_data_keys_than_allowed_are_refused_before_kms() {
    let (message, _) = seal(Suite::CommitKey, 64, &[], b"x");
    assert!(matches!(
        read_message_header(&mut &message[..], 0),
        Err(EnvelopeError::TooManyDataKeys { found: 1, max: 0 })
    ));
}

#[test]
fn files_round_trip_and_leave_nothing_on_failure() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.bin");
    let sealed = dir.path().join("in.bin.esdk");
    let back = dir.path().join("back.bin");
    let plain = data(300_000);
    fs::write(&input, &plain).unwrap();
    let signer = Signer::generate().unwrap();
    let context = EncryptionContext::from([(PUBLIC_KEY_CONTEXT_KEY.to_owned(), signer.public_key_base64())]);
    let data_keys = [EncryptedDataKey::kms(ARN, vec![1; 184])];
    let m = EncryptMaterials {
        suite: Suite::CommitKeyEcdsaP384,
        context: &context,
        data_keys: &data_keys,
        data_key: &KEY,
        signer: Some(&signer),
        frame_length: 4096,
    };
    encrypt_message_file(&input, &sealed, &m).unwrap();
    let EnvelopeFile::Message(header) = read_envelope_file(&sealed, 1).unwrap() else { panic!("not a message") };
    decrypt_message_file(&sealed, &back, &header, &KEY).unwrap();
    assert_eq!(fs::read(&back).unwrap(), plain);

    // The signature is checked last, after every frame was written to the temporary
    // file: a bad signature must still leave no output.
    let mut bytes = fs::read(&sealed).unwrap();
    let n = bytes.len();
    bytes[n - 3] ^= 0x40;
    fs::write(&sealed, &bytes).unwrap();
    let out = dir.path().join("never.bin");
    let err = decrypt_message_file(&sealed, &out, &header, &KEY).unwrap_err();
    assert!(matches!(err, EnvelopeError::SignatureInvalid), "{err}");
    let mut names: Vec<String> =
        fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    assert_eq!(names, ["back.bin", "in.bin", "in.bin.esdk"]);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn any_input_round_trips_at_any_frame_length(
        plain in proptest::collection::vec(any::<u8>(), 0..3000),
        frame in 1u32..700,
        signed in any::<bool>(),
    ) {
        let suite = if signed { Suite::CommitKeyEcdsaP384 } else { Suite::CommitKey };
        let (message, _) = seal(suite, frame, &[("k", "v")], &plain);
        prop_assert_eq!(open(&message).unwrap(), plain);
    }

    #[test]
    fn any_changed_byte_is_caught(
        len in 0usize..1500,
        frame in 1u32..300,
        signed in any::<bool>(),
        at in any::<prop::sample::Index>(),
        flip in 1u8..=255,
    ) {
        let suite = if signed { Suite::CommitKeyEcdsaP384 } else { Suite::CommitKey };
        let (mut message, _) = seal(suite, frame, &[], &data(len));
        let i = at.index(message.len());
        message[i] ^= flip;
        prop_assert!(open(&message).is_err(), "byte {} of {} changed and accepted", i, message.len());
    }

    #[test]
    fn any_truncation_is_caught(len in 0usize..1500, frame in 1u32..300, signed in any::<bool>(), at in any::<prop::sample::Index>()) {
        let suite = if signed { Suite::CommitKeyEcdsaP384 } else { Suite::CommitKey };
        let (message, _) = seal(suite, frame, &[], &data(len));
        let cut = at.index(message.len());
        prop_assert!(open(&message[..cut]).is_err());
    }
}

/// The review's tamper cases, each by the error it must give: a cut exactly at a frame
/// boundary, the commitment key, the header tag and the context changed.
#[test]
fn a_cut_at_a_frame_boundary_is_named_truncation() {
    let frame = 64usize;
    for suite in Suite::ALL {
        let (message, header) = seal(suite, frame as u32, &[], &data(3 * frame + 5));
        let h = header.as_bytes().len();
        let record = 4 + 12 + frame + 16;
        for kept in 0..=3 {
            let err = open(&message[..h + kept * record]).unwrap_err();
            assert!(matches!(err, EnvelopeError::MessageTruncated), "{suite:?}, {kept} frames kept: {err:?}");
        }
    }
}

#[test]
fn a_changed_commitment_key_header_tag_or_context_is_refused_by_name() {
    for suite in Suite::ALL {
        let (message, header) = seal(suite, 64, &[("purpose", "backup")], &data(300));
        let h = header.as_bytes().len();
        let mut bad = message.clone();
        bad[h - 16 - 1] ^= 0x01; // last byte of the commit key
        assert!(matches!(open(&bad), Err(EnvelopeError::Commitment)), "{suite:?}: commit key");
        let mut bad = message.clone();
        bad[h - 1] ^= 0x01; // last byte of the header tag
        assert!(matches!(open(&bad), Err(EnvelopeError::HeaderAuthentication)), "{suite:?}: header tag");
        let mut bad = message.clone();
        let at = bad.windows(6).position(|w| w == b"backup").unwrap();
        bad[at] = b'B';
        assert!(matches!(open(&bad), Err(EnvelopeError::HeaderAuthentication)), "{suite:?}: context value");
    }
}

#[test]
fn absurd_lengths_are_refused_before_anything_is_allocated_for_them() {
    let frame = 64usize;
    let (unsigned, uh) = seal(Suite::CommitKey, frame as u32, &[], &data(frame + 5));
    let h = uh.as_bytes().len();
    // The header's own lengths: context, data key count, a data key's ciphertext,
    // frame length.
    let edks = 35 + 2 + usize::from(u16::from_be_bytes([unsigned[35], unsigned[36]]));
    let blob_len = edks + 2 + 2 + 7 + 2 + ARN.len();
    let frame_len = blob_len + 2 + 184 + 1;
    let cases: [(&str, usize, &[u8]); 4] = [
        ("context length", 35, &[0xFF, 0xFF]),
        ("data key count", edks, &[0xFF, 0xFF]),
        ("data key length", blob_len, &[0xFF, 0xFF]),
        ("frame length", frame_len, &[0xFF, 0xFF, 0xFF, 0xFF]),
    ];
    for (what, at, bytes) in cases {
        let mut bad = unsigned.clone();
        bad[at..at + bytes.len()].copy_from_slice(bytes);
        let err = read_message_header(&mut &bad[..], 10).unwrap_err();
        assert!(
            matches!(
                err,
                EnvelopeError::HeaderTruncated
                    | EnvelopeError::TooManyDataKeys { .. }
                    | EnvelopeError::FieldOutOfRange { .. }
                    | EnvelopeError::InvalidHeader(_)
            ),
            "{what}: {err:?}"
        );
    }
    // The final frame's content length, past the frame length.
    let final_len = h + (4 + 12 + frame + 16) + 4 + 4 + 12;
    assert_eq!(&unsigned[final_len..final_len + 4], &[0, 0, 0, 5]);
    let mut bad = unsigned.clone();
    bad[final_len..final_len + 4].copy_from_slice(&[0xFF; 4]);
    assert!(
        matches!(open(&bad), Err(EnvelopeError::FieldOutOfRange { field: "final frame content length", .. })),
        "final frame length"
    );
    // The signature's length, past the longest P-384 signature.
    let (signed, sh) = seal(Suite::CommitKeyEcdsaP384, frame as u32, &[], &data(frame + 5));
    let footer = sh.as_bytes().len() + (4 + 12 + frame + 16) + (4 + 4 + 12 + 4 + 5 + 16);
    let mut bad = signed.clone();
    bad[footer..footer + 2].copy_from_slice(&[0xFF, 0xFF]);
    assert!(matches!(open(&bad), Err(EnvelopeError::SignatureInvalid)), "signature length");
}
