#!/usr/bin/env bash
# Fan-out against one `send` per destination: a change cycle (1% of 64 KiB blocks rewritten)
# of a SIZE_MIB image to three local targets, full scan (--snapshot none), page cache dropped
# before each run. A: `send SRC T1 T2 T3 --once` (one read of the source, shipped to all three);
# B: three `send SRC Ti --once` one after the other (three reads). A and B alternate; each
# pair's ratio A/B is printed, then the median.
#
#   bash bench/fanout.sh [SIZE_MIB=2048] [PAIRS=5]      (as root; BIN=target/release/blkmirror)
set -euo pipefail
size_mib=${1:-2048}
pairs=${2:-5}
bin=$(realpath "${BIN:-target/release/blkmirror}")
work=/var/tmp/blkmirror-fanout-bench
mkdir -p "$work"
src=$work/src.img
state=$work/state
targets=("$work/t1.img" "$work/t2.img" "$work/t3.img")
if [ ! -f "$src" ] || [ "$(stat -c %s "$src")" -ne $((size_mib << 20)) ]; then
    rm -rf "$work"/*
    head -c $((size_mib << 20)) /dev/urandom > "$src"
fi
common=(--once --snapshot none --state-dir "$state" --progress never -q)
"$bin" send "$src" "${targets[@]}" "${common[@]}" > /dev/null

mutate() {
    python3 - "$src" <<'PY'
import os, random, sys
path = sys.argv[1]
size = os.path.getsize(path)
blocks = size // 65536
with open(path, "r+b") as f:
    for b in random.sample(range(blocks), max(1, blocks // 100)):
        f.seek(b * 65536 + random.randrange(0, 65536 - 4096))
        f.write(os.urandom(4096))
    f.flush()
    os.fsync(f.fileno())
PY
}

timed() {
    mutate
    sync
    echo 3 > /proc/sys/vm/drop_caches
    local start end
    start=$(date +%s.%N)
    "$@"
    end=$(date +%s.%N)
    echo "$end - $start" | bc
}

fan_out() { "$bin" send "$src" "${targets[@]}" "${common[@]}" > /dev/null; }
one_each() { for t in "${targets[@]}"; do "$bin" send "$src" "$t" "${common[@]}" > /dev/null; done; }

ratios=()
for i in $(seq "$pairs"); do
    a=$(timed fan_out)
    b=$(timed one_each)
    r=$(echo "scale=3; $a / $b" | bc)
    ratios+=("$r")
    echo "pair $i: fan-out ${a}s, one send per destination ${b}s, ratio $r"
done
printf '%s\n' "${ratios[@]}" | sort -n | awk '{a[NR]=$1} END {print "median ratio " a[int((NR+1)/2)]}'
for t in "${targets[@]}"; do cmp "$src" "$t"; done
echo "targets identical to the source"
