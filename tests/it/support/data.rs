//! Seeded test data: the [`Rng`], random and sparse files with known zero runs, random writes,
//! zeroed and appended [`Range`]s, changed-block sets, and small file utilities (size, content,
//! allocated bytes, one corrupted byte).

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::{BLOCK, KIB, MIB};

/// SplitMix64: tiny, seeded, good enough for test data.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x5DEE_CE66_D1CE_4E5B)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }

    /// Fills with random bytes; never produces a run of 8 zero bytes at an 8-aligned position
    /// (so a random block is never mistaken for a zero block).
    pub fn fill(&mut self, buf: &mut [u8]) {
        let mut chunks = buf.chunks_exact_mut(8);
        for c in &mut chunks {
            c.copy_from_slice(&(self.next_u64() | 1).to_le_bytes());
        }
        let rest = chunks.into_remainder();
        let last = (self.next_u64() | 1).to_le_bytes();
        let n = rest.len();
        rest.copy_from_slice(&last[..n]);
    }

    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.fill(&mut v);
        v
    }
}

/// A byte range `[offset, offset + len)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Range {
    pub offset: u64,
    pub len: u64,
}

/// Writes `len` random bytes (seeded) to a new file at `path`, with explicit zero runs: some
/// block-aligned runs spanning several blocks, some unaligned. Zeros are written, not holes.
/// Returns the zero runs.
pub fn write_random_file(path: &Path, len: u64, seed: u64) -> Vec<Range> {
    let mut rng = Rng::new(seed);
    let mut data = rng.bytes(len as usize);
    let mut zeros = Vec::new();
    if len >= 4 * MIB {
        // One run per 4 MiB: alternately block-aligned (2..=8 blocks) and unaligned.
        let mut base = 0;
        let mut aligned = true;
        while base + 4 * MIB <= len {
            let r = if aligned {
                let start = base + rng.below(4 * MIB / BLOCK - 8) * BLOCK;
                Range {
                    offset: start,
                    len: rng.range(2, 8) * BLOCK,
                }
            } else {
                Range {
                    offset: base + rng.below(3 * MIB),
                    len: rng.range(1, 300 * KIB),
                }
            };
            data[r.offset as usize..(r.offset + r.len) as usize].fill(0);
            zeros.push(r);
            aligned = !aligned;
            base += 4 * MIB;
        }
    }
    fs::write(path, &data).expect("write source");
    zeros
}

/// Creates a sparse file of `len` bytes with `count` random extents of `extent` bytes each,
/// written at random (seeded, block-aligned) offsets. Returns the extents.
pub fn write_sparse_file(
    path: &Path,
    len: u64,
    seed: u64,
    count: usize,
    extent: u64,
) -> Vec<Range> {
    let mut rng = Rng::new(seed);
    let f = File::create(path).expect("create sparse file");
    f.set_len(len).expect("set_len");
    let mut out = Vec::new();
    for _ in 0..count {
        let off = rng.below((len - extent) / BLOCK) * BLOCK;
        f.write_all_at(&rng.bytes(extent as usize), off)
            .expect("write extent");
        out.push(Range {
            offset: off,
            len: extent,
        });
    }
    f.sync_all().unwrap();
    out
}

/// Size of a file or block device.
pub fn size_of(path: &Path) -> u64 {
    let mut f = File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    f.seek(SeekFrom::End(0)).expect("seek end")
}

/// Opens a file or block device for writing in place (no truncation).
fn open_rw(path: &Path) -> File {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open {} for writing: {e}", path.display()))
}

/// Writes `count` random extents of `min_len..=max_len` bytes at arbitrary (unaligned) offsets
/// within the current size of `path` (file or block device), then fsyncs. Returns the ranges.
pub fn random_writes(
    path: &Path,
    rng: &mut Rng,
    count: usize,
    min_len: u64,
    max_len: u64,
) -> Vec<Range> {
    let size = size_of(path);
    let f = open_rw(path);
    let mut out = Vec::new();
    for _ in 0..count {
        let len = rng.range(min_len, max_len).min(size);
        let offset = rng.below(size - len + 1);
        f.write_all_at(&rng.bytes(len as usize), offset)
            .expect("random write");
        out.push(Range { offset, len });
    }
    f.sync_all().expect("fsync");
    out
}

/// Writes explicit zeros over `range` (not a hole), then fsyncs.
pub fn zero_range(path: &Path, range: Range) {
    let f = open_rw(path);
    f.write_all_at(&vec![0u8; range.len as usize], range.offset)
        .expect("zero range");
    f.sync_all().expect("fsync");
}

/// Appends `len` random bytes to a regular file. Returns the appended range.
pub fn append_random(path: &Path, rng: &mut Rng, len: u64) -> Range {
    let mut f = OpenOptions::new()
        .append(true)
        .open(path)
        .expect("open for append");
    let offset = f.metadata().unwrap().len();
    f.write_all(&rng.bytes(len as usize)).expect("append");
    f.sync_all().expect("fsync");
    Range { offset, len }
}

/// Indices of the `block`-sized blocks whose bytes differ between `old` and `new` (blocks past
/// the end of `old` count as changed; a partial last block is compared as it is).
pub fn changed_blocks(old: &[u8], new: &[u8], block: u64) -> BTreeSet<u64> {
    fn clamp(data: &[u8], i: usize, block: usize) -> &[u8] {
        let start = (i * block).min(data.len());
        let end = ((i + 1) * block).min(data.len());
        &data[start..end]
    }
    let block = block as usize;
    (0..new.len().div_ceil(block))
        .filter(|&i| clamp(old, i, block) != clamp(new, i, block))
        .map(|i| i as u64)
        .collect()
}

/// Number of blocks of a device/file of `len` bytes (last one may be partial).
pub fn block_count(len: u64, block: u64) -> u64 {
    len.div_ceil(block)
}

/// Flips every bit of the byte at `offset`, in place.
pub fn corrupt_byte(path: &Path, offset: u64) {
    let f = open_rw(path);
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, offset).expect("read byte");
    b[0] ^= 0xFF;
    f.write_all_at(&b, offset).expect("write byte");
    f.sync_all().expect("fsync");
}

/// The whole content of a file or block device.
pub fn read_all(path: &Path) -> Vec<u8> {
    fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// Allocated bytes of a file (st_blocks * 512).
pub fn allocated(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    fs::metadata(path).expect("metadata").blocks() * 512
}
