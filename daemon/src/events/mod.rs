//! The event bus: every request, state change and script message is published here as a
//! typed [`BusEvent`], and turned into the wire [`oet_protocol::Event`]s only where it
//! leaves the daemon (a client's event stream, a worker's channel; see [`wire`]).
//!
//! Each subscriber has a queue of its own, bounded in events and in bytes. Publishing
//! never waits: when a subscriber's queue is full, the event is dropped for that
//! subscriber alone, which is told in its place how many events it missed. So a
//! subscriber that stalls costs at most its budget, and never slows the daemon, a script
//! or another subscriber.

mod event;
pub mod wire;

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError, RwLock, Weak};

use oet_protocol::codec::{encode_frame, CodecError, MAX_FRAME_LIMIT};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

pub use event::{ActivityNews, BusEvent, StateChanged};
pub use wire::is_reserved_topic;

/// The settings of the bus.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EventConfig {
    /// Events queued per subscriber before it is told it lagged.
    pub buffer: usize,
    /// Bytes of events queued per subscriber before it is told it lagged.
    pub buffer_bytes: usize,
}

impl Default for EventConfig {
    fn default() -> Self {
        EventConfig {
            buffer: 65536,
            buffer_bytes: 16 * 1024 * 1024,
        }
    }
}

impl EventConfig {
    /// Checks the values that types cannot; the error names the key.
    pub fn validate(&self) -> Result<(), String> {
        crate::limits::check("events.buffer", self.buffer, 1, 1_000_000)?;
        crate::limits::check("events.buffer_bytes", self.buffer_bytes, 1024, 1 << 30)?;
        Ok(())
    }
}

/// An event as published: the event, its size for the queues' byte budgets, and its
/// wire form and encoded frames once an edge has asked for them (made once, shared by
/// every subscriber: ten listeners cost one encoding).
#[derive(Debug)]
pub struct Published {
    event: BusEvent,
    bytes: usize,
    wire: OnceLock<Vec<oet_protocol::Event>>,
    frames: OnceLock<Vec<Result<Vec<u8>, usize>>>,
}

impl Published {
    pub fn event(&self) -> &BusEvent {
        &self.event
    }

    /// The wire events this event becomes, made once.
    pub fn wire(&self) -> &[oet_protocol::Event] {
        self.wire.get_or_init(|| wire::to_wire(&self.event))
    }

    /// The frames (length prefix and message) of the wire events, in their order, made
    /// once; an event that cannot be a frame at all is its encoded size instead.
    pub fn frames(&self) -> &[Result<Vec<u8>, usize>] {
        self.frames.get_or_init(|| {
            self.wire()
                .iter()
                .map(|event| {
                    let message = oet_protocol::ServerMessage::Event(event.clone());
                    encode_frame(&message, MAX_FRAME_LIMIT).map_err(|err| match err {
                        CodecError::FrameTooLarge { len, .. } => len,
                        _ => usize::MAX,
                    })
                })
                .collect()
        })
    }
}

/// What a subscription delivers.
#[derive(Debug, Clone)]
pub enum Received {
    Event(Arc<Published>),
    /// This many events were dropped here because the subscriber fell behind.
    Lagged(u64),
}

/// Which events a subscriber receives.
#[derive(Debug, Clone, Default)]
pub enum Topics {
    /// Every event.
    #[default]
    All,
    /// Events with a topic starting with one of these.
    Prefixes(Vec<String>),
    /// What a script subscribed to, as pypubsub sees topics: each of these topics with
    /// every topic below it ("" is every topic) — but never oetd's `request.*`, which
    /// are for clients only.
    Script(BTreeSet<String>),
}

impl Topics {
    /// Whether a wire event of `topic` is wanted.
    pub fn wants_topic(&self, topic: &str) -> bool {
        match self {
            Topics::All => true,
            Topics::Prefixes(prefixes) => prefixes.iter().any(|p| topic.starts_with(p.as_str())),
            Topics::Script(roots) => {
                !wire::is_request_topic(topic)
                    && wire::ancestors(topic).any(|root| roots.contains(root))
            }
        }
    }

    fn wants(&self, event: &BusEvent) -> bool {
        wire::topics(event).any(|topic| self.wants_topic(topic))
    }
}

/// A cheap handle to the bus; clone it freely.
#[derive(Clone)]
pub struct EventBus {
    inner: Arc<BusInner>,
}

struct BusInner {
    limits: EventConfig,
    next_id: AtomicU64,
    subscribers: RwLock<HashMap<u64, Arc<Queue>>>,
}

struct Queue {
    state: Mutex<QueueState>,
    ready: Notify,
}

#[derive(Default)]
struct QueueState {
    topics: Topics,
    items: VecDeque<Received>,
    bytes: usize,
}

impl Queue {
    fn lock(&self) -> MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl EventBus {
    pub fn new(limits: EventConfig) -> Self {
        EventBus {
            inner: Arc::new(BusInner {
                limits,
                next_id: AtomicU64::new(0),
                subscribers: RwLock::new(HashMap::new()),
            }),
        }
    }

    /// Publishes an event to every subscriber that wants it, now.
    pub fn publish(&self, event: BusEvent) {
        let subscribers = self
            .inner
            .subscribers
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        if subscribers.is_empty() {
            return;
        }
        let published = Arc::new(Published {
            bytes: wire::approx_bytes(&event),
            event,
            wire: OnceLock::new(),
            frames: OnceLock::new(),
        });
        let limits = &self.inner.limits;
        for queue in subscribers.values() {
            let mut state = queue.lock();
            if !state.topics.wants(&published.event) {
                continue;
            }
            let fits = state.items.len() < limits.buffer
                && state.bytes + published.bytes <= limits.buffer_bytes;
            if fits {
                state.bytes += published.bytes;
                state.items.push_back(Received::Event(published.clone()));
            } else if let Some(Received::Lagged(missed)) = state.items.back_mut() {
                *missed += 1;
            } else {
                state.items.push_back(Received::Lagged(1));
            }
            drop(state);
            queue.ready.notify_one();
        }
    }

    /// A subscription to every event published from now on.
    pub fn subscribe(&self) -> Subscription {
        self.subscribe_to(Topics::All)
    }

    /// A subscription to the events of `topics` published from now on.
    pub fn subscribe_to(&self, topics: Topics) -> Subscription {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let queue = Arc::new(Queue {
            state: Mutex::new(QueueState {
                topics,
                ..QueueState::default()
            }),
            ready: Notify::new(),
        });
        self.inner
            .subscribers
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id, queue.clone());
        Subscription {
            id,
            queue,
            bus: Arc::downgrade(&self.inner),
        }
    }
}

/// One subscriber's queue; dropping it unsubscribes.
pub struct Subscription {
    id: u64,
    queue: Arc<Queue>,
    bus: Weak<BusInner>,
}

impl Subscription {
    /// Whether this subscription wants wire events of `topic` (a bus event can become
    /// several wire events, not all of them wanted).
    pub fn wants_topic(&self, topic: &str) -> bool {
        self.queue.lock().topics.wants_topic(topic)
    }

    /// Receives the events of `topics` from now on (those already queued stay).
    pub fn set_topics(&self, topics: Topics) {
        self.queue.lock().topics = topics;
    }

    /// The next event (or lag notice), waiting for one.
    pub async fn recv(&mut self) -> Received {
        loop {
            if let Some(item) = self.try_recv() {
                return item;
            }
            // One consumer per queue: a notification sent while nobody waited is kept
            // as a permit, so none is lost between the check above and this wait.
            self.queue.ready.notified().await;
        }
    }

    /// The next event (or lag notice) if one is queued.
    pub fn try_recv(&mut self) -> Option<Received> {
        let mut state = self.queue.lock();
        let item = state.items.pop_front()?;
        if let Received::Event(published) = &item {
            state.bytes -= published.bytes;
        }
        Some(item)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if let Some(bus) = self.bus.upgrade() {
            bus.subscribers
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oet_protocol::Value;

    fn script_event(n: i64, padding: usize) -> BusEvent {
        BusEvent::Script {
            id: 1,
            topic: "user.test".into(),
            payload: Value::Map(
                [
                    ("n".to_owned(), Value::Int(n)),
                    ("pad".to_owned(), Value::from("x".repeat(padding))),
                ]
                .into(),
            ),
        }
    }

    fn number(received: Received) -> Option<i64> {
        match received {
            Received::Event(published) => match published.event() {
                BusEvent::Script { payload, .. } => match payload.as_map()?.get("n")? {
                    Value::Int(n) => Some(*n),
                    _ => None,
                },
                _ => None,
            },
            Received::Lagged(_) => None,
        }
    }

    #[tokio::test]
    async fn a_full_queue_loses_events_for_its_subscriber_alone_and_says_how_many() {
        let bus = EventBus::new(EventConfig {
            buffer: 3,
            buffer_bytes: 1 << 20,
        });
        let mut slow = bus.subscribe();
        let mut fast = bus.subscribe();
        for n in 0..5 {
            bus.publish(script_event(n, 0));
            assert_eq!(number(fast.recv().await), Some(n));
        }
        for n in 0..3 {
            assert_eq!(number(slow.recv().await), Some(n));
        }
        assert!(matches!(slow.recv().await, Received::Lagged(2)));
        assert!(slow.try_recv().is_none());
    }

    #[tokio::test]
    async fn the_byte_budget_bounds_a_queue_of_large_events() {
        let bus = EventBus::new(EventConfig {
            buffer: 1000,
            buffer_bytes: 10_000,
        });
        let mut slow = bus.subscribe();
        for n in 0..100 {
            bus.publish(script_event(n, 1000));
        }
        let mut kept = 0;
        let mut missed = 0;
        while let Some(item) = slow.try_recv() {
            match item {
                Received::Event(_) => kept += 1,
                Received::Lagged(n) => missed += n,
            }
        }
        assert!(kept < 10, "kept {kept} events of 1 kB in a 10 kB budget");
        assert_eq!(kept + missed, 100);
    }

    #[tokio::test]
    async fn subscribers_get_only_their_topics_and_leave_when_dropped() {
        let bus = EventBus::new(EventConfig::default());
        let mut user = bus.subscribe_to(Topics::Prefixes(vec!["user.".into()]));
        let other = bus.subscribe_to(Topics::Prefixes(vec!["procedure.".into()]));
        bus.publish(script_event(7, 0));
        assert_eq!(number(user.recv().await), Some(7));
        drop(other);
        assert_eq!(bus.inner.subscribers.read().map(|s| s.len()).ok(), Some(1));
    }

    #[test]
    fn a_script_gets_the_subtrees_it_subscribed_to_and_never_requests() {
        let script =
            |topics: &[&str]| Topics::Script(topics.iter().map(|t| (*t).to_owned()).collect());
        let user_x = script(&["user.x"]);
        assert!(user_x.wants_topic("user.x"));
        assert!(user_x.wants_topic("user.x.y"));
        assert!(!user_x.wants_topic("user.xy"));
        assert!(!user_x.wants_topic("user"));
        assert!(!script(&[]).wants_topic("user.x"));
        let everything = script(&[""]);
        assert!(everything.wants_topic("procedure.lifecycle.statechange"));
        assert!(!everything.wants_topic("request.procedure.list"));
        assert!(!script(&["request"]).wants_topic("request.procedure.list"));
    }

    #[tokio::test]
    async fn a_subscription_can_change_its_topics() {
        let bus = EventBus::new(EventConfig::default());
        let mut sub = bus.subscribe_to(Topics::Script(BTreeSet::new()));
        bus.publish(script_event(1, 0));
        assert!(sub.try_recv().is_none());
        sub.set_topics(Topics::Script(BTreeSet::from(["user".to_owned()])));
        bus.publish(script_event(2, 0));
        assert_eq!(number(sub.recv().await), Some(2));
    }
}
