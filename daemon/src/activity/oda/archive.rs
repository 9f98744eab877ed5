//! What the ODA is to the daemon: the [`Oda`] trait every backend implements, the
//! documents that pass through it (SBDs in, SBIs out), and its errors.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use oet_protocol::FunctionArgs;
use serde_json::{json, Value as Json};

use crate::activity::sbd::Sbd;

/// The `interface` an SBI document declares (the PDM schema it follows).
pub const SBI_INTERFACE: &str = "https://schema.skao.int/ska-oso-pdm-sbi/0.1";

/// The kinds of document the ODA keeps, for messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DocKind {
    Sbd,
    Sbi,
}

impl fmt::Display for DocKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DocKind::Sbd => "SBD",
            DocKind::Sbi => "SBI",
        })
    }
}

/// Why an ODA call failed.
#[derive(Debug, thiserror::Error)]
pub enum OdaError {
    /// `detail` says more where there is more to say (a remote's answer), else is empty.
    #[error("the ODA has no {kind} '{id}'{detail}")]
    NotFound {
        kind: DocKind,
        id: String,
        detail: String,
    },
    #[error("{kind} id '{id}' is not allowed: {reason}")]
    InvalidId {
        kind: DocKind,
        id: String,
        reason: &'static str,
    },
    #[error("{0}")]
    Malformed(String),
    #[error("cannot reach the ODA at {url}: {cause}")]
    Unreachable { url: String, cause: String },
    #[error("the ODA at {url} answered {status}: {body}")]
    Remote {
        url: String,
        status: u16,
        body: String,
    },
    #[error("cannot use the ODA path {}: {cause}", path.display())]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("ODA configuration: {0}")]
    Config(String),
}

impl OdaError {
    pub(crate) fn io(path: impl Into<PathBuf>, cause: std::io::Error) -> Self {
        OdaError::Io {
            path: path.into(),
            cause,
        }
    }
}

/// An archive of SBDs and SBIs.
#[async_trait::async_trait]
pub trait Oda: Send + Sync {
    /// Where this ODA is, for logs and status lines (a directory or a URL).
    fn location(&self) -> String;

    /// The newest version of the SBD `sbd_id`.
    async fn get_sbd(&self, sbd_id: &str) -> Result<Sbd, OdaError>;

    /// Stores an SBD given as JSON text and returns it as stored. An SBD without an
    /// `sbd_id` is given one, as the ODA does for new documents.
    async fn put_sbd(&self, json: &str) -> Result<Sbd, OdaError>;

    /// Records a new SBI; the ODA assigns and returns its `sbi_id`.
    async fn create_sbi(&self, sbi: &NewSbi) -> Result<String, OdaError>;

    /// The SBI document `sbi_id`, as stored.
    async fn get_sbi(&self, sbi_id: &str) -> Result<Json, OdaError>;
}

/// Loads the SBD in the file at `path` into the ODA (what `oetctl oda put-sbd FILE` does).
pub async fn put_sbd_file(oda: &dyn Oda, path: &Path) -> Result<Sbd, OdaError> {
    let text = tokio::fs::read_to_string(path)
        .await
        .map_err(|cause| OdaError::io(path, cause))?;
    oda.put_sbd(&text).await.map_err(|err| match err {
        OdaError::Malformed(what) => OdaError::Malformed(format!("{}: {what}", path.display())),
        other => other,
    })
}

/// One call of an activity, as an SBI records it.
#[derive(Debug, Clone, PartialEq)]
pub struct ActivityCall {
    pub activity_name: String,
    /// The arguments each function was (or will be) called with: the SBD's merged with
    /// the command line's.
    pub function_args: BTreeMap<String, FunctionArgs>,
    /// The arguments given on the command line (`--script-args`).
    pub runtime_args: BTreeMap<String, FunctionArgs>,
    pub executed_at: SystemTime,
}

/// A Scheduling Block Instance to be recorded; the ODA assigns its id.
#[derive(Debug, Clone, PartialEq)]
pub struct NewSbi {
    pub interface: String,
    pub telescope: Option<String>,
    pub sbd_ref: String,
    pub sbd_version: u64,
    pub activities: Vec<ActivityCall>,
}

impl NewSbi {
    /// The SBI for running one activity of `sbd`.
    pub fn for_activity(sbd: &Sbd, call: ActivityCall) -> Self {
        NewSbi {
            interface: SBI_INTERFACE.to_owned(),
            telescope: sbd.telescope.clone(),
            sbd_ref: sbd.sbd_id.clone(),
            sbd_version: sbd.version,
            activities: vec![call],
        }
    }

    /// The SBI in the PDM's JSON shape, as a remote ODA validates it: each activity call
    /// is `{activity_ref, executed_at, runtime_args: [{function_name, function_args}]}`
    /// with the command line's arguments, as upstream records them.
    pub fn to_pdm_json(&self) -> Result<Json, OdaError> {
        self.json(false)
    }

    /// The PDM shape plus, per activity call, the `function_args` actually used; the
    /// filesystem ODA keeps this fuller record.
    pub fn to_json(&self) -> Result<Json, OdaError> {
        self.json(true)
    }

    fn json(&self, with_used_args: bool) -> Result<Json, OdaError> {
        let activities = self
            .activities
            .iter()
            .map(|call| {
                let mut entry = json!({
                    "activity_ref": call.activity_name,
                    "executed_at": rfc3339(call.executed_at),
                    "runtime_args": function_args_list(&call.runtime_args)?,
                });
                if with_used_args {
                    entry["function_args"] = function_args_list(&call.function_args)?;
                }
                Ok(entry)
            })
            .collect::<Result<Vec<_>, OdaError>>()?;
        let mut doc = json!({
            "interface": self.interface,
            "sbd_ref": self.sbd_ref,
            "sbd_version": self.sbd_version,
            "activities": activities,
        });
        if let Some(telescope) = &self.telescope {
            doc["telescope"] = json!(telescope);
        }
        Ok(doc)
    }
}

fn function_args_list(args: &BTreeMap<String, FunctionArgs>) -> Result<Json, OdaError> {
    let to_json = |value: &oet_protocol::Value| {
        value
            .to_json()
            .map_err(|err| OdaError::Malformed(format!("cannot record the SBI: {err}")))
    };
    args.iter()
        .map(|(function, fa)| {
            Ok(json!({
                "function_name": function,
                "function_args": {
                    "args": fa.args.iter().map(to_json).collect::<Result<Vec<_>, _>>()?,
                    "kwargs": fa.kwargs.iter()
                        .map(|(k, v)| Ok((k.clone(), to_json(v)?)))
                        .collect::<Result<serde_json::Map<_, _>, OdaError>>()?,
                },
            }))
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Json::Array)
}

/// UTC RFC 3339 with microseconds, e.g. `2024-05-01T12:00:00.123456Z`.
pub(crate) fn rfc3339(time: SystemTime) -> String {
    humantime::format_rfc3339_micros(time).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use oet_protocol::Value;

    #[test]
    fn sbi_json_has_the_pdm_shape() {
        let call = ActivityCall {
            activity_name: "observe".into(),
            function_args: BTreeMap::from([(
                "main".to_owned(),
                FunctionArgs {
                    args: vec![Value::Int(1)],
                    kwargs: BTreeMap::from([("x".to_owned(), Value::Float(0.5))]),
                },
            )]),
            runtime_args: BTreeMap::new(),
            executed_at: SystemTime::UNIX_EPOCH,
        };
        let sbi = NewSbi {
            interface: SBI_INTERFACE.into(),
            telescope: Some("ska_mid".into()),
            sbd_ref: "sbd-1".into(),
            sbd_version: 2,
            activities: vec![call],
        };
        let pdm = sbi.to_pdm_json().expect("finite");
        assert_eq!(
            pdm,
            json!({
                "interface": SBI_INTERFACE,
                "telescope": "ska_mid",
                "sbd_ref": "sbd-1",
                "sbd_version": 2,
                "activities": [{
                    "activity_ref": "observe",
                    "executed_at": "1970-01-01T00:00:00.000000Z",
                    "runtime_args": [],
                }],
            })
        );
        let full = sbi.to_json().expect("finite");
        assert_eq!(
            full["activities"][0]["function_args"],
            json!([{"function_name": "main", "function_args": {"args": [1], "kwargs": {"x": 0.5}}}])
        );
    }
}
