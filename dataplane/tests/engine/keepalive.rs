//! HBONE keepalive through two engines on the simulated clock, with short figures
//! (PING every 1 s, 2 s for the PONG): a live peer keeps an idle tunnel up however long
//! it idles; a peer cut off (the wire between the gateways lost, no FIN, no reset) is
//! detected, its tunnel closed and counted, and its streams' pod connections reset.

use std::net::{IpAddr, SocketAddr};

use smoltcp::socket::tcp::State;
use xdpmesh_dataplane::proxy::HboneLimits;
use xdpmesh_shm::Protocol;

use xdpmesh_sim::*;

const INTERVAL: i64 = 1_000_000;
const TIMEOUT: i64 = 2_000_000;

fn world() -> World {
    World::new(Opts {
        protocol: Protocol::Hbone,
        hbone: HboneLimits {
            keepalive_interval_us: INTERVAL,
            keepalive_timeout_us: TIMEOUT,
            ..Default::default()
        },
        ..Default::default()
    })
}

fn target(port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(SERVER_IP), port)
}

/// A stream from the client pod to the server pod, up, with one message through.
fn stream_up(
    w: &mut World,
    port: u16,
) -> (smoltcp::iface::SocketHandle, smoltcp::iface::SocketHandle) {
    let srv = w.server.listen(80);
    let cli = w.client.connect(target(80), port);
    w.run_until("stream up", 5_000_000, |w| {
        w.server.tcp(srv).state() == State::Established
    });
    w.client.tcp(cli).send_slice(b"hello").unwrap();
    let mut got = Vec::new();
    w.run_until("hello at the server", 1_000_000, |w| {
        recv_some(w.server.tcp(srv), &mut got, usize::MAX);
        got.len() == 5
    });
    assert_eq!(got, b"hello");
    (cli, srv)
}

#[test]
fn an_idle_tunnel_with_a_live_peer_stays_up_pinging_every_interval() {
    let mut w = world();
    let (cli, srv) = stream_up(&mut w, 44_001);
    // Line up on gateway a's first PING, one interval after its tunnel came up.
    w.run_until("a's first PING", 2 * INTERVAL, |w| {
        w.a.counters().hbone_pings_sent == 1
    });
    // Then idle for 9.5 intervals: a PING an interval after each PONG (the round trip
    // takes microseconds here), nine more.
    w.run_for(9 * INTERVAL + INTERVAL / 2);
    for (name, e) in [("a", &mut w.a), ("b", &mut w.b)] {
        let c = e.counters();
        assert_eq!(
            (
                c.hbone_pings_sent,
                c.hbone_keepalive_timeouts,
                c.hbone_tunnel_failures,
                c.hbone_tunnels_live,
                c.hbone_tunnels_closed,
                c.live_connections
            ),
            (10, 0, 0, 1, 0, 1),
            "gateway {name} (both sides ping): {}",
            summary(c)
        );
    }
    assert_eq!(w.client.tcp(cli).state(), State::Established);
    assert_eq!(w.server.tcp(srv).state(), State::Established);
    // The stream still carries bytes both ways.
    w.client.tcp(cli).send_slice(b"ping?").unwrap();
    let mut up = Vec::new();
    w.run_until("bytes up after the idle time", 1_000_000, |w| {
        recv_some(w.server.tcp(srv), &mut up, usize::MAX);
        up.len() == 5
    });
    w.server.tcp(srv).send_slice(b"pong!").unwrap();
    let mut down = Vec::new();
    w.run_until("bytes down after the idle time", 1_000_000, |w| {
        recv_some(w.client.tcp(cli), &mut down, usize::MAX);
        down.len() == 5
    });
    assert_eq!(
        (up.as_slice(), down.as_slice()),
        (&b"ping?"[..], &b"pong!"[..])
    );
}

#[test]
fn a_cut_off_peer_is_detected_and_its_streams_reset() {
    let mut w = world();
    let (cli, srv) = stream_up(&mut w, 44_002);
    // Cut the wire right after gateway a's first PING left: that PING is lost.
    w.run_until("a's first PING", 2 * INTERVAL, |w| {
        w.a.counters().hbone_pings_sent == 1
    });
    let cut_at = w.now;
    w.cut = true;
    let (mut a_closed, mut b_closed) = (None, None);
    let mut fin = (false, false);
    w.run_until(
        "both pods' connections reset",
        INTERVAL + TIMEOUT + 500_000,
        |w| {
            fin.0 |= w.client.tcp(cli).state() == State::CloseWait;
            fin.1 |= w.server.tcp(srv).state() == State::CloseWait;
            if a_closed.is_none() && w.a.counters().hbone_keepalive_timeouts == 1 {
                a_closed = Some(w.now - cut_at);
            }
            if b_closed.is_none() && w.b.counters().hbone_keepalive_timeouts == 1 {
                b_closed = Some(w.now - cut_at);
            }
            w.client.tcp(cli).state() == State::Closed && w.server.tcp(srv).state() == State::Closed
        },
    );
    let (a_closed, b_closed) = (a_closed.unwrap(), b_closed.unwrap());
    // a: the timeout after its lost PING (sent at most 10 µs before the cut was seen).
    assert!(
        (TIMEOUT - 10..=TIMEOUT + 100).contains(&a_closed),
        "gateway a closed its tunnel {a_closed} µs after the cut"
    );
    // b: its own PING went at some point of its interval (a PING sent more than a
    // round trip, microseconds, before the cut was answered), then the timeout: within
    // interval + timeout.
    assert!(
        (TIMEOUT - 1000..=INTERVAL + TIMEOUT + 100).contains(&b_closed),
        "gateway b closed its tunnel {b_closed} µs after the cut"
    );
    assert_eq!(fin, (false, false), "a reset, never a FIN");
    w.run_until("tunnels freed", 1_000_000, |w| {
        w.a.counters().hbone_tunnels_live == 0 && w.b.counters().hbone_tunnels_live == 0
    });
    for (name, e) in [("a", &mut w.a), ("b", &mut w.b)] {
        let c = e.counters();
        assert_eq!(
            (
                c.hbone_keepalive_timeouts,
                c.hbone_tunnel_failures,
                c.hbone_tunnels_closed,
                c.live_connections,
                c.closed_connections
            ),
            (1, 1, 1, 0, 1),
            "gateway {name}: {}",
            summary(c)
        );
    }
    assert_eq!(w.a.counters().hbone_pings_sent, 1, "the lost PING only");
}
