//! The operator's endpoints, served by threads of the main process, off the packet
//! path: they read what the workers published ([`Shared`]) and what the main thread
//! keeps in [`OpsState`], never a worker's own state.
//!
//! - metrics (default `0.0.0.0:15020`): `/stats/prometheus` and `/metrics`, Prometheus
//!   text format 0.0.4 (encoded by `prometheus-client`, as ztunnel does): Istio's
//!   `istio_tcp_*` with ztunnel's labels, and xdpmesh's own `xdpmesh_*`.
//! - readiness (default `0.0.0.0:15021`): `/healthz/ready`, 200 `ready` or 503 with
//!   every reason it is not.
//! - admin (default `127.0.0.1:15000`): `/config_dump` (JSON, no key material),
//!   `/logging` (GET: the filter in force; POST `?level=debug`, `?access=warn`, …:
//!   change it), `/quitquitquit` (POST: stop as on SIGTERM).
//!
//! `tiny_http` rather than hyper: this process has no async runtime, and three small
//! blocking servers on their own threads are all these endpoints need.
//!
//! Label cardinality is bounded: `istio_tcp_*` by [`crate::access::TRAFFIC_LABEL_SETS`]
//! label sets per worker (plus one overflow set per reporter); `xdpmesh_*` by the
//! workers (`worker`), the fixed drop and XDP verdict reasons, and the identities
//! served here (`xdpmesh_certificate_expiry_timestamp_seconds`).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use ahash::AHashMap;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use serde_json::{json, Value};
use tracing::{info, warn};

use crate::access::{Histogram, TrafficCounts, TrafficLabels};
use crate::identity::IdentityStore;
use crate::metrics::{Local, Shared};

/// Counters of [`Local`] that are levels, not running totals (exposed as gauges).
const GAUGES: &[&str] = &[
    "live_connections",
    "hbone_tunnels_live",
    "table_generation",
    "unknown_source_holding",
    "sockets_pooled",
    "hbone_pool_tunnels",
    "tx_in_flight",
    "rx_refill_backlog",
];

/// What the main thread knows that the endpoints need, updated every 200 ms.
#[derive(Debug, Default, Clone)]
pub struct Status {
    /// The XDP program is attached to every interface and diverts.
    pub xdp_attached: bool,
    /// The control process's liveness as the table file shows it (`None`: no table
    /// file yet).
    pub control: Option<ControlStatus>,
    /// The identities in force.
    pub identities: Option<Arc<IdentityStore>>,
    /// Identity sets loaded.
    pub identity_loads: u64,
    /// The XDP program's verdicts: (reason, packets, bytes), summed over CPUs.
    pub xdp: Vec<(&'static str, u64, u64)>,
    /// A worker thread has exited.
    pub worker_exited: bool,
}

/// The control process and its tables, for readiness and metrics.
#[derive(Debug, Default, Clone, Copy)]
pub struct ControlStatus {
    /// The generation the control process published last.
    pub published: u64,
    /// How old that publication is, ms.
    pub age_ms: u64,
    /// Time since its last heartbeat, ms.
    pub heartbeat_age_ms: u64,
    /// Its heartbeat is recent enough (see `stats`' `tables.control_alive`).
    pub alive: bool,
    /// How long it may be silent before it counts as gone, ms.
    pub gone_after_ms: u64,
}

/// Changes the log filter at run time: takes the directives (`info,access=warn`),
/// returns an error that says why they were not taken.
pub type LogControl = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

/// Shared by the main thread and the endpoint threads.
pub struct OpsState {
    /// Every worker's published counters (empty until the workers exist).
    pub workers: Mutex<Vec<Arc<Shared>>>,
    /// The main thread's view.
    pub status: Mutex<Status>,
    /// Set by `/quitquitquit`: the process stops as on SIGTERM.
    pub stop: Arc<AtomicBool>,
    /// The log filter in force (directives).
    pub log_filter: Mutex<String>,
    log_control: LogControl,
}

impl std::fmt::Debug for OpsState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpsState").finish_non_exhaustive()
    }
}

impl OpsState {
    /// State with nothing known yet.
    pub fn new(stop: Arc<AtomicBool>, log_filter: String, log_control: LogControl) -> OpsState {
        OpsState {
            workers: Mutex::new(Vec::new()),
            status: Mutex::new(Status::default()),
            stop,
            log_filter: Mutex::new(log_filter),
            log_control,
        }
    }

    fn workers(&self) -> Vec<Arc<Shared>> {
        self.workers.lock().map(|w| w.clone()).unwrap_or_default()
    }

    fn status(&self) -> Status {
        self.status.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Why the dataplane is not ready (empty: ready). Ready means: the XDP program
    /// attached and diverting, every worker running, a table generation in force on
    /// every worker, identities loaded, and the control process alive (its heartbeat
    /// at most `gone_after_ms` old).
    pub fn not_ready(&self) -> Vec<String> {
        let s = self.status();
        let workers = self.workers();
        let mut why = Vec::new();
        if !s.xdp_attached {
            why.push("the XDP program is not attached yet".to_owned());
        }
        if workers.is_empty() {
            why.push("the workers have not started".to_owned());
        }
        if s.worker_exited {
            why.push("a worker exited".to_owned());
        }
        for (q, w) in workers.iter().enumerate() {
            if !w.running.load(Ordering::Relaxed) {
                why.push(format!("worker {q} is not running"));
            } else if w.snapshot().table_generation == 0 {
                why.push(format!(
                    "worker {q} has no table generation loaded (is xdpmesh-control running for this instance?)"
                ));
            }
        }
        match s.control {
            None => why.push(
                "no table file yet (is xdpmesh-control running for this instance?)".to_owned(),
            ),
            Some(c) if !c.alive => why.push(format!(
                "the control process is gone: no heartbeat for {} ms (more than {} ms)",
                c.heartbeat_age_ms, c.gone_after_ms
            )),
            Some(_) => {}
        }
        if s.identities.is_none() {
            why.push("no identities loaded (is xdpmesh-control publishing them?)".to_owned());
        }
        why
    }

    /// `/config_dump`: workloads, services, policies, certificate metadata (never
    /// keys), workers, tunnels and pools.
    pub fn config_dump(&self) -> Value {
        let s = self.status();
        let workers = self.workers();
        let tables = workers
            .first()
            .and_then(|w| w.ops.lock().ok().and_then(|o| o.tables.clone()));
        let mut dump = json!({
            "generation": tables.as_ref().map_or(0, |(g, _)| *g),
            "services": [],
        });
        if let Some((_, t)) = &tables {
            let node = |i: u32| t.nodes.get(i as usize).map(|n| n.name.clone());
            dump["trust_domain"] = json!(t.trust_domain);
            dump["local_node"] = json!(t.local_node.and_then(node));
            dump["workloads"] = t
                .workloads
                .iter()
                .enumerate()
                .map(|(i, w)| {
                    let addrs: Vec<String> = t
                        .addresses
                        .iter()
                        .filter(|a| a.workload as usize == i)
                        .map(|a| a.addr.to_string())
                        .collect();
                    json!({
                        "name": w.name,
                        "namespace": w.namespace,
                        "service_account": w.service_account,
                        "identity": format!("spiffe://{}/ns/{}/sa/{}", t.trust_domain, w.namespace, w.service_account),
                        "node": node(w.node),
                        "protocol": format!("{:?}", w.protocol).to_uppercase(),
                        "peer_auth": format!("{:?}", w.peer_auth).to_uppercase(),
                        "addresses": addrs,
                    })
                })
                .collect();
            dump["policies"] = t
                .policies
                .iter()
                .map(|p| {
                    let from: Vec<String> = p
                        .from
                        .iter()
                        .map(|f| match f {
                            xdpmesh_shm::PolicySource::Principal(x) => format!("principal:{x}"),
                            xdpmesh_shm::PolicySource::Namespace(x) => format!("namespace:{x}"),
                        })
                        .collect();
                    json!({
                        "name": p.name,
                        "namespace": p.namespace,
                        "workload": p.workload,
                        "action": format!("{:?}", p.action).to_uppercase(),
                        "from": from,
                        "ports": p.ports,
                    })
                })
                .collect();
            dump["pod_cidrs"] = t.pod_cidrs.iter().map(|c| c.to_string()).collect();
            dump["unknown_source"] = json!(format!("{:?}", t.unknown_source).to_lowercase());
        } else {
            dump["workloads"] = json!([]);
            dump["policies"] = json!([]);
        }
        dump["certificates"] = s
            .identities
            .as_deref()
            .map(certificates)
            .unwrap_or_default()
            .into();
        dump["workers"] = workers
            .iter()
            .enumerate()
            .map(|(q, w)| {
                let l = w.snapshot();
                let (tunnels, pool) = w
                    .ops
                    .lock()
                    .map(|o| (o.tunnels.clone(), o.pool.clone()))
                    .unwrap_or_default();
                json!({
                    "queue": q,
                    "running": w.running.load(Ordering::Relaxed),
                    "table_generation": l.table_generation,
                    "live_connections": l.live_connections,
                    "tunnels_live": l.hbone_tunnels_live,
                    "sockets_pooled": l.sockets_pooled,
                    "tunnels": tunnels,
                    "pool": pool,
                })
            })
            .collect();
        dump
    }

    /// The Prometheus text exposition.
    pub fn prometheus(self: &Arc<Self>) -> String {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Exposition(self.clone())));
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::prometheus_text::encode(&mut out, &registry) {
            warn!(%e, "encoding the metrics failed");
        }
        out
    }

    /// Changes the log filter from `/logging`'s query: `level=L` sets the default
    /// level, any other `target=L` that target's. Returns the filter now in force.
    pub fn set_logging(&self, query: &str) -> Result<String, String> {
        let mut current = self.log_filter.lock().map_err(|_| "poisoned".to_owned())?;
        let mut directives: Vec<(String, String)> = Vec::new();
        let mut default = None;
        for d in current.split(',').filter(|d| !d.is_empty()) {
            match d.split_once('=') {
                Some((t, l)) => directives.push((t.to_owned(), l.to_owned())),
                None => default = Some(d.to_owned()),
            }
        }
        if query.is_empty() {
            return Err(
                "no level given: use ?level=debug or ?<target>=<level> (e.g. ?access=warn)".into(),
            );
        }
        for kv in query.split('&').filter(|kv| !kv.is_empty()) {
            let (k, v) = kv
                .split_once('=')
                .ok_or_else(|| format!("{kv:?}: expected <target>=<level>"))?;
            let level = v.to_ascii_lowercase();
            if !["trace", "debug", "info", "warn", "error", "off"].contains(&level.as_str()) {
                return Err(format!(
                    "{k}={v}: unknown level (trace, debug, info, warn, error or off)"
                ));
            }
            if k == "level" {
                default = Some(level);
            } else {
                directives.retain(|(t, _)| t != k);
                directives.push((k.to_owned(), level));
            }
        }
        let filter = default
            .into_iter()
            .chain(directives.iter().map(|(t, l)| format!("{t}={l}")))
            .collect::<Vec<_>>()
            .join(",");
        (self.log_control)(&filter)?;
        info!(filter = %filter, "log filter changed (/logging)");
        *current = filter.clone();
        Ok(filter)
    }
}

/// Certificate metadata of the identities in force: identity, serial, validity.
fn certificates(ids: &IdentityStore) -> Vec<Value> {
    let mut v: Vec<Value> = ids
        .certs()
        .map(|c| {
            let serial = c
                .cert_chain_der
                .first()
                .and_then(|der| x509_parser::parse_x509_certificate(der.as_ref()).ok())
                .map(|(_, x)| serial_hex(x.tbs_certificate.raw_serial()));
            json!({
                "identity": c.identity.to_string(),
                "serial": serial,
                "not_before_unix": unix(c.validity.not_before),
                "not_after_unix": unix(c.validity.not_after),
                "chain_length": c.cert_chain_der.len(),
            })
        })
        .collect();
    v.sort_by_key(|c| c["identity"].as_str().unwrap_or_default().to_owned());
    v
}

/// A serial as `openssl x509 -serial` prints it: upper-case hex, no leading zero byte.
fn serial_hex(raw: &[u8]) -> String {
    let trimmed: &[u8] = match raw.iter().position(|&b| b != 0) {
        Some(i) => &raw[i..],
        None => &[0],
    };
    trimmed.iter().map(|b| format!("{b:02X}")).collect()
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Encodes everything on each scrape from what the workers and the main thread
/// published last.
#[derive(Debug)]
struct Exposition(Arc<OpsState>);

type Labels<'a> = Vec<(&'static str, &'a str)>;

/// An `istio_tcp_*` metric: name, help, and which count it shows.
type IstioMetric = (&'static str, &'static str, fn(&TrafficCounts) -> u64);

fn family<'a>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    series: impl IntoIterator<Item = (Labels<'a>, u64)>,
) -> Result<(), std::fmt::Error> {
    let mut m = enc.encode_descriptor(name, help, None, kind)?;
    for (labels, v) in series {
        let fam = m.encode_family(&labels)?;
        match kind {
            MetricType::Counter => ConstCounter::new(v).encode(fam)?,
            _ => ConstGauge::new(v as i64).encode(fam)?,
        }
    }
    Ok(())
}

fn histogram(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    per_worker: &[(String, Histogram)],
) -> Result<(), std::fmt::Error> {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Histogram)?;
    for (worker, h) in per_worker {
        let labels: Labels = vec![("worker", worker)];
        let mut fam = m.encode_family(&labels)?;
        fam.encode_histogram::<prometheus_client::encoding::NoLabelSet>(
            h.sum_us as f64 / 1e6,
            h.count,
            &h.cumulative(),
            None,
        )?;
    }
    Ok(())
}

impl Collector for Exposition {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let st = &self.0;
        let status = st.status();
        let workers = st.workers();
        let mut traffic: AHashMap<TrafficLabels, TrafficCounts> = AHashMap::new();
        let mut locals: Vec<(String, Local)> = Vec::new();
        let mut handshake = Vec::new();
        let mut connect = Vec::new();
        for (q, w) in workers.iter().enumerate() {
            let q = q.to_string();
            locals.push((q.clone(), w.snapshot()));
            if let Ok(ops) = w.ops.lock() {
                for (l, c) in &ops.traffic {
                    traffic.entry(l.clone()).or_default().add(c);
                }
                handshake.push((q.clone(), ops.tls_handshake));
                connect.push((q, ops.connect));
            }
        }
        let mut traffic: Vec<_> = traffic.into_iter().collect();
        traffic.sort_by(|a, b| a.0.pairs().cmp(&b.0.pairs()));
        let istio: [IstioMetric; 4] = [
            (
                "istio_tcp_sent_bytes",
                "Bytes sent to the source during the connection (the response).",
                |c| c.sent,
            ),
            (
                "istio_tcp_received_bytes",
                "Bytes received from the source during the connection (the request).",
                |c| c.received,
            ),
            (
                "istio_tcp_connections_opened",
                "TCP connections opened.",
                |c| c.opened,
            ),
            (
                "istio_tcp_connections_closed",
                "TCP connections closed.",
                |c| c.closed,
            ),
        ];
        for (name, help, get) in istio {
            family(
                &mut enc,
                name,
                help,
                MetricType::Counter,
                traffic.iter().map(|(l, c)| (l.pairs(), get(c))),
            )?;
        }
        // Every per-worker counter, by the names stats.json uses.
        let jsons: Vec<(String, Value)> = locals
            .iter()
            .map(|(q, l)| (q.clone(), l.to_json()))
            .collect();
        if let Some((_, first)) = jsons.first() {
            let mut names: Vec<&String> = first
                .as_object()
                .map(|o| o.keys().filter(|k| *k != "rx_dropped").collect())
                .unwrap_or_default();
            names.sort();
            for name in names {
                let gauge = GAUGES.contains(&name.as_str());
                let kind = if gauge {
                    MetricType::Gauge
                } else {
                    MetricType::Counter
                };
                family(
                    &mut enc,
                    &format!("xdpmesh_worker_{name}"),
                    &format!("Per worker: {name} (see docs/INTERFACES.md, stats.json)."),
                    kind,
                    jsons.iter().map(|(q, j)| {
                        (vec![("worker", q.as_str())], j[name].as_u64().unwrap_or(0))
                    }),
                )?;
            }
            let reasons: Vec<String> = first["rx_dropped"]
                .as_object()
                .map(|o| o.keys().cloned().collect())
                .unwrap_or_default();
            let mut series = Vec::new();
            for (q, j) in &jsons {
                for r in &reasons {
                    series.push((
                        vec![("worker", q.as_str()), ("reason", r.as_str())],
                        j["rx_dropped"][r].as_u64().unwrap_or(0),
                    ));
                }
            }
            family(
                &mut enc,
                "xdpmesh_worker_rx_dropped_by_reason",
                "Frames dropped by the worker's parser, by reason.",
                MetricType::Counter,
                series,
            )?;
        }
        family(
            &mut enc,
            "xdpmesh_xdp_packets",
            "Packets by XDP verdict reason (the program's per-CPU counters, summed).",
            MetricType::Counter,
            status
                .xdp
                .iter()
                .map(|(r, p, _)| (vec![("reason", *r)], *p)),
        )?;
        family(
            &mut enc,
            "xdpmesh_xdp_bytes",
            "Bytes by XDP verdict reason (the program's per-CPU counters, summed).",
            MetricType::Counter,
            status
                .xdp
                .iter()
                .map(|(r, _, b)| (vec![("reason", *r)], *b)),
        )?;
        histogram(
            &mut enc,
            "xdpmesh_tls_handshake_seconds",
            "HBONE tunnels' TLS handshakes, from the first segment to the handshake's end.",
            &handshake,
        )?;
        histogram(
            &mut enc,
            "xdpmesh_connect_seconds",
            "Connection set-up, from the pod's SYN to the destination's acceptance.",
            &connect,
        )?;
        let in_force = locals
            .iter()
            .map(|(_, l)| l.table_generation)
            .min()
            .unwrap_or(0);
        let c = status.control.unwrap_or_default();
        let one = |v: u64| [(Labels::new(), v)];
        family(
            &mut enc,
            "xdpmesh_table_generation",
            "The table generation every worker runs.",
            MetricType::Gauge,
            one(in_force),
        )?;
        family(
            &mut enc,
            "xdpmesh_table_published_generation",
            "The table generation the control process published last.",
            MetricType::Gauge,
            one(c.published),
        )?;
        family(
            &mut enc,
            "xdpmesh_table_age_seconds",
            "Seconds since the control process published the tables in force.",
            MetricType::Gauge,
            one(c.age_ms / 1000),
        )?;
        family(
            &mut enc,
            "xdpmesh_control_alive",
            "1 while the control process's heartbeat is recent, else 0.",
            MetricType::Gauge,
            one(u64::from(c.alive)),
        )?;
        family(
            &mut enc,
            "xdpmesh_identity_loads",
            "Identity sets loaded (the first, then one per renewal).",
            MetricType::Counter,
            one(status.identity_loads),
        )?;
        let certs: Vec<(String, u64)> = status
            .identities
            .as_deref()
            .map(|ids| {
                ids.certs()
                    .map(|c| (c.identity.to_string(), unix(c.validity.not_after)))
                    .collect()
            })
            .unwrap_or_default();
        family(
            &mut enc,
            "xdpmesh_certificate_expiry_timestamp_seconds",
            "When each workload certificate served here expires (Unix time).",
            MetricType::Gauge,
            certs
                .iter()
                .map(|(id, t)| (vec![("identity", id.as_str())], *t)),
        )?;
        Ok(())
    }
}

/// Where the endpoints listen (`None`: that one is off).
#[derive(Debug, Clone, Copy)]
pub struct Listen {
    /// Metrics.
    pub metrics: Option<SocketAddr>,
    /// Readiness.
    pub readiness: Option<SocketAddr>,
    /// Admin (keep it on a loopback address: it can stop the process).
    pub admin: Option<SocketAddr>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Metrics,
    Readiness,
    Admin,
}

/// Binds the endpoints and serves each on its own thread. A port that cannot be bound
/// is an error (naming it and the flag to change it).
pub fn serve(state: Arc<OpsState>, listen: Listen) -> anyhow::Result<()> {
    for (role, addr, flag) in [
        (Role::Metrics, listen.metrics, "--metrics-addr"),
        (Role::Readiness, listen.readiness, "--readiness-addr"),
        (Role::Admin, listen.admin, "--admin-addr"),
    ] {
        let Some(addr) = addr else { continue };
        let server = tiny_http::Server::http(addr).map_err(|e| {
            anyhow::anyhow!("cannot listen on {addr} ({role:?} endpoint): {e}; pick another address with {flag} or turn it off with {flag} off")
        })?;
        let state = state.clone();
        std::thread::Builder::new()
            .name(format!("xdpmesh-{role:?}").to_lowercase())
            .spawn(move || {
                for req in server.incoming_requests() {
                    let (code, ctype, body) = handle(&state, role, req.method(), req.url());
                    let header = tiny_http::Header::from_bytes("Content-Type", ctype)
                        .expect("static header");
                    let resp = tiny_http::Response::from_string(body)
                        .with_status_code(code)
                        .with_header(header);
                    let _ = req.respond(resp);
                }
            })?;
        info!(%addr, endpoint = ?role, "serving");
    }
    Ok(())
}

const TEXT: &str = "text/plain; charset=utf-8";

fn handle(
    st: &Arc<OpsState>,
    role: Role,
    method: &tiny_http::Method,
    url: &str,
) -> (u16, &'static str, String) {
    let (path, query) = url.split_once('?').unwrap_or((url, ""));
    let post = *method == tiny_http::Method::Post;
    match (role, path) {
        (Role::Metrics, "/stats/prometheus" | "/metrics") => (
            200,
            "text/plain; version=0.0.4; charset=utf-8",
            st.prometheus(),
        ),
        (Role::Readiness, "/healthz/ready") => {
            let why = st.not_ready();
            if why.is_empty() {
                (200, TEXT, "ready\n".into())
            } else {
                (503, TEXT, format!("not ready: {}\n", why.join("; ")))
            }
        }
        (Role::Admin, "/config_dump") => (
            200,
            "application/json",
            serde_json::to_string_pretty(&st.config_dump()).unwrap_or_default(),
        ),
        (Role::Admin, "/logging") if post => match st.set_logging(query) {
            Ok(f) => (200, TEXT, format!("log filter: {f}\n")),
            Err(e) => (400, TEXT, format!("log filter unchanged: {e}\n")),
        },
        (Role::Admin, "/logging") => {
            let f = st.log_filter.lock().map(|f| f.clone()).unwrap_or_default();
            (
                200,
                TEXT,
                format!("log filter: {f}\nchange it with POST /logging?level=<level> or ?<target>=<level>\n"),
            )
        }
        (Role::Admin, "/quitquitquit") if post => {
            info!("stopping: /quitquitquit");
            st.stop.store(true, Ordering::Relaxed);
            (200, TEXT, "OK\n".into())
        }
        (Role::Admin, "/quitquitquit") => (405, TEXT, "use POST /quitquitquit\n".into()),
        _ => (
            404,
            TEXT,
            format!(
                "no {path} here: {}\n",
                match role {
                    Role::Metrics => "/stats/prometheus, /metrics",
                    Role::Readiness => "/healthz/ready",
                    Role::Admin => "/config_dump, /logging, /quitquitquit",
                }
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serials_print_as_openssl_does() {
        assert_eq!(serial_hex(&[0x00, 0x8f, 0x01]), "8F01");
        assert_eq!(serial_hex(&[0x3a]), "3A");
        assert_eq!(serial_hex(&[0, 0]), "00");
    }

    #[test]
    fn logging_changes_one_target_or_the_default() {
        let seen = Arc::new(Mutex::new(String::new()));
        let s2 = seen.clone();
        let st = OpsState::new(
            Arc::new(AtomicBool::new(false)),
            "info,access=info".into(),
            Box::new(move |f| {
                *s2.lock().unwrap() = f.to_owned();
                Ok(())
            }),
        );
        assert_eq!(st.set_logging("access=warn").unwrap(), "info,access=warn");
        assert_eq!(st.set_logging("level=debug").unwrap(), "debug,access=warn");
        assert_eq!(*seen.lock().unwrap(), "debug,access=warn");
        assert_eq!(
            st.set_logging("level=loud").unwrap_err(),
            "level=loud: unknown level (trace, debug, info, warn, error or off)"
        );
        assert_eq!(*st.log_filter.lock().unwrap(), "debug,access=warn");
    }

    #[test]
    fn not_ready_says_why() {
        let st = OpsState::new(
            Arc::new(AtomicBool::new(false)),
            String::new(),
            Box::new(|_| Ok(())),
        );
        assert_eq!(
            st.not_ready(),
            vec![
                "the XDP program is not attached yet",
                "the workers have not started",
                "no table file yet (is xdpmesh-control running for this instance?)",
                "no identities loaded (is xdpmesh-control publishing them?)",
            ]
        );
    }
}
