//! The harness's xdpmesh gateway plumbing (spawn, readiness, stats, SIGTERM, cleanup of
//! pins / shm / run dirs), exercised with stand-in shell scripts for `xdpmesh-control`
//! and `xdpmesh-dataplane` so it works before the real binaries do.
//!
//! One test function only: it sets XDPMESH_BIN_DIR, which is process-wide.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use nix::sys::signal::Signal;
use xdpmesh_netns::gateway::{pin_dir, run_dir, shm_path};
use xdpmesh_netns::topology::SERVER_ADDR;
use xdpmesh_netns::{
    require_root, unique_prefix, GatewayKind, Node, Topology, TopologyOpts, ECHO_PORT,
};

const FAKE_CONTROL: &str = r#"#!/bin/sh
# args: run --config F --node N --instance I
echo "argv: $*" >&2
inst="$7"
mkdir -p "/sys/fs/bpf/xdpmesh/$inst"
: > "/dev/shm/xdpmesh-$inst"
trap 'echo "control got TERM" >&2; exit 0' TERM
echo "xdpmesh-control published generation 1" >&2
while :; do sleep 0.1; done
"#;

const FAKE_DATAPLANE: &str = r#"#!/bin/sh
# args: run --instance I --iface pod0 --iface up0 --queues N --xdp-mode M
echo "argv: $*" >&2
inst="$3"
if [ -e "$(dirname "$0")/fail-$inst" ]; then echo "cannot attach XDP: fake failure" >&2; exit 3; fi
mkdir -p "/run/xdpmesh/$inst"
printf '{"generation":1,"workers":[],"totals":{"live_connections":0,"handover_out":0},"xdp":{},"rss_bytes":%s}\n' "$$" > "/run/xdpmesh/$inst/stats.json"
trap 'echo "dataplane got TERM" >&2; exit 0' TERM
echo "xdpmesh-dataplane ready" >&2
while :; do sleep 0.1; done
"#;

fn install(dir: &Path, name: &str, text: &str) {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn test_gateway_harness_with_stand_in_binaries() {
    if !require_root("test_gateway_harness_with_stand_in_binaries") {
        return;
    }
    let guard =
        TempDir(std::env::temp_dir().join(format!("xdpmesh-fakebin-{}", std::process::id())));
    let bins = guard.0.clone();
    std::fs::create_dir_all(&bins).unwrap();
    install(&bins, "xdpmesh-control", FAKE_CONTROL);
    install(&bins, "xdpmesh-dataplane", FAKE_DATAPLANE);
    std::env::set_var("XDPMESH_BIN_DIR", &bins);
    let config = bins.join("mesh.yaml");
    std::fs::write(&config, "trust_domain: cluster.local\n").unwrap();

    // Ready path.
    let mut topo = Topology::new(
        &unique_prefix("gwok"),
        TopologyOpts {
            rx_queues: 2,
            ..TopologyOpts::default()
        },
    )
    .unwrap();
    topo.start_gateways(
        GatewayKind::Xdpmesh {
            queues: 2,
            xdp_mode: "generic".into(),
        },
        &config,
    )
    .unwrap();
    let instances = [topo.instance(Node::GatewayA), topo.instance(Node::GatewayB)];
    let logs = topo.gateway_logs();
    assert_eq!(logs.len(), 2);
    let control_a = std::fs::read_to_string(&logs[0].1).unwrap();
    assert!(
        control_a.contains(&format!(
            "argv: run --config {} --node node-a --instance {}",
            config.canonicalize().unwrap().display(),
            instances[0]
        )),
        "{control_a}"
    );
    let dataplane_b = std::fs::read_to_string(&logs[1].2).unwrap();
    assert!(
        dataplane_b.contains(&format!(
            "argv: run --instance {} --iface pod0 --iface up0 --queues 2 --xdp-mode generic",
            instances[1]
        )),
        "{dataplane_b}"
    );
    let stats = topo.gateway_stats(Node::GatewayB).unwrap();
    assert_eq!(stats["generation"], 1);
    assert!(topo.gateway_stats(Node::Client).is_err());
    // The kernel still routes (the stand-ins attach nothing).
    let _echo = topo.start_echo_server(Node::Server, ECHO_PORT).unwrap();
    let r = topo
        .run_echo_client(Node::Client, SERVER_ADDR, ECHO_PORT, 4, 4096)
        .unwrap();
    assert_eq!(r.ok, 4, "{:?}", r.errors);

    let stopped = topo.stop_gateways(Signal::SIGTERM).unwrap();
    assert_eq!(stopped.len(), 4);
    for (name, status, graceful) in &stopped {
        assert!(*graceful && status.success(), "{name}: {status}");
    }
    for inst in &instances {
        assert!(pin_dir(inst).exists() && shm_path(inst).exists() && run_dir(inst).exists());
    }
    drop(topo);
    for inst in &instances {
        assert!(!pin_dir(inst).exists(), "{}", pin_dir(inst).display());
        assert!(!shm_path(inst).exists(), "{}", shm_path(inst).display());
        assert!(!run_dir(inst).exists(), "{}", run_dir(inst).display());
    }

    // Failure path: gateway B's dataplane exits; the error carries its log.
    let mut topo = Topology::new(&unique_prefix("gwfail"), TopologyOpts::default()).unwrap();
    std::fs::write(
        bins.join(format!("fail-{}", topo.instance(Node::GatewayB))),
        "",
    )
    .unwrap();
    let err = topo
        .start_gateways(GatewayKind::xdpmesh(1), &config)
        .unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("GatewayB dataplane"), "{msg}");
    assert!(msg.contains("cannot attach XDP: fake failure"), "{msg}");
    assert!(
        !msg.contains("GatewayA dataplane:") && !msg.contains("GatewayA control:"),
        "only B failed: {msg}"
    );
    let inst_a = topo.instance(Node::GatewayA);
    drop(topo);
    assert!(!pin_dir(&inst_a).exists() && !shm_path(&inst_a).exists());
}

struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
