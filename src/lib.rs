//! blkmirror: continuous block-device mirroring by snapshots and verified deltas.
//!
//! One cycle, as data flows (docs/architecture.md has the whole map):
//!
//! ```text
//! source ─snapshot─> frozen view ─tracker: ranges─> scan (read ahead, BLAKE3) ─> plan vs base
//!                                                                                   │ delta::Op
//! target <─ receiver (verify, write, fsync, commit) <─ frames <─ endpoint <─ packing (zstd, 4 KiB)
//! ```
//!
//! * [`snapshot`] freezes the source (LVM classic or thin snapshot, reflink clone, or `none`);
//!   [`tracker`] says which ranges of the frozen view may have changed ([`tracker::FullScan`]:
//!   all of them).
//! * [`source`] opens and reads sources (read-ahead, `verify`'s compare); [`device`] says what a
//!   path is.
//! * [`blockdiff`] owns the manifest, the scan over a set of ranges, the pure diff and plan,
//!   4 KiB refinement and [`blockdiff::delta::Op`], the engines' unit of change.
//! * [`sender`] runs one cycle end to end on its own thread; [`receiver`] applies them to a
//!   [`target::BlockTarget`], keeping its state in a [`state::ReceiverStore`].
//! * [`transport`] owns the wire: frames, the [`transport::Endpoint`] the engines use, a dialer
//!   per transport (ssh, mutual TLS), and the in-process pair for local destinations.
//! * [`daemon`] loops cycles, handles signals and backoff; [`daemon::link`] is the one place
//!   that wires both sides together (a local destination's in-process receiver);
//!   [`daemon::fanout`] runs one source to several destinations. [`forward`] makes a receiver
//!   the sender of a chain's next hop.
//! * [`state`] persists both sides' state; [`cli`] turns arguments into configs and renders
//!   progress and status. [`error`] states the error policy every module follows.
//! * [`metrics`] keeps the Prometheus metrics and serves them (`--metrics-listen`).
//! * [`notify`] tells systemd when a service is ready, stopping or alive (`sd_notify`).
//!
//! One cycle is one generation: the sender commits its manifest for generation N only after the
//! receiver acknowledged that N is durable. Until then the receiver's state says "applying N".

pub mod blockdiff;
pub mod cli;
pub mod commit_hooks;
pub mod daemon;
pub mod device;
#[cfg(test)]
mod engine_tests;
pub mod error;
pub mod faults;
pub mod forward;
pub mod fsclone;
pub mod history;
pub mod metrics;
pub mod notify;
pub mod progress;
pub mod receiver;
pub mod sender;
pub mod snapshot;
pub mod source;
pub mod state;
pub mod target;
pub mod tracker;
pub mod transport;
pub mod units;
