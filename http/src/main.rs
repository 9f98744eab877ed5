//! `oet-http`: flags, configuration, logging, and the shim's run from start to stop.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{CommandFactory, Parser};
use oet_http::auth::Auth;
use oet_http::config::{secs, Config};
use oet_http::{routes, server};
use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// The original OET's REST API and event stream, served over oetd's control socket.
///
/// oetd sees every call of the shim as a call of the shim's own user, whoever the HTTP
/// client is: oetd decides what the shim may do at all, and bearer tokens (auth.tokens_file)
/// can only narrow that down per client.
#[derive(Debug, Parser)]
#[command(name = "oet-http", version, about, long_about)]
struct Flags {
    /// oetd's control socket (overrides oetd.socket in the configuration).
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Address and port to listen on, e.g. 127.0.0.1:5000 (overrides server.listen).
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
    /// Configuration file (TOML). Without it, embedded defaults are used.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Check the configuration (and the tokens file) and exit.
    #[arg(long)]
    check_config: bool,
    /// Print the effective configuration and exit.
    #[arg(long)]
    print_config: bool,
    /// Write the oet-http(1) man page into DIR and exit (for packaging).
    #[arg(long, value_name = "DIR", hide = true)]
    generate_man: Option<PathBuf>,
}

fn main() -> ExitCode {
    match run(Flags::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("oet-http: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(flags: Flags) -> anyhow::Result<()> {
    if let Some(dir) = &flags.generate_man {
        std::fs::create_dir_all(dir)?;
        clap_mangen::generate_to(Flags::command(), dir)
            .with_context(|| format!("cannot write the man page into {}", dir.display()))?;
        return Ok(());
    }
    let config = load_config(&flags)?;
    let auth = Auth::load(config.tokens_path())?;
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
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log.level)
        .with_context(|| format!("log.level {:?} is not a log filter", config.log.level))?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // The journal stamps each line itself.
        .with_ansi(false)
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(serve(config, auth))
}

/// Reads the configuration file (or takes the defaults) and applies the flags.
fn load_config(flags: &Flags) -> anyhow::Result<Config> {
    let mut config = match &flags.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    if let Some(socket) = &flags.socket {
        config.oetd.socket = socket.display().to_string();
    }
    if let Some(listen) = &flags.listen {
        config.server.listen = listen.clone();
    }
    config.validate().map_err(anyhow::Error::msg)?;
    Ok(config)
}

async fn serve(config: Config, auth: Auth) -> anyhow::Result<()> {
    let mut term = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    let mut hup = signal(SignalKind::hangup()).context("cannot handle SIGHUP")?;
    let wanted = config.listen_addr().map_err(anyhow::Error::msg)?;
    let listener = tokio::net::TcpListener::bind(wanted)
        .await
        .with_context(|| format!("cannot listen on {wanted}"))?;
    let listen = listener
        .local_addr()
        .context("cannot read the bound address")?;
    let shutdown = CancellationToken::new();
    let tokens = auth.enabled();
    let app = oet_http::app(&config, listen, auth, shutdown.clone());
    let router = routes::router(app.clone());
    let limits = server::Limits {
        max_connections: config.server.max_connections,
        header_timeout: secs(config.server.header_timeout_secs),
        grace: Duration::from_secs(5),
    };
    let serving = tokio::spawn(server::serve(listener, router, limits, shutdown.clone()));
    info!(
        "oet-http listening on http://{listen}{} for oetd at {} ({})",
        config.server.prefix,
        config.socket_path().display(),
        if tokens {
            "bearer tokens required"
        } else {
            "no tokens: every caller may operate"
        },
    );
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => match app.auth.reload() {
                Ok(true) => info!("re-read the tokens file"),
                Ok(false) => info!("SIGHUP: no tokens file is configured; nothing to re-read"),
                Err(err) => warn!("kept the tokens in effect: {err}"),
            },
        }
    }
    info!("stopping: no new connections; open streams end");
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    shutdown.cancel();
    serving.await.context("the listener task failed")?;
    info!("oet-http stopped");
    Ok(())
}
