//! `verify SOURCE TARGET`: byte-by-byte comparison of two devices or files, reporting the
//! differing ranges (at 4 KiB granularity). A block-device target may be larger than the
//! source (only the source's length is compared); a file target must have the same size.

use std::ops::Range;
use std::path::Path;

use crate::device::DeviceKind;
use crate::progress::{Progress, Stage};
use crate::source::{BlockSource, SourceError};

const CHUNK: usize = 8 << 20;
const GRAIN: usize = 4096;

/// What `verify` found.
#[derive(Debug, Default)]
pub struct VerifyReport {
    /// Bytes of the source.
    pub source_size: u64,
    /// Bytes of the target.
    pub target_size: u64,
    /// A size difference that alone makes the pair differ.
    pub size_mismatch: bool,
    /// Byte ranges of the compared length that differ, in 4 KiB pieces merged when adjacent,
    /// in ascending order.
    pub differing: Vec<Range<u64>>,
}

impl VerifyReport {
    /// True when the sizes agree and no byte differs.
    pub fn identical(&self) -> bool {
        !self.size_mismatch && self.differing.is_empty()
    }

    /// Total bytes of the differing ranges.
    pub fn differing_bytes(&self) -> u64 {
        self.differing.iter().map(|r| r.end - r.start).sum()
    }
}

/// Compares `source` with `target`.
pub fn verify(
    source: &Path,
    target: &Path,
    progress: &dyn Progress,
) -> Result<VerifyReport, SourceError> {
    let a = BlockSource::open(source)?;
    let b = BlockSource::open(target).map_err(|e| e.as_role("target"))?;
    let mut report = VerifyReport {
        source_size: a.size(),
        target_size: b.size(),
        ..Default::default()
    };
    let compare_len = a.size().min(b.size());
    report.size_mismatch =
        b.size() < a.size() || (b.kind() == DeviceKind::File && b.size() != a.size());
    progress.start(Stage::Verify, compare_len);
    let mut buf_a = vec![0u8; CHUNK];
    let mut buf_b = vec![0u8; CHUNK];
    let mut offset = 0u64;
    while offset < compare_len {
        let len = (compare_len - offset).min(CHUNK as u64) as usize;
        let read_error = |path: &Path, e| SourceError::Unreadable {
            path: path.to_owned(),
            source: e,
        };
        a.read_at(&mut buf_a[..len], offset)
            .map_err(|e| read_error(source, e))?;
        b.read_at(&mut buf_b[..len], offset)
            .map_err(|e| read_error(target, e))?;
        if buf_a[..len] != buf_b[..len] {
            for (i, (x, y)) in buf_a[..len]
                .chunks(GRAIN)
                .zip(buf_b[..len].chunks(GRAIN))
                .enumerate()
            {
                if x != y {
                    let start = offset + (i * GRAIN) as u64;
                    add_range(&mut report.differing, start..start + x.len() as u64);
                }
            }
        }
        offset += len as u64;
        progress.advance(Stage::Verify, len as u64, 0);
    }
    progress.finish(Stage::Verify);
    Ok(report)
}

fn add_range(ranges: &mut Vec<Range<u64>>, range: Range<u64>) {
    match ranges.last_mut() {
        Some(last) if last.end == range.start => last.end = range.end,
        _ => ranges.push(range),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::progress::NoProgress;

    #[test]
    fn finds_ranges() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        let mut data = vec![1u8; 100_000];
        std::fs::write(&a, &data).unwrap();
        data[5000] = 9;
        data[9000] = 9;
        data[99_999] = 0;
        std::fs::write(&b, &data).unwrap();
        let report = verify(&a, &b, &NoProgress).unwrap();
        assert_eq!(report.differing, vec![4096..12288, 98304..100_000]);
        std::fs::write(&b, &data[..50]).unwrap();
        assert!(verify(&a, &b, &NoProgress).unwrap().size_mismatch);
        std::fs::write(&b, vec![1u8; 100_000]).unwrap();
        assert!(verify(&a, &b, &NoProgress).unwrap().identical());
    }
}
