//! The durable store: every procedure and activity — script, calls and arguments, every
//! state change with its time, stack traces, kept output, the SBI link — in an SQLite
//! database in the state directory, so that nothing is lost across restarts and crashes.
//!
//! - [`Store::record`] queues records with the bus events that announce them. The
//!   writer thread (`writer`) commits them in batches and only then publishes the
//!   events, in recording order: what a listener saw is on disk.
//! - Reads (`read`) use a connection of their own, which WAL lets run beside the writer.
//! - `retention` removes old final records in the background; `schema` migrates a store
//!   of any earlier version at start-up.
//! - When the storage fails, the store says why ([`Store::problem`]); callers refuse
//!   creates meanwhile ([`Store::writable`]), and the records wait to be written.

mod config;
mod error;
mod read;
mod record;
pub mod retention;
pub(crate) mod schema;
mod writer;

use std::collections::VecDeque;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use oet_protocol::{ActivitySummary, ProcedureSummary};
use rusqlite::{Connection, OpenFlags};
use tokio::sync::{oneshot, watch};
use tracing::{error, info};

pub use config::StoreConfig;
pub use error::StoreError;
pub use read::{HistoryQuery, Interrupted};
pub use record::{KeptOutput, Record};

use read::Table;
pub use writer::Progress;
use writer::{Msg, Op, Writer};

/// A cheap handle to the store; clone it freely.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Shared>,
}

struct Shared {
    path: PathBuf,
    bus: crate::events::EventBus,
    queue: Mutex<Queue>,
    progress: watch::Sender<Progress>,
    /// `None` when the store could not be opened.
    reader: Option<Mutex<Connection>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    stop_retention: Mutex<Option<mpsc::Sender<()>>>,
}

struct Queue {
    last_seq: u64,
    inbox: mpsc::Sender<Msg>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Opens a connection with the store's settings: WAL, a full sync at each commit (so
/// that a commit survives a power cut, not only a crash), foreign keys enforced.
fn connect(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(Duration::from_secs(5))?;
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CANTOPEN),
            Some(format!(
                "the store cannot use write-ahead logging (journal mode stays {mode})"
            )),
        ));
    }
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    Ok(conn)
}

impl Store {
    /// Opens (creating it if needed) the store at `file` and migrates it to the current
    /// schema, then starts its writer and its retention; `sb_dir` is where activities'
    /// SBD files are, which retention removes with their records. A store that cannot be
    /// opened is returned too, unavailable: it says why, and refuses every write.
    pub fn open(
        config: &StoreConfig,
        file: &Path,
        sb_dir: &Path,
        bus: crate::events::EventBus,
    ) -> Store {
        match Store::try_open(config, file, sb_dir, bus.clone()) {
            Ok(store) => store,
            Err(err) => {
                error!(store = %file.display(), "{err}; oetd runs without its history, and refuses creates");
                Store::start(file, bus, None, Some(err))
            }
        }
    }

    fn try_open(
        config: &StoreConfig,
        file: &Path,
        sb_dir: &Path,
        bus: crate::events::EventBus,
    ) -> Result<Store, StoreError> {
        let failed = |err: rusqlite::Error| StoreError::from_sqlite(file, &err);
        if let Some(dir) = file.parent() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|err| StoreError::Open {
                    path: file.to_owned(),
                    detail: format!("cannot create {}: {err}", dir.display()),
                })?;
        }
        let mut writer = connect(file).map_err(failed)?;
        let found = schema::version(&writer).map_err(failed)?;
        if found > schema::CURRENT {
            return Err(StoreError::NewerSchema {
                path: file.to_owned(),
                found,
                known: schema::CURRENT,
            });
        }
        schema::migrate(&mut writer, schema::CURRENT).map_err(failed)?;
        if found < schema::CURRENT {
            info!(
                store = %file.display(),
                "store {} migrated from schema version {found} to {}",
                file.display(),
                schema::CURRENT
            );
        }
        let reader = connect(file).map_err(failed)?;
        let retention = connect(file).map_err(failed)?;
        let store = Store::start(file, bus, Some((writer, reader)), None);
        let (stop, stopped) = mpsc::channel();
        let (config, sb_dir) = (config.clone(), sb_dir.to_owned());
        let thread = std::thread::Builder::new()
            .name("store-retention".into())
            .spawn(move || retention::run(retention, config, sb_dir, stopped))
            .map_err(|err| StoreError::Open {
                path: file.to_owned(),
                detail: format!("cannot start the retention thread: {err}"),
            })?;
        *lock(&store.inner.stop_retention) = Some(stop);
        lock(&store.inner.threads).push(thread);
        Ok(store)
    }

    /// Starts the writer over `conns` (writer, reader), or without them (unavailable,
    /// for `problem`).
    fn start(
        file: &Path,
        bus: crate::events::EventBus,
        conns: Option<(Connection, Connection)>,
        problem: Option<StoreError>,
    ) -> Store {
        let (inbox, outbox) = mpsc::channel();
        let progress = watch::Sender::new(Progress {
            committed: 0,
            problem,
        });
        let (writer_conn, reader) = match conns {
            Some((w, r)) => (Some(w), Some(Mutex::new(r))),
            None => (None, None),
        };
        let writer = Writer {
            path: file.to_owned(),
            conn: writer_conn,
            bus: bus.clone(),
            progress: progress.clone(),
            pending: VecDeque::new(),
            retry_at: None,
        };
        let store = Store {
            inner: Arc::new(Shared {
                path: file.to_owned(),
                bus,
                queue: Mutex::new(Queue { last_seq: 0, inbox }),
                progress,
                reader,
                threads: Mutex::new(Vec::new()),
                stop_retention: Mutex::new(None),
            }),
        };
        match std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || writer.run(outbox))
        {
            Ok(thread) => lock(&store.inner.threads).push(thread),
            Err(err) => {
                // Without a writer, nothing can be recorded or announced in order.
                error!("cannot start the store's writer thread: {err}");
            }
        }
        store
    }

    /// The store's database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    pub fn bus(&self) -> &crate::events::EventBus {
        &self.inner.bus
    }

    /// Queues `records` to be written, and `events` to be published once they are:
    /// after every change recorded before, and before every change recorded after.
    /// Returns the change's number (see [`Store::committed`]).
    pub fn record(&self, records: Vec<Record>, events: Vec<crate::events::BusEvent>) -> u64 {
        let mut queue = lock(&self.inner.queue);
        queue.last_seq += 1;
        let seq = queue.last_seq;
        if let Err(mpsc::SendError(Msg::Op(op))) = queue.inbox.send(Msg::Op(Op {
            seq,
            records,
            events,
        })) {
            // The writer has ended (oetd is stopping): nothing more can be written.
            for record in &op.records {
                error!(
                    store = %self.inner.path.display(),
                    "a record was lost, not written to the store (the store is closed): {record:?}"
                );
            }
            for event in op.events {
                self.inner.bus.publish(event);
            }
        }
        seq
    }

    /// Publishes an event that has nothing to record, in order with the recorded ones.
    pub fn publish(&self, event: crate::events::BusEvent) {
        self.record(Vec::new(), vec![event]);
    }

    /// The number of the last change written and announced.
    pub fn committed(&self) -> u64 {
        self.inner.progress.borrow().committed
    }

    /// Why the store cannot be written now, if it cannot.
    pub fn problem(&self) -> Option<StoreError> {
        self.inner.progress.borrow().problem.clone()
    }

    /// An error while the store cannot be written: what creates answer meanwhile.
    pub fn writable(&self) -> Result<(), StoreError> {
        match self.problem() {
            Some(problem) => Err(problem),
            None => Ok(()),
        }
    }

    /// A receiver woken whenever the writer progresses or its problem changes.
    pub fn progress(&self) -> watch::Receiver<Progress> {
        self.inner.progress.subscribe()
    }

    /// Waits until every change recorded so far is written and announced, or the store
    /// has a problem (the changes then wait, and the caller need not).
    pub async fn synced(&self) {
        let target = lock(&self.inner.queue).last_seq;
        let mut progress = self.inner.progress.subscribe();
        let _ = progress
            .wait_for(|p| p.committed >= target || p.problem.is_some())
            .await;
    }

    /// Writes what waits and stops the writer and retention. Records made afterwards
    /// are logged as lost.
    pub async fn close(&self) {
        if let Some(stop) = lock(&self.inner.stop_retention).take() {
            let _ = stop.send(());
        }
        let (done, closed) = oneshot::channel();
        if lock(&self.inner.queue).inbox.send(Msg::Close(done)).is_ok() {
            let _ = closed.await;
        }
        let threads: Vec<JoinHandle<()>> = lock(&self.inner.threads).drain(..).collect();
        let _ = tokio::task::spawn_blocking(move || {
            for thread in threads {
                let _ = thread.join();
            }
        })
        .await;
    }

    /// Runs `read` on the reading connection.
    fn read<T>(
        &self,
        read: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> Result<T, StoreError> {
        let Some(reader) = &self.inner.reader else {
            return Err(self.problem().unwrap_or_else(|| StoreError::Open {
                path: self.inner.path.clone(),
                detail: "it was not opened".into(),
            }));
        };
        read(&lock(reader)).map_err(|err| StoreError::from_sqlite(&self.inner.path, &err))
    }

    /// One procedure, as last written.
    pub fn procedure(&self, id: u64) -> Result<Option<ProcedureSummary>, StoreError> {
        self.read(|conn| read::procedure(conn, id))
    }

    /// A procedure's kept output: `None` for an unknown procedure, `Some(None)` when its
    /// output was not kept.
    pub fn output(&self, id: u64) -> Result<Option<Option<KeptOutput>>, StoreError> {
        self.read(|conn| read::output(conn, id))
    }

    /// A page of the procedure history, newest first.
    pub fn procedures(&self, query: &HistoryQuery) -> Result<Vec<ProcedureSummary>, StoreError> {
        self.read(|conn| {
            read::page(conn, Table::Procedures, query)?
                .into_iter()
                .filter_map(|id| read::procedure(conn, id).transpose())
                .collect()
        })
    }

    /// One activity, as last written.
    pub fn activity(&self, id: u64) -> Result<Option<ActivitySummary>, StoreError> {
        self.read(|conn| read::activity(conn, id))
    }

    /// A page of the activity history, newest first.
    pub fn activities(&self, query: &HistoryQuery) -> Result<Vec<ActivitySummary>, StoreError> {
        self.read(|conn| {
            read::page(conn, Table::Activities, query)?
                .into_iter()
                .filter_map(|id| read::activity(conn, id).transpose())
                .collect()
        })
    }

    /// The highest procedure and activity IDs ever issued (0 and 0 for a store that
    /// could not be opened, which issues none).
    pub fn issued(&self) -> Result<(u64, u64), StoreError> {
        self.read(read::issued)
    }

    /// The procedures that were not final when oetd stopped.
    pub fn interrupted(&self) -> Result<Vec<Interrupted>, StoreError> {
        self.read(read::interrupted)
    }

    /// The activities that were not final when oetd stopped.
    pub fn live_activities(&self) -> Result<Vec<ActivitySummary>, StoreError> {
        self.read(|conn| {
            read::live_activities(conn)?
                .into_iter()
                .filter_map(|id| read::activity(conn, id).transpose())
                .collect()
        })
    }

    /// The `count` procedures that became final last, in the order they did.
    pub fn last_final(&self, count: usize) -> Result<Vec<ProcedureSummary>, StoreError> {
        self.read(|conn| {
            read::last_final(conn, count)?
                .into_iter()
                .filter_map(|id| read::procedure(conn, id).transpose())
                .collect()
        })
    }

    /// The SBD files the stored activities name.
    pub fn sb_files(&self) -> Result<Vec<PathBuf>, StoreError> {
        self.read(read::sb_files)
    }
}

#[cfg(test)]
mod tests;
