//! Property-based testing of the whole HTTP API with schemathesis (from PyPI; the test
//! command installs it beside pypubsub): requests generated from the shim's own OpenAPI
//! document, valid and invalid, against the real `oet-http` and a real `oetd`. No answer
//! may be a 5xx, every answer must match the document (status, content type, headers,
//! schema), invalid input must be refused, and without a token nothing but the documented
//! open endpoints may answer. `/stream` never ends, so it is left to its own tests.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::Command;

use oet_tests::http::TestShim;
use oet_tests::TestDaemon;

const TOKEN: &str = "operate-0123456789abcdef";

/// Generated cases per operation and phase: enough to find what a handler gets wrong,
/// few enough for a CI run of a minute or so.
const MAX_EXAMPLES: &str = "50";

/// schemathesis: `OET_TEST_SCHEMATHESIS`, else beside the test interpreter (the test
/// command's virtualenv), else on PATH.
fn schemathesis() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("OET_TEST_SCHEMATHESIS") {
        return Some(PathBuf::from(path));
    }
    let beside_python = std::env::var_os("OET_TEST_PYTHON")
        .map(PathBuf::from)
        .and_then(|python| python.parent().map(|dir| dir.join("schemathesis")))
        .filter(|path| path.exists());
    beside_python.or_else(|| {
        Command::new("schemathesis")
            .arg("--version")
            .output()
            .ok()
            .filter(|out| out.status.success())
            .map(|_| PathBuf::from("schemathesis"))
    })
}

#[test]
fn schemathesis_finds_no_server_error_and_no_answer_off_the_document() {
    let Some(schemathesis) = schemathesis() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "schemathesis is not installed (./scripts/test installs it into target/pyenv)"
        );
        eprintln!("skipped: schemathesis is not installed (./scripts/test installs it)");
        return;
    };
    // Git scripts are refused at once, so that generated repositories are never fetched.
    let daemon = TestDaemon::start_with("\n[git]\nallowed_repos = [\"/nonexistent/repository\"]\n");
    let dir = tempfile::tempdir().expect("temp dir");
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, format!("{TOKEN} operate\n")).expect("tokens");
    std::fs::set_permissions(&tokens, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let shim = TestShim::start_with(
        &daemon.socket,
        &format!("[auth]\ntokens_file = {tokens:?}\n[oetd]\nready_wait_secs = 10.0\n"),
    );
    let out = Command::new(&schemathesis)
        .current_dir(dir.path())
        .env("NO_COLOR", "1")
        .args(["run", &shim.url("/openapi.json")])
        .args(["--header", &format!("Authorization: Bearer {TOKEN}")])
        .args(["--checks", "all"])
        // A valid request may still be refused by the state of things (starting a
        // procedure that is not READY, an SBD that is not in the ODA): that is no fault.
        .args(["--exclude-checks", "positive_data_acceptance"])
        .args(["--exclude-path-regex", "/stream$"])
        .args(["--max-examples", MAX_EXAMPLES])
        .args(["--request-timeout", "60"])
        .args(["--generation-database", "none"])
        .arg("--no-color")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", schemathesis.display()));
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "schemathesis found problems:\n{report}"
    );
    assert!(report.contains("Operations:"), "{report}");
    assert!(!report.contains(" 0 generated"), "{report}");
    eprintln!("{report}");
}
