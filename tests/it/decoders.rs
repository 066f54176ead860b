//! Property tests of the decoders, through the public API:
//!
//! - every one of the 18 message types round-trips (encode then decode gives the value back,
//!   the length prefix is the body's length, `Message::check_len` accepts it), over strategies
//!   that respect the decoder's bounds and reach them (`MAX_EXTENT_BYTES`,
//!   `MAX_EXTENT_BLOCKS`, `MAX_SUB_BLOCKS`, `MAX_MANIFEST_CHUNK`, `MAX_TEXT_LEN`, raw payload
//!   length equal to `raw_len`, non-empty counts); one past each bound is refused;
//! - any proper prefix of an encoded frame is an error;
//! - `Message::decode`, `Preamble::decode`, `Manifest::decode` and the JSON state records
//!   never panic on arbitrary bytes, nor on valid encodings with bytes flipped, inserted,
//!   deleted or overwritten;
//! - the binary decoders never make a single allocation larger than a bound derived from the
//!   number of bytes they were given, whatever sizes those bytes claim (measured with the
//!   test binary's counting allocator, `support::alloc`).

mod strategy;

use proptest::prelude::*;
use proptest::sample::Index;

use blkmirror::blockdiff::manifest::Manifest;
use blkmirror::state::{ReceiverState, SenderStatus};
use blkmirror::transport::frame::{
    FrameError, Message, Preamble, TargetCondition, MAGIC, MAX_EXTENT_BLOCKS, MAX_EXTENT_BYTES,
    MAX_FRAME_LEN, MAX_MANIFEST_CHUNK, MAX_PREFETCH_RUNS, MAX_SUB_BLOCKS, MAX_TEXT_LEN,
    PREAMBLE_LEN,
};

use crate::golden::{
    sample_frames, sample_manifest, sample_receiver_state_interrupted, sample_sender_status,
    type_byte,
};
use crate::support::alloc::largest_allocation;
use strategy::{
    any_message, apply, bulk, encoded, manifest, manifest_bytes, payload, small_message,
};

// ---------------------------------------------------------------------------------------------
// Allocation bounds
// ---------------------------------------------------------------------------------------------

/// Room for the few short strings a decoder formats into its errors (e.g. "raw payload of
/// 4294967295 bytes, header says 4294967295"), which are allocated whatever the input size.
const ERROR_TEXT_SLACK: usize = 256;

/// The largest single allocation `Message::decode` may make for a body of `n` bytes.
///
/// Every vector it returns (hashes, sub-hashes, bitmap, payload) is copied out of the body
/// after the body was checked to hold it, so it is at most `n` bytes: a count that claims more
/// than the body holds fails before anything is allocated for it. The one exception is the
/// text of `Refused`, decoded lossily: each invalid byte becomes U+FFFD (3 bytes), so at most
/// `3 * MAX_TEXT_LEN` bytes of text, in a `String` that starts at the input's length and grows
/// by doubling: at most `4 * min(n, MAX_TEXT_LEN)`. Plus [`ERROR_TEXT_SLACK`].
fn message_bound(n: usize) -> usize {
    n.max(4 * n.min(MAX_TEXT_LEN as usize)) + ERROR_TEXT_SLACK
}

/// The largest single allocation `Manifest::decode(reader, available)` may make.
///
/// The only allocation that depends on the input is the hash table, `count * 32` bytes, made
/// after checking that `available` is exactly header + table + checksum: less than
/// `available`. Plus [`ERROR_TEXT_SLACK`] for its error messages.
fn manifest_bound(available: u64) -> usize {
    available as usize + ERROR_TEXT_SLACK
}

/// Decodes `body` while measuring; asserts the allocation bound, returns the result.
fn decode_measured(body: &[u8]) -> Result<Message, TestCaseError> {
    let (result, largest) = largest_allocation(|| Message::decode(body));
    prop_assert!(
        largest <= message_bound(body.len()),
        "Message::decode of {} bytes made a {largest}-byte allocation (bound {}): {:?}",
        body.len(),
        message_bound(body.len()),
        result.as_ref().map(Message::name)
    );
    result.map_err(|e| TestCaseError::fail(e.to_string()))
}

/// Decodes `body` while measuring and asserts the bound; the result may be an error.
fn check_decode(body: &[u8]) -> Result<Result<Message, FrameError>, TestCaseError> {
    let (result, largest) = largest_allocation(|| Message::decode(body));
    prop_assert!(
        largest <= message_bound(body.len()),
        "Message::decode of {} bytes made a {largest}-byte allocation (bound {}): {:?}",
        body.len(),
        message_bound(body.len()),
        result.as_ref().map(Message::name)
    );
    Ok(result)
}

/// Decodes a manifest from `bytes` told `available` while measuring; asserts the bound.
fn check_manifest(bytes: &[u8], available: u64) -> Result<(), TestCaseError> {
    let (result, largest) = largest_allocation(|| Manifest::decode(&mut &bytes[..], available));
    prop_assert!(
        largest <= manifest_bound(available),
        "Manifest::decode of {} bytes (available {available}) made a {largest}-byte \
         allocation: {:?}",
        bytes.len(),
        result.map(|m| m.block_count())
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------------------------

proptest! {
    #[test]
    fn every_message_type_round_trips(msg in any_message()) {
        let buf = encoded(&msg);
        let len = u32::from_le_bytes(buf[..4].try_into().unwrap());
        prop_assert_eq!(len as usize, buf.len() - 4, "length prefix");
        prop_assert!(Message::check_len(len).is_ok(), "check_len refuses {}", len);
        prop_assert_eq!(buf[4], type_byte(&msg), "type byte");
        let decoded = decode_measured(&buf[4..])?;
        prop_assert!(decoded == msg, "{} did not round-trip", msg.name());
    }

    #[test]
    fn every_proper_prefix_of_a_frame_is_an_error(msg in any_message(), cut in any::<Index>()) {
        let buf = encoded(&msg);
        let body = &buf[4..];
        let at = cut.index(body.len());
        prop_assert!(check_decode(&body[..at])?.is_err(), "{}: prefix of {} bytes", msg.name(), at);
        if body.len() <= 512 {
            for at in 0..body.len() {
                prop_assert!(
                    check_decode(&body[..at])?.is_err(),
                    "{}: prefix of {} bytes", msg.name(), at
                );
            }
        }
    }

    #[test]
    fn message_decode_survives_arbitrary_bytes(
        bytes in proptest::collection::vec(any::<u8>(), 0..2048),
    ) {
        let _ = check_decode(&bytes)?;
    }

    #[test]
    fn message_decode_survives_a_known_type_byte_and_arbitrary_body(
        kind in 0u8..=18,
        body in proptest::collection::vec(any::<u8>(), 0..1024),
    ) {
        let mut bytes = vec![kind];
        bytes.extend(body);
        let _ = check_decode(&bytes)?;
    }

    #[test]
    fn message_decode_survives_edited_frames(msg in small_message(), edits in strategy::edits()) {
        let body = apply(encoded(&msg)[4..].to_vec(), &edits);
        let _ = check_decode(&body)?;
    }

    #[test]
    fn preamble_round_trips_and_survives_arbitrary_bytes(
        version in any::<u32>(),
        capabilities in any::<u64>(),
        bytes in any::<[u8; PREAMBLE_LEN]>(),
    ) {
        let p = Preamble { version, capabilities };
        prop_assert_eq!(Preamble::decode(&p.encode()), Ok(p));
        match Preamble::decode(&bytes) {
            Ok(_) => prop_assert_eq!(&bytes[..8], &MAGIC[..]),
            Err(e) => prop_assert_eq!(e, FrameError::NotBlkmirror),
        }
    }

    #[test]
    fn manifest_decode_survives_arbitrary_bytes(
        bytes in proptest::collection::vec(any::<u8>(), 0..1024),
    ) {
        check_manifest(&bytes, bytes.len() as u64)?;
    }

    #[test]
    fn manifest_decode_survives_edited_manifests(
        m in manifest(),
        edits in strategy::edits(),
        claim in any::<Index>(),
    ) {
        let bytes = manifest_bytes(&m);
        prop_assert_eq!(Manifest::decode(&mut &bytes[..], bytes.len() as u64).unwrap(), m);
        let edited = apply(bytes, &edits);
        check_manifest(&edited, edited.len() as u64)?;
        // A caller that misstates what the reader holds: the bound follows `available`.
        let available = claim.index(2 * edited.len() + 1) as u64;
        check_manifest(&edited, available)?;
    }

    #[test]
    fn state_json_survives_arbitrary_bytes(
        bytes in proptest::collection::vec(any::<u8>(), 0..512),
    ) {
        let _ = serde_json::from_slice::<ReceiverState>(&bytes);
        let _ = serde_json::from_slice::<SenderStatus>(&bytes);
    }

    #[test]
    fn state_json_survives_edited_records(edits in strategy::edits()) {
        let receiver = serde_json::to_vec_pretty(&sample_receiver_state_interrupted()).unwrap();
        let _ = serde_json::from_slice::<ReceiverState>(&apply(receiver, &edits));
        let sender = serde_json::to_vec_pretty(&sample_sender_status()).unwrap();
        let _ = serde_json::from_slice::<SenderStatus>(&apply(sender, &edits));
    }
}

// ---------------------------------------------------------------------------------------------
// The bounds, exactly
// ---------------------------------------------------------------------------------------------

/// The body of `message` (type byte first), as `Message::decode` takes it.
fn body(message: &Message) -> Vec<u8> {
    encoded(message)[4..].to_vec()
}

#[track_caller]
fn assert_invalid(what: &str, body: &[u8]) {
    match Message::decode(body) {
        Err(FrameError::Invalid(_)) => {}
        other => panic!(
            "{what}: expected Invalid, got {:?}",
            other.map(|m| m.name())
        ),
    }
}

#[track_caller]
fn assert_round_trips(what: &str, message: Message) {
    let buf = encoded(&message);
    let len = u32::from_le_bytes(buf[..4].try_into().unwrap());
    Message::check_len(len).unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        Message::decode(&buf[4..]).as_ref() == Ok(&message),
        "{what}: did not round-trip"
    );
}

fn extent(raw_len: u32, blocks: u32, payload_len: u32, compressed: bool) -> Message {
    Message::Extent {
        first_block: 0,
        raw_len,
        compressed,
        hashes: bulk(1, blocks),
        payload: payload(2, payload_len),
    }
}

fn patch(blocks: u32, bitmap_len: u32, raw_len: u32) -> Message {
    Message::Patch {
        first_block: 0,
        hashes: bulk(3, blocks),
        bitmap: vec![0xFF; bitmap_len as usize],
        raw_len,
        compressed: false,
        payload: payload(4, raw_len),
    }
}

fn refine(block_count: u32, subs: u32) -> Message {
    Message::Refine {
        first_block: 0,
        block_count,
        sub_hashes: bulk(5, subs),
    }
}

#[test]
fn every_bound_is_accepted_at_the_limit_and_refused_one_past_it() {
    // Manifest chunks: 1..=MAX_MANIFEST_CHUNK hashes.
    let chunk = |n| Message::ManifestChunk {
        first_block: 0,
        hashes: bulk(6, n),
    };
    assert_round_trips("chunk at the limit", chunk(MAX_MANIFEST_CHUNK));
    assert_invalid("empty chunk", &body(&chunk(0)));
    assert_invalid(
        "chunk past the limit",
        &body(&chunk(MAX_MANIFEST_CHUNK + 1)),
    );

    // Extents: 1..=MAX_EXTENT_BYTES bytes, 1..=MAX_EXTENT_BLOCKS hashes, a raw payload of
    // exactly raw_len bytes.
    let (max_bytes, max_blocks) = (MAX_EXTENT_BYTES, MAX_EXTENT_BLOCKS);
    assert_round_trips(
        "extent at the limits",
        extent(max_bytes, max_blocks, max_bytes, false),
    );
    assert_round_trips("compressed extent", extent(max_bytes, 1, 0, true));
    assert_invalid("extent of 0 bytes", &body(&extent(0, 1, 0, false)));
    assert_invalid(
        "extent past the byte limit",
        &body(&extent(max_bytes + 1, 1, 0, true)),
    );
    assert_invalid("extent of 0 blocks", &body(&extent(4096, 0, 4096, false)));
    assert_invalid(
        "extent past the block limit",
        &body(&extent(4096, max_blocks + 1, 4096, false)),
    );
    assert_invalid(
        "raw payload shorter than raw_len",
        &body(&extent(4096, 1, 4095, false)),
    );
    assert_invalid(
        "raw payload longer than raw_len",
        &body(&extent(4096, 1, 4097, false)),
    );

    // Zero runs: at least one block.
    assert_round_trips(
        "zero run of u64::MAX blocks",
        Message::ZeroRun {
            first_block: 0,
            block_count: u64::MAX,
        },
    );
    assert_invalid(
        "empty zero run",
        &body(&Message::ZeroRun {
            first_block: 0,
            block_count: 0,
        }),
    );

    // Refine: 1..=MAX_EXTENT_BLOCKS blocks, 1..=MAX_SUB_BLOCKS sub-hashes.
    assert_round_trips(
        "refine at the limits",
        refine(MAX_EXTENT_BLOCKS, MAX_SUB_BLOCKS),
    );
    assert_invalid("refine of 0 blocks", &body(&refine(0, 1)));
    assert_invalid(
        "refine past the block limit",
        &body(&refine(MAX_EXTENT_BLOCKS + 1, 1)),
    );
    assert_invalid("refine of 0 sub-blocks", &body(&refine(1, 0)));
    assert_invalid(
        "refine past the sub-block limit",
        &body(&refine(1, MAX_SUB_BLOCKS + 1)),
    );

    // Bitmaps: at most one bit per sub-block of the largest run.
    let max_bitmap = MAX_SUB_BLOCKS.div_ceil(8);
    let answer = |n: u32| Message::RefineAnswer {
        first_block: 0,
        bitmap: vec![0xAA; n as usize],
    };
    assert_round_trips("empty answer", answer(0));
    assert_round_trips("answer at the limit", answer(max_bitmap));
    assert_invalid("answer past the limit", &body(&answer(max_bitmap + 1)));

    // Patches: 1..=MAX_EXTENT_BLOCKS hashes, a bitmap within the limit, 0..=MAX_EXTENT_BYTES
    // bytes.
    assert_round_trips(
        "patch at the limits",
        patch(MAX_EXTENT_BLOCKS, max_bitmap, MAX_EXTENT_BYTES),
    );
    assert_round_trips("empty patch", patch(1, 0, 0));
    assert_invalid("patch of 0 blocks", &body(&patch(0, 1, 4096)));
    assert_invalid(
        "patch past the block limit",
        &body(&patch(MAX_EXTENT_BLOCKS + 1, 1, 4096)),
    );
    assert_invalid(
        "patch bitmap past the limit",
        &body(&patch(1, max_bitmap + 1, 4096)),
    );
    assert_invalid(
        "patch past the byte limit",
        &body(&patch(1, 1, MAX_EXTENT_BYTES + 1)),
    );

    // Prefetch: 1..=MAX_PREFETCH_RUNS runs, each of at least one block.
    let prefetch = |n: u32, block_count: u64| Message::Prefetch {
        runs: (0..n as u64).map(|i| (i * 7, block_count)).collect(),
    };
    assert_round_trips(
        "prefetch at the limit",
        prefetch(MAX_PREFETCH_RUNS, u64::MAX),
    );
    assert_invalid("empty prefetch", &body(&prefetch(0, 1)));
    assert_invalid(
        "prefetch past the limit",
        &body(&prefetch(MAX_PREFETCH_RUNS + 1, 1)),
    );
    assert_invalid("prefetch run of 0 blocks", &body(&prefetch(3, 0)));

    // Texts: at most MAX_TEXT_LEN bytes (the encoder never writes more; see below).
    let text = |n: u32| {
        let mut b = vec![1u8];
        b.extend_from_slice(&n.to_le_bytes());
        b.extend(std::iter::repeat_n(b'x', n as usize));
        b
    };
    assert!(Message::decode(&text(MAX_TEXT_LEN)).is_ok());
    assert_invalid("text past the limit", &text(MAX_TEXT_LEN + 1));

    // Flags, options and conditions take only their defined values.
    let mut b = body(&extent(4096, 1, 4096, false));
    b[1 + 8 + 4] = 2;
    assert_invalid("compression flag 2", &b);
    let mut b = body(&Message::CycleStart {
        generation: 1,
        device_size: 1,
        block_size: 4096,
        base_root: None,
    });
    *b.last_mut().unwrap() = 2;
    assert_invalid("option flag 2", &b);
    let mut b = body(&Message::TargetState {
        committed_generation: 1,
        root: [0; 32],
        condition: TargetCondition::Unknown,
    });
    *b.last_mut().unwrap() = 3;
    assert_invalid("target condition 3", &b);

    // Types, emptiness and trailing bytes.
    assert_eq!(Message::decode(&[]), Err(FrameError::Empty));
    assert_eq!(Message::decode(&[0]), Err(FrameError::UnknownType(0)));
    assert_eq!(Message::decode(&[19]), Err(FrameError::UnknownType(19)));
    let mut b = body(&Message::ManifestRequest);
    b.push(0);
    assert_eq!(Message::decode(&b), Err(FrameError::Trailing(1)));
    assert!(Message::check_len(0).is_err());
    assert!(Message::check_len(MAX_FRAME_LEN).is_ok());
    assert!(Message::check_len(MAX_FRAME_LEN + 1).is_err());
}

#[test]
fn refused_text_longer_than_the_limit_is_cut_at_a_char_boundary() {
    // 4095 ASCII bytes then a 3-byte char: the char does not fit and is dropped whole.
    let reason = format!("{}€ and more", "a".repeat(MAX_TEXT_LEN as usize - 1));
    let decoded = Message::decode(&body(&Message::Refused {
        reason: reason.clone(),
    }))
    .unwrap();
    let Message::Refused { reason: got } = decoded else {
        panic!("not Refused");
    };
    assert_eq!(got, reason[..MAX_TEXT_LEN as usize - 1]);
}

/// Headers claiming the largest counts the decoder accepts, with (almost) nothing behind them:
/// refused as truncated, without allocating what they claim.
#[test]
fn claimed_sizes_are_not_allocated_before_the_bytes_are_there() {
    let u32le = |v: u32| v.to_le_bytes().to_vec();
    let u64le = |v: u64| v.to_le_bytes().to_vec();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "manifest chunk",
            [vec![5], u64le(0), u32le(MAX_MANIFEST_CHUNK)].concat(),
        ),
        (
            "extent hashes",
            [
                vec![7],
                u64le(0),
                u32le(MAX_EXTENT_BYTES),
                vec![0],
                u32le(MAX_EXTENT_BLOCKS),
            ]
            .concat(),
        ),
        (
            "extent payload",
            [
                vec![7],
                u64le(0),
                u32le(MAX_EXTENT_BYTES),
                vec![1],
                u32le(1),
                vec![0; 32],
                u32le(u32::MAX),
            ]
            .concat(),
        ),
        (
            "refine",
            [vec![11], u64le(0), u32le(1), u32le(MAX_SUB_BLOCKS)].concat(),
        ),
        (
            "refine answer",
            [vec![12], u64le(0), u32le(MAX_SUB_BLOCKS / 8)].concat(),
        ),
        (
            "patch hashes",
            [vec![13], u64le(0), u32le(MAX_EXTENT_BLOCKS)].concat(),
        ),
        (
            "patch payload",
            [
                vec![13],
                u64le(0),
                u32le(1),
                vec![0; 32],
                u32le(0),
                u32le(MAX_EXTENT_BYTES),
                vec![0],
                u32le(MAX_EXTENT_BYTES),
            ]
            .concat(),
        ),
        ("refused text", [vec![1], u32le(MAX_TEXT_LEN)].concat()),
    ];
    for (what, body) in cases {
        let (result, largest) = largest_allocation(|| Message::decode(&body));
        assert!(
            matches!(result, Err(FrameError::Truncated { .. })),
            "{what}: expected Truncated, got {:?}",
            result.map(|m| m.name())
        );
        assert!(
            largest <= message_bound(body.len()),
            "{what}: a {largest}-byte allocation for a {}-byte body",
            body.len()
        );
    }

    // A manifest header claiming a huge table: refused on its length, nothing allocated.
    let mut bytes = manifest_bytes(&sample_manifest());
    bytes[16..24].copy_from_slice(&(1u64 << 50).to_le_bytes()); // device_size
    bytes[96..104].copy_from_slice(&((1u64 << 50) / 4096).to_le_bytes()); // block count
    let (result, largest) =
        largest_allocation(|| Manifest::decode(&mut &bytes[..], bytes.len() as u64).map(|_| ()));
    assert!(result.is_err());
    assert!(largest <= manifest_bound(bytes.len() as u64), "{largest}");
}

/// The golden frames (one per type) survive every single-byte edit and every truncation.
#[test]
fn golden_frames_survive_every_single_byte_edit() {
    let bounded = |body: &[u8]| {
        let (_, largest) = largest_allocation(|| Message::decode(body));
        assert!(
            largest <= message_bound(body.len()),
            "{largest} for {} bytes",
            body.len()
        );
    };
    for (name, message) in sample_frames() {
        let body = body(&message);
        for at in 0..body.len() {
            for mask in [0x01, 0x80, 0xFF] {
                let mut b = body.clone();
                b[at] ^= mask;
                bounded(&b);
            }
            let mut b = body.clone();
            b.remove(at);
            bounded(&b);
            assert!(
                Message::decode(&body[..at]).is_err(),
                "{name}: prefix of {at} bytes"
            );
        }
    }
}
