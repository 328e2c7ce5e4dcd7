//! Engine transcript tests: two engines wired in-process to each other and to scripted
//! smoltcp pods (the `xdpmesh-sim` test bed), no root, milliseconds each. They pin the splice
//! (byte-exactness, half-close, resets, connect failure, the half-dead limit), the
//! linger set, next-hop resolution, and HBONE (stream lifecycle, refusals, the pool, the keepalive).

mod admission;
mod checksums;
mod hbone;
mod ipv6;
mod keepalive;
mod memory;
mod plain;
mod services;
