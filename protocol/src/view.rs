//! The views of the wire types that people and web clients see, in the shapes upstream's
//! REST API used (DESIGN section 9). They are built as [`Value`]s, so that event payloads
//! carry them as they are; the JSON edges (`oetctl --json`, the HTTP shim) convert them
//! with [`Value::to_json_lossy`]. Every edge shows the same shape.

use std::collections::BTreeMap;

use crate::summary::{
    ActivitySummary, FunctionArgs, GitArgs, ProcedureSummary, ResourceUsage, ScriptSpec, Timestamp,
};
use crate::value::Value;

/// A map from `(key, value)` pairs.
pub fn map<const N: usize>(items: [(&str, Value); N]) -> Value {
    Value::Map(
        items
            .into_iter()
            .map(|(key, value)| (key.to_owned(), value))
            .collect(),
    )
}

fn optional(value: Option<&str>) -> Value {
    value.map_or(Value::Null, Value::from)
}

/// `{args: [...], kwargs: {...}}`
pub fn function_args(args: &FunctionArgs) -> Value {
    map([
        ("args", Value::List(args.args.clone())),
        ("kwargs", Value::Map(args.kwargs.clone())),
    ])
}

/// `{fn: {args, kwargs}, ...}`
pub fn script_args<'a>(args: impl IntoIterator<Item = (&'a String, &'a FunctionArgs)>) -> Value {
    Value::Map(
        args.into_iter()
            .map(|(name, args)| (name.clone(), function_args(args)))
            .collect::<BTreeMap<_, _>>(),
    )
}

fn git_args(args: &GitArgs) -> Value {
    map([
        ("git_repo", optional(args.git_repo.as_deref())),
        ("git_branch", optional(args.git_branch.as_deref())),
        ("git_commit", optional(args.git_commit.as_deref())),
    ])
}

/// `{script_type, script_uri, git_args?, create_env?}`
pub fn script(spec: &ScriptSpec) -> Value {
    match spec {
        ScriptSpec::Filesystem { script_uri } => map([
            ("script_type", Value::from("filesystem")),
            ("script_uri", Value::from(script_uri.as_str())),
        ]),
        ScriptSpec::Git {
            script_uri,
            git_args: args,
            create_env,
        } => map([
            ("script_type", Value::from("git")),
            ("script_uri", Value::from(script_uri.as_str())),
            ("git_args", git_args(args)),
            ("create_env", Value::Bool(*create_env)),
        ]),
    }
}

/// `[[STATE, time], ...]`
fn states<'a>(changes: impl Iterator<Item = (&'a str, Timestamp)>) -> Value {
    Value::List(
        changes
            .map(|(state, time)| Value::List(vec![Value::from(state), Value::Float(time)]))
            .collect(),
    )
}

/// `{peak_memory_bytes, cpu_secs, limits: {memory_max_bytes, pids_max, cpu_max}}`, each
/// `null` where unknown or unlimited.
pub fn resources(usage: &ResourceUsage) -> Value {
    let count = |n: Option<u64>| n.map_or(Value::Null, Value::from);
    let float = |x: Option<f64>| x.map_or(Value::Null, Value::Float);
    map([
        ("peak_memory_bytes", count(usage.peak_memory_bytes)),
        ("cpu_secs", float(usage.cpu_secs)),
        (
            "limits",
            map([
                ("memory_max_bytes", count(usage.limits.memory_max_bytes)),
                ("pids_max", count(usage.limits.pids_max)),
                ("cpu_max", float(usage.limits.cpu_max)),
            ]),
        ),
    ])
}

/// A procedure summary as upstream's REST API shows it, plus `calls` (every call with its
/// time) which upstream did not keep, and `resources` (what its cgroup measured; `null`
/// without one).
pub fn procedure(summary: &ProcedureSummary) -> Value {
    let calls = summary
        .calls
        .iter()
        .map(|call| {
            map([
                ("function", Value::from(call.function.as_str())),
                ("args", function_args(&call.args)),
                ("time", Value::Float(call.time)),
            ])
        })
        .collect();
    map([
        ("id", Value::from(summary.id)),
        ("script", script(&summary.script)),
        (
            "checkout",
            summary.checkout.as_ref().map_or(Value::Null, |checkout| {
                map([
                    ("repo", Value::from(checkout.repo.as_str())),
                    ("branch", optional(checkout.branch.as_deref())),
                    ("commit", Value::from(checkout.commit.as_str())),
                ])
            }),
        ),
        ("script_args", script_args(&summary.script_args())),
        ("calls", Value::List(calls)),
        (
            "history",
            map([
                (
                    "process_states",
                    states(
                        summary
                            .history
                            .iter()
                            .map(|change| (change.state.as_str(), change.time)),
                    ),
                ),
                ("stacktrace", optional(summary.stacktrace.as_deref())),
            ]),
        ),
        ("state", Value::from(summary.state.as_str())),
        (
            "resources",
            summary.resources.as_ref().map_or(Value::Null, resources),
        ),
    ])
}

/// An activity summary.
pub fn activity(summary: &ActivitySummary) -> Value {
    map([
        ("id", Value::from(summary.id)),
        ("activity_name", Value::from(summary.activity_name.as_str())),
        ("sbd_id", Value::from(summary.sbd_id.as_str())),
        ("sbi_id", optional(summary.sbi_id.as_deref())),
        (
            "procedure_id",
            summary.procedure_id.map_or(Value::Null, Value::from),
        ),
        ("prepare_only", Value::Bool(summary.prepare_only)),
        ("script_args", script_args(&summary.script_args)),
        (
            "activity_states",
            states(
                summary
                    .history
                    .iter()
                    .map(|change| (change.state.as_str(), change.time)),
            ),
        ),
        ("state", Value::from(summary.state.as_str())),
        ("error", optional(summary.error.as_deref())),
    ])
}
