//! Requests → services. Every request kind has a [`Handler`] next to the others of its
//! domain (`procedures`, `activities`, `daemon`): what its announcement on the bus says,
//! which procedure it is about, and how it is served. Its topic, role and answer type are
//! declared once in `oet_protocol::requests`. Every request passes through [`serve`],
//! the one place where it is announced, logged and (later) authorized.

mod activities;
mod daemon;
mod procedures;

use std::future::Future;
use std::time::SystemTime;

use oet_protocol::{Call, ProtocolError, RequestBody, ResponseBody, Role, Value};
use tokio::net::UnixStream;
use tracing::info;

use crate::activity::ActivityService;
use crate::events::{BusEvent, Subscription};
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

/// One connection's state, as requests may change it.
pub struct Session {
    pub peer: Peer,
    /// Set by a subscribe request: after its answer, the connection streams these events.
    pub subscription: Option<Subscription>,
}

/// How one kind of request is served.
pub trait Handler: Call + Send + 'static {
    /// The procedure the request is about, for its log record.
    fn procedure_id(&self) -> Option<u64> {
        None
    }

    /// What the request's announcement on the bus tells, besides who asked.
    fn announce(&self) -> Vec<(&'static str, Value)> {
        Vec::new()
    }

    /// Serves the request.
    fn handle(
        self,
        services: &Services,
        session: &mut Session,
    ) -> impl Future<Output = Result<Self::Response, ProtocolError>> + Send;
}

/// Serves one request of any kind.
pub async fn dispatch(
    services: &Services,
    session: &mut Session,
    body: RequestBody,
) -> Result<ResponseBody, ProtocolError> {
    macro_rules! route {
        ($($name:ident),*) => {
            match body {
                $( RequestBody::$name(request) => serve(services, session, request).await, )*
            }
        };
    }
    oet_protocol::for_each_request!(route)
}

/// Announces a request, logs who asked for a state-changing one, and serves it.
async fn serve<R: Handler>(
    services: &Services,
    session: &mut Session,
    request: R,
) -> Result<ResponseBody, ProtocolError> {
    let peer = session.peer;
    let mut payload: std::collections::BTreeMap<String, Value> = request
        .announce()
        .into_iter()
        .map(|(key, value)| (key.to_owned(), value))
        .collect();
    if let Some(uid) = peer.uid {
        payload.insert("peer_uid".into(), Value::from(u64::from(uid)));
    }
    if let Some(pid) = peer.pid {
        payload.insert("peer_pid".into(), Value::from(i64::from(pid)));
    }
    services.procedures.bus().publish(BusEvent::Request {
        topic: R::TOPIC,
        payload: Value::Map(payload),
    });
    if R::ROLE != Role::Read {
        info!(
            procedure_id = request.procedure_id(),
            peer_uid = peer.uid,
            peer_gid = peer.gid,
            peer_pid = peer.pid,
            "{} requested by uid {} (pid {})",
            R::TOPIC,
            peer.uid.map_or("?".into(), |u| u.to_string()),
            peer.pid.map_or("?".into(), |p| p.to_string()),
        );
    }
    request
        .handle(services, session)
        .await
        .map(R::into_response)
}
