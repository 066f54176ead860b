//! The checks of blkmirror's fuzz targets, one function per target (see `checks`). The
//! targets are the binaries in `fuzz_targets/`; `README.md` says how to run them.

pub mod checks;
