//! From a validated [`MeshConfig`] to one table generation for a gateway, and to the
//! set of addresses its XDP program diverts.
//!
//! Routes come from the kernel of the gateway's network namespace (`ip -json route
//! get`), resolved once per publication on the control side, so workers never make a
//! routing decision against the kernel on the fast path.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::process::Command;

use serde_json::Value;
use xdpmesh_shm::{
    Address, Cidr, Node, PeerAuth, Policy, PolicyAction, PolicySource, Protocol, Route, Service,
    Tables, UnknownSource, Workload,
};
use xdpmesh_xdp::abi::{CIDR_DIVERT_UNKNOWN, WL_LOCAL, WL_MESH};

use crate::config::{self, MeshConfig};

/// Errors building tables.
#[derive(Debug, thiserror::Error)]
pub enum TablesError {
    /// The gateway's node is not in the config.
    #[error("node {node:?} is not in the config's nodes (known: {known}): check --node")]
    UnknownNode {
        /// Asked node.
        node: String,
        /// Known nodes.
        known: String,
    },
}

/// Resolves the route the kernel would use for an address.
pub trait RouteLookup {
    /// Route to `addr`; `None` when the kernel has none.
    fn route(&mut self, addr: IpAddr) -> Option<Route>;
}

/// Asks the kernel of the current network namespace through `ip -json`.
#[derive(Debug, Default)]
pub struct KernelRoutes {
    ifindex: HashMap<String, u32>,
}

impl KernelRoutes {
    fn ifindex(&mut self, dev: &str) -> Option<u32> {
        if let Some(i) = self.ifindex.get(dev) {
            return Some(*i);
        }
        let out = Command::new("ip")
            .args(["-json", "link", "show", "dev", dev])
            .output()
            .ok()?;
        let v: Value = serde_json::from_slice(&out.stdout).ok()?;
        let i = v.get(0)?.get("ifindex")?.as_u64()? as u32;
        self.ifindex.insert(dev.to_owned(), i);
        Some(i)
    }
}

impl RouteLookup for KernelRoutes {
    fn route(&mut self, addr: IpAddr) -> Option<Route> {
        let out = Command::new("ip")
            .args(["-json", "route", "get", &addr.to_string()])
            .output()
            .ok()?;
        if !out.status.success() {
            return None;
        }
        let v: Value = serde_json::from_slice(&out.stdout).ok()?;
        let r = v.get(0)?;
        let dev = r.get("dev")?.as_str()?.to_owned();
        let via = r
            .get("gateway")
            .and_then(Value::as_str)
            .and_then(|g| g.parse().ok());
        Some(Route {
            ifindex: self.ifindex(&dev)?,
            via,
        })
    }
}

/// Builds the tables for the gateway of `node`.
pub fn build(
    cfg: &MeshConfig,
    node: &str,
    routes: &mut dyn RouteLookup,
) -> Result<Tables, TablesError> {
    let local_node = cfg
        .nodes
        .iter()
        .position(|n| n.name == node)
        .ok_or_else(|| TablesError::UnknownNode {
            node: node.to_owned(),
            known: cfg
                .nodes
                .iter()
                .map(|n| n.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        })?;
    let node_index: HashMap<&str, u32> = cfg
        .nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (n.name.as_str(), i as u32))
        .collect();
    let mut t = Tables {
        trust_domain: cfg.trust_domain.as_str().to_owned(),
        cluster_name: cfg.cluster_name.clone(),
        local_node: Some(local_node as u32),
        unknown_source: match cfg.unknown_source {
            config::UnknownSource::Pass => UnknownSource::Pass,
            config::UnknownSource::Reject => UnknownSource::Reject,
            config::UnknownSource::Hold => UnknownSource::Hold,
        },
        unknown_source_hold_ms: cfg.unknown_source_hold_ms,
        pod_cidrs: cfg
            .pod_cidrs
            .iter()
            .map(|c| Cidr {
                addr: c.addr,
                prefix: c.prefix,
            })
            .collect(),
        nodes: cfg
            .nodes
            .iter()
            .map(|n| Node {
                name: n.name.clone(),
                gateway: n.gateway_addresses.first().copied(),
            })
            .collect(),
        ..Default::default()
    };
    for w in &cfg.workloads {
        let wi = t.workloads.len() as u32;
        t.workloads.push(Workload {
            name: w.name.clone(),
            namespace: w.namespace.clone(),
            service_account: w.service_account.clone(),
            // Validated by the config model: every workload's node exists.
            node: node_index.get(w.node.as_str()).copied().unwrap_or(0),
            protocol: match w.protocol {
                config::Protocol::Tcp => Protocol::Tcp,
                config::Protocol::Hbone => Protocol::Hbone,
            },
            peer_auth: match w.peer_authentication {
                config::PeerAuthentication::Permissive => PeerAuth::Permissive,
                config::PeerAuthentication::Strict => PeerAuth::Strict,
            },
        });
        for &addr in &w.addresses {
            t.addresses.push(Address {
                addr,
                workload: wi,
                route: routes.route(addr).unwrap_or_default(),
            });
        }
    }
    t.policies = cfg
        .policies
        .iter()
        .map(|p| Policy {
            name: p.name.clone(),
            namespace: p.namespace.clone(),
            workload: p.workload.clone(),
            action: match p.action {
                config::PolicyAction::Allow => PolicyAction::Allow,
                config::PolicyAction::Deny => PolicyAction::Deny,
            },
            from: p
                .from
                .iter()
                .map(|src| match src {
                    config::PolicySource::Principal(x) => PolicySource::Principal(x.clone()),
                    config::PolicySource::Namespace(x) => PolicySource::Namespace(x.clone()),
                })
                .collect(),
            ports: p.ports.clone(),
        })
        .collect();
    // Workload indices are the same in the config and the tables (one record each, in
    // file order).
    t.services = cfg
        .services
        .iter()
        .map(|s| Service {
            name: s.name.clone(),
            namespace: s.namespace.clone(),
            hostname: s.hostname.clone(),
            vips: s.addresses.clone(),
            ports: s.ports.iter().map(|p| (p.port, p.target_port)).collect(),
            endpoints: s.endpoints.iter().map(|&i| i as u32).collect(),
        })
        .collect();
    Ok(t)
}

/// The XDP divert set: every workload address with [`WL_LOCAL`] or [`WL_MESH`], and
/// every service's virtual address with [`WL_MESH`] (a local workload's connection to
/// it is diverted; the dataplane picks the endpoint).
pub fn divert_set(t: &Tables) -> BTreeMap<IpAddr, u32> {
    let mut set: BTreeMap<IpAddr, u32> = t
        .addresses
        .iter()
        .map(|a| {
            let local = t
                .workloads
                .get(a.workload as usize)
                .is_some_and(|w| Some(w.node) == t.local_node);
            (a.addr, if local { WL_LOCAL } else { WL_MESH })
        })
        .collect();
    for s in &t.services {
        for &vip in &s.vips {
            set.insert(vip, WL_MESH);
        }
    }
    set
}

/// The XDP program's pod ranges: (network, prefix) -> [`CIDR_DIVERT_UNKNOWN`] when
/// unknown sources' SYNs go to the dataplane (`reject`, `hold`), else 0 (`pass`).
pub fn pod_cidr_set(t: &Tables) -> BTreeMap<(IpAddr, u8), u32> {
    let flags = match t.unknown_source {
        UnknownSource::Pass => 0,
        UnknownSource::Reject | UnknownSource::Hold => CIDR_DIVERT_UNKNOWN,
    };
    t.pod_cidrs
        .iter()
        .map(|c| ((c.addr, c.prefix), flags))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed;
    impl RouteLookup for Fixed {
        fn route(&mut self, addr: IpAddr) -> Option<Route> {
            match addr.to_string().as_str() {
                "198.18.1.2" => Some(Route {
                    ifindex: 2,
                    via: None,
                }),
                "198.18.2.2" => Some(Route {
                    ifindex: 3,
                    via: Some("198.18.0.2".parse().unwrap()),
                }),
                _ => None,
            }
        }
    }

    #[test]
    fn demo_config_on_node_a() {
        let cfg = MeshConfig::embedded_default();
        let t = build(&cfg, "node-a", &mut Fixed).unwrap();
        assert_eq!(t.trust_domain, "cluster.local");
        assert_eq!(t.cluster_name, "Kubernetes");
        assert_eq!(t.local_node, Some(0));
        assert_eq!(t.nodes[1].gateway, Some("198.18.0.2".parse().unwrap()));
        assert_eq!(t.workloads.len(), 2);
        assert_eq!(
            (t.workloads[1].name.as_str(), t.workloads[1].node),
            ("server", 1)
        );
        assert_eq!(
            t.addresses[1].route,
            Route {
                ifindex: 3,
                via: Some("198.18.0.2".parse().unwrap())
            }
        );
        let d = divert_set(&t);
        assert_eq!(d.get(&"198.18.1.2".parse().unwrap()), Some(&WL_LOCAL));
        assert_eq!(d.get(&"198.18.2.2".parse().unwrap()), Some(&WL_MESH));
        assert_eq!(d.len(), 2);
        assert!(pod_cidr_set(&t).is_empty());
    }

    #[test]
    fn pod_ranges_carry_the_unknown_source_policy() {
        let text = MeshConfig::embedded_default();
        for (mode, flags) in [
            (config::UnknownSource::Pass, 0),
            (config::UnknownSource::Reject, CIDR_DIVERT_UNKNOWN),
            (config::UnknownSource::Hold, CIDR_DIVERT_UNKNOWN),
        ] {
            let mut cfg = text.clone();
            cfg.unknown_source = mode;
            cfg.pod_cidrs = vec![
                "198.18.1.0/24".parse().unwrap(),
                "fd00::/64".parse().unwrap(),
            ];
            let t = build(&cfg, "node-a", &mut Fixed).unwrap();
            assert_eq!(
                pod_cidr_set(&t),
                BTreeMap::from([
                    (("198.18.1.0".parse().unwrap(), 24), flags),
                    (("fd00::".parse().unwrap(), 64), flags),
                ]),
                "{mode:?}"
            );
        }
    }

    #[test]
    fn unknown_node_says_which_exist() {
        let cfg = MeshConfig::embedded_default();
        let e = build(&cfg, "node-z", &mut Fixed).unwrap_err();
        assert_eq!(
            e.to_string(),
            "node \"node-z\" is not in the config's nodes (known: node-a, node-b): check --node"
        );
    }
}
