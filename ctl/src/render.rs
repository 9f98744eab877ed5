//! What `oetctl` prints: aligned tables and lines for people, and JSON documents (in the
//! shapes of [`oet_protocol::view`]) for programs. Every function returns the text, so
//! the printing stays in `main.rs` and the shapes stay testable.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use oet_protocol::summary::Timestamp;
use oet_protocol::{
    bytes_text, view, ActivitySummary, CachePruned, CacheUsage, Containment, DaemonStatus, Event,
    FunctionArgs, ProcedureLogs, ProcedureSummary, ResourceUsage, ScriptSpec, Value,
};
use serde_json::{json, Value as Json};

/// Columns of text, each as wide as its widest cell, separated by two spaces.
struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    fn new(headers: &[&str]) -> Table {
        Table {
            rows: vec![headers.iter().map(|h| h.to_string()).collect()],
        }
    }

    fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    fn render(&self) -> String {
        let columns = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let widths: Vec<usize> = (0..columns)
            .map(|col| {
                self.rows
                    .iter()
                    .filter_map(|row| row.get(col))
                    .map(|cell| cell.chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let mut out = String::new();
        for row in &self.rows {
            let mut line = String::new();
            for (col, cell) in row.iter().enumerate() {
                if col + 1 == row.len() {
                    line.push_str(cell);
                } else {
                    let pad = widths[col] - cell.chars().count();
                    line.push_str(cell);
                    line.push_str(&" ".repeat(pad + 2));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// The time to the nearest millisecond: an `f64` of epoch seconds is a hair off most
/// decimal fractions, and truncating would show 12:00:00.001 as 12:00:00.000.
fn system_time(time: Timestamp) -> Option<SystemTime> {
    let millis = (time * 1000.0).round();
    if !(0.0..=u64::MAX as f64).contains(&millis) {
        return None;
    }
    UNIX_EPOCH.checked_add(Duration::from_millis(millis as u64))
}

/// An RFC 3339 UTC time to the second, e.g. `2024-05-01T12:00:00Z`.
pub fn time_secs(time: Timestamp) -> String {
    system_time(time).map_or_else(
        || time.to_string(),
        |t| humantime::format_rfc3339_seconds(t).to_string(),
    )
}

/// An RFC 3339 UTC time to the millisecond, e.g. `2024-05-01T12:00:00.250Z`.
pub fn time_millis(time: Timestamp) -> String {
    system_time(time).map_or_else(
        || time.to_string(),
        |t| humantime::format_rfc3339_millis(t).to_string(),
    )
}

/// The table of procedures: ID, Script, Creation time, State.
pub fn procedure_table(summaries: &[ProcedureSummary]) -> String {
    let mut table = Table::new(&["ID", "Script", "Creation time", "State"]);
    for summary in summaries {
        table.row(vec![
            summary.id.to_string(),
            summary.script.uri().to_owned(),
            time_secs(summary.created_at()),
            summary.state.to_string(),
        ]);
    }
    table.render()
}

/// Everything about one procedure: its summary row, where a git script comes from, the
/// state history, the calls with their arguments, what its cgroup measured, and the
/// stack trace.
pub fn describe(summary: &ProcedureSummary) -> String {
    let mut out = procedure_table(std::slice::from_ref(summary));
    if let ScriptSpec::Git {
        git_args,
        create_env,
        ..
    } = &summary.script
    {
        // What ran, once known; before that, what was asked for.
        let or_default = |v: &Option<String>| v.clone().unwrap_or_else(|| "(default)".into());
        let (repo, branch, commit) = match &summary.checkout {
            Some(checkout) => (
                checkout.repo.clone(),
                checkout.branch.clone().unwrap_or_else(|| "(none)".into()),
                checkout.commit.clone(),
            ),
            None => (
                or_default(&git_args.git_repo),
                or_default(&git_args.git_branch),
                or_default(&git_args.git_commit),
            ),
        };
        out.push_str(&format!(
            "\nGit: repository {repo}, branch {branch}, commit {commit}, {}\n",
            if *create_env {
                "own virtual environment"
            } else {
                "default interpreter"
            },
        ));
    }

    out.push_str("\nHistory:\n");
    let mut history = Table::new(&["Time", "State"]);
    for change in &summary.history {
        let state = match &change.note {
            Some(note) => format!("{} ({note})", change.state),
            None => change.state.to_string(),
        };
        history.row(vec![time_millis(change.time), state]);
    }
    out.push_str(&indent(&history.render()));

    out.push_str("\nCalls:\n");
    if summary.calls.is_empty() {
        out.push_str("  (none)\n");
    } else {
        let mut calls = Table::new(&["Time", "Function", "Args", "Kwargs"]);
        for call in &summary.calls {
            let (args, kwargs) = args_and_kwargs(&call.args);
            calls.row(vec![
                time_millis(call.time),
                call.function.clone(),
                args,
                kwargs,
            ]);
        }
        out.push_str(&indent(&calls.render()));
    }

    if let Some(usage) = &summary.resources {
        out.push_str("\nResources:\n");
        out.push_str(&indent(&resources(usage)));
    }

    if let Some(trace) = &summary.stacktrace {
        out.push_str("\nStack trace:\n");
        out.push_str(trace.trim_end());
        out.push('\n');
    }
    out
}

/// Peak memory and CPU time, each with its limit when there is one.
fn resources(usage: &ResourceUsage) -> String {
    let limits = &usage.limits;
    let limit = |limit: Option<String>| limit.map_or(String::new(), |l| format!(" (limit {l})"));
    let mut out = format!(
        "Peak memory:  {}{}\n",
        usage
            .peak_memory_bytes
            .map_or_else(|| "not measured".to_owned(), bytes_text),
        limit(limits.memory_max_bytes.map(bytes_text)),
    );
    out.push_str(&format!(
        "CPU time:     {}{}\n",
        usage
            .cpu_secs
            .map_or_else(|| "not measured".to_owned(), |secs| format!("{secs:.2} s")),
        limit(limits.cpu_max.map(|cpus| format!("{cpus} CPU"))),
    ));
    if let Some(pids) = limits.pids_max {
        out.push_str(&format!("Processes:    at most {pids}\n"));
    }
    out
}

fn indent(text: &str) -> String {
    text.lines().map(|line| format!("  {line}\n")).collect()
}

/// The captured output of a procedure, one line per printed line.
pub fn logs(logs: &ProcedureLogs) -> String {
    let mut out = String::new();
    if let Some(reason) = &logs.not_kept {
        return format!("({reason})\n");
    }
    if logs.dropped > 0 {
        out.push_str(&format!(
            "({} earlier line{} dropped: oetd keeps only the newest)\n",
            logs.dropped,
            if logs.dropped == 1 { " was" } else { "s were" }
        ));
    }
    if logs.lines.is_empty() {
        out.push_str(&format!(
            "(procedure {} has printed nothing yet)\n",
            logs.id
        ));
    }
    for line in &logs.lines {
        out.push_str(&format!(
            "{}  {:<6}  {}\n",
            time_millis(line.time),
            line.stream.as_str(),
            line.line
        ));
    }
    out
}

/// One event as one line: time, topic, source, payload as JSON.
pub fn event_line(event: &Event) -> String {
    format!(
        "{}  {}  {}  {}",
        time_millis(event.time),
        event.topic,
        event.msg_src,
        event.payload.to_json_lossy()
    )
}

/// The line printed when a listener fell behind and events were dropped for it.
pub fn lagged_line(missed: u64) -> String {
    format!("lagged: {missed} events missed")
}

/// The daemon's state, `now` being the current time for the uptime.
pub fn status(status: &DaemonStatus, now: Timestamp) -> String {
    let uptime = Duration::try_from_secs_f64((now - status.started_at).max(0.0))
        .map(|d| Duration::from_secs(d.as_secs()))
        .unwrap_or_default();
    let running = if status.running.is_empty() {
        "none".to_owned()
    } else {
        status
            .running
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "Server:      {} (protocol {})\n\
         PID:         {}\n\
         Socket:      {}\n\
         Started:     {} (up {})\n\
         Procedures:  {} live, running: {}\n\
         Store:       {}\n\
         Containment: {}\n\
         Zygotes:     {}\n\
         Checkouts:   {}\n\
         Python envs: {}\n\
         pip cache:   {}\n",
        status.server,
        status.protocol_version,
        status.pid,
        status.socket,
        time_secs(status.started_at),
        humantime::format_duration(uptime),
        status.procedures_live,
        running,
        match &status.store_problem {
            Some(problem) => format!("{} (FAILING: {problem})", status.store),
            None => status.store.clone(),
        },
        containment(&status.containment),
        zygotes(&status.zygotes),
        checkouts(&status.caches),
        envs(&status.caches),
        bytes_text(status.caches.pip_cache_bytes),
    )
}

fn zygotes(zygotes: &[oet_protocol::ZygoteStatus]) -> String {
    if zygotes.is_empty() {
        return "none (workers start cold)".to_owned();
    }
    zygotes
        .iter()
        .map(|z| format!("{} (pid {}, {} forks)", z.python, z.pid, z.forks))
        .collect::<Vec<_>>()
        .join("; ")
}

fn containment(containment: &Containment) -> String {
    match containment {
        Containment::Cgroup { root, controllers } if controllers.is_empty() => {
            format!("a cgroup per procedure under {root} (no resource controllers)")
        }
        Containment::Cgroup { root, controllers } => format!(
            "a cgroup per procedure under {root} ({})",
            controllers.join(", ")
        ),
        Containment::ProcessGroup { reason } => {
            format!("process groups only ({reason})")
        }
    }
}

fn checkouts(caches: &CacheUsage) -> String {
    format!(
        "{} ({} in use), {}",
        caches.checkouts,
        caches.checkouts_in_use,
        bytes_text(caches.checkout_bytes)
    )
}

fn envs(caches: &CacheUsage) -> String {
    let building = match caches.envs_building {
        0 => String::new(),
        n => format!(", {n} being built"),
    };
    format!(
        "{} ({} in use{building}), {}",
        caches.envs,
        caches.envs_in_use,
        bytes_text(caches.env_bytes)
    )
}

/// What `cache prune` removed and what is left.
pub fn pruned(pruned: &CachePruned) -> String {
    let mut text = format!(
        "removed {} checkout(s) ({}), {} Python environment(s) ({}) and {} of pip's cache\n",
        pruned.checkouts,
        bytes_text(pruned.checkout_bytes),
        pruned.envs,
        bytes_text(pruned.env_bytes),
        bytes_text(pruned.pip_cache_bytes),
    );
    if let Some(why) = &pruned.pip_cache_kept {
        text.push_str(&format!("kept pip's cache: {why}\n"));
    }
    text.push_str(&format!(
        "left (in use, or being built): checkouts {}; Python envs {}\n",
        checkouts(&pruned.left),
        envs(&pruned.left)
    ));
    text
}

/// The table of activities: ID, Activity, SBD, SBI, Procedure, Creation time, State.
pub fn activity_table(summaries: &[ActivitySummary]) -> String {
    let mut table = Table::new(&[
        "ID",
        "Activity",
        "SBD",
        "SBI",
        "Procedure",
        "Creation time",
        "State",
    ]);
    for summary in summaries {
        table.row(vec![
            summary.id.to_string(),
            summary.activity_name.clone(),
            summary.sbd_id.clone(),
            summary.sbi_id.clone().unwrap_or_else(|| "-".into()),
            summary
                .procedure_id
                .map_or_else(|| "-".into(), |id| id.to_string()),
            time_secs(summary.created_at()),
            summary.state.to_string(),
        ]);
    }
    table.render()
}

/// Everything about one activity: its row, the arguments given on the command line, the
/// state history, and why it did not go as asked when it did not.
pub fn describe_activity(summary: &ActivitySummary) -> String {
    let mut out = activity_table(std::slice::from_ref(summary));
    if summary.prepare_only {
        out.push_str("\nPrepare only: main is left for the operator to start\n");
    }
    out.push_str("\nScript args:\n");
    if summary.script_args.is_empty() {
        out.push_str("  (none beyond the SBD's)\n");
    } else {
        let mut args = Table::new(&["Function", "Args", "Kwargs"]);
        for (function, fa) in &summary.script_args {
            let (positional, keywords) = args_and_kwargs(fa);
            args.row(vec![function.clone(), positional, keywords]);
        }
        out.push_str(&indent(&args.render()));
    }
    out.push_str("\nHistory:\n");
    let mut history = Table::new(&["Time", "State"]);
    for change in &summary.history {
        history.row(vec![time_millis(change.time), change.state.to_string()]);
    }
    out.push_str(&indent(&history.render()));
    if let Some(error) = &summary.error {
        out.push_str(&format!("\nError: {error}\n"));
    }
    out
}

/// A call's positional and keyword arguments, each as JSON text.
fn args_and_kwargs(args: &FunctionArgs) -> (String, String) {
    (
        Value::List(args.args.clone()).to_string(),
        Value::Map(args.kwargs.clone()).to_string(),
    )
}

/// Activity summaries as a JSON array.
pub fn activities_json(summaries: &[ActivitySummary]) -> Json {
    Json::Array(summaries.iter().map(activity_json).collect())
}

/// One activity summary as JSON.
pub fn activity_json(summary: &ActivitySummary) -> Json {
    view::activity(summary).to_json_lossy()
}

/// Procedure summaries as a JSON array.
pub fn procedures_json(summaries: &[ProcedureSummary]) -> Json {
    Json::Array(summaries.iter().map(procedure_json).collect())
}

/// One procedure summary as JSON.
pub fn procedure_json(summary: &ProcedureSummary) -> Json {
    view::procedure(summary).to_json_lossy()
}

/// Captured output as JSON: `{id, dropped, lines: [{time, stream, line}]}`.
pub fn logs_json(logs: &ProcedureLogs) -> Json {
    json!({
        "id": logs.id,
        "dropped": logs.dropped,
        "not_kept": logs.not_kept,
        "lines": logs.lines.iter().map(|line| json!({
            "time": line.time,
            "stream": line.stream.as_str(),
            "line": line.line,
        })).collect::<Vec<_>>(),
    })
}

/// An event as JSON: `{topic, msg_src, time, payload}`.
pub fn event_json(event: &Event) -> Json {
    json!({
        "topic": event.topic,
        "msg_src": event.msg_src,
        "time": event.time,
        "payload": event.payload.to_json_lossy(),
    })
}

/// A lag notice as JSON: `{"lagged": N}`.
pub fn lagged_json(missed: u64) -> Json {
    json!({ "lagged": missed })
}

/// The daemon's state as JSON.
pub fn status_json(status: &DaemonStatus) -> Json {
    json!({
        "server": status.server,
        "protocol_version": status.protocol_version,
        "pid": status.pid,
        "socket": status.socket,
        "started_at": status.started_at,
        "procedures_live": status.procedures_live,
        "running": status.running,
        "store": status.store,
        "store_problem": status.store_problem,
        "containment": match &status.containment {
            Containment::Cgroup { root, controllers } => json!({
                "mode": "cgroup",
                "root": root,
                "controllers": controllers,
            }),
            Containment::ProcessGroup { reason } => json!({
                "mode": "process_group",
                "reason": reason,
            }),
        },
        "zygotes": status.zygotes.iter().map(|z| json!({
            "python": z.python,
            "pid": z.pid,
            "forks": z.forks,
        })).collect::<Vec<_>>(),
        "caches": caches_json(&status.caches),
    })
}

fn caches_json(caches: &CacheUsage) -> Json {
    json!({
        "checkouts": caches.checkouts,
        "checkouts_in_use": caches.checkouts_in_use,
        "checkout_bytes": caches.checkout_bytes,
        "envs": caches.envs,
        "envs_in_use": caches.envs_in_use,
        "envs_building": caches.envs_building,
        "env_bytes": caches.env_bytes,
        "pip_cache_bytes": caches.pip_cache_bytes,
    })
}

/// What `cache prune` removed and what is left, as JSON.
pub fn pruned_json(pruned: &CachePruned) -> Json {
    json!({
        "removed": {
            "checkouts": pruned.checkouts,
            "checkout_bytes": pruned.checkout_bytes,
            "envs": pruned.envs,
            "env_bytes": pruned.env_bytes,
            "pip_cache_bytes": pruned.pip_cache_bytes,
        },
        "pip_cache_kept": pruned.pip_cache_kept,
        "left": caches_json(&pruned.left),
    })
}

/// What a reload changed, for people.
pub fn reloaded(reloaded: &oet_protocol::Reloaded) -> String {
    let mut text = String::new();
    if reloaded.live.is_empty() && reloaded.restart.is_empty() {
        text.push_str("configuration reloaded; nothing changed\n");
    }
    if !reloaded.live.is_empty() {
        text.push_str(&format!(
            "configuration reloaded; now in effect: {}\n",
            reloaded.live.join(", ")
        ));
    }
    if !reloaded.restart.is_empty() {
        text.push_str(&format!(
            "changed, but in effect only after a restart of oetd: {}\n",
            reloaded.restart.join(", ")
        ));
    }
    for warning in &reloaded.warnings {
        text.push_str(&format!("warning: {warning}\n"));
    }
    text
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use oet_protocol::{
        CallRecord, FunctionArgs, GitArgs, LogLine, ProcedureState, StateChange, Stream, Value,
    };

    use super::*;

    // 2024-05-01T12:00:00Z
    const T0: f64 = 1_714_564_800.0;

    fn summary(id: u64, state: ProcedureState) -> ProcedureSummary {
        let mut kwargs = BTreeMap::new();
        kwargs.insert("subarray_id".to_owned(), Value::Int(1));
        ProcedureSummary {
            checkout: None,
            id,
            script: ScriptSpec::filesystem("file:///opt/scripts/hello.py"),
            calls: vec![CallRecord {
                function: "init".into(),
                args: FunctionArgs {
                    args: vec![Value::from("a")],
                    kwargs,
                },
                time: T0 + 0.5,
            }],
            history: vec![
                StateChange {
                    state: ProcedureState::Creating,
                    time: T0,
                    function: None,
                    note: None,
                },
                StateChange {
                    state,
                    time: T0 + 1.25,
                    function: None,
                    note: None,
                },
            ],
            stacktrace: None,
            state,
            resources: None,
        }
    }

    #[test]
    fn times_are_rfc3339_utc() {
        assert_eq!(time_secs(T0 + 0.9), "2024-05-01T12:00:00Z");
        assert_eq!(time_millis(T0 + 0.25), "2024-05-01T12:00:00.250Z");
        assert_eq!(time_secs(-1.0), "-1", "a nonsense time is shown as it is");
    }

    #[test]
    fn procedure_table_aligns_columns() {
        let mut long = summary(12, ProcedureState::Ready);
        long.script = ScriptSpec::filesystem("file:///x.py");
        let text = procedure_table(&[summary(3, ProcedureState::Failed), long]);
        assert_eq!(
            text,
            "ID  Script                        Creation time         State\n\
             3   file:///opt/scripts/hello.py  2024-05-01T12:00:00Z  FAILED\n\
             12  file:///x.py                  2024-05-01T12:00:00Z  READY\n"
        );
    }

    #[test]
    fn describe_shows_history_calls_and_stack_trace() {
        let mut failed = summary(3, ProcedureState::Failed);
        failed.stacktrace = Some("Traceback (most recent call last):\nValueError: no\n".into());
        let text = describe(&failed);
        let expected = "\
ID  Script                        Creation time         State
3   file:///opt/scripts/hello.py  2024-05-01T12:00:00Z  FAILED

History:
  Time                      State
  2024-05-01T12:00:00.000Z  CREATING
  2024-05-01T12:00:01.250Z  FAILED

Calls:
  Time                      Function  Args   Kwargs
  2024-05-01T12:00:00.500Z  init      [\"a\"]  {\"subarray_id\":1}

Stack trace:
Traceback (most recent call last):
ValueError: no
";
        assert_eq!(text, expected);
    }

    #[test]
    fn describe_shows_what_the_cgroup_measured_with_the_limits() {
        let mut done = summary(5, ProcedureState::Failed);
        done.resources = Some(ResourceUsage {
            peak_memory_bytes: Some(64 << 20),
            cpu_secs: Some(1.256),
            limits: oet_protocol::ResourceLimits {
                memory_max_bytes: Some(64 << 20),
                pids_max: Some(100),
                cpu_max: None,
            },
        });
        let text = describe(&done);
        assert!(
            text.contains(
                "\nResources:\n  Peak memory:  64 MiB (limit 64 MiB)\n  CPU time:     1.26 s\n  \
                 Processes:    at most 100\n"
            ),
            "{text}"
        );
        let json = procedure_json(&done);
        assert_eq!(json["resources"]["peak_memory_bytes"], json!(64 << 20));
        assert_eq!(json["resources"]["limits"]["cpu_max"], Json::Null);
        assert_eq!(
            procedure_json(&summary(6, ProcedureState::Ready))["resources"],
            Json::Null
        );
        assert!(!describe(&summary(6, ProcedureState::Ready)).contains("Resources"));
    }

    #[test]
    fn describe_tells_where_a_git_script_comes_from() {
        let mut git = summary(4, ProcedureState::Ready);
        git.script = ScriptSpec::Git {
            script_uri: "git://scripts/hello.py".into(),
            git_args: GitArgs {
                git_repo: Some("https://example.org/s.git".into()),
                git_branch: None,
                git_commit: Some("abc123".into()),
            },
            create_env: true,
        };
        let mut interrupted = summary(4, ProcedureState::Unknown);
        interrupted.history[1].note = Some("oetd restarted while procedure 4 was RUNNING".into());
        assert!(describe(&interrupted)
            .contains("UNKNOWN (oetd restarted while procedure 4 was RUNNING)"));

        let asked = describe(&git);
        git.checkout = Some(oet_protocol::GitCheckout {
            repo: "https://example.org/s.git".into(),
            branch: Some("main".into()),
            commit: "0123456789abcdef0123456789abcdef01234567".into(),
        });
        assert!(describe(&git).contains(
            "Git: repository https://example.org/s.git, branch main, \
             commit 0123456789abcdef0123456789abcdef01234567, own virtual environment"
        ));
        let text = asked;
        assert!(text.contains(
            "Git: repository https://example.org/s.git, branch (default), commit abc123, \
             own virtual environment"
        ));
        assert!(!text.contains("Stack trace"));
    }

    #[test]
    fn logs_say_how_many_lines_were_dropped() {
        let logs_with_drop = ProcedureLogs {
            id: 3,
            dropped: 2,
            lines: vec![
                LogLine {
                    time: T0,
                    stream: Stream::Stdout,
                    line: "hello".into(),
                },
                LogLine {
                    time: T0 + 0.001,
                    stream: Stream::Stderr,
                    line: "oops".into(),
                },
            ],
            not_kept: None,
        };
        assert_eq!(
            logs(&logs_with_drop),
            "(2 earlier lines were dropped: oetd keeps only the newest)\n\
             2024-05-01T12:00:00.000Z  stdout  hello\n\
             2024-05-01T12:00:00.001Z  stderr  oops\n"
        );
        let empty = ProcedureLogs {
            id: 5,
            dropped: 0,
            lines: vec![],
            not_kept: None,
        };
        assert_eq!(logs(&empty), "(procedure 5 has printed nothing yet)\n");
        let lost = ProcedureLogs {
            not_kept: Some("not kept: oetd restarted".into()),
            ..empty
        };
        assert_eq!(logs(&lost), "(not kept: oetd restarted)\n");
        assert_eq!(logs_json(&lost)["not_kept"], "not kept: oetd restarted");
        assert_eq!(
            logs_json(&logs_with_drop)["lines"][1],
            json!({"time": T0 + 0.001, "stream": "stderr", "line": "oops"})
        );
    }

    #[test]
    fn events_are_one_line_each() {
        let mut payload = BTreeMap::new();
        payload.insert("procedure_id".to_owned(), Value::Int(3));
        payload.insert("new_state".to_owned(), Value::from("READY"));
        let event = Event {
            topic: "procedure.lifecycle.statechange".into(),
            msg_src: "oetd".into(),
            time: T0,
            payload: Value::Map(payload),
        };
        assert_eq!(
            event_line(&event),
            "2024-05-01T12:00:00.000Z  procedure.lifecycle.statechange  oetd  \
             {\"new_state\":\"READY\",\"procedure_id\":3}"
        );
        assert_eq!(
            event_json(&event),
            json!({
                "topic": "procedure.lifecycle.statechange",
                "msg_src": "oetd",
                "time": T0,
                "payload": {"new_state": "READY", "procedure_id": 3},
            })
        );
        assert_eq!(lagged_line(7), "lagged: 7 events missed");
    }

    #[test]
    fn json_summaries_have_the_upstream_shape() {
        let json = procedures_json(&[summary(3, ProcedureState::Ready)]);
        let first = &json[0];
        assert_eq!(first["id"], 3);
        assert_eq!(first["state"], "READY");
        assert_eq!(first["script"]["script_type"], "filesystem");
        assert_eq!(
            first["script"]["script_uri"],
            "file:///opt/scripts/hello.py"
        );
        assert_eq!(
            first["script_args"]["init"],
            json!({"args": ["a"], "kwargs": {"subarray_id": 1}})
        );
        assert_eq!(
            first["history"]["process_states"],
            json!([["CREATING", T0], ["READY", T0 + 1.25]])
        );
        assert_eq!(first["history"]["stacktrace"], Json::Null);
    }

    fn activity() -> ActivitySummary {
        use oet_protocol::{ActivityState, ActivityStateChange};
        ActivitySummary {
            id: 2,
            activity_name: "observe".into(),
            sbd_id: "sbd-mvp01-1".into(),
            sbi_id: Some("sbi-oet-20240501-00001".into()),
            procedure_id: Some(7),
            script_args: BTreeMap::from([(
                "main".to_owned(),
                FunctionArgs {
                    args: vec![],
                    kwargs: BTreeMap::from([("x".to_owned(), Value::Int(1))]),
                },
            )]),
            prepare_only: true,
            history: vec![
                ActivityStateChange {
                    state: ActivityState::Requested,
                    time: T0,
                },
                ActivityStateChange {
                    state: ActivityState::Prepared,
                    time: T0 + 0.5,
                },
            ],
            state: ActivityState::Prepared,
            error: Some("main could not be started".into()),
        }
    }

    #[test]
    fn activities_show_as_table_description_and_json() {
        let summary = activity();
        assert_eq!(
            activity_table(std::slice::from_ref(&summary)),
            "ID  Activity  SBD          SBI                     Procedure  Creation time         State\n\
             2   observe   sbd-mvp01-1  sbi-oet-20240501-00001  7          2024-05-01T12:00:00Z  PREPARED\n"
        );
        let text = describe_activity(&summary);
        assert!(text.contains("Prepare only"), "{text}");
        assert!(text.contains("  main      []    {\"x\":1}"), "{text}");
        assert!(
            text.contains("  2024-05-01T12:00:00.500Z  PREPARED"),
            "{text}"
        );
        assert!(
            text.ends_with("\nError: main could not be started\n"),
            "{text}"
        );
        let json = activities_json(&[summary]);
        assert_eq!(json[0]["sbi_id"], "sbi-oet-20240501-00001");
        assert_eq!(
            json[0]["activity_states"],
            json!([["REQUESTED", T0], ["PREPARED", T0 + 0.5]])
        );
    }

    #[test]
    fn status_shows_uptime_and_running_procedures() {
        let daemon = DaemonStatus {
            server: "oetd 0.1.0".into(),
            protocol_version: 1,
            pid: 42,
            socket: "/run/oet/oetd.sock".into(),
            started_at: T0,
            procedures_live: 3,
            running: vec![2],
            stop_grace_secs: 5.0,
            store: "/var/lib/oet/store/history.sqlite".into(),
            store_problem: None,
            containment: Containment::Cgroup {
                root: "/sys/fs/cgroup/system.slice/oetd.service".into(),
                controllers: vec!["memory".into(), "pids (v1)".into()],
            },
            zygotes: vec![oet_protocol::ZygoteStatus {
                python: "/usr/bin/python3.11".into(),
                pid: 43,
                forks: 7,
            }],
            caches: CacheUsage {
                checkouts: 3,
                checkouts_in_use: 1,
                checkout_bytes: 1536,
                envs: 2,
                envs_in_use: 1,
                envs_building: 1,
                env_bytes: 310 << 20,
                pip_cache_bytes: 0,
            },
        };
        assert_eq!(
            status(&daemon, T0 + 3723.6),
            "Server:      oetd 0.1.0 (protocol 1)\n\
             PID:         42\n\
             Socket:      /run/oet/oetd.sock\n\
             Started:     2024-05-01T12:00:00Z (up 1h 2m 3s)\n\
             Procedures:  3 live, running: 2\n\
             Store:       /var/lib/oet/store/history.sqlite\n\
             Containment: a cgroup per procedure under /sys/fs/cgroup/system.slice/oetd.service \
             (memory, pids (v1))\n\
             Zygotes:     /usr/bin/python3.11 (pid 43, 7 forks)\n\
             Checkouts:   3 (1 in use), 1.5 KiB\n\
             Python envs: 2 (1 in use, 1 being built), 310 MiB\n\
             pip cache:   0 B\n"
        );
        let failing = DaemonStatus {
            store_problem: Some("the store is full".into()),
            ..daemon.clone()
        };
        assert!(status(&failing, T0).contains("FAILING: the store is full"));
        assert!(status(
            &DaemonStatus {
                running: vec![],
                ..daemon.clone()
            },
            T0
        )
        .contains("running: none"));
        assert_eq!(status_json(&daemon)["running"], json!([2]));
        assert_eq!(status_json(&daemon)["containment"]["mode"], "cgroup");
        assert_eq!(
            status_json(&daemon)["caches"]["env_bytes"],
            json!(310 << 20)
        );
        let fallback = DaemonStatus {
            containment: Containment::ProcessGroup {
                reason: "no cgroup v2 hierarchy is mounted".into(),
            },
            ..daemon.clone()
        };
        assert!(status(&fallback, T0)
            .contains("Containment: process groups only (no cgroup v2 hierarchy is mounted)"));
        assert_eq!(
            status_json(&fallback)["containment"]["mode"],
            "process_group"
        );
    }

    #[test]
    fn a_prune_says_what_it_removed_and_what_is_left() {
        let pruned = CachePruned {
            checkouts: 2,
            checkout_bytes: 2048,
            envs: 1,
            env_bytes: 3 << 20,
            pip_cache_bytes: 0,
            pip_cache_kept: Some("a build is using it".into()),
            left: CacheUsage {
                envs: 1,
                envs_building: 1,
                ..CacheUsage::default()
            },
        };
        assert_eq!(
            super::pruned(&pruned),
            "removed 2 checkout(s) (2 KiB), 1 Python environment(s) (3 MiB) and 0 B of pip's cache\n\
             kept pip's cache: a build is using it\n\
             left (in use, or being built): checkouts 0 (0 in use), 0 B; Python envs 1 (0 in use, \
             1 being built), 0 B\n"
        );
        assert_eq!(pruned_json(&pruned)["removed"]["env_bytes"], json!(3 << 20));
        assert_eq!(pruned_json(&pruned)["left"]["envs_building"], json!(1));
    }
}
