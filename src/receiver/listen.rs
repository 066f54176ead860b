//! `receive --listen`: accepts mutual-TLS connections and serves each with the receiver. Only
//! peers whose certificate fingerprint is allowed get past the handshake; the per-target lock
//! makes a second concurrent sender get a clear refusal. On shutdown every session is asked
//! to stop, records its aborted cycle as interrupted, and is waited for (bounded).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;

use crate::progress::NoProgress;
use crate::receiver::{self, ReceiverConfig};
use crate::transport::tls::{TlsError, TlsServer};

/// How long shutdown waits for sessions to record their aborted cycles.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(5);

/// Serves connections until `shutdown` resolves, then stops the sessions.
pub async fn serve_tls(
    server: TlsServer,
    config: Arc<ReceiverConfig>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), TlsError> {
    tokio::pin!(shutdown);
    let stop = Arc::new(AtomicBool::new(false));
    let mut sessions = JoinSet::new();
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
        let server = server.clone();
        let config = config.clone();
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
            match receiver::serve(&config, stream, &peer, Arc::new(NoProgress), stop).await {
                Ok(()) => tracing::info!(%peer, "sender disconnected"),
                Err(e) => tracing::error!(%peer, error = %e, "session ended with an error"),
            }
        });
    }
    stop.store(true, Ordering::Relaxed);
    let drained = tokio::time::timeout(SHUTDOWN_WAIT, async {
        while sessions.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!("some sessions did not end within {SHUTDOWN_WAIT:?} of the stop");
    }
    Ok(())
}
