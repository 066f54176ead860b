//! Scrubbing a target: re-hash it and compare with its manifest, to find blocks changed
//! outside blkmirror (a stray `dd`, a mount that wrote, bit rot). Blocks that differ are marked
//! unknown in the manifest and the target's state says "drifted"; the next cycle sees the
//! receiver's root differ, compares against its manifest and ships exactly those blocks
//! (refined to the 4 KiB sub-blocks that differ). A scrub writes nothing to the target.
//!
//! Only a state that vouches for its manifest can be scrubbed (consistent, interrupted,
//! drifted); a target mid-cycle after a crash is re-hashed whole by its next cycle anyway.
//! A target whose size no longer matches its manifest has drifted at its tail.

use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use crate::blockdiff::manifest::{BlockHash, Manifest, UNKNOWN_HASH};
use crate::blockdiff::ranges::RangeSet;
use crate::progress::Progress;
use crate::source::throttle::Throttle;
use crate::state::{Condition, DirStore, ReceiverPaths, ReceiverState, ReceiverStore, ScrubRecord};
use crate::target::Fingerprint;

use super::error::ReceiveError;
use super::hashing::{hash_path, Hashing};

/// What a scrub found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ScrubOutcome {
    /// Every block matches the manifest.
    Clean {
        /// Blocks compared.
        blocks: u64,
    },
    /// Some blocks differ; they are marked for the next cycle.
    Drifted {
        /// Blocks compared.
        blocks: u64,
        /// Blocks that differ.
        drifted: u64,
    },
    /// Nothing to compare against (no state, or a state that does not vouch for its manifest).
    Unknown {
        /// Why.
        reason: String,
    },
    /// A session holds the target now.
    Busy,
}

/// Scrubs the target at `target` whose state lives under `state_dir`: takes the target's lock
/// (a session writing it makes this [`ScrubOutcome::Busy`]), hashes it read-only (at most
/// `rate` bytes per second; `cancel` ends it early with [`ReceiveError::Stopped`]).
pub fn scrub_at(
    target: &Path,
    state_dir: &Path,
    threads: usize,
    rate: Option<u64>,
    cancel: &AtomicBool,
    progress: &dyn Progress,
) -> Result<ScrubOutcome, ReceiveError> {
    let paths = ReceiverPaths::new(state_dir, target);
    let state_error = |source| ReceiveError::State {
        path: paths.dir.clone(),
        source,
    };
    let Some(_lock) = paths.lock().map_err(state_error)? else {
        return Ok(ScrubOutcome::Busy);
    };
    let held = match crate::source::BlockSource::open(target) {
        Ok(source) => source.size(),
        Err(e) => {
            return Ok(ScrubOutcome::Unknown {
                reason: e.as_role("target").to_string(),
            })
        }
    };
    // Taken before hashing: a write during the scrub then shows at the next cycle.
    let fingerprint = std::fs::File::open(target)
        .and_then(|file| Fingerprint::of(&file, held))
        .ok();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads.max(1))
        .build()
        .map_err(ReceiveError::Threads)?;
    let throttle = rate.map(|rate| Arc::new(Throttle::new(rate)));
    let mut store = DirStore::new(paths);
    scrub(&mut store, (held, fingerprint), |block_size, size| {
        let hashing = Hashing {
            block_size,
            size,
            pool: &pool,
            stop: cancel,
            progress,
            throttle,
        };
        hash_path(target, &hashing)
    })
}

/// The manifest a scrub may compare against, or why there is none.
fn trusted_manifest(
    state: &Option<ReceiverState>,
    store: &dyn ReceiverStore,
) -> Result<Manifest, String> {
    let Some(state) = state else {
        return Err("no state: nothing committed to this target yet".into());
    };
    if state.condition == Condition::Applying {
        return Err("mid-cycle after a crash: its next cycle re-hashes the whole target".into());
    }
    match store.load_manifest() {
        Ok(Some(manifest)) => Ok(manifest),
        Ok(None) => Err("its manifest is missing".into()),
        Err(e) => Err(format!("its manifest is unusable: {e}")),
    }
}

/// Scrubs one target: `hash(block_size, size)` hashes its first `size` bytes (`size` capped
/// at what the target holds: `held`); differing blocks are marked in `store`, and the state
/// records `fingerprint` (the target's, taken before hashing) as the one its manifest now
/// describes.
pub fn scrub(
    store: &mut dyn ReceiverStore,
    (held, fingerprint): (u64, Option<Fingerprint>),
    hash: impl FnOnce(u32, u64) -> Result<Vec<BlockHash>, ReceiveError>,
) -> Result<ScrubOutcome, ReceiveError> {
    let location = store.location().to_owned();
    let state_error = |source| ReceiveError::State {
        path: location.clone(),
        source,
    };
    let state = store.load_state().map_err(state_error)?;
    let mut manifest = match trusted_manifest(&state, &*store) {
        Ok(manifest) => manifest,
        Err(reason) => return Ok(ScrubOutcome::Unknown { reason }),
    };
    let mut state = state.expect("checked");
    let blocks = manifest.block_count();
    let readable = held.min(manifest.device_size);
    let hashes = hash(manifest.block_size, readable)?;
    let mut drifted = RangeSet::new();
    for (index, hash) in hashes.iter().enumerate() {
        let known = manifest.hash(index as u64).expect("in range");
        if *known != UNKNOWN_HASH && known != hash {
            drifted.insert(index as u64..index as u64 + 1);
        }
    }
    // A target shorter than its manifest lost its tail: the blocks it cannot hold (and a
    // short last one, whose hash differs) have drifted.
    drifted.insert(hashes.len() as u64..blocks);
    let count = drifted.total_len();
    if count > 0 {
        manifest.mark_unknown(&drifted);
        store.save_manifest(&manifest).map_err(state_error)?;
        state.condition = Condition::Drifted;
        tracing::warn!(
            event = "drift_found",
            blocks = count,
            "scrub: blocks differ from the committed generation (marked for the next cycle)"
        );
    }
    crate::metrics::scrub_finished(&state.target, count);
    state.last_scrub = Some(ScrubRecord {
        at: crate::state::now(),
        blocks_checked: blocks,
        blocks_drifted: count,
    });
    state.updated_at = crate::state::now();
    state.target_fingerprint = fingerprint;
    store.save_state(&state).map_err(state_error)?;
    Ok(match count {
        0 => ScrubOutcome::Clean { blocks },
        drifted => ScrubOutcome::Drifted { blocks, drifted },
    })
}
