//! `--pre-snapshot` / `--post-snapshot`: shell commands run (`sh -c`) around each snapshot, e.g.
//! to flush a database or `fsfreeze` a mounted filesystem, making the snapshot
//! application-consistent. A provider is wrapped in [`Hooked`] when either is given.
//!
//! Order: pre hook, snapshot, post hook. The post hook runs after every attempt once the pre
//! hook was started, even when the pre hook or the snapshot failed, so a thaw is never
//! skipped. A failing pre hook aborts the cycle; a failing post hook releases the snapshot and
//! fails the cycle too. Hooks see `BLKMIRROR_SOURCE` and `BLKMIRROR_HOOK` (`pre` or `post`).
//! Every hook is killed (with its process group) after its time limit (`--hook-timeout`,
//! default 60 s) and then counts as failed.
//!
//! [`run_post_commit`] runs the `--post-commit` hooks of both sides: after a committed
//! generation, with the cycle's figures in `BLKMIRROR_*` variables; a failure is logged and
//! changes nothing (the generation is committed).

use std::path::Path;
use std::sync::atomic::AtomicBool;

use std::time::Duration;

use super::command::{describe_status, find_program, run_bounded, Bounded};
use super::{FrozenView, SnapshotError, SnapshotProvider, Space};

/// A provider with hooks around its snapshots.
pub struct Hooked {
    inner: Box<dyn SnapshotProvider>,
    pre: Option<String>,
    post: Option<String>,
    timeout: Duration,
}

impl Hooked {
    /// `inner`, wrapped if any hook is set.
    pub fn wrap(
        inner: Box<dyn SnapshotProvider>,
        pre: Option<String>,
        post: Option<String>,
        timeout: Duration,
    ) -> Box<dyn SnapshotProvider> {
        if pre.is_none() && post.is_none() {
            return inner;
        }
        Box::new(Hooked {
            inner,
            pre,
            post,
            timeout,
        })
    }

    fn post(&self, source: &Path) -> Result<(), SnapshotError> {
        match &self.post {
            // A thaw is never skipped, not even on a stop.
            Some(command) => run_hook(
                "post",
                command,
                source,
                (&AtomicBool::new(false), self.timeout),
            ),
            None => Ok(()),
        }
    }
}

impl SnapshotProvider for Hooked {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn cleanup_stale(&self, source: &Path, spare: &[String]) -> Result<(), SnapshotError> {
        self.inner.cleanup_stale(source, spare)
    }

    fn reopen(&self, name: &str) -> Result<Option<FrozenView>, SnapshotError> {
        self.inner.reopen(name)
    }

    fn space(&self, snapshots: &[&str]) -> Space {
        self.inner.space(snapshots)
    }

    fn freeze(&self, source: &Path, stop: &AtomicBool) -> Result<FrozenView, SnapshotError> {
        if let Some(command) = &self.pre {
            if let Err(pre_failed) = run_hook("pre", command, source, (stop, self.timeout)) {
                if let Err(e) = self.post(source) {
                    tracing::error!(error = %e, "post-snapshot hook after a failed pre-snapshot hook");
                }
                return Err(pre_failed);
            }
        }
        let view = self.inner.freeze(source, stop);
        let post = self.post(source);
        match (view, post) {
            (Ok(view), Ok(())) => Ok(view),
            (Ok(view), Err(post_failed)) => {
                if let Err(e) = view.release() {
                    tracing::error!(error = %e, "could not release the snapshot after the post-snapshot hook failed");
                }
                Err(post_failed)
            }
            (Err(snapshot_failed), Err(post_failed)) => {
                tracing::error!(error = %post_failed, "post-snapshot hook after a failed snapshot");
                Err(snapshot_failed)
            }
            (Err(snapshot_failed), Ok(())) => Err(snapshot_failed),
        }
    }
}

/// Runs one hook with `sh -c`; its stdout and stderr are logged, and a failure names the
/// command, its exit status and its last stderr line. A stop kills the hook (its whole
/// process group) at once: [`SnapshotError::Stopped`].
pub fn run_hook(
    which: &'static str,
    command: &str,
    source: &Path,
    (stop, timeout): (&AtomicBool, Duration),
) -> Result<(), SnapshotError> {
    let source_text = source.display().to_string();
    let env = [
        ("BLKMIRROR_SOURCE", source_text.as_str()),
        ("BLKMIRROR_HOOK", which),
    ];
    let ran = match run_shell(command, &env, stop, timeout) {
        Err(error) => {
            return Err(SnapshotError::HookSpawn {
                which,
                command: command.to_string(),
                error,
            })
        }
        Ok(Bounded::Stopped) => {
            tracing::info!(hook = which, "hook killed: stop requested");
            return Err(SnapshotError::Stopped);
        }
        Ok(Bounded::TimedOut) => {
            return Err(SnapshotError::Hook {
                which,
                command: command.to_string(),
                status: format!(
                    "killed after the hook timeout of {}",
                    humantime::format_duration(timeout)
                ),
                last_line: "see the log for its output".into(),
            })
        }
        Ok(Bounded::Finished(ran)) => ran,
    };
    if ran.success() {
        return Ok(());
    }
    Err(SnapshotError::Hook {
        which,
        command: command.to_string(),
        status: describe_status(&ran.status),
        last_line: ran.last_stderr_line(),
    })
}

/// Runs `command` with `sh -c` and `env`, bounded by `stop` and `timeout` (zero: no limit,
/// the default of [`super::SnapshotOptions`] built in code); logs what it
/// printed, a line at a time (field `hook`).
fn run_shell(
    command: &str,
    env: &[(&str, &str)],
    stop: &AtomicBool,
    timeout: Duration,
) -> std::io::Result<Bounded> {
    let sh = find_program("sh").unwrap_or_else(|| "/bin/sh".into());
    let args = ["-c".to_string(), command.to_string()];
    let which = env
        .iter()
        .find(|(k, _)| *k == "BLKMIRROR_HOOK")
        .map_or("hook", |(_, v)| v);
    let limit = Some(timeout).filter(|t| !t.is_zero());
    let ran = run_bounded(&sh, &args, env, stop, limit)?;
    if let Bounded::Finished(ran) = &ran {
        for line in ran.stdout.lines().chain(ran.stderr.lines()) {
            if !line.trim().is_empty() {
                tracing::info!(hook = which, "{line}");
            }
        }
    }
    Ok(ran)
}

/// A `--post-commit` hook: its command and time limit.
#[derive(Clone, Debug)]
pub struct PostCommit {
    /// The shell command.
    pub command: String,
    /// Killed after this long.
    pub timeout: Duration,
}

/// Runs a `--post-commit` hook with `env` (besides `BLKMIRROR_HOOK=post-commit`); a failure
/// is logged (event `hook_failed`) and changes nothing else. Blocking.
pub fn run_post_commit(hook: &PostCommit, env: &[(&str, String)]) {
    let mut all: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    all.push(("BLKMIRROR_HOOK", "post-commit"));
    let failed = match run_shell(&hook.command, &all, &AtomicBool::new(false), hook.timeout) {
        Ok(Bounded::Finished(ran)) if ran.success() => return,
        Ok(Bounded::Finished(ran)) => format!(
            "{}: {}",
            describe_status(&ran.status),
            ran.last_stderr_line()
        ),
        Ok(Bounded::TimedOut) => format!(
            "killed after the hook timeout of {}",
            humantime::format_duration(hook.timeout)
        ),
        Ok(Bounded::Stopped) => "stopped".into(),
        Err(e) => format!("cannot start it: {e}"),
    };
    tracing::warn!(event = "hook_failed", hook = "post-commit", command = %hook.command, error = %failed, "post-commit hook failed (the generation is committed)");
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use super::*;
    use crate::snapshot::Consistency;

    /// A provider that records freezes and releases, and can be told to fail.
    struct Fake {
        fail: bool,
        released: Arc<AtomicUsize>,
    }

    impl SnapshotProvider for Fake {
        fn name(&self) -> &'static str {
            "fake"
        }

        fn freeze(&self, source: &Path, _stop: &AtomicBool) -> Result<FrozenView, SnapshotError> {
            if self.fail {
                return Err(SnapshotError::Failed {
                    source_path: source.to_owned(),
                    reason: "fake failure".into(),
                });
            }
            let released = self.released.clone();
            Ok(FrozenView::new(
                source.to_owned(),
                Consistency::CrashConsistent,
                Some(Box::new(move || {
                    released.fetch_add(1, Ordering::SeqCst);
                    Ok(())
                })),
            ))
        }
    }

    struct Case {
        dir: tempfile::TempDir,
        released: Arc<AtomicUsize>,
    }

    impl Case {
        fn new() -> Case {
            Case {
                dir: tempfile::tempdir().unwrap(),
                released: Arc::new(AtomicUsize::new(0)),
            }
        }

        fn log(&self) -> PathBuf {
            self.dir.path().join("log")
        }

        /// A hook that appends `word` to the log, then runs `then`.
        fn hook(&self, word: &str, then: &str) -> Option<String> {
            Some(format!(
                "echo {word} $BLKMIRROR_HOOK >> '{}'; {then}",
                self.log().display()
            ))
        }

        fn provider(
            &self,
            fail: bool,
            pre: Option<String>,
            post: Option<String>,
        ) -> Box<dyn SnapshotProvider> {
            let fake = Fake {
                fail,
                released: self.released.clone(),
            };
            Hooked::wrap(Box::new(fake), pre, post, Duration::from_secs(60))
        }

        fn logged(&self) -> String {
            std::fs::read_to_string(self.log()).unwrap_or_default()
        }
    }

    #[test]
    fn hooks_run_around_the_snapshot() {
        let c = Case::new();
        let p = c.provider(false, c.hook("a", "true"), c.hook("b", "true"));
        let view = p
            .freeze(Path::new("/dev/x"), &AtomicBool::new(false))
            .unwrap();
        assert_eq!(c.logged(), "a pre\nb post\n");
        drop(view);
        assert_eq!(c.released.load(Ordering::SeqCst), 1);
        assert_eq!(p.name(), "fake");
    }

    #[test]
    fn failing_pre_hook_aborts_and_still_thaws() {
        let c = Case::new();
        let p = c.provider(
            false,
            c.hook("a", "echo >&2 flush failed; exit 3"),
            c.hook("b", "true"),
        );
        let e = p
            .freeze(Path::new("/dev/x"), &AtomicBool::new(false))
            .err()
            .expect("pre hook fails");
        let text = e.to_string();
        assert!(text.starts_with("pre-snapshot hook `echo a"), "{text}");
        assert!(text.contains("failed (exit 3): flush failed"), "{text}");
        assert_eq!(c.logged(), "a pre\nb post\n");
        assert_eq!(c.released.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn failing_post_hook_releases_the_snapshot() {
        let c = Case::new();
        let p = c.provider(false, None, Some("echo >&2 thaw broke; exit 9".into()));
        let e = p
            .freeze(Path::new("/dev/x"), &AtomicBool::new(false))
            .err()
            .expect("post hook fails");
        assert_eq!(
            e.to_string(),
            "post-snapshot hook `echo >&2 thaw broke; exit 9` failed (exit 9): thaw broke; the cycle was aborted: fix the command or drop --post-snapshot"
        );
        assert_eq!(c.released.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn post_hook_runs_when_the_snapshot_fails() {
        let c = Case::new();
        let p = c.provider(true, c.hook("a", "true"), c.hook("b", "false"));
        let e = p
            .freeze(Path::new("/dev/x"), &AtomicBool::new(false))
            .err()
            .expect("snapshot fails");
        assert!(e.to_string().contains("fake failure"), "{e}");
        assert_eq!(c.logged(), "a pre\nb post\n");
    }

    #[test]
    fn no_hooks_no_wrapper() {
        let c = Case::new();
        let p = c.provider(false, None, None);
        assert_eq!(p.name(), "fake");
        drop(
            p.freeze(Path::new("/dev/x"), &AtomicBool::new(false))
                .unwrap(),
        );
        assert_eq!(c.released.load(Ordering::SeqCst), 1);
    }
}
