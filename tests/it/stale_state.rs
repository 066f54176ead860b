//! A receiver's state that disagrees with itself or with the sender is not trusted: a state
//! dir restored from a backup (older than the target), a manifest file older than the state
//! record, a sender whose committed root differs from the receiver's for the same generation.
//! Each makes the receiver rebuild its manifest by hashing the target, so the cycle ships what
//! the target really lacks. Each scenario reverts a block of the source to its content of an
//! older generation: trusting the stale manifest would skip that block and commit a target
//! that differs from the source as "consistent". A file target written, truncated or
//! replaced behind the receiver's back is seen by its fingerprint (size, inode, mtime, ctime)
//! and re-hashed. A generation counter at its maximum is refused with one clear line and the
//! target left as it was.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::support::*;

/// The receiver's state dir for the one target under `state` (`STATE/targets/<key>/`).
fn receiver_dir(state: &Path) -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(state.join("targets"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(dirs.len(), 1, "one target: {dirs:?}");
    dirs.remove(0)
}

fn copy_files(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            std::fs::copy(&path, to.join(path.file_name().unwrap())).unwrap();
        }
    }
}

fn read_block(path: &Path, index: u64) -> Vec<u8> {
    let mut buf = vec![0u8; BLOCK as usize];
    std::fs::File::open(path)
        .unwrap()
        .read_exact_at(&mut buf, index * BLOCK)
        .unwrap();
    buf
}

fn write_block(path: &Path, index: u64, data: &[u8]) {
    let file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    file.write_all_at(data, index * BLOCK).unwrap();
    file.sync_all().unwrap();
}

/// Mirrors generation 1, keeps a copy of the receiver's files (`backup`), changes block 3 and
/// mirrors generation 2, then calls `tamper(receiver_dir, backup)` and reverts block 3 of the
/// source to its generation-1 content. Returns the next cycle's report, after checking that the
/// target equals the source and that the receiver rebuilt its manifest (target "unknown").
fn stale_then_cycle(name: &str, tamper: impl FnOnce(&Path, &Path)) -> Cycle {
    let t = Scratch::new(name);
    let (src, tgt, state) = (t.path("src.img"), t.path("tgt.img"), t.dir("state"));
    write_random_file(&src, 2 * MIB, 131);
    let first = send_once(s(&src), s(&tgt), &state, &[]);
    let receiver = receiver_dir(&state);
    let backup = t.dir("backup");
    copy_files(&receiver, &backup);

    let original = read_block(&src, 3);
    write_block(&src, 3, &Rng::new(132).bytes(BLOCK as usize));
    let second = send_once(s(&src), s(&tgt), &state, &[]);
    assert_eq!(second.blocks_changed, 1);
    assert!(second.generation > first.generation);

    tamper(&receiver, &backup);
    write_block(&src, 3, &original);
    let third = send_once(s(&src), s(&tgt), &state, &[]);
    assert_identical(&src, &tgt);
    assert_eq!(
        third.raw["target_condition"], "unknown",
        "the receiver rebuilt its manifest: {:?}",
        third.raw
    );
    assert_eq!(third.blocks_changed, 1, "exactly block 3: {:?}", third.raw);
    assert_receiver_consistent(&status_entry(&state, "receiver"), third.generation);
    third
}

#[test]
fn a_receiver_state_restored_from_a_backup_is_not_trusted() {
    stale_then_cycle("stale-restored", |receiver, backup| {
        std::fs::remove_dir_all(receiver).unwrap();
        copy_files(backup, receiver);
    });
}

#[test]
fn a_manifest_older_than_the_state_record_is_not_trusted() {
    stale_then_cycle("stale-manifest", |receiver, backup| {
        std::fs::copy(backup.join("manifest"), receiver.join("manifest")).unwrap();
    });
}

#[test]
fn a_committed_root_that_differs_from_the_senders_is_not_trusted() {
    // The receiver's state and manifest say generation 2 with another root than the sender
    // committed there: as if a second sender (another state dir) had written this target.
    stale_then_cycle("stale-root", |receiver, _| {
        let path = receiver.join("state.json");
        let mut state: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        state["committed_root"] = serde_json::Value::String("ab".repeat(32));
        std::fs::write(&path, serde_json::to_vec(&state).unwrap()).unwrap();
    });
}

#[test]
fn a_generation_counter_at_its_maximum_is_refused_and_the_target_left_alone() {
    let t = Scratch::new("stale-generation-max");
    let (src, tgt, state) = (t.path("src.img"), t.path("tgt.img"), t.dir("state"));
    write_random_file(&src, MIB, 133);
    send_once(s(&src), s(&tgt), &state, &[]);
    let path = receiver_dir(&state).join("state.json");
    let mut record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    record["committed_generation"] = serde_json::Value::from(u64::MAX);
    std::fs::write(&path, serde_json::to_vec(&record).unwrap()).unwrap();
    write_block(&src, 2, &Rng::new(134).bytes(BLOCK as usize));
    let before = read_all(&tgt);

    let mut args = send_args(s(&src), s(&tgt), &state);
    args.push("--once".into());
    let out = run(&args);
    out.assert_error(1, &["generation counter", "maximum"]);
    assert_eq!(read_all(&tgt), before, "the target is untouched");
}

/// One cycle, then `damage(target)`, then a cycle that must find the target changed (its
/// fingerprint), re-hash it and ship what it lacks.
fn damaged_file_target(name: &str, damage: impl FnOnce(&Path)) {
    let t = Scratch::new(name);
    let (src, tgt, state) = (t.path("src.img"), t.path("tgt.img"), t.dir("state"));
    write_random_file(&src, 2 * MIB, 141);
    send_once(s(&src), s(&tgt), &state, &[]);
    damage(&tgt);
    let next = send_once(s(&src), s(&tgt), &state, &[]);
    assert_identical(&src, &tgt);
    assert_eq!(
        next.raw["target_condition"], "unknown",
        "the receiver re-hashed its target: {:?}",
        next.raw
    );
    assert!(next.blocks_changed > 0, "{:?}", next.raw);
    assert_receiver_consistent(&status_entry(&state, "receiver"), next.generation);
}

/// (mtime, ctime) of `path` in nanoseconds.
fn stamps(path: &Path) -> (i64, i64) {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).unwrap();
    (
        meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
        meta.ctime() * 1_000_000_000 + meta.ctime_nsec(),
    )
}

#[test]
fn a_file_target_written_behind_the_receivers_back_is_rehashed() {
    damaged_file_target("stale-written", |tgt| {
        // The kernel stamps writes from a coarse clock: a write in the same tick as the
        // receiver's last one leaves the times as they were (the case the fingerprint cannot
        // see, docs/format.md). Write again until the times show it, as any later write would.
        let before = stamps(tgt);
        for attempt in 0.. {
            write_block(tgt, 7, &Rng::new(142).bytes(BLOCK as usize));
            if stamps(tgt) != before {
                break;
            }
            assert!(attempt < 5000, "the file's times never changed");
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    });
}

#[test]
fn a_file_target_truncated_behind_the_receivers_back_is_rehashed() {
    damaged_file_target("stale-truncated", |tgt| {
        let file = std::fs::OpenOptions::new().write(true).open(tgt).unwrap();
        file.set_len(MIB).unwrap();
    });
}

#[test]
fn a_file_target_replaced_behind_the_receivers_back_is_rehashed() {
    damaged_file_target("stale-replaced", |tgt| {
        let copy = tgt.with_extension("new");
        std::fs::copy(tgt, &copy).unwrap();
        write_block(&copy, 1, &Rng::new(143).bytes(BLOCK as usize));
        std::fs::rename(&copy, tgt).unwrap();
    });
}

/// A source that shrank: the target is cut to the new size only at the commit, so a cycle
/// killed midway leaves the target's tail in place (and its state mid-cycle), and the next
/// cycle converges on the smaller size.
#[test]
fn a_shrinking_cycle_killed_midway_leaves_the_targets_tail() {
    let t = Scratch::new("stale-shrink");
    let (src, tgt, state) = (t.path("src.img"), t.path("tgt.img"), t.dir("state"));
    write_random_file(&src, 32 * MIB, 151);
    send_once(s(&src), s(&tgt), &state, &["--block-size", "4K"]);
    let tail = read_all(&tgt)[24 * MIB as usize..].to_vec();
    let before = read_block(&tgt, 0);
    std::fs::remove_file(&src).unwrap();
    write_random_file(&src, 24 * MIB, 152);

    let mut args = send_args(s(&src), s(&tgt), &state);
    args.extend(["--once", "--block-size", "4K"].map(String::from));
    // Each 8 MiB chunk of the scan is held 4 s; 4 KiB blocks ship chunk by chunk.
    let env = [("BLKMIRROR_FAULT_SCAN_DELAY_MS", "4000")];
    let mut sender = Proc::blkmirror_env("sender", &args, &env);
    // The first changes landed: the cycle is past preparing the target.
    wait_for(READY_TIMEOUT, "the first changes to land", || {
        (read_block(&tgt, 0) != before).then_some(())
    });
    sender.kill9();
    assert_eq!(
        size_of(&tgt),
        32 * MIB,
        "the target was cut before the commit"
    );
    assert_eq!(
        read_all(&tgt)[24 * MIB as usize..],
        tail[..],
        "its tail is intact"
    );
    assert_eq!(status_entry(&state, "receiver")["condition"], "mid-cycle");

    let next = send_once(s(&src), s(&tgt), &state, &["--block-size", "4K"]);
    assert_identical(&src, &tgt);
    assert_receiver_consistent(&status_entry(&state, "receiver"), next.generation);
}

/// `status --json` of `state`, which must exit `code`, parsed.
fn status_with_code(state: &Path, code: i32) -> Vec<serde_json::Value> {
    let out = run(&["status", "--state-dir", s(state), "--json"]);
    out.assert_code(code);
    serde_json::from_str::<serde_json::Value>(&out.stdout_text())
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

/// A receiver record damaged by `damage(state.json)`: `status` lists it as unreadable next to
/// the sender's record and exits 1; the next cycle treats the target as unknown (re-hashes
/// it), converges, and writes a good record again.
fn damaged_receiver_record(name: &str, damage: impl FnOnce(&Path)) {
    let t = Scratch::new(name);
    let (src, tgt, state) = (t.path("src.img"), t.path("tgt.img"), t.dir("state"));
    write_random_file(&src, 2 * MIB, 161);
    send_once(s(&src), s(&tgt), &state, &[]);
    damage(&receiver_dir(&state).join("state.json"));

    let entries = status_with_code(&state, 1);
    let roles: Vec<(&str, &str)> = entries
        .iter()
        .map(|e| {
            (
                e["role"].as_str().unwrap(),
                e["condition"].as_str().unwrap_or("-"),
            )
        })
        .collect();
    assert!(roles.contains(&("receiver", "unreadable")), "{entries:?}");
    assert!(
        roles.iter().any(|(role, _)| *role == "sender"),
        "{entries:?}"
    );

    write_block(&src, 4, &Rng::new(162).bytes(BLOCK as usize));
    let next = send_once(s(&src), s(&tgt), &state, &[]);
    assert_eq!(next.raw["target_condition"], "unknown", "{:?}", next.raw);
    assert_identical(&src, &tgt);
    status_with_code(&state, 0);
    assert_receiver_consistent(&status_entry(&state, "receiver"), next.generation);
}

#[test]
fn a_receiver_record_that_does_not_parse_means_an_unknown_target() {
    damaged_receiver_record("stale-garbage", |path| {
        let mut bytes = std::fs::read(path).unwrap();
        bytes[10] ^= 0x5a;
        bytes.truncate(bytes.len() / 2);
        std::fs::write(path, bytes).unwrap();
    });
}

#[test]
fn a_receiver_record_of_an_unknown_format_means_an_unknown_target() {
    damaged_receiver_record("stale-format", |path| {
        let mut record: serde_json::Value =
            serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
        record["format"] = 2.into();
        std::fs::write(path, serde_json::to_vec(&record).unwrap()).unwrap();
    });
}

#[test]
fn a_damaged_sender_record_is_listed_as_unreadable_and_rewritten_by_the_next_cycle() {
    let t = Scratch::new("stale-sender-record");
    let (src, tgt, state) = (t.path("src.img"), t.path("tgt.img"), t.dir("state"));
    write_random_file(&src, MIB, 163);
    send_once(s(&src), s(&tgt), &state, &[]);
    let sources = state.join("sources");
    let dir = std::fs::read_dir(&sources)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let record = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "json"))
        .unwrap();
    std::fs::write(&record, b"{\"source\": ").unwrap();

    let entries = status_with_code(&state, 1);
    assert!(
        entries
            .iter()
            .any(|e| e["role"] == "sender" && e["condition"] == "unreadable"),
        "{entries:?}"
    );
    assert!(entries
        .iter()
        .any(|e| e["role"] == "receiver" && e["condition"] == "consistent"));
    let text = run(&["status", "--state-dir", s(&state)]);
    text.assert_code(1);
    assert!(text.stdout_text().contains("unreadable"), "{text:?}");

    send_once(s(&src), s(&tgt), &state, &[]);
    status_with_code(&state, 0);
}

/// The one-writer rule belongs to the target file, not to a state dir or a path: while a
/// cycle writes the target, a second sender reaching the same file through a symlink and
/// another state dir is refused with one clear line, and the first cycle's result stands.
#[test]
fn a_second_receiver_of_the_same_file_is_refused_whatever_the_path_or_state_dir() {
    let t = Scratch::new("stale-two-writers");
    let (src, tgt, state) = (t.path("src.img"), t.path("tgt.img"), t.dir("state"));
    write_random_file(&src, 32 * MIB, 171);
    send_once(s(&src), s(&tgt), &state, &["--block-size", "4K"]);
    let before = read_block(&tgt, 0);
    write_random_file(&src, 32 * MIB, 172);
    let alias = t.path("alias.img");
    std::os::unix::fs::symlink(&tgt, &alias).unwrap();
    let other = t.path("other.img");
    write_random_file(&other, 32 * MIB, 173);

    let mut args = send_args(s(&src), s(&tgt), &state);
    args.extend(["--once", "--block-size", "4K"].map(String::from));
    let env = [("BLKMIRROR_FAULT_SCAN_DELAY_MS", "2000")];
    let first = Proc::blkmirror_env("first", &args, &env);
    wait_for(READY_TIMEOUT, "the first sender's changes to land", || {
        (read_block(&tgt, 0) != before).then_some(())
    });
    let mut second = send_args(s(&other), s(&alias), &t.dir("state-b"));
    second.push("--once".into());
    let out = run(&second);
    out.assert_error(1, &["another blkmirror receiver"]);

    first.finish(RUN_TIMEOUT).assert_success();
    assert_identical(&src, &tgt);
}

/// A block device's node says nothing of its content, so a device target overwritten behind
/// the receiver's back (another disk at the same node, a restore) is seen by the blocks the
/// receiver samples at each cycle start: every block differs here, so any sample shows it.
#[test]
fn a_device_target_overwritten_behind_the_receivers_back_is_rehashed() {
    let t = Scratch::new("stale-device");
    let (src, state) = (t.path("src.img"), t.dir("state"));
    write_random_file(&src, 4 * MIB, 181);
    let backing = t.path("tgt.img");
    std::fs::File::create(&backing)
        .unwrap()
        .set_len(4 * MIB)
        .unwrap();
    let dev = LoopDevice::attach(&backing);
    send_once(s(&src), dev.as_str(), &state, &[]);
    let device = std::fs::OpenOptions::new()
        .write(true)
        .open(dev.path())
        .unwrap();
    device
        .write_all_at(&Rng::new(182).bytes(4 * MIB as usize), 0)
        .unwrap();
    device.sync_all().unwrap();
    drop(device);

    let next = send_once(s(&src), dev.as_str(), &state, &[]);
    assert_eq!(next.raw["target_condition"], "unknown", "{:?}", next.raw);
    assert_identical(&src, dev.path());
    assert_receiver_consistent(&status_entry(&state, "receiver"), next.generation);
}
