//! The writer thread: the one connection that writes, and the one place that announces
//! recorded changes on the bus. It takes every record queued since its last commit,
//! writes them in one transaction (group commit: one fsync for many changes), and only
//! then publishes their events, in the order they were recorded. So a listener never
//! sees a change that a crash could take back, and the records lock is never held across
//! an fsync.
//!
//! When a write fails for a reason of the storage (full, read-only, corrupt), the
//! records and their events wait, in order, and the write is tried again every
//! [`RETRY`]; the store's problem is published meanwhile, so that creates are refused
//! and `STATUS=` says why. Past [`PENDING_LIMIT`] waiting changes, the oldest is given
//! up: logged with its whole content, and its events published.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use rusqlite::{Connection, TransactionBehavior};
use tokio::sync::{oneshot, watch};
use tracing::{error, info};

use super::error::StoreError;
use super::record::Record;
use crate::events::{BusEvent, EventBus};

/// How long a failing store waits before it tries to write again.
pub(super) const RETRY: Duration = Duration::from_secs(1);

/// Changes kept waiting while the store cannot be written; past this, the oldest is
/// given up (and logged with its content).
const PENDING_LIMIT: usize = 100_000;

/// How far the writer has got, and what keeps it from writing.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Progress {
    /// The number of the last change written and announced.
    pub committed: u64,
    /// Why the store cannot be written now.
    pub problem: Option<StoreError>,
}

/// What the writer is sent.
pub(super) enum Msg {
    Op(Op),
    /// Write what waits, then answer and end.
    Close(oneshot::Sender<()>),
}

/// Records to write and the events that announce them, numbered in recording order.
pub(super) struct Op {
    pub seq: u64,
    pub records: Vec<Record>,
    pub events: Vec<BusEvent>,
}

pub(super) struct Writer {
    pub path: PathBuf,
    /// `None` when the store could not be opened at start-up: nothing can be written.
    pub conn: Option<Connection>,
    pub bus: EventBus,
    pub progress: watch::Sender<Progress>,
    pub pending: VecDeque<Op>,
    /// Set while failing: when to try again.
    pub retry_at: Option<Instant>,
}

impl Writer {
    pub fn run(mut self, inbox: Receiver<Msg>) {
        let mut closing: Option<oneshot::Sender<()>> = None;
        while closing.is_none() {
            // Wait for work; while failing, for the next attempt too.
            let first = match (self.pending.is_empty(), self.retry_at) {
                (true, _) => inbox.recv().ok(),
                (false, Some(at)) => {
                    match inbox.recv_timeout(at.saturating_duration_since(Instant::now())) {
                        Ok(msg) => Some(msg),
                        Err(RecvTimeoutError::Timeout) => None,
                        Err(RecvTimeoutError::Disconnected) => break,
                    }
                }
                (false, None) => None,
            };
            if first.is_none() && self.pending.is_empty() {
                // Every sender is gone: nothing more can come.
                break;
            }
            for msg in first
                .into_iter()
                .chain(std::iter::from_fn(|| inbox.try_recv().ok()))
            {
                match msg {
                    Msg::Op(op) => self.pending.push_back(op),
                    Msg::Close(done) => closing = Some(done),
                }
            }
            self.bound();
            let due = self.retry_at.is_none_or(|at| Instant::now() >= at);
            if due || closing.is_some() {
                self.flush();
            }
        }
        self.give_up();
        if let Some(done) = closing {
            let _ = done.send(());
        }
    }

    /// Writes every waiting record in one transaction and announces them; or, when the
    /// storage fails, keeps them waiting and says why.
    fn flush(&mut self) {
        if self.pending.is_empty() && self.retry_at.is_none() {
            return;
        }
        let has_records = self.pending.iter().any(|op| !op.records.is_empty());
        // A failing store is probed even with nothing to write, so that it is seen to
        // recover.
        if has_records || self.retry_at.is_some() {
            if let Err(err) = self.write() {
                self.failed(err);
                return;
            }
        }
        let written = self
            .pending
            .iter()
            .map(|op| op.records.len())
            .sum::<usize>();
        let last = self.pending.back().map(|op| op.seq);
        for op in self.pending.drain(..) {
            for event in op.events {
                self.bus.publish(event);
            }
        }
        if self.retry_at.take().is_some() {
            info!(
                store = %self.path.display(),
                "the store {} is writable again; {written} waiting records were written",
                self.path.display()
            );
        }
        self.progress.send_modify(|progress| {
            if let Some(last) = last {
                progress.committed = progress.committed.max(last);
            }
            progress.problem = None;
        });
    }

    fn write(&mut self) -> Result<(), StoreError> {
        let path = self.path.clone();
        let storage = |err: rusqlite::Error| StoreError::from_sqlite(&path, &err);
        let Some(conn) = self.conn.as_mut() else {
            return Err(self.progress.borrow().problem.clone().unwrap_or_else(|| {
                StoreError::Open {
                    path: path.clone(),
                    detail: "it was not opened".into(),
                }
            }));
        };
        let mut tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(storage)?;
        if self.pending.iter().all(|op| op.records.is_empty()) {
            // The probe of a failing store: a write that touches a page.
            tx.execute(
                "UPDATE issued_ids SET last_id = last_id WHERE kind = 'procedure'",
                [],
            )
            .map_err(storage)?;
        }
        for op in &self.pending {
            for record in &op.records {
                let mut savepoint = tx.savepoint().map_err(storage)?;
                match record.apply(&savepoint) {
                    Ok(()) => savepoint.commit().map_err(storage)?,
                    Err(err) => {
                        let err = storage(err);
                        if err.is_storage() {
                            return Err(err);
                        }
                        // This record alone cannot be written; the others can.
                        savepoint.rollback().map_err(storage)?;
                        error!(
                            store = %path.display(),
                            "a record was not written to the store ({err}); it was: {record:?}"
                        );
                    }
                }
            }
        }
        tx.commit().map_err(storage)
    }

    /// Notes a failed write: the problem is published (once per kind of failure) and the
    /// write is tried again later.
    fn failed(&mut self, err: StoreError) {
        let err = err.refined();
        self.retry_at = Some(Instant::now() + RETRY);
        let changed = self.progress.borrow().problem.as_ref() != Some(&err);
        if changed {
            error!(
                store = %self.path.display(),
                "{err}; {} changes wait to be written, creates are refused meanwhile",
                self.pending.len()
            );
            self.progress
                .send_modify(|progress| progress.problem = Some(err));
        }
    }

    /// Keeps the waiting changes within [`PENDING_LIMIT`].
    fn bound(&mut self) {
        while self.pending.len() > PENDING_LIMIT {
            if let Some(op) = self.pending.pop_front() {
                self.lose(op, "too many changes waited for the store");
            }
        }
    }

    /// At the end: whatever could not be written is lost, and said so with its content.
    fn give_up(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        self.retry_at = None;
        self.flush();
        let why = match &self.progress.borrow().problem {
            Some(problem) => problem.to_string(),
            None => "the store was closed".to_owned(),
        };
        while let Some(op) = self.pending.pop_front() {
            self.lose(op, &why);
        }
    }

    fn lose(&self, op: Op, why: &str) {
        for record in &op.records {
            error!(
                store = %self.path.display(),
                "a record was lost, not written to the store ({why}): {record:?}"
            );
        }
        for event in op.events {
            self.bus.publish(event);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use oet_protocol::{ProcedureState, ProcedureSummary, ScriptSpec, StateChange, Value};

    use super::*;
    use crate::events::{EventConfig, Received};

    fn summary(id: u64, trace_bytes: usize) -> Arc<ProcedureSummary> {
        Arc::new(ProcedureSummary {
            id,
            script: ScriptSpec::filesystem("file:///s.py"),
            checkout: None,
            resources: None,
            calls: Vec::new(),
            history: vec![StateChange::now(ProcedureState::Creating)],
            // Large enough to need pages the full store does not have.
            stacktrace: Some("x".repeat(trace_bytes)),
            state: ProcedureState::Creating,
        })
    }

    fn event(id: u64) -> BusEvent {
        BusEvent::Script {
            id,
            topic: "user.n".into(),
            payload: Value::Null,
        }
    }

    /// The ids of the events published so far.
    fn published(events: &mut crate::events::Subscription) -> Vec<u64> {
        std::iter::from_fn(|| events.try_recv())
            .map(|item| match item {
                Received::Event(published) => match published.event() {
                    BusEvent::Script { id, .. } => *id,
                    other => panic!("unexpected {other:?}"),
                },
                Received::Lagged(n) => panic!("lagged {n}"),
            })
            .collect()
    }

    #[test]
    fn a_full_store_holds_changes_and_their_events_until_it_can_write_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("history.sqlite");
        let mut conn = crate::store::connect(&path).expect("connect");
        crate::store::schema::migrate(&mut conn, crate::store::schema::CURRENT).expect("migrate");
        // As if the disk were full: the database may not grow by a page.
        let pages: i64 = conn
            .query_row("PRAGMA page_count", [], |row| row.get(0))
            .expect("page count");
        let limit: i64 = conn
            .query_row(&format!("PRAGMA max_page_count = {pages}"), [], |row| {
                row.get(0)
            })
            .expect("limit");
        assert_eq!(limit, pages);
        let bus = EventBus::new(EventConfig::default());
        let mut events = bus.subscribe();
        let (progress, watcher) = watch::channel(Progress::default());
        let mut writer = Writer {
            path: path.clone(),
            conn: Some(conn),
            bus,
            progress,
            pending: VecDeque::new(),
            retry_at: None,
        };
        for id in 1..=3 {
            writer.pending.push_back(Op {
                seq: id,
                records: vec![Record::ProcedureCreated(summary(id, 20_000))],
                events: vec![event(id)],
            });
        }
        writer.flush();
        let problem = watcher.borrow().problem.clone();
        assert!(
            matches!(problem, Some(StoreError::DiskFull { .. })),
            "{problem:?}"
        );
        assert!(
            published(&mut events).is_empty(),
            "nothing announced before it is written"
        );
        assert_eq!(writer.pending.len(), 3);
        assert!(writer.retry_at.is_some());

        // Another change waits behind them, in order.
        writer.pending.push_back(Op {
            seq: 4,
            records: Vec::new(),
            events: vec![event(4)],
        });
        writer.flush();
        assert!(published(&mut events).is_empty());

        // Room again: everything is written, then announced in order.
        if let Some(conn) = &writer.conn {
            let _: i64 = conn
                .query_row("PRAGMA max_page_count = 1000000", [], |row| row.get(0))
                .expect("limit");
        }
        writer.flush();
        assert_eq!(watcher.borrow().problem, None);
        assert_eq!(watcher.borrow().committed, 4);
        assert_eq!(published(&mut events), [1, 2, 3, 4]);
        assert!(writer.pending.is_empty() && writer.retry_at.is_none());
        let count: i64 = writer
            .conn
            .as_ref()
            .expect("conn")
            .query_row("SELECT COUNT(*) FROM procedures", [], |row| row.get(0))
            .expect("count");
        assert_eq!(count, 3);
    }

    #[test]
    fn a_record_that_cannot_be_written_is_logged_and_the_others_are_written() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("history.sqlite");
        let mut conn = crate::store::connect(&path).expect("connect");
        crate::store::schema::migrate(&mut conn, crate::store::schema::CURRENT).expect("migrate");
        let bus = EventBus::new(EventConfig::default());
        let mut events = bus.subscribe();
        let (progress, watcher) = watch::channel(Progress::default());
        let mut writer = Writer {
            path,
            conn: Some(conn),
            bus,
            progress,
            pending: VecDeque::new(),
            retry_at: None,
        };
        // The same procedure twice: the second cannot be written.
        for seq in 1..=2 {
            writer.pending.push_back(Op {
                seq,
                records: vec![Record::ProcedureCreated(summary(7, 10))],
                events: vec![event(seq)],
            });
        }
        writer.flush();
        assert_eq!(
            watcher.borrow().problem,
            None,
            "one bad record is no storage failure"
        );
        assert_eq!(published(&mut events), [1, 2]);
    }
}
