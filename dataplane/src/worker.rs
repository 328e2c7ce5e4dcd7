//! The run-to-completion loop of one worker (one per RX queue, pinned to a core).
//!
//! Each iteration: check the table generation (one acquire load); for every interface,
//! take a batch from the AF_XDP RX ring, classify each frame (`wire`), find its leg with
//! one hash probe and run smoltcp on it, splice, transmit into the TX ring; then run
//! due timers, frames handed over by other workers, and pending neighbour resolutions;
//! flush TX rings. Nothing on this path takes a lock.
//!
//! Flow ownership: the worker that owns a flow is `hash(4-tuple as received) % workers`.
//! A worker that receives another's packet hands the frame over through a lock-free
//! queue (counted: `handover_out`/`handover_in`). For the connections it opens, a worker
//! picks the local port so that the replies hash to itself, so only the first leg's
//! packets can need a handover (on NICs whose RSS could be steered the same way, none).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use ahash::AHashMap;
use crossbeam::queue::ArrayQueue;
use slab::Slab;
use smoltcp::iface::{Interface, PollResult, SocketSet};
use smoltcp::time::Instant;
use smoltcp::wire::IpListenEndpoint;
use tracing::{debug, info, warn};
use xdpmesh_shm::WorkerSlot;

use crate::identity::IdentityStore;
use crate::metrics::{Local, Shared};
use crate::stack::{self, Buffers, Leg, LegDevice};
use crate::state::Index;
use crate::wire::{self, FlowKey, Mac, TcpFrame};
use crate::xsk::{self, RxPart, TxPart};

#[path = "worker_hbone.rs"]
mod hbone_path;
use hbone_path::{HConn, PoolKey, Tunnel};
pub use hbone_path::{HboneLimits, HBONE_PORT};

/// What a flow-table entry points at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FlowRef {
    /// Leg 0 or 1 of a plain TCP connection.
    Leg(usize, u8),
    /// The TCP leg of an HBONE stream connection.
    HLeg(usize),
    /// The TCP leg carrying an HBONE tunnel.
    Tunnel(usize),
}

/// An object with its own timer and neighbour resolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Obj {
    Conn(usize),
    HConn(usize),
    Tunnel(usize),
}

/// A network interface as the worker sees it.
#[derive(Debug, Clone)]
pub struct PortSpec {
    /// Name.
    pub name: String,
    /// Index.
    pub ifindex: u32,
    /// Our MAC on it.
    pub mac: Mac,
    /// Our IPv4 address on it (ARP sender), if any.
    pub ipv4: Option<std::net::Ipv4Addr>,
}

/// A frame handed from one worker to the flow's owner.
#[derive(Debug)]
pub struct Handover {
    port: usize,
    bytes: Vec<u8>,
}

/// Capacity of each worker's handover queue (frames).
pub const HANDOVER_QUEUE: usize = 4096;

/// Looks up a next hop's MAC outside the worker (XDP's ARP snoop map, the kernel's table).
pub type Resolver = Box<dyn FnMut(u32, IpAddr) -> Option<Mac> + Send>;

/// How a worker is set up.
pub struct WorkerSetup {
    /// Worker index (= RX queue).
    pub id: u32,
    /// Number of workers.
    pub workers: u32,
    /// Interfaces, with this worker's sockets on its queue.
    pub ports: Vec<(PortSpec, RxPart, TxPart)>,
    /// Socket buffers.
    pub buffers: Buffers,
    /// Spin instead of sleeping in poll().
    pub busy_poll: bool,
    /// Table slot.
    pub shm: WorkerSlot,
    /// Own inbox and everyone's inboxes (indexed by worker).
    pub inboxes: Vec<Arc<ArrayQueue<Handover>>>,
    /// Next-hop resolver.
    pub resolver: Resolver,
    /// Shared counters.
    pub shared: Arc<Shared>,
    /// Stop flag.
    pub stop: Arc<AtomicBool>,
    /// Identity updates from the main thread (HBONE certificates).
    pub identities: crossbeam::channel::Receiver<Arc<IdentityStore>>,
    /// HBONE pool limits.
    pub hbone: HboneLimits,
}

struct Resolve {
    obj: Obj,
    port: usize,
    nexthop: IpAddr,
    started: i64,
    last_request: i64,
}

struct Conn {
    legs: [Leg; 2],
    scheduled: Option<i64>,
    /// Since when one leg has finished and the other has not.
    half_dead_since: Option<i64>,
    started: std::time::Instant,
    bytes: [u64; 2],
}

impl Conn {
    fn describe(&self) -> String {
        let [l0, l1] = &self.legs;
        format!(
            "{} -> {} [{:?}{}] | {} -> {} [{:?}{}] age {} ms, moved {}/{} B",
            l0.key.src,
            l0.key.dst,
            l0.state(),
            if l0.closed_by_us { ", closed" } else { "" },
            l1.key.dst,
            l1.key.src,
            l1.state(),
            if l1.dst_mac.is_none() {
                ", resolving"
            } else if l1.closed_by_us {
                ", closed"
            } else {
                ""
            },
            self.started.elapsed().as_millis(),
            self.bytes[0],
            self.bytes[1],
        )
    }
}

/// Everything but the RX halves (split so RX batches can borrow the rest mutably).
struct Engine {
    id: u32,
    workers: u32,
    specs: Vec<PortSpec>,
    txs: Vec<TxPart>,
    iface: Interface,
    index: Index,
    flows: AHashMap<FlowKey, FlowRef>,
    conns: Slab<Conn>,
    hconns: Slab<HConn>,
    tunnels: Slab<Tunnel>,
    pools: AHashMap<PoolKey, Vec<usize>>,
    dirty_tunnels: Vec<usize>,
    ids: Arc<IdentityStore>,
    client_configs: AHashMap<(String, String), Arc<rustls::ClientConfig>>,
    server_configs: AHashMap<String, Arc<rustls::ServerConfig>>,
    hbone_limits: HboneLimits,
    rng: u64,
    timers: BinaryHeap<Reverse<(i64, Obj)>>,
    waiting: Vec<Resolve>,
    neigh: AHashMap<(usize, IpAddr), Mac>,
    /// Keys of recently freed connections (see [`LINGER_US`]), with their expiry.
    recent: AHashMap<FlowKey, i64>,
    recent_order: VecDeque<(i64, FlowKey)>,
    resolver: Resolver,
    empty: SocketSet<'static>,
    buffers: Buffers,
    inboxes: Vec<Arc<ArrayQueue<Handover>>>,
    /// Next candidate local port for outbound legs, for delivery legs.
    next_port: [u16; 2],
    epoch: std::time::Instant,
    stats: Local,
}

/// How long the keys of a freed connection are remembered. Connection state is freed
/// as soon as both legs finished (no TIME-WAIT sockets); segments that still arrive
/// (reordered by a handover, duplicate ACKs) are dropped silently and counted as
/// `late_segments` instead of being answered with a reset.
const LINGER_US: i64 = 2_000_000;
/// At most this many lingering keys (oldest forgotten first): bounded memory.
const LINGER_MAX: usize = 65_536;
/// A connection with one leg finished is aborted if the other leg's peer has not
/// closed after this long (Linux's `tcp_fin_timeout` for orphaned FIN-WAIT-2).
const HALF_DEAD_US: i64 = 60_000_000;
/// Local ports of legs opened towards another gateway (the source gateway's side).
const OUTBOUND_PORTS: std::ops::RangeInclusive<u16> = 20_000..=39_999;
/// Local ports of legs delivering to a workload served here (the destination side).
/// Disjoint from [`OUTBOUND_PORTS`]: the destination gateway cannot know which ports
/// the source gateway picked, and the same 4-tuple live on both links (once in each
/// orientation) stalled connections in testing.
const DELIVERY_PORTS: std::ops::RangeInclusive<u16> = 40_000..=59_999;
/// Give up resolving a next hop after this long.
const RESOLVE_TIMEOUT_US: i64 = 3_000_000;
/// Re-send an ARP request this often while resolving.
const RESOLVE_RETRY_US: i64 = 200_000;

/// Runs a worker until the stop flag is set.
pub fn run(setup: WorkerSetup) {
    let WorkerSetup {
        id,
        workers,
        ports,
        buffers,
        busy_poll,
        mut shm,
        inboxes,
        resolver,
        shared,
        stop,
        identities,
        hbone,
    } = setup;
    let epoch = std::time::Instant::now();
    let mut rxs = Vec::new();
    let mut txs = Vec::new();
    let mut specs = Vec::new();
    for (spec, rx, tx) in ports {
        specs.push(spec);
        rxs.push(rx);
        txs.push(tx);
    }
    let mut e = Engine {
        id,
        workers,
        specs,
        txs,
        iface: stack::new_interface(Instant::from_micros(0)),
        index: Index::default(),
        flows: AHashMap::new(),
        conns: Slab::new(),
        hconns: Slab::new(),
        tunnels: Slab::new(),
        pools: AHashMap::new(),
        dirty_tunnels: Vec::new(),
        ids: Arc::new(IdentityStore::empty()),
        client_configs: AHashMap::new(),
        server_configs: AHashMap::new(),
        hbone_limits: hbone,
        rng: 0x2545_f491_4f6c_dd1d ^ (u64::from(std::process::id()) << 16) ^ u64::from(id),
        timers: BinaryHeap::new(),
        waiting: Vec::new(),
        neigh: AHashMap::new(),
        recent: AHashMap::new(),
        recent_order: VecDeque::new(),
        resolver,
        empty: SocketSet::new(Vec::new()),
        buffers,
        inboxes,
        next_port: {
            // Per-process, per-worker start: restarts do not walk the same sequence
            // again straight into peers' TIME-WAIT state.
            let seed = (std::process::id() as u16) ^ (id as u16).wrapping_mul(7919);
            [
                OUTBOUND_PORTS.start() + seed % OUTBOUND_PORTS.len() as u16,
                DELIVERY_PORTS.start() + seed % DELIVERY_PORTS.len() as u16,
            ]
        },
        epoch,
        stats: Local::default(),
    };
    let inbox = e.inboxes[id as usize].clone();
    let mut last_publish = 0i64;
    let mut last_sample = 0i64;
    let mut last_resolve = 0i64;
    while !stop.load(Ordering::Relaxed) {
        e.stats.loop_iterations += 1;
        let now = e.now();
        if shm.changed().is_some() {
            e.reload_tables(&mut shm);
        }
        if let Ok(ids) = identities.try_recv() {
            e.client_configs.clear();
            e.server_configs.clear();
            debug!(
                worker = id,
                identities = ids.len(),
                generation = ids.generation,
                "identities loaded"
            );
            e.ids = ids;
        }
        let mut work = 0;
        for (p, rx) in rxs.iter_mut().enumerate() {
            work += rx.recv(|frame| e.on_frame(p, frame, now, true));
        }
        while let Some(h) = inbox.pop() {
            e.stats.handover_in += 1;
            e.on_frame(h.port, &h.bytes, now, false);
            work += 1;
        }
        work += e.run_timers(now);
        work += e.pump_dirty_tunnels(now);
        e.expire_recent(now);
        if !e.waiting.is_empty() && now - last_resolve >= 1_000 {
            last_resolve = now;
            e.resolve_pending(now);
        }
        for tx in &mut e.txs {
            tx.flush();
        }
        // Counters: every 100 ms under load, within 10 ms of going idle (so a reader
        // sees the final figures soon after traffic stops). The live sample formats
        // addresses and states, which cost a quarter of the worker's time when it ran
        // on every idle iteration: at most every 250 ms.
        let since = now - last_publish;
        if since >= 100_000 || (work == 0 && since >= 10_000) {
            last_publish = now;
            e.stats.live_connections = (e.conns.len() + e.hconns.len()) as u64;
            e.stats.hbone_tunnels_live = e.tunnels.len() as u64;
            shared.publish(&e.stats);
            if now - last_sample >= 250_000 {
                last_sample = now;
                if let Ok(mut sample) = shared.live_sample.lock() {
                    sample.clear();
                    sample.extend(e.conns.iter().take(8).map(|(_, c)| c.describe()));
                    sample.extend(e.hconns.iter().take(8).map(|(_, h)| h.describe()));
                }
            }
        }
        if work == 0 && !busy_poll {
            let pending_tx = e.txs.iter().any(|t| t.pending() > 0);
            let timeout_us = if pending_tx || !e.waiting.is_empty() {
                0
            } else {
                // Handed-over frames do not wake the poll: cap the sleep with several
                // workers.
                let cap = if workers > 1 { 1_000 } else { 10_000 };
                let now = e.now();
                e.timers
                    .peek()
                    .map_or(cap, |Reverse((t, _))| (t - now).clamp(0, cap))
            };
            if timeout_us > 0 {
                let refs: Vec<&RxPart> = rxs.iter().collect();
                xsk::wait_readable(&refs, timeout_us);
            }
        } else if work == 0 {
            std::hint::spin_loop();
        }
    }
    // Orderly stop: reset every connection so no peer waits for a timeout.
    let now = e.now();
    let ids: Vec<usize> = e.conns.iter().map(|(i, _)| i).collect();
    for cid in ids {
        if let Some(c) = e.conns.get_mut(cid) {
            for l in &mut c.legs {
                l.socket().abort();
                l.closed_by_us = true;
            }
        }
        e.service(cid, now);
    }
    let hids: Vec<usize> = e.hconns.iter().map(|(i, _)| i).collect();
    for hid in hids {
        if let Some(h) = e.hconns.get_mut(hid) {
            h.tcp.socket().abort();
        }
        e.service_hconn(hid, now);
    }
    let tids: Vec<usize> = e.tunnels.iter().map(|(i, _)| i).collect();
    for tid in tids {
        if let Some(t) = e.tunnels.get_mut(tid) {
            t.leg.socket().abort();
        }
        e.egress(Obj::Tunnel(tid), now);
    }
    for tx in &mut e.txs {
        tx.flush();
    }
    e.stats.live_connections = (e.conns.len() + e.hconns.len()) as u64;
    shared.publish(&e.stats);
    info!(worker = id, "worker stopped");
}

impl Engine {
    fn now(&self) -> i64 {
        self.epoch.elapsed().as_micros() as i64
    }

    fn reload_tables(&mut self, shm: &mut WorkerSlot) {
        match shm.load() {
            Ok(Some((g, t))) => {
                self.index = Index::build(g, t);
                self.stats.table_generation = g;
                shm.ack(g);
                debug!(worker = self.id, generation = g, "tables loaded");
            }
            Ok(None) => {}
            Err(err) => {
                // Keep the tables in force; acknowledge so the writer is not blocked.
                self.stats.table_errors += 1;
                warn!(worker = self.id, %err, "rejected a table generation; keeping generation {}", self.index.generation);
                if let Some(g) = shm.changed() {
                    shm.ack(g);
                }
            }
        }
    }

    fn on_frame(&mut self, port: usize, frame: &[u8], now: i64, check_owner: bool) {
        self.stats.rx_packets += 1;
        self.stats.rx_bytes += frame.len() as u64;
        let t = match wire::parse_tcp_frame(frame) {
            Ok(t) => t,
            Err(reason) => {
                self.stats.rx_dropped[reason.index()] += 1;
                return;
            }
        };
        if check_owner && self.workers > 1 {
            let owner = t.key.owner_hash() % self.workers;
            if owner != self.id {
                let h = Handover {
                    port,
                    bytes: frame.to_vec(),
                };
                if self.inboxes[owner as usize].push(h).is_ok() {
                    self.stats.handover_out += 1;
                } else {
                    self.stats.handover_dropped += 1;
                }
                return;
            }
        }
        let ip = &frame[t.ip_offset..t.ip_offset + t.ip_len];
        match self.flows.get(&t.key).copied() {
            Some(FlowRef::Leg(cid, leg)) => {
                self.ingress_leg(Obj::Conn(cid), usize::from(leg), ip, t.src_mac, now);
                self.service(cid, now);
            }
            Some(FlowRef::HLeg(hid)) => {
                self.ingress_leg(Obj::HConn(hid), 0, ip, t.src_mac, now);
                self.service_hconn(hid, now);
            }
            Some(FlowRef::Tunnel(tid)) => {
                self.ingress_leg(Obj::Tunnel(tid), 0, ip, t.src_mac, now);
                self.pump_tunnel(tid, now);
            }
            None if t.flags.syn && !t.flags.ack => {
                self.recent.remove(&t.key);
                self.accept(port, &t, ip, now)
            }
            None if self.recent.contains_key(&t.key) => {
                self.stats.late_segments += 1;
                debug!(worker = self.id, src = %t.key.src, dst = %t.key.dst, flags = ?t.flags, port = %self.specs[port].name, "late segment of a freed connection: dropped");
            }
            None => {
                self.stats.no_flow_resets += 1;
                debug!(worker = self.id, src = %t.key.src, dst = %t.key.dst, flags = ?t.flags, port = %self.specs[port].name, "segment for no connection: answered with a reset");
                self.reset(port, t.src_mac, ip, now);
            }
        }
    }

    /// Lets smoltcp answer a segment no connection owns (it replies with a RST unless
    /// the segment is one).
    fn reset(&mut self, port: usize, dst_mac: Mac, ip: &[u8], now: i64) {
        let mut dev = LegDevice {
            rx: Some(ip),
            tx: &mut self.txs[port],
            src_mac: self.specs[port].mac,
            dst_mac,
            sent: &mut self.stats.tx_packets,
            no_frame: &mut self.stats.tx_no_frame,
        };
        self.iface
            .poll_ingress_single(Instant::from_micros(now), &mut dev, &mut self.empty);
    }

    /// Hands a received IP packet to a leg's socket: leg `which` (0 or 1) of a plain
    /// connection, or the TCP leg of an HBONE stream connection or tunnel. The leg
    /// learns its next hop from the frame when it has none yet.
    fn ingress_leg(&mut self, obj: Obj, which: usize, ip: &[u8], src_mac: Mac, now: i64) {
        let l = match obj {
            Obj::Conn(cid) => match self.conns.get_mut(cid) {
                Some(c) => &mut c.legs[which],
                None => return,
            },
            Obj::HConn(hid) => match self.hconns.get_mut(hid) {
                Some(h) => &mut h.tcp,
                None => return,
            },
            Obj::Tunnel(tid) => match self.tunnels.get_mut(tid) {
                Some(t) => &mut t.leg,
                None => return,
            },
        };
        let dst_mac = *l.dst_mac.get_or_insert(src_mac);
        let mut dev = LegDevice {
            rx: Some(ip),
            tx: &mut self.txs[l.port],
            src_mac: self.specs[l.port].mac,
            dst_mac,
            sent: &mut self.stats.tx_packets,
            no_frame: &mut self.stats.tx_no_frame,
        };
        self.iface
            .poll_ingress_single(Instant::from_micros(now), &mut dev, &mut l.sockets);
    }

    /// Forgets a freed leg's key: out of the flow table, into the lingering set.
    fn forget_key(&mut self, key: FlowKey) {
        self.flows.remove(&key);
        if self.recent_order.len() >= LINGER_MAX {
            if let Some((_, old)) = self.recent_order.pop_front() {
                self.recent.remove(&old);
            }
        }
        let expiry = self.now() + LINGER_US;
        self.recent.insert(key, expiry);
        self.recent_order.push_back((expiry, key));
    }

    /// Splices, transmits and reschedules one connection; frees it when both legs end.
    fn service(&mut self, cid: usize, now: i64) {
        let Some(conn) = self.conns.get_mut(cid) else {
            return;
        };
        let pumped = stack::pump(&mut conn.legs);
        conn.bytes[0] += pumped.down_to_up as u64;
        conn.bytes[1] += pumped.up_to_down as u64;
        self.stats.bytes_downstream_to_upstream += pumped.down_to_up as u64;
        self.stats.bytes_upstream_to_downstream += pumped.up_to_down as u64;
        if pumped.reset {
            self.stats.reset_connections += 1;
        }
        if stack::half_finished(&conn.legs) {
            let since = *conn.half_dead_since.get_or_insert(now);
            if now - since >= HALF_DEAD_US {
                stack::abort(&mut conn.legs);
            }
        }
        let ts = Instant::from_micros(now);
        let mut next: Option<i64> = conn.half_dead_since.map(|s| s + HALF_DEAD_US);
        for l in &mut conn.legs {
            let Some(dst_mac) = l.dst_mac else { continue };
            let mut dev = LegDevice {
                rx: None,
                tx: &mut self.txs[l.port],
                src_mac: self.specs[l.port].mac,
                dst_mac,
                sent: &mut self.stats.tx_packets,
                no_frame: &mut self.stats.tx_no_frame,
            };
            while self.iface.poll_egress(ts, &mut dev, &mut l.sockets)
                == PollResult::SocketStateChanged
            {}
            if let Some(at) = self.iface.poll_at(ts, &l.sockets) {
                let at = at.total_micros().max(now);
                next = Some(next.map_or(at, |n| n.min(at)));
            }
        }
        if stack::finished(&conn.legs) {
            self.remove(cid);
            return;
        }
        if let Some(at) = next {
            if conn.scheduled.is_none_or(|s| at < s) {
                conn.scheduled = Some(at);
                self.timers.push(Reverse((at, Obj::Conn(cid))));
            }
        }
    }

    fn remove(&mut self, cid: usize) {
        let conn = self.conns.remove(cid);
        for l in &conn.legs {
            self.forget_key(l.key);
        }
        self.waiting.retain(|w| w.obj != Obj::Conn(cid));
        self.stats.closed_connections += 1;
        let (client, server) = (conn.legs[0].key.src, conn.legs[0].key.dst);
        let name = |ip: IpAddr| {
            self.index
                .get(&ip)
                .map(|a| self.index.workload_name(a.workload))
                .unwrap_or_default()
        };
        info!(
            target: "access",
            src_addr = %client, src_workload = %name(client.ip()),
            dst_addr = %server, dst_workload = %name(server.ip()),
            bytes_sent = conn.bytes[0], bytes_recv = conn.bytes[1],
            duration_ms = conn.started.elapsed().as_millis() as u64,
            "connection complete"
        );
    }

    fn expire_recent(&mut self, now: i64) {
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

    /// Services the connections whose timer is due. Only entries due when it starts
    /// are taken: a connection that is due again at once (its TX ring is full, say)
    /// waits for the next loop iteration, after the TX rings were flushed.
    fn run_timers(&mut self, now: i64) -> usize {
        let mut due = Vec::new();
        while let Some(&Reverse((at, obj))) = self.timers.peek() {
            if at > now {
                break;
            }
            self.timers.pop();
            let scheduled = match obj {
                Obj::Conn(i) => self.conns.get_mut(i).map(|c| &mut c.scheduled),
                Obj::HConn(i) => self.hconns.get_mut(i).map(|h| &mut h.scheduled),
                Obj::Tunnel(i) => self.tunnels.get_mut(i).map(|t| &mut t.scheduled),
            };
            if let Some(sch) = scheduled {
                if *sch == Some(at) {
                    *sch = None;
                    due.push(obj);
                }
            }
        }
        for &obj in &due {
            match obj {
                Obj::Conn(i) => self.service(i, now),
                Obj::HConn(i) => self.service_hconn(i, now),
                Obj::Tunnel(i) => self.pump_tunnel(i, now),
            }
        }
        due.len()
    }

    fn port_of(&self, ifindex: u32) -> Option<usize> {
        self.specs.iter().position(|s| s.ifindex == ifindex)
    }

    /// A local port for a connection from `local_ip` to `remote` whose replies hash to
    /// this worker and whose 4-tuple is free.
    fn pick_port(
        &mut self,
        remote: SocketAddr,
        local_ip: IpAddr,
        local_delivery: bool,
    ) -> Option<u16> {
        let range = if local_delivery {
            DELIVERY_PORTS
        } else {
            OUTBOUND_PORTS
        };
        let next = if local_delivery {
            &mut self.next_port[1]
        } else {
            &mut self.next_port[0]
        };
        for _ in 0..range.len() {
            let p = *next;
            *next = if p >= *range.end() {
                *range.start()
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
            let free = !self.flows.contains_key(&key)
                && !self.recent.contains_key(&key)
                && !self.flows.contains_key(&rev)
                && !self.recent.contains_key(&rev);
            if free && (self.workers <= 1 || key.owner_hash() % self.workers == self.id) {
                return Some(p);
            }
        }
        None
    }

    fn lookup_neighbor(&mut self, port: usize, ip: IpAddr) -> Option<Mac> {
        if let Some(m) = self.neigh.get(&(port, ip)) {
            return Some(*m);
        }
        let m = (self.resolver)(self.specs[port].ifindex, ip)?;
        self.neigh.insert((port, ip), m);
        Some(m)
    }

    fn send_arp(&mut self, port: usize, target: IpAddr) {
        let (IpAddr::V4(target), Some(src_ip)) = (target, self.specs[port].ipv4) else {
            return;
        };
        let mac = self.specs[port].mac;
        let mut buf = [0u8; wire::ARP_FRAME_LEN];
        wire::write_arp_request(&mut buf, mac, src_ip, target);
        if self.txs[port]
            .send(buf.len(), |f| f.copy_from_slice(&buf))
            .is_some()
        {
            self.stats.neighbor_requests += 1;
        }
    }

    fn accept(&mut self, port: usize, t: &TcpFrame, ip: &[u8], now: i64) {
        let (client, target) = (t.key.src, t.key.dst);
        let Some(dst) = self.index.get(&target.ip()).copied() else {
            // Not a mesh destination: XDP diverts only mesh traffic, so this is a table
            // race or a stray segment. Refuse it rather than guess a route.
            self.stats.no_route += 1;
            self.reset(port, t.src_mac, ip, now);
            return;
        };
        if dst.local && target.port() == HBONE_PORT {
            self.accept_inbound_hbone(port, t, ip, now);
            return;
        }
        let Some(up_port) = self.port_of(dst.route.ifindex) else {
            self.stats.no_route += 1;
            debug!(worker = self.id, %target, ifindex = dst.route.ifindex, "no interface for the route to the destination");
            self.reset(port, t.src_mac, ip, now);
            return;
        };
        if dst.local {
            // Plain TCP to a workload served here: no authenticated identity, so only
            // policies without `from` can allow it (as Istio treats plaintext).
            if let Err(denied) = self.index.authorize(dst.workload, target.port(), None) {
                self.stats.policy_denied += 1;
                let workload = self.index.workload_name(dst.workload);
                warn!(target: "access", src = %client, dst = %target, %workload, reason = %denied, "connection refused (reset): authorization policy");
                self.reset(port, t.src_mac, ip, now);
                return;
            }
        }
        if !dst.local && dst.protocol == xdpmesh_shm::Protocol::Hbone {
            self.accept_outbound_hbone(port, t, ip, now, up_port);
            return;
        }
        let Some(local_port) = self.pick_port(target, client.ip(), dst.local) else {
            self.stats.upstream_failures += 1;
            self.reset(port, t.src_mac, ip, now);
            return;
        };
        let up_key = FlowKey {
            src: target,
            dst: SocketAddr::new(client.ip(), local_port),
        };
        let nexthop = dst.route.via.unwrap_or(target.ip());
        let up_mac = self.lookup_neighbor(up_port, nexthop);

        let mut leg0 = Leg::new(self.buffers, port, Some(t.src_mac), t.key);
        let listen = IpListenEndpoint {
            addr: Some(target.ip().into()),
            port: target.port(),
        };
        let mut leg1 = Leg::new(self.buffers, up_port, up_mac, up_key);
        let cx = self.iface.context();
        if leg0.socket().listen(listen).is_err()
            || leg1
                .socket()
                .connect(cx, (target.ip(), target.port()), (client.ip(), local_port))
                .is_err()
        {
            self.stats.upstream_failures += 1;
            self.reset(port, t.src_mac, ip, now);
            return;
        }
        let cid = self.conns.insert(Conn {
            legs: [leg0, leg1],
            scheduled: None,
            half_dead_since: None,
            started: std::time::Instant::now(),
            bytes: [0, 0],
        });
        self.flows.insert(t.key, FlowRef::Leg(cid, 0));
        self.flows.insert(up_key, FlowRef::Leg(cid, 1));
        self.stats.opened_connections += 1;
        if up_mac.is_none() {
            self.wait_for_neighbor(Obj::Conn(cid), up_port, nexthop, now);
        }
        self.ingress_leg(Obj::Conn(cid), 0, ip, t.src_mac, now);
        self.service(cid, now);
    }

    /// Parks an object whose next hop's MAC is unknown; an ARP request goes out now.
    fn wait_for_neighbor(&mut self, obj: Obj, port: usize, nexthop: IpAddr, now: i64) {
        self.send_arp(port, nexthop);
        self.waiting.push(Resolve {
            obj,
            port,
            nexthop,
            started: now,
            last_request: now,
        });
    }

    /// The leg an object sends through towards a resolved next hop.
    fn resolving_leg(&mut self, obj: Obj) -> Option<&mut Leg> {
        match obj {
            Obj::Conn(i) => self.conns.get_mut(i).map(|c| &mut c.legs[1]),
            Obj::HConn(i) => self.hconns.get_mut(i).map(|h| &mut h.tcp),
            Obj::Tunnel(i) => self.tunnels.get_mut(i).map(|t| &mut t.leg),
        }
    }

    fn service_obj(&mut self, obj: Obj, now: i64) {
        match obj {
            Obj::Conn(i) => self.service(i, now),
            Obj::HConn(i) => self.service_hconn(i, now),
            Obj::Tunnel(i) => self.pump_tunnel(i, now),
        }
    }

    fn resolve_pending(&mut self, now: i64) {
        let waiting = std::mem::take(&mut self.waiting);
        for mut r in waiting {
            if self.resolving_leg(r.obj).is_none() {
                continue;
            }
            if let Some(mac) = self.lookup_neighbor(r.port, r.nexthop) {
                if let Some(l) = self.resolving_leg(r.obj) {
                    l.dst_mac = Some(mac);
                }
                self.service_obj(r.obj, now);
            } else if now - r.started > RESOLVE_TIMEOUT_US {
                self.stats.neighbor_timeouts += 1;
                warn!(worker = self.id, nexthop = %r.nexthop, port = %self.specs[r.port].name, "next hop did not answer ARP; resetting the connection");
                // Like a failed connect: the leg closes and the other side is reset.
                if let Some(l) = self.resolving_leg(r.obj) {
                    l.socket().abort();
                }
                self.service_obj(r.obj, now);
            } else {
                if now - r.last_request >= RESOLVE_RETRY_US {
                    r.last_request = now;
                    self.send_arp(r.port, r.nexthop);
                }
                self.waiting.push(r);
            }
        }
    }
}
