//! The activity service: the table of activities, the flow that turns "run activity X of
//! SBD Y" into a procedure (DESIGN 5), and the one place where an activity's state changes
//! (`advance`).
//!
//! The flow validates everything it can before anything is recorded: the SBD is fetched
//! and parsed, the activity resolved, the arguments merged and checked, the script URI
//! checked (and, for a filesystem script, found on this host). Only then is an SBI created
//! in the ODA. An SBI is the record of an *attempt*: if writing the SBD file or creating
//! the procedure fails after it, the SBI stays and the error names it.
//!
//! Each activity has a follower task that walks its procedure's state history (woken by
//! each of the procedure's state changes, reading the history so that nothing is skipped)
//! and mirrors it: READY → PREPARED, RUNNING → RUNNING, COMPLETE/FAILED/STOPPED → the
//! same. A RUNNING entry names the function that was called, so the follower knows when
//! `main` started. The follower starts `main` once the procedure is READY, unless the
//! activity is prepare-only.
//!
//! Every activity is written to the durable store, and its events are published by the
//! store once it is written. The table here holds the default list: live activities and
//! those whose procedures are still in the procedure service's default list; older ones
//! are read back from the store. The service sweeps after procedure state changes,
//! dropping the activities whose procedures left that list.
//!
//! The SBD handed to the script lives in a file of the activity directory (mode 0600 in a
//! 0700 directory) for as long as the activity is in the table. An activity that was
//! live when oetd stopped is recorded FAILED at start-up, and its SBD file is kept for
//! inspection until store retention removes the activity.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use oet_protocol::{
    now, ActivityState, ActivityStateChange, ActivitySummary, FunctionArgs, ProcedureState,
    ProcedureSummary, RunActivity, Timestamp, Value,
};
use tokio::sync::watch;
use tracing::{info, warn};

use super::oda::{ActivityCall, NewSbi, Oda, OdaError};
use super::sbd::{Sbd, UnknownActivity};
use crate::bounded;
use crate::events::{ActivityNews, BusEvent};
use crate::procedure::{ProcedureError, ProcedureService};
use crate::state_dir::{self, EntryKind, StateDirError};
use crate::store::{HistoryQuery, Record, Store, StoreError};
use crate::table::IdTable;

/// Why an activity could not be run or found.
#[derive(Debug, thiserror::Error)]
pub enum ActivityError {
    #[error(transparent)]
    Oda(#[from] OdaError),
    #[error(transparent)]
    UnknownActivity(#[from] UnknownActivity),
    #[error("activity '{activity}' of SBD '{sbd_id}' cannot be run: {reason}")]
    Script {
        activity: String,
        sbd_id: String,
        reason: String,
    },
    #[error("invalid script argument for {function}: {reason}")]
    Argument { function: String, reason: String },
    #[error("SBI '{sbi_id}' was recorded in the ODA for this attempt, but the SBD could not be written to {} for the script: {cause}; nothing was run", path.display())]
    SbFile {
        sbi_id: String,
        path: PathBuf,
        cause: io::Error,
    },
    #[error("SBI '{sbi_id}' was recorded in the ODA for this attempt, but the procedure could not be created: {cause}")]
    ProcedureRefused {
        sbi_id: String,
        cause: ProcedureError,
    },
    #[error("no activity with ID {0}")]
    NotFound(u64),
    #[error("running the activity failed inside oetd: {0}")]
    Internal(String),
    #[error("{0}")]
    Store(#[from] StoreError),
}

/// A cheap handle to the activity service; clone it freely.
#[derive(Clone)]
pub struct ActivityService {
    inner: Arc<Inner>,
}

struct Inner {
    oda: Arc<dyn Oda>,
    procedures: ProcedureService,
    store: Store,
    sb_dir: PathBuf,
    table: IdTable<Entry>,
}

struct Entry {
    summary: ActivitySummary,
    /// The SBD file handed to the script, removed when the activity leaves the table;
    /// `None` for an interrupted activity's, kept until retention removes the activity.
    sb_file: Option<PathBuf>,
}

impl ActivityService {
    /// Creates the service over an ODA and the procedure service (and its store), issuing
    /// IDs after the highest the store has issued. `sb_dir` holds the SBD files handed to
    /// scripts; it is created (mode 0700), and the SBD files that no stored activity
    /// names (an earlier run wrote them, then stopped before recording their activity)
    /// are removed, never through a link. Must be called inside a tokio runtime: it
    /// starts the task that forgets activities with their procedures. Call
    /// [`ActivityService::recover`] before serving anyone.
    pub fn new(
        oda: Arc<dyn Oda>,
        procedures: ProcedureService,
        sb_dir: PathBuf,
    ) -> Result<Self, StateDirError> {
        let store = procedures.store().clone();
        prepare_sb_dir(&sb_dir, store.sb_files().ok())?;
        let last_id = store.issued().map_or(0, |(_, activities)| activities);
        let service = ActivityService {
            inner: Arc::new(Inner {
                oda,
                procedures,
                store,
                sb_dir,
                table: IdTable::after(last_id),
            }),
        };
        let changes = service.inner.procedures.all_changes();
        tokio::spawn(service.clone().forget_with_procedures(changes));
        Ok(service)
    }

    /// Start-up: records each activity that was live when oetd stopped as FAILED, saying
    /// that oetd restarted; its SBI link stays, and its SBD file is kept. Returns once
    /// that is written.
    pub async fn recover(&self) {
        let live = match self.inner.store.live_activities() {
            Ok(live) => live,
            Err(err) => {
                warn!("cannot recover the activity history: {err}");
                return;
            }
        };
        for summary in live {
            let id = summary.id;
            let error = format!(
                "oetd restarted while activity {id} was {}; its procedure{} did not go on",
                summary.state,
                summary
                    .procedure_id
                    .map(|p| format!(" {p}"))
                    .unwrap_or_default()
            );
            self.inner.table.lock().entries.insert(
                id,
                Entry {
                    summary,
                    sb_file: None,
                },
            );
            self.advance(id, ActivityState::Failed, now(), Some(error));
        }
        self.inner.store.synced().await;
    }

    /// Stores an SBD (JSON text) in the ODA.
    pub async fn put_sbd(&self, json: &str) -> Result<Sbd, ActivityError> {
        let sbd = self.inner.oda.put_sbd(json).await?;
        info!(sbd_id = %sbd.sbd_id, "stored {sbd} in the ODA");
        Ok(sbd)
    }

    /// Runs an activity (DESIGN 5). Answers once the activity is REQUESTED and its
    /// procedure is created; the follower task takes it from there.
    ///
    /// The flow runs in a task of its own, so a caller that gives up waiting cannot
    /// leave an SBI without its procedure by cancelling it halfway.
    pub async fn run(&self, request: RunActivity) -> Result<ActivitySummary, ActivityError> {
        let this = self.clone();
        let (activity, sbd_id) = (request.activity_name.clone(), request.sbd_id.clone());
        let result = tokio::spawn(async move { this.request(request).await })
            .await
            .unwrap_or_else(|join| Err(ActivityError::Internal(join.to_string())));
        if let Err(
            err @ (ActivityError::SbFile { sbi_id, .. }
            | ActivityError::ProcedureRefused { sbi_id, .. }),
        ) = &result
        {
            warn!(sbd_id = %sbd_id, sbi_id = %sbi_id, "activity '{activity}' of SBD '{sbd_id}' was not run: {err}");
        }
        result
    }

    async fn request(&self, request: RunActivity) -> Result<ActivitySummary, ActivityError> {
        // Before anything is recorded in the ODA: an activity that cannot be recorded
        // here is not run.
        self.inner.store.writable()?;
        let requested_at = now();
        let RunActivity {
            activity_name,
            sbd_id,
            script_args,
            prepare_only,
            create_env,
        } = request;

        // 1. Fetch and resolve; check everything before anything is recorded.
        let sbd = self.inner.oda.get_sbd(&sbd_id).await?;
        let def = sbd.activity(&activity_name)?;
        let spec = def.script_spec(create_env);
        let script_error = |reason: String| ActivityError::Script {
            activity: activity_name.clone(),
            sbd_id: sbd.sbd_id.clone(),
            reason,
        };
        // Checked as creating its procedure would: refused now, before the SBI.
        self.inner
            .procedures
            .check(&spec)
            .await
            .map_err(|err| script_error(err.to_string()))?;
        check_args(&script_args)?;
        let mut merged = def.merged_args(&script_args);
        check_args(&merged)?;

        // 2. Record the attempt in the ODA; it assigns the SBI's id.
        let call = ActivityCall {
            activity_name: activity_name.clone(),
            function_args: merged.clone(),
            runtime_args: script_args.clone(),
            executed_at: SystemTime::now(),
        };
        let sbi_id = self
            .inner
            .oda
            .create_sbi(&NewSbi::for_activity(&sbd, call))
            .await?;

        // 3. Hand the SBD to the script through a file, and its path and the SBI to main.
        let sb_file = self.write_sb_file(&sbd, &sbi_id).await?;
        let init_args = merged.remove("init").unwrap_or_default();
        let mut main_args = merged.remove("main").unwrap_or_default();
        main_args.kwargs.insert(
            "sb_json".to_owned(),
            Value::from(sb_file.display().to_string()),
        );
        main_args
            .kwargs
            .insert("sbi_id".to_owned(), Value::from(sbi_id.as_str()));

        // 4. Prepare the procedure; its follower reads its whole history, so no state can
        // be missed.
        let procedure = match self.inner.procedures.create(spec, init_args).await {
            Ok(procedure) => procedure,
            Err(cause) => {
                remove_file(&sb_file);
                return Err(ActivityError::ProcedureRefused { sbi_id, cause });
            }
        };

        let summary = {
            let mut table = self.inner.table.lock();
            let mut summary = ActivitySummary {
                id: 0,
                activity_name,
                sbd_id: sbd.sbd_id.clone(),
                sbi_id: Some(sbi_id),
                procedure_id: Some(procedure.id),
                script_args,
                prepare_only,
                history: vec![ActivityStateChange {
                    state: ActivityState::Requested,
                    time: requested_at,
                }],
                state: ActivityState::Requested,
                error: None,
            };
            table.insert_next(|id| {
                summary.id = id;
                Entry {
                    summary: summary.clone(),
                    sb_file: Some(sb_file.clone()),
                }
            });
            let summary = Arc::new(summary);
            let event = self.announce(summary.clone(), ActivityNews::Entered);
            self.inner.store.record(
                vec![Record::ActivityCreated {
                    summary: summary.clone(),
                    sb_file,
                }],
                vec![event],
            );
            Arc::unwrap_or_clone(summary)
        };
        let follower = Follower {
            service: self.clone(),
            activity_id: summary.id,
            procedure_id: procedure.id,
            main_args: (!prepare_only).then_some(main_args),
            seen: 0,
        };
        tokio::spawn(follower.run());
        Ok(summary)
    }

    /// Summaries of the given activities (live or past), or of the default list when
    /// `ids` is empty.
    pub fn list(&self, ids: &[u64]) -> Result<Vec<ActivitySummary>, ActivityError> {
        // Forgetting is also done here, so that the default list never shows an activity
        // whose procedure the procedure service's default list no longer has.
        self.sweep();
        if ids.is_empty() {
            return self.inner.table.lock().select(
                &[],
                |entry| entry.summary.clone(),
                ActivityError::NotFound,
            );
        }
        ids.iter().map(|id| self.summary(*id)).collect()
    }

    /// A page of the activity history in the store, newest first; read off the async
    /// threads.
    pub async fn history(
        &self,
        query: HistoryQuery,
    ) -> Result<Vec<ActivitySummary>, ActivityError> {
        // What the table already shows is in the history too: read after it is written.
        self.inner.store.synced().await;
        let store = self.inner.store.clone();
        tokio::task::spawn_blocking(move || store.activities(&query))
            .await
            .map_err(|err| ActivityError::Internal(err.to_string()))?
            .map_err(ActivityError::from)
    }

    /// One activity's summary, from the table or, for an older one, the store.
    pub fn summary(&self, id: u64) -> Result<ActivitySummary, ActivityError> {
        if let Some(entry) = self.inner.table.lock().entries.get(&id) {
            return Ok(entry.summary.clone());
        }
        self.inner
            .store
            .activity(id)?
            .ok_or(ActivityError::NotFound(id))
    }

    async fn write_sb_file(&self, sbd: &Sbd, sbi_id: &str) -> Result<PathBuf, ActivityError> {
        let dir = self.inner.sb_dir.clone();
        let prefix = format!("sb-{}-", file_safe(sbi_id));
        let text = sbd.to_json_string();
        let written = tokio::task::spawn_blocking(move || -> io::Result<PathBuf> {
            // A temporary file is created 0600 under a fresh name, so no one else can
            // have written it; it is kept under that name.
            let mut file = tempfile::Builder::new()
                .prefix(&prefix)
                .suffix(".json")
                .tempfile_in(&dir)?;
            file.write_all(text.as_bytes())?;
            file.as_file().sync_all()?;
            let (_, path) = file.keep().map_err(|err| err.error)?;
            Ok(path)
        })
        .await
        .unwrap_or_else(|join| Err(io::Error::other(join)));
        written.map_err(|cause| ActivityError::SbFile {
            sbi_id: sbi_id.to_owned(),
            path: self.inner.sb_dir.clone(),
            cause,
        })
    }

    /// Moves activity `id` to `to` at `time`, unless it is already final; the one place
    /// an activity's state changes. Returns whether it changed.
    fn advance(&self, id: u64, to: ActivityState, time: Timestamp, error: Option<String>) -> bool {
        let error = error.map(|e| bounded::head_and_tail(e, bounded::ERROR));
        let mut table = self.inner.table.lock();
        let Some(entry) = table.entries.get_mut(&id) else {
            return false;
        };
        let summary = &mut entry.summary;
        if summary.state.is_final() || summary.state == to {
            return false;
        }
        let change = ActivityStateChange { state: to, time };
        let seq = summary.history.len();
        summary.state = to;
        summary.history.push(change);
        // A final state says why the activity ended, and nothing older: an error that
        // kept it PREPARED no longer holds once it is stopped or has run.
        if error.is_some() || to.is_final() {
            summary.error = error.clone();
        }
        let summary = Arc::new(summary.clone());
        let event = self.announce(summary, ActivityNews::Entered);
        self.inner.store.record(
            vec![Record::ActivityState {
                id,
                seq,
                change,
                error,
            }],
            vec![event],
        );
        true
    }

    /// Records why an activity did not go on as asked, and tells listeners.
    fn record_error(&self, id: u64, error: String) {
        let error = bounded::head_and_tail(error, bounded::ERROR);
        let mut table = self.inner.table.lock();
        if let Some(entry) = table.entries.get_mut(&id) {
            entry.summary.error = Some(error.clone());
            let summary = Arc::new(entry.summary.clone());
            let event = self.announce(summary, ActivityNews::Error);
            self.inner
                .store
                .record(vec![Record::ActivityError { id, error }], vec![event]);
        }
    }

    /// Logs an activity's state, or its error, and makes the event announcing it.
    fn announce(&self, summary: Arc<ActivitySummary>, news: ActivityNews) -> BusEvent {
        let sbi_id = summary.sbi_id.as_deref().unwrap_or("");
        let procedure_id = summary.procedure_id.unwrap_or(0);
        match &summary.error {
            Some(error) if news == ActivityNews::Error || summary.state.is_final() => warn!(
                activity_id = summary.id,
                sbd_id = %summary.sbd_id,
                sbi_id,
                procedure_id,
                state = summary.state.as_str(),
                "activity {} ({} of {}) is {}: {error}",
                summary.id,
                summary.activity_name,
                summary.sbd_id,
                summary.state
            ),
            _ => info!(
                activity_id = summary.id,
                sbd_id = %summary.sbd_id,
                sbi_id,
                procedure_id,
                state = summary.state.as_str(),
                "activity {} ({} of {}) is {}",
                summary.id,
                summary.activity_name,
                summary.sbd_id,
                summary.state
            ),
        }
        BusEvent::Activity { news, summary }
    }

    /// Publishes `sb.lifecycle.started`: the activity's `main` has started.
    fn announce_sb_started(&self, id: u64) {
        let Ok(summary) = self.summary(id) else {
            return;
        };
        let sbi_id = summary.sbi_id.clone().unwrap_or_default();
        let procedure_id = summary.procedure_id.unwrap_or(0);
        info!(
            activity_id = id,
            sbd_id = %summary.sbd_id,
            sbi_id = %sbi_id,
            procedure_id,
            "scheduling block {} started as {sbi_id}",
            summary.sbd_id
        );
        self.inner.store.publish(BusEvent::SbStarted {
            activity_id: id,
            procedure_id,
            sbd_id: summary.sbd_id,
            sbi_id,
        });
    }

    /// Forgets final activities whose procedures the procedure history no longer has,
    /// and removes their SBD files.
    fn sweep(&self) {
        let Ok(live) = self.inner.procedures.list(&[]) else {
            return;
        };
        let live: BTreeSet<u64> = live.iter().map(|p| p.id).collect();
        let mut table = self.inner.table.lock();
        let gone: Vec<u64> = table
            .entries
            .values()
            .filter(|e| {
                let forgotten = match e.summary.procedure_id {
                    Some(id) => !live.contains(&id),
                    None => true,
                };
                e.summary.state.is_final() && forgotten
            })
            .map(|e| e.summary.id)
            .collect();
        for id in gone {
            if let Some(Entry {
                sb_file: Some(file),
                ..
            }) = table.entries.remove(&id)
            {
                remove_file(&file);
            }
        }
    }

    /// Sweeps after procedure state changes: a procedure becoming final is the only
    /// moment the procedure service forgets one.
    async fn forget_with_procedures(self, mut changes: watch::Receiver<u64>) {
        while changes.changed().await.is_ok() {
            self.sweep();
        }
    }
}

/// Follows one activity's procedure and mirrors its states.
struct Follower {
    service: ActivityService,
    activity_id: u64,
    procedure_id: u64,
    /// `main`'s arguments while `main` is still to be started by the follower.
    main_args: Option<FunctionArgs>,
    /// How many entries of the procedure's state history have been mirrored.
    seen: usize,
}

impl Follower {
    async fn run(mut self) {
        let procedures = self.service.inner.procedures.clone();
        let mut changes = procedures.changes(self.procedure_id).ok();
        loop {
            let summary = match procedures.summary(self.procedure_id) {
                Ok(summary) => summary,
                Err(_) => {
                    // Forgotten before its end was seen (a history of size 0).
                    let error = format!(
                        "procedure {} left the procedure history before its end was seen",
                        self.procedure_id
                    );
                    self.service.advance(
                        self.activity_id,
                        ActivityState::Failed,
                        now(),
                        Some(error),
                    );
                    break;
                }
            };
            self.mirror(&summary);
            if summary.state.is_final() {
                break;
            }
            if summary.state == ProcedureState::Ready {
                if let Some(args) = self.main_args.take() {
                    self.start_main(args);
                    // Look again at once: the start changed the state, or it failed.
                    continue;
                }
            }
            // Woken by the procedure's next state change. Once it has left the table,
            // one more look says what became of it.
            let Some(receiver) = changes.as_mut() else {
                break;
            };
            if receiver.changed().await.is_err() {
                changes = None;
            }
        }
        self.service.sweep();
    }

    /// Mirrors the procedure states not yet seen, with the procedure's own times.
    fn mirror(&mut self, summary: &ProcedureSummary) {
        let new = summary.history.get(self.seen..).unwrap_or_default();
        for change in new {
            let (to, error) = match change.state {
                ProcedureState::Ready => (ActivityState::Prepared, None),
                ProcedureState::Running => (ActivityState::Running, None),
                ProcedureState::Complete => (ActivityState::Complete, None),
                ProcedureState::Stopped => (ActivityState::Stopped, None),
                ProcedureState::Failed => (ActivityState::Failed, Some(failure(summary))),
                ProcedureState::Unknown => (
                    ActivityState::Failed,
                    Some(format!(
                        "procedure {} ended UNKNOWN: its process could not be confirmed ended",
                        summary.id
                    )),
                ),
                _ => continue,
            };
            let changed = self
                .service
                .advance(self.activity_id, to, change.time, error);
            if changed && to == ActivityState::Running && change.function.as_deref() == Some("main")
            {
                self.service.announce_sb_started(self.activity_id);
            }
        }
        self.seen = summary.history.len();
    }

    fn start_main(&self, args: FunctionArgs) {
        if let Err(err) = self
            .service
            .inner
            .procedures
            .start(self.procedure_id, "main", args)
        {
            self.service.record_error(
                self.activity_id,
                format!(
                    "main of procedure {} could not be started: {}; start it with `oetctl procedure start --pid {}` when possible",
                    self.procedure_id, err, self.procedure_id
                ),
            );
        }
    }
}

/// Why a FAILED procedure failed, in one line: the last line of its stack trace (the
/// exception, or how its process died), and where to read the rest.
fn failure(procedure: &ProcedureSummary) -> String {
    let why = procedure
        .stacktrace
        .as_deref()
        .and_then(|trace| trace.lines().rev().find(|line| !line.trim().is_empty()))
        .map_or("it failed", str::trim);
    format!(
        "{why} (see procedure {}: oetctl procedure describe --pid {})",
        procedure.id, procedure.id
    )
}

fn check_args(args: &BTreeMap<String, FunctionArgs>) -> Result<(), ActivityError> {
    for (function, fa) in args {
        if function.is_empty() {
            return Err(ActivityError::Argument {
                function: "a function".to_owned(),
                reason: "the function name is empty".to_owned(),
            });
        }
        fa.check_finite().map_err(|err| ActivityError::Argument {
            function: function.clone(),
            reason: err.to_string(),
        })?;
    }
    Ok(())
}

/// Creates the SBD file directory for the daemon's user only, and removes the SBD files
/// an earlier run left behind that no stored activity names (`kept`; `None` when the
/// store cannot say, and nothing is removed) — those alone, and never through a link.
fn prepare_sb_dir(dir: &Path, kept: Option<Vec<PathBuf>>) -> Result<(), StateDirError> {
    let own = state_dir::open_own_dir(dir, 0o700)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(|source| {
        StateDirError::Clean {
            path: dir.to_owned(),
            source,
        }
    })?;
    let Some(kept) = kept else {
        return Ok(());
    };
    let kept: BTreeSet<PathBuf> = kept.into_iter().collect();
    own.remove_own_entries(|name, kind| {
        kind == EntryKind::File
            && name.starts_with("sb-")
            && name.ends_with(".json")
            && !kept.contains(&dir.join(name))
    })?;
    Ok(())
}

fn remove_file(path: &Path) {
    if let Err(err) = std::fs::remove_file(path) {
        if err.kind() != io::ErrorKind::NotFound {
            warn!("cannot remove SBD file {}: {err}", path.display());
        }
    }
}

/// An id reduced to characters that are safe in a file name.
fn file_safe(id: &str) -> String {
    id.chars()
        .take(64)
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_become_safe_file_names() {
        assert_eq!(
            file_safe("sbi-oet-20240501-00001"),
            "sbi-oet-20240501-00001"
        );
        assert_eq!(file_safe("../a b/c"), "___a_b_c");
    }

    #[test]
    fn arguments_that_cannot_be_recorded_are_refused() {
        let bad = BTreeMap::from([(
            "main".to_owned(),
            FunctionArgs {
                args: vec![Value::Float(f64::NAN)],
                kwargs: BTreeMap::new(),
            },
        )]);
        let err = check_args(&bad).expect_err("NaN");
        assert!(err.to_string().contains("for main"), "{err}");
        let unnamed = BTreeMap::from([(String::new(), FunctionArgs::default())]);
        assert!(check_args(&unnamed).is_err());
    }

    #[test]
    fn the_sb_directory_is_private_and_keeps_only_what_the_store_names() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("activities");
        std::fs::create_dir(&dir).expect("mkdir");
        std::fs::write(dir.join("sb-old.json"), "{}").expect("write");
        std::fs::write(dir.join("sb-kept.json"), "{}").expect("write");
        prepare_sb_dir(&dir, Some(vec![dir.join("sb-kept.json")])).expect("prepare");
        let mode = std::fs::metadata(&dir).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        let left: Vec<_> = std::fs::read_dir(&dir)
            .expect("read")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(left, ["sb-kept.json"]);
        // A store that cannot say what it names removes nothing.
        prepare_sb_dir(&dir, None).expect("prepare");
        assert_eq!(std::fs::read_dir(&dir).expect("read").count(), 1);
    }
}
