//! The thin-LV tracker: what changed between the previous cycle's thin snapshot (kept) and
//! this cycle's, asked of the pool's metadata with `thin_delta`
//! ([`super::thin_delta`] reads its answer).
//!
//! Each cycle, once the new snapshot exists: check that nobody else holds the pool's metadata
//! snapshot (never release someone else's), record our hold (so a crash leaves a trace the
//! next start finds and releases), `dmsetup message POOL-tpool 0 reserve_metadata_snap`, run
//! `thin_delta -m --thin1 OLD --thin2 NEW POOL_tmeta`, and release on every path. Any doubt
//! (a refused `thin_delta` version, a held metadata snapshot, a tool failure, an output that
//! does not parse) is a full scan with the reason.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::snapshot::command::{find_program, lvm, run, LvmTool, TOOL_LOCALE};
use crate::snapshot::lvm::{lvs, LvRef};
use crate::snapshot::FrozenView;

use super::{thin_delta, ChangeTracker, Changes, Since};

/// Finds changes between thin snapshots of one thin LV.
pub struct ThinTracker {
    vg: String,
    pool: String,
    /// Our record of a held metadata snapshot (present only while we hold one).
    hold_record: PathBuf,
    version: OnceLock<Result<(), String>>,
}

impl ThinTracker {
    /// The tracker of thin LV `lv` in pool `pool`; `hold_record` is where a metadata hold is
    /// recorded while it lasts.
    pub fn new(lv: &LvRef, pool: &str, hold_record: PathBuf) -> ThinTracker {
        ThinTracker {
            vg: lv.vg.clone(),
            pool: pool.to_string(),
            hold_record,
            version: OnceLock::new(),
        }
    }

    fn tpool(&self) -> String {
        LvRef::new(&self.vg, &self.pool).dm_name("-tpool")
    }

    fn tmeta(&self) -> PathBuf {
        Path::new("/dev/mapper").join(LvRef::new(&self.vg, &self.pool).dm_name("_tmeta"))
    }

    /// Releases a metadata snapshot a crashed run of ours left held (our record says so).
    fn release_leftover(&self) {
        if self.hold_record.exists() {
            match self.message("release_metadata_snap") {
                Ok(()) => {
                    tracing::info!(pool = %self.tpool(), "released a metadata snapshot a crashed run left held")
                }
                Err(e) => {
                    tracing::warn!(pool = %self.tpool(), error = %e, "could not release a leftover metadata snapshot")
                }
            }
            let _ = std::fs::remove_file(&self.hold_record);
        }
    }

    fn message(&self, text: &str) -> Result<(), String> {
        let args = ["message".into(), self.tpool(), "0".into(), text.into()];
        lvm(
            LvmTool::Dmsetup,
            &args,
            "check the thin pool with `dmsetup status`",
        )
        .map(|_| ())
        .map_err(|e| e.to_string())
    }

    /// The pool's held metadata root (`None`: nobody holds one).
    fn held_root(&self) -> Result<Option<String>, String> {
        let args = ["status".into(), self.tpool()];
        let ran = lvm(
            LvmTool::Dmsetup,
            &args,
            "check the thin pool with `dmsetup status`",
        )
        .map_err(|e| e.to_string())?;
        // start length thin-pool transaction used/total-meta used/total-data HELD ...
        let field = ran
            .stdout
            .split_whitespace()
            .nth(6)
            .ok_or("short thin-pool status")?;
        Ok((field != "-").then(|| field.to_string()))
    }

    fn thin_id(&self, view: &FrozenView) -> Result<u64, String> {
        let name = view.name.as_deref().ok_or("a snapshot without a name")?;
        let target = format!("{}/{name}", self.vg);
        let rows = lvs(
            "lv_name,thin_id",
            Some(&target),
            "check the thin LV with `lvs`",
        )
        .map_err(|e| e.to_string())?;
        rows.first()
            .and_then(|r| r.thin_id)
            .ok_or_else(|| format!("no thin id for {target}"))
    }

    fn check_version(&self) -> Result<(), String> {
        self.version
            .get_or_init(|| {
                let program = find_program("thin_delta").ok_or("thin_delta is not installed")?;
                let ran = run(&program, &["--version".into()], &[TOOL_LOCALE])
                    .map_err(|e| format!("cannot run thin_delta: {e}"))?;
                thin_delta::version_trusted(&ran.stdout)
            })
            .clone()
    }

    /// Runs thin_delta between two thin ids under a metadata snapshot of ours.
    fn delta(&self, old: u64, new: u64) -> Result<String, String> {
        if let Some(root) = self.held_root()? {
            return Err(format!(
                "the pool's metadata snapshot is held by another program (root {root}): not touching it"
            ));
        }
        crate::state::write_json(
            &self.hold_record,
            &serde_json::json!({ "pool": self.tpool() }),
        )
        .map_err(|e| format!("cannot record the metadata hold: {e}"))?;
        let held = Hold(self);
        self.message("reserve_metadata_snap")?;
        crate::faults::delay("BLKMIRROR_FAULT_THIN_HOLD_DELAY_MS");
        let program = find_program("thin_delta").ok_or("thin_delta is not installed")?;
        let args = [
            "-m".to_string(),
            "--thin1".into(),
            old.to_string(),
            "--thin2".into(),
            new.to_string(),
            self.tmeta().display().to_string(),
        ];
        let ran = run(&program, &args, &[TOOL_LOCALE])
            .map_err(|e| format!("cannot run thin_delta: {e}"))?;
        drop(held);
        if !ran.success() {
            return Err(format!("thin_delta failed: {}", ran.stderr_one_line()));
        }
        Ok(ran.stdout)
    }
}

/// Releases our metadata snapshot, on every path.
struct Hold<'a>(&'a ThinTracker);

impl Drop for Hold<'_> {
    fn drop(&mut self) {
        match self.0.message("release_metadata_snap") {
            Ok(()) => {
                let _ = std::fs::remove_file(&self.0.hold_record);
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not release the metadata snapshot (the next start retries)")
            }
        }
    }
}

impl ChangeTracker for ThinTracker {
    fn name(&self) -> &'static str {
        "thin-delta"
    }

    fn keeps_previous(&self) -> bool {
        true
    }

    fn recover(&self) {
        self.release_leftover();
    }

    fn changed(&self, previous: Option<&FrozenView>, current: &FrozenView, _: &Since) -> Changes {
        let Some(previous) = previous else {
            return Changes::fallback("no previous thin snapshot");
        };
        let answer = self.check_version().and_then(|()| {
            let (old, new) = (self.thin_id(previous)?, self.thin_id(current)?);
            let output = self.delta(old, new)?;
            let size = crate::source::BlockSource::open(&current.path)
                .map_err(|e| e.to_string())?
                .size();
            thin_delta::changed_ranges(&output, size)
                .map_err(|e| format!("cannot read thin_delta's output: {e}"))
        });
        Changes::from_answer(answer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_mapper_names_double_dashes() {
        let tracker = ThinTracker::new(
            &LvRef::new("vg-data", "thin-lv"),
            "my-pool",
            PathBuf::from("/nonexistent/hold"),
        );
        assert_eq!(tracker.tpool(), "vg--data-my--pool-tpool");
        assert_eq!(
            tracker.tmeta(),
            PathBuf::from("/dev/mapper/vg--data-my--pool_tmeta")
        );
    }
}
