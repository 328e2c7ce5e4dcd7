//! xdpmesh dataplane: per-core workers that terminate diverted TCP with smoltcp and
//! splice it onto a second leg.
//!
//! Layers, bottom up:
//!
//! * [`wire`]: classify a received Ethernet frame (safe parsing, checksum checks,
//!   drop reasons as counter labels).
//! * [`xsk`]: AF_XDP sockets and UMEM frames (the only `unsafe` of this crate, besides
//!   none elsewhere).
//! * [`stack`]: smoltcp `Device` over UMEM frames, connection legs and the splice.
//! * [`state`]: each worker's private index of the shared-memory tables.
//! * [`worker`]: the run-to-completion loop.
//! * [`metrics`]: per-worker counters, aggregated off the fast path.
//! * [`host`]: start-up facts read from the host (interfaces, queues, neighbours).

pub mod host;
pub mod identity;
pub mod metrics;
pub mod stack;
pub mod state;
pub mod wire;
pub mod worker;
pub mod xsk;
