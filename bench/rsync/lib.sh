# Shared helpers for bench/rsync/*.sh (sourced, not run). Loop devices and mounts made through
# these helpers are recorded and released by `release_all` (the scripts' EXIT trap), by device
# path and mount point: never by a pattern.

log() { printf '%s %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { printf 'bench/rsync: error: %s\n' "$*" >&2; exit 1; }

require_root() {
    [ "$(id -u)" = 0 ] || die "run as root (loop devices, mount, drop_caches)"
}

# require_tool COMMAND PACKAGE: dies naming the Debian package if COMMAND is missing.
require_tool() {
    command -v "$1" > /dev/null 2>&1 || [ -x "$1" ] || die "$1 not found: install the Debian package $2"
}

declare -A MOUNT_DEV=()

# mount_image IMAGE DIR OPTIONS [DIRECT_IO=on]: attaches IMAGE to a free loop device, by
# default with direct I/O (so that the image is not cached twice, once as the file and once as
# the device: what the timed runs need), and mounts it on DIR. Untimed steps (mutation,
# comparisons) pass off: buffered loop I/O reads ahead in the image file, much faster there.
mount_image() {
    local img=$1 dir=$2 opts=$3 dio=${4:-on} dev="" try
    mkdir -p "$dir"
    for try in 1 2 3 4 5; do
        # Another process may take the free device between find and attach: retry.
        if dev=$(losetup --direct-io="$dio" -f --show "$img" 2> /dev/null); then break; fi
        dev=""
        sleep 0.2
    done
    [ -n "$dev" ] || die "losetup could not attach $img"
    if ! mount -o "$opts" "$dev" "$dir"; then
        losetup -d "$dev" || true
        die "mount -o $opts $dev $dir failed"
    fi
    MOUNT_DEV[$dir]=$dev
}

# umount_image DIR: unmounts DIR and detaches its loop device (retrying while busy).
umount_image() {
    local dir=$1 dev=${MOUNT_DEV[$1]:-} try
    [ -n "$dev" ] || return 0
    for try in $(seq 50); do
        umount "$dir" 2> /dev/null && break
        [ "$try" = 50 ] && { log "umount $dir failed, detaching lazily"; umount -l "$dir" || true; }
        sleep 0.2
    done
    for try in $(seq 50); do
        losetup -d "$dev" 2> /dev/null && break
        # Already detached (autoclear) counts as done.
        losetup "$dev" > /dev/null 2>&1 || break
        [ "$try" = 50 ] && log "warning: could not detach $dev"
        sleep 0.2
    done
    unset "MOUNT_DEV[$dir]"
}

release_mounts() {
    local dir
    for dir in "${!MOUNT_DEV[@]}"; do
        umount_image "$dir"
    done
}

# image_bytes SIZE_OF_1M_FILE_IMAGE N: the fixture image size for N files: 10 GiB per
# 1,000,000 files, at least 256 MiB, rounded up to 4 MiB.
image_bytes() {
    local n=$1
    local mib=$(( (10240 * n + 999999) / 1000000 ))
    [ "$mib" -ge 256 ] || mib=256
    mib=$(( (mib + 3) / 4 * 4 ))
    echo $(( mib * 1048576 ))
}
