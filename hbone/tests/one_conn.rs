//! The role-independent connection: after creating a client and a server, everything
//! (ciphertext both ways, `poll`, events, stream data, close) goes through
//! `&mut HboneConn`, as the worker's tunnel loop does.

mod common;

use std::sync::Arc;

use common::*;
use xdpmesh_hbone::conn::RESERVED_PORTS;
use xdpmesh_hbone::{
    ClientConfig, Event, HboneClientConn, HboneConn, HboneServerConn, ServerConfig, StatusCode,
    StreamId, HBONE_PORT,
};

/// Moves all ciphertext `from` → `to`; returns the byte count.
fn send(from: &mut HboneConn, to: &mut HboneConn) -> usize {
    let mut wire = Vec::new();
    from.take_ciphertext_max(&mut wire, usize::MAX);
    let mut rest = &wire[..];
    while !rest.is_empty() {
        assert!(to.can_feed());
        let n = to.feed_ciphertext(rest).unwrap();
        rest = &rest[n..];
        to.poll().unwrap();
    }
    wire.len()
}

/// Shuttles until nothing moves; returns each side's events.
fn settle(a: &mut HboneConn, b: &mut HboneConn) -> (Vec<Event>, Vec<Event>) {
    let (mut ea, mut eb) = (Vec::new(), Vec::new());
    for _ in 0..1000 {
        let moved = send(a, b) + send(b, a);
        ea.extend(std::iter::from_fn(|| a.poll_event()));
        eb.extend(std::iter::from_fn(|| b.poll_event()));
        if moved == 0 {
            return (ea, eb);
        }
    }
    panic!("did not settle");
}

fn read_all(c: &mut HboneConn, id: StreamId) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 3];
    loop {
        let n = c.stream_read(id, &mut buf).unwrap();
        if n == 0 {
            return out;
        }
        out.extend_from_slice(&buf[..n]);
    }
}

/// [`settle`], with each event as its `Debug` text (for exact comparisons).
fn settled(a: &mut HboneConn, b: &mut HboneConn) -> (Vec<String>, Vec<String>) {
    let (ea, eb) = settle(a, b);
    let text = |ev: Vec<Event>| ev.iter().map(|e| format!("{e:?}")).collect();
    (text(ea), text(eb))
}

const NONE: Vec<String> = Vec::new();

#[test]
fn both_roles_are_driven_through_one_type() {
    let mesh = Mesh::new();
    let client_cfg: Arc<ClientConfig> = mesh.client_cfg();
    let server_cfg: Arc<ServerConfig> = mesh.server_cfg();
    let mut client = HboneClientConn::new(client_cfg, server_ip()).unwrap();
    let mut server = HboneServerConn::new(server_cfg, server_ip()).unwrap();

    assert_eq!(
        settled(&mut client, &mut server),
        (vec!["Connected".to_owned()], vec!["Connected".to_owned()])
    );
    let (c, s): (&mut HboneConn, &mut HboneConn) = (&mut client, &mut server);
    assert_eq!(c.peer_identity(), Some(&id("server")));
    assert_eq!(s.peer_identity(), Some(&id("client")));

    // Only opening and answering are role-specific.
    let sid = client.open_stream(target(8080), &headers()).unwrap();
    assert_eq!(sid, StreamId(1));
    let (ce, se) = settle(&mut client, &mut server);
    assert!(ce.is_empty(), "{ce:?}");
    let [Event::Request(req)] = se.as_slice() else {
        panic!("{se:?}")
    };
    assert_eq!(req.stream, sid);
    assert_eq!(server.validate(req), Ok(target(8080)));
    server.respond(sid, StatusCode::OK).unwrap();
    assert_eq!(
        settled(&mut client, &mut server),
        (vec!["Established(StreamId(1))".to_owned()], NONE)
    );

    let (c, s): (&mut HboneConn, &mut HboneConn) = (&mut client, &mut server);
    assert_eq!((c.active_streams(), s.active_streams()), (1, 1));
    assert_eq!(c.stream_write(sid, b"ping").unwrap(), 4);
    assert_eq!(
        settled(c, s),
        (NONE, vec!["Readable(StreamId(1))".to_owned()])
    );
    assert_eq!(s.stream_readable(sid), 4);
    assert_eq!(read_all(s, sid), b"ping");

    assert_eq!(s.stream_write(sid, b"pong!").unwrap(), 5);
    s.stream_finish(sid).unwrap();
    assert_eq!(
        settled(c, s),
        (vec!["Readable(StreamId(1))".to_owned()], NONE)
    );
    assert!(!c.stream_peer_finished(sid), "data not read yet");
    assert_eq!(read_all(c, sid), b"pong!");
    // Reading past the data found the END_STREAM.
    assert!(matches!(c.poll_event(), Some(Event::PeerFinished(i)) if i == sid));
    assert!(c.stream_peer_finished(sid));

    c.stream_finish(sid).unwrap();
    assert_eq!(
        settled(c, s),
        (NONE, vec!["PeerFinished(StreamId(1))".to_owned()])
    );
    assert_eq!((c.active_streams(), s.active_streams()), (0, 0));
    assert!(c.is_idle() && s.is_idle());

    c.close();
    assert_eq!(
        settled(c, s),
        (vec!["Closed".to_owned()], vec!["Closed".to_owned()])
    );
    assert!(c.is_closed() && s.is_closed());
    assert!(c.error().is_none() && s.error().is_none());
}

#[test]
fn stream_reset_through_the_common_type_before_the_answer() {
    let mesh = Mesh::new();
    let mut client = HboneClientConn::new(mesh.client_cfg(), server_ip()).unwrap();
    let mut server = HboneServerConn::new(mesh.server_cfg(), server_ip()).unwrap();
    settle(&mut client, &mut server);
    let sid = client.open_stream(target(8080), &headers()).unwrap();
    let (_, se) = settle(&mut client, &mut server);
    assert!(
        matches!(se.as_slice(), [Event::Request(r)] if r.stream == sid),
        "{se:?}"
    );

    // The client gives up while the server has not answered yet.
    let c: &mut HboneConn = &mut client;
    c.stream_reset(sid).unwrap();
    assert_eq!(c.active_streams(), 0);
    assert_eq!(
        settled(&mut client, &mut server),
        (NONE, vec!["Reset(StreamId(1), CANCEL)".to_owned()])
    );
    assert_eq!(server.active_streams(), 0);
    assert_eq!(
        server.respond(sid, StatusCode::OK),
        Err(xdpmesh_hbone::StreamError::Unknown(sid))
    );
}

#[test]
fn one_hbone_port() {
    assert_eq!(HBONE_PORT, 15008);
    assert_eq!(RESERVED_PORTS, [15001, 15006, 15008]);
}
