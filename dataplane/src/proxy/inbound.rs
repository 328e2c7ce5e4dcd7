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
        let tid = self.insert(Object::Tunnel(Tunnel::new(leg, side)));
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

    /// A CONNECT on a server tunnel.
    pub(crate) fn on_request(&mut self, tid: ObjKey, req: Request, now: i64) {
        let Some(Object::Tunnel(tunnel)) = self.objects.get_mut(tid) else {
            return;
        };
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
                warn!(target: "access", %peer, src = %peer_ip, %forwarded, reason = %e, "HBONE request refused");
                return self.refuse_request(tid, req.stream, e.status());
            }
        };
        let Some(info) = self.index.get(&target.ip()).copied().filter(|a| a.local) else {
            warn!(target: "access", %peer, %target, "HBONE request refused (400): the target is not a workload served by this gateway");
            return self.refuse_request(tid, req.stream, StatusCode::BAD_REQUEST);
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
            warn!(target: "access", %peer, %target, %workload, reason = %denied, "HBONE request refused (401): authorization policy");
            return self.refuse_request(tid, req.stream, StatusCode::UNAUTHORIZED);
        }
        // Deliver from the client's own address (original source).
        let Some(up_port) = self.net.port_of(info.route.ifindex) else {
            warn!(target: "access", %peer, %target, "HBONE request refused (503): no route to the workload");
            return self.refuse_request(tid, req.stream, StatusCode::SERVICE_UNAVAILABLE);
        };
        let Some(local_port) = self.flows.pick_port(target, peer_ip, PortRange::Delivery) else {
            warn!(target: "access", %peer, %target, "HBONE request refused (503): no free local port");
            return self.refuse_request(tid, req.stream, StatusCode::SERVICE_UNAVAILABLE);
        };
        let nexthop = info.route.via.unwrap_or(target.ip());
        let mac = self.lookup_neighbor(up_port, nexthop);
        let local = SocketAddr::new(peer_ip, local_port);
        let Ok(leg) = self.net.connect(self.buffers, up_port, mac, target, local) else {
            warn!(target: "access", %peer, %target, "HBONE request refused (503): the delivery leg could not be opened");
            return self.refuse_request(tid, req.stream, StatusCode::SERVICE_UNAVAILABLE);
        };
        let st = Stream::new(
            leg,
            tid,
            req.stream,
            Direction::Inbound,
            target,
            peer.clone(),
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
