//! Shared harness for the integration tests: running the binary with a deadline, seeded test
//! data, byte comparison, and guards for every process or kernel object a test creates
//! (receiver, background sender, sshd, loop device, mount). Every guard stops or releases what
//! it owns in `Drop`, by PID or by device path, so a failing test leaves nothing behind.
//!
//! Waiting is always "poll a condition until a deadline", never a bare sleep.

#![allow(dead_code)]

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

/// Deadline for one foreground command (a cycle, verify, status...). Generous: the tests run a
/// debug build on 2 cores next to other tests.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(300);
/// Deadline for a daemon to announce readiness.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Poll period for condition waits.
pub const POLL: Duration = Duration::from_millis(20);

pub const KIB: u64 = 1024;
pub const MIB: u64 = 1024 * 1024;
/// The default `--block-size`.
pub const BLOCK: u64 = 64 * KIB;

/// The binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_blkmirror")
}

/// A path as `&str` (all test paths are UTF-8 temp paths).
pub fn s(path: &Path) -> &str {
    path.to_str().expect("test paths are UTF-8")
}

// ---------------------------------------------------------------------------------------------
// Scratch directory
// ---------------------------------------------------------------------------------------------

/// A per-test temporary directory, removed on drop.
pub struct Scratch {
    dir: tempfile::TempDir,
}

impl Scratch {
    pub fn new(test: &str) -> Scratch {
        let dir = tempfile::Builder::new()
            .prefix(&format!("blkmirror-it-{test}-"))
            .tempdir()
            .expect("create temp dir");
        Scratch { dir }
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// A path inside the scratch dir (not created).
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A directory inside the scratch dir, created.
    pub fn dir(&self, name: &str) -> PathBuf {
        let p = self.path(name);
        fs::create_dir_all(&p).expect("create dir");
        p
    }
}

// ---------------------------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------------------------

#[derive(Default)]
struct Captured {
    stdout: Vec<String>,
    stderr: Vec<String>,
    stdout_eof: bool,
    stderr_eof: bool,
}

/// A child process whose stdout and stderr are captured line by line by reader threads.
/// Dropping it kills it (SIGKILL) and reaps it.
pub struct Proc {
    name: String,
    cmdline: String,
    child: Child,
    status: Option<ExitStatus>,
    captured: Arc<Mutex<Captured>>,
}

fn spawn_reader<R: Read + Send + 'static>(
    stream: R,
    captured: Arc<Mutex<Captured>>,
    is_stdout: bool,
) {
    thread::spawn(move || {
        let mut reader = BufReader::new(stream);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let line = String::from_utf8_lossy(&buf)
                        .trim_end_matches(['\n', '\r'])
                        .to_string();
                    let mut c = captured.lock().unwrap();
                    if is_stdout {
                        c.stdout.push(line);
                    } else {
                        c.stderr.push(line);
                    }
                }
            }
        }
        let mut c = captured.lock().unwrap();
        if is_stdout {
            c.stdout_eof = true;
        } else {
            c.stderr_eof = true;
        }
    });
}

/// Which captured stream to look at.
#[derive(Clone, Copy, Debug)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Proc {
    /// Spawns `program args...` with stdin closed and both outputs captured.
    pub fn spawn<S: AsRef<OsStr>>(name: &str, program: &str, args: &[S]) -> Proc {
        Self::spawn_in(name, program, args, None)
    }

    pub fn spawn_in<S: AsRef<OsStr>>(
        name: &str,
        program: &str,
        args: &[S],
        cwd: Option<&Path>,
    ) -> Proc {
        let mut cmd = Command::new(program);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .env("NO_COLOR", "1");
        if let Some(cwd) = cwd {
            cmd.current_dir(cwd);
        }
        let cmdline = std::iter::once(program.to_string())
            .chain(
                args.iter()
                    .map(|a| a.as_ref().to_string_lossy().into_owned()),
            )
            .collect::<Vec<_>>()
            .join(" ");
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("{name}: cannot spawn `{cmdline}`: {e}"));
        let captured = Arc::new(Mutex::new(Captured::default()));
        spawn_reader(child.stdout.take().unwrap(), captured.clone(), true);
        spawn_reader(child.stderr.take().unwrap(), captured.clone(), false);
        Proc {
            name: name.to_string(),
            cmdline,
            child,
            status: None,
            captured,
        }
    }

    /// Spawns the binary under test.
    pub fn blkmirror<S: AsRef<OsStr>>(name: &str, args: &[S]) -> Proc {
        Self::spawn(name, bin(), args)
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn cmdline(&self) -> &str {
        &self.cmdline
    }

    /// Sends a signal to this process (by PID), unless it has already been reaped.
    pub fn signal(&mut self, sig: i32) {
        if self.try_wait().is_none() {
            // SAFETY: plain kill(2) on our own, not yet reaped, child.
            #[allow(unsafe_code)]
            unsafe {
                libc::kill(self.pid(), sig);
            }
        }
    }

    /// After SIGSTOP: waits until every thread of the process is in state T (stopped).
    /// Returns false if the process exited instead.
    pub fn wait_stopped(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(30);
        let tasks = PathBuf::from(format!("/proc/{}/task", self.pid()));
        loop {
            if self.try_wait().is_some() {
                return false;
            }
            let all_stopped = fs::read_dir(&tasks).ok().is_some_and(|dir| {
                dir.filter_map(Result::ok).all(|task| {
                    fs::read_to_string(task.path().join("stat")).is_ok_and(|stat| {
                        // "pid (comm) S ..." - comm may contain spaces or parens.
                        stat.rsplit_once(')')
                            .and_then(|(_, rest)| rest.trim_start().chars().next())
                            .is_some_and(|state| state == 'T' || state == 't' || state == 'Z')
                    })
                })
            });
            if all_stopped {
                // A zombie main thread means it exited: report that.
                return self.try_wait().is_none();
            }
            if Instant::now() >= deadline {
                panic!(
                    "{}: did not stop after SIGSTOP\n{}",
                    self.name,
                    self.describe()
                );
            }
            thread::sleep(Duration::from_millis(1));
        }
    }

    /// SIGKILL and reap.
    pub fn kill9(&mut self) -> ExitStatus {
        self.signal(libc::SIGKILL);
        self.wait_exit(Duration::from_secs(30))
    }

    /// Non-blocking: the exit status if the process has exited.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().expect("try_wait");
        }
        self.status
    }

    /// Waits for the process to exit, panicking (with its output) after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.try_wait() {
                return st;
            }
            if Instant::now() >= deadline {
                panic!(
                    "{}: still running after {timeout:?}\n{}",
                    self.name,
                    self.describe()
                );
            }
            thread::sleep(POLL);
        }
    }

    /// Waits (with a short deadline) until both output streams reached EOF, so that every line
    /// the process printed is captured. Grandchildren holding the pipes only delay this.
    pub fn drain(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            {
                let c = self.captured.lock().unwrap();
                if c.stdout_eof && c.stderr_eof {
                    return;
                }
            }
            thread::sleep(POLL);
        }
    }

    pub fn stdout_lines(&self) -> Vec<String> {
        self.captured.lock().unwrap().stdout.clone()
    }

    pub fn stderr_lines(&self) -> Vec<String> {
        self.captured.lock().unwrap().stderr.clone()
    }

    pub fn stderr_text(&self) -> String {
        self.stderr_lines().join("\n")
    }

    /// Waits until a line of `stream` with index `>= from` satisfies `pred`; returns
    /// (index, line). Panics with the process's output on timeout, or as soon as the stream is
    /// closed (or the process has exited) without such a line.
    pub fn wait_line_from(
        &mut self,
        stream: Stream,
        from: usize,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&str) -> bool,
    ) -> (usize, String) {
        let deadline = Instant::now() + timeout;
        loop {
            let exited = self.try_wait().is_some();
            {
                let c = self.captured.lock().unwrap();
                let (lines, eof) = match stream {
                    Stream::Stdout => (&c.stdout, c.stdout_eof),
                    Stream::Stderr => (&c.stderr, c.stderr_eof),
                };
                if let Some((i, l)) = lines.iter().enumerate().skip(from).find(|(_, l)| pred(l)) {
                    return (i, l.clone());
                }
                if eof || (exited && c.stdout_eof && c.stderr_eof) {
                    drop(c);
                    panic!(
                        "{}: {stream:?} closed before {what}\n{}",
                        self.name,
                        self.describe()
                    );
                }
            }
            if Instant::now() >= deadline {
                panic!(
                    "{}: no {what} on {stream:?} within {timeout:?}\n{}",
                    self.name,
                    self.describe()
                );
            }
            thread::sleep(POLL);
        }
    }

    pub fn wait_line(
        &mut self,
        stream: Stream,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&str) -> bool,
    ) -> String {
        self.wait_line_from(stream, 0, timeout, what, pred).1
    }

    /// Everything known about the process, for failure messages.
    pub fn describe(&self) -> String {
        let c = self.captured.lock().unwrap();
        format!(
            "command: {}\nstatus: {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}\n---",
            self.cmdline,
            self.status,
            c.stdout.join("\n"),
            c.stderr.join("\n")
        )
    }

    /// Waits for exit and returns everything as an [`Output`].
    pub fn finish(mut self, timeout: Duration) -> Output {
        let status = self.wait_exit(timeout);
        self.drain(Duration::from_secs(10));
        let c = self.captured.lock().unwrap();
        Output {
            cmdline: self.cmdline.clone(),
            status,
            stdout: c.stdout.clone(),
            stderr: c.stderr.clone(),
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.try_wait().is_none() {
            // SAFETY: kill(2) on our own child, which has not been reaped yet.
            #[allow(unsafe_code)]
            unsafe {
                libc::kill(self.pid(), libc::SIGKILL);
            }
            let _ = self.child.wait();
        }
    }
}

/// The result of a finished command.
#[derive(Clone)]
pub struct Output {
    pub cmdline: String,
    pub status: ExitStatus,
    pub stdout: Vec<String>,
    pub stderr: Vec<String>,
}

impl std::fmt::Debug for Output {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "command: {}\nstatus: {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}\n---",
            self.cmdline,
            self.status,
            self.stdout.join("\n"),
            self.stderr.join("\n")
        )
    }
}

pub const ERROR_PREFIX: &str = "blkmirror: error: ";

impl Output {
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    pub fn stdout_text(&self) -> String {
        self.stdout.join("\n")
    }

    pub fn stderr_text(&self) -> String {
        self.stderr.join("\n")
    }

    #[track_caller]
    pub fn assert_success(&self) -> &Self {
        assert_eq!(self.code(), Some(0), "expected success\n{self:?}");
        self
    }

    #[track_caller]
    pub fn assert_code(&self, code: i32) -> &Self {
        assert_eq!(
            self.code(),
            Some(code),
            "expected exit code {code}\n{self:?}"
        );
        self
    }

    /// The stderr lines that start with `blkmirror: error: `.
    pub fn error_lines(&self) -> Vec<&str> {
        self.stderr
            .iter()
            .map(String::as_str)
            .filter(|l| l.starts_with(ERROR_PREFIX))
            .collect()
    }

    /// Asserts the error contract: exit code `code`, exactly one stderr line starting with
    /// `blkmirror: error: `, and that line contains every string of `mentions`
    /// (case-insensitively). Returns the line.
    #[track_caller]
    pub fn assert_error(&self, code: i32, mentions: &[&str]) -> String {
        self.assert_code(code);
        let errors = self.error_lines();
        assert_eq!(
            errors.len(),
            1,
            "expected exactly one line starting with {ERROR_PREFIX:?} on stderr\n{self:?}"
        );
        let line = errors[0].to_string();
        assert!(
            line.len() > ERROR_PREFIX.len() + 5,
            "error line says nothing: {line:?}"
        );
        let lower = line.to_lowercase();
        for m in mentions {
            assert!(
                lower.contains(&m.to_lowercase()),
                "error line does not mention {m:?}: {line:?}\n{self:?}"
            );
        }
        line
    }

    /// Parses every non-empty stdout line as a JSON value (stdout carries nothing else).
    #[track_caller]
    pub fn json_lines(&self) -> Vec<Value> {
        self.stdout
            .iter()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                serde_json::from_str(l)
                    .unwrap_or_else(|e| panic!("stdout line is not JSON ({e}): {l:?}\n{self:?}"))
            })
            .collect()
    }
}

/// Runs `program args...` to completion with a deadline.
pub fn run_program<S: AsRef<OsStr>>(program: &str, args: &[S], timeout: Duration) -> Output {
    Proc::spawn(program, program, args).finish(timeout)
}

/// Runs the binary under test to completion (deadline [`RUN_TIMEOUT`]).
pub fn run<S: AsRef<OsStr>>(args: &[S]) -> Output {
    Proc::blkmirror("blkmirror", args).finish(RUN_TIMEOUT)
}

/// Runs a system tool and asserts it succeeded; returns its stdout.
#[track_caller]
pub fn sh<S: AsRef<OsStr>>(program: &str, args: &[S]) -> String {
    let out = run_program(program, args, Duration::from_secs(120));
    out.assert_success();
    out.stdout_text()
}

/// Polls `cond` every [`POLL`] until it returns `Some`, panicking with `what` after `timeout`.
#[track_caller]
pub fn wait_for<T>(timeout: Duration, what: &str, mut cond: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = cond() {
            return v;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        thread::sleep(POLL);
    }
}

// ---------------------------------------------------------------------------------------------
// Cycles and status
// ---------------------------------------------------------------------------------------------

/// One `--json` cycle report.
#[derive(Clone, Debug)]
pub struct Cycle {
    pub generation: u64,
    pub blocks_scanned: u64,
    pub blocks_changed: u64,
    pub blocks_zero: u64,
    pub bytes_read: u64,
    pub bytes_sent: u64,
    pub root: String,
    pub raw: Value,
}

impl Cycle {
    #[track_caller]
    pub fn from_json(v: &Value) -> Cycle {
        let num = |k: &str| {
            v.get(k)
                .and_then(Value::as_u64)
                .unwrap_or_else(|| panic!("cycle report lacks u64 field {k:?}: {v}"))
        };
        let root = v
            .get("root")
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("cycle report lacks string field \"root\": {v}"))
            .to_string();
        assert!(
            !root.is_empty() && root.chars().all(|c| c.is_ascii_hexdigit()),
            "\"root\" is not hex: {v}"
        );
        Cycle {
            generation: num("generation"),
            blocks_scanned: num("blocks_scanned"),
            blocks_changed: num("blocks_changed"),
            blocks_zero: num("blocks_zero"),
            bytes_read: num("bytes_read"),
            bytes_sent: num("bytes_sent"),
            root,
            raw: v.clone(),
        }
    }
}

/// The standard arguments of a test `send`: `send SRC DEST --json --progress never
/// --state-dir STATE --snapshot none` (test sources live on /tmp, which cannot reflink; a
/// later `--snapshot KIND` overrides it).
pub fn send_args(src: &str, dest: &str, state: &Path) -> Vec<String> {
    vec![
        "send".into(),
        src.into(),
        dest.into(),
        "--json".into(),
        "--progress".into(),
        "never".into(),
        "--state-dir".into(),
        s(state).into(),
        "--snapshot".into(),
        "none".into(),
    ]
}

/// Runs `send --once --json` and returns its single cycle report.
#[track_caller]
pub fn send_once(src: &str, dest: &str, state: &Path, extra: &[&str]) -> Cycle {
    let mut args = send_args(src, dest, state);
    args.push("--once".into());
    args.extend(extra.iter().map(|a| a.to_string()));
    let out = run(&args);
    out.assert_success();
    let lines = out.json_lines();
    assert_eq!(
        lines.len(),
        1,
        "--once --json must print exactly one JSON object\n{out:?}"
    );
    Cycle::from_json(&lines[0])
}

/// `status --state-dir DIR --json`, parsed as an array.
#[track_caller]
pub fn status(state: &Path) -> Vec<Value> {
    let out = run(&["status", "--state-dir", s(state), "--json"]);
    out.assert_success();
    let v: Value = serde_json::from_str(&out.stdout_text())
        .unwrap_or_else(|e| panic!("status --json is not JSON ({e})\n{out:?}"));
    v.as_array()
        .unwrap_or_else(|| panic!("status --json is not an array\n{out:?}"))
        .clone()
}

/// The single entry with `"role": role` in `status`.
#[track_caller]
pub fn status_entry(state: &Path, role: &str) -> Value {
    let all = status(state);
    let mut matching: Vec<Value> = all
        .iter()
        .filter(|e| e.get("role").and_then(Value::as_str) == Some(role))
        .cloned()
        .collect();
    assert_eq!(
        matching.len(),
        1,
        "expected exactly one {role} entry in status of {}: {all:?}",
        state.display()
    );
    matching.remove(0)
}

/// The entries with `"role": role` in `status` (possibly none yet).
#[track_caller]
pub fn status_entries(state: &Path, role: &str) -> Vec<Value> {
    status(state)
        .into_iter()
        .filter(|e| e.get("role").and_then(Value::as_str) == Some(role))
        .collect()
}

/// Runs `sender` in short slices until the receiver's `status` says `"condition":
/// "mid-cycle"` and `extra` holds, checking only while the sender is frozen (SIGSTOP), and
/// returns the entry with the sender STILL STOPPED: the caller kills it or sends SIGCONT.
/// Because every check happens with the sender frozen, the cycle cannot finish between seeing
/// `mid-cycle` and acting on it. Panics if the sender finishes first (the source is then too
/// small to ever be seen mid-cycle).
#[track_caller]
pub fn freeze_mid_cycle(state: &Path, sender: &mut Proc, extra: impl Fn() -> bool) -> Value {
    wait_for(RUN_TIMEOUT, "receiver status `mid-cycle`", || {
        sender.signal(libc::SIGSTOP);
        if !sender.wait_stopped() {
            panic!(
                "sender finished before the receiver was seen mid-cycle\n{}",
                sender.describe()
            );
        }
        let found = status_entries(state, "receiver")
            .into_iter()
            .find(|e| e.get("condition").and_then(Value::as_str) == Some("mid-cycle"))
            .filter(|_| extra());
        if found.is_none() {
            // Let it run for one poll period, then look again.
            sender.signal(libc::SIGCONT);
        }
        found
    })
}

/// True when any of `samples` bytes read at evenly spaced offsets of `path` differs from
/// `reference` (a cheap "has anything landed yet" probe for large targets).
pub fn differs_somewhere(path: &Path, reference: &[u8], samples: u64) -> bool {
    let f = File::open(path).expect("open");
    let len = reference.len() as u64;
    let mut buf = [0u8; 64];
    (0..samples).any(|i| {
        let off = i * (len / samples);
        let n = 64.min(len - off) as usize;
        f.read_exact_at(&mut buf[..n], off).is_ok()
            && buf[..n] != reference[off as usize..off as usize + n]
    })
}

/// A `"committed_generation"` that may be absent/null before the first commit (read as 0).
pub fn committed_generation(entry: &Value) -> u64 {
    entry
        .get("committed_generation")
        .and_then(Value::as_u64)
        .unwrap_or(0)
}

/// Asserts a receiver status entry says consistent at `generation`, not applying.
#[track_caller]
pub fn assert_receiver_consistent(entry: &Value, generation: u64) {
    assert_eq!(
        entry.get("condition").and_then(Value::as_str),
        Some("consistent"),
        "receiver not consistent: {entry}"
    );
    assert_eq!(
        entry.get("committed_generation").and_then(Value::as_u64),
        Some(generation),
        "receiver committed generation: {entry}"
    );
    assert!(
        entry
            .get("applying_generation")
            .map_or(true, Value::is_null),
        "consistent receiver still applying: {entry}"
    );
}

// ---------------------------------------------------------------------------------------------
// Test data
// ---------------------------------------------------------------------------------------------

/// SplitMix64: tiny, seeded, good enough for test data.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x5DEE_CE66_D1CE_4E5B)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }

    /// Fills with random bytes; never produces a run of 8 zero bytes at an 8-aligned position
    /// (so a random block is never mistaken for a zero block).
    pub fn fill(&mut self, buf: &mut [u8]) {
        let mut chunks = buf.chunks_exact_mut(8);
        for c in &mut chunks {
            c.copy_from_slice(&(self.next_u64() | 1).to_le_bytes());
        }
        let rest = chunks.into_remainder();
        let last = (self.next_u64() | 1).to_le_bytes();
        let n = rest.len();
        rest.copy_from_slice(&last[..n]);
    }

    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.fill(&mut v);
        v
    }
}

/// A byte range `[offset, offset + len)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Range {
    pub offset: u64,
    pub len: u64,
}

/// Writes `len` random bytes (seeded) to a new file at `path`, with explicit zero runs: some
/// block-aligned runs spanning several blocks, some unaligned. Zeros are written, not holes.
/// Returns the zero runs.
pub fn write_random_file(path: &Path, len: u64, seed: u64) -> Vec<Range> {
    let mut rng = Rng::new(seed);
    let mut data = rng.bytes(len as usize);
    let mut zeros = Vec::new();
    if len >= 4 * MIB {
        // One run per 4 MiB: alternately block-aligned (2..=8 blocks) and unaligned.
        let mut base = 0;
        let mut aligned = true;
        while base + 4 * MIB <= len {
            let r = if aligned {
                let start = base + rng.below(4 * MIB / BLOCK - 8) * BLOCK;
                Range {
                    offset: start,
                    len: rng.range(2, 8) * BLOCK,
                }
            } else {
                Range {
                    offset: base + rng.below(3 * MIB),
                    len: rng.range(1, 300 * KIB),
                }
            };
            data[r.offset as usize..(r.offset + r.len) as usize].fill(0);
            zeros.push(r);
            aligned = !aligned;
            base += 4 * MIB;
        }
    }
    fs::write(path, &data).expect("write source");
    zeros
}

/// Creates a sparse file of `len` bytes with `count` random extents of `extent` bytes each,
/// written at random (seeded, block-aligned) offsets. Returns the extents.
pub fn write_sparse_file(
    path: &Path,
    len: u64,
    seed: u64,
    count: usize,
    extent: u64,
) -> Vec<Range> {
    let mut rng = Rng::new(seed);
    let f = File::create(path).expect("create sparse file");
    f.set_len(len).expect("set_len");
    let mut out = Vec::new();
    for _ in 0..count {
        let off = rng.below((len - extent) / BLOCK) * BLOCK;
        f.write_all_at(&rng.bytes(extent as usize), off)
            .expect("write extent");
        out.push(Range {
            offset: off,
            len: extent,
        });
    }
    f.sync_all().unwrap();
    out
}

/// Size of a file or block device.
pub fn size_of(path: &Path) -> u64 {
    let mut f = File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    f.seek(SeekFrom::End(0)).expect("seek end")
}

/// Opens a file or block device for writing in place (no truncation).
fn open_rw(path: &Path) -> File {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open {} for writing: {e}", path.display()))
}

/// Writes `count` random extents of `min_len..=max_len` bytes at arbitrary (unaligned) offsets
/// within the current size of `path` (file or block device), then fsyncs. Returns the ranges.
pub fn random_writes(
    path: &Path,
    rng: &mut Rng,
    count: usize,
    min_len: u64,
    max_len: u64,
) -> Vec<Range> {
    let size = size_of(path);
    let f = open_rw(path);
    let mut out = Vec::new();
    for _ in 0..count {
        let len = rng.range(min_len, max_len).min(size);
        let offset = rng.below(size - len + 1);
        f.write_all_at(&rng.bytes(len as usize), offset)
            .expect("random write");
        out.push(Range { offset, len });
    }
    f.sync_all().expect("fsync");
    out
}

/// Writes explicit zeros over `range` (not a hole), then fsyncs.
pub fn zero_range(path: &Path, range: Range) {
    let f = open_rw(path);
    f.write_all_at(&vec![0u8; range.len as usize], range.offset)
        .expect("zero range");
    f.sync_all().expect("fsync");
}

/// Appends `len` random bytes to a regular file. Returns the appended range.
pub fn append_random(path: &Path, rng: &mut Rng, len: u64) -> Range {
    let mut f = OpenOptions::new()
        .append(true)
        .open(path)
        .expect("open for append");
    let offset = f.metadata().unwrap().len();
    f.write_all(&rng.bytes(len as usize)).expect("append");
    f.sync_all().expect("fsync");
    Range { offset, len }
}

/// Indices of the `block`-sized blocks that `ranges` touch.
pub fn touched_blocks(ranges: &[Range], block: u64) -> BTreeSet<u64> {
    let mut set = BTreeSet::new();
    for r in ranges.iter().filter(|r| r.len > 0) {
        set.extend(r.offset / block..=(r.offset + r.len - 1) / block);
    }
    set
}

/// Indices of the `block`-sized blocks whose bytes differ between `old` and `new` (blocks past
/// the end of `old` count as changed; a partial last block is compared as it is).
pub fn changed_blocks(old: &[u8], new: &[u8], block: u64) -> BTreeSet<u64> {
    fn clamp(data: &[u8], i: usize, block: usize) -> &[u8] {
        let start = (i * block).min(data.len());
        let end = ((i + 1) * block).min(data.len());
        &data[start..end]
    }
    let block = block as usize;
    (0..new.len().div_ceil(block))
        .filter(|&i| clamp(old, i, block) != clamp(new, i, block))
        .map(|i| i as u64)
        .collect()
}

/// Number of blocks of a device/file of `len` bytes (last one may be partial).
pub fn block_count(len: u64, block: u64) -> u64 {
    len.div_ceil(block)
}

/// Flips every bit of the byte at `offset`, in place.
pub fn corrupt_byte(path: &Path, offset: u64) {
    let f = open_rw(path);
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, offset).expect("read byte");
    b[0] ^= 0xFF;
    f.write_all_at(&b, offset).expect("write byte");
    f.sync_all().expect("fsync");
}

/// The whole content of a file or block device.
pub fn read_all(path: &Path) -> Vec<u8> {
    fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// Allocated bytes of a file (st_blocks * 512).
pub fn allocated(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    fs::metadata(path).expect("metadata").blocks() * 512
}

// ---------------------------------------------------------------------------------------------
// Comparison
// ---------------------------------------------------------------------------------------------

/// `None` when `a` and `b` (files or block devices) have the same length and bytes; otherwise a
/// description of the first difference.
pub fn first_difference(a: &Path, b: &Path) -> Option<String> {
    let la = size_of(a);
    let lb = size_of(b);
    let mut fa = BufReader::with_capacity(4 << 20, File::open(a).expect("open a"));
    let mut fb = BufReader::with_capacity(4 << 20, File::open(b).expect("open b"));
    let mut ba = vec![0u8; 4 << 20];
    let mut bb = vec![0u8; 4 << 20];
    let common = la.min(lb);
    let mut pos = 0u64;
    while pos < common {
        let n = ((common - pos) as usize).min(ba.len());
        fa.read_exact(&mut ba[..n]).expect("read a");
        fb.read_exact(&mut bb[..n]).expect("read b");
        if ba[..n] != bb[..n] {
            let i = (0..n).find(|&i| ba[i] != bb[i]).unwrap();
            let off = pos + i as u64;
            let differing = (0..n).filter(|&i| ba[i] != bb[i]).count();
            return Some(format!(
                "{} and {} differ first at byte {off} (block {} of 64K): {:#04x} vs {:#04x} \
                 ({differing} differing bytes in that {n}-byte chunk)",
                a.display(),
                b.display(),
                off / BLOCK,
                ba[i],
                bb[i]
            ));
        }
        pos += n as u64;
    }
    if la != lb {
        return Some(format!(
            "{} is {la} bytes but {} is {lb} bytes (equal up to {common})",
            a.display(),
            b.display()
        ));
    }
    None
}

/// Asserts `a` and `b` have the same length and bytes, reporting the first differing offset.
#[track_caller]
pub fn assert_identical(a: &Path, b: &Path) {
    if let Some(d) = first_difference(a, b) {
        panic!("not identical: {d}");
    }
}

/// Asserts `path` holds exactly `expected` (used for "target untouched").
#[track_caller]
pub fn assert_content(path: &Path, expected: &[u8], what: &str) {
    let actual = read_all(path);
    if actual.len() != expected.len() {
        panic!(
            "{what}: {} changed size: {} -> {}",
            path.display(),
            expected.len(),
            actual.len()
        );
    }
    if let Some(i) = (0..actual.len()).find(|&i| actual[i] != expected[i]) {
        panic!("{what}: {} changed, first at byte {i}", path.display());
    }
}

// ---------------------------------------------------------------------------------------------
// TLS identities and the receiver
// ---------------------------------------------------------------------------------------------

/// The byte ranges `START..END` (or `START-END`, decimal) printed in `text`.
pub fn printed_ranges(text: &str) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let bytes = text.as_bytes();
    let number_at = |i: usize| -> Option<(u64, usize)> {
        let end = (i..bytes.len())
            .find(|&j| !bytes[j].is_ascii_digit())
            .unwrap_or(bytes.len());
        (end > i)
            .then(|| text[i..end].parse().ok().map(|n| (n, end)))
            .flatten()
    };
    let mut i = 0;
    while i < bytes.len() {
        let starts_number = bytes[i].is_ascii_digit() && (i == 0 || !bytes[i - 1].is_ascii_digit());
        if let Some((start, after)) = starts_number.then(|| number_at(i)).flatten() {
            let sep = [&b".."[..], &b"-"[..]]
                .into_iter()
                .find(|sep| bytes[after..].starts_with(sep));
            if let Some((end, _)) = sep.and_then(|sep| number_at(after + sep.len())) {
                out.push((start, end));
            }
            i = after;
        } else {
            i += 1;
        }
    }
    out
}

/// Asserts `verify` output (stdout and stderr) prints a range containing byte `offset`, no
/// wider than `max_width` bytes.
#[track_caller]
pub fn assert_names_offset(out: &Output, offset: u64, max_width: u64) {
    let text = format!("{}\n{}", out.stdout_text(), out.stderr_text());
    let ranges = printed_ranges(&text);
    assert!(
        ranges
            .iter()
            .any(|&(a, b)| a <= offset && offset <= b && b - a <= max_width),
        "no printed range contains byte {offset} (ranges at most {max_width} bytes): {ranges:?}\n{out:?}"
    );
}

/// `blkmirror keygen DIR`; checks the contract and returns the fingerprint.
#[track_caller]
pub fn keygen(dir: &Path) -> String {
    let out = run(&["keygen", s(dir)]);
    out.assert_success();
    let lines: Vec<&String> = out.stdout.iter().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "keygen must print one line\n{out:?}");
    let fp = lines[0].trim().to_string();
    let hex = fp
        .strip_prefix("sha256:")
        .unwrap_or_else(|| panic!("fingerprint lacks sha256: prefix: {fp:?}"));
    assert!(
        hex.len() == 64 && hex.chars().all(|c| c.is_ascii_hexdigit()),
        "fingerprint is not sha256:<64 hex>: {fp:?}"
    );
    assert!(dir.join("key.pem").is_file(), "keygen wrote no key.pem");
    assert!(dir.join("cert.pem").is_file(), "keygen wrote no cert.pem");
    fp
}

/// A sender identity and a receiver identity, each knowing the other's fingerprint.
pub struct TlsPair {
    pub sender_dir: PathBuf,
    pub sender_fp: String,
    pub receiver_dir: PathBuf,
    pub receiver_fp: String,
}

impl TlsPair {
    pub fn new(scratch: &Scratch) -> TlsPair {
        let sender_dir = scratch.dir("id-sender");
        let receiver_dir = scratch.dir("id-receiver");
        let sender_fp = keygen(&sender_dir);
        let receiver_fp = keygen(&receiver_dir);
        assert_ne!(sender_fp, receiver_fp, "two keygens gave one fingerprint");
        TlsPair {
            sender_dir,
            sender_fp,
            receiver_dir,
            receiver_fp,
        }
    }

    /// `--identity SENDER --peer RECEIVER_FP`
    pub fn sender_args(&self) -> Vec<String> {
        vec![
            "--identity".into(),
            s(&self.sender_dir).into(),
            "--peer".into(),
            self.receiver_fp.clone(),
        ]
    }

    /// `--identity RECEIVER --allow-peer SENDER_FP`
    pub fn receiver_args(&self) -> Vec<String> {
        vec![
            "--identity".into(),
            s(&self.receiver_dir).into(),
            "--allow-peer".into(),
            self.sender_fp.clone(),
        ]
    }
}

/// A running `blkmirror receive TARGET --listen 127.0.0.1:0 --state-dir DIR ...`, ready (it
/// printed `listening on 127.0.0.1:PORT`). Killed and reaped on drop.
pub struct Receiver {
    pub proc: Proc,
    pub addr: SocketAddr,
}

impl Receiver {
    /// Starts a receiver on `127.0.0.1:0`, panicking with its output if it does not get ready.
    pub fn start(target: &Path, state: &Path, extra: &[String]) -> Receiver {
        Self::try_start_at(target, state, "127.0.0.1:0", extra).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Restarts a receiver on the address a previous (killed) one had: the sender's state is
    /// keyed by DEST, so a restarted receiver must come back where it was. Retries while the
    /// port is still held (e.g. TIME_WAIT without SO_REUSEADDR), up to a deadline.
    pub fn restart_at(target: &Path, state: &Path, addr: SocketAddr, extra: &[String]) -> Receiver {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            match Self::try_start_at(target, state, &addr.to_string(), extra) {
                Ok(r) => return r,
                Err(e) if Instant::now() >= deadline => panic!("{e}"),
                Err(e) => {
                    eprintln!("receiver restart on {addr} failed, retrying:\n{e}");
                    thread::sleep(Duration::from_millis(250));
                }
            }
        }
    }

    /// Spawns `receive TARGET --listen LISTEN --state-dir STATE EXTRA...` and waits until its
    /// first stdout line `listening on 127.0.0.1:PORT`; Err (with its output) if it exits or
    /// prints something else first.
    pub fn try_start_at(
        target: &Path,
        state: &Path,
        listen: &str,
        extra: &[String],
    ) -> Result<Receiver, String> {
        let mut args: Vec<String> = vec![
            "receive".into(),
            s(target).into(),
            "--listen".into(),
            listen.into(),
            "--state-dir".into(),
            s(state).into(),
        ];
        args.extend(extra.iter().cloned());
        let mut proc = Proc::blkmirror("receiver", &args);
        let deadline = Instant::now() + READY_TIMEOUT;
        let line = loop {
            if let Some(first) = proc.stdout_lines().into_iter().next() {
                break first;
            }
            if proc.try_wait().is_some() {
                proc.drain(Duration::from_secs(5));
                if let Some(first) = proc.stdout_lines().into_iter().next() {
                    break first;
                }
                return Err(format!(
                    "receiver exited before listening\n{}",
                    proc.describe()
                ));
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "receiver not listening after {READY_TIMEOUT:?}\n{}",
                    proc.describe()
                ));
            }
            thread::sleep(POLL);
        };
        let addr: SocketAddr = line
            .strip_prefix("listening on ")
            .and_then(|a| a.parse().ok())
            .ok_or_else(|| {
                format!(
                    "first stdout line must be `listening on 127.0.0.1:PORT`, got {line:?}\n{}",
                    proc.describe()
                )
            })?;
        assert_eq!(addr.ip().to_string(), "127.0.0.1", "{line:?}");
        assert_ne!(addr.port(), 0, "receiver announced port 0: {line:?}");
        if let Some(port) = listen.strip_prefix("127.0.0.1:").filter(|p| *p != "0") {
            assert_eq!(addr.port().to_string(), port, "{line:?}");
        }
        assert!(
            proc.try_wait().is_none(),
            "receiver exited after announcing\n{}",
            proc.describe()
        );
        Ok(Receiver { proc, addr })
    }

    /// `tls://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("tls://{}", self.addr)
    }
}

// ---------------------------------------------------------------------------------------------
// Loop devices and mounts
// ---------------------------------------------------------------------------------------------

/// A loop device attached to a file with `losetup -f --show`; detached on drop.
pub struct LoopDevice {
    pub path: PathBuf,
}

impl LoopDevice {
    pub fn attach(file: &Path) -> LoopDevice {
        let mut last = None;
        for _ in 0..5 {
            let out = run_program(
                "losetup",
                &["-f", "--show", s(file)],
                Duration::from_secs(60),
            );
            if out.code() == Some(0) {
                let dev = out.stdout_text().trim().to_string();
                assert!(dev.starts_with("/dev/loop"), "losetup printed {dev:?}");
                return LoopDevice {
                    path: PathBuf::from(dev),
                };
            }
            // Another test may have taken the free device between find and attach: retry.
            last = Some(out);
        }
        panic!("losetup -f --show failed\n{:?}", last.unwrap());
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn as_str(&self) -> &str {
        s(&self.path)
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        // Detach can fail with EBUSY for a moment after an unmount: retry until a deadline.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let out = run_program("losetup", &["-d", s(&self.path)], Duration::from_secs(30));
            if out.code() == Some(0) || Instant::now() >= deadline {
                if out.code() != Some(0) {
                    eprintln!("warning: could not detach {}\n{out:?}", self.path.display());
                }
                return;
            }
            thread::sleep(Duration::from_millis(100));
        }
    }
}

/// `mount DEV DIR`; unmounted on drop (declare it after the loop device so it drops first).
pub struct Mount {
    pub dir: PathBuf,
}

impl Mount {
    pub fn new(dev: &Path, dir: &Path) -> Mount {
        fs::create_dir_all(dir).unwrap();
        sh("mount", &[s(dev), s(dir)]);
        Mount {
            dir: dir.to_path_buf(),
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let out = run_program("umount", &[s(&self.dir)], Duration::from_secs(60));
            if out.code() == Some(0) {
                return;
            }
            if Instant::now() >= deadline {
                eprintln!("warning: umount failed, detaching lazily\n{out:?}");
                let _ = run_program("umount", &["-l", s(&self.dir)], Duration::from_secs(60));
                return;
            }
            thread::sleep(Duration::from_millis(100));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// sshd
// ---------------------------------------------------------------------------------------------

pub const SSHD: &str = "/usr/sbin/sshd";

/// A private sshd on 127.0.0.1 (own host key, own authorized_keys, root login by key only).
/// Killed and reaped on drop.
pub struct Sshd {
    pub proc: Proc,
    pub port: u16,
    pub user_key: PathBuf,
    /// A dir in the temp dir for the remote receiver's state (pass it as `--remote-state-dir`;
    /// the ssh session's `XDG_STATE_HOME` and `BLKMIRROR_STATE_DIR` also point here).
    pub remote_state: PathBuf,
}

impl Sshd {
    pub fn start(dir: &Path) -> Sshd {
        assert!(
            Path::new(SSHD).exists(),
            "{SSHD} missing: install openssh-server (.ci/run does)"
        );
        fs::create_dir_all("/run/sshd").expect("create /run/sshd");
        let host_key = dir.join("ssh_host_ed25519_key");
        let user_key = dir.join("user_ed25519_key");
        for key in [&host_key, &user_key] {
            if !key.exists() {
                sh(
                    "ssh-keygen",
                    &[
                        "-q",
                        "-t",
                        "ed25519",
                        "-N",
                        "",
                        "-C",
                        "blkmirror-test",
                        "-f",
                        s(key),
                    ],
                );
            }
        }
        let authorized = dir.join("authorized_keys");
        fs::copy(user_key.with_extension("pub"), &authorized).expect("authorized_keys");
        let remote_state = dir.join("remote-state");
        fs::create_dir_all(&remote_state).unwrap();
        let config = dir.join("sshd_config");

        let mut failures = Vec::new();
        for _attempt in 0..8 {
            // Port 0 is not allowed: take a free port from the kernel, release it, use it.
            let port = TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            fs::write(
                &config,
                format!(
                    "Port {port}\n\
                     ListenAddress 127.0.0.1\n\
                     HostKey {host}\n\
                     AuthorizedKeysFile {auth}\n\
                     PermitRootLogin yes\n\
                     PubkeyAuthentication yes\n\
                     PasswordAuthentication no\n\
                     KbdInteractiveAuthentication no\n\
                     StrictModes no\n\
                     UsePAM no\n\
                     UseDNS no\n\
                     PidFile {pid}\n\
                     SetEnv XDG_STATE_HOME={state} BLKMIRROR_STATE_DIR={state}\n\
                     LogLevel INFO\n",
                    host = host_key.display(),
                    auth = authorized.display(),
                    pid = dir.join("sshd.pid").display(),
                    state = remote_state.display(),
                ),
            )
            .unwrap();
            let mut proc = Proc::spawn("sshd", SSHD, &["-D", "-e", "-f", s(&config)]);
            let listening = format!("Server listening on 127.0.0.1 port {port}");
            let ready = wait_for(READY_TIMEOUT, "sshd to listen or exit", || {
                if proc.stderr_lines().iter().any(|l| l.contains(&listening)) {
                    Some(true)
                } else if proc.try_wait().is_some() {
                    Some(false)
                } else {
                    None
                }
            });
            if ready {
                // The line is printed after listen(2); confirm the port accepts anyway.
                wait_for(READY_TIMEOUT, "sshd port to accept", || {
                    TcpStream::connect(("127.0.0.1", port)).ok()
                });
                return Sshd {
                    proc,
                    port,
                    user_key,
                    remote_state,
                };
            }
            proc.drain(Duration::from_secs(5));
            let text = proc.describe();
            if !text.contains("Address already in use") {
                panic!("sshd failed to start\n{text}");
            }
            failures.push(text);
        }
        panic!(
            "sshd could not bind a port after 8 attempts:\n{}",
            failures.join("\n")
        );
    }

    /// The `--ssh-command` value: key auth only, no host key checks, no prompts.
    pub fn ssh_command(&self) -> String {
        format!(
            "ssh -i {} -o IdentitiesOnly=yes -o StrictHostKeyChecking=no \
             -o UserKnownHostsFile=/dev/null -o BatchMode=yes -o LogLevel=ERROR",
            self.user_key.display()
        )
    }

    /// `ssh://root@127.0.0.1:PORT/ABSOLUTE/PATH`
    pub fn url(&self, remote_path: &Path) -> String {
        assert!(remote_path.is_absolute());
        format!(
            "ssh://root@127.0.0.1:{}{}",
            self.port,
            remote_path.display()
        )
    }

    /// Runs `remote_command` through this sshd with [`Self::ssh_command`].
    pub fn ssh(&self, remote_command: &str) -> Output {
        let cmd = self.ssh_command();
        let mut args: Vec<String> = cmd.split_whitespace().skip(1).map(String::from).collect();
        args.extend([
            "-p".to_string(),
            self.port.to_string(),
            "root@127.0.0.1".to_string(),
            remote_command.to_string(),
        ]);
        run_program("ssh", &args, Duration::from_secs(120))
    }
}
