//! Choosing the base manifest a cycle diffs against: ours when the receiver's root agrees,
//! else the receiver's own, fetched with bounds.

use crate::blockdiff::manifest::{block_count, root_of, BlockHash, Manifest};
use crate::state::SenderPaths;
use crate::transport::frame::Message;
use crate::transport::Connection;

use super::error::{unexpected, SendError};

/// Our committed manifest, if it is usable for this source as it is now. Says why not.
pub(crate) fn load_own_manifest(
    paths: &SenderPaths,
    identity: &str,
    block_size: u32,
    device_size: u64,
) -> Option<Manifest> {
    let reason = match crate::state::manifest_file::load(&paths.manifest) {
        Ok(None) => return None,
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
            "the source was {} bytes and is now {device_size}",
            m.device_size
        ),
        Ok(Some(m)) => return Some(m),
        Err(e) => e.to_string(),
    };
    tracing::warn!(
        manifest = %paths.manifest.display(),
        %reason,
        "not using the saved manifest: falling back to a full comparison against the receiver"
    );
    None
}

/// Receives the receiver's manifest for the cycle's geometry, with bounds.
pub(crate) async fn fetch_manifest(
    conn: &mut Connection,
    (block_size, device_size): (u32, u64),
) -> Result<Manifest, SendError> {
    conn.send(&Message::ManifestRequest).await?;
    conn.flush().await?;
    let expected = block_count(device_size, block_size);
    let mut hashes: Vec<BlockHash> = Vec::with_capacity(expected.min(1 << 24) as usize);
    loop {
        match conn.recv().await? {
            Message::ManifestChunk {
                first_block,
                hashes: chunk,
            } => {
                if first_block != hashes.len() as u64
                    || hashes.len() as u64 + chunk.len() as u64 > expected
                {
                    return Err(SendError::Protocol(format!(
                        "manifest chunk at block {first_block} of {} out of order or too long",
                        chunk.len()
                    )));
                }
                hashes.extend(chunk);
            }
            Message::ManifestEnd { root } => {
                if hashes.len() as u64 != expected
                    || root_of(device_size, block_size, &hashes) != root
                {
                    return Err(SendError::Protocol(
                        "receiver's manifest is incomplete or does not match its root".into(),
                    ));
                }
                return Ok(Manifest::from_hashes(block_size, device_size, hashes));
            }
            other => return Err(unexpected(&other, "ManifestChunk")),
        }
    }
}
