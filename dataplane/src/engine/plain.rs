//! Plain TCP connections: the pod's leg (leg 0, we answer as its destination) spliced
//! to a leg we open to the destination from the client's own address (leg 1), either
//! to a workload served here or towards the gateway that serves it. See
//! [`crate::stack`] for the splice (half-close, reset propagation).

use std::net::SocketAddr;

use super::admission::Source;
use super::flows::PortRange;
use super::{Engine, ObjKey, Object, HALF_DEAD_US};
use crate::access::{Direction, Flags, Meta, Record};
use crate::sink::FrameSink;
use crate::stack::{self, Leg};
use crate::wire::TcpFrame;

/// A plain TCP connection.
pub(crate) struct Conn {
    legs: [Leg; 2],
    /// Since when one leg has finished and the other has not.
    half_dead_since: Option<i64>,
    started: i64,
    /// Bytes moved leg 0 → leg 1, leg 1 → leg 0.
    bytes: [u64; 2],
    /// For a connection to a service: the endpoint it went to.
    service_endpoint: Option<std::net::IpAddr>,
    /// Who it is between (its access record and metric labels).
    meta: Box<Meta>,
    /// The upstream leg was established (its set-up time is recorded then).
    connected: bool,
    /// Why it ended abnormally (a reset, the half-dead limit).
    error: Option<String>,
}

impl Conn {
    pub(crate) fn legs_mut(&mut self) -> &mut [Leg] {
        &mut self.legs
    }

    pub(crate) fn deadline(&self) -> Option<i64> {
        self.half_dead_since.map(|s| s + HALF_DEAD_US)
    }

    pub(crate) fn describe(&self, now: i64) -> String {
        let [l0, l1] = &self.legs;
        format!(
            "{} | {} age {} ms, moved {}/{} B",
            l0.describe(),
            l1.describe(),
            (now - self.started) / 1000,
            self.bytes[0],
            self.bytes[1],
        )
    }
}

impl<S: FrameSink> Engine<S> {
    /// Terminates the pod's connection and opens the second leg to `dst`.
    pub(super) fn accept_plain(
        &mut self,
        port: usize,
        t: &TcpFrame,
        ip: &[u8],
        now: i64,
        up: super::Upstream,
        source: Source,
    ) {
        let super::Upstream {
            dst,
            port: up_port,
            target,
            service,
        } = up;
        let client = t.key.src;
        let direction = if dst.local {
            Direction::Inbound
        } else {
            Direction::Outbound
        };
        let mut meta = self.meta_plain(
            client,
            target,
            direction,
            matches!(source, Source::Local(_)),
        );
        meta.dst_service = service.as_ref().map(|s| s.hostname.as_str().into());
        let range = if dst.local {
            PortRange::Delivery
        } else {
            PortRange::Outbound
        };
        let Some(local_port) = self.flows.pick_port(target, client.ip(), range) else {
            self.stats.upstream_failures += 1;
            self.net.reset(port, t.src_mac, ip, now);
            let why = format!("no free local port towards {target}");
            self.record(Record::refused(meta, Flags::Connect, why), true, true);
            return;
        };
        let nexthop = dst.route.via.unwrap_or(target.ip());
        let up_mac = self.lookup_neighbor(up_port, nexthop);
        let local = SocketAddr::new(client.ip(), local_port);
        let legs = self
            .net
            .accept(self.buffers, port, t.src_mac, t.key)
            .and_then(|l0| {
                let l1 = self
                    .net
                    .connect(self.buffers, up_port, up_mac, target, local)?;
                Ok([l0, l1])
            });
        let legs = match legs {
            Ok(legs) => legs,
            Err(e) => {
                self.stats.upstream_failures += 1;
                self.net.reset(port, t.src_mac, ip, now);
                let why = format!("the connection's endpoints could not be made: {e}");
                self.record(Record::refused(meta, Flags::Connect, why), true, true);
                return;
            }
        };
        self.record_open(&meta);
        let cid = self.insert(Object::Plain(Conn {
            legs,
            half_dead_since: None,
            started: now,
            bytes: [0, 0],
            service_endpoint: service.map(|s| s.endpoint.ip()),
            meta: Box::new(meta),
            connected: false,
            error: None,
        }));
        self.stats.opened_connections += 1;
        if up_mac.is_none() {
            self.wait_for_neighbor(cid, up_port, nexthop, now);
        }
        self.start(cid, ip, t.src_mac, now);
    }

    /// Splices, transmits and reschedules one connection; frees it when both legs end.
    pub(super) fn service_plain(&mut self, cid: ObjKey, now: i64) {
        let Some(Object::Plain(conn)) = self.objects.get_mut(cid) else {
            return;
        };
        let pumped = stack::pump(&mut conn.legs);
        conn.bytes[0] += pumped.down_to_up as u64;
        conn.bytes[1] += pumped.up_to_down as u64;
        self.stats.bytes_downstream_to_upstream += pumped.down_to_up as u64;
        self.stats.bytes_upstream_to_downstream += pumped.up_to_down as u64;
        if pumped.reset {
            self.stats.reset_connections += 1;
            conn.error.get_or_insert_with(|| {
                "connection reset: one side reset it, so the other was reset too".to_owned()
            });
        }
        let mut connected_after = None;
        if !conn.connected && conn.legs[1].state() == smoltcp::socket::tcp::State::Established {
            conn.connected = true;
            connected_after = Some(now - conn.started);
        }
        if stack::half_finished(&conn.legs) {
            let since = *conn.half_dead_since.get_or_insert(now);
            if now - since >= HALF_DEAD_US {
                stack::abort(&mut conn.legs);
                conn.error.get_or_insert_with(|| {
                    format!(
                        "aborted: one side closed and the other had not after {} s",
                        HALF_DEAD_US / 1_000_000
                    )
                });
            }
        }
        if let Some(us) = connected_after {
            self.observe_connect(us);
        }
        // After egress: an aborted leg is done only once its RST has left.
        self.egress(cid, now);
        let finished =
            matches!(self.objects.get(cid), Some(Object::Plain(c)) if stack::finished(&c.legs));
        if finished {
            if let Some(Object::Plain(conn)) = self.free(cid, now) {
                // Through another gateway, the leg to the endpoint is up as soon as that
                // gateway answers for it: a reset from it before any byte came back is
                // how the endpoint's refusal shows here.
                let refused = !conn.connected
                    || (conn.bytes[1] == 0 && conn.legs[1].ending() == stack::Ending::PeerReset);
                if let (Some(ep), true) = (conn.service_endpoint, refused) {
                    self.eject_endpoint(ep, now);
                }
                self.log_plain(&conn, now);
                for leg in conn.legs {
                    self.net.recycle(leg);
                }
            }
        }
    }

    fn log_plain(&mut self, conn: &Conn, now: i64) {
        self.stats.closed_connections += 1;
        let (flags, error) = if conn.connected {
            (Flags::None, conn.error.clone())
        } else {
            let target = conn.meta.dst_addr;
            let why = conn
                .error
                .as_deref()
                .map(|e| format!(": {e}"))
                .unwrap_or_default();
            (
                Flags::Connect,
                Some(format!("could not connect to {target}{why}")),
            )
        };
        let r = Record {
            meta: (*conn.meta).clone(),
            bytes_sent: conn.bytes[1],
            bytes_recv: conn.bytes[0],
            duration_us: now - conn.started,
            error,
            flags,
        };
        self.record(r, false, true);
    }
}
