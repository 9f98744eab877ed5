//! Making a script runnable: a filesystem script as it is; a git script fetched at its
//! commit and, with `create_env`, given a Python environment built for that commit — the
//! PREP_ENV state.

use std::path::PathBuf;

use oet_protocol::{GitArgs, GitCheckout, ProcedureState, Stream};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use super::control::Control;
use super::handle::ProcedureHandle;
use super::launch::Context;
use super::script::Script;
use crate::git::{script_path, Checkout};
use crate::python::Env;

/// What a procedure's worker is started with.
pub(super) struct Prepared {
    pub path: PathBuf,
    pub python: PathBuf,
    pub cwd: PathBuf,
    /// A git script's checkout and Python environment, kept from eviction while the
    /// procedure lives.
    held: Option<Held>,
}

struct Held {
    id: u64,
    _checkout: Checkout,
    _env: Option<Env>,
}

impl Drop for Prepared {
    /// Lets go of the checkout and the environment, and says so (eviction may now
    /// remove them).
    fn drop(&mut self) {
        if let Some(held) = self.held.take() {
            let id = held.id;
            drop(held);
            debug!(
                procedure_id = id,
                "procedure {id} no longer uses its checkout and environment"
            );
        }
    }
}

/// Prepares `script`. `Ok(None)` says a stop came first and the procedure is already
/// recorded STOPPED; `Err` is the text of a failure.
pub(super) async fn prepare(
    handle: &ProcedureHandle,
    context: &Context,
    script: Script,
    control: &mut mpsc::UnboundedReceiver<Control>,
) -> Result<Option<Prepared>, String> {
    match script {
        Script::File(path) => Ok(Some(Prepared {
            path,
            python: context.launcher.workers.python(),
            cwd: context.launcher.work_dir.clone(),
            held: None,
        })),
        Script::Git {
            uri,
            args,
            create_env,
        } => prepare_git(handle, context, &uri, &args, create_env, control).await,
    }
}

/// Fetches a git script's commit and, with `create_env`, builds (or waits for) its Python
/// environment. A stop during this ends the preparation (killing pip if no other
/// procedure waits for the same environment) and records STOPPED.
async fn prepare_git(
    handle: &ProcedureHandle,
    context: &Context,
    uri: &str,
    args: &GitArgs,
    create_env: bool,
    control: &mut mpsc::UnboundedReceiver<Control>,
) -> Result<Option<Prepared>, String> {
    let cancel = CancellationToken::new();
    let git = &context.launcher.git;
    let id = handle.id();
    let work = async {
        let checkout = tokio::select! {
            checkout = git.repos.checkout(
                args.git_repo.as_deref(),
                args.git_branch.as_deref(),
                args.git_commit.as_deref(),
            ) => checkout.map_err(|e| e.to_string())?,
            _ = cancel.cancelled() => return Ok(None),
        };
        let path = script_path(&checkout, uri).map_err(|e| e.to_string())?;
        handle.checked_out(GitCheckout {
            repo: checkout.repo().to_owned(),
            branch: checkout.branch().map(str::to_owned),
            commit: checkout.commit().to_owned(),
        });
        info!(
            procedure_id = id,
            script_uri = uri,
            "procedure {id} uses {} at commit {}",
            checkout.repo(),
            checkout.commit()
        );
        let (python, env) = if create_env {
            handle
                .enter(ProcedureState::Idle)
                .map_err(|e| e.to_string())?;
            handle
                .enter(ProcedureState::PrepEnv)
                .map_err(|e| e.to_string())?;
            let logs = handle.clone();
            let on_line = move |line: &str| logs.output(Stream::Stdout, line.to_owned());
            match git.envs.ensure(&checkout, on_line, cancel.clone()).await {
                Ok(env) => (env.python().to_owned(), Some(env)),
                Err(_) if cancel.is_cancelled() => return Ok(None),
                Err(err) => return Err(err.to_string()),
            }
        } else {
            (context.launcher.workers.python(), None)
        };
        Ok(Some(Prepared {
            path,
            python,
            cwd: checkout.dir().to_owned(),
            held: Some(Held {
                id,
                _checkout: checkout,
                _env: env,
            }),
        }))
    };
    tokio::pin!(work);
    let mut stopping: Option<oneshot::Sender<()>> = None;
    loop {
        tokio::select! {
            result = &mut work => {
                let Some(done) = stopping else {
                    return result;
                };
                // Stopped while preparing: whatever the preparation came to, the
                // procedure ends STOPPED.
                if let Err(err) = handle.enter(ProcedureState::Stopped) {
                    debug!(procedure_id = id, "{err}");
                }
                let _ = done.send(());
                return Ok(None);
            }
            command = control.recv(), if stopping.is_none() => match command {
                Some(Control::Stop { done }) => {
                    // Let the preparation wind down (pip killed, partial env removed)
                    // before the procedure is called STOPPED.
                    cancel.cancel();
                    stopping = Some(done);
                }
                // Nothing else can be asked of a procedure that is not READY yet.
                Some(Control::Call { .. }) | None => {}
            },
        }
    }
}
