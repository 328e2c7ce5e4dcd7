//! HBONE in the engine: tunnels (a smoltcp TCP leg carrying mutual TLS 1.3 and HTTP/2,
//! driven by the sans-IO `xdpmesh-hbone` state machines) and stream connections (a TCP
//! leg spliced to one CONNECT stream of a tunnel). The wire contract is in
//! `docs/ARCHITECTURE.md`, "HBONE contract"; the layout follows ztunnel's `src/proxy/`.
//!
//! - [`outbound`] (source gateway): the pod's connection is terminated as for plain
//!   TCP; a stream is opened on a pooled client tunnel to `dst_ip:15008`. Data waits in
//!   the pod leg's receive buffer (closing its window) until the server answered 200.
//! - [`inbound`] (destination gateway): a connection to a served workload's port 15008
//!   is a server tunnel; each CONNECT is validated (authority = the address the
//!   connection was accepted on, else 400; reserved ports 503), authorized (401), then
//!   a delivery leg is opened to the workload from the client's own address, and 200 is
//!   sent only once it is established (503 if it fails). Every refusal is logged with
//!   its reason before any byte flows.
//! - [`pool`]: client tunnels keyed by (source identity, destination identity, source,
//!   destination address), at most `stream_cap` streams each, idle ones closed after
//!   `idle_timeout`.
//! - [`tunnel`]: ciphertext between the tunnel's TCP leg and its state machine, and the
//!   state machine's events.
//! - [`stream`]: a stream connection's lifecycle and its splice.
//!
//! Backpressure: ciphertext moves into a tunnel leg only as far as its send buffer has
//! room, the TLS/HTTP/2 state machine accepts ciphertext only while its plaintext
//! buffers have room, and stream data moves only as far as HTTP/2 flow control allows,
//! so memory per tunnel and per stream stays bounded.

pub mod inbound;
pub mod outbound;
pub mod pool;
pub mod stream;
pub mod tunnel;

use std::net::IpAddr;
use std::sync::Arc;

use ahash::AHashMap;
use xdpmesh_hbone::identity::SpiffeId;
use xdpmesh_hbone::H2Settings;

use crate::engine::Engine;
use crate::identity::IdentityStore;
use crate::sink::FrameSink;

pub use pool::Pool;
pub(crate) use stream::Stream;
pub(crate) use tunnel::Tunnel;

pub use xdpmesh_hbone::HBONE_PORT;

/// Tunnel limits.
#[derive(Debug, Clone, Copy)]
pub struct HboneLimits {
    /// Streams per pooled client connection.
    pub stream_cap: usize,
    /// Idle pooled connections are closed after this long (µs).
    pub idle_timeout_us: i64,
    /// Every tunnel (client and server) sends an HTTP/2 PING this long after it is up
    /// and after each PONG (µs). ztunnel: 10 s.
    pub keepalive_interval_us: i64,
    /// A tunnel whose PING has had no PONG for this long is closed, its streams reset
    /// (µs). ztunnel: 20 s.
    pub keepalive_timeout_us: i64,
}

impl Default for HboneLimits {
    fn default() -> Self {
        let ka = xdpmesh_hbone::Keepalive::default();
        HboneLimits {
            stream_cap: 100,
            idle_timeout_us: 300_000_000,
            keepalive_interval_us: ka.interval_us,
            keepalive_timeout_us: ka.timeout_us,
        }
    }
}

impl HboneLimits {
    /// The HTTP/2 settings of a tunnel: ztunnel's for the role, with these keepalive
    /// figures.
    pub(crate) fn h2_settings(&self, base: H2Settings) -> H2Settings {
        H2Settings {
            keepalive: Some(xdpmesh_hbone::Keepalive {
                interval_us: self.keepalive_interval_us,
                timeout_us: self.keepalive_timeout_us,
            }),
            ..base
        }
    }
}

/// The workload identities in force and the TLS configurations built from them (one
/// per identity pair, built on first use, dropped when the identities change).
#[derive(Default)]
pub(crate) struct Identities {
    store: Option<Arc<IdentityStore>>,
    client: AHashMap<(String, String), Arc<xdpmesh_hbone::ClientConfig>>,
    server: AHashMap<String, Arc<xdpmesh_hbone::ServerConfig>>,
}

const NO_CERT_HINT: &str = "is xdpmesh-control publishing identities?";

impl Identities {
    pub(crate) fn replace(&mut self, store: Arc<IdentityStore>) {
        self.client.clear();
        self.server.clear();
        self.store = Some(store);
    }

    fn store(&self) -> Result<&IdentityStore, String> {
        self.store
            .as_deref()
            .ok_or_else(|| format!("no identities loaded ({NO_CERT_HINT})"))
    }

    /// The client configuration presenting `src` and expecting `dst`.
    pub(crate) fn client_config(
        &mut self,
        src: &SpiffeId,
        dst: &SpiffeId,
    ) -> Result<Arc<xdpmesh_hbone::ClientConfig>, String> {
        let k = (src.to_string(), dst.to_string());
        if let Some(c) = self.client.get(&k) {
            return Ok(c.clone());
        }
        let ids = self.store()?;
        let cert = ids
            .cert(src)
            .ok_or_else(|| format!("no certificate for {src} ({NO_CERT_HINT})"))?;
        let c = xdpmesh_hbone::client_config(cert, &ids.roots, vec![dst.clone()])
            .map_err(|e| e.to_string())?;
        self.client.insert(k, c.clone());
        Ok(c)
    }

    /// The server configuration presenting `own`.
    pub(crate) fn server_config(
        &mut self,
        own: &SpiffeId,
    ) -> Result<Arc<xdpmesh_hbone::ServerConfig>, String> {
        let k = own.to_string();
        if let Some(c) = self.server.get(&k) {
            return Ok(c.clone());
        }
        let ids = self.store()?;
        let cert = ids
            .cert(own)
            .ok_or_else(|| format!("no certificate for {own} ({NO_CERT_HINT})"))?;
        let c = xdpmesh_hbone::server_config(cert, &ids.roots, &ids.trust_domain)
            .map_err(|e| e.to_string())?;
        self.server.insert(k, c.clone());
        Ok(c)
    }
}

impl<S: FrameSink> Engine<S> {
    /// Identity of a workload address, from the tables.
    pub(crate) fn identity_of(&self, ip: IpAddr) -> Option<SpiffeId> {
        let a = self.index.get(&ip)?;
        let w = self.index.tables.workloads.get(a.workload as usize)?;
        format!(
            "spiffe://{}/ns/{}/sa/{}",
            self.index.tables.trust_domain, w.namespace, w.service_account
        )
        .parse()
        .ok()
    }

    /// A W3C traceparent with fresh random-looking ids (xorshift; tracing ids need no
    /// cryptographic strength).
    pub(crate) fn traceparent(&mut self) -> String {
        let state = &mut self.rng;
        let mut next = || {
            *state ^= *state << 13;
            *state ^= *state >> 7;
            *state ^= *state << 17;
            *state
        };
        format!("00-{:016x}{:016x}-{:016x}-01", next(), next(), next())
    }
}
