//! Transcript tests: an HBONE client and server back to back, ciphertext shuttled in
//! memory, asserting on exact headers, bytes, events and error strings.

mod common;

use common::*;
use xdpmesh_hbone::conn::{Method, StatusCode};
use xdpmesh_hbone::{Event, H2Settings, OpenStreamError, Reason, StreamId};

#[test]
fn handshake_tls13_alpn_h2_identities() {
    let mesh = Mesh::new();
    let mut p = mesh.pair();
    p.connect();
    for info in [p.client.tls_info().unwrap(), p.server.tls_info().unwrap()] {
        assert_eq!(info.alpn, b"h2");
        assert_eq!(info.version, rustls::ProtocolVersion::TLSv1_3);
        assert!(
            [
                rustls::CipherSuite::TLS13_AES_256_GCM_SHA384,
                rustls::CipherSuite::TLS13_AES_128_GCM_SHA256
            ]
            .contains(&info.cipher_suite),
            "{:?}",
            info.cipher_suite
        );
    }
    assert_eq!(p.client.peer_identity(), Some(&id("server")));
    assert_eq!(p.server.peer_identity(), Some(&id("client")));
    assert!(p.client.is_idle() && p.server.is_idle());
    // Before the server's SETTINGS the client assumes its own cap (as ztunnel).
    assert_eq!(p.client.max_concurrent_streams(), 100);
}

#[test]
fn connect_carries_exact_authority_and_headers() {
    let mesh = Mesh::new();
    let mut p = mesh.pair();
    p.connect();
    let sid = p.client.open_stream(target(8080), &headers()).unwrap();
    p.run();
    let req = p.take_request(sid);
    assert_eq!(req.method, Method::CONNECT);
    assert_eq!(req.authority, Ok(target(8080)));
    assert_eq!(req.peer_identity, id("client"));
    let h = &req.headers;
    assert_eq!(h.len(), 3, "{h:?}");
    assert_eq!(h["forwarded"], "for=\"198.18.1.2:40000\"");
    assert_eq!(
        h["baggage"],
        "k8s.cluster.name=Kubernetes,k8s.namespace.name=default,k8s.deployment.name=client,service.name=client,service.version=v1"
    );
    assert_eq!(
        h["traceparent"],
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    );
    assert_eq!(p.server.validate(&req), Ok(target(8080)));
    // Nothing flows before the 200.
    assert!(p.client_events.is_empty(), "{:?}", p.client_events);
    assert_eq!(
        p.client.stream_write(sid, b"x"),
        Err(xdpmesh_hbone::StreamError::NotEstablished(sid))
    );
    p.server.respond(sid, StatusCode::OK).unwrap();
    p.run();
    assert!(matches!(p.client_events.as_slice(), [Event::Established(s)] if *s == sid));
}

#[test]
fn connect_ipv6_authority_and_forwarded_host() {
    let mesh = Mesh::new();
    let ip: std::net::IpAddr = "fd00::2".parse().unwrap();
    let mut p = mesh.pair();
    // The server accepted on fd00::2 in this test.
    p.server = xdpmesh_hbone::HboneServerConn::new(mesh.server_cfg(), ip).unwrap();
    p.connect();
    let mut h = headers();
    h.forwarded_for = "[fd00::9]:40000".parse().unwrap();
    h.forwarded_host = Some("reviews.default.svc.cluster.local".into());
    h.baggage = None;
    let target: std::net::SocketAddr = "[fd00::2]:9080".parse().unwrap();
    let sid = p.client.open_stream(target, &h).unwrap();
    p.run();
    let req = p.take_request(sid);
    assert_eq!(req.authority, Ok(target));
    assert_eq!(req.headers.len(), 2);
    assert_eq!(
        req.headers["forwarded"],
        "for=\"[fd00::9]:40000\";host=reviews.default.svc.cluster.local"
    );
    assert!(req.headers.get("baggage").is_none());
    assert_eq!(p.server.validate(&req), Ok(target));
}

/// Writes `data` on `id` as fast as the windows allow and reads the other side, until
/// all is delivered; returns what the reader got.
fn transfer_both_ways(p: &mut Pair, sid: StreamId, up: &[u8], down: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let (mut up_off, mut down_off) = (0, 0);
    let (mut got_up, mut got_down) = (Vec::new(), Vec::new());
    let mut buf = vec![0u8; 50_000];
    for _ in 0..100_000 {
        if up_off < up.len() {
            up_off += p.client.stream_write(sid, &up[up_off..]).unwrap();
        }
        if down_off < down.len() {
            down_off += p.server.stream_write(sid, &down[down_off..]).unwrap();
        }
        p.shuttle();
        loop {
            let n = p.server.stream_read(sid, &mut buf).unwrap();
            got_up.extend_from_slice(&buf[..n]);
            let m = p.client.stream_read(sid, &mut buf).unwrap();
            got_down.extend_from_slice(&buf[..m]);
            if n == 0 && m == 0 {
                break;
            }
        }
        if got_up.len() == up.len() && got_down.len() == down.len() {
            return (got_up, got_down);
        }
    }
    panic!(
        "transfer stalled: up {} down {}",
        got_up.len(),
        got_down.len()
    );
}

/// An idle connection frees its transport buffers (`shrink_buffers`, which the
/// dataplane calls on idle tunnels), and the next transfer grows them again, exact.
#[test]
fn idle_buffers_are_freed_and_grow_again() {
    let mesh = Mesh::new();
    let mut p = mesh.pair();
    p.connect();
    let sid = p.open(8080);
    let (up, down) = (payload(300_000, 5), payload(200_000, 6));
    let (got_up, got_down) = transfer_both_ways(&mut p, sid, &up, &down);
    assert!(got_up == up && got_down == down);
    p.run();
    let freed = (p.client.shrink_buffers(), p.server.shrink_buffers());
    assert!(freed.0 > 0 && freed.1 > 0, "{freed:?}");
    assert_eq!(
        (p.client.shrink_buffers(), p.server.shrink_buffers()),
        (0, 0)
    );
    let (up, down) = (payload(100_000, 7), payload(100_000, 8));
    let (got_up, got_down) = transfer_both_ways(&mut p, sid, &up, &down);
    assert!(got_up == up && got_down == down);
    assert!(p.client_err.is_none() && p.server_err.is_none());
}

#[test]
fn one_mib_each_way_then_half_close_both_directions() {
    let mesh = Mesh::new();
    let mut p = mesh.pair();
    p.connect();
    let sid = p.open(8080);
    let up = payload(1 << 20, 1);
    let down = payload(1 << 20, 2);
    let (got_up, got_down) = transfer_both_ways(&mut p, sid, &up, &down);
    assert_eq!(sha256(&got_up), sha256(&up));
    assert_eq!(sha256(&got_down), sha256(&down));
    // Everything was read, so every window byte was released; wire bytes exceed payload
    // by framing + AEAD overhead only.
    assert!(
        p.wire_bytes.0 > (1 << 20) && p.wire_bytes.0 < (1 << 20) + 64 * 1024,
        "{:?}",
        p.wire_bytes
    );

    // Client half-closes: the server sees END_STREAM but can still send.
    p.client.stream_finish(sid).unwrap();
    p.run();
    assert!(
        p.server_events
            .iter()
            .any(|e| matches!(e, Event::PeerFinished(s) if *s == sid)),
        "{:?}",
        p.server_events
    );
    assert!(p.server.stream_peer_finished(sid));
    assert_eq!(
        p.client.stream_write(sid, b"late"),
        Err(xdpmesh_hbone::StreamError::Finished(sid))
    );
    assert_eq!(p.server.stream_write(sid, b"after half-close").unwrap(), 16);
    p.run();
    let mut buf = [0u8; 64];
    assert_eq!(p.client.stream_read(sid, &mut buf).unwrap(), 16);
    assert_eq!(&buf[..16], b"after half-close");
    assert_eq!(p.client.active_streams(), 1);
    // Server half-closes too: both sides are done and drop the stream.
    p.server.stream_finish(sid).unwrap();
    p.run();
    assert!(
        p.client_events
            .iter()
            .any(|e| matches!(e, Event::PeerFinished(s) if *s == sid)),
        "{:?}",
        p.client_events
    );
    assert!(!p
        .client_events
        .iter()
        .any(|e| matches!(e, Event::Reset(..))));
    assert!(!p
        .server_events
        .iter()
        .any(|e| matches!(e, Event::Reset(..))));
    assert!(p.client.is_idle(), "{}", p.client.active_streams());
    assert!(p.server.is_idle(), "{}", p.server.active_streams());
    assert!(p.client_err.is_none() && p.server_err.is_none());
}

#[test]
fn reset_propagates_both_ways() {
    let mesh = Mesh::new();
    let mut p = mesh.pair();
    p.connect();
    let a = p.open(8080);
    let b = p.open(8081);
    p.client.stream_reset(a).unwrap();
    p.run();
    assert!(
        matches!(p.server_events.as_slice(), [Event::Reset(s, Reason::CANCEL)] if *s == a),
        "{:?}",
        p.server_events
    );
    assert_eq!(p.server.active_streams(), 1);
    p.server.stream_reset(b).unwrap();
    p.run();
    assert!(
        matches!(p.client_events.as_slice(), [Event::Reset(s, Reason::CANCEL)] if *s == b),
        "{:?}",
        p.client_events
    );
    assert!(p.client.is_idle() && p.server.is_idle());
    assert_eq!(
        p.client.stream_write(a, b"x"),
        Err(xdpmesh_hbone::StreamError::Unknown(a))
    );
    // The connection survives stream resets.
    let c = p.open(8082);
    assert_eq!(p.client.stream_write(c, b"still up").unwrap(), 8);
}

#[test]
fn hundred_streams_on_one_connection() {
    let mesh = Mesh::new();
    let mut p = mesh.pair();
    p.connect();
    let mut ids = Vec::new();
    for i in 0..100u16 {
        ids.push(
            p.client
                .open_stream(target(10_000 + i), &headers())
                .unwrap(),
        );
    }
    assert_eq!(p.client.active_streams(), 100);
    assert_eq!(
        p.client.open_stream(target(9999), &headers()),
        Err(OpenStreamError::AtCapacity {
            active: 100,
            max: 100
        })
    );
    assert!(!p.client.can_open_stream());
    p.run();
    let reqs: Vec<_> = ids.iter().map(|&s| p.take_request(s)).collect();
    for (i, r) in reqs.iter().enumerate() {
        assert_eq!(r.authority, Ok(target(10_000 + i as u16)));
        p.server.respond(r.stream, StatusCode::OK).unwrap();
    }
    p.run();
    let established = p
        .client_events
        .iter()
        .filter(|e| matches!(e, Event::Established(_)))
        .count();
    assert_eq!(established, 100);
    // 10 KiB each way on every stream, then both sides finish.
    let mut want = std::collections::HashMap::new();
    for (i, &s) in ids.iter().enumerate() {
        let up = payload(10 * 1024, 100 + i as u64);
        let down = payload(10 * 1024, 1000 + i as u64);
        assert_eq!(p.client.stream_write(s, &up).unwrap(), up.len());
        assert_eq!(p.server.stream_write(s, &down).unwrap(), down.len());
        p.client.stream_finish(s).unwrap();
        p.server.stream_finish(s).unwrap();
        want.insert(s, (up, down));
    }
    let mut got: std::collections::HashMap<StreamId, (Vec<u8>, Vec<u8>)> = Default::default();
    let mut buf = vec![0u8; 4096];
    for _ in 0..1000 {
        let moved = p.shuttle();
        for &s in &ids {
            let g = got.entry(s).or_default();
            while let Ok(n @ 1..) = p.server.stream_read(s, &mut buf) {
                g.0.extend_from_slice(&buf[..n]);
            }
            while let Ok(n @ 1..) = p.client.stream_read(s, &mut buf) {
                g.1.extend_from_slice(&buf[..n]);
            }
        }
        if !moved && p.client.is_idle() && p.server.is_idle() {
            break;
        }
    }
    for &s in &ids {
        assert_eq!(got[&s], want[&s], "stream {s}");
    }
    assert!(p.client.is_idle() && p.server.is_idle());
    assert!(p.client.can_open_stream());
    // The server announced 200; our own cap of 100 is the lower one.
    assert_eq!(p.client.max_concurrent_streams(), 100);
}

#[test]
fn peer_max_concurrent_streams_limits_client() {
    let mesh = Mesh::new();
    let ss = H2Settings {
        max_concurrent_streams: 3,
        ..H2Settings::server()
    };
    let mut p = Pair::with_settings(
        mesh.client_cfg(),
        mesh.server_cfg(),
        H2Settings::client(),
        ss,
    );
    p.connect();
    assert_eq!(p.client.max_concurrent_streams(), 3);
    for port in 1..=3 {
        p.client.open_stream(target(port), &headers()).unwrap();
    }
    assert_eq!(
        p.client.open_stream(target(4), &headers()),
        Err(OpenStreamError::AtCapacity { active: 3, max: 3 })
    );
}

#[test]
fn refused_with_400_for_wrong_authority_ip() {
    let mesh = Mesh::new();
    let mut p = mesh.pair();
    p.connect();
    let sid = p
        .client
        .open_stream("10.0.0.99:8080".parse().unwrap(), &headers())
        .unwrap();
    p.run();
    let req = p.take_request(sid);
    let err = p.server.validate(&req).unwrap_err();
    assert_eq!(
        err.to_string(),
        "HBONE request refused (400): target 10.0.0.99:8080 does not match the address the HBONE connection was accepted on (10.0.0.2)"
    );
    assert_eq!(err.status(), StatusCode::BAD_REQUEST);
    p.server.respond(sid, err.status()).unwrap();
    p.run();
    assert!(
        matches!(p.client_events.as_slice(), [Event::Refused(s, StatusCode::BAD_REQUEST)] if *s == sid),
        "{:?}",
        p.client_events
    );
    assert!(p.client.is_idle() && p.server.is_idle());
    assert!(p.server_events.is_empty(), "{:?}", p.server_events);
}

#[test]
fn refused_with_503_for_port_15008() {
    let mesh = Mesh::new();
    let mut p = mesh.pair();
    p.connect();
    let sid = p.client.open_stream(target(15008), &headers()).unwrap();
    p.run();
    let req = p.take_request(sid);
    let err = p.server.validate(&req).unwrap_err();
    assert_eq!(
        err.to_string(),
        "HBONE request refused (503): target port 15008 is reserved for the mesh (15001, 15006, 15008)"
    );
    p.server.respond(sid, err.status()).unwrap();
    p.run();
    assert!(
        matches!(p.client_events.as_slice(), [Event::Refused(s, StatusCode::SERVICE_UNAVAILABLE)] if *s == sid),
        "{:?}",
        p.client_events
    );
    assert!(p.client.is_idle() && p.server.is_idle());
}

/// The receiver never reads: the writer is stopped exactly at the receiver's stream
/// window, and every internal buffer stays under its cap meanwhile.
fn window_stops_writer(window: u32, client_to_server: bool) {
    let mesh = Mesh::new();
    let cs = H2Settings {
        initial_stream_window: window,
        ..H2Settings::client()
    };
    let ss = H2Settings {
        initial_stream_window: window,
        ..H2Settings::server()
    };
    let cap = cs.plaintext_buffer_limit;
    let mut p = Pair::with_settings(mesh.client_cfg(), mesh.server_cfg(), cs, ss);
    p.connect();
    let sid = p.open(8080);
    let chunk = payload(64 * 1024, 7);
    let mut accepted = 0usize;
    let mut zero_rounds = 0;
    for _ in 0..10_000 {
        let n = if client_to_server {
            p.client.stream_write(sid, &chunk).unwrap()
        } else {
            p.server.stream_write(sid, &chunk).unwrap()
        };
        accepted += n;
        let moved = p.shuttle();
        for s in [p.client.buffer_stats(), p.server.buffer_stats()] {
            assert!(s.plaintext_in <= cap && s.plaintext_out <= cap, "{s:?}");
        }
        zero_rounds = if n == 0 && !moved { zero_rounds + 1 } else { 0 };
        if zero_rounds == 3 {
            break;
        }
    }
    assert_eq!(
        accepted, window as usize,
        "writer must stop exactly at the window"
    );
    // Reading releases window: the writer gets Writable and can go on.
    let mut buf = vec![0u8; window as usize];
    let n = if client_to_server {
        p.server.stream_read(sid, &mut buf).unwrap()
    } else {
        p.client.stream_read(sid, &mut buf).unwrap()
    };
    assert!(n > 0);
    p.run();
    let writer_events = if client_to_server {
        &p.client_events
    } else {
        &p.server_events
    };
    assert!(
        writer_events
            .iter()
            .any(|e| matches!(e, Event::Writable(s) if *s == sid)),
        "{writer_events:?}"
    );
}

#[test]
fn flow_control_stops_writer_at_default_4mib_window_client_to_server() {
    window_stops_writer(4 * 1024 * 1024, true);
}

#[test]
fn flow_control_stops_writer_at_default_4mib_window_server_to_client() {
    window_stops_writer(4 * 1024 * 1024, false);
}

#[test]
fn flow_control_stops_writer_at_configured_window() {
    window_stops_writer(100_000, true);
}

#[test]
fn graceful_close_by_client() {
    let mesh = Mesh::new();
    let mut p = mesh.pair();
    p.connect();
    let sid = p.open(8080);
    p.client.close();
    p.run();
    assert!(!p.client.is_closed(), "open stream keeps the connection");
    p.client.stream_finish(sid).unwrap();
    p.server.stream_finish(sid).unwrap();
    p.run();
    assert!(p.client.is_closed());
    assert!(p.server.is_closed());
    assert!(p.client_events.iter().any(|e| matches!(e, Event::Closed)));
    assert!(p.server_events.iter().any(|e| matches!(e, Event::Closed)));
    assert!(p.client_err.is_none(), "{:?}", p.client_err);
    assert!(p.server_err.is_none(), "{:?}", p.server_err);
}

#[test]
fn small_windows_need_the_reader_to_release_capacity() {
    // 1 MiB through a 16 KiB stream window: only possible because every read releases
    // window back to the writer (64 window refills each way).
    let mesh = Mesh::new();
    let cs = H2Settings {
        initial_stream_window: 16 * 1024,
        initial_connection_window: 16 * 1024,
        ..H2Settings::client()
    };
    let ss = H2Settings {
        initial_stream_window: 16 * 1024,
        initial_connection_window: 16 * 1024,
        ..H2Settings::server()
    };
    let mut p = Pair::with_settings(mesh.client_cfg(), mesh.server_cfg(), cs, ss);
    p.connect();
    let sid = p.open(8080);
    let up = payload(1 << 20, 3);
    let down = payload(1 << 20, 4);
    let (got_up, got_down) = transfer_both_ways(&mut p, sid, &up, &down);
    assert_eq!(sha256(&got_up), sha256(&up));
    assert_eq!(sha256(&got_down), sha256(&down));
}

/// The transport ends without close_notify (a TCP FIN, a truncation): the plaintext
/// that arrived before the EOF is still delivered, exact, after it.
#[test]
fn plaintext_before_a_transport_eof_without_close_notify_is_delivered() {
    let mesh = Mesh::new();
    let mut p = mesh.pair();
    p.connect();
    let sid = p.open(8080);
    let up = payload(100_000, 7);
    let (got_up, _) = transfer_both_ways(&mut p, sid, &up, &[]);
    assert!(got_up == up);
    // The client writes more; its ciphertext reaches the server, then the transport's
    // EOF, with no close_notify in between.
    let tail = payload(5_000, 8);
    assert_eq!(p.client.stream_write(sid, &tail).unwrap(), tail.len());
    let mut wire = Vec::new();
    p.client.take_ciphertext(&mut wire);
    assert_eq!(p.server.feed_ciphertext(&wire).unwrap(), wire.len());
    let _ = p.server.feed_eof();
    let mut buf = vec![0u8; 10_000];
    let mut after = Vec::new();
    for _ in 0..100 {
        let _ = p.server.poll();
        while let Some(e) = p.server.poll_event() {
            p.server_events.push(e);
        }
        if let Ok(n) = p.server.stream_read(sid, &mut buf) {
            after.extend_from_slice(&buf[..n]);
        }
    }
    assert!(
        after == tail,
        "{} of {} bytes after the EOF",
        after.len(),
        tail.len()
    );
    assert!(
        p.server_events
            .iter()
            .any(|e| matches!(e, Event::Readable(id) if *id == sid)),
        "{:?}",
        p.server_events
    );
}
