//! Block-level change detection: the [`manifest`] (one hash per block), the parallel [`scan`]
//! of a source (BLAKE3 on the reader threads), the pure [`diff`] of two hash lists, and
//! [`refine`]ment of changed runs down to 4 KiB sub-blocks.
//! Nothing here touches the network or prints.

pub mod diff;
pub mod manifest;
pub mod refine;
pub mod scan;
