//! History on the target (`blkmirror::history`) on real filesystems: snapshots of an image
//! file taken across changes on xfs (`reflink=1`) and btrfs loop mounts, listed, pruned with a
//! policy and an injected `now`, restored and compared byte for byte with the content at their
//! generation; files not made by history left alone; leftovers of a crash removed unless held;
//! the clear refusals (ext4 without reflink, a history dir on another filesystem, a block
//! device that is no LV).

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::Path;

use blkmirror::history::{self, HistoryError, Policy};
use nix::fcntl::{Flock, FlockArg};

use crate::support::*;

/// 2026-01-01 00:00:00 UTC: every bucket of the policies below starts on it.
const T0: u64 = 1_767_225_600;
const MINUTE: u64 = 60;
const HOUR: u64 = 3_600;
const DAY: u64 = 86_400;

/// Writes `len` seeded random bytes at `offset` of `path` (created if missing).
fn write_at(path: &Path, offset: u64, len: usize, seed: u64) {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .unwrap();
    file.write_all_at(&Rng::new(seed).bytes(len), offset)
        .unwrap();
    file.sync_all().unwrap();
}

/// Asserts that every extent of `path` is shared with another file (FIEMAP's "shared" flag, as
/// `filefrag -v` prints it): the file is a reflink clone, not a copy.
fn assert_all_extents_shared(path: &Path) {
    let out = sh("filefrag", &["-v", s(path)]);
    let extents: Vec<&str> = out
        .lines()
        .filter(|l| l.trim_start().starts_with(|c: char| c.is_ascii_digit()) && l.contains(':'))
        .collect();
    assert!(
        !extents.is_empty(),
        "no extents in filefrag's output:\n{out}"
    );
    for line in extents {
        assert!(line.contains("shared"), "an extent is not shared:\n{out}");
    }
}

/// The generations of `entries`, in order.
fn generations(entries: &[history::Entry]) -> Vec<u64> {
    entries.iter().map(|e| e.generation).collect()
}

/// Seven generations of a changing image, pruned at T0 + 10h with `1h:10m,1d:hourly`:
///
/// | gen | taken at   | age at now | verdict                                            |
/// |-----|------------|------------|----------------------------------------------------|
/// | 1   | T0 - 2d    | 2d 10h     | pruned: older than the last window (1d)            |
/// | 2   | T0 + 0h05  | 9h55       | kept: oldest of hour 0                             |
/// | 3   | T0 + 0h35  | 9h25       | pruned: hour 0 has an older one, 2                 |
/// | 4   | T0 + 9h02  | 58m        | kept: oldest of 9:00-9:10 (and of hour 9)          |
/// | 5   | T0 + 9h05  | 55m        | pruned: 9:00-9:10 and hour 9 have an older one, 4  |
/// | 6   | T0 + 9h31  | 29m        | kept: oldest of 9:30-9:40                          |
/// | 7   | T0 + 9h55  | 5m         | kept: the newest (and younger than 10m)            |
fn take_list_prune_restore(kind: &str) {
    let t = Scratch::new(&format!("history-{kind}"));
    let fs = Filesystem::new(&t, kind);
    let target = fs.path("target.img");
    let dir = fs.path("state/targets/key/history");
    let times = [
        T0 - 2 * DAY,
        T0 + 5 * MINUTE,
        T0 + 35 * MINUTE,
        T0 + 9 * HOUR + 2 * MINUTE,
        T0 + 9 * HOUR + 5 * MINUTE,
        T0 + 9 * HOUR + 31 * MINUTE,
        T0 + 9 * HOUR + 55 * MINUTE,
    ];

    write_at(&target, 0, 8 * MIB as usize, 1);
    history::check(&target, &dir).unwrap();
    assert!(dir.is_dir(), "check creates the history dir");
    assert_eq!(
        std::fs::read_dir(&dir).unwrap().count(),
        0,
        "the probe is gone"
    );

    // Files that are not ours, some with names close to ours: never touched.
    std::fs::write(dir.join("notes.txt"), b"mine").unwrap();
    std::fs::write(dir.join("gen-42-1767225600.img"), b"not canonical").unwrap();
    std::os::unix::fs::symlink(&target, dir.join("gen-00000000000000000099-1767225600.img"))
        .unwrap();
    std::fs::create_dir(dir.join("gen-00000000000000000098-1767225600.img")).unwrap();
    let foreign = [
        "gen-00000000000000000098-1767225600.img",
        "gen-00000000000000000099-1767225600.img",
        "gen-42-1767225600.img",
        "notes.txt",
    ];

    // Generation g changes 64 KiB somewhere, generation 5 also grows the image by 1 MiB.
    let mut contents: Vec<Vec<u8>> = Vec::new();
    for (i, created) in times.iter().enumerate() {
        let generation = i as u64 + 1;
        if generation > 1 {
            write_at(
                &target,
                generation * MIB + 4096,
                64 * KIB as usize,
                100 + generation,
            );
        }
        if generation == 5 {
            write_at(&target, 8 * MIB, MIB as usize, 555);
        }
        let content = std::fs::read(&target).unwrap();
        let entry = history::take(&target, &dir, generation, *created).unwrap();
        assert_eq!((entry.generation, entry.created), (generation, *created));
        assert_eq!(
            entry.path,
            dir.join(format!("gen-{generation:020}-{created}.img"))
        );
        assert_eq!(
            std::fs::read(&entry.path).unwrap(),
            content,
            "gen {generation}"
        );
        if generation == 1 {
            assert_all_extents_shared(&entry.path);
            let mode = std::fs::metadata(&entry.path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        contents.push(content);
    }
    assert_ne!(contents[0], contents[1]);
    assert_eq!(contents[6].len() as u64, 9 * MIB);

    // The same generation at the same second is not taken twice.
    let again = history::take(&target, &dir, 7, times[6]).unwrap_err();
    assert!(
        matches!(again, HistoryError::SnapshotExists { .. }),
        "{again}"
    );

    // A listing recovers generation and time from the names alone; every snapshot still holds
    // its generation's bytes although the target changed after it was taken.
    let entries = history::list(&dir).unwrap();
    assert_eq!(generations(&entries), [1, 2, 3, 4, 5, 6, 7]);
    for (entry, content) in entries.iter().zip(&contents) {
        assert_eq!(entry.created, times[entry.generation as usize - 1]);
        assert_eq!(
            &std::fs::read(&entry.path).unwrap(),
            content,
            "gen {}",
            entry.generation
        );
    }
    let listing = history::scan(&dir).unwrap();
    let unknown: Vec<String> = listing
        .unknown
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(unknown, foreign);
    assert!(listing.partial.is_empty());

    // A partial clone left by a crash is removed by prune; one a take still holds is not.
    let stale = dir.join(format!(".gen-{:020}-{}.img.partial", 8, T0 + 10 * HOUR));
    let busy = dir.join(format!(".gen-{:020}-{}.img.partial", 9, T0 + 10 * HOUR));
    std::fs::write(&stale, b"half").unwrap();
    std::fs::write(&busy, b"half").unwrap();
    let held = Flock::lock(File::open(&busy).unwrap(), FlockArg::LockExclusiveNonblock).unwrap();
    assert_eq!(
        history::scan(&dir).unwrap().partial,
        [stale.clone(), busy.clone()]
    );

    let policy = Policy::parse("1h:10m,1d:hourly").unwrap();
    let now = T0 + 10 * HOUR;
    let pruned = history::prune(&dir, &policy, now).unwrap();
    assert_eq!(generations(&pruned), [1, 3, 5]);
    for entry in &pruned {
        assert!(
            !entry.path.exists(),
            "{} still exists",
            entry.path.display()
        );
    }
    assert_eq!(generations(&history::list(&dir).unwrap()), [2, 4, 6, 7]);
    assert!(!stale.exists(), "the crash leftover is removed");
    assert!(busy.exists(), "a held partial clone is left alone");
    for name in foreign {
        assert!(
            dir.join(name).symlink_metadata().is_ok(),
            "{name} was deleted"
        );
    }
    assert!(target.exists());
    assert_eq!(std::fs::read(dir.join("notes.txt")).unwrap(), b"mine");
    // Stable: a second prune at the same time prunes nothing.
    assert_eq!(history::prune(&dir, &policy, now).unwrap(), []);
    drop(held);

    // Restore: a new file with the bytes of that generation, on the same filesystem.
    for generation in [2u64, 6] {
        let dest = fs.path(&format!("restored-{generation}.img"));
        let entry = history::restore(&dir, generation, &dest).unwrap();
        assert_eq!(entry.generation, generation);
        assert_eq!(
            std::fs::read(&dest).unwrap(),
            contents[generation as usize - 1],
            "restored gen {generation}"
        );
    }
    // Restoring gives an independent file: writing it changes neither snapshot nor target.
    let restored = fs.path("restored-2.img");
    write_at(&restored, 0, 4096, 999);
    assert_eq!(
        std::fs::read(dir.join(format!("gen-{:020}-{}.img", 2, times[1]))).unwrap(),
        contents[1]
    );
    assert_eq!(std::fs::read(&target).unwrap(), contents[6]);

    // Never over an existing file: the target itself, or an earlier restore.
    for dest in [&target, &restored] {
        let before = std::fs::read(dest).unwrap();
        let error = history::restore(&dir, 4, dest).unwrap_err();
        assert_eq!(
            error.to_string(),
            format!(
                "restore refuses to overwrite {}: it exists; give a new path, or remove it first",
                dest.display()
            )
        );
        assert_eq!(std::fs::read(dest).unwrap(), before);
    }
    let error = history::restore(&dir, 3, &fs.path("three.img")).unwrap_err();
    assert_eq!(
        error.to_string(),
        format!(
            "no snapshot of generation 3 in {} (there are: 2, 4, 6, 7)",
            dir.display()
        )
    );
    // Another filesystem (the scratch dir) cannot take a reflink clone.
    let elsewhere = t.path("restored-elsewhere.img");
    let error = history::restore(&dir, 4, &elsewhere).unwrap_err();
    assert!(
        matches!(error, HistoryError::RestoreCrossDevice { .. }),
        "{error}"
    );
    assert!(!elsewhere.exists());
    // Nothing partial is left next to the destinations.
    let leftovers: Vec<_> = std::fs::read_dir(&fs.mount.dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".partial"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn take_list_prune_restore_on_xfs() {
    take_list_prune_restore("xfs");
}

#[test]
fn take_list_prune_restore_on_btrfs() {
    take_list_prune_restore("btrfs");
}

#[test]
fn ext4_has_no_reflink_and_says_so() {
    let t = Scratch::new("history-ext4");
    let fs = Filesystem::new(&t, "ext4");
    let target = fs.path("target.img");
    write_at(&target, 0, MIB as usize, 7);
    let dir = fs.path("history");
    let expected = format!(
        "history needs a filesystem with reflink (xfs reflink=1, btrfs): FICLONE on {} failed: Operation not supported",
        dir.display()
    );
    let error = history::check(&target, &dir).unwrap_err();
    assert_eq!(error.to_string(), expected);
    assert!(!error.is_transient());
    let error = history::take(&target, &dir, 1, T0).unwrap_err();
    assert_eq!(error.to_string(), expected);
    assert_eq!(
        std::fs::read_dir(&dir).unwrap().count(),
        0,
        "nothing is left in the history dir"
    );
    assert_eq!(history::list(&dir).unwrap(), []);
}

#[test]
fn history_dir_on_another_filesystem_is_refused() {
    let t = Scratch::new("history-exdev");
    let fs = Filesystem::new(&t, "xfs");
    let target = fs.path("target.img");
    write_at(&target, 0, MIB as usize, 8);
    let dir = t.path("history");
    let error = history::take(&target, &dir, 1, T0).unwrap_err();
    assert!(matches!(error, HistoryError::CrossDevice { .. }), "{error}");
    assert_eq!(
        error.to_string(),
        format!(
            "history dir {} is on another filesystem than target {}: a reflink clone stays within one filesystem; put the history dir on the target's filesystem",
            dir.display(),
            target.display()
        )
    );
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
}

/// A block device that is no LV (a loop device) is refused with one line, before any lvm2
/// command and without creating anything. (Thin LVs, and the refusal of classic LVs, are
/// proven on real LVM in the guest: `lvm_guest::history`.)
#[test]
fn block_devices_that_are_not_lvs_are_refused() {
    let t = Scratch::new("history-blockdev");
    let image = t.path("disk.img");
    File::create(&image).unwrap().set_len(16 * MIB).unwrap();
    let dev = LoopDevice::attach(&image);
    let dir = t.path("history");
    let expected = format!(
        "history cannot keep snapshots of {}: it is a block device but not an LVM logical volume; history works for image files on xfs (reflink=1) or btrfs, and for thin LVs",
        dev.as_str()
    );
    let error = history::classify(dev.path()).unwrap_err();
    assert_eq!(error.to_string(), expected);
    let error = history::take(dev.path(), &dir, 1, T0).unwrap_err();
    assert_eq!(error.to_string(), expected);
    let error = history::Store::for_target(dev.path(), None).unwrap_err();
    assert_eq!(error.to_string(), expected);
    assert!(!dir.exists(), "nothing was created for a refused target");
    assert_eq!(
        history::classify(&image).unwrap(),
        history::TargetKind::File
    );
    // The command line says the same in one line, for receive --keep and history.
    let line = format!("blkmirror: error: {expected}");
    let out = run(&["receive", "--stdio", "--keep", "1h:10m", dev.as_str()]);
    assert_eq!(out.assert_error(1, &["not an LVM logical volume"]), line);
    let out = run(&["history", "list", dev.as_str()]);
    assert_eq!(out.assert_error(2, &["not an LVM logical volume"]), line);
}

/// The whole path: a TLS receiver with `--keep` keeps a snapshot of each committed
/// generation; `blkmirror history list` shows them; `history restore` gives generation 1's
/// bytes back while the target holds generation 3; `history prune` applies a grid; and a
/// receiver whose target's filesystem has no reflink refuses `--keep` at start.
#[test]
fn a_receiver_with_keep_snapshots_each_commit_and_history_restores_one() {
    let t = Scratch::new("history-e2e");
    let fs = Filesystem::new(&t, "xfs");
    let ids = TlsPair::new(&t);
    let src = t.path("source.img");
    write_random_file(&src, 4 * MIB, 801);
    let target = fs.path("mirror.img");
    let mut rargs = ids.receiver_args();
    rargs.extend(["--create", "--keep", "1h:10m,24h:hourly"].map(String::from));
    let receiver = Receiver::start(&target, &t.dir("rstate"), &rargs);
    let sargs = ids.sender_args();
    let sargs: Vec<&str> = sargs.iter().map(String::as_str).collect();
    let mut contents = Vec::new();
    let mut rng = Rng::new(802);
    for generation in 1..=3u64 {
        if generation > 1 {
            random_writes(&src, &mut rng, 8, 64, 200 * KIB);
        }
        contents.push(read_all(&src));
        let c = send_once(s(&src), &receiver.url(), &t.dir("sstate"), &sargs);
        assert_eq!(c.generation, generation);
    }
    // The snapshot follows the commit's acknowledgement: wait for the third.
    let list = || run(&["history", "list", s(&target)]);
    wait_for(RUN_TIMEOUT, "three snapshots", || {
        (list().stdout.len() == 3).then_some(())
    });
    let out = list();
    out.assert_success();
    let gens: Vec<&str> = out
        .stdout
        .iter()
        .map(|l| l.split_whitespace().next().unwrap())
        .collect();
    assert_eq!(gens, ["1", "2", "3"], "{out:?}");

    let restored = fs.path("restored.img");
    run(&["history", "restore", s(&target), "1", s(&restored)]).assert_success();
    assert_content(&restored, &contents[0], "generation 1 restored");
    assert_content(&target, &contents[2], "the target, still at generation 3");
    // Never over an existing file.
    run(&["history", "restore", s(&target), "2", s(&restored)]).assert_error(2, &["exists"]);

    // Ten days on, past the grid's last window, only the newest survives (an injected now).
    let now = (blkmirror::state::now() + 10 * DAY).to_string();
    let out = run(&[
        "history",
        "prune",
        s(&target),
        "--keep",
        "1h:10m",
        "--now",
        &now,
    ]);
    out.assert_success();
    assert_eq!(out.stdout.len(), 2, "{out:?}");
    assert_eq!(list().stdout.len(), 1);
    drop(receiver);

    // No reflink on ext4: --keep is refused at start, naming the cause.
    let ext4 = Filesystem::new(&t, "ext4");
    let plain = ext4.path("mirror.img");
    std::fs::write(&plain, vec![0u8; 1 << 20]).unwrap();
    let err = Receiver::try_start_at(&plain, &t.dir("rstate4"), "127.0.0.1:0", &rargs)
        .err()
        .expect("a receiver with --keep on ext4 started");
    assert!(err.contains("reflink"), "{err}");
}
