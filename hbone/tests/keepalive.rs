//! HTTP/2 keepalive (ztunnel's `do_ping_pong`) on a back-to-back pair, on a clock the
//! test passes in: the first PING one interval after the connection is up, the next one
//! an interval after each PONG, and a PING without PONG for the timeout fails the
//! connection.

mod common;

use common::*;
use xdpmesh_hbone::{ConnError, H2Settings, Keepalive, KeepaliveStats};

const INTERVAL: i64 = 1_000_000;
const TIMEOUT: i64 = 2_000_000;

fn pair(client: Option<Keepalive>, server: Option<Keepalive>) -> Pair {
    let mesh = Mesh::new();
    let mut p = Pair::with_settings(
        mesh.client_cfg(),
        mesh.server_cfg(),
        H2Settings {
            keepalive: client,
            ..H2Settings::client()
        },
        H2Settings {
            keepalive: server,
            ..H2Settings::server()
        },
    );
    p.connect();
    p
}

fn short() -> Option<Keepalive> {
    Some(Keepalive {
        interval_us: INTERVAL,
        timeout_us: TIMEOUT,
    })
}

fn stats(pings_sent: u64, pongs_received: u64) -> KeepaliveStats {
    KeepaliveStats {
        pings_sent,
        pongs_received,
    }
}

#[test]
fn the_defaults_are_ztunnels() {
    let k = Keepalive::default();
    assert_eq!((k.interval_us, k.timeout_us), (10_000_000, 20_000_000));
    assert_eq!(H2Settings::client().keepalive, Some(k));
    assert_eq!(H2Settings::server().keepalive, Some(k));
}

#[test]
fn answered_pings_keep_both_sides_up() {
    let mut p = pair(short(), short());
    // The keepalive starts with the first time passed in, once the connection is up.
    assert_eq!(p.client.poll_timeout(), None);
    let t0 = 5_000_000;
    p.client.handle_timeout(t0).unwrap();
    p.server.handle_timeout(t0).unwrap();
    assert_eq!(p.client.poll_timeout(), Some(t0 + INTERVAL));
    assert_eq!(p.server.poll_timeout(), Some(t0 + INTERVAL));
    // Not a microsecond early.
    p.client.handle_timeout(t0 + INTERVAL - 1).unwrap();
    assert_eq!(p.client.keepalive_stats(), stats(0, 0));
    let mut now = t0;
    for round in 1..=10u64 {
        // Both PINGs go when due, the answers come back 300 µs later.
        now = p.client.poll_timeout().unwrap();
        assert_eq!(p.server.poll_timeout(), Some(now));
        p.client.handle_timeout(now).unwrap();
        p.server.handle_timeout(now).unwrap();
        assert_eq!(p.client.keepalive_stats(), stats(round, round - 1));
        assert_eq!(
            p.client.poll_timeout(),
            Some(now + TIMEOUT),
            "the PONG's deadline"
        );
        p.run();
        now += 300;
        p.client.handle_timeout(now).unwrap();
        p.server.handle_timeout(now).unwrap();
        assert_eq!(p.client.keepalive_stats(), stats(round, round));
        assert_eq!(p.server.keepalive_stats(), stats(round, round));
        assert_eq!(
            p.client.poll_timeout(),
            Some(now + INTERVAL),
            "an interval after the PONG"
        );
    }
    assert_eq!(now, t0 + 10 * (INTERVAL + 300));
    assert!(p.client_err.is_none() && p.server_err.is_none());
    assert!(p.client_events.is_empty(), "{:?}", p.client_events);
    assert!(p.server_events.is_empty(), "{:?}", p.server_events);
    // The connection still carries a stream, byte-exact.
    let sid = p.open(8080);
    p.client.stream_write(sid, b"still here").unwrap();
    p.run();
    let mut buf = [0u8; 32];
    assert_eq!(p.server.stream_read(sid, &mut buf).unwrap(), 10);
    assert_eq!(&buf[..10], b"still here");
}

#[test]
fn an_unanswered_ping_fails_the_connection_at_the_timeout() {
    let mut p = pair(short(), None);
    p.client.handle_timeout(0).unwrap();
    p.client.handle_timeout(INTERVAL).unwrap();
    assert_eq!(p.client.keepalive_stats(), stats(1, 0));
    // The wire is cut: the PING is lost.
    let mut lost = Vec::new();
    assert!(p.client.take_ciphertext(&mut lost) > 0, "the PING went out");
    assert_eq!(p.client.poll_timeout(), Some(INTERVAL + TIMEOUT));
    p.client.handle_timeout(INTERVAL + TIMEOUT - 1).unwrap();
    let e = p.client.handle_timeout(INTERVAL + TIMEOUT + 7).unwrap_err();
    assert!(
        matches!(
            e,
            ConnError::KeepaliveTimeout {
                waited_us: 2_000_007,
                timeout_us: TIMEOUT
            }
        ),
        "{e:?}"
    );
    assert_eq!(
        e.to_string(),
        "no answer to an HTTP/2 keepalive PING for 2000 ms (timeout 2000 ms): the peer is unreachable or stalled"
    );
    assert!(p.client.is_closed());
    assert_eq!(p.client.poll_timeout(), None, "nothing more to wake up for");
    assert!(matches!(
        p.client.handle_timeout(INTERVAL + TIMEOUT + 8),
        Err(ConnError::KeepaliveTimeout { .. })
    ));
    // A connection without keepalive never pings.
    assert_eq!(p.server.poll_timeout(), None);
    p.server.handle_timeout(100 * INTERVAL).unwrap();
    assert_eq!(p.server.keepalive_stats(), stats(0, 0));
}

#[test]
fn any_late_pong_still_counts_before_the_deadline() {
    let mut p = pair(short(), None);
    p.client.handle_timeout(0).unwrap();
    p.client.handle_timeout(INTERVAL).unwrap();
    // The answer arrives one microsecond before the deadline.
    p.run();
    p.client.handle_timeout(INTERVAL + TIMEOUT - 1).unwrap();
    assert_eq!(p.client.keepalive_stats(), stats(1, 1));
    assert_eq!(
        p.client.poll_timeout(),
        Some(INTERVAL + TIMEOUT - 1 + INTERVAL)
    );
}
