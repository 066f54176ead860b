//! The units of `contrib/systemd/` run by a real systemd: Debian's systemd booted as PID 1 of a
//! `systemd-nspawn` container made of the host's `/usr` (`--volatile=yes`: a fresh tmpfs root,
//! nothing of the host's `/etc` or services), with its own network namespace. The units are the
//! shipped files, unchanged; only a drop-in opens the test's directory (as contrib/systemd's
//! README tells users to) and shortens the watchdog to 2 s.
//!
//! A oneshot unit inside runs [`CHECK`]: it starts `blkmirror-receive@data` and `blkmirror`
//! (the config daemon, sending a file to that receiver over TLS on the container's loopback),
//! waits for committed cycles through the journal's structured fields, edits the configuration
//! and reloads, stops it, lets `blkmirror-send@data` take the same volume over for a cycle,
//! stops everything, and leaves what systemd and the journal say in `results/`. The
//! test then checks it: `systemctl start` returned only after READY=1 (Type=notify), the
//! watchdog never fired, a stop is a success (exit 0), the reload restarted the job, the
//! journal holds each event with its `BLKMIRROR_*` fields, and the target equals the source.

use std::fs;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use crate::support::*;

/// Runs inside the container as `blkmirror-check.service`; one `NAME RC` line per step.
const CHECK: &str = r#"
R=/srv/bm/results
mkdir -p $R
step() { name=$1; shift; "$@"; echo "$name $?" >> $R/steps; }
# count UNIT FIELD=VALUE: journal entries of UNIT with that field.
count() { journalctl --no-pager -q -o cat _SYSTEMD_UNIT="$1" "$2" | wc -l; }
# until_count UNIT FIELD=VALUE N: waits (60 s at most) for N such entries.
until_count() {
    i=0
    while [ "$(count "$1" "$2")" -lt "$3" ]; do
        i=$((i + 1)); [ $i -gt 300 ] && return 1; sleep 0.2
    done
}
show() { systemctl show -p ActiveState,SubState,Result,ExecMainStatus,NRestarts "$@"; }

step start-receiver systemctl start blkmirror-receive@data
step start-run systemctl start blkmirror
show blkmirror-receive@data > $R/show-receiver-started
show blkmirror > $R/show-run-started
# Three cycles at a 1 s interval outlive the 2 s watchdog.
step three-cycles until_count blkmirror.service BLKMIRROR_EVENT=cycle_committed 3
sed -i 's/^interval = "1s"/interval = "2s"/' /etc/blkmirror/blkmirror.toml
step reload systemctl reload blkmirror
step job-restarted until_count blkmirror.service BLKMIRROR_EVENT=job_started 2
before=$(count blkmirror.service BLKMIRROR_EVENT=cycle_committed)
step cycle-after-reload until_count blkmirror.service BLKMIRROR_EVENT=cycle_committed $((before + 1))
blkmirror status --json > $R/status.json
step stop-run systemctl stop blkmirror
# The per-volume template takes over the same volume, from the same state.
step start-send systemctl start blkmirror-send@data
show blkmirror-send@data > $R/show-send-started
step send-cycle until_count blkmirror-send@data.service BLKMIRROR_EVENT=cycle_committed 1
step stop-send systemctl stop blkmirror-send@data
show blkmirror-send@data > $R/show-send-stopped
step stop-receiver systemctl stop blkmirror-receive@data
show blkmirror-receive@data > $R/show-receiver-stopped
show blkmirror > $R/show-run-stopped
journalctl --no-pager -o json _SYSTEMD_UNIT=blkmirror.service > $R/journal-run.json
journalctl --no-pager -o json _SYSTEMD_UNIT=blkmirror-receive@data.service > $R/journal-receiver.json
journalctl --no-pager -o json _SYSTEMD_UNIT=blkmirror-send@data.service > $R/journal-send.json
echo done >> $R/steps
"#;

const CHECK_UNIT: &str = "[Unit]
Description=blkmirror under systemd: the test's steps
SuccessAction=exit
FailureAction=exit

[Service]
Type=oneshot
ExecStart=/usr/bin/sh /srv/bm/check.sh
StandardOutput=journal+console
StandardError=journal+console
";

/// The drop-in a user would write for a file target (contrib/systemd/README.md), plus a short
/// watchdog.
const RECEIVER_DROP_IN: &str = "[Service]\nReadWritePaths=/srv/bm\nWatchdogSec=2s\n";
const SENDER_DROP_IN: &str = "[Service]\nWatchdogSec=2s\n";

/// `systemctl show` output as (key, value) pairs.
fn show(results: &Path, name: &str) -> Vec<(String, String)> {
    let text = fs::read_to_string(results.join(name)).unwrap_or_default();
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn assert_shows(results: &Path, name: &str, expected: &[(&str, &str)]) {
    let shown = show(results, name);
    for (key, value) in expected {
        let got = shown
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str());
        assert_eq!(got, Some(*value), "{name}: {key} in {shown:?}");
    }
}

/// The journal's entries (`journalctl -o json`, one object per line).
fn journal(results: &Path, name: &str) -> Vec<Value> {
    fs::read_to_string(results.join(name))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{name}: {e}: {l}")))
        .collect()
}

fn field<'a>(entry: &'a Value, name: &str) -> Option<&'a str> {
    entry.get(name).and_then(Value::as_str)
}

/// The entries whose `BLKMIRROR_EVENT` is `event`.
fn events<'a>(entries: &'a [Value], event: &str) -> Vec<&'a Value> {
    entries
        .iter()
        .filter(|e| field(e, "BLKMIRROR_EVENT") == Some(event))
        .collect()
}

#[test]
fn the_units_run_under_a_real_systemd_and_log_structured_fields_to_its_journal() {
    let t = Scratch::new("under-systemd");
    let usr_local = t.dir("usr-local");
    fs::create_dir_all(usr_local.join("bin")).unwrap();
    fs::copy(bin(), usr_local.join("bin/blkmirror")).unwrap();

    let units = t.dir("units");
    let contrib = Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/systemd");
    for unit in [
        "blkmirror.service",
        "blkmirror-receive@.service",
        "blkmirror-send@.service",
    ] {
        fs::copy(contrib.join(unit), units.join(unit)).unwrap();
    }
    for (dir, text) in [
        ("blkmirror-receive@data.service.d", RECEIVER_DROP_IN),
        ("blkmirror.service.d", SENDER_DROP_IN),
        ("blkmirror-send@data.service.d", SENDER_DROP_IN),
    ] {
        fs::create_dir_all(units.join(dir)).unwrap();
        fs::write(units.join(dir).join("test.conf"), text).unwrap();
    }
    fs::write(units.join("blkmirror-check.service"), CHECK_UNIT).unwrap();

    let etc = t.dir("etc");
    let receiver_fp = keygen(&etc.join("rid"));
    let sender_fp = keygen(&etc.join("sid"));
    fs::write(
        etc.join("receive-data.env"),
        format!(
            "BLKMIRROR_ARGS=/srv/bm/dst.img --create --listen 127.0.0.1:7300 \
             --identity /etc/blkmirror/rid --allow-peer {sender_fp}\n"
        ),
    )
    .unwrap();
    fs::write(
        etc.join("blkmirror.toml"),
        format!(
            "[job.data]\nsource = \"/srv/bm/src.img\"\ndest = [\"tls://127.0.0.1:7300\"]\n\
             identity = \"/etc/blkmirror/sid\"\npeer = \"{receiver_fp}\"\n\
             snapshot = \"none\"\ninterval = \"1s\"\n"
        ),
    )
    .unwrap();

    fs::write(
        etc.join("send-data.env"),
        format!(
            "BLKMIRROR_ARGS=/srv/bm/src.img tls://127.0.0.1:7300 --snapshot none \
             --interval 1s --identity /etc/blkmirror/sid --peer {receiver_fp}\n"
        ),
    )
    .unwrap();

    let srv = t.dir("srv");
    write_random_file(&srv.join("src.img"), 8 << 20, 91);
    fs::write(srv.join("check.sh"), CHECK).unwrap();

    let machine = format!("bm-check-{}", std::process::id());
    let bind = |flag: &str, from: &Path, to: &str| format!("--{flag}={}:{to}", from.display());
    let args = [
        "-D".to_string(),
        "/".into(),
        "--volatile=yes".into(),
        "--register=no".into(),
        "--keep-unit".into(),
        "--private-network".into(),
        "--console=pipe".into(),
        format!("--machine={machine}"),
        bind("bind-ro", &usr_local, "/usr/local"),
        bind("bind-ro", &units, "/etc/systemd/system"),
        bind("bind", &etc, "/etc/blkmirror"),
        bind("bind", &srv, "/srv/bm"),
        "--boot".into(),
        "--".into(),
        "systemd.unit=blkmirror-check.service".into(),
        "systemd.firstboot=off".into(),
    ];
    let mut container = Proc::spawn("systemd-nspawn", "systemd-nspawn", &args);
    let status = container.wait_exit(Duration::from_secs(240));
    container.drain(Duration::from_secs(5));

    let results = srv.join("results");
    let steps = fs::read_to_string(results.join("steps")).unwrap_or_default();
    let context = || {
        format!(
            "steps:\n{steps}\ncontainer ({status:?}):\n{}",
            container.stdout_lines().join("\n")
        )
    };
    let expected_steps = [
        "start-receiver",
        "start-run",
        "three-cycles",
        "reload",
        "job-restarted",
        "cycle-after-reload",
        "stop-run",
        "start-send",
        "send-cycle",
        "stop-send",
        "stop-receiver",
    ];
    for step in expected_steps {
        assert!(
            steps.lines().any(|l| l == format!("{step} 0")),
            "step {step} did not succeed\n{}",
            context()
        );
    }
    assert!(steps.lines().any(|l| l == "done"), "{}", context());

    // Type=notify: `systemctl start` returned once READY=1 came, and the loop was running.
    for name in [
        "show-receiver-started",
        "show-run-started",
        "show-send-started",
    ] {
        assert_shows(
            &results,
            name,
            &[("ActiveState", "active"), ("SubState", "running")],
        );
    }
    // A requested stop is a success (exit 0), and the 2 s watchdog never restarted either.
    for name in [
        "show-receiver-stopped",
        "show-run-stopped",
        "show-send-stopped",
    ] {
        assert_shows(
            &results,
            name,
            &[
                ("ActiveState", "inactive"),
                ("Result", "success"),
                ("ExecMainStatus", "0"),
                ("NRestarts", "0"),
            ],
        );
    }

    // The journal got the events as fields, not as text with a timestamp in front.
    let run = journal(&results, "journal-run.json");
    let committed = events(&run, "cycle_committed");
    assert!(committed.len() >= 4, "{} cycle_committed", committed.len());
    let first = committed[0];
    assert_eq!(field(first, "BLKMIRROR_GENERATION"), Some("1"), "{first}");
    assert_eq!(
        field(first, "BLKMIRROR_DEST"),
        Some("tls://127.0.0.1:7300"),
        "{first}"
    );
    assert_eq!(field(first, "BLKMIRROR_JOB"), Some("data"), "{first}");
    assert_eq!(field(first, "PRIORITY"), Some("6"), "{first}");
    assert_eq!(
        field(first, "SYSLOG_IDENTIFIER"),
        Some("blkmirror"),
        "{first}"
    );
    let message = field(first, "MESSAGE").unwrap_or_default();
    assert!(
        message.starts_with("cycle committed"),
        "MESSAGE is the sentence alone: {message:?}"
    );
    let started = events(&run, "job_started");
    assert_eq!(
        started.len(),
        2,
        "the reload restarted the changed job once"
    );
    assert!(
        !events(&run, "config_reloaded").is_empty(),
        "config_reloaded"
    );

    // The template unit went on from the generation the config daemon had reached.
    let send = journal(&results, "journal-send.json");
    let sent = events(&send, "cycle_committed");
    let generation = |e: &Value| -> u64 {
        field(e, "BLKMIRROR_GENERATION")
            .and_then(|g| g.parse().ok())
            .unwrap_or_else(|| panic!("no generation in {e}"))
    };
    let last_of_run = generation(committed[committed.len() - 1]);
    assert!(!sent.is_empty(), "blkmirror-send@data committed nothing");
    assert_eq!(generation(sent[0]), last_of_run + 1, "{}", sent[0]);

    let receiver = journal(&results, "journal-receiver.json");
    let generations = events(&receiver, "generation_committed");
    assert!(
        generations.len() >= 4,
        "{} generation_committed",
        generations.len()
    );
    assert_eq!(
        field(generations[0], "BLKMIRROR_TARGET"),
        Some("/srv/bm/dst.img"),
        "{}",
        generations[0]
    );

    assert_identical(&srv.join("src.img"), &srv.join("dst.img"));
}
