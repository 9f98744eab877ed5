//! oetd's events as upstream's `/stream` showed them: each event becomes one server-sent
//! event, `data:<JSON>` and, when the event announces a request, `id:<request_id>`. The
//! JSON holds the keys upstream's pypubsub messages had, plus `topic`, written as Python's
//! `json.dumps` wrote them (`", "` and `": "` between items, non-ASCII escaped, Python's
//! float notation), so that a client cannot tell the difference.
//!
//! What changes from oetd's own payloads: request announcements carry upstream's `cmd`;
//! `procedure.lifecycle.*` events carry the procedure ID as `msg_src` and its summary as
//! `result`; who asked (uid and pid) is not told to web clients. Every other event (script
//! events, `activity.*`, `sb.*`) keeps its payload, with `msg_src` and `topic` added.

use std::collections::BTreeMap;
use std::io;

use bytes::Bytes;
use oet_protocol::{topics, Event, Value};
use serde::Serialize;
use serde_json::ser::Formatter;
use serde_json::{json, Value as Json};

/// The SSE message of one event, ready to send.
pub fn frame(event: &Event) -> Bytes {
    let (fields, id) = upstream(event);
    let mut text = String::with_capacity(256);
    text.push_str("data:{");
    for (index, (key, value)) in fields.iter().enumerate() {
        if index > 0 {
            text.push_str(", ");
        }
        text.push_str(&python_json(&Json::String(key.clone())));
        text.push_str(": ");
        text.push_str(&python_json(value));
    }
    text.push_str("}\n");
    if let Some(id) = id {
        text.push_str("id:");
        text.push_str(&id);
        text.push('\n');
    }
    text.push('\n');
    Bytes::from(text)
}

/// A comment line: clients ignore it, proxies see traffic.
pub fn comment(text: &str) -> Bytes {
    Bytes::from(format!(": {}\n\n", text.replace(['\r', '\n'], " ")))
}

/// The keys of an event's JSON in upstream's order (`msg_src` first, `topic` last), and
/// the request ID that becomes the message's `id:`.
pub fn upstream(event: &Event) -> (Vec<(String, Json)>, Option<String>) {
    let payload: BTreeMap<String, Value> = match &event.payload {
        Value::Map(map) => map.clone(),
        Value::Null => BTreeMap::new(),
        other => BTreeMap::from([("payload".to_owned(), other.clone())]),
    };
    let get = |key: &str| payload.get(key).map_or(Json::Null, Value::to_json_lossy);
    let mut msg_src = Json::String(event.msg_src.clone());
    let mut id = None;
    let body: Vec<(&str, Json)> = if !event.from_daemon() {
        // A script's own event: its payload as it published it, under the msg_src oetd
        // stamped (a script cannot pass its messages off as another's).
        passthrough(&payload)
    } else if event.topic.starts_with("request.") {
        id = match payload.get("request_id") {
            Some(Value::Int(request_id)) => Some(request_id.to_string()),
            _ => None,
        };
        request_fields(&event.topic, &payload)
    } else if event.topic.starts_with("procedure.lifecycle.") {
        if let Some(procedure) = payload.get("procedure_id") {
            msg_src = Json::String(procedure.to_json_lossy().to_string());
        }
        match event.topic.as_str() {
            topics::STATECHANGE => vec![("new_state", get("new_state"))],
            topics::STACKTRACE => vec![("stacktrace", get("stacktrace"))],
            _ => vec![("result", get("summary"))],
        }
    } else {
        passthrough(&payload)
    };
    let mut fields = vec![("msg_src".to_owned(), msg_src)];
    fields.extend(body.into_iter().map(|(key, value)| (key.to_owned(), value)));
    fields.push(("topic".to_owned(), Json::String(event.topic.clone())));
    (fields, id)
}

/// Every key of a payload but those the message sets itself.
fn passthrough(payload: &BTreeMap<String, Value>) -> Vec<(&str, Json)> {
    payload
        .iter()
        .filter(|(key, _)| !matches!(key.as_str(), "msg_src" | "topic"))
        .map(|(key, value)| (key.as_str(), value.to_json_lossy()))
        .collect()
}

/// A request announcement as upstream's REST layer published it: the command in `cmd`
/// (or the list's filter), without who asked.
fn request_fields<'a>(topic: &str, payload: &'a BTreeMap<String, Value>) -> Vec<(&'a str, Json)> {
    let get = |key: &str| payload.get(key).map_or(Json::Null, Value::to_json_lossy);
    match topic {
        "request.procedure.create" => {
            let script = match payload.get("script") {
                Some(script) => script.to_json_lossy(),
                None => json!({"script_uri": get("script_uri")}),
            };
            vec![(
                "cmd",
                json!({"script": script, "init_args": get("init_args")}),
            )]
        }
        "request.procedure.start" => vec![(
            "cmd",
            json!({
                "process_uid": get("procedure_id"),
                "fn_name": get("function"),
                "run_args": get("args"),
                "force_start": false,
            }),
        )],
        "request.procedure.stop" => vec![(
            "cmd",
            json!({"process_uid": get("procedure_id"), "run_abort": get("run_abort")}),
        )],
        "request.procedure.list" => vec![("pids", get("ids"))],
        "request.activity.list" => vec![("activity_ids", get("ids"))],
        "request.activity.run" => vec![(
            "cmd",
            json!({
                "activity_name": get("activity_name"),
                "sbd_id": get("sbd_id"),
                "prepare_only": get("prepare_only"),
                "create_env": get("create_env"),
                "script_args": get("script_args"),
            }),
        )],
        _ => passthrough(payload)
            .into_iter()
            .filter(|(key, _)| !matches!(*key, "request_id" | "peer_uid" | "peer_pid"))
            .collect(),
    }
}

/// JSON text as Python's `json.dumps` writes it by default.
pub fn python_json(value: &Json) -> String {
    let mut out = Vec::with_capacity(128);
    let mut serializer = serde_json::Serializer::with_formatter(&mut out, PythonFormatter);
    // Writing into a Vec cannot fail, and every float of a serde_json value is finite.
    if value.serialize(&mut serializer).is_err() {
        return "null".into();
    }
    String::from_utf8(out).unwrap_or_else(|_| "null".into())
}

/// `json.dumps`' defaults: `", "` and `": "` separators, `ensure_ascii`, `repr` floats.
struct PythonFormatter;

impl Formatter for PythonFormatter {
    fn begin_array_value<W: ?Sized + io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> io::Result<()> {
        separate(w, first)
    }

    fn begin_object_key<W: ?Sized + io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> io::Result<()> {
        separate(w, first)
    }

    fn begin_object_value<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        w.write_all(b": ")
    }

    fn write_f64<W: ?Sized + io::Write>(&mut self, w: &mut W, value: f64) -> io::Result<()> {
        w.write_all(python_float(value).as_bytes())
    }

    fn write_string_fragment<W: ?Sized + io::Write>(
        &mut self,
        w: &mut W,
        fragment: &str,
    ) -> io::Result<()> {
        for c in fragment.chars() {
            if c.is_ascii() {
                w.write_all(&[c as u8])?;
            } else {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    write!(w, "\\u{unit:04x}")?;
                }
            }
        }
        Ok(())
    }
}

/// `", "` before every item of an array or object but the first.
fn separate<W: ?Sized + io::Write>(w: &mut W, first: bool) -> io::Result<()> {
    if first {
        Ok(())
    } else {
        w.write_all(b", ")
    }
}

/// A float as Python's `repr` writes it: the shortest digits that read back the same,
/// positional from 1e-4 up to 1e16, otherwise with an exponent of at least two digits.
fn python_float(value: f64) -> String {
    if !value.is_finite() {
        return if value.is_nan() {
            "NaN".into()
        } else if value > 0.0 {
            "Infinity".into()
        } else {
            "-Infinity".into()
        };
    }
    let scientific = format!("{value:e}");
    let (mantissa, exponent) = scientific.split_once('e').unwrap_or((&scientific, "0"));
    let exponent: i32 = exponent.parse().unwrap_or(0);
    if value == 0.0 || (-4..16).contains(&exponent) {
        let plain = format!("{value}");
        if plain.contains('.') {
            plain
        } else {
            format!("{plain}.0")
        }
    } else {
        let sign = if exponent < 0 { '-' } else { '+' };
        format!("{mantissa}e{sign}{:02}", exponent.abs())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oet_protocol::view::map;

    fn event(topic: &str, msg_src: &str, payload: Value) -> Event {
        Event {
            topic: topic.into(),
            msg_src: msg_src.into(),
            time: 1.0,
            payload,
        }
    }

    fn text(event: &Event) -> String {
        String::from_utf8(frame(event).to_vec()).expect("utf-8")
    }

    #[test]
    fn json_is_written_as_python_writes_it() {
        assert_eq!(
            python_json(&json!({"a": [1, 2.5, null, true], "b": {"c": "x"}})),
            r#"{"a": [1, 2.5, null, true], "b": {"c": "x"}}"#
        );
        assert_eq!(
            python_json(&json!("héllo 🔭\n")),
            r#""h\u00e9llo \ud83d\udd2d\n""#
        );
        for (value, python) in [
            (1.0, "1.0"),
            (0.0, "0.0"),
            (-2.5, "-2.5"),
            (1764512345.123456, "1764512345.123456"),
            (1e16, "1e+16"),
            (1.5e-7, "1.5e-07"),
            (0.0001, "0.0001"),
            (123456789012345680000.0, "1.2345678901234568e+20"),
            (1e-300, "1e-300"),
        ] {
            assert_eq!(python_float(value), python, "{value}");
        }
    }

    #[test]
    fn a_statechange_names_its_procedure_as_source() {
        let e = event(
            topics::STATECHANGE,
            "oetd",
            map([
                ("procedure_id", Value::Int(3)),
                ("new_state", Value::from("RUNNING")),
                ("previous_state", Value::from("READY")),
            ]),
        );
        assert_eq!(
            text(&e),
            "data:{\"msg_src\": \"3\", \"new_state\": \"RUNNING\", \"topic\": \
             \"procedure.lifecycle.statechange\"}\n\n"
        );
    }

    #[test]
    fn a_lifecycle_event_carries_the_summary_as_result() {
        let summary = map([("id", Value::Int(3)), ("state", Value::from("COMPLETE"))]);
        let e = event(
            topics::COMPLETE,
            "oetd",
            map([("procedure_id", Value::Int(3)), ("summary", summary)]),
        );
        let (fields, id) = upstream(&e);
        assert_eq!(id, None);
        assert_eq!(
            fields,
            vec![
                ("msg_src".into(), json!("3")),
                ("result".into(), json!({"id": 3, "state": "COMPLETE"})),
                ("topic".into(), json!("procedure.lifecycle.complete")),
            ]
        );
    }

    #[test]
    fn a_request_carries_its_id_and_upstreams_command_without_who_asked() {
        let e = event(
            "request.procedure.start",
            "oetd",
            map([
                ("procedure_id", Value::Int(4)),
                ("function", Value::from("main")),
                (
                    "args",
                    map([("args", Value::List(vec![])), ("kwargs", map([]))]),
                ),
                ("request_id", Value::Int(1764512345000000001)),
                ("peer_uid", Value::Int(1000)),
                ("peer_pid", Value::Int(42)),
            ]),
        );
        assert_eq!(
            text(&e),
            "data:{\"msg_src\": \"oetd\", \"cmd\": {\"fn_name\": \"main\", \"force_start\": \
             false, \"process_uid\": 4, \"run_args\": {\"args\": [], \"kwargs\": {}}}, \
             \"topic\": \"request.procedure.start\"}\nid:1764512345000000001\n\n"
        );
        let create = event(
            "request.procedure.create",
            "oetd",
            map([
                ("script_uri", Value::from("file:///s.py")),
                (
                    "script",
                    map([
                        ("script_type", Value::from("filesystem")),
                        ("script_uri", Value::from("file:///s.py")),
                    ]),
                ),
                (
                    "init_args",
                    map([("args", Value::List(vec![])), ("kwargs", map([]))]),
                ),
                ("request_id", Value::Int(7)),
            ]),
        );
        let (fields, id) = upstream(&create);
        assert_eq!(id.as_deref(), Some("7"));
        assert_eq!(
            fields[1],
            (
                "cmd".into(),
                json!({"script": {"script_type": "filesystem", "script_uri": "file:///s.py"},
                       "init_args": {"args": [], "kwargs": {}}})
            )
        );
    }

    #[test]
    fn a_script_event_keeps_its_payload_under_oetds_stamp() {
        let e = event(
            "user.script.announce",
            "5",
            map([
                ("msg", Value::from("slewing")),
                ("msg_src", Value::from("pretender")),
                ("request_id", Value::Int(9)),
            ]),
        );
        let (fields, id) = upstream(&e);
        assert_eq!(id, None, "only oetd's request announcements carry an id");
        assert_eq!(fields[0], ("msg_src".into(), json!("5")));
        assert!(fields.contains(&("msg".into(), json!("slewing"))));
        assert_eq!(
            fields.last(),
            Some(&("topic".into(), json!("user.script.announce")))
        );
    }

    #[test]
    fn comments_stay_on_one_line() {
        assert_eq!(
            comment("missed 3\nevents"),
            Bytes::from(": missed 3 events\n\n")
        );
    }
}
