//! `oetd`'s own command line, as an operator meets it: errors said once, the
//! configuration shown with the paths in effect, a reload without a file, the man page.

use std::process::{Command, Stdio};

use oet_tests::{oetd_bin, wait_for_line, TestDaemon, SYSTEMD_VARIABLES};

fn oetd(args: &[&str]) -> std::process::Output {
    let mut cmd = Command::new(oetd_bin());
    for var in SYSTEMD_VARIABLES {
        cmd.env_remove(var);
    }
    cmd.args(args).output().expect("run oetd")
}

#[test]
fn a_missing_configuration_file_is_one_line_that_says_it_once() {
    let output = oetd(&["--config", "/nonexistent/oetd.toml"]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("oetd: cannot read configuration file /nonexistent/oetd.toml"),
        "{stderr}"
    );
    assert_eq!(stderr.matches("No such file").count(), 1, "{stderr}");
}

#[test]
fn print_config_shows_the_paths_in_effect() {
    let daemon = TestDaemon::prepare("");
    let socket = daemon.socket.display().to_string();
    let config = daemon.config_path.display().to_string();
    let output = oetd(&["--socket", &socket, "--config", &config, "--print-config"]);
    assert!(output.status.success());
    let printed: toml::Table =
        toml::from_str(&String::from_utf8_lossy(&output.stdout)).expect("TOML");
    assert_eq!(printed["server"]["socket"].as_str(), Some(socket.as_str()));
    let state = daemon.dir.path().join("state").display().to_string();
    assert_eq!(printed["paths"]["state_dir"].as_str(), Some(state.as_str()));

    // Without a file, the defaults are shown as paths, never as empty strings.
    let output = oetd(&["--print-config"]);
    let printed: toml::Table =
        toml::from_str(&String::from_utf8_lossy(&output.stdout)).expect("TOML");
    for (section, key) in [("server", "socket"), ("paths", "state_dir")] {
        let value = printed[section][key].as_str().unwrap_or_default();
        assert!(value.starts_with('/'), "{section}.{key} = {value:?}");
    }
}

#[test]
fn sighup_without_a_configuration_file_says_there_is_nothing_to_reload() {
    let dir = tempfile::tempdir().expect("temp dir");
    let socket = dir.path().join("oetd.sock");
    let mut cmd = Command::new(oetd_bin());
    for var in SYSTEMD_VARIABLES {
        cmd.env_remove(var);
    }
    // No --config: the state directory comes from systemd's variable, as in a unit.
    cmd.env("STATE_DIRECTORY", dir.path().join("state"))
        .arg("--socket")
        .arg(&socket)
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    let mut daemon = TestDaemon::prepare("");
    let lines = daemon.launch(cmd);
    wait_for_line(&lines, "oetd listening on").expect("oetd starts");
    daemon.signal(libc::SIGHUP);
    let said = wait_for_line(&lines, "SIGHUP").expect("oetd logs the SIGHUP");
    assert!(said.contains("there is no file to reload"), "{said}");
    assert!(!said.contains("unchanged"), "{said}");
}

#[test]
fn the_man_page_tells_signals_files_environment_exit_status_and_examples() {
    let dir = tempfile::tempdir().expect("temp dir");
    let output = oetd(&["--generate-man", &dir.path().display().to_string()]);
    assert!(output.status.success());
    let page = std::fs::read_to_string(dir.path().join("oetd.1")).expect("oetd.1");
    for section in [
        ".SH NAME",
        ".SH SYNOPSIS",
        ".SH OPTIONS",
        ".SH SIGNALS",
        ".SH FILES",
        ".SH ENVIRONMENT",
        ".SH \"EXIT STATUS\"",
        ".SH EXAMPLES",
        ".SH \"SEE ALSO\"",
    ] {
        assert!(
            page.contains(section),
            "{section} missing from oetd.1:\n{page}"
        );
    }
    for named in [
        "SIGHUP",
        "/etc/oet/oetd.toml",
        "/var/lib/oet",
        "NOTIFY_SOCKET",
    ] {
        assert!(page.contains(named), "{named} missing from oetd.1");
    }
}
