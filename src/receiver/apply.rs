//! Applying one cycle's data messages to a target, on the receiver's blocking thread: bounded
//! decompression, a hash check of every block before it is written, refinement answers
//! (hashing 4 KiB sub-blocks of the target) and patches (overlaying the differing sub-blocks
//! on what the target holds, then checking each whole block's hash). Keeps the receiver's
//! manifest in step with the target: a block whose write failed is marked unknown.

use std::collections::VecDeque;

use rayon::prelude::*;
use tokio::sync::mpsc::{Receiver, UnboundedSender};

use crate::blockdiff::manifest::{block_len, hash_block, zero_block_hash, BlockHash, Manifest};
use crate::blockdiff::refine;
use crate::receiver::ReceiveError;
use crate::target::Target;
use crate::transport::frame::Message;

/// A hash no block can have: marks a block whose content is unknown.
pub const UNKNOWN_HASH: BlockHash = [0xff; 32];

/// Messages taken ahead of the one being applied, so that the target reads they will need
/// (refinement answers, patches) are started early and many at once: a changed run's blocks
/// lie scattered over the target, and one cold read at a time would leave the disk idle.
const LOOKAHEAD_MESSAGES: usize = 1024;
/// Payload bytes the look-ahead may hold.
const LOOKAHEAD_BYTES: usize = 64 << 20;

/// Applies messages to one target.
pub struct Applier<'a> {
    target: &'a Target,
    manifest: &'a mut Manifest,
    pool: &'a rayon::ThreadPool,
    answers: UnboundedSender<Message>,
    decompressor: Option<zstd::bulk::Decompressor<'static>>,
    /// The cycle's sub-block hash key (from `RefineKey`).
    refine_key: Option<[u8; 32]>,
    /// Bytes written or zeroed so far (a failed write counts: it may have changed the target).
    pub touched: u64,
}

impl<'a> Applier<'a> {
    pub fn new(
        target: &'a Target,
        manifest: &'a mut Manifest,
        pool: &'a rayon::ThreadPool,
        answers: UnboundedSender<Message>,
    ) -> Self {
        Applier {
            target,
            manifest,
            pool,
            answers,
            decompressor: None,
            refine_key: None,
            touched: 0,
        }
    }

    /// Applies messages until the channel closes or one is bad.
    pub fn run(&mut self, mut rx: Receiver<Message>) -> Result<(), ReceiveError> {
        let mut ahead: VecDeque<Message> = VecDeque::new();
        let mut ahead_bytes = 0;
        loop {
            // Take what has already arrived, hinting the target reads it will need.
            while ahead.len() < LOOKAHEAD_MESSAGES && ahead_bytes < LOOKAHEAD_BYTES {
                let Ok(message) = rx.try_recv() else { break };
                self.prefetch(&message);
                ahead_bytes += payload_len(&message);
                ahead.push_back(message);
            }
            let message = match ahead.pop_front() {
                Some(message) => {
                    ahead_bytes -= payload_len(&message);
                    message
                }
                None => match rx.blocking_recv() {
                    Some(message) => message,
                    None => break,
                },
            };
            self.apply(message)?;
        }
        Ok(())
    }

    /// Starts reading what `message` will read of the target. Only a `Refine` needs it: the
    /// `Patch` that follows it reads the same run, which answering the `Refine` just read.
    fn prefetch(&self, message: &Message) {
        if let Message::Refine {
            first_block,
            block_count,
            ..
        } = message
        {
            if let Ok(len) = self.run_len(*first_block, *block_count as u64) {
                self.target.prefetch(self.offset(*first_block), len as u64);
            }
        }
    }

    fn apply(&mut self, message: Message) -> Result<(), ReceiveError> {
        match message {
            Message::Extent {
                first_block,
                raw_len,
                compressed,
                hashes,
                payload,
            } => self.extent(first_block, raw_len, compressed, &hashes, payload)?,
            Message::ZeroRun {
                first_block,
                block_count,
            } => self.zero_run(first_block, block_count)?,
            Message::RefineKey { key } => self.refine_key = Some(key),
            Message::Refine {
                first_block,
                block_count,
                sub_hashes,
            } => self.answer_refine(first_block, block_count as u64, &sub_hashes)?,
            Message::Patch {
                first_block,
                hashes,
                bitmap,
                raw_len,
                compressed,
                payload,
            } => self.patch(first_block, &hashes, &bitmap, raw_len, compressed, payload)?,
            other => unreachable!("only data messages reach the applier, not {}", other.name()),
        }
        Ok(())
    }

    /// Bytes held by blocks `first_block..+count`, after checking they lie on the device.
    fn run_len(&self, first_block: u64, count: u64) -> Result<usize, ReceiveError> {
        match first_block.checked_add(count) {
            Some(end) if count > 0 && end <= self.manifest.block_count() => Ok((first_block..end)
                .map(|i| block_len(self.manifest.device_size, self.manifest.block_size, i))
                .sum()),
            _ => Err(ReceiveError::Protocol(format!(
                "blocks {first_block}..+{count} lie outside the device ({} blocks)",
                self.manifest.block_count()
            ))),
        }
    }

    fn offset(&self, block: u64) -> u64 {
        block * self.manifest.block_size as u64
    }

    /// Decompresses with the output bounded to `raw_len`.
    fn unpack(
        &mut self,
        what: &str,
        first_block: u64,
        raw_len: u32,
        compressed: bool,
        payload: Vec<u8>,
    ) -> Result<Vec<u8>, ReceiveError> {
        if !compressed {
            return Ok(payload);
        }
        let decompressor = match &mut self.decompressor {
            Some(d) => d,
            None => self.decompressor.insert(
                zstd::bulk::Decompressor::new()
                    .map_err(|e| ReceiveError::Protocol(e.to_string()))?,
            ),
        };
        let data = decompressor
            .decompress(&payload, raw_len as usize)
            .map_err(|e| {
                ReceiveError::Protocol(format!(
                    "{what} at block {first_block} does not decompress: {e}"
                ))
            })?;
        if data.len() != raw_len as usize {
            return Err(ReceiveError::Protocol(format!(
                "{what} at block {first_block} decompressed to {} bytes, expected {raw_len}",
                data.len()
            )));
        }
        Ok(data)
    }

    fn extent(
        &mut self,
        first_block: u64,
        raw_len: u32,
        compressed: bool,
        hashes: &[BlockHash],
        payload: Vec<u8>,
    ) -> Result<(), ReceiveError> {
        let expected = self.run_len(first_block, hashes.len() as u64)?;
        if expected != raw_len as usize {
            return Err(ReceiveError::Protocol(format!(
                "extent at block {first_block} claims {raw_len} bytes, its blocks hold {expected}"
            )));
        }
        let data = self.unpack("extent", first_block, raw_len, compressed, payload)?;
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
        for (at, bytes) in pieces {
            self.touched += bytes.len() as u64;
            if let Err(e) = self.target.write_at(bytes, base + *at as u64) {
                for i in 0..hashes.len() as u64 {
                    self.manifest.set_hash(first_block + i, UNKNOWN_HASH);
                }
                return Err(e.into());
            }
        }
        for (i, hash) in hashes.iter().enumerate() {
            self.manifest.set_hash(first_block + i as u64, *hash);
        }
        Ok(())
    }

    fn zero_run(&mut self, first_block: u64, block_count: u64) -> Result<(), ReceiveError> {
        self.run_len(first_block, block_count)?;
        let start = self.offset(first_block);
        let end = self
            .offset(first_block + block_count)
            .min(self.manifest.device_size);
        self.touched += end - start;
        if let Err(e) = self.target.write_zeroes(start, end - start) {
            for i in first_block..first_block + block_count {
                self.manifest.set_hash(i, UNKNOWN_HASH);
            }
            return Err(e.into());
        }
        let block_size = self.manifest.block_size as usize;
        let full = zero_block_hash(block_size);
        for i in first_block..first_block + block_count {
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
    ) -> Result<(), ReceiveError> {
        let key = self
            .refine_key
            .ok_or_else(|| ReceiveError::Protocol("Refine before RefineKey".into()))?;
        let len = self.run_len(first_block, count)?;
        if theirs.len() != refine::sub_count(len) {
            return Err(ReceiveError::Protocol(format!(
                "refine at block {first_block} carries {} sub-block hashes for {len} bytes",
                theirs.len()
            )));
        }
        let current = self.read_run(first_block, len)?;
        let ours: Vec<refine::SubHash> = self.pool.install(|| {
            current
                .par_chunks(refine::SUB_BLOCK)
                .map(|sub| refine::sub_hash(&key, sub))
                .collect()
        });
        let bitmap = refine::differing(&ours, theirs);
        self.answers
            .send(Message::RefineAnswer {
                first_block,
                bitmap,
            })
            .map_err(|_| ReceiveError::Protocol("connection closed while refining".into()))
    }

    /// Overlays the differing sub-blocks on the target's run, checks every block's hash, and
    /// writes only those sub-blocks.
    fn patch(
        &mut self,
        first_block: u64,
        hashes: &[BlockHash],
        bitmap: &[u8],
        raw_len: u32,
        compressed: bool,
        payload: Vec<u8>,
    ) -> Result<(), ReceiveError> {
        let len = self.run_len(first_block, hashes.len() as u64)?;
        let selected = refine::selected_len(len, bitmap);
        if bitmap.len() != refine::sub_count(len).div_ceil(8) || selected != raw_len as usize {
            return Err(ReceiveError::Protocol(format!(
                "patch at block {first_block} does not match its run ({raw_len} bytes for {selected} selected)"
            )));
        }
        let pieces = self.unpack("patch", first_block, raw_len, compressed, payload)?;
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

    /// Checks every block of a run against its hash, in parallel.
    fn verify(
        &self,
        data: &[u8],
        hashes: &[BlockHash],
        first_block: u64,
    ) -> Result<(), ReceiveError> {
        let block_size = self.manifest.block_size as usize;
        let bad = self.pool.install(|| {
            data.par_chunks(block_size)
                .zip(hashes)
                .position_first(|(block, hash)| hash_block(block) != *hash)
        });
        match bad {
            Some(i) => Err(ReceiveError::BlockHashMismatch {
                offset: (first_block + i as u64) * block_size as u64,
            }),
            None => Ok(()),
        }
    }
}

/// Bytes a message holds in memory (what the look-ahead counts).
fn payload_len(message: &Message) -> usize {
    match message {
        Message::Extent { payload, .. } | Message::Patch { payload, .. } => payload.len(),
        _ => 0,
    }
}
