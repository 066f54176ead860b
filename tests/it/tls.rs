//! Mutual TLS on 127.0.0.1 with `keygen` identities pinned by fingerprint: cycles, wrong
//! fingerprints on either side, and one sender per target at a time.

use std::os::unix::fs::PermissionsExt;

use crate::support::*;

#[test]
fn keygen_writes_a_private_key_and_prints_its_fingerprint() {
    let t = Scratch::new("tls-keygen");
    let a = t.dir("a");
    let b = t.dir("b");
    let fa = keygen(&a);
    let fb = keygen(&b);
    assert_ne!(fa, fb, "two identities, one fingerprint");
    let mode = std::fs::metadata(a.join("key.pem"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0, "key.pem readable by others: {mode:o}");
}

#[test]
fn cycles_over_tls_with_pinned_fingerprints() {
    let t = Scratch::new("tls-cycles");
    let ids = TlsPair::new(&t);
    let src = t.path("source.img");
    let tgt = t.path("target.img");
    let len = 16 * MIB;
    write_random_file(&src, len, 201);
    let rstate = t.dir("state-receiver");
    let sstate = t.dir("state-sender");
    let mut rargs = ids.receiver_args();
    rargs.push("--create".into());
    let receiver = Receiver::start(&tgt, &rstate, &rargs);
    let sargs = ids.sender_args();
    let sargs: Vec<&str> = sargs.iter().map(String::as_str).collect();

    let mut rng = Rng::new(202);
    let mut before = read_all(&src);
    for generation in 1..=3u64 {
        if generation > 1 {
            random_writes(&src, &mut rng, 10, 64, 200 * KIB);
        }
        let after = read_all(&src);
        let c = send_once(s(&src), &receiver.url(), &sstate, &sargs);
        assert_eq!(c.generation, generation, "{:?}", c.raw);
        if generation == 1 {
            assert!(c.bytes_sent > 0, "{:?}", c.raw);
        } else {
            assert_eq!(
                c.blocks_changed,
                changed_blocks(&before, &after, BLOCK).len() as u64,
                "{:?}",
                c.raw
            );
        }
        assert_identical(&src, &tgt);
        before = after;
    }
    assert_receiver_consistent(&status_entry(&rstate, "receiver"), 3);
}

/// A receiver for `tgt` that allows only `ids`' sender, plus the target's current content.
fn receiver_for_dirty_target(t: &Scratch, ids: &TlsPair, len: u64) -> (Receiver, Vec<u8>) {
    let tgt = t.path("target.img");
    let content = Rng::new(299).bytes(len as usize);
    std::fs::write(&tgt, &content).unwrap();
    let receiver = Receiver::start(&tgt, &t.dir("state-receiver"), &ids.receiver_args());
    (receiver, content)
}

#[test]
fn sender_refuses_a_receiver_with_another_fingerprint() {
    let t = Scratch::new("tls-wrong-peer");
    let ids = TlsPair::new(&t);
    let other = keygen(&t.dir("id-other"));
    let src = t.path("source.img");
    write_random_file(&src, 4 * MIB, 211);
    let (receiver, before) = receiver_for_dirty_target(&t, &ids, 4 * MIB);

    // Well-formed but wrong: the receiver's certificate is not the pinned one.
    let mut args = send_args(s(&src), &receiver.url(), &t.dir("state-sender"));
    args.extend([
        "--once".into(),
        "--identity".into(),
        s(&ids.sender_dir).into(),
        "--peer".into(),
        other.clone(),
    ]);
    let out = run(&args);
    out.assert_error(1, &[]);
    assert!(
        out.json_lines().is_empty(),
        "no cycle may be reported\n{out:?}"
    );
    assert_content(
        &t.path("target.img"),
        &before,
        "target after a refused receiver",
    );
}

#[test]
fn receiver_refuses_an_unknown_sender_and_keeps_serving() {
    let t = Scratch::new("tls-intruder");
    let ids = TlsPair::new(&t);
    let intruder = t.dir("id-intruder");
    let intruder_fp = keygen(&intruder);
    let src = t.path("source.img");
    let len = 4 * MIB;
    write_random_file(&src, len, 221);
    let (receiver, before) = receiver_for_dirty_target(&t, &ids, len);

    // The intruder pins the right receiver but is not in --allow-peer.
    let mut args = send_args(s(&src), &receiver.url(), &t.dir("state-intruder"));
    args.extend([
        "--once".into(),
        "--identity".into(),
        s(&intruder).into(),
        "--peer".into(),
        ids.receiver_fp.clone(),
    ]);
    let out = run(&args);
    out.assert_error(1, &[]);
    assert!(out.json_lines().is_empty(), "{out:?}");
    assert_content(
        &t.path("target.img"),
        &before,
        "target after a refused sender",
    );
    let mut receiver = receiver;
    assert!(
        receiver.proc.try_wait().is_none(),
        "a refused peer must not stop the receiver\n{}",
        receiver.proc.describe()
    );
    // The receiver names the refused fingerprint in its log (it may log after the sender quit).
    receiver.proc.wait_line(
        Stream::Stderr,
        READY_TIMEOUT,
        "a log line naming the refused fingerprint",
        |l| l.contains(&intruder_fp),
    );

    // The allowed sender still gets through.
    let sargs = ids.sender_args();
    let sargs: Vec<&str> = sargs.iter().map(String::as_str).collect();
    let c = send_once(s(&src), &receiver.url(), &t.dir("state-sender"), &sargs);
    assert_eq!(c.generation, 1);
    assert_identical(&src, &t.path("target.img"));
}

#[test]
fn second_concurrent_sender_is_refused() {
    let t = Scratch::new("tls-busy");
    let ids = TlsPair::new(&t);
    let src = t.path("source.img");
    let tgt = t.path("target.img");
    write_random_file(&src, 64 * MIB, 231);
    let rstate = t.dir("state-receiver");
    let mut rargs = ids.receiver_args();
    rargs.push("--create".into());
    let receiver = Receiver::start(&tgt, &rstate, &rargs);

    let mut first_args = send_args(s(&src), &receiver.url(), &t.dir("state-first"));
    first_args.extend(["--once", "--compress-level", "1"].map(String::from));
    first_args.extend(ids.sender_args());
    let mut first = Proc::blkmirror("first sender", &first_args);
    // The first sender is left frozen mid-cycle, so the overlap is certain, not a race.
    freeze_mid_cycle(&rstate, &mut first, || true);

    let mut second_args = send_args(s(&src), &receiver.url(), &t.dir("state-second"));
    second_args.push("--once".into());
    second_args.extend(ids.sender_args());
    let out = run(&second_args);
    out.assert_error(1, &[]);
    assert!(out.json_lines().is_empty(), "{out:?}");

    first.signal(Signal::SIGCONT);
    let out = first.finish(RUN_TIMEOUT);
    out.assert_success();
    let cycles = out.json_lines();
    assert_eq!(cycles.len(), 1, "{out:?}");
    assert_eq!(Cycle::from_json(&cycles[0]).generation, 1);
    assert_identical(&src, &tgt);
    assert_receiver_consistent(&status_entry(&rstate, "receiver"), 1);
}
