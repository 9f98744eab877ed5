//! sd_notify: telling systemd that oetd is ready, what it is doing, that it is stopping,
//! and that it is still alive (the watchdog).
//!
//! The `sd-notify` crate formats the messages and interprets `WATCHDOG_USEC`/`WATCHDOG_PID`.
//! Its `notify` function looks `NOTIFY_SOCKET` up on every call, but we remove that variable
//! at start-up so that script processes do not inherit it (a script must not be able to
//! report readiness on oetd's behalf), so the [`Notifier`] keeps the address itself.

use std::ffi::OsString;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use sd_notify::NotifyState;

use super::error::Error;

/// Sends notifications to systemd; does nothing when oetd was not started by systemd.
///
/// Cheap to clone: clones share one socket.
#[derive(Clone, Debug, Default)]
pub struct Notifier {
    target: Option<Arc<Target>>,
    watchdog: Option<Duration>,
}

#[derive(Debug)]
struct Target {
    socket: UnixDatagram,
    addr: SocketAddr,
    path: PathBuf,
}

impl Notifier {
    /// Reads `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID`, then removes them from the
    /// environment so child processes do not inherit them.
    ///
    /// Call at the top of `main`, before any other thread exists (the environment is not
    /// thread-safe). Without `NOTIFY_SOCKET` the notifier is a no-op.
    pub fn from_env() -> Result<Self, Error> {
        let socket = std::env::var_os("NOTIFY_SOCKET");
        // SAFETY (the crate's precondition for removing variables): the caller runs this
        // before any other thread is started.
        let watchdog = unsafe { sd_notify::watchdog_enabled_and_unset_env() };
        std::env::remove_var("NOTIFY_SOCKET");
        Self::new(socket, watchdog)
    }

    /// A notifier that sends nothing (oetd not under systemd, or a test).
    pub fn disabled() -> Self {
        Self::default()
    }

    /// A notifier for the given `NOTIFY_SOCKET` value (a path, or `@name` for an abstract
    /// socket) and full watchdog timeout (`WATCHDOG_USEC` as a duration).
    pub fn new(socket: Option<OsString>, watchdog: Option<Duration>) -> Result<Self, Error> {
        let target = match socket.filter(|s| !s.is_empty()) {
            None => None,
            Some(value) => {
                let path = PathBuf::from(&value);
                let bytes = value.as_bytes();
                let addr = match bytes.strip_prefix(b"@") {
                    Some(name) => SocketAddr::from_abstract_name(name),
                    None => SocketAddr::from_pathname(&path),
                }
                .and_then(|addr| Ok((addr, UnixDatagram::unbound()?)));
                let (addr, socket) = addr.map_err(|source| Error::NotifyAddress {
                    path: path.clone(),
                    source,
                })?;
                Some(Arc::new(Target { socket, addr, path }))
            }
        };
        Ok(Self {
            target,
            watchdog: watchdog.filter(|d| !d.is_zero()),
        })
    }

    /// Whether notifications go anywhere.
    pub fn is_enabled(&self) -> bool {
        self.target.is_some()
    }

    /// `READY=1`: send only once the control socket accepts connections.
    pub fn ready(&self) -> Result<(), Error> {
        self.send(&[NotifyState::Ready])
    }

    /// `STATUS=...`: one line shown by `systemctl status oetd`.
    pub fn status(&self, status: &str) -> Result<(), Error> {
        // A newline would end the STATUS= assignment and start another one.
        let line = status.replace('\n', " ");
        self.send(&[NotifyState::Status(&line)])
    }

    /// `STOPPING=1`: shutdown has begun.
    pub fn stopping(&self) -> Result<(), Error> {
        self.send(&[NotifyState::Stopping])
    }

    /// `WATCHDOG=1`: oetd is alive. Send it every [`Notifier::watchdog_interval`], from a
    /// task that proves the daemon is responsive rather than from a bare timer.
    pub fn watchdog(&self) -> Result<(), Error> {
        self.send(&[NotifyState::Watchdog])
    }

    /// How often to send `WATCHDOG=1`: half of `WATCHDOG_USEC`, or `None` when systemd
    /// has no watchdog for this process (unset, zero, or `WATCHDOG_PID` names another).
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog.map(|timeout| timeout / 2)
    }

    fn send(&self, states: &[NotifyState<'_>]) -> Result<(), Error> {
        let Some(target) = &self.target else {
            return Ok(());
        };
        let message: String = states.iter().map(|s| format!("{s}\n")).collect();
        target
            .socket
            .send_to_addr(message.as_bytes(), &target.addr)
            .map(drop)
            .map_err(|source| Error::Notify {
                what: message.trim_end().replace('\n', ", "),
                path: target.path.clone(),
                source,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::systemd::child;

    fn receive(socket: &UnixDatagram) -> String {
        let mut buf = [0u8; 4096];
        let n = socket.recv(&mut buf).expect("receive a notification");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    fn bound_socket(dir: &tempfile::TempDir) -> (UnixDatagram, PathBuf) {
        let path = dir.path().join("notify.sock");
        let socket = UnixDatagram::bind(&path).expect("bind the test's notify socket");
        socket
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("set a receive deadline");
        (socket, path)
    }

    #[test]
    fn sends_each_notification_to_the_socket() {
        let dir = tempfile::tempdir().unwrap();
        let (socket, path) = bound_socket(&dir);
        let notifier = Notifier::new(Some(path.into_os_string()), None).unwrap();
        assert!(notifier.is_enabled());

        notifier.ready().unwrap();
        assert_eq!(receive(&socket), "READY=1\n");
        notifier.status("2 procedures live,\n1 running").unwrap();
        assert_eq!(receive(&socket), "STATUS=2 procedures live, 1 running\n");
        notifier.watchdog().unwrap();
        assert_eq!(receive(&socket), "WATCHDOG=1\n");
        notifier.clone().stopping().unwrap();
        assert_eq!(receive(&socket), "STOPPING=1\n");
    }

    #[test]
    fn abstract_socket_addresses_work() {
        let name = format!("oetd-test-notify-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let socket = UnixDatagram::bind_addr(&addr).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let notifier = Notifier::new(Some(format!("@{name}").into()), None).unwrap();
        notifier.ready().unwrap();
        assert_eq!(receive(&socket), "READY=1\n");
    }

    #[test]
    fn without_a_socket_nothing_is_sent_and_nothing_fails() {
        let notifier = Notifier::new(None, None).unwrap();
        assert!(!notifier.is_enabled());
        notifier.ready().unwrap();
        notifier.status("idle").unwrap();
        assert_eq!(notifier.watchdog_interval(), None);
        assert!(!Notifier::disabled().is_enabled());
    }

    #[test]
    fn a_vanished_socket_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gone.sock");
        let notifier = Notifier::new(Some(path.clone().into_os_string()), None).unwrap();
        let err = notifier.ready().unwrap_err().to_string();
        assert!(
            err.contains("READY=1") && err.contains("gone.sock"),
            "{err}"
        );
    }

    #[test]
    fn watchdog_interval_is_half_the_timeout() {
        let notifier = Notifier::new(None, Some(Duration::from_secs(30))).unwrap();
        assert_eq!(notifier.watchdog_interval(), Some(Duration::from_secs(15)));
        let zero = Notifier::new(None, Some(Duration::ZERO)).unwrap();
        assert_eq!(zero.watchdog_interval(), None);
    }

    /// The environment as systemd sets it: the notifier picks it up, removes it, and the
    /// watchdog is honoured only when `WATCHDOG_PID` is ours.
    #[test]
    fn from_env_reads_and_removes_the_variables() {
        let dir = tempfile::tempdir().unwrap();
        let (socket, path) = bound_socket(&dir);
        for (pid, expected) in [("$$", "interval=Some(1s)"), ("1", "interval=None")] {
            let mut cmd = child::command(
                &format!(
                    "export WATCHDOG_PID={pid} WATCHDOG_USEC=2000000 NOTIFY_SOCKET=\"$SOCK\";"
                ),
                "systemd::notify::tests::from_env_child",
            );
            cmd.env("SOCK", &path);
            let out = child::run(cmd);
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(stdout.contains(expected), "{stdout}");
            assert_eq!(receive(&socket), "READY=1\n");
        }
    }

    #[test]
    #[ignore = "runs in a child process started by from_env_reads_and_removes_the_variables"]
    fn from_env_child() {
        if !child::is_child() {
            return;
        }
        let notifier = Notifier::from_env().unwrap();
        for var in ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"] {
            assert_eq!(std::env::var_os(var), None, "{var} was left set");
        }
        println!("interval={:?}", notifier.watchdog_interval());
        notifier.ready().unwrap();
    }
}
