//! Strategies for the decoder properties: valid messages of each of the 14 types within the
//! decoder's bounds (sometimes at them), small manifests, and byte edits (flip, insert,
//! delete, overwrite with a length-like value) to apply to valid encodings.

use proptest::prelude::*;
use proptest::sample::Index;
use proptest::strategy::Union;

use blkmirror::blockdiff::manifest::{BlockHash, Manifest};
use blkmirror::transport::frame::{
    Message, TargetCondition, MAX_EXTENT_BLOCKS, MAX_EXTENT_BYTES, MAX_FRAME_LEN,
    MAX_MANIFEST_CHUNK, MAX_PREFETCH_RUNS, MAX_SUB_BLOCKS, MAX_TEXT_LEN,
};

/// A count in `1..=max`: mostly small; when `big`, sometimes exactly `max` or anywhere.
pub fn count(max: u32, big: bool) -> BoxedStrategy<u32> {
    if big {
        prop_oneof![
            16 => 1..=max.min(16),
            1 => Just(max),
            1 => 1..=max,
        ]
        .boxed()
    } else {
        (1..=max.min(16)).boxed()
    }
}

/// A length in `0..=max`: mostly small, sometimes 0; when `big`, sometimes `max` or anywhere.
pub fn length(max: u32, big: bool) -> BoxedStrategy<u32> {
    if big {
        prop_oneof![
            16 => 0..=max.min(300),
            1 => Just(0),
            1 => Just(max),
            1 => 0..=max,
        ]
        .boxed()
    } else {
        prop_oneof![8 => 0..=max.min(300), 1 => Just(0)].boxed()
    }
}

/// SplitMix64 from `seed`: cheap bulk values, so that a case at the bounds (2 MiB of hashes,
/// 16 MiB of payload) costs milliseconds to generate, not proptest's per-element machinery.
pub fn bulk_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        out.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    out.truncate(len);
    out
}

pub fn bulk<const N: usize>(seed: u64, count: u32) -> Vec<[u8; N]> {
    bulk_bytes(seed, count as usize * N)
        .chunks_exact(N)
        .map(|c| c.try_into().unwrap())
        .collect()
}

/// A payload of `len` bytes: a random head and a repeated byte (what a payload holds does
/// not matter to the frame layer; this keeps 16 MiB cases cheap).
pub fn payload(seed: u64, len: u32) -> Vec<u8> {
    let mut v = vec![seed as u8; len as usize];
    let head = v.len().min(64);
    v[..head].copy_from_slice(&bulk_bytes(seed, head));
    v
}

pub fn hash() -> impl Strategy<Value = BlockHash> {
    any::<[u8; 32]>()
}

/// A valid UTF-8 reason of at most `MAX_TEXT_LEN` bytes (longer ones are cut by the encoder:
/// see `refused_text_longer_than_the_limit_is_cut_at_a_char_boundary`).
pub fn reason() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => proptest::collection::vec(any::<char>(), 0..40),
        1 => proptest::collection::vec(any::<char>(), 0..2000),
    ]
    .prop_map(|chars| {
        let mut text = String::new();
        for c in chars {
            if text.len() + c.len_utf8() > MAX_TEXT_LEN as usize {
                break;
            }
            text.push(c);
        }
        text
    })
}

pub fn condition() -> impl Strategy<Value = TargetCondition> {
    prop_oneof![
        Just(TargetCondition::Consistent),
        Just(TargetCondition::MidCycle),
        Just(TargetCondition::Unknown),
    ]
}

/// A valid message of wire type `kind` (1..=18), within every bound the decoder checks; with
/// `big`, sizes reach those bounds now and then.
pub fn message(kind: u8, big: bool) -> BoxedStrategy<Message> {
    match kind {
        1 => reason()
            .prop_map(|reason| Message::Refused { reason })
            .boxed(),
        2 => (
            any::<u64>(),
            any::<u64>(),
            any::<u32>(),
            proptest::option::of(hash()),
        )
            .prop_map(
                |(generation, device_size, block_size, base_root)| Message::CycleStart {
                    generation,
                    device_size,
                    block_size,
                    base_root,
                },
            )
            .boxed(),
        3 => (any::<u64>(), hash(), condition())
            .prop_map(
                |(committed_generation, root, condition)| Message::TargetState {
                    committed_generation,
                    root,
                    condition,
                },
            )
            .boxed(),
        4 => Just(Message::ManifestRequest).boxed(),
        5 => (any::<u64>(), count(MAX_MANIFEST_CHUNK, big), any::<u64>())
            .prop_map(|(first_block, n, seed)| Message::ManifestChunk {
                first_block,
                hashes: bulk(seed, n),
            })
            .boxed(),
        6 => hash()
            .prop_map(|root| Message::ManifestEnd { root })
            .boxed(),
        7 => (
            any::<u64>(),
            count(MAX_EXTENT_BYTES, big),
            any::<bool>(),
            count(MAX_EXTENT_BLOCKS, big),
            length(MAX_EXTENT_BYTES, big),
            any::<u64>(),
        )
            .prop_map(
                |(first_block, raw_len, compressed, n, compressed_len, seed)| Message::Extent {
                    first_block,
                    raw_len,
                    compressed,
                    hashes: bulk(seed, n),
                    // Uncompressed: exactly raw_len bytes. Compressed: any length.
                    payload: payload(seed, if compressed { compressed_len } else { raw_len }),
                },
            )
            .boxed(),
        8 => (any::<u64>(), 1u64..)
            .prop_map(|(first_block, block_count)| Message::ZeroRun {
                first_block,
                block_count,
            })
            .boxed(),
        9 => (any::<u64>(), hash())
            .prop_map(|(generation, root)| Message::CycleEnd { generation, root })
            .boxed(),
        10 => (any::<u64>(), hash())
            .prop_map(|(generation, root)| Message::Committed { generation, root })
            .boxed(),
        11 => (
            any::<u64>(),
            count(MAX_EXTENT_BLOCKS, big),
            count(MAX_SUB_BLOCKS, big),
            any::<u64>(),
        )
            .prop_map(|(first_block, block_count, n, seed)| Message::Refine {
                first_block,
                block_count,
                sub_hashes: bulk(seed, n),
            })
            .boxed(),
        12 => (
            any::<u64>(),
            length(MAX_SUB_BLOCKS.div_ceil(8), big),
            any::<u64>(),
        )
            .prop_map(|(first_block, n, seed)| Message::RefineAnswer {
                first_block,
                bitmap: bulk_bytes(seed, n as usize),
            })
            .boxed(),
        13 => (
            (any::<u64>(), count(MAX_EXTENT_BLOCKS, big)),
            length(MAX_SUB_BLOCKS.div_ceil(8), big),
            length(MAX_EXTENT_BYTES, big),
            any::<bool>(),
            length(MAX_EXTENT_BYTES, big),
            any::<u64>(),
        )
            .prop_map(
                |((first_block, n), bitmap_len, raw_len, compressed, compressed_len, seed)| {
                    Message::Patch {
                        first_block,
                        hashes: bulk(seed, n),
                        bitmap: bulk_bytes(seed ^ 1, bitmap_len as usize),
                        raw_len,
                        compressed,
                        payload: payload(seed, if compressed { compressed_len } else { raw_len }),
                    }
                },
            )
            .boxed(),
        14 => hash().prop_map(|key| Message::RefineKey { key }).boxed(),
        15 => Just(Message::Rehash).boxed(),
        16 => Just(Message::KeepAlive).boxed(),
        17 => "[a-z0-9._-]{1,64}"
            .prop_map(|target| Message::Open { target })
            .boxed(),
        18 => (count(MAX_PREFETCH_RUNS, big), any::<u64>())
            .prop_map(|(n, seed)| Message::Prefetch {
                runs: (0..n as u64)
                    .map(|i| (seed.wrapping_add(i * 5), (seed >> 40) % 4096 + 1))
                    .collect(),
            })
            .boxed(),
        other => panic!("no message type {other}"),
    }
}

/// Any valid message, every type equally likely, sizes sometimes at the bounds.
pub fn any_message() -> impl Strategy<Value = Message> {
    Union::new((1..=18).map(|kind| message(kind, true)))
}

/// Small valid messages (a few KiB at most), for the tests that edit them byte by byte.
pub fn small_message() -> impl Strategy<Value = Message> {
    Union::new((1..=18).map(|kind| message(kind, false)))
}

pub fn encoded(message: &Message) -> Vec<u8> {
    let mut buf = Vec::new();
    message.encode(&mut buf);
    buf
}

/// One edit of a byte string.
#[derive(Clone, Debug)]
pub enum Edit {
    /// XOR the byte at the index with a non-zero mask.
    Flip(Index, u8),
    Insert(Index, u8),
    Delete(Index),
    /// Overwrite 4 bytes (LE) at the index with a value a length field might hold.
    Overwrite(Index, u32),
}

pub fn edits() -> impl Strategy<Value = Vec<Edit>> {
    let interesting = prop_oneof![
        Just(0u32),
        Just(1),
        Just(MAX_MANIFEST_CHUNK),
        Just(MAX_MANIFEST_CHUNK + 1),
        Just(MAX_EXTENT_BLOCKS),
        Just(MAX_EXTENT_BYTES),
        Just(MAX_EXTENT_BYTES + 1),
        Just(MAX_TEXT_LEN),
        Just(MAX_FRAME_LEN),
        Just(u32::MAX),
        any::<u32>(),
    ];
    let edit = prop_oneof![
        (any::<Index>(), 1u8..).prop_map(|(i, mask)| Edit::Flip(i, mask)),
        (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Edit::Insert(i, b)),
        any::<Index>().prop_map(Edit::Delete),
        (any::<Index>(), interesting).prop_map(|(i, v)| Edit::Overwrite(i, v)),
    ];
    proptest::collection::vec(edit, 1..6)
}

pub fn apply(mut bytes: Vec<u8>, edits: &[Edit]) -> Vec<u8> {
    for edit in edits {
        match *edit {
            Edit::Flip(i, mask) if !bytes.is_empty() => {
                let at = i.index(bytes.len());
                bytes[at] ^= mask;
            }
            Edit::Insert(i, b) => {
                let at = i.index(bytes.len() + 1);
                bytes.insert(at, b);
            }
            Edit::Delete(i) if !bytes.is_empty() => {
                let at = i.index(bytes.len());
                bytes.remove(at);
            }
            Edit::Overwrite(i, v) if bytes.len() >= 4 => {
                let at = i.index(bytes.len() - 3);
                bytes[at..at + 4].copy_from_slice(&v.to_le_bytes());
            }
            _ => {}
        }
    }
    bytes
}

/// A small valid manifest: any block size, up to 64 blocks, any generation and identity.
pub fn manifest() -> impl Strategy<Value = Manifest> {
    (
        12u32..=24,
        0u64..=64,
        any::<u64>(),
        any::<u64>(),
        any::<[u8; 32]>(),
    )
        .prop_flat_map(|(shift, blocks, generation, seed, identity)| {
            let block_size = 1u32 << shift;
            let max = blocks * block_size as u64;
            let min = max.saturating_sub(block_size as u64 - 1);
            (min..=max).prop_map(move |device_size| {
                let count = device_size.div_ceil(block_size as u64) as u32;
                let mut m = Manifest::from_hashes(block_size, device_size, bulk(seed, count));
                m.generation = generation;
                m.source_identity = identity;
                m
            })
        })
}

pub fn manifest_bytes(manifest: &Manifest) -> Vec<u8> {
    let mut buf = Vec::new();
    manifest.encode(&mut buf).unwrap();
    buf
}
