//! `ssh://` destinations through a private sshd on 127.0.0.1 (see `support::Sshd`), with
//! `--remote-command` set to this build's binary.
//!
//! The remote receiver's state goes to the test's temp dir through `--remote-state-dir` (as
//! root it would otherwise default to /var/lib/blkmirror, shared by every test and run).

use serde_json::Value;

use crate::support::*;

#[test]
fn sshd_harness_accepts_key_login() {
    let t = Scratch::new("ssh-harness");
    let sshd = Sshd::start(&t.dir("sshd"));
    sshd.ssh("true").assert_success();
    let out = sshd.ssh("echo $XDG_STATE_HOME");
    out.assert_success();
    assert_eq!(out.stdout_text().trim(), s(&sshd.remote_state));
}

/// `--ssh-command ... --remote-command ... --remote-state-dir DIR`: the remote receiver keeps
/// its state in the test's temp dir (as root it would default to /var/lib/blkmirror).
fn ssh_args(sshd: &Sshd, remote_command: &str) -> Vec<String> {
    vec![
        "--ssh-command".into(),
        sshd.ssh_command(),
        "--remote-command".into(),
        remote_command.into(),
        "--remote-state-dir".into(),
        s(&sshd.remote_state).into(),
    ]
}

#[test]
fn mirror_over_ssh_two_cycles() {
    let t = Scratch::new("ssh-cycles");
    let sshd = Sshd::start(&t.dir("sshd"));
    let src = t.path("source.img");
    let tgt = t.path("target.img");
    let len = 16 * MIB;
    write_random_file(&src, len, 401);
    assert!(
        !tgt.exists(),
        "the remote receiver creates a missing file target (send --create)"
    );
    let state = t.dir("state-sender");
    let dest = sshd.url(&tgt);
    let mut extra = ssh_args(&sshd, bin());
    extra.push("--create".into());
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();

    let c1 = send_once(s(&src), &dest, &state, &extra);
    assert_eq!(c1.generation, 1, "{:?}", c1.raw);
    assert!(c1.bytes_sent > 0, "{:?}", c1.raw);
    assert_identical(&src, &tgt);

    let before = read_all(&src);
    random_writes(&src, &mut Rng::new(402), 12, 64, 200 * KIB);
    let changed = changed_blocks(&before, &read_all(&src), BLOCK).len() as u64;
    let c2 = send_once(s(&src), &dest, &state, &extra);
    assert_eq!(c2.generation, 2, "{:?}", c2.raw);
    assert_eq!(c2.blocks_changed, changed, "{:?}", c2.raw);
    assert_identical(&src, &tgt);

    let sender = status_entry(&state, "sender");
    assert_eq!(
        sender.get("generation").and_then(Value::as_u64),
        Some(2),
        "{sender}"
    );
    assert_receiver_consistent(&status_entry(&sshd.remote_state, "receiver"), 2);
}

#[test]
fn ssh_with_a_missing_remote_command_fails_cleanly() {
    let t = Scratch::new("ssh-badremote");
    let sshd = Sshd::start(&t.dir("sshd"));
    let src = t.path("source.img");
    let tgt = t.path("target.img");
    write_random_file(&src, 2 * MIB, 411);
    let before = Rng::new(412).bytes((2 * MIB) as usize);
    std::fs::write(&tgt, &before).unwrap();

    let mut args = send_args(s(&src), &sshd.url(&tgt), &t.dir("state"));
    args.push("--once".into());
    args.extend(ssh_args(&sshd, "/nonexistent/blkmirror"));
    let out = run(&args);
    out.assert_error(1, &[]);
    assert!(out.json_lines().is_empty(), "{out:?}");
    assert_content(&tgt, &before, "target after a failed ssh start");
}

#[test]
fn ssh_whose_remote_side_never_answers_is_given_up_within_the_bound() {
    // A real ssh login whose remote command reads its input and never writes: the stream is
    // open and healthy, and silent. (`cat` ends when the killed ssh closes the channel.)
    let t = Scratch::new("ssh-silent");
    let sshd = Sshd::start(&t.dir("sshd"));
    let src = t.path("source.img");
    let tgt = t.path("target.img");
    write_random_file(&src, 2 * MIB, 421);
    let mut args = send_args(s(&src), &sshd.url(&tgt), &t.dir("state"));
    args.extend(["--once", "--peer-timeout", "3s"].map(String::from));
    args.extend(ssh_args(&sshd, "sh -c 'exec cat >/dev/null' sh"));
    let out = run(&args);
    out.assert_error(1, &["peer silent for 3 s", "preamble"]);
    assert!(!tgt.exists(), "nothing may be written");
}

#[test]
fn a_missing_remote_target_is_created_only_when_the_sender_says_create() {
    let t = Scratch::new("ssh-create");
    let sshd = Sshd::start(&t.dir("sshd"));
    let src = t.path("source.img");
    let tgt = t.path("target.img");
    write_random_file(&src, MIB, 431);
    let mut args = send_args(s(&src), &sshd.url(&tgt), &t.dir("state"));
    args.push("--once".into());
    args.extend(ssh_args(&sshd, bin()));
    let out = run(&args);
    out.assert_code(1);
    // The remote receiver's line comes through ssh; the sender's own is the last.
    let last = out.error_lines().last().unwrap().to_string();
    assert!(
        last.contains("peer refused: target") && last.contains("pass --create"),
        "{last}"
    );
    assert!(!tgt.exists(), "created without --create");
    args.push("--create".into());
    run(&args).assert_success();
    assert_identical(&src, &tgt);
}

#[test]
fn a_forced_command_restricts_the_key_to_its_allowed_targets() {
    // authorized_keys: command="blkmirror receive --stdio --create --allow-target A ..."
    let t = Scratch::new("ssh-forced");
    let sshd = Sshd::start(&t.dir("sshd"));
    let src = t.path("source.img");
    write_random_file(&src, 2 * MIB, 441);
    let (allowed, other) = (t.path("allowed.img"), t.path("other.img"));
    let forced = format!(
        "command=\"{} receive --stdio --create --allow-target {} --state-dir {}\" {}",
        bin(),
        allowed.display(),
        sshd.remote_state.display(),
        std::fs::read_to_string(sshd.user_key.with_extension("pub"))
            .unwrap()
            .trim()
    );
    std::fs::write(t.path("sshd").join("authorized_keys"), forced + "\n").unwrap();

    let send = |target: &std::path::Path, state: &str| {
        let mut args = send_args(s(&src), &sshd.url(target), &t.dir(state));
        args.extend(["--once", "--create", "--ssh-command"].map(String::from));
        args.push(sshd.ssh_command());
        // The forced command decides the program and the state dir, whatever we ask.
        args.extend(["--remote-command", "/nonexistent/blkmirror"].map(String::from));
        run(&args)
    };
    send(&allowed, "state-a").assert_success();
    assert_identical(&src, &allowed);
    assert_receiver_consistent(&status_entry(&sshd.remote_state, "receiver"), 1);

    let out = send(&other, "state-b");
    out.assert_code(1);
    let last = out.error_lines().last().unwrap().to_string();
    assert!(
        last.contains("peer refused: target") && last.contains("not allowed here"),
        "{last}"
    );
    assert!(
        !other.exists(),
        "a target the key may not write was created"
    );
}
