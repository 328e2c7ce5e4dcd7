//! A tunnel: a TCP leg carrying one HBONE connection (mutual TLS 1.3, HTTP/2), client
//! (pooled, opened by [`super::pool`]) or server (accepted by [`super::inbound`]).
//!
//! Pumping a tunnel moves ciphertext from its leg into the state machine (as far as the
//! machine's plaintext buffers have room), drives TLS and HTTP/2, hands the machine's
//! events to the stream connections, and moves ciphertext out into the leg (as far as
//! its send buffer has room). A tunnel that failed or was closed takes no new streams;
//! its leg is closed once its streams are gone, and it is freed when the leg is done.

use ahash::AHashMap;
use smoltcp::socket::tcp;
use tracing::{debug, warn};
use xdpmesh_hbone::conn::{ConnError, Event, HboneClientConn, HboneServerConn, Reason, StreamId};
use xdpmesh_hbone::HboneConn;

use super::pool::PoolKey;
use super::HboneLimits;
use crate::engine::{Engine, ObjKey, Object};
use crate::sink::FrameSink;
use crate::stack::{leg_done, Leg};

/// The tunnel's end of the HBONE connection.
pub(crate) enum Side {
    /// We opened it (source gateway), for streams of this pool key.
    Client {
        conn: Box<HboneClientConn>,
        key: PoolKey,
    },
    /// A peer opened it to a workload served here.
    Server { conn: Box<HboneServerConn> },
}

impl Side {
    /// The connection, whichever its role: both are driven through one API.
    pub(crate) fn conn(&mut self) -> &mut HboneConn {
        match self {
            Side::Client { conn, .. } => conn,
            Side::Server { conn } => conn,
        }
    }

    fn conn_ref(&self) -> &HboneConn {
        match self {
            Side::Client { conn, .. } => conn,
            Side::Server { conn } => conn,
        }
    }
}

/// A tunnel's lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Takes new streams (client) or requests (server).
    Live,
    /// Failed or closed: no new streams; the leg is closed once the streams are gone.
    Closing,
}

/// A TCP leg carrying an HBONE connection.
pub(crate) struct Tunnel {
    leg: Leg,
    pub(crate) side: Side,
    /// HTTP/2 stream id → stream connection.
    streams: AHashMap<u32, ObjKey>,
    /// A client tunnel without streams since then (closed after the idle limit).
    idle_since: Option<i64>,
    phase: Phase,
    /// The leg's EOF was handed to the state machine.
    fed_eof: bool,
    /// When its first segment came or went (the TLS handshake's start).
    started: i64,
    /// The TLS handshake is done.
    connected: bool,
    /// Why it failed, for its streams' access records.
    error: Option<String>,
}

impl Tunnel {
    pub(crate) fn new(leg: Leg, side: Side, now: i64) -> Tunnel {
        Tunnel {
            leg,
            side,
            streams: AHashMap::new(),
            idle_since: None,
            phase: Phase::Live,
            fed_eof: false,
            started: now,
            connected: false,
            error: None,
        }
    }

    /// What `/config_dump` shows of it.
    pub(crate) fn to_json(&self) -> serde_json::Value {
        let (role, peer) = match &self.side {
            Side::Client { .. } => ("client", self.leg.key.dst),
            Side::Server { .. } => ("server", self.leg.key.src),
        };
        let local = match &self.side {
            Side::Client { .. } => self.leg.key.src,
            Side::Server { .. } => self.leg.key.dst,
        };
        serde_json::json!({
            "role": role,
            "local": local.to_string(),
            "peer": peer.to_string(),
            "peer_identity": self.side.conn_ref().peer_identity().map(|p| p.to_string()),
            "tls_established": self.connected,
            "streams": self.streams.len(),
            "state": format!("{:?}", self.phase),
            "tcp": format!("{:?}", self.leg.state()),
        })
    }

    pub(crate) fn leg_mut(&mut self) -> &mut Leg {
        &mut self.leg
    }

    pub(crate) fn leg(&self) -> &Leg {
        &self.leg
    }

    /// The tunnel's own deadline: the idle limit of a pooled tunnel without streams, and
    /// the keepalive's next PING or the deadline of the PING in flight. Only a live
    /// tunnel is driven, so only a live one waits for its keepalive.
    pub(crate) fn deadline(&self, limits: &HboneLimits) -> Option<i64> {
        let idle = self.idle_since.map(|s| s + limits.idle_timeout_us);
        let keepalive = match self.phase {
            Phase::Live => self.side.conn_ref().poll_timeout(),
            Phase::Closing => None,
        };
        [idle, keepalive].into_iter().flatten().min()
    }

    /// A client tunnel that can take one more stream under `cap`.
    pub(crate) fn has_room(&mut self, cap: usize) -> bool {
        match (&mut self.side, self.phase) {
            (Side::Client { conn, .. }, Phase::Live) => {
                conn.active_streams() < cap && conn.can_open_stream()
            }
            _ => false,
        }
    }

    /// Routes stream `id`'s events to stream connection `key`.
    pub(crate) fn add_stream(&mut self, id: StreamId, key: ObjKey) {
        self.streams.insert(id.0, key);
        self.idle_since = None;
    }

    pub(crate) fn remove_stream(&mut self, id: StreamId) {
        self.streams.remove(&id.0);
    }

    fn stream(&self, id: StreamId) -> Option<ObjKey> {
        self.streams.get(&id.0).copied()
    }

    /// Takes no new streams; sends what the state machine still has (GOAWAY, alert,
    /// close_notify) and then our FIN. Returns whether the leg was closed now.
    fn fail(&mut self) -> bool {
        self.phase = Phase::Closing;
        if leg_done(&self.leg) || self.leg.closed_by_us() {
            return false;
        }
        self.move_ciphertext();
        self.leg.close();
        true
    }

    /// Ciphertext out of the state machine into the leg, as far as it has room:
    /// rustls writes its records straight into the free part of the leg's send ring
    /// (a contiguous part per round, two rounds when the ring wraps).
    fn move_ciphertext(&mut self) {
        let conn = self.side.conn();
        while self.leg.send_room() > 0 {
            let n = self
                .leg
                .socket()
                .send(|free| {
                    let n = conn.take_ciphertext_into(free);
                    (n, n)
                })
                .unwrap_or(0);
            if n == 0 {
                break;
            }
        }
    }

    /// Frees the idle state machine's empty transport buffers (the engine's sweep).
    pub(crate) fn shrink_buffers(&mut self) -> usize {
        self.side.conn().shrink_buffers()
    }
}

fn stream_mut(
    objects: &mut slotmap::SlotMap<ObjKey, Object>,
    key: ObjKey,
) -> Option<&mut super::Stream> {
    match objects.get_mut(key) {
        Some(Object::Stream(st)) => Some(st),
        _ => None,
    }
}

/// Ciphertext in, TLS/HTTP/2 progress, the keepalive, events out.
fn drive(t: &mut Tunnel, now: i64, events: &mut Vec<Event>) -> Result<(), ConnError> {
    let s = t.leg.socket();
    while s.can_recv() && t.side.conn().can_feed() {
        let mut err = None;
        let n = s
            .recv(|buf| match t.side.conn().feed_ciphertext(buf) {
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
        t.side.conn().feed_eof()?;
    }
    t.side.conn().poll()?;
    // After the ciphertext: a PONG that just arrived counts before any deadline.
    t.side.conn().handle_timeout(now)?;
    while let Some(ev) = t.side.conn().poll_event() {
        events.push(ev);
    }
    Ok(())
}

impl<S: FrameSink> Engine<S> {
    /// Moves ciphertext in, drives TLS and HTTP/2, dispatches events, moves ciphertext
    /// out and transmits. Bounded: a few rounds per call.
    pub(crate) fn pump_tunnel(&mut self, tid: ObjKey, now: i64) {
        let mut events = Vec::new();
        for _ in 0..4 {
            let Some(Object::Tunnel(t)) = self.objects.get_mut(tid) else {
                return;
            };
            if t.phase == Phase::Live {
                let pings = t.side.conn_ref().keepalive_stats().pings_sent;
                let r = drive(t, now, &mut events);
                self.stats.hbone_pings_sent +=
                    t.side.conn_ref().keepalive_stats().pings_sent - pings;
                if let Err(e) = r {
                    t.phase = Phase::Closing;
                    t.error = Some(match e.identity_error() {
                        Some(ie) => format!("HBONE tunnel refused: {ie}"),
                        None => format!("HBONE tunnel failed: {e}"),
                    });
                    self.stats.hbone_tunnel_failures += 1;
                    let peer = t.leg.key.src;
                    if let ConnError::KeepaliveTimeout {
                        waited_us,
                        timeout_us,
                    } = e
                    {
                        // The peer vanished (cut off, or gone without FIN): nothing
                        // else would ever end this tunnel or its streams.
                        self.stats.hbone_keepalive_timeouts += 1;
                        let identity = t
                            .side
                            .conn_ref()
                            .peer_identity()
                            .map(|p| p.to_string())
                            .unwrap_or_default();
                        let streams = t.streams.len();
                        let (waited_ms, timeout_ms) = (waited_us / 1000, timeout_us / 1000);
                        warn!(%peer, %identity, waited_ms, timeout_ms, streams,
                            "HBONE tunnel closed: no answer to a keepalive PING for {waited_ms} ms (timeout {timeout_ms} ms), the peer is unreachable; resetting its streams");
                    } else {
                        match e.identity_error() {
                            Some(ie) => {
                                warn!(%peer, reason = %ie, "HBONE tunnel refused: identity")
                            }
                            None => warn!(%peer, reason = %e, "HBONE tunnel failed"),
                        }
                    }
                    t.leg.abort();
                    events.push(Event::Closed);
                }
            }
            let progressed = !events.is_empty();
            for ev in events.drain(..) {
                self.on_tunnel_event(tid, ev, now);
            }
            self.flush_tunnel(tid, now);
            if !progressed {
                break;
            }
        }
        self.finish_tunnel(tid, now);
    }

    fn on_tunnel_event(&mut self, tid: ObjKey, ev: Event, now: i64) {
        let Some(Object::Tunnel(t)) = self.objects.get_mut(tid) else {
            return;
        };
        let id = match &ev {
            Event::Connected => {
                let peer = t.side.conn_ref().peer_identity().map(|p| p.to_string());
                debug!(worker = self.id, peer = %peer.unwrap_or_default(), "HBONE TLS established");
                t.connected = true;
                let took = now - t.started;
                self.observe_handshake(took);
                return;
            }
            Event::Request(_) | Event::Closed => None,
            Event::Established(s)
            | Event::Refused(s, _)
            | Event::Readable(s)
            | Event::Writable(s)
            | Event::PeerFinished(s)
            | Event::Reset(s, _) => Some(*s),
        };
        // A stream's event goes to its connection, if that is still there.
        let target = match id.map(|s| t.stream(s)) {
            Some(Some(hid)) => hid,
            Some(None) => return,
            None => ObjKey::default(),
        };
        let stream = stream_mut(&mut self.objects, target);
        match ev {
            Event::Connected => {}
            Event::Request(req) => return self.on_request(tid, *req, now),
            Event::Established(_) => {
                if let Some(st) = stream {
                    st.established(now);
                }
            }
            Event::Refused(_, status) => {
                if let Some(st) = stream {
                    st.fail(now, || format!("CONNECT refused by the peer: {status}"));
                    self.stats.hbone_refused += 1;
                }
            }
            Event::Readable(_) | Event::Writable(_) => {}
            Event::PeerFinished(_) => {
                if let Some(st) = stream {
                    st.peer_ended();
                }
            }
            Event::Reset(_, reason) => {
                if let Some(st) = stream {
                    // RST_STREAM NO_ERROR / CANCEL is an end of stream by contract.
                    if reason == Reason::NO_ERROR || reason == Reason::CANCEL {
                        st.peer_ended();
                        st.end(now);
                    } else {
                        st.fail(now, || format!("stream reset by the peer: {reason:?}"));
                    }
                }
            }
            Event::Closed => {
                let (hids, why): (Vec<ObjKey>, String) = match self.objects.get(tid) {
                    Some(Object::Tunnel(t)) => (
                        t.streams.values().copied().collect(),
                        t.error
                            .clone()
                            .unwrap_or_else(|| "HBONE tunnel closed".to_owned()),
                    ),
                    _ => (Vec::new(), String::new()),
                };
                for hid in hids {
                    if let Some(Object::Stream(st)) = self.objects.get_mut(hid) {
                        st.fail(now, || why.clone());
                    }
                    self.service_stream(hid, now);
                }
                if let Some(Object::Tunnel(t)) = self.objects.get_mut(tid) {
                    t.fail();
                }
                // pump_tunnel transmits (flush_tunnel) after its events.
            }
        }
        if id.is_some() {
            self.service_stream(target, now);
        }
    }

    /// Ciphertext out of the state machine into the tunnel leg (as far as it has room),
    /// then transmit and reschedule.
    fn flush_tunnel(&mut self, tid: ObjKey, now: i64) {
        if let Some(Object::Tunnel(t)) = self.objects.get_mut(tid) {
            t.move_ciphertext();
            self.egress(tid, now);
        }
    }

    /// Frees a tunnel whose leg is finished; closes idle pooled tunnels.
    fn finish_tunnel(&mut self, tid: ObjKey, now: i64) {
        let Some(Object::Tunnel(t)) = self.objects.get_mut(tid) else {
            return;
        };
        if t.streams.is_empty() && t.phase == Phase::Live {
            if let Side::Client { conn, .. } = &mut t.side {
                let since = *t.idle_since.get_or_insert(now);
                let deadline = since + self.hbone.idle_timeout_us;
                if now >= deadline {
                    conn.close();
                    t.phase = Phase::Closing;
                } else {
                    // Nothing else may wake an idle tunnel: its own deadline must.
                    self.timers.schedule(tid, deadline);
                }
            }
        }
        if t.phase == Phase::Closing && t.streams.is_empty() && t.fail() {
            self.egress(tid, now);
        }
        if !matches!(self.objects.get(tid), Some(Object::Tunnel(t)) if leg_done(&t.leg)) {
            return;
        }
        let Some(Object::Tunnel(t)) = self.free(tid, now) else {
            return;
        };
        if let Side::Client { key, .. } = &t.side {
            self.pool.remove(key, tid);
        }
        let why = t
            .error
            .clone()
            .unwrap_or_else(|| "HBONE tunnel closed".to_owned());
        for hid in t.streams.into_values() {
            if let Some(Object::Stream(st)) = self.objects.get_mut(hid) {
                st.fail(now, || why.clone());
            }
            self.service_stream(hid, now);
        }
        self.net.recycle(t.leg);
        self.stats.hbone_tunnels_closed += 1;
    }
}
