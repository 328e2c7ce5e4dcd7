//! The independent HBONE peers (`tests/peers/hbone_server.py`, `hbone_client.py`) that
//! `hbone_interop.rs` measures xdpmesh against, checked against each other by
//! `tests/peers/hbone_selftest.sh`: the interop tests only show that the peers and
//! xdpmesh agree, not that the peers themselves refuse what they must (a client
//! certificate from another CA or trust domain, a wrong server SAN, a wrong authority,
//! 401/503 answers) or log exactly what they received. A peer that silently accepts
//! anything would make the interop tests pass for the wrong reason.
//!
//! Runs on 127.0.0.1 of the test's own network namespace; needs openssl and python h2
//! from `scripts/setup.sh`, so it is gated like the rest of this crate's suite.

use std::net::TcpListener;
use std::path::Path;
use std::process::Command;

use xdpmesh_netns::require_root;

/// `PASS:` lines the script prints when every check holds; a check that stops running
/// (a section skipped, an early exit) changes the count.
const SELFTEST_CHECKS: usize = 33;

#[test]
fn test_hbone_peers_selftest() {
    if !require_root("test_hbone_peers_selftest") {
        return;
    }
    // A port free now (the script's default, 15008, may be taken on the host).
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("peers/hbone_selftest.sh");
    let out = Command::new("timeout")
        .args(["--kill-after=5", "180", "bash"])
        .arg(&script)
        .env("HBONE_SELFTEST_PORT", port.to_string())
        .output()
        .expect("running hbone_selftest.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let all = format!(
        "{stdout}\n--- stderr ---\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let failed: Vec<&str> = stdout.lines().filter(|l| l.starts_with("FAIL:")).collect();
    assert!(failed.is_empty(), "failed checks {failed:#?}:\n{all}");
    assert!(
        out.status.success(),
        "hbone_selftest.sh: {}:\n{all}",
        out.status
    );
    assert_eq!(
        stdout.lines().filter(|l| l.starts_with("PASS:")).count(),
        SELFTEST_CHECKS,
        "{all}"
    );
    assert_eq!(
        stdout.lines().last(),
        Some("selftest: all checks passed"),
        "{all}"
    );
}
