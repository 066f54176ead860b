#!/usr/bin/env python3
"""Write the benchmark's file tree: N small files, seeded and reproducible.

    make-fixture.py N OUT_TREE SEED

Files are named OUT_TREE/dNNNN/fNNNNNNN (1000 files per directory). Each file's size is drawn
uniformly from 256..8192 bytes (mean ~4 KiB) and its bytes are drawn independently from a
seeded generator (random.Random(SEED)), so no two files share data and the tree does not
compress better than real data would. Every file gets the same fixed mtime, so that the
tree's content and metadata depend only on N and SEED. OUT_TREE must not exist yet.
"""
import os
import random
import sys

FILES_PER_DIR = 1000
MIN_SIZE, MAX_SIZE = 256, 8192
# 2024-01-01T00:00:00Z: a fixed mtime for every file and directory.
FIXED_MTIME = 1704067200


def main() -> int:
    if len(sys.argv) != 4:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    n = int(sys.argv[1])
    out = sys.argv[2]
    seed = int(sys.argv[3])
    if n < 1:
        print("make-fixture: N must be at least 1", file=sys.stderr)
        return 2
    os.makedirs(out)
    rng = random.Random(seed)
    total = 0
    dirs = []
    for i in range(n):
        if i % FILES_PER_DIR == 0:
            d = os.path.join(out, "d%04d" % (i // FILES_PER_DIR))
            os.mkdir(d)
            dirs.append(d)
        size = rng.randint(MIN_SIZE, MAX_SIZE)
        path = os.path.join(d, "f%07d" % i)
        with open(path, "wb") as f:
            f.write(rng.randbytes(size))
        os.utime(path, (FIXED_MTIME, FIXED_MTIME))
        total += size
    for d in dirs + [out]:
        os.utime(d, (FIXED_MTIME, FIXED_MTIME))
    print("make-fixture: %d files in %d directories, %d bytes" % (n, len(dirs), total),
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
