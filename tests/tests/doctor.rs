//! The seeds' failures (issue 10): reverse-path filtering that dropped a node proxy's
//! packets in the field, here on xdpmesh gateways with real traffic, and `doctor`
//! naming each setting with what it breaks and the fix.
//!
//! - `rp_filter=2` on all, default and every gateway interface (what systemd-sysctl
//!   leaves on new interfaces), strict `rp_filter=1` on gateway B's pod-side interface
//!   and in the server pod, and Calico's raw-table `-m rpfilter --invert -j DROP` in both
//!   gateway namespaces: traffic through xdpmesh is byte-exact anyway (XDP runs before
//!   routing and netfilter, and the delivery leg carries the client's original source
//!   to the pod, which routes it back the same way);
//! - `doctor` in a gateway names each setting and the rule, exits 1, and exits 0 once
//!   they are gone.

use std::process::Output;

use xdpmesh_netns::topology::SERVER_ADDR;
use xdpmesh_netns::{
    bin, blob_sha256, require_root, unique_prefix, GatewayKind, Node, Topology, TopologyOpts,
    ECHO_PORT, FILESERVER_PORT,
};

const MIB: u64 = 1024 * 1024;

fn demo_config() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../control/testdata/demo.yaml")
}

fn doctor(topo: &Topology, node: Node) -> (i32, String) {
    let instance = topo.instance(node);
    let out: Output = topo
        .cmd(
            node,
            bin("xdpmesh-dataplane"),
            ["doctor", "--instance", &instance],
        )
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn sysctl(topo: &Topology, node: Node, key: &str, value: u8) {
    topo.run(node, &["sysctl", "-q", "-w", &format!("{key}={value}")])
        .unwrap();
}

fn has_line(text: &str, line: &str) {
    assert!(
        text.lines().any(|l| l == line),
        "no line {line:?} in doctor's output:\n{text}"
    );
}

#[test]
fn test_reverse_path_filters_leave_xdpmesh_unaffected_and_doctor_names_them() {
    if !require_root("test_reverse_path_filters_leave_xdpmesh_unaffected_and_doctor_names_them") {
        return;
    }
    let mut topo =
        Topology::new(&unique_prefix("xdoc"), TopologyOpts::default()).expect("topology");
    topo.start_gateways(GatewayKind::xdpmesh(1), &demo_config())
        .expect("gateways");
    for node in [Node::GatewayA, Node::GatewayB] {
        for iface in ["all", "default", "pod0", "up0"] {
            sysctl(&topo, node, &format!("net.ipv4.conf.{iface}.rp_filter"), 2);
        }
        topo.run(
            node,
            &[
                "iptables",
                "-t",
                "raw",
                "-A",
                "PREROUTING",
                "-m",
                "rpfilter",
                "--invert",
                "-j",
                "DROP",
            ],
        )
        .unwrap();
    }
    // Strict on the pod side: gateway B's pod0 (the server's replies arrive there) and
    // the server pod itself (the delivery leg arrives from the client's own address).
    sysctl(&topo, Node::GatewayB, "net.ipv4.conf.pod0.rp_filter", 1);
    for key in ["all", "eth0"] {
        sysctl(
            &topo,
            Node::Server,
            &format!("net.ipv4.conf.{key}.rp_filter"),
            1,
        );
    }

    let _web = topo
        .start_fileserver(Node::Server, FILESERVER_PORT)
        .unwrap();
    let _echo = topo.start_echo_server(Node::Server, ECHO_PORT).unwrap();
    let url = format!(
        "http://{SERVER_ADDR}:{FILESERVER_PORT}/blob?size={}&seed=4",
        8 * MIB
    );
    let t = topo.http_download(Node::Client, &url).unwrap();
    assert_eq!((t.bytes, t.sha256), (8 * MIB, blob_sha256(8 * MIB, 4)));
    let up = topo
        .http_upload(
            Node::Client,
            &format!("http://{SERVER_ADDR}:{FILESERVER_PORT}/upload"),
            8 * MIB,
            5,
        )
        .unwrap();
    assert!(up.ok(), "{up:?}");
    let r = topo
        .run_echo_client(Node::Client, SERVER_ADDR, ECHO_PORT, 200, 4096)
        .unwrap();
    assert_eq!((r.ok, r.failed), (200, 0), "{:?}", r.errors);

    // `stats --watch`: two screens, rates from the dataplane's own snapshots.
    let instance = topo.instance(Node::GatewayA);
    let out = topo
        .cmd(
            Node::GatewayA,
            bin("xdpmesh-dataplane"),
            [
                "stats",
                "--instance",
                &instance,
                "--watch",
                "--interval",
                "0.5",
                "--count",
                "2",
            ],
        )
        .output()
        .unwrap();
    let watch = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{watch}");
    let headers: Vec<&str> = watch
        .lines()
        .filter(|l| l.starts_with(&format!("xdpmesh-dataplane {instance}: up ")))
        .collect();
    assert_eq!(headers.len(), 2, "{watch}");
    let rows: Vec<Vec<&str>> = watch
        .lines()
        .filter(|l| l.trim_start().starts_with("0 ") || l.trim_start().starts_with("all "))
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        rows.len(),
        4,
        "a worker row and a totals row per screen:\n{watch}"
    );
    assert!(rows.iter().all(|r| r.len() == 11), "{watch}");
    assert!(
        watch
            .lines()
            .any(|l| l.starts_with("xdp: ") && l.contains("redirect_mesh ")),
        "{watch}"
    );

    let (rc, text) = doctor(&topo, Node::GatewayA);
    assert_eq!(rc, 1, "{text}");
    for line in [
        "[WARN] rp_filter: pod0: rp_filter 2 (loose), from net.ipv4.conf.all.rp_filter = 2 and net.ipv4.conf.pod0.rp_filter = 2",
        "[WARN] rp_filter: up0: rp_filter 2 (loose), from net.ipv4.conf.all.rp_filter = 2 and net.ipv4.conf.up0.rp_filter = 2",
        "[WARN] rp_filter: net.ipv4.conf.default.rp_filter = 2 (loose): what new interfaces get",
        "       fix: sysctl -w net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.pod0.rp_filter=0",
        "[WARN] raw-rpfilter: iptables -t raw: -A PREROUTING -m rpfilter --invert -j DROP",
        "[  ok] xdp: pod0: xdpmesh_divert attached in native mode (driver veth)",
        "[  ok] xdp: up0: xdpmesh_divert attached in native mode (driver veth)",
        "[  ok] offloads: pod0: checksum, TSO, GSO and GRO off",
        "[  ok] queues: pod0: 1 RX queues, 1 workers",
    ] {
        has_line(&text, line);
    }
    assert!(
        text.lines()
            .any(|l| l.starts_with("[  ok] tables: generation ")
                && l.contains("; control pid ")
                && l.ends_with(" alive")),
        "{text}"
    );
    assert!(
        text.contains("breaks: the kernel path: packets arriving on pod0 whose source the kernel would not route back at all are dropped as martians"),
        "{text}"
    );
    let (_, text_b) = doctor(&topo, Node::GatewayB);
    has_line(
        &text_b,
        "[WARN] rp_filter: pod0: rp_filter 2 (loose), from net.ipv4.conf.all.rp_filter = 2 and net.ipv4.conf.pod0.rp_filter = 1",
    );

    // Fixed as doctor says: nothing wrong is left (the host's own sysctl.d files aside,
    // which doctor reads but the test does not own).
    for iface in ["all", "default", "pod0", "up0"] {
        sysctl(
            &topo,
            Node::GatewayA,
            &format!("net.ipv4.conf.{iface}.rp_filter"),
            0,
        );
    }
    topo.run(
        Node::GatewayA,
        &["iptables", "-t", "raw", "-F", "PREROUTING"],
    )
    .unwrap();
    let (rc, text) = doctor(&topo, Node::GatewayA);
    let wrong: Vec<&str> = text
        .lines()
        .filter(|l| {
            (l.starts_with("[WARN]") || l.starts_with("[FAIL]"))
                && !l.starts_with("[WARN] sysctl.d:")
        })
        .collect();
    assert!(wrong.is_empty(), "{text}");
    let host_sysctl_d = text.lines().any(|l| l.starts_with("[WARN] sysctl.d:"));
    assert_eq!(rc, i32::from(host_sysctl_d), "{text}");
    has_line(
        &text,
        "[  ok] raw-rpfilter: no raw-table rule drops by reverse path (iptables)",
    );
}
