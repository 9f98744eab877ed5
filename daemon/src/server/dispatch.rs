//! Request → service call. Every request passes through `dispatch`, which announces it
//! on the bus; authorization by peer credentials will be the one check placed here.

use std::time::SystemTime;

use oet_protocol::{
    DaemonStatus, ProtocolError, RequestBody, ResponseBody, Value, PROTOCOL_VERSION,
};
use tokio::net::UnixStream;
use tracing::info;

use crate::activity::{ActivityService, RunActivity};
use crate::events::DAEMON_SOURCE;
use crate::procedure::ProcedureService;

/// What requests are served by.
#[derive(Clone)]
pub struct Services {
    pub procedures: ProcedureService,
    pub activities: ActivityService,
    pub socket: String,
    pub started_at: SystemTime,
}

/// Who is on the other end of a connection, from SO_PEERCRED.
#[derive(Debug, Clone, Copy)]
pub struct Peer {
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub pid: Option<i32>,
}

impl Peer {
    pub fn of(stream: &UnixStream) -> Peer {
        match stream.peer_cred() {
            Ok(cred) => Peer {
                uid: Some(cred.uid()),
                gid: Some(cred.gid()),
                pid: cred.pid(),
            },
            Err(_) => Peer {
                uid: None,
                gid: None,
                pid: None,
            },
        }
    }
}

/// Serves one request.
pub async fn dispatch(
    services: &Services,
    peer: &Peer,
    body: RequestBody,
) -> Result<ResponseBody, ProtocolError> {
    announce(services, peer, &body);
    if !matches!(
        body,
        RequestBody::ListProcedures { .. }
            | RequestBody::ProcedureLogs { .. }
            | RequestBody::ListActivities { .. }
            | RequestBody::Status
    ) {
        let procedure_id = match &body {
            RequestBody::StartProcedure { id, .. } | RequestBody::StopProcedure { id, .. } => {
                Some(*id)
            }
            _ => None,
        };
        info!(
            procedure_id,
            peer_uid = peer.uid,
            peer_gid = peer.gid,
            peer_pid = peer.pid,
            "{} requested by uid {} (pid {})",
            body.topic(),
            peer.uid.map_or("?".into(), |u| u.to_string()),
            peer.pid.map_or("?".into(), |p| p.to_string()),
        );
    }
    let procedures = &services.procedures;
    match body {
        RequestBody::CreateProcedure { script, init_args } => procedures
            .create(script, init_args)
            .map(ResponseBody::Procedure),
        RequestBody::StartProcedure { id, function, args } => procedures
            .start(id, &function, args)
            .map(ResponseBody::Procedure),
        RequestBody::StopProcedure { id, run_abort } => procedures
            .stop(id, run_abort)
            .await
            .map(ResponseBody::Stopped),
        RequestBody::ListProcedures { ids } => procedures.list(&ids).map(ResponseBody::Procedures),
        RequestBody::ProcedureLogs { id } => procedures.logs(id).map(ResponseBody::Logs),
        RequestBody::Status => Ok(ResponseBody::Status(status(services))),
        RequestBody::RunActivity {
            activity_name,
            sbd_id,
            script_args,
            prepare_only,
            create_env,
        } => services
            .activities
            .run(RunActivity {
                activity_name,
                sbd_id,
                script_args,
                prepare_only,
                create_env,
            })
            .await
            .map(ResponseBody::Activity)
            .map_err(ProtocolError::from),
        RequestBody::ListActivities { ids } => services
            .activities
            .list(&ids)
            .map(ResponseBody::Activities)
            .map_err(ProtocolError::from),
        RequestBody::PutSbd { json } => services
            .activities
            .put_sbd(&json)
            .await
            .map(|sbd| ResponseBody::SbdStored {
                sbd_id: sbd.sbd_id,
                version: sbd.version,
            })
            .map_err(ProtocolError::from),
        RequestBody::Subscribe => Err(ProtocolError::internal(
            "subscriptions are served by the connection, not dispatched",
        )),
    }
}

fn status(services: &Services) -> DaemonStatus {
    let (live, running) = services.procedures.counts();
    DaemonStatus {
        server: format!("oetd {}", env!("CARGO_PKG_VERSION")),
        protocol_version: PROTOCOL_VERSION,
        pid: std::process::id(),
        socket: services.socket.clone(),
        started_at: services
            .started_at
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0),
        procedures_live: live,
        running,
    }
}

/// Publishes `request.*` for a request, with what it asked and who asked.
fn announce(services: &Services, peer: &Peer, body: &RequestBody) {
    let mut payload = std::collections::BTreeMap::new();
    if let Some(uid) = peer.uid {
        payload.insert("peer_uid".to_string(), Value::from(u64::from(uid)));
    }
    if let Some(pid) = peer.pid {
        payload.insert("peer_pid".to_string(), Value::from(i64::from(pid)));
    }
    match body {
        RequestBody::CreateProcedure { script, init_args } => {
            payload.insert("script_uri".into(), Value::from(script.uri()));
            payload.insert(
                "init_args".into(),
                Value::from(oet_protocol::view::function_args(init_args)),
            );
        }
        RequestBody::StartProcedure { id, function, args } => {
            payload.insert("procedure_id".into(), Value::from(*id));
            payload.insert("function".into(), Value::from(function.as_str()));
            payload.insert(
                "args".into(),
                Value::from(oet_protocol::view::function_args(args)),
            );
        }
        RequestBody::StopProcedure { id, run_abort } => {
            payload.insert("procedure_id".into(), Value::from(*id));
            payload.insert("run_abort".into(), Value::Bool(*run_abort));
        }
        RequestBody::ProcedureLogs { id } => {
            payload.insert("procedure_id".into(), Value::from(*id));
        }
        RequestBody::RunActivity {
            activity_name,
            sbd_id,
            script_args,
            prepare_only,
            create_env,
        } => {
            payload.insert("activity_name".into(), Value::from(activity_name.as_str()));
            payload.insert("sbd_id".into(), Value::from(sbd_id.as_str()));
            payload.insert(
                "script_args".into(),
                Value::Map(
                    script_args
                        .iter()
                        .map(|(name, args)| {
                            let args = oet_protocol::view::function_args(args);
                            (name.clone(), Value::from(args))
                        })
                        .collect(),
                ),
            );
            payload.insert("prepare_only".into(), Value::Bool(*prepare_only));
            payload.insert("create_env".into(), Value::Bool(*create_env));
        }
        RequestBody::PutSbd { json } => {
            payload.insert("bytes".into(), Value::from(json.len() as u64));
        }
        RequestBody::ListProcedures { .. }
        | RequestBody::ListActivities { .. }
        | RequestBody::Subscribe
        | RequestBody::Status => {}
    }
    services
        .procedures
        .bus()
        .publish(body.topic(), DAEMON_SOURCE, Value::Map(payload));
}
