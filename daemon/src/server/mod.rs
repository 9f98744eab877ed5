//! The control server: the Unix socket and its accept loop (`listener`), which
//! connections are held (`admission`), who peers are and what they may do (`access`),
//! one task per connection (`connection`), the requests and their handlers (`api`), and
//! the mapping of the daemon's errors to wire errors (`errors`); the `[server]`
//! section (`config`).

pub mod access;
pub mod admission;
pub mod api;
mod config;
pub mod connection;
mod errors;
pub mod listener;

pub use access::{Access, AccessConfig, Peer};
pub use api::{Reload, Services};
pub use config::{ServerConfig, DEFAULT_SOCKET_GROUP};
pub use listener::{bind, check_socket, serve, Shutdown};
