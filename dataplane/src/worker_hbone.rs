//! HBONE in the worker: tunnels (a smoltcp TCP leg carrying mutual TLS 1.3 and HTTP/2,
//! driven by the sans-IO `xdpmesh-hbone` state machines) and stream connections (a TCP
//! leg spliced to one CONNECT stream of a tunnel). See DESIGN.md, "HBONE contract".
//!
//! Outbound (source gateway): the pod's connection is terminated as for plain TCP; a
//! stream is opened on a pooled client tunnel to `dst_ip:15008` (pool key: source
//! identity, destination identity, source and destination address; at most
//! `stream_cap` streams each; idle tunnels closed after `idle_timeout`). Data waits in
//! the pod leg's receive buffer (closing its window) until the server answered 200.
//!
//! Inbound (destination gateway): a connection to a served workload's port 15008 is a
//! server tunnel; each CONNECT is validated (authority = the address the connection was
//! accepted on, else 400; reserved ports 503), then a delivery leg is opened to the
//! workload from the client's own address, and 200 is sent only once it is established
//! (503 if it fails). Every refusal is logged with its reason before any byte flows.
//!
//! Backpressure: ciphertext moves into a tunnel leg only as far as its send buffer has
//! room, the TLS/HTTP/2 state machine accepts ciphertext only while its plaintext
//! buffers have room, and stream data moves only as far as HTTP/2 flow control allows,
//! so memory per tunnel and per stream stays bounded.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use http::StatusCode;
use smoltcp::iface::PollResult;
use smoltcp::socket::tcp;
use smoltcp::time::Instant;
use smoltcp::wire::IpListenEndpoint;
use tracing::{debug, info, warn};
use xdpmesh_hbone::conn::{
    ConnError, Event, HboneClientConn, HboneServerConn, Request, StreamError, StreamId,
};
use xdpmesh_hbone::identity::SpiffeId;
use xdpmesh_hbone::ConnectHeaders;

use super::{Engine, FlowRef, Obj};
use crate::stack::{self, leg_done, Leg, LegDevice};
use crate::wire::{FlowKey, TcpFrame};

/// The HBONE port.
pub const HBONE_PORT: u16 = 15008;

/// Pool key, as ztunnel's: (source identity, destination identity, source, destination).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PoolKey {
    src_id: String,
    dst_id: String,
    src_ip: IpAddr,
    dst_ip: IpAddr,
}

/// Tunnel limits.
#[derive(Debug, Clone, Copy)]
pub struct HboneLimits {
    /// Streams per pooled client connection.
    pub stream_cap: usize,
    /// Idle pooled connections are closed after this long (µs).
    pub idle_timeout_us: i64,
}

impl Default for HboneLimits {
    fn default() -> Self {
        HboneLimits {
            stream_cap: 100,
            idle_timeout_us: 300_000_000,
        }
    }
}

pub(super) enum Side {
    Client {
        conn: Box<HboneClientConn>,
        key: PoolKey,
    },
    Server {
        conn: Box<HboneServerConn>,
    },
}

/// Dispatches the calls both state machines share.
macro_rules! hb {
    ($side:expr, $c:ident => $e:expr) => {
        match $side {
            Side::Client { conn: $c, .. } => $e,
            Side::Server { conn: $c } => $e,
        }
    };
}

pub(super) struct Tunnel {
    pub leg: Leg,
    pub side: Side,
    /// Stream id → stream connection.
    pub streams: ahash::AHashMap<u32, usize>,
    pub scheduled: Option<i64>,
    pub idle_since: Option<i64>,
    fed_eof: bool,
    failed: bool,
    scratch: Vec<u8>,
}

pub(super) struct HConn {
    pub tcp: Leg,
    pub tunnel: usize,
    stream: StreamId,
    outbound: bool,
    established: bool,
    finished_by_us: bool,
    peer_finished: bool,
    stream_done: bool,
    pub scheduled: Option<i64>,
    /// Since when the stream is over while the TCP leg is not (bounded like a plain
    /// connection's half-dead state).
    half_dead_since: Option<i64>,
    started: std::time::Instant,
    bytes: [u64; 2],
    target: SocketAddr,
    peer: String,
}

impl HConn {
    pub fn describe(&self) -> String {
        format!(
            "hbone {} {} -> {} [{:?}] stream {} est={} fin_us={} peer_fin={} done={}",
            if self.outbound { "out" } else { "in" },
            self.tcp.key.src,
            self.target,
            self.tcp.state(),
            self.stream.0,
            self.established,
            self.finished_by_us,
            self.peer_finished,
            self.stream_done
        )
    }
}

fn spiffe(td: &str, ns: &str, sa: &str) -> Option<SpiffeId> {
    format!("spiffe://{td}/ns/{ns}/sa/{sa}").parse().ok()
}

/// A W3C traceparent with fresh random-looking ids (xorshift; tracing ids need no
/// cryptographic strength).
fn traceparent(state: &mut u64) -> String {
    let mut next = || {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        *state
    };
    format!("00-{:016x}{:016x}-{:016x}-01", next(), next(), next())
}

impl Engine {
    /// Identity of a workload address, from the tables.
    fn identity_of(&self, ip: IpAddr) -> Option<SpiffeId> {
        let a = self.index.get(&ip)?;
        let w = self.index.tables.workloads.get(a.workload as usize)?;
        spiffe(
            &self.index.tables.trust_domain,
            &w.namespace,
            &w.service_account,
        )
    }

    fn client_config(
        &mut self,
        src: &SpiffeId,
        dst: &SpiffeId,
    ) -> Result<Arc<rustls::ClientConfig>, String> {
        let k = (src.to_string(), dst.to_string());
        if let Some(c) = self.client_configs.get(&k) {
            return Ok(c.clone());
        }
        let cert = self.ids.cert(src).ok_or_else(|| {
            format!("no certificate for {src} (is xdpmesh-control publishing identities?)")
        })?;
        let c = xdpmesh_hbone::client_config(cert, &self.ids.roots, vec![dst.clone()])
            .map_err(|e| e.to_string())?;
        self.client_configs.insert(k, c.clone());
        Ok(c)
    }

    fn server_config(&mut self, own: &SpiffeId) -> Result<Arc<rustls::ServerConfig>, String> {
        let k = own.to_string();
        if let Some(c) = self.server_configs.get(&k) {
            return Ok(c.clone());
        }
        let cert = self.ids.cert(own).ok_or_else(|| {
            format!("no certificate for {own} (is xdpmesh-control publishing identities?)")
        })?;
        let c = xdpmesh_hbone::server_config(cert, &self.ids.roots, &self.ids.trust_domain)
            .map_err(|e| e.to_string())?;
        self.server_configs.insert(k, c.clone());
        Ok(c)
    }

    /// A pod connection to an HBONE workload served elsewhere: terminate it and open a
    /// stream on a pooled tunnel.
    pub(super) fn accept_outbound_hbone(
        &mut self,
        port: usize,
        t: &TcpFrame,
        ip: &[u8],
        now: i64,
        up_port: usize,
    ) {
        let (client, target) = (t.key.src, t.key.dst);
        let (Some(src_id), Some(dst_id)) =
            (self.identity_of(client.ip()), self.identity_of(target.ip()))
        else {
            warn!(%client, %target, "HBONE: source or destination has no identity in the tables; resetting");
            self.stats.hbone_refused += 1;
            self.reset(port, t.src_mac, ip, now);
            return;
        };
        let tid = match self.pooled_tunnel(&src_id, &dst_id, client.ip(), target.ip(), up_port, now)
        {
            Ok(tid) => tid,
            Err(reason) => {
                warn!(%client, %target, %reason, "HBONE: no tunnel; resetting the connection");
                self.stats.hbone_refused += 1;
                self.reset(port, t.src_mac, ip, now);
                return;
            }
        };
        let w = self.index.get(&client.ip()).map(|a| a.workload);
        let baggage = w
            .and_then(|w| self.index.tables.workloads.get(w as usize))
            .map(|w| {
                format!(
                    "k8s.cluster.name=Kubernetes,k8s.namespace.name={},k8s.pod.name={}",
                    w.namespace, w.name
                )
            });
        let headers = ConnectHeaders {
            forwarded_for: client,
            forwarded_host: None,
            baggage,
            traceparent: traceparent(&mut self.rng),
        };
        let Side::Client { conn, .. } = &mut self.tunnels[tid].side else {
            unreachable!("pooled tunnels are clients")
        };
        let stream = match conn.open_stream(target, &headers) {
            Ok(s) => s,
            Err(e) => {
                warn!(%client, %target, error = %e, "HBONE: opening a stream failed; resetting");
                self.stats.hbone_refused += 1;
                self.reset(port, t.src_mac, ip, now);
                return;
            }
        };
        let mut leg = Leg::new(self.buffers, port, Some(t.src_mac), t.key);
        let listen = IpListenEndpoint {
            addr: Some(target.ip().into()),
            port: target.port(),
        };
        let _ = leg.socket().listen(listen);
        let hid = self.hconns.insert(HConn {
            tcp: leg,
            tunnel: tid,
            stream,
            outbound: true,
            established: false,
            finished_by_us: false,
            peer_finished: false,
            stream_done: false,
            scheduled: None,
            half_dead_since: None,
            started: std::time::Instant::now(),
            bytes: [0, 0],
            target,
            peer: dst_id.to_string(),
        });
        self.tunnels[tid].streams.insert(stream.0, hid);
        self.tunnels[tid].idle_since = None;
        self.flows.insert(t.key, FlowRef::HLeg(hid));
        self.stats.opened_connections += 1;
        self.stats.hbone_streams += 1;
        self.ingress_leg(Obj::HConn(hid), 0, ip, t.src_mac, now);
        self.service_hconn(hid, now);
        self.pump_tunnel(tid, now);
    }

    fn pooled_tunnel(
        &mut self,
        src_id: &SpiffeId,
        dst_id: &SpiffeId,
        src_ip: IpAddr,
        dst_ip: IpAddr,
        up_port: usize,
        now: i64,
    ) -> Result<usize, String> {
        let key = PoolKey {
            src_id: src_id.to_string(),
            dst_id: dst_id.to_string(),
            src_ip,
            dst_ip,
        };
        let cap = self.hbone_limits.stream_cap;
        if let Some(tids) = self.pools.get(&key) {
            for &tid in tids {
                if let Some(Tunnel {
                    side: Side::Client { conn, .. },
                    failed: false,
                    ..
                }) = self.tunnels.get_mut(tid)
                {
                    if conn.active_streams() < cap && conn.can_open_stream() {
                        return Ok(tid);
                    }
                }
            }
        }
        let cfg = self.client_config(src_id, dst_id)?;
        let conn = HboneClientConn::new(cfg, dst_ip).map_err(|e| e.to_string())?;
        let remote = SocketAddr::new(dst_ip, HBONE_PORT);
        let local_port = self
            .pick_port(remote, src_ip, false)
            .ok_or("no free local port")?;
        let key_in = FlowKey {
            src: remote,
            dst: SocketAddr::new(src_ip, local_port),
        };
        let nexthop = self
            .index
            .get(&dst_ip)
            .and_then(|a| a.route.via)
            .unwrap_or(dst_ip);
        let mac = self.lookup_neighbor(up_port, nexthop);
        let mut leg = Leg::new(self.buffers, up_port, mac, key_in);
        let cx = self.iface.context();
        leg.socket()
            .connect(cx, remote, (src_ip, local_port))
            .map_err(|e| e.to_string())?;
        let tid = self.tunnels.insert(Tunnel {
            leg,
            side: Side::Client {
                conn: Box::new(conn),
                key: key.clone(),
            },
            streams: ahash::AHashMap::new(),
            scheduled: None,
            idle_since: None,
            fed_eof: false,
            failed: false,
            scratch: Vec::new(),
        });
        self.flows.insert(key_in, FlowRef::Tunnel(tid));
        self.pools.entry(key).or_default().push(tid);
        self.stats.hbone_tunnels_opened += 1;
        if mac.is_none() {
            self.wait_for_neighbor(Obj::Tunnel(tid), up_port, nexthop, now);
        }
        debug!(worker = self.id, %src_id, %dst_id, %dst_ip, "HBONE tunnel opening");
        Ok(tid)
    }

    /// A connection to a served workload's port 15008: the server side of a tunnel.
    pub(super) fn accept_inbound_hbone(&mut self, port: usize, t: &TcpFrame, ip: &[u8], now: i64) {
        let local = t.key.dst;
        let cfg = match self
            .identity_of(local.ip())
            .ok_or_else(|| "no identity".to_string())
            .and_then(|id| self.server_config(&id))
        {
            Ok(c) => c,
            Err(reason) => {
                warn!(peer = %t.key.src, %local, %reason, "HBONE inbound refused before TLS");
                self.stats.hbone_refused += 1;
                self.reset(port, t.src_mac, ip, now);
                return;
            }
        };
        let conn = match HboneServerConn::new(cfg, local.ip()) {
            Ok(c) => c,
            Err(e) => {
                warn!(%e, "HBONE server connection");
                self.reset(port, t.src_mac, ip, now);
                return;
            }
        };
        let mut leg = Leg::new(self.buffers, port, Some(t.src_mac), t.key);
        let _ = leg.socket().listen(IpListenEndpoint {
            addr: Some(local.ip().into()),
            port: local.port(),
        });
        let tid = self.tunnels.insert(Tunnel {
            leg,
            side: Side::Server {
                conn: Box::new(conn),
            },
            streams: ahash::AHashMap::new(),
            scheduled: None,
            idle_since: None,
            fed_eof: false,
            failed: false,
            scratch: Vec::new(),
        });
        self.flows.insert(t.key, FlowRef::Tunnel(tid));
        self.stats.hbone_tunnels_accepted += 1;
        self.ingress_leg(Obj::Tunnel(tid), 0, ip, t.src_mac, now);
        self.pump_tunnel(tid, now);
    }

    fn respond(&mut self, tid: usize, stream: StreamId, status: StatusCode) {
        if let Some(Tunnel {
            side: Side::Server { conn },
            ..
        }) = self.tunnels.get_mut(tid)
        {
            let _ = conn.respond(stream, status);
        }
        if status != StatusCode::OK {
            self.stats.hbone_refused += 1;
        }
        self.pump_tunnel_later(tid);
    }

    /// A CONNECT on a server tunnel.
    fn on_request(&mut self, tid: usize, req: Request, now: i64) {
        let Some(tunnel) = self.tunnels.get_mut(tid) else {
            return;
        };
        let Side::Server { conn } = &mut tunnel.side else {
            return;
        };
        let peer_ip = tunnel.leg.key.src.ip();
        let peer = req.peer_identity.to_string();
        let forwarded = req
            .headers
            .get("forwarded")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let validated = conn.validate(&req);
        let target = match validated {
            Ok(t) => t,
            Err(e) => {
                warn!(target: "access", %peer, src = %peer_ip, %forwarded, reason = %e, "HBONE request refused");
                self.respond(tid, req.stream, e.status());
                return;
            }
        };
        let served = self.index.get(&target.ip()).is_some_and(|a| a.local);
        if !served {
            warn!(target: "access", %peer, %target, "HBONE request refused (400): the target is not a workload served by this gateway");
            self.respond(tid, req.stream, StatusCode::BAD_REQUEST);
            return;
        }
        let Some(info) = self.index.get(&target.ip()).copied() else {
            return;
        };
        let id = &req.peer_identity;
        let principal = format!(
            "{}/ns/{}/sa/{}",
            id.trust_domain, id.namespace, id.service_account
        );
        let who = crate::state::Peer {
            principal: &principal,
            namespace: &id.namespace,
        };
        if let Err(denied) = self
            .index
            .authorize(info.workload, target.port(), Some(who))
        {
            self.stats.policy_denied += 1;
            let workload = self.index.workload_name(info.workload);
            warn!(target: "access", %peer, %target, %workload, reason = %denied, "HBONE request refused (401): authorization policy");
            self.respond(tid, req.stream, StatusCode::UNAUTHORIZED);
            return;
        }
        // Deliver from the client's own address (original source).
        let route = info.route;
        let Some(up_port) = self.port_of(route.ifindex) else {
            warn!(target: "access", %peer, %target, "HBONE request refused (503): no route to the workload");
            self.respond(tid, req.stream, StatusCode::SERVICE_UNAVAILABLE);
            return;
        };
        let Some(local_port) = self.pick_port(target, peer_ip, true) else {
            self.respond(tid, req.stream, StatusCode::SERVICE_UNAVAILABLE);
            return;
        };
        let key = FlowKey {
            src: target,
            dst: SocketAddr::new(peer_ip, local_port),
        };
        let nexthop = route.via.unwrap_or(target.ip());
        let mac = self.lookup_neighbor(up_port, nexthop);
        let mut leg = Leg::new(self.buffers, up_port, mac, key);
        let cx = self.iface.context();
        if leg
            .socket()
            .connect(cx, target, (peer_ip, local_port))
            .is_err()
        {
            self.respond(tid, req.stream, StatusCode::SERVICE_UNAVAILABLE);
            return;
        }
        let hid = self.hconns.insert(HConn {
            tcp: leg,
            tunnel: tid,
            stream: req.stream,
            outbound: false,
            established: false,
            finished_by_us: false,
            peer_finished: false,
            stream_done: false,
            scheduled: None,
            half_dead_since: None,
            started: std::time::Instant::now(),
            bytes: [0, 0],
            target,
            peer: peer.clone(),
        });
        self.tunnels[tid].streams.insert(req.stream.0, hid);
        self.flows.insert(key, FlowRef::HLeg(hid));
        self.stats.opened_connections += 1;
        self.stats.hbone_streams += 1;
        debug!(%peer, %target, %forwarded, "HBONE request accepted; connecting to the workload");
        if mac.is_none() {
            self.wait_for_neighbor(Obj::HConn(hid), up_port, nexthop, now);
        }
        self.service_hconn(hid, now);
    }

    /// Moves ciphertext in, drives TLS and HTTP/2, dispatches events, moves ciphertext
    /// out and transmits. Bounded: a few rounds per call.
    pub(super) fn pump_tunnel(&mut self, tid: usize, now: i64) {
        for _ in 0..4 {
            let mut events = Vec::new();
            let Some(t) = self.tunnels.get_mut(tid) else {
                return;
            };
            if !t.failed {
                let result = drive(t, &mut events);
                if let Err(e) = result {
                    t.failed = true;
                    self.stats.hbone_tunnel_failures += 1;
                    let peer = t.leg.key.src;
                    match e.identity_error() {
                        Some(ie) => warn!(%peer, reason = %ie, "HBONE tunnel refused: identity"),
                        None => warn!(%peer, reason = %e, "HBONE tunnel failed"),
                    }
                    t.leg.socket().abort();
                    t.leg.closed_by_us = true;
                    events.push(Event::Closed);
                }
            }
            let progressed = !events.is_empty();
            for ev in events {
                self.on_tunnel_event(tid, ev, now);
            }
            self.flush_tunnel(tid, now);
            if !progressed {
                break;
            }
        }
        self.finish_tunnel(tid, now);
    }

    fn on_tunnel_event(&mut self, tid: usize, ev: Event, now: i64) {
        let stream_conn = |s: &StreamId, tunnels: &slab::Slab<Tunnel>| {
            tunnels.get(tid).and_then(|t| t.streams.get(&s.0).copied())
        };
        match ev {
            Event::Connected => {
                if let Some(t) = self.tunnels.get(tid) {
                    let peer = hb!(&t.side, c => c.peer_identity().map(|p| p.to_string()))
                        .unwrap_or_default();
                    debug!(worker = self.id, %peer, "HBONE TLS established");
                }
            }
            Event::Request(req) => self.on_request(tid, *req, now),
            Event::Established(s) => {
                if let Some(hid) = stream_conn(&s, &self.tunnels) {
                    self.hconns[hid].established = true;
                    self.service_hconn(hid, now);
                }
            }
            Event::Refused(s, status) => {
                if let Some(hid) = stream_conn(&s, &self.tunnels) {
                    let h = &mut self.hconns[hid];
                    warn!(target: "access", src = %h.tcp.key.src, dst = %h.target, peer = %h.peer, %status, "HBONE CONNECT refused by the peer; resetting the connection");
                    h.stream_done = true;
                    self.stats.hbone_refused += 1;
                    self.service_hconn(hid, now);
                }
            }
            Event::Readable(s) | Event::Writable(s) => {
                if let Some(hid) = stream_conn(&s, &self.tunnels) {
                    self.service_hconn(hid, now);
                }
            }
            Event::PeerFinished(s) => {
                if let Some(hid) = stream_conn(&s, &self.tunnels) {
                    self.hconns[hid].peer_finished = true;
                    self.service_hconn(hid, now);
                }
            }
            Event::Reset(s, reason) => {
                if let Some(hid) = stream_conn(&s, &self.tunnels) {
                    let h = &mut self.hconns[hid];
                    // RST_STREAM NO_ERROR / CANCEL is an end of stream by contract.
                    if reason == h2_reason_no_error() || reason == h2_reason_cancel() {
                        h.peer_finished = true;
                    }
                    h.stream_done = true;
                    self.service_hconn(hid, now);
                }
            }
            Event::Closed => {
                let hids: Vec<usize> = self
                    .tunnels
                    .get(tid)
                    .map(|t| t.streams.values().copied().collect())
                    .unwrap_or_default();
                for hid in hids {
                    if let Some(h) = self.hconns.get_mut(hid) {
                        h.stream_done = true;
                    }
                    self.service_hconn(hid, now);
                }
                if let Some(t) = self.tunnels.get_mut(tid) {
                    t.failed = true;
                    if !leg_done(&t.leg) && !t.leg.closed_by_us {
                        stack::close(t.leg.socket());
                        t.leg.closed_by_us = true;
                    }
                }
            }
        }
    }

    /// Ciphertext out of the state machine into the tunnel leg (as far as it has room),
    /// then transmit and reschedule.
    fn flush_tunnel(&mut self, tid: usize, now: i64) {
        let Some(t) = self.tunnels.get_mut(tid) else {
            return;
        };
        loop {
            let s = t.leg.sockets.get_mut::<tcp::Socket>(t.leg.handle);
            if !s.may_send() {
                break;
            }
            let room = s.send_capacity() - s.send_queue();
            if room == 0 {
                break;
            }
            t.scratch.clear();
            let n = hb!(&mut t.side, c => c.take_ciphertext_max(&mut t.scratch, room));
            if n == 0 {
                break;
            }
            let sent = s.send_slice(&t.scratch).unwrap_or(0);
            debug_assert_eq!(sent, n);
        }
        self.egress(Obj::Tunnel(tid), now);
    }

    /// Frees a tunnel whose leg is finished; closes idle pooled tunnels.
    fn finish_tunnel(&mut self, tid: usize, now: i64) {
        let Some(t) = self.tunnels.get_mut(tid) else {
            return;
        };
        if t.streams.is_empty() && !t.failed {
            if let Side::Client { .. } = t.side {
                let since = *t.idle_since.get_or_insert(now);
                if now - since >= self.hbone_limits.idle_timeout_us {
                    hb!(&mut t.side, c => c.close());
                    t.failed = true;
                }
            }
        }
        if t.failed && t.streams.is_empty() && !leg_done(&t.leg) && !t.leg.closed_by_us {
            stack::close(t.leg.socket());
            t.leg.closed_by_us = true;
        }
        if leg_done(&t.leg) {
            let t = self.tunnels.remove(tid);
            self.forget_key(t.leg.key);
            if let Side::Client { key, .. } = &t.side {
                if let Some(v) = self.pools.get_mut(key) {
                    v.retain(|&x| x != tid);
                    if v.is_empty() {
                        self.pools.remove(key);
                    }
                }
            }
            for (_, hid) in t.streams {
                if let Some(h) = self.hconns.get_mut(hid) {
                    h.stream_done = true;
                    h.tunnel = usize::MAX;
                }
                self.service_hconn(hid, now);
            }
            self.stats.hbone_tunnels_closed += 1;
        }
    }

    /// Splices a TCP leg with its stream; propagates half-close and resets.
    pub(super) fn service_hconn(&mut self, hid: usize, now: i64) {
        let Some(h) = self.hconns.get_mut(hid) else {
            return;
        };
        let tid = h.tunnel;
        let mut tunnel_dirty = false;
        if let Some(t) = self.tunnels.get_mut(tid) {
            let s = h.tcp.sockets.get_mut::<tcp::Socket>(h.tcp.handle);
            // Inbound: answer 200 only once the workload accepted the connection.
            if let Side::Server { conn } = &mut t.side {
                if !h.established && !h.stream_done {
                    if s.state() == tcp::State::Established {
                        let _ = conn.respond(h.stream, StatusCode::OK);
                        h.established = true;
                        tunnel_dirty = true;
                        info!(target: "access", peer = %h.peer, dst = %h.target, "HBONE stream established");
                    } else if s.state() == tcp::State::Closed {
                        warn!(target: "access", peer = %h.peer, dst = %h.target, "HBONE request refused (503): the workload did not accept the connection");
                        let _ = conn.respond(h.stream, StatusCode::SERVICE_UNAVAILABLE);
                        self.stats.hbone_refused += 1;
                        h.stream_done = true;
                        h.tcp.closed_by_us = true;
                        tunnel_dirty = true;
                    }
                }
            }
            if h.established && !h.stream_done {
                let id = h.stream;
                // TCP → stream, as far as HTTP/2 flow control allows.
                while s.can_recv() {
                    let n = s
                        .recv(|buf| {
                            let n = hb!(&mut t.side, c => c.stream_write(id, buf)).unwrap_or(0);
                            (n, n)
                        })
                        .unwrap_or(0);
                    if n == 0 {
                        break;
                    }
                    h.bytes[0] += n as u64;
                    tunnel_dirty = true;
                }
                // Stream → TCP, as far as the socket has room.
                while s.can_send() && hb!(&t.side, c => c.stream_readable(id)) > 0 {
                    let n = s
                        .send(|buf| {
                            let n = hb!(&mut t.side, c => c.stream_read(id, buf)).unwrap_or(0);
                            (n, n)
                        })
                        .unwrap_or(0);
                    if n == 0 {
                        break;
                    }
                    h.bytes[1] += n as u64;
                    tunnel_dirty = true;
                }
                // Half-close TCP → END_STREAM.
                let tcp_eof = matches!(
                    s.state(),
                    tcp::State::CloseWait
                        | tcp::State::LastAck
                        | tcp::State::Closing
                        | tcp::State::TimeWait
                ) && s.recv_queue() == 0;
                if tcp_eof && !h.finished_by_us {
                    let _ = hb!(&mut t.side, c => c.stream_finish(id));
                    h.finished_by_us = true;
                    tunnel_dirty = true;
                }
                if h.peer_finished || hb!(&t.side, c => c.stream_peer_finished(id)) {
                    h.peer_finished = true;
                }
                if h.finished_by_us && h.peer_finished {
                    h.stream_done = true;
                }
            }
            // Reset of the TCP leg → reset the stream.
            if s.state() == tcp::State::Closed && !h.tcp.closed_by_us {
                h.tcp.closed_by_us = true;
                if !h.stream_done {
                    let r = hb!(&mut t.side, c => c.stream_reset(h.stream));
                    if !matches!(r, Err(StreamError::Unknown(_))) {
                        tunnel_dirty = true;
                    }
                    h.stream_done = true;
                }
            }
        }
        // Stream side over: end the TCP side (FIN after all data, or reset).
        {
            let s = h.tcp.sockets.get_mut::<tcp::Socket>(h.tcp.handle);
            if h.stream_done {
                // Nothing can carry the peer's remaining bytes any more: discard them
                // (as after shutdown(SHUT_RD)) so its window stays open and its FIN is
                // accepted; otherwise the leg would wait in FIN-WAIT-2 for ever.
                while s.can_recv() {
                    if s.recv(|b| (b.len(), ())).is_err() {
                        break;
                    }
                }
                let since = *h.half_dead_since.get_or_insert(now);
                let finished = matches!(s.state(), tcp::State::Closed | tcp::State::TimeWait);
                if now - since >= super::HALF_DEAD_US && !finished {
                    s.abort();
                    h.tcp.closed_by_us = true;
                }
            }
            if h.stream_done
                && !h.tcp.closed_by_us
                && !matches!(s.state(), tcp::State::Closed | tcp::State::TimeWait)
            {
                if h.peer_finished && h.established {
                    if s.may_send() {
                        stack::close(s);
                        h.tcp.closed_by_us = true;
                    }
                } else {
                    s.abort();
                    h.tcp.closed_by_us = true;
                }
            } else if h.peer_finished && h.established && !h.tcp.closed_by_us && s.may_send() {
                let readable = self
                    .tunnels
                    .get(tid)
                    .map_or(0, |t| hb!(&t.side, c => c.stream_readable(h.stream)));
                if readable == 0 {
                    stack::close(s);
                    h.tcp.closed_by_us = true;
                }
            }
        }
        self.egress(Obj::HConn(hid), now);
        let done = self
            .hconns
            .get(hid)
            .is_some_and(|h| h.stream_done && leg_done(&h.tcp));
        if done {
            let h = self.hconns.remove(hid);
            self.forget_key(h.tcp.key);
            if let Some(t) = self.tunnels.get_mut(h.tunnel) {
                t.streams.remove(&h.stream.0);
            }
            self.stats.closed_connections += 1;
            info!(
                target: "access",
                direction = if h.outbound { "outbound" } else { "inbound" },
                // Outbound: the pod's leg is keyed (pod → target); inbound: the delivery
                // leg is keyed (workload → client address, our port).
                src_addr = %if h.outbound { h.tcp.key.src } else { h.tcp.key.dst }, dst_addr = %h.target, peer_identity = %h.peer,
                bytes_sent = h.bytes[0], bytes_recv = h.bytes[1],
                duration_ms = h.started.elapsed().as_millis() as u64,
                "connection complete (HBONE)"
            );
            if tunnel_dirty || self.tunnels.contains(h.tunnel) {
                self.pump_tunnel_later(h.tunnel);
            }
        } else if tunnel_dirty {
            self.pump_tunnel_later(tid);
        }
    }

    /// Transmits what a leg's socket has queued and reschedules its timer.
    pub(super) fn egress(&mut self, obj: Obj, now: i64) {
        let ts = Instant::from_micros(now);
        let (leg, scheduled, extra) = match obj {
            Obj::Tunnel(tid) => match self.tunnels.get_mut(tid) {
                Some(t) => {
                    let idle = t.idle_since.map(|s| s + self.hbone_limits.idle_timeout_us);
                    (&mut t.leg, &mut t.scheduled, idle)
                }
                None => return,
            },
            Obj::HConn(hid) => match self.hconns.get_mut(hid) {
                Some(h) => {
                    let deadline = h.half_dead_since.map(|s| s + super::HALF_DEAD_US);
                    (&mut h.tcp, &mut h.scheduled, deadline)
                }
                None => return,
            },
            Obj::Conn(_) => return,
        };
        let mut next = extra;
        if let Some(dst_mac) = leg.dst_mac {
            let mut dev = LegDevice {
                rx: None,
                tx: &mut self.txs[leg.port],
                src_mac: self.specs[leg.port].mac,
                dst_mac,
                sent: &mut self.stats.tx_packets,
                no_frame: &mut self.stats.tx_no_frame,
            };
            while self.iface.poll_egress(ts, &mut dev, &mut leg.sockets)
                == PollResult::SocketStateChanged
            {}
            if let Some(at) = self.iface.poll_at(ts, &leg.sockets) {
                let at = at.total_micros().max(now);
                next = Some(next.map_or(at, |n| n.min(at)));
            }
        }
        if let Some(at) = next {
            if scheduled.is_none_or(|s| at < s) {
                *scheduled = Some(at);
                self.timers.push(std::cmp::Reverse((at, obj)));
            }
        }
    }

    fn pump_tunnel_later(&mut self, tid: usize) {
        if self.tunnels.contains(tid) && !self.dirty_tunnels.contains(&tid) {
            self.dirty_tunnels.push(tid);
        }
    }

    /// Pumps the tunnels that stream connections wrote into.
    pub(super) fn pump_dirty_tunnels(&mut self, now: i64) -> usize {
        let dirty = std::mem::take(&mut self.dirty_tunnels);
        let n = dirty.len();
        for tid in dirty {
            self.pump_tunnel(tid, now);
        }
        n
    }
}

/// Ciphertext in, TLS/HTTP/2 progress, events out.
fn drive(t: &mut Tunnel, events: &mut Vec<Event>) -> Result<(), ConnError> {
    let s = t.leg.sockets.get_mut::<tcp::Socket>(t.leg.handle);
    while s.can_recv() && hb!(&t.side, c => c.can_feed()) {
        let mut err = None;
        let n = s
            .recv(|buf| match hb!(&mut t.side, c => c.feed_ciphertext(buf)) {
                Ok(n) => (n, n),
                Err(e) => {
                    err = Some(e);
                    (buf.len(), 0)
                }
            })
            .unwrap_or(0);
        if let Some(e) = err {
            return Err(e);
        }
        if n == 0 {
            break;
        }
    }
    let eof = matches!(
        s.state(),
        tcp::State::CloseWait
            | tcp::State::LastAck
            | tcp::State::Closing
            | tcp::State::TimeWait
            | tcp::State::Closed
    ) && s.recv_queue() == 0;
    if eof && !t.fed_eof && s.state() != tcp::State::Closed {
        t.fed_eof = true;
        hb!(&mut t.side, c => c.feed_eof())?;
    }
    hb!(&mut t.side, c => c.poll())?;
    while let Some(ev) = hb!(&mut t.side, c => c.poll_event()) {
        events.push(ev);
    }
    Ok(())
}

fn h2_reason_no_error() -> xdpmesh_hbone::conn::Reason {
    xdpmesh_hbone::conn::Reason::NO_ERROR
}

fn h2_reason_cancel() -> xdpmesh_hbone::conn::Reason {
    xdpmesh_hbone::conn::Reason::CANCEL
}
