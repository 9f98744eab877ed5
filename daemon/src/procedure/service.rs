//! The procedure service: the rules of DESIGN 3.3 over the records — creating a
//! procedure and handing it to its supervisor, starting a function of a READY one while
//! keeping to the running limit, stopping (and aborting), waiting for a state, reading
//! the history, recovering at start-up what a stop of oetd interrupted, and stopping
//! everything at shutdown.

use std::collections::BTreeMap;
use std::sync::Arc;

use oet_protocol::{
    FunctionArgs, ProcedureLogs, ProcedureState, ProcedureSummary, ScriptSpec, Value,
};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{error, warn};

use super::config::{ProcedureConfig, Settings};
use super::control::Control;
use super::error::ProcedureError;
use super::git_services::GitServices;
use super::handle::ProcedureHandle;
use super::launch::{Context, Launcher};
use super::output::ProcedureOutput;
use super::records::Records;
use super::script::{self, Script};
use super::{recovery, state, supervisor};
use crate::events::EventBus;
use crate::store::{HistoryQuery, Store};

/// A cheap handle to the procedure service; clone it freely.
#[derive(Clone)]
pub struct ProcedureService {
    inner: Arc<Inner>,
}

struct Inner {
    records: Arc<Records>,
    settings: Settings,
    launcher: Launcher,
}

impl ProcedureService {
    /// The service over the durable `store`, issuing IDs after the highest it has
    /// issued. Call [`ProcedureService::recover`] before serving anyone.
    pub fn new(settings: Settings, launcher: Launcher, store: Store) -> Self {
        let last_id = store.issued().map_or(0, |(procedures, _)| procedures);
        // A zygote runs from its environment's interpreter: it ends before the
        // environment is deleted, so no worker is forked from files that are gone.
        let zygotes = launcher.workers.zygotes().clone();
        launcher.git.envs.on_removed(move |python| {
            let zygotes = zygotes.clone();
            Box::pin(async move { zygotes.retire(&[python]).await })
        });
        ProcedureService {
            inner: Arc::new(Inner {
                records: Arc::new(Records::new(settings.clone(), store, last_id)),
                settings,
                launcher,
            }),
        }
    }

    /// Start-up: puts the procedures that ended last back in the default list, and
    /// records each procedure that was live when oetd stopped as UNKNOWN, once what it
    /// left running is killed. `cgroups_killed` names the procedures whose leftover
    /// cgroups start-up has already killed. Returns once that is written.
    pub async fn recover(&self, cgroups_killed: &[u64]) {
        let records = &self.inner.records;
        let store = records.store();
        let keep = self.inner.settings.get(|c| c.history_size);
        let read = store
            .interrupted()
            .and_then(|interrupted| Ok((interrupted, store.last_final(keep)?)));
        let (interrupted, ended) = match read {
            Ok(found) => found,
            Err(err) => {
                error!("cannot recover the procedure history: {err}");
                return;
            }
        };
        records.restore(ended);
        for procedure in interrupted {
            let id = procedure.id;
            let found = recovery::kill_leftovers(&procedure, cgroups_killed.contains(&id));
            let summary = match store.procedure(id) {
                Ok(Some(summary)) => summary,
                Ok(None) => continue,
                Err(err) => {
                    error!(procedure_id = id, "cannot recover procedure {id}: {err}");
                    continue;
                }
            };
            let note = format!(
                "oetd restarted while procedure {id} was {}; {found}",
                procedure.state
            );
            warn!(procedure_id = id, "{note}");
            records.record_interrupted(summary, note);
        }
        store.synced().await;
    }

    /// The durable store the records are written to.
    pub fn store(&self) -> &Store {
        self.inner.records.store()
    }

    /// Waits until every change recorded so far is written (or the store has a problem,
    /// in which case the changes wait for it and the caller need not): a request that
    /// changed something answers after this, so that what it answers survives a crash.
    pub async fn durable(&self) {
        self.store().synced().await;
    }

    /// Replaces the procedure settings. A stop already under way keeps the grace period
    /// it began with.
    pub fn set_config(&self, config: ProcedureConfig) {
        self.inner.settings.set(config);
    }

    /// The time a stopped script has between SIGTERM and SIGKILL, as set now.
    pub fn stop_grace(&self) -> std::time::Duration {
        self.inner.settings.get(ProcedureConfig::stop_grace)
    }

    pub fn bus(&self) -> &EventBus {
        self.inner.records.bus()
    }

    /// The checkout cache and the environments that git scripts are prepared with.
    pub fn git(&self) -> &GitServices {
        &self.inner.launcher.git
    }

    /// Checks, before anything is recorded, that `spec` can be run: its URI fits its kind,
    /// a filesystem script is a file on this host, a git script names a repository (or
    /// one is configured) that may be used.
    pub async fn check(&self, spec: &ScriptSpec) -> Result<Script, ProcedureError> {
        let roots = self.inner.settings.get(|c| c.allowed_roots.clone());
        let script = script::check_roots(script::parse(spec)?, &roots)?;
        match &script {
            Script::File(path) => script::check_file(path).await?,
            Script::Git { args, .. } => {
                let git = &self.inner.launcher.git.repos;
                git.check(
                    args.git_repo.as_deref(),
                    args.git_branch.as_deref(),
                    args.git_commit.as_deref(),
                )
                .await?
            }
        }
        Ok(script)
    }

    /// Creates a procedure: checks the request, records it in CREATING and hands it to
    /// its supervisor. Returns at once; the procedure then moves on by itself towards
    /// READY. A request that cannot be run is refused and records nothing.
    pub async fn create(
        &self,
        spec: ScriptSpec,
        init_args: FunctionArgs,
    ) -> Result<ProcedureSummary, ProcedureError> {
        init_args.check_finite()?;
        let script = self.check(&spec).await?;
        let (control, inbox) = mpsc::unbounded_channel();
        let summary = self
            .inner
            .records
            .insert(script::shown(&spec), &init_args, control)?;
        let output = ProcedureOutput::new(
            self.inner.launcher.output.clone(),
            self.inner.settings.clone(),
            summary.id,
            summary.script.uri(),
        );
        let handle = ProcedureHandle::new(summary.id, self.inner.records.clone(), output);
        let context = Context {
            launcher: self.inner.launcher.clone(),
            settings: self.inner.settings.clone(),
            bus: self.bus().clone(),
        };
        tokio::spawn(supervisor::run(handle, context, script, init_args, inbox));
        Ok(summary)
    }

    /// Calls `function` of a READY procedure, within the limit of running procedures.
    pub fn start(
        &self,
        id: u64,
        function: &str,
        args: FunctionArgs,
    ) -> Result<ProcedureSummary, ProcedureError> {
        args.check_finite()?;
        if function.is_empty() {
            return Err(ProcedureError::NoFunction);
        }
        let max_running = self.inner.settings.get(|c| c.max_running);
        let (summary, control) = self
            .inner
            .records
            .begin_call(id, function, &args, max_running)?;
        let call = Control::Call {
            function: function.to_owned(),
            args,
        };
        if control.send(call).is_err() {
            // The supervisor is gone: the process ended between the check and now, and
            // the supervisor has already recorded how.
            return self.summary(id);
        }
        Ok(summary)
    }

    /// Stops a procedure (SIGTERM, grace, then the kill of its cgroup) and waits
    /// until its state is final. With `run_abort`, then runs the configured abort script
    /// for the stopped procedure's subarray and returns its summary too.
    pub async fn stop(
        &self,
        id: u64,
        run_abort: bool,
    ) -> Result<Vec<ProcedureSummary>, ProcedureError> {
        let abort = if run_abort {
            Some(self.abort_plan(id)?)
        } else {
            None
        };
        let (state, control) = self.inner.records.control(id)?;
        if !state::stoppable(state) {
            return Err(ProcedureError::AlreadyFinal { id, state });
        }
        let (done, stopped) = oneshot::channel();
        if control.send(Control::Stop { done }).is_ok() {
            // An error means the supervisor ended on its own first; the state is final
            // either way.
            let _ = stopped.await;
        }
        let mut summaries = vec![self.summary(id)?];
        if let Some((uri, subarray_id)) = abort {
            summaries.push(self.run_abort(uri, subarray_id).await?);
        }
        Ok(summaries)
    }

    /// Works out, before anything is stopped, which abort script to run with which
    /// subarray, so that a request that cannot be honoured changes nothing.
    fn abort_plan(&self, id: u64) -> Result<(String, Value), ProcedureError> {
        let uri = self.inner.settings.get(|c| c.abort_script.clone());
        if uri.is_empty() {
            return Err(ProcedureError::NoAbortScript);
        }
        let arguments = self.inner.records.arguments(id)?;
        let mut found: Vec<&Value> = Vec::new();
        for args in &arguments {
            if let Some(value) = args.kwargs.get("subarray_id") {
                if !found.contains(&value) {
                    found.push(value);
                }
            }
        }
        match found.as_slice() {
            [one] => Ok((uri, (*one).clone())),
            [] => Err(ProcedureError::NoSubarray(id)),
            many => Err(ProcedureError::ManySubarrays {
                id,
                values: many
                    .iter()
                    .map(|v| v.to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            }),
        }
    }

    async fn run_abort(
        &self,
        uri: String,
        subarray_id: Value,
    ) -> Result<ProcedureSummary, ProcedureError> {
        let init = FunctionArgs {
            args: Vec::new(),
            kwargs: BTreeMap::from([("subarray_id".to_string(), subarray_id)]),
        };
        let created = self.create(ScriptSpec::filesystem(uri), init).await?;
        let ready = self
            .wait_for(created.id, |s| s == ProcedureState::Ready)
            .await?;
        if ready.state != ProcedureState::Ready {
            return Ok(ready);
        }
        self.start(created.id, "main", FunctionArgs::default())
    }

    /// Waits until procedure `id` is in a state for which `wanted` holds, or final, and
    /// returns its summary then.
    pub async fn wait_for(
        &self,
        id: u64,
        wanted: impl Fn(ProcedureState) -> bool,
    ) -> Result<ProcedureSummary, ProcedureError> {
        let Ok(mut changes) = self.inner.records.changes(id) else {
            // Not in the table: it ended long ago, or does not exist.
            return self.summary(id);
        };
        loop {
            // Read after subscribing: a change from now on wakes the wait below.
            let summary = self.summary(id)?;
            if wanted(summary.state) || summary.state.is_final() {
                return Ok(summary);
            }
            if changes.changed().await.is_err() {
                // It left the table; whatever is known of it now is the answer.
                return self.summary(id);
            }
        }
    }

    /// A receiver woken by each state change of procedure `id`, and closed when the
    /// procedure leaves the table. Read its summary after subscribing.
    pub fn changes(&self, id: u64) -> Result<watch::Receiver<()>, ProcedureError> {
        self.inner.records.changes(id)
    }

    /// A receiver woken by every state change of any procedure.
    pub fn all_changes(&self) -> watch::Receiver<u64> {
        self.inner.records.all_changes()
    }

    /// Summaries of the given procedures (live or past), or of the default list when
    /// `ids` is empty: every live procedure and the `history_size` that became final
    /// last.
    pub fn list(&self, ids: &[u64]) -> Result<Vec<ProcedureSummary>, ProcedureError> {
        self.inner.records.list(ids)
    }

    /// A page of the history in the store, newest first; read off the async threads.
    pub async fn history(
        &self,
        query: HistoryQuery,
    ) -> Result<Vec<ProcedureSummary>, ProcedureError> {
        // What the table already shows is in the history too: read after it is written.
        self.durable().await;
        let store = self.store().clone();
        tokio::task::spawn_blocking(move || store.procedures(&query))
            .await
            .map_err(|err| ProcedureError::Internal(err.to_string()))?
            .map_err(ProcedureError::from)
    }

    /// One procedure's summary, live or past.
    pub fn summary(&self, id: u64) -> Result<ProcedureSummary, ProcedureError> {
        self.inner.records.summary(id)
    }

    /// The kept output lines of a procedure, or why they were not kept.
    pub fn logs(&self, id: u64) -> Result<ProcedureLogs, ProcedureError> {
        self.inner.records.logs(id)
    }

    /// How procedures' processes are kept together, for `oetctl status`.
    pub fn containment(&self) -> oet_protocol::Containment {
        self.inner.launcher.containment.to_wire()
    }

    /// The zygotes workers are forked from, for `oetctl status`.
    pub fn zygotes(&self) -> Vec<oet_protocol::ZygoteStatus> {
        self.inner.launcher.workers.zygotes().status()
    }

    /// Applies `procedures.python` and `procedures.zygote*` as they are set now (at
    /// start-up and after a reload): the interpreter is resolved again, and zygotes no
    /// longer wanted end.
    pub async fn apply_interpreter(&self) {
        let name = self.inner.settings.get(|c| c.python.clone());
        let workers = &self.inner.launcher.workers;
        let before = workers.python();
        let python = workers.set_python(&name).await;
        let replaced: Vec<_> = Some(before)
            .filter(|before| *before != python)
            .into_iter()
            .collect();
        workers.zygotes().retire(&replaced).await;
    }

    /// How many procedures are live (not final), and the IDs of those RUNNING.
    pub fn counts(&self) -> (u64, Vec<u64>) {
        self.inner.records.counts()
    }

    /// Stops every procedure that is not final, all at once, and waits for them.
    pub async fn shutdown(&self) {
        let stops = self.inner.records.live().into_iter().map(|id| async move {
            // One that ended by itself meanwhile needs no stop.
            if let Err(
                err @ (ProcedureError::NotFound(_)
                | ProcedureError::Store(_)
                | ProcedureError::Transition { .. }
                | ProcedureError::NoProcess(_)
                | ProcedureError::Internal(_)),
            ) = self.stop(id, false).await
            {
                warn!(
                    procedure_id = id,
                    "could not stop procedure at shutdown: {err}"
                );
            }
        });
        futures::future::join_all(stops).await;
        self.inner.launcher.workers.zygotes().shutdown().await;
    }
}
