//! The simulated contents of a volume, as the EBS direct APIs show them: which 512 KiB
//! blocks are written and what each holds (a generation: 0 is zeros). Kept compact: a
//! few ranges plus single-block edits, so a 16 TiB volume costs a few hundred bytes;
//! a block's checksum is computed when asked for, never stored.
//!
//! A snapshot captures its volume's map, a copy clones its source's, and a fault can
//! corrupt (change the content of) or drop one block of a copy.

use std::collections::BTreeMap;

use base64::Engine;
use serde::{Deserialize, Serialize};

/// Blocks of 512 KiB per GiB.
pub const BLOCKS_PER_GIB: u64 = 2048;

/// The written blocks of a volume or snapshot.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockMap {
    /// The volume the data was written on: with a block's index and generation it
    /// decides the block's content.
    pub origin: String,
    /// Written ranges: (first block, count, generation), sorted and disjoint.
    pub ranges: Vec<(u64, u64, u32)>,
    /// Single blocks since changed: written with this generation (0: zeros, still
    /// listed), or `None`: not listed.
    pub edits: BTreeMap<u64, Option<u32>>,
}

fn fnv(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

fn next(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl BlockMap {
    /// The map of volume `id` of `size_gib`: deterministic from the id, a few written
    /// ranges covering about 1% of the volume, and one block of zeros that is listed.
    pub fn for_volume(id: &str, size_gib: i32) -> Self {
        let total = u64::try_from(size_gib.max(1)).unwrap_or(1) * BLOCKS_PER_GIB;
        let mut state = fnv(id);
        let count = 3 + next(&mut state) % 4;
        let mut ranges: Vec<(u64, u64, u32)> = (0..count)
            .map(|_| {
                let start = next(&mut state) % total;
                let len = 1 + next(&mut state) % (total / 384).max(1);
                (start, len.min(total - start), 1)
            })
            .collect();
        ranges.sort();
        let mut disjoint: Vec<(u64, u64, u32)> = vec![];
        for (start, len, g) in ranges {
            let from = disjoint.last().map_or(0, |(s, l, _)| s + l);
            let start2 = start.max(from);
            let end = start + len;
            if end > start2 {
                disjoint.push((start2, end - start2, g));
            }
        }
        let mut map = BlockMap { origin: id.to_owned(), ranges: disjoint, edits: BTreeMap::new() };
        let zero = next(&mut state) % total;
        if map.get(zero).is_none() {
            map.edits.insert(zero, Some(0));
        }
        map
    }

    /// The generation of block `index` when it is listed.
    pub fn get(&self, index: u64) -> Option<u32> {
        if let Some(e) = self.edits.get(&index) {
            return *e;
        }
        self.ranges.iter().find(|(s, l, _)| index >= *s && index < s + l).map(|(_, _, g)| *g)
    }

    /// The smallest listed index at or after `from`.
    fn next_listed(&self, mut from: u64) -> Option<u64> {
        loop {
            let in_range = self.ranges.iter().find(|(s, l, _)| s + l > from).map(|(s, _, _)| (*s).max(from));
            let edit = self.edits.range(from..).find(|(_, v)| v.is_some()).map(|(k, _)| *k);
            let candidate = match (in_range, edit) {
                (Some(a), Some(b)) => a.min(b),
                (a, b) => a.or(b)?,
            };
            if self.get(candidate).is_some() {
                return Some(candidate);
            }
            from = candidate + 1;
        }
    }

    /// Up to `max` listed blocks from index `from`, with their generations, and the
    /// index the next page starts at.
    pub fn page(&self, from: u64, max: usize) -> (Vec<(u64, u32)>, Option<u64>) {
        let mut out = Vec::with_capacity(max.min(1024));
        let mut at = from;
        while out.len() < max {
            match self.next_listed(at) {
                Some(i) => {
                    out.push((i, self.get(i).unwrap_or(0)));
                    at = i + 1;
                }
                None => return (out, None),
            }
        }
        let more = self.next_listed(at);
        (out, more)
    }

    /// The index of the `rank`-th listed block (0-based).
    pub fn nth(&self, rank: u64) -> Option<u64> {
        let mut at = 0;
        let mut seen = 0;
        while let Some(i) = self.next_listed(at) {
            if seen == rank {
                return Some(i);
            }
            seen += 1;
            at = i + 1;
        }
        None
    }

    /// How many blocks are listed.
    pub fn listed(&self) -> u64 {
        let in_ranges: u64 = self.ranges.iter().map(|(_, l, _)| l).sum();
        let mut n = in_ranges;
        for (k, v) in &self.edits {
            let ranged = self.ranges.iter().any(|(s, l, _)| *k >= *s && *k < s + l);
            match (ranged, v.is_some()) {
                (true, false) => n -= 1,
                (false, true) => n += 1,
                _ => {}
            }
        }
        n
    }

    /// Base64 SHA-256 of the block's plaintext: zeros for generation 0, else content
    /// that depends on the origin volume, the index and the generation.
    pub fn checksum(&self, index: u64, generation: u32) -> String {
        if generation == 0 {
            return crate::verify::zero_block_checksum().to_owned();
        }
        let mut c = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
        c.update(self.origin.as_bytes());
        c.update(&index.to_be_bytes());
        c.update(&generation.to_be_bytes());
        base64::engine::general_purpose::STANDARD.encode(c.finish().as_ref())
    }

    /// Changes block `index`'s content (a corruption).
    pub fn corrupt(&mut self, index: u64) {
        let g = self.get(index).unwrap_or(0);
        self.edits.insert(index, Some(g.wrapping_add(1_000).max(1)));
    }

    /// Leaves block `index` out of the listing.
    pub fn drop_block(&mut self, index: u64) {
        self.edits.insert(index, None);
    }

    /// Leaves every listed block of zeros out of the listing (as a copy may).
    pub fn unlist_zeros(&mut self) {
        for v in self.edits.values_mut() {
            if *v == Some(0) {
                *v = None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_map_is_deterministic_compact_and_pages_in_index_order() {
        let a = BlockMap::for_volume("vol-1", 1024);
        assert_eq!(a, BlockMap::for_volume("vol-1", 1024));
        assert!(a.ranges.len() <= 6);
        let mut all = vec![];
        let mut from = Some(0);
        while let Some(f) = from {
            let (page, more) = a.page(f, 1000);
            all.extend(page.into_iter().map(|(i, _)| i));
            from = more;
        }
        assert_eq!(all.len() as u64, a.listed());
        assert!(all.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(a.nth(3), Some(all[3]));
        let mut b = a.clone();
        b.drop_block(all[2]);
        assert_eq!(b.listed(), a.listed() - 1);
        b.corrupt(all[3]);
        assert_ne!(b.checksum(all[3], b.get(all[3]).unwrap()), a.checksum(all[3], a.get(all[3]).unwrap()));
    }
}
