//! `/procedures`: create (answering once the procedure is READY), start and stop —
//! upstream's semantics over oetd's requests. (Listing and describing is `listed`'s.)

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use oet_protocol::{
    topics, CreateProcedure, ListProcedures, ProcedureState, ProcedureSummary, Role,
    StartProcedure, StopProcedure,
};
use serde_json::json;
use tracing::warn;

use super::listed::{find, path_id, Listed};
use super::{operating_body, AppState, Base};
use crate::auth::Caller;
use crate::body::{self, ProcedurePost};
use crate::error::{json_body, ApiError};

/// `POST /procedures`: loads the script, and answers 201 with its summary once it is READY
/// (or failed, or `oetd.ready_wait_secs` passed).
pub async fn create(
    State(app): State<AppState>,
    Caller(caller): Caller,
    base: Base,
    headers: HeaderMap,
    request: Body,
) -> Result<Response, ApiError> {
    let json = operating_body(&app, caller, "creating a procedure", &headers, request).await?;
    let post = body::procedure_post(&json)?;
    let summary = create_ready(&app, caller, post).await?;
    Ok((StatusCode::CREATED, json_body(&summary.json(&base))).into_response())
}

async fn create_ready(
    app: &AppState,
    caller: Role,
    post: ProcedurePost,
) -> Result<ProcedureSummary, ApiError> {
    let oetd = &app.oetd;
    let _permit = oetd.permit(Role::Operate).await?;
    // Subscribed before the procedure exists, so that no state change can slip by.
    let mut events = oetd.subscribe(vec![topics::STATECHANGE.into()]).await?;
    let mut client = oetd.connect().await?;
    let request = CreateProcedure {
        script: post.script,
        init_args: post.init,
    };
    let created = oetd.call_on(&mut client, caller, request, None).await?;
    let id = created.id;
    let waiting = events.wait_for(&mut client, id, |state| state == ProcedureState::Ready);
    match tokio::time::timeout(app.ready_wait, waiting).await {
        Ok(Ok(summary)) => Ok(summary),
        Ok(Err(err)) => {
            warn!("procedure {id} was created, but following it failed: {err}");
            Ok(created)
        }
        Err(_) => {
            let now = ListProcedures { ids: vec![id] };
            let found = oetd.call_on(&mut client, caller, now, None).await?;
            Ok(found.into_iter().next().unwrap_or(created))
        }
    }
}

/// `PUT /procedures/{id}`: `RUNNING` starts `main`, `STOPPED` stops (and with `abort`, runs
/// the abort script), no state changes nothing.
pub async fn update(
    State(app): State<AppState>,
    Caller(caller): Caller,
    base: Base,
    uri: Uri,
    headers: HeaderMap,
    request: Body,
) -> Result<Response, ApiError> {
    let json = operating_body(&app, caller, "changing a procedure", &headers, request).await?;
    let id = path_id::<ProcedureSummary>(&uri)?;
    let put = body::procedure_put(&json)?;
    let oetd = &app.oetd;
    let _permit = oetd.permit(Role::Operate).await?;
    let mut client = oetd.connect().await?;
    let summary: ProcedureSummary = find(&app, caller, id, Some(&mut client)).await?;
    let id = summary.id;
    let shown = id.to_string();
    match put.state {
        None => Ok(json_body(&summary.json(&base))),
        Some(ProcedureState::Running) => {
            let start = StartProcedure {
                id,
                function: "main".into(),
                args: put.main,
            };
            let started = oetd
                .call_on(
                    &mut client,
                    caller,
                    start,
                    Some(ProcedureSummary::missing(&shown)),
                )
                .await?;
            Ok(json_body(&started.json(&base)))
        }
        Some(ProcedureState::Stopped) => {
            let not_running = || format!("Cannot stop script with ID {id}: Script is not running");
            let message = if summary.state != ProcedureState::Running {
                not_running()
            } else {
                let stop = StopProcedure {
                    id,
                    run_abort: put.abort,
                };
                match oetd
                    .call_on(
                        &mut client,
                        caller,
                        stop,
                        Some(ProcedureSummary::missing(&shown)),
                    )
                    .await
                {
                    Ok(stopped) if stopped.len() > 1 => format!(
                        "Successfully stopped script with ID {id} and aborted subarray activity"
                    ),
                    Ok(_) => format!("Successfully stopped script with ID {id}"),
                    // It ended on its own between the look and the stop.
                    Err(ApiError::Conflict(_)) => not_running(),
                    Err(err) => return Err(err),
                }
            };
            Ok(json_body(&json!({"abort_message": message})))
        }
        Some(other) => Err(ApiError::BadRequest(format!(
            "a procedure cannot be put into {other}: ask for RUNNING to start it or STOPPED to \
             stop it"
        ))),
    }
}
