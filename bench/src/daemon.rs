//! The oetd a benchmark runs against: started with a socket, state directory and
//! configuration of its own in a temporary directory, stopped (SIGTERM) at the end.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::{bail, Context};
use oet_protocol::{Client, EventStream, FunctionArgs, ProcedureState, ScriptSpec};
use tempfile::TempDir;

/// Procedures that may run at once: the cycle figure runs this many side by side.
pub const MAX_RUNNING: usize = 4;

pub struct BenchDaemon {
    dir: TempDir,
    socket: PathBuf,
    child: Option<Child>,
}

impl BenchDaemon {
    /// Starts `oetd` and returns once it listens.
    pub fn start(oetd: &Path, python: &str) -> anyhow::Result<BenchDaemon> {
        let dir = tempfile::Builder::new()
            .prefix("oet-bench-")
            .tempdir()
            .context("cannot create a temporary directory")?;
        let socket = dir.path().join("oetd.sock");
        let config = dir.path().join("oetd.toml");
        std::fs::write(
            &config,
            format!(
                "[paths]\nstate_dir = {:?}\n\n[procedures]\npython = {python:?}\nmax_running = {MAX_RUNNING}\nhistory_size = 10\n\n[log]\nlevel = \"warn,oetd=info\"\n",
                dir.path().join("state")
            ),
        )?;
        std::fs::create_dir(dir.path().join("scripts"))?;
        let mut child = Command::new(oetd)
            .arg("--socket")
            .arg(&socket)
            .arg("--config")
            .arg(&config)
            .env_remove("NOTIFY_SOCKET")
            .env_remove("LISTEN_FDS")
            .env_remove("LISTEN_PID")
            .env_remove("JOURNAL_STREAM")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start {}", oetd.display()))?;
        let stderr = child.stderr.take().context("no stderr pipe")?;
        let mut lines = BufReader::new(stderr).lines();
        loop {
            match lines.next() {
                Some(Ok(line)) if line.contains("oetd listening on") => break,
                Some(Ok(_)) => continue,
                _ => {
                    let status = child.wait()?;
                    bail!("oetd ended before it listened ({status})");
                }
            }
        }
        // Keep reading, so that oetd never blocks on a full stderr pipe.
        std::thread::spawn(move || lines.map_while(Result::ok).for_each(drop));
        Ok(BenchDaemon {
            dir,
            socket,
            child: Some(child),
        })
    }

    /// oetd's process ID.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    pub async fn client(&self) -> anyhow::Result<Client> {
        Ok(Client::connect(&self.socket, "oet-bench").await?)
    }

    pub async fn events(&self) -> anyhow::Result<EventStream> {
        Ok(self.client().await?.subscribe().await?)
    }

    /// Writes a script and returns its `file://` URI.
    pub fn script(&self, name: &str, body: &str) -> anyhow::Result<String> {
        let path = self.dir.path().join("scripts").join(name);
        std::fs::write(&path, body)?;
        Ok(format!("file://{}", path.display()))
    }

    /// Creates a procedure of `uri` and waits until it is READY.
    pub async fn ready(&self, uri: &str) -> anyhow::Result<u64> {
        let mut events = self.events().await?;
        let mut client = self.client().await?;
        let created = client
            .create(ScriptSpec::filesystem(uri), FunctionArgs::default())
            .await?;
        let summary = events
            .wait_for(&mut client, created.id, |s| s == ProcedureState::Ready)
            .await?;
        if summary.state != ProcedureState::Ready {
            bail!(
                "procedure {} ended {}: {:?}",
                summary.id,
                summary.state,
                summary.stacktrace
            );
        }
        Ok(summary.id)
    }

    /// Stops oetd as systemd would, and checks that it exits cleanly.
    pub fn stop(mut self) -> anyhow::Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let status = child.wait()?;
        if !status.success() {
            bail!("oetd exited with {status}");
        }
        Ok(())
    }
}

impl Drop for BenchDaemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
