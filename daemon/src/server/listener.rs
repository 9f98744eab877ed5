//! Accepting connections: a bounded number at once, each in its own task, and a graceful
//! shutdown that stops accepting and lets every connection task end.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use tokio::net::UnixListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::api::Services;
use super::connection;

/// Why the control socket could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("another oetd is already listening on {0}; stop it or choose another --socket")]
    InUse(String),
    #[error("cannot create the control socket {path}: {source}")]
    Io { path: String, source: io::Error },
}

/// Creates the control socket at `path`: makes its directory, removes a stale socket
/// file left by a daemon that died, and refuses to take over a live daemon's socket.
pub fn bind(path: &Path, mode: u32) -> Result<std::os::unix::net::UnixListener, BindError> {
    let shown = path.display().to_string();
    let io_err = |source| BindError::Io {
        path: shown.clone(),
        source,
    };
    if let Some(dir) = path.parent() {
        if !dir.exists() {
            std::fs::create_dir_all(dir).map_err(io_err)?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
                .map_err(io_err)?;
        }
    }
    if path.exists() {
        match std::os::unix::net::UnixStream::connect(path) {
            Ok(_) => return Err(BindError::InUse(shown)),
            Err(_) => {
                warn!("removing stale socket file {shown}");
                std::fs::remove_file(path).map_err(io_err)?;
            }
        }
    }
    let listener = std::os::unix::net::UnixListener::bind(path).map_err(io_err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(io_err)?;
    Ok(listener)
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
    max_connections: usize,
    max_frame: usize,
    shutdown: Shutdown,
) {
    let permits = Arc::new(Semaphore::new(max_connections));
    let tasks = tokio_util::task::TaskTracker::new();
    loop {
        // Take a permit before accepting, so that excess clients wait in the kernel's
        // backlog instead of costing the daemon a task each.
        let permit = tokio::select! {
            _ = shutdown.stop_accepting.cancelled() => break,
            permit = permits.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        let stream = tokio::select! {
            _ = shutdown.stop_accepting.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(err) => {
                    error!("cannot accept a connection: {err}");
                    continue;
                }
            },
        };
        let services = services.clone();
        let close = shutdown.close_connections.clone();
        tasks.spawn(async move {
            connection::serve(stream, services, max_frame, close).await;
            drop(permit);
        });
    }
    info!("no longer accepting connections");
    tasks.close();
    tasks.wait().await;
}
