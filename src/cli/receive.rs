//! `blkmirror receive TARGET`: serves one target, either to mutual-TLS senders on
//! `--listen ADDR` (announcing `listening on ADDR` on stdout once bound) or over stdin/stdout
//! with `--stdio` (how `send` reaches it through ssh).

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
use crate::transport::tls;

/// Runs `receive`.
pub fn run(args: ReceiveArgs) -> Result<i32, CliError> {
    if let Some(file) = args.targets.clone() {
        init_logging(None);
        return listen_named(args, &file);
    }
    let target = args
        .target
        .as_deref()
        .expect("clap requires TARGET or --targets");
    let config = ReceiverConfig {
        target: receiver::absolute(target),
        create: args.create,
        state_dir: args
            .state_dir
            .clone()
            .unwrap_or_else(crate::state::default_state_dir),
        threads: threads_or_default(args.threads),
        scrub: args.scrub_every.map(|every| ScrubSchedule {
            every,
            rate: args.scrub_rate,
        }),
        max_size: args
            .max_size
            .map_or(GrowthLimit::FreeSpace, GrowthLimit::AtMost),
        peer_timeout: Some(args.peer_timeout),
    };
    init_logging(None);
    receiver::check_config(&config).map_err(|e| CliError::Runtime(e.into()))?;
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
    block_on(async {
        let server = tls::TlsServer::bind(&addr, &identity, allowed).await?;
        // Scripts read this line to learn the port; if they close the pipe afterwards, the
        // receiver goes on serving.
        outln!("listening on {}", server.local_addr());
        tracing::info!(addr = %server.local_addr(), target = %config.target.display(), "receiver ready");
        let served = Served::One(Arc::new(config));
        crate::receiver::listen::serve_tls(server, served, crate::daemon::shutdown_signal()).await
    })?
    .map_err(|e| CliError::Runtime(e.into()))?;
    Ok(0)
}

/// Serves every target of a targets file on one port, until SIGINT or SIGTERM.
fn listen_named(args: ReceiveArgs, file: &std::path::Path) -> Result<i32, CliError> {
    let addr = args.listen.expect("clap: --targets requires --listen");
    let Some(identity_dir) = &args.identity else {
        return Err(usage("receive --listen needs --identity DIR"));
    };
    let shared = Shared {
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
    };
    let named = NamedTargets::load(file, &shared).map_err(|e| CliError::Runtime(e.into()))?;
    let identity = tls::load_identity(identity_dir).context("--identity")?;
    block_on(async {
        let server = tls::TlsServer::bind(&addr, &identity, named.all_peers()).await?;
        outln!("listening on {}", server.local_addr());
        let names: Vec<&str> = named.targets.keys().map(String::as_str).collect();
        tracing::info!(addr = %server.local_addr(), targets = %names.join(", "), "receiver ready");
        let served = Served::Named(Arc::new(named));
        crate::receiver::listen::serve_tls(server, served, crate::daemon::shutdown_signal()).await
    })?
    .map_err(|e| CliError::Runtime(e.into()))?;
    Ok(0)
}

fn allowed_peers(given: &[String]) -> Result<Vec<[u8; 32]>, CliError> {
    given
        .iter()
        .map(|p| tls::parse_fingerprint(p).map_err(|e| usage(format!("--allow-peer: {e}"))))
        .collect()
}
