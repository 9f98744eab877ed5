//! The control server: the Unix socket, one task per connection, and the dispatch of
//! requests to the services.

pub mod connection;
pub mod dispatch;
pub mod listener;

pub use dispatch::Services;
pub use listener::{bind, serve, Shutdown};
