//! The receiving side of a session: handshake, per-target lock, the target's own manifest, and
//! for each cycle: answer with the committed generation and root, stream the manifest when
//! asked, then decompress (bounded), verify every block hash, write, and at the end fsync,
//! compare roots with the sender and commit generation N atomically before acknowledging.
//!
//! The state record says "applying N" from before the first write until the commit, so a
//! crash leaves a visibly mid-cycle target (its manifest is then rebuilt by hashing). A cycle
//! aborted cleanly (lost connection, bad stream) saves a manifest that describes the target
//! exactly and marks it "interrupted": the next cycle ships only what differs.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use tokio::sync::mpsc::{channel, unbounded_channel, Sender};

use crate::apply::Applier;
use crate::blockdiff::manifest::{block_len, check_block_size, hash_block, BlockHash, Manifest};
use crate::blockdiff::scan::{hash_all, ScanOptions};
use crate::blockdiff::source::{BlockSource, DeviceKind};
use crate::progress::Progress;
use crate::state::{Condition, ReceiverPaths, ReceiverState};
use crate::target::{Target, TargetError};
use crate::transport::frame::{Message, TargetCondition, MAX_MANIFEST_CHUNK};
use crate::transport::{BoxStream, Connection, FrameReader, TransportError};

/// Largest device a sender may announce (1 PiB), checked before anything is sized from it.
pub const MAX_DEVICE_SIZE: u64 = 1 << 50;
/// Most blocks a manifest may hold (8 GiB of hashes), checked before allocating it.
pub const MAX_BLOCKS: u64 = 1 << 28;

/// How a receiver was started.
#[derive(Clone, Debug)]
pub struct ReceiverConfig {
    /// The only path this receiver ever writes.
    pub target: PathBuf,
    /// Create a missing target as a sparse file.
    pub create: bool,
    pub state_dir: PathBuf,
    pub threads: usize,
}

/// Why a session or cycle failed on the receiving side.
#[derive(Debug, thiserror::Error)]
pub enum ReceiveError {
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error(transparent)]
    Target(#[from] TargetError),
    #[error("another sender is already mirroring to {0}; refusing a second one")]
    Busy(PathBuf),
    #[error("state of {path}: {source}")]
    State {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("block hash mismatch at byte {offset}: data corrupted in transit; cycle aborted")]
    BlockHashMismatch { offset: u64 },
    #[error("protocol violation: {0}")]
    Protocol(String),
    #[error("after applying generation {generation} the target's root {ours} differs from the sender's {theirs}")]
    RootMismatch {
        generation: u64,
        ours: String,
        theirs: String,
    },
}

/// The per-target state a session keeps between cycles.
struct Session<'a> {
    config: &'a ReceiverConfig,
    paths: ReceiverPaths,
    state: ReceiverState,
    target: Option<Target>,
    manifest: Option<Manifest>,
    pool: std::sync::Arc<rayon::ThreadPool>,
    progress: &'a dyn Progress,
    /// The current cycle changed the target (size or content).
    touched: bool,
}

/// Serves one connection: any number of cycles until the sender closes it.
pub async fn serve(
    config: &ReceiverConfig,
    stream: BoxStream,
    peer: &str,
    progress: &dyn Progress,
) -> Result<(), ReceiveError> {
    let mut conn = Connection::new(stream);
    conn.handshake().await?;
    let result = serve_cycles(config, &mut conn, peer, progress).await;
    if let Err(error) = &result {
        if !matches!(error, ReceiveError::Transport(_)) {
            conn.refuse(&error.to_string()).await;
        }
    }
    result
}

/// Takes the target's lock and state, then runs cycles until the sender closes.
async fn serve_cycles(
    config: &ReceiverConfig,
    conn: &mut Connection,
    peer: &str,
    progress: &dyn Progress,
) -> Result<(), ReceiveError> {
    let paths = ReceiverPaths::new(&config.state_dir, &config.target);
    let state_error = |source| ReceiveError::State {
        path: paths.dir.clone(),
        source,
    };
    let Some(_lock) = wait_for_lock(&paths).await.map_err(state_error)? else {
        return Err(ReceiveError::Busy(config.target.clone()));
    };
    let state = crate::state::read_json::<ReceiverState>(&paths.state)
        .map_err(state_error)?
        .unwrap_or_else(|| ReceiverState::new(&config.target));
    if state.format != 1 {
        return Err(ReceiveError::State {
            path: paths.state.clone(),
            source: std::io::Error::other(format!(
                "state format {} is not supported (this build reads format 1)",
                state.format
            )),
        });
    }
    let pool = std::sync::Arc::new(
        rayon::ThreadPoolBuilder::new()
            .num_threads(config.threads.max(1))
            .build()
            .map_err(|e| ReceiveError::Protocol(e.to_string()))?,
    );
    let mut session = Session {
        config,
        paths,
        state,
        target: None,
        manifest: None,
        pool,
        progress,
        touched: false,
    };
    tracing::info!(peer, target = %config.target.display(), "sender connected");
    loop {
        let message = match conn.recv().await {
            Err(TransportError::Closed) => return Ok(()),
            other => other?,
        };
        let Message::CycleStart {
            generation,
            device_size,
            block_size,
            ..
        } = message
        else {
            return Err(ReceiveError::Protocol(format!(
                "expected CycleStart, got {}",
                message.name()
            )));
        };
        session
            .cycle(conn, generation, device_size, block_size)
            .await?;
    }
}

impl Session<'_> {
    async fn cycle(
        &mut self,
        conn: &mut Connection,
        proposed: u64,
        device_size: u64,
        block_size: u32,
    ) -> Result<(), ReceiveError> {
        check_block_size(block_size as u64).map_err(ReceiveError::Protocol)?;
        check_geometry(device_size, block_size)?;
        let generation = proposed.max(self.state.committed_generation + 1);
        let prior = self.state.condition;
        self.touched = false;
        self.state.last_cycle_bytes_written = 0;
        let condition = self.prepare(device_size, block_size, generation)?;
        let manifest = self.manifest.as_ref().expect("prepared");
        conn.send(&Message::TargetState {
            committed_generation: self.state.committed_generation,
            root: manifest.root(),
            condition,
        })
        .await?;
        conn.flush().await?;
        let result = self.apply_stream(conn, generation).await;
        let touched = self.touched || self.state.last_cycle_bytes_written > 0;
        match result {
            Ok(root) => self.commit(conn, generation, root, prior).await,
            Err(error) => {
                self.abort(&error, prior, touched);
                Err(error)
            }
        }
    }

    /// Opens the target and brings the manifest to the cycle's geometry. Marks the state
    /// "applying" before anything is written.
    fn prepare(
        &mut self,
        device_size: u64,
        block_size: u32,
        generation: u64,
    ) -> Result<TargetCondition, ReceiveError> {
        let prior = self.state.condition;
        let mut created = false;
        if self.target.is_none() {
            let exists = self.config.target.exists();
            let create = (self.config.create && !exists).then_some(device_size);
            self.target = Some(Target::open(&self.config.target, create)?);
            created = create.is_some();
        }
        let target = self.target.as_mut().expect("opened");
        // A file target is resized to the source's size when we manage it (created it or
        // committed to it before) or when it is at least as large; a smaller unknown file and
        // any block device must already be large enough.
        let managed =
            created || self.state.committed_generation > 0 || target.size() >= device_size;
        let may_resize = managed && target.kind() == DeviceKind::File;
        if !may_resize {
            target.fit(device_size, false)?;
        }
        if self.manifest.is_none() && !created {
            self.manifest = self.load_manifest(prior, block_size);
        }
        // From here on the target may change: say so first.
        self.state.condition = Condition::Applying;
        self.state.applying_generation = Some(generation);
        self.state.block_size = block_size;
        self.state.device_size = device_size;
        self.save_state()?;
        let target = self.target.as_mut().expect("opened");
        let size_before = target.size();
        let fitted = target.fit(device_size, may_resize);
        self.touched |= target.size() != size_before;
        fitted?;
        if created {
            self.manifest = Some(Manifest::zeroed(block_size, device_size));
            return Ok(TargetCondition::Unknown);
        }
        match self.manifest.take() {
            Some(mut manifest) if manifest.block_size == block_size => {
                let old_count = manifest.block_count();
                if manifest.device_size != device_size {
                    manifest.resize(device_size);
                    self.rehash_tail(&mut manifest, old_count.saturating_sub(1))?;
                }
                self.manifest = Some(manifest);
                Ok(match prior {
                    Condition::Consistent => TargetCondition::Consistent,
                    _ => TargetCondition::MidCycle,
                })
            }
            _ => {
                self.manifest = Some(self.hash_target(block_size, device_size)?);
                Ok(TargetCondition::Unknown)
            }
        }
    }

    /// The saved manifest, when the state says it describes the target.
    fn load_manifest(&self, prior: Condition, block_size: u32) -> Option<Manifest> {
        let why_not = match prior {
            Condition::Applying if self.state.applying_generation.is_some() => {
                Some("a cycle was interrupted by a crash".to_string())
            }
            Condition::Applying => Some("no state for this target yet".to_string()),
            _ => None,
        };
        let loaded = match why_not {
            Some(reason) => Err(reason),
            None => match Manifest::load(&self.paths.manifest) {
                Ok(Some(m)) if m.block_size == block_size => Ok(m),
                Ok(Some(m)) => Err(format!(
                    "block size changed from {} to {block_size}",
                    m.block_size
                )),
                Ok(None) => Err("its manifest is missing".into()),
                Err(e) => Err(format!("its manifest is unusable: {e}")),
            },
        };
        match loaded {
            Ok(manifest) => Some(manifest),
            Err(reason) => {
                tracing::warn!(target = %self.config.target.display(), %reason, "rebuilding the target's manifest by hashing it");
                None
            }
        }
    }

    fn hash_target(&self, block_size: u32, device_size: u64) -> Result<Manifest, ReceiveError> {
        let source = BlockSource::open(&self.config.target)
            .map_err(|e| {
                ReceiveError::Target(TargetError::Open {
                    path: self.config.target.clone(),
                    source: std::io::Error::other(e.to_string()),
                })
            })?
            .limited_to(device_size);
        let options = ScanOptions::new(block_size);
        let hashes = hash_all(
            &source,
            &options,
            &self.pool,
            &AtomicBool::new(false),
            self.progress,
        )
        .map_err(|e| {
            ReceiveError::Target(TargetError::Io {
                path: self.config.target.clone(),
                source: std::io::Error::other(e.to_string()),
            })
        })?;
        Ok(Manifest::from_hashes(block_size, device_size, hashes))
    }

    /// Re-hashes blocks from `first` to the end (after a size change).
    fn rehash_tail(&self, manifest: &mut Manifest, first: u64) -> Result<(), ReceiveError> {
        let target = self.target.as_ref().expect("opened");
        let mut buf = vec![0u8; manifest.block_size as usize];
        for index in first..manifest.block_count() {
            let len = block_len(manifest.device_size, manifest.block_size, index);
            target.read_at(&mut buf[..len], index * manifest.block_size as u64)?;
            manifest.set_hash(index, hash_block(&buf[..len]));
        }
        Ok(())
    }

    /// Answers a manifest request if one comes, then applies data until CycleEnd.
    /// Returns the root the sender expects.
    async fn apply_stream(
        &mut self,
        conn: &mut Connection,
        generation: u64,
    ) -> Result<BlockHash, ReceiveError> {
        let mut first = conn.recv().await;
        if let Ok(Message::ManifestRequest) = first {
            send_manifest(conn, self.manifest.as_ref().expect("prepared")).await?;
            first = conn.recv().await;
        }
        let target = self.target.take().expect("opened");
        let mut manifest = self.manifest.take().expect("prepared");
        let (tx, rx) = channel::<Message>(16);
        let (answer_tx, mut answer_rx) = unbounded_channel::<Message>();
        let pool = self.pool.clone();
        let applier = std::thread::spawn(move || {
            let mut applier = Applier::new(&target, &mut manifest, &pool, answer_tx);
            let result = applier.run(rx);
            let touched = applier.touched;
            (target, manifest, touched, result)
        });
        let Connection { reader, writer, .. } = conn;
        let streaming = async move {
            let streamed = stream_to_applier(reader, first, &tx).await;
            drop(tx);
            streamed
        };
        let answering = async {
            while let Some(answer) = answer_rx.recv().await {
                writer.send(&answer).await?;
                if answer_rx.is_empty() {
                    writer.flush().await?;
                }
            }
            Ok::<(), TransportError>(())
        };
        let (streamed, answered) = tokio::join!(streaming, answering);
        let (target, manifest, touched, applied) = applier.join().expect("applier thread panicked");
        self.state.last_cycle_bytes_written = touched;
        self.target = Some(target);
        self.manifest = Some(manifest);
        let end = streamed?;
        answered?;
        applied?;
        match end {
            (g, root) if g == generation => Ok(root),
            (g, _) => Err(ReceiveError::Protocol(format!(
                "cycle ended as generation {g}, expected {generation}"
            ))),
        }
    }

    async fn commit(
        &mut self,
        conn: &mut Connection,
        generation: u64,
        expected_root: BlockHash,
        prior: Condition,
    ) -> Result<(), ReceiveError> {
        let target = self.target.as_ref().expect("opened");
        target.sync()?;
        let manifest = self.manifest.as_mut().expect("prepared");
        let root = manifest.root();
        if root != expected_root {
            let error = ReceiveError::RootMismatch {
                generation,
                ours: hex::encode(root),
                theirs: hex::encode(expected_root),
            };
            self.abort(&error, prior, true);
            return Err(error);
        }
        manifest.generation = generation;
        manifest
            .save(&self.paths.manifest)
            .map_err(|source| ReceiveError::State {
                path: self.paths.manifest.clone(),
                source,
            })?;
        self.state.condition = Condition::Consistent;
        self.state.committed_generation = generation;
        self.state.committed_root = hex::encode(root);
        self.state.applying_generation = None;
        self.state.committed_at = Some(crate::state::now());
        self.state.last_error = None;
        self.save_state()?;
        tracing::info!(generation, root = %hex::encode(root), bytes_written = self.state.last_cycle_bytes_written, "generation committed");
        conn.send(&Message::Committed { generation, root }).await?;
        conn.flush().await?;
        Ok(())
    }

    /// After a failed cycle: make what was written durable and save a manifest that describes
    /// it, so the target is "interrupted" (mid-cycle, manifest exact) rather than unknown. A
    /// cycle that wrote nothing leaves a consistent target consistent.
    fn abort(&mut self, error: &ReceiveError, prior: Condition, touched: bool) {
        tracing::error!(target = %self.config.target.display(), %error, touched, "cycle aborted");
        self.state.last_error = Some(error.to_string());
        if !touched && prior == Condition::Consistent {
            self.state.condition = Condition::Consistent;
            self.state.applying_generation = None;
            let _ = self.save_state();
            return;
        }
        let (Some(target), Some(manifest)) = (self.target.as_ref(), self.manifest.as_ref()) else {
            let _ = self.save_state();
            return;
        };
        let saved = target.sync().is_ok() && manifest.save(&self.paths.manifest).is_ok();
        if saved {
            self.state.condition = Condition::Interrupted;
        }
        let _ = self.save_state();
    }

    fn save_state(&mut self) -> Result<(), ReceiveError> {
        self.state
            .save(&self.paths)
            .map_err(|source| ReceiveError::State {
                path: self.paths.state.clone(),
                source,
            })
    }
}

async fn send_manifest(conn: &mut Connection, manifest: &Manifest) -> Result<(), ReceiveError> {
    for (i, chunk) in manifest
        .hashes()
        .chunks(MAX_MANIFEST_CHUNK as usize)
        .enumerate()
    {
        conn.send(&Message::ManifestChunk {
            first_block: (i * MAX_MANIFEST_CHUNK as usize) as u64,
            hashes: chunk.to_vec(),
        })
        .await?;
    }
    conn.send(&Message::ManifestEnd {
        root: manifest.root(),
    })
    .await?;
    conn.flush().await?;
    Ok(())
}

/// Forwards data messages to the applier until CycleEnd; returns its generation and root.
/// Stops at once when the applier stops (its error is reported by the caller).
async fn stream_to_applier(
    reader: &mut FrameReader,
    first: Result<Message, TransportError>,
    tx: &Sender<Message>,
) -> Result<(u64, BlockHash), ReceiveError> {
    const APPLIER_STOPPED: (u64, BlockHash) = (u64::MAX, [0; 32]);
    let mut next = first;
    loop {
        match next? {
            Message::CycleEnd { generation, root } => return Ok((generation, root)),
            message @ (Message::Extent { .. }
            | Message::ZeroRun { .. }
            | Message::RefineKey { .. }
            | Message::Refine { .. }
            | Message::Patch { .. }) => {
                if tx.send(message).await.is_err() {
                    return Ok(APPLIER_STOPPED);
                }
            }
            other => {
                return Err(ReceiveError::Protocol(format!(
                    "unexpected {} during a cycle",
                    other.name()
                )))
            }
        }
        next = tokio::select! {
            message = reader.recv() => message,
            _ = tx.closed() => return Ok(APPLIER_STOPPED),
        };
    }
}

/// How long a new session waits for the target's lock: a session whose sender just vanished
/// may still be recording its aborted cycle. A sender still connected is refused after it.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Takes the per-target lock, waiting up to [`LOCK_WAIT`] for an ending session to let go.
async fn wait_for_lock(
    paths: &ReceiverPaths,
) -> std::io::Result<Option<nix::fcntl::Flock<std::fs::File>>> {
    let deadline = tokio::time::Instant::now() + LOCK_WAIT;
    loop {
        if let Some(lock) = paths.lock()? {
            return Ok(Some(lock));
        }
        if tokio::time::Instant::now() >= deadline {
            return Ok(None);
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Bounds the announced geometry before a target or manifest is sized from it.
fn check_geometry(device_size: u64, block_size: u32) -> Result<(), ReceiveError> {
    let blocks = crate::blockdiff::manifest::block_count(device_size, block_size);
    if device_size > MAX_DEVICE_SIZE || blocks > MAX_BLOCKS {
        return Err(ReceiveError::Protocol(format!(
            "announced device of {device_size} bytes in {blocks} blocks exceeds the receiver's limits \
             ({MAX_DEVICE_SIZE} bytes, {MAX_BLOCKS} blocks; use a larger --block-size)"
        )));
    }
    Ok(())
}

/// Checks a receiver's configuration before serving (fail fast with one clear line).
pub fn check_config(config: &ReceiverConfig) -> Result<(), ReceiveError> {
    crate::target::check_path(&config.target, config.create)?;
    Ok(())
}

/// A path as given, made absolute (the key of the receiver's state).
pub fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_owned())
}
