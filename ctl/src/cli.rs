//! The command line of `oetctl`: its clap definition, and the argument-vector
//! preparation that lets oetctl's own flags stand anywhere among a script's free
//! arguments, as they could with upstream's `oet` CLI.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Args, CommandFactory, Parser, Subcommand};

const EXIT_CODES: &str = "\
Exit status: 0 on success; 1 when oetd cannot be reached, refuses the request, or a \
waited-for procedure ends FAILED, STOPPED or UNKNOWN; 2 when the command line is wrong.";

/// Operate the Observation Execution Tool daemon (oetd): load observing scripts, run
/// their functions, stop them, and watch what happens.
#[derive(Debug, Parser)]
#[command(name = "oetctl", version, after_help = EXIT_CODES)]
pub struct Cli {
    /// The control socket of oetd [default: /run/oet/oetd.sock for root; otherwise your
    /// own daemon's $XDG_RUNTIME_DIR/oet/oetd.sock (/tmp/oetd-<uid>/oetd.sock without
    /// XDG_RUNTIME_DIR), or /run/oet/oetd.sock when you have no daemon of your own]
    #[arg(
        long,
        global = true,
        env = "OET_SOCKET",
        value_name = "PATH",
        display_order = 100
    )]
    pub socket: Option<PathBuf>,

    /// Print JSON for programs instead of tables (accepted anywhere on the line)
    #[arg(long, global = true, display_order = 101)]
    pub json: bool,

    /// Seconds to wait for oetd to accept the connection, and for each answer (a stop
    /// waits for the script's grace period: raise this above procedures.stop_grace_secs
    /// + procedures.kill_wait_secs if those are long)
    #[arg(
        long,
        global = true,
        env = "OET_TIMEOUT",
        value_name = "SECS",
        default_value_t = 60.0,
        value_parser = parse_timeout,
        display_order = 102
    )]
    pub timeout: f64,

    #[command(subcommand)]
    pub command: Action,
}

/// A timeout in seconds: a positive number up to a day.
fn parse_timeout(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(secs) if secs > 0.0 && secs <= 86_400.0 => Ok(secs),
        _ => Err(format!(
            "{text:?} is not a number of seconds between 0 and 86400"
        )),
    }
}

/// The top-level commands.
#[derive(Debug, Subcommand)]
pub enum Action {
    /// Create, start, stop and inspect procedures (scripts loaded into their own process)
    #[command(subcommand)]
    Procedure(ProcedureAction),
    /// Run the activities of Scheduling Blocks and inspect them
    #[command(subcommand)]
    Activity(ActivityAction),
    /// Work with the observatory data archive (ODA) oetd uses
    #[command(subcommand)]
    Oda(OdaAction),
    /// Print every event published in oetd until interrupted
    Listen(ListenArgs),
    /// Show the daemon's state
    Status,
    /// Make oetd re-read its configuration file, as SIGHUP does (needs the admin role)
    Reload,
    /// Write the man pages and shell completions into a directory (for packaging)
    #[command(hide = true)]
    Generate {
        /// Directory to write oetctl.1 (and a page per subcommand), oetctl.bash, _oetctl
        /// and oetctl.fish into
        out_dir: PathBuf,
    },
}

/// `oetctl procedure ...`
#[derive(Debug, Subcommand)]
pub enum ProcedureAction {
    /// Load a script into a new process and call its init() with the given arguments
    Create(CreateArgs),
    /// Call a function (main by default) of a READY procedure
    Start(StartArgs),
    /// Stop a procedure, optionally running the abort script afterwards
    Stop(StopArgs),
    /// List procedures: ID, script, creation time and state (--all: the whole history)
    List(ListArgs),
    /// Show a procedure's summary, state history, calls and stack trace (live or past)
    Describe(PidArgs),
    /// Show the lines a procedure's script printed, as far as they were kept
    Logs(PidArgs),
}

/// Arguments of `procedure create`.
#[derive(Debug, Args)]
#[command(after_help = "\
Free ARGS become init's positional arguments and --key=value words its keyword \
arguments; a value is parsed as JSON when it is JSON, else taken as a string. \
Words after a lone -- are all script arguments.")]
pub struct CreateArgs {
    /// The script: file:///abs/path/script.py or git://path/in/repo.py
    pub script_uri: String,

    /// Arguments for init(): positional words and --key=value keyword arguments
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "ARGS"
    )]
    pub args: Vec<String>,

    /// Repository of a git:// script (URL or local path) [default: oetd's configured one]
    #[arg(long = "git_repo", alias = "git-repo", value_name = "REPO")]
    pub git_repo: Option<String>,

    /// Branch of a git:// script [default: the repository's default branch]
    #[arg(long = "git_branch", alias = "git-branch", value_name = "BRANCH")]
    pub git_branch: Option<String>,

    /// Commit of a git:// script; wins over --git_branch
    #[arg(long = "git_commit", alias = "git-commit", value_name = "COMMIT")]
    pub git_commit: Option<String>,

    /// Run a git:// script in its own virtual environment with the project installed
    #[arg(long = "create_env", alias = "create-env")]
    pub create_env: bool,

    /// Return only once the procedure is READY (or has ended)
    #[arg(long)]
    pub wait: bool,
}

/// Arguments of `procedure start`.
#[derive(Debug, Args)]
#[command(after_help = "\
Free ARGS become the function's positional arguments and --key=value words its \
keyword arguments; a value is parsed as JSON when it is JSON, else taken as a string.")]
pub struct StartArgs {
    /// The procedure to start [default: the newest]
    #[arg(long, value_name = "ID")]
    pub pid: Option<u64>,

    /// The script function to call
    #[arg(long, default_value = "main", value_name = "NAME")]
    pub function: String,

    /// Print the procedure's events until it ends (or is READY again)
    #[arg(long)]
    pub listen: bool,

    /// Arguments for the function: positional words and --key=value keyword arguments
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "ARGS"
    )]
    pub args: Vec<String>,
}

/// Arguments of `procedure stop`.
#[derive(Debug, Args)]
pub struct StopArgs {
    /// The procedure to stop [default: the one that is RUNNING]
    #[arg(long, value_name = "ID")]
    pub pid: Option<u64>,

    /// After stopping, run the configured abort script for the same subarray
    #[arg(long = "run-abort", alias = "run_abort")]
    pub run_abort: bool,
}

/// Arguments of `procedure list`.
#[derive(Debug, Args)]
#[command(after_help = "\
Without --all: every live procedure and the newest that ended (procedures.history_size). \
With --all: every procedure the store holds, live and past. TIME is an RFC 3339 time \
(2026-11-26T21:00:00Z) or how long ago (90m, 2h, 3days).")]
pub struct ListArgs {
    /// Only these procedures, live or past (repeatable) [default: the live list]
    #[arg(long, value_name = "ID", conflicts_with = "all")]
    pub pid: Vec<u64>,

    #[command(flatten)]
    pub history: HistoryArgs,
}

/// Which records of the history to list.
#[derive(Debug, Args)]
pub struct HistoryArgs {
    /// List the whole history in the store, live and past
    #[arg(long)]
    pub all: bool,

    /// With --all: only those created at or after TIME
    #[arg(long, value_name = "TIME", requires = "all", value_parser = parse_since)]
    pub since: Option<f64>,

    /// With --all: only those in STATE (e.g. COMPLETE, FAILED)
    #[arg(long, value_name = "STATE", requires = "all")]
    pub state: Option<String>,

    /// With --all: only the newest N
    #[arg(long, value_name = "N", requires = "all")]
    pub limit: Option<usize>,
}

/// A time as seconds since the epoch: RFC 3339, or a duration meaning that long ago.
pub fn parse_since(text: &str) -> Result<f64, String> {
    let epoch = |time: std::time::SystemTime| {
        time.duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0)
    };
    if let Ok(time) = humantime::parse_rfc3339_weak(text) {
        return Ok(epoch(time));
    }
    match humantime::parse_duration(text) {
        Ok(ago) => Ok(epoch(std::time::SystemTime::now()) - ago.as_secs_f64()),
        Err(_) => Err(format!(
            "'{text}' is neither an RFC 3339 time (2026-11-26T21:00:00Z) nor a duration (2h, 3days)"
        )),
    }
}

/// A procedure to look at.
#[derive(Debug, Args)]
pub struct PidArgs {
    /// The procedure [default: the newest]
    #[arg(long, value_name = "ID")]
    pub pid: Option<u64>,
}

/// Arguments of `listen`.
#[derive(Debug, Args)]
pub struct ListenArgs {
    /// Only events whose topic starts with PREFIX (repeatable), e.g. procedure.lifecycle
    #[arg(long, value_name = "PREFIX")]
    pub topic: Vec<String>,
}

/// `oetctl activity ...`
#[derive(Debug, Subcommand)]
pub enum ActivityAction {
    /// Run an activity of an SBD from the ODA: record an SBI, prepare its script and
    /// start main when READY
    Run(ActivityRunArgs),
    /// List activities: ID, activity, SBD, SBI, procedure, creation time and state
    /// (--all: the whole history)
    List(ActivityListArgs),
    /// Show an activity's summary, arguments and state history
    Describe(AidArgs),
}

/// Arguments of `activity run`.
#[derive(Debug, Args)]
#[command(after_help = "\
--script-args is a JSON object of function name to {\"args\": [...], \"kwargs\": {...}}, \
laid over the SBD's own function arguments: kwargs are merged key by key, and args \
replace the SBD's when given. Example: --script-args '{\"main\": {\"kwargs\": {\"x\": 1}}}'")]
pub struct ActivityRunArgs {
    /// The activity, as named in the SBD's `activities`
    pub activity_name: String,

    /// The SBD's id in the ODA
    pub sbd_id: String,

    /// Function arguments laid over the SBD's, as JSON
    #[arg(long = "script-args", alias = "script_args", value_name = "JSON")]
    pub script_args: Option<String>,

    /// Prepare the script but do not start main; start it later with `procedure start`
    #[arg(long = "prepare-only", alias = "prepare_only")]
    pub prepare_only: bool,

    /// Run a git script in its own virtual environment with the project installed
    #[arg(long = "create-env", alias = "create_env")]
    pub create_env: bool,

    /// Print the activity's events until it ends (or is PREPARED, with --prepare-only)
    #[arg(long)]
    pub listen: bool,
}

/// Arguments of `activity list`.
#[derive(Debug, Args)]
#[command(after_help = "\
Without --all: live activities and those whose procedures are in the procedure list. \
With --all: every activity the store holds. TIME is an RFC 3339 time or how long ago \
(90m, 2h, 3days).")]
pub struct ActivityListArgs {
    /// Only these activities, live or past (repeatable) [default: the live list]
    #[arg(long, value_name = "ID", conflicts_with = "all")]
    pub aid: Vec<u64>,

    #[command(flatten)]
    pub history: HistoryArgs,
}

/// An activity to look at.
#[derive(Debug, Args)]
pub struct AidArgs {
    /// The activity [default: the newest]
    #[arg(long, value_name = "ID")]
    pub aid: Option<u64>,
}

/// `oetctl oda ...`
#[derive(Debug, Subcommand)]
pub enum OdaAction {
    /// Store the SBD in a JSON file in oetd's ODA; prints its sbd_id and version. An SBD
    /// the ODA has already is stored as a new version.
    #[command(name = "put-sbd")]
    PutSbd {
        /// The SBD document (JSON), or - for standard input; one without `sbd_id` is
        /// given one
        file: PathBuf,
    },
}

/// The clap command of `oetctl`, for man pages and shell completions.
pub fn command() -> clap::Command {
    Cli::command()
}

/// Whether `word` (`--name` or `--name=value`) is an option of the subcommand at `path`,
/// e.g. `["procedure", "start"]`.
pub fn is_option_of(path: &[&str], word: &str) -> bool {
    let mut root = command();
    root.build();
    let mut cmd = &root;
    for name in path {
        match cmd.find_subcommand(name) {
            Some(sub) => cmd = sub,
            None => return false,
        }
    }
    word.starts_with("--") && flag_takes_value(cmd, word).is_some()
}

/// Parses an argument vector (program name first) the way `oetctl` does.
pub fn parse<I, T>(argv: I) -> Result<Cli, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString>,
{
    let argv = prepare(argv.into_iter().map(Into::into).collect());
    Cli::try_parse_from(argv)
}

/// Makes the argument vector parseable by clap although oetctl's flags may stand among
/// (or after) a script's free arguments: `--json` moves to the front, and every other
/// flag of the chosen subcommand moves before a `--` that is inserted ahead of the free
/// words. A `--` typed by the operator ends the flags: everything after it is free.
fn prepare(argv: Vec<OsString>) -> Vec<OsString> {
    let mut words = argv.into_iter();
    let mut out: Vec<OsString> = words.next().into_iter().collect();
    let mut rest: Vec<OsString> = Vec::new();
    let mut json = false;
    // `--json` is oetctl's everywhere; a word after `--` is still the operator's.
    let mut escaped = false;
    for word in words {
        if !escaped && word == "--json" {
            json = true;
            continue;
        }
        escaped |= word == "--";
        rest.push(word);
    }
    if json {
        out.push("--json".into());
    }

    let mut root = command();
    root.build();
    let mut cmd = &root;
    let mut rest = rest.into_iter().peekable();
    // Walk down the subcommands, copying flags that precede them.
    while let Some(word) = rest.peek() {
        let Some(text) = word.to_str() else { break };
        if text == "--" {
            break;
        }
        if text.starts_with('-') {
            // A word that is none of this command's flags starts the free words.
            let Some(takes_value) = flag_takes_value(cmd, text) else {
                break;
            };
            let value_follows = takes_value && !text.contains('=');
            out.extend(rest.next());
            if value_follows {
                out.extend(rest.next());
            }
            continue;
        }
        match cmd.find_subcommand(text) {
            Some(sub) => {
                cmd = sub;
                out.extend(rest.next());
            }
            None => break,
        }
    }
    if !cmd.get_arguments().any(|arg| arg.is_trailing_var_arg_set()) {
        out.extend(rest);
        return out;
    }
    // A command with free script arguments: sort its flags from its free words.
    let mut free = Vec::new();
    while let Some(word) = rest.next() {
        if word == "--" {
            free.extend(rest.by_ref());
            break;
        }
        match word.to_str().and_then(|text| flag_takes_value(cmd, text)) {
            Some(takes_value) => {
                let has_inline_value = word.to_str().is_some_and(|t| t.contains('='));
                out.push(word);
                if takes_value && !has_inline_value {
                    out.extend(rest.next());
                }
            }
            None => free.push(word),
        }
    }
    if !free.is_empty() {
        out.push("--".into());
        out.extend(free);
    }
    out
}

/// Whether `word` is one of `cmd`'s flags (`--long`, `--long=value`, `-s`), and if so
/// whether it takes a value.
fn flag_takes_value(cmd: &clap::Command, word: &str) -> Option<bool> {
    let found = if let Some(long) = word.strip_prefix("--") {
        let name = long.split_once('=').map_or(long, |(name, _)| name);
        cmd.get_arguments().find(|arg| {
            arg.get_long() == Some(name)
                || arg
                    .get_all_aliases()
                    .is_some_and(|aliases| aliases.contains(&name))
        })
    } else {
        let mut chars = word.strip_prefix('-')?.chars();
        match (chars.next(), chars.next()) {
            (Some(short), None) => cmd
                .get_arguments()
                .find(|arg| arg.get_short() == Some(short)),
            _ => None,
        }
    }?;
    Some(found.get_action().takes_values())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_ok(line: &str) -> Cli {
        let argv = std::iter::once("oetctl").chain(line.split(' '));
        match parse(argv) {
            Ok(cli) => cli,
            Err(err) => panic!("'{line}' should parse: {err}"),
        }
    }

    fn create(line: &str) -> CreateArgs {
        match parse_ok(line).command {
            Action::Procedure(ProcedureAction::Create(args)) => args,
            other => panic!("not a create: {other:?}"),
        }
    }

    fn start(line: &str) -> StartArgs {
        match parse_ok(line).command {
            Action::Procedure(ProcedureAction::Start(args)) => args,
            other => panic!("not a start: {other:?}"),
        }
    }

    #[test]
    fn the_command_definition_is_consistent() {
        command().debug_assert();
    }

    #[test]
    fn create_flags_may_stand_among_the_script_arguments() {
        let args = create(
            "procedure create git://s.py 1 --a=2 --wait --git_repo=r --git_branch b -3 --create_env",
        );
        assert_eq!(args.script_uri, "git://s.py");
        assert_eq!(args.args, vec!["1", "--a=2", "-3"]);
        assert!(args.wait);
        assert!(args.create_env);
        assert_eq!(args.git_repo.as_deref(), Some("r"));
        assert_eq!(args.git_branch.as_deref(), Some("b"));
    }

    #[test]
    fn flags_may_come_before_the_script_uri() {
        let args = create("procedure create --wait file:///x.py --k=v");
        assert_eq!(args.script_uri, "file:///x.py");
        assert_eq!(args.args, vec!["--k=v"]);
        assert!(args.wait);
    }

    #[test]
    fn a_keyword_argument_first_does_not_hide_the_flags_after_it() {
        let args = start("procedure start --function other --x=5 --listen -1");
        assert_eq!(args.function, "other");
        assert!(args.listen);
        assert_eq!(args.args, vec!["--x=5", "-1"]);
    }

    #[test]
    fn words_after_a_double_dash_all_belong_to_the_script() {
        let args = create("procedure create file:///x.py --wait -- --wait=1 --json");
        assert!(args.wait);
        assert_eq!(args.args, vec!["--wait=1", "--json"]);
    }

    #[test]
    fn json_is_found_anywhere_on_the_line() {
        assert!(parse_ok("--json status").json);
        assert!(parse_ok("status --json").json);
        assert!(parse_ok("procedure create file:///x.py 1 --k=2 --json").json);
        let cli = parse_ok("procedure start 1 --json --k=2");
        assert!(cli.json);
        match cli.command {
            Action::Procedure(ProcedureAction::Start(args)) => {
                assert_eq!(args.args, vec!["1", "--k=2"])
            }
            other => panic!("not a start: {other:?}"),
        }
        assert!(!parse_ok("procedure list").json);
    }

    #[test]
    fn start_takes_pid_function_and_listen_anywhere() {
        let args = start("procedure start 5 --pid=3 --x=[1] --function other --listen");
        assert_eq!(args.pid, Some(3));
        assert_eq!(args.function, "other");
        assert!(args.listen);
        assert_eq!(args.args, vec!["5", "--x=[1]"]);
        let args = start("procedure start");
        assert_eq!(args.pid, None);
        assert_eq!(args.function, "main");
        assert!(args.args.is_empty());
    }

    #[test]
    fn socket_is_global() {
        assert_eq!(
            parse_ok("--socket=/a.sock status").socket,
            Some(PathBuf::from("/a.sock"))
        );
        let cli = parse_ok("procedure start 1 --socket /s.sock --k=2");
        assert_eq!(cli.socket, Some(PathBuf::from("/s.sock")));

        let cli = parse_ok("procedure list --socket /tmp/s.sock --pid 1 --pid 2");
        assert_eq!(cli.socket, Some(PathBuf::from("/tmp/s.sock")));
        match cli.command {
            Action::Procedure(ProcedureAction::List(args)) => assert_eq!(args.pid, vec![1, 2]),
            other => panic!("not a list: {other:?}"),
        }
    }

    #[test]
    fn stop_accepts_both_spellings_of_run_abort() {
        for line in [
            "procedure stop --run-abort",
            "procedure stop --run_abort --pid 2",
        ] {
            match parse_ok(line).command {
                Action::Procedure(ProcedureAction::Stop(args)) => assert!(args.run_abort),
                other => panic!("not a stop: {other:?}"),
            }
        }
    }

    #[test]
    fn activity_run_takes_its_flags_anywhere() {
        let cli = parse_ok("activity run observe sbd-1 --prepare-only --script-args {} --listen");
        match cli.command {
            Action::Activity(ActivityAction::Run(args)) => {
                assert_eq!(args.activity_name, "observe");
                assert_eq!(args.sbd_id, "sbd-1");
                assert_eq!(args.script_args.as_deref(), Some("{}"));
                assert!(args.prepare_only && args.listen && !args.create_env);
            }
            other => panic!("not an activity run: {other:?}"),
        }
        match parse_ok("activity describe --aid 4").command {
            Action::Activity(ActivityAction::Describe(args)) => assert_eq!(args.aid, Some(4)),
            other => panic!("not an activity describe: {other:?}"),
        }
        match parse_ok("oda put-sbd /tmp/sbd.json").command {
            Action::Oda(OdaAction::PutSbd { file }) => {
                assert_eq!(file, PathBuf::from("/tmp/sbd.json"))
            }
            other => panic!("not a put-sbd: {other:?}"),
        }
    }

    #[test]
    fn list_all_takes_its_filters() {
        match parse_ok("procedure list --all --since 2h --state complete --limit 5").command {
            Action::Procedure(ProcedureAction::List(args)) => {
                assert!(args.history.all);
                assert_eq!(args.history.state.as_deref(), Some("complete"));
                assert_eq!(args.history.limit, Some(5));
                let since = args.history.since.expect("since");
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .expect("now")
                    .as_secs_f64();
                assert!((now - 7200.0 - since).abs() < 60.0, "{since}");
            }
            other => panic!("not a list: {other:?}"),
        }
        match parse_ok("activity list --all --since 2026-11-26T21:00:00Z").command {
            Action::Activity(ActivityAction::List(args)) => {
                assert!(args.history.all);
                assert_eq!(args.history.since, Some(1_795_726_800.0));
            }
            other => panic!("not an activity list: {other:?}"),
        }
    }

    #[test]
    fn wrong_lines_are_refused() {
        for line in [
            "procedure list --since 2h",
            "procedure list --all --since yesterday-ish",
            "procedure list --all --pid 3",
            "activity list --limit 3",
            "procedure",
            "procedure create",
            "procedure list --pid x",
            "activity run observe",
            "oda put-sbd",
            "bogus",
        ] {
            let argv = std::iter::once("oetctl").chain(line.split(' '));
            assert!(parse(argv).is_err(), "'{line}' should be refused");
        }
    }
}
