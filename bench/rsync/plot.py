#!/usr/bin/env python3
"""Plot the scaling run of bench/rsync/scale.sh: cycle time (and bytes on the wire) against
the number of files, one line per tool and transport, the dd read of the image as the floor.

    plot.py CSV OUT.png

CSV is run.sh's format (scale.sh concatenates one run per fixture size). Only the "change"
cycles are plotted; repeated runs (run.sh --repeat) as their median. Needs matplotlib: if it is missing, this installs it from PyPI with
`python3 -m pip install matplotlib` (set BENCH_NO_PIP=1 to refuse and fail instead).
"""
import csv
import os
import statistics
import subprocess
import sys
from collections import defaultdict


def load_matplotlib():
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        if os.environ.get("BENCH_NO_PIP") == "1":
            sys.exit("plot.py: matplotlib is missing (pip install matplotlib)")
        print("plot.py: installing matplotlib with pip", file=sys.stderr)
        subprocess.check_call([sys.executable, "-m", "pip", "install", "--quiet", "matplotlib"])
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def main() -> int:
    if len(sys.argv) != 3:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    with open(sys.argv[1], newline="") as f:
        rows = list(csv.DictReader(f))
    caches = sorted({r["cache"] for r in rows})
    runs = defaultdict(list)  # (tool, transport, cache, files) -> [(wall, bytes)]
    rewritten = sorted({r["files_rewritten"] for r in rows})
    for r in rows:
        if r["variant"] not in ("change", "floor"):
            continue
        key = (r["tool"], r["transport"], r["cache"], int(r["n_files"]))
        runs[key].append((float(r["wall_s"]), int(r["bytes"]) if r["bytes"] else None))
    # Repeated runs (run.sh --repeat) are plotted as their median.
    series = defaultdict(list)  # (tool, transport, cache) -> [(files, wall, bytes)]
    for (tool, transport, cache, files), vals in runs.items():
        nbytes = [b for _, b in vals if b is not None]
        series[(tool, transport, cache)].append(
            (files, statistics.median(w for w, _ in vals),
             statistics.median(nbytes) if nbytes else None))
    if not series:
        sys.exit("plot.py: no change or floor rows in %s" % sys.argv[1])
    plt = load_matplotlib()
    fig, (ax_t, ax_b) = plt.subplots(1, 2, figsize=(12, 4.8))
    for (tool, transport, cache), points in sorted(series.items()):
        points.sort()
        xs = [p[0] for p in points]
        label = "dd iflag=direct (read floor)" if tool == "dd" else "%s %s" % (tool, transport)
        if len(caches) > 1:
            label += " (%s)" % cache
        style = dict(marker="o")
        if tool == "dd":
            style = dict(color="black", linestyle="--", marker="")
        elif tool == "rsync":
            style["linestyle"] = ":"
        ax_t.plot(xs, [p[1] for p in points], label=label, **style)
        if tool != "dd":
            ax_b.plot(xs, [p[2] / 1e6 for p in points], label=label, **style)
    ax_t.set_title("cycle wall time")
    ax_t.set_ylabel("seconds")
    ax_b.set_title("bytes on the wire (lo; local: tool's count)")
    ax_b.set_ylabel("MB")
    for ax in (ax_t, ax_b):
        ax.set_xlabel("files in the filesystem")
        ax.set_xscale("log")
        ax.grid(True, which="both", alpha=0.3)
        ax.set_ylim(bottom=0)
    ax_t.legend(fontsize="small")
    fig.suptitle("blkmirror vs rsync: %s files rewritten at every size, %s cache"
                 % ("/".join(rewritten), "/".join(caches)))
    fig.tight_layout()
    fig.savefig(sys.argv[2], dpi=110)
    print("plot.py: wrote %s" % sys.argv[2], file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
