//! The integration tests: one test binary (`it`), one module per suite, run against the real
//! `blkmirror` binary and the library's public API. Shared helpers live in [`support`], split
//! by concern.
//!
//! Test names carry their suite, so a suite is selected by its prefix:
//! `cargo nextest run --test it tls::`, `cargo nextest run -E 'test(/^fault_injection::/)'`,
//! or with plain cargo `cargo test --test it tls::`. (Without `--test it`, nextest's
//! substring filter `tls::` also matches the library's unit tests `transport::tls::tests::*`;
//! so do `ssh::` and `reflink::`.) Real LVM runs in a QEMU guest:
//! `cargo nextest run lvm_guest::` (see `lvm_guest` and `ci/guest/README.md`).
//!
//! Needs root (loop devices, mounts, sshd on 127.0.0.1) and the Debian packages that
//! `ci/install-deps.sh` installs.

mod support;

mod attribution;
mod bad_input;
mod bench_small;
mod chain;
mod decoders;
mod event_log;
mod fanout;
mod fault_injection;
mod file_to_file;
mod full_fs;
mod fuzz_corpus;
mod golden;
mod history;
mod interrupt;
mod loop_devices;
mod lvm_guest;
mod many_targets;
mod metrics;
mod post_commit;
mod refinement;
mod reflink;
mod run_config;
mod scrub;
mod service;
mod signals;
mod ssh;
mod stale_state;
mod stalls;
mod tls;
mod under_systemd;
mod verify_status;
