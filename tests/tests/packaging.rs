//! The Debian package builds from the workspace's binaries and holds what an operator
//! installs: the three binaries, the units, sysusers/tmpfiles snippets, the configurations
//! as conffiles, man pages, completions, and maintainer scripts that are valid shell.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lives in the repository")
        .to_path_buf()
}

fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn have(tool: &str) -> bool {
    Command::new(tool).arg("--version").output().is_ok()
}

/// Builds the package into `out` from the debug binaries the test run already built (a
/// release build is the script's default) and returns its path.
fn build_deb(out: &Path) -> PathBuf {
    let built = run(Command::new(repo().join("packaging/build-deb.sh"))
        .arg("--bin-dir")
        .arg(oet_tests::bin_dir())
        .arg("--out")
        .arg(out));
    let deb = PathBuf::from(built.trim());
    assert!(deb.starts_with(out) && deb.exists(), "{built}");
    deb
}

#[test]
fn the_debian_package_holds_what_an_operator_installs() {
    if !have("dpkg-deb") {
        oet_tests::skip_unless_ci("dpkg-deb is not installed");
        return;
    }
    let out = tempfile::tempdir().unwrap();
    let deb = build_deb(out.path());

    let listing = run(Command::new("dpkg").arg("-c").arg(&deb));
    let files: Vec<&str> = listing
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .collect();
    let expected = vec![
        "./usr/bin/oetd",
        "./usr/bin/oetctl",
        "./usr/bin/oet-http",
        "./lib/systemd/system/oetd.service",
        "./lib/systemd/system/oetd.socket",
        "./lib/systemd/system/oet-http.service",
        "./usr/lib/sysusers.d/oet.conf",
        "./usr/lib/tmpfiles.d/oet.conf",
        "./etc/oet/oetd.toml",
        "./etc/oet/oet-http.toml",
        "./usr/share/man/man1/oetd.1.gz",
        "./usr/share/man/man1/oetctl.1.gz",
        "./usr/share/man/man1/oet-http.1.gz",
        "./usr/share/bash-completion/completions/oetctl",
        "./usr/share/zsh/vendor-completions/_oetctl",
        "./usr/share/fish/vendor_completions.d/oetctl.fish",
    ];
    for path in expected {
        assert!(
            files.contains(&path),
            "{path} missing from the package:\n{listing}"
        );
    }

    let field = |name: &str| run(Command::new("dpkg-deb").args(["-f"]).arg(&deb).arg(name));
    assert_eq!(field("Package").trim(), "oet");
    assert!(field("Depends").contains("python3"));

    let unpacked = tempfile::tempdir().unwrap();
    run(Command::new("dpkg-deb")
        .arg("-R")
        .arg(&deb)
        .arg(unpacked.path()));
    let u = unpacked.path();
    assert_eq!(
        fs::read_to_string(u.join("DEBIAN/conffiles"))
            .unwrap()
            .trim(),
        "/etc/oet/oetd.toml\n/etc/oet/oet-http.toml"
    );
    for (shipped, source) in [
        ("lib/systemd/system/oetd.service", "systemd/oetd.service"),
        ("lib/systemd/system/oetd.socket", "systemd/oetd.socket"),
        (
            "lib/systemd/system/oet-http.service",
            "systemd/oet-http.service",
        ),
        ("etc/oet/oet-http.toml", "config/oet-http.toml"),
        ("usr/lib/sysusers.d/oet.conf", "systemd/sysusers.d/oet.conf"),
        ("usr/lib/tmpfiles.d/oet.conf", "systemd/tmpfiles.d/oet.conf"),
    ] {
        assert_eq!(
            fs::read(u.join(shipped)).unwrap(),
            fs::read(repo().join(source)).unwrap(),
            "{shipped} differs from {source}"
        );
    }
    for script in ["postinst", "prerm", "postrm"] {
        run(Command::new("sh")
            .arg("-n")
            .arg(u.join("DEBIAN").join(script)));
    }
    let postinst = fs::read_to_string(u.join("DEBIAN/postinst")).unwrap();
    for step in ["systemd-sysusers", "systemd-tmpfiles", "enable oetd.socket"] {
        assert!(postinst.contains(step), "postinst lacks {step}");
    }
    // The shipped configurations are ones oetd and oet-http accept.
    run(Command::new(u.join("usr/bin/oetd"))
        .arg("--check-config")
        .arg("--config")
        .arg(u.join("etc/oet/oetd.toml")));
    run(Command::new(u.join("usr/bin/oet-http"))
        .arg("--check-config")
        .arg("--config")
        .arg(u.join("etc/oet/oet-http.toml")));
    let man = run(Command::new("sh").arg("-c").arg(format!(
        "gzip -dc {} | grep -c oetd",
        u.join("usr/share/man/man1/oet-http.1.gz").display()
    )));
    assert_ne!(man.trim(), "0", "oet-http(1) says how it reaches oetd");
}

/// lintian, Debian's package checker, finds neither errors nor warnings: the package has
/// its copyright file and changelog, a real maintainer address, and depends on what its
/// maintainer scripts run.
#[test]
fn lintian_finds_nothing_wrong_with_the_package() {
    if !have("dpkg-deb") || !have("lintian") {
        oet_tests::skip_unless_ci("dpkg-deb or lintian is not installed");
        return;
    }
    let out = tempfile::tempdir().unwrap();
    let deb = build_deb(out.path());
    let report = Command::new("lintian")
        .args(["--tag-display-limit", "0", "--fail-on", "error,warning"])
        .arg(&deb)
        .output()
        .expect("run lintian");
    let text = String::from_utf8_lossy(&report.stdout);
    assert!(
        report.status.success(),
        "lintian ({}):\n{text}{}",
        report.status,
        String::from_utf8_lossy(&report.stderr)
    );
    assert!(
        !text
            .lines()
            .any(|l| l.starts_with("E:") || l.starts_with("W:")),
        "lintian:\n{text}"
    );
    // The copyright file is the machine-readable kind and names the licence.
    let unpacked = tempfile::tempdir().unwrap();
    run(Command::new("dpkg-deb")
        .arg("-x")
        .arg(&deb)
        .arg(unpacked.path()));
    let copyright =
        fs::read_to_string(unpacked.path().join("usr/share/doc/oet/copyright")).unwrap();
    assert!(copyright
        .starts_with("Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/"));
    assert!(copyright.contains("License: BSD-3-Clause"));
}
