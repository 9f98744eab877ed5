//! Bounds on what is recorded: a stack trace, a line of output, an error, a script's
//! event payload or a call's arguments is cut to a size that fits in a frame of the
//! control protocol, where it is recorded, and always says what was cut. So a script
//! that raises an exception with a 3 MB message cannot make every `list`, `describe` or
//! `listen` fail afterwards.

use oet_protocol::{FunctionArgs, Value};

/// Bytes of a stack trace kept: its head and its tail, half each.
pub const STACKTRACE: usize = 64 * 1024;
/// Bytes of one line of a script's output kept (its head).
pub const LOG_LINE: usize = 16 * 1024;
/// Bytes of an error message kept (head and tail).
pub const ERROR: usize = 16 * 1024;
/// Bytes a script's event payload may hold; a larger one is replaced by a note.
pub const EVENT_PAYLOAD: usize = 512 * 1024;
/// Bytes one argument of a recorded call may hold; a larger one is replaced by a note
/// in the record (the function itself is given the whole value).
pub const ARGUMENT: usize = 8 * 1024;

/// `text` cut to at most about `max` bytes, keeping its head and its tail and saying in
/// the middle how many bytes were cut.
pub fn head_and_tail(text: String, max: usize) -> String {
    if text.len() <= max {
        return text;
    }
    let head = floor_char_boundary(&text, max / 2);
    let tail = ceil_char_boundary(&text, text.len() - max / 2);
    let cut = tail - head;
    format!(
        "{}\n[... {cut} bytes cut: the text was {} bytes, more than the {max} kept ...]\n{}",
        &text[..head],
        text.len(),
        &text[tail..]
    )
}

/// `line` cut to at most about `max` bytes, keeping its head and saying how many bytes
/// were cut.
pub fn head(line: String, max: usize) -> String {
    if line.len() <= max {
        return line;
    }
    let end = floor_char_boundary(&line, max);
    format!("{} [... {} more bytes cut]", &line[..end], line.len() - end)
}

/// A script's event payload, or, when it holds more than `max` bytes, a note saying so
/// in its place.
pub fn payload(payload: Value, max: usize) -> Value {
    let bytes = payload.approx_bytes();
    if bytes <= max {
        return payload;
    }
    Value::Map(
        [(
            "oet_left_out".to_owned(),
            Value::from(format!(
                "a payload of about {bytes} bytes, more than the {max} bytes an event may carry"
            )),
        )]
        .into(),
    )
}

/// A call's arguments as recorded: each argument of more than `max` bytes is replaced
/// by a note saying how large it was.
pub fn arguments(args: &FunctionArgs, max: usize) -> FunctionArgs {
    let note = |value: &Value| {
        let bytes = value.approx_bytes();
        if bytes <= max {
            value.clone()
        } else {
            Value::from(format!(
                "[an argument of about {bytes} bytes, left out of the record]"
            ))
        }
    };
    FunctionArgs {
        args: args.args.iter().map(note).collect(),
        kwargs: args
            .kwargs
            .iter()
            .map(|(key, value)| (key.clone(), note(value)))
            .collect(),
    }
}

fn floor_char_boundary(text: &str, mut at: usize) -> usize {
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    at
}

fn ceil_char_boundary(text: &str, mut at: usize) -> usize {
    while !text.is_char_boundary(at) {
        at += 1;
    }
    at
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_text_keeps_head_and_tail_and_says_how_much_was_cut() {
        let text = format!("Traceback{}ValueError: the end", "é".repeat(100_000));
        let cut = head_and_tail(text.clone(), 1000);
        assert!(cut.len() < 1200, "{}", cut.len());
        assert!(cut.starts_with("Traceback"));
        assert!(cut.ends_with("ValueError: the end"));
        assert!(cut.contains(&format!("bytes cut: the text was {} bytes", text.len())));
        assert_eq!(head_and_tail("short".into(), 1000), "short");
    }

    #[test]
    fn a_long_line_keeps_its_head() {
        let line = head("ü".repeat(1000), 101);
        assert!(line.starts_with("üü"));
        assert!(line.ends_with("[... 1900 more bytes cut]"), "{line}");
    }

    #[test]
    fn large_payloads_and_arguments_become_notes() {
        let big = Value::from("x".repeat(10_000));
        let small = Value::Map([("msg".to_owned(), Value::from("hi"))].into());
        assert_eq!(payload(small.clone(), 1000), small);
        let note = payload(big.clone(), 1000);
        assert!(
            note.to_string().contains("more than the 1000 bytes"),
            "{note}"
        );

        let args = FunctionArgs {
            args: vec![big.clone(), Value::Int(1)],
            kwargs: [
                ("subarray_id".to_owned(), Value::Int(3)),
                ("blob".to_owned(), big),
            ]
            .into(),
        };
        let recorded = arguments(&args, 1000);
        assert_eq!(recorded.args[1], Value::Int(1));
        assert_eq!(recorded.kwargs["subarray_id"], Value::Int(3));
        assert!(recorded.kwargs["blob"].to_string().contains("left out"));
        assert!(recorded.args[0].to_string().contains("left out"));
    }
}
