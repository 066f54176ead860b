//! The reflink provider on real filesystems (host, no VM): xfs (`mkfs.xfs -m reflink=1`) and
//! btrfs on loop devices, with a writer changing the source while a cycle reads its clone; the
//! fallback next to the source when the state dir is on another filesystem; stale clones of a
//! killed sender removed at the next start (and only ours); refusal on ext4.
//!
//! "Writes during the cycle" is made certain, not likely: the sender is frozen (SIGSTOP) at a
//! moment its clone exists (a clone is only visible under its final name once complete, and is
//! deleted when the cycle ends), the writer starts there, and the sender resumes while it
//! writes. The target must then equal the source as it was before the writer started.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use nix::fcntl::{Flock, FlockArg};

use crate::support::*;

/// `send SRC DEST --once --json --progress never --state-dir STATE EXTRA...` (no `--snapshot`
/// unless in `extra`: the default is auto).
fn send_args(src: &Path, dest: &Path, state: &Path, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = ["send", s(src), s(dest), "--once", "--json"]
        .iter()
        .chain(&["--progress", "never", "--state-dir", s(state)])
        .map(|a| a.to_string())
        .collect();
    args.extend(extra.iter().map(|a| a.to_string()));
    args
}

/// The names in `dir` that start with `prefix`.
fn names_with(dir: &Path, prefix: &str) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .flatten()
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .filter(|n| n.starts_with(prefix))
        .collect();
    names.sort();
    names
}

/// Every blkmirror clone or probe (hidden or not) left in `dir`.
fn leftovers(dir: &Path) -> Vec<String> {
    let mut all = names_with(dir, "blkmirror-");
    all.extend(names_with(dir, ".blkmirror-"));
    all
}

/// Freezes `sender` (SIGSTOP) at a moment a complete clone named `prefix*` exists in `dir`;
/// returns the clone's name with the sender STILL STOPPED. Panics if the sender exits first.
fn stop_while_clone_exists(sender: &mut Proc, dir: &Path, prefix: &str) -> String {
    wait_for(RUN_TIMEOUT, "the sender's clone", || {
        sender.signal(Signal::SIGSTOP);
        if !sender.wait_stopped() {
            panic!(
                "the sender finished before its clone was seen in {}\n{}",
                dir.display(),
                sender.describe()
            );
        }
        if let Some(name) = names_with(dir, prefix).into_iter().next() {
            return Some(name);
        }
        sender.signal(Signal::SIGCONT);
        thread::sleep(Duration::from_millis(1));
        None
    })
}

/// A thread writing 0xEE runs at random places of `path` (fsynced) until stopped.
struct Writer {
    stop: Arc<AtomicBool>,
    writes: Arc<AtomicU64>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Writer {
    fn start(path: &Path, len: u64) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let writes = Arc::new(AtomicU64::new(0));
        let file = OpenOptions::new().write(true).open(path).unwrap();
        let (flag, count) = (stop.clone(), writes.clone());
        let thread = thread::spawn(move || {
            let mut rng = Rng::new(77);
            let run = vec![0xEEu8; 64 * KIB as usize];
            while !flag.load(Ordering::Relaxed) {
                let offset = rng.below(len / run.len() as u64) * run.len() as u64;
                file.write_all_at(&run, offset).unwrap();
                file.sync_data().unwrap();
                count.fetch_add(1, Ordering::Relaxed);
                thread::sleep(Duration::from_millis(2));
            }
        });
        Writer {
            stop,
            writes,
            thread: Some(thread),
        }
    }

    fn writes(&self) -> u64 {
        self.writes.load(Ordering::Relaxed)
    }

    fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap();
        self.writes()
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

const LEN: u64 = 64 * MIB;

/// One cycle of `src` (on a reflink filesystem) to a target in `t` while a writer changes the
/// source; the clone is looked for in `clone_dir` under `prefix`. Checks the target is the
/// source as it was at snapshot time, that the clone is then the one kept for the change
/// tracker (and nothing else is left), and that a second cycle catches up with the writes,
/// keeping its own clone and removing the first.
fn mirror_with_writes_during_cycle(
    t: &Scratch,
    src: &Path,
    state: &Path,
    extra: &[&str],
    clone_dir: &Path,
    prefix: &str,
) {
    write_random_file(src, LEN, 31);
    let before = read_all(src);
    let tgt = t.path("target.img");
    let mut sender = Proc::blkmirror("sender", &send_args(src, &tgt, state, extra));
    let clone = stop_while_clone_exists(&mut sender, clone_dir, prefix);
    let writer = Writer::start(src, LEN);
    wait_for(RUN_TIMEOUT, "the writer's first writes", || {
        (writer.writes() >= 3).then_some(())
    });
    sender.signal(Signal::SIGCONT);
    let out = sender.finish(RUN_TIMEOUT);
    let writes = writer.finish();
    out.assert_success();
    assert_eq!(out.json_lines().len(), 1, "{out:?}");
    assert!(writes >= 3, "the writer made {writes} writes");

    // The target is the clone's content: the source before the writer started.
    assert_content(&tgt, &before, "target after a cycle with writes during it");
    assert_ne!(read_all(src), before, "the writer changed nothing");
    run(&["verify", s(src), s(&tgt)]).assert_code(1);
    assert_eq!(
        kept_snapshots(state),
        vec![clone.clone()],
        "the cycle's clone is kept"
    );
    assert_eq!(leftovers(clone_dir), vec![clone.clone()], "left behind");
    if clone_dir != state.join("snapshots") {
        assert_eq!(leftovers(&state.join("snapshots")), Vec::<String>::new());
    }

    // The next cycle catches up, reading only what the writer changed.
    let out = run(&send_args(src, &tgt, state, extra));
    out.assert_success();
    let report = &out.json_lines()[0];
    assert_eq!(report["tracker"], "reflink-fiemap", "{report}");
    assert_eq!(
        report["full_scan_reason"],
        serde_json::Value::Null,
        "{report}"
    );
    assert!(report["bytes_read"].as_u64().unwrap() < LEN / 2, "{report}");
    assert_identical(src, &tgt);
    run(&["verify", s(src), s(&tgt)]).assert_success();
    let kept = kept_snapshots(state);
    assert_eq!(kept.len(), 1);
    assert_ne!(kept[0], clone, "the first clone was released");
    assert_eq!(leftovers(clone_dir), kept, "left behind");
}

#[test]
fn reflink_on_xfs_reads_the_clone_while_the_source_changes() {
    let t = Scratch::new("reflink-xfs");
    let fs = Filesystem::new(&t, "xfs");
    let state = fs.dir("state");
    let src = fs.path("vm.img");
    let snapshots = state.join("snapshots");
    mirror_with_writes_during_cycle(
        &t,
        &src,
        &state,
        &["--snapshot", "reflink"],
        &snapshots,
        "blkmirror-snap-",
    );
}

#[test]
fn auto_on_btrfs_clones_a_nocow_image() {
    let t = Scratch::new("reflink-btrfs");
    let fs = Filesystem::new(&t, "btrfs");
    let state = fs.dir("state");
    let src = fs.path("vm.img");
    // VM images on btrfs are often NOCOW (chattr +C, set while empty): btrfs only clones
    // between files that agree on it.
    File::create(&src).unwrap();
    sh("chattr", &["+C", s(&src)]);
    let snapshots = state.join("snapshots");
    mirror_with_writes_during_cycle(&t, &src, &state, &[], &snapshots, "blkmirror-snap-");
}

#[test]
fn clones_go_next_to_the_source_when_the_state_dir_is_elsewhere() {
    let t = Scratch::new("reflink-exdev");
    let fs = Filesystem::new(&t, "xfs");
    let images = fs.dir("images");
    let src = images.join("vm.img");
    // The state dir is on the scratch dir's filesystem, not on the xfs mount.
    let state = t.dir("state");
    mirror_with_writes_during_cycle(&t, &src, &state, &[], &images, ".blkmirror-snap-");
    // Only the kept clone, hidden, is left next to the source.
    assert_eq!(names_with(&images, "."), kept_snapshots(&state));
}

#[test]
fn stale_clone_of_a_killed_sender_is_removed_at_next_start_and_only_ours() {
    let t = Scratch::new("reflink-stale");
    let fs = Filesystem::new(&t, "xfs");
    let state = fs.dir("state");
    let snapshots = state.join("snapshots");
    let src = fs.path("vm.img");
    let tgt = t.path("target.img");
    write_random_file(&src, LEN, 41);
    let mut sender = Proc::blkmirror(
        "sender",
        &send_args(&src, &tgt, &state, &["--snapshot", "reflink"]),
    );
    let stale = stop_while_clone_exists(&mut sender, &snapshots, "blkmirror-snap-");
    sender.kill9();
    assert!(snapshots.join(&stale).exists(), "SIGKILL left no clone");

    // Clones of another source and unrelated files must survive the clean-up.
    let foreign = "blkmirror-snap-0000000000000000-1700000000";
    std::fs::write(snapshots.join(foreign), b"another source's clone").unwrap();
    std::fs::write(snapshots.join("keep-me"), b"not ours").unwrap();
    // A clone of ours that another live sender holds (flock) is left alone too.
    let key = stale
        .strip_prefix("blkmirror-snap-")
        .and_then(|rest| rest.split('-').next())
        .unwrap();
    let held = format!("blkmirror-snap-{key}-1");
    std::fs::write(snapshots.join(&held), b"in use").unwrap();
    let holder = Flock::lock(
        File::open(snapshots.join(&held)).unwrap(),
        FlockArg::LockExclusive,
    )
    .unwrap_or_else(|(_, errno)| panic!("flock {held}: {errno}"));

    random_writes(&src, &mut Rng::new(42), 20, 4 * KIB, 256 * KIB);
    let out = run(&send_args(&src, &tgt, &state, &[]));
    out.assert_success();
    assert_identical(&src, &tgt);
    assert!(!snapshots.join(&stale).exists(), "stale clone {stale} kept");
    let mut expected = vec![foreign.to_string(), held.clone(), "keep-me".to_string()];
    expected.extend(kept_snapshots(&state));
    expected.sort();
    assert_eq!(
        names_with(&snapshots, ""),
        expected,
        "the clean-up touched what is not ours, or in use"
    );
    drop(holder);
}

#[test]
fn sigterm_mid_cycle_deletes_the_clone() {
    stop_mid_cycle_deletes_the_clone("reflink-sigterm", Signal::SIGTERM);
}

/// A `send` whose terminal went away (SIGHUP) stops as on SIGTERM instead of dying mid-cycle
/// with its clone left behind.
#[test]
fn sighup_mid_cycle_stops_as_sigterm_does() {
    stop_mid_cycle_deletes_the_clone("reflink-sighup", Signal::SIGHUP);
}

fn stop_mid_cycle_deletes_the_clone(name: &str, stop: Signal) {
    let t = Scratch::new(name);
    let fs = Filesystem::new(&t, "xfs");
    let state = fs.dir("state");
    let snapshots = state.join("snapshots");
    let src = fs.path("vm.img");
    write_random_file(&src, LEN, 61);
    let tgt = t.path("target.img");
    let mut sender = Proc::blkmirror("sender", &send_args(&src, &tgt, &state, &[]));
    let clone = stop_while_clone_exists(&mut sender, &snapshots, "blkmirror-snap-");
    sender.signal(stop);
    sender.signal(Signal::SIGCONT);
    let out = sender.finish(RUN_TIMEOUT);
    // A requested stop is a success (issue 8): exit 0, said on stderr.
    out.assert_success();
    assert!(out.stderr_text().contains("stopped on request"), "{out:?}");
    assert!(
        !snapshots.join(&clone).exists(),
        "clone {clone} kept after {stop}"
    );
    assert_eq!(leftovers(&snapshots), Vec::<String>::new());
}

#[test]
fn ext4_source_is_refused_with_a_way_out() {
    let t = Scratch::new("reflink-ext4");
    let fs = Filesystem::new(&t, "ext4");
    let state = fs.dir("state");
    let src = fs.path("vm.img");
    write_random_file(&src, 4 * MIB, 51);
    let tgt = t.path("target.img");
    let original = Rng::new(52).bytes(4 * MIB as usize);
    std::fs::write(&tgt, &original).unwrap();

    for extra in [&[][..], &["--snapshot", "reflink"][..]] {
        let out = run(&send_args(&src, &tgt, &state, extra));
        let line = out.assert_error(1, &["reflink", "--snapshot none", s(&src)]);
        assert!(line.contains("FICLONE"), "{line}");
        assert_content(&tgt, &original, "target after a refused send");
        assert_eq!(leftovers(&state.join("snapshots")), Vec::<String>::new());
        assert_eq!(leftovers(&fs.mount.dir), Vec::<String>::new());
    }

    // The way out named in the message works.
    run(&send_args(&src, &tgt, &state, &["--snapshot", "none"])).assert_success();
    assert_identical(&src, &tgt);
}

/// Cycle after cycle with the reflink tracker: each cycle reads only the 64 KiB blocks the
/// writes touched (a byte count, not a timing), the target equals the source after every
/// cycle, a hole punched in the source reaches the target, a size change falls back to a
/// full scan and says why, and only the kept clone is left between cycles.
fn tracker_cycles(kind: &str) {
    let t = Scratch::new(&format!("reflink-tracker-{kind}"));
    let fs = Filesystem::new(&t, kind);
    let state = fs.dir("state");
    let snapshots = state.join("snapshots");
    let src = fs.path("vm.img");
    let tgt = t.path("target.img");
    write_random_file(&src, LEN, 71);
    let mut rng = Rng::new(72);
    let cycle = || {
        let out = run(&send_args(&src, &tgt, &state, &[]));
        out.assert_success();
        assert_identical(&src, &tgt);
        assert_eq!(leftovers(&snapshots), kept_snapshots(&state), "left behind");
        out.json_lines()[0].clone()
    };
    let first = cycle();
    assert_eq!(first["tracker"], "reflink-fiemap", "{first}");
    assert_eq!(first["bytes_read"], LEN, "the first cycle reads everything");
    for round in 0..6 {
        let writes = random_writes(&src, &mut rng, 1 + round * 3, 4 * KIB, 64 * KIB);
        if round == 2 {
            let f = OpenOptions::new().write(true).open(&src).unwrap();
            nix::fcntl::fallocate(
                std::os::fd::AsRawFd::as_raw_fd(&f),
                nix::fcntl::FallocateFlags::FALLOC_FL_PUNCH_HOLE
                    | nix::fcntl::FallocateFlags::FALLOC_FL_KEEP_SIZE,
                (8 * MIB) as i64,
                (2 * MIB) as i64,
            )
            .unwrap();
        }
        let touched: std::collections::BTreeSet<u64> = writes
            .iter()
            .flat_map(|w| w.offset / BLOCK..(w.offset + w.len).div_ceil(BLOCK))
            .chain(if round == 2 { 128..160 } else { 0..0 })
            .collect();
        let report = cycle();
        assert_eq!(
            report["full_scan_reason"],
            serde_json::Value::Null,
            "{report}"
        );
        let read = report["bytes_read"].as_u64().unwrap();
        assert!(
            read <= touched.len() as u64 * BLOCK,
            "round {round}: read {read} bytes for {} touched blocks\n{report}",
            touched.len()
        );
        assert!(
            read > 0,
            "round {round}: the writes were not seen\n{report}"
        );
    }
    append_random(&src, &mut rng, 100 * KIB);
    let grown = cycle();
    let reason = grown["full_scan_reason"].as_str().unwrap_or_default();
    assert!(reason.contains("size"), "{grown}");
    let after = cycle();
    assert_eq!(
        after["full_scan_reason"],
        serde_json::Value::Null,
        "{after}"
    );
    assert_eq!(
        after["bytes_read"], 0,
        "nothing changed: nothing read\n{after}"
    );
}

#[test]
fn reflink_tracker_on_xfs_reads_only_what_changed() {
    tracker_cycles("xfs");
}

#[test]
fn reflink_tracker_on_btrfs_reads_only_what_changed() {
    tracker_cycles("btrfs");
}

/// An image the kept clone made fragment past 100,000 extents (every other 4 KiB rewritten,
/// each rewrite splitting an extent the clone shares): the cycle logs the maps' extent counts
/// and warns once, naming the count and the remedy; the cycle before it, on an image of a few
/// extents, does not warn.
#[test]
fn a_fragmented_image_is_reported_with_its_remedy() {
    const REGION: u64 = 400 * MIB;
    let t = Scratch::new("reflink-fragmented");
    let fs = Filesystem::with_size(&t, "xfs", 1024 * MIB);
    let state = fs.dir("state");
    let src = fs.path("vm.img");
    let tgt = t.path("target.img");
    let zeros = vec![0u8; MIB as usize];
    let f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&src)
        .unwrap();
    for at in (0..REGION).step_by(MIB as usize) {
        f.write_all_at(&zeros, at).unwrap();
    }
    f.sync_all().unwrap();
    let cycle = || {
        let out = run(&send_args(&src, &tgt, &state, &[]));
        out.assert_success();
        assert_identical(&src, &tgt);
        out
    };
    let fragmented = "image_fragmented";
    let first = cycle();
    assert!(first.stderr_containing(fragmented).is_empty(), "{first:?}");

    // Rewriting the same bytes still copies them on write: every other 4 KiB moves.
    let page = vec![0u8; 4 * KIB as usize];
    for at in (0..REGION).step_by(8 * KIB as usize) {
        f.write_all_at(&page, at).unwrap();
    }
    f.sync_all().unwrap();
    let second = cycle();
    let report = &second.json_lines()[0];
    assert_eq!(
        report["full_scan_reason"],
        serde_json::Value::Null,
        "{report}"
    );
    let compared = second.stderr_containing("extent maps compared");
    assert_eq!(compared.len(), 1, "{second:?}");
    let extents = log_number(compared[0], "current_extents");
    assert!(extents > 100_000, "{}", compared[0]);
    let warned = second.stderr_containing(fragmented);
    assert_eq!(warned.len(), 1, "{second:?}");
    assert!(warned[0].contains(&extents.to_string()), "{}", warned[0]);
    assert!(warned[0].contains("xfs_fsr"), "{}", warned[0]);
}

#[test]
fn full_scan_tracker_keeps_no_clone() {
    let t = Scratch::new("reflink-full-scan");
    let fs = Filesystem::new(&t, "xfs");
    let state = fs.dir("state");
    let src = fs.path("vm.img");
    let tgt = t.path("target.img");
    write_random_file(&src, 8 * MIB, 73);
    let out = run(&send_args(&src, &tgt, &state, &["--tracker", "full-scan"]));
    out.assert_success();
    assert_eq!(out.json_lines()[0]["tracker"], "full-scan");
    assert_eq!(leftovers(&state.join("snapshots")), Vec::<String>::new());
    assert_identical(&src, &tgt);
}
