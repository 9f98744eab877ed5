//! The control-plane protocol spoken between `oetd` and its clients (`oetctl`, the HTTP
//! shim): message types, the one [`Value`] type for script arguments, the framed bincode
//! codec, and an async client.
//!
//! Wire types are kept plain (structs and externally tagged enums) because bincode cannot
//! decode serde's internally tagged, untagged or flattened shapes. The JSON shapes that
//! humans and web clients see are produced by the view functions in [`view`].

pub mod client;
pub mod codec;
pub mod error;
#[doc(hidden)]
pub mod fuzzing;
pub mod messages;
pub mod paths;
pub mod requests;
pub mod summary;
pub mod value;
pub mod view;

pub use client::{Client, ClientError, EventStream};
pub use error::{ErrorKind, ProtocolError};
pub use messages::*;
pub use requests::*;
pub use summary::*;
pub use value::Value;

/// Version of the control protocol. A client and a server with different versions refuse
/// to talk to each other, with a message naming both versions.
pub const PROTOCOL_VERSION: u32 = 3;
