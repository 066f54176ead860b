//! The parallel scan: reads a set of ranges of a source (everything, or what a change tracker
//! reported) in large chunks (several reader threads reading ahead
//! and hashing on their own threads, see [`crate::source::readahead`]; or a memory map hashed on a
//! rayon pool), hashes each chunk's blocks with BLAKE3, recognises all-zero blocks (holes of
//! sparse files without looking at them), and hands each hashed chunk to a sink in order.
//! Memory stays bounded whatever the device size.

use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};

use rayon::prelude::*;

use super::manifest::{block_count, hash_block, is_zero, zero_block_hash, BlockHash};
use super::ranges::RangeSet;
use crate::progress::{Progress, Stage};
use crate::source::readahead::{self, Chunk, ReadAheadError, ReadAheadOptions, BUFFERS_PER_READER};
use crate::source::throttle::Throttle;
use crate::source::{BlockSource, ReadMode};

/// Default bytes read per chunk.
pub const DEFAULT_CHUNK_BYTES: usize = 8 << 20;
/// Reader threads: each keeps one chunk read in flight (measured: four streams of large
/// chunks read a virtio disk about 1.5x faster than one; more gained nothing).
pub const READERS: usize = 4;
/// Reader threads at most, for small spans (the scattered ranges a change tracker reports):
/// small random reads gain from more requests in flight.
pub const MAX_READERS: usize = 16;
/// Bytes of read buffers the readers may hold between them (readers × 2 × largest span).
const READ_BUFFER_BUDGET: usize = 4 * 2 * DEFAULT_CHUNK_BYTES;

/// Readers for these spans: as many as the buffer budget allows, from [`READERS`] to
/// [`MAX_READERS`].
fn readers_for(spans: &[Range<u64>]) -> usize {
    let largest = spans
        .iter()
        .map(|s| s.end - s.start)
        .max()
        .unwrap_or(1)
        .max(1) as usize;
    (READ_BUFFER_BUDGET / (BUFFERS_PER_READER * largest)).clamp(READERS, MAX_READERS)
}

/// How to scan.
#[derive(Clone, Debug)]
pub struct ScanOptions {
    /// Bytes per hashed block (the manifest's block size).
    pub block_size: u32,
    /// How to read the source (see [`ReadMode`]).
    pub read_mode: ReadMode,
    /// Bytes per chunk; rounded to a whole number of blocks (at least one).
    pub chunk_bytes: usize,
    /// A read-rate limit, when the scan must leave bandwidth to others.
    pub throttle: Option<std::sync::Arc<Throttle>>,
}

impl ScanOptions {
    /// Options for `block_size`-byte blocks, the default read mode and chunk size.
    pub fn new(block_size: u32) -> Self {
        ScanOptions {
            block_size,
            read_mode: ReadMode::default(),
            chunk_bytes: DEFAULT_CHUNK_BYTES,
            throttle: None,
        }
    }

    /// Bytes per chunk: a whole number of blocks, at least one.
    fn chunk_len(&self) -> usize {
        let blocks = (self.chunk_bytes as u64 / self.block_size as u64).max(1);
        (blocks * self.block_size as u64) as usize
    }
}

/// One hashed chunk: blocks `first_block..first_block + hashes.len()`.
pub struct ScannedChunk<'a> {
    /// Index of the chunk's first block.
    pub first_block: u64,
    /// The chunk's bytes, starting at block `first_block` (the last block may be short).
    pub data: &'a [u8],
    /// One hash per block of `data`.
    pub hashes: &'a [BlockHash],
    /// One flag per block of `data`: true when the block is all zeros.
    pub zero: &'a [bool],
    /// Bytes of `data` read from the source (holes of a sparse file are not read).
    pub bytes_read: u64,
}

/// Why a scan stopped.
#[derive(Debug, thiserror::Error)]
pub enum ScanError<E> {
    /// Reading the source failed.
    #[error("read error at byte {offset} of {path}: {source}")]
    Read {
        /// The source's path, for the message.
        path: String,
        /// Byte offset of the read that failed.
        offset: u64,
        /// The error.
        source: std::io::Error,
    },
    /// The cancel flag was set.
    #[error("cancelled")]
    Cancelled,
    /// The sink returned this error; the scan stopped there.
    #[error("{0}")]
    Sink(E),
}

/// Scans the byte `ranges` of `source` (widened to whole blocks, clipped to the source),
/// calling `sink` for every chunk in order. `RangeSet::full(size)` scans everything.
pub fn scan<E>(
    source: &BlockSource,
    ranges: &RangeSet,
    options: &ScanOptions,
    pool: &rayon::ThreadPool,
    cancel: &AtomicBool,
    progress: &dyn Progress,
    mut sink: impl FnMut(ScannedChunk<'_>) -> Result<(), E>,
) -> Result<(), ScanError<E>> {
    let hasher = ChunkHasher::new(options.block_size);
    let spans = ranges
        .aligned_out(options.block_size as u64)
        .clipped(source.size())
        .pieces(options.chunk_len() as u64);
    progress.start(Stage::Scan, spans.iter().map(|s| s.end - s.start).sum());
    let result = match options.read_mode.resolve(source.kind()) {
        mode @ (ReadMode::Auto | ReadMode::Cached) => scan_ahead(
            source,
            &spans,
            options,
            mode != ReadMode::Cached,
            cancel,
            &hasher,
            progress,
            &mut sink,
        ),
        ReadMode::Mmap => scan_mmap(
            source, &spans, options, pool, cancel, &hasher, progress, &mut sink,
        ),
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
    /// A hasher for `block_size`-byte blocks (it precomputes the hash of an all-zero block).
    pub fn new(block_size: u32) -> Self {
        ChunkHasher {
            block_size,
            full_zero: zero_block_hash(block_size as usize),
        }
    }

    /// Fills `hashes` and `zero` for the blocks of `data` (the last block may be short),
    /// hashing blocks in parallel on `pool`.
    pub fn hash(
        &self,
        pool: &rayon::ThreadPool,
        data: &[u8],
        hashes: &mut Vec<BlockHash>,
        zero: &mut Vec<bool>,
    ) {
        let results: Vec<(BlockHash, bool)> = pool.install(|| {
            data.par_chunks(self.block_size as usize)
                .map(|block| self.hash_block(block, false))
                .collect()
        });
        hashes.clear();
        zero.clear();
        for (hash, is_zero) in results {
            hashes.push(hash);
            zero.push(is_zero);
        }
    }

    /// The same on the calling thread; `may_hold_data(range)` false says a block's bytes are
    /// known to be zeros (a hole), so it is not looked at.
    pub fn hash_here(
        &self,
        data: &[u8],
        may_hold_data: impl Fn(std::ops::Range<usize>) -> bool,
        hashes: &mut Vec<BlockHash>,
        zero: &mut Vec<bool>,
    ) {
        let block_size = self.block_size as usize;
        hashes.clear();
        zero.clear();
        for (i, block) in data.chunks(block_size).enumerate() {
            let start = i * block_size;
            let known_zero = !may_hold_data(start..start + block.len());
            let (hash, is_zero) = self.hash_block(block, known_zero);
            hashes.push(hash);
            zero.push(is_zero);
        }
    }

    /// One block's hash, and whether it is all zeros.
    fn hash_block(&self, block: &[u8], known_zero: bool) -> (BlockHash, bool) {
        if known_zero || is_zero(block) {
            let hash = if block.len() == self.block_size as usize {
                self.full_zero
            } else {
                zero_block_hash(block.len())
            };
            (hash, true)
        } else {
            (hash_block(block), false)
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

#[allow(clippy::too_many_arguments)]
fn scan_ahead<E>(
    source: &BlockSource,
    spans: &[Range<u64>],
    options: &ScanOptions,
    direct: bool,
    cancel: &AtomicBool,
    hasher: &ChunkHasher,
    progress: &dyn Progress,
    sink: &mut impl FnMut(ScannedChunk<'_>) -> Result<(), E>,
) -> Result<(), ScanError<E>> {
    let read_options = ReadAheadOptions {
        chunk_len: options.chunk_len(),
        readers: readers_for(spans),
        direct,
    };
    // Hashing happens on the reader threads, beside the reads and the sink.
    let prepare = |chunk: &Chunk, (hashes, zero): &mut (Vec<BlockHash>, Vec<bool>)| {
        hasher.hash_here(chunk.data(), |r| chunk.may_hold_data(r), hashes, zero);
    };
    let result = readahead::for_each_chunk(
        source,
        spans,
        read_options,
        cancel,
        prepare,
        |chunk, (hashes, zero)| {
            sink(ScannedChunk {
                first_block: chunk.offset / options.block_size as u64,
                data: chunk.data(),
                hashes,
                zero,
                bytes_read: chunk.bytes_from_source(),
            })?;
            progress.advance(Stage::Scan, chunk.data().len() as u64, 0);
            if let Some(throttle) = &options.throttle {
                throttle.admit(chunk.data().len() as u64, cancel);
            }
            crate::faults::delay_unless("BLKMIRROR_FAULT_SCAN_DELAY_MS", cancel);
            Ok(())
        },
    );
    result.map_err(|e| match e {
        ReadAheadError::Read { offset, source: e } => ScanError::Read {
            path: source.path().display().to_string(),
            offset,
            source: e,
        },
        ReadAheadError::Cancelled => ScanError::Cancelled,
        ReadAheadError::Consumer(e) => ScanError::Sink(e),
    })
}

#[allow(clippy::too_many_arguments)]
#[allow(unsafe_code)]
fn scan_mmap<E>(
    source: &BlockSource,
    spans: &[Range<u64>],
    options: &ScanOptions,
    pool: &rayon::ThreadPool,
    cancel: &AtomicBool,
    hasher: &ChunkHasher,
    progress: &dyn Progress,
    sink: &mut impl FnMut(ScannedChunk<'_>) -> Result<(), E>,
) -> Result<(), ScanError<E>> {
    if spans.is_empty() {
        return Ok(());
    }
    let map = source.map().map_err(|e| ScanError::Read {
        path: source.path().display().to_string(),
        offset: 0,
        source: e,
    })?;
    let mut hashes = Vec::new();
    let mut zero = Vec::new();
    for span in spans {
        check_cancel(cancel)?;
        let (start, end) = (span.start as usize, span.end as usize);
        let data = &map[start..end];
        hasher.hash(pool, data, &mut hashes, &mut zero);
        sink(ScannedChunk {
            first_block: span.start / options.block_size as u64,
            data,
            hashes: &hashes,
            zero: &zero,
            bytes_read: data.len() as u64,
        })
        .map_err(ScanError::Sink)?;
        // Unmap what was read (it stays in the page cache) so the resident set stays bounded.
        // SAFETY: the mapping is read-only and nothing refers to this range any more.
        let _ = unsafe {
            map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, data.len())
        };
        progress.advance(Stage::Scan, data.len() as u64, 0);
        if let Some(throttle) = &options.throttle {
            throttle.admit(data.len() as u64, cancel);
        }
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
    let everything = RangeSet::full(source.size());
    scan(
        source,
        &everything,
        options,
        pool,
        cancel,
        progress,
        |chunk| {
            all.extend_from_slice(chunk.hashes);
            Ok(())
        },
    )?;
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blockdiff::manifest::Manifest;
    use crate::progress::NoProgress;
    use std::io::Write;

    #[test]
    fn every_read_mode_agrees_with_direct_hashing() {
        use std::os::unix::fs::FileExt;
        let mut file = tempfile::NamedTempFile::new().unwrap();
        // Zeros written out, data, a hole of 64 KiB, data again, an unaligned tail.
        let mut data = vec![0u8; 5 * 65536 + 1000];
        for (i, b) in data.iter_mut().enumerate().skip(65536) {
            *b = (i % 251) as u8;
        }
        data[3 * 65536..4 * 65536].fill(0);
        file.write_all(&data[..3 * 65536]).unwrap();
        file.as_file()
            .write_all_at(&data[4 * 65536..], 4 * 65536)
            .unwrap();
        let source = BlockSource::open(file.path()).unwrap();
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        let cancel = AtomicBool::new(false);
        let expected: Vec<BlockHash> = data.chunks(4096).map(hash_block).collect();
        for mode in [ReadMode::Auto, ReadMode::Cached, ReadMode::Mmap] {
            let options = ScanOptions {
                read_mode: mode,
                chunk_bytes: 65536,
                ..ScanOptions::new(4096)
            };
            let hashes = hash_all(&source, &options, &pool, &cancel, &NoProgress).unwrap();
            assert_eq!(hashes, expected, "{mode:?}");
        }
        let zeroed = Manifest::zeroed(4096, 65536);
        assert_eq!(&expected[..16], zeroed.hashes());
        assert_eq!(
            &expected[48..64],
            zeroed.hashes(),
            "the hole hashes as zeros"
        );
    }
}
