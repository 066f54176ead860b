//! Scan throughput: `hash_all` over a page-cached temporary file of mixed content, per block
//! size and read mode, on a rayon pool of 2 threads; and the pure hashing step
//! (`ChunkHasher::hash`) over an in-memory buffer per block size.
//!
//! Run: `cargo bench --bench scan` (or `-- --quick`). The file size defaults to 256 MiB;
//! `BLKMIRROR_BENCH_MIB=64` makes it smaller. The file lives in `$TMPDIR` (default `/tmp`),
//! which must be a disk-backed or tmpfs file system with room for it; it is read once before
//! measuring so every measured scan reads from the page cache.

// `criterion_group!` defines an undocumented `pub fn`.
#![allow(missing_docs)]

#[path = "common/mod.rs"]
mod common;
use common::Rng;
use std::hint::black_box;
use std::io::{Read, Write};
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use blkmirror::blockdiff::scan::{hash_all, ChunkHasher, ScanOptions, DEFAULT_CHUNK_BYTES};
use blkmirror::progress::NoProgress;
use blkmirror::source::{BlockSource, ReadMode};
use criterion::{
    criterion_group, criterion_main, BenchmarkId, Criterion, SamplingMode, Throughput,
};

const MIB: usize = 1 << 20;
const BLOCK_SIZES: [(u32, &str); 3] = [(4 << 10, "4K"), (64 << 10, "64K"), (1 << 20, "1M")];
const THREADS: usize = 2;
/// Size of the in-memory buffer for the pure hashing bench (one default scan chunk).
const HASH_BUFFER: usize = DEFAULT_CHUNK_BYTES;

/// Fills `buf` with mixed content in 64 KiB pieces: about 40% random, 30% repetitive text,
/// 30% zeros. Zero pieces are 64 KiB, so 4K and 64K blocks see all-zero blocks; 1 MiB blocks
/// mostly do not, which is realistic (large blocks are rarely entirely zero).
fn mixed_content(buf: &mut [u8], seed: u64) {
    const PIECE: usize = 64 << 10;
    const TEXT: &[u8] =
        b"The quick brown fox jumps over the lazy dog; blkmirror ships changed blocks. ";
    let mut rng = Rng(seed | 1);
    for piece in buf.chunks_mut(PIECE) {
        match rng.next() % 10 {
            0..=3 => rng.fill(piece),
            4..=6 => {
                for (i, b) in piece.iter_mut().enumerate() {
                    *b = TEXT[i % TEXT.len()];
                }
            }
            _ => piece.fill(0),
        }
    }
}

fn file_size() -> usize {
    std::env::var("BLKMIRROR_BENCH_MIB")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or(256)
        * MIB
}

/// Writes the mixed-content file and reads it back once so it sits in the page cache.
fn make_file(size: usize) -> tempfile::NamedTempFile {
    let mut file = tempfile::NamedTempFile::new().expect("create temp file");
    let mut piece = vec![0u8; 8 * MIB];
    let mut written = 0;
    let mut seed = 0x5eed;
    while written < size {
        let n = piece.len().min(size - written);
        mixed_content(&mut piece[..n], seed);
        file.write_all(&piece[..n]).expect("write temp file");
        written += n;
        seed += 1;
    }
    file.flush().expect("flush temp file");
    let mut reader = std::fs::File::open(file.path()).expect("reopen temp file");
    while reader.read(&mut piece).expect("warm page cache") > 0 {}
    file
}

fn pool() -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new()
        .num_threads(THREADS)
        .build()
        .expect("rayon pool")
}

fn scan_throughput(c: &mut Criterion) {
    let size = file_size();
    let file = make_file(size);
    let source = BlockSource::open(file.path()).expect("open source");
    let pool = pool();
    let cancel = AtomicBool::new(false);
    let mut group = c.benchmark_group("scan");
    group
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5))
        .throughput(Throughput::Bytes(size as u64));
    for (mode, mode_name) in [
        (ReadMode::Auto, "direct"),
        (ReadMode::Cached, "cached"),
        (ReadMode::Mmap, "mmap"),
    ] {
        for (block_size, label) in BLOCK_SIZES {
            let options = ScanOptions {
                read_mode: mode,
                ..ScanOptions::new(block_size)
            };
            group.bench_function(BenchmarkId::new(mode_name, label), |b| {
                b.iter(|| {
                    let hashes =
                        hash_all(&source, &options, &pool, &cancel, &NoProgress).expect("scan");
                    black_box(hashes)
                })
            });
        }
    }
    group.finish();
}

fn hash_throughput(c: &mut Criterion) {
    let mut data = vec![0u8; HASH_BUFFER];
    mixed_content(&mut data, 0x5eed);
    let pool = pool();
    let mut group = c.benchmark_group("hash");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .throughput(Throughput::Bytes(data.len() as u64));
    for (block_size, label) in BLOCK_SIZES {
        let hasher = ChunkHasher::new(block_size);
        let mut hashes = Vec::new();
        let mut zero = Vec::new();
        group.bench_function(BenchmarkId::new("chunk_hasher", label), |b| {
            b.iter(|| {
                hasher.hash(&pool, black_box(&data), &mut hashes, &mut zero);
                black_box((&hashes, &zero));
            })
        });
    }
    group.finish();
}

criterion_group!(benches, scan_throughput, hash_throughput);
criterion_main!(benches);
