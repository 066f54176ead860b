//! The log: `--log-format text` (one human line per event on stderr), `json` (the event log:
//! one JSON object per line on stderr), `journal` (straight to journald, every field a
//! `BLKMIRROR_*` journal field) or `auto`, the default: the journal when stderr is connected
//! to it (systemd's `$JOURNAL_STREAM` names stderr's device and inode), else text. `-v`/`-q`
//! move the level (info by default; `BLKMIRROR_LOG`, an `EnvFilter` directive, overrides both).
//!
//! A JSON line holds `ts` (RFC 3339, UTC, milliseconds), `schema` ([`SCHEMA`]), `level`,
//! `message`, the event's own fields, and the fields of the spans it happened in (the cycle's
//! `generation`, the session's `target` and `peer`, a forward's `next_hop`...); the event's own
//! win on a clash. The lines that matter to an operator carry `event`: `cycle_committed`,
//! `cycle_failed`, `fallback_full_scan`, `tracking_fault`, `generation_committed`,
//! `cycle_aborted`, `drift_found`, `forwarded`, `forward_failed`, `stopped`
//! (docs/operations.md lists them with their fields). Field names are stable and shared by
//! sender and receiver.

use std::fmt;
use std::io::IsTerminal;
use std::sync::OnceLock;

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_journald::{Priority, PriorityMappings};
use tracing_subscriber::fmt::format::{JsonFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;

use super::args::LogFormat;
use super::progress::LogWriter;

/// Version of the JSON line's shape; raised when a field changes meaning or goes away.
pub const SCHEMA: u32 = 1;

/// What the journal's field names start with: an event's `generation` is
/// `BLKMIRROR_GENERATION`, its `event` `BLKMIRROR_EVENT` (the message is `MESSAGE`).
pub const JOURNAL_FIELD_PREFIX: &str = "BLKMIRROR";

/// How to log, from the global options (set once, before the command runs).
#[derive(Clone, Copy, Debug)]
pub struct LogOptions {
    /// Text or JSON lines.
    pub format: LogFormat,
    /// `-v` count minus `-q` count.
    pub verbosity: i8,
}

static OPTIONS: OnceLock<LogOptions> = OnceLock::new();

/// Records the global options for [`init`].
pub fn configure(options: LogOptions) {
    let _ = OPTIONS.set(options);
}

/// Installs the subscriber (once; later calls do nothing). `multi`: progress bars the log
/// lines must not tear.
pub fn init(multi: Option<indicatif::MultiProgress>) {
    let options = OPTIONS.get().copied().unwrap_or(LogOptions {
        format: LogFormat::Auto,
        verbosity: 0,
    });
    let level = match options.verbosity {
        i8::MIN..=-2 => "error",
        -1 => "warn",
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = || {
        tracing_subscriber::EnvFilter::try_from_env("BLKMIRROR_LOG")
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level))
    };
    let format = match options.format {
        LogFormat::Auto if stderr_is_journal() => LogFormat::Journal,
        LogFormat::Auto => LogFormat::Text,
        chosen => chosen,
    };
    let mut journal_unreachable = None;
    if format == LogFormat::Journal {
        match journal_layer() {
            Ok(journal) => {
                let _ = tracing_subscriber::registry()
                    .with(filter())
                    .with(journal)
                    .try_init();
                return;
            }
            Err(e) => journal_unreachable = Some(e),
        }
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter())
        .with_writer(LogWriter { multi });
    let _ = match format {
        LogFormat::Json => builder
            .fmt_fields(JsonFields::new())
            .event_format(JsonLines)
            .try_init(),
        _ => builder
            .with_target(false)
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
    };
    if let Some(e) = journal_unreachable {
        tracing::warn!("journald cannot be reached ({e}): logging text on stderr instead");
    }
}

/// The journald layer: fields prefixed with [`JOURNAL_FIELD_PREFIX`], info as priority 6
/// (informational) as syslog has it, debug and trace as 7.
fn journal_layer() -> std::io::Result<tracing_journald::Layer> {
    let priorities = PriorityMappings {
        info: Priority::Informational,
        debug: Priority::Debug,
        ..PriorityMappings::new()
    };
    Ok(tracing_journald::layer()?
        .with_field_prefix(Some(JOURNAL_FIELD_PREFIX.into()))
        .with_syslog_identifier("blkmirror".into())
        .with_priority_mappings(priorities))
}

/// Whether stderr is the stream systemd connected to the journal: `$JOURNAL_STREAM` is
/// `DEVICE:INODE` of that stream, and stays in the environment of children whose stderr went
/// elsewhere, so it must match stderr itself.
fn stderr_is_journal() -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(stream) = std::env::var("JOURNAL_STREAM") else {
        return false;
    };
    match std::fs::metadata("/proc/self/fd/2") {
        Ok(stderr) => names_stream(&stream, stderr.dev(), stderr.ino()),
        Err(_) => false,
    }
}

/// `JOURNAL_STREAM`'s `DEVICE:INODE` (decimal) against a stream's device and inode.
fn names_stream(journal_stream: &str, dev: u64, ino: u64) -> bool {
    let Some((d, i)) = journal_stream.trim().split_once(':') else {
        return false;
    };
    d.parse() == Ok(dev) && i.parse() == Ok(ino)
}

/// The event log's line format (see the module doc).
struct JsonLines;

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut line = Map::new();
        let now = std::time::SystemTime::now();
        line.insert(
            "ts".into(),
            humantime::format_rfc3339_millis(now).to_string().into(),
        );
        line.insert("schema".into(), SCHEMA.into());
        let level = event.metadata().level().as_str().to_ascii_lowercase();
        line.insert("level".into(), level.into());
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                let extensions = span.extensions();
                let Some(fields) = extensions.get::<FormattedFields<N>>() else {
                    continue;
                };
                if let Ok(Value::Object(map)) = serde_json::from_str::<Value>(fields) {
                    line.extend(map);
                }
            }
        }
        let mut visitor = Fields(&mut line);
        event.record(&mut visitor);
        let text = serde_json::to_string(&line).map_err(|_| fmt::Error)?;
        writeln!(writer, "{text}")
    }
}

/// Collects an event's fields into the line.
struct Fields<'a>(&'a mut Map<String, Value>);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0
            .insert(field.name().into(), format!("{value:?}").into());
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.0.insert(field.name().into(), value.to_string().into());
    }
}

#[cfg(test)]
mod tests {
    use super::names_stream;

    #[test]
    fn journal_stream_must_name_stderr_itself() {
        assert!(names_stream("8:123456", 8, 123456));
        assert!(!names_stream("8:123456", 8, 123457), "another inode");
        assert!(!names_stream("9:123456", 8, 123456), "another device");
        for junk in ["", ":", "8", "8:", ":123456", "x:y", "8:123456:1"] {
            assert!(!names_stream(junk, 8, 123456), "{junk:?}");
        }
    }
}
