//! A connection as the synchronous engines see it. The sender's and receiver's engines run on
//! threads of their own (they read devices, hash and fsync: nothing an async worker may wait
//! for); an [`Endpoint`] gives them blocking `send` and `recv` over a [`Connection`] driven by
//! two async pump tasks:
//!
//! * the **writer** pump writes queued messages and flushes whenever the queue runs dry (so a
//!   peer waiting for an answer always gets it), then shuts the stream down on `close`;
//! * the **reader** pump reads frames ahead into a bounded queue (backpressure reaches the
//!   network), stopping at the first error, which `recv` then returns.
//!
//! Every wait is bounded: `recv` and `send` give up with [`TransportError::PeerSilent`] when
//! nothing at all has come from the peer for the configured idle time, and with
//! [`TransportError::Stopped`] soon after a stop is requested. "Nothing at all" includes
//! keep-alives: to a peer that announced [`CAP_KEEPALIVE`] the writer pump sends a
//! [`Message::KeepAlive`] whenever it has written nothing for [`KEEPALIVE_EVERY`], and the
//! reader pump swallows the peer's, so an engine busy for minutes (re-hashing a target,
//! scanning an unchanged volume, an fsync) is not mistaken for a dead peer, while a peer that
//! is stopped, frozen or cut off falls silent and is given up on within the bound.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::bwlimit::WireLimit;
use super::frame::{Message, CAP_KEEPALIVE};
use super::{Connection, FrameReader, FrameWriter, TransportError};

/// Messages queued for the writer pump (a full queue makes `send` wait: backpressure).
const OUT_QUEUE: usize = 32;
/// Messages the reader pump may read ahead of the engine.
const IN_QUEUE: usize = 64;
/// How often a blocked `send` or `recv` looks at the stop flag.
const POLL: Duration = Duration::from_millis(50);
/// How long `close` waits for the writer pump to flush and shut the stream down.
const CLOSE_WAIT: Duration = Duration::from_secs(10);
/// How long a failed `send` looks for the peer's refusal, which says more than the write error.
const REFUSAL_WAIT: Duration = Duration::from_secs(5);
/// A keep-alive goes out after this long without writing anything else (5 bytes a second on
/// an idle link). The smallest peer timeout a command accepts is a few of these.
pub const KEEPALIVE_EVERY: Duration = Duration::from_secs(1);

/// Bounds on the waits of an endpoint.
#[derive(Clone, Debug)]
pub struct EndpointOptions {
    /// Give up when nothing (not even a keep-alive) has come from the peer for this long;
    /// `None`: wait as long as the connection lives (an in-process peer).
    pub idle: Option<Duration>,
    /// Set to stop: blocked calls return [`TransportError::Stopped`] within 50 ms (`POLL`).
    pub stop: Arc<AtomicBool>,
    /// At most this many bytes per second written (`send --bwlimit`); keep-alives too.
    pub limit: Option<Arc<WireLimit>>,
}

impl Default for EndpointOptions {
    fn default() -> Self {
        EndpointOptions {
            idle: None,
            stop: Arc::new(AtomicBool::new(false)),
            limit: None,
        }
    }
}

enum Outgoing {
    Frame(Message),
    Close,
}

/// A connection driven by pump tasks, used from blocking code.
pub struct Endpoint {
    out: flume::Sender<Outgoing>,
    incoming: flume::Receiver<Result<Message, TransportError>>,
    peer_capabilities: u64,
    options: EndpointOptions,
    write_error: Arc<Mutex<Option<TransportError>>>,
    bytes_sent: Arc<AtomicU64>,
    /// When the reader pump last read a frame (keep-alives included).
    heard: Arc<Clock>,
    writer: Mutex<Option<tokio::task::JoinHandle<()>>>,
    reader: tokio::task::AbortHandle,
}

/// An instant shared between threads: milliseconds since the clock was made.
struct Clock {
    epoch: Instant,
    last_ms: AtomicU64,
}

impl Clock {
    fn new() -> Self {
        Clock {
            epoch: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let ms = self.epoch.elapsed().as_millis() as u64;
        self.last_ms.fetch_max(ms, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.epoch + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }
}

impl Endpoint {
    /// Starts the pumps on the current tokio runtime (call from within it).
    pub fn start(conn: Connection, options: EndpointOptions) -> Endpoint {
        let Connection {
            reader,
            writer,
            peer_capabilities,
        } = conn;
        let (out, out_rx) = flume::bounded(OUT_QUEUE);
        let (in_tx, incoming) = flume::bounded(IN_QUEUE);
        let write_error = Arc::new(Mutex::new(None));
        let bytes_sent = Arc::new(AtomicU64::new(writer.bytes_sent));
        let heard = Arc::new(Clock::new());
        let keepalive = peer_capabilities & CAP_KEEPALIVE != 0;
        let writer = tokio::spawn(pump_out(
            writer,
            out_rx,
            keepalive,
            options.limit.clone(),
            bytes_sent.clone(),
            write_error.clone(),
        ));
        let reader = tokio::spawn(pump_in(reader, in_tx, heard.clone())).abort_handle();
        Endpoint {
            out,
            incoming,
            peer_capabilities,
            options,
            write_error,
            bytes_sent,
            heard,
            writer: Mutex::new(Some(writer)),
            reader,
        }
    }

    /// Capability bits the peer announced.
    pub fn peer_capabilities(&self) -> u64 {
        self.peer_capabilities
    }

    /// Bytes written to the stream so far.
    pub fn bytes_sent(&self) -> u64 {
        self.bytes_sent.load(Ordering::Relaxed)
    }

    fn stopped(&self) -> bool {
        self.options.stop.load(Ordering::Relaxed)
    }

    /// The error to give up with when nothing has come from the peer for the idle bound,
    /// counting from `since` (the start of the wait) or the last frame read, the later.
    fn silent(&self, since: Instant, waiting: &'static str) -> Option<TransportError> {
        let limit = self.options.idle?;
        let from = since.max(self.heard.last());
        (from.elapsed() >= limit).then_some(TransportError::PeerSilent {
            secs: limit.as_secs(),
            waiting,
        })
    }

    /// Queues a message (waits while the queue is full, within the bounds).
    pub fn send(&self, message: Message) -> Result<(), TransportError> {
        let since = Instant::now();
        let mut item = Outgoing::Frame(message);
        loop {
            if self.stopped() {
                return Err(TransportError::Stopped);
            }
            match self.out.send_timeout(item, POLL) {
                Ok(()) => return Ok(()),
                Err(flume::SendTimeoutError::Timeout(back)) => item = back,
                Err(flume::SendTimeoutError::Disconnected(_)) => return Err(self.write_failed()),
            }
            if let Some(error) = self.silent(since, "waiting for it to read") {
                return Err(error);
            }
        }
    }

    /// Why the writer stopped: the peer's refusal when it sent one (it says why), else the
    /// write error.
    fn write_failed(&self) -> TransportError {
        let deadline = Instant::now() + REFUSAL_WAIT;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.incoming.recv_timeout(left.min(POLL)) {
                Ok(Err(refused @ TransportError::Refused(_))) => return refused,
                Ok(Ok(_)) => continue,
                Ok(Err(_)) | Err(flume::RecvTimeoutError::Disconnected) => break,
                Err(flume::RecvTimeoutError::Timeout) if self.stopped() => break,
                Err(flume::RecvTimeoutError::Timeout) => continue,
            }
        }
        self.write_error
            .lock()
            .expect("write error lock")
            .take()
            .unwrap_or(TransportError::Closed)
    }

    /// The next message (a `Refused` from the peer is [`TransportError::Refused`]).
    pub fn recv(&self) -> Result<Message, TransportError> {
        let since = Instant::now();
        loop {
            if self.stopped() {
                return Err(TransportError::Stopped);
            }
            match self.incoming.recv_timeout(POLL) {
                Ok(result) => return result,
                Err(flume::RecvTimeoutError::Disconnected) => return Err(TransportError::Closed),
                Err(flume::RecvTimeoutError::Timeout) => {}
            }
            if let Some(error) = self.silent(since, "waiting for its next message") {
                return Err(error);
            }
        }
    }

    /// A message that has already arrived, without waiting.
    pub fn try_recv(&self) -> Option<Result<Message, TransportError>> {
        self.incoming.try_recv().ok()
    }

    /// Sends a refusal and closes the sending side (errors ignored: the session is ending).
    pub fn refuse(&self, reason: &str) {
        let _ = self.out.try_send(Outgoing::Frame(Message::Refused {
            reason: reason.to_string(),
        }));
        let _ = self.out.try_send(Outgoing::Close);
    }

    /// Flushes what is queued and shuts the sending side down; waits (bounded) for it.
    pub async fn close(&self) -> Result<(), TransportError> {
        let _ = self.out.send_async(Outgoing::Close).await;
        let writer = self.writer.lock().expect("writer lock").take();
        if let Some(writer) = writer {
            let _ = tokio::time::timeout(CLOSE_WAIT, writer).await;
        }
        match self.write_error.lock().expect("write error lock").take() {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// Writes queued messages, flushing whenever the queue runs dry, and a keep-alive (when the
/// peer understands it) after each [`KEEPALIVE_EVERY`] with nothing else to write.
async fn pump_out(
    mut writer: FrameWriter,
    queue: flume::Receiver<Outgoing>,
    keepalive: bool,
    limit: Option<Arc<WireLimit>>,
    bytes_sent: Arc<AtomicU64>,
    error: Arc<Mutex<Option<TransportError>>>,
) {
    let result: Result<(), TransportError> = async {
        loop {
            let item = match queue.try_recv() {
                Ok(item) => item,
                Err(flume::TryRecvError::Empty) => {
                    writer.flush().await?;
                    match next_or_keepalive(&queue, keepalive).await {
                        Ok(item) => item,
                        Err(_) => Outgoing::Close,
                    }
                }
                Err(flume::TryRecvError::Disconnected) => Outgoing::Close,
            };
            match item {
                Outgoing::Frame(message) => {
                    let len = writer.encode(&message);
                    if let Some(limit) = &limit {
                        let wait = limit.reserve(len as u64);
                        if !wait.is_zero() {
                            // What is buffered goes out before the pause, not after it.
                            writer.flush().await?;
                            tokio::time::sleep(wait).await;
                        }
                    }
                    writer.write_encoded().await?;
                    bytes_sent.store(writer.bytes_sent, Ordering::Relaxed);
                }
                Outgoing::Close => return writer.shutdown().await,
            }
        }
    }
    .await;
    if let Err(e) = result {
        *error.lock().expect("write error lock") = Some(e);
    }
}

/// The next queued item; with `keepalive`, a [`Message::KeepAlive`] instead when nothing is
/// queued within [`KEEPALIVE_EVERY`].
async fn next_or_keepalive(
    queue: &flume::Receiver<Outgoing>,
    keepalive: bool,
) -> Result<Outgoing, flume::RecvError> {
    if !keepalive {
        return queue.recv_async().await;
    }
    match tokio::time::timeout(KEEPALIVE_EVERY, queue.recv_async()).await {
        Ok(item) => item,
        Err(_) => Ok(Outgoing::Frame(Message::KeepAlive)),
    }
}

/// Reads frames ahead until the first error (delivered too) or until nobody listens; notes
/// when each frame arrived and keeps keep-alives to itself.
async fn pump_in(
    mut reader: FrameReader,
    queue: flume::Sender<Result<Message, TransportError>>,
    heard: Arc<Clock>,
) {
    loop {
        let message = reader.recv().await;
        if message.is_ok() {
            heard.touch();
        }
        if let Ok(Message::KeepAlive) = message {
            continue;
        }
        let failed = message.is_err();
        if queue.send_async(message).await.is_err() || failed {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::transport::frame::{Preamble, CAP_REFINE, PREAMBLE_LEN};
    use crate::transport::{local, BoxStream};

    const IDLE: Duration = Duration::from_millis(2500);

    fn bounded() -> EndpointOptions {
        EndpointOptions {
            idle: Some(IDLE),
            ..EndpointOptions::default()
        }
    }

    /// Plays an older peer by hand: its preamble without `CAP_KEEPALIVE`, then silence with
    /// the stream held open (as a stopped process's socket is).
    async fn older_peer_that_falls_silent(mut stream: BoxStream) -> BoxStream {
        let older = Preamble {
            version: 1,
            capabilities: CAP_REFINE,
        };
        stream.write_all(&older.encode()).await.unwrap();
        let mut theirs = [0u8; PREAMBLE_LEN];
        stream.read_exact(&mut theirs).await.unwrap();
        stream
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn keepalives_keep_a_busy_peer_from_being_given_up() {
        let (a, b) = local::pair();
        let (mut a, mut b) = (Connection::new(a), Connection::new(b));
        let (ha, hb) = tokio::join!(a.handshake_within(Some(IDLE)), b.handshake());
        assert_eq!(ha.unwrap().capabilities & CAP_KEEPALIVE, CAP_KEEPALIVE);
        hb.unwrap();
        let waiting = Endpoint::start(a, bounded());
        let busy = Endpoint::start(b, EndpointOptions::default());
        // The busy side's engine says nothing for well over the bound; its pump keeps the
        // link alive, so the waiting side gets the message instead of giving up.
        let got = tokio::task::spawn_blocking(move || {
            let answer = std::thread::spawn(move || {
                std::thread::sleep(IDLE * 2);
                busy.send(Message::Rehash).unwrap();
                busy
            });
            let got = waiting.recv();
            drop(answer.join());
            got
        })
        .await
        .unwrap();
        assert_eq!(
            got.unwrap(),
            Message::Rehash,
            "keep-alives never reach the engine"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_silent_peer_is_given_up_within_the_bound() {
        let (a, b) = local::pair();
        let peer = tokio::spawn(older_peer_that_falls_silent(b));
        let mut a = Connection::new(a);
        a.handshake_within(Some(IDLE)).await.unwrap();
        let endpoint = Endpoint::start(a, bounded());
        let got = tokio::task::spawn_blocking(move || endpoint.recv())
            .await
            .unwrap();
        match got {
            Err(e @ TransportError::PeerSilent { .. }) => {
                assert_eq!(
                    e.to_string(),
                    "peer silent for 2 s while waiting for its next message: giving up"
                );
                assert!(e.is_transient(), "a looping sender retries");
            }
            other => panic!("expected PeerSilent, got {other:?}"),
        }
        drop(peer.await.unwrap());
    }

    #[tokio::test]
    async fn a_peer_that_never_sends_its_preamble_is_given_up() {
        let (a, _held_open) = local::pair();
        let mut a = Connection::new(a);
        let error = a.handshake_within(Some(IDLE)).await.unwrap_err();
        assert_eq!(
            error.to_string(),
            "peer silent for 2 s while waiting for its preamble: giving up"
        );
    }
}
