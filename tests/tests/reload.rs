//! SIGHUP (`systemctl reload oetd`): what can change safely changes at once, the log
//! says what needs a restart, and a broken file changes nothing.

use oet_protocol::{FunctionArgs, ProcedureState};
use oet_tests::{next_final_state, wait_for_line, TestDaemon};

const LOOP: &str = "import time\n\ndef main():\n    while True:\n        time.sleep(0.05)\n";

fn edit_config(daemon: &TestDaemon, edit: impl Fn(String) -> String) {
    let text = std::fs::read_to_string(&daemon.config_path).expect("read config");
    std::fs::write(&daemon.config_path, edit(text)).expect("write config");
}

#[tokio::test]
async fn sighup_applies_new_limits_and_names_what_needs_a_restart() {
    let daemon = TestDaemon::start();
    let uri = daemon.script("loop.py", LOOP);
    let first = daemon.create_ready(&uri, FunctionArgs::default()).await;
    let second = daemon.create_ready(&uri, FunctionArgs::default()).await;
    let mut client = daemon.client().await;
    client
        .start(first.id, "main", FunctionArgs::default())
        .await
        .expect("start the first");
    client
        .start(second.id, "main", FunctionArgs::default())
        .await
        .expect_err("only one may run before the reload");

    edit_config(&daemon, |text| {
        text.replace("[procedures]\n", "[procedures]\nmax_running = 2\n")
            + "\n[server]\nmax_connections = 8\n"
    });
    daemon.signal(libc::SIGHUP);
    let applied = daemon
        .log_line("now in effect")
        .expect("the log says what was applied");
    assert!(applied.contains("procedures"), "{applied}");
    let restart = daemon
        .log_line("after a restart")
        .expect("the log says what needs a restart");
    assert!(restart.contains("server"), "{restart}");

    let mut events = daemon.events().await;
    let started = client
        .start(second.id, "main", FunctionArgs::default())
        .await
        .expect("two may run after the reload");
    assert_eq!(started.state, ProcedureState::Running);
    for id in [first.id, second.id] {
        client.stop(id, false).await.expect("stop");
    }
    next_final_state(&mut events, second.id, ProcedureState::Stopped).await;
}

#[tokio::test]
async fn a_broken_file_on_sighup_changes_nothing() {
    let daemon = TestDaemon::start();
    edit_config(&daemon, |text| {
        text + "\n[procedures]\nmax_running = \"lots\"\n"
    });
    daemon.signal(libc::SIGHUP);
    let refused = daemon
        .log_line("configuration not reloaded")
        .expect("the log says the file was refused");
    assert!(refused.contains("keeping the running one"), "{refused}");
    let status = daemon.client().await.status().await.expect("still serving");
    assert_eq!(status.pid, daemon.pid());
}

#[test]
fn keys_under_their_old_names_are_named_at_start_and_on_reload() {
    let mut daemon = TestDaemon::prepare("[git]\nenv_wait_secs = 30\n");
    let lines = daemon.launch(daemon.command(None));
    let warned =
        wait_for_line(&lines, "is deprecated").expect("the start-up log names the deprecated key");
    assert!(
        warned.contains("git.env_wait_secs") && warned.contains("python.env_wait_secs"),
        "{warned}"
    );
    wait_for_line(&lines, "oetd listening on").expect("oetd starts with the old name");

    edit_config(&daemon, |text| {
        text.replace("env_wait_secs = 30", "env_wait_secs = 60")
    });
    daemon.signal(libc::SIGHUP);
    let again = wait_for_line(&lines, "is deprecated").expect("the reload names it again");
    assert!(again.contains("git.env_wait_secs"), "{again}");
    let restart =
        wait_for_line(&lines, "after a restart").expect("the log says what needs a restart");
    assert!(restart.ends_with("oetd: python"), "{restart}");
}

#[test]
fn a_configuration_that_is_dev_zero_is_refused_and_sigterm_still_works() {
    let mut daemon = TestDaemon::prepare("");
    let lines = daemon.launch(daemon.command(None));
    wait_for_line(&lines, "oetd listening on").expect("oetd starts");
    std::fs::remove_file(&daemon.config_path).expect("rm");
    std::os::unix::fs::symlink("/dev/zero", &daemon.config_path).expect("symlink");
    daemon.signal(libc::SIGHUP);
    let refused = wait_for_line(&lines, "configuration not reloaded").expect("refused");
    assert!(
        refused.contains("not a regular file (a device)"),
        "{refused}"
    );
    daemon.signal(libc::SIGTERM);
    wait_for_line(&lines, "oetd stopped").expect("SIGTERM is handled");
    assert!(daemon.wait().success());

    // At start-up too, and for --check-config.
    let refusal = check_config_refusal(&daemon);
    assert!(refusal.contains("not a regular file"), "{refusal}");
}

/// What `oetd --check-config` says about the daemon's configuration; it must refuse it.
fn check_config_refusal(daemon: &TestDaemon) -> String {
    let out = daemon
        .command(None)
        .arg("--check-config")
        .output()
        .expect("run oetd");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{stderr}");
    stderr
}

#[test]
fn check_config_names_a_duration_out_of_range() {
    let daemon = TestDaemon::prepare("stop_grace_secs = 1e20\n");
    let refusal = check_config_refusal(&daemon);
    assert!(refusal.contains("procedures.stop_grace_secs"), "{refusal}");
}

#[tokio::test]
async fn oetctl_reload_applies_and_says_what_changed() {
    let daemon = TestDaemon::start();
    edit_config(&daemon, |text| {
        text.replace("[procedures]\n", "[procedures]\nmax_running = 2\n")
            + "\n[server]\nmax_connections = 8\n"
    });
    let out = daemon.oetctl(&["reload"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("now in effect: procedures"), "{stdout}");
    assert!(
        stdout.contains("after a restart of oetd: server"),
        "{stdout}"
    );

    edit_config(&daemon, |text| text + "\n[procedures]\nmax_running = nan\n");
    let out = daemon.oetctl(&["reload"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("configuration not reloaded"), "{stderr}");
}
