//! `xdpmesh-bench compare`, run as a process on result files built here.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use xdpmesh_benches::report::{BenchReport, GatewayReport, Mtus, RoundReport, SCHEMA};

fn gateway(name: &str, figures: &[(&str, f64)]) -> GatewayReport {
    GatewayReport {
        name: name.into(),
        status: "ok".into(),
        rounds: vec![RoundReport {
            round: 0,
            status: "ok".into(),
            figures: figures.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            ..Default::default()
        }],
        medians: BTreeMap::new(),
        ratios: BTreeMap::new(),
        not_applicable: BTreeMap::new(),
    }
}

/// kernel and xdpmesh-tcp; `tput` is xdpmesh's single-stream throughput, `kernel_tput`
/// the kernel's: their ratio is what compare looks at.
fn report(kernel_tput: f64, tput: f64, p50: f64, mem: f64) -> BenchReport {
    let mut r = BenchReport {
        schema: SCHEMA.into(),
        started_unix: 0,
        finished_unix: 0,
        machine: Default::default(),
        git_commit: "test".into(),
        versions: BTreeMap::new(),
        config: serde_json::Value::Null,
        mtu: Default::default(),
        gateways: vec![
            gateway(
                "kernel",
                &[
                    ("throughput_1s_fwd_mbps", kernel_tput),
                    ("latency_64_p50_us", 20.0),
                    ("connrate_per_s", 5000.0),
                ],
            ),
            gateway(
                "xdpmesh-tcp",
                &[
                    ("throughput_1s_fwd_mbps", tput),
                    ("latency_64_p50_us", p50),
                    ("latency_64_max_us", 9000.0),
                    ("connrate_per_s", 4000.0),
                    ("concurrency_10000_bytes_per_conn", mem),
                ],
            ),
        ],
        targets: Vec::new(),
    };
    r.finish();
    r
}

fn write(dir: &Path, name: &str, r: &BenchReport) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, serde_json::to_string_pretty(r).unwrap()).unwrap();
    p
}

fn compare(base: &Path, new: &Path, extra: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_xdpmesh-bench"))
        .arg("compare")
        .arg(base)
        .arg(new)
        .args(extra)
        .output()
        .expect("xdpmesh-bench runs");
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn tmp(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("xdpmesh-compare-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn throughput_ratio_20_percent_lower_is_a_regression() {
    let dir = tmp("tput");
    let base = write(&dir, "base.json", &report(10_000.0, 5_000.0, 50.0, 9000.0));
    // The kernel got faster too, but xdpmesh's ratio fell from 0.5 to 0.4 (-20%).
    let new = write(&dir, "new.json", &report(12_000.0, 4_800.0, 50.0, 9000.0));
    let (code, out) = compare(&base, &new, &[]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("REGRESSION: xdpmesh-tcp throughput_1s_fwd_mbps"),
        "{out}"
    );
    assert!(out.contains("-20.0%"), "{out}");
    assert_eq!(out.matches("REGRESSION").count(), 1, "{out}");

    // Same file: no regression.
    let (code, out) = compare(&base, &base, &[]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("compare: OK"), "{out}");

    // A looser threshold lets -20% pass.
    let (code, out) = compare(&base, &new, &["--threshold", "0.25"]);
    assert_eq!(code, 0, "{out}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn absolute_throughput_drop_with_the_same_ratio_passes() {
    let dir = tmp("abs");
    let base = write(&dir, "base.json", &report(10_000.0, 5_000.0, 50.0, 9000.0));
    // A slower machine: everything halves, ratios stay.
    let new = write(&dir, "new.json", &report(5_000.0, 2_500.0, 50.0, 9000.0));
    let (code, out) = compare(&base, &new, &[]);
    assert_eq!(code, 0, "{out}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn latency_and_memory_regressions_are_named() {
    let dir = tmp("lat");
    let base = write(&dir, "base.json", &report(10_000.0, 5_000.0, 50.0, 9000.0));
    let new = write(&dir, "new.json", &report(10_000.0, 5_000.0, 60.0, 12_000.0));
    let (code, out) = compare(&base, &new, &[]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("xdpmesh-tcp latency_64_p50_us"), "{out}");
    assert!(
        out.contains("xdpmesh-tcp concurrency_10000_bytes_per_conn"),
        "{out}"
    );
    assert!(
        !out.contains("latency_64_max_us"),
        "max is informational: {out}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn unreadable_input_is_an_error_not_a_pass() {
    let dir = tmp("bad");
    let bad = dir.join("bad.json");
    std::fs::write(&bad, "{not json").unwrap();
    let (code, out) = compare(&bad, &bad, &[]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("parsing"), "{out}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn results_taken_at_different_mtus_are_not_compared() {
    let dir = tmp("mtu");
    let r = report(10_000.0, 5_000.0, 50.0, 9000.0);
    let base = write(&dir, "base.json", &r);
    let mut jumbo = r.clone();
    jumbo.mtu = Mtus {
        pod: 9000,
        uplink: 9000,
    };
    let new = write(&dir, "new.json", &jumbo);
    let (code, out) = compare(&base, &new, &[]);
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("cannot compare results taken at different MTUs"),
        "{out}"
    );
    assert!(out.contains("pod MTU 9000, uplink MTU 9000"), "{out}");
    assert!(!out.contains("compare: OK"), "{out}");
    // Two results at the same (non-default) MTUs compare as usual.
    let (code, out) = compare(&new, &new, &[]);
    assert_eq!(code, 0, "{out}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_stored_baseline_compares_with_a_1500_result() {
    // benches/baseline.json predates the `mtu` field: it reads as 1500 both, which is
    // what the harness used then.
    let baseline = Path::new(env!("CARGO_MANIFEST_DIR")).join("baseline.json");
    let (code, out) = compare(&baseline, &baseline, &[]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("compare: OK"), "{out}");
    let dir = tmp("basemtu");
    let mut b: BenchReport =
        serde_json::from_str(&std::fs::read_to_string(&baseline).unwrap()).unwrap();
    b.mtu.uplink = 9000;
    let new = write(&dir, "new.json", &b);
    let (code, out) = compare(&baseline, &new, &[]);
    assert_eq!(code, 2, "{out}");
    let _ = std::fs::remove_dir_all(&dir);
}
