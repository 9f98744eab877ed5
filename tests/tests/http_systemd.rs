//! The shipped `oet-http.service` under a real systemd (the sandbox harness): it starts
//! with its hardening and reports ready, runs as its own dynamic user in group `oet`,
//! reads a tokens file only that group may read, reaches oetd through `oetd.socket`
//! (which starts oetd), and oetd sees its calls as the shim's own user. Reload re-reads
//! the tokens; stop is clean.

use std::os::unix::fs::chown;
use std::path::Path;
use std::time::Duration;

use oet_tests::http::oet_http_bin;
use oet_tests::systemd_sandbox::{skip_reason, Sandbox, SandboxBuilder};
use oet_tests::{oetd_bin, repo, repo_file};

const TOKEN: &str = "operate-0123456789abcdef";
const SCRIPT: &str = "/usr/share/oet-test/hello.py";
const API: &str = "http://127.0.0.1:5000/ska-oso-oet/oet/api/v7";
const WAIT: Duration = Duration::from_secs(20);

fn property(sandbox: &Sandbox, unit: &str, name: &str) -> String {
    sandbox
        .systemctl_ok(&["show", unit, "-P", name])
        .expect("systemctl show")
        .trim()
        .to_owned()
}

fn journal(sandbox: &Sandbox, unit: &str) -> String {
    sandbox
        .journalctl(&["-u", unit, "-o", "short-precise"])
        .map(|out| String::from_utf8_lossy(&out.stdout).into_owned())
        .unwrap_or_default()
}

/// `curl` inside the sandbox: the status and the body.
fn curl(sandbox: &Sandbox, args: &[&str]) -> (u16, String) {
    let out = sandbox
        .command("/usr/bin/curl")
        .args([
            "--silent",
            "--max-time",
            "20",
            "--write-out",
            "\n%{http_code}",
        ])
        .args(["--header", &format!("Authorization: Bearer {TOKEN}")])
        .args(args)
        .output()
        .expect("run curl in the sandbox");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').unwrap_or(("", &text));
    (status.trim().parse().unwrap_or(0), body.to_owned())
}

/// A field of `/proc/<pid>/status` inside the sandbox, e.g. `Uid`.
fn status_field(sandbox: &Sandbox, pid: &str, field: &str) -> String {
    let out = sandbox
        .exec("/bin/cat", &[&format!("/proc/{pid}/status")])
        .expect("read the process status");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .map(|v| v.split_whitespace().next().unwrap_or("").to_owned())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

#[test]
fn the_shim_runs_hardened_as_its_own_user_under_real_systemd() {
    let missing_curl = (!Path::new("/usr/bin/curl").exists())
        .then(|| "curl is not installed (/usr/bin/curl), to call the API inside".to_owned());
    if let Some(reason) = skip_reason().or(missing_curl) {
        assert!(std::env::var_os("CI").is_none(), "cannot run: {reason}");
        eprintln!("skipped: {reason}");
        return;
    }
    let builder = SandboxBuilder::new().expect("sandbox directory");
    let tokens_inside = "/etc/oet/oet-http.tokens";
    let builder = builder
        .copy(&oetd_bin(), "/usr/bin/oetd")
        .copy(&oet_http_bin(), "/usr/bin/oet-http")
        .file(
            "/etc/oet/oetd.toml",
            "[procedures]\npython = \"/usr/bin/python3\"\n",
            0o644,
        )
        .file(
            "/etc/oet/oet-http.toml",
            format!("[auth]\ntokens_file = \"{tokens_inside}\"\n"),
            0o644,
        )
        .file(tokens_inside, format!("{TOKEN} operate\n"), 0o640)
        .file(
            SCRIPT,
            "def init(subarray_id):\n    pass\n\ndef main():\n    pass\n",
            0o644,
        )
        .sysusers(&repo().join("systemd/sysusers.d/oet.conf"))
        .unit("oetd.service", &repo_file("systemd/oetd.service"))
        .unit("oetd.socket", &repo_file("systemd/oetd.socket"))
        .unit("oet-http.service", &repo_file("systemd/oet-http.service"));
    // The tokens file belongs to root and group oet, as an operator would install it.
    let root = builder.dir().join("root");
    let group = std::fs::read_to_string(root.join("etc/group")).expect("the staged groups");
    let oet_gid: u32 = group
        .lines()
        .find_map(|l| l.strip_prefix("oet:"))
        .and_then(|rest| rest.split(':').nth(1))
        .and_then(|gid| gid.parse().ok())
        .expect("group oet");
    chown(
        root.join(tokens_inside.trim_start_matches('/')),
        Some(0),
        Some(oet_gid),
    )
    .expect("chown the tokens file");
    let sandbox = builder.boot().expect("boot the sandbox");

    // Type=notify: start returns once the shim listens (and pulls in oetd.socket).
    sandbox
        .systemctl_ok(&["start", "oet-http.service"])
        .unwrap_or_else(|e| {
            panic!(
                "start oet-http: {e}\n{}",
                journal(&sandbox, "oet-http.service")
            )
        });
    assert_eq!(
        property(&sandbox, "oet-http.service", "ActiveState"),
        "active"
    );
    assert_eq!(property(&sandbox, "oetd.socket", "ActiveState"), "active");
    assert_eq!(
        property(&sandbox, "oetd.service", "ActiveState"),
        "inactive"
    );
    let pid = property(&sandbox, "oet-http.service", "MainPID");
    let uid = status_field(&sandbox, &pid, "Uid");
    assert_ne!(uid, "0", "the shim does not run as root");
    assert_eq!(status_field(&sandbox, &pid, "Gid"), oet_gid.to_string());
    assert_eq!(status_field(&sandbox, &pid, "NoNewPrivs"), "1");

    // The API serves through oetd.socket, which starts oetd.
    let body = format!(
        r#"{{"script": {{"script_type": "filesystem", "script_uri": "file://{SCRIPT}"}},
             "script_args": {{"init": {{"kwargs": {{"subarray_id": 1}}}}}}}}"#
    );
    let (status, created) = curl(
        &sandbox,
        &[
            "--header",
            "Content-Type: application/json",
            "--data",
            &body,
            &format!("{API}/procedures/"),
        ],
    );
    assert_eq!(
        status,
        201,
        "{created}\n{}\n{}",
        journal(&sandbox, "oet-http.service"),
        journal(&sandbox, "oetd.service")
    );
    assert!(created.contains("\"state\":\"READY\""), "{created}");
    let (status, _) = curl(&sandbox, &[&format!("{API}/procedures/1")]);
    assert_eq!(status, 200);

    // oetd sees the call as the shim's own user, in group oet, and lets it operate.
    let request = sandbox
        .wait_for_journal_entry(
            &[
                "-u",
                "oetd.service",
                "AUDIT_REQUEST=request.procedure.create",
            ],
            |_| true,
            WAIT,
        )
        .expect("oetd audits who asked");
    assert_eq!(request["PEER_UID"], uid, "{request}");
    assert_eq!(request["PEER_GID"], oet_gid.to_string(), "{request}");
    assert_eq!(request["AUDIT_DECISION"], "allowed", "{request}");

    // Reload re-reads the tokens; stop is clean.
    sandbox
        .systemctl_ok(&["reload", "oet-http.service"])
        .expect("reload");
    sandbox
        .wait_for_journal_entry(
            &["-u", "oet-http.service"],
            |e| {
                e["MESSAGE"]
                    .as_str()
                    .is_some_and(|m| m.contains("re-read the tokens file"))
            },
            WAIT,
        )
        .expect("the shim re-reads its tokens");
    sandbox
        .systemctl_ok(&["stop", "oet-http.service"])
        .expect("stop");
    assert_eq!(
        property(&sandbox, "oet-http.service", "ActiveState"),
        "inactive"
    );
    assert_eq!(property(&sandbox, "oet-http.service", "Result"), "success");
    let log = journal(&sandbox, "oet-http.service");
    assert!(log.contains("oet-http stopped"), "{log}");
}
