//! `xdpmesh-dataplane capture`: a pcapng of the frames the dataplane takes from and
//! puts on an interface, and optionally (`--inner`) the decrypted byte streams of its
//! HBONE tunnels as synthetic TCP packets, so Wireshark shows the outer tunnel and the
//! pod's conversation side by side.
//!
//! The kernel's packet taps never see these frames (XDP redirects them before any tap,
//! and AF_XDP transmits after them), so the dataplane copies them itself:
//!
//! - **Packet path**: while no capture runs, a worker pays one relaxed atomic load per
//!   RX batch and per transmitted frame ([`Tap::on`]). While one runs, it copies each
//!   frame of the captured interfaces into a bounded lock-free queue
//!   ([`QUEUE_RECORDS`] records; when full, frames are counted as dropped, never
//!   waited for), and, with `--inner`, each chunk of stream bytes.
//! - **Serving**: the dataplane's capture thread listens on `capture.sock` in the run
//!   directory, one capture at a time. The client sends one JSON request line; the
//!   thread answers with one JSON line, then streams the records that pass the filter
//!   (address, port) until the packet or time limit, or until the client goes away,
//!   and then turns the tap off.
//! - **File**: the client (`capture` subcommand) writes the pcapng with one interface
//!   block per captured interface (Ethernet) and one `hbone-inner` interface (raw IP)
//!   for the streams, whose synthetic packets carry the pod's addresses and ports and
//!   per-direction sequence numbers counted from 1, so TCP reassembly and the
//!   application dissectors work on them.

use std::borrow::Cow;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam::queue::ArrayQueue;
use serde::{Deserialize, Serialize};

/// Records the tap holds between the workers and the capture thread.
pub const QUEUE_RECORDS: usize = 16_384;

/// The socket's file name in the run directory.
pub const SOCKET: &str = "capture.sock";

/// One captured thing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// A frame of port `port`, received (`tx: false`) or transmitted.
    Frame {
        /// Nanoseconds since the Unix epoch.
        ts_ns: u64,
        /// Port (interface) index.
        port: u8,
        /// Transmitted by the dataplane.
        tx: bool,
        /// The frame, from the Ethernet header on.
        bytes: Vec<u8>,
    },
    /// Plaintext of an HBONE stream, from `src` to `dst` (the pod's conversation).
    Inner {
        /// Nanoseconds since the Unix epoch.
        ts_ns: u64,
        /// Sender.
        src: SocketAddr,
        /// Receiver.
        dst: SocketAddr,
        /// The bytes.
        bytes: Vec<u8>,
    },
}

/// The workers' side: whether a capture runs, of which ports, and the queue.
#[derive(Debug)]
pub struct Tap {
    on: AtomicBool,
    /// Bit `p`: port `p` is captured.
    ports: AtomicU32,
    inner: AtomicBool,
    queue: ArrayQueue<Record>,
    dropped: AtomicU64,
}

impl Default for Tap {
    fn default() -> Self {
        Tap {
            on: AtomicBool::new(false),
            ports: AtomicU32::new(0),
            inner: AtomicBool::new(false),
            queue: ArrayQueue::new(QUEUE_RECORDS),
            dropped: AtomicU64::new(0),
        }
    }
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

impl Tap {
    /// Whether a capture runs: the one check the packet path pays without one.
    #[inline]
    pub fn on(&self) -> bool {
        self.on.load(Ordering::Relaxed)
    }

    fn push(&self, r: Record) {
        if self.queue.push(r).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A frame of `port` (call only when [`Tap::on`]).
    pub fn frame(&self, port: usize, tx: bool, bytes: &[u8]) {
        if port < 32 && self.ports.load(Ordering::Relaxed) & (1 << port) != 0 {
            self.push(Record::Frame {
                ts_ns: now_ns(),
                port: port as u8,
                tx,
                bytes: bytes.to_vec(),
            });
        }
    }

    /// Stream plaintext from `src` to `dst` (call only when [`Tap::on`]).
    pub fn inner(&self, src: SocketAddr, dst: SocketAddr, bytes: &[u8]) {
        if self.inner.load(Ordering::Relaxed) && !bytes.is_empty() {
            self.push(Record::Inner {
                ts_ns: now_ns(),
                src,
                dst,
                bytes: bytes.to_vec(),
            });
        }
    }

    fn start(&self, ports: u32, inner: bool) {
        while self.queue.pop().is_some() {}
        self.dropped.store(0, Ordering::Relaxed);
        self.ports.store(ports, Ordering::Relaxed);
        self.inner.store(inner, Ordering::Relaxed);
        self.on.store(true, Ordering::Release);
    }

    fn stop(&self) {
        self.on.store(false, Ordering::Release);
        self.ports.store(0, Ordering::Relaxed);
        self.inner.store(false, Ordering::Relaxed);
        while self.queue.pop().is_some() {}
    }
}

/// What a client asks for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Request {
    /// Interfaces by name.
    pub ifaces: Vec<String>,
    /// Only frames and streams to or from this address.
    pub host: Option<IpAddr>,
    /// Only TCP to or from this port.
    pub port: Option<u16>,
    /// Also the HBONE streams' plaintext.
    pub inner: bool,
    /// Stop after this many records.
    pub packets: u64,
    /// Stop after this many seconds.
    pub seconds: f64,
}

/// The server's first answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    /// Empty when the capture runs.
    pub error: String,
    /// The dataplane's port index of each requested interface, in request order.
    pub ports: Vec<u8>,
}

/// The addresses and TCP ports of an Ethernet frame (IPv4 or IPv6 with TCP next).
fn frame_endpoints(f: &[u8]) -> Option<(IpAddr, IpAddr, u16, u16)> {
    let ethertype = u16::from_be_bytes([*f.get(12)?, *f.get(13)?]);
    let ip = f.get(14..)?;
    let (src, dst, l4) = match ethertype {
        0x0800 => {
            let ihl = usize::from(ip.first()? & 0x0f) * 4;
            if *ip.get(9)? != 6 {
                return None;
            }
            let s: [u8; 4] = ip.get(12..16)?.try_into().ok()?;
            let d: [u8; 4] = ip.get(16..20)?.try_into().ok()?;
            (IpAddr::from(s), IpAddr::from(d), ip.get(ihl..)?)
        }
        0x86dd => {
            if *ip.get(6)? != 6 {
                return None;
            }
            let s: [u8; 16] = ip.get(8..24)?.try_into().ok()?;
            let d: [u8; 16] = ip.get(24..40)?.try_into().ok()?;
            (IpAddr::from(s), IpAddr::from(d), ip.get(40..)?)
        }
        _ => return None,
    };
    let sp = u16::from_be_bytes([*l4.first()?, *l4.get(1)?]);
    let dp = u16::from_be_bytes([*l4.get(2)?, *l4.get(3)?]);
    Some((src, dst, sp, dp))
}

/// Whether `r` passes the request's address and port filter.
pub fn passes(r: &Record, req: &Request) -> bool {
    let (src, dst, sp, dp) = match r {
        Record::Frame { bytes, .. } => match frame_endpoints(bytes) {
            Some(e) => e,
            // Not TCP over IP (ARP, …): only an unfiltered capture takes it.
            None => return req.host.is_none() && req.port.is_none(),
        },
        Record::Inner { src, dst, .. } => (src.ip(), dst.ip(), src.port(), dst.port()),
    };
    req.host.is_none_or(|h| h == src || h == dst) && req.port.is_none_or(|p| p == sp || p == dp)
}

/// The records on the socket: kind u8 (0 frame, 1 inner), tx u8, port u8, pad u8,
/// ts_ns u64, length u32, for inner records the two endpoints (16-byte v6-mapped
/// address and port each, network order), then the bytes. Between our own two
/// processes, so no format of the outside world is needed.
fn encode(r: &Record, out: &mut Vec<u8>) {
    let ep = |a: &SocketAddr, out: &mut Vec<u8>| {
        let v6 = match a.ip() {
            IpAddr::V4(v4) => v4.to_ipv6_mapped(),
            IpAddr::V6(v6) => v6,
        };
        out.extend_from_slice(&v6.octets());
        out.extend_from_slice(&a.port().to_be_bytes());
    };
    match r {
        Record::Frame {
            ts_ns,
            port,
            tx,
            bytes,
        } => {
            out.extend_from_slice(&[0, u8::from(*tx), *port, 0]);
            out.extend_from_slice(&ts_ns.to_le_bytes());
            out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
            out.extend_from_slice(bytes);
        }
        Record::Inner {
            ts_ns,
            src,
            dst,
            bytes,
        } => {
            out.extend_from_slice(&[1, 0, 0, 0]);
            out.extend_from_slice(&ts_ns.to_le_bytes());
            out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
            ep(src, out);
            ep(dst, out);
            out.extend_from_slice(bytes);
        }
    }
}

fn decode(r: &mut impl Read) -> std::io::Result<Option<Record>> {
    let mut head = [0u8; 16];
    match r.read_exact(&mut head) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let ts_ns = u64::from_le_bytes(head[4..12].try_into().expect("8 bytes"));
    let len = u32::from_le_bytes(head[12..16].try_into().expect("4 bytes")) as usize;
    if len > 1 << 20 {
        return Err(std::io::Error::other(format!("record of {len} bytes")));
    }
    let ep = |r: &mut dyn Read| -> std::io::Result<SocketAddr> {
        let mut b = [0u8; 18];
        r.read_exact(&mut b)?;
        let a: [u8; 16] = b[..16].try_into().expect("16 bytes");
        let ip = Ipv6Addr::from(a).to_canonical();
        Ok(SocketAddr::new(ip, u16::from_be_bytes([b[16], b[17]])))
    };
    let rec = if head[0] == 0 {
        let mut bytes = vec![0; len];
        r.read_exact(&mut bytes)?;
        Record::Frame {
            ts_ns,
            port: head[2],
            tx: head[1] != 0,
            bytes,
        }
    } else {
        let src = ep(r)?;
        let dst = ep(r)?;
        let mut bytes = vec![0; len];
        r.read_exact(&mut bytes)?;
        Record::Inner {
            ts_ns,
            src,
            dst,
            bytes,
        }
    };
    Ok(Some(rec))
}

/// Serves captures on `run_dir/capture.sock` until `stop`; `ports` names the
/// dataplane's ports in index order. Errors serving one client end that capture only.
pub fn serve(run_dir: &Path, ports: Vec<String>, tap: Arc<Tap>, stop: Arc<AtomicBool>) {
    let path = run_dir.join(SOCKET);
    let _ = std::fs::remove_file(&path);
    let listener = match UnixListener::bind(&path) {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(path = %path.display(), %e, "capture socket not available; `capture` will not work");
            return;
        }
    };
    let _ = listener.set_nonblocking(true);
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((client, _)) => {
                let _ = client.set_nonblocking(false);
                if let Err(e) = serve_one(client, &ports, &tap, &stop) {
                    tracing::debug!(%e, "capture ended");
                }
                tap.stop();
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
    let _ = std::fs::remove_file(&path);
}

fn serve_one(
    client: UnixStream,
    ports: &[String],
    tap: &Tap,
    stop: &AtomicBool,
) -> std::io::Result<()> {
    let mut line = String::new();
    BufReader::new(client.try_clone()?).read_line(&mut line)?;
    let mut out = client;
    let answer = |out: &mut UnixStream, error: String, ports: Vec<u8>| -> std::io::Result<()> {
        let mut j = serde_json::to_vec(&Reply { error, ports }).map_err(std::io::Error::other)?;
        j.push(b'\n');
        out.write_all(&j)
    };
    let req: Request = match serde_json::from_str(&line) {
        Ok(r) => r,
        Err(e) => return answer(&mut out, format!("bad capture request: {e}"), Vec::new()),
    };
    let mut mask = 0u32;
    let mut order = Vec::with_capacity(req.ifaces.len());
    for name in &req.ifaces {
        match ports.iter().position(|p| p == name) {
            Some(i) if i < 32 => {
                mask |= 1 << i;
                order.push(i as u8);
            }
            _ => {
                return answer(
                    &mut out,
                    format!(
                        "interface {name} is not one of this dataplane's ({})",
                        ports.join(", ")
                    ),
                    Vec::new(),
                )
            }
        }
    }
    answer(&mut out, String::new(), order)?;
    tracing::info!(ifaces = ?req.ifaces, host = ?req.host, port = ?req.port, inner = req.inner, "capture started");
    tap.start(mask, req.inner);
    let deadline = Instant::now() + Duration::from_secs_f64(req.seconds.clamp(0.0, 86_400.0));
    let (mut sent, mut buf) = (0u64, Vec::new());
    while sent < req.packets && Instant::now() < deadline && !stop.load(Ordering::Relaxed) {
        buf.clear();
        while let Some(r) = tap.queue.pop() {
            if passes(&r, &req) {
                encode(&r, &mut buf);
                sent += 1;
                if sent >= req.packets {
                    break;
                }
            }
        }
        if buf.is_empty() {
            std::thread::sleep(Duration::from_millis(5));
            continue;
        }
        out.write_all(&buf)?;
    }
    tracing::info!(
        records = sent,
        dropped = tap.dropped.load(Ordering::Relaxed),
        "capture finished"
    );
    Ok(())
}

/// Per-direction sequence numbers of the synthetic TCP packets.
#[derive(Default)]
struct Synth {
    seq: std::collections::HashMap<(SocketAddr, SocketAddr), u32>,
}

impl Synth {
    /// A raw IPv4 (or IPv6) TCP packet carrying `bytes` from `src` to `dst`.
    fn packet(&mut self, src: SocketAddr, dst: SocketAddr, bytes: &[u8]) -> Vec<u8> {
        let seq = *self.seq.entry((src, dst)).or_insert(1);
        let ack = *self.seq.get(&(dst, src)).unwrap_or(&1);
        self.seq
            .insert((src, dst), seq.wrapping_add(bytes.len() as u32));
        let mut tcp = Vec::with_capacity(20 + bytes.len());
        tcp.extend_from_slice(&src.port().to_be_bytes());
        tcp.extend_from_slice(&dst.port().to_be_bytes());
        tcp.extend_from_slice(&seq.to_be_bytes());
        tcp.extend_from_slice(&ack.to_be_bytes());
        tcp.extend_from_slice(&[0x50, 0x18, 0xff, 0xff, 0, 0, 0, 0]); // PSH|ACK
        tcp.extend_from_slice(bytes);
        match (src.ip(), dst.ip()) {
            (IpAddr::V4(s), IpAddr::V4(d)) => ipv4(s, d, &tcp),
            (s, d) => {
                let v6 = |a: IpAddr| match a {
                    IpAddr::V4(v4) => v4.to_ipv6_mapped(),
                    IpAddr::V6(v6) => v6,
                };
                let mut p = vec![0x60, 0, 0, 0];
                p.extend_from_slice(&(tcp.len() as u16).to_be_bytes());
                p.extend_from_slice(&[6, 64]);
                p.extend_from_slice(&v6(s).octets());
                p.extend_from_slice(&v6(d).octets());
                p.extend_from_slice(&tcp);
                p
            }
        }
    }
}

fn ipv4(s: Ipv4Addr, d: Ipv4Addr, tcp: &[u8]) -> Vec<u8> {
    let total = (20 + tcp.len()).min(65535) as u16;
    let mut h = vec![0x45, 0];
    h.extend_from_slice(&total.to_be_bytes());
    h.extend_from_slice(&[0, 0, 0x40, 0, 64, 6, 0, 0]);
    h.extend_from_slice(&s.octets());
    h.extend_from_slice(&d.octets());
    let sum = h
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
        .sum::<u32>();
    let sum = (sum & 0xffff) + (sum >> 16);
    let sum = !(((sum & 0xffff) + (sum >> 16)) as u16);
    h[10..12].copy_from_slice(&sum.to_be_bytes());
    h.extend_from_slice(tcp);
    h
}

/// Runs a capture against the dataplane whose run directory is `run_dir` and writes
/// the pcapng to `out`. Returns how many records it wrote.
pub fn run_client(run_dir: &Path, req: &Request, out: impl Write) -> anyhow::Result<u64> {
    use anyhow::Context as _;
    use pcap_file::pcapng::blocks::enhanced_packet::{EnhancedPacketBlock, EnhancedPacketOption};
    use pcap_file::pcapng::blocks::interface_description::{
        InterfaceDescriptionBlock, InterfaceDescriptionOption,
    };
    use pcap_file::pcapng::PcapNgWriter;
    use pcap_file::DataLink;

    let path = run_dir.join(SOCKET);
    let mut sock = UnixStream::connect(&path).with_context(|| {
        format!(
            "connecting to {} (is the dataplane running, in this network namespace's run directory?)",
            path.display()
        )
    })?;
    let mut line = serde_json::to_vec(req)?;
    line.push(b'\n');
    sock.write_all(&line)?;
    let mut reader = BufReader::new(sock);
    let mut first = String::new();
    reader.read_line(&mut first)?;
    let reply: Reply = serde_json::from_str(&first).context("the dataplane's capture reply")?;
    anyhow::ensure!(reply.error.is_empty(), "{}", reply.error);
    let mut w = PcapNgWriter::new(out)?;
    for name in &req.ifaces {
        w.write_pcapng_block(InterfaceDescriptionBlock {
            linktype: DataLink::ETHERNET,
            snaplen: 0,
            options: vec![
                InterfaceDescriptionOption::IfName(Cow::Owned(name.clone())),
                InterfaceDescriptionOption::IfTsResol(9),
            ],
        })?;
    }
    let inner_if = req.ifaces.len() as u32;
    if req.inner {
        w.write_pcapng_block(InterfaceDescriptionBlock {
            linktype: DataLink::RAW,
            snaplen: 0,
            options: vec![
                InterfaceDescriptionOption::IfName(Cow::Borrowed("hbone-inner")),
                InterfaceDescriptionOption::IfTsResol(9),
            ],
        })?;
    }
    let mut synth = Synth::default();
    let mut n = 0u64;
    while let Some(r) = decode(&mut reader)? {
        let (interface_id, ts_ns, data, flags) = match r {
            Record::Frame {
                ts_ns,
                port,
                tx,
                bytes,
            } => {
                // The file's interfaces follow the request; the records name the
                // dataplane's ports.
                let id = reply.ports.iter().position(|p| *p == port).unwrap_or(0) as u32;
                (id, ts_ns, bytes, if tx { 2 } else { 1 })
            }
            Record::Inner {
                ts_ns,
                src,
                dst,
                bytes,
            } => (inner_if, ts_ns, synth.packet(src, dst, &bytes), 0),
        };
        let mut options = Vec::new();
        if flags != 0 {
            // epb_flags: direction bits 0-1 (1 inbound, 2 outbound).
            options.push(EnhancedPacketOption::Flags(flags));
        }
        w.write_pcapng_block(EnhancedPacketBlock {
            interface_id,
            timestamp: Duration::from_nanos(ts_ns),
            original_len: data.len() as u32,
            data: Cow::Owned(data),
            options,
        })?;
        n += 1;
    }
    w.into_inner().flush()?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_filters_match_addresses_and_ports() {
        let frame = {
            let mut f = vec![0u8; 14];
            f[12] = 0x08;
            let tcp = [0x9c, 0x40, 0x3a, 0xa0, 0, 0, 0, 1];
            f.extend(ipv4(
                Ipv4Addr::new(198, 18, 0, 1),
                Ipv4Addr::new(198, 18, 0, 2),
                &tcp,
            ));
            f
        };
        let recs = vec![
            Record::Frame {
                ts_ns: 5,
                port: 1,
                tx: true,
                bytes: frame.clone(),
            },
            Record::Inner {
                ts_ns: 6,
                src: "198.18.1.2:40000".parse().unwrap(),
                dst: "[fd00::2]:80".parse().unwrap(),
                bytes: b"GET / HTTP/1.1\r\n".to_vec(),
            },
        ];
        let mut buf = Vec::new();
        for r in &recs {
            encode(r, &mut buf);
        }
        let mut rd = &buf[..];
        assert_eq!(decode(&mut rd).unwrap().as_ref(), Some(&recs[0]));
        assert_eq!(decode(&mut rd).unwrap().as_ref(), Some(&recs[1]));
        assert_eq!(decode(&mut rd).unwrap(), None);
        let req = |host: Option<&str>, port: Option<u16>| Request {
            ifaces: vec![],
            host: host.map(|h| h.parse().unwrap()),
            port,
            inner: true,
            packets: 1,
            seconds: 1.0,
        };
        assert!(passes(&recs[0], &req(Some("198.18.0.2"), Some(15008))));
        assert!(!passes(&recs[0], &req(Some("198.18.0.9"), None)));
        assert!(!passes(&recs[0], &req(None, Some(80))));
        assert!(passes(&recs[1], &req(Some("fd00::2"), Some(80))));
        assert_eq!(
            frame_endpoints(&frame),
            Some((
                "198.18.0.1".parse().unwrap(),
                "198.18.0.2".parse().unwrap(),
                40000,
                15008
            ))
        );
    }

    #[test]
    fn synthetic_packets_count_sequence_numbers_per_direction() {
        let mut s = Synth::default();
        let (a, b): (SocketAddr, SocketAddr) = (
            "198.18.1.2:40000".parse().unwrap(),
            "198.18.2.2:80".parse().unwrap(),
        );
        let p1 = s.packet(a, b, b"hello");
        let p2 = s.packet(a, b, b"again");
        let p3 = s.packet(b, a, b"ok");
        let seq = |p: &[u8]| u32::from_be_bytes(p[24..28].try_into().unwrap());
        let ack = |p: &[u8]| u32::from_be_bytes(p[28..32].try_into().unwrap());
        assert_eq!((seq(&p1), seq(&p2), seq(&p3)), (1, 6, 1));
        assert_eq!(ack(&p3), 11, "acknowledges all the other side sent");
        assert_eq!(&p1[40..], b"hello");
        assert_eq!(u16::from_be_bytes([p1[2], p1[3]]), 45);
        // A valid IPv4 header checksum: the header sums to 0xffff.
        let sum: u32 = p1[..20]
            .chunks(2)
            .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
            .sum();
        assert_eq!((sum & 0xffff) + (sum >> 16), 0xffff);
    }
}
