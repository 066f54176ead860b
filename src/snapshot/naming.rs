//! Names of the snapshots and clones this program makes: a fixed prefix, a key of the source's
//! identity and a time stamp (`blkmirror-snap-<16 hex>-<unix microseconds>`), so that a
//! restarted sender can recognise, and remove, exactly the leftovers of its own source and
//! nothing else. Two runs of the sender never pick the same name in practice (microseconds);
//! the providers still refuse to replace an existing snapshot, since one may be kept on purpose
//! for the change tracker.

use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

/// Prefix of every snapshot LV and clone file.
pub const SNAPSHOT_PREFIX: &str = "blkmirror-snap-";
/// Prefix of the short-lived clone made to find out whether a filesystem can reflink.
pub const PROBE_PREFIX: &str = "blkmirror-probe-";

/// The key of a source identity in names: 16 hex digits of its BLAKE3 hash.
pub fn source_key(identity: &str) -> String {
    hex::encode(&blake3::hash(identity.as_bytes()).as_bytes()[..8])
}

/// `blkmirror-snap-KEY-STAMP`.
pub fn snapshot_name(key: &str, stamp: u64) -> String {
    format!("{SNAPSHOT_PREFIX}{key}-{stamp}")
}

/// `blkmirror-probe-KEY-PID`.
pub fn probe_name(key: &str) -> String {
    format!("{PROBE_PREFIX}{key}-{}", std::process::id())
}

/// Is `name` a snapshot or probe of the source with `key`? A leading `.` (hidden clone files
/// next to the source) is allowed; anything after the key must be `-` and digits, so another
/// source's key that merely starts with ours never matches.
pub fn is_own(name: &str, key: &str) -> bool {
    let name = name.strip_prefix('.').unwrap_or(name);
    let Some(rest) = name
        .strip_prefix(SNAPSHOT_PREFIX)
        .or_else(|| name.strip_prefix(PROBE_PREFIX))
    else {
        return false;
    };
    let Some(stamp) = rest.strip_prefix(key).and_then(|r| r.strip_prefix('-')) else {
        return false;
    };
    !key.is_empty() && !stamp.is_empty() && stamp.bytes().all(|b| b.is_ascii_digit())
}

/// Hands out snapshot names, unique within the process even for two cycles in one
/// microsecond.
pub struct Namer {
    key: String,
    last: Mutex<u64>,
}

impl Namer {
    /// A namer for the source whose key (see [`source_key`]) is `key`.
    pub fn new(key: String) -> Namer {
        Namer {
            key,
            last: Mutex::new(0),
        }
    }

    /// The source key every name carries.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The next name: stamped with the current Unix time in microseconds, or one more than
    /// the previous stamp.
    pub fn next(&self) -> String {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        *last = now.max(*last + 1);
        snapshot_name(&self.key, *last)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_is_16_hex_and_stable() {
        let k = source_key("blockdev:/dev/dm-3");
        assert_eq!(k.len(), 16);
        assert!(k.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(k, source_key("blockdev:/dev/dm-3"));
        assert_ne!(k, source_key("blockdev:/dev/dm-4"));
    }

    #[test]
    fn own_names_only() {
        let key = "0123456789abcdef";
        assert!(is_own("blkmirror-snap-0123456789abcdef-1700000000", key));
        assert!(is_own(".blkmirror-snap-0123456789abcdef-1700000000", key));
        assert!(is_own("blkmirror-probe-0123456789abcdef-4242", key));
        // Another source's key.
        assert!(!is_own("blkmirror-snap-fedcba9876543210-1700000000", key));
        // A key that only starts like ours.
        assert!(!is_own("blkmirror-snap-0123456789abcdef0-1700000000", key));
        // Not ours at all, or not quite the pattern.
        assert!(!is_own("root", key));
        assert!(!is_own("blkmirror-snap-0123456789abcdef", key));
        assert!(!is_own("blkmirror-snap-0123456789abcdef-", key));
        assert!(!is_own("blkmirror-snap-0123456789abcdef-17x", key));
        assert!(!is_own("my-blkmirror-snap-0123456789abcdef-1", key));
        assert!(!is_own("..blkmirror-snap-0123456789abcdef-1", key));
        assert!(!is_own("blkmirror-snap--1", ""));
    }

    #[test]
    fn names_are_unique_and_recognised() {
        let namer = Namer::new(source_key("file:/a"));
        let a = namer.next();
        let b = namer.next();
        assert_ne!(a, b);
        assert!(is_own(&a, namer.key()) && is_own(&b, namer.key()));
        assert!(is_own(&probe_name(namer.key()), namer.key()));
        assert!(a.len() < 64, "LV names must stay short: {a}");
    }
}
