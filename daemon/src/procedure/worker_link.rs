//! The channel between the daemon and one worker harness: JSON lines over a socket pair
//! handed to the worker as a file descriptor. The script's stdout and stderr stay the
//! script's own.
//!
//! The script runs in the harness's process and can write to the channel too, so what
//! arrives is untrusted: reading is bounded (a line longer than [`MAX_LINE`] is an error,
//! never a stall), and a line must be exactly one message of the harness's shape. Whether
//! the message may come *now* is `link_check`'s to say.

use std::collections::BTreeMap;

use futures::{SinkExt, StreamExt};
use oet_protocol::{FunctionArgs, ProcedureState, Value};
use serde::{Deserialize, Serialize};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;
use tokio_util::codec::{FramedRead, FramedWrite, LinesCodec, LinesCodecError};

/// Longest line accepted from a worker (an event or a stack trace).
pub const MAX_LINE: usize = 16 * 1024 * 1024;

/// What the daemon tells a worker.
#[derive(Debug, Serialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum ToWorker {
    Load {
        path: String,
        init: JsonArgs,
    },
    Call {
        function: String,
        args: Vec<serde_json::Value>,
        kwargs: serde_json::Map<String, serde_json::Value>,
    },
    Event {
        topic: String,
        msg_src: String,
        payload: serde_json::Value,
    },
}

/// Function arguments as the worker reads them.
#[derive(Debug, Serialize)]
pub struct JsonArgs {
    pub args: Vec<serde_json::Value>,
    pub kwargs: serde_json::Map<String, serde_json::Value>,
}

impl JsonArgs {
    /// Converts arguments for the worker. Arguments are checked for non-finite floats
    /// when a request is accepted, so the lossy form is exact here.
    pub fn from_args(args: &FunctionArgs) -> JsonArgs {
        JsonArgs {
            args: args.args.iter().map(Value::to_json_lossy).collect(),
            kwargs: args
                .kwargs
                .iter()
                .map(|(k, v)| (k.clone(), v.to_json_lossy()))
                .collect(),
        }
    }
}

/// What a worker tells the daemon.
#[derive(Debug, PartialEq)]
pub enum FromWorker {
    State {
        state: ProcedureState,
        stacktrace: Option<String>,
    },
    Event {
        topic: String,
        payload: Value,
    },
    /// The script listens to `topic` now ("" is every topic).
    Subscribe(String),
    /// The script no longer listens to `topic`.
    Unsubscribe(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFromWorker {
    state: Option<String>,
    stacktrace: Option<String>,
    event: Option<RawEvent>,
    subscribe: Option<String>,
    unsubscribe: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEvent {
    topic: String,
    #[serde(default)]
    payload: BTreeMap<String, serde_json::Value>,
}

/// What came from the worker instead of a message. Each is a sentence completing
/// "worker protocol violation: ".
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("the channel failed: {0}")]
    Io(std::io::Error),
    #[error("a line longer than {} MiB", MAX_LINE >> 20)]
    TooLong,
    #[error("a line that is not UTF-8")]
    NotUtf8,
    #[error("a line that is not a message ({0})")]
    Malformed(String),
}

impl From<LinesCodecError> for LinkError {
    fn from(err: LinesCodecError) -> Self {
        match err {
            LinesCodecError::MaxLineLengthExceeded => LinkError::TooLong,
            // The codec's only InvalidData is a line it cannot decode as UTF-8.
            LinesCodecError::Io(io) if io.kind() == std::io::ErrorKind::InvalidData => {
                LinkError::NotUtf8
            }
            LinesCodecError::Io(io) => LinkError::Io(io),
        }
    }
}

fn parse(line: &str) -> Result<FromWorker, LinkError> {
    let malformed = |what: &str| LinkError::Malformed(what.to_owned());
    let raw: RawFromWorker =
        serde_json::from_str(line).map_err(|e| LinkError::Malformed(e.to_string()))?;
    match raw {
        RawFromWorker {
            event: None,
            state: None,
            stacktrace: None,
            subscribe: Some(topic),
            unsubscribe: None,
        } => Ok(FromWorker::Subscribe(topic)),
        RawFromWorker {
            event: None,
            state: None,
            stacktrace: None,
            subscribe: None,
            unsubscribe: Some(topic),
        } => Ok(FromWorker::Unsubscribe(topic)),
        RawFromWorker {
            event: Some(event),
            state: None,
            stacktrace: None,
            subscribe: None,
            unsubscribe: None,
        } => {
            if event.topic.is_empty() {
                return Err(malformed("an event without a topic"));
            }
            let payload: BTreeMap<String, Value> = event
                .payload
                .into_iter()
                .map(|(k, v)| (k, Value::from(v)))
                .collect();
            let payload = Value::Map(payload);
            // What oetd passes on, its clients must be able to decode.
            if payload.depth() > oet_protocol::value::MAX_DEPTH {
                return Err(LinkError::Malformed(format!(
                    "an event payload nested more than {} levels deep",
                    oet_protocol::value::MAX_DEPTH
                )));
            }
            Ok(FromWorker::Event {
                topic: event.topic,
                payload,
            })
        }
        RawFromWorker {
            event: None,
            state: Some(name),
            stacktrace,
            subscribe: None,
            unsubscribe: None,
        } => {
            let state: ProcedureState = name.parse().map_err(LinkError::Malformed)?;
            if stacktrace.is_some() && state != ProcedureState::Failed {
                return Err(malformed("a stack trace with a state other than FAILED"));
            }
            Ok(FromWorker::State { state, stacktrace })
        }
        _ => Err(malformed(
            "not exactly one state, event, subscription or unsubscription",
        )),
    }
}

/// The reading half of a worker channel.
pub struct LinkReader {
    lines: FramedRead<OwnedReadHalf, LinesCodec>,
}

impl LinkReader {
    /// The next message; `None` once the worker closed its end.
    pub async fn next(&mut self) -> Option<Result<FromWorker, LinkError>> {
        match self.lines.next().await? {
            Ok(line) => Some(parse(&line)),
            // A worker that exits while bus events we forwarded are still unread closes
            // with a reset, reported only after everything it sent has been read: for
            // us that is the end of the channel, like EOF.
            Err(LinesCodecError::Io(err)) if err.kind() == std::io::ErrorKind::ConnectionReset => {
                None
            }
            Err(err) => Some(Err(err.into())),
        }
    }
}

/// The writing half of a worker channel.
pub struct LinkWriter {
    lines: FramedWrite<OwnedWriteHalf, LinesCodec>,
}

impl LinkWriter {
    pub async fn send(&mut self, message: &ToWorker) -> Result<(), LinkError> {
        let line =
            serde_json::to_string(message).map_err(|e| LinkError::Malformed(e.to_string()))?;
        self.lines.send(line).await.map_err(LinkError::from)
    }
}

/// Splits the daemon's end of a worker channel.
pub fn split(stream: UnixStream) -> (LinkReader, LinkWriter) {
    let (read, write) = stream.into_split();
    (
        LinkReader {
            lines: FramedRead::new(read, LinesCodec::new_with_max_length(MAX_LINE)),
        },
        LinkWriter {
            lines: FramedWrite::new(write, LinesCodec::new()),
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_worker_leaving_our_messages_unread_ends_the_channel_cleanly() {
        let (ours, theirs) = UnixStream::pair().expect("socket pair");
        let (mut reader, mut writer) = split(ours);
        let event = ToWorker::Event {
            topic: "activity.lifecycle.running".into(),
            msg_src: "daemon".into(),
            payload: serde_json::json!({}),
        };
        writer.send(&event).await.expect("send to the worker");
        let theirs = theirs.into_std().expect("std stream");
        std::io::Write::write_all(&mut &theirs, b"{\"state\": \"COMPLETE\"}\n")
            .expect("the worker's last words");
        drop(theirs); // exits without reading the event
        assert_eq!(
            reader.next().await.expect("last words").expect("a message"),
            FromWorker::State {
                state: ProcedureState::Complete,
                stacktrace: None
            }
        );
        assert!(reader.next().await.is_none(), "then the end, not an error");
    }

    #[test]
    fn parses_states_events_and_failures() {
        assert_eq!(
            parse(r#"{"state": "READY"}"#).expect("parses"),
            FromWorker::State {
                state: ProcedureState::Ready,
                stacktrace: None
            }
        );
        assert_eq!(
            parse(r#"{"state": "FAILED", "stacktrace": "Traceback"}"#).expect("parses"),
            FromWorker::State {
                state: ProcedureState::Failed,
                stacktrace: Some("Traceback".into())
            }
        );
        let event = parse(
            r#"{"event": {"topic": "user.script.announce", "payload": {"msg": "hi", "n": 1}}}"#,
        )
        .expect("parses");
        assert_eq!(
            parse(r#"{"subscribe": "user.x"}"#).expect("parses"),
            FromWorker::Subscribe("user.x".into())
        );
        assert_eq!(
            parse(r#"{"unsubscribe": ""}"#).expect("parses"),
            FromWorker::Unsubscribe(String::new())
        );
        match event {
            FromWorker::Event { topic, payload } => {
                assert_eq!(topic, "user.script.announce");
                assert_eq!(
                    payload.as_map().and_then(|m| m.get("n")),
                    Some(&Value::Int(1))
                );
            }
            other => panic!("expected an event, got {other:?}"),
        }
    }

    #[test]
    fn refuses_nonsense() {
        for line in [
            "not json",
            r#"{"state": "DANCING"}"#,
            r#"{}"#,
            r#"{"state": "READY", "by": "me"}"#,
            r#"{"state": "READY", "stacktrace": "x"}"#,
            r#"{"state": "READY", "event": {"topic": "a"}}"#,
            r#"{"event": {"topic": ""}}"#,
            r#"{"event": {"topic": "a", "extra": 1}}"#,
            r#"{"event": {"topic": "a", "payload": [1]}}"#,
            r#"{"subscribe": "a", "unsubscribe": "b"}"#,
            r#"{"subscribe": "a", "state": "READY"}"#,
            r#"{"subscribe": 7}"#,
        ] {
            let err = parse(line).expect_err(line);
            assert!(matches!(err, LinkError::Malformed(_)), "{line}: {err}");
        }
    }

    /// Writes `bytes` as the worker and reads what the daemon makes of them.
    async fn read_from_worker(bytes: Vec<u8>) -> Option<Result<FromWorker, LinkError>> {
        let (ours, theirs) = UnixStream::pair().expect("socket pair");
        let (mut reader, writer) = split(ours);
        let theirs = theirs.into_std().expect("std stream");
        theirs.set_nonblocking(false).expect("blocking");
        let writing = std::thread::spawn(move || {
            // The reader stops early on a long line; the rest then cannot be written.
            let _ = std::io::Write::write_all(&mut &theirs, &bytes);
        });
        let got = reader.next().await;
        // Closing our end lets a writer blocked on a full socket fail and end.
        drop((reader, writer));
        let _ = writing.join();
        got
    }

    #[tokio::test]
    async fn junk_and_endless_lines_are_errors_not_stalls() {
        let junk = read_from_worker(b"\xff\xfe\x00junk\n".to_vec()).await;
        assert!(matches!(junk, Some(Err(LinkError::NotUtf8))), "{junk:?}");
        let long = read_from_worker(vec![b'x'; MAX_LINE + 2]).await;
        assert!(matches!(long, Some(Err(LinkError::TooLong))), "{long:?}");
    }
}
