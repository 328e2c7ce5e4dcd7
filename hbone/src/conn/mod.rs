//! HBONE connections as sans-IO state machines: ciphertext in, ciphertext out, events.
//!
//! Read RFC 9113 (HTTP/2, sections 5.1 stream states, 6.9 flow control, 8.5 CONNECT) and
//! RFC 8446 (TLS 1.3) first; the wire contract is istio/ztunnel's
//! (`src/proxy/h2/{client,server}.rs`, `src/proxy/inbound.rs`).
//!
//! # Shape
//!
//! As in rustls (`ConnectionCommon<Data>` behind `ClientConnection`/`ServerConnection`),
//! one connection type, [`HboneConn`], implements everything that does not depend on
//! the role: ciphertext in and out, [`HboneConn::poll`], events, the data half of every
//! stream, close. [`HboneClientConn`] (opens streams) and [`HboneServerConn`] (answers
//! requests) `Deref`/`DerefMut` to it and add only their own methods, so code holding a
//! `&mut HboneConn` drives either without asking which it is.
//!
//! # Layers
//!
//! ```text
//!  caller (worker, smoltcp)          this module                          h2 0.4
//!  ciphertext ──feed_ciphertext──▶ rustls ──plaintext──▶ Pipe.rx ──AsyncRead──▶  Connection
//!  ciphertext ◀─take_ciphertext─── rustls ◀─plaintext─── Pipe.tx ◀─AsyncWrite──  (streams)
//!  app bytes  ──stream_write / stream_read / events──────────────────────────▶  SendStream/RecvStream
//! ```
//!
//! h2 is written for async runtimes; here it runs without one. Its transport is a
//! `Pipe`: two bounded byte queues shared (`Rc<RefCell<..>>`) between this module and
//! h2. A read from an empty queue returns `Pending` (and records that input is wanted),
//! a write into a full queue returns `Pending`; nothing ever wakes a task, so
//! [`HboneConn::poll`] simply re-polls everything until a round makes no progress. The `Waker` handed to h2 only raises a flag, so a future
//! that yields by waking itself gets another round.
//!
//! # Memory
//!
//! Every buffer is bounded: the two pipes by [`H2Settings::plaintext_buffer_limit`],
//! rustls' outgoing buffer by its default 64 KiB limit (writes beyond it are refused
//! and retried), received-but-unread stream data by the HTTP/2 windows (capacity is
//! released to the peer only when the application has read the bytes), data accepted
//! by `stream_write` by the peer's windows (the call accepts only granted capacity).
//! [`HboneConn::can_feed`] tells the worker when to stop reading from smoltcp.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::identity::{spiffe_ids_from_cert, SpiffeId};
use crate::tls::IdentityError;

mod client;
mod common;
mod server;

pub use client::{ConnectHeaders, HboneClientConn, OpenStreamError};
pub use common::{HboneConn, KeepaliveStats};
pub use h2::Reason;
pub use http::{HeaderMap, Method, StatusCode};
pub use server::{
    parse_authority, validate_request, BadAuthority, HboneServerConn, Request, RequestError,
};

/// Ports a CONNECT may never target (ztunnel: outbound capture, inbound plaintext, HBONE).
pub const RESERVED_PORTS: [u16; 3] = [15001, 15006, crate::HBONE_PORT];

/// HTTP/2 settings; the defaults are ztunnel's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct H2Settings {
    /// SETTINGS_INITIAL_WINDOW_SIZE we announce (per stream receive window). 4 MiB.
    pub initial_stream_window: u32,
    /// Connection-level receive window. 16 MiB.
    pub initial_connection_window: u32,
    /// SETTINGS_MAX_FRAME_SIZE we accept. 1 MiB.
    pub max_frame_size: u32,
    /// Server: SETTINGS_MAX_CONCURRENT_STREAMS we announce. 200.
    pub max_concurrent_streams: u32,
    /// Client: streams we open on one connection at most (ztunnel's pool limit). 100.
    pub max_streams_per_conn: u32,
    /// SETTINGS_MAX_HEADER_LIST_SIZE. ztunnel: 64 KiB on the server, 16 KiB on the client.
    pub max_header_list_size: u32,
    /// Per-stream send buffer in h2. ztunnel: 4 MiB on the client, 400 KiB on the server.
    pub max_send_buffer_size: usize,
    /// Cap of each plaintext queue between rustls and h2. 64 KiB.
    pub plaintext_buffer_limit: usize,
    /// HTTP/2 PING keepalive; `None`: never ping. ztunnel's 10 s / 20 s on both sides.
    pub keepalive: Option<Keepalive>,
}

/// HTTP/2 keepalive, as ztunnel's `do_ping_pong` (both roles): the first PING goes
/// `interval_us` after the connection is up (TLS and HTTP/2), the next one `interval_us`
/// after each PONG, and the connection fails with [`ConnError::KeepaliveTimeout`] when a
/// PING has had no PONG for `timeout_us`. Only the PONG counts as an answer (as in
/// ztunnel and hyper): it proves the peer's HTTP/2 layer is alive, and h2 writes it ahead
/// of queued stream data, so only the bounded buffers in front of it can delay it.
///
/// Time is the caller's: see [`HboneConn::handle_timeout`] and
/// [`HboneConn::poll_timeout`]. A connection whose caller never passes the time never
/// pings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Keepalive {
    /// µs from the connection coming up, or from a PONG, to the next PING. 10 s.
    pub interval_us: i64,
    /// µs a PING may wait for its PONG before the connection fails. 20 s.
    pub timeout_us: i64,
}

impl Default for Keepalive {
    /// ztunnel's figures: PING every 10 s, 20 s for the answer.
    fn default() -> Self {
        Keepalive {
            interval_us: 10_000_000,
            timeout_us: 20_000_000,
        }
    }
}

impl H2Settings {
    /// ztunnel's client settings.
    pub fn client() -> Self {
        H2Settings {
            initial_stream_window: 4 * 1024 * 1024,
            initial_connection_window: 16 * 1024 * 1024,
            max_frame_size: 1024 * 1024,
            max_concurrent_streams: 200,
            max_streams_per_conn: 100,
            max_header_list_size: 16 * 1024,
            max_send_buffer_size: 4 * 1024 * 1024,
            plaintext_buffer_limit: 64 * 1024,
            keepalive: Some(Keepalive::default()),
        }
    }

    /// ztunnel's server settings.
    pub fn server() -> Self {
        H2Settings {
            max_header_list_size: 64 * 1024,
            max_send_buffer_size: 400 * 1024,
            ..Self::client()
        }
    }
}

/// An HTTP/2 stream id on one connection (the wire value).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamId(pub u32);

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl From<h2::StreamId> for StreamId {
    fn from(id: h2::StreamId) -> Self {
        StreamId(id.into())
    }
}

/// What happened; drained with `poll_event()`.
#[derive(Debug)]
pub enum Event {
    /// TLS 1.3 with ALPN h2 is up; `peer_identity()` is known.
    Connected,
    /// Server: a new CONNECT request; answer it with `respond()`.
    Request(Box<Request>),
    /// Client: the server answered 200; data may flow both ways.
    Established(StreamId),
    /// Client: the server answered with another status; the stream is gone.
    Refused(StreamId, StatusCode),
    /// Data is waiting: call `stream_read` until it returns 0.
    Readable(StreamId),
    /// A short `stream_write` can now make progress.
    Writable(StreamId),
    /// The peer ended its side (END_STREAM) and all its data has been read.
    PeerFinished(StreamId),
    /// The stream was reset (by the peer, or the connection failed); it is gone.
    /// NO_ERROR and CANCEL are an end of stream by contract, not a failure.
    Reset(StreamId, Reason),
    /// The HTTP/2 connection has ended (GOAWAY, EOF or error); no more events follow.
    Closed,
}

/// TLS parameters of an established connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsInfo {
    /// Always TLSv1_3.
    pub version: rustls::ProtocolVersion,
    /// One of the two AES-GCM suites.
    pub cipher_suite: rustls::CipherSuite,
    /// Always `h2`.
    pub alpn: Vec<u8>,
}

/// A fatal connection error. After one, the connection only drains its pending
/// ciphertext (an alert for the peer) and should be dropped.
#[derive(Clone, Debug, thiserror::Error)]
pub enum ConnError {
    /// The TLS layer refused the peer (handshake) or a record.
    #[error("TLS error: {}", display_tls(.0))]
    Tls(rustls::Error),
    /// The peer completed the handshake without choosing ALPN `h2`.
    #[error("ALPN mismatch: peer did not negotiate \"h2\" (negotiated: {0})")]
    AlpnMismatch(String),
    /// The handshake completed with something other than TLS 1.3 (only possible with a
    /// configuration not built by [`crate::tls`]).
    #[error("TLS version mismatch: only TLS 1.3 is allowed (negotiated: {0})")]
    NotTls13(String),
    /// The peer certificate has no SPIFFE URI SAN (cannot happen with our verifiers).
    #[error("peer certificate carries no SPIFFE identity")]
    NoPeerIdentity,
    /// The transport ended before the TLS handshake completed.
    #[error("connection closed by peer during the TLS handshake")]
    EofDuringHandshake,
    /// HTTP/2 protocol error.
    #[error("HTTP/2 error: {0}")]
    H2(String),
    /// A keepalive PING had no PONG within [`Keepalive::timeout_us`]: the peer vanished
    /// (cut off, crashed without FIN) or stopped reading.
    #[error(
        "no answer to an HTTP/2 keepalive PING for {} ms (timeout {} ms): the peer is unreachable or stalled",
        .waited_us / 1000,
        .timeout_us / 1000
    )]
    KeepaliveTimeout {
        /// µs since the PING was sent.
        waited_us: i64,
        /// The configured timeout, µs.
        timeout_us: i64,
    },
}

impl ConnError {
    /// The identity refusal inside a TLS error, if that is what this is.
    pub fn identity_error(&self) -> Option<&IdentityError> {
        match self {
            ConnError::Tls(e) => IdentityError::from_rustls(e),
            _ => None,
        }
    }
}

/// Errors of the per-stream API. None of them affects the connection.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StreamError {
    /// No such stream (never existed, or already reset/refused/closed).
    #[error("unknown HBONE stream {0}")]
    Unknown(StreamId),
    /// Data before the 200 response (client: wait for Established; server: respond 200 first).
    #[error("HBONE stream {0} is not established yet")]
    NotEstablished(StreamId),
    /// `stream_write` after `stream_finish`.
    #[error("HBONE stream {0} was already finished (END_STREAM sent)")]
    Finished(StreamId),
    /// h2 refused the operation (the stream was reset under us).
    #[error("HBONE stream {0}: {1}")]
    H2(StreamId, String),
}

/// rustls prints `CertificateError::Other` with Debug ("Other(OtherError(..))"); print
/// our identity refusals as plain sentences instead.
fn display_tls(e: &rustls::Error) -> String {
    match IdentityError::from_rustls(e) {
        Some(id) => format!("invalid peer certificate: {id}"),
        None => e.to_string(),
    }
}

fn h2_err(e: h2::Error) -> ConnError {
    ConnError::H2(e.to_string())
}

// ===== the in-memory transport between rustls and h2 =====

#[derive(Debug, Default)]
struct PipeState {
    /// Plaintext from the peer, waiting for h2.
    rx: BytesMut,
    /// No more plaintext will arrive (close_notify or TCP EOF).
    rx_eof: bool,
    /// Plaintext from h2, waiting for rustls.
    tx: BytesMut,
    tx_limit: usize,
    /// h2 tried to read an empty `rx`.
    wants_input: bool,
    /// Bumped on every transfer, so the poll loop can see progress.
    ops: u64,
}

/// h2's transport: an in-memory, bounded, never-waking byte pipe.
#[derive(Clone, Debug)]
pub(crate) struct Pipe(Rc<RefCell<PipeState>>);

impl AsyncRead for Pipe {
    fn poll_read(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let mut s = self.0.borrow_mut();
        if s.rx.is_empty() {
            if s.rx_eof {
                return Poll::Ready(Ok(()));
            }
            s.wants_input = true;
            return Poll::Pending;
        }
        let n = buf.remaining().min(s.rx.len());
        buf.put_slice(&s.rx[..n]);
        s.rx.advance(n);
        s.ops += 1;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Pipe {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let mut s = self.0.borrow_mut();
        let room = s.tx_limit.saturating_sub(s.tx.len());
        if room == 0 {
            return Poll::Pending;
        }
        let n = room.min(buf.len());
        s.tx.extend_from_slice(&buf[..n]);
        s.ops += 1;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// A waker that only raises a flag: "someone wants another poll round".
#[derive(Debug, Default)]
struct FlagWaker(AtomicBool);

impl Wake for FlagWaker {
    fn wake(self: Arc<Self>) {
        self.0.store(true, Ordering::Relaxed);
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Writes into a Vec, at most `remaining` bytes (rustls handles short writes).
struct LimitedVec<'a> {
    out: &'a mut Vec<u8>,
    remaining: usize,
}

impl io::Write for LimitedVec<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = buf.len().min(self.remaining);
        self.out.extend_from_slice(&buf[..n]);
        self.remaining -= n;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Byte counts of the internal buffers, for tests and metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BufferStats {
    /// Plaintext decrypted but not yet read by h2.
    pub plaintext_in: usize,
    /// Plaintext written by h2 but not yet encrypted.
    pub plaintext_out: usize,
}

// ===== the TLS layer and everything both sides share =====

/// The TLS connection, the pipe, the event queue and the poll bookkeeping.
pub(crate) struct Core {
    tls: rustls::Connection,
    pipe: Pipe,
    rx_limit: usize,
    /// rustls may hold decrypted plaintext we had no room for.
    plaintext_pending: bool,
    /// TLS handshake done and checked (TLS 1.3, ALPN h2, SPIFFE identity).
    established: bool,
    eof_fed: bool,
    close_notify_sent: bool,
    error: Option<ConnError>,
    pub(crate) events: VecDeque<Event>,
    flag: Arc<FlagWaker>,
    waker: Waker,
    /// Bumped by every step that moved bytes or changed state.
    progress: u64,
    peer_identity: Option<SpiffeId>,
    tls_info: Option<TlsInfo>,
}

impl Core {
    pub(crate) fn new(tls: rustls::Connection, settings: &H2Settings) -> (Self, Pipe) {
        let pipe = Pipe(Rc::new(RefCell::new(PipeState {
            tx_limit: settings.plaintext_buffer_limit,
            ..Default::default()
        })));
        let flag = Arc::new(FlagWaker::default());
        let waker = Waker::from(flag.clone());
        let core = Core {
            tls,
            pipe: pipe.clone(),
            rx_limit: settings.plaintext_buffer_limit,
            plaintext_pending: false,
            established: false,
            eof_fed: false,
            close_notify_sent: false,
            error: None,
            events: VecDeque::new(),
            flag,
            waker,
            progress: 0,
            peer_identity: None,
            tls_info: None,
        };
        (core, pipe)
    }

    pub(crate) fn waker(&self) -> Waker {
        self.waker.clone()
    }

    pub(crate) fn error(&self) -> Option<&ConnError> {
        self.error.as_ref()
    }

    pub(crate) fn is_established(&self) -> bool {
        self.established
    }

    pub(crate) fn peer_identity(&self) -> Option<&SpiffeId> {
        self.peer_identity.as_ref()
    }

    pub(crate) fn tls_info(&self) -> Option<&TlsInfo> {
        self.tls_info.as_ref()
    }

    pub(crate) fn fail(&mut self, e: ConnError) -> ConnError {
        if self.error.is_none() {
            tracing::debug!(error = %e, "HBONE connection failed");
            self.error = Some(e.clone());
        }
        self.error.clone().unwrap_or(e)
    }

    pub(crate) fn check(&self) -> Result<(), ConnError> {
        match &self.error {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }

    pub(crate) fn bump(&mut self) {
        self.progress += 1;
    }

    /// A number that changes whenever anything moved.
    pub(crate) fn activity(&self) -> u64 {
        self.progress + self.pipe.0.borrow().ops + self.events.len() as u64
    }

    pub(crate) fn take_wake(&self) -> bool {
        self.flag.0.swap(false, Ordering::Relaxed)
    }

    pub(crate) fn can_feed(&self) -> bool {
        self.error.is_none()
            && !self.eof_fed
            && !self.plaintext_pending
            && self.pipe.0.borrow().rx.len() < self.rx_limit
    }

    pub(crate) fn buffer_stats(&self) -> BufferStats {
        let p = self.pipe.0.borrow();
        BufferStats {
            plaintext_in: p.rx.len(),
            plaintext_out: p.tx.len(),
        }
    }

    /// Consumes as much ciphertext as the buffers allow; returns how much.
    pub(crate) fn feed(&mut self, mut data: &[u8]) -> Result<usize, ConnError> {
        self.check()?;
        let total = data.len();
        while !data.is_empty() && self.can_feed() {
            let n = match self.tls.read_tls(&mut data) {
                Ok(n) => n,
                // rustls' own buffers are full: process what it has first.
                Err(e) if e.kind() == io::ErrorKind::Other => 0,
                Err(e) => {
                    return Err(self.fail(ConnError::Tls(rustls::Error::General(e.to_string()))))
                }
            };
            if let Err(e) = self.tls.process_new_packets() {
                return Err(self.fail(ConnError::Tls(e)));
            }
            self.bump();
            self.pump_in();
            if n == 0 {
                break;
            }
        }
        Ok(total - data.len())
    }

    /// The transport delivered EOF (TCP FIN).
    pub(crate) fn feed_eof(&mut self) {
        if self.eof_fed {
            return;
        }
        self.eof_fed = true;
        let _ = self.tls.read_tls(&mut &[][..]);
        if let Err(e) = self.tls.process_new_packets() {
            self.fail(ConnError::Tls(e));
        }
        if self.tls.is_handshaking() {
            self.fail(ConnError::EofDuringHandshake);
        }
        self.bump();
    }

    /// Decrypted plaintext → pipe (as far as the cap allows). Copied out of rustls'
    /// own chunks (`BufRead`): reading into a slice would first have the pipe zero as
    /// much room as it has, up to its whole limit per call, for the one record that is
    /// there (that memset was 58% of the engine's instructions in HBONE bulk).
    fn pump_in(&mut self) {
        let mut p = self.pipe.0.borrow_mut();
        loop {
            let room = self.rx_limit.saturating_sub(p.rx.len());
            if room == 0 {
                self.plaintext_pending = true;
                return;
            }
            let mut reader = self.tls.reader();
            match reader.fill_plain() {
                Ok([]) => {
                    // close_notify: clean end of the plaintext stream.
                    p.rx_eof = true;
                    self.plaintext_pending = false;
                    return;
                }
                Ok(chunk) => {
                    let n = chunk.len().min(room);
                    p.rx.extend_from_slice(&chunk[..n]);
                    reader.consume_plain(n);
                    p.ops += 1;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.plaintext_pending = false;
                    return;
                }
                Err(_) => {
                    // UnexpectedEof: TCP closed without close_notify. h2 sees EOF.
                    p.rx_eof = true;
                    self.plaintext_pending = false;
                    return;
                }
            }
        }
    }

    /// Pipe → rustls (only once the handshake has been checked, so nothing reaches a
    /// peer we are about to refuse).
    fn pump_out(&mut self) {
        if !self.established || self.error.is_some() {
            return;
        }
        // Encrypt only once the previous ciphertext has been taken: the caller drains
        // ciphertext as its TCP send buffer frees room, often a few KiB at a time, and
        // feeding rustls into that room makes small records (per-record AEAD and framing
        // cost, and rustls's buffer bookkeeping grows with its chunk count). Waiting for
        // an empty buffer keeps records at the full 16 KiB while the TCP send buffer
        // still holds the ciphertext in flight; memory stays bounded by the pipe limit
        // plus one batch of records.
        if self.tls.wants_write() {
            return;
        }
        let mut p = self.pipe.0.borrow_mut();
        while !p.tx.is_empty() {
            match self.tls.writer().write_plain(&p.tx) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    p.tx.advance(n);
                    p.ops += 1;
                }
            }
        }
    }

    /// Moves plaintext both ways and completes the handshake checks.
    pub(crate) fn pump(&mut self) -> Result<(), ConnError> {
        self.check()?;
        if self.plaintext_pending {
            self.pump_in();
        }
        if !self.established && !self.tls.is_handshaking() {
            self.finish_handshake()?;
        }
        self.pump_out();
        Ok(())
    }

    fn finish_handshake(&mut self) -> Result<(), ConnError> {
        let alpn = self.tls.alpn_protocol().map(<[u8]>::to_vec);
        if alpn.as_deref() != Some(crate::tls::ALPN_H2) {
            let got = match &alpn {
                Some(a) => format!("{:?}", String::from_utf8_lossy(a)),
                None => "none".to_owned(),
            };
            self.tls.send_close_notify();
            return Err(self.fail(ConnError::AlpnMismatch(got)));
        }
        // The configs allow only TLS 1.3 and these suites; a foreign config passed in
        // would be caught here.
        let version = self.tls.protocol_version();
        let suite = self.tls.negotiated_cipher_suite().map(|s| s.suite());
        let (Some(version @ rustls::ProtocolVersion::TLSv1_3), Some(cipher_suite)) =
            (version, suite)
        else {
            self.tls.send_close_notify();
            return Err(self.fail(ConnError::NotTls13(format!("{version:?}"))));
        };
        let ids = self
            .tls
            .peer_certificates()
            .and_then(|c| c.first())
            .and_then(|leaf| spiffe_ids_from_cert(leaf).ok())
            .unwrap_or_default();
        let Some(id) = ids.into_iter().next() else {
            self.tls.send_close_notify();
            return Err(self.fail(ConnError::NoPeerIdentity));
        };
        tracing::debug!(peer = %id, ?cipher_suite, "HBONE TLS established");
        self.peer_identity = Some(id);
        self.tls_info = Some(TlsInfo {
            version,
            cipher_suite,
            alpn: alpn.unwrap_or_default(),
        });
        self.established = true;
        self.events.push_back(Event::Connected);
        self.bump();
        Ok(())
    }

    pub(crate) fn wants_write(&self) -> bool {
        self.tls.wants_write()
    }

    /// Drains encrypted bytes (at most `max`) into `out`.
    pub(crate) fn take(&mut self, out: &mut Vec<u8>, max: usize) -> usize {
        self.take_with(max, |tls, remaining| {
            tls.write_tls(&mut LimitedVec { out, remaining })
        })
    }

    /// Writes ciphertext into the front of `out`; returns how much (`out` is full or
    /// rustls has nothing more).
    pub(crate) fn take_into(&mut self, out: &mut [u8]) -> usize {
        let mut at = 0;
        let n = self.take_with(out.len(), |tls, _| {
            let mut rest = &mut out[at..];
            let n = tls.write_tls(&mut rest)?;
            at += n;
            Ok(n)
        });
        debug_assert_eq!(n, at);
        n
    }

    /// Moves ciphertext out with `write` (given the room left) while rustls has some
    /// and there is room, refilling rustls from h2's output between records.
    fn take_with(
        &mut self,
        max: usize,
        mut write: impl FnMut(&mut rustls::Connection, usize) -> io::Result<usize>,
    ) -> usize {
        let mut total = 0;
        while total < max && self.tls.wants_write() {
            match write(&mut self.tls, max - total) {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n,
            }
            // rustls has room again: move more of h2's output in.
            self.pump_out();
        }
        if total > 0 {
            self.bump();
        }
        total
    }

    /// Frees the pipe's buffers while they are empty, so an idle connection holds none
    /// of their capacity (each grows again on its next write, up to its limit).
    /// Returns the bytes of capacity freed.
    pub(crate) fn shrink_buffers(&mut self) -> usize {
        let mut guard = self.pipe.0.borrow_mut();
        let p = &mut *guard;
        let mut freed = 0;
        for b in [&mut p.rx, &mut p.tx] {
            if b.is_empty() && b.capacity() > 0 {
                freed += b.capacity();
                *b = BytesMut::new();
            }
        }
        freed
    }

    /// Sends close_notify once (after the HTTP/2 connection has ended).
    pub(crate) fn close_tls(&mut self) {
        if !self.close_notify_sent {
            self.close_notify_sent = true;
            self.tls.send_close_notify();
            self.bump();
        }
    }

    pub(crate) fn input_wanted(&self) -> bool {
        self.pipe.0.borrow().wants_input
    }
}

/// rustls' `Reader`/`Writer` under names that do not collide with `io::Read`/`Write`
/// imports elsewhere. `fill_plain` is `BufRead::fill_buf`: the first chunk of
/// decrypted plaintext; empty after close_notify, `WouldBlock` when there is none yet,
/// `UnexpectedEof` after a TCP EOF without close_notify.
trait ReadPlain {
    fn fill_plain(&mut self) -> io::Result<&[u8]>;
    fn consume_plain(&mut self, n: usize);
}

impl ReadPlain for rustls::Reader<'_> {
    fn fill_plain(&mut self) -> io::Result<&[u8]> {
        io::BufRead::fill_buf(self)
    }

    fn consume_plain(&mut self, n: usize) {
        io::BufRead::consume(self, n)
    }
}

trait WritePlain {
    fn write_plain(&mut self, buf: &[u8]) -> io::Result<usize>;
}

impl WritePlain for rustls::Writer<'_> {
    fn write_plain(&mut self, buf: &[u8]) -> io::Result<usize> {
        io::Write::write(self, buf)
    }
}

// ===== per-stream state shared by both sides =====

/// The data half of an HBONE stream (after 200).
pub(crate) struct StreamState {
    pub(crate) id: StreamId,
    pub(crate) send: Option<h2::SendStream<Bytes>>,
    pub(crate) recv: Option<h2::RecvStream>,
    /// One received chunk, not yet read by the application (its capacity is not
    /// released yet).
    rx_buf: Bytes,
    rx_eof: bool,
    tx_finished: bool,
    tx_blocked: bool,
    pub(crate) reset: bool,
}

/// What a stream poll found.
pub(crate) enum StreamPoll {
    Idle,
    Progress,
    /// Remove the stream (reset, or both sides finished).
    Done,
}

impl StreamState {
    pub(crate) fn new(id: StreamId) -> Self {
        StreamState {
            id,
            send: None,
            recv: None,
            rx_buf: Bytes::new(),
            rx_eof: false,
            tx_finished: false,
            tx_blocked: false,
            reset: false,
        }
    }

    pub(crate) fn is_established(&self) -> bool {
        self.send.is_some()
    }

    /// Pulls the next chunk if the previous one is used up. Returns true on a change.
    fn fill(&mut self, cx: &mut Context<'_>, events: &mut VecDeque<Event>) -> bool {
        let Some(recv) = self.recv.as_mut() else {
            return false;
        };
        if self.rx_eof || self.reset || !self.rx_buf.is_empty() {
            return false;
        }
        loop {
            match recv.poll_data(cx) {
                Poll::Ready(Some(Ok(b))) if b.is_empty() => continue,
                Poll::Ready(Some(Ok(b))) => {
                    self.rx_buf = b;
                    events.push_back(Event::Readable(self.id));
                    return true;
                }
                Poll::Ready(None) => {
                    self.rx_eof = true;
                    events.push_back(Event::PeerFinished(self.id));
                    return true;
                }
                Poll::Ready(Some(Err(e))) => {
                    self.reset = true;
                    let reason = e.reason().unwrap_or(Reason::INTERNAL_ERROR);
                    events.push_back(Event::Reset(self.id, reason));
                    return true;
                }
                Poll::Pending => return false,
            }
        }
    }

    pub(crate) fn poll(
        &mut self,
        cx: &mut Context<'_>,
        events: &mut VecDeque<Event>,
    ) -> StreamPoll {
        let mut progress = self.fill(cx, events);
        if !self.reset {
            if let Some(send) = self.send.as_mut() {
                if let Poll::Ready(r) = send.poll_reset(cx) {
                    let reason = match r {
                        Ok(reason) => reason,
                        Err(e) => e.reason().unwrap_or(Reason::INTERNAL_ERROR),
                    };
                    self.reset = true;
                    events.push_back(Event::Reset(self.id, reason));
                    progress = true;
                } else if self.tx_blocked && !self.tx_finished && send.capacity() > 0 {
                    self.tx_blocked = false;
                    events.push_back(Event::Writable(self.id));
                    progress = true;
                }
            }
        }
        if self.reset || (self.rx_eof && self.rx_buf.is_empty() && self.tx_finished) {
            StreamPoll::Done
        } else if progress {
            StreamPoll::Progress
        } else {
            StreamPoll::Idle
        }
    }

    pub(crate) fn read(
        &mut self,
        buf: &mut [u8],
        cx: &mut Context<'_>,
        events: &mut VecDeque<Event>,
    ) -> Result<usize, StreamError> {
        if !self.is_established() {
            return Err(StreamError::NotEstablished(self.id));
        }
        let mut total = 0;
        while total < buf.len() {
            if self.rx_buf.is_empty() {
                self.fill(cx, events);
                // `fill` announced this chunk as Readable; we are reading it now.
                if matches!(events.back(), Some(Event::Readable(id)) if *id == self.id) {
                    events.pop_back();
                }
                if self.rx_buf.is_empty() {
                    break;
                }
            }
            let n = (buf.len() - total).min(self.rx_buf.len());
            buf[total..total + n].copy_from_slice(&self.rx_buf[..n]);
            self.rx_buf.advance(n);
            if self.rx_buf.is_empty() {
                // An empty slice still holds the chunk h2 cut it from (its whole read
                // buffer, shared): an idle stream would keep that alive.
                self.rx_buf = Bytes::new();
            }
            total += n;
            if let Some(recv) = self.recv.as_mut() {
                // The application consumed n bytes: only now may the peer send more.
                let _ = recv.flow_control().release_capacity(n);
            }
        }
        Ok(total)
    }

    pub(crate) fn write(&mut self, data: &[u8]) -> Result<usize, StreamError> {
        if self.tx_finished {
            return Err(StreamError::Finished(self.id));
        }
        let id = self.id;
        let send = self.send.as_mut().ok_or(StreamError::NotEstablished(id))?;
        if data.is_empty() {
            return Ok(0);
        }
        // Ask for capacity for all of it (h2 adds what is already buffered), take
        // only what the windows grant now.
        send.reserve_capacity(data.len());
        let n = send.capacity().min(data.len());
        if n > 0 {
            send.send_data(Bytes::copy_from_slice(&data[..n]), false)
                .map_err(|e| StreamError::H2(id, e.to_string()))?;
        }
        self.tx_blocked = n < data.len();
        Ok(n)
    }

    pub(crate) fn finish(&mut self) -> Result<(), StreamError> {
        if self.tx_finished {
            return Ok(());
        }
        let id = self.id;
        let send = self.send.as_mut().ok_or(StreamError::NotEstablished(id))?;
        send.reserve_capacity(0);
        send.send_data(Bytes::new(), true)
            .map_err(|e| StreamError::H2(id, e.to_string()))?;
        self.tx_finished = true;
        self.tx_blocked = false;
        Ok(())
    }

    pub(crate) fn peer_finished(&self) -> bool {
        self.rx_eof && self.rx_buf.is_empty()
    }

    pub(crate) fn readable_len(&self) -> usize {
        self.rx_buf.len()
    }
}

/// A `CONNECT` target as it goes on the wire: `ip:port`, IPv6 as `[ip]:port`.
pub fn authority_string(addr: SocketAddr) -> String {
    match addr {
        SocketAddr::V4(a) => format!("{}:{}", a.ip(), a.port()),
        // No scope id: it means nothing to the peer.
        SocketAddr::V6(a) => format!("[{}]:{}", a.ip(), a.port()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pipe_is_bounded_and_never_wakes() {
        let pipe = Pipe(Rc::new(RefCell::new(PipeState {
            tx_limit: 10,
            ..Default::default()
        })));
        let mut p = pipe.clone();
        let mut cx = Context::from_waker(Waker::noop());
        assert!(matches!(
            Pin::new(&mut p).poll_write(&mut cx, b"0123456789abc"),
            Poll::Ready(Ok(10))
        ));
        assert!(Pin::new(&mut p).poll_write(&mut cx, b"x").is_pending());
        let mut buf = [0u8; 4];
        let mut rb = ReadBuf::new(&mut buf);
        assert!(Pin::new(&mut p).poll_read(&mut cx, &mut rb).is_pending());
        assert!(pipe.0.borrow().wants_input);
        pipe.0.borrow_mut().rx.extend_from_slice(b"hello");
        let mut rb = ReadBuf::new(&mut buf);
        assert!(matches!(
            Pin::new(&mut p).poll_read(&mut cx, &mut rb),
            Poll::Ready(Ok(()))
        ));
        assert_eq!(rb.filled(), b"hell");
        pipe.0.borrow_mut().rx_eof = true;
        let mut rb = ReadBuf::new(&mut buf);
        let _ = Pin::new(&mut p).poll_read(&mut cx, &mut rb);
        assert_eq!(rb.filled(), b"o");
        let mut rb = ReadBuf::new(&mut buf);
        assert!(matches!(
            Pin::new(&mut p).poll_read(&mut cx, &mut rb),
            Poll::Ready(Ok(()))
        ));
        assert_eq!(rb.filled(), b"", "EOF reads as zero bytes");
    }

    #[test]
    fn authority_forms() {
        assert_eq!(
            authority_string("10.1.2.3:8080".parse().unwrap()),
            "10.1.2.3:8080"
        );
        assert_eq!(
            authority_string("[fd00::1]:443".parse().unwrap()),
            "[fd00::1]:443"
        );
    }
}
