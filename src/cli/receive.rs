//! `blkmirror receive TARGET`: serves one target, either to mutual-TLS senders on
//! `--listen ADDR` (announcing `listening on ADDR` on stdout once bound) or over stdin/stdout
//! with `--stdio` (how `send` reaches it through ssh).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Context;

use super::args::{threads_or_default, ReceiveArgs};
use super::out::outln;
use super::{block_on, init_logging, usage, CliError};
use crate::progress::NoProgress;
use crate::receiver::listen::Served;
use crate::receiver::targets::Shared;
use crate::receiver::{self, GrowthLimit, NamedTargets, ReceiverConfig, ScrubSchedule};
use crate::transport::dest::Destination;
use crate::transport::tls;

/// Runs `receive`.
pub fn run(args: ReceiveArgs) -> Result<i32, CliError> {
    if let Some(file) = args.targets.clone() {
        init_logging(None);
        return listen_named(args, &file);
    }
    let (target, create) = if args.allow_target.is_empty() {
        let target = args.target.as_deref().expect("clap requires a TARGET");
        (receiver::absolute(target), args.create)
    } else {
        init_logging(None);
        match restricted_target(&args) {
            Ok(chosen) => chosen,
            Err(reason) => return refuse_on_stdio(reason),
        }
    };
    let history = keep_history(&args, &target)?;
    let max_size = args
        .max_size
        .map_or(GrowthLimit::FreeSpace, GrowthLimit::AtMost);
    let mut config = shared(&args).config(target, create, max_size, history);
    init_logging(None);
    config.on_commit = commit_hooks(&args, &config)?;
    if let Err(e) = receiver::check_config(&config) {
        if args.stdio {
            // Through ssh: the sender reads why in its own error line too.
            return refuse_on_stdio(e.to_string());
        }
        return Err(CliError::Runtime(e.into()));
    }
    if args.stdio {
        let stream = Box::new(tokio::io::join(tokio::io::stdin(), tokio::io::stdout()));
        block_on(async {
            let stop = Arc::new(AtomicBool::new(false));
            let mut signals = crate::daemon::Signals::new();
            let flag = stop.clone();
            tokio::spawn(async move {
                signals.recv().await;
                flag.store(true, Ordering::Relaxed);
            });
            receiver::serve(&config, stream, "stdio", Arc::new(NoProgress), stop).await
        })?
        .map_err(|e| CliError::Runtime(e.into()))?;
        return Ok(0);
    }
    listen(args, config)
}

/// Serves mutual-TLS senders until SIGINT or SIGTERM.
fn listen(args: ReceiveArgs, config: ReceiverConfig) -> Result<i32, CliError> {
    let addr = args.listen.expect("clap requires --listen or --stdio");
    let (Some(identity_dir), false) = (&args.identity, args.allow_peer.is_empty()) else {
        return Err(usage(
            "receive --listen needs --identity DIR and at least one --allow-peer FINGERPRINT (there is no unauthenticated mode)",
        ));
    };
    let allowed = allowed_peers(&args.allow_peer)?;
    let identity = tls::load_identity(identity_dir).context("--identity")?;
    let metrics = super::send::bind_metrics(args.metrics_listen)?;
    block_on(async {
        let stop = stop_requested();
        let server = tls::TlsServer::bind(&addr, &identity, allowed).await?;
        crate::metrics::serve_if(metrics);
        // Scripts read this line to learn the port; if they close the pipe afterwards, the
        // receiver goes on serving.
        outln!("listening on {}", server.local_addr());
        tracing::info!(addr = %server.local_addr(), target = %config.target.display(), fingerprint = %identity.fingerprint(), "receiver ready");
        announce_ready();
        let served = Served::One(Arc::new(config));
        crate::receiver::listen::serve_tls(server, served, stop).await
    })?
    .map_err(|e| CliError::Runtime(e.into()))?;
    Ok(0)
}

/// What every target of this receiver shares, from the command line.
fn shared(args: &ReceiveArgs) -> Shared {
    Shared {
        state_dir: args
            .state_dir
            .clone()
            .unwrap_or_else(crate::state::default_state_dir),
        threads: threads_or_default(args.threads),
        scrub: args.scrub_every.map(|every| ScrubSchedule {
            every,
            rate: args.scrub_rate,
        }),
        peer_timeout: Some(args.peer_timeout),
    }
}

/// `--keep SPEC [--history-dir DIR]`, checked when the target exists: a file whose
/// filesystem can clone it into DIR, or a thin LV (without DIR); any other target is refused.
fn keep_history(
    args: &ReceiveArgs,
    target: &std::path::Path,
) -> Result<Option<receiver::KeepHistory>, CliError> {
    let Some(policy) = args.keep.clone() else {
        return Ok(None);
    };
    let dir = args
        .history_dir
        .clone()
        .unwrap_or_else(|| receiver::KeepHistory::default_dir(target));
    if target.exists() {
        let runtime = |e: crate::history::HistoryError| CliError::Runtime(e.into());
        let store = crate::history::Store::for_target(target, args.history_dir.as_deref())
            .map_err(runtime)?;
        store.check(target).map_err(runtime)?;
    }
    Ok(Some(receiver::KeepHistory { dir, policy }))
}

/// The target of a restricted receiver (`--stdio --allow-target PATH...`, a forced command in
/// authorized_keys): TARGET when given, else the one the sender asked for in
/// `$SSH_ORIGINAL_COMMAND`; it must be one of the allowed paths. Creating a missing one needs
/// `--create` here and in the sender's request. Err: why the sender is refused.
fn restricted_target(args: &ReceiveArgs) -> Result<(PathBuf, bool), String> {
    let allowed: Vec<PathBuf> = args
        .allow_target
        .iter()
        .map(|p| receiver::absolute(p))
        .collect();
    let (requested, create) = match &args.target {
        Some(target) => (receiver::absolute(target), args.create),
        None => {
            let original = std::env::var("SSH_ORIGINAL_COMMAND").map_err(|_| {
                "receive --allow-target without TARGET takes the target from $SSH_ORIGINAL_COMMAND (set by sshd for a forced command), which is not set".to_string()
            })?;
            let (path, asked_create) = requested_by_sender(&original)?;
            (receiver::absolute(&path), args.create && asked_create)
        }
    };
    if !allowed.contains(&requested) {
        let list: Vec<String> = allowed.iter().map(|p| p.display().to_string()).collect();
        return Err(format!(
            "target {} is not allowed here (this key may write: {})",
            requested.display(),
            list.join(", ")
        ));
    }
    Ok((requested, create))
}

/// The target path and `--create` of the command line a sender's ssh asked for
/// (`... receive --stdio [--create] [--state-dir DIR] -- PATH`).
fn requested_by_sender(original: &str) -> Result<(PathBuf, bool), String> {
    let words = shlex::split(original)
        .ok_or_else(|| format!("cannot parse the requested command {original:?}"))?;
    let dashes = words.iter().rposition(|w| w == "--");
    let (Some(dashes), true) = (dashes, words.iter().any(|w| w == "receive")) else {
        return Err(format!(
            "the requested command {original:?} is not `blkmirror receive --stdio ... -- PATH`"
        ));
    };
    let [path] = &words[dashes + 1..] else {
        return Err(format!(
            "the requested command {original:?} does not end with exactly one PATH after --"
        ));
    };
    let create = words[..dashes].iter().any(|w| w == "--create");
    Ok((PathBuf::from(path), create))
}

/// Speaks just enough protocol on stdin/stdout to tell the sender why it is refused, then
/// fails with the same line.
fn refuse_on_stdio(reason: String) -> Result<i32, CliError> {
    block_on(async {
        let stream = Box::new(tokio::io::join(tokio::io::stdin(), tokio::io::stdout()));
        let mut conn = crate::transport::Connection::new(stream);
        let limit = Some(std::time::Duration::from_secs(10));
        if conn.handshake_within(limit).await.is_ok() {
            conn.refuse(&reason).await;
        }
    })?;
    Err(CliError::Runtime(anyhow::anyhow!(reason)))
}

/// Serves every target of a targets file on one port, until SIGINT or SIGTERM.
fn listen_named(args: ReceiveArgs, file: &std::path::Path) -> Result<i32, CliError> {
    let addr = args
        .listen
        .clone()
        .expect("clap: --targets requires --listen");
    let Some(identity_dir) = &args.identity else {
        return Err(usage("receive --listen needs --identity DIR"));
    };
    let shared = shared(&args);
    let named = NamedTargets::load(file, &shared).map_err(|e| CliError::Runtime(e.into()))?;
    let identity = tls::load_identity(identity_dir).context("--identity")?;
    let metrics = super::send::bind_metrics(args.metrics_listen)?;
    block_on(async {
        let stop = stop_requested();
        let server = tls::TlsServer::bind(&addr, &identity, named.all_peers()).await?;
        crate::metrics::serve_if(metrics);
        outln!("listening on {}", server.local_addr());
        let names: Vec<&str> = named.targets.keys().map(String::as_str).collect();
        tracing::info!(addr = %server.local_addr(), targets = %names.join(", "), fingerprint = %identity.fingerprint(), "receiver ready");
        announce_ready();
        let served = Served::Named(Arc::new(named));
        crate::receiver::listen::serve_tls(server, served, stop).await
    })?
    .map_err(|e| CliError::Runtime(e.into()))?;
    Ok(0)
}

/// Resolves on SIGINT or SIGTERM, after telling systemd the service is stopping. The
/// handlers are installed when this is called (inside the runtime), before the receiver says
/// it is ready, so a stop right after `READY=1` is not missed.
fn stop_requested() -> impl std::future::Future<Output = ()> {
    let mut signals = crate::daemon::Signals::new();
    async move {
        signals.recv().await;
        tracing::info!("stop requested");
        crate::notify::stopping();
    }
}

/// A listening receiver is up: tells systemd (`READY=1`) and, with a watchdog, keeps pinging
/// it from the runtime.
fn announce_ready() {
    crate::notify::ready();
    crate::notify::spawn_watchdog();
}

fn allowed_peers(given: &[String]) -> Result<Vec<[u8; 32]>, CliError> {
    given
        .iter()
        .map(|p| tls::parse_fingerprint(p).map_err(|e| usage(format!("--allow-peer: {e}"))))
        .collect()
}

/// What runs around each commit: the chain's forwarder (`--forward`), then the
/// `--post-commit` hook.
fn commit_hooks(
    args: &ReceiveArgs,
    config: &ReceiverConfig,
) -> Result<Option<Arc<dyn receiver::CommitHook>>, CliError> {
    let mut hooks: Vec<Arc<dyn receiver::CommitHook>> = Vec::new();
    hooks.extend(forwarder(args, config)?);
    if let Some(command) = &args.post_commit {
        let hook = crate::snapshot::hooks::PostCommit {
            command: command.clone(),
            timeout: args.hook_timeout,
        };
        hooks.push(Arc::new(crate::commit_hooks::PostCommitHook(hook)));
    }
    Ok(match hooks.len() {
        0 => None,
        1 => hooks.pop(),
        _ => Some(Arc::new(crate::commit_hooks::AllOf(hooks))),
    })
}

/// The chain's next hop (`--forward DEST`), if any.
fn forwarder(
    args: &ReceiveArgs,
    config: &ReceiverConfig,
) -> Result<Option<Arc<dyn receiver::CommitHook>>, CliError> {
    let Some(text) = &args.forward else {
        return Ok(None);
    };
    let dest = match crate::transport::dest::parse_destination(text).map_err(usage)? {
        Destination::Local(path) => Destination::Local(receiver::absolute(&path)),
        other => other,
    };
    if dest.to_string() == config.target.display().to_string() {
        return Err(usage("--forward names this receiver's own target"));
    }
    let tls = match (&dest, &args.identity, &args.forward_peer) {
        (Destination::Tls { .. }, Some(dir), Some(peer)) => {
            let peer =
                tls::parse_fingerprint(peer).map_err(|e| usage(format!("--forward-peer: {e}")))?;
            let identity = tls::load_identity(dir).context("--identity")?;
            Some((Arc::new(identity), peer))
        }
        (Destination::Tls { .. }, _, _) => {
            return Err(usage(
                "a tls:// --forward needs --identity DIR and --forward-peer FINGERPRINT",
            ))
        }
        _ => None,
    };
    let link = crate::daemon::link::LinkConfig {
        dest,
        state_dir: config.state_dir.clone(),
        threads: config.threads,
        tls,
        ssh: crate::transport::ssh::SshOptions {
            create: args.create,
            ..Default::default()
        },
        peer_timeout: args.peer_timeout,
        bwlimit: None,
    };
    let settings = crate::forward::ForwardSettings {
        target: config.target.clone(),
        state_dir: config.state_dir.clone(),
        block_size: 64 * 1024,
        threads: config.threads,
        stop: Arc::new(AtomicBool::new(false)),
    };
    let forwarder = crate::forward::Forwarder::new(link, settings)
        .map_err(|e| CliError::Runtime(anyhow::anyhow!("cannot start worker threads: {e}")))?;
    Ok(Some(Arc::new(forwarder)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_senders_request_is_read_from_its_command_line() {
        let ok = |line| requested_by_sender(line).unwrap();
        assert_eq!(
            ok("blkmirror receive --stdio -- /srv/a.img"),
            (PathBuf::from("/srv/a.img"), false)
        );
        assert_eq!(
            ok("sudo '/opt/b m/blkmirror' receive --stdio --create --state-dir '/x y' -- '/srv/a b.img'"),
            (PathBuf::from("/srv/a b.img"), true)
        );
        for bad in [
            "rm -rf /",
            "blkmirror receive --stdio /srv/a.img",
            "blkmirror receive --stdio -- /a /b",
            "blkmirror receive --stdio -- '/a",
        ] {
            assert!(requested_by_sender(bad).is_err(), "{bad}");
        }
    }
}
