//! Block-level change detection: the [`manifest`] format, the [`source`] reader (pread or mmap),
//! the parallel [`scan`] (BLAKE3 over rayon), the pure [`diff`] of two hash lists, and
//! [`refine`]ment of changed runs down to 4 KiB sub-blocks.
//! Nothing here touches the network or prints.

pub mod diff;
pub mod manifest;
pub mod refine;
pub mod scan;
pub mod source;
