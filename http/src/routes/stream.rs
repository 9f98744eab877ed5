//! `GET /stream`: server-sent events, framed as upstream framed them. The response opens
//! with a bare newline (so the client sees the 200 at once and knows it is subscribed),
//! then carries one message per event, each written as soon as it arrives, with a comment
//! line every heartbeat. It ends when oetd goes away or the shim stops.

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use oet_protocol::{Call, Subscribe};
use tokio::sync::broadcast::{self, error::RecvError};
use tokio::time::{Instant, Interval, MissedTickBehavior};
use tokio_util::sync::WaitForCancellationFutureOwned;

use super::AppState;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::hub::Frame;
use crate::oetd::Oetd;
use crate::sse;

/// `GET /stream`
pub async fn stream(
    State(app): State<AppState>,
    Caller(caller): Caller,
) -> Result<Response, ApiError> {
    Oetd::allow(caller, Subscribe::ROLE, "the event stream")?;
    let slot = StreamSlot::take(&app)?;
    let receiver = app.hub.subscribe(&app.oetd).await?;
    let state = StreamState {
        opened: false,
        receiver,
        heartbeat: heartbeat(app.heartbeat),
        shutdown: Box::pin(app.shutdown.clone().cancelled_owned()),
        _slot: slot,
    };
    let body = Body::from_stream(futures::stream::unfold(state, next_chunk));
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream; charset=utf-8"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // Tells nginx not to buffer the stream.
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(response)
}

fn heartbeat(period: Duration) -> Interval {
    let mut interval = tokio::time::interval_at(Instant::now() + period, period);
    interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
    interval
}

/// One stream client's place among `stream.max_clients`, given back when its response
/// ends.
struct StreamSlot(AppState);

impl StreamSlot {
    fn take(app: &AppState) -> Result<StreamSlot, ApiError> {
        let taken = app.stream_clients.fetch_add(1, Ordering::SeqCst);
        let slot = StreamSlot(app.clone());
        if taken >= app.max_stream_clients {
            return Err(ApiError::Unavailable(format!(
                "{} stream clients are connected, the most stream.max_clients allows",
                app.max_stream_clients
            )));
        }
        Ok(slot)
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.0.stream_clients.fetch_sub(1, Ordering::SeqCst);
    }
}

struct StreamState {
    opened: bool,
    receiver: broadcast::Receiver<Frame>,
    heartbeat: Interval,
    shutdown: std::pin::Pin<Box<WaitForCancellationFutureOwned>>,
    _slot: StreamSlot,
}

/// The next piece of the response, or `None` to end it.
async fn next_chunk(mut state: StreamState) -> Option<(Result<Bytes, Infallible>, StreamState)> {
    if !state.opened {
        state.opened = true;
        return Some((Ok(Bytes::from_static(b"\n")), state));
    }
    let chunk = tokio::select! {
        biased;
        () = &mut state.shutdown => return None,
        frame = state.receiver.recv() => match frame {
            Ok(Frame::Event(message)) => message,
            Ok(Frame::Missed(missed)) => sse::comment(&format!(
                "oetd dropped {missed} events: the shim fell behind"
            )),
            Err(RecvError::Lagged(missed)) => sse::comment(&format!(
                "missed {missed} events: this client fell behind"
            )),
            Err(RecvError::Closed) => return None,
        },
        _ = state.heartbeat.tick() => sse::comment("heartbeat"),
    };
    Some((Ok(chunk), state))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Auth;
    use crate::config::Config;
    use tokio_util::sync::CancellationToken;

    fn state(receiver: broadcast::Receiver<Frame>, shutdown: &CancellationToken) -> StreamState {
        let listen = "127.0.0.1:5000".parse().expect("address");
        let app = crate::app(&Config::default(), listen, Auth::open(), shutdown.clone());
        StreamState {
            opened: false,
            receiver,
            heartbeat: heartbeat(Duration::from_secs(3600)),
            shutdown: Box::pin(shutdown.clone().cancelled_owned()),
            _slot: StreamSlot::take(&app).expect("a place"),
        }
    }

    async fn chunk(state: StreamState) -> (String, StreamState) {
        let (chunk, state) = next_chunk(state).await.expect("a chunk");
        let Ok(bytes) = chunk;
        (String::from_utf8(bytes.to_vec()).expect("UTF-8"), state)
    }

    #[tokio::test]
    async fn a_client_that_fell_behind_is_told_how_many_events_it_missed() {
        let (sender, receiver) = broadcast::channel(2);
        let shutdown = CancellationToken::new();
        let state = state(receiver, &shutdown);
        for n in 0..5 {
            sender
                .send(Frame::Event(Bytes::from(format!("data:{n}\n\n"))))
                .expect("a receiver");
        }
        let (opening, state) = chunk(state).await;
        assert_eq!(opening, "\n");
        let (missed, state) = chunk(state).await;
        assert_eq!(missed, ": missed 3 events: this client fell behind\n\n");
        let (next, state) = chunk(state).await;
        assert_eq!(next, "data:3\n\n");
        let (next, state) = chunk(state).await;
        assert_eq!(next, "data:4\n\n");
        sender.send(Frame::Missed(7)).expect("a receiver");
        let (told, state) = chunk(state).await;
        assert_eq!(told, ": oetd dropped 7 events: the shim fell behind\n\n");
        drop(sender);
        assert!(
            next_chunk(state).await.is_none(),
            "the stream ends with oetd's"
        );
    }

    #[tokio::test]
    async fn the_stream_ends_when_the_shim_stops() {
        let (_sender, receiver) = broadcast::channel(2);
        let shutdown = CancellationToken::new();
        let (_, state) = chunk(state(receiver, &shutdown)).await;
        shutdown.cancel();
        assert!(next_chunk(state).await.is_none());
    }
}
