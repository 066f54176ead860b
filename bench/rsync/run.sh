#!/usr/bin/env bash
# blkmirror vs rsync on an aged ext4 image of N small files: one mirror cycle after a seeded
# 1% of the files was rewritten, and a cycle with no file changes, side by side.
#
#   bench/rsync/run.sh [N=50000] [--warm] [--count K] [--repeat R] [--seed S] [--csv FILE]
#
#   N         files in the fixture (build-image.sh builds and caches the base image)
#   --warm    warm page cache before each timed run (default: cold, caches dropped)
#   --count K rewrite K files instead of 1% of N (scale.sh keeps K fixed across sizes)
#   --repeat R  run every timed row R times (each from the same starting state); the table
#             shows the median, the CSV every run (default 1); trees are compared in the
#             first run only (at 1,000,000 files on xfs a comparison takes 15+ minutes), later
#             runs check blkmirror's images byte for byte
#   --seed S  fixture seed (default 1); the mutation seed is derived from it
#   --csv F   where to write the CSV (default $BENCH_CACHE/results/n<N>-<cache>-<time>.csv)
#
# Prints a markdown table on stdout (progress on stderr) and writes the CSV. Needs root
# (loop devices, mount, drop_caches), rsync, openssh-server/-client, e2fsprogs, time, python3.
# The steady state it measures: the mirror already holds the pre-mutation image (blkmirror: its
# state dirs hold the manifests of a cycle of the unchanged image; rsync: the destination tree
# is the pre-mutation tree), then the source changes and one cycle brings the mirror up to date.
#
# Environment:
#   BLKMIRROR         binary to benchmark (default: <repo>/target/release/blkmirror)
#   BLKMIRROR_ARGS    extra flags for every `blkmirror send` (e.g. "--block-size 4K")
#   BENCH_SNAPSHOT    blkmirror's --snapshot (default none; reflink needs BENCH_WORK on xfs or
#                     btrfs: see on-xfs.sh, which runs this script that way)
#   BENCH_CACHE       base images and results (default /var/tmp/blkmirror-rsync-bench)
#   BENCH_WORK        scratch dir for this run (default $BENCH_CACHE/work-n<N>; wiped first)
#   BENCH_KEEP_WORK=1 keep the scratch dir (images, state, logs) after the run
#   BENCH_ROWS        subset of: dd rsync-local rsync-ssh blkmirror-local blkmirror-tls blkmirror-ssh
#                     floor (with BENCH_SNAPSHOT=reflink and blkmirror-local, change cycle: the
#                     least any snapshot-based mirror must do for the change, see floor.py)
#   BENCH_VARIANTS    subset of: change nochange
#   BENCH_CHECK_ONLY=1  correctness only (CI): no dd row, no cache dropping or warming
#   BENCH_TREECMP=0   skip the tree comparison of run 1 (15+ minutes per row at 1,000,000 files
#                     on xfs): blkmirror's images are still compared byte for byte, and rsync's
#                     rows say "trees not compared in this run"
#   BLKMIRROR_B       a second blkmirror binary: each blkmirror row also runs with it (tool
#                     "blkmirror-b"), just before the first binary, in every repetition, so that
#                     two builds are compared pair by pair on the same machine minute
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
. "$here/lib.sh"

# ---------------------------------------------------------------------------------------------
# Arguments and environment
# ---------------------------------------------------------------------------------------------
args=("$@")
n=50000
cache_mode=cold
count=""
seed=1
csv=""
repeat=1
positional=0
while [ $# -gt 0 ]; do
    case $1 in
        --warm) cache_mode=warm ;;
        --count) count=${2:?--count needs a value}; shift ;;
        --repeat) repeat=${2:?--repeat needs a value}; shift ;;
        --seed) seed=${2:?--seed needs a value}; shift ;;
        --csv) csv=${2:?--csv needs a value}; shift ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        -*) die "unknown option $1 (see --help)" ;;
        *) [ $positional = 0 ] || die "unexpected argument $1"; n=$1; positional=1 ;;
    esac
    shift
done
[[ $n =~ ^[0-9]+$ ]] && [ "$n" -ge 100 ] || die "N must be an integer >= 100, got '$n'"
[[ $seed =~ ^[0-9]+$ ]] || die "--seed must be a non-negative integer"
if [ -z "$count" ]; then count=$(( n / 100 )); fi
[[ $count =~ ^[0-9]+$ ]] && [ "$count" -ge 1 ] || die "--count must be a positive integer"
[[ $repeat =~ ^[0-9]+$ ]] && [ "$repeat" -ge 1 ] || die "--repeat must be a positive integer"

check_only=${BENCH_CHECK_ONLY:-0}
[ "$check_only" = 1 ] && cache_mode=asis
bin=${BLKMIRROR:-$repo/target/release/blkmirror}
[ -x "$bin" ] || die "blkmirror binary $bin not found: cargo build --release, or set BLKMIRROR"
bin=$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")
bin_origin=$bin
read -r -a extra <<< "${BLKMIRROR_ARGS:-}"
rows=${BENCH_ROWS:-dd rsync-local rsync-ssh blkmirror-local blkmirror-tls blkmirror-ssh}
[ "$check_only" = 1 ] && rows=${rows//dd/}
variants=${BENCH_VARIANTS:-change nochange}
cache=${BENCH_CACHE:-/var/tmp/blkmirror-rsync-bench}
work=${BENCH_WORK:-$cache/work-n$n}
if [ -z "$csv" ]; then
    mkdir -p "$cache/results"
    csv=$cache/results/n$n-$cache_mode-$(date +%Y%m%dT%H%M%S).csv
fi
want() { [[ " $rows " == *" $1 "* ]]; }
want_variant() { [[ " $variants " == *" $1 "* ]]; }
if want floor; then
    [ "${BENCH_SNAPSHOT:-none}" = reflink ] && want blkmirror-local && want_variant change ||
        die "the floor row needs BENCH_SNAPSHOT=reflink (bench/rsync/on-xfs.sh), blkmirror-local and the change cycle"
    require_tool xfs_io xfsprogs
    require_tool fio fio
fi

require_root
require_tool rsync rsync
require_tool /usr/sbin/sshd openssh-server
require_tool ssh openssh-client
require_tool ssh-keygen openssh-client
require_tool mkfs.ext4 e2fsprogs
require_tool losetup mount
require_tool /usr/bin/time time
require_tool python3 python3
require_tool cmp diffutils
require_tool unshare util-linux
clk_tck=$(getconf CLK_TCK)

# The whole run happens in a private network namespace (same PID: unshare execs), whose
# loopback carries only this benchmark's traffic: other processes on 127.0.0.1 (a test suite,
# say) would otherwise be counted as bytes on the wire. Its lo starts down: bring it up.
if [ "${BENCH_NETNS:-}" != private ]; then
    BENCH_NETNS=private exec unshare --net -- bash "$0" "${args[@]}"
fi
python3 -c '
import fcntl, socket, struct
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
flags = struct.unpack("16sH", fcntl.ioctl(s, 0x8913, struct.pack("16sH", b"lo", 0))[:18])[1]
fcntl.ioctl(s, 0x8914, struct.pack("16sH", b"lo", flags | 1))  # SIOCSIFFLAGS |= IFF_UP
' || die "could not bring up lo in the private network namespace"

# CPU time of both ends: the system-wide busy time from /proc/stat counts every other job on
# the machine too, so the run also moves itself into a cgroup of its own in the cgroup v2
# hierarchy (under its root, with no controller enabled: accounting only) and reads
# cpu.stat's usage_usec: every process the benchmark starts (both tools' ends, ssh, the sshd
# serving the session) inherits it. Kernel threads working for it (loop device I/O,
# writeback) are not counted there. BENCH_CGROUP=0 turns it off (the column stays empty).
CG=""
CG_ORIG=""
setup_cgroup() {
    local root rel
    [ "${BENCH_CGROUP:-1}" = 1 ] || return 0
    root=$(awk '$3 == "cgroup2" {print $2; exit}' /proc/mounts)
    rel=$(awk -F: '$1 == "0" {print $3; exit}' /proc/self/cgroup)
    [ -n "$root" ] && [ -n "$rel" ] && [ -w "$root/cgroup.procs" ] || return 0
    CG_ORIG=$root${rel%/}
    CG=$root/blkmirror-bench-$$
    if mkdir "$CG" 2> /dev/null && echo $$ > "$CG/cgroup.procs" 2> /dev/null && [ -r "$CG/cpu.stat" ]; then
        log "CPU accounting in cgroup $CG"
    else
        rmdir "$CG" 2> /dev/null || true
        CG=""
        log "no cgroup v2 CPU accounting here: the cgroup CPU column stays empty"
    fi
}
release_cgroup() {
    [ -n "$CG" ] || return 0
    echo $$ > "$CG_ORIG/cgroup.procs" 2> /dev/null || true
    rmdir "$CG" 2> /dev/null || log "warning: could not remove cgroup $CG"
    CG=""
}
cg_usec() { if [ -n "$CG" ]; then awk '$1 == "usage_usec" {print $2}' "$CG/cpu.stat"; fi; }

# ---------------------------------------------------------------------------------------------
# Clean-up: everything this script starts or attaches is released here, by PID or by path.
# ---------------------------------------------------------------------------------------------
SSHD_PID=""
RECV_PID=""
stop_pid() {
    local pid=$1 i
    [ -n "$pid" ] || return 0
    kill -TERM "$pid" 2> /dev/null || return 0
    for i in $(seq 100); do
        kill -0 "$pid" 2> /dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2> /dev/null || true
    wait "$pid" 2> /dev/null || true
}
cleanup() {
    local rc=$?
    stop_pid "$RECV_PID"
    stop_pid "$SSHD_PID"
    release_mounts
    release_cgroup
    if [ "${BENCH_KEEP_WORK:-0}" != 1 ] && [ -n "${work:-}" ] && [ -d "$work" ]; then
        rm -rf "$work"
    fi
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
setup_cgroup

# ---------------------------------------------------------------------------------------------
# Fixture and scratch images
# ---------------------------------------------------------------------------------------------
base=$(bash "$here/build-image.sh" "$n" "$seed" | tail -1)
[ -f "$base" ] || die "build-image.sh did not produce an image"
rm -rf "$work"
mkdir -p "$work/state" "$work/logs" "$work/bin"
# A private copy of the binary: a rebuild during the run must not swap it between rows.
cp "$bin_origin" "$work/bin/blkmirror"
bin=$work/bin/blkmirror
bin_a=$bin
if [ -n "${BLKMIRROR_B:-}" ]; then
    cp "$BLKMIRROR_B" "$work/bin/blkmirror-b"
    bin_b=$work/bin/blkmirror-b
fi
tool=blkmirror
img_bytes=$(stat -c %s "$base")

# reset FILE: makes FILE a fresh copy of the base image (untimed).
reset() { cp --sparse=always "$base" "$1"; }

log "scratch copies of $base in $work"
want_variant change && reset "$work/src-change.img"
want_variant nochange && reset "$work/src-nochange.img"
reset "$work/dst.img"      # blkmirror's target
reset "$work/rdst.img"     # rsync's destination filesystem (its tree is the pre-mutation tree)

# ---------------------------------------------------------------------------------------------
# sshd on 127.0.0.1 (own keys, root by key only) and TLS identities
# ---------------------------------------------------------------------------------------------
free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

SSH_PORT=""
start_sshd() {
    local d=$work/ssh attempt port i
    mkdir -p "$d" /run/sshd
    ssh-keygen -q -t ed25519 -N "" -C blkmirror-bench -f "$d/host_key"
    ssh-keygen -q -t ed25519 -N "" -C blkmirror-bench -f "$d/user_key"
    cp "$d/user_key.pub" "$d/authorized_keys"
    for attempt in 1 2 3 4 5 6 7 8; do
        port=$(free_port)
        cat > "$d/sshd_config" <<CFG
Port $port
ListenAddress 127.0.0.1
HostKey $d/host_key
AuthorizedKeysFile $d/authorized_keys
PermitRootLogin yes
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
StrictModes no
UsePAM no
UseDNS no
PidFile $d/sshd.pid
LogLevel INFO
CFG
        : > "$d/sshd.log"
        /usr/sbin/sshd -D -e -f "$d/sshd_config" 2> "$d/sshd.log" &
        SSHD_PID=$!
        for i in $(seq 300); do
            grep -q "Server listening on 127.0.0.1 port $port" "$d/sshd.log" && break
            kill -0 "$SSHD_PID" 2> /dev/null || break
            sleep 0.1
        done
        if grep -q "Server listening on 127.0.0.1 port $port" "$d/sshd.log"; then
            SSH_PORT=$port
            break
        fi
        stop_pid "$SSHD_PID"
        SSHD_PID=""
        grep -q "Address already in use" "$d/sshd.log" || { cat "$d/sshd.log" >&2; die "sshd did not start"; }
    done
    [ -n "$SSH_PORT" ] || die "sshd could not bind a port"
    SSH_CMD="ssh -i $d/user_key -o IdentitiesOnly=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o BatchMode=yes -o LogLevel=ERROR -o Compression=no"
    $SSH_CMD -p "$SSH_PORT" root@127.0.0.1 true || die "ssh to the benchmark's sshd failed (log: $d/sshd.log)"
    log "sshd (pid $SSHD_PID) on 127.0.0.1:$SSH_PORT"
}
if want rsync-ssh || want blkmirror-ssh; then start_sshd; fi

if want blkmirror-tls; then
    SND_FP=$("$bin" keygen "$work/tls-sender" 2> /dev/null | tail -1)
    RCV_FP=$("$bin" keygen "$work/tls-receiver" 2> /dev/null | tail -1)
    [ -n "$SND_FP" ] && [ -n "$RCV_FP" ] || die "blkmirror keygen printed no fingerprint"
fi

# ---------------------------------------------------------------------------------------------
# blkmirror: commands, receiver, priming
# ---------------------------------------------------------------------------------------------
TLS_PORT=0
# start_receiver STATE_DIR: starts the TLS receiver on 127.0.0.1:$TLS_PORT (0 the first time:
# the port it announces is kept, so the sender's destination, and thus its state key, is the
# same in every run) and waits for its `listening on ADDR` line.
start_receiver() {
    local state=$1 i line=""
    # Empty the file now: the child truncates it only after the fork, and the loop below must
    # not read the previous receiver's line meanwhile.
    : > "$work/logs/receiver.out"
    "$bin" receive "$work/dst.img" --listen "127.0.0.1:$TLS_PORT" --identity "$work/tls-receiver" \
        --allow-peer "$SND_FP" --state-dir "$state" \
        > "$work/logs/receiver.out" 2>> "$work/logs/receiver.err" &
    RECV_PID=$!
    for i in $(seq 600); do
        line=$(head -1 "$work/logs/receiver.out" 2> /dev/null || true)
        [ -n "$line" ] && break
        kill -0 "$RECV_PID" 2> /dev/null || break
        sleep 0.1
    done
    [[ $line == "listening on 127.0.0.1:"* ]] || {
        cat "$work/logs/receiver.err" >&2
        die "receiver did not announce 'listening on ADDR' (got '$line')"
    }
    TLS_PORT=${line##*:}
}
# stop_receiver: sets RECV_HWM to the receiver's peak RSS (VmHWM, KiB), then stops it.
stop_receiver() {
    RECV_HWM=$(awk '/^VmHWM:/ {print $2}' "/proc/$RECV_PID/status" 2> /dev/null || true)
    stop_pid "$RECV_PID"
    RECV_PID=""
}

# send_cmd TRANSPORT SOURCE_IMAGE STATE_DIR: fills the array CMD with the send command.
send_cmd() {
    local transport=$1 src=$2 state=$3
    CMD=("$bin" send --once --snapshot "${BENCH_SNAPSHOT:-none}" --progress never --json --state-dir "$state/send")
    case $transport in
        local) CMD+=("${extra[@]}" "$src" "$work/dst.img") ;;
        tls) CMD+=(--identity "$work/tls-sender" --peer "$RCV_FP" "${extra[@]}" "$src" "tls://127.0.0.1:$TLS_PORT") ;;
        ssh) CMD+=(--create --ssh-command "$SSH_CMD"
                   --remote-command "/usr/bin/time -f %M -o $work/remote-rss $bin"
                   --remote-state-dir "$state/recv" "${extra[@]}"
                   "$src" "ssh://root@127.0.0.1:$SSH_PORT$work/dst.img") ;;
    esac
}

# prime TRANSPORT VARIANT: one untimed cycle of the unchanged source image, so that both ends'
# state dirs hold the manifest of the pre-mutation image, as in a mirror's steady state; the
# state dirs are then kept as `.primed` and restored before each timed run.
prime() {
    local transport=$1 variant=$2 state=$work/state/$1-$2
    mkdir -p "$state/send" "$state/recv"
    [ "$transport" = tls ] && start_receiver "$state/recv"
    send_cmd "$transport" "$work/src-$variant.img" "$state"
    if ! "${CMD[@]}" > "$work/logs/prime-$transport-$variant.json" 2> "$work/logs/prime-$transport-$variant.err"; then
        cat "$work/logs/prime-$transport-$variant.err" >&2
        die "priming cycle failed: ${CMD[*]}"
    fi
    [ "$transport" = tls ] && stop_receiver
    cp -a "$state" "$state.primed"
}

for variant in $variants; do
    for transport in local tls ssh; do
        want "blkmirror-$transport" || continue
        log "priming blkmirror over $transport ($variant): one untimed cycle of the unchanged image"
        prime "$transport" "$variant"
    done
done

# ---------------------------------------------------------------------------------------------
# The changes: a seeded rewrite of $count files through a mount; a mount/umount only
# ---------------------------------------------------------------------------------------------
if want_variant change; then
    log "rewriting $count files in place in src-change.img"
    mount_image "$work/src-change.img" "$work/mnt-src" rw,noatime off
    python3 "$here/mutate.py" "$work/mnt-src" $(( seed * 1000 + 999 )) --rewrite "$count"
    umount_image "$work/mnt-src"
fi
if want_variant nochange; then
    log "mount/umount only of src-nochange.img"
    mount_image "$work/src-nochange.img" "$work/mnt-src" rw,noatime off
    umount_image "$work/mnt-src"
fi

# ---------------------------------------------------------------------------------------------
# Measurement
# ---------------------------------------------------------------------------------------------
busy_jiffies() { awk '/^cpu / {print $2 + $3 + $4 + $7 + $8; exit}' /proc/stat; }
# Loopback tx bytes of this network namespace (/proc/net/dev is per namespace; /sys/class/net
# shows the namespace that mounted /sys). Each byte sent on lo is counted once.
lo_tx() { awk '/^ *lo:/ {sub(/^ *lo:/, ""); print $9}' /proc/net/dev; }

# prepare_cache PATH...: cold: flush and drop every cache; warm: read PATHs (files, or every
# file under a directory) into the page cache; asis: nothing.
prepare_cache() {
    case $cache_mode in
        cold) sync; echo 3 > /proc/sys/vm/drop_caches ;;
        warm)
            local p
            for p in "$@"; do
                if [ -d "$p" ]; then
                    find "$p" -type f -print0 | xargs -0 -r -P 8 -n 256 cat > /dev/null
                else
                    cat "$p" > /dev/null
                fi
            done ;;
    esac
}

# measure LABEL COMMAND...: runs COMMAND once (stdout to $work/logs/LABEL.out, stderr to .err)
# and sets RC, WALL (s), BUSY (system-wide busy CPU s from /proc/stat: both ends, ssh, sshd,
# kernel, and any other job on the machine), CGCPU (CPU s of the benchmark's cgroup: both
# ends, ssh, sshd), SCPU (CPU s of the command and its waited-for children), SRSS (peak RSS
# KiB of the command or its largest child), LO (loopback tx bytes).
measure() {
    local label=$1; shift
    local b0 b1 x0 x1 t0 t1 c0 c1 u s m
    OUT=$work/logs/$label.out
    ERR=$work/logs/$label.err
    b0=$(busy_jiffies); x0=$(lo_tx); t0=$(date +%s.%N); c0=$(cg_usec)
    set +e
    /usr/bin/time -f '%U %S %M' -o "$work/time.out" "$@" > "$OUT" 2> "$ERR"
    RC=$?
    set -e
    c1=$(cg_usec); t1=$(date +%s.%N); x1=$(lo_tx); b1=$(busy_jiffies)
    WALL=$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.2f", b - a}')
    BUSY=$(awk -v a="$b0" -v b="$b1" -v hz="$clk_tck" 'BEGIN {printf "%.2f", (b - a) / hz}')
    CGCPU=""
    [ -n "$c0" ] && [ -n "$c1" ] && CGCPU=$(awk -v a="$c0" -v b="$c1" 'BEGIN {printf "%.2f", (b - a) / 1e6}')
    read -r u s m < <(tail -1 "$work/time.out")
    SCPU=$(awk -v u="$u" -v s="$s" 'BEGIN {printf "%.2f", u + s}')
    SRSS=$m
    LO=$(( x1 - x0 ))
}

echo "n_files,files_rewritten,cache,run,variant,tool,transport,wall_s,busy_cpu_s,cgroup_cpu_s,sender_cpu_s,sender_rss_kib,receiver_rss_kib,bytes,bytes_counted_as,tool_bytes,exit,correct,detail" > "$csv"
# emit VARIANT TOOL TRANSPORT RECEIVER_RSS BYTES BYTES_AS TOOL_BYTES CORRECT DETAIL
emit() {
    local detail=${9//,/;}
    echo "$n,$count,$cache_mode,$rep,$1,$2,$3,$WALL,$BUSY,$CGCPU,$SCPU,$SRSS,$4,$5,$6,$7,$RC,$8,$detail" >> "$csv"
    log "  $2 $3 $1: wall ${WALL}s, CPU ${CGCPU:-?}s (machine busy ${BUSY}s), bytes $5 ($6), correct: $8"
}

# treecmp_images A.img B.img: mounts both read-only (buffered loop devices) and compares
# their trees.
treecmp_images() {
    local ok=0
    mount_image "$1" "$work/mnt-a" ro,noatime off
    mount_image "$2" "$work/mnt-b" ro,noatime off
    python3 "$here/treecmp.py" "$work/mnt-a" "$work/mnt-b" >> "$work/logs/treecmp.log" 2>&1 || ok=1
    umount_image "$work/mnt-a"
    umount_image "$work/mnt-b"
    return $ok
}

json_field() { # json_field FILE KEY: KEY of the last JSON line of FILE
    python3 -c 'import json, sys
lines = [l for l in open(sys.argv[1]) if l.startswith("{")]
print(json.loads(lines[-1]).get(sys.argv[2], "") if lines else "")' "$1" "$2" 2> /dev/null || true
}

row_dd() {
    prepare_cache
    measure "dd-$rep" dd if="$work/src-change.img" of=/dev/null bs=4M iflag=direct
    local copied correct=false
    copied=$(grep -o '^[0-9]* bytes' "$ERR" | cut -d' ' -f1 || true)
    [ "$RC" = 0 ] && [ "$copied" = "$img_bytes" ] && correct=true
    emit floor dd "read iflag=direct" "" "" "" "" "$correct" "read $copied of $img_bytes bytes"
}

# row_floor: freeze, find and move the change with nothing else (floor.py), from the kept
# clone of blkmirror-local's primed state to a fresh copy of the target.
row_floor() {
    local kept detail bytes correct=false
    kept=$(find "$work/state/local-change.primed/send/snapshots" -maxdepth 1 -type f | head -1)
    [ -n "$kept" ] || die "the floor row found no kept clone in blkmirror-local's primed state"
    reset "$work/floor-dst.img"
    rm -f "$work/floor-clone.img"
    prepare_cache
    measure "floor-$rep" python3 "$here/floor.py" "$kept" "$work/src-change.img" \
        "$work/floor-clone.img" "$work/floor-dst.img"
    detail=$(tail -1 "$OUT")
    bytes=$(sed -n 's/^floor: [0-9]* ranges, \([0-9]*\) bytes.*/\1/p' "$OUT")
    [ "$RC" = 0 ] && [ -n "$bytes" ] && correct=true
    [ "$RC" = 0 ] || { tail -5 "$ERR" >&2; detail="exit $RC"; }
    emit change floor "clone + changed extents" "" "$bytes" "changed extents read and written" \
        "" "$correct" "$detail"
}

row_rsync() {
    local transport=$1 variant=$2 label=rsync-$1-$2-$rep rrss="" bytes as sent correct=false detail
    reset "$work/rdst.img"
    mount_image "$work/src-$variant.img" "$work/mnt-src" ro,noatime
    mount_image "$work/rdst.img" "$work/mnt-dst" rw,noatime
    prepare_cache "$work/mnt-src" "$work/mnt-dst"
    if [ "$transport" = local ]; then
        measure "$label" rsync -a --delete --stats "$work/mnt-src/" "$work/mnt-dst/"
    else
        rm -f "$work/remote-rss"
        measure "$label" rsync -a --delete --stats -e "$SSH_CMD -p $SSH_PORT" \
            --rsync-path "/usr/bin/time -f %M -o $work/remote-rss rsync" \
            "$work/mnt-src/" "root@127.0.0.1:$work/mnt-dst/"
        rrss=$(tail -1 "$work/remote-rss" 2> /dev/null || true)
    fi
    umount_image "$work/mnt-dst"
    umount_image "$work/mnt-src"
    sent=$(awk -F': ' '/^Total bytes sent:/ {gsub(/[,.]/, "", $2); print $2}' "$OUT")
    if [ "$transport" = local ]; then bytes=$sent; as="rsync --stats sent"; else bytes=$LO; as="lo tx_bytes"; fi
    if [ "$RC" != 0 ]; then
        tail -5 "$ERR" >&2
        detail="exit $RC"
    elif [ "$rep" != 1 ] || [ "${BENCH_TREECMP:-1}" = 0 ]; then
        correct=true
        detail="trees not compared in this run"
        [ "$rep" != 1 ] && detail="trees compared in run 1 only"
    elif ! treecmp_images "$work/src-$variant.img" "$work/rdst.img"; then
        tail -3 "$work/logs/treecmp.log" >&2
        detail="trees differ"
    else
        correct=true
        detail="trees equal"
    fi
    [ "$transport" = local ] && detail="$detail; RSS is the largest rsync process"
    emit "$variant" rsync "$transport" "$rrss" "$bytes" "$as" "$sent" "$correct" "$detail"
}

row_blkmirror() {
    local transport=$1 variant=$2 label=$tool-$1-$2-$rep state=$work/state/$1-$2
    local rrss="" bytes as sent correct=false detail changed based
    reset "$work/dst.img"
    rm -rf "$state"
    cp -a "$state.primed" "$state"
    # The reset rewrote the target, so its fingerprint (mtime, ctime) is no longer the one the
    # primed receiver state recorded, and the receiver would rightly re-hash all of it. In a
    # mirror's steady state nothing touches the target between cycles: an untimed scrub (it
    # finds nothing differing) records the new fingerprint, as that state would hold it.
    local recv_state=$state/recv
    [ "$transport" = local ] && recv_state=$state/send
    "$bin" scrub --state-dir "$recv_state" "$work/dst.img" > "$work/logs/$label.scrub" 2>&1 ||
        die "the untimed scrub of the reset target failed (see $work/logs/$label.scrub)"
    [ "$transport" = tls ] && start_receiver "$state/recv"
    send_cmd "$transport" "$work/src-$variant.img" "$state"
    prepare_cache "$work/src-$variant.img" "$work/dst.img"
    rm -f "$work/remote-rss"
    measure "$label" "${CMD[@]}"
    case $transport in
        local) rrss="" ;;
        tls) stop_receiver; rrss=$RECV_HWM ;;
        ssh) rrss=$(tail -1 "$work/remote-rss" 2> /dev/null || true) ;;
    esac
    sent=$(json_field "$OUT" bytes_sent)
    changed=$(json_field "$OUT" blocks_changed)
    based=$(json_field "$OUT" base)
    if [ "$transport" = local ]; then bytes=$sent; as="blkmirror bytes_sent"; else bytes=$LO; as="lo tx_bytes"; fi
    detail="blocks_changed=$changed; base=$based"
    if [ "$RC" != 0 ]; then
        tail -5 "$ERR" >&2
        detail="exit $RC; $detail"
    elif ! cmp -s "$work/src-$variant.img" "$work/dst.img"; then
        detail="images differ; $detail"
    elif [ "$rep" != 1 ] || [ "${BENCH_TREECMP:-1}" = 0 ]; then
        correct=true
        detail="images identical; $detail"
    elif ! treecmp_images "$work/src-$variant.img" "$work/dst.img"; then
        tail -3 "$work/logs/treecmp.log" >&2
        detail="trees differ; $detail"
    else
        correct=true
        detail="images identical; trees equal; $detail"
    fi
    [ "$transport" = local ] && detail="$detail; receiver in-process"
    emit "$variant" "$tool" "$transport" "$rrss" "$bytes" "$as" "$sent" "$correct" "$detail"
}

log "timed runs ($cache_mode cache), $n files, $count rewritten, $repeat run(s) of each"
for rep in $(seq "$repeat"); do
    want dd && want_variant change && row_dd
    want floor && row_floor
    for variant in $variants; do
        for transport in local ssh; do
            want "rsync-$transport" && row_rsync "$transport" "$variant"
        done
        for transport in local tls ssh; do
            want "blkmirror-$transport" || continue
            if [ -n "${BLKMIRROR_B:-}" ]; then
                bin=$bin_b tool=blkmirror-b
                row_blkmirror "$transport" "$variant"
                bin=$bin_a tool=blkmirror
            fi
            row_blkmirror "$transport" "$variant"
        done
    done
done

# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------
echo "## blkmirror vs rsync: $n files, $count rewritten, $cache_mode cache"
echo
echo "image $(( img_bytes / 1048576 )) MiB ($(du -m "$base" | cut -f1) MiB allocated), $(nproc) CPUs," \
     "kernel $(uname -r), $(rsync --version | head -1 | awk '{print "rsync", $3}')," \
     "$("$bin" --version), send flags: ${BLKMIRROR_ARGS:-(defaults)}"
echo
python3 "$here/table.py" "$csv"
echo
echo "CSV: $csv"
log "CSV written to $csv"
if grep -q ',false,' "$csv"; then
    log "SOME ROWS ARE NOT CORRECT (logs kept in $work)"
    BENCH_KEEP_WORK=1
    exit 1
fi
