//! One procedure's supervisor: from preparing the script and spawning its worker to the
//! final state. It is the only task that talks to the worker: it relays the worker's
//! reports to the procedure's record (through its [`ProcedureHandle`]), hands the worker
//! calls and bus events, and carries out stops — SIGTERM, the grace period, then SIGKILL
//! of the whole process group.

use std::path::PathBuf;
use std::time::Duration;

use futures::StreamExt;
use oet_protocol::{FunctionArgs, ProcedureState, Stream};
use tokio::io::AsyncRead;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use super::config::Settings;
use super::control::Control;
use super::handle::ProcedureHandle;
use super::launch::Context;
use super::prepare;
use super::script::Script;
use super::worker::{describe_exit, Worker};
use super::worker_link::{self, FromWorker, JsonArgs, LinkReader, LinkWriter, ToWorker};
use crate::events::{BusEvent, Received};
use crate::process;

/// Bus events waiting to be handed to a worker; beyond this the worker misses events
/// rather than slowing anyone down.
const EVENT_BACKLOG: usize = 1024;

/// How long to keep reading a worker's last reports and output after its process has
/// exited. Only a process that escaped the process group can make this wait matter.
const DRAIN_LIMIT: Duration = Duration::from_secs(2);

pub(super) async fn run(
    handle: ProcedureHandle,
    context: Context,
    script: Script,
    init: FunctionArgs,
    mut control: mpsc::UnboundedReceiver<Control>,
) {
    let prepared = match prepare::prepare(&handle, &context, script, &mut control).await {
        Ok(Some(prepared)) => prepared,
        // Stopped while preparing: the state is already recorded.
        Ok(None) => return,
        Err(message) => return handle.fail(message),
    };
    let workers = &context.launcher.workers;
    let (mut worker, io) = match workers.spawn(&prepared.python, handle.id(), &prepared.cwd) {
        Ok(spawned) => spawned,
        Err(err) => {
            return handle.fail(format!(
                "cannot start the script interpreter '{}': {err}",
                prepared.python.display()
            ))
        }
    };
    handle.worker_started(worker.pid());
    let output = [
        capture_output(&handle, io.stdout, Stream::Stdout),
        capture_output(&handle, io.stderr, Stream::Stderr),
    ];
    let (mut reader, writer) = worker_link::split(io.channel);
    let outbox = Outbox::start(writer);
    let mut events = context.bus.subscribe();
    let mut link = LinkState {
        pending_load: Some((prepared.path.clone(), init)),
        last_words: None,
    };
    let mut reader_open = true;
    let id = handle.id();

    loop {
        tokio::select! {
            biased;
            message = reader.next(), if reader_open => match message {
                Some(message) => link.handle(&handle, message, &outbox),
                None => reader_open = false,
            },
            command = control.recv() => match command {
                Some(Control::Call { function, args }) => {
                    let JsonArgs { args, kwargs } = JsonArgs::from_args(&args);
                    outbox.command(ToWorker::Call { function, args, kwargs });
                }
                Some(Control::Stop { done }) => {
                    let state = stop(id, &mut worker, &context.settings).await;
                    collect_output(output).await;
                    if let Err(err) = handle.enter(state) {
                        debug!(procedure_id = id, "stop found the procedure already ended: {err}");
                    }
                    let _ = done.send(());
                    break;
                }
                // The record keeps a sender while the procedure exists.
                None => {}
            },
            status = worker.child.wait() => {
                drain(&handle, &mut reader, &mut link, &outbox).await;
                // Whatever the script left running goes now, so that its output ends.
                worker.kill_group();
                collect_output(output).await;
                match link.last_words.take() {
                    Some(LastWords::Complete) => {
                        if let Err(err) = handle.enter(ProcedureState::Complete) {
                            warn!(procedure_id = id, "{err}");
                        }
                    }
                    Some(LastWords::Failed(trace)) => handle.fail(trace),
                    None => handle.fail(match status {
                        Ok(status) => describe_exit(status),
                        Err(err) => format!("lost track of the script process: {err}"),
                    }),
                }
                break;
            },
            received = events.recv() => match received {
                Received::Event(published) => {
                    // A script's own events are not handed back to it.
                    if !matches!(published.event(), BusEvent::Script { id: from, .. } if *from == id) {
                        for event in published.wire() {
                            outbox.event(event);
                        }
                    }
                }
                Received::Lagged(missed) => {
                    debug!(procedure_id = id, "worker missed {missed} bus events");
                }
            },
        }
    }
    worker.finish().await;
    // The checkout stays pinned in the cache until the procedure's process is gone.
    drop(prepared);
}

/// What the supervisor remembers of the worker's reports.
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
        handle: &ProcedureHandle,
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
                if let Err(err) = handle.enter(state) {
                    warn!(procedure_id = handle.id(), "ignoring worker report: {err}");
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
            Ok(FromWorker::Event { topic, payload }) => handle.publish(topic, payload),
            Err(err) => warn!(procedure_id = handle.id(), "{err}"),
        }
    }
}

/// Reads what the worker said before it exited.
async fn drain(
    handle: &ProcedureHandle,
    reader: &mut LinkReader,
    link: &mut LinkState,
    outbox: &Outbox,
) {
    let read_all = async {
        while let Some(message) = reader.next().await {
            link.handle(handle, message, outbox);
        }
    };
    // A process the script forked may still hold the channel open; do not wait for it.
    let _ = tokio::time::timeout(DRAIN_LIMIT, read_all).await;
}

/// SIGTERM, a grace period, then SIGKILL of the whole group; says which final state that
/// amounts to.
async fn stop(id: u64, worker: &mut Worker, settings: &Settings) -> ProcedureState {
    let (grace, kill_wait) = settings.get(|c| (c.stop_grace(), c.kill_wait()));
    worker.terminate();
    let ended = tokio::time::timeout(grace, worker.child.wait())
        .await
        .is_ok();
    worker.kill_group();
    if ended
        || tokio::time::timeout(kill_wait, worker.child.wait())
            .await
            .is_ok()
    {
        ProcedureState::Stopped
    } else {
        warn!(
            procedure_id = id,
            "script process {} did not end after SIGKILL",
            worker.pid()
        );
        ProcedureState::Unknown
    }
}

/// Waits until the script's output has been read to its end (bounded: a process that
/// escaped its group could hold the pipes open).
async fn collect_output(pumps: [JoinHandle<()>; 2]) {
    let _ = tokio::time::timeout(DRAIN_LIMIT, futures::future::join_all(pumps)).await;
}

/// Keeps every line the script prints on one stream.
fn capture_output(
    handle: &ProcedureHandle,
    pipe: impl AsyncRead + Unpin + Send + 'static,
    stream: Stream,
) -> JoinHandle<()> {
    let handle = handle.clone();
    tokio::spawn(async move {
        let mut lines = std::pin::pin!(process::lines(pipe));
        while let Some(line) = lines.next().await {
            handle.output(stream, line);
        }
    })
}

/// Messages on their way to the worker. Commands (load, call) are never dropped; bus
/// events are dropped when the worker does not keep up, so a script that is slow to take
/// events can never stall its own supervisor (and with it, a stop).
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
