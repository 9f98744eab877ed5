//! Where scripts may come from: with `procedures.allowed_roots`, a file:// script must
//! lie below one of them once symbolic links are resolved, or it is refused before any
//! process starts; and a file that cannot be read or compiled as Python is never
//! quoted in the stack trace that everyone may read.

use oet_protocol::{FunctionArgs, ProcedureState, ScriptSpec};
use oet_tests::{assert_failed_with, wait_for_line, TestDaemon};

const SECRET: &str = "hunter2-the-secret-password";

#[tokio::test]
async fn a_script_linked_from_outside_the_allowed_roots_is_refused_before_it_runs() {
    let mut daemon = TestDaemon::prepare("");
    let roots = daemon.dir.path().join("scripts");
    let config = std::fs::read_to_string(&daemon.config_path).expect("read");
    let config = config + &format!("allowed_roots = [{:?}]\n", roots.display());
    std::fs::write(&daemon.config_path, config).expect("write");
    let lines = daemon.launch(daemon.command(None));
    wait_for_line(&lines, "oetd listening on").expect("oetd starts");
    let secret = daemon.dir.path().join("secret.txt");
    std::fs::write(&secret, format!("password = {SECRET}\n")).expect("write");
    let link = daemon.dir.path().join("scripts").join("innocent.py");
    std::os::unix::fs::symlink(&secret, &link).expect("symlink");

    let mut client = daemon.client().await;
    let uri = format!("file://{}", link.display());
    let err = client
        .create(ScriptSpec::filesystem(&uri), FunctionArgs::default())
        .await
        .expect_err("refused")
        .to_string();
    assert!(
        err.contains("outside the directories procedures.allowed_roots allows"),
        "{err}"
    );
    assert!(!err.contains(SECRET), "{err}");
    assert!(
        client.list(vec![]).await.expect("list").is_empty(),
        "no procedure, no process"
    );

    let done = daemon
        .run_script("fine.py", "def main():\n    pass\n")
        .await;
    assert_eq!(done.state, ProcedureState::Complete);
}

#[tokio::test]
async fn a_script_that_is_not_python_fails_without_its_text_in_the_stack_trace() {
    let daemon = TestDaemon::start();
    for (name, text) in [
        ("not_python.py", format!("the password is {SECRET} !\n")),
        ("binary.py", format!("{SECRET}\0\u{1}\n")),
    ] {
        let failed = daemon.ready_script(name, &text).await;
        assert_failed_with(&failed, &["is not valid Python", "its text is not quoted"]);
        let trace = failed.stacktrace.as_deref().expect("a trace");
        assert!(!trace.contains(SECRET), "{trace}");
    }
    // What is not a file at all is refused before any process starts.
    std::fs::create_dir(daemon.dir.path().join("scripts/dir.py")).expect("mkdir");
    let uri = format!("file://{}/scripts/dir.py", daemon.dir.path().display());
    let err = daemon
        .client()
        .await
        .create(ScriptSpec::filesystem(&uri), FunctionArgs::default())
        .await
        .expect_err("refused")
        .to_string();
    assert!(err.contains("is not a file"), "{err}");
}
