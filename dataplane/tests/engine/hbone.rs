//! HBONE through two engines: real mutual TLS 1.3 and HTTP/2 between them (certificates
//! from an in-process CA), plain TCP to the pods.

use std::net::{IpAddr, SocketAddr};

use smoltcp::socket::tcp::State;
use xdpmesh_dataplane::proxy::HboneLimits;
use xdpmesh_shm::{Policy, PolicyAction, Protocol};

use crate::support::*;

fn hbone(hbone: HboneLimits, policies: Vec<Policy>) -> World {
    World::new(Opts {
        protocol: Protocol::Hbone,
        hbone,
        policies,
        ..Default::default()
    })
}

fn target(port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(SERVER_IP), port)
}

#[test]
fn a_stream_carries_both_halves_and_ends_with_end_stream_both_ways() {
    let mut w = hbone(HboneLimits::default(), Vec::new());
    let srv = w.server.listen(80);
    let cli = w.client.connect(target(80), 41_001);
    let up = pattern(200_000, 3);
    let mut sent = 0;
    let mut at_server = Vec::new();
    w.run_until("request at the server", 5_000_000, |w| {
        send_some(w.client.tcp(cli), &up, &mut sent);
        if sent == up.len() && w.client.tcp(cli).state() == State::Established {
            w.client.tcp(cli).close();
        }
        recv_some(w.server.tcp(srv), &mut at_server, usize::MAX);
        w.server.tcp(srv).state() == State::CloseWait
    });
    assert!(at_server == up, "{} of {} bytes", at_server.len(), up.len());
    let down = pattern(150_000, 4);
    let mut sent = 0;
    let mut at_client = Vec::new();
    w.run_until(
        "response at the client, everything closed",
        5_000_000,
        |w| {
            send_some(w.server.tcp(srv), &down, &mut sent);
            if sent == down.len() && w.server.tcp(srv).state() == State::CloseWait {
                w.server.tcp(srv).close();
            }
            recv_some(w.client.tcp(cli), &mut at_client, usize::MAX);
            w.a.counters().live_connections == 0 && w.b.counters().live_connections == 0
        },
    );
    assert!(
        at_client == down,
        "{} of {} bytes",
        at_client.len(),
        down.len()
    );
    assert_eq!(
        w.client.tcp(cli).state(),
        State::TimeWait,
        "a graceful close"
    );
    for (name, e) in [("a", &mut w.a), ("b", &mut w.b)] {
        let c = e.counters();
        assert_eq!(
            (
                c.hbone_streams,
                c.opened_connections,
                c.closed_connections,
                c.hbone_refused,
                c.hbone_tunnel_failures,
                c.no_flow_resets
            ),
            (1, 1, 1, 0, 0, 0),
            "gateway {name}: {}",
            summary(c)
        );
        // The tunnel stays pooled (a) and accepted (b) after its stream ended.
        assert_eq!(c.hbone_tunnels_live, 1, "gateway {name}");
    }
    assert_eq!(w.a.counters().hbone_tunnels_opened, 1);
    assert_eq!(w.b.counters().hbone_tunnels_accepted, 1);
}

/// Connects, waits for the gateways to settle, returns whether the client saw its
/// connection reset and whether the server ever saw a connection.
fn refused(w: &mut World, port: u16) -> bool {
    let srv = w.server.listen(80);
    let cli = w.client.connect(target(port), 41_002);
    w.run_until("the client's connection ends", 5_000_000, |w| {
        w.client.tcp(cli).state() == State::Closed
    });
    w.run_until("freed", 2_000_000, |w| {
        w.a.counters().live_connections == 0 && w.b.counters().live_connections == 0
    });
    w.server.tcp(srv).state() != State::Listen
}

#[test]
fn a_workload_that_refuses_gets_503_and_the_client_a_reset() {
    let mut w = hbone(HboneLimits::default(), Vec::new());
    // Port 81: nothing listens, the server's stack resets the delivery leg.
    let srv = w.server.listen(80);
    let cli = w.client.connect(target(81), 41_003);
    w.run_until("the client's connection is reset", 5_000_000, |w| {
        w.client.tcp(cli).state() == State::Closed
    });
    let _ = srv;
    w.run_until("freed", 2_000_000, |w| {
        w.a.counters().live_connections == 0 && w.b.counters().live_connections == 0
    });
    let (a, b) = (w.a.counters().clone(), w.b.counters().clone());
    assert_eq!(
        (a.hbone_refused, b.hbone_refused),
        (1, 1),
        "{} / {}",
        summary(&a),
        summary(&b)
    );
    assert_eq!((a.closed_connections, b.closed_connections), (1, 1));
    assert_eq!(b.policy_denied, 0);
}

#[test]
fn a_deny_policy_gets_401_and_nothing_reaches_the_workload() {
    let deny = Policy {
        name: "no-80".into(),
        namespace: "default".into(),
        workload: Some("server".into()),
        action: PolicyAction::Deny,
        from: Vec::new(),
        ports: vec![80],
    };
    let mut w = hbone(HboneLimits::default(), vec![deny]);
    let reached = refused(&mut w, 80);
    assert!(!reached, "the server saw a connection");
    let (a, b) = (w.a.counters().clone(), w.b.counters().clone());
    assert_eq!(b.policy_denied, 1);
    assert_eq!((a.hbone_refused, b.hbone_refused), (1, 1));
    // Refused before any delivery leg: b opened no connection.
    assert_eq!((a.opened_connections, b.opened_connections), (1, 0));
}

#[test]
fn a_connect_to_a_reserved_port_gets_503() {
    let mut w = hbone(HboneLimits::default(), Vec::new());
    // 15006 is reserved (ztunnel's inbound plaintext port): b refuses without trying.
    let reached = refused(&mut w, 15006);
    assert!(!reached);
    let (a, b) = (w.a.counters().clone(), w.b.counters().clone());
    assert_eq!((a.hbone_refused, b.hbone_refused), (1, 1));
    assert_eq!(b.opened_connections, 0);
}

#[test]
fn a_pod_reset_becomes_rst_stream_and_an_end_of_stream_on_the_far_side() {
    let mut w = hbone(HboneLimits::default(), Vec::new());
    let srv = w.server.listen(80);
    let cli = w.client.connect(target(80), 41_004);
    w.run_until("stream up", 5_000_000, |w| {
        w.server.tcp(srv).state() == State::Established
    });
    w.client.tcp(cli).send_slice(b"partial").unwrap();
    let mut got = Vec::new();
    w.run_until("data at the server", 1_000_000, |w| {
        recv_some(w.server.tcp(srv), &mut got, usize::MAX);
        got.len() == 7
    });
    w.client.tcp(cli).abort();
    // RST_STREAM(CANCEL) is an end of stream by the HBONE contract: the server's
    // connection gets a FIN, not a reset.
    w.run_until("EOF at the server", 1_000_000, |w| {
        w.server.tcp(srv).state() == State::CloseWait
    });
    w.server.tcp(srv).close();
    w.run_until("freed", 2_000_000, |w| {
        w.a.counters().live_connections == 0 && w.b.counters().live_connections == 0
    });
    assert_eq!(got, b"partial");
    assert_eq!(w.b.counters().hbone_refused, 0);
    assert_eq!(w.a.counters().closed_connections, 1);
    assert_eq!(w.b.counters().closed_connections, 1);
}

#[test]
fn streams_fill_pooled_tunnels_up_to_the_cap_and_idle_tunnels_close() {
    const N: usize = 7;
    const CAP: usize = 3;
    let mut w = hbone(
        HboneLimits {
            stream_cap: CAP,
            idle_timeout_us: 500_000,
        },
        Vec::new(),
    );
    let srvs: Vec<_> = (0..N).map(|_| w.server.listen(80)).collect();
    let clis: Vec<_> = (0..N)
        .map(|i| w.client.connect(target(80), 42_000 + i as u16))
        .collect();
    w.run_until("all streams up", 10_000_000, |w| {
        srvs.iter()
            .all(|&s| w.server.tcp(s).state() == State::Established)
    });
    // ceil(7 / 3) = 3 tunnels, all open at once.
    assert_eq!(w.a.counters().hbone_tunnels_opened, N.div_ceil(CAP) as u64);
    assert_eq!(
        w.b.counters().hbone_tunnels_accepted,
        N.div_ceil(CAP) as u64
    );
    assert_eq!(w.a.counters().hbone_streams, N as u64);
    // Echo one message per connection, byte-exact.
    for (i, &c) in clis.iter().enumerate() {
        w.client
            .tcp(c)
            .send_slice(format!("hello {i}").as_bytes())
            .unwrap();
    }
    let mut got = vec![Vec::new(); N];
    w.run_until("each server socket got its message", 2_000_000, |w| {
        for (i, &s) in srvs.iter().enumerate() {
            recv_some(w.server.tcp(s), &mut got[i], usize::MAX);
        }
        got.iter().all(|g| !g.is_empty())
    });
    let mut got: Vec<String> = got
        .into_iter()
        .map(|g| String::from_utf8(g).unwrap())
        .collect();
    got.sort();
    let want: Vec<String> = (0..N).map(|i| format!("hello {i}")).collect();
    assert_eq!(got, want);
    for &c in &clis {
        w.client.tcp(c).close();
    }
    for &s in &srvs {
        w.server.tcp(s).close();
    }
    w.run_until("streams closed", 2_000_000, |w| {
        w.a.counters().live_connections == 0 && w.b.counters().live_connections == 0
    });
    let closed_at = w.now;
    assert_eq!(w.a.counters().hbone_tunnels_live, 3);
    w.run_until("idle tunnels closed on both sides", 2_000_000, |w| {
        w.a.counters().hbone_tunnels_live == 0 && w.b.counters().hbone_tunnels_live == 0
    });
    let idle = w.now - closed_at;
    assert!(
        (500_000..600_000).contains(&idle),
        "closed after {idle} µs idle"
    );
    assert_eq!(w.a.counters().hbone_tunnels_closed, 3);
    assert_eq!(w.b.counters().hbone_tunnels_closed, 3);
    assert_eq!(w.a.counters().hbone_tunnel_failures, 0);
    assert_eq!(w.b.counters().hbone_tunnel_failures, 0);
}
