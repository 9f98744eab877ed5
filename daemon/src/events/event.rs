//! The typed events of the bus: what happened, as the daemon knows it.

use std::sync::Arc;

use oet_protocol::{ActivitySummary, ProcedureState, ProcedureSummary, Timestamp, Value};

/// Something that happened, as the daemon knows it.
#[derive(Debug, Clone)]
pub enum BusEvent {
    /// A client asked for something (`request.*`); `payload` says what and who.
    Request { topic: &'static str, payload: Value },
    /// A procedure entered a state.
    StateChanged(StateChanged),
    /// A procedure failed; this is its stack trace.
    StackTrace { id: u64, trace: String },
    /// A script published a message.
    Script {
        id: u64,
        topic: String,
        payload: Value,
    },
    /// An activity entered a state, or recorded why it cannot go on as asked.
    Activity {
        news: ActivityNews,
        summary: Arc<ActivitySummary>,
    },
    /// An activity's `main` started: its scheduling block is being observed.
    SbStarted {
        activity_id: u64,
        procedure_id: u64,
        sbd_id: String,
        sbi_id: String,
    },
}

/// A procedure's state change.
#[derive(Debug, Clone)]
pub struct StateChanged {
    pub id: u64,
    pub from: Option<ProcedureState>,
    pub to: ProcedureState,
    /// For RUNNING, the function whose call started it.
    pub function: Option<String>,
    pub at: Timestamp,
    /// The procedure as it is after the change.
    pub summary: Arc<ProcedureSummary>,
}

/// What an activity event tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActivityNews {
    /// It entered the state in its summary.
    Entered,
    /// It cannot go on as asked; its summary's `error` says why.
    Error,
}
