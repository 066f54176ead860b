//! `verify` exit codes and output, `status` for both roles, and `demo`.

use std::fs;
use std::path::Path;

use serde_json::Value;

use crate::support::*;

#[test]
fn verify_exit_codes() {
    let t = Scratch::new("verify");
    let a = t.path("a.img");
    let b = t.path("b.img");
    write_random_file(&a, 4 * MIB + 100, 501);
    fs::copy(&a, &b).unwrap();

    let out = run(&["verify", s(&a), s(&b)]);
    out.assert_success();
    assert!(out.error_lines().is_empty(), "{out:?}");

    // One byte: exit 1 and a (small) printed range holds the offset.
    let offset = 3_333_333u64;
    corrupt_byte(&b, offset);
    let out = run(&["verify", s(&a), s(&b)]);
    out.assert_code(1);
    assert_names_offset(&out, offset, BLOCK);
    corrupt_byte(&b, offset);

    // Different lengths are different.
    fs::OpenOptions::new()
        .write(true)
        .open(&b)
        .unwrap()
        .set_len(4 * MIB + 200)
        .unwrap();
    run(&["verify", s(&a), s(&b)]).assert_code(1);

    // Errors: exit 2, one error line naming the path.
    let missing = t.path("missing.img");
    run(&["verify", s(&a), s(&missing)]).assert_error(2, &[s(&missing)]);
    run(&["verify", s(&missing), s(&a)]).assert_error(2, &[s(&missing)]);
    let dir = t.dir("a-directory");
    run(&["verify", s(&a), s(&dir)]).assert_error(2, &[s(&dir)]);
}

#[test]
fn status_reports_sender_generation_and_consistent_receiver() {
    let t = Scratch::new("status");
    let ids = TlsPair::new(&t);
    let src = t.path("source.img");
    let tgt = t.path("target.img");
    write_random_file(&src, 8 * MIB, 511);
    let rstate = t.dir("state-receiver");
    let sstate = t.dir("state-sender");

    // Fresh state dirs: empty arrays.
    assert!(status(&rstate).is_empty());
    assert!(status(&sstate).is_empty());

    let mut rargs = ids.receiver_args();
    rargs.push("--create".into());
    let receiver = Receiver::start(&tgt, &rstate, &rargs);
    let sargs = ids.sender_args();
    let sargs: Vec<&str> = sargs.iter().map(String::as_str).collect();
    let mut rng = Rng::new(512);
    for generation in 1..=3 {
        if generation > 1 {
            random_writes(&src, &mut rng, 3, 100, 10 * KIB);
        }
        let c = send_once(s(&src), &receiver.url(), &sstate, &sargs);
        assert_eq!(c.generation, generation);
    }

    assert_sender_entry(&sstate, 3, &src, &receiver.addr.port().to_string());

    let entry = status_entry(&rstate, "receiver");
    assert_receiver_consistent(&entry, 3);
    assert_eq!(
        entry.get("target").and_then(Value::as_str),
        Some(s(&tgt)),
        "{entry}"
    );

    // The receiver's state outlives it.
    drop(receiver);
    assert_receiver_consistent(&status_entry(&rstate, "receiver"), 3);

    // Human output (no --json) names the source.
    let out = run(&["status", "--state-dir", s(&sstate)]);
    out.assert_success();
    assert!(out.stdout_text().contains(s(&src)), "{out:?}");
}

#[test]
fn status_of_a_local_mirror() {
    let t = Scratch::new("status-local");
    let src = t.path("source.img");
    let tgt = t.path("target.img");
    write_random_file(&src, 4 * MIB, 521);
    let state = t.dir("state");
    send_once(s(&src), s(&tgt), &state, &[]);
    send_once(s(&src), s(&tgt), &state, &[]);
    assert_sender_entry(&state, 2, &src, "target.img");
}

/// The sender's `status` entry: its generation, its source as given, a destination naming
/// `dest_part`.
#[track_caller]
fn assert_sender_entry(state: &Path, generation: u64, src: &Path, dest_part: &str) {
    let sender = status_entry(state, "sender");
    assert_eq!(
        sender.get("generation").and_then(Value::as_u64),
        Some(generation),
        "{sender}"
    );
    assert_eq!(
        sender.get("source").and_then(Value::as_str),
        Some(s(src)),
        "{sender}"
    );
    let dest = sender
        .get("dest")
        .and_then(Value::as_str)
        .unwrap_or_default();
    assert!(dest.contains(dest_part), "{sender}");
}

#[test]
fn demo_runs_to_completion() {
    let t = Scratch::new("demo");
    let out = Proc::spawn_in("demo", bin(), &["demo"], Some(t.root()), &[]).finish(RUN_TIMEOUT);
    out.assert_success();
    assert!(
        !out.stdout.is_empty() || !out.stderr.is_empty(),
        "demo printed nothing\n{out:?}"
    );
    assert!(out.error_lines().is_empty(), "{out:?}");
}

/// Runs `blkmirror ARGS` with stdout a pipe whose reading end is already closed (as in
/// `blkmirror ... | head -0`); returns (exit code, stderr).
fn with_closed_stdout(args: &[&str]) -> (Option<i32>, String) {
    use std::process::{Command, Stdio};
    let (reader, writer) = nix::unistd::pipe().unwrap();
    drop(reader);
    let out = Command::new(bin())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::from(writer))
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_closed_stdout_is_a_clean_exit_everywhere() {
    let t = Scratch::new("closed-stdout");
    let src = t.path("source.img");
    let tgt = t.path("target.img");
    write_random_file(&src, 2 * MIB, 901);
    let state = t.dir("state");
    // send --json: the report has nowhere to go; the mirror is made all the same.
    let (code, err) = with_closed_stdout(&[
        "send",
        s(&src),
        s(&tgt),
        "--once",
        "--json",
        "--snapshot",
        "none",
        "--state-dir",
        s(&state),
    ]);
    assert_eq!(code, Some(0), "{err}");
    assert_identical(&src, &tgt);
    for args in [
        vec!["verify", s(&src), s(&tgt)],
        vec!["status", "--state-dir", s(&state)],
        vec!["status", "--json", "--state-dir", s(&state)],
    ] {
        let (code, err) = with_closed_stdout(&args);
        assert_eq!(code, Some(0), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
}

/// `status` of a sender that fails says so (with why and how many times), before and after a
/// first commit; a committed one shows its lag and its source as an absolute path; a receiver
/// whose target was deleted is listed as missing, not consistent.
#[test]
fn status_shows_failures_lag_absolute_sources_and_missing_targets() {
    let t = Scratch::new("status-failures");
    let src = t.path("source.img");
    write_random_file(&src, MIB, 1401);
    let state = t.dir("state");
    let id = t.dir("id");
    let fp = keygen(&id);
    // Nothing listens on port 9 of 127.0.0.1: connection refused.
    let mut args = send_args(s(&src), "tls://127.0.0.1:9", &state);
    args.extend(["--once".into(), "--identity".into(), s(&id).into()]);
    args.extend(["--peer".into(), fp]);
    run(&args).assert_code(1);
    let entry = status_entry(&state, "sender");
    assert_eq!(entry["generation"], 0, "{entry}");
    assert_eq!(entry["consecutive_failures"], 1, "{entry}");
    let why = entry["last_failure"]["error"].as_str().unwrap_or_default();
    assert!(why.contains("127.0.0.1:9"), "{entry}");
    assert!(entry["lag_seconds"].is_null(), "{entry}");
    let text = run(&["status", "--state-dir", s(&state)]);
    text.assert_success();
    assert!(
        text.stdout_text()
            .contains("nothing committed yet; FAILING: 1 cycle(s) failed"),
        "{text:?}"
    );

    // A relative SOURCE, mirrored to a local file: recorded absolute, with a lag.
    let tgt = t.path("target.img");
    let mut args = send_args("source.img", s(&tgt), &state);
    args.push("--once".into());
    let mut sender = Proc::spawn_in("sender", bin(), &args, Some(t.root()), &[]);
    assert!(
        sender.wait_exit(RUN_TIMEOUT).success(),
        "{}",
        sender.describe()
    );
    let local = status_entries(&state, "sender")
        .into_iter()
        .find(|e| e["dest"] == s(&tgt))
        .expect("a sender entry for the local target");
    assert_eq!(local["source"], s(&src), "{local}");
    assert_eq!(local["consecutive_failures"], 0, "{local}");
    assert!(
        local["lag_seconds"].as_u64().is_some_and(|l| l < 3600),
        "{local}"
    );

    std::fs::remove_file(&tgt).unwrap();
    let receiver = status_entry(&state, "receiver");
    assert_eq!(receiver["condition"], "missing", "{receiver}");
    let text = run(&["status", "--state-dir", s(&state)]);
    assert!(text.stdout_text().contains("MISSING"), "{text:?}");
}

/// `status --forget ENTRY` deletes the records of a receiver's target and of a sender's
/// destination of that name, refuses a receiver in use, and says so when nothing matches.
#[test]
fn status_forget_deletes_the_records_of_one_entry() {
    let t = Scratch::new("status-forget");
    let src = t.path("source.img");
    write_random_file(&src, MIB, 1801);
    let (a, b) = (t.path("a.img"), t.path("b.img"));
    let state = t.dir("state");
    for tgt in [&a, &b] {
        let mut args = send_args(s(&src), s(tgt), &state);
        args.push("--once".into());
        run(&args).assert_success();
    }
    assert_eq!(status(&state).len(), 4);
    // A receiver in use (its lock held) is refused, and nothing is deleted.
    let lock_dir = std::fs::read_dir(state.join("targets"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|d| {
            std::fs::read_to_string(d.join("state.json"))
                .unwrap()
                .contains(s(&a))
        })
        .unwrap();
    let file = std::fs::File::open(lock_dir.join("lock")).unwrap();
    let held = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock).unwrap();
    let forget = ["status", "--state-dir", s(&state), "--forget", s(&a)];
    run(&forget).assert_error(1, &["in use"]);
    assert_eq!(status(&state).len(), 4);
    drop(held);
    let out = run(&forget);
    out.assert_success();
    assert_eq!(
        out.stdout.len(),
        2,
        "a receiver and a sender record: {out:?}"
    );
    let left = status(&state);
    assert_eq!(left.len(), 2, "{left:?}");
    assert!(
        left.iter()
            .all(|e| e["dest"] == s(&b) || e["target"] == s(&b)),
        "{left:?}"
    );
    run(&forget).assert_error(1, &["no receiver target or sender destination named"]);
}
