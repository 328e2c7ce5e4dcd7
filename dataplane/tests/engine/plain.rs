//! Plain TCP connections through two engines.

use std::net::{IpAddr, SocketAddr};

use smoltcp::iface::SocketHandle;
use smoltcp::socket::tcp::State;
use xdpmesh_dataplane::stack::Buffers;
use xdpmesh_dataplane::wire;

use xdpmesh_sim::*;

fn server_addr() -> SocketAddr {
    SocketAddr::new(IpAddr::V4(SERVER_IP), 80)
}

/// A connection from the client's port `port` to the server's port 80, established
/// at both ends.
fn established(w: &mut World, port: u16) -> (SocketHandle, SocketHandle) {
    let srv = w.server.listen(80);
    let cli = w.client.connect(SocketAddr::new(w.addrs.server, 80), port);
    w.run_until("established", 1_000_000, |w| {
        w.client.tcp(cli).state() == State::Established
            && w.server.tcp(srv).state() == State::Established
    });
    (cli, srv)
}

/// Counters both gateways must show after `n` clean connections.
fn assert_clean(w: &mut World, n: u64) {
    for (name, e) in [("a", &mut w.a), ("b", &mut w.b)] {
        let c = e.counters().clone();
        assert_eq!(
            (
                c.opened_connections,
                c.closed_connections,
                c.live_connections
            ),
            (n, n, 0),
            "gateway {name}: {}",
            summary(&c)
        );
        assert_eq!(c.reset_connections, 0, "gateway {name}: {}", summary(&c));
        assert_eq!(c.no_flow_resets, 0, "gateway {name}: {}", summary(&c));
        assert_eq!(e.live_keys(), 0, "gateway {name}: flow table empty");
    }
    assert_eq!((w.client.misaddressed, w.server.misaddressed), (0, 0));
}

#[test]
fn splice_is_byte_exact_both_ways_with_a_slow_reader() {
    let mut w = World::new(Opts::default());
    let srv = w.server.listen(80);
    let cli = w.client.connect(server_addr(), 40_001);
    let up = pattern(1 << 20, 1);
    let down = pattern(300_000, 2);
    let (mut up_sent, mut down_sent) = (0, 0);
    let (mut at_server, mut at_client) = (Vec::new(), Vec::new());
    let mut next_read = 0;
    w.run_until("1 MiB up to a slow reader, 300 kB down", 60_000_000, |w| {
        send_some(w.client.tcp(cli), &up, &mut up_sent);
        // The server reads 8 KiB per millisecond: the windows, not the buffers, must
        // absorb the difference.
        if w.now >= next_read {
            next_read = w.now + 1_000;
            recv_some(w.server.tcp(srv), &mut at_server, 8192);
        }
        if w.server.tcp(srv).state() == State::Established {
            send_some(w.server.tcp(srv), &down, &mut down_sent);
        }
        recv_some(w.client.tcp(cli), &mut at_client, usize::MAX);
        at_server.len() == up.len() && at_client.len() == down.len()
    });
    assert!(at_server == up, "upstream bytes differ");
    assert!(at_client == down, "downstream bytes differ");
    assert_eq!(w.a.counters().bytes_downstream_to_upstream, up.len() as u64);
    assert_eq!(
        w.b.counters().bytes_upstream_to_downstream,
        down.len() as u64
    );
    w.client.tcp(cli).close();
    w.server.tcp(srv).close();
    w.run_until("both closed", 5_000_000, |w| {
        w.a.counters().live_connections == 0 && w.b.counters().live_connections == 0
    });
    assert_clean(&mut w, 1);
}

#[test]
fn client_half_close_reaches_the_server_and_the_reply_still_flows() {
    let mut w = World::new(Opts::default());
    let (cli, srv) = established(&mut w, 40_002);
    w.client.tcp(cli).send_slice(b"request").unwrap();
    w.client.tcp(cli).close();
    let mut got = Vec::new();
    w.run_until("request and FIN at the server", 1_000_000, |w| {
        recv_some(w.server.tcp(srv), &mut got, usize::MAX);
        w.server.tcp(srv).state() == State::CloseWait
    });
    assert_eq!(got, b"request");
    // The other direction is still open.
    w.server.tcp(srv).send_slice(b"response").unwrap();
    w.server.tcp(srv).close();
    let mut reply = Vec::new();
    w.run_until("response and FIN at the client", 1_000_000, |w| {
        recv_some(w.client.tcp(cli), &mut reply, usize::MAX);
        matches!(w.client.tcp(cli).state(), State::TimeWait | State::Closed)
            && w.a.counters().live_connections == 0
            && w.b.counters().live_connections == 0
    });
    assert_eq!(reply, b"response");
    assert_eq!(
        w.client.tcp(cli).state(),
        State::TimeWait,
        "a graceful close"
    );
    assert_clean(&mut w, 1);
}

#[test]
fn server_half_close_reaches_the_client_and_the_client_still_sends() {
    let mut w = World::new(Opts::default());
    let (cli, srv) = established(&mut w, 40_003);
    w.server.tcp(srv).send_slice(b"banner").unwrap();
    w.server.tcp(srv).close();
    let mut got = Vec::new();
    w.run_until("banner and FIN at the client", 1_000_000, |w| {
        recv_some(w.client.tcp(cli), &mut got, usize::MAX);
        w.client.tcp(cli).state() == State::CloseWait
    });
    assert_eq!(got, b"banner");
    w.run_until("the server's FIN acknowledged", 1_000_000, |w| {
        w.server.tcp(srv).state() == State::FinWait2
    });
    w.client.tcp(cli).send_slice(b"bye").unwrap();
    w.client.tcp(cli).close();
    let mut at_server = Vec::new();
    w.run_until("bye at the server, all closed", 1_000_000, |w| {
        recv_some(w.server.tcp(srv), &mut at_server, usize::MAX);
        w.a.counters().live_connections == 0 && w.b.counters().live_connections == 0
    });
    assert_eq!(at_server, b"bye");
    assert_clean(&mut w, 1);
}

#[test]
fn a_reset_answering_our_half_close_reaches_the_client_at_once() {
    let mut w = World::new(Opts::default());
    let (cli, srv) = established(&mut w, 40_004);
    // 100 bytes and a half-close; the server closes without reading them: its kernel
    // (here its stack) answers with a reset.
    w.client.tcp(cli).send_slice(&[7; 100]).unwrap();
    w.client.tcp(cli).close();
    w.run_until("data and FIN at the server", 1_000_000, |w| {
        w.server.tcp(srv).state() == State::CloseWait
    });
    w.server.tcp(srv).abort();
    let start = w.now;
    w.run_until("reset at the client", 1_000_000, |w| {
        w.client.tcp(cli).state() == State::Closed
    });
    assert!(w.now - start < 50_000, "took {} µs", w.now - start);
    w.run_until("freed", 1_000_000, |w| {
        w.a.counters().live_connections == 0 && w.b.counters().live_connections == 0
    });
    for e in [&mut w.a, &mut w.b] {
        let c = e.counters();
        assert_eq!(
            (c.reset_connections, c.closed_connections),
            (1, 1),
            "{}",
            summary(c)
        );
    }
}

#[test]
fn a_refused_connect_resets_the_client() {
    let mut w = World::new(Opts::default());
    // No listener: the server's stack answers the SYN with a reset.
    let cli = w.client.connect(server_addr(), 40_005);
    let mut ever_established = false;
    w.run_until("reset at the client", 1_000_000, |w| {
        ever_established |= w.client.tcp(cli).state() == State::Established;
        w.client.tcp(cli).state() == State::Closed
    });
    // Gateway a answers the SYN itself (it terminates TCP), so the client sees an
    // established connection that is then reset, as with any transparent proxy.
    assert!(ever_established);
    w.run_until("freed", 1_000_000, |w| {
        w.a.counters().live_connections == 0 && w.b.counters().live_connections == 0
    });
    for e in [&mut w.a, &mut w.b] {
        let c = e.counters();
        assert_eq!(
            (
                c.opened_connections,
                c.closed_connections,
                c.reset_connections
            ),
            (1, 1, 1),
            "{}",
            summary(c)
        );
    }
}

#[test]
fn a_half_dead_connection_is_aborted_after_the_limit() {
    let mut w = World::new(Opts::default());
    let (cli, srv) = established(&mut w, 40_006);
    // The server half-closes; the client answers with its own FIN, which gateway b
    // passes on to a server that has vanished meanwhile: b's leg to the server waits
    // in LAST-ACK for an ACK that never comes, while its leg towards a is done.
    w.server.tcp(srv).close();
    w.run_until("FIN at the client", 1_000_000, |w| {
        w.client.tcp(cli).state() == State::CloseWait
    });
    w.server.gone = true;
    w.client.tcp(cli).close();
    w.run_until("client done", 1_000_000, |w| {
        matches!(w.client.tcp(cli).state(), State::Closed | State::TimeWait)
            && w.a.counters().live_connections == 0
    });
    let start = w.now;
    w.run_for(59_000_000);
    assert_eq!(w.b.counters().live_connections, 1, "still within the limit");
    w.run_until("aborted at the half-dead limit", 3_000_000, |w| {
        w.b.counters().live_connections == 0
    });
    let took = w.now - start;
    assert!(
        (59_000_000..62_000_000).contains(&took),
        "freed {took} µs after the client's side ended"
    );
    assert_eq!(w.b.counters().closed_connections, 1);
}

#[test]
fn late_segments_are_dropped_while_the_key_lingers_then_reset() {
    let mut w = World::new(Opts::default());
    let (cli, srv) = established(&mut w, 40_007);
    w.client.keep_log = true;
    w.client.tcp(cli).close();
    w.server.tcp(srv).close();
    w.run_until("closed", 1_000_000, |w| {
        w.a.counters().live_connections == 0 && w.b.counters().live_connections == 0
    });
    // The client's last segment (its ACK of our FIN), delivered again.
    let last = w.client.log.last().cloned().unwrap();
    let t = wire::parse_tcp_frame(&last).unwrap();
    assert!(t.flags.ack && !t.flags.syn && !t.flags.rst);
    w.a.on_frame(POD0, &last, w.now, true);
    assert_eq!(w.a.counters().late_segments, 1);
    assert_eq!(w.a.counters().no_flow_resets, 0);
    w.a.poll(w.now);
    assert!(w.a.sink_mut(POD0).take().is_empty(), "dropped silently");
    // After the linger, the same segment is answered with a reset.
    let later = w.now + 2_000_000;
    w.a.poll(later);
    w.a.on_frame(POD0, &last, later, true);
    w.a.poll(later);
    assert_eq!(w.a.counters().no_flow_resets, 1);
    let out = w.a.sink_mut(POD0).take();
    assert_eq!(out.len(), 1);
    let rst = wire::parse_tcp_frame(&out[0]).unwrap();
    assert!(rst.flags.rst, "{:?}", rst.flags);
    assert_eq!(rst.key, t.key.reversed());
    assert_eq!(&out[0][0..6], &CLIENT_MAC);
}

#[test]
fn buffers_bound_what_a_connection_holds() {
    // With 4 KiB socket buffers a 256 KiB transfer still completes byte-exact: the
    // splice moves only what fits.
    let mut w = World::new(Opts {
        buffers: Buffers { rx: 4096, tx: 4096 },
        ..Default::default()
    });
    let srv = w.server.listen(80);
    let cli = w.client.connect(server_addr(), 40_010);
    let up = pattern(256 * 1024, 9);
    let mut sent = 0;
    let mut got = Vec::new();
    w.run_until("256 KiB through 4 KiB buffers", 30_000_000, |w| {
        send_some(w.client.tcp(cli), &up, &mut sent);
        recv_some(w.server.tcp(srv), &mut got, usize::MAX);
        got.len() == up.len()
    });
    assert!(got == up);
}

/// Jumbo links: pod links of MTU 65535 and an uplink of 9000. The pods' segments are
/// tens of kilobytes (the gateways advertise the pod link's MSS), the gateways' on the
/// uplink exactly fill its MTU, and the bytes arrive exact both ways.
#[test]
fn jumbo_links_carry_pod_sized_segments_byte_exact() {
    let mut w = World::new(Opts {
        pod_mtu: 65_535,
        uplink_mtu: 9000,
        buffers: Buffers {
            rx: 256 * 1024,
            tx: 256 * 1024,
        },
        ..Default::default()
    });
    w.log_wire = true;
    w.client.keep_log = true;
    let conn = established(&mut w, 40_021);
    let up = pattern(2 << 20, 21);
    let down = pattern(1 << 20, 22);
    let (at_server, at_client) = exchange(&mut w, conn, &up, &down, 10_000_000);
    assert!(at_server == up, "upstream bytes differ");
    assert!(at_client == down, "downstream bytes differ");
    let client_max = w.client.log.iter().map(Vec::len).max().unwrap_or(0);
    assert!(
        client_max > 32 * 1024,
        "the client's largest frame is {client_max} bytes: the MSS of the pod link is not used"
    );
    for from_a in [true, false] {
        let (max, n) = w.largest_uplink_frame(from_a);
        assert_eq!(max, 9014, "uplink frames from a={from_a} ({n} of them)");
    }
    let data_frames = w.wire_log.iter().filter(|(_, f)| f.len() > 1514).count();
    // 3 MiB in 8,960-byte segments: about 350, plus the odd short one.
    assert!(
        (351..=400).contains(&data_frames),
        "{data_frames} uplink frames above 1514 bytes"
    );
    w.client.tcp(conn.0).close();
    w.server.tcp(conn.1).close();
    w.run_until("both closed", 5_000_000, |w| {
        w.a.counters().live_connections == 0 && w.b.counters().live_connections == 0
    });
    assert_clean(&mut w, 1);
}

/// (data segments from a, pure ACKs from b) on the uplink while the client sends
/// `segments` full-sized segments' worth (the server reading all of it), with the
/// legs' delayed-ACK time `ack_delay`.
fn uplink_acks(ack_delay: Option<smoltcp::time::Duration>, segments: usize) -> (usize, usize) {
    let mut w = World::new(Opts {
        ack_delay,
        ..Default::default()
    });
    let conn = established(&mut w, 40_031);
    w.log_wire = true;
    let up = pattern(segments * 1460, 31);
    let (at_server, _) = exchange(&mut w, conn, &up, b"", 5_000_000);
    assert!(at_server == up, "bytes differ");
    let payload = |f: &[u8]| {
        let t = wire::parse_tcp_frame(f).unwrap();
        let tcp = t.ip_offset + usize::from(f[t.ip_offset] & 0x0f) * 4;
        (
            t,
            t.ip_offset + t.ip_len - (tcp + usize::from(f[tcp + 12] >> 4) * 4),
        )
    };
    let data = w
        .wire_log
        .iter()
        .filter(|(from_a, f)| *from_a && payload(f).1 > 0)
        .count();
    let acks = w
        .wire_log
        .iter()
        .filter(|(from_a, f)| {
            let (t, len) = payload(f);
            !*from_a && len == 0 && t.flags.ack && !t.flags.syn && !t.flags.fin && !t.flags.rst
        })
        .count();
    (data, acks)
}

/// Delayed ACKs as Linux's: a leg ACKs every second full-sized segment at once (and
/// the odd last one when its delay ends); `--ack-delay-ms 0` (None) ACKs every one.
#[test]
fn a_leg_acks_every_second_segment_or_every_one_with_delayed_acks_off() {
    let (data, acks) = uplink_acks(Some(xdpmesh_dataplane::sockets::ACK_DELAY), 100);
    let (data0, acks0) = uplink_acks(None, 100);
    // The splice forwards what has arrived, so a few segments are short: 100 segments'
    // worth crosses in 100 to 104.
    for d in [data, data0] {
        assert!((100..=104).contains(&d), "{d} data segments on the uplink");
    }
    // One ACK when more than a full segment is unacknowledged: half of them, short
    // ones counting for less.
    assert!(
        (data / 2 - 1..=data.div_ceil(2)).contains(&acks),
        "delayed ACKs: {acks} for {data} segments"
    );
    assert_eq!(acks0, data0, "delayed ACKs off: one per segment");
}

/// A FIN retransmitted after its connection was freed (its ACK was lost) gets the ACK
/// that TIME-WAIT would have sent, exact in sequence and acknowledgement numbers,
/// instead of silence until the linger ends and a reset after it.
#[test]
fn a_retransmitted_fin_of_a_freed_connection_is_acknowledged() {
    retransmitted_fin_is_acknowledged(false);
}

/// [`a_retransmitted_fin_of_a_freed_connection_is_acknowledged`] over IPv6.
#[test]
fn a_retransmitted_fin_of_a_freed_ipv6_connection_is_acknowledged() {
    retransmitted_fin_is_acknowledged(true);
}

fn retransmitted_fin_is_acknowledged(ipv6: bool) {
    use smoltcp::wire::{Ipv4Packet, Ipv6Packet, TcpPacket};
    let mut w = World::new(Opts {
        ipv6,
        ..Default::default()
    });
    let (cli, srv) = established(&mut w, 40_008);
    w.client.keep_log = true;
    // The server closes first, so the client's FIN ends the connection (LAST-ACK).
    w.server.tcp(srv).close();
    w.run_until("client in CLOSE-WAIT", 1_000_000, |w| {
        w.client.tcp(cli).state() == State::CloseWait
    });
    w.client.tcp(cli).close();
    w.run_until("freed", 1_000_000, |w| {
        w.a.counters().live_connections == 0 && w.b.counters().live_connections == 0
    });
    let fin = w
        .client
        .log
        .iter()
        .rev()
        .find(|f| wire::parse_tcp_frame(f).is_ok_and(|t| t.flags.fin))
        .cloned()
        .expect("the client's FIN");
    let tcp_of = |frame: &[u8]| {
        let ip = &frame[wire::ETH_HEADER_LEN..];
        let payload = if ipv6 {
            Ipv6Packet::new_checked(ip).unwrap().payload()
        } else {
            Ipv4Packet::new_checked(ip).unwrap().payload()
        };
        let t = TcpPacket::new_checked(payload).unwrap();
        (
            t.seq_number(),
            t.ack_number(),
            t.fin(),
            t.ack(),
            t.rst(),
            t.payload().len(),
        )
    };
    let (seq, ack, _, _, _, len) = tcp_of(&fin);
    w.a.on_frame(POD0, &fin, w.now, true);
    w.a.poll(w.now);
    assert_eq!(w.a.counters().late_segments, 1);
    assert_eq!(w.a.counters().no_flow_resets, 0);
    let out = w.a.sink_mut(POD0).take();
    assert_eq!(out.len(), 1, "one ACK");
    assert_eq!(&out[0][0..6], &CLIENT_MAC);
    let reply = wire::parse_tcp_frame(&out[0]).expect("a valid frame, checksums included");
    assert_eq!(
        reply.key,
        wire::parse_tcp_frame(&fin).unwrap().key.reversed()
    );
    let (r_seq, r_ack, r_fin, r_is_ack, r_rst, r_len) = tcp_of(&out[0]);
    assert_eq!(
        (r_seq, r_ack, r_fin, r_is_ack, r_rst, r_len),
        (ack, seq + len + 1, false, true, false, 0)
    );
}

/// Freed legs' sockets serve the next connections: the second and third connections
/// run on reused sockets (no new buffers), byte-exact, with nothing of the previous
/// connection's state or bytes.
#[test]
fn the_next_connections_reuse_freed_sockets_byte_exact() {
    let mut w = World::new(Opts::default());
    for (i, port) in [40_031u16, 40_032, 40_033].into_iter().enumerate() {
        let conn = established(&mut w, port);
        let up = pattern(100_000 + i * 7, 31 + i as u8);
        let down = pattern(50_000 + i * 11, 41 + i as u8);
        let (at_server, at_client) = exchange(&mut w, conn, &up, &down, 10_000_000);
        assert!(
            at_server == up && at_client == down,
            "connection {i}: bytes differ"
        );
        w.client.tcp(conn.0).close();
        w.server.tcp(conn.1).close();
        w.run_until("closed", 5_000_000, |w| {
            w.a.counters().live_connections == 0 && w.b.counters().live_connections == 0
        });
    }
    for (name, e) in [("a", &mut w.a), ("b", &mut w.b)] {
        let c = e.counters().clone();
        // Two legs per connection and gateway; the first connection's are new.
        assert_eq!(c.sockets_reused, 4, "gateway {name}: {}", summary(&c));
        assert_eq!(c.sockets_pooled, 2, "gateway {name}");
    }
    assert_clean(&mut w, 3);
}

/// Each connection remembers the table generation it was opened under; the engine
/// reports the oldest one live (the generation in force when none is), which control
/// waits on before it stops diverting a removed address.
#[test]
fn the_oldest_generation_in_use_follows_the_live_connections() {
    let mut w = World::new(Opts::default());
    assert_eq!(
        w.a.oldest_generation_in_use(),
        1,
        "none live: the one in force"
    );
    let (c1, s1) = established(&mut w, 40_030);
    w.a.set_tables(2, tables(0, xdpmesh_shm::Protocol::Tcp, Vec::new()));
    assert_eq!(
        w.a.oldest_generation_in_use(),
        1,
        "a generation-1 connection is live"
    );
    let (c2, s2) = established(&mut w, 40_031);
    w.a.set_tables(3, tables(0, xdpmesh_shm::Protocol::Tcp, Vec::new()));
    for (cli, srv, after) in [(c1, s1, 2), (c2, s2, 3)] {
        w.client.tcp(cli).close();
        w.server.tcp(srv).close();
        let live = w.a.counters().live_connections;
        w.run_until("one connection freed", 5_000_000, |w| {
            w.a.counters().live_connections == live - 1
        });
        assert_eq!(w.a.oldest_generation_in_use(), after);
    }
}

/// A next hop that answers its ARP request at once is used at once: the waiting leg is
/// looked at 25 µs after the request, then less and less often (every 1 ms at the
/// longest), so the SYN to it leaves within a hundred microseconds of the answer, not
/// at the next millisecond. (With one pass per millisecond this fails: the SYN left
/// 1 ms after the request.)
#[test]
fn a_next_hop_that_answers_at_once_is_used_at_once() {
    let mut w = World::new(Opts::default());
    w.log_wire = true;
    let b_up = w.addrs.b_up;
    w.a_neigh.lock().unwrap().remove(&(UP0_IFINDEX, b_up));
    let srv = w.server.listen(80);
    let cli = w.client.connect(server_addr(), 40_701);
    w.run_until("a asks for b's MAC", 1_000_000, |w| {
        w.a.counters().neighbor_requests == 1
    });
    let asked = w.now;
    let uplink_syn = |w: &World| {
        w.wire_log
            .iter()
            .any(|(from_a, f)| *from_a && f.len() > 47 && f[47] == 0x02)
    };
    assert!(!uplink_syn(&w), "the SYN waits for the MAC");
    // The answer lands in the snoop map 30 µs after the request.
    w.run_until("30 µs later", 1_000, |w| w.now >= asked + 30);
    w.a_neigh
        .lock()
        .unwrap()
        .insert((UP0_IFINDEX, b_up), B_UP_MAC);
    w.run_until("the SYN on the uplink", 2_000, |w| uplink_syn(w));
    assert!(
        w.now - asked <= 120,
        "the SYN left {} µs after the request",
        w.now - asked
    );
    w.run_until("established", 1_000_000, |w| {
        w.client.tcp(cli).state() == State::Established
            && w.server.tcp(srv).state() == State::Established
    });
    assert_eq!(w.a.counters().neighbor_requests, 1);
}
