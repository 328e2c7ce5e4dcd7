//! Per-object timers: when smoltcp next wants a leg polled, a half-dead deadline, a
//! pooled tunnel's idle limit.
//!
//! One heap of (due time, key) and, per object, the earliest time it is scheduled for.
//! An entry whose time is no longer the object's earliest (rescheduled sooner) or whose
//! object is gone is skipped when it comes up: with generational keys a freed object's
//! entry can never wake a new object in the same slot.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use slotmap::SecondaryMap;

use super::ObjKey;

/// The engine's timers.
#[derive(Debug, Default)]
pub(crate) struct Timers {
    heap: BinaryHeap<Reverse<(i64, ObjKey)>>,
    earliest: SecondaryMap<ObjKey, i64>,
}

impl Timers {
    /// Asks for `key` to be serviced at `at` (µs), unless it already is sooner.
    pub(crate) fn schedule(&mut self, key: ObjKey, at: i64) {
        if self.earliest.get(key).is_none_or(|&s| at < s) {
            self.earliest.insert(key, at);
            self.heap.push(Reverse((at, key)));
        }
    }

    /// Drops a freed object's schedule (its heap entries are skipped later).
    pub(crate) fn forget(&mut self, key: ObjKey) {
        self.earliest.remove(key);
    }

    /// Moves the objects due at `now` into `out`. Only entries due when it starts are
    /// taken: an object that is due again at once (its TX ring is full, say) waits for
    /// the next loop iteration, after the TX rings were flushed.
    pub(crate) fn due(&mut self, now: i64, out: &mut Vec<ObjKey>) {
        while let Some(&Reverse((at, key))) = self.heap.peek() {
            if at > now {
                break;
            }
            self.heap.pop();
            if self.earliest.get(key) == Some(&at) {
                self.earliest.remove(key);
                out.push(key);
            }
        }
    }

    /// The earliest pending time (possibly of an entry that will be skipped).
    pub(crate) fn next(&self) -> Option<i64> {
        self.heap.peek().map(|Reverse((at, _))| *at)
    }
}

#[cfg(test)]
mod tests {
    use slotmap::SlotMap;

    use super::*;

    #[test]
    fn sooner_wins_and_forgotten_or_stale_entries_never_fire() {
        let mut keys: SlotMap<ObjKey, ()> = SlotMap::with_key();
        let (a, b) = (keys.insert(()), keys.insert(()));
        let mut t = Timers::default();
        t.schedule(a, 50);
        t.schedule(a, 30); // sooner: replaces
        t.schedule(a, 40); // later than 30: ignored
        t.schedule(b, 10);
        t.forget(b);
        assert_eq!(t.next(), Some(10));
        let mut due = Vec::new();
        t.due(29, &mut due);
        assert!(due.is_empty(), "b was forgotten, a is due at 30");
        t.due(100, &mut due);
        assert_eq!(due, vec![a], "a once, at its earliest time; 50 is stale");
        // A freed slot's key reused: the new object does not inherit the old schedule.
        t.schedule(a, 200);
        keys.remove(a);
        t.forget(a);
        let c = keys.insert(());
        assert_ne!(a, c);
        t.due(1_000, &mut due);
        assert_eq!(due, vec![a], "nothing new fired");
    }
}
