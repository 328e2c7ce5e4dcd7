//! The operator's endpoints and the access log (issue 10, items 1–4), on the
//! four-namespace topology with real peers:
//!
//! - a real Prometheus server (in gateway A's namespace) scrapes both gateways' 15020;
//!   after a known HBONE transfer, its query API returns `istio_tcp_*` byte and
//!   connection counts equal to what the client moved, exactly, with ztunnel's labels;
//! - `/config_dump` (15000, loopback) is JSON holding every workload, policy and
//!   certificate serial of the config, and no key material;
//! - readiness (15021): not ready before tables and XDP, ready after, not ready once
//!   the control process has been gone more than 5 s;
//! - `--log-format json`: the access lines of a plain TCP connection, a policy
//!   refusal and an HBONE connection (both gateways) carry exactly ztunnel's fields.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::Value;
use xdpmesh_netns::gateway::{pin_dir, run_dir, shm_path, CONTROL_READY};
use xdpmesh_netns::topology::{GWA_UP_ADDR, GWB_UP_ADDR, SERVER_ADDR};
use xdpmesh_netns::{
    bin, require_root, unique_prefix, GatewayKind, Node, Topology, TopologyOpts, ECHO_PORT,
    FILESERVER_PORT,
};

const PROM_PORT: u16 = 19090;

fn demo_config() -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../control/testdata/demo.yaml"),
    )
    .unwrap()
}

fn with_policy(cfg: &str) -> String {
    format!(
        "{cfg}policies:\n  - name: no-echo\n    namespace: default\n    workload: server\n    \
         action: DENY\n    ports: [{ECHO_PORT}]\n"
    )
}

fn write(topo: &Topology, name: &str, text: &str) -> PathBuf {
    let path = topo.tmp_dir().join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// `curl` in `node`'s namespace: (HTTP status, body).
fn curl(topo: &Topology, node: Node, args: &[&str]) -> (u16, String) {
    let mut argv = vec!["curl", "-sS", "-m", "5", "-w", "\n%{http_code}"];
    argv.extend(args);
    let out = topo.run(node, &argv).expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}

/// Raw HTTP/1.0 GETs of `size`-byte blobs from the server's file server, from the
/// client pod: (request bytes sent, response bytes received) of each, as the client
/// counted them.
fn fetch_blobs(topo: &Topology, sizes: &[u64]) -> Vec<(u64, u64)> {
    const PY: &str = "import socket,sys\n\
        host, port = sys.argv[1], int(sys.argv[2])\n\
        for size in sys.argv[3:]:\n\
        \x20   req = ('GET /blob?size=%s&seed=3 HTTP/1.0\\r\\nHost: x\\r\\n\\r\\n' % size).encode()\n\
        \x20   s = socket.create_connection((host, port), timeout=10); s.sendall(req)\n\
        \x20   n = 0\n\
        \x20   while True:\n\
        \x20       b = s.recv(65536)\n\
        \x20       if not b: break\n\
        \x20       n += len(b)\n\
        \x20   s.close(); print(len(req), n)\n";
    let server = SERVER_ADDR.to_string();
    let port = FILESERVER_PORT.to_string();
    let sizes: Vec<String> = sizes.iter().map(u64::to_string).collect();
    let mut argv = vec!["python3", "-c", PY, &server, &port];
    argv.extend(sizes.iter().map(String::as_str));
    let out = topo.run(Node::Client, &argv).expect("blob client");
    let text = String::from_utf8_lossy(&out.stdout);
    let got: Vec<(u64, u64)> = text
        .lines()
        .map(|l| {
            let (a, b) = l.split_once(' ').unwrap();
            (a.parse().unwrap(), b.parse().unwrap())
        })
        .collect();
    assert_eq!(
        got.len(),
        sizes.len(),
        "client output {text:?}, stderr {}",
        String::from_utf8_lossy(&out.stderr)
    );
    got
}

/// Prometheus's instant query `q`, run with curl in gateway A's namespace: the result
/// vector (each element's `metric` labels and value).
fn prom_query(topo: &Topology, q: &str) -> Vec<(serde_json::Map<String, Value>, u64)> {
    let url = format!("http://127.0.0.1:{PROM_PORT}/api/v1/query");
    let query = format!("query={q}");
    let (code, body) = curl(topo, Node::GatewayA, &["--data-urlencode", &query, &url]);
    if code != 200 {
        return Vec::new();
    }
    let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    v["data"]["result"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .map(|r| {
            let value = r["value"][1]
                .as_str()
                .unwrap_or("0")
                .parse::<f64>()
                .unwrap_or(0.0);
            (
                r["metric"].as_object().cloned().unwrap_or_default(),
                value as u64,
            )
        })
        .collect()
}

/// Polls `q` until it returns exactly one series of value `want` (Prometheus scrapes
/// every second); returns that series' labels. Panics with what it saw after 30 s,
/// also when the value passes `want`.
fn prom_wait(topo: &Topology, q: &str, want: u64) -> serde_json::Map<String, Value> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = prom_query(topo, q);
        if r.len() == 1 && r[0].1 == want {
            return r[0].0.clone();
        }
        assert!(
            Instant::now() < deadline && r.iter().all(|(_, v)| *v <= want),
            "{q}: want one series of {want}, got {r:?}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn test_prometheus_scrapes_exact_istio_tcp_metrics_and_config_dump_holds_no_keys() {
    if !require_root(
        "test_prometheus_scrapes_exact_istio_tcp_metrics_and_config_dump_holds_no_keys",
    ) {
        return;
    }
    let mut topo =
        Topology::new(&unique_prefix("xops"), TopologyOpts::default()).expect("topology");
    let cfg = write(
        &topo,
        "mesh.yaml",
        &with_policy(&demo_config().replace("protocol: TCP", "protocol: HBONE")),
    );
    topo.start_gateways(GatewayKind::xdpmesh(1), &cfg)
        .expect("gateways");
    let _web = topo
        .start_fileserver(Node::Server, FILESERVER_PORT)
        .unwrap();
    topo.wait_tcp_listen(Node::Server, FILESERVER_PORT, Duration::from_secs(10))
        .unwrap();

    // Prometheus in gateway A's namespace, scraping both gateways by address.
    let dir = topo.tmp_dir().join("prometheus");
    std::fs::create_dir_all(&dir).unwrap();
    let prom_cfg = format!(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 900ms\nscrape_configs:\n  \
         - job_name: xdpmesh\n    metrics_path: /stats/prometheus\n    static_configs:\n      \
         - targets: ['{GWA_UP_ADDR}:15020']\n        labels: {{gateway: a}}\n      \
         - targets: ['{GWB_UP_ADDR}:15020']\n        labels: {{gateway: b}}\n"
    );
    let prom_cfg_path = dir.join("prometheus.yml");
    std::fs::write(&prom_cfg_path, prom_cfg).unwrap();
    let _prom = topo
        .spawn(
            Node::GatewayA,
            &[
                "prometheus",
                &format!("--config.file={}", prom_cfg_path.display()),
                &format!("--storage.tsdb.path={}", dir.join("data").display()),
                &format!("--web.listen-address=127.0.0.1:{PROM_PORT}"),
            ],
        )
        .expect("prometheus (apt-get install prometheus; scripts/setup.sh)");
    topo.wait_tcp_listen(Node::GatewayA, PROM_PORT, Duration::from_secs(30))
        .expect("prometheus listening");
    // Both targets up before the traffic.
    prom_wait(&topo, "sum(up{job=\"xdpmesh\"})", 2);

    let moved = fetch_blobs(&topo, &[100_000, 250_000, 7]);
    let requests: u64 = moved.iter().map(|m| m.0).sum();
    let responses: u64 = moved.iter().map(|m| m.1).sum();
    topo.wait_gateways_idle(Duration::from_secs(20));

    let client = "spiffe://cluster.local/ns/default/sa/client";
    let server = "spiffe://cluster.local/ns/default/sa/server";
    for (gateway, reporter) in [("a", "source"), ("b", "destination")] {
        let sel = format!(
            "{{gateway=\"{gateway}\",reporter=\"{reporter}\",destination_workload=\"server\"}}"
        );
        let labels = prom_wait(
            &topo,
            &format!("istio_tcp_received_bytes_total{sel}"),
            requests,
        );
        let want = [
            ("source_workload", "client"),
            ("source_workload_namespace", "default"),
            ("source_principal", client),
            ("destination_workload_namespace", "default"),
            ("destination_principal", server),
            ("destination_service", "unknown"),
            ("connection_security_policy", "mutual_tls"),
            ("response_flags", "-"),
        ];
        for (k, v) in want {
            assert_eq!(labels[k], v, "{gateway}: {k} in {labels:?}");
        }
        prom_wait(
            &topo,
            &format!("istio_tcp_sent_bytes_total{sel}"),
            responses,
        );
        eprintln!(
            "prometheus, gateway {gateway}: received {requests} B, sent {responses} B, \
             labels {labels:?}"
        );
        prom_wait(
            &topo,
            &format!("istio_tcp_connections_opened_total{sel}"),
            3,
        );
        prom_wait(
            &topo,
            &format!("istio_tcp_connections_closed_total{sel}"),
            3,
        );
    }
    // xdpmesh's own: the tunnel's TLS handshake was timed on both sides, each
    // connection's set-up too, and the XDP verdicts are there.
    prom_wait(&topo, "sum(xdpmesh_tls_handshake_seconds_count)", 2);
    prom_wait(&topo, "sum(xdpmesh_connect_seconds_count)", 6);
    let redirected = prom_query(&topo, "xdpmesh_xdp_packets_total{reason=\"redirect_mesh\"}");
    assert_eq!(redirected.len(), 2, "{redirected:?}");
    assert!(redirected.iter().all(|(_, v)| *v > 0), "{redirected:?}");
    // stats.json carries the same histograms (the benchmark reads them there): one
    // handshake per side, three connections set up per side.
    for node in [Node::GatewayA, Node::GatewayB] {
        let s = topo.gateway_stats(node).expect("stats.json");
        for (hist, want) in [("tls_handshake", 1), ("connect", 3)] {
            let h = &s["latency"][hist];
            assert_eq!(h["count"], want, "{node:?} {hist}: {h}");
            assert_eq!(h["buckets"][16]["le"], "+Inf", "{node:?} {hist}: {h}");
            assert_eq!(h["buckets"][16]["count"], want, "{node:?} {hist}: {h}");
            assert!(h["sum_us"].as_u64() > Some(0), "{node:?} {hist}: {h}");
        }
    }

    // /config_dump on gateway B (loopback only).
    let (code, body) = curl(
        &topo,
        Node::GatewayB,
        &["http://127.0.0.1:15000/config_dump"],
    );
    assert_eq!(code, 200, "{body}");
    let dump: Value = serde_json::from_str(&body).expect("config_dump is JSON");
    let names: Vec<&str> = dump["workloads"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["client", "server"], "{dump:#}");
    assert_eq!(dump["policies"].as_array().unwrap().len(), 1, "{dump:#}");
    assert_eq!(dump["policies"][0]["name"], "no-echo");
    assert_eq!(dump["policies"][0]["action"], "DENY");
    assert_eq!(dump["policies"][0]["ports"], serde_json::json!([ECHO_PORT]));
    assert_eq!(dump["services"], serde_json::json!([]));
    // Every certificate serial of the identity directory, as openssl reads it.
    let id_dir = run_dir(&topo.instance(Node::GatewayB)).join("identity");
    let manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(id_dir.join("manifest.json")).unwrap())
            .unwrap();
    let mut want_serials = BTreeSet::new();
    let mut key_lines = Vec::new();
    for id in manifest["identities"].as_array().unwrap() {
        let cert = id_dir.join(id["cert"].as_str().unwrap());
        let out = topo
            .run(
                Node::GatewayB,
                &[
                    "openssl",
                    "x509",
                    "-in",
                    cert.to_str().unwrap(),
                    "-noout",
                    "-serial",
                ],
            )
            .unwrap();
        let serial = String::from_utf8_lossy(&out.stdout)
            .trim()
            .trim_start_matches("serial=")
            .to_owned();
        want_serials.insert((id["spiffe"].as_str().unwrap().to_owned(), serial));
        let key = std::fs::read_to_string(id_dir.join(id["key"].as_str().unwrap())).unwrap();
        key_lines.extend(
            key.lines()
                .filter(|l| !l.starts_with("-----") && l.len() >= 16)
                .map(str::to_owned),
        );
    }
    let got_serials: BTreeSet<(String, String)> = dump["certificates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["identity"].as_str().unwrap().to_owned(),
                c["serial"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(got_serials, want_serials, "{dump:#}");
    assert_eq!(
        got_serials
            .iter()
            .map(|(i, _)| i.as_str())
            .collect::<Vec<_>>(),
        [server],
        "gateway B serves the server only"
    );
    assert!(!key_lines.is_empty());
    assert!(!body.contains("PRIVATE KEY"), "{body}");
    for l in &key_lines {
        assert!(!body.contains(l.as_str()), "key material {l:?} in {body}");
    }
    // The admin port is not reachable from another namespace.
    let url = format!("http://{GWB_UP_ADDR}:15000/config_dump");
    let out = topo
        .cmd(Node::GatewayA, "curl", ["-sS", "-m", "5", url.as_str()])
        .output()
        .unwrap();
    // curl's exit 7: could not connect.
    assert_eq!(
        out.status.code(),
        Some(7),
        "admin must listen on loopback only: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Readiness as an operator sees it on 15021.
fn ready(topo: &Topology) -> (u16, String) {
    curl(
        topo,
        Node::GatewayA,
        &["http://127.0.0.1:15021/healthz/ready"],
    )
}

#[test]
fn test_readiness_follows_xdp_tables_and_the_control_process() {
    if !require_root("test_readiness_follows_xdp_tables_and_the_control_process") {
        return;
    }
    let topo = Topology::new(&unique_prefix("xrdy"), TopologyOpts::default()).expect("topology");
    let cfg = write(&topo, "mesh.yaml", &demo_config());
    let instance = topo.instance(Node::GatewayA);
    let cleanup = || {
        let _ = std::fs::remove_dir_all(pin_dir(&instance));
        let _ = std::fs::remove_file(shm_path(&instance));
        let _ = std::fs::remove_dir_all(run_dir(&instance));
    };
    cleanup();
    // The dataplane alone: it waits for the control process's tables.
    let dp_bin = bin("xdpmesh-dataplane");
    let mut dataplane = topo
        .spawn(
            Node::GatewayA,
            &[
                dp_bin.to_str().unwrap(),
                "run",
                "--instance",
                &instance,
                "--iface",
                "pod0",
                "--iface",
                "up0",
                "--queues",
                "1",
            ],
        )
        .unwrap();
    topo.wait_tcp_listen(Node::GatewayA, 15021, Duration::from_secs(10))
        .unwrap();
    assert_eq!(
        ready(&topo),
        (
            503,
            "not ready: the XDP program is not attached yet; the workers have not started; \
             no table file yet (is xdpmesh-control running for this instance?); no identities \
             loaded (is xdpmesh-control publishing them?)\n"
                .into()
        )
    );
    let cfg_s = cfg.to_string_lossy().into_owned();
    let ca = topo.ca_dir().to_string_lossy().into_owned();
    let ctl_bin = bin("xdpmesh-control");
    let mut control = topo
        .spawn(
            Node::GatewayA,
            &[
                ctl_bin.to_str().unwrap(),
                "run",
                "--config",
                &cfg_s,
                "--node",
                "node-a",
                "--instance",
                &instance,
                "--ca-dir",
                &ca,
            ],
        )
        .unwrap();
    control
        .wait_for_log(CONTROL_READY, Duration::from_secs(20))
        .unwrap();
    dataplane
        .wait_for_log("xdpmesh-dataplane ready", Duration::from_secs(20))
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while ready(&topo).0 != 200 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(ready(&topo), (200, "ready\n".into()));

    // The control process gone: still ready within the 5 s bound, not ready once its
    // last heartbeat (it beats every second, so up to 1 s before the kill) is more than
    // 5 s old.
    control.kill().unwrap();
    let killed = Instant::now();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        ready(&topo),
        (200, "ready\n".into()),
        "3 s after the control died"
    );
    let deadline = killed + Duration::from_secs(10);
    let (code, body) = loop {
        let r = ready(&topo);
        if r.0 != 200 || Instant::now() >= deadline {
            break r;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let gone_after = killed.elapsed();
    assert_eq!(code, 503, "{body}");
    let silent_ms: u64 = body
        .strip_prefix("not ready: the control process is gone: no heartbeat for ")
        .and_then(|r| r.strip_suffix(" ms (more than 5000 ms)\n"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{body:?}"));
    assert!((5001..6000).contains(&silent_ms), "{body}");
    assert!(
        (Duration::from_secs(4)..Duration::from_secs(7)).contains(&gone_after),
        "not ready {gone_after:?} after the kill"
    );
    let _ = dataplane.stop(Signal::SIGTERM, Duration::from_secs(10));
    cleanup();
}

/// The `access` lines of a gateway's dataplane log (JSON), parsed.
fn access_lines(topo: &Topology, node: Node) -> Vec<serde_json::Map<String, Value>> {
    topo.dataplane_log(node)
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str::<Value>(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .filter(|v| v["target"] == "access" && v["message"] == "connection complete")
        .map(|v| v.as_object().unwrap().clone())
        .collect()
}

/// The record's ztunnel fields (everything but the log's own keys).
fn fields(r: &serde_json::Map<String, Value>) -> BTreeSet<&str> {
    r.keys()
        .map(String::as_str)
        .filter(|k| !["timestamp", "level", "target", "message"].contains(k))
        .collect()
}

fn set<'a>(keys: &[&'a str]) -> BTreeSet<&'a str> {
    keys.iter().copied().collect()
}

const PLAIN_FIELDS: &[&str] = &[
    "src.addr",
    "src.workload",
    "src.namespace",
    "dst.addr",
    "dst.workload",
    "dst.namespace",
    "dst.identity",
    "direction",
    "bytes_sent",
    "bytes_recv",
    "duration",
];

#[test]
fn test_access_log_json_has_ztunnels_fields() {
    if !require_root("test_access_log_json_has_ztunnels_fields") {
        return;
    }
    let mut topo =
        Topology::new(&unique_prefix("xacc"), TopologyOpts::default()).expect("topology");
    let cfg = write(&topo, "mesh.yaml", &with_policy(&demo_config()));
    topo.set_gateway_args(&[], &["--log-format", "json"]);
    topo.start_gateways(GatewayKind::xdpmesh(1), &cfg)
        .expect("gateways");
    let _web = topo
        .start_fileserver(Node::Server, FILESERVER_PORT)
        .unwrap();
    let _echo = topo.start_echo_server(Node::Server, ECHO_PORT).unwrap();
    topo.wait_tcp_listen(Node::Server, FILESERVER_PORT, Duration::from_secs(10))
        .unwrap();

    // A plain TCP connection.
    let moved = fetch_blobs(&topo, &[5000]);
    // A policy refusal (DENY on the echo port): reset at gateway B.
    let r = topo.run_echo_client(Node::Client, SERVER_ADDR, ECHO_PORT, 1, 100);
    assert!(
        matches!(r, Ok(ref r) if r.ok == 0 && r.failed == 1),
        "{r:?}"
    );
    topo.wait_gateways_idle(Duration::from_secs(20));

    let a = access_lines(&topo, Node::GatewayA);
    let b = access_lines(&topo, Node::GatewayB);
    assert_eq!((a.len(), b.len()), (2, 2), "A: {a:#?}\nB: {b:#?}");
    // Plain, outbound at A: the source is served here, so its identity is vouched for.
    let mut want = set(PLAIN_FIELDS);
    want.insert("src.identity");
    assert_eq!(fields(&a[0]), want, "{:#?}", a[0]);
    assert_eq!(a[0]["direction"], "outbound");
    assert_eq!(a[0]["src.workload"], "client");
    assert_eq!(
        a[0]["src.identity"],
        "spiffe://cluster.local/ns/default/sa/client"
    );
    assert_eq!(a[0]["dst.addr"], format!("{SERVER_ADDR}:{FILESERVER_PORT}"));
    assert_eq!(a[0]["dst.workload"], "server");
    assert_eq!(a[0]["bytes_recv"], moved[0].0);
    assert_eq!(a[0]["bytes_sent"], moved[0].1);
    assert_eq!(a[0]["level"], "INFO");
    // Plain, inbound at B: plain TCP from another node carries no identity.
    assert_eq!(fields(&b[0]), set(PLAIN_FIELDS), "{:#?}", b[0]);
    assert_eq!(b[0]["direction"], "inbound");
    assert_eq!(b[0]["src.workload"], "client");
    assert_eq!(b[0]["bytes_recv"], moved[0].0);
    assert_eq!(b[0]["bytes_sent"], moved[0].1);
    // The refusal at B: error level, with the reason.
    let mut want = set(PLAIN_FIELDS);
    want.insert("error");
    assert_eq!(fields(&b[1]), want, "{:#?}", b[1]);
    assert_eq!(b[1]["level"], "ERROR");
    assert_eq!(
        b[1]["error"],
        "authorization policy: denied by DENY policy default/no-echo (workload default/server)"
    );
    assert_eq!(
        (&b[1]["bytes_sent"], &b[1]["bytes_recv"]),
        (&0.into(), &0.into())
    );
    assert_eq!(b[1]["dst.addr"], format!("{SERVER_ADDR}:{ECHO_PORT}"));

    // HBONE: the same client over a tunnel, one record on each gateway.
    std::fs::write(
        &cfg,
        with_policy(&demo_config().replace("protocol: TCP", "protocol: HBONE")),
    )
    .unwrap();
    topo.reload_gateway_config(Node::GatewayA).unwrap();
    topo.reload_gateway_config(Node::GatewayB).unwrap();
    let moved = fetch_blobs(&topo, &[70_000]);
    topo.wait_gateways_idle(Duration::from_secs(20));
    let mut want = set(PLAIN_FIELDS);
    want.extend(["src.identity", "dst.hbone_addr"]);
    for (node, direction) in [(Node::GatewayA, "outbound"), (Node::GatewayB, "inbound")] {
        let lines = access_lines(&topo, node);
        assert_eq!(lines.len(), 3, "{node:?}: {lines:#?}");
        let r = &lines[2];
        assert_eq!(fields(r), want, "{node:?}: {r:#?}");
        assert_eq!(r["direction"], direction);
        assert_eq!(
            r["src.identity"],
            "spiffe://cluster.local/ns/default/sa/client"
        );
        assert_eq!(
            r["dst.identity"],
            "spiffe://cluster.local/ns/default/sa/server"
        );
        assert_eq!(r["dst.addr"], format!("{SERVER_ADDR}:15008"));
        assert_eq!(
            r["dst.hbone_addr"],
            format!("{SERVER_ADDR}:{FILESERVER_PORT}")
        );
        assert_eq!(r["bytes_recv"], moved[0].0, "{node:?}: {r:#?}");
        assert_eq!(r["bytes_sent"], moved[0].1, "{node:?}: {r:#?}");
        assert!(r["duration"].as_str().unwrap().ends_with("ms"), "{r:#?}");
    }
}
