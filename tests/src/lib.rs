pub mod systemd_sandbox;
