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
