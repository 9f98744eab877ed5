//! Frames and bincode: the only place where protocol values are encoded or decoded.
//!
//! A frame is a 4-byte big-endian length followed by that many bytes of bincode. The
//! length is checked against the maximum frame size before anything is allocated, and
//! bincode decodes with a byte limit, so a hostile peer cannot make either side allocate
//! more than one frame's worth.

use std::io;
use std::marker::PhantomData;

use bytes::{Buf, BufMut, BytesMut};

use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio_util::codec::{Decoder, Encoder};

/// Default hard maximum of one frame (1 MiB).
pub const DEFAULT_MAX_FRAME: usize = 1024 * 1024;

/// Upper bound bincode may allocate while decoding one frame. A frame can never hold more
/// than this, whatever the configured maximum.
const DECODE_LIMIT: usize = 64 * 1024 * 1024;

/// The largest frame any side may be configured to accept. Clients read frames up to
/// this size, so that a server configured for larger frames than the default is read.
pub const MAX_FRAME_LIMIT: usize = DECODE_LIMIT;

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("connection error: {0}")]
    Io(#[from] io::Error),
    #[error("frame of {len} bytes exceeds the maximum of {max} bytes")]
    FrameTooLarge { len: usize, max: usize },
    #[error("malformed frame: {0}")]
    Malformed(String),
    #[error("cannot encode message: {0}")]
    Encode(String),
}

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<DECODE_LIMIT>()
}

/// Encodes one message to bincode bytes (without the length prefix).
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, CodecError> {
    bincode::serde::encode_to_vec(value, config()).map_err(|e| CodecError::Encode(e.to_string()))
}

/// Decodes one message from exactly `bytes`; trailing bytes are an error.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    let (value, used) = bincode::serde::decode_from_slice(bytes, config())
        .map_err(|e| CodecError::Malformed(e.to_string()))?;
    if used != bytes.len() {
        return Err(CodecError::Malformed(format!(
            "{} unexpected bytes after the message",
            bytes.len() - used
        )));
    }
    Ok(value)
}

/// One whole frame of `value` (length prefix and message), if it fits in `max` bytes.
pub fn encode_frame<T: Serialize>(value: &T, max: usize) -> Result<Vec<u8>, CodecError> {
    let mut frame = vec![0; HEAD];
    bincode::serde::encode_into_std_write(value, &mut frame, config())
        .map_err(|e| CodecError::Encode(e.to_string()))?;
    let len = frame.len() - HEAD;
    match u32::try_from(len) {
        Ok(head) if len <= max => {
            frame[..HEAD].copy_from_slice(&head.to_be_bytes());
            Ok(frame)
        }
        _ => Err(CodecError::FrameTooLarge { len, max }),
    }
}

/// Bytes of the length prefix.
const HEAD: usize = 4;

/// A tokio codec that reads `In` frames and writes `Out` frames.
pub struct FrameCodec<In, Out> {
    max: usize,
    _types: PhantomData<fn(Out) -> In>,
}

impl<In, Out> FrameCodec<In, Out> {
    pub fn new(max_frame: usize) -> Self {
        FrameCodec {
            max: max_frame.min(DECODE_LIMIT),
            _types: PhantomData,
        }
    }
}

impl<In: DeserializeOwned, Out> Decoder for FrameCodec<In, Out> {
    type Item = In;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<In>, CodecError> {
        let Some(head) = src.get(..HEAD) else {
            return Ok(None);
        };
        let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
        if len > self.max {
            return Err(CodecError::FrameTooLarge { len, max: self.max });
        }
        if src.len() < HEAD + len {
            // Only now, with the length known to be acceptable, make room for the body.
            src.reserve(HEAD + len - src.len());
            return Ok(None);
        }
        src.advance(HEAD);
        let frame = src.split_to(len);
        decode(&frame).map(Some)
    }
}

impl<In, Out: Serialize> Encoder<Out> for FrameCodec<In, Out> {
    type Error = CodecError;

    fn encode(&mut self, item: Out, dst: &mut BytesMut) -> Result<(), CodecError> {
        dst.put_slice(&encode_frame(&item, self.max)?);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::*;
    use crate::requests::*;
    use crate::summary::*;
    use crate::value::Value;
    use std::collections::BTreeMap;

    fn round_trip<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(value: T) {
        let bytes = encode(&value).expect("encode");
        let back: T = decode(&bytes).expect("decode");
        assert_eq!(back, value);
    }

    #[test]
    fn every_value_kind_round_trips() {
        let mut map = BTreeMap::new();
        map.insert(
            "a".to_string(),
            Value::List(vec![Value::Null, Value::Bool(false)]),
        );
        map.insert("b".to_string(), Value::Float(-0.5));
        map.insert("c".to_string(), Value::Int(i64::MIN));
        map.insert("d".to_string(), Value::from("text"));
        round_trip(Value::Map(map));
    }

    #[test]
    fn requests_and_responses_round_trip() {
        let script = ScriptSpec::Git {
            script_uri: "git://scripts/observe.py".into(),
            git_args: GitArgs {
                git_repo: Some("https://example.org/repo.git".into()),
                git_branch: None,
                git_commit: Some("abc123".into()),
            },
            create_env: true,
        };
        round_trip(Request {
            id: 7,
            body: RequestBody::CreateProcedure(crate::requests::CreateProcedure {
                script: script.clone(),
                init_args: FunctionArgs {
                    args: vec![Value::Int(1)],
                    kwargs: BTreeMap::from([("subarray_id".to_string(), Value::Int(1))]),
                },
            }),
        });
        round_trip(ServerMessage::Response {
            id: 7,
            result: Ok(CreateProcedure::into_response(ProcedureSummary {
                id: 1,
                script,
                checkout: None,
                calls: vec![],
                history: vec![StateChange {
                    state: ProcedureState::Creating,
                    time: 1.5,
                    function: None,
                    note: None,
                }],
                stacktrace: Some("Traceback".into()),
                state: ProcedureState::Creating,
                resources: None,
            })),
        });
        round_trip(ServerMessage::Response {
            id: 8,
            result: Err(crate::ProtocolError::not_found("no procedure 9")),
        });
    }

    #[test]
    fn oversized_length_is_refused_before_reading_the_body() {
        let mut codec: FrameCodec<Request, ServerMessage> = FrameCodec::new(1024);
        let mut buf = BytesMut::from(&[0x7f, 0xff, 0xff, 0xff][..]);
        match codec.decode(&mut buf) {
            Err(CodecError::FrameTooLarge { len, max: 1024 }) => assert_eq!(len, 0x7fff_ffff),
            other => panic!("expected FrameTooLarge, got {other:?}"),
        }
    }

    #[test]
    fn a_frame_arriving_in_pieces_is_decoded_once_whole() {
        let mut codec: FrameCodec<Value, Value> = FrameCodec::new(1024);
        let mut whole = BytesMut::new();
        codec
            .encode(Value::from("a longer string value"), &mut whole)
            .expect("encode");
        let mut buf = BytesMut::new();
        for byte in whole.iter().take(whole.len() - 1) {
            buf.put_u8(*byte);
            assert!(codec.decode(&mut buf).expect("no error").is_none());
        }
        buf.put_u8(whole[whole.len() - 1]);
        assert_eq!(
            codec.decode(&mut buf).expect("no error"),
            Some(Value::from("a longer string value"))
        );
        assert!(buf.is_empty());
    }

    #[test]
    fn garbage_in_a_frame_is_malformed() {
        let mut codec: FrameCodec<Request, ServerMessage> = FrameCodec::new(1024);
        let mut buf = BytesMut::from(&[0, 0, 0, 4, 0xff, 0xfe, 0xfd, 0xfc][..]);
        assert!(matches!(
            codec.decode(&mut buf),
            Err(CodecError::Malformed(_))
        ));
    }
}
