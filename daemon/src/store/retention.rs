//! Retention: removes final procedures and activities older than the age bound or beyond
//! the count bound, in the background, on a connection of its own, a small batch per
//! transaction so that the writer is never held up for long. Live records are never
//! removed. An activity's SBD file goes with its record.

use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, RecvTimeoutError};

use oet_protocol::now;
use rusqlite::{params, Connection, TransactionBehavior};
use tracing::{info, warn};

use super::config::StoreConfig;

/// Rows removed per transaction.
const BATCH: i64 = 500;

/// What one pass removed.
#[derive(Debug, Default, PartialEq)]
pub struct Removed {
    pub procedures: u64,
    pub activities: u64,
}

/// Runs retention every `retention_interval` until `stop` is sent to or dropped.
pub(super) fn run(conn: Connection, config: StoreConfig, sb_dir: PathBuf, stop: Receiver<()>) {
    loop {
        match enforce(&conn, &config, &sb_dir) {
            Ok(removed) if removed != Removed::default() => info!(
                "store retention removed {} procedures and {} activities",
                removed.procedures, removed.activities
            ),
            Ok(_) => {}
            Err(err) => warn!("store retention did not complete: {err}; it is tried again later"),
        }
        match stop.recv_timeout(config.retention_interval()) {
            Err(RecvTimeoutError::Timeout) => continue,
            _ => return,
        }
    }
}

/// One pass of retention.
pub(super) fn enforce(
    conn: &Connection,
    config: &StoreConfig,
    sb_dir: &Path,
) -> rusqlite::Result<Removed> {
    let oldest = config.max_age().map(|age| now() - age.as_secs_f64());
    let procedures = remove(
        conn,
        "procedures",
        oldest,
        config.max_procedures,
        |_| Ok(()),
    )?;
    let activities = remove(conn, "activities", oldest, config.max_activities, |tx| {
        let mut files = tx.prepare_cached(
            "SELECT sb_file FROM activities WHERE id IN (SELECT id FROM doomed) AND sb_file IS NOT NULL",
        )?;
        for file in files.query_map([], |row| row.get::<_, String>(0))? {
            remove_sb_file(sb_dir, Path::new(&file?));
        }
        Ok(())
    })?;
    Ok(Removed {
        procedures,
        activities,
    })
}

/// Removes the final rows of `table` that ended before `oldest` or are beyond the newest
/// `keep` final ones (0: any number), a batch at a time; `before` sees each batch (in the
/// temporary table `doomed`) before it goes.
fn remove(
    conn: &Connection,
    table: &str,
    oldest: Option<f64>,
    keep: u64,
    before: impl Fn(&Connection) -> rusqlite::Result<()>,
) -> rusqlite::Result<u64> {
    let keep = if keep == 0 {
        i64::MAX
    } else {
        keep.min(i64::MAX as u64) as i64
    };
    let select = format!(
        "INSERT INTO doomed SELECT id FROM {table} WHERE final_at IS NOT NULL AND (
             (?1 IS NOT NULL AND final_at < ?1)
             OR id <= (SELECT id FROM {table} WHERE final_at IS NOT NULL
                       ORDER BY id DESC LIMIT 1 OFFSET ?2))
         ORDER BY id LIMIT ?3"
    );
    let mut total = 0;
    loop {
        let tx = rusqlite::Transaction::new_unchecked(conn, TransactionBehavior::Immediate)?;
        tx.execute_batch(
            "CREATE TEMP TABLE IF NOT EXISTS doomed (id INTEGER PRIMARY KEY); DELETE FROM doomed;",
        )?;
        let found = tx.execute(&select, params![oldest, keep, BATCH])?;
        if found == 0 {
            tx.commit()?;
            return Ok(total);
        }
        before(&tx)?;
        tx.execute(
            &format!("DELETE FROM {table} WHERE id IN (SELECT id FROM doomed)"),
            [],
        )?;
        tx.commit()?;
        total += found as u64;
    }
}

/// Removes an activity's SBD file, if it is one of oetd's: a file directly in the SBD
/// directory. A name from the store is never followed anywhere else.
pub(super) fn remove_sb_file(sb_dir: &Path, file: &Path) {
    let ours = file.parent() == Some(sb_dir)
        && file
            .file_name()
            .and_then(|name| name.to_str())
            .is_some_and(|name| name.starts_with("sb-") && name.ends_with(".json"));
    if !ours {
        return;
    }
    if let Err(err) = std::fs::remove_file(file) {
        if err.kind() != std::io::ErrorKind::NotFound {
            warn!("cannot remove SBD file {}: {err}", file.display());
        }
    }
}
