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
    require_root, unique_prefix, GatewayKind, Node, Topology, TopologyOpts, ECHO_PORT, IPERF_PORT,
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

fn control_log(topo: &Topology, node: Node) -> String {
    let (_, log, _) = topo
        .gateway_logs()
        .into_iter()
        .find(|(n, _, _)| *n == node)
        .unwrap();
    std::fs::read_to_string(log).unwrap()
}

#[test]
fn test_config_file_changes_take_effect_without_sighup() {
    if !require_root("test_config_file_changes_take_effect_without_sighup") {
        return;
    }
    let mut topo =
        Topology::new(&unique_prefix("xlive"), TopologyOpts::default()).expect("topology");
    let cfg: PathBuf = topo.tmp_dir().join("mesh.yaml");
    std::fs::write(&cfg, config(true)).unwrap();
    topo.start_gateways(GatewayKind::xdpmesh(1), &cfg)
        .expect("gateways");
    let _echo = topo.start_echo_server(Node::Server, ECHO_PORT).unwrap();
    assert!(!echo_ok(&topo), "DENY in force");

    // Replaced by rename, as an editor saves it.
    let g0 = generation(&topo, Node::GatewayB);
    let tmp = topo.tmp_dir().join(".mesh.yaml.tmp");
    std::fs::write(&tmp, config(false)).unwrap();
    let t = Instant::now();
    std::fs::rename(&tmp, &cfg).unwrap();
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
    while !control_log(&topo, Node::GatewayB).contains(&want) {
        assert!(
            Instant::now() < deadline,
            "no {want:?} in gateway B's control log:\n{}",
            control_log(&topo, Node::GatewayB)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(control_log(&topo, Node::GatewayB).contains(&format!("generation {g2} stays in force")));
    assert_eq!(generation(&topo, Node::GatewayB), g2);
    assert!(
        !echo_ok(&topo),
        "the DENY of the tables in force still holds"
    );

    // Each change was one reload on each gateway: no SIGHUP, no double publication.
    for node in [Node::GatewayA, Node::GatewayB] {
        let log = control_log(&topo, node);
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
    let generation_before = generation(&topo, Node::GatewayB);
    // 14 s of iperf3 at 100 Mbit/s: established before the kill, still running after
    // the restart.
    let mut iperf = topo
        .spawn(
            Node::Client,
            &[
                "iperf3",
                "-c",
                &SERVER_ADDR.to_string(),
                "-p",
                &IPERF_PORT.to_string(),
                "-t",
                "14",
                "-b",
                "100M",
                "-J",
            ],
        )
        .unwrap();
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
    let status = iperf.wait_timeout(Duration::from_secs(30)).unwrap();
    let report: serde_json::Value = serde_json::from_str(&iperf.log())
        .unwrap_or_else(|e| panic!("iperf3 report ({e}): {}", iperf.log()));
    assert!(
        status.is_some_and(|s| s.success()),
        "iperf3: {}",
        report["error"]
    );
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
        let (_, _, dataplane_log) = topo
            .gateway_logs()
            .into_iter()
            .find(|(n, _, _)| *n == node)
            .unwrap();
        let log = std::fs::read_to_string(dataplane_log).unwrap();
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
