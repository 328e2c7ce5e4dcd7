//! A stream connection: a TCP leg (the pod's on the source gateway, the delivery leg to
//! the workload on the destination gateway) spliced to one HBONE stream.
//!
//! Lifecycle (`Phase`): `Opening` until the 200 (outbound: the peer's answer;
//! inbound: we answer once the workload accepted), `Open` while data flows, each half
//! ended on its own (TCP half-close ⇄ DATA with END_STREAM), `Over` once the stream is
//! gone; the TCP leg then gets a FIN after its data when both halves ended (or the peer
//! reset with NO_ERROR/CANCEL, an end of stream by contract), a reset otherwise, and the
//! connection is freed when the leg is done.

use std::net::SocketAddr;

use smoltcp::socket::tcp;
use tracing::debug;
use xdpmesh_hbone::conn::{StreamError, StreamId};
use xdpmesh_hbone::StatusCode;

use super::tunnel::Side;
use crate::access::{Flags, Meta, Record};
use crate::engine::{Engine, ObjKey, Object, HALF_DEAD_US};
use crate::sink::FrameSink;
use crate::stack::{leg_done, Leg};

/// Which gateway's side of the tunnel a stream connection is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Direction {
    /// Source gateway: the pod's connection, carried out through a client tunnel.
    Outbound,
    /// Destination gateway: a CONNECT of a server tunnel, delivered to the workload.
    Inbound,
}

/// Where a stream connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Outbound: CONNECT sent, waiting for the 200. Inbound: connecting to the
    /// workload; the 200 goes once it accepts.
    Opening,
    /// Data flows. `sent_end`: the TCP side's FIN went on as END_STREAM; `peer_end`:
    /// the stream's END_STREAM arrived and all its data was read.
    Open { sent_end: bool, peer_end: bool },
    /// The stream is gone (both halves ended, refused, reset, tunnel closed), since
    /// `since`. `graceful`: the TCP leg gets a FIN after its data, else a reset.
    Over { graceful: bool, since: i64 },
}

/// A TCP leg spliced to one HBONE stream.
pub(crate) struct Stream {
    tcp: Leg,
    /// The tunnel carrying the stream (its key may outlive it: then it is gone).
    tunnel: ObjKey,
    id: StreamId,
    direction: Direction,
    phase: Phase,
    started: i64,
    /// Bytes TCP → stream, stream → TCP.
    bytes: [u64; 2],
    /// Where the stream leads: the CONNECT target.
    target: SocketAddr,
    /// The peer's identity (outbound: the one required of the server; inbound: the
    /// client's, verified).
    peer: String,
    /// Outbound to a service: the endpoint the stream went to (ejected when the stream
    /// never came up).
    pub(crate) service_endpoint: Option<std::net::IpAddr>,
    /// Who it is between (its access record and metric labels).
    meta: Box<Meta>,
    /// Why it ended abnormally (refused, reset, its tunnel failed).
    error: Option<String>,
    /// The 200 was sent or received (set-up done).
    connected: bool,
    /// Set-up time not yet recorded in the worker's histogram.
    connect_us: Option<i64>,
}

impl Stream {
    pub(crate) fn new(
        tcp: Leg,
        tunnel: ObjKey,
        id: StreamId,
        direction: Direction,
        peer: String,
        meta: Meta,
        now: i64,
    ) -> Stream {
        // Where the stream leads: the CONNECT target.
        let target = meta.dst_hbone_addr.unwrap_or(meta.dst_addr);
        Stream {
            tcp,
            tunnel,
            id,
            direction,
            phase: Phase::Opening,
            started: now,
            bytes: [0, 0],
            target,
            peer,
            service_endpoint: None,
            meta: Box::new(meta),
            error: None,
            connected: false,
            connect_us: None,
        }
    }

    pub(crate) fn leg_mut(&mut self) -> &mut Leg {
        &mut self.tcp
    }

    pub(crate) fn deadline(&self) -> Option<i64> {
        match self.phase {
            Phase::Over { since, .. } => Some(since + HALF_DEAD_US),
            _ => None,
        }
    }

    /// Outbound: the server answered 200.
    pub(crate) fn established(&mut self, now: i64) {
        if self.phase == Phase::Opening {
            self.connected = true;
            self.connect_us = Some(now - self.started);
            self.phase = Phase::Open {
                sent_end: false,
                peer_end: false,
            };
        }
    }

    /// The peer ended its half: END_STREAM with all data read, or a reset that is an
    /// end of stream by contract (NO_ERROR, CANCEL).
    pub(crate) fn peer_ended(&mut self) {
        if let Phase::Open { sent_end, .. } = self.phase {
            self.phase = Phase::Open {
                sent_end,
                peer_end: true,
            };
        }
    }

    /// The stream is gone for `why` (refused, reset, its tunnel failed), unless it was
    /// over already.
    pub(crate) fn fail(&mut self, now: i64, why: impl FnOnce() -> String) {
        if !matches!(self.phase, Phase::Over { .. }) {
            self.error.get_or_insert_with(why);
        }
        self.end(now);
    }

    /// The stream is gone. Graceful when the peer had ended its half.
    pub(crate) fn end(&mut self, now: i64) {
        if !matches!(self.phase, Phase::Over { .. }) {
            let graceful = matches!(self.phase, Phase::Open { peer_end: true, .. });
            self.phase = Phase::Over {
                graceful,
                since: now,
            };
        }
    }

    pub(crate) fn describe(&self) -> String {
        let dir = match self.direction {
            Direction::Outbound => "out",
            Direction::Inbound => "in",
        };
        format!(
            "hbone {dir} {} -> {} [{:?}] stream {} {:?}",
            self.tcp.key.src,
            self.target,
            self.tcp.state(),
            self.id,
            self.phase
        )
    }
}

/// The stream half of a service: 200/503 for inbound streams, bytes both ways,
/// half-close, and a reset of the TCP leg passed on as RST_STREAM. Returns whether the
/// tunnel has frames to send.
fn splice(
    st: &mut Stream,
    side: &mut Side,
    now: i64,
    refused: &mut u64,
    tap: &crate::capture::Tap,
) -> bool {
    let mut dirty = false;
    let id = st.id;
    let s = st.tcp.socket();
    // Inbound: answer 200 only once the workload accepted the connection.
    if let (Side::Server { conn }, Phase::Opening) = (&mut *side, st.phase) {
        match s.state() {
            tcp::State::Established => {
                let _ = conn.respond(id, StatusCode::OK);
                st.phase = Phase::Open {
                    sent_end: false,
                    peer_end: false,
                };
                st.connected = true;
                st.connect_us = Some(now - st.started);
                dirty = true;
                debug!(peer = %st.peer, dst = %st.target, "HBONE stream established");
            }
            tcp::State::Closed => {
                let _ = conn.respond(id, StatusCode::SERVICE_UNAVAILABLE);
                *refused += 1;
                st.tcp.mark_peer_reset();
                let target = st.target;
                st.fail(now, || {
                    format!("HBONE request refused (503): the workload did not accept the connection to {target}")
                });
                return true;
            }
            _ => {}
        }
    }
    // The pod's conversation for `capture --inner`: who sends what the TCP leg reads.
    let tapping = tap.on();
    let (from_tcp, to_tcp) = match st.direction {
        Direction::Outbound => (st.tcp.key.src, st.target),
        Direction::Inbound => (st.target, st.tcp.key.dst),
    };
    let s = st.tcp.socket();
    if let Phase::Open { sent_end, peer_end } = st.phase {
        // TCP → stream, as far as HTTP/2 flow control allows.
        while s.can_recv() {
            let n = s
                .recv(|buf| {
                    let n = side.conn().stream_write(id, buf).unwrap_or(0);
                    if tapping {
                        tap.inner(from_tcp, to_tcp, &buf[..n]);
                    }
                    (n, n)
                })
                .unwrap_or(0);
            if n == 0 {
                break;
            }
            st.bytes[0] += n as u64;
            dirty = true;
        }
        // Stream → TCP, as far as the socket has room.
        while s.can_send() && side.conn().stream_readable(id) > 0 {
            let n = s
                .send(|buf| {
                    let n = side.conn().stream_read(id, buf).unwrap_or(0);
                    if tapping {
                        tap.inner(to_tcp, from_tcp, &buf[..n]);
                    }
                    (n, n)
                })
                .unwrap_or(0);
            if n == 0 {
                break;
            }
            st.bytes[1] += n as u64;
            dirty = true;
        }
        // Half-close TCP → END_STREAM.
        let sent_end = sent_end || {
            let eof = st.tcp.peer_eof();
            if eof {
                let _ = side.conn().stream_finish(id);
                dirty = true;
            }
            eof
        };
        let peer_end = peer_end || side.conn().stream_peer_finished(id);
        st.phase = Phase::Open { sent_end, peer_end };
        if sent_end && peer_end {
            st.end(now);
        }
    }
    // Reset of the TCP leg → reset the stream.
    if st.tcp.state() == tcp::State::Closed && !st.tcp.closed_by_us() {
        st.tcp.mark_peer_reset();
        if !matches!(st.phase, Phase::Over { .. }) {
            st.error.get_or_insert_with(|| match st.direction {
                Direction::Outbound => "connection reset by the source".to_owned(),
                Direction::Inbound => "connection reset by the destination workload".to_owned(),
            });
            let r = side.conn().stream_reset(id);
            if !matches!(r, Err(StreamError::Unknown(_))) {
                dirty = true;
            }
            st.phase = Phase::Over {
                graceful: false,
                since: now,
            };
        }
    }
    dirty
}

/// The TCP half of a service: once the stream is over, end the leg (FIN after all data,
/// or reset), bounded by the half-dead limit; while the peer has ended its half, FIN
/// the leg once everything the stream delivered was taken.
fn end_tcp(st: &mut Stream, readable: usize, now: i64) {
    let leg = &mut st.tcp;
    let finished = matches!(leg.state(), tcp::State::Closed | tcp::State::TimeWait);
    match st.phase {
        Phase::Over { graceful, since } => {
            // Nothing can carry the peer's remaining bytes any more: discard them so its
            // window stays open and its FIN is accepted; otherwise the leg would wait in
            // FIN-WAIT-2 for ever.
            leg.discard_received();
            if now - since >= HALF_DEAD_US && !finished {
                leg.abort();
            } else if !leg.closed_by_us() && !finished {
                if !graceful {
                    leg.abort();
                } else if leg.socket_ref().may_send() {
                    leg.close();
                }
            }
        }
        Phase::Open { peer_end: true, .. }
            if !leg.closed_by_us() && leg.socket_ref().may_send() && readable == 0 =>
        {
            leg.close();
        }
        _ => {}
    }
}

impl<S: FrameSink> Engine<S> {
    /// Inserts a new stream connection and routes its stream's events to it.
    pub(crate) fn insert_stream(&mut self, st: Stream) -> ObjKey {
        let (tid, id) = (st.tunnel, st.id);
        self.record_open(&st.meta);
        let hid = self.insert(Object::Stream(st));
        if let Some(Object::Tunnel(tunnel)) = self.objects.get_mut(tid) {
            tunnel.add_stream(id, hid);
        }
        self.stats.opened_connections += 1;
        self.stats.hbone_streams += 1;
        hid
    }

    /// Splices a stream connection's TCP leg with its stream; propagates half-close and
    /// resets; frees the connection once both are over.
    pub(crate) fn service_stream(&mut self, hid: ObjKey, now: i64) {
        let Some(Object::Stream(st)) = self.objects.get(hid) else {
            return;
        };
        let tid = st.tunnel;
        let mut tunnel_dirty = false;
        let mut readable = 0;
        match self.objects.get_disjoint_mut([hid, tid]) {
            Some([Object::Stream(st), Object::Tunnel(t)]) => {
                tunnel_dirty = splice(
                    st,
                    &mut t.side,
                    now,
                    &mut self.stats.hbone_refused,
                    &self.tap,
                );
                readable = t.side.conn().stream_readable(st.id);
            }
            Some(_) => return,
            None => {
                // The tunnel is gone: so is the stream.
                if let Some(Object::Stream(st)) = self.objects.get_mut(hid) {
                    st.end(now);
                }
            }
        }
        let mut connect_us = None;
        if let Some(Object::Stream(st)) = self.objects.get_mut(hid) {
            end_tcp(st, readable, now);
            connect_us = st.connect_us.take();
        }
        if let Some(us) = connect_us {
            self.observe_connect(us);
        }
        self.egress(hid, now);
        let done = matches!(
            self.objects.get(hid),
            Some(Object::Stream(st)) if matches!(st.phase, Phase::Over { .. }) && leg_done(&st.tcp)
        );
        if done {
            if let Some(Object::Stream(st)) = self.free(hid, now) {
                if let Some(Object::Tunnel(t)) = self.objects.get_mut(tid) {
                    t.remove_stream(st.id);
                }
                if let (Some(ep), false) = (st.service_endpoint, st.connected) {
                    self.eject_endpoint(ep, now);
                }
                self.log_stream(&st, now);
                self.net.recycle(st.tcp);
                self.pump_tunnel_later(tid);
            }
        } else if tunnel_dirty {
            self.pump_tunnel_later(tid);
        }
    }

    fn log_stream(&mut self, st: &Stream, now: i64) {
        self.stats.closed_connections += 1;
        // bytes[0] is TCP → stream: from the source outbound (the pod's leg), from the
        // destination inbound (the delivery leg).
        let (recv, sent) = match st.direction {
            Direction::Outbound => (st.bytes[0], st.bytes[1]),
            Direction::Inbound => (st.bytes[1], st.bytes[0]),
        };
        let (flags, error) = if st.connected {
            (Flags::None, st.error.clone())
        } else {
            let why = st
                .error
                .clone()
                .unwrap_or_else(|| "the HBONE stream ended before it was established".to_owned());
            (Flags::Connect, Some(why))
        };
        let r = Record {
            meta: (*st.meta).clone(),
            bytes_sent: sent,
            bytes_recv: recv,
            duration_us: now - st.started,
            error,
            flags,
        };
        self.record(r, false, true);
    }
}
