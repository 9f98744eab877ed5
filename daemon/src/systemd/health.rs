//! What oetd tells systemd while it runs: a `STATUS=` line kept current with the
//! procedures and the store's health, and `WATCHDOG=1` pings that only go out while the procedure service
//! answers.

use std::time::Duration;

use tracing::warn;

use super::notify::Notifier;
use crate::procedure::ProcedureService;

/// The status line, e.g. `2 procedures live, 1 running: #5 file:///scripts/observe.py`;
/// while the store cannot be written, it says so first.
pub fn status_line(procedures: &ProcedureService) -> String {
    let line = procedures_line(procedures);
    match procedures.store().problem() {
        Some(problem) => format!(
            "STORE FAILING ({}), creates refused: {problem} | {line}",
            problem.short()
        ),
        None => line,
    }
}

fn procedures_line(procedures: &ProcedureService) -> String {
    let (live, running) = procedures.counts();
    let noun = if live == 1 { "procedure" } else { "procedures" };
    if running.is_empty() {
        return format!("{live} {noun} live, none running");
    }
    let names: Vec<String> = procedures
        .list(&running)
        .unwrap_or_default()
        .iter()
        .map(|s| format!("#{} {}", s.id, s.script.uri()))
        .collect();
    format!(
        "{live} {noun} live, {} running: {}",
        running.len(),
        names.join(", ")
    )
}

/// Keeps `STATUS=` current: recomputed on every procedure state change and every change
/// of the store's health.
pub fn spawn_status_reporter(notifier: Notifier, procedures: ProcedureService) {
    if !notifier.is_enabled() {
        return;
    }
    let mut changes = procedures.all_changes();
    let mut store = procedures.store().progress();
    tokio::spawn(async move {
        let mut last = String::new();
        loop {
            let line = status_line(&procedures);
            if line != last {
                if let Err(err) = notifier.status(&line) {
                    warn!("cannot send status to systemd: {err}");
                }
                last = line;
            }
            let woken = tokio::select! {
                changed = changes.changed() => changed,
                changed = store.changed() => changed,
            };
            if woken.is_err() {
                return;
            }
        }
    });
}

/// Sends `WATCHDOG=1` at half of systemd's `WatchdogSec`. Each ping first reads the
/// procedure table, so a daemon whose procedure service is stuck stops pinging and
/// systemd restarts it.
pub fn spawn_watchdog(notifier: Notifier, procedures: ProcedureService) {
    let Some(interval) = notifier.watchdog_interval() else {
        return;
    };
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(interval.max(Duration::from_millis(1)));
        loop {
            ticks.tick().await;
            // Blocks (and so withholds the ping) while the procedure table is stuck.
            let _ = procedures.counts();
            if let Err(err) = notifier.watchdog() {
                warn!("cannot send watchdog ping to systemd: {err}");
            }
        }
    });
}
