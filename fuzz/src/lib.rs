//! Fuzz targets for xdpmesh's parsers of untrusted (or not fully trusted) input.
//!
//! Each target is a plain function `fn(&[u8])` that panics when a property fails, so
//! the same code runs under AFL++ (`src/bin/<target>.rs`, built by `cargo afl build`)
//! and as a plain `cargo test` that replays the committed corpora (`tests/replay.rs`).
//!
//! | target     | code under test                                                        |
//! |------------|------------------------------------------------------------------------|
//! | `wire`     | `xdpmesh_dataplane::wire::parse_tcp_frame`, `arp_sender`               |
//! | `tables`   | `xdpmesh_shm::Tables::decode` / `encode`                               |
//! | `connect`  | hbone `validate_request`, `:authority` parsing, `authority_string`,    |
//! |            | the CONNECT request/headers the client builds and the server reads     |
//! | `manifest` | `xdpmesh_control::certs::Manifest` (the identity manifest), `SpiffeId` |
//! | `config`   | `xdpmesh_control::config::MeshConfig::from_str_named`, `tables::build` |

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;

/// The dataplane's frame classifier (its own crate, so no AF_XDP or BPF library is
/// built here).
pub use xdpmesh_wire as wire_src;

// ---------------------------------------------------------------------------------------
// A tiny cursor over the fuzz input, for the structured halves of the targets.

struct Cursor<'a>(&'a [u8]);

impl Cursor<'_> {
    fn u8(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }
    fn bytes<const N: usize>(&mut self) -> [u8; N] {
        let mut b = [0u8; N];
        for x in &mut b {
            *x = self.u8();
        }
        b
    }
    fn u16(&mut self) -> u16 {
        u16::from_be_bytes(self.bytes())
    }
    fn u32(&mut self) -> u32 {
        u32::from_be_bytes(self.bytes())
    }
    fn bool(&mut self) -> bool {
        self.u8() & 1 == 1
    }
    fn ip(&mut self) -> IpAddr {
        if self.bool() {
            IpAddr::V6(Ipv6Addr::from(self.bytes::<16>()))
        } else {
            IpAddr::V4(Ipv4Addr::from(self.bytes::<4>()))
        }
    }
    /// A short string (any UTF-8 the input spells, lossily).
    fn string(&mut self) -> String {
        let n = usize::from(self.u8() % 24).min(self.0.len());
        let (s, rest) = self.0.split_at(n);
        self.0 = rest;
        String::from_utf8_lossy(s).into_owned()
    }
    fn rest(&mut self) -> &[u8] {
        std::mem::take(&mut self.0)
    }
}

// ---------------------------------------------------------------------------------------
// wire

/// `wire`: Ethernet frame classification.
///
/// * `parse_tcp_frame` and `arp_sender` never panic on any bytes.
/// * An accepted frame is consistent: IP header at 14, `ip_len` within the frame and at
///   least the IP + TCP headers, the address family that of the EtherType, the source
///   MAC the frame's; cutting the trailing padding (`frame[..14 + ip_len]`) parses the
///   same; re-building it from the parsed key and flags with smoltcp's emitters and
///   `write_eth_header` parses back to the same key and flags.
/// * Round trip: a frame built from the input's bytes (addresses, ports, flags, payload)
///   with `write_eth_header` + smoltcp `Ipv4Repr`/`Ipv6Repr`/`TcpRepr::emit` parses back
///   to exactly that source MAC, key and flags.
pub fn wire(data: &[u8]) {
    use wire_src::{parse_tcp_frame, ETHERTYPE_IPV4, ETHERTYPE_IPV6};
    let _ = wire_src::arp_sender(data);
    if let Ok(f) = parse_tcp_frame(data) {
        assert_eq!(f.ip_offset, 14);
        let ethertype = u16::from_be_bytes([data[12], data[13]]);
        let (v6, min_ip) = match ethertype {
            ETHERTYPE_IPV4 => (false, 20 + 20),
            ETHERTYPE_IPV6 => (true, 40 + 20),
            other => panic!("accepted EtherType {other:#06x}"),
        };
        assert!(f.ip_len >= min_ip, "ip_len {} below headers", f.ip_len);
        assert!(
            14 + f.ip_len <= data.len(),
            "ip_len {} beyond the frame",
            f.ip_len
        );
        assert_eq!(f.key.src.is_ipv6(), v6);
        assert_eq!(f.key.dst.is_ipv6(), v6);
        assert_eq!(&f.src_mac[..], &data[6..12]);
        assert_eq!(
            parse_tcp_frame(&data[..14 + f.ip_len]),
            Ok(f),
            "padding changed the parse"
        );
        if let Some(control) = control_of(f.flags) {
            let rebuilt = build_frame(
                [0x02, 0, 0, 0, 0, 1],
                f.src_mac,
                f.key.src,
                f.key.dst,
                control,
                f.flags.ack,
                b"",
            );
            let g = parse_tcp_frame(&rebuilt).expect("re-emitted frame parses");
            assert_eq!((g.src_mac, g.key, g.flags), (f.src_mac, f.key, f.flags));
        }
    }

    // Structured round trip.
    let mut c = Cursor(data);
    let sel = c.u8();
    let src_mac = c.bytes::<6>();
    let (src_ip, dst_ip) = if sel & 1 == 1 {
        (
            IpAddr::V6(Ipv6Addr::from(c.bytes::<16>())),
            IpAddr::V6(Ipv6Addr::from(c.bytes::<16>())),
        )
    } else {
        (
            IpAddr::V4(Ipv4Addr::from(c.bytes::<4>())),
            IpAddr::V4(Ipv4Addr::from(c.bytes::<4>())),
        )
    };
    let src = SocketAddr::new(src_ip, c.u16());
    let dst = SocketAddr::new(dst_ip, c.u16());
    let control = match (sel >> 1) & 3 {
        0 => smoltcp::wire::TcpControl::None,
        1 => smoltcp::wire::TcpControl::Syn,
        2 => smoltcp::wire::TcpControl::Fin,
        _ => smoltcp::wire::TcpControl::Rst,
    };
    let ack = sel & 8 != 0;
    let payload = c.rest();
    let payload = &payload[..payload.len().min(1400)];
    let frame = build_frame(
        [0x02, 0, 0, 0, 0, 9],
        src_mac,
        src,
        dst,
        control,
        ack,
        payload,
    );
    let f = parse_tcp_frame(&frame).expect("a frame built by the emitters parses");
    assert_eq!(f.src_mac, src_mac);
    assert_eq!((f.key.src, f.key.dst), (src, dst));
    assert_eq!(f.flags.syn, control == smoltcp::wire::TcpControl::Syn);
    assert_eq!(f.flags.fin, control == smoltcp::wire::TcpControl::Fin);
    assert_eq!(f.flags.rst, control == smoltcp::wire::TcpControl::Rst);
    assert_eq!(f.flags.ack, ack);
    assert_eq!(f.ip_len, frame.len() - 14);
    assert_eq!(f.key.reversed().reversed(), f.key);
    assert_eq!(f.key.owner_hash(), f.key.reversed().owner_hash());
}

/// The single smoltcp control flag that produces these flags, if there is one.
fn control_of(f: wire_src::TcpFlags) -> Option<smoltcp::wire::TcpControl> {
    use smoltcp::wire::TcpControl;
    match (f.syn, f.fin, f.rst) {
        (false, false, false) => Some(TcpControl::None),
        (true, false, false) => Some(TcpControl::Syn),
        (false, true, false) => Some(TcpControl::Fin),
        (false, false, true) => Some(TcpControl::Rst),
        _ => None, // SYN+FIN and friends: no TcpRepr spells them
    }
}

/// Ethernet + IP + TCP built with the dataplane's and smoltcp's writers (also used by
/// `tests/seeds.rs` to write the seed corpus).
#[doc(hidden)]
pub fn build_frame(
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    src: SocketAddr,
    dst: SocketAddr,
    control: smoltcp::wire::TcpControl,
    ack: bool,
    payload: &[u8],
) -> Vec<u8> {
    use smoltcp::phy::ChecksumCapabilities;
    use smoltcp::wire::{
        IpAddress, IpProtocol, Ipv4Packet, Ipv4Repr, Ipv6Packet, Ipv6Repr, TcpPacket, TcpRepr,
        TcpSeqNumber,
    };
    let tcp = TcpRepr {
        src_port: src.port(),
        dst_port: dst.port(),
        control,
        seq_number: TcpSeqNumber(1),
        ack_number: ack.then_some(TcpSeqNumber(7)),
        window_len: 64240,
        window_scale: None,
        max_seg_size: None,
        sack_permitted: false,
        sack_ranges: [None; 3],
        timestamp: None,
        payload,
    };
    let (v6, ip_hdr) = match (src.ip(), dst.ip()) {
        (IpAddr::V4(_), IpAddr::V4(_)) => (false, 20),
        (IpAddr::V6(_), IpAddr::V6(_)) => (true, 40),
        _ => unreachable!("one family per frame"),
    };
    let mut buf = vec![0u8; 14 + ip_hdr + tcp.buffer_len()];
    wire_src::write_eth_header(&mut buf, dst_mac, src_mac, v6);
    let caps = ChecksumCapabilities::default();
    let (s, d): (IpAddress, IpAddress) = (src.ip().into(), dst.ip().into());
    match (src.ip(), dst.ip()) {
        (IpAddr::V4(s4), IpAddr::V4(d4)) => {
            let repr = Ipv4Repr {
                src_addr: s4,
                dst_addr: d4,
                next_header: IpProtocol::Tcp,
                payload_len: tcp.buffer_len(),
                hop_limit: 64,
            };
            repr.emit(&mut Ipv4Packet::new_unchecked(&mut buf[14..]), &caps);
        }
        (IpAddr::V6(s6), IpAddr::V6(d6)) => {
            let repr = Ipv6Repr {
                src_addr: s6,
                dst_addr: d6,
                next_header: IpProtocol::Tcp,
                payload_len: tcp.buffer_len(),
                hop_limit: 64,
            };
            repr.emit(&mut Ipv6Packet::new_unchecked(&mut buf[14..]));
        }
        _ => unreachable!(),
    }
    tcp.emit(
        &mut TcpPacket::new_unchecked(&mut buf[14 + ip_hdr..]),
        &s,
        &d,
        &caps,
    );
    buf
}

// ---------------------------------------------------------------------------------------
// tables

/// `tables`: the shared-memory table area.
///
/// * `Tables::decode` never panics on any bytes.
/// * Whatever decodes re-encodes, and `decode(encode(t)) == t` with the same generation;
///   the re-encoding is canonical (encoding it again gives the same bytes).
/// * Round trip: tables built from the input's bytes (nodes, workloads, addresses,
///   policies with in-range indices) satisfy `decode(encode(t, g)) == (g, t)`.
pub fn tables(data: &[u8]) {
    use xdpmesh_shm::Tables;
    if let Ok((g, t)) = Tables::decode(data) {
        let bytes = t.encode(g).expect("decoded tables re-encode");
        let (g2, t2) = Tables::decode(&bytes).expect("re-encoded tables decode");
        assert_eq!(g2, g);
        assert_eq!(t2, t);
        assert_eq!(t2.encode(g).unwrap(), bytes, "encoding is not canonical");
    }
    let (g, t) = tables_from(&mut Cursor(data));
    let bytes = t.encode(g).expect("well-formed tables encode");
    let back = Tables::decode(&bytes).expect("encoded tables decode");
    assert_eq!(back, (g, t));
}

fn tables_from(c: &mut Cursor) -> (u64, xdpmesh_shm::Tables) {
    use xdpmesh_shm::*;
    let g = u64::from(c.u32());
    let mut t = Tables {
        trust_domain: c.string(),
        cluster_name: c.string(),
        unknown_source: match c.u8() % 3 {
            0 => UnknownSource::Pass,
            1 => UnknownSource::Reject,
            _ => UnknownSource::Hold,
        },
        unknown_source_hold_ms: c.u32(),
        ..Default::default()
    };
    for _ in 0..c.u8() % 3 {
        let addr = c.ip();
        let max = if addr.is_ipv4() { 33 } else { 129 };
        let prefix = c.u8() % max;
        t.pod_cidrs.push(Cidr { addr, prefix });
    }
    for _ in 0..c.u8() % 4 {
        let name = c.string();
        let gateway = c.bool().then(|| c.ip());
        t.nodes.push(Node { name, gateway });
    }
    if !t.nodes.is_empty() {
        t.local_node = c.bool().then(|| u32::from(c.u8()) % t.nodes.len() as u32);
        for _ in 0..c.u8() % 4 {
            t.workloads.push(Workload {
                name: c.string(),
                namespace: c.string(),
                service_account: c.string(),
                node: u32::from(c.u8()) % t.nodes.len() as u32,
                protocol: if c.bool() {
                    Protocol::Hbone
                } else {
                    Protocol::Tcp
                },
                peer_auth: if c.bool() {
                    PeerAuth::Strict
                } else {
                    PeerAuth::Permissive
                },
            });
        }
    }
    if !t.workloads.is_empty() {
        for _ in 0..c.u8() % 4 {
            let addr = c.ip();
            let workload = u32::from(c.u8()) % t.workloads.len() as u32;
            let ifindex = c.u32();
            let via = c.bool().then(|| c.ip());
            t.addresses.push(Address {
                addr,
                workload,
                route: Route { ifindex, via },
            });
        }
    }
    for _ in 0..c.u8() % 3 {
        let name = c.string();
        let namespace = c.string();
        // The area spells "no workload" as the empty string, so `Some("")` has no
        // encoding of its own (it decodes as `None`); the config model never builds it
        // (workload names are DNS-1123 labels).
        let workload = Some(c.string()).filter(|w| !w.is_empty() && c.bool());
        let action = if c.bool() {
            PolicyAction::Deny
        } else {
            PolicyAction::Allow
        };
        let mut from = Vec::new();
        for _ in 0..c.u8() % 3 {
            let v = c.string();
            from.push(if c.bool() {
                PolicySource::Principal(v)
            } else {
                PolicySource::Namespace(v)
            });
        }
        let ports = (0..c.u8() % 4).map(|_| c.u16()).collect();
        t.policies.push(Policy {
            name,
            namespace,
            workload,
            action,
            from,
            ports,
        });
    }
    for _ in 0..c.u8() % 3 {
        let name = c.string();
        let namespace = c.string();
        let hostname = c.string();
        let vips = (0..1 + c.u8() % 2).map(|_| c.ip()).collect();
        let ports = (0..1 + c.u8() % 3).map(|_| (c.u16(), c.u16())).collect();
        let endpoints = if t.workloads.is_empty() {
            Vec::new()
        } else {
            (0..c.u8() % 4)
                .map(|_| u32::from(c.u8()) % t.workloads.len() as u32)
                .collect()
        };
        t.services.push(Service {
            name,
            namespace,
            hostname,
            vips,
            ports,
            endpoints,
        });
    }
    (g, t)
}

// ---------------------------------------------------------------------------------------
// connect

/// The server's `:authority` parsing, as h2 and `hbone::conn::server` do it: h2 turns
/// the `:authority` pseudo-header of a CONNECT into a `Uri` with only an authority
/// (`uri::Authority::from_maybe_shared`, `Uri::from_parts`), and the server parses it
/// with `hbone::conn::parse_authority`.
pub fn parse_connect_authority(
    raw: &[u8],
) -> Option<Result<SocketAddr, xdpmesh_hbone::conn::BadAuthority>> {
    let authority = http::uri::Authority::try_from(raw).ok()?;
    let mut parts = http::uri::Parts::default();
    parts.authority = Some(authority);
    let uri = http::Uri::from_parts(parts).ok()?;
    Some(xdpmesh_hbone::conn::parse_authority(&uri))
}

/// `connect`: the CONNECT request of HBONE.
///
/// Input: line 1 the method, line 2 the `:authority` bytes, line 3 the local IP the
/// connection was accepted on, then `name: value` header lines (`forwarded`,
/// `traceparent`, `baggage`, ...).
///
/// * `:authority` parsing, `validate_request` and header reading never panic.
/// * `validate_request` accepts only CONNECT, to an `ip:port` whose IP is the local IP
///   (IPv4-mapped IPv6 equal to IPv4), on a port outside `RESERVED_PORTS`, and returns
///   that address; its refusals map to 400 or 503.
/// * Round trip: `authority_string(target)` is an `:authority` that parses back to the
///   target (flow info and scope id aside) and validates against the target's own IP.
/// * The client's side: a CONNECT built as `HboneClientConn::send_request` builds it
///   (`uri(authority_string)`, `forwarded` from `ConnectHeaders::forwarded`, a
///   `traceparent`, a `baggage`) either fails cleanly or carries exactly those values,
///   and its URI's authority parses back to the address.
pub fn connect(data: &[u8]) {
    use xdpmesh_hbone::conn::{
        authority_string, validate_request, ConnectHeaders, HeaderMap, Method, RequestError,
        RESERVED_PORTS,
    };
    let mut lines = data.split(|&b| b == b'\n');
    let method = lines.next().unwrap_or_default();
    let authority = lines.next().unwrap_or_default();
    let local = lines.next().unwrap_or_default();
    let local_ip: IpAddr = std::str::from_utf8(local)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 5)));
    let mut headers = HeaderMap::new();
    for line in lines.by_ref() {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
        if let (Ok(n), Ok(v)) = (
            http::header::HeaderName::from_bytes(name),
            http::header::HeaderValue::from_bytes(value),
        ) {
            headers.append(n, v);
        }
    }
    // What the dataplane's inbound side reads.
    let forwarded = headers
        .get("forwarded")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let _ = forwarded.len();

    let Ok(method) = Method::from_bytes(method) else {
        return;
    };
    let Some(parsed) = parse_connect_authority(authority) else {
        return; // h2 refuses the request itself (malformed :authority)
    };
    let canonical = |ip: IpAddr| match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    match validate_request(&method, &parsed, local_ip) {
        Ok(target) => {
            assert_eq!(method, Method::CONNECT);
            assert_eq!(Ok(target), parsed);
            assert_eq!(canonical(target.ip()), canonical(local_ip));
            assert!(!RESERVED_PORTS.contains(&target.port()));
        }
        Err(e) => {
            let status = e.status().as_u16();
            match &e {
                RequestError::NonConnect(m) => assert_ne!(m, Method::CONNECT),
                RequestError::BadAuthority(_) => assert!(parsed.is_err()),
                RequestError::WrongDestination { target, .. } => {
                    assert_ne!(canonical(target.ip()), canonical(local_ip))
                }
                RequestError::ReservedPort(p) => assert!(RESERVED_PORTS.contains(p)),
            }
            let want = if matches!(e, RequestError::ReservedPort(_)) {
                503
            } else {
                400
            };
            assert_eq!(status, want);
            let _ = e.to_string();
        }
    }

    // Round trip through authority_string, for the parsed address and for one made of
    // the input's bytes (so the IPv6 forms get exercised even without a valid text).
    let mut c = Cursor(data);
    let made = SocketAddr::new(c.ip(), c.u16());
    for addr in parsed.iter().copied().chain([made]) {
        let a = authority_string(addr);
        let back = parse_connect_authority(a.as_bytes())
            .unwrap_or_else(|| panic!("h2 would refuse authority_string({addr}) = {a:?}"))
            .unwrap_or_else(|e| panic!("authority_string({addr}) does not parse back: {e}"));
        assert_eq!(back.ip(), addr.ip());
        assert_eq!(back.port(), addr.port());
        let v = validate_request(&Method::CONNECT, &Ok(back), addr.ip());
        if RESERVED_PORTS.contains(&addr.port()) {
            assert_eq!(v, Err(RequestError::ReservedPort(addr.port())));
        } else {
            assert_eq!(v, Ok(back));
        }

        // The client's request, as HboneClientConn::send_request builds it.
        let host =
            String::from_utf8_lossy(headers.get("x-fuzz-host").map_or(b"", |v| v.as_bytes()))
                .into_owned();
        let ch = ConnectHeaders {
            forwarded_for: made,
            forwarded_host: (!host.is_empty()).then_some(host),
            baggage: headers
                .get("baggage")
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()),
            traceparent: String::from_utf8_lossy(
                headers.get("traceparent").map_or(b"", |v| v.as_bytes()),
            )
            .into_owned(),
        };
        let fwd = ch.forwarded();
        assert!(fwd.starts_with(&format!("for=\"{}\"", authority_string(made))));
        let mut req = http::Request::builder()
            .method(Method::CONNECT)
            .uri(a.as_str())
            .header("forwarded", fwd.as_str())
            .header("traceparent", ch.traceparent.as_str());
        if let Some(b) = ch.baggage.as_deref().filter(|b| !b.is_empty()) {
            req = req.header("baggage", b);
        }
        match req.body(()) {
            Ok(r) => {
                let auth = r.uri().authority().expect("CONNECT URI has an authority");
                assert_eq!(auth.as_str().parse::<SocketAddr>().ok(), Some(back));
                assert_eq!(r.headers()["forwarded"].as_bytes(), fwd.as_bytes());
            }
            Err(e) => {
                // Only a header value with a byte HTTP forbids (CR, LF, NUL, ...) may
                // fail; the URI is always good.
                let bad = |s: &str| http::header::HeaderValue::from_str(s).is_err();
                assert!(
                    bad(&fwd) || bad(&ch.traceparent) || ch.baggage.as_deref().is_some_and(bad),
                    "request refused for no bad header: {e}"
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// manifest

/// `manifest`: the identity manifest (`manifest.json`) the control process writes and
/// the dataplane reads (`dataplane/src/identity.rs` reads it into a private struct of
/// the same fields; the public one is the writer's, `xdpmesh_control::certs::Manifest`).
///
/// * `serde_json` into the manifest never panics; a manifest that parses serialises
///   and parses back equal (compact and pretty).
/// * Each identity's `spiffe` that parses as a `SpiffeId` round-trips through its
///   `Display` form, and that form is the very string (the dataplane keys its
///   certificates by `SpiffeId::to_string()`, so a non-canonical spelling would never be
///   found); its file stem `<ns>~<sa>` is one plain file name (no `/`, not `.`/`..`).
/// * The whole input, as a string, goes through `SpiffeId::from_str` with the same
///   round trip (it is what the peer's certificate URI SAN is parsed with).
pub fn manifest(data: &[u8]) {
    use xdpmesh_control::certs::{identity_file_stem, Manifest};
    use xdpmesh_hbone::SpiffeId;
    if let Ok(m) = serde_json::from_slice::<Manifest>(data) {
        let compact = serde_json::to_vec(&m).expect("a manifest serialises");
        assert_eq!(serde_json::from_slice::<Manifest>(&compact).unwrap(), m);
        let pretty = serde_json::to_vec_pretty(&m).unwrap();
        assert_eq!(serde_json::from_slice::<Manifest>(&pretty).unwrap(), m);
        for i in &m.identities {
            if let Ok(id) = i.spiffe.parse::<SpiffeId>() {
                spiffe_round_trip(&i.spiffe, &id);
                let stem = identity_file_stem(&id);
                assert!(
                    !stem.contains('/') && stem != "." && stem != "..",
                    "{stem:?}"
                );
            }
        }
    }
    if let Ok(s) = std::str::from_utf8(data) {
        if let Ok(id) = s.parse::<SpiffeId>() {
            spiffe_round_trip(s, &id);
        }
    }
}

fn spiffe_round_trip(s: &str, id: &xdpmesh_hbone::SpiffeId) {
    let text = id.to_string();
    assert_eq!(text, s, "SpiffeId display is not the parsed text");
    assert_eq!(text.parse::<xdpmesh_hbone::SpiffeId>().as_ref(), Ok(id));
    let again = xdpmesh_hbone::SpiffeId::new(&id.trust_domain, &id.namespace, &id.service_account);
    assert_eq!(again.as_ref(), Ok(id));
}

// ---------------------------------------------------------------------------------------
// config

/// `config`: the mesh configuration parser.
///
/// * `MeshConfig::from_str_named` never panics, on any text.
/// * Every error names the file and a position inside the text: it prints as
///   `fuzz.yaml:<line>:<column>: <reason>` with `1 <= line <= line breaks + 1` (YAML's breaks: CR, LF, CRLF, NEL, LS, PS), `column >= 1`
///   and a non-empty reason.
/// * A configuration that parses builds the tables of each of its nodes
///   (`tables::build`, routes unknown), and those tables round-trip through the shared
///   memory encoding (`decode(encode(t)) == t`).
pub fn config(data: &[u8]) {
    use xdpmesh_control::config::MeshConfig;
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let file = Path::new("fuzz.yaml");
    match MeshConfig::from_str_named(text, file) {
        Err(e) => {
            assert_eq!(e.file, file);
            // YAML's own line breaks (CR, LF, CRLF, NEL, LS, PS): a position at the very
            // end is on line breaks + 1.
            let mut breaks = 0;
            let mut it = text.chars().peekable();
            while let Some(ch) = it.next() {
                match ch {
                    '\r' => {
                        it.next_if_eq(&'\n');
                        breaks += 1;
                    }
                    '\n' | '\u{85}' | '\u{2028}' | '\u{2029}' => breaks += 1,
                    _ => {}
                }
            }
            // libyaml (serde_yaml) forces a line break at the end of a stream whose last
            // line has none, so an end-of-stream error then names line breaks + 2, col 1.
            let last = if text.ends_with(['\n', '\r', '\u{85}', '\u{2028}', '\u{2029}']) {
                breaks + 1
            } else {
                breaks + 1 + usize::from(e.column == 1)
            };
            assert!(
                e.line >= 1 && e.line <= last,
                "line {} outside 1..={} in {e}",
                e.line,
                last
            );
            assert!(e.column >= 1, "column 0 in {e}");
            assert!(!e.reason.is_empty(), "empty reason");
            let printed = e.to_string();
            let prefix = format!("fuzz.yaml:{}:{}: ", e.line, e.column);
            assert!(printed.starts_with(&prefix), "{printed:?} lacks {prefix:?}");
        }
        Ok(cfg) => {
            struct NoRoutes;
            impl xdpmesh_control::tables::RouteLookup for NoRoutes {
                fn route(&mut self, _: IpAddr) -> Option<xdpmesh_shm::Route> {
                    None
                }
            }
            for n in &cfg.nodes {
                let t = xdpmesh_control::tables::build(&cfg, &n.name, &mut NoRoutes)
                    .expect("a valid config builds each node's tables");
                let bytes = t.encode(3).expect("tables of a valid config encode");
                let back = xdpmesh_shm::Tables::decode(&bytes).expect("and decode");
                assert_eq!(back, (3, t));
            }
        }
    }
}
