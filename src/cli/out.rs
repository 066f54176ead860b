//! Stdout when its reader may go away (`blkmirror verify A B | head -1`). SIGPIPE is ignored
//! (Rust's runtime does it; [`super::main`] makes sure), so writing to a closed pipe fails with
//! EPIPE, on which `println!` would panic. Every stdout write of the CLI goes through here:
//!
//! * a command whose output is its result (status, verify, keygen) writes to [`stdout`] and
//!   passes the outcome through [`finished`]: a closed pipe quietly ends the output and the
//!   command keeps its own exit code; any other write error stays an error;
//! * a long-running command (send's per-cycle reports, receive's "listening on", the demo's
//!   narration) prints with [`line()`]: once the reader has gone it stops printing and carries on
//!   with its work, so a mirror never stops because a pipe reading its reports closed.

use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, Ordering};

/// Set when a [`line()`] could not be written: nothing more is printed.
static SILENCED: AtomicBool = AtomicBool::new(false);

/// Stdout, locked, for a command's output.
pub fn stdout() -> io::StdoutLock<'static> {
    io::stdout().lock()
}

/// Whether a write error means the reader went away.
pub fn reader_gone(error: &io::Error) -> bool {
    error.kind() == io::ErrorKind::BrokenPipe
}

/// The outcome of writing a command's output: done, or the reader went away (both `Ok`).
pub fn finished(result: io::Result<()>) -> io::Result<()> {
    match result {
        Err(e) if reader_gone(&e) => Ok(()),
        other => other,
    }
}

/// Prints one line for a long-running command, best effort: after the first failed write
/// (the reader went away, or stdout broke) nothing more is printed and a note goes to the log.
pub fn line(text: std::fmt::Arguments) {
    if SILENCED.load(Ordering::Relaxed) {
        return;
    }
    let mut out = stdout();
    let written = out
        .write_fmt(text)
        .and_then(|()| out.write_all(b"\n"))
        .and_then(|()| out.flush());
    if let Err(error) = written {
        if !SILENCED.swap(true, Ordering::Relaxed) {
            let why = if reader_gone(&error) {
                "its reader went away".to_string()
            } else {
                error.to_string()
            };
            tracing::warn!(
                "stdout closed ({why}); no more lines are printed there, the work goes on"
            );
        }
    }
}

/// [`line`] with `format!` arguments.
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::cli::out::line(format_args!($($arg)*))
    };
}
pub(crate) use outln;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_closed_pipe_is_a_finished_output() {
        let gone = io::Error::from(io::ErrorKind::BrokenPipe);
        assert!(reader_gone(&gone));
        assert!(finished(Err(gone)).is_ok());
        assert!(finished(Ok(())).is_ok());
        let full = io::Error::from_raw_os_error(libc::ENOSPC);
        assert!(!reader_gone(&full));
        assert!(finished(Err(full)).is_err());
    }
}
