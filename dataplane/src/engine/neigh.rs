//! Next-hop resolution: the neighbour cache, ARP requests and Neighbor Solicitations,
//! and the objects whose leg waits for a next hop's MAC (RFC 826, RFC 4861).
//!
//! A MAC comes from the cache, else from the resolver (the XDP program's ARP and NDP
//! snoop map, then the kernel's ARP table), else a request goes out (ARP for an IPv4
//! next hop, a Neighbor Solicitation for an IPv6 one: the answer reaches the snoop map
//! on its way to the kernel) and the object waits: its leg
//! sends nothing until the MAC is known, then it is serviced. A next hop that does not
//! answer within [`RESOLVE_TIMEOUT_US`] fails the leg like a refused connect. Waiting
//! entries hold generational keys: one whose object was freed resolves nothing, so a
//! new object in the same slot can never be given a stale next hop.

use std::net::IpAddr;

use ahash::AHashMap;
use tracing::warn;

use super::{Engine, ObjKey};
use crate::sink::FrameSink;
use crate::wire::{self, Mac};

/// Give up resolving a next hop after this long.
pub const RESOLVE_TIMEOUT_US: i64 = 3_000_000;
/// Re-send a request this often while resolving.
pub const RESOLVE_RETRY_US: i64 = 200_000;
/// A waiting object is first looked at this long after its request went out, then
/// after twice as long each time, up to [`RESOLVE_PASS_US`]. The answer is not
/// delivered to the worker (the XDP program's snoop map learns it on its way to the
/// kernel), so the worker polls for it: a neighbour on the same link answers within
/// tens of microseconds, and a fixed 1 ms pass made every first connection to a new
/// next hop wait up to a millisecond for it, at each gateway.
const RESOLVE_FIRST_CHECK_US: i64 = 25;
/// Waiting objects are looked at least this often.
const RESOLVE_PASS_US: i64 = 1_000;

/// Looks up a next hop's MAC outside the engine (XDP's ARP snoop map, the kernel's
/// table): `(ifindex, next hop) → MAC`.
pub type Resolver = Box<dyn FnMut(u32, IpAddr) -> Option<Mac> + Send>;

struct Waiting {
    obj: ObjKey,
    port: usize,
    nexthop: IpAddr,
    started: i64,
    last_request: i64,
    /// When it is next looked at, and the wait after that.
    next_check: i64,
    backoff: i64,
}

/// The neighbour cache and the objects waiting for a MAC.
pub(crate) struct Neigh {
    cache: AHashMap<(usize, IpAddr), Mac>,
    waiting: Vec<Waiting>,
    resolver: Resolver,
}

impl Neigh {
    pub(crate) fn new(resolver: Resolver) -> Neigh {
        Neigh {
            cache: AHashMap::new(),
            waiting: Vec::new(),
            resolver,
        }
    }

    /// The MAC of `ip` on `port` (interface `ifindex`), if known or resolvable now.
    fn lookup(&mut self, port: usize, ifindex: u32, ip: IpAddr) -> Option<Mac> {
        if let Some(m) = self.cache.get(&(port, ip)) {
            return Some(*m);
        }
        let m = (self.resolver)(ifindex, ip)?;
        self.cache.insert((port, ip), m);
        Some(m)
    }

    /// When a waiting object is next looked at, if any waits.
    pub(crate) fn next_pass(&self) -> Option<i64> {
        self.waiting.iter().map(|w| w.next_check).min()
    }

    /// Drops a freed object's wait (keeps the list short; a stale entry would resolve
    /// nothing anyway, see the module docs).
    pub(crate) fn forget(&mut self, obj: ObjKey) {
        if !self.waiting.is_empty() {
            self.waiting.retain(|w| w.obj != obj);
        }
    }
}

impl<S: FrameSink> Engine<S> {
    /// The MAC of next hop `ip` on `port`, if known or resolvable now.
    pub(crate) fn lookup_neighbor(&mut self, port: usize, ip: IpAddr) -> Option<Mac> {
        let ifindex = self.net.spec(port).ifindex;
        self.neigh.lookup(port, ifindex, ip)
    }

    /// Asks for `target`'s MAC on `port`: ARP for IPv4, a Neighbor Solicitation for
    /// IPv6. Nothing goes out when the port has no address of the target's family to
    /// ask from (the wait then times out, and says why) or no TX frame is free.
    fn solicit(&mut self, port: usize, target: IpAddr) {
        let spec = self.net.spec(port);
        let mac = spec.mac;
        let sent = match (target, spec.ipv4, spec.ipv6) {
            (IpAddr::V4(target), Some(src), _) => {
                let mut buf = [0u8; wire::ARP_FRAME_LEN];
                wire::write_arp_request(&mut buf, mac, src, target);
                self.net
                    .sink_mut(port)
                    .send(buf.len(), |f| f.copy_from_slice(&buf))
            }
            (IpAddr::V6(target), _, Some(src)) => {
                let mut buf = [0u8; wire::NS_FRAME_LEN];
                wire::write_neighbor_solicitation(&mut buf, mac, src, target);
                self.net
                    .sink_mut(port)
                    .send(buf.len(), |f| f.copy_from_slice(&buf))
            }
            _ => None,
        };
        if sent.is_some() {
            self.stats.neighbor_requests += 1;
        }
    }

    /// Parks an object whose leg's next hop is unknown; a request goes out now.
    pub(crate) fn wait_for_neighbor(
        &mut self,
        obj: ObjKey,
        port: usize,
        nexthop: IpAddr,
        now: i64,
    ) {
        self.solicit(port, nexthop);
        self.neigh.waiting.push(Waiting {
            obj,
            port,
            nexthop,
            started: now,
            last_request: now,
            next_check: now + RESOLVE_FIRST_CHECK_US,
            backoff: RESOLVE_FIRST_CHECK_US,
        });
    }

    /// Gives resolved next hops to their legs (and services them), fails the legs whose
    /// next hop did not answer in time, repeats requests. Each waiting object is looked
    /// at when its check is due: soon after its request, then less and less often, at
    /// least every millisecond.
    pub(crate) fn resolve_pending(&mut self, now: i64) {
        if self.neigh.next_pass().is_none_or(|at| at > now) {
            return;
        }
        // Next hops looked up in vain in this pass: the others waiting for them are not
        // looked up again (the kernel table's lookup reads /proc/net/arp).
        let mut unknown: Vec<(usize, IpAddr)> = Vec::new();
        for mut w in std::mem::take(&mut self.neigh.waiting) {
            if !self.objects.contains_key(w.obj) {
                continue;
            }
            if w.next_check > now {
                self.neigh.waiting.push(w);
                continue;
            }
            let mac = if unknown.contains(&(w.port, w.nexthop)) {
                None
            } else {
                let m = self.lookup_neighbor(w.port, w.nexthop);
                if m.is_none() {
                    unknown.push((w.port, w.nexthop));
                }
                m
            };
            if let Some(mac) = mac {
                if let Some(o) = self.objects.get_mut(w.obj) {
                    o.resolving_leg().dst_mac = Some(mac);
                }
                self.service(w.obj, now);
            } else if now - w.started > RESOLVE_TIMEOUT_US {
                self.stats.neighbor_timeouts += 1;
                let spec = self.net.spec(w.port);
                let asked = match w.nexthop {
                    IpAddr::V4(_) => spec.ipv4.is_some(),
                    IpAddr::V6(_) => spec.ipv6.is_some(),
                };
                if asked {
                    warn!(worker = self.id, nexthop = %w.nexthop, port = %spec.name, "next hop did not answer ARP or neighbor solicitation; resetting the connection");
                } else {
                    warn!(worker = self.id, nexthop = %w.nexthop, port = %spec.name, "next hop unknown and the port has no address of its family to ask from; resetting the connection");
                }
                // Like a failed connect: the leg closes and the other side is reset.
                if let Some(o) = self.objects.get_mut(w.obj) {
                    o.resolving_leg().fail();
                }
                self.service(w.obj, now);
            } else {
                // Soon after a request, then less and less often; and on time for the
                // next request and for the timeout, whatever the backoff.
                if now - w.last_request >= RESOLVE_RETRY_US {
                    w.last_request = now;
                    self.solicit(w.port, w.nexthop);
                    w.backoff = RESOLVE_FIRST_CHECK_US;
                } else {
                    w.backoff = (w.backoff * 2).min(RESOLVE_PASS_US);
                }
                w.next_check = (now + w.backoff)
                    .min(w.last_request + RESOLVE_RETRY_US)
                    .min(w.started + RESOLVE_TIMEOUT_US + 1);
                self.neigh.waiting.push(w);
            }
        }
    }
}
