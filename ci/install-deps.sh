#!/usr/bin/env bash
# Installs the Debian packages the test suite calls (as root). Used by ci/test.sh and .ci/run.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
apt-get update
# openssh-server/-client: sshd + ssh + ssh-keygen for tests/it/ssh.rs and the rsync
# benchmark; e2fsprogs xfsprogs btrfs-progs: real filesystems on loop devices (reflink tests,
# benchmark fixture); util-linux mount: losetup, mount, unshare; rsync, time, python3:
# tests/it/bench_small.rs; systemd (for systemd-analyze; nothing starts it) and man-db:
# tests/it/service.rs verifies the units of contrib/systemd, their man pages included.
apt-get install -y --no-install-recommends \
    openssh-server openssh-client e2fsprogs xfsprogs btrfs-progs util-linux mount coreutils \
    rsync time python3 systemd man-db
# systemd-nspawn, for tests/it/under_systemd.rs: the contrib/systemd units run by a real systemd
# booted in a container over the host's /usr.
apt-get install -y --no-install-recommends systemd-container
# The QEMU guest of tests/it/lvm_guest.rs (real LVM: the host kernel has no device-mapper), booted
# by ci/guest/run-in-guest.sh: QEMU, Debian's kernel with its modules, a static busybox for the
# guest's initramfs (built by the script), lvm2 and the thin-pool tools used inside the guest.
# The kernel package wants some initramfs generator: where none is installed, tiny-initramfs
# satisfies it without the udev and systemd that initramfs-tools would pull in (an installed
# initramfs-tools or dracut is left alone).
initramfs_tool=tiny-initramfs
installed="$(dpkg-query -W -f '${Status}\n' initramfs-tools dracut tiny-initramfs 2>/dev/null || true)"
case "$installed" in *"install ok installed"*) initramfs_tool= ;; esac
apt-get install -y --no-install-recommends \
    qemu-system-x86 linux-image-amd64 $initramfs_tool busybox-static lvm2 \
    thin-provisioning-tools kmod cpio
# promtool, for tests/it/metrics.rs (checks and unit-tests contrib/prometheus/): taken from
# Debian's prometheus package, unpacked rather than installed, so that no Prometheus server is
# set up or started.
if ! command -v promtool >/dev/null; then
    promdir="$(mktemp -d)"
    chmod 755 "$promdir"
    (cd "$promdir" && apt-get download prometheus && dpkg-deb -x prometheus_*.deb root)
    install -m 0755 "$promdir/root/usr/bin/promtool" /usr/local/bin/promtool
    rm -rf "$promdir"
fi
# sshd wants its privilege-separation directory.
mkdir -p /run/sshd
