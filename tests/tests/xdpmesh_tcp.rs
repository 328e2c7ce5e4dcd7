//! xdpmesh gateways on the four-namespace topology, plain-TCP workloads (issue 2): the
//! XDP program is really attached to the gateways' veths, AF_XDP workers terminate the
//! pods' TCP with smoltcp and splice it onto a second leg; the pods are real kernel TCP
//! peers (curl, a Python HTTP server, iperf3, Python asyncio echo).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use xdpmesh_netns::stat as counter;
use xdpmesh_netns::topology::SERVER_ADDR;
use xdpmesh_netns::{
    bin, blob_sha256, require_root, unique_prefix, GatewayKind, Node, Topology, TopologyOpts,
    ECHO_PORT, FILESERVER_PORT, IPERF_PORT,
};

const MIB: u64 = 1024 * 1024;

pub fn demo_config() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../control/testdata/demo.yaml")
}

fn xdpmesh_topology(tag: &str, opts: TopologyOpts, queues: u32) -> Topology {
    let mut topo = Topology::new(&unique_prefix(tag), opts).expect("topology");
    topo.start_gateways(GatewayKind::xdpmesh(queues), &demo_config())
        .expect("xdpmesh gateways");
    topo
}

#[test]
fn test_xdpmesh_tcp_http_download_and_upload() {
    http_download_and_upload("test_xdpmesh_tcp_http_download_and_upload", 1500);
}

#[test]
fn test_xdpmesh_tcp_http_download_and_upload_mtu_9000() {
    http_download_and_upload("test_xdpmesh_tcp_http_download_and_upload_mtu_9000", 9000);
}

#[test]
fn test_xdpmesh_tcp_http_download_and_upload_mtu_65535() {
    http_download_and_upload(
        "test_xdpmesh_tcp_http_download_and_upload_mtu_65535",
        65_535,
    );
}

/// On jumbo links the XDP program diverts multi-buffer frames: the average diverted
/// frame (data segments and the ACKs between them) is then well above what fits a
/// 1500-byte MTU, which proves the jumbo path was taken.
fn assert_jumbo_frames(s: &serde_json::Value, mtu: u32) {
    let packets = counter(s, &["xdp", "redirect_mesh", "packets"]);
    let bytes = counter(s, &["xdp", "redirect_mesh", "bytes"]);
    if mtu > 1500 {
        assert!(
            bytes / packets.max(1) > 3000,
            "MTU {mtu}: {bytes} bytes in {packets} diverted frames: {s:#}"
        );
    }
}

fn http_download_and_upload(name: &str, mtu: u32) {
    if !require_root(name) {
        return;
    }
    let topo = xdpmesh_topology("xhttp", TopologyOpts::with_mtu(mtu), 1);
    let server = topo
        .start_fileserver(Node::Server, FILESERVER_PORT)
        .unwrap();
    let size = 64 * MIB;
    let url = format!("http://{SERVER_ADDR}:{FILESERVER_PORT}/blob?size={size}&seed=42");
    let t = topo.http_download(Node::Client, &url).unwrap();
    assert_eq!(t.bytes, size);
    assert_eq!(t.sha256, blob_sha256(size, 42));
    let u = topo
        .http_upload(
            Node::Client,
            &format!("http://{SERVER_ADDR}:{FILESERVER_PORT}/upload"),
            size,
            7,
        )
        .unwrap();
    assert_eq!(
        (u.length, u.sha256.as_str()),
        (size, blob_sha256(size, 7).as_str())
    );

    let [a, b] = topo.wait_gateways_idle(Duration::from_secs(15));
    // Two HTTP connections, each terminated once on each gateway.
    for s in [&a, &b] {
        assert_eq!(counter(s, &["totals", "opened_connections"]), 2, "{s:#}");
        assert_eq!(counter(s, &["totals", "closed_connections"]), 2, "{s:#}");
        assert_eq!(counter(s, &["totals", "reset_connections"]), 0, "{s:#}");
        assert!(
            counter(s, &["xdp", "redirect_mesh", "packets"]) > 1000,
            "{s:#}"
        );
        assert_eq!(
            counter(s, &["xdp", "pass_no_socket", "packets"]),
            0,
            "{s:#}"
        );
        assert_jumbo_frames(s, mtu);
    }
    // Payload bytes each way went through the splice of both gateways.
    for s in [&a, &b] {
        assert!(
            counter(s, &["totals", "bytes_upstream_to_downstream"]) >= size,
            "{s:#}"
        );
        assert!(
            counter(s, &["totals", "bytes_downstream_to_upstream"]) >= size,
            "{s:#}"
        );
    }
    // The server saw the client's own address (original source preserved).
    assert!(server.log().contains("198.18.1.2"), "{}", server.log());
}

#[test]
fn test_xdpmesh_tcp_iperf3_both_directions() {
    iperf3_both_directions("test_xdpmesh_tcp_iperf3_both_directions", 1500);
}

#[test]
fn test_xdpmesh_tcp_iperf3_both_directions_mtu_9000() {
    iperf3_both_directions("test_xdpmesh_tcp_iperf3_both_directions_mtu_9000", 9000);
}

#[test]
fn test_xdpmesh_tcp_iperf3_both_directions_mtu_65535() {
    iperf3_both_directions("test_xdpmesh_tcp_iperf3_both_directions_mtu_65535", 65_535);
}

fn iperf3_both_directions(name: &str, mtu: u32) {
    if !require_root(name) {
        return;
    }
    let topo = xdpmesh_topology("xiperf", TopologyOpts::with_mtu(mtu), 1);
    let _server = topo.start_iperf_server(Node::Server, IPERF_PORT).unwrap();
    let mut connections = 0;
    for reverse in [false, true] {
        let r = topo
            .run_iperf_opts(Node::Client, SERVER_ADDR, IPERF_PORT, 10, reverse, 1)
            .unwrap();
        assert!(r.seconds >= 9.5, "reverse={reverse}: {:#}", r.json);
        // iperf3's own accounting: every byte the sender wrote was received.
        assert!(
            r.bytes > 10 * MIB,
            "reverse={reverse}: only {} bytes in 10 s",
            r.bytes
        );
        eprintln!(
            "iperf3 reverse={reverse}: {:.0} Mbit/s, {} retransmits",
            r.bits_per_second / 1e6,
            r.retransmits
        );
        connections += r.connections(1);
    }
    let [a, b] = topo.wait_gateways_idle(Duration::from_secs(15));
    for s in [&a, &b] {
        // iperf3 uses a control connection and one data connection per run (and a
        // control connection per "server is busy" retry).
        assert_eq!(
            counter(s, &["totals", "opened_connections"]),
            connections,
            "{s:#}"
        );
        assert_eq!(
            counter(s, &["totals", "closed_connections"]),
            connections,
            "{s:#}"
        );
        assert_jumbo_frames(s, mtu);
        for drop in [
            "xsk_rx_dropped",
            "xsk_rx_ring_full",
            "xsk_tx_invalid",
            "tx_no_frame",
        ] {
            assert_eq!(counter(s, &["totals", drop]), 0, "{drop}: {s:#}");
        }
    }
}

#[test]
fn test_xdpmesh_tcp_1000_concurrent_echo_frees_everything() {
    concurrent_echo_frees_everything(
        "test_xdpmesh_tcp_1000_concurrent_echo_frees_everything",
        1500,
    );
}

#[test]
fn test_xdpmesh_tcp_1000_concurrent_echo_frees_everything_mtu_9000() {
    concurrent_echo_frees_everything(
        "test_xdpmesh_tcp_1000_concurrent_echo_frees_everything_mtu_9000",
        9000,
    );
}

#[test]
fn test_xdpmesh_tcp_1000_concurrent_echo_frees_everything_mtu_65535() {
    concurrent_echo_frees_everything(
        "test_xdpmesh_tcp_1000_concurrent_echo_frees_everything_mtu_65535",
        65_535,
    );
}

/// 1000 idle connections: both gateways give back the pages of all four socket buffers
/// of each (`socket_buffers_released`) and hold at most 4 KiB per connection (the
/// performance issue's target; 16 KiB of buffer pages alone before).
#[test]
fn test_xdpmesh_tcp_1000_idle_connections_hold_no_buffer_memory() {
    if !require_root("test_xdpmesh_tcp_1000_idle_connections_hold_no_buffer_memory") {
        return;
    }
    let mut topo =
        Topology::new(&unique_prefix("xidle"), TopologyOpts::default()).expect("topology");
    xdpmesh_netns::memory::start_gateways(&mut topo, &demo_config());
    // Two legs per connection and gateway, a receive and a send buffer each.
    xdpmesh_netns::memory::assert_idle_connections_hold_no_buffers(&topo, 1000, [4, 4]);
}

fn concurrent_echo_frees_everything(name: &str, mtu: u32) {
    if !require_root(name) {
        return;
    }
    let topo = xdpmesh_topology("xecho", TopologyOpts::with_mtu(mtu), 1);
    let _echo = topo.start_echo_server(Node::Server, ECHO_PORT).unwrap();
    // Warm up once (allocator arenas, hash tables), then take the idle figure.
    let warm = topo
        .run_echo_client(Node::Client, SERVER_ADDR, ECHO_PORT, 10, 64 * 1024)
        .unwrap();
    assert_eq!(warm.ok, 10, "{:?}", warm.errors);
    let idle = topo.wait_gateways_idle(Duration::from_secs(15));
    let idle_rss = [
        counter(&idle[0], &["rss_bytes"]),
        counter(&idle[1], &["rss_bytes"]),
    ];

    let r = topo
        .run_echo_client(Node::Client, SERVER_ADDR, ECHO_PORT, 1000, 64 * 1024)
        .unwrap();
    if r.ok != 1000 {
        let a = topo.gateway_stats(Node::GatewayA).unwrap();
        let b = topo.gateway_stats(Node::GatewayB).unwrap();
        panic!(
            "{} of 1000 failed: {:?}\nA: {a:#}\nB: {b:#}",
            r.failed, r.errors
        );
    }
    assert_eq!(
        (r.connections, r.ok, r.failed),
        (1000, 1000, 0),
        "errors: {:?}",
        r.errors
    );
    assert_eq!(r.bytes, 1000 * 64 * 1024);

    let [a, b] = topo.wait_gateways_idle(Duration::from_secs(15));
    let idle_at = Instant::now();
    for (s, idle) in [(&a, idle_rss[0]), (&b, idle_rss[1])] {
        assert_eq!(counter(s, &["totals", "opened_connections"]), 1010, "{s:#}");
        assert_eq!(counter(s, &["totals", "closed_connections"]), 1010, "{s:#}");
        assert_eq!(counter(s, &["totals", "live_connections"]), 0, "{s:#}");
        assert_eq!(counter(s, &["totals", "reset_connections"]), 0, "{s:#}");
        // Memory returns to within 10% of the idle figure once the connections are gone
        // (jemalloc's background threads give freed buffers back after its 10 s decay).
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut rss = counter(s, &["rss_bytes"]);
        while rss > idle + idle / 10 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(250));
            rss = counter(
                &topo
                    .gateway_stats(if std::ptr::eq(s, &a) {
                        Node::GatewayA
                    } else {
                        Node::GatewayB
                    })
                    .unwrap(),
                &["rss_bytes"],
            );
        }
        eprintln!("gateway rss: idle {idle} B, after 1000 connections {rss} B");
        assert!(rss <= idle + idle / 10, "rss {rss} B vs idle {idle} B");
    }
    topo.assert_no_stray_resets(idle_at);
}

#[test]
fn test_xdpmesh_non_mesh_traffic_passes_through_the_kernel() {
    if !require_root("test_xdpmesh_non_mesh_traffic_passes_through_the_kernel") {
        return;
    }
    let topo = xdpmesh_topology("xpass", TopologyOpts::default(), 1);
    let before = topo.gateway_stats(Node::GatewayA).unwrap();
    // ICMP to the gateway and across it.
    topo.run(
        Node::Client,
        &["ping", "-c", "3", "-i", "0.2", "-W", "2", "198.18.1.1"],
    )
    .unwrap();
    topo.run(
        Node::Client,
        &["ping", "-c", "3", "-i", "0.2", "-W", "2", "198.18.2.2"],
    )
    .unwrap();
    // A TCP service of gateway B itself (the node's own traffic, "SSH-like"), reached
    // from a client address that is not a captured workload, and from gateway A.
    let _svc = topo.start_echo_server(Node::GatewayB, 2222).unwrap();
    topo.run(
        Node::Client,
        &["ip", "addr", "add", "198.18.1.3/24", "dev", "eth0"],
    )
    .unwrap();
    let echo = |node: Node, src: Option<&str>| {
        let code = "import socket,sys\n\
                    s=socket.socket()\n\
                    if len(sys.argv) > 1: s.bind((sys.argv[1], 0))\n\
                    s.settimeout(5); s.connect(('198.18.0.2', 2222)); s.sendall(b'ping-xdpmesh')\n\
                    s.shutdown(socket.SHUT_WR); print(s.recv(100).decode())";
        let mut argv = vec!["python3", "-c", code];
        argv.extend(src);
        let out = topo.run(node, &argv).unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ping-xdpmesh");
    };
    echo(Node::Client, Some("198.18.1.3"));
    echo(Node::GatewayA, None);
    // A captured pod to a destination outside the mesh is passed through too.
    echo(Node::Client, None);
    // ICMP seen by gateway A's XDP (ingress only, IPv6 off, ARP counted apart): 3 echo
    // requests to A itself on pod0, 3 requests across on pod0, their 3 replies on up0.
    // The TCP segment count of the three passed-through echoes is not fixed (ACK
    // timing), but each is at least SYN, ACK, data, FIN in and SYN-ACK, data, FIN back.
    let delta =
        |after: &serde_json::Value, path: &[&str]| counter(after, path) - counter(&before, path);
    let after = topo
        .wait_for_stats(Node::GatewayA, Duration::from_secs(5), |s| {
            let (icmp, tcp) = (
                delta(s, &["xdp", "pass_non_tcp", "packets"]),
                delta(s, &["xdp", "pass_not_mesh", "packets"]),
            );
            if icmp == 9 && tcp >= 6 {
                Ok(())
            } else {
                Err(format!(
                    "pass_non_tcp +{icmp} (want 9), pass_not_mesh +{tcp} (want >= 6)"
                ))
            }
        })
        .unwrap_or_else(|e| panic!("{e:#}"));
    let delta = |path: &[&str]| delta(&after, path);
    assert_eq!(delta(&["xdp", "pass_non_tcp", "packets"]), 9, "{after:#}");
    assert!(
        delta(&["xdp", "pass_not_mesh", "packets"]) >= 6,
        "{after:#}"
    );
    assert_eq!(delta(&["xdp", "redirect_mesh", "packets"]), 0, "{after:#}");
    assert_eq!(delta(&["totals", "opened_connections"]), 0, "{after:#}");
}

/// RFC 1071 checksum.
fn csum(parts: &[&[u8]]) -> u16 {
    let mut sum = 0u32;
    for p in parts {
        for c in p.chunks(2) {
            sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
        }
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An Ethernet/IPv4/TCP frame client → server:80, with valid checksums unless changed.
fn tcp_frame(
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    ip_opts: &[u8],
    frag: u16,
    doff_words: u8,
    payload: &[u8],
) -> Vec<u8> {
    let ihl = 5 + ip_opts.len() / 4;
    let tcp_len = 20 + payload.len();
    let mut ip = vec![(4 << 4) | ihl as u8, 0];
    ip.extend(((ihl * 4 + tcp_len) as u16).to_be_bytes());
    ip.extend([0, 1]);
    ip.extend(frag.to_be_bytes());
    ip.extend([64, 6, 0, 0, 198, 18, 1, 2, 198, 18, 2, 2]);
    ip.extend(ip_opts);
    let c = csum(&[&ip]);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let mut tcp = vec![
        0x9c,
        0x41,
        0,
        80,
        0,
        0,
        0,
        1,
        0,
        0,
        0,
        0,
        doff_words << 4,
        0x10,
        0xff,
        0xff,
        0,
        0,
        0,
        0,
    ];
    tcp.extend(payload);
    let pseudo = [
        &[198u8, 18, 1, 2, 198, 18, 2, 2, 0, 6][..],
        &(tcp_len as u16).to_be_bytes(),
    ]
    .concat();
    let c = csum(&[&pseudo, &tcp]);
    tcp[16..18].copy_from_slice(&c.to_be_bytes());
    let mut f = dst_mac.to_vec();
    f.extend(src_mac);
    f.extend([0x08, 0x00]);
    f.extend(ip);
    f.extend(tcp);
    f
}

fn mac_of(topo: &Topology, node: Node, iface: &str) -> [u8; 6] {
    // /sys under nsenter shows the host's namespace: ask ip.
    let out = topo
        .run(node, &["ip", "-o", "link", "show", "dev", iface])
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mac = text
        .split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .unwrap();
    let mut m = [0u8; 6];
    for (b, h) in m.iter_mut().zip(mac.split(':')) {
        *b = u8::from_str_radix(h, 16).unwrap();
    }
    m
}

#[test]
fn test_xdpmesh_malformed_frames_are_counted_and_dropped() {
    if !require_root("test_xdpmesh_malformed_frames_are_counted_and_dropped") {
        return;
    }
    let topo = xdpmesh_topology("xbad", TopologyOpts::default(), 1);
    let gw = mac_of(&topo, Node::GatewayA, "pod0");
    let me = mac_of(&topo, Node::Client, "eth0");
    let good = tcp_frame(gw, me, &[], 0, 5, b"hello");
    let mut bad_tcp_sum = good.clone();
    *bad_tcp_sum.last_mut().unwrap() ^= 0xff;
    let mut bad_ip_sum = good.clone();
    bad_ip_sum[14 + 10] ^= 0xff;
    let mut bad_ihl = good.clone();
    bad_ihl[14] = 0x44;
    let mut too_long = good.clone();
    too_long[14 + 2..14 + 4].copy_from_slice(&1400u16.to_be_bytes());
    // IP header consistent (total length 30), but only 10 bytes of TCP header.
    let mut truncated_tcp = good[..14 + 20 + 10].to_vec();
    truncated_tcp[14 + 2..14 + 4].copy_from_slice(&30u16.to_be_bytes());
    truncated_tcp[14 + 10..14 + 12].copy_from_slice(&[0, 0]);
    let c = csum(&[&truncated_tcp[14..34]]);
    truncated_tcp[14 + 10..14 + 12].copy_from_slice(&c.to_be_bytes());
    let frames: Vec<(&str, Vec<u8>)> = vec![
        ("truncated ip", good[..14 + 10].to_vec()),
        ("bad ihl", bad_ihl),
        ("tot_len beyond frame", too_long),
        ("ip options", tcp_frame(gw, me, &[1, 1, 1, 0], 0, 5, b"x")),
        ("fragment", tcp_frame(gw, me, &[], 0x2000, 5, b"x")),
        ("tcp doff 3", tcp_frame(gw, me, &[], 0, 3, b"x")),
        ("truncated tcp", truncated_tcp),
        ("bad tcp checksum", bad_tcp_sum),
        ("bad ip checksum", bad_ip_sum),
    ];
    let before = topo.gateway_stats(Node::GatewayA).unwrap();
    let hex: Vec<String> = frames
        .iter()
        .map(|(_, f)| f.iter().map(|b| format!("{b:02x}")).collect())
        .collect();
    let code = "import socket,sys\n\
                s=socket.socket(socket.AF_PACKET, socket.SOCK_RAW)\n\
                s.bind((sys.argv[1], 0))\n\
                [s.send(bytes.fromhex(h)) for h in sys.argv[2:]]";
    let mut argv = vec!["python3", "-c", code, "eth0"];
    argv.extend(hex.iter().map(String::as_str));
    topo.run(Node::Client, &argv).unwrap();
    // Each malformed frame counted once under its reason; the two bad checksums are
    // diverted by XDP and counted by the worker.
    let want: [(&[&str], u64); 8] = [
        (&["xdp", "drop_truncated_ip", "packets"], 1),
        (&["xdp", "drop_bad_ip_header", "packets"], 2),
        (&["xdp", "drop_ip_options", "packets"], 1),
        (&["xdp", "drop_mesh_fragment", "packets"], 1),
        (&["xdp", "drop_bad_tcp_header", "packets"], 1),
        (&["xdp", "drop_truncated_tcp", "packets"], 1),
        (&["totals", "rx_dropped", "bad_tcp_checksum"], 1),
        (&["totals", "rx_dropped", "bad_ip_checksum"], 1),
    ];
    let deltas = |after: &serde_json::Value| -> Vec<(String, u64, u64)> {
        want.iter()
            .map(|(path, n)| {
                let got = counter(after, path) - counter(&before, path);
                (path.join("."), got, *n)
            })
            .filter(|(_, got, n)| got != n)
            .collect()
    };
    let after = topo
        .wait_for_stats(Node::GatewayA, Duration::from_secs(5), |s| {
            let off = deltas(s);
            if off.is_empty() {
                Ok(())
            } else {
                Err(format!("(counter, delta, want) off: {off:?}"))
            }
        })
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(deltas(&after), vec![], "{after:#}");
    let delta = |path: &[&str]| counter(&after, path) - counter(&before, path);
    // The valid-looking but connection-less segment was never sent; nothing opened.
    assert_eq!(delta(&["totals", "opened_connections"]), 0, "{after:#}");
    // And the gateway still carries traffic.
    let _echo = topo.start_echo_server(Node::Server, ECHO_PORT).unwrap();
    let r = topo
        .run_echo_client(Node::Client, SERVER_ADDR, ECHO_PORT, 5, 4096)
        .unwrap();
    assert_eq!(r.ok, 5, "{:?}", r.errors);
}

/// The pods' veth ends keep their checksum offload (`tx-checksumming on`, the
/// kernel's default), so their TCP segments reach the gateways' XDP with only the
/// pseudo-header's partial checksum. Verified, every one is dropped as a bad checksum
/// (the connection never opens); with `--trust-tcp-checksum pod0` the gateways take
/// them, and a download and an upload are byte-exact. The uplink still verifies.
#[test]
fn test_xdpmesh_tcp_trusts_partial_checksums_from_pods_only_where_told() {
    let name = "test_xdpmesh_tcp_trusts_partial_checksums_from_pods_only_where_told";
    if !require_root(name) {
        return;
    }
    let opts = TopologyOpts {
        pod_tx_checksum: true,
        ..TopologyOpts::default()
    };
    let mut topo = Topology::new(&unique_prefix("xcsum"), opts).unwrap();
    for node in [Node::Client, Node::Server] {
        let k = topo.run(node, &["ethtool", "-k", "eth0"]).unwrap();
        let k = String::from_utf8_lossy(&k.stdout).into_owned();
        assert!(k.contains("tx-checksumming: on"), "{node:?}: {k}");
    }
    let _server = topo
        .start_fileserver(Node::Server, FILESERVER_PORT)
        .unwrap();
    let url = format!("http://{SERVER_ADDR}:{FILESERVER_PORT}/blob?size=1000&seed=3");
    let bad = |s: &serde_json::Value| counter(s, &["totals", "rx_dropped", "bad_tcp_checksum"]);

    // Verified (the default): the client's SYNs are dropped, counted, and nothing opens.
    topo.start_gateways(GatewayKind::xdpmesh(1), &demo_config())
        .expect("gateways");
    let err = topo
        .run_timeout(
            Node::Client,
            &[
                "curl",
                "-sS",
                "-o",
                "/dev/null",
                "--connect-timeout",
                "2",
                &url,
            ],
            Duration::from_secs(10),
        )
        .expect_err("curl got through unverified partial checksums");
    // curl's 28: the connection timed out (its SYNs were dropped, never reset).
    assert!(format!("{err:#}").contains("exit status: 28"), "{err:#}");
    let a = topo
        .wait_for_stats(Node::GatewayA, Duration::from_secs(5), |s| {
            if bad(s) >= 2 {
                Ok(())
            } else {
                Err(format!("bad_tcp_checksum {}", bad(s)))
            }
        })
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(counter(&a, &["totals", "opened_connections"]), 0, "{a:#}");
    topo.stop_gateways(Signal::SIGTERM).unwrap();

    // Trusted on the pod links: both directions byte-exact, nothing dropped.
    topo.set_gateway_args(&[], &["--trust-tcp-checksum", "pod0"]);
    topo.start_gateways(GatewayKind::xdpmesh(1), &demo_config())
        .expect("gateways trusting pod0");
    let size = 4 * MIB;
    let url = format!("http://{SERVER_ADDR}:{FILESERVER_PORT}/blob?size={size}&seed=3");
    let t = topo.http_download(Node::Client, &url).unwrap();
    assert_eq!((t.bytes, t.sha256), (size, blob_sha256(size, 3)));
    let u = topo
        .http_upload(
            Node::Client,
            &format!("http://{SERVER_ADDR}:{FILESERVER_PORT}/upload"),
            size,
            4,
        )
        .unwrap();
    assert!(u.ok(), "{u:?}");
    let [a, b] = topo.wait_gateways_idle(Duration::from_secs(15));
    for s in [&a, &b] {
        assert_eq!(bad(s), 0, "{s:#}");
        assert_eq!(counter(s, &["totals", "opened_connections"]), 2, "{s:#}");
        assert_eq!(counter(s, &["totals", "reset_connections"]), 0, "{s:#}");
    }
}

#[test]
fn test_xdpmesh_two_queues_spread_flows_over_both_workers() {
    if !require_root("test_xdpmesh_two_queues_spread_flows_over_both_workers") {
        return;
    }
    let topo = xdpmesh_topology(
        "xmq",
        TopologyOpts {
            rx_queues: 2,
            ..Default::default()
        },
        2,
    );
    let _echo = topo.start_echo_server(Node::Server, ECHO_PORT).unwrap();
    let r = topo
        .run_echo_client(Node::Client, SERVER_ADDR, ECHO_PORT, 200, 64 * 1024)
        .unwrap();
    let [a, b] = topo.wait_gateways_idle(Duration::from_secs(15));
    assert_eq!(
        (r.ok, r.failed),
        (200, 0),
        "errors: {:?}\nA: {a:#}\nB: {b:#}",
        r.errors
    );
    for s in [&a, &b] {
        let workers = s["workers"].as_array().unwrap();
        assert_eq!(workers.len(), 2, "{s:#}");
        let opened: Vec<u64> = workers
            .iter()
            .map(|w| w["opened_connections"].as_u64().unwrap())
            .collect();
        assert_eq!(opened.iter().sum::<u64>(), 200, "{s:#}");
        assert!(
            opened.iter().all(|&o| o > 20),
            "flows must land on both workers: {opened:?}"
        );
        assert_eq!(counter(s, &["totals", "handover_dropped"]), 0, "{s:#}");
        assert_eq!(counter(s, &["totals", "closed_connections"]), 200, "{s:#}");
        assert_eq!(counter(s, &["totals", "reset_connections"]), 0, "{s:#}");
        eprintln!(
            "opened per worker {opened:?}, handovers out {}",
            counter(s, &["totals", "handover_out"])
        );
    }
}

/// The usual veth (made without `numrxqueues`: one queue per CPU allocated, one used)
/// and a dataplane started without `--queues`: it must bind the queues in use, not the
/// allocated ones (issue 10: "binding an AF_XDP socket to pod0 queue 1 failed").
#[test]
fn test_xdpmesh_default_queues_on_a_plain_veth() {
    if !require_root("test_xdpmesh_default_queues_on_a_plain_veth") {
        return;
    }
    let topo = xdpmesh_topology(
        "xdq",
        TopologyOpts {
            rx_queues: 0,
            ..Default::default()
        },
        0,
    );
    // The case only exists where the kernel allocates more queues than the veth uses.
    let link = topo
        .run(
            Node::GatewayA,
            &["ip", "-j", "-d", "link", "show", "dev", "pod0"],
        )
        .unwrap();
    let link: serde_json::Value = serde_json::from_slice(&link.stdout).unwrap();
    let allocated = link[0]["num_rx_queues"].as_u64().unwrap();
    assert!(
        allocated >= 2,
        "pod0 has {allocated} RX queue(s) allocated: needs 2+ CPUs"
    );
    let _echo = topo.start_echo_server(Node::Server, ECHO_PORT).unwrap();
    let r = topo
        .run_echo_client(Node::Client, SERVER_ADDR, ECHO_PORT, 20, 4096)
        .unwrap();
    let [a, b] = topo.wait_gateways_idle(Duration::from_secs(15));
    assert_eq!((r.ok, r.failed), (20, 0), "errors: {:?}", r.errors);
    for s in [&a, &b] {
        assert_eq!(s["workers"].as_array().unwrap().len(), 1, "{s:#}");
        assert_eq!(counter(s, &["totals", "opened_connections"]), 20, "{s:#}");
    }
}

#[test]
fn test_xdpmesh_sigterm_detaches_and_a_second_start_works() {
    if !require_root("test_xdpmesh_sigterm_detaches_and_a_second_start_works") {
        return;
    }
    let mut topo = xdpmesh_topology("xstop", TopologyOpts::default(), 1);
    let _echo = topo.start_echo_server(Node::Server, ECHO_PORT).unwrap();
    let xdp_on = |topo: &Topology, node| {
        let out = topo
            .run(node, &["ip", "link", "show", "dev", "pod0"])
            .unwrap();
        String::from_utf8_lossy(&out.stdout).contains("prog/xdp")
    };
    assert!(xdp_on(&topo, Node::GatewayA));
    for (name, status, graceful) in topo.stop_gateways(Signal::SIGTERM).unwrap() {
        assert!(graceful && status.success(), "{name}: {status}");
    }
    for gw in [Node::GatewayA, Node::GatewayB] {
        assert!(!xdp_on(&topo, gw), "XDP still attached on {gw:?}");
        for iface in ["pod0", "up0"] {
            let out = topo
                .run(gw, &["ip", "-d", "link", "show", "dev", iface])
                .unwrap();
            assert!(
                !String::from_utf8_lossy(&out.stdout).contains("xdp"),
                "{gw:?} {iface}"
            );
        }
    }
    // The kernel carries the traffic again (the gateways route).
    let r = topo
        .run_echo_client(Node::Client, SERVER_ADDR, ECHO_PORT, 20, 4096)
        .unwrap();
    assert_eq!(r.ok, 20, "{:?}", r.errors);
    // A second start works and diverts again.
    topo.start_gateways(GatewayKind::xdpmesh(1), &demo_config())
        .unwrap();
    let r = topo
        .run_echo_client(Node::Client, SERVER_ADDR, ECHO_PORT, 20, 4096)
        .unwrap();
    assert_eq!(r.ok, 20, "{:?}", r.errors);
    let [a, _] = topo.wait_gateways_idle(Duration::from_secs(15));
    assert_eq!(counter(&a, &["totals", "opened_connections"]), 20, "{a:#}");
}

/// One owner per instance: a second `xdpmesh-control run` and a second
/// `xdpmesh-dataplane run` of a live instance (same command line, same namespace) exit
/// at once naming the holder's pid, and traffic through the running ones is undisturbed.
/// A control killed with SIGKILL leaves its lock file behind, and a new one starts anyway.
#[test]
fn test_xdpmesh_second_start_of_a_live_instance_is_refused_and_a_killed_control_restarts() {
    if !require_root(
        "test_xdpmesh_second_start_of_a_live_instance_is_refused_and_a_killed_control_restarts",
    ) {
        return;
    }
    let mut topo = xdpmesh_topology("xlock", TopologyOpts::default(), 1);
    let _server = topo
        .start_fileserver(Node::Server, FILESERVER_PORT)
        .unwrap();
    let size = 8 * MIB;
    let download = |topo: &Topology, seed: u64| {
        let url = format!("http://{SERVER_ADDR}:{FILESERVER_PORT}/blob?size={size}&seed={seed}");
        let t = topo.http_download(Node::Client, &url).unwrap();
        assert_eq!(
            (t.bytes, t.sha256.as_str()),
            (size, blob_sha256(size, seed).as_str())
        );
    };
    download(&topo, 1);
    let generation = counter(
        &topo.gateway_stats(Node::GatewayA).unwrap(),
        &["generation"],
    );

    let instance = topo.instance(Node::GatewayA);
    let run_dir = xdpmesh_netns::gateway::run_dir(&instance);
    let (control_pid, dataplane_pid) = topo.gateway_pids(Node::GatewayA).unwrap();
    let (control_argv, dataplane_argv) = topo.gateway_argv(Node::GatewayA).unwrap();
    for (argv, program, pid, lock) in [
        (
            &control_argv,
            "xdpmesh-control",
            control_pid,
            "control.lock",
        ),
        (
            &dataplane_argv,
            "xdpmesh-dataplane",
            dataplane_pid,
            "dataplane.lock",
        ),
    ] {
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        let mut second = topo.spawn(Node::GatewayA, &argv).unwrap();
        let status = second.wait_timeout(Duration::from_secs(5)).unwrap();
        let log = second.log();
        let status =
            status.unwrap_or_else(|| panic!("a second {program} still runs after 5 s:\n{log}"));
        assert_eq!(status.code(), Some(1), "{program}: {log}");
        let want = format!(
            "{program}: error: instance \"{instance}\" is already run by {program} pid {pid} (lock {}); stop it first or pick another --instance",
            run_dir.join(lock).display()
        );
        assert!(log.contains(&want), "want {want:?} in:\n{log}");
        assert_eq!(
            std::fs::read_to_string(run_dir.join(lock)).unwrap(),
            format!("{pid}\n"),
            "the refused {program} must not overwrite the holder's pid"
        );
    }
    // Nothing was disturbed: both gateways run, no table was published, XDP is attached
    // and traffic flows byte-exact.
    assert_eq!(topo.dead_gateway_processes(), Vec::<String>::new());
    assert_eq!(
        counter(
            &topo.gateway_stats(Node::GatewayA).unwrap(),
            &["generation"]
        ),
        generation
    );
    download(&topo, 2);

    // kill -9 leaves control.lock behind; the kernel released the lock, so a new control
    // with the same command line starts and continues the table file's generations.
    let new_pid = topo
        .restart_gateway_control(Node::GatewayA, Signal::SIGKILL)
        .unwrap();
    assert_ne!(new_pid, control_pid);
    assert_eq!(
        std::fs::read_to_string(run_dir.join("control.lock")).unwrap(),
        format!("{new_pid}\n")
    );
    assert_eq!(
        topo.gateway_pids(Node::GatewayA).unwrap(),
        (new_pid, dataplane_pid)
    );
    topo.wait_for_stats(Node::GatewayA, Duration::from_secs(10), |s| {
        let g = counter(s, &["generation"]);
        (g > generation)
            .then_some(())
            .ok_or(format!("generation {g}, want > {generation}"))
    })
    .unwrap();
    download(&topo, 3);
    assert_eq!(topo.dead_gateway_processes(), Vec::<String>::new());
}

#[test]
fn test_bad_input_is_refused_with_a_reason() {
    if !require_root("test_bad_input_is_refused_with_a_reason") {
        return;
    }
    let bad = Path::new(env!("CARGO_MANIFEST_DIR")).join("../control/testdata/bad");
    for (file, want) in [
        ("unknown-field.yaml", ":15:5: workloads[0]: unknown field `protocl`"),
        ("duplicate-address.yaml", ":20:17: duplicate address 198.18.1.2: already used by workload default/client at line 14"),
        ("unknown-node.yaml", ":19:11: workload default/server is on node \"node-z\", which is not in nodes (known: node-a, node-b)"),
    ] {
        let path = bad.join(file);
        let out = std::process::Command::new(bin("xdpmesh-control"))
            .args(["check", "--config", path.to_str().unwrap()])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{file}: {err}");
        assert!(err.contains(&format!("{}{want}", path.display())), "{file}: {err}");
    }
    let topo = Topology::new(&unique_prefix("xerr"), TopologyOpts::default()).unwrap();
    let dp = bin("xdpmesh-dataplane");
    let run = |args: &[&str]| {
        let mut argv = vec![
            dp.to_str().unwrap(),
            "run",
            "--instance",
            "xerr-test",
            "--wait-tables-secs",
            "1",
        ];
        argv.extend(args);
        let out = topo
            .cmd(Node::GatewayA, argv[0], &argv[1..])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1));
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = run(&["--iface", "nope0"]);
    assert!(
        err.contains("interface nope0 not found in this network namespace: check `ip link`"),
        "{err}"
    );
    // Only the dataplane's own interfaces can be trusted.
    let err = run(&[
        "--iface",
        "pod0",
        "--iface",
        "up0",
        "--trust-tcp-checksum",
        "eth9",
    ]);
    assert!(
        err.contains(
            "--trust-tcp-checksum eth9: not one of the dataplane's interfaces (--iface pod0 --iface up0)"
        ),
        "{err}"
    );
    // Loopback has no native XDP support.
    let err = run(&["--iface", "lo", "--xdp-mode", "native"]);
    assert!(
        err.contains("native") && err.contains("--xdp-mode generic"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all("/sys/fs/bpf/xdpmesh/xerr-test");
    let _ = std::fs::remove_dir_all("/run/xdpmesh/xerr-test");
}

/// Authorization policy on plain TCP, the twin of HBONE's `401`: the destination
/// gateway resets a connection its workload's policies do not allow, logs why, and a
/// reloaded config (SIGHUP) changes the verdict without a restart. Plain TCP carries no
/// identity, so only a policy without `from` can allow it.
#[test]
fn test_xdpmesh_tcp_policy_resets_denied_connections_and_reloads() {
    if !require_root("test_xdpmesh_tcp_policy_resets_denied_connections_and_reloads") {
        return;
    }
    let mut topo =
        Topology::new(&unique_prefix("xpol"), TopologyOpts::default()).expect("topology");
    let base = std::fs::read_to_string(demo_config()).unwrap();
    let with_ports = |ports: &str| {
        format!(
            "{base}policies:\n  - name: web-only\n    namespace: default\n    \
             workload: server\n    ports: [{ports}]\n"
        )
    };
    let cfg = topo.tmp_dir().join("mesh-policy.yaml");
    std::fs::write(&cfg, with_ports("80")).unwrap();
    topo.start_gateways(GatewayKind::xdpmesh(1), &cfg)
        .expect("xdpmesh gateways");
    let _web = topo
        .start_fileserver(Node::Server, FILESERVER_PORT)
        .unwrap();
    let _echo = topo.start_echo_server(Node::Server, ECHO_PORT).unwrap();

    // Port 80 is allowed.
    let url = format!("http://{SERVER_ADDR}:{FILESERVER_PORT}/blob?size={MIB}&seed=3");
    let t = topo.http_download(Node::Client, &url).unwrap();
    assert_eq!((t.bytes, t.sha256), (MIB, blob_sha256(MIB, 3)));

    // Port 7000 is not: gateway B resets it before anything reaches the server pod.
    let r = topo
        .run_echo_client(Node::Client, SERVER_ADDR, ECHO_PORT, 1, 1024)
        .unwrap();
    assert_eq!((r.ok, r.failed), (0, 1), "{:?}", r.errors);
    topo.wait_stat(
        Node::GatewayB,
        &["totals", "policy_denied"],
        1,
        Duration::from_secs(2),
    )
    .unwrap();
    let a = topo.gateway_stats(Node::GatewayA).unwrap();
    assert_eq!(counter(&a, &["totals", "policy_denied"]), 0, "{a:#}");
    let (_, _, b_log) = topo
        .gateway_logs()
        .into_iter()
        .find(|(n, _, _)| *n == Node::GatewayB)
        .unwrap();
    let log = std::fs::read_to_string(&b_log).unwrap();
    let line = log
        .lines()
        .find(|l| l.contains("error=\"authorization policy:"))
        .unwrap_or_else(|| panic!("no policy line in gateway B's log:\n{log}"));
    for want in [
        "src.addr=198.18.1.2:",
        "dst.addr=198.18.2.2:7000",
        "dst.workload=\"server\"",
        "error=\"authorization policy: no ALLOW policy matches a plain-TCP peer (no identity) on port 7000 (policies: default/web-only) (workload default/server)\"",
    ] {
        assert!(line.contains(want), "{want:?} not in {line:?}");
    }

    // Reload with 7000 allowed too: the same connection now goes through.
    std::fs::write(&cfg, with_ports("80, 7000")).unwrap();
    topo.reload_gateway_config(Node::GatewayB).unwrap();
    let r = topo
        .run_echo_client(Node::Client, SERVER_ADDR, ECHO_PORT, 1, 1024)
        .unwrap();
    assert_eq!((r.ok, r.failed, r.bytes), (1, 0, 1024), "{:?}", r.errors);
    let [_, b] = topo.wait_gateways_idle(Duration::from_secs(15));
    assert_eq!(counter(&b, &["totals", "policy_denied"]), 1, "{b:#}");
}

/// A reset that answers our half-close reaches the other side at once. The client pod
/// sends 100 bytes and shuts its sending side; the server pod closes without reading
/// them, so its kernel answers with a reset. Each gateway had already passed the FIN
/// on, so the leg that gets the reset was half-closed by us: it must still reset the
/// other leg, and the client must see the reset, not wait for the 60 s half-dead limit.
#[test]
fn test_xdpmesh_tcp_reset_after_half_close_reaches_the_client() {
    if !require_root("test_xdpmesh_tcp_reset_after_half_close_reaches_the_client") {
        return;
    }
    const PORT: u16 = 7300;
    let topo = xdpmesh_topology("xrst", TopologyOpts::default(), 1);
    let py = xdpmesh_netns::peers::python();
    let py = py.to_str().unwrap();
    let server = format!(
        "import socket, time\n\
         s = socket.socket()\n\
         s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
         s.bind(('0.0.0.0', {PORT}))\n\
         s.listen(8)\n\
         c, _ = s.accept()\n\
         time.sleep(1.0)\n\
         c.close()\n\
         time.sleep(30)\n"
    );
    let _srv = topo
        .spawn(Node::Server, &[py, "-u", "-c", &server])
        .unwrap();
    topo.wait_tcp_listen(Node::Server, PORT, Duration::from_secs(10))
        .unwrap();
    let client = format!(
        "import socket, time\n\
         c = socket.create_connection(('{SERVER_ADDR}', {PORT}), timeout=20)\n\
         c.sendall(b'x' * 100)\n\
         c.shutdown(socket.SHUT_WR)\n\
         t = time.monotonic()\n\
         try:\n\
         \x20   d = c.recv(10)\n\
         \x20   print('recv', len(d), round(time.monotonic() - t, 1))\n\
         except ConnectionResetError:\n\
         \x20   print('reset', round(time.monotonic() - t, 1))\n\
         except socket.timeout:\n\
         \x20   print('timeout', round(time.monotonic() - t, 1))\n"
    );
    let out = topo
        .run_timeout(Node::Client, &[py, "-c", &client], Duration::from_secs(40))
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let words: Vec<&str> = stdout.split_whitespace().collect();
    assert_eq!(
        words.first().copied(),
        Some("reset"),
        "client saw {stdout:?} ({})",
        String::from_utf8_lossy(&out.stderr)
    );
    let secs: f64 = words[1].parse().unwrap();
    assert!(secs < 5.0, "the reset took {secs} s to reach the client");
    let [a, b] = topo.wait_gateways_idle(Duration::from_secs(15));
    for s in [&a, &b] {
        assert_eq!(counter(s, &["totals", "reset_connections"]), 1, "{s:#}");
        assert_eq!(counter(s, &["totals", "closed_connections"]), 1, "{s:#}");
    }
}
