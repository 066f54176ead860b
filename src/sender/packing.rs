//! Turning hashed chunks into [`Op`]s on the sender: plan each chunk against the base manifest
//! ([`plan_chunk`]), coalesce zero runs across chunks, compress data extents in parallel, and
//! refine changed runs down to 4 KiB: a run over blocks the target already holds data for goes
//! out as a `Refine` (sub-block hashes); the target's answer says which sub-blocks differ and
//! only those go out, in a `Patch`. Up to [`REFINE_WINDOW`] bytes of runs await answers at
//! once, so refinement costs no round trip per run. Runs on the scan's consumer thread.
//!
//! Ops go to a [`DeltaSink`], which is also the refinement oracle: over the wire it is the
//! connection to the receiver; in tests it is an applier over an in-memory target.
//!
//! The new manifest is the base patched by block index: blocks the scan did not cover (a
//! change tracker said they did not change) keep their base hash.

use std::cell::RefCell;
use std::collections::VecDeque;

use rayon::prelude::*;

use crate::blockdiff::delta::{Op, Payload, RefineAnswer};
use crate::blockdiff::manifest::{BlockHash, Manifest};
use crate::blockdiff::plan::{plan_chunk, PlanOptions, Step};
use crate::blockdiff::ranges::RangeSet;
use crate::blockdiff::refine::{self, SUB_BLOCK};
use crate::blockdiff::scan::ScannedChunk;
use crate::blockdiff::PARALLEL_MIN_BYTES;
use crate::progress::{Progress, Stage};
use crate::transport::frame::MAX_EXTENT_BYTES;

use super::error::{SendError, Violation};

/// Largest plaintext shipped in one extent (parallel compression works per extent).
const EXTENT_TARGET_BYTES: u64 = 1 << 20;
/// Bytes of refined runs that may await the receiver's answer.
pub const REFINE_WINDOW: usize = 32 << 20;

/// Where ops go, and where refinement answers come from (in the order of the `Refine`s).
pub trait DeltaSink {
    /// Ships one op.
    fn send(&mut self, op: Op) -> Result<(), SendError>;
    /// The answer to the oldest `Refine` not answered yet (waits for it).
    fn answer(&mut self) -> Result<RefineAnswer, SendError>;
}

/// What the packer found and shipped.
#[derive(Default, Debug, Clone)]
pub struct ChangeStats {
    /// Blocks that differ from the base (data and zero).
    pub blocks_changed: u64,
    /// Of those, blocks that are now zeros.
    pub blocks_zero: u64,
    /// Plaintext bytes shipped (whole extents, or the differing sub-blocks of refined runs).
    pub bytes_changed: u64,
    /// Bytes of payloads after compression.
    pub bytes_payload: u64,
    /// Bytes read from the source (holes of a sparse file are not read).
    pub bytes_read: u64,
    /// Bytes of its target the receiver reads to answer refinements and apply patches.
    pub target_bytes_read: u64,
    /// Blocks that went through refinement.
    pub blocks_refined: u64,
    /// Bytes of refined blocks the receiver already held.
    pub bytes_saved_by_refinement: u64,
    /// The changed blocks themselves (block indices).
    pub changed: RangeSet,
}

/// A refined run waiting for the receiver's answer.
struct Pending {
    first_block: u64,
    data: Vec<u8>,
    hashes: Vec<BlockHash>,
}

/// Plans, compresses and refines one cycle's changes for one destination.
pub struct Packer<S: DeltaSink> {
    /// The base manifest, patched chunk by chunk into the new one.
    manifest: Manifest,
    sink: S,
    level: i32,
    plan: PlanOptions,
    pending: VecDeque<Pending>,
    pending_bytes: usize,
    pending_zero: Option<(u64, u64)>,
    /// This cycle's sub-block hash key, once sent.
    refine_key: Option<[u8; 32]>,
    /// What was found and shipped so far.
    pub stats: ChangeStats,
}

impl<S: DeltaSink> Packer<S> {
    /// A packer diffing against `base`, compressing at zstd `level` (0: raw), refining when
    /// `refine` (the receiver can, and blocks are larger than a sub-block).
    pub fn new(base: Manifest, level: i32, refine: bool, sink: S) -> Self {
        let max_blocks = (EXTENT_TARGET_BYTES / base.block_size as u64).max(1);
        debug_assert!(max_blocks * base.block_size as u64 <= MAX_EXTENT_BYTES as u64);
        let plan = PlanOptions {
            max_blocks,
            refine: refine && base.block_size as usize > SUB_BLOCK,
        };
        Packer {
            manifest: base,
            sink,
            level,
            plan,
            pending: VecDeque::new(),
            pending_bytes: 0,
            pending_zero: None,
            refine_key: None,
            stats: ChangeStats::default(),
        }
    }

    /// Plans and ships one chunk's changes.
    pub fn chunk(
        &mut self,
        pool: &rayon::ThreadPool,
        chunk: ScannedChunk<'_>,
        progress: &dyn Progress,
    ) -> Result<(), SendError> {
        let steps = plan_chunk(
            &self.manifest,
            chunk.first_block,
            chunk.hashes,
            chunk.zero,
            self.plan,
        );
        self.stats.bytes_read += chunk.bytes_read;
        for (i, hash) in chunk.hashes.iter().enumerate() {
            self.manifest.set_hash(chunk.first_block + i as u64, *hash);
        }
        let block_size = self.manifest.block_size as usize;
        let mut extents = Vec::new();
        for step in steps {
            let (first_block, count) = match step {
                Step::Zero { first_block, count } => {
                    self.stats.blocks_changed += count;
                    self.stats.blocks_zero += count;
                    self.stats.changed.insert(first_block..first_block + count);
                    self.add_zero_run(first_block, count)?;
                    continue;
                }
                Step::Ship { first_block, count } | Step::Refine { first_block, count } => {
                    (first_block, count)
                }
            };
            self.stats.blocks_changed += count;
            self.stats.changed.insert(first_block..first_block + count);
            let offset = (first_block - chunk.first_block) as usize;
            let start = offset * block_size;
            let end = (start + count as usize * block_size).min(chunk.data.len());
            let hashes = chunk.hashes[offset..offset + count as usize].to_vec();
            self.flush_zero_run()?;
            match step {
                Step::Refine { .. } => self.refine(first_block, &chunk.data[start..end], hashes)?,
                _ => extents.push((first_block, &chunk.data[start..end], hashes)),
            }
        }
        let level = self.level;
        let to_op = |(first_block, data, hashes): (u64, &[u8], Vec<BlockHash>)| Op::Data {
            first_block,
            hashes,
            payload: compress(data, level),
        };
        let bytes: usize = extents.iter().map(|(_, data, _)| data.len()).sum();
        let ops: Vec<Op> = if extents.len() < 2 || bytes < PARALLEL_MIN_BYTES {
            extents.into_iter().map(to_op).collect()
        } else {
            pool.install(|| extents.into_par_iter().map(to_op).collect())
        };
        for op in ops {
            if let Op::Data { payload, .. } = &op {
                self.count_payload(payload, progress);
            }
            self.sink.send(op)?;
        }
        Ok(())
    }

    /// Sends what is still held back (the last zero run, the patches of every run awaiting an
    /// answer); returns the new manifest, the sink and the figures.
    pub fn finish(mut self) -> Result<(Manifest, S, ChangeStats), SendError> {
        self.flush_zero_run()?;
        while !self.pending.is_empty() {
            self.patch_next()?;
        }
        Ok((self.manifest, self.sink, self.stats))
    }

    fn add_zero_run(&mut self, first_block: u64, count: u64) -> Result<(), SendError> {
        self.pending_zero = match self.pending_zero {
            Some((start, n)) if start + n == first_block => Some((start, n + count)),
            Some(_) => {
                self.flush_zero_run()?;
                Some((first_block, count))
            }
            None => Some((first_block, count)),
        };
        Ok(())
    }

    fn flush_zero_run(&mut self) -> Result<(), SendError> {
        match self.pending_zero.take() {
            Some((first_block, block_count)) => self.sink.send(Op::Zero {
                first_block,
                block_count,
            }),
            None => Ok(()),
        }
    }

    fn count_payload(&mut self, payload: &Payload, progress: &dyn Progress) {
        self.stats.bytes_changed += payload.raw_len as u64;
        self.stats.bytes_payload += payload.bytes.len() as u64;
        progress.advance(Stage::Scan, 0, payload.bytes.len() as u64);
    }

    /// Asks which sub-blocks of this run differ; patches older runs first when the window is
    /// full.
    fn refine(
        &mut self,
        first_block: u64,
        data: &[u8],
        hashes: Vec<BlockHash>,
    ) -> Result<(), SendError> {
        while self.pending_bytes + data.len() > REFINE_WINDOW && !self.pending.is_empty() {
            self.patch_next()?;
        }
        let key = match self.refine_key {
            Some(key) => key,
            None => {
                let key = refine::new_key().map_err(SendError::Randomness)?;
                self.sink.send(Op::RefineKey { key })?;
                *self.refine_key.insert(key)
            }
        };
        self.sink.send(Op::Refine {
            first_block,
            block_count: hashes.len() as u32,
            sub_hashes: refine::sub_hashes(&key, data),
        })?;
        self.stats.blocks_refined += hashes.len() as u64;
        // The receiver reads the run to answer, and again to apply the patch.
        self.stats.target_bytes_read += 2 * data.len() as u64;
        self.pending_bytes += data.len();
        self.pending.push_back(Pending {
            first_block,
            data: data.to_vec(),
            hashes,
        });
        Ok(())
    }

    /// Waits for the oldest run's answer and sends its patch.
    fn patch_next(&mut self) -> Result<(), SendError> {
        let pending = self.pending.pop_front().expect("a run awaits an answer");
        self.pending_bytes -= pending.data.len();
        let answer = self.sink.answer()?;
        let expected_bytes = refine::sub_count(pending.data.len()).div_ceil(8);
        if answer.first_block != pending.first_block || answer.bitmap.len() != expected_bytes {
            return Err(Violation::RefineAnswer {
                got_block: answer.first_block,
                got_bytes: answer.bitmap.len(),
                block: pending.first_block,
                bytes: expected_bytes,
            }
            .into());
        }
        let pieces = refine::pieces(&pending.data, &answer.bitmap);
        self.stats.bytes_saved_by_refinement += (pending.data.len() - pieces.len()) as u64;
        let payload = compress(&pieces, self.level);
        self.stats.bytes_changed += payload.raw_len as u64;
        self.stats.bytes_payload += payload.bytes.len() as u64;
        self.sink.send(Op::Patch {
            first_block: pending.first_block,
            hashes: pending.hashes,
            bitmap: answer.bitmap,
            payload,
        })
    }
}

/// Compresses when that makes the data smaller. Each thread keeps its zstd context (creating
/// one costs more than compressing a small patch).
fn compress(data: &[u8], level: i32) -> Payload {
    thread_local! {
        static COMPRESSOR: RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> =
            const { RefCell::new(None) };
    }
    let raw_len = data.len() as u32;
    if level > 0 && !data.is_empty() {
        let packed = COMPRESSOR.with_borrow_mut(|slot| {
            if !matches!(slot, Some((l, _)) if *l == level) {
                *slot = Some((level, zstd::bulk::Compressor::new(level).ok()?));
            }
            slot.as_mut()?.1.compress(data).ok()
        });
        if let Some(bytes) = packed.filter(|p| p.len() < data.len()) {
            return Payload {
                raw_len,
                compressed: true,
                bytes,
            };
        }
    }
    Payload {
        raw_len,
        compressed: false,
        bytes: data.to_vec(),
    }
}
