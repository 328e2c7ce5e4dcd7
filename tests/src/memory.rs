//! What idle connections cost a gateway: held open through the real path, the
//! dataplane's legs give their buffers' pages back (`dataplane/src/ringmem.rs`), and the
//! gateways' resident memory grows by less than the performance issue's 4 KiB per idle
//! connection. Shared by the plain-TCP and the HBONE namespace tests.
//!
//! The dataplanes run with jemalloc's decay times at 0 and without thread caches
//! (`_RJEM_MALLOC_CONF`): the pages the allocator frees go back to the kernel at once
//! instead of after its 10 s decay, and a freed object is free instead of counted as
//! allocated in a thread cache, so both figures are what the connections hold, before
//! and after, rather than what jemalloc caches from the warm-up and the set-up (which
//! made the baseline drift by as much as the figure: 0 to 3.9 KB resident per HBONE
//! stream from one run to the next). Production keeps jemalloc's defaults; the
//! benchmark's `concurrency` scenario measures those, at 10,000 connections
//! (`benches/README.md`).

use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::gateway::stat;
use crate::gateway::GatewayKind;
use crate::peers::{held_echo_result, ECHO_PORT};
use crate::topology::{Node, Topology, SERVER_ADDR};

/// The most resident memory per idle connection a gateway may add (the target).
pub const MAX_BYTES_PER_IDLE_CONNECTION: u64 = 4096;

/// jemalloc's options for the dataplanes of these tests: freed pages go back at once,
/// freed objects are not kept in thread caches.
pub const ALLOCATOR_CONF: (&str, &str) = (
    "_RJEM_MALLOC_CONF",
    "dirty_decay_ms:0,muzzy_decay_ms:0,tcache:false",
);

/// How long the figure may take to settle after the connections are held (the last
/// sweeps and stats publications).
const SETTLE: Duration = Duration::from_secs(5);

/// Starts one-queue xdpmesh gateways on `topo` with `config`, their allocator set up
/// for measuring ([`ALLOCATOR_CONF`]).
pub fn start_gateways(topo: &mut Topology, config: &Path) {
    topo.set_dataplane_env(&[ALLOCATOR_CONF]);
    topo.start_gateways(GatewayKind::xdpmesh(1), config)
        .expect("xdpmesh gateways");
}

/// How long the client holds the connections at most (past [`SETTLE`]; the test ends
/// the hold with SIGUSR1 once it has its figures).
const HOLD_SECS: u32 = 30;

/// Holds `n` connections (1000 bytes echoed by each) idle through the topology's
/// gateways, and asserts on both gateways: all `n` live; at least `buffers[i] * n` socket
/// buffer releases (every buffer of every connection at least once: a leg is released
/// once per idle spell, and here a leg can have several, between its handshake and its
/// echo, or while an HBONE stream waits for its 200; the engine tests count releases
/// exactly); resident memory and the heap grown by at most
/// [`MAX_BYTES_PER_IDLE_CONNECTION`] per connection each; then every connection ends
/// byte-exact, none reset. Returns the gateways' resident bytes per connection. The
/// gateways must have been started by [`start_gateways`].
pub fn assert_idle_connections_hold_no_buffers(
    topo: &Topology,
    n: u32,
    buffers: [u64; 2],
) -> [u64; 2] {
    let gateways = [Node::GatewayA, Node::GatewayB];
    let _echo = topo.start_echo_server(Node::Server, ECHO_PORT).unwrap();
    // Warm up (allocator arenas, hash tables, the HBONE tunnel), then the idle figures.
    let warm = topo
        .run_echo_client(Node::Client, SERVER_ADDR, ECHO_PORT, 10, 1000)
        .unwrap();
    assert_eq!(warm.ok, 10, "{:?}", warm.errors);
    topo.wait_gateways_idle(Duration::from_secs(15));
    // Two sweeps, so the warm-up's pooled sockets are released before the baseline.
    std::thread::sleep(Duration::from_millis(700));
    let before = gateways.map(|g| topo.gateway_stats(g).unwrap());
    let opened0 = before
        .each_ref()
        .map(|s| stat(s, &["totals", "opened_connections"]));

    let (mut client, held) = topo
        .start_held_echo(Node::Client, SERVER_ADDR, ECHO_PORT, n, 1000, HOLD_SECS)
        .unwrap();
    let held_at = Instant::now();
    assert_eq!(
        held,
        u64::from(n),
        "connections held: {}",
        client.log_tail(5)
    );
    // Idle for two sweeps (250 ms each) and a stats publication (100 ms); then until
    // the figure is in (a leg that was busy late is released a sweep later).
    std::thread::sleep(Duration::from_millis(1500));
    let mut per_conn;
    let mut heap_per_conn;
    loop {
        let now = gateways.map(|g| topo.gateway_stats(g).unwrap());
        per_conn = [0, 1].map(|i| {
            stat(&now[i], &["rss_bytes"]).saturating_sub(stat(&before[i], &["rss_bytes"]))
                / u64::from(n)
        });
        heap_per_conn = [0, 1].map(|i| {
            stat(&now[i], &["heap_allocated_bytes"])
                .saturating_sub(stat(&before[i], &["heap_allocated_bytes"]))
                / u64::from(n)
        });
        let settled = per_conn
            .iter()
            .chain(&heap_per_conn)
            .all(|&p| p <= MAX_BYTES_PER_IDLE_CONNECTION);
        if settled || held_at.elapsed() > SETTLE {
            for (i, g) in gateways.into_iter().enumerate() {
                let s = &now[i];
                let live = stat(s, &["totals", "live_connections"]);
                assert_eq!(live, u64::from(n), "{g:?} live connections: {s:#}");
                let released = stat(s, &["totals", "socket_buffers_released"])
                    - stat(&before[i], &["totals", "socket_buffers_released"]);
                let want = buffers[i] * u64::from(n);
                assert!(
                    released >= want,
                    "{g:?}: {released} socket buffer releases while {n} connections idle, want {want} or more"
                );
                eprintln!(
                    "{g:?}: {n} idle connections after {:.1} s: {released} buffers released, {} B resident per connection (heap {} B)",
                    held_at.elapsed().as_secs_f64(),
                    per_conn[i],
                    heap_per_conn[i]
                );
            }
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    for (i, g) in gateways.iter().enumerate() {
        let (per, heap) = (per_conn[i], heap_per_conn[i]);
        assert!(
            per <= MAX_BYTES_PER_IDLE_CONNECTION && heap <= MAX_BYTES_PER_IDLE_CONNECTION,
            "{g:?}: {per} B resident memory and {heap} B of heap per idle connection, {n} \
             connections, after {SETTLE:?}; at most {MAX_BYTES_PER_IDLE_CONNECTION} B each"
        );
    }

    // Used again after the release: every echo ends byte-exact.
    client.signal(Signal::SIGUSR1).unwrap();
    let r = held_echo_result(&mut client, Duration::from_secs(60)).unwrap();
    assert_eq!(
        (r.connections, r.ok, r.failed, r.bytes, r.exit_ok),
        (u64::from(n), u64::from(n), 0, u64::from(n) * 1000, true),
        "{:?}",
        r.errors
    );
    let after = topo.wait_gateways_idle(Duration::from_secs(15));
    for (i, s) in after.iter().enumerate() {
        let opened = stat(s, &["totals", "opened_connections"]) - opened0[i];
        assert_eq!(opened, u64::from(n), "{:?}: {s:#}", gateways[i]);
        assert_eq!(
            stat(s, &["totals", "closed_connections"]),
            opened0[i] + opened,
            "{s:#}"
        );
        assert_eq!(stat(s, &["totals", "reset_connections"]), 0, "{s:#}");
    }
    per_conn
}
