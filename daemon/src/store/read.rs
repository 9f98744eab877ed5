//! Reading records back: one procedure or activity whole, pages of the history, and what
//! start-up recovery needs.

use std::path::PathBuf;
use std::str::FromStr;

use oet_protocol::{
    ActivityState, ActivityStateChange, ActivitySummary, CallRecord, GitCheckout, LogLine,
    ProcedureState, ProcedureSummary, ResourceUsage, ScriptSpec, StateChange, Timestamp,
};
use rusqlite::types::Type;
use rusqlite::{params, Connection, OptionalExtension, Row};
use serde::de::DeserializeOwned;

use super::record::KeptOutput;

/// Which records of the history to read: newest first.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HistoryQuery {
    /// Created at or after this time.
    pub since: Option<Timestamp>,
    /// In this state (its upstream name, e.g. `COMPLETE`).
    pub state: Option<&'static str>,
    /// With an ID below this one.
    pub before: Option<u64>,
    pub limit: u32,
}

/// A procedure that was not final when oetd stopped.
#[derive(Debug, Clone, PartialEq)]
pub struct Interrupted {
    pub id: u64,
    pub state: ProcedureState,
    /// How many states its history holds: the next one is recorded at this index.
    pub history_len: usize,
    /// Its worker process, when one was started: PID and start time.
    pub worker: Option<(u32, u64)>,
}

fn from_json<T: DeserializeOwned>(index: usize, text: &str) -> rusqlite::Result<T> {
    serde_json::from_str(text)
        .map_err(|err| rusqlite::Error::FromSqlConversionFailure(index, Type::Text, err.into()))
}

fn parse<T: FromStr<Err = String>>(index: usize, text: &str) -> rusqlite::Result<T> {
    text.parse().map_err(|err: String| {
        rusqlite::Error::FromSqlConversionFailure(index, Type::Text, err.into())
    })
}

fn id_of(row: &Row<'_>, index: usize) -> rusqlite::Result<u64> {
    let id: i64 = row.get(index)?;
    u64::try_from(id)
        .map_err(|err| rusqlite::Error::FromSqlConversionFailure(index, Type::Integer, err.into()))
}

/// One procedure, whole.
pub(super) fn procedure(conn: &Connection, id: u64) -> rusqlite::Result<Option<ProcedureSummary>> {
    let head = conn
        .prepare_cached(
            "SELECT script, state, stacktrace, checkout, resources FROM procedures WHERE id = ?1",
        )?
        .query_row(params![id as i64], |row| {
            let script: String = row.get(0)?;
            let state: String = row.get(1)?;
            let checkout = match row.get::<_, Option<String>>(3)? {
                Some(json) => Some(from_json::<GitCheckout>(3, &json)?),
                None => None,
            };
            let resources = match row.get::<_, Option<String>>(4)? {
                Some(json) => Some(from_json::<ResourceUsage>(4, &json)?),
                None => None,
            };
            Ok((
                from_json::<ScriptSpec>(0, &script)?,
                parse::<ProcedureState>(1, &state)?,
                row.get::<_, Option<String>>(2)?,
                checkout,
                resources,
            ))
        })
        .optional()?;
    let Some((script, state, stacktrace, checkout, resources)) = head else {
        return Ok(None);
    };
    let calls = conn
        .prepare_cached(
            "SELECT function, args, time FROM procedure_calls WHERE procedure_id = ?1 ORDER BY seq",
        )?
        .query_map(params![id as i64], |row| {
            let args: String = row.get(1)?;
            Ok(CallRecord {
                function: row.get(0)?,
                args: from_json(1, &args)?,
                time: row.get(2)?,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let history = conn
        .prepare_cached(
            "SELECT state, time, function, note FROM procedure_states WHERE procedure_id = ?1
             ORDER BY seq",
        )?
        .query_map(params![id as i64], |row| {
            let state: String = row.get(0)?;
            Ok(StateChange {
                state: parse(0, &state)?,
                time: row.get(1)?,
                function: row.get(2)?,
                note: row.get(3)?,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(Some(ProcedureSummary {
        id,
        script,
        checkout,
        calls,
        history,
        stacktrace,
        state,
        resources,
    }))
}

/// The kept output of a procedure: `None` for an unknown procedure, `Some(None)` when
/// its output was not kept.
pub(super) fn output(conn: &Connection, id: u64) -> rusqlite::Result<Option<Option<KeptOutput>>> {
    let known = conn
        .prepare_cached("SELECT 1 FROM procedures WHERE id = ?1")?
        .query_row(params![id as i64], |_| Ok(()))
        .optional()?;
    if known.is_none() {
        return Ok(None);
    }
    let output = conn
        .prepare_cached("SELECT dropped, lines FROM procedure_output WHERE procedure_id = ?1")?
        .query_row(params![id as i64], |row| {
            let dropped: i64 = row.get(0)?;
            let lines: String = row.get(1)?;
            Ok(KeptOutput {
                dropped: dropped.max(0) as u64,
                lines: from_json::<Vec<LogLine>>(1, &lines)?,
            })
        })
        .optional()?;
    Ok(Some(output))
}

/// The IDs of a page of the procedure or activity history, newest first.
pub(super) fn page(
    conn: &Connection,
    table: Table,
    query: &HistoryQuery,
) -> rusqlite::Result<Vec<u64>> {
    let sql = format!(
        "SELECT id FROM {} WHERE (?1 IS NULL OR created_at >= ?1) AND (?2 IS NULL OR state = ?2)
         AND (?3 IS NULL OR id < ?3) ORDER BY id DESC LIMIT ?4",
        table.name()
    );
    conn.prepare_cached(&sql)?
        .query_map(
            params![
                query.since,
                query.state,
                query.before.map(|id| id.min(i64::MAX as u64) as i64),
                query.limit
            ],
            |row| id_of(row, 0),
        )?
        .collect()
}

/// The two tables whose rows are paged.
#[derive(Debug, Clone, Copy)]
pub(super) enum Table {
    Procedures,
    Activities,
}

impl Table {
    fn name(self) -> &'static str {
        match self {
            Table::Procedures => "procedures",
            Table::Activities => "activities",
        }
    }
}

/// One activity, whole.
pub(super) fn activity(conn: &Connection, id: u64) -> rusqlite::Result<Option<ActivitySummary>> {
    let head = conn
        .prepare_cached(
            "SELECT activity_name, sbd_id, sbi_id, procedure_id, script_args, prepare_only, state,
                 error FROM activities WHERE id = ?1",
        )?
        .query_row(params![id as i64], |row| {
            let script_args: String = row.get(4)?;
            let state: String = row.get(6)?;
            let procedure_id: Option<i64> = row.get(3)?;
            Ok(ActivitySummary {
                id,
                activity_name: row.get(0)?,
                sbd_id: row.get(1)?,
                sbi_id: row.get(2)?,
                procedure_id: procedure_id.and_then(|id| u64::try_from(id).ok()),
                script_args: from_json(4, &script_args)?,
                prepare_only: row.get(5)?,
                history: Vec::new(),
                state: parse(6, &state)?,
                error: row.get(7)?,
            })
        })
        .optional()?;
    let Some(mut summary) = head else {
        return Ok(None);
    };
    summary.history = conn
        .prepare_cached(
            "SELECT state, time FROM activity_states WHERE activity_id = ?1 ORDER BY seq",
        )?
        .query_map(params![id as i64], |row| {
            let state: String = row.get(0)?;
            Ok(ActivityStateChange {
                state: parse::<ActivityState>(0, &state)?,
                time: row.get(1)?,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(Some(summary))
}

/// The highest procedure and activity IDs ever issued.
pub(super) fn issued(conn: &Connection) -> rusqlite::Result<(u64, u64)> {
    let last = |kind: &str| -> rusqlite::Result<u64> {
        let recorded: i64 = conn
            .prepare_cached("SELECT last_id FROM issued_ids WHERE kind = ?1")?
            .query_row(params![kind], |row| row.get(0))
            .optional()?
            .unwrap_or(0);
        Ok(recorded.max(0) as u64)
    };
    Ok((last("procedure")?, last("activity")?))
}

/// The procedures that are not final, with their worker processes.
pub(super) fn interrupted(conn: &Connection) -> rusqlite::Result<Vec<Interrupted>> {
    conn.prepare_cached(
        "SELECT p.id, p.state, (SELECT COUNT(*) FROM procedure_states s WHERE s.procedure_id = p.id),
             w.pid, w.start_time
         FROM procedures p LEFT JOIN procedure_workers w ON w.procedure_id = p.id
         WHERE p.final_at IS NULL ORDER BY p.id",
    )?
    .query_map([], |row| {
        let state: String = row.get(1)?;
        let count: i64 = row.get(2)?;
        let pid: Option<u32> = row.get(3)?;
        let start: Option<i64> = row.get(4)?;
        Ok(Interrupted {
            id: id_of(row, 0)?,
            state: parse(1, &state)?,
            history_len: count.max(0) as usize,
            worker: pid.zip(start.map(|s| s.max(0) as u64)),
        })
    })?
    .collect()
}

/// The IDs of the activities that are not final.
pub(super) fn live_activities(conn: &Connection) -> rusqlite::Result<Vec<u64>> {
    conn.prepare_cached("SELECT id FROM activities WHERE final_at IS NULL ORDER BY id")?
        .query_map([], |row| id_of(row, 0))?
        .collect()
}

/// The IDs of the `count` procedures that became final last, in the order they did.
pub(super) fn last_final(conn: &Connection, count: usize) -> rusqlite::Result<Vec<u64>> {
    let mut ids = conn
        .prepare_cached(
            "SELECT id FROM procedures WHERE final_at IS NOT NULL ORDER BY final_at DESC, id DESC
             LIMIT ?1",
        )?
        .query_map(params![count as i64], |row| id_of(row, 0))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    ids.reverse();
    Ok(ids)
}

/// The SBD files the stored activities name.
pub(super) fn sb_files(conn: &Connection) -> rusqlite::Result<Vec<PathBuf>> {
    conn.prepare_cached("SELECT sb_file FROM activities WHERE sb_file IS NOT NULL")?
        .query_map([], |row| row.get::<_, String>(0).map(PathBuf::from))?
        .collect()
}
