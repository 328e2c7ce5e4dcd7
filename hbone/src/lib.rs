//! HBONE — HTTP/2 `CONNECT` over mutual TLS 1.3 — as a sans-IO library.
//!
//! The worker's run-to-completion loop owns the sockets (smoltcp over AF_XDP); this
//! crate owns the protocol. Layers, bottom up:
//!
//! - [`identity`]: SPIFFE IDs (`spiffe://<td>/ns/<ns>/sa/<sa>`), strictly parsed.
//! - [`certs`]: a local mesh CA (rcgen) issuing workload certificates; PEM import/export.
//! - [`tls`]: rustls 0.23 configurations exactly as ztunnel's (TLS 1.3 only, AES-GCM,
//!   ALPN h2, no SNI, no resumption) with SPIFFE-aware certificate verifiers.
//! - [`conn`]: HBONE connections, state machines that take ciphertext in, give
//!   ciphertext out, and expose CONNECT streams with explicit flow control. They drive
//!   `h2` without an async runtime (see the module docs).
//!
//! # Connections
//!
//! The shape is rustls' (`ConnectionCommon` behind `ClientConnection` and
//! `ServerConnection`): one connection type, [`HboneConn`], does everything that does
//! not depend on the role — [`feed_ciphertext`](HboneConn::feed_ciphertext),
//! [`take_ciphertext_max`](HboneConn::take_ciphertext_max), [`poll`](HboneConn::poll),
//! [`poll_event`](HboneConn::poll_event), the `stream_*` data methods,
//! [`close`](HboneConn::close). The two roles are thin wrappers that dereference to it:
//!
//! - [`HboneClientConn`] dials a peer's [`HBONE_PORT`] and adds
//!   [`open_stream`](HboneClientConn::open_stream) (and its capacity checks);
//! - [`HboneServerConn`] serves an accepted connection and adds
//!   [`respond`](HboneServerConn::respond) and [`validate`](HboneServerConn::validate).
//!
//! Code that handles both (the worker's tunnel loop) takes `&mut HboneConn`: from either
//! role, `&mut *conn` or plain deref coercion.
//!
//! The names a user needs come from this crate: [`ClientConfig`] and [`ServerConfig`]
//! (rustls') for the configurations [`client_config`] and [`server_config`] build, and
//! [`StatusCode`] (http's) for answers.
//!
//! The wire contract (`docs/ARCHITECTURE.md`, "HBONE contract") is istio/ztunnel's.

pub mod certs;
pub mod conn;
pub mod identity;
pub mod manifest;
pub mod tls;

/// The HBONE port: every workload's mTLS HTTP/2 `CONNECT` listener (ztunnel's 15008).
/// A client dials `destination_ip:HBONE_PORT`; a `CONNECT` may never target it (it is
/// one of [`conn::RESERVED_PORTS`]).
pub const HBONE_PORT: u16 = 15008;

pub use certs::{roots_from_pem, Ca, CertError, Validity, WorkloadCert};
pub use conn::{
    validate_request, BadAuthority, BufferStats, ConnError, ConnectHeaders, Event, H2Settings,
    HboneClientConn, HboneConn, HboneServerConn, Keepalive, KeepaliveStats, OpenStreamError,
    Reason, Request, RequestError, StatusCode, StreamError, StreamId, TlsInfo,
};
pub use identity::{SpiffeId, SpiffeIdError};
pub use manifest::{Manifest, ManifestError, ManifestIdentity, MANIFEST_FILE};
/// rustls' configuration types, so users need not depend on rustls to name them.
pub use rustls::pki_types::CertificateDer;
pub use rustls::{ClientConfig, ServerConfig};
pub use tls::{client_config, server_config, IdentityError, TlsConfigError};
