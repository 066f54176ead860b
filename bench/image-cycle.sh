#!/usr/bin/env bash
# Times blkmirror on one image against the I/O and hashing floors, cold and warm cache.
# Usage: bench/image-cycle.sh [SIZE_MIB=4096] [DIR=/var/tmp/blkmirror-bench]
# Needs root (drop_caches), a release build (cargo build --release) and optionally b3sum
# on PATH (cargo install b3sum). Prints one markdown table row per measurement.
set -euo pipefail
size_mib=${1:-4096}
dir=${2:-/var/tmp/blkmirror-bench}
here=$(cd "$(dirname "$0")/.." && pwd)
bin=$here/target/release/blkmirror
mkdir -p "$dir"
src=$dir/src.img
[ -f "$src" ] && [ "$(stat -c %s "$src")" = $((size_mib * 1048576)) ] || python3 "$here/bench/make-image.py" "$src" "$size_mib"

cold() { sync; echo 3 > /proc/sys/vm/drop_caches; }
warm() { cat "$src" > /dev/null; }
# row LABEL CACHE COMMAND...: runs the command once, prints wall and CPU seconds.
row() {
    local label=$1 cache=$2; shift 2
    if [ "$cache" = cold ]; then cold; else warm; fi
    local t0 t1 usage=$dir/time.out
    t0=$(date +%s.%N)
    /usr/bin/time -o "$usage" -f "%U %S %M" "$@" > /dev/null 2> "$dir/stderr.log"
    t1=$(date +%s.%N)
    read -r user sys rss < "$usage"
    printf '| %s | %s | %.2f | %.2f | %d |\n' "$label" "$cache" "$(echo "$t1 - $t0" | bc)" "$(echo "$user + $sys" | bc)" $((rss / 1024))
}

echo "| what | cache | wall s | CPU s | peak RSS MiB |"
echo "|---|---|---|---|---|"
row "dd bs=4M iflag=direct (read floor)" cold dd if="$src" of=/dev/null bs=4M iflag=direct
row "dd bs=4M (page cache)" warm dd if="$src" of=/dev/null bs=4M
if command -v b3sum > /dev/null; then
    row "b3sum (mmap, multithreaded)" cold b3sum "$src"
    row "b3sum (mmap, multithreaded)" warm b3sum "$src"
fi
for cache in cold warm; do
    rm -rf "$dir/state" "$dir/dst.img"
    row "blkmirror initial sync, file to file" $cache "$bin" send --once --snapshot none --progress never --state-dir "$dir/state" "$src" "$dir/dst.img"
    row "blkmirror no-change cycle" $cache "$bin" send --once --snapshot none --progress never --state-dir "$dir/state" "$src" "$dir/dst.img"
done
for mode in direct cached mmap; do
    for cache in cold warm; do
        row "blkmirror no-change cycle, --read-mode $mode" $cache "$bin" send --once --snapshot none --progress never --read-mode $mode --state-dir "$dir/state" "$src" "$dir/dst.img"
    done
done
cmp "$src" "$dir/dst.img" && echo "(target verified identical with cmp)"
