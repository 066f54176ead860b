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
//! Developer command (the whole suite, 20-25 minutes): `cargo nextest run lvm_guest::`
//! (or `cargo test --test it lvm_guest:: -- --nocapture` to watch the guest's output as it
//! runs). `LVM_GUEST_ONLY=history::` (any part of a test name after `lvm_guest::`) boots the
//! guest for the matching in-guest tests only, e.g.
//! `LVM_GUEST_ONLY=history:: cargo test --test it lvm_acceptance_in_guest -- --nocapture`.
//!
//! Waiting is always polling a condition with a deadline; every process a test starts is
//! stopped by PID (the `Proc` guard), every LV by name.

mod harness;
mod history;
mod metrics;
mod snapshots;
mod trackers;

use std::fs::{self};
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use crate::support::*;

/// Prefix of every snapshot LV blkmirror makes.
const SNAP_PREFIX: &str = "blkmirror-snap-";
/// The guest's scratch disk (a fresh sparse file on the host for every boot).
const GUEST_DISK: &str = "/dev/vda";
/// Set by `ci/guest/run-in-guest.sh` in the guest.
const IN_GUEST_ENV: &str = "BLKMIRROR_IN_GUEST";
/// QEMU's deadline for the whole guest run (boot, every test, power-off): the suite takes
/// 20-25 minutes under software emulation (the tracked-cycle tests, 20 cycles each, most).
const GUEST_TIMEOUT: Duration = Duration::from_secs(2700);
/// The host test's deadline: QEMU's, and time to collect its output.
const HOST_TIMEOUT: Duration = Duration::from_secs(2800);

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

/// Narrows the in-guest run to the tests whose name, after `lvm_guest::`, starts with its
/// value (unset or empty: every one).
const ONLY_ENV: &str = "LVM_GUEST_ONLY";

/// The filter the guest runs: [`suite_filter`], narrowed by [`ONLY_ENV`].
fn guest_filter() -> String {
    match std::env::var(ONLY_ENV) {
        Ok(only) if !only.is_empty() => format!("{}{only}", suite_filter()),
        _ => suite_filter(),
    }
}

/// The names of this module's ignored tests that the guest is to run, listed on the host.
fn ignored_tests(exe: &Path) -> Vec<String> {
    let filter = suite_filter();
    let out = run_program(
        s(exe),
        &["--list", "--ignored", "--format", "terse", &guest_filter()],
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
    assert!(
        !expected.is_empty(),
        "no ignored (in-guest) tests listed for the filter {:?}",
        guest_filter()
    );

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
            &guest_filter(),
        ],
        Some(&repo()),
        &[("GUEST_TIMEOUT", &GUEST_TIMEOUT.as_secs().to_string())],
    );
    // Echo the guest's output as it comes (seen live with --nocapture; otherwise the test
    // runner shows it on failure).
    let deadline = started + HOST_TIMEOUT;
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
            panic!("the guest run did not end within {HOST_TIMEOUT:?}");
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
