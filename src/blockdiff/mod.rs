//! Block-level change detection: the [`manifest`] format, the [`source`] to read,
//! [`readahead`] of its chunks by several direct reads in flight, the parallel [`scan`]
//! (BLAKE3 over rayon), the pure [`diff`] of two hash lists, and [`refine`]ment of changed
//! runs down to 4 KiB sub-blocks.
//! Nothing here touches the network or prints.

pub mod diff;
pub mod manifest;
pub mod readahead;
pub mod refine;
pub mod scan;
pub mod source;
