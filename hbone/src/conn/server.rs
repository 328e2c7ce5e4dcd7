//! The HBONE server: an accepted mTLS HTTP/2 connection on port 15008 serving CONNECT
//! (ztunnel `src/proxy/h2/server.rs`, `src/proxy/inbound.rs`).

use std::net::{IpAddr, SocketAddr};
use std::ops::{Deref, DerefMut};
use std::sync::Arc;

use bytes::Bytes;
use h2::server::SendResponse;
use http::{HeaderMap, Method, Response, StatusCode};

use super::common::{HboneConn, Stream, Unanswered, H2};
use super::{ConnError, Event, H2Settings, StreamError, StreamId, StreamState, RESERVED_PORTS};
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

/// The `ip:port` of a CONNECT target (IPv6 as `[ip]:port`); anything else (a host
/// name, no port, a path) is a [`BadAuthority`].
pub fn parse_authority(uri: &http::Uri) -> Result<SocketAddr, BadAuthority> {
    let Some(a) = uri.authority() else {
        return Err(BadAuthority(uri.to_string()));
    };
    a.as_str()
        .parse::<SocketAddr>()
        .map_err(|_| BadAuthority(a.as_str().to_owned()))
}

/// An HBONE server connection (sans-IO): an [`HboneConn`] that answers CONNECT
/// requests. See the [module docs](super) for the model.
///
/// Everything but answering requests (feeding and taking ciphertext, `poll`, events,
/// stream data) is [`HboneConn`]'s, reached through `Deref`.
pub struct HboneServerConn {
    conn: HboneConn,
    local_ip: IpAddr,
}

impl std::fmt::Debug for HboneServerConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HboneServerConn")
            .field("local_ip", &self.local_ip)
            .field("established", &self.conn.core.is_established())
            .field("streams", &self.conn.streams.len())
            .finish_non_exhaustive()
    }
}

impl Deref for HboneServerConn {
    type Target = HboneConn;

    fn deref(&self) -> &HboneConn {
        &self.conn
    }
}

impl DerefMut for HboneServerConn {
    fn deref_mut(&mut self) -> &mut HboneConn {
        &mut self.conn
    }
}

impl HboneServerConn {
    /// A server for a connection accepted on `local_ip`, port
    /// [`HBONE_PORT`](crate::HBONE_PORT), with ztunnel's settings.
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
        let mut b = h2::server::Builder::new();
        b.initial_window_size(settings.initial_stream_window)
            .initial_connection_window_size(settings.initial_connection_window)
            .max_frame_size(settings.max_frame_size)
            .max_header_list_size(settings.max_header_list_size)
            .max_send_buffer_size(settings.max_send_buffer_size)
            .max_concurrent_streams(settings.max_concurrent_streams)
            .data_frame_budget(usize::MAX);
        let conn = HboneConn::start(tls.into(), &settings, |pipe| {
            H2::ServerHandshaking(Box::pin(b.handshake::<_, Bytes>(pipe)))
        })?;
        Ok(HboneServerConn { conn, local_ip })
    }

    /// The address this connection was accepted on.
    pub fn local_ip(&self) -> IpAddr {
        self.local_ip
    }

    /// [`validate_request`] against this connection's local address.
    pub fn validate(&self, req: &Request) -> Result<SocketAddr, RequestError> {
        validate_request(&req.method, &req.authority, self.local_ip)
    }

    /// Answers a request. 200 (send only once the upstream TCP connection is
    /// established) makes the stream usable for data; any other status is sent with
    /// END_STREAM and followed by RST_STREAM(NO_ERROR), and the stream is gone.
    pub fn respond(&mut self, id: StreamId, status: StatusCode) -> Result<(), StreamError> {
        let s = self.conn.stream(id)?;
        // A server's streams only ever hold `Unanswered::Server`.
        let Some(Unanswered::Server(mut respond)) = s.unanswered.take() else {
            return Err(StreamError::H2(id, "already answered".into()));
        };
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
            self.conn.streams.remove(&id.0);
            r.map_err(|e| StreamError::H2(id, e.to_string()))?;
        }
        self.conn.core.bump();
        Ok(())
    }
}

impl HboneConn {
    /// Server: a new request from h2 becomes a stream and an [`Event::Request`].
    pub(super) fn accept(
        &mut self,
        req: http::Request<h2::RecvStream>,
        respond: SendResponse<Bytes>,
    ) {
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
            Stream {
                st,
                unanswered: Some(Unanswered::Server(respond)),
            },
        );
        self.core
            .events
            .push_back(Event::Request(Box::new(request)));
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
