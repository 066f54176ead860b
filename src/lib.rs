//! blkmirror: continuous block-device mirroring by snapshots and verified deltas.
//!
//! One cycle, as data flows:
//!
//! ```text
//! source ──snapshot──> frozen view ──> reader ──> hasher (BLAKE3, rayon) ──> diff vs base manifest
//!                                                                               │ changed blocks, zero runs
//! target <── receiver (verify, pwrite, fsync, commit) <── frames <── transport <── zstd
//! ```
//!
//! * [`snapshot`] freezes the source: LVM classic or thin snapshot, reflink clone, or `none`;
//!   [`source`] reads the frozen view (reads ahead, direct I/O); [`tracker`] may say which
//!   ranges changed.
//! * [`blockdiff`] owns the manifest format, the parallel scan, the pure diff, planning and
//!   4 KiB refinement; [`sender::packing`] turns scanned chunks into messages on the sender.
//! * [`transport`] owns the wire: frame encode/decode, local, ssh and mutual-TLS streams.
//! * [`sender`] runs one cycle end to end; [`receiver`] applies one (with
//!   [`receiver::apply`]); [`daemon`] loops cycles; [`daemon::link`] opens a session to a
//!   destination.
//! * [`target`] is where blocks land (file or block device); [`state`] persists both sides' state.
//! * [`cli`] turns arguments into configs and implements progress with indicatif or JSON.
//!
//! One cycle is one generation: the sender commits its manifest for generation N only after the
//! receiver acknowledged that N is durable. Until then the receiver's state says "applying N".

pub mod blockdiff;
pub mod cli;
pub mod daemon;
pub mod device;
#[cfg(test)]
mod engine_tests;
pub mod faults;
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
