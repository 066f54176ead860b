//! Cycles and state: the standard `send` arguments, [`send_once`] and its [`Cycle`] report,
//! `status --json` entries, and [`freeze_mid_cycle`], which stops a sender exactly while the
//! receiver says it is mid-cycle.

use std::path::Path;

use serde_json::Value;

use super::{run, s, wait_for, Proc, Signal, RUN_TIMEOUT};

/// One `--json` cycle report.
#[derive(Clone, Debug)]
pub struct Cycle {
    pub generation: u64,
    pub blocks_scanned: u64,
    pub blocks_changed: u64,
    pub blocks_zero: u64,
    pub bytes_read: u64,
    pub bytes_sent: u64,
    pub root: String,
    pub raw: Value,
}

impl Cycle {
    #[track_caller]
    pub fn from_json(v: &Value) -> Cycle {
        let num = |k: &str| {
            v.get(k)
                .and_then(Value::as_u64)
                .unwrap_or_else(|| panic!("cycle report lacks u64 field {k:?}: {v}"))
        };
        let root = v
            .get("root")
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("cycle report lacks string field \"root\": {v}"))
            .to_string();
        assert!(
            !root.is_empty() && root.chars().all(|c| c.is_ascii_hexdigit()),
            "\"root\" is not hex: {v}"
        );
        Cycle {
            generation: num("generation"),
            blocks_scanned: num("blocks_scanned"),
            blocks_changed: num("blocks_changed"),
            blocks_zero: num("blocks_zero"),
            bytes_read: num("bytes_read"),
            bytes_sent: num("bytes_sent"),
            root,
            raw: v.clone(),
        }
    }
}

/// The standard arguments of a test `send`: `send SRC DEST --json --progress never
/// --state-dir STATE --snapshot none` (test sources live on /tmp, which cannot reflink; a
/// later `--snapshot KIND` overrides it).
pub fn send_args(src: &str, dest: &str, state: &Path) -> Vec<String> {
    vec![
        "send".into(),
        src.into(),
        dest.into(),
        "--json".into(),
        "--progress".into(),
        "never".into(),
        "--state-dir".into(),
        s(state).into(),
        "--snapshot".into(),
        "none".into(),
    ]
}

/// Runs `send --once --json` and returns its single cycle report.
#[track_caller]
pub fn send_once(src: &str, dest: &str, state: &Path, extra: &[&str]) -> Cycle {
    let mut args = send_args(src, dest, state);
    args.push("--once".into());
    args.extend(extra.iter().map(|a| a.to_string()));
    let out = run(&args);
    out.assert_success();
    let lines = out.json_lines();
    assert_eq!(
        lines.len(),
        1,
        "--once --json must print exactly one JSON object\n{out:?}"
    );
    Cycle::from_json(&lines[0])
}

/// `status --state-dir DIR --json`, parsed as an array.
#[track_caller]
pub fn status(state: &Path) -> Vec<Value> {
    let out = run(&["status", "--state-dir", s(state), "--json"]);
    out.assert_success();
    let v: Value = serde_json::from_str(&out.stdout_text())
        .unwrap_or_else(|e| panic!("status --json is not JSON ({e})\n{out:?}"));
    v.as_array()
        .unwrap_or_else(|| panic!("status --json is not an array\n{out:?}"))
        .clone()
}

/// The single entry with `"role": role` in `status`.
#[track_caller]
pub fn status_entry(state: &Path, role: &str) -> Value {
    let all = status(state);
    let mut matching: Vec<Value> = all
        .iter()
        .filter(|e| e.get("role").and_then(Value::as_str) == Some(role))
        .cloned()
        .collect();
    assert_eq!(
        matching.len(),
        1,
        "expected exactly one {role} entry in status of {}: {all:?}",
        state.display()
    );
    matching.remove(0)
}

/// The entries with `"role": role` in `status` (possibly none yet).
#[track_caller]
pub fn status_entries(state: &Path, role: &str) -> Vec<Value> {
    status(state)
        .into_iter()
        .filter(|e| e.get("role").and_then(Value::as_str) == Some(role))
        .collect()
}

/// Runs `sender` in short slices until the receiver's `status` says `"condition":
/// "mid-cycle"` and `extra` holds, checking only while the sender is frozen (SIGSTOP), and
/// returns the entry with the sender STILL STOPPED: the caller kills it or sends SIGCONT.
/// Because every check happens with the sender frozen, the cycle cannot finish between seeing
/// `mid-cycle` and acting on it. Panics if the sender finishes first (the source is then too
/// small to ever be seen mid-cycle).
#[track_caller]
pub fn freeze_mid_cycle(state: &Path, sender: &mut Proc, extra: impl Fn() -> bool) -> Value {
    wait_for(RUN_TIMEOUT, "receiver status `mid-cycle`", || {
        sender.signal(Signal::SIGSTOP);
        if !sender.wait_stopped() {
            panic!(
                "sender finished before the receiver was seen mid-cycle\n{}",
                sender.describe()
            );
        }
        let found = status_entries(state, "receiver")
            .into_iter()
            .find(|e| e.get("condition").and_then(Value::as_str) == Some("mid-cycle"))
            .filter(|_| extra());
        if found.is_none() {
            // Let it run for one poll period, then look again.
            sender.signal(Signal::SIGCONT);
        }
        found
    })
}

/// A `"committed_generation"` that may be absent/null before the first commit (read as 0).
pub fn committed_generation(entry: &Value) -> u64 {
    entry
        .get("committed_generation")
        .and_then(Value::as_u64)
        .unwrap_or(0)
}

/// Asserts a receiver status entry says consistent at `generation`, not applying.
#[track_caller]
pub fn assert_receiver_consistent(entry: &Value, generation: u64) {
    assert_eq!(
        entry.get("condition").and_then(Value::as_str),
        Some("consistent"),
        "receiver not consistent: {entry}"
    );
    assert_eq!(
        entry.get("committed_generation").and_then(Value::as_u64),
        Some(generation),
        "receiver committed generation: {entry}"
    );
    assert!(
        entry.get("applying_generation").is_none_or(Value::is_null),
        "consistent receiver still applying: {entry}"
    );
}

/// The snapshots (LV names, clone file names) the change tracker keeps between cycles, as
/// recorded in the sender's state (`sources/*/dest-*.kept`), sorted.
pub fn kept_snapshots(state: &Path) -> Vec<String> {
    let mut kept = Vec::new();
    let sources = std::fs::read_dir(state.join("sources"))
        .into_iter()
        .flatten();
    for source in sources.flatten() {
        for file in std::fs::read_dir(source.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            if file.path().extension().is_some_and(|e| e == "kept") {
                let record: Value = serde_json::from_slice(&std::fs::read(file.path()).unwrap())
                    .unwrap_or_else(|e| panic!("{}: {e}", file.path().display()));
                kept.push(record["snapshot"].as_str().unwrap().to_string());
            }
        }
    }
    kept.sort();
    kept
}
