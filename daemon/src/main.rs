//! `oetd`: flags, configuration, logging, and the daemon's run from start to shutdown.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::SystemTime;

use anyhow::Context;
use clap::{CommandFactory, Parser};
use oet_protocol::{ProtocolError, Reloaded};
use oetd::activity::{oda, ActivityService};
use oetd::cgroup::{Containment, Controller};
use oetd::config::Config;
use oetd::events::EventBus;
use oetd::guard::{self, Guard};
use oetd::procedure::worker::Workers;
use oetd::procedure::zygote::Zygotes;
use oetd::procedure::{
    GitServices, Launcher, OutputSink, OutputTarget, ProcedureConfig, ProcedureService, Settings,
    WORKER_HARNESS,
};
use oetd::server::{self, Access, Services, Shutdown};
use oetd::state_dir::StateDir;
use oetd::store::Store;
use oetd::systemd;
use oetd::{children, reaper};
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
    if args.get(1).is_some_and(|a| a == guard::GUARD_FLAG) {
        return ExitCode::from(guard::run_guard(&args[2..]) as u8);
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
    raise_fd_limit();
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

/// Raises the soft limit of open files to the hard limit: each live procedure holds a
/// few descriptors, each connection one, and the soft limit is often a low 1024.
fn raise_fd_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return;
    };
    if soft >= hard {
        info!("open-file limit: {soft}");
        return;
    }
    match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
        Ok(()) => info!("open-file limit raised from {soft} to {hard}"),
        Err(err) => warn!("open-file limit stays at {soft}: cannot raise it to {hard}: {err}"),
    }
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
        config,
        flags,
        notifier,
        activated,
        log,
    } = daemon;
    // Handlers first: a signal that arrives once the socket is announced must find them.
    let mut term = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    let mut hup = signal(SignalKind::hangup()).context("cannot handle SIGHUP")?;
    // Claimed before anything in it is touched: a second oetd on it stops here.
    let state = StateDir::claim(&config.state_dir())?;
    let state_dir = state.path().to_owned();
    let harness = write_harness(&state_dir)?;
    let daemon_exe = std::env::current_exe().context("cannot find oetd's own executable")?;
    let (containment, cgroups_killed) = contain(&state_dir, &config.procedures);
    children::start().context("cannot become the child subreaper of oetd's workers")?;
    let places = match containment.root() {
        Some(root) => guard::Places {
            root: Some(root.dir().to_owned()),
            v1: root.v1_dirs(),
            made: root.made_dirs(),
        },
        None => guard::Places::default(),
    };
    let guard =
        Arc::new(Guard::spawn(&daemon_exe, &places).context("cannot start the procedures' guard")?);
    let output = OutputSink::new(match log.target() {
        systemd::LogTarget::Journald => OutputTarget::Journal,
        systemd::LogTarget::Stderr => OutputTarget::Stderr,
    });

    let bus = EventBus::new(config.events.clone());
    let git = GitServices::open(
        &config.git,
        &config.python,
        &state_dir,
        &config.cache_dir(),
        &daemon_exe,
    )
    .context("cannot set up git scripts")?;
    let settings = Settings::new(config.procedures.clone());
    let zygotes = Zygotes::new(
        settings.clone(),
        harness.clone(),
        containment.root().cloned(),
        guard.clone(),
    );
    let launcher = Launcher {
        workers: Workers::new(harness, guard.clone(), zygotes),
        guard: guard.clone(),
        git: git.clone(),
        work_dir: state_dir.clone(),
        containment: containment.clone(),
        output,
    };
    let sb_dir = state_dir.join("activities");
    let store_file = config.store.file(&state_dir);
    let store = Store::open(&config.store, &store_file, &sb_dir, bus);
    info!("store: {}", store_file.display());
    let procedures = ProcedureService::new(settings, launcher, store.clone());
    procedures.recover(&cgroups_killed).await;
    procedures.apply_interpreter().await;

    let oda = oda::open(&config.oda, &state_dir).context("cannot open the ODA")?;
    info!("ODA: {} ({:?} backend)", oda.location(), config.oda.backend);
    let activities = ActivityService::new(oda, procedures.clone(), sb_dir)
        .context("cannot prepare the directory for activities' SBD files")?;
    activities.recover().await;
    let (access, warnings) = Access::new(&config.access);
    for warning in warnings {
        warn!("{warning}");
    }

    // A socket passed by systemd belongs to systemd (it removes it); one we create is ours.
    let (listener, socket, own_socket) = match activated {
        Some(listener) => {
            let path = listener
                .local_addr()
                .ok()
                .and_then(|a| a.as_pathname().map(Path::to_owned))
                .unwrap_or_else(|| PathBuf::from("(socket passed by systemd)"));
            info!("using the control socket passed by systemd");
            server::check_socket(&path, &config.server)?;
            (listener, path, false)
        }
        None => {
            let path = config.socket_path();
            (server::bind(&path, &config.server)?, path, true)
        }
    };
    listener.set_nonblocking(true)?;
    let listener = tokio::net::UnixListener::from_std(listener)?;
    info!("oetd listening on {}", socket.display());

    let shutdown = Shutdown::default();
    let shutdown_for_server = shutdown.clone();
    let server_config = config.server.clone();
    let reloader = Arc::new(Reloader {
        flags,
        config: tokio::sync::Mutex::new(config),
        log,
        procedures: procedures.clone(),
        git,
        access: access.clone(),
        containment: containment.clone(),
    });
    let services = Services {
        procedures: procedures.clone(),
        activities,
        access,
        reload: reloader.clone(),
        socket: socket.display().to_string(),
        started_at: SystemTime::now(),
    };
    let server = tokio::spawn(async move {
        server::serve(listener, services, &server_config, shutdown_for_server).await
    });
    if let Err(err) = notifier.ready() {
        warn!("cannot tell systemd that oetd is ready: {err}");
    }
    systemd::health::spawn_status_reporter(notifier.clone(), procedures.clone());
    systemd::health::spawn_watchdog(notifier.clone(), procedures.clone());

    loop {
        tokio::select! {
            _ = term.recv() => { info!("SIGTERM received"); break }
            _ = int.recv() => { info!("SIGINT received"); break }
            // Off the signal path: the loop goes on taking signals (SIGTERM above all)
            // while the file is read.
            _ = hup.recv() => {
                if reloader.flags.config.is_none() {
                    info!(
                        "SIGHUP received, but oetd was started without --config: there is no \
                         file to reload, and it keeps running on its embedded defaults"
                    );
                    continue;
                }
                info!("SIGHUP received: reloading the configuration");
                let reloader = reloader.clone();
                tokio::spawn(async move {
                    let _ = reloader.run().await;
                });
            }
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
    // Everything is ended: the guard has nothing left to do.
    guard.release();
    info!("oetd stopped");
    Ok(())
}

/// Re-reads the configuration file (on SIGHUP, or `oetctl reload`) and applies what can
/// change safely (log level, procedure limits, roles, allowed repositories); says in the
/// log what changed and what needs a restart. A file that no longer parses changes
/// nothing. One reload at a time.
struct Reloader {
    flags: Flags,
    /// What is in effect, so the next reload compares against it.
    config: tokio::sync::Mutex<Config>,
    log: systemd::LogControl,
    procedures: ProcedureService,
    git: GitServices,
    access: Access,
    containment: Containment,
}

impl server::Reload for Reloader {
    fn reload(&self) -> Pin<Box<dyn Future<Output = Result<Reloaded, ProtocolError>> + Send + '_>> {
        Box::pin(self.run())
    }
}

impl Reloader {
    async fn run(&self) -> Result<Reloaded, ProtocolError> {
        let Some(path) = self.flags.config.clone() else {
            return Err(ProtocolError::invalid_state(
                "oetd was started without --config: there is no file to reload, and it \
                 keeps running on its embedded defaults",
            ));
        };
        let mut config = self.config.lock().await;
        let socket = self.flags.socket.clone();
        // Reading is bounded (a regular file, of limited size); it still blocks, so it
        // runs on a thread of its own.
        let read =
            tokio::task::spawn_blocking(move || Config::load(&path).map_err(|e| format!("{e:#}")))
                .await
                .map_err(|e| e.to_string())
                .and_then(|read| read);
        let mut new = match read {
            Ok(new) => new,
            Err(err) => {
                error!("configuration not reloaded, keeping the running one: {err}");
                return Err(ProtocolError::invalid_request(format!(
                    "configuration not reloaded, keeping the running one: {err}"
                )));
            }
        };
        if let Some(socket) = socket {
            new.server.socket = socket.display().to_string();
        }
        let mut warnings: Vec<String> = new.deprecations().to_vec();
        let changes = config.changes(&new);
        if changes.live.is_empty() && changes.restart.is_empty() {
            info!("configuration unchanged");
        }
        if new.log != config.log {
            if let Err(err) = self.log.set_level(&new.log.level) {
                warnings.push(format!("log.level not changed: {err}"));
            }
        }
        if let Some(root) = self.containment.root() {
            warnings.extend(unenforced(root, &new.procedures));
        }
        self.procedures.set_config(new.procedures.clone());
        self.procedures.apply_interpreter().await;
        self.git
            .repos
            .set_allowed_repos(new.git.allowed_repos.clone());
        warnings.extend(self.access.set(&new.access));
        for warning in &warnings {
            warn!("{warning}");
        }
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
        config.log = new.log;
        config.procedures = new.procedures;
        config.access = new.access;
        config.git.allowed_repos = new.git.allowed_repos;
        Ok(Reloaded {
            live: changes.live,
            restart: changes.restart,
            warnings,
        })
    }
}

/// Sets up the cgroups procedures run in (or finds why there can be none), says which in
/// the log, and kills what procedures of an oetd that died left running there; returns
/// the containment and the IDs of those procedures.
fn contain(state_dir: &Path, procedures: &ProcedureConfig) -> (Containment, Vec<u64>) {
    let containment = Containment::set_up(state_dir);
    let mut killed = Vec::new();
    match &containment {
        Containment::Cgroups(root) => {
            let controllers = root.controllers();
            info!(
                "each procedure runs in a cgroup of its own under {} (resource controllers: {})",
                root.dir().display(),
                if controllers.is_empty() {
                    "none".to_owned()
                } else {
                    controllers.join(", ")
                }
            );
            killed = root.kill_leftovers(std::time::Duration::from_secs(5));
            if !killed.is_empty() {
                warn!(
                    "killed what procedures {killed:?} of an earlier oetd left running in {}",
                    root.dir().display()
                );
            }
            for warning in unenforced(root, procedures) {
                warn!("{warning}");
            }
        }
        Containment::ProcessGroups { reason } => warn!(
            "procedures are contained by process groups only, because {reason}: a process \
             that leaves its group (setsid, a double fork) escapes a stop and oetd's death, \
             and procedures.memory_max, pids_max and cpu_max cannot be applied"
        ),
    }
    (containment, killed)
}

/// A warning for each configured limit whose controller procedures do not get.
fn unenforced(root: &oetd::cgroup::CgroupRoot, procedures: &ProcedureConfig) -> Vec<String> {
    let limits = procedures.limits();
    [
        (
            limits.memory_max_bytes.is_some(),
            Controller::Memory,
            "memory_max",
        ),
        (limits.pids_max.is_some(), Controller::Pids, "pids_max"),
        (limits.cpu_max.is_some(), Controller::Cpu, "cpu_max"),
    ]
    .into_iter()
    .filter(|(set, controller, _)| *set && !root.has(*controller))
    .map(|(_, controller, key)| {
        format!(
            "procedures.{key} is set, but no {} controller is available to oetd's cgroups: \
             procedures run without that limit",
            controller.name()
        )
    })
    .collect()
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
