//! The messages of the control protocol.
//!
//! A connection starts with [`Hello`] from the client and [`Welcome`] from the server.
//! Then the client sends [`Request`]s and the server answers each with a
//! [`ServerMessage::Response`] carrying the same id. A [`RequestBody::Subscribe`] turns
//! the connection into an event stream: after its response, only
//! [`ServerMessage::Event`] and [`ServerMessage::Lagged`] follow.

use serde::{Deserialize, Serialize};

use crate::error::ProtocolError;
use std::collections::BTreeMap;

use crate::summary::{
    ActivitySummary, FunctionArgs, ProcedureState, ProcedureSummary, ScriptSpec, Timestamp,
};
use crate::value::Value;

/// First frame from a client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    pub protocol_version: u32,
    /// Free text naming the client, for logs, e.g. `oetctl 0.1.0`.
    pub client: String,
}

/// The server's answer to [`Hello`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Welcome {
    Accepted {
        protocol_version: u32,
        server: String,
    },
    Refused(ProtocolError),
}

/// Every frame a client sends. `Hello` must stay the first variant with its fields
/// unchanged, so that clients and servers of different versions can still tell each
/// other so.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ClientMessage {
    Hello(Hello),
    Request(Request),
}

/// One request from a client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Request {
    pub id: u64,
    pub body: RequestBody,
}

/// What a client can ask.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum RequestBody {
    /// Load a script into a new process and call its `init`.
    CreateProcedure {
        script: ScriptSpec,
        init_args: FunctionArgs,
    },
    /// Call a function (normally `main`) of a READY procedure.
    StartProcedure {
        id: u64,
        function: String,
        args: FunctionArgs,
    },
    /// Stop a procedure; with `run_abort`, then run the abort script.
    StopProcedure { id: u64, run_abort: bool },
    /// Summaries of the given procedures, or of all live ones when empty.
    ListProcedures { ids: Vec<u64> },
    /// The captured stdout/stderr lines of a procedure.
    ProcedureLogs { id: u64 },
    /// Stream every event from now on.
    Subscribe,
    /// The daemon's own state.
    Status,
    /// Run an activity of a Scheduling Block Definition from the ODA.
    RunActivity {
        activity_name: String,
        sbd_id: String,
        /// Arguments per function, laid over the SBD's own.
        script_args: BTreeMap<String, FunctionArgs>,
        /// Prepare the procedure but leave starting `main` to the operator.
        prepare_only: bool,
        /// For git scripts: run in a virtual environment built for the commit.
        create_env: bool,
    },
    /// Summaries of the given activities, or of all live ones when empty.
    ListActivities { ids: Vec<u64> },
    /// Store an SBD (JSON text) in the ODA.
    PutSbd { json: String },
}

impl RequestBody {
    /// The event topic that announces this request on the bus, e.g.
    /// `request.procedure.create`.
    pub fn topic(&self) -> &'static str {
        match self {
            RequestBody::CreateProcedure { .. } => "request.procedure.create",
            RequestBody::StartProcedure { .. } => "request.procedure.start",
            RequestBody::StopProcedure { .. } => "request.procedure.stop",
            RequestBody::ListProcedures { .. } => "request.procedure.list",
            RequestBody::ProcedureLogs { .. } => "request.procedure.logs",
            RequestBody::Subscribe => "request.subscribe",
            RequestBody::Status => "request.status",
            RequestBody::RunActivity { .. } => "request.activity.run",
            RequestBody::ListActivities { .. } => "request.activity.list",
            RequestBody::PutSbd { .. } => "request.oda.put_sbd",
        }
    }
}

/// A successful answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ResponseBody {
    Procedure(ProcedureSummary),
    Procedures(Vec<ProcedureSummary>),
    /// Stop answers with the summaries it produced: the stopped procedure, and the
    /// abort procedure when one was run.
    Stopped(Vec<ProcedureSummary>),
    Logs(ProcedureLogs),
    Subscribed,
    Status(DaemonStatus),
    Activity(ActivitySummary),
    Activities(Vec<ActivitySummary>),
    /// The SBD as the ODA stored it.
    SbdStored {
        sbd_id: String,
        version: u64,
    },
}

/// Every frame a server sends. `Welcome` stays the first variant, for the same reason
/// as [`ClientMessage::Hello`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ServerMessage {
    Welcome(Welcome),
    Response {
        id: u64,
        result: Result<ResponseBody, ProtocolError>,
    },
    Event(Event),
    /// The subscriber was too slow and this many events were dropped for it.
    Lagged {
        missed: u64,
    },
    /// A frame could not be understood; the connection closes after this.
    Malformed(ProtocolError),
}

/// One event on the bus.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Dotted topic, e.g. `procedure.lifecycle.statechange` or `user.script.announce`.
    pub topic: String,
    /// Who sent it: a procedure ID for script events, `oetd` for the daemon's own.
    pub msg_src: String,
    pub time: Timestamp,
    pub payload: Value,
}

impl Event {
    /// For `procedure.lifecycle.*` events, the procedure they are about.
    pub fn procedure_id(&self) -> Option<u64> {
        let map = self.payload.as_map()?;
        match map.get("procedure_id")? {
            Value::Int(id) => u64::try_from(*id).ok(),
            _ => None,
        }
    }

    /// For `activity.lifecycle.*` and `sb.lifecycle.started` events, the activity they
    /// are about.
    pub fn activity_id(&self) -> Option<u64> {
        let map = self.payload.as_map()?;
        match map.get("activity_id")? {
            Value::Int(id) => u64::try_from(*id).ok(),
            _ => None,
        }
    }

    /// For `activity.lifecycle.<state>` events, the state the activity entered.
    pub fn activity_state(&self) -> Option<crate::summary::ActivityState> {
        crate::summary::ActivityState::ALL
            .into_iter()
            .find(|state| state.topic() == self.topic)
    }

    /// For `procedure.lifecycle.statechange`, the state entered.
    pub fn new_state(&self) -> Option<ProcedureState> {
        if self.topic != crate::topics::STATECHANGE {
            return None;
        }
        self.payload
            .as_map()?
            .get("new_state")?
            .as_str()?
            .parse()
            .ok()
    }
}

/// Which stream a captured script line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// One line a script printed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogLine {
    pub time: Timestamp,
    pub stream: Stream,
    pub line: String,
}

/// The kept output of one procedure.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProcedureLogs {
    pub id: u64,
    /// Lines dropped from the front because the per-procedure bound was reached.
    pub dropped: u64,
    pub lines: Vec<LogLine>,
}

/// The daemon's own state, for `oetctl status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DaemonStatus {
    pub server: String,
    pub protocol_version: u32,
    pub pid: u32,
    pub socket: String,
    pub started_at: Timestamp,
    pub procedures_live: u64,
    pub running: Vec<u64>,
}

/// Event topics the daemon publishes.
pub mod topics {
    pub const STATECHANGE: &str = "procedure.lifecycle.statechange";
    pub const STACKTRACE: &str = "procedure.lifecycle.stacktrace";
    pub const CREATED: &str = "procedure.lifecycle.created";
    pub const STARTED: &str = "procedure.lifecycle.started";
    pub const COMPLETE: &str = "procedure.lifecycle.complete";
    pub const STOPPED: &str = "procedure.lifecycle.stopped";
    pub const FAILED: &str = "procedure.lifecycle.failed";
    /// The `main` of an activity's procedure started: the Scheduling Block is observed.
    pub const SB_STARTED: &str = "sb.lifecycle.started";
    /// Every `activity.lifecycle.<state>` topic starts with this; see
    /// [`crate::ActivityState::topic`].
    pub const ACTIVITY_PREFIX: &str = "activity.lifecycle.";
}
