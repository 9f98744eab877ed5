//! The wire form of bus events: topics, `msg_src` and payloads as clients (and scripts'
//! pypubsub) see them. Used only where events leave the daemon.

use oet_protocol::view::{self, map};
use oet_protocol::{now, topics, Event, ProcedureState, Value, DAEMON_SOURCE};

use super::event::{ActivityNews, BusEvent, StateChanged};

/// Topic of the event telling that an activity could not go on as asked although its
/// procedure did not end (e.g. `main` could not be started); the activity's `error` says
/// why.
pub const ACTIVITY_ERROR_TOPIC: &str = "activity.lifecycle.error";

/// The topics only oetd publishes, each with everything below it: a script's event on
/// one of them is dropped. Scripts keep `sb.lifecycle.*`, `subarray.*`, `user.*` and the
/// rest.
pub const RESERVED_TOPICS: [&str; 3] = ["procedure.lifecycle", "activity.lifecycle", "request"];

/// Whether `topic` is one of [`RESERVED_TOPICS`] or below one.
pub fn is_reserved_topic(topic: &str) -> bool {
    RESERVED_TOPICS.iter().any(|root| {
        topic
            .strip_prefix(root)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('.'))
    })
}

/// Whether `topic` is one of oetd's request topics, which only clients receive.
pub fn is_request_topic(topic: &str) -> bool {
    ancestors(topic).any(|root| root == "request")
}

/// `topic` and each topic above it, as pypubsub nests them, ending with "" (every
/// topic): `a.b.c`, `a.b`, `a`, "".
pub fn ancestors(topic: &str) -> impl Iterator<Item = &str> {
    let mut next = Some(topic);
    std::iter::from_fn(move || {
        let current = next?;
        next = match current.rfind('.') {
            Some(at) => Some(&current[..at]),
            None if current.is_empty() => None,
            None => Some(""),
        };
        Some(current)
    })
}

/// The upstream lifecycle topic a state change also announces, if any.
fn lifecycle_topic(change: &StateChanged) -> Option<&'static str> {
    match (change.from, change.to) {
        (Some(ProcedureState::Loading), ProcedureState::Idle) => Some(topics::CREATED),
        (_, ProcedureState::Running) => Some(topics::STARTED),
        (_, ProcedureState::Complete) => Some(topics::COMPLETE),
        (_, ProcedureState::Stopped) => Some(topics::STOPPED),
        (_, ProcedureState::Failed) => Some(topics::FAILED),
        _ => None,
    }
}

/// The topics of the wire events `event` becomes, without making them.
pub fn topics(event: &BusEvent) -> impl Iterator<Item = &str> {
    let (first, second): (&str, Option<&str>) = match event {
        BusEvent::Request { topic, .. } => (topic, None),
        BusEvent::StateChanged(change) => (topics::STATECHANGE, lifecycle_topic(change)),
        BusEvent::StackTrace { .. } => (topics::STACKTRACE, None),
        BusEvent::Script { topic, .. } => (topic, None),
        BusEvent::Activity { news, summary } => (activity_topic(*news, summary), None),
        BusEvent::SbStarted { .. } => (topics::SB_STARTED, None),
    };
    std::iter::once(first).chain(second)
}

fn activity_topic(news: ActivityNews, summary: &oet_protocol::ActivitySummary) -> &'static str {
    match news {
        ActivityNews::Entered => summary.state.topic(),
        ActivityNews::Error => ACTIVITY_ERROR_TOPIC,
    }
}

fn daemon_event(topic: &str, time: f64, payload: Value) -> Event {
    Event {
        topic: topic.to_owned(),
        msg_src: DAEMON_SOURCE.to_owned(),
        time,
        payload,
    }
}

/// The wire events of a bus event, in the order listeners see them.
pub fn to_wire(event: &BusEvent) -> Vec<Event> {
    match event {
        BusEvent::Request { topic, payload } => vec![daemon_event(topic, now(), payload.clone())],
        BusEvent::StateChanged(change) => {
            let id = Value::from(change.id);
            let statechange = daemon_event(
                topics::STATECHANGE,
                change.at,
                map([
                    ("procedure_id", id.clone()),
                    ("new_state", Value::from(change.to.as_str())),
                    (
                        "previous_state",
                        change.from.map_or(Value::Null, |s| Value::from(s.as_str())),
                    ),
                ]),
            );
            let lifecycle = lifecycle_topic(change).map(|topic| {
                daemon_event(
                    topic,
                    change.at,
                    map([
                        ("procedure_id", id),
                        ("summary", view::procedure(&change.summary)),
                    ]),
                )
            });
            std::iter::once(statechange).chain(lifecycle).collect()
        }
        BusEvent::StackTrace { id, trace } => vec![daemon_event(
            topics::STACKTRACE,
            now(),
            map([
                ("procedure_id", Value::from(*id)),
                ("stacktrace", Value::from(trace.as_str())),
            ]),
        )],
        BusEvent::Script { id, topic, payload } => vec![Event {
            topic: topic.clone(),
            msg_src: id.to_string(),
            time: now(),
            payload: payload.clone(),
        }],
        BusEvent::Activity { news, summary } => vec![daemon_event(
            activity_topic(*news, summary),
            now(),
            map([
                ("activity_id", Value::from(summary.id)),
                ("state", Value::from(summary.state.as_str())),
                ("summary", view::activity(summary)),
            ]),
        )],
        BusEvent::SbStarted {
            activity_id,
            procedure_id,
            sbd_id,
            sbi_id,
        } => vec![daemon_event(
            topics::SB_STARTED,
            now(),
            map([
                ("activity_id", Value::from(*activity_id)),
                ("sbd_id", Value::from(sbd_id.as_str())),
                ("sbi_id", Value::from(sbi_id.as_str())),
                ("procedure_id", Value::from(*procedure_id)),
            ]),
        )],
    }
}

/// About how many bytes an event holds, for the subscribers' byte budgets.
pub fn approx_bytes(event: &BusEvent) -> usize {
    const BASE: usize = 64;
    BASE + match event {
        BusEvent::Request { payload, .. } => payload.approx_bytes(),
        BusEvent::StateChanged(change) => {
            let summary = &change.summary;
            summary.stacktrace.as_ref().map_or(0, String::len)
                + summary
                    .calls
                    .iter()
                    .map(|call| call.args.approx_bytes())
                    .sum::<usize>()
                + summary.history.len() * 32
        }
        BusEvent::StackTrace { trace, .. } => trace.len(),
        BusEvent::Script { topic, payload, .. } => topic.len() + payload.approx_bytes(),
        BusEvent::Activity { summary, .. } => {
            summary
                .script_args
                .values()
                .map(|args| args.approx_bytes())
                .sum::<usize>()
                + summary.error.as_ref().map_or(0, String::len)
        }
        BusEvent::SbStarted { sbd_id, sbi_id, .. } => sbd_id.len() + sbi_id.len(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oetds_topics_are_reserved_and_scripts_keep_theirs() {
        for topic in [
            "procedure.lifecycle.statechange",
            "procedure.lifecycle",
            "activity.lifecycle.complete",
            "request.procedure.stop",
            "request",
        ] {
            assert!(is_reserved_topic(topic), "{topic}");
        }
        for topic in [
            "sb.lifecycle.allocated",
            "subarray.resources",
            "user.script.announce",
            "requests.mine",
            "procedure.lifecycles",
            "procedure.pool.list",
        ] {
            assert!(!is_reserved_topic(topic), "{topic}");
        }
    }
}
