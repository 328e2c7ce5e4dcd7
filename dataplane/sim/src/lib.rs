//! xdpmesh-sim: an in-process test bed for the engine, used by the engine transcript
//! tests (`dataplane/tests/engine/`) and the in-process benchmark
//! (`benches/src/bin/xdpmesh-engine-bench.rs`).
//!
//! Two engines wired to each other over their `up0` ports and
//! to two scripted pods (smoltcp hosts) over their `pod0` ports, on a simulated clock.
//! No root, no kernel, milliseconds per test; every frame can be inspected.
//!
//! ```text
//!  client 198.18.1.2 ── pod0 [engine a] up0 ══ up0 [engine b] pod0 ── 198.18.2.2 server
//!                     198.18.1.1   198.18.0.1    198.18.0.2   198.18.2.1
//! ```
//!
//! With [`Opts::ipv6`] the same world is IPv6-only, from the benchmarking range
//! 2001:2::/48 (RFC 5180): see [`Addrs::V6`].
//!
//! The pods are smoltcp interfaces, not kernel sockets (the namespace tests in
//! `tests/` use real kernel peers); they stand in for them here so that the engine's
//! state machines can be driven and observed exactly.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{self, DeviceCapabilities, Medium};
use smoltcp::socket::tcp;
use smoltcp::time::Instant;
use smoltcp::wire::{HardwareAddress, IpAddress, IpCidr};
use xdpmesh_dataplane::engine::{Engine, EngineConfig, PortSpec};
use xdpmesh_dataplane::identity::IdentityStore;
use xdpmesh_dataplane::metrics::Local;
use xdpmesh_dataplane::proxy::HboneLimits;
use xdpmesh_dataplane::sink::MemSink;
use xdpmesh_dataplane::stack::Buffers;
use xdpmesh_dataplane::wire::{self, Mac, TcpChecksum};
use xdpmesh_hbone::identity::SpiffeId;
use xdpmesh_hbone::{Ca, Validity};
use xdpmesh_shm::{Address, Node, PeerAuth, Policy, Protocol, Route, Tables, Workload};

/// Port index of `pod0` on both gateways.
pub const POD0: usize = 0;
/// Port index of `up0` on both gateways.
pub const UP0: usize = 1;
/// Interface index of `pod0` (the tables' routes name it).
pub const POD0_IFINDEX: u32 = 11;
/// Interface index of `up0`.
pub const UP0_IFINDEX: u32 = 12;

/// The client pod (a mesh workload served by gateway a).
pub const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 2);
/// Gateway a on `pod0`.
pub const A_POD_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 1);
/// Gateway a on `up0`.
pub const A_UP_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
/// Gateway b on `up0`.
pub const B_UP_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
/// Gateway b on `pod0`.
pub const B_POD_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 1);
/// The server pod (a mesh workload served by gateway b).
pub const SERVER_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 2);

/// The addresses of a world, in the order of the constants above.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Addrs {
    pub client: IpAddr,
    pub a_pod: IpAddr,
    pub a_up: IpAddr,
    pub b_up: IpAddr,
    pub b_pod: IpAddr,
    pub server: IpAddr,
}

const fn v6(seg: [u16; 8]) -> IpAddr {
    IpAddr::V6(Ipv6Addr::new(
        seg[0], seg[1], seg[2], seg[3], seg[4], seg[5], seg[6], seg[7],
    ))
}

impl Addrs {
    /// The IPv4 world (the constants above).
    pub const V4: Addrs = Addrs {
        client: IpAddr::V4(CLIENT_IP),
        a_pod: IpAddr::V4(A_POD_IP),
        a_up: IpAddr::V4(A_UP_IP),
        b_up: IpAddr::V4(B_UP_IP),
        b_pod: IpAddr::V4(B_POD_IP),
        server: IpAddr::V4(SERVER_IP),
    };
    /// The IPv6 world: a /64 per link, as the namespace topology's IPv6 addresses.
    pub const V6: Addrs = Addrs {
        client: v6([0x2001, 2, 0, 1, 0, 0, 0, 2]),
        a_pod: v6([0x2001, 2, 0, 1, 0, 0, 0, 1]),
        a_up: v6([0x2001, 2, 0, 0, 0, 0, 0, 1]),
        b_up: v6([0x2001, 2, 0, 0, 0, 0, 0, 2]),
        b_pod: v6([0x2001, 2, 0, 2, 0, 0, 0, 1]),
        server: v6([0x2001, 2, 0, 2, 0, 0, 0, 2]),
    };
}

/// MACs, in the order of the addresses above.
pub const CLIENT_MAC: Mac = [2, 0, 0, 0, 1, 2];
pub const A_POD_MAC: Mac = [2, 0, 0, 0, 1, 1];
pub const A_UP_MAC: Mac = [2, 0, 0, 0, 0, 1];
pub const B_UP_MAC: Mac = [2, 0, 0, 0, 0, 2];
pub const B_POD_MAC: Mac = [2, 0, 0, 0, 2, 1];
pub const SERVER_MAC: Mac = [2, 0, 0, 0, 2, 2];

/// The mesh's trust domain.
pub const TRUST_DOMAIN: &str = "cluster.local";

/// Next hops an engine's resolver knows: `(ifindex, ip) → MAC`; tests remove entries
/// to make a next hop unresolvable.
pub type Neighbors = Arc<Mutex<HashMap<(u32, IpAddr), Mac>>>;

/// How a world is set up.
pub struct Opts {
    /// Protocol of both workloads.
    pub protocol: Protocol,
    /// Policies (both gateways get them; the destination enforces them).
    pub policies: Vec<Policy>,
    /// HBONE pool limits (both engines).
    pub hbone: HboneLimits,
    /// Socket buffers (both engines).
    pub buffers: Buffers,
    /// IP MTU of the pod links (the pods' and the gateways' pod ports).
    pub pod_mtu: usize,
    /// IP MTU of the link between the gateways.
    pub uplink_mtu: usize,
    /// An IPv6-only world ([`Addrs::V6`]) instead of the IPv4 one.
    pub ipv6: bool,
    /// The legs' delayed-ACK time (both engines; None: off).
    pub ack_delay: Option<smoltcp::time::Duration>,
    /// Both gateways trust the TCP checksums of frames from their pods
    /// (`--trust-tcp-checksum pod0`).
    pub trust_pod_tcp_checksum: bool,
}

impl Default for Opts {
    fn default() -> Self {
        Opts {
            protocol: Protocol::Tcp,
            policies: Vec::new(),
            hbone: HboneLimits::default(),
            buffers: Buffers::default(),
            pod_mtu: 1500,
            uplink_mtu: 1500,
            ipv6: false,
            ack_delay: Some(xdpmesh_dataplane::sockets::ACK_DELAY),
            trust_pod_tcp_checksum: false,
        }
    }
}

/// The tables of gateway `local` (0 = a, 1 = b) of the IPv4 world.
pub fn tables(local: u32, protocol: Protocol, policies: Vec<Policy>) -> Tables {
    tables_for(&Addrs::V4, local, protocol, policies)
}

/// The tables of gateway `local` (0 = a, 1 = b) of the world with addresses `ips`.
pub fn tables_for(ips: &Addrs, local: u32, protocol: Protocol, policies: Vec<Policy>) -> Tables {
    // A workload served here is on pod0; one served by the other gateway is reached
    // through up0 via that gateway.
    let route = |served_here: bool, gateway: IpAddr| Route {
        ifindex: if served_here {
            POD0_IFINDEX
        } else {
            UP0_IFINDEX
        },
        via: (!served_here).then_some(gateway),
    };
    let workload = |name: &str, node: u32| Workload {
        name: name.into(),
        namespace: "default".into(),
        service_account: name.into(),
        node,
        protocol,
        peer_auth: PeerAuth::Permissive,
    };
    Tables {
        trust_domain: TRUST_DOMAIN.into(),
        cluster_name: "Kubernetes".into(),
        local_node: Some(local),
        nodes: vec![
            Node {
                name: "node-a".into(),
                gateway: Some(ips.a_up),
            },
            Node {
                name: "node-b".into(),
                gateway: Some(ips.b_up),
            },
        ],
        workloads: vec![workload("client", 0), workload("server", 1)],
        addresses: vec![
            Address {
                addr: ips.client,
                workload: 0,
                route: route(local == 0, ips.a_up),
            },
            Address {
                addr: ips.server,
                workload: 1,
                route: route(local == 1, ips.b_up),
            },
        ],
        policies,
        ..Default::default()
    }
}

/// Adds a plain-TCP workload `name` (namespace `default`, its own service account) on
/// node `node` (0 = a, 1 = b) at `addr` to gateway `local`'s tables, routed as
/// [`tables`] routes the others: on `pod0` when served here, else via the other
/// gateway. Returns its workload index.
pub fn add_workload(t: &mut Tables, local: u32, name: &str, addr: Ipv4Addr, node: u32) -> u32 {
    let index = t.workloads.len() as u32;
    t.workloads.push(Workload {
        name: name.into(),
        namespace: "default".into(),
        service_account: name.into(),
        node,
        protocol: Protocol::Tcp,
        peer_auth: PeerAuth::Permissive,
    });
    let gateway = if node == 0 { A_UP_IP } else { B_UP_IP };
    t.addresses.push(Address {
        addr: IpAddr::V4(addr),
        workload: index,
        route: if node == local {
            Route {
                ifindex: POD0_IFINDEX,
                via: None,
            }
        } else {
            Route {
                ifindex: UP0_IFINDEX,
                via: Some(IpAddr::V4(gateway)),
            }
        },
    });
    index
}

/// The SPIFFE identity of service account `sa` in namespace `default`.
pub fn spiffe(sa: &str) -> SpiffeId {
    format!("spiffe://{TRUST_DOMAIN}/ns/default/sa/{sa}")
        .parse()
        .unwrap()
}

fn engine(
    id_: u32,
    neigh: &Neighbors,
    pod: (IpAddr, Mac),
    up: (IpAddr, Mac),
    opts: &Opts,
) -> Engine<MemSink> {
    let n = neigh.clone();
    let cfg = EngineConfig {
        id: 0,
        workers: 1,
        buffers: opts.buffers,
        ack_delay: opts.ack_delay,
        hbone: opts.hbone,
        resolver: Box::new(move |ifindex, ip| n.lock().unwrap().get(&(ifindex, ip)).copied()),
        inboxes: Vec::new(),
        log_limiter: Default::default(),
        tap: Default::default(),
    };
    let spec = |name: &str, ifindex, (ip, mac): (IpAddr, Mac), mtu| PortSpec {
        name: format!("{name}{id_}"),
        ifindex,
        mac,
        ipv4: match ip {
            IpAddr::V4(v4) => Some(v4),
            IpAddr::V6(_) => None,
        },
        ipv6: match ip {
            IpAddr::V4(_) => None,
            IpAddr::V6(v6) => Some(v6),
        },
        mtu,
        tcp_checksum: Default::default(),
    };
    // Frames as large as the link's, as the AF_XDP TX half takes them (multi-buffer).
    let sink = |mtu: usize| MemSink::new(2048, (mtu + 14).max(1792));
    Engine::new(
        cfg,
        vec![
            (
                PortSpec {
                    tcp_checksum: if opts.trust_pod_tcp_checksum {
                        TcpChecksum::Trust
                    } else {
                        TcpChecksum::Verify
                    },
                    ..spec("pod", POD0_IFINDEX, pod, opts.pod_mtu)
                },
                sink(opts.pod_mtu),
            ),
            (
                spec("up", UP0_IFINDEX, up, opts.uplink_mtu),
                sink(opts.uplink_mtu),
            ),
        ],
        0,
    )
}

/// A smoltcp TCP host standing in for a pod: one IPv4 or IPv6 address, a default route
/// via its gateway, Ethernet framing added and checked here.
pub struct Host {
    iface: Interface,
    dev: Queue,
    pub sockets: SocketSet<'static>,
    ip: IpAddr,
    mac: Mac,
    gw_mac: Mac,
    /// Frames that arrived for another MAC (must stay 0).
    pub misaddressed: u64,
    /// Every frame the host sent, when `keep_log` is set.
    pub log: Vec<Vec<u8>>,
    pub keep_log: bool,
    /// The host is gone: it neither sends nor receives.
    pub gone: bool,
}

struct Queue {
    rx: VecDeque<Vec<u8>>,
    tx: Vec<Vec<u8>>,
    mtu: usize,
}

struct QRx(Vec<u8>);
struct QTx<'a>(&'a mut Vec<Vec<u8>>);

impl phy::RxToken for QRx {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl phy::TxToken for QTx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut buf = vec![0; len];
        let r = f(&mut buf);
        self.0.push(buf);
        r
    }
}

impl phy::Device for Queue {
    type RxToken<'a> = QRx;
    type TxToken<'a> = QTx<'a>;
    fn receive(&mut self, _: Instant) -> Option<(QRx, QTx<'_>)> {
        let p = self.rx.pop_front()?;
        Some((QRx(p), QTx(&mut self.tx)))
    }
    fn transmit(&mut self, _: Instant) -> Option<QTx<'_>> {
        Some(QTx(&mut self.tx))
    }
    fn capabilities(&self) -> DeviceCapabilities {
        let mut c = DeviceCapabilities::default();
        c.medium = Medium::Ip;
        c.max_transmission_unit = self.mtu;
        c
    }
}

impl Host {
    /// A host at `ip` (MAC `mac`) whose default route goes to `gw` (MAC `gw_mac`), on
    /// a link of IP MTU 1500.
    pub fn new(ip: impl Into<IpAddr>, gw: impl Into<IpAddr>, mac: Mac, gw_mac: Mac) -> Host {
        Host::with_mtu(ip, gw, mac, gw_mac, 1500)
    }

    /// [`Host::new`] on a link of IP MTU `mtu`.
    pub fn with_mtu(
        ip: impl Into<IpAddr>,
        gw: impl Into<IpAddr>,
        mac: Mac,
        gw_mac: Mac,
        mtu: usize,
    ) -> Host {
        let (ip, gw) = (ip.into(), gw.into());
        let mut dev = Queue {
            rx: VecDeque::new(),
            tx: Vec::new(),
            mtu,
        };
        let mut cfg = Config::new(HardwareAddress::Ip);
        cfg.random_seed = match ip {
            IpAddr::V4(v4) => u64::from(u32::from(v4)),
            IpAddr::V6(v6) => u128::from(v6) as u64,
        };
        let mut iface = Interface::new(cfg, &mut dev, Instant::from_micros(0));
        iface.update_ip_addrs(|a| {
            a.push(Host::cidr(ip)).unwrap();
        });
        match gw {
            IpAddr::V4(gw) => iface.routes_mut().add_default_ipv4_route(gw).unwrap(),
            IpAddr::V6(gw) => iface.routes_mut().add_default_ipv6_route(gw).unwrap(),
        };
        Host {
            iface,
            dev,
            sockets: SocketSet::new(Vec::new()),
            ip,
            mac,
            gw_mac,
            misaddressed: 0,
            log: Vec::new(),
            keep_log: false,
            gone: false,
        }
    }

    /// `ip` on the link's prefix: a /24 for IPv4, a /64 for IPv6.
    fn cidr(ip: IpAddr) -> IpCidr {
        let len = if ip.is_ipv4() { 24 } else { 64 };
        IpCidr::new(IpAddress::from(ip), len)
    }

    fn socket(rx: usize, tx: usize) -> tcp::Socket<'static> {
        let mut s = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; rx]),
            tcp::SocketBuffer::new(vec![0; tx]),
        );
        s.set_nagle_enabled(false);
        s
    }

    /// A socket connecting from our `port` to `dst`.
    pub fn connect(&mut self, dst: SocketAddr, port: u16) -> SocketHandle {
        let mut s = Self::socket(256 * 1024, 256 * 1024);
        s.connect(self.iface.context(), dst, (IpAddress::from(self.ip), port))
            .unwrap();
        self.sockets.add(s)
    }

    /// Gives the host one more address (on the same link, same gateway).
    pub fn add_address(&mut self, ip: impl Into<IpAddr>) {
        let cidr = Host::cidr(ip.into());
        self.iface.update_ip_addrs(|a| {
            a.push(cidr).unwrap();
        });
    }

    /// A socket listening on our `port` of address `ip` only.
    pub fn listen_on(&mut self, ip: impl Into<IpAddr>, port: u16) -> SocketHandle {
        let mut s = Self::socket(256 * 1024, 256 * 1024);
        s.listen(smoltcp::wire::IpListenEndpoint {
            addr: Some(IpAddress::from(ip.into())),
            port,
        })
        .unwrap();
        self.sockets.add(s)
    }

    /// A socket listening on our `port` (one connection per listening socket).
    pub fn listen(&mut self, port: u16) -> SocketHandle {
        let mut s = Self::socket(256 * 1024, 256 * 1024);
        s.listen(port).unwrap();
        self.sockets.add(s)
    }

    /// A socket of this host.
    pub fn tcp(&mut self, h: SocketHandle) -> &mut tcp::Socket<'static> {
        self.sockets.get_mut::<tcp::Socket>(h)
    }

    fn poll(&mut self, now: i64) {
        self.iface
            .poll(Instant::from_micros(now), &mut self.dev, &mut self.sockets);
    }

    fn poll_at(&mut self, now: i64) -> Option<i64> {
        self.iface
            .poll_at(Instant::from_micros(now), &self.sockets)
            .map(|t| t.total_micros())
    }

    /// Frames the host sent, with their Ethernet headers.
    fn take_frames(&mut self) -> Vec<Vec<u8>> {
        if self.gone {
            self.dev.tx.clear();
        }
        let frames: Vec<Vec<u8>> = self
            .dev
            .tx
            .drain(..)
            .map(|ip| {
                let mut f = vec![0; wire::ETH_HEADER_LEN + ip.len()];
                wire::write_eth_header(&mut f, self.gw_mac, self.mac, ip[0] >> 4 == 6);
                f[wire::ETH_HEADER_LEN..].copy_from_slice(&ip);
                f
            })
            .collect();
        if self.keep_log {
            self.log.extend(frames.iter().cloned());
        }
        frames
    }

    fn deliver(&mut self, frame: &[u8]) {
        if self.gone {
            return;
        }
        if frame[0..6] != self.mac || frame.len() < wire::ETH_HEADER_LEN {
            self.misaddressed += 1;
            return;
        }
        self.dev
            .rx
            .push_back(frame[wire::ETH_HEADER_LEN..].to_vec());
    }
}

/// Says whether a frame gets through a link; it may rewrite the frame on the way.
pub type LinkFilter = Box<dyn FnMut(&mut Vec<u8>) -> bool>;

/// Two gateways, two pods, one clock.
pub struct World {
    /// Simulated time, µs.
    pub now: i64,
    /// Gateway a (the client's).
    pub a: Engine<MemSink>,
    /// Gateway b (the server's).
    pub b: Engine<MemSink>,
    /// The client pod.
    pub client: Host,
    /// The server pod.
    pub server: Host,
    /// Gateway a's resolver entries (tests make next hops unresolvable here).
    pub a_neigh: Neighbors,
    /// Gateway b's resolver entries (tests add the server pod's extra addresses here).
    pub b_neigh: Neighbors,
    /// Every frame that crossed the wire between the gateways: (from a, frame).
    pub wire_log: Vec<(bool, Vec<u8>)>,
    /// Keep `wire_log` (off by default: bulk tests move many frames).
    pub log_wire: bool,
    /// The wire between the gateways is cut: frames on it are lost.
    pub cut: bool,
    /// Frames from the client pod reach gateway a only where this says true (tests
    /// lose chosen segments with it).
    pub client_link: Option<LinkFilter>,
    /// A scripted host in gateway a's place on gateway b's `up0` (gateway a then
    /// neither sends to nor hears from b).
    pub up_peer: Option<Host>,
    /// The mesh CA (HBONE worlds).
    pub ca: Option<Ca>,
    /// The world's addresses ([`Addrs::V4`] unless [`Opts::ipv6`]).
    pub addrs: Addrs,
}

impl World {
    /// Two gateways with their tables (and identities, for HBONE), two pods, time 0.
    pub fn new(opts: Opts) -> World {
        let ips = if opts.ipv6 { Addrs::V6 } else { Addrs::V4 };
        let a_neigh: Neighbors = Default::default();
        let b_neigh: Neighbors = Default::default();
        {
            let mut a = a_neigh.lock().unwrap();
            a.insert((POD0_IFINDEX, ips.client), CLIENT_MAC);
            a.insert((UP0_IFINDEX, ips.b_up), B_UP_MAC);
            let mut b = b_neigh.lock().unwrap();
            b.insert((POD0_IFINDEX, ips.server), SERVER_MAC);
            b.insert((UP0_IFINDEX, ips.a_up), A_UP_MAC);
        }
        let mut a = engine(
            0,
            &a_neigh,
            (ips.a_pod, A_POD_MAC),
            (ips.a_up, A_UP_MAC),
            &opts,
        );
        let mut b = engine(
            1,
            &b_neigh,
            (ips.b_pod, B_POD_MAC),
            (ips.b_up, B_UP_MAC),
            &opts,
        );
        a.set_tables(1, tables_for(&ips, 0, opts.protocol, opts.policies.clone()));
        b.set_tables(1, tables_for(&ips, 1, opts.protocol, opts.policies.clone()));
        let mut mesh_ca = None;
        if opts.protocol == Protocol::Hbone {
            let ca = Ca::generate(TRUST_DOMAIN).unwrap();
            let issue = |sa: &str| {
                let id = spiffe(sa);
                let cert = ca
                    .issue(
                        &id,
                        Validity::for_duration(std::time::Duration::from_secs(3600)),
                    )
                    .unwrap();
                (id, cert)
            };
            let roots = vec![ca.root_der()];
            a.set_identities(Arc::new(IdentityStore::from_parts(
                1,
                TRUST_DOMAIN,
                roots.clone(),
                [issue("client")],
            )));
            b.set_identities(Arc::new(IdentityStore::from_parts(
                1,
                TRUST_DOMAIN,
                roots,
                [issue("server")],
            )));
            mesh_ca = Some(ca);
        }
        World {
            now: 0,
            a,
            b,
            client: Host::with_mtu(ips.client, ips.a_pod, CLIENT_MAC, A_POD_MAC, opts.pod_mtu),
            server: Host::with_mtu(ips.server, ips.b_pod, SERVER_MAC, B_POD_MAC, opts.pod_mtu),
            a_neigh,
            b_neigh,
            wire_log: Vec::new(),
            log_wire: false,
            cut: false,
            client_link: None,
            up_peer: None,
            ca: mesh_ca,
            addrs: ips,
        }
    }

    /// Moves every frame one hop and polls everything once. Returns the frames moved.
    pub fn step(&mut self) -> usize {
        let now = self.now;
        let mut moved = 0;
        self.client.poll(now);
        self.server.poll(now);
        for mut f in self.client.take_frames() {
            moved += 1;
            if let Some(pass) = self.client_link.as_mut() {
                if !pass(&mut f) {
                    continue;
                }
            }
            self.a.on_frame(POD0, &f, now, true);
        }
        for f in self.server.take_frames() {
            self.b.on_frame(POD0, &f, now, true);
            moved += 1;
        }
        for f in self.a.sink_mut(POD0).take() {
            self.client.deliver(&f);
            moved += 1;
        }
        for f in self.b.sink_mut(POD0).take() {
            self.server.deliver(&f);
            moved += 1;
        }
        if let Some(peer) = self.up_peer.as_mut() {
            peer.poll(now);
            for f in peer.take_frames() {
                self.b.on_frame(UP0, &f, now, true);
                moved += 1;
            }
            for f in self.b.sink_mut(UP0).take() {
                peer.deliver(&f);
                moved += 1;
            }
        }
        for (from_a, f) in self
            .a
            .sink_mut(UP0)
            .take()
            .into_iter()
            .map(|f| (true, f))
            .chain(self.b.sink_mut(UP0).take().into_iter().map(|f| (false, f)))
        {
            moved += 1;
            if !self.cut {
                // Frames addressed to a MAC the other gateway does not own (an ARP
                // request is broadcast) are not for its dataplane.
                let to = if from_a { B_UP_MAC } else { A_UP_MAC };
                if f[0..6] == to {
                    if from_a {
                        self.b.on_frame(UP0, &f, now, true);
                    } else {
                        self.a.on_frame(UP0, &f, now, true);
                    }
                }
            }
            if self.log_wire {
                self.wire_log.push((from_a, f));
            }
        }
        self.a.poll(now);
        self.b.poll(now);
        // Frames the polls just sent count as moving: the clock must not jump to the
        // next timer while they wait for the next step to carry them.
        for e in [&mut self.a, &mut self.b] {
            moved += e.sink_mut(POD0).in_flight() + e.sink_mut(UP0).in_flight();
        }
        moved
    }

    /// Steps until nothing moves, advancing the clock: a little per busy step, to the
    /// next timer when idle (never more than `max_jump` µs at once).
    fn advance(&mut self, moved: usize, max_jump: i64) {
        if moved > 0 {
            self.now += 10;
            return;
        }
        let now = self.now;
        let next = [
            self.a.next_wake(now),
            self.b.next_wake(now),
            self.client.poll_at(now),
            self.server.poll_at(now),
            self.up_peer.as_mut().and_then(|p| p.poll_at(now)),
        ]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(now + max_jump);
        self.now = next.clamp(now + 1, now + max_jump);
    }

    /// Steps until `cond` holds; panics with `what` after `max_us` of simulated time.
    pub fn run_until(&mut self, what: &str, max_us: i64, mut cond: impl FnMut(&mut World) -> bool) {
        let deadline = self.now + max_us;
        loop {
            if cond(self) {
                return;
            }
            assert!(
                self.now <= deadline,
                "{what}: not reached after {} ms (a: {}, b: {})",
                max_us / 1000,
                summary(self.a.counters()),
                summary(self.b.counters())
            );
            let moved = self.step();
            self.advance(moved, 10_000);
        }
    }

    /// Runs for `us` of simulated time.
    pub fn run_for(&mut self, us: i64) {
        let end = self.now + us;
        while self.now < end {
            let moved = self.step();
            self.advance(moved, (end - self.now).max(1));
        }
    }
}

/// The counters a failed wait prints.
pub fn summary(c: &Local) -> String {
    format!(
        "live {} opened {} closed {} reset {} refused {} tunnels {}/{}/{} no_flow {} late {}",
        c.live_connections,
        c.opened_connections,
        c.closed_connections,
        c.reset_connections,
        c.hbone_refused,
        c.hbone_tunnels_opened,
        c.hbone_tunnels_accepted,
        c.hbone_tunnels_closed,
        c.no_flow_resets,
        c.late_segments
    )
}

/// A deterministic byte pattern (position-dependent, so shifts and drops show).
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).rotate_left(7) as u8 ^ seed)
        .collect()
}

/// Sends what fits of `data[*sent..]`.
pub fn send_some(s: &mut tcp::Socket<'static>, data: &[u8], sent: &mut usize) {
    if *sent < data.len() && s.can_send() {
        *sent += s.send_slice(&data[*sent..]).unwrap_or(0);
    }
}

/// Receives up to `max` bytes into `into`.
pub fn recv_some(s: &mut tcp::Socket<'static>, into: &mut Vec<u8>, max: usize) {
    let mut left = max;
    while left > 0 && s.can_recv() {
        let n = s
            .recv(|b| {
                let n = b.len().min(left);
                into.extend_from_slice(&b[..n]);
                (n, n)
            })
            .unwrap_or(0);
        if n == 0 {
            break;
        }
        left -= n;
    }
}

/// Sends `up` from the client's socket `cli` and `down` from the server's socket `srv`
/// at once, both read as fast as they arrive, until both have arrived whole (or
/// `max_us` of simulated time pass: the test fails). Returns what the server and the
/// client received.
pub fn exchange(
    w: &mut World,
    (cli, srv): (SocketHandle, SocketHandle),
    up: &[u8],
    down: &[u8],
    max_us: i64,
) -> (Vec<u8>, Vec<u8>) {
    let (mut up_sent, mut down_sent) = (0, 0);
    let (mut at_server, mut at_client) = (Vec::new(), Vec::new());
    w.run_until("both directions delivered", max_us, |w| {
        send_some(w.client.tcp(cli), up, &mut up_sent);
        if w.server.tcp(srv).state() == tcp::State::Established {
            send_some(w.server.tcp(srv), down, &mut down_sent);
        }
        recv_some(w.server.tcp(srv), &mut at_server, usize::MAX);
        recv_some(w.client.tcp(cli), &mut at_client, usize::MAX);
        at_server.len() >= up.len() && at_client.len() >= down.len()
    });
    (at_server, at_client)
}

impl World {
    /// The largest frame gateway a (`from_a`) or b sent on the uplink, and how many it
    /// sent, from `wire_log` (set `log_wire`).
    pub fn largest_uplink_frame(&self, from_a: bool) -> (usize, usize) {
        self.wire_log
            .iter()
            .filter(|(a, _)| *a == from_a)
            .fold((0, 0), |(max, n), (_, f)| (max.max(f.len()), n + 1))
    }
}
