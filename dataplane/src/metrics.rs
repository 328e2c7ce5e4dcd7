//! Per-worker counters. A worker counts into plain integers on the fast path and
//! publishes them into its shared atomics a few times per second (and when idle), so the
//! packet path has no shared writes; the stats thread aggregates off the fast path.

use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::{json, Map, Value};

use crate::access::{Histogram, TrafficCounts, TrafficLabels};
use crate::wire::DropReason;

/// What a worker publishes for the operator's endpoints besides its counters (under a
/// mutex, written at publication time, off the packet path).
#[derive(Debug, Default)]
pub struct WorkerOps {
    /// `istio_tcp_*` per label set (see [`crate::access::Traffic`]).
    pub traffic: Vec<(TrafficLabels, TrafficCounts)>,
    /// TLS handshakes of HBONE tunnels, from the first segment to the handshake's end.
    pub tls_handshake: Histogram,
    /// Connection set-up: from the pod's SYN to the destination's acceptance (plain:
    /// the upstream leg established; HBONE outbound: the 200; inbound: the delivery
    /// leg established).
    pub connect: Histogram,
    /// The worker's tunnels, for `/config_dump`.
    pub tunnels: Vec<serde_json::Value>,
    /// The worker's client tunnel pool, for `/config_dump`.
    pub pool: Vec<serde_json::Value>,
    /// The table generation the worker loaded last (worker 0 only: every worker loads
    /// the same), for `/config_dump`.
    pub tables: Option<(u64, std::sync::Arc<xdpmesh_shm::Tables>)>,
}

macro_rules! counters {
    ($($name:ident),* $(,)?) => {
        /// Worker-local counters (plain integers, fast path).
        #[derive(Debug, Default, Clone)]
        pub struct Local {
            $(#[doc = stringify!($name)] pub $name: u64,)*
            /// Frames dropped by the worker's parser, by reason.
            pub rx_dropped: [u64; DropReason::ALL.len()],
        }

        /// The shared copy of one worker's counters.
        #[derive(Debug, Default)]
        pub struct Shared {
            $($name: AtomicU64,)*
            rx_dropped: [AtomicU64; DropReason::ALL.len()],
            /// A few live connections (oldest first) with their legs' TCP states, for
            /// `stats`: written at publication time only, never on the packet path.
            pub live_sample: std::sync::Mutex<Vec<String>>,
            /// The worker's Istio TCP metrics, latency histograms, tunnels and tables,
            /// for the operator's endpoints: written at publication time only.
            pub ops: std::sync::Mutex<WorkerOps>,
            /// Set once the worker's loop runs (readiness).
            pub running: std::sync::atomic::AtomicBool,
        }

        impl Shared {
            /// Publishes a worker's local counters (relaxed stores; one writer per worker).
            pub fn publish(&self, l: &Local) {
                $(self.$name.store(l.$name, Ordering::Relaxed);)*
                for (a, v) in self.rx_dropped.iter().zip(l.rx_dropped) {
                    a.store(v, Ordering::Relaxed);
                }
            }

            /// Reads the last published values.
            pub fn snapshot(&self) -> Local {
                let mut l = Local { $($name: self.$name.load(Ordering::Relaxed),)* ..Default::default() };
                for (v, a) in l.rx_dropped.iter_mut().zip(&self.rx_dropped) {
                    *v = a.load(Ordering::Relaxed);
                }
                l
            }
        }

        impl Local {
            /// Adds another worker's counters (for totals).
            pub fn add(&mut self, o: &Local) {
                $(self.$name += o.$name;)*
                for (a, b) in self.rx_dropped.iter_mut().zip(o.rx_dropped) {
                    *a += b;
                }
            }

            /// JSON object with every counter, drops by reason label.
            pub fn to_json(&self) -> Value {
                let mut m = Map::new();
                $(m.insert(stringify!($name).into(), json!(self.$name));)*
                let drops: Map<String, Value> =
                    DropReason::ALL.iter().map(|r| (r.name().to_string(), json!(self.rx_dropped[r.index()]))).collect();
                m.insert("rx_dropped".into(), Value::Object(drops));
                Value::Object(m)
            }
        }
    };
}

counters!(
    rx_packets,
    rx_bytes,
    tx_packets,
    tx_no_frame,
    live_connections,
    opened_connections,
    closed_connections,
    reset_connections,
    upstream_failures,
    no_flow_resets,
    late_segments,
    no_route,
    handover_out,
    handover_in,
    handover_dropped,
    neighbor_requests,
    neighbor_timeouts,
    bytes_downstream_to_upstream,
    bytes_upstream_to_downstream,
    table_generation,
    table_errors,
    loop_iterations,
    hbone_tunnels_opened,
    hbone_tunnels_accepted,
    hbone_tunnels_closed,
    hbone_tunnels_live,
    hbone_tunnel_failures,
    hbone_keepalive_timeouts,
    hbone_pings_sent,
    hbone_streams,
    hbone_refused,
    policy_denied,
    peer_auth_refused,
    plaintext_accepted,
    unknown_source_passed,
    unknown_source_rejected,
    unknown_source_held,
    unknown_source_released,
    unknown_source_expired,
    unknown_source_hold_full,
    unknown_source_holding,
    service_connections,
    service_refused,
    service_endpoint_ejections,
    xsk_rx_dropped,
    xsk_rx_ring_full,
    xsk_fill_ring_empty,
    xsk_rx_invalid,
    xsk_tx_invalid,
    xsk_rx_oversized,
    sockets_reused,
    sockets_pooled,
    socket_buffers_released,
    hbone_pool_tunnels,
    tx_in_flight,
    rx_refill_backlog,
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_snapshot_and_totals() {
        let s = Shared::default();
        let mut l = Local {
            rx_packets: 3,
            live_connections: 2,
            ..Default::default()
        };
        l.rx_dropped[DropReason::BadTcpChecksum.index()] = 5;
        s.publish(&l);
        let mut total = s.snapshot();
        total.add(&l);
        let j = total.to_json();
        assert_eq!(j["rx_packets"], 6);
        assert_eq!(j["live_connections"], 4);
        assert_eq!(j["rx_dropped"]["bad_tcp_checksum"], 10);
        assert_eq!(j["rx_dropped"]["truncated_eth"], 0);
    }
}
