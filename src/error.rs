//! The error policy, written down (after rustic_core's). Every module that can fail follows it;
//! this module holds no code, only the rules, so a new contributor finds them in one place.
//!
//! # One enum per module, with data
//! Each module that can fail has its own `thiserror` enum whose variants carry what a user or a
//! program needs to act: `TargetError::TooSmall { path, has, need }`,
//! `ReceiveError::BlockHashMismatch { offset }`,
//! `TransportError::VersionMismatch { ours, theirs }`. No variant carries a pre-formatted
//! `String` where typed data would do: protocol violations are enums of their own
//! ([`crate::receiver::Violation`] for what a sender did wrong,
//! [`crate::sender::Violation`] for what a receiver did wrong).
//!
//! # Causes are kept
//! An underlying error is kept as the variant's `#[source]` (or `#[from]`), never flattened
//! into text with `io::Error::other(e.to_string())`: the chain of causes survives up to the
//! command line, which prints it once, on one line.
//!
//! # Every error says whether to retry
//! Each error type has `is_transient()`: true when the next attempt may succeed without anyone
//! changing anything (a lost connection, a silent peer, a snapshot that went bad during the
//! cycle, a read error, a busy target, data corrupted in transit), false when retrying would
//! fail the same way (a refused identity, a version mismatch, a protocol violation, a wrong
//! kind of device, a bad option). The daemon's loop retries transient errors with backoff and
//! stops on the others. Wrapping types delegate to what they wrap.
//!
//! # A stop is not a failure
//! A requested stop (SIGINT, SIGTERM) reaches the engines as a flag; what it interrupts ends
//! with a `Stopped` variant (`SendError::Stopped`, `ReceiveError::Stopped`,
//! `TransportError::Stopped`, `SnapshotError::Stopped`), which the daemon turns into a clean
//! end: the receiver records the cycle as interrupted and the process exits 0.
//!
//! # What the user sees
//! Core modules never print. `anyhow` is used only at the command-line edge
//! ([`crate::cli`]), which prints `blkmirror: error: <message>: <cause>: ...` on one line and
//! exits 1 for a runtime error, 2 for a usage error (and `verify` 1 for "different"). A message
//! names the thing (the path, the peer, the option), says the cause, and where it can, what to
//! do.
//!
//! # The peer hears why
//! An error the receiver detects itself (a hash mismatch, a violation, a refused target) is sent
//! to the sender as a `Refused` frame before the connection closes, so both sides report the
//! same first cause; a transport error is not echoed back.
