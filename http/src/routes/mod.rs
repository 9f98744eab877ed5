//! The endpoints: one table of every route (path, method, operation, handler), from which
//! both the router and the OpenAPI document are made, so the two cannot differ. Every path
//! answers with and without the trailing slash upstream used. The handlers of each
//! resource live in their own module; this one holds what they share: the application
//! state, the `Host` check, and where a summary's `uri` points.

mod activities;
mod listed;
mod meta;
mod procedures;
mod stream;

use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{FromRequestParts, Request, State};
use axum::handler::Handler;
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{on, MethodFilter, MethodRouter};
use axum::Router;
use bytes::Bytes;
use oet_protocol::{ActivitySummary, ProcedureSummary, Role};
use serde_json::{json, Value as Json};
use tokio_util::sync::CancellationToken;

use self::listed::{get, list};
use crate::auth::{host_allowed, Auth};
use crate::body;
use crate::error::{json_body, ApiError};
use crate::hub::Hub;
use crate::oetd::Oetd;

/// Everything the handlers share.
pub struct App {
    pub prefix: String,
    pub public_url: String,
    pub allowed_hosts: Vec<String>,
    /// Where the shim listens, for a `uri` when a request names no host.
    pub listen: SocketAddr,
    pub max_body: usize,
    pub ready_wait: Duration,
    pub heartbeat: Duration,
    pub max_stream_clients: usize,
    pub stream_clients: AtomicUsize,
    pub oetd: Oetd,
    pub hub: Arc<Hub>,
    pub auth: Auth,
    /// Cancelled when the shim stops: streams end, so connections can close.
    pub shutdown: CancellationToken,
    /// The OpenAPI document, rendered once.
    pub openapi: Bytes,
}

pub type AppState = Arc<App>;

/// The HTTP methods the API uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    Get,
    Post,
    Put,
}

impl Verb {
    /// The lower-case name OpenAPI uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Get => "get",
            Verb::Post => "post",
            Verb::Put => "put",
        }
    }

    fn filter(self) -> MethodFilter {
        match self {
            Verb::Get => MethodFilter::GET,
            Verb::Post => MethodFilter::POST,
            Verb::Put => MethodFilter::PUT,
        }
    }
}

/// One endpoint.
pub struct Route {
    /// Below the prefix, as upstream's OpenAPI document wrote it (e.g. `/procedures/`).
    pub path: &'static str,
    pub verb: Verb,
    /// The OpenAPI operation ID; its documentation is keyed by it.
    pub operation: &'static str,
    handler: MethodRouter<AppState>,
}

fn route<H, T>(path: &'static str, verb: Verb, operation: &'static str, handler: H) -> Route
where
    H: Handler<T, AppState>,
    T: 'static,
{
    Route {
        path,
        verb,
        operation,
        handler: on(verb.filter(), handler),
    }
}

/// Every endpoint of the API.
pub fn table() -> Vec<Route> {
    use Verb::{Get, Post, Put};
    vec![
        route(
            "/procedures/",
            Get,
            "get_procedures",
            list::<ProcedureSummary>,
        ),
        route("/procedures/", Post, "create_procedure", procedures::create),
        route(
            "/procedures/{procedure_id}",
            Get,
            "get_procedure",
            get::<ProcedureSummary>,
        ),
        route(
            "/procedures/{procedure_id}",
            Put,
            "update_procedure",
            procedures::update,
        ),
        route(
            "/activities/",
            Get,
            "get_activities",
            list::<ActivitySummary>,
        ),
        route("/activities/", Post, "run_activity", activities::run),
        route(
            "/activities/{activity_id}",
            Get,
            "get_activity",
            get::<ActivitySummary>,
        ),
        route("/stream", Get, "stream", stream::stream),
        route("/openapi.json", Get, "openapi", meta::openapi),
        route("/health", Get, "health", meta::health),
    ]
}

/// The router of every endpoint, under `app.prefix`.
pub fn router(app: AppState) -> Router {
    let mut router = Router::new();
    for route in table() {
        let path = format!("{}{}", app.prefix, route.path);
        let twin = match path.strip_suffix('/') {
            Some(bare) => bare.to_owned(),
            None => format!("{path}/"),
        };
        router = router.route(&path, route.handler.clone());
        if !twin.is_empty() {
            router = router.route(&twin, route.handler);
        }
    }
    router
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(app.clone(), check_host))
        .with_state(app)
}

async fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        json_body(&json!({"detail": "Not Found"})),
    )
        .into_response()
}

async fn method_not_allowed() -> Response {
    (
        StatusCode::METHOD_NOT_ALLOWED,
        json_body(&json!({"detail": "Method Not Allowed"})),
    )
        .into_response()
}

/// Refuses a request whose `Host` names the shim by a name it was not given.
async fn check_host(State(app): State<AppState>, request: Request, next: Next) -> Response {
    if let Some(host) = request.headers().get(header::HOST) {
        if !host_allowed(host, &app.allowed_hosts) {
            return ApiError::BadRequest(format!(
                "Host {:?} is not one of this server's names: use its IP address or \
                 localhost, or add the name to server.allowed_hosts",
                String::from_utf8_lossy(host.as_bytes())
            ))
            .into_response();
        }
    }
    next.run(request).await
}

/// The JSON body of an operating request (create, start, stop, run an activity), read
/// only once the caller is known to be allowed to operate.
async fn operating_body(
    app: &App,
    caller: Role,
    what: &str,
    headers: &HeaderMap,
    request: Body,
) -> Result<Json, ApiError> {
    Oetd::allow(caller, Role::Operate, what)?;
    body::read_json(headers, request, app.max_body, app.oetd.timeout()).await
}

/// Where the API is, as a client reached it: the base of each summary's `uri`.
pub struct Base(String);

impl Base {
    pub fn procedure(&self, id: u64) -> String {
        format!("{}/procedures/{id}", self.0)
    }

    pub fn activity(&self, id: u64) -> String {
        format!("{}/activities/{id}", self.0)
    }
}

impl FromRequestParts<AppState> for Base {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &AppState) -> Result<Base, ApiError> {
        let origin = if app.public_url.is_empty() {
            let host = parts
                .headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map_or_else(|| app.listen.to_string(), str::to_owned);
            format!("http://{host}")
        } else {
            app.public_url.trim_end_matches('/').to_owned()
        };
        Ok(Base(format!("{origin}{}", app.prefix)))
    }
}

/// The last non-empty segment of a request's path: the ID of `/procedures/{id}/`.
fn id_segment(uri: &Uri) -> &str {
    uri.path()
        .trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use axum::http::{Method, Request};
    use tower::ServiceExt;

    /// A router whose oetd is not there.
    fn router_without_oetd(prefix: &str) -> Router {
        let mut config = Config::default();
        config.server.prefix = prefix.into();
        config.oetd.socket = "/nonexistent/oetd.sock".into();
        let listen = "127.0.0.1:5000".parse().expect("address");
        router(crate::app(
            &config,
            listen,
            Auth::open(),
            CancellationToken::new(),
        ))
    }

    async fn status(router: &Router, method: Method, path: &str) -> (StatusCode, Json) {
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, "127.0.0.1:5000")
            .body(axum::body::Body::empty())
            .expect("request");
        let response = router.clone().oneshot(request).await.expect("infallible");
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .expect("body");
        (status, serde_json::from_slice(&bytes).unwrap_or(Json::Null))
    }

    /// Every documented operation is routed, with and without the trailing slash, and
    /// no other method is.
    #[tokio::test]
    async fn the_router_serves_exactly_what_the_document_describes() {
        let prefix = "/ska-oso-oet/oet/api/v7";
        let router = router_without_oetd(prefix);
        let document = crate::openapi::document(prefix, false);
        let paths = document["paths"].as_object().expect("paths");
        assert_eq!(paths.len(), 7, "{:?}", paths.keys().collect::<Vec<_>>());
        for (path, item) in paths {
            let concrete = path
                .replace("{procedure_id}", "1")
                .replace("{activity_id}", "1");
            let twin = match concrete.strip_suffix('/') {
                Some(bare) => bare.to_owned(),
                None => format!("{concrete}/"),
            };
            let documented: Vec<&str> = item
                .as_object()
                .expect("item")
                .keys()
                .map(String::as_str)
                .collect();
            for method in [
                Method::GET,
                Method::POST,
                Method::PUT,
                Method::DELETE,
                Method::PATCH,
            ] {
                let name = method.as_str().to_ascii_lowercase();
                for url in [&concrete, &twin] {
                    let (status, body) = status(&router, method.clone(), url).await;
                    if documented.contains(&name.as_str()) {
                        assert!(
                            status != StatusCode::METHOD_NOT_ALLOWED
                                && body != json!({"detail": "Not Found"}),
                            "{method} {url} is documented but not routed ({status})"
                        );
                    } else {
                        assert_eq!(
                            (status, body),
                            (
                                StatusCode::METHOD_NOT_ALLOWED,
                                json!({"detail": "Method Not Allowed"})
                            ),
                            "{method} {url} is routed but not documented"
                        );
                    }
                }
            }
        }
        let (status, body) = status(&router, Method::GET, &format!("{prefix}/elsewhere")).await;
        assert_eq!(
            (status, body),
            (StatusCode::NOT_FOUND, json!({"detail": "Not Found"}))
        );
    }

    #[tokio::test]
    async fn without_oetd_the_api_answers_503_and_the_document_still_comes() {
        let router = router_without_oetd("");
        let (code, body) = status(&router, Method::GET, "/procedures").await;
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
        let detail = body["detail"].as_str().expect("a sentence");
        assert!(
            detail.contains("cannot connect to oetd at /nonexistent/oetd.sock"),
            "{detail}"
        );
        assert_eq!(
            status(&router, Method::GET, "/health").await.0,
            StatusCode::SERVICE_UNAVAILABLE
        );
        let (code, document) = status(&router, Method::GET, "/openapi.json").await;
        assert_eq!(code, StatusCode::OK);
        assert_eq!(document["openapi"], "3.1.0");
    }

    #[tokio::test]
    async fn a_host_the_server_was_not_given_is_refused() {
        let router = router_without_oetd("");
        let request = Request::builder()
            .uri("/openapi.json")
            .header(header::HOST, "attacker.example.com")
            .body(axum::body::Body::empty())
            .expect("request");
        let response = router.oneshot(request).await.expect("infallible");
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    }
}
