//! What a supervisor may do to its own procedure's record, and nothing more: report a
//! state, fail, keep a line of output, publish a script event, record measurements.
//!
//! Script events on topics only oetd publishes (`procedure.lifecycle.*`,
//! `activity.lifecycle.*`, `request.*`) are dropped here, noticed once and counted;
//! the `msg_src` a script puts in its payload goes too, as oetd stamps the source.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use oet_protocol::{GitCheckout, ProcedureState, ResourceUsage, Stream, Value};
use tracing::{info, warn};

use super::error::ProcedureError;
use super::output::ProcedureOutput;
use super::records::{Records, UsageProbe};
use crate::events::is_reserved_topic;

/// One procedure's narrow way into the records. Cheap to clone.
#[derive(Clone)]
pub(super) struct ProcedureHandle {
    id: u64,
    records: Arc<Records>,
    output: Arc<ProcedureOutput>,
    /// Script events dropped for their reserved topic.
    reserved: Arc<AtomicU64>,
}

impl ProcedureHandle {
    pub fn new(id: u64, records: Arc<Records>, output: ProcedureOutput) -> Self {
        ProcedureHandle {
            id,
            records,
            output: Arc::new(output),
            reserved: Arc::default(),
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

    /// Records where the procedure's git script was checked out from.
    pub fn checked_out(&self, checkout: GitCheckout) {
        self.records.set_checkout(self.id, checkout);
    }

    /// Records the procedure's worker process, so that a restart of oetd can find what
    /// the procedure left running.
    pub fn worker_started(&self, pid: u32) {
        self.records.worker_started(self.id, pid);
    }

    /// Sends one line the script (or its environment's build) printed out as the
    /// script's record, within the rate limit, and keeps it.
    pub fn output(&self, stream: Stream, line: String) {
        self.output.line(stream, &line);
        self.records.append_log(self.id, stream, line);
    }

    /// Publishes a message the script sent, unless its topic is oetd's alone.
    pub fn publish(&self, topic: String, mut payload: Value) {
        if is_reserved_topic(&topic) {
            if self.reserved.fetch_add(1, Ordering::Relaxed) == 0 {
                let id = self.id;
                warn!(
                    procedure_id = id,
                    "procedure {id} published an event on the reserved topic {topic}, which \
                     only oetd publishes; it is dropped, as are any more (counted when the \
                     procedure ends)"
                );
            }
            return;
        }
        if let Value::Map(fields) = &mut payload {
            fields.remove("msg_src");
        }
        self.records.publish_script_event(self.id, topic, payload);
    }

    /// Reads the procedure's measurements through `probe` while it runs.
    pub fn watch_usage(&self, probe: UsageProbe) {
        self.records.watch_usage(self.id, probe);
    }

    /// Records the procedure's final measurements.
    pub fn measured(&self, usage: ResourceUsage) {
        self.records.set_resources(self.id, usage);
    }

    /// Tells what the procedure's end leaves to tell: output lines suppressed since the
    /// last notice, and events dropped for their topic.
    pub fn finish(&self) {
        self.output.finish();
        let dropped = self.reserved.swap(0, Ordering::Relaxed);
        if dropped > 0 {
            let id = self.id;
            info!(
                procedure_id = id,
                "procedure {id}: {dropped} events on reserved topics were dropped"
            );
        }
    }
}
