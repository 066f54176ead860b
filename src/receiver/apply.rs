//! Applying one cycle's [`Op`]s to a [`BlockTarget`]: bounded decompression, a hash check of
//! every block before it is written, refinement answers (hashing 4 KiB sub-blocks of the
//! target) and patches (overlaying the differing sub-blocks on what the target holds, then
//! checking each whole block's hash). Keeps the manifest in step with the target: a block
//! whose write failed is marked unknown, and every block written (or attempted) is recorded,
//! so an aborted cycle knows exactly which blocks are in doubt.

use rayon::prelude::*;

use crate::blockdiff::delta::{Op, Payload, RefineAnswer};
use crate::blockdiff::manifest::{
    block_len, hash_block, zero_block_hash, BlockHash, Manifest, UNKNOWN_HASH,
};
use crate::blockdiff::ranges::RangeSet;
use crate::blockdiff::refine;
use crate::blockdiff::PARALLEL_MIN_BYTES;
use crate::target::BlockTarget;

use super::error::{ReceiveError, Violation};

/// Applies ops to one target.
pub struct Applier<'a> {
    target: &'a dyn BlockTarget,
    manifest: &'a mut Manifest,
    pool: &'a rayon::ThreadPool,
    decompressor: Option<zstd::bulk::Decompressor<'static>>,
    /// The cycle's sub-block hash key (from `RefineKey`).
    refine_key: Option<[u8; 32]>,
    /// Bytes written or zeroed so far (a failed write counts: it may have changed the target).
    pub touched: u64,
    /// Blocks written or zeroed (or attempted) so far.
    pub written: RangeSet,
}

impl<'a> Applier<'a> {
    /// An applier writing to `target` and keeping `manifest` in step.
    pub fn new(
        target: &'a dyn BlockTarget,
        manifest: &'a mut Manifest,
        pool: &'a rayon::ThreadPool,
    ) -> Self {
        Applier {
            target,
            manifest,
            pool,
            decompressor: None,
            refine_key: None,
            touched: 0,
            written: RangeSet::new(),
        }
    }

    /// Applies one op; a `Refine` yields the answer to send back.
    pub fn apply(&mut self, op: Op) -> Result<Option<RefineAnswer>, ReceiveError> {
        match op {
            Op::Data {
                first_block,
                hashes,
                payload,
            } => self.extent(first_block, &hashes, payload)?,
            Op::Zero {
                first_block,
                block_count,
            } => self.zero_run(first_block, block_count)?,
            Op::RefineKey { key } => self.refine_key = Some(key),
            Op::Refine {
                first_block,
                block_count,
                sub_hashes,
            } => {
                return self
                    .answer_refine(first_block, block_count as u64, &sub_hashes)
                    .map(Some)
            }
            Op::Patch {
                first_block,
                hashes,
                bitmap,
                payload,
            } => self.patch(first_block, &hashes, &bitmap, payload)?,
        }
        Ok(None)
    }

    /// Starts reading blocks `first_block..+count` of the target, which a queued `Refine`
    /// will read. (The `Patch` that follows a `Refine` reads the same run, which answering the
    /// `Refine` has just read: it needs no hint.)
    pub fn prefetch(&self, first_block: u64, count: u64) {
        if let Ok(len) = self.run_len(first_block, count) {
            self.target.prefetch(self.offset(first_block), len as u64);
        }
    }

    /// The manifest's block size in bytes.
    pub fn block_size(&self) -> u64 {
        self.manifest.block_size as u64
    }

    /// Checks that blocks `first_block..+count` lie on the device.
    pub fn check_run(&self, first_block: u64, count: u64) -> Result<(), ReceiveError> {
        self.run_len(first_block, count).map(|_| ())
    }

    /// Bytes held by blocks `first_block..+count`, after checking they lie on the device.
    fn run_len(&self, first_block: u64, count: u64) -> Result<usize, ReceiveError> {
        let blocks = self.manifest.block_count();
        match first_block.checked_add(count) {
            Some(end) if count > 0 && end <= blocks => Ok((first_block..end)
                .map(|i| block_len(self.manifest.device_size, self.manifest.block_size, i))
                .sum()),
            _ => Err(Violation::OutsideDevice {
                first_block,
                count,
                blocks,
            }
            .into()),
        }
    }

    fn offset(&self, block: u64) -> u64 {
        block * self.manifest.block_size as u64
    }

    /// Decompresses with the output bounded to `raw_len`.
    fn unpack(
        &mut self,
        what: &'static str,
        first_block: u64,
        payload: Payload,
    ) -> Result<Vec<u8>, ReceiveError> {
        if !payload.compressed {
            return Ok(payload.bytes);
        }
        let decompress_error = |source| Violation::Decompress {
            what,
            first_block,
            source,
        };
        let decompressor = match &mut self.decompressor {
            Some(d) => d,
            None => self
                .decompressor
                .insert(zstd::bulk::Decompressor::new().map_err(decompress_error)?),
        };
        let data = decompressor
            .decompress(&payload.bytes, payload.raw_len as usize)
            .map_err(decompress_error)?;
        if data.len() != payload.raw_len as usize {
            return Err(Violation::DecompressedLength {
                what,
                first_block,
                got: data.len(),
                expected: payload.raw_len,
            }
            .into());
        }
        Ok(data)
    }

    fn extent(
        &mut self,
        first_block: u64,
        hashes: &[BlockHash],
        payload: Payload,
    ) -> Result<(), ReceiveError> {
        let expected = self.run_len(first_block, hashes.len() as u64)?;
        if expected != payload.raw_len as usize {
            return Err(Violation::ExtentLength {
                first_block,
                claimed: payload.raw_len,
                holds: expected,
            }
            .into());
        }
        let data = self.unpack("extent", first_block, payload)?;
        self.verify(&data, hashes, first_block)?;
        self.write(first_block, hashes, &[(0, &data[..])])
    }

    /// Writes `pieces` (offset within the run, bytes) and records the run's new hashes.
    fn write(
        &mut self,
        first_block: u64,
        hashes: &[BlockHash],
        pieces: &[(usize, &[u8])],
    ) -> Result<(), ReceiveError> {
        let base = self.offset(first_block);
        let blocks = first_block..first_block + hashes.len() as u64;
        self.written.insert(blocks.clone());
        for (at, bytes) in pieces {
            self.touched += bytes.len() as u64;
            if let Err(e) = self.target.write_at(bytes, base + *at as u64) {
                blocks.for_each(|i| self.manifest.set_hash(i, UNKNOWN_HASH));
                return Err(e.into());
            }
        }
        for (i, hash) in blocks.zip(hashes) {
            self.manifest.set_hash(i, *hash);
        }
        Ok(())
    }

    fn zero_run(&mut self, first_block: u64, block_count: u64) -> Result<(), ReceiveError> {
        self.run_len(first_block, block_count)?;
        let start = self.offset(first_block);
        let end = self
            .offset(first_block + block_count)
            .min(self.manifest.device_size);
        let blocks = first_block..first_block + block_count;
        self.written.insert(blocks.clone());
        self.touched += end - start;
        if let Err(e) = self.target.write_zeroes(start, end - start) {
            blocks.for_each(|i| self.manifest.set_hash(i, UNKNOWN_HASH));
            return Err(e.into());
        }
        let block_size = self.manifest.block_size as usize;
        let full = zero_block_hash(block_size);
        for i in blocks {
            let len = block_len(self.manifest.device_size, self.manifest.block_size, i);
            let hash = if len == block_size {
                full
            } else {
                zero_block_hash(len)
            };
            self.manifest.set_hash(i, hash);
        }
        Ok(())
    }

    fn read_run(&self, first_block: u64, len: usize) -> Result<Vec<u8>, ReceiveError> {
        let mut data = vec![0u8; len];
        self.target.read_at(&mut data, self.offset(first_block))?;
        Ok(data)
    }

    /// Hashes the target's sub-blocks of the run and answers which differ from the sender's.
    fn answer_refine(
        &mut self,
        first_block: u64,
        count: u64,
        theirs: &[refine::SubHash],
    ) -> Result<RefineAnswer, ReceiveError> {
        let key = self.refine_key.ok_or(Violation::RefineBeforeKey)?;
        let len = self.run_len(first_block, count)?;
        if theirs.len() != refine::sub_count(len) {
            return Err(Violation::SubHashCount {
                first_block,
                hashes: theirs.len(),
                len,
            }
            .into());
        }
        let current = self.read_run(first_block, len)?;
        let ours: Vec<refine::SubHash> = if current.len() < PARALLEL_MIN_BYTES {
            refine::sub_hashes(&key, &current)
        } else {
            self.pool.install(|| {
                current
                    .par_chunks(refine::SUB_BLOCK)
                    .map(|sub| refine::sub_hash(&key, sub))
                    .collect()
            })
        };
        Ok(RefineAnswer {
            first_block,
            bitmap: refine::differing(&ours, theirs),
        })
    }

    /// Overlays the differing sub-blocks on the target's run, checks every block's hash, and
    /// writes only those sub-blocks.
    fn patch(
        &mut self,
        first_block: u64,
        hashes: &[BlockHash],
        bitmap: &[u8],
        payload: Payload,
    ) -> Result<(), ReceiveError> {
        let len = self.run_len(first_block, hashes.len() as u64)?;
        let selected = refine::selected_len(len, bitmap);
        if bitmap.len() != refine::sub_count(len).div_ceil(8)
            || selected != payload.raw_len as usize
        {
            return Err(Violation::PatchMismatch {
                first_block,
                raw_len: payload.raw_len,
                selected,
            }
            .into());
        }
        let pieces = self.unpack("patch", first_block, payload)?;
        let mut assembled = self.read_run(first_block, len)?;
        refine::overlay(&mut assembled, bitmap, &pieces);
        self.verify(&assembled, hashes, first_block)?;
        let ranges = refine::selected_ranges(len, bitmap);
        let writes: Vec<(usize, &[u8])> = ranges
            .iter()
            .map(|r| (r.start, &assembled[r.clone()]))
            .collect();
        self.write(first_block, hashes, &writes)
    }

    /// Checks every block of a run against its hash (in parallel when the run is large).
    fn verify(
        &self,
        data: &[u8],
        hashes: &[BlockHash],
        first_block: u64,
    ) -> Result<(), ReceiveError> {
        let block_size = self.manifest.block_size as usize;
        let differs = |(block, hash): (&[u8], &BlockHash)| hash_block(block) != *hash;
        let bad = if data.len() < PARALLEL_MIN_BYTES {
            data.chunks(block_size).zip(hashes).position(differs)
        } else {
            self.pool.install(|| {
                data.par_chunks(block_size)
                    .zip(hashes)
                    .position_first(differs)
            })
        };
        match bad {
            Some(i) => Err(ReceiveError::BlockHashMismatch {
                offset: (first_block + i as u64) * block_size as u64,
            }),
            None => Ok(()),
        }
    }
}
