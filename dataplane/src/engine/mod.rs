//! The engine of one worker: everything between a received frame and the frames it
//! causes, without the rings. The run-to-completion loop ([`crate::worker`]) feeds it
//! RX frames and drives its timers; tests feed it frames from scripted peers and read
//! what it writes from in-memory sinks ([`crate::sink::MemSink`]).
//!
//! # Objects
//!
//! Every connection-like thing is an `Object` in one arena with generational keys
//! ([`ObjKey`], slotmap): a plain TCP connection ([`plain`]), an HBONE stream
//! connection or an HBONE tunnel ([`crate::proxy`]). The flow table maps a segment's
//! 4-tuple to (object, leg); timers and neighbour waits hold keys too, so an event for a
//! freed object finds nothing instead of a new object that reused its slot.
//!
//! There is one dispatch on the kind of object: `Engine::service`. Everything that
//! happens to an object (a segment, a timer, a resolved next hop, a tunnel event) ends
//! in it, and it ends in `Engine::egress`, which transmits and reschedules every kind
//! the same way.
//!
//! # Rooms
//!
//! - [`admission`]: who a new connection's source is, peer authentication, unknown
//!   sources (reject, hold).
//! - [`flows`]: the flow table, the linger set, local port selection.
//! - [`timers`]: per-object timers.
//! - [`neigh`]: next-hop resolution (ARP) and the objects waiting for a MAC.
//! - [`plain`]: plain TCP connections (two spliced legs).
//! - [`crate::proxy`]: HBONE (outbound, inbound, pool, tunnel, stream).

pub mod admission;
pub mod flows;
pub mod neigh;
pub mod plain;
pub mod services;
pub mod timers;

use std::net::IpAddr;
use std::sync::Arc;

use crossbeam::queue::ArrayQueue;
use slotmap::{SecondaryMap, SlotMap};
use smoltcp::time::Instant;
use tracing::debug;
use xdpmesh_shm::Tables;

use crate::access::{Direction, Histogram, Meta, Record, Traffic};
use crate::identity::IdentityStore;
use crate::metrics::Local;
use crate::proxy::{self, HboneLimits, Identities, Pool, Stream, Tunnel};
use crate::sink::FrameSink;
use crate::stack::{Buffers, Leg, Net, RELEASE_SWEEP_US};
use crate::state::{self, Index};
use crate::wire::{self, Mac, TcpFrame};
use admission::{Holds, LogLimiter, Source};
use flows::{Flows, Owner};
use neigh::{Neigh, Resolver};
use plain::Conn;
use services::{Balancer, ServiceTarget};
use timers::Timers;

pub use crate::stack::PortSpec;

slotmap::new_key_type! {
    /// A generational key of an `Object`: a freed object's key never names another.
    pub struct ObjKey;
}

/// A connection-like thing the engine owns.
pub(crate) enum Object {
    /// A plain TCP connection: two spliced legs.
    Plain(Conn),
    /// A TCP leg spliced to one HBONE stream.
    Stream(Stream),
    /// A TCP leg carrying an HBONE tunnel.
    Tunnel(Tunnel),
}

impl Object {
    /// The object's TCP legs (two for a plain connection, one otherwise).
    pub(crate) fn legs_mut(&mut self) -> &mut [Leg] {
        match self {
            Object::Plain(c) => c.legs_mut(),
            Object::Stream(s) => std::slice::from_mut(s.leg_mut()),
            Object::Tunnel(t) => std::slice::from_mut(t.leg_mut()),
        }
    }

    /// The leg that goes out through a next hop the engine resolves (the second leg of
    /// a plain connection, the only leg otherwise).
    fn resolving_leg(&mut self) -> &mut Leg {
        let legs = self.legs_mut();
        let last = legs.len() - 1;
        &mut legs[last]
    }

    /// A deadline of the object's own (half-dead limit, idle limit), besides its legs'.
    fn deadline(&self, limits: &HboneLimits) -> Option<i64> {
        match self {
            Object::Plain(c) => c.deadline(),
            Object::Stream(s) => s.deadline(),
            Object::Tunnel(t) => t.deadline(limits),
        }
    }
}

/// Live objects by kind.
#[derive(Debug, Default, Clone, Copy)]
struct Live {
    connections: u64,
    tunnels: u64,
}

impl Live {
    fn count(&mut self, o: &Object) -> &mut u64 {
        match o {
            Object::Tunnel(_) => &mut self.tunnels,
            Object::Plain(_) | Object::Stream(_) => &mut self.connections,
        }
    }
}

/// Where a new connection's second leg goes.
pub(crate) struct Upstream {
    /// The destination workload's address info.
    pub dst: state::AddrInfo,
    /// The port (interface) the leg leaves through.
    pub port: usize,
    /// The address and port it connects to: the SYN's destination, or a service's
    /// endpoint.
    pub target: std::net::SocketAddr,
    /// For a connection to a service, the endpoint chosen.
    pub service: Option<ServiceTarget>,
}

/// What [`Engine::take_ops`] returns: the Istio metrics' label sets and counts, and
/// the (TLS handshake, connect) histograms, each only when it changed.
pub type OpsUpdate = (
    Option<Vec<(crate::access::TrafficLabels, crate::access::TrafficCounts)>>,
    Option<(Histogram, Histogram)>,
);

/// A frame handed from one worker to the flow's owner.
#[derive(Debug)]
pub struct Handover {
    port: usize,
    bytes: Vec<u8>,
}

/// Capacity of each worker's handover queue (frames).
pub const HANDOVER_QUEUE: usize = 4096;

/// A connection with one leg finished is aborted if the other leg's peer has not
/// closed after this long (Linux's `tcp_fin_timeout` for orphaned FIN-WAIT-2).
pub const HALF_DEAD_US: i64 = 60_000_000;

/// How an engine is set up.
pub struct EngineConfig {
    /// Worker index (= RX queue).
    pub id: u32,
    /// Number of workers.
    pub workers: u32,
    /// Socket buffers.
    pub buffers: Buffers,
    /// The legs' delayed-ACK time (None: every segment ACKed at once).
    pub ack_delay: Option<smoltcp::time::Duration>,
    /// HBONE pool limits.
    pub hbone: HboneLimits,
    /// Next-hop resolver.
    pub resolver: Resolver,
    /// Every worker's handover inbox, indexed by worker (empty with one worker).
    pub inboxes: Vec<Arc<ArrayQueue<Handover>>>,
    /// Once-a-minute logging of sources, shared by the workers.
    pub log_limiter: Arc<LogLimiter>,
    /// The capture tap (`capture --inner` reads the streams' plaintext from it).
    pub tap: Arc<crate::capture::Tap>,
}

/// One worker's engine, generic over where it writes frames.
pub struct Engine<S> {
    pub(crate) id: u32,
    owner: Owner,
    pub(crate) net: Net<S>,
    pub(crate) index: Index,
    pub(crate) objects: SlotMap<ObjKey, Object>,
    pub(crate) flows: Flows,
    pub(crate) timers: Timers,
    pub(crate) neigh: Neigh,
    pub(crate) pool: Pool,
    pub(crate) ids: Identities,
    pub(crate) hbone: HboneLimits,
    pub(crate) buffers: Buffers,
    /// Tunnels that stream connections wrote into, pumped once per loop iteration.
    dirty_tunnels: Vec<ObjKey>,
    /// Objects whose timer is due (kept to reuse its allocation).
    due: Vec<ObjKey>,
    /// Live connections (plain and stream) and tunnels, kept as objects come and go.
    live: Live,
    /// The table generation each live connection (plain or stream) was opened under,
    /// and how many are live per generation: a removed address stays diverted until
    /// no connection older than its removal is left
    /// ([`Engine::oldest_generation_in_use`]).
    born: SecondaryMap<ObjKey, u64>,
    by_generation: std::collections::BTreeMap<u64, u32>,
    inboxes: Vec<Arc<ArrayQueue<Handover>>>,
    /// SYNs of unknown sources held (`unknown_source: hold`).
    pub(crate) holds: Holds,
    pub(crate) log_limiter: Arc<LogLimiter>,
    /// Service endpoint turns and ejections.
    pub(crate) balancer: Balancer,
    pub(crate) tap: Arc<crate::capture::Tap>,
    pub(crate) rng: u64,
    pub(crate) stats: Local,
    /// `istio_tcp_*` of this worker (see [`crate::access`]).
    pub(crate) traffic: Traffic,
    /// TLS handshake latency of the tunnels.
    pub(crate) handshake: Histogram,
    /// Connection set-up latency.
    pub(crate) connect: Histogram,
    /// A histogram changed since the last [`Engine::take_ops`].
    hist_changed: bool,
    /// When idle legs' buffer pages are next given back ([`Engine::release_idle`]).
    next_release: i64,
}

impl<S: FrameSink> Engine<S> {
    /// An engine over `ports` (each interface's spec and frame sink, in port order).
    pub fn new(cfg: EngineConfig, ports: Vec<(PortSpec, S)>, now: i64) -> Engine<S> {
        let owner = Owner {
            id: cfg.id,
            workers: cfg.workers,
        };
        let pid = std::process::id();
        let mut net = Net::new(ports, Instant::from_micros(now));
        net.sockets.ack_delay = cfg.ack_delay;
        Engine {
            id: cfg.id,
            owner,
            net,
            index: Index::default(),
            objects: SlotMap::with_key(),
            flows: Flows::new(owner, pid as u16),
            timers: Timers::default(),
            neigh: Neigh::new(cfg.resolver),
            pool: Pool::default(),
            ids: Identities::default(),
            hbone: cfg.hbone,
            buffers: cfg.buffers,
            dirty_tunnels: Vec::new(),
            due: Vec::new(),
            live: Live::default(),
            born: SecondaryMap::new(),
            by_generation: Default::default(),
            inboxes: cfg.inboxes,
            holds: Holds::default(),
            log_limiter: cfg.log_limiter,
            balancer: Balancer::default(),
            tap: cfg.tap,
            rng: 0x2545_f491_4f6c_dd1d ^ (u64::from(pid) << 16) ^ u64::from(cfg.id),
            stats: Local::default(),
            traffic: Traffic::default(),
            handshake: Histogram::default(),
            connect: Histogram::default(),
            hist_changed: false,
            next_release: now + RELEASE_SWEEP_US,
        }
    }

    /// Puts a table generation in force (for new connections; live ones keep going).
    pub fn set_tables(&mut self, generation: u64, tables: Tables) {
        self.index = Index::build(generation, tables);
        self.stats.table_generation = generation;
        self.balancer.new_generation();
        self.recheck_holds();
    }

    /// Counts a table generation that failed validation (the one in force stays).
    pub fn table_rejected(&mut self) {
        self.stats.table_errors += 1;
    }

    /// The generation in force (0: none yet).
    pub fn generation(&self) -> u64 {
        self.index.generation
    }

    /// The oldest table generation a live connection was opened under, or the one in
    /// force when none is live. Control keeps a removed address in the XDP divert set
    /// until every worker says a generation at least as new as the removal, so that
    /// connections to and from a removed workload drain instead of breaking. Tunnels
    /// do not count: an idle one is reopened on demand.
    pub fn oldest_generation_in_use(&self) -> u64 {
        self.by_generation
            .keys()
            .next()
            .copied()
            .unwrap_or(self.index.generation)
    }

    /// Puts a new set of workload identities in force (for new handshakes).
    pub fn set_identities(&mut self, ids: Arc<IdentityStore>) {
        self.ids.replace(ids);
    }

    /// Port `port`'s frame sink (tests read what the engine sent from it).
    pub fn sink_mut(&mut self, port: usize) -> &mut S {
        self.net.sink_mut(port)
    }

    /// Handles one received frame on `port`. `from_rx`: it came from the port's own RX
    /// ring, so it may belong to another worker and be handed over; handed-over frames
    /// are not checked again.
    pub fn on_frame(&mut self, port: usize, frame: &[u8], now: i64, from_rx: bool) {
        self.stats.rx_packets += 1;
        self.stats.rx_bytes += frame.len() as u64;
        let t = match wire::parse_tcp_frame_with(frame, self.net.spec(port).tcp_checksum) {
            Ok(t) => t,
            Err(reason) => {
                self.stats.rx_dropped[reason.index()] += 1;
                return;
            }
        };
        if from_rx && !self.owner.owns(&t.key) {
            self.hand_over(port, frame, &t);
            return;
        }
        let ip = &frame[t.ip_offset..t.ip_offset + t.ip_len];
        match self.flows.get(&t.key) {
            Some((obj, which)) => {
                if let Some(o) = self.objects.get_mut(obj) {
                    self.net
                        .ingress(&mut o.legs_mut()[usize::from(which)], ip, t.src_mac, now);
                }
                self.service(obj, now);
            }
            None if t.flags.syn && !t.flags.ack => self.accept(port, &t, ip, frame, now),
            None if self.flows.lingering(&t.key) => {
                self.stats.late_segments += 1;
                if t.flags.fin && self.net.ack_late_fin(port, t.src_mac, ip) {
                    debug!(worker = self.id, src = %t.key.src, dst = %t.key.dst, port = %self.net.spec(port).name, "retransmitted FIN of a freed connection: acknowledged");
                } else {
                    debug!(worker = self.id, src = %t.key.src, dst = %t.key.dst, flags = ?t.flags, port = %self.net.spec(port).name, "late segment of a freed connection: dropped");
                }
            }
            None => {
                self.stats.no_flow_resets += 1;
                debug!(worker = self.id, src = %t.key.src, dst = %t.key.dst, flags = ?t.flags, port = %self.net.spec(port).name, "segment for no connection: answered with a reset");
                self.net.reset(port, t.src_mac, ip, now);
            }
        }
    }

    fn hand_over(&mut self, port: usize, frame: &[u8], t: &TcpFrame) {
        let owner = t.key.owner_hash() % self.owner.workers;
        let h = Handover {
            port,
            bytes: frame.to_vec(),
        };
        match self.inboxes.get(owner as usize).map(|q| q.push(h)) {
            Some(Ok(())) => self.stats.handover_out += 1,
            _ => self.stats.handover_dropped += 1,
        }
    }

    /// Handles the frames other workers handed over to this one. Returns how many.
    pub fn drain_inbox(&mut self, now: i64) -> usize {
        let Some(inbox) = self.inboxes.get(self.id as usize).cloned() else {
            return 0;
        };
        let mut n = 0;
        while let Some(h) = inbox.pop() {
            self.stats.handover_in += 1;
            self.on_frame(h.port, &h.bytes, now, false);
            n += 1;
        }
        n
    }

    /// A SYN for no connection: a new connection, of the kind its destination asks for,
    /// if its source may open it (see [`admission`]).
    fn accept(&mut self, port: usize, t: &TcpFrame, ip: &[u8], frame: &[u8], now: i64) {
        // A service's virtual address: the connection goes to one of its endpoints.
        let mut target = t.key.dst;
        let mut service: Option<ServiceTarget> = None;
        if let Some(si) = self.index.service_of(&target.ip()) {
            match self.pick_endpoint(si, target, now) {
                Ok(st) => {
                    target = st.endpoint;
                    service = Some(st);
                }
                Err(reason) => {
                    self.stats.service_refused += 1;
                    let local =
                        matches!(self.classify_source(port, t.key.src.ip()), Source::Local(_));
                    let mut meta = self.meta_plain(t.key.src, target, Direction::Outbound, local);
                    meta.dst_service = self
                        .index
                        .tables
                        .services
                        .get(si as usize)
                        .map(|s| s.hostname.as_str().into());
                    let why = format!("service: {reason}");
                    self.record(
                        Record::refused(meta, crate::access::Flags::Connect, why),
                        true,
                        true,
                    );
                    self.net.reset(port, t.src_mac, ip, now);
                    return;
                }
            }
        }
        let Some(dst) = self.index.get(&target.ip()).copied() else {
            // Not a mesh destination: XDP diverts only mesh traffic, so this is a table
            // race or a stray segment. Refuse it rather than guess a route.
            self.stats.no_route += 1;
            self.net.reset(port, t.src_mac, ip, now);
            return;
        };
        let source = self.classify_source(port, t.key.src.ip());
        if source == Source::Unknown && self.admit_unknown(port, t, ip, frame, now) {
            return;
        }
        if service.is_none() && dst.local && target.port() == proxy::HBONE_PORT {
            self.accept_inbound_hbone(port, t, ip, now);
            return;
        }
        let Some(up_port) = self.net.port_of(dst.route.ifindex) else {
            self.stats.no_route += 1;
            debug!(worker = self.id, %target, ifindex = dst.route.ifindex, "no interface for the route to the destination");
            self.net.reset(port, t.src_mac, ip, now);
            return;
        };
        let up = Upstream {
            dst,
            port: up_port,
            target,
            service,
        };
        if dst.local {
            if !self.admit_plaintext(port, t, ip, now, &up, source) {
                return;
            }
        } else if !matches!(source, Source::Local(_)) {
            // Only a workload served here goes out through this gateway: XDP diverts
            // nothing else to another node's workload, so this is a table race (or a
            // held SYN whose source became another node's workload).
            self.stats.no_route += 1;
            debug!(worker = self.id, src = %t.key.src, %target, "source is not a workload served here: refused");
            self.net.reset(port, t.src_mac, ip, now);
            return;
        }
        if !dst.local && dst.protocol == xdpmesh_shm::Protocol::Hbone {
            self.accept_outbound_hbone(port, t, ip, now, up);
        } else {
            self.accept_plain(port, t, ip, now, up, source);
        }
    }

    /// Inserts a new object whose legs are routed by the flow table.
    pub(crate) fn insert(&mut self, object: Object) -> ObjKey {
        *self.live.count(&object) += 1;
        let is_connection = !matches!(object, Object::Tunnel(_));
        let key = self.objects.insert(object);
        if is_connection {
            let g = self.index.generation;
            self.born.insert(key, g);
            *self.by_generation.entry(g).or_default() += 1;
        }
        let o = &mut self.objects[key];
        for (which, leg) in o.legs_mut().iter().enumerate() {
            self.flows.insert(leg.key, key, which as u8);
        }
        key
    }

    /// Hands the first segment (a SYN) to a new object's leg 0 and services it.
    pub(crate) fn start(&mut self, key: ObjKey, ip: &[u8], src_mac: Mac, now: i64) {
        if let Some(o) = self.objects.get_mut(key) {
            self.net.ingress(&mut o.legs_mut()[0], ip, src_mac, now);
        }
        self.service(key, now);
    }

    /// The one dispatch on the kind of object: moves its bytes, advances its state,
    /// transmits, and frees it once it is over.
    pub(crate) fn service(&mut self, key: ObjKey, now: i64) {
        match self.objects.get(key) {
            Some(Object::Plain(_)) => self.service_plain(key, now),
            Some(Object::Stream(_)) => self.service_stream(key, now),
            Some(Object::Tunnel(_)) => self.pump_tunnel(key, now),
            None => {}
        }
    }

    /// Transmits what an object's legs have queued and schedules its next service: the
    /// earliest of its legs' smoltcp timers and its own deadline.
    pub(crate) fn egress(&mut self, key: ObjKey, now: i64) {
        let Some(o) = self.objects.get_mut(key) else {
            return;
        };
        let mut next = o.deadline(&self.hbone);
        for leg in o.legs_mut() {
            if let Some(at) = self.net.egress(leg, now) {
                next = Some(next.map_or(at, |n| n.min(at)));
            }
        }
        if let Some(at) = next {
            self.timers.schedule(key, at);
        }
    }

    /// Frees an object: its keys linger, its timer and neighbour wait are dropped.
    pub(crate) fn free(&mut self, key: ObjKey, now: i64) -> Option<Object> {
        let mut o = self.objects.remove(key)?;
        *self.live.count(&o) -= 1;
        if let Some(g) = self.born.remove(key) {
            if let Some(n) = self.by_generation.get_mut(&g) {
                *n -= 1;
                if *n == 0 {
                    self.by_generation.remove(&g);
                }
            }
        }
        for leg in o.legs_mut() {
            self.flows.forget(leg.key, now);
        }
        self.timers.forget(key);
        self.neigh.forget(key);
        Some(o)
    }

    /// Asks for a tunnel to be pumped later in this loop iteration (after the stream
    /// that wrote into it is done with its own work).
    pub(crate) fn pump_tunnel_later(&mut self, tid: ObjKey) {
        if self.objects.contains_key(tid) && !self.dirty_tunnels.contains(&tid) {
            self.dirty_tunnels.push(tid);
        }
    }

    /// Everything of a loop iteration that is not RX: due timers, tunnels written into,
    /// the linger set, waiting next hops; then the TX sinks are flushed. Returns how
    /// many objects it serviced.
    pub fn poll(&mut self, now: i64) -> usize {
        let mut due = std::mem::take(&mut self.due);
        self.timers.due(now, &mut due);
        let mut work = due.len();
        for key in due.drain(..) {
            self.service(key, now);
        }
        self.due = due;
        let dirty = std::mem::take(&mut self.dirty_tunnels);
        work += dirty.len();
        for tid in dirty {
            self.pump_tunnel(tid, now);
        }
        self.flows.expire(now);
        self.release_idle(now);
        // Before next hops: a released SYN's new leg may wait for one.
        self.service_holds(now);
        self.resolve_pending(now);
        self.net.flush();
        work
    }

    /// Every [`RELEASE_SWEEP_US`]: the legs not used since the last sweep give their
    /// buffers' pages back to the kernel ([`Net::release_idle`]), and so do the pooled
    /// sockets. An idle connection then holds no buffer memory (the memory target per
    /// idle connection is 4 KiB; four touched buffer pages alone were 16 KiB). A scan of
    /// every object, four times a second: about 5 ns per leg.
    fn release_idle(&mut self, now: i64) {
        if now < self.next_release {
            return;
        }
        self.next_release = now + RELEASE_SWEEP_US;
        let mut n = 0;
        for o in self.objects.values_mut() {
            for leg in o.legs_mut() {
                n += self.net.release_idle(leg);
            }
            if let Object::Tunnel(t) = o {
                t.shrink_buffers();
            }
        }
        n += self.net.sockets.release();
        self.stats.socket_buffers_released += n as u64;
    }

    /// When the engine next needs [`Engine::poll`] without new frames: now (frames
    /// still queued), at its earliest timer or next-hop pass, or never.
    pub fn next_wake(&self, now: i64) -> Option<i64> {
        if self.net.pending() || !self.dirty_tunnels.is_empty() {
            return Some(now);
        }
        let sweep =
            (!self.objects.is_empty() || !self.net.sockets.is_empty()).then_some(self.next_release);
        [
            self.timers.next(),
            self.neigh.next_pass(),
            self.holds.next(self.index.hold_us(), now),
            sweep,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// The counters, with the live figures brought up to date.
    pub fn counters(&mut self) -> &Local {
        self.stats.live_connections = self.live.connections;
        self.stats.hbone_tunnels_live = self.live.tunnels;
        self.stats.tx_packets = self.net.tx.packets;
        self.stats.tx_no_frame = self.net.tx.no_frame;
        self.stats.sockets_reused = self.net.sockets.reused;
        self.stats.sockets_pooled = self.net.sockets.len() as u64;
        self.stats.unknown_source_holding = self.holds.len() as u64;
        self.stats.hbone_pool_tunnels = self.pool.len() as u64;
        &self.stats
    }

    /// Up to `n` live connections with their legs' TCP states, for `stats`.
    pub fn live_sample(&self, n: usize, now: i64) -> Vec<String> {
        self.objects
            .values()
            .filter_map(|o| match o {
                Object::Plain(c) => Some(c.describe(now)),
                Object::Stream(s) => Some(s.describe()),
                Object::Tunnel(_) => None,
            })
            .take(n)
            .collect()
    }

    /// Bytes of every leg's and pooled socket's buffers resident now (`mincore` per
    /// buffer: for tests and diagnostics, not the packet path).
    pub fn buffers_resident(&mut self) -> usize {
        let legs: usize = self
            .objects
            .values_mut()
            .flat_map(|o| o.legs_mut().iter().map(Leg::resident))
            .sum();
        legs + self.net.sockets.resident()
    }

    /// Live flow-table keys (legs).
    pub fn live_keys(&self) -> usize {
        self.flows.len()
    }

    /// Orderly stop: resets every connection and tunnel so no peer waits for a timeout.
    pub fn shutdown(&mut self, now: i64) {
        let keys: Vec<ObjKey> = self.objects.keys().collect();
        for &key in &keys {
            if let Some(o) = self.objects.get_mut(key) {
                for leg in o.legs_mut() {
                    leg.abort();
                }
            }
        }
        for key in keys {
            self.service(key, now);
        }
        self.net.flush();
    }

    /// Ends a connection's life in the books: its access log line (unless `log` is
    /// false: a rate-limited refusal) and its Istio metrics. `refused`: it never
    /// opened, so it counts as opened and closed at once.
    pub(crate) fn record(&mut self, r: Record, refused: bool, log: bool) {
        if log {
            r.emit();
        }
        self.traffic.closed(&r, refused);
    }

    /// Counts a connection opened (Istio's `istio_tcp_connections_opened_total`).
    pub(crate) fn record_open(&mut self, meta: &Meta) {
        self.traffic.opened(meta);
    }

    /// Records a TLS handshake's duration.
    pub(crate) fn observe_handshake(&mut self, us: i64) {
        self.handshake.observe(us);
        self.hist_changed = true;
    }

    /// Records a connection's set-up time.
    pub(crate) fn observe_connect(&mut self, us: i64) {
        self.connect.observe(us);
        self.hist_changed = true;
    }

    /// Who a new connection from `src` to `dst` is between. `src_identity`: the
    /// source's identity is established (a workload served here, captured on its own
    /// link; HBONE sources pass their verified identity with
    /// [`Engine::meta_hbone`]). The destination's identity is the one the tables give
    /// its workload.
    pub(crate) fn meta_plain(
        &self,
        src: std::net::SocketAddr,
        dst: std::net::SocketAddr,
        direction: Direction,
        src_identity: bool,
    ) -> Meta {
        let mut s = self.index.party(src.ip());
        if !src_identity {
            s.identity = None;
        }
        Meta {
            src_addr: src,
            src: s,
            dst_addr: dst,
            dst_hbone_addr: None,
            dst_service: None,
            dst: self.index.party(dst.ip()),
            direction,
            mtls: false,
        }
    }

    /// [`Engine::meta_plain`] for an HBONE stream to `target` (carried to
    /// `target_ip:15008`): `src_identity` is the source's identity (outbound: the local
    /// workload's; inbound: the peer's, verified), `dst_identity` the destination's
    /// (outbound: the one required of the peer; inbound: our workload's).
    pub(crate) fn meta_hbone(
        &self,
        src: std::net::SocketAddr,
        target: Option<std::net::SocketAddr>,
        hbone_dst: std::net::SocketAddr,
        direction: Direction,
        src_identity: Option<&str>,
        dst_identity: Option<&str>,
    ) -> Meta {
        let mut s = self.index.party(src.ip());
        s.identity = src_identity.map(Into::into);
        let mut d = self.index.party(target.map_or(hbone_dst.ip(), |t| t.ip()));
        if let Some(id) = dst_identity {
            d.identity = Some(id.into());
        }
        Meta {
            src_addr: src,
            src: s,
            dst_addr: std::net::SocketAddr::new(hbone_dst.ip(), proxy::HBONE_PORT),
            dst_hbone_addr: target,
            dst_service: None,
            dst: d,
            direction,
            mtls: true,
        }
    }

    /// What changed for the operator's endpoints since the last call: the Istio
    /// metrics (when changed) and the histograms (when changed).
    pub fn take_ops(&mut self) -> OpsUpdate {
        let h = std::mem::take(&mut self.hist_changed).then_some((self.handshake, self.connect));
        (self.traffic.take_changed(), h)
    }

    /// The worker's tunnels and pool, for `/config_dump`.
    pub fn tunnels_json(&self) -> (Vec<serde_json::Value>, Vec<serde_json::Value>) {
        let tunnels = self
            .objects
            .values()
            .filter_map(|o| match o {
                Object::Tunnel(t) => Some(t.to_json()),
                _ => None,
            })
            .collect();
        (tunnels, self.pool.to_json())
    }

    /// The address's workload name, for logs ("" when unknown).
    pub(crate) fn workload_of(&self, ip: IpAddr) -> String {
        self.index
            .get(&ip)
            .map(|a| self.index.workload_name(a.workload))
            .unwrap_or_default()
    }
}
