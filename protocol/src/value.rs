//! The one value type for script arguments and event payloads: what JSON can say, with
//! integers kept apart from floats so that Python receives `int` and `float` faithfully.
//!
//! A value is recursive, so it is nested at most [`MAX_DEPTH`] levels deep: decoding
//! counts the levels as it descends and refuses a deeper value before going further, so
//! a small hostile frame cannot exhaust the stack of whoever decodes it.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};

/// How deeply values may nest: a scalar is one level, a list of scalars two. JSON from a
/// script's worker (at most 128 levels by serde_json's own limit) is checked against it
/// too, so oetd never sends a value it would refuse to receive.
pub const MAX_DEPTH: usize = 100;

/// A JSON-like value passed to, or published by, a script.
#[derive(Debug, Clone, PartialEq, Serialize, Default)]
pub enum Value {
    #[default]
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    String(String),
    List(Vec<Value>),
    Map(BTreeMap<String, Value>),
}

thread_local! {
    /// Levels of [`Value`] being decoded on this thread right now. Decoding never awaits,
    /// so one count per thread is exact.
    static DECODING_DEPTH: Cell<usize> = const { Cell::new(0) };
}

/// Counts one level of decoding for as long as it lives.
struct Level;

impl Level {
    fn enter() -> Option<Level> {
        DECODING_DEPTH.with(|depth| {
            let now = depth.get() + 1;
            (now <= MAX_DEPTH).then(|| {
                depth.set(now);
                Level
            })
        })
    }
}

impl Drop for Level {
    fn drop(&mut self) {
        DECODING_DEPTH.with(|depth| depth.set(depth.get().saturating_sub(1)));
    }
}

/// The wire shape of [`Value`]: the same variants in the same order, so that the derived
/// encoding is unchanged; nested values go back through [`Value`]'s own `Deserialize`,
/// which counts the levels.
#[derive(Deserialize)]
#[serde(rename = "Value")]
enum Shape {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    String(String),
    List(Vec<Value>),
    Map(BTreeMap<String, Value>),
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Value, D::Error> {
        let Some(_level) = Level::enter() else {
            return Err(serde::de::Error::custom(format_args!(
                "a value is nested more than {MAX_DEPTH} levels deep"
            )));
        };
        Ok(match Shape::deserialize(deserializer)? {
            Shape::Null => Value::Null,
            Shape::Bool(b) => Value::Bool(b),
            Shape::Int(i) => Value::Int(i),
            Shape::Float(f) => Value::Float(f),
            Shape::String(s) => Value::String(s),
            Shape::List(items) => Value::List(items),
            Shape::Map(map) => Value::Map(map),
        })
    }
}

/// A float that JSON cannot carry (NaN or an infinity) was found.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0} cannot be represented in JSON (NaN and infinities are not allowed)")]
pub struct NonFiniteFloat(pub f64);

impl Value {
    /// Converts to a JSON value. Fails only for NaN or infinite floats.
    pub fn to_json(&self) -> Result<serde_json::Value, NonFiniteFloat> {
        Ok(match self {
            Value::Null => serde_json::Value::Null,
            Value::Bool(b) => serde_json::Value::Bool(*b),
            Value::Int(i) => serde_json::Value::from(*i),
            Value::Float(f) => serde_json::Number::from_f64(*f)
                .map(serde_json::Value::Number)
                .ok_or(NonFiniteFloat(*f))?,
            Value::String(s) => serde_json::Value::String(s.clone()),
            Value::List(items) => serde_json::Value::Array(
                items.iter().map(Value::to_json).collect::<Result<_, _>>()?,
            ),
            Value::Map(map) => serde_json::Value::Object(
                map.iter()
                    .map(|(k, v)| Ok((k.clone(), v.to_json()?)))
                    .collect::<Result<_, _>>()?,
            ),
        })
    }

    /// Converts to JSON for display, writing non-finite floats as strings.
    pub fn to_json_lossy(&self) -> serde_json::Value {
        match self {
            Value::Float(f) if !f.is_finite() => serde_json::Value::String(f.to_string()),
            Value::List(items) => {
                serde_json::Value::Array(items.iter().map(Value::to_json_lossy).collect())
            }
            Value::Map(map) => serde_json::Value::Object(
                map.iter()
                    .map(|(k, v)| (k.clone(), v.to_json_lossy()))
                    .collect(),
            ),
            other => other.to_json().unwrap_or(serde_json::Value::Null),
        }
    }

    /// Checks that every float is finite, so the value can travel as JSON to a worker.
    pub fn check_finite(&self) -> Result<(), NonFiniteFloat> {
        match self {
            Value::Float(f) if !f.is_finite() => Err(NonFiniteFloat(*f)),
            Value::List(items) => items.iter().try_for_each(Value::check_finite),
            Value::Map(map) => map.values().try_for_each(Value::check_finite),
            _ => Ok(()),
        }
    }

    /// How many levels deep this value nests: 1 for a scalar or an empty collection.
    pub fn depth(&self) -> usize {
        1 + match self {
            Value::List(items) => items.iter().map(Value::depth).max().unwrap_or(0),
            Value::Map(map) => map.values().map(Value::depth).max().unwrap_or(0),
            _ => 0,
        }
    }

    /// About how many bytes this value holds in memory, for budgets that bound memory.
    pub fn approx_bytes(&self) -> usize {
        const SLOT: usize = std::mem::size_of::<Value>();
        SLOT + match self {
            Value::String(s) => s.len(),
            Value::List(items) => items.iter().map(Value::approx_bytes).sum(),
            Value::Map(map) => map.iter().map(|(k, v)| k.len() + v.approx_bytes()).sum(),
            _ => 0,
        }
    }

    /// The map inside, if this is a map.
    pub fn as_map(&self) -> Option<&BTreeMap<String, Value>> {
        match self {
            Value::Map(map) => Some(map),
            _ => None,
        }
    }

    /// The string inside, if this is a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    /// Parses a command-line word the way upstream's CLI did: as JSON when it is JSON,
    /// otherwise as a plain string.
    pub fn parse_cli(word: &str) -> Value {
        serde_json::from_str::<serde_json::Value>(word)
            .map(Value::from)
            .unwrap_or_else(|_| Value::String(word.to_owned()))
    }
}

impl From<serde_json::Value> for Value {
    fn from(json: serde_json::Value) -> Self {
        match json {
            serde_json::Value::Null => Value::Null,
            serde_json::Value::Bool(b) => Value::Bool(b),
            serde_json::Value::Number(n) => match n.as_i64() {
                Some(i) => Value::Int(i),
                // u64 beyond i64 and all non-integers become floats.
                None => Value::Float(n.as_f64().unwrap_or(f64::NAN)),
            },
            serde_json::Value::String(s) => Value::String(s),
            serde_json::Value::Array(items) => {
                Value::List(items.into_iter().map(Value::from).collect())
            }
            serde_json::Value::Object(map) => {
                Value::Map(map.into_iter().map(|(k, v)| (k, Value::from(v))).collect())
            }
        }
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Value::String(s.to_owned())
    }
}

impl From<String> for Value {
    fn from(s: String) -> Self {
        Value::String(s)
    }
}

impl From<i64> for Value {
    fn from(i: i64) -> Self {
        Value::Int(i)
    }
}

impl From<u64> for Value {
    fn from(i: u64) -> Self {
        i64::try_from(i).map_or(Value::Float(i as f64), Value::Int)
    }
}

impl From<bool> for Value {
    fn from(b: bool) -> Self {
        Value::Bool(b)
    }
}

impl From<f64> for Value {
    fn from(f: f64) -> Self {
        Value::Float(f)
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.to_json_lossy())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn every_kind() -> Value {
        let mut map = BTreeMap::new();
        map.insert("null".into(), Value::Null);
        map.insert("bool".into(), Value::Bool(true));
        map.insert("int".into(), Value::Int(-42));
        map.insert("float".into(), Value::Float(2.5));
        map.insert("string".into(), Value::from("héllo"));
        map.insert(
            "list".into(),
            Value::List(vec![Value::Int(1), Value::Float(1.0), Value::Null]),
        );
        Value::Map(map)
    }

    #[test]
    fn json_round_trip_keeps_int_and_float_apart() {
        let value = every_kind();
        let json = value.to_json().expect("finite");
        assert_eq!(Value::from(json), value);
    }

    #[test]
    fn cli_words_parse_as_json_when_they_can() {
        assert_eq!(Value::parse_cli("1"), Value::Int(1));
        assert_eq!(Value::parse_cli("1.5"), Value::Float(1.5));
        assert_eq!(Value::parse_cli("true"), Value::Bool(true));
        assert_eq!(Value::parse_cli("hello"), Value::from("hello"));
        assert_eq!(
            Value::parse_cli("[1, \"a\"]"),
            Value::List(vec![Value::Int(1), Value::from("a")])
        );
    }

    fn nested(levels: usize) -> Value {
        let mut value = Value::Null;
        for _ in 1..levels {
            value = Value::List(vec![value]);
        }
        value
    }

    #[test]
    fn values_as_deep_as_allowed_decode_and_deeper_ones_are_refused() {
        let deepest = nested(MAX_DEPTH);
        assert_eq!(deepest.depth(), MAX_DEPTH);
        let bytes = crate::codec::encode(&deepest).expect("encode");
        assert_eq!(
            crate::codec::decode::<Value>(&bytes).expect("decode"),
            deepest
        );

        let too_deep = crate::codec::encode(&nested(MAX_DEPTH + 1)).expect("encode");
        let err = crate::codec::decode::<Value>(&too_deep).expect_err("refused");
        assert!(err.to_string().contains("nested more than"), "{err}");
        // The count is back to zero after a refusal: the next value decodes.
        assert_eq!(
            crate::codec::decode::<Value>(&bytes).expect("decode"),
            deepest
        );
    }

    #[test]
    fn a_small_frame_nesting_thousands_of_levels_is_refused_without_recursing() {
        // A list tag and a length of one per level: 2 bytes a level, as an attacker
        // would write it, far deeper than any stack allows.
        let mut bytes = Vec::new();
        for _ in 0..1_000_000 {
            bytes.extend_from_slice(&[5, 1]);
        }
        bytes.push(0);
        let err = crate::codec::decode::<Value>(&bytes).expect_err("refused");
        assert!(err.to_string().contains("nested more than"), "{err}");
    }

    #[test]
    fn non_finite_floats_are_refused_for_json() {
        let value = Value::List(vec![Value::Float(f64::NAN)]);
        assert!(value.check_finite().is_err());
        assert!(value.to_json().is_err());
        assert_eq!(value.to_json_lossy(), serde_json::json!(["NaN"]));
    }
}
