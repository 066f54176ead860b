//! Whole-second durations as `--keep` writes them: `10m`, `1h`, `24h`, `7d`, `4w`, or a sum
//! such as `1h30m`; units `s`, `m`, `h`, `d`, `w` (a week is 7 days, a day 86 400 s: no
//! calendar, no leap seconds). Parsed into seconds and printed back in the largest unit that
//! divides them exactly.
//!
//! Not [`crate::units::parse_duration`]: that one accepts `500ms` and months (`1M`, 30.44 days),
//! neither of which makes sense for a bucket aligned on whole seconds, and it reports errors as
//! text; here a bad duration is a typed [`DurationError`] that the policy parser names.

/// Seconds in each unit, largest first (the order [`format`] tries them in).
const UNITS: [(char, u64); 5] = [
    ('w', 7 * 86_400),
    ('d', 86_400),
    ('h', 3_600),
    ('m', 60),
    ('s', 1),
];

/// The longest duration accepted: 100 years of 365 days (keeps every sum far from overflow).
pub const MAX_SECS: u64 = 100 * 365 * 86_400;

/// Why a text is not a duration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DurationError {
    /// Not `<number><unit>...` with units s, m, h, d, w.
    Malformed,
    /// It adds up to zero.
    Zero,
    /// It is longer than [`MAX_SECS`].
    TooLong,
}

/// Parses `10m`, `24h`, `7d`, `4w`, `1h30m` into seconds.
pub fn parse(text: &str) -> Result<u64, DurationError> {
    let mut total: u64 = 0;
    let mut rest = text;
    if rest.is_empty() {
        return Err(DurationError::Malformed);
    }
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(DurationError::Malformed);
        }
        let (number, after) = rest.split_at(digits);
        let mut chars = after.chars();
        let unit = chars.next().ok_or(DurationError::Malformed)?;
        let (_, scale) = UNITS
            .iter()
            .find(|(name, _)| *name == unit)
            .ok_or(DurationError::Malformed)?;
        // More digits than any accepted duration has: too long, not malformed.
        let value: u64 = number.parse().map_err(|_| DurationError::TooLong)?;
        total = value
            .checked_mul(*scale)
            .and_then(|part| total.checked_add(part))
            .filter(|sum| *sum <= MAX_SECS)
            .ok_or(DurationError::TooLong)?;
        rest = chars.as_str();
    }
    if total == 0 {
        return Err(DurationError::Zero);
    }
    Ok(total)
}

/// Prints seconds in the largest unit that divides them exactly: `600` is `10m`, `90` is `90s`.
pub fn format(secs: u64) -> String {
    for (unit, scale) in UNITS {
        if secs > 0 && secs.is_multiple_of(scale) {
            return format!("{}{unit}", secs / scale);
        }
    }
    format!("{secs}s")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse("10m"), Ok(600));
        assert_eq!(parse("1h"), Ok(3_600));
        assert_eq!(parse("24h"), Ok(86_400));
        assert_eq!(parse("7d"), Ok(7 * 86_400));
        assert_eq!(parse("4w"), Ok(28 * 86_400));
        assert_eq!(parse("1h30m"), Ok(5_400));
        assert_eq!(parse("45s"), Ok(45));
    }

    #[test]
    fn durations_refuse() {
        for bad in [
            "", "h", "10", "10x", "1.5h", "-1h", "1 h", "10M", "1h ", "m10", "10mm",
        ] {
            assert_eq!(parse(bad), Err(DurationError::Malformed), "{bad:?}");
        }
        assert_eq!(parse("0m"), Err(DurationError::Zero));
        assert_eq!(parse("0h0m"), Err(DurationError::Zero));
        assert_eq!(parse("5300w"), Err(DurationError::TooLong));
        assert_eq!(
            parse("99999999999999999999999w"),
            Err(DurationError::TooLong)
        );
    }

    #[test]
    fn durations_format_in_the_largest_exact_unit() {
        assert_eq!(format(600), "10m");
        assert_eq!(format(3_600), "1h");
        assert_eq!(format(86_400), "1d");
        assert_eq!(format(7 * 86_400), "1w");
        assert_eq!(format(90), "90s");
        assert_eq!(format(5_400), "90m");
        assert_eq!(format(0), "0s");
    }
}
