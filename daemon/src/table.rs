//! A table of records keyed by IDs that the table itself allocates in increasing order,
//! behind one lock: the shape shared by the procedure and activity tables.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

/// Records keyed by increasing IDs, behind one lock.
pub struct IdTable<E> {
    rows: Mutex<Rows<E>>,
}

/// The locked contents of an [`IdTable`].
pub struct Rows<E> {
    last_id: u64,
    pub entries: BTreeMap<u64, E>,
}

impl<E> Default for IdTable<E> {
    fn default() -> Self {
        IdTable::after(0)
    }
}

impl<E> IdTable<E> {
    /// An empty table whose first ID will be `last_id + 1`: IDs continue after those an
    /// earlier run issued.
    pub fn after(last_id: u64) -> Self {
        IdTable {
            rows: Mutex::new(Rows {
                last_id,
                entries: BTreeMap::new(),
            }),
        }
    }

    /// Locks the table. A panic while it was held cannot leave it half-updated in a way
    /// that matters more than losing the daemon, so the lock is taken over after one.
    pub fn lock(&self) -> MutexGuard<'_, Rows<E>> {
        self.rows.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl<E> Rows<E> {
    /// `view` of the entries with the given IDs, or of every entry when `ids` is empty;
    /// an ID without an entry is the error `missing` makes of it.
    pub fn select<T, Err>(
        &self,
        ids: &[u64],
        view: impl Fn(&E) -> T,
        missing: impl Fn(u64) -> Err,
    ) -> Result<Vec<T>, Err> {
        if ids.is_empty() {
            return Ok(self.entries.values().map(view).collect());
        }
        ids.iter()
            .map(|id| self.entries.get(id).map(&view).ok_or_else(|| missing(*id)))
            .collect()
    }

    /// Inserts the entry `make` builds for the next ID, and returns that ID.
    pub fn insert_next(&mut self, make: impl FnOnce(u64) -> E) -> u64 {
        self.last_id += 1;
        let id = self.last_id;
        self.entries.insert(id, make(id));
        id
    }
}
