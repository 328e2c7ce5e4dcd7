//! The HBONE client: one mTLS HTTP/2 connection to a peer's port 15008, many CONNECT
//! streams (ztunnel `src/proxy/h2/client.rs`, `src/proxy/outbound.rs`).

use std::collections::BTreeMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use h2::client::{Connection, ResponseFuture, SendRequest};
use http::{Method, Request};

use super::{
    authority_string, h2_err, BufferStats, ConnError, Core, Event, H2Settings, Pipe, Reason,
    StreamError, StreamId, StreamPoll, StreamState, TlsInfo,
};
use crate::identity::SpiffeId;

/// Headers ztunnel sends with every CONNECT.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectHeaders {
    /// The original client's address: `forwarded: for="ip:port"`.
    pub forwarded_for: SocketAddr,
    /// The service hostname when addressed through a service: `;host=<name>`.
    pub forwarded_host: Option<String>,
    /// W3C baggage (k8s.cluster.name=..,k8s.namespace.name=..,...); omitted when None.
    pub baggage: Option<String>,
    /// W3C traceparent, fresh per connection.
    pub traceparent: String,
}

impl ConnectHeaders {
    /// The `forwarded` header value.
    pub fn forwarded(&self) -> String {
        let mut v = format!("for=\"{}\"", authority_string(self.forwarded_for));
        if let Some(host) = &self.forwarded_host {
            v.push_str(";host=");
            v.push_str(host);
        }
        v
    }
}

/// Why a stream could not be opened.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OpenStreamError {
    /// At our own cap or the peer's MAX_CONCURRENT_STREAMS: use another connection.
    #[error("HBONE connection is at its stream limit ({active} active, max {max})")]
    AtCapacity {
        /// Streams open now.
        active: usize,
        /// min(our cap, peer's SETTINGS_MAX_CONCURRENT_STREAMS).
        max: usize,
    },
    /// The connection failed, is closing, or the peer sent GOAWAY.
    #[error("HBONE connection is not usable for new streams: {0}")]
    Unusable(String),
    /// A header value is not valid HTTP.
    #[error("invalid CONNECT request: {0}")]
    InvalidRequest(String),
}

type HandshakeFuture =
    Pin<Box<dyn Future<Output = Result<(SendRequest<Bytes>, Connection<Pipe, Bytes>), h2::Error>>>>;

// One per connection and only ever in one state: the size difference costs nothing.
#[allow(clippy::large_enum_variant)]
enum H2State {
    Handshaking(HandshakeFuture),
    Ready {
        /// None once `close()` was called: no new streams, h2 ends after the last one.
        send: Option<SendRequest<Bytes>>,
        conn: Connection<Pipe, Bytes>,
    },
    Closed,
}

struct ClientStream {
    st: StreamState,
    /// The pending response; the request's send half waits in `pending_send`.
    response: Option<ResponseFuture>,
    pending_send: Option<h2::SendStream<Bytes>>,
}

/// An HBONE client connection (sans-IO). See the [module docs](super) for the model.
///
/// Drive it with `feed_ciphertext` / `take_ciphertext` / `poll`, read `poll_event`.
pub struct HboneClientConn {
    core: Core,
    settings: H2Settings,
    h2: H2State,
    streams: BTreeMap<u32, ClientStream>,
    closed_reported: bool,
}

impl std::fmt::Debug for HboneClientConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HboneClientConn")
            .field("established", &self.core.is_established())
            .field("streams", &self.streams.len())
            .finish_non_exhaustive()
    }
}

impl HboneClientConn {
    /// A client for the server at `server_ip` (its port 15008), with ztunnel's settings.
    pub fn new(config: Arc<rustls::ClientConfig>, server_ip: IpAddr) -> Result<Self, ConnError> {
        Self::with_settings(config, server_ip, H2Settings::client())
    }

    /// Like [`HboneClientConn::new`] with explicit HTTP/2 settings.
    pub fn with_settings(
        config: Arc<rustls::ClientConfig>,
        server_ip: IpAddr,
        settings: H2Settings,
    ) -> Result<Self, ConnError> {
        let tls = rustls::ClientConnection::new(config, crate::tls::server_name(server_ip))
            .map_err(ConnError::Tls)?;
        let (core, pipe) = Core::new(tls.into(), &settings);
        let mut b = h2::client::Builder::new();
        b.initial_window_size(settings.initial_stream_window)
            .initial_connection_window_size(settings.initial_connection_window)
            .max_frame_size(settings.max_frame_size)
            .initial_max_send_streams(settings.max_streams_per_conn as usize)
            .max_header_list_size(settings.max_header_list_size)
            .max_send_buffer_size(settings.max_send_buffer_size)
            .enable_push(false)
            .data_frame_budget(usize::MAX);
        let hs: HandshakeFuture = Box::pin(b.handshake::<_, Bytes>(pipe));
        let mut c = HboneClientConn {
            core,
            settings,
            h2: H2State::Handshaking(hs),
            streams: BTreeMap::new(),
            closed_reported: false,
        };
        // The client side of the h2 handshake only writes the preface: done at once.
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
        let mut total = 0;
        loop {
            let n = self.core.take(out, max - total);
            total += n;
            if total >= max || self.poll().is_err() || !self.core.wants_write() {
                break;
            }
        }
        total
    }

    /// Whether ciphertext is waiting to be taken.
    pub fn wants_write(&self) -> bool {
        self.core.wants_write()
    }

    /// The fatal error, if the connection has failed.
    pub fn error(&self) -> Option<&ConnError> {
        self.core.error()
    }

    /// The server's SPIFFE identity, once the handshake is done.
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

    fn drive_h2(&mut self) -> Result<(), ConnError> {
        let waker = self.core.waker();
        let mut cx = Context::from_waker(&waker);
        if let H2State::Handshaking(hs) = &mut self.h2 {
            match hs.as_mut().poll(&mut cx) {
                Poll::Ready(Ok((send, conn))) => {
                    self.h2 = H2State::Ready {
                        send: Some(send),
                        conn,
                    };
                    self.core.bump();
                }
                Poll::Ready(Err(e)) => return Err(self.core.fail(h2_err(e))),
                Poll::Pending => return Ok(()),
            }
        }
        // Streams first (they queue frames), then the connection (it writes them).
        self.poll_streams(&mut cx);
        if let H2State::Ready { conn, .. } = &mut self.h2 {
            match Pin::new(conn).poll(&mut cx) {
                Poll::Ready(r) => {
                    self.h2 = H2State::Closed;
                    self.core.bump();
                    self.poll_streams(&mut cx);
                    self.end_all_streams(Reason::CANCEL);
                    self.core.close_tls();
                    if !self.closed_reported {
                        self.closed_reported = true;
                        self.core.events.push_back(Event::Closed);
                    }
                    if let Err(e) = r {
                        return Err(self.core.fail(h2_err(e)));
                    }
                }
                Poll::Pending => {}
            }
        }
        self.poll_streams(&mut cx);
        Ok(())
    }

    fn end_all_streams(&mut self, reason: Reason) {
        for (id, _) in std::mem::take(&mut self.streams) {
            self.core
                .events
                .push_back(Event::Reset(StreamId(id), reason));
        }
    }

    fn poll_streams(&mut self, cx: &mut Context<'_>) {
        let events = &mut self.core.events;
        let mut progress = false;
        self.streams.retain(|_, s| {
            if let Some(resp) = s.response.as_mut() {
                match Pin::new(resp).poll(cx) {
                    Poll::Ready(Ok(r)) => {
                        progress = true;
                        s.response = None;
                        if r.status() == http::StatusCode::OK {
                            s.st.recv = Some(r.into_body());
                            s.st.send = s.pending_send.take();
                            events.push_back(Event::Established(s.st.id));
                        } else {
                            // Dropping the stream resets it (CANCEL) if still open.
                            events.push_back(Event::Refused(s.st.id, r.status()));
                            return false;
                        }
                    }
                    Poll::Ready(Err(e)) => {
                        let reason = e.reason().unwrap_or(Reason::INTERNAL_ERROR);
                        events.push_back(Event::Reset(s.st.id, reason));
                        return false;
                    }
                    Poll::Pending => return true,
                }
            }
            match s.st.poll(cx, events) {
                StreamPoll::Idle => true,
                StreamPoll::Progress => {
                    progress = true;
                    true
                }
                StreamPoll::Done => {
                    progress = true;
                    false
                }
            }
        });
        if progress {
            self.core.bump();
        }
    }

    /// Streams open now (including those waiting for their response).
    pub fn active_streams(&self) -> usize {
        self.streams.len()
    }

    /// No streams open.
    pub fn is_idle(&self) -> bool {
        self.streams.is_empty()
    }

    /// The connection has ended (GOAWAY and drained, EOF, or error).
    pub fn is_closed(&self) -> bool {
        matches!(self.h2, H2State::Closed) || self.core.error().is_some()
    }

    /// min(our cap, the peer's SETTINGS_MAX_CONCURRENT_STREAMS).
    pub fn max_concurrent_streams(&self) -> usize {
        let own = self.settings.max_streams_per_conn as usize;
        match &self.h2 {
            H2State::Ready { conn, .. } => own.min(conn.max_concurrent_send_streams()),
            _ => own,
        }
    }

    /// Whether `open_stream` would succeed now.
    pub fn can_open_stream(&mut self) -> bool {
        self.check_open().is_ok()
    }

    fn check_open(&mut self) -> Result<(), OpenStreamError> {
        if let Some(e) = self.core.error() {
            return Err(OpenStreamError::Unusable(e.to_string()));
        }
        let max = self.max_concurrent_streams();
        let active = self.streams.len();
        let waker = self.core.waker();
        let mut cx = Context::from_waker(&waker);
        let H2State::Ready {
            send: Some(send), ..
        } = &mut self.h2
        else {
            return Err(OpenStreamError::Unusable("closing or closed".into()));
        };
        if active >= max {
            return Err(OpenStreamError::AtCapacity { active, max });
        }
        match send.poll_ready(&mut cx) {
            Poll::Ready(Ok(())) => Ok(()),
            Poll::Ready(Err(e)) => Err(OpenStreamError::Unusable(e.to_string())),
            Poll::Pending => Err(OpenStreamError::AtCapacity { active, max }),
        }
    }

    /// Sends `CONNECT authority` with ztunnel's headers. The stream becomes usable on
    /// [`Event::Established`]. May be called before the TLS handshake completes: the
    /// request goes out right after it.
    pub fn open_stream(
        &mut self,
        authority: SocketAddr,
        headers: &ConnectHeaders,
    ) -> Result<StreamId, OpenStreamError> {
        self.check_open()?;
        let mut req = Request::builder()
            .method(Method::CONNECT)
            .uri(authority_string(authority))
            .header("forwarded", headers.forwarded())
            .header("traceparent", headers.traceparent.as_str());
        if let Some(b) = headers.baggage.as_deref().filter(|b| !b.is_empty()) {
            req = req.header("baggage", b);
        }
        let req = req
            .body(())
            .map_err(|e| OpenStreamError::InvalidRequest(e.to_string()))?;
        let H2State::Ready {
            send: Some(send), ..
        } = &mut self.h2
        else {
            return Err(OpenStreamError::Unusable("closing or closed".into()));
        };
        let (response, send_stream) = send
            .send_request(req, false)
            .map_err(|e| OpenStreamError::Unusable(e.to_string()))?;
        let id = StreamId::from(response.stream_id());
        self.streams.insert(
            id.0,
            ClientStream {
                st: StreamState::new(id),
                response: Some(response),
                pending_send: Some(send_stream),
            },
        );
        self.core.bump();
        tracing::trace!(stream = %id, %authority, "HBONE CONNECT sent");
        Ok(id)
    }

    fn stream(&mut self, id: StreamId) -> Result<&mut ClientStream, StreamError> {
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
        if let Some(send) = s.st.send.as_mut().or(s.pending_send.as_mut()) {
            send.send_reset(Reason::CANCEL);
        }
        self.core.bump();
        Ok(())
    }

    /// No new streams; the connection ends (GOAWAY, close_notify) once the open
    /// streams are done.
    pub fn close(&mut self) {
        if let H2State::Ready { send, .. } = &mut self.h2 {
            *send = None;
        }
        self.core.bump();
    }

    /// Whether h2 is blocked on input (diagnostics).
    pub fn input_wanted(&self) -> bool {
        self.core.input_wanted()
    }
}
