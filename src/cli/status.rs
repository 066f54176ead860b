//! `blkmirror status`: the records of a state directory ([`crate::state::list`]), as one line
//! of text per sender or receiver, or as the JSON array of `--json`
//! ([`StatusEntry::to_json`] fixes its shape).

use std::io::{self, Write};
use std::path::Path;

use anyhow::Context;
use serde::Deserialize;

use super::args::StatusArgs;
use super::{out, CliError};
use crate::state::{format_time, Condition, ReceiverState, SenderStatus, StatusEntry};
use crate::units::human_bytes;

/// Runs `status`.
pub fn run(args: StatusArgs) -> Result<i32, CliError> {
    let dir = args
        .state_dir
        .unwrap_or_else(crate::state::default_state_dir);
    if let Some(entry) = &args.forget {
        let forgotten = crate::state::forget(&dir, entry)
            .with_context(|| format!("cannot forget {entry} in {}", dir.display()))?;
        if forgotten.is_empty() {
            return Err(CliError::Runtime(anyhow::anyhow!(
                "no receiver target or sender destination named {entry} in {} (see blkmirror status)",
                dir.display()
            )));
        }
        for line in forgotten {
            out::outln!("{line}");
        }
        return Ok(0);
    }
    let entries =
        crate::state::list(&dir).with_context(|| format!("state dir {}", dir.display()))?;
    out::finished(write(&mut out::stdout(), &dir, &entries, args.json))
        .context("cannot write the status to stdout")?;
    let unreadable = entries
        .iter()
        .any(|e| matches!(e, StatusEntry::Unreadable { .. }));
    Ok(i32::from(unreadable))
}

/// Writes the entries of state dir `dir` as text or JSON.
pub fn write(
    out: &mut dyn Write,
    dir: &Path,
    entries: &[StatusEntry],
    json: bool,
) -> io::Result<()> {
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(entries)?)?;
        return out.flush();
    }
    if entries.is_empty() {
        writeln!(out, "no state in {}", dir.display())?;
    }
    for entry in entries {
        writeln!(out, "{}", describe(entry))?;
    }
    out.flush()
}

/// One entry as a line of text.
pub fn describe(entry: &StatusEntry) -> String {
    describe_at(entry, crate::state::now())
}

/// One entry as a line of text, as of `now` (Unix seconds: lags are counted to it).
pub fn describe_at(entry: &StatusEntry, now: u64) -> String {
    match entry {
        StatusEntry::Sender(status) => describe_sender(status, now),
        StatusEntry::Receiver(state) => describe_receiver(state),
        StatusEntry::MissingTarget(state) => format!(
            "receiver {}: MISSING: the target no longer exists (last committed generation {})",
            state.target, state.committed_generation
        ),
        StatusEntry::Unreadable { role, path, error } => {
            format!("{role} record {}: unreadable: {error}", path.display())
        }
    }
}

/// The figures of a sender's last cycle that `status` shows: a typed view of
/// [`SenderStatus::last_cycle`] (the cycle's whole JSON report, kept as written).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct LastCycle {
    blocks_changed: u64,
    blocks_scanned: u64,
    bytes_read: u64,
    bytes_sent: u64,
    tracker: Option<String>,
    full_scan_reason: Option<String>,
    audit: bool,
    tracking_faults: u64,
}

fn describe_sender(status: &SenderStatus, now: u64) -> String {
    let failing = match (&status.last_failure, status.consecutive_failures) {
        (Some(f), n) if n > 0 => format!(
            "; FAILING: {n} cycle(s) failed since the last commit, the last at {}: {}",
            format_time(f.at),
            f.error
        ),
        (Some(f), _) => format!("; last failure {}: {}", format_time(f.at), f.error),
        (None, _) => String::new(),
    };
    if status.generation == 0 {
        return format!(
            "sender   {} -> {}: nothing committed yet{failing}",
            status.source, status.dest
        );
    }
    let last = LastCycle::deserialize(&status.last_cycle).unwrap_or_default();
    let tracker = last
        .tracker
        .as_deref()
        .map(|t| format!(" (tracker {t})"))
        .unwrap_or_default();
    let full_scan = last
        .full_scan_reason
        .as_deref()
        .map(|why| format!("; full scan: {why}"))
        .unwrap_or_default();
    let audit = match last.tracking_faults {
        0 if last.audit => "; audit found no tracking fault".to_string(),
        0 => String::new(),
        n => format!("; AUDIT FOUND {n} TRACKING FAULTS (blocks the tracker had missed; shipped)"),
    };
    let next = match status.next_cycle_at {
        Some(at) if at >= now => format!("; next cycle in {}s", at - now),
        Some(at) => format!(
            "; next cycle due since {} (is the sender running?)",
            format_time(at)
        ),
        None => String::new(),
    };
    let lag = crate::state::sender::lag_seconds(status, now)
        .map(|s| {
            format!(
                " (lag {})",
                humantime::format_duration(std::time::Duration::from_secs(s))
            )
        })
        .unwrap_or_default();
    format!(
        "sender   {} -> {}: generation {} committed {}{lag}; last cycle {} of {} blocks changed, {} read{tracker}, {} sent{full_scan}{audit}{failing}{next}",
        status.source,
        status.dest,
        status.generation,
        format_time(status.committed_at),
        last.blocks_changed,
        last.blocks_scanned,
        human_bytes(last.bytes_read),
        human_bytes(last.bytes_sent)
    )
}

fn describe_receiver(state: &ReceiverState) -> String {
    let target = &state.target;
    let committed = state.committed_generation;
    if state.condition == Condition::Consistent {
        return format!(
            "receiver {target}: consistent at generation {committed} (committed {}; {} written by the last cycle)",
            state.committed_at.map_or_else(|| "never".into(), format_time),
            human_bytes(state.last_cycle_bytes_written)
        );
    }
    if let (Condition::Drifted, Some(scrub)) = (state.condition, &state.last_scrub) {
        return format!(
            "receiver {target}: DRIFTED: {} of {} blocks differ from generation {committed} (found by a scrub at {}); the next cycle repairs them",
            scrub.blocks_drifted,
            scrub.blocks_checked,
            format_time(scrub.at)
        );
    }
    let detail = serde_json::to_value(state.condition)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    format!(
        "receiver {target}: MID-CYCLE ({detail}, applying generation {}); last consistent generation {committed}{}",
        state
            .applying_generation
            .map_or_else(|| "null".into(), |g| g.to_string()),
        state
            .last_error
            .as_deref()
            .map(|e| format!("; last error: {e}"))
            .unwrap_or_default()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    const T: u64 = 1_796_128_447;

    fn receiver(condition: Condition) -> ReceiverState {
        let mut state = ReceiverState::new(Path::new("/srv/mirror.img"));
        state.condition = condition;
        state.committed_generation = 4;
        state.committed_root = "ab".repeat(32);
        state.block_size = 65536;
        state.device_size = 8 << 20;
        state.updated_at = T;
        state.committed_at = Some(T);
        state.last_cycle_bytes_written = 3 << 20;
        state
    }

    fn sender() -> SenderStatus {
        SenderStatus {
            source: "/dev/vg0/data".into(),
            source_identity: "lvm:vg0/data".into(),
            dest: "tls://backup:7300".into(),
            generation: 7,
            root: "cd".repeat(32),
            committed_at: T,
            last_cycle: json!({"generation": 7, "blocks_changed": 3, "blocks_scanned": 128,
                               "bytes_read": 3 << 20, "bytes_sent": 200_000,
                               "tracker": "thin", "full_scan_reason": null,
                               "duration_ms": {"total": 5}}),
            snapshot_at: None,
            last_failure: None,
            consecutive_failures: 0,
            next_cycle_at: None,
        }
    }

    fn text(entries: &[StatusEntry]) -> String {
        let mut buf = Vec::new();
        write(&mut buf, Path::new("/st"), entries, false).unwrap();
        String::from_utf8(buf).unwrap()
    }

    fn json_of(entries: &[StatusEntry]) -> Value {
        let mut buf = Vec::new();
        write(&mut buf, Path::new("/st"), entries, true).unwrap();
        serde_json::from_slice(&buf).unwrap()
    }

    #[test]
    fn text_lines() {
        let stamp = format_time(T);
        let mut interrupted = receiver(Condition::Interrupted);
        interrupted.applying_generation = Some(5);
        let mut failed = receiver(Condition::Applying);
        failed.applying_generation = Some(5);
        failed.last_error = Some("connection reset".into());
        let mut fallen_back = sender();
        fallen_back.last_cycle["bytes_read"] = json!(8 << 20);
        fallen_back.last_cycle["full_scan_reason"] = json!("the kept snapshot vg0/s is gone");
        fallen_back.last_cycle["audit"] = json!(true);
        fallen_back.last_cycle["tracking_faults"] = json!(2);
        let entries = [
            StatusEntry::Receiver(receiver(Condition::Consistent)),
            StatusEntry::Receiver(interrupted),
            StatusEntry::Receiver(failed),
            StatusEntry::Sender(sender()),
            StatusEntry::Sender(fallen_back),
        ];
        let expected = [
            format!("receiver /srv/mirror.img: consistent at generation 4 (committed {stamp}; 3.0 MiB written by the last cycle)"),
            "receiver /srv/mirror.img: MID-CYCLE (interrupted, applying generation 5); last consistent generation 4".into(),
            "receiver /srv/mirror.img: MID-CYCLE (applying, applying generation 5); last consistent generation 4; last error: connection reset".into(),
            format!("sender   /dev/vg0/data -> tls://backup:7300: generation 7 committed {stamp} (lag 1m 30s); last cycle 3 of 128 blocks changed, 3.0 MiB read (tracker thin), 195.3 KiB sent"),
            format!("sender   /dev/vg0/data -> tls://backup:7300: generation 7 committed {stamp} (lag 1m 30s); last cycle 3 of 128 blocks changed, 8.0 MiB read (tracker thin), 195.3 KiB sent; full scan: the kept snapshot vg0/s is gone; AUDIT FOUND 2 TRACKING FAULTS (blocks the tracker had missed; shipped)"),
        ];
        let lines: Vec<String> = entries.iter().map(|e| describe_at(e, T + 90)).collect();
        assert_eq!(lines, expected);
    }

    #[test]
    fn a_failing_sender_says_so_before_and_after_a_commit() {
        let mut never = sender();
        never.generation = 0;
        never.consecutive_failures = 2;
        never.last_failure = Some(crate::state::sender::Failure {
            at: T,
            error: "cannot connect".into(),
        });
        let line = describe_at(&StatusEntry::Sender(never.clone()), T);
        assert!(line.ends_with(&format!("nothing committed yet; FAILING: 2 cycle(s) failed since the last commit, the last at {}: cannot connect", format_time(T))), "{line}");
        never.generation = 7;
        never.consecutive_failures = 0;
        let line = describe_at(&StatusEntry::Sender(never), T);
        assert!(
            line.ends_with(&format!(
                "; last failure {}: cannot connect",
                format_time(T)
            )),
            "{line}"
        );
    }

    #[test]
    fn text_of_a_receiver_never_committed_and_of_no_state() {
        let mut fresh = receiver(Condition::Consistent);
        fresh.committed_at = None;
        fresh.committed_generation = 0;
        let line = describe(&StatusEntry::Receiver(fresh));
        assert!(line.contains("(committed never;"), "{line}");
        assert_eq!(text(&[]), "no state in /st\n");
    }

    #[test]
    fn json_shape() {
        let mut mid = receiver(Condition::Interrupted);
        mid.applying_generation = Some(5);
        let entries = [
            StatusEntry::Receiver(receiver(Condition::Consistent)),
            StatusEntry::Receiver(mid),
            StatusEntry::Sender(sender()),
        ];
        let all = json_of(&entries);
        let expected_consistent = json!({
            "format": 1, "target": "/srv/mirror.img", "condition": "consistent",
            "detail": "consistent", "role": "receiver", "committed_generation": 4,
            "committed_root": "ab".repeat(32), "applying_generation": null,
            "block_size": 65536, "device_size": 8 << 20, "updated_at": T, "committed_at": T,
            "last_cycle_bytes_written": 3 << 20, "last_error": null,
        });
        assert_eq!(all[0], expected_consistent);
        assert_eq!(all[1]["condition"], "mid-cycle");
        assert_eq!(all[1]["detail"], "interrupted");
        assert_eq!(all[1]["applying_generation"], 5);
        let expected_sender = json!({
            "role": "sender", "source": "/dev/vg0/data", "source_identity": "lvm:vg0/data",
            "dest": "tls://backup:7300", "generation": 7, "root": "cd".repeat(32),
            "committed_at": T, "last_cycle": sender().last_cycle, "consecutive_failures": 0,
        });
        let mut sender_json = all[2].clone();
        let lag = sender_json.as_object_mut().unwrap().remove("lag_seconds");
        assert!(lag.is_some_and(|l| l.is_u64()), "{}", all[2]);
        assert_eq!(sender_json, expected_sender);
        assert_eq!(json_of(&[]), json!([]));
    }

    #[test]
    fn json_is_the_pretty_printed_array() {
        let entries = [StatusEntry::Sender(sender())];
        let mut buf = Vec::new();
        write(&mut buf, Path::new("/st"), &entries, true).unwrap();
        let values: Vec<Value> = entries.iter().map(|e| e.to_json().unwrap()).collect();
        let expected = serde_json::to_string_pretty(&values).unwrap() + "\n";
        assert_eq!(String::from_utf8(buf).unwrap(), expected);
    }

    /// A writer whose reader went away after `left` bytes.
    struct Closing {
        left: usize,
    }

    impl Write for Closing {
        fn write(&mut self, data: &[u8]) -> io::Result<usize> {
            if self.left == 0 {
                return Err(io::ErrorKind::BrokenPipe.into());
            }
            let n = data.len().min(self.left);
            self.left -= n;
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_reader_that_goes_away_ends_the_output_quietly() {
        let entries = vec![StatusEntry::Sender(sender()); 50];
        let result = write(
            &mut Closing { left: 100 },
            Path::new("/st"),
            &entries,
            false,
        );
        assert!(out::finished(result).is_ok());
    }
}
