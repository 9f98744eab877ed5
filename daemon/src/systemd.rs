//! Glue to systemd: readiness and watchdog notification, socket activation, journald.
