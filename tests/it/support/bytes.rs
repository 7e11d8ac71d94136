//! Deterministic, incompressible-looking test data (xorshift), so that chunks and
//! frames differ from each other.

/// `len` bytes, the same for the same length.
pub fn data(len: usize) -> Vec<u8> {
    seeded(0x9E37_79B9_7F4A_7C15, len)
}

/// `len` bytes from the xorshift state `seed ^ len`.
pub fn seeded(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed ^ len as u64;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}
