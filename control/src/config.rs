//! The mesh configuration: which nodes and workloads make up the mesh.
//!
//! The file is YAML (see `testdata/demo.yaml`, which is also
//! [`MeshConfig::embedded_default`]). Reading it takes three steps, in the way
//! ztunnel turns xDS and file input into its workload state:
//!
//! 1. `serde_norway` (the maintained fork of the deprecated `serde_yaml`, with
//!    its messages) parses the text into the private `Raw*` structs
//!    (`deny_unknown_fields`): the one parse of the file. Syntax errors, unknown
//!    fields, wrong types and bad enum values stop here, with its line and column.
//! 2. The raw structs are turned into the domain types ([`MeshConfig`],
//!    [`Node`], [`Workload`]): defaults are applied here and only here
//!    ([`DEFAULT_UNKNOWN_SOURCE`], [`DEFAULT_PROTOCOL`]), and everything serde
//!    cannot check is checked — DNS-1123 names, unicast addresses, ports,
//!    duplicates and references between workloads and nodes. Findings name
//!    YAML nodes by path (`workloads[1].addresses[0]`), never by position.
//! 3. Only when step 2 refuses the file, the error's paths (the offending node,
//!    and the first definition of a duplicate) are turned into lines and columns:
//!    `yaml-rust2`'s event parser records where every node of the text starts,
//!    which serde cannot tell. A valid file is parsed once.
//!
//! Every error is a [`ConfigError`] that prints as `file:line:column: reason`.

use std::cell::OnceCell;
use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::hash::Hash;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::Deserialize;
use yaml_rust2::parser::{Event, Parser};
use yaml_rust2::scanner::Marker;

/// The example configuration compiled into the binaries.
const EMBEDDED_DEMO: &str = include_str!("../testdata/demo.yaml");

/// What the dataplane does with traffic from an unknown source when the file
/// does not say.
pub const DEFAULT_UNKNOWN_SOURCE: UnknownSource = UnknownSource::Pass;

/// The protocol of a workload whose entry does not say.
pub const DEFAULT_PROTOCOL: Protocol = Protocol::Tcp;

/// The cluster's name when the file does not say (ztunnel's default `CLUSTER_ID`).
pub const DEFAULT_CLUSTER_NAME: &str = "Kubernetes";

/// The mesh-wide peer authentication when the file does not say (Istio's default).
pub const DEFAULT_PEER_AUTHENTICATION: PeerAuthentication = PeerAuthentication::Permissive;

/// How long `unknown_source: hold` holds a SYN when the file does not say.
pub const DEFAULT_UNKNOWN_SOURCE_HOLD_MS: u32 = 2000;

/// The longest hold `unknown_source_hold_ms` may ask for: a client's connect times
/// out after about two minutes, and a held SYN costs memory on the gateway.
pub const MAX_UNKNOWN_SOURCE_HOLD_MS: u32 = 30_000;

/// At most this many `pod_cidrs` (the XDP program's LPM trie has this many slots).
pub const MAX_POD_CIDRS: usize = 256;

/// The validated mesh configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeshConfig {
    /// The SPIFFE trust domain of every workload identity.
    pub trust_domain: TrustDomain,
    /// The cluster's name: `k8s.cluster.name` in the `baggage` of HBONE requests.
    /// 1-63 letters, digits, `.`, `-` and `_`.
    pub cluster_name: String,
    /// What to do with traffic from a pod address no workload owns.
    pub unknown_source: UnknownSource,
    /// How long [`UnknownSource::Hold`] holds a SYN, in milliseconds.
    pub unknown_source_hold_ms: u32,
    /// The pod address ranges: a source inside one that no workload claims is an
    /// unknown source. Host bits are zero; no range is listed twice.
    pub pod_cidrs: Vec<Cidr>,
    /// The mesh-wide default of [`Workload::peer_authentication`].
    pub peer_authentication: PeerAuthentication,
    /// The nodes, in file order; names are unique.
    pub nodes: Vec<Node>,
    /// The workloads, in file order; `namespace/name` is unique, every
    /// address belongs to one workload or node only, and every `node` names
    /// an entry of [`MeshConfig::nodes`].
    pub workloads: Vec<Workload>,
    /// Authorization policies, in file order; `namespace/name` is unique.
    pub policies: Vec<Policy>,
    /// Services, in file order; `namespace/name` is unique, and so is every virtual
    /// address (no workload's or node's either).
    pub services: Vec<Service>,
}

/// A service, in the style of a Kubernetes Service as ztunnel's local config has it:
/// virtual addresses whose ports map to a target port on one of its endpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    /// DNS-1123 label, unique in its namespace.
    pub name: String,
    /// DNS-1123 label.
    pub namespace: String,
    /// Its DNS name (`forwarded: host=` of HBONE requests); default
    /// `<name>.<namespace>.svc.cluster.local`.
    pub hostname: String,
    /// Virtual addresses: at least one, unicast, owned by no workload or node.
    pub addresses: Vec<IpAddr>,
    /// Ports: at least one; `port` unique, neither port 0.
    pub ports: Vec<ServicePort>,
    /// The endpoints: indices into [`MeshConfig::workloads`], in file order of the
    /// workloads, each once (from the selector, or listed by name). May be empty.
    pub endpoints: Vec<usize>,
}

/// One port of a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServicePort {
    /// The port clients connect to on the virtual address.
    pub port: u16,
    /// The port on the endpoint (`targetPort`; default: `port`).
    pub target_port: u16,
}

/// An authorization policy, checked by the gateway that serves the destination
/// workload, as Istio's L4 `AuthorizationPolicy` is by ztunnel: a connection matched by
/// any DENY policy is refused; otherwise, if the destination workload has ALLOW
/// policies, one of them must match. A refused HBONE `CONNECT` gets `401`; a refused
/// plain-TCP connection is reset. Plain TCP carries no authenticated identity, so it
/// matches only policies without `from`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// DNS-1123 label, unique in its namespace.
    pub name: String,
    /// The namespace whose workloads it applies to.
    pub namespace: String,
    /// Only this workload of the namespace (it must exist); `None` = all of them.
    pub workload: Option<String>,
    /// What it does with the connections it matches.
    pub action: PolicyAction,
    /// Sources, any of which matches; empty = any source.
    pub from: Vec<PolicySource>,
    /// Destination ports, any of which matches; empty = any port. Never 0.
    pub ports: Vec<u16>,
}

/// A policy's action. In YAML: `ALLOW` (the default) or `DENY`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum PolicyAction {
    /// Allow what matches.
    Allow,
    /// Refuse what matches.
    Deny,
}

/// A source of a policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicySource {
    /// A peer identity in Istio's principal form, `<td>/ns/<ns>/sa/<sa>` (the file may
    /// also spell it `spiffe://<td>/ns/<ns>/sa/<sa>`).
    Principal(String),
    /// Every identity of a namespace.
    Namespace(String),
}

/// A node: one host running the dataplane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// DNS-1123 label, unique among nodes.
    pub name: String,
    /// The addresses other nodes tunnel to to reach this node's workloads;
    /// at least one, all unicast.
    pub gateway_addresses: Vec<IpAddr>,
}

/// A workload: one pod, with its identity and addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workload {
    /// DNS-1123 label.
    pub name: String,
    /// DNS-1123 label.
    pub namespace: String,
    /// DNS-1123 label; the identity is derived from it ([`Workload::spiffe_id`]).
    pub service_account: String,
    /// The name of the node the workload runs on; an entry of [`MeshConfig::nodes`].
    pub node: String,
    /// The pod's addresses: at least one, all unicast, none shared.
    pub addresses: Vec<IpAddr>,
    /// How the workload speaks to the mesh.
    pub protocol: Protocol,
    /// Ports the workload serves, for information; empty means any. Never 0.
    pub ports: Vec<u16>,
    /// Which peers it accepts: its own `peer_authentication`, else the mesh-wide one.
    /// Never [`PeerAuthentication::Strict`] with [`Protocol::Tcp`].
    pub peer_authentication: PeerAuthentication,
    /// Labels, for service selectors.
    pub labels: BTreeMap<String, String>,
}

impl Workload {
    /// The workload's SPIFFE identity: `spiffe://<td>/ns/<namespace>/sa/<service_account>`.
    pub fn spiffe_id(&self, td: &TrustDomain) -> String {
        format!(
            "spiffe://{}/ns/{}/sa/{}",
            td.as_str(),
            self.namespace,
            self.service_account
        )
    }

    /// `namespace/name`, the workload's unique key, as the error messages spell it.
    pub fn qualified_name(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// How a workload speaks to the mesh. In YAML: `TCP` or `HBONE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Protocol {
    /// Plain TCP: the node's dataplane captures the traffic and tunnels it.
    Tcp,
    /// The workload speaks HBONE itself (a sandwiched waypoint, say).
    Hbone,
}

/// What the dataplane does with connections from a pod address that no workload
/// in the configuration owns (an address inside [`MeshConfig::pod_cidrs`]: an init
/// container that runs before its pod's workload is published, Istio issue 48854).
/// In YAML: `pass`, `reject` or `hold`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UnknownSource {
    /// As a source outside the mesh: to a mesh workload of another node, the kernel
    /// routes it untouched; to a workload served here, its peer authentication and
    /// policies decide, as for any source without an identity.
    Pass,
    /// Refuse it with a reset (counted, logged).
    Reject,
    /// Hold the SYN for `unknown_source_hold_ms`: if a new table generation gives
    /// the address a workload meanwhile, the connection goes on as that workload's;
    /// otherwise it is reset (counted, logged).
    Hold,
}

/// Which peers a workload accepts, as Istio's `PeerAuthentication` modes. In YAML:
/// `STRICT` or `PERMISSIVE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum PeerAuthentication {
    /// HBONE (mutual TLS), and plaintext from a source without an identity, which
    /// the workload's policies then see as such.
    Permissive,
    /// HBONE only: plaintext is refused with a reset (counted, logged).
    Strict,
}

impl fmt::Display for PeerAuthentication {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PeerAuthentication::Permissive => "PERMISSIVE",
            PeerAuthentication::Strict => "STRICT",
        })
    }
}

/// An address range, `address/prefix` with the host bits zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    /// The network address.
    pub addr: IpAddr,
    /// The prefix length: at most 32 for IPv4, 128 for IPv6.
    pub prefix: u8,
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl FromStr for Cidr {
    type Err = String;

    /// Parses `address/prefix`; the error says what to write instead.
    fn from_str(text: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "invalid CIDR {text:?}: expected <address>/<prefix length>, such as 198.18.1.0/24 or fd00::/64"
            )
        };
        let (addr, prefix) = text.split_once('/').ok_or_else(bad)?;
        let addr: IpAddr = addr.parse().map_err(|_| bad())?;
        let prefix: u8 = prefix.parse().map_err(|_| bad())?;
        let (max, family) = if addr.is_ipv4() {
            (32, "IPv4")
        } else {
            (128, "IPv6")
        };
        if prefix > max {
            return Err(format!(
                "invalid CIDR {text:?}: prefix length {prefix} is out of range for {family} (0-{max})"
            ));
        }
        let network = match addr {
            IpAddr::V4(v4) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
                IpAddr::from(std::net::Ipv4Addr::from(u32::from(v4) & mask))
            }
            IpAddr::V6(v6) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
                IpAddr::from(std::net::Ipv6Addr::from(u128::from(v6) & mask))
            }
        };
        if network != addr {
            return Err(format!(
                "CIDR {text:?} has host bits set: write {network}/{prefix}"
            ));
        }
        Ok(Cidr { addr, prefix })
    }
}

/// A SPIFFE trust domain name: non-empty, made of lowercase letters, digits,
/// `.`, `-` and `_`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TrustDomain(String);

/// Why a string is not a [`TrustDomain`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{name:?} is not a valid SPIFFE trust domain: {problem}; use lowercase letters, digits, '.', '-' and '_'")]
pub struct InvalidTrustDomain {
    /// The rejected text.
    pub name: String,
    /// What is wrong with it.
    pub problem: String,
}

impl TrustDomain {
    /// Validates `name` as a SPIFFE trust domain name.
    pub fn new(name: &str) -> Result<Self, InvalidTrustDomain> {
        let problem = if name.is_empty() {
            Some("it is empty".to_owned())
        } else {
            name.chars()
                .find(|c| !matches!(c, 'a'..='z' | '0'..='9' | '.' | '-' | '_'))
                .map(|c| format!("{c:?} is not allowed"))
        };
        match problem {
            None => Ok(Self(name.to_owned())),
            Some(problem) => Err(InvalidTrustDomain {
                name: name.to_owned(),
                problem,
            }),
        }
    }

    /// The trust domain name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for TrustDomain {
    type Err = InvalidTrustDomain;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A configuration that could not be read or is not valid.
///
/// Prints as `file:line:column: reason`; `line` and `column` are 1-based, and
/// both are 0 when the file could not be read at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}:{line}:{column}: {reason}", .file.display())]
pub struct ConfigError {
    /// The file as it was named to [`MeshConfig::from_path`] or [`MeshConfig::from_str_named`].
    pub file: PathBuf,
    /// 1-based line of the offending YAML node; 0 for I/O errors.
    pub line: usize,
    /// 1-based column of the offending YAML node; 0 for I/O errors.
    pub column: usize,
    /// What is wrong, in words that say what to fix.
    pub reason: String,
}

impl MeshConfig {
    /// Reads and validates the configuration in `path`.
    pub fn from_path(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            let reason = match e.kind() {
                std::io::ErrorKind::NotFound => {
                    "cannot read the mesh config: no such file; check the path".to_owned()
                }
                std::io::ErrorKind::PermissionDenied => {
                    "cannot read the mesh config: permission denied; check the file's permissions"
                        .to_owned()
                }
                std::io::ErrorKind::InvalidData => {
                    "cannot read the mesh config: the file is not UTF-8 text; check that it is the YAML mesh config"
                        .to_owned()
                }
                _ => format!(
                    "cannot read the mesh config: {e}; check that the path names a readable file"
                ),
            };
            ConfigError {
                file: path.to_owned(),
                line: 0,
                column: 0,
                reason,
            }
        })?;
        Self::from_str_named(&text, path)
    }

    /// Parses and validates `text`; `file` names it in errors.
    pub fn from_str_named(text: &str, file: &Path) -> Result<Self, ConfigError> {
        let raw: RawConfig = serde_norway::from_str(text).map_err(|e| serde_error(&e, file))?;
        raw.into_domain(&Locator::new(file, text))
    }

    /// The demo configuration in `testdata/demo.yaml`, compiled in.
    pub fn embedded_default() -> Self {
        // A test parses the same file, so this cannot fail in a tested build.
        Self::from_str_named(EMBEDDED_DEMO, Path::new("<embedded demo.yaml>"))
            .expect("the embedded demo config is valid (tested)")
    }

    /// The workloads that run on `node`, in file order.
    pub fn workloads_on<'a>(&'a self, node: &str) -> impl Iterator<Item = &'a Workload> + 'a {
        let node = node.to_owned();
        self.workloads.iter().filter(move |w| w.node == node)
    }

    /// The node called `name`.
    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.name == name)
    }
}

/// Turns a serde_norway error into a [`ConfigError`], moving its location out
/// of the message into the line and column fields.
fn serde_error(e: &serde_norway::Error, file: &Path) -> ConfigError {
    let message = e.to_string();
    let (line, column, reason) = match e.location() {
        Some(loc) => {
            let suffix = format!(" at line {} column {}", loc.line(), loc.column());
            (loc.line(), loc.column(), message.replacen(&suffix, "", 1))
        }
        // serde_norway knows no position (e.g. "more than one document"):
        // point at the start of the file.
        None => (1, 1, message),
    };
    ConfigError {
        file: file.to_owned(),
        line,
        column,
        reason,
    }
}

// ---------------------------------------------------------------------------
// Raw form: exactly what the YAML says, nothing checked beyond types.

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mesh config mapping")]
struct RawConfig {
    trust_domain: String,
    #[serde(default)]
    cluster_name: Option<String>,
    #[serde(default)]
    unknown_source: Option<UnknownSource>,
    #[serde(default)]
    unknown_source_hold_ms: Option<u32>,
    #[serde(default)]
    pod_cidrs: Vec<String>,
    #[serde(default)]
    peer_authentication: Option<PeerAuthentication>,
    #[serde(default)]
    nodes: Vec<RawNode>,
    #[serde(default)]
    workloads: Vec<RawWorkload>,
    #[serde(default)]
    policies: Vec<RawPolicy>,
    #[serde(default)]
    services: Vec<RawService>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a service mapping")]
struct RawService {
    name: String,
    namespace: String,
    #[serde(default)]
    hostname: Option<String>,
    addresses: Vec<String>,
    ports: Vec<RawServicePort>,
    #[serde(default)]
    selector: Option<BTreeMap<String, String>>,
    #[serde(default)]
    endpoints: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a service port mapping: port and targetPort"
)]
struct RawServicePort {
    port: u16,
    #[serde(default, rename = "targetPort")]
    target_port: Option<u16>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a policy mapping")]
struct RawPolicy {
    name: String,
    namespace: String,
    #[serde(default)]
    workload: Option<String>,
    #[serde(default)]
    action: Option<PolicyAction>,
    #[serde(default)]
    from: Vec<RawSource>,
    #[serde(default)]
    ports: Vec<u16>,
}

#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a source mapping: principal or namespace"
)]
struct RawSource {
    #[serde(default)]
    principal: Option<String>,
    #[serde(default)]
    namespace: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a node mapping")]
struct RawNode {
    name: String,
    gateway_addresses: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a workload mapping")]
struct RawWorkload {
    name: String,
    namespace: String,
    service_account: String,
    node: String,
    addresses: Vec<String>,
    #[serde(default)]
    protocol: Option<Protocol>,
    #[serde(default)]
    ports: Vec<u16>,
    #[serde(default)]
    peer_authentication: Option<PeerAuthentication>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

// ---------------------------------------------------------------------------
// Raw → domain.

impl RawConfig {
    fn into_domain(self, at: &Locator<'_>) -> Result<MeshConfig, ConfigError> {
        let trust_domain = TrustDomain::new(&self.trust_domain)
            .map_err(|e| at.error("trust_domain", format!("invalid trust_domain: {e}")))?;
        let mut book = AddressBook::default();

        let mut nodes: Vec<Node> = Vec::with_capacity(self.nodes.len());
        let mut node_names = FirstSeen::default();
        for (i, raw) in self.nodes.into_iter().enumerate() {
            let node = raw.into_domain(&format!("nodes[{i}]"), at, &mut book)?;
            let name_path = format!("nodes[{i}].name");
            node_names.define(node.name.clone(), &name_path, at, || {
                format!("duplicate node name {:?}", node.name)
            })?;
            nodes.push(node);
        }

        let cluster_name = self
            .cluster_name
            .unwrap_or_else(|| DEFAULT_CLUSTER_NAME.to_owned());
        let bad = cluster_name
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')));
        if cluster_name.is_empty() || cluster_name.len() > 63 || bad.is_some() {
            let problem = match bad {
                Some(c) => format!("{c:?} is not allowed"),
                None if cluster_name.is_empty() => "it is empty".to_owned(),
                None => format!("it is {} characters long", cluster_name.len()),
            };
            return Err(at.error(
                "cluster_name",
                format!(
                    "cluster_name {cluster_name:?} is not valid: {problem}; it goes into HBONE \
                     baggage, so use 1-63 letters, digits, '.', '-' and '_'"
                ),
            ));
        }
        let unknown_source = self.unknown_source.unwrap_or(DEFAULT_UNKNOWN_SOURCE);
        let pod_cidrs = pod_cidrs(&self.pod_cidrs, at)?;
        if unknown_source != UnknownSource::Pass && pod_cidrs.is_empty() {
            return Err(at.error(
                "unknown_source",
                format!(
                    "unknown_source {} needs pod_cidrs: a source is unknown only inside a pod \
                     range that no workload claims; list the pod ranges in pod_cidrs",
                    unknown_source.name()
                ),
            ));
        }
        let unknown_source_hold_ms = match self.unknown_source_hold_ms {
            None => DEFAULT_UNKNOWN_SOURCE_HOLD_MS,
            Some(_) if unknown_source != UnknownSource::Hold => {
                return Err(at.error(
                    "unknown_source_hold_ms",
                    format!(
                        "unknown_source_hold_ms applies only to unknown_source hold, and this \
                         file says {}: remove it, or set unknown_source: hold",
                        unknown_source.name()
                    ),
                ))
            }
            Some(ms) if ms == 0 || ms > MAX_UNKNOWN_SOURCE_HOLD_MS => {
                return Err(at.error(
                    "unknown_source_hold_ms",
                    format!(
                        "unknown_source_hold_ms {ms} is out of range: hold a SYN for 1 to \
                         {MAX_UNKNOWN_SOURCE_HOLD_MS} ms"
                    ),
                ))
            }
            Some(ms) => ms,
        };
        let mesh_peer_auth = self
            .peer_authentication
            .unwrap_or(DEFAULT_PEER_AUTHENTICATION);

        let mut workloads: Vec<Workload> = Vec::with_capacity(self.workloads.len());
        let mut workload_names = FirstSeen::default();
        for (i, raw) in self.workloads.into_iter().enumerate() {
            let prefix = format!("workloads[{i}]");
            let workload = raw.into_domain(&prefix, at, &nodes, &mut book, mesh_peer_auth)?;
            let name_path = format!("{prefix}.name");
            let key = (workload.namespace.clone(), workload.name.clone());
            workload_names.define(key, &name_path, at, || {
                format!("duplicate workload {}", workload.qualified_name())
            })?;
            workloads.push(workload);
        }

        let mut policies: Vec<Policy> = Vec::with_capacity(self.policies.len());
        let mut policy_names = FirstSeen::default();
        for (i, raw) in self.policies.into_iter().enumerate() {
            let prefix = format!("policies[{i}]");
            let policy = raw.into_domain(&prefix, at, &trust_domain, &workloads)?;
            let name_path = format!("{prefix}.name");
            let key = (policy.namespace.clone(), policy.name.clone());
            policy_names.define(key, &name_path, at, || {
                format!("duplicate policy {}/{}", policy.namespace, policy.name)
            })?;
            policies.push(policy);
        }

        let mut services: Vec<Service> = Vec::with_capacity(self.services.len());
        let mut service_names = FirstSeen::default();
        for (i, raw) in self.services.into_iter().enumerate() {
            let prefix = format!("services[{i}]");
            let service = raw.into_domain(&prefix, at, &workloads, &mut book)?;
            let key = (service.namespace.clone(), service.name.clone());
            service_names.define(key, &format!("{prefix}.name"), at, || {
                format!("duplicate service {}/{}", service.namespace, service.name)
            })?;
            services.push(service);
        }

        Ok(MeshConfig {
            trust_domain,
            cluster_name,
            unknown_source,
            unknown_source_hold_ms,
            pod_cidrs,
            peer_authentication: mesh_peer_auth,
            nodes,
            workloads,
            policies,
            services,
        })
    }
}

impl RawService {
    fn into_domain(
        self,
        prefix: &str,
        at: &Locator<'_>,
        workloads: &[Workload],
        book: &mut AddressBook,
    ) -> Result<Service, ConfigError> {
        for (field, what, value) in [
            ("name", "service name", &self.name),
            ("namespace", "namespace", &self.namespace),
        ] {
            dns1123_label(value).map_err(|p| {
                at.error(&format!("{prefix}.{field}"), label_reason(what, value, &p))
            })?;
        }
        let qualified = format!("{}/{}", self.namespace, self.name);
        let hostname = match self.hostname {
            None => format!("{}.{}.svc.cluster.local", self.name, self.namespace),
            Some(h) => {
                let bad = h.is_empty()
                    || h.len() > 253
                    || h.split('.').any(|l| dns1123_label(l).is_err());
                if bad {
                    return Err(at.error(
                        &format!("{prefix}.hostname"),
                        format!(
                            "hostname {h:?} of service {qualified} is not a DNS name: dot-separated \
                             DNS-1123 labels, at most 253 characters"
                        ),
                    ));
                }
                h
            }
        };
        let addresses = addresses(
            &self.addresses,
            &format!("{prefix}.addresses"),
            &format!("service {qualified} has no addresses: list at least one virtual address"),
            &format!("service {qualified}"),
            at,
            book,
        )?;
        if self.ports.is_empty() {
            return Err(at.error(
                &format!("{prefix}.ports"),
                format!(
                    "service {qualified} has no ports: list at least one port (and its targetPort)"
                ),
            ));
        }
        let mut seen = FirstSeen::default();
        let mut ports = Vec::with_capacity(self.ports.len());
        for (j, p) in self.ports.iter().enumerate() {
            let path = format!("{prefix}.ports[{j}]");
            let target_port = p.target_port.unwrap_or(p.port);
            for (field, v) in [("port", p.port), ("targetPort", target_port)] {
                if v == 0 {
                    return Err(at.error(
                        &format!("{path}.{field}"),
                        format!(
                            "{field} 0 of service {qualified} is not a valid port: use 1-65535"
                        ),
                    ));
                }
            }
            if let Some(line) = seen.earlier_line(p.port, &format!("{path}.port"), at) {
                return Err(at.error(
                    &format!("{path}.port"),
                    format!(
                        "duplicate port {} of service {qualified}: already listed at line {line}",
                        p.port
                    ),
                ));
            }
            ports.push(ServicePort {
                port: p.port,
                target_port,
            });
        }
        let in_ns = |w: &Workload| w.namespace == self.namespace;
        let endpoints = match (self.selector, self.endpoints) {
            (Some(_), Some(_)) => {
                return Err(at.error(
                    &format!("{prefix}.endpoints"),
                    format!(
                        "service {qualified} has both a selector and endpoints: select its \
                         workloads by labels or list them by name, not both"
                    ),
                ))
            }
            (None, None) => {
                return Err(at.error(
                    &format!("{prefix}.name"),
                    format!(
                        "service {qualified} has neither a selector nor endpoints: give it a \
                         selector (workload labels) or endpoints (workload names)"
                    ),
                ))
            }
            (Some(sel), None) => {
                if sel.is_empty() {
                    return Err(at.error(
                        &format!("{prefix}.selector"),
                        format!(
                            "the selector of service {qualified} is empty, which would select \
                             every workload of the namespace: name at least one label"
                        ),
                    ));
                }
                workloads
                    .iter()
                    .enumerate()
                    .filter(|(_, w)| {
                        in_ns(w) && sel.iter().all(|(k, v)| w.labels.get(k) == Some(v))
                    })
                    .map(|(i, _)| i)
                    .collect()
            }
            (None, Some(names)) => {
                let mut out = Vec::with_capacity(names.len());
                let mut seen = FirstSeen::default();
                for (j, n) in names.iter().enumerate() {
                    let path = format!("{prefix}.endpoints[{j}]");
                    let Some(i) = workloads.iter().position(|w| in_ns(w) && &w.name == n) else {
                        return Err(at.error(
                            &path,
                            format!(
                                "endpoint {}/{n} of service {qualified} is not in workloads: name a \
                                 workload of namespace {}",
                                self.namespace, self.namespace
                            ),
                        ));
                    };
                    if let Some(line) = seen.earlier_line(i, &path, at) {
                        return Err(at.error(
                            &path,
                            format!("endpoint {n} of service {qualified} is listed twice: first at line {line}"),
                        ));
                    }
                    out.push(i);
                }
                out.sort_unstable();
                out
            }
        };
        Ok(Service {
            name: self.name,
            namespace: self.namespace,
            hostname,
            addresses,
            ports,
            endpoints,
        })
    }
}

impl RawPolicy {
    fn into_domain(
        self,
        prefix: &str,
        at: &Locator<'_>,
        td: &TrustDomain,
        workloads: &[Workload],
    ) -> Result<Policy, ConfigError> {
        for (field, what, value) in [
            ("name", "policy name", &self.name),
            ("namespace", "namespace", &self.namespace),
        ] {
            dns1123_label(value).map_err(|p| {
                at.error(&format!("{prefix}.{field}"), label_reason(what, value, &p))
            })?;
        }
        if let Some(w) = &self.workload {
            if !workloads
                .iter()
                .any(|x| x.namespace == self.namespace && &x.name == w)
            {
                return Err(at.error(
                    &format!("{prefix}.workload"),
                    format!(
                        "policy {}/{} applies to workload {}/{w}, which is not in workloads; \
                         name a workload of namespace {}, or leave workload out to mean all of them",
                        self.namespace, self.name, self.namespace, self.namespace
                    ),
                ));
            }
        }
        let mut from = Vec::with_capacity(self.from.len());
        for (j, src) in self.from.into_iter().enumerate() {
            let path = format!("{prefix}.from[{j}]");
            match (src.principal, src.namespace) {
                (Some(p), None) => {
                    let principal = principal(&p, td)
                        .map_err(|reason| at.error(&format!("{path}.principal"), reason))?;
                    from.push(PolicySource::Principal(principal));
                }
                (None, Some(ns)) => {
                    dns1123_label(&ns).map_err(|p| {
                        at.error(
                            &format!("{path}.namespace"),
                            label_reason("namespace", &ns, &p),
                        )
                    })?;
                    from.push(PolicySource::Namespace(ns));
                }
                (Some(_), Some(_)) => {
                    return Err(at.error(
                        &format!("{path}.namespace"),
                        "a source has exactly one of principal (an identity) or namespace; \
                         this one has both: make them two sources",
                    ))
                }
                (None, None) => {
                    return Err(at.error(
                        &path,
                        "a source has exactly one of principal (an identity) or namespace",
                    ))
                }
            }
        }
        check_ports(&self.ports, prefix, "leave ports out", at)?;
        Ok(Policy {
            name: self.name,
            namespace: self.namespace,
            workload: self.workload,
            action: self.action.unwrap_or(PolicyAction::Allow),
            from,
            ports: self.ports,
        })
    }
}

/// Validates a principal and returns it in Istio's form, `<td>/ns/<ns>/sa/<sa>`.
fn principal(text: &str, td: &TrustDomain) -> Result<String, String> {
    let bare = text.strip_prefix("spiffe://").unwrap_or(text);
    let parts: Vec<&str> = bare.split('/').collect();
    let ok = parts.len() == 5
        && parts[1] == "ns"
        && parts[3] == "sa"
        && TrustDomain::new(parts[0]).is_ok()
        && dns1123_label(parts[2]).is_ok()
        && dns1123_label(parts[4]).is_ok();
    if !ok {
        return Err(format!(
            "invalid principal {text:?}: expected <trust-domain>/ns/<namespace>/sa/<service-account>, \
             e.g. {td}/ns/default/sa/client"
        ));
    }
    if parts[0] != td.as_str() {
        return Err(format!(
            "principal {text:?} is in trust domain {:?}, but the mesh's is {td:?}: \
             the gateways accept only peers of their own trust domain, so it could never match",
            parts[0],
            td = td.as_str()
        ));
    }
    Ok(bare.to_owned())
}

impl RawNode {
    fn into_domain(
        self,
        prefix: &str,
        at: &Locator<'_>,
        book: &mut AddressBook,
    ) -> Result<Node, ConfigError> {
        dns1123_label(&self.name).map_err(|p| {
            at.error(
                &format!("{prefix}.name"),
                label_reason("node name", &self.name, &p),
            )
        })?;
        let owner = format!("node {} as a gateway address", self.name);
        let gateway_addresses = addresses(
            &self.gateway_addresses,
            &format!("{prefix}.gateway_addresses"),
            &format!("node {} has no gateway addresses: list at least one address that other nodes can reach it on", self.name),
            &owner,
            at,
            book,
        )?;
        Ok(Node {
            name: self.name,
            gateway_addresses,
        })
    }
}

impl RawWorkload {
    fn into_domain(
        self,
        prefix: &str,
        at: &Locator<'_>,
        nodes: &[Node],
        book: &mut AddressBook,
        mesh_peer_auth: PeerAuthentication,
    ) -> Result<Workload, ConfigError> {
        for (field, what, value) in [
            ("name", "workload name", &self.name),
            ("namespace", "namespace", &self.namespace),
            ("service_account", "service_account", &self.service_account),
        ] {
            dns1123_label(value).map_err(|p| {
                at.error(&format!("{prefix}.{field}"), label_reason(what, value, &p))
            })?;
        }
        let qualified = format!("{}/{}", self.namespace, self.name);

        if !nodes.iter().any(|n| n.name == self.node) {
            let known = if nodes.is_empty() {
                "none".to_owned()
            } else {
                nodes
                    .iter()
                    .map(|n| n.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            return Err(at.error(
                &format!("{prefix}.node"),
                format!(
                    "workload {qualified} is on node {:?}, which is not in nodes (known: {known})",
                    self.node
                ),
            ));
        }

        let addresses = addresses(
            &self.addresses,
            &format!("{prefix}.addresses"),
            &format!("workload {qualified} has no addresses: list at least one pod IP address"),
            &format!("workload {qualified}"),
            at,
            book,
        )?;

        check_ports(&self.ports, prefix, "leave ports empty", at)?;

        let protocol = self.protocol.unwrap_or(DEFAULT_PROTOCOL);
        let peer_authentication = self.peer_authentication.unwrap_or(mesh_peer_auth);
        if peer_authentication == PeerAuthentication::Strict && protocol == Protocol::Tcp {
            let (path, whence) = match (self.peer_authentication, self.protocol) {
                (Some(_), _) => (format!("{prefix}.peer_authentication"), ""),
                (None, Some(_)) => (format!("{prefix}.protocol"), " (the mesh-wide default)"),
                (None, None) => (format!("{prefix}.name"), " (the mesh-wide default)"),
            };
            return Err(at.error(
                &path,
                format!(
                    "workload {qualified} has peer_authentication STRICT{whence} and protocol \
                     TCP: STRICT accepts only HBONE, so the plain-TCP legs other gateways open \
                     to it would all be refused; give it protocol: HBONE, or \
                     peer_authentication: PERMISSIVE"
                ),
            ));
        }

        for (k, v) in &self.labels {
            let bad = |s: &str| {
                s.is_empty()
                    || s.len() > 63
                    || !s
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
            };
            if bad(k) || (bad(v) && !v.is_empty()) {
                return Err(at.error(
                    &format!("{prefix}.labels.{k}"),
                    format!(
                        "label {k:?}: {v:?} of workload {qualified} is not a valid label: keys and \
                         values are up to 63 letters, digits, '-', '_', '.' or '/'"
                    ),
                ));
            }
        }

        Ok(Workload {
            name: self.name,
            namespace: self.namespace,
            service_account: self.service_account,
            node: self.node,
            addresses,
            protocol,
            ports: self.ports,
            peer_authentication,
            labels: self.labels,
        })
    }
}

impl UnknownSource {
    /// The YAML spelling.
    pub fn name(self) -> &'static str {
        match self {
            UnknownSource::Pass => "pass",
            UnknownSource::Reject => "reject",
            UnknownSource::Hold => "hold",
        }
    }
}

/// Parses `pod_cidrs`: valid ranges with zero host bits, none twice, at most
/// [`MAX_POD_CIDRS`].
fn pod_cidrs(raw: &[String], at: &Locator<'_>) -> Result<Vec<Cidr>, ConfigError> {
    if raw.len() > MAX_POD_CIDRS {
        return Err(at.error(
            "pod_cidrs",
            format!(
                "pod_cidrs lists {} ranges, more than the {MAX_POD_CIDRS} the XDP program \
                 holds: merge adjacent ranges",
                raw.len()
            ),
        ));
    }
    let mut seen = FirstSeen::default();
    let mut out = Vec::with_capacity(raw.len());
    for (j, text) in raw.iter().enumerate() {
        let path = format!("pod_cidrs[{j}]");
        let cidr: Cidr = text.parse().map_err(|reason| at.error(&path, reason))?;
        if let Some(line) = seen.earlier_line(cidr, &path, at) {
            return Err(at.error(
                &path,
                format!("duplicate pod CIDR {cidr}: already listed at line {line}"),
            ));
        }
        out.push(cidr);
    }
    Ok(out)
}

/// Checks the list at `{prefix}.ports`: no port 0, no port twice. `any` is how this
/// list says "any port" (for the port-0 message).
fn check_ports(
    ports: &[u16],
    prefix: &str,
    any: &str,
    at: &Locator<'_>,
) -> Result<(), ConfigError> {
    let mut seen = FirstSeen::default();
    for (j, &port) in ports.iter().enumerate() {
        let path = format!("{prefix}.ports[{j}]");
        if port == 0 {
            return Err(at.error(
                &path,
                format!("port 0 is not a valid port: use 1-65535, or {any} to mean any port"),
            ));
        }
        if let Some(line) = seen.earlier_line(port, &path, at) {
            return Err(at.error(
                &path,
                format!("duplicate port {port}: already listed at line {line}"),
            ));
        }
    }
    Ok(())
}

/// Parses a non-empty list of unicast addresses at `path`, claiming each for
/// `owner` in `book`.
fn addresses(
    raw: &[String],
    path: &str,
    empty_reason: &str,
    owner: &str,
    at: &Locator<'_>,
    book: &mut AddressBook,
) -> Result<Vec<IpAddr>, ConfigError> {
    if raw.is_empty() {
        return Err(at.error(path, empty_reason));
    }
    let mut out = Vec::with_capacity(raw.len());
    for (j, text) in raw.iter().enumerate() {
        let item = format!("{path}[{j}]");
        let ip = parse_unicast(text).map_err(|reason| at.error(&item, reason))?;
        book.claim(ip, owner, &item, at)?;
        out.push(ip);
    }
    Ok(out)
}

fn parse_unicast(text: &str) -> Result<IpAddr, String> {
    let ip: IpAddr = text.parse().map_err(|_| {
        format!("invalid IP address {text:?}: expected an IPv4 or IPv6 address such as 198.18.1.2 or fd00::2")
    })?;
    let kind = match ip {
        _ if ip.is_unspecified() => Some("the unspecified address"),
        _ if ip.is_multicast() => Some("a multicast address"),
        IpAddr::V4(v4) if v4.is_broadcast() => Some("the broadcast address"),
        _ => None,
    };
    match kind {
        Some(kind) => Err(format!(
            "address {ip} is {kind}; workload and gateway addresses must be unicast"
        )),
        None => Ok(ip),
    }
}

/// Where each key was first seen, by path: duplicates say "already ... at line N",
/// and that line is only looked up when there is a duplicate.
struct FirstSeen<K>(HashMap<K, String>);

impl<K> Default for FirstSeen<K> {
    fn default() -> Self {
        Self(HashMap::new())
    }
}

impl<K: Eq + Hash> FirstSeen<K> {
    /// Records `key` at `path`; when it was seen before, the line it was first seen on.
    fn earlier_line(&mut self, key: K, path: &str, at: &Locator<'_>) -> Option<usize> {
        match self.0.entry(key) {
            Entry::Occupied(first) => Some(at.line(first.get())),
            Entry::Vacant(slot) => {
                slot.insert(path.to_owned());
                None
            }
        }
    }

    /// [`earlier_line`](Self::earlier_line) for names that must be unique: a second
    /// definition is refused at `path` as `<duplicate>: already defined at line N`.
    fn define(
        &mut self,
        key: K,
        path: &str,
        at: &Locator<'_>,
        duplicate: impl FnOnce() -> String,
    ) -> Result<(), ConfigError> {
        match self.earlier_line(key, path, at) {
            Some(line) => Err(at.error(
                path,
                format!("{}: already defined at line {line}", duplicate()),
            )),
            None => Ok(()),
        }
    }
}

/// Every address seen so far, with who owns it and at which path.
#[derive(Default)]
struct AddressBook {
    owners: HashMap<IpAddr, (String, String)>,
}

impl AddressBook {
    fn claim(
        &mut self,
        ip: IpAddr,
        owner: &str,
        path: &str,
        at: &Locator<'_>,
    ) -> Result<(), ConfigError> {
        match self.owners.entry(ip) {
            Entry::Occupied(first) => {
                let (first_owner, first_path) = first.get();
                Err(at.error(
                    path,
                    format!(
                        "duplicate address {ip}: already used by {first_owner} at line {}",
                        at.line(first_path)
                    ),
                ))
            }
            Entry::Vacant(slot) => {
                slot.insert((owner.to_owned(), path.to_owned()));
                Ok(())
            }
        }
    }
}

/// Checks the Kubernetes DNS-1123 label rule; the error says what breaks it.
fn dns1123_label(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("it is empty".to_owned());
    }
    if s.len() > 63 {
        return Err(format!("it is {} characters long", s.chars().count()));
    }
    if let Some(c) = s
        .chars()
        .find(|c| !matches!(c, 'a'..='z' | '0'..='9' | '-'))
    {
        return Err(format!("{c:?} is not allowed"));
    }
    if s.starts_with('-') {
        return Err("it starts with '-'".to_owned());
    }
    if s.ends_with('-') {
        return Err("it ends with '-'".to_owned());
    }
    Ok(())
}

fn label_reason(what: &str, value: &str, problem: &str) -> String {
    format!(
        "{what} {value:?} is not a valid DNS-1123 label: {problem}; a label is 1-63 lowercase \
         letters, digits or '-', starting and ending with a letter or digit"
    )
}

// ---------------------------------------------------------------------------
// Where each YAML node starts.

/// A 1-based line and column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Pos {
    line: usize,
    column: usize,
}

/// Turns paths into positions for errors found after serde succeeded. The text
/// is indexed at the first question, so only a refused file is read twice.
struct Locator<'a> {
    file: &'a Path,
    text: &'a str,
    index: OnceCell<PositionIndex>,
}

impl<'a> Locator<'a> {
    fn new(file: &'a Path, text: &'a str) -> Self {
        Self {
            file,
            text,
            index: OnceCell::new(),
        }
    }

    fn pos(&self, path: &str) -> Pos {
        self.index
            .get_or_init(|| PositionIndex::build(self.text))
            .get(path)
    }

    fn line(&self, path: &str) -> usize {
        self.pos(path).line
    }

    fn error(&self, path: &str, reason: impl Into<String>) -> ConfigError {
        let Pos { line, column } = self.pos(path);
        ConfigError {
            file: self.file.to_owned(),
            line,
            column,
            reason: reason.into(),
        }
    }
}

/// The start of every node of the first document, by path: `""` for the
/// root, `nodes[0]`, `workloads[1].addresses[0]`, as serde_norway spells paths.
#[derive(Default)]
struct PositionIndex {
    by_path: HashMap<String, Pos>,
}

impl PositionIndex {
    /// Best effort: a text the event parser stops on early (it only sees
    /// texts serde_norway accepted, but the two parsers are not the same)
    /// leaves the rest unindexed, and [`PositionIndex::get`] falls back to
    /// the nearest indexed ancestor.
    fn build(text: &str) -> Self {
        let mut builder = IndexBuilder::default();
        let mut parser = Parser::new_from_str(text);
        loop {
            match parser.next_token() {
                Ok((Event::StreamEnd | Event::DocumentEnd, _)) | Err(_) => break,
                Ok((event, mark)) => builder.on_event(event, mark),
            }
        }
        builder.index
    }

    /// The position of `path`, or of its nearest indexed ancestor, or 1:1.
    fn get(&self, path: &str) -> Pos {
        let mut path = path;
        loop {
            if let Some(pos) = self.by_path.get(path) {
                return *pos;
            }
            if path.is_empty() {
                return Pos { line: 1, column: 1 };
            }
            path = match path.rfind(['.', '[']) {
                Some(cut) => &path[..cut],
                None => "",
            };
        }
    }
}

enum Frame {
    /// `key` is `None` while the next node is a key. `path` is `None` inside
    /// a complex (non-scalar) key, which no config path can name.
    Map {
        path: Option<String>,
        key: Option<String>,
    },
    Seq {
        path: Option<String>,
        next: usize,
    },
}

#[derive(Default)]
struct IndexBuilder {
    stack: Vec<Frame>,
    index: PositionIndex,
}

impl IndexBuilder {
    fn on_event(&mut self, event: Event, mark: Marker) {
        match event {
            Event::Scalar(value, ..) => {
                let path = self.next_path(Some(&value));
                self.record(path, mark);
            }
            Event::Alias(_) => {
                let path = self.next_path(None);
                self.record(path, mark);
            }
            Event::MappingStart(..) => {
                let path = self.next_path(None);
                self.record(path.clone(), mark);
                self.stack.push(Frame::Map { path, key: None });
            }
            Event::SequenceStart(..) => {
                let path = self.next_path(None);
                self.record(path.clone(), mark);
                self.stack.push(Frame::Seq { path, next: 0 });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
            }
            _ => {}
        }
    }

    /// The path of the node starting now; `None` for a mapping key (whose
    /// scalar text, if any, becomes the pending key) and inside complex keys.
    fn next_path(&mut self, scalar: Option<&str>) -> Option<String> {
        match self.stack.last_mut() {
            None => Some(String::new()),
            Some(Frame::Seq { path, next }) => {
                let i = *next;
                *next += 1;
                path.as_ref().map(|p| format!("{p}[{i}]"))
            }
            Some(Frame::Map { path, key }) => match key.take() {
                Some(k) => path
                    .as_ref()
                    .map(|p| if p.is_empty() { k } else { format!("{p}.{k}") }),
                None => {
                    *key = Some(scalar.unwrap_or("?").to_owned());
                    None
                }
            },
        }
    }

    fn record(&mut self, path: Option<String>, mark: Marker) {
        if let Some(path) = path {
            self.index.by_path.entry(path).or_insert(Pos {
                line: mark.line(),
                column: mark.col() + 1,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs steps 1 and 2 on `text`; whether step 3 indexed it.
    fn indexed(text: &str) -> bool {
        let raw: RawConfig = serde_norway::from_str(text).unwrap();
        let at = Locator::new(Path::new("inline.yaml"), text);
        let _ = raw.into_domain(&at);
        at.index.get().is_some()
    }

    #[test]
    fn only_a_refused_file_is_indexed() {
        assert!(!indexed(EMBEDDED_DEMO), "a valid file is parsed once");
        let bad = EMBEDDED_DEMO.replacen("name: client", "name: Client", 1);
        assert_ne!(bad, EMBEDDED_DEMO);
        assert!(indexed(&bad), "a refusal names a position");
    }
}
