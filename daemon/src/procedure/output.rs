//! Where the lines a script prints go besides its kept buffer: to the journal as the
//! script's own records (`SYSLOG_IDENTIFIER=oet-script`, with `PROCEDURE_ID`, `STREAM`
//! and `SCRIPT_URI`), or outside journald to oetd's stderr marked as the script's —
//! never as oetd's own records.
//!
//! Each procedure may send `procedures.journal_burst` lines per
//! `procedures.journal_interval_secs`, and all procedures together
//! `procedures.journal_burst_total`; beyond that lines are only kept (for `oetctl
//! procedure logs`) and counted, and each interval's count is told in one record of
//! oetd's ("procedure 3: 1200 lines suppressed ..."). So a script printing without end
//! costs the journal a bounded number of records, and journald's own rate limit, which
//! counts everything oetd sends, never has to drop oetd's records.

use std::io::Write;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use oet_protocol::Stream;
use tracing::{info, warn};

use super::config::Settings;
use crate::journal::Journal;

/// The identifier of script records in the journal, apart from oetd's own `oetd`.
pub const SCRIPT_IDENTIFIER: &str = "oet-script";

/// Script records waiting for journald; beyond this they are counted as suppressed.
const JOURNAL_QUEUE: usize = 1024;

/// Where script lines go: chosen at start-up, as oetd's own logging is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputTarget {
    Journal,
    Stderr,
}

/// The daemon's one way out for script lines, with the budget all procedures share.
pub struct OutputSink {
    journal: Option<Journal>,
    total: Mutex<Window>,
}

/// One rate-limit interval: when it began, what was sent and what was held back in it.
struct Window {
    start: Instant,
    sent: u64,
    suppressed: u64,
}

impl Window {
    fn new() -> Self {
        Window {
            start: Instant::now(),
            sent: 0,
            suppressed: 0,
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl OutputSink {
    pub fn new(target: OutputTarget) -> Arc<OutputSink> {
        let journal = match target {
            OutputTarget::Stderr => None,
            OutputTarget::Journal => match Journal::connect(JOURNAL_QUEUE) {
                Ok(journal) => Some(journal),
                Err(err) => {
                    warn!("script output goes to stderr: cannot reach journald: {err}");
                    None
                }
            },
        };
        Arc::new(OutputSink {
            journal,
            total: Mutex::new(Window::new()),
        })
    }

    /// Whether the shared budget allows one more line now.
    fn take_total(&self, interval: Duration, burst: u64) -> bool {
        let mut total = lock(&self.total);
        if total.start.elapsed() >= interval {
            *total = Window::new();
        }
        if total.sent < burst {
            total.sent += 1;
            true
        } else {
            false
        }
    }

    /// Sends one line as the script's record; false if it could not go.
    fn send(&self, id: &str, uri: &str, stream: Stream, line: &str) -> bool {
        match &self.journal {
            Some(journal) => journal.send(&[
                ("MESSAGE", line),
                ("PRIORITY", "6"),
                ("SYSLOG_IDENTIFIER", SCRIPT_IDENTIFIER),
                ("PROCEDURE_ID", id),
                ("STREAM", stream.as_str()),
                ("SCRIPT_URI", uri),
            ]),
            None => {
                let time = humantime::format_rfc3339_micros(SystemTime::now());
                writeln!(
                    std::io::stderr().lock(),
                    "{time} [procedure {id} {}] {line}",
                    stream.as_str()
                )
                .is_ok()
            }
        }
    }
}

/// One procedure's way out for its lines, with its own budget.
pub(super) struct ProcedureOutput {
    sink: Arc<OutputSink>,
    settings: Settings,
    id: u64,
    /// The ID as text, made once.
    id_text: String,
    script_uri: String,
    window: Mutex<Window>,
}

impl ProcedureOutput {
    pub fn new(sink: Arc<OutputSink>, settings: Settings, id: u64, script_uri: &str) -> Self {
        ProcedureOutput {
            sink,
            settings,
            id,
            id_text: id.to_string(),
            script_uri: script_uri.to_owned(),
            window: Mutex::new(Window::new()),
        }
    }

    /// Sends one line, if the budgets allow; counts it otherwise.
    pub fn line(&self, stream: Stream, line: &str) {
        let (burst, total, interval) = self
            .settings
            .get(|c| (c.journal_burst, c.journal_burst_total, c.journal_interval()));
        let mut window = lock(&self.window);
        if window.start.elapsed() >= interval {
            self.tell_suppressed(&window);
            *window = Window::new();
        }
        let sent = window.sent < burst
            && self.sink.take_total(interval, total)
            && self
                .sink
                .send(&self.id_text, &self.script_uri, stream, line);
        if sent {
            window.sent += 1;
        } else {
            window.suppressed += 1;
        }
    }

    /// Tells what the current interval suppressed; for the end of the procedure.
    pub fn finish(&self) {
        let mut window = lock(&self.window);
        self.tell_suppressed(&window);
        window.suppressed = 0;
    }

    fn tell_suppressed(&self, window: &Window) {
        if window.suppressed == 0 {
            return;
        }
        let (burst, total, interval) = self.settings.get(|c| {
            (
                c.journal_burst,
                c.journal_burst_total,
                c.journal_interval_secs,
            )
        });
        let id = self.id;
        info!(
            procedure_id = id,
            "procedure {id}: {} lines suppressed by the output rate limit (at most {burst} \
             per procedure and {total} for all in {interval} s; `oetctl procedure logs` \
             keeps the newest)",
            window.suppressed
        );
    }
}
