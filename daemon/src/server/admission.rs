//! Which connections the server holds: at most `server.max_connections` in all and
//! `server.max_connections_per_uid` per user (root and oetd's own user are not limited
//! per user). When a cap is reached, room is made for the newcomer by dropping the
//! oldest connection that has not completed its handshake; failing that, an operator's
//! newcomer takes the place of the oldest idle connection of a peer who may only read.
//! Only then is a newcomer refused. So connections held open by anyone can delay, but
//! never lock out, an operator's `stop`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use oet_protocol::Role;
use tokio_util::sync::CancellationToken;

/// Where a connection is in its life, as far as making room is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Phase {
    /// Accepted; the handshake is not complete.
    Handshaking = 0,
    /// Handshaken, waiting for a request (or in the middle of one's frame).
    Idle = 1,
    /// Serving a request.
    Busy = 2,
    /// Streaming events to a subscriber.
    Streaming = 3,
}

impl Phase {
    fn from_u8(value: u8) -> Phase {
        match value {
            0 => Phase::Handshaking,
            1 => Phase::Idle,
            2 => Phase::Busy,
            _ => Phase::Streaming,
        }
    }
}

/// Why a newcomer was not admitted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("oetd is serving its maximum of {max} connections (server.max_connections); try again later")]
    Full { max: usize },
    #[error("uid {uid} already holds {max} connections to oetd (server.max_connections_per_uid); close some")]
    PerUid { uid: u32, max: usize },
}

/// The caps.
#[derive(Debug, Clone, Copy)]
pub struct Caps {
    pub total: usize,
    pub per_uid: usize,
    /// oetd's own uid, which (like root) is not capped per user.
    pub own_uid: u32,
}

/// The connections held; cheap to clone.
#[derive(Clone)]
pub struct Admission {
    caps: Caps,
    table: Arc<Mutex<Table>>,
}

#[derive(Default)]
struct Table {
    next_id: u64,
    /// By id, which is also the order of arrival.
    held: BTreeMap<u64, Held>,
}

struct Held {
    uid: Option<u32>,
    role: Option<Role>,
    phase: Arc<AtomicU8>,
    dropped: CancellationToken,
}

/// One admitted connection's place; dropping it frees the place.
pub struct Ticket {
    id: u64,
    phase: Arc<AtomicU8>,
    dropped: CancellationToken,
    table: Arc<Mutex<Table>>,
}

impl Ticket {
    pub fn set_phase(&self, phase: Phase) {
        self.phase.store(phase as u8, Ordering::Relaxed);
    }

    /// Cancelled when the connection is dropped to make room for another.
    pub fn dropped(&self) -> &CancellationToken {
        &self.dropped
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        lock(&self.table).held.remove(&self.id);
    }
}

fn lock(table: &Mutex<Table>) -> MutexGuard<'_, Table> {
    table.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Admission {
    pub fn new(caps: Caps) -> Admission {
        Admission {
            caps,
            table: Arc::default(),
        }
    }

    /// Admits a connection of `uid` whose peer has `role`, making room if need be.
    pub fn admit(&self, uid: Option<u32>, role: Option<Role>) -> Result<Ticket, Refusal> {
        let mut table = lock(&self.table);
        let capped_uid = uid.filter(|&uid| uid != 0 && uid != self.caps.own_uid);
        if let Some(uid) = capped_uid {
            let mine = table.held.values().filter(|h| h.uid == Some(uid)).count();
            if mine >= self.caps.per_uid
                && !table.drop_oldest(|h| h.uid == Some(uid) && h.phase() == Phase::Handshaking)
            {
                return Err(Refusal::PerUid {
                    uid,
                    max: self.caps.per_uid,
                });
            }
        }
        if table.held.len() >= self.caps.total {
            let operator = role.is_some_and(|role| role >= Role::Operate);
            let made_room = table.drop_oldest(|h| h.phase() == Phase::Handshaking)
                || (operator
                    && table.drop_oldest(|h| {
                        h.role.is_none_or(|role| role < Role::Operate)
                            && matches!(h.phase(), Phase::Idle | Phase::Streaming)
                    }));
            if !made_room {
                return Err(Refusal::Full {
                    max: self.caps.total,
                });
            }
        }
        let id = table.next_id;
        table.next_id += 1;
        let phase = Arc::new(AtomicU8::new(Phase::Handshaking as u8));
        let dropped = CancellationToken::new();
        table.held.insert(
            id,
            Held {
                uid,
                role,
                phase: phase.clone(),
                dropped: dropped.clone(),
            },
        );
        Ok(Ticket {
            id,
            phase,
            dropped,
            table: self.table.clone(),
        })
    }

    /// Connections held now.
    pub fn held(&self) -> usize {
        lock(&self.table).held.len()
    }
}

impl Held {
    fn phase(&self) -> Phase {
        Phase::from_u8(self.phase.load(Ordering::Relaxed))
    }
}

impl Table {
    /// Drops the oldest connection `which` accepts; false if there is none.
    fn drop_oldest(&mut self, which: impl Fn(&Held) -> bool) -> bool {
        let Some(id) = self
            .held
            .iter()
            .find(|(_, held)| which(held))
            .map(|(id, _)| *id)
        else {
            return false;
        };
        if let Some(held) = self.held.remove(&id) {
            held.dropped.cancel();
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admission(total: usize, per_uid: usize) -> Admission {
        Admission::new(Caps {
            total,
            per_uid,
            own_uid: 4242,
        })
    }

    #[test]
    fn the_oldest_unfinished_handshake_makes_room_first() {
        let admission = admission(3, 10);
        let first = admission.admit(Some(1000), Some(Role::Read)).expect("room");
        let second = admission.admit(Some(1000), Some(Role::Read)).expect("room");
        let third = admission.admit(Some(1000), Some(Role::Read)).expect("room");
        first.set_phase(Phase::Idle);
        let newcomer = admission.admit(Some(1001), Some(Role::Read)).expect("room");
        assert!(!first.dropped().is_cancelled(), "handshaken: kept");
        assert!(second.dropped().is_cancelled(), "oldest still handshaking");
        assert!(!third.dropped().is_cancelled());
        assert_eq!(admission.held(), 3);
        drop(second);
        assert_eq!(admission.held(), 3, "a dropped place is not freed twice");
        drop(newcomer);
        assert_eq!(admission.held(), 2);
    }

    #[test]
    fn an_operator_takes_the_place_of_an_idle_reader_and_a_reader_is_refused() {
        let admission = admission(2, 10);
        let operator = admission.admit(Some(1), Some(Role::Operate)).expect("room");
        let reader = admission.admit(Some(2), Some(Role::Read)).expect("room");
        operator.set_phase(Phase::Idle);
        reader.set_phase(Phase::Busy);
        assert_eq!(
            admission.admit(Some(3), Some(Role::Read)).err(),
            Some(Refusal::Full { max: 2 })
        );
        assert!(
            admission.admit(Some(4), Some(Role::Operate)).is_err(),
            "a busy reader is not dropped"
        );
        reader.set_phase(Phase::Streaming);
        let _second_operator = admission.admit(Some(4), Some(Role::Operate)).expect("room");
        assert!(reader.dropped().is_cancelled());
        assert!(!operator.dropped().is_cancelled());
    }

    #[test]
    fn each_user_is_capped_except_root_and_oetd_itself() {
        let admission = admission(100, 2);
        let a = admission.admit(Some(1000), Some(Role::Read)).expect("room");
        let b = admission.admit(Some(1000), Some(Role::Read)).expect("room");
        a.set_phase(Phase::Idle);
        b.set_phase(Phase::Idle);
        assert_eq!(
            admission.admit(Some(1000), Some(Role::Read)).err(),
            Some(Refusal::PerUid { uid: 1000, max: 2 })
        );
        b.set_phase(Phase::Handshaking);
        let _c = admission
            .admit(Some(1000), Some(Role::Read))
            .expect("its own unfinished handshake makes room");
        assert!(b.dropped().is_cancelled());
        let many: Vec<_> = (0..5)
            .map(|_| admission.admit(Some(0), Some(Role::Admin)).expect("root"))
            .chain((0..5).map(|_| {
                admission
                    .admit(Some(4242), Some(Role::Admin))
                    .expect("oetd")
            }))
            .collect();
        assert_eq!(many.len(), 10);
    }
}
