//! `oetd`: flags, configuration, logging, and the daemon's run from start to shutdown.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::SystemTime;

use anyhow::Context;
use clap::{CommandFactory, Parser};
use oetd::activity::{oda, ActivityService};
use oetd::config::Config;
use oetd::events::EventBus;
use oetd::procedure::worker::WorkerCommand;
use oetd::procedure::{GitServices, Launcher, ProcedureService, WORKER_HARNESS};
use oetd::reaper;
use oetd::server::{self, Services, Shutdown};
use oetd::store::Store;
use oetd::systemd;
use tokio::signal::unix::{signal, SignalKind};
use tracing::{error, info, warn};

mod manual;

/// The Observation Execution Tool daemon: runs observing scripts and supervises them.
#[derive(Debug, Parser)]
#[command(name = "oetd", version, about, long_about = None)]
struct Flags {
    /// Control socket to create (overrides server.socket in the configuration). Ignored
    /// when systemd passes the socket (socket activation).
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Configuration file (TOML). Without it, embedded defaults are used.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Check the configuration and exit.
    #[arg(long)]
    check_config: bool,
    /// Print the effective configuration and exit.
    #[arg(long)]
    print_config: bool,
    /// Write the oetd(1) man page into DIR and exit (for packaging).
    #[arg(long, value_name = "DIR", hide = true)]
    generate_man: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args.get(1).is_some_and(|a| a == reaper::REAPER_FLAG) {
        return ExitCode::from(reaper::run_reaper(&args[2..]) as u8);
    }
    let flags = Flags::parse();
    match run(flags) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("oetd: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(flags: Flags) -> anyhow::Result<()> {
    if let Some(dir) = &flags.generate_man {
        std::fs::create_dir_all(dir)?;
        manual::write(Flags::command(), dir)
            .with_context(|| format!("cannot write the man page into {}", dir.display()))?;
        return Ok(());
    }
    let config = load_config(&flags)?;
    if flags.check_config {
        for deprecation in config.deprecations() {
            eprintln!("oetd: warning: {deprecation}");
        }
        println!("configuration is valid");
        return Ok(());
    }
    if flags.print_config {
        print!(
            "{}",
            toml::to_string(&config.in_effect()).context("cannot print the configuration")?
        );
        return Ok(());
    }
    // These read and clear variables systemd set for this process alone, so they run
    // before any thread or child process exists.
    let notifier = systemd::Notifier::from_env()?;
    let activated = systemd::listen_fds()?;
    let log = systemd::init_logging(&config.log.level)?;
    if let Some(problem) = log.journald_fallback() {
        warn!("{problem}");
    }
    for deprecation in config.deprecations() {
        warn!("{deprecation}");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(serve(Daemon {
        config,
        flags,
        notifier,
        activated,
        log,
    }))
}

/// Reads the configuration file (or takes the defaults) and applies `--socket`.
fn load_config(flags: &Flags) -> anyhow::Result<Config> {
    let mut config = match &flags.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    if let Some(socket) = &flags.socket {
        config.server.socket = socket.display().to_string();
    }
    Ok(config)
}

/// Everything the running daemon starts from.
struct Daemon {
    config: Config,
    flags: Flags,
    notifier: systemd::Notifier,
    activated: Option<std::os::unix::net::UnixListener>,
    log: systemd::LogControl,
}

async fn serve(daemon: Daemon) -> anyhow::Result<()> {
    let Daemon {
        mut config,
        flags,
        notifier,
        activated,
        log,
    } = daemon;
    // Handlers first: a signal that arrives once the socket is announced must find them.
    let mut term = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    let mut hup = signal(SignalKind::hangup()).context("cannot handle SIGHUP")?;
    let state_dir = config.state_dir();
    std::fs::create_dir_all(&state_dir)
        .with_context(|| format!("cannot create state directory {}", state_dir.display()))?;
    let harness = write_harness(&state_dir)?;
    let daemon_exe = std::env::current_exe().context("cannot find oetd's own executable")?;

    let bus = EventBus::new(config.events.clone());
    let git = GitServices::open(
        &config.git,
        &config.python,
        &state_dir,
        &config.cache_dir(),
        &daemon_exe,
    )
    .context("cannot set up git scripts")?;
    let launcher = Launcher {
        workers: WorkerCommand {
            harness,
            daemon_exe,
        },
        git: git.clone(),
        work_dir: state_dir.clone(),
    };
    let sb_dir = state_dir.join("activities");
    let store_file = config.store.file(&state_dir);
    let store = Store::open(&config.store, &store_file, &sb_dir, bus);
    info!("store: {}", store_file.display());
    let procedures = ProcedureService::new(config.procedures.clone(), launcher, store.clone());
    procedures.recover().await;

    let oda = oda::open(&config.oda, &state_dir).context("cannot open the ODA")?;
    info!("ODA: {} ({:?} backend)", oda.location(), config.oda.backend);
    let activities = ActivityService::new(oda, procedures.clone(), sb_dir)
        .context("cannot prepare the directory for activities' SBD files")?;
    activities.recover().await;

    // A socket passed by systemd belongs to systemd (it removes it); one we create is ours.
    let (listener, socket, own_socket) = match activated {
        Some(listener) => {
            let path = listener
                .local_addr()
                .ok()
                .and_then(|a| a.as_pathname().map(Path::to_owned))
                .unwrap_or_else(|| PathBuf::from("(socket passed by systemd)"));
            info!("using the control socket passed by systemd");
            (listener, path, false)
        }
        None => {
            let path = config.socket_path();
            (server::bind(&path, 0o660)?, path, true)
        }
    };
    listener.set_nonblocking(true)?;
    let listener = tokio::net::UnixListener::from_std(listener)?;
    info!("oetd listening on {}", socket.display());

    let shutdown = Shutdown::default();
    let services = Services {
        procedures: procedures.clone(),
        activities,
        socket: socket.display().to_string(),
        started_at: SystemTime::now(),
    };
    let server = tokio::spawn(server::serve(
        listener,
        services,
        config.server.max_connections,
        config.server.max_frame_bytes,
        shutdown.clone(),
    ));
    if let Err(err) = notifier.ready() {
        warn!("cannot tell systemd that oetd is ready: {err}");
    }
    systemd::health::spawn_status_reporter(notifier.clone(), procedures.clone());
    systemd::health::spawn_watchdog(notifier.clone(), procedures.clone());

    loop {
        tokio::select! {
            _ = term.recv() => { info!("SIGTERM received"); break }
            _ = int.recv() => { info!("SIGINT received"); break }
            _ = hup.recv() => reload(&flags, &mut config, &log, &procedures, &git),
        }
    }

    if let Err(err) = notifier.stopping() {
        warn!("cannot tell systemd that oetd is stopping: {err}");
    }
    info!("shutting down: stopping running scripts");
    shutdown.stop_accepting.cancel();
    procedures.shutdown().await;
    // Listeners get every final state before their connections close.
    procedures.durable().await;
    shutdown.close_connections.cancel();
    if let Err(err) = server.await {
        error!("the control server ended abnormally: {err}");
    }
    if own_socket {
        if let Err(err) = std::fs::remove_file(&socket) {
            error!("cannot remove socket {}: {err}", socket.display());
        }
    }
    store.close().await;
    info!("oetd stopped");
    Ok(())
}

/// SIGHUP: re-reads the configuration file and applies what can change safely (log
/// level, procedure limits, allowed repositories); says in the log what changed and
/// what needs a restart. A file that no longer parses changes nothing.
fn reload(
    flags: &Flags,
    config: &mut Config,
    log: &systemd::LogControl,
    procedures: &ProcedureService,
    git: &GitServices,
) {
    if flags.config.is_none() {
        info!(
            "SIGHUP received, but oetd was started without --config: there is no file to \
             reload, and it keeps running on its embedded defaults"
        );
        return;
    }
    info!("SIGHUP received: reloading the configuration");
    let new = match load_config(flags) {
        Ok(new) => new,
        Err(err) => {
            error!("configuration not reloaded, keeping the running one: {err:#}");
            return;
        }
    };
    for deprecation in new.deprecations() {
        warn!("{deprecation}");
    }
    let changes = config.changes(&new);
    if changes.live.is_empty() && changes.restart.is_empty() {
        info!("configuration unchanged");
        return;
    }
    if new.log != config.log {
        if let Err(err) = log.set_level(&new.log.level) {
            error!("log.level not changed: {err}");
        }
    }
    procedures.set_config(new.procedures.clone());
    git.repos.set_allowed_repos(new.git.allowed_repos.clone());
    if !changes.live.is_empty() {
        info!(
            "configuration reloaded; now in effect: {}",
            changes.live.join(", ")
        );
    }
    if !changes.restart.is_empty() {
        warn!(
            "changed but only in effect after a restart of oetd: {}",
            changes.restart.join(", ")
        );
    }
    // Remember what is in effect, so the next reload compares against it.
    config.log = new.log;
    config.procedures = new.procedures;
    config.git.allowed_repos = new.git.allowed_repos;
}

/// Writes the worker harness into the state directory (atomically, so a worker never
/// reads half a file) and returns its path.
fn write_harness(state_dir: &Path) -> anyhow::Result<PathBuf> {
    let path = state_dir.join("oet_worker.py");
    let temp = state_dir.join(format!(".oet_worker.py.{}", std::process::id()));
    std::fs::write(&temp, WORKER_HARNESS)
        .with_context(|| format!("cannot write the worker harness to {}", temp.display()))?;
    std::fs::rename(&temp, &path)
        .with_context(|| format!("cannot install the worker harness at {}", path.display()))?;
    Ok(path)
}
