//! Requests → services. Every request kind has a [`Handler`] next to the others of its
//! domain (`procedures`, `activities`, `daemon`, `cache`): what its announcement on the bus says,
//! which procedure it is about, and how it is served. Its topic, role and answer type are
//! declared once in `oet_protocol::requests`. Every request passes through [`serve`],
//! the one place where the caller's role is checked, and where it is announced, logged
//! and audited.

mod activities;
mod cache;
mod daemon;
mod handler;
mod procedures;

use oet_protocol::{ProtocolError, RequestBody, ResponseBody, Role, Value};
use tracing::{info, warn};

use crate::events::BusEvent;
use crate::server::access::Peer;
pub use handler::{Handler, Reload, Services, Session};

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

/// Checks the caller's role; announces the request, audits a state-changing one, and
/// serves it. A refused request is audited too, and changes nothing. The announcement
/// carries the request's ID as `request_id` (as upstream's did), so that a client
/// watching the events, such as the HTTP shim's stream, can tell its own requests.
async fn serve<R: Handler>(
    services: &Services,
    session: &mut Session,
    id: u64,
    request: R,
) -> Result<ResponseBody, ProtocolError> {
    let role = services.access.role_of(&session.peer);
    if role.is_none_or(|role| role < R::ROLE) {
        audit::<R>(&session.peer, request.procedure_id(), "denied");
        return Err(denied::<R>(&session.peer, role));
    }
    let peer = session.peer.clone();
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
    let procedure_id = request.procedure_id();
    let result = request.handle(services, session).await;
    if R::ROLE != Role::Read {
        // Recorded once served, so that a create's record names the procedure it made.
        let procedure_id = procedure_id.or_else(|| result.as_ref().ok().and_then(R::made));
        let decision = match &result {
            Ok(_) => "allowed".to_owned(),
            Err(err) => format!("allowed, and failed ({})", err.kind.as_str()),
        };
        audit::<R>(&peer, procedure_id, &decision);
    }
    result.map(R::into_response)
}

/// The permission-denied answer: which role the request needs, and which the caller has.
fn denied<R: Handler>(peer: &Peer, role: Option<Role>) -> ProtocolError {
    let has = match role {
        Some(role) => format!("only the {role} role"),
        None => "no role".to_owned(),
    };
    let who_may = match R::ROLE {
        Role::Read => "access.read_users / access.read_groups",
        Role::Operate => "access.operate_users / access.operate_groups",
        Role::Admin => "access.admin_users / access.admin_groups",
    };
    ProtocolError::permission_denied(format!(
        "{} needs the {} role; {} has {has} (see {who_may} in oetd's configuration)",
        R::TOPIC,
        R::ROLE,
        peer.describe(),
    ))
}

/// One audit record: who asked for what, about which procedure, and whether it was
/// allowed. `OET_AUDIT=1` in the journal finds them all.
fn audit<R: Handler>(peer: &Peer, procedure_id: Option<u64>, decision: &str) {
    macro_rules! record {
        ($level:ident) => {
            $level!(
                oet_audit = 1,
                audit_request = R::TOPIC,
                audit_decision = decision,
                procedure_id,
                peer_uid = peer.uid,
                peer_gid = peer.gid,
                peer_pid = peer.pid,
                "audit: {} by {} {decision}",
                R::TOPIC,
                peer.describe()
            )
        };
    }
    if decision.starts_with("allowed") {
        record!(info);
    } else {
        record!(warn);
    }
}
