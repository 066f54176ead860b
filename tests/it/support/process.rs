//! Child processes under test: [`Proc`] (spawn with captured output, signal by PID, wait for a
//! line or an exit with a deadline, killed and reaped on drop), [`Output`] (a finished
//! command and the error-line contract), and [`run`], [`run_program`], [`sh`], [`wait_for`].

use std::ffi::OsStr;
use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::kill;
pub use nix::sys::signal::Signal;
use nix::unistd::Pid;
use serde_json::Value;

use super::{bin, POLL, RUN_TIMEOUT};

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
        Self::spawn_in(name, program, args, None, &[])
    }

    /// Spawns in `cwd` (if given) with extra environment variables `env`.
    pub fn spawn_in<S: AsRef<OsStr>>(
        name: &str,
        program: &str,
        args: &[S],
        cwd: Option<&Path>,
        env: &[(&str, &str)],
    ) -> Proc {
        let mut cmd = Command::new(program);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .env("NO_COLOR", "1")
            .envs(env.iter().copied());
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

    /// Spawns the binary under test with extra environment variables (fault injection).
    pub fn blkmirror_env<S: AsRef<OsStr>>(name: &str, args: &[S], env: &[(&str, &str)]) -> Proc {
        Self::spawn_in(name, bin(), args, None, env)
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Sends a signal to this process (by PID), unless it has already been reaped.
    pub fn signal(&mut self, sig: Signal) {
        if self.try_wait().is_none() {
            // Our own child, not yet reaped: the PID cannot have been reused. A failure (it
            // exited in the meantime) is what the caller's next wait sees.
            let _ = kill(Pid::from_raw(self.pid()), sig);
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
        self.signal(Signal::SIGKILL);
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
            // Our own child, which has not been reaped yet.
            let _ = kill(Pid::from_raw(self.pid()), Signal::SIGKILL);
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

    /// The stderr lines that contain `text`.
    pub fn stderr_containing(&self, text: &str) -> Vec<&str> {
        self.stderr
            .iter()
            .map(String::as_str)
            .filter(|l| l.contains(text))
            .collect()
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

/// `name=NUMBER` from a log line (the text log format's fields).
#[track_caller]
pub fn log_number(line: &str, name: &str) -> u64 {
    let key = format!(" {name}=");
    let at = line
        .find(&key)
        .unwrap_or_else(|| panic!("no {name} in {line}"))
        + key.len();
    let digits: String = line[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits
        .parse()
        .unwrap_or_else(|_| panic!("{name} is not a number in {line}"))
}
