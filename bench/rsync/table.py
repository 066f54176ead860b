#!/usr/bin/env python3
"""Print the CSV of bench/rsync/run.sh (one or several, concatenated) as a markdown table.

    table.py CSV [CSV...]
"""
import csv
import sys


def mib(kib):
    return "%.0f" % (int(kib) / 1024) if kib else "-"


def mb(b):
    return "%.2f" % (int(b) / 1e6) if b else "-"


def main() -> int:
    if len(sys.argv) < 2:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    rows = []
    for path in sys.argv[1:]:
        with open(path, newline="") as f:
            rows.extend(csv.DictReader(f))
    print("| files | cache | cycle | tool | transport | wall s | busy CPU s (all) | sender CPU s "
          "| sender RSS MiB | receiver RSS MiB | bytes MB | counted as | correct |")
    print("|---:|---|---|---|---|---:|---:|---:|---:|---:|---:|---|---|")
    for r in rows:
        rrss = mib(r["receiver_rss_kib"])
        if r["tool"] == "blkmirror" and r["transport"] == "local":
            rrss = "(in-process)"
        elif r["tool"] == "rsync" and r["transport"] == "local":
            rrss = "(max of both)"
        elif r["tool"] == "dd":
            rrss = "-"
        print("| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
            r["n_files"], r["cache"], r["variant"], r["tool"], r["transport"], r["wall_s"],
            r["busy_cpu_s"], r["sender_cpu_s"], mib(r["sender_rss_kib"]), rrss,
            mb(r["bytes"]), r["bytes_counted_as"] or "-", r["correct"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
