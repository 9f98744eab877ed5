//! Requests → services. Every request kind has a [`Handler`] next to the others of its
//! domain (`procedures`, `activities`, `daemon`): what its announcement on the bus says,
//! which procedure it is about, and how it is served. Its topic, role and answer type are
//! declared once in `oet_protocol::requests`. Every request passes through [`serve`],
//! the one place where it is announced, logged and (later) authorized.

mod activities;
mod daemon;
mod handler;
mod procedures;

use oet_protocol::{ProtocolError, RequestBody, ResponseBody, Role, Value};
use tracing::info;

use crate::events::BusEvent;
pub use handler::{Handler, Peer, Services, Session};

/// Serves one request of any kind; `id` is the ID its client gave it.
pub async fn dispatch(
    services: &Services,
    session: &mut Session,
    id: u64,
    body: RequestBody,
) -> Result<ResponseBody, ProtocolError> {
    macro_rules! route {
        ($($name:ident),*) => {
            match body {
                $( RequestBody::$name(request) => serve(services, session, id, request).await, )*
            }
        };
    }
    oet_protocol::for_each_request!(route)
}

/// Announces a request, logs who asked for a state-changing one, and serves it. The
/// announcement carries the request's ID as `request_id` (as upstream's did), so that a
/// client watching the events, such as the HTTP shim's stream, can tell its own requests.
async fn serve<R: Handler>(
    services: &Services,
    session: &mut Session,
    id: u64,
    request: R,
) -> Result<ResponseBody, ProtocolError> {
    let peer = session.peer;
    let mut payload: std::collections::BTreeMap<String, Value> = request
        .announce()
        .into_iter()
        .map(|(key, value)| (key.to_owned(), value))
        .collect();
    payload.insert("request_id".into(), Value::from(id));
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
