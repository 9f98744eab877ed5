//! JSON views of the wire types, in the shapes upstream's REST API used (DESIGN section
//! 9). Used by `oetctl --json`, event payloads and the HTTP shim, so every edge shows
//! the same JSON.

use serde_json::{json, Map, Value as Json};

use crate::summary::{ActivitySummary, FunctionArgs, GitArgs, ProcedureSummary, ScriptSpec};

/// `{args: [...], kwargs: {...}}`
pub fn function_args(args: &FunctionArgs) -> Json {
    json!({
        "args": args.args.iter().map(|v| v.to_json_lossy()).collect::<Vec<_>>(),
        "kwargs": args.kwargs.iter().map(|(k, v)| (k.clone(), v.to_json_lossy())).collect::<Map<_, _>>(),
    })
}

fn git_args(args: &GitArgs) -> Json {
    json!({
        "git_repo": args.git_repo,
        "git_branch": args.git_branch,
        "git_commit": args.git_commit,
    })
}

/// `{script_type, script_uri, git_args?, create_env?}`
pub fn script(spec: &ScriptSpec) -> Json {
    match spec {
        ScriptSpec::Filesystem { script_uri } => json!({
            "script_type": "filesystem",
            "script_uri": script_uri,
        }),
        ScriptSpec::Git {
            script_uri,
            git_args: args,
            create_env,
        } => json!({
            "script_type": "git",
            "script_uri": script_uri,
            "git_args": git_args(args),
            "create_env": create_env,
        }),
    }
}

/// A procedure summary as upstream's REST API shows it, plus `calls` (every call with its
/// time) which upstream did not keep.
pub fn procedure(summary: &ProcedureSummary) -> Json {
    json!({
        "id": summary.id,
        "script": script(&summary.script),
        "script_args": summary
            .script_args()
            .iter()
            .map(|(name, args)| (name.clone(), function_args(args)))
            .collect::<Map<_, _>>(),
        "calls": summary.calls.iter().map(|call| json!({
            "function": call.function,
            "args": function_args(&call.args),
            "time": call.time,
        })).collect::<Vec<_>>(),
        "history": {
            "process_states": summary
                .history
                .iter()
                .map(|change| json!([change.state.as_str(), change.time]))
                .collect::<Vec<_>>(),
            "stacktrace": summary.stacktrace,
        },
        "state": summary.state.as_str(),
    })
}

/// An activity summary.
pub fn activity(summary: &ActivitySummary) -> Json {
    json!({
        "id": summary.id,
        "activity_name": summary.activity_name,
        "sbd_id": summary.sbd_id,
        "sbi_id": summary.sbi_id,
        "procedure_id": summary.procedure_id,
        "prepare_only": summary.prepare_only,
        "script_args": summary
            .script_args
            .iter()
            .map(|(name, args)| (name.clone(), function_args(args)))
            .collect::<Map<_, _>>(),
        "activity_states": summary
            .history
            .iter()
            .map(|change| json!([change.state.as_str(), change.time]))
            .collect::<Vec<_>>(),
        "state": summary.state.as_str(),
    })
}
