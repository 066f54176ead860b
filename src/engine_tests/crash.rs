//! Crash consistency: over several random cycles (writes, zeroed spans, size changes), power is
//! cut at every sync point of the receiver in turn (target fsync, state and manifest saves).
//! After each "reboot" what survives must not lie: a state saying "consistent" at generation
//! N has a target whose root is N's committed root (and a root the sender really had); a state
//! saying "interrupted" has a manifest whose every known block matches the target. Then the
//! next cycle converges. Zero silent mismatches.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use crate::blockdiff::manifest::{block_len, hash_block, BlockHash, UNKNOWN_HASH};
use crate::state::{Condition, ReceiverStore};
use crate::state::{CrashStore, StoreImage};
use crate::target::{BlockTarget, CrashTarget, Power};
use crate::tracker::FullScan;

use super::{manifest_of, Rig, Rng};

const BLOCK: u32 = 16384;
const SIZE: usize = 384 * 1024;
const CYCLES: usize = 4;

/// One trial: cycles until the power goes out at `cut` (or all of them), a reboot, the checks,
/// and a recovery cycle. Returns the sync points the trial reached before the reboot.
fn trial(seed: u64, cut: Option<u64>) -> u64 {
    let rig = Rig::new(BLOCK);
    let mut rng = Rng(seed);
    let mut source: Vec<u8> = (0..SIZE).map(|_| rng.next() as u8).collect();
    // Larger than any first cycle's source (a change grows it by less than 40,000 bytes): an
    // unknown target smaller than the source is refused, by design, before any commit.
    let junk: Vec<u8> = (0..SIZE + 65536).map(|_| rng.next() as u8).collect();
    let image = Arc::new(Mutex::new(StoreImage::default()));
    let mut roots: HashSet<BlockHash> = HashSet::new();
    let power = Power::new(cut);
    let target = Arc::new(CrashTarget::new(power.clone(), junk));
    for _ in 0..CYCLES {
        change(&mut source, &mut rng);
        std::fs::write(&rig.source, &source).unwrap();
        roots.insert(manifest_of(&source, BLOCK).root());
        let store = Box::new(CrashStore::new(power.clone(), image.clone()));
        let (sent, received) = rig.cycle(target.clone(), store, Arc::new(FullScan));
        if power.is_lost() {
            assert!(
                sent.is_err(),
                "a cycle whose receiver lost power cannot commit"
            );
            break;
        }
        if let Err(e) = sent {
            panic!("seed {seed:#x}: cycle failed with the power on: {e}; receiver: {received:?}");
        }
        received.unwrap();
    }
    let points = power.points();
    let durable = target.durable_image();
    let survived = image.lock().unwrap().clone();
    check_what_survived(&durable, &survived, &roots, cut);

    // Reboot: the next cycle converges.
    let power = Power::new(None);
    let target = Arc::new(CrashTarget::new(power.clone(), durable));
    let store = Box::new(CrashStore::new(power, image.clone()));
    let (sent, received) = rig.cycle(target.clone(), store, Arc::new(FullScan));
    sent.unwrap_or_else(|e| panic!("recovery cycle after a cut at {cut:?}: {e}"));
    received.unwrap();
    assert!(
        target.durable_image() == source,
        "recovery did not converge"
    );
    points
}

/// Rewrites spans of the source, and sometimes changes its size.
fn change(source: &mut Vec<u8>, rng: &mut Rng) {
    rng.mutate(source);
    match rng.below(5) {
        0 => source.truncate(source.len() - rng.below(40_000) as usize),
        1 => source.extend((0..rng.below(40_000)).map(|_| rng.next() as u8)),
        _ => {}
    }
}

/// What a rebooted receiver would believe must be true of the target it finds.
fn check_what_survived(
    durable: &[u8],
    image: &StoreImage,
    roots: &HashSet<BlockHash>,
    cut: Option<u64>,
) {
    let store = CrashStore::new(Power::new(None), Arc::new(Mutex::new(image.clone())));
    let Some(state) = store.load_state().unwrap() else {
        return;
    };
    match state.condition {
        Condition::Consistent if state.committed_generation > 0 => {
            let held = &durable[..(state.device_size as usize).min(durable.len())];
            assert_eq!(held.len() as u64, state.device_size, "cut at {cut:?}");
            let root = manifest_of(held, state.block_size).root();
            assert_eq!(
                hex::encode(root),
                state.committed_root,
                "cut at {cut:?}: 'consistent' over a target that differs"
            );
            assert!(
                roots.contains(&root),
                "cut at {cut:?}: a root no source had"
            );
            let manifest = store
                .load_manifest()
                .unwrap()
                .expect("a committed manifest");
            assert_eq!(manifest.root(), root, "cut at {cut:?}: manifest lies");
        }
        Condition::Interrupted => {
            let manifest = store
                .load_manifest()
                .unwrap()
                .expect("an interrupted manifest");
            for index in 0..manifest.block_count() {
                let hash = manifest.hash(index).expect("in range");
                if *hash == UNKNOWN_HASH {
                    continue;
                }
                let len = block_len(manifest.device_size, manifest.block_size, index);
                let start = (index * manifest.block_size as u64) as usize;
                // Bytes past a shorter durable image read as zeros once the file is regrown.
                let mut block = vec![0u8; len];
                let have = durable.len().saturating_sub(start).min(len);
                block[..have].copy_from_slice(&durable[start..start + have]);
                assert_eq!(
                    &hash_block(&block),
                    hash,
                    "cut at {cut:?}: 'interrupted' manifest claims block {index} wrongly"
                );
            }
        }
        _ => {}
    }
}

/// Seeds the power-cut sweep runs: three by default; `BLKMIRROR_CRASH_SEEDS=N` runs N (the
/// fault campaign, `bench/faults/`, runs many more than CI does).
fn seeds() -> impl Iterator<Item = u64> {
    let count = std::env::var("BLKMIRROR_CRASH_SEEDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(3u64);
    (1..=count).map(|n| 0x5eed_0000 + n)
}

#[test]
fn power_cut_at_every_sync_point_never_leaves_a_lying_state() {
    let mut trials = 0;
    for seed in seeds() {
        let points = trial(seed, None);
        assert!(points >= 4 * CYCLES as u64, "{points} sync points");
        for cut in 0..points {
            trial(seed, Some(cut));
            trials += 1;
        }
    }
    assert!(trials >= 48, "{trials} trials");
    eprintln!("power cut at {trials} sync points: no lying state, every recovery converged");
}

/// A stop while the target's fsync hangs: the receiver does not wait for it, records what
/// it wrote as in doubt, and says "interrupted". Then the power goes out before the fsync
/// could finish: what the receiver recorded must still be true, and the next cycle converges
/// without re-hashing the whole target.
#[test]
fn a_stop_during_a_hung_fsync_then_a_power_cut_leaves_a_true_state() {
    let rig = Rig::new(BLOCK);
    let mut rng = Rng(0x5eed_00f5);
    let mut source: Vec<u8> = (0..SIZE).map(|_| rng.next() as u8).collect();
    std::fs::write(&rig.source, &source).unwrap();
    let image = Arc::new(Mutex::new(StoreImage::default()));
    let power = Power::new(None);
    let target = Arc::new(CrashTarget::new(power.clone(), vec![0; SIZE]));
    let store = || Box::new(CrashStore::new(power.clone(), image.clone()));
    let (sent, _) = rig.cycle(target.clone(), store(), Arc::new(FullScan));
    assert_eq!(sent.unwrap().generation, 1);

    change(&mut source, &mut rng);
    std::fs::write(&rig.source, &source).unwrap();
    power.stall_syncs(true);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (sent, received) = std::thread::scope(|scope| {
        let flag = stop.clone();
        let watcher = power.clone();
        scope.spawn(move || {
            while !watcher.sync_stalled() {
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
            flag.store(true, std::sync::atomic::Ordering::SeqCst);
        });
        rig.cycle_until(target.clone(), store(), Arc::new(FullScan), stop.clone())
    });
    assert!(
        sent.is_err() && received.is_err(),
        "the stopped cycle did not commit"
    );
    power.cut();
    power.stall_syncs(false);
    let survived = image.lock().unwrap().clone();
    let state = CrashStore::new(Power::new(None), Arc::new(Mutex::new(survived.clone())))
        .load_state()
        .unwrap()
        .unwrap();
    assert_eq!(state.condition, Condition::Interrupted, "{state:?}");
    let durable = target.durable_image();
    check_what_survived(&durable, &survived, &HashSet::new(), None);

    let power = Power::new(None);
    let rebooted = Arc::new(CrashTarget::new(power.clone(), durable));
    let store = Box::new(CrashStore::new(power, image.clone()));
    let (sent, received) = rig.cycle(rebooted.clone(), store, Arc::new(FullScan));
    let report = sent.unwrap();
    received.unwrap();
    assert_eq!(
        report.target_condition, "mid-cycle",
        "no re-hash of the whole target"
    );
    assert!(rebooted.durable_image() == source);
}

#[test]
fn crash_target_in_a_cycle_behaves_like_memory_when_the_power_stays_on() {
    let rig = Rig::new(BLOCK);
    let source: Vec<u8> = (0..SIZE as u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(&rig.source, &source).unwrap();
    let power = Power::new(None);
    let target = Arc::new(CrashTarget::new(power.clone(), vec![7; SIZE]));
    let image = Arc::new(Mutex::new(StoreImage::default()));
    let store = Box::new(CrashStore::new(power, image));
    let (sent, received) = rig.cycle(target.clone(), store, Arc::new(FullScan));
    assert_eq!(sent.unwrap().generation, 1);
    received.unwrap();
    assert!(target.durable_image() == source);
    assert_eq!(target.size(), SIZE as u64);
}
