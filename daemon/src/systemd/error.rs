//! What can go wrong talking to systemd or setting up logging.

use std::path::PathBuf;

/// What can go wrong talking to systemd or setting up logging.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `LISTEN_PID`/`LISTEN_FDS` could not be parsed.
    #[error("systemd passed unusable socket-activation variables (LISTEN_PID/LISTEN_FDS): {0}")]
    ListenEnv(#[source] std::io::Error),
    /// More than one descriptor was passed; oetd serves exactly one control socket.
    #[error(
        "systemd passed {0} sockets but oetd serves exactly one; \
         give oetd.socket a single ListenStream= line"
    )]
    TooManyListenFds(usize),
    /// The passed descriptor is not what `oetd.socket` should hand over.
    #[error(
        "the socket systemd passed as fd 3 is {0}, not a listening Unix stream socket; \
         oetd.socket needs ListenStream=/path and Accept=no"
    )]
    WrongListenSocket(&'static str),
    /// Inspecting the passed descriptor failed.
    #[error("cannot inspect the socket systemd passed as fd 3: {0}")]
    InspectListenFd(#[source] nix::Error),
    /// `NOTIFY_SOCKET` names something a datagram cannot be addressed to.
    #[error("NOTIFY_SOCKET={path:?} is not a usable socket address: {source}")]
    NotifyAddress {
        /// The value of `NOTIFY_SOCKET`.
        path: PathBuf,
        /// Why it cannot be used.
        #[source]
        source: std::io::Error,
    },
    /// Sending a notification failed.
    #[error("cannot send {what} to systemd's notify socket {path:?}: {source}")]
    Notify {
        /// The notification, e.g. `READY=1`.
        what: String,
        /// The value of `NOTIFY_SOCKET`.
        path: PathBuf,
        /// The send error.
        #[source]
        source: std::io::Error,
    },
    /// The log level string is not a valid filter.
    #[error(
        "log level {level:?} is not valid ({reason}); use error, warn, info, debug or trace, \
         optionally per module such as \"info,oetd::procedure=debug\""
    )]
    LogLevel {
        /// The rejected level string.
        level: String,
        /// The parser's complaint.
        reason: String,
    },
    /// A global tracing subscriber was already installed.
    #[error("logging was already initialised in this process")]
    LoggingAlreadySet,
    /// Changing the log level at run time failed.
    #[error("cannot change the log level: {0}")]
    Reload(String),
}
