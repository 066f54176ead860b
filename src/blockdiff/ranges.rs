//! Sets of half-open `u64` ranges (byte offsets or block indices), kept sorted, disjoint and
//! merged. What a change tracker reports, what a scan reads, what a receiver wrote.
//! Pure; property-tested.

use std::ops::Range;

/// Sorted, disjoint, non-adjacent, non-empty ranges.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RangeSet {
    ranges: Vec<Range<u64>>,
}

impl RangeSet {
    /// The empty set.
    pub fn new() -> Self {
        RangeSet::default()
    }

    /// `[0, len)` (empty when `len` is 0).
    pub fn full(len: u64) -> Self {
        RangeSet::from_ranges(std::iter::once(0..len))
    }

    /// The union of `ranges` (in any order, overlapping or empty).
    pub fn from_ranges(ranges: impl IntoIterator<Item = Range<u64>>) -> Self {
        let mut all: Vec<Range<u64>> = ranges.into_iter().filter(|r| r.start < r.end).collect();
        all.sort_unstable_by_key(|r| r.start);
        let mut merged: Vec<Range<u64>> = Vec::with_capacity(all.len());
        for range in all {
            match merged.last_mut() {
                Some(last) if range.start <= last.end => last.end = last.end.max(range.end),
                _ => merged.push(range),
            }
        }
        RangeSet { ranges: merged }
    }

    /// Adds `range`. Cheap when ranges arrive in ascending order (the usual case); otherwise
    /// the set is rebuilt.
    pub fn insert(&mut self, range: Range<u64>) {
        if range.start >= range.end {
            return;
        }
        match self.ranges.last_mut() {
            None => self.ranges.push(range),
            Some(last) if range.start > last.end => self.ranges.push(range),
            Some(last) if range.start >= last.start => last.end = last.end.max(range.end),
            Some(_) => {
                let mut all = std::mem::take(&mut self.ranges);
                all.push(range);
                *self = RangeSet::from_ranges(all);
            }
        }
    }

    /// The ranges, ascending.
    pub fn iter(&self) -> impl Iterator<Item = &Range<u64>> + '_ {
        self.ranges.iter()
    }

    /// True when the set holds nothing.
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// Number of disjoint ranges.
    pub fn range_count(&self) -> usize {
        self.ranges.len()
    }

    /// Sum of the ranges' lengths.
    pub fn total_len(&self) -> u64 {
        self.ranges.iter().map(|r| r.end - r.start).sum()
    }

    /// Whether `at` lies in the set.
    pub fn contains(&self, at: u64) -> bool {
        let i = self.ranges.partition_point(|r| r.end <= at);
        self.ranges.get(i).is_some_and(|r| r.start <= at)
    }

    /// The part of the set below `end`.
    pub fn clipped(&self, end: u64) -> RangeSet {
        RangeSet::from_ranges(self.ranges.iter().map(|r| r.start..r.end.min(end)))
    }

    /// The part of the set at or after `start`.
    pub fn from_offset(&self, start: u64) -> RangeSet {
        RangeSet::from_ranges(self.ranges.iter().map(|r| r.start.max(start)..r.end))
    }

    /// Everything in either set.
    pub fn union(&self, other: &RangeSet) -> RangeSet {
        RangeSet::from_ranges(self.ranges.iter().chain(other.ranges.iter()).cloned())
    }

    /// Each range widened to multiples of `unit` (starts rounded down, ends up).
    pub fn aligned_out(&self, unit: u64) -> RangeSet {
        assert!(unit > 0);
        RangeSet::from_ranges(self.ranges.iter().map(|r| {
            let start = r.start / unit * unit;
            let end = r.end.div_ceil(unit).saturating_mul(unit);
            start..end
        }))
    }

    /// Each range mapped from bytes to the indices of the `unit`-sized pieces it touches.
    pub fn to_units(&self, unit: u64) -> RangeSet {
        assert!(unit > 0);
        RangeSet::from_ranges(
            self.ranges
                .iter()
                .map(|r| r.start / unit..r.end.div_ceil(unit)),
        )
    }

    /// The ranges cut at every multiple of `max_len`, so no piece crosses one: a scan's
    /// chunks. A full set `[0, n)` gives the same pieces as cutting `n` bytes into chunks.
    pub fn pieces(&self, max_len: u64) -> Vec<Range<u64>> {
        assert!(max_len > 0);
        let mut out = Vec::new();
        for range in &self.ranges {
            let mut at = range.start;
            while at < range.end {
                let boundary = (at / max_len + 1).saturating_mul(max_len);
                let end = boundary.min(range.end);
                out.push(at..end);
                at = end;
            }
        }
        out
    }
}

impl FromIterator<Range<u64>> for RangeSet {
    fn from_iter<T: IntoIterator<Item = Range<u64>>>(iter: T) -> Self {
        RangeSet::from_ranges(iter)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn members(ranges: &[Range<u64>]) -> std::collections::BTreeSet<u64> {
        ranges.iter().flat_map(|r| r.clone()).collect()
    }

    fn ranges() -> impl Strategy<Value = Vec<Range<u64>>> {
        proptest::collection::vec((0u64..300, 0u64..40).prop_map(|(s, l)| s..s + l), 0..12)
    }

    proptest! {
        #[test]
        fn normalised_union(input in ranges()) {
            let set = RangeSet::from_ranges(input.clone());
            let got: Vec<_> = set.iter().cloned().collect();
            prop_assert_eq!(members(&got), members(&input));
            for pair in got.windows(2) {
                prop_assert!(pair[0].end < pair[1].start, "disjoint and not adjacent");
            }
            prop_assert!(got.iter().all(|r| r.start < r.end));
            let mut inserted = RangeSet::new();
            for r in &input {
                inserted.insert(r.clone());
            }
            prop_assert_eq!(&inserted, &set);
            for x in 0..350 {
                prop_assert_eq!(set.contains(x), members(&got).contains(&x));
            }
        }

        #[test]
        fn pieces_cover_exactly_and_respect_boundaries(input in ranges(), max in 1u64..50) {
            let set = RangeSet::from_ranges(input);
            let pieces = set.pieces(max);
            let got: Vec<_> = set.iter().cloned().collect();
            prop_assert_eq!(members(&pieces), members(&got));
            for p in &pieces {
                prop_assert!(p.end - p.start <= max);
                prop_assert_eq!((p.end - 1) / max, p.start / max, "never crosses a multiple");
            }
        }

        #[test]
        fn alignment_and_units(input in ranges(), shift in 0u32..5) {
            let unit = 1u64 << shift;
            let set = RangeSet::from_ranges(input);
            let aligned = set.aligned_out(unit);
            for r in aligned.iter() {
                prop_assert_eq!(r.start % unit, 0);
                prop_assert_eq!(r.end % unit, 0);
            }
            let before: Vec<_> = set.iter().cloned().collect();
            let after: Vec<_> = aligned.iter().cloned().collect();
            prop_assert!(members(&before).is_subset(&members(&after)));
            let units: Vec<_> = set.to_units(unit).iter().cloned().collect();
            let expected: std::collections::BTreeSet<u64> =
                members(&before).iter().map(|b| b / unit).collect();
            prop_assert_eq!(members(&units), expected);
        }
    }

    #[test]
    fn full_scan_pieces_are_the_classic_chunks() {
        assert_eq!(RangeSet::full(0).pieces(8), Vec::<Range<u64>>::new());
        assert_eq!(RangeSet::full(20).pieces(8), vec![0..8, 8..16, 16..20]);
        assert_eq!(RangeSet::full(20).clipped(10).total_len(), 10);
    }
}
