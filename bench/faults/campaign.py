#!/usr/bin/env python3
"""The fault campaign: real blkmirror processes mirroring a changing image over local, TLS,
ssh (a private sshd on 127.0.0.1) and a damaging relay, with a fault injected in each trial,
then a check that nothing lies and that the next clean cycle converges.

    python3 bench/faults/campaign.py [--bin target/release/blkmirror] [--scale 1.0]
                                     [--kinds kill-sender,...] [--seed N] [--out DIR]

Each trial: random writes to the source (quiescent during the trial), one `send --once`
with the fault, then
  1. the lie check: if the receiver's status says `consistent` at generation G, the target
     must be byte-identical to the source as it was when G was taken (a hash per
     generation is kept); if the faulted sender reported a commit, the same. Otherwise the
     trial is a SILENT MISMATCH;
  2. the convergence check: clean `send --once` runs (at most 3) must end with the target
     identical to the source and the receiver `consistent` at the sender's generation.
Outcomes of the faulted run: `error` (non-zero exit, exactly one `blkmirror: error:` line),
`completed` (the fault did not bite, or bit after the commit), `killed` (the victim of a
kill), `panic` (exit 101 or a panic message), `hang` (a wait past its deadline; every
deadline is several times the peer timeout). Max RSS is the largest of any blkmirror
process in the kind. Results: one JSON line per trial in OUT/trials.jsonl and a table in
OUT/summary.md. See docs/reliability.md for the published figures.
"""

import argparse
import collections
import fcntl
import glob
import hashlib
import json
import os
import random
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
MIB = 1 << 20
PEER_TIMEOUT = 3  # seconds, the smallest accepted
HANG = 4 * PEER_TIMEOUT + 30  # any single wait longer than this is a hang
SIZE = 16 * MIB

# kind -> (rig, default trial count)
KINDS = {
    "kill-sender-local": ("local", 50),
    "kill-sender-tls": ("tls", 50),
    "kill-sender-ssh": ("ssh", 50),
    "kill-receiver-tls": ("tls", 50),
    "kill-receiver-ssh": ("ssh", 50),
    "stall-sender-tls": ("tls", 40),
    "stall-receiver-tls": ("tls", 40),
    "stall-receiver-ssh": ("ssh", 20),
    "damage-flip-up": ("relay", 100),
    "damage-flip-down": ("relay", 70),
    "damage-drop-up": ("relay", 100),
    "damage-drop-down": ("relay", 70),
    "damage-insert-up": ("relay", 100),
    "damage-insert-down": ("relay", 70),
    "damage-truncate-up": ("relay", 100),
    "damage-truncate-down": ("relay", 70),
}


def sha(path, size=None):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        left = size
        while True:
            chunk = f.read(4 * MIB if left is None else min(4 * MIB, left))
            if not chunk:
                break
            h.update(chunk)
            if left is not None:
                left -= len(chunk)
                if left == 0:
                    break
    return h.hexdigest()


class Run:
    """A process with its output in files, its own process group, and its rusage."""

    def __init__(self, args, name, workdir, env=None):
        self.out_path = os.path.join(workdir, f"{name}.out")
        self.err_path = os.path.join(workdir, f"{name}.err")
        self.proc = subprocess.Popen(
            args,
            stdout=open(self.out_path, "wb"),
            stderr=open(self.err_path, "wb"),
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env=env,
        )
        self.code = None
        self.maxrss_kib = 0
        self.started = time.monotonic()
        self.started_wall = time.time()
        self.elapsed = None

    def poll(self):
        if self.code is None:
            pid, status, usage = os.wait4(self.proc.pid, os.WNOHANG)
            if pid:
                self.code = os.waitstatus_to_exitcode(status)
                self.proc.returncode = self.code
                self.maxrss_kib = usage.ru_maxrss
                self.elapsed = time.monotonic() - self.started
        return self.code

    def wait(self, timeout):
        deadline = time.monotonic() + timeout
        while self.poll() is None:
            if time.monotonic() > deadline:
                return None
            time.sleep(0.01)
        return self.code

    def signal_group(self, sig):
        if self.code is None:
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                pass

    def kill(self):
        self.signal_group(signal.SIGCONT)
        self.signal_group(signal.SIGKILL)
        self.wait(60)

    def stdout(self):
        return open(self.out_path, encoding="utf-8", errors="replace").read()

    def stderr(self):
        return open(self.err_path, encoding="utf-8", errors="replace").read()


def classify(run, hung):
    if hung:
        return "hang"
    err = run.stderr()
    if run.code == 101 or "panicked at" in err:
        return "panic"
    if run.code == 0:
        return "completed"
    if run.code is not None and run.code < 0:
        return "killed"
    errors = [l for l in err.splitlines() if l.startswith("blkmirror: error: ")]
    return "error" if len(errors) == 1 else f"error-lines-{len(errors)}"


class Rig:
    """One source image, one target, one sender state, one way to reach the receiver."""

    def __init__(self, rig, camp):
        self.rig = rig
        self.camp = camp
        self.dir = os.path.join(camp.out, f"rig-{rig}")
        shutil.rmtree(self.dir, ignore_errors=True)
        os.makedirs(self.dir)
        self.source = os.path.join(self.dir, "source.img")
        self.target = os.path.join(self.dir, "target.img")
        self.sstate = os.path.join(self.dir, "state-sender")
        self.rstate = os.path.join(self.dir, "state-receiver")
        os.makedirs(self.sstate)
        os.makedirs(self.rstate)
        with open(self.source, "wb") as f:
            f.write(camp.rng.randbytes(SIZE))
        self.gen_hash = {}  # generation -> sha256 of the source it was taken from
        self.receiver = None
        self.extra = []
        self.remote_pidfile = os.path.join(self.dir, "remote.pid")
        # Where a remote receiver's stderr goes (ssh and relay rigs), kept apart from the
        # sender's so that each side's own error line can be read.
        self.remote_err = os.path.join(self.dir, "remote.err")
        self.counter = 0
        getattr(self, f"setup_{rig}")()

    # ---- the four ways to reach a receiver ----------------------------------------------

    def setup_local(self):
        self.dest = self.target
        self.status_dir = self.sstate

    def setup_tls(self):
        ids = {}
        for who in ("sender", "receiver"):
            d = os.path.join(self.dir, f"id-{who}")
            out = subprocess.run([self.camp.bin, "keygen", d], capture_output=True, text=True, check=True)
            ids[who] = (d, out.stdout.strip())
        self.ids = ids
        self.status_dir = self.rstate
        self.start_receiver("127.0.0.1:0")
        self.extra = ["--identity", ids["sender"][0], "--peer", ids["receiver"][1]]

    def start_receiver(self, listen):
        for _ in range(200):
            self.counter += 1
            r = Run(
                [self.camp.bin, "receive", self.target, "--listen", listen, "--state-dir", self.rstate,
                 "--identity", self.ids["receiver"][0], "--allow-peer", self.ids["sender"][1],
                 "--create", "--peer-timeout", f"{PEER_TIMEOUT}s"],
                f"receiver-{self.counter}", self.dir)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                line = r.stdout().strip()
                if line.startswith("listening on "):
                    self.addr = line.split()[-1]
                    self.dest = f"tls://{self.addr}"
                    self.receiver = r
                    return
                if r.poll() is not None:
                    break
                time.sleep(0.02)
            r.kill()
            self.camp.note_rss("receiver", r)
            time.sleep(0.1)  # the port may still be held: try again
        raise SystemExit(f"receiver would not start on {listen}:\n{r.stderr()}")

    def restart_receiver(self):
        self.receiver.kill()
        self.camp.note_rss("receiver", self.receiver)
        self.start_receiver(self.addr)

    def setup_ssh(self):
        self.sshd = Sshd(os.path.join(self.dir, "sshd"), self.camp)
        wrapper = os.path.join(self.dir, "remote.sh")
        with open(wrapper, "w") as f:
            f.write(f"#!/bin/sh\necho $$ > {shlex.quote(self.remote_pidfile)}\n"
                    f"exec {shlex.quote(self.camp.bin)} \"$@\" 2>>{shlex.quote(self.remote_err)}\n")
        os.chmod(wrapper, 0o755)
        self.dest = f"ssh://root@127.0.0.1:{self.sshd.port}{self.target}"
        self.status_dir = self.rstate
        self.extra = ["--create", "--ssh-command", self.sshd.ssh_command(), "--remote-command", wrapper,
                      "--remote-state-dir", self.rstate]

    def setup_relay(self):
        self.plan = os.path.join(self.dir, "plan.json")
        self.relay_log = os.path.join(self.dir, "relay.json")
        self.set_plan({"mode": "none", "direction": "up", "offset": 0, "length": 1})
        self.dest = f"ssh://relay{self.target}"
        self.status_dir = self.rstate
        self.extra = ["--create", "--ssh-command", f"python3 {os.path.join(HERE, 'relay.py')} {self.plan}",
                      "--remote-command", self.camp.bin, "--remote-state-dir", self.rstate]

    def set_plan(self, plan):
        plan = dict(plan, log=self.relay_log, stderr=self.remote_err,
                    seed=self.camp.rng.randrange(1 << 30))
        with open(self.plan, "w") as f:
            json.dump(plan, f)

    def close(self):
        if self.receiver:
            self.receiver.kill()
            self.camp.note_rss("receiver", self.receiver)
        if getattr(self, "sshd", None):
            self.sshd.stop()

    # ---- cycles --------------------------------------------------------------------------

    def send(self, name):
        self.counter += 1
        if os.path.exists(self.remote_pidfile):
            os.unlink(self.remote_pidfile)
        args = [self.camp.bin, "send", self.source, self.dest, "--once", "--json",
                "--state-dir", self.sstate, "--snapshot", "none", "--compress-level", "1",
                "--peer-timeout", f"{PEER_TIMEOUT}s", "--threads", "2"] + self.extra
        return Run(args, f"{name}-{self.counter}", self.dir)

    def remote_started_after(self, run):
        """Seconds from the start of `run` to its remote receiver's start (ssh), else None."""
        if self.rig != "ssh" or not os.path.exists(self.remote_pidfile):
            return None
        return max(0.0, os.path.getmtime(self.remote_pidfile) - run.started_wall)

    def wait_remote_receiver(self, run):
        """Over ssh, waits (bounded) until the remote receiver has started, so that a fault
        aimed at it lands in its session rather than before ssh has logged in."""
        if self.rig != "ssh":
            return
        deadline = time.monotonic() + 10
        while not os.path.exists(self.remote_pidfile) and run.poll() is None:
            if time.monotonic() > deadline:
                return
            time.sleep(0.005)

    def receiver_log_size(self):
        """Where the receiver logs and how much it has logged so far."""
        path = self.receiver.err_path if self.receiver else self.remote_err
        return path, os.path.getsize(path) if os.path.exists(path) else 0

    def receiver_errors_since(self, mark):
        """The receiver's error lines logged since `mark` (from `receiver_log_size`)."""
        path, offset = mark
        if self.rig == "local" or not os.path.exists(path):
            return []
        with open(path, "rb") as f:
            f.seek(offset)
            text = f.read().decode("utf-8", "replace")
        return [l[l.index(" error=") + 7:l.index(" touched=")] if " touched=" in l else l
                for l in text.splitlines() if "cycle aborted" in l or l.startswith("blkmirror: error: ")]

    def mutate(self):
        with open(self.source, "r+b") as f:
            for _ in range(self.camp.rng.randrange(1, 40)):
                length = self.camp.rng.randrange(1, 64) * 1024
                f.seek(self.camp.rng.randrange(0, SIZE - length))
                f.write(self.camp.rng.randbytes(length))
        self.source_hash = sha(self.source)

    def receiver_entry(self):
        out = subprocess.run([self.camp.bin, "status", "--json", "--state-dir", self.status_dir],
                             capture_output=True, text=True)
        try:
            entries = json.loads(out.stdout)
        except json.JSONDecodeError:
            return {"unreadable": out.stdout + out.stderr}
        for e in entries:
            if e.get("role") == "receiver":
                return e
        return {}

    def lie_check(self, faulted):
        """None when the receiver's status and the sender's report are true, else why not."""
        entry = self.receiver_entry()
        if "unreadable" in entry:
            return f"status unreadable: {entry['unreadable'][:200]}"
        claims = []
        if entry.get("condition") == "consistent":
            claims.append(("receiver status", entry.get("committed_generation") or 0))
        for line in faulted.stdout().splitlines():
            try:
                report = json.loads(line)
                claims.append(("sender report", report["generation"]))
            except (json.JSONDecodeError, KeyError):
                pass
        if not claims:
            return None
        size = os.path.getsize(self.target) if os.path.exists(self.target) else -1
        actual = sha(self.target, SIZE) if size >= SIZE else None
        for who, gen in claims:
            if gen == 0:
                continue
            expected = self.gen_hash.get(gen)
            if expected is None:
                # A generation first seen now was taken in this trial, from today's source.
                expected = self.source_hash
                self.gen_hash[gen] = expected
            if size != SIZE or actual != expected:
                return f"{who} says generation {gen} is on the target; it is not (size {size})"
        return None

    def converge(self):
        last = None
        for attempt in range(3):
            run = self.send("clean")
            if run.wait(HANG * 3) is None:
                run.kill()
                return False, "clean cycle hung", run
            self.camp.note_rss("sender", run)
            last = run
            if run.code == 0:
                break
            time.sleep(0.5 * (attempt + 1))
        if last.code != 0:
            return False, f"clean cycles failed: {last.stderr()[-300:]}", last
        report = json.loads(last.stdout().splitlines()[-1])
        self.gen_hash[report["generation"]] = self.source_hash
        if sha(self.target, SIZE) != self.source_hash or os.path.getsize(self.target) != SIZE:
            return False, "target differs from the source after a clean cycle", last
        entry = self.receiver_entry()
        if entry.get("condition") != "consistent" or entry.get("committed_generation") != report["generation"]:
            return False, f"receiver status after a clean cycle: {entry}", last
        return True, None, last


class Sshd:
    def __init__(self, d, camp):
        os.makedirs(d)
        os.makedirs("/run/sshd", exist_ok=True)
        self.host_key = os.path.join(d, "host_key")
        self.user_key = os.path.join(d, "user_key")
        for key in (self.host_key, self.user_key):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key], check=True)
        auth = os.path.join(d, "authorized_keys")
        shutil.copy(self.user_key + ".pub", auth)
        for _ in range(8):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
            s.close()
            config = os.path.join(d, "sshd_config")
            with open(config, "w") as f:
                f.write(f"Port {self.port}\nListenAddress 127.0.0.1\nHostKey {self.host_key}\n"
                        f"AuthorizedKeysFile {auth}\nPermitRootLogin yes\nPubkeyAuthentication yes\n"
                        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nStrictModes no\n"
                        f"UsePAM no\nUseDNS no\nPidFile {d}/sshd.pid\nLogLevel ERROR\nMaxStartups 100\n")
            self.run = Run(["/usr/sbin/sshd", "-D", "-e", "-f", config], "sshd", d)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and self.run.poll() is None:
                try:
                    socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                    return
                except OSError:
                    time.sleep(0.05)
            self.run.kill()
        raise SystemExit("sshd would not start")

    def ssh_command(self):
        return (f"ssh -i {self.user_key} -o IdentitiesOnly=yes -o StrictHostKeyChecking=no "
                "-o UserKnownHostsFile=/dev/null -o BatchMode=yes -o LogLevel=ERROR")

    def stop(self):
        self.run.kill()


class Campaign:
    def __init__(self, args):
        self.bin = os.path.abspath(args.bin)
        self.out = os.path.abspath(args.out)
        os.makedirs(self.out, exist_ok=True)
        self.rng = random.Random(args.seed)
        self.trials = open(os.path.join(self.out, "trials.jsonl"), "w")
        self.rss = collections.defaultdict(int)
        self.kind = None

    def note_rss(self, role, run):
        if run is not None:
            run.poll()
            self.rss[self.kind] = max(self.rss[self.kind], run.maxrss_kib)

    def record(self, kind, trial, **fields):
        line = dict(kind=kind, trial=trial, **fields)
        self.trials.write(json.dumps(line) + "\n")
        self.trials.flush()
        return line

    # ---- one trial per kind ------------------------------------------------------------------

    def cycle_time(self, rig):
        """Median wall time of a clean cycle after random writes: the window faults land in."""
        times = []
        for _ in range(3):
            rig.mutate()
            ok, why, run = rig.converge()
            if not ok:
                raise SystemExit(f"{rig.rig}: the rig does not work without faults: {why}")
            times.append(run.elapsed - (rig.remote_started_after(run) or 0))
        return sorted(times)[1]

    def trial(self, kind, rig, window):
        rig.mutate()
        log_at = rig.receiver_log_size()
        victim, hung, detail = None, False, {}
        if kind.startswith("kill-sender"):
            run = rig.send("faulted")
            time.sleep(self.rng.uniform(0, window))
            run.signal_group(signal.SIGKILL)
            hung = run.wait(HANG) is None
        elif kind.startswith("kill-receiver"):
            run = rig.send("faulted")
            rig.wait_remote_receiver(run)
            time.sleep(self.rng.uniform(0, window))
            if rig.rig == "tls":
                rig.receiver.signal_group(signal.SIGKILL)
            else:
                victim = kill_pidfile(rig.remote_pidfile, signal.SIGKILL)
            hung = run.wait(HANG) is None
            if rig.rig == "tls":
                rig.restart_receiver()
        elif kind.startswith("stall-sender"):
            run = rig.send("faulted")
            time.sleep(self.rng.uniform(0, window))
            run.signal_group(signal.SIGSTOP)
            stopped_at = time.monotonic()
            freed = wait_lock_free(rig.rstate, HANG)
            detail["freed_after_s"] = None if freed is None else round(freed - stopped_at, 2)
            hung = freed is None
            run.kill()
        elif kind.startswith("stall-receiver"):
            run = rig.send("faulted")
            rig.wait_remote_receiver(run)
            time.sleep(self.rng.uniform(0, window))
            if rig.rig == "tls":
                rig.receiver.signal_group(signal.SIGSTOP)
                resume = lambda: rig.receiver.signal_group(signal.SIGCONT)
            else:
                pid = kill_pidfile(rig.remote_pidfile, signal.SIGSTOP)
                resume = lambda: pid and kill_pid(pid, signal.SIGCONT)
            stopped_at = time.monotonic()
            hung = run.wait(HANG) is None
            detail["sender_gave_up_after_s"] = round(time.monotonic() - stopped_at, 2)
            resume()
        else:  # damage-MODE-DIRECTION
            _, mode, direction = kind.split("-")
            expected = rig.bytes_per_cycle[direction]
            offset = self.rng.randrange(0, max(1, expected))
            rig.set_plan({"mode": mode, "direction": direction, "offset": offset,
                          "length": self.rng.randrange(1, 17)})
            detail.update(offset=offset, of=expected)
            hit = rig.relay_log + ".hit"
            if os.path.exists(hit):
                os.unlink(hit)
            run = rig.send("faulted")
            hung = run.wait(HANG) is None
            detail["damaged"] = os.path.exists(hit)
            rig.set_plan({"mode": "none", "direction": "up", "offset": 0, "length": 1})
        if hung:
            run.kill()
        self.note_rss("sender", run)
        receiver_errors = rig.receiver_errors_since(log_at)
        outcome = classify(run, hung)
        lie = rig.lie_check(run)
        converged, why, _ = rig.converge()
        if rig.rig == "relay" and os.path.exists(rig.relay_log):
            # Aim the next damage within a stream as long as the last clean one.
            rig.bytes_per_cycle = json.load(open(rig.relay_log))["bytes"]
        first_error = next((l for l in run.stderr().splitlines() if l.startswith("blkmirror: error: ")), None)
        return dict(outcome=outcome, code=run.code, silent_mismatch=lie, converged=converged,
                    not_converged_why=why, error=first_error, receiver_errors=receiver_errors,
                    **detail)

    def run_kind(self, kind, count):
        rig_name = KINDS[kind][0]
        self.kind = kind
        rig = Rig(rig_name, self)
        try:
            window = self.cycle_time(rig)
            if rig_name == "relay":
                rig.mutate()
                rig.converge()
                rig.bytes_per_cycle = json.load(open(rig.relay_log))["bytes"]
            rows = []
            for i in range(count):
                row = self.record(kind, i, **self.trial(kind, rig, window))
                rows.append(row)
                bad = row["silent_mismatch"] or not row["converged"] or row["outcome"] in ("hang", "panic")
                mark = "!!" if bad else "ok"
                print(f"{kind} {i + 1}/{count} {mark} {row['outcome']} {row.get('error') or ''}"[:200],
                      flush=True)
            return window, rows
        finally:
            rig.close()


def kill_pidfile(path, sig):
    try:
        pid = int(open(path).read().strip())
    except (OSError, ValueError):
        return None
    kill_pid(pid, sig)
    return pid


def kill_pid(pid, sig):
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def wait_lock_free(rstate, timeout):
    """The time the receiver's per-target lock could be taken (the session let go), or None."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        locks = glob.glob(os.path.join(rstate, "targets", "*", "lock"))
        if not locks:
            return time.monotonic()
        with open(locks[0], "a") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                now = time.monotonic()
                fcntl.flock(f, fcntl.LOCK_UN)
                return now
            except BlockingIOError:
                pass
        time.sleep(0.05)
    return None


def power_cuts(seeds):
    """The engine's power-cut sweep (`CrashTarget` and `CrashStore`: power lost at every sync
    point of the receiver, target fsyncs and state saves, over several cycles per seed), run
    with `seeds` seeds. Returns (trials, passed, seconds)."""
    repo = os.path.dirname(os.path.dirname(HERE))
    env = dict(os.environ, BLKMIRROR_CRASH_SEEDS=str(seeds))
    started = time.monotonic()
    out = subprocess.run(
        ["cargo", "test", "--release", "--lib", "power_cut_at_every_sync_point", "--", "--nocapture"],
        cwd=repo, env=env, capture_output=True, text=True)
    found = re.search(r"power cut at (\d+) sync points", out.stderr + out.stdout)
    trials = int(found.group(1)) if found else 0
    return trials, out.returncode == 0 and trials > 0, time.monotonic() - started


def summarize(camp, results, out, cuts):
    lines = ["| fault | transport | trials | converged | clean error | completed | killed | "
             "silent mismatch | panic | hang | max RSS |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    totals = collections.Counter()
    notes = []
    for kind, (window, rows) in results.items():
        c = collections.Counter(r["outcome"] for r in rows)
        n = len(rows)
        conv = sum(1 for r in rows if r["converged"])
        lies = sum(1 for r in rows if r["silent_mismatch"])
        other = n - sum(c[k] for k in ("error", "completed", "killed", "panic", "hang"))
        totals.update(trials=n, converged=conv, lies=lies, hang=c["hang"], panic=c["panic"])
        rss = camp.rss.get(kind, 0) / 1024
        if kind.startswith("damage"):
            hit = sum(1 for r in rows if r.get("damaged"))
            hit_ok = sum(1 for r in rows if r.get("damaged") and r["outcome"] == "completed")
            notes.append(f"- {kind}: the damage reached the stream in {hit} of {n} trials; "
                         f"{hit_ok} of those completed (the damaged bytes were not needed, "
                         "e.g. a refinement hash that only made more data ship), the lie check "
                         "passing")
        lines.append(f"| {kind} | {KINDS[kind][0]} | {n} | {conv} | {c['error']}"
                     f"{f' (+{other} other)' if other else ''} | {c['completed']} | {c['killed']} | "
                     f"{lies} | {c['panic']} | {c['hang']} | {rss:.0f} MiB |")
    if cuts:
        n, passed, _ = cuts
        totals.update(trials=n, converged=n if passed else 0)
        lines.append(f"| power-cut at every sync point | in-process (CrashTarget) | {n} | "
                     f"{n if passed else 'FAILED'} | | | | 0 | 0 | 0 | |")
    lines.append(f"| **total** | | **{totals['trials']}** | **{totals['converged']}** | | | | "
                 f"**{totals['lies']}** | **{totals['panic']}** | **{totals['hang']}** | |")
    text = "\n".join(lines) + "\n\n" + "\n".join(notes) + "\n"
    open(os.path.join(out, "summary.md"), "w").write(text)
    return text, totals


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--bin", default="target/release/blkmirror")
    p.add_argument("--scale", type=float, default=1.0, help="multiply every kind's trial count")
    p.add_argument("--kinds", default=",".join(list(KINDS) + ["power-cut"]),
                   help="comma-separated; power-cut is the engine's power-cut sweep (needs cargo)")
    p.add_argument("--seed", type=int, default=20261201)
    p.add_argument("--out", default="/var/tmp/blkmirror-faults")
    p.add_argument("--crash-seeds", type=int, default=50, help="seeds of the power-cut sweep")
    args = p.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root (sshd on 127.0.0.1 needs it)")
    camp = Campaign(args)
    results = {}
    started = time.monotonic()
    kinds = args.kinds.split(",")
    for kind in kinds:
        if kind == "power-cut":
            continue
        count = max(1, round(KINDS[kind][1] * args.scale))
        results[kind] = camp.run_kind(kind, count)
    cuts = power_cuts(args.crash_seeds) if "power-cut" in kinds else None
    text, totals = summarize(camp, results, camp.out, cuts)
    print(text)
    print(f"{totals['trials']} trials in {time.monotonic() - started:.0f} s; results in {camp.out}")
    bad = totals["lies"] or totals["hang"] or totals["panic"] or totals["converged"] != totals["trials"]
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
