//! `oet-http`: the original OET's REST API and server-sent event stream, served over
//! oetd's control socket so that upstream's clients (the web UI, the `oet` REST client,
//! notebooks) work unchanged. A client of oetd like `oetctl`: every call reaches oetd as
//! a call of the shim's own user, after the shim has checked the caller's token.
//!
//! `routes` holds the endpoints (one table, from which `openapi` documents them), `body`
//! checks what clients send, `oetd` talks to oetd, `hub` shares one event subscription
//! among the stream clients and `sse` writes events as upstream did; `server` is the
//! accept loop, `auth` and `tokens` decide who may do what.

pub mod auth;
pub mod body;
pub mod config;
pub mod error;
pub mod hub;
pub mod oetd;
pub mod openapi;
pub mod routes;
pub mod server;
pub mod sse;
pub mod tokens;

use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::auth::Auth;
use crate::config::{secs, Config};
use crate::hub::Hub;
use crate::oetd::Oetd;
use crate::routes::{App, AppState};

/// The application state for `config`, listening at `listen`.
pub fn app(
    config: &Config,
    listen: SocketAddr,
    auth: Auth,
    shutdown: CancellationToken,
) -> AppState {
    let socket = config.socket_path();
    let openapi = openapi::document(&config.server.prefix, auth.enabled());
    Arc::new(App {
        prefix: config.server.prefix.clone(),
        public_url: config.server.public_url.clone(),
        allowed_hosts: config.server.allowed_hosts.clone(),
        listen,
        max_body: config.server.max_body_bytes,
        ready_wait: secs(config.oetd.ready_wait_secs),
        heartbeat: secs(config.stream.heartbeat_secs),
        max_stream_clients: config.stream.max_clients,
        stream_clients: AtomicUsize::new(0),
        oetd: Oetd::new(
            socket.clone(),
            secs(config.oetd.timeout_secs),
            config.oetd.max_calls,
        ),
        hub: Arc::new(Hub::new(socket, config.stream.buffer)),
        auth,
        shutdown,
        openapi: openapi.to_string().into(),
    })
}
