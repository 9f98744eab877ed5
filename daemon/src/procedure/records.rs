//! Every procedure's record — its summary, the output it printed, the inbox of its
//! supervisor — and the one place where a procedure's state changes
//! ([`Records::transition_locked`]): each change is checked against the state machine,
//! recorded with its time, logged and published there, and waiters are woken.

use std::collections::VecDeque;

use std::sync::Arc;

use oet_protocol::{
    now, CallRecord, FunctionArgs, LogLine, ProcedureLogs, ProcedureState, ProcedureSummary,
    ScriptSpec, StateChange, Stream, Value,
};
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use super::config::Settings;
use super::control::Control;
use super::error::ProcedureError;
use super::state;
use crate::bounded;
use crate::events::{BusEvent, EventBus, StateChanged};
use crate::table::{IdTable, Rows};

pub(super) struct Records {
    settings: Settings,
    bus: EventBus,
    table: IdTable<Entry>,
    /// Bumped on every state change of any procedure.
    changed: watch::Sender<u64>,
}

struct Entry {
    summary: ProcedureSummary,
    logs: LogBuffer,
    /// The supervisor's inbox; closed once the supervisor has ended.
    control: mpsc::UnboundedSender<Control>,
    /// Bumped on every state change of this procedure.
    changed: watch::Sender<()>,
}

/// The newest lines a script printed, bounded.
#[derive(Default)]
struct LogBuffer {
    lines: VecDeque<LogLine>,
    /// Bytes of the kept lines' text.
    bytes: usize,
    dropped: u64,
}

type Table = Rows<Entry>;

impl Records {
    pub fn new(settings: Settings, bus: EventBus) -> Self {
        Records {
            settings,
            bus,
            table: IdTable::default(),
            changed: watch::Sender::new(0),
        }
    }

    pub fn bus(&self) -> &EventBus {
        &self.bus
    }

    /// Records a new procedure in CREATING, supervised through `control`.
    pub fn insert(
        &self,
        script: ScriptSpec,
        init_args: &FunctionArgs,
        control: mpsc::UnboundedSender<Control>,
    ) -> ProcedureSummary {
        let mut table = self.table.lock();
        let time = now();
        let id = table.insert_next(|id| {
            let mut calls = Vec::new();
            if !init_args.is_empty() {
                calls.push(CallRecord {
                    function: "init".into(),
                    args: bounded::arguments(init_args, bounded::ARGUMENT),
                    time,
                });
            }
            Entry {
                summary: ProcedureSummary {
                    id,
                    script,
                    calls,
                    history: vec![StateChange {
                        state: ProcedureState::Creating,
                        time,
                        function: None,
                    }],
                    stacktrace: None,
                    state: ProcedureState::Creating,
                },
                logs: LogBuffer::default(),
                control,
                changed: watch::Sender::new(()),
            }
        });
        let summary = Arc::new(table.entries[&id].summary.clone());
        self.announce(summary.clone(), None);
        Arc::unwrap_or_clone(summary)
    }

    /// Records a call of `function` and enters RUNNING, if the procedure is READY and
    /// fewer than `max_running` procedures run: the check and the change happen under one
    /// lock, so two starts cannot both win. Returns the supervisor's inbox too.
    pub fn begin_call(
        &self,
        id: u64,
        function: &str,
        args: &FunctionArgs,
        max_running: usize,
    ) -> Result<(ProcedureSummary, mpsc::UnboundedSender<Control>), ProcedureError> {
        let mut table = self.table.lock();
        let entry = table.entries.get(&id).ok_or(ProcedureError::NotFound(id))?;
        if entry.summary.state != ProcedureState::Ready {
            return Err(ProcedureError::NotReady {
                id,
                state: entry.summary.state,
            });
        }
        let running: Vec<String> = table
            .entries
            .values()
            .map(|e| &e.summary)
            .filter(|s| s.state == ProcedureState::Running)
            .map(|s| format!("procedure {} ({})", s.id, s.script.uri()))
            .collect();
        if running.len() >= max_running {
            return Err(ProcedureError::TooManyRunning {
                id,
                running,
                max: max_running,
            });
        }
        let entry = table
            .entries
            .get_mut(&id)
            .ok_or(ProcedureError::NotFound(id))?;
        let control = entry.control.clone();
        entry.summary.calls.push(CallRecord {
            function: function.to_owned(),
            args: bounded::arguments(args, bounded::ARGUMENT),
            time: now(),
        });
        let summary =
            self.transition_locked(&mut table, id, ProcedureState::Running, Some(function))?;
        Ok((Arc::unwrap_or_clone(summary), control))
    }

    /// Moves a procedure to `to`, if the state machine allows it.
    pub fn transition(
        &self,
        id: u64,
        to: ProcedureState,
    ) -> Result<Arc<ProcedureSummary>, ProcedureError> {
        self.transition_locked(&mut self.table.lock(), id, to, None)
    }

    /// Records a stack trace and moves the procedure to FAILED, unless it is final.
    pub fn fail(&self, id: u64, stacktrace: String) {
        let mut table = self.table.lock();
        let Some(entry) = table.entries.get_mut(&id) else {
            return;
        };
        if entry.summary.state.is_final() {
            return;
        }
        let stacktrace = bounded::head_and_tail(stacktrace, bounded::STACKTRACE);
        entry.summary.stacktrace = Some(stacktrace.clone());
        warn!(
            procedure_id = id,
            script_uri = entry.summary.script.uri(),
            "procedure {id} failed:\n{stacktrace}"
        );
        self.bus.publish(BusEvent::StackTrace {
            id,
            trace: stacktrace,
        });
        if let Err(err) = self.transition_locked(&mut table, id, ProcedureState::Failed, None) {
            warn!(procedure_id = id, "{err}");
        }
    }

    /// Keeps and logs one line a script printed.
    pub fn append_log(&self, id: u64, stream: Stream, line: String) {
        let line = bounded::head(line, bounded::LOG_LINE);
        info!(
            procedure_id = id,
            script_stream = stream.as_str(),
            "[{id} {}] {line}",
            stream.as_str()
        );
        let (limit, limit_bytes) = self.settings.get(|c| (c.log_lines, c.log_bytes));
        let mut table = self.table.lock();
        if let Some(entry) = table.entries.get_mut(&id) {
            let logs = &mut entry.logs;
            logs.bytes += line.len();
            logs.lines.push_back(LogLine {
                time: now(),
                stream,
                line,
            });
            while logs.lines.len() > limit || logs.bytes > limit_bytes {
                let Some(gone) = logs.lines.pop_front() else {
                    break;
                };
                logs.bytes -= gone.line.len();
                logs.dropped += 1;
            }
        }
    }

    /// Publishes a message the script of procedure `id` sent with pypubsub.
    pub fn publish_script_event(&self, id: u64, topic: String, payload: Value) {
        let payload = bounded::payload(payload, bounded::EVENT_PAYLOAD);
        self.bus.publish(BusEvent::Script { id, topic, payload });
    }

    /// One procedure's summary.
    pub fn summary(&self, id: u64) -> Result<ProcedureSummary, ProcedureError> {
        self.table
            .lock()
            .entries
            .get(&id)
            .map(|e| e.summary.clone())
            .ok_or(ProcedureError::NotFound(id))
    }

    /// Summaries of the given procedures, or of all live ones when `ids` is empty.
    pub fn list(&self, ids: &[u64]) -> Result<Vec<ProcedureSummary>, ProcedureError> {
        self.table
            .lock()
            .select(ids, |entry| entry.summary.clone(), ProcedureError::NotFound)
    }

    /// The kept output lines of a procedure.
    pub fn logs(&self, id: u64) -> Result<ProcedureLogs, ProcedureError> {
        let table = self.table.lock();
        let entry = table.entries.get(&id).ok_or(ProcedureError::NotFound(id))?;
        Ok(ProcedureLogs {
            id,
            dropped: entry.logs.dropped,
            lines: entry.logs.lines.iter().cloned().collect(),
        })
    }

    /// The procedures in the table, and the IDs of those RUNNING.
    pub fn counts(&self) -> (u64, Vec<u64>) {
        let table = self.table.lock();
        let running = table
            .entries
            .values()
            .filter(|e| e.summary.state == ProcedureState::Running)
            .map(|e| e.summary.id)
            .collect();
        (table.entries.len() as u64, running)
    }

    /// The IDs of the procedures that are not final.
    pub fn live(&self) -> Vec<u64> {
        self.table
            .lock()
            .entries
            .values()
            .filter(|e| !e.summary.state.is_final())
            .map(|e| e.summary.id)
            .collect()
    }

    /// A procedure's state and its supervisor's inbox.
    pub fn control(
        &self,
        id: u64,
    ) -> Result<(ProcedureState, mpsc::UnboundedSender<Control>), ProcedureError> {
        let table = self.table.lock();
        let entry = table.entries.get(&id).ok_or(ProcedureError::NotFound(id))?;
        Ok((entry.summary.state, entry.control.clone()))
    }

    /// A receiver woken by each state change of procedure `id`, and closed when the
    /// procedure leaves the table.
    pub fn changes(&self, id: u64) -> Result<watch::Receiver<()>, ProcedureError> {
        let table = self.table.lock();
        let entry = table.entries.get(&id).ok_or(ProcedureError::NotFound(id))?;
        Ok(entry.changed.subscribe())
    }

    /// A receiver woken by every state change of any procedure.
    pub fn all_changes(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    fn transition_locked(
        &self,
        table: &mut Table,
        id: u64,
        to: ProcedureState,
        function: Option<&str>,
    ) -> Result<Arc<ProcedureSummary>, ProcedureError> {
        let entry = table
            .entries
            .get_mut(&id)
            .ok_or(ProcedureError::NotFound(id))?;
        let from = entry.summary.state;
        if !state::allowed(from, to) {
            return Err(ProcedureError::Transition { id, from, to });
        }
        entry.summary.state = to;
        entry.summary.history.push(StateChange {
            state: to,
            time: now(),
            function: function.map(str::to_owned),
        });
        let summary = Arc::new(entry.summary.clone());
        entry.changed.send_replace(());
        self.announce(summary.clone(), Some(from));
        if to.is_final() {
            self.prune(table);
        }
        self.changed.send_modify(|n| *n += 1);
        Ok(summary)
    }

    /// Logs and publishes the state a procedure has just entered.
    fn announce(&self, summary: Arc<ProcedureSummary>, from: Option<ProcedureState>) {
        let id = summary.id;
        let to = summary.state;
        info!(
            procedure_id = id,
            script_uri = summary.script.uri(),
            state = to.as_str(),
            "procedure {id} is {to}"
        );
        let Some(change) = summary.history.last() else {
            return;
        };
        let (function, at) = (change.function.clone(), change.time);
        self.bus.publish(BusEvent::StateChanged(StateChanged {
            id,
            from,
            to,
            function,
            at,
            summary,
        }));
    }

    /// Forgets the oldest final procedures beyond the history size. Procedures that are
    /// not final are never forgotten.
    fn prune(&self, table: &mut Table) {
        let keep = self.settings.get(|c| c.history_size);
        while table.entries.len() > keep {
            let oldest_final = table
                .entries
                .values()
                .find(|e| e.summary.state.is_final())
                .map(|e| e.summary.id);
            match oldest_final {
                Some(id) => {
                    table.entries.remove(&id);
                }
                None => break,
            }
        }
    }
}
