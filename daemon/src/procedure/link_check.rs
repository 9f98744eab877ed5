//! What a worker may say next. The worker channel is untrusted — the script runs in the
//! harness's process and can write to it — so every message is checked against what the
//! harness itself says at that point, given what oetd has asked of it: IDLE once its
//! interpreter is up; LOADING, IDLE, [INITIALISING,] READY for a load; READY (or COMPLETE
//! for `main`) at the end of a call; FAILED only while loading or calling; events and
//! subscriptions only while script code can run; and nothing at all after its final
//! word. A message that could not have come from the harness is a [`Violation`].
//!
//! The topics a script subscribes to are bounded: at most [`MAX_TOPICS`] at once, each
//! at most [`MAX_TOPIC_BYTES`] long, and an unsubscription names a topic subscribed to.
//!
//! What one process cannot prevent is a script saying exactly what the harness would
//! say next (READY at the end of a call of a function other than `main`, say); the
//! records' state machine and the supervisor's watch on the process remain.

use std::collections::BTreeSet;

use oet_protocol::ProcedureState::{self, *};
use oet_protocol::Value;

use super::worker_link::FromWorker;

/// Topics a script may listen to at once.
pub(super) const MAX_TOPICS: usize = 1024;

/// The longest topic a script may listen to.
pub(super) const MAX_TOPIC_BYTES: usize = 1024;

/// A message the harness could not have sent now; the text completes "worker protocol
/// violation: ".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub(super) struct Violation(pub String);

/// What a checked message means for the procedure.
#[derive(Debug, PartialEq)]
pub(super) enum Heard {
    /// The interpreter is up (its first IDLE): record it and hand it the script.
    Up,
    /// A state to record.
    Enter(ProcedureState),
    /// The harness's final word; the procedure ends so once its process has exited.
    Final(LastWords),
    /// A message the script published.
    Event { topic: String, payload: Value },
    /// The topics the script listens to changed (see [`LinkCheck::topics`]).
    Topics,
}

/// How the harness said the procedure ended.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum LastWords {
    Complete,
    Failed(String),
}

impl LastWords {
    fn state(&self) -> ProcedureState {
        match self {
            LastWords::Complete => Complete,
            LastWords::Failed(_) => Failed,
        }
    }
}

/// Where the harness is, as far as its messages and oetd's commands tell.
#[derive(Debug, Clone, PartialEq)]
enum Phase {
    /// Started: the interpreter says IDLE once it is up.
    Starting,
    /// Up, waiting for oetd's load command.
    Up,
    /// Loading the script; the last state it said.
    Loading(Option<ProcedureState>),
    /// READY, with no call in progress.
    Ready,
    /// Running a call of this function.
    Calling(String),
    /// It said its final word.
    Finished(ProcedureState),
}

/// The check of one worker's messages.
#[derive(Debug)]
pub(super) struct LinkCheck {
    phase: Phase,
    topics: BTreeSet<String>,
}

impl LinkCheck {
    pub fn new() -> Self {
        LinkCheck {
            phase: Phase::Starting,
            topics: BTreeSet::new(),
        }
    }

    /// The topics the script listens to ("" is every topic).
    pub fn topics(&self) -> &BTreeSet<String> {
        &self.topics
    }

    /// oetd has sent the load command.
    pub fn loading(&mut self) {
        self.phase = Phase::Loading(None);
    }

    /// oetd has sent a call of `function`.
    pub fn calling(&mut self, function: &str) {
        self.phase = Phase::Calling(function.to_owned());
    }

    /// Checks one message against the harness's protocol and says what it means.
    pub fn check(&mut self, message: FromWorker) -> Result<Heard, Violation> {
        match message {
            FromWorker::Event { topic, payload } => {
                self.script_runs(&format!("an event on {topic}"))?;
                Ok(Heard::Event { topic, payload })
            }
            FromWorker::State { state, stacktrace } => self.state(state, stacktrace),
            FromWorker::Subscribe(topic) => {
                self.script_runs(&format!("a subscription to {topic:?}"))?;
                if topic.len() > MAX_TOPIC_BYTES {
                    return Err(Violation(format!(
                        "a subscription to a topic of {} bytes, more than {MAX_TOPIC_BYTES}",
                        topic.len()
                    )));
                }
                if self.topics.len() >= MAX_TOPICS && !self.topics.contains(&topic) {
                    return Err(Violation(format!(
                        "a subscription to more than {MAX_TOPICS} topics at once"
                    )));
                }
                if !self.topics.insert(topic) {
                    return Err(Violation("a second subscription to one topic".into()));
                }
                Ok(Heard::Topics)
            }
            FromWorker::Unsubscribe(topic) => {
                self.script_runs(&format!("an unsubscription from {topic:?}"))?;
                if !self.topics.remove(&topic) {
                    return Err(Violation(format!(
                        "an unsubscription from {topic:?}, which it was not subscribed to"
                    )));
                }
                Ok(Heard::Topics)
            }
        }
    }

    /// Whether script code may run now, which `what` needs.
    fn script_runs(&self, what: &str) -> Result<(), Violation> {
        match &self.phase {
            Phase::Loading(_) | Phase::Ready | Phase::Calling(_) => Ok(()),
            _ => Err(self.out_of_turn(what)),
        }
    }

    fn state(
        &mut self,
        state: ProcedureState,
        stacktrace: Option<String>,
    ) -> Result<Heard, Violation> {
        let (next, heard) = match (&self.phase, state) {
            (Phase::Starting, Idle) => (Phase::Up, Heard::Up),
            (Phase::Loading(None), Loading) => {
                (Phase::Loading(Some(Loading)), Heard::Enter(Loading))
            }
            (Phase::Loading(Some(Loading)), Idle) => {
                (Phase::Loading(Some(Idle)), Heard::Enter(Idle))
            }
            (Phase::Loading(Some(Idle)), Initialising) => (
                Phase::Loading(Some(Initialising)),
                Heard::Enter(Initialising),
            ),
            (Phase::Loading(Some(Idle | Initialising)), Ready) => {
                (Phase::Ready, Heard::Enter(Ready))
            }
            (Phase::Calling(function), Ready) if function != "main" => {
                (Phase::Ready, Heard::Enter(Ready))
            }
            (Phase::Calling(function), Complete) if function == "main" => {
                (Phase::Finished(Complete), Heard::Final(LastWords::Complete))
            }
            (Phase::Loading(_) | Phase::Calling(_), Failed) => {
                let trace = stacktrace
                    .unwrap_or_else(|| "the script failed without a stack trace".to_owned());
                (
                    Phase::Finished(Failed),
                    Heard::Final(LastWords::Failed(trace)),
                )
            }
            _ => return Err(self.out_of_turn(state.as_str())),
        };
        self.phase = next;
        Ok(heard)
    }

    /// The violation of saying `what` now.
    fn out_of_turn(&self, what: &str) -> Violation {
        Violation(match &self.phase {
            Phase::Starting => format!("{what} before the interpreter said it was up"),
            Phase::Up => format!("{what} before the script was handed over"),
            Phase::Loading(_) => format!("{what} while the script was being loaded"),
            Phase::Ready => format!("{what} while READY with no call in progress"),
            Phase::Calling(function) => format!("{what} while {function} runs"),
            Phase::Finished(state) => format!("{what} after the final state {state}"),
        })
    }

    /// The violation of a worker whose process did not end after its final word.
    pub fn lingering(last: &LastWords, secs: u64) -> Violation {
        Violation(format!(
            "said {} but its process did not exit within {secs} s",
            last.state()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(state: ProcedureState) -> FromWorker {
        FromWorker::State {
            state,
            stacktrace: None,
        }
    }

    fn event() -> FromWorker {
        FromWorker::Event {
            topic: "user.x".into(),
            payload: Value::Map(Default::default()),
        }
    }

    /// A worker that has loaded a script with `init` and is READY.
    fn ready() -> LinkCheck {
        let mut check = LinkCheck::new();
        assert_eq!(check.check(state(Idle)), Ok(Heard::Up));
        check.loading();
        for s in [Loading, Idle, Initialising, Ready] {
            assert_eq!(check.check(state(s)), Ok(Heard::Enter(s)), "{s}");
        }
        check
    }

    #[test]
    fn the_harness_sequences_pass() {
        let mut check = ready();
        check.calling("configure");
        assert!(check.check(event()).is_ok());
        assert_eq!(check.check(state(Ready)), Ok(Heard::Enter(Ready)));
        assert!(
            check.check(event()).is_ok(),
            "a background thread of the script"
        );
        check.calling("main");
        assert_eq!(
            check.check(state(Complete)),
            Ok(Heard::Final(LastWords::Complete))
        );

        let mut without_init = LinkCheck::new();
        without_init.check(state(Idle)).expect("up");
        without_init.loading();
        for s in [Loading, Idle, Ready] {
            without_init.check(state(s)).expect("loads");
        }
    }

    #[test]
    fn failures_end_a_load_or_a_call() {
        let mut check = LinkCheck::new();
        check.check(state(Idle)).expect("up");
        check.loading();
        check.check(state(Loading)).expect("loading");
        let failed = check.check(FromWorker::State {
            state: Failed,
            stacktrace: Some("Traceback".into()),
        });
        assert_eq!(
            failed,
            Ok(Heard::Final(LastWords::Failed("Traceback".into())))
        );
        let mut check = ready();
        check.calling("main");
        assert!(matches!(
            check.check(state(Failed)),
            Ok(Heard::Final(LastWords::Failed(_)))
        ));
    }

    #[test]
    fn states_out_of_turn_are_violations() {
        let mut check = ready();
        check.calling("main");
        let err = check.check(state(Ready)).expect_err("READY during main");
        assert_eq!(err.to_string(), "READY while main runs");

        let mut check = ready();
        assert_eq!(
            check.check(state(Failed)).expect_err("idle").to_string(),
            "FAILED while READY with no call in progress"
        );

        let mut check = ready();
        check.calling("configure");
        assert!(
            check.check(state(Complete)).is_err(),
            "COMPLETE ends only main"
        );

        let mut check = ready();
        check.calling("main");
        check.check(state(Complete)).expect("the final word");
        assert_eq!(
            check.check(state(Running)).expect_err("after").to_string(),
            "RUNNING after the final state COMPLETE"
        );
        assert!(
            check.check(event()).is_err(),
            "nothing follows the final word"
        );

        let mut check = LinkCheck::new();
        assert!(check.check(event()).is_err(), "no script code runs yet");
        assert!(check.check(state(Ready)).is_err());
        let mut check = LinkCheck::new();
        check.check(state(Idle)).expect("up");
        check.loading();
        assert!(check.check(state(Ready)).is_err(), "READY before LOADING");
    }

    #[test]
    fn subscriptions_are_bounded_and_come_only_while_script_code_runs() {
        let subscribe = |topic: &str| FromWorker::Subscribe(topic.into());
        let unsubscribe = |topic: &str| FromWorker::Unsubscribe(topic.into());
        let mut check = LinkCheck::new();
        assert!(
            check.check(subscribe("user.x")).is_err(),
            "before the script"
        );
        let mut check = ready();
        assert_eq!(check.check(subscribe("user.x")), Ok(Heard::Topics));
        assert_eq!(check.check(subscribe("")), Ok(Heard::Topics));
        assert_eq!(
            check
                .topics()
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>(),
            ["", "user.x"]
        );
        assert!(check.check(subscribe("user.x")).is_err(), "twice");
        assert_eq!(check.check(unsubscribe("user.x")), Ok(Heard::Topics));
        assert!(
            check.check(unsubscribe("user.x")).is_err(),
            "not subscribed"
        );
        let long = "x".repeat(MAX_TOPIC_BYTES + 1);
        assert!(check.check(subscribe(&long)).is_err(), "too long");
        for n in 1..MAX_TOPICS {
            check
                .check(subscribe(&format!("t.{n}")))
                .expect("within the bound");
        }
        let err = check.check(subscribe("one.more")).expect_err("beyond");
        assert_eq!(
            err.to_string(),
            format!("a subscription to more than {MAX_TOPICS} topics at once")
        );
        check.calling("main");
        check.check(state(Complete)).expect("the end");
        assert!(
            check.check(unsubscribe("")).is_err(),
            "after the final word"
        );
    }
}
