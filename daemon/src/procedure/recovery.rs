//! Start-up recovery of the procedures that were live when oetd stopped (a crash, a
//! power cut, SIGKILL): what each left running is killed, and it is recorded UNKNOWN
//! with a note saying that oetd restarted and what was found.

use nix::errno::Errno;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

use crate::store::Interrupted;

/// The start time of process `pid`, in clock ticks since boot (field 22 of
/// `/proc/<pid>/stat`): with the PID, it names one process, never a later one given the
/// same PID. `None` when there is no such process.
pub fn start_time(pid: u32) -> Option<u64> {
    let fields = crate::children::stat_fields(i32::try_from(pid).ok()?)?;
    fields.split_whitespace().nth(19)?.parse().ok()
}

/// Kills what an interrupted procedure left running: its worker's process group, and
/// anything still in it (the children a script spawned). Its cgroup, where it had one,
/// start-up has already killed with everything in it (`cgroup_killed`). Returns what was
/// found, for the procedure's history.
pub fn kill_leftovers(procedure: &Interrupted, cgroup_killed: bool) -> String {
    let found = kill_group(procedure);
    if cgroup_killed {
        format!("its cgroup was killed with all that was left in it; {found}")
    } else {
        found
    }
}

fn kill_group(procedure: &Interrupted) -> String {
    let Some((pid, started)) = procedure.worker else {
        return "it had no worker process yet".to_owned();
    };
    let Ok(group) = i32::try_from(pid) else {
        return format!("its recorded worker PID {pid} is not a process ID");
    };
    match start_time(pid) {
        // The PID names another process now. A process group keeps its ID reserved
        // while any member lives, so nothing of the worker's group can be left.
        Some(now) if now != started => {
            return format!("nothing of it was left running (PID {pid} is another process now)")
        }
        // The worker itself, or (when it is gone) whatever is left in its group.
        Some(_) | None => {}
    }
    match killpg(Pid::from_raw(group), Signal::SIGKILL) {
        Ok(()) => format!("what was left of its process group {pid} was killed"),
        Err(Errno::ESRCH) => "nothing of it was left running".to_owned(),
        Err(err) => format!("its process group {pid} could not be killed: {err}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_start_time_is_read_and_tells_processes_apart() {
        let own = start_time(std::process::id()).expect("this process has a start time");
        assert!(own > 0);
        assert_eq!(start_time(std::process::id()), Some(own));
        assert_eq!(start_time(u32::MAX), None);
    }

    #[test]
    fn a_reused_pid_is_left_alone() {
        let own = std::process::id();
        let started = start_time(own).expect("start time");
        let stale = Interrupted {
            id: 1,
            state: oet_protocol::ProcedureState::Running,
            history_len: 1,
            worker: Some((own, started + 1)),
        };
        let found = kill_leftovers(&stale, false);
        assert!(found.contains("another process"), "{found}");
    }
}
