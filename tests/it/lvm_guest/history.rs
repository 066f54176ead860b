//! History on a thin-LV target, on real LVM (`receive --keep`, `blkmirror history`): a thin
//! snapshot after each commit, restores byte-identical to the source at their generation,
//! pruning by the grid over 30 simulated hours (an injected `--now`), and the one-line
//! refusals (a classic LV target, `--history-dir` for a thin LV).
//!
//! The receiver runs as a real `receive --stdio --keep` process reached through the sender's
//! `--ssh-command`: a script standing for ssh plus a forced command (the guest has no network
//! and no sshd). In-process (local) destinations keep no history.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use blkmirror::history::{self, Policy, Snapshot, Store};
use serde_json::Value;

use crate::support::*;

use super::harness::*;

const TAG: &str = "blkmirror-history";
const HOUR: u64 = 3_600;
const DAY: u64 = 86_400;

/// One history snapshot LV as `lvs` reports it.
#[derive(Debug)]
struct HistLv {
    name: String,
    attr: String,
    tags: String,
}

impl HistLv {
    fn generation(&self) -> u64 {
        self.name.split('-').rev().nth(1).unwrap().parse().unwrap()
    }

    fn active(&self) -> bool {
        self.attr.chars().nth(4) == Some('a')
    }
}

/// The LVs of `vg` named `<lv>-hist-...`, by generation (read with `lvs`, not with the code
/// under test).
fn history_lvs(vg: &Vg, lv: &str) -> Vec<HistLv> {
    let text = lvm(
        "lvs",
        &[
            "--reportformat",
            "json",
            "-o",
            "lv_name,lv_attr,lv_tags",
            &vg.name,
        ],
    );
    let v: Value = serde_json::from_str(&text).unwrap();
    let prefix = format!("{lv}-hist-");
    let mut found: Vec<HistLv> = v["report"][0]["lv"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| HistLv {
            name: row["lv_name"].as_str().unwrap().to_string(),
            attr: row["lv_attr"].as_str().unwrap().to_string(),
            tags: row["lv_tags"].as_str().unwrap_or_default().to_string(),
        })
        .filter(|h| h.name.starts_with(&prefix))
        .collect();
    found.sort_by_key(HistLv::generation);
    found
}

fn generations(lvs: &[HistLv]) -> Vec<u64> {
    lvs.iter().map(HistLv::generation).collect()
}

/// The generations `blkmirror history list TARGET` prints, checking each line's LV path.
fn listed(target: &Path, vg: &Vg, lv: &str) -> Vec<u64> {
    let out = run(&["history", "list", s(target)]);
    out.assert_success();
    out.stdout
        .iter()
        .map(|line| {
            let words: Vec<&str> = line.split_whitespace().collect();
            assert_eq!(words.len(), 3, "{line:?}");
            let generation: u64 = words[0].parse().unwrap();
            let prefix = format!("/dev/{}/{lv}-hist-{generation}-", vg.name);
            assert!(words[2].starts_with(&prefix), "{line:?}");
            generation
        })
        .collect()
}

/// A stand-in for `ssh HOST -- blkmirror receive --stdio ...`: ignores its arguments and runs
/// the receiver of `target` with `--keep`, as a forced command in authorized_keys would.
fn fake_ssh(t: &Scratch, target: &Path, state: &Path, keep: &str) -> PathBuf {
    let script = t.path("fake-ssh");
    fs::write(
        &script,
        format!(
            "#!/bin/sh\nexec '{}' receive --stdio --keep '{keep}' --state-dir '{}' '{}'\n",
            bin(),
            s(state),
            s(target)
        ),
    )
    .unwrap();
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
    script
}

#[test]
#[ignore = "runs in the QEMU guest (see lvm_acceptance_in_guest)"]
fn thin_lv_target_keeps_history_prunes_by_the_grid_and_restores() {
    let vg = Vg::new("thin-history");
    let t = Scratch::new("thin-history");
    let lv = "hist-target";
    let target = vg.thin(lv, 8);
    let src = t.path("source.img");
    write_random_file(&src, 8 * MIB, 901);
    let rstate = t.dir("rstate");
    let ssh = fake_ssh(&t, &target, &rstate, "1h:10m,1d:hourly");
    let url = format!("ssh://guest{}", s(&target));
    let extra = ["--ssh-command", s(&ssh)];

    // Three committed generations: after each, one more tagged, inactive thin snapshot.
    let mut contents = Vec::new();
    let mut rng = Rng::new(902);
    for generation in 1..=3u64 {
        if generation > 1 {
            random_writes(&src, &mut rng, 8, 64, 200 * KIB);
        }
        contents.push(read_all(&src));
        let c = send_once(s(&src), &url, &t.dir("sstate"), &extra);
        assert_eq!(c.generation, generation);
        wait_for(RUN_TIMEOUT, "the commit's history snapshot", || {
            (history_lvs(&vg, lv).len() as u64 == generation).then_some(())
        });
        let snaps = history_lvs(&vg, lv);
        assert_eq!(generations(&snaps), (1..=generation).collect::<Vec<_>>());
        let newest = snaps.last().unwrap();
        assert!(newest.tags.split(',').any(|t| t == TAG), "{newest:?}");
        assert!(newest.attr.starts_with('V'), "a thin snapshot: {newest:?}");
        assert!(!newest.active(), "left inactive: {newest:?}");
        assert_content(&target, contents.last().unwrap(), "the target");
    }
    assert_eq!(listed(&target, &vg, lv), [1, 2, 3]);
    eprintln!("[lvm_guest]   3 commits, 3 history snapshots");

    // Restore: generation 2's bytes in a new file while the target holds generation 3; the
    // snapshot is inactive again afterwards.
    let restored = t.path("restored-2.img");
    let out = run(&["history", "restore", s(&target), "2", s(&restored)]);
    out.assert_success();
    assert_content(&restored, &contents[1], "generation 2 restored");
    assert_content(&target, &contents[2], "the target, still at generation 3");
    assert!(
        history_lvs(&vg, lv).iter().all(|h| !h.active()),
        "a snapshot was left active: {:?}",
        history_lvs(&vg, lv)
    );
    // Never over an existing file, never a generation that is not there.
    let before = read_all(&restored);
    run(&["history", "restore", s(&target), "1", s(&restored)]).assert_error(2, &["exists"]);
    assert_eq!(read_all(&restored), before);
    let missing = t.path("restored-9.img");
    run(&["history", "restore", s(&target), "9", s(&missing)])
        .assert_error(2, &["no history snapshot of generation 9", "1, 2, 3"]);
    assert!(!missing.exists());

    // --history-dir makes no sense for a thin LV: refused in one line, nothing made.
    let hdir = t.path("hdir");
    let out = run(&[
        "receive",
        "--stdio",
        "--keep",
        "1h:10m",
        "--history-dir",
        s(&hdir),
        s(&target),
    ]);
    note_error(&out.assert_error(1, &["--history-dir", "thin LV"]));
    run(&["history", "list", s(&target), "--history-dir", s(&hdir)])
        .assert_error(2, &["--history-dir"]);
    assert!(!hdir.exists());

    // 30 simulated hours: a snapshot every 2 hours (taken as the receiver takes them, at an
    // injected time), each followed by `history prune --now` with the grid below; after each
    // step exactly what the grid keeps remains. The receiver's three snapshots (days older)
    // go at the first step.
    let spec = "2h:hourly,12h:4h,1d:12h";
    let policy = Policy::parse(spec).unwrap();
    let store = Store::for_target(&target, None).unwrap();
    assert_eq!(
        store,
        Store::Thin {
            vg: vg.name.clone(),
            lv: lv.to_string()
        }
    );
    let t0 = (blkmirror::state::now() / DAY + 2) * DAY;
    let mut model: Vec<Snapshot> = history_lvs(&vg, lv)
        .iter()
        .map(|h| Snapshot {
            generation: h.generation(),
            created: h.name.rsplit('-').next().unwrap().parse().unwrap(),
        })
        .collect();
    for k in 0..=15u64 {
        let (generation, now) = (4 + k, t0 + 2 * HOUR * k);
        store.take(&target, generation, now).unwrap();
        model.push(Snapshot {
            generation,
            created: now,
        });
        let out = run(&[
            "history",
            "prune",
            s(&target),
            "--keep",
            spec,
            "--now",
            &now.to_string(),
        ]);
        out.assert_success();
        model = history::plan(&policy, &model, now).keep;
        let kept: Vec<u64> = model.iter().map(|m| m.generation).collect();
        assert_eq!(
            generations(&history_lvs(&vg, lv)),
            kept,
            "after hour {}",
            2 * k
        );
    }
    // By hand, at T0 + 30h: 10 (12h, the oldest of 12:00-24:00 within the day), 14 (20h,
    // oldest of 20-24h within 12h), 16 (24h, oldest of 24-28h and of 24:00-36:00), 18 (28h,
    // oldest of 28-32h and of its hour within 2h), 19 (30h, the newest).
    assert_eq!(listed(&target, &vg, lv), [10, 14, 16, 18, 19]);
    // Pruning again at the same time removes nothing.
    let now = (t0 + 30 * HOUR).to_string();
    let out = run(&[
        "history",
        "prune",
        s(&target),
        "--keep",
        spec,
        "--now",
        &now,
    ]);
    out.assert_success();
    assert!(out.stdout.is_empty(), "{out:?}");
    assert_eq!(generations(&history_lvs(&vg, lv)), [10, 14, 16, 18, 19]);
    // The origin and its pool are untouched by all this.
    assert_content(&target, &contents[2], "the target after pruning");
}

#[test]
#[ignore = "runs in the QEMU guest (see lvm_acceptance_in_guest)"]
fn classic_lv_target_with_keep_is_refused() {
    let vg = Vg::new("classic-history");
    let target = vg.linear("hist-classic", 4);
    let before = read_all(&target);
    let lvs_before = vg.lvs();
    let out = run(&["receive", "--stdio", "--keep", "1h:10m", s(&target)]);
    let line = out.assert_error(1, &["not a thin LV", "copy-on-write", "thin LV"]);
    note_error(&line);
    assert!(
        line.contains(&format!("{}/hist-classic", vg.name)),
        "{line}"
    );
    let out = run(&["history", "list", s(&target)]);
    out.assert_error(2, &["not a thin LV"]);
    assert_eq!(read_all(&target), before, "the target was written");
    assert_eq!(vg.lvs(), lvs_before, "an LV was made or removed");
}
