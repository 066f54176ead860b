//! The `reflink` provider, for image files on a filesystem that shares extents (xfs with
//! reflink, btrfs): each cycle clones the image with FICLONE, an atomic metadata-only copy, and
//! reads the clone, deleted after the cycle.
//!
//! Clones go to `STATE/snapshots/`; FICLONE only works within one filesystem, so when the state
//! dir is elsewhere (EXDEV) they go next to the source as hidden `.blkmirror-snap-...` files. A
//! clone is made under a probe name and renamed once complete, so a `blkmirror-snap-*` file is
//! always a whole clone. Each clone is held with an exclusive `flock` while in use: the stale
//! clean-up skips locked clones (another live sender of the same source).

use std::fs::File;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

use super::naming::{is_own, probe_name, source_key, Namer};
use super::{Consistency, FrozenView, SnapshotError, SnapshotOptions, SnapshotProvider};
use crate::fsclone::{self, clone_new, rename_noreplace, CloneFailure};

/// Clones of one image file.
pub struct Reflink {
    source: PathBuf,
    /// Where clones go: `STATE/snapshots`, or the source's directory.
    dir: PathBuf,
    /// Clones next to the source are hidden (`.` prefix).
    hidden: bool,
    state_clones: PathBuf,
    namer: Namer,
}

impl Reflink {
    /// Checks that `source` can be cloned (a probe of its first block, deleted at once) and where
    /// clones go.
    pub fn new(source: &Path, options: &SnapshotOptions) -> Result<Reflink, SnapshotError> {
        let meta = std::fs::metadata(source).map_err(|error| SnapshotError::Io {
            what: "cannot stat source",
            path: source.to_owned(),
            error,
            hint: "check the path",
        })?;
        if !meta.is_file() {
            return Err(SnapshotError::NotAFile {
                source_path: source.to_owned(),
            });
        }
        let state_clones = options.state_dir.join("snapshots");
        create_private_dir(&state_clones)?;
        let key = source_key(&options.source_identity);
        let source_dir = source
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_path_buf();
        let (dir, hidden) = match probe(source, &state_clones, &key, false) {
            Ok(()) => (state_clones.clone(), false),
            Err(CloneFailure::Ficlone(Errno::EXDEV)) => {
                probe(source, &source_dir, &key, true)
                    .map_err(|f| failure(source, &source_dir, f))?;
                tracing::info!(
                    source = %source.display(),
                    dir = %source_dir.display(),
                    "the state dir is on another filesystem than the source: reflink clones go next to the source, as hidden .blkmirror-snap-* files"
                );
                (source_dir, true)
            }
            Err(f) => return Err(failure(source, &state_clones, f)),
        };
        Ok(Reflink {
            source: source.to_owned(),
            dir,
            hidden,
            state_clones,
            namer: Namer::new(key),
        })
    }

    fn file_name(&self, name: &str) -> String {
        if self.hidden {
            format!(".{name}")
        } else {
            name.to_string()
        }
    }

    /// The directories clones of this source may have been left in.
    fn clone_dirs(&self) -> Vec<PathBuf> {
        let mut dirs = vec![self.state_clones.clone()];
        if let Some(parent) = self.source.parent().filter(|p| !p.as_os_str().is_empty()) {
            if parent != self.state_clones {
                dirs.push(parent.to_path_buf());
            }
        }
        dirs
    }
}

impl SnapshotProvider for Reflink {
    fn name(&self) -> &'static str {
        "reflink"
    }

    fn cleanup_stale(&self, _source: &Path, spare: &[String]) -> Result<(), SnapshotError> {
        for dir in self.clone_dirs() {
            let entries = match std::fs::read_dir(&dir) {
                Ok(entries) => entries,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(error) => {
                    return Err(SnapshotError::Io {
                        what: "cannot list clones in",
                        path: dir,
                        error,
                        hint: "check the directory's permissions",
                    })
                }
            };
            for entry in entries.flatten() {
                let name = entry.file_name();
                let Some(name) = name.to_str() else { continue };
                let is_file = entry.file_type().is_ok_and(|t| t.is_file());
                if !is_file || !is_own(name, self.namer.key()) || spare.iter().any(|s| s == name) {
                    continue;
                }
                remove_stale(&entry.path())?;
            }
        }
        Ok(())
    }

    fn freeze(&self, source: &Path, _stop: &AtomicBool) -> Result<FrozenView, SnapshotError> {
        let partial = self.dir.join(self.file_name(&probe_name(self.namer.key())));
        let clone = clone_new(source, &partial).map_err(|f| failure(source, &self.dir, f))?;
        // Never over a kept clone: a name that exists already is skipped.
        let mut path = self.dir.join(self.file_name(&self.namer.next()));
        let mut attempts = 0;
        while let Err(errno) = rename_noreplace(&partial, &path) {
            attempts += 1;
            if errno != Errno::EEXIST || attempts >= 5 {
                let _ = std::fs::remove_file(&partial);
                return Err(SnapshotError::Io {
                    what: "cannot rename the clone",
                    path: partial,
                    error: errno.into(),
                    hint: "check the directory's permissions",
                });
            }
            path = self.dir.join(self.file_name(&self.namer.next()));
        }
        tracing::debug!(clone = %path.display(), "reflink clone taken");
        Ok(clone_view(clone, path))
    }

    fn reopen(&self, name: &str) -> Result<Option<FrozenView>, SnapshotError> {
        if !is_own(name.trim_start_matches('.'), self.namer.key()) {
            return Ok(None);
        }
        let path = self.dir.join(name);
        match File::open(&path) {
            Ok(clone) => Ok(Some(clone_view(clone, path))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(error) => Err(SnapshotError::Io {
                what: "cannot open the kept clone",
                path,
                error,
                hint: "check the directory's permissions",
            }),
        }
    }
}

/// The view of a clone at `path`: held with an exclusive `flock` while in use (the stale
/// clean-up of another sender skips it), deleted on release.
fn clone_view(clone: File, path: PathBuf) -> FrozenView {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let held = Flock::lock(clone, FlockArg::LockExclusiveNonblock).map_err(|(file, _)| file);
    let removed = path.clone();
    let release = move || {
        let result = std::fs::remove_file(&removed);
        drop(held);
        match result {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(error) => Err(SnapshotError::Io {
                what: "cannot delete the clone",
                path: removed,
                error,
                hint: "delete it by hand (the next start of the sender also removes it)",
            }),
        }
    };
    FrozenView::new(path, Consistency::CrashConsistent, Some(Box::new(release))).with_name(name)
}

/// Checks that `source` clones into `dir` (a range clone under the probe name, deleted at
/// once: see [`fsclone::probe_clone`]).
fn probe(source: &Path, dir: &Path, key: &str, hidden: bool) -> Result<(), CloneFailure> {
    let name = probe_name(key);
    let path = dir.join(if hidden { format!(".{name}") } else { name });
    fsclone::probe_clone(source, &path)
}

/// Errors that mean "this filesystem cannot reflink" rather than "this clone failed".
fn no_reflink(errno: Errno) -> bool {
    fsclone::no_reflink(errno) || errno == Errno::EXDEV
}

/// `Operation not supported`: the C library's text for an errno.
fn errno_text(errno: Errno) -> String {
    let text = io::Error::from_raw_os_error(errno as i32).to_string();
    match text.find(" (os error") {
        Some(end) => text[..end].to_string(),
        None => text,
    }
}

fn failure(source: &Path, dir: &Path, failure: CloneFailure) -> SnapshotError {
    match failure {
        CloneFailure::Ficlone(errno) if no_reflink(errno) => SnapshotError::NoReflink {
            source_path: source.to_owned(),
            errno: errno_text(errno),
        },
        CloneFailure::Ficlone(errno) => SnapshotError::CloneFailed {
            source_path: source.to_owned(),
            dir: dir.to_owned(),
            errno: errno_text(errno),
        },
        CloneFailure::Create(error) | CloneFailure::Open(error) => SnapshotError::Io {
            what: "cannot create a reflink clone in",
            path: dir.to_owned(),
            error,
            hint: "check that the directory exists, is writable and has free inodes",
        },
    }
}

fn create_private_dir(dir: &Path) -> Result<(), SnapshotError> {
    let io_error = |error| SnapshotError::Io {
        what: "cannot create the clone directory",
        path: dir.to_owned(),
        error,
        hint: "check --state-dir and its permissions",
    };
    std::fs::create_dir_all(dir).map_err(io_error)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io_error)
}

/// Deletes a stale clone unless another process holds it.
fn remove_stale(path: &Path) -> Result<(), SnapshotError> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(error) => {
            return Err(SnapshotError::Io {
                what: "cannot open a stale clone",
                path: path.to_owned(),
                error,
                hint: "delete it by hand",
            })
        }
    };
    let _lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => lock,
        Err((_, Errno::EWOULDBLOCK)) => {
            tracing::warn!(clone = %path.display(), "leaving a clone of this source in place: it is in use (another sender of the same source?)");
            return Ok(());
        }
        Err((_, errno)) => {
            return Err(SnapshotError::Io {
                what: "cannot lock a stale clone",
                path: path.to_owned(),
                error: io::Error::from_raw_os_error(errno as i32),
                hint: "delete it by hand",
            })
        }
    };
    match std::fs::remove_file(path) {
        Ok(()) => {
            tracing::info!(clone = %path.display(), "removed a clone left behind by an earlier run");
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(SnapshotError::Io {
            what: "cannot delete a stale clone",
            path: path.to_owned(),
            error,
            hint: "delete it by hand",
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_words() {
        assert_eq!(errno_text(Errno::EOPNOTSUPP), "Operation not supported");
        assert!(no_reflink(Errno::EOPNOTSUPP) && no_reflink(Errno::EXDEV));
        assert!(!no_reflink(Errno::ENOSPC));
    }

    /// On the test machine's /tmp (ext4 or tmpfs, no reflink) the provider refuses, names
    /// the way out, and leaves no probe behind.
    #[test]
    fn refuses_without_reflink_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("image");
        std::fs::write(&source, vec![7u8; 8192]).unwrap();
        let state = dir.path().join("state");
        let options = SnapshotOptions {
            state_dir: state.clone(),
            source_identity: format!("file:{}", source.display()),
            ..SnapshotOptions::default()
        };
        match Reflink::new(&source, &options) {
            Err(e @ SnapshotError::NoReflink { .. }) => {
                let text = e.to_string();
                assert!(text.contains("--snapshot none"), "{text}");
                assert!(text.contains("FICLONE"), "{text}");
            }
            Err(other) => panic!("unexpected error: {other}"),
            // A reflink-capable /tmp (xfs, btrfs): then a clone must work.
            Ok(provider) => {
                let view = provider.freeze(&source, &AtomicBool::new(false)).unwrap();
                assert_eq!(std::fs::read(&view.path).unwrap(), vec![7u8; 8192]);
                view.release().unwrap();
            }
        }
        let left: Vec<_> = std::fs::read_dir(state.join("snapshots"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert!(left.is_empty(), "left behind: {left:?}");
    }

    #[test]
    fn refuses_a_non_file() {
        let dir = tempfile::tempdir().unwrap();
        let options = SnapshotOptions {
            state_dir: dir.path().join("state"),
            ..SnapshotOptions::default()
        };
        let e = Reflink::new(dir.path(), &options)
            .err()
            .expect("a directory");
        assert!(matches!(e, SnapshotError::NotAFile { .. }), "{e}");
    }
}
