//! One receiver, many targets: `receive --listen --targets FILE` serves three targets on one
//! port, each writable only by the senders its table allows; a sender names its target with
//! `tls://HOST:PORT/NAME`. A sender allowed on one target is refused on another before
//! anything is written there, and so is one that names no target, or names one to a receiver
//! of a single target.

use crate::support::*;

struct Many {
    t: Scratch,
    ids: Vec<(std::path::PathBuf, String)>,
    receiver_fp: String,
    receiver: Receiver,
}

/// Three identities a, b, c; targets a.img, b.img, c.img, each allowed to its own sender.
fn many(name: &str) -> Many {
    let t = Scratch::new(name);
    let receiver_dir = t.dir("id-receiver");
    let receiver_fp = keygen(&receiver_dir);
    let mut ids = Vec::new();
    let mut file = String::new();
    for name in ["a", "b", "c"] {
        let dir = t.dir(&format!("id-{name}"));
        let fp = keygen(&dir);
        file.push_str(&format!(
            "[{name}]\npath = \"{}\"\nallow = [\"{fp}\"]\ncreate = true\n\n",
            t.path(&format!("{name}.img")).display()
        ));
        ids.push((dir, fp));
    }
    let targets = t.path("targets.toml");
    std::fs::write(&targets, file).unwrap();
    let extra = vec!["--identity".into(), s(&receiver_dir).into()];
    let receiver = Receiver::start_targets(&targets, &t.dir("state-receiver"), &extra);
    Many {
        t,
        ids,
        receiver_fp,
        receiver,
    }
}

impl Many {
    /// `send SRC tls://ADDR/NAME --once` as sender `who` (0, 1, 2).
    fn send(&self, who: usize, src: &std::path::Path, name: &str) -> Output {
        let url = format!("{}/{name}", self.receiver.url());
        let state = self.t.dir(&format!("state-sender-{who}"));
        let mut args = send_args(s(src), &url, &state);
        args.extend(["--once".into(), "--identity".into()]);
        args.push(s(&self.ids[who].0).into());
        args.extend(["--peer".into(), self.receiver_fp.clone()]);
        run(&args)
    }
}

#[test]
fn three_senders_three_targets_one_port() {
    let m = many("many-targets");
    let mut rng = Rng::new(701);
    let sources: Vec<_> = ["a", "b", "c"]
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let src = m.t.path(&format!("source-{name}.img"));
            write_random_file(&src, (4 + i as u64) * MIB, 702 + i as u64);
            src
        })
        .collect();
    for cycle in 0..2 {
        for (who, name) in ["a", "b", "c"].iter().enumerate() {
            if cycle > 0 {
                random_writes(&sources[who], &mut rng, 5, 64, 100 * KIB);
            }
            m.send(who, &sources[who], name).assert_success();
            assert_identical(&sources[who], &m.t.path(&format!("{name}.img")));
        }
    }
    let entries = status_entries(&m.t.path("state-receiver"), "receiver");
    assert_eq!(entries.len(), 3, "{entries:?}");
    for entry in entries {
        assert_receiver_consistent(&entry, 2);
    }
}

#[test]
fn a_sender_allowed_on_one_target_is_refused_on_another_before_any_write() {
    let m = many("many-targets-refused");
    let src_a = m.t.path("source-a.img");
    write_random_file(&src_a, 4 * MIB, 711);
    let src_b = m.t.path("source-b.img");
    write_random_file(&src_b, 4 * MIB, 712);
    m.send(1, &src_b, "b").assert_success();
    let target_b = m.t.path("b.img");
    let before = read_all(&target_b);
    let state_before = status_entry(&m.t.path("state-receiver"), "receiver");

    // a's sender names b: refused, b untouched (content and state).
    let out = m.send(0, &src_a, "b");
    let line = out.assert_error(1, &["no target named \"b\" that peer", &m.ids[0].1]);
    assert!(line.contains("peer refused"), "{line}");
    assert_content(&target_b, &before, "target b after a refused sender");
    assert_eq!(
        status_entry(&m.t.path("state-receiver"), "receiver"),
        state_before
    );
    // A name that does not exist gets the same answer.
    m.send(0, &src_a, "zz")
        .assert_error(1, &["no target named \"zz\""]);
    assert!(!m.t.path("zz.img").exists());
}

#[test]
fn a_sender_must_name_its_target_and_only_to_a_receiver_of_several() {
    let m = many("many-targets-unnamed");
    let src = m.t.path("source.img");
    write_random_file(&src, MIB, 721);
    // No name: refused, told which names it may write.
    let state = m.t.dir("state-unnamed");
    let mut args = send_args(s(&src), &m.receiver.url(), &state);
    args.extend(["--once".into(), "--identity".into(), s(&m.ids[2].0).into()]);
    args.extend(["--peer".into(), m.receiver_fp.clone()]);
    run(&args).assert_error(1, &["serves several targets", "you may write: c"]);
    for name in ["a", "b", "c"] {
        assert!(!m.t.path(&format!("{name}.img")).exists(), "{name} created");
    }

    // A receiver of one target, and a sender naming one: refused clearly.
    let t = Scratch::new("one-target-named");
    let ids = TlsPair::new(&t);
    let mut rargs = ids.receiver_args();
    rargs.push("--create".into());
    let one = Receiver::start(&t.path("target.img"), &t.dir("rstate"), &rargs);
    let mut args = send_args(s(&src), &format!("{}/web", one.url()), &t.dir("sstate"));
    args.push("--once".into());
    args.extend(ids.sender_args());
    run(&args).assert_error(1, &["serves one unnamed target", "drop /web from DEST"]);
    assert!(!t.path("target.img").exists());
}
