//! Chains (`receive ... --forward DEST`): a receiver B ships each generation it commits on to
//! a next hop C, without rescanning its target.
//!
//! B knows which blocks it writes. The [`Forwarder`] keeps, durably, the blocks written to the
//! target since C last committed (the *dirty record*, `STATE/forward/<key>.dirty`, JSON):
//! every cycle of B marks the record open before it may write, adds what it wrote before its
//! commit is recorded (or when it aborts), and closes it. After each commit of B, a sender
//! cycle runs from B's target (frozen: B's session holds it, and takes the next generation
//! only after the forward) to C, with a change tracker that answers the dirty record. When C
//! has committed, the record restarts empty at the root C now holds. So C is sent the union of
//! everything written since its last commit, even after missed forwards (C down, B
//! restarted), never only the last generation's blocks.
//!
//! Any doubt means the forward compares everything (a full read of B's target, still sending
//! C only what differs): no record, a record left open (B crashed mid-cycle), a record of
//! another root than the one C holds, another block size. C's generation and lag are in B's
//! `status` (a sender entry from B's target to C).

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::blockdiff::manifest::BlockHash;
use crate::blockdiff::ranges::RangeSet;
use crate::daemon::link::{Link, LinkConfig};
use crate::progress::NoProgress;
use crate::receiver::CommitHook;
use crate::sender::{run_cycle, CycleConfig, CycleContext};
use crate::snapshot::{Consistency, FrozenView, SnapshotError, SnapshotProvider};
use crate::tracker::{ChangeTracker, Changes, KeptViews, Since};

/// The record of blocks written since the next hop's last commit.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirtyRecord {
    /// Always 1.
    pub format: u32,
    /// The root (hex) of the generation the next hop holds, which the ranges are relative to.
    pub base_root: String,
    /// Byte ranges `[start, end)` of the target written since then.
    pub written: Vec<(u64, u64)>,
    /// A cycle of ours may be writing (set before any write, cleared once its writes are in).
    pub open: bool,
}

/// Reads and writes the dirty record (durably: each save is fsynced before it returns).
#[derive(Clone, Debug)]
pub struct DirtyStore {
    path: PathBuf,
}

impl DirtyStore {
    /// The record at `path`.
    pub fn new(path: PathBuf) -> Self {
        DirtyStore { path }
    }

    /// The record, `None` when there is none or it cannot be read (then nothing is trusted).
    pub fn load(&self) -> Option<DirtyRecord> {
        match crate::state::read_json::<DirtyRecord>(&self.path) {
            Ok(Some(record)) if record.format == 1 => Some(record),
            Ok(_) => None,
            Err(e) => {
                tracing::warn!(path = %self.path.display(), error = %e, "forward: dirty record unreadable");
                None
            }
        }
    }

    fn save(&self, record: &DirtyRecord) -> std::io::Result<()> {
        crate::state::write_json(&self.path, record)
    }

    /// Drops the record: the next forward compares everything.
    fn forget(&self) -> std::io::Result<()> {
        match std::fs::remove_file(&self.path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Before a cycle may write: the record is marked open. One already open means a cycle
    /// ended without telling what it wrote (a crash): the record is dropped.
    pub fn open(&self) -> std::io::Result<()> {
        match self.load() {
            Some(record) if record.open => {
                tracing::warn!("forward: a cycle ended without recording its writes (a crash?): the next forward compares everything");
                self.forget()
            }
            Some(record) => self.save(&DirtyRecord {
                open: true,
                ..record
            }),
            None => Ok(()),
        }
    }

    /// A cycle's writes (block indices of `block_size` blocks) are added and the record closed.
    pub fn add(&self, written: &RangeSet, block_size: u32) -> std::io::Result<()> {
        let Some(mut record) = self.load() else {
            return Ok(());
        };
        let block = block_size as u64;
        let bytes = written
            .iter()
            .map(|r| r.start.saturating_mul(block)..r.end.saturating_mul(block));
        let all = RangeSet::from_ranges(record.written.iter().map(|&(a, b)| a..b).chain(bytes));
        record.written = all.iter().map(|r| (r.start, r.end)).collect();
        record.open = false;
        self.save(&record)
    }

    /// The next hop holds `root` now: nothing is dirty relative to it.
    pub fn restart(&self, root: &str) -> std::io::Result<()> {
        self.save(&DirtyRecord {
            format: 1,
            base_root: root.to_string(),
            written: Vec::new(),
            open: false,
        })
    }
}

/// The change tracker of a forward: the dirty record, when it is about the root the next hop
/// holds (our committed manifest for it); else everything, and why.
#[derive(Debug)]
pub struct DirtyTracker {
    store: DirtyStore,
}

impl ChangeTracker for DirtyTracker {
    fn name(&self) -> &'static str {
        "forward-dirty"
    }

    fn changed(&self, _: Option<&FrozenView>, _: &FrozenView, since: &Since) -> Changes {
        let Some(record) = self.store.load() else {
            return Changes::fallback(
                "no record of the blocks written since the next hop's last commit",
            );
        };
        if record.open {
            return Changes::fallback(
                "the record of written blocks is open (a cycle did not finish)",
            );
        }
        if record.base_root != hex::encode(since.root) {
            return Changes::fallback(
                "the record of written blocks is about another generation than the next hop holds",
            );
        }
        Changes::Ranges(record.written.iter().map(|&(a, b)| a..b).collect())
    }
}

/// The target as a forward's source: frozen by the receiver's session, which takes no new
/// generation until the forward ends.
#[derive(Debug)]
struct HeldTarget;

impl SnapshotProvider for HeldTarget {
    fn name(&self) -> &'static str {
        "held-target"
    }

    fn freeze(&self, source: &Path, _: &AtomicBool) -> Result<FrozenView, SnapshotError> {
        Ok(FrozenView::new(
            source.to_owned(),
            Consistency::CrashConsistent,
            None,
        ))
    }
}

/// Forwards each committed generation of one target to its next hop (see the module doc).
pub struct Forwarder {
    store: DirtyStore,
    link_config: LinkConfig,
    cycle: CycleConfig,
    ctx: CycleContext,
    link: Mutex<Option<Link>>,
}

impl std::fmt::Debug for Forwarder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forwarder")
            .field("dest", &self.cycle.dest)
            .finish()
    }
}

/// What a forward needs besides the next hop.
pub struct ForwardSettings {
    /// The target forwarded (the forward's source).
    pub target: PathBuf,
    /// The receiver's state dir (the dirty record and the forward's sender state go there).
    pub state_dir: PathBuf,
    /// Block size of the forward's manifest.
    pub block_size: u32,
    /// Hashing and compression threads.
    pub threads: usize,
    /// Set on a requested stop.
    pub stop: Arc<AtomicBool>,
}

impl Forwarder {
    /// A forwarder of `settings.target` to `link.dest`.
    pub fn new(
        link: LinkConfig,
        settings: ForwardSettings,
    ) -> Result<Forwarder, rayon::ThreadPoolBuildError> {
        let dest = link.dest.to_string();
        let key = crate::state::key(&format!("{}\n{dest}", settings.target.display()));
        let store = DirtyStore::new(
            settings
                .state_dir
                .join("forward")
                .join(format!("{key}.dirty")),
        );
        let provider: Arc<dyn SnapshotProvider> = Arc::new(HeldTarget);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(settings.threads.max(1))
            .build()?;
        let ctx = CycleContext {
            kept: Arc::new(Mutex::new(KeptViews::new(
                settings
                    .state_dir
                    .join("forward")
                    .join(format!("{key}.kept")),
                provider.clone(),
            ))),
            provider,
            tracker: Arc::new(DirtyTracker {
                store: store.clone(),
            }),
            pool: Arc::new(pool),
            progress: Arc::new(NoProgress),
            stop: settings.stop,
        };
        let cycle = CycleConfig {
            source: settings.target,
            dest,
            block_size: settings.block_size,
            state_dir: settings.state_dir,
            compress_level: 3,
            read_mode: crate::source::ReadMode::Auto,
            audit: crate::sender::audit::AuditPolicy::default(),
            rehash_target: false,
            read_limit: None,
            post_commit: None,
        };
        Ok(Forwarder {
            store,
            link_config: link,
            cycle,
            ctx,
            link: Mutex::new(None),
        })
    }

    /// One forward cycle (on the session's thread, inside the receiver's runtime).
    fn forward(&self, generation: u64) -> Result<(), String> {
        let span = tracing::info_span!(
            "forward",
            next_hop = %self.cycle.dest,
            generation = tracing::field::Empty
        );
        let _entered = span.enter();
        let runtime = tokio::runtime::Handle::current();
        let mut link = self.link.lock().expect("forward link lock");
        if link.is_none() {
            let opened = runtime.block_on(Link::open(&self.link_config, self.ctx.stop.clone()));
            *link = Some(opened.map_err(|e| e.to_string())?);
        }
        let endpoint = link.as_ref().expect("opened").endpoint.clone();
        match run_cycle(&endpoint, &self.cycle, &self.ctx) {
            Ok(report) => {
                self.store
                    .restart(&report.root)
                    .map_err(|e| format!("cannot restart the record of written blocks: {e}"))?;
                tracing::info!(
                    event = "forwarded",
                    generation,
                    next_hop = %self.cycle.dest,
                    next_hop_generation = report.generation,
                    blocks_changed = report.blocks_changed,
                    bytes_read = report.bytes_read,
                    bytes_sent = report.bytes_sent,
                    full_scan_reason = report.full_scan_reason.as_deref().unwrap_or("-"),
                    "forwarded"
                );
                Ok(())
            }
            Err(e) => {
                let open = link.take().expect("opened");
                if e.is_ours() {
                    open.endpoint.refuse(&format!("the sender gave up: {e}"));
                }
                drop(open);
                Err(e.to_string())
            }
        }
    }
}

impl CommitHook for Forwarder {
    fn cycle_starting(&self) -> std::io::Result<()> {
        self.store.open()
    }

    fn cycle_wrote(&self, written: &RangeSet, block_size: u32) -> std::io::Result<()> {
        self.store.add(written, block_size)
    }

    fn committed(&self, _target: &Path, generation: u64, _root: BlockHash) {
        if let Err(why) = self.forward(generation) {
            tracing::warn!(
                event = "forward_failed",
                generation,
                next_hop = %self.cycle.dest,
                error = %why,
                "forward failed; the next commit forwards everything written since the next hop's last commit"
            );
        }
    }
}
