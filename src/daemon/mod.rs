//! The loop around cycles: `--once`, `--until-quiet`, or forever every `--interval`. Keeps one
//! session open across cycles, reconnects with backoff after transient failures, and stops on
//! SIGINT/SIGTERM (between cycles: exit 0; mid-cycle: the cycle is aborted and the target
//! keeps its last committed generation).

pub mod link;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::daemon::link::{Link, LinkConfig, LinkError};
use crate::progress::Progress;
use crate::sender::{run_cycle, CycleConfig, CycleReport, SendError};
use crate::snapshot::SnapshotProvider;

/// When to stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Once,
    UntilQuiet,
    Forever,
}

/// Everything the loop needs.
pub struct DaemonConfig {
    pub cycle: CycleConfig,
    pub link: LinkConfig,
    pub mode: Mode,
    pub interval: Duration,
    pub threads: usize,
}

/// Why the loop stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Link(#[from] LinkError),
    #[error(transparent)]
    Send(#[from] SendError),
    #[error(transparent)]
    Snapshot(#[from] crate::snapshot::SnapshotError),
    #[error("interrupted by a signal: the cycle in progress was aborted; the receiver keeps its last committed generation and marks the target mid-cycle until the next cycle completes")]
    Interrupted,
    #[error("cannot start worker threads: {0}")]
    Threads(String),
}

/// Longest pause between retries.
const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// Runs cycles until the mode says stop; `on_report` sees every committed cycle.
pub async fn run(
    config: DaemonConfig,
    provider: &dyn SnapshotProvider,
    progress: Arc<dyn Progress>,
    mut on_report: impl FnMut(&CycleReport),
) -> Result<(), DaemonError> {
    let pool = Arc::new(
        rayon::ThreadPoolBuilder::new()
            .num_threads(config.threads)
            .build()
            .map_err(|e| DaemonError::Threads(e.to_string()))?,
    );
    provider.cleanup_stale(&config.cycle.source)?;
    let mut link: Option<Link> = None;
    let mut failures = 0u32;
    loop {
        let cancel = Arc::new(AtomicBool::new(false));
        let attempt = async {
            if link.is_none() {
                link = Some(Link::open(&config.link).await?);
            }
            let open = link.as_mut().expect("opened");
            let cycle = run_cycle(
                &mut open.conn,
                &config.cycle,
                provider,
                pool.clone(),
                cancel.clone(),
                progress.clone(),
            )
            .await;
            match cycle {
                Ok(report) => Ok(report),
                Err(SendError::Transport(e)) => {
                    let peer = open.peer_error().await;
                    Err(peer.map_or(DaemonError::Send(SendError::Transport(e)), Into::into))
                }
                Err(e) => Err(e.into()),
            }
        };
        let outcome = tokio::select! {
            outcome = attempt => outcome,
            _ = shutdown_signal() => {
                cancel.store(true, Ordering::Relaxed);
                if let Some(link) = link.take() {
                    link.abandon().await;
                }
                return Err(DaemonError::Interrupted);
            }
        };
        let wait = match outcome {
            Ok(report) => {
                failures = 0;
                tracing::info!(
                    generation = report.generation,
                    blocks_changed = report.blocks_changed,
                    bytes_sent = report.bytes_sent,
                    ms = report.duration_ms.total,
                    "cycle committed"
                );
                on_report(&report);
                let quiet = report.blocks_changed == 0;
                match config.mode {
                    Mode::Once => break,
                    Mode::UntilQuiet if quiet => break,
                    Mode::UntilQuiet => Duration::ZERO,
                    Mode::Forever => config.interval,
                }
            }
            Err(error) if is_transient(&error) && config.mode != Mode::Once => {
                link = None;
                failures += 1;
                let wait = backoff(config.interval, failures);
                tracing::warn!(%error, retry_in = ?wait, "cycle failed; will retry");
                wait
            }
            Err(error) => return Err(error),
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown_signal() => {
                tracing::info!("signal received between cycles; stopping");
                break;
            }
        }
    }
    if let Some(link) = link {
        link.close().await?;
    }
    Ok(())
}

fn is_transient(error: &DaemonError) -> bool {
    match error {
        DaemonError::Link(e) => e.is_transient(),
        DaemonError::Send(e) => e.is_transient(),
        _ => false,
    }
}

/// Exponential backoff from one interval (at least a second) up to [`MAX_BACKOFF`].
fn backoff(interval: Duration, failures: u32) -> Duration {
    let base = interval.max(Duration::from_secs(1));
    base.saturating_mul(1 << failures.min(8)).min(MAX_BACKOFF)
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("install SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_caps() {
        let i = Duration::from_secs(10);
        assert_eq!(backoff(i, 1), Duration::from_secs(20));
        assert_eq!(backoff(i, 2), Duration::from_secs(40));
        assert_eq!(backoff(i, 20), MAX_BACKOFF);
        assert_eq!(backoff(Duration::ZERO, 1), Duration::from_secs(2));
    }
}
