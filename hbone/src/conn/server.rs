//! The HBONE server: an accepted mTLS HTTP/2 connection on port 15008 serving CONNECT
//! (ztunnel `src/proxy/h2/server.rs`, `src/proxy/inbound.rs`).

use std::collections::BTreeMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use h2::server::{Connection, Handshake, SendResponse};
use http::{HeaderMap, Method, Response, StatusCode};

use super::{
    h2_err, BufferStats, ConnError, Core, Event, H2Settings, Pipe, Reason, StreamError, StreamId,
    StreamPoll, StreamState, TlsInfo, RESERVED_PORTS,
};
use crate::identity::SpiffeId;

/// The `:authority` of a request is not `ip:port`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid :authority {0:?}: want ip:port ([ip]:port for IPv6)")]
pub struct BadAuthority(pub String);

/// A CONNECT request as received.
#[derive(Debug)]
pub struct Request {
    /// The stream to answer on.
    pub stream: StreamId,
    /// Should be CONNECT.
    pub method: Method,
    /// The parsed `:authority`.
    pub authority: Result<SocketAddr, BadAuthority>,
    /// All regular headers (forwarded, baggage, traceparent, ...).
    pub headers: HeaderMap,
    /// The client's SPIFFE identity (from its certificate).
    pub peer_identity: SpiffeId,
}

/// Why a request is refused; [`RequestError::status`] is the answer to send.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// 400: HBONE is CONNECT only.
    #[error("HBONE request refused (400): method {0} is not CONNECT")]
    NonConnect(Method),
    /// 400: `:authority` is not `ip:port`.
    #[error("HBONE request refused (400): {0}")]
    BadAuthority(BadAuthority),
    /// 400: the target IP is not the address this connection was accepted on.
    #[error(
        "HBONE request refused (400): target {target} does not match the address the HBONE connection was accepted on ({local})"
    )]
    WrongDestination {
        /// The requested target.
        target: SocketAddr,
        /// Our address on this connection.
        local: IpAddr,
    },
    /// 503: the target port is one of the mesh's own ports.
    #[error(
        "HBONE request refused (503): target port {0} is reserved for the mesh (15001, 15006, 15008)"
    )]
    ReservedPort(u16),
}

impl RequestError {
    /// The HTTP status to answer with.
    pub fn status(&self) -> StatusCode {
        match self {
            RequestError::ReservedPort(_) => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::BAD_REQUEST,
        }
    }
}

/// ztunnel's checks before any policy: CONNECT only (400), `:authority` must be
/// `ip:port` (400), its IP must be the address the TLS connection was accepted on
/// (400), its port must not be 15001/15006/15008 (503). Returns the target.
pub fn validate_request(
    method: &Method,
    authority: &Result<SocketAddr, BadAuthority>,
    local_ip: IpAddr,
) -> Result<SocketAddr, RequestError> {
    if method != Method::CONNECT {
        return Err(RequestError::NonConnect(method.clone()));
    }
    let target = authority.clone().map_err(RequestError::BadAuthority)?;
    if canonical(target.ip()) != canonical(local_ip) {
        return Err(RequestError::WrongDestination {
            target,
            local: local_ip,
        });
    }
    if RESERVED_PORTS.contains(&target.port()) {
        return Err(RequestError::ReservedPort(target.port()));
    }
    Ok(target)
}

/// IPv4-mapped IPv6 compares equal to its IPv4 form (ztunnel's `to_canonical`).
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn parse_authority(uri: &http::Uri) -> Result<SocketAddr, BadAuthority> {
    let Some(a) = uri.authority() else {
        return Err(BadAuthority(uri.to_string()));
    };
    a.as_str()
        .parse::<SocketAddr>()
        .map_err(|_| BadAuthority(a.as_str().to_owned()))
}

// One per connection and only ever in one state: the size difference costs nothing.
#[allow(clippy::large_enum_variant)]
enum H2State {
    Handshaking(Pin<Box<Handshake<Pipe, Bytes>>>),
    Ready(Connection<Pipe, Bytes>),
    Closed,
}

struct ServerStream {
    st: StreamState,
    /// Until `respond()`.
    respond: Option<SendResponse<Bytes>>,
}

/// An HBONE server connection (sans-IO). See the [module docs](super) for the model.
pub struct HboneServerConn {
    core: Core,
    local_ip: IpAddr,
    h2: H2State,
    streams: BTreeMap<u32, ServerStream>,
    closed_reported: bool,
}

impl std::fmt::Debug for HboneServerConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HboneServerConn")
            .field("local_ip", &self.local_ip)
            .field("established", &self.core.is_established())
            .field("streams", &self.streams.len())
            .finish_non_exhaustive()
    }
}

impl HboneServerConn {
    /// A server for a connection accepted on `local_ip`:15008, with ztunnel's settings.
    pub fn new(config: Arc<rustls::ServerConfig>, local_ip: IpAddr) -> Result<Self, ConnError> {
        Self::with_settings(config, local_ip, H2Settings::server())
    }

    /// Like [`HboneServerConn::new`] with explicit HTTP/2 settings.
    pub fn with_settings(
        config: Arc<rustls::ServerConfig>,
        local_ip: IpAddr,
        settings: H2Settings,
    ) -> Result<Self, ConnError> {
        let tls = rustls::ServerConnection::new(config).map_err(ConnError::Tls)?;
        let (core, pipe) = Core::new(tls.into(), &settings);
        let mut b = h2::server::Builder::new();
        b.initial_window_size(settings.initial_stream_window)
            .initial_connection_window_size(settings.initial_connection_window)
            .max_frame_size(settings.max_frame_size)
            .max_header_list_size(settings.max_header_list_size)
            .max_send_buffer_size(settings.max_send_buffer_size)
            .max_concurrent_streams(settings.max_concurrent_streams)
            .data_frame_budget(usize::MAX);
        let hs = Box::pin(b.handshake::<_, Bytes>(pipe));
        let mut c = HboneServerConn {
            core,
            local_ip,
            h2: H2State::Handshaking(hs),
            streams: BTreeMap::new(),
            closed_reported: false,
        };
        c.poll()?;
        Ok(c)
    }

    /// Feeds ciphertext received from the peer; returns how many bytes were taken.
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

    /// Appends at most `max` bytes of ciphertext to `out`.
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

    /// The client's SPIFFE identity, once the handshake is done.
    pub fn peer_identity(&self) -> Option<&SpiffeId> {
        self.core.peer_identity()
    }

    /// Negotiated TLS parameters, once the handshake is done.
    pub fn tls_info(&self) -> Option<&TlsInfo> {
        self.core.tls_info()
    }

    /// The address this connection was accepted on.
    pub fn local_ip(&self) -> IpAddr {
        self.local_ip
    }

    /// Internal buffer sizes.
    pub fn buffer_stats(&self) -> BufferStats {
        self.core.buffer_stats()
    }

    /// Next event, if any.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.core.events.pop_front()
    }

    /// [`validate_request`] against this connection's local address.
    pub fn validate(&self, req: &Request) -> Result<SocketAddr, RequestError> {
        validate_request(&req.method, &req.authority, self.local_ip)
    }

    /// Advances TLS, HTTP/2 and every stream as far as possible without I/O.
    pub fn poll(&mut self) -> Result<(), ConnError> {
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
                Poll::Ready(Ok(conn)) => {
                    self.h2 = H2State::Ready(conn);
                    self.core.bump();
                }
                Poll::Ready(Err(e)) => return Err(self.core.fail(h2_err(e))),
                Poll::Pending => return Ok(()),
            }
        }
        self.poll_streams(&mut cx);
        while let H2State::Ready(conn) = &mut self.h2 {
            match conn.poll_accept(&mut cx) {
                Poll::Ready(Some(Ok((req, respond)))) => {
                    self.accept(req, respond);
                }
                Poll::Ready(r) => {
                    self.h2 = H2State::Closed;
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
                    if let Some(Err(e)) = r {
                        return Err(self.core.fail(h2_err(e)));
                    }
                    break;
                }
                Poll::Pending => break,
            }
        }
        self.poll_streams(&mut cx);
        Ok(())
    }

    fn accept(&mut self, req: http::Request<h2::RecvStream>, respond: SendResponse<Bytes>) {
        let id = StreamId::from(respond.stream_id());
        let (parts, body) = req.into_parts();
        let mut st = StreamState::new(id);
        st.recv = Some(body);
        let peer_identity = self
            .core
            .peer_identity()
            .cloned()
            .expect("HTTP/2 runs only after the TLS handshake established the peer identity");
        let request = Request {
            stream: id,
            authority: parse_authority(&parts.uri),
            method: parts.method,
            headers: parts.headers,
            peer_identity,
        };
        tracing::trace!(stream = %id, ?request, "HBONE request");
        self.streams.insert(
            id.0,
            ServerStream {
                st,
                respond: Some(respond),
            },
        );
        self.core
            .events
            .push_back(Event::Request(Box::new(request)));
        self.core.bump();
    }

    fn poll_streams(&mut self, cx: &mut Context<'_>) {
        let events = &mut self.core.events;
        let mut progress = false;
        self.streams.retain(|_, s| {
            if let Some(respond) = s.respond.as_mut() {
                // Not answered yet: only watch for a reset from the client.
                if let Poll::Ready(r) = respond.poll_reset(cx) {
                    let reason = match r {
                        Ok(reason) => reason,
                        Err(e) => e.reason().unwrap_or(Reason::INTERNAL_ERROR),
                    };
                    events.push_back(Event::Reset(s.st.id, reason));
                    progress = true;
                    return false;
                }
                return true;
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

    /// Answers a request. 200 (send only once the upstream TCP connection is
    /// established) makes the stream usable for data; any other status is sent with
    /// END_STREAM and followed by RST_STREAM(NO_ERROR), and the stream is gone.
    pub fn respond(&mut self, id: StreamId, status: StatusCode) -> Result<(), StreamError> {
        let s = self
            .streams
            .get_mut(&id.0)
            .ok_or(StreamError::Unknown(id))?;
        let mut respond = s
            .respond
            .take()
            .ok_or(StreamError::H2(id, "already answered".into()))?;
        let resp = Response::builder()
            .status(status)
            .body(())
            .map_err(|e| StreamError::H2(id, e.to_string()))?;
        if status == StatusCode::OK {
            let send = respond
                .send_response(resp, false)
                .map_err(|e| StreamError::H2(id, e.to_string()))?;
            s.st.send = Some(send);
        } else {
            let r = respond.send_response(resp, true);
            // Dropping both halves while the client's side is still open makes h2
            // queue RST_STREAM(NO_ERROR) after the response (RFC 9113 section 8.1);
            // an explicit send_reset would discard the queued HEADERS.
            self.streams.remove(&id.0);
            r.map_err(|e| StreamError::H2(id, e.to_string()))?;
        }
        self.core.bump();
        Ok(())
    }

    /// Reads received stream data (releasing that much window to the peer).
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

    /// Bytes of the current received chunk not read yet.
    pub fn stream_readable(&self, id: StreamId) -> usize {
        self.streams.get(&id.0).map_or(0, |s| s.st.readable_len())
    }

    /// The peer ended its side and everything has been read.
    pub fn stream_peer_finished(&self, id: StreamId) -> bool {
        self.streams
            .get(&id.0)
            .is_some_and(|s| s.st.peer_finished())
    }

    /// Queues data; accepts only what the peer's windows allow now.
    pub fn stream_write(&mut self, id: StreamId, data: &[u8]) -> Result<usize, StreamError> {
        let s = self
            .streams
            .get_mut(&id.0)
            .ok_or(StreamError::Unknown(id))?;
        let n = s.st.write(data)?;
        if n > 0 {
            self.core.bump();
        }
        Ok(n)
    }

    /// Ends our side (END_STREAM): TCP half-close.
    pub fn stream_finish(&mut self, id: StreamId) -> Result<(), StreamError> {
        let s = self
            .streams
            .get_mut(&id.0)
            .ok_or(StreamError::Unknown(id))?;
        s.st.finish()?;
        self.core.bump();
        Ok(())
    }

    /// Aborts the stream: RST_STREAM(CANCEL). The stream is gone afterwards.
    pub fn stream_reset(&mut self, id: StreamId) -> Result<(), StreamError> {
        let mut s = self.streams.remove(&id.0).ok_or(StreamError::Unknown(id))?;
        if let Some(send) = s.st.send.as_mut() {
            send.send_reset(Reason::CANCEL);
        } else if let Some(respond) = s.respond.as_mut() {
            respond.send_reset(Reason::CANCEL);
        }
        self.core.bump();
        Ok(())
    }

    /// Streams open now (answered or not).
    pub fn active_streams(&self) -> usize {
        self.streams.len()
    }

    /// No streams open.
    pub fn is_idle(&self) -> bool {
        self.streams.is_empty()
    }

    /// The connection has ended.
    pub fn is_closed(&self) -> bool {
        matches!(self.h2, H2State::Closed) || self.core.error().is_some()
    }

    /// Graceful shutdown: GOAWAY, serve the open streams to their end, then close.
    pub fn close(&mut self) {
        if let H2State::Ready(conn) = &mut self.h2 {
            conn.graceful_shutdown();
        }
        self.core.bump();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(s: &str) -> Result<SocketAddr, BadAuthority> {
        s.parse().map_err(|_| BadAuthority(s.to_owned()))
    }

    #[test]
    fn validation_rules() {
        let local: IpAddr = "10.0.0.5".parse().unwrap();
        let ok = validate_request(&Method::CONNECT, &auth("10.0.0.5:8080"), local);
        assert_eq!(ok, Ok("10.0.0.5:8080".parse().unwrap()));
        let e = validate_request(&Method::GET, &auth("10.0.0.5:8080"), local).unwrap_err();
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
        assert_eq!(
            e.to_string(),
            "HBONE request refused (400): method GET is not CONNECT"
        );
        let e = validate_request(&Method::CONNECT, &auth("example.com:80"), local).unwrap_err();
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
        assert_eq!(
            e.to_string(),
            "HBONE request refused (400): invalid :authority \"example.com:80\": want ip:port ([ip]:port for IPv6)"
        );
        let e = validate_request(&Method::CONNECT, &auth("10.0.0.6:8080"), local).unwrap_err();
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
        for port in [15001, 15006, 15008] {
            let e = validate_request(&Method::CONNECT, &auth(&format!("10.0.0.5:{port}")), local)
                .unwrap_err();
            assert_eq!(e, RequestError::ReservedPort(port));
            assert_eq!(e.status(), StatusCode::SERVICE_UNAVAILABLE);
        }
        // IPv4-mapped IPv6 local address (dual-stack accept) matches the IPv4 target.
        let mapped: IpAddr = "::ffff:10.0.0.5".parse().unwrap();
        assert!(validate_request(&Method::CONNECT, &auth("10.0.0.5:80"), mapped).is_ok());
        let v6: IpAddr = "fd00::5".parse().unwrap();
        assert!(validate_request(&Method::CONNECT, &auth("[fd00::5]:80"), v6).is_ok());
    }
}
