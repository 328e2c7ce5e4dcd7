//! The reference path: the gateways' kernels route between the pods. These tests check
//! the harness itself (topology, peers, hashes, cleanup) with real kernel TCP on both
//! ends, so that an xdpmesh test failing later points at xdpmesh, not at the harness.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use xdpmesh_netns::topology::{CLIENT_ADDR, SERVER_ADDR};
use xdpmesh_netns::{
    blob_sha256, require_root, unique_prefix, GatewayKind, Node, Topology, TopologyOpts, ECHO_PORT,
    FILESERVER_PORT, IPERF_PORT,
};

const MIB: u64 = 1024 * 1024;

fn kernel_topology(tag: &str, opts: TopologyOpts) -> Topology {
    let mut topo = Topology::new(&unique_prefix(tag), opts).expect("topology");
    topo.start_gateways(GatewayKind::Kernel, Path::new("/dev/null"))
        .expect("kernel gateways");
    topo
}

fn netns_list() -> String {
    let out = Command::new("ip").args(["netns", "list"]).output().unwrap();
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn namespaces_of(prefix: &str) -> Vec<String> {
    netns_list()
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(&format!("{prefix}-")))
        .map(str::to_string)
        .collect()
}

#[test]
fn test_topology_addresses_routes_and_cleanup() {
    if !require_root("test_topology_addresses_routes_and_cleanup") {
        return;
    }
    let topo = kernel_topology("topo", TopologyOpts::default());
    let prefix = topo.prefix().to_string();
    let mut names = namespaces_of(&prefix);
    names.sort();
    assert_eq!(
        names,
        ["client", "gwa", "gwb", "server"].map(|s| format!("{prefix}-{s}"))
    );

    // Addresses exactly per docs/INTERFACES.md.
    let addr = |node, iface| {
        let out = topo
            .run(node, &["ip", "-4", "-o", "addr", "show", "dev", iface])
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.split_whitespace()
            .skip_while(|w| *w != "inet")
            .nth(1)
            .unwrap()
            .to_string()
    };
    assert_eq!(addr(Node::Client, "eth0"), "198.18.1.2/24");
    assert_eq!(addr(Node::GatewayA, "pod0"), "198.18.1.1/24");
    assert_eq!(addr(Node::GatewayA, "up0"), "198.18.0.1/24");
    assert_eq!(addr(Node::GatewayB, "up0"), "198.18.0.2/24");
    assert_eq!(addr(Node::GatewayB, "pod0"), "198.18.2.1/24");
    assert_eq!(addr(Node::Server, "eth0"), "198.18.2.2/24");

    // Gateways: forwarding on, no default route.
    for gw in [Node::GatewayA, Node::GatewayB] {
        let fwd = topo
            .run(gw, &["sysctl", "-n", "net.ipv4.ip_forward"])
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&fwd.stdout).trim(), "1");
        let routes = topo.run(gw, &["ip", "route", "show"]).unwrap();
        let routes = String::from_utf8_lossy(&routes.stdout).into_owned();
        assert!(!routes.contains("default"), "{gw:?} routes:\n{routes}");
        assert_eq!(routes.lines().count(), 3, "{gw:?} routes:\n{routes}");
    }
    // Offloads off on a veth.
    let k = topo.run(Node::GatewayA, &["ethtool", "-k", "up0"]).unwrap();
    let k = String::from_utf8_lossy(&k.stdout).into_owned();
    for feature in [
        "tx-checksumming: off",
        "tcp-segmentation-offload: off",
        "generic-segmentation-offload: off",
        "generic-receive-offload: off",
    ] {
        assert!(k.contains(feature), "missing {feature:?} in:\n{k}");
    }

    topo.run(
        Node::Client,
        &["ping", "-c", "2", "-i", "0.2", "-W", "2", "198.18.2.2"],
    )
    .expect("client pings server across both gateways");
    topo.run(Node::Server, &["ping", "-c", "1", "-W", "2", "198.18.1.2"])
        .expect("server pings client");

    // A process left running is killed and the namespaces disappear on drop.
    let sleeper = topo.spawn(Node::Server, &["sleep", "600"]).unwrap();
    let sleeper_pid = sleeper.pid();
    std::mem::forget(sleeper); // only the topology can clean it up now
    drop(topo);
    assert!(
        namespaces_of(&prefix).is_empty(),
        "namespaces left after drop:\n{}",
        netns_list()
    );
    let state = std::fs::read_to_string(format!("/proc/{sleeper_pid}/stat")).unwrap_or_default();
    // Killed: gone, or a zombie whose parent (this test) never reaps it.
    assert!(
        state.is_empty() || state.split_whitespace().nth(2) == Some("Z"),
        "sleep still running: {state}"
    );
    assert!(!std::env::temp_dir()
        .join(format!("xdpmesh-{prefix}"))
        .exists());
}

#[test]
fn test_kernel_path_http_download_and_upload() {
    if !require_root("test_kernel_path_http_download_and_upload") {
        return;
    }
    let topo = kernel_topology("http", TopologyOpts::default());
    let _server = topo
        .start_fileserver(Node::Server, FILESERVER_PORT)
        .unwrap();
    let size = 8 * MIB;
    let url = format!("http://{SERVER_ADDR}:{FILESERVER_PORT}/blob?size={size}&seed=42");
    let t = topo.http_download(Node::Client, &url).unwrap();
    assert_eq!(t.bytes, size);
    assert_eq!(t.sha256, blob_sha256(size, 42));
    // A different seed gives different bytes: the check can fail.
    assert_ne!(t.sha256, blob_sha256(size, 43));

    let u = topo
        .http_upload(
            Node::Client,
            &format!("http://{SERVER_ADDR}:{FILESERVER_PORT}/upload"),
            size,
            7,
        )
        .unwrap();
    assert_eq!(u.length, size);
    assert_eq!(u.sha256, blob_sha256(size, 7));
    assert!(u.ok());

    // The server saw the client's own address: the gateways route, they do not NAT.
    let log = _server.log();
    assert!(
        log.contains(&CLIENT_ADDR.to_string()),
        "fileserver log:\n{log}"
    );
}

#[test]
fn test_kernel_path_echo_100_connections() {
    if !require_root("test_kernel_path_echo_100_connections") {
        return;
    }
    let topo = kernel_topology("echo", TopologyOpts::default());
    let _echo = topo.start_echo_server(Node::Server, ECHO_PORT).unwrap();
    let r = topo
        .run_echo_client(Node::Client, SERVER_ADDR, ECHO_PORT, 100, 64 * 1024)
        .unwrap();
    assert_eq!(r.connections, 100);
    assert_eq!(r.ok, 100, "errors: {:?}", r.errors);
    assert_eq!(r.failed, 0);
    assert_eq!(r.bytes, 100 * 64 * 1024);
    assert!(r.exit_ok);

    // And the client notices failures: nothing listens on ECHO_PORT + 1.
    let bad = topo
        .run_echo_client(Node::Client, SERVER_ADDR, ECHO_PORT + 1, 3, 1024)
        .unwrap();
    assert_eq!((bad.ok, bad.failed), (0, 3));
    assert!(!bad.exit_ok);
    assert!(!bad.errors.is_empty());
}

#[test]
fn test_kernel_path_iperf3() {
    if !require_root("test_kernel_path_iperf3") {
        return;
    }
    let topo = kernel_topology("iperf", TopologyOpts::default());
    let _server = topo.start_iperf_server(Node::Server, IPERF_PORT).unwrap();
    let r = topo
        .run_iperf(Node::Client, SERVER_ADDR, IPERF_PORT, 2)
        .unwrap();
    assert!(r.bits_per_second > 0.0, "{:#}", r.json);
    assert!(r.bytes > 0);
}

#[test]
fn test_multiqueue_topology_and_process_cleanup_on_panic() {
    if !require_root("test_multiqueue_topology_and_process_cleanup_on_panic") {
        return;
    }
    let prefix = unique_prefix("panic");
    let p = prefix.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    let result = std::thread::spawn(move || {
        let topo = Topology::new(
            &p,
            TopologyOpts {
                rx_queues: 4,
                ..TopologyOpts::with_mtu(1400)
            },
        )
        .unwrap();
        let link = topo
            .run(Node::GatewayA, &["ip", "-d", "link", "show", "pod0"])
            .unwrap();
        let link = String::from_utf8_lossy(&link.stdout).into_owned();
        assert!(link.contains("mtu 1400"), "{link}");
        assert!(link.contains("numtxqueues 4 numrxqueues 4"), "{link}");
        let peer = topo
            .run(Node::Client, &["ip", "-d", "link", "show", "eth0"])
            .unwrap();
        assert!(String::from_utf8_lossy(&peer.stdout).contains("numtxqueues 4 numrxqueues 4"));
        let _held = topo.spawn(Node::Client, &["sleep", "600"]).unwrap();
        // A stray process started behind the harness's back is killed too.
        let stray = Command::new("nsenter")
            .args([&format!("--net=/run/netns/{p}-gwb"), "--", "sleep", "600"])
            .spawn()
            .unwrap();
        tx.send(stray).unwrap();
        std::thread::sleep(Duration::from_millis(100));
        panic!("deliberate panic with a live topology");
    })
    .join();
    assert!(result.is_err(), "the thread should have panicked");
    let status = rx.recv().unwrap().wait().unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9),
        "stray process: {status}"
    );
    assert!(
        namespaces_of(&prefix).is_empty(),
        "namespaces left after panic:\n{}",
        netns_list()
    );
    // Logs are kept after a panic; remove them here.
    let _ = std::fs::remove_dir_all(std::env::temp_dir().join(format!("xdpmesh-{prefix}")));
}

/// `ip link show` of `iface` in `ns`, as text.
fn link_of(ns: &str, iface: &str) -> String {
    let out = Command::new("ip")
        .args(["-n", ns, "link", "show", iface])
        .output()
        .unwrap();
    assert!(out.status.success(), "{ns}/{iface}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `ethtool -k` feature `feature` of `iface` in `node`: `on` or `off`.
fn feature(topo: &Topology, node: Node, iface: &str, feature: &str) -> String {
    let out = topo.run(node, &["ethtool", "-k", iface]).unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let line = text
        .lines()
        .find(|l| l.trim_start().starts_with(&format!("{feature}:")))
        .unwrap_or_else(|| panic!("no {feature} in:\n{text}"));
    line.split_whitespace().nth(1).unwrap().to_string()
}

#[test]
fn test_pod_and_uplink_mtus_and_offloads() {
    if !require_root("test_pod_and_uplink_mtus_and_offloads") {
        return;
    }
    let topo = kernel_topology(
        "mtu",
        TopologyOpts {
            pod_mtu: 1400,
            uplink_mtu: 9000,
            offloads: true,
            wire_tap: true,
            ..TopologyOpts::default()
        },
    );
    let ns = |n| topo.ns_name(n);
    let wire = topo.wire_ns().unwrap();
    for (ns, iface, mtu) in [
        (ns(Node::Client), "eth0", 1400),
        (ns(Node::GatewayA), "pod0", 1400),
        (ns(Node::GatewayA), "up0", 9000),
        (wire.clone(), "to-gwa", 9000),
        (wire.clone(), "to-gwb", 9000),
        (wire.clone(), "br0", 9000),
        (ns(Node::GatewayB), "up0", 9000),
        (ns(Node::GatewayB), "pod0", 1400),
        (ns(Node::Server), "eth0", 1400),
    ] {
        let link = link_of(&ns, iface);
        assert!(link.contains(&format!(" mtu {mtu} ")), "{link}");
    }
    // Offloads kept as the kernel sets them: a veth segments in software by default.
    for (node, iface) in [(Node::Client, "eth0"), (Node::GatewayA, "up0")] {
        assert_eq!(
            feature(&topo, node, iface, "tcp-segmentation-offload"),
            "on"
        );
        assert_eq!(feature(&topo, node, iface, "tx-checksumming"), "on");
    }
    // The path MTU is the pod links': 1400 passes unfragmented, 1401 does not.
    let server = SERVER_ADDR.to_string();
    let ping = |size: &str| {
        topo.run(
            Node::Client,
            &[
                "ping", "-c", "1", "-W", "2", "-M", "do", "-s", size, &server,
            ],
        )
    };
    ping("1372").expect("a 1400-byte packet passes");
    assert!(ping("1373").is_err(), "a 1401-byte packet must not fit");
    drop(topo);

    // The default turns them off.
    let topo = Topology::new(&unique_prefix("offl"), TopologyOpts::default()).unwrap();
    for (node, iface) in [(Node::Client, "eth0"), (Node::GatewayB, "pod0")] {
        for f in [
            "tcp-segmentation-offload",
            "tx-checksumming",
            "generic-receive-offload",
        ] {
            assert_eq!(
                feature(&topo, node, iface, f),
                "off",
                "{node:?}/{iface} {f}"
            );
        }
    }
}
