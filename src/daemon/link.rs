//! Opening a session to a destination: an in-process receiver for a local path; anything else
//! through its transport's [`Dialer`] (`ssh` for `ssh://`, mutual TLS for `tls://`). Returns a
//! handshaken [`Endpoint`] plus whatever must be kept alive and shut down with it (the local
//! receiver task, the dialer's [`Finisher`], e.g. the ssh child). The only module that knows
//! both sides: it wires a local receiver to the sender.
//!
//! [`Dialer`]: crate::transport::Dialer

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use crate::progress::NoProgress;
use crate::receiver::{self, ReceiverConfig};
use crate::transport::dest::Destination;
use crate::transport::ssh::SshOptions;
use crate::transport::tls::Identity;
use crate::transport::{
    dialer_for, local, Connection, DialConfig, DialError, Dialed, Endpoint, EndpointOptions,
    Finisher, TransportError,
};

/// How to reach the destination, beyond its address.
#[derive(Clone)]
pub struct LinkConfig {
    /// Where to mirror to.
    pub dest: Destination,
    /// State dir for an in-process receiver (local destinations).
    pub state_dir: PathBuf,
    /// Worker threads of an in-process receiver.
    pub threads: usize,
    /// Our TLS identity and the receiver's pinned fingerprint (`tls://`).
    pub tls: Option<(Arc<Identity>, [u8; 32])>,
    /// How to run ssh (`ssh://`).
    pub ssh: SshOptions,
}

impl LinkConfig {
    /// What the destination's dialer needs (TLS identity and pin, ssh options).
    pub fn dial_config(&self) -> DialConfig {
        DialConfig {
            tls: self.tls.clone(),
            ssh: self.ssh.clone(),
        }
    }
}

/// Why a destination could not be reached.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The transport could not connect (or start ssh).
    #[error(transparent)]
    Dial(#[from] DialError),
    /// The connection failed (handshake included).
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The in-process receiver of a local destination failed.
    #[error(transparent)]
    Receive(#[from] receiver::ReceiveError),
}

impl LinkError {
    /// True when a later attempt may succeed without the user changing anything.
    pub fn is_transient(&self) -> bool {
        match self {
            LinkError::Dial(e) => e.is_transient(),
            LinkError::Transport(e) => e.is_transient(),
            LinkError::Receive(e) => e.is_transient(),
        }
    }
}

enum Peer {
    /// The in-process receiver serving a local path.
    Local(tokio::task::JoinHandle<Result<(), receiver::ReceiveError>>),
    /// A dialed destination and what to finish after its stream (nothing for TLS).
    Remote(Option<Box<dyn Finisher>>),
}

/// An open session to a destination.
pub struct Link {
    /// The connection, for the cycles (on their own threads).
    pub endpoint: Arc<Endpoint>,
    peer: Peer,
}

impl Link {
    /// Connects, handshakes and starts the endpoint's pumps. `stop` ends waits on the peer
    /// (and an in-process receiver's cycle) when set.
    pub async fn open(config: &LinkConfig, stop: Arc<AtomicBool>) -> Result<Link, LinkError> {
        let (stream, peer) = match &config.dest {
            Destination::Local(path) => {
                let (ours, theirs) = local::pair();
                let receiver_config = ReceiverConfig {
                    target: receiver::absolute(path),
                    create: true,
                    state_dir: config.state_dir.clone(),
                    threads: config.threads,
                };
                let stop = stop.clone();
                let task = tokio::spawn(async move {
                    let progress = Arc::new(NoProgress);
                    receiver::serve(&receiver_config, theirs, "local", progress, stop).await
                });
                (ours, Peer::Local(task))
            }
            remote => {
                let dialer = dialer_for(remote, &config.dial_config())?;
                let Dialed { stream, finisher } = dialer.dial().await?;
                (stream, Peer::Remote(finisher))
            }
        };
        let mut conn = Connection::new(stream);
        let handshake = conn.handshake().await;
        let endpoint = Arc::new(Endpoint::start(conn, EndpointOptions { idle: None, stop }));
        let mut link = Link { endpoint, peer };
        if let Err(e) = handshake {
            return Err(link.peer_error().await.unwrap_or(e.into()));
        }
        Ok(link)
    }

    /// After a transport failure: the local receiver's own error, which says more.
    pub async fn peer_error(&mut self) -> Option<LinkError> {
        if let Peer::Local(task) = &mut self.peer {
            let waited = tokio::time::timeout(std::time::Duration::from_secs(2), task).await;
            if let Ok(Ok(Err(e))) = waited {
                return Some(e.into());
            }
        }
        None
    }

    /// Drops the connection mid-cycle (on a signal) and lets an in-process receiver record
    /// the abort before the process exits.
    pub async fn abandon(self) {
        let Link { endpoint, peer } = self;
        drop(endpoint);
        if let Peer::Local(task) = peer {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(10), task).await;
        }
    }

    /// Closes the session cleanly and waits for the peer to finish.
    pub async fn close(self) -> Result<(), LinkError> {
        let Link { endpoint, peer } = self;
        let _ = endpoint.close().await;
        drop(endpoint);
        match peer {
            Peer::Local(task) => task.await.expect("receiver task panicked")?,
            Peer::Remote(Some(finisher)) => finisher.finish().await?,
            Peer::Remote(None) => {}
        }
        Ok(())
    }
}
