//! Chains, A -> B -> C: a TLS receiver B started with `--forward tls://C` ships each committed
//! generation on to C, sending the blocks it wrote since C's last commit, without rescanning
//! its target. With C down for two cycles, C's first commit after it returns carries the union
//! of the missed generations; C always ends equal to A's source.

use std::time::Duration;

use crate::support::*;

#[test]
fn a_chain_forwards_every_generation_and_catches_up_after_the_next_hop_was_down() {
    let t = Scratch::new("chain");
    let (id_a, id_b, id_c) = (t.dir("id-a"), t.dir("id-b"), t.dir("id-c"));
    let (fp_a, fp_b, fp_c) = (keygen(&id_a), keygen(&id_b), keygen(&id_c));
    let (b_img, c_img) = (t.path("b.img"), t.path("c.img"));
    let c_state = t.dir("state-c");
    let c_args = vec![
        "--identity".to_string(),
        s(&id_c).into(),
        "--allow-peer".into(),
        fp_b.clone(),
        "--create".into(),
    ];
    let mut c = Some(Receiver::start(&c_img, &c_state, &c_args));
    let c_addr = c.as_ref().unwrap().addr;
    let b_args = vec![
        "--identity".to_string(),
        s(&id_b).into(),
        "--allow-peer".into(),
        fp_a.clone(),
        "--create".into(),
        "--forward".into(),
        format!("tls://{c_addr}"),
        "--forward-peer".into(),
        fp_c.clone(),
        "--peer-timeout".into(),
        "10s".into(),
    ];
    let mut b = Receiver::start(&b_img, &t.dir("state-b"), &b_args);
    let src = t.path("source.img");
    write_random_file(&src, 16 * MIB, 1201);
    let a_state = t.dir("state-a");
    let mut rng = Rng::new(1202);
    let mut c_holds = Vec::new();
    for cycle in 1..=10u64 {
        let before = read_all(&src);
        if cycle > 1 {
            random_writes(&src, &mut rng, 5, 4 * KIB, 64 * KIB);
        }
        let now = read_all(&src);
        if cycle == 4 {
            c.take().unwrap().proc.kill9();
        }
        if cycle == 6 {
            c = Some(Receiver::restart_at(&c_img, &c_state, c_addr, &c_args));
        }
        let mut args = send_args(s(&src), &b.url(), &a_state);
        args.extend(["--once".into(), "--identity".into(), s(&id_a).into()]);
        args.extend(["--peer".into(), fp_b.clone()]);
        run(&args).assert_success();
        assert_identical(&src, &b_img);
        let what = format!("B's forward of generation {cycle}");
        let line = b
            .proc
            .wait_line(Stream::Stderr, Duration::from_secs(60), &what, |l| {
                (l.contains("forwarded") || l.contains("forward failed"))
                    && l.contains(&format!(" generation={cycle} "))
            });
        let down = (4..=5).contains(&cycle);
        assert_eq!(line.contains("forward failed"), down, "{line}");
        if down {
            continue;
        }
        assert_identical(&src, &c_img);
        if cycle > 1 {
            // Only what B wrote since C's last commit is read and sent.
            let behind = changed_blocks(&c_holds, &now, BLOCK).len() as u64;
            assert_eq!(log_number(&line, "blocks_changed"), behind, "{line}");
            assert!(
                log_number(&line, "bytes_read") <= behind * BLOCK,
                "the forward reads only the written blocks: {line}"
            );
            if cycle == 6 {
                let last = changed_blocks(&before, &now, BLOCK).len() as u64;
                assert!(behind > last, "C must have missed generations 4 and 5");
            }
        }
        c_holds = now;
    }
    // C's generation is visible in B's status: a sender entry from B's target to C.
    let senders = status_entries(&t.path("state-b"), "sender");
    assert!(
        senders.iter().any(|e| e["generation"] == 8
            && e["dest"]
                .as_str()
                .is_some_and(|d| d.contains(&c_addr.to_string()))),
        "{senders:?}"
    );
    drop(c);
}
