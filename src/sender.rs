//! One cycle end to end, on the sending side: freeze the source, choose the base manifest
//! (ours if the receiver's root agrees, else the receiver's), scan and diff, compress changed
//! extents in parallel, stream them, and commit our manifest only after the receiver
//! acknowledged the generation as durable.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::mpsc;

use crate::blockdiff::manifest::{block_count, root_of, BlockHash, Manifest};
use crate::blockdiff::scan::{scan, ScanError, ScanOptions};
use crate::blockdiff::source::{BlockSource, DeviceKind, ReadMode, SourceError};
use crate::differ::{ChangeStats, Differ, Stop};
use crate::progress::Progress;
use crate::snapshot::{SnapshotError, SnapshotProvider};
use crate::state::{SenderPaths, SenderStatus};
use crate::transport::frame::{Message, CAP_REFINE};
use crate::transport::{Connection, FrameReader, FrameWriter, TransportError};

/// Extents queued between the scan and the network.
const SEND_QUEUE: usize = 32;

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

/// Why a cycle failed on the sending side.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error("read error: {0}")]
    Read(String),
    #[error("state {path}: {source}")]
    State {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("protocol violation by receiver: {0}")]
    Protocol(String),
    #[error("interrupted")]
    Cancelled,
}

impl SendError {
    /// True when the next cycle may succeed without the user changing anything.
    pub fn is_transient(&self) -> bool {
        match self {
            SendError::Transport(e) => e.is_transient(),
            SendError::Read(_) => true,
            _ => false,
        }
    }
}

/// Figures of one committed cycle (printed as JSON with `--json`).
#[derive(Clone, Debug, Default, Serialize)]
pub struct CycleReport {
    pub generation: u64,
    pub source: String,
    pub dest: String,
    pub device_size: u64,
    pub block_size: u32,
    pub blocks_scanned: u64,
    pub blocks_changed: u64,
    pub blocks_zero: u64,
    pub bytes_read: u64,
    /// Plaintext bytes shipped: whole changed blocks, or the differing 4 KiB sub-blocks of
    /// refined blocks.
    pub bytes_changed: u64,
    /// Changed blocks refined to 4 KiB, and the bytes refinement did not have to ship.
    pub blocks_refined: u64,
    pub bytes_saved_by_refinement: u64,
    /// Bytes of extent payloads after compression.
    pub bytes_payload: u64,
    /// Every byte written to the connection during the cycle.
    pub bytes_sent: u64,
    pub compression_ratio: f64,
    /// "sender" (our manifest), "receiver" (roots disagreed: the receiver's manifest).
    pub base: String,
    pub root: String,
    pub duration_ms: StageDurations,
}

/// Milliseconds per stage.
#[derive(Clone, Debug, Default, Serialize)]
pub struct StageDurations {
    pub snapshot: u64,
    pub handshake: u64,
    pub scan_and_send: u64,
    pub commit: u64,
    pub total: u64,
}

fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

/// Stable identity of a source: its kind and canonical path.
pub fn source_identity(path: &std::path::Path) -> Result<String, SourceError> {
    let kind = crate::blockdiff::source::classify(path)?;
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
    manifest
        .save(&paths.manifest)
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

/// Polls the view's health while the cycle reads it; a failure cancels the scan.
struct HealthWatch {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<Result<(), SnapshotError>>>,
}

/// How often a view's health is polled during a cycle.
const HEALTH_POLL: Duration = Duration::from_secs(2);

fn watch_health(view: &crate::snapshot::FrozenView, cancel: Arc<AtomicBool>) -> HealthWatch {
    let stop = Arc::new(AtomicBool::new(false));
    let Some(check) = view.health.clone() else {
        return HealthWatch { stop, thread: None };
    };
    let flag = stop.clone();
    let thread = std::thread::spawn(move || {
        while !flag.load(Ordering::Relaxed) {
            if let Err(e) = check() {
                cancel.store(true, Ordering::Relaxed);
                return Err(e);
            }
            std::thread::park_timeout(HEALTH_POLL);
        }
        Ok(())
    });
    HealthWatch {
        stop,
        thread: Some(thread),
    }
}

impl HealthWatch {
    fn finish(mut self) -> Result<(), SnapshotError> {
        self.stop.store(true, Ordering::Relaxed);
        match self.thread.take() {
            Some(thread) => {
                thread.thread().unpark();
                thread.join().expect("health watcher panicked")
            }
            None => Ok(()),
        }
    }
}

impl Drop for HealthWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = &self.thread {
            thread.thread().unpark();
        }
    }
}

fn unexpected(got: &Message, expected: &'static str) -> SendError {
    SendError::Transport(TransportError::Unexpected {
        got: got.name(),
        expected,
    })
}

/// Our committed manifest, if it is usable for this source as it is now. Says why not.
fn load_own_manifest(
    paths: &SenderPaths,
    identity: &str,
    block_size: u32,
    device_size: u64,
) -> Option<Manifest> {
    let reason = match Manifest::load(&paths.manifest) {
        Ok(None) => return None,
        Ok(Some(m)) if m.source_identity != *blake3::hash(identity.as_bytes()).as_bytes() => {
            "it belongs to another source".to_string()
        }
        Ok(Some(m)) if m.block_size != block_size => {
            format!(
                "its block size is {} and this cycle uses {block_size}",
                m.block_size
            )
        }
        Ok(Some(m)) if m.device_size != device_size => format!(
            "the source was {} bytes and is now {device_size}",
            m.device_size
        ),
        Ok(Some(m)) => return Some(m),
        Err(e) => e.to_string(),
    };
    tracing::warn!(
        manifest = %paths.manifest.display(),
        %reason,
        "not using the saved manifest: falling back to a full comparison against the receiver"
    );
    None
}

/// Receives the receiver's manifest for the cycle's geometry, with bounds.
async fn fetch_manifest(
    conn: &mut Connection,
    (block_size, device_size): (u32, u64),
) -> Result<Manifest, SendError> {
    conn.send(&Message::ManifestRequest).await?;
    conn.flush().await?;
    let expected = block_count(device_size, block_size);
    let mut hashes: Vec<BlockHash> = Vec::with_capacity(expected.min(1 << 24) as usize);
    loop {
        match conn.recv().await? {
            Message::ManifestChunk {
                first_block,
                hashes: chunk,
            } => {
                if first_block != hashes.len() as u64
                    || hashes.len() as u64 + chunk.len() as u64 > expected
                {
                    return Err(SendError::Protocol(format!(
                        "manifest chunk at block {first_block} of {} out of order or too long",
                        chunk.len()
                    )));
                }
                hashes.extend(chunk);
            }
            Message::ManifestEnd { root } => {
                if hashes.len() as u64 != expected
                    || root_of(device_size, block_size, &hashes) != root
                {
                    return Err(SendError::Protocol(
                        "receiver's manifest is incomplete or does not match its root".into(),
                    ));
                }
                return Ok(Manifest::from_hashes(block_size, device_size, hashes));
            }
            other => return Err(unexpected(&other, "ManifestChunk")),
        }
    }
}

/// Scans on a blocking thread; this task writes the differ's messages to the connection and,
/// concurrently, reads the receiver's refinement answers back to the differ. Returns every
/// block's new hash.
async fn stream_changes(
    conn: &mut Connection,
    config: &CycleConfig,
    source: Arc<BlockSource>,
    base: Manifest,
    pool: Arc<rayon::ThreadPool>,
    cancel: Arc<AtomicBool>,
    progress: Arc<dyn Progress>,
) -> Result<(Vec<BlockHash>, ChangeStats), SendError> {
    let (tx, mut rx) = mpsc::channel::<Message>(SEND_QUEUE);
    let refining = conn.peer_capabilities & CAP_REFINE != 0;
    let (answer_tx, answer_rx) = mpsc::unbounded_channel();
    let options = ScanOptions {
        read_mode: config.read_mode,
        ..ScanOptions::new(config.block_size)
    };
    let level = config.compress_level;
    let scanner = tokio::task::spawn_blocking(move || {
        let mut differ = Differ::new(base, level, tx, refining.then_some(answer_rx));
        let result = scan(&source, &options, &pool, &cancel, &*progress, |chunk| {
            differ.chunk(&pool, chunk, &*progress)
        });
        let result = result.and_then(|()| differ.finish().map_err(ScanError::Sink));
        (result, differ.new_hashes, differ.stats)
    });
    let Connection { reader, writer, .. } = conn;
    let writing = async {
        let result = write_all(writer, &mut rx).await;
        drop(rx);
        result
    };
    let reading = read_answers(reader, answer_tx);
    let (written, read) = tokio::join!(writing, reading);
    let (result, hashes, stats) = scanner.await.expect("scan task panicked");
    read?;
    if let Err(e) = written {
        return Err(refusal_or(conn, e).await);
    }
    match result {
        Ok(()) => Ok((hashes, stats)),
        Err(ScanError::Cancelled) => Err(SendError::Cancelled),
        Err(ScanError::Read {
            path,
            offset,
            source,
        }) => Err(SendError::Read(format!(
            "read error at byte {offset} of {path}: {source}"
        ))),
        Err(ScanError::Sink(Stop::BadAnswer(what))) => Err(SendError::Protocol(what)),
        Err(ScanError::Sink(Stop::Disconnected)) => {
            Err(SendError::Transport(TransportError::Closed))
        }
    }
}

/// Writes queued messages, flushing whenever the queue runs dry (the receiver may be waiting
/// for a Refine to answer).
async fn write_all(
    writer: &mut FrameWriter,
    rx: &mut mpsc::Receiver<Message>,
) -> Result<(), TransportError> {
    loop {
        let message = match rx.try_recv() {
            Ok(message) => message,
            Err(mpsc::error::TryRecvError::Empty) => {
                writer.flush().await?;
                match rx.recv().await {
                    Some(message) => message,
                    None => return Ok(()),
                }
            }
            Err(mpsc::error::TryRecvError::Disconnected) => return Ok(()),
        };
        writer.send(&message).await?;
    }
}

/// Forwards refinement answers to the differ until it stops listening. Only then is a pending
/// read abandoned: no answer can be in flight once the differ has all it asked for.
async fn read_answers(
    reader: &mut FrameReader,
    answers: mpsc::UnboundedSender<(u64, Vec<u8>)>,
) -> Result<(), SendError> {
    loop {
        let message = tokio::select! {
            message = reader.recv() => message,
            _ = answers.closed() => return Ok(()),
        };
        match message {
            Ok(Message::RefineAnswer {
                first_block,
                bitmap,
            }) => {
                let _ = answers.send((first_block, bitmap));
            }
            Ok(other) => return Err(unexpected(&other, "RefineAnswer")),
            Err(e) => return Err(e.into()),
        }
    }
}

/// After a failed write: the receiver usually refused first and said why; prefer its reason.
async fn refusal_or(conn: &mut Connection, error: TransportError) -> SendError {
    match tokio::time::timeout(Duration::from_secs(5), conn.recv()).await {
        Ok(Err(refused @ TransportError::Refused(_))) => refused.into(),
        _ => error.into(),
    }
}
