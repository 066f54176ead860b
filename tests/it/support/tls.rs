//! TLS identities and the listening receiver: [`keygen`] (checks its contract), [`TlsPair`]
//! (a sender and a receiver identity pinned to each other) and [`Receiver`] (a ready
//! `receive --listen 127.0.0.1:PORT`, killed on drop).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use super::{run, s, Proc, Scratch, POLL, READY_TIMEOUT};

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
        Self::try_start_with(target, state, listen, extra, &[])
    }

    /// Like [`Receiver::try_start_at`], with extra environment variables (fault injection).
    pub fn try_start_with(
        target: &Path,
        state: &Path,
        listen: &str,
        extra: &[String],
        env: &[(&str, &str)],
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
        Self::spawn(&args, listen, env)
    }

    /// A receiver of several targets: `receive --targets FILE --listen 127.0.0.1:0
    /// --state-dir STATE EXTRA...`, ready.
    pub fn start_targets(file: &Path, state: &Path, extra: &[String]) -> Receiver {
        let mut args: Vec<String> = vec![
            "receive".into(),
            "--targets".into(),
            s(file).into(),
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--state-dir".into(),
            s(state).into(),
        ];
        args.extend(extra.iter().cloned());
        Self::spawn(&args, "127.0.0.1:0", &[]).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Spawns `blkmirror ARGS` and waits for its `listening on` line (see above).
    fn spawn(args: &[String], listen: &str, env: &[(&str, &str)]) -> Result<Receiver, String> {
        let mut proc = Proc::blkmirror_env("receiver", args, env);
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
