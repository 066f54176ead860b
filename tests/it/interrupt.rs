//! Interrupted cycles over TLS: the sender or the receiver is SIGKILLed while the receiver's
//! status says `mid-cycle`; the next cycle must converge and leave the receiver consistent.
//!
//! The kill point is found by running the sender in short slices (SIGSTOP / SIGCONT) and
//! checking `status --json` on the receiver's state dir (and, where it matters, the target's
//! content) while the sender is frozen, so what was seen still holds when the kill lands. If a
//! sender ever finished a cycle within one slice, the test fails saying so rather than passing
//! vacuously.

use serde_json::Value;

use crate::support::*;

struct Setup {
    t: Scratch,
    ids: TlsPair,
    src: std::path::PathBuf,
    tgt: std::path::PathBuf,
    rstate: std::path::PathBuf,
    sstate: std::path::PathBuf,
}

impl Setup {
    fn new(name: &str, len: u64, seed: u64) -> Setup {
        let t = Scratch::new(name);
        let ids = TlsPair::new(&t);
        let src = t.path("source.img");
        write_random_file(&src, len, seed);
        Setup {
            src,
            tgt: t.path("target.img"),
            rstate: t.dir("state-receiver"),
            sstate: t.dir("state-sender"),
            ids,
            t,
        }
    }

    fn receiver_args(&self) -> Vec<String> {
        let mut args = self.ids.receiver_args();
        args.push("--create".into());
        args
    }

    fn receiver(&self) -> Receiver {
        Receiver::start(&self.tgt, &self.rstate, &self.receiver_args())
    }

    fn sender_args(&self, receiver: &Receiver) -> Vec<String> {
        let mut args = send_args(s(&self.src), &receiver.url(), &self.sstate);
        args.extend(["--once", "--compress-level", "1"].map(String::from));
        args.extend(self.ids.sender_args());
        args
    }

    /// One complete cycle; returns its report.
    fn cycle(&self, receiver: &Receiver) -> Cycle {
        let out = run(&self.sender_args(receiver));
        out.assert_success();
        let lines = out.json_lines();
        assert_eq!(lines.len(), 1, "{out:?}");
        Cycle::from_json(&lines[0])
    }

    /// After convergence: identical, receiver consistent at the sender's generation.
    fn assert_converged(&self, c: &Cycle) {
        assert_identical(&self.src, &self.tgt);
        assert_receiver_consistent(&status_entry(&self.rstate, "receiver"), c.generation);
        let sender = status_entry(&self.sstate, "sender");
        assert_eq!(
            sender.get("generation").and_then(Value::as_u64),
            Some(c.generation),
            "sender status: {sender}"
        );
    }
}

#[track_caller]
fn assert_mid_cycle(entry: &Value, committed: u64) {
    assert_eq!(
        entry.get("condition").and_then(Value::as_str),
        Some("mid-cycle"),
        "{entry}"
    );
    assert_eq!(committed_generation(entry), committed, "{entry}");
    let applying = entry.get("applying_generation").and_then(Value::as_u64);
    assert!(
        applying.is_some_and(|g| g > committed),
        "mid-cycle receiver must say which generation it applies: {entry}"
    );
}

#[test]
fn sender_killed_mid_first_cycle_then_next_cycle_converges() {
    let x = Setup::new("int-sender", 128 * MIB, 301);
    let receiver = x.receiver();
    let mut sender = Proc::blkmirror("sender", &x.sender_args(&receiver));
    freeze_mid_cycle(&x.rstate, &mut sender, || true);
    sender.kill9();
    assert!(
        sender.stdout_lines().is_empty(),
        "a killed cycle reported a commit"
    );

    // Nothing committed; the receiver (still running) says so, and once it has noticed the
    // dead connection it records the cycle as interrupted with an exact manifest.
    assert_mid_cycle(&status_entry(&x.rstate, "receiver"), 0);
    wait_for(
        std::time::Duration::from_secs(60),
        "the receiver to record the interrupted cycle",
        || (status_entry(&x.rstate, "receiver")["detail"] == "interrupted").then_some(()),
    );

    // The same receiver accepts the next sender: the dead one no longer holds the target.
    let c = x.cycle(&receiver);
    x.assert_converged(&c);
}

#[test]
fn receiver_killed_mid_cycle_then_restarted_converges() {
    let len = 64 * MIB;
    let x = Setup::new("int-receiver", len, 311);
    let receiver = x.receiver();
    let c1 = x.cycle(&receiver);
    assert_eq!(c1.generation, 1);
    x.assert_converged(&c1);

    // Change every block, then kill the receiver in the middle of applying that.
    write_random_file(&x.src, len, 312);
    let mut receiver = receiver;
    let mut sender = Proc::blkmirror("sender", &x.sender_args(&receiver));
    freeze_mid_cycle(&x.rstate, &mut sender, || true);
    receiver.proc.kill9();
    sender.signal(Signal::SIGCONT);
    let out = sender.finish(RUN_TIMEOUT);
    out.assert_error(1, &[]);
    assert!(out.json_lines().is_empty(), "{out:?}");
    assert_mid_cycle(&status_entry(&x.rstate, "receiver"), 1);

    // A new receiver on the same address, target and state dir; the next cycle converges.
    let addr = receiver.addr;
    drop(receiver);
    let receiver = Receiver::restart_at(&x.tgt, &x.rstate, addr, &x.receiver_args());
    let c = x.cycle(&receiver);
    assert!(c.generation >= 2, "{:?}", c.raw);
    x.assert_converged(&c);
}

#[test]
fn interrupted_cycle_then_source_reverts_to_committed_content() {
    // Generation 1 commits content A. A cycle shipping content B is killed after some B blocks
    // landed. The source then goes back to A, so diffing against the committed manifest (A)
    // finds nothing: the next cycle must still undo the B blocks in the target.
    let len = 64 * MIB;
    let x = Setup::new("int-revert", len, 321);
    let a_copy = x.t.path("a.img");
    std::fs::copy(&x.src, &a_copy).unwrap();
    let a = read_all(&a_copy);
    let receiver = x.receiver();
    let c1 = x.cycle(&receiver);
    x.assert_converged(&c1);

    write_random_file(&x.src, len, 322);
    let mut sender = Proc::blkmirror("sender", &x.sender_args(&receiver));
    let tgt = x.tgt.clone();
    freeze_mid_cycle(&x.rstate, &mut sender, || {
        differs_somewhere(&tgt, &a, len / BLOCK)
    });
    sender.kill9();
    assert!(first_difference(&a_copy, &x.tgt).is_some());

    std::fs::copy(&a_copy, &x.src).unwrap();
    let c = x.cycle(&receiver);
    x.assert_converged(&c);
}
