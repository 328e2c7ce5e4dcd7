//! Received TCP checksums: verified and bad ones dropped by default, trusted on a pod
//! link that is configured so (`--trust-tcp-checksum`), always verified on the uplink.

use std::cell::Cell;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;

use smoltcp::socket::tcp::State;
use xdpmesh_dataplane::wire::DropReason;

use xdpmesh_sim::*;

/// What a veth with checksum offload on hands over: the TCP checksum field holds only
/// the pseudo-header's sum (the kernel's CHECKSUM_PARTIAL, which hardware, or the
/// kernel at the last moment, would complete over the segment). Returns whether the
/// field changed, i.e. whether the frame now fails verification.
fn make_partial(f: &mut [u8]) -> bool {
    // IPv4 carrying TCP only (this world is IPv4).
    if f[12..14] != [0x08, 0x00] || f[23] != 6 {
        return false;
    }
    let ihl = usize::from(f[14] & 0xf) * 4;
    let total = usize::from(u16::from_be_bytes([f[16], f[17]]));
    let tcp = 14 + ihl;
    let mut sum: u32 = f[26..34]
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum();
    sum += 6 + (total - ihl) as u32;
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    let partial = (sum as u16).to_be_bytes();
    let changed = f[tcp + 16..tcp + 18] != partial;
    f[tcp + 16..tcp + 18].copy_from_slice(&partial);
    changed
}

/// A world whose client pod sends every segment with a partial checksum; returns it
/// with the count of frames so altered.
fn partial_client(trust: bool) -> (World, Rc<Cell<u64>>) {
    let mut w = World::new(Opts {
        trust_pod_tcp_checksum: trust,
        ..Default::default()
    });
    let altered = Rc::new(Cell::new(0));
    let n = altered.clone();
    w.client_link = Some(Box::new(move |f: &mut Vec<u8>| {
        if make_partial(f) {
            n.set(n.get() + 1);
        }
        true
    }));
    (w, altered)
}

fn bad_checksums(c: &xdpmesh_dataplane::metrics::Local) -> u64 {
    c.rx_dropped[DropReason::BadTcpChecksum.index()]
}

#[test]
fn partial_checksums_from_a_trusted_pod_link_are_taken_and_the_upload_is_byte_exact() {
    let (mut w, altered) = partial_client(true);
    let srv = w.server.listen(80);
    let cli = w
        .client
        .connect(SocketAddr::new(IpAddr::V4(SERVER_IP), 80), 40_001);
    let up = pattern(100_000, 5);
    let mut sent = 0;
    let mut got = Vec::new();
    w.run_until("upload at the server", 5_000_000, |w| {
        send_some(w.client.tcp(cli), &up, &mut sent);
        recv_some(w.server.tcp(srv), &mut got, usize::MAX);
        got.len() == up.len()
    });
    assert!(got == up, "{} of {} bytes", got.len(), up.len());
    // Every one of the client's segments carried a partial checksum, the SYN included.
    assert!(altered.get() > 60, "{} frames altered", altered.get());
    let a = w.a.counters().clone();
    assert_eq!(
        (bad_checksums(&a), a.opened_connections),
        (0, 1),
        "{}",
        summary(&a)
    );
}

#[test]
fn partial_checksums_are_dropped_and_counted_where_the_pod_link_verifies() {
    let (mut w, altered) = partial_client(false);
    let _srv = w.server.listen(80);
    let cli = w
        .client
        .connect(SocketAddr::new(IpAddr::V4(SERVER_IP), 80), 40_002);
    // Long enough for the SYN's first retransmission (smoltcp: 1 s).
    w.run_for(1_500_000);
    assert_eq!(w.client.tcp(cli).state(), State::SynSent);
    let a = w.a.counters().clone();
    assert!(altered.get() >= 2, "{} frames altered", altered.get());
    assert_eq!(
        (bad_checksums(&a), a.opened_connections),
        (altered.get(), 0),
        "{}",
        summary(&a)
    );
}

#[test]
fn the_uplink_verifies_even_where_the_pod_links_are_trusted() {
    let mut w = World::new(Opts {
        trust_pod_tcp_checksum: true,
        ..Default::default()
    });
    w.log_wire = true;
    let srv = w.server.listen(80);
    let cli = w
        .client
        .connect(SocketAddr::new(IpAddr::V4(SERVER_IP), 80), 40_003);
    w.run_until("established", 1_000_000, |w| {
        w.client.tcp(cli).state() == State::Established
            && w.server.tcp(srv).state() == State::Established
    });
    // Gateway a's SYN on the uplink, replayed to b with a partial checksum.
    let (_, syn) = w
        .wire_log
        .iter()
        .find(|(from_a, f)| *from_a && f[47] & 0x02 != 0)
        .cloned()
        .expect("a SYN from a on the uplink");
    let mut bad = syn.clone();
    assert!(make_partial(&mut bad));
    let before = w.b.counters().clone();
    let now = w.now;
    w.b.on_frame(UP0, &bad, now, true);
    let after = w.b.counters().clone();
    assert_eq!(
        bad_checksums(&after) - bad_checksums(&before),
        1,
        "{}",
        summary(&after)
    );
    assert_eq!(after.opened_connections, before.opened_connections);
}
