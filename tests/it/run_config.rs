//! `blkmirror run --config FILE` and `check-config`: a whole file checked at once with one
//! FILE:LINE line per mistake; several jobs in one process; SIGHUP restarts a changed job at
//! its next cycle boundary and leaves the others running (their generations go on without a
//! restart); a file with mistakes is refused on reload; SIGTERM exits 0.

use serde_json::Value;
use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;

use crate::support::*;

fn job(name: &str, src: &Path, tgt: &Path, extra: &str) -> String {
    format!(
        "[job.{name}]\nsource = \"{}\"\ndest = \"{}\"\nsnapshot = \"none\"\ninterval = \"1s\"\n{extra}\n",
        s(src),
        s(tgt)
    )
}

/// The committed generation of the sender entry for `tgt`.
fn generation(state: &Path, tgt: &Path) -> u64 {
    status_entries(state, "sender")
        .iter()
        .find(|e| e["dest"] == s(tgt))
        .and_then(|e| e["generation"].as_u64())
        .unwrap_or(0)
}

/// The JSON events named `event` on the process's stderr so far.
fn events(proc: &Proc, event: &str) -> Vec<Value> {
    proc.stderr_lines()
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["event"] == event)
        .collect()
}

#[test]
fn check_config_names_each_mistake_and_its_line() {
    let t = Scratch::new("check-config");
    let file = t.path("blkmirror.toml");
    let (src, tgt) = (t.path("a.img"), t.path("a-mirror.img"));
    std::fs::write(
        &file,
        format!(
            "{}{}[job.c]\nsource = \"/x\"\ndest = \"/y\"\nbwlimit = \"fast\"\n",
            job("a", &src, &tgt, ""),
            "[job.b]\nsource = \"/x\"\n\n"
        ),
    )
    .unwrap();
    let out = run(&["check-config", "--config", s(&file)]);
    assert_eq!(out.code(), Some(2), "{out:?}");
    let lines = out.error_lines();
    assert_eq!(lines.len(), 2, "{out:?}");
    assert!(
        lines
            .iter()
            .any(|l| l.contains(&format!("{}:7: job b:", s(&file)))),
        "{out:?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains(&format!("{}:13: job c:", s(&file))) && l.contains("bwlimit")),
        "{out:?}"
    );
    std::fs::write(&file, job("a", &src, &tgt, "")).unwrap();
    let out = run(&["check-config", "--config", s(&file)]);
    out.assert_success();
    assert!(
        out.stdout_text().contains("1 job(s) (a), 0 receiver(s)"),
        "{out:?}"
    );
}

#[test]
fn a_reload_restarts_the_changed_job_only_and_refuses_a_bad_file() {
    let t = Scratch::new("run-config");
    let state = t.dir("state");
    let file = t.path("blkmirror.toml");
    let (src_a, tgt_a) = (t.path("a.img"), t.path("a-mirror.img"));
    let (src_b, tgt_b) = (t.path("b.img"), t.path("b-mirror.img"));
    write_random_file(&src_a, MIB, 1601);
    write_random_file(&src_b, MIB, 1602);
    let defaults = format!(
        "metrics_listen = \"127.0.0.1:0\"\n\n[defaults]\nstate_dir = \"{}\"\n\n",
        s(&state)
    );
    let config = |b_extra: &str| {
        format!(
            "{defaults}{}{}",
            job("a", &src_a, &tgt_a, ""),
            job("b", &src_b, &tgt_b, b_extra)
        )
    };
    std::fs::write(&file, config("")).unwrap();
    let args = ["--log-format", "json", "run", "--config", s(&file)];
    let mut proc = Proc::blkmirror("run", &args);
    let bound = Duration::from_secs(120);
    wait_for(bound, "both jobs at generation 2", || {
        (generation(&state, &tgt_a) >= 2 && generation(&state, &tgt_b) >= 2).then_some(())
    });
    assert_eq!(events(&proc, "job_started").len(), 2, "{}", proc.describe());
    // One metrics endpoint for the whole file: both jobs' series.
    let line = proc.wait_line(Stream::Stderr, bound, "the metrics line", |l| {
        l.contains("metrics on http://")
    });
    let addr = line.split("metrics on http://").nth(1).unwrap();
    let addr = addr.split("/metrics").next().unwrap();
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    write!(stream, "GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    let mut body = String::new();
    stream.read_to_string(&mut body).unwrap();
    for tgt in [&tgt_a, &tgt_b] {
        let series = "blkmirror_committed_generation{";
        let labelled = body
            .lines()
            .any(|l| l.starts_with(series) && l.contains(s(tgt)));
        assert!(labelled, "{tgt:?} in\n{body}");
    }

    std::fs::write(&file, config("compress_level = 1\n")).unwrap();
    proc.signal(Signal::SIGHUP);
    wait_for(bound, "job b restarted", || {
        let started = events(&proc, "job_started");
        (started.iter().filter(|e| e["job"] == "b").count() == 2).then_some(())
    });
    let reloaded = events(&proc, "config_reloaded");
    assert_eq!(reloaded.len(), 1, "{}", proc.describe());
    assert!(
        reloaded[0]["changed"].as_str().unwrap().contains("\"b\""),
        "{reloaded:?}"
    );
    let ended = events(&proc, "job_ended");
    assert_eq!(ended.len(), 1, "only b ended: {}", proc.describe());
    assert_eq!(ended[0]["job"], "b");
    let (a_then, b_then) = (generation(&state, &tgt_a), generation(&state, &tgt_b));
    wait_for(bound, "both jobs go on after the reload", || {
        (generation(&state, &tgt_a) > a_then && generation(&state, &tgt_b) > b_then).then_some(())
    });
    // A looping job says when its next cycle is.
    let senders = status_entries(&state, "sender");
    assert!(
        senders
            .iter()
            .all(|e| e["next_cycle_at"].as_u64().is_some()),
        "{senders:?}"
    );
    let started_a = events(&proc, "job_started")
        .iter()
        .filter(|e| e["job"] == "a")
        .count();
    assert_eq!(started_a, 1, "job a was not restarted");

    std::fs::write(
        &file,
        format!("{}[job.c]\nsource = 3\n", config("compress_level = 1\n")),
    )
    .unwrap();
    proc.signal(Signal::SIGHUP);
    wait_for(bound, "the bad file refused", || {
        (!events(&proc, "reload_refused").is_empty()).then_some(())
    });
    let a_then = generation(&state, &tgt_a);
    wait_for(bound, "job a goes on after a refused reload", || {
        (generation(&state, &tgt_a) > a_then).then_some(())
    });
    assert_eq!(events(&proc, "job_started").len(), 3, "{}", proc.describe());

    proc.signal(Signal::SIGTERM);
    let status = proc.wait_exit(bound);
    assert_eq!(status.code(), Some(0), "{}", proc.describe());
    assert_identical(&src_a, &tgt_a);
    assert_identical(&src_b, &tgt_b);
}
