//! The destination gateway's side of HBONE: a connection to a served workload's port
//! 15008 is the server end of a tunnel; each CONNECT on it is validated, authorized and
//! delivered to the workload from the client's own address.
//!
//! Answers: 400 for a bad request (non-CONNECT, unparsable authority, an authority IP
//! other than the address the tunnel was accepted on, a target not served here); 401
//! for an authorization denial; 503 for a reserved port, no route, or a workload that
//! does not accept; 200 only once the workload accepted (see [`super::stream`]).

use std::net::SocketAddr;

use tracing::{debug, warn};

use crate::access::{self, Flags, Record};
use xdpmesh_hbone::conn::{H2Settings, HboneServerConn, Request, StreamId};
use xdpmesh_hbone::StatusCode;

use super::stream::{Direction, Stream};
use super::tunnel::{Side, Tunnel};
use crate::engine::flows::PortRange;
use crate::engine::{Engine, ObjKey, Object};
use crate::sink::FrameSink;
use crate::state::Peer;
use crate::wire::TcpFrame;

impl<S: FrameSink> Engine<S> {
    /// A connection to a served workload's port 15008: the server side of a tunnel.
    pub(crate) fn accept_inbound_hbone(&mut self, port: usize, t: &TcpFrame, ip: &[u8], now: i64) {
        let local = t.key.dst;
        let settings = self.hbone.h2_settings(H2Settings::server());
        let conn = self
            .identity_of(local.ip())
            .ok_or_else(|| "no identity".to_string())
            .and_then(|id| self.ids.server_config(&id))
            .and_then(|cfg| {
                HboneServerConn::with_settings(cfg, local.ip(), settings).map_err(|e| e.to_string())
            });
        let conn = match conn {
            Ok(c) => c,
            Err(reason) => {
                warn!(peer = %t.key.src, %local, %reason, "HBONE inbound refused before TLS");
                self.stats.hbone_refused += 1;
                self.net.reset(port, t.src_mac, ip, now);
                return;
            }
        };
        let Ok(leg) = self.net.accept(self.buffers, port, t.src_mac, t.key) else {
            self.stats.hbone_refused += 1;
            self.net.reset(port, t.src_mac, ip, now);
            return;
        };
        let side = Side::Server {
            conn: Box::new(conn),
        };
        let tid = self.insert(Object::Tunnel(Tunnel::new(leg, side, now)));
        self.stats.hbone_tunnels_accepted += 1;
        self.start(tid, ip, t.src_mac, now);
    }

    /// Answers a request with an error status (the stream ends; RST_STREAM follows).
    fn refuse_request(&mut self, tid: ObjKey, stream: StreamId, status: StatusCode) {
        if let Some(Object::Tunnel(Tunnel {
            side: Side::Server { conn },
            ..
        })) = self.objects.get_mut(tid)
        {
            let _ = conn.respond(stream, status);
        }
        self.stats.hbone_refused += 1;
        self.pump_tunnel_later(tid);
    }

    /// Books a refused CONNECT (its access record) and answers it with `status`.
    #[allow(clippy::too_many_arguments)]
    fn refuse_connect(
        &mut self,
        tid: ObjKey,
        stream: StreamId,
        status: StatusCode,
        tunnel: (SocketAddr, SocketAddr),
        target: Option<SocketAddr>,
        peer: &str,
        why: String,
    ) {
        let (src, local) = tunnel;
        let meta = self.meta_hbone(
            src,
            target,
            local,
            access::Direction::Inbound,
            Some(peer),
            None,
        );
        let flags = if status == StatusCode::UNAUTHORIZED {
            Flags::Deny
        } else {
            Flags::Connect
        };
        self.record(Record::refused(meta, flags, why), true, true);
        self.refuse_request(tid, stream, status);
    }

    /// A CONNECT on a server tunnel.
    pub(crate) fn on_request(&mut self, tid: ObjKey, req: Request, now: i64) {
        let Some(Object::Tunnel(tunnel)) = self.objects.get_mut(tid) else {
            return;
        };
        let tunnel_addrs = (tunnel.leg().key.src, tunnel.leg().key.dst);
        let peer_ip = tunnel.leg().key.src.ip();
        let Side::Server { conn } = &mut tunnel.side else {
            return;
        };
        let peer = req.peer_identity.to_string();
        let forwarded = req
            .headers
            .get("forwarded")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let target = match conn.validate(&req) {
            Ok(t) => t,
            Err(e) => {
                debug!(%peer, %forwarded, reason = %e, "HBONE request refused");
                let why = e.to_string();
                let status = e.status();
                return self.refuse_connect(
                    tid,
                    req.stream,
                    status,
                    tunnel_addrs,
                    None,
                    &peer,
                    why,
                );
            }
        };
        let refuse = |e: &mut Self, status: StatusCode, why: String| {
            e.refuse_connect(
                tid,
                req.stream,
                status,
                tunnel_addrs,
                Some(target),
                &peer,
                why,
            )
        };
        let Some(info) = self.index.get(&target.ip()).copied().filter(|a| a.local) else {
            let why = format!(
                "HBONE request refused (400): {target} is not a workload served by this gateway"
            );
            return refuse(self, StatusCode::BAD_REQUEST, why);
        };
        let id = &req.peer_identity;
        let principal = format!(
            "{}/ns/{}/sa/{}",
            id.trust_domain, id.namespace, id.service_account
        );
        let who = Peer {
            principal: &principal,
            namespace: &id.namespace,
        };
        if let Err(denied) = self
            .index
            .authorize(info.workload, target.port(), Some(who))
        {
            self.stats.policy_denied += 1;
            let workload = self.index.workload_name(info.workload);
            let why = format!(
                "HBONE request refused (401): authorization policy: {denied} (workload {workload})"
            );
            return refuse(self, StatusCode::UNAUTHORIZED, why);
        }
        // Deliver from the client's own address (original source).
        let Some(up_port) = self.net.port_of(info.route.ifindex) else {
            let why = format!("HBONE request refused (503): no route to {target}");
            return refuse(self, StatusCode::SERVICE_UNAVAILABLE, why);
        };
        let Some(local_port) = self.flows.pick_port(target, peer_ip, PortRange::Delivery) else {
            let why = format!("HBONE request refused (503): no free local port towards {target}");
            return refuse(self, StatusCode::SERVICE_UNAVAILABLE, why);
        };
        let nexthop = info.route.via.unwrap_or(target.ip());
        let mac = self.lookup_neighbor(up_port, nexthop);
        let local = SocketAddr::new(peer_ip, local_port);
        let leg = match self.net.connect(self.buffers, up_port, mac, target, local) {
            Ok(leg) => leg,
            Err(e) => {
                let why = format!("HBONE request refused (503): the delivery leg to {target} could not be opened: {e}");
                return refuse(self, StatusCode::SERVICE_UNAVAILABLE, why);
            }
        };
        let meta = self.meta_hbone(
            tunnel_addrs.0,
            Some(target),
            tunnel_addrs.1,
            access::Direction::Inbound,
            Some(&peer),
            None,
        );
        let st = Stream::new(
            leg,
            tid,
            req.stream,
            Direction::Inbound,
            peer.clone(),
            meta,
            now,
        );
        let hid = self.insert_stream(st);
        debug!(%peer, %target, %forwarded, "HBONE request accepted; connecting to the workload");
        if mac.is_none() {
            self.wait_for_neighbor(hid, up_port, nexthop, now);
        }
        self.service_stream(hid, now);
    }
}
