//! One subscription to oetd's events, shared by every `/stream` client. The first client
//! opens it; each event is turned into its SSE message once and handed to every client's
//! receiver; the last client to leave closes it. When oetd goes away the subscription
//! ends, and with it every client's stream. A slow client misses events for itself alone
//! (and is told how many); it never holds up oetd, the REST API or another client.

use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use oet_protocol::client::StreamItem;
use oet_protocol::EventStream;
use tokio::sync::{broadcast, Mutex};
use tracing::{debug, info, warn};

use crate::error::ApiError;
use crate::oetd::Oetd;
use crate::sse;

/// What the hub hands each stream client.
#[derive(Debug, Clone)]
pub enum Frame {
    /// An event's SSE message.
    Event(Bytes),
    /// oetd dropped this many events for the shim's subscription.
    Missed(u64),
}

/// The shared subscription.
pub struct Hub {
    buffer: usize,
    socket: PathBuf,
    /// The live subscription's sender, while there is one. Held while a subscription is
    /// opened, so that concurrent first clients open one, not several.
    live: Mutex<Option<broadcast::Sender<Frame>>>,
}

impl Hub {
    pub fn new(socket: PathBuf, buffer: usize) -> Hub {
        Hub {
            buffer,
            socket,
            live: Mutex::new(None),
        }
    }

    /// A receiver of every event from now on, opening the subscription to oetd if none is
    /// open. Once this returns, no event oetd publishes can be missed by the receiver
    /// (unless it falls behind).
    pub async fn subscribe(
        self: &Arc<Self>,
        oetd: &Oetd,
    ) -> Result<broadcast::Receiver<Frame>, ApiError> {
        let mut live = self.live.lock().await;
        if let Some(sender) = live.as_ref() {
            return Ok(sender.subscribe());
        }
        let events = oetd.subscribe(Vec::new()).await?;
        let (sender, receiver) = broadcast::channel(self.buffer);
        *live = Some(sender.clone());
        info!("subscribed to oetd's events at {}", self.socket.display());
        tokio::spawn(self.clone().pump(events, sender));
        Ok(receiver)
    }

    /// Hands oetd's events to the receivers until oetd closes the subscription or no
    /// receiver is left.
    async fn pump(self: Arc<Self>, mut events: EventStream, sender: broadcast::Sender<Frame>) {
        loop {
            tokio::select! {
                item = events.next() => match item {
                    Some(Ok(StreamItem::Event(event))) => {
                        let _ = sender.send(Frame::Event(sse::frame(&event)));
                    }
                    Some(Ok(StreamItem::Lagged(missed))) => {
                        warn!("oetd dropped {missed} events for the shim's stream: it fell behind");
                        let _ = sender.send(Frame::Missed(missed));
                    }
                    Some(Err(err)) => {
                        warn!("oetd's event stream failed: {err}; closing the /stream clients");
                        break;
                    }
                    None => {
                        info!("oetd closed its event stream; closing the /stream clients");
                        break;
                    }
                },
                () = sender.closed() => {
                    let mut live = self.live.lock().await;
                    // A client may have come between the last one leaving and this lock.
                    if sender.receiver_count() == 0 {
                        debug!("no /stream client left: unsubscribing from oetd");
                        *live = None;
                        return;
                    }
                }
            }
        }
        let mut live = self.live.lock().await;
        if live
            .as_ref()
            .is_some_and(|current| current.same_channel(&sender))
        {
            *live = None;
        }
    }
}
