#!/usr/bin/env bash
# Two builds of blkmirror on the same tracked fan-out cycle: an image on xfs (reflink
# snapshots, so the reflink tracker says what changed), WRITES random 4 KiB writes, one
# `send --once SRC T1 T2` to two local targets. Both builds start every run from the same
# primed state (the kept clone of the image before the writes, and both targets holding it);
# caches are dropped before each timed cycle, A and B alternate, and each pair's ratio A/B is
# printed, then the median. Both targets are compared with the source after every run.
#
#   bash bench/fanout-tracked.sh BIN_A BIN_B [SIZE_GIB=4] [WRITES=20000] [PAIRS=5]   (as root)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/xfs-lib.sh"
[ $# -ge 2 ] || { sed -n '2,9p' "$0" >&2; exit 2; }
bin_a=$(realpath "$1")
bin_b=$(realpath "$2")
size_gib=${3:-4}
writes=${4:-20000}
pairs=${5:-5}
BLKMIRROR=$bin_a bench_checks fanout-tracked mkfs.xfs python3 cmp
BLKMIRROR=$bin_b bench_checks fanout-tracked
work=/var/tmp/blkmirror-fanout-tracked
mkdir -p "$work"
trap 'xfs_down; rm -f "$work/backing.img"' EXIT
# The image, its two targets and their primed copies share blocks (reflinks); the kept clones
# and the changes take the rest.
xfs_up "$work/backing.img" $((size_gib * 3 + 2)) "$work/xfs"
src=$mnt/src.img
state=$mnt/state
targets=("$mnt/t1.img" "$mnt/t2.img")
send=(send --once --snapshot reflink --state-dir "$state" --progress never --json)

head -c $((size_gib << 30)) /dev/urandom > "$src"
for t in "${targets[@]}"; do cp --reflink=always "$src" "$t"; done
"$bin_a" "${send[@]}" "$src" "${targets[@]}" > /dev/null 2>&1
cp -a "$state" "$state.primed"
for t in "${targets[@]}"; do cp --reflink=always "$t" "$t.primed"; done
random_writes "$src" 1 "$writes"

# timed BIN: restores the primed state and targets (an untimed scrub records each target's new
# fingerprint, as a steady-state receiver holds it), drops caches, prints the cycle's seconds.
timed() {
    rm -rf "$state"
    cp -a "$state.primed" "$state"
    for t in "${targets[@]}"; do
        cp --reflink=always "$t.primed" "$t"
        "$1" scrub --state-dir "$state" "$t" > /dev/null
    done
    cold
    local start end
    start=$(date +%s.%N)
    "$1" "${send[@]}" "$src" "${targets[@]}" > "$work/last.json" 2> "$work/last.err"
    end=$(date +%s.%N)
    for t in "${targets[@]}"; do cmp "$src" "$t"; done
    echo "$end - $start" | bc
}

ratios=()
for i in $(seq "$pairs"); do
    a=$(timed "$bin_a")
    b=$(timed "$bin_b")
    r=$(echo "scale=3; $a / $b" | bc)
    ratios+=("$r")
    echo "pair $i: A ${a}s, B ${b}s, ratio $r"
done
printf '%s\n' "${ratios[@]}" | sort -n | awk '{a[NR]=$1} END {print "median ratio A/B " a[int((NR+1)/2)]}'
echo "both targets identical to the source after every run; the last cycle's reports:"
python3 -c 'import json, sys
for line in open(sys.argv[1]):
    r = json.loads(line)
    print(r["dest"], "tracker", r["tracker"], "full_scan_reason", r["full_scan_reason"],
          "bytes_read", r["bytes_read"], "blocks_changed", r["blocks_changed"])' "$work/last.json"
