//! Running the external programs the providers need (lvm2 tools, hook commands) through
//! `duct`: stdin closed, stdout and stderr captured, the exit status described in words, and the
//! lvm2-specific failures (not installed, not root) told apart from ordinary ones.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::atomic::{AtomicBool, Ordering};

use super::SnapshotError;

/// Where lvm2 installs its tools; searched after `PATH`, which often lacks the sbin directories
/// (cron, non-login shells).
const SBIN_DIRS: [&str; 3] = ["/usr/sbin", "/sbin", "/usr/local/sbin"];

/// What a finished program left.
#[derive(Debug)]
pub struct Ran {
    /// How it ended.
    pub status: ExitStatus,
    /// All it printed on stdout.
    pub stdout: String,
    /// All it printed on stderr.
    pub stderr: String,
}

impl Ran {
    /// Whether it exited 0.
    pub fn success(&self) -> bool {
        self.status.success()
    }

    /// The last non-empty stderr line, trimmed (or a placeholder).
    pub fn last_stderr_line(&self) -> String {
        self.stderr
            .lines()
            .map(str::trim)
            .rfind(|l| !l.is_empty())
            .unwrap_or("(no output on stderr)")
            .to_string()
    }

    /// All non-empty stderr lines, trimmed, joined with "; " (one line for error messages).
    pub fn stderr_one_line(&self) -> String {
        let lines: Vec<&str> = self
            .stderr
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        if lines.is_empty() {
            "(no output on stderr)".to_string()
        } else {
            lines.join("; ")
        }
    }
}

/// "exit 5", "killed by signal 9".
pub fn describe_status(status: &ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        (None, None) => "unknown status".to_string(),
    }
}

/// A program's path: found on `PATH`, else in the usual sbin directories.
pub fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| OsString::from("/usr/bin:/bin"));
    std::env::split_paths(&path)
        .chain(SBIN_DIRS.iter().map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Runs `program args...` with `env`, stdin closed, output captured; a non-zero exit is not an
/// error here (the caller decides). Errors only when it cannot be started.
pub fn run(program: &Path, args: &[String], env: &[(&str, &str)]) -> std::io::Result<Ran> {
    let mut expression = duct::cmd(program, args)
        .stdin_null()
        .stdout_capture()
        .stderr_capture()
        .unchecked();
    for (name, value) in env {
        expression = expression.env(name, value);
    }
    let output = expression.run()?;
    Ok(Ran {
        status: output.status,
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    })
}

/// How often a running program is looked at for a stop request.
const STOP_POLL: std::time::Duration = std::time::Duration::from_millis(20);

/// How a bounded run ([`run_bounded`]) ended.
pub enum Bounded {
    /// The program exited (successfully or not).
    Finished(Ran),
    /// A stop was requested: the program's process group was killed.
    Stopped,
    /// It ran past its time limit: its process group was killed.
    TimedOut,
}

/// Like [`run`], but the program runs in a process group of its own and the whole group is
/// killed (SIGKILL) as soon as `stop` is set or `timeout` has passed. For commands that may be
/// abandoned safely (hooks), never for lvm2 tools, which must finish what they start.
pub fn run_bounded(
    program: &Path,
    args: &[String],
    env: &[(&str, &str)],
    stop: &AtomicBool,
    timeout: Option<std::time::Duration>,
) -> std::io::Result<Bounded> {
    use std::os::unix::process::CommandExt;
    let started = std::time::Instant::now();
    let mut expression = duct::cmd(program, args)
        .stdin_null()
        .stdout_capture()
        .stderr_capture()
        .unchecked()
        .before_spawn(|command| {
            command.process_group(0);
            Ok(())
        });
    for (name, value) in env {
        expression = expression.env(name, value);
    }
    let handle = expression.start()?;
    loop {
        if let Some(output) = handle.try_wait()? {
            return Ok(Bounded::Finished(Ran {
                status: output.status,
                stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
                stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
            }));
        }
        let stopped = stop.load(Ordering::Relaxed);
        let late = timeout.is_some_and(|limit| started.elapsed() >= limit);
        if stopped || late {
            for pid in handle.pids() {
                let group = nix::unistd::Pid::from_raw(-(pid as i32));
                let _ = nix::sys::signal::kill(group, nix::sys::signal::Signal::SIGKILL);
            }
            let _ = handle.wait();
            return Ok(if stopped {
                Bounded::Stopped
            } else {
                Bounded::TimedOut
            });
        }
        std::thread::sleep(STOP_POLL);
    }
}

/// The lvm2 tools blkmirror calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LvmTool {
    /// `lvs`: report LVs.
    Lvs,
    /// `vgs`: report volume groups.
    Vgs,
    /// `lvcreate`: take snapshots.
    Lvcreate,
    /// `lvchange`: activate thin snapshots.
    Lvchange,
    /// `lvremove`: remove snapshots.
    Lvremove,
    /// `dmsetup`: thin-pool status and metadata snapshots.
    Dmsetup,
}

impl LvmTool {
    /// The program's name.
    pub fn name(self) -> &'static str {
        match self {
            LvmTool::Lvs => "lvs",
            LvmTool::Vgs => "vgs",
            LvmTool::Lvcreate => "lvcreate",
            LvmTool::Lvchange => "lvchange",
            LvmTool::Lvremove => "lvremove",
            LvmTool::Dmsetup => "dmsetup",
        }
    }
}

/// Is lvm2 installed (is `tool` found)?
pub fn lvm_installed(tool: LvmTool) -> bool {
    find_program(tool.name()).is_some()
}

/// The locale of every lvm2 and thin-provisioning tool blkmirror runs: C, so that what they
/// print parses alike on every host (lvm2 prints percentages with the locale's decimal
/// separator: "12,34" under de_DE, which no report parser here takes) and their messages are
/// the English ones matched here.
pub const TOOL_LOCALE: (&str, &str) = ("LC_ALL", "C");

/// Runs an lvm2 tool and returns what it printed; a failure names the command and keeps its
/// stderr, plus `hint` (what to do). `LVM_SUPPRESS_FD_WARNINGS` silences lvm2's complaints
/// about inherited file descriptors; it runs in the C locale ([`TOOL_LOCALE`]).
pub fn lvm(tool: LvmTool, args: &[String], hint: &'static str) -> Result<Ran, SnapshotError> {
    let program = tool.name();
    let Some(path) = find_program(program) else {
        return Err(SnapshotError::LvmMissing { program });
    };
    let uid = nix::unistd::geteuid();
    if !uid.is_root() {
        return Err(SnapshotError::NotRoot {
            program,
            detail: format!("this process runs as uid {uid}"),
        });
    }
    run_lvm(&path, program, args, hint)
}

/// [`lvm`] once the program is found and the caller is root.
fn run_lvm(
    path: &Path,
    program: &'static str,
    args: &[String],
    hint: &'static str,
) -> Result<Ran, SnapshotError> {
    let started = std::time::Instant::now();
    let ran = run(
        path,
        args,
        &[("LVM_SUPPRESS_FD_WARNINGS", "1"), TOOL_LOCALE],
    );
    tracing::debug!(command = %command_line(program, args), elapsed_ms = started.elapsed().as_millis() as u64, "ran");
    let ran = ran.map_err(|error| {
        if error.kind() == std::io::ErrorKind::NotFound {
            SnapshotError::LvmMissing { program }
        } else {
            SnapshotError::Spawn {
                command: command_line(program, args),
                error,
            }
        }
    })?;
    if ran.success() {
        return Ok(ran);
    }
    let stderr = ran.stderr_one_line();
    if stderr.contains("Permission denied") || stderr.contains("non-root") {
        return Err(SnapshotError::NotRoot {
            program,
            detail: stderr,
        });
    }
    Err(SnapshotError::LvmCommand {
        command: command_line(program, args),
        status: describe_status(&ran.status),
        stderr,
        hint,
    })
}

/// `program arg arg...`, quoted where needed, for messages.
pub fn command_line(program: &str, args: &[String]) -> String {
    std::iter::once(program.to_string())
        .chain(
            args.iter()
                .map(|a| shlex::try_quote(a).map_or_else(|_| a.clone(), |q| q.into_owned())),
        )
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lvm_tools_run_in_the_c_locale() {
        let sh = find_program("sh").expect("sh");
        let args = ["-c".to_string(), r#"printf '%s' "$LC_ALL""#.into()];
        let ran = run_lvm(&sh, "lvs", &args, "no hint").unwrap();
        assert_eq!(ran.stdout, "C");
    }

    #[test]
    fn runs_and_captures() {
        let sh = find_program("sh").expect("sh");
        let args = [
            "-c".to_string(),
            "echo out; echo >&2 one; echo >&2 '  two  '; exit 3".into(),
        ];
        let ran = run(&sh, &args, &[]).unwrap();
        assert!(!ran.success());
        assert_eq!(describe_status(&ran.status), "exit 3");
        assert_eq!(ran.stdout, "out\n");
        assert_eq!(ran.last_stderr_line(), "two");
        assert_eq!(ran.stderr_one_line(), "one; two");
    }

    #[test]
    fn env_is_passed_and_signals_described() {
        let sh = find_program("sh").expect("sh");
        let args = ["-c".to_string(), "echo $X_TEST; kill -9 $$".into()];
        let ran = run(&sh, &args, &[("X_TEST", "seen")]).unwrap();
        assert_eq!(ran.stdout, "seen\n");
        assert_eq!(describe_status(&ran.status), "killed by signal 9");
        assert_eq!(ran.last_stderr_line(), "(no output on stderr)");
    }

    #[test]
    fn a_stop_kills_the_whole_group() {
        let sh = find_program("sh").expect("sh");
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("pid");
        // The shell forks a sleeping child: killing only the shell would leave it running.
        let script = format!("echo $$ > '{}'; sleep 600 & wait", pid_file.display());
        let stop = AtomicBool::new(false);
        let ran = std::thread::scope(|scope| {
            let runner = scope.spawn(|| run_bounded(&sh, &["-c".into(), script], &[], &stop, None));
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while !pid_file.exists() && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            stop.store(true, Ordering::Relaxed);
            runner.join().unwrap().unwrap()
        });
        assert!(
            matches!(ran, Bounded::Stopped),
            "a stopped run reports no outcome"
        );
        let group: i32 = std::fs::read_to_string(&pid_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let group = nix::unistd::Pid::from_raw(-group);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while nix::sys::signal::kill(group, None).is_ok() {
            assert!(
                std::time::Instant::now() < deadline,
                "the hook's children outlived the stop"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    #[test]
    fn missing_program() {
        assert!(find_program("blkmirror-no-such-program").is_none());
        assert_eq!(
            command_line("lvcreate", &["-n".into(), "a b".into()]),
            "lvcreate -n 'a b'"
        );
    }
}
