#!/usr/bin/env bash
# Minimizes fuzz target TARGET's queue (fuzz/out/TARGET/, from fuzz/run.sh) together with the
# committed corpus into a new fuzz/corpus/TARGET/: AFL++'s afl-cmin keeps the smallest inputs
# that together reach every edge (and hit-count bucket) the whole set reaches. Files are named
# by the first 16 hex digits of their SHA-256, so the same input keeps its name across runs.
#
# It runs afl-cmin.bash from the AFL++ that cargo-afl built, not `cargo afl cmin`: that one
# runs AFL++ 4.40c's Python afl-cmin, which here records no edge for any input of these
# persistent-mode targets and keeps 0 files.
#
#   fuzz/minimize.sh TARGET
set -euo pipefail

[[ $# -eq 1 ]] || { echo "usage: $0 {frame|manifest|state}" >&2; exit 2; }
target=$1
case $target in frame | manifest | state) ;; *) echo "unknown target $target" >&2; exit 2 ;; esac

fuzz=$(cd "$(dirname "$0")" && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$fuzz/target}
bin=$CARGO_TARGET_DIR/release/$target
queue=$fuzz/out/$target/afl/default/queue
corpus=$fuzz/corpus/$target
[[ -x $bin ]] || { echo "$bin: not built (run fuzz/run.sh $target first)" >&2; exit 1; }
[[ -d $queue ]] || { echo "$queue: no queue (run fuzz/run.sh $target first)" >&2; exit 1; }

work=$fuzz/out/$target/cmin
rm -rf "$work"
mkdir -p "$work/in"
cp "$queue"/id:* "$work/in/"
if [[ -d $corpus ]]; then
    cp "$corpus"/* "$work/in/" 2>/dev/null || true
fi
before=$(ls "$work/in" | wc -l)

export AFL_NO_AFFINITY=1 AFL_SKIP_CPUFREQ=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1
# The AFL++ that cargo-afl built for this rustc: ~/.local/share/afl.rs/rustc-VERSION-HASH/.
rustc_id=$(rustc --version | awk '{ print $2 "-" substr($3, 2, 7) }')
afl_bin=$(ls -d "${XDG_DATA_HOME:-$HOME/.local/share}/afl.rs/rustc-$rustc_id"/afl.rs-*/afl/bin | tail -n 1)
[[ -x $afl_bin/afl-cmin.bash ]] || { echo "no afl-cmin.bash under $afl_bin" >&2; exit 1; }
AFL_PATH=$afl_bin nice -n 10 "$afl_bin/afl-cmin.bash" -e -i "$work/in" -o "$work/out" -- "$bin" \
    >"$work/cmin.log" 2>&1 || {
    tail -n 20 "$work/cmin.log" >&2
    exit 1
}

rm -rf "$corpus"
mkdir -p "$corpus"
for f in "$work/out"/*; do
    cp "$f" "$corpus/$(sha256sum "$f" | cut -c1-16)"
done
after=$(ls "$corpus" | wc -l)
echo "$target: $before inputs (queue + previous corpus) -> $after in $corpus ($(du -sh --apparent-size "$corpus" | cut -f1), largest $(ls -S "$corpus" | head -1 | xargs -I{} stat -c %s "$corpus/{}") bytes)"
