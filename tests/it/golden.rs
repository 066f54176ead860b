//! Golden fixtures: the bytes blkmirror writes today, kept in `tests/fixtures/` and checked
//! both ways. For each fixture, encoding today's value gives exactly the fixture's bytes, and
//! decoding the fixture gives the value back.
//!
//! - `manifest-v1.bin`: a version-1 manifest (`Manifest::encode`): 5 blocks of 4096 bytes, the
//!   last one short, generation 7, a source identity.
//! - `protocol-v1/00-preamble.bin`: our 20-byte `Preamble` (`00-preamble-cap-refine-only.bin`:
//!   the first builds' one, which must still decode); `protocol-v1/NN-name.bin`: one
//!   whole frame (length prefix, type byte, body) of every `Message` type, `NN` being its type
//!   byte on the wire (`docs/protocol.md` numbers them the same way).
//! - `state-v1/*.json`: a sender status and two receiver states (consistent, interrupted) as
//!   `blkmirror::state::write_json` writes them (pretty JSON and a newline). Their Rust types
//!   have no `PartialEq`: the fixture must deserialize to the expected values (compared by
//!   their derived `Debug`, which shows every field), and serializing those values must give
//!   the fixture's bytes.
//!
//! **A format change must fail these tests.** That is their purpose: when one fails, either
//! the change was a mistake, or it is a new format version: then add fixtures for the new
//! version next to the old ones (`manifest-v2.bin`, `protocol-v2/`...) and keep the old files,
//! which must still decode (or be refused with the documented version error) as the format
//! documents say. Never regenerate an old version's fixtures to make a test pass.
//!
//! To (re)generate deliberately, and only then: `BLKMIRROR_WRITE_FIXTURES=1 cargo nextest run
//! golden::` (or `BLKMIRROR_WRITE_FIXTURES=1 cargo test --test it golden::`) writes every
//! fixture from today's encoders before checking it; review the diff with `git diff --stat
//! tests/fixtures` and `xxd`. Without the variable nothing is ever written.

use std::fs;
use std::path::{Path, PathBuf};

use blkmirror::blockdiff::manifest::{hash_block, BlockHash, Manifest};
use blkmirror::state::{write_json, Condition, ReceiverState, SenderStatus};
use blkmirror::transport::frame::{Message, Preamble, TargetCondition, CAP_REFINE, PREAMBLE_LEN};

use crate::support::Scratch;

/// Set to `1` to write the fixtures from today's encoders (see the module doc).
const WRITE_ENV: &str = "BLKMIRROR_WRITE_FIXTURES";

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn writing() -> bool {
    std::env::var_os(WRITE_ENV).is_some_and(|v| v == "1")
}

/// Checks that `actual` (today's encoding) is exactly the fixture `name`, after writing it
/// there when [`WRITE_ENV`] is set. Returns the fixture's bytes.
#[track_caller]
fn check_fixture(name: &str, actual: &[u8]) -> Vec<u8> {
    let path = fixtures().join(name);
    if writing() {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, actual).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        eprintln!("wrote {}", path.display());
    }
    let golden = fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "fixture {}: {e} (new fixtures are written with {WRITE_ENV}=1, see golden.rs)",
            path.display()
        )
    });
    if golden != actual {
        let at = golden
            .iter()
            .zip(actual)
            .position(|(a, b)| a != b)
            .unwrap_or(golden.len().min(actual.len()));
        panic!(
            "today's encoding differs from the fixture {name} at byte {at} (fixture {} bytes, \
             today {} bytes): the format changed. If that is intended, it is a new format \
             version: add new fixtures and keep this one (see golden.rs).\n\
             fixture: {}\ntoday:   {}",
            golden.len(),
            actual.len(),
            hex_around(&golden, at),
            hex_around(actual, at)
        );
    }
    golden
}

/// Up to 16 bytes from `at - 8`, in hex, for failure messages.
fn hex_around(bytes: &[u8], at: usize) -> String {
    let start = at.saturating_sub(8).min(bytes.len());
    let end = (start + 16).min(bytes.len());
    format!("[{start}..{end}] {}", hex::encode(&bytes[start..end]))
}

/// Deterministic bytes: `len` bytes of a simple sequence seeded by `seed`.
fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| {
            seed.wrapping_mul(31)
                .wrapping_add((i as u8).wrapping_mul(7))
                ^ (i >> 8) as u8
        })
        .collect()
}

fn hash_of(seed: u8) -> BlockHash {
    pattern(seed, 32).try_into().unwrap()
}

// ---------------------------------------------------------------------------------------------
// The values (shared with the decoder property tests as valid inputs to mutate)
// ---------------------------------------------------------------------------------------------

/// The fixture's device: four 4096-byte blocks and a 100-byte last block.
const DEVICE_SIZE: u64 = 4 * 4096 + 100;
const BLOCK_SIZE: u32 = 4096;

/// The fixture manifest: 5 blocks of 4096 bytes (the last one 100 bytes), each block's hash
/// that of a deterministic content, generation 7, the identity `file:/srv/vm/disk.img`.
pub fn sample_manifest() -> Manifest {
    let hashes = (0..5u8)
        .map(|i| {
            let len = if i == 4 { 100 } else { 4096 };
            hash_block(&pattern(i, len))
        })
        .collect();
    let mut manifest = Manifest::from_hashes(BLOCK_SIZE, DEVICE_SIZE, hashes);
    manifest.generation = 7;
    manifest.source_identity = *blake3::hash(b"file:/srv/vm/disk.img").as_bytes();
    manifest
}

/// The fixture sender status: generation 7 of `/srv/vm/disk.img` over TLS.
pub fn sample_sender_status() -> SenderStatus {
    let root = hex::encode(sample_manifest().root());
    // `last_cycle` is the cycle report as JSON: an open object that gains fields as the
    // report does. The fixture holds the first version's fields.
    let report = serde_json::json!({
        "generation": 7,
        "source": "/srv/vm/disk.img",
        "dest": "tls://backup.example:7300",
        "device_size": DEVICE_SIZE,
        "block_size": BLOCK_SIZE,
        "blocks_scanned": 5,
        "blocks_changed": 2,
        "blocks_zero": 1,
        "bytes_read": DEVICE_SIZE,
        "bytes_changed": 4196,
        "blocks_refined": 0,
        "bytes_saved_by_refinement": 0,
        "bytes_payload": 1678,
        "bytes_sent": 2150,
        "compression_ratio": 2.5,
        "base": "sender",
        "root": root.clone(),
        "duration_ms": {
            "snapshot": 12,
            "handshake": 3,
            "scan_and_send": 41,
            "commit": 9,
            "total": 65,
        },
    });
    SenderStatus {
        source: "/srv/vm/disk.img".into(),
        source_identity: "file:/srv/vm/disk.img".into(),
        dest: "tls://backup.example:7300".into(),
        generation: 7,
        root,
        committed_at: 1_767_225_600,
        last_cycle: report,
        snapshot_at: None,
        last_failure: None,
        consecutive_failures: 0,
        next_cycle_at: None,
    }
}

/// The fixture receiver state after committing generation 7.
pub fn sample_receiver_state_consistent() -> ReceiverState {
    ReceiverState {
        format: 1,
        target: "/srv/mirror/disk.img".into(),
        condition: Condition::Consistent,
        committed_generation: 7,
        committed_root: hex::encode(sample_manifest().root()),
        applying_generation: None,
        block_size: BLOCK_SIZE,
        device_size: DEVICE_SIZE,
        updated_at: 1_767_225_601,
        committed_at: Some(1_767_225_601),
        last_cycle_bytes_written: 4196,
        last_error: None,
        last_scrub: None,
        target_fingerprint: None,
    }
}

/// The fixture receiver state after an aborted generation 8 that had written blocks.
pub fn sample_receiver_state_interrupted() -> ReceiverState {
    ReceiverState {
        condition: Condition::Interrupted,
        applying_generation: Some(8),
        updated_at: 1_767_225_700,
        last_cycle_bytes_written: 8192,
        last_error: Some("block hash mismatch at byte 8192".into()),
        ..sample_receiver_state_consistent()
    }
}

/// The type byte of each message on the wire. Exhaustive: a new message type does not
/// compile until it is given a fixture here (and a strategy in `decoders`).
pub fn type_byte(message: &Message) -> u8 {
    match message {
        Message::Refused { .. } => 1,
        Message::CycleStart { .. } => 2,
        Message::TargetState { .. } => 3,
        Message::ManifestRequest => 4,
        Message::ManifestChunk { .. } => 5,
        Message::ManifestEnd { .. } => 6,
        Message::Extent { .. } => 7,
        Message::ZeroRun { .. } => 8,
        Message::CycleEnd { .. } => 9,
        Message::Committed { .. } => 10,
        Message::Refine { .. } => 11,
        Message::RefineAnswer { .. } => 12,
        Message::Patch { .. } => 13,
        Message::RefineKey { .. } => 14,
        Message::Rehash => 15,
        Message::KeepAlive => 16,
        Message::Open { .. } => 17,
        Message::Prefetch { .. } => 18,
    }
}

/// One frame of every message type, with its fixture's name: a plausible cycle over the
/// fixture device (4 KiB blocks; the refinement messages as they would be for 8 KiB blocks).
pub fn sample_frames() -> Vec<(&'static str, Message)> {
    let root = sample_manifest().root();
    let last_block = pattern(4, 100);
    vec![
        (
            "01-refused",
            Message::Refused {
                reason: "peer speaks protocol version 2; this blkmirror speaks version 1".into(),
            },
        ),
        (
            "02-cycle-start",
            Message::CycleStart {
                generation: 7,
                device_size: DEVICE_SIZE,
                block_size: BLOCK_SIZE,
                base_root: Some(hash_of(60)),
            },
        ),
        (
            "03-target-state",
            Message::TargetState {
                committed_generation: 6,
                root: hash_of(61),
                condition: TargetCondition::MidCycle,
            },
        ),
        ("04-manifest-request", Message::ManifestRequest),
        (
            "05-manifest-chunk",
            Message::ManifestChunk {
                first_block: 2,
                hashes: vec![hash_of(62), hash_of(63), hash_of(64)],
            },
        ),
        (
            "06-manifest-end",
            Message::ManifestEnd { root: hash_of(65) },
        ),
        (
            "07-extent",
            Message::Extent {
                first_block: 4,
                raw_len: 100,
                compressed: false,
                hashes: vec![hash_block(&last_block)],
                payload: last_block,
            },
        ),
        (
            "08-zero-run",
            Message::ZeroRun {
                first_block: 1,
                block_count: 2,
            },
        ),
        (
            "09-cycle-end",
            Message::CycleEnd {
                generation: 7,
                root,
            },
        ),
        (
            "10-committed",
            Message::Committed {
                generation: 7,
                root,
            },
        ),
        (
            "11-refine",
            Message::Refine {
                first_block: 3,
                block_count: 1,
                sub_hashes: vec![
                    pattern(66, 8).try_into().unwrap(),
                    pattern(67, 8).try_into().unwrap(),
                ],
            },
        ),
        (
            "12-refine-answer",
            Message::RefineAnswer {
                first_block: 3,
                bitmap: vec![0b10],
            },
        ),
        (
            "13-patch",
            Message::Patch {
                first_block: 3,
                hashes: vec![hash_of(68)],
                bitmap: vec![0b10],
                raw_len: 4096,
                compressed: true,
                // The frame layer does not look inside a compressed payload.
                payload: pattern(69, 48),
            },
        ),
        ("14-refine-key", Message::RefineKey { key: hash_of(70) }),
        ("15-rehash", Message::Rehash),
        ("16-keep-alive", Message::KeepAlive),
        (
            "17-open",
            Message::Open {
                target: "web-1".into(),
            },
        ),
        (
            "18-prefetch",
            Message::Prefetch {
                runs: vec![(0, 1), (2, 3)],
            },
        ),
    ]
}

// ---------------------------------------------------------------------------------------------
// The checks
// ---------------------------------------------------------------------------------------------

#[test]
fn manifest_v1_matches_its_fixture() {
    let manifest = sample_manifest();
    let mut encoded = Vec::new();
    manifest.encode(&mut encoded).unwrap();
    let golden = check_fixture("manifest-v1.bin", &encoded);
    // 104-byte header, one 32-byte hash per block, 32-byte checksum.
    assert_eq!(golden.len(), 104 + 5 * 32 + 32);
    let decoded = Manifest::decode(&mut &golden[..], golden.len() as u64).unwrap();
    assert_eq!(decoded, manifest);
    assert_eq!(
        (decoded.block_size, decoded.device_size, decoded.generation),
        (4096, 4 * 4096 + 100, 7)
    );
    assert_eq!(decoded.block_count(), 5);
}

#[test]
fn preamble_matches_its_fixture() {
    let golden = check_fixture("protocol-v1/00-preamble.bin", &Preamble::ours().encode());
    let bytes: [u8; PREAMBLE_LEN] = golden.as_slice().try_into().unwrap();
    let decoded = Preamble::decode(&bytes).unwrap();
    assert_eq!(decoded, Preamble::ours());
    assert_eq!(decoded.version, 1);
    // Capabilities are added without a new version: a preamble of the first builds, which
    // offered only CAP_REFINE, still decodes as version 1.
    let older =
        std::fs::read(fixtures().join("protocol-v1/00-preamble-cap-refine-only.bin")).unwrap();
    let older = Preamble::decode(older.as_slice().try_into().unwrap()).unwrap();
    assert_eq!((older.version, older.capabilities), (1, CAP_REFINE));
}

#[test]
fn one_frame_of_every_message_type_matches_its_fixture() {
    let frames = sample_frames();
    let mut types: Vec<u8> = frames.iter().map(|(_, m)| type_byte(m)).collect();
    types.sort_unstable();
    assert_eq!(types, (1..=18).collect::<Vec<u8>>(), "one frame per type");
    for (name, message) in frames {
        let mut encoded = Vec::new();
        message.encode(&mut encoded);
        let golden = check_fixture(&format!("protocol-v1/{name}.bin"), &encoded);
        // The whole frame: u32 length (LE) of what follows, type byte, body.
        let len = u32::from_le_bytes(golden[..4].try_into().unwrap());
        assert_eq!(len as usize, golden.len() - 4, "{name}: length prefix");
        Message::check_len(len).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(
            golden[4],
            name[..2].parse::<u8>().unwrap(),
            "{name}: type byte"
        );
        let decoded = Message::decode(&golden[4..]).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(decoded, message, "{name}: decoded");
    }
}

/// `write_json`'s bytes for `value` (the real atomic write, into a scratch dir).
fn written_json<T: serde::Serialize>(value: &T) -> Vec<u8> {
    let t = Scratch::new("golden-json");
    let path = t.path("record.json");
    write_json(&path, value).unwrap();
    fs::read(&path).unwrap()
}

/// Serialized as `write_json` does (pretty JSON and a newline), in memory.
fn pretty_json<T: serde::Serialize>(value: &T) -> Vec<u8> {
    let mut bytes = serde_json::to_vec_pretty(value).unwrap();
    bytes.push(b'\n');
    bytes
}

#[test]
fn sender_status_matches_its_fixture() {
    let expected = sample_sender_status();
    let golden = check_fixture("state-v1/sender-status.json", &written_json(&expected));
    let decoded: SenderStatus = serde_json::from_slice(&golden).unwrap();
    assert_eq!(format!("{decoded:#?}"), format!("{expected:#?}"));
    assert_eq!(pretty_json(&decoded), golden, "re-serialized");
    assert_eq!(decoded.last_cycle["duration_ms"]["total"], 65);
}

#[test]
fn receiver_states_match_their_fixtures() {
    for (name, expected) in [
        ("consistent", sample_receiver_state_consistent()),
        ("interrupted", sample_receiver_state_interrupted()),
    ] {
        let file = format!("state-v1/receiver-state-{name}.json");
        let golden = check_fixture(&file, &written_json(&expected));
        let decoded: ReceiverState = serde_json::from_slice(&golden).unwrap();
        assert_eq!(format!("{decoded:#?}"), format!("{expected:#?}"), "{file}");
        assert_eq!(pretty_json(&decoded), golden, "{file}: re-serialized");
    }
}
