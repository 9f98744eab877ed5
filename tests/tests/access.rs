//! Who may do what: peers are told apart by their credentials. Anyone who can connect
//! may read; operating takes the operate role (here: a supplementary group), reloading
//! the admin role. A refusal names the role needed, and every refusal and every
//! state-changing request leaves an audit record.

use std::os::unix::fs::PermissionsExt;
use std::process::Output;

use oet_tests::users;
use oet_tests::{wait_for_line, TestDaemon};

const LOOP: &str = "import time\n\ndef main():\n    while True:\n        time.sleep(0.05)\n";

fn ok(output: &Output) -> String {
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn denied(output: &Output, role: &str) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "not refused: {stderr}");
    assert!(stderr.contains("permission denied"), "{stderr}");
    assert!(
        stderr.contains(&format!("needs the {role} role")),
        "{stderr}"
    );
}

#[test]
fn readers_read_operators_operate_and_only_admins_reload() {
    if let Some(reason) = users::skip_reason() {
        eprintln!("skipped: {reason}");
        return;
    }
    let reader = users::user("oettest-reader", "oettest", &[]);
    let operator = users::user("oettest-op", "oettest", &["oettest-ops"]);
    let mut daemon = TestDaemon::prepare(
        "\n[server]\nsocket_group = \"oettest\"\n\n[access]\noperate_groups = [\"oettest-ops\"]\n",
    );
    // The other users must reach the socket; the directory stays writable by root only.
    std::fs::set_permissions(daemon.dir.path(), std::fs::Permissions::from_mode(0o755))
        .expect("chmod");
    let lines = daemon.launch(daemon.command(None));
    wait_for_line(&lines, "oetd listening on").expect("oetd starts");
    let uri = daemon.script("loop.py", LOOP);

    ok(&reader.oetctl(&daemon, &["procedure", "list"]));
    denied(
        &reader.oetctl(&daemon, &["procedure", "create", &uri]),
        "operate",
    );
    let created = ok(&operator.oetctl(&daemon, &["--json", "procedure", "create", &uri, "--wait"]));
    let summary: serde_json::Value = serde_json::from_str(&created).expect("JSON");
    let id = summary["id"].to_string();
    denied(
        &reader.oetctl(&daemon, &["procedure", "start", "--pid", &id]),
        "operate",
    );
    ok(&operator.oetctl(&daemon, &["procedure", "start", "--pid", &id]));
    denied(
        &reader.oetctl(&daemon, &["procedure", "stop", "--pid", &id]),
        "operate",
    );
    let described = ok(&reader.oetctl(&daemon, &["procedure", "describe", "--pid", &id]));
    assert!(described.contains("RUNNING"), "{described}");
    ok(&operator.oetctl(&daemon, &["procedure", "stop", "--pid", &id]));
    denied(&operator.oetctl(&daemon, &["reload"]), "admin");
    denied(&reader.oetctl(&daemon, &["reload"]), "admin");
    let reloaded = daemon.oetctl(&["reload"]);
    assert!(
        reloaded.status.success(),
        "{}",
        String::from_utf8_lossy(&reloaded.stderr)
    );

    // The audit trail, in order: who, what, about which procedure (a create's record
    // names the procedure it made), and whether it was allowed.
    for (user, request, decision, about) in [
        (&reader, "request.procedure.create", "denied", false),
        (&operator, "request.procedure.create", "allowed", true),
        (&reader, "request.procedure.start", "denied", true),
        (&operator, "request.procedure.start", "allowed", true),
        (&reader, "request.procedure.stop", "denied", true),
        (&operator, "request.procedure.stop", "allowed", true),
        (&operator, "request.daemon.reload", "denied", false),
    ] {
        let needle = format!("audit: {request} by uid {} ", user.uid);
        let record =
            wait_for_line(&lines, &needle).unwrap_or_else(|| panic!("no audit record {needle:?}"));
        assert!(record.contains(decision), "{record}");
        assert!(record.contains("oet_audit=1"), "{record}");
        assert!(
            record.contains(&format!("peer_uid={}", user.uid)),
            "{record}"
        );
        assert_eq!(
            record.contains(&format!("procedure_id={id}")),
            about,
            "{record}"
        );
    }
}
