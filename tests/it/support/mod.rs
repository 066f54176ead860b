//! The shared harness of the integration tests: the constants every suite uses, the binary
//! under test, per-test scratch directories, and (re-exported from the submodules) running
//! processes with deadlines, seeded test data, byte comparison, cycle and status helpers, TLS
//! identities and receivers, loop devices and mounts, a private sshd, a counting allocator, and
//! scrapes of a metrics endpoint.
//! A suite says `use crate::support::*;`.
//!
//! Every guard stops or releases what it owns in `Drop`, by PID or by device path, so a
//! failing test leaves nothing behind. Waiting is always "poll a condition until a deadline",
//! never a bare sleep.

pub mod alloc;
pub mod compare;
pub mod data;
pub mod loopdev;
pub mod process;
pub mod scrape;
pub mod sshd;
pub mod status;
pub mod tls;

pub use compare::*;
pub use data::*;
pub use loopdev::*;
pub use process::*;
pub use scrape::*;
pub use sshd::*;
pub use status::*;
pub use tls::*;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Deadline for one foreground command (a cycle, verify, status...). Generous: the tests run a
/// debug build on 2 cores next to other tests.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(300);
/// Deadline for a daemon to announce readiness.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Poll period for condition waits.
pub const POLL: Duration = Duration::from_millis(20);

pub const KIB: u64 = 1024;
pub const MIB: u64 = 1024 * 1024;
/// The default `--block-size`.
pub const BLOCK: u64 = 64 * KIB;

/// The binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_blkmirror")
}

/// A path as `&str` (all test paths are UTF-8 temp paths).
pub fn s(path: &Path) -> &str {
    path.to_str().expect("test paths are UTF-8")
}

// ---------------------------------------------------------------------------------------------
// Scratch directory
// ---------------------------------------------------------------------------------------------

/// A per-test temporary directory, removed on drop.
pub struct Scratch {
    dir: tempfile::TempDir,
}

impl Scratch {
    pub fn new(test: &str) -> Scratch {
        let dir = tempfile::Builder::new()
            .prefix(&format!("blkmirror-it-{test}-"))
            .tempdir()
            .expect("create temp dir");
        Scratch { dir }
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// A path inside the scratch dir (not created).
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A directory inside the scratch dir, created.
    pub fn dir(&self, name: &str) -> PathBuf {
        let p = self.path(name);
        fs::create_dir_all(&p).expect("create dir");
        p
    }
}
