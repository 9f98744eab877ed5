//! `/activities`: list, describe, and run an activity of a Scheduling Block Definition.

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use oet_protocol::{view, ActivitySummary, ListActivities, Role};
use serde_json::{json, Value as Json};

use super::{id_segment, with_uri, AppState, Base};
use crate::auth::Caller;
use crate::body;
use crate::error::{json_body, ApiError};
use crate::oetd::Oetd;

/// Upstream's 404 detail for an activity ID (an object, unlike a procedure's).
fn missing(shown: &str) -> Json {
    json!({
        "type": "ResourceNotFound",
        "Message": format!("No information available for ID={shown}"),
    })
}

fn summary_json(base: &Base, summary: &ActivitySummary) -> Json {
    with_uri(view::activity(summary), base.activity(summary.id))
}

/// `GET /activities`
pub async fn list(
    State(app): State<AppState>,
    Caller(caller): Caller,
    base: Base,
) -> Result<Response, ApiError> {
    let summaries = app
        .oetd
        .call(caller, ListActivities::default(), None)
        .await?;
    let views = summaries.iter().map(|s| summary_json(&base, s)).collect();
    Ok(json_body(&Json::Array(views)))
}

/// `GET /activities/{id}`
pub async fn get(
    State(app): State<AppState>,
    Caller(caller): Caller,
    base: Base,
    uri: Uri,
) -> Result<Response, ApiError> {
    let id = body::path_id(id_segment(&uri), "activity_id")?
        .map_err(|shown| ApiError::NotFound(missing(&shown)))?;
    let shown = id.to_string();
    let request = ListActivities { ids: vec![id] };
    let found = app
        .oetd
        .call(caller, request, Some(missing(&shown)))
        .await?;
    let summary = found
        .into_iter()
        .find(|summary| summary.id == id)
        .ok_or_else(|| ApiError::NotFound(missing(&shown)))?;
    Ok(json_body(&summary_json(&base, &summary)))
}

/// `POST /activities`: answers 201 once the activity is REQUESTED and its procedure
/// created; the activity then follows its procedure (watch `/stream` or GET it).
pub async fn run(
    State(app): State<AppState>,
    Caller(caller): Caller,
    base: Base,
    headers: HeaderMap,
    request: Body,
) -> Result<Response, ApiError> {
    Oetd::allow(caller, Role::Operate, "running an activity")?;
    let json = body::read_json(&headers, request, app.max_body, app.oetd.timeout()).await?;
    let run = body::activity_post(&json)?;
    let summary = app.oetd.call(caller, run, None).await?;
    Ok((
        StatusCode::CREATED,
        json_body(&summary_json(&base, &summary)),
    )
        .into_response())
}
