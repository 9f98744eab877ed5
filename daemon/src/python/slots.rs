//! The bookkeeping of environments: one slot per environment (being built, or
//! complete), how many users pin it, when it was last used and how much space it takes,
//! and which slots eviction may remove. Nothing here touches the disk: the manager
//! (`envs`) does, under the same lock as these decisions.

use std::collections::HashMap;

/// The bounds eviction keeps environments within; 0 switches a bound off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Bounds {
    /// `python.max_envs`.
    pub count: usize,
    /// `python.max_env_bytes`.
    pub bytes: u64,
}

/// One environment, complete or being built.
#[derive(Debug)]
pub(super) struct Slot<B> {
    /// Tells a slot from an earlier one of the same key, so a stale pin or measurement
    /// never touches its successor.
    pub gen: u64,
    /// Users holding it: requesters waiting for its build, live procedures running in it.
    pub pins: usize,
    /// Logical time of the last use, for least-recently-used order.
    pub last_used: u64,
    /// Space on disk, once measured; `None` after a use that may have changed it.
    pub bytes: Option<u64>,
    /// What the environment is, for log records: repository and commit.
    pub label: String,
    /// The build while one runs; `None` once the environment is complete.
    pub building: Option<B>,
}

/// Why an environment is removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Reason {
    Count(usize),
    Bytes(u64),
    Pruned,
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reason::Count(max) => write!(
                f,
                "the least recently used beyond python.max_envs ({max} environments)"
            ),
            Reason::Bytes(max) => write!(
                f,
                "the least recently used beyond python.max_env_bytes ({max} bytes)"
            ),
            Reason::Pruned => f.write_str("not in use, and the caches were pruned"),
        }
    }
}

/// Every environment, by key.
#[derive(Debug)]
pub(super) struct Slots<B> {
    slots: HashMap<String, Slot<B>>,
    clock: u64,
    next_gen: u64,
}

impl<B> Default for Slots<B> {
    fn default() -> Self {
        Slots {
            slots: HashMap::new(),
            clock: 0,
            next_gen: 0,
        }
    }
}

impl<B> Slots<B> {
    pub fn get(&self, key: &str) -> Option<&Slot<B>> {
        self.slots.get(key)
    }

    /// The slot of `key` if it is generation `gen`.
    pub fn get_gen(&mut self, key: &str, gen: u64) -> Option<&mut Slot<B>> {
        self.slots.get_mut(key).filter(|slot| slot.gen == gen)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &Slot<B>)> {
        self.slots.iter()
    }

    /// A new generation, for a slot about to be inserted.
    pub fn reserve_gen(&mut self) -> u64 {
        self.next_gen += 1;
        self.next_gen
    }

    /// Adds a slot of generation `gen` (see [`Slots::reserve_gen`]), replacing none: the
    /// caller checked. It has one pin if `pinned`, and is used now.
    pub fn insert(
        &mut self,
        key: &str,
        gen: u64,
        label: String,
        building: Option<B>,
        pinned: bool,
    ) {
        let last_used = self.tick();
        self.slots.insert(
            key.to_owned(),
            Slot {
                gen,
                pins: usize::from(pinned),
                last_used,
                bytes: None,
                label,
                building,
            },
        );
    }

    /// Takes a pin on `key` and marks it used now; returns its generation.
    pub fn pin(&mut self, key: &str) -> Option<u64> {
        let now = self.tick();
        let slot = self.slots.get_mut(key)?;
        slot.pins += 1;
        slot.last_used = now;
        Some(slot.gen)
    }

    /// Lets go of a pin. The last user leaving may have changed the environment (a
    /// script may write into it), so its size is measured again.
    pub fn unpin(&mut self, key: &str, gen: u64) {
        if let Some(slot) = self.get_gen(key, gen) {
            slot.pins = slot.pins.saturating_sub(1);
            if slot.pins == 0 {
                slot.bytes = None;
            }
        }
    }

    /// Removes the slot of `key` if it is generation `gen`.
    pub fn remove_gen(&mut self, key: &str, gen: u64) -> Option<Slot<B>> {
        self.get_gen(key, gen)?;
        self.slots.remove(key)
    }

    pub fn any_building(&self) -> bool {
        self.slots.values().any(|slot| slot.building.is_some())
    }

    /// Complete environments whose size is not known, with their generations.
    pub fn unmeasured(&self) -> Vec<(String, u64)> {
        self.slots
            .iter()
            .filter(|(_, slot)| slot.building.is_none() && slot.bytes.is_none())
            .map(|(key, slot)| (key.clone(), slot.gen))
            .collect()
    }

    /// The complete environments to remove, least recently used first, so that the
    /// rest is within `bounds` (or every complete one, with `None`): never one that is
    /// pinned or being built. Sizes not yet measured count as nothing.
    pub fn victims(&self, bounds: Option<Bounds>) -> Vec<(String, Reason)> {
        let mut candidates: Vec<(&String, &Slot<B>)> = self
            .slots
            .iter()
            .filter(|(_, slot)| slot.building.is_none() && slot.pins == 0)
            .collect();
        candidates.sort_by_key(|(_, slot)| slot.last_used);
        let Some(bounds) = bounds else {
            return candidates
                .into_iter()
                .map(|(key, _)| (key.clone(), Reason::Pruned))
                .collect();
        };
        let complete = self.slots.values().filter(|s| s.building.is_none());
        let mut count = complete.clone().count();
        let mut bytes: u64 = complete.filter_map(|s| s.bytes).sum();
        let mut victims = Vec::new();
        for (key, slot) in candidates {
            let reason = if bounds.count > 0 && count > bounds.count {
                Reason::Count(bounds.count)
            } else if bounds.bytes > 0 && bytes > bounds.bytes {
                Reason::Bytes(bounds.bytes)
            } else {
                break;
            };
            count -= 1;
            bytes = bytes.saturating_sub(slot.bytes.unwrap_or(0));
            victims.push((key.clone(), reason));
        }
        victims
    }

    /// The count and measured bytes of the complete environments, if beyond `bounds`.
    pub fn beyond(&self, bounds: Bounds) -> Option<(usize, u64)> {
        let complete = self.slots.values().filter(|s| s.building.is_none());
        let count = complete.clone().count();
        let bytes: u64 = complete.filter_map(|s| s.bytes).sum();
        let over = (bounds.count > 0 && count > bounds.count)
            || (bounds.bytes > 0 && bytes > bounds.bytes);
        over.then_some((count, bytes))
    }

    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Slots `a`, `b`, `c`, `d` used in that order, each of `size` bytes.
    fn four(size: u64) -> Slots<()> {
        let mut slots = Slots::default();
        for key in ["a", "b", "c", "d"] {
            let gen = slots.reserve_gen();
            slots.insert(key, gen, key.to_owned(), None, false);
            set_bytes(&mut slots, key, Some(size));
        }
        slots
    }

    fn set_bytes(slots: &mut Slots<()>, key: &str, bytes: Option<u64>) {
        let gen = slots.get(key).expect("slot").gen;
        slots.get_gen(key, gen).expect("slot").bytes = bytes;
    }

    fn keys(victims: &[(String, Reason)]) -> Vec<&str> {
        victims.iter().map(|(key, _)| key.as_str()).collect()
    }

    #[test]
    fn the_least_recently_used_go_beyond_the_count() {
        let mut slots = four(10);
        let bounds = Bounds { count: 2, bytes: 0 };
        assert_eq!(keys(&slots.victims(Some(bounds))), ["a", "b"]);
        // Using `a` again makes `b` and `c` the oldest.
        slots.pin("a");
        let gen = slots.get("a").expect("a").gen;
        slots.unpin("a", gen);
        assert_eq!(keys(&slots.victims(Some(bounds))), ["b", "c"]);
        assert_eq!(slots.victims(Some(bounds))[0].1, Reason::Count(2));
    }

    #[test]
    fn pinned_and_building_environments_are_never_chosen() {
        let mut slots = four(10);
        slots.pin("a");
        let gen = slots.reserve_gen();
        slots.insert("e", gen, "e".to_owned(), Some(()), true);
        let victims = slots.victims(Some(Bounds { count: 1, bytes: 0 }));
        assert_eq!(keys(&victims), ["b", "c", "d"]);
        assert_eq!(keys(&slots.victims(None)), ["b", "c", "d"]);
        assert!(slots.any_building());
    }

    #[test]
    fn the_byte_bound_counts_what_is_measured() {
        let mut slots = four(100);
        let bounds = Bounds {
            count: 0,
            bytes: 250,
        };
        assert_eq!(keys(&slots.victims(Some(bounds))), ["a", "b"]);
        assert_eq!(slots.victims(Some(bounds))[0].1, Reason::Bytes(250));
        set_bytes(&mut slots, "d", None);
        assert_eq!(keys(&slots.victims(Some(bounds))), ["a"]);
        assert_eq!(slots.unmeasured(), [("d".to_owned(), 4)]);
        let unbounded = Bounds { count: 0, bytes: 0 };
        assert!(slots.victims(Some(unbounded)).is_empty());
        assert_eq!(slots.beyond(bounds), Some((4, 300)));
        assert_eq!(slots.beyond(unbounded), None);
    }

    #[test]
    fn a_stale_generation_touches_nothing() {
        let mut slots = four(1);
        let old = slots.get("a").expect("a").gen;
        slots.remove_gen("a", old).expect("removed");
        let gen = slots.reserve_gen();
        slots.insert("a", gen, "a".to_owned(), None, true);
        slots.unpin("a", old);
        assert_eq!(slots.get("a").expect("a").pins, 1);
        assert!(slots.remove_gen("a", old).is_none());
    }
}
