//! The procedure service: the rules of DESIGN 3.3 over the records — creating a
//! procedure and handing it to its supervisor, starting a function of a READY one while
//! keeping to the running limit, stopping (and aborting), waiting for a state, and
//! stopping everything at shutdown.

use std::collections::BTreeMap;
use std::sync::Arc;

use oet_protocol::{
    FunctionArgs, ProcedureLogs, ProcedureState, ProcedureSummary, ScriptSpec, Value,
};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::warn;

use super::config::{ProcedureConfig, Settings};
use super::control::Control;
use super::error::ProcedureError;
use super::handle::ProcedureHandle;
use super::launch::{Context, Launcher};
use super::records::Records;
use super::{script, state, supervisor};
use crate::events::EventBus;

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
    pub fn new(config: ProcedureConfig, launcher: Launcher, bus: EventBus) -> Self {
        let settings = Settings::new(config);
        ProcedureService {
            inner: Arc::new(Inner {
                records: Arc::new(Records::new(settings.clone(), bus)),
                settings,
                launcher,
            }),
        }
    }

    /// Replaces the procedure settings. A stop already under way keeps the grace period
    /// it began with.
    pub fn set_config(&self, config: ProcedureConfig) {
        self.inner.settings.set(config);
    }

    pub fn bus(&self) -> &EventBus {
        self.inner.records.bus()
    }

    /// Creates a procedure: validates the request, records it in CREATING and hands it to
    /// its supervisor. Returns at once; the procedure then moves on by itself towards
    /// READY.
    pub fn create(
        &self,
        spec: ScriptSpec,
        init_args: FunctionArgs,
    ) -> Result<ProcedureSummary, ProcedureError> {
        let roots = self.inner.settings.get(|c| c.allowed_roots.clone());
        let script = script::check_roots(script::parse(&spec)?, &roots)?;
        init_args.check_finite()?;
        let (control, inbox) = mpsc::unbounded_channel();
        let summary = self.inner.records.insert(spec, &init_args, control);
        let handle = ProcedureHandle::new(summary.id, self.inner.records.clone());
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

    /// Stops a procedure (SIGTERM, grace, then SIGKILL of its process group) and waits
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
        let summary = self.summary(id)?;
        let mut found: Vec<&Value> = Vec::new();
        for call in &summary.calls {
            if let Some(value) = call.args.kwargs.get("subarray_id") {
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
        let created = self.create(ScriptSpec::filesystem(uri), init)?;
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
        let mut changes = self.inner.records.changes(id)?;
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

    /// Summaries of the given procedures, or of all live ones when `ids` is empty.
    pub fn list(&self, ids: &[u64]) -> Result<Vec<ProcedureSummary>, ProcedureError> {
        self.inner.records.list(ids)
    }

    /// One procedure's summary.
    pub fn summary(&self, id: u64) -> Result<ProcedureSummary, ProcedureError> {
        self.inner.records.summary(id)
    }

    /// The kept output lines of a procedure.
    pub fn logs(&self, id: u64) -> Result<ProcedureLogs, ProcedureError> {
        self.inner.records.logs(id)
    }

    /// Procedures in the table, and the IDs of those RUNNING.
    pub fn counts(&self) -> (u64, Vec<u64>) {
        self.inner.records.counts()
    }

    /// Stops every procedure that is not final, all at once, and waits for them.
    pub async fn shutdown(&self) {
        let stops = self.inner.records.live().into_iter().map(|id| async move {
            if let Err(err) = self.stop(id, false).await {
                warn!(
                    procedure_id = id,
                    "could not stop procedure at shutdown: {err}"
                );
            }
        });
        futures::future::join_all(stops).await;
    }
}
