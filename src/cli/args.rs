//! The command line's grammar: clap structs for every command, the value enums, and the value
//! parsers that bound every numeric option. A value out of bounds is a clap error, rendered by
//! [`super::main`] as one `blkmirror: error: invalid value '...' for '--OPTION <..>': ...` line
//! with exit 2; each parser's message names the allowed range.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

use crate::blockdiff::manifest::check_block_size;
use crate::snapshot::SnapshotKind;
use crate::units::{parse_duration, parse_size};

/// Most worker threads a command accepts (see `--threads`' help for why).
pub const MAX_THREADS: usize = 1024;
/// `--peer-timeout`'s default (the `default_value` of the options says "60s" too).
pub const DEFAULT_PEER_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest pause between cycles.
pub const MAX_INTERVAL: Duration = Duration::from_secs(7 * 24 * 3600);
/// Smallest classic LVM snapshot COW space (LVM rounds up to one extent anyway).
pub const MIN_SNAPSHOT_SIZE: u64 = 1 << 20;
/// Largest classic LVM snapshot COW space.
pub const MAX_SNAPSHOT_SIZE: u64 = 1 << 50;
/// Highest zstd level.
pub const MAX_COMPRESS_LEVEL: i32 = 22;

/// The whole command line.
#[derive(Parser, Debug)]
#[command(
    name = "blkmirror",
    version,
    about = "Mirror block devices and image files by snapshots and verified deltas"
)]
pub struct Cli {
    /// The command to run.
    #[command(subcommand)]
    pub command: Command,
    /// Where and how to log: auto (the journal, with structured fields, when stderr is
    /// connected to it as under systemd; else text), text, json (the event log on stderr: one
    /// object per line with ts, schema, level, event and the event's fields), or journal.
    #[arg(long, global = true, value_enum, default_value = "auto")]
    pub log_format: LogFormat,
    /// More log detail: -v debug, -vv trace.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Less log detail: -q warnings and errors only, -qq errors only.
    #[arg(short, long, global = true, action = clap::ArgAction::Count, conflicts_with = "verbose")]
    pub quiet: u8,
}

/// `--log-format`.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// The journal when stderr is connected to it (`$JOURNAL_STREAM`, as systemd sets it),
    /// else text.
    Auto,
    /// One human line per event.
    Text,
    /// One JSON object per line (see docs/operations.md).
    Json,
    /// Straight to journald, each event's fields as `BLKMIRROR_*` journal fields (text on
    /// stderr when journald cannot be reached).
    Journal,
}

/// The commands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Mirror SOURCE to DEST, cycle after cycle, shipping only changed blocks.
    Send(SendArgs),
    /// Receive a mirror into TARGET (the only path this receiver ever writes).
    Receive(ReceiveArgs),
    /// Create a TLS identity (key + self-signed certificate) in DIR; prints its fingerprint
    /// (with --show: prints the fingerprint of the identity already there).
    Keygen(KeygenArgs),
    /// Compare SOURCE and TARGET byte by byte: exit 0 identical, 1 different, 2 error.
    Verify(VerifyArgs),
    /// Show the state of senders and receivers kept in a state directory: exit 0, or 1 when a
    /// record is unreadable (it is listed as such, with the others).
    Status(StatusArgs),
    /// Build a sample volume, mirror it over TLS on loopback, change 1%, mirror again, verify.
    Demo(DemoArgs),
    /// Re-hash a receiver's TARGET and compare with its manifest: exit 0 clean, 1 drifted
    /// (the differing blocks are marked; the next cycle repairs them), 2 error or nothing to
    /// compare against. Writes nothing to the target.
    Scrub(ScrubArgs),
    /// The snapshots a receiver keeps of its TARGET, a file or a thin LV (`receive --keep`):
    /// list them, prune them by a retention grid, or restore one to a new file.
    #[command(subcommand)]
    History(HistoryCommand),
    /// Run every job (sender) and receiver of a configuration file; SIGHUP reloads it (see
    /// docs/operations.md).
    Run(RunArgs),
    /// Check a configuration file: exit 0, or 2 with one line FILE:LINE per mistake.
    CheckConfig(CheckConfigArgs),
    /// Write man pages (roff): the top page to stdout, or with --out DIR one page per command.
    Man(ManArgs),
    /// Print a shell completion script for SHELL to stdout.
    Completions(CompletionsArgs),
}

/// Options of `man`.
#[derive(clap::Args, Debug)]
pub struct ManArgs {
    /// Write blkmirror.1 and one page per command (blkmirror-send.1, ...) into DIR (created
    /// if missing; existing pages are replaced) instead of the top page to stdout.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
}

/// Options of `completions`.
#[derive(clap::Args, Debug)]
pub struct CompletionsArgs {
    /// The shell: bash, zsh, fish, elvish or powershell.
    #[arg(value_parser = shell_arg)]
    pub shell: clap_complete::Shell,
}

/// Options of `run`.
#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// The configuration file (TOML; default /etc/blkmirror/blkmirror.toml).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

/// Options of `check-config`.
#[derive(clap::Args, Debug)]
pub struct CheckConfigArgs {
    /// The configuration file (TOML; default /etc/blkmirror/blkmirror.toml).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

/// `history`.
#[derive(clap::Subcommand, Debug)]
pub enum HistoryCommand {
    /// One line per snapshot: generation, creation time (UTC), path.
    List(HistoryWhere),
    /// Deletes the snapshots the grid does not keep (as the receiver does after each commit).
    Prune {
        /// Which target's history.
        #[command(flatten)]
        place: HistoryWhere,
        /// The retention grid, as receive --keep.
        #[arg(long, value_name = "SPEC", value_parser = keep_arg)]
        keep: crate::history::Policy,
        /// Prune as if it were this time (Unix seconds), for tests and dry reasoning.
        #[arg(long, value_name = "UNIX_SECONDS", hide = true)]
        now: Option<u64>,
    },
    /// Copies the snapshot of GENERATION to DEST, a new file (never overwritten): a reflink
    /// clone on the same filesystem for a file target, a copy of the LV for a thin LV.
    Restore {
        /// Which target's history.
        #[command(flatten)]
        place: HistoryWhere,
        /// The generation to restore.
        generation: u64,
        /// The new file.
        dest: PathBuf,
    },
}

/// Which target's history.
#[derive(clap::Args, Debug)]
pub struct HistoryWhere {
    /// The receiver's target (a file, or a thin LV).
    pub target: PathBuf,
    /// The history dir of a file target, when not the default (.NAME.history next to it).
    #[arg(long, value_name = "DIR")]
    pub history_dir: Option<PathBuf>,
}

/// When to draw progress bars (`--progress`).
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgressMode {
    /// When stderr is a terminal.
    Auto,
    /// Even when stderr is not a terminal.
    Always,
    /// No bars.
    Never,
}

/// `--tracker`.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum TrackerArg {
    /// The snapshot provider's tracker, where it has one; else a full scan.
    Auto,
    /// Read and hash the whole source every cycle.
    FullScan,
}

/// `--read-mode`.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadModeArg {
    /// Direct reads ahead; a file's chunks already in the page cache are hashed in place
    /// ("direct" names the same).
    #[value(alias = "direct")]
    Auto,
    /// Reads through the page cache, ahead.
    Cached,
    /// A memory map (regular files only; block devices are read cached).
    Mmap,
}

/// Options of `send`.
#[derive(clap::Args, Debug)]
pub struct SendArgs {
    /// Block device or image file to mirror.
    pub source: PathBuf,
    /// Local path, tls://HOST:PORT[/NAME], or `ssh://[USER@]HOST[:PORT]/PATH` (`-` is
    /// refused: write ./- for a file of that name). Several: fan-out, one snapshot and one read
    /// of the source per cycle shipped to each, each against its own base; a destination that
    /// is down is retried while the others go on, then catches up with its own difference.
    #[arg(value_name = "DEST", value_parser = dest_arg, required = true, num_args = 1..)]
    pub dests: Vec<String>,
    /// Run one cycle and exit.
    #[arg(long, conflicts_with = "until_quiet")]
    pub once: bool,
    /// Loop until a cycle finds nothing changed, then exit 0.
    #[arg(long)]
    pub until_quiet: bool,
    /// Say what one cycle would send to each DEST (blocks, bytes before compression), compared
    /// with the sender's record of what DEST holds, without contacting it, sending or writing
    /// anything (the snapshot is taken and released; hooks run).
    #[arg(long, conflicts_with = "until_quiet")]
    pub dry_run: bool,
    /// Pause between cycles when looping, 0s to 7days; 0s starts the next cycle as soon as one
    /// commits (each still rereads the whole source). Retries after a failure wait at least 1s.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = interval_arg)]
    pub interval: Duration,
    /// Manifest block size: a power of two from 4K to 16M.
    #[arg(long, value_name = "SIZE", default_value = "64K", value_parser = block_size_arg)]
    pub block_size: u32,
    /// Where the sender keeps its manifests (default /var/lib/blkmirror for root).
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// How to freeze the source for each cycle (see docs/snapshots.md). auto: an LVM LV gets
    /// lvm-thin or lvm, an image file reflink; anything else is refused and needs an explicit
    /// choice.
    #[arg(long, value_enum, default_value = "auto", overrides_with = "snapshot")]
    pub snapshot: SnapshotKind,
    /// COW space of a classic LVM snapshot (--snapshot lvm), 1M to 1P, e.g. 2G. Default: 20% of
    /// the origin LV, at least 64M, capped by the volume group's free space.
    #[arg(long, value_name = "SIZE", value_parser = snapshot_size_arg)]
    pub snapshot_size: Option<u64>,
    /// How to find what changed since the last committed cycle. auto: from the snapshot
    /// provider (reflink: compare the extent maps of the previous and the current clone, which
    /// keeps the previous cycle's clone between cycles); full-scan: read and hash everything
    /// every cycle.
    #[arg(long, value_enum, default_value = "auto")]
    pub tracker: TrackerArg,
    /// How often a cycle hashes the whole source to check the change tracker: a duration
    /// (24h, 30m) or a number of cycles (100cycles). Blocks an audit finds changed that the
    /// tracker did not report are tracking faults: logged, counted, shipped.
    #[arg(long, value_name = "DURATION|Ncycles", default_value = "24h", value_parser = crate::sender::audit::parse_every)]
    pub audit_every: crate::sender::audit::AuditEvery,
    /// Make every cycle of this run a full-hash audit (with --once: exit 3 when the tracker
    /// missed something).
    #[arg(long)]
    pub audit: bool,
    /// Ask the receiver to re-hash its target against its manifest before the first cycle
    /// (a scrub): blocks changed on the target outside blkmirror are then shipped again.
    #[arg(long)]
    pub rehash_target: bool,
    /// Shell command run just before each snapshot (e.g. "fsfreeze -f /srv").
    #[arg(long)]
    pub pre_snapshot: Option<String>,
    /// Shell command run just after each snapshot, even if the snapshot or the pre hook failed
    /// (e.g. "fsfreeze -u /srv").
    #[arg(long)]
    pub post_snapshot: Option<String>,
    /// Shell command run after each committed cycle, per destination, with the cycle's figures
    /// in BLKMIRROR_DEST, BLKMIRROR_GENERATION, BLKMIRROR_ROOT, BLKMIRROR_BLOCKS_CHANGED,
    /// BLKMIRROR_BYTES_READ, BLKMIRROR_BYTES_SENT, BLKMIRROR_DURATION_MS (and BLKMIRROR_SOURCE);
    /// the next cycle waits for it. A failure is logged; the generation stays committed.
    #[arg(long, value_name = "COMMAND")]
    pub post_commit: Option<String>,
    /// Kill a hook (pre/post-snapshot, post-commit) still running after this long, 1s to 1d;
    /// a killed pre/post-snapshot hook fails the cycle.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = hook_timeout_arg)]
    pub hook_timeout: Duration,
    /// zstd level 1-22; 0 sends raw. Level 1 is the measured default (docs/benchmarks.md).
    #[arg(long, value_name = "LEVEL", default_value_t = 1, value_parser = compress_level_arg)]
    pub compress_level: i32,
    /// Worker threads for hashing and compression, 1 to 1024 (default: all cores, at most 1024).
    /// The work is CPU-bound, so more threads than cores only add overhead; 1024 covers the
    /// largest common servers and stops a typo from spawning threads until the host stalls.
    #[arg(long, value_name = "N", value_parser = threads_arg)]
    pub threads: Option<usize>,
    /// Give up on the peer after this long without a word from it (3s to 1d). Both ends send
    /// a keep-alive every second while busy, so only a stopped, frozen or cut-off peer goes
    /// this quiet; a looping sender then retries.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = peer_timeout_arg)]
    pub peer_timeout: Duration,
    /// At most RATE bytes per second on the wire to a remote destination (e.g. 10M; a token
    /// bucket with a burst of 1/20 s): the link stays usable for everything else.
    #[arg(long, value_name = "RATE", value_parser = wire_rate_arg)]
    pub bwlimit: Option<u64>,
    /// At most RATE bytes per second read from the source by a cycle's scan (e.g. 100M), so
    /// that a full scan or an audit leaves the disk to the production workload.
    #[arg(long, value_name = "RATE", value_parser = rate_arg)]
    pub read_limit: Option<u64>,
    /// Print one JSON object per committed cycle on stdout.
    #[arg(long)]
    pub json: bool,
    /// Progress bars on stderr.
    #[arg(long, value_enum, default_value = "auto")]
    pub progress: ProgressMode,
    /// Our TLS identity directory (from `keygen`), for tls:// destinations.
    #[arg(long)]
    pub identity: Option<PathBuf>,
    /// The receiver's certificate fingerprint, for tls:// destinations. Fan-out to several
    /// TLS receivers: one --peer per tls:// DEST, in the same order (or one for all).
    #[arg(long, value_name = "FINGERPRINT")]
    pub peer: Vec<String>,
    /// The ssh program and options, for ssh:// destinations.
    #[arg(long, default_value = "ssh")]
    pub ssh_command: String,
    /// blkmirror's path on the remote host, when it is not on the remote PATH.
    #[arg(long, default_value = "blkmirror")]
    pub remote_command: String,
    /// The remote receiver's --state-dir, for ssh:// destinations.
    #[arg(long)]
    pub remote_state_dir: Option<String>,
    /// For ssh:// destinations: let the remote receiver create a missing file target (sparse,
    /// of the source's size). Without it a missing remote target is an error. (A local
    /// destination is always created; a TLS receiver decides with its own --create.)
    #[arg(long)]
    pub create: bool,
    /// How the scan reads the source: auto reads directly (O_DIRECT) where it can (see docs/benchmarks.md).
    #[arg(long, value_enum, default_value = "auto", hide = true)]
    pub read_mode: ReadModeArg,
    /// Serve Prometheus metrics on http://ADDR/metrics (IP:PORT, e.g. 127.0.0.1:9477; port 0
    /// picks one, logged at start). See docs/metrics.md.
    #[arg(long, value_name = "ADDR", value_parser = metrics_listen_arg)]
    pub metrics_listen: Option<std::net::SocketAddr>,
}

/// Options of `receive`.
#[derive(clap::Args, Debug)]
pub struct ReceiveArgs {
    /// File or block device to write (or --targets FILE for several; or, with --allow-target,
    /// the one the sender asked for).
    #[arg(required_unless_present_any = ["targets", "allow_target"])]
    pub target: Option<PathBuf>,
    /// With --listen: serve every target of FILE (TOML, one `[NAME]` table per target with its
    /// path and allowed senders; see README), or of every *.toml file of a directory, on one
    /// port; a sender names its target with tls://HOST:PORT/NAME.
    #[arg(long, value_name = "FILE|DIR", requires = "listen", conflicts_with_all = ["target", "create", "max_size", "allow_peer"])]
    pub targets: Option<PathBuf>,
    /// Listen for mutual-TLS senders on ADDR (e.g. 0.0.0.0:7300).
    #[arg(long, required_unless_present = "stdio", conflicts_with = "stdio")]
    pub listen: Option<String>,
    /// Speak the protocol on stdin/stdout (used through ssh).
    #[arg(long)]
    pub stdio: bool,
    /// With --stdio: the only targets this receiver may write (repeatable), for a forced
    /// command in authorized_keys (command="blkmirror receive --stdio --allow-target PATH...").
    /// Without TARGET, the target is the one the sender asked for in $SSH_ORIGINAL_COMMAND,
    /// refused unless listed; the sender's --create is honoured only if this command has
    /// --create too, and its --state-dir is ignored.
    #[arg(long = "allow-target", value_name = "PATH", requires = "stdio")]
    pub allow_target: Vec<PathBuf>,
    /// Create a missing target as a sparse file of the source's size.
    #[arg(long)]
    pub create: bool,
    /// Where the receiver keeps the target's manifest and state.
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// Our TLS identity directory (from `keygen`).
    #[arg(long)]
    pub identity: Option<PathBuf>,
    /// Fingerprint of a sender allowed to connect (repeatable).
    #[arg(long = "allow-peer")]
    pub allow_peer: Vec<String>,
    /// Worker threads for hashing the target, 1 to 1024 (default: all cores; more threads than
    /// cores only add overhead).
    #[arg(long, value_name = "N", value_parser = threads_arg)]
    pub threads: Option<usize>,
    /// With --listen: re-hash the target against its manifest this often while no sender is
    /// connected (e.g. 24h); blocks changed outside blkmirror are marked for the next cycle
    /// and `status` says "drifted". A sender connecting interrupts the scrub.
    #[arg(long, value_name = "DURATION", value_parser = scrub_every_arg, requires = "listen")]
    pub scrub_every: Option<std::time::Duration>,
    /// At most RATE bytes per second read by scrubs (e.g. 100M); default: no limit.
    #[arg(long, value_name = "RATE", value_parser = rate_arg, requires = "scrub_every")]
    pub scrub_rate: Option<u64>,
    /// Largest size a sender may make a file TARGET (e.g. 2T). Default: its current size (0 if
    /// it is created) plus the free space of its filesystem. A block device is never resized.
    #[arg(long, value_name = "SIZE", value_parser = max_size_arg)]
    pub max_size: Option<u64>,
    /// Keep a snapshot of the target after each commit, pruned by a retention grid:
    /// WINDOW:INTERVAL,... e.g. "1h:10m,24h:hourly,7d:daily,4w:weekly" (within the last 1 h
    /// one per 10 minutes, within 24 h one per hour...). A file target needs xfs (reflink) or
    /// btrfs; an LV target must be a thin LV (thin snapshots in its VG).
    #[arg(long, value_name = "SPEC", value_parser = keep_arg)]
    pub keep: Option<crate::history::Policy>,
    /// Where --keep puts the snapshots of a file target (on its filesystem; default
    /// .NAME.history next to the target). Refused for a thin LV.
    #[arg(long, value_name = "DIR", requires = "keep")]
    pub history_dir: Option<PathBuf>,
    /// Give up on the peer after this long without a word from it (3s to 1d). Both ends send
    /// a keep-alive every second while busy, so only a stopped, frozen or cut-off peer goes
    /// this quiet; a looping sender then retries.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = peer_timeout_arg)]
    pub peer_timeout: Duration,
    /// A chain: after each commit, ship the committed generation on to DEST (a local path,
    /// tls://HOST:PORT[/NAME] with this receiver's --identity and --forward-peer, or
    /// ssh://...), sending the blocks written since DEST last committed, without rescanning.
    /// With --create, a missing next-hop file is created.
    #[arg(long, value_name = "DEST", value_parser = dest_arg, conflicts_with = "targets")]
    pub forward: Option<String>,
    /// The next hop's certificate fingerprint, for a tls:// --forward.
    #[arg(long, value_name = "FINGERPRINT", requires = "forward")]
    pub forward_peer: Option<String>,
    /// Shell command run after each committed generation, with BLKMIRROR_TARGET,
    /// BLKMIRROR_GENERATION and BLKMIRROR_ROOT; the next generation waits for it (up to
    /// --hook-timeout). A failure is logged; the generation stays committed.
    #[arg(long, value_name = "COMMAND")]
    pub post_commit: Option<String>,
    /// Kill a --post-commit hook still running after this long, 1s to 1d.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = hook_timeout_arg)]
    pub hook_timeout: Duration,
    /// With --listen: serve Prometheus metrics on http://ADDR/metrics (IP:PORT, e.g.
    /// 127.0.0.1:9478; port 0 picks one, logged at start). See docs/metrics.md.
    #[arg(long, value_name = "ADDR", value_parser = metrics_listen_arg, conflicts_with = "stdio")]
    pub metrics_listen: Option<std::net::SocketAddr>,
}

/// Options of `keygen`.
#[derive(clap::Args, Debug)]
pub struct KeygenArgs {
    /// Directory for key.pem and cert.pem (created with mode 0700 if missing; an existing key
    /// is never overwritten).
    pub dir: PathBuf,
    /// Print the fingerprint of the identity already in DIR; create nothing.
    #[arg(long)]
    pub show: bool,
}

/// Options of `verify`.
#[derive(clap::Args, Debug)]
pub struct VerifyArgs {
    /// Block device or image file mirrored.
    pub source: PathBuf,
    /// Its mirror (a block device may be larger than the source).
    pub target: PathBuf,
}

/// `scrub`.
#[derive(clap::Args, Debug)]
pub struct ScrubArgs {
    /// The receiver's target (file or block device).
    pub target: PathBuf,
    /// The receiver's state directory (default /var/lib/blkmirror for root).
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// Read at most RATE bytes per second (e.g. 100M), to spare the disk; default: no limit.
    #[arg(long, value_name = "RATE", value_parser = rate_arg)]
    pub rate: Option<u64>,
    /// Hashing threads, 1 to 1024 (default: all cores).
    #[arg(long, value_name = "N", value_parser = threads_arg)]
    pub threads: Option<usize>,
}

/// Options of `status`.
#[derive(clap::Args, Debug)]
pub struct StatusArgs {
    /// The state directory to read (default /var/lib/blkmirror for root).
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// Print a JSON array.
    #[arg(long)]
    pub json: bool,
    /// Delete the records of ENTRY instead (a receiver's target path or a sender's
    /// destination, as `status` shows them): exit 0 when something was forgotten, 1 when
    /// nothing is named so. A receiver in use is refused.
    #[arg(long, value_name = "ENTRY", conflicts_with = "json")]
    pub forget: Option<String>,
}

/// Options of `demo`.
#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// Keep the demo's files in DIR (default: a temporary directory, removed afterwards).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Size of the sample volume, 8M to 64G (it is written twice over, to a file in DIR).
    #[arg(long, value_name = "SIZE", default_value = "256M", value_parser = demo_size_arg)]
    pub size: u64,
}

/// Worker threads: the default when not given, all cores (at most [`MAX_THREADS`]).
pub fn threads_or_default(arg: Option<usize>) -> usize {
    arg.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map_or(2, |n| n.get())
            .min(MAX_THREADS)
    })
}

fn threads_arg(text: &str) -> Result<usize, String> {
    let n: usize = text
        .trim()
        .parse()
        .map_err(|_| format!("not a whole number; must be between 1 and {MAX_THREADS}"))?;
    if !(1..=MAX_THREADS).contains(&n) {
        return Err(format!("must be between 1 and {MAX_THREADS}"));
    }
    Ok(n)
}

fn compress_level_arg(text: &str) -> Result<i32, String> {
    let range = format!("must be between 0 (off) and {MAX_COMPRESS_LEVEL}");
    match text.trim().parse::<i32>() {
        Ok(level) if (0..=MAX_COMPRESS_LEVEL).contains(&level) => Ok(level),
        Ok(_) => Err(range),
        Err(_) => Err(format!("not a whole number; {range}")),
    }
}

fn block_size_arg(text: &str) -> Result<u32, String> {
    parse_size(text).and_then(check_block_size)
}

fn interval_arg(text: &str) -> Result<Duration, String> {
    let interval = parse_duration(text)?;
    if interval > MAX_INTERVAL {
        return Err("must be between 0s and 7days".into());
    }
    Ok(interval)
}

fn snapshot_size_arg(text: &str) -> Result<u64, String> {
    size_between(text, MIN_SNAPSHOT_SIZE, MAX_SNAPSHOT_SIZE, "1M and 1P")
}

fn keep_arg(text: &str) -> Result<crate::history::Policy, String> {
    text.parse()
        .map_err(|e: crate::history::PolicyError| e.to_string())
}

/// A peer timeout: 3 seconds (a few keep-alives) to a day.
fn hook_timeout_arg(text: &str) -> Result<Duration, String> {
    let limit = parse_duration(text)?;
    if !(1..=86400).contains(&limit.as_secs()) {
        return Err("must be between 1s and 1d".into());
    }
    Ok(limit)
}

fn peer_timeout_arg(text: &str) -> Result<Duration, String> {
    let limit = parse_duration(text)?;
    if !(3..=86400).contains(&limit.as_secs()) {
        return Err("must be between 3s and 1d".into());
    }
    Ok(limit)
}

/// A scrub interval: 1 second to 1 year.
fn scrub_every_arg(text: &str) -> Result<std::time::Duration, String> {
    let every = parse_duration(text)?;
    if !(1..=366 * 86400).contains(&every.as_secs()) {
        return Err("must be between 1s and 366d".into());
    }
    Ok(every)
}

/// A wire rate in bytes per second: 64K (a slow WAN link) to 1T.
fn wire_rate_arg(text: &str) -> Result<u64, String> {
    size_between(text, 64 << 10, 1 << 40, "64K and 1T (bytes per second)")
}

/// A rate in bytes per second: 1M to 1T.
pub fn rate_arg(text: &str) -> Result<u64, String> {
    size_between(text, 1 << 20, 1 << 40, "1M and 1T (bytes per second)")
}

fn demo_size_arg(text: &str) -> Result<u64, String> {
    use crate::cli::demo::{MAX_SIZE, MIN_SIZE};
    size_between(text, MIN_SIZE, MAX_SIZE, "8M and 64G")
}

/// `--max-size`: 4 KiB to 1 PiB (the largest device a receiver accepts).
fn max_size_arg(text: &str) -> Result<u64, String> {
    size_between(text, 4096, crate::receiver::MAX_DEVICE_SIZE, "4K and 1P")
}

/// A size within `min..=max`; `range` spells the bounds for the message.
fn size_between(text: &str, min: u64, max: u64, range: &str) -> Result<u64, String> {
    let size = parse_size(text)?;
    if !(min..=max).contains(&size) {
        return Err(format!("must be between {range}"));
    }
    Ok(size)
}

/// A shell `completions` knows, named in the message when it is not one.
fn shell_arg(text: &str) -> Result<clap_complete::Shell, String> {
    <clap_complete::Shell as ValueEnum>::from_str(text, true).map_err(|_| {
        "not a shell blkmirror completes; one of bash, zsh, fish, elvish, powershell".into()
    })
}

/// `--metrics-listen`: an IP:PORT (no host names: the address is bound as given).
fn metrics_listen_arg(text: &str) -> Result<std::net::SocketAddr, String> {
    text.parse().map_err(|_| {
        "expected IP:PORT, e.g. 127.0.0.1:9477 or [::1]:9477 (port 0 picks one)".into()
    })
}

/// DEST as given; `-` is refused rather than taken as a local file of that name.
fn dest_arg(text: &str) -> Result<String, String> {
    if text == "-" {
        return Err(
            "`-` is not a destination (blkmirror does not mirror to stdout); for a local file named -, write ./-"
                .into(),
        );
    }
    Ok(text.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses `blkmirror ARGS...`; on error, the first line as `main` shows it.
    fn parse(args: &[&str]) -> Result<Cli, String> {
        Cli::try_parse_from(std::iter::once("blkmirror").chain(args.iter().copied()))
            .map_err(|e| super::super::clap_message(&e))
    }

    fn send(extra: &[&str]) -> Result<SendArgs, String> {
        let mut args = vec!["send", "src.img", "dst.img"];
        args.extend_from_slice(extra);
        match parse(&args)?.command {
            Command::Send(send) => Ok(send),
            other => panic!("not send: {other:?}"),
        }
    }

    /// The option is refused with one line that names it and its range.
    #[track_caller]
    fn refused(result: Result<impl std::fmt::Debug, String>, option: &str, range: &str) {
        let message = result.expect_err("accepted an out-of-bounds value");
        assert!(!message.contains('\n'), "{message:?}");
        assert!(
            message.contains(option),
            "{message:?} does not name {option}"
        );
        assert!(message.contains(range), "{message:?} does not name {range}");
    }

    #[test]
    fn defaults_are_within_bounds() {
        let args = send(&[]).unwrap();
        assert_eq!(args.interval, Duration::from_secs(10));
        assert_eq!(args.block_size, 64 << 10);
        assert_eq!(args.compress_level, 1);
        assert_eq!(args.threads, None);
        assert_eq!(args.snapshot_size, None);
        let n = threads_or_default(None);
        assert!((1..=MAX_THREADS).contains(&n));
        match parse(&["demo"]).unwrap().command {
            Command::Demo(demo) => assert_eq!(demo.size, 256 << 20),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn threads_bounds() {
        assert_eq!(send(&["--threads", "1"]).unwrap().threads, Some(1));
        assert_eq!(send(&["--threads", "1024"]).unwrap().threads, Some(1024));
        for bad in [
            "--threads=0",
            "--threads=1025",
            "--threads=100000",
            "--threads=-3",
        ] {
            refused(send(&[bad]), "--threads", "1 and 1024");
        }
        refused(send(&["--threads", "many"]), "--threads", "1 and 1024");
        refused(
            parse(&["receive", "t.img", "--stdio", "--threads", "100000"]),
            "--threads",
            "1 and 1024",
        );
    }

    #[test]
    fn compress_level_bounds() {
        assert_eq!(send(&["--compress-level", "0"]).unwrap().compress_level, 0);
        assert_eq!(
            send(&["--compress-level", "22"]).unwrap().compress_level,
            22
        );
        for bad in [
            "--compress-level=23",
            "--compress-level=-1",
            "--compress-level=fast",
        ] {
            refused(send(&[bad]), "--compress-level", "0 (off) and 22");
        }
    }

    #[test]
    fn block_size_bounds() {
        assert_eq!(send(&["--block-size", "4K"]).unwrap().block_size, 4096);
        assert_eq!(send(&["--block-size", "16M"]).unwrap().block_size, 16 << 20);
        for bad in ["2K", "32M", "3000", "0"] {
            refused(
                send(&["--block-size", bad]),
                "--block-size",
                "4 KiB and 16 MiB",
            );
        }
        refused(send(&["--block-size", "banana"]), "--block-size", "banana");
    }

    #[test]
    fn interval_bounds() {
        assert_eq!(
            send(&["--interval", "0s"]).unwrap().interval,
            Duration::ZERO
        );
        assert_eq!(
            send(&["--interval", "7days"]).unwrap().interval,
            MAX_INTERVAL
        );
        refused(send(&["--interval", "8days"]), "--interval", "0s and 7days");
        refused(
            send(&["--interval", "1000years"]),
            "--interval",
            "0s and 7days",
        );
        refused(send(&["--interval", "soon"]), "--interval", "soon");
    }

    #[test]
    fn peer_timeout_bounds() {
        assert_eq!(send(&[]).unwrap().peer_timeout, DEFAULT_PEER_TIMEOUT);
        assert_eq!(
            send(&["--peer-timeout", "3s"]).unwrap().peer_timeout,
            Duration::from_secs(3)
        );
        for bad in [
            "--peer-timeout=0s",
            "--peer-timeout=2s",
            "--peer-timeout=2d",
        ] {
            refused(send(&[bad]), "--peer-timeout", "3s and 1d");
        }
    }

    #[test]
    fn snapshot_size_bounds() {
        let ok = send(&["--snapshot-size", "1M"]).unwrap();
        assert_eq!(ok.snapshot_size, Some(1 << 20));
        let ok = send(&["--snapshot-size", "1P"]).unwrap();
        assert_eq!(ok.snapshot_size, Some(1 << 50));
        for bad in ["0", "4K", "1023K", "2P"] {
            refused(
                send(&["--snapshot-size", bad]),
                "--snapshot-size",
                "1M and 1P",
            );
        }
    }

    #[test]
    fn demo_size_bounds() {
        let size = |text: &str| match parse(&["demo", "--size", text])?.command {
            Command::Demo(demo) => Ok(demo.size),
            other => panic!("{other:?}"),
        };
        assert_eq!(size("8M"), Ok(8 << 20));
        assert_eq!(size("64G"), Ok(64 << 30));
        for bad in ["0", "1M", "7M", "65G", "1T"] {
            refused(size(bad), "--size", "8M and 64G");
        }
    }

    #[test]
    fn dash_is_not_a_destination() {
        refused(send_to("-"), "DEST", "./-");
        let message = send_to("-").unwrap_err();
        assert!(message.contains("`-` is not a destination"), "{message}");
        assert_eq!(send_to("./-").unwrap().dests, ["./-"]);
    }

    fn send_to(dest: &str) -> Result<SendArgs, String> {
        match parse(&["send", "src.img", dest])?.command {
            Command::Send(send) => Ok(send),
            other => panic!("{other:?}"),
        }
    }
}
