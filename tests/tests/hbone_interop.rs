//! HBONE interoperability with independent peers, and every refusal with its reason.
//!
//! The wire namespace (the bridge between the gateways) plays a third node, `node-c` of
//! `control/testdata/interop-hbone.yaml`, a foreign ztunnel: its bridge carries the
//! addresses of the workloads `pyclient` (198.18.0.3) and `pyserver` (198.18.0.5), and
//! the Python HBONE peers (`tests/peers/hbone_client.py`, `hbone_server.py`, written from
//! the contract in docs/ARCHITECTURE.md, "HBONE contract", with hyper-h2, not from
//! xdpmesh's code) speak for them with certificates issued from the topology's mesh CA.
//!
//! - pyclient → server pod: gateway B's inbound HBONE terminates the Python client's
//!   CONNECT streams (its destination is served there and the port is 15008).
//! - client pod → pyserver:8080: gateway A's outbound HBONE carries it to
//!   198.18.0.5:15008, where `hbone_server.py` listens.
//! - Every way a peer can be refused (identity, trust domain, expiry, CA, missing
//!   certificate, TLS 1.2, ALPN, bad target, closed port) is logged by the refusing
//!   gateway with its reason, and no byte reaches the pod.
//! - Both directions again over IPv6, on a dual-stack topology: pyclient and pyserver
//!   also have 2001:2::3 and 2001:2::5, and the authorities are `[addr]:port`.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;
use xdpmesh_hbone::HBONE_PORT;
use xdpmesh_netns::peers::python;
use xdpmesh_netns::stat as counter;
use xdpmesh_netns::topology::{CLIENT_ADDR, SERVER_ADDR};
use xdpmesh_netns::{
    bin, require_root, unique_prefix, Families, GatewayKind, Node, Topology, TopologyOpts,
    ECHO_PORT,
};

/// pyclient's and pyserver's addresses on the wire namespace's bridge (node-c).
const PYCLIENT_ADDR: &str = "198.18.0.3";
const PYSERVER_ADDR: &str = "198.18.0.5";
/// Their IPv6 addresses on the bridge (dual-stack tests).
const PYCLIENT_ADDR6: &str = "2001:2::3";
const PYSERVER_ADDR6: &str = "2001:2::5";
/// pyserver's application port (the client pod connects to it).
const PYSERVER_PORT: u16 = 8080;
/// A port on the server pod where a listener records every connection it accepts.
const TRAP_PORT: u16 = 9000;
/// A second trap port, which a DENY policy of `interop-hbone.yaml` closes to pyclient.
const POLICY_TRAP_PORT: u16 = 9001;

fn spiffe(sa: &str) -> String {
    format!("spiffe://cluster.local/ns/default/sa/{sa}")
}

fn interop_config() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../control/testdata/interop-hbone.yaml")
}

fn peer_script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("peers")
        .join(name)
}

fn hbone_addr() -> String {
    format!("{SERVER_ADDR}:{HBONE_PORT}")
}

/// A command run inside the wire namespace (node-c).
fn wire_cmd(topo: &Topology, program: impl AsRef<OsStr>) -> Command {
    let ns = topo.wire_ns().expect("topology built with wire_tap");
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net=/run/netns/{ns}"))
        .arg("--")
        .arg(program);
    cmd
}

/// Runs `argv` in the wire namespace under `timeout -k 2 <secs>` (exit 124 on timeout),
/// stdin from /dev/null, output captured.
fn run_wire(topo: &Topology, secs: u64, argv: &[&OsStr]) -> Output {
    let mut cmd = wire_cmd(topo, "timeout");
    cmd.args(["-k", "2", &secs.to_string()])
        .args(argv)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd.output()
        .expect("running a command in the wire namespace")
}

fn must(what: &str, out: &Output) {
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Builds the topology, starts xdpmesh on both gateways with the interop config and
/// turns the wire namespace into node-c.
fn interop_topology(tag: &str) -> Topology {
    interop_topology_with(tag, &[], &[])
}

/// [`interop_topology`] with extra arguments for the gateways' control and dataplane.
fn interop_topology_with(tag: &str, control_args: &[&str], dataplane_args: &[&str]) -> Topology {
    interop_topology_of(tag, Families::V4, control_args, dataplane_args)
}

/// The interop config with every workload's IPv6 address added (dual stack).
fn interop_config_dual(topo: &Topology) -> PathBuf {
    let mut text = std::fs::read_to_string(interop_config()).unwrap();
    for (v4, v6) in [
        ("198.18.1.2", "2001:2:0:1::2"),
        ("198.18.2.2", "2001:2:0:2::2"),
        ("198.18.0.3", PYCLIENT_ADDR6),
        ("198.18.0.5", PYSERVER_ADDR6),
    ] {
        let from = format!("    addresses: [{v4}]");
        assert!(text.contains(&from), "{from} in the interop config");
        text = text.replace(&from, &format!("    addresses: [{v4}, {v6}]"));
    }
    let path = topo.tmp_dir().join("interop-dual.yaml");
    std::fs::write(&path, text).unwrap();
    path
}

/// [`interop_topology_with`] on links of `families`: with IPv6, the gateways run on
/// [`interop_config_dual`] and node-c's bridge also has pyclient's and pyserver's IPv6
/// addresses.
fn interop_topology_of(
    tag: &str,
    families: Families,
    control_args: &[&str],
    dataplane_args: &[&str],
) -> Topology {
    let opts = TopologyOpts {
        wire_tap: true,
        families,
        ..Default::default()
    };
    let mut topo = Topology::new(&unique_prefix(tag), opts).expect("topology");
    topo.set_gateway_args(control_args, dataplane_args);
    let config = if families.v6() {
        interop_config_dual(&topo)
    } else {
        interop_config()
    };
    topo.start_gateways(GatewayKind::xdpmesh(1), &config)
        .expect("xdpmesh gateways");
    let wire = topo.wire_ns().unwrap();
    let ip_cmds: [&[&str]; 4] = [
        &["addr", "add", "198.18.0.3/24", "dev", "br0"],
        &["addr", "add", "198.18.0.5/24", "dev", "br0"],
        &[
            "route",
            "add",
            "198.18.1.0/24",
            "via",
            "198.18.0.1",
            "src",
            PYCLIENT_ADDR,
        ],
        &[
            "route",
            "add",
            "198.18.2.0/24",
            "via",
            "198.18.0.2",
            "src",
            PYCLIENT_ADDR,
        ],
    ];
    ip_in(&wire, &ip_cmds);
    let ipv6 = if families.v6() {
        [
            "net.ipv6.conf.all.disable_ipv6=0",
            "net.ipv6.conf.br0.disable_ipv6=0",
            "net.ipv6.conf.br0.accept_dad=0",
        ]
    } else {
        [
            "net.ipv6.conf.all.disable_ipv6=1",
            "net.ipv6.conf.default.disable_ipv6=1",
            "net.ipv6.conf.br0.disable_ipv6=1",
        ]
    };
    let mut sysctl = vec![
        "sysctl",
        "-q",
        "-w",
        "net.ipv4.conf.all.rp_filter=0",
        "net.ipv4.conf.default.rp_filter=0",
        "net.ipv4.conf.br0.rp_filter=0",
    ];
    sysctl.extend(ipv6);
    let out = wire_cmd(&topo, sysctl[0])
        .args(&sysctl[1..])
        .output()
        .unwrap();
    must("sysctl in the wire namespace", &out);
    if families.v6() {
        let pyclient6 = format!("{PYCLIENT_ADDR6}/64");
        let pyserver6 = format!("{PYSERVER_ADDR6}/64");
        let ip6_cmds: [&[&str]; 4] = [
            &["addr", "add", &pyclient6, "dev", "br0", "nodad"],
            &["addr", "add", &pyserver6, "dev", "br0", "nodad"],
            &[
                "route",
                "add",
                "2001:2:0:1::/64",
                "via",
                "2001:2::1",
                "src",
                PYCLIENT_ADDR6,
            ],
            &[
                "route",
                "add",
                "2001:2:0:2::/64",
                "via",
                "2001:2::2",
                "src",
                PYCLIENT_ADDR6,
            ],
        ];
        ip_in(&wire, &ip6_cmds);
    }
    // Locally sent segments must carry full checksums when they reach the gateways'
    // AF_XDP sockets (copy mode sees CHECKSUM_PARTIAL otherwise).
    for dev in ["br0", "to-gwa", "to-gwb"] {
        let out = wire_cmd(&topo, "ethtool")
            .args([
                "-K", dev, "tx", "off", "tso", "off", "gso", "off", "gro", "off",
            ])
            .output()
            .unwrap();
        must(&format!("ethtool -K {dev} in the wire namespace"), &out);
    }
    topo
}

/// Runs each `ip` command of `cmds` in namespace `ns`; each must succeed.
fn ip_in(ns: &str, cmds: &[&[&str]]) {
    for args in cmds {
        let out = Command::new("ip")
            .args(["-n", ns])
            .args(*args)
            .output()
            .unwrap();
        must(&format!("ip -n {ns} {}", args.join(" ")), &out);
    }
}

fn total(topo: &Topology, node: Node, name: &str) -> u64 {
    counter(&topo.gateway_stats(node).unwrap(), &["totals", name])
}

/// Issues a certificate for `id` from the CA in `ca_dir` into `dir` (`<name>.crt`,
/// `<name>.key`); `expired` gives one valid from 2 h ago to 1 h ago.
fn issue(ca_dir: &Path, id: &str, dir: &Path, name: &str, expired: bool) -> (PathBuf, PathBuf) {
    let cert = dir.join(format!("{name}.crt"));
    let key = dir.join(format!("{name}.key"));
    let mut cmd = Command::new(bin("xdpmesh-control"));
    cmd.arg("issue")
        .arg("--ca-dir")
        .arg(ca_dir)
        .args(["--spiffe", id])
        .arg("--out-cert")
        .arg(&cert)
        .arg("--out-key")
        .arg(&key);
    if expired {
        cmd.arg("--not-after-past");
    }
    must(
        &format!("xdpmesh-control issue {id}"),
        &cmd.output().unwrap(),
    );
    (cert, key)
}

/// `xdpmesh-control ca init` of a fresh CA in `dir` for `trust_domain`.
fn ca_init(dir: &Path, trust_domain: &str) {
    let out = Command::new(bin("xdpmesh-control"))
        .args(["ca", "init", "--trust-domain", trust_domain, "--ca-dir"])
        .arg(dir)
        .output()
        .unwrap();
    must(&format!("xdpmesh-control ca init {trust_domain}"), &out);
}

fn mesh_ca_cert(topo: &Topology) -> PathBuf {
    topo.ca_dir().join("ca.crt")
}

/// The result of one `hbone_client.py` run: its JSON report (if any) and raw output.
struct ClientRun {
    report: Option<Value>,
    out: Output,
}

impl ClientRun {
    fn describe(&self) -> String {
        format!(
            "hbone_client.py exit {}; report {}; stderr: {}",
            self.out.status,
            self.report
                .as_ref()
                .map(|r| r.to_string())
                .unwrap_or_else(|| "none".into()),
            String::from_utf8_lossy(&self.out.stderr).trim_end()
        )
    }

    fn statuses(&self) -> Vec<Option<u64>> {
        self.report
            .as_ref()
            .and_then(|r| r["statuses"].as_array())
            .map(|a| a.iter().map(Value::as_u64).collect())
            .unwrap_or_default()
    }
}

/// Runs `hbone_client.py` in the wire namespace as pyclient.
fn hbone_client(
    topo: &Topology,
    cert: &Path,
    key: &Path,
    authority: &str,
    extra: &[&str],
    timeout_s: u64,
) -> ClientRun {
    hbone_client_to(topo, &hbone_addr(), cert, key, authority, extra, timeout_s)
}

/// [`hbone_client`] connecting to `connect` (`ip:15008`, `[ip]:15008` for IPv6).
fn hbone_client_to(
    topo: &Topology,
    connect: &str,
    cert: &Path,
    key: &Path,
    authority: &str,
    extra: &[&str],
    timeout_s: u64,
) -> ClientRun {
    let py = python();
    let script = peer_script("hbone_client.py");
    let ca = mesh_ca_cert(topo);
    let server_san = spiffe("server");
    let timeout = timeout_s.to_string();
    let mut argv: Vec<&OsStr> = vec![
        py.as_os_str(),
        "-u".as_ref(),
        script.as_os_str(),
        "--connect".as_ref(),
        connect.as_ref(),
        "--authority".as_ref(),
        authority.as_ref(),
        "--cert".as_ref(),
        cert.as_os_str(),
        "--key".as_ref(),
        key.as_os_str(),
        "--ca".as_ref(),
        ca.as_os_str(),
        "--expect-san".as_ref(),
        server_san.as_ref(),
        "--timeout".as_ref(),
        timeout.as_ref(),
    ];
    argv.extend(extra.iter().map(|s| OsStr::new(*s)));
    let out = run_wire(topo, timeout_s + 10, &argv);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .and_then(|l| serde_json::from_str(l).ok());
    ClientRun { report, out }
}

/// A process in the wire namespace, killed (SIGTERM, then SIGKILL) when dropped.
struct WireProc {
    child: Child,
    log: PathBuf,
}

impl WireProc {
    fn spawn(topo: &Topology, argv: &[&OsStr], log: PathBuf) -> WireProc {
        let file = std::fs::File::create(&log).unwrap();
        // nsenter without --fork execs the program: the child's pid is the program's.
        let child = wire_cmd(topo, argv[0])
            .args(&argv[1..])
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .expect("spawning in the wire namespace");
        WireProc { child, log }
    }

    fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for WireProc {
    fn drop(&mut self) {
        let pid = Pid::from_raw(self.child.id() as i32);
        let _ = kill(pid, Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `hbone_server.py` for pyserver (198.18.0.5:15008) in echo mode, presenting `cert`;
/// returns once it is listening. Its JSON lines go to `json_log`.
fn start_hbone_server(
    topo: &Topology,
    cert: &Path,
    key: &Path,
    json_log: &Path,
    tag: &str,
) -> WireProc {
    start_hbone_server_on(topo, PYSERVER_ADDR, cert, key, json_log, tag)
}

/// [`start_hbone_server`] listening on `ip` (pyserver's IPv4 or IPv6 address), where
/// it expects `ip:8080` (`[ip]:8080`) as the authority.
fn start_hbone_server_on(
    topo: &Topology,
    ip: &str,
    cert: &Path,
    key: &Path,
    json_log: &Path,
    tag: &str,
) -> WireProc {
    let py = python();
    let script = peer_script("hbone_server.py");
    let ca = mesh_ca_cert(topo);
    let ready = topo.tmp_dir().join(format!("hbone-server-{tag}.ready"));
    let _ = std::fs::remove_file(&ready);
    let ip: std::net::IpAddr = ip.parse().unwrap();
    let listen = std::net::SocketAddr::new(ip, HBONE_PORT).to_string();
    let authority = std::net::SocketAddr::new(ip, PYSERVER_PORT).to_string();
    let client_san = spiffe("client");
    let argv: Vec<&OsStr> = vec![
        py.as_os_str(),
        "-u".as_ref(),
        script.as_os_str(),
        "--listen".as_ref(),
        listen.as_ref(),
        "--cert".as_ref(),
        cert.as_os_str(),
        "--key".as_ref(),
        key.as_os_str(),
        "--ca".as_ref(),
        ca.as_os_str(),
        "--trust-domain".as_ref(),
        "cluster.local".as_ref(),
        "--expect-authority".as_ref(),
        authority.as_ref(),
        "--expect-client-san".as_ref(),
        client_san.as_ref(),
        "--mode".as_ref(),
        "echo".as_ref(),
        "--log".as_ref(),
        json_log.as_os_str(),
        "--ready-file".as_ref(),
        ready.as_os_str(),
    ];
    let mut p = WireProc::spawn(
        topo,
        &argv,
        topo.tmp_dir().join(format!("hbone-server-{tag}.out")),
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    while !ready.exists() {
        if let Ok(Some(status)) = p.child.try_wait() {
            panic!("hbone_server.py exited ({status}):\n{}", p.output());
        }
        assert!(
            Instant::now() < deadline,
            "hbone_server.py not ready after 15 s:\n{}",
            p.output()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    p
}

/// JSON lines of `hbone_server.py`'s log with `"event": event`.
fn server_events(json_log: &Path, event: &str) -> Vec<Value> {
    std::fs::read_to_string(json_log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["event"] == event)
        .collect()
}

fn is_traceparent(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    let hex = |p: &str, n: usize| {
        p.len() == n
            && p.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    parts.len() == 4
        && parts[0] == "00"
        && hex(parts[1], 32)
        && hex(parts[2], 16)
        && parts[3] == "01"
}

/// The dataplane log of a gateway.
fn dataplane_log(topo: &Topology, node: Node) -> PathBuf {
    topo.gateway_logs()
        .into_iter()
        .find(|(n, _, _)| *n == node)
        .map(|(_, _, d)| d)
        .unwrap_or_else(|| panic!("no dataplane log for {node:?}"))
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

/// A position in a gateway's dataplane log: what is logged after it can be searched.
struct LogMark {
    path: PathBuf,
    offset: usize,
}

impl LogMark {
    fn now(topo: &Topology, node: Node) -> LogMark {
        let path = dataplane_log(topo, node);
        let offset = std::fs::read(&path).map(|b| b.len()).unwrap_or(0);
        LogMark { path, offset }
    }

    /// Lines logged since the mark, ANSI escapes removed.
    fn lines(&self) -> Vec<String> {
        let bytes = std::fs::read(&self.path).unwrap_or_default();
        let new = bytes.get(self.offset..).unwrap_or_default();
        strip_ansi(&String::from_utf8_lossy(new))
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// Waits up to `timeout` for a line (logged since the mark) matching `pred`.
    fn wait_line(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> Result<String, String> {
        let deadline = Instant::now() + timeout;
        loop {
            let lines = self.lines();
            if let Some(l) = lines.iter().find(|l| pred(l)) {
                return Ok(l.clone());
            }
            if Instant::now() >= deadline {
                let tail: Vec<&str> = lines
                    .iter()
                    .rev()
                    .take(15)
                    .rev()
                    .map(String::as_str)
                    .collect();
                return Err(format!(
                    "no log line {what} in {} within {timeout:?}; lines logged since the case \
                     began (last 15):\n    {}",
                    self.path.display(),
                    tail.join("\n    ")
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Whether `line` holds every one of `parts` (exact, case-sensitive).
/// The field names of a plain-format access line (`… connection complete k=v k="v v" …`),
/// in order.
fn access_fields(line: &str) -> Vec<String> {
    let Some((_, rest)) = line.split_once("connection complete ") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut chars = rest.chars().peekable();
    while chars.peek().is_some() {
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        out.push(key.trim().to_owned());
        if chars.peek() == Some(&'"') {
            chars.next();
            let mut escaped = false;
            for c in chars.by_ref() {
                match (escaped, c) {
                    (false, '\\') => escaped = true,
                    (false, '"') => break,
                    _ => escaped = false,
                }
            }
            if chars.peek() == Some(&' ') {
                chars.next();
            }
        } else {
            for c in chars.by_ref() {
                if c == ' ' {
                    break;
                }
            }
        }
    }
    out
}

fn has_all(line: &str, parts: &[&str]) -> bool {
    parts.iter().all(|p| line.contains(p))
}

fn lower_has(line: &str, words: &[&str]) -> bool {
    let l = line.to_ascii_lowercase();
    words.iter().any(|w| l.contains(&w.to_ascii_lowercase()))
}

#[test]
fn test_interop_python_client_to_xdpmesh_inbound() {
    if !require_root("test_interop_python_client_to_xdpmesh_inbound") {
        return;
    }
    let topo = interop_topology("icli");
    let (cert, key) = issue(
        &topo.ca_dir(),
        &spiffe("pyclient"),
        topo.tmp_dir(),
        "pyclient",
        false,
    );
    let _echo = topo.start_echo_server(Node::Server, ECHO_PORT).unwrap();
    let authority = format!("{SERVER_ADDR}:{ECHO_PORT}");
    let run = hbone_client(
        &topo,
        &cert,
        &key,
        &authority,
        &[
            "--forwarded-for",
            "198.18.0.3:40000",
            "--streams",
            "3",
            "--bytes",
            "100000",
        ],
        30,
    );
    let r = run
        .report
        .as_ref()
        .unwrap_or_else(|| panic!("no report: {}", run.describe()));
    assert_eq!(r["ok"], 3, "{}", run.describe());
    assert_eq!(r["failed"], 0, "{}", run.describe());
    assert_eq!(
        run.statuses(),
        vec![Some(200); 3],
        "statuses: {}",
        run.describe()
    );
    assert_eq!(r["bytes"], 300_000, "{}", run.describe());
    assert_eq!(r["tls_version"], "TLSv1.3", "{}", run.describe());
    assert_eq!(r["alpn"], "h2", "{}", run.describe());
    assert_eq!(
        r["peer_san"].as_str(),
        Some(spiffe("server").as_str()),
        "{}",
        run.describe()
    );
    assert!(run.out.status.success(), "{}", run.describe());

    let [_, b] = topo.wait_gateways_idle(Duration::from_secs(20));
    // hbone_client.py opens its 3 streams on one connection.
    assert_eq!(
        counter(&b, &["totals", "hbone_tunnels_accepted"]),
        1,
        "{b:#}"
    );
    assert_eq!(counter(&b, &["totals", "hbone_streams"]), 3, "{b:#}");
    assert_eq!(counter(&b, &["totals", "hbone_refused"]), 0, "{b:#}");
    // The access log names the real client (the tunnel's source) and its identity.
    let log = strip_ansi(&std::fs::read_to_string(dataplane_log(&topo, Node::GatewayB)).unwrap());
    let inbound: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("direction=\"inbound\""))
        .collect();
    assert_eq!(inbound.len(), 3, "{log}");
    for l in inbound {
        assert!(
            l.contains("access: connection complete src.addr=198.18.0.3:"),
            "{l}"
        );
        assert!(
            l.contains(
                "src.identity=\"spiffe://cluster.local/ns/default/sa/pyclient\" \
                 dst.addr=198.18.2.2:15008 dst.hbone_addr=198.18.2.2:7000 \
                 dst.workload=\"server\" dst.namespace=\"default\" \
                 dst.identity=\"spiffe://cluster.local/ns/default/sa/server\" \
                 direction=\"inbound\""
            ),
            "{l}"
        );
        assert!(!l.contains("error="), "{l}");
    }
    assert_eq!(
        counter(&b, &["totals", "hbone_tunnel_failures"]),
        0,
        "{b:#}"
    );
}

#[test]
fn test_interop_xdpmesh_outbound_to_python_server() {
    if !require_root("test_interop_xdpmesh_outbound_to_python_server") {
        return;
    }
    let topo = interop_topology("isrv");
    let (cert, key) = issue(
        &topo.ca_dir(),
        &spiffe("pyserver"),
        topo.tmp_dir(),
        "pyserver",
        false,
    );
    let json_log = topo.tmp_dir().join("hbone-server.jsonl");
    let server = start_hbone_server(&topo, &cert, &key, &json_log, "ok");

    let r = topo
        .run_echo_client(
            Node::Client,
            PYSERVER_ADDR.parse::<std::net::IpAddr>().unwrap(),
            PYSERVER_PORT,
            5,
            64 * 1024,
        )
        .unwrap();
    let [a, _] = topo.wait_gateways_idle(Duration::from_secs(20));
    assert_eq!(
        (r.ok, r.failed, r.bytes),
        (5, 0, 5 * 64 * 1024),
        "echo client errors {:?}\nhbone_server.py log:\n{}\nA: {a:#}",
        r.errors,
        std::fs::read_to_string(&json_log).unwrap_or_default()
    );
    drop(server);

    let requests = server_events(&json_log, "request");
    assert_eq!(requests.len(), 5, "{requests:#?}");
    let client_prefix = format!("for=\"{CLIENT_ADDR}:");
    for req in &requests {
        assert_eq!(req["status"], 200, "{req:#}");
        assert_eq!(req["method"], "CONNECT", "{req:#}");
        assert_eq!(req["authority"], "198.18.0.5:8080", "{req:#}");
        assert_eq!(
            req["client_san"].as_str(),
            Some(spiffe("client").as_str()),
            "{req:#}"
        );
        let forwarded = req["forwarded"].as_str().unwrap_or_default();
        assert!(forwarded.starts_with(&client_prefix), "{req:#}");
        let traceparent = req["traceparent"].as_str().unwrap_or_default();
        assert!(is_traceparent(traceparent), "{req:#}");
        // The cluster name comes from the config (`cluster_name`).
        assert_eq!(
            req["baggage"].as_str(),
            Some("k8s.cluster.name=interop-east,k8s.namespace.name=default,k8s.pod.name=client"),
            "{req:#}"
        );
    }
    // Fresh trace per connection.
    let mut traces: Vec<&str> = requests
        .iter()
        .filter_map(|r| r["traceparent"].as_str())
        .collect();
    traces.sort_unstable();
    traces.dedup();
    assert_eq!(traces.len(), 5, "traceparents repeat: {requests:#?}");

    assert_eq!(counter(&a, &["totals", "hbone_tunnels_opened"]), 1, "{a:#}");
    assert_eq!(counter(&a, &["totals", "hbone_streams"]), 5, "{a:#}");
    assert_eq!(counter(&a, &["totals", "hbone_refused"]), 0, "{a:#}");
    assert_eq!(
        counter(&a, &["totals", "hbone_tunnel_failures"]),
        0,
        "{a:#}"
    );
}

/// What one refusal sub-case needs.
struct Refusals<'a> {
    topo: &'a Topology,
    /// File the server pod's trap listener appends one line per accepted connection to.
    trap_file: PathBuf,
}

impl Refusals<'_> {
    fn trap_empty(&self) -> Result<(), String> {
        let text = std::fs::read_to_string(&self.trap_file).unwrap_or_default();
        if text.trim().is_empty() {
            Ok(())
        } else {
            Err(format!(
                "the server pod's trap listeners (ports {TRAP_PORT}, {POLICY_TRAP_PORT}) accepted connections:\n{text}"
            ))
        }
    }

    /// A pyclient `CONNECT` to `authority` that gateway B must answer with `status`,
    /// logging a line that `logged` accepts (described by `what`), with nothing
    /// reaching the server pod.
    fn connect_refused(
        &self,
        cert: &Path,
        key: &Path,
        authority: &str,
        status: u64,
        what: &str,
        logged: impl Fn(&str) -> bool,
    ) -> Result<(), String> {
        let mark = LogMark::now(self.topo, Node::GatewayB);
        let run = hbone_client(self.topo, cert, key, authority, &[], 10);
        let mut errs = Vec::new();
        if run.statuses() != vec![Some(status)] || run.out.status.success() {
            errs.push(format!("want status [{status}]: {}", run.describe()));
        }
        if let Err(e) = mark.wait_line(what, Duration::from_secs(5), logged) {
            errs.push(e);
        }
        if let Err(e) = self.trap_empty() {
            errs.push(e);
        }
        join(errs)
    }

    fn trap_authority(&self) -> String {
        format!("{SERVER_ADDR}:{TRAP_PORT}")
    }

    /// pyclient-side `hbone_client.py` run that must fail at the TLS level, and gateway
    /// B's log line for it: one line holding every string of `line` (the message and
    /// its exact `reason=`).
    fn tls_refused(&self, cert: &Path, key: &Path, line: &[&str]) -> Result<(), String> {
        let mark = LogMark::now(self.topo, Node::GatewayB);
        let run = hbone_client(self.topo, cert, key, &self.trap_authority(), &[], 10);
        let mut errs = Vec::new();
        if run.out.status.success() {
            errs.push(format!("the client succeeded: {}", run.describe()));
        }
        if run.out.status.code() == Some(124) {
            errs.push(format!(
                "the client hung (killed by timeout): {}",
                run.describe()
            ));
        }
        if run.statuses().contains(&Some(200)) {
            errs.push(format!("a CONNECT got 200: {}", run.describe()));
        }
        if let Err(e) = mark.wait_line(&format!("{line:?}"), Duration::from_secs(5), |l| {
            has_all(l, line)
        }) {
            errs.push(format!("{e}\n  client: {}", run.describe()));
        }
        if let Err(e) = self.trap_empty() {
            errs.push(e);
        }
        join(errs)
    }

    /// `openssl s_client` from pyclient's address to the server's port 15008 with
    /// `args`; the handshake must not give a usable session, and gateway B must log why:
    /// one line holding every string of `line`.
    fn openssl_refused(&self, args: &[&str], line: &[&str]) -> Result<(), String> {
        let mark = LogMark::now(self.topo, Node::GatewayB);
        let ca = mesh_ca_cert(self.topo);
        let connect = hbone_addr();
        let mut argv: Vec<&OsStr> = vec![
            "openssl".as_ref(),
            "s_client".as_ref(),
            "-connect".as_ref(),
            connect.as_ref(),
            "-noservername".as_ref(),
            "-CAfile".as_ref(),
            ca.as_os_str(),
            // Keep reading after stdin's EOF, so an alert sent after the client's
            // Finished (TLS 1.3 client-certificate checks) is seen.
            "-ign_eof".as_ref(),
        ];
        argv.extend(args.iter().map(|s| OsStr::new(*s)));
        let out = run_wire(self.topo, 8, &argv);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let describe = || {
            let tail: Vec<&str> = text.lines().rev().take(12).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            format!(
                "openssl exit {}; output tail:\n    {}",
                out.status,
                tail.join("\n    ")
            )
        };
        let mut errs = Vec::new();
        if out.status.code() == Some(124) {
            errs.push(format!(
                "openssl s_client hung: the gateway kept the connection open; {}",
                describe()
            ));
        } else if out.status.success() && !lower_has(&text, &["alert"]) {
            errs.push(format!(
                "openssl s_client saw no failure and no alert; {}",
                describe()
            ));
        }
        if let Err(e) = mark.wait_line(&format!("{line:?}"), Duration::from_secs(5), |l| {
            has_all(l, line)
        }) {
            errs.push(format!("{e}\n  {}", describe()));
        }
        if let Err(e) = self.trap_empty() {
            errs.push(e);
        }
        join(errs)
    }
}

/// A service whose endpoint is an HBONE workload of another node (issue 9, item 1):
/// the client's connection to the virtual address 198.18.10.5:80 reaches the Python
/// HBONE server as a CONNECT to the endpoint's own address and target port, with the
/// service's host in `forwarded`, the client's identity verified, and the endpoint's
/// identity verified by gateway A (`pyserver`, or the tunnel would not come up).
#[test]
fn test_service_vip_over_hbone_reaches_the_endpoint_with_authority_and_forwarded_host() {
    if !require_root(
        "test_service_vip_over_hbone_reaches_the_endpoint_with_authority_and_forwarded_host",
    ) {
        return;
    }
    let topo = interop_topology("ivip");
    let (cert, key) = issue(
        &topo.ca_dir(),
        &spiffe("pyserver"),
        topo.tmp_dir(),
        "pyserver",
        false,
    );
    let json_log = topo.tmp_dir().join("hbone-server.jsonl");
    let server = start_hbone_server(&topo, &cert, &key, &json_log, "vip");
    let r = topo
        .run_echo_client(
            Node::Client,
            "198.18.10.5".parse::<std::net::IpAddr>().unwrap(),
            80,
            3,
            10_000,
        )
        .unwrap();
    assert_eq!((r.ok, r.failed, r.bytes), (3, 0, 30_000), "{:?}", r.errors);
    drop(server);
    let requests = server_events(&json_log, "request");
    assert_eq!(requests.len(), 3, "{requests:#?}");
    let prefix = format!("for=\"{CLIENT_ADDR}:");
    for req in &requests {
        assert_eq!(req["status"], 200, "{req:#}");
        assert_eq!(req["authority"], "198.18.0.5:8080", "{req:#}");
        let forwarded = req["forwarded"].as_str().unwrap_or_default();
        assert!(
            forwarded.starts_with(&prefix)
                && forwarded.ends_with("\";host=pyecho.default.svc.cluster.local"),
            "{req:#}"
        );
        assert_eq!(
            req["client_san"].as_str(),
            Some(spiffe("client").as_str()),
            "{req:#}"
        );
    }
    topo.wait_for_stats(Node::GatewayA, Duration::from_secs(5), |s| {
        match counter(s, &["totals", "service_connections"]) {
            3 => Ok(()),
            n => Err(format!("service_connections = {n}")),
        }
    })
    .unwrap_or_else(|e| panic!("{e:#}"));
}

/// Certificate rotation (issue 9, item 6): with a 10 s certificate lifetime, both
/// gateways renew their workloads' certificates every 5 s (half the lifetime) while a
/// 60 s transfer runs through one HBONE tunnel: the transfer is byte-exact on that same
/// tunnel, every renewal reaches the dataplanes, and a new tunnel presents the new
/// certificate, whose serial the independent Python server reports.
#[test]
fn test_certificates_rotate_at_half_life_under_a_long_transfer() {
    if !require_root("test_certificates_rotate_at_half_life_under_a_long_transfer") {
        return;
    }
    // Idle tunnels close after 2 s, so the Python server's second connection is a
    // new tunnel with a new handshake.
    let topo = interop_topology_with("irot", &["--cert-ttl", "10s"], &["--hbone-idle-secs", "2"]);
    let (cert, key) = issue(
        &topo.ca_dir(),
        &spiffe("pyserver"),
        topo.tmp_dir(),
        "pyserver",
        false,
    );
    let json_log = topo.tmp_dir().join("hbone-server.jsonl");
    let _server = start_hbone_server(&topo, &cert, &key, &json_log, "rot");
    let echo = |payload: u64| {
        let r = topo
            .run_echo_client(
                Node::Client,
                PYSERVER_ADDR.parse::<std::net::IpAddr>().unwrap(),
                PYSERVER_PORT,
                1,
                payload,
            )
            .unwrap();
        assert_eq!((r.ok, r.bytes), (1, payload), "{:?}", r.errors);
    };
    echo(1000);
    let _web = topo
        .start_fileserver(Node::Server, xdpmesh_netns::FILESERVER_PORT)
        .unwrap();
    // 60 MiB at 1 MiB/s: a 60 s transfer through one tunnel to gateway B.
    let size = 60 * 1024 * 1024;
    let url = format!(
        "http://198.18.2.2:{}/blob?size={size}&seed=6",
        xdpmesh_netns::FILESERVER_PORT
    );
    let out = topo
        .run_timeout(
            Node::Client,
            &[
                "sh",
                "-c",
                &format!("curl -sS --limit-rate 1M '{url}' | sha256sum"),
            ],
            Duration::from_secs(120),
        )
        .unwrap();
    let sha = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        sha.split_whitespace().next(),
        Some(xdpmesh_netns::blob_sha256(size, 6).as_str()),
        "the transfer is byte-exact"
    );
    // Two tunnels so far: the first to the Python server (closed when idle) and the one
    // to gateway B that carried the whole transfer across every renewal.
    let after = topo
        .wait_for_stats(Node::GatewayA, Duration::from_secs(5), |s| {
            let got = (
                counter(s, &["totals", "hbone_tunnels_opened"]),
                counter(s, &["totals", "hbone_tunnels_closed"]),
                counter(s, &["totals", "hbone_tunnel_failures"]),
            );
            if got == (2, 1, 0) {
                Ok(())
            } else {
                Err(format!("tunnels (opened, closed, failed) = {got:?}"))
            }
        })
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(
        counter(&after, &["totals", "hbone_streams"]),
        2,
        "{after:#}"
    );
    // Renewed every 5 s on both gateways, each time loaded by the dataplane.
    for node in [Node::GatewayA, Node::GatewayB] {
        let s = topo.gateway_stats(node).unwrap();
        let loads = counter(&s, &["identity_loads"]);
        assert!(
            loads >= 6,
            "{node:?}: {loads} identity sets loaded, want the first and >= 5 renewals"
        );
        let renewed = topo
            .control_log(node)
            .matches("workload certificates renewed at half their lifetime")
            .count();
        assert!(renewed >= 5, "{node:?}: {renewed} renewals logged");
    }
    // The first tunnel to the Python server closed while idle; a new one presents the
    // renewed certificate.
    echo(1000);
    let accepted = server_events(&json_log, "conn_accepted");
    assert_eq!(accepted.len(), 2, "{accepted:#?}");
    let serials: Vec<&str> = accepted
        .iter()
        .map(|e| e["client_serial"].as_str().unwrap_or_default())
        .collect();
    assert!(
        !serials[0].is_empty() && !serials[1].is_empty(),
        "{accepted:#?}"
    );
    assert_ne!(
        serials[0], serials[1],
        "a new tunnel presents the renewed certificate"
    );
    assert!(
        accepted.iter().all(|e| e["client_san"] == spiffe("client")),
        "{accepted:#?}"
    );
}

fn join(errs: Vec<String>) -> Result<(), String> {
    if errs.is_empty() {
        Ok(())
    } else {
        Err(errs.join("\n  "))
    }
}

#[test]
fn test_refusals_each_with_a_reason_and_no_byte_to_the_pod() {
    if !require_root("test_refusals_each_with_a_reason_and_no_byte_to_the_pod") {
        return;
    }
    let topo = interop_topology("iref");
    let dir = topo.tmp_dir().to_path_buf();
    let mesh_ca = topo.ca_dir();
    let (pc_cert, pc_key) = issue(&mesh_ca, &spiffe("pyclient"), &dir, "pyclient", false);

    // The server pod: a listener that records every connection it accepts (and what it
    // read), plus the echo server the refused CONNECTs could otherwise have reached.
    let trap_file = dir.join("trap-accepted.txt");
    std::fs::write(&trap_file, "").unwrap();
    let trap_py = "import socket, sys\n\
         s = socket.socket()\n\
         s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
         s.bind(('0.0.0.0', int(sys.argv[2])))\n\
         s.listen(64)\n\
         f = open(sys.argv[1], 'a', buffering=1)\n\
         while True:\n\
         \x20   c, a = s.accept()\n\
         \x20   f.write('accepted %s:%d\\n' % a)\n\
         \x20   c.settimeout(1.0)\n\
         \x20   try:\n\
         \x20       f.write('read %d bytes\\n' % len(c.recv(65536)))\n\
         \x20   except Exception as e:\n\
         \x20       f.write('read: %r\\n' % (e,))\n\
         \x20   c.close()\n";
    let py = python();
    let mut traps = Vec::new();
    for port in [TRAP_PORT, POLICY_TRAP_PORT] {
        traps.push(
            topo.spawn(
                Node::Server,
                &[
                    py.to_str().unwrap(),
                    "-u",
                    "-c",
                    trap_py,
                    trap_file.to_str().unwrap(),
                    &port.to_string(),
                ],
            )
            .unwrap(),
        );
        topo.wait_tcp_listen(Node::Server, port, Duration::from_secs(10))
            .unwrap();
    }
    let _echo = topo.start_echo_server(Node::Server, ECHO_PORT).unwrap();

    let cx = Refusals {
        topo: &topo,
        trap_file: trap_file.clone(),
    };
    let mut failures: Vec<String> = Vec::new();
    let mut passed: Vec<&str> = Vec::new();
    let mut case = |name: &'static str, result: Result<(), String>| {
        eprintln!(
            "refusal case {name}: {}",
            if result.is_ok() { "ok" } else { "FAILED" }
        );
        match result {
            Ok(()) => passed.push(name),
            Err(e) => failures.push(format!("[{name}]\n  {e}")),
        }
    };

    // a. The server presents a certificate that is not the destination's identity.
    case("a: server SAN is not the destination's identity", {
        let (cert, key) = issue(&mesh_ca, &spiffe("impostor"), &dir, "impostor", false);
        let json_log = dir.join("hbone-server-impostor.jsonl");
        let server = start_hbone_server(&topo, &cert, &key, &json_log, "impostor");
        let failures_before = total(&topo, Node::GatewayA, "hbone_tunnel_failures");
        let mark = LogMark::now(&topo, Node::GatewayA);
        let r = topo.run_echo_client(
            Node::Client,
            PYSERVER_ADDR.parse::<std::net::IpAddr>().unwrap(),
            PYSERVER_PORT,
            1,
            1024,
        );
        let mut errs = Vec::new();
        match r {
            Ok(r) if r.ok == 0 && r.failed == 1 => {}
            Ok(r) => errs.push(format!(
                "the client pod's connection was not refused: ok {} failed {} errors {:?}",
                r.ok, r.failed, r.errors
            )),
            Err(e) => errs.push(format!("echo client: {e:#}")),
        }
        let want = [
            "HBONE tunnel refused: identity",
            "reason=identity verification error: peer did not present the expected SAN \
             (spiffe://cluster.local/ns/default/sa/pyserver), got \
             spiffe://cluster.local/ns/default/sa/impostor",
        ];
        if let Err(e) = mark.wait_line(&format!("{want:?}"), Duration::from_secs(5), |l| {
            has_all(l, &want)
        }) {
            errs.push(e);
        }
        // The pod's connection's access record names the identity required of the
        // server, not the one it presented (that is in the error).
        let record = [
            "access: connection complete src.addr=198.18.1.2:",
            "dst.identity=\"spiffe://cluster.local/ns/default/sa/pyserver\" \
             direction=\"outbound\"",
            "error=\"HBONE tunnel refused: identity verification error: peer did not present \
             the expected SAN (spiffe://cluster.local/ns/default/sa/pyserver), got \
             spiffe://cluster.local/ns/default/sa/impostor\"",
        ];
        match mark.wait_line(&format!("{record:?}"), Duration::from_secs(5), |l| {
            has_all(l, &record)
        }) {
            // Exactly ztunnel's fields of an outbound HBONE refusal.
            Ok(line) => {
                let want = [
                    "src.addr",
                    "src.workload",
                    "src.namespace",
                    "src.identity",
                    "dst.addr",
                    "dst.hbone_addr",
                    "dst.workload",
                    "dst.namespace",
                    "dst.identity",
                    "direction",
                    "bytes_sent",
                    "bytes_recv",
                    "duration",
                    "error",
                ];
                let got = access_fields(&line);
                if got != want {
                    errs.push(format!(
                        "wrong-identity record fields {got:?}, want {want:?}: {line}"
                    ));
                }
            }
            Err(e) => errs.push(e),
        }
        let deadline = Instant::now() + Duration::from_secs(3);
        let mut failures_after;
        loop {
            failures_after = total(&topo, Node::GatewayA, "hbone_tunnel_failures");
            if failures_after > failures_before || Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        if failures_after != failures_before + 1 {
            errs.push(format!(
                "gateway A hbone_tunnel_failures went from {failures_before} to \
                 {failures_after}, want exactly one more"
            ));
        }
        drop(server);
        let requests = server_events(&json_log, "request");
        if !requests.is_empty() {
            errs.push(format!(
                "the impostor server got CONNECT requests: {requests:?}"
            ));
        }
        if let Err(e) = cx.trap_empty() {
            errs.push(e);
        }
        join(errs)
    });

    // b. A client from another trust domain: issued by a foreign CA, and (separately)
    //    issued by the mesh CA with a SPIFFE ID in another trust domain.
    case("b1: client cert from a foreign CA (other.local)", {
        let foreign = dir.join("ca-other");
        ca_init(&foreign, "other.local");
        let id = "spiffe://other.local/ns/default/sa/pyclient";
        let (cert, key) = issue(&foreign, id, &dir, "pyclient-other-ca", false);
        cx.tls_refused(
            &cert,
            &key,
            &[
                "HBONE tunnel failed",
                "reason=TLS error: invalid peer certificate: UnknownIssuer",
            ],
        )
    });
    case("b2: mesh CA, SPIFFE ID in trust domain other.local", {
        let id = "spiffe://other.local/ns/default/sa/pyclient";
        let (cert, key) = issue(&mesh_ca, id, &dir, "pyclient-other-td", false);
        cx.tls_refused(
            &cert,
            &key,
            &[
                "HBONE tunnel refused: identity",
                "reason=identity verification error: peer did not present the expected \
                 trustdomain (cluster.local), got spiffe://other.local/ns/default/sa/pyclient",
            ],
        )
    });

    // c. An expired certificate.
    case("c: expired client certificate", {
        let (cert, key) = issue(
            &mesh_ca,
            &spiffe("pyclient"),
            &dir,
            "pyclient-expired",
            true,
        );
        // (rustls goes on with the verification time and the certificate's end.)
        cx.tls_refused(
            &cert,
            &key,
            &[
                "HBONE tunnel failed",
                "reason=TLS error: invalid peer certificate: certificate expired: \
                 verification time ",
            ],
        )
    });

    // d. A certificate from an unknown CA in the same trust domain. `ca init` names
    //    every root `O=<trust domain>, CN=xdpmesh root CA`, so the rogue root has the
    //    mesh root's name: webpki then finds the mesh root as the issuer by name and
    //    reports the failed signature check (BadSignature) rather than UnknownIssuer.
    case("d: client cert from an unknown CA (cluster.local)", {
        let rogue = dir.join("ca-rogue");
        ca_init(&rogue, "cluster.local");
        let (cert, key) = issue(&rogue, &spiffe("pyclient"), &dir, "pyclient-rogue", false);
        cx.tls_refused(
            &cert,
            &key,
            &[
                "HBONE tunnel failed",
                "reason=TLS error: invalid peer certificate: BadSignature",
            ],
        )
    });

    // e. No client certificate at all.
    case(
        "e: no client certificate",
        cx.openssl_refused(
            &["-tls1_3", "-alpn", "h2"],
            &[
                "HBONE tunnel failed",
                "reason=TLS error: peer sent no certificates",
            ],
        ),
    );

    // f. TLS 1.2 only.
    let (cert_s, key_s) = (
        pc_cert.to_str().unwrap().to_owned(),
        pc_key.to_str().unwrap().to_owned(),
    );
    case(
        "f: TLS 1.2 only",
        // A TLS 1.2 ClientHello has no supported_versions extension, which a TLS 1.3
        // only server requires.
        cx.openssl_refused(
            &["-tls1_2", "-alpn", "h2", "-cert", &cert_s, "-key", &key_s],
            &[
                "HBONE tunnel failed",
                "reason=TLS error: peer is incompatible: SupportedVersionsExtensionRequired",
            ],
        ),
    );

    // g. ALPN without h2.
    case(
        "g: ALPN http/1.1 only",
        cx.openssl_refused(
            &[
                "-tls1_3", "-alpn", "http/1.1", "-cert", &cert_s, "-key", &key_s,
            ],
            &[
                "HBONE tunnel failed",
                "reason=TLS error: peer doesn't support any known protocol",
            ],
        ),
    );

    // h. CONNECT to a workload that is not on this node.
    case(
        "h: CONNECT to a workload on another node",
        cx.connect_refused(
            &pc_cert,
            &pc_key,
            &format!("{CLIENT_ADDR}:{ECHO_PORT}"),
            400,
            "refused (400) naming the target and the address accepted on",
            |l| {
                has_all(
                    l,
                    &[
                        "access: connection complete",
                        "src.identity=\"spiffe://cluster.local/ns/default/sa/pyclient\" \
                         dst.addr=198.18.2.2:15008 dst.workload=\"server\"",
                        "error=\"HBONE request refused (400): target 198.18.1.2:7000 does not \
                         match the address the HBONE connection was accepted on (198.18.2.2)\"",
                    ],
                )
            },
        ),
    );

    // i. CONNECT to a port of the served workload where nothing listens.
    case(
        "i: CONNECT to a closed port of the served workload",
        cx.connect_refused(
            &pc_cert,
            &pc_key,
            &format!("{SERVER_ADDR}:9999"),
            503,
            "refused (503): the workload did not accept the connection, for :9999",
            |l| {
                has_all(
                    l,
                    &[
                        "error=\"HBONE request refused (503): the workload did not accept the \
                         connection to 198.18.2.2:9999\"",
                        "src.identity=\"spiffe://cluster.local/ns/default/sa/pyclient\"",
                        "dst.hbone_addr=198.18.2.2:9999",
                    ],
                )
            },
        ),
    );

    // j. CONNECT denied by an authorization policy (DENY pyclient → server:9001).
    case(
        "j: CONNECT denied by a DENY policy",
        cx.connect_refused(
            &pc_cert,
            &pc_key,
            &format!("{SERVER_ADDR}:{POLICY_TRAP_PORT}"),
            401,
            "\"refused (401)\" naming the policy and the peer",
            |l| {
                has_all(
                    l,
                    &[
                        "src.identity=\"spiffe://cluster.local/ns/default/sa/pyclient\"",
                        "dst.hbone_addr=198.18.2.2:9001 dst.workload=\"server\"",
                        "error=\"HBONE request refused (401): authorization policy: denied by \
                         DENY policy default/no-pyclient-to-9001 (workload default/server)\"",
                    ],
                )
            },
        ),
    );

    // Nothing of any refused attempt reached the server pod.
    if let Err(e) = cx.trap_empty() {
        failures.push(format!("[end] {e}"));
    }
    // Counters once idle: every TLS-level refusal (b1, b2, c, d, e, f, g) is a tunnel
    // failure on B, the three error responses (h, i, j) are refusals, one of them by
    // policy; A failed one tunnel (a).
    let [a, b] = topo.wait_gateways_idle(Duration::from_secs(20));
    let want = [
        (&a, "A", "hbone_tunnel_failures", 1),
        (&b, "B", "hbone_tunnel_failures", 7),
        (&b, "B", "hbone_refused", 3),
        (&b, "B", "policy_denied", 1),
        (&b, "B", "hbone_tunnels_accepted", 10),
    ];
    for (stats, gw, name, n) in want {
        let got = counter(stats, &["totals", name]);
        if got != n {
            failures.push(format!("[stats] gateway {gw} {name} = {got}, want {n}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} refusal check(s) failed ({} case(s) passed: {passed:?}):\n\n{}\n\ngateway A totals: {}\ngateway B totals: {}",
        failures.len(),
        passed.len(),
        failures.join("\n\n"),
        a["totals"],
        b["totals"]
    );
}

/// Both HBONE directions over IPv6 with the independent Python peers, on a dual-stack
/// topology: pyclient's CONNECT to `[2001:2:0:2::2]:7000` is terminated by gateway
/// B's inbound HBONE and reaches the server pod's echo server; the client pod's
/// connection to `[2001:2::5]:8080` is carried by gateway A's outbound HBONE to
/// `hbone_server.py` on `[2001:2::5]:15008`, which checks the bracketed authority, the
/// `forwarded` header and the client's identity.
#[test]
fn test_interop_ipv6_both_directions_with_bracketed_authorities() {
    if !require_root("test_interop_ipv6_both_directions_with_bracketed_authorities") {
        return;
    }
    let topo = interop_topology_of("iv6", Families::Dual, &[], &[]);
    let _echo = topo.start_echo_server(Node::Server, ECHO_PORT).unwrap();
    let server6 = "2001:2:0:2::2";

    // pyclient → gateway B (inbound).
    let (cert, key) = issue(
        &topo.ca_dir(),
        &spiffe("pyclient"),
        topo.tmp_dir(),
        "pyclient",
        false,
    );
    let forwarded_for = format!("[{PYCLIENT_ADDR6}]:40000");
    let run = hbone_client_to(
        &topo,
        &format!("[{server6}]:{HBONE_PORT}"),
        &cert,
        &key,
        &format!("[{server6}]:{ECHO_PORT}"),
        &[
            "--forwarded-for",
            &forwarded_for,
            "--streams",
            "3",
            "--bytes",
            "100000",
        ],
        30,
    );
    let r = run
        .report
        .as_ref()
        .unwrap_or_else(|| panic!("no report: {}", run.describe()));
    assert_eq!(
        (r["ok"].as_u64(), r["failed"].as_u64(), r["bytes"].as_u64()),
        (Some(3), Some(0), Some(300_000)),
        "{}",
        run.describe()
    );
    assert_eq!(run.statuses(), vec![Some(200); 3], "{}", run.describe());
    assert_eq!(
        r["peer_san"].as_str(),
        Some(spiffe("server").as_str()),
        "{}",
        run.describe()
    );
    let log = strip_ansi(&std::fs::read_to_string(dataplane_log(&topo, Node::GatewayB)).unwrap());
    let inbound: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("direction=\"inbound\""))
        .collect();
    assert_eq!(inbound.len(), 3, "{log}");
    for l in inbound {
        assert!(l.contains(&format!("src.addr=[{PYCLIENT_ADDR6}]:")), "{l}");
        assert!(
            l.contains(&format!(
                "dst.addr=[{server6}]:15008 dst.hbone_addr=[{server6}]:{ECHO_PORT} \
                 dst.workload=\"server\""
            )),
            "{l}"
        );
        assert!(!l.contains("error="), "{l}");
    }

    // client pod → gateway A (outbound) → pyserver.
    let (cert, key) = issue(
        &topo.ca_dir(),
        &spiffe("pyserver"),
        topo.tmp_dir(),
        "pyserver",
        false,
    );
    let json_log = topo.tmp_dir().join("hbone-server-v6.jsonl");
    let server = start_hbone_server_on(&topo, PYSERVER_ADDR6, &cert, &key, &json_log, "v6");
    let e = topo
        .run_echo_client(
            Node::Client,
            PYSERVER_ADDR6.parse::<std::net::IpAddr>().unwrap(),
            PYSERVER_PORT,
            3,
            64 * 1024,
        )
        .unwrap();
    assert_eq!(
        (e.ok, e.failed, e.bytes),
        (3, 0, 3 * 64 * 1024),
        "echo client errors {:?}\nhbone_server.py log:\n{}",
        e.errors,
        std::fs::read_to_string(&json_log).unwrap_or_default()
    );
    drop(server);
    let requests = server_events(&json_log, "request");
    assert_eq!(requests.len(), 3, "{requests:#?}");
    let client_prefix = "for=\"[2001:2:0:1::2]:";
    for req in &requests {
        assert_eq!(req["status"], 200, "{req:#}");
        assert_eq!(
            req["authority"].as_str(),
            Some(format!("[{PYSERVER_ADDR6}]:{PYSERVER_PORT}").as_str()),
            "{req:#}"
        );
        assert_eq!(
            req["client_san"].as_str(),
            Some(spiffe("client").as_str()),
            "{req:#}"
        );
        let forwarded = req["forwarded"].as_str().unwrap_or_default();
        assert!(forwarded.starts_with(client_prefix), "{req:#}");
    }
}
