#!/usr/bin/env bash
# Builds the Debian package `oet`: oetd, oetctl and the HTTP shim oet-http, the systemd
# units, the sysusers and tmpfiles snippets, the example configurations (conffiles), man
# pages and oetctl's shell completions. Installing it creates the `oet` user and enables
# oetd.socket; oet-http.service is left for the operator to enable.
#
# Usage: packaging/build-deb.sh [--out DIR] [--bin-dir DIR]
#   --out DIR      where to write oet_<version>_<arch>.deb (default: <target>/debian)
#   --bin-dir DIR  package the oetd/oetctl/oet-http found in DIR instead of running
#                  `cargo build --release` (e.g. target/debug for a quick check)
# Honours CARGO_TARGET_DIR. Needs cargo (unless --bin-dir), dpkg-deb, gzip, strip.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
target_dir=${CARGO_TARGET_DIR:-$repo/target}
out=$target_dir/debian
bin_dir=

while [ $# -gt 0 ]; do
    case $1 in
    --out) out=$2; shift 2 ;;
    --bin-dir) bin_dir=$2; shift 2 ;;
    -h | --help) sed -n '2,11p' "$0" | cut -c3-; exit 0 ;;
    *) echo "build-deb.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done

if [ -z "$bin_dir" ]; then
    cargo build --release --locked --manifest-path "$repo/Cargo.toml" --bin oetd --bin oetctl \
        --bin oet-http
    bin_dir=$target_dir/release
fi
for exe in oetd oetctl oet-http; do
    [ -x "$bin_dir/$exe" ] || { echo "build-deb.sh: no $exe in $bin_dir" >&2; exit 1; }
done

# Who the package names as its maintainer; set OET_DEB_MAINTAINER for a site's own build.
maintainer=${OET_DEB_MAINTAINER:-Observation Execution Tool maintainers <oet-maintainers@observatory.example>}
version=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version *= *"\(.*\)"/\1/p' "$repo/Cargo.toml")
arch=$(dpkg --print-architecture)
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
root=$stage/root
gen=$stage/generated
mkdir -p "$root/DEBIAN" "$gen"

install -Dm755 "$bin_dir/oetd" "$root/usr/bin/oetd"
install -Dm755 "$bin_dir/oetctl" "$root/usr/bin/oetctl"
install -Dm755 "$bin_dir/oet-http" "$root/usr/bin/oet-http"
strip --strip-unneeded "$root/usr/bin/oetd" "$root/usr/bin/oetctl" "$root/usr/bin/oet-http"
install -Dm644 "$repo/systemd/oetd.service" "$root/lib/systemd/system/oetd.service"
install -Dm644 "$repo/systemd/oetd.socket" "$root/lib/systemd/system/oetd.socket"
install -Dm644 "$repo/systemd/oet-http.service" "$root/lib/systemd/system/oet-http.service"
install -Dm644 "$repo/systemd/sysusers.d/oet.conf" "$root/usr/lib/sysusers.d/oet.conf"
install -Dm644 "$repo/systemd/tmpfiles.d/oet.conf" "$root/usr/lib/tmpfiles.d/oet.conf"

# The documented example configurations (equal to the defaults) go to /etc/oet.
install -Dm644 "$repo/config/oetd.toml" "$root/etc/oet/oetd.toml"
install -Dm644 "$repo/config/oet-http.toml" "$root/etc/oet/oet-http.toml"

# Man pages and completions, generated from the clap definitions.
"$bin_dir/oetctl" generate "$gen"
# oetd(1), oet-http(1): written by their hidden `--generate-man DIR` flag (clap_mangen).
"$bin_dir/oetd" --generate-man "$gen"
"$bin_dir/oet-http" --generate-man "$gen"
mkdir -p "$root/usr/share/man/man1"
for page in "$gen"/*.1; do
    gzip -9n <"$page" >"$root/usr/share/man/man1/$(basename "$page").gz"
done
install -Dm644 "$gen/oetctl.bash" "$root/usr/share/bash-completion/completions/oetctl"
install -Dm644 "$gen/_oetctl" "$root/usr/share/zsh/vendor-completions/_oetctl"
install -Dm644 "$gen/oetctl.fish" "$root/usr/share/fish/vendor_completions.d/oetctl.fish"
install -Dm644 "$repo/README.md" "$root/usr/share/doc/oet/README.md"

# Debian policy: a machine-readable copyright file and a changelog in the docs.
install -Dm644 "$repo/packaging/copyright" "$root/usr/share/doc/oet/copyright"
# The changelog's date is the last commit's (or SOURCE_DATE_EPOCH), so that two builds
# of one tree give the same package.
when=${SOURCE_DATE_EPOCH:-$(git -C "$repo" log -1 --format=%ct 2>/dev/null || date +%s)}
cat >"$gen/changelog" <<EOF
oet ($version) unstable; urgency=medium

  * Release $version; see /usr/share/doc/oet/README.md.

 -- $maintainer  $(date -R -u -d "@$when")
EOF
gzip -9n <"$gen/changelog" >"$root/usr/share/doc/oet/changelog.gz"

# Shared-library dependencies: the packages owning what the binaries link against.
depends=$(ldd "$root/usr/bin/oetd" "$root/usr/bin/oetctl" "$root/usr/bin/oet-http" |
    awk '$2 == "=>" && $3 ~ /^\// {print $3}' | sort -u |
    while read -r lib; do
        dpkg -S "$lib" 2>/dev/null || dpkg -S "$(readlink -f "$lib")" 2>/dev/null || true
    done | cut -d: -f1 | sort -u | paste -sd, | sed 's/,/, /g')

cat >"$root/DEBIAN/control" <<EOF
Package: oet
Version: $version
Architecture: $arch
Maintainer: $maintainer
Section: science
Priority: optional
Installed-Size: $(du -sk --exclude=DEBIAN "$root" | cut -f1)
Depends: ${depends:+$depends, }python3, systemd
Recommends: python3-venv, git
Description: Observation Execution Tool: runs and supervises observing scripts
 oetd is a systemd service that loads Python observing scripts into their own
 processes, starts and stops them, records their history and broadcasts their
 events; oetctl is the operator's command-line client. Scheduling Block
 activities are fetched from the observatory's data archive and run as scripts.
 oet-http serves the original OET's REST API and event stream over oetd.
EOF

printf '%s\n' /etc/oet/oetd.toml /etc/oet/oet-http.toml >"$root/DEBIAN/conffiles"

cat >"$root/DEBIAN/postinst" <<'EOF'
#!/bin/sh
set -e
if [ "$1" = configure ]; then
    # Both come with systemd, which the package depends on.
    systemd-sysusers /usr/lib/sysusers.d/oet.conf
    systemd-tmpfiles --create /usr/lib/tmpfiles.d/oet.conf || true
fi
if [ "$1" = configure ] || [ "$1" = abort-upgrade ] || [ "$1" = abort-deconfigure ] ||
    [ "$1" = abort-remove ]; then
    if command -v deb-systemd-helper >/dev/null; then
        deb-systemd-helper unmask oetd.socket >/dev/null || true
        if deb-systemd-helper --quiet was-enabled oetd.socket; then
            deb-systemd-helper enable oetd.socket >/dev/null || true
        else
            deb-systemd-helper update-state oetd.socket >/dev/null || true
        fi
        deb-systemd-helper update-state oetd.service >/dev/null || true
        # The HTTP shim is opt-in: `systemctl enable --now oet-http`.
        deb-systemd-helper update-state oet-http.service >/dev/null || true
    fi
    if [ -d /run/systemd/system ]; then
        systemctl --system daemon-reload >/dev/null || true
        if [ -n "$2" ]; then
            # Upgrade: a running oetd picks up the new binary.
            deb-systemd-invoke try-restart oetd.service oet-http.service >/dev/null || true
        fi
        deb-systemd-invoke start oetd.socket >/dev/null || true
    fi
fi
exit 0
EOF

cat >"$root/DEBIAN/prerm" <<'EOF'
#!/bin/sh
set -e
if [ -d /run/systemd/system ] && [ "$1" = remove ]; then
    deb-systemd-invoke stop oet-http.service oetd.service oetd.socket >/dev/null || true
fi
exit 0
EOF

cat >"$root/DEBIAN/postrm" <<'EOF'
#!/bin/sh
set -e
if [ -d /run/systemd/system ] && [ "$1" = remove ]; then
    systemctl --system daemon-reload >/dev/null || true
fi
if command -v deb-systemd-helper >/dev/null; then
    if [ "$1" = remove ]; then
        deb-systemd-helper mask oetd.socket oetd.service oet-http.service >/dev/null || true
    fi
    if [ "$1" = purge ]; then
        deb-systemd-helper purge oetd.socket oetd.service oet-http.service >/dev/null || true
        deb-systemd-helper unmask oetd.socket oetd.service oet-http.service >/dev/null || true
    fi
fi
if [ "$1" = purge ]; then
    rm -rf /var/lib/oet /var/cache/oet
fi
exit 0
EOF
chmod 755 "$root/DEBIAN/postinst" "$root/DEBIAN/prerm" "$root/DEBIAN/postrm"

mkdir -p "$out"
deb=$out/oet_${version}_${arch}.deb
dpkg-deb --root-owner-group --build "$root" "$deb" >/dev/null
echo "$deb"
