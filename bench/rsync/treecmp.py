#!/usr/bin/env python3
"""Compare two directory trees: names, types, sizes, contents and the metadata `rsync -a`
preserves (mode, owner, group, mtime of files, symlink targets).

    treecmp.py A B

Exit 0 and one summary line if they are equal; exit 1 and the first differences otherwise.
Directory mtimes and atimes are not compared (reading a tree may change them on a mount
without noatime, and lost+found is never touched by rsync anyway).
"""
import os
import stat
import sys
from concurrent.futures import ThreadPoolExecutor

CHUNK = 1 << 20
MAX_REPORTED = 20
THREADS = 16


def same_content(pair):
    """(rel, bytes compared, equal?) for one pair of regular files."""
    r, pa, pb = pair
    n = 0
    with open(pa, "rb") as fa, open(pb, "rb") as fb:
        while True:
            ca, cb = fa.read(CHUNK), fb.read(CHUNK)
            if ca != cb:
                return r, n, False
            if not ca:
                return r, n, True
            n += len(ca)


def main() -> int:
    if len(sys.argv) != 3:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    a_root, b_root = sys.argv[1], sys.argv[2]
    diffs = []
    pairs = []
    files = dirs = nbytes = 0

    def differ(rel, what):
        diffs.append("%s: %s" % (rel or ".", what))

    stack = [""]
    while stack and len(diffs) < MAX_REPORTED:
        rel = stack.pop()
        a_dir = os.path.join(a_root, rel)
        b_dir = os.path.join(b_root, rel)
        a_names = set(os.listdir(a_dir))
        b_names = set(os.listdir(b_dir))
        for name in sorted(a_names - b_names):
            differ(os.path.join(rel, name), "only in %s" % a_root)
        for name in sorted(b_names - a_names):
            differ(os.path.join(rel, name), "only in %s" % b_root)
        dirs += 1
        for name in sorted(a_names & b_names):
            r = os.path.join(rel, name)
            pa, pb = os.path.join(a_root, r), os.path.join(b_root, r)
            sa, sb = os.lstat(pa), os.lstat(pb)
            if stat.S_IFMT(sa.st_mode) != stat.S_IFMT(sb.st_mode):
                differ(r, "file types differ")
                continue
            if (sa.st_mode, sa.st_uid, sa.st_gid) != (sb.st_mode, sb.st_uid, sb.st_gid):
                differ(r, "mode/owner differ: %o %d:%d vs %o %d:%d"
                       % (sa.st_mode, sa.st_uid, sa.st_gid, sb.st_mode, sb.st_uid, sb.st_gid))
            if stat.S_ISDIR(sa.st_mode):
                stack.append(r)
            elif stat.S_ISLNK(sa.st_mode):
                if os.readlink(pa) != os.readlink(pb):
                    differ(r, "symlink targets differ")
            elif stat.S_ISREG(sa.st_mode):
                files += 1
                if sa.st_size != sb.st_size:
                    differ(r, "sizes differ: %d vs %d" % (sa.st_size, sb.st_size))
                    continue
                if sa.st_mtime_ns != sb.st_mtime_ns:
                    differ(r, "mtimes differ: %d vs %d" % (sa.st_mtime_ns, sb.st_mtime_ns))
                pairs.append((r, pa, pb))
    # Contents last, by a pool of threads: small files on a loop device are read one I/O at a
    # time, so parallel reads are what makes this fast (file reads release the GIL).
    with ThreadPoolExecutor(max_workers=THREADS) as pool:
        for r, size, same in pool.map(same_content, pairs, chunksize=64):
            if same:
                nbytes += size
            else:
                differ(r, "contents differ")
    if diffs:
        for d in diffs[:MAX_REPORTED]:
            print("treecmp: " + d, file=sys.stderr)
        print("treecmp: %s and %s DIFFER" % (a_root, b_root))
        return 1
    print("treecmp: equal: %d files, %d directories, %d bytes" % (files, dirs, nbytes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
