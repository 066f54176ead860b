//! The receiver's safety net: a target changed outside blkmirror (junk written straight into
//! it) is found by `blkmirror scrub` (exit 1, status "drifted"), and the next cycle ships
//! exactly the blocks that differ and leaves the target identical and consistent; a clean
//! target scrubs clean (exit 0); `send --rehash-target` asks the receiver to scrub before the
//! cycle. On a file target and on a loop-device target.

use std::os::unix::fs::FileExt;

use crate::support::*;

fn scrub(target: &std::path::Path, state: &std::path::Path) -> Output {
    run(&["scrub", s(target), "--state-dir", s(state)])
}

fn junk(target: &std::path::Path, offset: u64) {
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(target)
        .unwrap();
    file.write_all_at(&Rng::new(offset).bytes(4096), offset)
        .unwrap();
    file.sync_all().unwrap();
}

/// Mirrors, damages the target behind the receiver's back, scrubs, repairs. (A plain cycle
/// may see such damage too, by the file's fingerprint or a sampled block: stale_state.rs; a
/// scrub is what finds a few scattered blocks on a device for sure.)
fn drift_then_repair(src: &std::path::Path, tgt: &std::path::Path, state: &std::path::Path) {
    let first = send_once(s(src), s(tgt), state, &[]);
    scrub(tgt, state).assert_success();

    junk(tgt, 5 * BLOCK + 100);
    junk(tgt, 9 * BLOCK);

    let out = scrub(tgt, state);
    out.assert_code(1);
    assert!(out.stdout_text().contains("2 of"), "{out:?}");
    let entry = status_entry(state, "receiver");
    assert_eq!(entry["condition"], "drifted", "{entry}");
    let repair = send_once(s(src), s(tgt), state, &[]);
    assert_eq!(
        repair.blocks_changed, 2,
        "exactly the damaged blocks: {:?}",
        repair.raw
    );
    assert_eq!(repair.raw["target_condition"], "mid-cycle");
    assert_identical(src, tgt);
    assert_receiver_consistent(&status_entry(state, "receiver"), repair.generation);
    scrub(tgt, state).assert_success();
    assert!(first.generation < repair.generation);
}

#[test]
fn scrub_finds_and_the_next_cycle_repairs_out_of_band_writes_to_a_file() {
    let t = Scratch::new("scrub-file");
    let (src, tgt, state) = (t.path("src.img"), t.path("tgt.img"), t.dir("state"));
    write_random_file(&src, 4 * MIB, 111);
    drift_then_repair(&src, &tgt, &state);
}

#[test]
fn scrub_finds_and_the_next_cycle_repairs_out_of_band_writes_to_a_device() {
    let t = Scratch::new("scrub-loop");
    let src = t.path("src.img");
    write_random_file(&src, 4 * MIB, 112);
    let backing = t.path("tgt.img");
    std::fs::File::create(&backing)
        .unwrap()
        .set_len(4 * MIB)
        .unwrap();
    let tgt = LoopDevice::attach(&backing);
    drift_then_repair(&src, tgt.path(), &t.dir("state"));
}

#[test]
fn rehash_target_on_send_finds_the_drift_in_the_same_cycle() {
    let t = Scratch::new("scrub-rehash");
    let (src, tgt, state) = (t.path("src.img"), t.path("tgt.img"), t.dir("state"));
    write_random_file(&src, 4 * MIB, 113);
    send_once(s(&src), s(&tgt), &state, &[]);
    junk(&tgt, 3 * BLOCK);
    let repair = send_once(s(&src), s(&tgt), &state, &["--rehash-target"]);
    assert_eq!(repair.blocks_changed, 1, "{:?}", repair.raw);
    assert_identical(&src, &tgt);
}

#[test]
fn scrub_without_state_says_it_cannot_tell() {
    let t = Scratch::new("scrub-nostate");
    let tgt = t.path("tgt.img");
    std::fs::write(&tgt, vec![1u8; 65536]).unwrap();
    let out = scrub(&tgt, &t.dir("state"));
    out.assert_error(2, &["cannot scrub", "no state"]);
}

#[test]
fn a_listening_receiver_scrubs_on_its_own_and_the_next_cycle_repairs() {
    let t = Scratch::new("scrub-listen");
    let (src, tgt) = (t.path("src.img"), t.path("tgt.img"));
    let (sstate, rstate) = (t.dir("sender-state"), t.dir("receiver-state"));
    write_random_file(&src, 4 * MIB, 114);
    let tls = TlsPair::new(&t);
    let mut extra = tls.receiver_args();
    extra.extend(["--create", "--scrub-every", "1s"].map(String::from));
    let receiver = Receiver::start(&tgt, &rstate, &extra);
    let sender_args = tls.sender_args();
    let sender_args: Vec<&str> = sender_args.iter().map(String::as_str).collect();
    send_once(s(&src), &receiver.url(), &sstate, &sender_args);
    junk(&tgt, 2 * BLOCK);
    wait_for(
        RUN_TIMEOUT,
        "the receiver's scrub to find the drift",
        || {
            let entry = status_entry(&rstate, "receiver");
            (entry["condition"] == "drifted").then_some(())
        },
    );
    let repair = send_once(s(&src), &receiver.url(), &sstate, &sender_args);
    assert_eq!(repair.blocks_changed, 1, "{:?}", repair.raw);
    assert_identical(&src, &tgt);
}
