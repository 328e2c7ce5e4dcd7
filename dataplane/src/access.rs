//! One record per connection end: the access log line (ztunnel's field names) and the
//! Istio TCP metrics of the worker, both built from the same [`Record`].
//!
//! A record is made when a connection is freed (a plain connection, an HBONE stream
//! connection) and on every refusal before a connection exists (admission, HBONE
//! inbound 400/401/503, outbound refusals). [`Record::emit`] prints it under the
//! `access` target, at info level, or at error level with `error="…"` when it was
//! refused or reset; a field whose value is not known is omitted (as ztunnel does),
//! never printed empty.
//!
//! [`Traffic`] is the worker's share of `istio_tcp_*`: a map from the label set to its
//! counters, updated on the worker when a connection opens and when it ends (bytes of a
//! connection are counted when it ends), published with the other counters and summed
//! by the main thread. It holds at most [`TRAFFIC_LABEL_SETS`] label sets per worker; a
//! connection whose label set would be one more is counted under the worker's overflow
//! set (every label `unknown` but `reporter`, `response_flags="OVERFLOW"`), so the
//! exposition has at most `workers × (TRAFFIC_LABEL_SETS + 2)` series per metric.

use std::net::SocketAddr;
use std::sync::Arc;

use ahash::AHashMap;
use tracing::{error, info};

/// At most this many label sets per worker in [`Traffic`]; more go to its overflow set.
pub const TRAFFIC_LABEL_SETS: usize = 512;

/// ztunnel's (and Istio's) value for a label it does not know.
pub const UNKNOWN: &str = "unknown";

/// One end of a connection as the mesh names it. Any field may be unknown.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Party {
    /// The workload's name.
    pub workload: Option<Arc<str>>,
    /// The workload's namespace.
    pub namespace: Option<Arc<str>>,
    /// Its SPIFFE identity: authenticated (an HBONE peer), vouched for (a workload
    /// served here, captured on its own link) or required (the destination of an
    /// outbound HBONE connection); omitted for a plain-TCP source of another node.
    pub identity: Option<Arc<str>>,
}

/// Which side of the mesh this gateway is for the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// The destination is a workload served here (`reporter="destination"`).
    Inbound,
    /// The source is a workload served here and the destination is elsewhere
    /// (`reporter="source"`).
    Outbound,
}

impl Direction {
    /// `direction` in the access log.
    pub fn name(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        }
    }

    /// Istio's `reporter` label.
    pub fn reporter(self) -> &'static str {
        match self {
            Direction::Inbound => "destination",
            Direction::Outbound => "source",
        }
    }
}

/// Istio's `response_flags`, as ztunnel sets them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Flags {
    /// Nothing to say (`-`).
    #[default]
    None,
    /// Refused by an authorization policy, peer authentication or the unknown-source
    /// rule (`DENY`).
    Deny,
    /// The connection could not be made or was refused on the way (`CONNECT`).
    Connect,
    /// Counted in the worker's overflow label set (`OVERFLOW`, xdpmesh's own).
    Overflow,
}

impl Flags {
    /// The label value.
    pub fn name(self) -> &'static str {
        match self {
            Flags::None => "-",
            Flags::Deny => "DENY",
            Flags::Connect => "CONNECT",
            Flags::Overflow => "OVERFLOW",
        }
    }
}

/// Who a connection is between, known when it opens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Meta {
    /// The source's address (the pod's address and port).
    pub src_addr: SocketAddr,
    /// The source.
    pub src: Party,
    /// The destination's address on the wire: the target for plain TCP, the
    /// workload's HBONE address (`ip:15008`) for HBONE.
    pub dst_addr: SocketAddr,
    /// HBONE: the CONNECT target.
    pub dst_hbone_addr: Option<SocketAddr>,
    /// The destination service's hostname, for a connection to a service.
    pub dst_service: Option<Arc<str>>,
    /// The destination.
    pub dst: Party,
    /// Inbound or outbound.
    pub direction: Direction,
    /// Carried over mutual TLS (HBONE).
    pub mtls: bool,
}

/// One connection's end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Who and where.
    pub meta: Meta,
    /// Bytes sent to the source (the destination's answer), as ztunnel counts them.
    pub bytes_sent: u64,
    /// Bytes received from the source.
    pub bytes_recv: u64,
    /// From the first SYN to the end, in microseconds.
    pub duration_us: i64,
    /// Why it was refused or reset; `None` for a connection that ended normally.
    pub error: Option<String>,
    /// `response_flags`.
    pub flags: Flags,
}

impl Record {
    /// A connection refused before any byte flowed.
    pub fn refused(meta: Meta, flags: Flags, error: String) -> Record {
        Record {
            meta,
            bytes_sent: 0,
            bytes_recv: 0,
            duration_us: 0,
            error: Some(error),
            flags,
        }
    }

    /// Prints the access log line: `connection complete` with ztunnel's fields, at error
    /// level with `error` when there is one.
    pub fn emit(&self) {
        let m = &self.meta;
        let duration = format!("{}ms", self.duration_us.max(0) / 1000);
        // Two invocations, not one macro over the level: tracing's macros take a dotted
        // first field only inside braces, and not through another macro_rules.
        if let Some(error) = self.error.as_deref() {
            error!(
                target: "access",
                {
                    src.addr = %m.src_addr,
                    src.workload = m.src.workload.as_deref(),
                    src.namespace = m.src.namespace.as_deref(),
                    src.identity = m.src.identity.as_deref(),
                    dst.addr = %m.dst_addr,
                    dst.hbone_addr = m.dst_hbone_addr.map(tracing::field::display),
                    dst.service = m.dst_service.as_deref(),
                    dst.workload = m.dst.workload.as_deref(),
                    dst.namespace = m.dst.namespace.as_deref(),
                    dst.identity = m.dst.identity.as_deref(),
                    direction = m.direction.name(),
                    bytes_sent = self.bytes_sent,
                    bytes_recv = self.bytes_recv,
                    duration = duration.as_str(),
                    error,
                },
                "connection complete"
            );
        } else {
            info!(
                target: "access",
                {
                    src.addr = %m.src_addr,
                    src.workload = m.src.workload.as_deref(),
                    src.namespace = m.src.namespace.as_deref(),
                    src.identity = m.src.identity.as_deref(),
                    dst.addr = %m.dst_addr,
                    dst.hbone_addr = m.dst_hbone_addr.map(tracing::field::display),
                    dst.service = m.dst_service.as_deref(),
                    dst.workload = m.dst.workload.as_deref(),
                    dst.namespace = m.dst.namespace.as_deref(),
                    dst.identity = m.dst.identity.as_deref(),
                    direction = m.direction.name(),
                    bytes_sent = self.bytes_sent,
                    bytes_recv = self.bytes_recv,
                    duration = duration.as_str(),
                },
                "connection complete"
            );
        }
    }
}

/// The label set of `istio_tcp_*` (ztunnel's `CommonTrafficLabels`, the part xdpmesh
/// knows). Unknown values are `unknown`, as ztunnel writes them.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TrafficLabels {
    /// `source` (outbound) or `destination` (inbound).
    pub reporter: &'static str,
    /// Source workload.
    pub source_workload: Arc<str>,
    /// Its namespace.
    pub source_workload_namespace: Arc<str>,
    /// Its identity (`spiffe://…`).
    pub source_principal: Arc<str>,
    /// Destination workload.
    pub destination_workload: Arc<str>,
    /// Its namespace.
    pub destination_workload_namespace: Arc<str>,
    /// Its identity.
    pub destination_principal: Arc<str>,
    /// Destination service (always `unknown`: no services yet).
    pub destination_service: Arc<str>,
    /// `mutual_tls` for HBONE, else `unknown`.
    pub connection_security_policy: &'static str,
    /// `response_flags`.
    pub response_flags: &'static str,
}

impl TrafficLabels {
    /// The labels of a connection.
    pub fn of(meta: &Meta, flags: Flags) -> TrafficLabels {
        let v = |s: &Option<Arc<str>>| s.clone().unwrap_or_else(|| Arc::from(UNKNOWN));
        TrafficLabels {
            reporter: meta.direction.reporter(),
            source_workload: v(&meta.src.workload),
            source_workload_namespace: v(&meta.src.namespace),
            source_principal: v(&meta.src.identity),
            destination_workload: v(&meta.dst.workload),
            destination_workload_namespace: v(&meta.dst.namespace),
            destination_principal: v(&meta.dst.identity),
            destination_service: v(&meta.dst_service),
            connection_security_policy: if meta.mtls { "mutual_tls" } else { UNKNOWN },
            response_flags: flags.name(),
        }
    }

    /// A worker's overflow set for `reporter`.
    fn overflow(reporter: &'static str) -> TrafficLabels {
        let u: Arc<str> = Arc::from(UNKNOWN);
        TrafficLabels {
            reporter,
            source_workload: u.clone(),
            source_workload_namespace: u.clone(),
            source_principal: u.clone(),
            destination_workload: u.clone(),
            destination_workload_namespace: u.clone(),
            destination_principal: u.clone(),
            destination_service: u,
            connection_security_policy: UNKNOWN,
            response_flags: Flags::Overflow.name(),
        }
    }

    /// `(name, value)` pairs in ztunnel's order, for the exposition.
    pub fn pairs(&self) -> Vec<(&'static str, &str)> {
        vec![
            ("reporter", self.reporter),
            ("source_workload", &self.source_workload),
            ("source_workload_namespace", &self.source_workload_namespace),
            ("source_principal", &self.source_principal),
            ("destination_workload", &self.destination_workload),
            (
                "destination_workload_namespace",
                &self.destination_workload_namespace,
            ),
            ("destination_principal", &self.destination_principal),
            ("destination_service", &self.destination_service),
            (
                "connection_security_policy",
                self.connection_security_policy,
            ),
            ("response_flags", self.response_flags),
        ]
    }
}

/// `istio_tcp_*` of one label set.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TrafficCounts {
    /// `istio_tcp_connections_opened_total`.
    pub opened: u64,
    /// `istio_tcp_connections_closed_total`.
    pub closed: u64,
    /// `istio_tcp_sent_bytes_total`: bytes sent to the source (the response).
    pub sent: u64,
    /// `istio_tcp_received_bytes_total`: bytes received from the source (the request).
    pub received: u64,
}

impl TrafficCounts {
    /// Adds another's counts.
    pub fn add(&mut self, o: &TrafficCounts) {
        self.opened += o.opened;
        self.closed += o.closed;
        self.sent += o.sent;
        self.received += o.received;
    }
}

/// One worker's `istio_tcp_*`, bounded to [`TRAFFIC_LABEL_SETS`] label sets.
#[derive(Debug, Default)]
pub struct Traffic {
    slots: AHashMap<TrafficLabels, TrafficCounts>,
    /// Changed since the last [`Traffic::take_changed`].
    changed: bool,
}

impl Traffic {
    fn slot(&mut self, labels: TrafficLabels) -> &mut TrafficCounts {
        self.changed = true;
        if !self.slots.contains_key(&labels) && self.slots.len() >= TRAFFIC_LABEL_SETS {
            return self
                .slots
                .entry(TrafficLabels::overflow(labels.reporter))
                .or_default();
        }
        self.slots.entry(labels).or_default()
    }

    /// A connection opened (counted under `response_flags="-"`).
    pub fn opened(&mut self, meta: &Meta) {
        self.slot(TrafficLabels::of(meta, Flags::None)).opened += 1;
    }

    /// A connection ended (or was refused, when `refused`: then it is counted as opened
    /// too, under the same labels).
    pub fn closed(&mut self, r: &Record, refused: bool) {
        let c = self.slot(TrafficLabels::of(&r.meta, r.flags));
        if refused {
            c.opened += 1;
        }
        c.closed += 1;
        c.sent += r.bytes_sent;
        c.received += r.bytes_recv;
    }

    /// Label sets in use.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether no connection was counted yet.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Every label set and its counts if anything changed since the last call.
    pub fn take_changed(&mut self) -> Option<Vec<(TrafficLabels, TrafficCounts)>> {
        if !std::mem::take(&mut self.changed) {
            return None;
        }
        Some(self.slots.iter().map(|(l, c)| (l.clone(), *c)).collect())
    }
}

/// Upper bounds of the latency histograms' buckets, in seconds (+Inf follows). They
/// start at 100 µs: a connection set up through two gateways on one machine takes a few
/// hundred microseconds, and a first bucket of 500 µs would hold all of them.
pub const LATENCY_BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
    10.0,
];

/// A latency histogram with [`LATENCY_BUCKETS`] (plain integers, counted on the worker).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Histogram {
    /// Observations per bucket (not cumulative); the last one is +Inf.
    pub buckets: [u64; LATENCY_BUCKETS.len() + 1],
    /// Sum of the observations, microseconds.
    pub sum_us: u64,
    /// Number of observations.
    pub count: u64,
}

impl Histogram {
    /// Records one observation of `us` microseconds.
    pub fn observe(&mut self, us: i64) {
        let us = us.max(0) as u64;
        let secs = us as f64 / 1e6;
        let i = LATENCY_BUCKETS
            .iter()
            .position(|&b| secs <= b)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.buckets[i] += 1;
        self.sum_us += us;
        self.count += 1;
    }

    /// Adds another's observations.
    pub fn add(&mut self, o: &Histogram) {
        for (a, b) in self.buckets.iter_mut().zip(o.buckets) {
            *a += b;
        }
        self.sum_us += o.sum_us;
        self.count += o.count;
    }

    /// `(upper bound, cumulative count)` per bucket, +Inf last, as the exposition wants.
    pub fn cumulative(&self) -> Vec<(f64, u64)> {
        let mut n = 0;
        LATENCY_BUCKETS
            .iter()
            .copied()
            .chain([f64::INFINITY])
            .zip(self.buckets)
            .map(|(b, c)| {
                n += c;
                (b, n)
            })
            .collect()
    }

    /// `{"count", "sum_us", "buckets": [{"le": seconds, "count": cumulative}, ...]}` for
    /// `stats.json` (the +Inf bucket's `le` is the string `"+Inf"`, as in the exposition).
    pub fn to_json(&self) -> serde_json::Value {
        let buckets: Vec<_> = self
            .cumulative()
            .into_iter()
            .map(|(le, n)| {
                let le = if le.is_finite() {
                    serde_json::json!(le)
                } else {
                    serde_json::json!("+Inf")
                };
                serde_json::json!({"le": le, "count": n})
            })
            .collect();
        serde_json::json!({"count": self.count, "sum_us": self.sum_us, "buckets": buckets})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(src_workload: &str) -> Meta {
        Meta {
            src_addr: "198.18.1.2:40000".parse().unwrap(),
            src: Party {
                workload: Some(src_workload.into()),
                namespace: Some("default".into()),
                identity: None,
            },
            dst_addr: "198.18.2.2:7000".parse().unwrap(),
            dst_hbone_addr: None,
            dst_service: None,
            dst: Party::default(),
            direction: Direction::Outbound,
            mtls: false,
        }
    }

    #[test]
    fn labels_default_to_unknown_and_counts_add_up() {
        let mut t = Traffic::default();
        let m = meta("client");
        t.opened(&m);
        let r = Record {
            meta: m.clone(),
            bytes_sent: 10,
            bytes_recv: 20,
            duration_us: 5_000,
            error: None,
            flags: Flags::None,
        };
        t.closed(&r, false);
        t.closed(
            &Record::refused(m, Flags::Deny, "authorization policy".into()),
            true,
        );
        let mut v = t.take_changed().unwrap();
        v.sort_by_key(|(l, _)| l.response_flags);
        assert_eq!(v.len(), 2);
        assert_eq!(
            v[0].0.pairs(),
            vec![
                ("reporter", "source"),
                ("source_workload", "client"),
                ("source_workload_namespace", "default"),
                ("source_principal", "unknown"),
                ("destination_workload", "unknown"),
                ("destination_workload_namespace", "unknown"),
                ("destination_principal", "unknown"),
                ("destination_service", "unknown"),
                ("connection_security_policy", "unknown"),
                ("response_flags", "-"),
            ]
        );
        assert_eq!(
            v[0].1,
            TrafficCounts {
                opened: 1,
                closed: 1,
                sent: 10,
                received: 20
            }
        );
        assert_eq!(v[1].0.response_flags, "DENY");
        assert_eq!(
            v[1].1,
            TrafficCounts {
                opened: 1,
                closed: 1,
                sent: 0,
                received: 0
            }
        );
        assert!(t.take_changed().is_none(), "nothing changed since");
    }

    #[test]
    fn label_sets_are_bounded_per_worker() {
        let mut t = Traffic::default();
        for i in 0..TRAFFIC_LABEL_SETS + 10 {
            t.opened(&meta(&format!("w{i}")));
        }
        assert_eq!(t.len(), TRAFFIC_LABEL_SETS + 1);
        let v = t.take_changed().unwrap();
        let over: Vec<_> = v
            .iter()
            .filter(|(l, _)| l.response_flags == "OVERFLOW")
            .collect();
        assert_eq!(over.len(), 1);
        assert_eq!(over[0].1.opened, 10);
        assert_eq!(&*over[0].0.source_workload, "unknown");
        assert_eq!(over[0].0.reporter, "source");
    }

    #[test]
    fn histogram_buckets_are_cumulative() {
        let mut h = Histogram::default();
        h.observe(90); // 90 µs
        h.observe(400); // 0.4 ms
        h.observe(3_000); // 3 ms
        h.observe(60_000_000); // 60 s: +Inf
        let c = h.cumulative();
        assert_eq!(c[0], (0.0001, 1));
        assert_eq!(c[1], (0.00025, 1));
        assert_eq!(c[2], (0.0005, 2));
        assert_eq!(c[5], (0.005, 3));
        assert_eq!(c.last().copied(), Some((f64::INFINITY, 4)));
        assert_eq!((h.count, h.sum_us), (4, 60_003_490));
        let j = h.to_json();
        assert_eq!(
            (j["count"].as_u64(), j["sum_us"].as_u64()),
            (Some(4), Some(60_003_490))
        );
        assert_eq!(
            j["buckets"][0],
            serde_json::json!({"le": 0.0001, "count": 1})
        );
        assert_eq!(
            j["buckets"][2],
            serde_json::json!({"le": 0.0005, "count": 2})
        );
        assert_eq!(
            j["buckets"][16],
            serde_json::json!({"le": "+Inf", "count": 4})
        );
        assert_eq!(j["buckets"].as_array().map(Vec::len), Some(17));
    }
}
