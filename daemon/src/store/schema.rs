//! The store's schema and its migrations. `PRAGMA user_version` holds the version a
//! store file is at; at start-up every migration after it runs, each in its own
//! transaction, so a store of any earlier release opens with this one. A migration, once
//! released, is never edited: a change is a new migration at the end of [`MIGRATIONS`].

use rusqlite::{Connection, TransactionBehavior};

/// The migrations, in order: applying the first `n` gives schema version `n`.
pub(super) const MIGRATIONS: &[&str] = &[
    // 1: procedures and activities, their calls and state changes, kept output, and the
    // highest IDs ever issued (so that IDs are never reused, whatever retention removed).
    r#"
    CREATE TABLE issued_ids (
        kind TEXT PRIMARY KEY,
        last_id INTEGER NOT NULL
    );
    INSERT INTO issued_ids (kind, last_id) VALUES ('procedure', 0), ('activity', 0);
    CREATE TABLE procedures (
        id INTEGER PRIMARY KEY,
        script TEXT NOT NULL,
        script_uri TEXT NOT NULL,
        created_at REAL NOT NULL,
        state TEXT NOT NULL,
        final_at REAL,
        stacktrace TEXT
    );
    CREATE TABLE procedure_calls (
        procedure_id INTEGER NOT NULL REFERENCES procedures (id) ON DELETE CASCADE,
        seq INTEGER NOT NULL,
        function TEXT NOT NULL,
        args TEXT NOT NULL,
        time REAL NOT NULL,
        PRIMARY KEY (procedure_id, seq)
    );
    CREATE TABLE procedure_states (
        procedure_id INTEGER NOT NULL REFERENCES procedures (id) ON DELETE CASCADE,
        seq INTEGER NOT NULL,
        state TEXT NOT NULL,
        time REAL NOT NULL,
        function TEXT,
        note TEXT,
        PRIMARY KEY (procedure_id, seq)
    );
    CREATE TABLE procedure_output (
        procedure_id INTEGER PRIMARY KEY REFERENCES procedures (id) ON DELETE CASCADE,
        dropped INTEGER NOT NULL,
        lines TEXT NOT NULL
    );
    CREATE TABLE activities (
        id INTEGER PRIMARY KEY,
        activity_name TEXT NOT NULL,
        sbd_id TEXT NOT NULL,
        sbi_id TEXT,
        procedure_id INTEGER,
        script_args TEXT NOT NULL,
        prepare_only INTEGER NOT NULL,
        created_at REAL NOT NULL,
        state TEXT NOT NULL,
        final_at REAL,
        error TEXT,
        sb_file TEXT
    );
    CREATE TABLE activity_states (
        activity_id INTEGER NOT NULL REFERENCES activities (id) ON DELETE CASCADE,
        seq INTEGER NOT NULL,
        state TEXT NOT NULL,
        time REAL NOT NULL,
        PRIMARY KEY (activity_id, seq)
    );
    "#,
    // 2: the worker process of each procedure, so that a restart can find what an
    // interrupted procedure left running (the start time tells a reused PID apart);
    // indexes for retention and for history queries by state and time.
    r#"
    CREATE TABLE procedure_workers (
        procedure_id INTEGER PRIMARY KEY REFERENCES procedures (id) ON DELETE CASCADE,
        pid INTEGER NOT NULL,
        start_time INTEGER NOT NULL
    );
    CREATE INDEX procedures_final_at ON procedures (final_at);
    CREATE INDEX procedures_state ON procedures (state);
    CREATE INDEX activities_final_at ON activities (final_at);
    CREATE INDEX activities_state ON activities (state);
    "#,
    // 3: where a git script was checked out from (repository, branch, commit), and
    // what its cgroup measured (peak memory, CPU time, the limits applied), as JSON.
    r#"
    ALTER TABLE procedures ADD COLUMN checkout TEXT;
    ALTER TABLE procedures ADD COLUMN resources TEXT;
    "#,
];

/// The schema version this oetd writes.
pub(super) const CURRENT: i64 = MIGRATIONS.len() as i64;

/// The schema version of an open store.
pub(super) fn version(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row("PRAGMA user_version", [], |row| row.get(0))
}

/// Brings the store up to `target` (at most [`CURRENT`]); returns the version it was at.
/// A store newer than this oetd is left alone: the caller refuses it.
pub(super) fn migrate(conn: &mut Connection, target: i64) -> rusqlite::Result<i64> {
    let found = version(conn)?;
    for (index, sql) in MIGRATIONS.iter().enumerate().take(target as usize) {
        let to = index as i64 + 1;
        if to <= found {
            continue;
        }
        let tx = conn.transaction_with_behavior(TransactionBehavior::Exclusive)?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", to)?;
        tx.commit()?;
    }
    Ok(found)
}
