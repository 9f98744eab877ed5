//! An async client of `oetd`, used by `oetctl`, the HTTP shim and the tests.
//!
//! [`Client::call`] sends any request and returns its own response type (see
//! [`crate::requests`]); the named methods are shorthands for it. [`EventStream::follow`]
//! is the one loop that waits for a procedure or an activity to reach a state.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use tokio::net::UnixStream;
use tokio_util::codec::Framed;

use crate::codec::{CodecError, FrameCodec, MAX_FRAME_LIMIT};
use crate::error::ProtocolError;
use crate::messages::*;
use crate::requests::*;
use crate::summary::{
    ActivityState, ActivitySummary, FunctionArgs, ProcedureState, ProcedureSummary, ScriptSpec,
    Timestamp,
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
    #[error("oetd at {} did not answer {what} within {} s; it may be overloaded or stuck (a longer --timeout waits longer)", path.display(), after.as_secs_f64())]
    Timeout {
        path: PathBuf,
        /// What was waited for, e.g. `the connection` or `request.procedure.stop`.
        what: String,
        after: Duration,
    },
}

/// A connection to `oetd` that has completed the handshake.
pub struct Client {
    transport: Transport,
    server: String,
    path: PathBuf,
    /// How long a request may wait for its answer; `None`: as long as it takes.
    timeout: Option<Duration>,
}

impl Client {
    /// Connects and performs the versioned handshake, waiting as long as that takes.
    pub async fn connect(path: &Path, client_name: &str) -> Result<Client, ClientError> {
        Client::open(path, client_name).await
    }

    /// Connects and performs the handshake within `timeout`; each request made on the
    /// connection then waits at most `timeout` for its answer (an event stream waits as
    /// long as it is open).
    pub async fn connect_within(
        path: &Path,
        client_name: &str,
        timeout: Duration,
    ) -> Result<Client, ClientError> {
        let mut client = tokio::time::timeout(timeout, Client::open(path, client_name))
            .await
            .map_err(|_| ClientError::Timeout {
                path: path.to_owned(),
                what: "the connection".into(),
                after: timeout,
            })??;
        client.timeout = Some(timeout);
        Ok(client)
    }

    /// Sets how long each request waits for its answer (`None`: as long as it takes).
    pub fn set_timeout(&mut self, timeout: Option<Duration>) {
        self.timeout = timeout;
    }

    async fn open(path: &Path, client_name: &str) -> Result<Client, ClientError> {
        let stream = UnixStream::connect(path)
            .await
            .map_err(|source| ClientError::Connect {
                path: path.to_owned(),
                source,
            })?;
        let mut transport = Framed::new(stream, FrameCodec::new(MAX_FRAME_LIMIT));
        transport
            .send(ClientMessage::Hello(Hello {
                protocol_version: PROTOCOL_VERSION,
                client: client_name.to_owned(),
            }))
            .await?;
        match transport.next().await {
            Some(Ok(ServerMessage::Welcome(Welcome::Accepted { server, .. }))) => Ok(Client {
                transport,
                server,
                path: path.to_owned(),
                timeout: None,
            }),
            Some(Ok(ServerMessage::Welcome(Welcome::Refused(err)))) => {
                Err(ClientError::Refused(err.message))
            }
            Some(Ok(ServerMessage::Malformed(err))) => Err(ClientError::Refused(err.message)),
            Some(Ok(other)) => Err(ClientError::Unexpected(format!("{other:?}"))),
            Some(Err(err)) => Err(err.into()),
            None => Err(ClientError::Closed),
        }
    }

    /// The server's self-description from the handshake, e.g. `oetd 0.1.0`.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// Sends one request and waits for its answer (at most the client's timeout).
    pub async fn call<R: Call>(&mut self, request: R) -> Result<R::Response, ClientError> {
        let Some(timeout) = self.timeout else {
            return self.exchange(request).await;
        };
        tokio::time::timeout(timeout, self.exchange(request))
            .await
            .map_err(|_| ClientError::Timeout {
                path: self.path.clone(),
                what: R::TOPIC.to_owned(),
                after: timeout,
            })?
    }

    async fn exchange<R: Call>(&mut self, request: R) -> Result<R::Response, ClientError> {
        let id = next_request_id();
        self.transport
            .send(ClientMessage::Request(Request {
                id,
                body: request.into_body(),
            }))
            .await?;
        match self.transport.next().await {
            Some(Ok(ServerMessage::Response { id: got, result })) if got == id => {
                R::from_response(result?).map_err(|other| {
                    ClientError::Unexpected(format!("{other:?} in answer to {}", R::TOPIC))
                })
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
        self.call(CreateProcedure { script, init_args }).await
    }

    pub async fn start(
        &mut self,
        id: u64,
        function: &str,
        args: FunctionArgs,
    ) -> Result<ProcedureSummary, ClientError> {
        let function = function.to_owned();
        self.call(StartProcedure { id, function, args }).await
    }

    pub async fn stop(
        &mut self,
        id: u64,
        run_abort: bool,
    ) -> Result<Vec<ProcedureSummary>, ClientError> {
        self.call(StopProcedure { id, run_abort }).await
    }

    /// Summaries of the given procedures (live or past), or of the default list when
    /// `ids` is empty: every live procedure and the newest final ones.
    pub async fn list(&mut self, ids: Vec<u64>) -> Result<Vec<ProcedureSummary>, ClientError> {
        self.call(ListProcedures { ids }).await
    }

    /// Procedures from the durable store, live and past, in ID order: those created at
    /// or after `since`, in `state`, the newest `limit` of them (all when `None`). Asks
    /// for as many pages as that takes.
    pub async fn procedure_history(
        &mut self,
        since: Option<Timestamp>,
        state: Option<ProcedureState>,
        limit: Option<usize>,
    ) -> Result<Vec<ProcedureSummary>, ClientError> {
        self.pages(limit, |before, limit| ListProcedureHistory {
            since,
            state,
            before,
            limit,
        })
        .await
    }

    /// One procedure's summary, live or past.
    pub async fn describe(&mut self, id: u64) -> Result<ProcedureSummary, ClientError> {
        only(self.list(vec![id]).await?, "procedure", id)
    }

    pub async fn logs(&mut self, id: u64) -> Result<ProcedureLogs, ClientError> {
        self.call(GetLogs { id }).await
    }

    pub async fn status(&mut self) -> Result<DaemonStatus, ClientError> {
        self.call(GetStatus {}).await
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
        self.call(RunActivity {
            activity_name: activity_name.to_owned(),
            sbd_id: sbd_id.to_owned(),
            script_args,
            prepare_only,
            create_env,
        })
        .await
    }

    /// Activities from the durable store, live and past, in ID order; like
    /// [`Client::procedure_history`].
    pub async fn activity_history(
        &mut self,
        since: Option<Timestamp>,
        state: Option<ActivityState>,
        limit: Option<usize>,
    ) -> Result<Vec<ActivitySummary>, ClientError> {
        self.pages(limit, |before, limit| ListActivityHistory {
            since,
            state,
            before,
            limit,
        })
        .await
    }

    /// Asks for history pages made by `page` (below an ID, this many) until `limit`
    /// records are gathered or the history is exhausted; returns them in ID order.
    async fn pages<R, T>(
        &mut self,
        limit: Option<usize>,
        page: impl Fn(Option<u64>, u32) -> R,
    ) -> Result<Vec<T>, ClientError>
    where
        R: Call<Response = Vec<T>>,
        T: HasId,
    {
        let mut pages = Pages::new(limit);
        while let Some((before, limit)) = pages.next_page() {
            let got = self.call(page(before, limit)).await?;
            pages.add(got, limit);
        }
        Ok(pages.finish())
    }

    /// Summaries of the given activities (live or past), or of the default list when
    /// `ids` is empty.
    pub async fn list_activities(
        &mut self,
        ids: Vec<u64>,
    ) -> Result<Vec<ActivitySummary>, ClientError> {
        self.call(ListActivities { ids }).await
    }

    /// One activity's summary.
    pub async fn describe_activity(&mut self, id: u64) -> Result<ActivitySummary, ClientError> {
        only(self.list_activities(vec![id]).await?, "activity", id)
    }

    /// Stores an SBD (JSON text) in the daemon's ODA; returns its id and version as stored.
    pub async fn put_sbd(&mut self, json: String) -> Result<(String, u64), ClientError> {
        let stored = self.call(PutSbd { json }).await?;
        Ok((stored.sbd_id, stored.version))
    }

    /// Re-reads oetd's configuration file, as SIGHUP does (needs the admin role).
    pub async fn reload(&mut self) -> Result<Reloaded, ClientError> {
        self.call(Reload {}).await
    }

    /// Turns this connection into a stream of every event from now on.
    pub async fn subscribe(self) -> Result<EventStream, ClientError> {
        self.subscribe_to(Vec::new()).await
    }

    /// Turns this connection into a stream of the events whose topics start with one of
    /// `topics` (all events when empty).
    pub async fn subscribe_to(mut self, topics: Vec<String>) -> Result<EventStream, ClientError> {
        self.call(Subscribe { topics }).await?;
        Ok(EventStream {
            transport: self.transport,
        })
    }
}

/// A request ID no other request of this process had, and which those of other processes
/// are unlikely to have: the time in nanoseconds since the Unix epoch, or one more than the
/// previous ID when the clock has not moved on (as upstream's REST layer numbered its
/// requests). oetd announces each request with its ID (`request_id`), so that whoever
/// watches the events can tell which request an announcement is.
pub fn next_request_id() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    let previous = LAST
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |last| {
            Some(now.max(last.saturating_add(1)))
        })
        .unwrap_or(0);
    now.max(previous.saturating_add(1))
}

/// A record of the history, known by its ID.
pub trait HasId {
    fn id(&self) -> u64;
}

impl HasId for ProcedureSummary {
    fn id(&self) -> u64 {
        self.id
    }
}

impl HasId for ActivitySummary {
    fn id(&self) -> u64 {
        self.id
    }
}

/// Gathers history pages (newest first) until the wanted number is reached or the
/// history is exhausted.
struct Pages<T> {
    items: Vec<T>,
    wanted: Option<usize>,
    before: Option<u64>,
    done: bool,
}

impl<T> Pages<T> {
    fn new(wanted: Option<usize>) -> Self {
        Pages {
            items: Vec::new(),
            wanted,
            before: None,
            done: wanted == Some(0),
        }
    }

    /// The next page to ask for: below which ID, and how many.
    fn next_page(&self) -> Option<(Option<u64>, u32)> {
        if self.done {
            return None;
        }
        let left = self.wanted.map_or(usize::MAX, |w| w - self.items.len());
        let limit = u32::try_from(left)
            .unwrap_or(HISTORY_PAGE_MAX)
            .min(HISTORY_PAGE_MAX);
        Some((self.before, limit))
    }

    /// Adds a page, asked for with `asked` as its limit.
    fn add(&mut self, page: Vec<T>, asked: u32)
    where
        T: HasId,
    {
        let short = page.len() < asked as usize;
        let last = page.last().map(HasId::id);
        // An ID not below the asked bound would mean a server that ignores paging.
        let progressed = matches!((last, self.before), (Some(l), Some(b)) if l < b)
            || (last.is_some() && self.before.is_none());
        self.items.extend(page);
        self.before = last;
        let full = self.wanted.is_some_and(|w| self.items.len() >= w);
        self.done = full || short || !progressed;
        if let Some(wanted) = self.wanted {
            self.items.truncate(wanted);
        }
    }

    /// The items in ascending ID order.
    fn finish(mut self) -> Vec<T> {
        self.items.reverse();
        self.items
    }
}

/// The one summary a list of one ID answers.
fn only<T>(summaries: Vec<T>, what: &str, id: u64) -> Result<T, ClientError> {
    summaries
        .into_iter()
        .next()
        .ok_or_else(|| ClientError::Unexpected(format!("no summary for {what} {id}")))
}

/// What a subscription delivers.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamItem {
    Event(Event),
    /// This many events were dropped because the subscriber fell behind.
    Lagged(u64),
}

/// What a follower learns about the procedure or activity it follows, in order.
#[derive(Debug)]
pub enum Progress<'a, T: Followed> {
    /// An event of oetd's said it entered this state.
    Entered(T::State),
    /// Another event of oetd's about it (e.g. `activity.lifecycle.error`).
    Other(&'a Event),
    /// Its summary as read after events were lost.
    Summary(&'a T),
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
        self.follow(
            client,
            id,
            |_| Ok::<_, ClientError>(()),
            |progress: Progress<'_, T>| match progress {
                Progress::Entered(state) => done(state),
                Progress::Summary(summary) => done(summary.state()),
                Progress::Other(_) => false,
            },
        )
        .await
    }

    /// Follows procedure or activity `id` until `done` says so, and returns its summary
    /// then (read through `client`, a second connection). Every item of the stream is
    /// first handed to `seen`. `done` is asked about each of oetd's events about `id`
    /// (deciding on the event's own state, never on a summary that may already be further
    /// along, so that no event of the way is skipped), and about the summary whenever
    /// events were lost. Events from scripts never count, whatever they claim. Subscribe
    /// before causing what you follow, so that its events must come.
    pub async fn follow<T: Followed, E: From<ClientError>>(
        &mut self,
        client: &mut Client,
        id: u64,
        mut seen: impl FnMut(&StreamItem) -> Result<(), E>,
        mut done: impl FnMut(Progress<'_, T>) -> bool,
    ) -> Result<T, E> {
        loop {
            let item = match self.next().await {
                Some(item) => item?,
                None => return Err(ClientError::Closed.into()),
            };
            seen(&item)?;
            // An event left out for its size may have been about it: read where it is.
            let left_out =
                matches!(&item, StreamItem::Event(event) if event.too_large_topic().is_some());
            let finished = match &item {
                StreamItem::Event(event) if T::is_about(event, id) => match T::state_in(event) {
                    Some(state) => done(Progress::Entered(state)),
                    None => done(Progress::Other(event)),
                },
                StreamItem::Event(_) if !left_out => false,
                StreamItem::Event(_) | StreamItem::Lagged(_) => {
                    let summary = T::read(client, id).await?;
                    if done(Progress::Summary(&summary)) {
                        return Ok(summary);
                    }
                    false
                }
            };
            if finished {
                return Ok(T::read(client, id).await?);
            }
        }
    }
}

/// Something with states that events announce: a procedure or an activity.
pub trait Followed: Sized {
    type State: Copy + std::fmt::Debug;
    fn state(&self) -> Self::State;
    fn is_final(state: Self::State) -> bool;
    /// Whether `event` is one of oetd's events about the one with `id`.
    fn is_about(event: &Event, id: u64) -> bool;
    /// The state `event` says was entered, if it says so.
    fn state_in(event: &Event) -> Option<Self::State>;
    #[allow(async_fn_in_trait)]
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

    fn is_about(event: &Event, id: u64) -> bool {
        event.procedure_id() == Some(id)
    }

    fn state_in(event: &Event) -> Option<ProcedureState> {
        event.new_state()
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

    fn is_about(event: &Event, id: u64) -> bool {
        event.activity_id() == Some(id)
    }

    fn state_in(event: &Event) -> Option<ActivityState> {
        event.activity_state()
    }

    async fn read(client: &mut Client, id: u64) -> Result<Self, ClientError> {
        client.describe_activity(id).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_never_repeat_and_follow_the_clock() {
        let before = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("after the epoch")
            .as_nanos() as u64;
        let ids: Vec<u64> = (0..1000).map(|_| next_request_id()).collect();
        assert!(ids.windows(2).all(|pair| pair[0] < pair[1]), "{ids:?}");
        assert!(ids[0] >= before);
        // As an event payload carries them: an i64 until the year 2262.
        assert!(i64::try_from(ids[999]).is_ok());
    }
}
