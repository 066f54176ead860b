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
//! Every wait is bounded: `recv` and `send` give up with [`TransportError::PeerSilent`] when the
//! peer has sent (or taken) nothing for the configured idle time, and with
//! [`TransportError::Stopped`] soon after a stop is requested.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::frame::Message;
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

/// Bounds on the waits of an endpoint.
#[derive(Clone, Debug)]
pub struct EndpointOptions {
    /// Give up when the peer sends nothing (or reads nothing) for this long; `None`: wait as
    /// long as the connection lives.
    pub idle: Option<Duration>,
    /// Set to stop: blocked calls return [`TransportError::Stopped`] within 50 ms (`POLL`).
    pub stop: Arc<AtomicBool>,
}

impl Default for EndpointOptions {
    fn default() -> Self {
        EndpointOptions {
            idle: None,
            stop: Arc::new(AtomicBool::new(false)),
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
    writer: Mutex<Option<tokio::task::JoinHandle<()>>>,
    reader: tokio::task::AbortHandle,
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
        let writer = tokio::spawn(pump_out(
            writer,
            out_rx,
            bytes_sent.clone(),
            write_error.clone(),
        ));
        let reader = tokio::spawn(pump_in(reader, in_tx)).abort_handle();
        Endpoint {
            out,
            incoming,
            peer_capabilities,
            options,
            write_error,
            bytes_sent,
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

    fn silent(&self, since: Instant, waiting: &'static str) -> Option<TransportError> {
        let limit = self.options.idle?;
        (since.elapsed() >= limit).then_some(TransportError::PeerSilent {
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

/// Writes queued messages, flushing whenever the queue runs dry.
async fn pump_out(
    mut writer: FrameWriter,
    queue: flume::Receiver<Outgoing>,
    bytes_sent: Arc<AtomicU64>,
    error: Arc<Mutex<Option<TransportError>>>,
) {
    let result: Result<(), TransportError> = async {
        loop {
            let item = match queue.try_recv() {
                Ok(item) => item,
                Err(flume::TryRecvError::Empty) => {
                    writer.flush().await?;
                    match queue.recv_async().await {
                        Ok(item) => item,
                        Err(_) => Outgoing::Close,
                    }
                }
                Err(flume::TryRecvError::Disconnected) => Outgoing::Close,
            };
            match item {
                Outgoing::Frame(message) => {
                    writer.send(&message).await?;
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

/// Reads frames ahead until the first error (delivered too) or until nobody listens.
async fn pump_in(mut reader: FrameReader, queue: flume::Sender<Result<Message, TransportError>>) {
    loop {
        let message = reader.recv().await;
        let failed = message.is_err();
        if queue.send_async(message).await.is_err() || failed {
            return;
        }
    }
}
