#!/usr/bin/env bash
# How each tool scales with the number of files: the same number of rewritten files (1% of
# the smallest size) at three fixture sizes, one run.sh per size, plotted to a PNG.
#
#   bench/rsync/scale.sh N1 N2 N3 [--warm] [--repeat R]
#
# e.g. `bench/rsync/scale.sh 10000 100000 1000000`. Writes into
# $BENCH_CACHE/results/scale-<time>/ (or $BENCH_SCALE_OUT): one CSV per size, scale.csv (all
# of them), scale.md (the table) and scale.png (plot.py: cycle wall time and bytes on the wire
# against the number of files). Only the cycles with changes are run unless BENCH_VARIANTS
# says otherwise. Every run.sh environment variable applies (BLKMIRROR, BLKMIRROR_ARGS, ...).
# plot.py installs matplotlib with pip if it is missing.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"

sizes=()
opts=()
while [ $# -gt 0 ]; do
    case $1 in
        --warm) opts+=(--warm) ;;
        --repeat) opts+=(--repeat "${2:?--repeat needs a value}"); shift ;;
        -*) die "unknown option $1" ;;
        *) [[ $1 =~ ^[0-9]+$ ]] || die "sizes must be integers, got '$1'"; sizes+=("$1") ;;
    esac
    shift
done
[ ${#sizes[@]} = 3 ] || die "usage: $0 N1 N2 N3 [--warm] [--repeat R]"
mapfile -t sizes < <(printf '%s\n' "${sizes[@]}" | sort -n)
count=$(( sizes[0] / 100 ))
[ "$count" -ge 1 ] || count=1
cache=${BENCH_CACHE:-/var/tmp/blkmirror-rsync-bench}
out=${BENCH_SCALE_OUT:-$cache/results/scale-$(date +%Y%m%dT%H%M%S)}
mkdir -p "$out"
export BENCH_VARIANTS=${BENCH_VARIANTS:-change}

for n in "${sizes[@]}"; do
    log "scale: $n files, $count rewritten"
    bash "$here/run.sh" "$n" --count "$count" "${opts[@]}" --csv "$out/n$n.csv" > "$out/n$n.md"
done
{
    head -1 "$out/n${sizes[0]}.csv"
    for n in "${sizes[@]}"; do tail -n +2 "$out/n$n.csv"; done
} > "$out/scale.csv"
python3 "$here/table.py" "$out/scale.csv" | tee "$out/scale.md"
python3 "$here/plot.py" "$out/scale.csv" "$out/scale.png"
echo
echo "CSV: $out/scale.csv"
echo "plot: $out/scale.png"
