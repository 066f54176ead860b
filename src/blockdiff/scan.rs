//! The parallel scan: reads a source in large chunks (a reader thread doing `pread`, or a
//! memory map), hashes each chunk's blocks with BLAKE3 on a rayon pool, recognises all-zero
//! blocks, and hands each hashed chunk to a sink in order. The reader runs ahead by a bounded
//! number of chunks, so memory stays bounded whatever the device size.

use std::sync::atomic::{AtomicBool, Ordering};

use rayon::prelude::*;

use super::manifest::{block_count, hash_block, is_zero, zero_block_hash, BlockHash};
use super::source::{BlockSource, ReadMode};
use crate::progress::{Progress, Stage};

/// Default bytes read per chunk.
pub const DEFAULT_CHUNK_BYTES: usize = 8 << 20;

/// How to scan.
#[derive(Clone, Debug)]
pub struct ScanOptions {
    pub block_size: u32,
    pub read_mode: ReadMode,
    /// Bytes per chunk; rounded to a whole number of blocks (at least one).
    pub chunk_bytes: usize,
}

impl ScanOptions {
    pub fn new(block_size: u32) -> Self {
        ScanOptions {
            block_size,
            read_mode: ReadMode::default(),
            chunk_bytes: DEFAULT_CHUNK_BYTES,
        }
    }

    fn blocks_per_chunk(&self) -> u64 {
        (self.chunk_bytes as u64 / self.block_size as u64).max(1)
    }
}

/// One hashed chunk: blocks `first_block..first_block + hashes.len()`.
pub struct ScannedChunk<'a> {
    pub first_block: u64,
    pub data: &'a [u8],
    pub hashes: &'a [BlockHash],
    pub zero: &'a [bool],
}

/// Why a scan stopped.
#[derive(Debug, thiserror::Error)]
pub enum ScanError<E> {
    #[error("read error at byte {offset} of {path}: {source}")]
    Read {
        path: String,
        offset: u64,
        source: std::io::Error,
    },
    #[error("cancelled")]
    Cancelled,
    #[error("{0}")]
    Sink(E),
}

/// Scans `source`, calling `sink` for every chunk in order.
pub fn scan<E>(
    source: &BlockSource,
    options: &ScanOptions,
    pool: &rayon::ThreadPool,
    cancel: &AtomicBool,
    progress: &dyn Progress,
    mut sink: impl FnMut(ScannedChunk<'_>) -> Result<(), E>,
) -> Result<(), ScanError<E>> {
    let hasher = ChunkHasher::new(options.block_size);
    progress.start(Stage::Scan, source.size());
    let result = match options.read_mode.resolve(source.kind()) {
        ReadMode::Pread | ReadMode::Auto => {
            scan_pread(source, options, pool, cancel, &hasher, progress, &mut sink)
        }
        ReadMode::Mmap => scan_mmap(source, options, pool, cancel, &hasher, progress, &mut sink),
    };
    progress.finish(Stage::Scan);
    result
}

/// Hashes the blocks of a chunk in parallel.
pub struct ChunkHasher {
    block_size: u32,
    full_zero: BlockHash,
}

impl ChunkHasher {
    pub fn new(block_size: u32) -> Self {
        ChunkHasher {
            block_size,
            full_zero: zero_block_hash(block_size as usize),
        }
    }

    /// Fills `hashes` and `zero` for the blocks of `data` (the last block may be short).
    pub fn hash(
        &self,
        pool: &rayon::ThreadPool,
        data: &[u8],
        hashes: &mut Vec<BlockHash>,
        zero: &mut Vec<bool>,
    ) {
        let block_size = self.block_size as usize;
        let results: Vec<(BlockHash, bool)> = pool.install(|| {
            data.par_chunks(block_size)
                .map(|block| {
                    if is_zero(block) {
                        let hash = if block.len() == block_size {
                            self.full_zero
                        } else {
                            zero_block_hash(block.len())
                        };
                        (hash, true)
                    } else if block.len() >= 1 << 20 {
                        let mut hasher = blake3::Hasher::new();
                        hasher.update_rayon(block);
                        (*hasher.finalize().as_bytes(), false)
                    } else {
                        (hash_block(block), false)
                    }
                })
                .collect()
        });
        hashes.clear();
        zero.clear();
        for (hash, is_zero) in results {
            hashes.push(hash);
            zero.push(is_zero);
        }
    }
}

fn check_cancel<E>(cancel: &AtomicBool) -> Result<(), ScanError<E>> {
    if cancel.load(Ordering::Relaxed) {
        Err(ScanError::Cancelled)
    } else {
        Ok(())
    }
}

/// Bytes each rayon task reads with one `pread` (reads of a chunk run in parallel, like the
/// page faults of a memory map do).
const READ_PIECE: usize = 1 << 20;

fn scan_pread<E>(
    source: &BlockSource,
    options: &ScanOptions,
    pool: &rayon::ThreadPool,
    cancel: &AtomicBool,
    hasher: &ChunkHasher,
    progress: &dyn Progress,
    sink: &mut impl FnMut(ScannedChunk<'_>) -> Result<(), E>,
) -> Result<(), ScanError<E>> {
    let size = source.size();
    let per_chunk = options.blocks_per_chunk();
    let chunk_len = per_chunk * options.block_size as u64;
    let mut buf = Vec::new();
    let mut hashes = Vec::new();
    let mut zero = Vec::new();
    let mut offset = 0u64;
    while offset < size {
        check_cancel(cancel)?;
        let len = (size - offset).min(chunk_len) as usize;
        buf.resize(len, 0);
        pool.install(|| {
            buf.par_chunks_mut(READ_PIECE)
                .enumerate()
                .try_for_each(|(i, piece)| source.read_at(piece, offset + (i * READ_PIECE) as u64))
        })
        .map_err(|e| ScanError::Read {
            path: source.path().display().to_string(),
            offset,
            source: e,
        })?;
        hasher.hash(pool, &buf, &mut hashes, &mut zero);
        sink(ScannedChunk {
            first_block: offset / options.block_size as u64,
            data: &buf,
            hashes: &hashes,
            zero: &zero,
        })
        .map_err(ScanError::Sink)?;
        progress.advance(Stage::Scan, len as u64, 0);
        offset += len as u64;
    }
    Ok(())
}

fn scan_mmap<E>(
    source: &BlockSource,
    options: &ScanOptions,
    pool: &rayon::ThreadPool,
    cancel: &AtomicBool,
    hasher: &ChunkHasher,
    progress: &dyn Progress,
    sink: &mut impl FnMut(ScannedChunk<'_>) -> Result<(), E>,
) -> Result<(), ScanError<E>> {
    if source.size() == 0 {
        return Ok(());
    }
    let map = source.map().map_err(|e| ScanError::Read {
        path: source.path().display().to_string(),
        offset: 0,
        source: e,
    })?;
    let chunk_len = (options.blocks_per_chunk() * options.block_size as u64) as usize;
    let mut hashes = Vec::new();
    let mut zero = Vec::new();
    for (i, data) in map.chunks(chunk_len).enumerate() {
        check_cancel(cancel)?;
        hasher.hash(pool, data, &mut hashes, &mut zero);
        sink(ScannedChunk {
            first_block: i as u64 * options.blocks_per_chunk(),
            data,
            hashes: &hashes,
            zero: &zero,
        })
        .map_err(ScanError::Sink)?;
        // Unmap what was read (it stays in the page cache) so the resident set stays bounded.
        // SAFETY: the mapping is read-only and nothing refers to this range any more.
        let _ = unsafe {
            map.unchecked_advise_range(
                memmap2::UncheckedAdvice::DontNeed,
                i * chunk_len,
                data.len(),
            )
        };
        progress.advance(Stage::Scan, data.len() as u64, 0);
    }
    Ok(())
}

/// Hashes a whole source into a list of block hashes (used to rebuild a lost manifest and by
/// `verify`).
pub fn hash_all(
    source: &BlockSource,
    options: &ScanOptions,
    pool: &rayon::ThreadPool,
    cancel: &AtomicBool,
    progress: &dyn Progress,
) -> Result<Vec<BlockHash>, ScanError<std::convert::Infallible>> {
    let mut all = Vec::with_capacity(block_count(source.size(), options.block_size) as usize);
    scan(source, options, pool, cancel, progress, |chunk| {
        all.extend_from_slice(chunk.hashes);
        Ok(())
    })?;
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blockdiff::manifest::Manifest;
    use crate::progress::NoProgress;
    use std::io::Write;

    #[test]
    fn pread_and_mmap_agree_with_direct_hashing() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        let mut data = vec![0u8; 3 * 65536 + 1000];
        for (i, b) in data.iter_mut().enumerate().skip(65536) {
            *b = (i % 251) as u8;
        }
        file.write_all(&data).unwrap();
        let source = BlockSource::open(file.path()).unwrap();
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        let cancel = AtomicBool::new(false);
        let expected: Vec<BlockHash> = data.chunks(4096).map(hash_block).collect();
        for mode in [ReadMode::Pread, ReadMode::Mmap] {
            let options = ScanOptions {
                block_size: 4096,
                read_mode: mode,
                chunk_bytes: 65536,
            };
            let hashes = hash_all(&source, &options, &pool, &cancel, &NoProgress).unwrap();
            assert_eq!(hashes, expected, "{mode:?}");
        }
        let zeroed = Manifest::zeroed(4096, 65536);
        assert_eq!(&expected[..16], zeroed.hashes());
    }
}
