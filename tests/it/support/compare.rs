//! Comparing bytes: two files or devices ([`first_difference`], [`assert_identical`]), a file
//! against expected content ([`assert_content`]), a cheap "has anything landed" probe, and the
//! ranges `verify` prints ([`assert_names_offset`]).

use std::fs::File;
use std::io::{BufReader, Read};
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::{read_all, size_of, Output, BLOCK};

/// `None` when `a` and `b` (files or block devices) have the same length and bytes; otherwise a
/// description of the first difference.
pub fn first_difference(a: &Path, b: &Path) -> Option<String> {
    let la = size_of(a);
    let lb = size_of(b);
    let mut fa = BufReader::with_capacity(4 << 20, File::open(a).expect("open a"));
    let mut fb = BufReader::with_capacity(4 << 20, File::open(b).expect("open b"));
    let mut ba = vec![0u8; 4 << 20];
    let mut bb = vec![0u8; 4 << 20];
    let common = la.min(lb);
    let mut pos = 0u64;
    while pos < common {
        let n = ((common - pos) as usize).min(ba.len());
        fa.read_exact(&mut ba[..n]).expect("read a");
        fb.read_exact(&mut bb[..n]).expect("read b");
        if ba[..n] != bb[..n] {
            let i = (0..n).find(|&i| ba[i] != bb[i]).unwrap();
            let off = pos + i as u64;
            let differing = (0..n).filter(|&i| ba[i] != bb[i]).count();
            return Some(format!(
                "{} and {} differ first at byte {off} (block {} of 64K): {:#04x} vs {:#04x} \
                 ({differing} differing bytes in that {n}-byte chunk)",
                a.display(),
                b.display(),
                off / BLOCK,
                ba[i],
                bb[i]
            ));
        }
        pos += n as u64;
    }
    if la != lb {
        return Some(format!(
            "{} is {la} bytes but {} is {lb} bytes (equal up to {common})",
            a.display(),
            b.display()
        ));
    }
    None
}

/// Asserts `a` and `b` have the same length and bytes, reporting the first differing offset.
#[track_caller]
pub fn assert_identical(a: &Path, b: &Path) {
    if let Some(d) = first_difference(a, b) {
        panic!("not identical: {d}");
    }
}

/// Asserts `path` holds exactly `expected` (used for "target untouched").
#[track_caller]
pub fn assert_content(path: &Path, expected: &[u8], what: &str) {
    let actual = read_all(path);
    if actual.len() != expected.len() {
        panic!(
            "{what}: {} changed size: {} -> {}",
            path.display(),
            expected.len(),
            actual.len()
        );
    }
    if let Some(i) = (0..actual.len()).find(|&i| actual[i] != expected[i]) {
        panic!("{what}: {} changed, first at byte {i}", path.display());
    }
}

/// True when any of `samples` bytes read at evenly spaced offsets of `path` differs from
/// `reference` (a cheap "has anything landed yet" probe for large targets).
pub fn differs_somewhere(path: &Path, reference: &[u8], samples: u64) -> bool {
    let f = File::open(path).expect("open");
    let len = reference.len() as u64;
    let mut buf = [0u8; 64];
    (0..samples).any(|i| {
        let off = i * (len / samples);
        let n = 64.min(len - off) as usize;
        f.read_exact_at(&mut buf[..n], off).is_ok()
            && buf[..n] != reference[off as usize..off as usize + n]
    })
}

/// The byte ranges `START..END` (or `START-END`, decimal) printed in `text`.
pub fn printed_ranges(text: &str) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let bytes = text.as_bytes();
    let number_at = |i: usize| -> Option<(u64, usize)> {
        let end = (i..bytes.len())
            .find(|&j| !bytes[j].is_ascii_digit())
            .unwrap_or(bytes.len());
        (end > i)
            .then(|| text[i..end].parse().ok().map(|n| (n, end)))
            .flatten()
    };
    let mut i = 0;
    while i < bytes.len() {
        let starts_number = bytes[i].is_ascii_digit() && (i == 0 || !bytes[i - 1].is_ascii_digit());
        if let Some((start, after)) = starts_number.then(|| number_at(i)).flatten() {
            let sep = [&b".."[..], &b"-"[..]]
                .into_iter()
                .find(|sep| bytes[after..].starts_with(sep));
            if let Some((end, _)) = sep.and_then(|sep| number_at(after + sep.len())) {
                out.push((start, end));
            }
            i = after;
        } else {
            i += 1;
        }
    }
    out
}

/// Asserts `verify` output (stdout and stderr) prints a range containing byte `offset`, no
/// wider than `max_width` bytes.
#[track_caller]
pub fn assert_names_offset(out: &Output, offset: u64, max_width: u64) {
    let text = format!("{}\n{}", out.stdout_text(), out.stderr_text());
    let ranges = printed_ranges(&text);
    assert!(
        ranges
            .iter()
            .any(|&(a, b)| a <= offset && offset <= b && b - a <= max_width),
        "no printed range contains byte {offset} (ranges at most {max_width} bytes): {ranges:?}\n{out:?}"
    );
}
