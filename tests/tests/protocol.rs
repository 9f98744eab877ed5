//! The control socket under abuse: garbage, oversized frames and a wrong protocol
//! version are refused, and the daemon goes on serving everyone else.

use futures::{SinkExt, StreamExt};
use oet_protocol::codec::FrameCodec;
use oet_protocol::{ClientMessage, Hello, ServerMessage, Welcome};
use oet_tests::TestDaemon;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio_util::codec::Framed;

async fn still_serving(daemon: &TestDaemon) {
    let mut client = daemon.client().await;
    let status = client.status().await.expect("status");
    assert_eq!(status.pid, daemon.pid());
}

/// Reads what the daemon answers until it closes the connection.
async fn answer_then_close(mut stream: UnixStream) -> Vec<u8> {
    let mut answer = Vec::new();
    tokio::time::timeout(oet_tests::DEADLINE, stream.read_to_end(&mut answer))
        .await
        .expect("daemon closes the connection")
        .expect("read");
    answer
}

#[tokio::test]
async fn garbage_bytes_close_the_connection_and_others_are_served() {
    let daemon = TestDaemon::start();
    let mut stream = UnixStream::connect(&daemon.socket).await.expect("connect");
    stream
        .write_all(&[0, 0, 0, 8, 0xde, 0xad, 0xbe, 0xef, 0xff, 0xff, 0xff, 0xff])
        .await
        .expect("write");
    answer_then_close(stream).await;
    still_serving(&daemon).await;
}

#[tokio::test]
async fn an_oversized_frame_length_is_refused_before_it_is_read() {
    let daemon = TestDaemon::start();
    let mut stream = UnixStream::connect(&daemon.socket).await.expect("connect");
    // Announce a 2 GiB frame and send none of it: the daemon must not wait for it.
    stream
        .write_all(&[0x7f, 0xff, 0xff, 0xff])
        .await
        .expect("write");
    let answer = answer_then_close(stream).await;
    let text = String::from_utf8_lossy(&answer);
    assert!(text.contains("exceeds the maximum"), "{text}");
    still_serving(&daemon).await;
}

#[tokio::test]
async fn a_wrong_protocol_version_is_refused_naming_both_versions() {
    let daemon = TestDaemon::start();
    let stream = UnixStream::connect(&daemon.socket).await.expect("connect");
    let mut framed: Framed<UnixStream, FrameCodec<ServerMessage, ClientMessage>> =
        Framed::new(stream, FrameCodec::new(1 << 20));
    framed
        .send(ClientMessage::Hello(Hello {
            protocol_version: 999,
            client: "time traveller".into(),
        }))
        .await
        .expect("send hello");
    match framed.next().await {
        Some(Ok(ServerMessage::Welcome(Welcome::Refused(err)))) => {
            assert!(err.message.contains("999"), "{}", err.message);
            assert!(
                err.message
                    .contains(&oet_protocol::PROTOCOL_VERSION.to_string()),
                "{}",
                err.message
            );
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    still_serving(&daemon).await;
}

#[tokio::test]
async fn a_client_of_another_version_gets_a_clear_error() {
    // The client side of the same check: a daemon that refuses says why.
    let daemon = TestDaemon::start();
    let err =
        match oet_protocol::Client::connect(&daemon.socket.with_extension("missing"), "t").await {
            Ok(_) => panic!("connected to a socket that does not exist"),
            Err(err) => err.to_string(),
        };
    assert!(err.contains("is oetd running?"), "{err}");
}
