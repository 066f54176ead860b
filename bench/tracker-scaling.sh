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
. "$here/bench/xfs-lib.sh"
bench_checks tracker-scaling mkfs.xfs

mkdir -p "$dir"
mnt=$dir/mnt
loopdev=""
cleanup() {
    xfs_down
    rm -f "$dir/xfs.img" "$dir/target.img" "$dir/time.out"
}
trap cleanup EXIT

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
field() { json_field "$dir/out.json" "$1"; }
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR] = $1} END {print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }
# writes SEED: 1,000 random 4 KiB writes to the source, then fsync.
writes() { random_writes "$src" "$1" 1000; }

echo "| size GiB | tracked cycle s | tracked CPU s | bytes read MiB | full-scan cycle s | full-scan CPU s | dd iflag=direct s | tracked / full scan |"
echo "|---:|---:|---:|---:|---:|---:|---:|---:|"
for size in $sizes; do
    xfs_up "$dir/xfs.img" $(( size * 2 + 2 )) "$mnt"
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
    xfs_down
    rm -f "$dir/xfs.img" "$target"
done
