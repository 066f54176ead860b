#!/usr/bin/env python3
"""Change files in a mounted benchmark tree, seeded and reproducible.

    mutate.py ROOT SEED [--rewrite K] [--delete K] [--create K]

K is a count of files ("500") or a percentage of the files found under ROOT ("1%").
  --rewrite  rewrites K files in place: same inode, new content and a new size
             (256..8192 bytes, never the old size), opened r+ and truncated, not replaced
  --delete   unlinks K files
  --create   creates K new files (same size law) spread over the existing directories
Files are picked by a random.Random(SEED) sample of the sorted list of regular files, so the
same tree and seed always change the same files. Operations run in the order rewrite, delete,
create; a file is rewritten or deleted, never both. Nothing is fsynced: unmount to flush.
"""
import argparse
import os
import random
import sys

MIN_SIZE, MAX_SIZE = 256, 8192


def list_files(root):
    files = []
    dirs = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        if os.path.basename(dirpath) == "lost+found":
            dirnames[:] = []
            continue
        if dirpath != root:
            dirs.append(dirpath)
        for name in sorted(filenames):
            files.append(os.path.join(dirpath, name))
    return files, dirs


def count(spec, total):
    if spec is None:
        return 0
    if spec.endswith("%"):
        return max(1, round(total * float(spec[:-1]) / 100.0)) if float(spec[:-1]) > 0 else 0
    return int(spec)


def main() -> int:
    p = argparse.ArgumentParser(description="change files of a benchmark tree")
    p.add_argument("root")
    p.add_argument("seed", type=int)
    p.add_argument("--rewrite")
    p.add_argument("--delete")
    p.add_argument("--create")
    a = p.parse_args()

    files, dirs = list_files(a.root)
    rng = random.Random(a.seed)
    n_rewrite = count(a.rewrite, len(files))
    n_delete = count(a.delete, len(files))
    n_create = count(a.create, len(files))
    if n_rewrite + n_delete > len(files):
        print("mutate: asked to change %d of %d files" % (n_rewrite + n_delete, len(files)),
              file=sys.stderr)
        return 2
    picked = rng.sample(files, n_rewrite + n_delete)
    written = 0
    for path in picked[:n_rewrite]:
        old = os.stat(path).st_size
        size = old
        while size == old:
            size = rng.randint(MIN_SIZE, MAX_SIZE)
        with open(path, "r+b") as f:
            f.write(rng.randbytes(size))
            f.truncate(size)
        written += size
    for path in picked[n_rewrite:]:
        os.unlink(path)
    if n_create and not dirs:
        dirs = [a.root]
    for i in range(n_create):
        d = dirs[rng.randrange(len(dirs))]
        path = os.path.join(d, "n%d-%07d" % (a.seed, i))
        size = rng.randint(MIN_SIZE, MAX_SIZE)
        with open(path, "xb") as f:
            f.write(rng.randbytes(size))
        written += size
    print("mutate: %d files: rewrote %d, deleted %d, created %d (%d bytes written)"
          % (len(files), n_rewrite, n_delete, n_create, written), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
