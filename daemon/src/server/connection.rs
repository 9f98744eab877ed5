//! One client connection: the handshake, then requests and answers, or — once a request
//! has subscribed the session — a stream of events. Anything malformed gets an error
//! frame and the connection is closed; the daemon itself is never at risk.
//!
//! Nothing of a request is decoded before the handshake: the first frame is read as an
//! [`Opening`], which can only be a hello. The handshake must be complete within
//! `server.handshake_timeout_secs` of connecting, and a frame once begun must arrive
//! whole within `server.frame_timeout_secs`, so connections that say nothing, say half a
//! frame or trickle bytes are closed. An answer or event too large for a frame is never
//! dropped in silence: an answer becomes an error saying so, an event a notice naming
//! its topic and size.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use oet_protocol::codec::{encode_frame, CodecError, FrameCodec};
use oet_protocol::view::map;
use oet_protocol::{
    topics, ClientMessage, Event, Opening, ProtocolError, ServerMessage, Value, Welcome,
    DAEMON_SOURCE, PROTOCOL_VERSION,
};
use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;
use tokio::time::Instant;
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::access::Peer;
use super::admission::{Phase, Ticket};
use super::api::{self, Services, Session};
use crate::events::{Received, Subscription};

type Transport = Framed<UnixStream, FrameCodec<ClientMessage, ServerMessage>>;
type OpeningTransport = Framed<UnixStream, FrameCodec<Opening, ServerMessage>>;

/// The bounds a connection is held to.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_frame: usize,
    pub handshake: Duration,
    pub frame: Duration,
}

/// Writes a refusal to a connection that is not admitted, without waiting: a fresh
/// connection's buffer takes one small frame, and a client that reads it after its hello
/// learns why. The connection is closed when `stream` is dropped.
pub fn refuse_at_once(stream: &UnixStream, reason: &str, max_frame: usize) {
    let refusal = ServerMessage::Welcome(Welcome::Refused(ProtocolError::invalid_state(reason)));
    if let Ok(frame) = encode_frame(&refusal, max_frame) {
        let _ = stream.try_write(&frame);
    }
}

/// Serves one connection until the client leaves, misbehaves, or times out, the daemon
/// shuts down, or the connection is dropped to make room for another.
pub async fn serve(
    stream: UnixStream,
    peer: Peer,
    ticket: Ticket,
    services: Services,
    limits: Limits,
    shutdown: CancellationToken,
) {
    let opening: OpeningTransport = Framed::new(stream, FrameCodec::new(limits.max_frame));
    let handshake = tokio::select! {
        _ = shutdown.cancelled() => return,
        _ = ticket.dropped().cancelled() => {
            debug!(peer_pid = peer.pid, "dropped a connection that had not completed its handshake, to make room");
            return;
        }
        result = tokio::time::timeout(limits.handshake, handshake(opening, &ticket, limits.max_frame)) => result,
    };
    let (mut transport, client) = match handshake {
        Ok(Ok(done)) => done,
        Ok(Err(reason)) => {
            warn!(
                peer_uid = peer.uid,
                peer_pid = peer.pid,
                "refused a connection from {}: {reason}",
                peer.describe()
            );
            return;
        }
        Err(_) => {
            info!(
                peer_uid = peer.uid,
                peer_pid = peer.pid,
                "closed a connection from {} that did not complete its handshake within {:?}",
                peer.describe(),
                limits.handshake
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
    let mut tick = tokio::time::interval(limits.frame / 2);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // When a frame was first seen begun but not whole (checked at each tick).
    let mut begun: Option<Instant> = None;
    loop {
        let frame = tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticket.dropped().cancelled() => {
                debug!(peer_pid = session.peer.pid, "dropped an idle connection to make room for an operator");
                return;
            }
            frame = transport.next() => frame,
            _ = tick.tick() => {
                if transport.read_buffer().is_empty() {
                    begun = None;
                } else if begun.get_or_insert_with(Instant::now).elapsed() >= limits.frame {
                    let reason = format!(
                        "a frame was begun but not completed within {:?}",
                        limits.frame
                    );
                    refuse(&mut transport, &session.peer, &reason, limits).await;
                    return;
                }
                continue;
            }
        };
        begun = None;
        let request = match frame {
            None => return,
            Some(Ok(ClientMessage::Request(request))) => request,
            Some(Ok(ClientMessage::Hello(_))) => {
                let reason = "a second hello on one connection";
                refuse(&mut transport, &session.peer, reason, limits).await;
                return;
            }
            Some(Err(err)) => {
                refuse(&mut transport, &session.peer, &err.to_string(), limits).await;
                return;
            }
        };
        ticket.set_phase(Phase::Busy);
        let topic = request.body.topic();
        let result = api::dispatch(&services, &mut session, request.id, request.body).await;
        if let Err(err) = answer(&mut transport, request.id, topic, result, limits).await {
            debug!(peer_pid = session.peer.pid, "client went away: {err}");
            return;
        }
        if let Some(events) = session.subscription.take() {
            ticket.set_phase(Phase::Streaming);
            let stop = [&shutdown, ticket.dropped()];
            return stream_events(&mut transport, events, stop, limits.max_frame).await;
        }
        ticket.set_phase(Phase::Idle);
    }
}

/// Reads the hello and answers it; returns the transport for requests and the client's
/// name, or why the connection is refused.
async fn handshake(
    mut opening: OpeningTransport,
    ticket: &Ticket,
    max_frame: usize,
) -> Result<(Transport, String), String> {
    let refused = |message: String| {
        ServerMessage::Welcome(Welcome::Refused(ProtocolError::invalid_request(message)))
    };
    let hello = match opening.next().await {
        Some(Ok(Opening::Hello(hello))) => hello,
        Some(Err(CodecError::Malformed(why))) => {
            let message = format!(
                "a connection must start with a hello of protocol version {PROTOCOL_VERSION} ({why})"
            );
            let _ = opening.send(refused(message.clone())).await;
            return Err(message);
        }
        Some(Err(err)) => {
            let message = err.to_string();
            let _ = opening
                .send(ServerMessage::Malformed(ProtocolError::invalid_request(
                    message.clone(),
                )))
                .await;
            return Err(message);
        }
        None => return Err("closed before the handshake".into()),
    };
    if hello.protocol_version != PROTOCOL_VERSION {
        let message = format!(
            "protocol version mismatch: client {} speaks version {}, this oetd speaks version {}",
            hello.client, hello.protocol_version, PROTOCOL_VERSION
        );
        let _ = opening.send(refused(message.clone())).await;
        return Err(message);
    }
    // Handshaken from now on: a client that has its welcome may count on its place.
    ticket.set_phase(Phase::Idle);
    opening
        .send(ServerMessage::Welcome(Welcome::Accepted {
            protocol_version: PROTOCOL_VERSION,
            server: format!("oetd {}", env!("CARGO_PKG_VERSION")),
        }))
        .await
        .map_err(|e| e.to_string())?;
    Ok((
        opening.map_codec(|_| FrameCodec::new(max_frame)),
        hello.client,
    ))
}

/// Sends the answer to request `id`; one too large for a frame becomes an error that
/// says so. The client has `limits.frame` to take it.
async fn answer(
    transport: &mut Transport,
    id: u64,
    topic: &str,
    result: Result<oet_protocol::ResponseBody, ProtocolError>,
    limits: Limits,
) -> Result<(), CodecError> {
    let sent = send_within(transport, ServerMessage::Response { id, result }, limits).await;
    let Err(CodecError::FrameTooLarge { len, max }) = sent else {
        return sent;
    };
    let refusal = ProtocolError::invalid_request(format!(
        "the answer to {topic} is {len} bytes, more than the frame limit of {max} bytes \
         (server.max_frame_bytes); ask for less at once (e.g. one procedure with --pid)"
    ));
    warn!("{}", refusal.message);
    send_within(
        transport,
        ServerMessage::Response {
            id,
            result: Err(refusal),
        },
        limits,
    )
    .await
}

async fn send_within(
    transport: &mut Transport,
    message: ServerMessage,
    limits: Limits,
) -> Result<(), CodecError> {
    match tokio::time::timeout(limits.frame, transport.send(message)).await {
        Ok(sent) => sent,
        Err(_) => Err(CodecError::Io(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!(
                "the client did not take its answer within {:?}",
                limits.frame
            ),
        ))),
    }
}

async fn refuse(transport: &mut Transport, peer: &Peer, reason: &str, limits: Limits) {
    warn!(
        peer_uid = peer.uid,
        peer_pid = peer.pid,
        "closing connection from {}: {reason}",
        peer.describe()
    );
    let malformed = ServerMessage::Malformed(ProtocolError::invalid_request(reason.to_owned()));
    let _ = send_within(transport, malformed, limits).await;
}

/// Streams bus events to a subscriber, in their wire form. A subscriber that falls behind
/// is told how many events it missed; the bus never waits for it. An event too large for
/// a frame is replaced by a notice naming its topic and size. Events already published
/// are sent before a shutdown closes the stream, so listeners see the final states of
/// the scripts stopped on the way down.
///
/// Each event's frames are encoded once for all subscribers ([`crate::events::Published::frames`]), and
/// whatever is queued goes out in one write (up to [`BATCH_BYTES`]): a burst costs a
/// subscriber a few writes, not one per event.
async fn stream_events(
    transport: &mut Transport,
    mut events: Subscription,
    stop: [&CancellationToken; 2],
    max_frame: usize,
) {
    let stopped = || async {
        tokio::select! {
            _ = stop[0].cancelled() => {}
            _ = stop[1].cancelled() => {}
        }
    };
    let mut batch = Vec::new();
    loop {
        let received = tokio::select! {
            biased;
            received = events.recv() => received,
            // A subscriber only listens; anything it sends (or its leaving) ends the stream.
            _ = transport.next() => return,
            // Biased: events already queued go out before a shutdown ends the stream.
            _ = stopped() => return,
        };
        batch.clear();
        let mut next = Some(received);
        while let Some(received) = next {
            add_to_batch(&mut batch, received, &events, max_frame);
            next = if batch.len() < BATCH_BYTES {
                events.try_recv()
            } else {
                None
            };
        }
        // Biased: events that can go out go out, also when a shutdown has come meanwhile
        // (listeners see the final states); only a write that would wait gives way to it.
        let written = tokio::select! {
            biased;
            written = transport.get_mut().write_all(&batch) => written,
            _ = stopped() => return,
        };
        if written.is_err() {
            return;
        }
    }
}

/// How many bytes of queued events one write to a subscriber takes at most.
const BATCH_BYTES: usize = 256 * 1024;

/// Appends the frames a subscriber gets for `received` to `batch`.
fn add_to_batch(batch: &mut Vec<u8>, received: Received, events: &Subscription, max_frame: usize) {
    let published = match received {
        Received::Event(published) => published,
        Received::Lagged(missed) => {
            append_frame(batch, &ServerMessage::Lagged { missed }, max_frame);
            return;
        }
    };
    for (event, frame) in published.wire().iter().zip(published.frames()) {
        if !events.wants_topic(&event.topic) {
            continue;
        }
        match frame {
            Ok(frame) if frame.len() - FRAME_HEAD <= max_frame => batch.extend_from_slice(frame),
            Ok(frame) => too_large(batch, event, frame.len() - FRAME_HEAD, max_frame),
            Err(len) => too_large(batch, event, *len, max_frame),
        }
    }
}

/// Bytes of a frame's length prefix.
const FRAME_HEAD: usize = 4;

fn append_frame(batch: &mut Vec<u8>, message: &ServerMessage, max_frame: usize) {
    match encode_frame(message, max_frame) {
        Ok(frame) => batch.extend_from_slice(&frame),
        Err(err) => info!("a message could not be sent to a subscriber: {err}"),
    }
}

/// Appends the notice sent in place of `event`, which is `bytes` long, over the frame
/// limit.
fn too_large(batch: &mut Vec<u8>, event: &Event, bytes: usize, max: usize) {
    info!(
        "an event of topic {} ({bytes} bytes) is larger than the frame limit of {max} bytes; a subscriber got a notice instead",
        event.topic
    );
    let notice = ServerMessage::Event(Event {
        topic: topics::EVENT_TOO_LARGE.to_owned(),
        msg_src: DAEMON_SOURCE.to_owned(),
        time: event.time,
        payload: map([
            ("topic", Value::from(event.topic.as_str())),
            ("bytes", Value::from(bytes as u64)),
            ("max_bytes", Value::from(max as u64)),
        ]),
    });
    append_frame(batch, &notice, max);
}
