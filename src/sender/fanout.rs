//! Fan-out: one cycle that freezes, reads and hashes the source once and ships it to several
//! destinations, each against its own base manifest and over its own connection.
//!
//! - **One read.** The scan's chunks are copied once into shared buffers and handed to one
//!   worker thread per destination; each worker packs them against its destination's base,
//!   ships them, and commits as soon as its destination has everything: a fast destination
//!   never waits for a slow one. A worker of a tracked read first lists its destination's
//!   ranges to its receiver (`Prefetch`), as a single destination's cycle does.
//! - **A bounded window.** A worker may lag [`WINDOW_CHUNKS`] chunks behind the shared read.
//!   Past that its destination is detached from the shared read and reads the rest of the
//!   cycle's ranges from the same snapshot by itself, at its own pace; the shared read goes on
//!   for the others. The snapshot is released when every destination is done with the cycle
//!   (committed or failed).
//! - **Each destination its own difference.** What is read is the union of what each
//!   destination needs: the change tracker's ranges since the kept snapshot for a destination
//!   that holds exactly that snapshot (its base root is the snapshot's root); for a
//!   destination that lags (it missed cycles, or was down), those ranges plus the blocks where
//!   its base differs from the kept snapshot's manifest (a manifest comparison, no read). So a
//!   lagging destination catches up with exactly its own difference, never a full resend, and
//!   without a full read. No kept snapshot, or no manifest of it: everything is read (each
//!   destination is still sent only its difference).
//!
//! The kept snapshot and the audit record belong to the group (keyed by all destinations);
//! each destination keeps its own manifest and status, as with one destination.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crate::blockdiff::manifest::{BlockHash, Manifest};
use crate::blockdiff::ranges::RangeSet;
use crate::blockdiff::scan::{scan, ScanError, ScanOptions, ScannedChunk};
use crate::progress::NoProgress;
use crate::snapshot::HealthFn;
use crate::state::SenderPaths;
use crate::tracker::Changes;
use crate::transport::Endpoint;

use super::base::{self, DestCycle};
use super::packing::Packer;
use super::report::ms;
use super::stream::{scan_error, send_prefetch, WireSink};
use super::{
    audit, commit, cycle_report, health, save_status, CycleConfig, CycleContext, CycleReport,
    Frozen, Reported, SendError, StageDurations,
};

/// Chunks (of the scan's chunk size, 8 MiB) a destination may lag behind the shared read
/// before it reads on by itself.
pub const WINDOW_CHUNKS: usize = 8;

/// One destination of a fan-out cycle: its canonical text and its open connection.
pub struct FanoutDest {
    /// The destination as the state keys it.
    pub name: String,
    /// Its connection, handshaken.
    pub endpoint: Arc<Endpoint>,
}

/// How the cycle went for one destination.
pub struct DestOutcome {
    /// Index into the destinations given.
    pub index: usize,
    /// Its report, or why it did not commit.
    pub result: Result<CycleReport, SendError>,
}

/// A destination whose cycle is open.
struct Opened<'a> {
    index: usize,
    dest: &'a FanoutDest,
    paths: SenderPaths,
    cycle: DestCycle,
    /// What this destination needs read; why everything, when a tracker could have said less.
    ranges: RangeSet,
    full_scan_reason: Option<String>,
    /// The ranges are the tracker's own (an audit can count what it missed).
    tracked: bool,
}

/// A scanned chunk copied out of the scan's buffers, shared by the workers.
struct OwnedChunk {
    first_block: u64,
    data: Vec<u8>,
    hashes: Vec<BlockHash>,
    zero: Vec<bool>,
    bytes_read: u64,
}

impl OwnedChunk {
    fn copy(chunk: &ScannedChunk<'_>) -> Self {
        OwnedChunk {
            first_block: chunk.first_block,
            data: chunk.data.to_vec(),
            hashes: chunk.hashes.to_vec(),
            zero: chunk.zero.to_vec(),
            bytes_read: chunk.bytes_read,
        }
    }

    fn view(&self) -> ScannedChunk<'_> {
        ScannedChunk {
            first_block: self.first_block,
            data: &self.data,
            hashes: &self.hashes,
            zero: &self.zero,
            bytes_read: self.bytes_read,
        }
    }
}

/// What every worker shares.
struct Shared<'a> {
    config: &'a CycleConfig,
    ctx: &'a CycleContext,
    source: &'a crate::source::BlockSource,
    identity: &'a str,
    /// The view's health check, run before each commit.
    health: Option<HealthFn>,
    /// The union of every destination's ranges: what the shared read reads.
    read: &'a RangeSet,
    options: &'a ScanOptions,
    cancel: &'a AtomicBool,
    /// Set when the shared read has read everything.
    read_done: AtomicBool,
    /// Why the shared read stopped early, when it did.
    read_error: std::sync::Mutex<Option<String>>,
    audit: bool,
    started: Instant,
    snapshot_time: std::time::Duration,
    handshake_time: std::time::Duration,
}

/// The cycle's end: one outcome per destination, and whether the snapshot could be kept or
/// released (a failure there is the run's business, not a destination's).
pub struct FanoutCycle {
    /// One per destination, in the order given.
    pub outcomes: Vec<DestOutcome>,
    /// Keeping or releasing the snapshot after the cycle.
    pub snapshot: Result<(), SendError>,
}

/// Runs one fan-out cycle over open endpoints. `config.dest` is the group's key (it keys the
/// kept snapshot and the audit record). Blocking: call it from a thread of its own. An error
/// is a failure before any destination's cycle opened (the snapshot, the source).
pub fn run_fanout_cycle(
    dests: &[FanoutDest],
    config: &CycleConfig,
    ctx: &CycleContext,
) -> Result<FanoutCycle, SendError> {
    let started = Instant::now();
    let frozen = Frozen::take(config, ctx)?;
    let snapshot_time = started.elapsed();
    let group = SenderPaths::new(&config.state_dir, &frozen.identity, &config.dest);
    let geometry = (config.block_size, frozen.source.size());
    let mut outcomes = Vec::new();
    let mut opened = Vec::new();
    for (index, dest) in dests.iter().enumerate() {
        let paths = SenderPaths::new(&config.state_dir, &frozen.identity, &dest.name);
        let begun = match config.rehash_target {
            true => base::ask_rehash(&dest.endpoint),
            false => Ok(()),
        }
        .and_then(|()| base::begin(&dest.endpoint, &paths, &frozen.identity, geometry));
        match begun {
            Ok(cycle) => opened.push(Opened {
                index,
                dest,
                paths,
                cycle,
                ranges: RangeSet::new(),
                full_scan_reason: None,
                tracked: false,
            }),
            Err(e) => outcomes.push(DestOutcome {
                index,
                result: Err(e),
            }),
        }
    }
    let handshake_time = started.elapsed() - snapshot_time;
    plan_ranges(ctx, &frozen, (dests, &config.state_dir), &mut opened);
    let everything = RangeSet::full(frozen.source.size());
    let generation = opened.iter().map(|o| o.cycle.generation).max().unwrap_or(0);
    let audit = !opened.is_empty()
        && config.audit.due(&group.audit, generation)
        && opened.iter().any(|o| o.ranges != everything);
    let read = match audit {
        true => everything.clone(),
        false => opened
            .iter()
            .fold(RangeSet::new(), |all, o| all.union(&o.ranges)),
    };
    let cancel = Arc::new(AtomicBool::new(false));
    let watch = health::watch_health(&frozen.view, ctx.stop.clone(), cancel.clone());
    let options = ScanOptions {
        read_mode: config.read_mode,
        throttle: config
            .read_limit
            .map(|rate| Arc::new(crate::source::throttle::Throttle::new(rate))),
        ..ScanOptions::new(config.block_size)
    };
    let shared = Shared {
        config,
        ctx,
        source: &frozen.source,
        identity: &frozen.identity,
        health: frozen.view.health.clone(),
        read: &read,
        options: &options,
        cancel: &cancel,
        read_done: AtomicBool::new(false),
        read_error: std::sync::Mutex::new(None),
        audit,
        started,
        snapshot_time,
        handshake_time,
    };
    outcomes.extend(fan_out(&shared, &opened));
    drop(shared);
    let _ = watch.finish();
    outcomes.sort_by_key(|o| o.index);
    let committed: Vec<&CycleReport> = outcomes
        .iter()
        .filter_map(|o| o.result.as_ref().ok())
        .collect();
    if read == everything && !committed.is_empty() {
        audit::record(&group.audit, generation);
    }
    let snapshot = rotate(ctx, config, frozen, &committed);
    Ok(FanoutCycle { outcomes, snapshot })
}

/// Keeps the snapshot for the tracker when some destination committed it (all that did hold
/// the same root), else releases it.
fn rotate(
    ctx: &CycleContext,
    config: &CycleConfig,
    frozen: Frozen,
    committed: &[&CycleReport],
) -> Result<(), SendError> {
    let Frozen { source, view, .. } = frozen;
    drop(source);
    super::space::record(ctx, &config.source, &view);
    let roots_agree = committed.windows(2).all(|w| w[0].root == w[1].root);
    let newest = committed.iter().map(|r| r.generation).max();
    match (ctx.tracker.keeps_previous(), newest, committed.first()) {
        (true, Some(generation), Some(first)) if roots_agree => {
            let mut root = [0u8; 32];
            hex::decode_to_slice(&first.root, &mut root).expect("our own hex");
            let mut kept = ctx.kept.lock().expect("kept views lock");
            Ok(kept.keep(view, generation, root)?)
        }
        (true, Some(_), _) => {
            tracing::warn!("destinations committed different roots from one snapshot; not keeping it (the next cycle reads everything)");
            Ok(view.release()?)
        }
        _ => Ok(view.release()?),
    }
}

/// Decides each destination's ranges (see the module doc).
fn plan_ranges(
    ctx: &CycleContext,
    frozen: &Frozen,
    (dests, state_dir): (&[FanoutDest], &std::path::Path),
    opened: &mut [Opened<'_>],
) {
    let tracker = &*ctx.tracker;
    let everything = RangeSet::full(frozen.source.size());
    let full_scan = tracker.name() == "full-scan";
    let set_all = |opened: &mut [Opened<'_>], reason: Option<String>| {
        for o in opened.iter_mut() {
            o.ranges = everything.clone();
            o.full_scan_reason = reason.clone().filter(|_| !full_scan);
        }
    };
    if full_scan {
        return set_all(opened, None);
    }
    if !tracker.keeps_previous() {
        for o in opened.iter_mut() {
            let (ranges, reason) = match &o.cycle.since {
                Err(why) => (everything.clone(), Some(why.clone())),
                Ok(since) => match tracker.changed(None, &frozen.view, since) {
                    Changes::Ranges(ranges) => (ranges, None),
                    Changes::Everything { reason } => (everything.clone(), reason),
                },
            };
            o.tracked = reason.is_none();
            (o.ranges, o.full_scan_reason) = (ranges, reason);
        }
        return;
    }
    let mut kept = ctx.kept.lock().expect("kept views lock");
    let (previous, since) = match kept.recorded() {
        Ok(found) => found,
        Err(reason) => {
            tracing::info!(event = "fallback_full_scan", tracker = tracker.name(), %reason, "full scan this cycle");
            return set_all(opened, Some(reason));
        }
    };
    let tracked = match tracker.changed(Some(previous), &frozen.view, &since) {
        Changes::Ranges(ranges) => ranges,
        Changes::Everything { reason } => {
            if let Some(reason) = &reason {
                tracing::warn!(event = "fallback_full_scan", tracker = tracker.name(), %reason, "full scan this cycle");
            }
            return set_all(opened, reason);
        }
    };
    drop(kept);
    let reference = kept_manifest(opened, dests, state_dir, frozen, &since.root);
    for o in opened.iter_mut() {
        if o.cycle.base.root() == since.root {
            (o.ranges, o.tracked) = (tracked.clone(), true);
            continue;
        }
        match reference.as_ref().and_then(|m| o.cycle.base.differing(m)) {
            Some(differing) => {
                tracing::info!(
                    dest = %o.dest.name,
                    blocks = differing.total_len().div_ceil(o.cycle.base.block_size as u64),
                    "destination behind the kept snapshot: catching up with its own difference"
                );
                o.ranges = tracked.union(&differing);
            }
            None => {
                o.ranges = everything.clone();
                o.full_scan_reason = Some(
                    "no manifest of the kept snapshot to compare this destination's base with"
                        .into(),
                );
            }
        }
    }
}

/// The manifest of the kept snapshot (the one whose root is `root`): a destination's base this
/// cycle, else a destination's saved manifest.
fn kept_manifest(
    opened: &[Opened<'_>],
    dests: &[FanoutDest],
    state_dir: &std::path::Path,
    frozen: &Frozen,
    root: &BlockHash,
) -> Option<Manifest> {
    if let Some(o) = opened.iter().find(|o| o.cycle.base.root() == *root) {
        return Some(o.cycle.base.clone());
    }
    let geometry = opened
        .first()
        .map(|o| (o.cycle.base.block_size, o.cycle.base.device_size))?;
    dests.iter().find_map(|dest| {
        let paths = SenderPaths::new(state_dir, &frozen.identity, &dest.name);
        let manifest = crate::state::manifest_file::load(&paths.manifest).ok()??;
        (manifest.matches_geometry(geometry.0, geometry.1) && manifest.root() == *root)
            .then_some(manifest)
    })
}

/// Runs the shared read and one worker per destination; returns their outcomes.
fn fan_out(shared: &Shared<'_>, opened: &[Opened<'_>]) -> Vec<DestOutcome> {
    if opened.is_empty() {
        return Vec::new();
    }
    let detached: Vec<AtomicU64> = opened.iter().map(|_| AtomicU64::new(u64::MAX)).collect();
    std::thread::scope(|scope| {
        let mut feeds = Vec::new();
        let mut workers = Vec::new();
        for (open, from) in opened.iter().zip(&detached) {
            let (tx, rx) = flume::bounded::<Arc<OwnedChunk>>(WINDOW_CHUNKS);
            feeds.push(Some(tx));
            let span = tracing::info_span!("dest", dest = %open.dest.name, generation = open.cycle.generation);
            workers.push(scope.spawn(move || {
                let _entered = span.enter();
                worker(shared, open, rx, from)
            }));
        }
        let read = scan(
            shared.source,
            shared.read,
            shared.options,
            &shared.ctx.pool,
            shared.cancel,
            &*shared.ctx.progress,
            |chunk| feed(&mut feeds, &detached, opened, &chunk),
        );
        match read {
            Ok(()) => shared.read_done.store(true, Ordering::SeqCst),
            Err(ScanError::Sink(NobodyLeft)) => {}
            Err(e) => {
                tracing::warn!(error = %e, "the shared read ended early");
                *shared.read_error.lock().expect("read error lock") = Some(e.to_string());
            }
        }
        drop(feeds);
        opened
            .iter()
            .zip(workers)
            .map(|(open, worker)| DestOutcome {
                index: open.index,
                result: worker.join().expect("fan-out worker panicked"),
            })
            .collect()
    })
}

/// Every destination is detached or failed: the shared read has no one to read for.
#[derive(Debug)]
struct NobodyLeft;

impl std::fmt::Display for NobodyLeft {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("no destination left on the shared read")
    }
}

/// Hands one chunk to every destination still on the shared read; detaches one whose window
/// is full.
fn feed(
    feeds: &mut [Option<flume::Sender<Arc<OwnedChunk>>>],
    detached: &[AtomicU64],
    opened: &[Opened<'_>],
    chunk: &ScannedChunk<'_>,
) -> Result<(), NobodyLeft> {
    let owned = Arc::new(OwnedChunk::copy(chunk));
    for (i, slot) in feeds.iter_mut().enumerate() {
        let Some(tx) = slot else { continue };
        match tx.try_send(owned.clone()) {
            Ok(()) => {}
            Err(flume::TrySendError::Full(_)) => {
                tracing::info!(
                    dest = %opened[i].dest.name,
                    behind_chunks = WINDOW_CHUNKS,
                    "destination fell behind the shared read; it reads the rest of this cycle by itself"
                );
                detached[i].store(chunk.first_block, Ordering::SeqCst);
                *slot = None;
            }
            Err(flume::TrySendError::Disconnected(_)) => *slot = None,
        }
    }
    match feeds.iter().any(Option::is_some) {
        true => Ok(()),
        false => Err(NobodyLeft),
    }
}

/// One destination's side: packs what the shared read hands it (then, if detached, what it
/// reads itself), and commits.
fn worker(
    shared: &Shared<'_>,
    open: &Opened<'_>,
    chunks: flume::Receiver<Arc<OwnedChunk>>,
    detached: &AtomicU64,
) -> Result<CycleReport, SendError> {
    let endpoint = &*open.dest.endpoint;
    let sent_before = endpoint.bytes_sent();
    let config = shared.config;
    let pool = &*shared.ctx.pool;
    // As for one destination: a tracked read lists this destination's ranges first, so that
    // its receiver reads its target ahead of the refinements (an audit reads everything).
    let ranges = if shared.audit {
        shared.read
    } else {
        &open.ranges
    };
    let geometry = (config.block_size, shared.source.size());
    send_prefetch(endpoint, open.cycle.refine, ranges, geometry)?;
    let sink = WireSink(endpoint);
    let mut packer = Packer::new(
        open.cycle.base.clone(),
        config.compress_level,
        open.cycle.refine,
        sink,
    );
    for chunk in chunks.iter() {
        packer.chunk(pool, chunk.view(), &NoProgress)?;
    }
    let from = detached.load(Ordering::SeqCst);
    if from != u64::MAX {
        let rest = shared.read.from_offset(from * config.block_size as u64);
        let read = scan(
            shared.source,
            &rest,
            shared.options,
            pool,
            shared.cancel,
            &NoProgress,
            |chunk| packer.chunk(pool, chunk, &NoProgress),
        );
        read.map_err(scan_error)?;
    } else if !shared.read_done.load(Ordering::SeqCst) {
        // The shared read stopped (a stop, a read error): nothing partial is committed.
        let why = shared.read_error.lock().expect("read error lock").clone();
        return Err(match shared.ctx.stop.load(Ordering::Relaxed) {
            true => SendError::Stopped,
            false => SendError::SharedRead(why.unwrap_or_else(|| "no cause recorded".into())),
        });
    }
    let (manifest, _sink, stats) = packer.finish()?;
    let scan_time = shared.started.elapsed() - shared.snapshot_time - shared.handshake_time;
    // Data read from a view that went invalid must never be committed.
    if let Some(check) = &shared.health {
        check()?;
    }
    let commit_start = Instant::now();
    let manifest = commit(
        endpoint,
        &open.paths,
        shared.identity,
        &open.cycle,
        manifest,
    )?;
    let tracking_faults = match shared.audit && open.tracked {
        true => audit::faults(&stats.changed, &open.ranges, config.block_size),
        false => 0,
    };
    let report = cycle_report(Reported {
        config,
        dest_text: &open.dest.name,
        dest: &open.cycle,
        manifest: &manifest,
        ranges: shared.read,
        stats: &stats,
        tracker: shared.ctx.tracker.name(),
        full_scan_reason: open.full_scan_reason.clone(),
        audit: shared.audit,
        tracking_faults,
        bytes_sent: endpoint.bytes_sent() - sent_before,
        durations: StageDurations {
            snapshot: ms(shared.snapshot_time),
            handshake: ms(shared.handshake_time),
            scan_and_send: ms(scan_time),
            commit: ms(commit_start.elapsed()),
            total: ms(shared.started.elapsed()),
        },
    });
    save_status(&open.paths, shared.identity, &report)?;
    Ok(report)
}
