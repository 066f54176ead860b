//! Replay of the fuzz corpus: every file of `fuzz/corpus/<target>/` (the minimized queues of
//! the AFL++ runs, see `fuzz/README.md`) goes through the same checks as the fuzz target of
//! that name, from the same source file (`fuzz/src/checks.rs`):
//!
//! - `frame`: `Message::decode`, `Message::check_len` and `Preamble::decode` never panic, and
//!   a decoded message round-trips (encode, then decode the body: the same message);
//! - `manifest`: `Manifest::decode` never panics, and a decoded manifest re-encodes to its
//!   bytes;
//! - `state`: a `ReceiverState` or `SenderStatus` read with `serde_json` (and
//!   `ReceiverState::known_format`) never panics when shown as `status` shows it, and survives
//!   a save and a load.
//!
//! CI cannot install AFL++ in its time, so this is its short fuzz run: deterministic, a few
//! seconds, over inputs that the fuzzer found reach the decoders' paths. A corpus that went
//! missing fails the test rather than passing it empty.

#[path = "../../fuzz/src/checks.rs"]
mod checks;

use std::fs;
use std::panic::{self, AssertUnwindSafe};
use std::path::Path;

/// Runs `check` on every file of `fuzz/corpus/<target>/`; panics listing the files it
/// panicked on.
fn replay(target: &str, check: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut files: Vec<_> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("a corpus entry").path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{}: no corpus files", dir.display());
    let failed: Vec<String> = files
        .iter()
        .filter(|path| {
            let bytes = fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            panic::catch_unwind(AssertUnwindSafe(|| check(&bytes))).is_err()
        })
        .map(|path| path.display().to_string())
        .collect();
    assert!(
        failed.is_empty(),
        "{target}: {} of {} corpus files failed (messages above): {failed:#?}",
        failed.len(),
        files.len()
    );
}

#[test]
fn frame_corpus_decodes_without_panic_and_round_trips() {
    replay("frame", checks::frame);
}

#[test]
fn manifest_corpus_decodes_without_panic_and_re_encodes() {
    replay("manifest", checks::manifest);
}

#[test]
fn state_corpus_reads_and_shows_without_panic() {
    replay("state", checks::state);
}
