//! One receiver, many targets (`receive --listen ADDR --targets FILE`): the targets file, and
//! the choice of a connection's target by the name its sender gives (`tls://HOST:PORT/NAME`,
//! the `Open` message), checked against the peers allowed for that target before the target
//! is locked, opened or written.
//!
//! The file is TOML, one table per target, keyed by its name:
//!
//! ```toml
//! [web1]
//! path = "/srv/mirror/web1.img"        # file or block device; absolute
//! allow = ["sha256:3f1c..."]           # senders that may write it (at least one)
//! create = true                        # create a missing file target (default false)
//! max_size = "2T"                      # largest size a sender may make it (default: free space)
//! keep = "24h:hourly,7d:daily"          # history on the target, as `receive --keep`
//! ```
//!
//! Each target keeps its own lock, state and manifest under the receiver's state dir (keyed
//! by its path, as for a single target). Two names for one path are refused.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::transport::dest::check_target_name;
use crate::transport::tls::parse_fingerprint;

use super::{GrowthLimit, ReceiverConfig};

/// The targets of a receiver that serves several, by name.
#[derive(Debug)]
pub struct NamedTargets {
    /// Each target's configuration and the peers allowed to write it.
    pub targets: BTreeMap<String, NamedTarget>,
    /// Bound on the wait for a sender's `Open` (and everything after it).
    pub peer_timeout: Option<std::time::Duration>,
}

/// One named target.
#[derive(Debug)]
pub struct NamedTarget {
    /// How to serve it.
    pub config: Arc<ReceiverConfig>,
    /// Certificate fingerprints (SHA-256) of the senders allowed to write it.
    pub allowed: Vec<[u8; 32]>,
}

/// Why a targets file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TargetsError {
    /// The file could not be read.
    #[error("cannot read targets file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML of the expected shape.
    #[error("targets file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong, with its line and column.
        message: String,
    },
    /// An entry is not usable.
    #[error("targets file {path}: target {name:?}: {message}")]
    Entry {
        /// The file.
        path: PathBuf,
        /// The target's name.
        name: String,
        /// What is wrong with it.
        message: String,
    },
}

/// The tables of one targets file.
fn parse_entries(path: &Path, text: &str) -> Result<BTreeMap<String, Entry>, TargetsError> {
    toml::from_str(text).map_err(|e| TargetsError::Parse {
        path: path.to_owned(),
        message: e.to_string().trim_end().replace('\n', " "),
    })
}

/// One table of the file, as written.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    path: PathBuf,
    allow: Vec<String>,
    #[serde(default)]
    create: bool,
    max_size: Option<String>,
    keep: Option<String>,
}

/// What every target shares: from the `receive` command line.
#[derive(Clone, Debug)]
pub struct Shared {
    /// `--state-dir`.
    pub state_dir: PathBuf,
    /// `--threads`.
    pub threads: usize,
    /// `--scrub-every` / `--scrub-rate`, for every target.
    pub scrub: Option<super::ScrubSchedule>,
    /// `--peer-timeout`.
    pub peer_timeout: Option<std::time::Duration>,
}

impl Shared {
    /// The configuration of one target served with these settings.
    pub fn config(
        &self,
        target: PathBuf,
        create: bool,
        max_size: GrowthLimit,
        history: Option<super::KeepHistory>,
    ) -> ReceiverConfig {
        ReceiverConfig {
            target,
            create,
            state_dir: self.state_dir.clone(),
            threads: self.threads,
            scrub: self.scrub,
            max_size,
            peer_timeout: self.peer_timeout,
            history,
            on_commit: None,
        }
    }
}

impl NamedTargets {
    /// Reads a targets file, or every `*.toml` file of a directory (in name order; a name
    /// defined twice is an error).
    pub fn load(path: &Path, shared: &Shared) -> Result<NamedTargets, TargetsError> {
        let read = |file: &Path| {
            std::fs::read_to_string(file).map_err(|source| TargetsError::Read {
                path: file.to_owned(),
                source,
            })
        };
        let files = match path.is_dir() {
            false => vec![path.to_owned()],
            true => {
                let listing = std::fs::read_dir(path).map_err(|source| TargetsError::Read {
                    path: path.to_owned(),
                    source,
                })?;
                let mut files: Vec<PathBuf> = listing
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.extension().is_some_and(|x| x == "toml") && p.is_file())
                    .collect();
                files.sort();
                files
            }
        };
        let mut all: BTreeMap<String, (PathBuf, Entry)> = BTreeMap::new();
        for file in files {
            for (name, entry) in parse_entries(&file, &read(&file)?)? {
                if let Some((other, _)) = all.get(&name) {
                    return Err(TargetsError::Entry {
                        path: file.clone(),
                        name,
                        message: format!("also defined in {}", other.display()),
                    });
                }
                all.insert(name, (file.clone(), entry));
            }
        }
        Self::build(path, all, shared)
    }

    /// Checks the text of a targets file (`path` names it in errors).
    pub fn parse(path: &Path, text: &str, shared: &Shared) -> Result<NamedTargets, TargetsError> {
        let entries = parse_entries(path, text)?;
        let all = entries
            .into_iter()
            .map(|(name, entry)| (name, (path.to_owned(), entry)))
            .collect();
        Self::build(path, all, shared)
    }

    fn build(
        path: &Path,
        entries: BTreeMap<String, (PathBuf, Entry)>,
        shared: &Shared,
    ) -> Result<NamedTargets, TargetsError> {
        if entries.is_empty() {
            return Err(TargetsError::Parse {
                path: path.to_owned(),
                message: "no targets (one [NAME] table per target)".into(),
            });
        }
        let mut targets = BTreeMap::new();
        let mut paths: BTreeMap<PathBuf, String> = BTreeMap::new();
        for (name, (path, entry)) in entries {
            let bad = |message: String| TargetsError::Entry {
                path: path.clone(),
                name: name.clone(),
                message,
            };
            check_target_name(&name).map_err(&bad)?;
            if !entry.path.is_absolute() {
                return Err(bad(format!(
                    "path {} is not absolute",
                    entry.path.display()
                )));
            }
            if let Some(other) = paths.insert(entry.path.clone(), name.clone()) {
                return Err(bad(format!(
                    "path {} is also target {other:?}: one target, one name",
                    entry.path.display()
                )));
            }
            if entry.allow.is_empty() {
                return Err(bad(
                    "allow is empty: name at least one sender's fingerprint".into(),
                ));
            }
            let allowed = entry
                .allow
                .iter()
                .map(|fp| parse_fingerprint(fp).map_err(|e| bad(format!("allow: {e}"))))
                .collect::<Result<Vec<_>, _>>()?;
            let max_size = match &entry.max_size {
                None => GrowthLimit::FreeSpace,
                Some(text) => GrowthLimit::AtMost(
                    crate::units::parse_size(text).map_err(|e| bad(format!("max_size: {e}")))?,
                ),
            };
            if entry.keep.is_some() && entry.path.exists() {
                // As `receive --keep` does at start: a target history cannot keep is refused
                // now, not at its first commit.
                let store = crate::history::Store::for_target(&entry.path, None);
                let store = store.map_err(|e| bad(format!("keep: {e}")))?;
                store
                    .check(&entry.path)
                    .map_err(|e| bad(format!("keep: {e}")))?;
            }
            let history = match &entry.keep {
                None => None,
                Some(spec) => Some(super::KeepHistory {
                    dir: super::KeepHistory::default_dir(&entry.path),
                    policy: spec.parse().map_err(|e| bad(format!("keep: {e}")))?,
                }),
            };
            let config = shared.config(entry.path, entry.create, max_size, history);
            super::check_config(&config).map_err(|e| bad(e.to_string()))?;
            let config = Arc::new(config);
            targets.insert(name, NamedTarget { config, allowed });
        }
        Ok(NamedTargets {
            targets,
            peer_timeout: shared.peer_timeout,
        })
    }

    /// Every fingerprint allowed on some target: what the TLS handshake lets in.
    pub fn all_peers(&self) -> Vec<[u8; 32]> {
        let mut all: Vec<[u8; 32]> = self
            .targets
            .values()
            .flat_map(|t| t.allowed.iter().copied())
            .collect();
        all.sort_unstable();
        all.dedup();
        all
    }

    /// The names `peer` may write, comma-separated ("none" if none).
    pub fn allowed_names(&self, peer: &[u8; 32]) -> String {
        let names: Vec<&str> = self
            .targets
            .iter()
            .filter(|(_, t)| t.allowed.contains(peer))
            .map(|(name, _)| name.as_str())
            .collect();
        if names.is_empty() {
            "none".into()
        } else {
            names.join(", ")
        }
    }

    /// The target named `name`, if `peer` may write it.
    pub fn choose(&self, name: &str, peer: &[u8; 32]) -> Option<&NamedTarget> {
        self.targets
            .get(name)
            .filter(|target| target.allowed.contains(peer))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FP_A: &str = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const FP_B: &str = "sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

    fn shared() -> Shared {
        Shared {
            state_dir: "/nonexistent/state".into(),
            threads: 1,
            scrub: None,
            peer_timeout: None,
        }
    }

    fn parse(text: &str) -> Result<NamedTargets, String> {
        NamedTargets::parse(Path::new("t.toml"), text, &shared()).map_err(|e| e.to_string())
    }

    #[test]
    fn a_directory_of_targets_files_is_one_table_and_a_name_twice_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("targets.d");
        std::fs::create_dir(&conf).unwrap();
        let entry = |name: &str| {
            let img = dir.path().join(format!("{name}.img"));
            format!("[{name}]\npath = {img:?}\nallow = [\"{FP_A}\"]\ncreate = true\n")
        };
        std::fs::write(conf.join("a.toml"), entry("a")).unwrap();
        std::fs::write(conf.join("b.toml"), entry("b")).unwrap();
        std::fs::write(conf.join("README"), "not a targets file").unwrap();
        let targets = NamedTargets::load(&conf, &shared()).unwrap();
        let fa = parse_fingerprint(FP_A).unwrap();
        assert!(targets.choose("a", &fa).is_some() && targets.choose("b", &fa).is_some());
        std::fs::write(conf.join("c.toml"), entry("a")).unwrap();
        let e = NamedTargets::load(&conf, &shared())
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("c.toml") && e.contains("also defined in") && e.contains("a.toml"),
            "{e}"
        );
        let empty = dir.path().join("empty.d");
        std::fs::create_dir(&empty).unwrap();
        let e = NamedTargets::load(&empty, &shared())
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("no targets"), "{e}");
    }

    #[test]
    fn targets_are_chosen_by_name_and_peer() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.img"), dir.path().join("b.img"));
        let text = format!(
            "[a]\npath = {a:?}\nallow = [\"{FP_A}\"]\ncreate = true\n\n\
             [b]\npath = {b:?}\nallow = [\"{FP_A}\", \"{FP_B}\"]\ncreate = true\nmax_size = \"1G\"\n"
        );
        let targets = parse(&text).unwrap();
        let (fa, fb) = (
            parse_fingerprint(FP_A).unwrap(),
            parse_fingerprint(FP_B).unwrap(),
        );
        assert_eq!(targets.all_peers().len(), 2);
        assert_eq!(targets.choose("a", &fa).unwrap().config.target, a);
        assert!(
            targets.choose("a", &fb).is_none(),
            "b's sender may not write a"
        );
        assert!(targets.choose("c", &fa).is_none());
        assert_eq!(
            targets.choose("b", &fb).unwrap().config.max_size,
            GrowthLimit::AtMost(1 << 30)
        );
        assert_eq!(targets.allowed_names(&fa), "a, b");
        assert_eq!(targets.allowed_names(&fb), "b");
        assert_eq!(targets.allowed_names(&[0; 32]), "none");
    }

    #[test]
    fn bad_files_are_refused_with_the_reason() {
        let cases = [
            ("", "no targets"),
            ("[a]\npath = \"rel.img\"\nallow = [\"x\"]\n", "not absolute"),
            ("[a]\npath = \"/x.img\"\nallow = []\ncreate = true\n", "allow is empty"),
            ("[a]\npath = \"/x.img\"\nallow = [\"nope\"]\n", "allow:"),
            ("[a]\npath = \"/x.img\"\nalow = []\n", "unknown field"),
            ("[\"-a\"]\npath = \"/x.img\"\nallow = []\n", "invalid target name"),
            (
                &format!("[a]\npath = \"/x.img\"\nallow = [\"{FP_A}\"]\ncreate = true\n[b]\npath = \"/x.img\"\nallow = [\"{FP_A}\"]\ncreate = true\n"),
                "one target, one name",
            ),
        ];
        for (text, expected) in cases {
            let error = parse(text).expect_err(text);
            assert!(error.starts_with("targets file t.toml"), "{error}");
            assert!(error.contains(expected), "{text:?}: {error}");
        }
    }
}
