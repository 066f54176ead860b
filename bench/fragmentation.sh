#!/usr/bin/env bash
# How the reflink tracker's image fragments over many cycles, what that costs a cycle, and what
# a defragmentation (`xfs_fsr`) gives back.
#
#   bench/fragmentation.sh [ROUNDS=20] [SIZE_GIB=4] [WRITES=1000] [DIR=/var/tmp/blkmirror-frag]
#
# An xfs file system on a loop device (backed by a sparse file in DIR) holds a seeded source
# image (bench/make-image.py) and the sender's state (its clones); the target image sits in DIR.
# After an initial sync, each round makes WRITES random 4 KiB writes to the source (fsync'ed)
# and times one tracked cycle (`send --once --snapshot reflink`), caches dropped first: every
# write into data the kept clone shares is copied elsewhere and splits an extent, so the image's
# extent count grows, and with it the clone and the extent maps. Then `xfs_fsr` of the source
# (timed), one cycle after it (the defragmented extents all moved: the tracker reads the whole
# image once, and ships nothing it did not change) and one more round. The target is compared
# with the source at the end (cmp).
#
# Prints a markdown table, a row per cycle: the source's extents before it, wall and CPU
# seconds, the snapshot stage (the clone) in seconds, and MiB read from the source.
# Needs root (loop devices, mount, drop_caches), xfsprogs (mkfs.xfs, xfs_io, xfs_fsr),
# python3, a release build (cargo build --release) or BLKMIRROR=<binary>. DIR needs about
# 3 x SIZE_GIB free (the image, the target, and the kept clone unshared by the defragmentation).
set -euo pipefail
rounds=${1:-20}
size=${2:-4}
per_round=${3:-1000}
dir=${4:-/var/tmp/blkmirror-frag}
here=$(cd "$(dirname "$0")/.." && pwd)
. "$here/bench/xfs-lib.sh"
bench_checks fragmentation mkfs.xfs xfs_io xfs_fsr

mkdir -p "$dir"
mnt=$dir/mnt
loopdev=""
cleanup() {
    xfs_down
    rm -f "$dir/xfs.img" "$dir/target.img" "$dir/time.out" "$dir/out.json" "$dir/err.log"
}
trap cleanup EXIT

seconds() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", b - a}'; }
field() { json_field "$dir/out.json" "$1"; }
snapshot_s() { python3 -c 'import json, sys; print("%.2f" % (json.loads(open(sys.argv[1]).read().splitlines()[-1])["duration_ms"]["snapshot"] / 1000))' "$dir/out.json"; }
extents() { xfs_io -c "fiemap" "$src" | grep -vc -e hole -e ":$"; }
# writes SEED: the round's random 4 KiB writes to the source, then fsync.
writes() { random_writes "$src" "$1" "$per_round"; }
# cycle LABEL: one timed tracked cycle, caches dropped first; prints its row.
cycle() {
    local before t0 t1 user sys
    before=$(extents)
    cold
    t0=$(date +%s.%N)
    /usr/bin/time -o "$dir/time.out" -f "%U %S" "${send[@]}" > "$dir/out.json" 2> "$dir/err.log" \
        || { cat "$dir/err.log" >&2; exit 1; }
    t1=$(date +%s.%N)
    read -r user sys < "$dir/time.out"
    printf '| %s | %s | %s | %s | %s | %s |\n' "$1" "$before" "$(seconds "$t0" "$t1")" \
        "$(awk -v u="$user" -v s="$sys" 'BEGIN {printf "%.2f", u + s}')" "$(snapshot_s)" \
        "$(awk -v b="$(field bytes_read)" 'BEGIN {printf "%.1f", b / 1048576}')"
}

xfs_up "$dir/xfs.img" $(( size * 3 + 2 )) "$mnt"
src=$mnt/source.img
target=$dir/target.img
rm -f "$target"
python3 "$here/bench/make-image.py" "$src" $(( size * 1024 ))
send=("$bin" send --once --json --progress never --snapshot reflink --state-dir "$mnt/state" "$src" "$target")
"${send[@]}" > /dev/null 2> "$dir/err.log" || { cat "$dir/err.log" >&2; exit 1; }

echo "| cycle | source extents before | wall s | CPU s | snapshot s | read MiB |"
echo "|---|---:|---:|---:|---:|---:|"
for round in $(seq "$rounds"); do
    writes "$round"
    cycle "round $round"
done
cold
t0=$(date +%s.%N)
xfs_fsr "$src"
t1=$(date +%s.%N)
echo "| \`xfs_fsr\` of the source: $(seconds "$t0" "$t1") s | $(extents) after | | | | |"
cycle "after xfs_fsr"
writes $(( rounds + 1 ))
cycle "round $(( rounds + 1 ))"
cmp "$src" "$target" || { echo "target differs from source" >&2; exit 1; }
echo
echo "target identical to the source; $size GiB image, $per_round random 4 KiB writes a round, $("$bin" --version)"
