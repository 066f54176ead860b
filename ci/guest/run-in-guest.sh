#!/usr/bin/env bash
# Run one command inside a throw-away QEMU guest that boots Debian's own kernel, for tests that
# need kernel features the host lacks (device-mapper: LVM snapshots, thin pools).
#
#   ci/guest/run-in-guest.sh CMD [ARGS...]
#
# The guest sees the host's `/` read-only (9p) and this repository read-write at the same path,
# so a host-built binary runs inside unchanged; CMD runs as root with the current directory set
# to the directory this script was started from (it must be inside the repository or readable
# through the read-only root). /tmp and /run are tmpfs; /etc, /var, /root and /home are
# overlays (writes are thrown away). A fresh sparse disk is attached as /dev/vda (a PV for the
# tests). CMD's stdout and stderr are streamed to ours, and this script exits with CMD's exit
# status (125 if the guest ended without reporting one, e.g. a kernel panic or the timeout).
#
# The LVM acceptance tests in one command (see ci/guest/README.md):
#   cargo nextest run lvm_guest::      (or: cargo test --test it lvm_guest:: -- --nocapture)
# Its host test `lvm_acceptance_in_guest` runs, in one boot, the integration test binary:
#   ci/guest/run-in-guest.sh target/debug/deps/it-HASH --ignored --test-threads=1 --nocapture lvm_guest::
#
# Needs (Debian): qemu-system-x86 linux-image-amd64 busybox-static lvm2 thin-provisioning-tools
# (installed by .ci/run). Environment knobs:
#   GUEST_TIMEOUT  seconds before QEMU is killed (default 1200)
#   GUEST_MEM      guest RAM (default 3G)
#   GUEST_CPUS     vCPUs (default 2)
#   GUEST_DISK     size of the sparse /dev/vda (default 4G)
#   GUEST_KERNEL   kernel image (default: the newest /boot/vmlinuz-*)
#   GUEST_VERBOSE  1: show the guest's console (kernel messages) as it boots
#   GUEST_KEEP     1: keep the run folder target/guest/runs/run.* (console log, output files)
#   GUEST_QUIET    kernel log options (default "quiet loglevel=3"); GUEST_APPEND: more options
set -euo pipefail

die() {
    echo "run-in-guest: $*" >&2
    exit 125
}

[ $# -ge 1 ] || die "usage: $0 CMD [ARGS...]"

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)"
REPO="$(cd "$HERE/../.." && pwd -P)"
CWD="$(pwd -P)"
GUEST_DIR="$REPO/target/guest"
TIMEOUT="${GUEST_TIMEOUT:-1200}"
MEM="${GUEST_MEM:-3G}"
CPUS="${GUEST_CPUS:-2}"
DISK_SIZE="${GUEST_DISK:-4G}"
INSTALL_HINT="install the guest tooling first: run the 'system packages' step of .ci/run (apt-get install qemu-system-x86 linux-image-amd64 busybox-static lvm2 thin-provisioning-tools)"

# ------------------------------------------------------------------------------------------
# Tooling
# ------------------------------------------------------------------------------------------
QEMU="$(command -v qemu-system-x86_64 || true)"
[ -n "$QEMU" ] || die "qemu-system-x86_64 not found; $INSTALL_HINT"
BUSYBOX=/bin/busybox
[ -x "$BUSYBOX" ] || BUSYBOX="$(command -v busybox || true)"
[ -n "$BUSYBOX" ] && file_is_static=$(LC_ALL=C ldd "$BUSYBOX" 2>&1 | grep -c "not a dynamic" || true)
[ -n "$BUSYBOX" ] && [ "${file_is_static:-0}" -ge 1 ] || die "a static busybox was not found; $INSTALL_HINT"
for tool in cpio gzip modprobe timeout; do
    command -v "$tool" >/dev/null || die "$tool not found; $INSTALL_HINT"
done
[ -x /sbin/lvm ] || [ -x /usr/sbin/lvm ] || die "lvm2 is not installed; $INSTALL_HINT"

if [ -n "${GUEST_KERNEL:-}" ]; then
    KERNEL="$GUEST_KERNEL"
else
    KERNEL="$(ls -1 /boot/vmlinuz-* 2>/dev/null | sort -V | tail -n 1 || true)"
fi
[ -n "$KERNEL" ] && [ -r "$KERNEL" ] || die "no kernel image in /boot; $INSTALL_HINT"
KVER="${KERNEL##*/vmlinuz-}"
[ -d "/lib/modules/$KVER" ] || die "no /lib/modules/$KVER for $KERNEL; $INSTALL_HINT"

mkdir -p "$GUEST_DIR"

# ------------------------------------------------------------------------------------------
# Initramfs: static busybox, the modules to reach the 9p root, and /init. Cached, keyed by
# the kernel version and a hash of this script (which holds /init).
# ------------------------------------------------------------------------------------------
# The 9p root, plus device-mapper (snapshots, thin pools, era) and loop devices: loading these
# here from RAM takes a fraction of what modprobe costs over 9p.
BOOT_MODULES=(virtio_pci virtio_blk 9pnet_virtio 9p overlay dm_mod dm_snapshot dm_thin_pool dm_era loop)
KEY="$(cat "${BASH_SOURCE[0]}" "$BUSYBOX" | sha256sum | cut -c1-16)"
INITRD="$GUEST_DIR/initramfs-$KVER-$KEY.cpio.gz"

write_init() {
    # The guest's /init (busybox sh). Reads its parameters from the kernel command line:
    #   bm.repo=PATH bm.ctl=PATH (the control directory, inside the repo share)
    cat <<'EOF'
#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mkdir -p /proc /sys /dev /newroot
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev

fail() {
    echo "guest init: $*" >&2
    poweroff -f
}

for arg in $(cat /proc/cmdline); do
    case "$arg" in
        bm.repo=*) REPO="${arg#bm.repo=}" ;;
        bm.ctl=*) CTL="${arg#bm.ctl=}" ;;
        bm.rootcache=*) ROOTCACHE="${arg#bm.rootcache=}" ;;
        bm.repocache=*) REPOCACHE="${arg#bm.repocache=}" ;;
    esac
done
[ -n "$REPO" ] && [ -n "$CTL" ] || fail "bm.repo= or bm.ctl= missing"

while read -r mod; do
    [ -n "$mod" ] && insmod "$mod" 2>/dev/null
done < /modules.order
# Loopback (down at boot; no other network): tests serve and scrape on 127.0.0.1.
ip link set lo up || echo "guest init: cannot bring the loopback interface up" >&2

P9="trans=virtio,version=9p2000.L,msize=512000"
# The host's root, read-only and cached (it does not change under a test run).
mount -t 9p -o "$P9,ro,cache=${ROOTCACHE:-loose}" root /newroot || fail "cannot mount the host root over 9p"
mount -t proc proc /newroot/proc
mount -t sysfs sysfs /newroot/sys
mount -t devtmpfs devtmpfs /newroot/dev
mkdir -p /newroot/dev/pts /newroot/dev/shm
mount -t devpts devpts /newroot/dev/pts
mount -t tmpfs tmpfs /newroot/dev/shm
ln -sf /proc/self/fd /newroot/dev/fd
ln -sf /proc/self/fd/0 /newroot/dev/stdin
ln -sf /proc/self/fd/1 /newroot/dev/stdout
ln -sf /proc/self/fd/2 /newroot/dev/stderr
mount -t tmpfs -o mode=1777 tmpfs /newroot/tmp
mount -t tmpfs -o mode=755 tmpfs /newroot/run
mkdir -p /ov
mount -t tmpfs tmpfs /ov
for d in etc var root home; do
    [ -d "/newroot/$d" ] || continue
    mkdir -p "/ov/$d/upper" "/ov/$d/work"
    mount -t overlay overlay -o "lowerdir=/newroot/$d,upperdir=/ov/$d/upper,workdir=/ov/$d/work" \
        "/newroot/$d" || fail "cannot overlay /$d"
done
# /var/tmp, /var/lock, /run/lock: writable scratch like on a booted system.
mkdir -p /newroot/run/lock /newroot/run/lvm
chmod 1777 /newroot/var/tmp 2>/dev/null
# The repository (read-write, page cache for mmap only, so executables load fast and writes
# reach the host at once) and the control folder (no cache), mounted last so that a
# repository under /tmp, /home, /root... is not hidden by the mounts above.
mkdir -p "/newroot$REPO" 2>/dev/null
mount -t 9p -o "$P9,rw,cache=${REPOCACHE:-mmap}" repo "/newroot$REPO" || fail "cannot mount the repository over 9p"
mkdir -p "/newroot$CTL" 2>/dev/null
mount -t 9p -o "$P9,rw,cache=none" ctl "/newroot$CTL" || fail "cannot mount the control folder over 9p"

exec chroot /newroot /bin/sh "$CTL/guest-run.sh"
EOF
}

build_initrd() {
    local tmp
    tmp="$(mktemp -d "$GUEST_DIR/initramfs.XXXXXX")"
    mkdir -p "$tmp/bin" "$tmp/lib/modules"
    cp "$BUSYBOX" "$tmp/bin/busybox"
    write_init > "$tmp/init"
    chmod 755 "$tmp/init"
    : > "$tmp/modules.order"
    local seen=" " mod line ko n=0
    for mod in "${BOOT_MODULES[@]}"; do
        local deps
        deps="$(modprobe -S "$KVER" --show-depends "$mod" 2>&1)" \
            || die "modprobe cannot resolve module $mod for kernel $KVER: $deps"
        while read -r line; do
            case "$line" in
                insmod\ *) ko="${line#insmod }"; ko="${ko%% *}" ;;
                builtin\ *) continue ;;
                *) continue ;;
            esac
            case "$seen" in *" $ko "*) continue ;; esac
            seen="$seen$ko "
            n=$((n + 1))
            local dst="/lib/modules/$n-${ko##*/}"
            case "$ko" in
                *.ko) cp "$ko" "$tmp$dst" ;;
                *.ko.xz) dst="${dst%.xz}"; xz -dc "$ko" > "$tmp$dst" ;;
                *.ko.zst) dst="${dst%.zst}"; zstd -qdc "$ko" > "$tmp$dst" ;;
                *.ko.gz) dst="${dst%.gz}"; gzip -dc "$ko" > "$tmp$dst" ;;
                *) die "unexpected module file $ko" ;;
            esac
            echo "$dst" >> "$tmp/modules.order"
        done <<< "$deps"
    done
    (cd "$tmp" && find . | LC_ALL=C sort | cpio -o -H newc --quiet) | gzip -1 > "$INITRD.tmp"
    mv "$INITRD.tmp" "$INITRD"
    rm -rf "$tmp"
}

if [ ! -s "$INITRD" ]; then
    rm -f "$GUEST_DIR"/initramfs-*.cpio.gz
    build_initrd
fi

# ------------------------------------------------------------------------------------------
# One run: control directory (inside the repo share), fresh sparse disk, QEMU.
# ------------------------------------------------------------------------------------------
mkdir -p "$GUEST_DIR/runs"
# Run folders of earlier runs whose script is gone (killed without its clean-up).
for old in "$GUEST_DIR"/runs/run.*; do
    [ -d "$old" ] || continue
    owner="$(cat "$old/owner" 2>/dev/null || true)"
    if [ -z "$owner" ] || ! kill -0 "$owner" 2>/dev/null; then
        rm -rf "$old"
    fi
done
CTL="$(mktemp -d "$GUEST_DIR/runs/run.XXXXXX")"
echo $$ > "$CTL/owner"
case "$REPO$CTL$CWD" in
    *[[:space:]]*) die "paths with white space are not supported: $REPO, $CWD" ;;
esac
# The guest has its own /tmp and /run: the host's are not visible there.
for p in "$CWD" "$1"; do
    case "$p" in
        /tmp|/tmp/*|/run|/run/*) case "$p" in "$REPO"|"$REPO"/*) ;; *)
            die "$p is under /tmp or /run, which the guest does not share: use a path in the repository (e.g. CARGO_TARGET_DIR inside it)" ;; esac ;;
    esac
done
DISK="$CTL/disk.img"
QEMU_PID=""
TAIL_PIDS=()
cleanup() {
    local rc=$?
    if [ -n "$QEMU_PID" ] && kill -0 "$QEMU_PID" 2>/dev/null; then
        kill "$QEMU_PID" 2>/dev/null || true
        wait "$QEMU_PID" 2>/dev/null || true
    fi
    for p in "${TAIL_PIDS[@]}"; do
        kill "$p" 2>/dev/null || true
    done
    if [ "${GUEST_KEEP:-0}" != 1 ]; then
        rm -rf "$CTL"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

truncate -s "$DISK_SIZE" "$DISK"
: > "$CTL/stdout"
: > "$CTL/stderr"

# The script the guest's init runs (chrooted into the host root).
{
    echo '#!/bin/sh'
    echo "CTL=$(printf %q "$CTL")"
    echo "cd $(printf %q "$CWD") || { echo 'run-in-guest: no such directory in the guest' >&2; echo 125 > \"\$CTL/status\"; exit 1; }"
    cat <<'EOF'
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root TMPDIR=/tmp LANG=C.UTF-8
# No udev in the guest: lvm2 must create the /dev nodes itself.
export DM_DISABLE_UDEV=1
export BLKMIRROR_IN_GUEST=1
EOF
    printf 'exec </dev/null >>"$CTL/stdout" 2>>"$CTL/stderr"\n'
    printf '%q ' "$@"
    printf '\n'
    cat <<'EOF'
rc=$?
echo "$rc" > "$CTL/status.tmp" && mv "$CTL/status.tmp" "$CTL/status"
sync
# Power off (asynchronous): wait for it here, as init must not exit.
echo o > /proc/sysrq-trigger
exec sleep 600
EOF
} > "$CTL/guest-run.sh"

CONSOLE="$CTL/console.log"
APPEND="console=ttyS0 panic=-1 oops=panic ${GUEST_QUIET-quiet loglevel=3} rw rdinit=/init bm.repo=$REPO bm.ctl=$CTL ${GUEST_APPEND:-}"
QEMU_ARGS=(
    -accel tcg,thread=multi -M q35 -cpu max,-erms,-fsrm -smp "$CPUS" -m "$MEM"
    -nographic -nodefaults -serial stdio -monitor none -no-reboot -nic none
    -kernel "$KERNEL" -initrd "$INITRD" -append "$APPEND"
    -virtfs local,path=/,mount_tag=root,security_model=none,readonly=on,multidevs=remap
    -virtfs "local,path=$REPO,mount_tag=repo,security_model=none,multidevs=remap"
    -virtfs "local,path=$CTL,mount_tag=ctl,security_model=none"
    -drive "file=$DISK,if=virtio,format=raw,cache=unsafe,discard=unmap"
)
START=$(date +%s)
if [ "${GUEST_VERBOSE:-0}" = 1 ]; then
    timeout --kill-after=10 "$TIMEOUT" "$QEMU" "${QEMU_ARGS[@]}" </dev/null \
        > >(tee "$CONSOLE" >&2) 2>&1 &
else
    timeout --kill-after=10 "$TIMEOUT" "$QEMU" "${QEMU_ARGS[@]}" </dev/null >"$CONSOLE" 2>&1 &
fi
QEMU_PID=$!

# Stream the guest command's output as it is written; each tail ends once QEMU has ended and
# it has printed the rest.
tail -n +1 -s 0.2 --pid="$QEMU_PID" -f "$CTL/stdout" &
TAIL_PIDS+=($!)
tail -n +1 -s 0.2 --pid="$QEMU_PID" -f "$CTL/stderr" >&2 &
TAIL_PIDS+=($!)

set +e
wait "$QEMU_PID"
QEMU_RC=$?
set -e
QEMU_PID=""
ELAPSED=$(( $(date +%s) - START ))

for p in "${TAIL_PIDS[@]}"; do
    wait "$p" 2>/dev/null || true
done
TAIL_PIDS=()

if [ -s "$CTL/status" ]; then
    RC="$(cat "$CTL/status")"
    echo "run-in-guest: command exited with status $RC (guest ran ${ELAPSED}s)" >&2
    exit "$RC"
fi
if [ "$QEMU_RC" = 124 ] || [ "$QEMU_RC" = 137 ]; then
    echo "run-in-guest: the guest was killed after GUEST_TIMEOUT=${TIMEOUT}s" >&2
fi
echo "run-in-guest: the guest ended without reporting an exit status (QEMU status $QEMU_RC, ${ELAPSED}s); its console:" >&2
tail -n 60 "$CONSOLE" >&2 || true
exit 125
