//! `oetd`: flags, configuration, logging, and the daemon's run from start to shutdown.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::SystemTime;

use anyhow::Context;
use clap::Parser;
use oetd::config::Config;
use oetd::events::EventBus;
use oetd::procedure::supervisor::{self, WorkerCommand};
use oetd::procedure::{ProcedureService, WORKER_HARNESS};
use oetd::server::{self, Services, Shutdown};
use tokio::signal::unix::{signal, SignalKind};
use tracing::{error, info};

/// The Observation Execution Tool daemon: runs observing scripts and supervises them.
#[derive(Debug, Parser)]
#[command(name = "oetd", version, about, long_about = None)]
struct Flags {
    /// Control socket to create (overrides server.socket in the configuration).
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
}

fn main() -> ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args.get(1).is_some_and(|a| a == supervisor::REAPER_FLAG) {
        return ExitCode::from(supervisor::run_reaper(&args[2..]) as u8);
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
    let mut config = match &flags.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    if let Some(socket) = &flags.socket {
        config.server.socket = socket.display().to_string();
    }
    if flags.check_config {
        println!("configuration is valid");
        return Ok(());
    }
    if flags.print_config {
        print!(
            "{}",
            toml::to_string(&config).context("cannot print the configuration")?
        );
        return Ok(());
    }
    init_logging(&config.log.level)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(serve(config))
}

fn init_logging(level: &str) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(level)
        .with_context(|| format!("invalid log.level '{level}'"))?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    Ok(())
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let state_dir = config.state_dir();
    std::fs::create_dir_all(&state_dir)
        .with_context(|| format!("cannot create state directory {}", state_dir.display()))?;
    let harness = write_harness(&state_dir)?;
    let daemon_exe = std::env::current_exe().context("cannot find oetd's own executable")?;

    let bus = EventBus::new(config.events.buffer);
    let procedures = ProcedureService::new(
        config.procedures.clone(),
        WorkerCommand {
            harness,
            daemon_exe,
        },
        state_dir.clone(),
        bus,
    );

    let socket = config.socket_path();
    let listener = server::bind(&socket, 0o660)?;
    listener.set_nonblocking(true)?;
    let listener = tokio::net::UnixListener::from_std(listener)?;
    info!("oetd listening on {}", socket.display());

    let shutdown = Shutdown::default();
    let services = Services {
        procedures: procedures.clone(),
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

    wait_for_stop_signal().await?;
    info!("shutting down: stopping running scripts");
    shutdown.stop_accepting.cancel();
    procedures.shutdown().await;
    shutdown.close_connections.cancel();
    if let Err(err) = server.await {
        error!("the control server ended abnormally: {err}");
    }
    if let Err(err) = std::fs::remove_file(&socket) {
        error!("cannot remove socket {}: {err}", socket.display());
    }
    info!("oetd stopped");
    Ok(())
}

async fn wait_for_stop_signal() -> anyhow::Result<()> {
    let mut term = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    tokio::select! {
        _ = term.recv() => info!("SIGTERM received"),
        _ = int.recv() => info!("SIGINT received"),
    }
    Ok(())
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
