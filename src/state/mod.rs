//! Persistent state of both sides, and the atomic-write primitive they share.
//!
//! Sender: `STATE/sources/<key(source identity)>/dest-<key(dest)>.{manifest,json}`: the manifest
//! of what the receiver acknowledged, and a status record. One state dir serves many sources
//! and destinations. Receiver: `STATE/targets/<key(target path)>/{state.json,manifest,lock}`.
//! Formats: `docs/format.md`.

mod crash;
pub mod manifest_file;
pub mod receiver;
pub mod sender;

pub use crash::{CrashStore, StoreImage};
pub use receiver::{Condition, DirStore, ReceiverPaths, ReceiverState, ReceiverStore, ScrubRecord};
pub use sender::{SenderPaths, SenderStatus};

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// Prefix of the temp files `atomic_write` renames into place.
const TEMP_PREFIX: &str = ".tmp-";
/// A temp file older than this was left by a crash (a write takes seconds at most).
const STALE_TEMP_AGE: std::time::Duration = std::time::Duration::from_secs(3600);

/// Writes `path` atomically: a temp file in the same directory, fsync, rename, fsync the dir.
/// Temp files a crash left in the directory are removed.
pub fn atomic_write(
    path: &Path,
    write: impl FnOnce(&mut File) -> io::Result<()>,
) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    create_dir_durable(dir)?;
    let mut temp = tempfile::Builder::new()
        .prefix(TEMP_PREFIX)
        .tempfile_in(dir)?;
    write(temp.as_file_mut())?;
    temp.as_file().sync_all()?;
    temp.persist(path).map_err(|e| e.error)?;
    File::open(dir)?.sync_all()?;
    remove_stale_temps(dir);
    Ok(())
}

/// Creates `dir` and its missing ancestors, each fsynced into its parent, so that a state
/// file written into it survives a crash.
pub(crate) fn create_dir_durable(dir: &Path) -> io::Result<()> {
    if dir.as_os_str().is_empty() || dir.is_dir() {
        return Ok(());
    }
    let parent = dir.parent().unwrap_or(Path::new(""));
    create_dir_durable(parent)?;
    match fs::create_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(()),
        Err(e) => return Err(e),
    }
    let parent = if parent.as_os_str().is_empty() {
        Path::new(".")
    } else {
        parent
    };
    File::open(parent)?.sync_all()
}

/// Removes `atomic_write` temp files older than [`STALE_TEMP_AGE`] from `dir` (best effort).
fn remove_stale_temps(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let stale = entry.file_name().to_string_lossy().starts_with(TEMP_PREFIX)
            && entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > STALE_TEMP_AGE);
        if stale {
            let _ = fs::remove_file(entry.path());
        }
    }
}

/// Writes a JSON document atomically.
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> io::Result<()> {
    atomic_write(path, |file| {
        serde_json::to_writer_pretty(&mut *file, value)?;
        file.write_all(b"\n")
    })
}

/// Reads a JSON document; `Ok(None)` if missing.
pub fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> io::Result<Option<T>> {
    match fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: {e}", path.display()),
            )
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// A short, stable directory key for any text (first 16 hex digits of its BLAKE3).
pub fn key(text: &str) -> String {
    hex::encode(&blake3::hash(text.as_bytes()).as_bytes()[..8])
}

/// Seconds since the Unix epoch.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Formats Unix seconds as RFC 3339; a time RFC 3339 cannot write (the year 10000 or later:
/// a damaged record) as the number, marked.
pub fn format_time(secs: u64) -> String {
    use std::fmt::Write;
    let mut text = String::new();
    let written = UNIX_EPOCH
        .checked_add(std::time::Duration::from_secs(secs))
        .is_some_and(|time| write!(text, "{}", humantime::format_rfc3339_seconds(time)).is_ok());
    match written {
        true => text,
        false => format!("{secs} (not a valid time)"),
    }
}

/// The default state directory: `/var/lib/blkmirror` for root, else
/// `$XDG_STATE_HOME/blkmirror` or `~/.local/state/blkmirror`.
pub fn default_state_dir() -> PathBuf {
    if nix::unistd::geteuid().is_root() {
        return PathBuf::from("/var/lib/blkmirror");
    }
    if let Some(dir) = std::env::var_os("XDG_STATE_HOME") {
        return PathBuf::from(dir).join("blkmirror");
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| ".".into());
    PathBuf::from(home).join(".local/state/blkmirror")
}

/// One state record found under a state dir, as `status` shows it.
#[derive(Clone, Debug)]
pub enum StatusEntry {
    /// A receiver's record for one target.
    Receiver(ReceiverState),
    /// A receiver's record whose target no longer exists (`status` says so rather than
    /// repeating what the record says of it).
    MissingTarget(ReceiverState),
    /// A sender's record for one (source, destination) pair.
    Sender(SenderStatus),
    /// A record that could not be read or parsed (or of a format this build does not know):
    /// listed, never skipped, so one damaged file hides nothing else.
    Unreadable {
        /// `"receiver"` or `"sender"`.
        role: &'static str,
        /// The record's file.
        path: PathBuf,
        /// Why it could not be read.
        error: String,
    },
}

impl StatusEntry {
    /// `"receiver"` or `"sender"` (the `role` key of `status --json`).
    pub fn role(&self) -> &'static str {
        match self {
            StatusEntry::Receiver(_) | StatusEntry::MissingTarget(_) => "receiver",
            StatusEntry::Sender(_) => "sender",
            StatusEntry::Unreadable { role, .. } => role,
        }
    }

    /// The object `status --json` prints: the record's own keys, plus `role`, and for a
    /// receiver `condition` summarised as `consistent` or `mid-cycle` with the record's own
    /// condition (`consistent`, `applying`, `interrupted`) moved to `detail`.
    pub fn to_json(&self) -> serde_json::Result<serde_json::Value> {
        let mut value = match self {
            StatusEntry::Receiver(state) | StatusEntry::MissingTarget(state) => {
                serde_json::to_value(state)?
            }
            StatusEntry::Sender(status) => serde_json::to_value(status)?,
            StatusEntry::Unreadable { path, error, .. } => serde_json::json!({
                "path": path,
                "condition": "unreadable",
                "error": error,
            }),
        };
        value["role"] = self.role().into();
        if let StatusEntry::Sender(status) = self {
            value["lag_seconds"] = sender::lag_seconds(status, now()).into();
            value["consecutive_failures"] = status.consecutive_failures.into();
        }
        match self {
            StatusEntry::Receiver(state) => {
                value["condition"] = condition_summary(state.condition).into();
                value["detail"] = serde_json::to_value(state.condition)?;
            }
            StatusEntry::MissingTarget(state) => {
                value["condition"] = "missing".into();
                value["detail"] = serde_json::to_value(state.condition)?;
            }
            _ => {}
        }
        Ok(value)
    }
}

impl Serialize for StatusEntry {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.to_json()
            .map_err(serde::ser::Error::custom)?
            .serialize(serializer)
    }
}

/// `consistent`; `mid-cycle` for a target that is being (or was being) written; `drifted` for
/// one a scrub found changed outside blkmirror.
pub fn condition_summary(condition: Condition) -> &'static str {
    match condition {
        Condition::Consistent => "consistent",
        Condition::Applying | Condition::Interrupted => "mid-cycle",
        Condition::Drifted => "drifted",
    }
}

/// Every state record found under a state dir, for `status`: receivers, then senders, each
/// in the order of their files' paths.
pub fn list(state_dir: &Path) -> io::Result<Vec<StatusEntry>> {
    let mut entries = Vec::new();
    let unreadable =
        |role, path: PathBuf, error: String| StatusEntry::Unreadable { role, path, error };
    for file in json_files(&state_dir.join("targets"), "state.json")? {
        match receiver::read_state(&file) {
            Ok(Some(state)) if !Path::new(&state.target).exists() => {
                entries.push(StatusEntry::MissingTarget(state))
            }
            Ok(Some(state)) => entries.push(StatusEntry::Receiver(state)),
            Ok(None) => {}
            Err(e) => entries.push(unreadable("receiver", file, e.to_string())),
        }
    }
    for file in json_files(&state_dir.join("sources"), ".json")? {
        match read_json::<SenderStatus>(&file) {
            Ok(Some(status)) => entries.push(StatusEntry::Sender(status)),
            Ok(None) => {}
            Err(e) => entries.push(unreadable("sender", file, e.to_string())),
        }
    }
    Ok(entries)
}

/// Deletes the records named `entry` (`status --forget`): a receiver's whole state for the
/// target of that path (refused while a receiver holds its lock), and a sender's records for
/// the destination of that text (its status, manifest, kept-snapshot and audit records; a kept
/// snapshot is then removed by that sender's next start). Returns a line per record forgotten.
pub fn forget(state_dir: &Path, entry: &str) -> io::Result<Vec<String>> {
    let mut forgotten = Vec::new();
    for file in json_files(&state_dir.join("targets"), "state.json")? {
        let Ok(Some(state)) = receiver::read_state(&file) else {
            continue;
        };
        if state.target != entry {
            continue;
        }
        let paths = ReceiverPaths::new(state_dir, Path::new(&state.target));
        let Some(_lock) = paths.lock()? else {
            return Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                format!("receiver {entry} is in use (a running receiver holds its lock)"),
            ));
        };
        fs::remove_dir_all(&paths.dir)?;
        forgotten.push(format!("receiver {entry}: forgot {}", paths.dir.display()));
    }
    for file in json_files(&state_dir.join("sources"), ".json")? {
        let Ok(Some(status)) = read_json::<SenderStatus>(&file) else {
            continue;
        };
        if status.dest != entry {
            continue;
        }
        let stem = file.with_extension("");
        for extension in ["json", "manifest", "kept", "audit"] {
            match fs::remove_file(stem.with_extension(extension)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        forgotten.push(format!(
            "sender {} -> {entry}: forgot {}",
            status.source,
            stem.display()
        ));
    }
    Ok(forgotten)
}

fn json_files(root: &Path, suffix: &str) -> io::Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    let dirs = match fs::read_dir(root) {
        Ok(dirs) => dirs,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(found),
        Err(e) => return Err(e),
    };
    for dir in dirs {
        for file in fs::read_dir(dir?.path())? {
            let path = file?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if name.ends_with(suffix) && !name.starts_with(".tmp-") {
                found.push(path);
            }
        }
    }
    found.sort();
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_rfc3339_cannot_write_are_shown_as_numbers() {
        // Found by the fuzzer (fuzz/findings/state): `status` panicked on these.
        assert_eq!(format_time(1_767_225_600), "2026-01-01T00:00:00Z");
        assert_eq!(
            format_time(700_000_000_000),
            "700000000000 (not a valid time)"
        );
        let huge = 17_672_277_737_777_775_601;
        assert_eq!(format_time(huge), format!("{huge} (not a valid time)"));
    }

    #[test]
    fn atomic_write_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/b.json");
        write_json(&path, &serde_json::json!({"x": 1})).unwrap();
        write_json(&path, &serde_json::json!({"x": 2})).unwrap();
        let v: serde_json::Value = read_json(&path).unwrap().unwrap();
        assert_eq!(v["x"], 2);
        assert_eq!(fs::read_dir(dir.path().join("a")).unwrap().count(), 1);
    }

    #[test]
    fn atomic_write_removes_stale_temps_only() {
        let dir = tempfile::tempdir().unwrap();
        let old = dir.path().join(".tmp-crashed");
        let young = dir.path().join(".tmp-writing");
        fs::write(&old, b"x").unwrap();
        fs::write(&young, b"y").unwrap();
        let long_ago = SystemTime::now() - STALE_TEMP_AGE * 2;
        File::options()
            .write(true)
            .open(&old)
            .unwrap()
            .set_modified(long_ago)
            .unwrap();
        write_json(&dir.path().join("s.json"), &serde_json::json!({})).unwrap();
        assert!(!old.exists(), "a crash's temp file is removed");
        assert!(young.exists(), "a temp file being written is left alone");
    }
}
