//! The procedure state machine: which state may follow which. Every state change in the
//! daemon is checked here.

use oet_protocol::ProcedureState::{self, *};

/// Whether a procedure in `from` may enter `to`.
pub fn allowed(from: ProcedureState, to: ProcedureState) -> bool {
    if from.is_final() {
        return false;
    }
    match to {
        // Failure, stop and loss of contact can happen in every live state.
        Failed | Stopped | Unknown => true,
        Creating => false,
        Idle => matches!(from, Creating | PrepEnv | Loading),
        PrepEnv => from == Idle,
        Loading => from == Idle,
        Initialising => from == Idle,
        // Without `init`, the IDLE after loading leads straight to READY.
        Ready => matches!(from, Idle | Initialising | Running),
        Running => from == Ready,
        Complete => from == Running,
    }
}

/// States from which a procedure may be stopped.
pub fn stoppable(state: ProcedureState) -> bool {
    !state.is_final()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn walk(states: &[ProcedureState]) -> bool {
        states.windows(2).all(|pair| allowed(pair[0], pair[1]))
    }

    #[test]
    fn documented_sequences_are_allowed() {
        assert!(walk(&[
            Creating,
            Idle,
            Loading,
            Idle,
            Initialising,
            Ready,
            Running,
            Complete
        ]));
        assert!(walk(&[
            Creating, Idle, Loading, Idle, Ready, Running, Ready, Running, Complete
        ]));
        assert!(walk(&[
            Creating,
            Idle,
            PrepEnv,
            Idle,
            Loading,
            Idle,
            Initialising,
            Ready
        ]));
    }

    #[test]
    fn nothing_follows_a_final_state() {
        for last in [Complete, Stopped, Failed, Unknown] {
            for next in ProcedureState::ALL {
                assert!(!allowed(last, next), "{last} -> {next}");
            }
        }
    }

    #[test]
    fn shortcuts_are_refused() {
        assert!(!allowed(Creating, Ready));
        assert!(!allowed(Idle, Running));
        assert!(!allowed(Ready, Complete));
        assert!(!allowed(Loading, Ready));
    }
}
