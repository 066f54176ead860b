#!/usr/bin/env bash
# The test command (README.md): installs the system packages the tests use, then runs every
# test: unit and property tests, integration tests against the real binary (files, loop
# devices, reflink filesystems, TLS and sshd on 127.0.0.1), and real LVM in a QEMU guest.
# Needs root. Set BLKMIRROR_SKIP_DEPS=1 when the packages are already installed.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${BLKMIRROR_SKIP_DEPS:-0}" != 1 ]; then
    bash ci/install-deps.sh
fi
if cargo nextest --version > /dev/null 2>&1; then
    cargo nextest run
else
    echo "cargo-nextest not found: running cargo test" >&2
    cargo test
fi
