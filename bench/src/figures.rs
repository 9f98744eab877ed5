//! The figures: each is a name, what it measures, and a function that returns one
//! sample per iteration. Add a figure by writing its function and a line in [`FIGURES`].

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use anyhow::bail;
use oet_protocol::client::StreamItem;
use oet_protocol::{EventStream, FunctionArgs, ProcedureState, ScriptSpec};

use crate::daemon::BenchDaemon;

type Samples<'a> = Pin<Box<dyn Future<Output = anyhow::Result<Vec<Duration>>> + 'a>>;

/// One figure of the benchmark.
pub struct Figure {
    pub name: &'static str,
    /// What is measured, from when to when.
    pub what: &'static str,
    /// Takes `iterations` samples against the daemon.
    pub measure: for<'a> fn(&'a BenchDaemon, usize) -> Samples<'a>,
}

pub const FIGURES: &[Figure] = &[
    Figure {
        name: "start_to_complete",
        what: "start request sent -> COMPLETE event received (main does nothing; store on)",
        measure: |daemon, n| Box::pin(start_to_complete(daemon, n)),
    },
    Figure {
        name: "create_to_ready",
        what: "create request sent -> READY event received (script imports nothing)",
        measure: |daemon, n| Box::pin(create_to_ready(daemon, n)),
    },
];

const EMPTY_MAIN: &str = "def main():\n    pass\n";

/// Reads events until procedure `id` has entered `state`.
async fn until_state(
    events: &mut EventStream,
    id: u64,
    state: ProcedureState,
) -> anyhow::Result<()> {
    loop {
        match events.next().await {
            Some(Ok(StreamItem::Event(event))) if event.procedure_id() == Some(id) => {
                match event.new_state() {
                    Some(entered) if entered == state => return Ok(()),
                    Some(entered) if entered.is_final() => {
                        bail!("procedure {id} ended {entered} instead of {state}")
                    }
                    _ => {}
                }
            }
            Some(Ok(StreamItem::Lagged(missed))) => bail!("the benchmark lagged {missed} events"),
            Some(Ok(_)) => {}
            Some(Err(err)) => return Err(err.into()),
            None => bail!("oetd closed the event stream"),
        }
    }
}

async fn start_to_complete(
    daemon: &BenchDaemon,
    iterations: usize,
) -> anyhow::Result<Vec<Duration>> {
    let uri = daemon.script("empty_main.py", EMPTY_MAIN)?;
    let mut client = daemon.client().await?;
    let mut samples = Vec::with_capacity(iterations);
    for _ in 0..iterations {
        let id = daemon.ready(&uri).await?;
        let mut events = daemon.events().await?;
        let began = Instant::now();
        client.start(id, "main", FunctionArgs::default()).await?;
        until_state(&mut events, id, ProcedureState::Complete).await?;
        samples.push(began.elapsed());
    }
    Ok(samples)
}

async fn create_to_ready(daemon: &BenchDaemon, iterations: usize) -> anyhow::Result<Vec<Duration>> {
    let uri = daemon.script("empty_main.py", EMPTY_MAIN)?;
    let mut client = daemon.client().await?;
    let mut samples = Vec::with_capacity(iterations);
    for _ in 0..iterations {
        let mut events = daemon.events().await?;
        let began = Instant::now();
        let created = client
            .create(ScriptSpec::filesystem(&uri), FunctionArgs::default())
            .await?;
        until_state(&mut events, created.id, ProcedureState::Ready).await?;
        samples.push(began.elapsed());
        // Not left running: every iteration would keep a process.
        client.stop(created.id, false).await?;
    }
    Ok(samples)
}
