#!/usr/bin/env python3
"""The least a snapshot-based block mirror must do for one change, timed in parts: the `floor`
row of bench/rsync/run.sh (with BENCH_SNAPSHOT=reflink, on xfs or btrfs).

    floor.py KEPT SOURCE CLONE TARGET

KEPT is the previous cycle's clone of SOURCE (blkmirror's kept snapshot), CLONE a path for the
new one, TARGET a copy of the mirror's target as it was before the change. In order, each part
done the fastest way at hand:

1. freeze: clone SOURCE to CLONE (FICLONE, what `cp --reflink=always` does);
2. what changed: the extent maps of KEPT and CLONE (`xfs_io -c "fiemap -v"`); every logical
   range whose physical place differs is changed (holes in CLONE are skipped);
3. read exactly those ranges from CLONE: `fio` replaying them with io_uring and O_DIRECT, 16
   in flight (more buys nothing on this disk: docs/benchmarks.md);
4. write as many bytes at the same places in TARGET (`pwrite`, buffered), then fsync it.

Nothing is hashed, compared, compressed, sent or recorded, no part overlaps another, and
nothing is verified: a mirror that must also prove the target right, and say so durably, can
only cost more than this, but for what overlapping reads with writes saves (at most the
shorter of the two). Prints one line of figures. CLONE is removed at the end.
"""
import fcntl
import os
import re
import subprocess
import sys
import time

FICLONE = 0x40049409
IN_FLIGHT = 16


def extents(path):
    """(logical start, logical end, physical start) in bytes of each mapped extent."""
    out = subprocess.run(["xfs_io", "-c", "fiemap -v", path], capture_output=True, text=True,
                         check=True).stdout
    found = []
    for line in out.splitlines():
        m = re.match(r"\s*\d+:\s*\[(\d+)\.\.(\d+)\]:\s*(\S+)", line)
        if m and m[3] != "hole":
            found.append((int(m[1]) * 512, (int(m[2]) + 1) * 512, int(m[3].split("..")[0]) * 512))
    return found


def changed_ranges(old, new):
    """The logical ranges mapped in `new` whose physical place is not the same in `old`."""
    def shift_at(segments, x):
        lo, hi = 0, len(segments)
        while lo < hi:
            mid = (lo + hi) // 2
            if segments[mid][0] <= x:
                lo = mid + 1
            else:
                hi = mid
        if lo and segments[lo - 1][0] <= x < segments[lo - 1][1]:
            return segments[lo - 1][2] - segments[lo - 1][0]
        return None

    bounds = sorted({b for s in old + new for b in (s[0], s[1])})
    ranges = []
    for a, b in zip(bounds, bounds[1:]):
        shift = shift_at(new, a)
        if shift is None or shift_at(old, a) == shift:
            continue
        if ranges and ranges[-1][1] == a:
            ranges[-1][1] = b
        else:
            ranges.append([a, b])
    return ranges


def read_with_fio(path, ranges, scratch):
    """Reads `ranges` of `path` as fio would replay them (O_DIRECT, io_uring, IN_FLIGHT deep)."""
    log = scratch + ".iolog"
    with open(log, "w") as f:
        f.write(f"fio version 2 iolog\n{path} add\n{path} open\n")
        f.writelines(f"{path} read {a} {b - a}\n" for a, b in ranges)
        f.write(f"{path} close\n")
    subprocess.run(["fio", "--name=floor", f"--read_iolog={log}", "--ioengine=io_uring",
                    "--direct=1", f"--iodepth={IN_FLIGHT}", "--replay_no_stall=1",
                    "--output=/dev/null"], check=True)
    os.unlink(log)


def main():
    if len(sys.argv) != 5:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    kept, source, clone, target = sys.argv[1:]
    t0 = time.monotonic()
    with open(source, "rb") as s, open(clone, "wb") as c:
        fcntl.ioctl(c.fileno(), FICLONE, s.fileno())
    t1 = time.monotonic()
    ranges = changed_ranges(extents(kept), extents(clone))
    t2 = time.monotonic()
    read_with_fio(clone, ranges, clone)
    t3 = time.monotonic()
    data = memoryview(os.urandom(max(b - a for a, b in ranges)))
    fd = os.open(target, os.O_WRONLY)
    for a, b in ranges:
        os.pwrite(fd, data[:b - a], a)
    os.fsync(fd)
    os.close(fd)
    t4 = time.monotonic()
    os.unlink(clone)
    print(f"floor: {len(ranges)} ranges, {sum(b - a for a, b in ranges)} bytes; clone {t1 - t0:.2f} s, "
          f"extent maps {t2 - t1:.2f} s, read {t3 - t2:.2f} s, write and fsync {t4 - t3:.2f} s, "
          f"total {t4 - t0:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
