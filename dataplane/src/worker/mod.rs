//! The run-to-completion loop of one worker (one per RX queue, pinned to a core),
//! driving an [`Engine`] over the worker's AF_XDP sockets.
//!
//! Each iteration: check the table generation (one acquire load) and the identities;
//! for every interface, take a batch from the AF_XDP RX ring and hand each frame to the
//! engine; then the frames other workers handed over; then the engine's timers, tunnels
//! and waiting next hops, and the TX rings are flushed. Nothing on this path takes a
//! lock. When nothing happened the worker sleeps in `ppoll` until its next timer.
//!
//! Flow ownership: the worker that owns a flow is `hash(4-tuple as received) % workers`.
//! A worker that receives another's packet hands the frame over through a lock-free
//! queue (counted: `handover_out`/`handover_in`). For the connections it opens, a worker
//! picks the local port so that the replies hash to itself, so only the first leg's
//! packets can need a handover (on NICs whose RSS could be steered the same way, none).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crossbeam::queue::ArrayQueue;
use tracing::{debug, info, warn};
use xdpmesh_shm::WorkerSlot;

use crate::engine::{Engine, EngineConfig, Handover};
use crate::identity::IdentityStore;
use crate::metrics::Shared;
use crate::xsk::{self, RxPart, TxPart};

pub use crate::engine::neigh::Resolver;
pub use crate::engine::{PortSpec, HANDOVER_QUEUE};
pub use crate::proxy::{HboneLimits, HBONE_PORT};

/// How a worker is set up.
pub struct WorkerSetup {
    /// Worker index (= RX queue).
    pub id: u32,
    /// Number of workers.
    pub workers: u32,
    /// Interfaces, with this worker's sockets on its queue.
    pub ports: Vec<(PortSpec, RxPart, TxPart)>,
    /// Socket buffers.
    pub buffers: crate::stack::Buffers,
    /// The legs' delayed-ACK time (None: off).
    pub ack_delay: Option<smoltcp::time::Duration>,
    /// Spin instead of sleeping in poll().
    pub busy_poll: bool,
    /// Table slot.
    pub shm: WorkerSlot,
    /// Own inbox and everyone's inboxes (indexed by worker).
    pub inboxes: Vec<Arc<ArrayQueue<Handover>>>,
    /// Next-hop resolver.
    pub resolver: Resolver,
    /// Shared counters.
    pub shared: Arc<Shared>,
    /// Stop flag.
    pub stop: Arc<AtomicBool>,
    /// Identity updates from the main thread (HBONE certificates).
    pub identities: crossbeam::channel::Receiver<Arc<IdentityStore>>,
    /// HBONE pool limits.
    pub hbone: HboneLimits,
    /// Once-a-minute logging of sources, shared by the workers.
    pub log_limiter: std::sync::Arc<crate::engine::admission::LogLimiter>,
    /// The capture tap.
    pub tap: std::sync::Arc<crate::capture::Tap>,
}

/// Counters are published every 100 ms under load, and within 10 ms of going idle (so
/// a reader sees the final figures soon after traffic stops).
const PUBLISH_US: i64 = 100_000;
const PUBLISH_IDLE_US: i64 = 10_000;
/// The live sample formats addresses and states, which cost a quarter of the worker's
/// time when it ran on every idle iteration: at most every 250 ms.
const SAMPLE_US: i64 = 250_000;
/// Handed-over frames do not wake the poll: the sleep is capped with several workers.
const SLEEP_CAP_US: [i64; 2] = [10_000, 1_000];

/// Runs a worker until the stop flag is set.
pub fn run(setup: WorkerSetup) {
    let WorkerSetup {
        id,
        workers,
        ports,
        buffers,
        ack_delay,
        busy_poll,
        mut shm,
        inboxes,
        resolver,
        shared,
        stop,
        identities,
        hbone,
        log_limiter,
        tap,
    } = setup;
    let epoch = std::time::Instant::now();
    let now = || epoch.elapsed().as_micros() as i64;
    let mut rxs = Vec::new();
    let mut txs = Vec::new();
    for (p, (spec, rx, tx)) in ports.into_iter().enumerate() {
        rxs.push(rx);
        txs.push((
            spec,
            TappedTx {
                inner: tx,
                tap: tap.clone(),
                port: p,
            },
        ));
    }
    let cfg = EngineConfig {
        id,
        workers,
        buffers,
        ack_delay,
        hbone,
        resolver,
        inboxes,
        log_limiter,
        tap: tap.clone(),
    };
    // Before the first connection: seeding the TLS library's RNG costs tens of ms.
    if let Err(e) = xdpmesh_hbone::tls::warm_up() {
        warn!(worker = id, "TLS random number generator not ready: {e}");
    }
    let mut e = Engine::new(cfg, txs, now());
    let mut last_publish = 0i64;
    let mut last_sample = 0i64;
    let mut loops = 0u64;
    let mut in_use = 0u64;
    shared.running.store(true, Ordering::Relaxed);
    while !stop.load(Ordering::Relaxed) {
        loops += 1;
        let t = now();
        if shm.changed().is_some() {
            reload_tables(&mut e, &mut shm, id, &shared);
        }
        // What control waits for before it stops diverting a removed address.
        if e.oldest_generation_in_use() != in_use {
            in_use = e.oldest_generation_in_use();
            shm.set_in_use(in_use);
        }
        if let Ok(ids) = identities.try_recv() {
            debug!(
                worker = id,
                identities = ids.len(),
                generation = ids.generation,
                "identities loaded"
            );
            e.set_identities(ids);
        }
        let mut work = 0;
        // One relaxed load per iteration while no capture runs.
        let tapping = tap.on();
        for (p, rx) in rxs.iter_mut().enumerate() {
            work += rx.recv(|frame| {
                if tapping {
                    tap.frame(p, false, frame);
                }
                e.on_frame(p, frame, t, true)
            });
        }
        work += e.drain_inbox(t);
        work += e.poll(t);
        let since = t - last_publish;
        if since >= PUBLISH_US || (work == 0 && since >= PUBLISH_IDLE_US) {
            last_publish = t;
            let mut stats = e.counters().clone();
            stats.loop_iterations = loops;
            socket_drops(&rxs, &mut stats);
            rings(&mut e, &rxs, &mut stats);
            shared.publish(&stats);
            publish_ops(&mut e, &shared);
            if t - last_sample >= SAMPLE_US {
                last_sample = t;
                if let Ok(mut sample) = shared.live_sample.lock() {
                    *sample = e.live_sample(16, t);
                }
                let (tunnels, pool) = e.tunnels_json();
                if let Ok(mut ops) = shared.ops.lock() {
                    ops.tunnels = tunnels;
                    ops.pool = pool;
                }
            }
        }
        if work == 0 && !busy_poll {
            let t = now();
            let cap = SLEEP_CAP_US[usize::from(workers > 1)];
            let timeout_us = e
                .next_wake(t)
                .map_or(cap, |at| at.saturating_sub(t).clamp(0, cap));
            if timeout_us > 0 {
                let refs: Vec<&RxPart> = rxs.iter().collect();
                xsk::wait_readable(&refs, timeout_us);
            }
        } else if work == 0 {
            std::hint::spin_loop();
        }
    }
    e.shutdown(now());
    let mut stats = e.counters().clone();
    stats.loop_iterations = loops;
    socket_drops(&rxs, &mut stats);
    rings(&mut e, &rxs, &mut stats);
    shared.publish(&stats);
    publish_ops(&mut e, &shared);
    shared.running.store(false, Ordering::Relaxed);
    info!(worker = id, "worker stopped");
}

/// The rings' occupancy: TX frames in flight and received frames not yet back on the
/// fill ring, over the worker's sockets.
fn rings(e: &mut Engine<TappedTx>, rxs: &[RxPart], stats: &mut crate::metrics::Local) {
    stats.rx_refill_backlog = rxs.iter().map(|r| r.refill_backlog() as u64).sum();
    stats.tx_in_flight = (0..rxs.len())
        .map(|p| e.sink_mut(p).inner.in_flight() as u64)
        .sum();
}

/// Publishes the Istio metrics and histograms when they changed (a copy under the
/// mutex the endpoints read; nothing when nothing changed).
fn publish_ops(e: &mut Engine<TappedTx>, shared: &Shared) {
    let (traffic, hists) = e.take_ops();
    if traffic.is_none() && hists.is_none() {
        return;
    }
    if let Ok(mut ops) = shared.ops.lock() {
        if let Some(t) = traffic {
            ops.traffic = t;
        }
        if let Some((h, c)) = hists {
            ops.tls_handshake = h;
            ops.connect = c;
        }
    }
}

/// Adds the worker's sockets' drop counters to its published counters.
fn socket_drops(rxs: &[RxPart], stats: &mut crate::metrics::Local) {
    let mut d = xsk::SocketDrops::default();
    for rx in rxs {
        d.add(rx.drops());
    }
    stats.xsk_rx_dropped = d.rx_dropped;
    stats.xsk_rx_ring_full = d.rx_ring_full;
    stats.xsk_fill_ring_empty = d.fill_ring_empty;
    stats.xsk_rx_invalid = d.rx_invalid;
    stats.xsk_tx_invalid = d.tx_invalid;
    stats.xsk_rx_oversized = d.rx_oversized;
}

fn reload_tables<S: crate::sink::FrameSink>(
    e: &mut Engine<S>,
    shm: &mut WorkerSlot,
    id: u32,
    shared: &Shared,
) {
    match shm.load() {
        Ok(Some((g, t))) => {
            if id == 0 {
                // For /config_dump (every worker loads the same generation).
                if let Ok(mut ops) = shared.ops.lock() {
                    ops.tables = Some((g, Arc::new(t.clone())));
                }
            }
            e.set_tables(g, t);
            shm.ack(g);
            debug!(worker = id, generation = g, "tables loaded");
        }
        Ok(None) => {}
        Err(err) => {
            // Keep the tables in force; acknowledge so the writer is not blocked.
            e.table_rejected();
            warn!(worker = id, %err, "rejected a table generation; keeping generation {}", e.generation());
            if let Some(g) = shm.changed() {
                shm.ack(g);
            }
        }
    }
}

/// A port's TX half with the capture tap in front: a transmitted frame is copied to
/// the tap while a capture runs (one relaxed load per frame otherwise).
pub struct TappedTx {
    inner: TxPart,
    tap: std::sync::Arc<crate::capture::Tap>,
    port: usize,
}

impl crate::sink::FrameSink for TappedTx {
    fn has_free(&mut self) -> bool {
        self.inner.has_free()
    }

    fn send<R>(&mut self, len: usize, f: impl FnOnce(&mut [u8]) -> R) -> Option<R> {
        let (tap, port) = (&self.tap, self.port);
        self.inner.send(len, |buf| {
            let r = f(buf);
            if tap.on() {
                tap.frame(port, true, buf);
            }
            r
        })
    }

    fn flush(&mut self) -> usize {
        self.inner.flush()
    }

    fn pending(&self) -> usize {
        self.inner.pending()
    }

    fn max_frame(&self) -> usize {
        self.inner.max_frame()
    }
}
