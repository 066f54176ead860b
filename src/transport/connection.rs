//! A framed, versioned connection over any byte stream: the preamble exchange, then frames
//! read and written through buffered halves that can be driven concurrently.

use std::io;

use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};

use super::frame::{FrameError, Message, Preamble, PREAMBLE_LEN, PROTOCOL_VERSION};
use super::{BoxStream, TransportError};

/// The reading half of a connection.
pub struct FrameReader {
    reader: BufReader<tokio::io::ReadHalf<BoxStream>>,
    /// Bytes read from the stream so far.
    pub bytes_received: u64,
}

/// The writing half of a connection.
pub struct FrameWriter {
    writer: BufWriter<tokio::io::WriteHalf<BoxStream>>,
    scratch: Vec<u8>,
    /// Bytes written to the stream so far (frames and preamble).
    pub bytes_sent: u64,
}

/// A framed, versioned connection. Its halves can be driven concurrently (the sender reads
/// refinement answers while it writes).
pub struct Connection {
    /// The reading half (1 MiB buffer).
    pub reader: FrameReader,
    /// The writing half (1 MiB buffer).
    pub writer: FrameWriter,
    /// Capability bits the peer announced in its preamble.
    pub peer_capabilities: u64,
}

impl FrameReader {
    /// Reads the next message. A `Refused` from the peer becomes [`TransportError::Refused`].
    /// Not cancel-safe: only drop a pending `recv` when no frame can be in flight.
    pub async fn recv(&mut self) -> Result<Message, TransportError> {
        let mut len_bytes = [0u8; 4];
        match self.reader.read_exact(&mut len_bytes).await {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                return Err(TransportError::Closed)
            }
            Err(e) => return Err(e.into()),
        }
        let len = u32::from_le_bytes(len_bytes);
        Message::check_len(len)?;
        let mut body = vec![0u8; len as usize];
        match self.reader.read_exact(&mut body).await {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                return Err(TransportError::Frame(FrameError::Truncated {
                    needed: len as usize,
                    available: 0,
                }))
            }
            Err(e) => return Err(e.into()),
        }
        self.bytes_received += 4 + len as u64;
        match Message::decode(&body)? {
            Message::Refused { reason } => Err(TransportError::Refused(reason)),
            message => Ok(message),
        }
    }
}

impl FrameWriter {
    /// Queues a message (buffered; call [`FrameWriter::flush`] when waiting for an answer).
    pub async fn send(&mut self, message: &Message) -> Result<(), TransportError> {
        self.encode(message);
        self.write_encoded().await
    }

    /// Encodes a message for [`FrameWriter::write_encoded`]; returns its length on the wire
    /// (what a bandwidth limit charges before it is written).
    pub fn encode(&mut self, message: &Message) -> usize {
        self.scratch.clear();
        message.encode(&mut self.scratch);
        self.scratch.len()
    }

    /// Queues the message [`FrameWriter::encode`] encoded last.
    pub async fn write_encoded(&mut self) -> Result<(), TransportError> {
        self.writer.write_all(&self.scratch).await?;
        self.bytes_sent += self.scratch.len() as u64;
        Ok(())
    }

    /// Writes out what is buffered.
    pub async fn flush(&mut self) -> Result<(), TransportError> {
        self.writer.flush().await?;
        Ok(())
    }

    /// Flushes and closes the writing side cleanly (the peer reads end of stream).
    pub async fn shutdown(&mut self) -> Result<(), TransportError> {
        self.writer.flush().await?;
        self.writer.shutdown().await?;
        Ok(())
    }
}

impl Connection {
    /// A connection over `stream`, before the handshake.
    pub fn new(stream: BoxStream) -> Self {
        let (read, write) = tokio::io::split(stream);
        Connection {
            reader: FrameReader {
                reader: BufReader::with_capacity(1 << 20, read),
                bytes_received: 0,
            },
            writer: FrameWriter {
                writer: BufWriter::with_capacity(1 << 20, write),
                scratch: Vec::new(),
                bytes_sent: 0,
            },
            peer_capabilities: 0,
        }
    }

    /// Bytes written so far.
    pub fn bytes_sent(&self) -> u64 {
        self.writer.bytes_sent
    }

    /// Exchanges preambles. Both sides write theirs first, then read the peer's; a peer of
    /// another version gets a `Refused` frame (whose encoding is frozen) and a clear error.
    pub async fn handshake(&mut self) -> Result<Preamble, TransportError> {
        let ours = Preamble::ours();
        self.writer.writer.write_all(&ours.encode()).await?;
        self.writer.writer.flush().await?;
        self.writer.bytes_sent += PREAMBLE_LEN as u64;
        let mut buf = [0u8; PREAMBLE_LEN];
        match self.reader.reader.read_exact(&mut buf).await {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                return Err(TransportError::Closed)
            }
            Err(e) => return Err(e.into()),
        }
        self.reader.bytes_received += PREAMBLE_LEN as u64;
        let theirs = Preamble::decode(&buf)?;
        if theirs.version != PROTOCOL_VERSION {
            let error = TransportError::VersionMismatch {
                ours: PROTOCOL_VERSION,
                theirs: theirs.version,
            };
            self.refuse(&error.to_string()).await;
            return Err(error);
        }
        self.peer_capabilities = theirs.capabilities;
        Ok(theirs)
    }

    /// [`Connection::handshake`], giving up with [`TransportError::PeerSilent`] when the peer's
    /// preamble has not arrived within `limit` (`None`: no limit, for an in-process peer).
    /// A stream whose far end hangs (ssh stuck before login, a listener that never answers)
    /// ends here instead of waiting for TCP to notice.
    pub async fn handshake_within(
        &mut self,
        limit: Option<std::time::Duration>,
    ) -> Result<Preamble, TransportError> {
        let Some(limit) = limit else {
            return self.handshake().await;
        };
        match tokio::time::timeout(limit, self.handshake()).await {
            Ok(result) => result,
            Err(_) => Err(TransportError::PeerSilent {
                secs: limit.as_secs(),
                waiting: "waiting for its preamble",
            }),
        }
    }

    /// Queues a message (buffered; call [`Connection::flush`] when waiting for an answer).
    pub async fn send(&mut self, message: &Message) -> Result<(), TransportError> {
        self.writer.send(message).await
    }

    /// Writes out what is buffered.
    pub async fn flush(&mut self) -> Result<(), TransportError> {
        self.writer.flush().await
    }

    /// Reads the next message. A `Refused` from the peer becomes [`TransportError::Refused`].
    pub async fn recv(&mut self) -> Result<Message, TransportError> {
        self.reader.recv().await
    }

    /// Sends a refusal and flushes, ignoring errors (the connection is going away).
    pub async fn refuse(&mut self, reason: &str) {
        let _ = self
            .send(&Message::Refused {
                reason: reason.to_string(),
            })
            .await;
        let _ = self.flush().await;
        let _ = self.writer.writer.shutdown().await;
    }

    /// Closes the writing side cleanly.
    pub async fn shutdown(&mut self) -> Result<(), TransportError> {
        self.writer.writer.flush().await?;
        self.writer.writer.shutdown().await?;
        Ok(())
    }
}
