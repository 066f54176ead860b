//! The retention policy: a grid of windows, each keeping one snapshot per interval, parsed from
//! a spec in the style of zrepl's and btrbk's grids.
//!
//! `"1h:10m,24h:hourly,7d:daily,4w:weekly"` reads: within the last hour keep one snapshot per
//! 10 minutes, within the last 24 hours one per hour, within the last 7 days one per day,
//! within the last 4 weeks one per week; nothing older than 4 weeks is kept (except the newest
//! snapshot, always). Each rule is `WINDOW:INTERVAL`; a duration is `10m`, `1h`, `7d`, `4w`...
//! (units s, m, h, d, w, which may be summed: `1h30m`), and the interval may also be
//! `hourly`, `daily` or `weekly` (1h, 1d, 7d).
//!
//! A spec is valid when it has at least one rule, the windows grow strictly from left to right,
//! no interval is longer than its window, and no interval is shorter than the one before it (a
//! longer window keeping snapshots closer together is a typo, not a policy). What the windows
//! mean for a set of snapshots is [`super::retention`]'s business.

use std::fmt;
use std::str::FromStr;

use super::duration::{self, DurationError};

/// The example printed with parse errors.
pub const EXAMPLE: &str = "1h:10m,24h:hourly,7d:daily,4w:weekly";

/// One rule of a policy: within the last `span` seconds, keep one snapshot per `interval`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    /// How far back the rule reaches, in seconds (`24h` is 86 400).
    pub span: u64,
    /// The length of each bucket, in seconds (`hourly` is 3 600); never more than `span`.
    pub interval: u64,
}

/// A parsed, valid retention policy: windows ordered by growing span, with intervals that
/// never shrink.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    windows: Vec<Window>,
}

/// Why a `--keep` spec is invalid. Each message starts `invalid --keep "PART": ` where PART is
/// the rule at fault (or the whole spec when no single rule is).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// The spec has no rule at all.
    #[error("invalid --keep {spec:?}: no rule (example: {EXAMPLE})")]
    Empty {
        /// The spec as given.
        spec: String,
    },
    /// A rule is empty: two commas in a row, or a comma at either end.
    #[error("invalid --keep {spec:?}: empty rule between commas (example: {EXAMPLE})")]
    EmptyRule {
        /// The spec as given.
        spec: String,
    },
    /// A rule has no `:`.
    #[error("invalid --keep {rule:?}: expected WINDOW:INTERVAL, such as 24h:hourly")]
    NoColon {
        /// The rule at fault.
        rule: String,
    },
    /// The window (before the `:`) is not a duration.
    #[error(
        "invalid --keep {rule:?}: unknown window {text:?} (a duration such as 1h, 24h, 7d, 4w)"
    )]
    UnknownWindow {
        /// The rule at fault.
        rule: String,
        /// Its window, as written.
        text: String,
    },
    /// The interval (after the `:`) is neither a duration nor hourly/daily/weekly.
    #[error("invalid --keep {rule:?}: unknown interval {text:?} (a duration such as 10m or 1h, or hourly, daily, weekly)")]
    UnknownInterval {
        /// The rule at fault.
        rule: String,
        /// Its interval, as written.
        text: String,
    },
    /// A duration is zero.
    #[error(
        "invalid --keep {rule:?}: {text:?} is zero; a window and an interval must be positive"
    )]
    Zero {
        /// The rule at fault.
        rule: String,
        /// The zero duration, as written.
        text: String,
    },
    /// A duration is longer than 100 years.
    #[error("invalid --keep {rule:?}: {text:?} is longer than 100 years")]
    TooLong {
        /// The rule at fault.
        rule: String,
        /// The duration, as written.
        text: String,
    },
    /// An interval is longer than its window: the window could not hold one bucket.
    #[error("invalid --keep {rule:?}: interval {interval} is longer than its window {window}")]
    IntervalExceedsWindow {
        /// The rule at fault.
        rule: String,
        /// Its interval, as written.
        interval: String,
        /// Its window, as written.
        window: String,
    },
    /// A window is not longer than the window of the rule before it.
    #[error("invalid --keep {rule:?}: window {window} is not longer than the window of {previous:?} before it; list windows from shortest to longest")]
    NotIncreasing {
        /// The rule at fault.
        rule: String,
        /// Its window, as written.
        window: String,
        /// The rule before it.
        previous: String,
    },
    /// An interval is shorter than the interval of the rule before it.
    #[error("invalid --keep {rule:?}: interval {interval} is shorter than the interval of {previous:?} before it; a longer window keeps snapshots at least as far apart")]
    IntervalShrinks {
        /// The rule at fault.
        rule: String,
        /// Its interval, as written.
        interval: String,
        /// The rule before it.
        previous: String,
    },
}

impl PolicyError {
    /// Never: a bad spec stays bad until someone edits it.
    pub fn is_transient(&self) -> bool {
        false
    }
}

impl Policy {
    /// Parses a spec such as `"1h:10m,24h:hourly,7d:daily,4w:weekly"` (spaces around rules
    /// are ignored).
    pub fn parse(spec: &str) -> Result<Policy, PolicyError> {
        if spec.trim().is_empty() {
            return Err(PolicyError::Empty {
                spec: spec.to_string(),
            });
        }
        let mut windows: Vec<Window> = Vec::new();
        let mut previous_rule = "";
        for rule in spec.split(',').map(str::trim) {
            if rule.is_empty() {
                return Err(PolicyError::EmptyRule {
                    spec: spec.to_string(),
                });
            }
            let window = parse_rule(rule)?;
            let (window_text, interval_text) = split_rule(rule);
            if let Some(previous) = windows.last() {
                if window.span <= previous.span {
                    return Err(PolicyError::NotIncreasing {
                        rule: rule.to_string(),
                        window: window_text.to_string(),
                        previous: previous_rule.to_string(),
                    });
                }
                if window.interval < previous.interval {
                    return Err(PolicyError::IntervalShrinks {
                        rule: rule.to_string(),
                        interval: interval_text.to_string(),
                        previous: previous_rule.to_string(),
                    });
                }
            }
            windows.push(window);
            previous_rule = rule;
        }
        Ok(Policy { windows })
    }

    /// Builds a policy from windows already in seconds, checked like a parsed spec (the error
    /// names the rule as [`fmt::Display`] would print it).
    pub fn from_windows(windows: &[Window]) -> Result<Policy, PolicyError> {
        let spec = windows
            .iter()
            .map(|w| {
                format!(
                    "{}:{}",
                    duration::format(w.span),
                    duration::format(w.interval)
                )
            })
            .collect::<Vec<_>>()
            .join(",");
        let policy = Policy::parse(&spec)?;
        debug_assert_eq!(policy.windows, windows);
        Ok(policy)
    }

    /// The windows, shortest first.
    pub fn windows(&self) -> &[Window] {
        &self.windows
    }

    /// The shortest interval (the first window's): snapshots younger than this are all kept.
    pub fn finest_interval(&self) -> u64 {
        self.windows[0].interval
    }

    /// The longest window (the last one): snapshots older than this are pruned, except the
    /// newest.
    pub fn horizon(&self) -> u64 {
        self.windows[self.windows.len() - 1].span
    }
}

impl FromStr for Policy {
    type Err = PolicyError;

    fn from_str(spec: &str) -> Result<Policy, PolicyError> {
        Policy::parse(spec)
    }
}

/// The canonical spec, each duration in its largest exact unit: the example prints as
/// `1h:10m,1d:1h,1w:1d,4w:1w` (and parses back to the same policy).
impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, w) in self.windows.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(
                f,
                "{}:{}",
                duration::format(w.span),
                duration::format(w.interval)
            )?;
        }
        Ok(())
    }
}

/// `"24h:hourly"` into `("24h", "hourly")` (trimmed); the whole rule and `""` without a colon.
fn split_rule(rule: &str) -> (&str, &str) {
    match rule.split_once(':') {
        Some((window, interval)) => (window.trim(), interval.trim()),
        None => (rule, ""),
    }
}

/// One `WINDOW:INTERVAL` rule, checked on its own.
fn parse_rule(rule: &str) -> Result<Window, PolicyError> {
    if !rule.contains(':') {
        return Err(PolicyError::NoColon {
            rule: rule.to_string(),
        });
    }
    let (window_text, interval_text) = split_rule(rule);
    let problem = |text: &str, error: DurationError, unknown: fn(String, String) -> PolicyError| {
        let (rule, text) = (rule.to_string(), text.to_string());
        match error {
            DurationError::Malformed => unknown(rule, text),
            DurationError::Zero => PolicyError::Zero { rule, text },
            DurationError::TooLong => PolicyError::TooLong { rule, text },
        }
    };
    let span = duration::parse(window_text).map_err(|e| {
        problem(window_text, e, |rule, text| PolicyError::UnknownWindow {
            rule,
            text,
        })
    })?;
    let interval = match interval_text {
        "hourly" => 3_600,
        "daily" => 86_400,
        "weekly" => 7 * 86_400,
        text => duration::parse(text).map_err(|e| {
            problem(text, e, |rule, text| PolicyError::UnknownInterval {
                rule,
                text,
            })
        })?,
    };
    if interval > span {
        return Err(PolicyError::IntervalExceedsWindow {
            rule: rule.to_string(),
            interval: interval_text.to_string(),
            window: window_text.to_string(),
        });
    }
    Ok(Window { span, interval })
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: u64 = 3_600;
    const D: u64 = 86_400;

    fn w(span: u64, interval: u64) -> Window {
        Window { span, interval }
    }

    #[test]
    fn the_example_parses() {
        let policy = Policy::parse(EXAMPLE).unwrap();
        assert_eq!(
            policy.windows(),
            [w(H, 600), w(24 * H, H), w(7 * D, D), w(28 * D, 7 * D)]
        );
        assert_eq!(policy.finest_interval(), 600);
        assert_eq!(policy.horizon(), 28 * D);
        assert_eq!(policy.to_string(), "1h:10m,1d:1h,1w:1d,4w:1w");
        assert_eq!(Policy::parse(&policy.to_string()).unwrap(), policy);
    }

    #[test]
    fn good_specs() {
        let cases: [(&str, &[Window]); 6] = [
            ("24h:hourly", &[w(24 * H, H)]),
            (" 1h:10m , 2d:daily ", &[w(H, 600), w(2 * D, D)]),
            ("1h:1h", &[w(H, H)]),
            ("90m:30m,1d12h:90m", &[w(90 * 60, 1_800), w(36 * H, 5_400)]),
            ("1w:daily,52w:weekly", &[w(7 * D, D), w(364 * D, 7 * D)]),
            ("30s:10s,1h:10s", &[w(30, 10), w(H, 10)]),
        ];
        for (spec, windows) in cases {
            let policy: Policy = spec.parse().unwrap_or_else(|e| panic!("{spec}: {e}"));
            assert_eq!(policy.windows(), windows, "{spec}");
        }
    }

    #[test]
    fn from_windows_checks_like_parse() {
        let policy = Policy::from_windows(&[w(H, 600), w(D, H)]).unwrap();
        assert_eq!(policy.to_string(), "1h:10m,1d:1h");
        let error = Policy::from_windows(&[w(D, H), w(H, 600)]).unwrap_err();
        assert!(
            matches!(error, PolicyError::NotIncreasing { .. }),
            "{error}"
        );
    }

    /// Every error names the part at fault, in these exact words.
    #[test]
    fn bad_specs_say_what_is_wrong() {
        let cases = [
            (
                "24h:hurly",
                r#"invalid --keep "24h:hurly": unknown interval "hurly" (a duration such as 10m or 1h, or hourly, daily, weekly)"#,
            ),
            (
                "1h:10m,24h:hurly,7d:daily",
                r#"invalid --keep "24h:hurly": unknown interval "hurly" (a duration such as 10m or 1h, or hourly, daily, weekly)"#,
            ),
            (
                "",
                r#"invalid --keep "": no rule (example: 1h:10m,24h:hourly,7d:daily,4w:weekly)"#,
            ),
            (
                "  ",
                r#"invalid --keep "  ": no rule (example: 1h:10m,24h:hourly,7d:daily,4w:weekly)"#,
            ),
            (
                "1h:10m,,7d:daily",
                r#"invalid --keep "1h:10m,,7d:daily": empty rule between commas (example: 1h:10m,24h:hourly,7d:daily,4w:weekly)"#,
            ),
            (
                "1h:10m,",
                r#"invalid --keep "1h:10m,": empty rule between commas (example: 1h:10m,24h:hourly,7d:daily,4w:weekly)"#,
            ),
            (
                "1h:10m,24h",
                r#"invalid --keep "24h": expected WINDOW:INTERVAL, such as 24h:hourly"#,
            ),
            (
                "1day:hourly",
                r#"invalid --keep "1day:hourly": unknown window "1day" (a duration such as 1h, 24h, 7d, 4w)"#,
            ),
            (
                ":hourly",
                r#"invalid --keep ":hourly": unknown window "" (a duration such as 1h, 24h, 7d, 4w)"#,
            ),
            (
                "24h:",
                r#"invalid --keep "24h:": unknown interval "" (a duration such as 10m or 1h, or hourly, daily, weekly)"#,
            ),
            (
                "24h:1.5h",
                r#"invalid --keep "24h:1.5h": unknown interval "1.5h" (a duration such as 10m or 1h, or hourly, daily, weekly)"#,
            ),
            (
                "24h:Hourly",
                r#"invalid --keep "24h:Hourly": unknown interval "Hourly" (a duration such as 10m or 1h, or hourly, daily, weekly)"#,
            ),
            (
                "0h:10m",
                r#"invalid --keep "0h:10m": "0h" is zero; a window and an interval must be positive"#,
            ),
            (
                "1h:0m",
                r#"invalid --keep "1h:0m": "0m" is zero; a window and an interval must be positive"#,
            ),
            (
                "6000w:weekly",
                r#"invalid --keep "6000w:weekly": "6000w" is longer than 100 years"#,
            ),
            (
                "1h:daily",
                r#"invalid --keep "1h:daily": interval daily is longer than its window 1h"#,
            ),
            (
                "1h:10m,24h:2d",
                r#"invalid --keep "24h:2d": interval 2d is longer than its window 24h"#,
            ),
            (
                "24h:hourly,1h:10m",
                r#"invalid --keep "1h:10m": window 1h is not longer than the window of "24h:hourly" before it; list windows from shortest to longest"#,
            ),
            (
                "24h:hourly,1d:daily",
                r#"invalid --keep "1d:daily": window 1d is not longer than the window of "24h:hourly" before it; list windows from shortest to longest"#,
            ),
            (
                "1h:30m,24h:10m",
                r#"invalid --keep "24h:10m": interval 10m is shorter than the interval of "1h:30m" before it; a longer window keeps snapshots at least as far apart"#,
            ),
        ];
        for (spec, message) in cases {
            let error = Policy::parse(spec).expect_err(spec);
            assert_eq!(error.to_string(), message, "spec {spec:?}");
            assert!(!error.is_transient());
        }
    }
}
