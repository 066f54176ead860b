//! Refinement: shipping only the 4 KiB sub-blocks that differ inside a changed run of coarse
//! manifest blocks. The sender sends short keyed hashes of the new content's sub-blocks; the
//! receiver hashes the same sub-blocks of its target and answers with a bitmap of those that
//! differ; the sender ships just those pieces, and the receiver overlays them on what it holds
//! and checks every coarse block's full hash before writing. Pure functions, property-tested.
//!
//! Sub-block hashes are 8 bytes of BLAKE3 keyed with a random per-cycle key: they only choose
//! what to ship, the full 256-bit block hash still decides what is written, and the key makes
//! collisions impossible to craft. A chance collision refuses the cycle (never a wrong block);
//! the next cycle draws a new key.

/// Granularity of refinement.
pub const SUB_BLOCK: usize = 4096;

/// A short keyed hash of one sub-block.
pub type SubHash = [u8; 8];

/// A fresh random key for one cycle's sub-block hashes (from the operating system).
pub fn new_key() -> Result<[u8; 32], getrandom::Error> {
    let mut key = [0u8; 32];
    getrandom::getrandom(&mut key)?;
    Ok(key)
}

/// The keyed short hash of one sub-block.
pub fn sub_hash(key: &[u8; 32], data: &[u8]) -> SubHash {
    blake3::keyed_hash(key, data).as_bytes()[..8]
        .try_into()
        .expect("8 bytes")
}

/// Number of sub-blocks covering `len` bytes.
pub fn sub_count(len: usize) -> usize {
    len.div_ceil(SUB_BLOCK)
}

/// Keyed short hashes of the sub-blocks of `data`.
pub fn sub_hashes(key: &[u8; 32], data: &[u8]) -> Vec<SubHash> {
    data.chunks(SUB_BLOCK).map(|c| sub_hash(key, c)).collect()
}

/// A bitmap with bit i set when sub-block i differs (`ours` vs `theirs`, same length).
pub fn differing(ours: &[SubHash], theirs: &[SubHash]) -> Vec<u8> {
    let mut bitmap = vec![0u8; ours.len().div_ceil(8)];
    for (i, (a, b)) in ours.iter().zip(theirs).enumerate() {
        if a != b {
            bitmap[i / 8] |= 1 << (i % 8);
        }
    }
    bitmap
}

/// Is bit `i` set?
pub fn is_set(bitmap: &[u8], i: usize) -> bool {
    bitmap
        .get(i / 8)
        .is_some_and(|byte| byte & (1 << (i % 8)) != 0)
}

/// Total bytes of the sub-blocks of a `len`-byte run selected by `bitmap`.
pub fn selected_len(len: usize, bitmap: &[u8]) -> usize {
    (0..sub_count(len))
        .filter(|&i| is_set(bitmap, i))
        .map(|i| piece_len(len, i))
        .sum()
}

fn piece_len(len: usize, i: usize) -> usize {
    (len - i * SUB_BLOCK).min(SUB_BLOCK)
}

/// The selected sub-blocks of `data`, concatenated in order.
pub fn pieces(data: &[u8], bitmap: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(selected_len(data.len(), bitmap));
    for (i, chunk) in data.chunks(SUB_BLOCK).enumerate() {
        if is_set(bitmap, i) {
            out.extend_from_slice(chunk);
        }
    }
    out
}

/// Writes `pieces` over the selected sub-blocks of `base`, in place. Returns false when the
/// pieces do not have exactly the selected length.
pub fn overlay(base: &mut [u8], bitmap: &[u8], pieces: &[u8]) -> bool {
    if pieces.len() != selected_len(base.len(), bitmap) {
        return false;
    }
    let mut at = 0;
    for (i, chunk) in base.chunks_mut(SUB_BLOCK).enumerate() {
        if is_set(bitmap, i) {
            chunk.copy_from_slice(&pieces[at..at + chunk.len()]);
            at += chunk.len();
        }
    }
    true
}

/// Contiguous byte ranges (within the run) of the selected sub-blocks, for writing.
pub fn selected_ranges(len: usize, bitmap: &[u8]) -> Vec<std::ops::Range<usize>> {
    let mut ranges: Vec<std::ops::Range<usize>> = Vec::new();
    for i in (0..sub_count(len)).filter(|&i| is_set(bitmap, i)) {
        let start = i * SUB_BLOCK;
        let end = start + piece_len(len, i);
        match ranges.last_mut() {
            Some(last) if last.end == start => last.end = end,
            _ => ranges.push(start..end),
        }
    }
    ranges
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn pair() -> impl Strategy<Value = (Vec<u8>, Vec<u8>)> {
        (
            1usize..70_000,
            any::<u64>(),
            proptest::collection::vec((any::<usize>(), any::<u8>()), 0..12),
        )
            .prop_map(|(len, seed, edits)| {
                let old: Vec<u8> = (0..len).map(|i| (i as u64 ^ seed) as u8).collect();
                let mut new = old.clone();
                for (pos, val) in edits {
                    new[pos % len] = val;
                }
                (old, new)
            })
    }

    proptest! {
        #[test]
        fn refinement_ships_exactly_the_changed_sub_blocks((old, new) in pair()) {
            let key = [7u8; 32];
            let bitmap = differing(&sub_hashes(&key, &new), &sub_hashes(&key, &old));
            for (i, (a, b)) in old.chunks(SUB_BLOCK).zip(new.chunks(SUB_BLOCK)).enumerate() {
                // never misses a changed sub-block, never ships an unchanged one
                prop_assert_eq!(is_set(&bitmap, i), a != b);
            }
            let shipped = pieces(&new, &bitmap);
            let mut rebuilt = old.clone();
            prop_assert!(overlay(&mut rebuilt, &bitmap, &shipped));
            prop_assert_eq!(&rebuilt, &new);
            let mut written = old.clone();
            for range in selected_ranges(new.len(), &bitmap) {
                written[range.clone()].copy_from_slice(&new[range]);
            }
            prop_assert_eq!(written, new);
        }

        #[test]
        fn overlay_rejects_wrong_lengths((old, new) in pair(), extra in 1usize..10) {
            let key = [9u8; 32];
            let bitmap = differing(&sub_hashes(&key, &new), &sub_hashes(&key, &old));
            let mut shipped = pieces(&new, &bitmap);
            shipped.extend(std::iter::repeat_n(0u8, extra));
            let mut rebuilt = old.clone();
            prop_assert!(!overlay(&mut rebuilt, &bitmap, &shipped));
        }
    }
}
