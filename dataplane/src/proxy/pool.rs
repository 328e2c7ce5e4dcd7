//! The client tunnel pool, as ztunnel's: tunnels keyed by (source identity, destination
//! identity, source address, destination address), at most `stream_cap` streams on
//! each (a new tunnel is opened when all are full), idle ones closed after
//! `idle_timeout` (see [`super::tunnel`]).

use std::net::{IpAddr, SocketAddr};

use ahash::AHashMap;
use tracing::debug;
use xdpmesh_hbone::conn::{H2Settings, HboneClientConn};
use xdpmesh_hbone::identity::SpiffeId;

use super::tunnel::{Side, Tunnel};
use super::HBONE_PORT;
use crate::engine::flows::PortRange;
use crate::engine::{Engine, ObjKey, Object};
use crate::sink::FrameSink;

/// Pool key, as ztunnel's: (source identity, destination identity, source, destination).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct PoolKey {
    src_id: String,
    dst_id: String,
    src_ip: IpAddr,
    dst_ip: IpAddr,
}

/// The pooled client tunnels of one worker.
#[derive(Debug, Default)]
pub struct Pool {
    tunnels: AHashMap<PoolKey, Vec<ObjKey>>,
}

impl Pool {
    fn add(&mut self, key: PoolKey, tid: ObjKey) {
        self.tunnels.entry(key).or_default().push(tid);
    }

    /// Takes a freed tunnel out of its pool.
    pub(crate) fn remove(&mut self, key: &PoolKey, tid: ObjKey) {
        if let Some(v) = self.tunnels.get_mut(key) {
            v.retain(|&x| x != tid);
            if v.is_empty() {
                self.tunnels.remove(key);
            }
        }
    }

    /// Tunnels in the pool, over all keys.
    pub fn len(&self) -> usize {
        self.tunnels.values().map(Vec::len).sum()
    }

    /// Each pool key with its tunnels' count, for `/config_dump`.
    pub(crate) fn to_json(&self) -> Vec<serde_json::Value> {
        let mut v: Vec<_> = self
            .tunnels
            .iter()
            .map(|(k, t)| {
                serde_json::json!({
                    "src_identity": k.src_id,
                    "dst_identity": k.dst_id,
                    "src": k.src_ip.to_string(),
                    "dst": k.dst_ip.to_string(),
                    "tunnels": t.len(),
                })
            })
            .collect();
        v.sort_by_key(|j| j.to_string());
        v
    }

    /// Whether the pool holds no tunnel.
    pub fn is_empty(&self) -> bool {
        self.tunnels.is_empty()
    }
}

impl<S: FrameSink> Engine<S> {
    /// A pooled tunnel with room for one more stream, opened if none has.
    pub(crate) fn pooled_tunnel(
        &mut self,
        src_id: &SpiffeId,
        dst_id: &SpiffeId,
        src_ip: IpAddr,
        dst_ip: IpAddr,
        up_port: usize,
        now: i64,
    ) -> Result<ObjKey, String> {
        let key = PoolKey {
            src_id: src_id.to_string(),
            dst_id: dst_id.to_string(),
            src_ip,
            dst_ip,
        };
        let cap = self.hbone.stream_cap;
        for &tid in self.pool.tunnels.get(&key).into_iter().flatten() {
            if let Some(Object::Tunnel(t)) = self.objects.get_mut(tid) {
                if t.has_room(cap) {
                    return Ok(tid);
                }
            }
        }
        let cfg = self.ids.client_config(src_id, dst_id)?;
        let conn = HboneClientConn::with_settings(
            cfg,
            dst_ip,
            self.hbone.h2_settings(H2Settings::client()),
        )
        .map_err(|e| e.to_string())?;
        let remote = SocketAddr::new(dst_ip, HBONE_PORT);
        let local_port = self
            .flows
            .pick_port(remote, src_ip, PortRange::Outbound)
            .ok_or("no free local port")?;
        let nexthop = self
            .index
            .get(&dst_ip)
            .and_then(|a| a.route.via)
            .unwrap_or(dst_ip);
        let mac = self.lookup_neighbor(up_port, nexthop);
        let leg = self
            .net
            .connect(
                self.buffers,
                up_port,
                mac,
                remote,
                SocketAddr::new(src_ip, local_port),
            )
            .map_err(|e| e.to_string())?;
        let side = Side::Client {
            conn: Box::new(conn),
            key: key.clone(),
        };
        let tid = self.insert(Object::Tunnel(Tunnel::new(leg, side, now)));
        self.pool.add(key, tid);
        self.stats.hbone_tunnels_opened += 1;
        if mac.is_none() {
            self.wait_for_neighbor(tid, up_port, nexthop, now);
        }
        debug!(worker = self.id, %src_id, %dst_id, %dst_ip, "HBONE tunnel opening");
        Ok(tid)
    }
}
