//! `plan -> apply on MemTarget == source`: the packer's ops, applied by the receiver's applier
//! to a target holding anything (random bytes, zeros, an older copy, another size), always
//! reproduce the source, and both sides end with the same manifest.

use std::collections::VecDeque;
use std::sync::atomic::AtomicBool;

use proptest::prelude::*;

use crate::blockdiff::delta::{Op, RefineAnswer};
use crate::blockdiff::ranges::RangeSet;
use crate::blockdiff::scan::{scan, ScanOptions};
use crate::progress::NoProgress;
use crate::receiver::apply::Applier;
use crate::sender::packing::{DeltaSink, Packer};
use crate::sender::SendError;
use crate::source::BlockSource;
use crate::target::{BlockTarget, MemTarget};

use super::{manifest_of, Rng};

/// Applies ops at once; keeps refinement answers for the packer.
struct ApplySink<'a> {
    applier: Applier<'a>,
    answers: VecDeque<RefineAnswer>,
}

impl DeltaSink for ApplySink<'_> {
    fn send(&mut self, op: Op) -> Result<(), SendError> {
        let answer = self.applier.apply(op).expect("every op applies");
        self.answers.extend(answer);
        Ok(())
    }

    fn answer(&mut self) -> Result<RefineAnswer, SendError> {
        Ok(self
            .answers
            .pop_front()
            .expect("an answer for every Refine"))
    }
}

/// A target of `len` bytes: random, zeros, or the source with some edits.
fn target_like(source: &[u8], len: usize, kind: u8, rng: &mut Rng) -> Vec<u8> {
    let mut target: Vec<u8> = match kind {
        0 => (0..len).map(|_| rng.next() as u8).collect(),
        1 => vec![0; len],
        _ => source
            .iter()
            .copied()
            .chain(std::iter::repeat(0))
            .take(len)
            .collect(),
    };
    if kind >= 2 {
        rng.mutate(&mut target);
    }
    target
}

fn source_bytes(len: usize, rng: &mut Rng) -> Vec<u8> {
    let mut bytes = vec![0u8; len];
    for chunk in bytes.chunks_mut(4096) {
        if rng.below(4) != 0 {
            chunk.iter_mut().for_each(|b| *b = rng.next() as u8);
        }
    }
    bytes
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn plan_then_apply_reproduces_the_source(
        seed: u64,
        len in 0usize..300_000,
        target_len in 0usize..300_000,
        kind in 0u8..4,
        shift in 13u32..16,
        refine: bool,
        level in 0i32..3,
    ) {
        let block_size = 1u32 << shift;
        let mut rng = Rng(seed | 1);
        let source = source_bytes(len, &mut rng);
        let target = MemTarget::new(target_like(&source, target_len, kind, &mut rng));
        // What prepare does: the target takes the source's size, its manifest describes it.
        target.set_len(len as u64).unwrap();
        let mut receiver_manifest = manifest_of(&target.contents(), block_size);
        let base = receiver_manifest.clone();

        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), &source).unwrap();
        let opened = BlockSource::open(file.path()).unwrap();
        let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
        let options = ScanOptions { chunk_bytes: 65536, ..ScanOptions::new(block_size) };
        let sink = ApplySink {
            applier: Applier::new(&target, &mut receiver_manifest, &pool),
            answers: VecDeque::new(),
        };
        let mut packer = Packer::new(base, level, refine, sink);
        let everything = RangeSet::full(len as u64);
        scan(&opened, &everything, &options, &pool, &AtomicBool::new(false), &NoProgress, |chunk| {
            packer.chunk(&pool, chunk, &NoProgress)
        })
        .unwrap();
        let (new_manifest, sink, _stats) = packer.finish().unwrap();
        prop_assert!(sink.answers.is_empty());
        drop(sink);
        prop_assert!(target.contents() == source, "target differs from the source");
        let expected = manifest_of(&source, block_size);
        prop_assert_eq!(new_manifest.root(), expected.root());
        prop_assert_eq!(receiver_manifest.root(), expected.root());
    }
}
