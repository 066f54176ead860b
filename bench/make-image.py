#!/usr/bin/env python3
"""Writes a seeded sample image: 64 KiB pieces, 40% random bytes (like compressed files),
30% text-like, 30% zeros. Usage: make-image.py PATH SIZE_MIB [SEED]"""
import random
import sys

PIECE = 64 * 1024
WORDS = [b"From: ", b"Subject: ", b"index.html ", b"\n", b"the quick ", b"brown fox ", b"<div>", b"0123456789 "]


def main():
    path, size_mib = sys.argv[1], int(sys.argv[2])
    rng = random.Random(int(sys.argv[3]) if len(sys.argv) > 3 else 2026)
    text = b"".join(rng.choice(WORDS) for _ in range(40000))
    zeros = bytes(PIECE)
    with open(path, "wb") as out:
        for _ in range(size_mib * 1024 * 1024 // PIECE):
            kind = rng.random()
            if kind < 0.4:
                out.write(rng.randbytes(PIECE))
            elif kind < 0.7:
                start = rng.randrange(len(text) - PIECE)
                out.write(text[start:start + PIECE])
            else:
                out.write(zeros)


if __name__ == "__main__":
    main()
