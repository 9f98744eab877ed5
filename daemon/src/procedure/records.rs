//! Every procedure's record — its summary, the output it printed, the inbox of its
//! supervisor — and the one place where a procedure's state changes
//! ([`Records::transition_locked`]): each change is checked against the state machine,
//! recorded with its time and logged there, handed to the durable store with the bus
//! events that announce it (the store publishes them once the change is on disk), and
//! waiters are woken.
//!
//! The table holds every live procedure and the `history_size` that became final last;
//! older ones are read back from the store. A final procedure leaves the table only once
//! its final state is written, so what is read back is never behind what was shown.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use oet_protocol::{
    now, CallRecord, FunctionArgs, GitCheckout, LogLine, ProcedureLogs, ProcedureState,
    ProcedureSummary, ResourceUsage, ScriptSpec, StateChange, Stream, Value,
};
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use super::config::Settings;
use super::control::Control;
use super::error::ProcedureError;
use super::state;
use crate::bounded;
use crate::events::{BusEvent, EventBus, StateChanged};
use crate::store::{KeptOutput, Record, Store};
use crate::table::{IdTable, Rows};

pub(super) struct Records {
    settings: Settings,
    store: Store,
    table: IdTable<Entry>,
    /// Counts procedures becoming final, to know which did so last.
    finished: AtomicU64,
    /// Bumped on every state change of any procedure.
    changed: watch::Sender<u64>,
}

/// Reads what a live procedure's cgroup has measured so far.
pub(super) type UsageProbe = Arc<dyn Fn() -> ResourceUsage + Send + Sync>;

struct Entry {
    summary: ProcedureSummary,
    output: Output,
    /// `init`'s arguments until `init` is called (INITIALISING), when they become a call.
    init_args: Option<FunctionArgs>,
    /// While the procedure's processes run in a cgroup: its measurements, read when the
    /// summary is.
    usage: Option<UsageProbe>,
    /// The supervisor's inbox; closed once the supervisor has ended.
    control: mpsc::UnboundedSender<Control>,
    /// Bumped on every state change of this procedure.
    changed: watch::Sender<()>,
    /// Once final: when it became final, among all procedures, and the store's number
    /// of that change.
    finished: Option<(u64, u64)>,
}

/// What a procedure printed, as far as it is kept.
enum Output {
    /// Kept here, bounded, while this oetd runs the procedure.
    Live(LogBuffer),
    /// Kept in the store (a procedure that ended before this oetd started).
    InStore,
    /// Not kept, for this reason.
    NotKept(String),
}

impl Entry {
    fn snapshot(&self) -> (ProcedureSummary, Option<UsageProbe>) {
        (self.summary.clone(), self.usage.clone())
    }
}

/// A summary with its live measurements, read outside the records' lock.
fn measured((mut summary, probe): (ProcedureSummary, Option<UsageProbe>)) -> ProcedureSummary {
    if let Some(probe) = probe {
        summary.resources = Some(probe());
    }
    summary
}

/// The newest lines a script printed, bounded.
#[derive(Default)]
struct LogBuffer {
    lines: VecDeque<LogLine>,
    /// Bytes of the kept lines' text.
    bytes: usize,
    dropped: u64,
}

/// A state change as `transition_locked` makes it.
struct Change<'a> {
    to: ProcedureState,
    /// For RUNNING: the function called.
    function: Option<&'a str>,
    /// The stack trace recorded with the change (FAILED).
    stacktrace: Option<String>,
    /// Why oetd recorded the state itself.
    note: Option<String>,
    /// Records that go to the store just before the change's own.
    before: Vec<Record>,
}

impl Change<'_> {
    fn to(to: ProcedureState) -> Self {
        Change {
            to,
            function: None,
            stacktrace: None,
            note: None,
            before: Vec::new(),
        }
    }
}

type Table = Rows<Entry>;

/// Why the output of a procedure that was live when oetd stopped is not kept.
fn not_kept_after_restart(id: u64) -> String {
    format!(
        "the output of procedure {id} was not kept: oetd stopped before the procedure ended \
         (its lines are in the journal: journalctl -u oetd PROCEDURE_ID={id})"
    )
}

impl Records {
    /// Records over `store`, issuing IDs after `last_id`.
    pub fn new(settings: Settings, store: Store, last_id: u64) -> Self {
        Records {
            settings,
            store,
            table: IdTable::after(last_id),
            finished: AtomicU64::new(0),
            changed: watch::Sender::new(0),
        }
    }

    pub fn bus(&self) -> &EventBus {
        self.store.bus()
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Puts procedures that ended before this oetd started back in the table, in the
    /// order they became final, as the newest of the default list.
    pub fn restore(&self, ended: Vec<ProcedureSummary>) {
        let mut table = self.table.lock();
        for summary in ended {
            let order = self.finished.fetch_add(1, Ordering::Relaxed);
            table.entries.insert(
                summary.id,
                Entry {
                    summary,
                    output: Output::InStore,
                    init_args: None,
                    usage: None,
                    control: mpsc::unbounded_channel().0,
                    changed: watch::Sender::new(()),
                    finished: Some((order, 0)),
                },
            );
        }
    }

    /// Records a procedure that was live when oetd stopped as UNKNOWN, with `note`
    /// saying so; its output was not kept.
    pub fn record_interrupted(&self, summary: ProcedureSummary, note: String) {
        let id = summary.id;
        let mut table = self.table.lock();
        table.entries.insert(
            id,
            Entry {
                summary,
                output: Output::NotKept(not_kept_after_restart(id)),
                init_args: None,
                usage: None,
                control: mpsc::unbounded_channel().0,
                changed: watch::Sender::new(()),
                finished: None,
            },
        );
        let change = Change {
            note: Some(note),
            ..Change::to(ProcedureState::Unknown)
        };
        if let Err(err) = self.transition_locked(&mut table, id, change) {
            warn!(procedure_id = id, "{err}");
        }
    }

    /// Records a new procedure in CREATING, supervised through `control`; refused while
    /// the store cannot be written.
    pub fn insert(
        &self,
        script: ScriptSpec,
        init_args: &FunctionArgs,
        control: mpsc::UnboundedSender<Control>,
    ) -> Result<ProcedureSummary, ProcedureError> {
        self.store.writable()?;
        let mut table = self.table.lock();
        let time = now();
        let id = table.insert_next(|id| Entry {
            summary: ProcedureSummary {
                id,
                script,
                checkout: None,
                calls: Vec::new(),
                history: vec![StateChange {
                    state: ProcedureState::Creating,
                    time,
                    function: None,
                    note: None,
                }],
                stacktrace: None,
                state: ProcedureState::Creating,
                resources: None,
            },
            output: Output::Live(LogBuffer::default()),
            init_args: Some(init_args.clone()),
            usage: None,
            control,
            changed: watch::Sender::new(()),
            finished: None,
        });
        let summary = Arc::new(table.entries[&id].summary.clone());
        let event = self.announce(summary.clone(), None);
        self.store
            .record(vec![Record::ProcedureCreated(summary.clone())], vec![event]);
        Ok(Arc::unwrap_or_clone(summary))
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
        let Some(entry) = table.entries.get(&id) else {
            drop(table);
            return Err(self.missing(id));
        };
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
        let call = CallRecord {
            function: function.to_owned(),
            args: bounded::arguments(args, bounded::ARGUMENT),
            time: now(),
        };
        let seq = entry.summary.calls.len();
        entry.summary.calls.push(call.clone());
        let change = Change {
            function: Some(function),
            before: vec![Record::Call { id, seq, call }],
            ..Change::to(ProcedureState::Running)
        };
        let summary = self.transition_locked(&mut table, id, change)?;
        Ok((Arc::unwrap_or_clone(summary), control))
    }

    /// Moves a procedure to `to`, if the state machine allows it.
    pub fn transition(
        &self,
        id: u64,
        to: ProcedureState,
    ) -> Result<Arc<ProcedureSummary>, ProcedureError> {
        self.transition_locked(&mut self.table.lock(), id, Change::to(to))
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
        warn!(
            procedure_id = id,
            script_uri = entry.summary.script.uri(),
            "procedure {id} failed:\n{stacktrace}"
        );
        let change = Change {
            stacktrace: Some(stacktrace),
            ..Change::to(ProcedureState::Failed)
        };
        if let Err(err) = self.transition_locked(&mut table, id, change) {
            warn!(procedure_id = id, "{err}");
        }
    }

    /// Records where a git script was checked out from.
    pub fn set_checkout(&self, id: u64, checkout: GitCheckout) {
        let mut table = self.table.lock();
        let Some(entry) = table.entries.get_mut(&id) else {
            return;
        };
        entry.summary.checkout = Some(checkout.clone());
        self.store
            .record(vec![Record::Checkout { id, checkout }], Vec::new());
    }

    /// Every argument procedure `id` was given: its calls', and `init`'s before it is
    /// called.
    pub fn arguments(&self, id: u64) -> Result<Vec<FunctionArgs>, ProcedureError> {
        let table = self.table.lock();
        let Some(entry) = table.entries.get(&id) else {
            drop(table);
            return Ok(self
                .summary(id)?
                .calls
                .into_iter()
                .map(|call| call.args)
                .collect());
        };
        let calls = entry.summary.calls.iter().map(|call| call.args.clone());
        Ok(entry.init_args.clone().into_iter().chain(calls).collect())
    }

    /// Records the worker process of procedure `id`, so that a restart of oetd can find
    /// what the procedure left running.
    pub fn worker_started(&self, id: u64, pid: u32) {
        let Some(start_time) = super::recovery::start_time(pid) else {
            // It is already gone: nothing can be left of it.
            return;
        };
        self.store.record(
            vec![Record::Worker {
                id,
                pid,
                start_time,
            }],
            Vec::new(),
        );
    }

    /// Keeps one line a script printed.
    pub fn append_log(&self, id: u64, stream: Stream, line: String) {
        let line = bounded::head(line, bounded::LOG_LINE);
        let (limit, limit_bytes) = self.settings.get(|c| (c.log_lines, c.log_bytes));
        let mut table = self.table.lock();
        if let Some(Output::Live(logs)) = table.entries.get_mut(&id).map(|e| &mut e.output) {
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

    /// Publishes a message the script of procedure `id` sent with pypubsub, in order
    /// with the procedure's state changes.
    pub fn publish_script_event(&self, id: u64, topic: String, payload: Value) {
        let payload = bounded::payload(payload, bounded::EVENT_PAYLOAD);
        self.store.publish(BusEvent::Script { id, topic, payload });
    }

    /// Reads procedure `id`'s measurements through `probe` whenever its summary is read,
    /// until [`Records::set_resources`] records the last ones.
    pub fn watch_usage(&self, id: u64, probe: UsageProbe) {
        if let Some(entry) = self.table.lock().entries.get_mut(&id) {
            entry.usage = Some(probe);
        }
    }

    /// Records what procedure `id`'s cgroup measured in the end.
    pub fn set_resources(&self, id: u64, usage: ResourceUsage) {
        let mut table = self.table.lock();
        let Some(entry) = table.entries.get_mut(&id) else {
            return;
        };
        entry.usage = None;
        entry.summary.resources = Some(usage.clone());
        self.store
            .record(vec![Record::Resources { id, usage }], Vec::new());
    }

    /// One procedure's summary, from the table or, for an older one, the store.
    pub fn summary(&self, id: u64) -> Result<ProcedureSummary, ProcedureError> {
        let read = self.table.lock().entries.get(&id).map(Entry::snapshot);
        match read {
            Some(read) => Ok(measured(read)),
            None => self
                .store
                .procedure(id)?
                .ok_or(ProcedureError::NotFound(id)),
        }
    }

    /// Summaries of the given procedures (live or past, a live one with what its cgroup
    /// measured so far), or of the table when `ids` is empty: every live procedure and
    /// the newest final ones, as a snapshot of the table — without reading each live
    /// procedure's cgroup, so that listing hundreds costs no more than copying them.
    pub fn list(&self, ids: &[u64]) -> Result<Vec<ProcedureSummary>, ProcedureError> {
        if ids.is_empty() {
            return Ok(self
                .table
                .lock()
                .entries
                .values()
                .map(|entry| entry.summary.clone())
                .collect());
        }
        ids.iter().map(|id| self.summary(*id)).collect()
    }

    /// The kept output lines of a procedure, or why they were not kept.
    pub fn logs(&self, id: u64) -> Result<ProcedureLogs, ProcedureError> {
        let not_kept = |reason: String| ProcedureLogs {
            id,
            dropped: 0,
            lines: Vec::new(),
            not_kept: Some(reason),
        };
        {
            let table = self.table.lock();
            match table.entries.get(&id).map(|e| &e.output) {
                Some(Output::Live(logs)) => {
                    return Ok(ProcedureLogs {
                        id,
                        dropped: logs.dropped,
                        lines: logs.lines.iter().cloned().collect(),
                        not_kept: None,
                    })
                }
                Some(Output::NotKept(reason)) => return Ok(not_kept(reason.clone())),
                Some(Output::InStore) | None => {}
            }
        }
        match self.store.output(id)? {
            None => Err(ProcedureError::NotFound(id)),
            Some(None) => Ok(not_kept(not_kept_after_restart(id))),
            Some(Some(KeptOutput { dropped, lines })) => Ok(ProcedureLogs {
                id,
                dropped,
                lines,
                not_kept: None,
            }),
        }
    }

    /// How many procedures are live (not final), and the IDs of those RUNNING.
    pub fn counts(&self) -> (u64, Vec<u64>) {
        let table = self.table.lock();
        let states = || {
            table
                .entries
                .values()
                .map(|e| (e.summary.id, e.summary.state))
        };
        let live = states().filter(|(_, state)| !state.is_final()).count();
        let running = states()
            .filter(|(_, state)| *state == ProcedureState::Running)
            .map(|(id, _)| id)
            .collect();
        (live as u64, running)
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
        let Some(entry) = table.entries.get(&id) else {
            drop(table);
            return Err(self.missing(id));
        };
        Ok((entry.summary.state, entry.control.clone()))
    }

    /// The error for procedure `id`, which is not in the table: it ended long ago (its
    /// state is in the store), or it does not exist.
    fn missing(&self, id: u64) -> ProcedureError {
        match self.store.procedure(id) {
            Ok(Some(summary)) => ProcedureError::AlreadyFinal {
                id,
                state: summary.state,
            },
            Ok(None) => ProcedureError::NotFound(id),
            Err(err) => err.into(),
        }
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
        change: Change<'_>,
    ) -> Result<Arc<ProcedureSummary>, ProcedureError> {
        let entry = table
            .entries
            .get_mut(&id)
            .ok_or(ProcedureError::NotFound(id))?;
        let from = entry.summary.state;
        let to = change.to;
        if !state::allowed(from, to) {
            return Err(ProcedureError::Transition { id, from, to });
        }
        let entered = StateChange {
            state: to,
            time: now(),
            function: change.function.map(str::to_owned),
            note: change.note,
        };
        let seq = entry.summary.history.len();
        entry.summary.state = to;
        let mut before = change.before;
        if to == ProcedureState::Initialising {
            if let Some(args) = entry.init_args.take() {
                let call = CallRecord {
                    function: "init".into(),
                    args: bounded::arguments(&args, bounded::ARGUMENT),
                    time: entered.time,
                };
                let seq = entry.summary.calls.len();
                entry.summary.calls.push(call.clone());
                before.push(Record::Call { id, seq, call });
            }
        }
        entry.summary.history.push(entered.clone());
        let mut events = Vec::with_capacity(2);
        if let Some(trace) = &change.stacktrace {
            entry.summary.stacktrace = Some(trace.clone());
            events.push(BusEvent::StackTrace {
                id,
                trace: trace.clone(),
            });
        }
        let output = match (&entry.output, to.is_final()) {
            (Output::Live(logs), true) => Some(KeptOutput {
                dropped: logs.dropped,
                lines: logs.lines.iter().cloned().collect(),
            }),
            _ => None,
        };
        let summary = Arc::new(entry.summary.clone());
        entry.changed.send_replace(());
        events.push(self.announce(summary.clone(), Some(from)));
        let mut records = before;
        records.push(Record::ProcedureState {
            id,
            seq,
            change: entered,
            stacktrace: change.stacktrace,
            output,
        });
        let written = self.store.record(records, events);
        if to.is_final() {
            let order = self.finished.fetch_add(1, Ordering::Relaxed);
            entry.finished = Some((order, written));
            self.prune(table);
        }
        self.changed.send_modify(|n| *n += 1);
        Ok(summary)
    }

    /// Logs the state a procedure has just entered, and makes the event announcing it.
    fn announce(&self, summary: Arc<ProcedureSummary>, from: Option<ProcedureState>) -> BusEvent {
        let id = summary.id;
        let to = summary.state;
        info!(
            procedure_id = id,
            script_uri = summary.script.uri(),
            state = to.as_str(),
            "procedure {id} is {to}"
        );
        let (function, at) = summary.history.last().map_or((None, now()), |change| {
            (change.function.clone(), change.time)
        });
        BusEvent::StateChanged(StateChanged {
            id,
            from,
            to,
            function,
            at,
            summary,
        })
    }

    /// Lets go of the final procedures beyond the `history_size` that became final last,
    /// oldest first, once their final state is written (the store then answers for them).
    /// Procedures that are not final are never let go.
    fn prune(&self, table: &mut Table) {
        let keep = self.settings.get(|c| c.history_size);
        let mut finished: Vec<(u64, u64, u64)> = table
            .entries
            .values()
            .filter_map(|e| e.finished.map(|(order, seq)| (order, seq, e.summary.id)))
            .collect();
        if finished.len() <= keep {
            return;
        }
        finished.sort_unstable();
        let excess = finished.len() - keep;
        let written = self.store.committed();
        for (_, seq, id) in finished.into_iter().take(excess) {
            if seq > written {
                break;
            }
            table.entries.remove(&id);
        }
    }
}
