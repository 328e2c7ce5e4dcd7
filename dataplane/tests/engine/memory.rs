//! Idle legs give their buffers' pages back ([`xdpmesh_dataplane::ringmem`]): what an
//! idle connection holds, and that nothing a buffer still holds is lost.

use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;

use smoltcp::iface::SocketHandle;
use smoltcp::socket::tcp::State;
use xdpmesh_dataplane::stack::RELEASE_SWEEP_US;

use xdpmesh_sim::*;

const PAGE: usize = 4096;

/// `n` connections from the client's ports `first..` to the server's port 80,
/// established at both ends.
fn open(w: &mut World, first: u16, n: u16) -> Vec<(SocketHandle, SocketHandle)> {
    let conns: Vec<_> = (0..n)
        .map(|i| {
            let srv = w.server.listen(80);
            let cli = w
                .client
                .connect(SocketAddr::new(w.addrs.server, 80), first + i);
            (cli, srv)
        })
        .collect();
    w.run_until("established", 2_000_000, |w| {
        conns.iter().all(|&(c, s)| {
            w.client.tcp(c).state() == State::Established
                && w.server.tcp(s).state() == State::Established
        })
    });
    conns
}

/// Every connection sends `len` bytes each way (a pattern per connection and round),
/// checked byte for byte.
fn echo(w: &mut World, conns: &[(SocketHandle, SocketHandle)], len: usize, round: u8) {
    for (i, &conn) in conns.iter().enumerate() {
        let up = pattern(len, round.wrapping_mul(64).wrapping_add(i as u8));
        let down = pattern(len, round.wrapping_mul(64).wrapping_add(i as u8) ^ 0x55);
        let (at_server, at_client) = exchange(w, conn, &up, &down, 2_000_000);
        assert!(
            at_server == up && at_client == down,
            "connection {i}, round {round}: bytes differ"
        );
    }
}

#[test]
fn idle_connections_give_their_buffer_pages_back_and_take_them_again_on_use() {
    let mut w = World::new(Opts::default());
    let conns = open(&mut w, 41_000, 20);
    echo(&mut w, &conns, 1000, 1);
    // Per gateway and connection: the receive buffer of each leg (the bytes in) and
    // the send buffer of each leg (the bytes out), one page each.
    assert_eq!(w.a.buffers_resident(), 20 * 4 * PAGE);
    assert_eq!(w.b.buffers_resident(), 20 * 4 * PAGE);

    // Unused for a whole sweep period: released at the sweep after that one.
    w.run_for(2 * RELEASE_SWEEP_US + 1);
    for (name, e) in [("a", &mut w.a), ("b", &mut w.b)] {
        assert_eq!(e.buffers_resident(), 0, "gateway {name}");
        let c = e.counters().clone();
        assert_eq!(
            c.socket_buffers_released,
            20 * 4,
            "gateway {name}: {}",
            summary(&c)
        );
        assert_eq!(c.live_connections, 20, "gateway {name}");
    }
    // Another sweep releases nothing again.
    w.run_for(RELEASE_SWEEP_US);
    assert_eq!(w.a.counters().socket_buffers_released, 80);

    // Used again: exact bytes, on fresh pages.
    echo(&mut w, &conns, 5000, 2);
    assert_eq!(
        w.a.buffers_resident(),
        20 * 4 * 2 * PAGE,
        "5000 bytes span two pages"
    );
    for &(cli, srv) in &conns {
        w.client.tcp(cli).close();
        w.server.tcp(srv).close();
    }
    w.run_until("closed", 5_000_000, |w| {
        w.a.counters().live_connections == 0 && w.b.counters().live_connections == 0
    });
    // The freed legs' sockets kept for reuse are released too.
    w.run_for(2 * RELEASE_SWEEP_US + 1);
    for (name, e) in [("a", &mut w.a), ("b", &mut w.b)] {
        let c = e.counters().clone();
        assert!(c.sockets_pooled > 0, "gateway {name}: {}", summary(&c));
        assert_eq!(e.buffers_resident(), 0, "gateway {name}: pooled sockets");
        assert_eq!(
            (c.closed_connections, c.reset_connections),
            (20, 0),
            "gateway {name}: {}",
            summary(&c)
        );
    }
}

/// The TCP segment in an Ethernet/IPv4 frame: (sequence number, payload length).
fn segment(f: &[u8]) -> (u32, usize) {
    let ihl = usize::from(f[14] & 0xf) * 4;
    let total = usize::from(u16::from_be_bytes([f[16], f[17]]));
    let tcp = 14 + ihl;
    let seq = u32::from_be_bytes(f[tcp + 4..tcp + 8].try_into().unwrap());
    let doff = usize::from(f[tcp + 12] >> 4) * 4;
    (seq, total - ihl - doff)
}

/// A segment lost on its way in leaves the next one out of order in the receive ring,
/// where `recv_queue` does not count it; the ring must not be released then, or those
/// bytes would be zeroes when the hole fills. (Without the leg's `RxEdge` check this
/// test fails on the bytes.)
#[test]
fn out_of_order_data_in_an_idle_receive_buffer_is_kept() {
    let mut w = World::new(Opts::default());
    let conn = open(&mut w, 41_100, 1)[0];
    let (cli, srv) = conn;
    let first = pattern(1000, 7);
    let second = pattern(1000, 8);
    // Lose every copy of the first data segment until `heal`.
    let lost: Rc<Cell<Option<u32>>> = Rc::default();
    let heal = Rc::new(Cell::new(false));
    {
        let (lost, heal) = (lost.clone(), heal.clone());
        w.client_link = Some(Box::new(move |f: &mut Vec<u8>| {
            let (seq, len) = segment(f);
            if len == 0 || heal.get() {
                return true;
            }
            let lost_seq = *lost.get().get_or_insert(seq);
            lost.set(Some(lost_seq));
            seq != lost_seq
        }));
    }
    w.client.tcp(cli).send_slice(&first).unwrap();
    w.step();
    assert!(lost.get().is_some(), "the first segment left and was lost");
    w.client.tcp(cli).send_slice(&second).unwrap();
    // Long enough for sweeps, short of smoltcp's retransmission of the first bytes
    // also carrying the second (its RTO starts at 1 s: the retransmissions are lost).
    w.run_for(3 * RELEASE_SWEEP_US);
    let mut at_server = Vec::new();
    recv_some(w.server.tcp(srv), &mut at_server, usize::MAX);
    assert!(
        at_server.is_empty(),
        "nothing in order reached the server yet"
    );
    assert!(
        w.a.buffers_resident() >= PAGE,
        "gateway a keeps the page holding the out-of-order bytes"
    );
    heal.set(true);
    w.run_until("all 2000 bytes at the server", 5_000_000, |w| {
        recv_some(w.server.tcp(srv), &mut at_server, usize::MAX);
        at_server.len() >= 2000
    });
    assert!(
        at_server[..1000] == first[..],
        "the lost bytes, retransmitted"
    );
    assert!(
        at_server[1000..] == second[..],
        "the out-of-order bytes, kept"
    );
    assert_eq!(w.a.counters().reset_connections, 0);
}
