//! One cycle end to end, on the sending side: freeze the source, choose the base manifest
//! (ours if the receiver's root agrees, else the receiver's), scan and diff, compress changed
//! extents in parallel, stream them, and commit our manifest only after the receiver
//! acknowledged the generation as durable.

mod base;
mod error;
mod health;
pub mod packing;
mod report;
mod stream;

pub use error::SendError;
pub use report::{CycleReport, StageDurations};

use base::{fetch_manifest, load_own_manifest};
use error::unexpected;
use health::watch_health;
use report::ms;
use stream::stream_changes;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

use crate::blockdiff::manifest::Manifest;
use crate::device::DeviceKind;
use crate::progress::Progress;
use crate::snapshot::SnapshotProvider;
use crate::source::{BlockSource, ReadMode, SourceError};
use crate::state::{SenderPaths, SenderStatus};
use crate::transport::frame::Message;
use crate::transport::Connection;

/// What one cycle needs to know.
#[derive(Clone, Debug)]
pub struct CycleConfig {
    pub source: std::path::PathBuf,
    /// Canonical text of the destination (keys our state).
    pub dest: String,
    pub block_size: u32,
    pub state_dir: std::path::PathBuf,
    /// zstd level; 0 sends raw.
    pub compress_level: i32,
    pub read_mode: ReadMode,
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

/// Runs one cycle over an open connection.
pub async fn run_cycle(
    conn: &mut Connection,
    config: &CycleConfig,
    provider: &dyn SnapshotProvider,
    pool: Arc<rayon::ThreadPool>,
    cancel: Arc<AtomicBool>,
    progress: Arc<dyn Progress>,
) -> Result<CycleReport, SendError> {
    let started = Instant::now();
    let sent_before = conn.bytes_sent();
    let identity = source_identity(&config.source)?;
    let view = provider.freeze(&config.source)?;
    let source = BlockSource::open(&view.path)?;
    let snapshot_time = started.elapsed();
    let paths = SenderPaths::new(&config.state_dir, &identity, &config.dest);
    let ours = load_own_manifest(&paths, &identity, config.block_size, source.size());
    let own_generation = ours.as_ref().map_or(0, |m| m.generation);

    let handshake_start = Instant::now();
    conn.send(&Message::CycleStart {
        generation: own_generation + 1,
        device_size: source.size(),
        block_size: config.block_size,
        base_root: ours.as_ref().map(Manifest::root),
    })
    .await?;
    conn.flush().await?;
    let (their_generation, their_root) = match conn.recv().await? {
        Message::TargetState {
            committed_generation,
            root,
            ..
        } => (committed_generation, root),
        other => return Err(unexpected(&other, "TargetState")),
    };
    let generation = (own_generation + 1).max(their_generation + 1);
    let (base, base_name) = match ours {
        Some(manifest) if manifest.root() == their_root => (manifest, "sender"),
        ours => {
            if ours.is_some() {
                tracing::info!(
                    our_generation = own_generation,
                    their_generation,
                    "receiver's root differs from our manifest: comparing against the receiver's manifest"
                );
            }
            let geometry = (config.block_size, source.size());
            (fetch_manifest(conn, geometry).await?, "receiver")
        }
    };
    let handshake_time = handshake_start.elapsed();

    let scan_start = Instant::now();
    let source = Arc::new(source);
    let watch = watch_health(&view, cancel.clone());
    let streamed = stream_changes(conn, config, source.clone(), base, pool, cancel, progress).await;
    let watched = watch.finish();
    // Data read from a view that went invalid must never be committed.
    view.check_health()?;
    watched?;
    let (scanned, stats) = streamed?;
    let scan_time = scan_start.elapsed();

    let commit_start = Instant::now();
    let mut manifest = Manifest::from_hashes(config.block_size, source.size(), scanned);
    manifest.generation = generation;
    manifest.source_identity = *blake3::hash(identity.as_bytes()).as_bytes();
    let root = manifest.root();
    conn.send(&Message::CycleEnd { generation, root }).await?;
    conn.flush().await?;
    match conn.recv().await? {
        Message::Committed {
            generation: g,
            root: r,
        } if g == generation && r == root => {}
        Message::Committed { generation: g, .. } => {
            return Err(SendError::Protocol(format!(
                "receiver committed generation {g} with another root than ours ({generation})"
            )))
        }
        other => return Err(unexpected(&other, "Committed")),
    }
    let state_error = |path: &std::path::Path| {
        let path = path.to_owned();
        move |source| SendError::State { path, source }
    };
    crate::state::manifest_file::save(&manifest, &paths.manifest)
        .map_err(state_error(&paths.manifest))?;
    drop(source);
    view.release()?;

    let report = CycleReport {
        generation,
        source: config.source.display().to_string(),
        dest: config.dest.clone(),
        device_size: manifest.device_size,
        block_size: config.block_size,
        blocks_scanned: manifest.block_count(),
        blocks_changed: stats.blocks_changed,
        blocks_zero: stats.blocks_zero,
        bytes_read: manifest.device_size,
        bytes_changed: stats.bytes_changed,
        blocks_refined: stats.blocks_refined,
        bytes_saved_by_refinement: stats.bytes_saved_by_refinement,
        bytes_payload: stats.bytes_payload,
        bytes_sent: conn.bytes_sent() - sent_before,
        compression_ratio: if stats.bytes_payload == 0 {
            1.0
        } else {
            stats.bytes_changed as f64 / stats.bytes_payload as f64
        },
        base: base_name.to_string(),
        root: hex::encode(root),
        duration_ms: StageDurations {
            snapshot: ms(snapshot_time),
            handshake: ms(handshake_time),
            scan_and_send: ms(scan_time),
            commit: ms(commit_start.elapsed()),
            total: ms(started.elapsed()),
        },
    };
    let status = SenderStatus {
        source: report.source.clone(),
        source_identity: identity,
        dest: config.dest.clone(),
        generation,
        root: report.root.clone(),
        committed_at: crate::state::now(),
        last_cycle: serde_json::to_value(&report).unwrap_or_default(),
    };
    crate::state::write_json(&paths.status, &status).map_err(state_error(&paths.status))?;
    Ok(report)
}
