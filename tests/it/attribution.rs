//! First-cause attribution: when one end finds the fault (a bad or misplaced frame, a silent
//! peer), it tells the other in a `Refused` before closing, so that both ends report and record
//! that cause instead of one of them "peer closed the connection". Here a real `send` faces a
//! receiver played by the test (the library's own TLS server and framing) that answers out of
//! turn; the receiver's side of the same rule is in `fault_injection`.

use blkmirror::transport::frame::Message;
use blkmirror::transport::tls::{load_identity, parse_fingerprint, TlsServer};
use blkmirror::transport::{Connection, TransportError};

use crate::support::*;

#[test]
fn a_sender_that_gets_a_message_out_of_turn_tells_the_receiver_why_it_gives_up() {
    let t = Scratch::new("attribution-sender");
    let ids = TlsPair::new(&t);
    let src = t.path("source.img");
    write_random_file(&src, 4 * MIB, 601);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (told, sender) = runtime.block_on(async {
        let identity = load_identity(&ids.receiver_dir).unwrap();
        let allowed = vec![parse_fingerprint(&ids.sender_fp).unwrap()];
        let server = TlsServer::bind("127.0.0.1:0", &identity, allowed)
            .await
            .unwrap();
        let url = format!("tls://{}", server.local_addr());
        let mut args = send_args(s(&src), &url, &t.dir("state"));
        args.push("--once".into());
        args.extend(ids.sender_args());
        let sender = Proc::blkmirror("sender", &args);

        let (tcp, _) = server.accept_tcp().await.unwrap();
        let (stream, _) = server.handshake(tcp).await.unwrap();
        let mut conn = Connection::new(stream);
        conn.handshake().await.unwrap();
        let start = conn.recv().await.unwrap();
        assert_eq!(start.name(), "CycleStart");
        // Out of turn: a commit before anything was sent.
        conn.send(&Message::Committed {
            generation: 1,
            root: [0; 32],
        })
        .await
        .unwrap();
        conn.flush().await.unwrap();
        let told = loop {
            match conn.recv().await {
                Ok(Message::KeepAlive) => continue,
                other => break other,
            }
        };
        (told, sender)
    });
    let out = sender.finish(RUN_TIMEOUT);
    out.assert_error(1, &["unexpected Committed"]);
    match told {
        Err(TransportError::Refused(reason)) => assert!(
            reason.starts_with("the sender gave up: ") && reason.contains("unexpected Committed"),
            "{reason}"
        ),
        other => panic!("the receiver was not told why: {other:?}"),
    }
}
