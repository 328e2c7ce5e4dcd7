//! `xdpmesh-dataplane capture` (issue 10, item 6): what the kernel's packet taps never
//! see on an xdpmesh gateway, in a pcapng that real tshark reads. During an HBONE
//! download through the gateways, a capture of gateway A's interfaces holds the TLS
//! handshake of the tunnel to the server's port 15008 (outer packets) and, with
//! `--inner`, the pod's plaintext HTTP request line as synthetic TCP packets.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use xdpmesh_netns::topology::SERVER_ADDR;
use xdpmesh_netns::{
    bin, blob_sha256, require_root, unique_prefix, GatewayKind, Node, Topology, TopologyOpts,
    FILESERVER_PORT,
};

fn tshark(file: &Path, args: &[&str]) -> String {
    let out = Command::new("tshark")
        .arg("-r")
        .arg(file)
        .args(args)
        .output()
        .expect("tshark (Debian package tshark) is installed by scripts/setup.sh");
    assert!(
        out.status.success(),
        "tshark {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn test_capture_shows_the_tunnels_tls_handshake_and_the_pods_plaintext_in_tshark() {
    if !require_root(
        "test_capture_shows_the_tunnels_tls_handshake_and_the_pods_plaintext_in_tshark",
    ) {
        return;
    }
    let mut topo =
        Topology::new(&unique_prefix("xcap"), TopologyOpts::default()).expect("topology");
    let cfg = Path::new(env!("CARGO_MANIFEST_DIR")).join("../control/testdata/demo-hbone.yaml");
    topo.start_gateways(GatewayKind::xdpmesh(1), &cfg)
        .expect("gateways");
    let _web = topo
        .start_fileserver(Node::Server, FILESERVER_PORT)
        .unwrap();
    let file = topo.tmp_dir().join("gwa.pcapng");
    let instance = topo.instance(Node::GatewayA);
    let file_arg = file.to_string_lossy().into_owned();
    let mut capture = topo
        .spawn(
            Node::GatewayA,
            &[
                &bin("xdpmesh-dataplane").to_string_lossy(),
                "capture",
                "--instance",
                &instance,
                "--iface",
                "up0",
                "--iface",
                "pod0",
                "--inner",
                "--duration",
                "4",
                "-w",
                &file_arg,
            ],
        )
        .unwrap();
    // The dataplane logs when the tap is on.
    let t = Instant::now();
    while !topo
        .dataplane_log(Node::GatewayA)
        .contains("capture started")
    {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "the capture did not start: {}",
            capture.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let size = 256 * 1024;
    let url = format!("http://{SERVER_ADDR}:{FILESERVER_PORT}/blob?size={size}&seed=8");
    let got = topo.http_download(Node::Client, &url).unwrap();
    assert_eq!((got.bytes, got.sha256), (size, blob_sha256(size, 8)));
    let status = capture.wait_timeout(Duration::from_secs(15)).unwrap();
    assert!(
        status.is_some_and(|s| s.success()),
        "capture: {}",
        capture.log()
    );
    assert!(
        capture
            .log()
            .contains(&format!("packets written to {}", file.display())),
        "{}",
        capture.log()
    );

    // The tunnel's TLS handshake to the server's HBONE port, from the outer packets:
    // the ClientHello gateway A sent and the ServerHello it received.
    let hellos = tshark(
        &file,
        &[
            "-d",
            "tcp.port==15008,tls",
            "-Y",
            "tls.handshake.type==1 || tls.handshake.type==2",
            "-T",
            "fields",
            "-e",
            "frame.interface_name",
            "-e",
            "tls.handshake.type",
            "-e",
            "ip.dst",
            "-e",
            "tcp.dstport",
        ],
    );
    let lines: Vec<&str> = hellos.lines().collect();
    assert!(
        lines.contains(&"up0\t1\t198.18.2.2\t15008"),
        "no ClientHello to 198.18.2.2:15008:\n{hellos}"
    );
    assert!(
        lines.iter().any(|l| l.starts_with("up0\t2\t198.18.1.2\t")),
        "no ServerHello back to the client's address:\n{hellos}"
    );
    // The pod's conversation, decrypted: the request line on the synthetic interface.
    // The same conversation also crosses pod0 in the clear, with other sequence
    // numbers: tshark must dissect each segment on its own rather than reassemble the
    // two as one stream (which marks one copy as retransmissions and skips it).
    let requests = tshark(
        &file,
        &[
            "-o",
            "tcp.desegment_tcp_streams:FALSE",
            "-o",
            "tcp.analyze_sequence_numbers:FALSE",
            "-Y",
            "http.request",
            "-T",
            "fields",
            "-e",
            "frame.interface_name",
            "-e",
            "http.request.method",
            "-e",
            "http.request.uri",
            "-e",
            "ip.src",
            "-e",
            "ip.dst",
        ],
    );
    let inner: Vec<&str> = requests
        .lines()
        .filter(|l| l.starts_with("hbone-inner\t"))
        .collect();
    assert_eq!(
        inner,
        [format!(
            "hbone-inner\tGET\t/blob?size={size}&seed=8\t198.18.1.2\t{SERVER_ADDR}"
        )],
        "{requests}"
    );
    // No plaintext on the uplink: the pod's request appears there only inside TLS.
    assert!(
        !requests.lines().any(|l| l.starts_with("up0\t")),
        "{requests}"
    );
}
