#!/usr/bin/env bash
# Builds (once) and caches the benchmark's base image: an aged ext4 filesystem holding N small
# files, and prints its path as the last line of stdout.
#
#   bench/rsync/build-image.sh N [SEED=1]
#
# Steps: make-fixture.py writes the tree (N files of 256 B-8 KiB, independent random bytes,
# 1000 per directory); mkfs.ext4 -d copies it into a sparse image (10 GiB per 1,000,000 files,
# at least 256 MiB) with enough inodes (-N) and the inode tables and journal initialised now
# (lazy_*_init=0: otherwise the kernel zeroes them in the background after the first mount);
# then the filesystem is aged: AGING_ROUNDS rounds, each a `mount -o noatime` of a loop device,
# rewrite 2% of the files in place (new content and size), delete 1%, create 1%, unmount.
# `mkfs -d` alone builds a perfectly ordered young filesystem, which flatters rsync.
# Finally `e2fsck -fn` checks the result.
#
# Cache: $BENCH_CACHE (default /var/tmp/blkmirror-rsync-bench), file
# base-v1-n<N>-s<SEED>-a<ROUNDS>.img. Delete it to rebuild. Needs root (loop devices, mount).
# Environment: BENCH_CACHE, BENCH_AGING_ROUNDS (default 3).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"

[ $# -ge 1 ] && [ $# -le 2 ] || die "usage: $0 N [SEED]"
n=$1
seed=${2:-1}
[[ $n =~ ^[0-9]+$ ]] && [ "$n" -ge 1 ] || die "N must be a positive integer, got '$n'"
[[ $seed =~ ^[0-9]+$ ]] || die "SEED must be a non-negative integer, got '$seed'"
rounds=${BENCH_AGING_ROUNDS:-3}
cache=${BENCH_CACHE:-/var/tmp/blkmirror-rsync-bench}
name=base-v1-n$n-s$seed-a$rounds
img=$cache/$name.img

if [ -f "$img" ]; then
    log "using cached base image $img"
    echo "$img"
    exit 0
fi
require_root
require_tool mkfs.ext4 e2fsprogs
require_tool e2fsck e2fsprogs
require_tool losetup mount
require_tool python3 python3
mkdir -p "$cache"
# One builder per cache at a time; a second one waits, then finds the image.
exec 9> "$cache/.build.lock"
flock 9
if [ -f "$img" ]; then
    echo "$img"
    exit 0
fi

tmp=$cache/$name.img.part
tree=$cache/$name.tree.part
mnt=$cache/$name.mnt.part
trap 'release_mounts; rm -rf "$tree"' EXIT
rm -rf "$tree" "$tmp"

t0=$SECONDS
log "writing $n files to $tree (seed $seed)"
python3 "$here/make-fixture.py" "$n" "$tree" "$seed"

bytes=$(image_bytes "$n")
inodes=$(( (n * 11 + 9) / 10 ))
[ "$inodes" -ge 1024 ] || inodes=1024
log "mkfs.ext4 -d: $((bytes / 1048576)) MiB sparse image, $inodes inodes"
truncate -s "$bytes" "$tmp"
mkfs.ext4 -q -F -b 4096 -I 256 -N "$inodes" \
    -E lazy_itable_init=0,lazy_journal_init=0 -d "$tree" "$tmp"
rm -rf "$tree"

for round in $(seq "$rounds"); do
    log "aging round $round/$rounds: rewrite 2%, delete 1%, create 1%"
    mount_image "$tmp" "$mnt" rw,noatime
    python3 "$here/mutate.py" "$mnt" $(( seed * 1000 + round )) --rewrite 2% --delete 1% --create 1%
    umount_image "$mnt"
done
rmdir "$mnt" 2> /dev/null || true

log "e2fsck -fn"
e2fsck -fn "$tmp" > "$cache/$name.fsck.log" 2>&1 || { cat "$cache/$name.fsck.log" >&2; die "e2fsck found errors in $tmp"; }
mv "$tmp" "$img"
log "built $img in $((SECONDS - t0)) s ($(du -h "$img" | cut -f1) allocated)"
echo "$img"
