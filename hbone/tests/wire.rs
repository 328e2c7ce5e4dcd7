//! Byte-level transcript of the server's answer to a refused CONNECT: a hand-written
//! HTTP/2 client (raw frames over a plain rustls client) talks to `HboneServerConn`,
//! and the frames that come back are decoded and compared exactly.

mod common;

use common::*;
use xdpmesh_hbone::{Event, HboneServerConn};

const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const ACK: u8 = 0x1;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;

fn frame(buf: &mut Vec<u8>, typ: u8, flags: u8, stream: u32, payload: &[u8]) {
    buf.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
    buf.push(typ);
    buf.push(flags);
    buf.extend_from_slice(&stream.to_be_bytes());
    buf.extend_from_slice(payload);
}

/// (type, flags, stream, payload) of every complete frame in `b`.
fn frames(mut b: &[u8]) -> Vec<(u8, u8, u32, Vec<u8>)> {
    let mut out = Vec::new();
    while b.len() >= 9 {
        let len = u32::from_be_bytes([0, b[0], b[1], b[2]]) as usize;
        let stream = u32::from_be_bytes([b[5], b[6], b[7], b[8]]) & 0x7fff_ffff;
        out.push((b[3], b[4], stream, b[9..9 + len].to_vec()));
        b = &b[9 + len..];
    }
    out
}

struct Raw {
    tls: rustls::ClientConnection,
    server: HboneServerConn,
    plaintext_from_server: Vec<u8>,
}

impl Raw {
    fn run(&mut self) {
        for _ in 0..100 {
            let mut c2s = Vec::new();
            while self.tls.wants_write() {
                self.tls.write_tls(&mut c2s).unwrap();
            }
            let mut rest = c2s.as_slice();
            while !rest.is_empty() {
                let n = self.server.feed_ciphertext(rest).unwrap();
                rest = &rest[n..];
            }
            let mut s2c = Vec::new();
            self.server.take_ciphertext(&mut s2c);
            let mut rd = s2c.as_slice();
            while !rd.is_empty() {
                self.tls.read_tls(&mut rd).unwrap();
                self.tls.process_new_packets().unwrap();
            }
            let mut buf = [0u8; 65536];
            while let Ok(n @ 1..) = std::io::Read::read(&mut self.tls.reader(), &mut buf) {
                self.plaintext_from_server.extend_from_slice(&buf[..n]);
            }
            if c2s.is_empty() && s2c.is_empty() {
                return;
            }
        }
    }
}

fn connect_raw(mesh: &Mesh) -> Raw {
    let tls = rustls::ClientConnection::new(
        mesh.client_cfg(),
        xdpmesh_hbone::tls::server_name(server_ip()),
    )
    .unwrap();
    let server = HboneServerConn::new(mesh.server_cfg(), server_ip()).unwrap();
    let mut raw = Raw {
        tls,
        server,
        plaintext_from_server: Vec::new(),
    };
    raw.run();
    assert!(!raw.tls.is_handshaking());
    assert_eq!(raw.tls.alpn_protocol(), Some(&b"h2"[..]));
    raw
}

fn send_connect(raw: &mut Raw, authority: &str) {
    let mut buf = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    frame(&mut buf, SETTINGS, 0, 0, &[]);
    // HPACK literals without indexing: `:method: CONNECT`, `:authority: <authority>`.
    let mut block = vec![0x02, 7];
    block.extend_from_slice(b"CONNECT");
    block.extend_from_slice(&[0x01, authority.len() as u8]);
    block.extend_from_slice(authority.as_bytes());
    frame(&mut buf, HEADERS, END_HEADERS, 1, &block);
    // Some request body, so the client's side is still open when the answer comes.
    frame(&mut buf, DATA, 0, 1, b"hello");
    std::io::Write::write_all(&mut raw.tls.writer(), &buf).unwrap();
    raw.run();
}

#[test]
fn error_response_is_headers_end_stream_then_rst_no_error() {
    let mesh = Mesh::new();
    let mut raw = connect_raw(&mesh);
    send_connect(&mut raw, "10.0.0.99:80");
    let req = match raw.server.poll_event() {
        Some(Event::Connected) => match raw.server.poll_event() {
            Some(Event::Request(r)) => r,
            e => panic!("{e:?}"),
        },
        e => panic!("{e:?}"),
    };
    let status = raw.server.validate(&req).unwrap_err().status();
    assert_eq!(status, 400);
    raw.server.respond(req.stream, status).unwrap();
    raw.run();
    let on_stream_1: Vec<_> = frames(&raw.plaintext_from_server)
        .into_iter()
        .filter(|f| f.2 == 1)
        .collect();
    assert_eq!(
        on_stream_1,
        vec![
            // :status 400 is HPACK static table entry 12: one byte, 0x80 | 12.
            (HEADERS, END_STREAM | END_HEADERS, 1, vec![0x8c]),
            (RST_STREAM, 0, 1, 0u32.to_be_bytes().to_vec()), // NO_ERROR
        ]
    );
    assert!(raw.server.is_idle());
}

#[test]
fn ok_response_is_headers_without_end_stream() {
    let mesh = Mesh::new();
    let mut raw = connect_raw(&mesh);
    send_connect(&mut raw, "10.0.0.2:8080");
    let _connected = raw.server.poll_event();
    let Some(Event::Request(req)) = raw.server.poll_event() else {
        panic!("no request")
    };
    assert_eq!(raw.server.validate(&req), Ok(target(8080)));
    assert!(req.headers.is_empty());
    raw.server
        .respond(req.stream, xdpmesh_hbone::StatusCode::OK)
        .unwrap();
    raw.run();
    let mut buf = [0u8; 16];
    assert_eq!(raw.server.stream_read(req.stream, &mut buf).unwrap(), 5);
    assert_eq!(&buf[..5], b"hello");
    let on_stream_1: Vec<_> = frames(&raw.plaintext_from_server)
        .into_iter()
        .filter(|f| f.2 == 1)
        .collect();
    // :status 200 is static entry 8.
    assert_eq!(on_stream_1, vec![(HEADERS, END_HEADERS, 1, vec![0x88])]);
    // The server announced ztunnel's settings first.
    let settings = frames(&raw.plaintext_from_server)
        .into_iter()
        .find(|f| f.0 == SETTINGS && f.1 == 0)
        .unwrap()
        .3;
    let pairs: Vec<(u16, u32)> = settings
        .chunks(6)
        .map(|c| {
            (
                u16::from_be_bytes([c[0], c[1]]),
                u32::from_be_bytes([c[2], c[3], c[4], c[5]]),
            )
        })
        .collect();
    assert!(
        pairs.contains(&(0x3, 200)),
        "MAX_CONCURRENT_STREAMS {pairs:?}"
    );
    assert!(
        pairs.contains(&(0x4, 4 * 1024 * 1024)),
        "INITIAL_WINDOW_SIZE {pairs:?}"
    );
    assert!(
        pairs.contains(&(0x5, 1024 * 1024)),
        "MAX_FRAME_SIZE {pairs:?}"
    );
    assert!(
        pairs.contains(&(0x6, 64 * 1024)),
        "MAX_HEADER_LIST_SIZE {pairs:?}"
    );
    // Connection window raised to 16 MiB: WINDOW_UPDATE on stream 0 by 16 MiB - 65535.
    let wu = frames(&raw.plaintext_from_server)
        .into_iter()
        .find(|f| f.0 == 0x8 && f.2 == 0)
        .unwrap()
        .3;
    assert_eq!(
        u32::from_be_bytes(wu[..4].try_into().unwrap()),
        16 * 1024 * 1024 - 65535
    );
}

/// The server's keepalive PING on the wire: a PING frame on stream 0, flags 0, h2's
/// user payload, one interval (10 s by default) after the connection is up; the
/// client's PING ACK with the same payload is the answer.
#[test]
fn server_keepalive_is_a_ping_frame_answered_by_its_ack() {
    const PAYLOAD: [u8; 8] = [0x3b, 0x7c, 0xdb, 0x7a, 0x0b, 0x87, 0x16, 0xb4];
    let mesh = Mesh::new();
    let mut raw = connect_raw(&mesh);
    let mut buf = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    frame(&mut buf, SETTINGS, 0, 0, &[]);
    std::io::Write::write_all(&mut raw.tls.writer(), &buf).unwrap();
    raw.run();
    let pings = |raw: &Raw| -> Vec<_> {
        frames(&raw.plaintext_from_server)
            .into_iter()
            .filter(|f| f.0 == PING)
            .collect()
    };
    raw.server.handle_timeout(0).unwrap();
    assert_eq!(raw.server.poll_timeout(), Some(10_000_000));
    raw.server.handle_timeout(9_999_999).unwrap();
    raw.run();
    assert_eq!(pings(&raw), vec![]);
    raw.server.handle_timeout(10_000_000).unwrap();
    raw.run();
    assert_eq!(pings(&raw), vec![(PING, 0, 0, PAYLOAD.to_vec())]);
    assert_eq!(raw.server.poll_timeout(), Some(30_000_000));
    let mut ack = Vec::new();
    frame(&mut ack, PING, ACK, 0, &PAYLOAD);
    std::io::Write::write_all(&mut raw.tls.writer(), &ack).unwrap();
    raw.run();
    raw.server.handle_timeout(10_000_500).unwrap();
    assert_eq!(
        raw.server.keepalive_stats(),
        xdpmesh_hbone::KeepaliveStats {
            pings_sent: 1,
            pongs_received: 1
        }
    );
    assert_eq!(raw.server.poll_timeout(), Some(20_000_500));
}
