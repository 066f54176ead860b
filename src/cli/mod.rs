//! The command line. Every failure ends as one line `blkmirror: error: ...` on stderr and an
//! exit code: 0 success, 1 runtime error, 2 usage error (`verify` also exits 1 for
//! "different"). A reader of stdout that goes away ends a command's output quietly ([`out`]).
//!
//! [`args`] is the grammar (clap, with bounds on every numeric option); each command has its
//! own file ([`send`], [`receive`], [`keygen`], [`verify`], [`status`], [`demo`]; [`man`] for
//! `man` and `completions`); [`progress`]
//! draws bars on stderr. This file keeps `main`, the error type, logging and the runtime.

pub mod args;
pub mod config;
pub mod demo;
pub mod history;
pub mod keygen;
pub mod logging;
pub mod man;
pub mod out;
pub mod progress;
pub mod receive;
pub mod run;
pub mod scrub;
pub mod send;
pub mod status;
pub mod verify;

use std::io::{IsTerminal, Write};
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;

use crate::progress::{NoProgress, Progress};
pub use args::Cli;
use args::{Command, DemoArgs, ProgressMode};
pub use send::print_report;

/// A failure and its exit code.
pub enum CliError {
    /// Exit 2: the command line asks for something impossible (or `verify` failed).
    Usage(String),
    /// Exit 1: the work failed.
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
    ignore_sigpipe();
    report_sigbus();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            // --help and --version: print as clap does, exit 0.
            let _ = e.print();
            return 0;
        }
        Err(e) => {
            error_line(&format!("{} (see blkmirror --help)", clap_message(&e)));
            return 2;
        }
    };
    match run(cli) {
        Ok(code) => code,
        Err(CliError::Usage(message)) => {
            error_line(&message);
            2
        }
        Err(CliError::Runtime(error)) => {
            error_line(&one_line(&error));
            1
        }
    }
}

fn run(cli: Cli) -> Result<i32, CliError> {
    logging::configure(logging::LogOptions {
        format: cli.log_format,
        verbosity: cli.verbose.min(100) as i8 - cli.quiet.min(100) as i8,
    });
    match cli.command {
        Command::Send(args) => {
            stop_on_hangup();
            send::run(args)
        }
        Command::Receive(args) => {
            stop_on_hangup();
            receive::run(args)
        }
        Command::Keygen(args) => keygen::run(args),
        Command::Verify(args) => verify::run(args),
        Command::Status(args) => status::run(args),
        Command::Scrub(args) => scrub::run(args),
        Command::History(command) => history::run(command),
        Command::Man(args) => man::man(args),
        Command::Run(args) => run::run(args),
        Command::CheckConfig(args) => run::check(args),
        Command::Completions(args) => man::completions(args),
        Command::Demo(DemoArgs { dir, size }) => {
            let progress = make_progress(ProgressMode::Auto);
            block_on(demo::run(dir, size, progress))??;
            Ok(0)
        }
    }
}

/// Writing to a closed pipe must fail with EPIPE (handled by [`out`]), not kill the process.
/// Rust's runtime already ignores SIGPIPE in its binaries; this holds when the library's
/// `main` is called from elsewhere too.
#[allow(unsafe_code)]
fn ignore_sigpipe() {
    use nix::sys::signal::{signal, SigHandler, Signal};
    // SAFETY: SIG_IGN installs no handler code, and nothing else sets SIGPIPE's disposition.
    let _ = unsafe { signal(Signal::SIGPIPE, SigHandler::SigIgn) };
}

/// A `send` or `receive` run from a terminal gets SIGHUP when the terminal goes away: it then
/// stops as on SIGTERM (the cycle in progress winds down, its snapshot is released) instead of
/// dying mid-cycle. The handler raises SIGTERM, which the run listens to. Under `nohup` (SIGHUP
/// ignored) nothing changes; `run --config` keeps SIGHUP for reloading.
#[allow(unsafe_code)]
fn stop_on_hangup() {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    extern "C" fn on_sighup(_: libc::c_int) {
        // SAFETY: getpid(2) and kill(2) are async-signal-safe.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGTERM);
        }
    }
    let action = SigAction::new(
        SigHandler::Handler(on_sighup),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    // SAFETY: a null action only reads the current disposition into `current`.
    let ignored = unsafe {
        let mut current: libc::sigaction = std::mem::zeroed();
        libc::sigaction(libc::SIGHUP, std::ptr::null(), &mut current) == 0
            && current.sa_sigaction == libc::SIG_IGN
    };
    if !ignored {
        // SAFETY: the handler only makes async-signal-safe calls (above).
        let _ = unsafe { sigaction(Signal::SIGHUP, &action) };
    }
}

/// The line a SIGBUS leaves on stderr before the process exits with status 1.
pub const SIGBUS_LINE: &str = "blkmirror: error: bus error (SIGBUS) reading a mapped source: the source file shrank or became unreadable during the cycle; the target is left mid-cycle and the next cycle repairs it\n";

/// A source file truncated while a chunk of it is hashed through a mapping (see
/// `source::readahead`) raises SIGBUS: print one error line and exit 1 instead of dying with
/// "Bus error". Like a crash, it leaves the target mid-cycle, never wrong.
#[allow(unsafe_code)]
fn report_sigbus() {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    static REPORTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    extern "C" fn on_sigbus(_: libc::c_int) {
        // Several threads may fault at once: the first one reports and exits, the others wait
        // for that exit. A lock-free atomic is async-signal-safe.
        if REPORTED.swap(true, std::sync::atomic::Ordering::SeqCst) {
            loop {
                // SAFETY: pause(2) is async-signal-safe.
                unsafe { libc::pause() };
            }
        }
        // SAFETY: write(2) and _exit(2) are async-signal-safe; the buffer is static.
        unsafe {
            libc::write(2, SIGBUS_LINE.as_ptr().cast(), SIGBUS_LINE.len());
            libc::_exit(1);
        }
    }
    let action = SigAction::new(
        SigHandler::Handler(on_sigbus),
        SaFlags::empty(),
        SigSet::empty(),
    );
    // SAFETY: the handler only makes async-signal-safe calls (above).
    let _ = unsafe { sigaction(Signal::SIGBUS, &action) };
}

/// Prints `blkmirror: error: MESSAGE` on stderr (which may be closed too: then nothing).
fn error_line(message: &str) {
    let _ = writeln!(std::io::stderr(), "blkmirror: error: {message}");
}

/// The first line of a clap error, without its own "error: " prefix.
pub(crate) fn clap_message(error: &clap::Error) -> String {
    if error.kind() == clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
        return "missing command: one of send, receive, run, check-config, keygen, verify, status, scrub, history, demo, man, completions".into();
    }
    let rendered = error.render().to_string();
    let mut lines = rendered.lines();
    let mut line = lines.next().unwrap_or("invalid arguments").to_string();
    if line.ends_with(':') {
        // "the following required arguments were not provided:" lists them on the next lines.
        let listed: Vec<&str> = lines.map(str::trim).take_while(|l| !l.is_empty()).collect();
        line = format!("{line} {}", listed.join(", "));
    }
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
    logging::init(multi)
}

/// Progress for a command: bars when asked or on a terminal, else nothing; logging set up
/// to print around them.
fn make_progress(mode: ProgressMode) -> Arc<dyn Progress> {
    let terminal = std::io::stderr().is_terminal();
    let (bars, every) = match mode {
        ProgressMode::Always if terminal => (true, LOG_PROGRESS_EVERY),
        // No terminal to draw on: plain progress lines instead, often.
        ProgressMode::Always => (false, std::time::Duration::from_secs(1)),
        ProgressMode::Never => (false, LOG_PROGRESS_EVERY),
        ProgressMode::Auto => (terminal, LOG_PROGRESS_EVERY),
    };
    let inner: Arc<dyn Progress> = if bars {
        let bars = progress::Bars::new();
        init_logging(Some(bars.multi()));
        Arc::new(bars)
    } else {
        init_logging(None);
        Arc::new(NoProgress)
    };
    Arc::new(progress::LoggedProgress::new(inner, every))
}

/// How often a long stage (a scan, a re-hash) logs how far it got.
const LOG_PROGRESS_EVERY: std::time::Duration = std::time::Duration::from_secs(30);
