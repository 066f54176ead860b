//! The snapshot space metrics (docs/metrics.md), read at the end of a cycle just before its
//! view is kept or released, and when its scan failed (before the view goes): the fill of
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
    let keeps = ctx.tracker.keeps_previous();
    let kept = match keeps {
        true => ctx.kept.lock().expect("kept views lock").kept_name(),
        false => None,
    };
    let names: Vec<&str> = view
        .name
        .as_deref()
        .into_iter()
        .chain(kept.as_deref())
        .collect();
    match ctx.provider.space(&names) {
        Space::None => {}
        Space::Cow(fills) => {
            let fill = |name: Option<&str>| {
                let name = name?;
                fills.iter().find(|(n, _)| n == name).map(|(_, f)| *f)
            };
            crate::metrics::snapshot_fill(&source, "cycle", fill(view.name.as_deref()));
            if keeps {
                crate::metrics::snapshot_fill(&source, "kept", fill(kept.as_deref()));
            }
        }
        Space::ThinPool(pool) => {
            crate::metrics::thin_pool_usage(&source, &pool.pool, pool.data, pool.metadata)
        }
    }
}
