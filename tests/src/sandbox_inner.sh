#!/bin/bash
# PID 1 of fresh pid/mount/uts/ipc/net/cgroup namespaces (started by systemd_sandbox.rs):
# make every host mount read-only, give systemd private writable places, exec systemd.
# $1: the sandbox directory (the only host directory that stays writable).
set -eu
P=$1
mount --make-rprivate /
exec 9<"$P"

# Guard 2: every inherited mount read-only (per mount: remount,bind,ro). The harness
# checks /proc/<pid>/mountinfo afterwards and refuses to go on if one stayed writable.
awk '{print $5}' /proc/self/mountinfo | sort -u | while read -r mp; do
  case "$mp" in /proc | /proc/*) continue ;; esac
  mount -o remount,bind,ro "$mp" 2>/dev/null || echo "cannot make $mp read-only" >&2
done

# Private /tmp (PrivateTmp= needs a writable /tmp); the sandbox directory, which may
# live under /tmp, is bound back from the descriptor opened above (-c: no realpath).
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /tmp
mkdir -p "$P"
mount -c --bind /proc/self/fd/9 "$P"
mount -o remount,bind,rw "$P" # a bind inherits the read-only flag of its source
exec 9<&-

# Staged files (binaries, /etc/oet, users) appear through read-only overlays.
if [ -d "$P/root" ]; then
  for d in "$P"/root/*/; do
    d=${d%/}
    top=/${d##*/}
    mount -t overlay overlay -o "ro,lowerdir=$d:$top" "$top"
  done
fi

mount --bind /proc/sys /proc/sys
mount -o remount,bind,ro /proc/sys
mount -t cgroup2 -o nsdelegate cgroup2 /sys/fs/cgroup
mount -t tmpfs -o mode=755,nosuid,nodev tmpfs /run
for d in /var/lib /var/cache /var/log; do mount -t tmpfs -o mode=755 tmpfs "$d"; done
mount -t tmpfs -o mode=1777 tmpfs /var/tmp
mkdir -p /var/lib/systemd
mkdir -m 2755 /var/log/journal

mount -t tmpfs -o mode=755,nosuid tmpfs /dev
for n in "null 1 3" "zero 1 5" "full 1 7" "random 1 8" "urandom 1 9" "tty 5 0"; do
  set -- $n
  mknod -m 666 "/dev/$1" c "$2" "$3"
done
mkdir /dev/pts /dev/shm /dev/mqueue
mount -t devpts -o newinstance,ptmxmode=0666,mode=620 devpts /dev/pts
ln -s pts/ptmx /dev/ptmx
mount -t tmpfs -o mode=1777 tmpfs /dev/shm
ln -s /proc/self/fd /dev/fd

# Guard 1: SYSTEMD_UNIT_PATH without a trailing ':' means ONLY $P/units is searched (no
# host units, *.wants or generators), so the host's sysinit.target (whose tmpfiles setup
# would empty /tmp) can never be pulled in. NOTIFY_SOCKET: systemd says READY=1 on boot.
exec env -i container=oet-sandbox PATH=/usr/sbin:/usr/bin:/sbin:/bin \
  SYSTEMD_UNIT_PATH="$P/units" NOTIFY_SOCKET="$P/notify.sock" \
  /lib/systemd/systemd --unit=sandbox.target --show-status=no --log-level=info
