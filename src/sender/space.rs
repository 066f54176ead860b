//! The snapshot space metrics (docs/metrics.md), read at the end of a cycle just before its
//! view is kept or released, when its scan failed (before the view goes), and between cycles
//! after a failure (the kept view and the pool go on filling while nothing is sent): the fill of
//! that view and of the one the change tracker kept from the cycle before (classic LVM
//! snapshots), or the thin pool's usage (thin snapshots); and the image's extents the reflink
//! tracker counted (what its clones cost).

use std::path::Path;

use crate::snapshot::{FrozenView, Space};

use super::CycleContext;

/// Feeds the metrics with the space figures of `view` (the cycle's) and of the kept view.
/// Only when the metrics are served (it costs an `lvs`); never fails the cycle: a figure that
/// cannot be read is absent from the metrics, and the provider logs why.
pub(super) fn record(ctx: &CycleContext, source: &Path, view: &FrozenView) {
    if !crate::metrics::served() {
        return;
    }
    let source = source.display().to_string();
    crate::metrics::source_extents(&source, ctx.tracker.take_image_extents());
    read_fills(ctx, &source, Some(view));
}

/// Between cycles, after one that failed or could not start (its destination unreachable or
/// gone): the kept snapshot's fill and the pool's usage read again, since the origin's writes
/// go on filling them however long nothing can be sent. The `cycle` fill and the extents stay
/// the last cycle's. Like `record`, only when served, and it never fails.
pub fn record_between_cycles(ctx: &CycleContext, source: &Path) {
    if crate::metrics::served() {
        read_fills(ctx, &source.display().to_string(), None);
    }
}

/// Reads the fills of the kept view and of the cycle's view (when there is a cycle), or the
/// pool's usage, into the metrics.
fn read_fills(ctx: &CycleContext, source: &str, cycle: Option<&FrozenView>) {
    let keeps = ctx.tracker.keeps_previous();
    let kept = match keeps {
        true => ctx.kept.lock().expect("kept views lock").kept_name(),
        false => None,
    };
    let cycle_name = cycle.and_then(|view| view.name.as_deref());
    let names: Vec<&str> = cycle_name.into_iter().chain(kept.as_deref()).collect();
    match ctx.provider.space(&names) {
        Space::None => {}
        Space::Cow(fills) => {
            let fill = |name: Option<&str>| {
                let name = name?;
                fills.iter().find(|(n, _)| n == name).map(|(_, f)| *f)
            };
            if cycle.is_some() {
                crate::metrics::snapshot_fill(source, "cycle", fill(cycle_name));
            }
            if keeps {
                crate::metrics::snapshot_fill(source, "kept", fill(kept.as_deref()));
            }
        }
        Space::ThinPool(pool) => {
            crate::metrics::thin_pool_usage(source, &pool.pool, pool.data, pool.metadata)
        }
    }
}
