//! The manifest: one 256-bit BLAKE3 hash per block of a device, plus a header saying what it
//! describes. Owns the in-memory type, the root hash, and the byte format (see
//! `docs/format.md`). No file I/O: [`crate::state::manifest_file`] saves and loads it.

use std::io::{self, Read, Write};

/// A block's BLAKE3 hash.
pub type BlockHash = [u8; 32];

/// A hash no block can have (finding one would be a BLAKE3 preimage): marks a block whose
/// content is unknown, so it always compares as changed.
pub const UNKNOWN_HASH: BlockHash = [0xff; 32];

/// Smallest accepted block size: 4 KiB.
pub const MIN_BLOCK_SIZE: u32 = 4096;
/// Largest accepted block size: 16 MiB.
pub const MAX_BLOCK_SIZE: u32 = 16 << 20;

const MAGIC: [u8; 8] = *b"BKMRMANI";
const FORMAT_VERSION: u32 = 1;
const HEADER_LEN: usize = 104;
const ROOT_CONTEXT: &str = "blkmirror 2026 manifest root v1";

/// Why a manifest could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// Reading failed.
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
    /// The first 8 bytes are not `BKMRMANI`.
    #[error("not a blkmirror manifest (bad magic)")]
    BadMagic,
    /// A format version this build does not read.
    #[error("manifest format version {found} is not supported (this build reads version {FORMAT_VERSION})")]
    UnsupportedVersion {
        /// The version in the header.
        found: u32,
    },
    /// A header field is out of range or contradicts another (what, in words).
    #[error("manifest header is inconsistent: {0}")]
    BadHeader(String),
    /// The byte length is not what the header implies.
    #[error(
        "manifest is truncated or has trailing bytes: expected {expected} bytes, found {found}"
    )]
    BadLength {
        /// Bytes the header implies (header, hashes, checksum).
        expected: u64,
        /// Bytes there are.
        found: u64,
    },
    /// The trailing checksum does not match the bytes before it, or the stored root does not
    /// match the hashes.
    #[error("manifest checksum does not match (file corrupted)")]
    BadChecksum,
}

/// Checks a block size: a power of two within [`MIN_BLOCK_SIZE`, `MAX_BLOCK_SIZE`].
pub fn check_block_size(block_size: u64) -> Result<u32, String> {
    if !block_size.is_power_of_two()
        || block_size < MIN_BLOCK_SIZE as u64
        || block_size > MAX_BLOCK_SIZE as u64
    {
        return Err(format!(
            "block size {block_size} must be a power of two between 4 KiB and 16 MiB"
        ));
    }
    Ok(block_size as u32)
}

/// Number of blocks covering `device_size` bytes.
pub fn block_count(device_size: u64, block_size: u32) -> u64 {
    device_size.div_ceil(block_size as u64)
}

/// Length in bytes of block `index` (the last block may be short).
pub fn block_len(device_size: u64, block_size: u32, index: u64) -> usize {
    let start = index * block_size as u64;
    (device_size.saturating_sub(start)).min(block_size as u64) as usize
}

/// Hash of one block's bytes.
pub fn hash_block(data: &[u8]) -> BlockHash {
    *blake3::hash(data).as_bytes()
}

/// Hash of an all-zero block of `len` bytes.
pub fn zero_block_hash(len: usize) -> BlockHash {
    let mut hasher = blake3::Hasher::new();
    let zeros = [0u8; 4096];
    let mut left = len;
    while left > 0 {
        let n = left.min(zeros.len());
        hasher.update(&zeros[..n]);
        left -= n;
    }
    *hasher.finalize().as_bytes()
}

/// True if every byte is zero.
///
/// ORs 64-byte pieces together, which the compiler turns into SIMD, and stops at the first
/// piece that is not zero (about 3x faster than comparing aligned `u128` words one by one).
pub fn is_zero(data: &[u8]) -> bool {
    let mut pieces = data.chunks_exact(64);
    pieces
        .by_ref()
        .all(|piece| piece.iter().fold(0u8, |acc, &b| acc | b) == 0)
        && pieces.remainder().iter().all(|&b| b == 0)
}

/// Per-block hashes of one device image, with what they describe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Manifest {
    /// Bytes per block: a power of two from [`MIN_BLOCK_SIZE`] to [`MAX_BLOCK_SIZE`].
    pub block_size: u32,
    /// Bytes of the device described; the last block may be shorter than `block_size`.
    pub device_size: u64,
    /// The generation this manifest belongs to (0 until one is committed; see
    /// docs/format.md).
    pub generation: u64,
    /// BLAKE3 of the source identity string (all zero when not tied to a source).
    pub source_identity: [u8; 32],
    hashes: Vec<BlockHash>,
}

impl Manifest {
    /// A manifest of a device holding only zeros (a freshly created sparse file).
    pub fn zeroed(block_size: u32, device_size: u64) -> Self {
        let mut manifest = Manifest {
            block_size,
            device_size: 0,
            generation: 0,
            source_identity: [0; 32],
            hashes: Vec::new(),
        };
        manifest.resize(device_size);
        manifest
    }

    /// A manifest from hashes computed elsewhere. `hashes.len()` must match the block count.
    pub fn from_hashes(block_size: u32, device_size: u64, hashes: Vec<BlockHash>) -> Self {
        assert_eq!(hashes.len() as u64, block_count(device_size, block_size));
        Manifest {
            block_size,
            device_size,
            generation: 0,
            source_identity: [0; 32],
            hashes,
        }
    }

    /// Number of blocks (hashes).
    pub fn block_count(&self) -> u64 {
        self.hashes.len() as u64
    }

    /// All block hashes, in block order.
    pub fn hashes(&self) -> &[BlockHash] {
        &self.hashes
    }

    /// Hash of block `index`, or `None` past the end.
    pub fn hash(&self, index: u64) -> Option<&BlockHash> {
        self.hashes.get(index as usize)
    }

    /// The bytes of the blocks whose hashes differ from `other`'s, or `None` when the two
    /// describe devices of different geometry.
    pub fn differing(&self, other: &Manifest) -> Option<super::ranges::RangeSet> {
        if !other.matches_geometry(self.block_size, self.device_size) {
            return None;
        }
        let block = self.block_size as u64;
        let differ = self.hashes.iter().zip(&other.hashes).enumerate();
        Some(
            differ
                .filter(|(_, (a, b))| a != b)
                .map(|(i, _)| {
                    let start = i as u64 * block;
                    start..(start + block).min(self.device_size)
                })
                .collect(),
        )
    }

    /// Sets the hash of block `index`. Panics past the end.
    pub fn set_hash(&mut self, index: u64, hash: BlockHash) {
        self.hashes[index as usize] = hash;
    }

    /// Marks the blocks in `blocks` (block indices) as unknown: the next cycle ships them.
    pub fn mark_unknown(&mut self, blocks: &super::ranges::RangeSet) {
        for range in blocks.iter() {
            let end = range.end.min(self.block_count());
            for index in range.start.min(end)..end {
                self.hashes[index as usize] = UNKNOWN_HASH;
            }
        }
    }

    /// Changes the described size. New blocks are assumed to hold zeros; a block whose length
    /// changes keeps a hash that will no longer match (so it is treated as changed).
    pub fn resize(&mut self, device_size: u64) {
        let count = block_count(device_size, self.block_size) as usize;
        let old_count = self.hashes.len();
        let full_zero = zero_block_hash(self.block_size as usize);
        self.hashes.resize(count, full_zero);
        if count > old_count {
            let last = count as u64 - 1;
            let len = block_len(device_size, self.block_size, last);
            if len != self.block_size as usize {
                self.hashes[last as usize] = zero_block_hash(len);
            }
        }
        if count > 0 && count <= old_count && device_size != self.device_size {
            // The last block changed length: its old hash cannot match new content.
            let last = count - 1;
            if block_len(device_size, self.block_size, last as u64)
                != block_len(self.device_size, self.block_size, last as u64)
            {
                self.hashes[last] = UNKNOWN_HASH;
            }
        }
        self.device_size = device_size;
    }

    /// The root hash: commits to the size, the block size and every block hash.
    pub fn root(&self) -> BlockHash {
        root_of(self.device_size, self.block_size, &self.hashes)
    }

    /// Does this manifest describe a device of this geometry?
    pub fn matches_geometry(&self, block_size: u32, device_size: u64) -> bool {
        self.block_size == block_size && self.device_size == device_size
    }

    /// Writes the manifest in the documented format.
    pub fn encode(&self, writer: &mut impl Write) -> io::Result<()> {
        let mut writer = ChecksumWriter {
            inner: writer,
            hasher: blake3::Hasher::new(),
        };
        let mut header = Vec::with_capacity(HEADER_LEN);
        header.extend_from_slice(&MAGIC);
        header.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        header.extend_from_slice(&self.block_size.to_le_bytes());
        header.extend_from_slice(&self.device_size.to_le_bytes());
        header.extend_from_slice(&self.generation.to_le_bytes());
        header.extend_from_slice(&self.source_identity);
        header.extend_from_slice(&self.root());
        header.extend_from_slice(&(self.hashes.len() as u64).to_le_bytes());
        debug_assert_eq!(header.len(), HEADER_LEN);
        writer.write_all(&header)?;
        writer.write_all(self.hashes.as_flattened())?;
        let checksum = *writer.hasher.finalize().as_bytes();
        writer.inner.write_all(&checksum)
    }

    /// Reads a manifest, checking magic, version, geometry, length and checksum.
    /// `available` is the number of bytes the reader holds, checked before allocating.
    pub fn decode(reader: &mut impl Read, available: u64) -> Result<Manifest, ManifestError> {
        let mut header = [0u8; HEADER_LEN];
        if available < (HEADER_LEN + 32) as u64 {
            return Err(ManifestError::BadLength {
                expected: (HEADER_LEN + 32) as u64,
                found: available,
            });
        }
        reader.read_exact(&mut header)?;
        if header[0..8] != MAGIC {
            return Err(ManifestError::BadMagic);
        }
        let version = u32::from_le_bytes(header[8..12].try_into().unwrap());
        if version != FORMAT_VERSION {
            return Err(ManifestError::UnsupportedVersion { found: version });
        }
        let block_size = u32::from_le_bytes(header[12..16].try_into().unwrap());
        let device_size = u64::from_le_bytes(header[16..24].try_into().unwrap());
        let generation = u64::from_le_bytes(header[24..32].try_into().unwrap());
        let source_identity: [u8; 32] = header[32..64].try_into().unwrap();
        let stored_root: BlockHash = header[64..96].try_into().unwrap();
        let count = u64::from_le_bytes(header[96..104].try_into().unwrap());
        check_block_size(block_size as u64).map_err(ManifestError::BadHeader)?;
        if count != block_count(device_size, block_size) {
            return Err(ManifestError::BadHeader(format!(
                "{count} blocks recorded for {device_size} bytes of {block_size}-byte blocks"
            )));
        }
        let expected = count
            .checked_mul(32)
            .and_then(|n| n.checked_add((HEADER_LEN + 32) as u64))
            .ok_or_else(|| ManifestError::BadHeader("block count overflows".into()))?;
        if expected != available {
            return Err(ManifestError::BadLength {
                expected,
                found: available,
            });
        }
        let mut hasher = blake3::Hasher::new();
        hasher.update(&header);
        let mut hashes = vec![[0u8; 32]; count as usize];
        reader.read_exact(hashes.as_flattened_mut())?;
        hasher.update(hashes.as_flattened());
        let mut checksum = [0u8; 32];
        reader.read_exact(&mut checksum)?;
        if *hasher.finalize().as_bytes() != checksum {
            return Err(ManifestError::BadChecksum);
        }
        let manifest = Manifest {
            block_size,
            device_size,
            generation,
            source_identity,
            hashes,
        };
        if manifest.root() != stored_root {
            return Err(ManifestError::BadChecksum);
        }
        Ok(manifest)
    }
}

/// Root hash over a geometry and its block hashes.
pub fn root_of(device_size: u64, block_size: u32, hashes: &[BlockHash]) -> BlockHash {
    let mut hasher = blake3::Hasher::new_derive_key(ROOT_CONTEXT);
    hasher.update(&device_size.to_le_bytes());
    hasher.update(&block_size.to_le_bytes());
    hasher.update(hashes.as_flattened());
    *hasher.finalize().as_bytes()
}

struct ChecksumWriter<'a, W: Write> {
    inner: &'a mut W,
    hasher: blake3::Hasher,
}

impl<W: Write> Write for ChecksumWriter<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample(size: u64, bs: u32) -> Manifest {
        let count = block_count(size, bs);
        let hashes = (0..count).map(|i| hash_block(&i.to_le_bytes())).collect();
        let mut m = Manifest::from_hashes(bs, size, hashes);
        m.generation = 7;
        m.source_identity = [3; 32];
        m
    }

    #[test]
    fn round_trip_and_corruption() {
        let m = sample(1_000_000, 4096);
        let mut buf = Vec::new();
        m.encode(&mut buf).unwrap();
        let back = Manifest::decode(&mut &buf[..], buf.len() as u64).unwrap();
        assert_eq!(back, m);
        let mut bad = buf.clone();
        bad[200] ^= 1;
        assert!(matches!(
            Manifest::decode(&mut &bad[..], bad.len() as u64),
            Err(ManifestError::BadChecksum)
        ));
        let mut v2 = buf.clone();
        v2[8] = 2;
        assert!(matches!(
            Manifest::decode(&mut &v2[..], v2.len() as u64),
            Err(ManifestError::UnsupportedVersion { found: 2 })
        ));
        let short = &buf[..buf.len() - 1];
        assert!(Manifest::decode(&mut &short[..], short.len() as u64).is_err());
    }

    #[test]
    fn zeroed_matches_hashing_zeros() {
        let m = Manifest::zeroed(4096, 10_000);
        assert_eq!(m.block_count(), 3);
        assert_eq!(m.hash(0).unwrap(), &hash_block(&[0; 4096]));
        assert_eq!(m.hash(2).unwrap(), &hash_block(&[0; 10_000 - 8192]));
    }

    #[test]
    fn block_size_rules() {
        assert!(check_block_size(4096).is_ok());
        assert!(check_block_size(16 << 20).is_ok());
        assert!(check_block_size(2048).is_err());
        assert!(check_block_size(32 << 20).is_err());
        assert!(check_block_size(65537).is_err());
    }

    proptest! {
        #[test]
        fn encode_decode_round_trip(size in 0u64..5_000_000, shift in 12u32..16, generation: u64) {
            let mut m = sample(size, 1 << shift);
            m.generation = generation;
            let mut buf = Vec::new();
            m.encode(&mut buf).unwrap();
            let back = Manifest::decode(&mut &buf[..], buf.len() as u64).unwrap();
            prop_assert_eq!(back, m);
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = Manifest::decode(&mut &bytes[..], bytes.len() as u64);
        }

        #[test]
        fn zero_detection(mut data in proptest::collection::vec(0u8..1, 0..300), pos: usize, val in 1u8..) {
            prop_assert!(is_zero(&data));
            if !data.is_empty() {
                let i = pos % data.len();
                data[i] = val;
                prop_assert!(!is_zero(&data));
            }
        }
    }
}
