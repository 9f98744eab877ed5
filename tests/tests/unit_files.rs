//! The shipped systemd files are valid: `systemd-analyze verify` is silent on the units
//! (oetd's and the HTTP shim's), and `systemd-sysusers` / `systemd-tmpfiles` apply the
//! snippets to a scratch root.

use std::fs;
use std::os::unix::fs::{symlink, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lives in the repository")
        .to_path_buf()
}

fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn have(tool: &str) -> bool {
    Command::new(tool).arg("--version").output().is_ok()
}

/// A scratch root with the host's standard units (targets the units depend on), the
/// executables the units name, and our units installed in /etc/systemd/system.
fn scratch_root() -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    fs::create_dir_all(r.join("usr/bin")).unwrap();
    fs::create_dir_all(r.join("usr/lib/systemd")).unwrap();
    fs::create_dir_all(r.join("etc/systemd/system")).unwrap();
    symlink("usr/bin", r.join("bin")).unwrap();
    symlink("usr/lib", r.join("lib")).unwrap();
    let (ok, out) = run(Command::new("cp")
        .arg("-r")
        .arg("/lib/systemd/system")
        .arg(r.join("usr/lib/systemd/system")));
    assert!(ok, "copy the standard units: {out}");
    // Stand-ins for the executables the unit runs; verify checks they exist.
    for exe in ["oetd", "oet-http", "kill"] {
        fs::copy("/bin/true", r.join("usr/bin").join(exe)).unwrap();
    }
    for unit in ["oetd.service", "oetd.socket", "oet-http.service"] {
        fs::copy(
            repo().join("systemd").join(unit),
            r.join("etc/systemd/system").join(unit),
        )
        .unwrap();
    }
    root
}

#[test]
fn systemd_analyze_verify_is_clean() {
    if !have("systemd-analyze") {
        oet_tests::skip_unless_ci("systemd-analyze is not installed");
        return;
    }
    let root = scratch_root();
    let (ok, out) = run(Command::new("systemd-analyze")
        .arg("verify")
        // man pages are installed by the package, not present in the scratch root
        .arg("--man=no")
        .arg(format!("--root={}", root.path().display()))
        .args(["oetd.service", "oetd.socket", "oet-http.service"]));
    assert!(
        ok && out.trim().is_empty(),
        "systemd-analyze verify:\n{out}"
    );
}

#[test]
fn sysusers_and_tmpfiles_snippets_apply() {
    if !have("systemd-sysusers") || !have("systemd-tmpfiles") {
        oet_tests::skip_unless_ci("systemd-sysusers/systemd-tmpfiles are not installed");
        return;
    }
    let root = tempfile::tempdir().unwrap();
    fs::create_dir_all(root.path().join("etc")).unwrap();
    let (ok, out) = run(Command::new("systemd-sysusers")
        .arg(format!("--root={}", root.path().display()))
        .arg(repo().join("systemd/sysusers.d/oet.conf")));
    assert!(ok, "systemd-sysusers: {out}");
    let passwd = fs::read_to_string(root.path().join("etc/passwd")).unwrap();
    let oet = passwd
        .lines()
        .find(|l| l.starts_with("oet:"))
        .unwrap_or_else(|| panic!("no user oet in {passwd}"));
    let uid: u32 = oet.split(':').nth(2).unwrap().parse().unwrap();
    assert!(oet.ends_with(":/var/lib/oet:/usr/sbin/nologin"), "{oet}");
    let group = fs::read_to_string(root.path().join("etc/group")).unwrap();
    assert!(group.lines().any(|l| l.starts_with("oet:")), "{group}");

    let (ok, out) = run(Command::new("systemd-tmpfiles")
        .arg(format!("--root={}", root.path().display()))
        .arg("--create")
        .arg(repo().join("systemd/tmpfiles.d/oet.conf")));
    assert!(ok, "systemd-tmpfiles: {out}");
    let run_dir = fs::metadata(root.path().join("run/oet")).unwrap();
    assert!(run_dir.is_dir());
    assert_eq!(run_dir.uid(), uid, "/run/oet belongs to oet");
    assert_eq!(run_dir.mode() & 0o7777, 0o755);
}

#[test]
fn the_service_raises_the_open_file_limit_for_its_procedures() {
    // About 6 descriptors per live procedure: systemd's default of 1024 fits ~165.
    let unit = fs::read_to_string(repo().join("systemd/oetd.service")).expect("the unit");
    let limit: u64 = unit
        .lines()
        .find_map(|line| line.strip_prefix("LimitNOFILE="))
        .expect("oetd.service sets LimitNOFILE=")
        .trim()
        .parse()
        .expect("a number");
    assert!(limit >= 65536, "LimitNOFILE={limit}");
}

/// `systemd-analyze security` rates a unit's exposure from 0 (locked down) to 10. The shipped
/// services stay at 2.0 or below; the measured figure is printed so a change shows in the log.
fn exposure_at_most_2(unit: &str) {
    if !have("systemd-analyze") {
        oet_tests::skip_unless_ci("systemd-analyze is not installed");
        return;
    }
    let path = repo().join("systemd").join(unit);
    let (ok, out) = run(Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager", "--threshold=20"])
        .arg(&path));
    let overall = out
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or("no overall exposure level in the output");
    println!("{overall}");
    assert!(ok, "{unit} is exposed above 2.0:\n{out}");
}

#[test]
fn the_daemon_service_is_exposed_at_most_2() {
    exposure_at_most_2("oetd.service");
}

#[test]
fn the_http_shim_service_is_exposed_at_most_2() {
    exposure_at_most_2("oet-http.service");
}
