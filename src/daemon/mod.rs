//! The loop around cycles: `--once`, `--until-quiet`, or forever every `--interval`. Keeps one
//! session open across cycles ([`link`]), runs each cycle on a thread of its own (it reads,
//! hashes, waits on snapshots and hooks: nothing an async worker may block on), reconnects
//! with backoff after transient failures, and stops on SIGINT/SIGTERM: a stop is acted on at
//! once in every phase (hooks are killed, scans and waits on the peer end within a fraction of
//! a second), the cycle in progress is recorded as interrupted on the receiver, the snapshot
//! is released, and the run ends successfully.

pub mod fanout;
pub mod link;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::signal::unix::{signal, Signal, SignalKind};

use crate::progress::Progress;
use crate::sender::{run_cycle, CycleConfig, CycleContext, CycleReport, SendError};
use crate::snapshot::SnapshotProvider;
use crate::state::SenderPaths;
use crate::tracker::{ChangeTracker, KeptViews};
use link::{Link, LinkConfig, LinkError};

/// When to stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// One cycle.
    Once,
    /// Until a cycle finds nothing changed.
    UntilQuiet,
    /// Until stopped.
    Forever,
}

/// Everything the loop needs.
pub struct DaemonConfig {
    /// What each cycle does.
    pub cycle: CycleConfig,
    /// How to reach the destination.
    pub link: LinkConfig,
    /// When to stop.
    pub mode: Mode,
    /// Pause between cycles when looping.
    pub interval: Duration,
    /// Hashing and compression threads.
    pub threads: usize,
    /// Ends the run at the next cycle boundary when requested (a reload of `run --config`).
    pub boundary: Arc<Boundary>,
}

/// A request to end a run at its next cycle boundary: after the cycle in progress (which
/// commits or fails as usual), instead of the next one. How `run --config` restarts a job
/// whose configuration changed without disturbing a cycle.
#[derive(Debug, Default)]
pub struct Boundary {
    requested: AtomicBool,
    notify: tokio::sync::Notify,
}

impl Boundary {
    /// Asks the run to end at its next cycle boundary.
    pub fn request(&self) {
        self.requested.store(true, Ordering::SeqCst);
        self.notify.notify_waiters();
    }

    /// Whether the end was asked for.
    pub fn requested(&self) -> bool {
        self.requested.load(Ordering::SeqCst)
    }

    /// Resolves once the end is asked for.
    pub async fn wait(&self) {
        loop {
            let notified = self.notify.notified();
            if self.requested() {
                return;
            }
            notified.await;
        }
    }
}

/// What the cycles run with.
pub struct Engines {
    /// Freezes the source.
    pub provider: Arc<dyn SnapshotProvider>,
    /// Says what changed since the last committed generation.
    pub tracker: Arc<dyn ChangeTracker>,
    /// Progress of long stages.
    pub progress: Arc<dyn Progress>,
}

/// How a run ended, when it ended well.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ended {
    /// The mode said stop (`--once`, `--until-quiet`).
    Done,
    /// A signal asked to stop.
    Stopped,
}

/// Why the loop stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The destination could not be reached or refused.
    #[error(transparent)]
    Link(#[from] LinkError),
    /// A cycle failed.
    #[error(transparent)]
    Send(#[from] SendError),
    /// Stale snapshots could not be cleaned up.
    #[error(transparent)]
    Snapshot(#[from] crate::snapshot::SnapshotError),
    /// Fan-out with `--once`: some destinations did not commit (each named, with why).
    #[error("{0}")]
    Destinations(String),
    /// The worker threads could not be started.
    #[error("cannot start worker threads: {0}")]
    Threads(#[source] rayon::ThreadPoolBuildError),
}

/// Longest pause between retries.
const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// How long a stop waits for the cycle in progress to wind down (release its snapshot,
/// let the receiver record the abort). Every phase notices a stop within a fraction of a
/// second; only an lvm2 command already running is let finish.
const WIND_DOWN: Duration = Duration::from_secs(10);

/// Runs cycles until the mode says stop or a signal comes; `on_report` sees every committed
/// cycle.
pub async fn run(
    mut config: DaemonConfig,
    engines: Engines,
    mut on_report: impl FnMut(&CycleReport),
) -> Result<Ended, DaemonError> {
    let mut signals = Signals::new();
    let Started {
        ctx,
        identity,
        _watchdog,
    } = start(&config.cycle, config.threads, engines).await?;
    let stop = ctx.stop.clone();
    let mut link: Option<Link> = None;
    let mut failures = 0u32;
    loop {
        let outcome = match one_cycle(&config, &ctx, &mut link, &mut signals).await {
            Some(outcome) => outcome,
            None => return Ok(stopped(link).await),
        };
        let wait = match outcome {
            Ok(report) => {
                failures = 0;
                // A re-hash is asked for once per run.
                config.cycle.rehash_target = false;
                log_committed(&report);
                on_report(&report);
                post_commit(&config.cycle, &report).await;
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
                let why = error.to_string();
                // Read before the failure is logged: a scrape after the line sees them.
                space_between_cycles(&ctx, &config.cycle.source).await;
                note_failure(
                    &config.cycle,
                    &identity,
                    &config.cycle.dest,
                    &why,
                    Some(wait),
                );
                wait
            }
            Err(error) => {
                let why = error.to_string();
                note_failure(&config.cycle, &identity, &config.cycle.dest, &why, None);
                return Err(error);
            }
        };
        note_next_cycle(&config.cycle, &identity, &config.cycle.dest, Some(wait));
        match pause(wait, &config.boundary, &mut signals, &stop).await {
            Pause::Elapsed => {}
            Pause::Boundary => break,
            Pause::Signal => return Ok(stopped(link).await),
        }
    }
    if let Some(link) = link {
        link.close().await?;
    }
    Ok(Ended::Done)
}

/// `send --dry-run`: one dry cycle for `dests` (see [`crate::sender::dry_run`]).
pub async fn dry_run(
    cycle: CycleConfig,
    dests: Vec<String>,
    threads: usize,
    engines: Engines,
) -> Result<Vec<crate::sender::dry_run::DryRunReport>, DaemonError> {
    let Started { ctx, .. } = start(&cycle, threads, engines).await?;
    let run = move || crate::sender::dry_run::dry_run(&dests, &cycle, &ctx);
    let reports = tokio::task::spawn_blocking(run).await;
    Ok(reports.expect("dry run panicked")?)
}

/// What a run starts with.
struct Started {
    ctx: CycleContext,
    /// The source's identity (keys the state).
    identity: String,
    _watchdog: Option<tokio::task::JoinHandle<()>>,
}

/// Before the first cycle of a run: the worker pool and the cycles' context (its kept
/// snapshot keyed by `cycle.dest`, a destination or a fan-out group), the clean-up of what a
/// crashed run left (stale snapshots, a tracker's holds), and `READY=1` for systemd with the
/// watchdog's pings.
async fn start(
    cycle: &CycleConfig,
    threads: usize,
    engines: Engines,
) -> Result<Started, DaemonError> {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .map_err(DaemonError::Threads)?;
    let identity = crate::sender::source_identity(&cycle.source).map_err(SendError::from)?;
    let paths = SenderPaths::new(&cycle.state_dir, &identity, &cycle.dest);
    let ctx = CycleContext {
        kept: Arc::new(Mutex::new(KeptViews::new(
            paths.kept.clone(),
            engines.provider.clone(),
        ))),
        provider: engines.provider,
        tracker: engines.tracker,
        pool: Arc::new(pool),
        progress: engines.progress,
        stop: Arc::new(AtomicBool::new(false)),
    };
    let (provider, tracker) = (ctx.provider.clone(), ctx.tracker.clone());
    let (source, spare) = (cycle.source.clone(), KeptViews::spared(&paths.kept));
    tokio::task::spawn_blocking(move || {
        tracker.recover();
        provider.cleanup_stale(&source, &spare)
    })
    .await
    .expect("stale clean-up panicked")?;
    // Under systemd (Type=notify): ready once the loop starts; the watchdog pinged from here.
    crate::notify::ready();
    Ok(Started {
        ctx,
        identity,
        _watchdog: crate::notify::spawn_watchdog(),
    })
}

/// Opens the link if needed and runs one cycle on a thread of its own. `None` when a signal
/// came: the stop flag is then set and the cycle has wound down (bounded).
async fn one_cycle(
    config: &DaemonConfig,
    ctx: &CycleContext,
    link: &mut Option<Link>,
    signals: &mut Signals,
) -> Option<Result<CycleReport, DaemonError>> {
    if link.is_none() {
        let opened = tokio::select! {
            opened = Link::open(&config.link, ctx.stop.clone()) => opened,
            _ = signals.recv() => {
                ctx.stop.store(true, Ordering::Relaxed);
                return None;
            }
        };
        match opened {
            Ok(opened) => *link = Some(opened),
            Err(e) => return Some(Err(e.into())),
        }
    }
    let open = link.as_mut().expect("opened");
    let (endpoint, cycle, cycle_ctx) = (open.endpoint.clone(), config.cycle.clone(), ctx.clone());
    let span = tracing::info_span!(
        "cycle",
        source = %config.cycle.source.display(),
        dest = %config.cycle.dest,
        generation = tracing::field::Empty
    );
    let cycle_thread = move || {
        let _entered = span.enter();
        run_cycle(&endpoint, &cycle, &cycle_ctx)
    };
    let result = on_cycle_thread(cycle_thread, signals, &ctx.stop).await?;
    Some(match result {
        Ok(report) => Ok(report),
        Err(e) if e.is_ours() => {
            // The receiver records the first cause, not "peer closed the connection".
            open.endpoint.refuse(&format!("the sender gave up: {e}"));
            if let Some(open) = link.take() {
                // Lets the receiver (in-process, or ssh's remote one) record it before we go.
                let _ = open.close().await;
            }
            Err(e.into())
        }
        Err(SendError::Transport(e)) => {
            let peer = open.peer_error().await;
            Err(peer.map_or(DaemonError::Send(SendError::Transport(e)), Into::into))
        }
        Err(e) => Err(e.into()),
    })
}

/// Reads the snapshot space figures again after a failed attempt (the kept snapshot and the
/// pool go on filling while nothing is sent: [`crate::sender::space::record_between_cycles`]),
/// off the async threads: it runs `lvs`.
async fn space_between_cycles(ctx: &CycleContext, source: &Path) {
    let (ctx, source) = (ctx.clone(), source.to_path_buf());
    let read = move || crate::sender::space::record_between_cycles(&ctx, &source);
    tokio::task::spawn_blocking(read)
        .await
        .expect("reading the space figures panicked");
}

/// Records in the destination's status when its next cycle is planned (`None`: not at all).
fn note_next_cycle(cycle: &CycleConfig, identity: &str, dest: &str, wait: Option<Duration>) {
    let paths = SenderPaths::new(&cycle.state_dir, identity, dest);
    let at = wait.map(|w| crate::state::now().saturating_add(w.as_secs()));
    if let Err(e) = crate::state::sender::record_next_cycle(&paths, at) {
        tracing::debug!(path = %paths.status.display(), error = %e, "cannot record the next cycle");
    }
}

/// Logs a failed cycle (event `cycle_failed`) and records it in the destination's status
/// (best effort: logged if it cannot be). `retry_in`: when the loop tries again.
fn note_failure(
    cycle: &CycleConfig,
    identity: &str,
    dest: &str,
    error: &str,
    retry_in: Option<Duration>,
) {
    match retry_in {
        Some(wait) => {
            tracing::warn!(event = "cycle_failed", dest, error, retry_in = ?wait, "cycle failed; will retry")
        }
        None => tracing::warn!(event = "cycle_failed", dest, error, "cycle failed"),
    }
    let paths = SenderPaths::new(&cycle.state_dir, identity, dest);
    let source = cycle.source.display().to_string();
    crate::metrics::cycle_failed(&source, dest);
    let failed = crate::state::sender::FailedCycle {
        source: &source,
        source_identity: identity,
        dest,
    };
    if let Err(e) = crate::state::sender::record_failure(&paths, &failed, error) {
        tracing::warn!(path = %paths.status.display(), error = %e, "cannot record the failure in the status");
    }
}

/// Runs the `--post-commit` hook of a committed cycle with its figures, on a blocking thread;
/// the next cycle waits for it (bounded by the hook's timeout).
async fn post_commit(cycle: &CycleConfig, report: &CycleReport) {
    let Some(hook) = cycle.post_commit.clone() else {
        return;
    };
    let env = vec![
        ("BLKMIRROR_SOURCE", report.source.clone()),
        ("BLKMIRROR_DEST", report.dest.clone()),
        ("BLKMIRROR_GENERATION", report.generation.to_string()),
        ("BLKMIRROR_ROOT", report.root.clone()),
        (
            "BLKMIRROR_BLOCKS_CHANGED",
            report.blocks_changed.to_string(),
        ),
        ("BLKMIRROR_BYTES_READ", report.bytes_read.to_string()),
        ("BLKMIRROR_BYTES_SENT", report.bytes_sent.to_string()),
        (
            "BLKMIRROR_DURATION_MS",
            report.duration_ms.total.to_string(),
        ),
    ];
    let run = move || crate::snapshot::hooks::run_post_commit(&hook, &env);
    let _ = tokio::task::spawn_blocking(run).await;
}

/// The log line of a committed cycle.
fn log_committed(report: &CycleReport) {
    crate::metrics::cycle_committed(&crate::metrics::Committed {
        source: &report.source,
        dest: &report.dest,
        generation: report.generation,
        duration_ms: report.duration_ms.total,
        bytes_read: report.bytes_read,
        bytes_sent: report.bytes_sent,
        blocks_changed: report.blocks_changed,
        tracking_faults: report.tracking_faults,
        full_scan: report.device_size > 0 && report.bytes_scanned >= report.device_size,
    });
    tracing::info!(
        event = "cycle_committed",
        dest = %report.dest,
        generation = report.generation,
        tracker = %report.tracker,
        ranges = report.ranges_scanned,
        bytes_read = report.bytes_read,
        full_scan_reason = report.full_scan_reason.as_deref().unwrap_or("-"),
        audit = report.audit,
        tracking_faults = report.tracking_faults,
        blocks_changed = report.blocks_changed,
        bytes_sent = report.bytes_sent,
        ms = report.duration_ms.total,
        "cycle committed"
    );
}

/// How a pause between cycles ended.
enum Pause {
    /// The wait is over: next cycle.
    Elapsed,
    /// The run's end was asked for at this boundary.
    Boundary,
    /// A signal: the stop flag is set.
    Signal,
}

/// Waits `wait` between cycles, or less when the end of the run is asked for at a boundary
/// (see [`Boundary`]) or a signal comes (the stop flag is then set).
async fn pause(
    wait: Duration,
    boundary: &Boundary,
    signals: &mut Signals,
    stop: &AtomicBool,
) -> Pause {
    if boundary.requested() {
        return Pause::Boundary;
    }
    tokio::select! {
        _ = tokio::time::sleep(wait) => Pause::Elapsed,
        _ = boundary.wait() => Pause::Boundary,
        _ = signals.recv() => {
            tracing::info!("signal received between cycles; stopping");
            stop.store(true, Ordering::Relaxed);
            Pause::Signal
        }
    }
}

/// Runs `cycle` on a thread of its own; `None` when a signal came first: the stop flag is
/// then set and the cycle given [`WIND_DOWN`] to end.
async fn on_cycle_thread<T: Send + 'static>(
    cycle: impl FnOnce() -> T + Send + 'static,
    signals: &mut Signals,
    stop: &AtomicBool,
) -> Option<T> {
    let mut running = tokio::task::spawn_blocking(cycle);
    tokio::select! {
        result = &mut running => Some(result.expect("cycle thread panicked")),
        _ = signals.recv() => {
            tracing::info!("signal received mid-cycle; stopping");
            stop.store(true, Ordering::Relaxed);
            if tokio::time::timeout(WIND_DOWN, running).await.is_err() {
                tracing::warn!("the cycle did not wind down within {WIND_DOWN:?}; leaving it");
            }
            None
        }
    }
}

/// After a stop: lets an in-process receiver record the abort, then reports the stop.
async fn stopped(link: Option<Link>) -> Ended {
    stopped_all(link).await
}

/// After a stop: lets every in-process receiver record the abort, then reports the stop.
async fn stopped_all(links: impl IntoIterator<Item = Link>) -> Ended {
    crate::notify::stopping();
    for link in links {
        link.abandon().await;
    }
    tracing::info!(event = "stopped", "stopped on request");
    Ended::Stopped
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

/// SIGINT and SIGTERM, listened to from the start of a run (none is missed between cycles).
pub struct Signals {
    term: Signal,
    int: Signal,
}

impl Signals {
    /// Starts listening (inside a tokio runtime).
    pub fn new() -> Self {
        Signals {
            term: signal(SignalKind::terminate()).expect("install SIGTERM handler"),
            int: signal(SignalKind::interrupt()).expect("install SIGINT handler"),
        }
    }

    /// Resolves on the next SIGINT or SIGTERM.
    pub async fn recv(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}

impl Default for Signals {
    fn default() -> Self {
        Signals::new()
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    Signals::new().recv().await
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
