//! `blkmirror run --config FILE`: every job and receiver of a configuration file
//! ([`super::config`]) in one process, each on a thread of its own running exactly what
//! `send` or `receive` with those options would. `check-config` only checks the file.
//!
//! - **SIGHUP** re-reads the file. A file with mistakes is refused as a whole (each mistake
//!   logged; nothing changes). Otherwise a job whose options changed, or that is gone, ends
//!   at its next cycle boundary (the cycle in progress commits or fails as usual) and its new
//!   version starts then; new jobs start; unchanged jobs are not touched. Receivers are
//!   compared too, but a changed receiver keeps running until the next start (its port and
//!   sessions are live): the reload says so.
//! - **SIGTERM/SIGINT** stop everything (each job ends its cycle as `send` does) and exit 0.
//! - A job that ends by itself (a permanent error) is logged (`job_ended`) and the others go
//!   on; when nothing is left running, `run` exits 1.
//!
//! Events: `job_started`, `job_ended`, `config_reloaded`, `reload_refused` (docs/operations.md).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::signal::unix::{signal, SignalKind};

use super::args::{CheckConfigArgs, RunArgs};
use super::config::{self, Config};
use super::out::outln;
use super::{block_on, init_logging, CliError};
use crate::daemon::Boundary;

/// How often finished threads are reaped.
const REAP_EVERY: Duration = Duration::from_millis(200);

/// Runs `check-config`: exit 0 and a summary, or exit 2 and one line per mistake.
pub fn check(args: CheckConfigArgs) -> Result<i32, CliError> {
    let path = config::path_or_default(args.config);
    let config = load(&path)?;
    outln!(
        "{}: {} job(s) ({}), {} receiver(s) ({}): OK",
        path.display(),
        config.jobs.len(),
        names(&config.jobs),
        config.receivers.len(),
        names(&config.receivers)
    );
    Ok(0)
}

fn names<T>(map: &BTreeMap<String, T>) -> String {
    map.keys().cloned().collect::<Vec<_>>().join(", ")
}

/// The file, or every mistake on stderr and a usage error (exit 2) with the last.
fn load(path: &Path) -> Result<Config, CliError> {
    config::load(path).map_err(|mut mistakes| {
        let last = mistakes.pop().unwrap_or_default();
        for mistake in mistakes {
            super::error_line(&mistake);
        }
        CliError::Usage(last)
    })
}

/// A job or receiver running on its thread.
struct Running {
    /// Its command line, to tell a changed one on reload.
    argv: Vec<String>,
    /// Asks a job to end at its next cycle boundary (receivers: unused).
    boundary: Arc<Boundary>,
    thread: JoinHandle<Result<i32, String>>,
    /// The version to start once this one has ended (a changed job).
    next: Option<config::Job>,
    /// Retiring: it was removed or changed; it ends at its next cycle boundary.
    retiring: bool,
}

/// Runs `run`.
pub fn run(args: RunArgs) -> Result<i32, CliError> {
    let path = config::path_or_default(args.config);
    let config = load(&path)?;
    init_logging(None);
    let metrics = super::send::bind_metrics(config.metrics_listen)?;
    block_on(async move {
        crate::metrics::serve_if(metrics);
        supervise(path, config).await
    })?
}

async fn supervise(path: PathBuf, config: Config) -> Result<i32, CliError> {
    let mut hangup = signal(SignalKind::hangup()).map_err(|e| CliError::Runtime(e.into()))?;
    let mut signals = crate::daemon::Signals::new();
    let mut jobs: BTreeMap<String, Running> = BTreeMap::new();
    let mut receivers: BTreeMap<String, Running> = BTreeMap::new();
    for (name, receiver) in config.receivers {
        receivers.insert(name.clone(), start_receiver(&name, receiver));
    }
    for (name, job) in config.jobs {
        jobs.insert(name.clone(), start_job(&name, job));
    }
    crate::notify::ready();
    let mut reap = tokio::time::interval(REAP_EVERY);
    loop {
        tokio::select! {
            _ = hangup.recv() => reload(&path, &mut jobs, &receivers),
            _ = signals.recv() => {
                tracing::info!(event = "stopping", "stop requested: every job ends its cycle");
                crate::notify::stopping();
                break;
            }
            _ = reap.tick() => {
                reap_finished(&mut jobs, "job");
                reap_finished(&mut receivers, "receiver");
                if jobs.is_empty() && receivers.is_empty() {
                    return Err(CliError::Runtime(anyhow::anyhow!(
                        "every job and receiver has ended (see the log): nothing left to run"
                    )));
                }
            }
        }
    }
    // Every job's and receiver's own loop saw the same signal and winds down.
    let all: Vec<Running> = jobs.into_values().chain(receivers.into_values()).collect();
    tokio::task::spawn_blocking(move || {
        for running in all {
            let _ = running.thread.join();
        }
    })
    .await
    .expect("join panicked");
    Ok(0)
}

fn start_job(name: &str, job: config::Job) -> Running {
    let boundary = Arc::new(Boundary::default());
    let (argv, args, control) = (job.argv, job.args, boundary.clone());
    let span = tracing::info_span!("job", job = %name);
    let thread = std::thread::spawn(move || {
        let _entered = span.enter();
        super::send::run_until(args, control).map_err(describe)
    });
    tracing::info!(event = "job_started", job = %name, "job started");
    Running {
        argv,
        boundary,
        thread,
        next: None,
        retiring: false,
    }
}

fn start_receiver(name: &str, receiver: config::ReceiverJob) -> Running {
    let (argv, args) = (receiver.argv, receiver.args);
    let span = tracing::info_span!("receiver", receiver = %name);
    let thread = std::thread::spawn(move || {
        let _entered = span.enter();
        super::receive::run(args).map_err(describe)
    });
    tracing::info!(event = "job_started", receiver = %name, "receiver started");
    Running {
        argv,
        boundary: Arc::new(Boundary::default()),
        thread,
        next: None,
        retiring: false,
    }
}

fn describe(error: CliError) -> String {
    match error {
        CliError::Usage(message) => message,
        CliError::Runtime(error) => super::one_line(&error),
    }
}

/// Removes the threads that ended, logging how; starts the next version of a changed job.
fn reap_finished(running: &mut BTreeMap<String, Running>, kind: &str) {
    let ended: Vec<String> = running
        .iter()
        .filter(|(_, r)| r.thread.is_finished())
        .map(|(name, _)| name.clone())
        .collect();
    for name in ended {
        let done = running.remove(&name).expect("listed");
        match done.thread.join() {
            Ok(Ok(code)) if done.retiring => {
                tracing::info!(event = "job_ended", %kind, job = %name, code, "ended at a cycle boundary for the new configuration")
            }
            Ok(Ok(code)) => tracing::info!(event = "job_ended", %kind, job = %name, code, "ended"),
            Ok(Err(error)) => {
                tracing::error!(event = "job_ended", %kind, job = %name, %error, "ended with an error; the others go on")
            }
            Err(_) => tracing::error!(event = "job_ended", %kind, job = %name, "panicked"),
        }
        if let Some(next) = done.next {
            running.insert(name.clone(), start_job(&name, next));
        }
    }
}

/// SIGHUP: re-reads the file and applies the difference (see the module doc).
fn reload(
    path: &Path,
    jobs: &mut BTreeMap<String, Running>,
    receivers: &BTreeMap<String, Running>,
) {
    let config = match config::load(path) {
        Ok(config) => config,
        Err(mistakes) => {
            for mistake in &mistakes {
                tracing::error!(event = "reload_refused", %mistake, "configuration not reloaded");
            }
            return;
        }
    };
    let mut changed = Vec::new();
    let mut added = Vec::new();
    let mut removed = Vec::new();
    let mut new_jobs = config.jobs;
    for (name, running) in jobs.iter_mut() {
        match new_jobs.remove(name) {
            Some(job) if job.argv == running.argv && !running.retiring => {}
            Some(job) => {
                changed.push(name.clone());
                running.next = Some(job);
                running.retiring = true;
                running.boundary.request();
            }
            None => {
                removed.push(name.clone());
                running.next = None;
                running.retiring = true;
                running.boundary.request();
            }
        }
    }
    for (name, job) in new_jobs {
        added.push(name.clone());
        jobs.insert(name.clone(), start_job(&name, job));
    }
    let receivers_changed: Vec<&String> = config
        .receivers
        .iter()
        .filter(|(name, r)| {
            receivers
                .get(*name)
                .is_none_or(|running| running.argv != r.argv)
        })
        .map(|(name, _)| name)
        .collect();
    if !receivers_changed.is_empty() {
        tracing::warn!(receivers = ?receivers_changed, "changed or new receivers take effect at the next start of `run`");
    }
    tracing::info!(
        event = "config_reloaded",
        changed = ?changed,
        added = ?added,
        removed = ?removed,
        "configuration reloaded: changed and removed jobs end at their next cycle boundary"
    );
}
