//! The `external:FILE` gateway type: any other proxy, described by a TOML file that
//! says how to start it in each gateway namespace. See `benches/README.md` and
//! `benches/external/socat-relay.toml` for the format; in short:
//!
//! ```toml
//! name = "socat-relay"
//! # Where the client connects instead of the server (a relay must be addressed).
//! target_addr = "198.18.1.1"
//! [gateway_a]
//! start = "shell command, runs until killed"  # sh -c, in gateway A's namespace
//! stop = "optional shell command"             # run before the start command is killed
//! ready = "optional probe"                    # retried until it exits 0
//! ready_timeout_s = 10
//! [gateway_b]
//! start = "..."
//! [targets.iperf]                             # per-service overrides
//! target_port = 5201
//! [unsupported]
//! concurrency = "why this proxy cannot run it"
//! [env]
//! EXTRA = "value"
//! ```
//!
//! The commands get the topology's addresses as environment variables ([`env_for`]).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Deserialize;

use xdpmesh_netns::topology::{
    CLIENT_ADDR, GWA_POD_ADDR, GWA_UP_ADDR, GWB_POD_ADDR, GWB_UP_ADDR, SERVER_ADDR,
};
use xdpmesh_netns::Node;

use crate::loadgen::{CONNRATE_PORT, ECHO_PORT, HOLD_PORT, IPERF_PORT};

/// The services the client connects to, each on its own port. Scenarios use them as:
/// throughput and cpu → `iperf`; latency → `echo`; connrate → `connrate`;
/// concurrency → `hold` (plus `iperf` for its side stream).
pub const SERVICES: [(&str, u16); 4] = [
    ("iperf", IPERF_PORT),
    ("echo", ECHO_PORT),
    ("connrate", CONNRATE_PORT),
    ("hold", HOLD_PORT),
];

/// Scenario names an `[unsupported]` table may name.
pub const SCENARIOS: [&str; 5] = ["throughput", "latency", "connrate", "concurrency", "cpu"];

/// How to run the proxy on one gateway.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSpec {
    /// Long-running shell command (`sh -c`); its process group is killed at the end.
    pub start: Option<String>,
    /// Shell command run (with a 10 s limit) before the start command is killed.
    pub stop: Option<String>,
    /// Readiness probe: a shell command retried every 100 ms until it exits 0.
    pub ready: Option<String>,
    /// How long the probe may keep failing (default 10 s).
    pub ready_timeout_s: Option<f64>,
}

/// Where the client connects for one service.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetSpec {
    pub target_addr: Option<Ipv4Addr>,
    pub target_port: Option<u16>,
}

/// An `external` gateway description.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExternalSpec {
    /// Name in reports (`external:<name>`); default: the file stem.
    pub name: Option<String>,
    pub description: Option<String>,
    /// Default address the client connects to (default: the server, 198.18.2.2).
    pub target_addr: Option<Ipv4Addr>,
    #[serde(default)]
    pub gateway_a: NodeSpec,
    #[serde(default)]
    pub gateway_b: NodeSpec,
    /// Per-service overrides (`iperf`, `echo`, `connrate`, `hold`).
    #[serde(default)]
    pub targets: BTreeMap<String, TargetSpec>,
    /// Scenario → reason it is not run for this proxy (reported as N/A).
    #[serde(default)]
    pub unsupported: BTreeMap<String, String>,
    /// Extra environment for every command.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

impl ExternalSpec {
    /// Reads and validates a file.
    pub fn load(path: &Path) -> anyhow::Result<ExternalSpec> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading external gateway file {}", path.display()))?;
        let mut spec: ExternalSpec =
            toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        for k in spec.targets.keys() {
            anyhow::ensure!(
                SERVICES.iter().any(|(s, _)| s == k),
                "{}: [targets.{k}]: unknown service (one of iperf, echo, connrate, hold)",
                path.display()
            );
        }
        for k in spec.unsupported.keys() {
            anyhow::ensure!(
                SCENARIOS.contains(&k.as_str()),
                "{}: [unsupported] {k}: unknown scenario (one of {})",
                path.display(),
                SCENARIOS.join(", ")
            );
        }
        if spec.name.is_none() {
            spec.name = path.file_stem().map(|s| s.to_string_lossy().into_owned());
        }
        Ok(spec)
    }

    /// The node's spec.
    pub fn node(&self, node: Node) -> &NodeSpec {
        if node == Node::GatewayB {
            &self.gateway_b
        } else {
            &self.gateway_a
        }
    }

    /// Address and port the client uses for `service` (default port: the service's).
    pub fn target(&self, service: &str, default_port: u16) -> (Ipv4Addr, u16) {
        let o = self.targets.get(service);
        (
            o.and_then(|t| t.target_addr)
                .or(self.target_addr)
                .unwrap_or(SERVER_ADDR),
            o.and_then(|t| t.target_port).unwrap_or(default_port),
        )
    }
}

/// Environment of the commands run for `node` (`XDPMESH_NODE=a|b`, the addresses, the
/// service ports, the namespace and the scratch directory), plus the spec's `[env]`.
pub fn env_for(spec: &ExternalSpec, node: Node, ns: &str, tmp: &Path) -> Vec<(String, String)> {
    let (me, pod, up, peer_up, peer_pod) = if node == Node::GatewayB {
        ("b", GWB_POD_ADDR, GWB_UP_ADDR, GWA_UP_ADDR, GWA_POD_ADDR)
    } else {
        ("a", GWA_POD_ADDR, GWA_UP_ADDR, GWB_UP_ADDR, GWB_POD_ADDR)
    };
    let mut env: Vec<(String, String)> = vec![
        ("XDPMESH_NODE".into(), me.into()),
        ("XDPMESH_NS".into(), ns.into()),
        ("XDPMESH_TMP".into(), tmp.to_string_lossy().into_owned()),
        ("XDPMESH_CLIENT_ADDR".into(), CLIENT_ADDR.to_string()),
        ("XDPMESH_SERVER_ADDR".into(), SERVER_ADDR.to_string()),
        ("XDPMESH_GW_POD_ADDR".into(), pod.to_string()),
        ("XDPMESH_GW_UPLINK_ADDR".into(), up.to_string()),
        ("XDPMESH_PEER_GW_ADDR".into(), peer_up.to_string()),
        ("XDPMESH_PEER_GW_POD_ADDR".into(), peer_pod.to_string()),
        (
            "XDPMESH_PORTS".into(),
            SERVICES
                .iter()
                .map(|(_, p)| p.to_string())
                .collect::<Vec<_>>()
                .join(" "),
        ),
    ];
    for (s, p) in SERVICES {
        env.push((format!("XDPMESH_{}_PORT", s.to_uppercase()), p.to_string()));
    }
    env.extend(spec.env.iter().map(|(k, v)| (k.clone(), v.clone())));
    env
}

/// `env K=V... sh -c CMD` as an argv.
pub fn shell_argv(env: &[(String, String)], cmd: &str) -> Vec<String> {
    let mut argv = vec!["env".to_string()];
    argv.extend(env.iter().map(|(k, v)| format!("{k}={v}")));
    argv.extend(["sh".into(), "-c".into(), cmd.into()]);
    argv
}

/// Resolves `external:FILE`: the spec and its absolute path.
pub fn parse_gateway_arg(arg: &str) -> Option<PathBuf> {
    arg.strip_prefix("external:").map(PathBuf::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_file_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("external/socat-relay.toml");
        let spec = ExternalSpec::load(&path).unwrap();
        assert_eq!(spec.name.as_deref(), Some("socat-relay"));
        assert!(spec.gateway_a.start.is_some() && spec.gateway_b.start.is_some());
        assert_eq!(spec.target("echo", ECHO_PORT), (GWA_POD_ADDR, ECHO_PORT));
        assert!(spec.unsupported.contains_key("concurrency"));
        let env = env_for(&spec, Node::GatewayB, "ns", Path::new("/tmp"));
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("XDPMESH_NODE"), Some("b"));
        assert_eq!(get("XDPMESH_PEER_GW_ADDR"), Some("198.18.0.1"));
        assert_eq!(get("XDPMESH_ECHO_PORT"), Some("7000"));
    }

    #[test]
    fn rejects_unknown_keys() {
        let e = toml::from_str::<ExternalSpec>("bogus = 1").unwrap_err();
        assert!(e.to_string().contains("bogus"), "{e}");
        let dir = std::env::temp_dir().join(format!("xdpmesh-ext-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("x.toml");
        std::fs::write(&f, "[targets.nope]\ntarget_port = 1\n").unwrap();
        let e = ExternalSpec::load(&f).unwrap_err();
        assert!(format!("{e:#}").contains("unknown service"), "{e:#}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
