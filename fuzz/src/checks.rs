//! What each fuzz target checks on one input. The fuzz targets (`fuzz/fuzz_targets/`) and the
//! corpus replay test (`tests/it/fuzz_corpus.rs`, which includes this file with `#[path]`)
//! both call these functions, so a corpus file is checked in CI exactly as under the fuzzer.
//!
//! Each function takes untrusted bytes, hands them to the decoders through the library's
//! public API as blkmirror does with what it reads, and panics (which the fuzzer records as a
//! crash) when an invariant does not hold. The decoders themselves must never panic.

use blkmirror::blockdiff::manifest::Manifest;
use blkmirror::cli::status::describe;
use blkmirror::state::{ReceiverState, SenderStatus, StatusEntry};
use blkmirror::transport::frame::{Message, Preamble, MAGIC, MAX_FRAME_LEN, PREAMBLE_LEN};
use serde_json::Value;

/// Target `frame`: `data` is a frame body (type byte first) of `data.len()` bytes.
///
/// - `Message::check_len` accepts exactly the lengths 1..=`MAX_FRAME_LEN`;
/// - `Message::decode` never panics; a decoded message encodes to a frame whose length prefix
///   is its body's length and whose type byte is the input's, and decoding that body gives
///   the same message back (round trip);
/// - the first `PREAMBLE_LEN` bytes, if there are that many, decode as a preamble exactly
///   when they start with `MAGIC`, and a decoded preamble encodes to the same bytes.
pub fn frame(data: &[u8]) {
    if let Some(bytes) = data.first_chunk::<PREAMBLE_LEN>() {
        match Preamble::decode(bytes) {
            Ok(preamble) => assert_eq!(&preamble.encode(), bytes, "preamble round trip"),
            Err(e) => assert_ne!(bytes[..8], MAGIC, "preamble with the magic refused: {e}"),
        }
    }

    // What the frame reader does first with the length prefix of a body this long.
    let len = u32::try_from(data.len()).unwrap_or(u32::MAX);
    let accepted = Message::check_len(len).is_ok();
    assert_eq!(
        accepted,
        (1..=MAX_FRAME_LEN).contains(&len),
        "check_len({len})"
    );

    let Ok(message) = Message::decode(data) else {
        return;
    };
    let mut frame = Vec::new();
    message.encode(&mut frame);
    let prefix = u32::from_le_bytes(frame[..4].try_into().expect("4 bytes"));
    assert_eq!(
        prefix as usize,
        frame.len() - 4,
        "{}: length prefix",
        message.name()
    );
    assert!(
        !accepted || Message::check_len(prefix).is_ok(),
        "{}: a body of {len} bytes re-encodes to one of {prefix} that check_len refuses",
        message.name()
    );
    assert_eq!(frame[4], data[0], "{}: type byte", message.name());
    match Message::decode(&frame[4..]) {
        Ok(again) => assert!(
            again == message,
            "{} did not round-trip: decoded {}, then {}",
            message.name(),
            short(&message),
            short(&again)
        ),
        Err(e) => panic!("{}: its own encoding does not decode: {e}", message.name()),
    }
}

/// `message`'s `Debug` text, cut to 200 characters (a payload can be a megabyte).
fn short(message: &Message) -> String {
    let text = format!("{message:?}");
    match text.char_indices().nth(200) {
        Some((end, _)) => format!("{}... ({} bytes of Debug text)", &text[..end], text.len()),
        None => text,
    }
}

/// Target `manifest`: `data` is a manifest file of `data.len()` bytes.
///
/// - `Manifest::decode` never panics, whether told the reader's true length or one more or
///   one less;
/// - a decoded manifest encodes to exactly the input bytes.
pub fn manifest(data: &[u8]) {
    let available = data.len() as u64;
    if let Ok(manifest) = Manifest::decode(&mut &data[..], available) {
        let mut bytes = Vec::new();
        manifest.encode(&mut bytes).expect("encoding into a Vec");
        assert!(
            bytes == data,
            "a decoded manifest re-encodes to other bytes"
        );
    }
    // A caller that misstates what the reader holds gets an error, never a panic.
    for available in [available + 1, available.saturating_sub(1)] {
        let _ = Manifest::decode(&mut &data[..], available);
    }
}

/// Target `state`: `data` is a state record file (`state.json` or a sender's `dest-*.json`).
///
/// Read as `blkmirror` reads them (`serde_json::from_slice`, then for a receiver's record
/// `ReceiverState::known_format`), then shown as `blkmirror status` shows them
/// (`StatusEntry::to_json`, `cli::status::describe`): never a panic. A record that reads is
/// written back and read again (a save then a load) as the same record, but for the last
/// digit of a floating-point number in a sender's `last_cycle`: serde_json, built without its
/// `float_roundtrip` feature, parses some numbers to a neighbouring `f64`.
pub fn state(data: &[u8]) {
    if let Ok(state) = serde_json::from_slice::<ReceiverState>(data) {
        if let Ok(state) = state.known_format() {
            let saved = serde_json::to_vec_pretty(&state).expect("saving a receiver state");
            let loaded = serde_json::from_slice::<ReceiverState>(&saved)
                .expect("loading a saved receiver state")
                .known_format()
                .expect("a saved receiver state's format");
            same_record(StatusEntry::Receiver(state), StatusEntry::Receiver(loaded));
        }
    }
    if let Ok(status) = serde_json::from_slice::<SenderStatus>(data) {
        let saved = serde_json::to_vec_pretty(&status).expect("saving a sender status");
        let loaded =
            serde_json::from_slice::<SenderStatus>(&saved).expect("loading a saved sender status");
        same_record(StatusEntry::Sender(status), StatusEntry::Sender(loaded));
    }
}

/// Shows `read` as `status` does, and asserts that `reloaded` (after a save and a load) shows
/// the same.
fn same_record(read: StatusEntry, reloaded: StatusEntry) {
    let json = read.to_json().expect("status --json of a record");
    let line = describe(&read);
    let again = reloaded
        .to_json()
        .expect("status --json of a reloaded record");
    assert!(
        same_json(&json, &again),
        "a {} record changed in a save and a load: {json} became {again}",
        read.role()
    );
    assert_eq!(
        describe(&reloaded),
        line,
        "status line after a save and a load"
    );
}

/// `a == b`, but for floating-point numbers, which may differ in their last bit or two.
fn same_json(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) if x.is_f64() || y.is_f64() => {
            let (x, y) = (
                x.as_f64().unwrap_or(f64::NAN),
                y.as_f64().unwrap_or(f64::NAN),
            );
            x == y || (x - y).abs() <= 4.0 * f64::EPSILON * x.abs().max(y.abs())
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same_json(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .zip(y)
                    .all(|((kx, x), (ky, y))| kx == ky && same_json(x, y))
        }
        _ => a == b,
    }
}
