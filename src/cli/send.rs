//! `blkmirror send SOURCE DEST`: checks what can be checked before the first cycle (the
//! destination, TLS credentials, the source, a local target), builds the daemon's config and
//! snapshot provider, and runs cycles, printing one line per committed cycle on stdout.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;

use super::args::{threads_or_default, ReadModeArg, SendArgs, TrackerArg};
use super::out::outln;
use super::{block_on, make_progress, usage, CliError};
use crate::daemon::fanout::FanoutConfig;
use crate::daemon::link::LinkConfig;
use crate::daemon::{Boundary, DaemonConfig, Mode};
use crate::receiver;
use crate::sender::audit::AuditPolicy;
use crate::sender::{source_identity, CycleConfig, CycleReport};
use crate::snapshot::{self, SnapshotProvider};
use crate::source::{BlockSource, ReadMode};
use crate::transport::dest::{parse_destination, Destination};
use crate::transport::ssh::SshOptions;
use crate::transport::tls::{self, Identity};

/// Our identity and the pinned peer fingerprint, for a tls:// destination.
type TlsPair = (Arc<Identity>, [u8; 32]);

/// Runs `send`.
pub fn run(args: SendArgs) -> Result<i32, CliError> {
    run_until(args, Arc::new(Boundary::default()))
}

/// Runs `send` until done, stopped, or `boundary` is requested (then it ends after the cycle
/// in progress): a job of `run --config`.
pub fn run_until(args: SendArgs, boundary: Arc<Boundary>) -> Result<i32, CliError> {
    let dests = destinations(&args.dests)?;
    let tls = tls_pairs(&dests, &args)?;
    let progress = make_progress(args.progress);
    let metrics = bind_metrics(args.metrics_listen)?;
    // Fail fast on a bad source or a local target that cannot work.
    BlockSource::open(&args.source).map_err(|e| CliError::Runtime(e.into()))?;
    for dest in &dests {
        if let Destination::Local(path) = dest {
            check_local_dest(&args.source, path)?;
        }
    }
    let provider: Arc<dyn crate::snapshot::SnapshotProvider> = Arc::from(snapshot_provider(&args)?);
    let tracker: Arc<dyn crate::tracker::ChangeTracker> = match args.tracker {
        TrackerArg::Auto => {
            crate::tracker::for_provider(&*provider, &args.source, &state_dir(&args))
        }
        TrackerArg::FullScan => Arc::new(crate::tracker::FullScan),
    };
    tracing::debug!(tracker = tracker.name(), "change tracker");
    let engines = crate::daemon::Engines {
        provider,
        tracker,
        progress,
    };
    let json = args.json;
    let dry = args.dry_run;
    let fan_out = dests.len() > 1;
    let mut faults = 0;
    let on_report = |report: &CycleReport| {
        faults += report.tracking_faults;
        match fan_out && !json {
            true => outln!("{}: {}", report.dest, report_line(report, json)),
            false => print_report(report, json),
        }
    };
    let mut config = daemon_config(args, dests, tls);
    config.boundary = boundary;
    if dry {
        let names: Vec<String> = config.links.iter().map(|l| l.dest.to_string()).collect();
        let run = crate::daemon::dry_run(config.cycle, names, config.threads, engines);
        for report in block_on(run)?.map_err(|e| CliError::Runtime(e.into()))? {
            match json {
                true => outln!("{}", serde_json::to_string(&report).unwrap_or_default()),
                false => outln!(
                    "{}: would send {} blocks ({} zero, {} of data before compression), compared with generation {}{}; {} read, nothing sent",
                    report.dest,
                    report.blocks_changed,
                    report.blocks_zero,
                    crate::units::human_bytes(report.bytes_changed),
                    report.base_generation,
                    report.full_scan_reason.as_deref().map(|r| format!(" (full read: {r})")).unwrap_or_default(),
                    crate::units::human_bytes(report.bytes_read)
                ),
            }
        }
        return Ok(0);
    }
    let ended = match config.links.len() {
        1 => block_on(async move {
            crate::metrics::serve_if(metrics);
            let link = config.links.remove(0);
            let daemon = DaemonConfig {
                cycle: config.cycle,
                link,
                mode: config.mode,
                interval: config.interval,
                threads: config.threads,
                boundary: config.boundary,
            };
            crate::daemon::run(daemon, engines, on_report).await
        }),
        _ => block_on(async move {
            crate::metrics::serve_if(metrics);
            crate::daemon::fanout::run(config, engines, on_report).await
        }),
    };
    ended?.map_err(|e| CliError::Runtime(e.into()))?;
    if faults > 0 {
        eprintln!(
            "blkmirror: the change tracker missed {faults} changed blocks (tracking faults, shipped by the audit: the target is consistent); exit 3"
        );
        return Ok(3);
    }
    Ok(0)
}

/// `--metrics-listen ADDR` bound (not yet served), so a taken address fails before any cycle.
pub(super) fn bind_metrics(
    addr: Option<std::net::SocketAddr>,
) -> Result<Option<crate::metrics::Listener>, CliError> {
    let bound = addr.map(crate::metrics::Listener::bind).transpose();
    bound.map_err(|e| CliError::Runtime(e.into()))
}

/// Every DEST parsed; refuses one given twice.
fn destinations(texts: &[String]) -> Result<Vec<Destination>, CliError> {
    let mut dests: Vec<Destination> = Vec::with_capacity(texts.len());
    for text in texts {
        let dest = destination(text)?;
        if dests.iter().any(|d| d.to_string() == dest.to_string()) {
            return Err(usage(format!("DEST {dest} is given twice")));
        }
        dests.push(dest);
    }
    Ok(dests)
}

/// DEST parsed; a local path made absolute, so state is keyed alike from any directory.
fn destination(text: &str) -> Result<Destination, CliError> {
    Ok(match parse_destination(text).map_err(usage)?.canonical() {
        Destination::Local(path) => Destination::Local(receiver::absolute(&path)),
        other => other,
    })
}

/// The TLS credentials each tls:// destination needs (there is no unauthenticated mode): our
/// identity, and the pinned fingerprint of its receiver (one `--peer` per tls:// DEST in
/// order, or one for all). `None` for other destinations.
fn tls_pairs(dests: &[Destination], args: &SendArgs) -> Result<Vec<Option<TlsPair>>, CliError> {
    let tls_count = dests
        .iter()
        .filter(|d| matches!(d, Destination::Tls { .. }))
        .count();
    if tls_count == 0 {
        return Ok(vec![None; dests.len()]);
    }
    let Some(dir) = &args.identity else {
        return Err(usage(
            "tls:// destinations need --identity DIR and --peer FINGERPRINT (there is no unauthenticated mode)",
        ));
    };
    if args.peer.is_empty() {
        return Err(usage(
            "tls:// destinations need --identity DIR and --peer FINGERPRINT (there is no unauthenticated mode)",
        ));
    }
    if args.peer.len() != 1 && args.peer.len() != tls_count {
        return Err(usage(format!(
            "--peer is given {} times for {tls_count} tls:// destinations: give one per tls:// DEST, in order, or one for all",
            args.peer.len()
        )));
    }
    let identity = Arc::new(tls::load_identity(dir).context("--identity")?);
    let mut peers = args.peer.iter().cycle();
    dests
        .iter()
        .map(|dest| match dest {
            Destination::Tls { .. } => {
                let peer = peers.next().expect("cycled");
                let peer =
                    tls::parse_fingerprint(peer).map_err(|e| usage(format!("--peer: {e}")))?;
                Ok(Some((identity.clone(), peer)))
            }
            _ => Ok(None),
        })
        .collect()
}

/// Refuses a local target that cannot be written, or that is the source itself.
fn check_local_dest(source: &Path, dest: &Path) -> Result<(), CliError> {
    crate::target::check_path(dest, true).map_err(|e| CliError::Runtime(e.into()))?;
    let same = match (std::fs::canonicalize(source), std::fs::canonicalize(dest)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    };
    if same {
        return Err(usage(format!(
            "DEST {} is the same as SOURCE; refusing to mirror a device onto itself",
            dest.display()
        )));
    }
    source_identity(source).map_err(|e| CliError::Runtime(e.into()))?;
    Ok(())
}

/// How the source is frozen for each cycle (`--snapshot` and its options).
fn snapshot_provider(args: &SendArgs) -> Result<Box<dyn SnapshotProvider>, CliError> {
    let options = snapshot::SnapshotOptions {
        state_dir: state_dir(args),
        source_identity: source_identity(&args.source).map_err(|e| CliError::Runtime(e.into()))?,
        snapshot_size: args.snapshot_size,
        pre_snapshot: args.pre_snapshot.clone(),
        post_snapshot: args.post_snapshot.clone(),
        hook_timeout: args.hook_timeout,
    };
    snapshot::provider(args.snapshot, &args.source, &options)
        .map_err(|e| CliError::Runtime(e.into()))
}

fn state_dir(args: &SendArgs) -> std::path::PathBuf {
    args.state_dir
        .clone()
        .unwrap_or_else(crate::state::default_state_dir)
}

/// The daemon's config from the (already validated) arguments.
fn daemon_config(
    args: SendArgs,
    dests: Vec<Destination>,
    tls: Vec<Option<TlsPair>>,
) -> FanoutConfig {
    let threads = threads_or_default(args.threads);
    let state_dir = state_dir(&args);
    let mode = if args.once {
        Mode::Once
    } else if args.until_quiet {
        Mode::UntilQuiet
    } else {
        Mode::Forever
    };
    let names: Vec<String> = dests.iter().map(ToString::to_string).collect();
    let ssh = SshOptions {
        ssh_command: args.ssh_command,
        remote_command: args.remote_command,
        remote_state_dir: args.remote_state_dir,
        create: args.create,
        remote_peer_timeout: (args.peer_timeout != super::args::DEFAULT_PEER_TIMEOUT)
            .then_some(args.peer_timeout),
    };
    let links = dests
        .into_iter()
        .zip(tls)
        .map(|(dest, tls)| LinkConfig {
            dest,
            state_dir: state_dir.clone(),
            threads,
            tls,
            ssh: ssh.clone(),
            peer_timeout: args.peer_timeout,
            bwlimit: args.bwlimit,
        })
        .collect();
    FanoutConfig {
        cycle: CycleConfig {
            source: std::path::absolute(&args.source).unwrap_or(args.source),
            dest: match names.len() {
                1 => names[0].clone(),
                _ => crate::daemon::fanout::group_key(&names),
            },
            block_size: args.block_size,
            state_dir: state_dir.clone(),
            compress_level: args.compress_level,
            read_mode: match args.read_mode {
                ReadModeArg::Auto => ReadMode::Auto,
                ReadModeArg::Cached => ReadMode::Cached,
                ReadModeArg::Mmap => ReadMode::Mmap,
            },
            audit: AuditPolicy {
                every: args.audit_every,
                always: args.audit,
            },
            rehash_target: args.rehash_target,
            read_limit: args.read_limit,
            post_commit: args.post_commit.clone().map(|command| {
                crate::snapshot::hooks::PostCommit {
                    command,
                    timeout: args.hook_timeout,
                }
            }),
        },
        links,
        mode,
        interval: args.interval,
        threads,
        boundary: Arc::new(Boundary::default()),
    }
}

/// One line per committed cycle on stdout: JSON, or a sentence. If stdout's reader goes
/// away, the reports stop and mirroring goes on.
pub fn print_report(report: &CycleReport, json: bool) {
    outln!("{}", report_line(report, json));
}

/// The line [`print_report`] prints.
pub fn report_line(report: &CycleReport, json: bool) -> String {
    if json {
        return serde_json::to_string(report).unwrap_or_default();
    }
    format!(
        "generation {}: {} of {} blocks changed ({} zero), {} changed, {} sent (compression {:.2}x), {:.2} s",
        report.generation,
        report.blocks_changed,
        report.blocks_scanned,
        report.blocks_zero,
        crate::units::human_bytes(report.bytes_changed),
        crate::units::human_bytes(report.bytes_sent),
        report.compression_ratio,
        report.duration_ms.total as f64 / 1000.0
    )
}
