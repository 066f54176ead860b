//! The event log, `--log-format json`: every stderr line is one JSON object with `ts`,
//! `schema`, `level` and `message`; a committed cycle and a failed one each produce their
//! `event` line with stable fields, on the sender and on the receiver. `-q` and `-v` move the
//! level.

use serde_json::Value;

use crate::support::*;

/// Every stderr line of `out`, parsed; panics on a line that is not a JSON object.
#[track_caller]
fn events(out: &Output) -> Vec<Value> {
    out.stderr
        .iter()
        .filter(|l| !l.starts_with("blkmirror: error:"))
        .map(|l| {
            let v: Value =
                serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
            assert!(v.is_object(), "{l}");
            for key in ["ts", "schema", "level", "message"] {
                assert!(!v[key].is_null(), "{key} missing: {l}");
            }
            assert_eq!(v["schema"], 1, "{l}");
            assert!(v["ts"].as_str().unwrap().ends_with('Z'), "{l}");
            v
        })
        .collect()
}

#[track_caller]
fn the_event<'a>(all: &'a [Value], name: &str) -> &'a Value {
    let found: Vec<&Value> = all.iter().filter(|v| v["event"] == name).collect();
    assert_eq!(found.len(), 1, "one {name} event expected: {all:?}");
    found[0]
}

#[test]
fn committed_and_failed_cycles_are_json_events() {
    let t = Scratch::new("event-log");
    let src = t.path("source.img");
    write_random_file(&src, MIB, 1501);
    let tgt = t.path("target.img");
    let state = t.dir("state");
    let mut args = send_args(s(&src), s(&tgt), &state);
    args.extend(["--once".into(), "--log-format".into(), "json".into()]);
    let out = run(&args);
    out.assert_success();
    let all = events(&out);
    let committed = the_event(&all, "cycle_committed");
    assert_eq!(committed["level"], "info");
    assert_eq!(committed["dest"], s(&tgt));
    assert_eq!(committed["generation"], 1);
    assert!(committed["bytes_sent"].as_u64().unwrap() > 0, "{committed}");
    let receiver = the_event(&all, "generation_committed");
    assert_eq!(receiver["target"], s(&tgt));
    assert_eq!(receiver["generation"], 1);

    let id = t.dir("id");
    keygen(&id);
    let mut args = send_args(s(&src), "tls://127.0.0.1:9", &state);
    args.extend(["--once".into(), "--log-format".into(), "json".into()]);
    args.extend(["--identity".into(), s(&id).into(), "--peer".into()]);
    args.push(format!("sha256:{}", "0".repeat(64)));
    let out = run(&args);
    out.assert_code(1);
    let all = events(&out);
    let failed = the_event(&all, "cycle_failed");
    assert_eq!(failed["level"], "warn");
    assert_eq!(failed["dest"], "tls://127.0.0.1:9");
    assert!(
        failed["error"].as_str().unwrap().contains("127.0.0.1:9"),
        "{failed}"
    );
}

#[test]
fn quiet_and_verbose_move_the_level() {
    let t = Scratch::new("event-log-levels");
    let src = t.path("source.img");
    write_random_file(&src, MIB, 1502);
    let state = t.dir("state");
    let count = |flag: &str, level: &str| {
        let mut args = vec![flag.to_string()];
        args.extend(send_args(s(&src), s(&t.path("target.img")), &state));
        args.extend(["--once".into(), "--log-format".into(), "json".into()]);
        let out = run(&args);
        out.assert_success();
        events(&out).iter().filter(|v| v["level"] == level).count()
    };
    assert_eq!(count("-q", "info"), 0, "-q drops info lines");
    assert!(count("-v", "debug") > 0, "-v shows debug lines");
    assert!(count("--log-format=json", "info") > 0, "info by default");
}

/// A long stage logs how far it got (event `progress`), every 30 s by default; here every
/// 300 ms (`BLKMIRROR_PROGRESS_EVERY`) on a scan of eight 8 MiB chunks that the read limit
/// makes last about 4 s (half a second per chunk; progress advances per chunk). And
/// `--progress always` without a terminal prints plain progress lines (every second).
#[test]
fn a_long_scan_logs_its_progress() {
    let t = Scratch::new("event-log-progress");
    let src = t.path("source.img");
    write_random_file(&src, 64 * MIB, 1503);
    let state = t.dir("state");
    let mut args = vec!["--log-format".to_string(), "json".into()];
    args.extend(send_args(s(&src), s(&t.path("a.img")), &state));
    args.extend(["--once".into(), "--read-limit".into(), "16M".into()]);
    let mut proc = Proc::blkmirror_env("sender", &args, &[("BLKMIRROR_PROGRESS_EVERY", "300ms")]);
    assert!(proc.wait_exit(RUN_TIMEOUT).success(), "{}", proc.describe());
    let progress: Vec<Value> = proc
        .stderr_lines()
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["event"] == "progress")
        .collect();
    assert!(progress.len() >= 3, "{}", proc.describe());
    assert_eq!(progress[0]["stage"], "scan");
    let done: Vec<u64> = progress
        .iter()
        .map(|v| v["done"].as_u64().unwrap())
        .collect();
    assert!(done.windows(2).all(|w| w[0] < w[1]), "{done:?}");
    assert!(
        progress.iter().all(|v| v["total"] == 64 * MIB),
        "{progress:?}"
    );

    let mut args = send_args(s(&src), s(&t.path("b.img")), &state);
    let at = args.iter().position(|a| a == "never").unwrap();
    args[at] = "always".into();
    args.extend(["--once".into(), "--read-limit".into(), "16M".into()]);
    let out = run(&args);
    out.assert_success();
    let lines = out
        .stderr
        .iter()
        .filter(|l| l.contains("scan: ") && l.contains(" of 64.0 MiB"))
        .count();
    assert!(lines >= 2, "{out:?}");
}
