//! The command line: clap definitions, validation into engine configs, and the commands.
//! Every failure ends as one line `blkmirror: error: ...` on stderr and an exit code:
//! 0 success, 1 runtime error, 2 usage error.

pub mod demo;
pub mod progress;

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};

use crate::blockdiff::manifest::check_block_size;
use crate::daemon::link::LinkConfig;
use crate::daemon::{DaemonConfig, Mode};
use crate::progress::{NoProgress, Progress};
use crate::receiver::{self, ReceiverConfig};
use crate::sender::{source_identity, CycleConfig, CycleReport};
use crate::snapshot::{self, SnapshotKind};
use crate::source::{BlockSource, ReadMode};
use crate::transport::dest::{parse_destination, Destination};
use crate::transport::ssh::SshOptions;
use crate::transport::tls;
use crate::units::{human_bytes, parse_duration, parse_size};

#[derive(Parser, Debug)]
#[command(
    name = "blkmirror",
    version,
    about = "Mirror block devices and image files by snapshots and verified deltas"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Mirror SOURCE to DEST, cycle after cycle, shipping only changed blocks.
    Send(SendArgs),
    /// Receive a mirror into TARGET (the only path this receiver ever writes).
    Receive(ReceiveArgs),
    /// Create a TLS identity (key + self-signed certificate) in DIR; prints its fingerprint.
    Keygen { dir: PathBuf },
    /// Compare SOURCE and TARGET byte by byte: exit 0 identical, 1 different, 2 error.
    Verify { source: PathBuf, target: PathBuf },
    /// Show the state of senders and receivers kept in a state directory.
    Status {
        #[arg(long)]
        state_dir: Option<PathBuf>,
        /// Print a JSON array.
        #[arg(long)]
        json: bool,
    },
    /// Build a sample volume, mirror it over TLS on loopback, change 1%, mirror again, verify.
    Demo {
        /// Keep the demo's files in DIR (default: a temporary directory, removed afterwards).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Size of the sample volume.
        #[arg(long, default_value = "256M")]
        size: String,
    },
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum ProgressMode {
    Auto,
    Always,
    Never,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum ReadModeArg {
    /// Direct reads ahead ("direct" names the same).
    #[value(alias = "direct")]
    Auto,
    Cached,
    Mmap,
}

#[derive(clap::Args, Debug)]
struct SendArgs {
    /// Block device or image file to mirror.
    source: PathBuf,
    /// Local path, tls://HOST:PORT, or ssh://[USER@]HOST[:PORT]/PATH.
    dest: String,
    /// Run one cycle and exit.
    #[arg(long, conflicts_with = "until_quiet")]
    once: bool,
    /// Loop until a cycle finds nothing changed, then exit 0.
    #[arg(long)]
    until_quiet: bool,
    /// Pause between cycles when looping.
    #[arg(long, default_value = "10s")]
    interval: String,
    /// Manifest block size: a power of two from 4K to 16M.
    #[arg(long, default_value = "64K")]
    block_size: String,
    /// Where the sender keeps its manifests (default /var/lib/blkmirror for root).
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// How to freeze the source for each cycle (see docs/snapshots.md). auto: an LVM LV gets
    /// lvm-thin or lvm, an image file reflink; anything else is refused and needs an explicit
    /// choice.
    #[arg(long, value_enum, default_value = "auto", overrides_with = "snapshot")]
    snapshot: SnapshotKind,
    /// COW space of a classic LVM snapshot (--snapshot lvm), e.g. 2G. Default: 20% of the
    /// origin LV, at least 64M, capped by the volume group's free space.
    #[arg(long)]
    snapshot_size: Option<String>,
    /// Shell command run just before each snapshot (e.g. "fsfreeze -f /srv").
    #[arg(long)]
    pre_snapshot: Option<String>,
    /// Shell command run just after each snapshot, even if the snapshot or the pre hook failed
    /// (e.g. "fsfreeze -u /srv").
    #[arg(long)]
    post_snapshot: Option<String>,
    /// zstd level 1-22; 0 sends raw. Level 1 is the measured default (docs/benchmarks.md).
    #[arg(long, default_value_t = 1)]
    compress_level: i32,
    /// Worker threads for hashing and compression (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Print one JSON object per committed cycle on stdout.
    #[arg(long)]
    json: bool,
    /// Progress bars on stderr.
    #[arg(long, value_enum, default_value = "auto")]
    progress: ProgressMode,
    /// Our TLS identity directory (from `keygen`), for tls:// destinations.
    #[arg(long)]
    identity: Option<PathBuf>,
    /// The receiver's certificate fingerprint, for tls:// destinations.
    #[arg(long)]
    peer: Option<String>,
    /// The ssh program and options, for ssh:// destinations.
    #[arg(long, default_value = "ssh")]
    ssh_command: String,
    /// blkmirror's path on the remote host, when it is not on the remote PATH.
    #[arg(long, default_value = "blkmirror")]
    remote_command: String,
    /// The remote receiver's --state-dir, for ssh:// destinations.
    #[arg(long)]
    remote_state_dir: Option<String>,
    /// How the scan reads the source: auto reads directly (O_DIRECT) where it can (see docs/benchmarks.md).
    #[arg(long, value_enum, default_value = "auto", hide = true)]
    read_mode: ReadModeArg,
}

#[derive(clap::Args, Debug)]
struct ReceiveArgs {
    /// File or block device to write.
    target: PathBuf,
    /// Listen for mutual-TLS senders on ADDR (e.g. 0.0.0.0:7300).
    #[arg(long, required_unless_present = "stdio", conflicts_with = "stdio")]
    listen: Option<String>,
    /// Speak the protocol on stdin/stdout (used through ssh).
    #[arg(long)]
    stdio: bool,
    /// Create a missing target as a sparse file of the source's size.
    #[arg(long)]
    create: bool,
    /// Where the receiver keeps the target's manifest and state.
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Our TLS identity directory (from `keygen`).
    #[arg(long)]
    identity: Option<PathBuf>,
    /// Fingerprint of a sender allowed to connect (repeatable).
    #[arg(long = "allow-peer")]
    allow_peer: Vec<String>,
    /// Worker threads for hashing the target.
    #[arg(long)]
    threads: Option<usize>,
}

/// A failure and its exit code.
pub enum CliError {
    Usage(String),
    Runtime(anyhow::Error),
}

impl From<anyhow::Error> for CliError {
    fn from(e: anyhow::Error) -> Self {
        CliError::Runtime(e)
    }
}

fn usage(message: impl Into<String>) -> CliError {
    CliError::Usage(message.into())
}

/// Entry point: parses arguments, runs, returns the exit code.
pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            // --help and --version: print as clap does, exit 0.
            let _ = e.print();
            return 0;
        }
        Err(e) => {
            eprintln!(
                "blkmirror: error: {} (see blkmirror --help)",
                clap_message(&e)
            );
            return 2;
        }
    };
    let result = run(cli);
    match result {
        Ok(code) => code,
        Err(CliError::Usage(message)) => {
            eprintln!("blkmirror: error: {message}");
            2
        }
        Err(CliError::Runtime(error)) => {
            eprintln!("blkmirror: error: {}", one_line(&error));
            1
        }
    }
}

/// The first line of a clap error, without its own "error: " prefix.
fn clap_message(error: &clap::Error) -> String {
    if error.kind() == clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
        return "missing command: one of send, receive, keygen, verify, status, demo".into();
    }
    let rendered = error.render().to_string();
    let line = rendered.lines().next().unwrap_or("invalid arguments");
    line.trim_start_matches("error: ").to_string()
}

/// The error and its causes on one line, without repeating a cause already in the message.
fn one_line(error: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in error.chain() {
        let part = cause.to_string();
        if text.contains(&part) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&part);
    }
    text.replace('\n', " ")
}

/// Runs a future on a fresh runtime, then shuts it down without waiting for blocking reads
/// (a stdin reader would otherwise hold the process until its peer closes the pipe).
fn block_on<F: std::future::Future>(future: F) -> Result<F::Output, CliError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let output = runtime.block_on(future);
    runtime.shutdown_background();
    Ok(output)
}

fn init_logging(multi: Option<indicatif::MultiProgress>) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("BLKMIRROR_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(progress::LogWriter { multi })
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}

/// Progress for a command: bars when asked or on a terminal, else nothing.
fn make_progress(mode: ProgressMode) -> Arc<dyn Progress> {
    let show = match mode {
        ProgressMode::Always => true,
        ProgressMode::Never => false,
        ProgressMode::Auto => std::io::stderr().is_terminal(),
    };
    if show {
        let bars = progress::Bars::new();
        init_logging(Some(bars.multi()));
        Arc::new(bars)
    } else {
        init_logging(None);
        Arc::new(NoProgress)
    }
}

fn threads(arg: Option<usize>) -> Result<usize, CliError> {
    match arg {
        Some(0) => Err(usage("--threads must be at least 1")),
        Some(n) => Ok(n),
        None => Ok(std::thread::available_parallelism().map_or(2, |n| n.get())),
    }
}

fn run(cli: Cli) -> Result<i32, CliError> {
    match cli.command {
        Command::Send(args) => send(args),
        Command::Receive(args) => receive(args),
        Command::Keygen { dir } => {
            let fingerprint = tls::keygen(&dir).context("keygen")?;
            println!("{fingerprint}");
            Ok(0)
        }
        Command::Verify { source, target } => verify(source, target),
        Command::Status { state_dir, json } => status(state_dir, json),
        Command::Demo { dir, size } => {
            let size = parse_size(&size).map_err(usage)?;
            let progress = make_progress(ProgressMode::Auto);
            block_on(crate::cli::demo::run(dir, size, progress))??;
            Ok(0)
        }
    }
}

fn send(args: SendArgs) -> Result<i32, CliError> {
    let block_size = parse_size(&args.block_size)
        .and_then(check_block_size)
        .map_err(|e| usage(format!("--block-size: {e}")))?;
    let interval = parse_duration(&args.interval).map_err(|e| usage(format!("--interval: {e}")))?;
    let snapshot_size = args
        .snapshot_size
        .as_deref()
        .map(parse_size)
        .transpose()
        .map_err(|e| usage(format!("--snapshot-size: {e}")))?;
    if !(0..=22).contains(&args.compress_level) {
        return Err(usage("--compress-level must be between 0 (off) and 22"));
    }
    let dest = match parse_destination(&args.dest).map_err(usage)? {
        // Key state by the absolute path, whatever the working directory.
        Destination::Local(path) => Destination::Local(receiver::absolute(&path)),
        other => other,
    };
    let threads = threads(args.threads)?;
    let tls = match (&dest, &args.identity, &args.peer) {
        (Destination::Tls { .. }, Some(dir), Some(peer)) => {
            let peer = tls::parse_fingerprint(peer).map_err(|e| usage(format!("--peer: {e}")))?;
            let identity = tls::load_identity(dir).context("--identity")?;
            Some((Arc::new(identity), peer))
        }
        (Destination::Tls { .. }, _, _) => {
            return Err(usage(
                "tls:// destinations need --identity DIR and --peer FINGERPRINT (there is no unauthenticated mode)",
            ))
        }
        _ => None,
    };
    let progress = make_progress(args.progress);
    // Fail fast on a bad source or a local target that cannot work.
    BlockSource::open(&args.source).map_err(|e| CliError::Runtime(e.into()))?;
    if let Destination::Local(path) = &dest {
        check_local_dest(&args.source, path)?;
    }
    let state_dir = args
        .state_dir
        .unwrap_or_else(crate::state::default_state_dir);
    let mode = if args.once {
        Mode::Once
    } else if args.until_quiet {
        Mode::UntilQuiet
    } else {
        Mode::Forever
    };
    let config = DaemonConfig {
        cycle: CycleConfig {
            source: args.source.clone(),
            dest: dest.to_string(),
            block_size,
            state_dir: state_dir.clone(),
            compress_level: args.compress_level,
            read_mode: match args.read_mode {
                ReadModeArg::Auto => ReadMode::Auto,
                ReadModeArg::Cached => ReadMode::Cached,
                ReadModeArg::Mmap => ReadMode::Mmap,
            },
        },
        link: LinkConfig {
            dest,
            state_dir,
            threads,
            tls,
            ssh: SshOptions {
                ssh_command: args.ssh_command,
                remote_command: args.remote_command,
                remote_state_dir: args.remote_state_dir,
            },
        },
        mode,
        interval,
        threads,
    };
    let snapshot_options = snapshot::SnapshotOptions {
        state_dir: config.cycle.state_dir.clone(),
        source_identity: source_identity(&args.source).map_err(|e| CliError::Runtime(e.into()))?,
        snapshot_size,
        pre_snapshot: args.pre_snapshot,
        post_snapshot: args.post_snapshot,
    };
    let provider = snapshot::provider(args.snapshot, &args.source, &snapshot_options)
        .map_err(|e| CliError::Runtime(e.into()))?;
    let engines = crate::daemon::Engines {
        provider: Arc::from(provider),
        tracker: Arc::new(crate::tracker::FullScan),
        progress,
    };
    let json = args.json;
    block_on(crate::daemon::run(config, engines, |report| {
        print_report(report, json)
    }))?
    .map_err(|e| CliError::Runtime(e.into()))?;
    Ok(0)
}

fn check_local_dest(source: &std::path::Path, dest: &std::path::Path) -> Result<(), CliError> {
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

/// One line per committed cycle on stdout: JSON, or a sentence.
pub fn print_report(report: &CycleReport, json: bool) {
    let mut out = std::io::stdout().lock();
    if json {
        let _ = writeln!(out, "{}", serde_json::to_string(report).unwrap_or_default());
    } else {
        let _ = writeln!(
            out,
            "generation {}: {} of {} blocks changed ({} zero), {} changed, {} sent (compression {:.2}x), {:.2} s",
            report.generation,
            report.blocks_changed,
            report.blocks_scanned,
            report.blocks_zero,
            human_bytes(report.bytes_changed),
            human_bytes(report.bytes_sent),
            report.compression_ratio,
            report.duration_ms.total as f64 / 1000.0
        );
    }
    let _ = out.flush();
}

fn receive(args: ReceiveArgs) -> Result<i32, CliError> {
    let config = ReceiverConfig {
        target: receiver::absolute(&args.target),
        create: args.create,
        state_dir: args
            .state_dir
            .unwrap_or_else(crate::state::default_state_dir),
        threads: threads(args.threads)?,
    };
    init_logging(None);
    receiver::check_config(&config).map_err(|e| CliError::Runtime(e.into()))?;
    if args.stdio {
        let stream = Box::new(tokio::io::join(tokio::io::stdin(), tokio::io::stdout()));
        block_on(async {
            let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let mut signals = crate::daemon::Signals::new();
            let flag = stop.clone();
            tokio::spawn(async move {
                signals.recv().await;
                flag.store(true, std::sync::atomic::Ordering::Relaxed);
            });
            let progress = Arc::new(NoProgress);
            receiver::serve(&config, stream, "stdio", progress, stop).await
        })?
        .map_err(|e| CliError::Runtime(e.into()))?;
        return Ok(0);
    }
    let addr = args.listen.expect("clap requires --listen or --stdio");
    let (Some(identity_dir), false) = (&args.identity, args.allow_peer.is_empty()) else {
        return Err(usage(
            "receive --listen needs --identity DIR and at least one --allow-peer FINGERPRINT (there is no unauthenticated mode)",
        ));
    };
    let allowed = args
        .allow_peer
        .iter()
        .map(|p| tls::parse_fingerprint(p).map_err(|e| usage(format!("--allow-peer: {e}"))))
        .collect::<Result<Vec<_>, _>>()?;
    let identity = tls::load_identity(identity_dir).context("--identity")?;
    block_on(async {
        let server = tls::TlsServer::bind(&addr, &identity, allowed).await?;
        println!("listening on {}", server.local_addr());
        let _ = std::io::stdout().flush();
        tracing::info!(addr = %server.local_addr(), target = %config.target.display(), "receiver ready");
        crate::receiver::listen::serve_tls(server, Arc::new(config), crate::daemon::shutdown_signal()).await
    })?
    .map_err(|e| CliError::Runtime(e.into()))?;
    Ok(0)
}

fn verify(source: PathBuf, target: PathBuf) -> Result<i32, CliError> {
    let progress = make_progress(ProgressMode::Auto);
    // `verify` promises exit 2 for errors (1 means "different").
    let report = crate::source::compare::verify(&source, &target, &*progress)
        .map_err(|e| CliError::Usage(e.to_string()))?;
    if report.identical() {
        println!("identical: {} bytes", report.source_size);
        return Ok(0);
    }
    if report.size_mismatch {
        println!(
            "different: source holds {} bytes, target {}",
            report.source_size, report.target_size
        );
    }
    if !report.differing.is_empty() {
        println!(
            "different: {} bytes in {} ranges",
            report.differing_bytes(),
            report.differing.len()
        );
        for range in report.differing.iter().take(100) {
            println!("  bytes {}..{}", range.start, range.end);
        }
        if report.differing.len() > 100 {
            println!("  ... and {} more ranges", report.differing.len() - 100);
        }
    }
    Ok(1)
}

fn status(state_dir: Option<PathBuf>, json: bool) -> Result<i32, CliError> {
    let dir = state_dir.unwrap_or_else(crate::state::default_state_dir);
    let entries =
        crate::state::list(&dir).with_context(|| format!("state dir {}", dir.display()))?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&entries).unwrap_or_default()
        );
        return Ok(0);
    }
    if entries.is_empty() {
        println!("no state in {}", dir.display());
    }
    for entry in &entries {
        println!("{}", describe(entry));
    }
    Ok(0)
}

fn describe(entry: &serde_json::Value) -> String {
    let time = |key: &str| {
        entry[key]
            .as_u64()
            .map(crate::state::format_time)
            .unwrap_or_else(|| "never".into())
    };
    if entry["role"] == "sender" {
        let last = &entry["last_cycle"];
        return format!(
            "sender   {} -> {}: generation {} committed {}; last cycle {} of {} blocks changed, {} sent",
            entry["source"].as_str().unwrap_or("?"),
            entry["dest"].as_str().unwrap_or("?"),
            entry["generation"],
            time("committed_at"),
            last["blocks_changed"],
            last["blocks_scanned"],
            human_bytes(last["bytes_sent"].as_u64().unwrap_or(0))
        );
    }
    let target = entry["target"].as_str().unwrap_or("?");
    let committed = &entry["committed_generation"];
    if entry["condition"] == "consistent" {
        format!(
            "receiver {target}: consistent at generation {committed} (committed {}; {} written by the last cycle)",
            time("committed_at"),
            human_bytes(entry["last_cycle_bytes_written"].as_u64().unwrap_or(0))
        )
    } else {
        format!(
            "receiver {target}: MID-CYCLE ({}, applying generation {}); last consistent generation {committed}{}",
            entry["detail"].as_str().unwrap_or("?"),
            entry["applying_generation"],
            entry["last_error"].as_str().map(|e| format!("; last error: {e}")).unwrap_or_default()
        )
    }
}
