//! [`HboneConn`]: one HBONE connection, whatever its role.
//!
//! Like rustls' `ConnectionCommon`, this type implements everything both roles do (TLS,
//! the plaintext pipe, driving HTTP/2, the data half of every stream, events), and
//! [`HboneClientConn`](super::HboneClientConn) / [`HboneServerConn`](super::HboneServerConn)
//! dereference to it and add only what is theirs (opening streams; answering requests).
//! What differs per role while driving h2 lives here as data: [`H2`] (which h2
//! connection, and how far it has come) and [`Unanswered`] (a stream's CONNECT exchange
//! before its answer), so [`HboneConn::poll`] works without knowing the role.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use h2::client::{ResponseFuture, SendRequest};
use h2::server::SendResponse;
use http::StatusCode;

use super::{
    h2_err, BufferStats, ConnError, Core, Event, H2Settings, Keepalive, Pipe, Reason, StreamError,
    StreamId, StreamPoll, StreamState, TlsInfo,
};
use crate::identity::SpiffeId;

/// The client's h2 handshake (it only writes the preface).
pub(super) type ClientHandshake = Pin<
    Box<
        dyn Future<
            Output = Result<(SendRequest<Bytes>, h2::client::Connection<Pipe, Bytes>), h2::Error>,
        >,
    >,
>;

/// The HTTP/2 connection: which role's, and how far it has come.
// One per connection and only ever in one state: the size difference costs nothing.
#[allow(clippy::large_enum_variant)]
pub(super) enum H2 {
    /// Client, h2 handshake running.
    ClientHandshaking(ClientHandshake),
    /// Client, connection up.
    Client {
        /// None once `close()` was called: no new streams, h2 ends after the last one.
        send: Option<SendRequest<Bytes>>,
        /// The connection task (writes frames, dispatches received ones).
        conn: h2::client::Connection<Pipe, Bytes>,
    },
    /// Server, h2 handshake running (waits for the client's preface).
    ServerHandshaking(Pin<Box<h2::server::Handshake<Pipe, Bytes>>>),
    /// Server, connection up: accepts CONNECT requests.
    Server(h2::server::Connection<Pipe, Bytes>),
    /// The HTTP/2 connection has ended (GOAWAY and drained, EOF, or error).
    Closed,
}

/// A stream's CONNECT exchange before its answer; the role-specific part of a stream.
pub(super) enum Unanswered {
    /// Client: the response is pending; the request's send half waits with it.
    Client {
        /// The server's answer to our CONNECT.
        response: ResponseFuture,
        /// Becomes the stream's send half on 200.
        send: h2::SendStream<Bytes>,
    },
    /// Server: the request waits for `respond()`.
    Server(SendResponse<Bytes>),
}

/// One CONNECT stream.
pub(super) struct Stream {
    /// The data half (role-independent).
    pub(super) st: StreamState,
    /// Until the CONNECT is answered.
    pub(super) unanswered: Option<Unanswered>,
}

impl Stream {
    /// Advances the exchange while unanswered, then the data half.
    fn poll(&mut self, cx: &mut Context<'_>, events: &mut VecDeque<Event>) -> StreamPoll {
        let id = self.st.id;
        let answered = match self.unanswered.take() {
            None => false,
            Some(Unanswered::Client { mut response, send }) => {
                match Pin::new(&mut response).poll(cx) {
                    Poll::Pending => {
                        self.unanswered = Some(Unanswered::Client { response, send });
                        return StreamPoll::Idle;
                    }
                    Poll::Ready(Ok(r)) if r.status() == StatusCode::OK => {
                        self.st.recv = Some(r.into_body());
                        self.st.send = Some(send);
                        events.push_back(Event::Established(id));
                        true
                    }
                    Poll::Ready(Ok(r)) => {
                        // Dropping the stream resets it (CANCEL) if still open.
                        events.push_back(Event::Refused(id, r.status()));
                        return StreamPoll::Done;
                    }
                    Poll::Ready(Err(e)) => {
                        let reason = e.reason().unwrap_or(Reason::INTERNAL_ERROR);
                        events.push_back(Event::Reset(id, reason));
                        return StreamPoll::Done;
                    }
                }
            }
            Some(Unanswered::Server(mut respond)) => {
                // Not answered yet: only watch for a reset from the client.
                if let Poll::Ready(r) = respond.poll_reset(cx) {
                    let reason = match r {
                        Ok(reason) => reason,
                        Err(e) => e.reason().unwrap_or(Reason::INTERNAL_ERROR),
                    };
                    events.push_back(Event::Reset(id, reason));
                    return StreamPoll::Done;
                }
                self.unanswered = Some(Unanswered::Server(respond));
                return StreamPoll::Idle;
            }
        };
        match self.st.poll(cx, events) {
            StreamPoll::Idle if answered => StreamPoll::Progress,
            p => p,
        }
    }
}

/// Where the keepalive of a connection is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum KeepalivePhase {
    /// Not started (the connection is not up yet), or over (closed, failed, h2 refused).
    Off,
    /// The next PING goes at this time (µs).
    Due(i64),
    /// A PING went at this time (µs) and has had no PONG yet.
    Outstanding(i64),
}

/// The keepalive's configuration and progress.
struct KeepaliveState {
    cfg: Keepalive,
    /// h2's user-PING handle, taken once the connection is up.
    ping_pong: Option<h2::PingPong>,
    phase: KeepalivePhase,
    stats: KeepaliveStats,
}

/// What a connection's keepalive has done so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KeepaliveStats {
    /// PINGs sent.
    pub pings_sent: u64,
    /// PONGs received in answer.
    pub pongs_received: u64,
}

/// What one keepalive check decided (computed under the keepalive's borrow).
enum KeepaliveStep {
    Nothing,
    /// A PING was queued: write it out.
    Sent,
    /// The PING sent at this time had no answer in time.
    TimedOut(i64),
}

/// An HBONE connection (sans-IO), client or server. See the [module docs](super) for
/// the model.
///
/// Drive it with [`feed_ciphertext`](Self::feed_ciphertext) /
/// [`take_ciphertext_max`](Self::take_ciphertext_max) / [`poll`](Self::poll), read
/// [`poll_event`](Self::poll_event), move stream data with the `stream_*` methods.
/// Created as an [`HboneClientConn`](super::HboneClientConn) or an
/// [`HboneServerConn`](super::HboneServerConn); both dereference to this type, so
/// `&mut *conn` (or deref coercion) gives the `&mut HboneConn` role-independent code
/// works with.
pub struct HboneConn {
    pub(super) core: Core,
    pub(super) h2: H2,
    pub(super) streams: BTreeMap<u32, Stream>,
    closed_reported: bool,
    keepalive: Option<KeepaliveState>,
}

impl fmt::Debug for HboneConn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HboneConn")
            .field("established", &self.core.is_established())
            .field("streams", &self.streams.len())
            .field("closed", &self.is_closed())
            .finish_non_exhaustive()
    }
}

impl HboneConn {
    /// The connection over `tls`, with the role's h2 handshake built on the pipe h2
    /// talks through; polled once (the client's preface goes out at once).
    pub(super) fn start(
        tls: rustls::Connection,
        settings: &H2Settings,
        handshake: impl FnOnce(Pipe) -> H2,
    ) -> Result<Self, ConnError> {
        let (core, pipe) = Core::new(tls, settings);
        let mut c = HboneConn {
            core,
            h2: handshake(pipe),
            streams: BTreeMap::new(),
            closed_reported: false,
            keepalive: settings.keepalive.map(|cfg| KeepaliveState {
                cfg,
                ping_pong: None,
                phase: KeepalivePhase::Off,
                stats: KeepaliveStats::default(),
            }),
        };
        c.poll()?;
        Ok(c)
    }

    /// Feeds ciphertext received from the peer; returns how many bytes were taken
    /// (fewer when the internal buffers are full: keep the rest, call `poll`, retry).
    pub fn feed_ciphertext(&mut self, data: &[u8]) -> Result<usize, ConnError> {
        let n = self.core.feed(data)?;
        self.poll()?;
        Ok(n)
    }

    /// The peer closed its side of the transport (TCP FIN).
    pub fn feed_eof(&mut self) -> Result<(), ConnError> {
        self.core.feed_eof();
        self.poll()
    }

    /// False when the worker should stop reading from the transport for now.
    pub fn can_feed(&self) -> bool {
        self.core.can_feed()
    }

    /// Appends all ciphertext ready to send to `out`; returns the byte count.
    pub fn take_ciphertext(&mut self, out: &mut Vec<u8>) -> usize {
        self.take_ciphertext_max(out, usize::MAX)
    }

    /// Appends at most `max` bytes of ciphertext to `out` (e.g. the free space of the
    /// smoltcp send buffer).
    pub fn take_ciphertext_max(&mut self, out: &mut Vec<u8>, max: usize) -> usize {
        self.take_ciphertext_with(max, |core, total| core.take(out, max - total))
    }

    /// Writes at most `out.len()` bytes of ciphertext into the front of `out` (the free
    /// space of the smoltcp send buffer, written in place); returns how many.
    pub fn take_ciphertext_into(&mut self, out: &mut [u8]) -> usize {
        let max = out.len();
        self.take_ciphertext_with(max, |core, total| core.take_into(&mut out[total..]))
    }

    /// Takes ciphertext with `take` (given the bytes taken so far) until `max` bytes
    /// are out or there is no more, polling the connection between takes so that h2's
    /// pending frames become records too.
    fn take_ciphertext_with(
        &mut self,
        max: usize,
        mut take: impl FnMut(&mut Core, usize) -> usize,
    ) -> usize {
        let mut total = 0;
        loop {
            total += take(&mut self.core, total);
            if total >= max || self.poll().is_err() || !self.core.wants_write() {
                break;
            }
        }
        total
    }

    /// Frees the in-memory transport's buffers while they are empty (an idle
    /// connection then holds none of their capacity); returns the bytes freed.
    pub fn shrink_buffers(&mut self) -> usize {
        self.core.shrink_buffers()
    }

    /// Whether ciphertext is waiting to be taken.
    pub fn wants_write(&self) -> bool {
        self.core.wants_write()
    }

    /// The fatal error, if the connection has failed.
    pub fn error(&self) -> Option<&ConnError> {
        self.core.error()
    }

    /// The peer's SPIFFE identity (the server's for a client, the client's for a
    /// server), once the handshake is done.
    pub fn peer_identity(&self) -> Option<&SpiffeId> {
        self.core.peer_identity()
    }

    /// Negotiated TLS parameters, once the handshake is done.
    pub fn tls_info(&self) -> Option<&TlsInfo> {
        self.core.tls_info()
    }

    /// Internal buffer sizes.
    pub fn buffer_stats(&self) -> BufferStats {
        self.core.buffer_stats()
    }

    /// Next event, if any.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.core.events.pop_front()
    }

    /// Whether h2 is blocked on input (diagnostics).
    pub fn input_wanted(&self) -> bool {
        self.core.input_wanted()
    }

    /// Advances TLS, HTTP/2 and every stream as far as possible without I/O.
    pub fn poll(&mut self) -> Result<(), ConnError> {
        // Bounded: each round either moves something or ends the loop.
        for _ in 0..10_000 {
            let before = self.core.activity();
            self.core.pump()?;
            self.drive_h2()?;
            self.core.pump()?;
            if self.core.activity() == before && !self.core.take_wake() {
                break;
            }
        }
        Ok(())
    }

    /// Passes the time to the keepalive (µs on the caller's monotonic clock, any epoch):
    /// starts it once the connection is up, takes a PONG, sends the PING that is due,
    /// and fails the connection with [`ConnError::KeepaliveTimeout`] when a PING has
    /// waited for its PONG for the timeout. Call it after feeding ciphertext (so that a
    /// PONG is taken when it arrives) and whenever [`poll_timeout`](Self::poll_timeout)
    /// is due; then take the ciphertext (a PING may be waiting).
    pub fn handle_timeout(&mut self, now: i64) -> Result<(), ConnError> {
        self.core.check()?;
        let established = self.core.is_established();
        let waker = self.core.waker();
        let mut cx = Context::from_waker(&waker);
        let Some(ka) = self.keepalive.as_mut() else {
            return Ok(());
        };
        if matches!(self.h2, H2::Closed) {
            ka.phase = KeepalivePhase::Off;
            return Ok(());
        }
        if ka.ping_pong.is_none() {
            if !established {
                return Ok(());
            }
            let pp = match &mut self.h2 {
                H2::Client { conn, .. } => conn.ping_pong(),
                H2::Server(conn) => conn.ping_pong(),
                // The h2 handshake is still running.
                _ => return Ok(()),
            };
            let Some(pp) = pp else {
                // Taken once per connection: only a second start could see None.
                return Ok(());
            };
            ka.ping_pong = Some(pp);
            ka.phase = KeepalivePhase::Due(now + ka.cfg.interval_us);
        }
        let Some(pp) = ka.ping_pong.as_mut() else {
            return Ok(());
        };
        let mut step = KeepaliveStep::Nothing;
        if let KeepalivePhase::Outstanding(sent) = ka.phase {
            // `send_ping`/`poll_pong` are what hyper's keepalive uses (`ping` is only
            // their async wrapper, which would borrow the handle across polls).
            match pp.poll_pong(&mut cx) {
                Poll::Ready(Ok(_)) => {
                    ka.stats.pongs_received += 1;
                    ka.phase = KeepalivePhase::Due(now + ka.cfg.interval_us);
                    tracing::trace!(rtt_us = now - sent, "HBONE keepalive PONG");
                }
                Poll::Ready(Err(e)) => {
                    // The HTTP/2 connection is gone; its own end reports why.
                    tracing::debug!(error = %e, "HBONE keepalive over: the connection ended");
                    ka.phase = KeepalivePhase::Off;
                }
                Poll::Pending if now - sent >= ka.cfg.timeout_us => {
                    ka.phase = KeepalivePhase::Off;
                    step = KeepaliveStep::TimedOut(sent);
                }
                Poll::Pending => {}
            }
        }
        if let KeepalivePhase::Due(at) = ka.phase {
            if now >= at {
                match pp.send_ping(h2::Ping::opaque()) {
                    Ok(()) => {
                        ka.stats.pings_sent += 1;
                        ka.phase = KeepalivePhase::Outstanding(now);
                        step = KeepaliveStep::Sent;
                    }
                    Err(e) => {
                        // Only a closed connection refuses (one PING is in flight at most).
                        tracing::debug!(error = %e, "HBONE keepalive over: PING refused");
                        ka.phase = KeepalivePhase::Off;
                    }
                }
            }
        }
        let timeout_us = ka.cfg.timeout_us;
        match step {
            KeepaliveStep::Nothing => Ok(()),
            KeepaliveStep::Sent => {
                self.core.bump();
                self.poll()
            }
            KeepaliveStep::TimedOut(sent) => Err(self.core.fail(ConnError::KeepaliveTimeout {
                waited_us: now - sent,
                timeout_us,
            })),
        }
    }

    /// When [`handle_timeout`](Self::handle_timeout) must be called next (µs, the
    /// caller's clock): the next PING, or the deadline of the one in flight. `None`
    /// without a keepalive, before it started, and once the connection has ended.
    pub fn poll_timeout(&self) -> Option<i64> {
        if self.is_closed() {
            return None;
        }
        let ka = self.keepalive.as_ref()?;
        match ka.phase {
            KeepalivePhase::Off => None,
            KeepalivePhase::Due(at) => Some(at),
            KeepalivePhase::Outstanding(sent) => Some(sent + ka.cfg.timeout_us),
        }
    }

    /// PINGs sent and PONGs received so far.
    pub fn keepalive_stats(&self) -> KeepaliveStats {
        self.keepalive
            .as_ref()
            .map_or_else(KeepaliveStats::default, |ka| ka.stats)
    }

    fn drive_h2(&mut self) -> Result<(), ConnError> {
        let waker = self.core.waker();
        let mut cx = Context::from_waker(&waker);
        if let Some(handshake) = self.poll_handshake(&mut cx) {
            match handshake {
                Poll::Ready(Ok(ready)) => {
                    self.h2 = ready;
                    self.core.bump();
                }
                Poll::Ready(Err(e)) => return Err(self.core.fail(h2_err(e))),
                Poll::Pending => return Ok(()),
            }
        }
        // Streams first (they queue frames), then the connection (it writes them).
        self.poll_streams(&mut cx);
        if let Poll::Ready(r) = self.poll_connection(&mut cx) {
            self.h2 = H2::Closed;
            self.core.bump();
            self.poll_streams(&mut cx);
            for (id, _) in std::mem::take(&mut self.streams) {
                self.core
                    .events
                    .push_back(Event::Reset(StreamId(id), Reason::CANCEL));
            }
            self.core.close_tls();
            if !self.closed_reported {
                self.closed_reported = true;
                self.core.events.push_back(Event::Closed);
            }
            if let Err(e) = r {
                return Err(self.core.fail(h2_err(e)));
            }
        }
        self.poll_streams(&mut cx);
        Ok(())
    }

    /// Polls the h2 handshake, if it is running; Ready with the connection's next state.
    fn poll_handshake(&mut self, cx: &mut Context<'_>) -> Option<Poll<Result<H2, h2::Error>>> {
        match &mut self.h2 {
            H2::ClientHandshaking(hs) => {
                Some(hs.as_mut().poll(cx).map_ok(|(send, conn)| H2::Client {
                    send: Some(send),
                    conn,
                }))
            }
            H2::ServerHandshaking(hs) => Some(hs.as_mut().poll(cx).map_ok(H2::Server)),
            _ => None,
        }
    }

    /// Polls the h2 connection (a server's accepts requests); Ready once it has ended.
    fn poll_connection(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), h2::Error>> {
        if let H2::Client { conn, .. } = &mut self.h2 {
            return Pin::new(conn).poll(cx);
        }
        while let H2::Server(conn) = &mut self.h2 {
            match conn.poll_accept(cx) {
                Poll::Ready(Some(Ok((req, respond)))) => self.accept(req, respond),
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(e)),
                Poll::Ready(None) => return Poll::Ready(Ok(())),
                Poll::Pending => break,
            }
        }
        Poll::Pending
    }

    fn poll_streams(&mut self, cx: &mut Context<'_>) {
        let events = &mut self.core.events;
        let mut progress = false;
        self.streams.retain(|_, s| match s.poll(cx, events) {
            StreamPoll::Idle => true,
            StreamPoll::Progress => {
                progress = true;
                true
            }
            StreamPoll::Done => {
                progress = true;
                false
            }
        });
        if progress {
            self.core.bump();
        }
    }

    /// Streams open now (including those not answered yet).
    pub fn active_streams(&self) -> usize {
        self.streams.len()
    }

    /// No streams open.
    pub fn is_idle(&self) -> bool {
        self.streams.is_empty()
    }

    /// The connection has ended (GOAWAY and drained, EOF, or error).
    pub fn is_closed(&self) -> bool {
        matches!(self.h2, H2::Closed) || self.core.error().is_some()
    }

    /// Graceful end: no new streams (client: `open_stream` refuses; server: GOAWAY),
    /// the open streams are served to their end, then the connection ends (GOAWAY,
    /// close_notify).
    pub fn close(&mut self) {
        match &mut self.h2 {
            H2::Client { send, .. } => *send = None,
            H2::Server(conn) => conn.graceful_shutdown(),
            _ => {}
        }
        self.core.bump();
    }

    pub(super) fn stream(&mut self, id: StreamId) -> Result<&mut Stream, StreamError> {
        self.streams.get_mut(&id.0).ok_or(StreamError::Unknown(id))
    }

    /// Reads received stream data (releasing that much flow-control window to the
    /// peer). Returns 0 when nothing is buffered; see [`Event::PeerFinished`] for EOF.
    pub fn stream_read(&mut self, id: StreamId, buf: &mut [u8]) -> Result<usize, StreamError> {
        let waker = self.core.waker();
        let mut cx = Context::from_waker(&waker);
        let s = self
            .streams
            .get_mut(&id.0)
            .ok_or(StreamError::Unknown(id))?;
        let n = s.st.read(buf, &mut cx, &mut self.core.events)?;
        if n > 0 {
            self.core.bump();
        }
        Ok(n)
    }

    /// Bytes of the current received chunk not read yet (more may be queued in h2).
    pub fn stream_readable(&self, id: StreamId) -> usize {
        self.streams.get(&id.0).map_or(0, |s| s.st.readable_len())
    }

    /// The peer ended its side and everything has been read.
    pub fn stream_peer_finished(&self, id: StreamId) -> bool {
        self.streams
            .get(&id.0)
            .is_some_and(|s| s.st.peer_finished())
    }

    /// Queues data; accepts only what the peer's flow-control windows allow now
    /// (possibly 0; [`Event::Writable`] says when to retry).
    pub fn stream_write(&mut self, id: StreamId, data: &[u8]) -> Result<usize, StreamError> {
        let n = self.stream(id)?.st.write(data)?;
        if n > 0 {
            self.core.bump();
        }
        Ok(n)
    }

    /// Ends our side of the stream (DATA with END_STREAM): TCP half-close.
    pub fn stream_finish(&mut self, id: StreamId) -> Result<(), StreamError> {
        self.stream(id)?.st.finish()?;
        self.core.bump();
        Ok(())
    }

    /// Aborts the stream: RST_STREAM(CANCEL). The stream is gone afterwards.
    pub fn stream_reset(&mut self, id: StreamId) -> Result<(), StreamError> {
        let mut s = self.streams.remove(&id.0).ok_or(StreamError::Unknown(id))?;
        if let Some(send) = s.st.send.as_mut() {
            send.send_reset(Reason::CANCEL);
        } else {
            match s.unanswered.as_mut() {
                Some(Unanswered::Client { send, .. }) => send.send_reset(Reason::CANCEL),
                Some(Unanswered::Server(respond)) => respond.send_reset(Reason::CANCEL),
                None => {}
            }
        }
        self.core.bump();
        Ok(())
    }
}
