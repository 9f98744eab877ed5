//! The channel between the daemon and one worker harness: JSON lines over a socket pair
//! handed to the worker as a file descriptor. The script's stdout and stderr stay the
//! script's own.

use std::collections::BTreeMap;

use futures::{SinkExt, StreamExt};
use oet_protocol::{FunctionArgs, ProcedureState, Value};
use serde::{Deserialize, Serialize};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;
use tokio_util::codec::{FramedRead, FramedWrite, LinesCodec, LinesCodecError};

/// Longest line accepted from a worker (an event or a stack trace).
const MAX_LINE: usize = 16 * 1024 * 1024;

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
}

#[derive(Deserialize)]
struct RawFromWorker {
    state: Option<String>,
    stacktrace: Option<String>,
    event: Option<RawEvent>,
}

#[derive(Deserialize)]
struct RawEvent {
    topic: String,
    #[serde(default)]
    payload: BTreeMap<String, serde_json::Value>,
}

/// A line from the worker that is not a message the daemon understands.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("worker channel failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("worker sent a line longer than {MAX_LINE} bytes")]
    TooLong,
    #[error("worker sent something that is not a message: {0}")]
    Malformed(String),
}

impl From<LinesCodecError> for LinkError {
    fn from(err: LinesCodecError) -> Self {
        match err {
            LinesCodecError::MaxLineLengthExceeded => LinkError::TooLong,
            LinesCodecError::Io(io) => LinkError::Io(io),
        }
    }
}

fn parse(line: &str) -> Result<FromWorker, LinkError> {
    let raw: RawFromWorker =
        serde_json::from_str(line).map_err(|e| LinkError::Malformed(e.to_string()))?;
    if let Some(event) = raw.event {
        let payload = event
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
        return Ok(FromWorker::Event {
            topic: event.topic,
            payload,
        });
    }
    let name = raw
        .state
        .ok_or_else(|| LinkError::Malformed(format!("no state or event in {line}")))?;
    let state = name.parse().map_err(LinkError::Malformed)?;
    Ok(FromWorker::State {
        state,
        stacktrace: raw.stacktrace,
    })
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
        assert!(parse("not json").is_err());
        assert!(parse(r#"{"state": "DANCING"}"#).is_err());
        assert!(parse(r#"{}"#).is_err());
    }
}
