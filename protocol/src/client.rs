//! An async client of `oetd`, used by `oetctl`, the HTTP shim and the tests.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use futures::{SinkExt, StreamExt};
use tokio::net::UnixStream;
use tokio_util::codec::Framed;

use crate::codec::{CodecError, FrameCodec, DEFAULT_MAX_FRAME};
use crate::error::ProtocolError;
use crate::messages::*;
use crate::summary::{
    ActivityState, ActivitySummary, FunctionArgs, ProcedureState, ProcedureSummary, ScriptSpec,
};
use crate::PROTOCOL_VERSION;

type Transport = Framed<UnixStream, FrameCodec<ServerMessage, ClientMessage>>;

/// Why a client call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to oetd at {}: {source} (is oetd running? see --socket / OET_SOCKET)", path.display())]
    Connect {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("oetd refused the connection: {0}")]
    Refused(String),
    #[error(transparent)]
    Codec(#[from] CodecError),
    #[error("{0}")]
    Daemon(#[from] ProtocolError),
    #[error("oetd closed the connection")]
    Closed,
    #[error("unexpected answer from oetd: {0}")]
    Unexpected(String),
}

/// A connection to `oetd` that has completed the handshake.
pub struct Client {
    transport: Transport,
    next_id: u64,
    server: String,
}

impl Client {
    /// Connects and performs the versioned handshake.
    pub async fn connect(path: &Path, client_name: &str) -> Result<Client, ClientError> {
        let stream = UnixStream::connect(path)
            .await
            .map_err(|source| ClientError::Connect {
                path: path.to_owned(),
                source,
            })?;
        let mut transport = Framed::new(stream, FrameCodec::new(DEFAULT_MAX_FRAME));
        transport
            .send(ClientMessage::Hello(Hello {
                protocol_version: PROTOCOL_VERSION,
                client: client_name.to_owned(),
            }))
            .await?;
        match transport.next().await {
            Some(Ok(ServerMessage::Welcome(Welcome::Accepted { server, .. }))) => Ok(Client {
                transport,
                next_id: 1,
                server,
            }),
            Some(Ok(ServerMessage::Welcome(Welcome::Refused(err)))) => {
                Err(ClientError::Refused(err.message))
            }
            Some(Ok(other)) => Err(ClientError::Unexpected(format!("{other:?}"))),
            Some(Err(err)) => Err(err.into()),
            None => Err(ClientError::Closed),
        }
    }

    /// The server's self-description from the handshake, e.g. `oetd 0.1.0`.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// Sends one request and waits for its answer.
    pub async fn request(&mut self, body: RequestBody) -> Result<ResponseBody, ClientError> {
        let id = self.next_id;
        self.next_id += 1;
        self.transport
            .send(ClientMessage::Request(Request { id, body }))
            .await?;
        match self.transport.next().await {
            Some(Ok(ServerMessage::Response { id: got, result })) if got == id => {
                result.map_err(ClientError::Daemon)
            }
            Some(Ok(ServerMessage::Malformed(err))) => Err(ClientError::Daemon(err)),
            Some(Ok(ServerMessage::Response { id: got, .. })) => Err(ClientError::Unexpected(
                format!("answer to request {got} while waiting for {id}"),
            )),
            Some(Ok(other)) => Err(ClientError::Unexpected(format!("{other:?}"))),
            Some(Err(err)) => Err(err.into()),
            None => Err(ClientError::Closed),
        }
    }

    pub async fn create(
        &mut self,
        script: ScriptSpec,
        init_args: FunctionArgs,
    ) -> Result<ProcedureSummary, ClientError> {
        expect_procedure(
            self.request(RequestBody::CreateProcedure { script, init_args })
                .await?,
        )
    }

    pub async fn start(
        &mut self,
        id: u64,
        function: &str,
        args: FunctionArgs,
    ) -> Result<ProcedureSummary, ClientError> {
        expect_procedure(
            self.request(RequestBody::StartProcedure {
                id,
                function: function.to_owned(),
                args,
            })
            .await?,
        )
    }

    pub async fn stop(
        &mut self,
        id: u64,
        run_abort: bool,
    ) -> Result<Vec<ProcedureSummary>, ClientError> {
        match self
            .request(RequestBody::StopProcedure { id, run_abort })
            .await?
        {
            ResponseBody::Stopped(summaries) => Ok(summaries),
            other => Err(ClientError::Unexpected(format!("{other:?}"))),
        }
    }

    /// Summaries of the given procedures, or of every live one when `ids` is empty.
    pub async fn list(&mut self, ids: Vec<u64>) -> Result<Vec<ProcedureSummary>, ClientError> {
        match self.request(RequestBody::ListProcedures { ids }).await? {
            ResponseBody::Procedures(summaries) => Ok(summaries),
            other => Err(ClientError::Unexpected(format!("{other:?}"))),
        }
    }

    /// One procedure's summary.
    pub async fn describe(&mut self, id: u64) -> Result<ProcedureSummary, ClientError> {
        self.list(vec![id])
            .await?
            .into_iter()
            .next()
            .ok_or_else(|| ClientError::Unexpected(format!("no summary for procedure {id}")))
    }

    pub async fn logs(&mut self, id: u64) -> Result<ProcedureLogs, ClientError> {
        match self.request(RequestBody::ProcedureLogs { id }).await? {
            ResponseBody::Logs(logs) => Ok(logs),
            other => Err(ClientError::Unexpected(format!("{other:?}"))),
        }
    }

    pub async fn status(&mut self) -> Result<DaemonStatus, ClientError> {
        match self.request(RequestBody::Status).await? {
            ResponseBody::Status(status) => Ok(status),
            other => Err(ClientError::Unexpected(format!("{other:?}"))),
        }
    }

    /// Runs an activity of an SBD; answers once the activity is REQUESTED and its
    /// procedure created. Wait for its states with events.
    pub async fn run_activity(
        &mut self,
        activity_name: &str,
        sbd_id: &str,
        script_args: BTreeMap<String, FunctionArgs>,
        prepare_only: bool,
        create_env: bool,
    ) -> Result<ActivitySummary, ClientError> {
        match self
            .request(RequestBody::RunActivity {
                activity_name: activity_name.to_owned(),
                sbd_id: sbd_id.to_owned(),
                script_args,
                prepare_only,
                create_env,
            })
            .await?
        {
            ResponseBody::Activity(summary) => Ok(summary),
            other => Err(ClientError::Unexpected(format!("{other:?}"))),
        }
    }

    /// Summaries of the given activities, or of every live one when `ids` is empty.
    pub async fn list_activities(
        &mut self,
        ids: Vec<u64>,
    ) -> Result<Vec<ActivitySummary>, ClientError> {
        match self.request(RequestBody::ListActivities { ids }).await? {
            ResponseBody::Activities(summaries) => Ok(summaries),
            other => Err(ClientError::Unexpected(format!("{other:?}"))),
        }
    }

    /// One activity's summary.
    pub async fn describe_activity(&mut self, id: u64) -> Result<ActivitySummary, ClientError> {
        self.list_activities(vec![id])
            .await?
            .into_iter()
            .next()
            .ok_or_else(|| ClientError::Unexpected(format!("no summary for activity {id}")))
    }

    /// Stores an SBD (JSON text) in the daemon's ODA; returns its id and version as stored.
    pub async fn put_sbd(&mut self, json: String) -> Result<(String, u64), ClientError> {
        match self.request(RequestBody::PutSbd { json }).await? {
            ResponseBody::SbdStored { sbd_id, version } => Ok((sbd_id, version)),
            other => Err(ClientError::Unexpected(format!("{other:?}"))),
        }
    }

    /// Turns this connection into a stream of every event from now on.
    pub async fn subscribe(mut self) -> Result<EventStream, ClientError> {
        match self.request(RequestBody::Subscribe).await? {
            ResponseBody::Subscribed => Ok(EventStream {
                transport: self.transport,
            }),
            other => Err(ClientError::Unexpected(format!("{other:?}"))),
        }
    }
}

fn expect_procedure(body: ResponseBody) -> Result<ProcedureSummary, ClientError> {
    match body {
        ResponseBody::Procedure(summary) => Ok(summary),
        other => Err(ClientError::Unexpected(format!("{other:?}"))),
    }
}

/// What a subscription delivers.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamItem {
    Event(Event),
    /// This many events were dropped because the subscriber fell behind.
    Lagged(u64),
}

/// A subscribed connection.
pub struct EventStream {
    transport: Transport,
}

impl EventStream {
    /// The next event, or `None` when the daemon closed the stream.
    pub async fn next(&mut self) -> Option<Result<StreamItem, ClientError>> {
        match self.transport.next().await? {
            Ok(ServerMessage::Event(event)) => Some(Ok(StreamItem::Event(event))),
            Ok(ServerMessage::Lagged { missed }) => Some(Ok(StreamItem::Lagged(missed))),
            Ok(other) => Some(Err(ClientError::Unexpected(format!("{other:?}")))),
            Err(err) => Some(Err(err.into())),
        }
    }

    /// Waits until procedure `id` is in a state for which `wanted` holds, or in a final
    /// state, and returns its summary then. `client` is a second connection used to read
    /// the summary; subscribe before causing the change you wait for, so that nothing
    /// can slip between.
    pub async fn wait_for(
        &mut self,
        client: &mut Client,
        id: u64,
        wanted: impl Fn(ProcedureState) -> bool,
    ) -> Result<ProcedureSummary, ClientError> {
        self.wait_until(client, id, wanted).await
    }

    /// Waits until activity `id` is in a state for which `wanted` holds, or in a final
    /// state, and returns its summary then; like [`EventStream::wait_for`].
    pub async fn wait_for_activity(
        &mut self,
        client: &mut Client,
        id: u64,
        wanted: impl Fn(ActivityState) -> bool,
    ) -> Result<ActivitySummary, ClientError> {
        self.wait_until(client, id, wanted).await
    }

    async fn wait_until<T: Followed>(
        &mut self,
        client: &mut Client,
        id: u64,
        wanted: impl Fn(T::State) -> bool,
    ) -> Result<T, ClientError> {
        let done = |state: T::State| wanted(state) || T::is_final(state);
        let summary = T::read(client, id).await?;
        if done(summary.state()) {
            return Ok(summary);
        }
        loop {
            match self.next().await {
                Some(Ok(StreamItem::Event(event))) => {
                    // Decide on the event's own state: the summary may already be
                    // further along than the event being read.
                    if T::state_in(&event, id).is_some_and(done) {
                        return T::read(client, id).await;
                    }
                }
                Some(Ok(StreamItem::Lagged(_))) => {
                    // Events were dropped; the summary tells the truth instead.
                    let summary = T::read(client, id).await?;
                    if done(summary.state()) {
                        return Ok(summary);
                    }
                }
                Some(Err(err)) => return Err(err),
                None => return Err(ClientError::Closed),
            }
        }
    }
}

/// Something with states that events announce: a procedure or an activity.
trait Followed: Sized {
    type State: Copy;
    fn state(&self) -> Self::State;
    fn is_final(state: Self::State) -> bool;
    /// The state `event` says the one with `id` entered, if it says so.
    fn state_in(event: &Event, id: u64) -> Option<Self::State>;
    async fn read(client: &mut Client, id: u64) -> Result<Self, ClientError>;
}

impl Followed for ProcedureSummary {
    type State = ProcedureState;

    fn state(&self) -> ProcedureState {
        self.state
    }

    fn is_final(state: ProcedureState) -> bool {
        state.is_final()
    }

    fn state_in(event: &Event, id: u64) -> Option<ProcedureState> {
        event
            .new_state()
            .filter(|_| event.procedure_id() == Some(id))
    }

    async fn read(client: &mut Client, id: u64) -> Result<Self, ClientError> {
        client.describe(id).await
    }
}

impl Followed for ActivitySummary {
    type State = ActivityState;

    fn state(&self) -> ActivityState {
        self.state
    }

    fn is_final(state: ActivityState) -> bool {
        state.is_final()
    }

    fn state_in(event: &Event, id: u64) -> Option<ActivityState> {
        event
            .activity_state()
            .filter(|_| event.activity_id() == Some(id))
    }

    async fn read(client: &mut Client, id: u64) -> Result<Self, ClientError> {
        client.describe_activity(id).await
    }
}
