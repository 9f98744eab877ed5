//! The event bus: one broadcast channel that every request, lifecycle change and script
//! message is published on. Publishing never waits: a subscriber that falls behind loses
//! the oldest events and is told how many it missed, so no listener can slow down the
//! daemon or a script.

use oet_protocol::{now, Event, Value};
use tokio::sync::broadcast;

/// The `msg_src` of events the daemon itself publishes.
pub const DAEMON_SOURCE: &str = "oetd";

/// A cheap handle to the bus; clone it freely.
#[derive(Clone)]
pub struct EventBus {
    sender: broadcast::Sender<Event>,
}

impl EventBus {
    pub fn new(buffer: usize) -> Self {
        let (sender, _) = broadcast::channel(buffer.max(1));
        EventBus { sender }
    }

    /// Publishes an event stamped now.
    pub fn publish(&self, topic: &str, msg_src: &str, payload: Value) {
        self.publish_event(Event {
            topic: topic.to_owned(),
            msg_src: msg_src.to_owned(),
            time: now(),
            payload,
        });
    }

    pub fn publish_event(&self, event: Event) {
        // An error only means nobody listens right now, which is fine.
        let _ = self.sender.send(event);
    }

    /// A receiver of every event published from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.sender.subscribe()
    }
}
