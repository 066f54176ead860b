//! The data phase of a receiver's cycle: answer a manifest request if one comes, then apply
//! the sender's ops until `CycleEnd`, answering refinements as they come. Messages that have
//! already arrived are taken ahead of the one being applied, so the target reads they will
//! need start early and many at once (a changed run's blocks lie scattered over the target,
//! and one cold read at a time would leave the disk idle).

use std::collections::VecDeque;

use crate::blockdiff::manifest::{BlockHash, Manifest};
use crate::transport::frame::{Message, MAX_MANIFEST_CHUNK};
use crate::transport::{Endpoint, TransportError};

use super::apply::Applier;
use super::error::{ReceiveError, Violation};
use super::prefetch::Prefetcher;
use super::session::Session;

/// Messages taken ahead of the one being applied.
const LOOKAHEAD_MESSAGES: usize = 1024;
/// Payload bytes the look-ahead may hold.
const LOOKAHEAD_BYTES: usize = 64 << 20;

impl Session {
    /// Applies the cycle's changes; returns the root the sender expects.
    pub(super) fn receive_changes(
        &mut self,
        endpoint: &Endpoint,
        generation: u64,
    ) -> Result<BlockHash, ReceiveError> {
        let mut first = endpoint.recv()?;
        if let Message::ManifestRequest = first {
            send_manifest(endpoint, self.manifest.as_ref().expect("prepared"))?;
            first = endpoint.recv()?;
        }
        let target = self.target.clone().expect("opened");
        let manifest = self.manifest.as_mut().expect("prepared");
        let mut applier = Applier::new(&*target, manifest, &self.pool);
        let result = apply_until_end(endpoint, &mut applier, first);
        self.state.last_cycle_bytes_written = applier.touched;
        self.written = std::mem::take(&mut applier.written);
        match result? {
            (g, root) if g == generation => Ok(root),
            (got, _) => Err(Violation::GenerationMismatch {
                got,
                expected: generation,
            }
            .into()),
        }
    }
}

/// Applies ops until `CycleEnd`; returns its generation and root. Whatever arrives is taken
/// in order, errors included: an error is only returned once everything before it is applied.
fn apply_until_end(
    endpoint: &Endpoint,
    applier: &mut Applier<'_>,
    first: Message,
) -> Result<(u64, BlockHash), ReceiveError> {
    let mut ahead: VecDeque<Result<Message, TransportError>> = VecDeque::from([Ok(first)]);
    let mut ahead_bytes = 0;
    let mut prefetcher = Prefetcher::default();
    loop {
        // Take what has already arrived, hinting the target reads it will need.
        while ahead.len() < LOOKAHEAD_MESSAGES
            && ahead_bytes < LOOKAHEAD_BYTES
            && !matches!(ahead.back(), Some(Err(_)))
        {
            let Some(message) = endpoint.try_recv() else {
                break;
            };
            if let Ok(message) = &message {
                ahead_bytes += message_payload(message);
                if let Message::Refine {
                    first_block,
                    block_count,
                    ..
                } = message
                {
                    applier.prefetch(*first_block, *block_count as u64);
                }
            }
            ahead.push_back(message);
        }
        let message = match ahead.pop_front() {
            Some(message) => message?,
            None => endpoint.recv()?,
        };
        ahead_bytes = ahead_bytes.saturating_sub(message_payload(&message));
        if let Message::Prefetch { runs } = &message {
            prefetcher.add(runs, applier)?;
            continue;
        }
        let message = match message.into_op() {
            Ok(op) => {
                if let Some(first_block) = op.leading_block() {
                    prefetcher.advance(first_block, applier);
                }
                if let Some(answer) = applier.apply(op)? {
                    endpoint.send(answer.into())?;
                }
                continue;
            }
            Err(other) => other,
        };
        return match message {
            Message::CycleEnd { generation, root } => Ok((generation, root)),
            other => Err(Violation::Unexpected {
                got: other.name(),
                during: "during a cycle",
            }
            .into()),
        };
    }
}

/// Bytes a message holds in memory (what the look-ahead counts): its payload and its lists,
/// so that up to [`LOOKAHEAD_MESSAGES`] large lists (a `Prefetch` holds up to 1 MiB) are held
/// within [`LOOKAHEAD_BYTES`] too, not only data.
fn message_payload(message: &Message) -> usize {
    let hashes = |n: usize| n * std::mem::size_of::<BlockHash>();
    match message {
        Message::Extent {
            payload, hashes: h, ..
        } => payload.len() + hashes(h.len()),
        Message::Patch {
            payload,
            hashes: h,
            bitmap,
            ..
        } => payload.len() + hashes(h.len()) + bitmap.len(),
        Message::Refine { sub_hashes, .. } => std::mem::size_of_val(sub_hashes.as_slice()),
        Message::ManifestChunk { hashes: h, .. } => hashes(h.len()),
        Message::Prefetch { runs } => std::mem::size_of_val(runs.as_slice()),
        _ => 0,
    }
}

fn send_manifest(endpoint: &Endpoint, manifest: &Manifest) -> Result<(), ReceiveError> {
    for (i, chunk) in manifest
        .hashes()
        .chunks(MAX_MANIFEST_CHUNK as usize)
        .enumerate()
    {
        endpoint.send(Message::ManifestChunk {
            first_block: (i * MAX_MANIFEST_CHUNK as usize) as u64,
            hashes: chunk.to_vec(),
        })?;
    }
    endpoint.send(Message::ManifestEnd {
        root: manifest.root(),
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::frame::MAX_PREFETCH_RUNS;

    #[test]
    fn the_look_ahead_counts_lists_not_only_data() {
        let prefetch = Message::Prefetch {
            runs: vec![(0, 1); MAX_PREFETCH_RUNS as usize],
        };
        assert_eq!(message_payload(&prefetch), 1 << 20);
        let chunk = Message::ManifestChunk {
            first_block: 0,
            hashes: vec![[0; 32]; 10],
        };
        assert_eq!(message_payload(&chunk), 320);
        let refine = Message::Refine {
            first_block: 0,
            block_count: 1,
            sub_hashes: vec![[0; 8]; 16],
        };
        assert_eq!(message_payload(&refine), 128);
        // 1,024 lists at the limit would be 1 GiB: the byte bound stops the look-ahead first.
        assert!(LOOKAHEAD_BYTES / message_payload(&prefetch) < LOOKAHEAD_MESSAGES);
    }
}
