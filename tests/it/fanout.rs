//! Fan-out, `send SOURCE DEST1 DEST2 ...`: one snapshot and one read per cycle, shipped to a
//! local file, a TLS receiver and an ssh receiver, each against its own base. A destination
//! that is down does not stop the others; when it returns it is sent exactly its own
//! difference (never a full resend); a slow destination does not hold a fast one back; with
//! the reflink tracker a lagging destination catches up without a full read.

use std::collections::BTreeSet;

use crate::support::*;

/// The `--json` reports of one fan-out run, by destination.
fn reports(out: &Output) -> Vec<(String, Cycle)> {
    out.json_lines()
        .iter()
        .map(|v| {
            let dest = v["dest"]
                .as_str()
                .expect("a report names its dest")
                .to_string();
            (dest, Cycle::from_json(v))
        })
        .collect()
}

#[track_caller]
fn report_for<'a>(all: &'a [(String, Cycle)], dest: &str) -> &'a Cycle {
    let found: Vec<&Cycle> = all
        .iter()
        .filter(|(d, _)| d == dest)
        .map(|(_, c)| c)
        .collect();
    assert_eq!(found.len(), 1, "one report for {dest} expected: {all:?}");
    found[0]
}

#[test]
fn fan_out_to_file_tls_and_ssh_with_tls_down_for_cycles_3_to_6() {
    let t = Scratch::new("fanout-three");
    let pair = TlsPair::new(&t);
    let sshd = Sshd::start(&t.dir("sshd"));
    let src = t.path("source.img");
    write_random_file(&src, 16 * MIB, 1101);
    let (file_tgt, tls_tgt, ssh_tgt) = (t.path("file.img"), t.path("tls.img"), t.path("ssh.img"));
    let tls_state = t.dir("state-tls");
    let mut receiver_args = pair.receiver_args();
    receiver_args.push("--create".into());
    let mut receiver = Some(Receiver::start(&tls_tgt, &tls_state, &receiver_args));
    let addr = receiver.as_ref().unwrap().addr;
    let tls_url = format!("tls://{addr}");
    let ssh_url = sshd.url(&ssh_tgt);
    let file_url = s(&file_tgt).to_string();
    let state = t.dir("state-sender");
    let mut rng = Rng::new(1102);
    // What the TLS target holds while it is down: the source as of its last commit.
    let mut tls_holds = Vec::new();
    for cycle in 1..=10u64 {
        let before = read_all(&src);
        if cycle > 1 {
            random_writes(&src, &mut rng, 6, 4 * KIB, 64 * KIB);
        }
        let now = read_all(&src);
        let this_cycle = changed_blocks(&before, &now, BLOCK).len() as u64;
        if cycle == 3 {
            receiver.take().unwrap().proc.kill9();
        }
        if cycle == 7 {
            receiver = Some(Receiver::restart_at(
                &tls_tgt,
                &tls_state,
                addr,
                &receiver_args,
            ));
        }
        let mut args = send_args(s(&src), &file_url, &state);
        args.insert(3, tls_url.clone());
        args.insert(4, ssh_url.clone());
        args.extend([
            "--once".into(),
            "--create".into(),
            "--peer-timeout".into(),
            "10s".into(),
        ]);
        args.extend(pair.sender_args());
        args.extend([
            "--ssh-command".into(),
            sshd.ssh_command(),
            "--remote-command".into(),
            bin().into(),
            "--remote-state-dir".into(),
            s(&sshd.remote_state).into(),
        ]);
        let out = run(&args);
        let all = reports(&out);
        let down = (3..=6).contains(&cycle);
        if down {
            let line = out.assert_error(1, &["1 of 3 destinations did not commit", &tls_url]);
            assert!(
                !line.contains(&ssh_url) && !line.contains(&file_url),
                "{line}"
            );
            assert_eq!(all.len(), 2, "the others commit while TLS is down: {out:?}");
        } else {
            out.assert_success();
            assert_eq!(all.len(), 3, "{out:?}");
        }
        for dest in [&file_url, &ssh_url] {
            let report = report_for(&all, dest);
            assert_eq!(
                report.generation, cycle,
                "{dest} commits every cycle: {out:?}"
            );
            if cycle > 1 {
                assert_eq!(report.blocks_changed, this_cycle, "{dest}: {out:?}");
            }
        }
        assert_identical(&src, &file_tgt);
        assert_identical(&src, &ssh_tgt);
        if cycle == 2 {
            tls_holds = now.clone();
        }
        if cycle == 7 {
            // The lagging TLS target is sent exactly what differs from what it holds.
            let behind: BTreeSet<u64> = changed_blocks(&tls_holds, &now, BLOCK);
            let tls = report_for(&all, &tls_url);
            assert_eq!(tls.generation, 3, "{out:?}");
            assert_eq!(tls.blocks_changed, behind.len() as u64, "{out:?}");
            assert!(
                behind.len() as u64 > this_cycle,
                "the test must make the TLS target lag by more than one cycle"
            );
            assert!(
                tls.bytes_sent < 16 * MIB / 2,
                "catching up is not a full resend: {out:?}"
            );
        }
        if !down {
            assert_identical(&src, &tls_tgt);
        }
    }
}

#[test]
fn a_slow_destination_does_not_hold_a_fast_one_back() {
    let t = Scratch::new("fanout-slow");
    let pair = TlsPair::new(&t);
    let src = t.path("source.img");
    let len = 96 * MIB;
    write_random_file(&src, len, 1111);
    let (fast, slow) = (t.path("fast.img"), t.path("slow.img"));
    let mut receiver_args = pair.receiver_args();
    receiver_args.push("--create".into());
    let receiver = Receiver::start(&slow, &t.dir("state-tls"), &receiver_args);
    let state = t.dir("state-sender");
    let mut args = send_args(s(&src), s(&fast), &state);
    args.insert(3, receiver.url());
    // 1 MB/s to the TLS receiver: it cannot have 96 MiB before 90 s have passed.
    args.extend(["--once".into(), "--bwlimit".into(), "1M".into()]);
    args.extend(pair.sender_args());
    let mut sender = Proc::blkmirror("sender", &args);
    wait_for(
        std::time::Duration::from_secs(80),
        "the fast destination's commit while the slow one is still being sent",
        || {
            assert!(sender.try_wait().is_none(), "{}", sender.describe());
            status_entries(&state, "receiver")
                .iter()
                .any(|e| e["committed_generation"] == 1 && e["condition"] == "consistent")
                .then_some(())
        },
    );
    assert!(
        sender.try_wait().is_none(),
        "the slow destination is still being sent"
    );
    assert_identical(&src, &fast);
    assert!(
        allocated(&slow) < len / 2,
        "the slow destination got far less so far"
    );
    sender.signal(Signal::SIGTERM);
    let status = sender.wait_exit(std::time::Duration::from_secs(60));
    assert!(
        status.success(),
        "a requested stop exits 0: {}",
        sender.describe()
    );
}

#[test]
fn with_the_reflink_tracker_a_lagging_destination_catches_up_without_a_full_read() {
    let t = Scratch::new("fanout-reflink");
    let fs = Filesystem::new(&t, "xfs");
    let pair = TlsPair::new(&t);
    let src = fs.path("source.img");
    let len = 64 * MIB;
    write_random_file(&src, len, 1121);
    let (local, remote) = (t.path("local.img"), t.path("remote.img"));
    let tls_state = t.dir("state-tls");
    let mut receiver_args = pair.receiver_args();
    receiver_args.push("--create".into());
    let mut receiver = Some(Receiver::start(&remote, &tls_state, &receiver_args));
    let addr = receiver.as_ref().unwrap().addr;
    let state = fs.dir("state-sender");
    let mut rng = Rng::new(1122);
    let send = || {
        let mut args = send_args(s(&src), s(&local), &state);
        args.insert(3, format!("tls://{addr}"));
        args.extend(["--once".into(), "--snapshot".into(), "reflink".into()]);
        args.extend(["--peer-timeout".into(), "10s".into()]);
        args.extend(pair.sender_args());
        run(&args)
    };
    send().assert_success();
    let remote_holds = read_all(&src);
    receiver.take().unwrap().proc.kill9();
    random_writes(&src, &mut rng, 8, 4, 16 * KIB);
    send().assert_code(1);
    receiver = Some(Receiver::restart_at(
        &remote,
        &tls_state,
        addr,
        &receiver_args,
    ));
    let local_holds = read_all(&src);
    random_writes(&src, &mut rng, 8, 4, 16 * KIB);
    let out = send();
    out.assert_success();
    let all = reports(&out);
    let caught_up = report_for(&all, &format!("tls://{addr}"));
    let behind = changed_blocks(&remote_holds, &read_all(&src), BLOCK).len() as u64;
    assert_eq!(caught_up.blocks_changed, behind, "{out:?}");
    assert!(behind > 0);
    assert_eq!(
        caught_up.raw["full_scan_reason"],
        serde_json::Value::Null,
        "{out:?}"
    );
    assert!(
        caught_up.bytes_read <= (behind + 16) * BLOCK,
        "the catch-up reads only what differs, not the volume: {out:?}"
    );
    // Both refine what the one tracked read hands them: each ships only the 4 KiB that differ
    // from what it holds, except in blocks it holds as zeros (refinement needs data to compare
    // with: those ship whole).
    let now = read_all(&src);
    let shipped = |held: &[u8]| -> u64 {
        changed_blocks(held, &now, BLOCK)
            .into_iter()
            .map(|block| {
                let range = (block * BLOCK) as usize..((block + 1) * BLOCK) as usize;
                match held[range.clone()].iter().all(|&b| b == 0) {
                    true => BLOCK,
                    false => {
                        changed_blocks(&held[range.clone()], &now[range], 4096).len() as u64 * 4096
                    }
                }
            })
            .sum()
    };
    let local_report = report_for(&all, s(&local));
    assert_eq!(
        local_report.raw["bytes_changed"],
        shipped(&local_holds),
        "{out:?}"
    );
    assert_eq!(
        caught_up.raw["bytes_changed"],
        shipped(&remote_holds),
        "{out:?}"
    );
    assert_identical(&src, &local);
    assert_identical(&src, &remote);
    drop(receiver);
}

#[test]
fn bad_fan_out_arguments_get_one_line() {
    let t = Scratch::new("fanout-bad");
    let src = t.path("source.img");
    write_random_file(&src, MIB, 1131);
    let state = t.dir("state");
    let dest = t.path("a.img");
    let mut args = send_args(s(&src), s(&dest), &state);
    args.insert(3, s(&dest).into());
    args.push("--once".into());
    run(&args).assert_error(2, &["given twice"]);
    let id = t.dir("id");
    keygen(&id);
    let fp = format!("sha256:{}", "0".repeat(64));
    let mut args = send_args(s(&src), "tls://127.0.0.1:9/a", &state);
    args.insert(3, "tls://127.0.0.1:9/b".into());
    args.insert(4, "tls://127.0.0.1:9/c".into());
    args.extend(["--once".into(), "--identity".into(), s(&id).into()]);
    args.extend(["--peer".into(), fp.clone(), "--peer".into(), fp]);
    run(&args).assert_error(2, &["--peer is given 2 times for 3 tls:// destinations"]);
    assert!(!dest.exists(), "nothing written");
}
