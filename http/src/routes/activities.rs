//! `POST /activities`: run an activity of a Scheduling Block Definition. (Listing and
//! describing activities is `listed`'s.)

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

use super::listed::Listed;
use super::{operating_body, AppState, Base};
use crate::auth::Caller;
use crate::body;
use crate::error::{json_body, ApiError};

/// `POST /activities`: answers 201 once the activity is REQUESTED and its procedure
/// created; the activity then follows its procedure (watch `/stream` or GET it).
pub async fn run(
    State(app): State<AppState>,
    Caller(caller): Caller,
    base: Base,
    headers: HeaderMap,
    request: Body,
) -> Result<Response, ApiError> {
    let json = operating_body(&app, caller, "running an activity", &headers, request).await?;
    let run = body::activity_post(&json)?;
    let summary = app.oetd.call(caller, run, None).await?;
    Ok((StatusCode::CREATED, json_body(&summary.json(&base))).into_response())
}
