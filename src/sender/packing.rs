//! Turns hashed chunks into wire messages on the sender: diff against the base manifest,
//! coalesce zero runs across chunks, compress data extents in parallel, and refine changed
//! runs down to 4 KiB: a run over blocks the target already holds data for goes out as a
//! `Refine` (sub-block hashes); the receiver's answer says which sub-blocks differ and only
//! those go out, in a `Patch`. Up to [`REFINE_WINDOW`] bytes of runs await answers at once,
//! so refinement costs no round trip per run. Runs on the scan's blocking thread.

use std::cell::RefCell;
use std::collections::VecDeque;

use rayon::prelude::*;
use tokio::sync::mpsc;

use crate::blockdiff::diff::{changed_runs, Run};
use crate::blockdiff::manifest::{block_len, zero_block_hash, BlockHash, Manifest};
use crate::blockdiff::refine::{self, SUB_BLOCK};
use crate::blockdiff::scan::ScannedChunk;
use crate::progress::{Progress, Stage};
use crate::transport::frame::{Message, MAX_EXTENT_BYTES};

/// Largest plaintext shipped in one extent (parallel compression works per extent).
const EXTENT_TARGET_BYTES: u64 = 1 << 20;
/// Bytes of refined runs that may await the receiver's answer.
pub const REFINE_WINDOW: usize = 32 << 20;

/// Why the differ stopped early.
#[derive(Debug)]
pub enum Stop {
    /// The connection is gone (the caller reports why).
    Disconnected,
    /// The receiver answered something that does not fit what was asked.
    BadAnswer(String),
}

/// What the differ found and shipped.
#[derive(Default, Debug)]
pub struct ChangeStats {
    pub blocks_changed: u64,
    pub blocks_zero: u64,
    /// Plaintext bytes shipped (whole extents, or the differing sub-blocks of refined runs).
    pub bytes_changed: u64,
    /// Bytes of payloads after compression.
    pub bytes_payload: u64,
    /// Blocks that went through refinement, and their bytes the receiver already held.
    pub blocks_refined: u64,
    pub bytes_saved_by_refinement: u64,
}

/// A refined run waiting for the receiver's answer.
struct Pending {
    first_block: u64,
    data: Vec<u8>,
    hashes: Vec<BlockHash>,
}

pub struct Differ {
    base: Manifest,
    block_size: u32,
    level: i32,
    max_blocks: u64,
    tx: mpsc::Sender<Message>,
    /// Answers to Refine messages, in order; `None` disables refinement.
    answers: Option<mpsc::UnboundedReceiver<(u64, Vec<u8>)>>,
    pending: VecDeque<Pending>,
    pending_bytes: usize,
    pending_zero: Option<(u64, u64)>,
    /// This cycle's sub-block hash key, once sent.
    refine_key: Option<[u8; 32]>,
    pub new_hashes: Vec<BlockHash>,
    pub stats: ChangeStats,
}

impl Differ {
    pub fn new(
        base: Manifest,
        level: i32,
        tx: mpsc::Sender<Message>,
        answers: Option<mpsc::UnboundedReceiver<(u64, Vec<u8>)>>,
    ) -> Self {
        let block_size = base.block_size;
        let max_blocks = (EXTENT_TARGET_BYTES / block_size as u64).max(1);
        debug_assert!(max_blocks * block_size as u64 <= MAX_EXTENT_BYTES as u64);
        Differ {
            base,
            block_size,
            level,
            max_blocks,
            tx,
            answers: answers.filter(|_| block_size as usize > SUB_BLOCK),
            pending: VecDeque::new(),
            pending_bytes: 0,
            pending_zero: None,
            refine_key: None,
            new_hashes: Vec::new(),
            stats: ChangeStats::default(),
        }
    }

    fn send(&self, message: Message) -> Result<(), Stop> {
        self.tx
            .blocking_send(message)
            .map_err(|_| Stop::Disconnected)
    }

    /// Sends what is still held back: the last zero run, and the patches of every run still
    /// awaiting an answer.
    pub fn finish(&mut self) -> Result<(), Stop> {
        self.flush_zero_run()?;
        while !self.pending.is_empty() {
            self.patch_next()?;
        }
        Ok(())
    }

    fn flush_zero_run(&mut self) -> Result<(), Stop> {
        match self.pending_zero.take() {
            Some((first_block, block_count)) => self.send(Message::ZeroRun {
                first_block,
                block_count,
            }),
            None => Ok(()),
        }
    }

    /// Would refinement pay for this run? Only when the target holds data there.
    fn worth_refining(&self, first_block: u64, count: u64) -> bool {
        if self.answers.is_none() || first_block + count > self.base.block_count() {
            return false;
        }
        let full_zero = zero_block_hash(self.block_size as usize);
        (first_block..first_block + count).any(|i| {
            let len = block_len(self.base.device_size, self.block_size, i);
            let zero = if len == self.block_size as usize {
                full_zero
            } else {
                zero_block_hash(len)
            };
            self.base.hash(i) != Some(&zero)
        })
    }

    pub fn chunk(
        &mut self,
        pool: &rayon::ThreadPool,
        chunk: ScannedChunk<'_>,
        progress: &dyn Progress,
    ) -> Result<(), Stop> {
        self.new_hashes.extend_from_slice(chunk.hashes);
        let runs = changed_runs(
            self.base.hashes(),
            chunk.first_block,
            chunk.hashes,
            chunk.zero,
            self.max_blocks,
        );
        let block_size = self.block_size as usize;
        let mut extents = Vec::new();
        for run in runs {
            self.stats.blocks_changed += run.count();
            let (first_block, count) = (run.first_block(), run.count());
            if let Run::Zero { .. } = run {
                self.stats.blocks_zero += count;
                self.pending_zero = match self.pending_zero {
                    Some((start, n)) if start + n == first_block => Some((start, n + count)),
                    Some(_) => {
                        self.flush_zero_run()?;
                        Some((first_block, count))
                    }
                    None => Some((first_block, count)),
                };
                continue;
            }
            let offset = (first_block - chunk.first_block) as usize;
            let data = &chunk.data[offset * block_size..]
                [..(count as usize * block_size).min(chunk.data.len() - offset * block_size)];
            let hashes = chunk.hashes[offset..offset + count as usize].to_vec();
            if self.worth_refining(first_block, count) {
                self.flush_zero_run()?;
                self.refine(first_block, data, hashes)?;
            } else {
                extents.push((first_block, data, hashes));
            }
        }
        if extents.is_empty() {
            return Ok(());
        }
        self.flush_zero_run()?;
        let level = self.level;
        let messages: Vec<Message> = pool.install(|| {
            extents
                .into_par_iter()
                .map(|(first_block, data, hashes)| extent(first_block, data, hashes, level))
                .collect()
        });
        for message in messages {
            if let Message::Extent {
                raw_len, payload, ..
            } = &message
            {
                self.count_payload(*raw_len as u64, payload.len() as u64, progress);
            }
            self.send(message)?;
        }
        Ok(())
    }

    fn count_payload(&mut self, raw: u64, payload: u64, progress: &dyn Progress) {
        self.stats.bytes_changed += raw;
        self.stats.bytes_payload += payload;
        progress.advance(Stage::Scan, 0, payload);
    }

    /// Asks the receiver which sub-blocks of this run differ; patches older runs first when
    /// the window is full.
    fn refine(
        &mut self,
        first_block: u64,
        data: &[u8],
        hashes: Vec<BlockHash>,
    ) -> Result<(), Stop> {
        while self.pending_bytes + data.len() > REFINE_WINDOW && !self.pending.is_empty() {
            self.patch_next()?;
        }
        let key = match self.refine_key {
            Some(key) => key,
            None => {
                let key = refine::new_key()
                    .map_err(|e| Stop::BadAnswer(format!("no randomness: {e}")))?;
                self.send(Message::RefineKey { key })?;
                *self.refine_key.insert(key)
            }
        };
        self.send(Message::Refine {
            first_block,
            block_count: hashes.len() as u32,
            sub_hashes: refine::sub_hashes(&key, data),
        })?;
        self.stats.blocks_refined += hashes.len() as u64;
        self.pending_bytes += data.len();
        self.pending.push_back(Pending {
            first_block,
            data: data.to_vec(),
            hashes,
        });
        Ok(())
    }

    /// Waits for the oldest run's answer and sends its patch.
    fn patch_next(&mut self) -> Result<(), Stop> {
        let pending = self.pending.pop_front().expect("a run awaits an answer");
        self.pending_bytes -= pending.data.len();
        let answers = self.answers.as_mut().expect("refinement enabled");
        let (first_block, bitmap) = answers.blocking_recv().ok_or(Stop::Disconnected)?;
        let expected_bits = refine::sub_count(pending.data.len());
        if first_block != pending.first_block || bitmap.len() != expected_bits.div_ceil(8) {
            return Err(Stop::BadAnswer(format!(
                "answer for block {first_block} with {} bitmap bytes; expected block {} with {}",
                bitmap.len(),
                pending.first_block,
                expected_bits.div_ceil(8)
            )));
        }
        let pieces = refine::pieces(&pending.data, &bitmap);
        let raw_len = pieces.len();
        self.stats.bytes_saved_by_refinement += (pending.data.len() - raw_len) as u64;
        let (compressed, payload) = compress(&pieces, self.level);
        self.stats.bytes_changed += raw_len as u64;
        self.stats.bytes_payload += payload.len() as u64;
        self.send(Message::Patch {
            first_block,
            hashes: pending.hashes,
            bitmap,
            raw_len: raw_len as u32,
            compressed,
            payload,
        })
    }
}

/// Compresses when that makes the data smaller; returns (compressed?, bytes). Each thread
/// keeps its zstd context (creating one costs more than compressing a small patch).
fn compress(data: &[u8], level: i32) -> (bool, Vec<u8>) {
    thread_local! {
        static COMPRESSOR: RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> =
            const { RefCell::new(None) };
    }
    if level > 0 && !data.is_empty() {
        let packed = COMPRESSOR.with_borrow_mut(|slot| {
            if !matches!(slot, Some((l, _)) if *l == level) {
                *slot = Some((level, zstd::bulk::Compressor::new(level).ok()?));
            }
            slot.as_mut()?.1.compress(data).ok()
        });
        if let Some(packed) = packed.filter(|p| p.len() < data.len()) {
            return (true, packed);
        }
    }
    (false, data.to_vec())
}

/// Builds an extent, compressed when that makes it smaller.
fn extent(first_block: u64, data: &[u8], hashes: Vec<BlockHash>, level: i32) -> Message {
    let (compressed, payload) = compress(data, level);
    Message::Extent {
        first_block,
        raw_len: data.len() as u32,
        compressed,
        hashes,
        payload,
    }
}
