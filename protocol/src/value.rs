//! The one value type for script arguments and event payloads: what JSON can say, with
//! integers kept apart from floats so that Python receives `int` and `float` faithfully.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// A JSON-like value passed to, or published by, a script.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
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

    #[test]
    fn non_finite_floats_are_refused_for_json() {
        let value = Value::List(vec![Value::Float(f64::NAN)]);
        assert!(value.check_finite().is_err());
        assert!(value.to_json().is_err());
        assert_eq!(value.to_json_lossy(), serde_json::json!(["NaN"]));
    }
}
