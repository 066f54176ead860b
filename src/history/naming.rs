//! The names of snapshot files, so that a directory listing alone recovers each snapshot's
//! generation and creation time.
//!
//! * A snapshot: `gen-<generation, 20 digits>-<created, Unix seconds>.img`, e.g.
//!   `gen-00000000000000000042-1767225600.img`; names sort by generation.
//! * One being made: the same name with a `.` in front and `.partial` after it; a probe
//!   (a clone made to check that reflink works): `.probe-<pid>.img.partial`. Both are renamed
//!   or deleted when done, so a partial name that stays is left over from a crash.
//!
//! Only canonical names are recognised (the name this module would print for the numbers it
//! reads), so a file someone else named `gen-042-...` is not mistaken for ours.

use std::path::{Path, PathBuf};

use super::error::HistoryError;
use super::retention::Snapshot;

const PREFIX: &str = "gen-";
const SUFFIX: &str = ".img";
const PARTIAL: &str = ".partial";

/// The file name of the snapshot of `generation` taken at `created`.
pub fn snapshot_name(generation: u64, created: u64) -> String {
    format!("{PREFIX}{generation:020}-{created}{SUFFIX}")
}

/// The name a snapshot is made under before it is complete.
pub fn partial_name(generation: u64, created: u64) -> String {
    format!(".{}{PARTIAL}", snapshot_name(generation, created))
}

/// The name of a probe clone made by process `pid`.
pub fn probe_name(pid: u32) -> String {
    format!(".probe-{pid}{SUFFIX}{PARTIAL}")
}

/// `(generation, created)` of a snapshot name; `None` for any other name.
pub fn parse_snapshot(name: &str) -> Option<(u64, u64)> {
    let middle = name.strip_prefix(PREFIX)?.strip_suffix(SUFFIX)?;
    let (generation, created) = middle.split_once('-')?;
    if !is_digits(generation) || !is_digits(created) {
        return None;
    }
    let numbers = (generation.parse().ok()?, created.parse().ok()?);
    (snapshot_name(numbers.0, numbers.1) == name).then_some(numbers)
}

/// True for the name of a snapshot being made or of a probe (ours, incomplete).
pub fn is_partial(name: &str) -> bool {
    let Some(inner) = name.strip_prefix('.').and_then(|n| n.strip_suffix(PARTIAL)) else {
        return false;
    };
    if parse_snapshot(inner).is_some() {
        return true;
    }
    inner
        .strip_prefix("probe-")
        .and_then(|n| n.strip_suffix(SUFFIX))
        .and_then(|pid| pid.parse::<u32>().ok().filter(|p| pid == p.to_string()))
        .is_some()
}

fn is_digits(text: &str) -> bool {
    !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit())
}

/// Where a restore to `dest` (a new file) is made before it is renamed into place: a hidden
/// partial name beside it. Refuses a `dest` that exists (a restore never overwrites) or that
/// names no file.
pub fn restore_partial(dest: &Path) -> Result<PathBuf, HistoryError> {
    if dest.symlink_metadata().is_ok() {
        return Err(HistoryError::DestinationExists {
            dest: dest.to_owned(),
        });
    }
    let Some(name) = dest.file_name() else {
        return Err(HistoryError::Io {
            what: "restore needs the path of a new file, not",
            path: dest.to_owned(),
            error: std::io::ErrorKind::InvalidInput.into(),
        });
    };
    let dest_dir = match dest.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    Ok(dest_dir.join(format!(
        ".{}.blkmirror-restore-{}.partial",
        name.to_string_lossy(),
        std::process::id()
    )))
}

/// Renames a restore's partial file to `dest`, never over an existing file.
pub fn put_restored(partial: &Path, dest: &Path) -> Result<(), HistoryError> {
    crate::fsclone::rename_noreplace(partial, dest).map_err(|errno| match errno {
        nix::errno::Errno::EEXIST => HistoryError::DestinationExists {
            dest: dest.to_owned(),
        },
        errno => HistoryError::Io {
            what: "cannot rename the restored file to",
            path: dest.to_owned(),
            error: errno.into(),
        },
    })
}

/// One snapshot (in a history directory, or a thin snapshot LV).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The generation of the target it holds.
    pub generation: u64,
    /// When it was taken, in Unix seconds.
    pub created: u64,
    /// Its file.
    pub path: PathBuf,
}

impl Entry {
    /// What retention needs to know of it.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            generation: self.generation,
            created: self.created,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        let name = snapshot_name(42, 1_767_225_600);
        assert_eq!(name, "gen-00000000000000000042-1767225600.img");
        assert_eq!(parse_snapshot(&name), Some((42, 1_767_225_600)));
        assert_eq!(
            parse_snapshot(&snapshot_name(u64::MAX, 0)),
            Some((u64::MAX, 0))
        );
        assert_eq!(
            partial_name(42, 7),
            ".gen-00000000000000000042-7.img.partial"
        );
        assert!(is_partial(&partial_name(42, 7)));
        assert!(is_partial(&probe_name(1234)));
    }

    #[test]
    fn other_names_are_not_ours() {
        for name in [
            "gen-42-1767225600.img",
            "gen-00000000000000000042-01767225600.img",
            "gen-00000000000000000042-1767225600.img.bak",
            "gen-00000000000000000042-+1767225600.img",
            "gen-0000000000000000004x-1767225600.img",
            "gen-00000000000000000042.img",
            "gen-00000000000000000042-.img",
            "GEN-00000000000000000042-1767225600.img",
            ".gen-00000000000000000042-1767225600.img",
            "notes.txt",
            "",
        ] {
            assert_eq!(parse_snapshot(name), None, "{name:?}");
            assert!(!is_partial(name), "{name:?}");
        }
        for name in [
            "gen-00000000000000000042-1767225600.img.partial",
            ".gen-42-1.img.partial",
            ".probe-.img.partial",
            ".probe-012.img.partial",
            ".other.partial",
        ] {
            assert!(!is_partial(name), "{name:?}");
        }
    }
}
