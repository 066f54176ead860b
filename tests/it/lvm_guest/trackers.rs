//! The change trackers on real LVM (`thin_delta`, the COW table): O(changed) cycles with a
//! writer running, and their failure paths.

use std::fs::{self};
use std::time::Duration;

use serde_json::Value;

use crate::support::*;

use super::harness::*;

// =============================================================================================
// Change trackers (thin_delta, the COW table): O(changed) cycles and their failure paths
// =============================================================================================

/// Bytes a cycle may read after `writes` writes of the writer (each 4-12 KiB, so within two
/// 64 KiB blocks, or two pool chunks of a thin pool's larger ones).
fn read_bound(writes: u64) -> u64 {
    writes * 2 * 64 * KIB
}

/// Twenty cycles with a writer running during them, each with `--snapshot auto` (which must
/// recognise the LV kind) and the default snapshot size, the tracker of the LV's kind in use:
/// after every cycle the target is the snapshot's content (copied by the pre-snapshot hook
/// while the writer paused), and every cycle after the first read only about what the writer
/// changed since the previous snapshot: a byte count, not a timing. With the writer stopped,
/// one last cycle converges: target equal to the origin, `verify` passes, status consistent.
fn tracked_cycles(test: &str, kind: Kind, tracker: &str) {
    // 1024 blocks of 64 KiB, and a writer slow enough that a cycle's writes touch a fraction
    // of them: a full scan (all of the LV) fails the bound.
    const TRACKED_MIB: u64 = 64;
    let x = Setup::new(test, kind, TRACKED_MIB);
    let ctl = x.t.dir("writer");
    let expected = x.t.path("expected.img");
    let writer = Writer::start(&x.origin, &ctl, 41, Duration::from_millis(50));
    let hooks = writer.hooks(&x.origin, &expected);
    let extra: Vec<&str> = hooks.iter().map(String::as_str).collect();
    let mut previous_pause = 0;
    for generation in 1..=20u64 {
        let before = writer.writes();
        wait_for(RUN_TIMEOUT, "a few writes", || {
            (writer.writes() >= before + 5).then_some(())
        });
        let c = x.cycle_with("auto", &extra);
        let paused_at = writer.paused_at();
        assert_eq!(c.generation, generation, "{:?}", c.raw);
        assert_identical(&expected, &x.target);
        assert_eq!(c.raw["tracker"], tracker, "{:?}", c.raw);
        if generation > 1 {
            assert_eq!(c.raw["full_scan_reason"], Value::Null, "{:?}", c.raw);
            let bound = read_bound(paused_at - previous_pause).min(TRACKED_MIB * MIB - 1);
            assert!(
                c.bytes_read <= bound,
                "generation {generation} read {} bytes after {} writes (bound {bound})",
                c.bytes_read,
                paused_at - previous_pause
            );
        }
        eprintln!(
            "[lvm_guest]   tracked ({tracker}): {} writes, {} bytes read, {} bytes changed (4 KiB sub-blocks that differ)",
            paused_at - previous_pause,
            c.bytes_read,
            c.raw["bytes_changed"]
        );
        previous_pause = paused_at;
        x.vg.assert_only_kept(&x.state, "between tracked cycles");
    }
    writer.stop();
    let last = x.cycle_with("auto", &[]);
    assert_eq!(last.raw["full_scan_reason"], Value::Null, "{:?}", last.raw);
    x.assert_converged(21);
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
