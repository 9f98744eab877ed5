//! What a request can fail with, and the HTTP answer for each: a status and a JSON body
//! `{"detail": ...}`, as upstream's FastAPI answered. Invalid input is 422 with one entry
//! per field at fault, in FastAPI's shape, so that each names its field.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value as Json};

/// One place in a request: `["body", "script", "script_uri"]`, `["path", "procedure_id"]`.
pub type Loc = Vec<Json>;

/// One field at fault, as FastAPI's validation errors name it.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldError {
    pub loc: Loc,
    pub msg: String,
    /// A pydantic error type, e.g. `missing`, `string_type`, `int_parsing`.
    pub kind: &'static str,
}

impl FieldError {
    pub fn new(loc: Loc, kind: &'static str, msg: impl Into<String>) -> FieldError {
        FieldError {
            loc,
            msg: msg.into(),
            kind,
        }
    }

    fn to_json(&self) -> Json {
        json!({"type": self.kind, "loc": self.loc, "msg": self.msg})
    }
}

/// Why a request was not served.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("invalid request: {}", describe(.0))]
    Invalid(Vec<FieldError>),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthenticated(&'static str),
    #[error("{0}")]
    Forbidden(String),
    /// Not found; the detail is upstream's, which is a string for procedures and an
    /// object for activities.
    #[error("not found: {0}")]
    NotFound(Json),
    #[error("{0}")]
    Conflict(String),
    #[error("request body larger than {0} bytes")]
    TooLarge(usize),
    #[error("request body must be JSON, sent with Content-Type: application/json")]
    UnsupportedMediaType,
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Timeout(String),
    #[error("{0}")]
    Internal(String),
}

fn describe(errors: &[FieldError]) -> String {
    errors
        .iter()
        .map(|e| {
            let place: Vec<String> = e
                .loc
                .iter()
                .map(|part| match part {
                    Json::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect();
            format!("{}: {}", place.join("."), e.msg)
        })
        .collect::<Vec<_>>()
        .join("; ")
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// One field at fault.
    pub fn field(loc: Loc, kind: &'static str, msg: impl Into<String>) -> ApiError {
        ApiError::Invalid(vec![FieldError::new(loc, kind, msg)])
    }

    fn detail(&self) -> Json {
        match self {
            ApiError::Invalid(errors) => {
                Json::Array(errors.iter().map(FieldError::to_json).collect())
            }
            ApiError::NotFound(detail) => detail.clone(),
            other => Json::String(other.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::warn!("answered {}: {self}", status.as_u16());
        }
        let mut response = (status, json_body(&json!({"detail": self.detail()}))).into_response();
        if matches!(self, ApiError::Unauthenticated(_)) {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// A JSON body with its content type. FastAPI wrote JSON compactly, as serde_json does.
pub fn json_body(value: &Json) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        value.to_string(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_validation_error_names_its_field_in_fastapis_shape() {
        let err = ApiError::field(
            vec![json!("body"), json!("script"), json!("script_uri")],
            "missing",
            "Field required",
        );
        assert_eq!(err.status(), StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(
            err.detail(),
            json!([{"type": "missing", "loc": ["body", "script", "script_uri"], "msg": "Field required"}])
        );
        assert_eq!(
            err.to_string(),
            "invalid request: body.script.script_uri: Field required"
        );
    }

    #[test]
    fn unauthenticated_says_how_to_authenticate() {
        let response = ApiError::Unauthenticated("Not authenticated").into_response();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(response.headers()[header::WWW_AUTHENTICATE], "Bearer");
    }
}
