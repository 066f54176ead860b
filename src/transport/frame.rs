//! Wire messages and their byte encoding (see `docs/protocol.md`). Bytes only: no I/O here,
//! so every decoder can be fed arbitrary bytes by property tests and must never panic. The
//! engines' own types ([`Op`], [`RefineAnswer`]) become messages here, at the edge, and back.
//!
//! A stream starts with a [`Preamble`] from each side, then carries frames:
//! `u32 length (LE, counts the type byte and the body) | u8 type | body`.

use crate::blockdiff::delta::{Op, Payload, RefineAnswer};
use crate::blockdiff::manifest::BlockHash;
use crate::blockdiff::refine::SubHash;

/// Bytes that open every blkmirror stream.
pub const MAGIC: [u8; 8] = *b"BKMRWIRE";
/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u32 = 1;
/// Capability bit: the peer understands Refine / RefineAnswer / Patch (4 KiB refinement).
pub const CAP_REFINE: u64 = 1;
/// Capability bit: the receiver understands `Rehash` (scrub the target before a cycle).
pub const CAP_REHASH: u64 = 1 << 1;
/// Capability bit: the peer understands `KeepAlive` (sent while this side has nothing else
/// to say, so the peer can bound its waits without mistaking a long rehash for a dead link).
pub const CAP_KEEPALIVE: u64 = 1 << 2;
/// Capability bit: the receiver understands `Open` (a sender naming one of several targets,
/// `tls://HOST:PORT/NAME`).
pub const CAP_NAMED_TARGETS: u64 = 1 << 3;
/// Capability bit: the receiver understands `Prefetch` (the block runs a tracked cycle will
/// change, sent before its data so that the target reads they need start early).
pub const CAP_PREFETCH: u64 = 1 << 4;
/// Capabilities this build offers.
pub const CAPABILITIES: u64 =
    CAP_REFINE | CAP_REHASH | CAP_KEEPALIVE | CAP_NAMED_TARGETS | CAP_PREFETCH;
/// Largest plaintext an extent may carry.
pub const MAX_EXTENT_BYTES: u32 = 16 << 20;
/// Most blocks in one extent (16 MiB of 4 KiB blocks).
pub const MAX_EXTENT_BLOCKS: u32 = MAX_EXTENT_BYTES / 4096;
/// Most 4 KiB sub-blocks in one refined run.
pub const MAX_SUB_BLOCKS: u32 = MAX_EXTENT_BYTES / 4096;
/// Most runs in one `Prefetch`.
pub const MAX_PREFETCH_RUNS: u32 = 65536;
/// Most `Prefetch` runs in one cycle (a receiver refuses more: a bound on what it holds).
pub const MAX_PREFETCH_RUNS_PER_CYCLE: usize = 1 << 20;
/// Most hashes in one manifest chunk.
pub const MAX_MANIFEST_CHUNK: u32 = 65536;
/// Largest frame accepted, checked before allocating.
pub const MAX_FRAME_LEN: u32 = MAX_EXTENT_BYTES + (1 << 20);
/// Longest text (refusal reason, software name) accepted.
pub const MAX_TEXT_LEN: u32 = 4096;
/// Length of the preamble on the wire.
pub const PREAMBLE_LEN: usize = 20;

/// First bytes each side writes: magic, protocol version, capabilities.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Preamble {
    /// The protocol version the peer speaks (sessions need equality).
    pub version: u32,
    /// Capability bits ([`CAP_REFINE`]); unknown bits are ignored.
    pub capabilities: u64,
}

impl Preamble {
    /// This build's preamble: [`PROTOCOL_VERSION`] and [`CAPABILITIES`].
    pub fn ours() -> Self {
        Preamble {
            version: PROTOCOL_VERSION,
            capabilities: CAPABILITIES,
        }
    }

    /// The bytes on the wire: magic, version (u32 LE), capabilities (u64 LE).
    pub fn encode(&self) -> [u8; PREAMBLE_LEN] {
        let mut out = [0u8; PREAMBLE_LEN];
        out[..8].copy_from_slice(&MAGIC);
        out[8..12].copy_from_slice(&self.version.to_le_bytes());
        out[12..20].copy_from_slice(&self.capabilities.to_le_bytes());
        out
    }

    /// Reads a peer's preamble; only the magic is checked here, the version by the caller.
    pub fn decode(bytes: &[u8; PREAMBLE_LEN]) -> Result<Preamble, FrameError> {
        if bytes[..8] != MAGIC {
            return Err(FrameError::NotBlkmirror);
        }
        Ok(Preamble {
            version: u32::from_le_bytes(bytes[8..12].try_into().unwrap()),
            capabilities: u64::from_le_bytes(bytes[12..20].try_into().unwrap()),
        })
    }
}

/// Why bytes could not be decoded as a frame.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    /// The preamble does not start with [`MAGIC`].
    #[error("peer is not a blkmirror endpoint (bad magic)")]
    NotBlkmirror,
    /// A frame length over [`MAX_FRAME_LEN`].
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    TooLong {
        /// The length read from the wire.
        len: u64,
        /// The limit.
        max: u64,
    },
    /// A frame of length 0 (not even a type byte).
    #[error("empty frame")]
    Empty,
    /// A type byte no message has.
    #[error("unknown frame type {0}")]
    UnknownType(u8),
    /// The body ends before a field does.
    #[error("frame truncated: needed {needed} more bytes, {available} available")]
    Truncated {
        /// Bytes the next field needs.
        needed: usize,
        /// Bytes left in the body.
        available: usize,
    },
    /// Bytes left after the last field (how many).
    #[error("{0} trailing bytes after frame body")]
    Trailing(usize),
    /// A field out of range (a count, a length, a flag byte; what, in words).
    #[error("invalid frame: {0}")]
    Invalid(String),
}

/// Target condition reported by a receiver.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TargetCondition {
    /// Holds the committed generation exactly; manifest exact.
    Consistent = 0,
    /// A cycle was interrupted; the target is mid-cycle but the receiver's manifest is exact.
    MidCycle = 1,
    /// No state (new target), or state lost: the receiver has hashed the target.
    Unknown = 2,
}

/// Every message of the protocol.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// Fatal refusal, either direction. Its encoding never changes across versions.
    Refused {
        /// Why, for humans (at most [`MAX_TEXT_LEN`] bytes are sent).
        reason: String,
    },
    /// Sender opens a cycle.
    CycleStart {
        /// The generation proposed: the sender's committed generation + 1.
        generation: u64,
        /// Bytes of the source for this cycle.
        device_size: u64,
        /// Block size of this cycle, in bytes.
        block_size: u32,
        /// Root of the sender's committed manifest (None: it has none).
        base_root: Option<BlockHash>,
    },
    /// Receiver answers CycleStart.
    TargetState {
        /// Last generation committed to the target; 0 if none.
        committed_generation: u64,
        /// Root of the receiver's manifest as it is now, at this cycle's geometry.
        root: BlockHash,
        /// Whether the target is consistent, mid-cycle, or was hashed.
        condition: TargetCondition,
    },
    /// Sender asks for the receiver's manifest (roots disagreed).
    ManifestRequest,
    /// A run of the receiver's block hashes.
    ManifestChunk {
        /// Index of the first block whose hash this chunk carries.
        first_block: u64,
        /// 1 to [`MAX_MANIFEST_CHUNK`] hashes, of consecutive blocks.
        hashes: Vec<BlockHash>,
    },
    /// End of the receiver's manifest.
    ManifestEnd {
        /// Root of the manifest just sent.
        root: BlockHash,
    },
    /// Changed blocks: `hashes` of each plaintext block, `payload` zstd or raw.
    Extent {
        /// First block of the extent.
        first_block: u64,
        /// Plaintext bytes: the blocks' lengths summed, 1 to [`MAX_EXTENT_BYTES`].
        raw_len: u32,
        /// Whether `payload` is one zstd frame (else it is the plaintext).
        compressed: bool,
        /// BLAKE3 of each plaintext block, 1 to [`MAX_EXTENT_BLOCKS`] of them.
        hashes: Vec<BlockHash>,
        /// The plaintext, or one zstd frame of it.
        payload: Vec<u8>,
    },
    /// Blocks that are now all zeros.
    ZeroRun {
        /// First block of the run.
        first_block: u64,
        /// Number of blocks, at least 1.
        block_count: u64,
    },
    /// Sender: the key of this cycle's sub-block hashes (before the first `Refine`).
    RefineKey {
        /// 32 random bytes, the BLAKE3 key of the cycle's sub-block hashes.
        key: [u8; 32],
    },
    /// Sender: these blocks changed; here are the keyed 4 KiB sub-block hashes of their new
    /// content.
    Refine {
        /// First block of the run.
        first_block: u64,
        /// Blocks in the run, 1 to [`MAX_EXTENT_BLOCKS`].
        block_count: u32,
        /// One keyed short hash per 4 KiB sub-block of the run's new bytes (the last may be
        /// short).
        sub_hashes: Vec<SubHash>,
    },
    /// Receiver: bit i set when sub-block i of the run differs on the target.
    RefineAnswer {
        /// First block of the `Refine` answered.
        first_block: u64,
        /// Bit i (byte i/8, bit i%8) set: sub-block i differs.
        bitmap: Vec<u8>,
    },
    /// Sender: the differing sub-blocks of a refined run, with the run's block hashes.
    Patch {
        /// First block of the refined run.
        first_block: u64,
        /// BLAKE3 of each whole block of the run's new content.
        hashes: Vec<BlockHash>,
        /// The `RefineAnswer` bitmap: which sub-blocks `payload` carries.
        bitmap: Vec<u8>,
        /// Bytes of the selected sub-blocks, at most [`MAX_EXTENT_BYTES`].
        raw_len: u32,
        /// Whether `payload` is one zstd frame (else it is the plaintext).
        compressed: bool,
        /// The selected sub-blocks concatenated in order, or one zstd frame of them.
        payload: Vec<u8>,
    },
    /// Sender has sent all changes; the new root the target must reach.
    CycleEnd {
        /// The generation of this cycle.
        generation: u64,
        /// Root of the sender's new manifest.
        root: BlockHash,
    },
    /// Receiver made generation N durable.
    Committed {
        /// The generation committed.
        generation: u64,
        /// The target's root after the commit.
        root: BlockHash,
    },
    /// Sender, between cycles: re-hash the target against its manifest before the next
    /// cycle (only to a receiver that announced `CAP_REHASH`).
    Rehash,
    /// Either side, when it has sent nothing for a second: "still here". Consumed by the
    /// connection's reader (it only resets the peer-silence clock); never reaches an engine.
    /// Only sent to a peer that announced `CAP_KEEPALIVE`.
    KeepAlive,
    /// Sender, first after the preambles, to a receiver that serves several targets: the
    /// target this connection writes (only to a receiver that announced `CAP_NAMED_TARGETS`).
    Open {
        /// The target's name in the receiver's targets file.
        target: String,
    },
    /// Sender, in a cycle's data phase before its first op: runs of blocks the cycle's ops
    /// will cover (a change tracker's ranges), so that the receiver may start reading them
    /// from the target ahead of the refinements that need them. Advisory: it changes nothing
    /// on the target. Only to a receiver that announced `CAP_PREFETCH`.
    Prefetch {
        /// 1 to [`MAX_PREFETCH_RUNS`] runs: (first block, block count >= 1), ascending.
        runs: Vec<(u64, u64)>,
    },
}

mod kind {
    pub const REFUSED: u8 = 1;
    pub const CYCLE_START: u8 = 2;
    pub const TARGET_STATE: u8 = 3;
    pub const MANIFEST_REQUEST: u8 = 4;
    pub const MANIFEST_CHUNK: u8 = 5;
    pub const MANIFEST_END: u8 = 6;
    pub const EXTENT: u8 = 7;
    pub const ZERO_RUN: u8 = 8;
    pub const CYCLE_END: u8 = 9;
    pub const COMMITTED: u8 = 10;
    pub const REFINE: u8 = 11;
    pub const REFINE_ANSWER: u8 = 12;
    pub const PATCH: u8 = 13;
    pub const REFINE_KEY: u8 = 14;
    pub const REHASH: u8 = 15;
    pub const KEEP_ALIVE: u8 = 16;
    pub const OPEN: u8 = 17;
    pub const PREFETCH: u8 = 18;
}

impl Message {
    /// Short name for logs and errors.
    pub fn name(&self) -> &'static str {
        match self {
            Message::Refused { .. } => "Refused",
            Message::CycleStart { .. } => "CycleStart",
            Message::TargetState { .. } => "TargetState",
            Message::ManifestRequest => "ManifestRequest",
            Message::Rehash => "Rehash",
            Message::KeepAlive => "KeepAlive",
            Message::Open { .. } => "Open",
            Message::Prefetch { .. } => "Prefetch",
            Message::ManifestChunk { .. } => "ManifestChunk",
            Message::ManifestEnd { .. } => "ManifestEnd",
            Message::Extent { .. } => "Extent",
            Message::ZeroRun { .. } => "ZeroRun",
            Message::CycleEnd { .. } => "CycleEnd",
            Message::Committed { .. } => "Committed",
            Message::RefineKey { .. } => "RefineKey",
            Message::Refine { .. } => "Refine",
            Message::RefineAnswer { .. } => "RefineAnswer",
            Message::Patch { .. } => "Patch",
        }
    }

    /// Appends the whole frame (length, type, body) to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&[0; 4]);
        match self {
            Message::Refused { reason } => {
                out.push(kind::REFUSED);
                let text = truncate_text(reason);
                put_u32(out, text.len() as u32);
                out.extend_from_slice(text.as_bytes());
            }
            Message::CycleStart {
                generation,
                device_size,
                block_size,
                base_root,
            } => {
                out.push(kind::CYCLE_START);
                put_u64(out, *generation);
                put_u64(out, *device_size);
                put_u32(out, *block_size);
                put_opt_hash(out, base_root);
            }
            Message::TargetState {
                committed_generation,
                root,
                condition,
            } => {
                out.push(kind::TARGET_STATE);
                put_u64(out, *committed_generation);
                out.extend_from_slice(root);
                out.push(*condition as u8);
            }
            Message::ManifestRequest => out.push(kind::MANIFEST_REQUEST),
            Message::Rehash => out.push(kind::REHASH),
            Message::KeepAlive => out.push(kind::KEEP_ALIVE),
            Message::Open { target } => {
                out.push(kind::OPEN);
                let text = truncate_text(target);
                put_u32(out, text.len() as u32);
                out.extend_from_slice(text.as_bytes());
            }
            Message::Prefetch { runs } => {
                out.push(kind::PREFETCH);
                put_u32(out, runs.len() as u32);
                for (first_block, block_count) in runs {
                    put_u64(out, *first_block);
                    put_u64(out, *block_count);
                }
            }
            Message::ManifestChunk {
                first_block,
                hashes,
            } => {
                out.push(kind::MANIFEST_CHUNK);
                put_u64(out, *first_block);
                put_u32(out, hashes.len() as u32);
                out.extend_from_slice(hashes.as_flattened());
            }
            Message::ManifestEnd { root } => {
                out.push(kind::MANIFEST_END);
                out.extend_from_slice(root);
            }
            Message::Extent {
                first_block,
                raw_len,
                compressed,
                hashes,
                payload,
            } => {
                out.push(kind::EXTENT);
                put_u64(out, *first_block);
                put_u32(out, *raw_len);
                out.push(u8::from(*compressed));
                put_u32(out, hashes.len() as u32);
                out.extend_from_slice(hashes.as_flattened());
                put_u32(out, payload.len() as u32);
                out.extend_from_slice(payload);
            }
            Message::ZeroRun {
                first_block,
                block_count,
            } => {
                out.push(kind::ZERO_RUN);
                put_u64(out, *first_block);
                put_u64(out, *block_count);
            }
            Message::CycleEnd { generation, root } => {
                out.push(kind::CYCLE_END);
                put_u64(out, *generation);
                out.extend_from_slice(root);
            }
            Message::Committed { generation, root } => {
                out.push(kind::COMMITTED);
                put_u64(out, *generation);
                out.extend_from_slice(root);
            }
            Message::RefineKey { key } => {
                out.push(kind::REFINE_KEY);
                out.extend_from_slice(key);
            }
            Message::Refine {
                first_block,
                block_count,
                sub_hashes,
            } => {
                out.push(kind::REFINE);
                put_u64(out, *first_block);
                put_u32(out, *block_count);
                put_u32(out, sub_hashes.len() as u32);
                out.extend_from_slice(sub_hashes.as_flattened());
            }
            Message::RefineAnswer {
                first_block,
                bitmap,
            } => {
                out.push(kind::REFINE_ANSWER);
                put_u64(out, *first_block);
                put_u32(out, bitmap.len() as u32);
                out.extend_from_slice(bitmap);
            }
            Message::Patch {
                first_block,
                hashes,
                bitmap,
                raw_len,
                compressed,
                payload,
            } => {
                out.push(kind::PATCH);
                put_u64(out, *first_block);
                put_u32(out, hashes.len() as u32);
                out.extend_from_slice(hashes.as_flattened());
                put_u32(out, bitmap.len() as u32);
                out.extend_from_slice(bitmap);
                put_u32(out, *raw_len);
                out.push(u8::from(*compressed));
                put_u32(out, payload.len() as u32);
                out.extend_from_slice(payload);
            }
        }
        let len = (out.len() - start - 4) as u32;
        out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    }

    /// Checks a frame length read from the wire before anything is allocated for it.
    pub fn check_len(len: u32) -> Result<(), FrameError> {
        if len == 0 {
            return Err(FrameError::Empty);
        }
        if len > MAX_FRAME_LEN {
            return Err(FrameError::TooLong {
                len: len as u64,
                max: MAX_FRAME_LEN as u64,
            });
        }
        Ok(())
    }

    /// Decodes one frame body (type byte first, length prefix already removed).
    pub fn decode(frame: &[u8]) -> Result<Message, FrameError> {
        let (&kind, body) = frame.split_first().ok_or(FrameError::Empty)?;
        let mut r = Reader { buf: body };
        let message = match kind {
            kind::REFUSED => Message::Refused { reason: r.text()? },
            kind::CYCLE_START => Message::CycleStart {
                generation: r.u64()?,
                device_size: r.u64()?,
                block_size: r.u32()?,
                base_root: r.opt_hash()?,
            },
            kind::TARGET_STATE => Message::TargetState {
                committed_generation: r.u64()?,
                root: r.hash()?,
                condition: match r.u8()? {
                    0 => TargetCondition::Consistent,
                    1 => TargetCondition::MidCycle,
                    2 => TargetCondition::Unknown,
                    other => return Err(FrameError::Invalid(format!("target condition {other}"))),
                },
            },
            kind::MANIFEST_REQUEST => Message::ManifestRequest,
            kind::REHASH => Message::Rehash,
            kind::KEEP_ALIVE => Message::KeepAlive,
            kind::OPEN => Message::Open { target: r.text()? },
            kind::PREFETCH => {
                let count = r.u32()?;
                if count == 0 || count > MAX_PREFETCH_RUNS {
                    return Err(FrameError::Invalid(format!("prefetch of {count} runs")));
                }
                // The runs' bytes are taken first: what is allocated follows what arrived.
                let bytes = r.bytes(count as usize * 16)?;
                let runs: Vec<(u64, u64)> = bytes
                    .chunks_exact(16)
                    .map(|run| {
                        let word =
                            |at: usize| u64::from_le_bytes(run[at..at + 8].try_into().unwrap());
                        (word(0), word(8))
                    })
                    .collect();
                if runs.iter().any(|&(_, block_count)| block_count == 0) {
                    return Err(FrameError::Invalid("empty prefetch run".into()));
                }
                Message::Prefetch { runs }
            }
            kind::MANIFEST_CHUNK => {
                let first_block = r.u64()?;
                let count = r.u32()?;
                if count == 0 || count > MAX_MANIFEST_CHUNK {
                    return Err(FrameError::Invalid(format!(
                        "manifest chunk of {count} hashes"
                    )));
                }
                Message::ManifestChunk {
                    first_block,
                    hashes: r.hashes(count)?,
                }
            }
            kind::MANIFEST_END => Message::ManifestEnd { root: r.hash()? },
            kind::EXTENT => {
                let first_block = r.u64()?;
                let raw_len = r.u32()?;
                if raw_len == 0 || raw_len > MAX_EXTENT_BYTES {
                    return Err(FrameError::Invalid(format!("extent of {raw_len} bytes")));
                }
                let compressed = r.flag()?;
                let count = r.u32()?;
                if count == 0 || count > MAX_EXTENT_BLOCKS {
                    return Err(FrameError::Invalid(format!("extent of {count} blocks")));
                }
                let hashes = r.hashes(count)?;
                Message::Extent {
                    first_block,
                    raw_len,
                    compressed,
                    hashes,
                    payload: r.payload(compressed, raw_len)?,
                }
            }
            kind::ZERO_RUN => {
                let first_block = r.u64()?;
                let block_count = r.u64()?;
                if block_count == 0 {
                    return Err(FrameError::Invalid("empty zero run".into()));
                }
                Message::ZeroRun {
                    first_block,
                    block_count,
                }
            }
            kind::CYCLE_END => Message::CycleEnd {
                generation: r.u64()?,
                root: r.hash()?,
            },
            kind::COMMITTED => Message::Committed {
                generation: r.u64()?,
                root: r.hash()?,
            },
            kind::REFINE => {
                let first_block = r.u64()?;
                let block_count = r.u32()?;
                if block_count == 0 || block_count > MAX_EXTENT_BLOCKS {
                    return Err(FrameError::Invalid(format!(
                        "refine of {block_count} blocks"
                    )));
                }
                let count = r.u32()?;
                if count == 0 || count > MAX_SUB_BLOCKS {
                    return Err(FrameError::Invalid(format!("refine of {count} sub-blocks")));
                }
                let bytes = r.bytes(count as usize * 8)?;
                Message::Refine {
                    first_block,
                    block_count,
                    sub_hashes: bytes
                        .chunks_exact(8)
                        .map(|c| c.try_into().unwrap())
                        .collect(),
                }
            }
            kind::REFINE_KEY => Message::RefineKey { key: r.hash()? },
            kind::REFINE_ANSWER => {
                let first_block = r.u64()?;
                let bitmap = r.bitmap()?;
                Message::RefineAnswer {
                    first_block,
                    bitmap,
                }
            }
            kind::PATCH => {
                let first_block = r.u64()?;
                let count = r.u32()?;
                if count == 0 || count > MAX_EXTENT_BLOCKS {
                    return Err(FrameError::Invalid(format!("patch of {count} blocks")));
                }
                let hashes = r.hashes(count)?;
                let bitmap = r.bitmap()?;
                let raw_len = r.u32()?;
                if raw_len > MAX_EXTENT_BYTES {
                    return Err(FrameError::Invalid(format!("patch of {raw_len} bytes")));
                }
                let compressed = r.flag()?;
                Message::Patch {
                    first_block,
                    hashes,
                    bitmap,
                    raw_len,
                    compressed,
                    payload: r.payload(compressed, raw_len)?,
                }
            }
            other => return Err(FrameError::UnknownType(other)),
        };
        if !r.buf.is_empty() {
            return Err(FrameError::Trailing(r.buf.len()));
        }
        Ok(message)
    }
}

/// The engines' ops travel as these messages; see [`Message::into_op`] for the way back.
impl From<Op> for Message {
    fn from(op: Op) -> Message {
        match op {
            Op::Data {
                first_block,
                hashes,
                payload,
            } => Message::Extent {
                first_block,
                raw_len: payload.raw_len,
                compressed: payload.compressed,
                hashes,
                payload: payload.bytes,
            },
            Op::Zero {
                first_block,
                block_count,
            } => Message::ZeroRun {
                first_block,
                block_count,
            },
            Op::RefineKey { key } => Message::RefineKey { key },
            Op::Refine {
                first_block,
                block_count,
                sub_hashes,
            } => Message::Refine {
                first_block,
                block_count,
                sub_hashes,
            },
            Op::Patch {
                first_block,
                hashes,
                bitmap,
                payload,
            } => Message::Patch {
                first_block,
                hashes,
                bitmap,
                raw_len: payload.raw_len,
                compressed: payload.compressed,
                payload: payload.bytes,
            },
        }
    }
}

impl From<RefineAnswer> for Message {
    fn from(answer: RefineAnswer) -> Message {
        Message::RefineAnswer {
            first_block: answer.first_block,
            bitmap: answer.bitmap,
        }
    }
}

impl Message {
    /// The op a data message carries; any other message comes back as the error.
    pub fn into_op(self) -> Result<Op, Message> {
        Ok(match self {
            Message::Extent {
                first_block,
                raw_len,
                compressed,
                hashes,
                payload,
            } => Op::Data {
                first_block,
                hashes,
                payload: Payload {
                    raw_len,
                    compressed,
                    bytes: payload,
                },
            },
            Message::ZeroRun {
                first_block,
                block_count,
            } => Op::Zero {
                first_block,
                block_count,
            },
            Message::RefineKey { key } => Op::RefineKey { key },
            Message::Refine {
                first_block,
                block_count,
                sub_hashes,
            } => Op::Refine {
                first_block,
                block_count,
                sub_hashes,
            },
            Message::Patch {
                first_block,
                hashes,
                bitmap,
                raw_len,
                compressed,
                payload,
            } => Op::Patch {
                first_block,
                hashes,
                bitmap,
                payload: Payload {
                    raw_len,
                    compressed,
                    bytes: payload,
                },
            },
            other => return Err(other),
        })
    }

    /// The refinement answer this message carries; any other message comes back as the error.
    pub fn into_answer(self) -> Result<RefineAnswer, Message> {
        match self {
            Message::RefineAnswer {
                first_block,
                bitmap,
            } => Ok(RefineAnswer {
                first_block,
                bitmap,
            }),
            other => Err(other),
        }
    }
}

fn truncate_text(text: &str) -> &str {
    let mut end = text.len().min(MAX_TEXT_LEN as usize);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_opt_hash(out: &mut Vec<u8>, hash: &Option<BlockHash>) {
    match hash {
        Some(h) => {
            out.push(1);
            out.extend_from_slice(h);
        }
        None => out.push(0),
    }
}

/// A bounds-checked cursor over a frame body.
struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn bytes(&mut self, n: usize) -> Result<&'a [u8], FrameError> {
        if self.buf.len() < n {
            return Err(FrameError::Truncated {
                needed: n,
                available: self.buf.len(),
            });
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, FrameError> {
        Ok(self.bytes(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, FrameError> {
        Ok(u32::from_le_bytes(self.bytes(4)?.try_into().unwrap()))
    }
    fn u64(&mut self) -> Result<u64, FrameError> {
        Ok(u64::from_le_bytes(self.bytes(8)?.try_into().unwrap()))
    }
    fn hash(&mut self) -> Result<BlockHash, FrameError> {
        Ok(self.bytes(32)?.try_into().unwrap())
    }
    fn flag(&mut self) -> Result<bool, FrameError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            other => Err(FrameError::Invalid(format!("flag byte {other}"))),
        }
    }
    /// A length-prefixed payload; an uncompressed one must be exactly `raw_len` bytes.
    fn payload(&mut self, compressed: bool, raw_len: u32) -> Result<Vec<u8>, FrameError> {
        let len = self.u32()?;
        if !compressed && len != raw_len {
            return Err(FrameError::Invalid(format!(
                "raw payload of {len} bytes, header says {raw_len}"
            )));
        }
        Ok(self.bytes(len as usize)?.to_vec())
    }
    fn bitmap(&mut self) -> Result<Vec<u8>, FrameError> {
        let len = self.u32()?;
        if len > MAX_SUB_BLOCKS.div_ceil(8) {
            return Err(FrameError::Invalid(format!("bitmap of {len} bytes")));
        }
        Ok(self.bytes(len as usize)?.to_vec())
    }
    fn opt_hash(&mut self) -> Result<Option<BlockHash>, FrameError> {
        match self.u8()? {
            0 => Ok(None),
            1 => Ok(Some(self.hash()?)),
            other => Err(FrameError::Invalid(format!("option flag {other}"))),
        }
    }
    fn hashes(&mut self, count: u32) -> Result<Vec<BlockHash>, FrameError> {
        let bytes = self.bytes(count as usize * 32)?;
        Ok(bytes
            .chunks_exact(32)
            .map(|c| c.try_into().unwrap())
            .collect())
    }
    fn text(&mut self) -> Result<String, FrameError> {
        let len = self.u32()?;
        if len > MAX_TEXT_LEN {
            return Err(FrameError::Invalid(format!("text of {len} bytes")));
        }
        let bytes = self.bytes(len as usize)?;
        // Each invalid byte becomes U+FFFD (3 bytes): cut back to what `encode` would send, so
        // a decoded text encodes and decodes to itself.
        Ok(truncate_text(&String::from_utf8_lossy(bytes)).to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn hash_strategy() -> impl Strategy<Value = BlockHash> {
        any::<[u8; 32]>()
    }

    fn message_strategy() -> impl Strategy<Value = Message> {
        prop_oneof![
            "[a-z ]{0,40}".prop_map(|reason| Message::Refused { reason }),
            (
                any::<u64>(),
                any::<u64>(),
                any::<u32>(),
                proptest::option::of(hash_strategy())
            )
                .prop_map(|(generation, device_size, block_size, base_root)| {
                    Message::CycleStart {
                        generation,
                        device_size,
                        block_size,
                        base_root,
                    }
                }),
            (any::<u64>(), hash_strategy(), 0u8..3).prop_map(|(committed_generation, root, c)| {
                Message::TargetState {
                    committed_generation,
                    root,
                    condition: [
                        TargetCondition::Consistent,
                        TargetCondition::MidCycle,
                        TargetCondition::Unknown,
                    ][c as usize],
                }
            }),
            Just(Message::ManifestRequest),
            Just(Message::Rehash),
            Just(Message::KeepAlive),
            "[a-z0-9._-]{1,64}".prop_map(|target| Message::Open { target }),
            proptest::collection::vec((any::<u64>(), 1u64..), 1..20)
                .prop_map(|runs| Message::Prefetch { runs }),
            (
                any::<u64>(),
                proptest::collection::vec(hash_strategy(), 1..20)
            )
                .prop_map(|(first_block, hashes)| Message::ManifestChunk {
                    first_block,
                    hashes
                }),
            hash_strategy().prop_map(|root| Message::ManifestEnd { root }),
            (
                any::<u64>(),
                proptest::collection::vec(hash_strategy(), 1..5),
                proptest::collection::vec(any::<u8>(), 1..300),
                any::<bool>()
            )
                .prop_map(|(first_block, hashes, payload, compressed)| {
                    Message::Extent {
                        first_block,
                        raw_len: if compressed {
                            4096
                        } else {
                            payload.len() as u32
                        },
                        compressed,
                        hashes,
                        payload,
                    }
                }),
            (any::<u64>(), 1u64..).prop_map(|(first_block, block_count)| Message::ZeroRun {
                first_block,
                block_count
            }),
            (any::<u64>(), hash_strategy())
                .prop_map(|(generation, root)| Message::CycleEnd { generation, root }),
            (any::<u64>(), hash_strategy())
                .prop_map(|(generation, root)| Message::Committed { generation, root }),
        ]
    }

    proptest! {
        #[test]
        fn round_trip(msg in message_strategy()) {
            let mut buf = Vec::new();
            msg.encode(&mut buf);
            let len = u32::from_le_bytes(buf[..4].try_into().unwrap());
            prop_assert_eq!(len as usize, buf.len() - 4);
            Message::check_len(len).unwrap();
            prop_assert_eq!(Message::decode(&buf[4..]).unwrap(), msg);
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = Message::decode(&bytes);
        }

        #[test]
        fn truncation_is_an_error(msg in message_strategy(), cut in 1usize..64) {
            let mut buf = Vec::new();
            msg.encode(&mut buf);
            let body = &buf[4..];
            if cut < body.len() {
                prop_assert!(Message::decode(&body[..body.len() - cut]).is_err());
            }
        }
    }

    #[test]
    fn a_text_of_invalid_utf8_decodes_to_what_encodes_and_decodes_to_itself() {
        // Found by the fuzzer (fuzz/findings/frame): 1366 invalid bytes became 4098 bytes of
        // U+FFFD, which `encode` cut; decoding again gave a shorter reason.
        let mut body = vec![1u8];
        body.extend_from_slice(&1366u32.to_le_bytes());
        body.extend(std::iter::repeat_n(0xFF, 1366));
        let decoded = Message::decode(&body).unwrap();
        let mut frame = Vec::new();
        decoded.encode(&mut frame);
        assert_eq!(Message::decode(&frame[4..]).unwrap(), decoded);
    }

    #[test]
    fn preamble() {
        let p = Preamble::ours();
        assert_eq!(Preamble::decode(&p.encode()).unwrap(), p);
        let mut bad = p.encode();
        bad[0] = b'X';
        assert_eq!(Preamble::decode(&bad), Err(FrameError::NotBlkmirror));
        assert!(Message::check_len(MAX_FRAME_LEN + 1).is_err());
        assert!(Message::check_len(0).is_err());
    }
}
