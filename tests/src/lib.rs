//! Network-namespace test harness for xdpmesh.
//!
//! Layers, bottom up:
//!
//! - [`process`]: child processes owned by a test ([`ProcHandle`]), each in its own process
//!   group, logged to a file, killed (whole group) on drop.
//! - [`topology`]: the four-namespace topology of `docs/INTERFACES.md`
//!   (client ─ gateway-a ═ gateway-b ─ server), built with `ip -n`, torn down in `Drop`
//!   even when a test panics.
//! - [`gateway`]: what carries traffic between the pods: the kernel (plain routing) or the
//!   xdpmesh control + dataplane processes, located with [`bin`].
//! - [`peers`]: real kernel-TCP peers (Python scripts embedded in this crate, curl, iperf3)
//!   and the deterministic blob stream ([`blob_sha256`]) used to check bytes end to end.
//! - [`report`]: the result table printed by `xdpmesh-demo`.
//!
//! Everything here needs root; tests start with `if !require_root("name") { return; }`,
//! which prints a loud banner when they skip, and fails instead when
//! `XDPMESH_REQUIRE_ROOT=1` (CI) is set.

pub mod gateway;
pub mod memory;
pub mod peers;
pub mod process;
pub mod report;
pub mod topology;

pub use gateway::{bin, stat, GatewayKind};
pub use peers::{
    blob_sha256, held_echo_result, write_blob, EchoResult, IperfResult, Transfer, UploadResult,
    ECHO_PORT, FILESERVER_PORT, IPERF_PORT,
};
pub use process::ProcHandle;
pub use report::{DemoReport, ReportRow};
pub use topology::{unique_prefix, Families, Node, Topology, TopologyOpts};

/// The switch CI sets (`.ci/run`): with `XDPMESH_REQUIRE_ROOT=1` a root-gated test that
/// runs without root fails instead of skipping, so a suite cannot pass by skipping.
pub const REQUIRE_ROOT_ENV: &str = "XDPMESH_REQUIRE_ROOT";

/// What a root-gated test does, decided by [`root_gate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootGate {
    /// Running as root: go on.
    Run,
    /// Not root, switch unset: skip (loudly).
    Skip,
    /// Not root, switch set: fail with this message.
    Fail(String),
}

/// The decision of [`require_root`], without side effects: `is_root` is whether the
/// effective uid is 0, `uid` that uid (for the message), `switch` the value of
/// [`REQUIRE_ROOT_ENV`] if set. Unset, empty or `0` means off (skip); any other value
/// (`1`, or a typo such as `true`) turns the skip into a failure: a misspelt switch must
/// not let CI pass by skipping.
pub fn root_gate(test: &str, is_root: bool, uid: u32, switch: Option<&str>) -> RootGate {
    match switch.map(str::trim) {
        _ if is_root => RootGate::Run,
        None | Some("") | Some("0") => RootGate::Skip,
        Some(v) => RootGate::Fail(format!(
            "{REQUIRE_ROOT_ENV}={v}: {test} needs root but runs as uid {uid}"
        )),
    }
}

/// The one root gate of every root-gated test in the workspace (namespace tests, the XDP
/// verifier tests, the benchmark tests): `if !require_root("name") { return; }`.
///
/// Returns `true` when running as root. Otherwise, with `XDPMESH_REQUIRE_ROOT=1` (CI) it
/// panics with "XDPMESH_REQUIRE_ROOT=1: <test> needs root but runs as uid N"; without
/// the switch it prints a banner to stderr that cannot be missed in test output and
/// returns `false`, so the caller can return early.
pub fn require_root(test: &str) -> bool {
    let uid = nix::unistd::geteuid();
    let switch = std::env::var(REQUIRE_ROOT_ENV).ok();
    match root_gate(test, uid.is_root(), uid.as_raw(), switch.as_deref()) {
        RootGate::Run => true,
        RootGate::Fail(msg) => panic!("{msg}"),
        RootGate::Skip => {
            // Written to the stderr handle, not with eprintln!, which libtest captures
            // and shows only for failing tests: a skip must be visible in every run.
            let banner = format!(
                "\n==== SKIPPED {test}: needs root (run as root / in CI; \
                 {REQUIRE_ROOT_ENV}=1 makes this a failure) ====\n\n"
            );
            let _ = std::io::Write::write_all(&mut std::io::stderr(), banner.as_bytes());
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{root_gate, RootGate};

    #[test]
    fn root_always_runs() {
        for switch in [None, Some("1"), Some("0"), Some("")] {
            assert_eq!(root_gate("t", true, 0, switch), RootGate::Run, "{switch:?}");
        }
    }

    #[test]
    fn not_root_skips_without_the_switch() {
        for switch in [None, Some("0"), Some(""), Some(" 0\n")] {
            assert_eq!(
                root_gate("t", false, 1000, switch),
                RootGate::Skip,
                "{switch:?}"
            );
        }
    }

    #[test]
    fn not_root_fails_with_the_switch() {
        for switch in ["1", " 1\n"] {
            assert_eq!(
                root_gate("test_x", false, 65534, Some(switch)),
                RootGate::Fail(
                    "XDPMESH_REQUIRE_ROOT=1: test_x needs root but runs as uid 65534".into()
                ),
                "{switch:?}"
            );
        }
        // A misspelt "on" fails too, naming the value it saw.
        assert_eq!(
            root_gate("test_x", false, 1000, Some("true")),
            RootGate::Fail(
                "XDPMESH_REQUIRE_ROOT=true: test_x needs root but runs as uid 1000".into()
            )
        );
    }
}
