//! The `external` gateway type with the socat example, in a real topology: the smoke
//! throughput scenario must carry bytes through the two relays.

use std::path::Path;
use std::process::Command;

use xdpmesh_benches::report::BenchReport;
use xdpmesh_netns::require_root;

#[test]
fn socat_relay_carries_smoke_throughput() {
    if !require_root("socat_relay_carries_smoke_throughput") {
        return;
    }
    for tool in ["socat", "iperf3"] {
        assert!(
            Command::new(tool).arg("-h").output().is_ok(),
            "{tool} is not installed (scripts/setup.sh installs it)"
        );
    }
    let spec = Path::new(env!("CARGO_MANIFEST_DIR")).join("external/socat-relay.toml");
    let dir = std::env::temp_dir().join(format!("xdpmesh-bench-ext-{}", std::process::id()));
    let out = dir.join("result.json");
    let run = Command::new(env!("CARGO_BIN_EXE_xdpmesh-bench"))
        .args([
            "--smoke",
            "--no-plots",
            "--scenarios",
            "throughput,latency",
            "--gateways",
        ])
        .arg(format!("external:{}", spec.display()))
        .arg("--out")
        .arg(&out)
        .output()
        .expect("xdpmesh-bench runs");
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(run.status.success(), "xdpmesh-bench failed:\n{log}");
    let report: BenchReport =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let g = report
        .gateway("external:socat-relay")
        .expect("gateway in report");
    assert_eq!(g.status, "ok", "{log}");
    for f in [
        "throughput_1s_fwd_mbps",
        "throughput_1s_rev_mbps",
        "throughput_8s_fwd_mbps",
        "throughput_8s_rev_mbps",
    ] {
        let v = g.medians.get(f).copied().unwrap_or(0.0);
        assert!(v > 0.0, "{f} = {v}\n{log}");
    }
    assert!(g.medians["latency_64_p50_us"] > 0.0, "{log}");
    assert!(g.rounds[0].errors.is_empty(), "{:?}", g.rounds[0].errors);
    // The relays were really in the path: the client addressed gateway A.
    assert_eq!(
        report.config["gateways"][0]
            .as_str()
            .map(|s| s.starts_with("external:")),
        Some(true)
    );
    let _ = std::fs::remove_dir_all(&dir);
}
