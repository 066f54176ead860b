//! Block-level change detection: the [`manifest`] (one hash per block), the parallel [`scan`]
//! of a source over a set of [`ranges`] (BLAKE3 on the reader threads), the pure [`diff`] of
//! two hash lists and [`plan`] of how each changed run travels, [`refine`]ment of changed runs
//! down to 4 KiB sub-blocks, and [`delta::Op`], the engines' unit of change.
//! Nothing here touches the network or prints.

pub mod delta;
pub mod diff;
pub mod manifest;
pub mod plan;
pub mod ranges;
pub mod refine;
pub mod scan;
