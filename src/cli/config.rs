//! The configuration file of `blkmirror run` and `blkmirror check-config` (TOML):
//!
//! ```toml
//! [defaults]                     # options every job gets unless it sets them
//! state_dir = "/var/lib/blkmirror"
//! identity = "/etc/blkmirror/id"
//!
//! [job.data]                     # one sender loop: `send SOURCE DEST...` and its options
//! source = "/dev/vg0/data"
//! dest = ["tls://backup.example:7300/data", "/dev/vg1/standby"]
//! peer = "sha256:..."
//! interval = "30s"
//! bwlimit = "10M"
//!
//! [receiver.backup]              # one listening receiver: `receive [TARGET] --listen ...`
//! listen = "0.0.0.0:7300"
//! targets = "/etc/blkmirror/targets.toml"
//! identity = "/etc/blkmirror/id"
//! ```
//!
//! Every key of a job or receiver is the long option of the same name (`_` or `-` alike):
//! a string or number is its value, `true` is a flag, an array repeats the option. So a job
//! accepts exactly what `send` accepts and is validated by the same grammar, with the same
//! bounds. The whole file is checked before anything runs; each mistake is one line
//! `FILE:LINE: where: what`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use clap::Parser;
use toml::{Table, Value};

use super::args::{Cli, Command, ReceiveArgs, SendArgs};

/// The default configuration file.
pub const DEFAULT_PATH: &str = "/etc/blkmirror/blkmirror.toml";

/// A job: the command line it stands for (what a reload compares) and its parsed options.
#[derive(Debug)]
pub struct Job {
    /// `send ...` as arguments.
    pub argv: Vec<String>,
    /// The parsed options.
    pub args: SendArgs,
}

/// A receiver: as a job.
#[derive(Debug)]
pub struct ReceiverJob {
    /// `receive ...` as arguments.
    pub argv: Vec<String>,
    /// The parsed options.
    pub args: ReceiveArgs,
}

/// A configuration file, checked.
#[derive(Debug, Default)]
pub struct Config {
    /// The sender jobs, by name.
    pub jobs: BTreeMap<String, Job>,
    /// The receivers, by name.
    pub receivers: BTreeMap<String, ReceiverJob>,
    /// Serve the metrics of every job and receiver here (`metrics_listen = "IP:PORT"` at the
    /// top of the file).
    pub metrics_listen: Option<std::net::SocketAddr>,
}

/// Options a job may not set: a service loops, and draws no progress bars.
const NOT_IN_A_JOB: &[&str] = &["once", "until_quiet", "metrics_listen"];

/// Reads and checks `path`; on failure, every mistake as one line `FILE:LINE: ...`.
pub fn load(path: &Path) -> Result<Config, Vec<String>> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        vec![format!(
            "{}: cannot read the configuration: {e}",
            path.display()
        )]
    })?;
    parse(path, &text)
}

/// Checks the text of a configuration file named `path`.
pub fn parse(path: &Path, text: &str) -> Result<Config, Vec<String>> {
    let file = File { path, text };
    let table: Table = toml::from_str(text).map_err(|e| {
        let line = e.span().map_or(1, |span| file.line_at(span.start));
        vec![file.mistake(line, e.message().trim())]
    })?;
    let mut mistakes = Vec::new();
    let mut config = Config::default();
    let empty = Table::new();
    let mut defaults = &empty;
    for (key, value) in &table {
        match (key.as_str(), value) {
            ("defaults", Value::Table(t)) => defaults = t,
            ("job" | "receiver", Value::Table(_)) => {}
            ("metrics_listen", Value::String(addr)) => match addr.parse() {
                Ok(addr) => config.metrics_listen = Some(addr),
                Err(_) => mistakes.push(file.mistake(
                    file.key_line("", None, key),
                    &format!("metrics_listen: {addr:?} is not IP:PORT"),
                )),
            },
            _ => mistakes.push(file.mistake(
                file.header_line(key, None)
                    .unwrap_or_else(|| file.key_line("", None, key)),
                &format!("unknown section or key {key:?} (expected [defaults], [job.NAME] or [receiver.NAME])"),
            )),
        }
    }
    for (kind, command) in [("job", "send"), ("receiver", "receive")] {
        let Some(section) = table.get(kind) else {
            continue;
        };
        let Value::Table(entries) = section else {
            continue;
        };
        for (name, entry) in entries {
            let Value::Table(entry) = entry else {
                let line = file.key_line(kind, None, name);
                mistakes.push(file.mistake(
                    line,
                    &format!("{kind}.{name} must be a table ([{kind}.{name}])"),
                ));
                continue;
            };
            let defaults = if kind == "job" { defaults } else { &empty };
            match entry_args(&file, (kind, name), command, entry, defaults) {
                Ok(Command::Send(args)) => {
                    let argv = command_line(command, entry, defaults).unwrap_or_default();
                    config.jobs.insert(name.clone(), Job { argv, args });
                }
                Ok(Command::Receive(args)) => {
                    let argv = command_line(command, entry, &empty).unwrap_or_default();
                    config
                        .receivers
                        .insert(name.clone(), ReceiverJob { argv, args });
                }
                Ok(_) => unreachable!("the command is send or receive"),
                Err(mistake) => mistakes.push(mistake),
            }
        }
    }
    if mistakes.is_empty() && config.jobs.is_empty() && config.receivers.is_empty() {
        mistakes.push(file.mistake(1, "nothing to run: no [job.NAME] and no [receiver.NAME]"));
    }
    match mistakes.is_empty() {
        true => Ok(config),
        false => Err(mistakes),
    }
}

/// One entry's options, parsed by the command's own grammar; or its first mistake.
fn entry_args(
    file: &File<'_>,
    (kind, name): (&str, &str),
    command: &str,
    entry: &Table,
    defaults: &Table,
) -> Result<Command, String> {
    let here = |key: Option<&str>| match key {
        Some(key) => file.key_line(kind, Some(name), key),
        None => file.header_line(kind, Some(name)).unwrap_or(1),
    };
    if kind == "job" {
        if let Some(key) = entry
            .keys()
            .find(|k| NOT_IN_A_JOB.contains(&k.replace('-', "_").as_str()))
        {
            return Err(file.mistake(
                here(Some(key)),
                &format!("{kind} {name}: {key} is not for a job (a job loops; metrics_listen goes at the top of the file, for every job)"),
            ));
        }
    }
    let argv = command_line(command, entry, defaults).map_err(|(key, what)| {
        file.mistake(here(Some(&key)), &format!("{kind} {name}: {key}: {what}"))
    })?;
    let mut full = vec!["blkmirror".to_string()];
    full.extend(argv);
    match Cli::try_parse_from(&full) {
        Ok(cli) => Ok(cli.command),
        Err(e) => {
            let message = super::clap_message(&e);
            let key = mentioned_option(&message);
            let line = key
                .as_deref()
                .filter(|k| entry.contains_key(*k) || entry.contains_key(&k.replace('_', "-")))
                .map_or_else(|| here(None), |k| here(Some(k)));
            Err(file.mistake(line, &format!("{kind} {name}: {message}")))
        }
    }
}

/// `COMMAND POSITIONALS... --key=value...` for an entry over defaults; or the key whose value
/// cannot be an option value, and why.
fn command_line(
    command: &str,
    entry: &Table,
    defaults: &Table,
) -> Result<Vec<String>, (String, String)> {
    let positional: &[&str] = match command {
        "send" => &["source", "dest"],
        _ => &["target"],
    };
    let mut argv = vec![command.to_string()];
    for key in positional {
        match entry.get(*key) {
            Some(Value::String(s)) => argv.push(s.clone()),
            Some(Value::Array(items)) if *key == "dest" => {
                for item in items {
                    let Value::String(s) = item else {
                        return Err((key.to_string(), "each destination is a string".into()));
                    };
                    argv.push(s.clone());
                }
            }
            Some(_) => return Err((key.to_string(), "must be a string".into())),
            None => {}
        }
    }
    let mut options: BTreeMap<String, &Value> = defaults
        .iter()
        .map(|(k, v)| (k.replace('-', "_"), v))
        .collect();
    for (key, value) in entry {
        options.insert(key.replace('-', "_"), value);
    }
    if command == "send" && !options.contains_key("progress") {
        argv.push("--progress=never".into());
    }
    for (key, value) in options {
        if positional.contains(&key.as_str()) {
            continue;
        }
        let flag = format!("--{}", key.replace('_', "-"));
        let values = match value {
            Value::Array(items) => items.iter().collect(),
            other => vec![other],
        };
        for value in values {
            match value {
                Value::String(s) => argv.push(format!("{flag}={s}")),
                Value::Integer(n) => argv.push(format!("{flag}={n}")),
                Value::Float(x) => argv.push(format!("{flag}={x}")),
                Value::Boolean(true) => argv.push(flag.clone()),
                Value::Boolean(false) => {}
                Value::Datetime(_) | Value::Array(_) | Value::Table(_) => {
                    return Err((
                        key.clone(),
                        "not an option value (a string, number, true/false, or an array of those)"
                            .into(),
                    ))
                }
            }
        }
    }
    Ok(argv)
}

/// The option a clap message is about (`--interval <DURATION>` gives `interval`).
fn mentioned_option(message: &str) -> Option<String> {
    let at = message.find("--")? + 2;
    let name: String = message[at..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
        .collect();
    (!name.is_empty()).then(|| name.replace('-', "_"))
}

/// The file's text, for line numbers.
struct File<'a> {
    path: &'a Path,
    text: &'a str,
}

impl File<'_> {
    fn mistake(&self, line: usize, what: &str) -> String {
        format!("{}:{line}: {what}", self.path.display())
    }

    fn line_at(&self, offset: usize) -> usize {
        self.text[..offset.min(self.text.len())]
            .matches('\n')
            .count()
            + 1
    }

    /// The line of `[kind.name]` (or `[kind]` when `name` is `None`).
    fn header_line(&self, kind: &str, name: Option<&str>) -> Option<usize> {
        self.text
            .lines()
            .position(|l| {
                let l = l.trim();
                let Some(inner) = l.strip_prefix('[').and_then(|l| l.split(']').next()) else {
                    return false;
                };
                let parts: Vec<String> = inner
                    .split('.')
                    .map(|p| p.trim().trim_matches('"').trim_matches('\'').to_string())
                    .collect();
                match name {
                    Some(name) => parts == [kind, name],
                    None => parts.first().is_some_and(|p| p == kind),
                }
            })
            .map(|i| i + 1)
    }

    /// The line of `key = ...` inside `[kind.name]` (or at the top with `name` `None`); the
    /// header's line when not found.
    fn key_line(&self, kind: &str, name: Option<&str>, key: &str) -> usize {
        let start = name
            .and_then(|n| self.header_line(kind, Some(n)))
            .unwrap_or(0);
        let dashed = key.replace('_', "-");
        for (i, line) in self.text.lines().enumerate().skip(start) {
            let l = line.trim();
            if i >= start && start > 0 && l.starts_with('[') {
                break;
            }
            for spelling in [key, dashed.as_str()] {
                if let Some(rest) = l.strip_prefix(spelling) {
                    if rest.trim_start().starts_with('=') {
                        return i + 1;
                    }
                }
            }
        }
        start.max(1)
    }
}

/// The path `run`/`check-config` read: `--config`, else the default.
pub fn path_or_default(path: Option<PathBuf>) -> PathBuf {
    path.unwrap_or_else(|| PathBuf::from(DEFAULT_PATH))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str) -> Result<Config, Vec<String>> {
        parse(Path::new("b.toml"), text)
    }

    #[test]
    fn a_job_and_a_receiver_parse_with_defaults() {
        let config = check(
            "[defaults]\nstate_dir = \"/s\"\n\n[job.data]\nsource = \"/dev/a\"\ndest = [\"/m/a\", \"/m/b\"]\ninterval = \"30s\"\n\n[receiver.r]\nlisten = \"127.0.0.1:7300\"\ntarget = \"/t\"\nidentity = \"/id\"\nallow_peer = [\"sha256:00\"]\n",
        )
        .unwrap();
        let job = &config.jobs["data"];
        assert_eq!(job.args.dests, ["/m/a", "/m/b"]);
        assert_eq!(job.args.interval, std::time::Duration::from_secs(30));
        assert_eq!(job.args.state_dir.as_deref(), Some(Path::new("/s")));
        assert!(config.receivers.contains_key("r"));
    }

    #[test]
    fn each_mistake_names_its_line() {
        let text = "[job.a]\nsource = \"/dev/a\"\ndest = \"/m/a\"\ninterval = \"soon\"\n\n[job.b]\nsource = \"/dev/b\"\n\n[job.c]\nsource = \"/dev/c\"\ndest = \"/m/c\"\nonce = true\n\n[jobs.x]\n";
        let mistakes = check(text).unwrap_err();
        assert_eq!(mistakes.len(), 4, "{mistakes:?}");
        assert!(
            mistakes
                .iter()
                .any(|m| m.starts_with("b.toml:4: job a:") && m.contains("interval")),
            "{mistakes:?}"
        );
        assert!(
            mistakes
                .iter()
                .any(|m| m.starts_with("b.toml:6: job b:") && m.contains("DEST")),
            "{mistakes:?}"
        );
        assert!(
            mistakes
                .iter()
                .any(|m| m.starts_with("b.toml:12: job c: once")),
            "{mistakes:?}"
        );
        assert!(
            mistakes
                .iter()
                .any(|m| m.starts_with("b.toml:14:") && m.contains("jobs")),
            "{mistakes:?}"
        );
    }

    #[test]
    fn a_syntax_error_names_its_line_and_an_empty_file_is_a_mistake() {
        let mistakes = check("[job.a]\nsource = \n").unwrap_err();
        assert!(mistakes[0].starts_with("b.toml:2:"), "{mistakes:?}");
        let mistakes = check("").unwrap_err();
        assert!(mistakes[0].contains("nothing to run"), "{mistakes:?}");
    }
}
