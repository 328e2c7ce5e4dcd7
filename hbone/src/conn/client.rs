//! The HBONE client: one mTLS HTTP/2 connection to a peer's port 15008, many CONNECT
//! streams (ztunnel `src/proxy/h2/client.rs`, `src/proxy/outbound.rs`).

use std::net::{IpAddr, SocketAddr};
use std::ops::{Deref, DerefMut};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Method, Request};

use super::common::{HboneConn, Stream, Unanswered, H2};
use super::{authority_string, ConnError, H2Settings, StreamId, StreamState};

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

/// An HBONE client connection (sans-IO): an [`HboneConn`] that opens streams. See the
/// [module docs](super) for the model.
///
/// Everything but opening streams (feeding and taking ciphertext, `poll`, events,
/// stream data) is [`HboneConn`]'s, reached through `Deref`.
pub struct HboneClientConn {
    conn: HboneConn,
    settings: H2Settings,
}

impl std::fmt::Debug for HboneClientConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HboneClientConn")
            .field("established", &self.conn.core.is_established())
            .field("streams", &self.conn.streams.len())
            .finish_non_exhaustive()
    }
}

impl Deref for HboneClientConn {
    type Target = HboneConn;

    fn deref(&self) -> &HboneConn {
        &self.conn
    }
}

impl DerefMut for HboneClientConn {
    fn deref_mut(&mut self) -> &mut HboneConn {
        &mut self.conn
    }
}

impl HboneClientConn {
    /// A client for the server at `server_ip` (its port [`HBONE_PORT`](crate::HBONE_PORT)),
    /// with ztunnel's settings.
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
        let mut b = h2::client::Builder::new();
        b.initial_window_size(settings.initial_stream_window)
            .initial_connection_window_size(settings.initial_connection_window)
            .max_frame_size(settings.max_frame_size)
            .initial_max_send_streams(settings.max_streams_per_conn as usize)
            .max_header_list_size(settings.max_header_list_size)
            .max_send_buffer_size(settings.max_send_buffer_size)
            .enable_push(false)
            .data_frame_budget(usize::MAX);
        // The client side of the h2 handshake only writes the preface: done at once.
        let conn = HboneConn::start(tls.into(), &settings, |pipe| {
            H2::ClientHandshaking(Box::pin(b.handshake::<_, Bytes>(pipe)))
        })?;
        Ok(HboneClientConn { conn, settings })
    }

    /// min(our cap, the peer's SETTINGS_MAX_CONCURRENT_STREAMS).
    pub fn max_concurrent_streams(&self) -> usize {
        let own = self.settings.max_streams_per_conn as usize;
        match &self.conn.h2 {
            H2::Client { conn, .. } => own.min(conn.max_concurrent_send_streams()),
            _ => own,
        }
    }

    /// Whether `open_stream` would succeed now.
    pub fn can_open_stream(&mut self) -> bool {
        self.check_open().is_ok()
    }

    fn check_open(&mut self) -> Result<(), OpenStreamError> {
        if let Some(e) = self.conn.core.error() {
            return Err(OpenStreamError::Unusable(e.to_string()));
        }
        let max = self.max_concurrent_streams();
        let active = self.conn.streams.len();
        let waker = self.conn.core.waker();
        let mut cx = Context::from_waker(&waker);
        let H2::Client {
            send: Some(send), ..
        } = &mut self.conn.h2
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
    /// [`Event::Established`](super::Event::Established). May be called before the TLS handshake completes: the
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
        let H2::Client {
            send: Some(send), ..
        } = &mut self.conn.h2
        else {
            return Err(OpenStreamError::Unusable("closing or closed".into()));
        };
        let (response, send_stream) = send
            .send_request(req, false)
            .map_err(|e| OpenStreamError::Unusable(e.to_string()))?;
        let id = StreamId::from(response.stream_id());
        self.conn.streams.insert(
            id.0,
            Stream {
                st: StreamState::new(id),
                unanswered: Some(Unanswered::Client {
                    response,
                    send: send_stream,
                }),
            },
        );
        self.conn.core.bump();
        tracing::trace!(stream = %id, %authority, "HBONE CONNECT sent");
        Ok(id)
    }
}
