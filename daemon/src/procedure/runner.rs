//! One procedure's life, from spawning its worker to its final state. The runner is the
//! only task that talks to the worker: it relays the worker's reports to the service,
//! hands the worker calls and bus events, and carries out stops.

use std::path::PathBuf;
use std::time::Duration;

use futures::StreamExt;
use oet_protocol::{FunctionArgs, GitArgs, ProcedureState, Stream};
use tokio::io::AsyncRead;
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::script::Script;
use super::service::{Control, ProcedureService};
use super::supervisor::{describe_exit, Worker};
use super::worker_link::{self, FromWorker, JsonArgs, LinkReader, LinkWriter, ToWorker};
use crate::config::ProcedureConfig;
use crate::git::{script_path, Checkout};
use crate::process;

/// Bus events waiting to be handed to a worker; beyond this the worker misses events
/// rather than slowing anyone down.
const EVENT_BACKLOG: usize = 1024;

/// How long to keep reading a worker's last reports and output after its process has
/// exited. Only a process that escaped the process group can make this wait matter.
const DRAIN_LIMIT: Duration = Duration::from_secs(2);

pub(super) async fn run(
    service: ProcedureService,
    id: u64,
    script: Script,
    init: FunctionArgs,
    mut control: mpsc::UnboundedReceiver<Control>,
) {
    let prepared = match script {
        Script::File(path) => Prepared {
            path,
            python: PathBuf::from(service.config().python),
            cwd: service.work_dir().to_owned(),
            _checkout: None,
        },
        Script::Git {
            uri,
            args,
            create_env,
        } => match prepare_git(&service, id, &uri, &args, create_env, &mut control).await {
            Ok(Some(prepared)) => prepared,
            // Stopped while preparing: the state is already recorded.
            Ok(None) => {
                service.detach(id);
                return;
            }
            Err(message) => {
                service.fail(id, message);
                service.detach(id);
                return;
            }
        },
    };
    let (mut worker, io) = match service.workers().spawn(&prepared.python, id, &prepared.cwd) {
        Ok(spawned) => spawned,
        Err(err) => {
            service.fail(
                id,
                format!(
                    "cannot start the script interpreter '{}': {err}",
                    prepared.python.display()
                ),
            );
            service.detach(id);
            return;
        }
    };
    let output = [
        capture_output(&service, id, io.stdout, Stream::Stdout),
        capture_output(&service, id, io.stderr, Stream::Stderr),
    ];
    let (mut reader, writer) = worker_link::split(io.channel);
    let outbox = Outbox::start(writer);
    let mut events = service.bus().subscribe();
    let mut link = LinkState {
        pending_load: Some((prepared.path.clone(), init)),
        last_words: None,
    };
    let mut reader_open = true;
    let own_source = id.to_string();

    loop {
        tokio::select! {
            biased;
            message = reader.next(), if reader_open => match message {
                Some(message) => link.handle(&service, id, message, &outbox),
                None => reader_open = false,
            },
            command = control.recv() => match command {
                Some(Control::Call { function, args }) => {
                    let JsonArgs { args, kwargs } = JsonArgs::from_args(&args);
                    outbox.command(ToWorker::Call { function, args, kwargs });
                }
                Some(Control::Stop { done }) => {
                    let state = stop(id, &mut worker, &service.config()).await;
                    collect_output(output).await;
                    if let Err(err) = service.transition(id, state) {
                        debug!(procedure_id = id, "stop found the procedure already ended: {err}");
                    }
                    let _ = done.send(());
                    break;
                }
                // The service keeps a sender while the procedure has a runner.
                None => {}
            },
            status = worker.child.wait() => {
                drain(&service, id, &mut reader, &mut link, &outbox).await;
                // Whatever the script left running goes now, so that its output ends.
                worker.kill_group();
                collect_output(output).await;
                match link.last_words.take() {
                    Some(LastWords::Complete) => {
                        if let Err(err) = service.transition(id, ProcedureState::Complete) {
                            warn!(procedure_id = id, "{err}");
                        }
                    }
                    Some(LastWords::Failed(trace)) => service.fail(id, trace),
                    None => service.fail(id, match status {
                        Ok(status) => describe_exit(status),
                        Err(err) => format!("lost track of the script process: {err}"),
                    }),
                }
                break;
            },
            event = events.recv() => match event {
                Ok(event) if event.msg_src != own_source => outbox.event(&event),
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    debug!(procedure_id = id, "worker missed {missed} bus events");
                }
                Err(broadcast::error::RecvError::Closed) => {}
            },
        }
    }
    worker.finish().await;
    // The checkout stays pinned in the cache until the procedure's process is gone.
    drop(prepared);
    service.detach(id);
}

/// What a procedure's worker is started with.
struct Prepared {
    path: PathBuf,
    python: PathBuf,
    cwd: PathBuf,
    /// Keeps a git script's checkout from being evicted while the procedure lives.
    _checkout: Option<Checkout>,
}

/// Fetches a git script's commit and, with `create_env`, builds (or waits for) its Python
/// environment — the PREP_ENV state. A stop during this ends the preparation (killing
/// pip if no other procedure waits for the same environment) and records STOPPED;
/// `Ok(None)` says so. `Err` is the text of a failure.
async fn prepare_git(
    service: &ProcedureService,
    id: u64,
    uri: &str,
    args: &GitArgs,
    create_env: bool,
    control: &mut mpsc::UnboundedReceiver<Control>,
) -> Result<Option<Prepared>, String> {
    let cancel = CancellationToken::new();
    let git = service.git().clone();
    let work = async {
        let checkout = tokio::select! {
            checkout = git.repos.checkout(
                args.git_repo.as_deref(),
                args.git_branch.as_deref(),
                args.git_commit.as_deref(),
            ) => checkout.map_err(|e| e.to_string())?,
            _ = cancel.cancelled() => return Ok(None),
        };
        let path = script_path(&checkout, uri).map_err(|e| e.to_string())?;
        info!(
            procedure_id = id,
            script_uri = uri,
            "procedure {id} uses {} at commit {}",
            checkout.repo(),
            checkout.commit()
        );
        let python = if create_env {
            service
                .transition(id, ProcedureState::Idle)
                .map_err(|e| e.message)?;
            service
                .transition(id, ProcedureState::PrepEnv)
                .map_err(|e| e.message)?;
            let logs = service.clone();
            let on_line = move |line: &str| logs.append_log(id, Stream::Stdout, line.to_owned());
            match git.envs.ensure(&checkout, on_line, cancel.clone()).await {
                Ok(python) => python,
                Err(_) if cancel.is_cancelled() => return Ok(None),
                Err(err) => return Err(err.to_string()),
            }
        } else {
            PathBuf::from(service.config().python)
        };
        Ok(Some(Prepared {
            path,
            python,
            cwd: checkout.dir().to_owned(),
            _checkout: Some(checkout),
        }))
    };
    tokio::pin!(work);
    let mut stopping: Option<oneshot::Sender<()>> = None;
    loop {
        tokio::select! {
            result = &mut work => {
                let Some(done) = stopping else {
                    return result;
                };
                // Stopped while preparing: whatever the preparation came to, the
                // procedure ends STOPPED.
                if let Err(err) = service.transition(id, ProcedureState::Stopped) {
                    debug!(procedure_id = id, "{err}");
                }
                let _ = done.send(());
                return Ok(None);
            }
            command = control.recv(), if stopping.is_none() => match command {
                Some(Control::Stop { done }) => {
                    // Let the preparation wind down (pip killed, partial env removed)
                    // before the procedure is called STOPPED.
                    cancel.cancel();
                    stopping = Some(done);
                }
                // Nothing else can be asked of a procedure that is not READY yet.
                Some(Control::Call { .. }) | None => {}
            },
        }
    }
}

/// What the runner remembers of the worker's reports.
struct LinkState {
    /// The script to hand the worker once its interpreter is up.
    pending_load: Option<(PathBuf, FunctionArgs)>,
    /// How the worker said the procedure ended. It is recorded once the process has
    /// exited and its output is collected, so that a final state always comes with the
    /// script's complete output.
    last_words: Option<LastWords>,
}

enum LastWords {
    Complete,
    Failed(String),
}

impl LinkState {
    /// Acts on one report from the worker.
    fn handle(
        &mut self,
        service: &ProcedureService,
        id: u64,
        message: Result<FromWorker, worker_link::LinkError>,
        outbox: &Outbox,
    ) {
        match message {
            Ok(FromWorker::State {
                state: ProcedureState::Failed,
                stacktrace,
            }) => {
                self.last_words =
                    Some(LastWords::Failed(stacktrace.unwrap_or_else(|| {
                        "the script failed without a stack trace".into()
                    })))
            }
            Ok(FromWorker::State {
                state: ProcedureState::Complete,
                ..
            }) => self.last_words = Some(LastWords::Complete),
            Ok(FromWorker::State { state, .. }) => {
                if let Err(err) = service.transition(id, state) {
                    warn!(procedure_id = id, "ignoring worker report: {err}");
                    return;
                }
                // The first IDLE means the interpreter is up: hand it its script.
                if state == ProcedureState::Idle {
                    if let Some((path, init)) = self.pending_load.take() {
                        outbox.command(ToWorker::Load {
                            path: path.to_string_lossy().into_owned(),
                            init: JsonArgs::from_args(&init),
                        });
                    }
                }
            }
            Ok(FromWorker::Event { topic, payload }) => {
                service.publish_script_event(id, topic, payload)
            }
            Err(err) => warn!(procedure_id = id, "{err}"),
        }
    }
}

/// Reads what the worker said before it exited.
async fn drain(
    service: &ProcedureService,
    id: u64,
    reader: &mut LinkReader,
    link: &mut LinkState,
    outbox: &Outbox,
) {
    let read_all = async {
        while let Some(message) = reader.next().await {
            link.handle(service, id, message, outbox);
        }
    };
    // A process the script forked may still hold the channel open; do not wait for it.
    let _ = tokio::time::timeout(DRAIN_LIMIT, read_all).await;
}

/// SIGTERM, a grace period, then SIGKILL of the whole group; says which final state that
/// amounts to.
async fn stop(id: u64, worker: &mut Worker, config: &ProcedureConfig) -> ProcedureState {
    worker.terminate();
    let ended = tokio::time::timeout(config.stop_grace(), worker.child.wait())
        .await
        .is_ok();
    worker.kill_group();
    if ended
        || tokio::time::timeout(config.kill_wait(), worker.child.wait())
            .await
            .is_ok()
    {
        ProcedureState::Stopped
    } else {
        warn!(
            procedure_id = id,
            "script process {} did not end after SIGKILL", worker.pid
        );
        ProcedureState::Unknown
    }
}

/// Waits until the script's output has been read to its end (bounded: a process that
/// escaped its group could hold the pipes open).
async fn collect_output(pumps: [JoinHandle<()>; 2]) {
    let _ = tokio::time::timeout(DRAIN_LIMIT, futures::future::join_all(pumps)).await;
}

/// Logs and keeps every line the script prints on one stream.
fn capture_output(
    service: &ProcedureService,
    id: u64,
    pipe: impl AsyncRead + Unpin + Send + 'static,
    stream: Stream,
) -> JoinHandle<()> {
    let service = service.clone();
    tokio::spawn(async move {
        let mut lines = std::pin::pin!(process::lines(pipe));
        while let Some(line) = lines.next().await {
            service.append_log(id, stream, line);
        }
    })
}

/// Messages on their way to the worker. Commands (load, call) are never dropped; bus
/// events are dropped when the worker does not keep up, so a script that is slow to take
/// events can never stall its own runner (and with it, a stop).
struct Outbox {
    commands: mpsc::UnboundedSender<ToWorker>,
    events: mpsc::Sender<ToWorker>,
}

impl Outbox {
    fn start(mut writer: LinkWriter) -> Outbox {
        let (commands, mut command_rx) = mpsc::unbounded_channel();
        let (events, mut event_rx) = mpsc::channel(EVENT_BACKLOG);
        tokio::spawn(async move {
            loop {
                let message = tokio::select! {
                    biased;
                    Some(message) = command_rx.recv() => message,
                    Some(message) = event_rx.recv() => message,
                    else => break,
                };
                if writer.send(&message).await.is_err() {
                    break;
                }
            }
        });
        Outbox { commands, events }
    }

    fn command(&self, message: ToWorker) {
        let _ = self.commands.send(message);
    }

    fn event(&self, event: &oet_protocol::Event) {
        let _ = self.events.try_send(ToWorker::Event {
            topic: event.topic.clone(),
            msg_src: event.msg_src.clone(),
            payload: event.payload.to_json_lossy(),
        });
    }
}
