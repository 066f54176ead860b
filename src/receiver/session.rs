//! One sender's session with one target: for each cycle, prepare the target and its manifest,
//! answer with the committed generation and root, stream the manifest when asked, hand the
//! data to the applier, and at the end fsync, compare roots and commit (or abort cleanly).

use std::sync::atomic::AtomicBool;
use tokio::sync::mpsc::{channel, unbounded_channel, Sender};

use crate::blockdiff::manifest::{block_len, check_block_size, hash_block, BlockHash, Manifest};
use crate::blockdiff::scan::{hash_all, ScanOptions};
use crate::device::DeviceKind;
use crate::progress::Progress;
use crate::source::BlockSource;
use crate::state::{Condition, ReceiverPaths, ReceiverState};
use crate::target::{Target, TargetError};
use crate::transport::frame::{Message, TargetCondition, MAX_MANIFEST_CHUNK};
use crate::transport::{Connection, FrameReader, TransportError};

use super::apply::Applier;
use super::{ReceiveError, ReceiverConfig, MAX_BLOCKS, MAX_DEVICE_SIZE};

/// The per-target state a session keeps between cycles.
pub(crate) struct Session<'a> {
    pub(crate) config: &'a ReceiverConfig,
    pub(crate) paths: ReceiverPaths,
    pub(crate) state: ReceiverState,
    pub(crate) target: Option<Target>,
    pub(crate) manifest: Option<Manifest>,
    pub(crate) pool: std::sync::Arc<rayon::ThreadPool>,
    pub(crate) progress: &'a dyn Progress,
    /// The current cycle changed the target (size or content).
    pub(crate) touched: bool,
}

impl Session<'_> {
    pub(crate) async fn cycle(
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
            None => match crate::state::manifest_file::load(&self.paths.manifest) {
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
        crate::state::manifest_file::save(manifest, &self.paths.manifest).map_err(|source| {
            ReceiveError::State {
                path: self.paths.manifest.clone(),
                source,
            }
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
        let saved = target.sync().is_ok()
            && crate::state::manifest_file::save(manifest, &self.paths.manifest).is_ok();
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
