//! Shared fixtures: a mesh CA, identities, and a back-to-back client/server pair that
//! shuttles ciphertext in memory (no sockets), as rustls' tests/unbuffered.rs does.

#![allow(dead_code)]

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use xdpmesh_hbone::{
    client_config, server_config, Ca, ConnError, ConnectHeaders, Event, H2Settings,
    HboneClientConn, HboneServerConn, SpiffeId, StreamId, Validity, WorkloadCert,
};

pub const TD: &str = "cluster.local";
pub const SERVER_IP: &str = "10.0.0.2";

pub fn id(sa: &str) -> SpiffeId {
    format!("spiffe://{TD}/ns/default/sa/{sa}").parse().unwrap()
}

pub struct Mesh {
    pub ca: Ca,
    pub client: WorkloadCert,
    pub server: WorkloadCert,
}

impl Mesh {
    pub fn new() -> Self {
        let ca = Ca::generate(TD).unwrap();
        let client = ca.issue(&id("client"), Validity::default()).unwrap();
        let server = ca.issue(&id("server"), Validity::default()).unwrap();
        Mesh { ca, client, server }
    }

    pub fn roots(&self) -> Vec<rustls::pki_types::CertificateDer<'static>> {
        vec![self.ca.root_der()]
    }

    pub fn client_cfg(&self) -> Arc<rustls::ClientConfig> {
        client_config(&self.client, &self.roots(), vec![id("server")]).unwrap()
    }

    pub fn server_cfg(&self) -> Arc<rustls::ServerConfig> {
        server_config(&self.server, &self.roots(), TD).unwrap()
    }

    pub fn pair(&self) -> Pair {
        Pair::new(self.client_cfg(), self.server_cfg())
    }
}

pub fn server_ip() -> IpAddr {
    SERVER_IP.parse().unwrap()
}

pub fn headers() -> ConnectHeaders {
    ConnectHeaders {
        forwarded_for: "198.18.1.2:40000".parse().unwrap(),
        forwarded_host: None,
        baggage: Some(
            "k8s.cluster.name=Kubernetes,k8s.namespace.name=default,k8s.deployment.name=client,service.name=client,service.version=v1"
                .into(),
        ),
        traceparent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into(),
    }
}

pub fn target(port: u16) -> SocketAddr {
    SocketAddr::new(server_ip(), port)
}

/// A client and a server connected back to back.
pub struct Pair {
    pub client: HboneClientConn,
    pub server: HboneServerConn,
    /// Ciphertext taken from one side and not yet accepted by the other.
    c2s: Vec<u8>,
    s2c: Vec<u8>,
    pub client_events: Vec<Event>,
    pub server_events: Vec<Event>,
    pub client_err: Option<ConnError>,
    pub server_err: Option<ConnError>,
    /// Largest chunk moved per direction per round.
    pub chunk: usize,
    pub wire_bytes: (usize, usize),
}

impl Pair {
    pub fn new(c: Arc<rustls::ClientConfig>, s: Arc<rustls::ServerConfig>) -> Self {
        Self::with_settings(c, s, H2Settings::client(), H2Settings::server())
    }

    pub fn with_settings(
        c: Arc<rustls::ClientConfig>,
        s: Arc<rustls::ServerConfig>,
        cs: H2Settings,
        ss: H2Settings,
    ) -> Self {
        Pair {
            client: HboneClientConn::with_settings(c, server_ip(), cs).unwrap(),
            server: HboneServerConn::with_settings(s, server_ip(), ss).unwrap(),
            c2s: Vec::new(),
            s2c: Vec::new(),
            client_events: Vec::new(),
            server_events: Vec::new(),
            client_err: None,
            server_err: None,
            chunk: 64 * 1024,
            wire_bytes: (0, 0),
        }
    }

    /// One round each way; returns whether anything moved.
    pub fn shuttle(&mut self) -> bool {
        let mut moved = false;
        let n = self.client.take_ciphertext_max(&mut self.c2s, self.chunk);
        self.wire_bytes.0 += n;
        moved |= n > 0;
        if !self.c2s.is_empty() && self.server_err.is_none() {
            match self.server.feed_ciphertext(&self.c2s) {
                Ok(k) => {
                    self.c2s.drain(..k);
                    moved |= k > 0;
                }
                Err(e) => {
                    self.server_err = Some(e);
                    self.c2s.clear();
                    moved = true;
                }
            }
        }
        // The server side writes into a slice, as the dataplane writes into the free
        // part of its TCP send ring (`take_ciphertext_into`); the client appends to a
        // Vec: both ways are exercised by every transcript.
        let mut ring = vec![0u8; self.chunk.min(64 * 1024)];
        let n = self.server.take_ciphertext_into(&mut ring);
        self.s2c.extend_from_slice(&ring[..n]);
        self.wire_bytes.1 += n;
        moved |= n > 0;
        if !self.s2c.is_empty() && self.client_err.is_none() {
            match self.client.feed_ciphertext(&self.s2c) {
                Ok(k) => {
                    self.s2c.drain(..k);
                    moved |= k > 0;
                }
                Err(e) => {
                    self.client_err = Some(e);
                    self.s2c.clear();
                    moved = true;
                }
            }
        }
        if self.client_err.is_none() {
            if let Err(e) = self.client.poll() {
                self.client_err = Some(e);
            }
        }
        if self.server_err.is_none() {
            if let Err(e) = self.server.poll() {
                self.server_err = Some(e);
            }
        }
        while let Some(e) = self.client.poll_event() {
            self.client_events.push(e);
            moved = true;
        }
        while let Some(e) = self.server.poll_event() {
            self.server_events.push(e);
            moved = true;
        }
        moved
    }

    /// Shuttles until nothing moves.
    pub fn run(&mut self) {
        for _ in 0..100_000 {
            if !self.shuttle() {
                return;
            }
        }
        panic!("pair did not settle");
    }

    /// Handshake; asserts both sides are up.
    pub fn connect(&mut self) {
        self.run();
        assert!(self.client_err.is_none(), "client: {:?}", self.client_err);
        assert!(self.server_err.is_none(), "server: {:?}", self.server_err);
        assert!(
            matches!(self.client_events.as_slice(), [Event::Connected]),
            "{:?}",
            self.client_events
        );
        assert!(
            matches!(self.server_events.as_slice(), [Event::Connected]),
            "{:?}",
            self.server_events
        );
        self.client_events.clear();
        self.server_events.clear();
    }

    /// Opens a stream to `target`, lets the server see it, and answers with `status`.
    pub fn open(&mut self, port: u16) -> StreamId {
        let id = self.client.open_stream(target(port), &headers()).unwrap();
        self.run();
        let req = self.take_request(id);
        let target = self.server.validate(&req).unwrap();
        assert_eq!(target.port(), port);
        self.server
            .respond(id, xdpmesh_hbone::StatusCode::OK)
            .unwrap();
        self.run();
        let pos = self
            .client_events
            .iter()
            .position(|e| matches!(e, Event::Established(s) if *s == id))
            .unwrap_or_else(|| panic!("no Established for {id}: {:?}", self.client_events));
        self.client_events.remove(pos);
        id
    }

    pub fn take_request(&mut self, id: StreamId) -> Box<xdpmesh_hbone::Request> {
        let pos = self
            .server_events
            .iter()
            .position(|e| matches!(e, Event::Request(r) if r.stream == id))
            .unwrap_or_else(|| panic!("no request for {id}: {:?}", self.server_events));
        match self.server_events.remove(pos) {
            Event::Request(r) => r,
            _ => unreachable!(),
        }
    }
}

/// Deterministic pseudo-random payload.
pub fn payload(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

pub fn sha256(b: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(b).into()
}
