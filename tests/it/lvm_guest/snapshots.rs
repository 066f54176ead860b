//! Acceptance of the snapshot providers on real LVM: a writer during the cycle, SIGKILL and
//! SIGTERM mid-cycle, an overflowing classic snapshot, and one clear line for each source that
//! cannot be snapshotted. (Many cycles in a row: `trackers.rs`.)

use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::support::*;

use super::harness::*;

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
    let writer = Writer::start(&x.origin, &ctl, 11, Duration::from_millis(5));
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
