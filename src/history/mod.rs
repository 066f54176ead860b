//! History on the target: after each committed generation the receiver can keep a snapshot
//! of its target (an image file or a thin LV), so that yesterday's image survives ransomware
//! or a bad `rm` that reached the source (and was mirrored).
//!
//! * [`Policy`] ([`policy`]): the retention grid, parsed from a spec such as
//!   `"1h:10m,24h:hourly,7d:daily,4w:weekly"` (duration syntax in `duration.rs`).
//! * [`verdicts`]/[`plan`] ([`retention`]): which snapshots a policy keeps at a given time, a
//!   pure function; the rule and why it is stable are written there.
//! * [`take`], [`list`], [`scan`], [`prune`], [`restore`], [`check`] (`store.rs`): the
//!   snapshots of a file target as reflink clones in a directory the caller chooses (e.g.
//!   `STATE/targets/<key>/history/`), named `gen-<generation>-<created>.img` (`naming.rs`),
//!   made with FICLONE (`clone.rs`).
//! * [`thin`]: the snapshots of a thin-LV target as thin snapshots in its volume group, named
//!   `<lv>-hist-<generation>-<created>` and tagged `blkmirror-history`.
//! * [`classify`] (`target.rs`): which targets are supported (image files and thin LVs;
//!   classic LVs and other block devices are refused, saying why); [`Store`] (`backend.rs`):
//!   the dispatch between the two kinds of store that the receiver and `blkmirror history` use.
//!
//! Times are Unix seconds passed in by the caller: nothing here reads the clock. Nothing here
//! prints; unusual findings (foreign files in the history dir) go to the log.

mod backend;
mod clone;
mod duration;
mod error;
mod naming;
pub mod policy;
pub mod retention;
mod store;
mod target;
pub mod thin;

pub use backend::Store;
pub use error::HistoryError;
pub use policy::{Policy, PolicyError, Window, EXAMPLE};
pub use retention::{plan, verdicts, Plan, Reason, Snapshot, Verdict};
pub use store::{check, list, prune, restore, scan, take, Entry, Listing};
pub use target::{classify, default_dir, TargetKind};
