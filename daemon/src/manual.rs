//! The oetd(1) man page: what clap knows of the flags, and the sections a daemon's page
//! needs besides (signals, files, environment, exit status, an example), as systemd's
//! pages have them.

use std::io::Write;
use std::path::Path;

use clap_mangen::roff::{bold, roman, Roff};
use clap_mangen::Man;

/// `(title, [(term, text)])`: each section a list of tagged paragraphs.
const SECTIONS: &[(&str, &[(&str, &str)])] = &[
    (
        "SIGNALS",
        &[
            (
                "SIGTERM, SIGINT",
                "Stop accepting connections, stop every script that is not final (SIGTERM to \
                 it, then SIGKILL of all it started after procedures.stop_grace_secs), record \
                 their final states, tell listeners, remove the socket oetd created, and exit 0.",
            ),
            (
                "SIGHUP",
                "Re-read the configuration file given with --config. log.level, [procedures] \
                 and git.allowed_repos take effect at once; the log names every other changed \
                 key as needing a restart. A file that no longer parses changes nothing. \
                 Without --config there is nothing to re-read, and the log says so.",
            ),
        ],
    ),
    (
        "FILES",
        &[
            (
                "/etc/oet/oetd.toml",
                "The configuration the packaged service reads (--config). Every key is \
                 optional; the installed file documents each one with its default.",
            ),
            (
                "/run/oet/oetd.sock",
                "The control socket of the system service (oetd.socket), and of oetd run by \
                 root. An ordinary user's oetd uses $XDG_RUNTIME_DIR/oet/oetd.sock, or \
                 /tmp/oetd-UID/oetd.sock without XDG_RUNTIME_DIR.",
            ),
            (
                "/var/lib/oet",
                "The state directory of the system service and of root (paths.state_dir): the \
                 worker harness, the ODA of the filesystem backend (oda/), the SBD files of \
                 running activities (activities/), Python environments (envs/), and the git \
                 checkouts when no cache directory is given. An ordinary user's oetd uses \
                 $XDG_STATE_HOME/oet, or ~/.local/state/oet.",
            ),
            (
                "/var/cache/oet",
                "The git checkouts of the system service (CacheDirectory=).",
            ),
        ],
    ),
    (
        "ENVIRONMENT",
        &[
            (
                "RUNTIME_DIRECTORY, STATE_DIRECTORY, CACHE_DIRECTORY",
                "Set by systemd: where the socket, the state and the git cache go.",
            ),
            (
                "NOTIFY_SOCKET, WATCHDOG_USEC, WATCHDOG_PID",
                "Set by systemd: oetd reports READY=1, STATUS=, STOPPING=1 and watchdog pings.",
            ),
            (
                "LISTEN_FDS, LISTEN_PID",
                "Set by systemd for socket activation: oetd serves the socket passed as fd 3.",
            ),
            (
                "JOURNAL_STREAM",
                "Set by systemd when stderr is the journal: oetd then logs to journald with \
                 structured fields (PROCEDURE_ID, ACTIVITY_ID, ...), else plain text to stderr.",
            ),
            (
                "XDG_RUNTIME_DIR, XDG_STATE_HOME, HOME",
                "Where an ordinary user's oetd puts its socket and state by default.",
            ),
        ],
    ),
    (
        "EXIT STATUS",
        &[
            (
                "0",
                "oetd stopped on SIGTERM or SIGINT after recording the final states; or \
                 --check-config found the configuration valid.",
            ),
            (
                "1",
                "oetd could not start: an invalid or unreadable configuration (the message \
                 names the key and line), a socket another oetd serves, a directory it \
                 cannot use. The one-line reason is on stderr.",
            ),
            ("2", "The command line is wrong."),
        ],
    ),
    (
        "EXAMPLES",
        &[
            (
                "oetd",
                "Run as an ordinary user on the embedded defaults; the first log line names \
                 the socket. Then: oetctl status.",
            ),
            (
                "oetd --config /etc/oet/oetd.toml --check-config",
                "Check a configuration before reloading or restarting the service with it.",
            ),
            (
                "systemctl reload oetd; journalctl -u oetd PROCEDURE_ID=3",
                "Apply a changed configuration to the running service; read procedure 3's \
                 whole story, its script's output included.",
            ),
        ],
    ),
    (
        "SEE ALSO",
        &[(
            "oetctl(1), systemctl(1), journalctl(1), systemd.exec(5)",
            "oetctl drives oetd: it creates, starts, stops and describes procedures and \
             activities, and listens to events.",
        )],
    ),
];

/// Writes `oetd.1` for `cmd` into `dir`.
pub fn write(cmd: clap::Command, dir: &Path) -> std::io::Result<()> {
    let man = Man::new(cmd);
    let mut page: Vec<u8> = Vec::new();
    man.render_title(&mut page)?;
    man.render_name_section(&mut page)?;
    man.render_synopsis_section(&mut page)?;
    man.render_description_section(&mut page)?;
    man.render_options_section(&mut page)?;
    let mut roff = Roff::new();
    for (title, entries) in SECTIONS {
        roff.control("SH", [*title]);
        for (term, text) in *entries {
            roff.control("TP", []);
            roff.text([bold(*term)]);
            roff.text([roman(*text)]);
        }
    }
    roff.to_writer(&mut page)?;
    man.render_version_section(&mut page)?;
    std::fs::File::create(dir.join("oetd.1"))?.write_all(&page)
}
