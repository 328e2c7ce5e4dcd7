//! HBONE through two engines: real mutual TLS 1.3 and HTTP/2 between them (certificates
//! from an in-process CA), plain TCP to the pods.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use smoltcp::socket::tcp::State;
use xdpmesh_dataplane::proxy::HboneLimits;
use xdpmesh_dataplane::wire;
use xdpmesh_hbone::{ConnectHeaders, Event, HboneClientConn, StatusCode, Validity};
use xdpmesh_shm::{Address, PeerAuth, Policy, PolicyAction, Protocol, Route, Workload};

use xdpmesh_sim::*;

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
            ..Default::default()
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

/// A scripted HBONE client in gateway a's place sends a CONNECT whose authority is
/// not the address the tunnel was accepted on: gateway b answers 400 and opens nothing.
#[test]
fn a_connect_to_another_address_than_the_tunnels_gets_400() {
    let mut w = hbone(HboneLimits::default(), Vec::new());
    let srv = w.server.listen(80);
    let mut peer = Host::new(CLIENT_IP, B_UP_IP, A_UP_MAC, B_UP_MAC);
    let sock = peer.connect(SocketAddr::new(IpAddr::V4(SERVER_IP), 15008), 43_000);
    w.up_peer = Some(peer);
    let ca = w.ca.as_ref().unwrap();
    let cert = ca
        .issue(
            &spiffe("client"),
            Validity::for_duration(std::time::Duration::from_secs(3600)),
        )
        .unwrap();
    let cfg =
        xdpmesh_hbone::client_config(&cert, &[ca.root_der()], vec![spiffe("server")]).unwrap();
    let mut conn = HboneClientConn::new(cfg, IpAddr::V4(SERVER_IP)).unwrap();
    let headers = ConnectHeaders {
        forwarded_for: SocketAddr::new(IpAddr::V4(CLIENT_IP), 43_001),
        forwarded_host: None,
        baggage: None,
        traceparent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into(),
    };
    let mut answers = Vec::new();
    let mut out = Vec::new();
    w.run_until("an answer to the CONNECT", 5_000_000, |w| {
        let s = w.up_peer.as_mut().unwrap().tcp(sock);
        while s.can_recv() {
            let n = s
                .recv(|b| {
                    let n = conn.feed_ciphertext(b).unwrap();
                    (n, n)
                })
                .unwrap();
            if n == 0 {
                break;
            }
        }
        while let Some(ev) = conn.poll_event() {
            match ev {
                Event::Connected => {
                    let wrong = SocketAddr::new("198.18.2.99".parse().unwrap(), 80);
                    conn.open_stream(wrong, &headers).unwrap();
                }
                Event::Refused(_, status) => answers.push(status),
                _ => {}
            }
        }
        if out.is_empty() {
            conn.take_ciphertext(&mut out);
        }
        if s.can_send() && !out.is_empty() {
            let n = s.send_slice(&out).unwrap();
            out.drain(..n);
        }
        !answers.is_empty()
    });
    assert_eq!(answers, vec![StatusCode::BAD_REQUEST]);
    let b = w.b.counters();
    assert_eq!(
        (
            b.hbone_tunnels_accepted,
            b.hbone_refused,
            b.opened_connections
        ),
        (1, 1, 0),
        "{}",
        summary(b)
    );
    assert_eq!(
        w.server.tcp(srv).state(),
        State::Listen,
        "nothing reached the server"
    );
}

/// A freed object's wait for a next hop must not resolve onto the object that reuses
/// its slot: a tunnel that waited for an unanswered ARP is closed at its idle limit,
/// and a new tunnel towards another next hop takes its place. When the first next hop
/// finally resolves, the new tunnel's frames must still go to its own next hop.
#[test]
fn a_stale_neighbour_wait_never_reaches_a_new_object() {
    let other_ip = Ipv4Addr::new(198, 18, 3, 2);
    let other_hop = Ipv4Addr::new(198, 18, 0, 3);
    let other_mac = [2, 0, 0, 0, 0, 3];
    let mut w = World::new(Opts {
        protocol: Protocol::Hbone,
        hbone: HboneLimits {
            stream_cap: 100,
            idle_timeout_us: 100_000,
            ..Default::default()
        },
        ..Default::default()
    });
    let mut t = tables(0, Protocol::Hbone, Vec::new());
    t.workloads.push(Workload {
        name: "other".into(),
        namespace: "default".into(),
        service_account: "server".into(),
        node: 1,
        protocol: Protocol::Hbone,
        peer_auth: PeerAuth::Permissive,
    });
    t.addresses.push(Address {
        addr: IpAddr::V4(other_ip),
        workload: 2,
        route: Route {
            ifindex: UP0_IFINDEX,
            via: Some(IpAddr::V4(other_hop)),
        },
    });
    w.a.set_tables(2, t);
    {
        let mut n = w.a_neigh.lock().unwrap();
        n.remove(&(UP0_IFINDEX, IpAddr::V4(B_UP_IP)));
        n.insert((UP0_IFINDEX, IpAddr::V4(other_hop)), other_mac);
    }
    w.log_wire = true;
    // 1. A connection to the server: its tunnel waits for gateway b's MAC.
    let c1 = w.client.connect(target(80), 40_008);
    w.run_until("pod leg established", 1_000_000, |w| {
        w.client.tcp(c1).state() == State::Established
    });
    let arp: Vec<Vec<u8>> = w
        .wire_log
        .iter()
        .filter(|(from_a, f)| *from_a && f[12..14] == [0x08, 0x06])
        .map(|(_, f)| f.clone())
        .collect();
    let mut want = [0u8; wire::ARP_FRAME_LEN];
    wire::write_arp_request(&mut want, A_UP_MAC, A_UP_IP, B_UP_IP);
    assert_eq!(
        arp.first().map(Vec::as_slice),
        Some(&want[..]),
        "ARP who-has 198.18.0.2"
    );
    assert_eq!(w.a.counters().neighbor_requests, 1);
    // 2. The client gives up; the idle tunnel is closed and freed.
    w.client.tcp(c1).abort();
    w.run_until("tunnel freed", 2_000_000, |w| {
        w.a.counters().hbone_tunnels_closed == 1
    });
    assert_eq!(w.a.counters().hbone_tunnels_live, 0);
    // 3. A new tunnel, towards the other next hop (known).
    w.wire_log.clear();
    let c2 = w
        .client
        .connect(SocketAddr::new(IpAddr::V4(other_ip), 80), 40_009);
    w.run_until("second tunnel opened", 1_000_000, |w| {
        w.a.counters().hbone_tunnels_opened == 2
    });
    // 4. Gateway b's MAC becomes known; the stale wait must resolve nothing.
    w.a_neigh
        .lock()
        .unwrap()
        .insert((UP0_IFINDEX, IpAddr::V4(B_UP_IP)), B_UP_MAC);
    w.run_for(3_500_000);
    let _ = c2;
    let syns: Vec<&Vec<u8>> = w
        .wire_log
        .iter()
        .filter(|(from_a, f)| *from_a && f[12..14] == [0x08, 0x00])
        .map(|(_, f)| f)
        .collect();
    assert!(
        syns.len() >= 2,
        "the SYN and its retransmissions: {}",
        syns.len()
    );
    for f in syns {
        let t = wire::parse_tcp_frame(f).unwrap();
        assert_eq!(t.key.src.ip(), IpAddr::V4(CLIENT_IP));
        assert_eq!(t.key.dst, SocketAddr::new(IpAddr::V4(other_ip), 15008));
        assert_eq!(&f[0..6], &other_mac, "sent to the stale next hop's MAC");
    }
    assert_eq!(w.a.counters().neighbor_timeouts, 0);
}

/// HBONE over jumbo links (pod links 65535, uplink 9000): byte-exact both ways, the
/// tunnel's segments fill the uplink's MTU, one tunnel, one stream.
#[test]
fn jumbo_links_carry_a_stream_byte_exact() {
    let mut w = World::new(Opts {
        protocol: Protocol::Hbone,
        pod_mtu: 65_535,
        uplink_mtu: 9000,
        buffers: xdpmesh_dataplane::stack::Buffers {
            rx: 256 * 1024,
            tx: 256 * 1024,
        },
        ..Default::default()
    });
    w.log_wire = true;
    let srv = w.server.listen(80);
    let cli = w.client.connect(target(80), 41_021);
    let up = pattern(2 << 20, 23);
    let down = pattern(1 << 20, 24);
    let (at_server, at_client) = exchange(&mut w, (cli, srv), &up, &down, 20_000_000);
    assert!(
        at_server == up,
        "{} of {} bytes up",
        at_server.len(),
        up.len()
    );
    assert!(
        at_client == down,
        "{} of {} bytes down",
        at_client.len(),
        down.len()
    );
    for from_a in [true, false] {
        let (max, n) = w.largest_uplink_frame(from_a);
        assert_eq!(max, 9014, "uplink frames from a={from_a} ({n} of them)");
    }
    for (name, e) in [("a", &mut w.a), ("b", &mut w.b)] {
        let c = e.counters();
        assert_eq!(
            (
                c.hbone_streams,
                c.hbone_refused,
                c.hbone_tunnel_failures,
                c.no_flow_resets
            ),
            (1, 0, 0, 0),
            "gateway {name}: {}",
            summary(c)
        );
    }
}
