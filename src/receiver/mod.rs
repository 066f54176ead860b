//! The receiving side: a session per connection ([`serve`]) takes the target's lock and runs
//! [`session::run`] on a thread of its own over an [`Endpoint`]: for each cycle, answer with
//! the committed generation and root, stream the manifest when asked, then decompress
//! (bounded), verify every block hash, write ([`apply`]), and at the end fsync, compare roots
//! with the sender and commit generation N atomically before acknowledging.
//!
//! The session works on a [`BlockTarget`] opened by a [`TargetOpener`] and keeps its state in
//! a [`crate::state::ReceiverStore`]: files on disk in production, a crash-simulating target
//! and store in the crash-consistency tests. [`listen`] serves TLS connections.

pub mod apply;
mod changes;
mod error;
pub mod hashing;
pub mod listen;
mod prefetch;
mod prepare;
pub mod scrub;
mod session;
pub mod targets;

pub use error::{NamingError, ReceiveError, Violation};
pub use session::{run as run_session, SessionParts};
pub use targets::NamedTargets;

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use crate::blockdiff::manifest::BlockHash;
use crate::blockdiff::ranges::RangeSet;
use crate::progress::Progress;
use crate::state::{DirStore, ReceiverPaths};
use crate::target::{BlockTarget, FileTarget, TargetError};
use crate::transport::frame::Message;
use crate::transport::{BoxStream, Connection, Endpoint, EndpointOptions, TransportError};

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
    /// Where the target's state (`targets/<key>/`) is kept.
    pub state_dir: PathBuf,
    /// Worker threads for hashing and verifying blocks (at least 1 is used).
    pub threads: usize,
    /// Scrub the target periodically while no sender is connected (`--scrub-every`).
    pub scrub: Option<ScrubSchedule>,
    /// How large a sender may make a file target (`--max-size`); see [`GrowthLimit`].
    pub max_size: GrowthLimit,
    /// Give up on a sender silent (not even a keep-alive) for this long (`--peer-timeout`),
    /// freeing the target; `None` for an in-process sender.
    pub peer_timeout: Option<std::time::Duration>,
    /// Keep snapshots of the target after each commit (`--keep`).
    pub history: Option<KeepHistory>,
    /// Told of every cycle's writes and commits (`--forward`: a chain's next hop).
    pub on_commit: Option<Arc<dyn CommitHook>>,
}

/// What a receiver tells of its target's writes: a chain's forwarder (`receive --forward`)
/// keeps, durably, the blocks written since its next hop last committed, and ships each
/// committed generation onward.
pub trait CommitHook: Send + Sync + std::fmt::Debug {
    /// Before a cycle may write the target. An error fails the cycle before any write.
    fn cycle_starting(&self) -> std::io::Result<()>;
    /// The blocks (indices of `block_size` blocks) a cycle wrote or tried to: before its
    /// commit is recorded, or when it aborts. An error fails a cycle that would commit.
    fn cycle_wrote(&self, written: &RangeSet, block_size: u32) -> std::io::Result<()>;
    /// After generation `generation` (of root `root`) was committed and the sender told.
    fn committed(&self, target: &Path, generation: u64, root: BlockHash);
}

/// History on the target (`receive --keep SPEC [--history-dir DIR]`): after each committed
/// generation, a snapshot of the target (a reflink clone of a file target in `dir`, a thin
/// snapshot of a thin-LV target in its volume group: [`crate::history::Store`]), then pruning
/// by `policy`. Only a committed, consistent target is ever snapshotted: this runs right after
/// the commit. A failure is logged and does not fail the cycle: the mirror goes on.
#[derive(Clone, Debug)]
pub struct KeepHistory {
    /// Where a file target's snapshots go (on its filesystem); unused for a thin LV.
    pub dir: PathBuf,
    /// What to keep.
    pub policy: crate::history::Policy,
}

impl KeepHistory {
    /// The default history dir of a file `target`: `.NAME.history` next to it (a reflink
    /// clone must stay on the target's filesystem).
    pub fn default_dir(target: &Path) -> PathBuf {
        crate::history::default_dir(target)
    }

    /// Snapshots `target` as `generation`, then prunes; logs what it did or why it could not.
    pub fn keep(&self, target: &Path, generation: u64) {
        let now = crate::state::now();
        let store = match crate::history::classify(target) {
            Ok(kind) => crate::history::Store::of(kind, self.dir.clone()),
            Err(e) => {
                tracing::warn!(generation, error = %e, "history: no snapshot of this generation");
                return;
            }
        };
        match store.take(target, generation, now) {
            Ok(entry) => {
                tracing::info!(generation, snapshot = %entry.path.display(), "history: snapshot kept")
            }
            Err(e) => {
                tracing::warn!(generation, error = %e, "history: no snapshot of this generation");
                return;
            }
        }
        match store.prune(&self.policy, now) {
            Ok(pruned) => {
                for entry in pruned {
                    tracing::info!(generation = entry.generation, snapshot = %entry.path.display(), "history: snapshot pruned");
                }
            }
            Err(e) => tracing::warn!(error = %e, "history: pruning failed"),
        }
    }
}

/// How large a sender may make a file target (a block device never changes size).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GrowthLimit {
    /// The target's current size (0 for a new file) plus the free space of its filesystem:
    /// the default of `receive`, so a CycleStart cannot announce more than could ever be
    /// written there.
    FreeSpace,
    /// At most this many bytes (`receive --max-size`).
    AtMost(u64),
    /// Only [`MAX_DEVICE_SIZE`]: an in-process receiver, whose sender is the same user.
    Unbounded,
}

/// When and how fast a listening receiver scrubs its target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScrubSchedule {
    /// Between the end of one scrub and the start of the next.
    pub every: std::time::Duration,
    /// At most this many bytes read per second.
    pub rate: Option<u64>,
}

/// Opens a session's target, or creates it.
pub trait TargetOpener: Send {
    /// The target's name (its path): the key of its state, and what messages call it.
    fn name(&self) -> &Path;
    /// Whether the target exists already.
    fn exists(&self) -> bool;
    /// Opens the target; when `create_size` is given and it is missing, creates it that large.
    fn open(&self, create_size: Option<u64>) -> Result<Arc<dyn BlockTarget>, TargetError>;
}

/// Opens a file or block device by path.
pub struct FileOpener {
    path: PathBuf,
}

impl FileOpener {
    /// The opener of `path`.
    pub fn new(path: PathBuf) -> Self {
        FileOpener { path }
    }
}

impl TargetOpener for FileOpener {
    fn name(&self) -> &Path {
        &self.path
    }

    fn exists(&self) -> bool {
        self.path.exists()
    }

    fn open(&self, create_size: Option<u64>) -> Result<Arc<dyn BlockTarget>, TargetError> {
        Ok(Arc::new(FileTarget::open(&self.path, create_size)?))
    }
}

/// Serves one connection: any number of cycles until the sender closes it (or `stop` is
/// set). The session runs on a thread of its own; this task only pumps the connection.
pub async fn serve(
    config: &ReceiverConfig,
    stream: BoxStream,
    peer: &str,
    progress: Arc<dyn Progress>,
    stop: Arc<AtomicBool>,
) -> Result<(), ReceiveError> {
    let mut conn = Connection::new(stream);
    conn.handshake_within(config.peer_timeout).await?;
    serve_connection(config, conn, peer, progress, stop).await
}

/// Serves one connection to a receiver of several targets: the sender's first message names
/// its target (`Open`), which `fingerprint` must be allowed to write; anything else is refused
/// before a target is locked, opened or written. Then as [`serve`].
pub async fn serve_named(
    targets: &NamedTargets,
    stream: BoxStream,
    peer: &str,
    fingerprint: [u8; 32],
    progress: Arc<dyn Progress>,
    stop: Arc<AtomicBool>,
) -> Result<(), ReceiveError> {
    let mut conn = Connection::new(stream);
    conn.handshake_within(targets.peer_timeout).await?;
    let named = match first_message(&mut conn, targets.peer_timeout).await? {
        Message::Open { target } => target,
        _ => {
            let allowed = targets.allowed_names(&fingerprint);
            return refuse_early(&mut conn, NamingError::Unnamed { allowed }).await;
        }
    };
    let Some(target) = targets.choose(&named, &fingerprint) else {
        let error = NamingError::NotAllowed {
            name: named,
            peer: format!("sha256:{}", hex::encode(fingerprint)),
        };
        return refuse_early(&mut conn, error).await;
    };
    tracing::info!(peer, target = %named, "sender opened its target");
    serve_connection(&target.config, conn, peer, progress, stop).await
}

/// The peer's first message other than a keep-alive, within `limit`.
async fn first_message(
    conn: &mut Connection,
    limit: Option<std::time::Duration>,
) -> Result<Message, ReceiveError> {
    let next = async {
        loop {
            match conn.recv().await? {
                Message::KeepAlive => continue,
                message => return Ok::<_, TransportError>(message),
            }
        }
    };
    match limit {
        None => Ok(next.await?),
        Some(limit) => match tokio::time::timeout(limit, next).await {
            Ok(message) => Ok(message?),
            Err(_) => Err(TransportError::PeerSilent {
                secs: limit.as_secs(),
                waiting: "waiting for it to name its target",
            }
            .into()),
        },
    }
}

/// Refuses a connection before its session starts.
async fn refuse_early(conn: &mut Connection, error: NamingError) -> Result<(), ReceiveError> {
    conn.refuse(&error.to_string()).await;
    Err(error.into())
}

/// Serves a handshaken connection for `config`'s target: takes its lock, runs the session.
async fn serve_connection(
    config: &ReceiverConfig,
    conn: Connection,
    peer: &str,
    progress: Arc<dyn Progress>,
    stop: Arc<AtomicBool>,
) -> Result<(), ReceiveError> {
    let paths = ReceiverPaths::new(&config.state_dir, &config.target);
    // The pumps start first: keep-alives flow while we wait for the lock.
    let endpoint = Arc::new(Endpoint::start(
        conn,
        EndpointOptions {
            idle: config.peer_timeout,
            stop: stop.clone(),
            limit: None,
        },
    ));
    let lock = wait_for_lock(&paths).await;
    let _lock = match lock {
        Ok(Some(lock)) => lock,
        Ok(None) => return refuse(&endpoint, ReceiveError::Busy(config.target.clone())).await,
        Err(source) => {
            let error = ReceiveError::State {
                path: paths.dir.clone(),
                source,
            };
            return refuse(&endpoint, error).await;
        }
    };
    let parts = SessionParts {
        opener: Box::new(FileOpener::new(config.target.clone())),
        store: Box::new(DirStore::new(paths)),
        create: config.create,
        threads: config.threads,
        max_size: config.max_size,
        progress,
        stop,
        history: config.history.clone(),
        on_commit: config.on_commit.clone(),
    };
    let span = tracing::info_span!("session", peer, target = %config.target.display());
    span.in_scope(|| tracing::info!("sender connected"));
    let engine = endpoint.clone();
    let result = tokio::task::spawn_blocking(move || {
        let _entered = span.enter();
        session::run(&engine, parts)
    })
    .await
    .expect("receiver session panicked");
    match result {
        Err(error) if error.is_ours() => refuse(&endpoint, error).await,
        other => {
            let _ = endpoint.close().await;
            other
        }
    }
}

/// Tells the sender why the session ends, and ends it.
async fn refuse(endpoint: &Endpoint, error: ReceiveError) -> Result<(), ReceiveError> {
    endpoint.refuse(&error.to_string());
    let _ = endpoint.close().await;
    Err(error)
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

/// Checks a receiver's configuration before serving (fail fast with one clear line).
pub fn check_config(config: &ReceiverConfig) -> Result<(), ReceiveError> {
    crate::target::check_path(&config.target, config.create)?;
    Ok(())
}

/// A path as given, made absolute (the key of the receiver's state).
pub fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_owned())
}
