//! The snapshot store of one file target: a directory of reflink clones, one per committed
//! generation, named by [`super::naming`] (`gen-<generation>-<created>.img`).
//!
//! * [`take`] clones the target under a partial name, fsyncs the clone, renames it to its
//!   final name (never over an existing file) and fsyncs the directory: a snapshot name is
//!   always a whole, durable clone. The caller must not write the target meanwhile (the
//!   receiver calls it after a commit, before the next cycle).
//! * [`list`]/[`scan`] read the names back; nothing else is consulted. Files whose names are
//!   not ours are reported and left alone, whatever they are.
//! * [`prune`] deletes the snapshots [`super::retention`] prunes, and partial clones left over
//!   by a crash (unless a take still holds one), and nothing else.
//! * [`restore`] clones one snapshot to a new file, never over an existing one.
//!
//! Clones are made with mode 0600 (they hold the target's data). One process at a time takes
//! and prunes snapshots of a target (its receiver); a concurrent listing or restore is safe.

use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;

use super::clone::{self, CloneFailure};
use super::error::HistoryError;
use super::naming;
use super::policy::Policy;
use super::retention::{self, Snapshot};
use super::target::{classify, TargetKind};

pub use super::naming::Entry;

/// Everything in a history directory.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Listing {
    /// The snapshots, by generation then creation time.
    pub entries: Vec<Entry>,
    /// Partial clones: a take in progress, or left over by a crash (the next [`prune`]
    /// deletes those no take holds).
    pub partial: Vec<PathBuf>,
    /// Anything else (not made by history: never touched), sorted.
    pub unknown: Vec<PathBuf>,
}

/// Checks, before the first snapshot, that history can work for `target` in `dir`: the
/// target is a regular file ([`classify`]) and a reflink clone of it can be made in `dir`
/// (created if missing), i.e. both are on one file system that has reflink. The probe clone
/// is deleted.
pub fn check(target: &Path, dir: &Path) -> Result<(), HistoryError> {
    require_file(target)?;
    create_dir(dir)?;
    let probe = dir.join(naming::probe_name(std::process::id()));
    let held = clone_fresh(target, &probe).map_err(|f| clone_error(f, target, dir, &probe))?;
    drop(held);
    std::fs::remove_file(&probe).map_err(|error| HistoryError::Io {
        what: "cannot delete the probe clone",
        path: probe,
        error,
    })
}

/// Takes a snapshot of the file `target` as it is now, as generation `generation` taken at
/// `now` (Unix seconds), in `dir` (created, mode 0700, if missing). Refuses a block device,
/// a file system without reflink, a `dir` on another file system, and a snapshot that
/// exists already under the same name.
pub fn take(target: &Path, dir: &Path, generation: u64, now: u64) -> Result<Entry, HistoryError> {
    require_file(target)?;
    create_dir(dir)?;
    let path = dir.join(naming::snapshot_name(generation, now));
    if path.symlink_metadata().is_ok() {
        return Err(HistoryError::SnapshotExists { path });
    }
    let partial = dir.join(naming::partial_name(generation, now));
    let held = clone_fresh(target, &partial).map_err(|f| clone_error(f, target, dir, &partial))?;
    let finish = || -> Result<(), HistoryError> {
        held.sync_all().map_err(|error| HistoryError::Io {
            what: "cannot fsync the snapshot",
            path: partial.clone(),
            error,
        })?;
        clone::rename_noreplace(&partial, &path).map_err(|errno| match errno {
            Errno::EEXIST => HistoryError::SnapshotExists { path: path.clone() },
            errno => HistoryError::Io {
                what: "cannot rename the snapshot to",
                path: path.clone(),
                error: errno.into(),
            },
        })
    };
    if let Err(error) = finish() {
        let _ = std::fs::remove_file(&partial);
        return Err(error);
    }
    drop(held);
    sync_dir(dir)?;
    Ok(Entry {
        generation,
        created: now,
        path,
    })
}

/// The snapshots in `dir`, by generation then creation time (none if `dir` does not exist).
/// Files not made by history and leftover partial clones are reported in the log and
/// skipped; [`scan`] returns them.
pub fn list(dir: &Path) -> Result<Vec<Entry>, HistoryError> {
    let listing = scan(dir)?;
    report(dir, &listing);
    Ok(listing.entries)
}

/// Everything in `dir`: snapshots, partial clones, and names not ours (none if `dir` does not
/// exist). Only names and file types are read.
pub fn scan(dir: &Path) -> Result<Listing, HistoryError> {
    let io_error = |error| HistoryError::Io {
        what: "cannot list the history dir",
        path: dir.to_owned(),
        error,
    };
    let mut listing = Listing::default();
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(listing),
        Err(error) => return Err(io_error(error)),
    };
    for entry in entries {
        let entry = entry.map_err(io_error)?;
        let path = entry.path();
        // Not followed: a symlink or a directory under one of our names is not ours.
        let is_file = entry.file_type().map_err(io_error)?.is_file();
        let name = entry.file_name();
        let name = name.to_str().filter(|_| is_file);
        match name.map(|n| (naming::parse_snapshot(n), naming::is_partial(n))) {
            Some((Some((generation, created)), _)) => listing.entries.push(Entry {
                generation,
                created,
                path,
            }),
            Some((None, true)) => listing.partial.push(path),
            _ => listing.unknown.push(path),
        }
    }
    listing.entries.sort_by_key(|e| (e.generation, e.created));
    listing.partial.sort();
    listing.unknown.sort();
    Ok(listing)
}

/// Deletes the snapshots in `dir` that `policy` prunes at `now` (Unix seconds), by the rule
/// of [`super::retention`], and the partial clones left over by a crash; returns the deleted
/// snapshots. Files not made by history are never deleted.
pub fn prune(dir: &Path, policy: &Policy, now: u64) -> Result<Vec<Entry>, HistoryError> {
    let listing = scan(dir)?;
    report(dir, &listing);
    let snapshots: Vec<Snapshot> = listing.entries.iter().map(Entry::snapshot).collect();
    let verdicts = retention::verdicts(policy, &snapshots, now);
    let mut pruned = Vec::new();
    for (entry, verdict) in listing.entries.into_iter().zip(verdicts) {
        if verdict.is_keep() {
            continue;
        }
        match std::fs::remove_file(&entry.path) {
            Ok(()) => pruned.push(entry),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(error) => {
                return Err(HistoryError::Io {
                    what: "cannot delete the snapshot",
                    path: entry.path,
                    error,
                })
            }
        }
    }
    let mut removed_partial = false;
    for path in listing.partial {
        match clone::remove_unless_held(&path) {
            Ok(true) => {
                tracing::info!(file = %path.display(), "removed a partial snapshot left over by an earlier run");
                removed_partial = true;
            }
            Ok(false) => {}
            Err(error) => {
                return Err(HistoryError::Io {
                    what: "cannot delete the partial snapshot",
                    path,
                    error,
                })
            }
        }
    }
    if !pruned.is_empty() || removed_partial {
        sync_dir(dir)?;
    }
    Ok(pruned)
}

/// Makes `dest`, a new file, a reflink clone of the snapshot of `generation` in `dir`, and
/// returns that snapshot. Refuses to overwrite anything at `dest` (even a dangling symlink),
/// and a `dest` on another file system than `dir`. The file is complete and durable once this
/// returns (mode 0600); on failure nothing is left at `dest`.
pub fn restore(dir: &Path, generation: u64, dest: &Path) -> Result<Entry, HistoryError> {
    let entries = scan(dir)?.entries;
    let mut matching: Vec<Entry> = entries
        .iter()
        .filter(|e| e.generation == generation)
        .cloned()
        .collect();
    let entry = match matching.len() {
        0 => {
            let mut available: Vec<u64> = entries.iter().map(|e| e.generation).collect();
            available.dedup();
            return Err(HistoryError::NoSuchGeneration {
                dir: dir.to_owned(),
                generation,
                available,
            });
        }
        1 => matching.remove(0),
        _ => {
            return Err(HistoryError::Ambiguous {
                generation,
                paths: matching.into_iter().map(|e| e.path).collect(),
            })
        }
    };
    let partial = super::naming::restore_partial(dest)?;
    let dest_dir = partial
        .parent()
        .expect("a partial name beside the destination");
    let held = clone_fresh(&entry.path, &partial).map_err(|f| match f {
        CloneFailure::Ficlone(Errno::EXDEV) => HistoryError::RestoreCrossDevice {
            snapshot: entry.path.clone(),
            dir: dir.to_owned(),
            dest: dest.to_owned(),
        },
        f => clone_error(f, &entry.path, dest_dir, &partial),
    })?;
    let finish = || -> Result<(), HistoryError> {
        held.sync_all().map_err(|error| HistoryError::Io {
            what: "cannot fsync the restored file",
            path: partial.clone(),
            error,
        })?;
        super::naming::put_restored(&partial, dest)
    };
    if let Err(error) = finish() {
        let _ = std::fs::remove_file(&partial);
        return Err(error);
    }
    drop(held);
    sync_dir(dest_dir)?;
    Ok(entry)
}

/// Refuses anything but a regular file (a thin LV's snapshots are made by `thin.rs`).
fn require_file(target: &Path) -> Result<(), HistoryError> {
    match classify(target)? {
        TargetKind::File => Ok(()),
        TargetKind::ThinLv { .. } => Err(HistoryError::NotAFile {
            target: target.to_owned(),
        }),
    }
}

/// Logs what a listing found besides snapshots.
fn report(dir: &Path, listing: &Listing) {
    if !listing.unknown.is_empty() {
        tracing::warn!(
            dir = %dir.display(),
            files = ?listing.unknown,
            "files not made by blkmirror history in the history dir: left alone"
        );
    }
    if !listing.partial.is_empty() {
        tracing::warn!(
            dir = %dir.display(),
            files = ?listing.partial,
            "partial snapshots in the history dir (a take in progress, or left by a crash: the next prune deletes those)"
        );
    }
}

/// [`clone::clone_new`], after deleting a leftover file of the same partial name that no one
/// holds (a crash of an earlier take or probe of ours).
fn clone_fresh(
    source: &Path,
    dest: &Path,
) -> Result<nix::fcntl::Flock<std::fs::File>, CloneFailure> {
    match clone::clone_new(source, dest) {
        Err(CloneFailure::Create(e)) if e.kind() == io::ErrorKind::AlreadyExists => {
            clone::remove_unless_held(dest).map_err(CloneFailure::Create)?;
            clone::clone_new(source, dest)
        }
        result => result,
    }
}

/// The error for a failed clone of `source` into `dest`, a new file in `dir`.
fn clone_error(failure: CloneFailure, source: &Path, dir: &Path, dest: &Path) -> HistoryError {
    match failure {
        CloneFailure::Ficlone(Errno::EXDEV) => HistoryError::CrossDevice {
            target: source.to_owned(),
            dir: dir.to_owned(),
        },
        CloneFailure::Ficlone(errno) if clone::no_reflink(errno) => HistoryError::NoReflink {
            dir: dir.to_owned(),
            errno,
        },
        CloneFailure::Ficlone(errno) => HistoryError::CloneFailed {
            from: source.to_owned(),
            to: dest.to_owned(),
            errno,
        },
        CloneFailure::Open(error) => HistoryError::Io {
            what: "cannot open",
            path: source.to_owned(),
            error,
        },
        CloneFailure::Create(error) => HistoryError::Io {
            what: "cannot create a clone in",
            path: dir.to_owned(),
            error,
        },
    }
}

/// Creates `dir` and its missing parents (mode 0700), making the new entries durable.
fn create_dir(dir: &Path) -> Result<(), HistoryError> {
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|error| HistoryError::Io {
            what: "cannot create the history dir",
            path: dir.to_owned(),
            error,
        })?;
    match dir.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => sync_dir(parent),
        _ => Ok(()),
    }
}

fn sync_dir(dir: &Path) -> Result<(), HistoryError> {
    clone::sync_dir(dir).map_err(|error| HistoryError::Io {
        what: "cannot fsync the directory",
        path: dir.to_owned(),
        error,
    })
}
