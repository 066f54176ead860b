//! The `lvm-thin` provider: a thin snapshot of a thin LV for each cycle, `lvcreate -s -n NAME
//! VG/LV` (no size: it shares the pool), activated with `lvchange -ay -K` (thin snapshots carry
//! the activation-skip flag), read at `/dev/VG/NAME`, removed after the cycle.
//!
//! Ready for change tracking: each cycle's snapshot is a [`ThinSnapshot`] whose fate is decided
//! in one place, its release. Today it is removed. A tracker that keeps the previous cycle's
//! snapshot (to ask `thin_delta` what changed between the two, [`crate::tracker`]) will hand
//! it to a "previous" slot instead and remove the one before; `cleanup_stale` will then have
//! to spare the kept one.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use super::report::{Attr, LvRow};
use super::{
    fraction, lvs, require_source_lv, snapshot_row, wait_for_device, LvRef, SourceLv, SpaceFailures,
};
use crate::snapshot::command::{lvm, LvmTool};
use crate::snapshot::naming::{is_own, source_key, Namer};
use crate::snapshot::{
    Consistency, FrozenView, PoolSpace, SnapshotError, SnapshotOptions, SnapshotProvider, Space,
};

/// Thin snapshots of one thin LV.
pub struct ThinLvm {
    origin: LvRef,
    /// The origin's thin pool (`None`: lvs did not name it).
    pool: Option<LvRef>,
    namer: Namer,
    space_failures: SpaceFailures,
}

/// One cycle's thin snapshot.
#[derive(Clone, Debug)]
pub struct ThinSnapshot {
    /// The snapshot LV.
    pub lv: LvRef,
}

impl ThinSnapshot {
    /// Its device node, `/dev/VG/LV`.
    pub fn path(&self) -> PathBuf {
        self.lv.dev_path()
    }

    /// Its end of life after a cycle (see the module doc).
    fn release(self) -> Result<(), SnapshotError> {
        super::remove(&self.lv)
    }
}

impl ThinLvm {
    /// For the LV behind `source` (`--snapshot lvm-thin`).
    pub fn new(source: &Path, options: &SnapshotOptions) -> Result<ThinLvm, SnapshotError> {
        Self::for_lv(require_source_lv(source)?, source, options)
    }

    /// For an LV already looked up (`--snapshot auto`).
    pub fn for_lv(
        lv: SourceLv,
        source: &Path,
        options: &SnapshotOptions,
    ) -> Result<ThinLvm, SnapshotError> {
        if !lv.attr.is_thin_volume() {
            return Err(SnapshotError::WrongLvKind {
                source_path: source.to_owned(),
                lv: lv.lv.to_string(),
                what: lv.attr.type_words(),
                hint: "thin snapshots need a thin LV: use --snapshot lvm (classic, needs free space in the VG) or --snapshot auto",
            });
        }
        if options.snapshot_size.is_some() {
            tracing::warn!(
                "--snapshot-size is ignored: thin snapshots take their space from the thin pool"
            );
        }
        let pool = (!lv.row.pool_lv.is_empty()).then(|| LvRef::new(&lv.lv.vg, &lv.row.pool_lv));
        Ok(ThinLvm {
            origin: lv.lv,
            pool,
            namer: Namer::new(source_key(&options.source_identity)),
            space_failures: SpaceFailures::default(),
        })
    }
}

impl SnapshotProvider for ThinLvm {
    fn name(&self) -> &'static str {
        "lvm-thin"
    }

    fn cleanup_stale(&self, _source: &Path, spare: &[String]) -> Result<(), SnapshotError> {
        super::cleanup_stale(&self.origin.vg, self.namer.key(), spare)
    }

    fn freeze(&self, _source: &Path, _stop: &AtomicBool) -> Result<FrozenView, SnapshotError> {
        let snap = ThinSnapshot {
            lv: LvRef::new(&self.origin.vg, &self.namer.next()),
        };
        lvm(
            LvmTool::Lvcreate,
            &[
                "-s".into(),
                "-n".into(),
                snap.lv.lv.clone(),
                self.origin.arg(),
            ],
            "check the thin pool's free space with `lvs`, or pass --snapshot none",
        )?;
        let lv = snap.lv.clone();
        // Until it is activated and checked, a failure must remove it.
        let view = thin_view(snap);
        activate(&lv)?;
        if !wait_for_device(&view.path) {
            return Err(SnapshotError::DeviceMissing {
                lv: lv.to_string(),
                path: view.path.clone(),
            });
        }
        tracing::debug!(snapshot = %lv, "thin snapshot taken");
        Ok(view)
    }

    fn reopen(&self, name: &str) -> Result<Option<FrozenView>, SnapshotError> {
        if !is_own(name, self.namer.key()) {
            return Ok(None);
        }
        let lv = LvRef::new(&self.origin.vg, name);
        if snapshot_row(&lv, "lv_name,lv_attr").is_err() {
            return Ok(None);
        }
        let view = thin_view(ThinSnapshot { lv: lv.clone() });
        activate(&lv)?;
        Ok(wait_for_device(&view.path).then_some(view))
    }

    /// The pool's usage, whatever the snapshots.
    fn space(&self, _snapshots: &[&str]) -> Space {
        let Some(pool) = &self.pool else {
            return Space::None;
        };
        let rows = lvs(
            "lv_name,data_percent,metadata_percent",
            Some(&pool.arg()),
            "check the thin pool with `lvs`",
        );
        let row = match rows {
            Ok(rows) => rows.into_iter().find(|r| r.lv_name == pool.lv),
            Err(e) => {
                self.space_failures.note(&pool.arg(), &e);
                None
            }
        };
        Space::ThinPool(PoolSpace {
            pool: pool.arg(),
            data: row.as_ref().and_then(|r| r.data_percent).map(fraction),
            metadata: row.and_then(|r| r.metadata_percent).map(fraction),
        })
    }
}

/// Activates a thin snapshot (they carry the activation-skip flag).
fn activate(lv: &LvRef) -> Result<(), SnapshotError> {
    lvm(
        LvmTool::Lvchange,
        &["-ay".into(), "-K".into(), lv.arg()],
        "check the thin pool with `lvs -a`, or pass --snapshot none",
    )
    .map(|_| ())
}

/// The view of thin snapshot `snap`: named, removed on release, its activation watched.
fn thin_view(snap: ThinSnapshot) -> FrozenView {
    let lv = snap.lv.clone();
    let path = snap.path();
    let view = FrozenView::new(
        path,
        Consistency::CrashConsistent,
        Some(Box::new(move || snap.release())),
    )
    .with_name(lv.lv.clone());
    let health = Arc::new(move || thin_health(&lv, &snapshot_row(&lv, "lv_name,lv_attr")?));
    view.with_health(health)
}

/// Is a thin snapshot, as `lvs` reports it, still good to read?
pub fn thin_health(snap: &LvRef, row: &LvRow) -> Result<(), SnapshotError> {
    match Attr::parse(&row.lv_attr) {
        Some(attr) if attr.is_active() => Ok(()),
        Some(attr) => Err(SnapshotError::Unusable {
            lv: snap.to_string(),
            state: attr.state_words(),
        }),
        None => Err(SnapshotError::LvmOutput {
            command: format!("lvs {snap}"),
            reason: format!("unexpected lv_attr {:?}", row.lv_attr),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_of_thin_snapshots() {
        let snap = LvRef::new("vg", "t");
        let row = |attr: &str| LvRow {
            lv_attr: attr.into(),
            ..LvRow::default()
        };
        assert!(thin_health(&snap, &row("Vri-a-tz-k")).is_ok());
        let inactive = thin_health(&snap, &row("Vwi---tz-k")).unwrap_err();
        assert!(
            inactive
                .to_string()
                .starts_with("snapshot vg/t is inactive"),
            "{inactive}"
        );
        assert!(thin_health(&snap, &row("")).is_err());
    }
}
