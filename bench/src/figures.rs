//! The figures: each is a name, what it measures, its unit, and a function that returns
//! its samples. Add a figure by writing its function and a line in [`FIGURES`].

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use oet_protocol::client::StreamItem;
use oet_protocol::{EventStream, FunctionArgs, ProcedureState, ScriptSpec, Value};

use crate::daemon::{BenchDaemon, MAX_RUNNING};

/// How much each figure does.
#[derive(Debug, Clone, Copy)]
pub struct Scale {
    /// Samples per figure (after one warm-up that is not counted).
    pub iterations: usize,
    /// READY procedures for the figures about many (list, memory, descriptors).
    pub many: usize,
    /// create -> start -> COMPLETE cycles of the cycle figure.
    pub cycles: usize,
    /// Events of a burst.
    pub burst: usize,
}

/// What a figure measured: its samples, and a note (e.g. events lost).
#[derive(Debug, Default)]
pub struct Outcome {
    pub values: Vec<f64>,
    pub note: String,
}

type Measuring<'a> = Pin<Box<dyn Future<Output = anyhow::Result<Outcome>> + 'a>>;

/// One figure of the benchmark.
pub struct Figure {
    pub name: &'static str,
    /// What is measured, from when to when.
    pub what: &'static str,
    pub unit: &'static str,
    pub measure: for<'a> fn(&'a BenchDaemon, Scale) -> Measuring<'a>,
}

pub const FIGURES: &[Figure] = &[
    Figure {
        name: "list_0",
        what: "list request -> answer on an open connection, no procedures",
        unit: "ms",
        measure: |d, s| Box::pin(list(d, s, 0)),
    },
    Figure {
        name: "list_10",
        what: "list request -> answer, 10 READY procedures",
        unit: "ms",
        measure: |d, s| Box::pin(list(d, s, 10)),
    },
    Figure {
        name: "list_many",
        what: "list request -> answer, --many READY procedures (500 by default)",
        unit: "ms",
        measure: |d, s| Box::pin(list(d, s, s.many)),
    },
    Figure {
        name: "create_to_ready",
        what: "create request sent -> READY event received (script imports nothing)",
        unit: "ms",
        measure: |d, s| Box::pin(create_to_ready(d, s)),
    },
    Figure {
        name: "start_to_complete",
        what: "start request sent -> COMPLETE event received (main does nothing; store on)",
        unit: "ms",
        measure: |d, s| Box::pin(start_to_complete(d, s)),
    },
    Figure {
        name: "event_to_listener",
        what: "script pub.sendMessage -> a listener receives it (one event per ms)",
        unit: "ms",
        measure: |d, s| Box::pin(event_to_listener(d, s)),
    },
    Figure {
        name: "burst_fast",
        what: "--burst events as fast as a script sends them, 10 listeners: latency of each",
        unit: "ms",
        measure: |d, s| Box::pin(burst(d, s, None)),
    },
    Figure {
        name: "burst_paced",
        what: "--burst events paced at 10k/s, 10 listeners: latency of each",
        unit: "ms",
        measure: |d, s| Box::pin(burst(d, s, Some(10_000))),
    },
    Figure {
        name: "worker_pss",
        what: "memory (PSS) of each worker of --many READY procedures",
        unit: "MiB",
        measure: |d, s| Box::pin(worker_pss(d, s)),
    },
    Figure {
        name: "oetd_rss",
        what: "oetd's RSS with no procedure live [and per live READY procedure]",
        unit: "MiB",
        measure: |d, s| Box::pin(oetd_rss(d, s)),
    },
    Figure {
        name: "fds_per_procedure",
        what: "descriptors oetd holds per live READY procedure (of --many)",
        unit: "fds",
        measure: |d, s| Box::pin(per_procedure(d, s, open_fds)),
    },
    Figure {
        name: "processes_per_procedure",
        what: "processes per live READY procedure (oetd's children, of --many)",
        unit: "procs",
        measure: |d, s| Box::pin(per_procedure(d, s, children)),
    },
    Figure {
        name: "cycles",
        what: "--cycles create -> start -> COMPLETE cycles, 4 side by side: rate per second",
        unit: "/s",
        measure: |d, s| Box::pin(cycles(d, s)),
    },
    Figure {
        name: "requests_16_clients",
        what: "16 clients each sending list requests (10 READY): answers per second",
        unit: "/s",
        measure: |d, s| Box::pin(requests_16_clients(d, s)),
    },
];

const EMPTY_MAIN: &str = "def main():\n    pass\n";

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

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

/// Makes sure exactly `n` procedures are READY (stopping any others) and returns them.
async fn ready_set(daemon: &BenchDaemon, n: usize) -> anyhow::Result<Vec<u64>> {
    let mut client = daemon.client().await?;
    let mut ready = Vec::new();
    for summary in client.list(vec![]).await? {
        if summary.state.is_final() {
            continue;
        }
        if summary.state == ProcedureState::Ready && ready.len() < n {
            ready.push(summary.id);
        } else {
            client.stop(summary.id, false).await?;
        }
    }
    let uri = daemon.script("empty_main.py", EMPTY_MAIN)?;
    while ready.len() < n {
        ready.push(daemon.ready(&uri).await?);
    }
    Ok(ready)
}

async fn stop_all(daemon: &BenchDaemon) -> anyhow::Result<()> {
    ready_set(daemon, 0).await.map(drop)
}

async fn list(daemon: &BenchDaemon, scale: Scale, n: usize) -> anyhow::Result<Outcome> {
    ready_set(daemon, n).await?;
    let mut client = daemon.client().await?;
    let mut values = Vec::with_capacity(scale.iterations);
    for _ in 0..scale.iterations {
        let began = Instant::now();
        let listed = client.list(vec![]).await?;
        values.push(millis(began.elapsed()));
        if listed.len() < n {
            bail!("listed {} procedures, not {n}", listed.len());
        }
    }
    Ok(Outcome {
        values,
        note: String::new(),
    })
}

async fn start_to_complete(daemon: &BenchDaemon, scale: Scale) -> anyhow::Result<Outcome> {
    stop_all(daemon).await?;
    let uri = daemon.script("empty_main.py", EMPTY_MAIN)?;
    let mut client = daemon.client().await?;
    let mut values = Vec::with_capacity(scale.iterations);
    for _ in 0..scale.iterations {
        let id = daemon.ready(&uri).await?;
        let mut events = daemon.events().await?;
        let began = Instant::now();
        client.start(id, "main", FunctionArgs::default()).await?;
        until_state(&mut events, id, ProcedureState::Complete).await?;
        values.push(millis(began.elapsed()));
    }
    Ok(Outcome {
        values,
        note: String::new(),
    })
}

async fn create_to_ready(daemon: &BenchDaemon, scale: Scale) -> anyhow::Result<Outcome> {
    stop_all(daemon).await?;
    let uri = daemon.script("empty_main.py", EMPTY_MAIN)?;
    let mut client = daemon.client().await?;
    let mut values = Vec::with_capacity(scale.iterations);
    for _ in 0..scale.iterations {
        let mut events = daemon.events().await?;
        let began = Instant::now();
        let created = client
            .create(ScriptSpec::filesystem(&uri), FunctionArgs::default())
            .await?;
        until_state(&mut events, created.id, ProcedureState::Ready).await?;
        values.push(millis(began.elapsed()));
        // Not left running: every iteration would keep a process.
        client.stop(created.id, false).await?;
    }
    Ok(Outcome {
        values,
        note: String::new(),
    })
}

/// A script whose main sends `count` events on `user.bench`, each stamped with the wall
/// clock as it is sent, `per_ms` events per millisecond (0: as fast as it can).
const SENDER: &str = r#"
import time
from pubsub import pub

def main(count, per_ms):
    start = time.monotonic()
    for n in range(count):
        if per_ms:
            due = start + (n // per_ms) / 1000.0
            while time.monotonic() < due:
                time.sleep(max(0.0, due - time.monotonic()))
        pub.sendMessage("user.bench", n=n, sent=time.time())
"#;

fn wall_clock() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Runs SENDER's main with `count` events at `per_ms`, while `listeners` read: each
/// listener's latencies (ms) and how many events it missed.
async fn send_and_listen(
    daemon: &BenchDaemon,
    count: usize,
    per_ms: usize,
    listeners: usize,
) -> anyhow::Result<(Vec<f64>, u64)> {
    stop_all(daemon).await?;
    let uri = daemon.script("sender.py", SENDER)?;
    let id = daemon.ready(&uri).await?;
    let mut streams = Vec::new();
    for _ in 0..listeners {
        streams.push(
            daemon
                .client()
                .await?
                .subscribe_to(vec![
                    "user.bench".into(),
                    "procedure.lifecycle.statechange".into(),
                ])
                .await?,
        );
    }
    let readers: Vec<_> = streams
        .into_iter()
        .map(|mut events| {
            tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(count);
                let mut missed = 0;
                loop {
                    match events.next().await {
                        Some(Ok(StreamItem::Event(event))) if event.topic == "user.bench" => {
                            let sent = event.payload.as_map().and_then(|m| match m.get("sent") {
                                Some(Value::Float(sent)) => Some(*sent),
                                _ => None,
                            });
                            if let Some(sent) = sent {
                                latencies.push((wall_clock() - sent) * 1e3);
                            }
                        }
                        Some(Ok(StreamItem::Event(event))) if event.procedure_id() == Some(id) => {
                            if event.new_state().is_some_and(|s| s.is_final()) {
                                return (latencies, missed);
                            }
                        }
                        Some(Ok(StreamItem::Lagged(n))) => missed += n,
                        Some(Ok(_)) => {}
                        _ => return (latencies, missed),
                    }
                }
            })
        })
        .collect();
    let args = FunctionArgs {
        args: vec![Value::from(count as u64), Value::from(per_ms as u64)],
        kwargs: Default::default(),
    };
    daemon.client().await?.start(id, "main", args).await?;
    let mut all = Vec::new();
    let mut lost = 0;
    for reader in readers {
        let (latencies, missed) = reader.await.context("a listener failed")?;
        lost += (count as u64)
            .saturating_sub(latencies.len() as u64)
            .max(missed);
        all.extend(latencies);
    }
    Ok((all, lost))
}

async fn event_to_listener(daemon: &BenchDaemon, scale: Scale) -> anyhow::Result<Outcome> {
    let (values, lost) = send_and_listen(daemon, scale.iterations, 1, 1).await?;
    Ok(Outcome {
        values,
        note: format!("{lost} lost"),
    })
}

async fn burst(daemon: &BenchDaemon, scale: Scale, rate: Option<usize>) -> anyhow::Result<Outcome> {
    let per_ms = rate.map_or(0, |rate| rate / 1000);
    let (values, lost) = send_and_listen(daemon, scale.burst, per_ms, 10).await?;
    Ok(Outcome {
        values,
        note: format!("{lost} of {} lost", scale.burst * 10),
    })
}

/// A procedure's worker, which printed its pid at import.
const WHO: &str = "import os\nprint(os.getpid())\n\ndef main():\n    pass\n";

/// A number from a `/proc` file of lines `Key: value kB`.
fn kb(path: &str, key: &str) -> Option<f64> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(key)?.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

async fn worker_pss(daemon: &BenchDaemon, scale: Scale) -> anyhow::Result<Outcome> {
    stop_all(daemon).await?;
    let uri = daemon.script("who.py", WHO)?;
    let mut client = daemon.client().await?;
    let mut ids = Vec::new();
    for _ in 0..scale.many {
        ids.push(daemon.ready(&uri).await?);
    }
    let mut values = Vec::new();
    for id in ids {
        let logs = client.logs(id).await?;
        let pid: u32 = logs
            .lines
            .first()
            .and_then(|l| l.line.trim().parse().ok())
            .context("a worker that did not print its pid")?;
        if let Some(pss) = kb(&format!("/proc/{pid}/smaps_rollup"), "Pss") {
            values.push(pss / 1024.0);
        }
    }
    let zygotes = client.status().await?.zygotes;
    let note = zygotes
        .iter()
        .filter_map(|z| {
            kb(&format!("/proc/{}/smaps_rollup", z.pid), "Pss")
                .map(|pss| format!("zygote {:.1} MiB PSS", pss / 1024.0))
        })
        .collect::<Vec<_>>()
        .join(", ");
    stop_all(daemon).await?;
    Ok(Outcome { values, note })
}

fn rss(daemon: &BenchDaemon) -> f64 {
    kb(&format!("/proc/{}/status", daemon.pid()), "VmRSS").unwrap_or(0.0) / 1024.0
}

async fn oetd_rss(daemon: &BenchDaemon, scale: Scale) -> anyhow::Result<Outcome> {
    stop_all(daemon).await?;
    let mut values = Vec::new();
    for _ in 0..scale.iterations {
        values.push(rss(daemon));
    }
    let idle = values.iter().copied().fold(f64::INFINITY, f64::min);
    ready_set(daemon, scale.many).await?;
    let busy = rss(daemon);
    let per = (busy - idle) * 1024.0 / scale.many.max(1) as f64;
    stop_all(daemon).await?;
    Ok(Outcome {
        values,
        note: format!("{per:.1} KiB per live procedure, of {}", scale.many),
    })
}

fn open_fds(pid: u32) -> f64 {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0.0, |d| d.count() as f64)
}

fn children(pid: u32) -> f64 {
    std::fs::read_dir(format!("/proc/{pid}/task")).map_or(0.0, |tasks| {
        tasks
            .flatten()
            .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
            .map(|list| list.split_whitespace().count() as f64)
            .sum()
    })
}

async fn per_procedure(
    daemon: &BenchDaemon,
    scale: Scale,
    count: fn(u32) -> f64,
) -> anyhow::Result<Outcome> {
    let uri = daemon.script("empty_main.py", EMPTY_MAIN)?;
    stop_all(daemon).await?;
    // One procedure first, so that what oetd opens once is open.
    ready_set(daemon, 1).await?;
    let before = count(daemon.pid());
    let many = scale.many.max(1);
    for _ in 0..many {
        daemon.ready(&uri).await?;
    }
    let after = count(daemon.pid());
    stop_all(daemon).await?;
    Ok(Outcome {
        values: vec![(after - before) / many as f64],
        note: format!("{before} with 1 procedure, {after} with {}", many + 1),
    })
}

async fn one_cycle(daemon: &BenchDaemon, uri: &str) -> anyhow::Result<()> {
    let mut events = daemon.events().await?;
    let mut client = daemon.client().await?;
    let created = client
        .create(ScriptSpec::filesystem(uri), FunctionArgs::default())
        .await?;
    until_state(&mut events, created.id, ProcedureState::Ready).await?;
    client
        .start(created.id, "main", FunctionArgs::default())
        .await?;
    until_state(&mut events, created.id, ProcedureState::Complete).await
}

async fn cycles(daemon: &BenchDaemon, scale: Scale) -> anyhow::Result<Outcome> {
    stop_all(daemon).await?;
    let uri = daemon.script("empty_main.py", EMPTY_MAIN)?;
    let (fds_before, rss_before) = (open_fds(daemon.pid()), rss(daemon));
    let began = Instant::now();
    let per_lane = scale.cycles.div_ceil(MAX_RUNNING);
    let lanes = (0..MAX_RUNNING).map(|_| async {
        for _ in 0..per_lane {
            one_cycle(daemon, &uri).await?;
        }
        anyhow::Ok(())
    });
    for lane in futures::future::join_all(lanes).await {
        lane?;
    }
    let elapsed = began.elapsed();
    let done = per_lane * MAX_RUNNING;
    let (fds_after, rss_after) = (open_fds(daemon.pid()), rss(daemon));
    Ok(Outcome {
        values: vec![done as f64 / elapsed.as_secs_f64()],
        note: format!(
            "{done} cycles in {:.1} s; oetd fds {fds_before} -> {fds_after}, RSS {rss_before:.1} -> {rss_after:.1} MiB",
            elapsed.as_secs_f64()
        ),
    })
}

async fn requests_16_clients(daemon: &BenchDaemon, scale: Scale) -> anyhow::Result<Outcome> {
    ready_set(daemon, 10).await?;
    let per_client = scale.iterations.max(1) * 10;
    let mut clients = Vec::new();
    for _ in 0..16 {
        clients.push(daemon.client().await?);
    }
    let began = Instant::now();
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|mut client| {
            tokio::spawn(async move {
                for _ in 0..per_client {
                    client.list(vec![]).await?;
                }
                anyhow::Ok(())
            })
        })
        .collect();
    for task in tasks {
        task.await??;
    }
    let elapsed = began.elapsed();
    stop_all(daemon).await?;
    Ok(Outcome {
        values: vec![(16 * per_client) as f64 / elapsed.as_secs_f64()],
        note: format!(
            "{} requests in {:.2} s",
            16 * per_client,
            elapsed.as_secs_f64()
        ),
    })
}
