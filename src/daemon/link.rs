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
use crate::transport::bwlimit::WireLimit;
use crate::transport::dest::Destination;
use crate::transport::frame::{Message, CAP_NAMED_TARGETS};
use crate::transport::ssh::SshDialer;
use crate::transport::ssh::SshOptions;
use crate::transport::tls::Identity;
use crate::transport::tls::TlsDialer;
use crate::transport::{
    local, Connection, DialError, Dialed, Dialer, Endpoint, EndpointOptions, Finisher,
    TransportError,
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
    /// Give up on a remote receiver silent (not even a keep-alive) for this long, from the
    /// handshake on (`--peer-timeout`). An in-process receiver has no such bound.
    pub peer_timeout: std::time::Duration,
    /// At most this many bytes per second written to a remote receiver (`--bwlimit`).
    pub bwlimit: Option<u64>,
}

/// The dialer of a remote destination: TLS for `tls://` (which needs an identity and a pin),
/// ssh for `ssh://`. `None` for a local path: its receiver runs in this process.
pub fn dialer_for(config: &LinkConfig) -> Result<Option<Box<dyn Dialer>>, LinkError> {
    Ok(Some(match &config.dest {
        Destination::Local(_) => return Ok(None),
        Destination::Tls { host, port, .. } => {
            let (identity, pinned) = config.tls.clone().ok_or(LinkError::MissingIdentity)?;
            Box::new(TlsDialer {
                host: host.clone(),
                port: *port,
                identity,
                pinned,
                timeout: config.peer_timeout,
            })
        }
        Destination::Ssh {
            user,
            host,
            port,
            path,
        } => Box::new(SshDialer {
            user: user.clone(),
            host: host.clone(),
            port: *port,
            path: path.clone(),
            options: config.ssh.clone(),
            finish_within: config.peer_timeout,
        }),
    }))
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
    /// A `tls://` destination without an identity and a pinned peer.
    #[error("tls:// destinations need --identity DIR and --peer FINGERPRINT")]
    MissingIdentity,
    /// `tls://HOST:PORT/NAME` to a receiver too old to serve named targets.
    #[error("the receiver does not serve named targets (it predates `receive --targets`): drop /{0} from DEST")]
    NoNamedTargets(String),
}

impl LinkError {
    /// True when a later attempt may succeed without the user changing anything.
    pub fn is_transient(&self) -> bool {
        match self {
            LinkError::Dial(e) => e.is_transient(),
            LinkError::Transport(e) => e.is_transient(),
            LinkError::Receive(e) => e.is_transient(),
            LinkError::MissingIdentity | LinkError::NoNamedTargets(_) => false,
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
                    scrub: None,
                    max_size: receiver::GrowthLimit::Unbounded,
                    peer_timeout: None,
                    history: None,
                    on_commit: None,
                };
                let stop = stop.clone();
                let task = tokio::spawn(async move {
                    let progress = Arc::new(NoProgress);
                    receiver::serve(&receiver_config, theirs, "local", progress, stop).await
                });
                (ours, Peer::Local(task))
            }
            _ => {
                let dialer = dialer_for(config)?.expect("a remote destination");
                let Dialed { stream, finisher } = dialer.dial().await?;
                (stream, Peer::Remote(finisher))
            }
        };
        let idle = match peer {
            Peer::Local(_) => None,
            Peer::Remote(_) => Some(config.peer_timeout),
        };
        let mut conn = Connection::new(stream);
        let handshake = conn.handshake_within(idle).await;
        let limit = match peer {
            Peer::Local(_) => None,
            Peer::Remote(_) => config.bwlimit.map(|rate| Arc::new(WireLimit::new(rate))),
        };
        let options = EndpointOptions { idle, stop, limit };
        let endpoint = Arc::new(Endpoint::start(conn, options));
        let mut link = Link { endpoint, peer };
        if let Err(e) = handshake {
            return Err(link.peer_error().await.unwrap_or(e.into()));
        }
        if let Destination::Tls {
            name: Some(name), ..
        } = &config.dest
        {
            link.open_target(name)?;
        }
        Ok(link)
    }

    /// Names the target this connection writes, on a receiver that serves several (the
    /// receiver checks that we may write it before anything else happens).
    fn open_target(&self, name: &str) -> Result<(), LinkError> {
        if self.endpoint.peer_capabilities() & CAP_NAMED_TARGETS == 0 {
            return Err(LinkError::NoNamedTargets(name.to_string()));
        }
        let target = name.to_string();
        self.endpoint.send(Message::Open { target })?;
        Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::dest::parse_destination;

    fn config(dest: &str) -> LinkConfig {
        LinkConfig {
            dest: parse_destination(dest).unwrap(),
            state_dir: PathBuf::from("/nonexistent"),
            threads: 1,
            tls: None,
            ssh: SshOptions::default(),
            peer_timeout: std::time::Duration::from_secs(60),
            bwlimit: None,
        }
    }

    #[test]
    fn local_paths_have_no_dialer_and_tls_needs_an_identity() {
        assert!(dialer_for(&config("/dev/sdb")).unwrap().is_none());
        assert!(dialer_for(&config("ssh://h/x")).unwrap().is_some());
        let tls = dialer_for(&config("tls://host:9000")).err().unwrap();
        assert_eq!(
            tls.to_string(),
            "tls:// destinations need --identity DIR and --peer FINGERPRINT"
        );
        assert!(!tls.is_transient());
    }
}
