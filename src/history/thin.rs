//! History of a thin-LV target: after each committed generation a thin snapshot of the LV, in
//! its own volume group, and the same retention grid as for file targets
//! ([`super::retention`]).
//!
//! * Which LV a target is ([`lv_of_device`]): a block device is an LVM LV when sysfs says its
//!   device-mapper uuid starts with `LVM-` (no lvm2 command is run for anything else); then
//!   `lvs` is matched by device number (`/dev/VG/LV`, `/dev/mapper/VG-LV` and `/dev/dm-N`
//!   all work). Only a thin LV (`lv_attr` type `V`) is accepted: a classic snapshot per
//!   generation would need its own copy-on-write space and slow every write to the origin.
//! * A snapshot: `lvcreate -s -n <lv>-hist-<generation>-<created> --addtag blkmirror-history
//!   VG/LV` (no size: it shares the pool). Thin snapshots carry the activation-skip flag, so
//!   they stay inactive (no device-mapper device) until a restore needs one.
//! * The listing: `lvs` of the VG; an LV is one of ours when its name parses for this origin
//!   ([`parse_name`]) *and* it carries the tag [`TAG`]. LVs with only one of the two are
//!   reported in the log and never touched.
//! * Pruning: the retention verdicts, then `lvremove -y VG/NAME` for each pruned snapshot.
//! * Restoring: `lvchange -ay -K` for the copy (unless it was active already), a copy into a
//!   new file (a partial name, fsync, a rename that never replaces, fsync of the directory),
//!   and `lvchange -an` afterwards on every path.
//!
//! The pure parts (names, the listing from `lvs` rows, the device match, the prune plan) are
//! tested on the host; the rest runs in the LVM guest (`tests/it/lvm_guest/history.rs`).

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::clone;
use super::error::HistoryError;
use super::naming::Entry;
use super::policy::Policy;
use super::retention::{self, Snapshot};
use crate::snapshot::command::{command_line, lvm, LvmTool, Ran};
use crate::snapshot::lvm::report::{Attr, LvRow};
use crate::snapshot::lvm::{lvs, wait_for_device, LvRef};
use crate::snapshot::SnapshotError;

/// The tag every history snapshot carries.
pub const TAG: &str = "blkmirror-history";
/// Between the origin's name and the numbers.
const INFIX: &str = "-hist-";

/// The LV name of the snapshot of `lv` holding `generation`, taken at `created`.
pub fn snapshot_name(lv: &str, generation: u64, created: u64) -> String {
    format!("{lv}{INFIX}{generation}-{created}")
}

/// `(generation, created)` of the name of a history snapshot of `lv`; `None` for any other
/// name (only the canonical form, so `data-hist-01-2` or `data-hist-1-2-x` are not ours).
pub fn parse_name(lv: &str, name: &str) -> Option<(u64, u64)> {
    let rest = name.strip_prefix(lv)?.strip_prefix(INFIX)?;
    let (generation, created) = rest.split_once('-')?;
    let digits = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
    if !digits(generation) || !digits(created) {
        return None;
    }
    let numbers = (generation.parse().ok()?, created.parse().ok()?);
    (snapshot_name(lv, numbers.0, numbers.1) == name).then_some(numbers)
}

/// One history snapshot LV.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ThinEntry {
    /// Its LV.
    pub lv: LvRef,
    /// The generation it holds.
    pub generation: u64,
    /// When it was taken (Unix seconds).
    pub created: u64,
    /// Active now (its device node exists).
    pub active: bool,
}

impl ThinEntry {
    /// As the store's [`Entry`]: its path is `/dev/VG/NAME`.
    pub fn entry(&self) -> Entry {
        Entry {
            generation: self.generation,
            created: self.created,
            path: self.lv.dev_path(),
        }
    }

    fn snapshot(&self) -> Snapshot {
        Snapshot {
            generation: self.generation,
            created: self.created,
        }
    }
}

/// The history snapshots of one LV, and the LVs that look half like ours.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ThinListing {
    /// Ours, by generation then creation time.
    pub entries: Vec<ThinEntry>,
    /// Named like ours but without the tag, or tagged but named otherwise: left alone.
    pub unknown: Vec<String>,
}

/// Sorts the `lvs` rows of `vg` into the history snapshots of `lv` and the doubtful ones.
pub fn listing(rows: &[LvRow], vg: &str, lv: &str) -> ThinListing {
    let mut out = ThinListing::default();
    for row in rows.iter().filter(|r| r.vg_name == vg) {
        let tagged = row.lv_tags.iter().any(|t| t == TAG);
        match (parse_name(lv, &row.lv_name), tagged) {
            (Some((generation, created)), true) => out.entries.push(ThinEntry {
                lv: LvRef::new(vg, &row.lv_name),
                generation,
                created,
                active: Attr::parse(&row.lv_attr).is_some_and(|a| a.is_active()),
            }),
            (Some(_), false) => out.unknown.push(row.lv_name.clone()),
            (None, true) if row.lv_name.starts_with(&format!("{lv}{INFIX}")) => {
                out.unknown.push(row.lv_name.clone())
            }
            _ => {}
        }
    }
    out.entries.sort_by_key(|e| (e.generation, e.created));
    out.unknown.sort();
    out
}

/// The snapshots of `entries` that `policy` prunes at `now`, in order.
pub fn to_prune<'a>(entries: &'a [ThinEntry], policy: &Policy, now: u64) -> Vec<&'a ThinEntry> {
    let snapshots: Vec<Snapshot> = entries.iter().map(ThinEntry::snapshot).collect();
    let verdicts = retention::verdicts(policy, &snapshots, now);
    entries
        .iter()
        .zip(verdicts)
        .filter(|(_, v)| !v.is_keep())
        .map(|(e, _)| e)
        .collect()
}

/// Whether a device-mapper uuid (`/sys/dev/block/M:m/dm/uuid`) is an LVM LV's.
pub fn is_lvm_uuid(uuid: &str) -> bool {
    uuid.trim().starts_with("LVM-")
}

/// The LV (and its `lv_attr`) among `rows` whose kernel device number is `major:minor`.
pub fn match_device(rows: &[LvRow], major: i64, minor: i64) -> Option<(LvRef, Attr)> {
    rows.iter()
        .find(|r| r.lv_kernel_major == Some(major) && r.lv_kernel_minor == Some(minor))
        .and_then(|r| Some((LvRef::new(&r.vg_name, &r.lv_name), Attr::parse(&r.lv_attr)?)))
}

/// The LV a block device `target` is, with its `lv_attr`; `None` when it is no LVM LV.
pub fn lv_of_device(target: &Path) -> Result<Option<(LvRef, Attr)>, HistoryError> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(target).map_err(|error| HistoryError::Io {
        what: "cannot examine target",
        path: target.to_owned(),
        error,
    })?;
    let (major, minor) = (
        nix::sys::stat::major(meta.rdev()),
        nix::sys::stat::minor(meta.rdev()),
    );
    // Without sysfs, ask lvm2; with it, only a device-mapper device of LVM's can be an LV.
    if Path::new("/sys/dev/block").is_dir() {
        let uuid = std::fs::read_to_string(format!("/sys/dev/block/{major}:{minor}/dm/uuid"));
        if !uuid.is_ok_and(|u| is_lvm_uuid(&u)) {
            return Ok(None);
        }
    }
    let rows = lvs(
        "vg_name,lv_name,lv_attr,lv_kernel_major,lv_kernel_minor",
        None,
        "check lvm2 with `lvs`",
    )
    .map_err(|e| lvm_error(e, "lvs"))?;
    Ok(match_device(&rows, major as i64, minor as i64))
}

/// All history snapshots of `vg/lv` (the doubtful LVs go to the log).
pub fn scan(vg: &str, lv: &str) -> Result<ThinListing, HistoryError> {
    let rows = lvs(
        "vg_name,lv_name,lv_attr,lv_tags",
        Some(vg),
        "check the volume group with `lvs`",
    )
    .map_err(|e| lvm_error(e, "lvs"))?;
    let found = listing(&rows, vg, lv);
    if !found.unknown.is_empty() {
        tracing::warn!(vg, lvs = ?found.unknown, "LVs named like history snapshots of {lv} without the tag {TAG} (or tagged but named otherwise): left alone");
    }
    Ok(found)
}

/// The history snapshots of `vg/lv`, by generation then creation time.
pub fn list(vg: &str, lv: &str) -> Result<Vec<Entry>, HistoryError> {
    Ok(scan(vg, lv)?.entries.iter().map(ThinEntry::entry).collect())
}

/// Takes a thin snapshot of `vg/lv` as generation `generation` at `now` (Unix seconds),
/// tagged [`TAG`]. Refuses one that exists already under the same name.
pub fn take(vg: &str, lv: &str, generation: u64, now: u64) -> Result<Entry, HistoryError> {
    let snap = LvRef::new(vg, &snapshot_name(lv, generation, now));
    let origin = LvRef::new(vg, lv);
    let args = vec![
        "-s".to_string(),
        "-n".into(),
        snap.lv.clone(),
        "--addtag".into(),
        TAG.into(),
        origin.arg(),
    ];
    match run(
        LvmTool::Lvcreate,
        &args,
        "check the thin pool's free space with `lvs`",
    ) {
        Ok(_) => {}
        Err(SnapshotError::LvmCommand { ref stderr, .. }) if stderr.contains("already exists") => {
            return Err(HistoryError::SnapshotExists {
                path: snap.dev_path(),
            })
        }
        Err(e) => return Err(lvm_error(e, "lvcreate")),
    }
    Ok(Entry {
        generation,
        created: now,
        path: snap.dev_path(),
    })
}

/// Removes the history snapshots of `vg/lv` that `policy` prunes at `now`; returns them.
pub fn prune(vg: &str, lv: &str, policy: &Policy, now: u64) -> Result<Vec<Entry>, HistoryError> {
    let found = scan(vg, lv)?;
    let mut pruned = Vec::new();
    for entry in to_prune(&found.entries, policy, now) {
        let removed = run(
            LvmTool::Lvremove,
            &["-y".to_string(), entry.lv.arg()],
            "remove it by hand with `lvremove` once it is no longer in use",
        );
        match removed {
            Ok(_) => pruned.push(entry.entry()),
            Err(SnapshotError::LvmCommand { ref stderr, .. })
                if stderr.contains("Failed to find logical volume") => {}
            Err(e) => return Err(lvm_error(e, "lvremove")),
        }
    }
    Ok(pruned)
}

/// Copies the history snapshot of `generation` of `vg/lv` into `dest`, a new file, and returns
/// the snapshot. Refuses to overwrite anything at `dest`; on failure nothing is left there.
/// The snapshot is activated for the copy and deactivated afterwards (unless it was active
/// before), whatever happens.
pub fn restore(vg: &str, lv: &str, generation: u64, dest: &Path) -> Result<Entry, HistoryError> {
    let entries = scan(vg, lv)?.entries;
    let mut matching: Vec<&ThinEntry> = entries
        .iter()
        .filter(|e| e.generation == generation)
        .collect();
    let snap = match matching.len() {
        0 => {
            let mut available: Vec<u64> = entries.iter().map(|e| e.generation).collect();
            available.dedup();
            return Err(HistoryError::NoSuchThinGeneration {
                lv: LvRef::new(vg, lv).to_string(),
                generation,
                available,
            });
        }
        1 => matching.remove(0).clone(),
        _ => {
            return Err(HistoryError::Ambiguous {
                generation,
                paths: matching.iter().map(|e| e.lv.dev_path()).collect(),
            })
        }
    };
    let partial = super::naming::restore_partial(dest)?;
    let dest_dir = partial
        .parent()
        .expect("a partial name beside the destination");
    let active = Activated::new(&snap)?;
    let result = copy_to_new(&active.path(), &partial)
        .and_then(|()| super::naming::put_restored(&partial, dest));
    drop(active);
    if let Err(error) = result {
        let _ = std::fs::remove_file(&partial);
        return Err(error);
    }
    clone::sync_dir(dest_dir).map_err(|error| HistoryError::Io {
        what: "cannot fsync the directory",
        path: dest_dir.to_owned(),
        error,
    })?;
    Ok(snap.entry())
}

/// A snapshot activated for reading, deactivated on drop (if this activated it).
struct Activated<'a> {
    snap: &'a ThinEntry,
    deactivate: bool,
}

impl<'a> Activated<'a> {
    fn new(snap: &'a ThinEntry) -> Result<Activated<'a>, HistoryError> {
        let mut held = Activated {
            snap,
            deactivate: false,
        };
        if !snap.active {
            // From here on a failure (even of the activation itself) deactivates.
            held.deactivate = true;
            run(
                LvmTool::Lvchange,
                &["-ay".to_string(), "-K".into(), snap.lv.arg()],
                "check the thin pool with `lvs -a`",
            )
            .map_err(|e| lvm_error(e, "lvchange"))?;
        }
        if !wait_for_device(&held.path()) {
            return Err(HistoryError::Lvm {
                message: format!(
                    "snapshot {} was activated but {} did not appear: check udev and `lvs`",
                    snap.lv,
                    held.path().display()
                ),
            });
        }
        Ok(held)
    }

    fn path(&self) -> PathBuf {
        self.snap.lv.dev_path()
    }
}

impl Drop for Activated<'_> {
    fn drop(&mut self) {
        if !self.deactivate {
            return;
        }
        let args = ["-an".to_string(), self.snap.lv.arg()];
        if let Err(e) = run(LvmTool::Lvchange, &args, "deactivate it by hand") {
            tracing::warn!(snapshot = %self.snap.lv, error = %lvm_error(e, "lvchange"), "history: cannot deactivate the snapshot after the restore");
        }
    }
}

/// Copies the device `from` into `to`, a new file (mode 0600), leaving holes where `from`
/// reads zeros; fsyncs it.
fn copy_to_new(from: &Path, to: &Path) -> Result<(), HistoryError> {
    let io_error = |what, path: &Path| {
        let path = path.to_owned();
        move |error| HistoryError::Io { what, path, error }
    };
    let mut source = File::open(from).map_err(io_error("cannot open", from))?;
    let mut dest = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(to)
        .map_err(io_error("cannot create", to))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut length = 0u64;
    loop {
        let n = match source.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io_error("cannot read", from)(e)),
        };
        let chunk = &buf[..n];
        if chunk.iter().all(|&b| b == 0) {
            dest.seek(SeekFrom::Current(n as i64))
                .map_err(io_error("cannot seek in", to))?;
        } else {
            dest.write_all(chunk)
                .map_err(io_error("cannot write", to))?;
        }
        length += n as u64;
    }
    dest.set_len(length).map_err(io_error("cannot size", to))?;
    dest.sync_all().map_err(io_error("cannot fsync", to))
}

/// Runs an lvm2 tool (root, found on PATH or in the sbin directories).
fn run(tool: LvmTool, args: &[String], hint: &'static str) -> Result<Ran, SnapshotError> {
    let ran = lvm(tool, args, hint);
    if ran.is_ok() {
        tracing::debug!(command = %command_line(tool.name(), args), "history: ran");
    }
    ran
}

/// An lvm2 failure as a history error, worded for history (not for a sender's snapshots).
fn lvm_error(error: SnapshotError, program: &str) -> HistoryError {
    let message = match error {
        SnapshotError::LvmMissing { program } => format!(
            "lvm2 is not installed ({program} not found): history of an LV target needs lvm2"
        ),
        SnapshotError::NotRoot { program, detail } => {
            format!("history of an LV target needs root ({program}: {detail})")
        }
        SnapshotError::LvmCommand {
            command,
            status,
            stderr,
            hint,
        } => format!("`{command}` failed ({status}): {stderr}; {hint}"),
        other => format!("{program}: {other}"),
    };
    HistoryError::Lvm { message }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(vg: &str, lv: &str, attr: &str, tags: &[&str]) -> LvRow {
        LvRow {
            vg_name: vg.into(),
            lv_name: lv.into(),
            lv_attr: attr.into(),
            lv_tags: tags.iter().map(|t| t.to_string()).collect(),
            ..LvRow::default()
        }
    }

    #[test]
    fn names_round_trip() {
        let name = snapshot_name("data", 42, 1_767_225_600);
        assert_eq!(name, "data-hist-42-1767225600");
        assert_eq!(parse_name("data", &name), Some((42, 1_767_225_600)));
        assert_eq!(
            parse_name("my-lv", &snapshot_name("my-lv", u64::MAX, 0)),
            Some((u64::MAX, 0))
        );
    }

    #[test]
    fn other_names_are_not_ours() {
        for name in [
            "data",
            "data-hist-",
            "data-hist-42",
            "data-hist-42-",
            "data-hist--1767225600",
            "data-hist-042-1767225600",
            "data-hist-42-01767225600",
            "data-hist-42-1767225600-x",
            "data-hist-42-17672256x0",
            "data-hist-+42-1767225600",
            "data-hist-42-1-hist-43-2",
            "datax-hist-42-1767225600",
            "other-hist-42-1767225600",
            "DATA-hist-42-1767225600",
            "",
        ] {
            assert_eq!(parse_name("data", name), None, "{name:?}");
        }
        // The snapshots of `data-hist-1-2` (an LV so named) are not `data`'s.
        assert_eq!(parse_name("data", "data-hist-1-2-hist-3-4"), None);
        assert_eq!(
            parse_name("data-hist-1-2", "data-hist-1-2-hist-3-4"),
            Some((3, 4))
        );
    }

    /// `lvs --reportformat json -o vg_name,lv_name,lv_attr,lv_tags bmtest` on lvm2 2.03.16.
    const LVS_VG: &str = r#"  {
      "report": [
          {
              "lv": [
                  {"vg_name":"bmtest", "lv_name":"data", "lv_attr":"Vwi-aotz--", "lv_tags":""},
                  {"vg_name":"bmtest", "lv_name":"data-hist-3-1767229200", "lv_attr":"Vwi---tz-k", "lv_tags":"blkmirror-history"},
                  {"vg_name":"bmtest", "lv_name":"data-hist-1-1767225600", "lv_attr":"Vwi-a-tz-k", "lv_tags":"blkmirror-history,keep-me"},
                  {"vg_name":"bmtest", "lv_name":"data-hist-2-1767227400", "lv_attr":"Vwi---tz-k", "lv_tags":""},
                  {"vg_name":"bmtest", "lv_name":"data-hist-old", "lv_attr":"Vwi---tz-k", "lv_tags":"blkmirror-history"},
                  {"vg_name":"bmtest", "lv_name":"other-hist-1-1767225600", "lv_attr":"Vwi---tz-k", "lv_tags":"blkmirror-history"},
                  {"vg_name":"bmtest", "lv_name":"pool", "lv_attr":"twi-aotz--", "lv_tags":""},
                  {"vg_name":"bmtest", "lv_name":"blkmirror-snap-0123456789abcdef-1700000000", "lv_attr":"Vwi-a-tz-k", "lv_tags":""}
              ]
          }
      ]
  }
"#;

    #[test]
    fn listing_keeps_only_tagged_snapshots_of_this_lv() {
        let rows = crate::snapshot::lvm::report::parse_lvs(LVS_VG).unwrap();
        let found = listing(&rows, "bmtest", "data");
        let seen: Vec<(u64, u64, bool)> = found
            .entries
            .iter()
            .map(|e| (e.generation, e.created, e.active))
            .collect();
        assert_eq!(seen, [(1, 1_767_225_600, true), (3, 1_767_229_200, false)]);
        assert_eq!(
            found.entries[0].entry().path,
            PathBuf::from("/dev/bmtest/data-hist-1-1767225600")
        );
        // Named like ours without the tag, or tagged and named almost like ours.
        assert_eq!(found.unknown, ["data-hist-2-1767227400", "data-hist-old"]);
        // Another VG's rows are not this VG's.
        assert_eq!(listing(&rows, "other", "data"), ThinListing::default());
        let other = listing(&rows, "bmtest", "other");
        assert_eq!(other.entries.len(), 1);
        assert!(other.unknown.is_empty());
    }

    #[test]
    fn prune_plan_follows_the_grid() {
        const H: u64 = 3_600;
        const T0: u64 = 1_767_225_600;
        let entry = |generation: u64, created: u64| ThinEntry {
            lv: LvRef::new("vg", &snapshot_name("data", generation, created)),
            generation,
            created,
            active: false,
        };
        // One every 30 minutes over 3 hours; at T0 + 3h, `2h:hourly` keeps the oldest of each
        // hour within 2h (gens 3 and 5), the ones younger than an hour (6 and 7, the newest),
        // and nothing older than 2h.
        let entries: Vec<ThinEntry> = (0..7).map(|i| entry(i + 1, T0 + i * H / 2)).collect();
        let policy = Policy::parse("2h:hourly").unwrap();
        let pruned: Vec<u64> = to_prune(&entries, &policy, T0 + 3 * H)
            .iter()
            .map(|e| e.generation)
            .collect();
        assert_eq!(pruned, [1, 2, 4]);
        assert!(to_prune(&[], &policy, T0).is_empty());
    }

    #[test]
    fn devices_are_matched_by_number_and_uuid() {
        let mut rows = vec![
            row("vg", "plain", "-wi-ao----", &[]),
            row("vg", "thin", "Vwi-aotz--", &[]),
        ];
        rows[0].lv_kernel_major = Some(254);
        rows[0].lv_kernel_minor = Some(0);
        rows[1].lv_kernel_major = Some(254);
        rows[1].lv_kernel_minor = Some(3);
        let (lv, attr) = match_device(&rows, 254, 3).unwrap();
        assert_eq!(lv, LvRef::new("vg", "thin"));
        assert!(attr.is_thin_volume());
        let (lv, attr) = match_device(&rows, 254, 0).unwrap();
        assert_eq!(lv.lv, "plain");
        assert!(!attr.is_thin_volume());
        assert!(match_device(&rows, 7, 0).is_none());
        assert!(is_lvm_uuid(
            "LVM-k3S1dbLSeLg7Vn6f3lpBsdV8w4Cq2GnPRe0a2ZJ7K3fX1W2mD9ZxYg2cGmHOb0T3\n"
        ));
        assert!(!is_lvm_uuid("CRYPT-LUKS2-0123-root"));
        assert!(!is_lvm_uuid(""));
    }
}
