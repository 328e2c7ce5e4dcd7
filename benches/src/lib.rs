//! xdpmesh's benchmark harness.
//!
//! `xdpmesh-bench` builds the four-namespace topology of `docs/INTERFACES.md` with the
//! testbed crate (`xdpmesh-netns`), starts one gateway type in the two gateway
//! namespaces, and drives load from the client pod to the server pod. Layers, bottom up:
//!
//! - [`stats`]: hdrhistogram percentiles, CDF points, medians;
//! - [`loadgen`]: the load generators (std blocking sockets), run as hidden subcommands
//!   of `xdpmesh-bench` inside the pod namespaces, printing JSON;
//! - [`probe`]: `/proc` readers (CPU time, softirq, RSS) and the machine description;
//! - [`external`]: the TOML description of an `external` gateway (another proxy);
//! - [`runner`]: gateway types × scenarios × rounds, alternating types (A B A B);
//! - [`report`]: the JSON schema, medians, ratios to `kernel`, targets, the table;
//! - [`compare`]: regression check of a result against a baseline, on ratios;
//! - [`plot`]: PNG plots with an embedded font.
//!
//! Criterion micro-benchmarks of the hot pieces live in `benches/micro.rs`.

pub mod compare;
pub mod external;
pub mod loadgen;
pub mod plot;
pub mod probe;
pub mod report;
pub mod runner;
pub mod stats;
