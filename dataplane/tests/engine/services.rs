//! Services: a connection to a virtual address goes to one of the service's endpoints,
//! round robin, skipping an endpoint whose connect failed; no endpoint is a reset.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use smoltcp::socket::tcp::State;
use smoltcp::wire::IpAddress;
use xdpmesh_shm::{Protocol, Service, Tables};

use xdpmesh_sim::*;

const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 10, 1);
/// A second endpoint, on the server pod's host (gateway b).
const SERVER2_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 3);

/// Tables of gateway `local` with the workload `server-2` at [`SERVER2_IP`] and the
/// service `echo` (VIP:80 → 80) whose endpoints are `endpoints` (workload indices).
fn service_tables(local: u32, endpoints: Vec<u32>) -> Tables {
    let mut t = tables(local, Protocol::Tcp, Vec::new());
    // server-2 shares the server's service account in the config of the namespace
    // test; here it is its own, which the plain-TCP path does not look at.
    add_workload(&mut t, local, "server-2", SERVER2_IP, 1);
    t.services = vec![Service {
        name: "echo".into(),
        namespace: "default".into(),
        hostname: "echo.default.svc.cluster.local".into(),
        vips: vec![IpAddr::V4(VIP)],
        ports: vec![(80, 80)],
        endpoints,
    }];
    t
}

fn world(endpoints: Vec<u32>) -> World {
    let mut w = World::new(Opts::default());
    w.a.set_tables(2, service_tables(0, endpoints.clone()));
    w.b.set_tables(2, service_tables(1, endpoints));
    w.server.add_address(SERVER2_IP);
    w.b_neigh
        .lock()
        .unwrap()
        .insert((POD0_IFINDEX, IpAddr::V4(SERVER2_IP)), SERVER_MAC);
    w
}

/// Connects the client to VIP:80 from `port`; returns which server address took it
/// (`None`: the client was reset).
fn connect_once(w: &mut World, port: u16, listeners: &[Ipv4Addr]) -> Option<Ipv4Addr> {
    let socks: Vec<_> = listeners
        .iter()
        .map(|ip| (*ip, w.server.listen_on(*ip, 80)))
        .collect();
    let cli = w.client.connect(SocketAddr::new(IpAddr::V4(VIP), 80), port);
    // The client's leg is up at once (gateway a answers as the virtual address); the
    // endpoint's comes up, or the client is reset, when gateway a's leg gets there.
    w.run_until(
        "an endpoint established, or the client reset",
        2_000_000,
        |w| {
            w.client.tcp(cli).state() == State::Closed
                || socks
                    .iter()
                    .any(|(_, s)| w.server.tcp(*s).state() == State::Established)
        },
    );
    if w.client.tcp(cli).state() == State::Closed {
        for (_, s) in socks {
            w.server.tcp(s).abort();
        }
        w.run_for(100_000);
        return None;
    }
    let took = socks
        .iter()
        .find(|(_, s)| w.server.tcp(*s).state() == State::Established)
        .map(|(ip, _)| *ip)?;
    // The client sees the virtual address; the server the client's own address.
    assert_eq!(
        w.client.tcp(cli).remote_endpoint().map(|e| e.addr),
        Some(IpAddress::Ipv4(VIP))
    );
    let srv = socks.iter().find(|(ip, _)| *ip == took).unwrap().1;
    assert_eq!(
        w.server.tcp(srv).remote_endpoint().map(|e| e.addr),
        Some(IpAddress::Ipv4(CLIENT_IP))
    );
    let (up, down) = exchange(
        w,
        (cli, srv),
        b"to the service",
        b"from an endpoint",
        1_000_000,
    );
    assert_eq!(
        (&up[..], &down[..]),
        (&b"to the service"[..], &b"from an endpoint"[..])
    );
    w.client.tcp(cli).abort();
    for (_, s) in socks {
        w.server.tcp(s).abort();
    }
    w.run_for(100_000);
    Some(took)
}

#[test]
fn connections_to_a_virtual_address_take_turns_over_the_endpoints() {
    let mut w = world(vec![1, 2]);
    let both = [SERVER_IP, SERVER2_IP];
    let took: Vec<Option<Ipv4Addr>> = (0..4)
        .map(|i| connect_once(&mut w, 41_000 + i, &both))
        .collect();
    assert_eq!(
        took,
        [
            Some(SERVER_IP),
            Some(SERVER2_IP),
            Some(SERVER_IP),
            Some(SERVER2_IP)
        ]
    );
    assert_eq!(w.a.counters().service_connections, 4);
    // The next generation drops server-2: none of the next connections reaches it.
    w.a.set_tables(3, service_tables(0, vec![1]));
    let took: Vec<Option<Ipv4Addr>> = (0..3)
        .map(|i| connect_once(&mut w, 41_100 + i, &both))
        .collect();
    assert_eq!(took, [Some(SERVER_IP); 3]);
}

#[test]
fn an_endpoint_whose_connect_fails_is_skipped() {
    let mut w = world(vec![1, 2]);
    // Only 198.18.2.2 listens: a connection to server-2 is refused by the pod.
    let only = [SERVER_IP];
    let took: Vec<Option<Ipv4Addr>> = (0..4)
        .map(|i| connect_once(&mut w, 42_000 + i, &only))
        .collect();
    assert_eq!(
        took,
        [Some(SERVER_IP), None, Some(SERVER_IP), Some(SERVER_IP)]
    );
    assert_eq!(w.a.counters().service_endpoint_ejections, 1);
}

#[test]
fn a_service_without_endpoints_refuses_with_a_reset() {
    let mut w = world(vec![]);
    assert_eq!(connect_once(&mut w, 43_000, &[SERVER_IP]), None);
    let c = w.a.counters().clone();
    assert_eq!(
        (c.service_refused, c.opened_connections),
        (1, 0),
        "{}",
        summary(&c)
    );
    assert_eq!(w.b.counters().opened_connections, 0);
}
