//! Running blkmirror as a service, and the habits around it: man pages and shell completions
//! generated from the grammar, `keygen --show`, the receiver's fingerprint in its log,
//! sd_notify (READY/STOPPING/WATCHDOG on a socket the test binds, as systemd would) and the
//! unit files of `contrib/systemd/`, checked with `systemd-analyze verify`.

use std::fs;
use std::net::TcpStream;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::support::*;

/// A roff page as plain text: `\-` is how roff spells a hyphen.
fn unroff(page: &str) -> String {
    page.replace("\\-", "-")
}

/// The commands of the top level and of `history`, as their man pages name them.
const PAGES: &[&str] = &[
    "blkmirror",
    "blkmirror-send",
    "blkmirror-receive",
    "blkmirror-keygen",
    "blkmirror-verify",
    "blkmirror-status",
    "blkmirror-demo",
    "blkmirror-scrub",
    "blkmirror-history",
    "blkmirror-history-list",
    "blkmirror-history-prune",
    "blkmirror-history-restore",
    "blkmirror-man",
    "blkmirror-completions",
    "blkmirror-run",
    "blkmirror-check-config",
];

#[test]
fn man_page_of_send_mentions_peer_timeout() {
    let t = Scratch::new("man-send");
    let dir = t.path("man1");
    run(&["man", "--out", s(&dir)]).assert_success();
    let send = unroff(&fs::read_to_string(dir.join("blkmirror-send.1")).unwrap());
    assert!(send.contains(".TH blkmirror-send 1"), "{send}");
    for option in ["--peer-timeout", "--interval", "--identity", "--once"] {
        assert!(
            send.contains(option),
            "blkmirror-send.1 lacks {option}:\n{send}"
        );
    }
    // Without --out: the top page on stdout, naming the pages of its commands.
    let top = run(&["man"]);
    top.assert_success();
    let text = unroff(&top.stdout_text());
    assert!(text.contains(".TH blkmirror 1"), "{top:?}");
    for page in [
        "blkmirror-send(1)",
        "blkmirror-receive(1)",
        "blkmirror-man(1)",
    ] {
        assert!(text.contains(page), "top page lacks {page}\n{top:?}");
    }
}

#[test]
fn man_out_writes_a_page_per_command() {
    let t = Scratch::new("man-out");
    // A directory that does not exist yet is created.
    let dir = t.path("share/man/man1");
    let out = run(&["man", "--out", s(&dir)]);
    out.assert_success();
    let mut listed: Vec<PathBuf> = out.stdout.iter().map(PathBuf::from).collect();
    let mut expected: Vec<PathBuf> = PAGES.iter().map(|p| dir.join(format!("{p}.1"))).collect();
    listed.sort();
    expected.sort();
    assert_eq!(listed, expected, "stdout lists every page written\n{out:?}");
    let mut on_disk: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    on_disk.sort();
    assert_eq!(on_disk, expected, "one page per command, nothing else");
    for page in PAGES {
        let text = unroff(&fs::read_to_string(dir.join(format!("{page}.1"))).unwrap());
        assert!(
            text.contains(&format!(".TH {page} 1")),
            "{page}.1 is not its page:\n{text}"
        );
    }
    // Where the pages cannot go: one line naming the place, exit 1.
    let blocker = t.path("a-file");
    fs::write(&blocker, "x").unwrap();
    run(&["man", "--out", s(&blocker.join("man1"))]).assert_error(1, &[s(&blocker)]);
}

#[test]
fn completions_of_each_shell_name_the_commands() {
    let bash = run(&["completions", "bash"]);
    bash.assert_success();
    let script = bash.stdout_text();
    assert!(script.contains("_blkmirror()"), "{bash:?}");
    assert!(script.contains("complete -F _blkmirror"), "{bash:?}");
    for word in [
        "send",
        "receive",
        "keygen",
        "--peer-timeout",
        "--allow-peer",
    ] {
        assert!(script.contains(word), "bash completion lacks {word}");
    }
    for (shell, marker) in [
        ("zsh", "#compdef blkmirror"),
        ("fish", "complete -c blkmirror"),
        ("elvish", "edit:completion:arg-completer[blkmirror]"),
        ("powershell", "Register-ArgumentCompleter"),
    ] {
        let out = run(&["completions", shell]);
        out.assert_success();
        let text = out.stdout_text();
        assert!(text.contains(marker), "{shell}: no {marker:?}\n{out:?}");
        assert!(text.contains("receive"), "{shell}: no receive\n{out:?}");
    }
}

#[test]
fn completions_of_an_unknown_shell_is_a_usage_error() {
    let out = run(&["completions", "tcsh"]);
    out.assert_error(2, &["tcsh", "bash", "zsh", "fish", "elvish", "powershell"]);
    assert_eq!(out.stderr.len(), 1, "one line only\n{out:?}");
    assert!(out.stdout.is_empty(), "{out:?}");
    run(&["completions"]).assert_error(2, &["SHELL"]);
}

/// Every file under `dir` with its bytes and modification time.
fn snapshot_of(dir: &Path) -> Vec<(PathBuf, Vec<u8>, std::time::SystemTime)> {
    let mut files: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let path = e.unwrap().path();
            let meta = fs::metadata(&path).unwrap();
            let bytes = fs::read(&path).unwrap();
            (path, bytes, meta.modified().unwrap())
        })
        .collect();
    files.sort();
    files
}

#[test]
fn keygen_show_prints_the_existing_fingerprint_and_touches_nothing() {
    let t = Scratch::new("keygen-show");
    let dir = t.dir("id");
    let made = keygen(&dir);
    let before = snapshot_of(&dir);
    let out = run(&["keygen", "--show", s(&dir)]);
    out.assert_success();
    assert_eq!(out.stdout, vec![made.clone()], "{out:?}");
    assert!(out.stderr.is_empty(), "{out:?}");
    assert_eq!(snapshot_of(&dir), before, "--show changed the identity");
    // A second identity shows its own fingerprint, not a cached one.
    let other = t.dir("other");
    let second = keygen(&other);
    let out = run(&["keygen", "--show", s(&other)]);
    assert_eq!(out.assert_success().stdout, vec![second]);
}

#[test]
fn keygen_show_without_a_usable_identity_fails_naming_the_file() {
    let t = Scratch::new("keygen-show-none");
    // An empty directory: nothing is created in it.
    let empty = t.dir("empty");
    let out = run(&["keygen", "--show", s(&empty)]);
    out.assert_error(1, &[s(&empty.join("cert.pem")), "blkmirror keygen"]);
    assert!(out.stdout.is_empty(), "{out:?}");
    assert_eq!(
        fs::read_dir(&empty).unwrap().count(),
        0,
        "--show created files"
    );
    // A directory that does not exist is not created.
    let missing = t.path("missing");
    run(&["keygen", "--show", s(&missing)]).assert_error(1, &[s(&missing.join("cert.pem"))]);
    assert!(!missing.exists(), "--show created {}", missing.display());
    // A certificate without its key.
    let half = t.dir("half");
    keygen(&half);
    fs::remove_file(half.join("key.pem")).unwrap();
    run(&["keygen", "--show", s(&half)]).assert_error(1, &[s(&half.join("key.pem"))]);
    // An unreadable certificate (a directory in its place) and a damaged one.
    let odd = t.dir("odd");
    keygen(&odd);
    fs::remove_file(odd.join("cert.pem")).unwrap();
    fs::create_dir(odd.join("cert.pem")).unwrap();
    run(&["keygen", "--show", s(&odd)]).assert_error(1, &[s(&odd.join("cert.pem"))]);
    let damaged = t.dir("damaged");
    keygen(&damaged);
    fs::write(damaged.join("cert.pem"), "not a certificate\n").unwrap();
    run(&["keygen", "--show", s(&damaged)])
        .assert_error(1, &[s(&damaged.join("cert.pem")), "certificate"]);
}

#[test]
fn keygen_listening_receiver_logs_its_own_fingerprint() {
    let t = Scratch::new("keygen-receiver-log");
    let ids = TlsPair::new(&t);
    let mut args = ids.receiver_args();
    args.push("--create".into());
    let mut receiver = Receiver::start(&t.path("target.img"), &t.dir("state"), &args);
    let fp = ids.receiver_fp.clone();
    receiver.proc.wait_line(
        Stream::Stderr,
        READY_TIMEOUT,
        "the receiver's fingerprint",
        |l| l.contains(&fp),
    );
    let lines = receiver.proc.stderr_lines();
    let with_fp: Vec<&String> = lines.iter().filter(|l| l.contains(&fp)).collect();
    assert_eq!(with_fp.len(), 1, "one line: {lines:?}");
    assert!(with_fp[0].contains("INFO"), "{with_fp:?}");
    assert!(
        !lines.iter().any(|l| l.contains(&ids.sender_fp)),
        "logged the sender's fingerprint instead: {lines:?}"
    );

    // A receiver of several targets (--targets FILE) logs it too.
    let file = t.path("targets.toml");
    fs::write(
        &file,
        format!(
            "[a]\npath = \"{}\"\nallow = [\"{}\"]\ncreate = true\n",
            t.path("a.img").display(),
            ids.sender_fp
        ),
    )
    .unwrap();
    let extra = vec!["--identity".into(), s(&ids.receiver_dir).into()];
    let mut named = Receiver::start_targets(&file, &t.dir("state-named"), &extra);
    named.proc.wait_line(
        Stream::Stderr,
        READY_TIMEOUT,
        "the receiver's fingerprint",
        |l| l.contains(&fp) && l.contains("INFO"),
    );
}

/// A socket standing in for systemd's notify socket.
struct NotifySocket {
    socket: UnixDatagram,
    path: PathBuf,
    /// Every datagram received so far, as text.
    seen: Vec<String>,
}

impl NotifySocket {
    fn bind(path: PathBuf) -> NotifySocket {
        let socket = UnixDatagram::bind(&path).expect("bind the notify socket");
        socket.set_read_timeout(Some(POLL)).unwrap();
        NotifySocket {
            socket,
            path,
            seen: Vec::new(),
        }
    }

    /// Waits (bounded) for a datagram with the line `line`; panics with what came otherwise, or
    /// as soon as `proc` has exited without sending it.
    #[track_caller]
    fn expect(&mut self, line: &str, timeout: Duration, proc: &mut Proc) {
        let deadline = Instant::now() + timeout;
        let mut buf = [0u8; 4096];
        loop {
            match self.socket.recv(&mut buf) {
                Ok(n) => {
                    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                    self.seen.push(text.clone());
                    if text.lines().any(|l| l == line) {
                        return;
                    }
                }
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut =>
                {
                    // Nothing queued: a process that has exited sends nothing more.
                    if proc.try_wait().is_some() {
                        panic!(
                            "exited without sending {line:?}; received {:?}\n{}",
                            self.seen,
                            proc.describe()
                        );
                    }
                }
                Err(e) => panic!("notify socket: {e}"),
            }
            if Instant::now() >= deadline {
                panic!(
                    "no {line:?} within {timeout:?}; received {:?}\n{}",
                    self.seen,
                    proc.describe()
                );
            }
        }
    }

    fn env(&self) -> String {
        s(&self.path).to_string()
    }
}

#[test]
fn notify_listening_receiver_says_ready_then_stopping_and_exits_0() {
    let t = Scratch::new("notify-receiver");
    let ids = TlsPair::new(&t);
    let mut notify = NotifySocket::bind(t.path("notify.sock"));
    let mut args = ids.receiver_args();
    args.push("--create".into());
    let env = notify.env();
    let mut receiver = Receiver::try_start_with(
        &t.path("target.img"),
        &t.dir("state"),
        "127.0.0.1:0",
        &args,
        &[("NOTIFY_SOCKET", env.as_str())],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    notify.expect("READY=1", READY_TIMEOUT, &mut receiver.proc);
    // Ready means listening: the port takes connections now.
    TcpStream::connect(receiver.addr).expect("READY=1 before the port listens");
    assert!(
        !notify.seen.iter().any(|d| d.contains("STOPPING=1")),
        "{:?}",
        notify.seen
    );
    receiver.proc.signal(Signal::SIGTERM);
    notify.expect("STOPPING=1", RUN_TIMEOUT, &mut receiver.proc);
    let status = receiver.proc.wait_exit(RUN_TIMEOUT);
    assert_eq!(status.code(), Some(0), "{}", receiver.proc.describe());
    let ready = notify.seen.iter().filter(|d| d.contains("READY=1")).count();
    assert_eq!(ready, 1, "READY=1 once: {:?}", notify.seen);
}

#[test]
fn notify_receiver_pings_the_watchdog_systemd_asks_for() {
    let t = Scratch::new("notify-watchdog");
    let ids = TlsPair::new(&t);
    let mut notify = NotifySocket::bind(t.path("notify.sock"));
    let state = t.dir("state");
    let target = t.path("target.img");
    // systemd sets WATCHDOG_PID to the service's PID: `exec` keeps the shell's.
    let mut args: Vec<String> = vec![
        "-c".into(),
        "WATCHDOG_PID=$$ exec \"$0\" \"$@\"".into(),
        bin().into(),
        "receive".into(),
        s(&target).into(),
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--state-dir".into(),
        s(&state).into(),
        "--create".into(),
    ];
    args.extend(ids.receiver_args());
    let env = notify.env();
    let mut proc = Proc::spawn_in(
        "receiver",
        "sh",
        &args,
        None,
        &[("NOTIFY_SOCKET", env.as_str()), ("WATCHDOG_USEC", "200000")],
    );
    proc.wait_line(Stream::Stdout, READY_TIMEOUT, "listening on", |l| {
        l.starts_with("listening on ")
    });
    notify.expect("READY=1", READY_TIMEOUT, &mut proc);
    // Every 100 ms (half of 200 ms): several pings come within a few seconds.
    for _ in 0..3 {
        notify.expect("WATCHDOG=1", Duration::from_secs(30), &mut proc);
    }
    proc.signal(Signal::SIGTERM);
    notify.expect("STOPPING=1", RUN_TIMEOUT, &mut proc);
    assert_eq!(proc.wait_exit(RUN_TIMEOUT).code(), Some(0));
}

/// The unit files shipped in contrib/systemd.
fn units() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/systemd");
    [
        "blkmirror-send@.service",
        "blkmirror-receive@.service",
        "blkmirror.service",
    ]
    .iter()
    .map(|name| dir.join(name))
    .collect()
}

#[test]
fn systemd_units_pass_systemd_analyze_verify() {
    let analyze = Path::new("/usr/bin/systemd-analyze");
    let analyze = if analyze.exists() {
        analyze.to_path_buf()
    } else if let Some(found) = which("systemd-analyze") {
        found
    } else {
        eprintln!(
            "SKIPPED: systemd-analyze is not installed (ci/install-deps.sh installs systemd)"
        );
        return;
    };
    let t = Scratch::new("systemd-verify");
    // The units name /usr/local/bin/blkmirror, which verify wants executable: point them at
    // the binary under test. Their Documentation= pages are the ones `blkmirror man` writes.
    let man = t.path("man");
    run(&["man", "--out", s(&man.join("man1"))]).assert_success();
    let mut copies = Vec::new();
    for unit in units() {
        let text = fs::read_to_string(&unit).unwrap();
        let exec = "ExecStart=/usr/local/bin/blkmirror ";
        assert_eq!(text.matches(exec).count(), 1, "{}", unit.display());
        let copy = t.path(unit.file_name().unwrap().to_str().unwrap());
        let text = text.replace(exec, &format!("ExecStart={} ", bin()));
        let pre = "ExecStartPre=/usr/local/bin/blkmirror ";
        let text = text.replace(pre, &format!("ExecStartPre={} ", bin()));
        fs::write(&copy, text).unwrap();
        copies.push(copy);
    }
    let mut args: Vec<String> = vec!["verify".into()];
    let man_checked = which("man").is_some();
    if !man_checked {
        eprintln!("man is not installed: verifying without checking Documentation= pages");
        args.push("--man=no".into());
    }
    args.extend(copies.iter().map(|p| s(p).to_string()));
    let out = Proc::spawn_in(
        "systemd-analyze",
        s(&analyze),
        &args,
        Some(t.root()),
        &[("MANPATH", s(&man))],
    )
    .finish(Duration::from_secs(120));
    out.assert_success();
    // verify also exits 0 on mere warnings (unknown keys, bad values): none may be printed.
    let complaints: Vec<&String> = out
        .stderr
        .iter()
        .chain(out.stdout.iter())
        .filter(|l| l.contains("blkmirror"))
        .collect();
    assert!(complaints.is_empty(), "{out:?}");

    // The checker is awake: a unit with a misspelled key is reported.
    let broken = t.path("blkmirror-broken@.service");
    let text = fs::read_to_string(&copies[0]).unwrap();
    fs::write(
        &broken,
        text.replace("Restart=on-failure", "Restrat=on-failure"),
    )
    .unwrap();
    let out = run_program(
        s(&analyze),
        &["verify", "--man=no", s(&broken)],
        Duration::from_secs(120),
    );
    assert!(
        out.stderr_text().contains("Restrat"),
        "systemd-analyze verify missed a misspelled key\n{out:?}"
    );
}

#[test]
fn systemd_units_are_notify_services_of_one_volume_each() {
    for unit in units() {
        let text = fs::read_to_string(&unit).unwrap();
        let name = unit.file_name().unwrap().to_str().unwrap();
        let side = if name.contains("send") {
            "send"
        } else {
            "receive"
        };
        let lines: Vec<&str> = text.lines().map(str::trim).collect();
        for wanted in [
            "Type=notify".to_string(),
            "Restart=on-failure".to_string(),
            "KillSignal=SIGTERM".to_string(),
            "NoNewPrivileges=yes".to_string(),
            "ProtectSystem=strict".to_string(),
            "PrivateTmp=yes".to_string(),
            "StateDirectory=blkmirror".to_string(),
        ] {
            assert!(lines.contains(&wanted.as_str()), "{name} lacks {wanted}");
        }
        let own: Vec<String> = match name {
            "blkmirror.service" => vec![
                "ExecStart=/usr/local/bin/blkmirror run --config /etc/blkmirror/blkmirror.toml"
                    .into(),
                "ExecReload=/bin/kill -HUP $MAINPID".into(),
            ],
            _ => vec![
                format!("EnvironmentFile=/etc/blkmirror/{side}-%i.env"),
                format!("ExecStart=/usr/local/bin/blkmirror {side} $BLKMIRROR_ARGS"),
            ],
        };
        for wanted in own {
            assert!(lines.contains(&wanted.as_str()), "{name} lacks {wanted}");
        }
        // Device access stays possible: no PrivateDevices, block devices allowed.
        assert!(!text.contains("PrivateDevices=yes"), "{name}");
        assert!(lines.contains(&"DeviceAllow=block-* rw"), "{name}");
        let caps = lines
            .iter()
            .find(|l| l.starts_with("CapabilityBoundingSet="))
            .unwrap_or_else(|| panic!("{name}: no CapabilityBoundingSet"));
        for cap in ["CAP_SYS_ADMIN", "CAP_DAC_OVERRIDE"] {
            assert!(caps.contains(cap), "{name}: {caps}");
        }
    }
}

/// The first `name` on PATH.
fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    })
}

#[test]
fn notify_looping_sender_says_ready_then_stopping_and_exits_0() {
    let t = Scratch::new("notify-sender");
    let mut notify = NotifySocket::bind(t.path("notify.sock"));
    let src = t.path("source.img");
    write_random_file(&src, MIB, 1301);
    let mut args = send_args(s(&src), s(&t.path("target.img")), &t.dir("state"));
    args.extend(["--interval".into(), "1h".into()]);
    let env = notify.env();
    let mut sender = Proc::blkmirror_env("sender", &args, &[("NOTIFY_SOCKET", env.as_str())]);
    notify.expect("READY=1", READY_TIMEOUT, &mut sender);
    sender.wait_line(
        Stream::Stdout,
        RUN_TIMEOUT,
        "the first cycle's report",
        |l| l.contains("\"generation\":1"),
    );
    sender.signal(Signal::SIGTERM);
    notify.expect("STOPPING=1", RUN_TIMEOUT, &mut sender);
    let status = sender.wait_exit(RUN_TIMEOUT);
    assert_eq!(status.code(), Some(0), "{}", sender.describe());
}
