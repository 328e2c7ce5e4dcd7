//! The IPv6-only world ([`Opts::ipv6`]): plain TCP and HBONE over IPv6 end to end, and
//! next-hop resolution by Neighbor Solicitation.

use std::net::{IpAddr, SocketAddr};

use smoltcp::socket::tcp::State;
use xdpmesh_dataplane::wire;
use xdpmesh_shm::Protocol;

use xdpmesh_sim::*;

fn v6(protocol: Protocol) -> World {
    World::new(Opts {
        protocol,
        ipv6: true,
        ..Default::default()
    })
}

fn v6_of(ip: IpAddr) -> std::net::Ipv6Addr {
    match ip {
        IpAddr::V6(v6) => v6,
        IpAddr::V4(v4) => panic!("{v4} in the IPv6 world"),
    }
}

/// 1 MiB up and 300 kB down through both gateways, then a clean close, after which each
/// gateway's flow table holds `keys` (an HBONE tunnel stays pooled).
fn transfer_and_close(w: &mut World, port: u16, keys: usize) {
    let srv = w.server.listen(80);
    let cli = w.client.connect(SocketAddr::new(w.addrs.server, 80), port);
    let (up, down) = (pattern(1 << 20, 11), pattern(300_000, 12));
    let (at_server, at_client) = exchange(w, (cli, srv), &up, &down, 30_000_000);
    assert!(
        at_server == up,
        "upstream: {} of {} bytes",
        at_server.len(),
        up.len()
    );
    assert!(
        at_client == down,
        "downstream: {} of {} bytes",
        at_client.len(),
        down.len()
    );
    // The server sees the client's own address (the original source is kept).
    assert_eq!(
        w.server
            .tcp(srv)
            .remote_endpoint()
            .map(|e| IpAddr::from(e.addr)),
        Some(w.addrs.client)
    );
    w.client.tcp(cli).close();
    w.server.tcp(srv).close();
    w.run_until("both gateways freed the connection", 5_000_000, |w| {
        w.a.counters().live_connections == 0 && w.b.counters().live_connections == 0
    });
    for (name, e) in [("a", &mut w.a), ("b", &mut w.b)] {
        let c = e.counters().clone();
        assert_eq!(
            (
                c.opened_connections,
                c.closed_connections,
                c.reset_connections
            ),
            (1, 1, 0),
            "gateway {name}: {}",
            summary(&c)
        );
        assert_eq!(c.rx_dropped.iter().sum::<u64>(), 0, "gateway {name}: {c:?}");
        assert_eq!(e.live_keys(), keys, "gateway {name}: flow table");
    }
    assert_eq!((w.client.misaddressed, w.server.misaddressed), (0, 0));
}

/// The TCP frames that crossed the uplink: (from a, source, destination).
fn uplink_tcp(w: &World) -> Vec<(bool, SocketAddr, SocketAddr)> {
    w.wire_log
        .iter()
        .filter_map(|(from_a, f)| {
            let t = wire::parse_tcp_frame(f).ok()?;
            Some((*from_a, t.key.src, t.key.dst))
        })
        .collect()
}

#[test]
fn plain_tcp_over_ipv6_is_byte_exact_and_keeps_the_addresses() {
    let mut w = v6(Protocol::Tcp);
    w.log_wire = true;
    transfer_and_close(&mut w, 40_601, 0);
    let frames = uplink_tcp(&w);
    assert!(frames.len() > 700, "{} uplink frames", frames.len());
    assert_eq!(
        frames.len(),
        w.wire_log.len(),
        "only TCP on the uplink (no ARP, no solicitation: the next hop was known)"
    );
    // Gateway a's leg keeps both addresses and the server's port; its own port is one
    // whose replies hash to the worker that owns the connection.
    let server = SocketAddr::new(w.addrs.server, 80);
    let mut ports = std::collections::BTreeSet::new();
    for (from_a, src, dst) in frames {
        let (ours, theirs) = if from_a { (src, dst) } else { (dst, src) };
        assert_eq!((ours.ip(), theirs), (w.addrs.client, server));
        ports.insert(ours.port());
    }
    assert_eq!(ports.len(), 1, "one connection: {ports:?}");
    for (_, f) in &w.wire_log {
        assert_eq!(f[12..14], [0x86, 0xdd], "EtherType IPv6");
    }
}

#[test]
fn hbone_over_ipv6_is_byte_exact_through_one_tunnel() {
    let mut w = v6(Protocol::Hbone);
    w.log_wire = true;
    transfer_and_close(&mut w, 40_602, 1);
    // Only the tunnel's TLS crossed: from the client's address to the server's on
    // 15008, and back.
    let frames = uplink_tcp(&w);
    assert!(frames.len() > 700, "{} uplink frames", frames.len());
    let tunnel = SocketAddr::new(w.addrs.server, 15008);
    for (from_a, src, dst) in &frames {
        let (ours, theirs) = if *from_a { (src, dst) } else { (dst, src) };
        assert_eq!(*theirs, tunnel);
        assert_eq!(ours.ip(), w.addrs.client);
    }
    let ports: std::collections::BTreeSet<u16> = frames
        .iter()
        .map(|(from_a, s, d)| if *from_a { s.port() } else { d.port() })
        .collect();
    assert_eq!(ports.len(), 1, "one tunnel: {ports:?}");
    let (a, b) = (w.a.counters(), w.b.counters());
    assert_eq!((a.hbone_tunnels_opened, b.hbone_tunnels_accepted), (1, 1));
    assert_eq!((a.hbone_refused, b.hbone_refused), (0, 0));
}

/// An unknown IPv6 next hop: gateway a sends exactly one Neighbor Solicitation (to the
/// solicited-node group, from its uplink address, with its MAC), the SYN waits, and
/// once the MAC is known (as the XDP program's snoop map learns it from the
/// advertisement) the connection completes byte-exact.
#[test]
fn an_unknown_ipv6_next_hop_is_solicited_then_used() {
    let mut w = v6(Protocol::Tcp);
    w.log_wire = true;
    let b_up = w.addrs.b_up;
    w.a_neigh.lock().unwrap().remove(&(UP0_IFINDEX, b_up));
    let srv = w.server.listen(80);
    let cli = w
        .client
        .connect(SocketAddr::new(w.addrs.server, 80), 40_603);
    w.run_until("pod leg established", 1_000_000, |w| {
        w.client.tcp(cli).state() == State::Established
    });
    w.run_for(100_000);
    let mut want = [0u8; wire::NS_FRAME_LEN];
    wire::write_neighbor_solicitation(&mut want, A_UP_MAC, v6_of(w.addrs.a_up), v6_of(b_up));
    let sent: Vec<&Vec<u8>> = w
        .wire_log
        .iter()
        .filter(|(a, _)| *a)
        .map(|(_, f)| f)
        .collect();
    assert_eq!(
        sent,
        vec![&want.to_vec()],
        "one solicitation and nothing else yet"
    );
    assert_eq!(
        &want[0..6],
        &[0x33, 0x33, 0xff, 0, 0, 2],
        "solicited-node group of ::2"
    );
    assert_eq!(w.a.counters().neighbor_requests, 1);
    // Unanswered, it is repeated every 200 ms.
    w.run_for(250_000);
    assert_eq!(w.a.counters().neighbor_requests, 2);
    w.a_neigh
        .lock()
        .unwrap()
        .insert((UP0_IFINDEX, b_up), B_UP_MAC);
    let (up, down) = (pattern(100_000, 13), pattern(50_000, 14));
    let (at_server, at_client) = exchange(&mut w, (cli, srv), &up, &down, 10_000_000);
    assert!(at_server == up && at_client == down);
    assert_eq!(w.a.counters().neighbor_timeouts, 0);
}

/// A next hop that never answers fails the connection after the resolve timeout, as a
/// refused connect: the client is reset.
#[test]
fn an_ipv6_next_hop_that_never_answers_resets_the_client() {
    let mut w = v6(Protocol::Tcp);
    let b_up = w.addrs.b_up;
    w.a_neigh.lock().unwrap().remove(&(UP0_IFINDEX, b_up));
    let cli = w
        .client
        .connect(SocketAddr::new(w.addrs.server, 80), 40_604);
    w.run_until("client reset", 5_000_000, |w| {
        w.client.tcp(cli).state() == State::Closed
    });
    let a = w.a.counters();
    assert_eq!(a.neighbor_timeouts, 1);
    assert_eq!(
        a.neighbor_requests, 16,
        "one at once, then every 200 ms for 3 s"
    );
    assert_eq!(a.live_connections, 0);
}
