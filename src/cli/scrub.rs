//! `blkmirror scrub TARGET`: re-hash a receiver's target and compare with its manifest (see
//! [`crate::receiver::scrub`]). Exit 0 clean, 1 drifted (the differing blocks are marked; the
//! next cycle repairs exactly those), 2 when it cannot tell or fails. Takes the target's lock,
//! so it never runs beside a session writing the target.

use std::io::Write;
use std::sync::atomic::AtomicBool;

use super::args::{threads_or_default, ProgressMode, ScrubArgs};
use super::{make_progress, out, CliError};
use crate::receiver::scrub::{scrub_at, ScrubOutcome};

/// Runs `scrub`.
pub fn run(args: ScrubArgs) -> Result<i32, CliError> {
    let progress = make_progress(ProgressMode::Auto);
    let fail = CliError::Usage;
    let target = crate::receiver::absolute(&args.target);
    let state_dir = args
        .state_dir
        .unwrap_or_else(crate::state::default_state_dir);
    let stop = AtomicBool::new(false);
    let threads = threads_or_default(args.threads);
    let outcome = scrub_at(&target, &state_dir, threads, args.rate, &stop, &*progress)
        .map_err(|e| CliError::Usage(e.to_string()))?;
    let (code, line) = match outcome {
        ScrubOutcome::Clean { blocks } => (0, format!("clean: all {blocks} blocks match the manifest")),
        ScrubOutcome::Drifted { blocks, drifted } => (
            1,
            format!("drifted: {drifted} of {blocks} blocks differ from the committed generation; the next cycle repairs them"),
        ),
        ScrubOutcome::Unknown { reason } => {
            return Err(fail(format!("cannot scrub {}: {reason}", target.display())))
        }
        ScrubOutcome::Busy => {
            return Err(fail(format!(
                "a session is writing {} now; scrub it when the cycle is over",
                target.display()
            )))
        }
    };
    let mut stdout = out::stdout();
    out::finished(writeln!(stdout, "{line}").and_then(|()| stdout.flush()))
        .map_err(|e| fail(format!("cannot write to stdout: {e}")))?;
    Ok(code)
}
