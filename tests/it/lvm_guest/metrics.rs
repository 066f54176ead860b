//! The snapshot space metrics on real LVM: a looping sender with `--metrics-listen` on the
//! guest's loopback, scraped over HTTP between its cycles and compared with what `lvs` says
//! of the same LVs: a thin pool's data and metadata usage, a classic snapshot's fill (the
//! cycle's, and the kept one, which holds the origin's writes between cycles), a snapshot
//! that overflowed mid-cycle (full after the failed cycle), the kept snapshot's fill read again
//! while the destination is down (one destination, and every destination of a fan-out), and a
//! figure `lvs` refuses (absent, logged once, and the cycles commit all the same).

use std::net::SocketAddr;
use std::path::Path;

use serde_json::Value;

use crate::support::*;

use super::harness::*;

/// The pause between the sender's cycles: time for a test to scrape, write to the origin and
/// ask `lvs` between two cycles, under emulation, before the next cycle changes anything.
const INTERVAL: &str = "20s";

/// One `lvs` rounding unit (two decimals of a percentage), as a fraction.
const ROUNDING: f64 = 0.0001;

/// A looping sender of `x`'s origin with its metrics on 127.0.0.1 (a free port); returns it
/// and the address it logged.
fn metrics_sender(x: &Setup, extra: &[&str], env: &[(&str, &str)]) -> (Proc, SocketAddr) {
    metrics_sender_to(x, s(&x.target), extra, env)
}

/// The same, to `dest`.
fn metrics_sender_to(
    x: &Setup,
    dest: &str,
    extra: &[&str],
    env: &[(&str, &str)],
) -> (Proc, SocketAddr) {
    let mut args = send_args(s(&x.origin), dest, &x.state);
    args.extend(extra.iter().map(|a| a.to_string()));
    args.extend(
        [
            "--snapshot",
            x.kind.provider(),
            "--compress-level",
            "0",
            "--interval",
            INTERVAL,
            "--metrics-listen",
            "127.0.0.1:0",
        ]
        .map(String::from),
    );
    let mut sender = Proc::blkmirror_env("sender", &args, env);
    let addr = metrics_addr(&mut sender);
    assert!(addr.ip().is_loopback(), "{addr}");
    (sender, addr)
}

/// Waits for the sender's `--json` report of `generation` (the figures are read before it is
/// printed), then scrapes the endpoint.
fn scrape_after(sender: &mut Proc, addr: SocketAddr, generation: u64) -> Vec<Sample> {
    let what = format!("the report of generation {generation}");
    sender.wait_line(Stream::Stdout, RUN_TIMEOUT, &what, |l| {
        serde_json::from_str::<Value>(l).is_ok_and(|v| v["generation"] == generation)
    });
    let (code, text) = http(addr, "GET", "/metrics");
    assert_eq!(code, 200, "{text}");
    eprintln!("[lvm_guest]   scraped after generation {generation}");
    samples(&text)
}

/// The value of `name` for `source` whose label `key` is `value`.
fn sample(samples: &[Sample], name: &str, source: &Path, key: &str, value: &str) -> Option<f64> {
    samples
        .iter()
        .find(|m| {
            m.name == name && m.label("source") == Some(s(source)) && m.label(key) == Some(value)
        })
        .map(|m| m.value)
}

/// `lvs -o FIELD LV` as a fraction (lvm2 prints a percentage with two decimals).
fn lvs_ratio(lv: &str, field: &str) -> f64 {
    let text = lvm("lvs", &["--reportformat", "json", "-o", field, lv]);
    let v: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("lvs --reportformat json is not JSON ({e}): {text}"));
    let percent = v["report"][0]["lv"][0][field]
        .as_str()
        .unwrap_or_else(|| panic!("no {field} for {lv}: {text}"));
    let percent: f64 = percent
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("{field} of {lv} is {percent:?}: {e}"));
    percent / 100.0
}

#[track_caller]
fn assert_close(metric: f64, lvs: f64, what: &str) {
    assert!(
        (metric - lvs).abs() <= ROUNDING,
        "{what}: the metric says {metric}, lvs {lvs}"
    );
}

/// Between two cycles, only the kept snapshot exists: the next cycle has not started.
#[track_caller]
fn assert_between_cycles(x: &Setup, kept: &[String]) {
    assert_eq!(
        x.vg.snapshots(),
        kept,
        "the next cycle started before the test was done between cycles: raise INTERVAL"
    );
}

fn stop(mut sender: Proc) {
    sender.signal(Signal::SIGTERM);
    sender.wait_exit(RUN_TIMEOUT);
}

/// A thin LV: the pool's data and metadata usage as `lvs` reports them at the end of each
/// cycle, and the data usage grown by the origin's writes that the kept snapshot holds.
#[test]
#[ignore = "runs in the QEMU guest (see lvm_acceptance_in_guest)"]
fn thin_pool_usage_is_what_lvs_reports() {
    let x = Setup::new("metrics-thin", Kind::Thin, LV_MIB);
    let pool = format!("{VG}/{POOL}");
    let (mut sender, addr) = metrics_sender(&x, &[], &[]);
    let data_of = |samples: &[Sample]| {
        sample(
            samples,
            "blkmirror_thin_pool_data_ratio",
            &x.origin,
            "pool",
            &pool,
        )
        .unwrap_or_else(|| panic!("no pool data ratio: {samples:?}"))
    };

    // The first cycle releases nothing: the pool is as the cycle's end read it.
    let first = scrape_after(&mut sender, addr, 1);
    let data = data_of(&first);
    let metadata = sample(
        &first,
        "blkmirror_thin_pool_metadata_ratio",
        &x.origin,
        "pool",
        &pool,
    )
    .unwrap_or_else(|| panic!("no pool metadata ratio: {first:?}"));
    assert_close(data, lvs_ratio(&pool, "data_percent"), "pool data");
    assert_close(
        metadata,
        lvs_ratio(&pool, "metadata_percent"),
        "pool metadata",
    );
    assert!(
        data > 0.0 && metadata > 0.0,
        "data {data}, metadata {metadata}"
    );
    assert!(
        first
            .iter()
            .all(|m| m.name != "blkmirror_snapshot_fill_ratio"),
        "a thin source has no classic snapshot fill: {first:?}"
    );
    let kept = kept_snapshots(&x.state);
    assert_between_cycles(&x, &kept);

    // A quarter of the origin rewritten: the kept snapshot holds the old blocks, the origin
    // has new ones, and the next cycle's end (before the kept one goes) sees both.
    fill_random(&x.origin, LV_MIB / 4);
    let grown = lvs_ratio(&pool, "data_percent");
    assert!(
        grown > data,
        "the writes did not grow the pool: {grown} <= {data}"
    );
    assert_between_cycles(&x, &kept);
    let second = scrape_after(&mut sender, addr, 2);
    assert_close(data_of(&second), grown, "pool data after writes");
    eprintln!("[lvm_guest]   pool data {data} -> {grown}, metadata {metadata}");
    stop(sender);
}

/// A classic LV with the change tracker: the fill of the cycle's snapshot, then that of the
/// snapshot kept between cycles after writes to the origin, as `lvs` reports them.
#[test]
#[ignore = "runs in the QEMU guest (see lvm_acceptance_in_guest)"]
fn classic_snapshot_fill_of_the_cycle_and_of_the_kept_snapshot() {
    let x = Setup::new("metrics-classic", Kind::Classic, LV_MIB);
    let (mut sender, addr) = metrics_sender(&x, &[], &[]);
    let fill = |samples: &[Sample], which: &str| {
        sample(
            samples,
            "blkmirror_snapshot_fill_ratio",
            &x.origin,
            "snapshot",
            which,
        )
    };
    let lv = |name: &str| format!("{VG}/{name}");

    let first = scrape_after(&mut sender, addr, 1);
    let kept = kept_snapshots(&x.state);
    assert_eq!(kept.len(), 1, "the cow-table tracker keeps the snapshot");
    let cycle = fill(&first, "cycle").unwrap_or_else(|| panic!("no cycle fill: {first:?}"));
    assert_close(
        cycle,
        lvs_ratio(&lv(&kept[0]), "snap_percent"),
        "cycle fill",
    );
    assert_eq!(
        fill(&first, "kept"),
        None,
        "nothing was kept before the first cycle"
    );
    assert!(
        first
            .iter()
            .all(|m| !m.name.starts_with("blkmirror_thin_pool")),
        "a classic source has no pool figures: {first:?}"
    );
    assert_between_cycles(&x, &kept);

    // Writes between cycles go to the kept snapshot's COW space (64 MiB by default).
    fill_random(&x.origin, LV_MIB / 4);
    let filled = lvs_ratio(&lv(&kept[0]), "snap_percent");
    assert!(
        filled > 0.1,
        "8 MiB of writes filled {filled} of the COW space"
    );
    assert_between_cycles(&x, &kept);

    let second = scrape_after(&mut sender, addr, 2);
    let kept_fill = fill(&second, "kept").unwrap_or_else(|| panic!("no kept fill: {second:?}"));
    assert!(kept_fill > 0.0);
    assert_close(
        kept_fill,
        filled,
        "kept fill (nothing written during the cycle)",
    );
    let now_kept = kept_snapshots(&x.state);
    assert_ne!(now_kept, kept, "the kept snapshot moved on");
    let cycle = fill(&second, "cycle").unwrap_or_else(|| panic!("no cycle fill: {second:?}"));
    assert_close(
        cycle,
        lvs_ratio(&lv(&now_kept[0]), "snap_percent"),
        "cycle fill",
    );
    assert!(cycle < kept_fill, "cycle {cycle}, kept {kept_fill}");
    eprintln!("[lvm_guest]   fill: cycle {cycle}, kept {kept_fill}");
    stop(sender);
}

/// A classic snapshot that overflows in the middle of a cycle: the failed cycle reads the
/// space figures before its snapshot goes, so a scrape after it shows the cycle's snapshot
/// full, not the fill of the last cycle that committed.
#[test]
#[ignore = "runs in the QEMU guest (see lvm_acceptance_in_guest)"]
fn a_cycle_whose_snapshot_overflowed_shows_it_full() {
    let x = Setup::new("metrics-overflow", Kind::Classic, LV_MIB);
    let (mut sender, addr) = metrics_sender(&x, &["--snapshot-size", "4M"], &[]);
    let cycle_fill = |samples: &[Sample]| {
        sample(
            samples,
            "blkmirror_snapshot_fill_ratio",
            &x.origin,
            "snapshot",
            "cycle",
        )
    };
    let first = scrape_after(&mut sender, addr, 1);
    let committed = cycle_fill(&first).unwrap_or_else(|| panic!("no cycle fill: {first:?}"));
    assert!(
        committed < 1.0,
        "the first cycle's snapshot is full: {committed}"
    );

    // Change everything (a long cycle), then, with the next cycle frozen in the middle, write
    // four times the snapshot's COW space to the origin.
    fill_random(&x.origin, LV_MIB);
    x.freeze_mid_cycle(&mut sender);
    fill_random(&x.origin, 16);
    sender.signal(Signal::SIGCONT);
    // The failure is logged after the figures were read; the retry waits for at least twice
    // the interval.
    sender.wait_line(Stream::Stderr, RUN_TIMEOUT, "the cycle's failure", |l| {
        l.contains("cycle failed") && l.contains("overflow")
    });
    let (code, text) = http(addr, "GET", "/metrics");
    assert_eq!(code, 200, "{text}");
    let failed = samples(&text);
    assert_eq!(
        cycle_fill(&failed),
        Some(1.0),
        "the overflowed snapshot's fill: {failed:?}"
    );
    stop(sender);
}

/// A looping sender of `x`'s origin (metrics served) to `count` TLS receivers on the guest's
/// loopback (the first of `x.target`, the others of targets of their own, each created by the
/// first cycle), once its first cycle committed; returns the sender, its metrics address, the
/// receivers and the snapshot the first cycle kept.
fn sender_to_receivers(x: &Setup, count: usize) -> (Proc, SocketAddr, Vec<Receiver>, Vec<String>) {
    let tls = TlsPair::new(&x.t);
    let mut receiving = tls.receiver_args();
    receiving.push("--create".into());
    let receivers: Vec<Receiver> = (0..count)
        .map(|i| match i {
            0 => Receiver::start(&x.target, &x.t.dir("receiver-state"), &receiving),
            _ => {
                let own = x.t.dir(&format!("receiver-{i}"));
                Receiver::start(&own.join("target.img"), &own, &receiving)
            }
        })
        .collect();
    let mut dests: Vec<String> = receivers
        .iter()
        .map(|r| format!("tls://{}", r.addr))
        .collect();
    let mut extra = tls.sender_args();
    extra.extend(dests.drain(1..));
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    let (mut sender, addr) = metrics_sender_to(x, &dests[0], &extra, &[]);
    let first = scrape_after(&mut sender, addr, 1);
    assert_eq!(
        kept_fill(x, &first),
        None,
        "nothing was kept before the first cycle"
    );
    let kept = kept_snapshots(&x.state);
    assert_eq!(kept.len(), 1, "the cow-table tracker keeps the snapshot");
    (sender, addr, receivers, kept)
}

/// The kept snapshot's fill in `samples`.
fn kept_fill(x: &Setup, samples: &[Sample]) -> Option<f64> {
    let name = "blkmirror_snapshot_fill_ratio";
    sample(samples, name, &x.origin, "snapshot", "kept")
}

/// Writes 8 MiB to the origin, which the kept snapshot takes; returns its fill as `lvs` says.
fn write_to_kept(x: &Setup, kept: &[String]) -> f64 {
    fill_random(&x.origin, LV_MIB / 4);
    let filled = lvs_ratio(&format!("{VG}/{}", kept[0]), "snap_percent");
    assert!(filled > 0.1, "8 MiB of writes filled {filled}");
    filled
}

/// Scrapes the metrics now and checks the kept fill against `filled`.
#[track_caller]
fn assert_kept_fill_now(x: &Setup, addr: SocketAddr, filled: f64, what: &str) {
    let (code, text) = http(addr, "GET", "/metrics");
    assert_eq!(code, 200, "{text}");
    let now = samples(&text);
    let fill = kept_fill(x, &now).unwrap_or_else(|| panic!("no kept fill {what}: {now:?}"));
    assert_close(fill, filled, &format!("kept fill {what}"));
    eprintln!("[lvm_guest]   kept fill {fill} {what}");
}

/// A destination that goes away does not freeze the figures: while the sender retries, the
/// kept snapshot goes on filling with the origin's writes, and each failed attempt reads its
/// fill again before the failure is logged, so that an alert can fire before it overflows.
#[test]
#[ignore = "runs in the QEMU guest (see lvm_acceptance_in_guest)"]
fn the_kept_fill_is_read_again_while_the_destination_is_down() {
    let x = Setup::new("metrics-outage", Kind::Classic, LV_MIB);
    let (mut sender, addr, mut receivers, kept) = sender_to_receivers(&x, 1);
    // The origin is written between cycles, then the destination goes away.
    let filled = write_to_kept(&x, &kept);
    assert_between_cycles(&x, &kept);
    receivers[0].proc.kill9();

    sender.wait_line(Stream::Stderr, RUN_TIMEOUT, "a failed attempt", |l| {
        l.contains("cycle failed")
    });
    assert_kept_fill_now(&x, addr, filled, "while the destination is down");
    assert_eq!(
        kept_snapshots(&x.state),
        kept,
        "a failed cycle keeps the snapshot kept before it"
    );
    stop(sender);
}

/// With several destinations, a pass that reaches none of them runs no cycle, and reads the
/// kept snapshot's fill again all the same: after the pass whose cycle failed at both (which
/// reads the figures as any cycle does), the origin is written, and the next pass, which only
/// dials, shows the new fill.
#[test]
#[ignore = "runs in the QEMU guest (see lvm_acceptance_in_guest)"]
fn the_kept_fill_is_read_again_while_no_destination_of_a_fanout_is_up() {
    let x = Setup::new("metrics-outage-fanout", Kind::Classic, LV_MIB);
    let (mut sender, addr, mut receivers, kept) = sender_to_receivers(&x, 2);
    for receiver in &mut receivers {
        receiver.proc.kill9();
    }

    // The next pass still holds both sessions: its cycle fails at both.
    let failed = |l: &str| l.contains("cycle failed");
    let (first, _) = sender.wait_line_from(Stream::Stderr, 0, RUN_TIMEOUT, "a failure", failed);
    let (second, _) =
        sender.wait_line_from(Stream::Stderr, first + 1, RUN_TIMEOUT, "the other", failed);
    // Before the next pass (twice the interval later), the origin is written.
    let filled = write_to_kept(&x, &kept);
    assert!(
        !sender.stderr_lines()[second + 1..]
            .iter()
            .any(|l| failed(l)),
        "the next pass came before the test was done between passes: raise INTERVAL"
    );
    let next = "the next pass";
    sender.wait_line_from(Stream::Stderr, second + 1, RUN_TIMEOUT, next, failed);
    assert_kept_fill_now(&x, addr, filled, "while no destination is up");
    assert_eq!(kept_snapshots(&x.state), kept, "the kept snapshot stays");
    stop(sender);
}

/// An `lvs` that refuses the pool's figures: they are absent from the metrics, the failure is
/// logged once (a warning, then debug), and every cycle commits.
#[test]
#[ignore = "runs in the QEMU guest (see lvm_acceptance_in_guest)"]
fn pool_figures_lvs_refuses_are_absent_and_cycles_commit() {
    let x = Setup::new("metrics-refused", Kind::Thin, LV_MIB);
    let real = ["/usr/sbin/lvs", "/sbin/lvs"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("lvs is installed");
    let fake = x.t.dir("fake-bin");
    let script = fake.join("lvs");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\ncase \"$*\" in *data_percent*) echo '  Refused by the test.' >&2; exit 5 ;; esac\nexec {real} \"$@\"\n"
        ),
    )
    .unwrap();
    sh("chmod", &["+x", s(&script)]);
    let path = format!("{}:{}", s(&fake), std::env::var("PATH").unwrap_or_default());
    let (mut sender, addr) = metrics_sender(&x, &[], &[("PATH", &path)]);
    for generation in 1..=2 {
        let scrape = scrape_after(&mut sender, addr, generation);
        let committed = scrape
            .iter()
            .find(|m| m.name == "blkmirror_committed_generation")
            .map(|m| m.value);
        assert_eq!(committed, Some(generation as f64), "{scrape:?}");
        assert!(
            scrape
                .iter()
                .all(|m| !m.name.starts_with("blkmirror_thin_pool")),
            "figures lvs refused are in the metrics: {scrape:?}"
        );
    }
    let warnings = sender
        .stderr_lines()
        .iter()
        .filter(|l| l.contains("cannot read the snapshot space figures"))
        .count();
    assert_eq!(
        warnings,
        1,
        "one warning for two refusals\n{}",
        sender.describe()
    );
    stop(sender);
}
