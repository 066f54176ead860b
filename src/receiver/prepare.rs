//! Preparing a target for a cycle: open (or create) it, bring it to the cycle's size, and
//! find a manifest that describes it: the saved one when the state says it is trustworthy,
//! else one rebuilt by hashing the target. The state is marked "applying" before anything
//! on the target may change.

use std::path::Path;
use std::sync::Arc;

use crate::blockdiff::manifest::{block_count, block_len, hash_block, Manifest, UNKNOWN_HASH};
use crate::device::DeviceKind;
use crate::state::Condition;
use crate::target::{fit, BlockTarget};
use crate::transport::frame::TargetCondition;

use super::error::ReceiveError;
use super::hashing::{hash_device, Hashing};
use super::session::{Proposal, Session};
use super::GrowthLimit;

impl Session {
    /// Opens the target and brings the manifest to the cycle's geometry. Marks the state
    /// "applying" before anything is changed.
    pub(super) fn prepare(
        &mut self,
        device_size: u64,
        block_size: u32,
        proposal: &Proposal,
        generation: u64,
    ) -> Result<TargetCondition, ReceiveError> {
        let prior = self.state.condition;
        let mut created = false;
        if self.target.is_none() {
            let exists = self.parts.opener.exists();
            let create = (self.parts.create && !exists).then_some(device_size);
            if create.is_some() {
                self.check_growth(0, device_size)?;
            }
            self.target = Some(self.parts.opener.open(create)?);
            created = create.is_some();
        }
        let target = self.target.clone().expect("opened");
        if !created && target.kind() == DeviceKind::File && device_size > target.size() {
            self.check_growth(target.size(), device_size)?;
        }
        // A file target is resized to the source's size when we manage it (created it or
        // committed to it before) or when it is at least as large; a smaller unknown file and
        // any block device must already be large enough.
        let managed =
            created || self.state.committed_generation > 0 || target.size() >= device_size;
        let may_resize = managed && target.kind() == DeviceKind::File;
        if !may_resize {
            fit(&*target, device_size, false)?;
        }
        if !created {
            let kept = self.manifest.take();
            self.manifest = self.trusted_manifest(kept, &*target, block_size, proposal)?;
        }
        // From here on the target may change: say so first.
        self.state.condition = Condition::Applying;
        self.state.applying_generation = Some(generation);
        self.state.block_size = block_size;
        self.state.device_size = device_size;
        self.save_state()?;
        // A file grows now (the cycle writes there); it shrinks only at the commit, so an
        // aborted cycle (or a lying CycleStart) never loses what lies past the new end.
        let size_before = target.size();
        self.pending_shrink = (may_resize && device_size < size_before).then_some(device_size);
        let fitted = fit(&*target, device_size.max(size_before), may_resize);
        self.resized |= target.size() != size_before;
        fitted?;
        if created {
            self.manifest = Some(Manifest::zeroed(block_size, device_size));
            return Ok(TargetCondition::Unknown);
        }
        match self.manifest.take() {
            Some(mut manifest) if manifest.block_size == block_size => {
                let old_count = manifest.block_count();
                if manifest.device_size != device_size {
                    manifest.resize(device_size);
                    // Past what the file held before this cycle grew it lie holes: their hashes
                    // are the zero hashes `resize` put there, and are not read.
                    let held = block_count(size_before.min(device_size), block_size);
                    rehash_tail(&*target, &mut manifest, old_count.saturating_sub(1)..held)?;
                }
                self.manifest = Some(manifest);
                Ok(match prior {
                    Condition::Consistent => TargetCondition::Consistent,
                    _ => TargetCondition::MidCycle,
                })
            }
            _ => {
                self.manifest = Some(self.hash_target(&target, block_size, device_size)?);
                Ok(TargetCondition::Unknown)
            }
        }
    }

    /// The manifest this cycle may trust: the one the session kept, or the saved one, when
    /// nothing disagrees with it: not the target's fingerprint (written, resized or replaced
    /// behind our back), not the state's own record or the sender's record of what it
    /// committed here (a state dir restored from a backup, a second state dir), not a few
    /// sampled blocks of the target. Otherwise `None`, and the log says why: the target is
    /// then re-hashed. A manifest of another block size is returned as it is (the cycle
    /// re-hashes for the new geometry).
    fn trusted_manifest(
        &self,
        kept: Option<Manifest>,
        target: &dyn BlockTarget,
        block_size: u32,
        proposal: &Proposal,
    ) -> Result<Option<Manifest>, ReceiveError> {
        let prior = self.state.condition;
        let found = match (self.changed_behind_our_back(target), kept) {
            (Some(reason), _) => Err(reason),
            (None, Some(manifest)) => Ok(manifest),
            (None, None) => match self.distrust(prior, proposal) {
                Some(reason) => Err(reason),
                None => self.load_committed(prior, block_size),
            },
        };
        let checked = match found {
            Ok(manifest) if manifest.block_size == block_size => {
                match sampled_difference(target, &manifest)? {
                    Some(reason) => Err(reason),
                    None => Ok(manifest),
                }
            }
            other => other,
        };
        Ok(match checked {
            Ok(manifest) => Some(manifest),
            Err(reason) => {
                tracing::warn!(target = %self.parts.opener.name().display(), %reason, "rebuilding the target's manifest by hashing it");
                None
            }
        })
    }

    /// Refuses to grow a file target from `current` to `announced` bytes beyond the session's
    /// [`GrowthLimit`], before anything on the target or in its state changes.
    fn check_growth(&self, current: u64, announced: u64) -> Result<(), ReceiveError> {
        let (allowed, why) = match self.parts.max_size {
            GrowthLimit::Unbounded => return Ok(()),
            GrowthLimit::AtMost(max) => (max, "--max-size"),
            GrowthLimit::FreeSpace => {
                let path = self.parts.opener.name();
                let dir = match path.parent() {
                    Some(dir) if !dir.as_os_str().is_empty() => dir,
                    _ => Path::new("."),
                };
                // Without the figure there is no bound to apply: opening or writing then fails.
                // (The casts are needed where these are 32-bit.)
                #[allow(clippy::unnecessary_cast)]
                let free = nix::sys::statvfs::statvfs(dir).map_or(u64::MAX, |s| {
                    (s.blocks_available() as u64).saturating_mul(s.fragment_size() as u64)
                });
                (
                    current.saturating_add(free),
                    "the target's size plus its filesystem's free space",
                )
            }
        };
        if announced > allowed {
            return Err(ReceiveError::GrowthRefused {
                target: self.parts.opener.name().to_owned(),
                announced,
                allowed,
                why,
            });
        }
        Ok(())
    }

    /// How the target differs from its fingerprint at the last moment the state said the
    /// manifest describes it (a write, resize or replacement by someone else), if it does.
    fn changed_behind_our_back(&self, target: &dyn BlockTarget) -> Option<String> {
        if self.state.condition == Condition::Applying {
            return None;
        }
        let recorded = self.state.target_fingerprint.as_ref()?;
        let now = target.fingerprint()?;
        recorded.change_to(&now)
    }

    /// Why the state cannot be trusted before its manifest is even read, if it cannot.
    fn distrust(&self, prior: Condition, proposal: &Proposal) -> Option<String> {
        let committed = self.state.committed_generation;
        let senders_last = proposal.generation.saturating_sub(1);
        match prior {
            Condition::Applying if self.state.applying_generation.is_some() => {
                Some("a cycle was interrupted by a crash".to_string())
            }
            Condition::Applying => Some("no state for this target yet".to_string()),
            _ if senders_last > committed => Some(format!(
                "the sender committed generation {senders_last} to this target, but this \
                 receiver's state ends at generation {committed} (restored from a backup, or \
                 another state dir served this target)"
            )),
            _ => match proposal.base_root {
                Some(root) if senders_last == committed && hex::encode(root) != self.state.committed_root => {
                    Some(format!(
                        "the sender's generation {committed} has root {}, this receiver's has root {}",
                        hex::encode(root),
                        self.state.committed_root
                    ))
                }
                _ => None,
            },
        }
    }

    /// The saved manifest, checked against the state's committed generation and root when the
    /// state says the target is consistent.
    fn load_committed(&self, prior: Condition, block_size: u32) -> Result<Manifest, String> {
        match self.parts.store.load_manifest() {
            Ok(Some(m)) if m.block_size != block_size => Err(format!(
                "block size changed from {} to {block_size}",
                m.block_size
            )),
            Ok(Some(m))
                if prior == Condition::Consistent
                    && (m.generation != self.state.committed_generation
                        || hex::encode(m.root()) != self.state.committed_root) =>
            {
                Err(format!(
                    "its manifest (generation {}, root {}) is not the committed one (generation {}, root {})",
                    m.generation,
                    hex::encode(m.root()),
                    self.state.committed_generation,
                    self.state.committed_root
                ))
            }
            Ok(Some(m)) => Ok(m),
            Ok(None) => Err("its manifest is missing".into()),
            Err(e) => Err(format!("its manifest is unusable: {e}")),
        }
    }

    /// Hashes the whole target (stops early on a requested stop).
    fn hash_target(
        &self,
        target: &Arc<dyn BlockTarget>,
        block_size: u32,
        device_size: u64,
    ) -> Result<Manifest, ReceiveError> {
        let hashing = Hashing {
            block_size,
            size: device_size,
            pool: &self.pool,
            stop: &self.parts.stop,
            progress: &*self.parts.progress,
            throttle: None,
        };
        let hashes = hash_device(&**target, &hashing)?;
        Ok(Manifest::from_hashes(block_size, device_size, hashes))
    }
}

/// Bytes of sampled blocks read at each cycle start (at least one block, at most 16).
const SAMPLE_BYTES: u64 = 1 << 20;

/// A few blocks of a trusted manifest, chosen at random, compared with the target: a cheap
/// check at every cycle start that sees a target overwritten or replaced wholesale behind the
/// receiver's back, where its fingerprint cannot (a block device's node says nothing of its
/// content). A few blocks changed here and there are the scrub's to find.
fn sampled_difference(
    target: &dyn BlockTarget,
    manifest: &Manifest,
) -> Result<Option<String>, ReceiveError> {
    let blocks = manifest.block_count();
    if blocks == 0 {
        return Ok(None);
    }
    let block_size = manifest.block_size as u64;
    let samples = (SAMPLE_BYTES / block_size).clamp(1, 16).min(blocks);
    let mut seed = [0u8; 8];
    // Without randomness the first blocks are sampled: still a check, only a predictable one.
    let _ = getrandom::getrandom(&mut seed);
    let mut next = u64::from_le_bytes(seed);
    let mut buf = vec![0u8; block_size as usize];
    for _ in 0..samples {
        // splitmix64: spreads consecutive states over the blocks.
        next = next.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = next;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        let index = (z ^ (z >> 31)) % blocks;
        let known = manifest.hash(index).expect("in range");
        if *known == UNKNOWN_HASH {
            continue;
        }
        let len = block_len(manifest.device_size, manifest.block_size, index);
        let offset = index * block_size;
        if offset + len as u64 > target.size() {
            return Ok(Some(format!(
                "the target ({} bytes) is shorter than its manifest says ({} bytes)",
                target.size(),
                manifest.device_size
            )));
        }
        target.read_at(&mut buf[..len], offset)?;
        if hash_block(&buf[..len]) != *known {
            return Ok(Some(format!(
                "sampled block {index} differs from the manifest (the target was written \
                 behind the receiver's back)"
            )));
        }
    }
    Ok(None)
}

/// Re-hashes the blocks `indexes` (after a size change: from the old last block to the end of
/// what the target held).
fn rehash_tail(
    target: &dyn BlockTarget,
    manifest: &mut Manifest,
    indexes: std::ops::Range<u64>,
) -> Result<(), ReceiveError> {
    let mut buf = vec![0u8; manifest.block_size as usize];
    for index in indexes.start..indexes.end.min(manifest.block_count()) {
        let len = block_len(manifest.device_size, manifest.block_size, index);
        target.read_at(&mut buf[..len], index * manifest.block_size as u64)?;
        manifest.set_hash(index, hash_block(&buf[..len]));
    }
    Ok(())
}
