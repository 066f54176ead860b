//! `blkmirror demo`: builds a sample volume in a temporary directory, mirrors it over mutual
//! TLS on 127.0.0.1 to an in-process receiver, changes 1% of it, mirrors again, prints each
//! cycle's figures, and verifies the target byte for byte.

use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::out::outln;
use crate::daemon::link::LinkConfig;
use crate::daemon::{DaemonConfig, Mode};
use crate::progress::Progress;
use crate::receiver::ReceiverConfig;
use crate::sender::{CycleConfig, CycleReport};
use crate::transport::dest::Destination;
use crate::transport::ssh::SshOptions;
use crate::transport::tls;
use crate::units::human_bytes;

const BLOCK: usize = 64 << 10;
/// Smallest sample volume (the demo changes 1% of its blocks: at least a few of them).
pub const MIN_SIZE: u64 = 8 << 20;
/// Largest sample volume (it is written to disk, then read by each cycle and by `verify`).
pub const MAX_SIZE: u64 = 64 << 30;

/// A small deterministic generator (splitmix64) for sample data.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// One sample block: random (like compressed files), text-like, or zeros.
fn sample_block(rng: &mut Rng, buf: &mut [u8]) {
    match rng.next() % 10 {
        0..=3 => rng.fill(buf),
        4..=6 => {
            let words: [&[u8]; 6] = [
                b"mail ",
                b"From: ",
                b"index.html ",
                b"\n",
                b"the quick ",
                b"brown fox ",
            ];
            let mut at = 0;
            while at < buf.len() {
                let w = words[(rng.next() % 6) as usize];
                let n = w.len().min(buf.len() - at);
                buf[at..at + n].copy_from_slice(&w[..n]);
                at += n;
            }
        }
        _ => buf.fill(0),
    }
}

fn build_volume(path: &Path, size: u64) -> anyhow::Result<()> {
    let mut file =
        std::fs::File::create(path).with_context(|| format!("create {}", path.display()))?;
    let mut rng = Rng(2026);
    let mut block = vec![0u8; BLOCK];
    let mut written = 0;
    while written < size {
        let n = (size - written).min(BLOCK as u64) as usize;
        sample_block(&mut rng, &mut block[..n]);
        file.write_all(&block[..n])?;
        written += n as u64;
    }
    file.sync_all()?;
    Ok(())
}

/// Overwrites 1% of the volume's blocks with new data.
fn change_one_percent(path: &Path, size: u64) -> anyhow::Result<u64> {
    let file = std::fs::OpenOptions::new().write(true).open(path)?;
    let blocks = size / BLOCK as u64;
    let count = (blocks / 100).max(1);
    let mut rng = Rng(7);
    let mut block = vec![0u8; BLOCK];
    for _ in 0..count {
        let index = rng.next() % blocks;
        rng.fill(&mut block);
        file.write_all_at(&block, index * BLOCK as u64)?;
    }
    file.sync_all()?;
    Ok(count)
}

fn describe(label: &str, report: &CycleReport) {
    outln!(
        "  {label}: generation {}, scanned {} in {} blocks, {} blocks changed ({} zero), \
         {} of changed data sent as {} on the wire (compression {:.2}x), {:.2} s",
        report.generation,
        human_bytes(report.device_size),
        report.blocks_scanned,
        report.blocks_changed,
        report.blocks_zero,
        human_bytes(report.bytes_changed),
        human_bytes(report.bytes_sent),
        report.compression_ratio,
        report.duration_ms.total as f64 / 1000.0
    );
}

/// The in-process receiver: where it listens, the sender's credentials, and how to stop it.
struct DemoReceiver {
    addr: SocketAddr,
    sender_identity: Arc<tls::Identity>,
    receiver_fingerprint: [u8; 32],
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<(), tls::TlsError>>,
}

/// Runs the demo in `dir` (default: a temporary directory) on a `size`-byte sample volume.
pub async fn run(
    dir: Option<PathBuf>,
    size: u64,
    progress: Arc<dyn Progress>,
) -> anyhow::Result<()> {
    if !(MIN_SIZE..=MAX_SIZE).contains(&size) {
        bail!(
            "--size must be between {} and {}",
            human_bytes(MIN_SIZE),
            human_bytes(MAX_SIZE)
        );
    }
    let temp;
    let dir = match dir {
        Some(dir) => {
            std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
            dir
        }
        None => {
            temp = tempfile::Builder::new()
                .prefix("blkmirror-demo-")
                .tempdir()?;
            temp.path().to_owned()
        }
    };
    mirror_and_verify(&dir, size, progress).await?;
    outln!("demo complete");
    Ok(())
}

async fn mirror_and_verify(
    dir: &Path,
    size: u64,
    progress: Arc<dyn Progress>,
) -> anyhow::Result<()> {
    let source = dir.join("source.img");
    let target = dir.join("target.img");
    outln!("blkmirror demo in {}", dir.display());
    outln!(
        "1. building a {} sample volume: {}",
        human_bytes(size),
        source.display()
    );
    build_volume(&source, size)?;
    let receiver = start_receiver(dir, &target).await?;
    let state = dir.join("sender-state");
    let config = || daemon_config(&source, &state, &receiver);
    let engines = || crate::daemon::Engines {
        provider: Arc::new(crate::snapshot::NoSnapshot::default()),
        tracker: Arc::new(crate::tracker::FullScan),
        progress: progress.clone(),
    };

    outln!("4. initial sync over TLS");
    crate::daemon::run(config(), engines(), |r| describe("cycle", r)).await?;
    let changed = change_one_percent(&source, size)?;
    outln!("5. changed {changed} random 64 KiB blocks (1%) of the source; mirroring again");
    crate::daemon::run(config(), engines(), |r| describe("cycle", r)).await?;

    let _ = receiver.stop.send(());
    receiver.task.await??;
    outln!("6. verifying target against source");
    let report = crate::source::compare::verify(&source, &target, &*progress)?;
    if !report.identical() {
        bail!(
            "target differs from source in {} bytes",
            report.differing_bytes()
        );
    }
    outln!("   identical: {} bytes", report.source_size);
    Ok(())
}

/// Makes both identities, then starts a receiver for `target` on 127.0.0.1.
async fn start_receiver(dir: &Path, target: &Path) -> anyhow::Result<DemoReceiver> {
    outln!("2. making TLS identities for both ends (keygen)");
    let _ = std::fs::remove_dir_all(dir.join("sender-id"));
    let _ = std::fs::remove_dir_all(dir.join("receiver-id"));
    let sender_fp = tls::keygen(&dir.join("sender-id"))?;
    let receiver_fp = tls::keygen(&dir.join("receiver-id"))?;
    let receiver_identity = tls::load_identity(&dir.join("receiver-id"))?;
    let sender_identity = Arc::new(tls::load_identity(&dir.join("sender-id"))?);

    let server = tls::TlsServer::bind(
        "127.0.0.1:0",
        &receiver_identity,
        vec![tls::parse_fingerprint(&sender_fp).map_err(anyhow::Error::msg)?],
    )
    .await?;
    let addr = server.local_addr();
    outln!(
        "3. receiver listening on {addr}, writing {}",
        target.display()
    );
    let receiver_config = Arc::new(ReceiverConfig {
        target: target.to_owned(),
        create: true,
        state_dir: dir.join("receiver-state"),
        threads: 2,
        scrub: None,
        max_size: crate::receiver::GrowthLimit::FreeSpace,
        peer_timeout: Some(Duration::from_secs(60)),
        history: None,
        on_commit: None,
    });
    let (stop, stop_rx) = oneshot::channel::<()>();
    let task = tokio::spawn(crate::receiver::listen::serve_tls(
        server,
        crate::receiver::listen::Served::One(receiver_config),
        async {
            let _ = stop_rx.await;
        },
    ));
    Ok(DemoReceiver {
        addr,
        sender_identity,
        receiver_fingerprint: tls::parse_fingerprint(&receiver_fp).map_err(anyhow::Error::msg)?,
        stop,
        task,
    })
}

/// One cycle from `source` to the demo's receiver.
fn daemon_config(source: &Path, state: &Path, receiver: &DemoReceiver) -> DaemonConfig {
    let addr = receiver.addr;
    DaemonConfig {
        cycle: CycleConfig {
            source: source.to_owned(),
            dest: format!("tls://{addr}"),
            block_size: BLOCK as u32,
            state_dir: state.to_owned(),
            compress_level: 3,
            read_mode: Default::default(),
            audit: Default::default(),
            rehash_target: false,
            read_limit: None,
            post_commit: None,
        },
        link: LinkConfig {
            dest: Destination::Tls {
                host: addr.ip().to_string(),
                port: addr.port(),
                name: None,
            },
            state_dir: state.to_owned(),
            threads: 2,
            tls: Some((
                receiver.sender_identity.clone(),
                receiver.receiver_fingerprint,
            )),
            ssh: SshOptions::default(),
            peer_timeout: Duration::from_secs(60),
            bwlimit: None,
        },
        mode: Mode::Once,
        interval: Duration::from_secs(1),
        threads: 2,
        boundary: Default::default(),
    }
}
