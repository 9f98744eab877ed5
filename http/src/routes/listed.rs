//! What procedures and activities share: a list request, finding one by the ID in the
//! path (or upstream's 404), and their view with its `uri`. `GET /procedures`, `GET
//! /procedures/{id}` and their activity twins are the two handlers here.

use axum::extract::State;
use axum::http::Uri;
use axum::response::Response;
use oet_protocol::{
    view, ActivitySummary, Call, Client, ListActivities, ListProcedures, ProcedureSummary, Role,
};
use serde_json::{json, Value as Json};

use super::{id_segment, AppState, Base};
use crate::auth::Caller;
use crate::body;
use crate::error::{json_body, ApiError};

/// A summary oetd lists by ID.
pub trait Listed: Sized + Send + 'static {
    /// The list request; it answers with summaries of this kind.
    type List: Call<Response = Vec<Self>> + Send + 'static;
    /// The path parameter's name, e.g. `procedure_id`.
    const PARAM: &'static str;
    /// The request for the ones with `ids`, or all when empty.
    fn list(ids: Vec<u64>) -> Self::List;
    fn id(&self) -> u64;
    /// The view upstream's clients read, with the summary's `uri`.
    fn json(&self, base: &Base) -> Json;
    /// Upstream's 404 detail for an ID (shown as the client wrote it, normalised).
    fn missing(shown: &str) -> Json;
}

impl Listed for ProcedureSummary {
    type List = ListProcedures;
    const PARAM: &'static str = "procedure_id";

    fn list(ids: Vec<u64>) -> ListProcedures {
        ListProcedures { ids }
    }

    fn id(&self) -> u64 {
        self.id
    }

    fn json(&self, base: &Base) -> Json {
        with_uri(view::procedure(self), base.procedure(self.id))
    }

    fn missing(shown: &str) -> Json {
        Json::String(format!("No information available for PID={shown}"))
    }
}

impl Listed for ActivitySummary {
    type List = ListActivities;
    const PARAM: &'static str = "activity_id";

    fn list(ids: Vec<u64>) -> ListActivities {
        ListActivities { ids }
    }

    fn id(&self) -> u64 {
        self.id
    }

    fn json(&self, base: &Base) -> Json {
        with_uri(view::activity(self), base.activity(self.id))
    }

    /// An object, unlike a procedure's.
    fn missing(shown: &str) -> Json {
        json!({
            "type": "ResourceNotFound",
            "Message": format!("No information available for ID={shown}"),
        })
    }
}

/// A summary's view with its `uri`.
fn with_uri(view: oet_protocol::Value, uri: String) -> Json {
    let mut json = view.to_json_lossy();
    if let Json::Object(map) = &mut json {
        map.insert("uri".into(), Json::String(uri));
    }
    json
}

/// `GET /procedures`, `GET /activities`: every one oetd keeps in its list.
pub async fn list<T: Listed>(
    State(app): State<AppState>,
    Caller(caller): Caller,
    base: Base,
) -> Result<Response, ApiError> {
    let summaries = app.oetd.call(caller, T::list(Vec::new()), None).await?;
    let views = summaries.iter().map(|s| s.json(&base)).collect();
    Ok(json_body(&Json::Array(views)))
}

/// `GET /procedures/{id}`, `GET /activities/{id}`
pub async fn get<T: Listed>(
    State(app): State<AppState>,
    Caller(caller): Caller,
    base: Base,
    uri: Uri,
) -> Result<Response, ApiError> {
    let id = path_id::<T>(&uri)?;
    let summary: T = find(&app, caller, id, None).await?;
    Ok(json_body(&summary.json(&base)))
}

/// The ID in a request's path: an integer, or the text of one that cannot exist.
pub fn path_id<T: Listed>(uri: &Uri) -> Result<Result<u64, String>, ApiError> {
    body::path_id(id_segment(uri), T::PARAM)
}

/// One summary, or upstream's 404: asked on `client` when one is given (an operation's
/// own connection, so that reads queued by others cannot hold it up), otherwise on a
/// reading connection of its own.
pub async fn find<T: Listed>(
    app: &AppState,
    caller: Role,
    id: Result<u64, String>,
    client: Option<&mut Client>,
) -> Result<T, ApiError> {
    let id = id.map_err(|shown| ApiError::NotFound(T::missing(&shown)))?;
    let missing = T::missing(&id.to_string());
    let request = T::list(vec![id]);
    let found = match client {
        Some(client) => {
            app.oetd
                .call_on(client, caller, request, Some(missing.clone()))
                .await?
        }
        None => {
            app.oetd
                .call(caller, request, Some(missing.clone()))
                .await?
        }
    };
    found
        .into_iter()
        .find(|summary| summary.id() == id)
        .ok_or(ApiError::NotFound(missing))
}
