//! `receive --listen`: accepts mutual-TLS connections and serves each with the receiver, for
//! one target or for several ([`Served`]; then each sender names its target and must be
//! allowed on it). Only peers whose certificate fingerprint is allowed get past the handshake;
//! the per-target lock makes a second concurrent sender get a clear refusal. On shutdown every session is asked
//! to stop, records its aborted cycle as interrupted, and is waited for (bounded). With
//! `--scrub-every`, the target is scrubbed periodically while no sender writes it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;

use crate::progress::NoProgress;
use crate::receiver::scrub::{scrub_at, ScrubOutcome};
use crate::receiver::{self, NamedTargets, ReceiveError, ReceiverConfig, ScrubSchedule};
use crate::transport::tls::{parse_fingerprint, TlsError, TlsServer};

/// How long shutdown waits for sessions to record their aborted cycles.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(5);

/// What a listening receiver serves.
pub enum Served {
    /// One target, for every allowed peer (`receive TARGET --listen`).
    One(Arc<ReceiverConfig>),
    /// Several, by name, each with its own allowed peers (`receive --listen --targets FILE`).
    Named(Arc<NamedTargets>),
}

impl Served {
    fn configs(&self) -> Vec<Arc<ReceiverConfig>> {
        match self {
            Served::One(config) => vec![config.clone()],
            Served::Named(named) => named.targets.values().map(|t| t.config.clone()).collect(),
        }
    }
}

/// Serves connections until `shutdown` resolves, then stops the sessions.
pub async fn serve_tls(
    server: TlsServer,
    served: Served,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), TlsError> {
    tokio::pin!(shutdown);
    let served = Arc::new(served);
    let stop = Arc::new(AtomicBool::new(false));
    // Set when a sender connects (or on shutdown): a scrub in progress gives way.
    let scrub_cancel = Arc::new(AtomicBool::new(false));
    let mut sessions = JoinSet::new();
    let scrubbers: Vec<_> = served
        .configs()
        .into_iter()
        .filter_map(|config| {
            let schedule = config.scrub?;
            let cancel = scrub_cancel.clone();
            Some(tokio::spawn(scrub_periodically(config, schedule, cancel)))
        })
        .collect();
    loop {
        let (tcp, addr) = tokio::select! {
            accepted = server.accept_tcp() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    continue;
                }
            },
            Some(_) = sessions.join_next(), if !sessions.is_empty() => continue,
            _ = &mut shutdown => break,
        };
        scrub_cancel.store(true, Ordering::Relaxed);
        let server = server.clone();
        let served = served.clone();
        let stop = stop.clone();
        sessions.spawn(async move {
            let (stream, fingerprint) = match server.handshake(tcp).await {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::warn!(peer = %addr, error = %e, "refused connection");
                    return;
                }
            };
            let peer = format!("{addr} ({fingerprint})");
            let progress = Arc::new(NoProgress);
            let served = match &*served {
                Served::One(config) => receiver::serve(config, stream, &peer, progress, stop).await,
                Served::Named(named) => {
                    let Ok(key) = parse_fingerprint(&fingerprint) else {
                        return;
                    };
                    receiver::serve_named(named, stream, &peer, key, progress, stop).await
                }
            };
            match served {
                Ok(()) => tracing::info!(%peer, "sender disconnected"),
                Err(e) => tracing::error!(%peer, error = %e, "session ended with an error"),
            }
        });
    }
    stop.store(true, Ordering::Relaxed);
    scrub_cancel.store(true, Ordering::Relaxed);
    for scrubber in scrubbers {
        scrubber.abort();
    }
    let drained = tokio::time::timeout(SHUTDOWN_WAIT, async {
        while sessions.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!("some sessions did not end within {SHUTDOWN_WAIT:?} of the stop");
    }
    Ok(())
}

/// Scrubs the target every `schedule.every` (after each scrub ends), giving way to senders:
/// a connection sets `cancel`, which ends a scrub in progress; it is tried again next time.
/// Ends when the task is dropped (shutdown aborts the wait; `cancel` ends a scrub).
async fn scrub_periodically(
    config: Arc<ReceiverConfig>,
    schedule: ScrubSchedule,
    cancel: Arc<AtomicBool>,
) {
    loop {
        tokio::time::sleep(schedule.every).await;
        cancel.store(false, Ordering::Relaxed);
        let (scrubbing, flag) = (config.clone(), cancel.clone());
        let scrubbed = tokio::task::spawn_blocking(move || {
            scrub_at(
                &scrubbing.target,
                &scrubbing.state_dir,
                scrubbing.threads,
                schedule.rate,
                &flag,
                &NoProgress,
            )
        })
        .await
        .expect("scrub panicked");
        match scrubbed {
            Ok(ScrubOutcome::Drifted { blocks, drifted }) => {
                tracing::warn!(
                    blocks,
                    drifted,
                    "scrub: the target drifted; the next cycle repairs it"
                )
            }
            Ok(outcome) => tracing::info!(?outcome, "scrub done"),
            Err(ReceiveError::Stopped) => {
                tracing::info!("scrub gave way to a sender; trying again later")
            }
            Err(e) => tracing::warn!(error = %e, "scrub failed"),
        }
    }
}
