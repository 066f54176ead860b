//! The reflink provider on real filesystems (host, no VM): xfs (`mkfs.xfs -m reflink=1`) and
//! btrfs on loop devices, with a writer changing the source while a cycle reads its clone; the
//! fallback next to the source when the state dir is on another filesystem; stale clones of a
//! killed sender removed at the next start (and only ours); refusal on ext4.
//!
//! "Writes during the cycle" is made certain, not likely: the sender is frozen (SIGSTOP) at a
//! moment its clone exists (a clone is only visible under its final name once complete, and is
//! deleted when the cycle ends), the writer starts there, and the sender resumes while it
//! writes. The target must then equal the source as it was before the writer started.

mod common;

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use common::*;

/// A filesystem made on a sparse file, on a loop device, mounted; unmounted and detached on
/// drop (the mount is declared first, so it drops first).
struct Fs {
    mount: Mount,
    _dev: LoopDevice,
}

impl Fs {
    fn new(t: &Scratch, kind: &str) -> Fs {
        let image = t.path(&format!("{kind}.fs"));
        let size = if kind == "xfs" { 512 * MIB } else { 256 * MIB };
        File::create(&image).unwrap().set_len(size).unwrap();
        match kind {
            "xfs" => sh("mkfs.xfs", &["-q", "-f", "-m", "reflink=1", s(&image)]),
            "btrfs" => sh("mkfs.btrfs", &["-q", "-f", s(&image)]),
            "ext4" => sh("mkfs.ext4", &["-q", "-F", s(&image)]),
            other => panic!("no mkfs for {other}"),
        };
        let dev = LoopDevice::attach(&image);
        let mount = Mount::new(dev.path(), &t.path(&format!("{kind}-mnt")));
        Fs { mount, _dev: dev }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.mount.dir.join(name)
    }

    fn dir(&self, name: &str) -> PathBuf {
        let p = self.path(name);
        std::fs::create_dir_all(&p).unwrap();
        p
    }
}

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
        sender.signal(libc::SIGSTOP);
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
        sender.signal(libc::SIGCONT);
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
/// source as it was at snapshot time, that the clone is gone afterwards, and that a second
/// cycle catches up with the writes.
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
    sender.signal(libc::SIGCONT);
    let out = sender.finish(RUN_TIMEOUT);
    let writes = writer.finish();
    out.assert_success();
    assert_eq!(out.json_lines().len(), 1, "{out:?}");
    assert!(writes >= 3, "the writer made {writes} writes");

    // The target is the clone's content: the source before the writer started.
    assert_content(&tgt, &before, "target after a cycle with writes during it");
    assert_ne!(read_all(src), before, "the writer changed nothing");
    run(&["verify", s(src), s(&tgt)]).assert_code(1);
    assert!(
        !clone_dir.join(&clone).exists(),
        "clone {clone} still exists after the cycle"
    );
    assert_eq!(leftovers(clone_dir), Vec::<String>::new(), "left behind");
    assert_eq!(
        leftovers(&state.join("snapshots")),
        Vec::<String>::new(),
        "left behind in the state dir"
    );

    // The next cycle catches up.
    let out = run(&send_args(src, &tgt, state, extra));
    out.assert_success();
    assert_identical(src, &tgt);
    run(&["verify", s(src), s(&tgt)]).assert_success();
    assert_eq!(leftovers(clone_dir), Vec::<String>::new(), "left behind");
}

#[test]
fn reflink_on_xfs_reads_the_clone_while_the_source_changes() {
    let t = Scratch::new("reflink-xfs");
    let fs = Fs::new(&t, "xfs");
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
    let fs = Fs::new(&t, "btrfs");
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
    let fs = Fs::new(&t, "xfs");
    let images = fs.dir("images");
    let src = images.join("vm.img");
    // The state dir is on the scratch dir's filesystem, not on the xfs mount.
    let state = t.dir("state");
    mirror_with_writes_during_cycle(&t, &src, &state, &[], &images, ".blkmirror-snap-");
    assert_eq!(names_with(&images, "."), Vec::<String>::new());
}

#[test]
fn stale_clone_of_a_killed_sender_is_removed_at_next_start_and_only_ours() {
    let t = Scratch::new("reflink-stale");
    let fs = Fs::new(&t, "xfs");
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
    let holder = File::open(snapshots.join(&held)).unwrap();
    // SAFETY: flock(2) on a descriptor we own.
    #[allow(unsafe_code)]
    let locked = unsafe { libc::flock(holder.as_raw_fd(), libc::LOCK_EX) };
    assert_eq!(locked, 0);

    random_writes(&src, &mut Rng::new(42), 20, 4 * KIB, 256 * KIB);
    let out = run(&send_args(&src, &tgt, &state, &[]));
    out.assert_success();
    assert_identical(&src, &tgt);
    assert!(!snapshots.join(&stale).exists(), "stale clone {stale} kept");
    assert_eq!(
        names_with(&snapshots, ""),
        vec![foreign.to_string(), held.clone(), "keep-me".to_string()],
        "the clean-up touched what is not ours, or in use"
    );
    drop(holder);
}

#[test]
fn sigterm_mid_cycle_deletes_the_clone() {
    let t = Scratch::new("reflink-sigterm");
    let fs = Fs::new(&t, "xfs");
    let state = fs.dir("state");
    let snapshots = state.join("snapshots");
    let src = fs.path("vm.img");
    write_random_file(&src, LEN, 61);
    let tgt = t.path("target.img");
    let mut sender = Proc::blkmirror("sender", &send_args(&src, &tgt, &state, &[]));
    let clone = stop_while_clone_exists(&mut sender, &snapshots, "blkmirror-snap-");
    sender.signal(libc::SIGTERM);
    sender.signal(libc::SIGCONT);
    let out = sender.finish(RUN_TIMEOUT);
    // A requested stop is a success (issue 8): exit 0, said on stderr.
    out.assert_success();
    assert!(out.stderr_text().contains("stopped on request"), "{out:?}");
    assert!(
        !snapshots.join(&clone).exists(),
        "clone {clone} kept after SIGTERM"
    );
    assert_eq!(leftovers(&snapshots), Vec::<String>::new());
}

#[test]
fn ext4_source_is_refused_with_a_way_out() {
    let t = Scratch::new("reflink-ext4");
    let fs = Fs::new(&t, "ext4");
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
