//! Verified copies: the comparison of a copy with its source snapshot, block by block,
//! as the EBS direct APIs show them. Pure: no I/O, no clock; the caller lists both
//! sides (in block index order), asks [`Comparison::need`] which checksums to read, and
//! feeds each block to [`Comparison::record`]. Memory stays the same whatever the
//! volume's size: two running digests, counters and the sample (at most N ranks).
//!
//! The levels:
//! - `map`: the volume and block sizes, and the set of written blocks;
//! - `sample`: `map`, plus the checksums of N blocks picked from a recorded seed;
//! - `full`: `map`, plus every block's checksum.
//!
//! A block listed on one side only matches when the side that lists it reads it as
//! zeros (EBS may list a block of zeros on one side and leave it out on the other): its
//! checksum is then [`zero_block_checksum`]. Zero blocks are left out of the content
//! digests, so the digests of a copy and its source are equal when every block matches.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::OnceLock;

use base64::Engine;
use serde::{Deserialize, Serialize};

/// The EBS block size the direct APIs use: 512 KiB.
pub const BLOCK_SIZE: u32 = 524_288;

/// `--sample`'s default: blocks read per side at `sample`.
pub const DEFAULT_SAMPLE: u32 = 256;

/// How far a copy is compared with its source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Map,
    Sample,
    Full,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Map => "map",
            Level::Sample => "sample",
            Level::Full => "full",
        }
    }

    /// `map`, `sample` or `full`; `None` for anything else (`none` included).
    pub fn parse(s: &str) -> Option<Level> {
        match s {
            "map" => Some(Level::Map),
            "sample" => Some(Level::Sample),
            "full" => Some(Level::Full),
            _ => None,
        }
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The Base64 SHA-256 of a 512 KiB block of zeros, as `x-amz-Checksum` gives it.
pub fn zero_block_checksum() -> &'static str {
    static ZERO: OnceLock<String> = OnceLock::new();
    ZERO.get_or_init(|| {
        let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &vec![0u8; BLOCK_SIZE as usize]);
        base64::engine::general_purpose::STANDARD.encode(d.as_ref())
    })
}

/// The seed a run's verification of one copy samples with: the same on every resume.
pub fn seed_for(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in p.as_bytes().iter().chain(b"\x1f") {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The ranks (0-based positions among the blocks written on either side, in index
/// order) of the `n` blocks sampled from `seed`, out of `written`: all of them when
/// `n >= written`. Anyone with the seed and the two block lists picks the same blocks.
pub fn sample_ranks(seed: u64, n: u32, written: u64) -> BTreeSet<u64> {
    if u64::from(n) >= written {
        return (0..written).collect();
    }
    let mut state = seed;
    let mut picked = BTreeSet::new();
    while picked.len() < n as usize {
        picked.insert(splitmix(&mut state) % written);
    }
    picked
}

/// Which sides list a block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Presence {
    Both,
    SourceOnly,
    CopyOnly,
}

/// Which checksums a block needs read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Need {
    pub source: bool,
    pub copy: bool,
}

impl Need {
    pub fn any(self) -> bool {
        self.source || self.copy
    }
}

/// The first block that differs, and how.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mismatch {
    /// The block index; `None` when the volumes differ before any block (their sizes).
    pub block: Option<u64>,
    pub reason: String,
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.block {
            Some(b) => write!(f, "block {b}: {}", self.reason),
            None => f.write_str(&self.reason),
        }
    }
}

/// A running SHA-256 over (block index, checksum) pairs in index order.
struct Digest(aws_lc_rs::digest::Context);

impl Digest {
    fn new() -> Self {
        Digest(aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256))
    }

    fn add(&mut self, index: u64, checksum: &str) {
        self.0.update(&index.to_be_bytes());
        self.0.update(checksum.as_bytes());
        self.0.update(b"\n");
    }

    fn hex(self) -> String {
        self.0.finish().as_ref().iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// The comparison of one copy with its source, fed block by block in index order.
pub struct Comparison {
    level: Level,
    sample: BTreeSet<u64>,
    rank: u64,
    compared: u64,
    read: u64,
    first: Option<Mismatch>,
    source_digest: Digest,
    copy_digest: Digest,
}

/// What a comparison found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// Blocks whose presence (and, where read, checksums) were compared.
    pub blocks_compared: u64,
    /// Blocks whose checksums were read (on one side or both).
    pub blocks_read: u64,
    pub first_mismatch: Option<Mismatch>,
    /// Hex SHA-256 over each side's (block index, checksum) list, zero blocks left
    /// out; only at `full`, where every checksum is read.
    pub source_digest: Option<String>,
    pub copy_digest: Option<String>,
}

impl Verdict {
    pub fn matched(&self) -> bool {
        self.first_mismatch.is_none()
    }
}

impl Comparison {
    /// A comparison at `level`; `sample` holds the ranks to read at `sample` (see
    /// [`sample_ranks`]) and is ignored at the other levels.
    pub fn new(level: Level, sample: BTreeSet<u64>) -> Self {
        Comparison {
            level,
            sample,
            rank: 0,
            compared: 0,
            read: 0,
            first: None,
            source_digest: Digest::new(),
            copy_digest: Digest::new(),
        }
    }

    /// Compares what ListSnapshotBlocks says of each side's volume: volume size in GiB
    /// and block size.
    pub fn sizes(&mut self, source: (i64, u32), copy: (i64, u32)) {
        if source != copy && self.first.is_none() {
            self.first = Some(Mismatch {
                block: None,
                reason: format!(
                    "the source is {} GiB in blocks of {} bytes, the copy {} GiB in blocks of {} bytes",
                    source.0, source.1, copy.0, copy.1
                ),
            });
        }
    }

    /// True once a difference is found: the caller may stop reading.
    pub fn differs(&self) -> bool {
        self.first.is_some()
    }

    /// The checksums the next block (in index order) needs read.
    pub fn need(&self, presence: Presence) -> Need {
        match presence {
            Presence::SourceOnly => Need { source: true, copy: false },
            Presence::CopyOnly => Need { source: false, copy: true },
            Presence::Both => {
                let read = match self.level {
                    Level::Map => false,
                    Level::Sample => self.sample.contains(&self.rank),
                    Level::Full => true,
                };
                Need { source: read, copy: read }
            }
        }
    }

    /// Records the next block: its index, which sides list it, and the checksums read
    /// (those [`Comparison::need`] asked for).
    pub fn record(&mut self, index: u64, presence: Presence, source: Option<&str>, copy: Option<&str>) {
        self.rank += 1;
        self.compared += 1;
        if source.is_some() || copy.is_some() {
            self.read += 1;
        }
        let zero = zero_block_checksum();
        for (sum, digest) in [(source, &mut self.source_digest), (copy, &mut self.copy_digest)] {
            if let Some(s) = sum.filter(|s| *s != zero) {
                digest.add(index, s);
            }
        }
        if self.first.is_some() {
            return;
        }
        let reason = match (presence, source, copy) {
            (Presence::Both, Some(a), Some(b)) if a != b => {
                Some(format!("checksum {a} in the source, {b} in the copy"))
            }
            (Presence::SourceOnly, Some(a), _) if a != zero => {
                Some("written in the source and missing from the copy".to_owned())
            }
            (Presence::CopyOnly, _, Some(b)) if b != zero => {
                Some("written in the copy and not in the source".to_owned())
            }
            (Presence::SourceOnly, None, _) | (Presence::CopyOnly, _, None) => {
                Some("listed on one side only and its checksum was not read".to_owned())
            }
            _ => None,
        };
        if let Some(reason) = reason {
            self.first = Some(Mismatch { block: Some(index), reason });
        }
    }

    pub fn finish(self) -> Verdict {
        let full = self.level == Level::Full && self.first.is_none();
        Verdict {
            blocks_compared: self.compared,
            blocks_read: self.read,
            first_mismatch: self.first,
            source_digest: full.then(|| self.source_digest.hex()),
            copy_digest: full.then(|| self.copy_digest.hex()),
        }
    }
}

/// What a verification of one copy found, as the report and the evidence file give it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub level: Level,
    /// `matched` or `failed`.
    pub result: String,
    pub source_snapshot: String,
    pub copy_snapshot: String,
    /// The seed the sample was drawn with (at `sample`), and its size.
    pub sample_seed: Option<u64>,
    pub sample_size: Option<u32>,
    pub blocks_compared: u64,
    pub first_mismatch: Option<Mismatch>,
    pub duration_ms: i64,
    /// Requests made per side (ListSnapshotBlocks and GetSnapshotBlock).
    pub source_requests: u64,
    pub copy_requests: u64,
    pub source_digest: Option<String>,
    pub copy_digest: Option<String>,
}

impl Record {
    pub fn matched(&self) -> bool {
        self.result == "matched"
    }

    /// The `snapferry:verify` tag value: `matched:<level>` or `failed`.
    pub fn tag(&self) -> String {
        if self.matched() { format!("matched:{}", self.level) } else { "failed".to_owned() }
    }
}

/// True when these tags mark a copy that failed verification.
pub fn failed_tag(tags: &std::collections::BTreeMap<String, String>) -> bool {
    tags.get(crate::tags::TAG_VERIFY).is_some_and(|v| v == "failed")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(n: u8) -> String {
        base64::engine::general_purpose::STANDARD.encode([n; 32])
    }

    #[test]
    fn the_zero_block_checksum_is_the_sha256_of_512_kib_of_zeros() {
        assert_eq!(zero_block_checksum(), "B4VNL+8pega6gWheZgwzLeNtXRjVRpJ9MNqtbX/aFUE=");
    }

    #[test]
    fn equal_blocks_match_at_full_with_equal_digests() {
        let mut c = Comparison::new(Level::Full, BTreeSet::new());
        c.sizes((8, BLOCK_SIZE), (8, BLOCK_SIZE));
        for i in 0..10u64 {
            assert_eq!(c.need(Presence::Both), Need { source: true, copy: true });
            c.record(i, Presence::Both, Some(&sum(i as u8)), Some(&sum(i as u8)));
        }
        let v = c.finish();
        assert!(v.matched());
        assert_eq!(v.blocks_compared, 10);
        assert_eq!(v.source_digest, v.copy_digest);
        assert!(v.source_digest.is_some());
    }

    #[test]
    fn a_differing_checksum_is_the_first_mismatch() {
        let mut c = Comparison::new(Level::Full, BTreeSet::new());
        c.record(1, Presence::Both, Some(&sum(1)), Some(&sum(1)));
        c.record(2, Presence::Both, Some(&sum(2)), Some(&sum(9)));
        c.record(3, Presence::Both, Some(&sum(3)), Some(&sum(8)));
        let v = c.finish();
        assert_eq!(v.first_mismatch.unwrap().block, Some(2));
        assert!(v.source_digest.is_none());
    }

    #[test]
    fn a_block_on_one_side_matches_only_as_zeros() {
        let zero = zero_block_checksum().to_owned();
        let mut c = Comparison::new(Level::Map, BTreeSet::new());
        assert!(!c.need(Presence::Both).any(), "map reads no block listed on both sides");
        assert!(c.need(Presence::SourceOnly).source);
        c.record(4, Presence::SourceOnly, Some(&zero), None);
        c.record(5, Presence::CopyOnly, None, Some(&zero));
        assert!(c.finish().matched());

        let mut c = Comparison::new(Level::Map, BTreeSet::new());
        c.record(7, Presence::SourceOnly, Some(&sum(1)), None);
        assert_eq!(c.finish().first_mismatch.unwrap().block, Some(7));
    }

    #[test]
    fn zero_blocks_on_one_side_leave_the_digests_equal() {
        let zero = zero_block_checksum().to_owned();
        let mut c = Comparison::new(Level::Full, BTreeSet::new());
        c.record(1, Presence::Both, Some(&sum(1)), Some(&sum(1)));
        c.record(2, Presence::SourceOnly, Some(&zero), None);
        let v = c.finish();
        assert!(v.matched());
        assert_eq!(v.source_digest, v.copy_digest);
    }

    #[test]
    fn sizes_that_differ_fail_before_any_block() {
        let mut c = Comparison::new(Level::Map, BTreeSet::new());
        c.sizes((8, BLOCK_SIZE), (16, BLOCK_SIZE));
        assert!(c.differs());
        assert_eq!(c.finish().first_mismatch.unwrap().block, None);
    }

    #[test]
    fn the_sample_is_reproducible_from_its_seed_and_reads_only_its_ranks() {
        let a = sample_ranks(42, 5, 1000);
        assert_eq!(a, sample_ranks(42, 5, 1000));
        assert_eq!(a.len(), 5);
        assert_ne!(a, sample_ranks(43, 5, 1000));
        assert_eq!(sample_ranks(1, 10, 3).len(), 3);
        let mut c = Comparison::new(Level::Sample, a.clone());
        let mut read = 0;
        for i in 0..1000u64 {
            let n = c.need(Presence::Both);
            assert_eq!(n.source, a.contains(&i));
            let s = n.source.then(|| sum(1));
            read += u64::from(n.source);
            c.record(i, Presence::Both, s.as_deref(), s.as_deref());
        }
        assert_eq!(read, 5);
        assert_eq!(c.finish().blocks_read, 5);
    }
}
