//! `send --dry-run`: what a cycle would send to each destination, without sending or writing
//! anything. The source is frozen as for a cycle (hooks included) and read where the change
//! tracker says it changed since the kept snapshot (everything when it cannot say), and each
//! block is compared with the sender's record of what the destination holds: its committed
//! manifest. No destination is contacted: a destination changed behind the sender's back
//! (written out of band, restored) would be sent more than this says; one without a committed
//! manifest is counted against nothing (every block that is not zeros). The snapshot is then
//! released; the kept snapshot, manifests and status are not touched.

use std::sync::atomic::AtomicBool;

use serde::Serialize;

use crate::blockdiff::manifest::Manifest;
use crate::blockdiff::ranges::RangeSet;
use crate::blockdiff::scan::{scan, ScanOptions};
use crate::state::SenderPaths;
use crate::tracker::Changes;

use super::stream::scan_error;
use super::{CycleConfig, CycleContext, Frozen, SendError};

/// What a cycle would send to one destination.
#[derive(Clone, Debug, Serialize)]
pub struct DryRunReport {
    /// The destination.
    pub dest: String,
    /// `true`: nothing was sent or written.
    pub dry_run: bool,
    /// The committed generation the comparison is against (0: none).
    pub base_generation: u64,
    /// Blocks that would be sent (data or zeros).
    pub blocks_changed: u64,
    /// Of those, blocks that are zeros now.
    pub blocks_zero: u64,
    /// Bytes of the changed data blocks, before compression and 4 KiB refinement (an upper
    /// bound of what would be sent).
    pub bytes_changed: u64,
    /// Bytes the dry run read from the source.
    pub bytes_read: u64,
    /// Why everything was read, when a change tracker could have said less.
    pub full_scan_reason: Option<String>,
}

/// Runs a dry cycle for each of `dests` (their canonical texts).
pub fn dry_run(
    dests: &[String],
    config: &CycleConfig,
    ctx: &CycleContext,
) -> Result<Vec<DryRunReport>, SendError> {
    let frozen = Frozen::take(config, ctx)?;
    let size = frozen.source.size();
    let everything = RangeSet::full(size);
    let bases: Vec<Option<Manifest>> = dests
        .iter()
        .map(|dest| {
            let paths = SenderPaths::new(&config.state_dir, &frozen.identity, dest);
            crate::state::manifest_file::load(&paths.manifest)
                .ok()
                .flatten()
                .filter(|m| m.matches_geometry(config.block_size, size))
                .filter(|m| {
                    m.source_identity == *blake3::hash(frozen.identity.as_bytes()).as_bytes()
                })
        })
        .collect();
    let (ranges, reason) = tracked_ranges(ctx, &frozen, &bases, &everything);
    let block = config.block_size as u64;
    let mut reports: Vec<DryRunReport> = dests
        .iter()
        .zip(&bases)
        .map(|(dest, base)| DryRunReport {
            dest: dest.clone(),
            dry_run: true,
            base_generation: base.as_ref().map_or(0, |m| m.generation),
            blocks_changed: 0,
            blocks_zero: 0,
            bytes_changed: 0,
            bytes_read: 0,
            full_scan_reason: reason.clone(),
        })
        .collect();
    let options = ScanOptions {
        read_mode: config.read_mode,
        ..ScanOptions::new(config.block_size)
    };
    let cancel = AtomicBool::new(false);
    let scanned = scan(
        &frozen.source,
        &ranges,
        &options,
        &ctx.pool,
        &cancel,
        &*ctx.progress,
        |chunk| {
            for (report, base) in reports.iter_mut().zip(&bases) {
                report.bytes_read += chunk.bytes_read;
                for (i, hash) in chunk.hashes.iter().enumerate() {
                    let index = chunk.first_block + i as u64;
                    let zero = chunk.zero[i];
                    let differs = match base {
                        Some(base) => base.hash(index) != Some(hash),
                        None => !zero,
                    };
                    if differs {
                        report.blocks_changed += 1;
                        match zero {
                            true => report.blocks_zero += 1,
                            false => {
                                report.bytes_changed += block.min(size - index * block);
                            }
                        }
                    }
                }
            }
            Ok::<(), SendError>(())
        },
    );
    let Frozen { source, view, .. } = frozen;
    drop(source);
    view.release()?;
    scanned.map_err(scan_error)?;
    Ok(reports)
}

/// The tracker's ranges since the kept snapshot when every destination's base is that
/// snapshot's content; else everything, and why.
fn tracked_ranges(
    ctx: &CycleContext,
    frozen: &Frozen,
    bases: &[Option<Manifest>],
    everything: &RangeSet,
) -> (RangeSet, Option<String>) {
    if ctx.tracker.name() == "full-scan" {
        return (everything.clone(), None);
    }
    let mut kept = ctx.kept.lock().expect("kept views lock");
    let (previous, since) = match kept.recorded() {
        Ok(found) => found,
        Err(reason) => return (everything.clone(), Some(reason)),
    };
    let all_at_kept = bases
        .iter()
        .all(|b| b.as_ref().is_some_and(|m| m.root() == since.root));
    if !all_at_kept {
        let why = "a destination's committed manifest is not the kept snapshot's".to_string();
        return (everything.clone(), Some(why));
    }
    match ctx.tracker.changed(Some(previous), &frozen.view, &since) {
        Changes::Ranges(ranges) => (ranges, None),
        Changes::Everything { reason } => (everything.clone(), reason),
    }
}
