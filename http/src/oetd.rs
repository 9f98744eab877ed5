//! The shim's side of oetd's control socket: one connection per call, bounded in number
//! and in time, with the caller's role checked before anything is sent. oetd's answers
//! and failures become HTTP errors here, and only here.
//!
//! oetd sees every call as one of the shim's own user: what the shim may do at all is
//! decided by oetd, and a token's role can only narrow it down.

use std::path::PathBuf;
use std::time::Duration;

use oet_protocol::{Call, Client, ClientError, ErrorKind, EventStream, Role};
use tokio::sync::{Semaphore, SemaphorePermit};

use crate::error::ApiError;

/// Connects and calls oetd on behalf of HTTP requests.
pub struct Oetd {
    socket: PathBuf,
    timeout: Duration,
    /// Permits for reading calls and for operating ones, kept apart so that a flood of
    /// reads cannot hold up a stop.
    reads: Semaphore,
    operations: Semaphore,
}

impl Oetd {
    pub fn new(socket: PathBuf, timeout: Duration, max_calls: usize) -> Oetd {
        Oetd {
            socket,
            timeout,
            reads: Semaphore::new(max_calls),
            operations: Semaphore::new(max_calls),
        }
    }

    pub fn socket(&self) -> &std::path::Path {
        &self.socket
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Refuses a caller whose role is below `needed`.
    pub fn allow(caller: Role, needed: Role, what: &str) -> Result<(), ApiError> {
        if caller >= needed {
            return Ok(());
        }
        Err(ApiError::Forbidden(format!(
            "{what} needs the {needed} role; this token has the {caller} role"
        )))
    }

    /// A connection that has passed the handshake, within the call timeout.
    pub async fn connect(&self) -> Result<Client, ApiError> {
        let connecting = Client::connect(
            &self.socket,
            concat!("oet-http ", env!("CARGO_PKG_VERSION")),
        );
        match tokio::time::timeout(self.timeout, connecting).await {
            Ok(result) => result.map_err(|err| failure(err, None)),
            Err(_) => Err(self.timed_out("connecting to oetd")),
        }
    }

    /// A connection subscribed to the events whose topics start with one of `topics`.
    pub async fn subscribe(&self, topics: Vec<String>) -> Result<EventStream, ApiError> {
        let client = self.connect().await?;
        match tokio::time::timeout(self.timeout, client.subscribe_to(topics)).await {
            Ok(result) => result.map_err(|err| failure(err, None)),
            Err(_) => Err(self.timed_out("subscribing to oetd's events")),
        }
    }

    /// Makes one request on a new connection, for a caller of `caller`'s role. `missing`
    /// is the 404 detail for a request about something oetd does not know.
    pub async fn call<R: Call>(
        &self,
        caller: Role,
        request: R,
        missing: Option<serde_json::Value>,
    ) -> Result<R::Response, ApiError> {
        Oetd::allow(caller, R::ROLE, R::TOPIC)?;
        let _permit = self.permit(R::ROLE).await?;
        let call = async {
            let mut client = self.connect().await?;
            client
                .call(request)
                .await
                .map_err(|err| failure(err, missing))
        };
        match tokio::time::timeout(self.timeout, call).await {
            Ok(result) => result,
            Err(_) => Err(self.timed_out(R::TOPIC)),
        }
    }

    /// Makes one request on an open connection, for a caller of `caller`'s role.
    pub async fn call_on<R: Call>(
        &self,
        client: &mut Client,
        caller: Role,
        request: R,
        missing: Option<serde_json::Value>,
    ) -> Result<R::Response, ApiError> {
        Oetd::allow(caller, R::ROLE, R::TOPIC)?;
        match tokio::time::timeout(self.timeout, client.call(request)).await {
            Ok(result) => result.map_err(|err| failure(err, missing)),
            Err(_) => Err(self.timed_out(R::TOPIC)),
        }
    }

    /// A permit for a call of `role`, waiting at most the call timeout for one.
    pub async fn permit(&self, role: Role) -> Result<SemaphorePermit<'_>, ApiError> {
        let pool = if role == Role::Read {
            &self.reads
        } else {
            &self.operations
        };
        match tokio::time::timeout(self.timeout, pool.acquire()).await {
            Ok(Ok(permit)) => Ok(permit),
            Ok(Err(_)) => Err(ApiError::Internal("the shim is shutting down".into())),
            Err(_) => Err(ApiError::Unavailable(format!(
                "oetd is busy: every connection the shim may open for {role} calls is in use"
            ))),
        }
    }

    fn timed_out(&self, what: &str) -> ApiError {
        ApiError::Timeout(format!(
            "no answer from oetd at {} within {} s ({what}); raise oetd.timeout_secs if oetd \
             is only slow",
            self.socket.display(),
            self.timeout.as_secs_f64()
        ))
    }
}

/// The HTTP error for a failed call. `missing` replaces oetd's sentence for a not-found
/// answer, so that clients see upstream's exact detail.
pub fn failure(err: ClientError, missing: Option<serde_json::Value>) -> ApiError {
    match err {
        ClientError::Connect { .. } | ClientError::Closed => ApiError::Unavailable(err.to_string()),
        ClientError::Refused(reason) => {
            ApiError::Unavailable(format!("oetd refused the shim's connection: {reason}"))
        }
        ClientError::Codec(codec) => match codec {
            oet_protocol::codec::CodecError::Io(_) => {
                ApiError::Unavailable(format!("the connection to oetd failed: {codec}"))
            }
            other => ApiError::Internal(format!("cannot talk to oetd: {other}")),
        },
        ClientError::Daemon(refusal) => match refusal.kind {
            ErrorKind::NotFound => {
                ApiError::NotFound(missing.unwrap_or(serde_json::Value::String(refusal.message)))
            }
            ErrorKind::InvalidState => ApiError::Conflict(refusal.message),
            ErrorKind::InvalidRequest => ApiError::BadRequest(refusal.message),
            ErrorKind::PermissionDenied => {
                ApiError::Forbidden(format!("oetd refused the shim's user: {}", refusal.message))
            }
            ErrorKind::Internal => ApiError::Internal(format!("oetd failed: {}", refusal.message)),
        },
        ClientError::Timeout { .. } => ApiError::Timeout(err.to_string()),
        ClientError::Unexpected(what) => {
            ApiError::Internal(format!("unexpected answer from oetd: {what}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oet_protocol::ProtocolError;

    #[test]
    fn oetds_refusals_get_their_status() {
        let refused = |err: ProtocolError| failure(ClientError::Daemon(err), None).status();
        assert_eq!(refused(ProtocolError::not_found("x")).as_u16(), 404);
        assert_eq!(refused(ProtocolError::invalid_state("x")).as_u16(), 409);
        assert_eq!(refused(ProtocolError::invalid_request("x")).as_u16(), 400);
        assert_eq!(refused(ProtocolError::permission_denied("x")).as_u16(), 403);
        assert_eq!(refused(ProtocolError::internal("x")).as_u16(), 500);
        assert_eq!(failure(ClientError::Closed, None).status().as_u16(), 503);
    }

    #[test]
    fn a_missing_thing_gets_upstreams_detail() {
        let detail = serde_json::json!("No information available for PID=9");
        let err = failure(
            ClientError::Daemon(ProtocolError::not_found("no procedure with ID 9")),
            Some(detail.clone()),
        );
        assert!(matches!(err, ApiError::NotFound(d) if d == detail));
    }

    #[test]
    fn a_read_token_may_not_operate() {
        assert!(Oetd::allow(Role::Operate, Role::Read, "x").is_ok());
        let err = Oetd::allow(Role::Read, Role::Operate, "request.procedure.create")
            .expect_err("refused");
        assert_eq!(err.status().as_u16(), 403);
        assert!(err.to_string().contains("needs the operate role"), "{err}");
    }
}
