//! A worker's private lookup index, rebuilt from each table generation (shared memory).
//! Lookups on the fast path are one hash probe by address.

use std::net::IpAddr;

use ahash::AHashMap;
use xdpmesh_shm::{Protocol, Route, Tables, UnknownSource};

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
        Index {
            generation,
            tables,
            by_addr,
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
    use xdpmesh_shm::{Address, Node, Workload};

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
                },
                Workload {
                    name: "s".into(),
                    namespace: "ns".into(),
                    service_account: "s".into(),
                    node: 1,
                    protocol: Protocol::Hbone,
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
}
