//! The LVM providers and what they share: finding the LV behind a source device, asking lvm2
//! about LVs and VGs (JSON reports), removing a snapshot, and clearing stale snapshots of our
//! own source. [`classic`] takes COW snapshots (`lvm`), [`thin`] thin snapshots (`lvm-thin`).

pub mod classic;
pub mod report;
pub mod thin;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::command::{lvm, lvm_installed, LvmTool};
use super::naming::is_own;
use super::SnapshotError;
use report::{parse_lvs, parse_vgs, Attr, LvRow, VgRow};

pub use classic::ClassicLvm;
pub use thin::ThinLvm;

/// A logical volume by name: `VG/LV`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LvRef {
    /// The volume group.
    pub vg: String,
    /// The LV's name within it.
    pub lv: String,
}

impl LvRef {
    /// `vg/lv`.
    pub fn new(vg: &str, lv: &str) -> LvRef {
        LvRef {
            vg: vg.to_string(),
            lv: lv.to_string(),
        }
    }

    /// `/dev/VG/LV`, where lvm2 links an active LV.
    pub fn dev_path(&self) -> PathBuf {
        Path::new("/dev").join(&self.vg).join(&self.lv)
    }

    /// `VG/LV`, as lvm2 commands take it.
    pub fn arg(&self) -> String {
        self.to_string()
    }

    /// The device-mapper name, `VG-LV` with every `-` of either doubled (as lvm2 names them),
    /// followed by `suffix` (`-cow`, `-tpool`, `_tmeta`, or nothing).
    pub fn dm_name(&self, suffix: &str) -> String {
        let part = |name: &str| name.replace('-', "--");
        format!("{}-{}{suffix}", part(&self.vg), part(&self.lv))
    }
}

impl fmt::Display for LvRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.vg, self.lv)
    }
}

/// The LV a source device is, as `lvs` reports it.
#[derive(Clone, Debug)]
pub struct SourceLv {
    /// Its name.
    pub lv: LvRef,
    /// Its decoded `lv_attr`.
    pub attr: Attr,
    /// Its size in bytes (0 when lvs did not say).
    pub size: u64,
    /// The whole `lvs` row.
    pub row: LvRow,
}

/// The fields asked of `lvs` to recognise a source.
const LV_FIELDS: &str =
    "vg_name,lv_name,lv_attr,lv_size,pool_lv,origin,lv_path,lv_kernel_major,lv_kernel_minor";

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// Arguments of a JSON report (`lvs`, `vgs`) of `fields` in bytes, for `target` if given.
fn report_args(fields: &str, target: Option<&str>) -> Vec<String> {
    let mut a = args(&[
        "--reportformat",
        "json",
        "--units",
        "b",
        "--nosuffix",
        "-o",
        fields,
    ]);
    a.extend(target.map(str::to_string));
    a
}

/// `lvs --reportformat json --units b --nosuffix -o FIELDS [TARGET]`, parsed.
pub fn lvs(
    fields: &str,
    target: Option<&str>,
    hint: &'static str,
) -> Result<Vec<LvRow>, SnapshotError> {
    let a = report_args(fields, target);
    let ran = lvm(LvmTool::Lvs, &a, hint)?;
    parse_lvs(&ran.stdout).map_err(|reason| SnapshotError::LvmOutput {
        command: super::command::command_line("lvs", &a),
        reason,
    })
}

/// `vgs` for one VG, parsed.
pub fn vg(name: &str) -> Result<VgRow, SnapshotError> {
    let a = report_args("vg_name,vg_free,vg_extent_size", Some(name));
    let ran = lvm(LvmTool::Vgs, &a, "check the volume group with `vgs`")?;
    let command = || super::command::command_line("vgs", &a);
    parse_vgs(&ran.stdout)
        .map_err(|reason| SnapshotError::LvmOutput {
            command: command(),
            reason,
        })?
        .into_iter()
        .next()
        .ok_or_else(|| SnapshotError::LvmOutput {
            command: command(),
            reason: "no volume group in the report".to_string(),
        })
}

/// The LV behind `source`, matched by device number (so `/dev/VG/LV`, `/dev/mapper/VG-LV` and
/// `/dev/dm-N` all work). `Ok(None)`: lvm2 knows no active LV with that device number.
pub fn find_source_lv(source: &Path) -> Result<Option<SourceLv>, SnapshotError> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let meta = super::stat_source(source)?;
    if !meta.file_type().is_block_device() {
        return Ok(None);
    }
    let (major, minor) = (
        nix::sys::stat::major(meta.rdev()) as i64,
        nix::sys::stat::minor(meta.rdev()) as i64,
    );
    let rows = lvs(
        LV_FIELDS,
        None,
        "check lvm2 with `lvs`, or use --snapshot none",
    )?;
    Ok(match_device(rows, major, minor))
}

/// The row whose kernel device number is `major:minor`.
fn match_device(rows: Vec<LvRow>, major: i64, minor: i64) -> Option<SourceLv> {
    rows.into_iter()
        .find(|r| r.lv_kernel_major == Some(major) && r.lv_kernel_minor == Some(minor))
        .and_then(|row| {
            Some(SourceLv {
                lv: LvRef::new(&row.vg_name, &row.lv_name),
                attr: Attr::parse(&row.lv_attr)?,
                size: row.lv_size.unwrap_or(0),
                row,
            })
        })
}

/// The LV behind a source given with `--snapshot lvm` / `lvm-thin`, or why there is none.
pub fn require_source_lv(source: &Path) -> Result<SourceLv, SnapshotError> {
    use std::os::unix::fs::FileTypeExt;
    let is_device = std::fs::metadata(source).is_ok_and(|m| m.file_type().is_block_device());
    if is_device && !lvm_installed(LvmTool::Lvs) {
        return Err(SnapshotError::LvmMissing { program: "lvs" });
    }
    find_source_lv(source)?.ok_or_else(|| not_an_lv(source, is_device))
}

/// The error for a source that is no LV, with a hint that depends on whether it is a block
/// device or a file.
pub fn not_an_lv(source: &Path, is_device: bool) -> SnapshotError {
    SnapshotError::NotAnLv {
        source_path: source.to_owned(),
        hint: if is_device {
            "put the data on an LV (then --snapshot auto picks lvm or lvm-thin), or pass --snapshot none to read it live (the target may then mix blocks from different moments)"
        } else {
            "for an image file use --snapshot reflink (xfs with reflink, btrfs) or auto, or pass --snapshot none to read it live (the target may then mix blocks from different moments)"
        },
    }
}

/// How long [`remove`] keeps retrying an LV that is still open (a reader being torn down).
const REMOVE_PATIENCE: Duration = Duration::from_secs(10);

/// `lvremove -f VG/LV`, retried while the LV is still in use; an LV already gone is fine.
pub fn remove(lv: &LvRef) -> Result<(), SnapshotError> {
    let deadline = Instant::now() + REMOVE_PATIENCE;
    let mut pause = Duration::from_millis(100);
    loop {
        let result = lvm(
            LvmTool::Lvremove,
            &args(&["-f", &lv.arg()]),
            "remove it by hand with `lvremove -f` once it is no longer in use (the next start of the sender also removes it)",
        );
        match result {
            Ok(_) => return Ok(()),
            Err(SnapshotError::LvmCommand { ref stderr, .. }) if is_gone(stderr) => return Ok(()),
            Err(SnapshotError::LvmCommand { ref stderr, .. })
                if is_busy(stderr) && Instant::now() < deadline =>
            {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_secs(1));
            }
            Err(e) => return Err(e),
        }
    }
}

fn is_gone(stderr: &str) -> bool {
    stderr.contains("Failed to find logical volume") || stderr.contains("not found")
}

fn is_busy(stderr: &str) -> bool {
    stderr.contains("in use") || stderr.contains("open")
}

/// Removes the snapshots named after our source key in `vg` (leftovers of a crash), but those
/// in `spare`. A snapshot still open (another sender reading it) is left alone with a warning.
pub fn cleanup_stale(vg: &str, key: &str, spare: &[String]) -> Result<(), SnapshotError> {
    let rows = lvs(
        "vg_name,lv_name,lv_attr",
        Some(vg),
        "check the volume group with `lvs`",
    )?;
    for lv in stale_snapshots(&rows, key) {
        if spare.contains(&lv.lv) {
            continue;
        }
        let open = rows
            .iter()
            .find(|r| r.lv_name == lv.lv && r.vg_name == lv.vg)
            .and_then(|r| Attr::parse(&r.lv_attr))
            .is_some_and(|a| a.open);
        if open {
            tracing::warn!(snapshot = %lv, "leaving a snapshot of this source in place: it is open (another sender of the same source?)");
            continue;
        }
        remove(&lv)?;
        tracing::info!(snapshot = %lv, "removed a snapshot left behind by an earlier run");
    }
    Ok(())
}

/// The LVs in `rows` named after our key.
pub fn stale_snapshots(rows: &[LvRow], key: &str) -> Vec<LvRef> {
    rows.iter()
        .filter(|r| is_own(&r.lv_name, key))
        .map(|r| LvRef::new(&r.vg_name, &r.lv_name))
        .collect()
}

/// Waits for `/dev/VG/LV` to appear after creation (udev may link it a moment later).
pub fn wait_for_device(path: &Path) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !path.exists() {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    true
}

/// The one row of `lvs` for a snapshot, or `Vanished` when it is gone.
pub fn snapshot_row(lv: &LvRef, fields: &str) -> Result<LvRow, SnapshotError> {
    let rows = match lvs(fields, Some(&lv.arg()), "check the snapshot with `lvs`") {
        Err(SnapshotError::LvmCommand { ref stderr, .. }) if is_gone(stderr) => {
            return Err(SnapshotError::Vanished { lv: lv.to_string() })
        }
        other => other?,
    };
    rows.into_iter()
        .find(|r| r.lv_name == lv.lv)
        .ok_or_else(|| SnapshotError::Vanished { lv: lv.to_string() })
}

/// Failures to read the figures of [`crate::snapshot::Space`] (they never fail a cycle):
/// logged as a warning the first time, at debug level after, so a report lvm2 keeps refusing
/// does not fill the log.
#[derive(Debug, Default)]
pub struct SpaceFailures {
    warned: AtomicBool,
}

impl SpaceFailures {
    /// Logs that the figures of `what` (an LV, `VG/LV`) could not be read.
    pub fn note(&self, what: &str, error: &SnapshotError) {
        if self.warned.swap(true, Ordering::Relaxed) {
            tracing::debug!(lv = what, error = %error, "cannot read the snapshot space figures for the metrics");
        } else {
            tracing::warn!(lv = what, error = %error, "cannot read the snapshot space figures for the metrics; they are left out (logged once, then at debug level)");
        }
    }
}

/// The fill of each classic snapshot named in `names` that `rows` report, as a fraction (a
/// snapshot the kernel invalidated, with no percentage, is full: 1).
pub fn cow_fills(rows: &[LvRow], names: &[&str]) -> Vec<(String, f64)> {
    names
        .iter()
        .filter_map(|name| {
            let row = rows.iter().find(|r| r.lv_name == *name)?;
            let invalid = Attr::parse(&row.lv_attr).is_some_and(|a| a.is_invalid_snapshot());
            let fill = match row.snap_percent {
                Some(percent) => fraction(percent),
                None if invalid => 1.0,
                None => return None,
            };
            Some((name.to_string(), fill))
        })
        .collect()
}

/// A percentage of an lvm2 report as a fraction: lvm2 prints two decimals, so the fraction is
/// rounded to four (12.34 gives 0.1234, not 0.12340000000000001).
pub fn fraction(percent: f64) -> f64 {
    (percent * 100.0).round() / 10_000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(vg: &str, lv: &str, attr: &str, dev: Option<(i64, i64)>) -> LvRow {
        LvRow {
            vg_name: vg.into(),
            lv_name: lv.into(),
            lv_attr: attr.into(),
            lv_size: Some(1 << 30),
            lv_kernel_major: dev.map(|d| d.0),
            lv_kernel_minor: dev.map(|d| d.1),
            ..LvRow::default()
        }
    }

    #[test]
    fn matches_source_by_device_number() {
        let rows = vec![
            row("vg", "a", "-wi-ao----", Some((254, 0))),
            row("vg", "b", "Vwi-a-tz--", Some((254, 1))),
            row("vg", "c", "Vwi---tz-k", Some((-1, -1))),
        ];
        let found = match_device(rows.clone(), 254, 1).unwrap();
        assert_eq!(found.lv, LvRef::new("vg", "b"));
        assert!(found.attr.is_thin_volume());
        assert_eq!(found.size, 1 << 30);
        assert!(match_device(rows.clone(), 7, 0).is_none());
        assert!(match_device(rows, -1, -1).is_some_and(|f| f.lv.lv == "c"));
    }

    #[test]
    fn stale_filter_keeps_others() {
        let key = "0123456789abcdef";
        let rows = vec![
            row("vg", "data", "owi-aos---", None),
            row(
                "vg",
                &format!("blkmirror-snap-{key}-1700000000"),
                "swi-a-s---",
                None,
            ),
            row(
                "vg",
                "blkmirror-snap-fedcba9876543210-1700000000",
                "swi-a-s---",
                None,
            ),
            row("vg", "my-snapshot", "swi-a-s---", None),
            row(
                "vg",
                &format!("blkmirror-snap-{key}-1700000001"),
                "Vwi---tz-k",
                None,
            ),
        ];
        let stale = stale_snapshots(&rows, key);
        assert_eq!(
            stale,
            vec![
                LvRef::new("vg", &format!("blkmirror-snap-{key}-1700000000")),
                LvRef::new("vg", &format!("blkmirror-snap-{key}-1700000001")),
            ]
        );
    }

    #[test]
    fn lv_paths() {
        let lv = LvRef::new("vg0", "snap");
        assert_eq!(lv.to_string(), "vg0/snap");
        assert_eq!(lv.dev_path(), PathBuf::from("/dev/vg0/snap"));
    }

    #[test]
    fn fills_of_the_snapshots_asked_about() {
        let snap = |name: &str, attr: &str, percent: Option<f64>| LvRow {
            lv_name: name.into(),
            lv_attr: attr.into(),
            snap_percent: percent,
            ..LvRow::default()
        };
        let rows = vec![
            snap("data", "owi-aos---", None),
            snap("cycle", "swi-a-s---", Some(12.5)),
            snap("kept", "swi-a-s---", Some(80.0)),
            snap("overflowed", "swi-I-s---", None),
            snap("odd", "swi-a-s---", None),
        ];
        assert_eq!(
            cow_fills(&rows, &["cycle", "kept", "overflowed", "odd", "gone"]),
            vec![
                ("cycle".to_string(), 0.125),
                ("kept".to_string(), 0.8),
                ("overflowed".to_string(), 1.0)
            ]
        );
        assert!(cow_fills(&rows, &[]).is_empty());
        assert_eq!(fraction(22.33), 0.2233);
        assert_eq!(fraction(11.23), 0.1123);
        assert_eq!(fraction(100.0), 1.0);
        assert_eq!(fraction(0.0), 0.0);
    }

    #[test]
    fn lvremove_messages() {
        assert!(is_gone("Failed to find logical volume \"vg/x\""));
        assert!(is_busy("Logical volume vg/x in use."));
        assert!(!is_gone("Logical volume vg/x in use."));
    }
}
