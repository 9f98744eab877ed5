//! The messages of the control protocol.
//!
//! A connection starts with [`Hello`] from the client and [`Welcome`] from the server.
//! Then the client sends [`Request`]s and the server answers each with a
//! [`ServerMessage::Response`] carrying the same id. A [`crate::Subscribe`] request turns
//! the connection into an event stream: after its response, only
//! [`ServerMessage::Event`] and [`ServerMessage::Lagged`] follow. What each request is and
//! what it is answered with is declared in [`crate::requests`].

use serde::{Deserialize, Serialize};

use crate::error::ProtocolError;
use crate::requests::{RequestBody, ResponseBody};
use crate::summary::{ProcedureState, Timestamp};
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

/// The first frame a client sends, as a server reads it: a [`ClientMessage`] that can
/// only be a `Hello` (same variant index, same fields). A server decodes the first frame
/// as this, so nothing of a request is decoded before the handshake: a request sent
/// first is an unknown variant and refused as it is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename = "ClientMessage")]
pub enum Opening {
    Hello(Hello),
}

/// One request from a client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Request {
    pub id: u64,
    pub body: RequestBody,
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

/// The `msg_src` of events oetd itself publishes. Script events carry their procedure's
/// ID instead, stamped by oetd, so a script cannot pass its events off as oetd's.
pub const DAEMON_SOURCE: &str = "oetd";

impl Event {
    /// Whether oetd itself published this event. Only such events say anything about
    /// procedures and activities: the helpers below answer `None` for all others.
    pub fn from_daemon(&self) -> bool {
        self.msg_src == DAEMON_SOURCE
    }

    /// For oetd's `procedure.lifecycle.*` events, the procedure they are about.
    pub fn procedure_id(&self) -> Option<u64> {
        if !self.from_daemon() {
            return None;
        }
        let map = self.payload.as_map()?;
        match map.get("procedure_id")? {
            Value::Int(id) => u64::try_from(*id).ok(),
            _ => None,
        }
    }

    /// For oetd's `activity.lifecycle.*` and `sb.lifecycle.started` events, the activity
    /// they are about.
    pub fn activity_id(&self) -> Option<u64> {
        if !self.from_daemon() {
            return None;
        }
        let map = self.payload.as_map()?;
        match map.get("activity_id")? {
            Value::Int(id) => u64::try_from(*id).ok(),
            _ => None,
        }
    }

    /// For oetd's `activity.lifecycle.<state>` events, the state the activity entered.
    pub fn activity_state(&self) -> Option<crate::summary::ActivityState> {
        if !self.from_daemon() {
            return None;
        }
        crate::summary::ActivityState::ALL
            .into_iter()
            .find(|state| state.topic() == self.topic)
    }

    /// For oetd's notice that an event was too large for the frame limit (sent in its
    /// place), the topic of the event that was left out.
    pub fn too_large_topic(&self) -> Option<&str> {
        if self.topic != crate::topics::EVENT_TOO_LARGE || !self.from_daemon() {
            return None;
        }
        self.payload.as_map()?.get("topic")?.as_str()
    }

    /// For oetd's `procedure.lifecycle.statechange`, the state entered.
    pub fn new_state(&self) -> Option<ProcedureState> {
        if self.topic != crate::topics::STATECHANGE || !self.from_daemon() {
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
    /// Set when the output was not kept, saying why (e.g. oetd restarted before the
    /// procedure ended); `lines` is then empty.
    pub not_kept: Option<String>,
}

/// The daemon's own state, for `oetctl status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct DaemonStatus {
    pub server: String,
    pub protocol_version: u32,
    pub pid: u32,
    pub socket: String,
    pub started_at: Timestamp,
    pub procedures_live: u64,
    pub running: Vec<u64>,
    /// Seconds a stopped script has between SIGTERM and SIGKILL.
    pub stop_grace_secs: f64,
    /// The file of the durable store.
    pub store: String,
    /// Why the store cannot be written now, if it cannot; creates are refused meanwhile.
    pub store_problem: Option<String>,
    /// How the processes of procedures are kept together and ended.
    pub containment: Containment,
    /// The zygotes workers are forked from, one per interpreter that has one.
    pub zygotes: Vec<ZygoteStatus>,
    /// What the git checkouts, the Python environments and pip's cache hold on disk.
    pub caches: CacheUsage,
}

/// A zygote: a Python that has imported the worker harness and forks workers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct ZygoteStatus {
    /// The interpreter it runs.
    pub python: String,
    pub pid: u32,
    /// Workers it has forked.
    pub forks: u64,
}

/// How oetd keeps a procedure's processes together, so that stopping it (or oetd's
/// death) ends every one of them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Containment {
    /// Each procedure has a cgroup of its own under `root`; a stop ends everything in
    /// it, a process that left its process group (`setsid`) included. `controllers`
    /// names the resource controllers procedures get and where, e.g. `memory (v1)`.
    Cgroup {
        root: String,
        controllers: Vec<String>,
    },
    /// Process groups only: a process that leaves its group escapes a stop and oetd's
    /// death. `reason` says why no cgroup could be used.
    ProcessGroup { reason: String },
}

impl Default for Containment {
    fn default() -> Self {
        Containment::ProcessGroup {
            reason: String::new(),
        }
    }
}

/// Counts and sizes (bytes on disk) of what oetd caches for git scripts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct CacheUsage {
    pub checkouts: u64,
    /// Checkouts a live procedure uses.
    pub checkouts_in_use: u64,
    pub checkout_bytes: u64,
    /// Complete Python environments.
    pub envs: u64,
    /// Environments a live procedure uses.
    pub envs_in_use: u64,
    /// Environments being built.
    pub envs_building: u64,
    pub env_bytes: u64,
    pub pip_cache_bytes: u64,
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
    /// Sent to one subscriber in place of an event too large for a frame: the payload
    /// names the event's `topic`, its size in `bytes` and the frame limit `max_bytes`.
    pub const EVENT_TOO_LARGE: &str = "oetd.event.too_large";
}
