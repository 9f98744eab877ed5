//! `oet-bench`: measures oetd the way an operator meets it — a real `oetd` on a socket
//! and state directory of its own, real Python workers — and prints each figure's median
//! and 99th percentile. The figures are listed in [`figures::FIGURES`]; adding one is
//! writing its measuring function and a line there.

mod daemon;
mod figures;
mod stats;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::Parser;

/// Measure oetd: each figure's median and 99th percentile over its iterations.
#[derive(Debug, Parser)]
#[command(name = "oet-bench", version)]
struct Flags {
    /// Measurements per figure (after one warm-up run that is not counted)
    #[arg(long, default_value_t = 100)]
    iterations: usize,
    /// READY procedures for the figures about many (list_many, memory, descriptors)
    #[arg(long, default_value_t = 500)]
    many: usize,
    /// create -> start -> COMPLETE cycles of the cycles figure
    #[arg(long, default_value_t = 10_000)]
    cycles: usize,
    /// Events of each burst
    #[arg(long, default_value_t = 10_000)]
    burst: usize,
    /// Only these figures (repeatable) [default: all]
    #[arg(long, value_name = "NAME")]
    figure: Vec<String>,
    /// The oetd binary [default: the one next to oet-bench]
    #[arg(long, value_name = "PATH")]
    oetd: Option<PathBuf>,
    /// The Python interpreter for scripts [default: $OET_TEST_PYTHON, else python3]
    #[arg(long, value_name = "PATH")]
    python: Option<String>,
    /// List the figures and exit
    #[arg(long)]
    list: bool,
}

fn main() -> ExitCode {
    let flags = Flags::parse();
    match run(flags) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("oet-bench: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(flags: Flags) -> anyhow::Result<()> {
    if flags.list {
        for figure in figures::FIGURES {
            println!("{:<24} {} ({})", figure.name, figure.what, figure.unit);
        }
        return Ok(());
    }
    if flags.iterations == 0 {
        bail!("--iterations must be at least 1");
    }
    let chosen: Vec<&figures::Figure> = figures::FIGURES
        .iter()
        .filter(|f| flags.figure.is_empty() || flags.figure.iter().any(|n| n == f.name))
        .collect();
    if let Some(unknown) = flags
        .figure
        .iter()
        .find(|name| !figures::FIGURES.iter().any(|f| f.name == name.as_str()))
    {
        bail!("no figure named '{unknown}' (see --list)");
    }
    let oetd = match flags.oetd {
        Some(path) => path,
        None => std::env::current_exe()
            .context("cannot find oet-bench's own executable")?
            .with_file_name("oetd"),
    };
    let python = flags
        .python
        .or_else(|| std::env::var("OET_TEST_PYTHON").ok())
        .unwrap_or_else(|| "python3".into());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let daemon = daemon::BenchDaemon::start(&oetd, &python)?;
        println!(
            "oet-bench: {} ({} iterations per figure, python {python})",
            oetd.display(),
            flags.iterations
        );
        println!("{}", stats::header());
        let scale = figures::Scale {
            iterations: flags.iterations + 1,
            many: flags.many,
            cycles: flags.cycles,
            burst: flags.burst,
        };
        for figure in chosen {
            let mut outcome = (figure.measure)(&daemon, scale)
                .await
                .with_context(|| format!("figure {} failed", figure.name))?;
            // A figure sampled once per iteration had a first run that warmed caches and
            // the interpreter's imports; it is not counted.
            if outcome.values.len() == scale.iterations {
                outcome.values.remove(0);
            }
            println!("{}", stats::row(figure, &outcome));
        }
        daemon.stop()
    })
}
