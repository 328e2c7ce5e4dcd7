//! Live updates and restarts (issue 9, items 4 and 5):
//!
//! - the control process watches its config file, so a file replaced by rename (as
//!   editors and deployment tools write it) or rewritten in place takes effect for new
//!   connections within a second, without a `SIGHUP`; a bad file is rejected with its
//!   file, line and reason, and the tables in force stay;
//! - a control process killed with SIGKILL under load: the dataplanes keep forwarding
//!   on the tables in force (established and new connections), report the control
//!   process gone and the tables' age, and a restarted control process takes over.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use xdpmesh_netns::stat as counter;
use xdpmesh_netns::topology::SERVER_ADDR;
use xdpmesh_netns::{
    require_root, unique_prefix, GatewayKind, Node, ProcHandle, Topology, TopologyOpts, ECHO_PORT,
    IPERF_PORT,
};

fn demo_config() -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../control/testdata/demo.yaml"),
    )
    .unwrap()
}

/// The demo config, with a DENY policy on the server's echo port when `deny`.
fn config(deny: bool) -> String {
    let mut text = demo_config();
    if deny {
        text.push_str(&format!(
            "policies:\n  - name: no-echo\n    namespace: default\n    workload: server\n    \
             action: DENY\n    ports: [{ECHO_PORT}]\n"
        ));
    }
    text
}

fn generation(topo: &Topology, node: Node) -> u64 {
    counter(&topo.gateway_stats(node).unwrap(), &["generation"])
}

/// Waits until both gateways' stats show their workers on a table generation (the
/// first snapshots, written before the workers loaded one, say 0): generations read
/// afterwards are ones in force.
fn wait_loaded(topo: &Topology) {
    for node in [Node::GatewayA, Node::GatewayB] {
        topo.wait_for_stats(node, Duration::from_secs(5), |s| {
            match counter(s, &["generation"]) {
                0 => Err("no generation loaded yet".into()),
                _ => Ok(()),
            }
        })
        .unwrap_or_else(|e| panic!("{e:#}"));
    }
}

/// Waits until gateway B runs a generation newer than `before`; returns it and how long
/// it took. Fails after 1 s: a change must take effect within a second.
fn wait_new_generation(topo: &Topology, before: u64, since: Instant) -> (u64, Duration) {
    loop {
        let g = generation(topo, Node::GatewayB);
        if g > before {
            return (g, since.elapsed());
        }
        assert!(
            since.elapsed() < Duration::from_secs(1),
            "gateway B still on generation {before} 1 s after the config file changed"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// One echo exchange from the client pod: whether it went through.
fn echo_ok(topo: &Topology) -> bool {
    let r = topo
        .run_echo_client(Node::Client, SERVER_ADDR, ECHO_PORT, 1, 1000)
        .unwrap();
    r.ok == 1 && r.bytes == 1000
}

/// `iperf3 -c <server> -t secs -b rate -J` from the client pod, in the background: its
/// JSON report is the process's log.
fn spawn_iperf(topo: &Topology, secs: u32, rate: &str) -> ProcHandle {
    let (server, port, secs) = (
        SERVER_ADDR.to_string(),
        IPERF_PORT.to_string(),
        secs.to_string(),
    );
    topo.spawn(
        Node::Client,
        &[
            "iperf3", "-c", &server, "-p", &port, "-t", &secs, "-b", rate, "-J",
        ],
    )
    .unwrap()
}

/// Waits up to `timeout` for a [`spawn_iperf`] run to end, asserts that it succeeded
/// and returns its JSON report.
fn finish_iperf(iperf: &mut ProcHandle, timeout: Duration) -> serde_json::Value {
    let status = iperf.wait_timeout(timeout).unwrap();
    let report: serde_json::Value = serde_json::from_str(&iperf.log())
        .unwrap_or_else(|e| panic!("iperf3 report ({e}): {}", iperf.log()));
    assert!(
        status.is_some_and(|s| s.success()),
        "iperf3: {}",
        report["error"]
    );
    report
}

/// A topology whose gateways run on the config file `mesh.yaml` of its temp dir,
/// holding `text`, with their tables loaded; the echo server runs on the server pod.
fn topology_with_config(tag: &str, text: &str) -> (Topology, PathBuf, ProcHandle) {
    let mut topo = Topology::new(&unique_prefix(tag), TopologyOpts::default()).expect("topology");
    let cfg: PathBuf = topo.tmp_dir().join("mesh.yaml");
    std::fs::write(&cfg, text).unwrap();
    topo.start_gateways(GatewayKind::xdpmesh(1), &cfg)
        .expect("gateways");
    wait_loaded(&topo);
    let echo = topo.start_echo_server(Node::Server, ECHO_PORT).unwrap();
    (topo, cfg, echo)
}

/// Replaces `cfg` by a file holding `text`, by rename (as editors and deployment tools
/// save it). Returns when the rename happened.
fn replace_by_rename(topo: &Topology, cfg: &Path, text: &str) -> Instant {
    let tmp = topo.tmp_dir().join(".mesh.yaml.tmp");
    std::fs::write(&tmp, text).unwrap();
    let t = Instant::now();
    std::fs::rename(&tmp, cfg).unwrap();
    t
}

#[test]
fn test_config_file_changes_take_effect_without_sighup() {
    if !require_root("test_config_file_changes_take_effect_without_sighup") {
        return;
    }
    let (topo, cfg, _echo) = topology_with_config("xlive", &config(true));
    assert!(!echo_ok(&topo), "DENY in force");

    // Replaced by rename, as an editor saves it.
    let g0 = generation(&topo, Node::GatewayB);
    let t = replace_by_rename(&topo, &cfg, &config(false));
    let (g1, took) = wait_new_generation(&topo, g0, t);
    eprintln!("renamed file in force after {took:?}");
    assert!(echo_ok(&topo), "the policy is gone");

    // Rewritten in place.
    let t = Instant::now();
    std::fs::write(&cfg, config(true)).unwrap();
    let (g2, took) = wait_new_generation(&topo, g1, t);
    eprintln!("file rewritten in place in force after {took:?}");
    assert!(!echo_ok(&topo), "DENY in force again");

    // A bad file: rejected with file, line and reason; the tables in force stay.
    let bad = config(false).replacen("name: client", "name: Client", 1);
    std::fs::write(&cfg, &bad).unwrap();
    let want = format!(
        "rejected config: {}:10:11: workload name \"Client\" is not a valid DNS-1123 label",
        cfg.display()
    );
    let deadline = Instant::now() + Duration::from_secs(2);
    while !topo.control_log(Node::GatewayB).contains(&want) {
        assert!(
            Instant::now() < deadline,
            "no {want:?} in gateway B's control log:\n{}",
            topo.control_log(Node::GatewayB)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(topo
        .control_log(Node::GatewayB)
        .contains(&format!("generation {g2} stays in force")));
    assert_eq!(generation(&topo, Node::GatewayB), g2);
    assert!(
        !echo_ok(&topo),
        "the DENY of the tables in force still holds"
    );

    // Each change was one reload on each gateway: no SIGHUP, no double publication.
    for node in [Node::GatewayA, Node::GatewayB] {
        let log = topo.control_log(node);
        assert_eq!(
            log.matches("reloading the config: the file changed")
                .count(),
            3,
            "{node:?}:\n{log}"
        );
        assert_eq!(
            log.matches("reloading the config: SIGHUP").count(),
            0,
            "{node:?}"
        );
    }
}

/// SIGKILL of both control processes while an iperf3 stream and echo connections run
/// through HBONE: nothing established breaks, new connections keep working on the last
/// tables, `stats` reports the control process gone and the tables' age, and restarted
/// control processes take the same shared memory and maps over.
#[test]
fn test_control_killed_under_load_then_restarted_disturbs_nothing() {
    if !require_root("test_control_killed_under_load_then_restarted_disturbs_nothing") {
        return;
    }
    let mut topo =
        Topology::new(&unique_prefix("xkill"), TopologyOpts::default()).expect("topology");
    let cfg = Path::new(env!("CARGO_MANIFEST_DIR")).join("../control/testdata/demo-hbone.yaml");
    topo.start_gateways(GatewayKind::xdpmesh(1), &cfg)
        .expect("gateways");
    let _echo = topo.start_echo_server(Node::Server, ECHO_PORT).unwrap();
    let _iperf = topo.start_iperf_server(Node::Server, IPERF_PORT).unwrap();
    wait_loaded(&topo);
    let generation_before = generation(&topo, Node::GatewayB);
    // 14 s of iperf3 at 100 Mbit/s: established before the kill, still running after
    // the restart.
    let mut iperf = spawn_iperf(&topo, 14, "100M");
    std::thread::sleep(Duration::from_secs(2));
    for node in [Node::GatewayA, Node::GatewayB] {
        topo.stop_gateway_control(node, Signal::SIGKILL).unwrap();
    }
    let killed = Instant::now();
    // New connections work throughout on the last tables.
    let r = topo
        .run_echo_client(Node::Client, SERVER_ADDR, ECHO_PORT, 100, 4096)
        .unwrap();
    assert_eq!(
        (r.ok, r.failed, r.bytes),
        (100, 0, 100 * 4096),
        "{:?}",
        r.errors
    );
    // Both dataplanes see the control process gone once its heartbeat is 5 s old.
    for node in [Node::GatewayA, Node::GatewayB] {
        let s = topo
            .wait_for_stats(node, Duration::from_secs(10), |s| {
                if s["tables"]["control_alive"] == false {
                    Ok(())
                } else {
                    Err(format!("tables: {}", s["tables"]))
                }
            })
            .unwrap_or_else(|e| panic!("{e:#}"));
        assert!(
            counter(&s, &["tables", "control_heartbeat_age_ms"]) > 5000,
            "{s:#}"
        );
        assert!(
            counter(&s, &["tables", "age_ms"]) >= killed.elapsed().as_millis() as u64,
            "{s:#}"
        );
        assert_eq!(
            counter(&s, &["tables", "in_force"]),
            generation_before,
            "{s:#}"
        );
    }
    let r = topo
        .run_echo_client(Node::Client, SERVER_ADDR, ECHO_PORT, 100, 4096)
        .unwrap();
    assert_eq!((r.ok, r.failed), (100, 0), "{:?}", r.errors);
    // Restarted, each takes over the same table file and maps.
    for node in [Node::GatewayA, Node::GatewayB] {
        topo.start_gateway_control(node).unwrap();
    }
    for node in [Node::GatewayA, Node::GatewayB] {
        let s = topo
            .wait_for_stats(node, Duration::from_secs(10), |s| {
                if s["tables"]["control_alive"] == true
                    && counter(s, &["tables", "in_force"]) > generation_before
                {
                    Ok(())
                } else {
                    Err(format!("tables: {}", s["tables"]))
                }
            })
            .unwrap_or_else(|e| panic!("{e:#}"));
        assert!(counter(&s, &["tables", "age_ms"]) < 10_000, "{s:#}");
    }
    let report = finish_iperf(&mut iperf, Duration::from_secs(30));
    let received = report["end"]["sum_received"]["bytes"].as_u64().unwrap_or(0);
    assert!(
        received > 100_000_000,
        "iperf3 moved {received} bytes across the kill and restart"
    );
    assert!(
        topo.dead_gateway_processes().is_empty(),
        "{:#?}",
        topo.dead_gateway_processes()
    );
    for node in [Node::GatewayA, Node::GatewayB] {
        let log = topo.dataplane_log(node);
        assert_eq!(
            log.matches(
                "the control process is gone (no heartbeat): forwarding on the tables in force"
            )
            .count(),
            1,
            "{node:?}:\n{log}"
        );
        assert_eq!(
            log.matches("a control process is back").count(),
            1,
            "{node:?}"
        );
    }
}

/// Keeps `argv[3]` connections open to `argv[1]:argv[2]`, echoing a line on each in
/// turn, until the file `argv[4]` exists; prints `OK <lines>`, or fails on the first
/// connection that breaks or returns a wrong line.
const MANY_ECHO_PY: &str = "import socket, sys, os, time\n\
    socks = [socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10) for _ in range(int(sys.argv[3]))]\n\
    n = 0\n\
    while not os.path.exists(sys.argv[4]):\n\
    \x20   for i, s in enumerate(socks):\n\
    \x20       line = b'c%d l%d\\n' % (i, n)\n\
    \x20       s.sendall(line); got = b''\n\
    \x20       while len(got) < len(line):\n\
    \x20           b = s.recv(100)\n\
    \x20           if not b: sys.exit('connection %d closed after %d rounds' % (i, n))\n\
    \x20           got += b\n\
    \x20       if got != line: sys.exit('connection %d: corrupt line %d' % (i, n))\n\
    \x20   n += 1; time.sleep(0.05)\n\
    print('OK %d' % n)\n";

/// 100 config changes while an iperf3 stream and 200 echo connections run through
/// HBONE: workloads added and removed, a policy flipped, a service endpoint moved,
/// written by rename and in place. No established connection breaks, no byte is
/// corrupted, and every change is in force for new connections within a second
/// (checked on both gateways, and by a connection the flipped policy refuses or lets
/// through).
#[test]
fn test_100_config_changes_under_load_break_nothing() {
    if !require_root("test_100_config_changes_under_load_break_nothing") {
        return;
    }
    let mut topo =
        Topology::new(&unique_prefix("xchg"), TopologyOpts::default()).expect("topology");
    let base = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../control/testdata/demo-hbone.yaml"),
    )
    .unwrap()
    .replace(
        "    ports: [80, 5201, 7000]",
        "    ports: [80, 5201, 7000]\n    labels: {app: echo}",
    );
    // Change i: i extra workloads (added and removed as i moves), the policy on port
    // 7100 flipped on odd i, the service's endpoint list moved between the server and
    // a spare workload.
    let config = |i: usize| {
        let mut text = base.clone();
        for k in 0..(i % 4) {
            text = text.replace(
                "workloads:\n",
                &format!(
                    "workloads:\n  - name: extra-{k}\n    namespace: default\n    service_account: extra\n    \
                     node: node-b\n    addresses: [198.18.2.{}]\n    protocol: HBONE\n",
                    100 + k
                ),
            );
        }
        let endpoint = if i.is_multiple_of(3) {
            "server"
        } else {
            "extra-0"
        };
        let endpoint = if i.is_multiple_of(4) {
            "server"
        } else {
            endpoint
        };
        text.push_str(&format!(
            "services:\n  - name: echo\n    namespace: default\n    addresses: [198.18.10.1]\n    \
             ports: [{{port: 7000}}]\n    endpoints: [{endpoint}]\n"
        ));
        if !i.is_multiple_of(2) {
            text.push_str(
                "policies:\n  - name: flip\n    namespace: default\n    workload: server\n    \
                 action: DENY\n    ports: [7100]\n",
            );
        }
        text
    };
    let cfg: PathBuf = topo.tmp_dir().join("mesh.yaml");
    std::fs::write(&cfg, config(0)).unwrap();
    topo.start_gateways(GatewayKind::xdpmesh(1), &cfg)
        .expect("gateways");
    wait_loaded(&topo);
    let _echo = topo.start_echo_server(Node::Server, ECHO_PORT).unwrap();
    let _probe = topo.start_echo_server(Node::Server, 7100).unwrap();
    let _iperf = topo.start_iperf_server(Node::Server, IPERF_PORT).unwrap();
    let stop = topo.tmp_dir().join("echo.stop");
    let mut echoes = topo
        .spawn(
            Node::Client,
            &[
                "python3",
                "-c",
                MANY_ECHO_PY,
                &SERVER_ADDR.to_string(),
                &ECHO_PORT.to_string(),
                "200",
                &stop.to_string_lossy(),
            ],
        )
        .unwrap();
    let mut iperf = spawn_iperf(&topo, 25, "50M");
    std::thread::sleep(Duration::from_secs(2));
    let mut slowest = Duration::ZERO;
    for i in 1..=100usize {
        let before = [
            generation(&topo, Node::GatewayA),
            generation(&topo, Node::GatewayB),
        ];
        let t = Instant::now();
        if i.is_multiple_of(2) {
            let tmp = topo.tmp_dir().join(".mesh.yaml.new");
            std::fs::write(&tmp, config(i)).unwrap();
            std::fs::rename(&tmp, &cfg).unwrap();
        } else {
            std::fs::write(&cfg, config(i)).unwrap();
        }
        for (k, node) in [Node::GatewayA, Node::GatewayB].into_iter().enumerate() {
            while generation(&topo, node) <= before[k] {
                assert!(
                    t.elapsed() < Duration::from_secs(1),
                    "change {i}: {node:?} still on generation {}",
                    before[k]
                );
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        slowest = slowest.max(t.elapsed());
        // Every tenth change, the flipped policy's verdict on a new connection.
        if i.is_multiple_of(10) || i % 10 == 5 {
            let r = topo
                .run_echo_client(Node::Client, SERVER_ADDR, 7100, 1, 100)
                .unwrap();
            let denied = !i.is_multiple_of(2);
            assert_eq!(
                (r.ok, r.failed),
                if denied { (0, 1) } else { (1, 0) },
                "change {i}: {:?}",
                r.errors
            );
        }
    }
    eprintln!("slowest change in force on both gateways after {slowest:?}");
    std::fs::write(&stop, "").unwrap();
    let status = echoes.wait_timeout(Duration::from_secs(20)).unwrap();
    let log = echoes.log();
    assert!(
        status.is_some_and(|s| s.success()),
        "an echo connection broke: {log}"
    );
    let rounds: u64 = log
        .trim()
        .strip_prefix("OK ")
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(
        rounds >= 10,
        "200 connections echoed only {rounds} rounds: {log}"
    );
    let report = finish_iperf(&mut iperf, Duration::from_secs(40));
    assert!(
        report["end"]["sum_received"]["bytes"].as_u64().unwrap_or(0) > 50_000_000,
        "{}",
        report["end"]
    );
    assert!(
        topo.dead_gateway_processes().is_empty(),
        "{:#?}",
        topo.dead_gateway_processes()
    );
}

/// A workload removed while it carries a connection (issue 9, live updates): the
/// connection drains through the dataplanes instead of breaking; new connections to
/// the removed workload are refused from the new generation on; once the connection
/// has ended, control stops diverting the address (logged), and the server's traffic
/// is the kernel's again.
#[test]
fn test_a_removed_workload_drains_its_connections_then_is_no_longer_diverted() {
    if !require_root("test_a_removed_workload_drains_its_connections_then_is_no_longer_diverted") {
        return;
    }
    let (topo, cfg, _echo) = topology_with_config("xdrain", &config(false));
    let _iperf = topo.start_iperf_server(Node::Server, IPERF_PORT).unwrap();
    assert!(echo_ok(&topo), "through the mesh before the removal");
    let mut iperf = spawn_iperf(&topo, 6, "200M");
    std::thread::sleep(Duration::from_secs(2));
    // The server workload is removed (the file replaced by rename).
    let without_server = {
        let text = config(false);
        let at = text.find("  - name: server").expect("the server workload");
        text[..at].to_owned()
    };
    let before = [Node::GatewayA, Node::GatewayB].map(|n| generation(&topo, n));
    let removed = replace_by_rename(&topo, &cfg, &without_server);
    wait_new_generation(&topo, before[1], removed);
    topo.wait_for_stats(Node::GatewayA, Duration::from_secs(2), |s| {
        if counter(s, &["generation"]) > before[0] {
            Ok(())
        } else {
            Err("gateway A still on the old generation".into())
        }
    })
    .unwrap_or_else(|e| panic!("{e:#}"));
    // New connections follow the new tables: refused while the address drains.
    let no_route = counter(
        &topo.gateway_stats(Node::GatewayA).unwrap(),
        &["totals", "no_route"],
    );
    assert!(
        !echo_ok(&topo),
        "a new connection to the removed workload is refused"
    );
    topo.wait_for_stats(Node::GatewayA, Duration::from_secs(2), |s| {
        match counter(s, &["totals", "no_route"]) {
            n if n == no_route + 1 => Ok(()),
            n => Err(format!("no_route {n}, was {no_route}")),
        }
    })
    .unwrap_or_else(|e| panic!("{e:#}"));
    // The established connection finished through both dataplanes.
    let report = finish_iperf(&mut iperf, Duration::from_secs(30));
    let ended = Instant::now();
    let received = report["end"]["sum_received"]["bytes"].as_u64().unwrap_or(0);
    let seconds = report["end"]["sum_received"]["seconds"]
        .as_f64()
        .unwrap_or(0.0);
    assert!(
        received > 100_000_000 && seconds > 5.9,
        "iperf3 moved {received} bytes in {seconds} s across the removal"
    );
    // Then each control stops diverting the address, a second or so after the last
    // connection of before the removal ended.
    for node in [Node::GatewayA, Node::GatewayB] {
        let deadline = ended + Duration::from_secs(5);
        loop {
            let log = topo.control_log(node);
            let drained = log.lines().find(|l| {
                l.contains("removed address drained: its connections ended; no longer diverted")
                    && l.contains("addr=198.18.2.2")
            });
            if drained.is_some() {
                assert!(
                    !log.contains("drain timeout"),
                    "{node:?}: no drain timed out:\n{log}"
                );
                break;
            }
            assert!(Instant::now() < deadline, "{node:?}: not drained:\n{log}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    // The server is outside the mesh now: the kernel forwards to it, and the
    // dataplanes see no new connection.
    let opened = counter(
        &topo.gateway_stats(Node::GatewayA).unwrap(),
        &["totals", "opened_connections"],
    );
    assert!(
        echo_ok(&topo),
        "the kernel's path to a workload no longer in the mesh"
    );
    std::thread::sleep(Duration::from_millis(300));
    let s = topo.gateway_stats(Node::GatewayA).unwrap();
    assert_eq!(
        counter(&s, &["totals", "opened_connections"]),
        opened,
        "{s:#}"
    );
}
