//! IPv6 end to end (issue 9, acceptance 8): the curl, iperf3 and echo tests on an
//! IPv6-only and on a dual-stack topology, over plain TCP and HBONE. The XDP program
//! is attached to the gateways' veths, the pods are real kernel peers, and next hops
//! are resolved by Neighbor Solicitation (the gateways' uplink neighbours are learnt
//! only that way: with IPv6 forwarding on, neither gateway's kernel sends anything to
//! the other unasked).

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use xdpmesh_netns::stat as counter;
use xdpmesh_netns::topology::{
    CLIENT_ADDR, CLIENT_ADDR6, GWA_UP_ADDR, GWA_UP_ADDR6, GWB_UP_ADDR, GWB_UP_ADDR6, SERVER_ADDR,
    SERVER_ADDR6,
};
use xdpmesh_netns::{
    blob_sha256, require_root, unique_prefix, Families, GatewayKind, Node, Topology, TopologyOpts,
    ECHO_PORT, FILESERVER_PORT, IPERF_PORT,
};

const MIB: u64 = 1024 * 1024;

/// The demo mesh (client on node-a, server on node-b) with the addresses of
/// `families`, both workloads on `protocol`.
fn mesh_config(topo: &Topology, families: Families, protocol: &str) -> PathBuf {
    let list = |v4: &dyn std::fmt::Display, v6: &dyn std::fmt::Display| match families {
        Families::V4 => format!("[{v4}]"),
        Families::V6 => format!("[{v6}]"),
        Families::Dual => format!("[{v4}, {v6}]"),
    };
    let yaml = format!(
        "trust_domain: cluster.local\n\
         nodes:\n\
         \x20 - name: node-a\n    gateway_addresses: {gwa}\n\
         \x20 - name: node-b\n    gateway_addresses: {gwb}\n\
         workloads:\n\
         \x20 - name: client\n    namespace: default\n    service_account: client\n    node: node-a\n    addresses: {client}\n    protocol: {protocol}\n\
         \x20 - name: server\n    namespace: default\n    service_account: server\n    node: node-b\n    addresses: {server}\n    protocol: {protocol}\n",
        gwa = list(&GWA_UP_ADDR, &GWA_UP_ADDR6),
        gwb = list(&GWB_UP_ADDR, &GWB_UP_ADDR6),
        client = list(&CLIENT_ADDR, &CLIENT_ADDR6),
        server = list(&SERVER_ADDR, &SERVER_ADDR6),
    );
    let path = topo.tmp_dir().join(format!("mesh-{protocol}.yaml"));
    std::fs::write(&path, yaml).expect("writing the mesh config");
    path
}

/// The server's addresses the client uses on `families`: IPv6 first.
fn server_addrs(families: Families) -> Vec<IpAddr> {
    let mut v = Vec::new();
    if families.v6() {
        v.push(IpAddr::V6(SERVER_ADDR6));
    }
    if families.v4() {
        v.push(IpAddr::V4(SERVER_ADDR));
    }
    v
}

fn url(ip: IpAddr, path: &str) -> String {
    match ip {
        IpAddr::V4(v4) => format!("http://{v4}:{FILESERVER_PORT}{path}"),
        IpAddr::V6(v6) => format!("http://[{v6}]:{FILESERVER_PORT}{path}"),
    }
}

/// On each of the server's addresses: a 16 MiB download and upload (curl, SHA-256
/// checked), 200 echo connections of 16 KiB, then iperf3 for 3 s each way. Each
/// gateway counts exactly those connections, all closed (none reset but iperf3's), no
/// next hop that failed to resolve, and the server saw the client's own addresses.
fn curl_iperf3_echo(name: &str, families: Families, protocol: &str) {
    if !require_root(name) {
        return;
    }
    let opts = TopologyOpts {
        families,
        ..Default::default()
    };
    let mut topo = Topology::new(&unique_prefix(name), opts).expect("topology");
    let config = mesh_config(&topo, families, protocol);
    topo.start_gateways(GatewayKind::xdpmesh(1), &config)
        .expect("xdpmesh gateways");
    let fileserver = topo
        .start_fileserver(Node::Server, FILESERVER_PORT)
        .unwrap();
    let _iperf = topo.start_iperf_server(Node::Server, IPERF_PORT).unwrap();
    let _echo = topo.start_echo_server(Node::Server, ECHO_PORT).unwrap();
    let size = 16 * MIB;
    let mut connections = 0;
    for (i, ip) in server_addrs(families).into_iter().enumerate() {
        let seed = 40 + i as u64;
        let t = topo
            .http_download(
                Node::Client,
                &url(ip, &format!("/blob?size={size}&seed={seed}")),
            )
            .unwrap();
        assert_eq!((t.bytes, t.sha256), (size, blob_sha256(size, seed)), "{ip}");
        let u = topo
            .http_upload(Node::Client, &url(ip, "/upload"), size, seed + 10)
            .unwrap();
        assert_eq!(
            (u.length, u.sha256),
            (size, blob_sha256(size, seed + 10)),
            "{ip}"
        );
        let e = topo
            .run_echo_client(Node::Client, ip, ECHO_PORT, 200, 16 * 1024)
            .unwrap();
        assert_eq!(
            (e.connections, e.ok, e.failed, e.bytes),
            (200, 200, 0, 200 * 16 * 1024),
            "{ip}: {:?}",
            e.errors
        );
        connections += 2 + 200;
    }
    // curl and the echo connections all end with FIN.
    let [a, b] = topo.wait_gateways_idle(Duration::from_secs(15));
    for (gw, s) in [("A", &a), ("B", &b)] {
        for (field, want) in [
            ("opened_connections", connections),
            ("closed_connections", connections),
            ("reset_connections", 0),
        ] {
            assert_eq!(
                counter(s, &["totals", field]),
                want,
                "gateway {gw} {field}: {s:#}"
            );
        }
    }
    // iperf3 ends a data connection by closing it with bytes unread, which the kernel
    // answers with a reset: at most one per run.
    let mut runs = 0;
    for ip in server_addrs(families) {
        for reverse in [false, true] {
            let r = topo
                .run_iperf_opts(Node::Client, ip, IPERF_PORT, 3, reverse, 1)
                .unwrap();
            assert!(
                r.bytes > 4 * MIB,
                "{ip} reverse={reverse}: {} bytes",
                r.bytes
            );
            eprintln!(
                "{ip} iperf3 reverse={reverse}: {:.0} Mbit/s",
                r.bits_per_second / 1e6
            );
            connections += r.connections(1);
            runs += 1;
        }
    }
    let [a, b] = topo.wait_gateways_idle(Duration::from_secs(15));
    for (gw, s) in [("A", &a), ("B", &b)] {
        for (field, want) in [
            ("opened_connections", connections),
            ("closed_connections", connections),
            ("neighbor_timeouts", 0),
            ("no_flow_resets", 0),
        ] {
            assert_eq!(
                counter(s, &["totals", field]),
                want,
                "gateway {gw} {field}: {s:#}"
            );
        }
        assert!(
            counter(s, &["totals", "reset_connections"]) <= runs,
            "{s:#}"
        );
        assert!(
            counter(s, &["xdp", "redirect_mesh", "packets"]) > 1000,
            "{s:#}"
        );
    }
    if protocol == "HBONE" {
        assert!(
            counter(&a, &["totals", "hbone_tunnels_opened"]) >= 1,
            "{a:#}"
        );
        assert_eq!(counter(&a, &["totals", "hbone_refused"]), 0, "{a:#}");
        assert_eq!(counter(&b, &["totals", "hbone_refused"]), 0, "{b:#}");
    }
    // Gateway A learnt gateway B's uplink MAC by soliciting it.
    if families == Families::V6 {
        assert!(counter(&a, &["totals", "neighbor_requests"]) >= 1, "{a:#}");
    }
    let log = fileserver.log();
    if families.v6() {
        assert!(log.contains(&CLIENT_ADDR6.to_string()), "{log}");
    }
    if families.v4() {
        assert!(log.contains(&CLIENT_ADDR.to_string()), "{log}");
    }
}

#[test]
fn test_ipv6_only_tcp_curl_iperf3_echo() {
    curl_iperf3_echo("test_ipv6_only_tcp_curl_iperf3_echo", Families::V6, "TCP");
}

#[test]
fn test_ipv6_only_hbone_curl_iperf3_echo() {
    curl_iperf3_echo(
        "test_ipv6_only_hbone_curl_iperf3_echo",
        Families::V6,
        "HBONE",
    );
}

#[test]
fn test_dual_stack_tcp_curl_iperf3_echo() {
    curl_iperf3_echo(
        "test_dual_stack_tcp_curl_iperf3_echo",
        Families::Dual,
        "TCP",
    );
}

#[test]
fn test_dual_stack_hbone_curl_iperf3_echo() {
    curl_iperf3_echo(
        "test_dual_stack_hbone_curl_iperf3_echo",
        Families::Dual,
        "HBONE",
    );
}
