//! The procedure service: the table of procedures, the rules of DESIGN 3.3, and the one
//! place where a procedure's state changes (`transition`). Every change is checked against
//! the state machine, recorded with its time, logged and published there — so making
//! history durable later is one insertion in that function.

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use oet_protocol::{
    now, topics, view, CallRecord, FunctionArgs, LogLine, ProcedureLogs, ProcedureState,
    ProcedureSummary, ProtocolError, ScriptSpec, StateChange, Stream, Value,
};
use tokio::sync::{broadcast, mpsc, oneshot};
use tracing::{info, warn};

use super::runner;
use super::script;
use super::state;
use super::supervisor::WorkerCommand;
use super::GitServices;
use crate::config::ProcedureConfig;
use crate::events::{EventBus, DAEMON_SOURCE};

/// What the service asks of a procedure's runner.
#[derive(Debug)]
pub(crate) enum Control {
    /// Call a function; the service has already recorded the call and entered RUNNING.
    Call {
        function: String,
        args: FunctionArgs,
    },
    /// Stop the process; `done` is answered once the state is final.
    Stop { done: oneshot::Sender<()> },
}

/// A cheap handle to the procedure service; clone it freely.
#[derive(Clone)]
pub struct ProcedureService {
    inner: Arc<Inner>,
}

struct Inner {
    config: RwLock<ProcedureConfig>,
    workers: WorkerCommand,
    git: GitServices,
    work_dir: PathBuf,
    bus: EventBus,
    table: Mutex<Table>,
}

#[derive(Default)]
struct Table {
    last_id: u64,
    entries: BTreeMap<u64, Entry>,
}

struct Entry {
    summary: ProcedureSummary,
    logs: LogBuffer,
    /// The runner's inbox, while the procedure has a runner.
    control: Option<mpsc::UnboundedSender<Control>>,
}

/// The newest lines a script printed, bounded.
#[derive(Default)]
struct LogBuffer {
    lines: VecDeque<LogLine>,
    dropped: u64,
}

impl ProcedureService {
    pub fn new(
        config: ProcedureConfig,
        workers: WorkerCommand,
        git: GitServices,
        work_dir: PathBuf,
        bus: EventBus,
    ) -> Self {
        ProcedureService {
            inner: Arc::new(Inner {
                config: RwLock::new(config),
                workers,
                git,
                work_dir,
                bus,
                table: Mutex::new(Table::default()),
            }),
        }
    }

    /// The current procedure settings.
    pub fn config(&self) -> ProcedureConfig {
        self.setting(ProcedureConfig::clone)
    }

    /// One value of the current settings, read without copying the rest (this is on the
    /// path of every line a script prints).
    fn setting<T>(&self, read: impl FnOnce(&ProcedureConfig) -> T) -> T {
        read(
            &self
                .inner
                .config
                .read()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        )
    }

    /// Replaces the procedure settings; running procedures keep the grace they started with
    /// only if they already began stopping.
    pub fn set_config(&self, config: ProcedureConfig) {
        *self
            .inner
            .config
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = config;
    }

    pub fn bus(&self) -> &EventBus {
        &self.inner.bus
    }

    pub(crate) fn workers(&self) -> &WorkerCommand {
        &self.inner.workers
    }

    pub(crate) fn git(&self) -> &GitServices {
        &self.inner.git
    }

    pub(crate) fn work_dir(&self) -> &std::path::Path {
        &self.inner.work_dir
    }

    fn table(&self) -> MutexGuard<'_, Table> {
        // A panic while holding the lock cannot leave the table half-updated in a way
        // that matters more than losing the daemon, so carry on with what is there.
        self.inner
            .table
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Creates a procedure: validates the request, records it in CREATING and starts its
    /// runner. Returns at once; the procedure then moves on by itself towards READY.
    pub fn create(
        &self,
        spec: ScriptSpec,
        init_args: FunctionArgs,
    ) -> Result<ProcedureSummary, ProtocolError> {
        let script = script::parse(&spec)?;
        check_args(&init_args)?;
        let (tx, rx) = mpsc::unbounded_channel();
        let summary = {
            let mut table = self.table();
            table.last_id += 1;
            let id = table.last_id;
            let time = now();
            let mut calls = Vec::new();
            if !init_args.is_empty() {
                calls.push(CallRecord {
                    function: "init".into(),
                    args: init_args.clone(),
                    time,
                });
            }
            let summary = ProcedureSummary {
                id,
                script: spec,
                calls,
                history: vec![StateChange {
                    state: ProcedureState::Creating,
                    time,
                }],
                stacktrace: None,
                state: ProcedureState::Creating,
            };
            table.entries.insert(
                id,
                Entry {
                    summary: summary.clone(),
                    logs: LogBuffer::default(),
                    control: Some(tx),
                },
            );
            self.announce_state(&summary, None);
            summary
        };
        tokio::spawn(runner::run(self.clone(), summary.id, script, init_args, rx));
        Ok(summary)
    }

    /// Calls `function` of a READY procedure. Entering RUNNING and checking the limit of
    /// running procedures happen under one lock, so two starts cannot both win.
    pub fn start(
        &self,
        id: u64,
        function: &str,
        args: FunctionArgs,
    ) -> Result<ProcedureSummary, ProtocolError> {
        check_args(&args)?;
        if function.is_empty() {
            return Err(ProtocolError::invalid_request("no function named to start"));
        }
        let max_running = self.setting(|c| c.max_running);
        let mut table = self.table();
        let entry = table.entries.get(&id).ok_or_else(|| not_found(id))?;
        if entry.summary.state != ProcedureState::Ready {
            return Err(ProtocolError::invalid_state(format!(
                "procedure {id} is {}; only a READY procedure can be started",
                entry.summary.state
            )));
        }
        let running: Vec<&ProcedureSummary> = table
            .entries
            .values()
            .map(|e| &e.summary)
            .filter(|s| s.state == ProcedureState::Running)
            .collect();
        if running.len() >= max_running {
            let names: Vec<String> = running
                .iter()
                .map(|s| format!("procedure {} ({})", s.id, s.script.uri()))
                .collect();
            return Err(ProtocolError::invalid_state(format!(
                "cannot start procedure {id}: {} {} RUNNING and at most {max_running} may run at a time",
                names.join(", "),
                if names.len() == 1 { "is" } else { "are" },
            )));
        }
        let control = entry
            .control
            .clone()
            .ok_or_else(|| ProtocolError::internal(format!("procedure {id} has no process")))?;
        let entry = table.entries.get_mut(&id).ok_or_else(|| not_found(id))?;
        entry.summary.calls.push(CallRecord {
            function: function.to_owned(),
            args: args.clone(),
            time: now(),
        });
        let summary = self.transition_locked(&mut table, id, ProcedureState::Running)?;
        drop(table);
        if control
            .send(Control::Call {
                function: function.to_owned(),
                args,
            })
            .is_err()
        {
            // The runner is gone: the process ended between the check and now, and the
            // runner has already recorded how.
            return self.summary(id);
        }
        Ok(summary)
    }

    /// Stops a procedure (SIGTERM, grace, then SIGKILL of its process group) and waits
    /// until its state is final. With `run_abort`, then runs the configured abort script
    /// for the stopped procedure's subarray and returns its summary too.
    pub async fn stop(
        &self,
        id: u64,
        run_abort: bool,
    ) -> Result<Vec<ProcedureSummary>, ProtocolError> {
        let abort = if run_abort {
            Some(self.abort_plan(id)?)
        } else {
            None
        };
        let control = {
            let table = self.table();
            let entry = table.entries.get(&id).ok_or_else(|| not_found(id))?;
            if !state::stoppable(entry.summary.state) {
                return Err(ProtocolError::invalid_state(format!(
                    "procedure {id} is already {}; there is nothing to stop",
                    entry.summary.state
                )));
            }
            entry.control.clone()
        };
        if let Some(control) = control {
            let (done, stopped) = oneshot::channel();
            if control.send(Control::Stop { done }).is_ok() {
                // An error means the runner ended on its own first; the state is final
                // either way.
                let _ = stopped.await;
            }
        }
        let mut summaries = vec![self.summary(id)?];
        if let Some((uri, subarray_id)) = abort {
            summaries.push(self.run_abort(uri, subarray_id).await?);
        }
        Ok(summaries)
    }

    /// Works out, before anything is stopped, which abort script to run with which
    /// subarray, so that a request that cannot be honoured changes nothing.
    fn abort_plan(&self, id: u64) -> Result<(String, Value), ProtocolError> {
        let uri = self.config().abort_script;
        if uri.is_empty() {
            return Err(ProtocolError::invalid_request(
                "no abort script is configured (procedures.abort_script); stop without --run-abort, or configure one",
            ));
        }
        let table = self.table();
        let entry = table.entries.get(&id).ok_or_else(|| not_found(id))?;
        let mut found: Vec<&Value> = Vec::new();
        for call in &entry.summary.calls {
            if let Some(value) = call.args.kwargs.get("subarray_id") {
                if !found.contains(&value) {
                    found.push(value);
                }
            }
        }
        match found.as_slice() {
            [one] => Ok((uri, (*one).clone())),
            [] => Err(ProtocolError::invalid_request(format!(
                "procedure {id} was given no subarray_id, so the abort script cannot be run for it"
            ))),
            many => Err(ProtocolError::invalid_request(format!(
                "procedure {id} was given more than one subarray_id ({}), so the abort script cannot tell which to abort",
                many.iter().map(|v| v.to_string()).collect::<Vec<_>>().join(", ")
            ))),
        }
    }

    async fn run_abort(
        &self,
        uri: String,
        subarray_id: Value,
    ) -> Result<ProcedureSummary, ProtocolError> {
        let init = FunctionArgs {
            args: Vec::new(),
            kwargs: BTreeMap::from([("subarray_id".to_string(), subarray_id)]),
        };
        let mut events = self.bus().subscribe();
        let created = self.create(ScriptSpec::filesystem(uri), init)?;
        let ready = self
            .wait_for(&mut events, created.id, |s| s == ProcedureState::Ready)
            .await?;
        if ready.state != ProcedureState::Ready {
            return Ok(ready);
        }
        self.start(created.id, "main", FunctionArgs::default())
    }

    /// Waits until procedure `id` is in a state for which `wanted` holds, or final.
    /// `events` must have been subscribed before the change being waited for was caused.
    pub async fn wait_for(
        &self,
        events: &mut broadcast::Receiver<oet_protocol::Event>,
        id: u64,
        wanted: impl Fn(ProcedureState) -> bool,
    ) -> Result<ProcedureSummary, ProtocolError> {
        let done = |state: ProcedureState| wanted(state) || state.is_final();
        loop {
            let summary = self.summary(id)?;
            if done(summary.state) {
                return Ok(summary);
            }
            // Wait for any change of this procedure (or for lost events), then look again.
            loop {
                match events.recv().await {
                    Ok(event)
                        if event.topic == topics::STATECHANGE
                            && event.procedure_id() == Some(id) =>
                    {
                        break
                    }
                    Ok(_) => continue,
                    Err(broadcast::error::RecvError::Lagged(_)) => break,
                    Err(broadcast::error::RecvError::Closed) => {
                        return Err(ProtocolError::internal("the event bus closed"))
                    }
                }
            }
        }
    }

    /// Summaries of the given procedures, or of all live ones when `ids` is empty.
    pub fn list(&self, ids: &[u64]) -> Result<Vec<ProcedureSummary>, ProtocolError> {
        let table = self.table();
        if ids.is_empty() {
            return Ok(table.entries.values().map(|e| e.summary.clone()).collect());
        }
        ids.iter()
            .map(|id| {
                table
                    .entries
                    .get(id)
                    .map(|e| e.summary.clone())
                    .ok_or_else(|| not_found(*id))
            })
            .collect()
    }

    /// One procedure's summary.
    pub fn summary(&self, id: u64) -> Result<ProcedureSummary, ProtocolError> {
        self.table()
            .entries
            .get(&id)
            .map(|e| e.summary.clone())
            .ok_or_else(|| not_found(id))
    }

    /// The kept output lines of a procedure.
    pub fn logs(&self, id: u64) -> Result<ProcedureLogs, ProtocolError> {
        let table = self.table();
        let entry = table.entries.get(&id).ok_or_else(|| not_found(id))?;
        Ok(ProcedureLogs {
            id,
            dropped: entry.logs.dropped,
            lines: entry.logs.lines.iter().cloned().collect(),
        })
    }

    /// Live procedure count and the IDs of those RUNNING.
    pub fn counts(&self) -> (u64, Vec<u64>) {
        let table = self.table();
        let running = table
            .entries
            .values()
            .filter(|e| e.summary.state == ProcedureState::Running)
            .map(|e| e.summary.id)
            .collect();
        (table.entries.len() as u64, running)
    }

    /// Stops every procedure that is not final, all at once, and waits for them.
    pub async fn shutdown(&self) {
        let live: Vec<u64> = self
            .table()
            .entries
            .values()
            .filter(|e| !e.summary.state.is_final())
            .map(|e| e.summary.id)
            .collect();
        let stops = live.into_iter().map(|id| async move {
            if let Err(err) = self.stop(id, false).await {
                warn!(
                    procedure_id = id,
                    "could not stop procedure at shutdown: {err}"
                );
            }
        });
        futures::future::join_all(stops).await;
    }

    // ---- used by the runner -------------------------------------------------------

    /// Moves a procedure to `to`, if the state machine allows it.
    pub(crate) fn transition(
        &self,
        id: u64,
        to: ProcedureState,
    ) -> Result<ProcedureSummary, ProtocolError> {
        let mut table = self.table();
        self.transition_locked(&mut table, id, to)
    }

    /// Records a stack trace and moves the procedure to FAILED.
    pub(crate) fn fail(&self, id: u64, stacktrace: String) {
        let mut table = self.table();
        let Some(entry) = table.entries.get_mut(&id) else {
            return;
        };
        if entry.summary.state.is_final() {
            return;
        }
        entry.summary.stacktrace = Some(stacktrace.clone());
        warn!(
            procedure_id = id,
            script_uri = entry.summary.script.uri(),
            "procedure {id} failed:\n{stacktrace}"
        );
        self.inner.bus.publish(
            topics::STACKTRACE,
            DAEMON_SOURCE,
            map([
                ("procedure_id", Value::from(id)),
                ("stacktrace", Value::from(stacktrace)),
            ]),
        );
        if let Err(err) = self.transition_locked(&mut table, id, ProcedureState::Failed) {
            warn!(procedure_id = id, "{err}");
        }
    }

    /// Keeps and logs one line a script printed.
    pub(crate) fn append_log(&self, id: u64, stream: Stream, line: String) {
        info!(
            procedure_id = id,
            script_stream = stream.as_str(),
            "[{id} {}] {line}",
            stream.as_str()
        );
        let limit = self.setting(|c| c.log_lines);
        let mut table = self.table();
        if let Some(entry) = table.entries.get_mut(&id) {
            let logs = &mut entry.logs;
            logs.lines.push_back(LogLine {
                time: now(),
                stream,
                line,
            });
            while logs.lines.len() > limit {
                logs.lines.pop_front();
                logs.dropped += 1;
            }
        }
    }

    /// Publishes a message the script sent with pypubsub.
    pub(crate) fn publish_script_event(&self, id: u64, topic: String, payload: Value) {
        self.inner.bus.publish(&topic, &id.to_string(), payload);
    }

    /// The runner has finished: the procedure has no process any more.
    pub(crate) fn detach(&self, id: u64) {
        if let Some(entry) = self.table().entries.get_mut(&id) {
            entry.control = None;
        }
    }

    fn transition_locked(
        &self,
        table: &mut Table,
        id: u64,
        to: ProcedureState,
    ) -> Result<ProcedureSummary, ProtocolError> {
        let entry = table.entries.get_mut(&id).ok_or_else(|| not_found(id))?;
        let from = entry.summary.state;
        if !state::allowed(from, to) {
            return Err(ProtocolError::invalid_state(format!(
                "procedure {id} cannot go from {from} to {to}"
            )));
        }
        entry.summary.state = to;
        entry.summary.history.push(StateChange {
            state: to,
            time: now(),
        });
        let summary = entry.summary.clone();
        self.announce_state(&summary, Some(from));
        if to.is_final() {
            self.prune(table);
        }
        Ok(summary)
    }

    /// Logs and publishes a state the procedure has just entered.
    fn announce_state(&self, summary: &ProcedureSummary, from: Option<ProcedureState>) {
        let id = summary.id;
        let to = summary.state;
        info!(
            procedure_id = id,
            script_uri = summary.script.uri(),
            state = to.as_str(),
            "procedure {id} is {to}"
        );
        let bus = &self.inner.bus;
        bus.publish(
            topics::STATECHANGE,
            DAEMON_SOURCE,
            map([
                ("procedure_id", Value::from(id)),
                ("new_state", Value::from(to.as_str())),
                (
                    "previous_state",
                    from.map_or(Value::Null, |s| Value::from(s.as_str())),
                ),
            ]),
        );
        let lifecycle = match (from, to) {
            (Some(ProcedureState::Loading), ProcedureState::Idle) => Some(topics::CREATED),
            (_, ProcedureState::Running) => Some(topics::STARTED),
            (_, ProcedureState::Complete) => Some(topics::COMPLETE),
            (_, ProcedureState::Stopped) => Some(topics::STOPPED),
            (_, ProcedureState::Failed) => Some(topics::FAILED),
            _ => None,
        };
        if let Some(topic) = lifecycle {
            bus.publish(
                topic,
                DAEMON_SOURCE,
                map([
                    ("procedure_id", Value::from(id)),
                    ("summary", Value::from(view::procedure(summary))),
                ]),
            );
        }
    }

    /// Forgets the oldest final procedures beyond the history size. Procedures that are
    /// not final are never forgotten.
    fn prune(&self, table: &mut Table) {
        let keep = self.setting(|c| c.history_size);
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

fn not_found(id: u64) -> ProtocolError {
    ProtocolError::not_found(format!("no procedure with ID {id}"))
}

fn check_args(args: &FunctionArgs) -> Result<(), ProtocolError> {
    args.check_finite()
        .map_err(|e| ProtocolError::invalid_request(format!("invalid argument: {e}")))
}

fn map<const N: usize>(items: [(&str, Value); N]) -> Value {
    Value::Map(items.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
}
