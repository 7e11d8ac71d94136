//! Throughput of envelope encryption and decryption, as the CLI runs them.
//!
//! For each AWS Encryption SDK suite (signed and unsigned), encrypts a generated stream
//! (default 1 GiB; set `SNAPFERRY_BENCH_BYTES` to change it) with the default frame
//! length, first into `io::sink` (the cipher alone), then into a temporary file, and
//! decrypts that file back into `io::sink`; then the same for the older snapferry
//! envelope format. Prints MB/s (10^6 bytes of plaintext per second) for each. With
//! `SNAPFERRY_BENCH_FRAMES=4096,65536,1048576` it first measures the unsigned suite at
//! each of those frame lengths (how the default frame length was chosen). Run it in
//! release mode:
//!
//! ```text
//! cargo bench --bench envelope
//! SNAPFERRY_BENCH_BYTES=$((8 << 30)) /usr/bin/time -v cargo bench --bench envelope
//! ```
//!
//! Memory should stay near two frames whatever the size: compare peak RSS across sizes.

use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom};
use std::time::{Duration, Instant};

use snapferry::envelope::{
    DEFAULT_CHUNK_SIZE, DEFAULT_FRAME_LENGTH, EncryptMaterials, EncryptedDataKey, EncryptionContext, Header,
    PUBLIC_KEY_CONTEXT_KEY, Signer, Stats, Suite, decrypt, decrypt_message, encrypt, encrypt_message, read_header,
    read_message_header,
};
use zeroize::Zeroizing;

const DEFAULT_BYTES: u64 = 1 << 30;

/// An endless-looking input of `remaining` bytes, copied from a fixed 64 KiB pattern so
/// that producing it costs a memcpy and nothing else.
struct Generator {
    pattern: Vec<u8>,
    offset: usize,
    remaining: u64,
}

impl Generator {
    fn new(len: u64) -> Self {
        let mut state = 0x2545_F491_4F6C_DD1D_u64;
        let pattern = (0..64 * 1024)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        Self { pattern, offset: 0, remaining: len }
    }
}

impl Read for Generator {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut written = 0;
        while written < buf.len() && self.remaining > 0 {
            let n = (buf.len() - written)
                .min(self.pattern.len() - self.offset)
                .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
            buf[written..written + n].copy_from_slice(&self.pattern[self.offset..self.offset + n]);
            written += n;
            self.offset = (self.offset + n) % self.pattern.len();
            self.remaining -= n as u64;
        }
        Ok(written)
    }
}

fn report(what: &str, stats: Stats, elapsed: Duration) {
    let secs = elapsed.as_secs_f64();
    println!(
        "{what:<36} {:>8.0} MB/s  ({} bytes, {} frames, {:.2} s)",
        stats.plaintext_bytes as f64 / secs / 1e6,
        stats.plaintext_bytes,
        stats.chunks,
        secs
    );
}

/// Encrypts and decrypts `bytes` as one message of `suite` with `frame_length`.
fn message(suite: Suite, frame_length: u32, bytes: u64, to_sink: bool) -> Result<(), Box<dyn std::error::Error>> {
    let key = Zeroizing::new([0x5A; 32]);
    let signer = if suite.is_signed() { Some(Signer::generate()?) } else { None };
    let mut context = EncryptionContext::from([("purpose".to_owned(), "bench".to_owned())]);
    if let Some(s) = &signer {
        context.insert(PUBLIC_KEY_CONTEXT_KEY.to_owned(), s.public_key_base64());
    }
    let data_keys = [EncryptedDataKey::kms("arn:aws:kms:us-east-1:111111111111:key/bench", vec![0; 184])];
    let m = EncryptMaterials {
        suite,
        context: &context,
        data_keys: &data_keys,
        data_key: &key,
        signer: signer.as_ref(),
        frame_length,
    };
    let name = if suite.is_signed() { "signed" } else { "unsigned" };
    println!("{} ({name}), frame length {frame_length} bytes", suite.name());
    if to_sink {
        let start = Instant::now();
        let (_, stats) = encrypt_message(Generator::new(bytes), io::sink(), &m)?;
        report(&format!("{name} encrypt -> sink"), stats, start.elapsed());
    }
    let mut file = tempfile::tempfile()?;
    let start = Instant::now();
    let (_, stats) = encrypt_message(Generator::new(bytes), BufWriter::with_capacity(256 << 10, &mut file), &m)?;
    report(&format!("{name} encrypt -> temp file"), stats, start.elapsed());

    file.seek(SeekFrom::Start(0))?;
    let start = Instant::now();
    let mut input = BufReader::with_capacity(256 << 10, &mut file);
    let header = read_message_header(&mut input, 1)?;
    let stats = decrypt_message(input, io::sink(), &header, &key)?;
    report(&format!("{name} decrypt temp file -> sink"), stats, start.elapsed());
    assert_eq!(stats.plaintext_bytes, bytes, "decrypted every byte");
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let bytes = match std::env::var("SNAPFERRY_BENCH_BYTES") {
        Ok(v) => v.parse::<u64>()?,
        Err(_) => DEFAULT_BYTES,
    };
    // `cargo bench` passes `--bench`; there is nothing to filter, so arguments are ignored.
    if let Ok(list) = std::env::var("SNAPFERRY_BENCH_FRAMES") {
        for frame in list.split(',') {
            message(Suite::CommitKey, frame.trim().parse()?, bytes, false)?;
        }
    }
    println!("messages: {bytes} bytes");
    for suite in Suite::ALL {
        message(suite, DEFAULT_FRAME_LENGTH, bytes, true)?;
    }

    let key = Zeroizing::new([0x5A; 32]);
    let header = Header::new("arn:aws:kms:us-east-1:111111111111:key/bench", vec![0; 184], DEFAULT_CHUNK_SIZE)?;
    println!("older snapferry envelope: {bytes} bytes, chunk size {} bytes", header.chunk_size());

    let start = Instant::now();
    let stats = encrypt(Generator::new(bytes), io::sink(), &key, &header)?;
    report("envelope encrypt -> sink", stats, start.elapsed());

    let mut file = tempfile::tempfile()?;
    let start = Instant::now();
    let stats = encrypt(Generator::new(bytes), &mut file, &key, &header)?;
    report("envelope encrypt -> temp file", stats, start.elapsed());

    file.seek(SeekFrom::Start(0))?;
    let start = Instant::now();
    let read = read_header(&mut file)?;
    let stats = decrypt(&mut file, io::sink(), &key, &read)?;
    report("envelope decrypt temp file -> sink", stats, start.elapsed());
    assert_eq!(stats.plaintext_bytes, bytes, "decrypted every byte");
    Ok(())
}
