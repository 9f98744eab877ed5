//! The control server: the Unix socket and its accept loop (`listener`), one task per
//! connection (`connection`), the requests and their handlers (`api`), and the mapping of
//! the daemon's errors to wire errors (`errors`).

pub mod api;
pub mod connection;
mod errors;
pub mod listener;

pub use api::Services;
pub use listener::{bind, serve, Shutdown};

use serde::{Deserialize, Serialize};

/// The control socket: the `[server]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Path of the control socket. Empty: `$RUNTIME_DIRECTORY/oetd.sock`, `/run/oet/oetd.sock`
    /// for root, else `$XDG_RUNTIME_DIR/oet/oetd.sock` or `/tmp/oetd-<uid>/oetd.sock`.
    pub socket: String,
    /// Connections served at once; further clients wait to be accepted.
    pub max_connections: usize,
    /// Largest frame accepted from a client, in bytes.
    pub max_frame_bytes: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            socket: String::new(),
            max_connections: 64,
            max_frame_bytes: oet_protocol::codec::DEFAULT_MAX_FRAME,
        }
    }
}

impl ServerConfig {
    /// Checks the values that types cannot; the error names the key.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_connections == 0 {
            return Err("server.max_connections must be at least 1".into());
        }
        if self.max_frame_bytes < 1024 {
            return Err("server.max_frame_bytes must be at least 1024".into());
        }
        Ok(())
    }
}
