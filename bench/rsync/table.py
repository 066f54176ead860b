#!/usr/bin/env python3
"""Print the CSV of bench/rsync/run.sh (one or several, concatenated) as a markdown table.

    table.py CSV [CSV...]

Rows that repeat the same measurement (run.sh --repeat, or several CSVs of one setup) are
merged: the median of wall time, CPU and bytes, the largest RSS, "true" only if every run was
correct, and the range of wall times next to the median.
"""
import csv
import statistics
import sys

KEY = ("n_files", "cache", "variant", "tool", "transport")


def med(rows, col):
    vals = [float(r[col]) for r in rows if r.get(col)]
    return statistics.median(vals) if vals else None


def big(rows, col):
    vals = [int(r[col]) for r in rows if r.get(col)]
    return max(vals) if vals else None


def fmt(v, spec):
    return "-" if v is None else spec % v


def main() -> int:
    if len(sys.argv) < 2:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    groups = {}
    for path in sys.argv[1:]:
        with open(path, newline="") as f:
            for r in csv.DictReader(f):
                groups.setdefault(tuple(r[k] for k in KEY), []).append(r)
    print("| files | cache | cycle | tool | transport | runs | wall s | CPU s (both ends) "
          "| machine busy s | sender CPU s | sender RSS MiB | receiver RSS MiB | bytes MB "
          "| counted as | correct |")
    print("|---:|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|")
    for (n, cache, variant, tool, transport), rows in groups.items():
        walls = [float(r["wall_s"]) for r in rows]
        wall = "%.2f" % statistics.median(walls)
        if len(rows) > 1:
            wall += " (%.2f-%.2f)" % (min(walls), max(walls))
        rrss = fmt(big(rows, "receiver_rss_kib"), "%d")
        if rrss != "-":
            rrss = "%.0f" % (int(rrss) / 1024)
        if tool == "blkmirror" and transport == "local":
            rrss = "(in-process)"
        elif tool == "rsync" and transport == "local":
            rrss = "(max of both)"
        srss = big(rows, "sender_rss_kib")
        nbytes = med(rows, "bytes")
        correct = "true" if all(r["correct"] == "true" for r in rows) else "**false**"
        print("| %s | %s | %s | %s | %s | %d | %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
            n, cache, variant, tool, transport, len(rows), wall,
            fmt(med(rows, "cgroup_cpu_s"), "%.2f"), fmt(med(rows, "busy_cpu_s"), "%.2f"),
            fmt(med(rows, "sender_cpu_s"), "%.2f"),
            "-" if srss is None else "%.0f" % (srss / 1024), rrss,
            "-" if nbytes is None else "%.2f" % (nbytes / 1e6),
            rows[0]["bytes_counted_as"] or "-", correct))
    return 0


if __name__ == "__main__":
    sys.exit(main())
