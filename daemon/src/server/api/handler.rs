//! What a request handler is and works with: the services, and the session of the
//! connection the request came on.

use std::future::Future;
use std::time::SystemTime;

use oet_protocol::{Call, ProtocolError, Value};
use tokio::net::UnixStream;

use crate::activity::ActivityService;
use crate::events::Subscription;
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
