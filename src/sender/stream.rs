//! Streaming one cycle's changes: the scan reads the ranges to look at, the packer turns each
//! hashed chunk into ops, and [`WireSink`] ships them over the endpoint and brings the
//! receiver's refinement answers back. All on the cycle's thread; the endpoint's pumps do the
//! network I/O beside it.

use std::sync::atomic::AtomicBool;

use crate::blockdiff::delta::{Op, RefineAnswer};
use crate::blockdiff::manifest::Manifest;
use crate::blockdiff::ranges::RangeSet;
use crate::blockdiff::scan::{scan, ScanError, ScanOptions};
use crate::progress::Progress;
use crate::source::BlockSource;
use crate::transport::frame::{
    Message, CAP_PREFETCH, MAX_PREFETCH_RUNS, MAX_PREFETCH_RUNS_PER_CYCLE,
};
use crate::transport::Endpoint;

use super::error::{unexpected, SendError};
use super::packing::{ChangeStats, DeltaSink, Packer};

/// Ops to the receiver over the wire; its refinement answers back.
pub(crate) struct WireSink<'a>(pub &'a Endpoint);

impl DeltaSink for WireSink<'_> {
    fn send(&mut self, op: Op) -> Result<(), SendError> {
        Ok(self.0.send(op.into())?)
    }

    fn answer(&mut self) -> Result<RefineAnswer, SendError> {
        self.0
            .recv()?
            .into_answer()
            .map_err(|other| unexpected(&other, "RefineAnswer"))
    }
}

/// Tells the receiver which blocks a tracked cycle will look at (`ranges`, bytes, of a
/// `device_size`-byte source), so that it starts reading them from its target before the
/// refinements that need them arrive: the target's scattered reads then overlap the source's
/// instead of following them one by one. Only to a receiver that refines (`refine`) and
/// announced `CAP_PREFETCH`; a full scan or an audit (ranges covering the whole source) lists
/// nothing: it would read the whole target. At most [`MAX_PREFETCH_RUNS_PER_CYCLE`] runs: past
/// them, refinements read the target without the head start.
pub(crate) fn send_prefetch(
    endpoint: &Endpoint,
    refine: bool,
    ranges: &RangeSet,
    (block_size, device_size): (u32, u64),
) -> Result<(), SendError> {
    if !refine
        || endpoint.peer_capabilities() & CAP_PREFETCH == 0
        || *ranges == RangeSet::full(device_size)
    {
        return Ok(());
    }
    let blocks = ranges.to_units(block_size as u64);
    let mut runs = blocks
        .iter()
        .take(MAX_PREFETCH_RUNS_PER_CYCLE)
        .map(|r| (r.start, r.end - r.start))
        .peekable();
    while runs.peek().is_some() {
        let runs = runs.by_ref().take(MAX_PREFETCH_RUNS as usize).collect();
        endpoint.send(Message::Prefetch { runs })?;
    }
    Ok(())
}

/// What the data phase works with.
pub(crate) struct Streaming<'a> {
    pub source: &'a BlockSource,
    pub ranges: &'a RangeSet,
    pub options: ScanOptions,
    pub level: i32,
    pub pool: &'a rayon::ThreadPool,
    pub cancel: &'a AtomicBool,
    pub progress: &'a dyn Progress,
}

/// Scans the ranges and ships what differs from `base` through `sink`; returns the new
/// manifest (the base patched with every block scanned) and the figures.
pub(crate) fn stream_changes<S: DeltaSink>(
    streaming: &Streaming<'_>,
    base: Manifest,
    refine: bool,
    sink: S,
) -> Result<(Manifest, ChangeStats), SendError> {
    let mut packer = Packer::new(base, streaming.level, refine, sink);
    let scanned = scan(
        streaming.source,
        streaming.ranges,
        &streaming.options,
        streaming.pool,
        streaming.cancel,
        streaming.progress,
        |chunk| packer.chunk(streaming.pool, chunk, streaming.progress),
    );
    scanned.map_err(scan_error)?;
    let (manifest, _sink, stats) = packer.finish()?;
    Ok((manifest, stats))
}

/// A scan's failure as the cycle's.
pub(crate) fn scan_error(e: ScanError<SendError>) -> SendError {
    match e {
        ScanError::Cancelled => SendError::Stopped,
        ScanError::Read {
            path,
            offset,
            source,
        } => SendError::Read {
            path,
            offset,
            source,
        },
        ScanError::Sink(e) => e,
    }
}
