//! Extent compression as the sender does it (`zstd::bulk::compress`, a fresh context per
//! extent) at levels 1, 3 and 9, against a raw copy (what a level-0 or incompressible extent
//! costs), on 1 MiB extents of three kinds of content; and decompression as the receiver does
//! it (`zstd::bulk::Decompressor::decompress(payload, raw_len)`, one reused decompressor) of
//! level-3 payloads. Throughput is in plaintext bytes. Compression ratios are printed once.
//!
//! Run: `cargo bench --bench compress` (or `-- --quick`).

// `criterion_group!` defines an undocumented `pub fn`.
#![allow(missing_docs)]

#[path = "common/mod.rs"]
mod common;
use common::Rng;
use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

/// The sender's extent size (`EXTENT_TARGET_BYTES`).
const EXTENT: usize = 1 << 20;
const LEVELS: [i32; 3] = [1, 3, 9];

/// Incompressible bytes.
fn random() -> Vec<u8> {
    let mut data = vec![0u8; EXTENT];
    Rng(0x5eed).fill(&mut data);
    data
}

/// Log-like text: lines of words drawn at random from a small vocabulary, with numbers.
fn text() -> Vec<u8> {
    const VOCABULARY: &str = "the block device mirror receiver sender generation committed \
        extent hash manifest error warning info write read bytes cycle root zero run target \
        source snapshot of and to in";
    let words: Vec<&str> = VOCABULARY.split_whitespace().collect();
    let mut rng = Rng(0x7e47);
    let mut data = Vec::with_capacity(EXTENT + 64);
    while data.len() < EXTENT {
        let line = rng.next();
        data.extend_from_slice(format!("{:>10} ", line % 100_000_000).as_bytes());
        for _ in 0..(4 + line % 9) {
            data.extend_from_slice(words[(rng.next() % words.len() as u64) as usize].as_bytes());
            data.push(b' ');
        }
        data.push(b'\n');
    }
    data.truncate(EXTENT);
    data
}

/// Random 4 KiB blocks alternating with zero 4 KiB blocks (zeros inside a data extent, as
/// when a partly zeroed 64 KiB block changes).
fn half_zeros() -> Vec<u8> {
    let mut data = random();
    for block in data.chunks_mut(4096).skip(1).step_by(2) {
        block.fill(0);
    }
    data
}

fn contents() -> [(&'static str, Vec<u8>); 3] {
    [
        ("random", random()),
        ("text", text()),
        ("half-zero", half_zeros()),
    ]
}

fn configure(group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>) {
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .throughput(Throughput::Bytes(EXTENT as u64));
}

fn compress(c: &mut Criterion) {
    let contents = contents();
    for (name, data) in &contents {
        for level in LEVELS {
            let size = zstd::bulk::compress(data, level).expect("compress").len();
            println!(
                "ratio {name:>9} level {level}: {size:>8} bytes, {:.2}x",
                EXTENT as f64 / size as f64
            );
        }
    }
    let mut group = c.benchmark_group("compress");
    configure(&mut group);
    for (name, data) in &contents {
        group.bench_function(BenchmarkId::new("raw-copy", name), |b| {
            b.iter(|| black_box(black_box(data.as_slice()).to_vec()))
        });
        for level in LEVELS {
            group.bench_function(BenchmarkId::new(format!("zstd-{level}"), name), |b| {
                b.iter(|| zstd::bulk::compress(black_box(data), level).expect("compress"))
            });
        }
    }
    group.finish();
}

fn decompress(c: &mut Criterion) {
    let mut group = c.benchmark_group("decompress");
    configure(&mut group);
    let mut decompressor = zstd::bulk::Decompressor::new().expect("decompressor");
    for (name, data) in contents() {
        let payload = zstd::bulk::compress(&data, 3).expect("compress");
        let check = decompressor
            .decompress(&payload, data.len())
            .expect("decompress");
        assert_eq!(check, data);
        group.bench_function(BenchmarkId::new("zstd-3", name), |b| {
            b.iter(|| {
                decompressor
                    .decompress(black_box(&payload), EXTENT)
                    .expect("decompress")
            })
        });
    }
    group.finish();
}

criterion_group!(benches, compress, decompress);
criterion_main!(benches);
