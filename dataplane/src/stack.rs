//! smoltcp over frame sinks, connection legs, and the TCP splice.
//!
//! smoltcp runs in `Medium::Ip` with `any_ip`, so one `Interface` per worker ([`Net`])
//! answers as whatever address a diverted segment was sent to (transparent
//! termination); layer 2 is ours: the device strips nothing on receive (the engine hands
//! smoltcp the IP packet inside the RX frame, no copy) and on transmit lets smoltcp write
//! the IP packet straight into a frame of the leg's egress port ([`FrameSink`]: a UMEM
//! TX frame in production) behind an Ethernet header for the leg's next hop. [`Net`] is
//! the one place that device is built.
//!
//! # Flat per-packet cost
//!
//! smoltcp finds a packet's socket by scanning its `SocketSet`. Every connection leg
//! here has a `SocketSet` of exactly one socket, and the worker finds the leg with one
//! hash probe on the packet's 4-tuple before calling `poll_ingress_single`; egress and
//! timers are per leg too. So the cost per packet does not grow with the number of
//! connections: smoltcp never scans more than one socket.
//!
//! # The splice
//!
//! A connection is two legs: leg 0 is the one a peer opened to us (we answer as its
//! destination), leg 1 the one we opened to the destination (from the original client's
//! address). Bytes move from one leg's receive buffer straight into the other leg's send
//! buffer, only as much as fits, so a slow reader closes the writer's window: memory per
//! connection is bounded by the four socket buffers. FIN is propagated as a half-close
//! once the receive side is drained; a reset (or a failed connect) on one leg aborts the
//! other.

use std::net::SocketAddr;

use smoltcp::iface::{Interface, PollResult, SocketSet};
use smoltcp::phy::{self, Checksum, ChecksumCapabilities, DeviceCapabilities, Medium};
use smoltcp::socket::tcp;
use smoltcp::time::Instant;
use smoltcp::wire::IpListenEndpoint;

use crate::ringmem::RingSocket;
use crate::sink::FrameSink;
use crate::sockets::SocketPool;
use crate::wire::{self, FlowKey, Mac};

/// The IP MTU of a port whose interface reports none (Ethernet's).
pub const DEFAULT_IP_MTU: usize = 1500;

/// A network interface as the engine sees it.
#[derive(Debug, Clone)]
pub struct PortSpec {
    /// Name.
    pub name: String,
    /// Index.
    pub ifindex: u32,
    /// Our MAC on it.
    pub mac: Mac,
    /// Our IPv4 address on it (ARP sender), if any.
    pub ipv4: Option<std::net::Ipv4Addr>,
    /// Our IPv6 address on it (Neighbor Solicitation source), if any: the link-local
    /// one when it has one (RFC 4861's usual choice, and there whenever IPv6 is on).
    pub ipv6: Option<std::net::Ipv6Addr>,
    /// The link's IP MTU (the Ethernet payload): legs on this port advertise an MSS
    /// of this less the headers, and send segments no larger than it allows (and than
    /// the port's frames hold).
    pub mtu: usize,
    /// Whether received TCP checksums are verified or trusted (`--trust-tcp-checksum`:
    /// links to local pods only; an uplink always verifies).
    pub tcp_checksum: wire::TcpChecksum,
}

/// A device that receives at most one IP packet (the one being dispatched) and sends
/// into one port's frame sink behind an Ethernet header for the leg's next hop.
struct LegDevice<'a, S> {
    rx: Option<&'a [u8]>,
    tx: &'a mut S,
    src_mac: Mac,
    dst_mac: Mac,
    mtu: usize,
    counters: &'a mut TxCounters,
}

/// Frames the stack wrote, and packets it lost for want of a frame.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TxCounters {
    /// Frames written.
    pub packets: u64,
    /// Packets smoltcp emitted while no TX frame was free (lost; TCP retransmits).
    pub no_frame: u64,
}

/// Receive token: the packet bytes.
struct RxToken<'a>(&'a [u8]);

/// Transmit token: writes one frame.
struct TxToken<'a, S> {
    tx: &'a mut S,
    src_mac: Mac,
    dst_mac: Mac,
    counters: &'a mut TxCounters,
}

impl phy::RxToken for RxToken<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(self.0)
    }
}

impl<S: FrameSink> phy::TxToken for TxToken<'_, S> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let (src, dst) = (self.src_mac, self.dst_mac);
        let mut f = Some(f);
        let sent = self.tx.send(wire::ETH_HEADER_LEN + len, |frame| {
            let (eth, ip) = frame.split_at_mut(wire::ETH_HEADER_LEN);
            let r = (f.take().expect("called once"))(ip);
            wire::write_eth_header(eth, dst, src, ip.first().is_some_and(|b| b >> 4 == 6));
            r
        });
        match sent {
            Some(r) => {
                self.counters.packets += 1;
                r
            }
            None => {
                // `transmit()` only hands out tokens while a frame is free, but the
                // token from `receive()` (for an immediate reply) may find none: the
                // packet is built into scratch space and lost, and TCP retransmits it.
                self.counters.no_frame += 1;
                let mut scratch = vec![0u8; len];
                (f.take().expect("not yet called"))(&mut scratch)
            }
        }
    }
}

impl<S: FrameSink> phy::Device for LegDevice<'_, S> {
    type RxToken<'b>
        = RxToken<'b>
    where
        Self: 'b;
    type TxToken<'b>
        = TxToken<'b, S>
    where
        Self: 'b;

    fn receive(&mut self, _now: Instant) -> Option<(RxToken<'_>, TxToken<'_, S>)> {
        let pkt = self.rx.take()?;
        Some((
            RxToken(pkt),
            TxToken {
                tx: self.tx,
                src_mac: self.src_mac,
                dst_mac: self.dst_mac,
                counters: self.counters,
            },
        ))
    }

    fn transmit(&mut self, _now: Instant) -> Option<TxToken<'_, S>> {
        if !self.tx.has_free() {
            return None;
        }
        Some(TxToken {
            tx: self.tx,
            src_mac: self.src_mac,
            dst_mac: self.dst_mac,
            counters: self.counters,
        })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        capabilities(self.mtu)
    }
}

/// What smoltcp is told about a port. smoltcp reads a device's capabilities once, when
/// the `Interface` is made (`InterfaceInner::caps`), not per poll: that is why [`Net`]
/// has an interface per port, made with its port's MTU.
fn capabilities(mtu: usize) -> DeviceCapabilities {
    let mut caps = DeviceCapabilities::default();
    caps.medium = Medium::Ip;
    caps.max_transmission_unit = mtu;
    caps.max_burst_size = None;
    // Received checksums are verified (and drops counted) in `wire` before smoltcp
    // sees the packet; outgoing ones are computed by smoltcp.
    let mut ck = ChecksumCapabilities::default();
    ck.ipv4 = Checksum::Tx;
    ck.tcp = Checksum::Tx;
    caps.checksum = ck;
    caps
}

/// The engine's side of the network: a smoltcp interface per port and the ports' frame
/// sinks. Every leg is polled through here, so the device is built in one place.
pub struct Net<S> {
    /// One interface per port, each made with the port's MTU (see [`capabilities`]).
    ifaces: Vec<Interface>,
    /// Each port's IP MTU: the link's, capped by what its sink's frames hold.
    mtus: Vec<usize>,
    specs: Vec<PortSpec>,
    sinks: Vec<S>,
    empty: SocketSet<'static>,
    /// Freed legs' sockets, for new legs.
    pub sockets: SocketPool,
    /// What the stack transmitted.
    pub tx: TxCounters,
}

/// A leg could not be opened (smoltcp refused the endpoints).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("smoltcp refused the leg's endpoints")]
pub struct OpenError;

impl<S: FrameSink> Net<S> {
    /// A network over `ports` (their specs and sinks, in port-index order).
    pub fn new(ports: Vec<(PortSpec, S)>, now: Instant) -> Net<S> {
        let (specs, sinks): (Vec<PortSpec>, Vec<S>) = ports.into_iter().unzip();
        let mtus: Vec<usize> = specs
            .iter()
            .zip(&sinks)
            .map(|(p, s)| {
                p.mtu
                    .min(s.max_frame().saturating_sub(wire::ETH_HEADER_LEN))
            })
            .collect();
        Net {
            ifaces: mtus.iter().map(|&m| new_interface(now, m)).collect(),
            mtus,
            specs,
            sinks,
            empty: SocketSet::new(Vec::new()),
            sockets: SocketPool::default(),
            tx: TxCounters::default(),
        }
    }

    /// The spec of port `port`.
    pub fn spec(&self, port: usize) -> &PortSpec {
        &self.specs[port]
    }

    /// The port of an interface index.
    pub fn port_of(&self, ifindex: u32) -> Option<usize> {
        self.specs.iter().position(|s| s.ifindex == ifindex)
    }

    /// Port `port`'s sink.
    pub fn sink_mut(&mut self, port: usize) -> &mut S {
        &mut self.sinks[port]
    }

    /// Submits every port's queued frames.
    pub fn flush(&mut self) {
        for s in &mut self.sinks {
            s.flush();
        }
    }

    /// Whether any port has frames queued but not submitted.
    pub fn pending(&self) -> bool {
        self.sinks.iter().any(|s| s.pending() > 0)
    }

    /// Hands a received IP packet to a leg's socket. The leg learns its next hop from
    /// the frame when it has none yet.
    pub fn ingress(&mut self, leg: &mut Leg, ip: &[u8], src_mac: Mac, now: i64) {
        let dst_mac = *leg.dst_mac.get_or_insert(src_mac);
        leg.pages.touch();
        let queued = leg.socket_ref().recv_queue();
        let mut dev = LegDevice {
            rx: Some(ip),
            tx: &mut self.sinks[leg.port],
            src_mac: self.specs[leg.port].mac,
            dst_mac,
            mtu: self.mtus[leg.port],
            counters: &mut self.tx,
        };
        let (set, _) = leg.sock.set_mut();
        self.ifaces[leg.port].poll_ingress_single(Instant::from_micros(now), &mut dev, set);
        // Ingress never dequeues: what the receive queue grew by is what smoltcp took in
        // order (a hole filled included). Less after a reset, which empties it.
        let taken = leg.socket_ref().recv_queue().saturating_sub(queued);
        leg.rx.segment(ip, taken);
    }

    /// One sweep of a leg ([`RELEASE_SWEEP_US`]): a leg not used since the last sweep
    /// gives back the pages of its send buffer if empty and of its receive buffer if
    /// empty with no out-of-order data in it ([`RxEdge`]). Returns the buffers
    /// released. A leg is released once per idle spell: a release costs a syscall, and
    /// each page written again afterwards a page fault.
    pub fn release_idle(&mut self, leg: &mut Leg) -> usize {
        let p = &mut leg.pages;
        if std::mem::take(&mut p.used) || !p.resident {
            return 0;
        }
        let rx = leg.rx.in_order();
        let n = leg.sock.release(rx);
        // What could not be released is tried again at the next sweep.
        let s = leg.sock.socket_ref();
        leg.pages.resident = !rx || s.recv_queue() > 0 || s.send_queue() > 0;
        n
    }

    /// Transmits what a leg's socket has queued (nothing while its next hop is being
    /// resolved). Returns when smoltcp next wants the leg polled.
    pub fn egress(&mut self, leg: &mut Leg, now: i64) -> Option<i64> {
        let dst_mac = leg.dst_mac?;
        let ts = Instant::from_micros(now);
        let mut dev = LegDevice {
            rx: None,
            tx: &mut self.sinks[leg.port],
            src_mac: self.specs[leg.port].mac,
            dst_mac,
            mtu: self.mtus[leg.port],
            counters: &mut self.tx,
        };
        let iface = &mut self.ifaces[leg.port];
        let (set, _) = leg.sock.set_mut();
        while iface.poll_egress(ts, &mut dev, set) == PollResult::SocketStateChanged {}
        iface.poll_at(ts, set).map(|at| at.total_micros().max(now))
    }

    /// Lets smoltcp answer a segment no connection owns (it replies with a RST unless
    /// the segment is one).
    pub fn reset(&mut self, port: usize, dst_mac: Mac, ip: &[u8], now: i64) {
        let mut dev = LegDevice {
            rx: Some(ip),
            tx: &mut self.sinks[port],
            src_mac: self.specs[port].mac,
            dst_mac,
            mtu: self.mtus[port],
            counters: &mut self.tx,
        };
        self.ifaces[port].poll_ingress_single(Instant::from_micros(now), &mut dev, &mut self.empty);
    }

    /// Answers a retransmitted FIN of a freed connection with the ACK its TIME-WAIT would
    /// have sent (RFC 9293, 3.10.7.4: a FIN in TIME-WAIT is acknowledged): our sequence
    /// number is the one the peer acknowledges, our acknowledgement is past its FIN, and
    /// its timestamp is echoed. A leg is freed as soon as it reaches TIME-WAIT, so
    /// without this a peer whose ACK of its FIN was lost retransmits until the key's
    /// linger ends and is then reset. Returns whether `ip` was such a FIN (IPv4 or IPv6,
    /// ACK and FIN set, no SYN or RST) and an ACK left.
    pub fn ack_late_fin(&mut self, port: usize, dst_mac: Mac, ip: &[u8]) -> bool {
        use smoltcp::wire::{
            IpAddress, IpProtocol, IpRepr, Ipv4Packet, Ipv6Packet, TcpControl, TcpPacket, TcpRepr,
            TcpTimestampRepr,
        };
        // `ip` was classified by `wire::parse_tcp_frame`: a TCP segment without IPv6
        // extension headers or IPv4 fragmentation.
        let (src, dst, payload) = match ip.first().map(|b| b >> 4) {
            Some(4) => {
                let Ok(p) = Ipv4Packet::new_checked(ip) else {
                    return false;
                };
                let (s, d) = (p.src_addr(), p.dst_addr());
                (IpAddress::Ipv4(s), IpAddress::Ipv4(d), p.payload())
            }
            Some(6) => {
                let Ok(p) = Ipv6Packet::new_checked(ip) else {
                    return false;
                };
                let (s, d) = (p.src_addr(), p.dst_addr());
                (IpAddress::Ipv6(s), IpAddress::Ipv6(d), p.payload())
            }
            _ => return false,
        };
        let Ok(t) = TcpPacket::new_checked(payload) else {
            return false;
        };
        let caps = ChecksumCapabilities::ignored();
        let Ok(seg) = TcpRepr::parse(&t, &src, &dst, &caps) else {
            return false;
        };
        if seg.control != TcpControl::Fin || !t.ack() {
            return false;
        }
        let Some(ack_of_ours) = seg.ack_number else {
            return false;
        };
        let reply = TcpRepr {
            src_port: seg.dst_port,
            dst_port: seg.src_port,
            control: TcpControl::None,
            seq_number: ack_of_ours,
            ack_number: Some(seg.seq_number + seg.payload.len() + 1),
            window_len: 0,
            window_scale: None,
            max_seg_size: None,
            sack_permitted: false,
            sack_ranges: [None; 3],
            timestamp: seg
                .timestamp
                .map(|ts| TcpTimestampRepr::new(ts.tsecr, ts.tsval)),
            payload: &[],
        };
        let ip_repr = IpRepr::new(dst, src, IpProtocol::Tcp, reply.buffer_len(), 64);
        let src_mac = self.specs[port].mac;
        let len = wire::ETH_HEADER_LEN + ip_repr.buffer_len();
        let ipv6 = matches!(ip_repr, IpRepr::Ipv6(_));
        let sent = self.sinks[port].send(len, |f| {
            let (eth, rest) = f.split_at_mut(wire::ETH_HEADER_LEN);
            wire::write_eth_header(eth, dst_mac, src_mac, ipv6);
            let full = ChecksumCapabilities::default();
            ip_repr.emit(&mut *rest, &full);
            let mut tcp = TcpPacket::new_unchecked(&mut rest[ip_repr.header_len()..]);
            reply.emit(&mut tcp, &dst, &src, &full);
        });
        if sent.is_some() {
            self.tx.packets += 1;
        } else {
            self.tx.no_frame += 1;
        }
        sent.is_some()
    }

    /// Gives a freed leg's socket back to the pool ([`SocketPool::put`]).
    pub fn recycle(&mut self, leg: Leg) {
        self.sockets.put(leg.sock);
    }

    /// A leg that answers as `local` to the SYN about to be handed to it (transparent
    /// termination: `local` is the connection's original destination).
    pub fn accept(
        &mut self,
        buffers: Buffers,
        port: usize,
        src_mac: Mac,
        key: FlowKey,
    ) -> Result<Leg, OpenError> {
        let mut leg = Leg::new(self.sockets.take(buffers), port, Some(src_mac), key);
        let local = key.dst;
        leg.socket()
            .listen(IpListenEndpoint {
                addr: Some(local.ip().into()),
                port: local.port(),
            })
            .map_err(|_| OpenError)?;
        Ok(leg)
    }

    /// A leg connecting from `local` to `remote` through `port` (next hop `dst_mac`,
    /// `None` while it is being resolved: the SYN leaves once it is known).
    pub fn connect(
        &mut self,
        buffers: Buffers,
        port: usize,
        dst_mac: Option<Mac>,
        remote: SocketAddr,
        local: SocketAddr,
    ) -> Result<Leg, OpenError> {
        let key = FlowKey {
            src: remote,
            dst: local,
        };
        let mut leg = Leg::new(self.sockets.take(buffers), port, dst_mac, key);
        let cx = self.ifaces[port].context();
        leg.socket()
            .connect(cx, remote, local)
            .map_err(|_| OpenError)?;
        Ok(leg)
    }
}

/// Builds an interface of IP MTU `mtu`: `Medium::Ip`, any-IP, a default route so that
/// smoltcp considers every destination reachable (routing is the worker's job).
pub fn new_interface(now: Instant, mtu: usize) -> Interface {
    use smoltcp::iface::Config;
    use smoltcp::wire::{HardwareAddress, IpAddress, IpCidr, Ipv4Address, Ipv6Address};

    struct Null(usize);
    impl phy::Device for Null {
        type RxToken<'a> = RxToken<'a>;
        type TxToken<'a> = NullTx;
        fn receive(&mut self, _: Instant) -> Option<(RxToken<'_>, NullTx)> {
            None
        }
        fn transmit(&mut self, _: Instant) -> Option<NullTx> {
            None
        }
        fn capabilities(&self) -> DeviceCapabilities {
            capabilities(self.0)
        }
    }
    struct NullTx;
    impl phy::TxToken for NullTx {
        fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
            f(&mut vec![0; len])
        }
    }

    let mut cfg = Config::new(HardwareAddress::Ip);
    cfg.random_seed = u64::from(std::process::id()) ^ 0x9e37_79b9_7f4a_7c15;
    let mut iface = Interface::new(cfg, &mut Null(mtu), now);
    // Placeholder own addresses (never used as sources: every socket binds explicitly).
    let v4 = Ipv4Address::new(198, 19, 255, 254);
    let v6 = Ipv6Address::new(0xfd00, 0, 0, 0, 0, 0, 0, 1);
    iface.update_ip_addrs(|a| {
        let _ = a.push(IpCidr::new(IpAddress::Ipv4(v4), 32));
        let _ = a.push(IpCidr::new(IpAddress::Ipv6(v6), 128));
    });
    let _ = iface.routes_mut().add_default_ipv4_route(v4);
    let _ = iface.routes_mut().add_default_ipv6_route(v6);
    iface.set_any_ip(true);
    iface
}

/// Socket buffer sizes.
#[derive(Debug, Clone, Copy)]
pub struct Buffers {
    /// Receive buffer per leg (the advertised window).
    pub rx: usize,
    /// Send buffer per leg.
    pub tx: usize,
}

impl Buffers {
    /// The default for links of IP MTU up to `mtu`: 64 KiB, or four full segments if
    /// that is more. A receive window of a few segments keeps a jumbo link's pipe
    /// full (Linux also caps its segments to half the largest window it has seen, so a
    /// 64 KiB window would halve a 64 KiB MTU's segments); the buffers are
    /// [`crate::ringmem`] slots, so a page no byte crossed is never resident, and an
    /// idle leg gives back the ones that were.
    pub fn for_mtu(mtu: usize) -> Buffers {
        let four = 4 * mtu.saturating_sub(40);
        let d = Buffers::default();
        Buffers {
            rx: d.rx.max(four),
            tx: d.tx.max(four),
        }
    }
}

impl Default for Buffers {
    fn default() -> Self {
        Buffers {
            rx: 64 * 1024,
            tx: 64 * 1024,
        }
    }
}

/// What we have done to end a leg.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// Nothing: the leg is open as far as we are concerned.
    Open,
    /// We sent our FIN (a half-close, see [`pump`]).
    FinSent,
    /// We aborted it (a RST left or will leave).
    Aborted,
    /// It closed under us (reset by its peer, or its connect failed), and we noticed.
    PeerReset,
}

/// One TCP leg: a connection to a pod, a workload or another gateway.
pub struct Leg {
    /// The socket, in a set of its own (see the module docs), buffers in
    /// [`crate::ringmem`] slots.
    sock: RingSocket,
    /// Whether the buffers were used lately and may have resident pages.
    pages: Pages,
    /// Where the peer's data stands against what smoltcp took in order.
    rx: RxEdge,
    /// Egress port index.
    pub port: usize,
    /// Next hop; `None` while it is being resolved.
    pub dst_mac: Option<Mac>,
    /// Key of the packets that arrive for this leg.
    pub key: FlowKey,
    ending: Ending,
    /// The peer's FIN was seen on this leg.
    peer_fin_seen: bool,
    /// A reset of this leg was already passed on to the other leg (or was ours).
    reset_seen: bool,
}

impl Leg {
    /// Creates a leg on a new or reused socket ([`SocketPool::take`]).
    fn new(sock: RingSocket, port: usize, dst_mac: Option<Mac>, key: FlowKey) -> Leg {
        Leg {
            sock,
            pages: Pages::default(),
            rx: RxEdge::default(),
            port,
            dst_mac,
            key,
            ending: Ending::Open,
            peer_fin_seen: false,
            reset_seen: false,
        }
    }

    /// The socket.
    pub fn socket(&mut self) -> &mut tcp::Socket<'static> {
        self.pages.touch();
        self.sock.socket()
    }

    /// The socket, read-only.
    pub fn socket_ref(&self) -> &tcp::Socket<'static> {
        self.sock.socket_ref()
    }

    /// Bytes of the leg's buffers resident now (tests).
    pub fn resident(&self) -> usize {
        self.sock.resident()
    }

    /// The socket's state.
    pub fn state(&self) -> tcp::State {
        self.socket_ref().state()
    }

    /// What we have done to end the leg.
    pub fn ending(&self) -> Ending {
        self.ending
    }

    /// Whether we ended the leg (FIN or abort) or saw it end under us.
    pub fn closed_by_us(&self) -> bool {
        self.ending != Ending::Open
    }

    /// Sends our FIN. Also turns off delayed ACKs for the rest of the leg's life: a leg
    /// is freed as soon as it reaches TIME-WAIT (see [`leg_done`]), so the ACK of the
    /// peer's FIN must leave in the same poll, not 10 ms later from a socket that no
    /// longer exists. Without this the peer retransmitted its FIN until the key's
    /// linger expired and was then reset.
    pub fn close(&mut self) {
        let s = self.socket();
        s.set_ack_delay(None);
        s.close();
        self.ending = Ending::FinSent;
    }

    /// Aborts the leg (smoltcp sends one RST).
    pub fn abort(&mut self) {
        self.socket().abort();
        self.ending = Ending::Aborted;
        self.reset_seen = true;
    }

    /// Aborts the leg as a failure of its own (an unresolvable next hop): unlike
    /// [`Leg::abort`], the splice then treats it like a reset from its peer and passes
    /// it on to the other leg.
    pub fn fail(&mut self) {
        self.socket().abort();
    }

    /// Records that the leg closed under us (a reset from its peer, a failed connect).
    pub fn mark_peer_reset(&mut self) {
        if self.ending == Ending::Open {
            self.ending = Ending::PeerReset;
        }
    }

    /// Whether the leg's peer has sent its FIN and we read everything before it.
    pub fn peer_eof(&self) -> bool {
        let s = self.socket_ref();
        peer_finished(s) && s.recv_queue() == 0
    }

    /// Room left in the send buffer (0 once the leg can no longer send).
    pub fn send_room(&self) -> usize {
        let s = self.socket_ref();
        if s.may_send() {
            s.send_capacity() - s.send_queue()
        } else {
            0
        }
    }

    /// Drops whatever the peer sent that nobody can carry any more (as after
    /// `shutdown(SHUT_RD)`), so its window stays open and its FIN is accepted.
    pub fn discard_received(&mut self) {
        let s = self.socket();
        while s.can_recv() {
            if s.recv(|b| (b.len(), ())).is_err() {
                break;
            }
        }
    }

    /// A one-line description for `stats` (addresses and TCP state).
    pub fn describe(&self) -> String {
        let mark = match (self.dst_mac, self.ending) {
            (None, _) => ", resolving",
            (_, Ending::Open) => "",
            (_, _) => ", closed",
        };
        format!(
            "{} -> {} [{:?}{mark}]",
            self.key.src,
            self.key.dst,
            self.state()
        )
    }
}

/// How often the engine sweeps its legs for idle buffers ([`Net::release_idle`]): a
/// leg unused for a whole period gives its buffers' pages back, so an idle leg holds
/// none after 250 to 500 ms (Linux frees a socket's buffers as soon as they are read).
pub const RELEASE_SWEEP_US: i64 = 250_000;

/// A leg's buffer use, for [`Net::release_idle`].
#[derive(Debug, Clone, Copy)]
struct Pages {
    /// Used since the last sweep.
    used: bool,
    /// May have resident pages.
    resident: bool,
}

impl Default for Pages {
    fn default() -> Self {
        Pages {
            used: true,
            resident: true,
        }
    }
}

impl Pages {
    fn touch(&mut self) {
        self.used = true;
        self.resident = true;
    }
}

/// The peer's sequence space on one leg: the next byte smoltcp has not taken in order,
/// and the end of the furthest data received. smoltcp keeps a segment that arrives
/// beyond a hole in the free part of its receive ring (its assembler records where),
/// and nothing public says whether it holds one; a receive buffer may be released only
/// when no data beyond the in-order point ever arrived, which this tracks from the
/// segments the leg is handed. Conservative: a segment smoltcp dropped (outside its
/// window, say) counts as held until in-order data passes its end.
#[derive(Debug, Default, Clone, Copy)]
pub struct RxEdge {
    /// The next sequence number in order (`None` before the peer's SYN).
    next: Option<u32>,
    /// The end of the furthest data seen.
    edge: u32,
}

impl RxEdge {
    /// Accounts for segment `ip` (a TCP segment classified by
    /// `wire::parse_tcp_frame`), of which smoltcp took `taken` bytes in order.
    fn segment(&mut self, ip: &[u8], taken: usize) {
        if let Some((seq, len, syn)) = seq_span(ip) {
            if syn && self.next.is_none() {
                // SYN or SYN-ACK: the peer's data starts after it.
                let start = seq.wrapping_add(1);
                self.next = Some(start);
                self.edge = start.wrapping_add(len);
            } else if let Some(next) = self.next {
                let end = seq.wrapping_add(len);
                // Within 2^31 ahead (windows are at most 1 GiB): beyond the furthest.
                if len > 0 && (end.wrapping_sub(self.edge.max_seq(next)) as i32) > 0 {
                    self.edge = end;
                }
            }
        }
        if let Some(next) = self.next.as_mut() {
            *next = next.wrapping_add(taken as u32);
        }
    }

    /// Whether no data beyond the in-order point is held (so the receive ring holds
    /// exactly its queue).
    pub fn in_order(&self) -> bool {
        self.next
            .is_some_and(|n| (self.edge.wrapping_sub(n) as i32) <= 0)
    }
}

/// The later of two sequence numbers (RFC 9293's modular comparison).
trait MaxSeq {
    fn max_seq(self, other: u32) -> u32;
}

impl MaxSeq for u32 {
    fn max_seq(self, other: u32) -> u32 {
        if (self.wrapping_sub(other) as i32) >= 0 {
            self
        } else {
            other
        }
    }
}

/// A TCP segment's sequence number, payload length and SYN flag.
fn seq_span(ip: &[u8]) -> Option<(u32, u32, bool)> {
    use smoltcp::wire::{Ipv4Packet, Ipv6Packet, TcpPacket};
    let tcp = match ip.first().map(|b| b >> 4) {
        Some(4) => Ipv4Packet::new_checked(ip).ok()?.payload(),
        Some(6) => Ipv6Packet::new_checked(ip).ok()?.payload(),
        _ => return None,
    };
    let t = TcpPacket::new_checked(tcp).ok()?;
    let len = tcp.len().saturating_sub(usize::from(t.header_len()));
    Some((t.seq_number().0 as u32, len as u32, t.syn()))
}

/// Outcome of a splice step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pumped {
    /// Bytes moved leg 0 → leg 1.
    pub down_to_up: usize,
    /// Bytes moved leg 1 → leg 0.
    pub up_to_down: usize,
    /// A leg was reset/failed and the other was aborted.
    pub reset: bool,
}

fn move_bytes(from: &mut tcp::Socket<'static>, to: &mut tcp::Socket<'static>) -> usize {
    let mut moved = 0;
    while from.can_recv() && to.can_send() {
        let n = from
            .recv(|buf| {
                let n = to.send_slice(buf).unwrap_or(0);
                (n, n)
            })
            .unwrap_or(0);
        if n == 0 {
            break;
        }
        moved += n;
    }
    moved
}

/// Whether the peer of `s` has sent its FIN (no more data will arrive).
fn peer_finished(s: &tcp::Socket<'static>) -> bool {
    use tcp::State::*;
    matches!(s.state(), CloseWait | LastAck | Closing | TimeWait)
}

/// Moves bytes both ways, propagates half-closes and resets.
pub fn pump(legs: &mut [Leg; 2]) -> Pumped {
    let mut out = Pumped::default();
    let [l0, l1] = legs;
    {
        let s0 = l0.socket();
        let s1 = l1.socket();
        out.down_to_up = move_bytes(s0, s1);
        out.up_to_down = move_bytes(s1, s0);
    }
    for l in [&mut *l0, &mut *l1] {
        if peer_finished(l.socket_ref()) {
            l.peer_fin_seen = true;
        }
    }
    // A leg that closed without us closing it was reset or timed out (a failed connect
    // included): abort the other one so the application sees the reset.
    out.reset = propagate_reset(l0, l1) || propagate_reset(l1, l0);
    if !out.reset {
        // Half-close: once a leg's peer finished and everything it sent was forwarded,
        // send our FIN on the other leg (as soon as that leg can carry one).
        propagate_fin(l0, l1);
        propagate_fin(l1, l0);
    }
    out
}

/// Passes a reset of leg `a` on to leg `b`. `a` was reset when it is CLOSED and we did
/// not close it, or when we had only half-closed it (our FIN sent, the peer's not seen):
/// a CLOSED leg then means its peer answered with a reset, and `b`'s peer, still
/// waiting for our FIN or for data, must learn of it now rather than after the
/// half-dead limit.
fn propagate_reset(a: &mut Leg, b: &mut Leg) -> bool {
    if a.reset_seen || a.state() != tcp::State::Closed {
        return false;
    }
    let half_closed_by_us = a.ending == Ending::FinSent && !a.peer_fin_seen;
    if a.closed_by_us() && !half_closed_by_us {
        return false;
    }
    a.reset_seen = true;
    a.mark_peer_reset();
    // Also when we already sent our FIN on `b`: the half-closed direction is still open
    // until `b` finishes, and its peer must learn of the reset. Our abort, not a reset
    // from `b`'s peer: nothing to pass back.
    if !leg_done(b) {
        b.abort();
    }
    true
}

/// Whether a leg has nothing left to send: TIME-WAIT (the ACK of the peer's FIN left
/// in the same poll, see [`Leg::close`]), or CLOSED once smoltcp has forgotten the peer.
/// An aborted socket keeps its peer until its one RST has been transmitted; with the
/// TX ring full that waits for the next poll, and freeing the leg earlier lost the
/// RST: the peer kept a connection the gateway had already forgotten. A leg with no
/// next hop can send nothing, so it is done as soon as it is CLOSED.
pub fn leg_done(l: &Leg) -> bool {
    let s = l.socket_ref();
    match s.state() {
        tcp::State::TimeWait => true,
        tcp::State::Closed => s.remote_endpoint().is_none() || l.dst_mac.is_none(),
        _ => false,
    }
}

fn propagate_fin(a: &mut Leg, b: &mut Leg) {
    if a.peer_eof() && !b.closed_by_us() && b.socket_ref().may_send() {
        b.close();
    }
}

/// Whether both legs are finished (closed or in TIME-WAIT) so the connection can be
/// freed. TIME-WAIT is not kept: both FINs were exchanged and acknowledged by us; a
/// retransmitted FIN from the peer after this gets a reset, which its kernel ignores
/// for a socket already closed.
pub fn finished(legs: &[Leg; 2]) -> bool {
    legs.iter().all(leg_done)
}

/// Whether exactly one leg is finished: the connection is half-dead and lives only
/// until the other leg's peer closes (bounded by the engine's half-dead limit).
pub fn half_finished(legs: &[Leg; 2]) -> bool {
    leg_done(&legs[0]) != leg_done(&legs[1])
}

/// Aborts every leg that is not finished yet.
pub fn abort(legs: &mut [Leg; 2]) {
    for l in legs {
        if !leg_done(l) {
            l.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Buffers;

    #[test]
    fn default_buffers_hold_four_segments_of_a_jumbo_link() {
        for (mtu, want) in [(1500, 65_536), (9000, 65_536), (65_535, 261_980)] {
            let b = Buffers::for_mtu(mtu);
            assert_eq!((b.rx, b.tx), (want, want), "mtu {mtu}");
        }
    }
}
