//! A private sshd on 127.0.0.1 ([`Sshd`]): its own host key and authorized key, root login by
//! key only, a state dir for the remote receiver; killed on drop.

use std::fs;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{run_program, s, sh, wait_for, Output, Proc, READY_TIMEOUT};

pub const SSHD: &str = "/usr/sbin/sshd";

/// A private sshd on 127.0.0.1 (own host key, own authorized_keys, root login by key only).
/// Killed and reaped on drop.
pub struct Sshd {
    /// The daemon, held only to be killed and reaped when the guard drops.
    _proc: Proc,
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
                    _proc: proc,
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
