//! `--metrics-listen`: the Prometheus endpoint scraped over plain HTTP while the real binary
//! runs. A looping TLS sender: every sender metric present with sane values, then the
//! receiver killed (failures count up, lag grows) and restarted on its address (lag drops,
//! the generation moves on). A receiver after one `send --once`. Bad and taken addresses.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::support::*;

/// Every metric a sender exports per destination.
const SENDER_METRICS: [&str; 12] = [
    "blkmirror_committed_generation",
    "blkmirror_last_commit_timestamp_seconds",
    "blkmirror_lag_seconds",
    "blkmirror_cycle_duration_seconds",
    "blkmirror_bytes_read_total",
    "blkmirror_bytes_sent_total",
    "blkmirror_blocks_changed_total",
    "blkmirror_cycles_total",
    "blkmirror_cycle_failures_total",
    "blkmirror_consecutive_failures",
    "blkmirror_tracking_faults_total",
    "blkmirror_full_scans_total",
];

/// A scrape: each sample `name{labels}` and its value.
struct Scrape {
    samples: HashMap<String, (String, f64)>,
    text: String,
}

impl Scrape {
    fn take(addr: SocketAddr) -> Scrape {
        let (code, text) = http(addr, "GET", "/metrics");
        assert_eq!(code, 200, "{text}");
        let mut samples = HashMap::new();
        for sample in crate::support::samples(&text) {
            assert!(
                samples
                    .insert(sample.name.clone(), (sample.labels.clone(), sample.value))
                    .is_none(),
                "one series per metric expected here: {sample:?}\n{text}"
            );
        }
        Scrape { samples, text }
    }

    fn get(&self, name: &str) -> Option<f64> {
        self.samples.get(name).map(|(_, v)| *v)
    }

    #[track_caller]
    fn value(&self, name: &str) -> f64 {
        self.get(name)
            .unwrap_or_else(|| panic!("{name} missing from the scrape\n{}", self.text))
    }

    fn labels(&self, name: &str) -> &str {
        &self.samples[name].0
    }
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// Polls scrapes until `pred` holds (bounded); returns that scrape.
fn scrape_until(addr: SocketAddr, what: &str, pred: impl Fn(&Scrape) -> bool) -> Scrape {
    wait_for(Duration::from_secs(180), what, || {
        let scrape = Scrape::take(addr);
        pred(&scrape).then_some(scrape)
    })
}

#[test]
fn sender_metrics_show_lag_growing_while_the_receiver_is_down_and_dropping_after() {
    let t = Scratch::new("metrics-sender");
    let pair = TlsPair::new(&t);
    let src = t.path("source.img");
    write_random_file(&src, 4 * MIB, 1301);
    let (tgt, tgt_state) = (t.path("target.img"), t.dir("state-receiver"));
    let mut receiver_args = pair.receiver_args();
    receiver_args.push("--create".into());
    let mut receiver = Receiver::start(&tgt, &tgt_state, &receiver_args);
    let addr = receiver.addr;
    let mut args = send_args(s(&src), &receiver.url(), &t.dir("state-sender"));
    args.extend(pair.sender_args());
    for extra in ["--interval", "1s", "--metrics-listen", "127.0.0.1:0"] {
        args.push(extra.into());
    }
    let mut sender = Proc::blkmirror("sender", &args);
    let metrics = metrics_addr(&mut sender);
    assert_eq!(metrics.ip().to_string(), "127.0.0.1");
    assert_ne!(metrics.port(), 0);

    // Only GET /metrics is served.
    assert_eq!(http(metrics, "GET", "/").0, 404);
    assert_eq!(http(metrics, "GET", "/metrics/x").0, 404);
    assert_eq!(http(metrics, "POST", "/metrics").0, 405);

    let up = scrape_until(metrics, "a committed generation", |s| {
        s.get("blkmirror_committed_generation").unwrap_or(0.0) >= 1.0
    });
    for name in SENDER_METRICS {
        up.value(name);
        let labels = up.labels(name);
        assert!(
            labels.contains(&format!("dest=\"{}\"", receiver.url()))
                && labels.contains(&format!("source=\"{}\"", s(&src))),
            "{name} labels: {labels}"
        );
    }
    assert!(up.value("blkmirror_bytes_sent_total") > 0.0);
    assert!(up.value("blkmirror_bytes_read_total") >= (4 * MIB) as f64);
    assert!(up.value("blkmirror_blocks_changed_total") > 0.0);
    assert!(up.value("blkmirror_cycles_total") >= 1.0);
    assert!(up.value("blkmirror_full_scans_total") >= 1.0);
    assert_eq!(up.value("blkmirror_cycle_failures_total"), 0.0);
    assert_eq!(up.value("blkmirror_consecutive_failures"), 0.0);
    assert_eq!(up.value("blkmirror_tracking_faults_total"), 0.0);
    let lag_up = up.value("blkmirror_lag_seconds");
    assert!((0.0..30.0).contains(&lag_up), "lag {lag_up}");
    let duration = up.value("blkmirror_cycle_duration_seconds");
    assert!((0.0..60.0).contains(&duration), "cycle duration {duration}");
    let committed_at = up.value("blkmirror_last_commit_timestamp_seconds");
    assert!(
        (committed_at - unix_now()).abs() < 60.0,
        "last commit at {committed_at}"
    );

    // The receiver goes away: cycles fail, and the data the target holds ages.
    receiver.proc.kill9();
    let before = Scrape::take(metrics);
    let (failures_before, lag_before) = (
        before.value("blkmirror_cycle_failures_total"),
        before.value("blkmirror_lag_seconds"),
    );
    let down = scrape_until(metrics, "failures counted and lag growing", |s| {
        s.value("blkmirror_cycle_failures_total") > failures_before
            && s.value("blkmirror_lag_seconds") > lag_before + 2.0
    });
    let generation_down = down.value("blkmirror_committed_generation");
    let lag_down = down.value("blkmirror_lag_seconds");
    assert!(down.value("blkmirror_consecutive_failures") >= 1.0);

    // Back on the same address: the next cycle commits, the lag drops again.
    let _receiver = Receiver::restart_at(&tgt, &tgt_state, addr, &receiver_args);
    let back = scrape_until(metrics, "a new commit and a smaller lag", |s| {
        s.value("blkmirror_committed_generation") > generation_down
            && s.value("blkmirror_lag_seconds") < lag_down
    });
    assert_eq!(back.value("blkmirror_consecutive_failures"), 0.0);
    assert!(back.value("blkmirror_cycle_failures_total") > failures_before);
    assert!(sender.try_wait().is_none(), "{}", sender.describe());
}

/// The reflink tracker's count of the source image's extents, scraped between cycles: few for
/// a freshly written image once a cycle compared two clones' maps, then two more per scattered
/// rewrite (each splits an extent the kept clone shares).
#[test]
fn the_source_image_s_extents_grow_with_scattered_rewrites() {
    const EXTENTS: &str = REFLINK_METRICS[0];
    let t = Scratch::new("metrics-extents");
    let fs = Filesystem::new(&t, "xfs");
    let src = fs.path("vm.img");
    write_random_file(&src, 16 * MIB, 1401);
    let mut args = send_args(s(&src), s(&t.path("target.img")), &fs.dir("state"));
    for extra in [
        "--snapshot",
        "reflink",
        "--interval",
        "1s",
        "--metrics-listen",
        "127.0.0.1:0",
    ] {
        args.push(extra.into());
    }
    let mut sender = Proc::blkmirror("sender", &args);
    let metrics = metrics_addr(&mut sender);
    let compared = scrape_until(metrics, "a comparison of extent maps", |s| {
        s.get(EXTENTS).is_some()
    });
    let fresh = compared.value(EXTENTS);
    assert!((1.0..64.0).contains(&fresh), "{}", compared.text);
    assert!(compared
        .labels(EXTENTS)
        .contains(&format!("source=\"{}\"", s(&src))));

    let f = std::fs::OpenOptions::new().write(true).open(&src).unwrap();
    let rewrites = 100;
    for i in 0..rewrites {
        std::os::unix::fs::FileExt::write_all_at(&f, &[0xAB; 4096], i * 128 * KIB).unwrap();
    }
    f.sync_all().unwrap();
    let split = scrape_until(metrics, "the rewrites' extents", |s| {
        s.get(EXTENTS).unwrap_or(0.0) >= (2 * rewrites) as f64
    });
    assert!(
        split.value(EXTENTS) < (4 * rewrites) as f64,
        "{}",
        split.text
    );
    sender.signal(Signal::SIGTERM);
    sender.wait_exit(RUN_TIMEOUT);
}

#[test]
fn receiver_metrics_after_one_send() {
    let t = Scratch::new("metrics-receiver");
    let pair = TlsPair::new(&t);
    let src = t.path("source.img");
    write_random_file(&src, 2 * MIB, 1311);
    let tgt = t.path("target.img");
    let mut receiver_args = pair.receiver_args();
    for extra in ["--create", "--metrics-listen", "127.0.0.1:0"] {
        receiver_args.push(extra.into());
    }
    let mut receiver = Receiver::start(&tgt, &t.dir("state-receiver"), &receiver_args);
    let metrics = metrics_addr(&mut receiver.proc);
    let sender_args = pair.sender_args();
    let extra: Vec<&str> = sender_args.iter().map(String::as_str).collect();
    send_once(s(&src), &receiver.url(), &t.dir("state-sender"), &extra);
    let scrape = scrape_until(metrics, "the receiver's commit", |s| {
        s.get("blkmirror_receiver_committed_generation").is_some()
    });
    assert_eq!(scrape.value("blkmirror_receiver_committed_generation"), 1.0);
    let written = scrape.value("blkmirror_receiver_bytes_written_total");
    assert!(written > 0.0 && written <= (2 * MIB) as f64, "{written}");
    assert_eq!(scrape.value("blkmirror_receiver_cycles_aborted_total"), 0.0);
    assert_eq!(
        scrape.labels("blkmirror_receiver_committed_generation"),
        format!("target=\"{}\"", s(&tgt))
    );
    assert_eq!(http(metrics, "GET", "/").0, 404);
}

#[test]
fn an_unparsable_metrics_address_is_a_usage_error() {
    let t = Scratch::new("metrics-bad-addr");
    let src = t.path("source.img");
    write_random_file(&src, MIB, 1321);
    let tgt = t.path("target.img");
    for bad in ["localhost:9477", "127.0.0.1", "9477", "127.0.0.1:99999"] {
        let mut args = send_args(s(&src), s(&tgt), &t.dir("state"));
        args.extend(["--once".into(), "--metrics-listen".into(), bad.into()]);
        let out = run(&args);
        out.assert_error(2, &["--metrics-listen", bad]);
        assert!(!tgt.exists(), "a usage error wrote the target");
    }
}

#[test]
fn a_taken_metrics_address_fails_before_any_cycle() {
    let t = Scratch::new("metrics-taken");
    let src = t.path("source.img");
    write_random_file(&src, MIB, 1331);
    let tgt = t.path("target.img");
    let holder = TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = holder.local_addr().unwrap().to_string();
    let state = t.dir("state");
    let mut args = send_args(s(&src), s(&tgt), &state);
    args.extend(["--once".into(), "--metrics-listen".into(), taken.clone()]);
    let out = run(&args);
    out.assert_error(1, &["metrics", &taken]);
    assert!(!tgt.exists(), "a cycle ran");
    assert!(empty_dir(&state), "a cycle ran: state written");
}

fn empty_dir(dir: &Path) -> bool {
    std::fs::read_dir(dir).map_or(true, |mut d| d.next().is_none())
}

/// The receiver's metrics, per target.
const RECEIVER_METRICS: [&str; 4] = [
    "blkmirror_receiver_committed_generation",
    "blkmirror_receiver_bytes_written_total",
    "blkmirror_receiver_drift_blocks",
    "blkmirror_receiver_cycles_aborted_total",
];

/// A sender's snapshot space metrics, per source (LVM sources only: the guest's
/// `lvm_guest::metrics` tests scrape them).
pub(crate) const LVM_METRICS: [&str; 3] = [
    "blkmirror_snapshot_fill_ratio",
    "blkmirror_thin_pool_data_ratio",
    "blkmirror_thin_pool_metadata_ratio",
];

/// A sender's metrics of a reflinked image, per source (the reflink change tracker only).
const REFLINK_METRICS: [&str; 1] = ["blkmirror_source_extents"];

#[test]
fn the_sample_alert_rules_check_and_pass_their_unit_tests() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/prometheus");
    let rules = std::fs::read_to_string(dir.join("blkmirror-alerts.yml")).unwrap();
    let docs =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/metrics.md"))
            .unwrap();
    // Every metric the rules use is one blkmirror exports, and every exported one is documented.
    let used: Vec<&str> = rules
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("blkmirror_"))
        .collect();
    assert!(used.len() >= 4, "{used:?}");
    for name in &used {
        assert!(
            SENDER_METRICS.contains(name)
                || RECEIVER_METRICS.contains(name)
                || LVM_METRICS.contains(name)
                || REFLINK_METRICS.contains(name),
            "the rules use {name}, which blkmirror does not export"
        );
    }
    let exported = SENDER_METRICS.iter().chain(&RECEIVER_METRICS);
    for name in exported.chain(&LVM_METRICS).chain(&REFLINK_METRICS) {
        assert!(
            docs.contains(&format!("`{name}`")),
            "docs/metrics.md lacks {name}"
        );
    }
    if Command::new("promtool").arg("--version").output().is_err() {
        assert!(
            std::env::var_os("CI").is_none(),
            "promtool is missing (ci/install-deps.sh installs it)"
        );
        eprintln!("SKIPPED: promtool is not installed (ci/install-deps.sh installs it)");
        return;
    }
    for args in [
        ["check", "rules", "blkmirror-alerts.yml"],
        ["test", "rules", "blkmirror-alerts.test.yml"],
    ] {
        let out = Command::new("promtool")
            .args(args)
            .current_dir(&dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "promtool {args:?} failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
