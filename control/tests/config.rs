//! The mesh config model: exact values for the demo file, exact messages
//! (file, line, column, reason) for each kind of bad input, and no panic on
//! garbage.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use xdpmesh_control::config::{
    Cidr, ConfigError, MeshConfig, Node, PeerAuthentication, Policy, PolicyAction, PolicySource,
    Protocol, ServicePort, TrustDomain, UnknownSource, Workload,
};

const DEMO: &str = include_str!("../testdata/demo.yaml");

fn testdata(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("testdata")
        .join(rel)
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// The demo text with exactly one occurrence of `from` replaced; lines stay
/// those of `testdata/demo.yaml` unless `to` adds some.
fn demo_with(from: &str, to: &str) -> String {
    assert_eq!(
        DEMO.matches(from).count(),
        1,
        "{from:?} must occur once in the demo"
    );
    DEMO.replacen(from, to, 1)
}

fn parse(text: &str) -> Result<MeshConfig, ConfigError> {
    MeshConfig::from_str_named(text, Path::new("inline.yaml"))
}

/// The whole Display string of the error `text` produces.
fn error(text: &str) -> String {
    match parse(text) {
        Ok(cfg) => panic!("expected an error, got {cfg:?}"),
        Err(e) => e.to_string(),
    }
}

fn expected_demo() -> MeshConfig {
    MeshConfig {
        trust_domain: TrustDomain::new("cluster.local").unwrap(),
        cluster_name: "Kubernetes".into(),
        unknown_source: UnknownSource::Pass,
        unknown_source_hold_ms: 2000,
        pod_cidrs: vec![],
        peer_authentication: PeerAuthentication::Permissive,
        nodes: vec![
            Node {
                name: "node-a".into(),
                gateway_addresses: vec![ip("198.18.0.1")],
            },
            Node {
                name: "node-b".into(),
                gateway_addresses: vec![ip("198.18.0.2")],
            },
        ],
        workloads: vec![
            Workload {
                name: "client".into(),
                namespace: "default".into(),
                service_account: "client".into(),
                node: "node-a".into(),
                addresses: vec![ip("198.18.1.2")],
                protocol: Protocol::Tcp,
                ports: vec![],
                peer_authentication: PeerAuthentication::Permissive,
                labels: Default::default(),
            },
            Workload {
                name: "server".into(),
                namespace: "default".into(),
                service_account: "server".into(),
                node: "node-b".into(),
                addresses: vec![ip("198.18.2.2")],
                protocol: Protocol::Tcp,
                ports: vec![80, 5201, 7000],
                peer_authentication: PeerAuthentication::Permissive,
                labels: Default::default(),
            },
        ],
        policies: vec![],
        services: vec![],
    }
}

// ---------------------------------------------------------------------------
// Good input.

#[test]
fn demo_file_parses_to_exact_values() {
    let cfg = MeshConfig::from_path(&testdata("demo.yaml")).unwrap();
    assert_eq!(cfg, expected_demo());
}

#[test]
fn embedded_default_equals_demo_file() {
    let from_file = MeshConfig::from_path(&testdata("demo.yaml")).unwrap();
    assert_eq!(MeshConfig::embedded_default(), from_file);
}

#[test]
fn lookups_by_node() {
    let cfg = MeshConfig::embedded_default();
    let on_a: Vec<&str> = cfg
        .workloads_on("node-a")
        .map(|w| w.name.as_str())
        .collect();
    assert_eq!(on_a, ["client"]);
    let on_b: Vec<&str> = cfg
        .workloads_on("node-b")
        .map(|w| w.name.as_str())
        .collect();
    assert_eq!(on_b, ["server"]);
    assert_eq!(cfg.workloads_on("node-z").count(), 0);
    assert_eq!(cfg.node("node-b"), Some(&expected_demo().nodes[1]));
    assert_eq!(cfg.node("node-z"), None);
}

#[test]
fn spiffe_id_is_exact() {
    let cfg = MeshConfig::embedded_default();
    assert_eq!(
        cfg.workloads[1].spiffe_id(&cfg.trust_domain),
        "spiffe://cluster.local/ns/default/sa/server"
    );
    let td = TrustDomain::new("example.org").unwrap();
    assert_eq!(
        cfg.workloads[0].spiffe_id(&td),
        "spiffe://example.org/ns/default/sa/client"
    );
    assert_eq!(cfg.workloads[0].qualified_name(), "default/client");
}

#[test]
fn unknown_source_defaults_to_pass() {
    let text = demo_with(
        "unknown_source: pass          # pass | reject | hold   (connections from a pod_cidrs address no workload claims; default pass)\n",
        "",
    );
    assert_eq!(parse(&text).unwrap().unknown_source, UnknownSource::Pass);
    let with_ranges = |mode: &str| {
        format!(
            "{}pod_cidrs: [198.18.1.0/24, \"fd00::/64\"]\n",
            demo_with("unknown_source: pass ", &format!("unknown_source: {mode} "))
        )
    };
    let cfg = parse(&with_ranges("reject")).unwrap();
    assert_eq!(cfg.unknown_source, UnknownSource::Reject);
    assert_eq!(
        cfg.pod_cidrs,
        [
            Cidr {
                addr: ip("198.18.1.0"),
                prefix: 24
            },
            Cidr {
                addr: ip("fd00::"),
                prefix: 64
            }
        ]
    );
    assert_eq!(cfg.pod_cidrs[1].to_string(), "fd00::/64");
    let cfg = parse(&with_ranges("hold")).unwrap();
    assert_eq!(
        (cfg.unknown_source, cfg.unknown_source_hold_ms),
        (UnknownSource::Hold, 2000)
    );
    let cfg = parse(&format!(
        "{}unknown_source_hold_ms: 500\n",
        with_ranges("hold")
    ))
    .unwrap();
    assert_eq!(cfg.unknown_source_hold_ms, 500);
}

#[test]
fn unknown_source_refusals() {
    assert_eq!(
        error(&demo_with(
            "unknown_source: pass ",
            "unknown_source: reject "
        )),
        "inline.yaml:3:17: unknown_source reject needs pod_cidrs: a source is unknown only \
         inside a pod range that no workload claims; list the pod ranges in pod_cidrs"
    );
    assert_eq!(
        error(&demo_with("unknown_source: pass ", "unknown_source: hold ")),
        "inline.yaml:3:17: unknown_source hold needs pod_cidrs: a source is unknown only \
         inside a pod range that no workload claims; list the pod ranges in pod_cidrs"
    );
    assert_eq!(
        error(&format!("{DEMO}unknown_source_hold_ms: 500\n")),
        "inline.yaml:23:25: unknown_source_hold_ms applies only to unknown_source hold, and \
         this file says pass: remove it, or set unknown_source: hold"
    );
    let hold = format!(
        "{}pod_cidrs: [198.18.1.0/24]\n",
        demo_with("unknown_source: pass ", "unknown_source: hold ")
    );
    for ms in ["0", "30001"] {
        assert_eq!(
            error(&format!("{hold}unknown_source_hold_ms: {ms}\n")),
            format!(
                "inline.yaml:24:25: unknown_source_hold_ms {ms} is out of range: hold a SYN \
                 for 1 to 30000 ms"
            )
        );
    }
}

/// The demo with the server labelled `app: echo`, a second echo workload on node-a and
/// `services` appended.
fn with_services(services: &str) -> String {
    let text = demo_with(
        "    ports: [80, 5201, 7000]",
        "    ports: [80, 5201, 7000]\n    labels: {app: echo}\n  - name: echo-2\n    \
         namespace: default\n    service_account: echo\n    node: node-a\n    addresses: \
         [198.18.1.4]\n    labels: {app: echo, tier: b}",
    );
    format!("{text}\nservices:\n{services}")
}

#[test]
fn services_select_endpoints_by_labels_or_names() {
    let cfg = parse(&with_services(
        "  - name: echo\n    namespace: default\n    addresses: [198.18.10.1, \"fd00::10:1\"]\n    \
         ports: [{port: 80, targetPort: 7000}, {port: 7000}]\n    selector: {app: echo}\n  \
         - name: web\n    namespace: default\n    hostname: web.example.org\n    addresses: \
         [198.18.10.2]\n    ports: [{port: 80}]\n    endpoints: [echo-2]\n  - name: none\n    \
         namespace: default\n    addresses: [198.18.10.3]\n    ports: [{port: 80}]\n    \
         selector: {app: nothing}\n",
    ))
    .unwrap();
    assert_eq!(cfg.services.len(), 3);
    let echo = &cfg.services[0];
    assert_eq!(echo.hostname, "echo.default.svc.cluster.local");
    assert_eq!(echo.addresses, [ip("198.18.10.1"), ip("fd00::10:1")]);
    assert_eq!(
        echo.ports,
        [
            ServicePort {
                port: 80,
                target_port: 7000
            },
            ServicePort {
                port: 7000,
                target_port: 7000
            }
        ]
    );
    assert_eq!(
        echo.endpoints,
        [1, 2],
        "server and echo-2, in workload order"
    );
    assert_eq!(cfg.services[1].hostname, "web.example.org");
    assert_eq!(cfg.services[1].endpoints, [2]);
    assert!(
        cfg.services[2].endpoints.is_empty(),
        "a selector may match nothing"
    );
    assert_eq!(
        cfg.workloads[2].labels.get("tier").map(String::as_str),
        Some("b")
    );
}

#[test]
fn service_refusals() {
    let svc = |body: &str| {
        error(&with_services(&format!(
            "  - name: echo\n    namespace: default\n{body}"
        )))
    };
    assert_eq!(
        svc("    addresses: [198.18.2.2]\n    ports: [{port: 80}]\n    selector: {app: echo}\n"),
        "inline.yaml:34:17: duplicate address 198.18.2.2: already used by workload default/server at line 20"
    );
    assert_eq!(
        svc("    addresses: [198.18.10.1]\n    ports: [{port: 80}]\n"),
        "inline.yaml:32:11: service default/echo has neither a selector nor endpoints: give it a \
         selector (workload labels) or endpoints (workload names)"
    );
    assert_eq!(
        svc("    addresses: [198.18.10.1]\n    ports: [{port: 80}]\n    selector: {app: echo}\n    endpoints: [server]\n"),
        "inline.yaml:37:16: service default/echo has both a selector and endpoints: select its \
         workloads by labels or list them by name, not both"
    );
    assert_eq!(
        svc("    addresses: [198.18.10.1]\n    ports: [{port: 80}]\n    endpoints: [nope]\n"),
        "inline.yaml:36:17: endpoint default/nope of service default/echo is not in workloads: \
         name a workload of namespace default"
    );
    assert_eq!(
        svc("    addresses: [198.18.10.1]\n    ports: [{port: 80, targetPort: 0}]\n    selector: {app: echo}\n"),
        "inline.yaml:35:36: targetPort 0 of service default/echo is not a valid port: use 1-65535"
    );
    assert_eq!(
        svc("    addresses: [198.18.10.1]\n    ports: [{port: 80}, {port: 80}]\n    selector: {app: echo}\n"),
        "inline.yaml:35:32: duplicate port 80 of service default/echo: already listed at line 35"
    );
    assert_eq!(
        svc("    addresses: [198.18.10.1]\n    ports: []\n    selector: {app: echo}\n"),
        "inline.yaml:35:12: service default/echo has no ports: list at least one port (and its targetPort)"
    );
    assert_eq!(
        svc("    addresses: [198.18.10.1]\n    ports: [{port: 80}]\n    selector: {}\n"),
        "inline.yaml:36:15: the selector of service default/echo is empty, which would select \
         every workload of the namespace: name at least one label"
    );
    assert_eq!(
        svc("    hostname: \"bad_host\"\n    addresses: [198.18.10.1]\n    ports: [{port: 80}]\n    selector: {app: echo}\n"),
        "inline.yaml:34:15: hostname \"bad_host\" of service default/echo is not a DNS name: \
         dot-separated DNS-1123 labels, at most 253 characters"
    );
}

#[test]
fn cluster_name_defaults_and_is_checked() {
    assert_eq!(parse(DEMO).unwrap().cluster_name, "Kubernetes");
    let named = format!("{DEMO}cluster_name: east-1.prod_a\n");
    assert_eq!(parse(&named).unwrap().cluster_name, "east-1.prod_a");
    assert_eq!(
        error(&format!("{DEMO}cluster_name: \"a,b\"\n")),
        "inline.yaml:23:15: cluster_name \"a,b\" is not valid: ',' is not allowed; it goes \
         into HBONE baggage, so use 1-63 letters, digits, '.', '-' and '_'"
    );
    assert_eq!(
        error(&format!("{DEMO}cluster_name: \"\"\n")),
        "inline.yaml:23:15: cluster_name \"\" is not valid: it is empty; it goes into HBONE \
         baggage, so use 1-63 letters, digits, '.', '-' and '_'"
    );
}

#[test]
fn pod_cidr_refusals() {
    let with = |list: &str| error(&format!("{DEMO}pod_cidrs: [{list}]\n"));
    assert_eq!(
        with("198.18.1.0"),
        "inline.yaml:23:13: invalid CIDR \"198.18.1.0\": expected \
         <address>/<prefix length>, such as 198.18.1.0/24 or fd00::/64"
    );
    assert_eq!(
        with("10.0.0.0/8, 198.18.1.0/x"),
        "inline.yaml:23:25: invalid CIDR \"198.18.1.0/x\": expected \
         <address>/<prefix length>, such as 198.18.1.0/24 or fd00::/64"
    );
    assert_eq!(
        with("198.18.1.0/33"),
        "inline.yaml:23:13: invalid CIDR \"198.18.1.0/33\": prefix length 33 \
         is out of range for IPv4 (0-32)"
    );
    assert_eq!(
        with("\"fd00::/129\""),
        "inline.yaml:23:13: invalid CIDR \"fd00::/129\": prefix length 129 \
         is out of range for IPv6 (0-128)"
    );
    assert_eq!(
        with("198.18.1.5/24"),
        "inline.yaml:23:13: CIDR \"198.18.1.5/24\" has host bits set: write \
         198.18.1.0/24"
    );
    assert_eq!(
        error(&format!(
            "{DEMO}pod_cidrs:\n  - 198.18.1.0/24\n  - 198.18.2.0/24\n  - 198.18.1.0/24\n"
        )),
        "inline.yaml:26:5: duplicate pod CIDR 198.18.1.0/24: already listed at line 24"
    );
    let many: Vec<String> = (0..257)
        .map(|i| format!("10.{}.{}.0/24", i / 256, i % 256))
        .collect();
    assert_eq!(
        with(&many.join(", ")),
        "inline.yaml:23:12: pod_cidrs lists 257 ranges, more than the 256 the XDP program \
         holds: merge adjacent ranges"
    );
}

#[test]
fn peer_authentication_per_workload_and_mesh_wide() {
    // The mesh-wide default, and a workload's own setting over it.
    let text = format!(
        "{}peer_authentication: STRICT\n",
        demo_with("protocol: TCP\n    ports", "protocol: HBONE\n    ports").replacen(
            "protocol: TCP   ",
            "protocol: HBONE ",
            1
        )
    );
    let cfg = parse(&text).unwrap();
    assert_eq!(cfg.peer_authentication, PeerAuthentication::Strict);
    assert!(cfg
        .workloads
        .iter()
        .all(|w| w.peer_authentication == PeerAuthentication::Strict));
    let text = demo_with(
        "protocol: TCP\n    ports",
        "protocol: HBONE\n    peer_authentication: STRICT\n    ports",
    );
    let cfg = parse(&text).unwrap();
    assert_eq!(cfg.peer_authentication, PeerAuthentication::Permissive);
    assert_eq!(
        (
            cfg.workloads[0].peer_authentication,
            cfg.workloads[1].peer_authentication
        ),
        (PeerAuthentication::Permissive, PeerAuthentication::Strict)
    );
    assert_eq!(PeerAuthentication::Strict.to_string(), "STRICT");
}

#[test]
fn strict_peer_authentication_refuses_plain_tcp_workloads() {
    let strict_server = demo_with(
        "protocol: TCP\n    ports",
        "protocol: TCP\n    peer_authentication: STRICT\n    ports",
    );
    assert_eq!(
        error(&strict_server),
        "inline.yaml:22:26: workload default/server has peer_authentication STRICT and \
         protocol TCP: STRICT accepts only HBONE, so the plain-TCP legs other gateways open to \
         it would all be refused; give it protocol: HBONE, or peer_authentication: PERMISSIVE"
    );
    assert_eq!(
        error(&format!("{DEMO}peer_authentication: STRICT\n")),
        "inline.yaml:15:15: workload default/client has peer_authentication STRICT (the \
         mesh-wide default) and protocol TCP: STRICT accepts only HBONE, so the plain-TCP legs \
         other gateways open to it would all be refused; give it protocol: HBONE, or \
         peer_authentication: PERMISSIVE"
    );
    assert_eq!(
        error(&demo_with("protocol: TCP   ", "peer_authentication: DUAL")),
        "inline.yaml:15:26: workloads[0].peer_authentication: unknown variant `DUAL`, expected \
         `PERMISSIVE` or `STRICT`"
    );
}

#[test]
fn protocol_defaults_to_tcp() {
    let text = demo_with(
        "    protocol: TCP             # TCP | HBONE (default TCP)\n",
        "",
    );
    let cfg = parse(&text).unwrap();
    assert_eq!(cfg.workloads[0].protocol, Protocol::Tcp);
    let text = demo_with("protocol: TCP   ", "protocol: HBONE ");
    let cfg = parse(&text).unwrap();
    assert_eq!(cfg.workloads[0].protocol, Protocol::Hbone);
    assert_eq!(cfg.workloads[1].protocol, Protocol::Tcp);
}

#[test]
fn ipv6_addresses_and_empty_lists_of_nodes_and_workloads() {
    let text = demo_with("[198.18.2.2]", "[fd00::2, \"198.18.2.3\"]");
    let cfg = parse(&text).unwrap();
    assert_eq!(
        cfg.workloads[1].addresses,
        [ip("fd00::2"), ip("198.18.2.3")]
    );

    let cfg = parse("trust_domain: td_1.example-org\n").unwrap();
    assert_eq!(cfg.trust_domain.as_str(), "td_1.example-org");
    assert_eq!(cfg.trust_domain.to_string(), "td_1.example-org");
    assert_eq!(cfg.unknown_source, UnknownSource::Pass);
    assert!(cfg.nodes.is_empty());
    assert!(cfg.workloads.is_empty());
}

#[test]
fn trust_domain_rules() {
    assert_eq!(
        TrustDomain::new("").unwrap_err().to_string(),
        "\"\" is not a valid SPIFFE trust domain: it is empty; use lowercase letters, digits, '.', '-' and '_'"
    );
    assert_eq!(
        "Cluster.local".parse::<TrustDomain>().unwrap_err().to_string(),
        "\"Cluster.local\" is not a valid SPIFFE trust domain: 'C' is not allowed; use lowercase letters, digits, '.', '-' and '_'"
    );
    assert_eq!(
        "a.b-c_d9".parse::<TrustDomain>().unwrap().as_str(),
        "a.b-c_d9"
    );
}

// ---------------------------------------------------------------------------
// The bad files a CLI test can use.

fn file_error(rel: &str) -> ConfigError {
    MeshConfig::from_path(&testdata(rel)).unwrap_err()
}

#[test]
fn bad_file_unknown_field() {
    let path = testdata("bad/unknown-field.yaml");
    let e = file_error("bad/unknown-field.yaml");
    assert_eq!(
        (e.file.as_path(), e.line, e.column),
        (path.as_path(), 15, 5)
    );
    assert_eq!(
        e.to_string(),
        format!(
            "{}:15:5: workloads[0]: unknown field `protocl`, expected one of `name`, `namespace`, \
             `service_account`, `node`, `addresses`, `protocol`, `ports`, `peer_authentication`, `labels`",
            path.display()
        )
    );
}

#[test]
fn bad_file_duplicate_address() {
    let path = testdata("bad/duplicate-address.yaml");
    assert_eq!(
        file_error("bad/duplicate-address.yaml").to_string(),
        format!(
            "{}:20:17: duplicate address 198.18.1.2: already used by workload default/client at line 14",
            path.display()
        )
    );
}

#[test]
fn bad_file_unknown_node() {
    let path = testdata("bad/unknown-node.yaml");
    assert_eq!(
        file_error("bad/unknown-node.yaml").to_string(),
        format!(
            "{}:19:11: workload default/server is on node \"node-z\", which is not in nodes (known: node-a, node-b)",
            path.display()
        )
    );
}

#[test]
fn missing_file_says_what_to_check() {
    let path = testdata("no-such-file.yaml");
    let e = MeshConfig::from_path(&path).unwrap_err();
    assert_eq!((e.line, e.column), (0, 0));
    assert_eq!(
        e.to_string(),
        format!(
            "{}:0:0: cannot read the mesh config: no such file; check the path",
            path.display()
        )
    );
}

#[test]
fn non_utf8_file_says_what_to_check() {
    let path =
        std::env::temp_dir().join(format!("xdpmesh-config-test-{}.yaml", std::process::id()));
    std::fs::write(&path, b"trust_domain: \xff\xfe\n").unwrap();
    let e = MeshConfig::from_path(&path).unwrap_err();
    std::fs::remove_file(&path).unwrap();
    assert_eq!(
        e.to_string(),
        format!(
            "{}:0:0: cannot read the mesh config: the file is not UTF-8 text; check that it is the YAML mesh config",
            path.display()
        )
    );
}

// ---------------------------------------------------------------------------
// What serde catches: syntax, unknown fields, types, enum values.

#[test]
fn syntax_error() {
    assert_eq!(
        error("trust_domain: x\n  nodes: []\n"),
        "inline.yaml:2:8: mapping values are not allowed in this context"
    );
}

#[test]
fn unknown_top_level_field() {
    assert_eq!(
        error("trust_domain: x\nworkload: []\n"),
        "inline.yaml:2:1: unknown field `workload`, expected one of `trust_domain`, \
         `cluster_name`, `unknown_source`, `unknown_source_hold_ms`, `pod_cidrs`, \
         `peer_authentication`, `nodes`, `workloads`, `policies`, `services`"
    );
}

#[test]
fn missing_fields() {
    assert_eq!(error(""), "inline.yaml:1:1: missing field `trust_domain`");
    assert_eq!(
        error(&demo_with(
            "    namespace: default\n    service_account: server\n",
            "    service_account: server\n"
        )),
        "inline.yaml:16:5: workloads[1]: missing field `namespace`"
    );
}

#[test]
fn wrong_types() {
    assert_eq!(
        error(&demo_with("[80, 5201, 7000]", "[80, http]")),
        "inline.yaml:22:17: workloads[1].ports[1]: invalid type: string \"http\", expected u16"
    );
    assert_eq!(
        error(&demo_with("[80, 5201, 7000]", "[80, 70000]")),
        "inline.yaml:22:17: workloads[1].ports[1]: invalid value: integer `70000`, expected u16"
    );
    assert_eq!(
        error(&demo_with("[198.18.2.2]", "198.18.2.2")),
        "inline.yaml:20:16: workloads[1].addresses: invalid type: string \"198.18.2.2\", expected a sequence"
    );
    assert_eq!(
        error("- trust_domain: x\n"),
        "inline.yaml:1:1: invalid type: sequence, expected a mesh config mapping"
    );
}

#[test]
fn bad_enum_values() {
    assert_eq!(
        error(&demo_with("protocol: TCP   ", "protocol: UDP   ")),
        "inline.yaml:15:15: workloads[0].protocol: unknown variant `UDP`, expected `TCP` or `HBONE`"
    );
    assert_eq!(
        error(&demo_with("unknown_source: pass ", "unknown_source: drop ")),
        "inline.yaml:3:17: unknown_source: unknown variant `drop`, expected one of `pass`, \
         `reject`, `hold`"
    );
}

// ---------------------------------------------------------------------------
// What validation catches, each at the offending node.

#[test]
fn bad_ip_address() {
    assert_eq!(
        error(&demo_with("[198.18.2.2]", "[198.18.2.2, 198.18.2.x]")),
        "inline.yaml:20:29: invalid IP address \"198.18.2.x\": expected an IPv4 or IPv6 \
         address such as 198.18.1.2 or fd00::2"
    );
    assert_eq!(
        error(&demo_with("[198.18.0.1]", "[node-a.local]")),
        "inline.yaml:6:25: invalid IP address \"node-a.local\": expected an IPv4 or IPv6 \
         address such as 198.18.1.2 or fd00::2"
    );
}

#[test]
fn duplicate_address_within_one_workload() {
    assert_eq!(
        error(&demo_with(
            "    addresses: [198.18.2.2]\n",
            "    addresses:\n      - 198.18.2.2\n      - 198.18.2.2\n"
        )),
        "inline.yaml:22:9: duplicate address 198.18.2.2: already used by workload default/server at line 21"
    );
}

#[test]
fn workload_address_that_is_a_gateway_address() {
    assert_eq!(
        error(&demo_with("[198.18.1.2]", "[198.18.0.2]")),
        "inline.yaml:14:17: duplicate address 198.18.0.2: already used by node node-b as a \
         gateway address at line 8"
    );
}

#[test]
fn gateway_address_shared_by_two_nodes() {
    assert_eq!(
        error(&demo_with("[198.18.0.2]", "[198.18.0.1]")),
        "inline.yaml:8:25: duplicate address 198.18.0.1: already used by node node-a as a \
         gateway address at line 6"
    );
}

#[test]
fn duplicate_workload() {
    assert_eq!(
        error(&demo_with("  - name: server\n", "  - name: client\n")),
        "inline.yaml:16:11: duplicate workload default/client: already defined at line 10"
    );
    // Same name in another namespace is another workload.
    let text = demo_with(
        "  - name: server\n    namespace: default\n",
        "  - name: client\n    namespace: other\n",
    );
    assert_eq!(
        parse(&text).unwrap().workloads[1].qualified_name(),
        "other/client"
    );
}

#[test]
fn duplicate_node_name() {
    assert_eq!(
        error(&demo_with("  - name: node-b\n", "  - name: node-a\n")),
        "inline.yaml:7:11: duplicate node name \"node-a\": already defined at line 5"
    );
}

#[test]
fn workload_on_unknown_node_with_no_nodes() {
    assert_eq!(
        error("trust_domain: x\nworkloads:\n  - {name: a, namespace: b, service_account: c, node: n, addresses: [10.0.0.1]}\n"),
        "inline.yaml:3:55: workload b/a is on node \"n\", which is not in nodes (known: none)"
    );
}

const LABEL_RULE: &str =
    "a label is 1-63 lowercase letters, digits or '-', starting and ending with a letter or digit";

#[test]
fn names_must_be_dns1123_labels() {
    assert_eq!(
        error(&demo_with("  - name: client\n", "  - name: Client\n")),
        format!("inline.yaml:10:11: workload name \"Client\" is not a valid DNS-1123 label: 'C' is not allowed; {LABEL_RULE}")
    );
    assert_eq!(
        error(&demo_with(
            "    namespace: default\n    service_account: server\n",
            "    namespace: -default\n    service_account: server\n"
        )),
        format!("inline.yaml:17:16: namespace \"-default\" is not a valid DNS-1123 label: it starts with '-'; {LABEL_RULE}")
    );
    assert_eq!(
        error(&demo_with("service_account: server", "service_account: server-")),
        format!("inline.yaml:18:22: service_account \"server-\" is not a valid DNS-1123 label: it ends with '-'; {LABEL_RULE}")
    );
    assert_eq!(
        error(&demo_with("service_account: server", "service_account: \"\"")),
        format!("inline.yaml:18:22: service_account \"\" is not a valid DNS-1123 label: it is empty; {LABEL_RULE}")
    );
    let long = "a".repeat(64);
    assert_eq!(
        error(&demo_with("  - name: node-b\n", &format!("  - name: {long}\n"))),
        format!("inline.yaml:7:11: node name \"{long}\" is not a valid DNS-1123 label: it is 64 characters long; {LABEL_RULE}")
    );
    assert_eq!(
        error(&demo_with("  - name: node-b\n", "  - name: node_b\n")),
        format!("inline.yaml:7:11: node name \"node_b\" is not a valid DNS-1123 label: '_' is not allowed; {LABEL_RULE}")
    );
    // 63 characters and a leading digit are fine.
    let ok = format!("9{}", "a".repeat(62));
    assert!(parse(&demo_with(
        "  - name: client\n",
        &format!("  - name: {ok}\n")
    ))
    .is_ok());
}

#[test]
fn invalid_trust_domain() {
    assert_eq!(
        error(&demo_with(
            "trust_domain: cluster.local",
            "trust_domain: Cluster.local"
        )),
        "inline.yaml:2:15: invalid trust_domain: \"Cluster.local\" is not a valid SPIFFE trust \
         domain: 'C' is not allowed; use lowercase letters, digits, '.', '-' and '_'"
    );
}

#[test]
fn addresses_must_be_unicast() {
    let rule = "workload and gateway addresses must be unicast";
    assert_eq!(
        error(&demo_with("[198.18.2.2]", "[224.0.0.5]")),
        format!("inline.yaml:20:17: address 224.0.0.5 is a multicast address; {rule}")
    );
    assert_eq!(
        error(&demo_with("[198.18.2.2]", "[\"::\"]")),
        format!("inline.yaml:20:17: address :: is the unspecified address; {rule}")
    );
    assert_eq!(
        error(&demo_with("[198.18.0.1]", "[255.255.255.255]")),
        format!("inline.yaml:6:25: address 255.255.255.255 is the broadcast address; {rule}")
    );
}

#[test]
fn empty_address_lists() {
    assert_eq!(
        error(&demo_with("[198.18.2.2]", "[]")),
        "inline.yaml:20:16: workload default/server has no addresses: list at least one pod IP address"
    );
    assert_eq!(
        error(&demo_with("[198.18.0.1]", "[]")),
        "inline.yaml:6:24: node node-a has no gateway addresses: list at least one address \
         that other nodes can reach it on"
    );
}

#[test]
fn bad_ports() {
    assert_eq!(
        error(&demo_with("[80, 5201, 7000]", "[80, 0]")),
        "inline.yaml:22:17: port 0 is not a valid port: use 1-65535, or leave ports empty to mean any port"
    );
    assert_eq!(
        error(&demo_with(
            "    ports: [80, 5201, 7000]",
            "    ports:\n      - 80\n      - 80\n   "
        )),
        "inline.yaml:24:9: duplicate port 80: already listed at line 23"
    );
}

// ---------------------------------------------------------------------------
// Never panic.

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Any error must point inside the text (or at 1:1 for an empty one).
fn check_no_panic(text: &str) {
    if let Err(e) = parse(text) {
        let lines = text.split('\n').count().max(1);
        assert!(
            (1..=lines + 1).contains(&e.line) && e.column >= 1,
            "{e} is outside {lines} lines of {text:?}"
        );
        assert!(!e.reason.is_empty());
    }
}

#[test]
fn truncated_demo_never_panics() {
    for (cut, _) in DEMO.char_indices() {
        check_no_panic(&DEMO[..cut]);
    }
}

#[test]
fn random_bytes_never_panic() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    const ALPHABET: &[u8] = b" \n\t:-[]{},#&*!|>'\"%@`?.0123456789abcnode_";
    for round in 0..2000 {
        let len = rng.below(200);
        let bytes: Vec<u8> = (0..len)
            .map(|_| {
                if round % 2 == 0 {
                    rng.next() as u8
                } else {
                    ALPHABET[rng.below(ALPHABET.len())]
                }
            })
            .collect();
        check_no_panic(&String::from_utf8_lossy(&bytes));
    }
}

#[test]
fn mutated_demo_never_panics() {
    let mut rng = Rng(0x0123_4567_89ab_cdef);
    const PIECES: &[&str] = &[
        " ",
        "\n",
        "-",
        ":",
        "[",
        "]",
        "{",
        "}",
        ",",
        "&a ",
        "*a",
        "!!str ",
        "\"",
        "'",
        "#",
        "0",
        "::",
        "\t",
        "  - ",
        "name: x\n",
        "<<: *a\n",
        "? ",
    ];
    for _ in 0..2000 {
        let mut text = DEMO.as_bytes().to_vec();
        for _ in 0..1 + rng.below(4) {
            let at = rng.below(text.len() + 1);
            match rng.below(3) {
                0 => {
                    let piece = PIECES[rng.below(PIECES.len())].as_bytes();
                    text.splice(at..at, piece.iter().copied());
                }
                1 => {
                    let end = (at + 1 + rng.below(8)).min(text.len());
                    text.drain(at..end);
                }
                _ => {
                    if at < text.len() {
                        text[at] = rng.next() as u8;
                    }
                }
            }
        }
        check_no_panic(&String::from_utf8_lossy(&text));
    }
}

// ---------------------------------------------------------------------------
// Authorization policies.

/// The demo plus `policies` (the demo has 22 lines: the policies start at line 23).
fn demo_with_policies(policies: &str) -> String {
    assert_eq!(DEMO.lines().count(), 22);
    format!("{DEMO}policies:\n{policies}")
}

#[test]
fn policies_parse_to_exact_values() {
    let cfg = parse(&demo_with_policies(
        "  - name: echo-from-client\n\
         \x20   namespace: default\n\
         \x20   workload: server\n\
         \x20   from:\n\
         \x20     - principal: spiffe://cluster.local/ns/default/sa/client\n\
         \x20     - namespace: tools\n\
         \x20   ports: [7000]\n\
         \x20 - name: no-ssh\n\
         \x20   namespace: default\n\
         \x20   action: DENY\n\
         \x20   ports: [22]\n",
    ))
    .unwrap();
    assert_eq!(
        cfg.policies,
        vec![
            Policy {
                name: "echo-from-client".into(),
                namespace: "default".into(),
                workload: Some("server".into()),
                action: PolicyAction::Allow,
                from: vec![
                    PolicySource::Principal("cluster.local/ns/default/sa/client".into()),
                    PolicySource::Namespace("tools".into()),
                ],
                ports: vec![7000],
            },
            Policy {
                name: "no-ssh".into(),
                namespace: "default".into(),
                workload: None,
                action: PolicyAction::Deny,
                from: vec![],
                ports: vec![22],
            },
        ]
    );
}

#[test]
fn policy_errors_point_at_the_node_and_say_what_to_fix() {
    let one = |body: &str| {
        error(&demo_with_policies(&format!(
            "  - name: p\n    namespace: default\n{body}"
        )))
    };
    assert_eq!(
        one("    workload: nope\n"),
        "inline.yaml:26:15: policy default/p applies to workload default/nope, which is not in \
         workloads; name a workload of namespace default, or leave workload out to mean all of them"
    );
    assert_eq!(
        one("    from:\n      - principal: default/client\n"),
        "inline.yaml:27:20: invalid principal \"default/client\": expected \
         <trust-domain>/ns/<namespace>/sa/<service-account>, e.g. cluster.local/ns/default/sa/client"
    );
    assert_eq!(
        one("    from:\n      - principal: other.local/ns/default/sa/client\n"),
        "inline.yaml:27:20: principal \"other.local/ns/default/sa/client\" is in trust domain \
         \"other.local\", but the mesh's is \"cluster.local\": the gateways accept only peers of \
         their own trust domain, so it could never match"
    );
    assert_eq!(
        one("    from:\n      - principal: cluster.local/ns/default/sa/client\n        namespace: default\n"),
        "inline.yaml:28:20: a source has exactly one of principal (an identity) or namespace; \
         this one has both: make them two sources"
    );
    assert_eq!(
        one("    from:\n      - {}\n"),
        "inline.yaml:27:9: a source has exactly one of principal (an identity) or namespace"
    );
    assert_eq!(
        one("    ports: [80, 0]\n"),
        "inline.yaml:26:17: port 0 is not a valid port: use 1-65535, or leave ports out to mean any port"
    );
    assert_eq!(
        one("    action: PERMIT\n"),
        "inline.yaml:26:13: policies[0].action: unknown variant `PERMIT`, expected `ALLOW` or `DENY`"
    );
    assert_eq!(
        error(&demo_with_policies(
            "  - name: p\n    namespace: default\n  - name: p\n    namespace: default\n"
        )),
        "inline.yaml:26:11: duplicate policy default/p: already defined at line 24"
    );
}

#[test]
fn bad_file_policy_for_an_unknown_workload() {
    let path = testdata("bad/policy-unknown-workload.yaml");
    assert_eq!(
        file_error("bad/policy-unknown-workload.yaml").to_string(),
        format!(
            "{}:26:15: policy default/server-allow applies to workload default/sever, which is \
             not in workloads; name a workload of namespace default, or leave workload out to mean \
             all of them",
            path.display()
        )
    );
}
