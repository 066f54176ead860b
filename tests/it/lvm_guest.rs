//! Real LVM snapshots, proven inside a QEMU guest (the host kernel has no device-mapper).
//!
//! Two kinds of tests live here:
//! - `lvm_acceptance_in_guest`, a normal host test: it boots the guest with
//!   `ci/guest/run-in-guest.sh`, runs THIS test binary inside with `--ignored --test-threads=1`
//!   and the filter `lvm_guest::` (the binary holds every suite; only this module's ignored
//!   tests are meant for the guest), and asserts that every ignored test of this module listed
//!   on the host passed in the guest. Without the guest tooling it fails, saying how to install
//!   it.
//! - the `#[ignore]` tests: the acceptance tests proper. They need root, device-mapper and
//!   lvm2, so they only run in the guest (they refuse to run elsewhere). Each one makes its own
//!   volume group on the guest's scratch disk `/dev/vda` (one test at a time holds it), runs
//!   the real binary, and removes the volume group when done, whatever happens.
//!
//! Developer command (the whole suite, a few minutes): `cargo nextest run lvm_guest::`
//! (or `cargo test --test it lvm_guest:: -- --nocapture` to watch the guest's output as it
//! runs).
//!
//! Waiting is always polling a condition with a deadline; every process a test starts is
//! stopped by PID (the `Proc` guard), every LV by name.

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

/// Prefix of every snapshot LV blkmirror makes.
const SNAP_PREFIX: &str = "blkmirror-snap-";
/// The guest's scratch disk (a fresh sparse file on the host for every boot).
const GUEST_DISK: &str = "/dev/vda";
/// Set by `ci/guest/run-in-guest.sh` in the guest.
const IN_GUEST_ENV: &str = "BLKMIRROR_IN_GUEST";
/// The host test's deadline for the whole guest run (boot, every test, power-off).
const GUEST_TIMEOUT: Duration = Duration::from_secs(1400);

// =============================================================================================
// The host side: boot the guest and run the ignored tests there
// =============================================================================================

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The test-name prefix of this module's tests, `lvm_guest::`: the filter that selects them
/// out of the one integration test binary, on the host and in the guest.
fn suite_filter() -> String {
    let (_crate, module) = module_path!()
        .split_once("::")
        .expect("a module of the test binary");
    format!("{module}::")
}

/// The names of this module's ignored tests, listed on the host.
fn ignored_tests(exe: &Path) -> Vec<String> {
    let filter = suite_filter();
    let out = run_program(
        s(exe),
        &["--list", "--ignored", "--format", "terse", &filter],
        Duration::from_secs(60),
    );
    out.assert_success();
    let names: Vec<String> = out
        .stdout
        .iter()
        .filter_map(|l| l.strip_suffix(": test"))
        .map(str::to_string)
        .collect();
    for name in &names {
        assert!(
            name.starts_with(&filter),
            "the filter {filter:?} listed {name:?}, a test of another suite\n{out:?}"
        );
    }
    names
}

/// Fails (does not skip) when the tooling the guest needs is not installed.
fn require_guest_tooling() {
    let hint = "the LVM acceptance tests boot a QEMU guest: install its tooling with the \
                'system packages' step of .ci/run (apt-get install qemu-system-x86 \
                linux-image-amd64 busybox-static lvm2 thin-provisioning-tools)";
    let on_path = |tool: &str| {
        std::env::var_os("PATH")
            .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
    };
    assert!(
        on_path("qemu-system-x86_64"),
        "qemu-system-x86_64 not found: {hint}"
    );
    let kernel = fs::read_dir("/boot").ok().is_some_and(|d| {
        d.filter_map(Result::ok)
            .any(|e| e.file_name().to_string_lossy().starts_with("vmlinuz-"))
    });
    assert!(kernel, "no kernel image /boot/vmlinuz-*: {hint}");
    assert!(
        Path::new("/bin/busybox").is_file() || on_path("busybox"),
        "busybox not found: {hint}"
    );
    assert!(
        Path::new("/sbin/lvm").is_file() || Path::new("/usr/sbin/lvm").is_file(),
        "lvm2 not found: {hint}"
    );
}

/// Boots the guest once and runs every `#[ignore]` test of this binary inside it.
#[test]
fn lvm_acceptance_in_guest() {
    if std::env::var_os(IN_GUEST_ENV).is_some() {
        // Inside the guest already (someone ran without --ignored): nothing to boot.
        return;
    }
    require_guest_tooling();
    let exe = std::env::current_exe().expect("current_exe");
    let expected = ignored_tests(&exe);
    assert!(!expected.is_empty(), "no ignored (in-guest) tests listed");

    let script = repo().join("ci/guest/run-in-guest.sh");
    let started = Instant::now();
    let mut guest = Proc::spawn_in(
        "guest",
        s(&script),
        &[
            s(&exe),
            "--ignored",
            "--test-threads=1",
            "--nocapture",
            &suite_filter(),
        ],
        Some(&repo()),
        &[],
    );
    // Echo the guest's output as it comes (seen live with --nocapture; otherwise the test
    // runner shows it on failure).
    let deadline = started + GUEST_TIMEOUT;
    let (mut shown_out, mut shown_err) = (0, 0);
    loop {
        let exited = guest.try_wait().is_some();
        if exited {
            guest.drain(Duration::from_secs(10));
        }
        let lines = guest.stdout_lines();
        for line in &lines[shown_out..] {
            println!("{line}");
        }
        shown_out = lines.len();
        let lines = guest.stderr_lines();
        for line in &lines[shown_err..] {
            eprintln!("{line}");
        }
        shown_err = lines.len();
        if exited {
            break;
        }
        if Instant::now() >= deadline {
            // SIGTERM lets the script stop QEMU (SIGKILL, from the guard, would orphan it).
            guest.signal(Signal::SIGTERM);
            guest.wait_exit(Duration::from_secs(60));
            panic!("the guest run did not end within {GUEST_TIMEOUT:?}");
        }
        thread::sleep(Duration::from_millis(200));
    }
    let out = guest.finish(Duration::from_secs(10));
    let status = out.status;
    eprintln!("guest run took {:.0?}", started.elapsed());

    let text = out.stdout_text();
    let result = text
        .lines()
        .rev()
        .find(|l| l.starts_with("test result:"))
        .unwrap_or_else(|| panic!("the guest printed no test summary (status {status:?})"));
    for name in &expected {
        assert!(
            text.lines().any(|l| l == format!("test {name} ... ok")),
            "in-guest test {name} did not pass: {result}"
        );
    }
    assert!(
        result.contains(&format!("{} passed; 0 failed", expected.len())),
        "expected all {} in-guest tests to pass: {result}",
        expected.len()
    );
    assert_eq!(out.code(), Some(0), "guest run failed: {result}");
}

// =============================================================================================
// The guest side: fixtures
// =============================================================================================

/// The volume group every in-guest test works in (on the scratch disk, made by the first test
/// of a run), and its thin pool (made by the first test that needs one). Sharing them keeps
/// the suite within minutes: an LVM command costs a second or two under emulation.
const VG: &str = "bmtest";
const POOL: &str = "pool";
const POOL_SIZE: &str = "768M";
/// The size of a test's origin LV: long enough a cycle to be caught in the middle (the
/// sender runs in short SIGSTOP/SIGCONT slices), short enough for emulation.
const LV_MIB: u64 = 32;

/// One test at a time works in the volume group.
static LVM_LOCK: Mutex<()> = Mutex::new(());

/// Refuses to run outside the guest: these tests make volume groups and need device-mapper.
fn require_guest() {
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
fn lvm(program: &str, args: &[&str]) -> String {
    sh(program, args)
}

/// The LV names in `vg` (hidden ones excluded), or `None` when the VG does not exist.
fn lv_names(vg: &str) -> Option<Vec<String>> {
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
struct Vg {
    name: String,
    test: String,
    started: Instant,
    _lock: MutexGuard<'static, ()>,
}

impl Vg {
    fn new(test: &str) -> Vg {
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
    fn remove_test_lvs(&self) {
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
    fn linear(&self, lv: &str, mib: u64) -> PathBuf {
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
    fn thin(&self, lv: &str, mib: u64) -> PathBuf {
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

    fn dev(&self, lv: &str) -> PathBuf {
        let dev = PathBuf::from(format!("/dev/{}/{lv}", self.name));
        wait_for(Duration::from_secs(30), "the LV's device node", || {
            dev.exists().then_some(())
        });
        dev
    }

    /// The names of the LVs in this VG (hidden ones excluded).
    fn lvs(&self) -> Vec<String> {
        lv_names(&self.name).unwrap_or_else(|| panic!("lvs {} failed", self.name))
    }

    /// The snapshot LVs blkmirror left in this VG.
    fn snapshots(&self) -> Vec<String> {
        self.lvs()
            .into_iter()
            .filter(|n| n.starts_with(SNAP_PREFIX))
            .collect()
    }

    #[track_caller]
    fn assert_no_snapshot(&self, when: &str) {
        let snaps = self.snapshots();
        assert!(
            snaps.is_empty(),
            "{when}: snapshot LVs left behind: {snaps:?}"
        );
    }

    /// The only snapshot LVs left are those the change tracker keeps (recorded in `state`).
    #[track_caller]
    fn assert_only_kept(&self, state: &Path, when: &str) {
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
fn fill_random(dev: &Path, mib: u64) {
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
enum Kind {
    Classic,
    Thin,
}

impl Kind {
    fn provider(self) -> &'static str {
        match self {
            Kind::Classic => "lvm",
            Kind::Thin => "lvm-thin",
        }
    }

    /// An LV of this kind, `mib` MiB of random bytes.
    fn make(self, vg: &Vg, lv: &str, mib: u64) -> PathBuf {
        match self {
            Kind::Classic => vg.linear(lv, mib),
            Kind::Thin => vg.thin(lv, mib),
        }
    }
}

/// One test's LV, target, state dir and scratch space.
struct Setup {
    t: Scratch,
    kind: Kind,
    origin: PathBuf,
    target: PathBuf,
    state: PathBuf,
    // Declared last: dropped after the scratch dir and any process holding the LV.
    vg: Vg,
}

impl Setup {
    fn new(test: &str, kind: Kind, mib: u64) -> Setup {
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
    fn send_args(&self, snapshot: &str, extra: &[&str]) -> Vec<String> {
        let mut args = send_args(s(&self.origin), s(&self.target), &self.state);
        args.extend(["--once", "--snapshot", snapshot, "--compress-level", "0"].map(String::from));
        args.extend(extra.iter().map(|a| a.to_string()));
        args
    }

    /// One committed cycle with this kind's provider; returns its report.
    #[track_caller]
    fn cycle(&self, extra: &[&str]) -> Cycle {
        self.cycle_with(self.kind.provider(), extra)
    }

    #[track_caller]
    fn cycle_with(&self, snapshot: &str, extra: &[&str]) -> Cycle {
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

    fn sender(&self, extra: &[&str]) -> Proc {
        Proc::blkmirror("sender", &self.send_args(self.kind.provider(), extra))
    }

    /// Lets `sender` run until its snapshot's device node appears (cheap to poll, unlike
    /// `lvs` or `status`), then runs it in slices until the receiver is mid-cycle; returns with
    /// the sender STOPPED (see `freeze_mid_cycle`).
    fn freeze_mid_cycle(&self, sender: &mut Proc) {
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
    fn assert_verify(&self) {
        run(&["verify", s(&self.origin), s(&self.target)]).assert_success();
    }

    /// Target identical to the (quiescent) origin, `verify` agrees, the receiver is consistent
    /// at `generation` and no snapshot is left but the one the tracker keeps.
    #[track_caller]
    fn assert_converged(&self, generation: u64) {
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
fn note_error(line: &str) {
    eprintln!("[lvm_guest]   {line}");
}

/// Runs `program args...` with extra environment variables, to completion with a deadline.
fn run_env(program: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
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
struct Writer {
    stop: Arc<AtomicBool>,
    writes: Arc<AtomicU64>,
    /// The write count when the writer last paused.
    at_pause: Arc<AtomicU64>,
    thread: Option<thread::JoinHandle<()>>,
    ctl: PathBuf,
}

impl Writer {
    /// The write count when the writer last paused (at a snapshot).
    fn paused_at(&self) -> u64 {
        self.at_pause.load(Ordering::SeqCst)
    }

    fn start(dev: &Path, ctl: &Path, seed: u64) -> Writer {
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
                // A steady trickle (a few MiB/s at most), so a classic snapshot's COW space of
                // a test outlasts a cycle.
                thread::sleep(Duration::from_millis(5));
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

    fn writes(&self) -> u64 {
        self.writes.load(Ordering::SeqCst)
    }

    /// `--pre-snapshot` / `--post-snapshot` arguments: the pre hook pauses the writer (with a
    /// deadline) and copies the origin to `expected`; the post hook lets the writer go on.
    fn hooks(&self, origin: &Path, expected: &Path) -> Vec<String> {
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
    fn stop(mut self) -> u64 {
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

// =============================================================================================
// The guest side: acceptance tests
// =============================================================================================

/// A writer keeps writing to the origin during the cycle; the target must equal the origin as
/// it was when the snapshot was taken (copied by the pre-snapshot hook while the writer was
/// paused), not its later state.
fn writer_during_cycle(test: &str, kind: Kind) {
    let x = Setup::new(test, kind, LV_MIB);
    let ctl = x.t.dir("writer");
    let expected = x.t.path("expected.img");
    let writer = Writer::start(&x.origin, &ctl, 11);
    wait_for(RUN_TIMEOUT, "the writer's first writes", || {
        (writer.writes() >= 10).then_some(())
    });

    let hooks = writer.hooks(&x.origin, &expected);
    let mut extra: Vec<&str> = hooks.iter().map(String::as_str).collect();
    if let Kind::Classic = kind {
        // Room for the writer's trickle for the whole cycle, whatever the default size is.
        extra.extend(["--snapshot-size", "32M"]);
    }
    let c = x.cycle(&extra);
    let written_during = writer.writes() - writer.at_pause.load(Ordering::SeqCst);
    let total = writer.stop();
    assert_eq!(c.generation, 1);
    eprintln!("[lvm_guest]   writer: {written_during} writes after the snapshot, {total} in all");

    assert!(expected.exists(), "the pre-snapshot hook did not run");
    assert!(
        written_during > 0,
        "the writer wrote nothing while the cycle ran ({total} writes in all)"
    );
    // The target is the snapshot's content...
    assert_identical(&expected, &x.target);
    // ...and the origin has moved on since.
    assert!(
        first_difference(&x.origin, &expected).is_some(),
        "the origin did not change during the cycle ({written_during} writes during it)"
    );
    assert_receiver_consistent(&status_entry(&x.state, "receiver"), 1);
    x.vg.assert_only_kept(&x.state, "after the cycle");
}

#[test]
#[ignore = "runs in the QEMU guest (see lvm_acceptance_in_guest)"]
fn classic_writer_during_cycle_target_equals_snapshot() {
    writer_during_cycle("classic-writer", Kind::Classic);
}

#[test]
#[ignore = "runs in the QEMU guest (see lvm_acceptance_in_guest)"]
fn thin_writer_during_cycle_target_equals_snapshot() {
    writer_during_cycle("thin-writer", Kind::Thin);
}

/// Ten cycles with writes between them, each with `--snapshot auto` (which must recognise the
/// LV kind) and the default snapshot size: each converges and `verify` passes.
fn ten_cycles(test: &str, kind: Kind) {
    let x = Setup::new(test, kind, LV_MIB);
    let mut rng = Rng::new(21);
    for generation in 1..=10u64 {
        if generation > 1 {
            random_writes(&x.origin, &mut rng, 8, 1, 256 * KIB);
        }
        let c = x.cycle_with("auto", &[]);
        assert_eq!(c.generation, generation, "{:?}", c.raw);
        if generation > 1 {
            assert!(c.blocks_changed > 0, "writes went unseen: {:?}", c.raw);
        }
        x.assert_converged(generation);
    }
}

#[test]
#[ignore = "runs in the QEMU guest (see lvm_acceptance_in_guest)"]
fn classic_ten_cycles_converge_and_verify() {
    ten_cycles("classic-ten", Kind::Classic);
}

#[test]
#[ignore = "runs in the QEMU guest (see lvm_acceptance_in_guest)"]
fn thin_ten_cycles_converge_and_verify() {
    ten_cycles("thin-ten", Kind::Thin);
}

/// SIGKILL mid-cycle leaves the snapshot behind; the next start removes it and converges.
fn sigkill_mid_cycle(test: &str, kind: Kind) {
    let x = Setup::new(test, kind, LV_MIB);
    let mut sender = x.sender(&[]);
    x.freeze_mid_cycle(&mut sender);
    sender.kill9();
    assert!(
        sender.stdout_lines().is_empty(),
        "a killed cycle reported a commit"
    );
    let left = x.vg.snapshots();
    assert_eq!(
        left.len(),
        1,
        "a SIGKILLed sender leaves exactly its snapshot: {:?}",
        x.vg.lvs()
    );

    // The origin changes meanwhile; the next start removes the stale snapshot and converges.
    random_writes(&x.origin, &mut Rng::new(31), 8, 1, 256 * KIB);
    let c = x.cycle(&[]);
    assert!(
        !x.vg.lvs().contains(&left[0]),
        "stale snapshot {} not removed",
        left[0]
    );
    x.assert_converged(c.generation);
}

#[test]
#[ignore = "runs in the QEMU guest (see lvm_acceptance_in_guest)"]
fn classic_sigkill_mid_cycle_next_start_removes_snapshot_and_converges() {
    sigkill_mid_cycle("classic-kill", Kind::Classic);
}

#[test]
#[ignore = "runs in the QEMU guest (see lvm_acceptance_in_guest)"]
fn thin_sigkill_mid_cycle_next_start_removes_snapshot_and_converges() {
    sigkill_mid_cycle("thin-kill", Kind::Thin);
}

/// SIGTERM mid-cycle: the sender releases its snapshot itself and exits 0 (a requested stop is
/// a success); the receiver keeps generation 1 committed (recovery from a broken cycle is the
/// SIGKILL tests' part).
fn sigterm_mid_cycle(test: &str, kind: Kind) {
    let x = Setup::new(test, kind, LV_MIB);
    let c1 = x.cycle(&[]);
    assert_eq!(c1.generation, 1);
    x.assert_converged(1);

    // Change everything, so the next cycle is long, and stop it in the middle.
    fill_random(&x.origin, LV_MIB);
    let mut sender = x.sender(&[]);
    x.freeze_mid_cycle(&mut sender);
    sender.signal(Signal::SIGTERM);
    sender.signal(Signal::SIGCONT);
    let out = sender.finish(RUN_TIMEOUT);
    assert_eq!(
        out.code(),
        Some(0),
        "SIGTERM mid-cycle is a clean stop\n{out:?}"
    );
    assert!(
        out.stderr_text().contains("stopped on request"),
        "the stop is said\n{out:?}"
    );
    assert!(
        out.json_lines().is_empty(),
        "an interrupted cycle reported a commit\n{out:?}"
    );
    assert!(
        out.error_lines().len() <= 1,
        "at most one error line\n{out:?}"
    );
    out.error_lines().iter().for_each(|l| note_error(l));
    // The stopped cycle's snapshot is gone; the previous cycle's, kept for the tracker, stays.
    x.vg.assert_only_kept(&x.state, "after SIGTERM mid-cycle");
    let r = status_entry(&x.state, "receiver");
    assert_eq!(committed_generation(&r), 1, "{r}");
}

#[test]
#[ignore = "runs in the QEMU guest (see lvm_acceptance_in_guest)"]
fn classic_sigterm_mid_cycle_releases_snapshot() {
    sigterm_mid_cycle("classic-term", Kind::Classic);
}

#[test]
#[ignore = "runs in the QEMU guest (see lvm_acceptance_in_guest)"]
fn thin_sigterm_mid_cycle_releases_snapshot() {
    sigterm_mid_cycle("thin-term", Kind::Thin);
}

/// A classic snapshot that overflows in the middle of a cycle: the cycle aborts with one line
/// naming the overflow and --snapshot-size, the receiver keeps generation 1, no snapshot is
/// left.
#[test]
#[ignore = "runs in the QEMU guest (see lvm_acceptance_in_guest)"]
fn classic_snapshot_overflow_aborts_cleanly() {
    let x = Setup::new("classic-overflow", Kind::Classic, LV_MIB);
    let c1 = x.cycle(&["--snapshot-size", "4M"]);
    assert_eq!(c1.generation, 1);
    x.assert_converged(1);

    // Change everything (a long cycle), then, with the cycle frozen in the middle, write four
    // times the snapshot's COW space to the origin.
    fill_random(&x.origin, LV_MIB);
    let mut sender = x.sender(&["--snapshot-size", "4M"]);
    x.freeze_mid_cycle(&mut sender);
    fill_random(&x.origin, 16);
    sender.signal(Signal::SIGCONT);
    let out = sender.finish(RUN_TIMEOUT);
    note_error(&out.assert_error(1, &["overflow", "--snapshot-size"]));
    assert!(out.json_lines().is_empty(), "{out:?}");
    // The overflowing snapshot is gone, and so is the previous one (kept for the tracker, it
    // overflowed too, and was removed when the cycle found it unusable).
    x.vg.assert_no_snapshot("after the overflow");
    let r = status_entry(&x.state, "receiver");
    assert_eq!(committed_generation(&r), 1, "{r}");
}

/// Sources that cannot be snapshotted the way asked: one clear line each, nothing left.
#[test]
#[ignore = "runs in the QEMU guest (see lvm_acceptance_in_guest)"]
fn source_not_an_lv_is_one_clear_line() {
    let vg = Vg::new("not-lv");
    let t = Scratch::new("not-lv");
    let state = t.dir("state");
    let target = t.path("target.img");

    // A loop device (a block device, but not an LV).
    let backing = t.path("backing.img");
    write_random_file(&backing, 4 * MIB, 41);
    let dev = LoopDevice::attach(&backing);
    for snapshot in ["lvm", "lvm-thin"] {
        let args = send_args(dev.as_str(), s(&target), &state);
        let mut args: Vec<&str> = args.iter().map(String::as_str).collect();
        args.extend(["--once", "--snapshot", snapshot]);
        let out = run(&args);
        note_error(&out.assert_error(1, &[dev.as_str(), "logical volume"]));
    }
    // A regular file.
    let args = send_args(s(&backing), s(&target), &state);
    let mut args: Vec<&str> = args.iter().map(String::as_str).collect();
    args.extend(["--once", "--snapshot", "lvm"]);
    note_error(&run(&args).assert_error(1, &[s(&backing), "logical volume"]));

    // A linear LV with --snapshot lvm-thin: not a thin LV.
    let lv = vg.linear("not-lv-linear", 8);
    let args = send_args(s(&lv), s(&target), &state);
    let mut args: Vec<&str> = args.iter().map(String::as_str).collect();
    args.extend(["--once", "--snapshot", "lvm-thin"]);
    note_error(&run(&args).assert_error(1, &["thin"]));

    assert!(!target.exists(), "a refused cycle created the target");
    vg.assert_no_snapshot("after refusals");
}

#[test]
#[ignore = "runs in the QEMU guest (see lvm_acceptance_in_guest)"]
fn vg_without_free_space_is_one_clear_line() {
    let vg = Vg::new("full");
    let t = Scratch::new("full");
    // Everything the VG has left goes to the source LV (nothing of it is ever read).
    lvm(
        "lvcreate",
        &["-q", "-y", "-l", "100%FREE", "-n", "full", &vg.name],
    );
    let lv = vg.dev("full");
    let target = t.path("target.img");
    let args = send_args(s(&lv), s(&target), &t.dir("state"));
    let mut args: Vec<&str> = args.iter().map(String::as_str).collect();
    args.extend(["--once", "--snapshot", "lvm"]);
    note_error(&run(&args).assert_error(1, &[&vg.name, "free"]));
    assert!(!target.exists(), "a refused cycle created the target");
    vg.assert_no_snapshot("after the refusal");
}

/// lvm2 "not installed": the binary runs in a private mount namespace where empty tmpfs hide
/// the sbin directories (blkmirror looks for the lvm tools on PATH and in the sbin dirs, so a
/// bare PATH would not hide them), with an absolute source path.
#[test]
#[ignore = "runs in the QEMU guest (see lvm_acceptance_in_guest)"]
fn lvm2_missing_is_one_clear_line() {
    const HIDE_LVM: &str = "for d in /usr/sbin /sbin /usr/local/sbin; do \
          if [ -d \"$d\" ] && [ ! -L \"$d\" ]; then mount -t tmpfs -o ro none \"$d\" || exit 99; fi; \
        done; \
        for t in lvm lvs vgs lvcreate; do \
          if command -v $t >/dev/null || [ -e /usr/sbin/$t ] || [ -e /sbin/$t ]; then \
            echo \"$t still visible\" >&2; exit 98; fi; \
        done; \
        exec \"$@\"";
    let vg = Vg::new("no-lvm2");
    let t = Scratch::new("no-lvm2");
    let lv = vg.linear("no-lvm2", 8);
    let target = t.path("target.img");
    let state = t.dir("state");
    for snapshot in ["lvm", "lvm-thin", "auto"] {
        let send = send_args(s(&lv), s(&target), &state);
        let mut args = vec!["-m", "sh", "-c", HIDE_LVM, "sh", bin()];
        args.extend(send.iter().map(String::as_str));
        args.extend(["--once", "--snapshot", snapshot]);
        let out = run_env("unshare", &args, &[("PATH", "/usr/bin:/bin")]);
        note_error(&out.assert_error(1, &["lvm2"]));
    }
    assert!(!target.exists(), "a refused cycle created the target");
    vg.assert_no_snapshot("after the refusals");
}

// =============================================================================================
// Change trackers (thin_delta, the COW table): O(changed) cycles and their failure paths
// =============================================================================================

/// Bytes a cycle may read after `writes` writes of the writer (each 4-12 KiB, so within two
/// 64 KiB blocks, or two pool chunks of a thin pool's larger ones).
fn read_bound(writes: u64) -> u64 {
    writes * 2 * 64 * KIB
}

/// Twenty cycles with a writer running during them, the tracker of the LV's kind in use:
/// after every cycle the target is the snapshot's content (copied by the pre-snapshot hook
/// while the writer paused), and every cycle after the first read only about what the writer
/// changed since the previous snapshot: a byte count, not a timing.
fn tracked_cycles(test: &str, kind: Kind, tracker: &str) {
    let x = Setup::new(test, kind, LV_MIB);
    let ctl = x.t.dir("writer");
    let expected = x.t.path("expected.img");
    let writer = Writer::start(&x.origin, &ctl, 41);
    let hooks = writer.hooks(&x.origin, &expected);
    let mut extra: Vec<&str> = hooks.iter().map(String::as_str).collect();
    if let Kind::Classic = kind {
        extra.extend(["--snapshot-size", "32M"]);
    }
    let mut previous_pause = 0;
    for generation in 1..=20u64 {
        let before = writer.writes();
        wait_for(RUN_TIMEOUT, "a few writes", || {
            (writer.writes() >= before + 5).then_some(())
        });
        let c = x.cycle(&extra);
        let paused_at = writer.paused_at();
        assert_eq!(c.generation, generation, "{:?}", c.raw);
        assert_identical(&expected, &x.target);
        assert_eq!(c.raw["tracker"], tracker, "{:?}", c.raw);
        if generation > 1 {
            assert_eq!(c.raw["full_scan_reason"], Value::Null, "{:?}", c.raw);
            let bound = read_bound(paused_at - previous_pause);
            assert!(
                c.bytes_read <= bound,
                "generation {generation} read {} bytes after {} writes (bound {bound})",
                c.bytes_read,
                paused_at - previous_pause
            );
        }
        eprintln!(
            "[lvm_guest]   tracked: {} writes, {} bytes read",
            paused_at - previous_pause,
            c.bytes_read
        );
        previous_pause = paused_at;
        x.vg.assert_only_kept(&x.state, "between tracked cycles");
    }
    writer.stop();
}

#[test]
#[ignore = "runs in the QEMU guest (see lvm_acceptance_in_guest)"]
fn thin_tracked_cycles_read_only_what_changed() {
    tracked_cycles("thin-tracked", Kind::Thin, "thin-delta");
}

#[test]
#[ignore = "runs in the QEMU guest (see lvm_acceptance_in_guest)"]
fn classic_tracked_cycles_read_only_what_changed() {
    tracked_cycles("classic-tracked", Kind::Classic, "cow-table");
}

/// The sender is killed after a tracked cycle took its snapshot (the previous one is kept):
/// the next start removes the dead cycle's snapshot, spares the kept one, and converges.
fn killed_between_snapshot_and_rotation(test: &str, kind: Kind) {
    let x = Setup::new(test, kind, LV_MIB);
    x.cycle(&[]);
    let kept = kept_snapshots(&x.state);
    assert_eq!(kept.len(), 1);
    fill_random(&x.origin, LV_MIB);
    let mut sender = x.sender(&[]);
    x.freeze_mid_cycle(&mut sender);
    sender.kill9();
    assert_eq!(
        x.vg.snapshots().len(),
        2,
        "the kept one and the dead cycle's"
    );
    random_writes(&x.origin, &mut Rng::new(43), 8, 1, 256 * KIB);
    let c = x.cycle(&[]);
    x.assert_converged(c.generation);
    assert_ne!(kept_snapshots(&x.state), kept, "the kept snapshot moved on");
}

#[test]
#[ignore = "runs in the QEMU guest (see lvm_acceptance_in_guest)"]
fn thin_killed_between_snapshot_and_rotation_converges() {
    killed_between_snapshot_and_rotation("thin-rotate-kill", Kind::Thin);
}

#[test]
#[ignore = "runs in the QEMU guest (see lvm_acceptance_in_guest)"]
fn classic_killed_between_snapshot_and_rotation_converges() {
    killed_between_snapshot_and_rotation("classic-rotate-kill", Kind::Classic);
}

/// The pool's held metadata root, as `dmsetup status` reports it ("-" when none).
fn held_metadata_root() -> String {
    let status = sh("dmsetup", &["status", &format!("{VG}-{POOL}-tpool")]);
    status
        .split_whitespace()
        .nth(6)
        .unwrap_or_else(|| panic!("short thin-pool status: {status}"))
        .to_string()
}

/// Killed while it holds the pool's metadata snapshot: the next start finds its own record,
/// releases the hold, and converges.
#[test]
#[ignore = "runs in the QEMU guest (see lvm_acceptance_in_guest)"]
fn thin_killed_while_holding_the_metadata_snapshot_releases_it_at_next_start() {
    let x = Setup::new("thin-hold-kill", Kind::Thin, LV_MIB);
    x.cycle(&[]);
    random_writes(&x.origin, &mut Rng::new(44), 8, 1, 256 * KIB);
    let args = x.send_args(x.kind.provider(), &[]);
    let env = [("BLKMIRROR_FAULT_THIN_HOLD_DELAY_MS", "600000")];
    let mut sender = Proc::blkmirror_env("sender", &args, &env);
    let holds = x.state.join("holds");
    wait_for(RUN_TIMEOUT, "the metadata hold", || {
        let held = fs::read_dir(&holds).ok()?.count() > 0;
        (held && held_metadata_root() != "-").then_some(())
    });
    sender.kill9();
    assert_ne!(held_metadata_root(), "-", "the kill left the hold");
    let c = x.cycle(&[]);
    assert_eq!(held_metadata_root(), "-", "the next start released it");
    x.assert_converged(c.generation);
}

/// A thin_delta of a refused version (1.0.3) means full scans, said in the cycle's figures.
#[test]
#[ignore = "runs in the QEMU guest (see lvm_acceptance_in_guest)"]
fn thin_delta_of_a_refused_version_means_a_full_scan() {
    let x = Setup::new("thin-version", Kind::Thin, LV_MIB);
    x.cycle(&[]);
    let fake = x.t.dir("fake-bin");
    let script = fake.join("thin_delta");
    fs::write(&script, "#!/bin/sh\necho 1.0.3\n").unwrap();
    sh("chmod", &["+x", s(&script)]);
    random_writes(&x.origin, &mut Rng::new(45), 8, 1, 256 * KIB);
    let path = format!("{}:{}", s(&fake), std::env::var("PATH").unwrap_or_default());
    let args = x.send_args(x.kind.provider(), &[]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = run_env(bin(), &args, &[("PATH", &path)]);
    out.assert_success();
    let report = &out.json_lines()[0];
    let reason = report["full_scan_reason"].as_str().unwrap_or_default();
    assert!(reason.contains("1.0.3"), "{report}");
    assert_eq!(report["bytes_read"], LV_MIB * MIB, "{report}");
    x.assert_converged(report["generation"].as_u64().unwrap());
}
