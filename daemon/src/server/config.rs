//! The `[server]` section: the control socket, its mode and group, the connection caps
//! and timeouts, and the frame limit.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::limits;

/// The control socket: the `[server]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Path of the control socket. Empty: `$RUNTIME_DIRECTORY/oetd.sock`, `/run/oet/oetd.sock`
    /// for root, else `$XDG_RUNTIME_DIR/oet/oetd.sock` or `/tmp/oetd-<uid>/oetd.sock`.
    pub socket: String,
    /// Mode of the socket oetd creates, in octal.
    pub socket_mode: String,
    /// Group of the socket oetd creates (a name or a number). Empty: `oet` when that
    /// group exists, else oetd's own group.
    pub socket_group: String,
    /// Whether a socket that anyone may write to (connect to) is accepted.
    pub world_writable_socket: bool,
    /// Connections held at once; see `admission` for how room is made.
    pub max_connections: usize,
    /// Connections one user may hold at once (root and oetd's own user: no limit).
    pub max_connections_per_uid: usize,
    /// Seconds a client has from connecting to completing the handshake.
    pub handshake_timeout_secs: f64,
    /// Seconds a frame, once begun, has to arrive whole; and an answer to be taken.
    pub frame_timeout_secs: f64,
    /// Largest frame accepted from a client or sent to one, in bytes.
    pub max_frame_bytes: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            socket: String::new(),
            socket_mode: "0660".into(),
            socket_group: String::new(),
            world_writable_socket: false,
            max_connections: 256,
            max_connections_per_uid: 32,
            handshake_timeout_secs: 5.0,
            frame_timeout_secs: 10.0,
            max_frame_bytes: oet_protocol::codec::DEFAULT_MAX_FRAME,
        }
    }
}

/// The group a socket gets when `server.socket_group` is empty, if it exists.
pub const DEFAULT_SOCKET_GROUP: &str = "oet";

impl ServerConfig {
    /// Checks the values that types cannot; the error names the key.
    pub fn validate(&self) -> Result<(), String> {
        limits::check("server.max_connections", self.max_connections, 1, 65_536)?;
        limits::check(
            "server.max_connections_per_uid",
            self.max_connections_per_uid,
            1,
            65_536,
        )?;
        limits::check_secs(
            "server.handshake_timeout_secs",
            self.handshake_timeout_secs,
            0.1,
            3600.0,
        )?;
        limits::check_secs(
            "server.frame_timeout_secs",
            self.frame_timeout_secs,
            0.1,
            3600.0,
        )?;
        limits::check(
            "server.max_frame_bytes",
            self.max_frame_bytes,
            1024,
            oet_protocol::codec::MAX_FRAME_LIMIT,
        )?;
        let mode = self.mode()?;
        if mode & 0o002 != 0 && !self.world_writable_socket {
            return Err(format!(
                "server.socket_mode {:?} lets anyone connect; set server.world_writable_socket = true if that is meant",
                self.socket_mode
            ));
        }
        Ok(())
    }

    /// The socket's mode.
    pub fn mode(&self) -> Result<u32, String> {
        u32::from_str_radix(self.socket_mode.trim_start_matches("0o"), 8)
            .ok()
            .filter(|mode| *mode <= 0o777)
            .ok_or_else(|| {
                format!(
                    "server.socket_mode {:?} is not a file mode in octal, such as \"0660\"",
                    self.socket_mode
                )
            })
    }

    pub fn handshake_timeout(&self) -> Duration {
        limits::secs(self.handshake_timeout_secs)
    }

    pub fn frame_timeout(&self) -> Duration {
        limits::secs(self.frame_timeout_secs)
    }
}
