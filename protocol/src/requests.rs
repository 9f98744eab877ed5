//! Every request a client can make, declared once: its body, the typed answer it gets,
//! the topic that announces it on the bus, and the role a caller needs for it.
//!
//! The [`requests!`] table below is the one list. From it come the wire enums
//! [`RequestBody`] and [`ResponseBody`], the [`Call`] implementation of each request (so
//! that [`crate::Client::call`] returns the request's own response type), and
//! [`for_each_request!`](crate::for_each_request), with which a server routes every
//! request to its handler without a hand-written `match`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::messages::{DaemonStatus, ProcedureLogs};
use crate::summary::{
    ActivityState, ActivitySummary, FunctionArgs, ProcedureState, ProcedureSummary, ScriptSpec,
    Timestamp,
};

/// What a caller may do. Each request needs one of these; a caller with a higher role may
/// make the requests of the lower ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Role {
    /// Look: status, lists, descriptions, logs, events.
    Read,
    /// Run the telescope's scripts: create, start, stop, run activities, store SBDs.
    Operate,
    /// Run the daemon: reload, maintenance.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Operate => "operate",
            Role::Admin => "admin",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A request kind, tied to its answer. Implemented for every request by [`requests!`].
pub trait Call: Sized {
    /// What a successful answer carries.
    type Response;
    /// The bus topic announcing the request, e.g. `request.procedure.create`.
    const TOPIC: &'static str;
    /// The role a caller needs.
    const ROLE: Role;
    fn into_body(self) -> RequestBody;
    fn into_response(response: Self::Response) -> ResponseBody;
    /// The answer, if `body` is this request's kind of answer; otherwise `body` back.
    fn from_response(body: ResponseBody) -> Result<Self::Response, Box<ResponseBody>>;
}

/// Declares the requests: `Name => Response, "topic", Role;` per request. `Name` is a
/// struct defined in this module.
macro_rules! requests {
    ($d:tt $( $(#[$doc:meta])* $name:ident => $response:ty, $topic:literal, $role:ident; )*) => {
        /// Every request, as it travels.
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        pub enum RequestBody {
            $( $(#[$doc])* $name($name), )*
        }

        /// Every successful answer, as it travels: one variant per request kind. Boxed, so
        /// that a small answer is not moved in the room of the largest (the wire form is
        /// the same).
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        pub enum ResponseBody {
            $( $name(Box<$response>), )*
        }

        impl RequestBody {
            /// The bus topic announcing this request.
            pub fn topic(&self) -> &'static str {
                match self { $( RequestBody::$name(_) => $topic, )* }
            }

            /// The role a caller needs for this request.
            pub fn role(&self) -> Role {
                match self { $( RequestBody::$name(_) => Role::$role, )* }
            }
        }

        $(
            impl Call for $name {
                type Response = $response;
                const TOPIC: &'static str = $topic;
                const ROLE: Role = Role::$role;

                fn into_body(self) -> RequestBody {
                    RequestBody::$name(self)
                }

                fn into_response(response: $response) -> ResponseBody {
                    ResponseBody::$name(Box::new(response))
                }

                fn from_response(body: ResponseBody) -> Result<$response, Box<ResponseBody>> {
                    match body {
                        ResponseBody::$name(response) => Ok(*response),
                        #[allow(unreachable_patterns)]
                        other => Err(Box::new(other)),
                    }
                }
            }
        )*

        /// Expands `$callback!(Name, Name, ...)` with the name of every request, so that
        /// a server can route each [`RequestBody`] variant to a handler generic over
        /// [`Call`] without listing the requests a second time.
        #[macro_export]
        macro_rules! for_each_request {
            ($d callback:ident) => { $d callback!($($name),*) };
        }
    };
}

requests! { $
    /// Load a script into a new process and call its `init`.
    CreateProcedure => ProcedureSummary, "request.procedure.create", Operate;
    /// Call a function (normally `main`) of a READY procedure.
    StartProcedure => ProcedureSummary, "request.procedure.start", Operate;
    /// Stop a procedure; with `run_abort`, then run the abort script. Answers with the
    /// stopped procedure's summary, and the abort procedure's when one was run.
    StopProcedure => Vec<ProcedureSummary>, "request.procedure.stop", Operate;
    /// Summaries of the given procedures (live or past), or of the default list when
    /// none are named.
    ListProcedures => Vec<ProcedureSummary>, "request.procedure.list", Read;
    /// Past and live procedures from the durable store, newest first, a page at a time.
    ListProcedureHistory => Vec<ProcedureSummary>, "request.procedure.history", Read;
    /// The captured stdout/stderr lines of a procedure.
    GetLogs => ProcedureLogs, "request.procedure.logs", Read;
    /// Turn the connection into a stream of events.
    Subscribe => (), "request.subscribe", Read;
    /// The daemon's own state.
    GetStatus => DaemonStatus, "request.status", Read;
    /// Run an activity of a Scheduling Block Definition from the ODA.
    RunActivity => ActivitySummary, "request.activity.run", Operate;
    /// Summaries of the given activities (live or past), or of the default list when
    /// none are named.
    ListActivities => Vec<ActivitySummary>, "request.activity.list", Read;
    /// Past and live activities from the durable store, newest first, a page at a time.
    ListActivityHistory => Vec<ActivitySummary>, "request.activity.history", Read;
    /// Store an SBD (JSON text) in the ODA.
    PutSbd => SbdStored, "request.oda.put_sbd", Operate;
    /// Re-read the configuration file, as SIGHUP does.
    Reload => Reloaded, "request.daemon.reload", Admin;
}

/// Load a script into a new process and call its `init`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CreateProcedure {
    pub script: ScriptSpec,
    pub init_args: FunctionArgs,
}

/// Call `function` of a READY procedure.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StartProcedure {
    pub id: u64,
    pub function: String,
    pub args: FunctionArgs,
}

/// Stop a procedure.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StopProcedure {
    pub id: u64,
    /// Then run the configured abort script for the stopped procedure's subarray.
    pub run_abort: bool,
}

/// List procedures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct ListProcedures {
    /// The procedures to describe, live or past; empty means the default list: every
    /// live procedure and the newest final ones.
    pub ids: Vec<u64>,
}

/// The most a history page holds; a larger `limit` is answered with this many.
pub const HISTORY_PAGE_MAX: u32 = 500;

/// One page of the procedure history in the durable store, newest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct ListProcedureHistory {
    /// Only procedures created at or after this time.
    pub since: Option<Timestamp>,
    /// Only procedures in this state.
    pub state: Option<ProcedureState>,
    /// Only procedures with a lower ID: the last ID of the previous page.
    pub before: Option<u64>,
    /// At most this many (and at most [`HISTORY_PAGE_MAX`]); 0 means the page maximum.
    pub limit: u32,
}

/// A procedure's kept output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GetLogs {
    pub id: u64,
}

/// Stream events from now on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Subscribe {
    /// Topic prefixes to receive, e.g. `procedure.lifecycle.`; empty means every topic.
    pub topics: Vec<String>,
}

/// The daemon's own state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct GetStatus {}

/// Run an activity of an SBD.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct RunActivity {
    pub activity_name: String,
    pub sbd_id: String,
    /// Arguments per function, laid over the SBD's own.
    pub script_args: BTreeMap<String, FunctionArgs>,
    /// Prepare the procedure but leave starting `main` to the operator.
    pub prepare_only: bool,
    /// For git scripts: run in a virtual environment built for the commit.
    pub create_env: bool,
}

/// List activities.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct ListActivities {
    /// The activities to describe, live or past; empty means the default list.
    pub ids: Vec<u64>,
}

/// One page of the activity history in the durable store, newest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct ListActivityHistory {
    /// Only activities requested at or after this time.
    pub since: Option<Timestamp>,
    /// Only activities in this state.
    pub state: Option<ActivityState>,
    /// Only activities with a lower ID: the last ID of the previous page.
    pub before: Option<u64>,
    /// At most this many (and at most [`HISTORY_PAGE_MAX`]); 0 means the page maximum.
    pub limit: u32,
}

/// Store an SBD in the ODA.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PutSbd {
    /// The SBD as JSON text.
    pub json: String,
}

/// Re-read the configuration file and apply what can change while running.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Reload {}

/// What a reload changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Reloaded {
    /// Keys or sections whose new values are in effect now.
    pub live: Vec<String>,
    /// Keys or sections that changed but take effect only after a restart of oetd.
    pub restart: Vec<String>,
    /// Warnings about the new file (deprecated keys, unknown users or groups).
    pub warnings: Vec<String>,
}

/// An SBD as the ODA stored it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SbdStored {
    pub sbd_id: String,
    pub version: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_request_knows_its_topic_and_role() {
        let create = CreateProcedure {
            script: ScriptSpec::filesystem("file:///a.py"),
            init_args: FunctionArgs::default(),
        };
        assert_eq!(create.clone().into_body().topic(), CreateProcedure::TOPIC);
        assert_eq!(create.into_body().role(), Role::Operate);
        assert_eq!(ListProcedures::ROLE, Role::Read);
        assert_eq!(GetLogs::TOPIC, "request.procedure.logs");
    }

    #[test]
    fn an_answer_of_another_kind_is_given_back() {
        let answer = GetStatus::into_response(DaemonStatus::default());
        assert!(ListProcedures::from_response(answer.clone()).is_err());
        assert_eq!(
            GetStatus::from_response(answer).expect("its own kind"),
            DaemonStatus::default()
        );
    }

    #[test]
    fn roles_are_ordered() {
        assert!(Role::Read < Role::Operate && Role::Operate < Role::Admin);
    }
}
