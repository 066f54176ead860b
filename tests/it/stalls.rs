//! Stalls: a peer that stops answering mid-cycle without closing its connection (SIGSTOP: a
//! frozen VM, a dead NAT, a hung process). The other side must give up within its
//! `--peer-timeout`, say "peer silent", free the target, and (a looping sender) retry and
//! converge once the peer is back. Before the bound existed each of these waited as long as
//! TCP kept the connection (forever, on loopback).
//!
//! The stop lands mid-cycle for certain: [`freeze_mid_cycle`] only stops the sender at a
//! moment the receiver's status says `mid-cycle`.

use serde_json::Value;

use crate::support::*;

/// The bound the tests give: the smallest accepted, so a missing bound shows as a timeout.
const PEER_TIMEOUT: &str = "3s";

struct Setup {
    t: Scratch,
    ids: TlsPair,
    src: std::path::PathBuf,
    tgt: std::path::PathBuf,
    rstate: std::path::PathBuf,
}

impl Setup {
    fn new(name: &str, seed: u64) -> Setup {
        let t = Scratch::new(name);
        let ids = TlsPair::new(&t);
        let src = t.path("source.img");
        write_random_file(&src, 96 * MIB, seed);
        Setup {
            src,
            tgt: t.path("target.img"),
            rstate: t.dir("state-receiver"),
            ids,
            t,
        }
    }

    fn receiver(&self) -> Receiver {
        let mut args = self.ids.receiver_args();
        args.extend(["--create", "--peer-timeout", PEER_TIMEOUT].map(String::from));
        Receiver::start(&self.tgt, &self.rstate, &args)
    }

    /// `send SRC URL --state-dir STATE --peer-timeout 3s` plus TLS and `extra`.
    fn sender(&self, receiver: &Receiver, state: &str, extra: &[&str]) -> Proc {
        let mut args = send_args(s(&self.src), &receiver.url(), &self.t.dir(state));
        args.extend(["--compress-level", "1", "--peer-timeout", PEER_TIMEOUT].map(String::from));
        args.extend(extra.iter().map(|a| a.to_string()));
        args.extend(self.ids.sender_args());
        Proc::blkmirror(state, &args)
    }
}

fn detail(state: &std::path::Path) -> Option<String> {
    let entry = status_entry(state, "receiver");
    entry
        .get("detail")
        .and_then(Value::as_str)
        .map(String::from)
}

#[test]
fn a_sender_stopped_mid_cycle_is_given_up_and_the_target_freed() {
    let x = Setup::new("stall-sender", 501);
    let receiver = x.receiver();
    let mut frozen = x.sender(&receiver, "state-frozen", &["--once"]);
    freeze_mid_cycle(&x.rstate, &mut frozen, || true);

    // The frozen sender's connection stays open; only the bound can end the session.
    wait_for(
        RUN_TIMEOUT,
        "the receiver to give up on the frozen sender",
        || (detail(&x.rstate).as_deref() == Some("interrupted")).then_some(()),
    );
    let said = receiver.proc.stderr_lines().join("\n");
    assert!(
        said.contains("peer silent for 3 s"),
        "the receiver must say why it gave up:\n{said}"
    );

    // The target is free: another sender completes a cycle while the first is still stopped.
    let out = x
        .sender(&receiver, "state-other", &["--once"])
        .finish(RUN_TIMEOUT);
    out.assert_success();
    assert_identical(&x.src, &x.tgt);
    assert_receiver_consistent(&status_entry(&x.rstate, "receiver"), 1);
    frozen.kill9();
}

#[test]
fn a_receiver_stopped_mid_cycle_is_given_up_and_a_looping_sender_retries() {
    let x = Setup::new("stall-receiver", 511);
    let mut receiver = x.receiver();
    let mut sender = x.sender(
        &receiver,
        "state-sender",
        &["--until-quiet", "--interval", "0s"],
    );
    freeze_mid_cycle(&x.rstate, &mut sender, || true);
    receiver.proc.signal(Signal::SIGSTOP);
    assert!(receiver.proc.wait_stopped(), "{}", receiver.proc.describe());
    sender.signal(Signal::SIGCONT);

    // The sender gives up on the frozen receiver and says so (and keeps retrying).
    wait_for(
        RUN_TIMEOUT,
        "the sender to give up on the frozen receiver",
        || {
            let said = sender.stderr_lines().join("\n");
            said.contains("peer silent for 3 s").then_some(())
        },
    );
    assert!(sender.try_wait().is_none(), "a looping sender retries");

    // Back on its feet, the receiver drops the dead session; the retry converges.
    receiver.proc.signal(Signal::SIGCONT);
    let out = sender.finish(RUN_TIMEOUT);
    out.assert_success();
    assert_identical(&x.src, &x.tgt);
    let entry = status_entry(&x.rstate, "receiver");
    assert_eq!(entry["condition"], "consistent", "{entry}");
}

#[test]
fn a_once_sender_facing_a_stopped_receiver_exits_with_one_clear_line() {
    let x = Setup::new("stall-once", 521);
    let mut receiver = x.receiver();
    let mut sender = x.sender(&receiver, "state-sender", &["--once"]);
    freeze_mid_cycle(&x.rstate, &mut sender, || true);
    receiver.proc.signal(Signal::SIGSTOP);
    assert!(receiver.proc.wait_stopped(), "{}", receiver.proc.describe());
    sender.signal(Signal::SIGCONT);
    let out = sender.finish(RUN_TIMEOUT);
    out.assert_error(1, &["peer silent for 3 s"]);
    assert!(
        out.json_lines().is_empty(),
        "no commit may be reported: {out:?}"
    );
    receiver.proc.signal(Signal::SIGCONT);
}

#[test]
fn a_tls_listener_that_never_answers_is_given_up_within_the_peer_timeout() {
    // TCP accepts (the kernel does, even for a frozen process), TLS never starts.
    let t = Scratch::new("stall-tls-handshake");
    let ids = TlsPair::new(&t);
    let src = t.path("source.img");
    write_random_file(&src, MIB, 531);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("tls://{}", listener.local_addr().unwrap());
    let mut args = send_args(s(&src), &url, &t.dir("state"));
    args.extend(["--once", "--peer-timeout", PEER_TIMEOUT].map(String::from));
    args.extend(ids.sender_args());
    let out = run(&args);
    out.assert_error(1, &["TLS handshake", "timed out after 3 s"]);
    drop(listener);
}
