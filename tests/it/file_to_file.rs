//! File to file mirroring through a local DEST (receiver in-process): many cycles with random
//! writes, zero runs and a growing source; sparse creation; overwriting a dirty target;
//! `--until-quiet`; the endless loop; `--block-size`; `verify`.
//!
//! The source is quiescent between cycles, so after each cycle the target must equal it.

use std::fs::OpenOptions;

use crate::support::*;

/// Asserts the invariants of cycle `next` following `prev`, given the exact set of blocks whose
/// content changed (`None` when the count is not well defined, e.g. a zero-extended tail).
#[track_caller]
fn check_cycle(prev: &Cycle, next: &Cycle, source_len: u64, changed: Option<usize>) {
    assert_eq!(
        next.generation,
        prev.generation + 1,
        "generation must increment: {:?}",
        next.raw
    );
    assert_eq!(
        next.blocks_scanned,
        block_count(source_len, BLOCK),
        "every block is scanned each cycle: {:?}",
        next.raw
    );
    match changed {
        Some(0) => {
            assert_eq!(next.blocks_changed, 0, "nothing changed: {:?}", next.raw);
            assert_eq!(next.root, prev.root, "unchanged source, unchanged root");
        }
        Some(n) => {
            assert_eq!(
                next.blocks_changed, n as u64,
                "changed blocks: {:?}",
                next.raw
            );
            assert_ne!(next.root, prev.root, "changed source, same root");
        }
        None => assert_ne!(next.root, prev.root, "changed source, same root"),
    }
}

#[test]
fn many_cycles_with_random_writes_zero_runs_and_growth() {
    let t = Scratch::new("f2f-cycles");
    let src = t.path("source.img");
    let tgt = t.path("target.img");
    let state = t.dir("state");
    let (ss, ts) = (s(&src), s(&tgt));
    let extra = ["--threads", "2", "--compress-level", "3"];
    let mut rng = Rng::new(0xF2F);
    let mut len = 24 * MIB;
    write_random_file(&src, len, 1);

    // Cycle 1: initial sync into a missing file, which gets created.
    assert!(!tgt.exists());
    let first = send_once(ss, ts, &state, &extra);
    assert_eq!(
        first.generation, 1,
        "generations start at 1: {:?}",
        first.raw
    );
    assert_eq!(first.blocks_scanned, block_count(len, BLOCK));
    assert!(
        first.blocks_changed > 0,
        "initial sync changed nothing: {:?}",
        first.raw
    );
    assert!(
        first.bytes_read >= len,
        "initial sync read less than the source: {:?}",
        first.raw
    );
    assert_identical(&src, &tgt);
    let mut prev = first;
    let mut before = read_all(&src);

    // Each step mutates the source (or not), runs one cycle and checks it.
    #[derive(Debug)]
    enum Step {
        Nothing,
        Writes(usize),
        ZeroRuns,
        Append(u64),
        ZeroExtend(u64),
    }
    let steps = [
        Step::Nothing,
        Step::Writes(5),
        Step::Writes(30),
        Step::ZeroRuns,
        Step::Writes(1),
        Step::Append(MIB + 12_345),
        Step::Writes(12),
        Step::ZeroExtend(3 * MIB + 100),
        Step::Writes(8),
        Step::Nothing,
    ];
    for step in steps {
        let mut exact = true;
        let mut zeroed_blocks = 0;
        match step {
            Step::Nothing => {}
            Step::Writes(n) => {
                random_writes(&src, &mut rng, n, 64, 200 * KIB);
            }
            Step::ZeroRuns => {
                // A block-aligned run of 32 blocks over data, plus an unaligned run.
                let aligned = Range {
                    offset: 96 * BLOCK,
                    len: 32 * BLOCK,
                };
                zeroed_blocks = (96..128)
                    .filter(|&b| {
                        before[(b * BLOCK) as usize..((b + 1) * BLOCK) as usize]
                            .iter()
                            .any(|&x| x != 0)
                    })
                    .count() as u64;
                assert!(zeroed_blocks >= 16, "test data: range should hold data");
                zero_range(&src, aligned);
                zero_range(
                    &src,
                    Range {
                        offset: 200 * BLOCK + 1000,
                        len: 100_000,
                    },
                );
            }
            Step::Append(n) => {
                append_random(&src, &mut rng, n);
                random_writes(&src, &mut rng, 3, 64, 100 * KIB);
            }
            Step::ZeroExtend(n) => {
                let f = OpenOptions::new().write(true).open(&src).unwrap();
                f.set_len(len + n).unwrap();
                f.sync_all().unwrap();
                // Whether the old partial last block counts as changed is not defined.
                exact = false;
            }
        }
        len = size_of(&src);
        let after = read_all(&src);
        let changed = changed_blocks(&before, &after, BLOCK).len();
        let next = send_once(ss, ts, &state, &extra);
        let context = format!("after step {step:?}: {:?}", next.raw);
        if let Step::ZeroRuns = step {
            assert!(
                next.blocks_zero >= zeroed_blocks,
                "{zeroed_blocks} blocks became zero, blocks_zero too small {context}"
            );
            assert!(
                next.blocks_changed <= changed as u64
                    && next.blocks_changed + next.blocks_zero >= changed as u64,
                "{changed} blocks changed {context}"
            );
            assert!(
                next.bytes_sent < MIB,
                "2 MiB of zero blocks must not be shipped as data {context}"
            );
            check_cycle(&prev, &next, len, None);
        } else {
            check_cycle(&prev, &next, len, exact.then_some(changed));
        }
        assert_identical(&src, &tgt);
        prev = next;
        before = after;
    }
    assert_eq!(prev.generation, 11);

    // verify: identical -> 0; one flipped byte -> 1, naming where.
    run(&["verify", ss, ts]).assert_success();
    let offset = 5_000_003u64;
    corrupt_byte(&tgt, offset);
    let out = run(&["verify", ss, ts]);
    out.assert_code(1);
    assert_names_offset(&out, offset, BLOCK);
    corrupt_byte(&tgt, offset);
    run(&["verify", ss, ts]).assert_success();
}

#[test]
fn initial_sync_of_mostly_zero_source_keeps_target_sparse() {
    let t = Scratch::new("f2f-sparse");
    let src = t.path("source.img");
    let tgt = t.path("target.img");
    let state = t.dir("state");
    let len = 64 * MIB;
    // Zeros written explicitly (not holes) with 8 random extents of 64 KiB.
    let mut data = vec![0u8; len as usize];
    let mut rng = Rng::new(7);
    for i in 0..8u64 {
        let off = (i * 8 * MIB + rng.below(100) * BLOCK) as usize;
        rng.fill(&mut data[off..off + BLOCK as usize]);
    }
    std::fs::write(&src, &data).unwrap();

    let c = send_once(s(&src), s(&tgt), &state, &[]);
    assert_eq!(c.generation, 1);
    assert!(
        c.bytes_sent < 8 * MIB,
        "zero blocks shipped as data: {:?}",
        c.raw
    );
    assert_identical(&src, &tgt);
    let allocated = allocated(&tgt);
    assert!(
        allocated < 8 * MIB,
        "target of a 64 MiB source holding 512 KiB of data is not sparse: {allocated} bytes allocated"
    );
}

/// `bytes_read` counts what was read: the holes of a sparse source are known zeros, not read
/// (`bytes_scanned` is the logical size the scan covered).
#[test]
fn holes_of_a_sparse_source_are_not_read() {
    let t = Scratch::new("f2f-holes");
    let src = t.path("source.img");
    let tgt = t.path("target.img");
    let state = t.dir("state");
    let len = 64 * MIB;
    let file = std::fs::File::create(&src).unwrap();
    file.set_len(len).unwrap();
    let mut rng = Rng::new(11);
    for i in 0..4u64 {
        let mut block = vec![0u8; MIB as usize];
        rng.fill(&mut block);
        std::os::unix::fs::FileExt::write_all_at(&file, &block, i * 16 * MIB).unwrap();
    }
    file.sync_all().unwrap();
    drop(file);
    assert!(
        allocated(&src) <= 8 * MIB,
        "the scratch file system must keep files sparse"
    );

    let c = send_once(s(&src), s(&tgt), &state, &[]);
    assert_eq!(c.raw["bytes_scanned"], len, "{:?}", c.raw);
    assert!(
        (4 * MIB..=5 * MIB).contains(&c.bytes_read),
        "4 MiB of data in a 64 MiB sparse file, yet {} bytes read: {:?}",
        c.bytes_read,
        c.raw
    );
    assert_identical(&src, &tgt);
}

#[test]
fn existing_dirty_target_of_same_size_is_fully_overwritten() {
    // The target already holds unrelated data: every block, including the source's zero
    // runs, must be written (a receiver must not assume a zeroed target).
    let t = Scratch::new("f2f-dirty");
    let src = t.path("source.img");
    let tgt = t.path("target.img");
    let state = t.dir("state");
    let zeros = write_random_file(&src, 16 * MIB, 21);
    assert!(!zeros.is_empty());
    std::fs::write(&tgt, Rng::new(22).bytes((16 * MIB) as usize)).unwrap();

    let c = send_once(s(&src), s(&tgt), &state, &[]);
    assert_eq!(c.generation, 1);
    assert_identical(&src, &tgt);
    let c2 = send_once(s(&src), s(&tgt), &state, &[]);
    assert_eq!((c2.generation, c2.blocks_changed), (2, 0), "{:?}", c2.raw);
    assert_identical(&src, &tgt);
}

#[test]
fn until_quiet_stops_after_a_cycle_without_change() {
    let t = Scratch::new("f2f-quiet");
    let src = t.path("source.img");
    let tgt = t.path("target.img");
    let state = t.dir("state");
    write_random_file(&src, 8 * MIB, 31);
    let mut args = send_args(s(&src), s(&tgt), &state);
    args.extend(["--until-quiet", "--interval", "100ms"].map(String::from));

    // Quiescent source: one cycle with changes, one without, then exit 0.
    let out = run(&args);
    out.assert_success();
    let cycles: Vec<Cycle> = out.json_lines().iter().map(Cycle::from_json).collect();
    assert_eq!(
        cycles.len(),
        2,
        "expected a changing then a quiet cycle\n{out:?}"
    );
    assert_eq!((cycles[0].generation, cycles[1].generation), (1, 2));
    assert!(cycles[0].blocks_changed > 0);
    assert_eq!(cycles[1].blocks_changed, 0);
    assert_identical(&src, &tgt);

    // Again after a change: generations go on from the state dir.
    random_writes(&src, &mut Rng::new(32), 4, 100, 50 * KIB);
    let out = run(&args);
    out.assert_success();
    let cycles: Vec<Cycle> = out.json_lines().iter().map(Cycle::from_json).collect();
    assert_eq!(cycles.len(), 2, "{out:?}");
    assert_eq!((cycles[0].generation, cycles[1].generation), (3, 4));
    assert!(cycles[0].blocks_changed > 0);
    assert_eq!(cycles[1].blocks_changed, 0);
    assert_identical(&src, &tgt);
}

#[test]
fn without_once_the_sender_keeps_cycling_and_picks_up_changes() {
    let t = Scratch::new("f2f-loop");
    let src = t.path("source.img");
    let tgt = t.path("target.img");
    let state = t.dir("state");
    write_random_file(&src, 8 * MIB, 41);
    let mut args = send_args(s(&src), s(&tgt), &state);
    args.extend(["--interval", "200ms", "--snapshot", "none"].map(String::from));
    let mut sender = Proc::blkmirror("sender", &args);

    // The loop runs: wait for generation 2.
    let gen = |l: &str| {
        serde_json::from_str::<serde_json::Value>(l)
            .ok()
            .map(|v| Cycle::from_json(&v))
    };
    sender.wait_line(
        Stream::Stdout,
        RUN_TIMEOUT,
        "cycle report of generation 2",
        |l| gen(l).is_some_and(|c| c.generation == 2),
    );
    assert_identical(&src, &tgt);

    // Change the source while it runs; the loop must bring the target along.
    random_writes(&src, &mut Rng::new(42), 10, 100, 100 * KIB);
    wait_for(
        RUN_TIMEOUT,
        "target to converge to the changed source",
        || {
            assert!(
                sender.try_wait().is_none(),
                "sender exited\n{}",
                sender.describe()
            );
            first_difference(&src, &tgt).is_none().then_some(())
        },
    );
    sender.wait_line(
        Stream::Stdout,
        RUN_TIMEOUT,
        "a cycle that found changes",
        |l| gen(l).is_some_and(|c| c.generation > 2 && c.blocks_changed > 0),
    );
    sender.kill9();
    let cycles: Vec<Cycle> = sender
        .stdout_lines()
        .iter()
        .filter(|l| !l.trim().is_empty())
        .map(|l| gen(l).unwrap_or_else(|| panic!("not a cycle report: {l:?}")))
        .collect();
    for (i, c) in cycles.iter().enumerate() {
        assert_eq!(c.generation, i as u64 + 1, "generations are consecutive");
    }
    assert_identical(&src, &tgt);
}

#[test]
fn block_size_option_sets_the_granularity() {
    let t = Scratch::new("f2f-bs");
    let src = t.path("source.img");
    let len = 3 * MIB + 5000;
    write_random_file(&src, len, 51);

    for (flag, size) in [("4K", 4 * KIB), ("1M", MIB), ("64K", 64 * KIB)] {
        let tgt = t.path(&format!("target-{flag}.img"));
        let state = t.dir(&format!("state-{flag}"));
        let c = send_once(s(&src), s(&tgt), &state, &["--block-size", flag]);
        assert_eq!(
            c.blocks_scanned,
            block_count(len, size),
            "--block-size {flag}: {:?}",
            c.raw
        );
        assert_identical(&src, &tgt);
        // One byte in one block: exactly one block changes at any block size.
        corrupt_byte(&src, MIB + 7);
        let c = send_once(s(&src), s(&tgt), &state, &["--block-size", flag]);
        assert_eq!(c.blocks_changed, 1, "--block-size {flag}: {:?}", c.raw);
        assert_identical(&src, &tgt);
    }
}

/// `send --dry-run` says what a cycle would send (exactly the changed blocks, compared with
/// the committed manifest) and writes nothing: the target, the status and the next real
/// cycle are as if it had not run.
#[test]
fn dry_run_counts_what_would_be_sent_and_writes_nothing() {
    let t = Scratch::new("dry-run");
    let src = t.path("source.img");
    write_random_file(&src, 4 * MIB, 1901);
    let tgt = t.path("target.img");
    let state = t.dir("state");
    send_once(s(&src), s(&tgt), &state, &[]);
    let before = read_all(&src);
    random_writes(&src, &mut Rng::new(1902), 5, 4 * KIB, 100 * KIB);
    let changed = changed_blocks(&before, &read_all(&src), BLOCK).len() as u64;
    let target_then = read_all(&tgt);
    // Status without the lag, which grows by itself.
    let records = || {
        let mut all = status(&state);
        for entry in &mut all {
            entry.as_object_mut().unwrap().remove("lag_seconds");
        }
        all
    };
    let status_then = records();
    let mut args = send_args(s(&src), s(&tgt), &state);
    args.push("--dry-run".into());
    let out = run(&args);
    out.assert_success();
    let lines = out.json_lines();
    assert_eq!(lines.len(), 1, "{out:?}");
    assert_eq!(lines[0]["dry_run"], true);
    assert_eq!(lines[0]["dest"], s(&tgt));
    assert_eq!(lines[0]["base_generation"], 1);
    assert_eq!(lines[0]["blocks_changed"], changed, "{out:?}");
    assert_eq!(read_all(&tgt), target_then, "a dry run wrote the target");
    assert_eq!(records(), status_then, "a dry run changed the state");
    let real = send_once(s(&src), s(&tgt), &state, &[]);
    assert_eq!(real.generation, 2);
    assert_eq!(real.blocks_changed, changed);
}
