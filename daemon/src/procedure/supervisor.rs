//! One procedure's supervisor: from preparing the script and spawning its worker (in the
//! procedure's cgroup) to the final state. It is the only task that talks to the worker:
//! it checks and relays the worker's reports to the procedure's record (through its
//! [`ProcedureHandle`]), hands the worker calls and the bus events of the topics its
//! script subscribed to (never `request.*`), and carries out stops —
//! SIGTERM, the grace period, then `cgroup.kill` of everything in the procedure's cgroup
//! (SIGKILL of its process group where there is no cgroup). A message the harness could
//! not have sent ends the procedure FAILED as a worker protocol violation.

use std::path::PathBuf;
use std::process::ExitStatus;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use oet_protocol::{bytes_text, FunctionArgs, ProcedureState, ResourceUsage, Stream};
use tokio::io::AsyncRead;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, warn};

use super::config::Settings;
use super::control::Control;
use super::handle::ProcedureHandle;
use super::launch::Context;
use super::link_check::{Heard, LastWords, LinkCheck, Violation};
use super::prepare;
use super::script::Script;
use super::worker::{describe_exit, Worker};
use super::worker_link::{self, FromWorker, JsonArgs, LinkError, LinkReader, LinkWriter, ToWorker};
use crate::cgroup::ProcedureCgroup;
use crate::events::{BusEvent, Received, Subscription, Topics};
use crate::process;

/// Bus events waiting to be handed to a worker; beyond this the worker misses events
/// rather than slowing anyone down.
const EVENT_BACKLOG: usize = 1024;

/// How long to keep reading a worker's last reports and output after its process has
/// exited. Only a process that escaped the procedure (without a cgroup) can make this
/// wait matter.
const DRAIN_LIMIT: Duration = Duration::from_secs(2);

/// How long a worker's process may live on after its final word: the harness exits at
/// once, so a process still there later was not the harness speaking.
const LAST_WORDS_EXIT_SECS: u64 = 5;

/// How the supervision of a running worker ended.
enum End {
    /// The service asked for a stop; answer `done` once the state is final.
    Stop(oneshot::Sender<()>),
    /// The worker's process exited.
    Exited(std::io::Result<ExitStatus>),
    /// The worker said something the harness could not have said.
    Violation(Violation),
}

pub(super) async fn run(
    handle: ProcedureHandle,
    context: Context,
    script: Script,
    init: FunctionArgs,
    control: mpsc::UnboundedReceiver<Control>,
) {
    supervise(&handle, context, script, init, control).await;
    handle.finish();
}

async fn supervise(
    handle: &ProcedureHandle,
    context: Context,
    script: Script,
    init: FunctionArgs,
    mut control: mpsc::UnboundedReceiver<Control>,
) {
    let prepared = match prepare::prepare(handle, &context, script, &mut control).await {
        Ok(Some(prepared)) => prepared,
        // Stopped while preparing: the state is already recorded.
        Ok(None) => return,
        Err(message) => return handle.fail(message),
    };
    let id = handle.id();
    let cgroup = match confine(id, &context) {
        Ok(cgroup) => cgroup,
        Err(message) => return handle.fail(message),
    };
    let workers = &context.launcher.workers;
    let spawned = workers
        .start(&prepared.python, id, &prepared.cwd, cgroup.clone())
        .await;
    let (worker, io) = match spawned {
        Ok(spawned) => spawned,
        Err(err) => {
            release(&context, cgroup.as_deref());
            return handle.fail(format!(
                "cannot start the script interpreter '{}': {err}",
                prepared.python.display()
            ));
        }
    };
    handle.worker_started(worker.pid());
    if let Some(cgroup) = &cgroup {
        let probe = cgroup.clone();
        handle.watch_usage(Arc::new(move || probe.usage()));
    }
    let output = [
        capture_output(handle, io.stdout, Stream::Stdout),
        capture_output(handle, io.stderr, Stream::Stderr),
    ];
    let (reader, writer) = worker_link::split(io.channel);
    let mut running = Running {
        handle,
        context: &context,
        worker,
        reader,
        outbox: Outbox::start(writer),
        check: LinkCheck::new(),
        events: None,
        pending_load: Some((prepared.path.clone(), init)),
        last_words: None,
    };
    let end = running.watch(&mut control).await;
    running.end(end, output).await;
    // The checkout stays pinned in the cache until the procedure's process is gone.
    drop(prepared);
}

/// Makes the procedure's cgroup, where procedures get one, and tells the guard.
fn confine(id: u64, context: &Context) -> Result<Option<Arc<ProcedureCgroup>>, String> {
    let Some(root) = context.launcher.containment.root() else {
        return Ok(None);
    };
    let limits = context.settings.get(|c| c.limits());
    let cgroup = root
        .procedure(id, &limits)
        .map_err(|err| format!("cannot make the procedure's cgroup: {err}"))?;
    context.launcher.guard.cgroup(&cgroup.name());
    Ok(Some(Arc::new(cgroup)))
}

/// Hands a procedure's cgroup back to the root, which removes it.
fn release(context: &Context, cgroup: Option<&ProcedureCgroup>) {
    if let (Some(root), Some(cgroup)) = (context.launcher.containment.root(), cgroup) {
        root.release(cgroup);
        context.launcher.guard.cgroup_gone(&cgroup.name());
    }
}

/// A worker being supervised, and what the supervisor knows of it.
struct Running<'a> {
    handle: &'a ProcedureHandle,
    context: &'a Context,
    worker: Worker,
    reader: LinkReader,
    outbox: Outbox,
    check: LinkCheck,
    /// The bus events of the topics the script subscribed to; none while it subscribed
    /// to nothing.
    events: Option<Subscription>,
    /// The script to hand the worker once its interpreter is up.
    pending_load: Option<(PathBuf, FunctionArgs)>,
    /// How the worker said the procedure ended, and when. It is recorded once the
    /// process has exited and its output is collected, so that a final state always
    /// comes with the script's complete output.
    last_words: Option<(LastWords, Instant)>,
}

impl Running<'_> {
    /// Relays between the worker and the rest of oetd until the worker's process exits,
    /// a stop is asked for, or the worker breaks the protocol.
    async fn watch(&mut self, control: &mut mpsc::UnboundedReceiver<Control>) -> End {
        let id = self.handle.id();
        let mut reader_open = true;
        loop {
            let lingering = self
                .last_words
                .as_ref()
                .map(|(_, since)| *since + Duration::from_secs(LAST_WORDS_EXIT_SECS));
            tokio::select! {
                biased;
                message = self.reader.next(), if reader_open => match message {
                    Some(message) => {
                        if let Err(violation) = self.hear(message) {
                            return End::Violation(violation);
                        }
                    }
                    None => reader_open = false,
                },
                command = control.recv() => match command {
                    Some(Control::Call { function, args }) => {
                        self.check.calling(&function);
                        let JsonArgs { args, kwargs } = JsonArgs::from_args(&args);
                        self.outbox.command(ToWorker::Call { function, args, kwargs });
                    }
                    Some(Control::Stop { done }) => return End::Stop(done),
                    // The record keeps a sender while the procedure exists.
                    None => {}
                },
                status = self.worker.wait() => return End::Exited(status),
                () = sleep_until(lingering), if lingering.is_some() => {
                    if let Some((last, _)) = &self.last_words {
                        return End::Violation(LinkCheck::lingering(last, LAST_WORDS_EXIT_SECS));
                    }
                },
                received = next_event(&mut self.events) => match received {
                    Received::Event(published) => {
                        // A script's own events are not handed back to it.
                        let own = matches!(
                            published.event(),
                            BusEvent::Script { id: from, .. } if *from == id
                        );
                        if let (false, Some(events)) = (own, &self.events) {
                            for event in published.wire() {
                                if events.wants_topic(&event.topic) {
                                    self.outbox.event(event);
                                }
                            }
                        }
                    }
                    Received::Lagged(missed) => {
                        debug!(procedure_id = id, "worker missed {missed} bus events");
                    }
                },
            }
        }
    }

    /// Checks one report from the worker and acts on it.
    fn hear(&mut self, message: Result<FromWorker, LinkError>) -> Result<(), Violation> {
        let message = message.map_err(|err| Violation(err.to_string()))?;
        match self.check.check(message)? {
            Heard::Up => {
                self.enter(ProcedureState::Idle);
                if let Some((path, init)) = self.pending_load.take() {
                    self.check.loading();
                    self.outbox.command(ToWorker::Load {
                        path: path.to_string_lossy().into_owned(),
                        init: JsonArgs::from_args(&init),
                    });
                }
            }
            Heard::Enter(state) => self.enter(state),
            Heard::Final(last) => self.last_words = Some((last, Instant::now())),
            Heard::Event { topic, payload } => self.handle.publish(topic, payload),
            Heard::Topics => self.listen(),
        }
        Ok(())
    }

    /// Follows the topics the script listens to: a subscription to them on the bus,
    /// none at all while there are none.
    fn listen(&mut self) {
        let topics = self.check.topics();
        if topics.is_empty() {
            self.events = None;
            return;
        }
        let topics = Topics::Script(topics.clone());
        match &self.events {
            Some(events) => events.set_topics(topics),
            None => self.events = Some(self.context.bus.subscribe_to(topics)),
        }
    }

    fn enter(&self, state: ProcedureState) {
        if let Err(err) = self.handle.enter(state) {
            warn!(
                procedure_id = self.handle.id(),
                "ignoring worker report: {err}"
            );
        }
    }

    /// Ends the procedure's processes, collects its output and measurements, and
    /// records its final state.
    async fn end(mut self, end: End, output: [JoinHandle<()>; 2]) {
        let id = self.handle.id();
        let settings = &self.context.settings;
        let (final_state, done) = match end {
            End::Stop(done) => {
                let state = stop(id, &mut self.worker, settings).await;
                collect_output(output).await;
                (Ending::Enter(state), Some(done))
            }
            End::Exited(status) => {
                // Whatever the script left running goes now, so that the channel and its
                // output end; what the worker sent before it exited is still there to read.
                self.worker.kill_all();
                self.drain().await;
                collect_output(output).await;
                self.wait_empty().await;
                let ending = match self.last_words.take() {
                    Some((LastWords::Complete, _)) => Ending::Enter(ProcedureState::Complete),
                    Some((LastWords::Failed(trace), _)) => Ending::Fail(trace),
                    None => Ending::Fail(match status {
                        Ok(status) => describe_exit(status),
                        Err(err) => format!("lost track of the script process: {err}"),
                    }),
                };
                (ending, None)
            }
            End::Violation(violation) => {
                warn!(
                    procedure_id = id,
                    "procedure {id}: worker protocol violation: {violation}"
                );
                self.worker.kill_all();
                let _ =
                    tokio::time::timeout(settings.get(|c| c.kill_wait()), self.worker.wait()).await;
                collect_output(output).await;
                self.wait_empty().await;
                (
                    Ending::Fail(format!("worker protocol violation: {violation}")),
                    None,
                )
            }
        };
        let cgroup = self.worker.cgroup().cloned();
        let ending = match &cgroup {
            Some(cgroup) => {
                let usage = cgroup.usage();
                let ending = out_of_memory(final_state, cgroup, &usage);
                self.handle.measured(usage);
                ending
            }
            None => final_state,
        };
        // Nothing of the procedure is left once its final state is told: its worker is
        // reaped and its cgroup removed first.
        self.worker.finish().await;
        release(self.context, cgroup.as_deref());
        match ending {
            Ending::Enter(state) => {
                if let Err(err) = self.handle.enter(state) {
                    debug!(procedure_id = id, "the procedure had already ended: {err}");
                }
            }
            Ending::Fail(trace) => self.handle.fail(trace),
        }
        if let Some(done) = done {
            let _ = done.send(());
        }
    }

    /// Reads what the worker said before it exited.
    async fn drain(&mut self) {
        let read_all = async {
            while let Some(message) = self.reader.next().await {
                if let Err(violation) = self.hear(message) {
                    return Some(violation);
                }
            }
            None
        };
        // A process the script forked may still hold the channel open; do not wait for it.
        if let Ok(Some(violation)) = tokio::time::timeout(DRAIN_LIMIT, read_all).await {
            let id = self.handle.id();
            warn!(
                procedure_id = id,
                "procedure {id}: worker protocol violation: {violation}"
            );
            self.last_words = Some((
                LastWords::Failed(format!("worker protocol violation: {violation}")),
                Instant::now(),
            ));
        }
    }

    /// Waits until nothing is left in the procedure's cgroup (bounded by the kill wait).
    async fn wait_empty(&self) -> bool {
        match self.worker.cgroup() {
            Some(cgroup) => {
                let within = self.context.settings.get(|c| c.kill_wait());
                wait_empty(cgroup.clone(), within).await
            }
            None => true,
        }
    }
}

/// How a procedure ends.
enum Ending {
    Enter(ProcedureState),
    Fail(String),
}

/// A procedure whose processes the out-of-memory killer ended failed for that, whatever
/// else it said.
fn out_of_memory(ending: Ending, cgroup: &ProcedureCgroup, usage: &ResourceUsage) -> Ending {
    let kills = cgroup.oom_kills();
    if kills == 0 {
        return ending;
    }
    let limit = match usage.limits.memory_max_bytes {
        Some(bytes) => format!("limit {}", bytes_text(bytes)),
        None => "no limit of its own".to_owned(),
    };
    let what = match kills {
        1 => "1 process".to_owned(),
        n => format!("{n} processes"),
    };
    let cause = format!("out of memory ({limit}): the kernel killed {what} of the procedure");
    match ending {
        Ending::Fail(trace) => Ending::Fail(format!("{cause}\n{trace}")),
        // A script that got over it (or was stopped) ended so nonetheless.
        ending @ Ending::Enter(_) => ending,
    }
}

/// SIGTERM, a grace period, then the kill of everything; says which final state that
/// amounts to: STOPPED once nothing is left of the procedure, UNKNOWN if something is.
async fn stop(id: u64, worker: &mut Worker, settings: &Settings) -> ProcedureState {
    let (grace, kill_wait) = settings.get(|c| (c.stop_grace(), c.kill_wait()));
    worker.terminate();
    let ended = tokio::time::timeout(grace, worker.wait()).await.is_ok();
    worker.kill_all();
    let worker_gone = ended || tokio::time::timeout(kill_wait, worker.wait()).await.is_ok();
    let all_gone = match worker.cgroup() {
        Some(cgroup) => worker_gone && wait_empty(cgroup.clone(), kill_wait).await,
        None => worker_gone,
    };
    if all_gone {
        ProcedureState::Stopped
    } else {
        warn!(
            procedure_id = id,
            "processes of procedure {id} (worker {}) did not end after they were killed",
            worker.pid()
        );
        ProcedureState::Unknown
    }
}

/// Waits, off the async threads, until `cgroup` has no process left (at most `within`).
async fn wait_empty(cgroup: Arc<ProcedureCgroup>, within: Duration) -> bool {
    tokio::task::spawn_blocking(move || cgroup.wait_empty(within))
        .await
        .unwrap_or(false)
}

/// The next event of `events`, or never while there is no subscription.
async fn next_event(events: &mut Option<Subscription>) -> Received {
    match events {
        Some(events) => events.recv().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
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
