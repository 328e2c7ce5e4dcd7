//! Services (issue 9, item 1) with real kernel peers: connections to a service's
//! virtual address are spread over its endpoints on two nodes, byte-exact; an endpoint
//! removed from the config gets none of the next connections; a service without
//! endpoints is refused with the logged reason.
//!
//! Endpoints: `server` (198.18.2.2) and `server-2` (198.18.2.3, a second address of
//! the server pod) behind gateway B, and `wire-echo` (198.18.0.5) in the wire
//! namespace between the gateways, a workload of a third node whose traffic gateway A
//! reaches on its uplink directly. Each answers with the address it was reached on.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use xdpmesh_netns::stat as counter;
use xdpmesh_netns::{require_root, unique_prefix, GatewayKind, Node, Topology, TopologyOpts};

const PORT: u16 = 7100;
const VIP: &str = "198.18.10.1";
const EMPTY_VIP: &str = "198.18.10.2";
const WIRE_ECHO: &str = "198.18.0.5";

/// Answers each connection with the local address it was reached on and what it read.
const SERVER_PY: &str = "import socket\n\
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
    s.bind(('0.0.0.0', 7100)); s.listen(1024)\n\
    while True:\n\
    \x20   c, _ = s.accept(); data = b''\n\
    \x20   while not data.endswith(b'\\n'):\n\
    \x20       b = c.recv(100)\n\
    \x20       if not b: break\n\
    \x20       data += b\n\
    \x20   c.sendall(c.getsockname()[0].encode() + b' ' + data); c.close()\n";

/// `n` sequential connections to `host`: which endpoint answered how often, and errors.
const CLIENT_PY: &str = "import socket, sys, json, collections\n\
    host, n = sys.argv[1], int(sys.argv[2])\n\
    seen = collections.Counter(); errors = collections.Counter()\n\
    for i in range(n):\n\
    \x20   try:\n\
    \x20       s = socket.create_connection((host, 7100), timeout=5)\n\
    \x20       s.sendall(b'hello %d\\n' % i); got = b''\n\
    \x20       while True:\n\
    \x20           b = s.recv(200)\n\
    \x20           if not b: break\n\
    \x20           got += b\n\
    \x20       addr, echo = got.decode().split(' ', 1)\n\
    \x20       if echo != 'hello %d\\n' % i: errors['corrupt'] += 1\n\
    \x20       else: seen[addr] += 1\n\
    \x20   except Exception as e:\n\
    \x20       errors[type(e).__name__] += 1\n\
    print(json.dumps({'seen': seen, 'errors': errors}))\n";

/// The demo config with the services' workloads and services; `server-2` is an
/// endpoint of `echo` only when `with_server_2`.
fn config(with_server_2: bool) -> String {
    let demo = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../control/testdata/demo.yaml"),
    )
    .unwrap();
    let label = if with_server_2 { "echo" } else { "drained" };
    let text = demo
        .replace(
            "nodes:\n",
            "nodes:\n  - name: node-c\n    gateway_addresses: [198.18.0.4]\n",
        )
        .replace(
            "    ports: [80, 5201, 7000]",
            &format!(
                "    ports: [80, 5201, 7000]\n    labels: {{app: echo}}\n  - name: server-2\n    \
                 namespace: default\n    service_account: server\n    node: node-b\n    \
                 addresses: [198.18.2.3]\n    labels: {{app: {label}}}\n  - name: wire-echo\n    \
                 namespace: default\n    service_account: echo\n    node: node-c\n    \
                 addresses: [{WIRE_ECHO}]\n    labels: {{app: echo}}"
            ),
        );
    format!(
        "{text}\nservices:\n  - name: echo\n    namespace: default\n    addresses: [{VIP}]\n    \
         ports: [{{port: {PORT}}}]\n    selector: {{app: echo}}\n  - name: empty\n    \
         namespace: default\n    addresses: [{EMPTY_VIP}]\n    ports: [{{port: {PORT}}}]\n    \
         selector: {{app: nothing}}\n"
    )
}

fn ip_wire(topo: &Topology, args: &[&str]) {
    let wire = topo.wire_ns().unwrap();
    let out = Command::new("ip")
        .args(["-n", &wire])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ip -n {wire} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn in_wire(topo: &Topology, argv: &[&str]) -> Command {
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net=/run/netns/{}", topo.wire_ns().unwrap()))
        .arg("--")
        .args(argv);
    cmd
}

/// Kills the wire namespace's server when the test ends, passed or not (a process
/// left in it would keep the namespace alive).
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn run_clients(topo: &Topology, host: &str, n: u32) -> Value {
    let out = topo
        .run_timeout(
            Node::Client,
            &["python3", "-c", CLIENT_PY, host, &n.to_string()],
            Duration::from_secs(300),
        )
        .unwrap();
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn test_service_spreads_connections_over_endpoints_and_drops_a_removed_one() {
    if !require_root("test_service_spreads_connections_over_endpoints_and_drops_a_removed_one") {
        return;
    }
    let opts = TopologyOpts {
        wire_tap: true,
        ..Default::default()
    };
    let mut topo = Topology::new(&unique_prefix("xsvc"), opts).expect("topology");
    // The third node's endpoint lives in the wire namespace, routed back through the
    // gateways; its veths need full checksums, like the gateways'.
    ip_wire(
        &topo,
        &["addr", "add", &format!("{WIRE_ECHO}/24"), "dev", "br0"],
    );
    ip_wire(
        &topo,
        &["route", "add", "198.18.1.0/24", "via", "198.18.0.1"],
    );
    ip_wire(
        &topo,
        &["route", "add", "198.18.2.0/24", "via", "198.18.0.2"],
    );
    for dev in ["br0", "to-gwa", "to-gwb"] {
        let st = in_wire(
            &topo,
            &[
                "ethtool", "-K", dev, "tx", "off", "tso", "off", "gso", "off", "gro", "off",
            ],
        )
        .status()
        .unwrap();
        assert!(st.success());
    }
    topo.run(
        Node::Server,
        &["ip", "addr", "add", "198.18.2.3/24", "dev", "eth0"],
    )
    .unwrap();
    let cfg: PathBuf = topo.tmp_dir().join("mesh.yaml");
    std::fs::write(&cfg, config(true)).unwrap();
    topo.start_gateways(GatewayKind::xdpmesh(1), &cfg)
        .expect("gateways");
    let _server = topo
        .spawn(Node::Server, &["python3", "-c", SERVER_PY])
        .unwrap();
    let _wire_server = KillOnDrop(
        in_wire(&topo, &["python3", "-c", SERVER_PY])
            .spawn()
            .unwrap(),
    );
    topo.wait_tcp_listen(Node::Server, PORT, Duration::from_secs(5))
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));

    // 1,000 connections, one gateway worker: round robin is even to within one.
    let r = run_clients(&topo, VIP, 1000);
    let seen = |addr: &str| r["seen"][addr].as_u64().unwrap_or(0);
    assert_eq!(r["errors"], serde_json::json!({}), "{r}");
    let spread = [seen("198.18.2.2"), seen("198.18.2.3"), seen(WIRE_ECHO)];
    assert_eq!(spread.iter().sum::<u64>(), 1000, "{r}");
    assert!(spread.iter().all(|&n| (333..=334).contains(&n)), "{r}");
    let a = topo.gateway_stats(Node::GatewayA).unwrap();
    assert_eq!(
        counter(&a, &["totals", "service_endpoint_ejections"]),
        0,
        "{a:#}"
    );

    // server-2 leaves the service (its label changes): none of the next 1,000 reaches it.
    let before = counter(
        &topo.gateway_stats(Node::GatewayA).unwrap(),
        &["generation"],
    );
    std::fs::write(&cfg, config(false)).unwrap();
    let t = Instant::now();
    while counter(
        &topo.gateway_stats(Node::GatewayA).unwrap(),
        &["generation"],
    ) <= before
    {
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "the config change was not picked up"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let r = run_clients(&topo, VIP, 1000);
    assert_eq!(r["errors"], serde_json::json!({}), "{r}");
    let seen = |addr: &str| r["seen"][addr].as_u64().unwrap_or(0);
    assert_eq!(
        [seen("198.18.2.2"), seen("198.18.2.3"), seen(WIRE_ECHO)],
        [500, 0, 500],
        "{r}"
    );

    // A service without endpoints refuses, with the reason in the access log.
    let r = run_clients(&topo, EMPTY_VIP, 1);
    assert_eq!(r["errors"]["ConnectionRefusedError"], 1, "{r}");
    let a = topo
        .wait_for_stats(Node::GatewayA, Duration::from_secs(5), |s| {
            match counter(s, &["totals", "service_refused"]) {
                1 => Ok(()),
                n => Err(format!("service_refused = {n}")),
            }
        })
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(
        counter(&a, &["totals", "service_connections"]),
        2000,
        "{a:#}"
    );
    let log = topo.dataplane_log(Node::GatewayA);
    let refused: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("error=\"service: service default/empty has no endpoint\""))
        .collect();
    assert_eq!(refused.len(), 1, "{log}");
    assert!(
        refused[0].contains(&format!("dst.addr={EMPTY_VIP}:{PORT}"))
            && refused[0].contains("dst.service=\"empty.default.svc.cluster.local\"")
            && refused[0].contains("direction=\"outbound\""),
        "{}",
        refused[0]
    );
}
