//! Who may open a connection to a workload (issue 9, items 2 and 3), on the
//! four-namespace topology with real kernel peers:
//!
//! - no path reaches a workload around its policy: plaintext from a client outside the
//!   mesh meets the workload's DENY policy like everyone else;
//! - peer authentication: STRICT refuses plaintext from outside the mesh and from a
//!   mesh workload that skips HBONE, PERMISSIVE accepts it, HBONE works under both;
//! - unknown sources (an address inside `pod_cidrs` that no workload claims, an init
//!   container before its pod's workload is published): `hold` completes the
//!   connection once the address is added to the config 500 ms after its first SYN,
//!   `reject` resets it, `pass` hands it to the kernel.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use xdpmesh_netns::stat as counter;
use xdpmesh_netns::topology::SERVER_ADDR;
use xdpmesh_netns::{
    require_root, unique_prefix, GatewayKind, Node, ProcHandle, Topology, TopologyOpts, ECHO_PORT,
    FILESERVER_PORT,
};

const MIB: u64 = 1024 * 1024;

/// A second address of the client pod that is no workload: outside the mesh.
const OUTSIDER: &str = "198.18.1.3";

fn demo_config() -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../control/testdata/demo.yaml"),
    )
    .unwrap()
}

/// The demo config with both workloads on HBONE.
fn hbone_config() -> String {
    demo_config().replace("protocol: TCP", "protocol: HBONE")
}

/// Gives the client pod another address (one no workload claims).
fn add_client_address(topo: &Topology, addr: &str) {
    topo.run(
        Node::Client,
        &["ip", "addr", "add", &format!("{addr}/24"), "dev", "eth0"],
    )
    .unwrap();
}

fn write(topo: &Topology, name: &str, text: &str) -> PathBuf {
    let path = topo.tmp_dir().join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// One echo exchange from `src` (bound) to the server's echo port, in the client pod:
/// `Ok(echoed)` or `Err(the exception's name)`.
fn echo_from(topo: &Topology, src: &str, payload: &str) -> Result<String, String> {
    let out = topo
        .run(
            Node::Client,
            &[
                "python3",
                "-c",
                ECHO_PY,
                src,
                &SERVER_ADDR.to_string(),
                &ECHO_PORT.to_string(),
                payload,
            ],
        )
        .expect("echo client");
    parse_echo(&String::from_utf8_lossy(&out.stdout))
}

const ECHO_PY: &str = "import socket,sys\n\
    src, host, port, data = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4].encode()\n\
    s = socket.socket(); s.bind((src, 0)); s.settimeout(8)\n\
    try:\n\
    \x20   s.connect((host, port)); s.sendall(data); s.shutdown(socket.SHUT_WR)\n\
    \x20   got = b''\n\
    \x20   while True:\n\
    \x20       b = s.recv(65536)\n\
    \x20       if not b: break\n\
    \x20       got += b\n\
    \x20   print('OK ' + got.decode())\n\
    except Exception as e:\n\
    \x20   print('ERR ' + type(e).__name__)\n";

fn parse_echo(stdout: &str) -> Result<String, String> {
    let line = stdout.trim();
    match line.split_once(' ') {
        Some(("OK", rest)) => Ok(rest.to_owned()),
        Some(("ERR", e)) => Err(e.to_owned()),
        _ => Err(format!("unparsable echo output {line:?}")),
    }
}

/// The lines of a gateway's dataplane log that contain `needle`.
fn log_lines(topo: &Topology, node: Node, needle: &str) -> Vec<String> {
    topo.dataplane_log(node)
        .lines()
        .filter(|l| l.contains(needle))
        .map(str::to_owned)
        .collect()
}

fn assert_has_all(line: &str, wants: &[&str]) {
    for want in wants {
        assert!(line.contains(want), "{want:?} not in {line:?}");
    }
}

/// A DENY policy on the server's echo port holds against a client outside the mesh.
/// Before the XDP program diverted every connection to a captured workload, this
/// client's plaintext was passed to the kernel and reached the server around the
/// policy; now it is refused at gateway B like a mesh client's, and its allowed
/// connections are carried by the dataplane (`plaintext_accepted`, `redirect_plaintext`).
#[test]
fn test_deny_policy_holds_against_a_client_outside_the_mesh() {
    if !require_root("test_deny_policy_holds_against_a_client_outside_the_mesh") {
        return;
    }
    let mut topo =
        Topology::new(&unique_prefix("xbyp"), TopologyOpts::default()).expect("topology");
    let cfg = write(
        &topo,
        "mesh-deny.yaml",
        &format!(
            "{}policies:\n  - name: no-echo\n    namespace: default\n    workload: server\n    \
             action: DENY\n    ports: [{ECHO_PORT}]\n",
            demo_config()
        ),
    );
    topo.start_gateways(GatewayKind::xdpmesh(1), &cfg)
        .expect("gateways");
    add_client_address(&topo, OUTSIDER);
    let _echo = topo.start_echo_server(Node::Server, ECHO_PORT).unwrap();
    let _web = topo
        .start_fileserver(Node::Server, FILESERVER_PORT)
        .unwrap();

    assert_eq!(
        echo_from(&topo, OUTSIDER, "outside"),
        Err("ConnectionRefusedError".into())
    );
    assert_eq!(
        echo_from(&topo, "198.18.1.2", "mesh"),
        Err("ConnectionResetError".into())
    );
    // Another port of the same workload is allowed, and carried byte-exact.
    let url = format!("http://{SERVER_ADDR}:{FILESERVER_PORT}/blob?size={MIB}&seed=9");
    let t = topo
        .run(
            Node::Client,
            &[
                "curl",
                "-sS",
                "--interface",
                OUTSIDER,
                "-o",
                "/dev/null",
                "-w",
                "%{size_download}",
                &url,
            ],
        )
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&t.stdout), MIB.to_string());

    let b = topo
        .wait_for_stats(Node::GatewayB, Duration::from_secs(5), |s| {
            let got = (
                counter(s, &["totals", "policy_denied"]),
                counter(s, &["totals", "plaintext_accepted"]),
                counter(s, &["totals", "live_connections"]),
            );
            if got == (2, 1, 0) {
                Ok(())
            } else {
                Err(format!(
                    "(policy_denied, plaintext_accepted, live) = {got:?}"
                ))
            }
        })
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert!(
        counter(&b, &["xdp", "redirect_plaintext", "packets"]) > 0,
        "{b:#}"
    );
    assert_eq!(counter(&b, &["totals", "peer_auth_refused"]), 0, "{b:#}");
    // One access record per refusal, at error level, with ztunnel's fields: the
    // outsider has no workload (omitted, not empty), the mesh client has one.
    let refused = log_lines(&topo, Node::GatewayB, "error=\"authorization policy:");
    assert_eq!(refused.len(), 2, "{refused:#?}");
    let why = "error=\"authorization policy: denied by DENY policy default/no-echo (workload default/server)\"";
    assert_has_all(
        &refused[0],
        &[
            " ERROR ",
            "access: connection complete",
            &format!("src.addr={OUTSIDER}:"),
            "dst.addr=198.18.2.2:7000",
            "dst.workload=\"server\" dst.namespace=\"default\" dst.identity=\"spiffe://cluster.local/ns/default/sa/server\" direction=\"inbound\" bytes_sent=0 bytes_recv=0 duration=\"0ms\"",
            why,
        ],
    );
    assert!(!refused[0].contains("src.workload"), "{}", refused[0]);
    assert_has_all(
        &refused[1],
        &[
            "src.addr=198.18.1.2:",
            // Plain TCP from another node's workload: named, but no identity.
            "src.workload=\"client\" src.namespace=\"default\" dst.addr=198.18.2.2:7000",
            why,
        ],
    );
    // Gateway A only routed the outsider's packets (it is not a workload there).
    let a = topo.gateway_stats(Node::GatewayA).unwrap();
    assert_eq!(
        counter(&a, &["totals", "opened_connections"]),
        1,
        "the mesh client's only: {a:#}"
    );
}

/// STRICT on the server: plaintext from outside the mesh, and from a mesh workload
/// whose gateway skips HBONE (gateway A's config says the server speaks TCP), are
/// reset at gateway B and counted; the same client over HBONE is accepted. Then
/// PERMISSIVE accepts the outsider's plaintext.
#[test]
fn test_strict_refuses_plaintext_and_permissive_accepts_it() {
    if !require_root("test_strict_refuses_plaintext_and_permissive_accepts_it") {
        return;
    }
    let mut topo =
        Topology::new(&unique_prefix("xstrict"), TopologyOpts::default()).expect("topology");
    let strict = hbone_config().replace(
        "protocol: HBONE\n    ports",
        "protocol: HBONE\n    peer_authentication: STRICT\n    ports",
    );
    assert_ne!(strict, hbone_config());
    let cfg_b = write(&topo, "mesh-b.yaml", &strict);
    // Gateway A believes the server speaks plain TCP: its legs skip HBONE.
    let cfg_a = write(&topo, "mesh-a.yaml", &demo_config());
    topo.start_gateways_with(GatewayKind::xdpmesh(1), [&cfg_a, &cfg_b])
        .expect("gateways");
    add_client_address(&topo, OUTSIDER);
    let _echo = topo.start_echo_server(Node::Server, ECHO_PORT).unwrap();

    assert_eq!(
        echo_from(&topo, "198.18.1.2", "skips hbone"),
        Err("ConnectionResetError".into())
    );
    assert_eq!(
        echo_from(&topo, OUTSIDER, "outside"),
        Err("ConnectionRefusedError".into())
    );
    topo.wait_stat(
        Node::GatewayB,
        &["totals", "peer_auth_refused"],
        2,
        Duration::from_secs(5),
    )
    .unwrap();
    let refused = log_lines(&topo, Node::GatewayB, "error=\"peer authentication:");
    assert_eq!(refused.len(), 2, "{refused:#?}");
    assert_has_all(
        &refused[0],
        &["src.addr=198.18.1.2:", "dst.addr=198.18.2.2:7000", "dst.workload=\"server\"", "error=\"peer authentication: plaintext from mesh workload default/client, which skipped HBONE: STRICT on default/server accepts only HBONE (mutual TLS to port 15008)\""],
    );
    assert_has_all(
        &refused[1],
        &[
            &format!("src.addr={OUTSIDER}:"),
            "error=\"peer authentication: plaintext from outside the mesh: STRICT on default/server accepts only HBONE",
        ],
    );

    // HBONE from the same client is accepted under STRICT.
    std::fs::write(&cfg_a, hbone_config()).unwrap();
    topo.reload_gateway_config(Node::GatewayA).unwrap();
    assert_eq!(
        echo_from(&topo, "198.18.1.2", "over hbone"),
        Ok("over hbone".into())
    );

    // PERMISSIVE: the outsider's plaintext is accepted, as a source without identity.
    std::fs::write(&cfg_b, hbone_config()).unwrap();
    topo.reload_gateway_config(Node::GatewayB).unwrap();
    assert_eq!(
        echo_from(&topo, OUTSIDER, "permitted"),
        Ok("permitted".into())
    );
    let [_, b] = topo.wait_gateways_idle(Duration::from_secs(10));
    assert_eq!(
        (
            counter(&b, &["totals", "peer_auth_refused"]),
            counter(&b, &["totals", "plaintext_accepted"]),
            counter(&b, &["totals", "hbone_streams"]),
        ),
        (2, 1, 1),
        "{b:#}"
    );
}

/// Unknown-source topology: pod range 198.18.1.0/24 on both gateways, `mode`, and an
/// address `late` on the client pod that no workload claims yet.
fn unknown_source_topology(tag: &str, mode: &str, late: &str) -> (Topology, PathBuf) {
    let mut topo = Topology::new(&unique_prefix(tag), TopologyOpts::default()).expect("topology");
    let cfg = write(&topo, "mesh.yaml", &unknown_config(mode, None));
    topo.start_gateways(GatewayKind::xdpmesh(1), &cfg)
        .expect("gateways");
    add_client_address(&topo, late);
    (topo, cfg)
}

/// The demo config with the pod ranges, `unknown_source: mode`, and (when `late` is
/// given) a workload `late` on node-a owning that address.
fn unknown_config(mode: &str, late: Option<&str>) -> String {
    let mut text =
        demo_config().replace("unknown_source: pass ", &format!("unknown_source: {mode} "));
    text.push_str("pod_cidrs: [198.18.1.0/24, 198.18.2.0/24]\n");
    if let Some(addr) = late {
        text = text.replace(
            "workloads:\n",
            &format!(
                "workloads:\n  - name: late\n    namespace: default\n    service_account: late\n    \
                 node: node-a\n    addresses: [{addr}]\n"
            ),
        );
    }
    text
}

/// Starts an echo client from `src` in the background (it retries its SYN as the
/// kernel does), waits for gateway A to see its first SYN (`what` counter reaches 1),
/// waits 500 ms, then adds the address to the config of both gateways.
fn connect_then_add_workload(
    topo: &Topology,
    cfg: &Path,
    mode: &str,
    src: &str,
    what: &[&str],
) -> ProcHandle {
    let client = topo
        .spawn(
            Node::Client,
            &[
                "python3",
                "-c",
                ECHO_PY,
                src,
                &SERVER_ADDR.to_string(),
                &ECHO_PORT.to_string(),
                "init container",
            ],
        )
        .unwrap();
    topo.wait_stat(Node::GatewayA, what, 1, Duration::from_secs(5))
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    std::fs::write(cfg, unknown_config(mode, Some(src))).unwrap();
    let t = Instant::now();
    topo.reload_gateway_config(Node::GatewayA).unwrap();
    topo.reload_gateway_config(Node::GatewayB).unwrap();
    eprintln!("both gateways on the new tables after {:?}", t.elapsed());
    client
}

fn wait_echo(mut client: ProcHandle) -> Result<String, String> {
    let status = client.wait_timeout(Duration::from_secs(15)).unwrap();
    assert!(
        status.is_some(),
        "echo client still running: {}",
        client.log()
    );
    parse_echo(&client.log())
}

#[test]
fn test_unknown_source_hold_completes_once_the_workload_is_added() {
    if !require_root("test_unknown_source_hold_completes_once_the_workload_is_added") {
        return;
    }
    let late = "198.18.1.77";
    let (topo, cfg) = unknown_source_topology("xhold", "hold", late);
    let _echo = topo.start_echo_server(Node::Server, ECHO_PORT).unwrap();
    let client = connect_then_add_workload(
        &topo,
        &cfg,
        "hold",
        late,
        &["totals", "unknown_source_held"],
    );
    let got = wait_echo(client);
    if got.is_err() {
        for n in [Node::GatewayA, Node::GatewayB] {
            eprintln!("{n:?}: {:#?}", log_lines(&topo, n, ""));
        }
    }
    assert_eq!(got, Ok("init container".into()));
    let [a, _] = topo.wait_gateways_idle(Duration::from_secs(10));
    assert_eq!(
        (
            counter(&a, &["totals", "unknown_source_held"]),
            counter(&a, &["totals", "unknown_source_released"]),
            counter(&a, &["totals", "unknown_source_expired"]),
            counter(&a, &["totals", "unknown_source_holding"]),
            counter(&a, &["totals", "opened_connections"]),
        ),
        (1, 1, 0, 0, 1),
        "{a:#}"
    );
    // The kernel retransmitted its SYN after 1 s: diverted too, held once.
    assert!(
        counter(&a, &["xdp", "redirect_unknown_source", "packets"]) >= 1,
        "{a:#}"
    );
    let held = log_lines(&topo, Node::GatewayA, "connection held: unknown source");
    assert_eq!(held.len(), 1, "{held:#?}");
    assert_has_all(
        &held[0],
        &[&format!("src={late}:"), "dst=198.18.2.2:7000", &format!("{late} is inside pod range 198.18.1.0/24 but no workload claims it (unknown_source: hold): its SYN waits up to 2000 ms for a workload")],
    );
    let released = log_lines(
        &topo,
        Node::GatewayA,
        "held connection released: its source is a workload now",
    );
    assert_eq!(released.len(), 1, "{released:#?}");
    assert_has_all(&released[0], &["workload=default/late"]);
}

#[test]
fn test_unknown_source_reject_resets_until_the_workload_is_added() {
    if !require_root("test_unknown_source_reject_resets_until_the_workload_is_added") {
        return;
    }
    let late = "198.18.1.78";
    let (topo, cfg) = unknown_source_topology("xrej", "reject", late);
    let _echo = topo.start_echo_server(Node::Server, ECHO_PORT).unwrap();
    let client = connect_then_add_workload(
        &topo,
        &cfg,
        "reject",
        late,
        &["totals", "unknown_source_rejected"],
    );
    assert_eq!(wait_echo(client), Err("ConnectionRefusedError".into()));
    // Once the workload is in the tables, the same pod connects.
    assert_eq!(echo_from(&topo, late, "now known"), Ok("now known".into()));
    let [a, _] = topo.wait_gateways_idle(Duration::from_secs(10));
    assert_eq!(
        (
            counter(&a, &["totals", "unknown_source_rejected"]),
            counter(&a, &["totals", "unknown_source_held"]),
            counter(&a, &["totals", "opened_connections"]),
        ),
        (1, 0, 1),
        "{a:#}"
    );
    let refused = log_lines(&topo, Node::GatewayA, "error=\"unknown source:");
    assert_eq!(refused.len(), 1, "{refused:#?}");
    assert_has_all(
        &refused[0],
        &[&format!("src.addr={late}:"), "direction=\"outbound\"", &format!("error=\"unknown source: {late} is inside pod range 198.18.1.0/24 but no workload claims it (unknown_source: reject)\"")],
    );
}

/// `pass`: gateway A hands the unknown source's connection to its kernel (it routes
/// it to gateway B, which carries it to the server as plaintext from a source without
/// identity), and logs the source once.
#[test]
fn test_unknown_source_pass_reaches_the_kernel() {
    if !require_root("test_unknown_source_pass_reaches_the_kernel") {
        return;
    }
    let late = "198.18.1.79";
    let (topo, _cfg) = unknown_source_topology("xpassu", "pass", late);
    let _echo = topo.start_echo_server(Node::Server, ECHO_PORT).unwrap();
    assert_eq!(echo_from(&topo, late, "passed"), Ok("passed".into()));
    assert_eq!(
        echo_from(&topo, late, "passed again"),
        Ok("passed again".into())
    );
    let [_, b] = topo.wait_gateways_idle(Duration::from_secs(10));
    // The dataplane reads the XDP program's unknown sources once a second.
    let a = topo
        .wait_for_stats(Node::GatewayA, Duration::from_secs(5), |s| {
            match s["unknown_sources"][late].as_u64() {
                Some(2) => Ok(()),
                other => Err(format!("unknown_sources[{late}] = {other:?}")),
            }
        })
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(counter(&a, &["totals", "opened_connections"]), 0, "{a:#}");
    assert!(
        counter(&a, &["xdp", "pass_unknown_source", "packets"]) >= 2,
        "{a:#}"
    );
    assert_eq!(
        counter(&a, &["xdp", "redirect_unknown_source", "packets"]),
        0,
        "{a:#}"
    );
    // Gateway B: an unknown source to its workload, under pass a source outside the mesh.
    assert_eq!(
        (
            counter(&b, &["totals", "unknown_source_passed"]),
            counter(&b, &["totals", "plaintext_accepted"]),
        ),
        (2, 2),
        "{b:#}"
    );
    let seen = log_lines(
        &topo,
        Node::GatewayA,
        "unknown source: SYNs to mesh workloads",
    );
    assert_eq!(seen.len(), 1, "once a minute: {seen:#?}");
    assert_has_all(&seen[0], &[&format!("src={late}"), "syns="]);
    // doctor names the source too.
    let instance = topo.instance(Node::GatewayA);
    let out = topo
        .cmd(
            Node::GatewayA,
            xdpmesh_netns::bin("xdpmesh-dataplane"),
            ["doctor", "--instance", &instance],
        )
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.lines().any(|l| l
            == format!(
                "[WARN] unknown-sources: SYNs to mesh workloads from pod addresses no workload claims: {late} (2 SYNs)"
            )),
        "{text}"
    );
    let seen_b = log_lines(&topo, Node::GatewayB, "unknown source");
    assert_eq!(seen_b.len(), 1, "once a minute: {seen_b:#?}");
    assert_has_all(&seen_b[0], &["handled as a source outside the mesh"]);
}
