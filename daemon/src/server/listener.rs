//! The control socket and its accept loop: the socket's directory is checked (or made)
//! before the socket is created in it; every connection is admitted or refused at once
//! (see `admission`), each admitted one served in its own task; errors of `accept`
//! itself (out of file descriptors) back off instead of spinning, logged once a burst;
//! and a graceful shutdown stops accepting and lets every connection task end.

use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;

use nix::unistd::{Gid, Uid};
use tokio::net::UnixListener;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::access::{group_id, Peer};
use super::admission::{Admission, Caps};
use super::api::Services;
use super::config::{ServerConfig, DEFAULT_SOCKET_GROUP};
use super::connection::{self, Limits};

/// Why the control socket could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("another oetd is already listening on {0}; stop it or choose another --socket")]
    InUse(String),
    #[error("cannot create the control socket {path}: {source}")]
    Io { path: String, source: io::Error },
    #[error("refusing to use {dir} for the control socket: it {problem}; it must be owned by oetd's user (uid {uid}) and writable by no one else, or another user could replace the socket")]
    UnsafeDirectory {
        dir: String,
        problem: String,
        uid: u32,
    },
    #[error("server.socket_group {0:?} names no group on this host")]
    NoGroup(String),
    #[error("the control socket {path} has mode {mode:04o}, which lets anyone connect; set server.world_writable_socket = true if that is meant")]
    WorldWritable { path: String, mode: u32 },
}

/// Creates the control socket at `path` as `[server]` says: makes its directory (0700,
/// or 0710 for the socket's group to pass through) or checks the one that is there,
/// removes a stale socket file left by a daemon that died, refuses to take over a live
/// daemon's socket, and gives the socket its mode and group.
pub fn bind(
    path: &Path,
    config: &ServerConfig,
) -> Result<std::os::unix::net::UnixListener, BindError> {
    let shown = path.display().to_string();
    let io_err = |source| BindError::Io {
        path: shown.clone(),
        source,
    };
    let mode = config.mode().map_err(|e| io_err(io::Error::other(e)))?;
    let group = socket_group(config)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        prepare_directory(dir, group).map_err(|e| match e {
            DirError::Io(source) => io_err(source),
            DirError::Unsafe(problem) => BindError::UnsafeDirectory {
                dir: dir.display().to_string(),
                problem,
                uid: Uid::effective().as_raw(),
            },
        })?;
    }
    if std::fs::symlink_metadata(path).is_ok() {
        match std::os::unix::net::UnixStream::connect(path) {
            Ok(_) => return Err(BindError::InUse(shown)),
            Err(_) => {
                warn!("removing stale socket file {shown}");
                std::fs::remove_file(path).map_err(io_err)?;
            }
        }
    }
    let listener = std::os::unix::net::UnixListener::bind(path).map_err(io_err)?;
    if let Some(gid) = group {
        nix::unistd::chown(path, None, Some(gid)).map_err(|e| io_err(e.into()))?;
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(io_err)?;
    Ok(listener)
}

/// Checks a socket oetd did not create (passed by systemd): it must not let anyone
/// connect unless `server.world_writable_socket` says so.
pub fn check_socket(path: &Path, config: &ServerConfig) -> Result<(), BindError> {
    let Ok(meta) = std::fs::metadata(path) else {
        return Ok(());
    };
    let mode = meta.mode() & 0o777;
    if mode & 0o002 != 0 && !config.world_writable_socket {
        return Err(BindError::WorldWritable {
            path: path.display().to_string(),
            mode,
        });
    }
    Ok(())
}

/// The socket's group: `server.socket_group`, or `oet` when it is empty, that group
/// exists and oetd may give files to it (it is root or a member).
fn socket_group(config: &ServerConfig) -> Result<Option<Gid>, BindError> {
    if config.socket_group.is_empty() {
        let member = |gid: &Gid| {
            Uid::effective().is_root()
                || Gid::effective() == *gid
                || nix::unistd::getgroups().is_ok_and(|groups| groups.contains(gid))
        };
        return Ok(group_id(DEFAULT_SOCKET_GROUP).filter(member));
    }
    group_id(&config.socket_group)
        .map(Some)
        .ok_or_else(|| BindError::NoGroup(config.socket_group.clone()))
}

enum DirError {
    Io(io::Error),
    Unsafe(String),
}

/// Makes the socket's directory, or checks that the one there is oetd's own and
/// writable by no one else (a directory others may write to lets them replace the
/// socket, and receive the operators' connections).
fn prepare_directory(dir: &Path, group: Option<Gid>) -> Result<(), DirError> {
    let me = Uid::effective();
    let pass_mode = if group.is_some() { 0o710 } else { 0o700 };
    match std::fs::symlink_metadata(dir) {
        Err(err) if err.kind() == io::ErrorKind::NotFound => {
            if let Some(parent) = dir.parent() {
                std::fs::create_dir_all(parent).map_err(DirError::Io)?;
            }
            std::fs::DirBuilder::new()
                .mode(0o700)
                .create(dir)
                .map_err(DirError::Io)?;
            if let Some(gid) = group {
                nix::unistd::chown(dir, None, Some(gid)).map_err(|e| DirError::Io(e.into()))?;
            }
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(pass_mode))
                .map_err(DirError::Io)
        }
        Err(err) => Err(DirError::Io(err)),
        Ok(meta) if !meta.is_dir() => Err(DirError::Unsafe("is not a directory".into())),
        Ok(meta) if meta.uid() != me.as_raw() => {
            Err(DirError::Unsafe(format!("is owned by uid {}", meta.uid())))
        }
        Ok(meta) if meta.mode() & 0o022 != 0 => Err(DirError::Unsafe(format!(
            "has mode {:04o}, writable by {}",
            meta.mode() & 0o7777,
            if meta.mode() & 0o002 != 0 {
                "anyone"
            } else {
                "its group"
            }
        ))),
        Ok(_) => Ok(()),
    }
}

/// When the server stops: first it stops accepting, later (once scripts are stopped and
/// their final states published to listeners) it closes the open connections.
#[derive(Clone, Default)]
pub struct Shutdown {
    pub stop_accepting: CancellationToken,
    pub close_connections: CancellationToken,
}

/// Serves connections until told to stop accepting, then waits for every connection task
/// to end.
pub async fn serve(
    listener: UnixListener,
    services: Services,
    config: &ServerConfig,
    shutdown: Shutdown,
) {
    let admission = Admission::new(Caps {
        total: config.max_connections,
        per_uid: config.max_connections_per_uid,
        own_uid: Uid::effective().as_raw(),
    });
    let limits = Limits {
        max_frame: config.max_frame_bytes,
        handshake: config.handshake_timeout(),
        frame: config.frame_timeout(),
    };
    let tasks = tokio_util::task::TaskTracker::new();
    let mut trouble = AcceptTrouble::default();
    loop {
        let accepted = tokio::select! {
            _ = shutdown.stop_accepting.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => {
                trouble.over();
                stream
            }
            Err(err) if per_connection(&err) => continue,
            Err(err) => {
                let pause = trouble.pause(&err);
                tokio::select! {
                    _ = shutdown.stop_accepting.cancelled() => break,
                    _ = tokio::time::sleep(pause) => continue,
                }
            }
        };
        let peer = Peer::of(&stream);
        let role = services.access.role_of(&peer);
        let ticket = match admission.admit(peer.uid, role) {
            Ok(ticket) => ticket,
            Err(refusal) => {
                connection::refuse_at_once(&stream, &refusal.to_string(), limits.max_frame);
                info!(
                    peer_uid = peer.uid,
                    peer_pid = peer.pid,
                    "refused a connection from {}: {refusal}",
                    peer.describe()
                );
                continue;
            }
        };
        let services = services.clone();
        let close = shutdown.close_connections.clone();
        tasks.spawn(connection::serve(
            stream, peer, ticket, services, limits, close,
        ));
    }
    info!("no longer accepting connections");
    tasks.close();
    tasks.wait().await;
}

/// Errors of `accept` that concern one connection only (it went away before it was
/// accepted); the next `accept` may well succeed.
fn per_connection(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(libc::ECONNABORTED | libc::EINTR | libc::EPROTO | libc::EPERM)
    )
}

/// A run of failing `accept`s (out of file descriptors, out of memory): waits between
/// tries that grow up to [`MAX_PAUSE`], and one log record at its start and one at its
/// end, instead of a record per try.
#[derive(Default)]
struct AcceptTrouble {
    failures: u64,
}

const FIRST_PAUSE: Duration = Duration::from_millis(10);
const MAX_PAUSE: Duration = Duration::from_secs(1);

impl AcceptTrouble {
    fn pause(&mut self, err: &io::Error) -> Duration {
        if self.failures == 0 {
            let limit = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
                .map(|(soft, _)| format!(" (the open-file limit is {soft})"))
                .unwrap_or_default();
            error!(
                "cannot accept connections: {err}{limit}; retrying with pauses of up to {} s, and logging nothing more until accepting works again",
                MAX_PAUSE.as_secs()
            );
        }
        self.failures += 1;
        let doublings = u32::try_from(self.failures.min(16)).unwrap_or(16);
        FIRST_PAUSE
            .saturating_mul(1 << doublings.saturating_sub(1))
            .min(MAX_PAUSE)
    }

    fn over(&mut self) {
        if self.failures > 0 {
            info!(
                "accepting connections again, after {} failed tries",
                self.failures
            );
            self.failures = 0;
        }
    }
}
