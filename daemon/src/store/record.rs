//! What the store is told to write, and how each record becomes rows.

use std::path::PathBuf;
use std::sync::Arc;

use oet_protocol::{
    ActivityStateChange, ActivitySummary, CallRecord, GitCheckout, LogLine, ProcedureSummary,
    ResourceUsage, StateChange,
};
use rusqlite::{params, Connection};
use serde::Serialize;

/// One change to write. Each is small, and written in the order it was recorded.
#[derive(Debug, Clone)]
pub enum Record {
    /// A new procedure, with its first state and the call of `init` when it has one.
    ProcedureCreated(Arc<ProcedureSummary>),
    /// A call of a script function, the `seq`-th of its procedure.
    Call {
        id: u64,
        seq: usize,
        call: CallRecord,
    },
    /// A state entered, the `seq`-th of its procedure's history; with the stack trace
    /// recorded with it, and the kept output once the state is final.
    ProcedureState {
        id: u64,
        seq: usize,
        change: StateChange,
        stacktrace: Option<String>,
        output: Option<KeptOutput>,
    },
    /// Where a procedure's git script was checked out from.
    Checkout { id: u64, checkout: GitCheckout },
    /// What a procedure's cgroup measured in the end.
    Resources { id: u64, usage: ResourceUsage },
    /// The worker process of a procedure: its PID and its start time in clock ticks
    /// since boot, which tell it apart from a later process given the same PID.
    Worker { id: u64, pid: u32, start_time: u64 },
    /// A new activity, with the SBD file handed to its script.
    ActivityCreated {
        summary: Arc<ActivitySummary>,
        sb_file: PathBuf,
    },
    /// A state an activity entered, the `seq`-th of its history, and why when it did
    /// not go as asked.
    ActivityState {
        id: u64,
        seq: usize,
        change: ActivityStateChange,
        error: Option<String>,
    },
    /// Why an activity cannot go on as asked.
    ActivityError { id: u64, error: String },
}

/// The output lines kept of a procedure, written once it is final.
#[derive(Debug, Clone, PartialEq)]
pub struct KeptOutput {
    pub dropped: u64,
    pub lines: Vec<LogLine>,
}

pub(super) fn to_json<T: Serialize>(value: &T) -> rusqlite::Result<String> {
    serde_json::to_string(value).map_err(|err| rusqlite::Error::ToSqlConversionFailure(err.into()))
}

impl Record {
    /// Writes the record's rows.
    pub(super) fn apply(&self, conn: &Connection) -> rusqlite::Result<()> {
        match self {
            Record::ProcedureCreated(summary) => {
                let final_at = final_at(
                    summary.state.is_final(),
                    summary.history.last().map(|c| c.time),
                );
                conn.prepare_cached(
                    "INSERT INTO procedures (id, script, script_uri, created_at, state, final_at,
                         stacktrace, checkout, resources)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                )?
                .execute(params![
                    summary.id as i64,
                    to_json(&summary.script)?,
                    summary.script.uri(),
                    summary.created_at(),
                    summary.state.as_str(),
                    final_at,
                    summary.stacktrace,
                    summary.checkout.as_ref().map(to_json).transpose()?,
                    summary.resources.as_ref().map(to_json).transpose()?,
                ])?;
                for (seq, call) in summary.calls.iter().enumerate() {
                    insert_call(conn, summary.id, seq, call)?;
                }
                for (seq, change) in summary.history.iter().enumerate() {
                    insert_state(conn, summary.id, seq, change)?;
                }
                issued(conn, "procedure", summary.id)
            }
            Record::Call { id, seq, call } => insert_call(conn, *id, *seq, call),
            Record::Checkout { id, checkout } => conn
                .prepare_cached("UPDATE procedures SET checkout = ?2 WHERE id = ?1")?
                .execute(params![*id as i64, to_json(checkout)?])
                .map(drop),
            Record::Resources { id, usage } => conn
                .prepare_cached("UPDATE procedures SET resources = ?2 WHERE id = ?1")?
                .execute(params![*id as i64, to_json(usage)?])
                .map(drop),
            Record::ProcedureState {
                id,
                seq,
                change,
                stacktrace,
                output,
            } => {
                insert_state(conn, *id, *seq, change)?;
                let final_at = final_at(change.state.is_final(), Some(change.time));
                conn.prepare_cached(
                    "UPDATE procedures SET state = ?2, final_at = ?3,
                         stacktrace = COALESCE(?4, stacktrace) WHERE id = ?1",
                )?
                .execute(params![
                    *id as i64,
                    change.state.as_str(),
                    final_at,
                    stacktrace
                ])?;
                if let Some(output) = output {
                    conn.prepare_cached(
                        "INSERT OR REPLACE INTO procedure_output (procedure_id, dropped, lines)
                         VALUES (?1, ?2, ?3)",
                    )?
                    .execute(params![
                        *id as i64,
                        output.dropped as i64,
                        to_json(&output.lines)?
                    ])?;
                }
                Ok(())
            }
            Record::Worker {
                id,
                pid,
                start_time,
            } => conn
                .prepare_cached(
                    "INSERT OR REPLACE INTO procedure_workers (procedure_id, pid, start_time)
                     VALUES (?1, ?2, ?3)",
                )?
                .execute(params![*id as i64, *pid, *start_time as i64])
                .map(drop),
            Record::ActivityCreated { summary, sb_file } => {
                let final_at = final_at(
                    summary.state.is_final(),
                    summary.history.last().map(|c| c.time),
                );
                conn.prepare_cached(
                    "INSERT INTO activities (id, activity_name, sbd_id, sbi_id, procedure_id,
                         script_args, prepare_only, created_at, state, final_at, error, sb_file)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
                )?
                .execute(params![
                    summary.id as i64,
                    summary.activity_name,
                    summary.sbd_id,
                    summary.sbi_id,
                    summary.procedure_id.map(|id| id as i64),
                    to_json(&summary.script_args)?,
                    summary.prepare_only,
                    summary.created_at(),
                    summary.state.as_str(),
                    final_at,
                    summary.error,
                    sb_file.to_string_lossy(),
                ])?;
                for (seq, change) in summary.history.iter().enumerate() {
                    insert_activity_state(conn, summary.id, seq, change)?;
                }
                issued(conn, "activity", summary.id)
            }
            Record::ActivityState {
                id,
                seq,
                change,
                error,
            } => {
                insert_activity_state(conn, *id, *seq, change)?;
                let final_at = final_at(change.state.is_final(), Some(change.time));
                // A final state says why the activity ended, and nothing older.
                conn.prepare_cached(
                    "UPDATE activities SET state = ?2, final_at = ?3,
                         error = CASE WHEN ?3 IS NOT NULL THEN ?4 ELSE COALESCE(?4, error) END
                     WHERE id = ?1",
                )?
                .execute(params![*id as i64, change.state.as_str(), final_at, error])
                .map(drop)
            }
            Record::ActivityError { id, error } => conn
                .prepare_cached("UPDATE activities SET error = ?2 WHERE id = ?1")?
                .execute(params![*id as i64, error])
                .map(drop),
        }
    }
}

/// When a record ended: the time of its last state, if that state is final.
fn final_at(is_final: bool, last: Option<f64>) -> Option<f64> {
    last.filter(|_| is_final)
}

fn insert_call(conn: &Connection, id: u64, seq: usize, call: &CallRecord) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO procedure_calls (procedure_id, seq, function, args, time)
         VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![
        id as i64,
        seq as i64,
        call.function,
        to_json(&call.args)?,
        call.time
    ])
    .map(drop)
}

fn insert_state(
    conn: &Connection,
    id: u64,
    seq: usize,
    change: &StateChange,
) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO procedure_states (procedure_id, seq, state, time, function, note)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![
        id as i64,
        seq as i64,
        change.state.as_str(),
        change.time,
        change.function,
        change.note,
    ])
    .map(drop)
}

fn insert_activity_state(
    conn: &Connection,
    id: u64,
    seq: usize,
    change: &ActivityStateChange,
) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO activity_states (activity_id, seq, state, time) VALUES (?1, ?2, ?3, ?4)",
    )?
    .execute(params![
        id as i64,
        seq as i64,
        change.state.as_str(),
        change.time
    ])
    .map(drop)
}

/// Remembers `id` as issued, so that it is never issued again.
fn issued(conn: &Connection, kind: &str, id: u64) -> rusqlite::Result<()> {
    conn.prepare_cached("UPDATE issued_ids SET last_id = MAX(last_id, ?2) WHERE kind = ?1")?
        .execute(params![kind, id as i64])
        .map(drop)
}
