//! A worker's private lookup index, rebuilt from each table generation (shared memory).
//! Lookups on the fast path are one hash probe by address.

use std::net::IpAddr;

use crate::access::Party;
use ahash::AHashMap;
use xdpmesh_shm::{PeerAuth, PolicyAction, PolicySource, Protocol, Route, Tables, UnknownSource};

/// What a worker knows about one workload address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddrInfo {
    /// Index into `Tables::workloads`.
    pub workload: u32,
    /// Served by this gateway.
    pub local: bool,
    /// Protocol of the workload.
    pub protocol: Protocol,
    /// How this gateway reaches it.
    pub route: Route,
}

/// The index of one generation.
#[derive(Debug, Default)]
pub struct Index {
    /// Generation it was built from (0 = no tables yet).
    pub generation: u64,
    /// The tables themselves (names for logs).
    pub tables: Tables,
    by_addr: AHashMap<IpAddr, AddrInfo>,
    /// Per workload: indices of the policies that apply to it (DENY ones first).
    policies_of: Vec<Vec<u32>>,
    /// Per workload: its identity in Istio's principal form, `<td>/ns/<ns>/sa/<sa>`.
    principals: Vec<String>,
    /// Per workload: its addresses, in table order.
    addrs_of: Vec<Vec<IpAddr>>,
    /// Service virtual address → index into `Tables::services`.
    vips: AHashMap<IpAddr, u32>,
    /// Per workload: its name, namespace and SPIFFE identity, shared by the access
    /// records and metric labels of its connections.
    parties: Vec<Party>,
}

/// The authenticated identity of a connection's peer, as policies match it.
#[derive(Debug, Clone, Copy)]
pub struct Peer<'a> {
    /// Istio's principal form: `<td>/ns/<ns>/sa/<sa>`.
    pub principal: &'a str,
    /// The identity's namespace.
    pub namespace: &'a str,
}

/// Why a connection was refused by policy (for the access log).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denied(pub String);

impl std::fmt::Display for Denied {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl Index {
    /// Builds the index of a generation.
    pub fn build(generation: u64, tables: Tables) -> Index {
        let mut by_addr = AHashMap::with_capacity(tables.addresses.len());
        for a in &tables.addresses {
            let Some(w) = tables.workloads.get(a.workload as usize) else {
                continue;
            };
            by_addr.insert(
                a.addr,
                AddrInfo {
                    workload: a.workload,
                    local: Some(w.node) == tables.local_node,
                    protocol: w.protocol,
                    route: a.route,
                },
            );
        }
        let mut policies_of = vec![Vec::new(); tables.workloads.len()];
        for (wi, w) in tables.workloads.iter().enumerate() {
            let mut applying: Vec<u32> = (0..tables.policies.len() as u32)
                .filter(|&pi| {
                    let p = &tables.policies[pi as usize];
                    p.namespace == w.namespace && p.workload.as_deref().is_none_or(|n| n == w.name)
                })
                .collect();
            applying.sort_by_key(|&pi| tables.policies[pi as usize].action == PolicyAction::Allow);
            policies_of[wi] = applying;
        }
        let principals = tables
            .workloads
            .iter()
            .map(|w| {
                format!(
                    "{}/ns/{}/sa/{}",
                    tables.trust_domain, w.namespace, w.service_account
                )
            })
            .collect();
        let mut addrs_of = vec![Vec::new(); tables.workloads.len()];
        for a in &tables.addresses {
            if let Some(v) = addrs_of.get_mut(a.workload as usize) {
                v.push(a.addr);
            }
        }
        let mut vips = AHashMap::new();
        for (i, s) in tables.services.iter().enumerate() {
            for &v in &s.vips {
                vips.insert(v, i as u32);
            }
        }
        let parties = tables
            .workloads
            .iter()
            .map(|w| Party {
                workload: Some(w.name.as_str().into()),
                namespace: Some(w.namespace.as_str().into()),
                identity: Some(
                    format!(
                        "spiffe://{}/ns/{}/sa/{}",
                        tables.trust_domain, w.namespace, w.service_account
                    )
                    .into(),
                ),
            })
            .collect();
        Index {
            generation,
            tables,
            by_addr,
            policies_of,
            principals,
            addrs_of,
            vips,
            parties,
        }
    }

    /// The service whose virtual address `ip` is.
    #[inline]
    pub fn service_of(&self, ip: &IpAddr) -> Option<u32> {
        if self.vips.is_empty() {
            return None;
        }
        self.vips.get(ip).copied()
    }

    /// A workload's addresses.
    pub fn workload_addrs(&self, workload: u32) -> &[IpAddr] {
        self.addrs_of
            .get(workload as usize)
            .map_or(&[], Vec::as_slice)
    }

    /// The workload at `ip` as the access log names it, with its identity (the caller
    /// drops the identity where the connection does not establish it); all unknown for
    /// an address no workload claims.
    pub fn party(&self, ip: IpAddr) -> Party {
        self.by_addr
            .get(&ip)
            .and_then(|a| self.parties.get(a.workload as usize))
            .cloned()
            .unwrap_or_default()
    }

    /// The identity of a workload, as policies match it.
    pub fn peer(&self, workload: u32) -> Option<Peer<'_>> {
        let w = self.tables.workloads.get(workload as usize)?;
        Some(Peer {
            principal: self.principals.get(workload as usize)?,
            namespace: &w.namespace,
        })
    }

    /// The peer authentication of a workload (PERMISSIVE for an unknown index).
    pub fn peer_auth(&self, workload: u32) -> PeerAuth {
        self.tables
            .workloads
            .get(workload as usize)
            .map_or(PeerAuth::Permissive, |w| w.peer_auth)
    }

    /// Whether `ip` is an unknown source: inside a pod range, and no workload's.
    pub fn is_unknown_source(&self, ip: IpAddr) -> bool {
        !self.by_addr.contains_key(&ip) && self.tables.pod_cidrs.iter().any(|c| c.contains(ip))
    }

    /// The pod range `ip` lies in, if any.
    pub fn pod_range_of(&self, ip: IpAddr) -> Option<xdpmesh_shm::Cidr> {
        self.tables
            .pod_cidrs
            .iter()
            .find(|c| c.contains(ip))
            .copied()
    }

    /// How long [`UnknownSource::Hold`] holds a SYN, in microseconds.
    pub fn hold_us(&self) -> i64 {
        i64::from(self.tables.unknown_source_hold_ms) * 1000
    }

    /// Authorization, as Istio's L4 policies are evaluated: a connection matched by any
    /// DENY policy is refused; otherwise, if ALLOW policies apply to the destination
    /// workload, one of them must match. `peer` is `None` for plain TCP, which carries
    /// no authenticated identity and so matches only policies without `from`.
    pub fn authorize(
        &self,
        workload: u32,
        port: u16,
        peer: Option<Peer<'_>>,
    ) -> Result<(), Denied> {
        let Some(applying) = self.policies_of.get(workload as usize) else {
            return Ok(());
        };
        let mut allows = Vec::new();
        for &pi in applying {
            let p = &self.tables.policies[pi as usize];
            let port_ok = p.ports.is_empty() || p.ports.contains(&port);
            let from_ok = p.from.is_empty()
                || peer.is_some_and(|peer| {
                    p.from.iter().any(|src| match src {
                        PolicySource::Principal(x) => x == peer.principal,
                        PolicySource::Namespace(ns) => ns == peer.namespace,
                    })
                });
            let matched = port_ok && from_ok;
            match p.action {
                PolicyAction::Deny if matched => {
                    return Err(Denied(format!(
                        "denied by DENY policy {}/{}",
                        p.namespace, p.name
                    )))
                }
                PolicyAction::Deny => {}
                PolicyAction::Allow if matched => return Ok(()),
                PolicyAction::Allow => allows.push(format!("{}/{}", p.namespace, p.name)),
            }
        }
        if allows.is_empty() {
            Ok(())
        } else {
            Err(Denied(format!(
                "no ALLOW policy matches {} (policies: {})",
                match peer {
                    Some(p) => format!("peer {} on port {port}", p.principal),
                    None => format!("a plain-TCP peer (no identity) on port {port}"),
                },
                allows.join(", ")
            )))
        }
    }

    /// Looks an address up.
    #[inline]
    pub fn get(&self, ip: &IpAddr) -> Option<&AddrInfo> {
        self.by_addr.get(ip)
    }

    /// Unknown-source policy.
    pub fn unknown_source(&self) -> UnknownSource {
        self.tables.unknown_source
    }

    /// `namespace/name` of a workload, for logs.
    pub fn workload_name(&self, i: u32) -> String {
        self.tables
            .workloads
            .get(i as usize)
            .map(|w| format!("{}/{}", w.namespace, w.name))
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use xdpmesh_shm::{Address, Node, Policy, Workload};

    #[test]
    fn locality_follows_the_local_node() {
        let t = Tables {
            trust_domain: "cluster.local".into(),
            local_node: Some(1),
            nodes: vec![
                Node {
                    name: "a".into(),
                    gateway: None,
                },
                Node {
                    name: "b".into(),
                    gateway: None,
                },
            ],
            workloads: vec![
                Workload {
                    name: "c".into(),
                    namespace: "ns".into(),
                    service_account: "c".into(),
                    node: 0,
                    protocol: Protocol::Tcp,
                    peer_auth: xdpmesh_shm::PeerAuth::Permissive,
                },
                Workload {
                    name: "s".into(),
                    namespace: "ns".into(),
                    service_account: "s".into(),
                    node: 1,
                    protocol: Protocol::Hbone,
                    peer_auth: xdpmesh_shm::PeerAuth::Permissive,
                },
            ],
            addresses: vec![
                Address {
                    addr: "198.18.1.2".parse().unwrap(),
                    workload: 0,
                    route: Route {
                        ifindex: 3,
                        via: None,
                    },
                },
                Address {
                    addr: "198.18.2.2".parse().unwrap(),
                    workload: 1,
                    route: Route::default(),
                },
            ],
            ..Default::default()
        };
        let ix = Index::build(9, t);
        let c = ix.get(&"198.18.1.2".parse().unwrap()).unwrap();
        assert_eq!(
            (c.local, c.protocol, c.route.ifindex),
            (false, Protocol::Tcp, 3)
        );
        let s = ix.get(&"198.18.2.2".parse().unwrap()).unwrap();
        assert_eq!((s.local, s.protocol), (true, Protocol::Hbone));
        assert!(ix.get(&"198.18.9.9".parse().unwrap()).is_none());
        assert_eq!(ix.workload_name(1), "ns/s");
    }

    fn policy_tables(policies: Vec<Policy>) -> Index {
        let w = |name: &str, ns: &str| Workload {
            name: name.into(),
            namespace: ns.into(),
            service_account: name.into(),
            node: 0,
            protocol: Protocol::Hbone,
            peer_auth: xdpmesh_shm::PeerAuth::Permissive,
        };
        Index::build(
            1,
            Tables {
                trust_domain: "td".into(),
                nodes: vec![Node {
                    name: "n".into(),
                    gateway: None,
                }],
                workloads: vec![w("s", "ns"), w("t", "ns"), w("u", "other")],
                policies,
                ..Default::default()
            },
        )
    }

    fn pol(
        name: &str,
        workload: Option<&str>,
        action: PolicyAction,
        from: Vec<PolicySource>,
        ports: Vec<u16>,
    ) -> Policy {
        Policy {
            name: name.into(),
            namespace: "ns".into(),
            workload: workload.map(Into::into),
            action,
            from,
            ports,
        }
    }

    const A: Peer<'static> = Peer {
        principal: "td/ns/ns/sa/a",
        namespace: "ns",
    };
    const B: Peer<'static> = Peer {
        principal: "td/ns/x/sa/b",
        namespace: "x",
    };

    #[test]
    fn no_policy_allows_everything() {
        let ix = policy_tables(vec![]);
        assert_eq!(ix.authorize(0, 80, Some(A)), Ok(()));
        assert_eq!(ix.authorize(0, 80, None), Ok(()));
    }

    #[test]
    fn allow_policies_make_an_allow_list_per_workload() {
        let ix = policy_tables(vec![pol(
            "only-a",
            Some("s"),
            PolicyAction::Allow,
            vec![PolicySource::Principal("td/ns/ns/sa/a".into())],
            vec![80],
        )]);
        assert_eq!(ix.authorize(0, 80, Some(A)), Ok(()));
        assert_eq!(
            ix.authorize(0, 81, Some(A)),
            Err(Denied(
                "no ALLOW policy matches peer td/ns/ns/sa/a on port 81 (policies: ns/only-a)"
                    .into()
            ))
        );
        assert_eq!(
            ix.authorize(0, 80, Some(B)),
            Err(Denied(
                "no ALLOW policy matches peer td/ns/x/sa/b on port 80 (policies: ns/only-a)".into()
            ))
        );
        assert_eq!(
            ix.authorize(0, 80, None),
            Err(Denied("no ALLOW policy matches a plain-TCP peer (no identity) on port 80 (policies: ns/only-a)".into()))
        );
        // Other workloads, even of the same namespace, are not covered by it.
        assert_eq!(ix.authorize(1, 81, Some(B)), Ok(()));
        assert_eq!(ix.authorize(2, 81, None), Ok(()));
    }

    #[test]
    fn deny_wins_over_allow_and_namespace_sources_match() {
        let ix = policy_tables(vec![
            pol("allow-all", None, PolicyAction::Allow, vec![], vec![]),
            pol(
                "no-x",
                None,
                PolicyAction::Deny,
                vec![PolicySource::Namespace("x".into())],
                vec![22],
            ),
        ]);
        assert_eq!(ix.authorize(1, 22, Some(A)), Ok(()));
        assert_eq!(ix.authorize(1, 23, Some(B)), Ok(()));
        assert_eq!(
            ix.authorize(1, 22, Some(B)),
            Err(Denied("denied by DENY policy ns/no-x".into()))
        );
        // A plain-TCP peer has no namespace: the DENY with `from` cannot match it.
        assert_eq!(ix.authorize(0, 22, None), Ok(()));
    }
}
