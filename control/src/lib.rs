//! xdpmesh control plane: the mesh configuration model ([`config`]), its translation
//! into the workers' shared-memory tables ([`tables`]) and the XDP divert set, and the
//! workload identities (certificates) it publishes for the dataplane ([`certs`]).
//!
//! The control process is the only writer of the tables (see `xdpmesh-shm`) and of the
//! XDP program's `workloads` map; it never touches packets.

pub mod certs;
pub mod config;
pub mod drain;
pub mod tables;
pub mod watch;
