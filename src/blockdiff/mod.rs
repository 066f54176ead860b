//! Block-level change detection: the [`manifest`] format, the [`source`] reader (pread or mmap),
//! the parallel [`scan`] (BLAKE3 over rayon), and the pure [`diff`] of two hash lists.
//! Nothing here touches the network or prints.

pub mod diff;
pub mod manifest;
pub mod scan;
pub mod source;
