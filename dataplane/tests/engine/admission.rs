//! Admission of new connections: plaintext from outside the mesh meets the destination
//! workload's peer authentication and policies, and unknown sources follow
//! `unknown_source` (reject, hold, pass).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use smoltcp::iface::SocketHandle;
use smoltcp::socket::tcp::State;
use xdpmesh_shm::{Cidr, PeerAuth, Policy, PolicyAction, Protocol, Tables, UnknownSource};

use xdpmesh_sim::*;

/// A host outside the mesh, in gateway a's place on gateway b's uplink.
const OUTSIDER_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 3, 3);
/// A pod of gateway a's pod range that no workload claims (yet).
const LATE_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 50);

fn server(port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(SERVER_IP), port)
}

fn cidr(s: &str, prefix: u8) -> Cidr {
    Cidr {
        addr: s.parse().unwrap(),
        prefix,
    }
}

/// Puts the outsider on gateway b's uplink and connects it to the server's `port`.
fn outsider_connects(w: &mut World, port: u16) -> SocketHandle {
    let mut peer = Host::new(OUTSIDER_IP, B_UP_IP, A_UP_MAC, B_UP_MAC);
    let sock = peer.connect(server(port), 45_000 + port);
    w.up_peer = Some(peer);
    sock
}

fn outsider(w: &mut World, h: SocketHandle) -> &mut smoltcp::socket::tcp::Socket<'static> {
    w.up_peer.as_mut().unwrap().tcp(h)
}

/// Gateway b's tables with `edit` applied, in force as generation `generation`.
fn b_tables(w: &mut World, generation: u64, policies: Vec<Policy>, edit: impl FnOnce(&mut Tables)) {
    let mut t = tables(1, Protocol::Tcp, policies);
    edit(&mut t);
    w.b.set_tables(generation, t);
}

fn deny_port_80() -> Policy {
    Policy {
        name: "no-80".into(),
        namespace: "default".into(),
        workload: Some("server".into()),
        action: PolicyAction::Deny,
        from: vec![],
        ports: vec![80],
    }
}

/// The bypass that was: plaintext from outside the mesh to a workload reached it
/// around its policies. Now it is terminated like any connection: a DENY on port 80
/// resets it before the server sees anything, and another port goes through, byte-
/// exact, with the outsider's own address at the server.
#[test]
fn plaintext_from_outside_the_mesh_meets_the_workloads_policies() {
    let mut w = World::new(Opts {
        policies: vec![deny_port_80()],
        ..Opts::default()
    });
    let srv80 = w.server.listen(80);
    let sock = outsider_connects(&mut w, 80);
    w.run_until("the outsider is reset", 2_000_000, |w| {
        outsider(w, sock).state() == State::Closed
    });
    assert_eq!(w.server.tcp(srv80).state(), State::Listen);
    let c = w.b.counters().clone();
    assert_eq!(
        (c.policy_denied, c.plaintext_accepted, c.opened_connections),
        (1, 0, 0),
        "{}",
        summary(&c)
    );

    let srv = w.server.listen(81);
    let mut peer = Host::new(OUTSIDER_IP, B_UP_IP, A_UP_MAC, B_UP_MAC);
    let sock = peer.connect(server(81), 45_081);
    w.up_peer = Some(peer);
    w.run_until("established through gateway b", 2_000_000, |w| {
        outsider(w, sock).state() == State::Established
            && w.server.tcp(srv).state() == State::Established
    });
    assert_eq!(
        w.server.tcp(srv).remote_endpoint().map(|e| e.addr),
        Some(smoltcp::wire::IpAddress::Ipv4(OUTSIDER_IP)),
        "the server sees the outsider's own address"
    );
    outsider(&mut w, sock).send_slice(b"from outside").unwrap();
    let mut got = Vec::new();
    w.run_until("bytes at the server", 1_000_000, |w| {
        recv_some(w.server.tcp(srv), &mut got, usize::MAX);
        got.len() == 12
    });
    assert_eq!(got, b"from outside");
    let c = w.b.counters().clone();
    assert_eq!(
        (c.policy_denied, c.plaintext_accepted, c.opened_connections),
        (1, 1, 1),
        "{}",
        summary(&c)
    );
    assert_eq!(w.a.counters().opened_connections, 0);
}

/// STRICT accepts HBONE only: plaintext from outside the mesh and from a mesh
/// workload that skipped HBONE (a plain-TCP leg from gateway a) are both reset and
/// counted; PERMISSIVE accepts the same connection.
#[test]
fn strict_refuses_plaintext_and_permissive_accepts_it() {
    let mut w = World::new(Opts::default());
    let strict = |t: &mut Tables| t.workloads[1].peer_auth = PeerAuth::Strict;
    b_tables(&mut w, 2, Vec::new(), strict);
    let srv = w.server.listen(80);
    let cli = w.client.connect(server(80), 40_100);
    w.run_until("the client is reset", 2_000_000, |w| {
        w.client.tcp(cli).state() == State::Closed
    });
    let sock = outsider_connects(&mut w, 80);
    w.run_until("the outsider is reset", 2_000_000, |w| {
        outsider(w, sock).state() == State::Closed
    });
    assert_eq!(w.server.tcp(srv).state(), State::Listen);
    let c = w.b.counters().clone();
    assert_eq!(
        (c.peer_auth_refused, c.plaintext_accepted, c.policy_denied),
        (2, 0, 0),
        "{}",
        summary(&c)
    );
    // Gateway a opened its leg and saw it reset: the refusal is b's alone.
    assert_eq!(w.a.counters().peer_auth_refused, 0);

    b_tables(&mut w, 3, Vec::new(), |_| {});
    let cli = w.client.connect(server(80), 40_101);
    w.run_until("established under PERMISSIVE", 2_000_000, |w| {
        w.client.tcp(cli).state() == State::Established
            && w.server.tcp(srv).state() == State::Established
    });
    assert_eq!(w.b.counters().peer_auth_refused, 2);
}

/// Gateway a's tables with the pod range 198.18.1.0/24 and `mode`, plus (when `late`)
/// the workload that claims [`LATE_IP`]; gateway b learns of it too.
fn with_unknown_sources(
    w: &mut World,
    generation: u64,
    mode: UnknownSource,
    hold_ms: u32,
    late: bool,
) {
    for local in [0, 1] {
        let mut t = tables(local, Protocol::Tcp, Vec::new());
        t.pod_cidrs = vec![cidr("198.18.1.0", 24)];
        t.unknown_source = mode;
        t.unknown_source_hold_ms = hold_ms;
        if late {
            add_workload(&mut t, local, "late", LATE_IP, 0);
        }
        if local == 0 {
            w.a.set_tables(generation, t);
        } else {
            w.b.set_tables(generation, t);
        }
    }
}

/// A world whose client pod is at [`LATE_IP`], which no workload claims.
fn late_world(mode: UnknownSource, hold_ms: u32) -> World {
    let mut w = World::new(Opts::default());
    w.client = Host::new(LATE_IP, A_POD_IP, CLIENT_MAC, A_POD_MAC);
    with_unknown_sources(&mut w, 2, mode, hold_ms, false);
    w
}

#[test]
fn unknown_source_reject_resets_the_syn() {
    let mut w = late_world(UnknownSource::Reject, 0);
    let srv = w.server.listen(80);
    let cli = w.client.connect(server(80), 40_200);
    w.run_until("the unknown source is reset", 2_000_000, |w| {
        w.client.tcp(cli).state() == State::Closed
    });
    assert_eq!(w.server.tcp(srv).state(), State::Listen);
    let c = w.a.counters().clone();
    assert_eq!(
        (
            c.unknown_source_rejected,
            c.unknown_source_held,
            c.opened_connections
        ),
        (1, 0, 0),
        "{}",
        summary(&c)
    );
    assert_eq!(w.b.counters().opened_connections, 0);
}

/// The init-container case: the pod's first SYN comes before its workload is
/// published. Held (its retransmission too, counted once), it completes as soon as a
/// generation names the workload, and the connection is the workload's.
#[test]
fn unknown_source_hold_completes_when_the_workload_appears() {
    let mut w = late_world(UnknownSource::Hold, 2000);
    let srv = w.server.listen(80);
    let cli = w.client.connect(server(80), 40_300);
    // smoltcp retransmits its SYN after 1 s: the hold keeps one copy.
    w.run_for(1_500_000);
    assert_eq!(w.client.tcp(cli).state(), State::SynSent);
    let c = w.a.counters().clone();
    assert_eq!(
        (
            c.unknown_source_held,
            c.unknown_source_holding,
            c.opened_connections
        ),
        (1, 1, 0),
        "{}",
        summary(&c)
    );
    with_unknown_sources(&mut w, 3, UnknownSource::Hold, 2000, true);
    let released_at = w.now;
    w.run_until("established once the workload appears", 1_000_000, |w| {
        w.client.tcp(cli).state() == State::Established
            && w.server.tcp(srv).state() == State::Established
    });
    // At once (the sim's clock moves in idle jumps of up to 10 ms), not at the
    // client's next SYN retransmission.
    assert!(
        w.now - released_at < 50_000,
        "released {} µs after the new generation",
        w.now - released_at
    );
    let (at_server, at_client) = exchange(&mut w, (cli, srv), b"late hello", b"welcome", 1_000_000);
    assert_eq!(
        (&at_server[..], &at_client[..]),
        (&b"late hello"[..], &b"welcome"[..])
    );
    let c = w.a.counters().clone();
    assert_eq!(
        (
            c.unknown_source_held,
            c.unknown_source_released,
            c.unknown_source_expired,
            c.unknown_source_holding,
            c.opened_connections
        ),
        (1, 1, 0, 0, 1),
        "{}",
        summary(&c)
    );
}

#[test]
fn unknown_source_hold_resets_when_no_workload_appears_in_time() {
    let mut w = late_world(UnknownSource::Hold, 300);
    let srv = w.server.listen(80);
    let cli = w.client.connect(server(80), 40_400);
    w.run_until("the held SYN is reset", 1_000_000, |w| {
        w.client.tcp(cli).state() == State::Closed
    });
    assert!(
        (300_000..350_000).contains(&w.now),
        "reset at {} µs, the hold is 300 ms",
        w.now
    );
    assert_eq!(w.server.tcp(srv).state(), State::Listen);
    let c = w.a.counters().clone();
    assert_eq!(
        (
            c.unknown_source_held,
            c.unknown_source_expired,
            c.unknown_source_holding,
            c.opened_connections
        ),
        (1, 1, 0, 0),
        "{}",
        summary(&c)
    );
}

/// Under `pass`, an unknown source reaching a workload served here is a source
/// outside the mesh: accepted under PERMISSIVE (and counted as both).
#[test]
fn unknown_source_pass_to_a_local_workload_is_plaintext_from_outside() {
    let mut w = World::new(Opts::default());
    b_tables(&mut w, 2, Vec::new(), |t| {
        t.pod_cidrs = vec![cidr("198.18.3.0", 24)];
    });
    let srv = w.server.listen(80);
    let sock = outsider_connects(&mut w, 80);
    w.run_until("established", 2_000_000, |w| {
        outsider(w, sock).state() == State::Established
            && w.server.tcp(srv).state() == State::Established
    });
    let c = w.b.counters().clone();
    assert_eq!(
        (
            c.unknown_source_passed,
            c.plaintext_accepted,
            c.opened_connections
        ),
        (1, 1, 1),
        "{}",
        summary(&c)
    );
}
