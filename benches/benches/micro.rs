//! Criterion micro-benchmarks of xdpmesh's per-packet and per-table hot pieces.
//!
//!     cargo bench -p xdpmesh-benches --bench micro
//!
//! - frame classification (`wire::parse_tcp_frame`) of a SYN and of a 1448-byte segment;
//! - the TCP checksum (smoltcp `TcpPacket::fill_checksum`, 1448-byte payload);
//! - `FlowKey::owner_hash` and an ahash lookup of a `FlowKey` among 10k entries (the
//!   worker's demux);
//! - `Tables::encode` / `Tables::decode` of 1k workloads (a table publication);
//! - smoltcp's own demux of one packet into a one-socket `SocketSet` vs a 1000-socket
//!   set: why xdpmesh gives every leg its own one-socket set.
//!
//! TODO(HBONE): add, once the hbone crate lands: TLS 1.3 record seal and open
//! (AES-128-GCM and AES-256-GCM, 16 KiB and 1448-byte records, rustls), HTTP/2 DATA frame
//! encode/decode and the CONNECT request/response HEADERS (h2 + HPACK), and one HBONE
//! stream set-up (CONNECT round trip in memory).

use std::collections::HashMap;
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use smoltcp::iface::SocketSet;
use smoltcp::phy::{self, DeviceCapabilities, Medium};
use smoltcp::socket::tcp;
use smoltcp::time::Instant;
use smoltcp::wire::{IpAddress, IpProtocol, Ipv4Packet, TcpPacket};

use xdpmesh_dataplane::wire::{self, FlowKey};
use xdpmesh_shm::{Address, Node, PeerAuth, Protocol, Route, Tables, UnknownSource, Workload};

const SRC: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 2);
const DST: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 2);

/// An IPv4/TCP packet (no Ethernet header) with valid checksums.
fn ip_tcp_packet(src_port: u16, dst_port: u16, syn: bool, rst: bool, payload: usize) -> Vec<u8> {
    let tcp_len = 20 + payload;
    let mut buf = vec![0u8; 20 + tcp_len];
    {
        let mut ip = Ipv4Packet::new_unchecked(&mut buf[..]);
        ip.set_version(4);
        ip.set_header_len(20);
        ip.set_total_len((20 + tcp_len) as u16);
        ip.set_ident(1);
        ip.set_dont_frag(true);
        ip.set_hop_limit(64);
        ip.set_next_header(IpProtocol::Tcp);
        ip.set_src_addr(SRC);
        ip.set_dst_addr(DST);
        ip.fill_checksum();
    }
    {
        let mut tcp = TcpPacket::new_unchecked(&mut buf[20..]);
        tcp.set_src_port(src_port);
        tcp.set_dst_port(dst_port);
        tcp.set_seq_number(smoltcp::wire::TcpSeqNumber(1000));
        tcp.set_ack_number(smoltcp::wire::TcpSeqNumber(if syn { 0 } else { 1 }));
        tcp.set_header_len(20);
        tcp.clear_flags();
        tcp.set_syn(syn);
        tcp.set_rst(rst);
        tcp.set_ack(!syn && !rst);
        tcp.set_window_len(65535);
        for (i, b) in tcp.payload_mut().iter_mut().enumerate() {
            *b = i as u8;
        }
        tcp.fill_checksum(&IpAddress::Ipv4(SRC), &IpAddress::Ipv4(DST));
    }
    buf
}

fn eth_frame(ip: &[u8]) -> Vec<u8> {
    let mut f = vec![0u8; wire::ETH_HEADER_LEN];
    wire::write_eth_header(&mut f, [2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2], false);
    f.extend_from_slice(ip);
    f
}

fn bench_wire(c: &mut Criterion) {
    let syn = eth_frame(&ip_tcp_packet(40000, 80, true, false, 0));
    let data = eth_frame(&ip_tcp_packet(40000, 80, false, false, 1448));
    assert!(wire::parse_tcp_frame(&syn).unwrap().flags.syn);
    assert_eq!(wire::parse_tcp_frame(&data).unwrap().ip_len, 20 + 20 + 1448);
    let mut g = c.benchmark_group("wire");
    g.throughput(Throughput::Elements(1));
    g.bench_function("parse_tcp_frame/syn", |b| {
        b.iter(|| wire::parse_tcp_frame(black_box(&syn)))
    });
    g.bench_function("parse_tcp_frame/data_1448", |b| {
        b.iter(|| wire::parse_tcp_frame(black_box(&data)))
    });
    let mut seg = ip_tcp_packet(40000, 80, false, false, 1448)[20..].to_vec();
    g.throughput(Throughput::Bytes(seg.len() as u64));
    g.bench_function("tcp_fill_checksum/1468", |b| {
        b.iter(|| {
            let mut p = TcpPacket::new_unchecked(black_box(&mut seg[..]));
            p.fill_checksum(&IpAddress::Ipv4(SRC), &IpAddress::Ipv4(DST));
        })
    });
    g.finish();
}

fn key(i: u32) -> FlowKey {
    FlowKey {
        src: SocketAddr::new(
            IpAddr::V4(Ipv4Addr::new(198, 18, 1, 2 + (i >> 16) as u8)),
            (i & 0xffff) as u16,
        ),
        dst: SocketAddr::new(IpAddr::V4(DST), 80),
    }
}

fn bench_flows(c: &mut Criterion) {
    let mut g = c.benchmark_group("flow");
    let k = key(12345);
    g.bench_function("owner_hash", |b| b.iter(|| black_box(&k).owner_hash()));
    let table: HashMap<FlowKey, u32, ahash::RandomState> =
        (0..10_000u32).map(|i| (key(i * 7 + 1), i)).collect();
    let hit = key(5_000 * 7 + 1);
    let miss = key(3);
    assert!(table.contains_key(&hit) && !table.contains_key(&miss));
    g.bench_function("ahash_lookup_10k/hit", |b| {
        b.iter(|| table.get(black_box(&hit)))
    });
    g.bench_function("ahash_lookup_10k/miss", |b| {
        b.iter(|| table.get(black_box(&miss)))
    });
    g.finish();
}

fn tables(n: u32) -> Tables {
    Tables {
        trust_domain: "cluster.local".into(),
        cluster_name: "Kubernetes".into(),
        local_node: Some(0),
        unknown_source: UnknownSource::Pass,
        unknown_source_hold_ms: 0,
        pod_cidrs: Vec::new(),
        services: Vec::new(),
        nodes: vec![
            Node {
                name: "node-a".into(),
                gateway: Some(IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1))),
            },
            Node {
                name: "node-b".into(),
                gateway: Some(IpAddr::V4(Ipv4Addr::new(198, 18, 0, 2))),
            },
        ],
        workloads: (0..n)
            .map(|i| Workload {
                name: format!("workload-{i}"),
                namespace: format!("ns-{}", i % 10),
                service_account: format!("sa-{i}"),
                node: i % 2,
                protocol: if i % 2 == 0 {
                    Protocol::Tcp
                } else {
                    Protocol::Hbone
                },
                peer_auth: PeerAuth::Permissive,
            })
            .collect(),
        addresses: (0..n)
            .map(|i| Address {
                addr: IpAddr::V4(Ipv4Addr::new(198, 19, (i >> 8) as u8, i as u8)),
                workload: i,
                route: Route {
                    ifindex: 2,
                    via: Some(IpAddr::V4(Ipv4Addr::new(198, 18, 0, 2))),
                },
            })
            .collect(),
        policies: Vec::new(),
    }
}

fn bench_tables(c: &mut Criterion) {
    let t = tables(1000);
    let bytes = t.encode(7).unwrap();
    let (generation, back) = Tables::decode(&bytes).unwrap();
    assert_eq!((generation, &back), (7, &t));
    let mut g = c.benchmark_group("shm_tables_1k_workloads");
    g.throughput(Throughput::Bytes(bytes.len() as u64));
    g.bench_function("encode", |b| b.iter(|| black_box(&t).encode(8).unwrap()));
    g.bench_function("decode", |b| {
        b.iter(|| Tables::decode(black_box(&bytes)).unwrap())
    });
    g.finish();
}

/// Hands smoltcp one IP packet; swallows what it sends.
struct OnePacket<'a> {
    rx: Option<&'a [u8]>,
    sent: usize,
}

struct Rx<'a>(&'a [u8]);
struct Tx<'a>(&'a mut usize);

impl phy::RxToken for Rx<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(self.0)
    }
}

impl phy::TxToken for Tx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        *self.0 += 1;
        let mut buf = [0u8; 1500];
        f(&mut buf[..len.min(1500)])
    }
}

impl phy::Device for OnePacket<'_> {
    type RxToken<'b>
        = Rx<'b>
    where
        Self: 'b;
    type TxToken<'b>
        = Tx<'b>
    where
        Self: 'b;

    fn receive(&mut self, _: Instant) -> Option<(Rx<'_>, Tx<'_>)> {
        let p = self.rx.take()?;
        Some((Rx(p), Tx(&mut self.sent)))
    }

    fn transmit(&mut self, _: Instant) -> Option<Tx<'_>> {
        Some(Tx(&mut self.sent))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut c = DeviceCapabilities::default();
        c.medium = Medium::Ip;
        c.max_transmission_unit = 1500;
        c
    }
}

/// A set of `n` listening sockets on ports 10000.. (the packet's port is the last one).
fn listeners(n: u16) -> SocketSet<'static> {
    let mut set = SocketSet::new(Vec::new());
    for i in 0..n {
        let mut s = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; 64]),
            tcp::SocketBuffer::new(vec![0; 64]),
        );
        s.listen(10_000 + i).unwrap();
        set.add(s);
    }
    set
}

fn bench_demux(c: &mut Criterion) {
    let now = Instant::from_millis(1);
    let mut iface =
        xdpmesh_dataplane::stack::new_interface(now, xdpmesh_dataplane::stack::DEFAULT_IP_MTU);
    // A RST to a listening socket: smoltcp scans the set for the socket that accepts
    // it, which ignores it, so every iteration sees the same state.
    let mut g = c.benchmark_group("smoltcp_demux");
    g.throughput(Throughput::Elements(1));
    for n in [1u16, 1000] {
        let mut set = listeners(n);
        let pkt = ip_tcp_packet(40000, 10_000 + n - 1, false, true, 0);
        let mut dev = OnePacket {
            rx: Some(&pkt),
            sent: 0,
        };
        iface.poll_ingress_single(now, &mut dev, &mut set);
        assert_eq!(dev.sent, 0, "the listening socket took the RST silently");
        g.bench_function(format!("poll_ingress_single/{n}_sockets"), |b| {
            b.iter_batched_ref(
                || OnePacket {
                    rx: Some(&pkt),
                    sent: 0,
                },
                |dev| iface.poll_ingress_single(now, dev, &mut set),
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

criterion_group!(benches, bench_wire, bench_flows, bench_tables, bench_demux);
criterion_main!(benches);
