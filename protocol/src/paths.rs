//! Where the control socket lives when nobody says otherwise. Shared by the daemon (which
//! creates it) and the clients (which look for it), so they agree.

use std::env;
use std::path::{Path, PathBuf};

/// Environment variable naming the socket for clients.
pub const SOCKET_ENV: &str = "OET_SOCKET";

/// The socket file name inside its directory.
pub const SOCKET_NAME: &str = "oetd.sock";

/// The system service's socket (systemd `RuntimeDirectory=oet`).
pub const SYSTEM_SOCKET: &str = "/run/oet/oetd.sock";

fn uid() -> u32 {
    // SAFETY: getuid cannot fail and has no preconditions.
    unsafe { libc::getuid() }
}

/// The directory for an unprivileged daemon's runtime files when no runtime directory is
/// given: `$XDG_RUNTIME_DIR/oet`, else `/tmp/oetd-<uid>`.
pub fn user_runtime_dir() -> PathBuf {
    match env::var_os("XDG_RUNTIME_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir).join("oet"),
        _ => PathBuf::from(format!("/tmp/oetd-{}", uid())),
    }
}

/// The first directory systemd names in `variable` (`RUNTIME_DIRECTORY`,
/// `STATE_DIRECTORY`, `CACHE_DIRECTORY`, ...: colon-separated lists whose first entry
/// is the unit's own), if set.
pub fn systemd_directory(variable: &str) -> Option<PathBuf> {
    let value = env::var_os(variable).filter(|v| !v.is_empty())?;
    let first = value.to_string_lossy().split(':').next()?.to_owned();
    (!first.is_empty()).then(|| PathBuf::from(first))
}

/// The socket a daemon creates by default: under systemd's `RUNTIME_DIRECTORY` when set,
/// `/run/oet` for root, otherwise under [`user_runtime_dir`].
pub fn daemon_socket() -> PathBuf {
    if let Some(dir) = systemd_directory("RUNTIME_DIRECTORY") {
        return dir.join(SOCKET_NAME);
    }
    if uid() == 0 {
        return PathBuf::from(SYSTEM_SOCKET);
    }
    user_runtime_dir().join(SOCKET_NAME)
}

/// The socket a client uses when neither `--socket` nor `OET_SOCKET` is given: root
/// talks to the system service; anyone else to their own daemon, or to the system
/// service when they have no daemon of their own.
pub fn client_socket() -> PathBuf {
    if let Some(path) = env::var_os(SOCKET_ENV).filter(|p| !p.is_empty()) {
        return PathBuf::from(path);
    }
    if uid() == 0 {
        return PathBuf::from(SYSTEM_SOCKET);
    }
    let own = user_runtime_dir().join(SOCKET_NAME);
    if !own.exists() && Path::new(SYSTEM_SOCKET).exists() {
        return PathBuf::from(SYSTEM_SOCKET);
    }
    own
}
