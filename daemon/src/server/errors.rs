//! The one place where the daemon's domain errors become wire errors: each keeps its
//! sentence, and gets the kind a client can branch on.

use oet_protocol::{ErrorKind, ProtocolError};

use crate::activity::oda::OdaError;
use crate::activity::ActivityError;
use crate::procedure::ProcedureError;

fn procedure_kind(err: &ProcedureError) -> ErrorKind {
    match err {
        ProcedureError::NotFound(_) => ErrorKind::NotFound,
        ProcedureError::NotReady { .. }
        | ProcedureError::TooManyRunning { .. }
        | ProcedureError::AlreadyFinal { .. }
        | ProcedureError::Transition { .. } => ErrorKind::InvalidState,
        ProcedureError::Script(_)
        | ProcedureError::Git(_)
        | ProcedureError::Argument(_)
        | ProcedureError::NoFunction
        | ProcedureError::NoAbortScript
        | ProcedureError::NoSubarray(_)
        | ProcedureError::ManySubarrays { .. } => ErrorKind::InvalidRequest,
        ProcedureError::NoProcess(_) | ProcedureError::Store(_) | ProcedureError::Internal(_) => {
            ErrorKind::Internal
        }
    }
}

impl From<ProcedureError> for ProtocolError {
    fn from(err: ProcedureError) -> Self {
        ProtocolError::new(procedure_kind(&err), err.to_string())
    }
}

impl From<ActivityError> for ProtocolError {
    fn from(err: ActivityError) -> Self {
        let kind = match &err {
            ActivityError::Oda(oda) => match oda {
                OdaError::NotFound { .. } => ErrorKind::NotFound,
                OdaError::InvalidId { .. } | OdaError::Malformed(_) => ErrorKind::InvalidRequest,
                OdaError::Unreachable { .. }
                | OdaError::Remote { .. }
                | OdaError::Io { .. }
                | OdaError::Config(_) => ErrorKind::Internal,
            },
            ActivityError::UnknownActivity(_) | ActivityError::NotFound(_) => ErrorKind::NotFound,
            ActivityError::Script { .. } | ActivityError::Argument { .. } => {
                ErrorKind::InvalidRequest
            }
            ActivityError::SbFile { .. } | ActivityError::Internal(_) | ActivityError::Store(_) => {
                ErrorKind::Internal
            }
            ActivityError::ProcedureRefused { cause, .. } => procedure_kind(cause),
        };
        ProtocolError::new(kind, err.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_keep_their_sentence_and_get_their_kind() {
        let err = ProtocolError::from(ProcedureError::NotFound(9));
        assert_eq!(err.kind, ErrorKind::NotFound);
        assert_eq!(err.message, "no procedure with ID 9");
        let refused = ActivityError::ProcedureRefused {
            sbi_id: "sbi-1".into(),
            cause: ProcedureError::NoFunction,
        };
        assert_eq!(ProtocolError::from(refused).kind, ErrorKind::InvalidRequest);
        let bad = ActivityError::Argument {
            function: "main".into(),
            reason: "NaN".into(),
        };
        assert_eq!(ProtocolError::from(bad).kind, ErrorKind::InvalidRequest);
    }
}
