//! Glue to systemd: readiness and watchdog notification (`notify`), socket activation
//! (`activation`) and where log records go (`logging`: journald under systemd, plain text
//! otherwise, level changeable at run time), and what oetd reports while it runs
//! (`health`: the status line and the watchdog).
//!
//! Everything here reads (and then removes) environment variables that systemd sets for
//! the main process only, so the constructors must run at the top of `main`, before the
//! tokio runtime or any other thread starts and before any child process is spawned.

mod activation;
mod error;
pub mod health;
mod logging;
mod notify;

pub use error::Error;

pub use activation::listen_fds;
pub use logging::{init_logging, LogControl, LogTarget};
pub use notify::Notifier;

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
