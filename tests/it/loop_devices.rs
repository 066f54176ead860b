//! Block devices (file-backed loop devices) as source, as target, and both; several cycles,
//! identical after each. Writes to a source device go through the device and are fsynced.

use std::fs::File;

use crate::support::*;

/// A sparse backing file of `len` bytes attached to a loop device.
fn loop_over_new_file(t: &Scratch, name: &str, len: u64) -> LoopDevice {
    let backing = t.path(name);
    File::create(&backing).unwrap().set_len(len).unwrap();
    LoopDevice::attach(&backing)
}

#[test]
fn loop_source_to_loop_target_over_cycles() {
    let t = Scratch::new("loop-loop");
    let len = 16 * MIB;
    let src_file = t.path("source.img");
    write_random_file(&src_file, len, 101);
    let src = LoopDevice::attach(&src_file);
    // The target device starts with unrelated data, so zero runs must be written too.
    let tgt_file = t.path("target.img");
    std::fs::write(&tgt_file, Rng::new(102).bytes(len as usize)).unwrap();
    let tgt = LoopDevice::attach(&tgt_file);
    let state = t.dir("state");
    assert_eq!(size_of(src.path()), len);

    let mut rng = Rng::new(103);
    for generation in 1..=5u64 {
        if generation > 1 {
            random_writes(src.path(), &mut rng, 10, 512, 128 * KIB);
        }
        if generation == 3 {
            zero_range(
                src.path(),
                Range {
                    offset: 2 * MIB,
                    len: 2 * MIB,
                },
            );
        }
        let c = send_once(src.as_str(), tgt.as_str(), &state, &[]);
        assert_eq!(c.generation, generation, "{:?}", c.raw);
        assert_eq!(c.blocks_scanned, block_count(len, BLOCK), "{:?}", c.raw);
        assert!(c.blocks_changed + c.blocks_zero > 0, "{:?}", c.raw);
        assert_identical(src.path(), tgt.path());
    }
    let quiet = send_once(src.as_str(), tgt.as_str(), &state, &[]);
    assert_eq!(
        (quiet.generation, quiet.blocks_changed),
        (6, 0),
        "{:?}",
        quiet.raw
    );
    run(&["verify", src.as_str(), tgt.as_str()]).assert_success();
}

#[test]
fn loop_source_to_new_file() {
    let t = Scratch::new("loop-file");
    let len = 12 * MIB;
    let src_file = t.path("source.img");
    write_random_file(&src_file, len, 111);
    let src = LoopDevice::attach(&src_file);
    let tgt = t.path("target.img");
    let state = t.dir("state");

    let mut rng = Rng::new(112);
    for generation in 1..=3u64 {
        if generation > 1 {
            random_writes(src.path(), &mut rng, 6, 64, 64 * KIB);
        }
        let c = send_once(src.as_str(), s(&tgt), &state, &["--block-size", "4K"]);
        assert_eq!(c.generation, generation);
        assert_eq!(c.blocks_scanned, block_count(len, 4 * KIB), "{:?}", c.raw);
        assert_identical(src.path(), &tgt);
    }
    assert!(std::fs::metadata(&tgt).unwrap().is_file());
}

#[test]
fn file_source_to_loop_target() {
    let t = Scratch::new("file-loop");
    let len = 20 * MIB;
    let src = t.path("source.img");
    write_random_file(&src, len, 121);
    let tgt = loop_over_new_file(&t, "target.img", len);
    let state = t.dir("state");

    let mut rng = Rng::new(122);
    for generation in 1..=4u64 {
        if generation > 1 {
            random_writes(&src, &mut rng, 8, 100, 300 * KIB);
        }
        let c = send_once(s(&src), tgt.as_str(), &state, &["--block-size", "1M"]);
        assert_eq!(c.generation, generation);
        assert_identical(&src, tgt.path());
    }
    run(&["verify", s(&src), tgt.as_str()]).assert_success();
}
