//! Hooks around commits and their bounds: `send --post-commit` and `receive --post-commit`
//! run after each committed generation with its figures in the environment; a failing one is
//! logged and the generation stays committed; `--hook-timeout` kills a hook that hangs (a
//! pre-snapshot hook so killed fails the cycle with one line, and the target is untouched).

use std::collections::BTreeMap;
use std::path::Path;

use crate::support::*;

/// The `BLKMIRROR_*` variables a hook wrote with `env > FILE`.
fn hook_env(file: &Path) -> BTreeMap<String, String> {
    std::fs::read_to_string(file)
        .unwrap_or_else(|e| panic!("the hook wrote no {}: {e}", file.display()))
        .lines()
        .filter(|l| l.starts_with("BLKMIRROR_"))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn post_commit_hooks_see_the_cycle_on_both_sides() {
    let t = Scratch::new("post-commit");
    let pair = TlsPair::new(&t);
    let src = t.path("source.img");
    write_random_file(&src, 2 * MIB, 1701);
    let tgt = t.path("target.img");
    let (sent_env, received_env) = (t.path("sent.env"), t.path("received.env"));
    let mut receiver_args = pair.receiver_args();
    receiver_args.extend(["--create".into(), "--post-commit".into()]);
    receiver_args.push(format!("env > '{}'", s(&received_env)));
    let receiver = Receiver::start(&tgt, &t.dir("state-receiver"), &receiver_args);
    let mut args = send_args(s(&src), &receiver.url(), &t.dir("state"));
    args.extend(["--once".into(), "--post-commit".into()]);
    args.push(format!("env > '{}'", s(&sent_env)));
    args.extend(pair.sender_args());
    let out = run(&args);
    out.assert_success();
    let report = Cycle::from_json(&out.json_lines()[0]);
    let sent = hook_env(&sent_env);
    assert_eq!(sent["BLKMIRROR_HOOK"], "post-commit");
    assert_eq!(sent["BLKMIRROR_GENERATION"], "1");
    assert_eq!(sent["BLKMIRROR_DEST"], receiver.url());
    assert_eq!(sent["BLKMIRROR_SOURCE"], s(&src));
    assert_eq!(sent["BLKMIRROR_ROOT"], report.root);
    assert_eq!(sent["BLKMIRROR_BYTES_SENT"], report.bytes_sent.to_string());
    assert_eq!(
        sent["BLKMIRROR_BLOCKS_CHANGED"],
        report.blocks_changed.to_string()
    );
    let received = wait_for(RUN_TIMEOUT, "the receiver's post-commit hook", || {
        received_env
            .exists()
            .then(|| hook_env(&received_env))
            .filter(|e| e.contains_key("BLKMIRROR_ROOT"))
    });
    assert_eq!(received["BLKMIRROR_TARGET"], s(&tgt));
    assert_eq!(received["BLKMIRROR_GENERATION"], "1");
    assert_eq!(received["BLKMIRROR_ROOT"], report.root);
}

#[test]
fn a_failing_post_commit_hook_is_logged_and_the_generation_stays_committed() {
    let t = Scratch::new("post-commit-fails");
    let src = t.path("source.img");
    write_random_file(&src, MIB, 1702);
    let tgt = t.path("target.img");
    let mut args = send_args(s(&src), s(&tgt), &t.dir("state"));
    args.extend([
        "--once".into(),
        "--post-commit".into(),
        "echo nope >&2; exit 3".into(),
    ]);
    args.extend(["--log-format".into(), "json".into()]);
    let out = run(&args);
    out.assert_success();
    assert_identical(&src, &tgt);
    let failed = out.stderr_containing("\"hook_failed\"");
    assert_eq!(failed.len(), 1, "{out:?}");
    assert!(
        failed[0].contains("exit 3") && failed[0].contains("nope"),
        "{out:?}"
    );
}

#[test]
fn a_hook_that_hangs_is_killed_after_the_hook_timeout() {
    let t = Scratch::new("hook-timeout");
    let src = t.path("source.img");
    write_random_file(&src, MIB, 1703);
    let tgt = t.path("target.img");
    let mut args = send_args(s(&src), s(&tgt), &t.dir("state"));
    args.extend(["--once".into(), "--pre-snapshot".into(), "sleep 600".into()]);
    args.extend(["--hook-timeout".into(), "1s".into()]);
    let out = run(&args);
    out.assert_error(
        1,
        &["pre-snapshot hook", "killed after the hook timeout of 1s"],
    );
    assert!(!tgt.exists(), "nothing written");
    let mut args = send_args(s(&src), s(&tgt), &t.dir("state"));
    args.extend(["--once".into(), "--hook-timeout".into(), "0s".into()]);
    run(&args).assert_error(2, &["--hook-timeout", "between 1s and 1d"]);
}
