//! The source gateway's side of HBONE: a pod's connection to an HBONE workload served
//! elsewhere is terminated here and carried as a CONNECT stream on a pooled tunnel to
//! the workload's own address, port 15008.

use xdpmesh_hbone::ConnectHeaders;

use crate::access::{self, Flags, Record};

use super::stream::{Direction, Stream};
use super::tunnel::Side;
use crate::engine::{Engine, Object};
use crate::sink::FrameSink;
use crate::wire::TcpFrame;

impl<S: FrameSink> Engine<S> {
    /// Terminates the pod's connection and opens a stream on a pooled tunnel.
    pub(crate) fn accept_outbound_hbone(
        &mut self,
        port: usize,
        t: &TcpFrame,
        ip: &[u8],
        now: i64,
        up: crate::engine::Upstream,
    ) {
        let crate::engine::Upstream {
            port: up_port,
            target,
            service,
            ..
        } = up;
        let client = t.key.src;
        let (src_id, dst_id) = (self.identity_of(client.ip()), self.identity_of(target.ip()));
        // The destination's identity is the one required of the peer: a refusal names
        // it, never what a peer presented.
        let mut meta = self.meta_hbone(
            client,
            Some(target),
            target,
            access::Direction::Outbound,
            src_id.as_ref().map(|i| i.to_string()).as_deref(),
            dst_id.as_ref().map(|i| i.to_string()).as_deref(),
        );
        meta.dst_service = service.as_ref().map(|s| s.hostname.as_str().into());
        let refuse = |e: &mut Self, reason: &str| {
            e.stats.hbone_refused += 1;
            e.net.reset(port, t.src_mac, ip, now);
            let why = format!("HBONE connection refused (reset): {reason}");
            e.record(
                Record::refused(meta.clone(), Flags::Connect, why),
                true,
                true,
            );
        };
        let (Some(src_id), Some(dst_id)) = (src_id, dst_id) else {
            return refuse(self, "source or destination has no identity in the tables");
        };
        let tid = match self.pooled_tunnel(&src_id, &dst_id, client.ip(), target.ip(), up_port, now)
        {
            Ok(tid) => tid,
            Err(reason) => return refuse(self, &format!("no tunnel: {reason}")),
        };
        let baggage = self
            .index
            .get(&client.ip())
            .and_then(|a| self.index.tables.workloads.get(a.workload as usize))
            .map(|w| {
                format!(
                    "k8s.cluster.name={},k8s.namespace.name={},k8s.pod.name={}",
                    self.index.tables.cluster_name, w.namespace, w.name
                )
            });
        let headers = ConnectHeaders {
            forwarded_for: client,
            forwarded_host: service.as_ref().map(|s| s.hostname.clone()),
            baggage,
            traceparent: self.traceparent(),
        };
        let Ok(leg) = self.net.accept(self.buffers, port, t.src_mac, t.key) else {
            return refuse(self, "smoltcp refused the pod's endpoints");
        };
        let Some(Object::Tunnel(tunnel)) = self.objects.get_mut(tid) else {
            return refuse(self, "the pooled tunnel is gone");
        };
        let Side::Client { conn, .. } = &mut tunnel.side else {
            return refuse(self, "pooled tunnels are clients");
        };
        let stream = match conn.open_stream(target, &headers) {
            Ok(s) => s,
            Err(e) => return refuse(self, &format!("opening a stream failed: {e}")),
        };
        let mut st = Stream::new(
            leg,
            tid,
            stream,
            Direction::Outbound,
            dst_id.to_string(),
            meta.clone(),
            now,
        );
        st.service_endpoint = service.map(|s| s.endpoint.ip());
        let hid = self.insert_stream(st);
        self.start(hid, ip, t.src_mac, now);
        self.pump_tunnel(tid, now);
    }
}
