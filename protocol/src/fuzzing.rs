//! What the fuzz target (`fuzz/`, run by `scripts/fuzz`) and the regression tests of its
//! findings (`protocol/tests/fuzz_regressions.rs`) feed arbitrary bytes through: every
//! decoding a peer can reach. Each must answer with a value or an error, never panic,
//! overflow the stack or allocate without bound; a value that decodes encodes back to a
//! canonical form that decodes to the same form.

use bytes::BytesMut;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio_util::codec::Decoder;

use crate::codec::{decode, encode, FrameCodec};
use crate::messages::{ClientMessage, Opening, ServerMessage};
use crate::value::{Value, MAX_DEPTH};

/// Frames of at most this size are decoded, as a server with the default limit would.
const MAX_FRAME: usize = crate::codec::DEFAULT_MAX_FRAME;

/// Runs `data` through the server's first-frame and request decoding, the client's
/// decoding, and a bare [`Value`].
pub fn decode_everything(data: &[u8]) {
    frames::<Opening>(data);
    frames::<ClientMessage>(data);
    frames::<ServerMessage>(data);
    if let Ok(value) = decode::<Value>(data) {
        assert!(
            value.depth() <= MAX_DEPTH,
            "a value deeper than allowed decoded"
        );
        canonical(&value);
    }
}

/// Decodes `data` as a stream of frames of `T`, as a connection would, until it ends
/// or fails.
fn frames<T: DeserializeOwned + Serialize>(data: &[u8]) {
    let mut codec: FrameCodec<T, T> = FrameCodec::new(MAX_FRAME);
    let mut buffer = BytesMut::from(data);
    while let Ok(Some(message)) = codec.decode(&mut buffer) {
        canonical(&message);
    }
}

/// Encodes a decoded message, decodes that and encodes it again: the two encodings
/// must be the same bytes.
fn canonical<T: DeserializeOwned + Serialize>(message: &T) {
    let first = encode(message).expect("a decoded message encodes");
    let again: T = decode(&first).expect("an encoded message decodes");
    let second = encode(&again).expect("a decoded message encodes");
    assert_eq!(first, second, "encoding is not canonical");
}
