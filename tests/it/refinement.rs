//! Shipping granularity: a coarse manifest (64 KiB blocks) with changed blocks refined to the
//! 4 KiB sub-blocks that really differ, checked end to end with the real binary.

use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::support::{assert_identical, s, send_once};

const MIB: usize = 1 << 20;

/// One real cycle; checks the target equals the source and returns the JSON report.
fn send(source: &Path, target: &Path, state: &Path, extra: &[&str]) -> serde_json::Value {
    let cycle = send_once(s(source), s(target), state, extra);
    assert_identical(source, target);
    cycle.raw
}

fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed;
    (0..len)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 56) as u8
        })
        .collect()
}

/// Flips one byte in each of the given 4 KiB sub-blocks.
fn touch_sub_blocks(path: &Path, sub_blocks: &[u64]) {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    for &i in sub_blocks {
        let at = i * 4096 + (i * 37) % 4096;
        let mut byte = [0u8];
        file.read_exact_at(&mut byte, at).unwrap();
        file.write_all_at(&[!byte[0]], at).unwrap();
    }
}

#[test]
fn changed_coarse_blocks_ship_only_their_changed_4k_sub_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let (source, target, state) = (
        dir.path().join("s"),
        dir.path().join("t"),
        dir.path().join("st"),
    );
    std::fs::write(&source, pattern(32 * MIB, 1)).unwrap();
    send(&source, &target, &state, &[]);
    // 9 sub-blocks in 8 coarse blocks (0 and 1 share one), one at the very end.
    let subs = [0, 1, 17, 100, 115, 2000, 4095, 5000, 8191];
    touch_sub_blocks(&source, &subs);
    let report = send(&source, &target, &state, &[]);
    assert_eq!(report["blocks_changed"], 8);
    assert_eq!(report["blocks_refined"], 8);
    assert_eq!(
        report["bytes_changed"],
        subs.len() as u64 * 4096,
        "{report}"
    );
    assert!(
        report["bytes_sent"].as_u64().unwrap() < 8 * 65536 / 4,
        "{report}"
    );
    assert_eq!(
        report["bytes_saved_by_refinement"],
        8 * 65536 - subs.len() as u64 * 4096
    );
    // The receiver read each refined block twice (to answer, then to patch), nothing else.
    assert_eq!(report["target_bytes_read"], 2 * 8 * 65536, "{report}");
}

#[test]
fn refinement_matches_a_4k_manifest_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("s");
    std::fs::write(&source, pattern(16 * MIB, 2)).unwrap();
    let (coarse, fine) = (dir.path().join("coarse"), dir.path().join("fine"));
    send(
        &source,
        &coarse,
        &dir.path().join("st1"),
        &["--block-size", "64K"],
    );
    send(
        &source,
        &fine,
        &dir.path().join("st2"),
        &["--block-size", "4K"],
    );
    let subs: Vec<u64> = (0..40).map(|i| i * 97 % 4096).collect();
    touch_sub_blocks(&source, &subs);
    let a = send(
        &source,
        &coarse,
        &dir.path().join("st1"),
        &["--block-size", "64K"],
    );
    let b = send(
        &source,
        &fine,
        &dir.path().join("st2"),
        &["--block-size", "4K"],
    );
    assert_eq!(a["bytes_changed"], b["bytes_changed"]);
    assert_eq!(b["blocks_refined"], 0, "4 KiB blocks need no refinement");
}

#[test]
fn blocks_over_zeros_are_shipped_whole_without_a_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let (source, target, state) = (
        dir.path().join("s"),
        dir.path().join("t"),
        dir.path().join("st"),
    );
    std::fs::write(&source, vec![0u8; 8 * MIB]).unwrap();
    send(&source, &target, &state, &[]);
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&source)
        .unwrap();
    file.write_all_at(&pattern(65536, 3), 65536 * 5).unwrap();
    let report = send(&source, &target, &state, &[]);
    assert_eq!(report["blocks_changed"], 1);
    assert_eq!(report["blocks_refined"], 0);
    assert_eq!(report["bytes_changed"], 65536);
}
