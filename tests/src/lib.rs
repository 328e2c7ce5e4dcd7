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
//! which prints a loud banner when they skip.

pub mod gateway;
pub mod peers;
pub mod process;
pub mod report;
pub mod topology;

pub use gateway::{bin, stat, GatewayKind};
pub use peers::{
    blob_sha256, write_blob, EchoResult, IperfResult, Transfer, UploadResult, ECHO_PORT,
    FILESERVER_PORT, IPERF_PORT,
};
pub use process::ProcHandle;
pub use report::{DemoReport, ReportRow};
pub use topology::{unique_prefix, Node, Topology, TopologyOpts};

/// Returns `true` when running as root. Otherwise prints a banner to stderr that cannot
/// be missed in test output and returns `false`, so the caller can return early.
pub fn require_root(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    // Written to the stderr handle, not with eprintln!, which libtest captures and shows
    // only for failing tests: a skip must be visible in every run.
    let banner = format!("\n==== SKIPPED {test}: needs root (run as root / in CI) ====\n\n");
    let _ = std::io::Write::write_all(&mut std::io::stderr(), banner.as_bytes());
    false
}
