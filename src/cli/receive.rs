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
use crate::receiver::{self, GrowthLimit, ReceiverConfig, ScrubSchedule};
use crate::transport::tls;

/// Runs `receive`.
pub fn run(args: ReceiveArgs) -> Result<i32, CliError> {
    let config = ReceiverConfig {
        target: receiver::absolute(&args.target),
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
        crate::receiver::listen::serve_tls(server, Arc::new(config), crate::daemon::shutdown_signal()).await
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
