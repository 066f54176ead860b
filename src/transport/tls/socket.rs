//! The TCP under TLS, on both ends: socket options (no delay; keepalive and
//! `TCP_USER_TIMEOUT`, so a dead peer ends the session) and the time limit on connecting and
//! handshaking.

use std::future::Future;
use std::time::Duration;

use tokio::net::TcpStream;

use super::TlsError;

/// How long a TCP connect, or a TLS handshake plus confirmation, may take by default (`send`
/// and `receive` use their `--peer-timeout` instead).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// A peer that goes silent (host down, link cut, a NAT that forgot the flow) must not hold
/// a connection, and with it the target's lock, for the kernel's default two hours: TCP
/// keepalive probes after this idle time...
const KEEPALIVE_IDLE_SECS: u32 = 30;
/// ...every this often...
const KEEPALIVE_INTERVAL_SECS: u32 = 10;
/// ...this many unanswered before the connection is dropped...
const KEEPALIVE_PROBES: u32 = 3;
/// ...and data the peer has not acknowledged for this long drops it too. A peer that is slow
/// but alive still acknowledges (its kernel does, even while its process is busy).
const USER_TIMEOUT_MS: u32 = 60_000;

/// TCP_NODELAY (messages go out when written), and liveness: keepalive and a user timeout,
/// so a dead peer ends the session within about a minute. Best effort: a socket that refuses
/// an option still works, with the kernel's defaults.
pub(super) fn configure_socket(tcp: &TcpStream) {
    use nix::sys::socket::{setsockopt, sockopt};
    let _ = tcp.set_nodelay(true);
    let result = setsockopt(tcp, sockopt::KeepAlive, &true)
        .and_then(|()| setsockopt(tcp, sockopt::TcpKeepIdle, &KEEPALIVE_IDLE_SECS))
        .and_then(|()| setsockopt(tcp, sockopt::TcpKeepInterval, &KEEPALIVE_INTERVAL_SECS))
        .and_then(|()| setsockopt(tcp, sockopt::TcpKeepCount, &KEEPALIVE_PROBES))
        .and_then(|()| setsockopt(tcp, sockopt::TcpUserTimeout, &USER_TIMEOUT_MS));
    if let Err(e) = result {
        tracing::debug!("TCP keepalive options not set: {e}");
    }
}

/// Runs `future` for at most `limit`; `addr` names the peer in the timeout.
pub(super) async fn with_timeout<T>(
    addr: &str,
    limit: Duration,
    future: impl Future<Output = Result<T, TlsError>>,
) -> Result<T, TlsError> {
    match tokio::time::timeout(limit, future).await {
        Ok(result) => result,
        Err(_) => Err(TlsError::Timeout {
            addr: addr.to_string(),
            secs: limit.as_secs(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{new_identity, server_for};
    use super::*;

    #[tokio::test]
    async fn both_ends_of_a_connection_detect_a_dead_peer() {
        use nix::sys::socket::{getsockopt, sockopt};
        let (_dir, identity, _) = new_identity();
        let (server, port) = server_for(&identity, vec![]).await;
        let client = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        assert!(
            !getsockopt(&client, sockopt::KeepAlive).unwrap(),
            "off by default"
        );
        configure_socket(&client);
        // The server's side, as the receiver accepts it.
        let (accepted, _) = server.accept_tcp().await.unwrap();
        for tcp in [&client, &accepted] {
            assert!(tcp.nodelay().unwrap());
            assert!(getsockopt(tcp, sockopt::KeepAlive).unwrap());
            assert_eq!(
                getsockopt(tcp, sockopt::TcpKeepIdle).unwrap(),
                KEEPALIVE_IDLE_SECS
            );
            assert_eq!(
                getsockopt(tcp, sockopt::TcpKeepInterval).unwrap(),
                KEEPALIVE_INTERVAL_SECS
            );
            assert_eq!(
                getsockopt(tcp, sockopt::TcpKeepCount).unwrap(),
                KEEPALIVE_PROBES
            );
            assert_eq!(
                getsockopt(tcp, sockopt::TcpUserTimeout).unwrap(),
                USER_TIMEOUT_MS
            );
        }
    }
}
