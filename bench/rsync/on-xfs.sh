#!/usr/bin/env bash
# The rsync benchmark with the image files on xfs and blkmirror's reflink snapshots, so that
# its reflink change tracker (FIEMAP of the kept clone against the new one) says what changed
# and a cycle reads only that. Same arguments as run.sh; rows dd, floor (the least any
# snapshot-based mirror must do for the change: floor.py), rsync-local and blkmirror-local
# unless BENCH_ROWS says otherwise.
#
#   bench/rsync/on-xfs.sh 1000000 --repeat 3
#
# Makes an xfs file system on a loop device backed by a sparse file in BENCH_CACHE (size
# BENCH_XFS_SIZE, default 48G: the run keeps three copies of the image there), mounts it, runs
# run.sh with BENCH_WORK on it and BENCH_SNAPSHOT=reflink, and removes it all afterwards. The
# primed state (with its kept clone) is copied with `cp -a`, which reflinks on xfs (coreutils
# >= 9.0), so every timed run starts from a clone of the pre-mutation image. The run's logs are
# copied to BENCH_CACHE/last-logs before the xfs goes.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"
require_root
require_tool mkfs.xfs xfsprogs
cache=${BENCH_CACHE:-/var/tmp/blkmirror-rsync-bench}
mkdir -p "$cache"
backing=$cache/xfs-backing.img
mnt=$cache/xfs
loopdev=""
cleanup() {
    local rc=$?
    # The run's logs live on the xfs that is about to go: keep a copy of them.
    if [ -d "$mnt/work/logs" ]; then
        rm -rf "$cache/last-logs" && cp -a "$mnt/work/logs" "$cache/last-logs"
    fi
    mountpoint -q "$mnt" && umount "$mnt"
    [ -n "$loopdev" ] && losetup -d "$loopdev"
    rm -f "$backing"
    exit $rc
}
trap cleanup EXIT
rm -f "$backing"
truncate -s "${BENCH_XFS_SIZE:-48G}" "$backing"
mkfs.xfs -q -f "$backing"
loopdev=$(losetup --find --show --direct-io=on "$backing")
mkdir -p "$mnt"
mount "$loopdev" "$mnt"
log "xfs on $loopdev (backed by $backing) at $mnt"
n=${1:-50000}
# The scratch dir is kept (BENCH_KEEP_WORK) so that its logs can be copied: it goes with the xfs.
BENCH_KEEP_WORK=1 BENCH_WORK=$mnt/work BENCH_SNAPSHOT=reflink BENCH_ROWS=${BENCH_ROWS:-dd floor rsync-local blkmirror-local} \
    BENCH_VARIANTS=${BENCH_VARIANTS:-change} bash "$here/run.sh" "$@"
