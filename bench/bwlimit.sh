#!/bin/bash
# The wire rate a `send --bwlimit RATE` cycle achieves: an incompressible image of SIZE MiB is
# mirrored once over TLS on 127.0.0.1 with --compress-level 0, and the bytes on the wire are
# divided by the time from the end of the handshake to the receiver's commit (the cycle's
# scan_and_send + commit from its JSON: the writer paces frames after the scan has queued
# them, so the commit phase holds part of the wait).
#
#   bench/bwlimit.sh [RATE_BYTES_PER_S=2000000] [SIZE_MIB=24] [BIN=target/release/blkmirror]
set -euo pipefail
rate=${1:-2000000}
size=${2:-24}
bin=$(realpath "${3:-target/release/blkmirror}")
dir=$(mktemp -d /var/tmp/blkmirror-bwlimit.XXXXXX)
receiver=
cleanup() {
    [ -n "$receiver" ] && kill "$receiver" 2>/dev/null && wait "$receiver" 2>/dev/null
    rm -rf "$dir"
}
trap cleanup EXIT
head -c $((size << 20)) /dev/urandom > "$dir/source.img"
sfp=$("$bin" keygen "$dir/id-s")
rfp=$("$bin" keygen "$dir/id-r")
"$bin" receive "$dir/target.img" --create --listen 127.0.0.1:0 --state-dir "$dir/rs" \
    --identity "$dir/id-r" --allow-peer "$sfp" > "$dir/listen.out" 2> "$dir/receiver.err" &
receiver=$!
for _ in $(seq 100); do grep -q listening "$dir/listen.out" && break; sleep 0.1; done
addr=$(awk '{print $3}' "$dir/listen.out")
"$bin" send "$dir/source.img" "tls://$addr" --once --json --snapshot none --compress-level 0 \
    --state-dir "$dir/ss" --identity "$dir/id-s" --peer "$rfp" --bwlimit "$rate" \
    > "$dir/report.json" 2> "$dir/sender.err"
python3 - "$dir/report.json" "$rate" <<'PY'
import json, sys
r = json.loads(open(sys.argv[1]).read().splitlines()[-1])
rate = int(sys.argv[2])
d = r["duration_ms"]
secs = (d["scan_and_send"] + d["commit"]) / 1000
got = r["bytes_sent"] / secs
print(f"limit {rate} B/s: {r['bytes_sent']} bytes in {secs:.2f} s = {got:.0f} B/s ({got / rate:.3f}x the limit)")
PY
cmp "$dir/source.img" "$dir/target.img" && echo "target identical"
