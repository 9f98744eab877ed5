//! What a supervisor may do to its own procedure's record, and nothing more: report a
//! state, fail, keep a line of output, publish a script event.

use std::sync::Arc;

use oet_protocol::{ProcedureState, Stream, Value};

use super::error::ProcedureError;
use super::output::ProcedureOutput;
use super::records::Records;

/// One procedure's narrow way into the records. Cheap to clone.
#[derive(Clone)]
pub(super) struct ProcedureHandle {
    id: u64,
    records: Arc<Records>,
    output: Arc<ProcedureOutput>,
}

impl ProcedureHandle {
    pub fn new(id: u64, records: Arc<Records>, output: ProcedureOutput) -> Self {
        ProcedureHandle {
            id,
            records,
            output: Arc::new(output),
        }
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    /// Reports that the procedure entered `state`; refused if the state machine does
    /// not allow it from where the procedure is.
    pub fn enter(&self, state: ProcedureState) -> Result<(), ProcedureError> {
        self.records.transition(self.id, state).map(drop)
    }

    /// Records the stack trace and ends the procedure FAILED (unless it is final).
    pub fn fail(&self, stacktrace: String) {
        self.records.fail(self.id, stacktrace);
    }

    /// Sends one line the script (or its environment's build) printed out as the
    /// script's record, within the rate limit, and keeps it.
    pub fn output(&self, stream: Stream, line: String) {
        self.output.line(stream, &line);
        self.records.append_log(self.id, stream, line);
    }

    /// Publishes a message the script sent.
    pub fn publish(&self, topic: String, payload: Value) {
        self.records.publish_script_event(self.id, topic, payload);
    }

    /// Tells what the procedure's end leaves to tell: output lines suppressed since the
    /// last notice.
    pub fn finish(&self) {
        self.output.finish();
    }
}
