//! Prometheus metrics (`send --metrics-listen ADDR`, `receive --metrics-listen ADDR`): one
//! process-wide registry (`prometheus-client`) that the engines feed through a few free
//! functions ([`cycle_committed`], [`cycle_failed`], [`snapshot_fill`], [`thin_pool_usage`],
//! [`source_extents`], [`receiver_committed`], [`receiver_aborted`], [`scrub_finished`]), and
//! a small HTTP responder on the process's tokio runtime that answers `GET /metrics` with the
//! OpenMetrics text format (which Prometheus scrapes natively), 404 for any other path and 405
//! for any other method.
//!
//! The registry exists whether or not it is served: feeding it costs a few atomic adds per
//! cycle. The snapshot space figures cost an `lvs` per cycle, so the sender reads them only
//! when the metrics are served ([`served`]). Lag is computed at scrape time (now minus the
//! snapshot time of the committed generation), so it grows while a destination is down.
//! docs/metrics.md lists every metric.
//!
//! The responder reads at most [`MAX_REQUEST`] bytes of request head within [`READ_TIMEOUT`],
//! answers once and closes (no keep-alive), and serves at most [`MAX_CONNECTIONS`] clients at
//! a time (the others wait in the listen backlog).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest request head read (request line and headers); a longer one gets 431.
pub const MAX_REQUEST: usize = 8 * 1024;
/// How long a client has to send its request head; a slower one gets 408.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// How long writing the response may take before the connection is dropped.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Clients served at once.
pub const MAX_CONNECTIONS: usize = 8;
/// The content type of the exposition.
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The labels of a sender's metrics: the source path and the destination's canonical text.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DestLabels {
    source: String,
    dest: String,
}

/// The labels of a snapshot's fill: the source path and which snapshot of it (`cycle`, `kept`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SnapshotLabels {
    source: String,
    snapshot: String,
}

/// The label of a figure of the source alone: its path.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabels {
    source: String,
}

/// The labels of a thin pool's usage: the source path and the pool (`VG/POOL`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PoolLabels {
    source: String,
    pool: String,
}

/// The label of a receiver's metrics: the target path.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TargetLabels {
    target: String,
}

type FloatGauge = Gauge<f64, AtomicU64>;

/// Every metric, and the registry that encodes them.
struct Metrics {
    registry: Registry,
    committed_generation: Family<DestLabels, Gauge>,
    last_commit: Family<DestLabels, FloatGauge>,
    lag: Family<DestLabels, FloatGauge>,
    cycle_duration: Family<DestLabels, FloatGauge>,
    bytes_read: Family<DestLabels, Counter>,
    bytes_sent: Family<DestLabels, Counter>,
    blocks_changed: Family<DestLabels, Counter>,
    cycles: Family<DestLabels, Counter>,
    failures: Family<DestLabels, Counter>,
    consecutive_failures: Family<DestLabels, Gauge>,
    tracking_faults: Family<DestLabels, Counter>,
    full_scans: Family<DestLabels, Counter>,
    snapshot_fill: Family<SnapshotLabels, FloatGauge>,
    pool_data: Family<PoolLabels, FloatGauge>,
    pool_metadata: Family<PoolLabels, FloatGauge>,
    source_extents: Family<SourceLabels, Gauge>,
    /// Unix time (seconds) of the snapshot each destination's committed generation was read
    /// from: the lag is computed from it at scrape time.
    snapshot_at: Mutex<HashMap<DestLabels, f64>>,
    receiver_generation: Family<TargetLabels, Gauge>,
    receiver_bytes_written: Family<TargetLabels, Counter>,
    receiver_drift: Family<TargetLabels, Gauge>,
    receiver_aborted: Family<TargetLabels, Counter>,
}

impl Metrics {
    fn new() -> Metrics {
        let mut m = Metrics {
            registry: Registry::default(),
            committed_generation: Family::default(),
            last_commit: Family::default(),
            lag: Family::default(),
            cycle_duration: Family::default(),
            bytes_read: Family::default(),
            bytes_sent: Family::default(),
            blocks_changed: Family::default(),
            cycles: Family::default(),
            failures: Family::default(),
            consecutive_failures: Family::default(),
            tracking_faults: Family::default(),
            full_scans: Family::default(),
            snapshot_fill: Family::default(),
            pool_data: Family::default(),
            pool_metadata: Family::default(),
            source_extents: Family::default(),
            snapshot_at: Mutex::new(HashMap::new()),
            receiver_generation: Family::default(),
            receiver_bytes_written: Family::default(),
            receiver_drift: Family::default(),
            receiver_aborted: Family::default(),
        };
        let r = &mut m.registry;
        // Counters are registered without `_total`: the encoder appends it.
        r.register(
            "blkmirror_committed_generation",
            "Generation last committed to the destination",
            m.committed_generation.clone(),
        );
        r.register(
            "blkmirror_last_commit_timestamp_seconds",
            "Unix time of the last commit to the destination",
            m.last_commit.clone(),
        );
        r.register(
            "blkmirror_lag_seconds",
            "Age of the source data the destination holds: now minus the snapshot time of its committed generation (absent before the first commit)",
            m.lag.clone(),
        );
        r.register(
            "blkmirror_cycle_duration_seconds",
            "Duration of the last committed cycle",
            m.cycle_duration.clone(),
        );
        r.register(
            "blkmirror_bytes_read",
            "Bytes read from the source by committed cycles",
            m.bytes_read.clone(),
        );
        r.register(
            "blkmirror_bytes_sent",
            "Bytes written to the connection by committed cycles",
            m.bytes_sent.clone(),
        );
        r.register(
            "blkmirror_blocks_changed",
            "Blocks shipped by committed cycles (changed since the destination's base)",
            m.blocks_changed.clone(),
        );
        r.register("blkmirror_cycles", "Committed cycles", m.cycles.clone());
        r.register(
            "blkmirror_cycle_failures",
            "Failed cycles",
            m.failures.clone(),
        );
        r.register(
            "blkmirror_consecutive_failures",
            "Cycles failed since the last commit",
            m.consecutive_failures.clone(),
        );
        r.register(
            "blkmirror_tracking_faults",
            "Changed blocks an audit found that the change tracker had not reported",
            m.tracking_faults.clone(),
        );
        r.register(
            "blkmirror_full_scans",
            "Committed cycles whose scan covered the whole source",
            m.full_scans.clone(),
        );
        r.register(
            "blkmirror_snapshot_fill_ratio",
            "Fraction of a classic LVM snapshot's copy-on-write space used, read at the end of the last cycle (snapshot: cycle, the one it read; kept, the one the change tracker kept from the cycle before, just before its release)",
            m.snapshot_fill.clone(),
        );
        r.register(
            "blkmirror_thin_pool_data_ratio",
            "Fraction of the thin pool's data space used, read at the end of the last cycle",
            m.pool_data.clone(),
        );
        r.register(
            "blkmirror_thin_pool_metadata_ratio",
            "Fraction of the thin pool's metadata space used, read at the end of the last cycle",
            m.pool_metadata.clone(),
        );
        r.register(
            "blkmirror_source_extents",
            "Extents of the source image file at the last cycle's comparison of extent maps (reflink change tracker): the clone and the maps cost time in proportion to them",
            m.source_extents.clone(),
        );
        r.register(
            "blkmirror_receiver_committed_generation",
            "Generation last committed to the target by this receiver",
            m.receiver_generation.clone(),
        );
        r.register(
            "blkmirror_receiver_bytes_written",
            "Bytes written to the target by committed cycles",
            m.receiver_bytes_written.clone(),
        );
        r.register(
            "blkmirror_receiver_drift_blocks",
            "Blocks the last scrub found differing from the committed generation, until a commit repairs them",
            m.receiver_drift.clone(),
        );
        r.register(
            "blkmirror_receiver_cycles_aborted",
            "Cycles the receiver aborted",
            m.receiver_aborted.clone(),
        );
        m
    }

    /// The exposition, lag computed as of `now` (Unix seconds).
    fn render(&self, now: f64) -> String {
        for (labels, at) in self.snapshot_at.lock().expect("not poisoned").iter() {
            self.lag.get_or_create(labels).set((now - at).max(0.0));
        }
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("writing to a String cannot fail");
        text
    }
}

fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

fn dest_labels(source: &str, dest: &str) -> DestLabels {
    DestLabels {
        source: source.to_string(),
        dest: dest.to_string(),
    }
}

fn target_labels(target: &str) -> TargetLabels {
    TargetLabels {
        target: target.to_string(),
    }
}

/// The figures of a committed sender cycle that the metrics count.
#[derive(Clone, Debug)]
pub struct Committed<'a> {
    /// The source, as `status` shows it.
    pub source: &'a str,
    /// The destination, canonical.
    pub dest: &'a str,
    /// The generation the destination now holds.
    pub generation: u64,
    /// The cycle's duration, milliseconds (snapshot to commit).
    pub duration_ms: u64,
    /// Bytes read from the source.
    pub bytes_read: u64,
    /// Bytes sent.
    pub bytes_sent: u64,
    /// Blocks that changed.
    pub blocks_changed: u64,
    /// Blocks the audit found the tracker had missed.
    pub tracking_faults: u64,
    /// Whether the cycle read the whole source.
    pub full_scan: bool,
}

/// A sender cycle committed (single destination or one destination of a fan-out).
pub fn cycle_committed(report: &Committed) {
    let m = metrics();
    let labels = dest_labels(report.source, report.dest);
    let now = unix_now();
    let total = report.duration_ms as f64 / 1000.0;
    m.committed_generation
        .get_or_create(&labels)
        .set(report.generation as i64);
    m.last_commit.get_or_create(&labels).set(now);
    m.cycle_duration.get_or_create(&labels).set(total);
    m.bytes_read
        .get_or_create(&labels)
        .inc_by(report.bytes_read);
    m.bytes_sent
        .get_or_create(&labels)
        .inc_by(report.bytes_sent);
    m.blocks_changed
        .get_or_create(&labels)
        .inc_by(report.blocks_changed);
    m.cycles.get_or_create(&labels).inc();
    // Present (at 0) from the first commit, so a rate or an alert has a series to look at.
    let _ = m.failures.get_or_create(&labels);
    m.consecutive_failures.get_or_create(&labels).set(0);
    m.tracking_faults
        .get_or_create(&labels)
        .inc_by(report.tracking_faults);
    m.full_scans
        .get_or_create(&labels)
        .inc_by(u64::from(report.full_scan));
    // The snapshot was taken at the start of the cycle (as `status` counts it).
    m.snapshot_at
        .lock()
        .expect("not poisoned")
        .insert(labels, now - total);
}

/// A sender cycle to `dest` failed (it did not commit).
pub fn cycle_failed(source: &str, dest: &str) {
    let m = metrics();
    let labels = dest_labels(source, dest);
    m.failures.get_or_create(&labels).inc();
    m.consecutive_failures.get_or_create(&labels).inc();
    // The counters of a destination that never committed are there from its first failure.
    let counters = [
        &m.bytes_read,
        &m.bytes_sent,
        &m.blocks_changed,
        &m.cycles,
        &m.tracking_faults,
        &m.full_scans,
    ];
    for family in counters {
        let _ = family.get_or_create(&labels);
    }
}

/// Sets `family`'s series for `labels` to `value`, or removes it when there is none (a figure
/// that could not be read is absent, never stale).
fn set_or_remove<L, N, A>(family: &Family<L, Gauge<N, A>>, labels: &L, value: Option<N>)
where
    L: Clone + std::hash::Hash + Eq + EncodeLabelSet + std::fmt::Debug,
    A: prometheus_client::metrics::gauge::Atomic<N> + Default,
{
    match value {
        Some(v) => {
            family.get_or_create(labels).set(v);
        }
        None => {
            family.remove(labels);
        }
    }
}

/// The fill (0 to 1) of `source`'s classic snapshot `snapshot` (`cycle`: the one the cycle
/// read; `kept`: the one the change tracker kept from the cycle before), as read at the end of
/// a cycle; `None` when it could not be read.
pub fn snapshot_fill(source: &str, snapshot: &str, fill: Option<f64>) {
    let labels = SnapshotLabels {
        source: source.to_string(),
        snapshot: snapshot.to_string(),
    };
    set_or_remove(&metrics().snapshot_fill, &labels, fill);
}

/// The usage (0 to 1) of the thin pool `pool` (`VG/POOL`) holding `source`'s snapshots, as
/// read at the end of a cycle; `None` for a figure that could not be read.
pub fn thin_pool_usage(source: &str, pool: &str, data: Option<f64>, metadata: Option<f64>) {
    let m = metrics();
    let labels = PoolLabels {
        source: source.to_string(),
        pool: pool.to_string(),
    };
    set_or_remove(&m.pool_data, &labels, data);
    set_or_remove(&m.pool_metadata, &labels, metadata);
}

/// The extents of `source` (an image file) at the last comparison of its clones' extent
/// maps; `None` removes the series (no comparison: another tracker, a full scan).
pub fn source_extents(source: &str, extents: Option<u64>) {
    let labels = SourceLabels {
        source: source.to_string(),
    };
    let extents = extents.map(|n| i64::try_from(n).unwrap_or(i64::MAX));
    set_or_remove(&metrics().source_extents, &labels, extents);
}

/// Whether this process serves its metrics (`--metrics-listen`): figures that cost a command
/// to read are read only then.
pub fn served() -> bool {
    SERVED.load(Ordering::Relaxed)
}

static SERVED: AtomicBool = AtomicBool::new(false);

/// The receiver committed `generation` to `target`, having written `bytes_written` bytes.
pub fn receiver_committed(target: &str, generation: u64, bytes_written: u64) {
    let m = metrics();
    let labels = target_labels(target);
    m.receiver_generation
        .get_or_create(&labels)
        .set(generation as i64);
    m.receiver_bytes_written
        .get_or_create(&labels)
        .inc_by(bytes_written);
    let _ = m.receiver_aborted.get_or_create(&labels);
    // The commit shipped whatever a scrub had found drifted.
    m.receiver_drift.get_or_create(&labels).set(0);
}

/// The receiver aborted a cycle on `target`.
pub fn receiver_aborted(target: &str) {
    metrics()
        .receiver_aborted
        .get_or_create(&target_labels(target))
        .inc();
}

/// A scrub of `target` finished: `drifted` blocks differ from the committed generation.
pub fn scrub_finished(target: &str, drifted: u64) {
    metrics()
        .receiver_drift
        .get_or_create(&target_labels(target))
        .set(drifted as i64);
}

/// The exposition as a scrape gets it now.
pub fn render() -> String {
    metrics().render(unix_now())
}

/// Why the metrics endpoint could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen for metrics on {addr}: {source}")]
pub struct ListenError {
    /// The address asked for.
    pub addr: SocketAddr,
    /// What the system said.
    #[source]
    pub source: std::io::Error,
}

impl ListenError {
    /// Never transient: the address is taken or not ours until someone changes that.
    pub fn is_transient(&self) -> bool {
        false
    }
}

/// A bound metrics socket, not yet served (bind before the runtime starts, so a taken
/// address fails before any cycle runs).
pub struct Listener {
    listener: std::net::TcpListener,
    addr: SocketAddr,
}

impl Listener {
    /// Binds `addr` (port 0 picks one).
    pub fn bind(addr: SocketAddr) -> Result<Listener, ListenError> {
        let fail = |source| ListenError { addr, source };
        let listener = std::net::TcpListener::bind(addr).map_err(fail)?;
        listener.set_nonblocking(true).map_err(fail)?;
        let addr = listener.local_addr().map_err(fail)?;
        Ok(Listener { listener, addr })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves `GET /metrics` on the current tokio runtime until the runtime ends; logs
    /// `metrics on http://ADDR/metrics` and returns the bound address. Must be called inside a
    /// runtime.
    pub fn serve(self) -> Result<SocketAddr, ListenError> {
        let addr = self.addr;
        let listener = tokio::net::TcpListener::from_std(self.listener)
            .map_err(|source| ListenError { addr, source })?;
        tracing::info!(%addr, "metrics on http://{addr}/metrics");
        tokio::spawn(accept_loop(listener));
        SERVED.store(true, Ordering::Relaxed);
        Ok(addr)
    }
}

/// Serves `listener` if there is one (see [`Listener::serve`]); a socket the runtime refuses
/// is logged, and the run goes on without metrics.
pub fn serve_if(listener: Option<Listener>) {
    if let Some(Err(e)) = listener.map(Listener::serve) {
        tracing::error!(error = %e, "metrics are not served");
    }
}

async fn accept_loop(listener: tokio::net::TcpListener) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(async move {
                    answer(stream).await;
                    drop(slot);
                });
            }
            Err(e) => {
                // Out of descriptors, or a connection reset before accept: try again shortly.
                tracing::debug!(error = %e, "metrics: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Reads one request head (bounded in size and time), writes one response, closes.
async fn answer(mut stream: TcpStream) {
    let response = match tokio::time::timeout(READ_TIMEOUT, read_head(&mut stream)).await {
        Ok(Ok(head)) => respond(&head),
        Ok(Err(HeadError::TooLarge)) => plain(431, "Request Header Fields Too Large", ""),
        Ok(Err(HeadError::Io)) => return,
        Err(_) => plain(408, "Request Timeout", ""),
    };
    let _ = tokio::time::timeout(WRITE_TIMEOUT, async {
        stream.write_all(&response).await?;
        stream.shutdown().await
    })
    .await;
}

enum HeadError {
    TooLarge,
    Io,
}

/// The request head: bytes up to the blank line (or the end of the stream).
async fn read_head(stream: &mut TcpStream) -> Result<Vec<u8>, HeadError> {
    let mut head = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await.map_err(|_| HeadError::Io)?;
        if n == 0 {
            return Ok(head);
        }
        head.extend_from_slice(&chunk[..n]);
        if head.windows(4).any(|w| w == b"\r\n\r\n") || head.windows(2).any(|w| w == b"\n\n") {
            return Ok(head);
        }
        if head.len() > MAX_REQUEST {
            return Err(HeadError::TooLarge);
        }
    }
}

/// The response to a request head.
fn respond(head: &[u8]) -> Vec<u8> {
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut words = line.split_whitespace();
    let (Some(method), Some(target)) = (words.next(), words.next()) else {
        return plain(400, "Bad Request", "");
    };
    let path = target.split('?').next().unwrap_or_default();
    if path != "/metrics" {
        return plain(404, "Not Found", "");
    }
    if method != "GET" {
        return plain(405, "Method Not Allowed", "Allow: GET\r\n");
    }
    let body = render();
    let mut response = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: {CONTENT_TYPE}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    response.extend_from_slice(body.as_bytes());
    response
}

/// A response with a one-line text body.
fn plain(code: u16, reason: &str, headers: &str) -> Vec<u8> {
    let body = format!("{code} {reason}\n");
    format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n{headers}Connection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The value of the sample `name{labels}` in `text`.
    fn sample(text: &str, name: &str, labels: &str) -> Option<f64> {
        let prefix = format!("{name}{{{labels}}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .map(|v| v.parse().expect("a number"))
    }

    #[test]
    fn a_commit_and_failures_show_in_the_exposition() {
        let report = Committed {
            generation: 4,
            source: "/src/unit-a",
            dest: "tls://127.0.0.1:1",
            duration_ms: 2000,
            bytes_read: 90,
            bytes_sent: 50,
            blocks_changed: 3,
            tracking_faults: 1,
            full_scan: true,
        };
        cycle_failed("/src/unit-a", "tls://127.0.0.1:1");
        cycle_failed("/src/unit-a", "tls://127.0.0.1:1");
        let labels = r#"source="/src/unit-a",dest="tls://127.0.0.1:1""#;
        let text = render();
        assert_eq!(
            sample(&text, "blkmirror_consecutive_failures", labels),
            Some(2.0)
        );
        assert_eq!(sample(&text, "blkmirror_cycles_total", labels), Some(0.0));
        assert_eq!(
            sample(&text, "blkmirror_lag_seconds", labels),
            None,
            "{text}"
        );
        cycle_committed(&report);
        let now = unix_now();
        let text = metrics().render(now + 10.0);
        assert_eq!(
            sample(&text, "blkmirror_committed_generation", labels),
            Some(4.0)
        );
        assert_eq!(
            sample(&text, "blkmirror_cycle_failures_total", labels),
            Some(2.0)
        );
        assert_eq!(
            sample(&text, "blkmirror_consecutive_failures", labels),
            Some(0.0)
        );
        assert_eq!(
            sample(&text, "blkmirror_bytes_read_total", labels),
            Some(90.0)
        );
        assert_eq!(
            sample(&text, "blkmirror_bytes_sent_total", labels),
            Some(50.0)
        );
        assert_eq!(
            sample(&text, "blkmirror_blocks_changed_total", labels),
            Some(3.0)
        );
        assert_eq!(
            sample(&text, "blkmirror_tracking_faults_total", labels),
            Some(1.0)
        );
        assert_eq!(
            sample(&text, "blkmirror_full_scans_total", labels),
            Some(1.0)
        );
        assert_eq!(
            sample(&text, "blkmirror_cycle_duration_seconds", labels),
            Some(2.0)
        );
        let lag = sample(&text, "blkmirror_lag_seconds", labels).unwrap();
        assert!((11.0..13.0).contains(&lag), "lag {lag}");
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn receiver_metrics_accumulate() {
        receiver_committed("/t/unit-b", 1, 100);
        receiver_committed("/t/unit-b", 2, 20);
        receiver_aborted("/t/unit-b");
        scrub_finished("/t/unit-b", 7);
        let text = render();
        let labels = r#"target="/t/unit-b""#;
        let get = |name| sample(&text, name, labels);
        assert_eq!(get("blkmirror_receiver_committed_generation"), Some(2.0));
        assert_eq!(get("blkmirror_receiver_bytes_written_total"), Some(120.0));
        assert_eq!(get("blkmirror_receiver_cycles_aborted_total"), Some(1.0));
        assert_eq!(get("blkmirror_receiver_drift_blocks"), Some(7.0));
    }

    #[test]
    fn snapshot_space_is_set_and_removed_when_unknown() {
        snapshot_fill("/dev/vg/unit-c", "cycle", Some(0.25));
        snapshot_fill("/dev/vg/unit-c", "kept", Some(0.5));
        thin_pool_usage("/dev/vg/unit-d", "vg/pool", Some(0.125), Some(0.0625));
        let text = render();
        let get = |text: &str, name, labels| sample(text, name, labels);
        let cycle = r#"source="/dev/vg/unit-c",snapshot="cycle""#;
        let kept = r#"source="/dev/vg/unit-c",snapshot="kept""#;
        let pool = r#"source="/dev/vg/unit-d",pool="vg/pool""#;
        assert_eq!(
            get(&text, "blkmirror_snapshot_fill_ratio", cycle),
            Some(0.25)
        );
        assert_eq!(get(&text, "blkmirror_snapshot_fill_ratio", kept), Some(0.5));
        assert_eq!(
            get(&text, "blkmirror_thin_pool_data_ratio", pool),
            Some(0.125)
        );
        assert_eq!(
            get(&text, "blkmirror_thin_pool_metadata_ratio", pool),
            Some(0.0625)
        );
        // A figure that could not be read is absent, not stale.
        snapshot_fill("/dev/vg/unit-c", "kept", None);
        thin_pool_usage("/dev/vg/unit-d", "vg/pool", Some(0.25), None);
        let text = render();
        assert_eq!(
            get(&text, "blkmirror_snapshot_fill_ratio", cycle),
            Some(0.25)
        );
        assert_eq!(get(&text, "blkmirror_snapshot_fill_ratio", kept), None);
        assert_eq!(
            get(&text, "blkmirror_thin_pool_data_ratio", pool),
            Some(0.25)
        );
        assert_eq!(
            get(&text, "blkmirror_thin_pool_metadata_ratio", pool),
            None,
            "{text}"
        );
    }

    #[test]
    fn only_get_metrics_is_served() {
        let status = |head: &str| {
            let response = respond(head.as_bytes());
            let text = String::from_utf8(response).unwrap();
            text.split_whitespace().nth(1).unwrap().to_string()
        };
        assert_eq!(status("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"), "200");
        assert_eq!(status("GET /metrics?x=1 HTTP/1.0\r\n\r\n"), "200");
        assert_eq!(status("GET / HTTP/1.1\r\n\r\n"), "404");
        assert_eq!(status("GET /metricsx HTTP/1.1\r\n\r\n"), "404");
        assert_eq!(status("POST /metrics HTTP/1.1\r\n\r\n"), "405");
        assert_eq!(status("garbage\r\n\r\n"), "400");
        assert_eq!(status(""), "400");
    }
}
