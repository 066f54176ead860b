#!/usr/bin/env bash
# Builds fuzz target TARGET (frame, manifest, state) with cargo-afl and fuzzes it for SECONDS
# seconds with AFL++, then prints a summary. See README.md.
#
#   fuzz/run.sh TARGET SECONDS
#
# Seeds: the golden fixtures of tests/fixtures/ for that target, plus the committed corpus
# fuzz/corpus/TARGET/. Output: fuzz/out/TARGET/ (queue, crashes, hangs, fuzzer_stats; the
# previous run's output is removed first, unless AFL_AUTORESUME=1). The build goes to
# $CARGO_TARGET_DIR (default fuzz/target). Runs under `nice -n 10`; one fuzzer at a time.
set -euo pipefail

usage() { echo "usage: $0 {frame|manifest|state} SECONDS" >&2; exit 2; }
[[ $# -eq 2 ]] || usage
target=$1
seconds=$2
case $target in frame | manifest | state) ;; *) usage ;; esac
[[ $seconds =~ ^[0-9]+$ ]] || usage

fuzz=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$fuzz")
fixtures=$root/tests/fixtures
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$fuzz/target}
out=$fuzz/out/$target

command -v cargo-afl >/dev/null || {
    echo "cargo-afl is not installed: cargo install cargo-afl (see fuzz/README.md)" >&2
    exit 1
}

echo "== building $target (cargo afl build --release, target dir $CARGO_TARGET_DIR)"
(cd "$fuzz" && nice -n 10 cargo afl build --release --bin "$target")
bin=$CARGO_TARGET_DIR/release/$target

# Seeds, rebuilt each run from the fixtures and the committed corpus.
seeds=$out/seeds
rm -rf "$seeds"
mkdir -p "$seeds"
case $target in
frame)
    for f in "$fixtures"/protocol-v1/*.bin; do
        name=$(basename "$f")
        if [[ $name == 00-preamble* ]]; then
            cp "$f" "$seeds/$name" # 20 bytes: the preamble check (and an unknown type byte)
        else
            tail -c +5 "$f" >"$seeds/$name" # a whole frame: strip the u32 length prefix
        fi
    done
    ;;
manifest) cp "$fixtures/manifest-v1.bin" "$seeds/" ;;
state) cp "$fixtures"/state-v1/*.json "$seeds/" ;;
esac
if [[ -d $fuzz/corpus/$target ]]; then
    cp "$fuzz/corpus/$target"/* "$seeds/" 2>/dev/null || true
fi

if [[ ${AFL_AUTORESUME:-0} != 1 ]]; then
    rm -rf "$out/afl"
fi
mkdir -p "$out/afl"

# No UI (the log goes to a file), no core pinning (the machine is shared), no CPU-frequency
# or core_pattern checks (environment variables rather than changing system settings).
export AFL_NO_UI=1 AFL_NO_AFFINITY=1 AFL_SKIP_CPUFREQ=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1
export AFL_NO_WARN_INSTABILITY=1
echo "== fuzzing $target for ${seconds}s (log: $out/afl.log)"
status=0
nice -n 10 cargo afl fuzz -V "$seconds" -i "$seeds" -o "$out/afl" -x "$fuzz/dict/$target.dict" \
    -- "$bin" >"$out/afl.log" 2>&1 || status=$?

stats=$out/afl/default/fuzzer_stats
if [[ ! -f $stats ]]; then
    echo "afl-fuzz exited with $status and wrote no stats; the end of its log:" >&2
    tail -n 30 "$out/afl.log" >&2
    exit 1
fi
stat() { sed -n "s/^$1 *: //p" "$stats"; }
run_time=$(stat run_time)
execs=$(stat execs_done)
crashes=$(ls "$out/afl/default/crashes" | grep -c '^id:' || true)
hangs=$(ls "$out/afl/default/hangs" | grep -c '^id:' || true)
cat <<SUMMARY
== summary: $target
run time       : ${run_time}s
execs          : $execs
execs/s        : $((execs / (run_time > 0 ? run_time : 1))) (average; last: $(stat execs_per_sec))
corpus (paths) : $(stat corpus_count) ($(stat corpus_found) found, from $(ls "$seeds" | wc -l) seeds)
edges          : $(stat edges_found) of $(stat total_edges) instrumented ($(stat bitmap_cvg) of the map)
stability      : $(stat stability)
crashes        : $crashes (saved; $(stat saved_crashes) reported) in $out/afl/default/crashes
hangs          : $hangs (saved; $(stat saved_hangs) reported) in $out/afl/default/hangs
SUMMARY
exit "$status"
