//! The rsync benchmark (`bench/rsync/run.sh`) at a small scale: 3000 files on a 256 MiB ext4
//! image, 30 of them rewritten, then one cycle of each tool (rsync local and over ssh;
//! blkmirror file to file, over TLS and over ssh) and a cycle with no file changes. Asserts
//! only that every result is correct (rsync: the trees are equal; blkmirror: the images are
//! byte-identical and the mounted target's tree equals the source's), never speed: the
//! script runs in its correctness-only mode (`BENCH_CHECK_ONLY=1`: no cache dropping, no dd).
//!
//! Needs root and the Debian packages rsync, openssh-server, openssh-client, e2fsprogs,
//! util-linux, time and python3. A missing rsync fails the test (it does not skip).

use std::fs::{self, File};
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// Under nextest's 300 s kill (.config/nextest.toml), so the script's clean-up still runs.
const TIMEOUT: Duration = Duration::from_secs(240);

/// The rows the script must produce: (cycle, tool, transport).
const EXPECTED: &[(&str, &str, &str)] = &[
    ("change", "rsync", "local"),
    ("change", "rsync", "ssh"),
    ("change", "blkmirror", "local"),
    ("change", "blkmirror", "tls"),
    ("change", "blkmirror", "ssh"),
    ("nochange", "rsync", "local"),
    ("nochange", "rsync", "ssh"),
    ("nochange", "blkmirror", "local"),
    ("nochange", "blkmirror", "tls"),
    ("nochange", "blkmirror", "ssh"),
];

fn tool_present(program: &str, arg: &str) -> bool {
    Command::new(program)
        .arg(arg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_default()
}

#[test]
fn small_benchmark_results_are_correct() {
    assert!(
        tool_present("rsync", "--version"),
        "rsync not found: install the Debian package rsync (the benchmark compares against it)"
    );
    assert!(
        Path::new("/usr/sbin/sshd").exists(),
        "/usr/sbin/sshd not found: install the Debian package openssh-server"
    );

    let scratch = tempfile::Builder::new()
        .prefix("blkmirror-it-bench-small-")
        .tempdir()
        .expect("temp dir");
    let dir = scratch.path();
    let csv = dir.join("results.csv");
    let stdout_path = dir.join("run.stdout");
    let stderr_path = dir.join("run.stderr");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/rsync/run.sh");

    let mut child = Command::new("bash")
        .arg(&script)
        .arg("3000")
        .arg("--csv")
        .arg(&csv)
        .env("BLKMIRROR", env!("CARGO_BIN_EXE_blkmirror"))
        .env("BENCH_CHECK_ONLY", "1")
        .env("BENCH_CACHE", dir.join("cache"))
        .env("BENCH_WORK", dir.join("work"))
        .env_remove("BLKMIRROR_ARGS")
        .env_remove("BENCH_ROWS")
        .env_remove("BENCH_VARIANTS")
        .env_remove("BENCH_NETNS")
        .env_remove("BENCH_KEEP_WORK")
        .stdin(Stdio::null())
        .stdout(File::create(&stdout_path).unwrap())
        .stderr(File::create(&stderr_path).unwrap())
        .spawn()
        .expect("spawn bash bench/rsync/run.sh");

    let deadline = Instant::now() + TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() >= deadline {
            // SIGTERM first: the script's trap unmounts, detaches and stops its daemons.
            // SAFETY: kill(2) on our own child, not yet reaped.
            #[allow(unsafe_code)]
            unsafe {
                libc::kill(child.id() as i32, libc::SIGTERM);
            }
            let grace = Instant::now() + Duration::from_secs(30);
            while child.try_wait().expect("try_wait").is_none() && Instant::now() < grace {
                thread::sleep(Duration::from_millis(100));
            }
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "bench/rsync/run.sh still running after {TIMEOUT:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
                read(&stdout_path),
                read(&stderr_path)
            );
        }
        thread::sleep(Duration::from_millis(100));
    };
    let report = format!(
        "--- stdout ---\n{}\n--- stderr ---\n{}\n--- csv ---\n{}",
        read(&stdout_path),
        read(&stderr_path),
        read(&csv)
    );
    assert!(
        status.success(),
        "bench/rsync/run.sh failed: {status}\n{report}"
    );

    let text = fs::read_to_string(&csv).unwrap_or_else(|e| panic!("no CSV: {e}\n{report}"));
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().expect("CSV header").split(',').collect();
    let col = |name: &str| {
        header
            .iter()
            .position(|h| *h == name)
            .unwrap_or_else(|| panic!("CSV has no column {name}\n{report}"))
    };
    let (variant, tool, transport, exit, correct) = (
        col("variant"),
        col("tool"),
        col("transport"),
        col("exit"),
        col("correct"),
    );
    let rows: Vec<Vec<&str>> = lines
        .filter(|l| !l.is_empty())
        .map(|l| l.split(',').collect())
        .collect();
    for row in &rows {
        assert_eq!(row.len(), header.len(), "ragged CSV row {row:?}\n{report}");
        assert_eq!(
            (row[exit], row[correct]),
            ("0", "true"),
            "incorrect result: {row:?}\n{report}"
        );
    }
    for want in EXPECTED {
        let found = rows
            .iter()
            .filter(|r| (r[variant], r[tool], r[transport]) == *want)
            .count();
        assert_eq!(
            found, 1,
            "expected one row {want:?}, found {found}\n{report}"
        );
    }
}
