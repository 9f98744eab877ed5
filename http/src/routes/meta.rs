//! `GET /health` and `GET /openapi.json`: answered without a token. Health says whether
//! oetd answers the shim, and nothing about procedures.

use axum::extract::State;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use oet_protocol::Role;
use serde_json::json;

use super::AppState;
use crate::error::{json_body, ApiError};

/// `GET /health`: 200 with oetd's name when oetd completes a handshake, else 503.
pub async fn health(State(app): State<AppState>) -> Result<Response, ApiError> {
    let _permit = app.oetd.permit(Role::Read).await?;
    let client = app.oetd.connect().await?;
    Ok(json_body(&json!({"status": "ok", "oetd": client.server()})))
}

/// `GET /openapi.json`: the OpenAPI document of everything served.
pub async fn openapi(State(app): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        app.openapi.clone(),
    )
        .into_response()
}
