//! A requested stop (SIGTERM) is acted on at once in every phase of a cycle: during a long
//! pre-snapshot hook (the hook is killed, its whole process group), during the scan, and during
//! the receiver's fsync. The process exits 0 well before the phase could have ended on its own
//! (each phase is held for 15 s; the bound checked is a generous [`ACTED_WITHIN`], the real
//! figure is printed), the receiver records the cycle as interrupted (never as a crash), and
//! the next cycle does not re-hash the whole target: the receiver reports it "mid-cycle", not
//! "unknown".
//!
//! The scan and the fsync are held in their phase by fault-injection variables
//! (`BLKMIRROR_FAULT_SCAN_DELAY_MS`, `BLKMIRROR_FAULT_SYNC_DELAY_MS`, see `src/faults.rs`).

use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::support::*;

/// How soon a stopped process must be gone: far less than the 15 s each phase is held for.
const ACTED_WITHIN: Duration = Duration::from_secs(5);

fn wait_gone(group: i32) {
    wait_for(
        Duration::from_secs(10),
        "the hook's process group to be gone",
        || kill(Pid::from_raw(-group), None).is_err().then_some(()),
    );
}

/// Sends SIGTERM, waits for the exit, and says how long it took.
fn stop(proc: Proc, what: &str) -> Output {
    let started = Instant::now();
    let mut proc = proc;
    proc.signal(Signal::SIGTERM);
    let out = proc.finish(ACTED_WITHIN);
    eprintln!("{what}: stopped {:?} after SIGTERM", started.elapsed());
    out
}

fn assert_stopped_cleanly(out: &Output) {
    out.assert_success();
    assert!(
        out.stderr_text().contains("stopped on request"),
        "the stop is said\n{out:?}"
    );
    assert!(
        out.json_lines().is_empty(),
        "a stopped cycle reported a commit\n{out:?}"
    );
}

fn receiver_detail(state: &std::path::Path) -> (String, String) {
    let entry = status_entry(state, "receiver");
    let get = |k: &str| entry[k].as_str().unwrap_or("?").to_string();
    (get("condition"), get("detail"))
}

#[test]
fn sigterm_during_a_long_pre_snapshot_hook_kills_it_and_exits_0() {
    let t = Scratch::new("signal-hook");
    let (src, tgt, state) = (t.path("src.img"), t.path("tgt.img"), t.dir("state"));
    write_random_file(&src, 4 * MIB, 81);
    let first = send_once(s(&src), s(&tgt), &state, &[]);
    assert_eq!(first.generation, 1);

    let pid_file = t.path("hook.pid");
    let hook = format!("echo $$ > '{}'; sleep 15", s(&pid_file));
    let mut args = send_args(s(&src), s(&tgt), &state);
    args.extend(["--once".into(), "--pre-snapshot".into(), hook]);
    let sender = Proc::blkmirror("sender", &args);
    let group: i32 = wait_for(READY_TIMEOUT, "the hook to start", || {
        std::fs::read_to_string(&pid_file).ok()?.trim().parse().ok()
    });
    let out = stop(sender, "during the pre-snapshot hook");
    assert_stopped_cleanly(&out);
    wait_gone(group);
    // Nothing was touched: the target stays consistent and the next cycle needs no hashing.
    assert_receiver_consistent(&status_entry(&state, "receiver"), 1);
    let next = send_once(s(&src), s(&tgt), &state, &[]);
    assert_eq!(next.raw["target_condition"], "consistent", "{:?}", next.raw);
    assert_identical(&src, &tgt);
}

#[test]
fn sigterm_during_the_scan_records_an_interrupted_cycle() {
    let t = Scratch::new("signal-scan");
    let (src, tgt, state) = (t.path("src.img"), t.path("tgt.img"), t.dir("state"));
    write_random_file(&src, 32 * MIB, 82);
    send_once(s(&src), s(&tgt), &state, &["--block-size", "4K"]);
    let before = read_all(&tgt);
    write_random_file(&src, 32 * MIB, 83);

    let mut args = send_args(s(&src), s(&tgt), &state);
    // 4 KiB blocks ship whole, chunk by chunk (larger blocks over data are refined, and their
    // patches may wait for the end of the scan): the target changes as soon as the first
    // chunk is scanned.
    args.extend(["--once", "--block-size", "4K"].map(String::from));
    // Each 8 MiB chunk of the scan is held 4 s: four chunks, 16 s.
    let env = [("BLKMIRROR_FAULT_SCAN_DELAY_MS", "4000")];
    let sender = Proc::blkmirror_env("sender", &args, &env);
    // The first chunk's changes have reached the target: the receiver is mid-cycle.
    wait_for(READY_TIMEOUT, "the first changes to land", || {
        let now = std::fs::read(&tgt).ok()?;
        (now[..4096] != before[..4096]).then_some(())
    });
    let out = stop(sender, "during the scan");
    assert_stopped_cleanly(&out);
    assert_eq!(
        receiver_detail(&state),
        ("mid-cycle".into(), "interrupted".into())
    );
    let next = send_once(s(&src), s(&tgt), &state, &["--block-size", "4K"]);
    assert_eq!(
        next.raw["target_condition"], "mid-cycle",
        "the next cycle trusted the recorded manifest (no re-hash): {:?}",
        next.raw
    );
    assert_identical(&src, &tgt);
    assert_receiver_consistent(&status_entry(&state, "receiver"), next.generation);
}

#[test]
fn sigterm_to_a_receiver_in_a_long_fsync_records_an_interrupted_cycle() {
    let t = Scratch::new("signal-fsync");
    let (src, tgt) = (t.path("src.img"), t.path("tgt.img"));
    let (sstate, rstate) = (t.dir("sender-state"), t.dir("receiver-state"));
    write_random_file(&src, 8 * MIB, 84);
    let tls = TlsPair::new(&t);
    let mut extra = tls.receiver_args();
    extra.push("--create".into());
    let env = [
        ("BLKMIRROR_FAULT_SYNC_DELAY_MS", "15000"),
        ("BLKMIRROR_LOG", "debug"),
    ];
    let mut receiver = Receiver::try_start_with(&tgt, &rstate, "127.0.0.1:0", &extra, &env)
        .unwrap_or_else(|e| panic!("{e}"));
    let mut args = send_args(s(&src), &receiver.url(), &sstate);
    args.push("--once".into());
    args.extend(tls.sender_args());
    let sender = Proc::blkmirror("sender", &args);
    receiver
        .proc
        .wait_line(Stream::Stderr, READY_TIMEOUT, "the fsync", |l| {
            l.contains("target sync started")
        });
    let out = stop(receiver.proc, "receiver during its fsync");
    out.assert_success();
    assert_eq!(
        receiver_detail(&rstate),
        ("mid-cycle".into(), "interrupted".into())
    );
    let sent = sender.finish(RUN_TIMEOUT);
    assert!(sent.json_lines().is_empty(), "nothing committed\n{sent:?}");

    let receiver = Receiver::start(&tgt, &rstate, &tls.receiver_args());
    let sender_args = tls.sender_args();
    let sender_args: Vec<&str> = sender_args.iter().map(String::as_str).collect();
    let next = send_once(s(&src), &receiver.url(), &sstate, &sender_args);
    assert_eq!(
        next.raw["target_condition"], "mid-cycle",
        "the next cycle trusted the recorded manifest (no re-hash): {:?}",
        next.raw
    );
    assert_identical(&src, &tgt);
}

/// A source file truncated while the scan holds chunks of it (a regular file's chunks in the
/// page cache are hashed through a mapping, which then raises SIGBUS; chunks not read yet
/// find the file short): one error line, exit 1, the target marked mid-cycle, never a commit.
/// The next cycle, of the restored source, converges.
#[test]
fn a_source_truncated_mid_scan_ends_with_one_error_line_and_a_mid_cycle_target() {
    let t = Scratch::new("signal-truncate");
    let (src, tgt, state) = (t.path("src.img"), t.path("tgt.img"), t.dir("state"));
    write_random_file(&src, 32 * MIB, 85);
    send_once(s(&src), s(&tgt), &state, &["--block-size", "4K"]);
    let before = read_all(&tgt);
    // Just written, so in the page cache: its chunks are mapped, not copied.
    write_random_file(&src, 32 * MIB, 86);

    let mut args = send_args(s(&src), s(&tgt), &state);
    args.extend(["--once", "--block-size", "4K"].map(String::from));
    let env = [("BLKMIRROR_FAULT_SCAN_DELAY_MS", "3000")];
    let sender = Proc::blkmirror_env("sender", &args, &env);
    wait_for(READY_TIMEOUT, "the first changes to land", || {
        let now = std::fs::read(&tgt).ok()?;
        (now[..4096] != before[..4096]).then_some(())
    });
    let file = std::fs::OpenOptions::new().write(true).open(&src).unwrap();
    file.set_len(0).unwrap();
    drop(file);
    let out = sender.finish(Duration::from_secs(30));
    let line = out.assert_error(1, &["shrank"]);
    eprintln!("truncated mid-scan: {line}");
    assert!(out.json_lines().is_empty(), "no commit\n{out:?}");
    assert_eq!(receiver_detail(&state).0, "mid-cycle");

    write_random_file(&src, 32 * MIB, 87);
    send_once(s(&src), s(&tgt), &state, &["--block-size", "4K"]);
    assert_identical(&src, &tgt);
}

/// The SIGBUS report itself: whatever raises it, the process says so in one line and exits 1.
#[test]
fn sigbus_is_one_error_line_and_exit_1() {
    let t = Scratch::new("signal-bus");
    let (src, tgt, state) = (t.path("src.img"), t.path("tgt.img"), t.dir("state"));
    write_random_file(&src, 32 * MIB, 88);
    let mut args = send_args(s(&src), s(&tgt), &state);
    args.extend(["--once", "--block-size", "4K"].map(String::from));
    let env = [("BLKMIRROR_FAULT_SCAN_DELAY_MS", "4000")];
    let mut sender = Proc::blkmirror_env("sender", &args, &env);
    wait_for(READY_TIMEOUT, "the target to be created", || {
        tgt.exists().then_some(())
    });
    sender.signal(Signal::SIGBUS);
    let out = sender.finish(ACTED_WITHIN);
    let line = out.assert_error(1, &["SIGBUS", "shrank"]);
    assert_eq!(line, blkmirror::cli::SIGBUS_LINE.trim_end());
}
