//! xdpmesh gateways on the four-namespace topology, plain-TCP workloads (issue 2): the
//! XDP program is really attached to the gateways' veths, AF_XDP workers terminate the
//! pods' TCP with smoltcp and splice it onto a second leg; the pods are real kernel TCP
//! peers (curl, a Python HTTP server, iperf3, Python asyncio echo).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;
use xdpmesh_netns::topology::SERVER_ADDR;
use xdpmesh_netns::{
    blob_sha256, require_root, unique_prefix, GatewayKind, Node, Topology, TopologyOpts,
    FILESERVER_PORT,
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

fn counter(stats: &Value, path: &[&str]) -> u64 {
    let mut v = stats;
    for p in path {
        v = &v[*p];
    }
    v.as_u64()
        .unwrap_or_else(|| panic!("no counter {path:?} in {stats:#}"))
}

/// Waits until both gateways report no live connection (their stats are rewritten every 200 ms).
fn wait_idle(topo: &Topology) -> [Value; 2] {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let a = topo.gateway_stats(Node::GatewayA).unwrap();
        let b = topo.gateway_stats(Node::GatewayB).unwrap();
        let live = counter(&a, &["totals", "live_connections"])
            + counter(&b, &["totals", "live_connections"]);
        if live == 0 {
            return [a, b];
        }
        assert!(
            Instant::now() < deadline,
            "connections still live after 15 s:\nA: {a:#}\nB: {b:#}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn test_xdpmesh_tcp_http_download_and_upload() {
    if !require_root("test_xdpmesh_tcp_http_download_and_upload") {
        return;
    }
    let topo = xdpmesh_topology("xhttp", TopologyOpts::default(), 1);
    let server = topo
        .start_fileserver(Node::Server, FILESERVER_PORT)
        .unwrap();
    let size = 8 * MIB;
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

    let [a, b] = wait_idle(&topo);
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
