//! Opening a cycle with one destination and choosing the base manifest it diffs against:
//! ours when the receiver's root agrees with it (then, and only then, a change tracker's
//! ranges apply), else the receiver's own, fetched with bounds.

use crate::blockdiff::manifest::{block_count, root_of, BlockHash, Manifest};
use crate::state::SenderPaths;
use crate::tracker::Since;
use crate::transport::frame::{Message, TargetCondition, CAP_REFINE, CAP_REHASH};
use crate::transport::Endpoint;

use super::error::{unexpected, SendError, Violation};

/// One destination's side of a cycle, once opened.
pub(crate) struct DestCycle {
    /// The manifest of what the target holds.
    pub base: Manifest,
    /// "sender" (our committed manifest) or "receiver" (the receiver's).
    pub base_name: &'static str,
    /// The generation this cycle commits.
    pub generation: u64,
    /// When the base is our committed manifest: what it describes (a tracker may be asked).
    /// Else why not.
    pub since: Result<Since, String>,
    /// What the receiver said of its target.
    pub condition: TargetCondition,
    /// The receiver refines.
    pub refine: bool,
}

/// Asks the receiver to re-hash its target before the cycle (`send --rehash-target`).
pub(crate) fn ask_rehash(endpoint: &Endpoint) -> Result<(), SendError> {
    if endpoint.peer_capabilities() & CAP_REHASH == 0 {
        return Err(SendError::Unsupported(
            "the receiver cannot re-hash its target on request (--rehash-target): upgrade it",
        ));
    }
    Ok(endpoint.send(Message::Rehash)?)
}

/// Opens the cycle: proposes the next generation, hears the receiver's state, picks the base.
pub(crate) fn begin(
    endpoint: &Endpoint,
    paths: &SenderPaths,
    identity: &str,
    (block_size, device_size): (u32, u64),
) -> Result<DestCycle, SendError> {
    let (ours, why_not) = match load_own_manifest(paths, identity, block_size, device_size) {
        Ok(Some(manifest)) => (Some(manifest), String::new()),
        Ok(None) => (None, "no committed manifest of ours yet".to_string()),
        Err(reason) => (
            None,
            format!("our committed manifest is unusable: {reason}"),
        ),
    };
    let own_generation = ours.as_ref().map_or(0, |m| m.generation);
    endpoint.send(Message::CycleStart {
        generation: own_generation.saturating_add(1),
        device_size,
        block_size,
        base_root: ours.as_ref().map(Manifest::root),
    })?;
    let (their_generation, their_root, condition) = match endpoint.recv()? {
        Message::TargetState {
            committed_generation,
            root,
            condition,
        } => (committed_generation, root, condition),
        other => return Err(unexpected(&other, "TargetState")),
    };
    let Some(next) = their_generation.checked_add(1) else {
        return Err(Violation::GenerationExhausted {
            generation: their_generation,
        }
        .into());
    };
    let generation = own_generation.saturating_add(1).max(next);
    let refine = endpoint.peer_capabilities() & CAP_REFINE != 0;
    if let Some(manifest) = ours.as_ref().filter(|m| m.root() == their_root) {
        let since = Ok(Since {
            generation: manifest.generation,
            root: their_root,
        });
        return Ok(DestCycle {
            base: ours.expect("matched"),
            base_name: "sender",
            generation,
            since,
            condition,
            refine,
        });
    }
    let why_not = if ours.is_some() {
        tracing::info!(
            our_generation = own_generation,
            their_generation,
            "receiver's root differs from our manifest: comparing against the receiver's manifest"
        );
        format!("the receiver's root differs from our committed generation {own_generation}")
    } else {
        why_not
    };
    Ok(DestCycle {
        base: fetch_manifest(endpoint, (block_size, device_size))?,
        base_name: "receiver",
        generation,
        since: Err(why_not),
        condition,
        refine,
    })
}

/// Our committed manifest, if it is usable for this source as it is now; else why not.
fn load_own_manifest(
    paths: &SenderPaths,
    identity: &str,
    block_size: u32,
    device_size: u64,
) -> Result<Option<Manifest>, String> {
    let reason = match crate::state::manifest_file::load(&paths.manifest) {
        Ok(None) => return Ok(None),
        Ok(Some(m)) if m.source_identity != *blake3::hash(identity.as_bytes()).as_bytes() => {
            "it belongs to another source".to_string()
        }
        Ok(Some(m)) if m.block_size != block_size => {
            format!(
                "its block size is {} and this cycle uses {block_size}",
                m.block_size
            )
        }
        Ok(Some(m)) if m.device_size != device_size => format!(
            "the source changed size from {} to {device_size} bytes",
            m.device_size
        ),
        Ok(Some(m)) => return Ok(Some(m)),
        Err(e) => e.to_string(),
    };
    tracing::warn!(
        manifest = %paths.manifest.display(),
        %reason,
        "not using the saved manifest: falling back to a full comparison against the receiver"
    );
    Err(reason)
}

/// Receives the receiver's manifest for the cycle's geometry, with bounds.
fn fetch_manifest(
    endpoint: &Endpoint,
    (block_size, device_size): (u32, u64),
) -> Result<Manifest, SendError> {
    endpoint.send(Message::ManifestRequest)?;
    let expected = block_count(device_size, block_size);
    let mut hashes: Vec<BlockHash> = Vec::with_capacity(expected.min(1 << 24) as usize);
    loop {
        match endpoint.recv()? {
            Message::ManifestChunk {
                first_block,
                hashes: chunk,
            } => {
                if first_block != hashes.len() as u64
                    || hashes.len() as u64 + chunk.len() as u64 > expected
                {
                    return Err(Violation::ManifestChunk {
                        first_block,
                        count: chunk.len(),
                    }
                    .into());
                }
                hashes.extend(chunk);
            }
            Message::ManifestEnd { root } => {
                if hashes.len() as u64 != expected
                    || root_of(device_size, block_size, &hashes) != root
                {
                    return Err(Violation::ManifestRoot.into());
                }
                return Ok(Manifest::from_hashes(block_size, device_size, hashes));
            }
            other => return Err(unexpected(&other, "ManifestChunk")),
        }
    }
}
