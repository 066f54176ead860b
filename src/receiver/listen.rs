//! `receive --listen`: accepts mutual-TLS connections and serves each with the receiver. Only
//! peers whose certificate fingerprint is allowed get past the handshake; the per-target lock
//! makes a second concurrent sender get a clear refusal.

use std::sync::Arc;

use crate::progress::NoProgress;
use crate::receiver::{self, ReceiverConfig};
use crate::transport::tls::{TlsError, TlsServer};

/// Serves connections until `shutdown` resolves.
pub async fn serve_tls(
    server: TlsServer,
    config: Arc<ReceiverConfig>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), TlsError> {
    tokio::pin!(shutdown);
    loop {
        let (tcp, addr) = tokio::select! {
            accepted = server.accept_tcp() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    continue;
                }
            },
            _ = &mut shutdown => return Ok(()),
        };
        let server = server.clone();
        let config = config.clone();
        tokio::spawn(async move {
            let (stream, fingerprint) = match server.handshake(tcp).await {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::warn!(peer = %addr, error = %e, "refused connection");
                    return;
                }
            };
            let peer = format!("{addr} ({fingerprint})");
            match receiver::serve(&config, stream, &peer, &NoProgress).await {
                Ok(()) => tracing::info!(%peer, "sender disconnected"),
                Err(e) => tracing::error!(%peer, error = %e, "session ended with an error"),
            }
        });
    }
}
