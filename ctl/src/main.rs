//! `oetctl`: turns a command line into calls on oetd's control socket and prints the
//! answers. Failures end the process with one line `oetctl: <reason>` on stderr and a
//! non-zero exit status (2 for a wrong command line, 1 for everything else).

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::error::ErrorKind as ClapErrorKind;
use clap_complete::Shell;
use oet_protocol::client::{Progress, StreamItem};
use oet_protocol::summary::now;
use oet_protocol::{
    paths, topics, ActivityState, ActivitySummary, Client, ClientError, Event, EventStream,
    FunctionArgs, ProcedureState, ProcedureSummary,
};
use oetctl::cli::{
    self, Action, ActivityAction, ActivityRunArgs, AidArgs, CreateArgs, HistoryArgs, ListenArgs,
    OdaAction, PidArgs, ProcedureAction, StartArgs, StopArgs,
};
use oetctl::kwargs::{self, ArgError, GitOptions};
use oetctl::render;

/// Exit status of a wrong command line.
const USAGE: u8 = 2;

/// How long a stop may take before oetctl says that it is waiting for the script.
const STOP_NOTICE_AFTER: std::time::Duration = std::time::Duration::from_secs(1);

fn main() -> ExitCode {
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    // Known before parsing, so that even a wrong command line answers in JSON.
    let json = argv.iter().any(|word| word == "--json");
    let cli = match cli::parse(argv) {
        Ok(cli) => cli,
        Err(err) => return usage_error(err, json),
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            let err = anyhow::Error::new(err).context("cannot start the runtime");
            return fail(&err, json);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => fail(&err, json),
    }
}

/// Prints help and version as clap does; any other command-line error as one line.
fn usage_error(err: clap::Error, json: bool) -> ExitCode {
    if matches!(
        err.kind(),
        ClapErrorKind::DisplayHelp
            | ClapErrorKind::DisplayVersion
            | ClapErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        // Nothing useful is left to do if the help cannot be printed.
        let _ = err.print();
        return ExitCode::from(u8::try_from(err.exit_code()).unwrap_or(USAGE));
    }
    let message = format!("{} (see --help)", one_line(&err.to_string()));
    report(&message, "usage", USAGE, json)
}

/// Says why oetctl failed on stderr: one line `oetctl: <reason>`, or with `--json` one
/// JSON object `{"error": {"kind", "message"}, "exit_code"}`; returns the exit status.
fn report(message: &str, kind: &str, code: u8, json: bool) -> ExitCode {
    if json {
        let error = serde_json::json!({
            "error": {"kind": kind, "message": message},
            "exit_code": code,
        });
        eprintln!("{error}");
    } else {
        eprintln!("oetctl: {message}");
    }
    ExitCode::from(code)
}

/// Clap's multi-line message condensed to its sentence: the lines before the usage,
/// without the `error:` prefix and without tips.
fn one_line(message: &str) -> String {
    message
        .lines()
        .map(str::trim)
        .take_while(|line| !line.starts_with("Usage:"))
        .filter(|line| {
            !line.is_empty() && !line.starts_with("tip:") && !line.starts_with("For more")
        })
        .collect::<Vec<_>>()
        .join(" ")
        .trim_start_matches("error: ")
        .to_owned()
}

fn fail(err: &anyhow::Error, json: bool) -> ExitCode {
    // A reader that went away (`oetctl listen | head`) is not a failure of oetctl.
    let broken_pipe = err
        .downcast_ref::<io::Error>()
        .is_some_and(|io| io.kind() == io::ErrorKind::BrokenPipe);
    if broken_pipe {
        return ExitCode::SUCCESS;
    }
    // Script arguments and URIs are part of the command line: wrong ones are usage
    // errors, found before oetd is asked anything.
    if err.downcast_ref::<ArgError>().is_some() {
        return report(&reason(err), "usage", USAGE, json);
    }
    let kind = match err.downcast_ref::<ClientError>() {
        Some(ClientError::Daemon(refusal)) => refusal.kind.as_str(),
        Some(ClientError::Connect { .. } | ClientError::Closed) => "unreachable",
        Some(_) => "protocol",
        None => "failed",
    };
    report(&reason(err), kind, 1, json)
}

/// The error and its causes on one line, leaving out a cause that the message before it
/// already quotes.
fn reason(err: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

async fn run(cli: cli::Cli) -> anyhow::Result<()> {
    let ctl = Ctl {
        socket: cli
            .socket
            .filter(|path| !path.as_os_str().is_empty())
            .unwrap_or_else(paths::client_socket),
        json: cli.json,
        timeout: std::time::Duration::from_secs_f64(cli.timeout),
    };
    match cli.command {
        Action::Procedure(action) => match action {
            ProcedureAction::Create(args) => ctl.create(args).await,
            ProcedureAction::Start(args) => ctl.start(args).await,
            ProcedureAction::Stop(args) => ctl.stop(args).await,
            ProcedureAction::List(args) if args.history.all => ctl.history(args.history).await,
            ProcedureAction::List(args) => ctl.list(args.pid).await,
            ProcedureAction::Describe(args) => ctl.describe(args).await,
            ProcedureAction::Logs(args) => ctl.logs(args).await,
        },
        Action::Activity(action) => match action {
            ActivityAction::Run(args) => ctl.run_activity(args).await,
            ActivityAction::List(args) if args.history.all => {
                ctl.activity_history(args.history).await
            }
            ActivityAction::List(args) => ctl.list_activities(args.aid).await,
            ActivityAction::Describe(args) => ctl.describe_activity(args).await,
        },
        Action::Oda(OdaAction::PutSbd { file }) => ctl.put_sbd(&file).await,
        Action::Listen(args) => ctl.listen(args).await,
        Action::Status => ctl.status().await,
        Action::Reload => ctl.reload().await,
        Action::Generate { out_dir } => generate(&out_dir),
    }
}

/// What every command needs: where oetd is and how to print.
struct Ctl {
    socket: PathBuf,
    json: bool,
    /// For connecting, and for each answer.
    timeout: std::time::Duration,
}

impl Ctl {
    async fn connect(&self) -> anyhow::Result<Client> {
        let name = concat!("oetctl ", env!("CARGO_PKG_VERSION"));
        Ok(Client::connect_within(&self.socket, name, self.timeout).await?)
    }

    /// A second connection turned into an event stream. Subscribe before causing the
    /// change you want to see, so that none of its events can be missed.
    async fn subscribe(&self) -> anyhow::Result<EventStream> {
        Ok(self.connect().await?.subscribe().await?)
    }

    async fn create(&self, args: CreateArgs) -> anyhow::Result<()> {
        let init_args = script_arguments(&["procedure", "create"], &args.args)?;
        let git = GitOptions {
            git_repo: args.git_repo,
            git_branch: args.git_branch,
            git_commit: args.git_commit,
            create_env: args.create_env,
        };
        let script = kwargs::script_spec(&args.script_uri, git)?;
        let mut client = self.connect().await?;
        if !args.wait {
            let summary = client.create(script, init_args).await?;
            return self.print_summary(&summary);
        }
        let mut events = self.subscribe().await?;
        let created = client.create(script, init_args).await?;
        let summary = events
            .wait_for(&mut client, created.id, |state| {
                state == ProcedureState::Ready
            })
            .await?;
        self.print_summary(&summary)?;
        ended_well(&summary)
    }

    async fn start(&self, args: StartArgs) -> anyhow::Result<()> {
        let fn_args = script_arguments(&["procedure", "start"], &args.args)?;
        let mut client = self.connect().await?;
        let id = match args.pid {
            Some(id) => id,
            None => newest(&mut client).await?,
        };
        if !args.listen {
            let summary = client.start(id, &args.function, fn_args).await?;
            return self.print_summary(&summary);
        }

        let mut events = self.subscribe().await?;
        let runs_before = runs(&client.describe(id).await?);
        client.start(id, &args.function, fn_args).await?;
        // Done at a final state, or when the procedure is READY again after running
        // (a function other than main leaves the process loaded).
        let mut seen_running = false;
        let source = id.to_string();
        events
            .follow(
                &mut client,
                id,
                |item| {
                    self.print_item(item, |event| {
                        event.msg_src == source || event.procedure_id() == Some(id)
                    })
                },
                |progress: Progress<'_, ProcedureSummary>| match progress {
                    Progress::Entered(state) => {
                        seen_running |= state == ProcedureState::Running;
                        state.is_final() || (seen_running && state == ProcedureState::Ready)
                    }
                    Progress::Summary(summary) => {
                        let ran = runs(summary) > runs_before;
                        summary.state.is_final() || (ran && summary.state == ProcedureState::Ready)
                    }
                    Progress::Other(_) => false,
                },
            )
            .await?;
        let summary = client.describe(id).await?;
        if self.json {
            print_line(&render::procedure_json(&summary).to_string())?;
        } else {
            print_text("\n")?;
            self.print_summary(&summary)?;
        }
        ended_well(&summary)
    }

    async fn stop(&self, args: StopArgs) -> anyhow::Result<()> {
        let mut client = self.connect().await?;
        let id = match args.pid {
            Some(id) => id,
            None => running(&mut client).await?,
        };
        let grace = client.status().await?.stop_grace_secs;
        let stopping = client.stop(id, args.run_abort);
        tokio::pin!(stopping);
        // A script that ends at SIGTERM stops at once; one that does not is killed when
        // the grace period is over. Say so rather than wait in silence.
        let summaries = tokio::select! {
            summaries = &mut stopping => summaries?,
            _ = tokio::time::sleep(STOP_NOTICE_AFTER) => {
                eprintln!(
                    "oetctl: procedure {id} has not ended since SIGTERM; waiting for it, \
                     at most {grace} s (procedures.stop_grace_secs), before it is killed"
                );
                stopping.await?
            }
        };
        self.print_summaries(&summaries)
    }

    async fn list(&self, ids: Vec<u64>) -> anyhow::Result<()> {
        let summaries = self.connect().await?.list(ids).await?;
        self.print_summaries(&summaries)
    }

    async fn history(&self, args: HistoryArgs) -> anyhow::Result<()> {
        let state = args
            .state
            .as_deref()
            .map(str::parse::<ProcedureState>)
            .transpose()
            .map_err(anyhow::Error::msg)?;
        let summaries = self
            .connect()
            .await?
            .procedure_history(args.since, state, args.limit)
            .await?;
        self.print_summaries(&summaries)
    }

    async fn describe(&self, args: PidArgs) -> anyhow::Result<()> {
        let mut client = self.connect().await?;
        let id = pid_or_newest(&mut client, args.pid).await?;
        let summary = client.describe(id).await?;
        if self.json {
            print_json(&render::procedure_json(&summary))
        } else {
            print_text(&render::describe(&summary))
        }
    }

    async fn logs(&self, args: PidArgs) -> anyhow::Result<()> {
        let mut client = self.connect().await?;
        let id = pid_or_newest(&mut client, args.pid).await?;
        let logs = client.logs(id).await?;
        if self.json {
            print_json(&render::logs_json(&logs))
        } else {
            print_text(&render::logs(&logs))
        }
    }

    async fn listen(&self, args: ListenArgs) -> anyhow::Result<()> {
        let mut events = self.subscribe().await?;
        // On stderr, so that stdout carries only events; it also tells a watcher that
        // nothing from now on will be missed.
        eprintln!(
            "oetctl: listening to oetd at {} (interrupt to stop)",
            self.socket.display()
        );
        let wanted = |topic: &str| {
            args.topic.is_empty() || args.topic.iter().any(|p| topic.starts_with(p.as_str()))
        };
        loop {
            match events.next().await {
                Some(Ok(StreamItem::Event(event))) => {
                    if wanted(&event.topic) {
                        self.print_event(&event)?;
                    }
                }
                Some(Ok(StreamItem::Lagged(missed))) => self.print_lagged(missed)?,
                Some(Err(err)) => return Err(err.into()),
                None => bail!("oetd closed the event stream (has it stopped?)"),
            }
        }
    }

    async fn run_activity(&self, args: ActivityRunArgs) -> anyhow::Result<()> {
        let script_args = match &args.script_args {
            Some(text) => kwargs::script_args(text)?,
            None => Default::default(),
        };
        let mut client = self.connect().await?;
        // Subscribed first, so that the activity's first events are not missed.
        let mut events = if args.listen {
            Some(self.subscribe().await?)
        } else {
            None
        };
        let summary = client
            .run_activity(
                &args.activity_name,
                &args.sbd_id,
                script_args,
                args.prepare_only,
                args.create_env,
            )
            .await?;
        let Some(events) = events.as_mut() else {
            return self.print_activity(&summary);
        };
        let summary = self.follow_activity(events, &mut client, &summary).await?;
        if self.json {
            print_line(&render::activity_json(&summary).to_string())?;
        } else {
            print_text("\n")?;
            self.print_activity(&summary)?;
        }
        activity_ended_well(&summary)
    }

    /// Prints the events of an activity, its procedure and its script until the activity
    /// is final (or PREPARED, when only preparing was asked, or when main could not be
    /// started); returns its summary then.
    async fn follow_activity(
        &self,
        events: &mut EventStream,
        client: &mut Client,
        started: &ActivitySummary,
    ) -> anyhow::Result<ActivitySummary> {
        let id = started.id;
        let pid = started.procedure_id;
        let source = pid.map(|pid| pid.to_string());
        let about_it = |event: &Event| {
            event.activity_id() == Some(id)
                || (pid.is_some() && event.procedure_id() == pid)
                || source.as_deref() == Some(event.msg_src.as_str())
        };
        events
            .follow(
                client,
                id,
                |item| self.print_item(item, about_it),
                |progress: Progress<'_, ActivitySummary>| match progress {
                    Progress::Entered(state) => {
                        state.is_final()
                            || (state == ActivityState::Prepared && started.prepare_only)
                    }
                    // `activity.lifecycle.error`: main could not be started, so it stays
                    // PREPARED.
                    Progress::Other(event) => event.topic.starts_with(topics::ACTIVITY_PREFIX),
                    Progress::Summary(summary) => {
                        summary.state.is_final()
                            || (summary.state == ActivityState::Prepared
                                && (summary.prepare_only || summary.error.is_some()))
                    }
                },
            )
            .await
    }

    async fn list_activities(&self, ids: Vec<u64>) -> anyhow::Result<()> {
        let summaries = self.connect().await?.list_activities(ids).await?;
        if self.json {
            print_json(&render::activities_json(&summaries))
        } else {
            print_text(&render::activity_table(&summaries))
        }
    }

    async fn activity_history(&self, args: HistoryArgs) -> anyhow::Result<()> {
        let state = args
            .state
            .as_deref()
            .map(str::parse::<ActivityState>)
            .transpose()
            .map_err(anyhow::Error::msg)?;
        let summaries = self
            .connect()
            .await?
            .activity_history(args.since, state, args.limit)
            .await?;
        if self.json {
            print_json(&render::activities_json(&summaries))
        } else {
            print_text(&render::activity_table(&summaries))
        }
    }

    async fn describe_activity(&self, args: AidArgs) -> anyhow::Result<()> {
        let mut client = self.connect().await?;
        let id = match args.aid {
            Some(id) => id,
            None => {
                let summaries = client.list_activities(Vec::new()).await?;
                match summaries.iter().map(|summary| summary.id).max() {
                    Some(id) => id,
                    None => bail!("oetd has no activities; run one with 'oetctl activity run'"),
                }
            }
        };
        let summary = client.describe_activity(id).await?;
        if self.json {
            print_json(&render::activity_json(&summary))
        } else {
            print_text(&render::describe_activity(&summary))
        }
    }

    async fn put_sbd(&self, file: &Path) -> anyhow::Result<()> {
        let text = if file == Path::new("-") {
            io::read_to_string(io::stdin()).context("cannot read the SBD from standard input")?
        } else {
            std::fs::read_to_string(file)
                .with_context(|| format!("cannot read the SBD file {}", file.display()))?
        };
        let (sbd_id, version) = self.connect().await?.put_sbd(text).await?;
        if self.json {
            print_json(&serde_json::json!({"sbd_id": sbd_id, "version": version}))
        } else {
            print_line(&format!("stored SBD {sbd_id} version {version}"))
        }
    }

    fn print_activity(&self, summary: &ActivitySummary) -> anyhow::Result<()> {
        if self.json {
            return print_json(&render::activity_json(summary));
        }
        print_text(&render::activity_table(std::slice::from_ref(summary)))?;
        if let Some(error) = &summary.error {
            print_text(&format!("\nError: {error}\n"))?;
        }
        Ok(())
    }

    async fn reload(&self) -> anyhow::Result<()> {
        let reloaded = self.connect().await?.reload().await?;
        if self.json {
            print_json(&serde_json::json!({
                "live": reloaded.live,
                "restart": reloaded.restart,
                "warnings": reloaded.warnings,
            }))
        } else {
            print_text(&render::reloaded(&reloaded))
        }
    }

    async fn status(&self) -> anyhow::Result<()> {
        let status = self.connect().await?.status().await?;
        if self.json {
            print_json(&render::status_json(&status))
        } else {
            print_text(&render::status(&status, now()))
        }
    }

    /// One summary as a table row, with the stack trace when there is one.
    fn print_summary(&self, summary: &ProcedureSummary) -> anyhow::Result<()> {
        if self.json {
            return print_json(&render::procedure_json(summary));
        }
        print_text(&render::procedure_table(std::slice::from_ref(summary)))?;
        if let Some(trace) = &summary.stacktrace {
            print_text(&format!("\nStack trace:\n{}\n", trace.trim_end()))?;
        }
        Ok(())
    }

    fn print_summaries(&self, summaries: &[ProcedureSummary]) -> anyhow::Result<()> {
        if self.json {
            print_json(&render::procedures_json(summaries))
        } else {
            print_text(&render::procedure_table(summaries))
        }
    }

    /// Prints a stream item: an event when `wanted` says so, and every lag notice.
    fn print_item(&self, item: &StreamItem, wanted: impl Fn(&Event) -> bool) -> anyhow::Result<()> {
        match item {
            StreamItem::Event(event) if wanted(event) => self.print_event(event),
            StreamItem::Event(_) => Ok(()),
            StreamItem::Lagged(missed) => self.print_lagged(*missed),
        }
    }

    fn print_event(&self, event: &oet_protocol::Event) -> anyhow::Result<()> {
        if self.json {
            print_line(&render::event_json(event).to_string())
        } else {
            print_line(&render::event_line(event))
        }
    }

    fn print_lagged(&self, missed: u64) -> anyhow::Result<()> {
        if self.json {
            print_line(&render::lagged_json(missed).to_string())
        } else {
            print_line(&render::lagged_line(missed))
        }
    }
}

/// The script arguments among the free words of `command`, warning on stderr about
/// words that look like a mistyped keyword argument.
fn script_arguments(command: &[&str], words: &[String]) -> anyhow::Result<FunctionArgs> {
    for warning in kwargs::suspicious(words) {
        eprintln!("oetctl: warning: {warning}");
    }
    let own_option = |word: &str| cli::is_option_of(command, word);
    Ok(kwargs::function_args(words, own_option)?)
}

/// How many times the procedure has entered RUNNING.
fn runs(summary: &ProcedureSummary) -> usize {
    summary
        .history
        .iter()
        .filter(|change| change.state == ProcedureState::Running)
        .count()
}

/// An error when a waited-for procedure ended FAILED, STOPPED or UNKNOWN.
fn ended_well(summary: &ProcedureSummary) -> anyhow::Result<()> {
    match summary.state {
        ProcedureState::Failed | ProcedureState::Stopped | ProcedureState::Unknown => {
            bail!("procedure {} ended {}", summary.id, summary.state)
        }
        _ => Ok(()),
    }
}

/// An error when a followed activity ended FAILED or STOPPED, or could not start main.
fn activity_ended_well(summary: &ActivitySummary) -> anyhow::Result<()> {
    match (summary.state, &summary.error) {
        (ActivityState::Failed | ActivityState::Stopped, _) => {
            bail!("activity {} ended {}", summary.id, summary.state)
        }
        (_, Some(error)) => bail!("activity {}: {error}", summary.id),
        _ => Ok(()),
    }
}

async fn pid_or_newest(client: &mut Client, pid: Option<u64>) -> anyhow::Result<u64> {
    match pid {
        Some(id) => Ok(id),
        None => newest(client).await,
    }
}

/// The newest live procedure: the highest ID, since the daemon allocates them in order.
async fn newest(client: &mut Client) -> anyhow::Result<u64> {
    let summaries = client.list(Vec::new()).await?;
    match summaries.iter().map(|summary| summary.id).max() {
        Some(id) => Ok(id),
        None => bail!("oetd has no procedures; create one with 'oetctl procedure create'"),
    }
}

/// The procedure that is RUNNING, as upstream's `stop` chose it when none was named.
async fn running(client: &mut Client) -> anyhow::Result<u64> {
    let summaries = client.list(Vec::new()).await?;
    let running: Vec<u64> = summaries
        .iter()
        .filter(|summary| summary.state == ProcedureState::Running)
        .map(|summary| summary.id)
        .collect();
    match running.as_slice() {
        [id] => Ok(*id),
        [] => bail!("no procedure is RUNNING; name the one to stop with --pid"),
        many => bail!(
            "procedures {} are RUNNING; name the one to stop with --pid",
            many.iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// Writes the man pages and the bash, zsh and fish completions into `out_dir`.
fn generate(out_dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(out_dir)
        .with_context(|| format!("cannot create {}", out_dir.display()))?;
    // oetctl.1 names a page per subcommand (oetctl-procedure-create.1, ...); write them all.
    clap_mangen::generate_to(oetctl::command(), out_dir)
        .with_context(|| format!("cannot write the man pages into {}", out_dir.display()))?;
    let mut cmd = oetctl::command();
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        clap_complete::generate_to(shell, &mut cmd, "oetctl", out_dir)
            .with_context(|| format!("cannot write the {shell} completions"))?;
    }
    Ok(())
}

fn print_text(text: &str) -> anyhow::Result<()> {
    let mut out = io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()?;
    Ok(())
}

fn print_line(line: &str) -> anyhow::Result<()> {
    print_text(&format!("{line}\n"))
}

fn print_json(json: &serde_json::Value) -> anyhow::Result<()> {
    print_line(&serde_json::to_string_pretty(json)?)
}
