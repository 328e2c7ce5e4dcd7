//! xdpmesh dataplane: per-core workers that terminate diverted TCP with smoltcp and
//! carry it to its destination, as plain TCP or through HBONE tunnels.
//!
//! Layers, bottom up (`docs/ARCHITECTURE.md` has the packet's way through them):
//!
//! * [`wire`]: classify a received Ethernet frame (safe parsing, checksum checks,
//!   drop reasons as counter labels).
//! * [`xsk`]: AF_XDP sockets and UMEM frames (with [`ringmem`], the only `unsafe` of
//!   this crate).
//! * [`ringmem`]: the memory of the legs' TCP ring buffers, given back while idle.
//! * [`sink`]: the [`sink::FrameSink`] trait the engine writes frames into: the AF_XDP
//!   TX half in production, an in-memory sink in tests.
//! * [`stack`]: smoltcp over a frame sink, connection legs and the TCP splice.
//! * [`state`]: each worker's private index of the shared-memory tables.
//! * [`identity`]: workload certificates published by the control process.
//! * [`engine`]: one worker's objects (plain connections, HBONE streams and tunnels),
//!   the flow table, timers, neighbour resolution; no rings, so it runs in tests.
//! * [`proxy`]: HBONE: outbound, inbound, the tunnel pool, tunnels, streams.
//! * [`worker`]: the run-to-completion loop that drives an engine over real rings.
//! * [`metrics`]: per-worker counters, aggregated off the fast path.
//! * [`access`]: one record per connection end: the access log line and the Istio
//!   TCP metrics.
//! * [`ops`]: the operator's endpoints (metrics, readiness, admin), off the packet path.
//! * [`host`]: start-up facts read from the host (interfaces, queues, neighbours).

pub mod access;
pub mod capture;
pub mod doctor;
pub mod engine;
pub mod host;
pub mod identity;
pub mod metrics;
pub mod ops;
pub mod proxy;
pub mod ringmem;
pub mod sink;
pub mod sockets;
pub mod stack;
pub mod state;
pub mod top;
pub mod worker;
pub mod xsk;

/// Frame classification (its own crate, `dataplane/wire`, so the fuzz targets build it
/// without the AF_XDP and BPF libraries).
pub use xdpmesh_wire as wire;
