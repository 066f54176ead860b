//! Which snapshots a [`Policy`] keeps: a pure function of the policy, the snapshots (generation
//! and creation time) and `now`, all in Unix seconds. No clock, no file system.
//!
//! # The rule
//!
//! A snapshot's *age* is `now - created` (0 for a snapshot dated in the future). A snapshot is
//! kept when at least one of these holds, and pruned otherwise:
//!
//! 1. **Newest**: it has the highest generation (ties: the latest creation time). The last
//!    committed image is never pruned, however old.
//! 2. **Recent**: its age is less than the policy's finest interval (the first window's).
//!    Nothing younger than one bucket is pruned, so a cycle never deletes the snapshot the
//!    previous cycle just took.
//! 3. **Oldest of its bucket**: for some window `span:interval`, its age is at most `span`, and
//!    among the snapshots whose age is at most `span` and whose creation time falls into the
//!    same bucket, it is the oldest (ties: the lowest generation). Buckets are fixed in time:
//!    bucket `b` of an interval `I` is `[b*I, (b+1)*I)` in Unix seconds, i.e. aligned on the
//!    Unix epoch (daily buckets start at 00:00 UTC, weekly ones on Thursdays 00:00 UTC), not
//!    on `now`.
//!
//! Anything older than the last window is pruned unless it is the newest.
//!
//! # Why it is stable
//!
//! Buckets do not move as `now` does, and the snapshots that count for a window are those in
//! it, whose set only loses its oldest members as time passes. So a snapshot kept as the oldest
//! of its bucket in a window stays the oldest of that bucket for as long as it is itself inside
//! the window, whatever else is pruned meanwhile: it is not dropped for a later one ("churn"),
//! and a bucket keeps the same representative while it lies inside the window. Taking new
//! snapshots does not change this either, as long as the clock does not step back (a snapshot
//! dated before others could become a bucket's oldest). Pruning is idempotent: pruning again
//! at the same `now` keeps everything the first pass kept, because removing the pruned ones
//! changes neither the newest snapshot nor any bucket's oldest member.
//!
//! When a snapshot leaves a window it is judged by the longer windows only, where it
//! survives if it is the oldest of its coarser bucket. With intervals that are multiples of
//! each other (10m, 1h, 1d, 7d) the oldest of a coarse bucket is also the oldest of its fine
//! bucket, so the coarse representative has been kept all along.

use std::collections::btree_map::{BTreeMap, Entry};

use super::policy::Policy;

/// What retention needs to know of one snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Snapshot {
    /// The generation of the target it holds.
    pub generation: u64,
    /// When it was taken, in Unix seconds.
    pub created: u64,
}

/// Why a snapshot is kept (the first reason that applies, in the order of the rule).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// It has the highest generation.
    Newest,
    /// It is younger than the finest interval.
    Recent,
    /// It is the oldest snapshot of bucket `bucket` of window `window` (an index into
    /// [`Policy::windows`]; the shortest such window).
    Oldest {
        /// The window's index in the policy.
        window: usize,
        /// The bucket's number: its start is `bucket * interval` Unix seconds.
        bucket: u64,
    },
}

/// The fate of one snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Keep it, for this reason.
    Keep(Reason),
    /// Delete it.
    Prune,
}

impl Verdict {
    /// True for [`Verdict::Keep`].
    pub fn is_keep(&self) -> bool {
        matches!(self, Verdict::Keep(_))
    }
}

/// The snapshots to keep and those to prune, each in the order given.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Kept snapshots.
    pub keep: Vec<Snapshot>,
    /// Pruned snapshots.
    pub prune: Vec<Snapshot>,
}

/// The verdict on each snapshot, in the order given (duplicates are judged one by one: of two
/// equal snapshots, the first given wins a tie).
pub fn verdicts(policy: &Policy, snapshots: &[Snapshot], now: u64) -> Vec<Verdict> {
    let mut reasons: Vec<Option<Reason>> = vec![None; snapshots.len()];
    let age = |s: &Snapshot| now.saturating_sub(s.created);
    let newest = (0..snapshots.len()).max_by_key(|&i| {
        let s = &snapshots[i];
        // Among equal snapshots, the first given (max_by_key returns the last maximum).
        (s.generation, s.created, std::cmp::Reverse(i))
    });
    if let Some(i) = newest {
        reasons[i] = Some(Reason::Newest);
    }
    for (i, s) in snapshots.iter().enumerate() {
        if reasons[i].is_none() && age(s) < policy.finest_interval() {
            reasons[i] = Some(Reason::Recent);
        }
    }
    for (w, window) in policy.windows().iter().enumerate() {
        // bucket -> index of its oldest snapshot inside the window
        let mut oldest: BTreeMap<u64, usize> = BTreeMap::new();
        for (i, s) in snapshots.iter().enumerate() {
            if age(s) > window.span {
                continue;
            }
            match oldest.entry(s.created / window.interval) {
                Entry::Vacant(slot) => {
                    slot.insert(i);
                }
                Entry::Occupied(mut slot) => {
                    let best = &snapshots[*slot.get()];
                    if (s.created, s.generation) < (best.created, best.generation) {
                        slot.insert(i);
                    }
                }
            }
        }
        for (bucket, i) in oldest {
            reasons[i].get_or_insert(Reason::Oldest { window: w, bucket });
        }
    }
    reasons
        .into_iter()
        .map(|r| r.map_or(Verdict::Prune, Verdict::Keep))
        .collect()
}

/// Splits `snapshots` into those the policy keeps and those it prunes at `now`.
pub fn plan(policy: &Policy, snapshots: &[Snapshot], now: u64) -> Plan {
    let mut plan = Plan::default();
    for (s, verdict) in snapshots.iter().zip(verdicts(policy, snapshots, now)) {
        if verdict.is_keep() {
            plan.keep.push(*s);
        } else {
            plan.prune.push(*s);
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const M: u64 = 60;
    const H: u64 = 3_600;
    const D: u64 = 86_400;
    /// 2026-01-01 00:00:00 UTC, a Thursday: a multiple of 10 minutes, an hour, a day and a
    /// week since the epoch, so every bucket of the example policy starts on it.
    const T0: u64 = 1_767_225_600;

    fn example() -> Policy {
        Policy::parse("1h:10m,24h:hourly,7d:daily,4w:weekly").unwrap()
    }

    fn snap(generation: u64, created: u64) -> Snapshot {
        Snapshot {
            generation,
            created,
        }
    }

    fn gens(snapshots: &[Snapshot]) -> Vec<u64> {
        let mut g: Vec<u64> = snapshots.iter().map(|s| s.generation).collect();
        g.sort_unstable();
        g
    }

    /// Prunes `alive` at `now` like the store does, checking on the way that a second pass at
    /// the same `now` prunes nothing; returns the verdicts of the first pass.
    fn prune_step(policy: &Policy, alive: &mut Vec<Snapshot>, now: u64) -> Vec<Verdict> {
        let verdicts = verdicts(policy, alive, now);
        let mut i = 0;
        alive.retain(|_| {
            i += 1;
            verdicts[i - 1].is_keep()
        });
        let again = plan(policy, alive, now);
        assert!(
            again.prune.is_empty(),
            "a second prune at {now} removed {:?}",
            again.prune
        );
        verdicts
    }

    #[test]
    fn t0_is_aligned_on_every_interval() {
        assert_eq!(T0 % (7 * D), 0);
    }

    /// A snapshot every 10 minutes for 30 hours, pruned after each one with the example
    /// policy. Snapshot k (generation k+1) is taken at T0 + 5m + k*10m, k = 0..=180, i.e. at
    /// minute 10k+5 of the run; the last, generation 181, at T0 + 30h05m = `now`.
    ///
    /// The survivors, by reasoning on the rule:
    /// * 1h:10m: each 10-minute bucket holds one snapshot, so the snapshots aged at most 1h
    ///   are all kept: minutes 1745..=1805, generations 175..=181.
    /// * 24h:hourly: each hour's oldest snapshot is its :05 one (minute 60h+5, generation
    ///   6h+1). It is kept while its age is at most 24h, i.e. minute >= 1805-1440 = 365:
    ///   hours 6..=30, generations 37, 43, ..., 181 (37 has age exactly 24h: still inside).
    ///   The :05 of hours 1..=5 aged out; the later snapshots of each hour were pruned as soon
    ///   as they left the 1h window, the :05 being older and present.
    /// * 7d:daily: the oldest of day 0 is generation 1 (00:05), of day 1 generation 145 (24:05,
    ///   already kept hourly).
    /// * 4w:weekly: everything is in the week starting at T0; its oldest is generation 1.
    #[test]
    fn thirty_hours_every_ten_minutes() {
        let policy = example();
        let mut alive: Vec<Snapshot> = Vec::new();
        let mut last_now = 0;
        for k in 0..=180u64 {
            let now = T0 + 5 * M + k * 10 * M;
            alive.push(snap(k + 1, now));
            let verdicts = prune_step(&policy, &mut alive, now);
            // The snapshot just taken is always kept, as the newest.
            assert_eq!(verdicts.last(), Some(&Verdict::Keep(Reason::Newest)));
            // Never more than the grid can hold: 6+1 ten-minute, 24+1 hourly, 7+1 daily and
            // 4+1 weekly buckets, plus the newest.
            assert!(alive.len() <= 7 + 25 + 8 + 5 + 1, "{} kept", alive.len());
            last_now = now;
        }
        assert_eq!(last_now, T0 + 30 * H + 5 * M);

        let mut expected: Vec<u64> = vec![1];
        expected.extend((6..=30).map(|h| 6 * h + 1));
        expected.extend(176..=180);
        expected.sort_unstable();
        assert_eq!(expected.len(), 31);
        assert_eq!(gens(&alive), expected);

        // No new snapshots for a week: only the 7d window's and the 4w window's survivors
        // remain. Generation 181 (age exactly 7d) is still in the 7d window; every other
        // snapshot of day 1 is older than 7d; generation 1 is the oldest of its week.
        prune_step(&policy, &mut alive, last_now + 7 * D);
        assert_eq!(gens(&alive), [1, 181]);
        // 29 days on, generation 1 (age 30d 6h) is past the last window; the newest stays,
        // however old.
        prune_step(&policy, &mut alive, last_now + 29 * D);
        assert_eq!(gens(&alive), [181]);
        assert_eq!(
            verdicts(&policy, &alive, last_now + 1000 * D),
            [Verdict::Keep(Reason::Newest)]
        );
    }

    #[test]
    fn the_oldest_of_each_bucket_is_kept_and_buckets_follow_the_epoch() {
        let policy = Policy::parse("1d:hourly").unwrap();
        let now = T0 + 12 * H;
        let snapshots = [
            snap(1, T0 + 9 * H + 59 * M),  // 09:59, alone in hour 9
            snap(2, T0 + 10 * H + M),      // 10:01, oldest of hour 10
            snap(3, T0 + 10 * H + 30 * M), // 10:30, not the oldest
            snap(4, T0 + 10 * H + 59 * M), // 10:59, not the oldest
            snap(5, T0 + 11 * H + 50 * M), // 11:50, younger than 1h: recent
            snap(6, T0 + 11 * H + 55 * M), // the newest
        ];
        assert_eq!(
            verdicts(&policy, &snapshots, now),
            [
                Verdict::Keep(Reason::Oldest {
                    window: 0,
                    bucket: (T0 + 9 * H) / H
                }),
                Verdict::Keep(Reason::Oldest {
                    window: 0,
                    bucket: (T0 + 10 * H) / H
                }),
                Verdict::Prune,
                Verdict::Prune,
                Verdict::Keep(Reason::Recent),
                Verdict::Keep(Reason::Newest),
            ]
        );
        let plan = plan(&policy, &snapshots, now);
        assert_eq!(gens(&plan.keep), [1, 2, 5, 6]);
        assert_eq!(gens(&plan.prune), [3, 4]);
    }

    #[test]
    fn outside_the_last_window_only_the_newest_survives() {
        let policy = Policy::parse("1h:10m").unwrap();
        let now = T0 + 10 * H;
        // Out of order on purpose: the newest is the highest generation, not the last given.
        let snapshots = [snap(9, T0), snap(3, T0 - H), snap(7, T0 + 8 * H)];
        assert_eq!(
            verdicts(&policy, &snapshots, now),
            [
                Verdict::Keep(Reason::Newest),
                Verdict::Prune,
                Verdict::Prune
            ]
        );
        assert_eq!(
            verdicts(&policy, &[], now),
            Vec::<Verdict>::new(),
            "nothing to judge"
        );
    }

    #[test]
    fn the_window_edge_is_inclusive_and_the_recent_edge_exclusive() {
        let policy = Policy::parse("1h:10m").unwrap();
        let now = T0 + 10 * H;
        let snapshots = [
            snap(1, now - H - 1),      // one second too old
            snap(2, now - H),          // exactly 1h old: inside
            snap(3, now - 10 * M),     // exactly 10m old: not recent, the oldest of its bucket
            snap(4, now - 10 * M + 1), // same bucket as 3, younger than 10m: recent
            snap(5, now),
        ];
        let v = verdicts(&policy, &snapshots, now);
        assert_eq!(v[0], Verdict::Prune);
        assert!(matches!(v[1], Verdict::Keep(Reason::Oldest { .. })));
        assert!(matches!(v[2], Verdict::Keep(Reason::Oldest { .. })));
        assert_eq!(v[3], Verdict::Keep(Reason::Recent));
        assert_eq!(v[4], Verdict::Keep(Reason::Newest));
    }

    #[test]
    fn snapshots_dated_in_the_future_are_kept() {
        // The clock stepped back after they were taken.
        let policy = Policy::parse("1h:10m").unwrap();
        let now = T0;
        let snapshots = [snap(1, T0 + D), snap(2, T0 + D + 1), snap(3, T0 + 2 * D)];
        assert_eq!(
            verdicts(&policy, &snapshots, now),
            [
                Verdict::Keep(Reason::Recent),
                Verdict::Keep(Reason::Recent),
                Verdict::Keep(Reason::Newest)
            ]
        );
    }

    #[test]
    fn ties_go_to_the_lower_generation_and_the_first_given() {
        let policy = Policy::parse("7d:daily").unwrap();
        let now = T0 + 2 * D + 20 * H;
        let snapshots = [
            snap(4, T0 + H),
            snap(2, T0 + H),
            snap(2, T0 + H),
            snap(9, now),
        ];
        let v = verdicts(&policy, &snapshots, now);
        assert_eq!(v[0], Verdict::Prune);
        assert!(v[1].is_keep());
        assert_eq!(v[2], Verdict::Prune);
        let twins = [snap(5, now), snap(5, now)];
        assert_eq!(
            verdicts(&policy, &twins, now + D),
            [Verdict::Keep(Reason::Newest), Verdict::Prune]
        );
    }

    /// One step of a simulated life: the clock moves on, maybe a snapshot is taken, then a
    /// prune runs.
    fn steps() -> impl Strategy<Value = Vec<(u64, bool)>> {
        prop::collection::vec((1u64..=3 * H, prop::bool::weighted(0.8)), 1..250)
    }

    fn policies() -> impl Strategy<Value = Policy> {
        prop::sample::select(vec![
            "1h:10m,24h:hourly,7d:daily,4w:weekly",
            "1h:10m",
            "2h:7m,1d:50m,3d:1d",
            "30m:1m,6h:13m,2d:2h",
            "1d:1d",
        ])
        .prop_map(|spec| Policy::parse(spec).unwrap())
    }

    /// For each window, the oldest in-window snapshot of each of its buckets among `alive`,
    /// with the window's span: what the rule promises to keep, found by brute force.
    fn representatives(policy: &Policy, alive: &[Snapshot], now: u64) -> Vec<(Snapshot, u64)> {
        let mut found = Vec::new();
        for window in policy.windows() {
            let inside = |s: &&Snapshot| now.saturating_sub(s.created) <= window.span;
            for s in alive.iter().filter(inside) {
                let bucket = s.created / window.interval;
                let older = alive.iter().filter(inside).any(|o| {
                    o.created / window.interval == bucket
                        && (o.created, o.generation) < (s.created, s.generation)
                });
                if !older {
                    found.push((*s, window.span));
                }
            }
        }
        found
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Whatever the cadence and the policy: the newest is kept; a second prune at the same
        /// `now` prunes nothing; a snapshot that is the oldest of its bucket in a window is
        /// kept by that prune and by every later one while it is inside that window (no
        /// churn); every survivor is the newest or inside the last window.
        #[test]
        fn pruning_is_stable(policy in policies(), steps in steps(), start in 0u64..14 * D) {
            let mut alive: Vec<Snapshot> = Vec::new();
            let mut promised: Vec<(Snapshot, u64)> = Vec::new(); // (snapshot, window span)
            let mut now = T0 + start;
            let mut generation = 0;
            for (advance, take) in steps {
                now += advance;
                if take {
                    generation += 1;
                    alive.push(snap(generation, now));
                }
                promised.extend(representatives(&policy, &alive, now));
                prune_step(&policy, &mut alive, now);
                for (s, span) in &promised {
                    if now - s.created <= *span {
                        prop_assert!(alive.contains(s), "{s:?} was dropped inside its window at {now}");
                    }
                }
                let max_generation = alive.iter().map(|s| s.generation).max();
                prop_assert_eq!(max_generation, (generation > 0).then_some(generation));
                for s in &alive {
                    prop_assert!(s.generation == generation || now - s.created <= policy.horizon());
                }
            }
        }
    }
}
