//! Writes the binary seeds of `corpus/wire/` and `corpus/tables/` (the text corpora are
//! written by hand). Not part of the smoke: `cargo test --test seeds -- --ignored`.

use std::path::PathBuf;

use smoltcp::wire::TcpControl;
use xdpmesh_control::config::MeshConfig;
use xdpmesh_fuzz::build_frame;

fn write(target: &str, name: &str, data: &[u8]) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(name), data).unwrap();
}

#[test]
#[ignore]
fn write_seeds() {
    let (a, b) = ([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]);
    let v4c = "198.18.1.2:40000".parse().unwrap();
    let v4s = "198.18.2.2:80".parse().unwrap();
    let v6c = "[fd00::1:2]:40000".parse().unwrap();
    let v6s = "[fd00::2:2]:15008".parse().unwrap();
    write(
        "wire",
        "v4-syn",
        &build_frame(a, b, v4c, v4s, TcpControl::Syn, false, b""),
    );
    write(
        "wire",
        "v4-synack",
        &build_frame(b, a, v4s, v4c, TcpControl::Syn, true, b""),
    );
    write(
        "wire",
        "v4-data",
        &build_frame(
            a,
            b,
            v4c,
            v4s,
            TcpControl::Psh,
            true,
            b"GET / HTTP/1.1\r\n\r\n",
        ),
    );
    write(
        "wire",
        "v4-fin",
        &build_frame(a, b, v4c, v4s, TcpControl::Fin, true, b""),
    );
    write(
        "wire",
        "v4-rst",
        &build_frame(b, a, v4s, v4c, TcpControl::Rst, false, b""),
    );
    write(
        "wire",
        "v6-syn",
        &build_frame(a, b, v6c, v6s, TcpControl::Syn, false, b""),
    );
    write(
        "wire",
        "v6-data",
        &build_frame(
            a,
            b,
            v6c,
            v6s,
            TcpControl::None,
            true,
            b"\x16\x03\x01\x00\x05hello",
        ),
    );
    // A SYN padded to Ethernet's 60-byte minimum (trailing bytes after the IP packet).
    let mut padded = build_frame(a, b, v4c, v4s, TcpControl::Syn, false, b"");
    padded.resize(60, 0);
    write("wire", "v4-syn-padded", &padded);
    let mut arp = [0u8; xdpmesh_fuzz::wire_src::ARP_FRAME_LEN];
    xdpmesh_fuzz::wire_src::write_arp_request(
        &mut arp,
        a,
        "198.18.0.1".parse().unwrap(),
        "198.18.0.2".parse().unwrap(),
    );
    write("wire", "arp-request", &arp);

    // Tables: the demo configs' tables for each node, and an empty generation.
    struct NoRoutes;
    impl xdpmesh_control::tables::RouteLookup for NoRoutes {
        fn route(&mut self, addr: std::net::IpAddr) -> Option<xdpmesh_shm::Route> {
            Some(xdpmesh_shm::Route {
                ifindex: 3,
                via: addr.is_ipv4().then(|| "198.18.0.254".parse().unwrap()),
            })
        }
    }
    let testdata = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../control/testdata");
    for f in ["demo.yaml", "demo-hbone.yaml", "interop-hbone.yaml"] {
        let cfg = MeshConfig::from_path(&testdata.join(f)).unwrap();
        let node = &cfg.nodes[0].name;
        let t = xdpmesh_control::tables::build(&cfg, node, &mut NoRoutes).unwrap();
        write(
            "tables",
            &format!("{}-{node}", f.trim_end_matches(".yaml")),
            &t.encode(5).unwrap(),
        );
    }
    write(
        "tables",
        "empty",
        &xdpmesh_shm::Tables::default().encode(1).unwrap(),
    );
}
