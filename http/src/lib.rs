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
        allowed_hosts: allowed_hosts(config),
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

/// The Host names accepted besides addresses and `localhost`: the configured ones and the
/// host of `server.public_url`, which a proxy in front may pass on.
fn allowed_hosts(config: &Config) -> Vec<String> {
    let mut names = config.server.allowed_hosts.clone();
    let public = &config.server.public_url;
    if let Some(rest) = public.split_once("://").map(|(_, rest)| rest) {
        let authority = rest.split('/').next().unwrap_or("");
        let host = match authority.rsplit_once(':') {
            Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
            _ => authority,
        };
        if !host.is_empty() {
            names.push(host.to_owned());
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_public_urls_host_is_accepted() {
        let mut config = Config::default();
        config.server.allowed_hosts = vec!["oet.lan".into()];
        config.server.public_url = "https://oet.example.org:8443/".into();
        assert_eq!(allowed_hosts(&config), ["oet.lan", "oet.example.org"]);
        config.server.public_url = String::new();
        assert_eq!(allowed_hosts(&config), ["oet.lan"]);
    }
}
