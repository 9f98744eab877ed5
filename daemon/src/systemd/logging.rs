//! Where log records go: journald with structured fields when systemd connected stderr to
//! the journal, plain text on stderr otherwise; the level can change at run time (SIGHUP).
//!
//! Field convention: lowercase tracing fields (`procedure_id`, `script_uri`, `state`,
//! `activity_id`, `sbd_id`, `sbi_id`) reach the journal upper-cased and unprefixed
//! (`PROCEDURE_ID=3`), so `journalctl -u oetd PROCEDURE_ID=3` finds them. (What scripts
//! print is not logged here: `procedure::output` sends it as the scripts' own records.) Record
//! each field once per record (on the event or on one enclosing span, not both: journald
//! would keep both values), and record strings as values or with `%`, not `?`, which would
//! add quotes.

use std::io::IsTerminal;
use std::os::fd::AsRawFd;
use std::str::FromStr;

use tracing_journald::{Priority, PriorityMappings};
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Registry};

use super::error::Error;

/// Where the records go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogTarget {
    /// journald's native protocol, with structured fields.
    Journald,
    /// Human-readable text on stderr.
    Stderr,
}

/// Handle on the installed logging, for changing the level while running.
#[derive(Debug)]
pub struct LogControl {
    filter: reload::Handle<EnvFilter, Registry>,
    target: LogTarget,
    fallback: Option<String>,
}

impl LogControl {
    /// Changes the level, e.g. on SIGHUP; the same syntax as [`init_logging`].
    pub fn set_level(&self, level: &str) -> Result<(), Error> {
        let filter = parse_level(level)?;
        self.filter
            .reload(filter)
            .map_err(|e| Error::Reload(e.to_string()))
    }

    /// Where the records go.
    pub fn target(&self) -> LogTarget {
        self.target
    }

    /// Why journald was wanted (`JOURNAL_STREAM`) but stderr is used instead, if so; worth
    /// one warning once logging is up.
    pub fn journald_fallback(&self) -> Option<&str> {
        self.fallback.as_deref()
    }
}

/// Installs the global subscriber. `level` is a level (`error`, `warn`, `info`, `debug`,
/// `trace`) or a comma-separated list of `level` and `module=level` directives such as
/// `info,oetd::procedure=debug`.
pub fn init_logging(level: &str) -> Result<LogControl, Error> {
    let filter = parse_level(level)?;
    let (filter, handle) = reload::Layer::new(filter);
    let registry = tracing_subscriber::registry().with(filter);

    // Only systemd's own convention decides: JOURNAL_STREAM naming our stderr.
    let journald = if stderr_is_journal() {
        match journald_layer() {
            Ok(layer) => Some(layer),
            Err(e) => {
                let fallback = format!("JOURNAL_STREAM is set but journald is unreachable: {e}");
                registry
                    .with(stderr_layer())
                    .try_init()
                    .map_err(|_| Error::LoggingAlreadySet)?;
                return Ok(LogControl {
                    filter: handle,
                    target: LogTarget::Stderr,
                    fallback: Some(fallback),
                });
            }
        }
    } else {
        None
    };
    let target = match journald {
        Some(layer) => { registry.with(layer).try_init() }.map(|()| LogTarget::Journald),
        None => registry
            .with(stderr_layer())
            .try_init()
            .map(|()| LogTarget::Stderr),
    }
    .map_err(|_| Error::LoggingAlreadySet)?;
    Ok(LogControl {
        filter: handle,
        target,
        fallback: None,
    })
}

fn journald_layer() -> std::io::Result<tracing_journald::Layer> {
    Ok(tracing_journald::layer()?
        .with_field_prefix(None)
        .with_syslog_identifier("oetd".to_owned())
        .with_priority_mappings(PriorityMappings {
            info: Priority::Informational,
            debug: Priority::Debug,
            ..PriorityMappings::new()
        }))
}

fn stderr_layer<S>() -> impl tracing_subscriber::Layer<S>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    tracing_subscriber::fmt::layer()
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
}

/// systemd sets `JOURNAL_STREAM=<dev>:<inode>` of the stream it connected to stdout/stderr;
/// it only counts when stderr is still that stream (not redirected by a wrapper).
fn stderr_is_journal() -> bool {
    let Some(value) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = value.to_str().and_then(|v| v.split_once(':')) else {
        return false;
    };
    let (Ok(dev), Ok(ino)) = (dev.parse::<u64>(), ino.parse::<u64>()) else {
        return false;
    };
    match nix::sys::stat::fstat(std::io::stderr().as_raw_fd()) {
        Ok(stat) => stat.st_dev == dev && stat.st_ino == ino,
        Err(_) => false,
    }
}

/// `EnvFilter` takes a bare word as a module name, so "verbose" would silently mean
/// "everything from module verbose"; insist that every directive ends in a level.
fn parse_level(level: &str) -> Result<EnvFilter, Error> {
    let invalid = |reason: String| Error::LogLevel {
        level: level.to_owned(),
        reason,
    };
    if level.trim().is_empty() {
        return Err(invalid("it is empty".to_owned()));
    }
    for directive in level.split(',').map(str::trim) {
        let wanted = directive.rsplit_once('=').map_or(directive, |(_, l)| l);
        Some(wanted)
            .filter(|w| !w.is_empty())
            .and_then(|w| LevelFilter::from_str(w).ok())
            .ok_or_else(|| invalid(format!("{wanted:?} in {directive:?} is not a level")))?;
    }
    EnvFilter::builder()
        .parse(level)
        .map_err(|e| invalid(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::systemd::child;
    use std::collections::HashMap;
    use std::os::unix::net::UnixDatagram;
    use std::time::Duration;

    #[test]
    fn levels_and_directives_parse_and_nonsense_is_refused() {
        for good in ["info", "debug", "warn,oetd::procedure=trace", "off"] {
            parse_level(good).unwrap_or_else(|e| panic!("{good}: {e}"));
        }
        for bad in ["", "verbose", "info,oetd=loud", "oetd="] {
            let err = parse_level(bad).unwrap_err().to_string();
            assert!(err.contains("is not valid"), "{bad}: {err}");
        }
    }

    /// One record of journald's native protocol, field name → values.
    type Record = HashMap<String, Vec<String>>;

    /// Parses a datagram: `NAME=value\n` or `NAME\n<u64 LE length><bytes>\n` per field.
    fn parse_native(mut data: &[u8]) -> Record {
        let mut record = Record::new();
        while !data.is_empty() {
            let nl = data.iter().position(|&b| b == b'\n').expect("field ends");
            let head = &data[..nl];
            let (name, value, rest) = match head.iter().position(|&b| b == b'=') {
                Some(eq) => (&head[..eq], &head[eq + 1..], &data[nl + 1..]),
                None => {
                    let body = &data[nl + 1..];
                    let len = u64::from_le_bytes(body[..8].try_into().unwrap()) as usize;
                    assert_eq!(body[8 + len], b'\n', "binary field ends in a newline");
                    (head, &body[8..8 + len], &body[9 + len..])
                }
            };
            record
                .entry(String::from_utf8_lossy(name).into_owned())
                .or_default()
                .push(String::from_utf8_lossy(value).into_owned());
            data = rest;
        }
        record
    }

    fn field<'r>(record: &'r Record, name: &str) -> Option<&'r str> {
        match record.get(name).map(Vec::as_slice) {
            Some([one]) => Some(one),
            Some(many) => panic!("{name} has {} values: {many:?}", many.len()),
            None => None,
        }
    }

    /// tracing-journald always writes to /run/systemd/journal/socket, so the child runs in
    /// a private mount namespace where /run is the test's directory and that path is a
    /// datagram socket the test reads. `JOURNAL_STREAM` is set to stderr's device:inode the
    /// way systemd does, so the detection is exercised too.
    #[test]
    fn journald_records_carry_the_structured_fields() {
        if let Some(reason) = oet_tests::journal_capture::skip_reason() {
            oet_tests::skip_unless_ci(&reason);
            return;
        }
        let run = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(run.path().join("systemd/journal")).unwrap();
        let journal = UnixDatagram::bind(run.path().join("systemd/journal/socket")).unwrap();
        journal
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();

        let mut cmd = child::command_under(
            &["unshare", "--mount", "--propagation", "private"],
            "mount --bind \"$RUN\" /run && \
             export JOURNAL_STREAM=$(stat -L -c %d:%i /proc/self/fd/2) &&",
            "systemd::logging::tests::journald_child",
        );
        cmd.env("RUN", run.path());
        child::run(cmd);

        let mut records = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = journal.recv(&mut buf).expect("a record from the child");
            if n == 0 {
                continue; // tracing-journald's connectivity probe
            }
            let record = parse_native(&buf[..n]);
            let done = field(&record, "MESSAGE") == Some("last record");
            records.push(record);
            if done {
                break;
            }
        }
        let by_message = |m: &str| {
            records
                .iter()
                .find(|r| field(r, "MESSAGE") == Some(m))
                .unwrap_or_else(|| panic!("no record {m:?} in {records:#?}"))
        };

        let state = by_message("procedure state changed");
        assert_eq!(field(state, "PROCEDURE_ID"), Some("3"));
        assert_eq!(
            field(state, "SCRIPT_URI"),
            Some("file:///scripts/observe.py")
        );
        assert_eq!(field(state, "STATE"), Some("RUNNING"));
        assert_eq!(field(state, "PRIORITY"), Some("6"));
        assert_eq!(field(state, "SYSLOG_IDENTIFIER"), Some("oetd"));

        let activity = by_message("activity started");
        assert_eq!(field(activity, "ACTIVITY_ID"), Some("7"));
        assert_eq!(field(activity, "SBD_ID"), Some("sbd-mvp01-20200325-00001"));
        assert_eq!(field(activity, "SBI_ID"), Some("sbi-mvp01-20220923-00001"));

        let warning = by_message("multi\nline");
        assert_eq!(field(warning, "PRIORITY"), Some("4"));

        assert!(records
            .iter()
            .all(|r| field(r, "MESSAGE") != Some("debug before reload")));
        by_message("debug after reload");
    }

    #[test]
    #[ignore = "runs in a child process started by journald_records_carry_the_structured_fields"]
    fn journald_child() {
        if !child::is_child() {
            return;
        }
        let control = init_logging("info").unwrap();
        assert_eq!(control.target(), LogTarget::Journald);
        assert_eq!(control.journald_fallback(), None);

        tracing::info!(
            procedure_id = 3,
            script_uri = "file:///scripts/observe.py",
            state = "RUNNING",
            "procedure state changed"
        );
        {
            let _span = tracing::info_span!(
                "activity",
                activity_id = 7,
                sbd_id = "sbd-mvp01-20200325-00001",
                sbi_id = "sbi-mvp01-20220923-00001"
            )
            .entered();
            tracing::info!("activity started");
        }
        tracing::warn!("multi\nline");
        tracing::debug!("debug before reload");
        assert!(control.set_level("verbose").is_err());
        control.set_level("debug").unwrap();
        tracing::debug!("debug after reload");
        tracing::info!("last record");
    }

    #[test]
    fn without_journal_stream_logs_go_to_stderr() {
        let out = child::run(child::command("", "systemd::logging::tests::stderr_child"));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("plain text") && stderr.contains("procedure_id=5"),
            "{stderr}"
        );
    }

    #[test]
    #[ignore = "runs in a child process started by without_journal_stream_logs_go_to_stderr"]
    fn stderr_child() {
        if !child::is_child() {
            return;
        }
        let control = init_logging("info").unwrap();
        assert_eq!(control.target(), LogTarget::Stderr);
        tracing::info!(procedure_id = 5, "plain text");
        assert!(matches!(
            init_logging("info"),
            Err(Error::LoggingAlreadySet)
        ));
    }
}
