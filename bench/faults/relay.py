#!/usr/bin/env python3
"""A damaging relay that stands in for ssh (`send --ssh-command "python3 relay.py PLAN"`).

blkmirror runs its ssh command as `SSH... -T -e none [-p PORT] [-l USER] HOST -- LINE`, LINE
being the remote receiver's command line (`blkmirror receive --stdio --create ... -- PATH`)
quoted for a shell. This relay ignores everything before `--`, runs LINE locally with `sh -c`,
and copies bytes both ways, so the two real blkmirror processes speak the plaintext protocol
through it. The plan (a JSON file, the first argument) says what to damage:

    {"direction": "up" | "down",            # up: sender -> receiver; down: the answers
     "mode": "none" | "flip" | "drop" | "insert" | "truncate",
     "offset": N,                            # stream offset of the damage in that direction
     "length": N,                            # bytes dropped or inserted (1..16)
     "seed": N,
     "log": "PATH",                          # byte counts at the end; PATH.hit once damaged
     "stderr": "PATH"}                       # the receiver's stderr is appended here

flip XORs the byte at `offset` with a non-zero value; drop removes `length` bytes there;
insert adds `length` random bytes before it; truncate ends that direction there (end of
stream to the reader; the other direction goes on). The relay exits with the receiver's
status, as ssh does.
"""

import json
import os
import random
import select
import subprocess
import sys


def main():
    plan = json.load(open(sys.argv[1]))
    line = sys.argv[sys.argv.index("--") + 1]
    rng = random.Random(plan.get("seed", 0))
    errors = open(plan["stderr"], "ab") if plan.get("stderr") else None
    receiver = subprocess.Popen(
        ["sh", "-c", line], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=errors
    )
    # (source fd, destination fd, name)
    up = [sys.stdin.fileno(), receiver.stdin.fileno(), "up"]
    down = [receiver.stdout.fileno(), sys.stdout.fileno(), "down"]
    counts = {"up": 0, "down": 0}
    damaged = {"up": False, "down": False}
    open_pairs = [up, down]

    def damage(name, data):
        """Applies the plan to `data`, which starts at counts[name] in its stream."""
        if plan["mode"] == "none" or plan["direction"] != name or damaged[name]:
            return data, False
        start = counts[name]
        at = plan["offset"] - start
        if not 0 <= at < len(data):
            return data, False
        damaged[name] = True
        if plan.get("log"):
            # Now, not at the end: the relay is often killed with the session it broke.
            open(plan["log"] + ".hit", "w").close()
        mode = plan["mode"]
        if mode == "flip":
            b = bytearray(data)
            b[at] ^= rng.randrange(1, 256)
            return bytes(b), False
        if mode == "drop":
            return data[:at] + data[at + plan["length"]:], False
        if mode == "insert":
            return data[:at] + rng.randbytes(plan["length"]) + data[at:], False
        if mode == "truncate":
            return data[:at], True
        raise SystemExit(f"unknown mode {mode}")

    while open_pairs:
        readable, _, _ = select.select([p[0] for p in open_pairs], [], [])
        for pair in list(open_pairs):
            src, dst, name = pair
            if src not in readable:
                continue
            data = os.read(src, 1 << 16)
            end = not data
            if data:
                out, end = damage(name, data)
                counts[name] += len(data)
                try:
                    os.write(dst, out) if out else None
                except BrokenPipeError:
                    end = True
            if end:
                open_pairs.remove(pair)
                try:
                    os.close(dst)
                except OSError:
                    pass
                if name == "up":
                    receiver.stdin = None
    code = receiver.wait()
    if plan.get("log"):
        with open(plan["log"], "w") as f:
            json.dump({"bytes": counts, "damaged": damaged, "receiver_exit": code}, f)
    sys.exit(code)


if __name__ == "__main__":
    main()
