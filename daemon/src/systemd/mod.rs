//! Glue to systemd: readiness and watchdog notification (`notify`), socket activation
//! (`activation`) and where log records go (`logging`: journald under systemd, plain text
//! otherwise, level changeable at run time), and what oetd reports while it runs
//! (`health`: the status line and the watchdog).
//!
//! Everything here reads (and then removes) environment variables that systemd sets for
//! the main process only, so the constructors must run at the top of `main`, before the
//! tokio runtime or any other thread starts and before any child process is spawned.

mod activation;
pub mod health;
mod logging;
mod notify;

pub use activation::listen_fds;
pub use logging::{init_logging, LogControl, LogTarget};
pub use notify::Notifier;

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

#[cfg(test)]
pub(crate) mod child {
    //! Re-executing the test binary so that one test can own fd 3, the environment and a
    //! private mount namespace without disturbing the other tests running in parallel.

    use std::process::{Command, Output};

    /// Environment variable telling a `#[ignore]`d child test that it was started on purpose.
    pub const MARKER: &str = "OETD_SYSTEMD_TEST_CHILD";

    /// Builds `sh -c '<prefix> exec test-binary --exact <test> --ignored'`.
    ///
    /// `prefix` runs in the shell that becomes the test process (so `$$` is the child's
    /// PID, which is how systemd's `LISTEN_PID`/`WATCHDOG_PID` are produced).
    pub fn command(prefix: &str, test: &str) -> Command {
        command_under(&[], prefix, test)
    }

    /// Like [`command`], with the shell started by `wrapper` (e.g. `unshare --mount`).
    pub fn command_under(wrapper: &[&str], prefix: &str, test: &str) -> Command {
        let exe = std::env::current_exe().expect("the test binary knows its own path");
        let mut cmd = match wrapper.split_first() {
            Some((program, args)) => {
                let mut cmd = Command::new(program);
                cmd.args(args).arg("sh");
                cmd
            }
            None => Command::new("sh"),
        };
        cmd.arg("-c")
            .arg(format!("{prefix} exec \"$0\" \"$@\""))
            .arg(exe)
            .args([
                "--exact",
                test,
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(MARKER, "1")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID")
            .env_remove("LISTEN_FDS")
            .env_remove("LISTEN_PID")
            .env_remove("LISTEN_FDNAMES")
            .env_remove("JOURNAL_STREAM");
        cmd
    }

    /// Runs the child and fails the calling test (showing its output) unless it passed.
    pub fn run(mut cmd: Command) -> Output {
        let out = cmd.output().expect("spawn the child test process");
        assert!(
            out.status.success(),
            "child test failed ({}):\n--- stdout\n{}\n--- stderr\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// True in the re-executed child; child tests return early otherwise.
    pub fn is_child() -> bool {
        std::env::var_os(MARKER).is_some()
    }
}
