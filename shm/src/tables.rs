//! The validated, owned form of one table generation, and its encoding into an area.
//!
//! Encoding and decoding are plain safe byte work: an area is copied out of the mapping
//! first (see `crate::map`), so a decoder never looks at memory another process may write.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use zerocopy::{FromBytes, IntoBytes};

use crate::abi::{
    self, AddressRecord, CidrRecord, EndpointRecord, NodeRecord, PolicyPortRecord, PolicyRecord,
    PolicySourceRecord, ServicePortRecord, ServiceRecord, StrRef, TableHeader, VipRecord,
    WorkloadRecord,
};
use crate::ShmError;

/// What happens to traffic from a pod address the tables do not know.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UnknownSource {
    /// Hand it to the kernel untouched (counted).
    #[default]
    Pass,
    /// Refuse it (counted, connection reset).
    Reject,
    /// Hold its SYN for [`Tables::unknown_source_hold_ms`]: accepted if a new
    /// generation gives the address a workload meanwhile, refused (reset) otherwise.
    Hold,
}

/// Which peers a workload accepts, as Istio's `PeerAuthentication`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PeerAuth {
    /// HBONE, and plaintext from sources without an identity (then subject to the
    /// workload's policies as such).
    #[default]
    Permissive,
    /// HBONE (mutual TLS) only: plaintext is refused.
    Strict,
}

/// An address range: `addr/prefix`, host bits zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    /// The network address.
    pub addr: IpAddr,
    /// Prefix length (at most 32 for IPv4, 128 for IPv6).
    pub prefix: u8,
}

impl Cidr {
    /// Whether `ip` lies in the range (an IPv4 range holds no IPv6 address).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let bits = u32::from(self.prefix.min(32));
                let mask = u32::MAX.checked_shl(32 - bits).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let bits = u32::from(self.prefix.min(128));
                let mask = u128::MAX.checked_shl(128 - bits).unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// Workload protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// Plain TCP between the gateways.
    Tcp,
    /// HBONE (mTLS HTTP/2 CONNECT to port 15008).
    Hbone,
}

/// A node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// Name.
    pub name: String,
    /// First gateway address.
    pub gateway: Option<IpAddr>,
}

/// A workload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workload {
    /// Name.
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// Service account.
    pub service_account: String,
    /// Index into [`Tables::nodes`].
    pub node: u32,
    /// Protocol.
    pub protocol: Protocol,
    /// Which peers it accepts.
    pub peer_auth: PeerAuth,
}

/// How the gateway reaches an address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Route {
    /// Interface index, 0 when unknown.
    pub ifindex: u32,
    /// Next hop, `None` when on-link.
    pub via: Option<IpAddr>,
}

/// One workload address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Address {
    /// The address.
    pub addr: IpAddr,
    /// Index into [`Tables::workloads`].
    pub workload: u32,
    /// Route from this gateway.
    pub route: Route,
}

/// What an authorization policy does with the connections it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyAction {
    /// Allow them; a workload with at least one ALLOW policy refuses what none matches.
    Allow,
    /// Refuse them (DENY policies are evaluated first).
    Deny,
}

/// A source a policy matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicySource {
    /// The peer's SPIFFE identity without `spiffe://`: `<td>/ns/<ns>/sa/<sa>`.
    Principal(String),
    /// The namespace of the peer's identity.
    Namespace(String),
}

/// An authorization policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Name, for logs.
    pub name: String,
    /// Namespace whose workloads it applies to.
    pub namespace: String,
    /// Only this workload of the namespace; `None` = all of them.
    pub workload: Option<String>,
    /// Action.
    pub action: PolicyAction,
    /// Sources it matches (any of them); empty = any source, even one without identity.
    pub from: Vec<PolicySource>,
    /// Destination ports it matches; empty = any.
    pub ports: Vec<u16>,
}

/// A service: virtual addresses whose ports map to a target port on an endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    /// Name, for logs.
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// DNS name (`forwarded: host=` of HBONE requests).
    pub hostname: String,
    /// Virtual addresses.
    pub vips: Vec<IpAddr>,
    /// (port, target port) pairs.
    pub ports: Vec<(u16, u16)>,
    /// Indices into [`Tables::workloads`]; empty: connections are refused.
    pub endpoints: Vec<u32>,
}

/// One generation of tables.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Tables {
    /// SPIFFE trust domain.
    pub trust_domain: String,
    /// The cluster's name (`k8s.cluster.name` in HBONE `baggage`).
    pub cluster_name: String,
    /// Index of the node this gateway serves.
    pub local_node: Option<u32>,
    /// Unknown-source policy.
    pub unknown_source: UnknownSource,
    /// How long [`UnknownSource::Hold`] holds a SYN, in milliseconds.
    pub unknown_source_hold_ms: u32,
    /// The pod ranges: a source inside one that no workload claims is unknown.
    pub pod_cidrs: Vec<Cidr>,
    /// Nodes.
    pub nodes: Vec<Node>,
    /// Workloads.
    pub workloads: Vec<Workload>,
    /// Addresses.
    pub addresses: Vec<Address>,
    /// Authorization policies.
    pub policies: Vec<Policy>,
    /// Services.
    pub services: Vec<Service>,
}

fn ip_to_bytes(ip: IpAddr) -> (u8, [u8; 16]) {
    let mut b = [0u8; 16];
    match ip {
        IpAddr::V4(v4) => {
            b[..4].copy_from_slice(&v4.octets());
            (abi::FAMILY_V4, b)
        }
        IpAddr::V6(v6) => (abi::FAMILY_V6, v6.octets()),
    }
}

fn ip_from_bytes(family: u8, b: [u8; 16], what: &'static str) -> Result<Option<IpAddr>, ShmError> {
    match family {
        0 => Ok(None),
        abi::FAMILY_V4 => Ok(Some(IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3])))),
        abi::FAMILY_V6 => Ok(Some(IpAddr::V6(Ipv6Addr::from(b)))),
        other => Err(ShmError::Corrupt(format!(
            "{what}: unknown address family {other}"
        ))),
    }
}

struct StringPool(Vec<u8>);

impl StringPool {
    fn add(&mut self, s: &str) -> Result<StrRef, ShmError> {
        let offset = u32::try_from(self.0.len()).map_err(|_| ShmError::TooLarge)?;
        let len = u32::try_from(s.len()).map_err(|_| ShmError::TooLarge)?;
        self.0.extend_from_slice(s.as_bytes());
        Ok(StrRef { offset, len })
    }
}

fn count(n: usize) -> Result<u32, ShmError> {
    u32::try_from(n).map_err(|_| ShmError::TooLarge)
}

impl Tables {
    /// Encodes the tables as the bytes of one area, for `generation`.
    pub fn encode(&self, generation: u64) -> Result<Vec<u8>, ShmError> {
        let mut strings = StringPool(Vec::new());
        let trust_domain = strings.add(&self.trust_domain)?;
        let cluster_name = strings.add(&self.cluster_name)?;
        let mut nodes = Vec::with_capacity(self.nodes.len());
        for n in &self.nodes {
            let (gateway_family, gateway) = match n.gateway {
                Some(ip) => ip_to_bytes(ip),
                None => (0, [0; 16]),
            };
            nodes.push(NodeRecord {
                name: strings.add(&n.name)?,
                gateway_family,
                gateway,
                ..Default::default()
            });
        }
        let mut workloads = Vec::with_capacity(self.workloads.len());
        for w in &self.workloads {
            if w.node as usize >= self.nodes.len() {
                return Err(ShmError::Corrupt(format!(
                    "workload {} refers to node index {}",
                    w.name, w.node
                )));
            }
            workloads.push(WorkloadRecord {
                name: strings.add(&w.name)?,
                namespace: strings.add(&w.namespace)?,
                service_account: strings.add(&w.service_account)?,
                node: w.node,
                protocol: match w.protocol {
                    Protocol::Tcp => abi::PROTOCOL_TCP,
                    Protocol::Hbone => abi::PROTOCOL_HBONE,
                },
                peer_auth: match w.peer_auth {
                    PeerAuth::Permissive => abi::PEER_AUTH_PERMISSIVE,
                    PeerAuth::Strict => abi::PEER_AUTH_STRICT,
                },
                ..Default::default()
            });
        }
        let mut addresses = Vec::with_capacity(self.addresses.len());
        for a in &self.addresses {
            if a.workload as usize >= self.workloads.len() {
                return Err(ShmError::Corrupt(format!(
                    "address {} refers to workload index {}",
                    a.addr, a.workload
                )));
            }
            let (family, addr) = ip_to_bytes(a.addr);
            let (route_via_family, route_via) = match a.route.via {
                Some(ip) => ip_to_bytes(ip),
                None => (0, [0; 16]),
            };
            addresses.push(AddressRecord {
                addr,
                family,
                workload: a.workload,
                route_ifindex: a.route.ifindex,
                route_via_family,
                route_via,
                ..Default::default()
            });
        }
        let mut policies = Vec::with_capacity(self.policies.len());
        let mut sources = Vec::new();
        let mut ports = Vec::new();
        for p in &self.policies {
            policies.push(PolicyRecord {
                name: strings.add(&p.name)?,
                namespace: strings.add(&p.namespace)?,
                workload: strings.add(p.workload.as_deref().unwrap_or(""))?,
                action: match p.action {
                    PolicyAction::Allow => abi::POLICY_ALLOW,
                    PolicyAction::Deny => abi::POLICY_DENY,
                },
                first_source: count(sources.len())?,
                source_count: count(p.from.len())?,
                first_port: count(ports.len())?,
                port_count: count(p.ports.len())?,
                ..Default::default()
            });
            for src in &p.from {
                let (kind, value) = match src {
                    PolicySource::Principal(v) => (abi::SOURCE_PRINCIPAL, v),
                    PolicySource::Namespace(v) => (abi::SOURCE_NAMESPACE, v),
                };
                sources.push(PolicySourceRecord {
                    kind,
                    value: strings.add(value)?,
                    ..Default::default()
                });
            }
            for &port in &p.ports {
                ports.push(PolicyPortRecord {
                    port,
                    ..Default::default()
                });
            }
        }
        let mut cidrs = Vec::with_capacity(self.pod_cidrs.len());
        for c in &self.pod_cidrs {
            let (family, addr) = ip_to_bytes(c.addr);
            cidrs.push(CidrRecord {
                addr,
                family,
                prefix: c.prefix,
                ..Default::default()
            });
        }
        let (mut svcs, mut vips, mut sports, mut eps) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for sv in &self.services {
            svcs.push(ServiceRecord {
                name: strings.add(&sv.name)?,
                namespace: strings.add(&sv.namespace)?,
                hostname: strings.add(&sv.hostname)?,
                first_vip: count(vips.len())?,
                vip_count: count(sv.vips.len())?,
                first_port: count(sports.len())?,
                port_count: count(sv.ports.len())?,
                first_endpoint: count(eps.len())?,
                endpoint_count: count(sv.endpoints.len())?,
            });
            for &v in &sv.vips {
                let (family, addr) = ip_to_bytes(v);
                vips.push(VipRecord {
                    addr,
                    family,
                    ..Default::default()
                });
            }
            for &(port, target_port) in &sv.ports {
                sports.push(ServicePortRecord { port, target_port });
            }
            for &workload in &sv.endpoints {
                if workload as usize >= self.workloads.len() {
                    return Err(ShmError::Corrupt(format!(
                        "service {} endpoint refers to workload index {workload}",
                        sv.name
                    )));
                }
                eps.push(EndpointRecord { workload });
            }
        }
        let header = TableHeader {
            generation,
            node_count: count(nodes.len())?,
            workload_count: count(workloads.len())?,
            address_count: count(addresses.len())?,
            string_bytes: count(strings.0.len())?,
            policy_count: count(policies.len())?,
            policy_source_count: count(sources.len())?,
            policy_port_count: count(ports.len())?,
            pod_cidr_count: count(cidrs.len())?,
            service_count: count(svcs.len())?,
            vip_count: count(vips.len())?,
            service_port_count: count(sports.len())?,
            endpoint_count: count(eps.len())?,
            unknown_source_hold_ms: self.unknown_source_hold_ms,
            trust_domain,
            cluster_name,
            local_node: self.local_node.unwrap_or(u32::MAX),
            unknown_source: match self.unknown_source {
                UnknownSource::Pass => abi::UNKNOWN_SOURCE_PASS,
                UnknownSource::Reject => abi::UNKNOWN_SOURCE_REJECT,
                UnknownSource::Hold => abi::UNKNOWN_SOURCE_HOLD,
            },
            ..Default::default()
        };
        let mut out = Vec::with_capacity(Self::encoded_len_of(&header));
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(nodes.as_bytes());
        out.extend_from_slice(workloads.as_bytes());
        out.extend_from_slice(addresses.as_bytes());
        out.extend_from_slice(policies.as_bytes());
        out.extend_from_slice(sources.as_bytes());
        out.extend_from_slice(ports.as_bytes());
        out.extend_from_slice(cidrs.as_bytes());
        out.extend_from_slice(svcs.as_bytes());
        out.extend_from_slice(vips.as_bytes());
        out.extend_from_slice(sports.as_bytes());
        out.extend_from_slice(eps.as_bytes());
        out.extend_from_slice(&strings.0);
        Ok(out)
    }

    fn encoded_len_of(h: &TableHeader) -> usize {
        size_of::<TableHeader>()
            + h.node_count as usize * size_of::<NodeRecord>()
            + h.workload_count as usize * size_of::<WorkloadRecord>()
            + h.address_count as usize * size_of::<AddressRecord>()
            + h.policy_count as usize * size_of::<PolicyRecord>()
            + h.policy_source_count as usize * size_of::<PolicySourceRecord>()
            + h.policy_port_count as usize * size_of::<PolicyPortRecord>()
            + h.pod_cidr_count as usize * size_of::<CidrRecord>()
            + h.service_count as usize * size_of::<ServiceRecord>()
            + h.vip_count as usize * size_of::<VipRecord>()
            + h.service_port_count as usize * size_of::<ServicePortRecord>()
            + h.endpoint_count as usize * size_of::<EndpointRecord>()
            + h.string_bytes as usize
    }

    /// Decodes and validates an area's bytes. Returns the generation it holds.
    /// Never panics, whatever the bytes.
    pub fn decode(area: &[u8]) -> Result<(u64, Tables), ShmError> {
        let (header, rest) = TableHeader::read_from_prefix(area)
            .map_err(|_| ShmError::Corrupt("area shorter than its header".into()))?;
        // u64 arithmetic: counts are u32, so this cannot overflow.
        let needed = size_of::<TableHeader>() as u64
            + u64::from(header.node_count) * size_of::<NodeRecord>() as u64
            + u64::from(header.workload_count) * size_of::<WorkloadRecord>() as u64
            + u64::from(header.address_count) * size_of::<AddressRecord>() as u64
            + u64::from(header.policy_count) * size_of::<PolicyRecord>() as u64
            + u64::from(header.policy_source_count) * size_of::<PolicySourceRecord>() as u64
            + u64::from(header.policy_port_count) * size_of::<PolicyPortRecord>() as u64
            + u64::from(header.pod_cidr_count) * size_of::<CidrRecord>() as u64
            + u64::from(header.service_count) * size_of::<ServiceRecord>() as u64
            + u64::from(header.vip_count) * size_of::<VipRecord>() as u64
            + u64::from(header.service_port_count) * size_of::<ServicePortRecord>() as u64
            + u64::from(header.endpoint_count) * size_of::<EndpointRecord>() as u64
            + u64::from(header.string_bytes);
        if needed > area.len() as u64 {
            return Err(ShmError::Corrupt(format!(
                "table needs {needed} bytes, area has {}",
                area.len()
            )));
        }
        let (nodes, rest) = read_records::<NodeRecord>(rest, header.node_count)?;
        let (workloads, rest) = read_records::<WorkloadRecord>(rest, header.workload_count)?;
        let (addresses, rest) = read_records::<AddressRecord>(rest, header.address_count)?;
        let (policies, rest) = read_records::<PolicyRecord>(rest, header.policy_count)?;
        let (sources, rest) = read_records::<PolicySourceRecord>(rest, header.policy_source_count)?;
        let (ports, rest) = read_records::<PolicyPortRecord>(rest, header.policy_port_count)?;
        let (cidrs, rest) = read_records::<CidrRecord>(rest, header.pod_cidr_count)?;
        let (svcs, rest) = read_records::<ServiceRecord>(rest, header.service_count)?;
        let (vips, rest) = read_records::<VipRecord>(rest, header.vip_count)?;
        let (sports, rest) = read_records::<ServicePortRecord>(rest, header.service_port_count)?;
        let (eps, rest) = read_records::<EndpointRecord>(rest, header.endpoint_count)?;
        let strings = &rest[..header.string_bytes as usize];
        let s = |r: StrRef, what: &str| -> Result<String, ShmError> {
            let end = u64::from(r.offset) + u64::from(r.len);
            if end > strings.len() as u64 {
                return Err(ShmError::Corrupt(format!("{what}: string out of bounds")));
            }
            std::str::from_utf8(&strings[r.offset as usize..end as usize])
                .map(str::to_owned)
                .map_err(|_| ShmError::Corrupt(format!("{what}: not UTF-8")))
        };
        let mut t = Tables {
            trust_domain: s(header.trust_domain, "trust domain")?,
            cluster_name: s(header.cluster_name, "cluster name")?,
            local_node: match header.local_node {
                u32::MAX => None,
                n if n < header.node_count => Some(n),
                n => {
                    return Err(ShmError::Corrupt(format!(
                        "local node index {n} out of range"
                    )))
                }
            },
            unknown_source: match header.unknown_source {
                abi::UNKNOWN_SOURCE_PASS => UnknownSource::Pass,
                abi::UNKNOWN_SOURCE_REJECT => UnknownSource::Reject,
                abi::UNKNOWN_SOURCE_HOLD => UnknownSource::Hold,
                v => return Err(ShmError::Corrupt(format!("unknown_source {v}"))),
            },
            unknown_source_hold_ms: header.unknown_source_hold_ms,
            ..Default::default()
        };
        for c in &cidrs {
            let addr = ip_from_bytes(c.family, c.addr, "pod CIDR")?
                .ok_or_else(|| ShmError::Corrupt("pod CIDR without family".into()))?;
            let max = if addr.is_ipv4() { 32 } else { 128 };
            if c.prefix > max {
                return Err(ShmError::Corrupt(format!(
                    "pod CIDR {addr}/{}: prefix out of range",
                    c.prefix
                )));
            }
            t.pod_cidrs.push(Cidr {
                addr,
                prefix: c.prefix,
            });
        }
        for n in &nodes {
            t.nodes.push(Node {
                name: s(n.name, "node name")?,
                gateway: ip_from_bytes(n.gateway_family, n.gateway, "node gateway")?,
            });
        }
        for w in &workloads {
            if w.node >= header.node_count {
                return Err(ShmError::Corrupt(format!(
                    "workload node index {} out of range",
                    w.node
                )));
            }
            t.workloads.push(Workload {
                name: s(w.name, "workload name")?,
                namespace: s(w.namespace, "workload namespace")?,
                service_account: s(w.service_account, "service account")?,
                node: w.node,
                protocol: match w.protocol {
                    abi::PROTOCOL_TCP => Protocol::Tcp,
                    abi::PROTOCOL_HBONE => Protocol::Hbone,
                    p => return Err(ShmError::Corrupt(format!("workload protocol {p}"))),
                },
                peer_auth: match w.peer_auth {
                    abi::PEER_AUTH_PERMISSIVE => PeerAuth::Permissive,
                    abi::PEER_AUTH_STRICT => PeerAuth::Strict,
                    p => return Err(ShmError::Corrupt(format!("workload peer_auth {p}"))),
                },
            });
        }
        for a in &addresses {
            if a.workload >= header.workload_count {
                return Err(ShmError::Corrupt(format!(
                    "address workload index {} out of range",
                    a.workload
                )));
            }
            let addr = ip_from_bytes(a.family, a.addr, "address")?
                .ok_or_else(|| ShmError::Corrupt("address without family".into()))?;
            t.addresses.push(Address {
                addr,
                workload: a.workload,
                route: Route {
                    ifindex: a.route_ifindex,
                    via: ip_from_bytes(a.route_via_family, a.route_via, "route")?,
                },
            });
        }
        for p in &policies {
            let slice = |first: u32, n: u32, len: usize, what: &str| {
                let end = u64::from(first) + u64::from(n);
                if end > len as u64 {
                    return Err(ShmError::Corrupt(format!("policy {what} out of range")));
                }
                Ok(first as usize..end as usize)
            };
            let from = sources[slice(p.first_source, p.source_count, sources.len(), "sources")?]
                .iter()
                .map(|src| {
                    let v = s(src.value, "policy source")?;
                    match src.kind {
                        abi::SOURCE_PRINCIPAL => Ok(PolicySource::Principal(v)),
                        abi::SOURCE_NAMESPACE => Ok(PolicySource::Namespace(v)),
                        k => Err(ShmError::Corrupt(format!("policy source kind {k}"))),
                    }
                })
                .collect::<Result<Vec<_>, _>>()?;
            let pports = ports[slice(p.first_port, p.port_count, ports.len(), "ports")?]
                .iter()
                .map(|r| r.port)
                .collect();
            let workload = s(p.workload, "policy workload")?;
            t.policies.push(Policy {
                name: s(p.name, "policy name")?,
                namespace: s(p.namespace, "policy namespace")?,
                workload: (!workload.is_empty()).then_some(workload),
                action: match p.action {
                    abi::POLICY_ALLOW => PolicyAction::Allow,
                    abi::POLICY_DENY => PolicyAction::Deny,
                    a => return Err(ShmError::Corrupt(format!("policy action {a}"))),
                },
                from,
                ports: pports,
            });
        }
        for sv in &svcs {
            let range = |first: u32, n: u32, len: usize, what: &str| {
                let end = u64::from(first) + u64::from(n);
                if end > len as u64 {
                    return Err(ShmError::Corrupt(format!("service {what} out of range")));
                }
                Ok(first as usize..end as usize)
            };
            // Ranges are checked before anything is allocated for them: a corrupt count
            // must be an error, not an allocation of its size.
            let mut service_vips = Vec::new();
            for v in &vips[range(sv.first_vip, sv.vip_count, vips.len(), "addresses")?] {
                service_vips.push(
                    ip_from_bytes(v.family, v.addr, "service address")?.ok_or_else(|| {
                        ShmError::Corrupt("service address without family".into())
                    })?,
                );
            }
            let mut endpoints = Vec::new();
            for e in &eps[range(sv.first_endpoint, sv.endpoint_count, eps.len(), "endpoints")?] {
                if e.workload >= header.workload_count {
                    return Err(ShmError::Corrupt(format!(
                        "service endpoint workload index {} out of range",
                        e.workload
                    )));
                }
                endpoints.push(e.workload);
            }
            t.services.push(Service {
                name: s(sv.name, "service name")?,
                namespace: s(sv.namespace, "service namespace")?,
                hostname: s(sv.hostname, "service hostname")?,
                vips: service_vips,
                ports: sports[range(sv.first_port, sv.port_count, sports.len(), "ports")?]
                    .iter()
                    .map(|p| (p.port, p.target_port))
                    .collect(),
                endpoints,
            });
        }
        Ok((header.generation, t))
    }
}

/// Copies `n` records out of the front of `bytes` (any alignment).
fn read_records<T: FromBytes + zerocopy::Immutable + Copy>(
    bytes: &[u8],
    n: u32,
) -> Result<(Vec<T>, &[u8]), ShmError> {
    let len = n as usize * size_of::<T>();
    if bytes.len() < len {
        return Err(ShmError::Corrupt("records out of bounds".into()));
    }
    let (recs, rest) = bytes.split_at(len);
    let v = recs
        .chunks_exact(size_of::<T>())
        .map(|c| T::read_from_bytes(c).map_err(|_| ShmError::Corrupt("record size".into())))
        .collect::<Result<Vec<T>, _>>()?;
    Ok((v, rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Tables {
        Tables {
            trust_domain: "cluster.local".into(),
            cluster_name: "Kubernetes".into(),
            local_node: Some(0),
            unknown_source: UnknownSource::Hold,
            unknown_source_hold_ms: 2000,
            pod_cidrs: vec![
                Cidr {
                    addr: "198.18.1.0".parse().unwrap(),
                    prefix: 24,
                },
                Cidr {
                    addr: "fd00::".parse().unwrap(),
                    prefix: 64,
                },
            ],
            nodes: vec![
                Node {
                    name: "node-a".into(),
                    gateway: Some("198.18.0.1".parse().unwrap()),
                },
                Node {
                    name: "node-b".into(),
                    gateway: Some("2001:db8::2".parse().unwrap()),
                },
            ],
            workloads: vec![Workload {
                name: "client".into(),
                namespace: "default".into(),
                service_account: "client-sa".into(),
                node: 1,
                protocol: Protocol::Hbone,
                peer_auth: PeerAuth::Strict,
            }],
            addresses: vec![Address {
                addr: "198.18.1.2".parse().unwrap(),
                workload: 0,
                route: Route {
                    ifindex: 7,
                    via: Some("198.18.0.2".parse().unwrap()),
                },
            }],
            policies: vec![
                Policy {
                    name: "only-a".into(),
                    namespace: "default".into(),
                    workload: Some("client".into()),
                    action: PolicyAction::Allow,
                    from: vec![
                        PolicySource::Principal("td/ns/x/sa/a".into()),
                        PolicySource::Namespace("y".into()),
                    ],
                    ports: vec![80, 443],
                },
                Policy {
                    name: "deny".into(),
                    namespace: "default".into(),
                    workload: None,
                    action: PolicyAction::Deny,
                    from: vec![],
                    ports: vec![22],
                },
            ],
            services: vec![Service {
                name: "echo".into(),
                namespace: "default".into(),
                hostname: "echo.default.svc.cluster.local".into(),
                vips: vec![
                    "198.18.10.1".parse().unwrap(),
                    "fd00::10:1".parse().unwrap(),
                ],
                ports: vec![(80, 7000)],
                endpoints: vec![0],
            }],
        }
    }

    #[test]
    fn round_trip() {
        let t = sample();
        let bytes = t.encode(42).unwrap();
        let strings = "cluster.localKubernetesnode-anode-bclientdefaultclient-sa".len()
            + "only-adefaultclienttd/ns/x/sa/ay".len()
            + "denydefault".len()
            + "echodefaultecho.default.svc.cluster.local".len();
        assert_eq!(
            bytes.len(),
            128 + 2 * 32
                + 64
                + 48
                + 2 * 64
                + 2 * 16
                + 3 * 4
                + 2 * 20
                + 48
                + 2 * 20
                + 4
                + 4
                + strings
        );
        let (g, back) = Tables::decode(&bytes).unwrap();
        assert_eq!(g, 42);
        assert_eq!(back, t);
    }

    #[test]
    fn header_bytes_are_exact() {
        let bytes = Tables::default().encode(7).unwrap();
        let mut want = vec![0u8; 128];
        want[0] = 7; // generation
        want[32..36].copy_from_slice(&u32::MAX.to_le_bytes()); // local_node none
        assert_eq!(bytes, want);
    }

    #[test]
    fn truncated_and_corrupt_areas_are_errors_never_panics() {
        let bytes = sample().encode(1).unwrap();
        for cut in 0..bytes.len() {
            assert!(
                Tables::decode(&bytes[..cut]).is_err(),
                "cut at {cut} decoded"
            );
        }
        // Flip every byte of the encoding: decode must return (Ok or Err) without panicking.
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0xff;
            let _ = Tables::decode(&b);
        }
        let mut b = bytes.clone();
        b[12] = 0xff; // workload_count = huge
        assert!(matches!(Tables::decode(&b), Err(ShmError::Corrupt(m)) if m.contains("needs")));
    }

    #[test]
    fn cidrs_contain_their_addresses_only() {
        let c = |s: &str, p: u8| Cidr {
            addr: s.parse().unwrap(),
            prefix: p,
        };
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(c("198.18.1.0", 24).contains(ip("198.18.1.255")));
        assert!(!c("198.18.1.0", 24).contains(ip("198.18.2.0")));
        assert!(c("0.0.0.0", 0).contains(ip("203.0.113.5")));
        assert!(c("198.18.1.7", 32).contains(ip("198.18.1.7")));
        assert!(!c("198.18.1.7", 32).contains(ip("198.18.1.8")));
        assert!(c("fd00::", 64).contains(ip("fd00::1:2")));
        assert!(!c("fd00::", 64).contains(ip("fd00:0:0:1::2")));
        // Families never mix, not even through v4-mapped addresses.
        assert!(!c("198.18.1.0", 24).contains(ip("::ffff:198.18.1.2")));
        assert!(!c("::", 0).contains(ip("198.18.1.2")));
        assert_eq!(c("fd00::", 64).to_string(), "fd00::/64");
    }

    #[test]
    fn bad_cidr_records_are_refused() {
        let bytes = sample().encode(1).unwrap();
        // The first CIDR record follows header, nodes, workload, address, policies,
        // sources and ports; its prefix byte is at offset 17.
        let at = 128 + 2 * 32 + 64 + 48 + 2 * 64 + 2 * 16 + 3 * 4;
        let mut b = bytes.clone();
        b[at + 17] = 33;
        assert!(
            matches!(Tables::decode(&b), Err(ShmError::Corrupt(m)) if m == "pod CIDR 198.18.1.0/33: prefix out of range")
        );
        b[at + 16] = 5;
        assert!(
            matches!(Tables::decode(&b), Err(ShmError::Corrupt(m)) if m == "pod CIDR: unknown address family 5")
        );
    }

    #[test]
    fn policy_index_ranges_are_checked() {
        let t = sample();
        let bytes = t.encode(1).unwrap();
        // The first policy record starts after header, nodes, workloads, addresses;
        // its source_count is at offset 32 within the record.
        let at = 128 + 2 * 32 + 64 + 48 + 32;
        let mut b = bytes.clone();
        b[at] = 9; // 9 sources, 2 exist
        assert!(
            matches!(Tables::decode(&b), Err(ShmError::Corrupt(m)) if m == "policy sources out of range")
        );
    }
}
