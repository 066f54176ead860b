//! ssh transport: runs `blkmirror receive --stdio PATH` on a remote host through the system
//! `ssh` and speaks the protocol over the child's stdin/stdout. Authentication is ssh's.
//!
//! The command line is `SSH_COMMAND... -T -e none [-p PORT] [-l USER] HOST -- 'REMOTE
//! receive --stdio --create [--state-dir DIR] -- PATH'`, the remote part quoted for the
//! remote POSIX shell. ssh's stderr is inherited, so ssh's own errors and the remote
//! receiver's error line reach the user directly. Shutting the stream down closes ssh's stdin
//! (end of input for the remote receiver); dropping the stream does too.
//!
//! [`SshDialer`] is the `ssh://` [`Dialer`]: its [`Finisher`] is the ssh process.

use std::io;
use std::pin::Pin;
use std::process::{ExitStatus, Stdio};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use super::dialer::{BoxFuture, DialError, Dialed, Dialer, Finisher};
use super::{BoxStream, IoCause};

/// How long [`SshChild::finish`] waits for ssh to exit before killing it.
pub const FINISH_TIMEOUT: Duration = Duration::from_secs(30);

/// How to run ssh and what to run on the far side.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SshOptions {
    /// The local ssh program and its arguments, split like a POSIX shell would
    /// (e.g. `ssh -i key -o StrictHostKeyChecking=no`).
    pub ssh_command: String,
    /// The blkmirror program on the remote host, as shell words (e.g. `sudo blkmirror`).
    pub remote_command: String,
    /// The remote receiver's `--state-dir`, when not its default.
    pub remote_state_dir: Option<String>,
    /// Ask the remote receiver to create a missing file target (`send --create`).
    pub create: bool,
    /// The remote receiver's `--peer-timeout`, when not its default: both ends then give up
    /// on the other after the same silence (a receiver stuck reading a damaged frame is
    /// alive to the sender, which only its own bound can end).
    pub remote_peer_timeout: Option<Duration>,
}

impl Default for SshOptions {
    fn default() -> Self {
        SshOptions {
            ssh_command: "ssh".to_string(),
            remote_command: "blkmirror".to_string(),
            remote_state_dir: None,
            create: false,
            remote_peer_timeout: None,
        }
    }
}

/// Why ssh could not be started or did not end well.
#[derive(Debug, thiserror::Error)]
pub enum SshError {
    /// `--ssh-command` cannot be split into words, or is empty.
    #[error("invalid --ssh-command {text:?}: {cause}")]
    BadSshCommand {
        /// The option's text.
        text: String,
        /// What is wrong with it.
        cause: &'static str,
    },
    /// `--remote-command` cannot be split into words, or is empty.
    #[error("invalid remote command {text:?}: {cause}")]
    BadRemoteCommand {
        /// The option's text.
        text: String,
        /// What is wrong with it.
        cause: &'static str,
    },
    /// A host ssh would misread: empty, or starting with `-` (an option).
    #[error("invalid ssh host {host:?}: {cause}")]
    BadHost {
        /// The host as given.
        host: String,
        /// What is wrong with it.
        cause: &'static str,
    },
    /// The remote command line cannot be quoted for the remote shell (a NUL byte).
    #[error("invalid remote path {path:?}: {source}")]
    BadPath {
        /// The remote target path.
        path: String,
        /// The quoting error.
        source: shlex::QuoteError,
    },
    /// The ssh program could not be started.
    #[error("cannot run {program}: {source}{hint}")]
    Spawn {
        /// The program (first word of `--ssh-command`).
        program: String,
        /// The error of the spawn.
        source: IoCause,
        /// What to do, with a leading space (empty when there is nothing to say).
        hint: &'static str,
    },
    /// ssh exited 255: its own failure (connection or login).
    #[error("ssh could not connect to {host} (exit 255)")]
    CouldNotConnect {
        /// The remote host.
        host: String,
    },
    /// ssh exited with the remote command's failing status.
    #[error("the remote command on {host} failed (exit {code}; its error is shown above)")]
    RemoteFailed {
        /// The remote host.
        host: String,
        /// The exit status (neither 0 nor 255).
        code: i32,
    },
    /// ssh was killed by a signal.
    #[error("ssh to {host} was killed by signal {signal}")]
    Killed {
        /// The remote host.
        host: String,
        /// The signal number.
        signal: i32,
    },
    /// Waiting for ssh to exit failed.
    #[error("cannot wait for ssh to {host}: {source}")]
    Wait {
        /// The remote host.
        host: String,
        /// The error.
        source: io::Error,
    },
    /// ssh ended with neither an exit code nor a signal.
    #[error("cannot wait for ssh to {host}: unexpected status {status}")]
    UnexpectedStatus {
        /// The remote host.
        host: String,
        /// The status as reported.
        status: ExitStatus,
    },
    /// ssh did not exit within [`FINISH_TIMEOUT`] after the stream closed, and was killed.
    #[error("ssh to {host} did not exit within {secs} s; killed it")]
    Timeout {
        /// The remote host.
        host: String,
        /// The timeout, in seconds.
        secs: u64,
    },
}

impl SshError {
    /// True when trying again later may succeed. ssh exits 255 for its own failures, which
    /// are mostly the network's (connection refused, reset or timed out; also a failed
    /// login, which it does not tell apart), and an ssh that does not exit is stuck on the
    /// network. A bad command line, a missing ssh program or a failed remote receiver
    /// (whose own error is shown) stay failed.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            SshError::CouldNotConnect { .. } | SshError::Timeout { .. }
        )
    }
}

/// A running ssh: the byte stream to the remote receiver plus the process to reap.
///
/// Destructure it: `let SshConnection { stream, child } = spawn(..)?;`, run the protocol over
/// `stream`, drop it (closing ssh's stdin), then `child.finish().await`. When the protocol
/// fails with a closed connection, `finish` usually has the better explanation.
pub struct SshConnection {
    /// ssh's stdout and stdin, as one stream.
    pub stream: BoxStream,
    /// The ssh process, to finish after dropping `stream`.
    pub child: SshChild,
}

impl SshConnection {
    /// Closes the stream and waits for ssh (see [`SshChild::finish`]).
    pub async fn finish(self) -> Result<(), SshError> {
        drop(self.stream);
        self.child.finish().await
    }
}

/// The ssh process. Killed if dropped before [`SshChild::finish`].
pub struct SshChild {
    child: Child,
    host: String,
    /// How long [`SshChild::finish`] waits ([`FINISH_TIMEOUT`] unless told otherwise).
    finish_within: Duration,
}

impl SshChild {
    /// Waits (up to [`FINISH_TIMEOUT`] or the dialer's peer timeout, then kills) for ssh to
    /// exit and reports a failure. Drop the stream first, or the remote receiver may wait
    /// forever for end of input.
    pub async fn finish(mut self) -> Result<(), SshError> {
        let host = self.host.clone();
        let limit = self.finish_within;
        match tokio::time::timeout(limit, self.child.wait()).await {
            Ok(Ok(status)) => check_status(&host, status),
            Ok(Err(source)) => Err(SshError::Wait { host, source }),
            Err(_) => {
                let _ = self.child.kill().await;
                Err(SshError::Timeout {
                    host,
                    secs: limit.as_secs(),
                })
            }
        }
    }

    /// The ssh process id, if it is still running.
    pub fn id(&self) -> Option<u32> {
        self.child.id()
    }
}

fn check_status(host: &str, status: ExitStatus) -> Result<(), SshError> {
    use std::os::unix::process::ExitStatusExt;
    let host = host.to_string();
    match (status.code(), status.signal()) {
        (Some(0), _) => Ok(()),
        (Some(255), _) => Err(SshError::CouldNotConnect { host }),
        (Some(code), _) => Err(SshError::RemoteFailed { host, code }),
        (None, Some(signal)) => Err(SshError::Killed { host, signal }),
        (None, None) => Err(SshError::UnexpectedStatus { host, status }),
    }
}

/// Builds the full argument vector (program first) for reaching `path` on `host`.
pub fn build_command_line(
    user: Option<&str>,
    host: &str,
    port: Option<u16>,
    path: &str,
    opts: &SshOptions,
) -> Result<Vec<String>, SshError> {
    let mut args = split_ssh_command(&opts.ssh_command)?;
    args.extend(["-T", "-e", "none"].map(String::from));
    if let Some(port) = port {
        args.extend(["-p".to_string(), port.to_string()]);
    }
    if let Some(user) = user {
        args.extend(["-l".to_string(), user.to_string()]);
    }
    check_host(host)?;
    args.extend([host.to_string(), "--".to_string()]);
    args.push(remote_line(opts, path)?);
    Ok(args)
}

fn split_ssh_command(text: &str) -> Result<Vec<String>, SshError> {
    let bad = |cause| SshError::BadSshCommand {
        text: text.to_string(),
        cause,
    };
    match shlex::split(text) {
        None => Err(bad("unbalanced quotes or trailing backslash")),
        Some(words) if words.is_empty() => Err(bad("empty")),
        Some(words) => Ok(words),
    }
}

fn check_host(host: &str) -> Result<(), SshError> {
    let cause = if host.is_empty() {
        "empty"
    } else if host.starts_with('-') {
        "must not start with '-'"
    } else {
        return Ok(());
    };
    Err(SshError::BadHost {
        host: host.to_string(),
        cause,
    })
}

/// The single string ssh hands to the remote shell, quoted:
/// `REMOTE... receive --stdio [--create] [--peer-timeout N] [--state-dir DIR] -- PATH`:
/// `--create` (a missing remote file target is created sparse) only when the sender was given
/// `--create`.
fn remote_line(opts: &SshOptions, path: &str) -> Result<String, SshError> {
    let remote_command = &opts.remote_command;
    let bad_remote = |cause| SshError::BadRemoteCommand {
        text: remote_command.to_string(),
        cause,
    };
    let mut words = match shlex::split(remote_command) {
        None => return Err(bad_remote("unbalanced quotes or trailing backslash")),
        Some(words) if words.is_empty() => return Err(bad_remote("empty")),
        Some(words) => words,
    };
    words.extend(["receive", "--stdio"].map(String::from));
    if opts.create {
        words.push("--create".into());
    }
    if let Some(limit) = opts.remote_peer_timeout {
        words.extend([
            "--peer-timeout".to_string(),
            format!("{}s", limit.as_secs()),
        ]);
    }
    if let Some(dir) = &opts.remote_state_dir {
        words.extend(["--state-dir".to_string(), dir.clone()]);
    }
    words.extend(["--".to_string(), path.to_string()]);
    shlex::try_join(words.iter().map(String::as_str)).map_err(|source| SshError::BadPath {
        path: path.to_string(),
        source,
    })
}

/// Starts ssh to run the receiver for `path` on `host`; stdin/stdout become the stream.
pub fn spawn(
    user: Option<&str>,
    host: &str,
    port: Option<u16>,
    path: &str,
    opts: &SshOptions,
) -> Result<SshConnection, SshError> {
    let args = build_command_line(user, host, port, path, opts)?;
    tracing::debug!("running {args:?}");
    let mut child = Command::new(&args[0])
        .args(&args[1..])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| spawn_error(&args[0], e))?;
    let stdin = child.stdin.take().expect("stdin is piped");
    let stdout = child.stdout.take().expect("stdout is piped");
    let stream: BoxStream = Box::new(SshStream {
        stdout,
        stdin: Some(stdin),
    });
    let child = SshChild {
        child,
        host: host.to_string(),
        finish_within: FINISH_TIMEOUT,
    };
    Ok(SshConnection { stream, child })
}

/// Dials `ssh://[USER@]HOST[:PORT]/PATH`: each dial runs ssh (see [`spawn`]); the stream
/// is ssh's stdio and the [`Finisher`] its process, whose exit status is checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SshDialer {
    /// Remote login name (`-l`); `None`: ssh's default.
    pub user: Option<String>,
    /// The remote host.
    pub host: String,
    /// ssh port (`-p`); `None`: ssh's default.
    pub port: Option<u16>,
    /// The target's path on the remote host.
    pub path: String,
    /// The ssh program, the remote blkmirror and its state dir.
    pub options: SshOptions,
    /// How long to wait for ssh to exit after the session (`--peer-timeout`).
    pub finish_within: Duration,
}

impl Dialer for SshDialer {
    fn dial(&self) -> BoxFuture<'_, Result<Dialed, DialError>> {
        Box::pin(async move {
            let SshConnection { stream, mut child } = spawn(
                self.user.as_deref(),
                &self.host,
                self.port,
                &self.path,
                &self.options,
            )?;
            child.finish_within = self.finish_within;
            Ok(Dialed {
                stream,
                finisher: Some(Box::new(child)),
            })
        })
    }
}

impl From<SshError> for DialError {
    fn from(error: SshError) -> Self {
        let transient = error.is_transient();
        DialError::new(error, transient)
    }
}

impl Finisher for SshChild {
    fn finish(self: Box<Self>) -> BoxFuture<'static, Result<(), DialError>> {
        Box::pin(async move { SshChild::finish(*self).await.map_err(DialError::from) })
    }
}

/// ssh's stdout and stdin as one stream. Unlike a plain pipe, shutting it down really closes
/// ssh's stdin, so the remote receiver sees end of input.
struct SshStream {
    stdout: ChildStdout,
    stdin: Option<ChildStdin>,
}

impl AsyncRead for SshStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stdout).poll_read(cx, buf)
    }
}

impl AsyncWrite for SshStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.stdin.as_mut() {
            Some(stdin) => Pin::new(stdin).poll_write(cx, buf),
            None => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "write after shutdown of the ssh stream",
            ))),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.stdin.as_mut() {
            Some(stdin) => Pin::new(stdin).poll_flush(cx),
            None => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Some(stdin) = self.stdin.as_mut() {
            ready!(Pin::new(stdin).poll_flush(cx))?;
        }
        self.stdin = None;
        Poll::Ready(Ok(()))
    }
}

fn spawn_error(program: &str, e: io::Error) -> SshError {
    let hint = match e.kind() {
        io::ErrorKind::NotFound => " (install openssh-client or set --ssh-command)",
        _ => "",
    };
    SshError::Spawn {
        program: program.to_string(),
        source: e.into(),
        hint,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn ssh_dialer_streams_and_finishes() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        // `sh -c SCRIPT` ignores the ssh-style arguments after it ($0, $1, ...).
        let dialer = SshDialer {
            user: None,
            host: "h".into(),
            port: None,
            path: "x".into(),
            options: SshOptions {
                ssh_command: "sh -c 'cat; exit 3'".into(),
                ..SshOptions::default()
            },
            finish_within: FINISH_TIMEOUT,
        };
        let Dialed {
            mut stream,
            finisher,
        } = dialer.dial().await.unwrap();
        stream.write_all(b"hi").await.unwrap();
        stream.shutdown().await.unwrap();
        let mut got = Vec::new();
        stream.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"hi");
        drop(stream);
        let error = finisher.expect("ssh has a process").finish().await;
        let error = error.expect_err("ssh exited 3");
        assert!(
            matches!(
                error.downcast_ref::<SshError>(),
                Some(SshError::RemoteFailed { code: 3, .. })
            ),
            "{error:?}"
        );
    }

    fn line(
        user: Option<&str>,
        host: &str,
        port: Option<u16>,
        path: &str,
        opts: &SshOptions,
    ) -> Vec<String> {
        build_command_line(user, host, port, path, opts).unwrap()
    }

    #[test]
    fn default_command_line() {
        let opts = SshOptions::default();
        assert_eq!(
            line(None, "host", None, "/dev/sdb", &opts),
            [
                "ssh",
                "-T",
                "-e",
                "none",
                "host",
                "--",
                "blkmirror receive --stdio -- /dev/sdb"
            ]
        );
    }

    #[test]
    fn user_port_and_custom_commands() {
        let opts = SshOptions {
            ssh_command: "ssh -i 'my key' -o StrictHostKeyChecking=no".into(),
            remote_command: "sudo '/opt/my dir/blkmirror'".into(),
            remote_state_dir: None,
            create: true,
            remote_peer_timeout: Some(Duration::from_secs(5)),
        };
        assert_eq!(
            line(Some("root"), "::1", Some(2222), "/tmp/a b's", &opts),
            [
                "ssh",
                "-i",
                "my key",
                "-o",
                "StrictHostKeyChecking=no",
                "-T",
                "-e",
                "none",
                "-p",
                "2222",
                "-l",
                "root",
                "::1",
                "--",
                r#"sudo '/opt/my dir/blkmirror' receive --stdio --create --peer-timeout 5s -- "/tmp/a b's""#,
            ]
        );
    }

    #[test]
    fn remote_line_survives_a_shell() {
        let path = "/tmp/$(touch x) `y` \"z\" 'w'";
        let remote = remote_line(&SshOptions::default(), path).unwrap();
        let words = shlex::split(&remote).unwrap();
        assert_eq!(words, ["blkmirror", "receive", "--stdio", "--", path]);
        let opts = SshOptions {
            remote_state_dir: Some("/var/lib/my state".into()),
            create: true,
            ..SshOptions::default()
        };
        assert_eq!(
            remote_line(&opts, "/dev/sdb").unwrap(),
            "blkmirror receive --stdio --create --state-dir '/var/lib/my state' -- /dev/sdb"
        );
    }

    #[test]
    fn bad_inputs_are_named() {
        let opts = SshOptions::default();
        let err = |user, host, path, opts: &SshOptions| {
            build_command_line(user, host, None, path, opts)
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            err(None, "-oProxyCommand=x", "/x", &opts),
            r#"invalid ssh host "-oProxyCommand=x": must not start with '-'"#
        );
        assert_eq!(err(None, "", "/x", &opts), r#"invalid ssh host "": empty"#);
        assert!(err(None, "h", "/a\0b", &opts).starts_with(r#"invalid remote path "/a\0b""#));
        let unbalanced = SshOptions {
            ssh_command: "ssh -i 'key".into(),
            ..SshOptions::default()
        };
        assert_eq!(
            err(None, "h", "/x", &unbalanced),
            r#"invalid --ssh-command "ssh -i 'key": unbalanced quotes or trailing backslash"#
        );
        let empty = SshOptions {
            remote_command: " ".into(),
            ..SshOptions::default()
        };
        assert_eq!(
            err(None, "h", "/x", &empty),
            r#"invalid remote command " ": empty"#
        );
    }

    #[tokio::test]
    async fn missing_ssh_program_is_explained() {
        let opts = SshOptions {
            ssh_command: "/nonexistent/ssh".into(),
            ..SshOptions::default()
        };
        let error = spawn(None, "h", None, "/x", &opts).err().unwrap();
        assert_eq!(
            error.to_string(),
            "cannot run /nonexistent/ssh: No such file or directory \
             (install openssh-client or set --ssh-command)"
        );
        assert!(!error.is_transient());
        let SshError::Spawn { source, .. } = &error else {
            panic!("{error:?}");
        };
        assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
    }

    #[tokio::test]
    async fn finish_reports_exit_status() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        // `sh -c SCRIPT` ignores the ssh-style arguments after it ($0, $1, ...).
        let run = |script: &str| SshOptions {
            ssh_command: format!("sh -c {}", shlex::try_quote(script).unwrap()),
            ..SshOptions::default()
        };
        let mut echo = spawn(None, "h", None, "/x", &run("cat")).unwrap();
        echo.stream.write_all(b"hi").await.unwrap();
        echo.stream.shutdown().await.unwrap();
        let mut got = Vec::new();
        echo.stream.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"hi");
        echo.finish().await.unwrap();
        let failing = spawn(None, "h", None, "/x", &run("exit 255")).unwrap();
        let error = failing.finish().await.unwrap_err();
        assert_eq!(error.to_string(), "ssh could not connect to h (exit 255)");
        assert!(error.is_transient());
        let remote = spawn(None, "h", None, "/x", &run("exit 3")).unwrap();
        let error = remote.finish().await.unwrap_err();
        assert!(matches!(error, SshError::RemoteFailed { code: 3, .. }));
        assert!(!error.is_transient());
    }
}
