//! The `lvm` provider: a classic (copy-on-write) snapshot of an LV for each cycle,
//! `lvcreate -s -L SIZE -n NAME VG/LV`, read at `/dev/VG/NAME`, removed after the cycle. Its
//! fill is watched: a snapshot that overflows (or is otherwise invalidated) fails the health
//! check, so the cycle aborts instead of committing data read from a broken snapshot.
//!
//! COW size: `--snapshot-size`, or [`default_cow_size`]: 20% of the origin, at least 64 MiB,
//! capped by the VG's free space.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use super::report::{Attr, LvRow};
use super::{
    cow_fills, lvs, require_source_lv, snapshot_row, wait_for_device, LvRef, SourceLv,
    SpaceFailures,
};
use crate::snapshot::command::{lvm, LvmTool};
use crate::snapshot::naming::{is_own, source_key, Namer};
use crate::snapshot::{
    Consistency, FrozenView, SnapshotError, SnapshotOptions, SnapshotProvider, Space,
};
use crate::units::human_bytes;

const MIB: u64 = 1024 * 1024;
/// Default COW space: this share of the origin (percent)...
pub const DEFAULT_COW_PERCENT: u64 = 20;
/// ...but at least this much (and never more than the VG has free).
pub const MIN_COW: u64 = 64 * MIB;
/// Fill (percent) above which a warning is logged once per snapshot.
const FILL_WARNING: f64 = 80.0;

/// The default COW size for an origin of `origin` bytes in a VG with `vg_free` bytes free:
/// 20% of the origin, at least 64 MiB, rounded up to MiB, capped by the free space. `None`
/// when the VG has no free space at all.
pub fn default_cow_size(origin: u64, vg_free: u64) -> Option<u64> {
    if vg_free == 0 {
        return None;
    }
    let share = origin / 100 * DEFAULT_COW_PERCENT + origin % 100 * DEFAULT_COW_PERCENT / 100;
    let wanted = share.max(MIN_COW).div_ceil(MIB) * MIB;
    Some(wanted.min(vg_free))
}

/// Classic snapshots of one LV.
pub struct ClassicLvm {
    origin: LvRef,
    origin_size: u64,
    size: Option<u64>,
    namer: Namer,
    space_failures: SpaceFailures,
}

impl ClassicLvm {
    /// For the LV behind `source` (`--snapshot lvm`).
    pub fn new(source: &Path, options: &SnapshotOptions) -> Result<ClassicLvm, SnapshotError> {
        Self::for_lv(require_source_lv(source)?, source, options)
    }

    /// For an LV already looked up (`--snapshot auto`).
    pub fn for_lv(
        lv: SourceLv,
        source: &Path,
        options: &SnapshotOptions,
    ) -> Result<ClassicLvm, SnapshotError> {
        if !lv.attr.classic_snapshot_possible() {
            return Err(SnapshotError::WrongLvKind {
                source_path: source.to_owned(),
                lv: lv.lv.to_string(),
                what: lv.attr.type_words(),
                hint: "LVM cannot take a classic snapshot of it: mirror a plain or thin LV (or the snapshot's origin) instead, or pass --snapshot none",
            });
        }
        if lv.attr.is_thin_volume() {
            tracing::info!(lv = %lv.lv, "taking classic (COW) snapshots of a thin LV as asked; --snapshot lvm-thin needs no COW space");
        }
        Ok(ClassicLvm {
            origin: lv.lv,
            origin_size: lv.size,
            size: options.snapshot_size,
            namer: Namer::new(source_key(&options.source_identity)),
            space_failures: SpaceFailures::default(),
        })
    }

    /// The COW size for the next snapshot, from the VG's free space now.
    fn cow_size(&self) -> Result<u64, SnapshotError> {
        let free = super::vg(&self.origin.vg)?.vg_free.unwrap_or(0);
        match self.size {
            Some(wanted) if wanted > free => Err(SnapshotError::SizeTooLarge {
                vg: self.origin.vg.clone(),
                wanted: human_bytes(wanted),
                free: human_bytes(free),
            }),
            Some(wanted) => Ok(wanted),
            None => {
                let size = default_cow_size(self.origin_size, free).ok_or_else(|| {
                    SnapshotError::NoFreeSpace {
                        vg: self.origin.vg.clone(),
                        lv: self.origin.to_string(),
                    }
                })?;
                if size < default_cow_size(self.origin_size, u64::MAX).unwrap_or(0) {
                    tracing::warn!(vg = %self.origin.vg, cow = %human_bytes(size), "the snapshot's COW space is capped by the volume group's free space; it may overflow if the origin changes much during a cycle");
                }
                Ok(size)
            }
        }
    }
}

impl SnapshotProvider for ClassicLvm {
    fn name(&self) -> &'static str {
        "lvm"
    }

    fn cleanup_stale(&self, _source: &Path, spare: &[String]) -> Result<(), SnapshotError> {
        super::cleanup_stale(&self.origin.vg, self.namer.key(), spare)
    }

    fn freeze(&self, _source: &Path, _stop: &AtomicBool) -> Result<FrozenView, SnapshotError> {
        let size = self.cow_size()?;
        let snap = LvRef::new(&self.origin.vg, &self.namer.next());
        let args: Vec<String> = vec![
            "-s".into(),
            "-L".into(),
            format!("{}k", size.div_ceil(1024)),
            "-n".into(),
            snap.lv.clone(),
            self.origin.arg(),
        ];
        lvm(
            LvmTool::Lvcreate,
            &args,
            "check the volume group's free space with `vgs`, or pass --snapshot none",
        )?;
        tracing::debug!(snapshot = %snap, cow = %human_bytes(size), "classic snapshot taken");
        let view = classic_view(snap.clone());
        if !wait_for_device(&view.path) {
            return Err(SnapshotError::DeviceMissing {
                lv: snap.to_string(),
                path: view.path.clone(),
            });
        }
        Ok(view)
    }

    fn reopen(&self, name: &str) -> Result<Option<FrozenView>, SnapshotError> {
        if !is_own(name, self.namer.key()) {
            return Ok(None);
        }
        let snap = LvRef::new(&self.origin.vg, name);
        let Ok(row) = snapshot_row(&snap, "lv_name,lv_attr,lv_size,snap_percent") else {
            return Ok(None);
        };
        if let Err(e) = classic_health(&snap, &row) {
            // An overflowed snapshot is no use to anyone: remove it now.
            tracing::warn!(snapshot = %snap, error = %e, "the kept snapshot is unusable; removing it");
            super::remove(&snap)?;
            return Ok(None);
        }
        let view = classic_view(snap);
        Ok(wait_for_device(&view.path).then_some(view))
    }

    /// One `lvs` of the VG for every snapshot named.
    fn space(&self, snapshots: &[&str]) -> Space {
        if snapshots.is_empty() {
            return Space::Cow(Vec::new());
        }
        let vg = &self.origin.vg;
        match lvs(
            "lv_name,lv_attr,snap_percent",
            Some(vg),
            "check the volume group with `lvs`",
        ) {
            Ok(rows) => Space::Cow(cow_fills(&rows, snapshots)),
            Err(e) => {
                self.space_failures.note(vg, &e);
                Space::Cow(Vec::new())
            }
        }
    }
}

/// The view of classic snapshot `snap`: named, removed on release, its fill watched.
fn classic_view(snap: LvRef) -> FrozenView {
    let removed = snap.clone();
    let view = FrozenView::new(
        snap.dev_path(),
        Consistency::CrashConsistent,
        Some(Box::new(move || super::remove(&removed))),
    )
    .with_name(snap.lv.clone());
    let warned = AtomicBool::new(false);
    let health = Arc::new(move || {
        let row = snapshot_row(&snap, "lv_name,lv_attr,lv_size,snap_percent")?;
        if row
            .snap_percent
            .is_some_and(|p| (FILL_WARNING..100.0).contains(&p))
            && !warned.swap(true, Ordering::Relaxed)
        {
            tracing::warn!(snapshot = %snap, percent = row.snap_percent, "the snapshot's COW space is filling up; raise --snapshot-size if it overflows");
        }
        classic_health(&snap, &row)
    });
    view.with_health(health)
}

/// Is a classic snapshot, as `lvs` reports it, still good to read?
pub fn classic_health(snap: &LvRef, row: &LvRow) -> Result<(), SnapshotError> {
    let Some(attr) = Attr::parse(&row.lv_attr) else {
        return Err(SnapshotError::LvmOutput {
            command: format!("lvs {snap}"),
            reason: format!("unexpected lv_attr {:?}", row.lv_attr),
        });
    };
    let full = row.snap_percent.is_some_and(|p| p >= 100.0);
    if full || (attr.is_invalid_snapshot() && row.snap_percent.is_none()) {
        return Err(SnapshotError::Overflowed {
            lv: snap.to_string(),
            size: row.lv_size.map_or_else(|| "?".to_string(), human_bytes),
        });
    }
    if !attr.is_active() {
        return Err(SnapshotError::Unusable {
            lv: snap.to_string(),
            state: attr.state_words(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1024 * MIB;

    #[test]
    fn size_rule() {
        // 20% of the origin...
        assert_eq!(default_cow_size(10 * GIB, 100 * GIB), Some(2 * GIB));
        // ...rounded up to MiB...
        assert_eq!(default_cow_size(1001 * MIB, 100 * GIB), Some(201 * MIB));
        // ...at least 64 MiB...
        assert_eq!(default_cow_size(100 * MIB, 100 * GIB), Some(64 * MIB));
        assert_eq!(default_cow_size(0, 100 * GIB), Some(64 * MIB));
        // ...capped by the free space...
        assert_eq!(default_cow_size(10 * GIB, GIB), Some(GIB));
        assert_eq!(default_cow_size(100 * MIB, 8 * MIB), Some(8 * MIB));
        // ...and nothing without free space.
        assert_eq!(default_cow_size(10 * GIB, 0), None);
        // No overflow on huge origins.
        assert_eq!(
            default_cow_size(u64::MAX, u64::MAX).map(|s| s > 0),
            Some(true)
        );
    }

    fn row(attr: &str, percent: Option<f64>) -> LvRow {
        LvRow {
            lv_name: "s".into(),
            lv_attr: attr.into(),
            lv_size: Some(64 * MIB),
            snap_percent: percent,
            ..LvRow::default()
        }
    }

    #[test]
    fn health_of_classic_snapshots() {
        let snap = LvRef::new("vg", "s");
        assert!(classic_health(&snap, &row("swi-a-s---", Some(0.0))).is_ok());
        assert!(classic_health(&snap, &row("swi-a-s---", Some(99.9))).is_ok());
        let full = classic_health(&snap, &row("swi-I-s---", Some(100.0))).unwrap_err();
        assert_eq!(
            full.to_string(),
            "snapshot vg/s overflowed (COW space full at 64.0 MiB): the origin changed more than the snapshot could hold during the cycle; raise --snapshot-size or shorten cycles"
        );
        assert!(matches!(
            classic_health(&snap, &row("swi-a-s---", Some(100.0))),
            Err(SnapshotError::Overflowed { .. })
        ));
        assert!(matches!(
            classic_health(&snap, &row("swi-I-s---", None)),
            Err(SnapshotError::Overflowed { .. })
        ));
        let inactive = classic_health(&snap, &row("swi---s---", None)).unwrap_err();
        assert!(inactive.to_string().contains("inactive"), "{inactive}");
        assert!(classic_health(&snap, &row("??", None)).is_err());
    }
}
