//! The receiving side of a session: handshake, per-target lock, the target's own manifest, and
//! for each cycle: answer with the committed generation and root, stream the manifest when
//! asked, then decompress (bounded), verify every block hash, write, and at the end fsync,
//! compare roots with the sender and commit generation N atomically before acknowledging.
//!
//! The state record says "applying N" from before the first write until the commit, so a
//! crash leaves a visibly mid-cycle target (its manifest is then rebuilt by hashing). A cycle
//! aborted cleanly (lost connection, bad stream) saves a manifest that describes the target
//! exactly and marks it "interrupted": the next cycle ships only what differs.

pub mod apply;
mod error;
pub mod listen;
mod session;

pub use error::ReceiveError;
use session::Session;

use std::path::{Path, PathBuf};

use crate::progress::Progress;
use crate::state::{ReceiverPaths, ReceiverState};
use crate::transport::frame::Message;
use crate::transport::{BoxStream, Connection, TransportError};

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
