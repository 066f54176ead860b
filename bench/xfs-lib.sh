# Shared by bench/tracker-scaling.sh, bench/fragmentation.sh and bench/fanout-tracked.sh
# (sourced): an xfs file system on a loop device for a source image and the sender's clones,
# caches dropped, random writes.
# Sets and uses: mnt, loopdev, bin.

# bench_checks NAME TOOL...: sets bin (BLKMIRROR, or the release build of the checkout at
# $here) and exits 2 with one line unless it exists, we are root and every TOOL is there.
bench_checks() {
    local name=$1 tool
    shift
    bin=${BLKMIRROR:-$here/target/release/blkmirror}
    [ -x "$bin" ] || { echo "$name: no binary at $bin (cargo build --release)" >&2; exit 2; }
    [ "$(id -u)" = 0 ] || { echo "$name: run as root" >&2; exit 2; }
    for tool in "$@"; do
        command -v "$tool" > /dev/null || { echo "$name: $tool not found (apt-get install xfsprogs)" >&2; exit 2; }
    done
}

# json_field FILE KEY: KEY of the last line of FILE (a JSON report).
json_field() { python3 -c 'import json, sys; print(json.loads(open(sys.argv[1]).read().splitlines()[-1])[sys.argv[2]])' "$1" "$2"; }

# xfs_up BACKING SIZE_GIB MNT: makes an xfs of SIZE_GIB on the sparse file BACKING, attaches it
# with direct I/O (so that the image is cached once, as the file) and mounts it on MNT.
xfs_up() {
    truncate -s 0 "$1"
    truncate -s "$2"G "$1"
    mkfs.xfs -q -f "$1"
    loopdev=$(losetup --find --show --direct-io=on "$1")
    mnt=$3
    mkdir -p "$mnt"
    mount "$loopdev" "$mnt"
}

# xfs_down: unmounts and detaches what xfs_up made (quietly, when there is nothing).
xfs_down() {
    if [ -n "${mnt:-}" ] && mountpoint -q "$mnt"; then umount "$mnt"; fi
    if [ -n "${loopdev:-}" ]; then losetup -d "$loopdev" 2> /dev/null || true; fi
    loopdev=""
}

cold() { sync; echo 3 > /proc/sys/vm/drop_caches; }

# random_writes FILE SEED COUNT: COUNT writes of 4 KiB of random bytes at random 4 KiB-aligned
# places of FILE (seeded), then fsync.
random_writes() {
    python3 - "$1" "$2" "$3" <<'PY'
import os, random, sys
path, seed, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rng = random.Random(seed)
fd = os.open(path, os.O_WRONLY)
blocks = os.fstat(fd).st_size // 4096
for _ in range(count):
    os.pwrite(fd, rng.randbytes(4096), rng.randrange(blocks) * 4096)
os.fsync(fd)
os.close(fd)
PY
}
