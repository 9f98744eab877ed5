//! What a supervisor may do to its own procedure's record, and nothing more: report a
//! state, fail, keep a line of output, publish a script event.

use std::sync::Arc;

use oet_protocol::{GitCheckout, ProcedureState, Stream, Value};

use super::error::ProcedureError;
use super::records::Records;

/// One procedure's narrow way into the records. Cheap to clone.
#[derive(Clone)]
pub(super) struct ProcedureHandle {
    id: u64,
    records: Arc<Records>,
}

impl ProcedureHandle {
    pub fn new(id: u64, records: Arc<Records>) -> Self {
        ProcedureHandle { id, records }
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

    /// Records where the procedure's git script was checked out from.
    pub fn checked_out(&self, checkout: GitCheckout) {
        self.records.set_checkout(self.id, checkout);
    }

    /// Records the procedure's worker process, so that a restart of oetd can find what
    /// the procedure left running.
    pub fn worker_started(&self, pid: u32) {
        self.records.worker_started(self.id, pid);
    }

    /// Keeps one line the script (or its environment's build) printed.
    pub fn output(&self, stream: Stream, line: String) {
        self.records.append_log(self.id, stream, line);
    }

    /// Publishes a message the script sent.
    pub fn publish(&self, topic: String, payload: Value) {
        self.records.publish_script_event(self.id, topic, payload);
    }
}
