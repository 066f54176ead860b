//! Fault injection against a real receiver: the test plays a misbehaving sender over
//! `blkmirror receive --stdio` using the library's own frame encoding, and checks that every
//! bad stream is refused with a clear error, that nothing unverified reaches the target, that
//! the previous generation stays committed with the target marked mid-cycle when it was
//! touched, and that a real `send` afterwards converges.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use blkmirror::blockdiff::manifest::hash_block;
use blkmirror::transport::frame::{Message, Preamble, PREAMBLE_LEN};

use crate::support;

const BS: usize = 65536;
const SIZE: usize = 16 * BS;

/// A `receive --stdio` process and the raw pipes to it.
struct RawSender {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: ChildStdout,
}

impl RawSender {
    fn start(target: &Path, state: &Path) -> Self {
        Self::start_with(target, state, &[])
    }

    fn start_with(target: &Path, state: &Path, extra: &[&str]) -> Self {
        let mut child = Command::new(support::bin())
            .args(["receive", "--stdio", "--create", "--state-dir"])
            .arg(state)
            .args(extra)
            .arg(target)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn receiver");
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().unwrap();
        RawSender {
            child,
            stdin,
            stdout,
        }
    }

    fn write_raw(&mut self, bytes: &[u8]) {
        // The receiver may already have hung up after refusing: that is not a test failure.
        let _ = self.stdin.as_mut().unwrap().write_all(bytes);
        let _ = self.stdin.as_mut().unwrap().flush();
    }

    fn send(&mut self, message: &Message) {
        let mut buf = Vec::new();
        message.encode(&mut buf);
        self.write_raw(&buf);
    }

    fn handshake(&mut self, preamble: Preamble) -> Result<Preamble, String> {
        self.write_raw(&preamble.encode());
        let mut buf = [0u8; PREAMBLE_LEN];
        self.stdout
            .read_exact(&mut buf)
            .map_err(|e| e.to_string())?;
        Preamble::decode(&buf).map_err(|e| e.to_string())
    }

    /// The receiver's next message, keep-alives skipped (a real connection swallows them).
    fn recv(&mut self) -> Option<Message> {
        loop {
            let mut len = [0u8; 4];
            self.stdout.read_exact(&mut len).ok()?;
            let mut body = vec![0u8; u32::from_le_bytes(len) as usize];
            self.stdout.read_exact(&mut body).ok()?;
            match Message::decode(&body).expect("receiver sent a valid frame") {
                Message::KeepAlive => continue,
                message => return Some(message),
            }
        }
    }

    /// Starts cycle 1 for a SIZE-byte device and returns the receiver's TargetState.
    fn start_cycle(&mut self) -> Message {
        self.handshake(Preamble::ours()).expect("handshake");
        self.send(&Message::CycleStart {
            generation: 1,
            device_size: SIZE as u64,
            block_size: BS as u32,
            base_root: None,
        });
        self.recv().expect("TargetState")
    }

    /// Closes our end and returns (exit code, stderr).
    fn finish(mut self) -> (i32, String) {
        drop(self.stdin.take());
        self.exit_status()
    }

    /// Waits for the receiver to exit on its own, our end still open (panics after
    /// `timeout`: the receiver hung), then returns (exit code, stderr).
    fn wait_holding_open(mut self, timeout: std::time::Duration) -> (i32, String) {
        support::wait_for(timeout, "the receiver to give up", || {
            self.child.try_wait().unwrap().map(|_| ())
        });
        let answer = self.exit_status();
        drop(self.stdin.take());
        answer
    }

    fn exit_status(&mut self) -> (i32, String) {
        let mut stderr = String::new();
        self.child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut stderr)
            .unwrap();
        let status = self.child.wait().unwrap();
        (status.code().unwrap_or(-1), stderr)
    }
}

struct Setup {
    _dir: tempfile::TempDir,
    source: PathBuf,
    target: PathBuf,
    state: PathBuf,
}

/// A source, and a target mirrored from it once with the real binary (generation 1).
fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("source.img");
    let target = dir.path().join("target.img");
    let state = dir.path().join("state");
    let data: Vec<u8> = (0..SIZE).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(&source, &data).unwrap();
    send_once(&source, &target, &state);
    Setup {
        _dir: dir,
        source,
        target,
        state,
    }
}

/// One real cycle, after which the target equals the (quiescent) source.
fn send_once(source: &Path, target: &Path, state: &Path) {
    support::send_once(support::s(source), support::s(target), state, &[]);
    support::assert_identical(source, target);
}

fn receiver_status(state: &Path) -> serde_json::Value {
    support::status_entry(state, "receiver")
}

fn error_lines(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .filter(|l| l.starts_with("blkmirror: error: "))
        .collect()
}

fn extent(first_block: u64, data: &[u8], hashes: Vec<[u8; 32]>) -> Message {
    Message::Extent {
        first_block,
        raw_len: data.len() as u32,
        compressed: false,
        hashes,
        payload: data.to_vec(),
    }
}

#[test]
fn block_hash_mismatch_is_refused_and_marks_target_mid_cycle() {
    let s = setup();
    let mut peer = RawSender::start(&s.target, &s.state);
    assert!(matches!(
        peer.start_cycle(),
        Message::TargetState {
            committed_generation: 1,
            ..
        }
    ));
    let good = vec![0xAB; BS];
    peer.send(&extent(0, &good, vec![hash_block(&good)]));
    let bad = vec![0xCD; BS];
    peer.send(&extent(1, &bad, vec![hash_block(&good)]));
    peer.send(&Message::CycleEnd {
        generation: 2,
        root: [0; 32],
    });
    let reply = peer.recv();
    assert!(
        matches!(&reply, Some(Message::Refused { reason }) if reason.contains("block hash mismatch at byte 65536")),
        "{reply:?}"
    );
    let (code, stderr) = peer.finish();
    assert_eq!(code, 1);
    let errors = error_lines(&stderr);
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(errors[0].contains("block hash mismatch"), "{stderr}");
    let target = std::fs::read(&s.target).unwrap();
    let source = std::fs::read(&s.source).unwrap();
    assert_eq!(&target[..BS], &good[..], "the verified block was written");
    assert_eq!(
        &target[BS..],
        &source[BS..],
        "the unverified block never reached the target"
    );
    let status = receiver_status(&s.state);
    assert_eq!(status["condition"], "mid-cycle");
    assert_eq!(status["committed_generation"], 1);
    send_once(&s.source, &s.target, &s.state);
    let status = receiver_status(&s.state);
    assert_eq!(status["condition"], "consistent");
    assert_eq!(status["committed_generation"], 2);
}

#[test]
fn bad_block_before_any_write_leaves_target_consistent() {
    let s = setup();
    let before = std::fs::read(&s.target).unwrap();
    let mut peer = RawSender::start(&s.target, &s.state);
    peer.start_cycle();
    let bad = vec![0xCD; BS];
    peer.send(&extent(3, &bad, vec![[7; 32]]));
    assert!(matches!(peer.recv(), Some(Message::Refused { .. })));
    let (code, _) = peer.finish();
    assert_eq!(code, 1);
    assert_eq!(
        std::fs::read(&s.target).unwrap(),
        before,
        "target untouched"
    );
    let status = receiver_status(&s.state);
    assert_eq!(status["condition"], "consistent");
    assert_eq!(status["committed_generation"], 1);
}

#[test]
fn truncated_stream_aborts_cycle_and_next_send_converges() {
    let s = setup();
    let mut peer = RawSender::start(&s.target, &s.state);
    peer.start_cycle();
    let good = vec![0x5A; BS];
    peer.send(&extent(2, &good, vec![hash_block(&good)]));
    let mut frame = Vec::new();
    extent(3, &good, vec![hash_block(&good)]).encode(&mut frame);
    peer.write_raw(&frame[..frame.len() / 2]);
    let (code, stderr) = peer.finish();
    assert_eq!(code, 1);
    assert_eq!(error_lines(&stderr).len(), 1, "{stderr}");
    assert!(error_lines(&stderr)[0].contains("truncated"), "{stderr}");
    let status = receiver_status(&s.state);
    assert_eq!(status["condition"], "mid-cycle");
    assert_eq!(status["detail"], "interrupted");
    assert_eq!(status["committed_generation"], 1);
    send_once(&s.source, &s.target, &s.state);
    assert_eq!(receiver_status(&s.state)["condition"], "consistent");
}

#[test]
fn corrupt_compressed_payload_is_refused() {
    let s = setup();
    let before = std::fs::read(&s.target).unwrap();
    let mut peer = RawSender::start(&s.target, &s.state);
    peer.start_cycle();
    peer.send(&Message::Extent {
        first_block: 0,
        raw_len: BS as u32,
        compressed: true,
        hashes: vec![[1; 32]],
        payload: vec![0x28, 0xb5, 0x2f, 0xfd, 1, 2, 3, 4, 5, 6, 7, 8],
    });
    let reply = peer.recv();
    assert!(
        matches!(&reply, Some(Message::Refused { reason }) if reason.contains("does not decompress")),
        "{reply:?}"
    );
    assert_eq!(peer.finish().0, 1);
    assert_eq!(std::fs::read(&s.target).unwrap(), before);
}

#[test]
fn a_damaged_length_field_ends_in_peer_silent_within_the_bound() {
    // The length says 1 MiB follows; 16 bytes do, and the sender (still connected) waits for
    // an answer that cannot come. Without a bound both ends wait forever.
    let s = setup();
    let before = std::fs::read(&s.target).unwrap();
    let mut peer = RawSender::start_with(&s.target, &s.state, &["--peer-timeout", "3s"]);
    peer.start_cycle();
    peer.write_raw(&(1u32 << 20).to_le_bytes());
    peer.write_raw(&[7u8; 16]);
    let (code, stderr) = peer.wait_holding_open(support::RUN_TIMEOUT);
    assert_eq!(code, 1, "{stderr}");
    assert_eq!(error_lines(&stderr).len(), 1, "{stderr}");
    assert!(
        error_lines(&stderr)[0].contains("peer silent for 3 s"),
        "{stderr}"
    );
    assert_eq!(std::fs::read(&s.target).unwrap(), before);
    assert_eq!(receiver_status(&s.state)["committed_generation"], 1);
    send_once(&s.source, &s.target, &s.state);
    assert_eq!(receiver_status(&s.state)["condition"], "consistent");
}

#[test]
fn a_frame_that_does_not_decode_is_answered_with_the_reason() {
    // The receiver found the fault: it says so to the sender (which would otherwise only see
    // the connection close) before it ends, and records the same cause.
    let s = setup();
    let mut peer = RawSender::start(&s.target, &s.state);
    peer.start_cycle();
    peer.write_raw(&[1, 0, 0, 0, 99]);
    let reply = peer.recv();
    assert!(
        matches!(&reply, Some(Message::Refused { reason }) if reason.contains("unknown frame type 99")),
        "{reply:?}"
    );
    let (code, stderr) = peer.finish();
    assert_eq!(code, 1);
    assert!(
        error_lines(&stderr)[0].contains("unknown frame type 99"),
        "{stderr}"
    );
}

#[test]
fn a_target_grown_by_a_cycle_start_is_not_read_to_be_hashed() {
    // 64 GiB announced for a 1 MiB target: the grown region is known zeros (holes). Reading
    // it to hash it would be 64 GiB of read(2) before the receiver could answer.
    let s = setup();
    let mut peer =
        RawSender::start_with(&s.target, &s.state, &["--max-size", "1T", "--threads", "1"]);
    let pid = peer.child.id();
    let read_so_far = || -> u64 {
        let io = std::fs::read_to_string(format!("/proc/{pid}/io")).unwrap();
        let line = io.lines().find(|l| l.starts_with("rchar:")).unwrap();
        line[6..].trim().parse().unwrap()
    };
    peer.handshake(Preamble::ours()).expect("handshake");
    peer.send(&Message::CycleStart {
        generation: 2,
        device_size: 64 << 30,
        block_size: BS as u32,
        base_root: None,
    });
    let answer = peer.recv();
    assert!(
        matches!(answer, Some(Message::TargetState { .. })),
        "{answer:?}"
    );
    let read = read_so_far();
    assert!(read < 256 << 20, "the receiver read {read} bytes to answer");
    drop(peer.finish());
}

#[test]
fn oversized_frame_is_refused_before_allocating() {
    let s = setup();
    let mut peer = RawSender::start(&s.target, &s.state);
    peer.start_cycle();
    peer.write_raw(&u32::MAX.to_le_bytes());
    let (code, stderr) = peer.finish();
    assert_eq!(code, 1);
    assert!(
        error_lines(&stderr)[0].contains("exceeds the limit"),
        "{stderr}"
    );
}

#[test]
fn extent_outside_device_is_refused() {
    let s = setup();
    let before = std::fs::read(&s.target).unwrap();
    let mut peer = RawSender::start(&s.target, &s.state);
    peer.start_cycle();
    let good = vec![0x11; BS];
    peer.send(&extent(16, &good, vec![hash_block(&good)]));
    let reply = peer.recv();
    assert!(
        matches!(&reply, Some(Message::Refused { reason }) if reason.contains("outside the device")),
        "{reply:?}"
    );
    peer.finish();
    assert_eq!(std::fs::read(&s.target).unwrap(), before);
}

#[test]
fn other_protocol_version_is_refused_clearly() {
    let s = setup();
    let mut peer = RawSender::start(&s.target, &s.state);
    let theirs = peer
        .handshake(Preamble {
            version: 99,
            capabilities: 0,
        })
        .unwrap();
    assert_eq!(theirs, Preamble::ours());
    let reply = peer.recv();
    assert!(
        matches!(&reply, Some(Message::Refused { reason }) if reason.contains("protocol version 99")),
        "{reply:?}"
    );
    let (code, stderr) = peer.finish();
    assert_eq!(code, 1);
    assert!(
        error_lines(&stderr)[0].contains("protocol version 99"),
        "{stderr}"
    );
}

#[test]
fn not_blkmirror_is_refused() {
    let s = setup();
    let mut peer = RawSender::start(&s.target, &s.state);
    peer.write_raw(b"SSH-2.0-OpenSSH_9.2\r\n");
    let (code, stderr) = peer.finish();
    assert_eq!(code, 1);
    assert!(
        error_lines(&stderr)[0].contains("not a blkmirror endpoint"),
        "{stderr}"
    );
}

#[test]
fn absurd_geometry_is_refused_before_sizing_anything() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("new.img");
    let mut peer = RawSender::start(&target, &dir.path().join("state"));
    peer.handshake(Preamble::ours()).unwrap();
    peer.send(&Message::CycleStart {
        generation: 1,
        device_size: u64::MAX / 2,
        block_size: 4096,
        base_root: None,
    });
    let reply = peer.recv();
    assert!(
        matches!(&reply, Some(Message::Refused { reason }) if reason.contains("exceeds the receiver's limits")),
        "{reply:?}"
    );
    peer.finish();
    assert!(!target.exists(), "no target was created");
}

#[test]
fn patch_whose_block_hash_does_not_match_is_refused_and_nothing_is_written() {
    let s = setup();
    let before = std::fs::read(&s.target).unwrap();
    let mut peer = RawSender::start(&s.target, &s.state);
    peer.start_cycle();
    let mut new_block = before[..BS].to_vec();
    new_block[5000] ^= 0xFF;
    let key = [5u8; 32];
    peer.send(&Message::RefineKey { key });
    peer.send(&Message::Refine {
        first_block: 0,
        block_count: 1,
        sub_hashes: blkmirror::blockdiff::refine::sub_hashes(&key, &new_block),
    });
    let Some(Message::RefineAnswer {
        first_block: 0,
        bitmap,
    }) = peer.recv()
    else {
        panic!("expected a RefineAnswer");
    };
    assert_eq!(bitmap, vec![0b10, 0], "only sub-block 1 differs");
    peer.send(&Message::Patch {
        first_block: 0,
        hashes: vec![[9; 32]],
        bitmap: bitmap.clone(),
        raw_len: 4096,
        compressed: false,
        payload: new_block[4096..8192].to_vec(),
    });
    let reply = peer.recv();
    assert!(
        matches!(&reply, Some(Message::Refused { reason }) if reason.contains("block hash mismatch at byte 0")),
        "{reply:?}"
    );
    assert_eq!(peer.finish().0, 1);
    assert_eq!(
        std::fs::read(&s.target).unwrap(),
        before,
        "target untouched"
    );
}

#[test]
fn patch_inconsistent_with_its_bitmap_is_refused() {
    let s = setup();
    let before = std::fs::read(&s.target).unwrap();
    let mut peer = RawSender::start(&s.target, &s.state);
    peer.start_cycle();
    peer.send(&Message::Patch {
        first_block: 2,
        hashes: vec![[9; 32]],
        bitmap: vec![0b1, 0],
        raw_len: 8192,
        compressed: false,
        payload: vec![1; 8192],
    });
    let reply = peer.recv();
    assert!(
        matches!(&reply, Some(Message::Refused { reason }) if reason.contains("does not match its run")),
        "{reply:?}"
    );
    peer.finish();
    assert_eq!(std::fs::read(&s.target).unwrap(), before);
}
