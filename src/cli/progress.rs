//! Terminal output adapters: indicatif bars implementing the engine's [`Progress`], and a
//! tracing writer that suspends the bars while a log line is printed so they never garble.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::progress::{Progress, Stage};
use crate::units::human_bytes;

/// Progress bars on stderr.
pub struct Bars {
    multi: MultiProgress,
    bars: Mutex<Vec<(Stage, ProgressBar)>>,
    shipped: AtomicU64,
}

impl Bars {
    /// No bars yet; one appears per stage when it starts.
    pub fn new() -> Self {
        Bars {
            multi: MultiProgress::with_draw_target(ProgressDrawTarget::stderr()),
            bars: Mutex::new(Vec::new()),
            shipped: AtomicU64::new(0),
        }
    }

    /// The bars' container, for a [`LogWriter`] to suspend them while it prints.
    pub fn multi(&self) -> MultiProgress {
        self.multi.clone()
    }

    fn bar(&self, stage: Stage) -> Option<ProgressBar> {
        let bars = self.bars.lock().expect("bars lock");
        bars.iter()
            .find(|(s, _)| *s == stage)
            .map(|(_, b)| b.clone())
    }
}

impl Default for Bars {
    fn default() -> Self {
        Self::new()
    }
}

impl Progress for Bars {
    fn start(&self, stage: Stage, total: u64) {
        let bar = self.multi.add(ProgressBar::new(total));
        bar.set_style(
            ProgressStyle::with_template(
                "{prefix:>11} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta} {msg}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        bar.set_prefix(stage.label());
        self.shipped.store(0, Ordering::Relaxed);
        self.bars.lock().expect("bars lock").push((stage, bar));
    }

    fn advance(&self, stage: Stage, bytes: u64, shipped: u64) {
        if let Some(bar) = self.bar(stage) {
            bar.inc(bytes);
            if shipped > 0 {
                let total = self.shipped.fetch_add(shipped, Ordering::Relaxed) + shipped;
                bar.set_message(format!("queued {}", human_bytes(total)));
            }
        }
    }

    fn finish(&self, stage: Stage) {
        let mut bars = self.bars.lock().expect("bars lock");
        bars.retain(|(s, bar)| {
            if *s == stage {
                bar.finish_and_clear();
                self.multi.remove(bar);
            }
            *s != stage
        });
    }
}

/// A tracing writer: buffers one event, then prints it with the bars suspended.
#[derive(Clone)]
pub struct LogWriter {
    /// The bars to suspend while printing; `None` when there are none.
    pub multi: Option<MultiProgress>,
}

/// One log event being written: printed (bars suspended) when dropped.
pub struct LogLine {
    buf: Vec<u8>,
    multi: Option<MultiProgress>,
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = LogLine;
    fn make_writer(&'a self) -> LogLine {
        LogLine {
            buf: Vec::new(),
            multi: self.multi.clone(),
        }
    }
}

impl Write for LogLine {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LogLine {
    fn drop(&mut self) {
        let print = || {
            let _ = std::io::stderr().write_all(&self.buf);
        };
        match &self.multi {
            Some(multi) => multi.suspend(print),
            None => print(),
        }
    }
}

/// Progress as log lines: an info line (event `progress`) at most every `every` while a stage
/// runs, whatever draws the bars (`inner`). Long cycles are visible in the log, and
/// `--progress always` without a terminal prints plain lines.
pub struct LoggedProgress {
    inner: std::sync::Arc<dyn Progress>,
    every: std::time::Duration,
    stages: Mutex<Vec<StageLog>>,
}

struct StageLog {
    stage: Stage,
    total: u64,
    done: u64,
    started: std::time::Instant,
    logged: std::time::Instant,
}

impl LoggedProgress {
    /// Logs every `every` (the `BLKMIRROR_PROGRESS_EVERY` environment variable, a duration,
    /// overrides it: tests and the impatient), drawing through `inner`.
    pub fn new(inner: std::sync::Arc<dyn Progress>, every: std::time::Duration) -> Self {
        let every = std::env::var("BLKMIRROR_PROGRESS_EVERY")
            .ok()
            .and_then(|text| humantime::parse_duration(&text).ok())
            .unwrap_or(every);
        LoggedProgress {
            inner,
            every,
            stages: Mutex::new(Vec::new()),
        }
    }
}

impl Progress for LoggedProgress {
    fn start(&self, stage: Stage, total: u64) {
        self.inner.start(stage, total);
        let now = std::time::Instant::now();
        let mut stages = self.stages.lock().expect("stages lock");
        stages.retain(|s| s.stage != stage);
        stages.push(StageLog {
            stage,
            total,
            done: 0,
            started: now,
            logged: now,
        });
    }

    fn advance(&self, stage: Stage, bytes: u64, shipped: u64) {
        self.inner.advance(stage, bytes, shipped);
        let mut stages = self.stages.lock().expect("stages lock");
        let Some(s) = stages.iter_mut().find(|s| s.stage == stage) else {
            return;
        };
        s.done = s.done.saturating_add(bytes);
        let now = std::time::Instant::now();
        if now.duration_since(s.logged) < self.every {
            return;
        }
        s.logged = now;
        let elapsed = now.duration_since(s.started).as_secs_f64().max(1e-3);
        let percent = match s.total {
            0 => 100.0,
            total => s.done as f64 * 100.0 / total as f64,
        };
        tracing::info!(
            event = "progress",
            stage = stage.label(),
            done = s.done,
            total = s.total,
            "{}: {} of {} ({percent:.0}%), {}/s",
            stage.label(),
            human_bytes(s.done),
            human_bytes(s.total),
            human_bytes((s.done as f64 / elapsed) as u64)
        );
    }

    fn finish(&self, stage: Stage) {
        self.inner.finish(stage);
        self.stages
            .lock()
            .expect("stages lock")
            .retain(|s| s.stage != stage);
    }
}
