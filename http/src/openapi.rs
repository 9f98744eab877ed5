//! The OpenAPI 3.1 document of the API, made from the route table (so every route is in
//! it, under the configured prefix) and the description of each operation below. The
//! schemas say exactly what the shim accepts and answers; a test checks that every
//! documented operation is routed and every route documented, and the property-based
//! test of the whole API checks every answer against them.

use serde_json::{json, Map, Value as Json};

use crate::routes::{self, Verb};

const JSON: &str = "application/json";

/// The document, with paths under `prefix`; with `secured`, every API operation needs a
/// bearer token.
pub fn document(prefix: &str, secured: bool) -> Json {
    let mut paths = Map::new();
    for route in routes::table() {
        let operation = operation(route.operation, route.verb, secured).unwrap_or_else(
            || json!({"operationId": route.operation, "summary": "undocumented", "responses": {}}),
        );
        let item = paths
            .entry(format!("{prefix}{}", route.path))
            .or_insert_with(|| json!({}));
        if let Json::Object(item) = item {
            item.insert(route.verb.as_str().to_owned(), operation);
        }
    }
    let mut document = json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Observation Execution Tool API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "The original OET's REST API (7.0.0) and event stream, served by \
                oet-http over oetd's control socket. Every call reaches oetd as a call of \
                the shim's own user.",
        },
        "paths": paths,
        "components": components(),
    });
    if secured {
        document["components"]["securitySchemes"] =
            json!({"bearerAuth": {"type": "http", "scheme": "bearer"}});
        document["security"] = json!([{"bearerAuth": []}]);
    }
    document
}

fn schema(name: &str) -> Json {
    json!({"$ref": format!("#/components/schemas/{name}")})
}

fn nullable(name: &str) -> Json {
    json!({"anyOf": [schema(name), {"type": "null"}]})
}

fn json_content(schema: Json) -> Json {
    json!({JSON: {"schema": schema}})
}

/// The answer of a status, for the statuses the API uses.
fn response(status: u16) -> (String, Json) {
    let (description, body) = match status {
        400 => (
            "A request oetd refused as invalid, a state the API cannot be asked for, or a \
             Host header that does not name this server",
            "ErrorMessage",
        ),
        401 => ("No bearer token, or one that is not known", "ErrorMessage"),
        403 => (
            "The token's role does not allow this, or oetd refused the shim's user",
            "ErrorMessage",
        ),
        404 => ("No such procedure, activity or SBD", "ErrorMessage"),
        409 => (
            "The procedure is not in a state that allows this (e.g. it is not READY, or \
             another one is running)",
            "ErrorMessage",
        ),
        413 => (
            "The request body is larger than server.max_body_bytes",
            "ErrorMessage",
        ),
        415 => (
            "The request body is not sent as application/json",
            "ErrorMessage",
        ),
        422 => (
            "Validation Error: each entry names a field at fault",
            "HTTPValidationError",
        ),
        500 => (
            "oetd or the shim failed; the detail says how",
            "ErrorMessage",
        ),
        503 => (
            "oetd cannot be reached, or the shim is at a limit",
            "ErrorMessage",
        ),
        504 => (
            "oetd did not answer within oetd.timeout_secs",
            "ErrorMessage",
        ),
        _ => ("Error", "ErrorMessage"),
    };
    let mut answer = json!({"description": description, "content": json_content(schema(body))});
    if status == 401 {
        answer["headers"] = json!({
            "WWW-Authenticate": {"required": true, "schema": {"type": "string"}}
        });
    }
    (status.to_string(), answer)
}

/// Statuses every call to oetd may answer besides its own.
const CALLS: &[u16] = &[400, 403, 500, 503, 504];
/// ... and those of a path with an ID.
const BY_ID: &[u16] = &[404, 422];
/// ... and those of a request with a body.
const WITH_BODY: &[u16] = &[404, 409, 413, 415, 422];

fn responses(success: (u16, &str, Json), extra: &[&[u16]], secured: bool) -> Json {
    let (status, description, content) = success;
    let mut all = Map::new();
    all.insert(
        status.to_string(),
        json!({"description": description, "content": content}),
    );
    let mut statuses: Vec<u16> = extra.iter().flat_map(|set| set.iter().copied()).collect();
    if secured {
        statuses.push(401);
    }
    statuses.sort_unstable();
    statuses.dedup();
    for status in statuses {
        let (code, answer) = response(status);
        all.insert(code, answer);
    }
    Json::Object(all)
}

fn path_id(name: &str, title: &str) -> Json {
    json!([{
        "name": name,
        "in": "path",
        "required": true,
        "schema": {"type": "integer", "title": title},
    }])
}

fn body(name: &str, example: Json) -> Json {
    json!({
        "required": true,
        "content": {JSON: {"schema": schema(name), "examples": {"upstream": {"value": example}}}},
    })
}

/// The description of one operation, by its ID; `None` for an ID this module does not
/// know (a test checks there is none).
pub fn operation(id: &str, verb: Verb, secured: bool) -> Option<Json> {
    let list_of = |name: &str| json_content(json!({"type": "array", "items": schema(name)}));
    let mut operation = match (id, verb) {
        ("get_procedures", Verb::Get) => json!({
            "tags": ["Procedures"],
            "summary": "Get all Procedures",
            "description": "Returns a list of all prepared and running Procedures.",
            "responses": responses((200, "The procedures oetd keeps", list_of("ProcedureSummary")), &[CALLS], secured),
        }),
        ("create_procedure", Verb::Post) => json!({
            "tags": ["Procedures"],
            "summary": "Create a new Procedure and prepare it for execution",
            "description": "Loads the requested script as a Procedure in a process of its own \
                and calls its init. Answers once the procedure is READY (or FAILED, or after \
                oetd.ready_wait_secs, as it then is).",
            "requestBody": body("ProcedurePostRequest", json!({
                "script": {"script_type": "filesystem", "script_uri": "file:///tmp/scripts/hello_world_without_sb.py"},
                "script_args": {"init": {"args": [], "kwargs": {"subarray_id": 1}}},
            })),
            "responses": responses((201, "The procedure", json_content(schema("ProcedureSummary"))), &[CALLS, WITH_BODY], secured),
        }),
        ("get_procedure", Verb::Get) => json!({
            "tags": ["Procedures"],
            "summary": "Get the Procedure with the given procedure_id",
            "description": "Returns a summary of the Procedure, with details of its state and \
                arguments; 404 with \"No information available for PID=<id>\" if oetd knows \
                none.",
            "parameters": path_id("procedure_id", "Procedure Id"),
            "responses": responses((200, "The procedure", json_content(schema("ProcedureSummary"))), &[CALLS, BY_ID], secured),
        }),
        ("update_procedure", Verb::Put) => json!({
            "tags": ["Procedures"],
            "summary": "Update the Procedure with the given procedure_id",
            "description": "state RUNNING starts main with script_args.main (the procedure must \
                be READY); state STOPPED stops a RUNNING procedure and, with abort, runs the \
                abort script for its subarray, answering an abort_message; no state changes \
                nothing.",
            "parameters": path_id("procedure_id", "Procedure Id"),
            "requestBody": body("ProcedurePutRequest", json!({"state": "RUNNING", "script_args": {"main": {"args": [], "kwargs": {}}}})),
            "responses": responses(
                (200, "The procedure, or the outcome of a stop", json_content(json!({
                    "anyOf": [schema("ProcedureSummary"), schema("AbortSummary")]
                }))),
                &[CALLS, BY_ID, WITH_BODY],
                secured,
            ),
        }),
        ("get_activities", Verb::Get) => json!({
            "tags": ["Activities"],
            "summary": "Get all Activities",
            "description": "Returns a list of all the Activity summaries.",
            "responses": responses((200, "The activities oetd keeps", list_of("ActivitySummary")), &[CALLS], secured),
        }),
        ("run_activity", Verb::Post) => json!({
            "tags": ["Activities"],
            "summary": "Create a new Activity and start its execution",
            "description": "Loads the SBDefinition from the ODA and the script it names for the \
                activity, prepares it as a Procedure and starts its main once it is READY \
                (unless prepare_only). Answers once the activity is REQUESTED.",
            "requestBody": body("ActivityPostRequest", json!({
                "sbd_id": "sbd-mvp01-20220923-00001", "activity_name": "observe",
                "script_args": {"init": {"args": [], "kwargs": {"subarray_id": 1}}},
            })),
            "responses": responses((201, "The activity", json_content(schema("ActivitySummary"))), &[CALLS, WITH_BODY], secured),
        }),
        ("get_activity", Verb::Get) => json!({
            "tags": ["Activities"],
            "summary": "Get the Activity with the given activity_id",
            "description": "Returns a summary of the Activity, with details of its state and \
                related Procedure.",
            "parameters": path_id("activity_id", "Activity Id"),
            "responses": responses((200, "The activity", json_content(schema("ActivitySummary"))), &[CALLS, BY_ID], secured),
        }),
        ("stream", Verb::Get) => json!({
            "tags": ["Server Sent Events"],
            "summary": "Stream",
            "description": "Server-sent events of everything published on oetd's bus, from now \
                on: each message is data:<JSON of the event's keys and its topic>, with \
                id:<request_id> when it announces a request. The response opens with a bare \
                newline; comment lines keep it open; it ends when oetd goes away.",
            "responses": responses(
                (200, "A stream of messages with the text/event-stream MIME type",
                 json!({"text/event-stream": {"schema": {"type": "string"}}})),
                &[CALLS],
                secured,
            ),
        }),
        ("openapi", Verb::Get) => json!({
            "tags": ["Meta"],
            "summary": "This document",
            "security": [],
            "responses": responses((200, "The OpenAPI document", json_content(json!({"type": "object"}))), &[&[400, 500]], false),
        }),
        ("health", Verb::Get) => json!({
            "tags": ["Meta"],
            "summary": "Whether oetd answers the shim",
            "security": [],
            "responses": responses((200, "oetd completed a handshake", json_content(schema("Health"))), &[&[400, 500, 503, 504]], false),
        }),
        _ => return None,
    };
    operation["operationId"] = Json::String(id.to_owned());
    Some(operation)
}

fn components() -> Json {
    let input = schema("ProcedureInput");
    json!({"schemas": {
        "ProcedureState": {
            "type": "string",
            "enum": ["UNKNOWN", "IDLE", "CREATING", "PREP_ENV", "LOADING", "INITIALISING",
                     "READY", "RUNNING", "COMPLETE", "STOPPED", "FAILED"],
            "description": "The states of a procedure.",
        },
        "ActivityState": {
            "type": "string",
            "enum": ["REQUESTED", "PREPARED", "RUNNING", "COMPLETE", "FAILED", "STOPPED"],
        },
        "ProcedureInput": {
            "type": "object",
            "description": "Positional and keyword arguments of one function call.",
            "properties": {"args": {"type": "array"}, "kwargs": {"type": "object"}},
        },
        "ScriptArgs": {
            "type": "object",
            "description": "Arguments per function; only init and main may be given.",
            "properties": {"init": nullable("ProcedureInput"), "main": nullable("ProcedureInput")},
            "additionalProperties": false,
        },
        "FileSystemScript": {
            "type": "object",
            "properties": {
                "script_type": {"const": "filesystem"},
                "script_uri": {"type": "string", "examples": ["file:///path/to/script.py"]},
            },
            "required": ["script_type", "script_uri"],
        },
        "GitArgs": {
            "type": "object",
            "properties": {
                "git_repo": {"type": ["string", "null"]},
                "git_branch": {"type": ["string", "null"]},
                "git_commit": {"type": ["string", "null"]},
            },
        },
        "GitScript": {
            "type": "object",
            "properties": {
                "script_type": {"const": "git"},
                "script_uri": {"type": "string", "examples": ["git://scripts/observe.py"]},
                "git_args": nullable("GitArgs"),
                "create_env": {"type": "boolean"},
            },
            "required": ["script_type", "script_uri"],
        },
        "Script": {
            "oneOf": [schema("FileSystemScript"), schema("GitScript")],
            "discriminator": {
                "propertyName": "script_type",
                "mapping": {
                    "filesystem": "#/components/schemas/FileSystemScript",
                    "git": "#/components/schemas/GitScript",
                },
            },
        },
        "ProcedurePostRequest": {
            "type": "object",
            "properties": {"script": schema("Script"), "script_args": nullable("ScriptArgs")},
            "required": ["script"],
        },
        "ProcedurePutRequest": {
            "type": "object",
            "properties": {
                "script_args": nullable("ScriptArgs"),
                "state": nullable("ProcedureState"),
                "abort": {"type": "boolean"},
            },
        },
        "ActivityPostRequest": {
            "type": "object",
            "properties": {
                "sbd_id": {"type": "string"},
                "activity_name": {"type": "string", "examples": ["observe"]},
                "script_args": nullable("ScriptArgs"),
                "prepare_only": {"type": "boolean"},
                "create_env": {"type": "boolean"},
            },
            "required": ["sbd_id", "activity_name"],
        },
        "ProcedureSummary": {
            "type": "object",
            "properties": {
                "id": {"type": "integer", "minimum": 1},
                "uri": {"type": "string"},
                "script": schema("Script"),
                "checkout": {"anyOf": [{"type": "null"}, {
                    "type": "object",
                    "description": "For a git script: the repository, branch and commit it runs from, once fetched.",
                    "properties": {
                        "repo": {"type": "string"},
                        "branch": {"type": ["string", "null"]},
                        "commit": {"type": "string"},
                    },
                    "required": ["repo", "branch", "commit"],
                }]},
                "script_args": {"type": "object", "additionalProperties": input},
                "calls": {"type": "array", "items": {
                    "type": "object",
                    "properties": {"function": {"type": "string"}, "args": input, "time": {"type": "number"}},
                    "required": ["function", "args", "time"],
                }},
                "history": {
                    "type": "object",
                    "properties": {
                        "process_states": {"type": "array", "items": {
                            "type": "array",
                            "prefixItems": [schema("ProcedureState"), {"type": "number"}],
                            "minItems": 2,
                            "maxItems": 2,
                        }},
                        "stacktrace": {"type": ["string", "null"]},
                    },
                    "required": ["process_states", "stacktrace"],
                },
                "state": schema("ProcedureState"),
            },
            "required": ["id", "uri", "script", "script_args", "history", "state"],
        },
        "AbortSummary": {
            "type": "object",
            "properties": {"abort_message": {"type": "string"}},
            "required": ["abort_message"],
        },
        "ActivitySummary": {
            "type": "object",
            "properties": {
                "id": {"type": "integer", "minimum": 1},
                "uri": {"type": "string"},
                "procedure_id": {"type": ["integer", "null"]},
                "sbd_id": {"type": "string"},
                "sbi_id": {"type": ["string", "null"]},
                "activity_name": {"type": "string"},
                "prepare_only": {"type": "boolean"},
                "script_args": {"type": "object", "additionalProperties": input},
                "activity_states": {"type": "array", "items": {
                    "type": "array",
                    "prefixItems": [schema("ActivityState"), {"type": "number"}],
                    "minItems": 2,
                    "maxItems": 2,
                }},
                "state": schema("ActivityState"),
                "error": {"type": ["string", "null"]},
            },
            "required": ["id", "uri", "procedure_id", "sbd_id", "sbi_id", "activity_name",
                         "prepare_only", "script_args", "activity_states", "state"],
        },
        "Health": {
            "type": "object",
            "properties": {"status": {"const": "ok"}, "oetd": {"type": "string"}},
            "required": ["status", "oetd"],
        },
        "ErrorMessage": {
            "type": "object",
            "properties": {"detail": {"anyOf": [{"type": "string"}, {"type": "object"}]}},
            "required": ["detail"],
        },
        "ValidationError": {
            "type": "object",
            "properties": {
                "loc": {"type": "array", "items": {"anyOf": [{"type": "string"}, {"type": "integer"}]}},
                "msg": {"type": "string"},
                "type": {"type": "string"},
            },
            "required": ["loc", "msg", "type"],
        },
        "HTTPValidationError": {
            "type": "object",
            "properties": {"detail": {"type": "array", "items": schema("ValidationError")}},
            "required": ["detail"],
        },
    }})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_is_documented() {
        for route in routes::table() {
            assert!(
                operation(route.operation, route.verb, true).is_some(),
                "{} {} ({}) has no description in openapi.rs",
                route.verb.as_str(),
                route.path,
                route.operation
            );
        }
    }

    #[test]
    fn paths_are_under_the_prefix_and_security_follows_tokens() {
        let open = document("/api", false);
        assert!(open["paths"]["/api/procedures/"]["post"].is_object());
        assert!(open["paths"]["/api/procedures/{procedure_id}"]["put"].is_object());
        assert!(open.get("security").is_none());
        assert!(open["paths"]["/api/procedures/"]["get"]["responses"]["401"].is_null());
        let secured = document("/api", true);
        assert_eq!(secured["security"], json!([{"bearerAuth": []}]));
        assert!(secured["paths"]["/api/procedures/"]["get"]["responses"]["401"].is_object());
        assert_eq!(
            secured["paths"]["/api/health"]["get"]["security"],
            json!([])
        );
    }

    #[test]
    fn every_reference_resolves() {
        fn refs(value: &Json, found: &mut Vec<String>) {
            match value {
                Json::Object(map) => {
                    if let Some(Json::String(target)) = map.get("$ref") {
                        found.push(target.clone());
                    }
                    map.values().for_each(|v| refs(v, found));
                }
                Json::Array(items) => items.iter().for_each(|v| refs(v, found)),
                _ => {}
            }
        }
        let document = document("", true);
        let mut found = Vec::new();
        refs(&document, &mut found);
        assert!(!found.is_empty());
        for target in found {
            let pointer = target.trim_start_matches('#');
            assert!(
                document.pointer(pointer).is_some(),
                "{target} does not resolve"
            );
        }
    }
}
