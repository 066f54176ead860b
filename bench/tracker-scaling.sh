#!/usr/bin/env bash
# Cycle time against volume size at a fixed change, with the reflink change tracker on xfs,
# next to the full-scan cycle and `dd iflag=direct` of the same image.
#
#   bench/tracker-scaling.sh [SIZES_GIB="2 4 8 16"] [ROUNDS=3] [DIR=/var/tmp/blkmirror-scaling]
#
# For each size: an xfs file system on a loop device (backed by a sparse file in DIR) holds
# the source image (bench/make-image.py, seeded) and the sender's state (its clones); the
# target image sits in DIR. After an initial sync, each round makes 1,000 random 4 KiB writes
# to the source (fsync'ed) and times, caches dropped first:
#   tracked    one `send --once --snapshot reflink` cycle (the reflink tracker: FIEMAP of the
#              kept clone against the new one, only the changed blocks read);
#   full scan  another 1,000 writes, then one `send --once --snapshot reflink --tracker
#              full-scan` cycle (everything read and hashed); an untimed tracked cycle after
#              it makes the next round's clone the kept one again;
#   dd         `dd bs=4M iflag=direct` of the image (the disk's read floor).
# The target is compared with the source at the end of each size (cmp).
#
# Prints a markdown table: medians of the rounds, and the tracked cycle's bytes read.
# Needs root (loop devices, mount, drop_caches), xfsprogs, python3, a release build
# (cargo build --release) or BLKMIRROR=<binary>. DIR needs about 2 x the largest size free.
set -euo pipefail
sizes=${1:-2 4 8 16}
rounds=${2:-3}
dir=${3:-/var/tmp/blkmirror-scaling}
here=$(cd "$(dirname "$0")/.." && pwd)
bin=${BLKMIRROR:-$here/target/release/blkmirror}
[ -x "$bin" ] || { echo "tracker-scaling: no binary at $bin (cargo build --release)" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "tracker-scaling: run as root" >&2; exit 2; }
command -v mkfs.xfs > /dev/null || { echo "tracker-scaling: mkfs.xfs not found (apt-get install xfsprogs)" >&2; exit 2; }

mkdir -p "$dir"
mnt=$dir/mnt
loopdev=""
cleanup() {
    mountpoint -q "$mnt" && umount "$mnt"
    [ -n "$loopdev" ] && losetup -d "$loopdev" 2> /dev/null
    rm -f "$dir/xfs.img" "$dir/target.img" "$dir/time.out"
}
trap cleanup EXIT

cold() { sync; echo 3 > /proc/sys/vm/drop_caches; }
# timed COMMAND...: runs it with caches dropped; sets WALL (s) and CPU (user+sys s); its stdout
# goes to $dir/out.json.
timed() {
    cold
    local t0 t1 user sys
    t0=$(date +%s.%N)
    /usr/bin/time -o "$dir/time.out" -f "%U %S" "$@" > "$dir/out.json" 2> "$dir/err.log" \
        || { cat "$dir/err.log" >&2; exit 1; }
    t1=$(date +%s.%N)
    read -r user sys < "$dir/time.out"
    WALL=$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.2f", b - a}')
    CPU=$(awk -v u="$user" -v s="$sys" 'BEGIN {printf "%.2f", u + s}')
}
field() { python3 -c 'import json, sys; print(json.loads(open(sys.argv[1]).read().splitlines()[-1])[sys.argv[2]])' "$dir/out.json" "$1"; }
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR] = $1} END {print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }
# writes SEED: 1,000 random 4 KiB-aligned writes of 4 KiB to the source, then fsync.
writes() {
    python3 - "$src" "$1" <<'PY'
import os, random, sys
path, seed = sys.argv[1], int(sys.argv[2])
rng = random.Random(seed)
fd = os.open(path, os.O_WRONLY)
blocks = os.fstat(fd).st_size // 4096
for _ in range(1000):
    os.pwrite(fd, rng.randbytes(4096), rng.randrange(blocks) * 4096)
os.fsync(fd)
os.close(fd)
PY
}

echo "| size GiB | tracked cycle s | tracked CPU s | bytes read MiB | full-scan cycle s | full-scan CPU s | dd iflag=direct s | tracked / full scan |"
echo "|---:|---:|---:|---:|---:|---:|---:|---:|"
for size in $sizes; do
    truncate -s 0 "$dir/xfs.img"
    truncate -s $(( size * 2 + 2 ))G "$dir/xfs.img"
    mkfs.xfs -q -f "$dir/xfs.img"
    loopdev=$(losetup --find --show --direct-io=on "$dir/xfs.img")
    mkdir -p "$mnt"
    mount "$loopdev" "$mnt"
    src=$mnt/source.img
    state=$mnt/state
    target=$dir/target.img
    rm -f "$target"
    python3 "$here/bench/make-image.py" "$src" $(( size * 1024 ))
    send=("$bin" send --once --json --progress never --snapshot reflink --state-dir "$state" "$src" "$target")
    "${send[@]}" > /dev/null
    tracked=() tracked_cpu=() full=() full_cpu=() dd_s=() read_mib=()
    for round in $(seq "$rounds"); do
        writes "$round"
        timed "${send[@]}"
        [ "$(field full_scan_reason)" = None ] || { echo "tracked cycle fell back: $(field full_scan_reason)" >&2; exit 1; }
        tracked+=("$WALL") tracked_cpu+=("$CPU")
        read_mib+=("$(awk -v b="$(field bytes_read)" 'BEGIN {printf "%.1f", b / 1048576}')")
        writes $(( round + 1000 ))
        timed "${send[@]}" --tracker full-scan
        full+=("$WALL") full_cpu+=("$CPU")
        "${send[@]}" > /dev/null
        timed dd if="$src" of=/dev/null bs=4M iflag=direct
        dd_s+=("$WALL")
    done
    cmp "$src" "$target" || { echo "target differs from source at $size GiB" >&2; exit 1; }
    t=$(median "${tracked[@]}") f=$(median "${full[@]}")
    printf '| %s | %s | %s | %s | %s | %s | %s | %s |\n' "$size" "$t" "$(median "${tracked_cpu[@]}")" \
        "$(median "${read_mib[@]}")" "$f" "$(median "${full_cpu[@]}")" "$(median "${dd_s[@]}")" \
        "$(awk -v a="$t" -v b="$f" 'BEGIN {printf "%.3f", a / b}')"
    umount "$mnt"
    losetup -d "$loopdev"
    loopdev=""
    rm -f "$dir/xfs.img" "$target"
done
