//! One client connection: the handshake, then requests and answers, or — once a request
//! has subscribed the session — a stream of events. Anything malformed gets an error
//! frame and the connection is closed; the daemon itself is never at risk.

use futures::{SinkExt, StreamExt};
use oet_protocol::codec::{CodecError, FrameCodec};
use oet_protocol::{ClientMessage, ProtocolError, ServerMessage, Welcome, PROTOCOL_VERSION};
use tokio::net::UnixStream;
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::api::{self, Peer, Services, Session};
use crate::events::{Received, Subscription};

type Transport = Framed<UnixStream, FrameCodec<ClientMessage, ServerMessage>>;

/// Serves one connection until the client leaves, misbehaves, or the daemon shuts down.
pub async fn serve(
    stream: UnixStream,
    services: Services,
    max_frame: usize,
    shutdown: CancellationToken,
) {
    let peer = Peer::of(&stream);
    let mut transport = Framed::new(stream, FrameCodec::new(max_frame));
    let client = match handshake(&mut transport).await {
        Ok(client) => client,
        Err(reason) => {
            warn!(
                peer_uid = peer.uid,
                peer_pid = peer.pid,
                "refused a connection: {reason}"
            );
            return;
        }
    };
    debug!(
        peer_uid = peer.uid,
        peer_pid = peer.pid,
        "connection from {client}"
    );
    let mut session = Session {
        peer,
        subscription: None,
    };
    loop {
        let frame = tokio::select! {
            _ = shutdown.cancelled() => return,
            frame = transport.next() => frame,
        };
        let request = match frame {
            None => return,
            Some(Ok(ClientMessage::Request(request))) => request,
            Some(Ok(ClientMessage::Hello(_))) => {
                refuse(&mut transport, &peer, "a second hello on one connection").await;
                return;
            }
            Some(Err(err)) => {
                refuse(&mut transport, &peer, &err.to_string()).await;
                return;
            }
        };
        let result = api::dispatch(&services, &mut session, request.id, request.body).await;
        let answer = ServerMessage::Response {
            id: request.id,
            result,
        };
        if let Err(err) = transport.send(answer).await {
            debug!(peer_pid = peer.pid, "client went away: {err}");
            return;
        }
        if let Some(events) = session.subscription.take() {
            return stream_events(&mut transport, events, &shutdown).await;
        }
    }
}

async fn handshake(transport: &mut Transport) -> Result<String, String> {
    let hello = match transport.next().await {
        Some(Ok(ClientMessage::Hello(hello))) => hello,
        Some(Ok(ClientMessage::Request(_))) => {
            let refusal = ProtocolError::invalid_request("a connection must start with a hello");
            let _ = transport
                .send(ServerMessage::Welcome(Welcome::Refused(refusal.clone())))
                .await;
            return Err(refusal.message);
        }
        Some(Err(err)) => {
            let message = err.to_string();
            let _ = transport
                .send(ServerMessage::Malformed(ProtocolError::invalid_request(
                    message.clone(),
                )))
                .await;
            return Err(message);
        }
        None => return Err("closed before the handshake".into()),
    };
    if hello.protocol_version != PROTOCOL_VERSION {
        let refusal = ProtocolError::invalid_request(format!(
            "protocol version mismatch: client {} speaks version {}, this oetd speaks version {}",
            hello.client, hello.protocol_version, PROTOCOL_VERSION
        ));
        let _ = transport
            .send(ServerMessage::Welcome(Welcome::Refused(refusal.clone())))
            .await;
        return Err(refusal.message);
    }
    transport
        .send(ServerMessage::Welcome(Welcome::Accepted {
            protocol_version: PROTOCOL_VERSION,
            server: format!("oetd {}", env!("CARGO_PKG_VERSION")),
        }))
        .await
        .map_err(|e| e.to_string())?;
    Ok(hello.client)
}

async fn refuse(transport: &mut Transport, peer: &Peer, reason: &str) {
    warn!(
        peer_uid = peer.uid,
        peer_pid = peer.pid,
        "closing connection: {reason}"
    );
    let _ = transport
        .send(ServerMessage::Malformed(ProtocolError::invalid_request(
            reason.to_owned(),
        )))
        .await;
}

/// Streams bus events to a subscriber, in their wire form. A subscriber that falls behind
/// is told how many events it missed; the bus never waits for it. Events already
/// published are sent before a shutdown closes the stream, so listeners see the final
/// states of the scripts stopped on the way down.
async fn stream_events(
    transport: &mut Transport,
    mut events: Subscription,
    shutdown: &CancellationToken,
) {
    loop {
        let received = tokio::select! {
            biased;
            received = events.recv() => received,
            // A subscriber only listens; anything it sends (or its leaving) ends the stream.
            _ = transport.next() => return,
            // Biased: events already queued go out before a shutdown ends the stream.
            _ = shutdown.cancelled() => return,
        };
        let messages: Vec<ServerMessage> = match received {
            Received::Event(published) => published
                .wire()
                .iter()
                .filter(|event| events.wants_topic(&event.topic))
                .cloned()
                .map(ServerMessage::Event)
                .collect(),
            Received::Lagged(missed) => vec![ServerMessage::Lagged { missed }],
        };
        for message in messages {
            if let Err(err) = transport.send(message).await {
                if !matches!(err, CodecError::Io(_)) {
                    info!("event could not be sent to a subscriber: {err}");
                }
                return;
            }
        }
    }
}
