//! One cycle end to end, on the sending side, on a thread of its own: freeze the source, open
//! the cycle with the destination and choose the base manifest (`base`: ours if the
//! receiver's root agrees, else the receiver's), ask the change tracker what to read (only
//! against our own base), scan and pack the changes (`stream`, [`packing`]), and commit our
//! manifest only after the receiver acknowledged the generation as durable.

pub mod audit;
mod base;
pub mod dry_run;
mod error;
pub mod fanout;
mod health;
pub mod packing;
mod report;
pub mod space;
mod stream;

pub use error::SendError;
pub use report::{CycleReport, StageDurations};

pub use error::Violation;

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::blockdiff::manifest::Manifest;
use crate::blockdiff::ranges::RangeSet;
use crate::blockdiff::scan::ScanOptions;
use crate::device::DeviceKind;
use crate::progress::Progress;
use crate::snapshot::{FrozenView, SnapshotError, SnapshotProvider};
use crate::source::{BlockSource, ReadMode, SourceError};
use crate::state::{SenderPaths, SenderStatus};
use crate::tracker::{ChangeTracker, Changes, KeptViews};
use crate::transport::frame::{Message, TargetCondition};
use crate::transport::Endpoint;

use base::DestCycle;
use error::unexpected;
use packing::ChangeStats;
use report::ms;
use stream::{Streaming, WireSink};

/// What one cycle needs to know.
#[derive(Clone, Debug)]
pub struct CycleConfig {
    /// The source as given.
    pub source: std::path::PathBuf,
    /// Canonical text of the destination (keys our state).
    pub dest: String,
    /// Manifest block size.
    pub block_size: u32,
    /// Where our manifests and status live.
    pub state_dir: std::path::PathBuf,
    /// zstd level; 0 sends raw.
    pub compress_level: i32,
    /// How the scan reads the source.
    pub read_mode: ReadMode,
    /// When a cycle hashes everything to check the change tracker.
    pub audit: audit::AuditPolicy,
    /// Ask the receiver to re-hash its target (scrub) before the cycle.
    pub rehash_target: bool,
    /// At most this many bytes per second read from the source by a cycle's scan
    /// (`--read-limit`), so that a full scan or an audit leaves the disk to the workload.
    pub read_limit: Option<u64>,
    /// Run after each committed cycle (`--post-commit`), by the daemon.
    pub post_commit: Option<crate::snapshot::hooks::PostCommit>,
}

/// What every cycle of a run works with besides its configuration.
#[derive(Clone)]
pub struct CycleContext {
    /// Freezes the source.
    pub provider: Arc<dyn SnapshotProvider>,
    /// Says what changed since our committed generation.
    pub tracker: Arc<dyn ChangeTracker>,
    /// Hashing and compression threads.
    pub pool: Arc<rayon::ThreadPool>,
    /// Progress of the scan.
    pub progress: Arc<dyn Progress>,
    /// Set on a requested stop: the cycle ends within a fraction of a second.
    pub stop: Arc<AtomicBool>,
    /// The previous cycle's snapshot, when the tracker compares against one.
    pub kept: Arc<Mutex<KeptViews>>,
}

/// Stable identity of a source: its kind and canonical path.
pub fn source_identity(path: &std::path::Path) -> Result<String, SourceError> {
    let kind = crate::device::classify(path)?;
    let canonical = std::fs::canonicalize(path).map_err(|e| SourceError::Unreadable {
        path: path.to_owned(),
        source: e,
    })?;
    let prefix = match kind {
        DeviceKind::File => "file",
        DeviceKind::BlockDevice => "blockdev",
    };
    Ok(format!("{prefix}:{}", canonical.display()))
}

/// The source frozen for one cycle.
struct Frozen {
    identity: String,
    // Fields drop in order: the source's open file must close before the view's release
    // (an LVM snapshot still open cannot be removed).
    source: BlockSource,
    view: FrozenView,
}

impl Frozen {
    fn take(config: &CycleConfig, ctx: &CycleContext) -> Result<Frozen, SendError> {
        let identity = source_identity(&config.source)?;
        let view = match ctx.provider.freeze(&config.source, &ctx.stop) {
            Err(SnapshotError::Stopped) => return Err(SendError::Stopped),
            other => other?,
        };
        let source = BlockSource::open(&view.path)?;
        Ok(Frozen {
            identity,
            view,
            source,
        })
    }
}

/// Runs one cycle over an open endpoint. Blocking: call it from a thread of its own.
pub fn run_cycle(
    endpoint: &Endpoint,
    config: &CycleConfig,
    ctx: &CycleContext,
) -> Result<CycleReport, SendError> {
    let started = Instant::now();
    let sent_before = endpoint.bytes_sent();
    let frozen = Frozen::take(config, ctx)?;
    let snapshot_time = started.elapsed();
    let paths = SenderPaths::new(&config.state_dir, &frozen.identity, &config.dest);
    let geometry = (config.block_size, frozen.source.size());
    if config.rehash_target {
        base::ask_rehash(endpoint)?;
    }
    let dest = base::begin(endpoint, &paths, &frozen.identity, geometry)?;
    tracing::Span::current().record("generation", dest.generation);
    let handshake_time = started.elapsed() - snapshot_time;
    let (tracked, full_scan_reason) = ranges_to_scan(ctx, &frozen, &dest);
    let everything = RangeSet::full(frozen.source.size());
    let audit = config.audit.due(&paths.audit, dest.generation) && tracked != everything;
    let ranges = if audit { &everything } else { &tracked };
    let scan_start = Instant::now();
    stream::send_prefetch(endpoint, dest.refine, ranges, geometry)?;
    let (manifest, stats) = scan_and_ship(endpoint, config, ctx, &frozen, ranges, &dest)
        // A scan that failed may have failed for want of snapshot space (an overflowing
        // classic snapshot, a full thin pool): the figures matter most then.
        .inspect_err(|_| space::record(ctx, &config.source, &frozen.view))?;
    let tracking_faults = match audit && full_scan_reason.is_none() {
        true => audit::faults(&stats.changed, &tracked, config.block_size),
        false => 0,
    };
    let scan_time = scan_start.elapsed();
    let commit_start = Instant::now();
    let manifest = commit(endpoint, &paths, &frozen.identity, &dest, manifest)?;
    if *ranges == everything {
        audit::record(&paths.audit, dest.generation);
    }
    let Frozen {
        identity,
        source,
        view,
    } = frozen;
    drop(source);
    space::record(ctx, &config.source, &view);
    if ctx.tracker.keeps_previous() {
        let mut kept = ctx.kept.lock().expect("kept views lock");
        kept.keep(view, dest.generation, manifest.root())?;
    } else {
        view.release()?;
    }
    let report = cycle_report(Reported {
        config,
        dest_text: &config.dest,
        dest: &dest,
        manifest: &manifest,
        ranges,
        stats: &stats,
        tracker: ctx.tracker.name(),
        full_scan_reason,
        audit,
        tracking_faults,
        bytes_sent: endpoint.bytes_sent() - sent_before,
        durations: StageDurations {
            snapshot: ms(snapshot_time),
            handshake: ms(handshake_time),
            scan_and_send: ms(scan_time),
            commit: ms(commit_start.elapsed()),
            total: ms(started.elapsed()),
        },
    });
    save_status(&paths, &identity, &report)?;
    Ok(report)
}

/// What one destination's cycle did, for its report.
struct Reported<'a> {
    config: &'a CycleConfig,
    dest_text: &'a str,
    dest: &'a DestCycle,
    manifest: &'a Manifest,
    ranges: &'a RangeSet,
    stats: &'a ChangeStats,
    tracker: &'static str,
    full_scan_reason: Option<String>,
    audit: bool,
    tracking_faults: u64,
    bytes_sent: u64,
    durations: StageDurations,
}

fn cycle_report(r: Reported<'_>) -> CycleReport {
    let block_size = r.config.block_size;
    let mut report = CycleReport {
        generation: r.dest.generation,
        source: r.config.source.display().to_string(),
        dest: r.dest_text.to_string(),
        device_size: r.manifest.device_size,
        block_size,
        blocks_scanned: r.manifest.block_count(),
        bytes_scanned: r
            .ranges
            .aligned_out(block_size as u64)
            .clipped(r.manifest.device_size)
            .total_len(),
        bytes_sent: r.bytes_sent,
        base: r.dest.base_name.to_string(),
        target_condition: condition_name(r.dest.condition).to_string(),
        tracker: r.tracker.to_string(),
        full_scan_reason: r.full_scan_reason,
        ranges_scanned: r.ranges.range_count() as u64,
        audit: r.audit,
        tracking_faults: r.tracking_faults,
        root: hex::encode(r.manifest.root()),
        duration_ms: r.durations,
        ..CycleReport::default()
    };
    report.add_changes(r.stats);
    report
}

/// What to read: the tracker's ranges when the base is our own committed manifest (and the
/// tracker's previous snapshot of it is there, when it needs one), else everything, and why
/// when a tracker could have said less.
fn ranges_to_scan(
    ctx: &CycleContext,
    frozen: &Frozen,
    dest: &DestCycle,
) -> (RangeSet, Option<String>) {
    let tracker = &*ctx.tracker;
    let everything = RangeSet::full(frozen.source.size());
    let full_scan = tracker.name() == "full-scan";
    let since = match &dest.since {
        Ok(since) => since,
        Err(why) => return (everything, (!full_scan).then(|| why.clone())),
    };
    let mut kept = ctx.kept.lock().expect("kept views lock");
    let previous = match tracker.keeps_previous() {
        true => match kept.previous(since) {
            Ok(view) => Some(view),
            Err(reason) => {
                tracing::info!(event = "fallback_full_scan", tracker = tracker.name(), %reason, "full scan this cycle");
                return (everything, Some(reason));
            }
        },
        false => None,
    };
    match tracker.changed(previous, &frozen.view, since) {
        Changes::Ranges(ranges) => {
            tracing::debug!(
                tracker = tracker.name(),
                ranges = ranges.range_count(),
                bytes = ranges.total_len(),
                first = ?ranges.iter().take(8).collect::<Vec<_>>(),
                "changed ranges"
            );
            (ranges, None)
        }
        Changes::Everything { reason } => {
            if let Some(reason) = &reason {
                tracing::warn!(event = "fallback_full_scan", tracker = tracker.name(), %reason, "full scan this cycle");
            }
            (everything, reason)
        }
    }
}

/// The data phase: scan the ranges while watching the view; returns the new manifest.
fn scan_and_ship(
    endpoint: &Endpoint,
    config: &CycleConfig,
    ctx: &CycleContext,
    frozen: &Frozen,
    ranges: &RangeSet,
    dest: &DestCycle,
) -> Result<(Manifest, ChangeStats), SendError> {
    let cancel = Arc::new(AtomicBool::new(false));
    let watch = health::watch_health(&frozen.view, ctx.stop.clone(), cancel.clone());
    let streaming = Streaming {
        source: &frozen.source,
        ranges,
        options: ScanOptions {
            read_mode: config.read_mode,
            throttle: config
                .read_limit
                .map(|rate| Arc::new(crate::source::throttle::Throttle::new(rate))),
            ..ScanOptions::new(config.block_size)
        },
        level: config.compress_level,
        pool: &ctx.pool,
        cancel: &cancel,
        progress: &*ctx.progress,
    };
    let streamed = stream::stream_changes(
        &streaming,
        dest.base.clone(),
        dest.refine,
        WireSink(endpoint),
    );
    let watched = watch.finish();
    // Data read from a view that went invalid must never be committed.
    frozen.view.check_health()?;
    watched?;
    streamed
}

/// Ends the cycle: the receiver must commit our generation and root; then ours is saved.
fn commit(
    endpoint: &Endpoint,
    paths: &SenderPaths,
    identity: &str,
    dest: &DestCycle,
    mut manifest: Manifest,
) -> Result<Manifest, SendError> {
    let generation = dest.generation;
    manifest.generation = generation;
    manifest.source_identity = *blake3::hash(identity.as_bytes()).as_bytes();
    let root = manifest.root();
    endpoint.send(Message::CycleEnd { generation, root })?;
    match endpoint.recv()? {
        Message::Committed {
            generation: g,
            root: r,
        } if g == generation && r == root => {}
        Message::Committed { generation: g, .. } if g == generation => {
            return Err(Violation::CommittedRoot { generation }.into())
        }
        Message::Committed { generation: g, .. } => {
            return Err(Violation::CommittedGeneration {
                got: g,
                expected: generation,
            }
            .into())
        }
        other => return Err(unexpected(&other, "Committed")),
    }
    crate::state::manifest_file::save(&manifest, &paths.manifest).map_err(|source| {
        SendError::State {
            path: paths.manifest.clone(),
            source,
        }
    })?;
    Ok(manifest)
}

fn save_status(paths: &SenderPaths, identity: &str, report: &CycleReport) -> Result<(), SendError> {
    let previous = crate::state::read_json::<SenderStatus>(&paths.status)
        .ok()
        .flatten();
    let committed_at = crate::state::now();
    let status = SenderStatus {
        source: report.source.clone(),
        source_identity: identity.to_string(),
        dest: report.dest.clone(),
        generation: report.generation,
        root: report.root.clone(),
        committed_at,
        last_cycle: serde_json::to_value(report).unwrap_or_default(),
        snapshot_at: Some(committed_at.saturating_sub(report.duration_ms.total / 1000)),
        last_failure: previous.and_then(|p| p.last_failure),
        consecutive_failures: 0,
        next_cycle_at: None,
    };
    crate::state::write_json(&paths.status, &status).map_err(|source| SendError::State {
        path: paths.status.clone(),
        source,
    })
}

fn condition_name(condition: TargetCondition) -> &'static str {
    match condition {
        TargetCondition::Consistent => "consistent",
        TargetCondition::MidCycle => "mid-cycle",
        TargetCondition::Unknown => "unknown",
    }
}
