//! One sender's session with one target, on a thread of its own: for each cycle, prepare the
//! target and its manifest ([`super::prepare`]), answer with the committed generation and
//! root, take the changes ([`super::changes`]), and at the end fsync, compare roots and commit
//! generation N; or abort, recording exactly what the target holds.
//!
//! The state record says "applying N" from before the first change until the commit, so a
//! crash leaves a visibly mid-cycle target. An aborted cycle saves a manifest that never
//! claims more than is durable: when the written blocks could be synced it is exact, else
//! those blocks are marked unknown (the next cycle ships them again), and the target is
//! "interrupted" (mid-cycle, manifest trustworthy): no re-hash of the whole target.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::blockdiff::manifest::{check_block_size, BlockHash, Manifest};
use crate::blockdiff::ranges::RangeSet;
use crate::progress::Progress;
use crate::state::{Condition, ReceiverState, ReceiverStore};
use crate::target::BlockTarget;
use crate::transport::frame::Message;
use crate::transport::{Endpoint, TransportError};

use super::error::{NamingError, ReceiveError, Violation};
use super::hashing::{hash_device, Hashing};
use super::scrub::scrub;
use super::{TargetOpener, MAX_BLOCKS, MAX_DEVICE_SIZE};

/// How often a wait on a long target operation looks at the stop flag.
const POLL: Duration = Duration::from_millis(50);

/// What a session is given besides its connection.
pub struct SessionParts {
    /// Opens (or creates) the target.
    pub opener: Box<dyn TargetOpener>,
    /// The target's state record and manifest.
    pub store: Box<dyn ReceiverStore>,
    /// Create a missing target.
    pub create: bool,
    /// How large a sender may make a file target.
    pub max_size: super::GrowthLimit,
    /// Hashing and verification threads.
    pub threads: usize,
    /// Progress of long stages (re-hashing the target).
    pub progress: Arc<dyn Progress>,
    /// Set on a requested stop.
    pub stop: Arc<AtomicBool>,
    /// Keep a snapshot of the target after each commit (`receive --keep`).
    pub history: Option<super::KeepHistory>,
    /// Told of every cycle's writes and commits (`receive --forward`).
    pub on_commit: Option<Arc<dyn super::CommitHook>>,
}

/// The per-target state a session keeps between cycles.
pub(crate) struct Session {
    pub(super) parts: SessionParts,
    pub(super) state: ReceiverState,
    pub(super) target: Option<Arc<dyn BlockTarget>>,
    pub(super) manifest: Option<Manifest>,
    pub(super) pool: Arc<rayon::ThreadPool>,
    /// The current cycle resized the target.
    pub(super) resized: bool,
    /// The size a file target is cut to at the commit (the source shrank).
    pub(super) pending_shrink: Option<u64>,
    /// Blocks the current cycle wrote or zeroed (or tried to).
    pub(super) written: RangeSet,
    /// Whether a sync has made `written` durable.
    pub(super) written_durable: bool,
}

/// Serves cycles on `endpoint` until the sender closes the connection.
pub fn run(endpoint: &Endpoint, parts: SessionParts) -> Result<(), ReceiveError> {
    let location = parts.store.location().to_owned();
    let state = match parts.store.load_state() {
        Ok(Some(state)) => state,
        Ok(None) => ReceiverState::new(parts.opener.name()),
        // A record that does not parse, or of a format this build does not know, says nothing
        // about the target: it is unknown, and the first cycle re-hashes it.
        Err(reason) if reason.kind() == std::io::ErrorKind::InvalidData => {
            tracing::warn!(state = %location.display(), %reason, "state record unreadable: the target is unknown and is re-hashed");
            ReceiverState::new(parts.opener.name())
        }
        Err(source) => {
            return Err(ReceiveError::State {
                path: location,
                source,
            })
        }
    };
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(parts.threads.max(1))
        .build()
        .map_err(ReceiveError::Threads)?;
    let mut session = Session {
        parts,
        state,
        target: None,
        manifest: None,
        pool: Arc::new(pool),
        resized: false,
        pending_shrink: None,
        written: RangeSet::new(),
        written_durable: false,
    };
    loop {
        let message = match endpoint.recv() {
            Err(TransportError::Closed) => return Ok(()),
            other => other?,
        };
        if let Message::Rehash = message {
            session.rehash()?;
            continue;
        }
        if let Message::Open { target } = message {
            let target_path = session.parts.opener.name().to_path_buf();
            return Err(NamingError::SingleTarget {
                name: target,
                target: target_path,
            }
            .into());
        }
        let Message::CycleStart {
            generation,
            device_size,
            block_size,
            base_root,
        } = message
        else {
            return Err(Violation::Unexpected {
                got: message.name(),
                during: "between cycles (expected CycleStart)",
            }
            .into());
        };
        let span = tracing::info_span!("cycle", generation);
        let _entered = span.enter();
        let proposal = Proposal {
            generation,
            base_root,
        };
        session.cycle(endpoint, proposal, device_size, block_size)?;
    }
}

/// What a sender's `CycleStart` says of its side: the generation it proposes (one past the
/// last it committed to this target) and the root of that committed generation.
pub(super) struct Proposal {
    pub generation: u64,
    pub base_root: Option<BlockHash>,
}

impl Session {
    fn cycle(
        &mut self,
        endpoint: &Endpoint,
        proposal: Proposal,
        device_size: u64,
        block_size: u32,
    ) -> Result<(), ReceiveError> {
        check_block_size(block_size as u64).map_err(Violation::BlockSize)?;
        check_geometry(device_size, block_size)?;
        let Some(next) = self.state.committed_generation.checked_add(1) else {
            return Err(ReceiveError::GenerationExhausted {
                target: self.parts.opener.name().to_owned(),
                generation: self.state.committed_generation,
            });
        };
        let generation = proposal.generation.max(next);
        let prior = self.state.condition;
        if let Some(hook) = &self.parts.on_commit {
            hook.cycle_starting().map_err(|e| self.state_error(e))?;
        }
        self.resized = false;
        self.pending_shrink = None;
        self.written = RangeSet::new();
        self.written_durable = false;
        self.state.last_cycle_bytes_written = 0;
        let result = self
            .prepare(device_size, block_size, &proposal, generation)
            .and_then(|condition| {
                let root = self.manifest.as_ref().expect("prepared").root();
                endpoint.send(Message::TargetState {
                    committed_generation: self.state.committed_generation,
                    root,
                    condition,
                })?;
                self.receive_changes(endpoint, generation)
            })
            .and_then(|root| self.commit(generation, root));
        match result {
            Ok(root) => {
                endpoint.send(Message::Committed { generation, root })?;
                if let Some(hook) = &self.parts.on_commit {
                    hook.committed(self.parts.opener.name(), generation, root);
                }
                Ok(())
            }
            Err(error) => {
                self.abort(&error, prior);
                Err(error)
            }
        }
    }

    /// Checks the root the sender expects, cuts a file target to a smaller source's size,
    /// makes the target durable, and commits.
    fn commit(&mut self, generation: u64, expected: BlockHash) -> Result<BlockHash, ReceiveError> {
        let root = self.manifest.as_ref().expect("prepared").root();
        if root != expected {
            return Err(ReceiveError::RootMismatch {
                generation,
                ours: hex::encode(root),
                theirs: hex::encode(expected),
            });
        }
        if let Some(len) = self.pending_shrink.take() {
            self.target.as_ref().expect("opened").set_len(len)?;
            self.resized = true;
        }
        self.sync_target()?;
        // Everything written is durable now: an abort from here on keeps an exact manifest.
        self.written_durable = true;
        if let Some(hook) = &self.parts.on_commit {
            let block_size = self.manifest.as_ref().expect("prepared").block_size;
            let told = hook.cycle_wrote(&self.written, block_size);
            told.map_err(|e| self.state_error(e))?;
        }
        let manifest = self.manifest.as_mut().expect("prepared");
        manifest.generation = generation;
        let saved = self.parts.store.save_manifest(manifest);
        saved.map_err(|source| self.state_error(source))?;
        self.state.condition = Condition::Consistent;
        self.state.committed_generation = generation;
        self.state.committed_root = hex::encode(root);
        self.state.applying_generation = None;
        self.state.committed_at = Some(crate::state::now());
        self.state.last_error = None;
        self.save_state()?;
        tracing::info!(
            event = "generation_committed",
            generation,
            root = %hex::encode(root),
            bytes_written = self.state.last_cycle_bytes_written,
            "generation committed"
        );
        let written = self.state.last_cycle_bytes_written;
        crate::metrics::receiver_committed(&self.state.target, generation, written);
        if let Some(history) = &self.parts.history {
            history.keep(self.parts.opener.name(), generation);
        }
        Ok(root)
    }

    /// After a failed cycle: record a manifest that never claims more than is durable, so the
    /// target is "interrupted" (mid-cycle, manifest trustworthy) rather than unknown. A cycle
    /// that changed nothing leaves a consistent target consistent.
    fn abort(&mut self, error: &ReceiveError, prior: Condition) {
        let touched = self.resized || !self.written.is_empty();
        crate::metrics::receiver_aborted(&self.state.target);
        tracing::error!(event = "cycle_aborted", target = %self.parts.opener.name().display(), %error, touched, "cycle aborted");
        if let Some(hook) = &self.parts.on_commit {
            let block_size = self.manifest.as_ref().map_or(0, |m| m.block_size);
            if let Err(e) = hook.cycle_wrote(&self.written, block_size) {
                tracing::warn!(error = %e, "cannot record the aborted cycle's writes for forwarding: the next forward compares everything");
            }
        }
        self.state.last_error = Some(error.to_string());
        if !touched && prior == Condition::Consistent {
            self.state.condition = Condition::Consistent;
            self.state.applying_generation = None;
            let _ = self.save_state();
            return;
        }
        if self.manifest.is_none() || self.target.is_none() {
            let _ = self.save_state();
            return;
        }
        // Written blocks are exact only once synced; a stop does not wait for a long sync.
        let synced = self.written.is_empty()
            || self.written_durable
            || (!self.stopped() && self.sync_target().is_ok());
        let manifest = self.manifest.as_mut().expect("checked");
        if !synced {
            manifest.mark_unknown(&self.written);
        }
        if self.parts.store.save_manifest(manifest).is_ok() {
            self.state.condition = Condition::Interrupted;
        }
        let _ = self.save_state();
    }

    /// Scrubs the target now (the sender asked, before its next cycle): blocks that differ
    /// from the manifest are marked, and the next cycle ships them.
    fn rehash(&mut self) -> Result<(), ReceiveError> {
        if self.target.is_none() {
            if !self.parts.opener.exists() {
                return Ok(());
            }
            self.target = Some(self.parts.opener.open(None)?);
        }
        let target = self.target.clone().expect("opened");
        let taken = (target.size(), target.fingerprint());
        let outcome = scrub(&mut *self.parts.store, taken, |block_size, size| {
            let hashing = Hashing {
                block_size,
                size,
                pool: &self.pool,
                stop: &self.parts.stop,
                progress: &*self.parts.progress,
                throttle: None,
            };
            hash_device(&*target, &hashing)
        })?;
        tracing::info!(?outcome, "target re-hashed at the sender's request");
        // The scrub may have marked blocks and changed the state: read both again.
        let reloaded = self.parts.store.load_state();
        if let Some(state) = reloaded.map_err(|source| self.state_error(source))? {
            self.state = state;
        }
        self.manifest = None;
        Ok(())
    }

    fn stopped(&self) -> bool {
        self.parts.stop.load(Ordering::Relaxed)
    }

    /// fsyncs the target on a thread of its own, so that a requested stop is acted on while a
    /// long sync runs (the abort then treats what this cycle wrote as in doubt).
    pub(super) fn sync_target(&self) -> Result<(), ReceiveError> {
        let target = self.target.clone().expect("opened");
        tracing::debug!("target sync started");
        let (done, result) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            crate::faults::delay("BLKMIRROR_FAULT_SYNC_DELAY_MS");
            let _ = done.send(target.sync());
        });
        loop {
            match result.recv_timeout(POLL) {
                Ok(synced) => return synced.map_err(Into::into),
                Err(_) if self.stopped() => return Err(ReceiveError::Stopped),
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                    panic!("target sync thread panicked")
                }
            }
        }
    }

    /// Saves the state record. When it says the manifest describes the target (consistent,
    /// interrupted, drifted), it also records the target's fingerprint as it is now.
    pub(super) fn save_state(&mut self) -> Result<(), ReceiveError> {
        self.state.updated_at = crate::state::now();
        if self.state.condition != Condition::Applying {
            if let Some(target) = &self.target {
                self.state.target_fingerprint = target.fingerprint();
            }
        }
        let saved = self.parts.store.save_state(&self.state);
        saved.map_err(|source| self.state_error(source))
    }

    pub(super) fn state_error(&self, source: std::io::Error) -> ReceiveError {
        ReceiveError::State {
            path: self.parts.store.location().to_owned(),
            source,
        }
    }
}

/// Bounds the announced geometry before a target or manifest is sized from it.
fn check_geometry(device_size: u64, block_size: u32) -> Result<(), ReceiveError> {
    let blocks = crate::blockdiff::manifest::block_count(device_size, block_size);
    if device_size > MAX_DEVICE_SIZE || blocks > MAX_BLOCKS {
        return Err(Violation::TooLarge {
            device_size,
            blocks,
            max_size: MAX_DEVICE_SIZE,
            max_blocks: MAX_BLOCKS,
        }
        .into());
    }
    Ok(())
}
