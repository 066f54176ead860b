//! The guest side's fixtures: the shared volume group (one test at a time), origin LVs of both
//! kinds, a `Setup` of origin, target and state for one test, and a writer that keeps
//! writing to an origin, with hooks that pause it around the snapshot.

use std::fs::{self, OpenOptions};
use std::io::Read;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use nix::fcntl::OFlag;
use serde_json::Value;

use crate::support::*;

use super::{GUEST_DISK, IN_GUEST_ENV, SNAP_PREFIX};

// =============================================================================================
// The guest side: fixtures
// =============================================================================================

/// The volume group every in-guest test works in (on the scratch disk, made by the first test
/// of a run), and its thin pool (made by the first test that needs one). Sharing them keeps
/// the suite within minutes: an LVM command costs a second or two under emulation.
pub(crate) const VG: &str = "bmtest";
pub(crate) const POOL: &str = "pool";
pub(crate) const POOL_SIZE: &str = "768M";
/// The size of a test's origin LV: long enough a cycle to be caught in the middle (the
/// sender runs in short SIGSTOP/SIGCONT slices), short enough for emulation.
pub(crate) const LV_MIB: u64 = 32;

/// One test at a time works in the volume group.
pub(crate) static LVM_LOCK: Mutex<()> = Mutex::new(());

/// Refuses to run outside the guest: these tests make volume groups and need device-mapper.
pub(crate) fn require_guest() {
    assert!(
        std::env::var_os(IN_GUEST_ENV).is_some(),
        "this test runs inside the QEMU guest; run `cargo nextest run lvm_guest::` \
         (the host test lvm_acceptance_in_guest boots the guest and runs it there)"
    );
    assert!(
        Path::new("/dev/mapper/control").exists(),
        "no device-mapper in this kernel"
    );
}

/// Runs an LVM (or other system) command, asserting success; returns its stdout.
#[track_caller]
pub(crate) fn lvm(program: &str, args: &[&str]) -> String {
    sh(program, args)
}

/// The LV names in `vg` (hidden ones excluded), or `None` when the VG does not exist.
pub(crate) fn lv_names(vg: &str) -> Option<Vec<String>> {
    let out = run_program(
        "lvs",
        &["--reportformat", "json", "-o", "lv_name", vg],
        Duration::from_secs(120),
    );
    if out.code() != Some(0) {
        return None;
    }
    let text = out.stdout_text();
    let v: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("lvs --reportformat json is not JSON ({e}): {text}"));
    Some(
        v["report"][0]["lv"]
            .as_array()
            .unwrap_or_else(|| panic!("unexpected lvs report: {text}"))
            .iter()
            .filter_map(|lv| lv["lv_name"].as_str().map(str::to_string))
            .collect(),
    )
}

/// A test's hold on the shared volume group: on creation and on drop, every LV in it except
/// the thin pool is removed (what a previous, failed test left included).
pub(crate) struct Vg {
    pub(crate) name: String,
    pub(crate) test: String,
    pub(crate) started: Instant,
    pub(crate) _lock: MutexGuard<'static, ()>,
}

impl Vg {
    pub(crate) fn new(test: &str) -> Vg {
        require_guest();
        let lock = LVM_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        eprintln!("[lvm_guest] {test}: start");
        if lv_names(VG).is_none() {
            lvm("pvcreate", &["-ff", "-y", "-q", GUEST_DISK]);
            lvm("vgcreate", &["-q", VG, GUEST_DISK]);
        }
        let vg = Vg {
            name: VG.to_string(),
            test: test.to_string(),
            started: Instant::now(),
            _lock: lock,
        };
        vg.remove_test_lvs();
        vg
    }

    /// Removes every LV but the pool, in one command.
    pub(crate) fn remove_test_lvs(&self) {
        let names = lv_names(&self.name).unwrap_or_default();
        let doomed: Vec<String> = names
            .iter()
            .filter(|n| *n != POOL)
            .map(|n| format!("{}/{n}", self.name))
            .collect();
        if doomed.is_empty() {
            return;
        }
        let mut args = vec!["-f", "-y", "-q"];
        args.extend(doomed.iter().map(String::as_str));
        let out = run_program("lvremove", &args, Duration::from_secs(120));
        if out.code() != Some(0) {
            eprintln!("warning: could not remove {doomed:?}\n{out:?}");
        }
    }

    /// A linear LV of `mib` MiB filled with random bytes; returns its device path.
    pub(crate) fn linear(&self, lv: &str, mib: u64) -> PathBuf {
        lvm(
            "lvcreate",
            &["-q", "-y", "-L", &format!("{mib}M"), "-n", lv, &self.name],
        );
        let dev = self.dev(lv);
        fill_random(&dev, mib);
        dev
    }

    /// A thin LV of `mib` MiB in the shared pool (made on first use), filled with random
    /// bytes; returns its device path.
    pub(crate) fn thin(&self, lv: &str, mib: u64) -> PathBuf {
        let pool = format!("{}/{POOL}", self.name);
        if !self.lvs().iter().any(|n| n == POOL) {
            lvm("lvcreate", &["-q", "-y", "-L", POOL_SIZE, "-T", &pool]);
        }
        lvm(
            "lvcreate",
            &["-q", "-y", "-V", &format!("{mib}M"), "-T", &pool, "-n", lv],
        );
        let dev = self.dev(lv);
        fill_random(&dev, mib);
        dev
    }

    pub(crate) fn dev(&self, lv: &str) -> PathBuf {
        let dev = PathBuf::from(format!("/dev/{}/{lv}", self.name));
        wait_for(Duration::from_secs(30), "the LV's device node", || {
            dev.exists().then_some(())
        });
        dev
    }

    /// The names of the LVs in this VG (hidden ones excluded).
    pub(crate) fn lvs(&self) -> Vec<String> {
        lv_names(&self.name).unwrap_or_else(|| panic!("lvs {} failed", self.name))
    }

    /// The snapshot LVs blkmirror left in this VG.
    pub(crate) fn snapshots(&self) -> Vec<String> {
        self.lvs()
            .into_iter()
            .filter(|n| n.starts_with(SNAP_PREFIX))
            .collect()
    }

    #[track_caller]
    pub(crate) fn assert_no_snapshot(&self, when: &str) {
        let snaps = self.snapshots();
        assert!(
            snaps.is_empty(),
            "{when}: snapshot LVs left behind: {snaps:?}"
        );
    }

    /// The only snapshot LVs left are those the change tracker keeps (recorded in `state`).
    #[track_caller]
    pub(crate) fn assert_only_kept(&self, state: &Path, when: &str) {
        let mut snaps = self.snapshots();
        snaps.sort();
        assert_eq!(
            snaps,
            kept_snapshots(state),
            "{when}: snapshot LVs left behind besides the kept one"
        );
    }
}

impl Drop for Vg {
    fn drop(&mut self) {
        self.remove_test_lvs();
        eprintln!(
            "[lvm_guest] {}: {} in {:.1}s",
            self.test,
            if thread::panicking() {
                "FAILED"
            } else {
                "done"
            },
            self.started.elapsed().as_secs_f64()
        );
    }
}

/// Fills the first `mib` MiB of `dev` with random bytes (the kernel's generator: fast even
/// under emulation), bypassing the page cache.
pub(crate) fn fill_random(dev: &Path, mib: u64) {
    sh(
        "dd",
        &[
            "if=/dev/urandom",
            &format!("of={}", s(dev)),
            "bs=1M",
            &format!("count={mib}"),
            "oflag=direct",
            "conv=notrunc",
            "status=none",
        ],
    );
}

/// Which kind of LV a test mirrors.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Kind {
    Classic,
    Thin,
}

impl Kind {
    pub(crate) fn provider(self) -> &'static str {
        match self {
            Kind::Classic => "lvm",
            Kind::Thin => "lvm-thin",
        }
    }

    /// An LV of this kind, `mib` MiB of random bytes.
    pub(crate) fn make(self, vg: &Vg, lv: &str, mib: u64) -> PathBuf {
        match self {
            Kind::Classic => vg.linear(lv, mib),
            Kind::Thin => vg.thin(lv, mib),
        }
    }
}

/// One test's LV, target, state dir and scratch space.
pub(crate) struct Setup {
    pub(crate) t: Scratch,
    pub(crate) kind: Kind,
    pub(crate) origin: PathBuf,
    pub(crate) target: PathBuf,
    pub(crate) state: PathBuf,
    // Declared last: dropped after the scratch dir and any process holding the LV.
    pub(crate) vg: Vg,
}

impl Setup {
    pub(crate) fn new(test: &str, kind: Kind, mib: u64) -> Setup {
        let vg = Vg::new(test);
        let t = Scratch::new(test);
        let origin = kind.make(&vg, test, mib);
        Setup {
            target: t.path("target.img"),
            state: t.dir("state"),
            origin,
            kind,
            vg,
            t,
        }
    }

    /// `send ORIGIN TARGET --json --progress never --state-dir STATE --once --snapshot P
    /// --compress-level 0 EXTRA...`.
    pub(crate) fn send_args(&self, snapshot: &str, extra: &[&str]) -> Vec<String> {
        let mut args = send_args(s(&self.origin), s(&self.target), &self.state);
        args.extend(["--once", "--snapshot", snapshot, "--compress-level", "0"].map(String::from));
        args.extend(extra.iter().map(|a| a.to_string()));
        args
    }

    /// One committed cycle with this kind's provider; returns its report.
    #[track_caller]
    pub(crate) fn cycle(&self, extra: &[&str]) -> Cycle {
        self.cycle_with(self.kind.provider(), extra)
    }

    #[track_caller]
    pub(crate) fn cycle_with(&self, snapshot: &str, extra: &[&str]) -> Cycle {
        let out = run(&self.send_args(snapshot, extra));
        out.assert_success();
        let lines = out.json_lines();
        assert_eq!(lines.len(), 1, "--once --json prints one report\n{out:?}");
        let c = Cycle::from_json(&lines[0]);
        eprintln!(
            "[lvm_guest]   generation {} ({} blocks changed): {}",
            c.generation, c.blocks_changed, c.raw["duration_ms"]
        );
        c
    }

    pub(crate) fn sender(&self, extra: &[&str]) -> Proc {
        Proc::blkmirror("sender", &self.send_args(self.kind.provider(), extra))
    }

    /// Lets `sender` run until its snapshot's device node appears (cheap to poll, unlike
    /// `lvs` or `status`), then runs it in slices until the receiver is mid-cycle; returns with
    /// the sender STOPPED (see `freeze_mid_cycle`).
    pub(crate) fn freeze_mid_cycle(&self, sender: &mut Proc) {
        let dir = PathBuf::from(format!("/dev/{}", self.vg.name));
        wait_for(RUN_TIMEOUT, "the sender's snapshot device", || {
            if sender.try_wait().is_some() {
                panic!(
                    "sender exited before taking its snapshot\n{}",
                    sender.describe()
                );
            }
            fs::read_dir(&dir)
                .ok()?
                .filter_map(Result::ok)
                .any(|e| e.file_name().to_string_lossy().starts_with(SNAP_PREFIX))
                .then_some(())
        });
        freeze_mid_cycle(&self.state, sender, || true);
    }

    /// `blkmirror verify ORIGIN TARGET` exits 0.
    #[track_caller]
    pub(crate) fn assert_verify(&self) {
        run(&["verify", s(&self.origin), s(&self.target)]).assert_success();
    }

    /// Target identical to the (quiescent) origin, `verify` agrees, the receiver is consistent
    /// at `generation` and no snapshot is left but the one the tracker keeps.
    #[track_caller]
    pub(crate) fn assert_converged(&self, generation: u64) {
        assert_identical(&self.origin, &self.target);
        self.assert_verify();
        assert_receiver_consistent(&status_entry(&self.state, "receiver"), generation);
        self.vg
            .assert_only_kept(&self.state, "after a committed cycle");
        assert_eq!(
            kept_snapshots(&self.state).len(),
            1,
            "the tracker keeps one"
        );
    }
}

/// Shows an expected error line in the run's log.
pub(crate) fn note_error(line: &str) {
    eprintln!("[lvm_guest]   {line}");
}

/// Runs `program args...` with extra environment variables, to completion with a deadline.
pub(crate) fn run_env(program: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .envs(env.iter().copied())
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let cmdline = format!("{env:?} {program} {}", args.join(" "));
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot spawn `{cmdline}`: {e}"));
    let read = |mut r: Box<dyn Read + Send>| {
        thread::spawn(move || {
            let mut text = String::new();
            let _ = r.read_to_string(&mut text);
            text.lines().map(str::to_string).collect::<Vec<_>>()
        })
    };
    let out_reader = read(Box::new(child.stdout.take().unwrap()));
    let err_reader = read(Box::new(child.stderr.take().unwrap()));
    let deadline = Instant::now() + RUN_TIMEOUT;
    let status = loop {
        if let Some(st) = child.try_wait().expect("try_wait") {
            break st;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("`{cmdline}` still running after {RUN_TIMEOUT:?}");
        }
        thread::sleep(POLL);
    };
    Output {
        cmdline,
        status,
        stdout: out_reader.join().unwrap(),
        stderr: err_reader.join().unwrap(),
    }
}

// =============================================================================================
// A writer that keeps writing to the origin, and hooks that pause it around the snapshot
// =============================================================================================

/// Writes small random extents (O_DSYNC, so each write is on the device when it returns) at
/// random offsets of a device, until stopped. While the file `CTL/pause` exists it writes
/// nothing and says so by creating `CTL/paused`; the `--pre-snapshot` hook made by
/// [`Writer::hooks`] uses that to copy the origin exactly as the snapshot will see it.
pub(crate) struct Writer {
    pub(crate) stop: Arc<AtomicBool>,
    pub(crate) writes: Arc<AtomicU64>,
    /// The write count when the writer last paused.
    pub(crate) at_pause: Arc<AtomicU64>,
    pub(crate) thread: Option<thread::JoinHandle<()>>,
    pub(crate) ctl: PathBuf,
}

impl Writer {
    /// The write count when the writer last paused (at a snapshot).
    pub(crate) fn paused_at(&self) -> u64 {
        self.at_pause.load(Ordering::SeqCst)
    }

    /// A writer that waits `pace` after each write (a steady trickle, so a classic
    /// snapshot's COW space of a test outlasts a cycle).
    pub(crate) fn start(dev: &Path, ctl: &Path, seed: u64, pace: Duration) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let writes = Arc::new(AtomicU64::new(0));
        let at_pause = Arc::new(AtomicU64::new(0));
        let (dev, ctl_dir) = (dev.to_path_buf(), ctl.to_path_buf());
        let (stop2, writes2, at_pause2) = (stop.clone(), writes.clone(), at_pause.clone());
        let thread = thread::spawn(move || {
            let size = size_of(&dev);
            let f = OpenOptions::new()
                .write(true)
                .custom_flags(OFlag::O_DSYNC.bits())
                .open(&dev)
                .unwrap_or_else(|e| panic!("writer: open {}: {e}", dev.display()));
            let mut rng = Rng::new(seed);
            let pool = rng.bytes(MIB as usize);
            let (pause, paused) = (ctl_dir.join("pause"), ctl_dir.join("paused"));
            let mut n = 0u64;
            while !stop2.load(Ordering::SeqCst) {
                if pause.exists() {
                    if !paused.exists() {
                        at_pause2.store(n, Ordering::SeqCst);
                        fs::write(&paused, n.to_string()).expect("writer: create paused");
                    }
                    thread::sleep(POLL);
                    continue;
                }
                if paused.exists() {
                    fs::remove_file(&paused).expect("writer: remove paused");
                }
                let len = rng.range(1, 4) * 4 * KIB;
                let offset = rng.below((size - len) / (4 * KIB)) * 4 * KIB;
                let from = rng.below(pool.len() as u64 - len) as usize;
                let mut buf = pool[from..from + len as usize].to_vec();
                buf[..8].copy_from_slice(&n.to_le_bytes());
                f.write_all_at(&buf, offset).expect("writer: write");
                n += 1;
                writes2.store(n, Ordering::SeqCst);
                thread::sleep(pace);
            }
        });
        Writer {
            stop,
            writes,
            at_pause,
            thread: Some(thread),
            ctl: ctl.to_path_buf(),
        }
    }

    pub(crate) fn writes(&self) -> u64 {
        self.writes.load(Ordering::SeqCst)
    }

    /// `--pre-snapshot` / `--post-snapshot` arguments: the pre hook pauses the writer (with a
    /// deadline) and copies the origin to `expected`; the post hook lets the writer go on.
    pub(crate) fn hooks(&self, origin: &Path, expected: &Path) -> Vec<String> {
        let ctl = s(&self.ctl);
        let pre = format!(
            "touch '{ctl}/pause' && i=0 && while [ ! -e '{ctl}/paused' ]; do \
               i=$((i+1)); if [ $i -gt 3000 ]; then echo 'writer did not pause' >&2; exit 1; fi; \
               sleep 0.02; done && cp '{}' '{}'",
            s(origin),
            s(expected)
        );
        let post = format!("rm -f '{ctl}/pause'");
        vec!["--pre-snapshot".into(), pre, "--post-snapshot".into(), post]
    }

    /// Stops and joins the writer (re-raising its panic); returns the number of writes.
    pub(crate) fn stop(mut self) -> u64 {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            if let Err(e) = t.join() {
                std::panic::resume_unwind(e);
            }
        }
        self.writes()
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
