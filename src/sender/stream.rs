//! Streaming one cycle's changes: the scan and the packer run on a blocking thread, while this
//! side writes their messages to the connection and reads refinement answers back.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::blockdiff::manifest::{BlockHash, Manifest};
use crate::blockdiff::scan::{scan, ScanError, ScanOptions};
use crate::progress::Progress;
use crate::source::BlockSource;
use crate::transport::frame::{Message, CAP_REFINE};
use crate::transport::{Connection, FrameReader, FrameWriter, TransportError};

use super::error::{unexpected, SendError};
use super::packing::{ChangeStats, Differ, Stop};
use super::CycleConfig;

/// Extents queued between the scan and the network.
const SEND_QUEUE: usize = 32;

/// Scans on a blocking thread; this task writes the differ's messages to the connection and,
/// concurrently, reads the receiver's refinement answers back to the differ. Returns every
/// block's new hash.
pub(crate) async fn stream_changes(
    conn: &mut Connection,
    config: &CycleConfig,
    source: Arc<BlockSource>,
    base: Manifest,
    pool: Arc<rayon::ThreadPool>,
    cancel: Arc<AtomicBool>,
    progress: Arc<dyn Progress>,
) -> Result<(Vec<BlockHash>, ChangeStats), SendError> {
    let (tx, mut rx) = mpsc::channel::<Message>(SEND_QUEUE);
    let refining = conn.peer_capabilities & CAP_REFINE != 0;
    let (answer_tx, answer_rx) = mpsc::unbounded_channel();
    let options = ScanOptions {
        read_mode: config.read_mode,
        ..ScanOptions::new(config.block_size)
    };
    let level = config.compress_level;
    let scanner = tokio::task::spawn_blocking(move || {
        let mut differ = Differ::new(base, level, tx, refining.then_some(answer_rx));
        let result = scan(&source, &options, &pool, &cancel, &*progress, |chunk| {
            differ.chunk(&pool, chunk, &*progress)
        });
        let result = result.and_then(|()| differ.finish().map_err(ScanError::Sink));
        (result, differ.new_hashes, differ.stats)
    });
    let Connection { reader, writer, .. } = conn;
    let writing = async {
        let result = write_all(writer, &mut rx).await;
        drop(rx);
        result
    };
    let reading = read_answers(reader, answer_tx);
    let (written, read) = tokio::join!(writing, reading);
    let (result, hashes, stats) = scanner.await.expect("scan task panicked");
    read?;
    if let Err(e) = written {
        return Err(refusal_or(conn, e).await);
    }
    match result {
        Ok(()) => Ok((hashes, stats)),
        Err(ScanError::Cancelled) => Err(SendError::Cancelled),
        Err(ScanError::Read {
            path,
            offset,
            source,
        }) => Err(SendError::Read(format!(
            "read error at byte {offset} of {path}: {source}"
        ))),
        Err(ScanError::Sink(Stop::BadAnswer(what))) => Err(SendError::Protocol(what)),
        Err(ScanError::Sink(Stop::Disconnected)) => {
            Err(SendError::Transport(TransportError::Closed))
        }
    }
}

/// Writes queued messages, flushing whenever the queue runs dry (the receiver may be waiting
/// for a Refine to answer).
async fn write_all(
    writer: &mut FrameWriter,
    rx: &mut mpsc::Receiver<Message>,
) -> Result<(), TransportError> {
    loop {
        let message = match rx.try_recv() {
            Ok(message) => message,
            Err(mpsc::error::TryRecvError::Empty) => {
                writer.flush().await?;
                match rx.recv().await {
                    Some(message) => message,
                    None => return Ok(()),
                }
            }
            Err(mpsc::error::TryRecvError::Disconnected) => return Ok(()),
        };
        writer.send(&message).await?;
    }
}

/// Forwards refinement answers to the differ until it stops listening. Only then is a pending
/// read abandoned: no answer can be in flight once the differ has all it asked for.
async fn read_answers(
    reader: &mut FrameReader,
    answers: mpsc::UnboundedSender<(u64, Vec<u8>)>,
) -> Result<(), SendError> {
    loop {
        let message = tokio::select! {
            message = reader.recv() => message,
            _ = answers.closed() => return Ok(()),
        };
        match message {
            Ok(Message::RefineAnswer {
                first_block,
                bitmap,
            }) => {
                let _ = answers.send((first_block, bitmap));
            }
            Ok(other) => return Err(unexpected(&other, "RefineAnswer")),
            Err(e) => return Err(e.into()),
        }
    }
}

/// After a failed write: the receiver usually refused first and said why; prefer its reason.
async fn refusal_or(conn: &mut Connection, error: TransportError) -> SendError {
    match tokio::time::timeout(Duration::from_secs(5), conn.recv()).await {
        Ok(Err(refused @ TransportError::Refused(_))) => refused.into(),
        _ => error.into(),
    }
}
