//! The README's walk-throughs, run as a newcomer would: every `$ ` line of README.md,
//! exactly as written, by `sh` in the repository's top folder, with the built binaries
//! on `PATH` and `OET_SOCKET` naming a fresh oetd. Each must succeed, and the lines
//! shown after a command must match what it printed where they are not elided (`...`).

use std::path::{Path, PathBuf};
use std::process::Command;

use oet_tests::{bin_dir, TestDaemon};

fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is in the repository")
        .to_owned()
}

/// A `$ ` command of the README and the lines shown after it, up to the next blank line.
struct Step {
    command: String,
    shown: Vec<String>,
}

fn steps(readme: &str) -> Vec<Step> {
    let mut steps: Vec<Step> = Vec::new();
    let mut in_output = false;
    for line in readme.lines() {
        if let Some(command) = line.strip_prefix("$ ") {
            steps.push(Step {
                command: command.to_owned(),
                shown: Vec::new(),
            });
            in_output = true;
        } else if line.trim().is_empty() || line.starts_with("```") {
            in_output = false;
        } else if in_output {
            if let Some(step) = steps.last_mut() {
                step.shown.push(line.to_owned());
            }
        }
    }
    steps
}

/// Whether `shown` (a README line, where `...` stands for anything) matches a line of
/// `printed`, whatever the widths of the columns.
fn shows(printed: &str, shown: &str) -> bool {
    let squeeze = |text: &str| text.split_whitespace().collect::<Vec<_>>().join(" ");
    let parts: Vec<String> = shown.split("...").map(squeeze).collect();
    printed.lines().any(|line| {
        let line = squeeze(line);
        let mut rest = line.as_str();
        parts.iter().all(|part| match rest.find(part.as_str()) {
            Some(at) => {
                rest = &rest[at + part.len()..];
                true
            }
            None => false,
        })
    })
}

#[test]
fn every_command_of_the_readme_walk_throughs_works_as_written() {
    let daemon = TestDaemon::start();
    let readme = std::fs::read_to_string(repository().join("README.md")).expect("README.md");
    let steps = steps(&readme);
    assert!(
        steps.len() >= 8,
        "the README's walk-throughs have gone missing: {} commands",
        steps.len()
    );
    let path = format!(
        "{}:{}",
        bin_dir().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    for step in steps {
        let output = Command::new("sh")
            .arg("-c")
            .arg(&step.command)
            .current_dir(repository())
            .env("PATH", &path)
            .env("OET_SOCKET", &daemon.socket)
            .output()
            .expect("run sh");
        let printed = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "README command failed ({}): $ {}\nstdout:\n{printed}\nstderr:\n{}",
            output.status,
            step.command,
            String::from_utf8_lossy(&output.stderr)
        );
        // Lines with values that depend on the machine or the moment are illustrative.
        for shown in step
            .shown
            .iter()
            .filter(|line| !line.contains("/home/") && !line.contains("2026-"))
        {
            assert!(
                shows(&printed, shown),
                "$ {}\nshows in the README:\n{shown}\nbut printed:\n{printed}",
                step.command
            );
        }
    }
}

#[test]
fn shown_lines_match_with_elisions() {
    assert!(shows(
        "12:00 procedure.lifecycle.statechange  oetd  {\"new_state\":\"RUNNING\",\"x\":1}",
        "... procedure.lifecycle.statechange  oetd  {\"new_state\":\"RUNNING\",...}"
    ));
    assert!(!shows("a b", "... c ..."));
}
