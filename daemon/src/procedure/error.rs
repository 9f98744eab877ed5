//! Why the procedure service refused or could not do something. Each variant is a
//! sentence an operator can act on; the control server maps them to wire errors.

use oet_protocol::value::NonFiniteFloat;
use oet_protocol::ProcedureState;

use super::script::ScriptError;
use crate::git::GitError;
use crate::store::StoreError;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ProcedureError {
    #[error("no procedure with ID {0}")]
    NotFound(u64),
    #[error(transparent)]
    Script(#[from] ScriptError),
    #[error(transparent)]
    Git(#[from] GitError),
    #[error("invalid argument: {0}")]
    Argument(#[from] NonFiniteFloat),
    #[error("no function named to start")]
    NoFunction,
    #[error("procedure {id} is {state}; only a READY procedure can be started")]
    NotReady { id: u64, state: ProcedureState },
    #[error(
        "cannot start procedure {id}: {} {} RUNNING and at most {max} may run at a time",
        running.join(", "),
        if running.len() == 1 { "is" } else { "are" }
    )]
    TooManyRunning {
        id: u64,
        /// The running procedures, e.g. `procedure 3 (file:///a.py)`.
        running: Vec<String>,
        max: usize,
    },
    #[error("procedure {id} is already {state}; there is nothing to stop")]
    AlreadyFinal { id: u64, state: ProcedureState },
    #[error("procedure {id} cannot go from {from} to {to}")]
    Transition {
        id: u64,
        from: ProcedureState,
        to: ProcedureState,
    },
    #[error("no abort script is configured (procedures.abort_script); stop without --run-abort, or configure one")]
    NoAbortScript,
    #[error("procedure {0} was given no subarray_id, so the abort script cannot be run for it")]
    NoSubarray(u64),
    #[error("procedure {id} was given more than one subarray_id ({values}), so the abort script cannot tell which to abort")]
    ManySubarrays { id: u64, values: String },
    #[error("procedure {0} has no process")]
    NoProcess(u64),
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("reading the procedure history failed inside oetd: {0}")]
    Internal(String),
}
