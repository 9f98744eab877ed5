//! The HTTP listener: the accept loop, a bound on connections served at once, a deadline
//! for each request's headers (which also closes idle connections), and a graceful stop.
//! A handler that panics answers 500; the shim goes on.

use std::convert::Infallible;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use futures::FutureExt;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;
use tracing::{debug, warn};

use crate::error::json_body;

/// How the listener treats connections.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_connections: usize,
    pub header_timeout: Duration,
    /// How long open connections get to finish once the shim stops.
    pub grace: Duration,
}

/// Serves `router` on `listener` until `shutdown` is cancelled, then lets open
/// connections finish their requests (within `limits.grace`).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    shutdown: CancellationToken,
) {
    let connections = Arc::new(Semaphore::new(limits.max_connections));
    let tasks = TaskTracker::new();
    loop {
        let permit = tokio::select! {
            () = shutdown.cancelled() => break,
            permit = connections.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        let (stream, peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of descriptors, typically: give connections time to close
                    // rather than spin.
                    warn!("cannot accept a connection: {err}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let shutdown = shutdown.clone();
        tasks.spawn(async move {
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                answer(router.clone(), request.map(Body::new))
            });
            let mut builder = http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout);
            let connection = builder.serve_connection(TokioIo::new(stream), service);
            let mut connection = std::pin::pin!(connection);
            let finished = tokio::select! {
                result = connection.as_mut() => Some(result),
                () = shutdown.cancelled() => None,
            };
            let result = match finished {
                Some(result) => result,
                None => {
                    connection.as_mut().graceful_shutdown();
                    match tokio::time::timeout(limits.grace, connection).await {
                        Ok(result) => result,
                        Err(_) => Ok(()),
                    }
                }
            };
            if let Err(err) = result {
                debug!("connection from {peer} ended: {err}");
            }
            drop(permit);
        });
    }
    tasks.close();
    if tokio::time::timeout(limits.grace, tasks.wait())
        .await
        .is_err()
    {
        warn!(
            "{} connections were still open {} s after the stop; closing them",
            tasks.len(),
            limits.grace.as_secs_f64()
        );
    }
}

/// Routes one request; a panic in its handler becomes a 500.
fn answer(
    router: Router,
    request: Request<Body>,
) -> impl Future<Output = Result<Response, Infallible>> {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    async move {
        match AssertUnwindSafe(router.oneshot(request))
            .catch_unwind()
            .await
        {
            Ok(Ok(response)) => {
                if method != axum::http::Method::GET || response.status().is_server_error() {
                    tracing::info!("{method} {path}: {}", response.status().as_u16());
                }
                Ok(response)
            }
            Ok(Err(never)) => match never {},
            Err(_) => {
                warn!("the handler of {method} {path} panicked");
                Ok((
                    StatusCode::INTERNAL_SERVER_ERROR,
                    json_body(&json!({"detail": "internal error in oet-http; see its log"})),
                )
                    .into_response())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;

    #[tokio::test]
    async fn a_handler_that_panics_answers_500_and_the_next_request_is_served() {
        async fn broken() -> &'static str {
            panic!("a handler bug")
        }
        let router = Router::new()
            .route("/broken", get(broken))
            .route("/fine", get(|| async { "fine" }));
        let request = |path: &str| Request::get(path).body(Body::empty()).expect("request");
        let response = answer(router.clone(), request("/broken"))
            .await
            .expect("infallible");
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let body = axum::body::to_bytes(response.into_body(), 1024)
            .await
            .expect("body");
        let json: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
        assert!(json["detail"]
            .as_str()
            .is_some_and(|d| d.contains("internal error")));
        let response = answer(router, request("/fine")).await.expect("infallible");
        assert_eq!(response.status(), StatusCode::OK);
    }
}
