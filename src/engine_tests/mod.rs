//! Tests of both engines together, in process: the sender's packer against the receiver's
//! applier over a [`crate::target::MemTarget`] ([`plan_apply`]), whole cycles through an
//! in-process connection with a crash-simulating target and state store ([`crash`]), and the
//! range-scan path of the change-tracker seam, for one destination and for a fan-out
//! ([`tracked`]). This module (like `daemon::link`) is allowed to know both sides.

mod crash;
mod plan_apply;
mod tracked;

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use crate::blockdiff::manifest::{block_count, block_len, hash_block, BlockHash, Manifest};
use crate::progress::NoProgress;
use crate::receiver::{self, ReceiveError, SessionParts, TargetOpener};
use crate::sender::{self, CycleConfig, CycleContext, CycleReport, SendError};
use crate::snapshot::NoSnapshot;
use crate::state::ReceiverStore;
use crate::target::{BlockTarget, TargetError};
use crate::tracker::ChangeTracker;
use crate::transport::{local, Connection, Endpoint, EndpointOptions};

/// The manifest of `bytes` cut into `block_size` blocks.
pub(crate) fn manifest_of(bytes: &[u8], block_size: u32) -> Manifest {
    let size = bytes.len() as u64;
    let hashes: Vec<BlockHash> = (0..block_count(size, block_size))
        .map(|i| {
            let start = (i * block_size as u64) as usize;
            hash_block(&bytes[start..start + block_len(size, block_size, i)])
        })
        .collect();
    Manifest::from_hashes(block_size, size, hashes)
}

/// A small deterministic generator (xorshift64*).
pub(crate) struct Rng(pub u64);

impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    /// Rewrites a few random spans of `bytes`: random data, zeros, or a 4 KiB patch.
    pub(crate) fn mutate(&mut self, bytes: &mut [u8]) {
        for _ in 0..1 + self.below(4) {
            let len = 1 + self.below(20_000) as usize;
            let at = self.below(bytes.len().saturating_sub(len) as u64 + 1) as usize;
            let end = (at + len).min(bytes.len());
            match self.below(3) {
                0 => bytes[at..end].fill(0),
                _ => bytes[at..end]
                    .iter_mut()
                    .for_each(|b| *b = self.next() as u8),
            }
        }
    }
}

/// Opens a target the test made (it always "exists").
pub(crate) struct GivenTarget(pub Arc<dyn BlockTarget>);

impl TargetOpener for GivenTarget {
    fn name(&self) -> &Path {
        self.0.name()
    }

    fn exists(&self) -> bool {
        true
    }

    fn open(&self, _create: Option<u64>) -> Result<Arc<dyn BlockTarget>, TargetError> {
        Ok(self.0.clone())
    }
}

/// A source file and a sender state dir, and a runtime to run cycles in.
pub(crate) struct Rig {
    runtime: tokio::runtime::Runtime,
    _dir: tempfile::TempDir,
    pub source: PathBuf,
    state: PathBuf,
    block_size: u32,
    /// When cycles are audits (default: daily).
    pub audit: std::cell::Cell<crate::sender::audit::AuditPolicy>,
}

impl Rig {
    pub(crate) fn new(block_size: u32) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        Rig {
            runtime: tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap(),
            source: dir.path().join("source.img"),
            state: dir.path().join("sender-state"),
            _dir: dir,
            block_size,
            audit: Default::default(),
        }
    }

    /// One `send --once` to a receiver session over `target` and `store`: the sender's
    /// outcome and the receiver's.
    pub(crate) fn cycle(
        &self,
        target: Arc<dyn BlockTarget>,
        store: Box<dyn ReceiverStore>,
        tracker: Arc<dyn ChangeTracker>,
    ) -> (Result<CycleReport, SendError>, Result<(), ReceiveError>) {
        let stop = Arc::new(AtomicBool::new(false));
        self.cycle_until(target, store, tracker, stop)
    }

    /// The same, with a stop flag the test may set (a signal, as both sides would see it).
    pub(crate) fn cycle_until(
        &self,
        target: Arc<dyn BlockTarget>,
        store: Box<dyn ReceiverStore>,
        tracker: Arc<dyn ChangeTracker>,
        stop: Arc<AtomicBool>,
    ) -> (Result<CycleReport, SendError>, Result<(), ReceiveError>) {
        let config = self.config("test-target".into());
        let ctx = self.context(tracker, stop.clone());
        let parts = session_parts(target, store, stop);
        self.runtime.block_on(async move {
            let (ours, theirs) = pair().await;
            let receiving = tokio::task::spawn_blocking(move || {
                // The receiver's endpoint goes with it: the sender then sees the end.
                receiver::run_session(&theirs, parts)
            });
            let sender = Arc::new(ours);
            let engine = sender.clone();
            let sent =
                tokio::task::spawn_blocking(move || sender::run_cycle(&engine, &config, &ctx))
                    .await
                    .unwrap();
            let _ = sender.close().await;
            drop(sender);
            (sent, receiving.await.unwrap())
        })
    }

    /// One fan-out cycle (`send SOURCE DEST1 DEST2 ...`, once) to a receiver session per
    /// (target, store): each destination's outcome, and each receiver's, in the order given.
    pub(crate) fn fanout_cycle(
        &self,
        dests: Vec<(Arc<dyn BlockTarget>, Box<dyn ReceiverStore>)>,
        tracker: Arc<dyn ChangeTracker>,
    ) -> Outcomes {
        let names: Vec<String> = (1..=dests.len())
            .map(|i| format!("test-target-{i}"))
            .collect();
        let config = self.config(crate::daemon::fanout::group_key(&names));
        let stop = Arc::new(AtomicBool::new(false));
        let ctx = self.context(tracker, stop.clone());
        self.runtime.block_on(async move {
            let mut fanout_dests = Vec::new();
            let mut receiving = Vec::new();
            for (name, (target, store)) in names.into_iter().zip(dests) {
                let (ours, theirs) = pair().await;
                let parts = session_parts(target, store, stop.clone());
                receiving.push(tokio::task::spawn_blocking(move || {
                    receiver::run_session(&theirs, parts)
                }));
                fanout_dests.push(sender::fanout::FanoutDest {
                    name,
                    endpoint: Arc::new(ours),
                });
            }
            let (cycle, fanout_dests) = tokio::task::spawn_blocking(move || {
                let cycle = sender::fanout::run_fanout_cycle(&fanout_dests, &config, &ctx);
                (cycle.expect("the fan-out cycle opened"), fanout_dests)
            })
            .await
            .unwrap();
            cycle.snapshot.expect("the snapshot kept or released");
            for dest in fanout_dests {
                let _ = dest.endpoint.close().await;
            }
            let mut received = Vec::new();
            for session in receiving {
                received.push(session.await.unwrap());
            }
            let sent = cycle.outcomes.into_iter().map(|o| o.result).collect();
            (sent, received)
        })
    }

    /// A cycle's configuration, to `dest`.
    fn config(&self, dest: String) -> CycleConfig {
        CycleConfig {
            source: self.source.clone(),
            dest,
            block_size: self.block_size,
            state_dir: self.state.clone(),
            compress_level: 1,
            read_mode: Default::default(),
            audit: self.audit.get(),
            rehash_target: false,
            read_limit: None,
            post_commit: None,
        }
    }

    /// What a cycle runs with: no snapshot, `tracker`, two threads.
    fn context(&self, tracker: Arc<dyn ChangeTracker>, stop: Arc<AtomicBool>) -> CycleContext {
        let provider: Arc<dyn crate::snapshot::SnapshotProvider> = Arc::new(NoSnapshot::default());
        let kept = self.state.join("kept");
        CycleContext {
            kept: Arc::new(std::sync::Mutex::new(crate::tracker::KeptViews::new(
                kept,
                provider.clone(),
            ))),
            provider,
            tracker,
            pool: Arc::new(
                rayon::ThreadPoolBuilder::new()
                    .num_threads(2)
                    .build()
                    .unwrap(),
            ),
            progress: Arc::new(NoProgress),
            stop,
        }
    }
}

/// A receiver session's parts: `target` (which exists), `store`, two threads.
fn session_parts(
    target: Arc<dyn BlockTarget>,
    store: Box<dyn ReceiverStore>,
    stop: Arc<AtomicBool>,
) -> SessionParts {
    SessionParts {
        opener: Box::new(GivenTarget(target)),
        store,
        create: false,
        max_size: crate::receiver::GrowthLimit::Unbounded,
        threads: 2,
        progress: Arc::new(NoProgress),
        stop,
        history: None,
        on_commit: None,
    }
}

/// A fan-out's outcomes: each destination's, and each receiver's.
type Outcomes = (
    Vec<Result<CycleReport, SendError>>,
    Vec<Result<(), ReceiveError>>,
);

/// Two handshaken endpoints connected in memory.
async fn pair() -> (Endpoint, Endpoint) {
    let (a, b) = local::pair();
    let (mut a, mut b) = (Connection::new(a), Connection::new(b));
    let (ha, hb) = tokio::join!(a.handshake(), b.handshake());
    ha.unwrap();
    hb.unwrap();
    let options = EndpointOptions::default;
    (Endpoint::start(a, options()), Endpoint::start(b, options()))
}
