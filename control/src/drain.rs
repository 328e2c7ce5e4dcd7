//! Draining removed addresses: a workload (or service address) that a new generation
//! no longer names keeps its XDP divert entry, with the flags it had, until the
//! connections opened before its removal have ended, or for at most the drain timeout.
//! So established connections to and from it finish through the dataplane instead of
//! meeting the kernel half-way (which would reset them), while new connections already
//! follow the new tables (the workers refuse them: the address is in none).
//!
//! The workers say which connections are left as one number each: the oldest table
//! generation a live connection of theirs was opened under (`ShmWriter::oldest_in_use`).
//! An address removed by generation `g` is drained once every worker says `g` or later.
//! That is conservative (an unrelated connection older than `g` keeps it too) and
//! costs the workers nothing per packet; the timeout bounds it.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// How long a removed address is kept at most (`--drain-timeout`): Kubernetes' default
/// termination grace period, the time a deleted pod's connections have anyway.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Draining {
    /// The divert flags it had.
    flags: u32,
    /// The generation that removed it.
    removed_by: u64,
    since: Instant,
}

/// Why a drain ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// No connection opened before the removal is left.
    Drained,
    /// The drain timeout passed with connections left (they break now).
    TimedOut,
}

/// The removed addresses being drained.
#[derive(Debug)]
pub struct Drain {
    entries: BTreeMap<IpAddr, Draining>,
    timeout: Duration,
}

impl Drain {
    /// No drain yet; removed addresses are kept at most `timeout`.
    pub fn new(timeout: Duration) -> Drain {
        Drain {
            entries: BTreeMap::new(),
            timeout,
        }
    }

    /// Generation `g` replaced the divert set `old` by `new`: what only `old` diverts
    /// starts draining (an address already draining keeps its first removal); what
    /// `new` diverts is no longer draining, whatever its flags now.
    pub fn published(
        &mut self,
        old: &BTreeMap<IpAddr, u32>,
        new: &BTreeMap<IpAddr, u32>,
        g: u64,
        now: Instant,
    ) {
        for (addr, &flags) in old {
            if !new.contains_key(addr) {
                self.entries.entry(*addr).or_insert(Draining {
                    flags,
                    removed_by: g,
                    since: now,
                });
            }
        }
        self.entries.retain(|addr, _| !new.contains_key(addr));
    }

    /// The divert set to keep in the XDP map: `current` and the draining addresses.
    pub fn divert_set(&self, current: &BTreeMap<IpAddr, u32>) -> BTreeMap<IpAddr, u32> {
        let mut set = current.clone();
        for (addr, d) in &self.entries {
            set.entry(*addr).or_insert(d.flags);
        }
        set
    }

    /// Ends the drains that are over, given the workers' oldest generation in use
    /// (`None`: no worker runs, so nothing is left to drain). Returns each ended
    /// address, why, and how long it drained.
    pub fn expire(
        &mut self,
        oldest_in_use: Option<u64>,
        now: Instant,
    ) -> Vec<(IpAddr, Ended, Duration)> {
        let mut ended = Vec::new();
        let timeout = self.timeout;
        self.entries.retain(|addr, d| {
            let took = now.saturating_duration_since(d.since);
            let why = if oldest_in_use.is_none_or(|g| g >= d.removed_by) {
                Ended::Drained
            } else if took >= timeout {
                Ended::TimedOut
            } else {
                return true;
            };
            ended.push((*addr, why, took));
            false
        });
        ended
    }

    /// How many addresses are draining.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(entries: &[(&str, u32)]) -> BTreeMap<IpAddr, u32> {
        entries
            .iter()
            .map(|(a, f)| (a.parse().unwrap(), *f))
            .collect()
    }

    #[test]
    fn a_removed_address_stays_until_its_connections_end() {
        let t0 = Instant::now();
        let mut d = Drain::new(Duration::from_secs(30));
        let g1 = set(&[("198.18.1.2", 1), ("198.18.2.2", 2), ("2001:2:0:2::2", 2)]);
        let g2 = set(&[("198.18.1.2", 1)]);
        d.published(&g1, &g2, 2, t0);
        assert_eq!(
            d.divert_set(&g2),
            g1,
            "both removed addresses kept, flags too"
        );
        // A worker still has a connection of generation 1; another has not said.
        assert_eq!(d.expire(Some(1), t0 + Duration::from_secs(1)), vec![]);
        assert_eq!(d.expire(Some(0), t0 + Duration::from_secs(2)), vec![]);
        let ended = d.expire(Some(2), t0 + Duration::from_secs(3));
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(
            ended,
            vec![
                (ip("198.18.2.2"), Ended::Drained, Duration::from_secs(3)),
                (ip("2001:2:0:2::2"), Ended::Drained, Duration::from_secs(3)),
            ]
        );
        assert!(d.is_empty());
        assert_eq!(d.divert_set(&g2), g2);
    }

    #[test]
    fn a_drain_ends_at_the_timeout_or_when_no_worker_runs() {
        let t0 = Instant::now();
        let mut d = Drain::new(Duration::from_secs(5));
        let g1 = set(&[("198.18.1.2", 1), ("198.18.2.2", 2)]);
        let g2 = set(&[("198.18.1.2", 1)]);
        d.published(&g1, &g2, 2, t0);
        assert_eq!(d.expire(Some(1), t0 + Duration::from_millis(4999)), vec![]);
        assert_eq!(
            d.expire(Some(1), t0 + Duration::from_secs(5)),
            vec![(
                "198.18.2.2".parse().unwrap(),
                Ended::TimedOut,
                Duration::from_secs(5)
            )]
        );
        d.published(&g2, &set(&[]), 3, t0);
        assert_eq!(d.len(), 1);
        assert_eq!(
            d.expire(None, t0),
            vec![(
                "198.18.1.2".parse().unwrap(),
                Ended::Drained,
                Duration::ZERO
            )]
        );
    }

    #[test]
    fn an_address_named_again_stops_draining_and_a_second_removal_keeps_the_first() {
        let t0 = Instant::now();
        let mut d = Drain::new(Duration::from_secs(30));
        let g1 = set(&[("198.18.1.2", 1), ("198.18.2.2", 2)]);
        let g2 = set(&[("198.18.1.2", 1)]);
        d.published(&g1, &g2, 2, t0);
        // Generation 3 removes the client too; the server keeps its removal by 2.
        let g3 = set(&[]);
        d.published(&g2, &g3, 3, t0 + Duration::from_secs(1));
        assert_eq!(d.len(), 2);
        let ended = d.expire(Some(2), t0 + Duration::from_secs(2));
        assert_eq!(
            ended,
            vec![(
                "198.18.2.2".parse().unwrap(),
                Ended::Drained,
                Duration::from_secs(2)
            )]
        );
        // Generation 4 names the client again, as another kind of workload.
        let g4 = set(&[("198.18.1.2", 2)]);
        d.published(&g3, &g4, 4, t0 + Duration::from_secs(3));
        assert!(d.is_empty());
        assert_eq!(d.divert_set(&g4), g4, "the new flags, not the drained ones");
    }
}
