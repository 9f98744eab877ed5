//! What a request handler is and works with: the services, and the session of the
//! connection the request came on.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::SystemTime;

use oet_protocol::{Call, ProtocolError, Reloaded, Value};

use crate::activity::ActivityService;
use crate::events::Subscription;
use crate::procedure::ProcedureService;
use crate::server::access::{Access, Peer};

/// What requests are served by.
#[derive(Clone)]
pub struct Services {
    pub procedures: ProcedureService,
    pub activities: ActivityService,
    /// Who may do what; a reload replaces the roles.
    pub access: Access,
    /// Re-reads the configuration, as SIGHUP does.
    pub reload: Arc<dyn Reload>,
    pub socket: String,
    pub started_at: SystemTime,
}

/// Re-reading the configuration, which the daemon's start-up code owns.
pub trait Reload: Send + Sync {
    fn reload(&self) -> Pin<Box<dyn Future<Output = Result<Reloaded, ProtocolError>> + Send + '_>>;
}

/// One connection's state, as requests may change it.
pub struct Session {
    pub peer: Peer,
    /// Set by a subscribe request: after its answer, the connection streams these events.
    pub subscription: Option<Subscription>,
}

/// How one kind of request is served.
pub trait Handler: Call + Send + 'static {
    /// The procedure the request is about, for its log and audit records.
    fn procedure_id(&self) -> Option<u64> {
        None
    }

    /// The procedure a successful answer tells was made (a create's), for the audit.
    fn made(_answer: &Self::Response) -> Option<u64> {
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

/// A list request's announcement: the IDs it asked for (`ids`), none for the default list.
pub(super) fn announce_ids(ids: &[u64]) -> Vec<(&'static str, Value)> {
    if ids.is_empty() {
        return Vec::new();
    }
    vec![(
        "ids",
        Value::List(ids.iter().map(|&id| Value::from(id)).collect()),
    )]
}
