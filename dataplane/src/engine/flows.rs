//! The flow table (a received segment's 4-tuple → the object and leg it belongs to),
//! the linger set of recently freed keys, and local port selection.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;

use ahash::AHashMap;

use super::ObjKey;
use crate::wire::FlowKey;

/// How long the keys of a freed connection are remembered. Connection state is freed
/// as soon as both legs finished (no TIME-WAIT sockets); segments that still arrive
/// (reordered by a handover, duplicate ACKs) are dropped silently and counted as
/// `late_segments` instead of being answered with a reset.
pub const LINGER_US: i64 = 2_000_000;
/// At most this many lingering keys (oldest forgotten first): bounded memory.
pub const LINGER_MAX: usize = 65_536;
/// Local ports of legs opened towards another gateway (the source gateway's side).
pub const OUTBOUND_PORTS: RangeInclusive<u16> = 20_000..=39_999;
/// Local ports of legs delivering to a workload served here (the destination side).
/// Disjoint from [`OUTBOUND_PORTS`]: the destination gateway cannot know which ports
/// the source gateway picked, and the same 4-tuple live on both links (once in each
/// orientation) stalled connections in testing.
pub const DELIVERY_PORTS: RangeInclusive<u16> = 40_000..=59_999;

/// Which range a new leg's local port comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PortRange {
    /// [`OUTBOUND_PORTS`].
    Outbound,
    /// [`DELIVERY_PORTS`].
    Delivery,
}

/// The flow table and the linger set.
#[derive(Debug)]
pub(crate) struct Flows {
    table: AHashMap<FlowKey, (ObjKey, u8)>,
    recent: AHashMap<FlowKey, i64>,
    recent_order: VecDeque<(i64, FlowKey)>,
    /// Next candidate local port, per [`PortRange`].
    next_port: [u16; 2],
    owner: Owner,
}

/// Which flows are this worker's.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Owner {
    /// This worker.
    pub id: u32,
    /// All workers.
    pub workers: u32,
}

impl Owner {
    /// Whether this worker owns the flow of `key` (`hash(4-tuple) % workers`).
    pub(crate) fn owns(self, key: &FlowKey) -> bool {
        self.workers <= 1 || key.owner_hash() % self.workers == self.id
    }
}

impl Flows {
    /// An empty table; `seed` spreads the port sequences of workers and processes.
    pub(crate) fn new(owner: Owner, seed: u16) -> Flows {
        // Per-process, per-worker start: restarts do not walk the same sequence again
        // straight into peers' TIME-WAIT state.
        let seed = seed ^ (owner.id as u16).wrapping_mul(7919);
        Flows {
            table: AHashMap::new(),
            recent: AHashMap::new(),
            recent_order: VecDeque::new(),
            next_port: [
                OUTBOUND_PORTS.start() + seed % OUTBOUND_PORTS.len() as u16,
                DELIVERY_PORTS.start() + seed % DELIVERY_PORTS.len() as u16,
            ],
            owner,
        }
    }

    /// The object and leg a segment with this key belongs to.
    pub(crate) fn get(&self, key: &FlowKey) -> Option<(ObjKey, u8)> {
        self.table.get(key).copied()
    }

    /// Routes segments with `key` to leg `which` of `obj`.
    pub(crate) fn insert(&mut self, key: FlowKey, obj: ObjKey, which: u8) {
        self.recent.remove(&key);
        self.table.insert(key, (obj, which));
    }

    /// Forgets a freed leg's key: out of the table, into the linger set.
    pub(crate) fn forget(&mut self, key: FlowKey, now: i64) {
        self.table.remove(&key);
        if self.recent_order.len() >= LINGER_MAX {
            if let Some((_, old)) = self.recent_order.pop_front() {
                self.recent.remove(&old);
            }
        }
        let expiry = now + LINGER_US;
        self.recent.insert(key, expiry);
        self.recent_order.push_back((expiry, key));
    }

    /// Whether `key` belonged to a connection freed less than [`LINGER_US`] ago.
    pub(crate) fn lingering(&self, key: &FlowKey) -> bool {
        self.recent.contains_key(key)
    }

    /// Ends the linger of keys whose time is up.
    pub(crate) fn expire(&mut self, now: i64) {
        while let Some(&(expiry, key)) = self.recent_order.front() {
            if expiry > now {
                break;
            }
            self.recent_order.pop_front();
            // A newer entry for the same key (reused quickly) keeps its own expiry.
            if self.recent.get(&key) == Some(&expiry) {
                self.recent.remove(&key);
            }
        }
    }

    /// Live keys.
    pub(crate) fn len(&self) -> usize {
        self.table.len()
    }

    /// A local port for a connection from `local_ip` to `remote` whose replies hash to
    /// this worker and whose 4-tuple is free.
    pub(crate) fn pick_port(
        &mut self,
        remote: SocketAddr,
        local_ip: IpAddr,
        range: PortRange,
    ) -> Option<u16> {
        let (ports, next) = match range {
            PortRange::Outbound => (OUTBOUND_PORTS, &mut self.next_port[0]),
            PortRange::Delivery => (DELIVERY_PORTS, &mut self.next_port[1]),
        };
        for _ in 0..ports.len() {
            let p = *next;
            *next = if p >= *ports.end() {
                *ports.start()
            } else {
                p + 1
            };
            let key = FlowKey {
                src: remote,
                dst: SocketAddr::new(local_ip, p),
            };
            // The 4-tuple must be unused in both orientations, live or lingering: a
            // gateway that opened its second leg on the same tuple as its first (same
            // client address and port, same destination: both gateways walk the same
            // port sequence) stalled connections in testing.
            let rev = key.reversed();
            let free = [key, rev]
                .iter()
                .all(|k| !self.table.contains_key(k) && !self.recent.contains_key(k));
            if free && self.owner.owns(&key) {
                return Some(p);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use slotmap::SlotMap;

    use super::*;

    fn key(src: &str, dst: &str) -> FlowKey {
        FlowKey {
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
        }
    }

    #[test]
    fn linger_expires_and_bounds() {
        let mut objs: SlotMap<ObjKey, ()> = SlotMap::with_key();
        let o = objs.insert(());
        let mut f = Flows::new(Owner { id: 0, workers: 1 }, 0);
        let k = key("198.18.1.2:5000", "198.18.2.2:80");
        f.insert(k, o, 1);
        assert_eq!(f.get(&k), Some((o, 1)));
        f.forget(k, 1_000);
        assert_eq!(f.get(&k), None);
        assert!(f.lingering(&k));
        f.expire(1_000 + LINGER_US - 1);
        assert!(f.lingering(&k));
        f.expire(1_000 + LINGER_US);
        assert!(!f.lingering(&k));
    }

    #[test]
    fn picked_ports_avoid_live_and_lingering_tuples_both_ways() {
        let mut objs: SlotMap<ObjKey, ()> = SlotMap::with_key();
        let o = objs.insert(());
        let mut f = Flows::new(Owner { id: 0, workers: 1 }, 0);
        let remote: SocketAddr = "198.18.2.2:80".parse().unwrap();
        let local: IpAddr = "198.18.1.2".parse().unwrap();
        let first = f.pick_port(remote, local, PortRange::Outbound).unwrap();
        assert_eq!(first, *OUTBOUND_PORTS.start());
        // Make the next candidate busy in the reverse orientation, the one after it
        // lingering: both are skipped.
        let busy = key(&format!("{local}:{}", first + 1), &remote.to_string());
        f.insert(busy, o, 0);
        f.forget(
            FlowKey {
                src: remote,
                dst: SocketAddr::new(local, first + 2),
            },
            0,
        );
        assert_eq!(
            f.pick_port(remote, local, PortRange::Outbound),
            Some(first + 3)
        );
        assert_eq!(
            f.pick_port(remote, local, PortRange::Delivery),
            Some(*DELIVERY_PORTS.start())
        );
    }

    #[test]
    fn picked_ports_hash_to_their_worker() {
        for id in 0..3 {
            let owner = Owner { id, workers: 3 };
            let mut f = Flows::new(owner, 77);
            let remote: SocketAddr = "198.18.0.2:15008".parse().unwrap();
            let local: IpAddr = "198.18.1.2".parse().unwrap();
            for _ in 0..50 {
                let p = f.pick_port(remote, local, PortRange::Outbound).unwrap();
                let k = FlowKey {
                    src: remote,
                    dst: SocketAddr::new(local, p),
                };
                assert_eq!(k.owner_hash() % 3, id);
            }
        }
    }
}
